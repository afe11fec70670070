"""Benchmark: the nightly batch from fact files to alerts (issue 9 item 9).

A generated hospital (``--beds`` beds, ``--days`` days of history, seed ``--seed``) is turned
into fact frames (``vigie.synthetic.frames``) and written as Parquet (``vigie.store.parquet``)
in a cache folder (``--workdir``, default under /tmp), once: generation is not timed. Each
measured run is then a process of its own, so that its peak RSS (VmHWM) is its own, and does
what ``vigie batch`` does after reading its feeds: read the frames, choose the patients in a
stay at the evaluation time (the end of the generated period), compile the default and ANSM
packs (the first run of each size with an empty compile cache, the others reading the IR the
cache keeps, as a nightly run does unless a pack changed), evaluate them (``run_packs``: the
columnar evaluator, pack after pack), score the priorities and write the JSON output. Printed
per run: the wall time of the whole, the split (packs compiled, read, scope, detect, explain,
priorities, write — detect and explain timed inside ``run_packs`` by wrapping the columnar
module's two functions), the alert count and the peak RSS, against the targets: 3,000 beds ≤ 5 s
and ≤ 2 GB; 20,000 beds ≤ 30 s and ≤ 6 GB. Every run is printed, then the median.

    .venv/bin/python benchmarks/bench_batch.py [--beds 3000 20000] [--days 30] [--seed 1]
        [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench_ingest_store import peak_rss_mb

# beds -> (seconds, peak RSS in MB): issue 9 item 9
TARGETS = {3000: (5.0, 2000.0), 20000: (30.0, 6000.0)}
STEPS = ("packs", "read", "scope", "detect", "explain", "priorities", "write")


def target_for(beds: int) -> tuple[int, float, float]:
    """The target of the nearest size at or above ``beds`` (the largest one beyond it)."""
    size = min((s for s in TARGETS if s >= beds), default=max(TARGETS))
    return (size, *TARGETS[size])


def as_of(days: int) -> datetime:
    """The evaluation time: the end of the generated period."""
    from vigie.synthetic import DEFAULT_START

    return DEFAULT_START + timedelta(days=days)


# In the child ------------------------------------------------------------------------------------


class _Clock:
    """Seconds spent per step, including inside ``run_packs`` (detect, explain)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STEPS, 0.0)

    def wrap(self, step: str, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[step] += time.perf_counter() - began

        return timed


def _batch(folder: Path, days: int, out: Path) -> dict[str, Any]:
    """One run, from the frame files to the JSON output, timed step by step."""
    from vigie.api import batch as cli_batch
    from vigie.engine import columnar
    from vigie.store.parquet import read_frames

    clock = _Clock()
    columnar.detect = clock.wrap("detect", columnar.detect)
    columnar.explain = clock.wrap("explain", columnar.explain)
    at = as_of(days)
    start_rss = peak_rss_mb()
    began = time.perf_counter()
    packs = clock.wrap("packs", cli_batch.load_packs)([])
    frames = clock.wrap("read", read_frames)(folder)
    patients = clock.wrap("scope", cli_batch.in_scope)(frames, at, "inpatients")
    records: dict[str, Any] = {}  # as batch() does: each patient with alerts rebuilt once
    alerts = cli_batch.run_packs(packs, frames, at, patients, records=records)
    alerts = clock.wrap("priorities", cli_batch.with_priorities)(alerts, frames, at, records)
    write_began = time.perf_counter()
    everyone = len(cli_batch.in_scope(frames, at, "all"))
    result = cli_batch.BatchResult(at, list(packs), everyone, len(patients), alerts)
    result.seconds = write_began - began
    summary = cli_batch.summary_of(result, cli_batch.FeedNotes())
    cli_batch.write_output(out, result, summary)
    clock.seconds["write"] = time.perf_counter() - write_began
    wall = time.perf_counter() - began
    usage = resource.getrusage(resource.RUSAGE_SELF)
    facts = sum(frame.height for frame in frames.values())
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,  # includes imports (a few tenths of a second)
        "steps": clock.seconds,
        "alerts": len(alerts),
        "patients": len(patients),
        "facts": facts,
        "peak": peak_rss_mb(),
        "start": start_rss,
        "output_mb": out.stat().st_size / 1e6,
    }


