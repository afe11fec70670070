"""What lets several processes write one store at once: one writer at a time, and who is alive.

Write transactions are serialised per store, so that two ingests never interleave inside one
another's read-then-write steps (a message looked up then inserted, a sparse patient record
merged over the stored one, a correction settled against the other versions of its message):

- SQLite: the file is in WAL mode (readers never wait for the writer), a connection waits up to
  ``BUSY_TIMEOUT`` seconds for a lock, and a write transaction starts with ``BEGIN IMMEDIATE``,
  taking the write lock before its first read (a deferred transaction that read first could not
  take it later without failing at once).
- PostgreSQL: a write transaction first takes a transaction-level advisory lock named after the
  store's schema, released at its commit or rollback.

A session is a writer when its engine carries the ``WRITE`` execution option
(``engine.execution_options(**WRITE)``). Reads take no lock.

Liveness of an ingest run (``FactStore``): on PostgreSQL the run holds a session-level advisory
lock for as long as its process lives (``run_lock``); on SQLite, a local file, the run records
its host, process id and the process's start time, and is alive while that process is.

>>> process_alive(os.getpid(), process_start(os.getpid()))
True
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

__all__ = [
    "BUSY_TIMEOUT",
    "WRITE",
    "connect_args",
    "host_name",
    "is_transient",
    "process_alive",
    "process_start",
    "run_lock",
    "run_unlock",
    "serialise_writes",
]

BUSY_TIMEOUT = 60.0  # seconds a SQLite connection waits for another process's write
WRITE = {"vigie_write": True}

# SQLite's busy and locked result codes; PostgreSQL's deadlock, serialisation failure and lock
# timeout: the transaction failed for another's sake, not because of what it writes.
_SQLITE_BUSY = frozenset({5, 6})
_POSTGRES_TRANSIENT = frozenset({"40P01", "40001", "55P03"})


def connect_args(drivername: str) -> dict[str, Any]:
    """The driver's connection arguments.

    psycopg prepares a statement after a few runs and may keep the plan it made while the
    tables were empty (sequential scans), which made a large first ingest crawl: no automatic
    prepared statements for the store's bulk lookups. SQLite waits ``BUSY_TIMEOUT`` for a lock.
    """
    if drivername == "postgresql+psycopg":
        return {"prepare_threshold": None}
    if drivername.startswith("sqlite"):
        return {"timeout": BUSY_TIMEOUT}
    return {}


def serialise_writes(engine: Engine) -> None:
    """Make write transactions of ``engine`` take the store's write lock first (see above)."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connected)
        event.listen(engine, "begin", _sqlite_begin)
    elif engine.dialect.name == "postgresql":
        event.listen(engine, "begin", _postgres_begin)


def _sqlite_connected(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit transactions would start only at the first write; SQLAlchemy
    # emits BEGIN itself (``_sqlite_begin``), so that a write transaction can be IMMEDIATE.
    dbapi_connection.isolation_level = None
    # Persistent in the file (an in-memory database keeps its own mode); when another process
    # holds the file just then, a later connection switches it.
    with contextlib.suppress(sqlite3.OperationalError):
        dbapi_connection.execute("PRAGMA journal_mode=WAL")


def _sqlite_begin(connection: Connection) -> None:
    writing = connection.get_execution_options().get("vigie_write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


def _schema_key() -> ColumnElement[int]:
    """The store's advisory-lock space: its schema, so that stores in other schemas of the same
    database do not wait for each other."""
    return func.hashtext(func.coalesce(func.current_schema(), ""))


def _postgres_begin(connection: Connection) -> None:
    if connection.get_execution_options().get("vigie_write", False):
        connection.execute(select(func.pg_advisory_xact_lock(_schema_key(), 0)))


def run_lock(run: int, *, hold: bool) -> Any:
    """PostgreSQL: the statement that takes run ``run``'s advisory lock for the session
    (``hold``: the run itself, for its lifetime), or tries it for the current transaction
    (true when no live process holds it: the run is over)."""
    if hold:
        return select(func.pg_advisory_lock(_schema_key(), run))
    return select(func.pg_try_advisory_xact_lock(_schema_key(), run))


def run_unlock(run: int) -> Any:
    """PostgreSQL: the statement by which run ``run`` releases its lock when it ends. Closing
    the connection releases it too, but only once the server has seen the connection go, a
    moment after the client closed it: another store looking then would still find it alive."""
    return select(func.pg_advisory_unlock(_schema_key(), run))


def is_transient(error: SQLAlchemyError) -> bool:
    """Whether the database refused a statement for another transaction's sake (a deadlock, a
    lock it could not get in time), never because of what the statement writes."""
    cause = getattr(error, "orig", None)
    if isinstance(cause, sqlite3.Error):
        return getattr(cause, "sqlite_errorcode", 0) & 0xFF in _SQLITE_BUSY
    return getattr(cause, "sqlstate", None) in _POSTGRES_TRANSIENT


def host_name() -> str:
    return socket.gethostname()


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (Linux: clock ticks after boot), which tells a process from
    a later one given the same id; None where ``/proc`` cannot tell, or for a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def process_alive(pid: int, started: str | None) -> bool:
    """Whether process ``pid`` of this host, which started at ``started`` (``process_start``),
    still runs."""
    if started is not None:
        return process_start(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
