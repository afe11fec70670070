"""The service's tables: users and their tokens, wards, decisions, site configuration and rule
pack versions, and the append-only audit log; in the fact store's database, on its metadata
(created with its tables, by its migrations: ``vigie.store.migrations``).

- ``service_user`` and ``service_user_role``: who may call the service, with one or more roles
  of :data:`ROLES`; ``api_token``: the SHA-256 of each bearer token, never the token itself
  (it is shown once, when made).
- ``ward``: a hospital's wards (UF) with their bed counts, which the IP per 100 beds reads.
- ``decision``: one row per pharmacist's decision (the ``alert_event`` it made), with what the
  alert store's event does not hold in columns: the SFPC problem and intervention codes chosen
  (they may differ from the rule's), the comment, whether the prescriber was contacted, the
  dismissal reason; ``decision_outcome``: the prescriber's answer to an intervention, given
  later (``accepted``, ``not_accepted``, ``accepted_modified``), one per decision.
- ``site_config_version``: every version of the site configuration (the cursors, TOML text);
  ``rule_pack_version``: every rule pack text an evaluation ran (name, version, hash, text),
  so that an alert shows the rule text of the pack that raised it.
- ``audit_log``: who (user and roles), what (action, resource), which patient if any, when.
- ``cds_card``: the CDS Hooks cards the service answered with (``vigie.api.cds_hooks``), so
  that feedback on one finds its alert in any process, after a restart too; kept
  :data:`CDS_CARD_DAYS` days.

``decision``, ``decision_outcome`` and ``audit_log`` are append-only: the database refuses
``UPDATE`` and ``DELETE`` (triggers on SQLite and PostgreSQL, ``TRUNCATE`` too on PostgreSQL),
as for ``alert_event``; the store has no method that would.

>>> from vigie.store import FactStore
>>> service = ServiceStore(FactStore("sqlite://"))
>>> user, token = service.add_user("pharm.a", ["pharmacist"])
>>> service.authenticate(token).roles
('pharmacist',)
>>> service.authenticate("vigie_wrong") is None
True
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    delete,
    event,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, aliased, mapped_column

try:
    import fcntl
except ImportError:  # not on Windows
    fcntl = None  # type: ignore[assignment]

from vigie.store.alerts import (
    AlertGenerationRow,
    AlertStore,
    AlertTransitionError,
    Dismissal,
    Intervention,
    StoredAlert,
)
from vigie.store.database import (
    FactStore,
    StoreError,
    _Base,
    _HeldConnection,
    in_memory_url,
)

__all__ = [
    "CDS_CARD_DAYS",
    "OUTCOMES",
    "ROLES",
    "TOKEN_CACHE_SECONDS",
    "AuditDetail",
    "AuditEntry",
    "AuditWriter",
    "ConfigVersion",
    "DecisionRecord",
    "GenerationReader",
    "IssuedCard",
    "RulePackVersion",
    "ServiceError",
    "ServiceStore",
    "UnknownResourceError",
    "User",
    "Ward",
    "append_only_statements",
    "hash_token",
]

Role = Literal["pharmacist", "rule_author", "admin", "feed"]
ROLES: Final = ("pharmacist", "rule_author", "admin", "feed")
OUTCOMES: Final = {
    "accepted": "accepted by the prescriber",
    "not_accepted": "not accepted by the prescriber",
    "accepted_modified": "accepted with a modification",
}
TOKEN_PREFIX: Final = "vigie_"
_NAME_MAX: Final = 128
# How long a token's user, once read, is taken without reading the store again: a token
# revoked (or a user deactivated, or its roles changed) counts from at most this later.
TOKEN_CACHE_SECONDS: Final = 1.0
_TOKEN_CACHE_SIZE: Final = 4096
_AUDIT_BATCH: Final = 512  # entries per audit transaction, at most
# How long a generation read on the event loop waits for a SQLite lock (WAL readers take none;
# a database left in rollback-journal mode waits for a writer's commit) before it gives up and
# the caller reads in a thread instead
_LOCAL_READ_TIMEOUT_MS: Final = 50
# How long a CDS Hooks card is kept for feedback: an EHR sends feedback when the card is acted
# on (seconds to hours later); a month bounds the table and covers an EHR that queues feedback
# through a weekend or an outage.
CDS_CARD_DAYS: Final = 30
_CDS_CARD_PRUNE_SECONDS: Final = 600.0  # old cards deleted at most this often per process


class ServiceError(StoreError):
    """A service record the store refuses (a bad role, a duplicate user, a bad ward...)."""


class UnknownResourceError(ServiceError):
    """No such user, decision or version."""


# Tables ---------------------------------------------------------------------------------------


class UserRow(_Base):
    __tablename__ = "service_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(_NAME_MAX), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class UserRoleRow(_Base):
    __tablename__ = "service_user_role"

    user_id: Mapped[int] = mapped_column(ForeignKey("service_user.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)


class TokenRow(_Base):
    """A bearer token: only its SHA-256 is kept (a token is 32 random bytes: a fast hash is
    enough, there is nothing to guess)."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("service_user.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class WardRow(_Base):
    __tablename__ = "ward"

    hospital: Mapped[str] = mapped_column(String(64), primary_key=True)
    code: Mapped[str] = mapped_column(String(128), primary_key=True)
    label: Mapped[str] = mapped_column(String(255))
    beds: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    updated_by: Mapped[str] = mapped_column(String(_NAME_MAX))


