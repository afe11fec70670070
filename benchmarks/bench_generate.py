"""Benchmark: generate a 20,000-bed hospital over 30 days in each format.

Target: under 120 s on one core for CSV (and as fast as possible for HL7 and FHIR). Each
format runs in its own process so that its peak RSS is its own.

    .venv/bin/python benchmarks/bench_generate.py [--beds N] [--days D] [--formats csv,hl7,fhir]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 120.0


def _one(fmt: str, beds: int, days: int, seed: int) -> dict[str, object]:
    from vigie.synthetic import generate

    with tempfile.TemporaryDirectory(prefix=f"vigie-bench-{fmt}-") as folder:
        began = time.perf_counter()
        summary = generate(beds, days, seed, fmt, Path(folder))
        seconds = time.perf_counter() - began
        size = sum(p.stat().st_size for p in Path(folder).iterdir())
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "format": fmt,
        "seconds": seconds,
        "facts": summary.facts,
        "stays": summary.counts["stays"],
        "bytes": size,
        "peak_rss_mib": peak_kib / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--beds", type=int, default=20000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--formats", default="csv,hl7,fhir")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(args.one, args.beds, args.days, args.seed)))
        return 0
    env = {**os.environ, "POLARS_MAX_THREADS": "1", "OMP_NUM_THREADS": "1"}  # one core
    print(
        f"synthetic hospital: {args.beds:,} beds x {args.days} days, target {TARGET_SECONDS:.0f} s"
    )
    for fmt in args.formats.split(","):
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                fmt,
                "--beds",
                str(args.beds),
                "--days",
                str(args.days),
                "--seed",
                str(args.seed),
            ],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{fmt:5} {r['seconds']:7.1f} s  ratio {r['seconds'] / TARGET_SECONDS:5.2f}  "
            f"{r['facts']:>11,} facts ({r['stays']:,} stays)  "
            f"{r['bytes'] / 1e6:8.0f} MB written  peak RSS {r['peak_rss_mib']:6.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
