"""Benchmark: peak memory of `vigie ingest` and `vigie quality --input` on ~50 MB feeds.

Target (issue 7): a 50 MB CSV export ingests under 500 MB peak RSS, into SQLite and into
PostgreSQL; `vigie quality --input` on a 50 MB HL7 v2 file stays under 500 MB too. The feeds
are generated (`vigie generate`, seed 1) to about the sizes asked; each command runs in a
process of its own, the command line's own code, and reports its high-water mark (VmHWM).
The start-up figure is the same process on an empty folder: what importing Vigie costs.

    .venv/bin/python benchmarks/bench_memory.py [--csv-mb 50] [--hl7-mb 50] [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_ingest_store import peak_rss_mb, postgres_schema

TARGET_MB = 500
CALIBRATION_DAYS = (2, 4)  # two small generations that size the large one
BEDS = 1000


def _feeds_of_size(fmt: str, megabytes: float, folder: Path) -> tuple[list[Path], str]:
    """A generated hospital of ``BEDS`` beds whose feed files add up to about ``megabytes``.

    Size grows with the days past a fixed part (the stays open on the first day): two small
    generations give both, and the number of days follows."""
    from vigie.synthetic import generate

    sizes = []
    for days in CALIBRATION_DAYS:
        feeds = generate(BEDS, days, 1, fmt, folder / f"{fmt}-{days}d").feed_files
        sizes.append(sum(feed.stat().st_size for feed in feeds))
    (short, long), (small, large) = CALIBRATION_DAYS, sizes
    per_day = (large - small) / (long - short)
    days = max(1, round(short + (megabytes * 1e6 - small) / per_day))
    feeds = generate(BEDS, days, 1, fmt, folder / fmt).feed_files
    return feeds, f"{BEDS:,} beds x {days} days"


def _run_cli(arguments: list[str], env: dict[str, str]) -> tuple[str, float, float]:
    """``vigie ARGUMENTS`` in a process of its own: its output, peak RSS (MB) and seconds."""
    command = [sys.executable, __file__, "--cli", *arguments]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - began
    if done.returncode not in (0, 1):  # 1: some message rejected, still a run to measure
        raise SystemExit(f"vigie {' '.join(arguments)} failed:\n{done.stderr[-2000:]}")
    peak = json.loads(done.stderr.strip().splitlines()[-1])["peak_rss_mb"]
    return done.stdout, peak, seconds


def _line(label: str, peak: float, detail: str) -> None:
    print(
        f"{label:<44} peak RSS {peak:5.0f} MB (ratio to the {TARGET_MB} MB target: "
        f"{peak / TARGET_MB:.2f}); {detail}"
    )


def _ingest(label: str, url: str, feeds: list[Path], size: float) -> None:
    from vigie.store import FactStore

    env = {**os.environ, "VIGIE_DATABASE_URL": url}
    _, peak, seconds = _run_cli(["ingest", "--format", "auto", *map(str, feeds)], env)
    with FactStore(url) as store:
        stored = sum(store.counts().values())
    _line(label, peak, f"{size:.1f} MB read, {stored:,} facts stored in {seconds:.0f} s")


def _quality(label: str, paths: list[Path], size: float) -> None:
    arguments = ["quality", "--json", "--input", *map(str, paths)]
    output, peak, seconds = _run_cli(arguments, dict(os.environ))
    report: dict[str, Any] = json.loads(output)
    facts = sum(report["counts"].values())
    _line(label, peak, f"{size:.1f} MB read, {facts:,} facts reported in {seconds:.0f} s")


def _cli(arguments: list[str]) -> int:
    """In the child: the command line itself, then its peak RSS on stderr."""
    from vigie.api.cli import main

    code = main(arguments)
    sys.stdout.flush()
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), file=sys.stderr)
    return code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv-mb", type=float, default=50.0, help="size of the CSV export")
    parser.add_argument("--hl7-mb", type=float, default=50.0, help="size of the HL7 v2 file")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--cli", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VIGIE_TIMEZONE", "UTC")
    if args.cli is not None:
        return _cli(args.cli)
    with tempfile.TemporaryDirectory(prefix="vigie-bench-memory-") as name:
        folder = Path(name)
        (folder / "empty").mkdir()
        _quality("start-up: vigie quality, empty folder", [folder / "empty"], 0.0)
        csv, csv_hospital = _feeds_of_size("csv", args.csv_mb, folder)
        csv_size = sum(feed.stat().st_size for feed in csv) / 1e6
        print(f"CSV export: {csv_hospital}, {len(csv)} files, {csv_size:.1f} MB")
        _ingest(
            "vigie ingest, CSV export -> SQLite", f"sqlite:///{folder / 'csv.db'}", csv, csv_size
        )
        if not args.no_postgres:
            with postgres_schema() as url:
                _ingest("vigie ingest, CSV export -> PostgreSQL", url, csv, csv_size)
        hl7, hl7_hospital = _feeds_of_size("hl7", args.hl7_mb, folder)
        hl7_size = sum(feed.stat().st_size for feed in hl7) / 1e6
        print(f"HL7 v2: {hl7_hospital}, {len(hl7)} file(s), {hl7_size:.1f} MB")
        _quality("vigie quality --input, HL7 v2 file", hl7, hl7_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