class DecisionRow(_Base):
    """Append-only: one row per decision event of ``alert_event``, written in the same
    transaction. It names the event and the alert by id, without a foreign key: the alert
    tables stay droppable alone (a store repairs a missing table on opening)."""

    __tablename__ = "decision"
    __table_args__ = (Index("ix_decision_decided_at", "decided_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(Integer, unique=True)
    alert_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # intervention | dismissal
    decided_at: Mapped[datetime] = mapped_column(DateTime)
    actor: Mapped[str] = mapped_column(String(_NAME_MAX))
    rule_id: Mapped[str] = mapped_column(String(128))
    patient_id: Mapped[str] = mapped_column(String(128))
    ward: Mapped[str | None] = mapped_column(String(128), nullable=True)
    problem_code: Mapped[str | None] = mapped_column(String(8), nullable=True)
    intervention_code: Mapped[str | None] = mapped_column(String(8), nullable=True)
    dismiss_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    prescriber_contacted: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class DecisionOutcomeRow(_Base):
    """Append-only: the prescriber's answer to an intervention, one per decision."""

    __tablename__ = "decision_outcome"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    decision_id: Mapped[int] = mapped_column(ForeignKey("decision.id"), unique=True)
    outcome: Mapped[str] = mapped_column(String(24))
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    actor: Mapped[str] = mapped_column(String(_NAME_MAX))
    at: Mapped[datetime] = mapped_column(DateTime)


class SiteConfigVersionRow(_Base):
    __tablename__ = "site_config_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    author: Mapped[str] = mapped_column(String(_NAME_MAX))
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class RulePackVersionRow(_Base):
    __tablename__ = "rule_pack_version"
    __table_args__ = (UniqueConstraint("name", "version", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)  # the file the alerts name (``rule.file``)
    text: Mapped[str] = mapped_column(Text)
    first_used: Mapped[datetime] = mapped_column(DateTime)


class AuditRow(_Base):
    """Append-only: the database refuses to update or delete a row (triggers below)."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_patient", "patient_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    actor: Mapped[str] = mapped_column(String(_NAME_MAX))
    roles: Mapped[str] = mapped_column(String(128))  # the user's roles, comma-separated
    action: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(512))
    patient_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class CdsCardRow(_Base):
    """A CDS Hooks card answered: what feedback on it needs (its alert, its suggestions and
    the override reasons it offered). ``uuid`` is the card's (one alert in one hook instance),
    ``alert`` the alert's JSON (``model_dump(mode="json")``); deleted after
    :data:`CDS_CARD_DAYS` days."""

    __tablename__ = "cds_card"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    service_id: Mapped[str] = mapped_column(String(64))
    hook_instance: Mapped[str] = mapped_column(Text)
    alert_id: Mapped[str] = mapped_column(String(64))
    rule_id: Mapped[str] = mapped_column(String(128))
    patient_id: Mapped[str] = mapped_column(String(128))
    suggestions: Mapped[dict[str, str]] = mapped_column(JSON)  # suggestion uuid -> label
    override_codes: Mapped[list[str]] = mapped_column(JSON)
    alert: Mapped[dict[str, Any]] = mapped_column(JSON)
    issued_at: Mapped[datetime] = mapped_column(DateTime, index=True)


_AUDIT_TABLE: Final = _Base.metadata.tables[AuditRow.__tablename__]
_AUDIT_COLUMNS: Final = ("at", "actor", "roles", "action", "resource", "patient_id", "detail")
APPEND_ONLY_TABLES: Final = ("decision", "decision_outcome", "audit_log")


def append_only_statements(table: str, dialect: str) -> tuple[str, ...]:
    """The statements that make the database refuse to change ``table``'s rows (SQLite:
    triggers; PostgreSQL: a trigger function, row and truncate triggers). Idempotent."""
    refusal = f"{table} is append-only"
    if dialect == "sqlite":
        return tuple(
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{what} BEFORE {what.upper()} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{refusal}'); END"
            for what in ("update", "delete")
        )
    if dialect == "postgresql":
        return (
            f"CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{refusal}'; END $$",
            f"DROP TRIGGER IF EXISTS {table}_no_change ON {table}",
            f"CREATE TRIGGER {table}_no_change BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()",
            f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_append_only()",
        )
    return ()


def _make_append_only(target: Any, connection: Connection, **_: object) -> None:
    """Run when ``create_all`` makes one of these tables (a table dropped by hand and made
    again; the migrations make them with their triggers)."""
    for statement in append_only_statements(target.name, connection.dialect.name):
        connection.exec_driver_sql(statement)


for _table in APPEND_ONLY_TABLES:
    event.listen(_Base.metadata.tables[_table], "after_create", _make_append_only)


# What the store gives back ----------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    id: int
    name: str
    roles: tuple[str, ...]
    active: bool = True


@dataclass(frozen=True)
class Ward:
    hospital: str
    code: str
    label: str
    beds: int


@dataclass(frozen=True)
class DecisionRecord:
    """A decision with its codes and, for an intervention, the prescriber's outcome once
    given."""

    id: int
    alert_id: str
    kind: str
    decided_at: datetime
    actor: str
    rule_id: str
    patient_id: str
    ward: str | None
    problem_code: str | None
    intervention_code: str | None
    dismiss_reason: str | None
    comment: str | None
    prescriber_contacted: bool | None
    outcome: str | None = None
    outcome_at: datetime | None = None
    outcome_by: str | None = None
    outcome_comment: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One line of the audit log (``seq`` and ``at`` are set when it is written)."""

    actor: str
    roles: tuple[str, ...]
    action: str
    resource: str
    patient_id: str | None = None
    detail: Mapping[str, Any] | None = None
    at: datetime | None = None
    seq: int | None = None


@dataclass(frozen=True)
class ConfigVersion:
    version: int
    text: str
    sha256: str
    author: str
    comment: str | None
    created_at: datetime


@dataclass(frozen=True)
class RulePackVersion:
    name: str
    version: str
    sha256: str
    source: str
    text: str


@dataclass(frozen=True)
class IssuedCard:
    """A CDS Hooks card the service answered with (``CdsCardRow``); ``issued_at`` naive UTC."""

    uuid: str
    service_id: str
    hook_instance: str
    alert_id: str
    rule_id: str
    patient_id: str
    suggestions: Mapping[str, str]  # suggestion uuid -> label
    override_codes: tuple[str, ...]
    alert: Mapping[str, Any]  # the alert's JSON
    issued_at: datetime


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> datetime:
    """Naive UTC, like every time of the store."""
    return datetime.now(UTC).replace(tzinfo=None)


def _naive(moment: datetime | None) -> datetime:
    if moment is None:
        return _now()
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


def _check_roles(roles: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(sorted(set(roles)))
    if not chosen:
        raise ServiceError(f"a user needs at least one role ({', '.join(ROLES)})")
    unknown = [role for role in chosen if role not in ROLES]
    if unknown:
        raise ServiceError(f"unknown role {unknown[0]!r}: expected one of {', '.join(ROLES)}")
    return chosen


def _check_name(what: str, value: str, limit: int) -> str:
    value = value.strip()
    if not value or len(value) > limit or "\x00" in value:
        raise ServiceError(f"a {what} of 1 to {limit} characters, got {len(value)}")
    return value


class AuditDetail(Mapping[str, Any]):
    """An audit entry's detail whose JSON text is made once, at its first write, and reused by
    every entry that names it: the reads of one worklist page name the same alerts and
    patients, and their entries need not serialise them again each. Read-only."""

    __slots__ = ("_items", "_text")

    def __init__(self, items: Mapping[str, Any]) -> None:
        self._items = dict(items)
        self._text: str | None = None

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def text(self) -> str:
        """Its JSON (as the ``JSON`` column writes it: ``json.dumps``)."""
        if self._text is None:  # two threads may both make it: the same text
            self._text = json.dumps(self._items)
        return self._text


def _detail_text(detail: Mapping[str, Any] | None) -> str | None:
    if detail is None:
        return None
    if isinstance(detail, AuditDetail):
        return detail.text
    return json.dumps(dict(detail))


# Who waits for an entry: a thread (``submit``) or a coroutine on an event loop (``submit_async``)
_Waiter = Future[None] | asyncio.Future[None]


class AuditWriter:
    """Group commit of the audit log: a caller submits its entry and waits for the commit
    that holds it (the future); one thread writes what is waiting, all of it in one
    transaction, while the next entries queue. An entry is durable when its future is done,
    as with a transaction of its own, but a hundred concurrent reads cost one commit.

    A coroutine submits with ``submit_async`` and awaits an asyncio future of its own loop:
    the futures of one batch are all settled by one callback on that loop (one wake-up of the
    loop a commit, not one per entry).

    A batch the database refuses is written again entry by entry, so that one bad entry fails
    only its own caller. The thread ends after ``idle`` seconds without work (``on_idle``
    called, the store's connection closed) and starts again with the next entry. ``flush``
    (the service's shutdown) writes what is left, including the entries of a loop's turn
    that ended before handing them over.
    """

    def __init__(
        self,
        write: Callable[[list[AuditEntry]], None],
        *,
        idle: float = 10.0,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self._write = write
        self._idle = idle
        self._on_idle = on_idle  # called by the thread as it ends (before another can start)
        lock = threading.Lock()
        self._ready = threading.Condition(lock)
        self._drained = threading.Condition(lock)  # nothing waits nor is being written
        self._waiting: list[tuple[AuditEntry, _Waiter]] = []
        self._writing = False  # the thread holds a batch not yet committed
        self._thread: threading.Thread | None = None
        self._sleeping = False  # the thread waits for entries (it needs a notify)
        # per event loop, the entries its current turn submitted (touched on that loop only)
        self._turns: dict[asyncio.AbstractEventLoop, list[tuple[AuditEntry, _Waiter]]] = {}

    def submit(self, entry: AuditEntry) -> Future[None]:
        """Queue an entry (its time set now, if not given); done when committed."""
        done: Future[None] = Future()
        self._queue([(entry, done)])
        return done

    def submit_async(self, entry: AuditEntry) -> asyncio.Future[None]:
        """``submit`` for a coroutine: a future of the running event loop, done when the entry
        is committed. Cancelling it (a request whose client went away) does not withdraw the
        entry: it is written all the same.

        The entries submitted during one turn of the loop are handed to the writer together,
        at the loop's next turn (one time stamp, one lock and at most one wake-up of the
        writer's thread for them all, instead of one each)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        turn = self._turns.get(loop)
        if turn is None:
            turn = self._turns[loop] = []
            loop.call_soon(self._hand_over, loop)
        turn.append((entry, done))
        return done

    def flush(self, timeout: float = 30.0) -> bool:
        """Write every entry submitted so far and wait for its commit (at most ``timeout``
        seconds; False if some were still unwritten then). The entries of an event loop's turn
        that ended without handing them over (the loop stopped in that turn: a server shutting
        down) are queued too, so that a cancelled request's entry is not lost with the
        process. Call it once the loops are stopped (a turn is touched only by its loop)."""
        for loop in list(self._turns):
            self._hand_over(loop)
        with self._ready:
            return self._drained.wait_for(lambda: not self._waiting and not self._writing, timeout)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """Queue the entries a turn of ``loop`` submitted (on that loop)."""
        turn = self._turns.pop(loop, None)
        if turn:
            self._queue(turn)

    def _queue(self, entries: list[tuple[AuditEntry, _Waiter]]) -> None:
        now: datetime | None = None
        stamped: list[tuple[AuditEntry, _Waiter]] = []
        for entry, done in entries:
            if entry.at is None:
                now = now or _now()
                entry = AuditEntry(
                    entry.actor, entry.roles, entry.action, entry.resource, entry.patient_id,
                    entry.detail, now, entry.seq,
                )  # fmt: skip
            stamped.append((entry, done))
        with self._ready:
            self._waiting += stamped
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="vigie-audit-writer", daemon=True
                )
                self._thread.start()
            elif self._sleeping:
                self._ready.notify()

    def _next_batch(self) -> list[tuple[AuditEntry, _Waiter | None]]:
        """What waits (at most a batch), or nothing after ``idle`` seconds (the thread ends).
        Each thread's future is set running, so that it can no longer be cancelled; one its
        caller cancelled already is None: its entry is written all the same, and nobody is
        told (an asyncio future cancelled meanwhile is skipped when settled)."""
        with self._ready:
            if not self._waiting:
                self._sleeping = True
                self._ready.wait(self._idle)
                self._sleeping = False
            if not self._waiting:
                if self._on_idle is not None:
                    with suppress(Exception):  # releasing what the writes held
                        self._on_idle()
                self._thread = None
                return []
            batch = self._waiting[:_AUDIT_BATCH]
            del self._waiting[:_AUDIT_BATCH]
            self._writing = True
        return [
            (entry, done)
            if not isinstance(done, Future) or done.set_running_or_notify_cancel()
            else (entry, None)
            for entry, done in batch
        ]

    def _run(self) -> None:
        while batch := self._next_batch():
            try:
                self._commit(batch)
            finally:
                with self._ready:
                    self._writing = False
                    if not self._waiting:
                        self._drained.notify_all()

    def _commit(self, batch: list[tuple[AuditEntry, _Waiter | None]]) -> None:
        try:
            self._write([entry for entry, _ in batch])
        except BaseException as error:  # given to its caller, who raises it
            if len(batch) > 1:
                for one in batch:
                    self._commit([one])
                return
            _settle([batch[0][1]], error)
            return
        _settle([done for _, done in batch], None)


def _settle(waiters: list[_Waiter | None], error: BaseException | None) -> None:
    """Tell the waiters of entries their commit (``error`` None) or its failure: a thread's
    future at once, the asyncio futures of each event loop by one callback on that loop."""
    loops: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for done in waiters:
        if done is None:
            continue
        if isinstance(done, Future):
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)
        else:
            loops.setdefault(done.get_loop(), []).append(done)
    for loop, futures in loops.items():
        with suppress(RuntimeError):  # the loop closed meanwhile: nobody waits on it any more
            loop.call_soon_threadsafe(_settle_on_loop, futures, error)


def _settle_on_loop(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for done in futures:
        if done.done():  # cancelled: its caller went away
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


class GenerationReader(_HeldConnection):
    """The alerts' generation (``AlertStore.generation``) read on one database connection held
    for it, outside the pool, in autocommit: one statement a read, without a pool checkout nor a
    transaction to end. On SQLite (``local``) a read takes a few microseconds, little enough to
    be made on the event loop by every request; on PostgreSQL it is a round trip. A connection
    that failed is closed, and the next read opens another. One caller at a time."""

    _QUERY: Final = f"SELECT generation FROM {AlertGenerationRow.__tablename__} WHERE id = 1"

    def __init__(self, alerts: AlertStore) -> None:
        super().__init__(alerts.facts)
        self._alerts = alerts
        self.local = self._local
        # in-memory SQLite: one database per connection of the pool, none to take out of it
        self._pooled = in_memory_url(alerts.facts.url)

    def read(self) -> int | None:
        """The generation, or None when the store has none (its row missing until the next
        write); a ``StoreError`` when the database cannot be read."""
        if self._pooled:
            return self._alerts.generation()
        try:
            cursor = self.held().cursor()
            try:
                cursor.execute(self._QUERY)
                found = cursor.fetchone()
            finally:
                cursor.close()
        except self.errors as error:
            self.close()
            raise ServiceError(
                f"cannot read the alerts' generation in {self._facts.safe_url}: "
                f"{error.__class__.__name__}"
            ) from error
        return None if found is None else int(found[0])

    def _prepare(self, connection: Any) -> None:
        if self._local:
            connection.execute(f"PRAGMA busy_timeout = {_LOCAL_READ_TIMEOUT_MS}")


@contextmanager
def _audit_turn(facts: FactStore) -> Iterator[None]:
    """The audit writers of one SQLite file, in every process, write in turn: an exclusive
    ``flock`` on a file beside the database (``<database>-audit.lock``), held from the
    transaction's start to its commit. When another process holds SQLite's write lock, SQLite
    sleeps and tries again (1, 2, 5, ... then 100 ms between tries); the audit writers of two
    server processes, committing back to back, made each other wait so (answers held up to
    1.9 s), whereas a waiter on a flock wakes when it is released. PostgreSQL, in-memory
    SQLite, a system without ``flock`` or a lock file that cannot be made: SQLite's lock
    alone."""
    database = facts.engine.url.database
    if facts.engine.dialect.name != "sqlite" or fcntl is None or database in (None, "", ":memory:"):
        yield
        return
    try:
        turn = os.open(f"{database}-audit.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(turn, fcntl.LOCK_EX)
        yield
    finally:
        os.close(turn)  # releases the lock


class _AuditAppender(_HeldConnection):
    """Appends audit rows for the ``AuditWriter``'s thread (its only user) on a database
    connection held for it, outside the pool, without the ORM: the session, the statement's
    compilation and the column types' processing per row were most of the writer's time, which
    it spent holding the interpreter's lock away from the event loop.

    - SQLite: ``BEGIN IMMEDIATE`` (the write lock, as the store's writers take it), one
      ``executemany``, ``COMMIT`` (durable as any commit of the store), in the audit turn
      (``_audit_turn``).
    - PostgreSQL: in autocommit, one multi-row ``INSERT`` a batch: one statement, one round trip
      and its own transaction (all of the batch or none), synchronous commit as configured.

    A connection that failed is closed, and the next write opens another."""

    def __init__(self, facts: FactStore) -> None:
        super().__init__(facts)
        dialect = facts.engine.dialect
        # the column's text form on SQLite (as the ORM writes it); the driver's on PostgreSQL
        self._at = _AUDIT_TABLE.c.at.type.dialect_impl(dialect).bind_processor(dialect)
        self._columns = ", ".join(_AUDIT_COLUMNS)
        self._statements: dict[int, str] = {}  # PostgreSQL: the INSERT of n rows

    def write(self, entries: list[AuditEntry]) -> None:
        at = self._at
        rows = [
            (
                at(moment) if at is not None else moment,
                entry.actor,
                ",".join(entry.roles),
                entry.action,
                entry.resource[:512],
                entry.patient_id,
                _detail_text(entry.detail),
            )
            for entry in entries
            for moment in (_naive(entry.at),)
        ]
        try:
            self.held()
            if self._local:
                self._append_sqlite(rows)
            else:
                self._append_postgres(rows)
        except self.errors as error:
            raise self.failed(error, ServiceError, "write the audit log") from error

    def _append_sqlite(self, rows: list[tuple[Any, ...]]) -> None:
        connection = self._connection
        table = _AUDIT_TABLE.name
        with _audit_turn(self._facts):
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(
                    f"INSERT INTO {table} ({self._columns}) VALUES (?, ?, ?, ?, ?, ?, ?)", rows
                )
                connection.execute("COMMIT")
            except BaseException:
                with suppress(*self.errors):
                    connection.execute("ROLLBACK")
                raise

    def _append_postgres(self, rows: list[tuple[Any, ...]]) -> None:
        statement = self._statements.get(len(rows))
        if statement is None:
            values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s::json)"] * len(rows))
            statement = f"INSERT INTO {_AUDIT_TABLE.name} ({self._columns}) VALUES {values}"
            if len(self._statements) < _AUDIT_BATCH:
                self._statements[len(rows)] = statement
        cursor = self._connection.cursor()
        try:
            cursor.execute(statement, [value for row in rows for value in row])
        finally:
            cursor.close()


class ServiceStore:
    """Users, wards, decisions, versions and the audit log of one fact store's database
    (module docstring); ``alerts`` is the alert store of the same database."""

    def __init__(self, facts: FactStore) -> None:
        self.facts = facts
        self.alerts = AlertStore(facts)
        self.token_cache_seconds = TOKEN_CACHE_SECONDS
        self.clock: Callable[[], float] = time.monotonic  # the token cache's
        self._users_by_token: dict[str, tuple[float, User]] = {}
        # In-memory SQLite is one connection per thread: its audit is written by the caller.
        in_memory = in_memory_url(facts.url)
        self._audit_appender = None if in_memory else _AuditAppender(facts)
        self._audit_writer = (
            None
            if self._audit_appender is None
            else AuditWriter(self._write_audit, on_idle=self._audit_appender.close)
        )
        self._cards_pruned_at: float | None = None  # monotonic time of the last prune

    def _writing(self, what: str) -> AbstractContextManager[Session]:
        """A session of the fact store's writer; a database error becomes an ``ServiceError``."""
        return self.facts.writing(what, ServiceError)

    @contextmanager
    def _reading(self, what: str) -> Iterator[Session]:
        try:
            with self.facts.session() as session:
                yield session
        except SQLAlchemyError as error:
            raise ServiceError(f"cannot read {what}: {error.__class__.__name__}") from error

    # Users and tokens --------------------------------------------------------------------

    def add_user(
        self, name: str, roles: Iterable[str], audit: AuditEntry | None = None
    ) -> tuple[User, str]:
        """A new user with its roles and a first token; the token is given back once, only its
        hash is kept."""
        name = _check_name("user name", name, _NAME_MAX)
        chosen = _check_roles(roles)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._writing("add the user") as session:
            if session.scalar(select(UserRow.id).where(UserRow.name == name)) is not None:
                raise ServiceError(f"a user named {name!r} exists already")
            row = UserRow(name=name, active=True, created_at=_now())
            session.add(row)
            session.flush()
            session.add_all(UserRoleRow(user_id=row.id, role=role) for role in chosen)
            session.add(TokenRow(user_id=row.id, token_sha256=hash_token(token), created_at=_now()))
            self._audit_in(session, audit)
            session.commit()
            return User(row.id, name, chosen), token

    def new_token(self, name: str, audit: AuditEntry | None = None, replace: bool = False) -> str:
        """Another token for a user, given back once (only its hash is kept). The older ones
        stay valid until revoked; with ``replace`` they are revoked in the same transaction (a
        lost or leaked token)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._writing("make a token") as session:
            user_id = self._user_id(session, name)
            if replace:
                session.execute(self._revoking(user_id))
            session.add(
                TokenRow(user_id=user_id, token_sha256=hash_token(token), created_at=_now())
            )
            self._audit_in(session, audit)
            session.commit()
        if replace:
            self._forget(user_id)
        return token

    def revoke_tokens(self, name: str, audit: AuditEntry | None = None) -> int:
        """Revoke every valid token of a user, who stays (``new_token`` gives another); how
        many were valid. Refused in this process at once, in others within
        :data:`TOKEN_CACHE_SECONDS`."""
        with self._writing("revoke the tokens") as session:
            user_id = self._user_id(session, name)
            done = session.execute(self._revoking(user_id))
            self._audit_in(session, audit)
            session.commit()
        self._forget(user_id)
        return int(getattr(done, "rowcount", 0) or 0)

    def set_active(self, name: str, active: bool, audit: AuditEntry | None = None) -> bool:
        """Disable a user (``active=False``: every token of theirs refused, kept) or enable
        them again (their tokens not revoked work again); whether it changed anything. A
        disabled user is refused in this process at once, in others within
        :data:`TOKEN_CACHE_SECONDS`."""
        with self._writing("change the user") as session:
            user_id = self._user_id(session, name)
            done = session.execute(
                update(UserRow)
                .where(UserRow.id == user_id, UserRow.active.is_not(active))
                .values(active=active)
            )
            self._audit_in(session, audit)
            session.commit()
        self._forget(user_id)
        return bool(getattr(done, "rowcount", 0))

    @staticmethod
    def _user_id(session: Session, name: str) -> int:
        user_id = session.scalar(select(UserRow.id).where(UserRow.name == name))
        if user_id is None:
            raise UnknownResourceError(f"no user {name!r}")
        return user_id

    @staticmethod
    def _revoking(user_id: int) -> Any:
        return (
            update(TokenRow)
            .where(TokenRow.user_id == user_id, TokenRow.revoked_at.is_(None))
            .values(revoked_at=_now())
        )

    def _forget(self, user_id: int) -> None:
        """Drop the remembered tokens of a user (this process's token cache)."""
        for digest, (_, user) in list(self._users_by_token.items()):
            if user.id == user_id:
                self._users_by_token.pop(digest, None)

    def authenticate(self, token: str) -> User | None:
        """The active user a token (not revoked) belongs to, or None; read from the store,
        and remembered for :meth:`remembered_user`."""
        digest = hash_token(token)
        query = (
            select(UserRow)
            .join(TokenRow, TokenRow.user_id == UserRow.id)
            .where(
                TokenRow.token_sha256 == digest,
                TokenRow.revoked_at.is_(None),
                UserRow.active.is_(True),
            )
        )
        with self._reading("the tokens") as session:
            row = session.scalar(query)
            if row is None:
                self._users_by_token.pop(digest, None)
                return None
            user = User(row.id, row.name, self._roles(session, row.id), row.active)
        if len(self._users_by_token) >= _TOKEN_CACHE_SIZE:
            self._users_by_token.clear()
        self._users_by_token[digest] = (self.clock() + self.token_cache_seconds, user)
        return user

    def remembered_user(self, token: str) -> User | None:
        """The user :meth:`authenticate` found for this token less than
        ``token_cache_seconds`` (:data:`TOKEN_CACHE_SECONDS`) ago, without reading the store;
        None otherwise (then ask ``authenticate``). A revoked token is refused from at most
        that delay after the revocation commits, in every process."""
        found = self._users_by_token.get(hash_token(token))
        if found is None or found[0] <= self.clock():
            return None
        return found[1]

    def token_read_due(self, token: str) -> bool:
        """Whether the token's user is remembered for less than half of ``token_cache_seconds``
        more, or not at all: time to read it again (``authenticate``), ahead of the expiry, so
        that the requests of a busy client do not all find it expired and wait for the store
        together."""
        found = self._users_by_token.get(hash_token(token))
        return found is None or found[0] - self.clock() < self.token_cache_seconds / 2

    def revoke_token(self, token: str, audit: AuditEntry | None = None) -> bool:
        """Revoke a token (it stays in the store, refused); whether it was valid."""
        with self._writing("revoke the token") as session:
            done = session.execute(
                update(TokenRow)
                .where(TokenRow.token_sha256 == hash_token(token), TokenRow.revoked_at.is_(None))
                .values(revoked_at=_now())
            )
            self._audit_in(session, audit)
            session.commit()
        self._users_by_token.pop(hash_token(token), None)
        return bool(getattr(done, "rowcount", 0))

    @staticmethod
    def _roles(session: Session, user_id: int) -> tuple[str, ...]:
        query = select(UserRoleRow.role).where(UserRoleRow.user_id == user_id)
        return tuple(sorted(session.scalars(query)))

    def users(self) -> list[User]:
        with self._reading("the users") as session:
            rows = list(session.scalars(select(UserRow).order_by(UserRow.name)))
            return [User(r.id, r.name, self._roles(session, r.id), r.active) for r in rows]

    # Wards -------------------------------------------------------------------------------

    def put_ward(self, ward: Ward, actor: str, audit: AuditEntry | None = None) -> Ward:
        """Create a ward or change its label and bed count."""
        hospital = _check_name("hospital code", ward.hospital, 64)
        code = _check_name("ward code", ward.code, 128)
        label = _check_name("ward label", ward.label, 255)
        if not 0 <= ward.beds <= 100_000:
            raise ServiceError(f"a ward's bed count is 0 to 100000, got {ward.beds}")
        with self._writing("save the ward") as session:
            row = session.get(WardRow, (hospital, code))
            if row is None:
                row = WardRow(hospital=hospital, code=code)
                session.add(row)
            row.label, row.beds, row.updated_at, row.updated_by = label, ward.beds, _now(), actor
            self._audit_in(session, audit)
            session.commit()
        return Ward(hospital, code, label, ward.beds)

    def wards(self, hospital: str | None = None) -> list[Ward]:
        query = select(WardRow).order_by(WardRow.hospital, WardRow.code)
        if hospital is not None:
            query = query.where(WardRow.hospital == hospital)
        with self._reading("the wards") as session:
            return [Ward(r.hospital, r.code, r.label, r.beds) for r in session.scalars(query)]

    # Decisions ---------------------------------------------------------------------------

    def decide(
        self,
        alert_id: str,
        decision: Intervention | Dismissal,
        *,
        actor: str,
        evidence_key: str | None = None,
        at: datetime | None = None,
        audit: AuditEntry | None = None,
    ) -> tuple[StoredAlert, DecisionRecord]:
        """The alert store's decision (its lifecycle and event), its codes in ``decision`` and
        the audit entry, in one transaction."""
        with self._writing("record the decision") as session:
            stored, event_id = self.alerts.decide_in(
                session, alert_id, decision, actor=actor, at=at, evidence_key=evidence_key
            )
            row = DecisionRow(
                event_id=event_id,
                alert_id=alert_id,
                decided_at=stored.status_changed_at,
                actor=actor,
                rule_id=stored.rule_id,
                patient_id=stored.patient_id,
                ward=stored.ward,
                **_decision_columns(decision),
            )
            session.add(row)
            session.flush()
            self._audit_in(session, audit)
            session.commit()
            return stored, _decision(row, None)

    def record_outcome(
        self,
        alert_id: str,
        outcome: str,
        *,
        actor: str,
        comment: str | None = None,
        at: datetime | None = None,
        audit: AuditEntry | None = None,
    ) -> DecisionRecord:
        """The prescriber's answer to the latest intervention on an alert (once)."""
        if outcome not in OUTCOMES:
            raise ServiceError(
                f"unknown outcome {outcome!r}: expected one of {', '.join(OUTCOMES)}"
            )
        with self._writing("record the outcome") as session:
            query = (
                select(DecisionRow)
                .where(DecisionRow.alert_id == alert_id, DecisionRow.kind == "intervention")
                .order_by(DecisionRow.id.desc())
                .limit(1)
            )
            row = session.scalar(query)
            if row is None:
                raise AlertTransitionError(
                    f"cannot record an outcome on alert {alert_id}: no intervention recorded"
                )
            if session.scalar(
                select(DecisionOutcomeRow).where(DecisionOutcomeRow.decision_id == row.id)
            ):
                raise AlertTransitionError(
                    f"cannot record an outcome on alert {alert_id}: its intervention has one"
                )
            answer = DecisionOutcomeRow(
                decision_id=row.id, outcome=outcome, comment=comment, actor=actor, at=_naive(at)
            )
            session.add(answer)
            session.flush()
            self._audit_in(session, audit)
            session.commit()
            return _decision(row, answer)

    def decisions(self, alert_id: str | None = None) -> list[DecisionRecord]:
        """The decisions (of one alert, or all), in the order they were taken, with their
        outcomes."""
        query = (
            select(DecisionRow, DecisionOutcomeRow)
            .outerjoin(DecisionOutcomeRow, DecisionOutcomeRow.decision_id == DecisionRow.id)
            .order_by(DecisionRow.id)
        )
        if alert_id is not None:
            query = query.where(DecisionRow.alert_id == alert_id)
        with self._reading("the decisions") as session:
            return [_decision(row, answer) for row, answer in session.execute(query).all()]

    def awaiting_outcome(
        self, ward: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[DecisionRecord]:
        """The interventions still waiting for the prescriber's answer, oldest first: for
        each alert its latest intervention (the one an outcome is recorded on), when it has
        no outcome yet; ``ward`` filters by the ward of the decision."""
        later = aliased(DecisionRow)
        latest = ~exists().where(
            later.alert_id == DecisionRow.alert_id,
            later.kind == "intervention",
            later.id > DecisionRow.id,
        )
        answered = exists().where(DecisionOutcomeRow.decision_id == DecisionRow.id)
        query = (
            select(DecisionRow)
            .where(DecisionRow.kind == "intervention", latest, ~answered)
            .order_by(DecisionRow.decided_at, DecisionRow.id)
            .offset(offset)
            .limit(limit)
        )
        if ward is not None:
            query = query.where(DecisionRow.ward == ward)
        with self._reading("the interventions awaiting an outcome") as session:
            return [_decision(row, None) for row in session.scalars(query)]

    # Versions ----------------------------------------------------------------------------

    def save_site_config(
        self, text: str, author: str, comment: str | None = None, audit: AuditEntry | None = None
    ) -> ConfigVersion:
        """A new version of the site configuration (the caller has checked it)."""
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        with self._writing("save the site configuration") as session:
            row = SiteConfigVersionRow(
                text=text, sha256=digest, author=author, comment=comment, created_at=_now()
            )
            session.add(row)
            session.flush()
            self._audit_in(session, audit)
            session.commit()
            return _config(row)

    def site_config(self, version: int | None = None) -> ConfigVersion | None:
        """A version of the site configuration (default: the latest), or None when none."""
        query = select(SiteConfigVersionRow).order_by(SiteConfigVersionRow.id.desc()).limit(1)
        if version is not None:
            query = select(SiteConfigVersionRow).where(SiteConfigVersionRow.id == version)
        with self._reading("the site configuration") as session:
            row = session.scalar(query)
            return None if row is None else _config(row)

    def site_config_versions(self) -> list[ConfigVersion]:
        query = select(SiteConfigVersionRow).order_by(SiteConfigVersionRow.id)
        with self._reading("the site configuration") as session:
            return [_config(row) for row in session.scalars(query)]

    def record_rule_packs(self, packs: Sequence[RulePackVersion]) -> None:
        """Keep the text of each pack version an evaluation ran (once per name, version and
        hash)."""
        with self._writing("record the rule packs") as session:
            for pack in packs:
                found = session.scalar(
                    select(RulePackVersionRow.id).where(
                        RulePackVersionRow.name == pack.name,
                        RulePackVersionRow.version == pack.version,
                        RulePackVersionRow.sha256 == pack.sha256,
                    )
                )
                if found is None:
                    session.add(
                        RulePackVersionRow(
                            name=pack.name,
                            version=pack.version,
                            sha256=pack.sha256,
                            source=pack.source,
                            text=pack.text,
                            first_used=_now(),
                        )
                    )
            try:
                session.commit()
            except IntegrityError:  # another process recorded the same version meanwhile
                session.rollback()

    def rule_pack(self, name: str, version: str) -> RulePackVersion | None:
        """The latest recorded text of a pack version, or None."""
        query = (
            select(RulePackVersionRow)
            .where(RulePackVersionRow.name == name, RulePackVersionRow.version == version)
            .order_by(RulePackVersionRow.id.desc())
            .limit(1)
        )
        with self._reading("the rule packs") as session:
            row = session.scalar(query)
            if row is None:
                return None
            return RulePackVersion(row.name, row.version, row.sha256, row.source, row.text)

    # CDS Hooks cards ---------------------------------------------------------------------

    def keep_cds_cards(self, cards: Sequence[IssuedCard]) -> None:
        """Keep the cards of one hook answer, in one transaction: a card answered again (the
        same alert in the same hook instance) replaces the one kept. Cards issued over
        :data:`CDS_CARD_DAYS` days before the latest of these are deleted, at most every
        ten minutes per process."""
        if not cards:
            return
        uuids = [card.uuid for card in cards]
        rows = [_card_row(card) for card in cards]
        with self._writing("keep the CDS Hooks cards") as session:
            session.execute(delete(CdsCardRow).where(CdsCardRow.uuid.in_(uuids)))
            session.execute(insert(CdsCardRow), rows)
            pruned = self._prune_cards(session, max(card.issued_at for card in cards))
            try:
                session.commit()
            except IntegrityError:  # another process kept the same card meanwhile: it stays
                session.rollback()
                return
            if pruned:
                self._cards_pruned_at = time.monotonic()

    def _prune_cards(self, session: Session, latest: datetime) -> bool:
        last = self._cards_pruned_at
        if last is not None and time.monotonic() - last < _CDS_CARD_PRUNE_SECONDS:
            return False
        oldest = _naive(latest) - timedelta(days=CDS_CARD_DAYS)
        session.execute(delete(CdsCardRow).where(CdsCardRow.issued_at < oldest))
        return True

    def cds_card(self, uuid: str, service_id: str) -> IssuedCard | None:
        """The card ``uuid`` answered by the CDS service ``service_id``, or None (never
        answered, by another service, or deleted after :data:`CDS_CARD_DAYS` days)."""
        query = select(CdsCardRow).where(
            CdsCardRow.uuid == uuid, CdsCardRow.service_id == service_id
        )
        with self._reading("the CDS Hooks cards") as session:
            row = session.scalar(query)
            return None if row is None else _issued_card(row)

    # Audit -------------------------------------------------------------------------------

    def audit(self, entry: AuditEntry) -> None:
        """Append an entry to the audit log (a read's: the write has its own), and return once
        it is committed (with other callers' entries: :class:`AuditWriter`)."""
        self.submit_audit(entry).result()

    def submit_audit(self, entry: AuditEntry) -> Future[None]:
        """Queue an entry for the audit log: the future is done once it is committed (or
        holds the ``ServiceError`` that refused it). An async caller awaits it
        (``asyncio.wrap_future``)."""
        if self._audit_writer is not None:
            return self._audit_writer.submit(entry)
        done: Future[None] = Future()
        self._write_now(entry, done)
        return done

    def submit_audit_async(self, entry: AuditEntry) -> asyncio.Future[None]:
        """``submit_audit`` for a coroutine: a future of the running event loop (settled, with
        the others of its commit, by one callback on the loop: ``AuditWriter.submit_async``)."""
        if self._audit_writer is not None:
            return self._audit_writer.submit_async(entry)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._write_now(entry, done)
        return done

    def flush_audit(self, timeout: float = 30.0) -> bool:
        """Commit every audit entry submitted so far (``AuditWriter.flush``): the service's
        shutdown, before its store is closed. False if some were not written within
        ``timeout`` seconds."""
        return True if self._audit_writer is None else self._audit_writer.flush(timeout)

    def _write_now(self, entry: AuditEntry, done: Future[None] | asyncio.Future[None]) -> None:
        """Without a writer thread (in-memory SQLite): the entry written at once, ``done``
        settled with the outcome."""
        try:
            self._write_audit([entry])
        except ServiceError as error:
            done.set_exception(error)
        else:
            done.set_result(None)

    def _write_audit(self, entries: list[AuditEntry]) -> None:
        """Append entries to the audit log in one transaction (``_AuditAppender``: on a
        connection of the writer's thread; in-memory SQLite, one database per connection of
        the pool, through a session). On PostgreSQL without the store's write lock: that lock
        serialises read-then-write steps (ingests, decisions), and an append reads nothing, so
        that the audit of reads in several server processes commits side by side instead of in
        turn. SQLite has one writer at a time anyway."""
        if self._audit_appender is not None:
            self._audit_appender.write(entries)
            return
        rows = [_audit_row(entry) for entry in entries]
        with self.facts.writing("write the audit log", ServiceError) as session:
            session.execute(insert(_AUDIT_TABLE), rows)
            session.commit()

    @staticmethod
    def _audit_in(session: Session, entry: AuditEntry | None) -> None:
        if entry is None:
            return
        session.execute(insert(AuditRow).values(**_audit_row(entry)))

    def audit_log(
        self,
        *,
        actor: str | None = None,
        patient_id: str | None = None,
        action: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AuditEntry]:
        """The audit log, latest first, filtered when asked."""
        query = select(AuditRow).order_by(AuditRow.id.desc()).offset(offset).limit(limit)
        if actor is not None:
            query = query.where(AuditRow.actor == actor)
        if patient_id is not None:
            query = query.where(AuditRow.patient_id == patient_id)
        if action is not None:
            query = query.where(AuditRow.action == action)
        with self._reading("the audit log") as session:
            return [_audit(row) for row in session.scalars(query)]

    def audit_size(self) -> int:
        with self._reading("the audit log") as session:
            return int(session.scalar(select(func.count()).select_from(AuditRow)) or 0)


def _card_row(card: IssuedCard) -> dict[str, Any]:
    return {
        "uuid": card.uuid,
        "service_id": card.service_id,
        "hook_instance": card.hook_instance,
        "alert_id": card.alert_id,
        "rule_id": card.rule_id,
        "patient_id": card.patient_id,
        "suggestions": dict(card.suggestions),
        "override_codes": list(card.override_codes),
        "alert": dict(card.alert),
        "issued_at": _naive(card.issued_at),
    }


def _issued_card(row: CdsCardRow) -> IssuedCard:
    return IssuedCard(
        uuid=row.uuid,
        service_id=row.service_id,
        hook_instance=row.hook_instance,
        alert_id=row.alert_id,
        rule_id=row.rule_id,
        patient_id=row.patient_id,
        suggestions=dict(row.suggestions),
        override_codes=tuple(row.override_codes),
        alert=row.alert,
        issued_at=row.issued_at,
    )


def _audit_row(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": _naive(entry.at),
        "actor": entry.actor,
        "roles": ",".join(entry.roles),
        "action": entry.action,
        "resource": entry.resource[:512],
        "patient_id": entry.patient_id,
        "detail": dict(entry.detail) if entry.detail is not None else None,
    }


def _decision_columns(decision: Intervention | Dismissal) -> dict[str, Any]:
    if isinstance(decision, Dismissal):
        return {
            "kind": "dismissal",
            "dismiss_reason": decision.reason_code,
            "comment": decision.text or None,
        }
    return {
        "kind": "intervention",
        "problem_code": decision.problem_code,
        "intervention_code": decision.code,
        "comment": decision.text,
        "prescriber_contacted": decision.prescriber_contacted,
    }


def _decision(row: DecisionRow, answer: DecisionOutcomeRow | None) -> DecisionRecord:
    return DecisionRecord(
        id=row.id,
        alert_id=row.alert_id,
        kind=row.kind,
        decided_at=row.decided_at,
        actor=row.actor,
        rule_id=row.rule_id,
        patient_id=row.patient_id,
        ward=row.ward,
        problem_code=row.problem_code,
        intervention_code=row.intervention_code,
        dismiss_reason=row.dismiss_reason,
        comment=row.comment,
        prescriber_contacted=row.prescriber_contacted,
        outcome=answer.outcome if answer else None,
        outcome_at=answer.at if answer else None,
        outcome_by=answer.actor if answer else None,
        outcome_comment=answer.comment if answer else None,
    )


def _config(row: SiteConfigVersionRow) -> ConfigVersion:
    return ConfigVersion(row.id, row.text, row.sha256, row.author, row.comment, row.created_at)


def _audit(row: AuditRow) -> AuditEntry:
    return AuditEntry(
        actor=row.actor,
        roles=tuple(filter(None, row.roles.split(","))),
        action=row.action,
        resource=row.resource,
        patient_id=row.patient_id,
        detail=row.detail,
        at=row.at,
        seq=row.id,
    )
