"""HL7 v2 → Patient, Stay, LabResult, Observation and Pregnancy facts (PID, PV1, OBR/OBX).

Choices, so that the same message always gives the same facts:

- ``patient_id`` is the first non-empty identifier (CX.1) of PID-3, whatever its type code
  (MR, PI, SS...); PID-2 (the v2.3 external id) is used only when PID-3 is empty. A message
  with several PIDs (an ORU_R01 may report on several patients) gives each fact to the last
  PID before its segment. Every message with a PID gives a Patient (fact id per patient id).
  Its source position is PID-7, the birth date: the one value of a Patient an alert quotes
  as evidence (the input of age, clearance and eGFR); the identifier PID-3 is its key.
- Times: HL7 DTM parsed strictly, then made naive UTC like every fact time: a UTC offset is
  applied, a time without one is read in the site's zone (``vigie.connectors.base.as_utc``). Birth
  dates are kept as written.
- Stays come from ADT messages only (an order or result message's PV1 gives ``stay_id`` to
  orders, but a Stay from it would overwrite the ADT's admission data with less).
  ``Stay.stay_id`` is the visit number PV1-19 (CX.1), else ``<patient>:<PV1-44 admit time>``,
  else ``<patient>:<message id>``; its fact id is stable across A01/A02/A03/A08 so that a
  transfer or a discharge replaces the stay rather than adding one.
- Every OBX becomes a fact: an ``Observation`` when its code maps to an observation concept
  (weight, height, QTc), else a ``LabResult``. The value is converted to the concept's
  canonical unit; an unknown unit, a non-numeric value or an unmapped code is kept and flagged.
  A qualitative result (a CE/CWE answer such as ``10828004^Positive^SCT``, ST text such as
  ``Positif``, or only an OBX-8 interpretation ``POS``/``NEG``) is read as ``positive`` or
  ``negative`` by ``vigie.connectors.labs``.
- A result's fact id does not depend on the message: it is the patient, the order's filler
  number (OBR-3, else the placer number OBR-2), the OBX-3 code and the OBX-4 sub-id; without an
  order number the observation time stands in for the order. A corrected result (OBX-11 ``C``)
  sent in a new message therefore replaces the original. The message id stays in ``source``.
- Pregnancy OBX (LOINC 82810-3 / 11449-6 status with a coded answer; 11778-8, 11779-6, 11780-4
  estimated due date) give a ``Pregnancy``, never a lab result. A due date joins the status
  OBX of the same patient before it (else after it); a due date alone says the patient is
  pregnant. Due dates are calendar dates as written, like birth dates.

DG1 and AL1 are read in ``hl7v2_history``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any, cast

from pydantic import ValidationError

from vigie.connectors.base import FeedError
from vigie.connectors.hl7v2.message import (
    NUMBER_FORMAT,
    Hl7Message,
    Hl7Outcome,
    SegmentRef,
    parse_number,
)
from vigie.connectors.labs import (
    FlagPositions,
    Reading,
    decimal_point,
    match_code,
    normalise,
    parse_reference_range,
    read_value,
)
from vigie.facts import (
    AnyFact,
    Coding,
    Fact,
    Flag,
    FlagCode,
    Patient,
    Pregnancy,
    Retraction,
    Sex,
    Source,
    Stay,
)
from vigie.terminology import Terminology, normalise_system

__all__ = [
    "FEED",
    "Context",
    "load_patients",
    "load_results",
    "load_stay",
    "order_number",
    "patient_ids_of",
    "result_key",
    "time_or_error",
    "visit_number",
]

FEED = "hl7v2"

# HL7 table 0001 plus the unambiguous words some systems send instead of the code.
_SEX = {
    "F": Sex.FEMALE,
    "M": Sex.MALE,
    "O": Sex.OTHER,
    "A": Sex.OTHER,
    "X": Sex.OTHER,
    "U": Sex.UNKNOWN,
    "N": Sex.UNKNOWN,
    "FEMALE": Sex.FEMALE,
    "MALE": Sex.MALE,
    "FEMININ": Sex.FEMALE,
    "FÉMININ": Sex.FEMALE,
    "MASCULIN": Sex.MALE,
    "OTHER": Sex.OTHER,
    "UNKNOWN": Sex.UNKNOWN,
}

# ADT trigger events -> stay status; others are read from PV1 (discharge time or not).
_STAY_STATUS = {
    "A01": "in-progress",
    "A02": "in-progress",
    "A03": "finished",
    "A04": "in-progress",
    "A05": "planned",
    "A06": "in-progress",
    "A07": "in-progress",
    "A11": "cancelled",
    "A12": "in-progress",
    "A13": "in-progress",
    "A14": "planned",
    "A27": "cancelled",
    "A38": "cancelled",
}

# OBX-11 result statuses (HL7 table 0085) that withdraw a result sent before: D deletes the OBX
# record, W posts the original as wrong (e.g. sent for the wrong patient). X (cannot be obtained)
# carries no result either, but withdraws nothing.
_RETRACTING = frozenset({"D", "W"})
_WITHDRAWN = frozenset({"X"})
# Encapsulated data and references (images, PDFs, URLs) are not results the engine can use.
_BINARY_TYPES = frozenset({"ED", "RP"})
_CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF"})
# Report text lines often come without OBX-3: nothing to map them to, so not an error.
_NARRATIVE_TYPES = frozenset({"TX", "FT"})

# A new patient or a new order ends the OBR an OBX belongs to.
_ORDER_GROUP_STARTS = frozenset({"PID", "ORC"})
_PREGNANCY_STATUS_CODES = frozenset({"82810-3", "11449-6"})
# Estimated due date: by any method, from the last menstrual period, from the ovulation date.
_DUE_DATE_CODES = frozenset({"11778-8", "11779-6", "11780-4"})
_PREGNANCY_ANSWERS = {
    "LA15173-0": "pregnant",
    "LA26683-5": "not-pregnant",
    "LA4489-6": "unknown",
    "77386006": "pregnant",  # SNOMED CT Pregnant
    "60001007": "not-pregnant",  # SNOMED CT Not pregnant
    "261665006": "unknown",  # SNOMED CT Unknown
}


@dataclass
class Context:
    """What the fact builders of one message share."""

    message: Hl7Message
    terminology: Terminology
    outcome: Hl7Outcome
    patients: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    used_ids: set[str] = dataclasses.field(default_factory=set)

    def patient_for(self, segment: SegmentRef) -> str:
        """The patient a segment belongs to: the last PID before it (ORU_R01 may carry several)."""
        owner = self.patients[0][1]
        for ordinal, patient_id in self.patients:
            if ordinal > segment.ordinal:
                break
            owner = patient_id
        return owner

    def source(self, position: str) -> Source:
        return Source(
            feed=FEED,
            document=self.message.document,
            message_id=self.message.message_id,
            position=position,
            version_time=self.outcome.version_time,
        )

    def fact_id(self, *parts: str) -> str:
        return ":".join((FEED, *parts))

    def unique_id(self, fact_id: str, segment: SegmentRef) -> str:
        """``fact_id``, or when this message already gave it (two OBX with one code and sub-id
        under one order, a diagnosis sent twice) the id told apart by the segment: both load."""
        if fact_id in self.used_ids:
            fact_id = f"{fact_id}:{segment.label}"
        self.used_ids.add(fact_id)
        return fact_id

    def add(self, cls: type[Fact], owner: SegmentRef, position: str, **fields: Any) -> None:
        """Build a fact and keep it; a validation failure becomes a located non-fatal error.

        ``owner`` is the segment the fact comes from; it tells which PID the fact belongs to.
        """
        try:
            patient_id = self.patient_for(owner)
            fact = cls(patient_id=patient_id, source=self.source(position), **fields)
        except ValidationError as error:
            detail = error.errors()[0]
            where = ".".join(str(part) for part in detail["loc"])
            self.outcome.errors.append(
                self.message.error(position, f"a valid {cls.kind} ({where}: {detail['msg']})")
            )
            return
        self.outcome.facts.append(cast(AnyFact, fact))

    def fail(self, error: FeedError) -> None:
        self.outcome.errors.append(error)

    def note(self, text: str) -> None:
        self.outcome.notes.append(text)


# Patient and stay ----------------------------------------------------------------------------


def patient_ids_of(message: Hl7Message) -> list[tuple[int, str]]:
    """(ordinal, patient id) of every PID; fatal ``FeedError`` when one has no identifier.

    The id is PID-3's first non-empty identifier, else PID-2. A PID without either is fatal:
    the facts after it could not be given to anyone.
    """
    pids = message.all("PID")
    if not pids:
        raise message.error("PID", "a PID segment (patient identification)")
    return [(pid.ordinal, _patient_id(message, pid)) for pid in pids]


def _patient_id(message: Hl7Message, pid: SegmentRef) -> str:
    for repetition in range(1, message.repetition_count(pid, 3) + 1):
        identifier = message.value(pid, 3, 1, repetition=repetition)
        if identifier:
            return identifier
    legacy = message.value(pid, 2)
    if legacy:
        return legacy
    raise message.field_error(pid, 3, "a patient identifier (PID-3, CX.1)")


def load_patients(ctx: Context) -> None:
    """A Patient per PID (one per patient id: a repeated PID adds nothing)."""
    seen: set[str] = set()
    for pid in ctx.message.all("PID"):
        patient_id = ctx.patient_for(pid)
        if patient_id not in seen:
            seen.add(patient_id)
            _load_patient(ctx, pid, patient_id)


def _load_patient(ctx: Context, pid: SegmentRef, patient_id: str) -> None:
    birth_date = None
    try:
        birth_date = ctx.message.birth_date(pid, 7)
    except FeedError as error:
        ctx.fail(error)
    ctx.add(
        Patient,
        pid,
        pid.position(7),  # the birth date, what an alert's age evidence comes from
        fact_id=ctx.fact_id("patient", patient_id),
        birth_date=birth_date,
        sex=_sex(ctx, pid),
    )


def _sex(ctx: Context, pid: SegmentRef) -> Sex:
    text = ctx.message.value(pid, 8)
    if not text:
        return Sex.UNKNOWN
    sex = _SEX.get(text.upper())
    if sex is None:
        ctx.fail(
            ctx.message.field_error(pid, 8, "an administrative sex (HL7 table 0001: F, M, O, U)")
        )
        return Sex.UNKNOWN
    return sex


def visit_number(message: Hl7Message) -> str | None:
    """PV1-19 visit number (CX.1), the stay id orders and stays share."""
    return message.value(message.first("PV1"), 19) or None


def load_stay(ctx: Context) -> None:
    """A Stay from PV1 (ADT messages): ward, bed, admit and discharge times, status."""
    message = ctx.message
    pv1 = message.first("PV1")
    if pv1 is None:
        return
    admit = time_or_error(ctx, pv1, 44)
    discharge = time_or_error(ctx, pv1, 45)
    trigger = message.trigger or message.value(message.first("EVN"), 1)
    if trigger == "A03" and discharge is None:
        discharge = _event_time(ctx)
    if trigger == "A13":  # cancel discharge: PV1-45 may still hold the cancelled time
        discharge = None
    status = _STAY_STATUS.get(trigger)
    if status is None:
        status = "finished" if discharge else ("in-progress" if admit else "unknown")
    stay_id = visit_number(message) or _derived_stay_id(ctx, pv1, admit)
    ctx.add(
        Stay,
        pv1,
        pv1.position(19 if visit_number(message) else 3),
        fact_id=ctx.fact_id("stay", stay_id),
        stay_id=stay_id,
        ward=message.value(pv1, 3, 1) or None,
        bed=_bed(message, pv1),
        admit_time=admit,
        discharge_time=discharge,
        status=status,
    )


def _derived_stay_id(ctx: Context, pv1: SegmentRef, admit: datetime | None) -> str:
    patient_id = ctx.patient_for(pv1)
    if admit is not None:
        return f"{patient_id}:{admit:%Y%m%d%H%M}"
    return f"{patient_id}:{ctx.message.message_id}"


def _bed(message: Hl7Message, pv1: SegmentRef) -> str | None:
    room = message.value(pv1, 3, 2)
    bed = message.value(pv1, 3, 3)
    if room and bed:
        return f"{room}/{bed}"
    return bed or room or None


def _event_time(ctx: Context) -> datetime | None:
    """When an ADT event happened: EVN-6, else EVN-2, else MSH-7."""
    evn = ctx.message.first("EVN")
    for segment, field in ((evn, 6), (evn, 2), (ctx.message.msh, 7)):
        moment = time_or_error(ctx, segment, field)
        if moment is not None:
            return moment
    return None


def version_time(message: Hl7Message) -> datetime | None:
    """When the sender recorded this message's content: EVN-2 (recorded date/time), else MSH-7
    (the message's date/time). A malformed one is None here; ``connector.parse`` reports it,
    once (where it also serves as a fact time, there)."""
    for segment, field in ((message.first("EVN"), 2), (message.msh, 7)):
        try:
            moment = message.dtm(segment, field)
        except FeedError:
            continue
        if moment is not None:
            return moment
    return None


def time_or_error(ctx: Context, segment: SegmentRef | None, field: int) -> datetime | None:
    """A fact time; a malformed one is reported and the fact loads without it."""
    try:
        return ctx.message.dtm(segment, field)
    except FeedError as error:
        ctx.fail(error)
        return None


# Results (OBX) -------------------------------------------------------------------------------


@dataclass
class _PregnancyReading:
    """A pregnancy OBX as read; ``status`` is None for a due date not yet joined to a status."""

    obx: SegmentRef
    patient_id: str
    key: str
    recorded: datetime
    status: str | None = None
    due: date | None = None
    flags: tuple[Flag, ...] = ()


@dataclass(frozen=True)
class _ResultGroup:
    """The OBR the next OBX belong to, and its order number (read once per OBR)."""

    obr: SegmentRef | None = None
    order: str = ""


def load_results(ctx: Context, message_time_fallback: bool) -> None:
    """Every OBX of the message; a bad OBX is a non-fatal error, the others still load.

    ``message_time_fallback``: OBX without OBX-14 nor OBR-7 take MSH-7 (admission weight in an
    ADT); for lab results a missing time is an error, since rules window on it.
    """
    group = _ResultGroup()
    pregnancies: list[_PregnancyReading] = []
    for segment in ctx.message.segments:
        if segment.name in _ORDER_GROUP_STARTS:
            group = _ResultGroup()
        elif segment.name == "OBR":
            group = _ResultGroup(segment, order_number(ctx.message, segment))
        elif segment.name == "OBX":
            try:
                _load_result(ctx, segment, group, message_time_fallback, pregnancies)
            except FeedError as error:
                ctx.fail(error)
    _load_pregnancies(ctx, pregnancies)


def order_number(message: Hl7Message, obr: SegmentRef | None) -> str:
    """The order a result answers: filler number OBR-3, else placer number OBR-2."""
    return message.entity_id(obr, 3) or message.entity_id(obr, 2)


def result_key(ctx: Context, obx: SegmentRef, order: str, code: Coding, time: datetime) -> str:
    """What makes an OBX the same result from one message to the next.

    The patient, the order number (``order_number``), the code and the OBX-4 sub-id; without
    an order number, the observation time. Never the message id: a corrected result comes in
    a new message and must replace the original.
    """
    anchor = order or f"@{time:%Y%m%d%H%M%S}"
    parts = [ctx.patient_for(obx), anchor, f"{normalise_system(code.system)}|{code.code}"]
    sub_id = ctx.message.value(obx, 4)
    if sub_id:
        parts.append(sub_id)
    return ":".join(parts)


def _load_result(
    ctx: Context,
    obx: SegmentRef,
    group: _ResultGroup,
    message_time_fallback: bool,
    pregnancies: list[_PregnancyReading],
) -> None:
    message = ctx.message
    status = message.value(obx, 11).upper()
    value_type = message.value(obx, 2).upper()
    if status in _RETRACTING:
        _retract_result(ctx, obx, group, message_time_fallback)
        return
    if status in _WITHDRAWN or value_type in _BINARY_TYPES:
        ctx.note(f"{obx.label}: skipped (value type {value_type!r}, status {status!r})")
        return
    if not message.raw_field(obx, 5).strip():
        ctx.note(f"{obx.label}: no value (status {status!r})")
        return
    code = _observation_code(message, obx)
    if code is None and value_type in _NARRATIVE_TYPES:
        ctx.note(f"{obx.label}: narrative {value_type} without an observation code, skipped")
        return
    if code is None:
        raise message.field_error(obx, 3, "an observation identifier (code^text^system)")
    time = _result_time(ctx, obx, group.obr, message_time_fallback)
    if _is_pregnancy_code(code):
        pregnancies.append(_pregnancy_reading(ctx, obx, group.order, code, time))
        return
    measurement = normalise(
        ctx.terminology,
        match_code(ctx.terminology, [code]),
        _result_value(ctx, obx, value_type),
        reference=parse_reference_range(message.value(obx, 7)),
        abnormal_flag=message.value(obx, 8),
        positions=_obx_positions(obx.occurrence),
    )
    key = result_key(ctx, obx, group.order, code, time)
    fact_id = ctx.unique_id(ctx.fact_id(measurement.kind, key), obx)
    position = obx.position(5)
    fields = measurement.fields() | {"fact_id": fact_id, "code": code, "time": time}
    ctx.add(measurement.model, obx, position, **fields)


def _retract_result(
    ctx: Context, obx: SegmentRef, group: _ResultGroup, message_time_fallback: bool
) -> None:
    """An OBX with status D or W withdraws the result it names: the same patient, order, code
    and sub-id (or observation time without an order) give the same fact id as when it was
    sent, so the store can mark that fact retracted."""
    message = ctx.message
    code = _observation_code(message, obx)
    if code is None:
        raise message.field_error(obx, 3, "the identifier of the result OBX-11 withdraws")
    if _is_pregnancy_code(code):
        ctx.note(f"{obx.label}: withdrawn pregnancy status, not applied")
        return
    time = _observed_time(ctx, obx, group.obr, message_time_fallback)
    if time is None and not group.order:
        raise message.field_error(
            obx, 14, "the time of the result OBX-11 withdraws (OBX-14, OBR-7, or an order)"
        )
    concept = match_code(ctx.terminology, [code]).concept
    kind = "lab" if concept is None or concept.kind == "lab" else "observation"
    key = result_key(ctx, obx, group.order, code, time or datetime.min)
    fact_id = ctx.unique_id(ctx.fact_id(kind, key), obx)
    retraction = Retraction(
        kind=kind,
        fact_id=fact_id,
        patient_id=ctx.patient_for(obx),
        source=ctx.source(obx.position(11)),
    )
    ctx.outcome.retractions.append(retraction)


@lru_cache(maxsize=256)
def _obx_positions(occurrence: int) -> FlagPositions:
    """OBX-3 (code), OBX-5 (value), OBX-6 (unit) of the n-th OBX, for flag details."""
    return FlagPositions(f"OBX[{occurrence}]-", "3", "5", "6")


def _observation_code(message: Hl7Message, obx: SegmentRef) -> Coding | None:
    """OBX-3 as a Coding; the alternate code (components 4-6) when the first is empty."""
    for first in (1, 4):
        code = message.value(obx, 3, first)
        if code:
            return Coding(
                system=message.value(obx, 3, first + 2) or None,
                code=code,
                display=message.value(obx, 3, first + 1) or None,
            )
    return None


def _result_time(
    ctx: Context, obx: SegmentRef, obr: SegmentRef | None, message_time_fallback: bool
) -> datetime:
    moment = _observed_time(ctx, obx, obr, message_time_fallback)
    if moment is None:
        raise ctx.message.field_error(obx, 14, "an observation time (OBX-14, or OBR-7)")
    return moment


def _observed_time(
    ctx: Context, obx: SegmentRef, obr: SegmentRef | None, message_time_fallback: bool
) -> datetime | None:
    """OBX-14, else OBR-7, else (when allowed) MSH-7; None when none is given."""
    message = ctx.message
    moment = message.dtm(obx, 14) or message.dtm(obr, 7)
    if moment is None and message_time_fallback:
        moment = message.dtm(message.msh, 7)
    return moment


def _result_value(ctx: Context, obx: SegmentRef, value_type: str) -> Reading:
    """OBX-5 read by its value type: NM strictly, SN when plain, text kept as text (and read as
    a number when it is one: many labs send numbers as ST); the unit is OBX-6."""
    message = ctx.message
    unit = message.value(obx, 6, 1) or message.value(obx, 6, 2) or None
    if value_type == "NM":
        if message.repetition_count(obx, 5) > 1:
            raise message.field_error(obx, 5, "a single number (NM), not repetitions")
        text = message.value(obx, 5)
        try:
            return Reading(text, parse_number(text), unit)
        except ValueError:
            raise message.field_error(obx, 5, NUMBER_FORMAT) from None
    if value_type == "SN":
        return _structured_numeric(message, obx, unit)
    if value_type in _CODED_TYPES:
        text = message.value(obx, 5, 2) or message.value(obx, 5, 1)
        return Reading(text, None, unit, codes=_coded_answer(message, obx))
    text = message.value(obx, 5) if message.repetition_count(obx, 5) == 1 else ""
    if value_type in ("", "ST") and text:
        return read_value(text, unit, decimal_point)
    return Reading(text or message.raw_field(obx, 5), None, unit)


def _coded_answer(message: Hl7Message, obx: SegmentRef) -> tuple[Coding, ...]:
    """OBX-5 of a coded type: its code (components 1-3) and alternate code (4-6)."""
    answer = []
    for first in (1, 4):
        code = message.value(obx, 5, first)
        if code:
            system = message.value(obx, 5, first + 2) or None
            display = message.value(obx, 5, first + 1) or None
            answer.append(Coding(system=system, code=code, display=display))
    return tuple(answer)


def _structured_numeric(message: Hl7Message, obx: SegmentRef, unit: str | None) -> Reading:
    """SN: comparator^num1^separator^num2. Only '=' or no comparator with one number is a value."""
    parts = [message.value(obx, 5, component) for component in range(1, 5)]
    comparator, first, separator, second = parts
    text = "".join(parts)
    try:
        number = parse_number(first)
    except ValueError:
        raise message.field_error(
            obx, 5, "a structured numeric (SN) such as '^182' or '<^0.5'", component=2
        ) from None
    if comparator in ("", "=") and not separator and not second:
        return Reading(text.lstrip("="), number, unit)
    return Reading(text, None, unit)


# Pregnancy (OBX) -----------------------------------------------------------------------------


def _is_pregnancy_code(code: Coding) -> bool:
    known = code.code in _PREGNANCY_STATUS_CODES or code.code in _DUE_DATE_CODES
    return known and normalise_system(code.system) == "LOINC"


def _pregnancy_reading(
    ctx: Context, obx: SegmentRef, order: str, code: Coding, time: datetime
) -> _PregnancyReading:
    """A status or a due date OBX; a malformed due date is a located ``FeedError``."""
    key = result_key(ctx, obx, order, code, time)
    reading = _PregnancyReading(obx, ctx.patient_for(obx), key, time)
    if code.code in _DUE_DATE_CODES:
        reading.due = ctx.message.calendar_date(obx, 5)
        return reading
    reading.status, reading.flags = _pregnancy_status(ctx.message, obx)
    return reading


def _pregnancy_status(message: Hl7Message, obx: SegmentRef) -> tuple[str, tuple[Flag, ...]]:
    """OBX-5 coded answer (or its alternate code) → status; an unknown answer is flagged."""
    for component in (1, 4):
        answer = message.value(obx, 5, component)
        if answer in _PREGNANCY_ANSWERS:
            return _PREGNANCY_ANSWERS[answer], ()
    shown = message.value(obx, 5, 1) or message.value(obx, 5, 2)
    detail = f"{obx.position(5)}: pregnancy status answer {shown!r} not mapped"
    return "unknown", (Flag(code=FlagCode.UNMAPPED_CODE, detail=detail),)


def _load_pregnancies(ctx: Context, readings: list[_PregnancyReading]) -> None:
    """One Pregnancy per status OBX, with the due date that goes with it; lone due dates too."""
    statuses = [reading for reading in readings if reading.status is not None]
    for due in (reading for reading in readings if reading.status is None):
        partner = _status_for(statuses, due)
        if partner is None:
            due.status = "pregnant"  # an estimated due date is only given for a pregnancy
            statuses.append(due)
        else:
            partner.due = due.due
    for reading in sorted(statuses, key=lambda r: r.obx.ordinal):
        fact_id = ctx.fact_id("pregnancy", reading.key)
        ctx.add(
            Pregnancy,
            reading.obx,
            reading.obx.position(5),
            fact_id=ctx.unique_id(fact_id, reading.obx),
            flags=reading.flags,
            status=reading.status,
            recorded=reading.recorded,
            estimated_due_date=reading.due,
        )


def _status_for(
    statuses: list[_PregnancyReading], due: _PregnancyReading
) -> _PregnancyReading | None:
    """The same patient's status OBX without a due date: the last before, else the first after."""
    free = [s for s in statuses if s.patient_id == due.patient_id and s.due is None]
    before = [s for s in free if s.obx.ordinal < due.obx.ordinal]
    if before:
        return before[-1]
    return free[0] if free else None
