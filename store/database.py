"""The fact store: raw inbound messages, dead letters and facts, in SQLite or PostgreSQL.

The store is chosen by a SQLAlchemy URL: ``VIGIE_DATABASE_URL`` if set, else a SQLite file in
the user's data directory, so every command and the service share it.

- ``raw_message`` keeps every inbound unit *before* it is parsed (bytes, hash, feed, document),
  unique on (feed, message_id), with its status: ``received`` until what it gave is stored,
  then ``loaded``, ``ignored``, ``partial`` or ``rejected``. Ingest is idempotent — the same
  message sent twice is recorded once; a corrected message with the same id replaces the facts
  it gave; a message sent again that was never finished (``received``: a crash) or that was
  dead-lettered (``partial``, ``rejected``) is parsed again, never taken for a duplicate.
- ``dead_letter`` keeps each error with the message it came from; nothing is lost.
- ``fact`` keeps each fact as its JSON form, keyed by (kind, fact_id), indexed by patient.

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
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from platformdirs import user_data_dir
from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute, Mapped, Session, mapped_column

from vigie import settings
from vigie.errors import VigieError
from vigie.facts import FACT_KINDS, AnyFact, Fact, Patient

__all__ = [
    "DONE_STATUSES",
    "DeadLetter",
    "FactStore",
    "MessageOutcome",
    "RawRecord",
    "StoreError",
    "StoredRaw",
    "default_database_url",
]

log = logging.getLogger(__name__)

# A message in one of these states was fully processed without error: sent again, it is a
# duplicate. Any other (received: never finished; partial, rejected: dead-lettered) is retried.
DONE_STATUSES = frozenset({"loaded", "ignored"})


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
    __table_args__ = (UniqueConstraint("feed", "message_id"),)

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


@dataclass(frozen=True)
class RawRecord:
    """The outcome of recording a raw message: its row id and whether it was already known.

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
    """

    raw_id: int
    document: str
    message_id: str
    position: str | None
    status: str
    facts: Sequence[Fact] = ()
    errors: Sequence[tuple[str, str | None, bool]] = field(default_factory=list)


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
class DeadLetter:
    feed: str
    document: str
    message_id: str
    error: str
    position: str | None
    fatal: bool


def _connect_args(url: str) -> dict[str, Any]:
    """psycopg prepares a statement after a few runs and may keep the plan it made while the
    tables were empty (sequential scans), which made a large first ingest crawl: no automatic
    prepared statements for the store's bulk lookups."""
    return {"prepare_threshold": None} if make_url(url).drivername == "postgresql+psycopg" else {}


def _now() -> datetime:
    return datetime.now(UTC)


def _length(column: InstrumentedAttribute[str]) -> int:
    """A string column's size, so that the checks follow the schema."""
    assert isinstance(column.type, String) and column.type.length is not None
    return column.type.length


_MESSAGE_ID_MAX = _length(RawMessageRow.message_id)
_FACT_ID_MAX = _length(FactRow.fact_id)
_PATIENT_ID_MAX = _length(FactRow.patient_id)


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


