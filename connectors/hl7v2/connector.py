"""HL7 v2 connector (feed ``hl7v2``): ADT, ORU^R01, RDE/OMP/ORM and RAS messages → facts.

A file holds one message or a batch (several MSH, optional FHS/BHS wrappers, segments ended
by ``\\r``, ``\\n`` or ``\\r\\n``, MLLP block bytes tolerated). ``split`` cuts it into one
``RawMessage`` per message (id MSH-10, else a content hash; position ``message N``; encoding
from MSH-18, else UTF-8 when valid, else Latin-1) and never raises. ``parse`` turns one into
facts:

======================  ===================================================================
ADT (every trigger)     Patient (PID), Stay (PV1), Observation/LabResult/Pregnancy (OBX)
ORU^R01                 Patient, LabResult/Observation/Pregnancy per OBX
RDE^O11/O25, OMP^O09,   Patient, MedicationOrder per ORC group with RXE or RXO, OBX results
ORM^O01
RAS^O17                 Patient, MedicationAdministration per RXA
any of the above        Condition per DG1, Allergy per AL1
anything else           nothing: ``Hl7Outcome.ignored`` says why; no error, so ingest
                        records the message as *ignored*, never as a dead letter
======================  ===================================================================

A message that cannot be read (no MSH, wrong separators, truncated, undecodable, no patient
id) raises ``FeedError``; a bad field inside a readable message (a malformed date, a bad
number in one OBX) is a located non-fatal error in ``errors`` and the rest still loads.
Every event time (OBX-14, OBR-7, PV1-44/45, TQ1-7/8, ORC-9/15, RXA-3, DG1-5, AL1-6...) honours
a ``+/-ZZZZ`` offset and is read in the site's zone without one (``vigie.connectors.base.as_utc``);
birth and due dates are calendar dates, never shifted. See ``hl7v2_clinical``,
``hl7v2_history`` and ``hl7v2_pharmacy`` for the field-by-field choices.

>>> raw = next(split("k.hl7", b"MSH|^~\\\\&|LAB||||20240102||ORU^R01|M1|P|2.5\\r"
...     b"PID|1||P1^^^H^PI||DOE^JO||19500101|F\\r"
...     b"OBX|1|NM|2823-3^Potassium^LN||5.9|mmol/L|3.5-5.1|H|||F|||202401020800\\r"))
>>> [(fact.kind, getattr(fact, "value", None)) for fact in parse(raw).facts]
[('patient', None), ('lab', 5.9)]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from vigie.connectors.base import FeedError, RawMessage
from vigie.connectors.hl7v2.clinical import (
    FEED,
    Context,
    load_patients,
    load_results,
    load_stay,
    patient_ids_of,
    version_time,
)
from vigie.connectors.hl7v2.framing import (
    MessageSlice,
    charset_encoding,
    content_hash_id,
    cut_messages,
    declared_charset,
    guess_encoding,
    read_header,
)
from vigie.connectors.hl7v2.history import load_history
from vigie.connectors.hl7v2.message import Hl7Message, Hl7Outcome
from vigie.connectors.hl7v2.pharmacy import load_administrations, load_orders
from vigie.connectors.hl7v2.readers import read_message
from vigie.terminology import Terminology, default_terminology

__all__ = [
    "SUPPORTED_MESSAGES",
    "Hl7Outcome",
    "feed",
    "parse",
    "sniff",
    "split",
]

feed = FEED

_ORDER_MESSAGES = frozenset({"RDE^O11", "RDE^O25", "OMP^O09", "ORM^O01"})
SUPPORTED_MESSAGES = ("ADT^*", "ORU^R01", *sorted(_ORDER_MESSAGES), "RAS^O17")
_SNIFF_BYTES = 4096
_SNIFF_LINE = re.compile(rb"(?:\A|[\r\n])(?:\xef\xbb\xbf)?[\x0b \t]*(?:MSH|FHS|BHS)\|")


def sniff(head: bytes, name: str) -> bool:
    """An HL7 v2 document has, in its first 4 KB, a line starting (after BOM, MLLP byte,
    blanks) with MSH, FHS or BHS + '|'.

    Not only its first line: a banner before the first MSH is still HL7 v2; ``split`` hands
    the banner to ``parse``, which rejects it with a located error, and the messages load.
    """
    return _SNIFF_LINE.search(head[:_SNIFF_BYTES]) is not None


def split(document: str, content: bytes) -> Iterator[RawMessage]:
    """One RawMessage per message of the document; never raises.

    The message id is MSH-10 prefixed by the sender (MSH-3^MSH-4): HL7 makes MSH-10 unique per
    sending system only, and ingest takes a known id with new content for a correction.
    A repeated id with different content inside one document gets ``#N`` appended (N the
    message's rank), since ingest would otherwise take the second for a correction of the first.
    """
    seen: dict[str, bytes] = {}
    # An empty (or blank) document is one message too, so that parse rejects it, located.
    for piece in cut_messages(content) or [MessageSlice(1, content, is_message=False)]:
        header = read_header(piece.content)
        message_id = header.control_id or content_hash_id(piece.content)
        if header.control_id and header.sender:
            message_id = f"{header.sender}|{header.control_id}"
        if message_id in seen and seen[message_id] != piece.content:
            message_id = f"{message_id}#{piece.number}"
        seen[message_id] = piece.content
        yield RawMessage(
            feed=FEED,
            document=document,
            content=piece.content,
            message_id=message_id,
            position=f"message {piece.number}",
            encoding=charset_encoding(header.charset) or guess_encoding(piece.content),
        )


def parse(raw: RawMessage, terminology: Terminology | None = None) -> Hl7Outcome:
    """Facts of one message; raises ``FeedError`` when the message cannot be read at all."""
    message = read_message(raw)
    outcome = Hl7Outcome(message_type=message.message_type, notes=list(message.notes))
    _check_charset(message, raw, outcome)
    loader = _loader(message)
    if loader is None:
        outcome.ignored = f"ignored message type {message.message_type}"
        return outcome
    if message.message_code == "ADT" and message.first("PID") is None:
        outcome.ignored = f"{message.message_type} without PID: no patient facts"
        return outcome
    outcome.version_time = version_time(message)
    ctx = Context(message, terminology or default_terminology(), outcome)
    ctx.patients = patient_ids_of(message)
    load_patients(ctx)
    loader(ctx)
    load_history(ctx)
    _check_version_time(message, outcome)
    return outcome


def _check_version_time(message: Hl7Message, outcome: Hl7Outcome) -> None:
    """A malformed EVN-2 or MSH-7 is reported (non-fatal) unless a fact time already did:
    it is the message's version time, which settles corrections (``version_time``), and
    without it the order of arrival decides in silence."""
    for segment, field in ((message.first("EVN"), 2), (message.msh, 7)):
        try:
            message.dtm(segment, field)
        except FeedError as error:
            if all(known.position != error.position for known in outcome.errors):
                outcome.errors.append(error)


def _loader(message: Hl7Message) -> Callable[[Context], None] | None:
    kind = message.message_type
    if message.message_code == "ADT":
        return _load_adt
    if kind == "ORU^R01":
        return _load_lab_report
    if kind in _ORDER_MESSAGES:
        return _load_order_message
    if kind == "RAS^O17":
        return load_administrations
    return None


def _load_adt(ctx: Context) -> None:
    load_stay(ctx)
    load_results(ctx, message_time_fallback=True)


def _load_lab_report(ctx: Context) -> None:
    load_results(ctx, message_time_fallback=False)


def _load_order_message(ctx: Context) -> None:
    load_orders(ctx)
    load_results(ctx, message_time_fallback=True)


def _check_charset(message: Hl7Message, raw: RawMessage, outcome: Hl7Outcome) -> None:
    """An MSH-18 we do not know is reported; the message was decoded by the UTF-8/Latin-1 guess."""
    charset = declared_charset(raw.content)
    if charset and charset_encoding(charset) is None:
        outcome.errors.append(
            message.error(
                "MSH-18",
                "a known character set (ASCII, 8859/1, 8859/15, UNICODE UTF-8); "
                f"decoded as {message.encoding}",
                charset,
            )
        )
