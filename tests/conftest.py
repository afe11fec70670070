"""Shared fixtures: where the reference data lives."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from vigie import settings

# Fact times are naive UTC; feeds without offsets are read in the site's zone. The suite reads
# them as UTC so that expected values equal the times written in the fixtures; the conversion
# itself is tested in test_base.py.
os.environ["VIGIE_TIMEZONE"] = "UTC"
settings.reload()

SHARED_DATA: Path = settings.value("shared_data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The project's reference data (``../shared/data``); tests that need it use this."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"reference data not found at {SHARED_DATA} (set VIGIE_SHARED_DATA)")
    return SHARED_DATA


POSTGRES_URL: str = settings.value("test_postgres_url")


@contextmanager
def postgres_schema(prefix: str = "vigie_test") -> Iterator[str]:
    """A URL of the test PostgreSQL whose search_path is a fresh schema, dropped afterwards."""
    from sqlalchemy import create_engine

    schema = f"{prefix}_{os.getpid()}_{os.urandom(3).hex()}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    with postgres_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'vigie.db'}"
    return request.getfixturevalue("postgres_url")
