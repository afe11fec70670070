"""Ingest: documents → raw messages (kept first) → connector → facts or dead letters → store.

``read_feed`` walks files and yields each raw message with what its connector made of it; it
never stops on a bad message; ``vigie quality`` tallies feeds through it, message by message.
``ingest`` stores them in batches bounded in messages and in raw bytes: the raw messages of a
batch are committed before they are parsed, then
the facts, dead letters and statuses they gave are written in a few bulk statements. A message
the database refuses is dead-lettered alone (see ``FactStore.save_outcomes``). Messages left
``received`` by a process killed between those two commits are parsed again, from the stored
bytes, by the next ``ingest`` or by ``recover`` (which a service calls at start); a message
that was dead-lettered is parsed again when it is sent again. Several ingests may run at once
on one store: each takes over only the unfinished messages of ingests that are over, and a
message another one is parsing is waited for, then a duplicate (see ``FactStore.keep_raws``).
A connector bug (an exception that is not a ``FeedError``) is caught too: the message is
dead-lettered as an internal error naming the message, and the batch goes on. A
``ConfigurationError`` (a setting changed to a bad value under way) is not the message's fault:
it stops the ingest.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from vigie.connectors.base import Connector, FeedError, ParseOutcome, RawMessage, iter_files
from vigie.connectors.hl7v2.framing import msh_fields
from vigie.connectors.registry import (
    FORMATS,
    UnknownFormat,
    connector_for,
    detect_format,
    is_metadata,
)
from vigie.errors import ConfigurationError
from vigie.ingest.unmapped import Unmapped, tally_unmapped, unmapped_in
from vigie.store import FactStore, MessageOutcome, RawRecord
from vigie.store.database import Payloads, fact_payloads

__all__ = [
    "MLLP_DOCUMENT",
    "FileReport",
    "IngestReport",
    "ParsedMessage",
    "StoredMessage",
    "feed_connectors",
    "finish_kept",
    "ingest",
    "parse_kept",
    "parse_message",
    "parse_received",
    "parsed_payloads",
    "raw_batches",
    "read_feed",
    "recover",
    "save_parsed",
    "store_messages",
]

log = logging.getLogger(__name__)

MLLP_DOCUMENT = "mllp://"
"""How the document of a message received over MLLP begins (``mllp://<sender address>``)."""


@dataclass
class ParsedMessage:
    """One raw message and its outcome: facts and non-fatal errors, or a fatal error.

    Its ``status``: ``rejected`` with a fatal error, or when every part of it failed (errors,
    and no fact nor retraction: a Bundle whose every entry was refused), as a message that
    yields nothing; ``partial`` when some parts gave facts and others failed; ``loaded``;
    ``ignored`` (nothing to take, no error). A ``rejected`` version of a message supersedes no
    other version (``FactStore.save_outcomes``)."""

    raw: RawMessage
    outcome: ParseOutcome | None
    fatal: FeedError | None = None

    @property
    def status(self) -> str:
        if self.fatal is not None:
            return "rejected"
        assert self.outcome is not None
        gave = bool(self.outcome.facts or self.outcome.retractions)
        if self.outcome.errors:  # every part failed: rejected, as a message that yields nothing
            return "partial" if gave else "rejected"
        return "loaded" if gave else "ignored"


@dataclass
class FileReport:
    path: str
    format: str | None
    messages: Counter[str] = field(default_factory=Counter)
    facts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    retractions: Counter[str] = field(default_factory=Counter)  # facts withdrawn, by kind
    corrections: int = 0  # new versions of messages the store already held (history kept)
    skipped: str | None = None  # why a file met in a folder is not a feed (README, truth.json)
    rejected: str | None = None  # located error: a feed candidate no connector recognises
    unreadable: str | None = None  # the file could not be opened (missing, no permission)
    # codes and units of the facts stored that the engine could not map, distinct, counted
    unmapped: dict[tuple[str | None, ...], Unmapped] = field(default_factory=dict)


@dataclass
class IngestReport:
    files: list[FileReport] = field(default_factory=list)

    def total_facts(self) -> Counter[str]:
        return sum((f.facts for f in self.files), Counter())

    def total_messages(self) -> Counter[str]:
        return sum((f.messages for f in self.files), Counter())

    def total_retractions(self) -> Counter[str]:
        return sum((f.retractions for f in self.files), Counter())

    def total_corrections(self) -> int:
        return sum(f.corrections for f in self.files)

    def errors(self) -> list[str]:
        return [error for f in self.files for error in f.errors]

    def unmapped(self) -> list[Unmapped]:
        """The distinct codes and units no table maps, over every file, in the order first
        seen (each with the file, message and field where first seen, and a count)."""
        tally: dict[tuple[str | None, ...], Unmapped] = {}
        for f in self.files:
            tally_unmapped(tally, f.unmapped.values(), f.path)
        return list(tally.values())

    def skipped(self) -> list[str]:
        return [f.skipped for f in self.files if f.skipped]

    def rejected(self) -> list[str]:
        return [f.rejected for f in self.files if f.rejected]

    def unreadable(self) -> list[str]:
        return [f.unreadable for f in self.files if f.unreadable]


def _parse(connector: Connector, raw: RawMessage) -> ParsedMessage:
    """What a connector makes of one raw message; never raises but ``ConfigurationError``."""
    try:
        return ParsedMessage(raw, connector.parse(raw))
    except FeedError as error:
        return ParsedMessage(raw, None, error)
    except ConfigurationError:
        raise
    except Exception as error:  # a connector bug must not stop the batch nor lose the message
        # No traceback in the log: exception texts may quote patient data.
        # Nor the message id: it may be a patient's (a FHIR ``Patient/<id>``, a PN13 IPP).
        log.error(
            "connector %s failed on a message (%s): %s",
            raw.feed,
            raw.position or "the whole document",
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


def _connector(path: Path, fmt: str, content: bytes, report: FileReport) -> Connector | None:
    try:
        if fmt == "auto":
            fmt = detect_format(path, content)
        report.format = fmt
        return connector_for(fmt)
    except UnknownFormat as error:
        report.rejected = str(error)
        return None


def _candidates(paths: Iterable[Path]) -> Iterator[tuple[Path, bool]]:
    """Each file with whether it is a feed candidate (see ``vigie.connectors.registry``):
    a file named by the caller always is; one met in a folder is unless it is metadata."""
    for path in paths:
        if path.is_dir():
            yield from ((found, not is_metadata(found.name)) for found in iter_files([path]))
        else:
            yield path, True


@dataclass(frozen=True)
class _Pending:
    """A raw message cut from a file, not parsed yet."""

    report: FileReport
    connector: Connector
    raw: RawMessage


def _iter_raw(paths: Iterable[Path], fmt: str, reports: list[FileReport]) -> Iterator[_Pending]:
    for path, candidate in _candidates(paths):
        report = FileReport(str(path), None)
        reports.append(report)
        if not candidate:
            report.skipped = f"{path}: not a feed (documentation or metadata), not read"
            continue
        try:
            content = path.read_bytes()
        except OSError as error:
            report.unreadable = f"{path}: cannot read: {error.strerror}"
            continue
        connector = _connector(path, fmt, content, report)
        if connector is None:
            continue
        for raw in connector.split(path.name, content):
            yield _Pending(report, connector, raw)


def read_feed(
    paths: Iterable[Path], fmt: str = "auto", reports: list[FileReport] | None = None
) -> Iterator[ParsedMessage]:
    """Every raw message of every file under ``paths``, parsed, in file order.

    A ``FileReport`` per file is appended to ``reports`` when given (format, errors of files
    that could not be read at all, files rejected as no recognised feed, documentation and
    metadata files of a folder skipped as not being feeds).
    """
    for pending in _iter_raw(paths, fmt, [] if reports is None else reports):
        yield _parse(pending.connector, pending.raw)


def _tally(report: FileReport, parsed: ParsedMessage) -> None:
    report.messages[parsed.status] += 1
    if parsed.fatal is not None:
        report.errors.append(str(parsed.fatal))
    if parsed.outcome is not None:
        report.facts.update(fact.kind for fact in parsed.outcome.facts)
        found = unmapped_in(parsed.outcome.facts)
        if found:
            tally_unmapped(report.unmapped, found, parsed.raw.position)
        report.retractions.update(retraction.kind for retraction in parsed.outcome.retractions)
        report.errors.extend(str(error) for error in parsed.outcome.errors)


def _outcome(raw_id: int, parsed: ParsedMessage) -> MessageOutcome:
    given = parsed.outcome.facts if parsed.outcome else []
    errors = [parsed.fatal] if parsed.fatal else (parsed.outcome.errors if parsed.outcome else [])
    fatal = parsed.fatal is not None
    raw = parsed.raw
    located = [(str(error), error.position, fatal) for error in errors]
    retractions = parsed.outcome.retractions if parsed.outcome else []
    version = parsed.outcome.version_time if parsed.outcome else None
    return MessageOutcome(
        raw_id,
        raw.document,
        raw.message_id,
        raw.position,
        parsed.status,
        given,
        located,
        retractions,
        version,
    )


def _refused(report: FileReport, text: str) -> None:
    report.messages["rejected"] += 1
    report.errors.append(text)


@dataclass(frozen=True)
class StoredMessage:
    """What storing one raw message did: its row in the store and what it gave.

    ``status`` is ``duplicate`` (already stored and done: not parsed again), ``rejected`` with
    ``refused`` set when the store could not hold it (its reason), ``superseded`` when it is an
    older version than the one the store holds (kept as history, without effect), else the
    parsed message's status (``loaded``, ``ignored``, ``partial``, ``rejected``).
    ``replaced`` says it is a new version of a message the store knew (a correction).
    """

    raw: RawMessage
    raw_id: int
    status: str
    parsed: ParsedMessage | None = None
    refused: str | None = None
    replaced: bool = False

    @property
    def applied(self) -> bool:
        """Whether what it gave reached the store (its facts and retractions are current)."""
        return self.parsed is not None and self.status in ("loaded", "partial")

    @property
    def errors(self) -> list[FeedError]:
        """The connector's errors (fatal first), whatever the store did with the message."""
        return _errors(self.parsed) if self.parsed is not None else []


def parse_message(connector: Connector | None, raw: RawMessage) -> ParsedMessage:
    """What a connector makes of one raw message (``None``: no connector reads its feed, a
    located fatal error); never raises but ``ConfigurationError``."""
    return _recovered(connector, raw)


def parse_received(connector: Connector | None, raw: RawMessage) -> ParsedMessage:
    """What a message received over MLLP gives: the connector's parse (``parse_message``),
    but a message whose header is readable and has no MSH-10 (message control id) is refused,
    a fatal error located at MSH-10: HL7 v2 requires it, and the sender matches its ACK by it.
    (A file may lack it: ``vigie ingest`` names such a message by a hash of its bytes.) The
    listener acknowledges it ``AE``, keeps its bytes and dead-letters it, no fact stored."""
    parsed = parse_message(connector, raw)
    if parsed.fatal is not None or not raw.message_id.startswith("sha256:"):
        return parsed  # the HL7 v2 connector names by a hash only a message without MSH-10
    fields = msh_fields(raw.content)
    if fields is None or (len(fields) > 9 and fields[9].strip()):
        return parsed
    missing = FeedError(
        raw.document,
        "MSH-10",
        "a message control id (required: the sender matches its ACK by it)",
        message_id=raw.message_id,
        found="",
    )
    return ParsedMessage(raw, None, missing)


def parse_kept(connector: Connector | None, raw: RawMessage) -> ParsedMessage:
    """A kept message parsed under the policy of the transport it came by, which its document
    says: received over MLLP (``mllp://peer``) as the listener parses it (``parse_received``:
    no MSH-10, refused), any other as ``parse_message``. A message kept before it was parsed
    (``recover``) and a dead letter replayed (``store_messages``) get what the listener gave."""
    parse = parse_received if raw.document.startswith(MLLP_DOCUMENT) else parse_message
    return parse(connector, raw)


def save_parsed(
    store: FactStore,
    parsed: Sequence[tuple[int, ParsedMessage, bool]],
    payloads: Payloads | None = None,
) -> list[StoredMessage]:
    """Store what kept messages gave, in one transaction: (raw id, parsed message, replaced)
    each; what became of each, in the same order (see ``FactStore.save_outcomes``, and
    ``parsed_payloads`` for ``payloads``)."""
    outcomes = [_outcome(raw_id, message) for raw_id, message, _ in parsed]
    saved = store.save_outcomes(outcomes, payloads)
    stored = []
    for raw_id, message, replaced in parsed:
        status = message.status
        refused = saved.refused.get(raw_id)
        if refused is not None:
            status = "rejected"
        elif raw_id in saved.superseded:
            status = "superseded"
        stored.append(StoredMessage(message.raw, raw_id, status, message, refused, replaced))
    return stored


def parsed_payloads(parsed: Iterable[ParsedMessage]) -> Payloads:
    """The JSON forms of the facts of parsed messages, made before ``save_parsed`` takes the
    store's write lock (``vigie.store.database.fact_payloads``)."""
    outcomes = (message.outcome for message in parsed if message.outcome is not None)
    return fact_payloads(fact for outcome in outcomes for fact in outcome.facts)


def store_messages(
    store: FactStore, messages: Sequence[tuple[Connector | None, RawMessage]]
) -> list[StoredMessage]:
    """Keep raw messages (committed first), then parse and store what they gave: the one
    sequence of steps of every ingest (files, HTTP bodies, replays of dead letters), each
    message parsed under its transport's policy (``parse_kept``).

    The (feed, message id) keys must be distinct (``ingest`` cuts its batches where one
    repeats). What became of each message, in order.
    """
    if not messages:
        return []
    records = store.keep_raws([raw for _, raw in messages])
    return finish_kept(store, messages, records)


def finish_kept(
    store: FactStore,
    messages: Sequence[tuple[Connector | None, RawMessage]],
    records: Sequence[RawRecord],
) -> list[StoredMessage]:
    """The second half of ``store_messages``: parse the kept messages that are neither
    duplicates nor refused (``records``, from ``FactStore.keep_raws``) and store what they
    gave; what became of each message, in order."""
    to_parse = [
        (record.id, parse_kept(connector, raw), record.replaced)
        for (connector, raw), record in zip(messages, records, strict=True)
        if not record.duplicate and record.refused is None
    ]
    parsed = iter(save_parsed(store, to_parse))
    results = []
    for (_, raw), record in zip(messages, records, strict=True):
        if record.duplicate:
            results.append(StoredMessage(raw, record.id, "duplicate", replaced=record.replaced))
        elif record.refused is not None:
            text, replaced = record.refused, record.replaced
            results.append(StoredMessage(raw, record.id, "rejected", None, text, replaced))
        else:
            results.append(next(parsed))
    return results


def _store_batch(store: FactStore, batch: list[_Pending]) -> None:
    """Keep the raw messages (committed first), then parse and store what they gave."""
    stored = store_messages(store, [(pending.connector, pending.raw) for pending in batch])
    for pending, message in zip(batch, stored, strict=True):  # tallied in file order
        _tally_stored(pending.report, message)


def _tally_stored(report: FileReport, message: StoredMessage) -> None:
    report.corrections += message.replaced and message.status != "duplicate"
    if message.status == "duplicate":
        report.messages["duplicate"] += 1
    elif message.refused is not None:
        _refused(report, message.refused)
    elif message.status == "superseded":  # an older version than the one stored
        report.messages["superseded"] += 1
        report.errors.extend(str(error) for error in message.errors)
    else:
        assert message.parsed is not None
        _tally(report, message.parsed)


def _errors(parsed: ParsedMessage) -> list[FeedError]:
    if parsed.fatal is not None:
        return [parsed.fatal]
    return list(parsed.outcome.errors) if parsed.outcome else []


def feed_connectors() -> dict[str, Connector]:
    """Connectors by the feed name their raw messages carry (``hl7v2`` for format ``hl7``)."""
    connectors = (connector_for(fmt) for fmt in FORMATS)
    return {connector.feed: connector for connector in connectors}


def recover(
    store: FactStore, batch_size: int = 500, batch_bytes: int | None = None
) -> IngestReport:
    """Parse again every message the store kept but never finished, from its stored bytes.

    A process killed between the two commits of a batch leaves its raw messages ``received``;
    ``ingest`` calls this first, and a long-lived service calls it at start. Only the messages
    of ingest runs that are over are taken (``FactStore.claim_unfinished``): those of an ingest
    running at the same time, in another process, are its own. A message of a feed no connector
    reads is dead-lettered (it stays in the store; sending it again retries it).
    """
    report = IngestReport()
    by_document: dict[tuple[str, str], FileReport] = {}
    connectors: dict[str, Connector] | None = None
    bound = BATCH_BYTES if batch_bytes is None else batch_bytes
    while unfinished := store.claim_unfinished(batch_size, bound):
        connectors = connectors if connectors is not None else feed_connectors()
        files, parsed = [], []
        for stored in unfinished:
            file = by_document.get((stored.feed, stored.document))
            if file is None:
                file = FileReport(f"{stored.document} (unfinished, from the store)", stored.feed)
                by_document[(stored.feed, stored.document)] = file
                report.files.append(file)
            raw = RawMessage(
                stored.feed,
                stored.document,
                stored.content,
                stored.message_id,
                stored.position,
                stored.encoding,
            )
            files.append(file)
            parsed.append((stored.id, parse_kept(connectors.get(stored.feed), raw), False))
        for file, message in zip(files, save_parsed(store, parsed), strict=True):
            _tally_stored(file, message)
    return report


def _recovered(connector: Connector | None, raw: RawMessage) -> ParsedMessage:
    if connector is not None:
        return _parse(connector, raw)
    unread = FeedError(
        raw.document,
        raw.position,
        f"a feed Vigie reads (no connector for {raw.feed!r})",
        message_id=raw.message_id,
    )
    return ParsedMessage(raw, None, unread)


BATCH_BYTES = 1 << 20
"""Raw bytes per ingest batch (1 MiB): what bounds the facts a batch holds in memory."""


def ingest(
    paths: Iterable[Path],
    store: FactStore,
    fmt: str = "auto",
    batch_size: int = 500,
    batch_bytes: int = BATCH_BYTES,
) -> IngestReport:
    """Load documents into the store, in batches; idempotent on (feed, message id).

    Messages a previous run left unfinished are parsed again first (``recover``), from the
    bytes the store kept; their reports come first, then one per file.

    A batch holds at most ``batch_size`` messages and ``batch_bytes`` raw bytes: a message's
    facts are read from its bytes, so the facts a batch holds in memory, parsed, grow with its
    bytes rather than with its messages (a CSV message is a thousand rows, an HL7 one a few
    segments). A message over the bound (a large FHIR Bundle) goes alone, whole, so that one
    message is never cut. A batch is also cut early where a message
    id repeats, so that a re-sent or corrected message is compared with what the store holds,
    exactly as if messages were stored one by one.
    """
    report = recover(store, batch_size, batch_bytes)
    for batch in raw_batches(_iter_raw(paths, fmt, report.files), batch_size, batch_bytes):
        _store_batch(store, batch)
    return report


class _HasRaw(Protocol):
    @property
    def raw(self) -> RawMessage: ...


_M = TypeVar("_M", bound=_HasRaw)


def raw_batches(
    pending: Iterable[_M], batch_size: int = sys.maxsize, batch_bytes: int = BATCH_BYTES
) -> Iterator[list[_M]]:
    """Messages (anything with its ``raw`` message) in order, cut into batches of distinct
    (feed, message id) keys — a keep takes distinct keys, and a save settles each version of a
    message against the one before — of at most ``batch_size`` messages and ``batch_bytes`` raw
    bytes (the first message of a batch whatever its size)."""
    batch: list[_M] = []
    keys: set[tuple[str, str]] = set()
    size = 0
    for message in pending:
        key, length = (message.raw.feed, message.raw.message_id), len(message.raw.content)
        full = len(batch) >= batch_size or size + length > batch_bytes
        if batch and (key in keys or full):
            yield batch
            batch, keys, size = [], set(), 0
        batch.append(message)
        keys.add(key)
        size += length
    if batch:
        yield batch
