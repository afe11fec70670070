"""Benchmark: end-to-end ingest of a generated hospital into the store (facts per second).

What `vigie ingest` does, timed: read files, keep raw messages, parse, write facts, dead
letters and statuses — into SQLite (a temp file) and PostgreSQL (a fresh schema in database
`test` on 127.0.0.1), for the HL7 and FHIR exports of the same hospital. Re-ingest (all
duplicates) is timed too. Target: 10,000 facts/s end to end on one core.

    .venv/bin/python benchmarks/bench_ingest_store.py [--beds 300] [--days 7] [--no-postgres]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine

from vigie import settings
from vigie.ingest import ingest
from vigie.store import FactStore
from vigie.synthetic import generate

TARGET_FACTS_PER_SECOND = 10_000
POSTGRES: str = settings.value("test_postgres_url")


@contextmanager
def _postgres_schema() -> Iterator[str]:
    schema = f"vigie_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


def _run(url: str, feeds: list[Path], label: str) -> None:
    with FactStore(url) as store:
        began = time.perf_counter()
        report = ingest(feeds, store)
        first = time.perf_counter() - began
        began = time.perf_counter()
        ingest(feeds, store)
        again = time.perf_counter() - began
        stored = sum(store.counts().values())
    facts = sum(report.total_facts().values())
    rate = facts / first
    print(
        f"{label:<16} {facts:>9,} facts read, {stored:>9,} stored in {first:6.2f} s: "
        f"{rate:>8,.0f} facts/s (ratio to {TARGET_FACTS_PER_SECOND:,}/s target: "
        f"{rate / TARGET_FACTS_PER_SECOND:.2f}); re-ingest of duplicates {again:.2f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", type=int, default=300)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("VIGIE_TIMEZONE", "UTC")
    with tempfile.TemporaryDirectory(prefix="vigie-bench-ingest-") as folder:
        for fmt in ("hl7", "fhir"):
            out = Path(folder) / fmt
            feeds = generate(args.beds, args.days, 1, fmt, out).feed_files
            _run(f"sqlite:///{Path(folder) / f'{fmt}.db'}", feeds, f"{fmt} -> SQLite")
            if not args.no_postgres:
                with _postgres_schema() as url:
                    _run(url, feeds, f"{fmt} -> PostgreSQL")


if __name__ == "__main__":
    main()
