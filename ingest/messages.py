"""Ingest of payloads that arrive one message at a time (an HTTP body, an MLLP frame), not files.

The steps are those of ``vigie.ingest.pipeline``: each raw message is kept first (committed),
then parsed by its feed's connector, then what it gave is stored, in one transaction per batch;
a message that fails is dead-lettered with its located error and the others go on. Idempotent
on the message id: the same message sent twice is recorded once and says ``duplicate``; a
message that was dead-lettered is parsed again when it is sent again (or replayed).

- ``ingest_hl7(store, payload)``: one or many HL7 v2 messages (cut at each MSH; segments ended
  by ``\\r``, ``\\n`` or ``\\r\\n``; MLLP block bytes tolerated).
- ``ingest_fhir(store, body)``: a FHIR R4 JSON document (a Bundle, a resource) or NDJSON lines.
- ``dead_letters(store)`` lists the dead letters with their ids; ``replay_dead_letter(store,
  id)`` parses the message of a dead letter again from the bytes the store kept (after a
  mapping fix), exactly as if it had been sent again.

Each returns ``MessageResult`` values: the message id, its status, the facts it gave (for a
caller to apply to a live evaluator), and its errors, each located (HL7 segment and field, JSON
path) with what was expected; ``unmapped`` lists the codes and units of its facts the engine
could not map (stored, but invisible to the rules: see ``vigie.ingest.unmapped``), which leave
its status as it is.

>>> from vigie.store import FactStore
>>> store = FactStore("sqlite://")
>>> message = (b"MSH|^~\\\\&|LAB|CHU|||20240102||ORU^R01|M1|P|2.5\\r"
...     b"PID|1||P1^^^H^PI||DOE^JO||19500101|F\\r"
...     b"OBX|1|NM|2823-3^Potassium^LN||5.9|mmol/L|3.5-5.1|H|||F|||202401020800\\r")
>>> [(r.message_id, r.status, [f.kind for f in r.facts]) for r in ingest_hl7(store, message)]
[('LAB^CHU|M1', 'loaded', ['patient', 'lab'])]
>>> [(r.status, r.facts) for r in ingest_hl7(store, message)]
[('duplicate', ())]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select

from vigie.connectors.base import Connector, FeedError, RawMessage
from vigie.connectors.registry import connector_for
from vigie.errors import VigieError
from vigie.facts import AnyFact, Retraction
from vigie.ingest.pipeline import (
    BATCH_BYTES,
    StoredMessage,
    feed_connectors,
    store_messages,
)
from vigie.ingest.unmapped import Unmapped, unmapped_in
from vigie.store import FactStore
from vigie.store.database import DeadLetterRow, RawMessageRow

__all__ = [
    "DeadLetterEntry",
    "MessageError",
    "MessageResult",
    "ReplayError",
    "dead_letters",
    "ingest_fhir",
    "ingest_hl7",
    "ingest_raws",
    "replay_dead_letter",
    "replay_dead_letters",
    "result_of",
]

BATCH_SIZE = 500
"""Messages per transaction of one payload (a bulk NDJSON body is cut into such batches)."""

# What the store keeps under a stand-in id when a message's own id cannot be stored
# (``vigie.store.database``): such a message cannot be replayed, only sent again.
_STAND_IN_PREFIX = "unstorable-id:"


class ReplayError(VigieError):
    """A dead letter that cannot be replayed: unknown, or kept under a stand-in id."""


@dataclass(frozen=True)
class MessageError:
    """One error of a message: the full located text, and its parts when a connector gave
    them (``position``: HL7 segment and field, JSON path, line; ``expected``; ``found``)."""

    text: str
    position: str | None
    expected: str | None = None
    found: str | None = None
    fatal: bool = True

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MessageResult:
    """What became of one inbound message.

    ``status``: ``loaded``; ``partial`` (loaded, with errors dead-lettered); ``rejected``
    (nothing loaded, dead-lettered); ``ignored`` (a message type no rule needs, e.g. an HL7
    ``MFN``); ``duplicate`` (stored and done before: nothing done again); ``superseded`` (an
    older version than the one the store holds: kept as history, without effect).
    ``facts`` and ``retractions`` are what the message gave to the store, empty unless it was
    ``loaded`` or ``partial``: what a live evaluator should take in. ``correction`` says it is a
    new version of a message the store knew. ``unmapped``: the distinct codes and units of
    its facts that the engine could not map (``vigie.ingest.unmapped``); a warning, not an
    error: the message is still ``loaded``.
    """

    message_id: str
    status: str
    document: str
    position: str | None
    raw_id: int
    facts: tuple[AnyFact, ...] = ()
    retractions: tuple[Retraction, ...] = ()
    errors: tuple[MessageError, ...] = ()
    correction: bool = False

    @property
    def unmapped(self) -> list[Unmapped]:
        return unmapped_in(self.facts)

    @property
    def failed(self) -> bool:
        """Whether the message left dead letters (``partial`` or ``rejected``)."""
        return self.status in ("partial", "rejected")

    def summary(self) -> dict[str, Any]:
        """A JSON-ready summary (facts counted by kind, not listed: they hold patient data)."""
        kinds: dict[str, int] = {}
        for fact in self.facts:
            kinds[fact.kind] = kinds.get(fact.kind, 0) + 1
        return {
            "message_id": self.message_id,
            "status": self.status,
            "position": self.position,
            "facts": kinds,
            "retractions": len(self.retractions),
            "correction": self.correction,
            "errors": [error.as_dict() for error in self.errors],
            "unmapped": [found.as_dict() for found in self.unmapped],
        }


def _error(error: FeedError, fatal: bool) -> MessageError:
    return MessageError(str(error), error.position, error.expected, error.found, fatal)


def result_of(stored: StoredMessage) -> MessageResult:
    """The ``MessageResult`` of a message the pipeline stored."""
    raw, parsed = stored.raw, stored.parsed
    errors: list[MessageError] = []
    if stored.refused is not None:
        errors.append(MessageError(stored.refused, raw.position or "whole document"))
    if parsed is not None and parsed.fatal is not None:
        errors.append(_error(parsed.fatal, True))
    elif parsed is not None and parsed.outcome is not None:
        errors.extend(_error(error, False) for error in parsed.outcome.errors)
    facts: tuple[AnyFact, ...] = ()
    retractions: tuple[Retraction, ...] = ()
    if stored.applied and parsed is not None and parsed.outcome is not None:
        facts, retractions = tuple(parsed.outcome.facts), tuple(parsed.outcome.retractions)
    return MessageResult(
        raw.message_id,
        stored.status,
        raw.document,
        raw.position,
        stored.raw_id,
        facts,
        retractions,
        tuple(errors),
        stored.replaced and stored.status != "duplicate",
    )


def _batches(
    messages: Iterable[tuple[Connector | None, RawMessage]],
) -> Iterator[list[tuple[Connector | None, RawMessage]]]:
    """Messages in order, cut into batches of distinct (feed, message id) keys, bounded in
    messages and raw bytes, as the file ingest cuts them (a repeated id is compared with what
    the store holds, as if messages were stored one by one)."""
    batch: list[tuple[Connector | None, RawMessage]] = []
    keys: set[tuple[str, str]] = set()
    size = 0
    for connector, raw in messages:
        key = (raw.feed, raw.message_id)
        full = len(batch) >= BATCH_SIZE or size + len(raw.content) > BATCH_BYTES
        if batch and (key in keys or full):
            yield batch
            batch, keys, size = [], set(), 0
        batch.append((connector, raw))
        keys.add(key)
        size += len(raw.content)
    if batch:
        yield batch


def ingest_raws(
    store: FactStore, messages: Iterable[tuple[Connector | None, RawMessage]]
) -> list[MessageResult]:
    """Keep, parse and store raw messages (each with its feed's connector), in order."""
    results: list[MessageResult] = []
    for batch in _batches(messages):
        results.extend(result_of(stored) for stored in store_messages(store, batch))
    return results


def ingest_hl7(
    store: FactStore, payload: bytes | str, document: str = "http"
) -> list[MessageResult]:
    """Ingest one or many HL7 v2 messages (cut at each MSH); a result per message, in order.

    Bytes are decoded per message as the file ingest does (MSH-18, else UTF-8, else Latin-1);
    text is taken as given (encoded in UTF-8 to be kept). ``document`` names the payload's
    origin in errors and dead letters (``http``, ``mllp://host``).
    """
    connector = connector_for("hl7")
    raws: Iterable[RawMessage]
    if isinstance(payload, str):
        content = payload.encode("utf-8", "surrogatepass")
        raws = (
            dataclasses.replace(raw, encoding="utf-8") for raw in connector.split(document, content)
        )
    else:
        raws = connector.split(document, payload)
    return ingest_raws(store, ((connector, raw) for raw in raws))


_NDJSON_SUFFIX = ".ndjson"


def ingest_fhir(
    store: FactStore,
    body: bytes | str | Mapping[str, Any],
    document: str = "http",
    *,
    ndjson: bool | None = None,
) -> list[MessageResult]:
    """Ingest a FHIR R4 JSON document (a Bundle or one resource) or NDJSON lines.

    ``ndjson``: ``True`` reads the body as lines (one resource or Bundle per line: what
    ``application/fhir+ndjson`` says), ``None`` tells from the content as the file ingest does
    (several lines, the first a JSON object by itself). A body that is not JSON, or JSON that
    is not FHIR, is kept and rejected with its located error like any message.
    """
    connector = connector_for("fhir")
    if isinstance(body, Mapping):
        content = orjson.dumps(body)
    elif isinstance(body, str):
        content = body.encode("utf-8", "surrogatepass")
    else:
        content = body
    if ndjson and not document.lower().endswith(_NDJSON_SUFFIX):
        document += _NDJSON_SUFFIX  # how the connector's split is told to cut lines
    raws = connector.split(document, content)
    return ingest_raws(store, ((connector, raw) for raw in raws))


# Dead letters ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeadLetterEntry:
    """A dead letter with its id (what a replay names) and its message's row and status."""

    id: int
    raw_id: int
    feed: str
    document: str
    message_id: str
    message_position: str | None
    message_status: str
    error: str
    position: str | None
    fatal: bool
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        entry = dataclasses.asdict(self)
        entry["created_at"] = self.created_at.isoformat()
        return entry


_DEAD_LETTERS = (
    select(
        DeadLetterRow.id,
        DeadLetterRow.raw_message_id,
        RawMessageRow.feed,
        RawMessageRow.document,
        RawMessageRow.message_id,
        RawMessageRow.position,
        RawMessageRow.status,
        DeadLetterRow.error,
        DeadLetterRow.position,
        DeadLetterRow.fatal,
        DeadLetterRow.created_at,
    )
    .join(RawMessageRow, RawMessageRow.id == DeadLetterRow.raw_message_id)
    .order_by(DeadLetterRow.id)
)


def dead_letters(
    store: FactStore, *, limit: int = 100, after: int | None = None, feed: str | None = None
) -> list[DeadLetterEntry]:
    """Dead letters in the order they were written, at most ``limit``, those with an id over
    ``after`` (paging: pass the last id of the previous page), of one feed (``hl7v2``,
    ``fhir``...) when given. A message parsed again (replayed or sent again) loses its dead
    letters and gets new ones if it fails again."""
    query = _DEAD_LETTERS.limit(limit)
    if after is not None:
        query = query.where(DeadLetterRow.id > after)
    if feed is not None:
        query = query.where(RawMessageRow.feed == feed)
    with store.session() as session:
        return [DeadLetterEntry(*row) for row in session.execute(query).all()]


def replay_dead_letter(store: FactStore, dead_letter_id: int) -> MessageResult:
    """Parse the message of a dead letter again, from the bytes the store kept, and store what
    it gives: after a mapping or terminology fix, the message loads (its dead letters are
    replaced by the new errors, if any). The same steps as a message sent again: the kept
    version is retried (``FactStore.keep_raws``), parsed by its feed's connector under the
    policy of the transport it came by, saved. A message received over MLLP (its document
    ``mllp://peer``) is held to the listener's rules (``pipeline.parse_kept``): one without
    MSH-10, which the listener refused (AE), is refused again, ``rejected`` with its error at
    MSH-10, and stays dead-lettered; the same bytes read from a file would load.

    ``ReplayError`` when the dead letter is unknown (replayed already: a replay forgets the
    message's dead letters) or its message was kept under a stand-in id (its own id could
    not be stored: only sending it again with a storable id can load it).
    """
    query = (
        select(
            RawMessageRow.feed,
            RawMessageRow.document,
            RawMessageRow.content,
            RawMessageRow.message_id,
            RawMessageRow.position,
            RawMessageRow.encoding,
        )
        .join(DeadLetterRow, DeadLetterRow.raw_message_id == RawMessageRow.id)
        .where(DeadLetterRow.id == dead_letter_id)
    )
    with store.session() as session:
        row = session.execute(query).first()
    if row is None:
        raise ReplayError(f"no dead letter {dead_letter_id} (unknown, or replayed already)")
    raw = RawMessage(*row)
    if raw.message_id.startswith(_STAND_IN_PREFIX):
        raise ReplayError(
            f"dead letter {dead_letter_id}: the message's own id could not be stored; "
            "send it again with a storable id"
        )
    connector = feed_connectors().get(raw.feed)
    (result,) = ingest_raws(store, [(connector, raw)])
    return result


def replay_dead_letters(store: FactStore, feed: str | None = None) -> list[MessageResult]:
    """Replay every message that has dead letters (of one feed when given), oldest first."""
    query = select(DeadLetterRow.raw_message_id, DeadLetterRow.id).order_by(DeadLetterRow.id)
    if feed is not None:
        query = query.join(RawMessageRow, RawMessageRow.id == DeadLetterRow.raw_message_id)
        query = query.where(RawMessageRow.feed == feed)
    with store.session() as session:
        first: dict[int, int] = {}
        for raw_id, letter in session.execute(query).all():
            first.setdefault(raw_id, letter)
    results = []
    for letter in first.values():
        try:
            results.append(replay_dead_letter(store, letter))
        except ReplayError:
            continue  # a stand-in id: stays dead-lettered
    return results
