"""One decoded, validated HL7 v2 message with located field access.

``Hl7Message`` decodes a raw message, checks its framing and MSH (fatal ``FeedError`` when the
message cannot be read at all: no MSH, wrong separators, truncated, undecodable), cuts it into
segments and fields, and gives field access by segment and field number with positions such as
``PID-7`` or ``OBX[3]-5`` for every error.

Fields are split on the field separator up front and into repetitions, components and
subcomponents only when read. python-hl7's ``hl7.parse`` builds the whole tree of every
segment, about 4x slower over a whole ingest (``benchmarks/bench_hl7_ingest.py``); the tests
hold this reader to python-hl7's on the reference messages and on random ones
(``tests/test_hl7v2.py::test_field_access_agrees_with_python_hl7``).

This is the ``lazy`` reader, the default; ``vigie.connectors.hl7v2.hl7lib_reader`` is the
python-hl7 one (same checks and interface) and ``vigie.connectors.hl7v2.readers`` picks between
them.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from vigie.connectors.base import (
    UTC_RANGE,
    FeedError,
    ParseOutcome,
    RawMessage,
    TimeOutOfRange,
    as_utc,
)
from vigie.connectors.hl7v2.framing import (
    MLLP_END,
    MLLP_START,
    choose_encoding,
    declared_charset,
    locate_byte,
)
from vigie.connectors.labs import decimal_point

__all__ = [
    "Hl7Message",
    "Hl7Outcome",
    "SegmentRef",
    "parse_dtm",
    "parse_number",
]

DTM_FORMAT = "an HL7 date/time YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ]"
NUMBER_FORMAT = "a number (HL7 NM: optional sign, digits, decimal point)"
STANDARD_ENCODING_CHARS = "^~\\&"

# Segments that occur once per message: their positions read ``PID-7`` rather than ``PID[1]-7``.
_SINGLETONS = frozenset({"MSH", "EVN", "PID", "PD1", "PV1", "PV2", "MRG"})
_SEGMENT_BREAK = re.compile(rb"\r\n|\r|\n")
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
_DTM = re.compile(
    r"(?P<year>[0-9]{4})(?:(?P<month>[0-9]{2})(?:(?P<day>[0-9]{2})(?:(?P<hour>[0-9]{2})"
    r"(?:(?P<minute>[0-9]{2})(?:(?P<second>[0-9]{2})(?P<fraction>\.[0-9]{1,4})?)?)?)?)?)?"
    r"(?P<offset>[+-][0-9]{4})?\Z"
)
_ESCAPE_NAMES = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition"}
_JAVA_ESCAPED_MSH = "MSH|^~\\\\&|"


def parse_dtm(text: str) -> datetime:
    """An HL7 DTM parsed strictly; raises ``ValueError`` when malformed or impossible.

    Reduced precision takes the first instant (``2024`` is 2024-01-01 00:00). With a UTC
    offset the result is aware, without one naive (``Hl7Message.dtm`` turns both into the
    naive UTC of fact times).
    """
    match = _DTM.match(text)
    if match is None:
        raise ValueError(text)
    parts = match.groupdict()
    fraction = parts["fraction"]
    moment = datetime(
        int(parts["year"]),
        int(parts["month"] or 1),
        int(parts["day"] or 1),
        int(parts["hour"] or 0),
        int(parts["minute"] or 0),
        int(parts["second"] or 0),
        round(float(fraction) * 1_000_000) if fraction else 0,
    )
    offset = parts["offset"]
    if not offset:
        return moment
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if hours > 14 or minutes > 59:
        raise ValueError(text)
    sign = -1 if offset[0] == "-" else 1
    return moment.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))


def parse_number(text: str) -> float:
    """An HL7 NM value; raises ``ValueError`` when not one (no exponent, no decimal comma)."""
    number = decimal_point(text)
    if number is None:
        raise ValueError(text)
    return number


@dataclass(frozen=True)
class SegmentRef:
    """A segment and where it sits: ``occurrence`` among its kind, ``ordinal`` in the message."""

    name: str
    occurrence: int
    ordinal: int
    fields: list[str]  # fields[n] is field n (for MSH too: fields[1] is the separator)

    @property
    def label(self) -> str:
        if self.name in _SINGLETONS and self.occurrence == 1:
            return self.name
        return f"{self.name}[{self.occurrence}]"

    def position(self, field: int | None = None, component: int | None = None) -> str:
        if field is None:
            return self.label
        if component is None:
            return f"{self.label}-{field}"
        return f"{self.label}-{field}.{component}"


class Hl7Message:
    """A raw HL7 v2 message, decoded and checked; raises ``FeedError`` if unreadable."""

    def __init__(self, raw: RawMessage) -> None:
        self.document = raw.document
        self.message_id = raw.message_id
        self.notes: list[str] = []
        content = self._unframe(raw.content)
        self.encoding = raw.encoding or choose_encoding(content)
        text = self._decode(content)
        text = self._check_header(text)
        self.segments = self._parse(text)
        self._by_name: dict[str, list[SegmentRef]] = {}
        for segment in self.segments:
            self._by_name.setdefault(segment.name, []).append(segment)
        self.msh = self.segments[0]
        self._check_msh()
        self._check_complete(raw.content)

    # Errors ------------------------------------------------------------------------------

    def error(
        self,
        position: str | None,
        expected: str,
        found: str | None = None,
    ) -> FeedError:
        return FeedError(self.document, position, expected, message_id=self.message_id, found=found)

    def field_error(
        self, segment: SegmentRef, field: int, expected: str, component: int | None = None
    ) -> FeedError:
        found = self.raw_field(segment, field)
        return self.error(segment.position(field, component), expected, found)

    # Reading bytes -----------------------------------------------------------------------

    def _unframe(self, content: bytes) -> bytes:
        body = content.strip(b" \t\r\n")
        if body[:1] == bytes([MLLP_START]) and bytes([MLLP_END]) not in body:
            last = len(_SEGMENT_BREAK.split(body))
            raise self.error(
                f"segment {last} (end of message)",
                "the MLLP end block (0x1c) after the message: the message is truncated",
                found=body[-40:].decode("latin-1"),
            )
        head = body[:200]
        if head[:2] in (b"\xff\xfe", b"\xfe\xff") or head.count(0) * 4 >= len(head) > 0:
            raise self.error("byte 0", "text in UTF-8 or ISO 8859-1 (found UTF-16 or UTF-32 bytes)")
        body = body.replace(bytes([MLLP_START]), b"").replace(bytes([MLLP_END]), b"")
        nul = body.find(0)
        if nul >= 0:  # a stray NUL (UTF-16 text has one every other byte): no store holds it
            raise self.error(locate_byte(body, nul), "text without NUL byte (0x00)")
        return body

    def _decode(self, content: bytes) -> str:
        try:
            text = content.decode(self.encoding)
        except UnicodeDecodeError as error:
            charset = declared_charset(content)
            why = f"MSH-18 {charset!r}" if charset else "no MSH-18"
            raise self.error(
                locate_byte(content, error.start),
                f"text in {self.encoding} ({why})",
                found=content[max(error.start - 10, 0) : error.end + 10].decode("latin-1"),
            ) from None
        except LookupError:  # a codec name we do not know: cannot happen with our tables
            raise self.error("MSH-18", "a known character set", self.encoding) from None
        return text.lstrip("\ufeff \t\r\n")

    # Header and structure ----------------------------------------------------------------

    def _check_header(self, text: str) -> str:
        if not text.startswith("MSH"):
            hint = " (this looks like an HPRIM Santé file)" if text[:2] == "H|" else ""
            raise self.error(
                "segment 1", f"an HL7 v2 message starting with an MSH segment{hint}", text[:40]
            )
        if text.startswith(_JAVA_ESCAPED_MSH):
            # A doubled escape character, as left by copying from a Java or C string literal.
            text = "MSH|" + STANDARD_ENCODING_CHARS + text[len(_JAVA_ESCAPED_MSH) - 1 :]
            self.notes.append("MSH-2: read '^~\\\\&' as '^~\\&' (doubled escape character)")
        separator = text[3:4]
        if not separator or separator.isalnum() or separator.isspace():
            raise self.error("MSH-1", "a field separator such as '|'", text[:40])
        end = text.find(separator, 4)
        line_end = text.find("\r") if "\r" in text else text.find("\n")
        chars = text[4:end] if end >= 0 and (line_end < 0 or end < line_end) else ""
        if not _valid_encoding_chars(chars, separator):
            raise self.error(
                "MSH-2",
                "the encoding characters: component, repetition, escape, subcomponent "
                "(e.g. '^~\\&'), all different from each other and from the field separator",
                chars or text[:40],
            )
        self.separator = separator
        self.encoding_chars = chars
        self.component, self.repetition, self.escape, self.subcomponent = (
            chars[0],
            chars[1],
            chars[2],
            chars[3],
        )
        return text

    def _parse(self, text: str) -> list[SegmentRef]:
        lines = [line for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
        for number, line in enumerate(lines, start=1):
            if not _SEGMENT_ID.match(line[:3]) or (len(line) > 3 and line[3] != self.separator):
                raise self.error(
                    f"segment {number}",
                    f"a segment id of three capital letters or digits followed by "
                    f"{self.separator!r}",
                    line[:40],
                )
        return self._segments(lines)

    def _segments(self, lines: list[str]) -> list[SegmentRef]:
        """Checked segment lines cut into fields (the python-hl7 reader overrides this)."""
        counts: dict[str, int] = {}
        refs = []
        for ordinal, line in enumerate(lines, start=1):
            name = line[:3]
            counts[name] = counts.get(name, 0) + 1
            fields = line.split(self.separator)
            if name == "MSH":
                fields.insert(1, self.separator)
            refs.append(SegmentRef(name, counts[name], ordinal, fields))
        return refs

    def _check_complete(self, content: bytes) -> None:
        """A message cut short: its bytes end without a segment terminator (CR, LF, MLLP end
        block) inside an OBX that lacks OBX-11, the result status HL7 v2 requires.

        A terminated segment may omit trailing fields, and a complete OBX may end a file
        without a final CR: neither is truncation. ``split`` keeps each message's terminator.
        """
        last = self.segments[-1]
        if last.name != "OBX" or content.rstrip(b" \t")[-1:] in (b"\r", b"\n", b"\x1c"):
            return
        if len(last.fields) > 11 and last.fields[11].strip():
            return
        present = len(last.fields) - 1
        raise self.error(
            last.position(present),
            f"a complete OBX: the message ends inside OBX-{present} without a segment "
            "terminator, and OBX-11 (result status, required) is missing: the file is truncated",
            self.separator.join(last.fields)[-40:],
        )

    def _check_msh(self) -> None:
        msh = self.msh
        if len(msh.fields) <= 12 or not self.value(msh, 12):
            raise self.field_error(
                msh, 12, "the version id (e.g. 2.5): the MSH segment is incomplete or truncated"
            )
        self.message_code = self.value(msh, 9, 1)
        self.trigger = self.value(msh, 9, 2)
        # ACK may come bare, and an ADT's trigger may be in EVN-1 only (before v2.3.1).
        needs_trigger = self.message_code not in ("ACK", "ADT")
        if (
            not re.fullmatch(r"[A-Z0-9]{3}", self.message_code)
            or (needs_trigger and not self.trigger)
            or self.repetition_count(msh, 9) > 1
        ):
            hint = ""
            if self.encoding_chars[:4] != STANDARD_ENCODING_CHARS:
                hint = f" (encoding characters {self.encoding_chars!r} are not the usual '^~\\&')"
            raise self.field_error(msh, 9, f"a message type and trigger such as ORU^R01{hint}")
        self.version = self.value(msh, 12)

    # Field access -------------------------------------------------------------------------

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.trigger}" if self.trigger else self.message_code

    def first(self, name: str) -> SegmentRef | None:
        found = self._by_name.get(name)
        return found[0] if found else None

    def all(self, name: str) -> list[SegmentRef]:
        return self._by_name.get(name, [])

    def raw_field(self, segment: SegmentRef, field: int) -> str:
        fields = segment.fields
        return fields[field] if field < len(fields) else ""

    def repetition_count(self, segment: SegmentRef, field: int) -> int:
        text = self.raw_field(segment, field)
        return text.count(self.repetition) + 1 if text else 0

    def value(
        self,
        segment: SegmentRef | None,
        field: int,
        component: int = 1,
        subcomponent: int = 1,
        repetition: int = 1,
    ) -> str:
        """A field's text (unescaped, stripped); ``""`` when absent or HL7 null ``""``."""
        if segment is None or field >= len(segment.fields):
            return ""
        text = segment.fields[field]
        if not text:
            return ""
        if segment.name == "MSH" and field <= 2:
            return text
        # Inlined splitting, cut short with maxsplit: this is the connector's innermost loop.
        separator = self.repetition
        if separator in text:
            parts = text.split(separator, repetition)
            text = parts[repetition - 1] if len(parts) >= repetition else ""
        elif repetition != 1:
            return ""
        separator = self.component
        if separator in text:
            parts = text.split(separator, component)
            text = parts[component - 1] if len(parts) >= component else ""
        elif component != 1:
            return ""
        separator = self.subcomponent
        if separator in text:
            parts = text.split(separator, subcomponent)
            text = parts[subcomponent - 1] if len(parts) >= subcomponent else ""
        elif subcomponent != 1:
            return ""
        if self.escape in text:
            text = self.unescape(text)
        text = text.strip()
        return "" if text == '""' else text

    def unescape(self, text: str) -> str:
        """HL7 escape sequences: separators restored, ``.br`` as a new line, others dropped."""
        separators = {
            "F": self.separator,
            "S": self.encoding_chars[0],
            "R": self.encoding_chars[1],
            "E": self.escape,
            "T": self.encoding_chars[3],
        }
        pattern = re.escape(self.escape) + r"(.*?)" + re.escape(self.escape)

        def replace(match: re.Match[str]) -> str:
            code = match.group(1)
            if code in separators:
                return separators[code]
            if code == ".br":
                return "\n"
            if code.startswith("X") and re.fullmatch(r"X(?:[0-9A-Fa-f]{2})+", code):
                return bytes.fromhex(code[1:]).decode(self.encoding, "replace")
            return ""

        return re.sub(pattern, replace, text)

    def dtm(self, segment: SegmentRef | None, field: int, component: int = 1) -> datetime | None:
        """A DTM field as a fact time (naive UTC: an offset is applied, else the site's zone).

        None when empty; ``FeedError`` located when malformed.
        """
        moment = self._parse_dtm(segment, field, component)
        if moment is None or segment is None:
            return None
        try:
            return as_utc(moment)
        except TimeOutOfRange:
            position = segment.position(field, component if component > 1 else None)
            text = self.value(segment, field, component)
            raise self.error(position, f"{DTM_FORMAT} {UTC_RANGE}", text) from None

    def birth_date(self, segment: SegmentRef, field: int) -> date | None:
        """A birth date: the calendar date as written, never shifted by a time zone."""
        return self.calendar_date(segment, field)

    def calendar_date(
        self, segment: SegmentRef | None, field: int, component: int = 1
    ) -> date | None:
        """A day that is not an instant (birth date, estimated due date): the date as written.

        An offset, if any, is ignored: shifting to UTC could move the day. ``FeedError``
        located when malformed.
        """
        moment = self._parse_dtm(segment, field, component)
        return moment.date() if moment else None

    def entity_id(self, segment: SegmentRef | None, field: int) -> str:
        """An EI (order number, diagnosis id): the id, with its namespace when sent.

        EI.1 is unique only within the assigning application EI.2, so both make the key.
        """
        identifier = self.value(segment, field, 1)
        namespace = self.value(segment, field, 2)
        return f"{identifier}^{namespace}" if identifier and namespace else identifier

    def _parse_dtm(self, segment: SegmentRef | None, field: int, component: int) -> datetime | None:
        text = self.value(segment, field, component)
        if not text or segment is None:
            return None
        try:
            return parse_dtm(text)
        except ValueError:
            position = segment.position(field, component if component > 1 else None)
            raise self.error(position, DTM_FORMAT, text) from None


def _valid_encoding_chars(chars: str, separator: str) -> bool:
    """MSH-2: four (five from v2.7, with truncation) distinct non-alphanumeric characters."""
    if len(chars) not in (4, 5) or len(set(chars)) != len(chars) or separator in chars:
        return False
    return not any(char.isalnum() or char.isspace() for char in chars)


@dataclass
class Hl7Outcome(ParseOutcome):
    """A ``ParseOutcome`` that also says what the message was and what was left aside.

    ``ignored`` is set for message types that carry nothing for the engine (SIU, MDM, BAR...):
    no facts, no errors — ingest records them as ``ignored``, never as dead letters. ``notes``
    are informational (an OBX without a value, an image OBX skipped, a repaired MSH-2).
    """

    message_type: str = ""
    ignored: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
