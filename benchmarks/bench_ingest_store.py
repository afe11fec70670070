"""Benchmark: end-to-end ingest of a generated hospital into the store (facts stored per second).

What `vigie ingest` does, timed: read files, keep raw messages, parse, write facts, dead
letters and statuses — into SQLite (a temp file) and PostgreSQL (a fresh schema in database
`test` on 127.0.0.1), for the HL7, FHIR and CSV exports of the same hospital. The figure is
the facts the store holds afterwards (``FactStore.counts()``: distinct facts, a record re-sent
in several messages counted once) per second of the first ingest. Re-ingest of the same files
(all duplicates) is timed too. Each run is a process of its own, so that its peak RSS is its
own (its high-water mark). Target: 10,000 facts/s end to end on one core.

    .venv/bin/python benchmarks/bench_ingest_store.py [--beds 300] [--days 7] [--no-postgres]
        [--formats hl7,fhir,csv]
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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TARGET_FACTS_PER_SECOND = 10_000


@contextmanager
def postgres_schema() -> Iterator[str]:
    """The URL of a fresh schema of the test PostgreSQL, dropped afterwards."""
    from sqlalchemy import create_engine

    from vigie import settings

    base: str = settings.value("test_postgres_url")
    schema = f"vigie_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: the high-water mark of its own memory (``VmHWM``).

    Not ``ru_maxrss``: a process started by exec inherits the peak of the process it was
    forked from (here the benchmark, which holds the generated hospital)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6  # not Linux


def _one(url: str, feeds: list[Path]) -> dict[str, Any]:
    """In the child process: one ingest, timed, and what the store holds after it."""
    from vigie.ingest import ingest
    from vigie.store import FactStore

    with FactStore(url) as store:
        began = time.perf_counter()
        report = ingest(feeds, store)
        seconds = time.perf_counter() - began
        stored = sum(store.counts().values())
    return {
        "seconds": seconds,
        "stored": stored,
        "read": sum(report.total_facts().values()),
        "messages": dict(report.total_messages()),
        "peak_rss_mb": peak_rss_mb(),
    }


def _case(url: str, feeds: list[Path]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", url, *map(str, feeds)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _print(label: str, first: dict[str, Any], again: dict[str, Any]) -> None:
    stored, seconds = first["stored"], first["seconds"]
    rate = stored / seconds
    duplicates = again["messages"].get("duplicate", 0)
    print(
        f"{label:<17} first ingest: {stored:>9,} facts stored ({first['read']:,} read) in "
        f"{seconds:6.2f} s: {rate:>7,.0f} facts stored/s (ratio to "
        f"{TARGET_FACTS_PER_SECOND:,}/s: {rate / TARGET_FACTS_PER_SECOND:.2f}), "
        f"peak RSS {first['peak_rss_mb']:4.0f} MB"
    )
    print(
        f"{'':<17} re-ingest:    {again['stored']:>9,} facts stored after, "
        f"{duplicates:,} duplicate messages in {again['seconds']:6.2f} s, "
        f"peak RSS {again['peak_rss_mb']:4.0f} MB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=300)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--formats", default="hl7,fhir,csv")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("VIGIE_TIMEZONE", "UTC")
    if args.one:
        url, *feeds = args.one
        print(json.dumps(_one(url, [Path(feed) for feed in feeds])))
        return 0
    from vigie.synthetic import generate

    print(f"synthetic hospital: {args.beds:,} beds x {args.days} days, seed 1")
    with tempfile.TemporaryDirectory(prefix="vigie-bench-ingest-") as folder:
        for fmt in args.formats.split(","):
            feeds = generate(args.beds, args.days, 1, fmt, Path(folder) / fmt).feed_files
            size = sum(feed.stat().st_size for feed in feeds) / 1e6
            print(f"{fmt}: {len(feeds)} files, {size:.1f} MB")
            sqlite = f"sqlite:///{Path(folder) / f'{fmt}.db'}"
            _print(f"{fmt} -> SQLite", _case(sqlite, feeds), _case(sqlite, feeds))
            if not args.no_postgres:
                with postgres_schema() as url:
                    _print(f"{fmt} -> PostgreSQL", _case(url, feeds), _case(url, feeds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
