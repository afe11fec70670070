"""Ingest: documents → raw messages (kept first) → connector → facts or dead letters → store.

``read_feed`` walks files and yields each raw message with what its connector made of it; it
never stops on a bad message. ``ingest`` stores them; ``vigie quality`` reads them in memory.
A connector bug (an exception that is not a ``FeedError``) is caught too: the message is
dead-lettered as an internal error naming the message, and the batch goes on.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from connectors.base import Connector, FeedError, ParseOutcome, RawMessage, iter_files
from connectors.registry import UnknownFormat, connector_for, detect_format
from engine.store import FactStore

__all__ = ["FileReport", "IngestReport", "ParsedMessage", "ingest", "read_feed"]

log = logging.getLogger(__name__)
_HEAD_BYTES = 4096


@dataclass
class ParsedMessage:
    """One raw message and its outcome: facts and non-fatal errors, or a fatal error."""

    raw: RawMessage
    outcome: ParseOutcome | None
    fatal: FeedError | None = None

    @property
    def status(self) -> str:
        if self.fatal is not None:
            return "rejected"
        assert self.outcome is not None
        if self.outcome.errors:
            return "partial"
        return "loaded" if self.outcome.facts else "ignored"


@dataclass
class FileReport:
    path: str
    format: str | None
    messages: Counter[str] = field(default_factory=Counter)
    facts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the file was not read (not a recognised feed)


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)

    def total_facts(self) -> Counter[str]:
        return sum((f.facts for f in self.files), Counter())

    def total_messages(self) -> Counter[str]:
        return sum((f.messages for f in self.files), Counter())

    def errors(self) -> list[str]:
        return [error for f in self.files for error in f.errors]

    def skipped(self) -> list[str]:
        return [f.skipped for f in self.files if f.skipped]


def _parse(connector: Connector, raw: RawMessage) -> ParsedMessage:
    try:
        return ParsedMessage(raw, connector.parse(raw))
    except FeedError as error:
        return ParsedMessage(raw, None, error)
    except Exception as error:  # a connector bug must not stop the batch nor lose the message
        # No traceback in the log: exception texts may quote patient data.
        log.error(
            "connector %s failed on message %s: %s",
            raw.feed,
            raw.message_id,
            error.__class__.__name__,
        )
        internal = FeedError(
            raw.document,
            raw.position,
            f"a readable {raw.feed} message (internal error "
            f"{error.__class__.__name__}; the message is kept in the dead-letter store)",
            message_id=raw.message_id,
        )
        return ParsedMessage(raw, None, internal)


def _connector(path: Path, fmt: str, report: FileReport) -> Connector | None:
    try:
        if fmt == "auto":
            with path.open("rb") as handle:
                fmt = detect_format(path, handle.read(_HEAD_BYTES))
        report.format = fmt
        return connector_for(fmt)
    except UnknownFormat as error:
        report.skipped = str(error)
        return None
    except OSError as error:
        report.errors.append(f"{path}: cannot read: {error.strerror}")
        return None


def read_feed(
    paths: Iterable[Path], fmt: str = "auto", reports: list[FileReport] | None = None
) -> Iterator[ParsedMessage]:
    """Every raw message of every file under ``paths``, parsed, in file order.

    A ``FileReport`` per file is appended to ``reports`` when given (format, errors of files
    that could not be read at all).
    """
    for path in iter_files(paths):
        report = FileReport(str(path), None)
        if reports is not None:
            reports.append(report)
        connector = _connector(path, fmt, report)
        if connector is None:
            continue
        try:
            content = path.read_bytes()
        except OSError as error:
            report.errors.append(f"{path}: cannot read: {error.strerror}")
            continue
        for raw in connector.split(path.name, content):
            yield _parse(connector, raw)


def _tally(report: FileReport, parsed: ParsedMessage, duplicate: bool) -> None:
    if duplicate:
        report.messages["duplicate"] += 1
        return
    report.messages[parsed.status] += 1
    if parsed.fatal is not None:
        report.errors.append(str(parsed.fatal))
    if parsed.outcome is not None:
        report.facts.update(fact.kind for fact in parsed.outcome.facts)
        report.errors.extend(str(error) for error in parsed.outcome.errors)


def _store_one(store: FactStore, session: Session, parsed: ParsedMessage) -> bool:
    """Record one parsed message; return whether it was a duplicate."""
    record = store.record_raw(session, parsed.raw)
    if record.duplicate:
        return True
    outcome = parsed.outcome
    facts = outcome.facts if outcome else []
    errors = [parsed.fatal] if parsed.fatal else (outcome.errors if outcome else [])
    store.save_facts(session, facts, record.id)
    store.record_errors(
        session,
        record.id,
        ((str(e), e.position, parsed.fatal is not None) for e in errors),
    )
    store.mark(session, record.id, parsed.status, len(facts))
    return False


def ingest(
    paths: Iterable[Path], store: FactStore, fmt: str = "auto", commit_every: int = 500
) -> IngestReport:
    """Load documents into the store; idempotent on (feed, message id)."""
    report = IngestReport()
    pending = 0
    with store.session() as session:
        for parsed in read_feed(paths, fmt, report.files):
            file_report = report.files[-1]
            _tally(file_report, parsed, _store_one(store, session, parsed))
            pending += 1
            if pending >= commit_every:
                session.commit()
                pending = 0
        session.commit()
    return report
