"""HPRIM Santé 2.x lab results (H/P/OBR/OBX/C/A/L records) → Patient and LabResult facts
(an Observation when the code maps to one, such as the weight a lab sends for a clearance).

An HPRIM file holds one message per H..L group. The header fixes the delimiters: in
``H|~^\\&`` the character after ``H`` separates fields, then come the component separator
(``~``), the repeat separator (``^``), the escape character and the sub-component separator —
the 2nd and 3rd are swapped compared with HL7 v2, so they are always read from the header.
Lines longer than 220 characters go on in an ``A|`` record whose text is glued, as is, to the
end of the previous line (``...~Cliniq`` + ``A|ue HP~L|...`` reads ``...~Clinique HP~L|...``).

Field numbers follow the HPRIM Santé specification, where the record type is field 1: the
patient id is ``P`` field 3, the result value ``OBX`` field 6, its unit field 7, the reference
range field 8, the abnormal flag field 9, the observation time field 15. Positions read
``line 7, OBX[2] field 6`` (document line, 2nd OBX of the message).

Lab codes are local to each laboratory: they map to concepts only through the terminology
tables (``lab_codes.csv`` or a site's ``site_lab_codes.csv``, system ``HPRIM`` then ``LOCAL``),
never by label. Values, units, ranges and flags are normalised by ``vigie.connectors.labs`` like
every feed's (a decimal comma or point; an unmapped code still gives a LabResult — concept
``None``, value kept, and an ``unmapped_code`` flag); an unreadable or reversed reference range is
reported and left out. A qualitative result (text ``positif``/``négatif``, a CE value
``code~label~system``, or only the flag ``POS``/``NEG``) is read as ``positive``/``negative``.

Message identity and versions (issue 7). An H..L message is named after what it reports on,
scoped by its sender: ``<H field 5>|<patient>:<request>[,...]``, e.g.
``PO|398:idechantillo/20428E9575`` — the sender's id (H field 5, ``PO~LABM``: id then name, as
in the ASTM E1394 header HPRIM Santé derives from: 3 file name, 5 sender, 7 message type,
10 receiver, 12 processing mode, 13 version, 14 date and time), then each patient (P field 3)
with the numbers of each of his requests (OBR fields 3 and 4, the key of the lab facts' ids).
A laboratory sending a request's results again (completed, corrected) sends a new version of
the same message: its results replace the earlier ones'. A message with a request without
numbers, or without a sender, has no such identity and is named by a content hash (its facts
still meet earlier ones by fact id). The version time is H field 14 (``201204292059``). The
shared data's README notes only HPRIM's delimiters; the HPRIM Santé 2.x text is not among the
reference data: the OBX record mirrors HL7 v2's (field N here is HL7's OBX-(N-1)), so the
result status, field 12, is read with HL7 v2's table 0085 (to be checked against that text):
``D`` (deleted) and ``W`` (wrong) withdraw the result named by its code and request — a
``Retraction``, not a fact; the two reference messages only use ``F`` (final).

>>> raw = next(split("demo.hpr", b"H|~^\\\\&|F.HPR||LAB||ORU|||ME||P|H2.2~C|202401020800\\r"
...     b"P|1|P42|||DOE~JOHN||19500101|F\\rOBR|1||S1||||202401020700\\r"
...     b"OBX|1|NM|K~Potassium~L||5,9|mmol/l|3.5 - 5|H|||F|||202401020750\\rL|1\\r"))
>>> [fact.kind for fact in parse(raw).facts]
['patient', 'lab']
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from vigie.connectors.base import (
    UTC_RANGE,
    FeedError,
    ParseOutcome,
    RawMessage,
    TimeOutOfRange,
    as_utc,
)
from vigie.connectors.labs import (
    CodeMatch,
    Reading,
    ReferenceRange,
    decimal_point_or_comma,
    match_code,
    normalise,
    parse_reference_range,
    read_value,
)
from vigie.facts import (
    AnyFact,
    Coding,
    LabResult,
    Observation,
    Patient,
    Retraction,
    Sex,
    Source,
)
from vigie.terminology import Terminology, default_terminology, normalise_system

__all__ = [
    "Delimiters",
    "Record",
    "feed",
    "parse",
    "parse_message",
    "read_records",
    "sniff",
    "split",
]

feed = "hprim"

_HEADER = re.compile(rb"^(?:\xef\xbb\xbf)?H([^A-Za-z0-9\s])([^A-Za-z0-9\s]{4})\1")
_HEADER_LINE = re.compile(rb"^(?:\xef\xbb\xbf)?H[^A-Za-z0-9\s]")
_EOL = re.compile(rb"\r\n|\r|\n")
_TEXT_EOL = re.compile(r"\r\n|\r|\n")
_POSITION_LINE = re.compile(r"^line (\d+)")
# C0 controls other than tab: a UTF-16 or binary file decodes as Latin-1 but is not text.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x19\x1b-\x1f]")
_DATE_FORMATS = {8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
_SEXES = {"M": Sex.MALE, "F": Sex.FEMALE, "U": Sex.UNKNOWN, "I": Sex.UNKNOWN, "O": Sex.OTHER}
_KNOWN_RECORDS = frozenset({"H", "P", "OBR", "OBX", "C", "L", "A"})
# Records of HPRIM Santé that carry no clinical fact for us (invoicing, acts, payments).
_IGNORED_RECORDS = frozenset({"FAC", "ACT", "REG", "AP", "AC"})
_LAB_SYSTEMS = ("HPRIM", "LOCAL")
# Result status (OBX field 12, where HL7 v2 has OBX-11): D deleted, W wrong (e.g. another
# patient's); see the module's docstring.
_WITHDRAWN = frozenset({"D", "W"})
_TEXT_ENCODINGS = ("utf-8", "latin-1")
_LONGEST_NAMED = 200  # characters of request names in a message id (the store holds 512)


# Document → raw messages -------------------------------------------------------------------


def sniff(head: bytes, name: str) -> bool:
    """An HPRIM document starts with ``H`` and its five delimiters, e.g. ``H|~^\\&|``."""
    return bool(_HEADER.match(head[:4096].lstrip(b" \t\r\n")))


def split(document: str, content: bytes) -> Iterator[RawMessage]:
    """One raw message per H..L group; text before the first H is a message of its own; an
    empty document is one message (``parse`` rejects it)."""
    starts = [
        (offset, number)
        for number, (offset, line) in enumerate(_byte_lines(content), 1)
        if _HEADER_LINE.match(line)
    ]
    if not starts or starts[0][0] > 0:
        starts.insert(0, (0, 1))
    bounds = [offset for offset, _ in starts[1:]] + [len(content)]
    chunks = [(content[b:e], line) for (b, line), e in zip(starts, bounds, strict=True)]
    # An empty (or blank) document is one message too, so that parse rejects it, located.
    for chunk, line in [c for c in chunks if c[0].strip()] or [(content, 1)]:
        yield RawMessage(feed, document, chunk, _message_id(chunk, line), position=f"line {line}")


def _message_id(chunk: bytes, line: int) -> str:
    """``<sender>|<patient>:<request>[,...]`` when every request of the message has numbers
    (see the module's docstring), else a content hash."""
    digest = hashlib.sha256(chunk).hexdigest()[:16]
    try:
        identity = _identity(RawMessage(feed, "", chunk, digest, position=f"line {line}"))
    except FeedError:  # not readable as HPRIM: parse will say why
        return digest
    return identity or digest


def _identity(raw: RawMessage) -> str:
    lines = _physical_lines(raw, _decode(raw))
    if not lines or not lines[0][1].startswith("H"):
        return ""
    delimiters = _delimiters(raw, lines[0][1], lines[0][0])
    records = _join_records(delimiters.field, lines, lambda *problem: None)
    sender = [c.strip() for c in _components(delimiters, records[0], 5) if c.strip()]
    requests, patient = set(), ""
    for record in records[1:]:
        if record.kind == "P":
            patient = _components(delimiters, record, 3)[0].strip()
        elif record.kind == "OBR":
            key = _request_key(delimiters, record)
            if not (patient and key):
                return ""
            requests.add(f"{patient}:{key}")
    if not (sender and requests):
        return ""
    named = ",".join(sorted(requests))
    if len(named) > _LONGEST_NAMED:  # many requests: their digest keeps the id storable
        named = "requests:" + hashlib.sha256(named.encode()).hexdigest()[:16]
    return f"{sender[0]}|{named}"


def _byte_lines(content: bytes) -> Iterator[tuple[int, bytes]]:
    """(byte offset, line) for each line, whatever the line ending (CR, LF or CRLF)."""
    position = 0
    while position < len(content):
        match = _EOL.search(content, position)
        end, following = (match.start(), match.end()) if match else (len(content),) * 2
        yield position, content[position:end]
        position = following


# Raw message → records ---------------------------------------------------------------------


@dataclass(frozen=True)
class Delimiters:
    field: str
    component: str
    repeat: str
    escape: str
    subcomponent: str

    def unescape(self, text: str) -> str:
        """Resolve the HL7-style escapes (``\\F\\``, ``\\S\\``...) written with our escape."""
        if self.escape not in text:
            return text
        e = self.escape
        table = {
            "F": self.field,
            "S": self.component,
            "R": self.repeat,
            "E": e,
            "T": self.subcomponent,
        }
        pattern = re.escape(e) + "([FSRET])" + re.escape(e)
        return re.sub(pattern, lambda m: table[m.group(1)], text)


@dataclass(frozen=True)
class Record:
    """One logical record (continuations joined), fields numbered as in the HPRIM spec."""

    kind: str
    fields: tuple[str, ...]
    line: int
    index: int

    def field(self, number: int) -> str:
        return self.fields[number - 1] if 0 < number <= len(self.fields) else ""

    def where(self, number: int | None = None) -> str:
        name = f"line {self.line}, {self.kind}[{self.index}]"
        return name if number is None else f"{name} field {number}"


@dataclass
class _Message:
    """What parsing one message needs to share: where it is, its delimiters, what it made."""

    raw: RawMessage
    delimiters: Delimiters
    terminology: Terminology
    outcome: ParseOutcome = field(default_factory=ParseOutcome)
    patient: Patient | None = None
    request: Record | None = None
    lab_ids: set[str] = field(default_factory=set)

    def error(self, where: str | None, expected: str, found: str | None = None) -> FeedError:
        return FeedError(
            self.raw.document, where, expected, message_id=self.raw.message_id, found=found
        )

    def problem(self, where: str | None, expected: str, found: str | None = None) -> None:
        self.outcome.errors.append(self.error(where, expected, found))

    def source(self, record: Record, number: int | None = None) -> Source:
        return Source(
            feed=feed,
            document=self.raw.document,
            message_id=self.raw.message_id,
            position=record.where(number),
            version_time=self.outcome.version_time,
        )

    def components(self, record: Record, number: int) -> list[str]:
        """Components of the first repetition of a field, unescaped."""
        return _components(self.delimiters, record, number)

    def first(self, record: Record, number: int) -> str:
        return self.components(record, number)[0].strip()


def _decode(raw: RawMessage) -> str:
    text = None
    for encoding in _TEXT_ENCODINGS:
        try:
            text = raw.content.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    assert text is not None  # Latin-1 decodes any byte string
    text = text.lstrip("\ufeff").rstrip("\x1a")
    control = _CONTROL.search(text)
    if control:
        line = _first_line(raw) + len(_TEXT_EOL.findall(text[: control.start()]))
        raise FeedError(
            raw.document,
            f"line {line}",
            "HPRIM text in UTF-8 or Latin-1 "
            f"(found control character U+{ord(control.group()):04X}: UTF-16 or "
            "binary content?)",
            message_id=raw.message_id,
        )
    return text


def _first_line(raw: RawMessage) -> int:
    match = _POSITION_LINE.match(raw.position or "")
    return int(match.group(1)) if match else 1


def _delimiters(raw: RawMessage, line: str, number: int) -> Delimiters:
    match = _HEADER.match(line.encode("latin-1", "replace"))
    if not match or len(set(line[1:6])) != 5:
        raise FeedError(
            raw.document,
            f"line {number}, H field 2",
            "an H record starting with its five distinct delimiters, e.g. "
            "'H|~^\\&' (field, component, repeat, escape, sub-component)",
            message_id=raw.message_id,
            found=line[:12],
        )
    return Delimiters(*line[1:6])


def _physical_lines(raw: RawMessage, text: str) -> list[tuple[int, str]]:
    first = _first_line(raw)
    return [(first + i, line) for i, line in enumerate(_TEXT_EOL.split(text)) if line.strip()]


def read_records(raw: RawMessage) -> list[Record]:
    """The logical records of a raw message (continuations joined), for inspection."""
    lines = _physical_lines(raw, _decode(raw))
    if not lines:
        return []
    number, header = lines[0]
    message = _Message(raw, _delimiters(raw, header, number), default_terminology())
    return _records(message, lines)


def _components(delimiters: Delimiters, record: Record, number: int) -> list[str]:
    first = record.field(number).split(delimiters.repeat)[0]
    return [delimiters.unescape(c) for c in first.split(delimiters.component)]


def _records(message: _Message, lines: list[tuple[int, str]]) -> list[Record]:
    """Logical records: each ``A`` continuation is glued to the line before it."""
    return _join_records(message.delimiters.field, lines, message.problem)


def _join_records(
    fs: str, lines: list[tuple[int, str]], problem: Callable[[str, str], None]
) -> list[Record]:
    joined: list[tuple[int, str]] = []
    for number, line in lines:
        if line.startswith("A" + fs):
            if not joined:
                problem(f"line {number}", "an A continuation after another record")
                continue
            start, previous = joined[-1]
            joined[-1] = (start, previous + line[2:])
        else:
            joined.append((number, line))
    counts: dict[str, int] = {}
    records = []
    for number, line in joined:
        fields = tuple(line.split(fs))
        kind = fields[0].strip().upper()
        counts[kind] = counts.get(kind, 0) + 1
        records.append(Record(kind, fields, number, counts[kind]))
    return records


# Records → facts ---------------------------------------------------------------------------


def parse(raw: RawMessage) -> ParseOutcome:
    """Facts of one H..L message; raises ``FeedError`` when the header is unusable."""
    return parse_message(raw, default_terminology())


def parse_message(raw: RawMessage, terminology: Terminology) -> ParseOutcome:
    """``parse`` with an explicit terminology (a site's own mapping tables)."""
    lines = _physical_lines(raw, _decode(raw))
    if not lines:
        raise FeedError(
            raw.document,
            raw.position,
            "an HPRIM message (H record)",
            message_id=raw.message_id,
            found="",
        )
    number, header = lines[0]
    if not header.startswith("H"):
        raise FeedError(
            raw.document,
            f"line {number}",
            "an H header record first",
            message_id=raw.message_id,
            found=header[:20],
        )
    message = _Message(raw, _delimiters(raw, header, number), terminology)
    records = _records(message, lines)
    _check_header(message, records[0])
    ended = False
    for record in records[1:]:
        if ended:
            message.problem(
                record.where(), "nothing after the L record ending the message", found=record.kind
            )
        ended = ended or record.kind == "L"
        _read_record(message, record)
    if not ended:
        message.problem(
            f"line {records[-1].line}",
            "an L record ending the message "
            "(the message looks truncated; what came before it was loaded)",
        )
    message.outcome.facts = _unique(message.outcome.facts)
    return message.outcome


def _unique(facts: list[AnyFact]) -> list[AnyFact]:
    """One fact per (kind, id): a patient repeated in a message keeps its first P record."""
    unique: dict[tuple[str, str], AnyFact] = {}
    for fact in facts:
        unique.setdefault((fact.kind, fact.fact_id), fact)
    return list(unique.values())


def _check_header(message: _Message, header: Record) -> None:
    version = message.first(header, 13)
    if version and not version.upper().startswith("H2"):
        message.problem(header.where(13), "HPRIM Santé version H2.x", found=version)
    stamp = header.field(14).strip()
    when = _datetime(message, header, 14, stamp) if stamp else None
    try:
        message.outcome.version_time = as_utc(when) if when else None
    except TimeOutOfRange:
        message.problem(header.where(14), f"a date {UTC_RANGE}", found=stamp)


def _read_record(message: _Message, record: Record) -> None:
    if record.kind == "P":
        _read_patient(message, record)
    elif record.kind == "OBR":
        message.request = record
    elif record.kind == "OBX":
        _read_result(message, record)
    elif record.kind == "H":
        message.problem(record.where(), "one H header per message")
    elif record.kind not in _KNOWN_RECORDS | _IGNORED_RECORDS:
        message.problem(
            record.where(1), "a record type H, P, OBR, OBX, C, A or L", found=record.kind
        )


def _read_patient(message: _Message, record: Record) -> None:
    message.request = None
    patient_id = message.first(record, 3)
    if not patient_id:
        message.patient = None
        message.problem(
            record.where(3), "a patient identifier; this patient's results are not loaded"
        )
        return
    born_text = message.first(record, 8)
    born = _datetime(message, record, 8, born_text) if born_text else None
    sex_text = message.first(record, 9).upper()
    sex = _SEXES.get(sex_text, Sex.UNKNOWN)
    if sex_text and sex_text not in _SEXES:
        message.problem(record.where(9), "a sex M, F or U", found=sex_text)
    message.patient = Patient(
        fact_id=f"hprim:patient:{patient_id}",
        patient_id=patient_id,
        source=message.source(record, 8),  # the birth date, what age evidence comes from
        birth_date=born.date() if born else None,
        sex=sex,
    )
    message.outcome.facts.append(message.patient)


def _read_result(message: _Message, record: Record) -> None:
    if message.patient is None:
        message.problem(record.where(), "a P record (with a patient id) before the results")
        return
    try:
        if message.first(record, 12).upper() in _WITHDRAWN:
            message.outcome.retractions.append(_retraction(message, message.patient, record))
        else:
            message.outcome.facts.append(_lab_result(message, message.patient, record))
    except FeedError as error:
        message.outcome.errors.append(error)
    except TimeOutOfRange:  # field 15, or the request's sampling time standing for it
        message.problem(record.where(15), f"an observation time {UTC_RANGE}")


def _result_code(message: _Message, record: Record) -> tuple[str, CodeMatch]:
    """OBX field 4 (code~label~system) and what the terminology files it under."""
    code, label, hint = (part.strip() for part in [*message.components(record, 4), "", ""][:3])
    if not code:
        raise message.error(record.where(4), "a result code (code~label~system)")
    return code, match_code(message.terminology, _codings(hint, code, label or None))


def _retraction(message: _Message, patient: Patient, record: Record) -> Retraction:
    """A result its laboratory withdraws (status ``D`` or ``W``): the fact that its code and
    request name, of the kind its code files it under."""
    code, match = _result_code(message, record)
    kind = normalise(message.terminology, match, Reading(None, None, None)).model.kind
    return Retraction(
        kind=kind,
        fact_id=_lab_id(message, patient, code),
        patient_id=patient.patient_id,
        source=message.source(record),
    )


def _lab_result(message: _Message, patient: Patient, record: Record) -> LabResult | Observation:
    code, match = _result_code(message, record)
    time = _result_time(message, record)
    measurement = normalise(
        message.terminology,
        match,
        _reading(message, record),
        reference=_reference_range(message, record),
        abnormal_flag=message.first(record, 9),
    )
    fields = measurement.fields() | {
        "fact_id": _lab_id(message, patient, code),
        "patient_id": patient.patient_id,
        "source": message.source(record),
        "code": match.coding,
        "time": time,
    }
    return measurement.model(**fields)


def _codings(hint: str, code: str, label: str | None) -> list[Coding]:
    """The code in the system its third component names, else as ``HPRIM`` then ``LOCAL``."""
    short = normalise_system(hint) if hint and hint.upper() != "L" else None
    systems = (short,) if short else _LAB_SYSTEMS
    return [Coding(system=system, code=code, display=label) for system in systems]


def _reading(message: _Message, record: Record) -> Reading:
    """Field 6 (a number when the value type, field 3, is NM or empty) and its unit, field 7;
    a coded (CE) value ``code~label~system`` shows as its label, else its code."""
    text = message.delimiters.unescape(record.field(6)).strip()
    unit = message.first(record, 7)
    value_type = message.first(record, 3).upper()
    if value_type in ("NM", ""):
        return read_value(text, unit, decimal_point_or_comma)
    if value_type == "CE":
        answer = _coded_answer(message, record)
        if answer:
            shown = answer[0].display or answer[0].code
            return Reading(shown, None, unit or None, codes=answer)
    return Reading(text or None, None, unit or None)


def _coded_answer(message: _Message, record: Record) -> tuple[Coding, ...]:
    """A coded (CE) value, field 6 as code~label~system."""
    code, label, system = (p.strip() for p in [*message.components(record, 6), "", ""][:3])
    if not code:
        return ()
    return (Coding(system=system or None, code=code, display=label or None),)


def _result_time(message: _Message, record: Record) -> datetime:
    """OBX field 15, else the sampling time of the request (OBR field 8)."""
    text = message.first(record, 15)
    if text:
        when = _parse_datetime(text)
        if when is None:
            raise message.error(
                record.where(15),
                "a date YYYYMMDD[HHMM[SS]] (a result without its time is not loaded)",
                found=text,
            )
        return as_utc(when)
    request = message.request
    sampled = message.first(request, 8) if request else ""
    when = _datetime(message, request, 8, sampled) if request and sampled else None
    if when is None:
        raise message.error(
            record.where(15),
            "an observation time (OBX field 15, or the sampling time in OBR field 8)",
        )
    return as_utc(when)


def _lab_id(message: _Message, patient: Patient, code: str) -> str:
    """Stable across re-sent results: patient, request (specimen/order numbers) and code."""
    request = message.request
    request_key = _request_key(message.delimiters, request) if request else ""
    if not request_key:
        request_key = f"{message.raw.message_id}-OBR{request.index if request else 0}"
    fact_id = f"hprim:{patient.patient_id}:{request_key}:{code}"
    repeat = 1
    while fact_id in message.lab_ids:
        repeat += 1
        fact_id = f"hprim:{patient.patient_id}:{request_key}:{code}#{repeat}"
    message.lab_ids.add(fact_id)
    return fact_id


def _request_key(delimiters: Delimiters, request: Record) -> str:
    """The request's numbers, OBR fields 3 and 4 (specimen and request, as the requester and
    the laboratory number them), e.g. ``idechantillo/20428E9575``."""
    numbers = [c.strip() for n in (3, 4) for c in _components(delimiters, request, n)]
    return "/".join(n for n in numbers if n)


def _reference_range(message: _Message, record: Record) -> ReferenceRange | None:
    """Field 8: ``10 - 40``, ``3,5-5,0``, ``< 5`` or ``>= 60``; anything else is reported."""
    text = message.first(record, 8)
    if not text:
        return None
    reference = parse_reference_range(text)
    if reference is None:
        message.problem(
            record.where(8),
            "a reference range such as '10 - 40' (low <= high), '< 5' or '> 60'",
            found=text,
        )
    return reference


def _datetime(message: _Message, record: Record, number: int, text: str) -> datetime | None:
    """YYYYMMDD[HH[MM[SS]]]; a bad value is reported (non-fatal) and read as unknown."""
    value = _parse_datetime(text)
    if value is None:
        message.problem(record.where(number), "a date YYYYMMDD[HHMM[SS]]", found=text)
    return value


def _parse_datetime(text: str) -> datetime | None:
    pattern = _DATE_FORMATS.get(len(text))
    if pattern is None or not text.isdigit():
        return None
    try:
        return datetime.strptime(text, pattern)
    except ValueError:
        return None
