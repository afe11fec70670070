"""Benchmark: the store's facts read as columns (`load_frames`) against the per-fact path.

Issue 9 item 8: the batch reads the stored facts as polars frames straight from SQL
(``vigie.store.columns.load_frames``) instead of ``FactSet(store.iter_facts()).frames()``,
which validates a pydantic model per fact. A generated hospital (CSV export, every fact kind,
seed 1) is ingested into SQLite (a temp file) and PostgreSQL (a fresh schema in database
`test` on 127.0.0.1); each path then reads every fact of it back as one frame per kind, in a
process of its own so that its peak RSS (high-water mark, VmHWM) is its own, the paths run
alternately ``--repeat`` times. Printed: the seconds of every run, the ratio of the per-fact
path's median to the columnar one's, the peak RSS of each path and what importing costs (the
high-water mark before reading), and whether both paths gave the same frames (a digest of
every row, sorted by fact id). There is no target of this step alone: the whole batch of a
3,000-bed hospital has 5 s and 2 GB (issue 9 item 9); the ratio to 5 s is printed.

    .venv/bin/python benchmarks/bench_store_columns.py [--beds 3000] [--days 7] [--repeat 3]
        [--no-postgres]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_ingest_store import peak_rss_mb, postgres_schema

BATCH_SECONDS = 5.0  # the whole batch's budget at 3,000 beds (issue 9 item 9)
PATHS = ("columns", "models")


def _frames(path: str, url: str) -> dict[str, Any]:
    """In the child: every stored fact as frames, by one path, timed."""
    from vigie.engine.factset import FactSet
    from vigie.store import FactStore
    from vigie.store.columns import load_frames

    with FactStore(url) as store:
        before = peak_rss_mb()
        began = time.perf_counter()
        if path == "columns":
            frames = load_frames(store)
        else:
            frames = FactSet(list(store.iter_facts())).frames()
        seconds = time.perf_counter() - began
        peak = peak_rss_mb()
    digest = {kind: _digest(frame.sort("fact_id")) for kind, frame in frames.items()}
    rows = sum(frame.height for frame in frames.values())
    return {"seconds": seconds, "peak": peak, "start": before, "rows": rows, "digest": digest}


def _digest(frame: Any) -> list[int]:
    """The frame's content, row by row in order, as a few numbers (stable for a seed)."""
    hashes = frame.hash_rows(seed=1)
    return [hashes.len(), int(hashes.sum()), int((hashes // 7).sum())] if frame.height else [0]


def _run(path: str, url: str) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", path, url]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _case(label: str, url: str, repeat: int) -> None:
    runs: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
    for _ in range(repeat):
        for path in PATHS:
            runs[path].append(_run(path, url))
    median = {path: statistics.median(r["seconds"] for r in runs[path]) for path in PATHS}
    for path in PATHS:
        times = ", ".join(f"{r['seconds']:.2f}" for r in runs[path])
        first = runs[path][0]
        print(
            f"{label:<11} {path:<8} {first['rows']:>9,} facts: median {median[path]:6.2f} s "
            f"(runs {times}); ratio to the {BATCH_SECONDS:.0f} s batch budget "
            f"{median[path] / BATCH_SECONDS:.2f}; peak RSS "
            f"{max(r['peak'] for r in runs[path]):5.0f} MB (after imports "
            f"{first['start']:4.0f} MB)"
        )
    same = all(r["digest"] == runs["models"][0]["digest"] for path in PATHS for r in runs[path])
    print(
        f"{label:<11} columns {median['models'] / median['columns']:.1f}x faster than per-fact; "
        f"same frames: {'yes' if same else 'NO'}"
    )


def _fill(url: str, feeds: list[Path]) -> int:
    from vigie.ingest import ingest
    from vigie.store import FactStore

    with FactStore(url) as store:
        ingest(feeds, store)
        return sum(store.counts().values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=3000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VIGIE_TIMEZONE", "UTC")
    if args.one:
        print(json.dumps(_frames(*args.one)))
        return 0
    from vigie.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="vigie-bench-columns-") as name:
        folder = Path(name)
        began = time.perf_counter()
        feeds = generate(args.beds, args.days, 1, "csv", folder / "csv").feed_files
        print(
            f"synthetic hospital: {args.beds:,} beds x {args.days} days, seed 1, CSV export "
            f"({time.perf_counter() - began:.0f} s)"
        )
        sqlite = f"sqlite:///{folder / 'store.db'}"
        began = time.perf_counter()
        stored = _fill(sqlite, feeds)
        print(f"SQLite: {stored:,} facts stored ({time.perf_counter() - began:.0f} s)")
        _case("SQLite", sqlite, args.repeat)
        if not args.no_postgres:
            with postgres_schema() as url:
                began = time.perf_counter()
                stored = _fill(url, feeds)
                print(f"PostgreSQL: {stored:,} facts stored ({time.perf_counter() - began:.0f} s)")
                _case("PostgreSQL", url, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