def _generate(beds: int, days: int, seed: int, folder: Path) -> dict[str, Any]:
    from vigie.store.parquet import write_frames
    from vigie.synthetic.frames import hospital_frames

    began = time.perf_counter()
    frames = hospital_frames(beds, days, seed)
    generated = time.perf_counter() - began
    write_frames(frames, folder)
    return {
        "generate": generated,
        "write": time.perf_counter() - began - generated,
        "facts": sum(frame.height for frame in frames.values()),
        "peak": peak_rss_mb(),
        "bytes": sum(path.stat().st_size for path in folder.iterdir()),
    }


# In the parent -----------------------------------------------------------------------------------


def run_child(script: str, *arguments: str) -> dict[str, Any]:
    """Run ``script --child ARGUMENTS`` in a process of its own; its last line, as JSON."""
    command = [sys.executable, script, "--child", *arguments]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"child {arguments} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def frames_dir(workdir: Path, beds: int, days: int, seed: int) -> Path:
    folder = workdir / f"frames-{beds}b-{days}d-s{seed}"
    if (folder / "manifest.json").exists():
        print(f"{beds:,} beds x {days} days, seed {seed}: frames cached in {folder}")
        return folder
    made = run_child(__file__, "generate", str(beds), str(days), str(seed), str(folder))
    print(
        f"{beds:,} beds x {days} days, seed {seed}: {made['facts']:,} facts generated as frames "
        f"in {made['generate']:.1f} s, written as Parquet in {made['write']:.1f} s "
        f"({made['bytes'] / 1e6:.0f} MB, {folder}; peak RSS {made['peak']:.0f} MB; not timed)"
    )
    return folder


def _report(beds: int, runs: list[dict[str, Any]]) -> None:
    size, seconds, megabytes = target_for(beds)
    for number, run in enumerate(runs, 1):
        split = ", ".join(f"{step} {run['steps'][step]:.2f}" for step in STEPS)
        print(
            f"  run {number} ({'packs compiled' if run['cache'] == 'cold' else 'packs cached'}): "
            f"{run['wall']:6.2f} s, CPU {run['cpu']:.1f} s ({split}); "
            f"{run['alerts']:,} alerts for "
            f"{run['patients']:,} inpatients, {run['facts']:,} facts; peak RSS "
            f"{run['peak']:,.0f} MB (after imports {run['start']:.0f} MB); output "
            f"{run['output_mb']:.1f} MB"
        )
    wall = statistics.median(r["wall"] for r in runs)
    peak = max(r["peak"] for r in runs)
    steps = {step: statistics.median(r["steps"][step] for r in runs) for step in STEPS}
    print(
        f"  {beds:,} beds: median {wall:.2f} s, target {seconds:.0f} s ({size:,}-bed target), "
        f"ratio {wall / seconds:.2f}; peak RSS {peak:,.0f} MB, target {megabytes:,.0f} MB, "
        f"ratio {peak / megabytes:.2f}; median split "
        + ", ".join(f"{step} {steps[step]:.2f}" for step in STEPS)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, nargs="+", default=[3000, 20000])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VIGIE_TIMEZONE", "UTC")
    if args.child:
        if args.child[0] == "generate":
            beds, days, seed, folder = args.child[1:]
            print(json.dumps(_generate(int(beds), int(days), int(seed), Path(folder))))
        else:
            folder, days, out, cache = args.child[1:]
            if cache == "cold":
                from vigie.api import batch as cli_batch

                cli_batch.PACK_CACHE = Path(tempfile.mkdtemp()) / "packs"
            print(json.dumps({**_batch(Path(folder), int(days), Path(out)), "cache": cache}))
        return 0
    workdir = args.workdir or Path(tempfile.gettempdir()) / "vigie-bench-batch"
    workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"as of {as_of(args.days):%Y-%m-%dT%H:%M}Z (end of the period); {os.cpu_count()} CPUs; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    for beds in args.beds:
        folder = frames_dir(workdir, beds, args.days, args.seed)
        out = workdir / f"alerts-{beds}b.json"
        # The first run compiles the packs (an empty compile cache), the others read the IR the
        # compile cache keeps, as every nightly run but the first after a pack changes.
        runs = [
            run_child(
                __file__,
                "batch",
                str(folder),
                str(args.days),
                str(out),
                "cold" if i == 0 else "warm",
            )
            for i in range(args.repeat)
        ]
        _report(beds, runs)
        print(f"  load average after: {os.getloadavg()[0]:.1f} (a shared machine: see CPU s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
