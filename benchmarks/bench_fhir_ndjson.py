"""Facts per second ingesting Bulk FHIR NDJSON on one core: fast path, and validated path.

The synthea-bulk-10 NDJSON files (shared/data/fhir/synthea-bulk-10) are replicated to a decent
size (``--copies``), then split and parsed as ``vigie ingest`` would. Target: 50,000 facts/s for
the fast path. Run: ``.venv/bin/python benchmarks/bench_fhir_ndjson.py [--copies N]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from vigie import settings
from vigie.connectors.base import FeedError
from vigie.connectors.fhir import connector as fhir
from vigie.connectors.fhir.fast import parse_fhir_datetime
from vigie.terminology import default_terminology

TARGET_FACTS_PER_SECOND = 50_000
DATA: Path = settings.value("shared_data")
BULK = DATA / "fhir" / "synthea-bulk-10"


def corpus(copies: int) -> list[tuple[str, bytes]]:
    """The NDJSON files, ``copies`` times over (same ids and times: parsing cost only)."""
    files = [(path.name, path.read_bytes()) for path in sorted(BULK.glob("*.ndjson"))]
    return files * copies


def ingest(documents: list[tuple[str, bytes]], validate: bool) -> tuple[int, int, float]:
    """Split and parse every document; (facts, errors, seconds)."""
    facts = errors = 0
    start = time.perf_counter()
    for name, content in documents:
        parse_fhir_datetime.cache_clear()  # a copy must not ride on the previous copy's cache
        for raw in fhir.split(name, content):
            try:
                outcome = fhir.parse(raw, validate=validate)
            except FeedError:
                errors += 1
                continue
            facts += len(outcome.facts)
            errors += len(outcome.errors)
    return facts, errors, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=10, help="replications of bulk-10 (fast)")
    parser.add_argument("--validated-copies", type=int, default=1, help="for the validated path")
    args = parser.parse_args()
    default_terminology()  # table loading is not ingestion
    ingest(corpus(1), validate=True)  # warm-up: imports and model classes
    size = sum(len(content) for _, content in corpus(args.copies))
    facts, errors, seconds = ingest(corpus(args.copies), validate=False)
    rate = facts / seconds
    print(
        f"fast path: {facts:,} facts from {size / 1e6:.1f} MB in {seconds:.2f} s "
        f"= {rate:,.0f} facts/s ({errors} errors)"
    )
    print(
        f"ratio to target {TARGET_FACTS_PER_SECOND:,} facts/s: {rate / TARGET_FACTS_PER_SECOND:.2f}"
    )
    facts, errors, seconds = ingest(corpus(args.validated_copies), validate=True)
    validated = facts / seconds
    print(
        f"validated path: {facts:,} facts in {seconds:.2f} s = {validated:,.0f} facts/s "
        f"({errors} errors); fast path is {rate / validated:.1f}x faster"
    )


if __name__ == "__main__":
    main()