def _database_problem(error: SQLAlchemyError) -> str:
    """The database's own reason, without the statement nor its parameters (patient data)."""
    cause = getattr(error, "orig", None) or error
    diag = getattr(cause, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(cause).splitlines()[0]
    return f"the store refused the message ({cause.__class__.__name__}: {primary[:200]})"


def _stand_in_id(message_id: str) -> str:
    """The key a message whose own id cannot be stored is kept under (the same at every send)."""
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"unstorable-id:sha256:{digest}"


class FactStore:
    """Facts and raw messages in one SQL database (SQLite file or PostgreSQL)."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_database_url()
        try:
            self.safe_url = make_url(self.url).render_as_string(hide_password=True)
            self.engine: Engine = create_engine(self.url, connect_args=_connect_args(self.url))
        except (SQLAlchemyError, ValueError) as error:
            raise StoreError(f"cannot open the store {self.url.split('@')[-1]}: {error}") from error
        try:
            _Base.metadata.create_all(self.engine)
        except SQLAlchemyError as error:
            self.engine.dispose()
            cause = getattr(error, "orig", None) or error
            raise StoreError(f"cannot open the store {self.safe_url}: {cause}".strip()) from error

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def __enter__(self) -> FactStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # Raw messages and dead letters -------------------------------------------------------

    def record_raw(self, session: Session, raw: Any) -> RawRecord:
        """Keep a raw message before parsing; tell whether it is a duplicate or a correction.

        ``raw`` is a ``vigie.connectors.base.RawMessage`` (duck-typed: the engine does not import
        connectors).
        """
        (record,) = self.record_raws(session, [raw])
        return record

    def record_raws(self, session: Session, raws: Sequence[Any]) -> list[RawRecord]:
        """``record_raw`` for a batch: one lookup and one insert for all of them.

        The (feed, message_id) keys must be distinct within the batch (the caller cuts batches
        where a key repeats, so that a repeat is compared with what the store already holds).
        A known message with the same content is a duplicate only when it was fully processed
        (``DONE_STATUSES``); else what it gave is forgotten and it is to be parsed again.
        """
        refusals = [_key_problem("message id", raw.message_id, _MESSAGE_ID_MAX) for raw in raws]
        keys = [
            (raw.feed, _stand_in_id(raw.message_id) if refused else raw.message_id)
            for raw, refused in zip(raws, refusals, strict=True)
        ]
        known = self._known_raws(session, keys)
        records: list[RawRecord | None] = [None] * len(raws)
        inserts: list[tuple[int, dict[str, Any]]] = []
        for index, (raw, key) in enumerate(zip(raws, keys, strict=True)):
            found = known.get(key)
            if found is None:
                inserts.append((index, self._raw_row(raw, key[1])))
            elif found[1] == raw.sha256 and found[2] in DONE_STATUSES:
                records[index] = RawRecord(found[0], duplicate=True, replaced=False)
            else:  # a correction, or a retry of what was never finished or was dead-lettered
                self._replace_raw(session, found[0], raw, key[1])
                records[index] = RawRecord(
                    found[0], duplicate=False, replaced=found[1] != raw.sha256
                )
        if inserts:
            statement = insert(RawMessageRow).returning(
                RawMessageRow.id, sort_by_parameter_order=True
            )
            ids = session.execute(statement, [row for _, row in inserts]).scalars().all()
            for (index, _), raw_id in zip(inserts, ids, strict=True):
                records[index] = RawRecord(raw_id, duplicate=False, replaced=False)
        done = [record for record in records if record is not None]
        return self._refuse_keys(session, raws, done, refusals)

    def _refuse_keys(
        self,
        session: Session,
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
        self, session: Session, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, str, str]]:
        """(id, sha256, status) of the raw messages already stored, by (feed, message_id)."""
        by_feed: dict[str, list[str]] = {}
        for feed, message_id in keys:
            by_feed.setdefault(feed, []).append(message_id)
        known: dict[tuple[str, str], tuple[int, str, str]] = {}
        for feed, ids in by_feed.items():
            for start in range(0, len(ids), 500):
                query = select(
                    RawMessageRow.message_id,
                    RawMessageRow.id,
                    RawMessageRow.sha256,
                    RawMessageRow.status,
                ).where(
                    RawMessageRow.feed == feed,
                    RawMessageRow.message_id.in_(ids[start : start + 500]),
                )
                for message_id, raw_id, sha, status in session.execute(query).all():
                    known[(feed, message_id)] = (raw_id, sha, status)
        return known

    @staticmethod
    def _raw_row(raw: Any, message_id: str) -> dict[str, Any]:
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
        }

    def _replace_raw(self, session: Session, raw_id: int, raw: Any, message_id: str) -> None:
        """A correction or a retry: forget what the old version gave, keep the new content."""
        self._forget_outcome(session, raw_id)
        values = self._raw_row(raw, message_id)
        del values["feed"], values["message_id"]
        session.execute(update(RawMessageRow).where(RawMessageRow.id == raw_id).values(values))

    # What an ingest calls: each method its own transaction, database errors wrapped ---------

    def keep_raws(self, raws: Sequence[Any]) -> list[RawRecord]:
        """Record a batch of raw messages (``record_raws``) and commit: they are safe before any
        parser touches them."""
        with self._writing("keep the raw messages") as session:
            records = self.record_raws(session, raws)
            session.commit()
        return records

    def save_outcomes(self, outcomes: Sequence[MessageOutcome]) -> dict[int, str]:
        """Store what a batch of messages gave and their statuses, in one transaction.

        A message the store cannot hold is rejected alone: its facts are not written, it gets a
        fatal dead letter with the reason and the rest of the batch lands. Returns those
        refusals' texts by raw id. Keys are checked first (the same on SQLite and PostgreSQL);
        any other database error makes the batch be written again message by message, each in
        a savepoint, so that only the culprit is refused.
        """
        refused = {
            outcome.raw_id: self._rejected(outcome, problem)
            for outcome in outcomes
            if (problem := _fact_problem(outcome.facts))
        }
        accepted = [outcome for outcome in outcomes if outcome.raw_id not in refused]
        with self._writing("store the facts") as session:
            try:
                self._write_outcomes(session, [*accepted, *refused.values()])
                session.commit()
            except SQLAlchemyError:
                session.rollback()
                refused |= self._write_one_by_one(session, accepted)
                self._write_outcomes(session, list(refused.values()))
                session.commit()
        texts = {raw_id: rejection.errors[0][0] for raw_id, rejection in refused.items()}
        for text in texts.values():
            log.warning("%s", text)
        return texts

    def _write_one_by_one(
        self, session: Session, outcomes: Sequence[MessageOutcome]
    ) -> dict[int, MessageOutcome]:
        refused: dict[int, MessageOutcome] = {}
        for outcome in outcomes:
            try:
                with session.begin_nested():
                    self._write_outcomes(session, [outcome])
            except SQLAlchemyError as error:
                refused[outcome.raw_id] = self._rejected(outcome, _database_problem(error))
        return refused

    def _write_outcomes(self, session: Session, outcomes: Sequence[MessageOutcome]) -> None:
        self.save_fact_rows(session, [(f, o.raw_id) for o in outcomes for f in o.facts])
        self.record_dead_letters(
            session, [(o.raw_id, *error) for o in outcomes for error in o.errors]
        )
        self.record_outcomes(session, [(o.raw_id, o.status, len(o.facts)) for o in outcomes])

    @staticmethod
    def _rejected(outcome: MessageOutcome, problem: str) -> MessageOutcome:
        """The outcome of a message the store refused: no fact, one fatal dead letter."""
        text = _refusal(outcome.document, outcome.message_id, outcome.position, problem)
        errors = [(text, outcome.position, True)]
        return replace(outcome, status="rejected", facts=(), errors=errors)

    @contextmanager
    def _writing(self, what: str) -> Iterator[Session]:
        """A session whose database errors become one ``StoreError`` naming the store."""
        try:
            with self.session() as session:
                yield session
        except SQLAlchemyError as error:
            raise StoreError(
                f"cannot {what} in {self.safe_url}: {_database_problem(error)}"
            ) from error

    def unfinished(self, limit: int = 500) -> list[StoredRaw]:
        """Raw messages kept but never finished (``received``: a crash between the commit of a
        batch's raw messages and that of what they gave), oldest first, at most ``limit``."""
        query = (
            select(
                RawMessageRow.id,
                RawMessageRow.feed,
                RawMessageRow.document,
                RawMessageRow.content,
                RawMessageRow.message_id,
                RawMessageRow.position,
                RawMessageRow.encoding,
            )
            .where(RawMessageRow.status == "received")
            .order_by(RawMessageRow.id)
            .limit(limit)
        )
        with self._writing("read the unfinished messages") as session:
            return [StoredRaw(*row) for row in session.execute(query).all()]

    def record_outcomes(self, session: Session, outcomes: Sequence[tuple[int, str, int]]) -> None:
        """Status and fact count of many raw messages: (raw id, status, facts)."""
        if outcomes:
            session.execute(
                update(RawMessageRow),
                [{"id": i, "status": status, "fact_count": n} for i, status, n in outcomes],
            )

    def _forget_outcome(self, session: Session, raw_id: int) -> None:
        session.execute(delete(FactRow).where(FactRow.raw_message_id == raw_id))
        session.execute(delete(DeadLetterRow).where(DeadLetterRow.raw_message_id == raw_id))

    def record_errors(
        self, session: Session, raw_id: int, errors: Iterable[tuple[str, str | None, bool]]
    ) -> None:
        """Dead-letter entries (message, position, fatal) for one raw message."""
        self.record_dead_letters(session, [(raw_id, *error) for error in errors])

    def record_dead_letters(
        self, session: Session, letters: Sequence[tuple[int, str, str | None, bool]]
    ) -> None:
        """Dead-letter entries for many messages: (raw id, error, position, fatal)."""
        if letters:
            now = _now()
            session.execute(
                insert(DeadLetterRow),
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

    def mark(self, session: Session, raw_id: int, status: str, fact_count: int) -> None:
        self.record_outcomes(session, [(raw_id, status, fact_count)])

    # Facts --------------------------------------------------------------------------------

    def save_facts(self, session: Session, facts: Sequence[Fact], raw_id: int | None) -> None:
        """Insert or replace facts by (kind, fact_id)."""
        self.save_fact_rows(session, [(fact, raw_id) for fact in facts])

    def save_fact_rows(self, session: Session, rows: Sequence[tuple[Fact, int | None]]) -> None:
        """Insert or replace facts (each with the raw message it came from) in one statement.

        When a batch holds the same (kind, fact_id) twice, the later one wins, as it would if
        the messages were stored one by one.
        """
        if not rows:
            return
        merged = self._merge_patients(session, [fact for fact, _ in rows])
        unique = {
            (fact.kind, fact.fact_id): {
                "kind": fact.kind,
                "fact_id": fact.fact_id,
                "patient_id": fact.patient_id,
                "raw_message_id": raw_id,
                "payload": fact.model_dump(mode="json"),
            }
            for fact, (_, raw_id) in zip(merged, rows, strict=True)
        }
        session.execute(self._upsert(), list(unique.values()))

    def _merge_patients(self, session: Session, facts: Sequence[Fact]) -> list[Fact]:
        """Complete sparse patient records with what the store already knows (see Patient)."""
        patients = {f.fact_id: f for f in facts if isinstance(f, Patient)}
        if not patients:
            return list(facts)
        query = select(FactRow.fact_id, FactRow.payload).where(
            FactRow.kind == Patient.kind, FactRow.fact_id.in_(list(patients))
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

    def _upsert(self) -> Any:
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(FactRow)
        return statement.on_conflict_do_update(
            index_elements=["kind", "fact_id"],
            set_={
                "patient_id": statement.excluded.patient_id,
                "raw_message_id": statement.excluded.raw_message_id,
                "payload": statement.excluded.payload,
            },
        )

    def iter_facts(
        self, kinds: Iterable[str] | None = None, patient_id: str | None = None
    ) -> Iterator[AnyFact]:
        """Stored facts, optionally of some kinds or one patient, in a stable order."""
        query = select(FactRow.kind, FactRow.payload).order_by(FactRow.kind, FactRow.fact_id)
        if kinds is not None:
            query = query.where(FactRow.kind.in_(list(kinds)))
        if patient_id is not None:
            query = query.where(FactRow.patient_id == patient_id)
        with self.session() as session:
            for kind, payload in session.execute(query).yield_per(5000):
                yield FACT_KINDS[kind].model_validate(payload)  # type: ignore[misc]

    def counts(self) -> dict[str, int]:
        """Facts per kind, every kind listed."""
        query = select(FactRow.kind, func.count()).group_by(FactRow.kind)
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

    def raw_content(self, feed: str, message_id: str) -> bytes | None:
        query = select(RawMessageRow.content).where(
            RawMessageRow.feed == feed, RawMessageRow.message_id == message_id
        )
        with self.session() as session:
            return session.execute(query).scalar_one_or_none()

    def reset(self) -> None:
        """Drop and recreate every table (demo and tests only)."""
        _Base.metadata.drop_all(self.engine)
        _Base.metadata.create_all(self.engine)
