"""The fact store: raw inbound messages, dead letters and facts, in SQLite or PostgreSQL.

The store is chosen by a SQLAlchemy URL: ``VIGIE_DATABASE_URL`` if set, else a SQLite file in
the user's data directory, so every command and the service share it.

- ``raw_message`` keeps every inbound unit *before* it is parsed (bytes, hash, feed, document),
  unique on (feed, message_id): ingest is idempotent — the same message sent twice is recorded
  once; a corrected message with the same id replaces the facts it gave.
- ``dead_letter`` keeps each error with the message it came from; nothing is lost.
- ``fact`` keeps each fact as its JSON form, keyed by (kind, fact_id), indexed by patient.

>>> store = FactStore("sqlite://")
>>> store.counts()["lab"]
0
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from vigie import settings
from vigie.errors import VigieError
from vigie.facts import FACT_KINDS, AnyFact, Fact, Patient

__all__ = [
    "DeadLetter",
    "FactStore",
    "RawRecord",
    "StoreError",
    "default_database_url",
]


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
    """The outcome of recording a raw message: its row id and whether it was already known."""

    id: int
    duplicate: bool
    replaced: bool


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
        """
        keys = [(raw.feed, raw.message_id) for raw in raws]
        known = self._known_raws(session, keys)
        records: list[RawRecord | None] = [None] * len(raws)
        inserts: list[tuple[int, dict[str, Any]]] = []
        for index, raw in enumerate(raws):
            found = known.get((raw.feed, raw.message_id))
            if found is None:
                inserts.append((index, self._raw_row(raw)))
            elif found[1] == raw.sha256:
                records[index] = RawRecord(found[0], duplicate=True, replaced=False)
            else:
                self._replace_raw(session, found[0], raw)
                records[index] = RawRecord(found[0], duplicate=False, replaced=True)
        if inserts:
            statement = insert(RawMessageRow).returning(
                RawMessageRow.id, sort_by_parameter_order=True
            )
            ids = session.execute(statement, [row for _, row in inserts]).scalars().all()
            for (index, _), raw_id in zip(inserts, ids, strict=True):
                records[index] = RawRecord(raw_id, duplicate=False, replaced=False)
        return [record for record in records if record is not None]

    def _known_raws(
        self, session: Session, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[int, str]]:
        """(id, sha256) of the raw messages already stored, by (feed, message_id)."""
        by_feed: dict[str, list[str]] = {}
        for feed, message_id in keys:
            by_feed.setdefault(feed, []).append(message_id)
        known: dict[tuple[str, str], tuple[int, str]] = {}
        for feed, ids in by_feed.items():
            for start in range(0, len(ids), 500):
                query = select(
                    RawMessageRow.message_id, RawMessageRow.id, RawMessageRow.sha256
                ).where(
                    RawMessageRow.feed == feed,
                    RawMessageRow.message_id.in_(ids[start : start + 500]),
                )
                for message_id, raw_id, sha in session.execute(query).all():
                    known[(feed, message_id)] = (raw_id, sha)
        return known

    @staticmethod
    def _raw_row(raw: Any) -> dict[str, Any]:
        return {
            "feed": raw.feed,
            "message_id": raw.message_id,
            "document": raw.document,
            "position": raw.position,
            "encoding": raw.encoding,
            "sha256": raw.sha256,
            "content": raw.content,
            "received_at": _now(),
            "status": "received",
            "fact_count": 0,
        }

    def _replace_raw(self, session: Session, raw_id: int, raw: Any) -> None:
        """A correction: forget what the old version gave and keep the new content."""
        self._forget_outcome(session, raw_id)
        values = self._raw_row(raw)
        del values["feed"], values["message_id"]
        session.execute(update(RawMessageRow).where(RawMessageRow.id == raw_id).values(values))

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
                        "error": text,
                        "position": position,
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
            .order_by(DeadLetterRow.id)
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
