"""Crash recovery: an ingest killed anywhere loses nothing; the next one finishes its work.

A real ingest runs in a child process and is killed (SIGKILL) while the store holds raw messages
of a batch that were committed but not yet parsed; the test polls the store and kills the child
at several fill levels, one after the other on the same store (so one kill lands during the
recovery of the previous one). The next ingest, and ``recover`` alone, parse those messages
again from the bytes the store kept. The facts must equal those of an uninterrupted ingest into
a fresh store, JSON for JSON, by (kind, fact id).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError

from vigie.ingest import ingest, recover
from vigie.store import FactStore
from vigie.synthetic import generate

pytestmark = pytest.mark.slow

BATCH = 100  # small batches so that a small hospital gives several
CHILD = (
    "import sys; from pathlib import Path; from vigie.ingest import ingest; "
    "from vigie.store import FactStore; "
    f"ingest([Path(p) for p in sys.argv[2:]], FactStore(sys.argv[1]), batch_size={BATCH})"
)


@pytest.fixture(scope="module")
def feeds(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return generate(60, 3, 11, "hl7", tmp_path_factory.mktemp("hospital")).feed_files


@pytest.fixture(scope="module")
def expected(feeds: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    url = f"sqlite:///{tmp_path_factory.mktemp('reference') / 'vigie.db'}"
    with FactStore(url) as store:
        ingest(feeds, store, batch_size=BATCH)
        return _facts(store)


def _facts(store: FactStore) -> dict[tuple[str, str], dict[str, Any]]:
    return {(f.kind, f.fact_id): f.model_dump(mode="json") for f in store.iter_facts()}


def _fill(url: str) -> tuple[int, int]:
    """(raw messages stored, of which unfinished), or (0, 0) before the tables exist."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            total, received = connection.execute(
                text(
                    "SELECT count(*), coalesce(sum(CASE WHEN status = 'received' "
                    "THEN 1 ELSE 0 END), 0) FROM raw_message"
                )
            ).one()
            return int(total), int(received)
    except SQLAlchemyError:
        return 0, 0
    finally:
        engine.dispose()


def _ingest_killed_at(url: str, feeds: list[Path], fill: int) -> int:
    """Run an ingest in a child process and kill it as soon as the store holds at least
    ``fill`` raw messages and some are unfinished; the number left unfinished."""
    env = {**os.environ, "VIGIE_TIMEZONE": "UTC"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, *map(str, feeds)], env=env)
    try:
        while child.poll() is None:
            total, received = _fill(url)
            if total >= fill and received:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        child.wait(timeout=60)
    assert child.returncode in (0, -signal.SIGKILL)
    return _fill(url)[1]


def _crash_and_recover(url: str, feeds: list[Path], expected: dict[Any, Any]) -> None:
    left = [_ingest_killed_at(url, feeds, fill) for fill in (1, 250, 500)]
    assert any(left), "no kill landed between a batch's two commits"
    with FactStore(url) as store:
        recovered = recover(store, batch_size=BATCH)  # what a service does at start
        assert sum(recovered.total_messages().values()) == left[-1]
        assert "received" not in store.raw_counts()
        report = ingest(feeds, store, batch_size=BATCH)
        assert _facts(store) == expected
        assert set(store.raw_counts()) == {"loaded"}
        assert "rejected" not in report.total_messages()


def test_sqlite_ingest_killed_anywhere_loses_nothing(
    tmp_path: Path, feeds: list[Path], expected: dict[Any, Any]
) -> None:
    _crash_and_recover(f"sqlite:///{tmp_path / 'vigie.db'}", feeds, expected)


@pytest.mark.postgres
def test_postgres_ingest_killed_anywhere_loses_nothing(
    postgres_url: str, feeds: list[Path], expected: dict[Any, Any]
) -> None:
    _crash_and_recover(postgres_url, feeds, expected)


def test_the_next_ingest_alone_recovers(
    tmp_path: Path, feeds: list[Path], expected: dict[Any, Any]
) -> None:
    url = f"sqlite:///{tmp_path / 'vigie.db'}"
    assert _ingest_killed_at(url, feeds, 300) or _ingest_killed_at(url, feeds, 600)
    with FactStore(url) as store:
        ingest(feeds, store, batch_size=BATCH)
        assert _facts(store) == expected
        assert set(store.raw_counts()) == {"loaded"}
