"""The fact store: raw inbound messages, dead letters and facts, in SQLite or PostgreSQL.

The store is chosen by a SQLAlchemy URL: ``VIGIE_DATABASE_URL`` if set, else a SQLite file in
the user's data directory, so every command and the service share it.

- ``raw_message`` keeps every inbound unit *before* it is parsed (bytes, hash, feed, document),
  one row per version: unique on (feed, message_id, sha256), with its status: ``received``
  until what it gave is stored, then ``loaded``, ``ignored``, ``partial``, ``rejected`` or
  ``superseded``. Ingest is idempotent — the same message sent twice is recorded once; a
  message sent again that was never finished (``received``: a crash) or that was
  dead-lettered (``partial``, ``rejected``) is parsed again, never taken for a duplicate.
- Versions: the same (feed, message_id) with a different content is a new version of that
  message (a correction), kept beside the earlier ones (the history of raw versions). Of the
  versions, the one with the latest ``version_time`` (the sender's time; arrival order when
  either has none) is current: its facts replace every fact the other versions gave — a fact a
  correction no longer gives is removed — and the others become ``superseded``. An older
  version that arrives late is kept as ``superseded`` without effect. A version that gave no
  fact because it could not be read (``rejected``) never supersedes a readable one.
- ``dead_letter`` keeps each error with the message it came from; nothing is lost.
- ``fact`` keeps each fact as its JSON form, keyed by (kind, fact_id), indexed by patient, with
  the ``version_time`` of its source: between two messages giving one fact, the later
  ``version_time`` wins whatever the arrival order (an A01 admission received after the A03
  discharge of the same stay does not reopen it). A retracted fact (HL7 OBX-11 ``D``, FHIR
  ``entered-in-error``) is kept as a tombstone row (``retracted``), which the rules never see
  and which an older version of the fact arriving later does not bring back.
- ``ingest_run`` lists the open stores that keep or recover messages, one per process: a
  ``received`` message belongs to the run that kept it (``raw_message.ingest_run``) until that
  run has stored what it gave.
- ``alert`` and ``alert_event`` (the alerts and their append-only lifecycle log) are defined in
  ``vigie.store.alerts`` on this module's metadata (the package imports it), so that they are
  created with the others, in a new store as in one made before them (tables only: the schema
  version is unchanged).
- The service's tables (users, tokens, wards, decisions, versions, audit log) are defined in
  ``vigie.store.service`` on the same metadata.
- Every table is made, and later changed, by the store's migrations (``vigie.store.migrations``,
  Alembic): a store is upgraded to the latest revision when it is opened.

Several processes may ingest into one store at once (see ``vigie.store.concurrency``): write
transactions are serialised, one at a time per store, while parsing runs in parallel; a
message another live run is parsing is waited for (``keep_raws``), and only the unfinished
messages of runs that are over are taken over (``claim_unfinished``).

A message the database cannot hold (a key longer than its column, a NUL byte, which PostgreSQL
refuses in text) is refused alone: it is dead-lettered with the reason, never its content, and
the rest of its batch is stored. The limits are checked the same on SQLite, which does not
enforce column sizes, so that a message is refused alike on both.

>>> store = FactStore("sqlite://")
>>> store.counts()["lab"]
0
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar, cast

from platformdirs import user_data_dir
from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    column,
    create_engine,
    delete,
    exists,
    func,
    insert,
    inspect,
    literal_column,
    select,
    update,
    values,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, Session, mapped_column

from vigie import settings
from vigie.errors import VigieError
from vigie.facts import FACT_KINDS, AnyFact, Fact, Patient, Retraction
from vigie.store import concurrency, migrations

__all__ = [
    "DONE_STATUSES",
    "DeadLetter",
    "FactStore",
    "MessageOutcome",
    "RawRecord",
    "RawVersion",
    "SavedBatch",
    "StoreError",
    "StoredRaw",
    "default_database_url",
    "fact_payloads",
    "in_memory_url",
]

log = logging.getLogger(__name__)

# A message in one of these states was fully processed without error: sent again, it is a
# duplicate. Any other (received: never finished; partial, rejected: dead-lettered) is retried.
DONE_STATUSES = frozenset({"loaded", "ignored", "superseded"})

# A version in one of these states gave what it holds to the store (a version that could not be
# read at all, ``rejected``, never supersedes one that could).
_APPLIED = ("loaded", "partial", "ignored")
SCHEMA_VERSION = 2
# Raw messages with one outcome are updated by one statement from this many on (see
# ``record_outcomes``).
_GROUPED_UPDATE = 20

# How long a keep waits for another live ingest to finish a message it kept, then takes it over
# (a process that hangs must not stop the others), and how often it looks again.
_WAIT_FOR_RUN = 60.0
_POLL = 0.05


class StoreError(VigieError):
    """The store could not be reached or written; wraps the database library's error."""


def default_database_url() -> str:
    """``VIGIE_DATABASE_URL``, else ``sqlite:///<user data dir>/vigie.db``."""
    url: str | None = settings.value("database_url")
    if url:
        return url
    directory = Path(user_data_dir("vigie", appauthor=False))
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'vigie.db'}"


class _Base(DeclarativeBase):
    pass


