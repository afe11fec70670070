"""What every connector shares: raw messages, located feed errors, parse outcomes.

A connector turns a file into ``RawMessage`` units (one HL7 message, one FHIR Bundle or NDJSON
line, one PN13 message, one CSV row group...) with ``split``, then each raw message into facts
with ``parse``. The raw bytes are kept by the caller *before* parsing so that nothing is lost:
a message that fails becomes a ``FeedError`` naming the document, the message and the position
(HL7 segment and field, JSON path, line and column, XML element) and what was expected; the
caller sends it to the dead-letter store and goes on with the rest of the batch.

Library exceptions (hl7, pydantic, fhir.resources, xml, csv) are caught inside the connector and
re-raised as ``FeedError``; they never reach a user raw.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from vigie.errors import VigieError
from vigie.facts import AnyFact, Fact, Retraction
from vigie.settings import site_timezone

__all__ = [
    "UTC_RANGE",
    "Connector",
    "FeedError",
    "ParseOutcome",
    "RawMessage",
    "TimeOutOfRange",
    "as_utc",
    "key_problem",
    "read_text",
    "site_timezone",
]


@dataclass(frozen=True)
class RawMessage:
    """One unit of inbound data, as received.

    ``message_id`` is the feed's own id when it has one (HL7 MSH-10, Bundle.id, PN13
    Phast-id_message) — ingest is idempotent on (feed, message_id) — else a content hash.
    ``position`` locates the unit inside its document (``message 3``, ``line 12``).
    """

    feed: str
    document: str
    content: bytes
    message_id: str
    position: str | None = None
    encoding: str | None = None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


class FeedError(VigieError):
    """A located, human-readable error in an inbound document.

    ``str(error)`` reads like ``adt.hl7: message MSG0001: PID-7: expected a date YYYYMMDD[HHMM],
    got '2024-13-45'``.
    """

    def __init__(
        self,
        document: str,
        position: str | None,
        expected: str,
        *,
        message_id: str | None = None,
        found: str | None = None,
    ) -> None:
        self.document = document
        self.position = position
        self.expected = expected
        self.message_id = message_id
        self.found = found
        super().__init__(self.render())

    def render(self) -> str:
        where = [self.document]
        if self.message_id:
            where.append(f"message {self.message_id}")
        if self.position:
            where.append(self.position)
        text = f"{': '.join(where)}: expected {self.expected}"
        if self.found is not None:
            text += f", got {_shorten(self.found)!r}"
        return text


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class ParseOutcome:
    """The facts a message gave, and the non-fatal errors met on the way.

    A fatal error is raised as ``FeedError``; a non-fatal one (one bad OBX among ten, one bad
    entry in a Bundle) is collected in ``errors`` while the rest of the message still loads.
    ``retractions`` are facts the message withdraws (see ``Retraction``); ``version_time`` is
    when the sender recorded this version of the message (naive UTC, see ``Source``): of two
    versions of one message (same feed and id), the later decides, whatever their arrival order.
    """

    facts: list[AnyFact] = field(default_factory=list)
    errors: list[FeedError] = field(default_factory=list)
    retractions: list[Retraction] = field(default_factory=list)
    version_time: datetime | None = None

    def extend(self, other: ParseOutcome) -> None:
        self.facts.extend(other.facts)
        self.errors.extend(other.errors)
        self.retractions.extend(other.retractions)


class Connector(Protocol):
    """A feed's connector: a module exposing these names is one."""

    feed: str

    def sniff(self, head: bytes, name: str) -> bool:
        """Whether a document starting with ``head`` (and called ``name``) is in this feed."""

    def split(self, document: str, content: bytes) -> Iterator[RawMessage]:
        """Cut a document into raw messages; never raises on bad content (parse does)."""

    def parse(self, raw: RawMessage) -> ParseOutcome:
        """Turn one raw message into facts, or raise ``FeedError``."""


def read_text(
    content: bytes, document: str, encodings: Sequence[str] = ("utf-8",)
) -> tuple[str, str]:
    """Decode bytes with the first encoding that works; return (text, encoding used).

    Raises ``FeedError`` naming the byte offset when none does.
    """
    last: UnicodeDecodeError | None = None
    for encoding in encodings:
        try:
            return content.decode(encoding), encoding
        except UnicodeDecodeError as error:
            last = error
    position = f"byte {last.start}" if last else None
    raise FeedError(document, position, f"text in {' or '.join(encodings)}")


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Every regular file under the given paths, sorted, hidden files skipped."""
    for path in paths:
        if path.is_dir():
            yield from sorted(
                p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
            )
        else:
            yield path


def as_utc(moment: datetime) -> datetime:
    """A fact time: naive, in UTC. Times without an offset are taken in the site's zone
    (``vigie.settings.site_timezone``, re-exported here; ``ConfigurationError`` if unknown).

    Every fact time is naive UTC so that feeds with and without offsets compare correctly.
    A time that falls outside years 1 to 9999 once in UTC (0001-01-01 00:00 in Paris) raises
    ``TimeOutOfRange``, which connectors turn into a located error.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=site_timezone())
    try:
        return moment.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:
        raise TimeOutOfRange(f"{moment.isoformat()} is outside years 1 to 9999 in UTC") from None


# What the store can hold as a key (README, Store), the same on SQLite and PostgreSQL.
MAX_PATIENT_ID = 128
MAX_FACT_ID = 512


def key_problem(fact: Fact) -> tuple[str, str] | None:
    """(expected, found) when the store cannot hold a fact's keys: a patient id over 128
    characters, a fact id over 512, a NUL byte in either.

    The store refuses such a message whole; a connector whose message holds several patients
    or entries (a CSV row group, a PN13 document, a FHIR Bundle) checks each fact, so that one
    bad key fails its row or entry only.
    """
    for name, value, limit in (
        ("patient id", fact.patient_id, MAX_PATIENT_ID),
        ("fact id", fact.fact_id, MAX_FACT_ID),
    ):
        if len(value) > limit or "\x00" in value:
            found = f"{len(value)} characters" + (", a NUL byte" if "\x00" in value else "")
            return f"a {name} of at most {limit} characters, without NUL byte", found
    return None


class TimeOutOfRange(VigieError, ValueError):
    """A time that no UTC date-time can hold (years 1 to 9999)."""


UTC_RANGE = "within years 1 to 9999 in UTC"