class RawMessageRow(_Base):
    __tablename__ = "raw_message"
    __table_args__ = (
        UniqueConstraint("feed", "message_id", "sha256"),
        # The unfinished messages by owner: a recovery reads them without scanning the store
        # (a partial index: only the few messages under way are in it).
        Index(
            "ix_raw_message_unfinished",
            "ingest_run",
            sqlite_where=literal_column("status = 'received'"),
            postgresql_where=literal_column("status = 'received'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    feed: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[str] = mapped_column(String(512))
    document: Mapped[str] = mapped_column(Text)
    position: Mapped[str | None] = mapped_column(Text)
    encoding: Mapped[str | None] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="received")
    fact_count: Mapped[int] = mapped_column(Integer, default=0)
    version_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # The ingest run that kept it (or took it over) and parses it while it is ``received``.
    ingest_run: Mapped[int | None] = mapped_column(Integer, nullable=True)


class IngestRunRow(_Base):
    """A process's store that keeps or recovers messages (see ``vigie.store.concurrency``):
    deleted when the store is closed; a row whose process is gone is a run that was killed."""

    __tablename__ = "ingest_run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    process_start: Mapped[str | None] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DeadLetterRow(_Base):
    __tablename__ = "dead_letter"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    raw_message_id: Mapped[int] = mapped_column(ForeignKey("raw_message.id"), index=True)
    error: Mapped[str] = mapped_column(Text)
    position: Mapped[str | None] = mapped_column(Text)
    fatal: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FactRow(_Base):
    __tablename__ = "fact"
    __table_args__ = (Index("ix_fact_patient_kind", "patient_id", "kind"),)

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    fact_id: Mapped[str] = mapped_column(String(512), primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(128))
    raw_message_id: Mapped[int | None] = mapped_column(ForeignKey("raw_message.id"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    version_time: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    retracted: Mapped[bool] = mapped_column(default=False)


class StoreMetaRow(_Base):
    """What made the store: the schema version, checked when the store is opened."""

    __tablename__ = "store_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


@dataclass(frozen=True)
class RawRecord:
    """The outcome of recording a raw message: its row id and whether it was already known.

    ``replaced`` says it is a new version (another content) of a message the store knows.
    ``refused`` is the dead-letter text of a message the store could not keep under its own id
    (kept under a stand-in id, rejected, not to be parsed).
    """

    id: int
    duplicate: bool
    replaced: bool
    refused: str | None = None


@dataclass(frozen=True)
class MessageOutcome:
    """What parsing one stored raw message gave: status, facts, errors (text, position, fatal).

    ``document``, ``message_id`` and ``position`` locate the message in a refusal's text.
    ``retractions`` are the facts it withdraws; ``version_time`` is the sender's time of this
    version of the message (see the module's docstring).
    """

    raw_id: int
    document: str
    message_id: str
    position: str | None
    status: str
    facts: Sequence[Fact] = ()
    errors: Sequence[tuple[str, str | None, bool]] = field(default_factory=list)
    retractions: Sequence[Retraction] = ()
    version_time: datetime | None = None


@dataclass(frozen=True)
class SavedBatch:
    """What ``save_outcomes`` did beyond storing: messages it refused (raw id → dead-letter
    text) and versions it kept as history only, being older than the version the store holds."""

    refused: dict[int, str] = field(default_factory=dict)
    superseded: frozenset[int] = frozenset()


@dataclass(frozen=True)
class StoredRaw:
    """A raw message as the store holds it (the fields of a connector's ``RawMessage``)."""

    id: int
    feed: str
    document: str
    content: bytes
    message_id: str
    position: str | None
    encoding: str | None


@dataclass(frozen=True)
class RawVersion:
    """One version of a message as received: its status says whether it is the one applied."""

    id: int
    sha256: str
    status: str
    version_time: datetime | None
    received_at: datetime
    content: bytes


@dataclass(frozen=True)
class DeadLetter:
    feed: str
    document: str
    message_id: str
    error: str
    position: str | None
    fatal: bool


def _now() -> datetime:
    return datetime.now(UTC)


def _length(column: InstrumentedAttribute[str]) -> int:
    """A string column's size, so that the checks follow the schema."""
    assert isinstance(column.type, String) and column.type.length is not None
    return column.type.length


_MESSAGE_ID_MAX = _length(RawMessageRow.message_id)
_FACT_ID_MAX = _length(FactRow.fact_id)
_PATIENT_ID_MAX = _length(FactRow.patient_id)

# A kept message's fields, as a recovery reads them back, oldest first.
_STORED_RAW = select(
    RawMessageRow.id,
    RawMessageRow.feed,
    RawMessageRow.document,
    RawMessageRow.content,
    RawMessageRow.message_id,
    RawMessageRow.position,
    RawMessageRow.encoding,
).order_by(RawMessageRow.id)


_Executor = Session | Connection
"""What the write steps run on: a writer's session, or a Core connection of the writer (the
hot path of a keep, see ``keep_raws``)."""

_RAW_TABLE = cast(Table, RawMessageRow.__table__)
_RAW = _RAW_TABLE.c
# A keep's two statements, built once (Core: the ORM's bulk insert costs more than the row).
_KNOWN_RAWS = select(_RAW.message_id, _RAW.id, _RAW.sha256, _RAW.status, _RAW.ingest_run).where(
    _RAW.feed == bindparam("feed"), _RAW.message_id.in_(bindparam("ids", expanding=True))
)
# One message's outcome, by id (an executemany; Core, so that a connection runs it too).
_OUTCOME = (
    update(_RAW_TABLE)
    .where(_RAW.id == bindparam("raw_id"))
    .values(
        status=bindparam("status"),
        fact_count=bindparam("fact_count"),
        version_time=bindparam("version_time"),
    )
)
_INSERT_RAW = insert(_RAW_TABLE).returning(_RAW.id, sort_by_parameter_order=True)
_RAW_FIELDS = (
    "feed",
    "message_id",
    "document",
    "position",
    "encoding",
    "sha256",
    "content",
    "received_at",
    "status",
    "fact_count",
    "ingest_run",
)


_NEW_RAWS_AT_ONCE = 500
"""The most messages ``_insert_new_raws`` takes (11 parameters each; PostgreSQL takes 65,535 a
statement); a larger batch is kept by the comparing path."""


@lru_cache(maxsize=64)
def _insert_new_raws(dialect: Dialect, count: int) -> str:
    """PostgreSQL: the statement inserting ``count`` raw messages if the store knows none of
    their (feed, message id) keys — all of them or none — and returning (feed, message id,
    id) of those inserted (see ``FactStore.keep_raws``), in ``dialect``'s SQL; parameters
    ``<field>_<n>``.

    ``ON CONFLICT DO NOTHING``: a message another process inserts at the same moment (the
    statement's snapshot, taken before, does not see it) is left out, not an error. Compiled
    once per count to the driver's SQL: compiling it for each keep cost more than the keep.
    """
    given = values(*(column(name, _RAW[name].type) for name in _RAW_FIELDS), name="given")
    rows = [
        tuple(bindparam(f"{name}_{n}", type_=_RAW[name].type) for name in _RAW_FIELDS)
        for n in range(count)
    ]
    new = select(given.data(rows)).cte("given")
    other = new.alias("other")
    known = select(_RAW.id).where(_RAW.feed == other.c.feed, _RAW.message_id == other.c.message_id)
    statement = (
        postgresql.insert(_RAW_TABLE)
        .from_select(list(_RAW_FIELDS), select(new).where(~exists(known)))
        .on_conflict_do_nothing()
        .returning(_RAW.feed, _RAW.message_id, _RAW.id)
    )
    return str(statement.compile(dialect=dialect))


_FACT_TABLE = cast(Table, FactRow.__table__)
_DEAD_LETTER_TABLE = cast(Table, DeadLetterRow.__table__)
_FACT = _FACT_TABLE.c
_FACT_FIELDS = (
    "kind",
    "fact_id",
    "patient_id",
    "raw_message_id",
    "payload",
    "version_time",
    "retracted",
)
_OUTCOME_FIELDS = ("id", "status", "fact_count", "version_time")


def _arrays(table: Table, names: Sequence[str]) -> Any:
    """PostgreSQL: rows of the columns ``names`` of ``table`` given as one array parameter
    per column (``unnest``): a batch of rows in one statement of fixed text. Strings are cast
    to unbounded ``VARCHAR`` arrays, so that a value too long for its column fails on the
    column, as a row inserted otherwise does, and is never cut."""
    arrays = [
        sql_cast(
            bindparam(name),
            postgresql.ARRAY(
                String() if isinstance(table.c[name].type, String) else table.c[name].type
            ),
        )
        for name in names
    ]
    return func.unnest(*arrays).table_valued(*names, name="given").render_derived()


def _binary(sql: str, names: Sequence[str]) -> str:
    """``sql`` with the parameters ``names`` sent in binary (psycopg's ``%(name)b``): an array
    in text is escaped element by element in Python (the quotes of every JSON payload), in
    binary it is copied."""
    for name in names:
        sql = sql.replace(f"%({name})s", f"%({name})b")
    return sql


def _on_conflict(statement: Any, replaced: Sequence[str]) -> Any:
    """A fact insert that updates a stored fact unless it holds a later version time (see
    ``FactStore._upsert``)."""
    excluded, stored = statement.excluded, _FACT
    columns = ("patient_id", "raw_message_id", "version_time", "retracted", *replaced)
    return statement.on_conflict_do_update(
        index_elements=["kind", "fact_id"],
        set_={column: excluded[column] for column in columns},
        where=(
            stored.version_time.is_(None)
            | excluded.version_time.is_(None)
            | (excluded.version_time >= stored.version_time)
        ),
    )


@lru_cache(maxsize=8)
def _upsert_arrays(dialect: Dialect, replaced: tuple[str, ...]) -> str:
    """PostgreSQL (psycopg): ``FactStore._upsert`` for a batch of facts in one statement, each
    column an array (``_arrays``), in ``dialect``'s SQL, compiled once. psycopg runs an
    executemany as one statement per row, each parsed and planned by the server: the facts
    of a batch of messages cost that many statements."""
    given = _arrays(_FACT_TABLE, _FACT_FIELDS)
    rows = select(*(given.c[name] for name in _FACT_FIELDS))
    statement = postgresql.insert(_FACT_TABLE).from_select(list(_FACT_FIELDS), rows)
    return _binary(str(_on_conflict(statement, replaced).compile(dialect=dialect)), _FACT_FIELDS)


@lru_cache(maxsize=8)
def _outcomes_arrays(dialect: Dialect) -> str:
    """PostgreSQL (psycopg): the outcomes of many raw messages (status, fact count, version
    time by id) in one statement, each column an array (``_arrays``)."""
    given = _arrays(_RAW_TABLE, _OUTCOME_FIELDS)
    statement = (
        update(_RAW_TABLE)
        .where(_RAW.id == given.c.id)
        .values(
            status=given.c.status,
            fact_count=given.c.fact_count,
            version_time=given.c.version_time,
        )
    )
    return _binary(str(statement.compile(dialect=dialect)), _OUTCOME_FIELDS)


def _all_naive(times: Iterable[datetime | None]) -> bool:
    """Whether no time carries an offset: psycopg dumps a list of times by one dumper, which
    fails on naive and aware times mixed (a statement per row converts each alone)."""
    return all(moment is None or moment.tzinfo is None for moment in times)


def _connection(session: _Executor) -> Connection:
    """The connection a write step runs on (a session's, in its transaction)."""
    return session if isinstance(session, Connection) else session.connection()


Payloads = dict[int, dict[str, Any]]
"""Facts' JSON forms by ``id(fact)`` (``fact_payloads``)."""


def fact_payloads(facts: Iterable[Fact]) -> Payloads:
    """The JSON forms facts are stored as, by ``id(fact)``, made before a write transaction
    (``FactStore.save_outcomes(outcomes, payloads)``): the store's write lock, which every
    keep of a raw message waits for, is not held while they are made. A patient record is
    merged with the stored one inside the transaction, and made there."""
    return {id(f): f.model_dump(mode="json") for f in facts if not isinstance(f, Patient)}


def _payload(fact: Fact, payloads: Payloads | None) -> dict[str, Any]:
    made = payloads.get(id(fact)) if payloads else None
    return fact.model_dump(mode="json") if made is None else made


def _key_problem(name: str, value: str, limit: int) -> str | None:
    """Why a key cannot be stored, naming its size, never its content (it may be patient data)."""
    if len(value) > limit:
        return f"a {name} of at most {limit} characters, got {len(value)}"
    if "\x00" in value:
        return f"a {name} without NUL byte (PostgreSQL refuses them in text)"
    return None


def _fact_problem(facts: Sequence[Fact]) -> str | None:
    for fact in facts:
        problem = _key_problem("patient id", fact.patient_id, _PATIENT_ID_MAX) or _key_problem(
            f"{fact.kind} id", fact.fact_id, _FACT_ID_MAX
        )
        if problem:
            return problem
    return None


def _text(value: str) -> str:
    """Free text (a document name, a position, an error) with any NUL byte spelled out."""
    return value.replace("\x00", "\\x00") if "\x00" in value else value


def _shown_id(message_id: str) -> str:
    """A message id fit to print: escaped, shortened."""
    shown = message_id.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= 60 else shown[:59] + "…"


def _refusal(document: str, message_id: str, position: str | None, expected: str) -> str:
    """A refused message's dead-letter text, worded like a connector's located errors."""
    where = [_text(document), f"message {_shown_id(message_id)}", *([position] if position else [])]
    return f"{': '.join(where)}: expected {expected}"


def database_reason(error: SQLAlchemyError) -> str:
    """The database's own reason (its error class and first line), without the statement nor
    its parameters (patient data)."""
    cause = getattr(error, "orig", None) or error
    diag = getattr(cause, "diag", None)
    text = str(cause)
    primary = getattr(diag, "message_primary", None) or (text.splitlines()[0] if text else "")
    return f"{cause.__class__.__name__}: {primary[:200]}"


def _database_problem(error: SQLAlchemyError) -> str:
    return f"the store refused the message ({database_reason(error)})"


def _later(one: datetime | None, other: datetime | None) -> bool:
    """Whether ``one`` is a strictly later version time than ``other`` (both known)."""
    return one is not None and other is not None and one > other


def _latest(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One fact row per (kind, fact_id): the later version, the later in the batch when their
    times tie or are unknown (as if stored one by one); sorted by key, so that writers take the
    rows' locks in one order."""
    unique: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["kind"], row["fact_id"])
        if key not in unique or not _later(unique[key]["version_time"], row["version_time"]):
            unique[key] = row
    return [unique[key] for key in sorted(unique)]


def _within(ids: list[int], sizes: dict[int, int], max_bytes: int | None) -> list[int]:
    """The first ``ids`` whose sizes add up to at most ``max_bytes`` (at least one)."""
    if max_bytes is None:
        return ids
    total = 0
    for count, raw_id in enumerate(ids):
        total += sizes[raw_id]
        if count and total > max_bytes:
            return ids[:count]
    return ids


def _stand_in_id(message_id: str) -> str:
    """The key a message whose own id cannot be stored is kept under (the same at every send)."""
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"unstorable-id:sha256:{digest}"


def in_memory_url(url: str) -> bool:
    """Whether ``url`` is an in-memory SQLite database (one per connection, so per thread)."""
    try:
        parsed = make_url(url)
    except (SQLAlchemyError, ValueError):  # not a URL: FactStore says why
        return False
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


E = TypeVar("E", bound=Exception)


class _HeldConnection:
    """A database connection of a store's engine held by one owner, outside the pool (the
    driver's DB-API connection, in autocommit on PostgreSQL): opened at first use
    (``held``), closed by ``close`` — after a failure, so that the next use opens another —
    or when the owner is collected unclosed (an app never shut down), else the driver warns
    when the connection is collected, open. One user at a time."""

    def __init__(self, facts: FactStore) -> None:
        self._facts = facts
        dialect = facts.engine.dialect
        self._local = dialect.name == "sqlite"
        self.errors = (SQLAlchemyError, dialect.loaded_dbapi.Error)
        self._connection: Any = None  # the driver's connection, while one is held
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def held(self) -> Any:
        """The connection, opened if none is held."""
        if self._connection is None:
            pooled = self._facts.engine.raw_connection()  # with the store's connect settings
            connection: Any = pooled.driver_connection
            pooled.detach()  # its own: never handed back to the pool in autocommit
            if not self._local:
                connection.autocommit = True
            self._prepare(connection)
            self._connection = connection
            self._finalizer = weakref.finalize(self, _close_quietly, connection, self.errors)
        return self._connection

    def _prepare(self, connection: Any) -> None:
        """Settings of a connection just opened."""

    def failed(self, error: Exception, kind: type[E], what: str) -> E:
        """After a use failed: the connection closed (the next use opens another), and the
        error to raise, naming the database and its reason (never the statement's values)."""
        self.close()
        reason = database_reason(error)  # type: ignore[arg-type]  # a driver's error too
        return kind(f"cannot {what} in {self._facts.safe_url}: {reason}")

    def close(self) -> None:
        finalizer, self._connection, self._finalizer = self._finalizer, None, None
        if finalizer is not None:
            finalizer()  # closes the connection (once: the collector will not again)


def _close_quietly(connection: Any, errors: tuple[type[BaseException], ...]) -> None:
    with suppress(*errors):  # a connection already broken
        connection.close()


class FactStore:
    """Facts and raw messages in one SQL database (SQLite file or PostgreSQL)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_database_url()
        try:
            self.safe_url = make_url(self.url).render_as_string(hide_password=True)
            driver = make_url(self.url).drivername
            self.engine: Engine = create_engine(
                self.url, connect_args=concurrency.connect_args(driver)
            )
        except (SQLAlchemyError, ValueError) as error:
            raise StoreError(f"cannot open the store {self.url.split('@')[-1]}: {error}") from error
        concurrency.serialise_writes(self.engine)
        self._writer = self.engine.execution_options(**concurrency.WRITE)
        self._run: int | None = None  # this store's ingest run, once it keeps or claims
        self._run_lent = False  # ``_run`` is another store's (``store_for_run``)
        self._run_connection: Connection | None = None  # PostgreSQL: holds the run's lock
        # PostgreSQL: the connection new raw messages are kept on (``_insert_held``), taken by
        # one thread at a time (the MLLP keeper, mostly).
        self._keeper_lock = threading.Lock()
        self._kept_on = _HeldConnection(self)
        try:
            self._create_tables()
            found = self._schema_version()
        except SQLAlchemyError as error:
            self.engine.dispose()
            cause = getattr(error, "orig", None) or error
            raise StoreError(f"cannot open the store {self.safe_url}: {cause}".strip()) from error
        if found != SCHEMA_VERSION:
            self.engine.dispose()
            raise StoreError(
                f"cannot open the store {self.safe_url}: it was made by an earlier Vigie "
                f"(store schema {found}, expected {SCHEMA_VERSION}), older than its migrations: "
                "ingest into a new store (VIGIE_DATABASE_URL) or delete this one"
            )

    def _schema_version(self) -> int:
        """The store's schema version, recorded when its tables are created; a store from
        before versions were recorded (no ``version_time`` column) is schema 1."""
        columns = {column["name"] for column in inspect(self.engine).get_columns("fact")}
        if "version_time" not in columns:
            return 1
        with self._write_session() as session:
            found = session.get(StoreMetaRow, "schema_version")
            if found is None:
                session.add(StoreMetaRow(key="schema_version", value=str(SCHEMA_VERSION)))
                try:
                    session.commit()
                except IntegrityError:  # another process opening the new store wrote it first
                    session.rollback()
                    found = session.get(StoreMetaRow, "schema_version")
            return SCHEMA_VERSION if found is None else int(found.value)

    def _create_tables(self) -> None:
        """Upgrade the store to the latest migration, one process at a time (two opening a new
        store at once); a table of the latest schema missing all the same (dropped by hand) is
        made again from the models, which are that schema."""
        with self._writer.begin() as connection:
            migrations.upgrade(connection)
            missing = set(_Base.metadata.tables) - set(inspect(connection).get_table_names())
            if missing:
                tables = [_Base.metadata.tables[name] for name in sorted(missing)]
                _Base.metadata.create_all(connection, tables=tables)

    def close(self) -> None:
        """End this store's ingest run (its unfinished messages become recoverable) and
        release the connection pool."""
        self._end_run()
        with self._keeper_lock:
            self._kept_on.close()
        self.engine.dispose()

    def __enter__(self) -> FactStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _write_session(self) -> Session:
        """A session whose transactions take the store's write lock first (one writer at a
        time, see ``vigie.store.concurrency``)."""
        return Session(self._writer, expire_on_commit=False)

    # Raw messages and dead letters -------------------------------------------------------

    def record_raw(self, session: Session, raw: Any) -> RawRecord:
        """Keep a raw message before parsing; tell whether it is a duplicate or a correction.

        ``raw`` is a ``vigie.connectors.base.RawMessage`` (duck-typed: the engine does not import
        connectors).
        """
        (record,) = self.record_raws(session, [raw])
        return record

    def record_raws(self, session: Session, raws: Sequence[Any]) -> list[RawRecord]:
        """``record_raw`` for a batch: one lookup and one insert for all of them (see
        ``_record_raws``)."""
        records = self._record_raws(session, raws, wait=False)
        assert records is not None
        return records

    def _record_raws(
        self, session: _Executor, raws: Sequence[Any], wait: bool
    ) -> list[RawRecord] | None:
        """Record a batch of raw messages; ``None`` (nothing recorded) when ``wait`` and
        another live run has kept one of them and not finished it (see ``keep_raws``).

        The (feed, message_id) keys must be distinct within the batch (the caller cuts batches
        where a key repeats, so that a repeat is compared with what the store already holds).
        A known version (same content) is a duplicate only when it was fully processed
        (``DONE_STATUSES``); else what it gave is forgotten and it is to be parsed again. A new
        content under a known id is a new version, kept beside the others (``replaced``).
        """
        refusals = [_key_problem("message id", raw.message_id, _MESSAGE_ID_MAX) for raw in raws]
        keys = [
            (raw.feed, _stand_in_id(raw.message_id) if refused else raw.message_id)
            for raw, refused in zip(raws, refusals, strict=True)
        ]
        known = self._known_raws(session, keys)
        if wait and self._kept_elsewhere(session, known):
            return None
        records: list[RawRecord | None] = [None] * len(raws)
        inserts: list[tuple[int, dict[str, Any]]] = []
        for index, (raw, key) in enumerate(zip(raws, keys, strict=True)):
            versions = known.get(key, {})
            found = versions.get(raw.sha256)
            if found is None:  # new, or a new version of a known message
                inserts.append((index, self._raw_row(raw, key[1])))
            elif found[1] in DONE_STATUSES:  # (id, status, run)
                records[index] = RawRecord(found[0], duplicate=True, replaced=False)
            else:  # a retry of what was never finished or was dead-lettered
                self._retry_raw(session, found[0], raw)
                records[index] = RawRecord(found[0], duplicate=False, replaced=len(versions) > 1)
        if inserts:
            rows = [row for _, row in inserts]
            ids = session.execute(_INSERT_RAW, rows[0] if len(rows) == 1 else rows).scalars().all()
            for (index, _), raw_id in zip(inserts, ids, strict=True):
                records[index] = RawRecord(raw_id, duplicate=False, replaced=keys[index] in known)
        done = [record for record in records if record is not None]
        return self._refuse_keys(session, raws, done, refusals)

    def _refuse_keys(
        self,
        session: _Executor,
        raws: Sequence[Any],
        records: list[RawRecord],
        refusals: Sequence[str | None],
    ) -> list[RawRecord]:
        """Reject, in the same transaction, the messages kept under a stand-in id."""
        refused: list[MessageOutcome] = []
        for index, (raw, problem) in enumerate(zip(raws, refusals, strict=True)):
            if problem and not records[index].duplicate:
                outcome = MessageOutcome(
                    records[index].id, raw.document, raw.message_id, raw.position, "received"
                )
                refused.append(self._rejected(outcome, problem))
                text = refused[-1].errors[0][0]
                records[index] = RawRecord(records[index].id, False, records[index].replaced, text)
        self._write_outcomes(session, refused)
        return records

    def _known_raws(
        self, session: _Executor, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, tuple[int, str, int | None]]]:
        """The versions already stored, by (feed, message_id): {sha256: (id, status, run)}."""
        by_feed: dict[str, list[str]] = {}
        for feed, message_id in keys:
            by_feed.setdefault(feed, []).append(message_id)
        known: dict[tuple[str, str], dict[str, tuple[int, str, int | None]]] = {}
        for feed, ids in by_feed.items():
            for start in range(0, len(ids), 500):
                found = session.execute(
                    _KNOWN_RAWS, {"feed": feed, "ids": ids[start : start + 500]}
                )
                for message_id, raw_id, sha, status, run in found.all():
                    known.setdefault((feed, message_id), {})[sha] = (raw_id, status, run)
        return known

    def _kept_elsewhere(
        self,
        session: _Executor,
        known: dict[tuple[str, str], dict[str, tuple[int, str, int | None]]],
    ) -> bool:
        """Whether another live run has kept one of these messages and not finished it."""
        owners = {
            run
            for versions in known.values()
            for _, status, run in versions.values()
            if status == "received" and run and run != self._run
        }
        return bool(owners and self._live_runs(session, owners))

    def _raw_row(self, raw: Any, message_id: str) -> dict[str, Any]:
        return {
            "feed": raw.feed,
            "message_id": message_id,
            "document": _text(raw.document),
            "position": raw.position and _text(raw.position),
            "encoding": raw.encoding,
            "sha256": raw.sha256,
            "content": raw.content,
            "received_at": _now(),
            "status": "received",
            "fact_count": 0,
            "ingest_run": self._run,  # the run that keeps it parses it
        }

    def _keep_new_raws(self, raws: Sequence[Any]) -> list[RawRecord] | None:
        """PostgreSQL: keep ``raws`` by one ``_insert_new_raws`` in autocommit, when the store
        knows none of their keys; ``None`` when it inserted none of them (a key is known, or
        SQLite: ``keep_raws`` then compares them under the write lock).

        Messages another process inserted at that very moment are left out by the statement:
        those are kept again by ``keep_raws``'s comparing path, as duplicates of that copy.
        """
        refused = any(_key_problem("message id", r.message_id, _MESSAGE_ID_MAX) for r in raws)
        postgres = self.engine.dialect.name == "postgresql"
        if not postgres or refused or not 0 < len(raws) <= _NEW_RAWS_AT_ONCE:
            return None
        parameters = {
            f"{name}_{n}": value
            for n, raw in enumerate(raws)
            for name, value in self._raw_row(raw, raw.message_id).items()
        }
        statement = _insert_new_raws(self.engine.dialect, len(raws))
        found = self._insert_held(statement, parameters)
        if found is None:  # another thread keeps on the held connection: one of the pool
            with (
                self._failing("keep the raw messages"),
                self.engine.connect() as connection,
            ):
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
                found = list(connection.exec_driver_sql(statement, parameters).all())
        if not found:
            return None
        ids = {(feed, message_id): raw_id for feed, message_id, raw_id in found}
        left = [raw for raw in raws if (raw.feed, raw.message_id) not in ids]
        kept = iter(self.keep_raws(left) if left else [])
        return [
            next(kept) if raw_id is None else RawRecord(raw_id, duplicate=False, replaced=False)
            for raw_id in (ids.get((raw.feed, raw.message_id)) for raw in raws)
        ]

    def _insert_held(self, statement: str, parameters: dict[str, Any]) -> list[Any] | None:
        """PostgreSQL: ``statement`` (an ``_insert_new_raws``) run in autocommit on the driver
        connection held for keeping new messages, its rows; ``None`` when another thread holds
        it (the caller takes one of the pool). A pool checkout, SQLAlchemy's execution and the
        switch to autocommit cost twice the statement's own CPU, paid by every message of an
        MLLP sender waiting for its ACK (one message kept: 0.29 ms of CPU, 0.10 held). A
        connection that failed is closed; the next keep opens another."""
        if not self._keeper_lock.acquire(blocking=False):
            return None
        held = self._kept_on
        try:
            cursor = held.held().cursor()
            try:
                cursor.execute(statement, parameters)
                return list(cursor.fetchall())
            finally:
                cursor.close()
        except held.errors as error:
            raise held.failed(error, StoreError, "keep the raw messages") from error
        finally:
            self._keeper_lock.release()

    @property
    def _keeper(self) -> Any:
        """The driver connection new raw messages are kept on, while one is held."""
        return self._kept_on._connection

    def _retry_raw(self, session: _Executor, raw_id: int, raw: Any) -> None:
        """A retry of a version never finished or dead-lettered: forget what it gave."""
        self._forget_outcome(session, raw_id)
        values = {"document": _text(raw.document), "position": raw.position and _text(raw.position)}
        values |= {"status": "received", "fact_count": 0, "received_at": _now()}
        values["ingest_run"] = self._run  # taken over (see ``keep_raws``)
        session.execute(update(RawMessageRow).where(RawMessageRow.id == raw_id).values(values))

    # What an ingest calls: each method its own transaction, database errors wrapped ---------

    def keep_raws(self, raws: Sequence[Any]) -> list[RawRecord]:
        """Record a batch of raw messages (``record_raws``) and commit: they are safe before any
        parser touches them, and this store's ingest run parses them.

        A message that another live run kept and has not finished is waited for (polling, up to
        ``_WAIT_FOR_RUN`` seconds, then taken over): once that run has stored what it gave, it
        is a duplicate here, so that a message is parsed once and the facts of a file land in
        its order even when two processes ingest it at once.

        On PostgreSQL, a batch of messages whose keys the store does not know yet (the common
        case: nothing to compare, nothing to wait for) is kept by one statement committed on
        its own, without the write lock (``_keep_new_raws``): one round trip instead of five,
        and no wait for a writer that holds the lock (the listener's parser storing facts).
        """
        self._start_run()
        records = self._keep_new_raws(raws)
        if records is not None:
            return records
        deadline = time.monotonic() + _WAIT_FOR_RUN
        while True:
            # A Core connection, not a session: an MLLP sender waits for this commit before
            # each message, and the ORM cost more than the statements.
            with self._writing_connection("keep the raw messages") as connection:
                wait = time.monotonic() <= deadline
                records = self._record_raws(connection, raws, wait)  # owned by this run
                if records is not None:
                    connection.commit()
                    return records
            time.sleep(_POLL)

    def save_outcomes(
        self, outcomes: Sequence[MessageOutcome], payloads: Payloads | None = None
    ) -> SavedBatch:
        """Store what a batch of messages gave and their statuses, in one transaction.

        A message the store cannot hold is rejected alone: its facts are not written, it gets a
        fatal dead letter with the reason and the rest of the batch lands. Returns those
        refusals' texts by raw id, and the versions kept as history only (older than the
        version stored, see the module's docstring). Keys are checked first (the same on SQLite
        and PostgreSQL); any other database error makes the batch be written again message by
        message, each in a savepoint, so that only the culprit is refused. A message another
        ingest took over meanwhile (this one taken for killed) is left to it.

        ``payloads`` are the facts' JSON forms made beforehand (``fact_payloads``), so that
        the transaction does not make them while it holds the store's write lock.
        """
        problems = {
            outcome.raw_id: problem
            for outcome in outcomes
            if (problem := _fact_problem(outcome.facts))
        }
        refused = {
            outcome.raw_id: self._rejected(outcome, problems[outcome.raw_id])
            for outcome in outcomes
            if outcome.raw_id in problems
        }
        accepted = [outcome for outcome in outcomes if outcome.raw_id not in refused]
        # A Core connection, not a session: the ORM's bulk paths cost more than the rows.
        with self._writing_connection("store the facts") as connection:
            taken = self._taken_over(connection, [outcome.raw_id for outcome in outcomes])
            accepted = [outcome for outcome in accepted if outcome.raw_id not in taken]
            refused = {raw_id: out for raw_id, out in refused.items() if raw_id not in taken}
            try:
                accepted, superseded = self._versions(connection, accepted)
                self._write_outcomes(connection, [*accepted, *refused.values()], payloads)
                connection.commit()
            except SQLAlchemyError:
                connection.rollback()
                accepted, superseded = self._versions(connection, accepted)
                refused |= self._write_one_by_one(connection, accepted, payloads, problems)
                self._write_outcomes(connection, list(refused.values()))
                connection.commit()
        texts = {raw_id: rejection.errors[0][0] for raw_id, rejection in refused.items()}
        for raw_id in texts:
            # The reason only: the dead letter's text names the message, whose id may be a
            # patient's (a FHIR ``Patient/<id>``, a PN13 IPP), and the log holds no patient data.
            log.warning("raw message %d refused by the store: %s", raw_id, problems[raw_id])
        return SavedBatch(texts, frozenset(superseded - refused.keys()))

    def _versions(
        self, session: _Executor, outcomes: Sequence[MessageOutcome]
    ) -> tuple[list[MessageOutcome], set[int]]:
        """Settle each outcome against the other versions of its message (see the module's
        docstring): the outcomes to write — an older version turned into a ``superseded`` one
        without facts — and the raw ids of those older versions. The versions a newer one
        supersedes lose their facts and become ``superseded`` here, in the same transaction,
        with their dead letters: a version that failed is settled by the one that replaces it
        (its bytes stay in the history)."""
        ids = [outcome.raw_id for outcome in outcomes]
        siblings: dict[int, list[tuple[int, str, datetime | None]]] = {}
        this, other = RawMessageRow.__table__.alias("this"), RawMessageRow.__table__.alias("other")
        for start in range(0, len(ids), 500):
            query = (
                select(this.c.id, other.c.id, other.c.status, other.c.version_time)
                .join(
                    other,
                    (other.c.feed == this.c.feed) & (other.c.message_id == this.c.message_id),
                )
                .where(
                    this.c.id.in_(ids[start : start + 500]),
                    other.c.id != this.c.id,
                    other.c.status.in_((*_APPLIED, "rejected")),
                )
            )
            for raw_id, sibling, status, version in session.execute(query).all():
                siblings.setdefault(raw_id, []).append((sibling, status, version))
        settled: list[MessageOutcome] = []
        older: set[int] = set()
        replaced: list[int] = []
        for outcome in outcomes:
            found = siblings.get(outcome.raw_id, [])
            if not found or outcome.status == "rejected":
                settled.append(outcome)
            elif any(
                status in _APPLIED and _later(version, outcome.version_time)
                for _, status, version in found
            ):
                older.add(outcome.raw_id)
                settled.append(replace(outcome, status="superseded", facts=(), retractions=()))
            else:
                replaced.extend(sibling for sibling, _, _ in found)
                settled.append(outcome)
        if replaced:
            session.execute(delete(FactRow).where(FactRow.raw_message_id.in_(replaced)))
            session.execute(delete(DeadLetterRow).where(DeadLetterRow.raw_message_id.in_(replaced)))
            session.execute(
                update(RawMessageRow)
                .where(RawMessageRow.id.in_(replaced))
                .values(status="superseded", fact_count=0)
            )
        return settled, older

    def _write_one_by_one(
        self,
        session: _Executor,
        outcomes: Sequence[MessageOutcome],
        payloads: Payloads | None,
        problems: dict[int, str],
    ) -> dict[int, MessageOutcome]:
        """Write each outcome on its own; those the database refuses are returned rejected,
        and why is added to ``problems``."""
        refused: dict[int, MessageOutcome] = {}
        for outcome in outcomes:
            try:
                with session.begin_nested():
                    self._write_outcomes(session, [outcome], payloads)
            except SQLAlchemyError as error:
                if concurrency.is_transient(error):  # not the message's fault: stop, retry later
                    raise
                problems[outcome.raw_id] = _database_problem(error)
                refused[outcome.raw_id] = self._rejected(outcome, problems[outcome.raw_id])
        return refused

    def _write_outcomes(
        self,
        session: _Executor,
        outcomes: Sequence[MessageOutcome],
        payloads: Payloads | None = None,
    ) -> None:
        rows = [(f, o.raw_id) for o in outcomes for f in o.facts]
        self.save_fact_rows(session, rows, payloads)
        self.retract(session, [(r, o.raw_id) for o in outcomes for r in o.retractions])
        self.record_dead_letters(
            session, [(o.raw_id, *error) for o in outcomes for error in o.errors]
        )
        self.record_outcomes(
            session, [(o.raw_id, o.status, len(o.facts), o.version_time) for o in outcomes]
        )

    @staticmethod
    def _rejected(outcome: MessageOutcome, problem: str) -> MessageOutcome:
        """The outcome of a message the store refused: no fact, one fatal dead letter, located
        at the message's place in its document, or at the whole document when it is one
        message (a FHIR Bundle, a PN13 document)."""
        position = outcome.position or "whole document"
        text = _refusal(outcome.document, outcome.message_id, position, problem)
        errors = [(text, position, True)]
        return replace(outcome, status="rejected", facts=(), errors=errors, retractions=())

    @contextmanager
    def writing(
        self, what: str, error: type[StoreError] | None = None, *, locked: bool = True
    ) -> Iterator[Session]:
        """A writer's session (``_write_session``: one write transaction at a time per store)
        whose database errors become one ``error`` (default ``StoreError``) naming what
        failed and the store, never the data (the alert and service stores use it too).
        ``locked=False``: a plain session, for a write that reads nothing (an append), which
        need not wait for the other writers on PostgreSQL."""
        with (
            self._failing(what, error),
            self._write_session() if locked else self.session() as session,
        ):
            yield session

    @contextmanager
    def _writing_connection(self, what: str) -> Iterator[Connection]:
        """``writing`` on a Core connection (the same write lock, no ORM session)."""
        with self._failing(what), self._writer.connect() as connection:
            yield connection

    @contextmanager
    def _failing(self, what: str, error: type[StoreError] | None = None) -> Iterator[None]:
        """Database errors within become one ``error`` (default ``StoreError``) saying what
        failed and in which store (``database_reason``: never the statement nor its data)."""
        try:
            yield
        except SQLAlchemyError as problem:
            raise (error or StoreError)(
                f"cannot {what} in {self.safe_url}: {database_reason(problem)}"
            ) from problem

    def unfinished(self, limit: int = 500) -> list[StoredRaw]:
        """Raw messages kept but never finished (``received``: a crash between the commit of a
        batch's raw messages and that of what they gave, or a live ingest under way), oldest
        first, at most ``limit``."""
        query = _STORED_RAW.where(RawMessageRow.status == "received")
        with self.writing("read the unfinished messages") as session:
            return [StoredRaw(*row) for row in session.execute(query.limit(limit)).all()]

    def claim_unfinished(self, limit: int = 500, max_bytes: int | None = None) -> list[StoredRaw]:
        """Take over, for this store's ingest run, at most ``limit`` unfinished messages whose
        run is over (killed, or closed before it stored them; those of live runs are theirs),
        oldest first, and forget the runs that were killed. ``max_bytes`` bounds their raw
        bytes as an ingest batch's are (the first message is taken whatever its size)."""
        run = self._start_run()
        with self.writing("claim the unfinished messages") as session:
            # status = 'received' as a literal, so that the partial index serves (see
            # ``_create_tables``), owner by owner: no scan of every message the store holds
            unfinished = RawMessageRow.status == literal_column("'received'")
            runs = set(session.execute(select(IngestRunRow.id)).scalars())
            query = select(RawMessageRow.ingest_run).where(unfinished).distinct()
            owners = set(session.execute(query).scalars())
            live = self._live_runs(session, runs | {owner for owner in owners if owner})
            if runs - live:
                session.execute(delete(IngestRunRow).where(IngestRunRow.id.in_(runs - live)))
            sizes: dict[int, int] = {}
            for owner in owners - (live - {run}):
                column = RawMessageRow.ingest_run
                of_owner = column.is_(None) if owner is None else column == owner
                ids = select(RawMessageRow.id, func.length(RawMessageRow.content))
                ids = ids.where(unfinished, of_owner).order_by(RawMessageRow.id).limit(limit)
                sizes.update((raw_id, size) for raw_id, size in session.execute(ids))
            claimed = _within(sorted(sizes)[:limit], sizes, max_bytes)
            self._own(session, run, claimed)
            rows = session.execute(_STORED_RAW.where(RawMessageRow.id.in_(claimed))).all()
            session.commit()
        return [StoredRaw(*row) for row in rows]

    # Ingest runs: which process parses a kept message (see ``vigie.store.concurrency``) -------

    def _start_run(self) -> int:
        """This store's ingest run, registered at its first keep or claim, until ``close``."""
        if self._run is not None:
            return self._run
        pid = os.getpid()
        row = {"host": concurrency.host_name(), "pid": pid, "started_at": _now()}
        row["process_start"] = concurrency.process_start(pid)
        register = insert(IngestRunRow).values(row).returning(IngestRunRow.id)
        try:
            if self.engine.dialect.name != "postgresql":
                with self._writer.begin() as connection:
                    self._run = connection.execute(register).scalar_one()
                return self._run
            # The run's lock is taken before its row is visible, and held by a connection of
            # its own for the store's life: another process sees the run alive until then.
            self._run_connection = self.engine.connect()
            run = self._run_connection.execute(register).scalar_one()
            self._run_connection.execute(concurrency.run_lock(run, hold=True))
            self._run_connection.commit()
        except SQLAlchemyError as error:
            self._end_run()
            raise StoreError(
                f"cannot start an ingest in {self.safe_url}: {_database_problem(error)}"
            ) from error
        self._run = run
        return run

    @property
    def ingest_run(self) -> int | None:
        """This store's ingest run: the one the messages it keeps belong to (``None`` before
        its first keep or claim)."""
        return self._run

    def store_for_run(self, run: int) -> None:
        """Store outcomes on behalf of ``run``, another store's live ingest run (the MLLP
        listener's, whose parse worker process stores what its messages gave): a message
        another run has taken over is left to that one (``save_outcomes``), as it would be by
        the store that owns ``run``. This store registers no run of its own, and ``close``
        leaves ``run`` to its owner."""
        if self._run is not None and not self._run_lent:
            raise StoreError(f"this store of {self.safe_url} has an ingest run of its own")
        self._run, self._run_lent = run, True

    def _end_run(self) -> None:
        if self._run_lent:  # another store's run: that store ends it
            self._run, self._run_lent = None, False
            return
        run, connection = self._run, self._run_connection
        self._run, self._run_connection = None, None
        try:
            if run is not None:
                with self._writer.begin() as writing:
                    writing.execute(delete(IngestRunRow).where(IngestRunRow.id == run))
        except SQLAlchemyError as error:  # the run counts as over once its process is gone
            log.warning("ingest run %s not closed in %s: %s", run, self.safe_url, error.code)
        finally:
            if connection is not None:
                if run is not None:
                    with suppress(SQLAlchemyError):  # broken: released once the server sees
                        connection.execute(concurrency.run_unlock(run))
                connection.invalidate()  # closed: PostgreSQL releases whatever it still held
                connection.close()

    def _live_runs(self, session: _Executor, runs: Iterable[int]) -> set[int]:
        """Of these runs, those whose process still runs (this store's own is)."""
        others = sorted(set(runs) - {self._run})
        live = {run for run in runs if run == self._run}
        if self.engine.dialect.name == "postgresql":
            held = (
                run for run in others if not session.scalar(concurrency.run_lock(run, hold=False))
            )
            return live | set(held)
        here = concurrency.host_name()
        query = select(
            IngestRunRow.id, IngestRunRow.host, IngestRunRow.pid, IngestRunRow.process_start
        ).where(IngestRunRow.id.in_(others))
        for run, host, pid, started in session.execute(query).all():
            # A SQLite file is one host's store: a run of another host is taken for over (at
            # worst, a message is parsed twice; the first run's late outcome is then dropped).
            if host == here and concurrency.process_alive(pid, started):
                live.add(run)
        return live

    @staticmethod
    def _own(session: _Executor, run: int, raw_ids: Sequence[int]) -> None:
        for start in range(0, len(raw_ids), 500):
            chunk = raw_ids[start : start + 500]
            session.execute(
                update(RawMessageRow).where(RawMessageRow.id.in_(chunk)).values(ingest_run=run)
            )

    def _taken_over(self, session: _Executor, raw_ids: Sequence[int]) -> set[int]:
        """Of these messages, those another run has taken over since this one kept them (it
        was taken for killed): what this run parsed is not to be stored."""
        if self._run is None:
            return set()
        taken: set[int] = set()
        for start in range(0, len(raw_ids), 500):
            query = select(RawMessageRow.id).where(
                RawMessageRow.id.in_(raw_ids[start : start + 500]),
                RawMessageRow.ingest_run.is_not(None),
                RawMessageRow.ingest_run != self._run,
            )
            taken.update(session.execute(query).scalars())
        if taken:
            log.info("%d messages taken over by another ingest: theirs to store", len(taken))
        return taken

    def record_outcomes(
        self, session: _Executor, outcomes: Sequence[tuple[int, str, int, datetime | None]]
    ) -> None:
        """Status, fact count and version time of raw messages: (raw id, status, facts, time).

        Messages sharing all three (NDJSON lines of one fact each, without a time) are updated
        by one statement per group; the others one row each, in one executemany.
        """
        groups: dict[tuple[str, int, datetime | None], list[int]] = {}
        for raw_id, status, count, version in outcomes:
            groups.setdefault((status, count, version), []).append(raw_id)
        single: list[dict[str, Any]] = []
        for (status, count, version), ids in groups.items():
            if len(ids) < _GROUPED_UPDATE:
                single += [
                    {"raw_id": i, "status": status, "fact_count": count, "version_time": version}
                    for i in ids
                ]
                continue
            values = {"status": status, "fact_count": count, "version_time": version}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                session.execute(update(_RAW_TABLE).where(_RAW.id.in_(chunk)).values(values))
        if not single:
            return
        distinct = len({row["raw_id"] for row in single}) == len(single)
        if self._arrays() and distinct and _all_naive(row["version_time"] for row in single):
            parameters = {
                name: [row[key] for row in single]
                for name, key in zip(_OUTCOME_FIELDS, ("raw_id", *_OUTCOME_FIELDS[1:]), strict=True)
            }
            _connection(session).exec_driver_sql(_outcomes_arrays(self.engine.dialect), parameters)
        else:
            session.execute(_OUTCOME, single)

    def _forget_outcome(self, session: _Executor, raw_id: int) -> None:
        session.execute(delete(FactRow).where(FactRow.raw_message_id == raw_id))
        session.execute(delete(DeadLetterRow).where(DeadLetterRow.raw_message_id == raw_id))

    def record_errors(
        self, session: _Executor, raw_id: int, errors: Iterable[tuple[str, str | None, bool]]
    ) -> None:
        """Dead-letter entries (message, position, fatal) for one raw message."""
        self.record_dead_letters(session, [(raw_id, *error) for error in errors])

    def record_dead_letters(
        self, session: _Executor, letters: Sequence[tuple[int, str, str | None, bool]]
    ) -> None:
        """Dead-letter entries for many messages: (raw id, error, position, fatal)."""
        if letters:
            now = _now()
            session.execute(
                insert(_DEAD_LETTER_TABLE),
                [
                    {
                        "raw_message_id": raw_id,
                        "error": _text(text),
                        "position": position and _text(position),
                        "fatal": fatal,
                        "created_at": now,
                    }
                    for raw_id, text, position, fatal in letters
                ],
            )

    def mark(self, session: _Executor, raw_id: int, status: str, fact_count: int) -> None:
        self.record_outcomes(session, [(raw_id, status, fact_count, None)])

    # Facts --------------------------------------------------------------------------------

    def save_facts(self, session: _Executor, facts: Sequence[Fact], raw_id: int | None) -> None:
        """Insert or replace facts by (kind, fact_id)."""
        self.save_fact_rows(session, [(fact, raw_id) for fact in facts])

    def save_fact_rows(
        self,
        session: _Executor,
        rows: Sequence[tuple[Fact, int | None]],
        payloads: Payloads | None = None,
    ) -> None:
        """Insert or replace facts (each with the raw message it came from) in one statement.

        A stored fact with a later ``source.version_time`` is kept (see the module's
        docstring). When a batch holds the same (kind, fact_id) twice, the later version wins,
        the later one in the batch when their times tie or are unknown, as it would if the
        messages were stored one by one.
        """
        if not rows:
            return
        merged = self._merge_patients(session, [fact for fact, _ in rows])
        values = (
            {
                "kind": fact.kind,
                "fact_id": fact.fact_id,
                "patient_id": fact.patient_id,
                "raw_message_id": raw_id,
                "payload": _payload(fact, payloads),
                "version_time": fact.source.version_time,
                "retracted": False,
            }
            for fact, (_, raw_id) in zip(merged, rows, strict=True)
        )
        self._write_facts(session, ("payload",), _latest(values))

    def retract(self, session: _Executor, rows: Sequence[tuple[Retraction, int | None]]) -> None:
        """Mark facts retracted by their sender (each with the raw message that withdrew it),
        unless the store holds a later version; a fact not stored yet gets a tombstone, so that
        an older version arriving later stays withdrawn."""
        if not rows:
            return
        values = (
            {
                "kind": retraction.kind,
                "fact_id": retraction.fact_id,
                "patient_id": retraction.patient_id,
                "raw_message_id": raw_id,
                "payload": {"retracted_by": retraction.source.model_dump(mode="json")},
                "version_time": retraction.source.version_time,
                "retracted": True,
            }
            for retraction, raw_id in rows
        )
        self._write_facts(session, (), _latest(values))

    def _merge_patients(self, session: _Executor, facts: Sequence[Fact]) -> list[Fact]:
        """Complete sparse patient records with what the store already knows (see Patient)."""
        patients = {f.fact_id: f for f in facts if isinstance(f, Patient)}
        if not patients:
            return list(facts)
        query = select(FactRow.fact_id, FactRow.payload).where(
            FactRow.kind == Patient.kind,
            FactRow.fact_id.in_(list(patients)),
            FactRow.retracted.is_(False),
        )
        stored = {fid: Patient.model_validate(p) for fid, p in session.execute(query).all()}
        merged: list[Fact] = []
        for fact in facts:
            older = stored.get(fact.fact_id) if isinstance(fact, Patient) else None
            if isinstance(fact, Patient) and older is not None:
                fact = fact.merged_over(older)
            if isinstance(fact, Patient):
                stored[fact.fact_id] = fact
            merged.append(fact)
        return merged

    def _upsert(self, replaced: Sequence[str]) -> Any:
        """Insert, or update a stored fact unless it holds a later version time; ``replaced``
        names the columns updated beside the key, owner, version and retraction (a retraction
        keeps the payload of the fact it withdraws). Core, on the table: run by a session, an
        ORM insert took the ORM's bulk path, which cost more than the rows."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return _on_conflict(dialect.insert(_FACT_TABLE), replaced)

    def _arrays(self) -> bool:
        """Whether batches are written as arrays (``_upsert_arrays``): PostgreSQL by psycopg."""
        return self.engine.dialect.name == "postgresql" and self.engine.dialect.driver == "psycopg"

    def _write_facts(
        self, session: _Executor, replaced: tuple[str, ...], rows: list[dict[str, Any]]
    ) -> None:
        """``_upsert`` of fact rows (distinct keys): one statement of arrays on PostgreSQL, an
        executemany elsewhere (SQLite runs it in the driver, at a small cost per row)."""
        if not self._arrays() or not _all_naive(row["version_time"] for row in rows):
            session.execute(self._upsert(replaced), rows)
            return
        parameters = {name: [row[name] for row in rows] for name in _FACT_FIELDS}
        # The text psycopg's JSON dumper makes of a payload SQLAlchemy binds (``json.dumps``),
        # as text cast to JSON by the statement.
        parameters["payload"] = [json.dumps(payload) for payload in parameters["payload"]]
        sql = _upsert_arrays(self.engine.dialect, replaced)
        _connection(session).exec_driver_sql(sql, parameters)

    def iter_facts(
        self, kinds: Iterable[str] | None = None, patient_id: str | None = None
    ) -> Iterator[AnyFact]:
        """Stored facts, optionally of some kinds or one patient, in a stable order."""
        query = (
            select(FactRow.kind, FactRow.payload)
            .where(FactRow.retracted.is_(False))
            .order_by(FactRow.kind, FactRow.fact_id)
        )
        if kinds is not None:
            query = query.where(FactRow.kind.in_(list(kinds)))
        if patient_id is not None:
            query = query.where(FactRow.patient_id == patient_id)
        with self.session() as session:
            for kind, payload in session.execute(query).yield_per(5000):
                yield FACT_KINDS[kind].model_validate(payload)  # type: ignore[misc]

    def counts(self) -> dict[str, int]:
        """Facts per kind (retracted ones left out), every kind listed."""
        query = (
            select(FactRow.kind, func.count())
            .where(FactRow.retracted.is_(False))
            .group_by(FactRow.kind)
        )
        with self.session() as session:
            found = dict(session.execute(query).all())
        return {kind: int(found.get(kind, 0)) for kind in FACT_KINDS}

    def raw_counts(self) -> dict[str, int]:
        """Raw messages per status (loaded, partial, rejected, ignored)."""
        query = select(RawMessageRow.status, func.count()).group_by(RawMessageRow.status)
        with self.session() as session:
            return {status: int(n) for status, n in session.execute(query).all()}

    def dead_letters(self, limit: int = 1000) -> list[DeadLetter]:
        """Dead letters in the order their messages arrived."""
        query = (
            select(
                RawMessageRow.feed,
                RawMessageRow.document,
                RawMessageRow.message_id,
                DeadLetterRow.error,
                DeadLetterRow.position,
                DeadLetterRow.fatal,
            )
            .join(RawMessageRow, RawMessageRow.id == DeadLetterRow.raw_message_id)
            .order_by(DeadLetterRow.raw_message_id, DeadLetterRow.id)
            .limit(limit)
        )
        with self.session() as session:
            return [DeadLetter(*row) for row in session.execute(query).all()]

    def retracted_count(self) -> int:
        """Facts withdrawn by their sender (kept as tombstones, never given to the rules)."""
        query = select(func.count()).select_from(FactRow).where(FactRow.retracted.is_(True))
        with self.session() as session:
            return int(session.execute(query).scalar_one())

    def raw_content(self, feed: str, message_id: str) -> bytes | None:
        """The bytes of a message's current version (the latest received when none applies)."""
        versions = self.raw_versions(feed, message_id)
        current = [v for v in versions if v.status in _APPLIED] or versions
        return current[-1].content if current else None

    def raw_versions(self, feed: str, message_id: str) -> list[RawVersion]:
        """Every version of a message the store received, in arrival order (the history of
        corrections, with the superseded ones)."""
        query = (
            select(
                RawMessageRow.id,
                RawMessageRow.sha256,
                RawMessageRow.status,
                RawMessageRow.version_time,
                RawMessageRow.received_at,
                RawMessageRow.content,
            )
            .where(RawMessageRow.feed == feed, RawMessageRow.message_id == message_id)
            .order_by(RawMessageRow.id)
        )
        with self.session() as session:
            return [RawVersion(*row) for row in session.execute(query).all()]

    def reset(self) -> None:
        """Drop and recreate every table (demo and tests only)."""
        self._end_run()
        with self._writer.begin() as connection:
            _Base.metadata.drop_all(connection)
            connection.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
        self._create_tables()
