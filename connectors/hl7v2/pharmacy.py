"""HL7 v2 pharmacy segments → MedicationOrder and MedicationAdministration facts.

An order is one ORC and the segments after it up to the next ORC: RXE (encoded order, RDE) or
RXO (requested order, OMP/ORM), their TQ1 timing and RXR route; RXA for administrations (RAS).
When both RXO and RXE are present the RXE wins, and the TQ1/RXR that follow it.

- ``order_id``: ORC-2 placer number, else ORC-3 filler number, else RXE-15 prescription number,
  else ``<message id>:ORC[n]``; the fact id is built on it so an update (ORC-1 XO, DC, CA...)
  replaces the order.
- Frequency: TQ1-3 repeat pattern, else the TQ in RXE-1 or ORC-7 (deprecated since v2.5 but
  still sent), else the count of TQ1-4 explicit times; HL7 table 0335 codes (QD, BID, TID,
  QID, QOD, QW, Q6H, Q2D, xID...). PRN (pattern suffix or TQ1-9 priority) sets ``as_needed``.
- Route: RXR-1 via the terminology (HL7 table 0162 codes, then the label as text).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vigie.connectors.base import FeedError
from vigie.connectors.compositions import code_ingredients
from vigie.connectors.dose_strength import dose_by_strength, label_strength
from vigie.connectors.dose_units import unknown_dose_unit
from vigie.connectors.drug_labels import label_drug
from vigie.connectors.hl7v2.clinical import Context, visit_number
from vigie.connectors.hl7v2.message import NUMBER_FORMAT, SegmentRef, parse_number
from vigie.facts import Coding, Flag, FlagCode, MedicationAdministration, MedicationOrder

__all__ = [
    "frequency_per_day",
    "load_administrations",
    "load_orders",
]

_PHARMACY_SEGMENTS = frozenset({"RXE", "RXO", "RXR", "TQ1", "RXA", "RXC"})

# HL7 table 0335 named repeat patterns -> administrations per day (standard codes, not a site
# mapping, hence here rather than in a terminology file).
_NAMED_FREQUENCIES = {
    "QD": 1.0,
    "Q1D": 1.0,
    "OD": 1.0,
    "DAILY": 1.0,
    "QAM": 1.0,
    "QPM": 1.0,
    "QHS": 1.0,
    "HS": 1.0,
    "QNOON": 1.0,
    "BID": 2.0,
    "TID": 3.0,
    "QID": 4.0,
    "QOD": 0.5,
    "QW": 1 / 7,
    "BIW": 2 / 7,
    "TIW": 3 / 7,
}
_PER_DAY_BY_UNIT = {"S": 86400.0, "M": 1440.0, "H": 24.0, "D": 1.0, "W": 1 / 7}
_INTERVAL = re.compile(r"Q([0-9]+(?:\.[0-9]+)?)([SMHDW])\Z")
_TIMES_A_DAY = re.compile(r"([0-9]+)ID\Z")
_PRN = re.compile(r"(?:^|[\s_-]*)PRN\Z")

# ORC-1 order control (table 0119) and ORC-5 order status (table 0038) -> order status.
_CONTROL_STATUS = {
    "NW": "active",
    "OK": "active",
    "SN": "active",
    "XO": "active",
    "XX": "active",
    "RO": "active",
    "RP": "active",
    "RE": "active",
    "RL": "active",
    "OR": "active",
    "NA": "active",
    "PA": "active",
    "CH": "active",
    "RF": "active",
    "FU": "active",
    "OP": "active",
    "PY": "active",
    "CA": "cancelled",
    "CR": "cancelled",
    "OC": "cancelled",
    "DC": "stopped",
    "DR": "stopped",
    "OD": "stopped",
    "HD": "on-hold",
    "HR": "on-hold",
    "OH": "on-hold",
}
_ORDER_STATUS = {
    "A": "active",
    "IP": "active",
    "SC": "active",
    "CM": "completed",
    "DC": "stopped",
    "RP": "stopped",
    "CA": "cancelled",
    "HD": "on-hold",
}
# RXA-20 completion status (table 0322).
_ADMINISTRATION_STATUS = {"CP": "completed", "PA": "completed", "RE": "not-done", "NA": "not-done"}


@dataclass
class _OrderGroup:
    orc: SegmentRef | None
    segments: list[SegmentRef] = field(default_factory=list)

    def first(self, name: str, after: SegmentRef | None = None) -> SegmentRef | None:
        """The first ``name`` segment after ``after`` (if any), else the first in the group."""
        candidates = [s for s in self.segments if s.name == name]
        if after is not None:
            later = [s for s in candidates if s.ordinal > after.ordinal]
            if later:
                return later[0]
        return candidates[0] if candidates else None

    def all(self, name: str) -> list[SegmentRef]:
        return [s for s in self.segments if s.name == name]


def _order_groups(ctx: Context) -> list[_OrderGroup]:
    groups: list[_OrderGroup] = []
    for segment in ctx.message.segments:
        if segment.name == "ORC":
            groups.append(_OrderGroup(segment))
        elif segment.name in _PHARMACY_SEGMENTS:
            if not groups:  # pharmacy segments without ORC: keep them, order id is derived
                groups.append(_OrderGroup(None))
            groups[-1].segments.append(segment)
    return groups


def frequency_per_day(pattern: str) -> tuple[float | None, bool]:
    """(administrations per day, as needed) for an HL7 repeat pattern such as ``Q6H PRN``."""
    code = pattern.strip().upper()
    as_needed = bool(_PRN.search(code))
    if as_needed:
        code = _PRN.sub("", code).strip()
    if code in _NAMED_FREQUENCIES:
        return _NAMED_FREQUENCIES[code], as_needed
    match = _INTERVAL.match(code)
    if match and float(match[1]) > 0:
        return _PER_DAY_BY_UNIT[match[2]] / float(match[1]), as_needed
    match = _TIMES_A_DAY.match(code)
    if match and int(match[1]) > 0:
        return float(match[1]), as_needed
    return None, as_needed


# Orders --------------------------------------------------------------------------------------


@dataclass
class _Timing:
    pattern: str | None = None
    per_day: float | None = None
    as_needed: bool = False
    start: datetime | None = None
    end: datetime | None = None


def load_orders(ctx: Context) -> None:
    """One MedicationOrder per ORC group holding an RXE or RXO; errors stay local to a group."""
    used: set[str] = set()
    for group in _order_groups(ctx):
        encoded = group.first("RXE") or group.first("RXO")
        if encoded is None:
            continue
        try:
            _load_order(ctx, group, encoded, used)
        except FeedError as error:
            ctx.fail(error)


def _order_id(ctx: Context, group: _OrderGroup, encoded: SegmentRef) -> str:
    message = ctx.message
    candidates = (
        message.value(group.orc, 2),
        message.value(group.orc, 3),
        message.value(encoded, 15) if encoded.name == "RXE" else "",
    )
    for candidate in candidates:
        if candidate:
            return candidate
    return f"{message.message_id}:{(group.orc or encoded).label}"


def _load_order(ctx: Context, group: _OrderGroup, encoded: SegmentRef, used: set[str]) -> None:
    message = ctx.message
    is_rxe = encoded.name == "RXE"
    code_field, dose_field, unit_field = (2, 3, 5) if is_rxe else (1, 2, 4)
    drug = _drug_coding(ctx, encoded, code_field)
    order_id = _order_id(ctx, group, encoded)
    fact_id = ctx.fact_id("order", order_id)
    if fact_id in used:  # the same order number twice in one message: keep both
        fact_id = ctx.fact_id("order", order_id, encoded.label)
    used.add(fact_id)
    flags: list[Flag] = []
    atc = _atc(ctx, encoded, code_field, drug, flags)
    dose, original_dose = _dose(ctx, encoded, dose_field, flags)
    unit_text = message.value(encoded, unit_field, 1) or message.value(encoded, unit_field, 2)
    timing = _timing(ctx, group, encoded)
    if timing.per_day is None and not timing.as_needed:
        detail = f"no frequency in TQ1-3, RXE-1 or ORC-7 ({timing.pattern or 'empty'})"
        flags.append(Flag(code=FlagCode.MISSING_FREQUENCY, detail=detail))
    route, original_route = _route(ctx, group.first("RXR", after=encoded), flags)
    alternate = (message.value(encoded, code_field, 6), message.value(encoded, code_field, 4))
    ingredients = code_ingredients(ctx.terminology, [(drug.system, drug.code), alternate])
    if not ingredients:  # a combination's text (RXE-2.2) names its substances and strengths
        label = label_drug(ctx.terminology, [drug.display], atc=atc, codes="")
        ingredients = label.ingredients if label is not None else ()
    dose_unit = _dose_unit(ctx, encoded, unit_field, unit_text, flags)
    daily = dose * timing.per_day if dose is not None and timing.per_day else None
    if not ingredients:  # one substance: a count of tablets (or mL) is read as its amount
        texts = [drug.display, message.value(encoded, code_field, 5)]
        strength = label_strength(ctx.terminology, texts, atc=atc, source="label")
        by_strength = dose_by_strength(dose, dose_unit, daily, strength)
        if by_strength is not None:
            dose, dose_unit, daily = by_strength.dose, by_strength.dose_unit, by_strength.daily_dose
            flags.append(by_strength.flag)
    ctx.add(
        MedicationOrder,
        encoded,
        encoded.position(code_field),
        fact_id=fact_id,
        flags=tuple(flags),
        order_id=order_id,
        stay_id=visit_number(message),
        drug=drug,
        atc=atc,
        label=drug.display,
        dose=dose,
        dose_unit=dose_unit,
        original_dose=original_dose,
        original_dose_unit=unit_text or None,
        frequency_per_day=timing.per_day,
        frequency_text=timing.pattern,
        daily_dose=daily,
        as_needed=timing.as_needed,
        route=route,
        original_route=original_route,
        start=timing.start or _order_time(ctx, group.orc),
        end=timing.end,
        status=_order_status(ctx, group.orc),
        prescriber=_prescriber(ctx, group.orc, encoded),
        **({"ingredients": ingredients} if ingredients else {}),
    )


def _drug_coding(ctx: Context, segment: SegmentRef, field_number: int) -> Coding:
    """The give code (RXE-2, RXO-1, RXA-5); the alternate code when the first is empty."""
    message = ctx.message
    for first in (1, 4):
        code = message.value(segment, field_number, first)
        if code:
            display = message.value(segment, field_number, first + 1) or message.value(
                segment, field_number, 9
            )
            return Coding(
                system=message.value(segment, field_number, first + 2) or None,
                code=code,
                display=display or None,
            )
    raise message.field_error(segment, field_number, "a drug code (code^text^system)")


def _atc(
    ctx: Context, segment: SegmentRef, field_number: int, drug: Coding, flags: list[Flag]
) -> str | None:
    """ATC from the drug code, or from the alternate code (components 4-6) of the same field."""
    message = ctx.message
    terminology = ctx.terminology
    atc = terminology.drug_atc(drug.system, drug.code)
    alternate = message.value(segment, field_number, 4)
    if atc is None and alternate:
        atc = terminology.drug_atc(message.value(segment, field_number, 6), alternate)
    if atc is None:  # the drug's text (component 2, or 5 with the alternate code) as fallback
        codes = f"{segment.position(field_number)} {drug.system or 'LOCAL'}|{drug.code}"
        texts = [drug.display, message.value(segment, field_number, 5)]
        found = label_drug(terminology, texts, atc=None, codes=codes)
        if found is not None and found.flags:
            flags.extend(found.flags)
            return found.atc
        detail = (
            f"{segment.position(field_number)}: no ATC for {drug.system or 'LOCAL'} code "
            f"{drug.code!r}"
        )
        flags.append(Flag(code=FlagCode.UNMAPPED_CODE, detail=detail))
    return atc


def _dose(
    ctx: Context, segment: SegmentRef, field_number: int, flags: list[Flag]
) -> tuple[float | None, str | None]:
    """(dose, as sent); a malformed amount is a non-fatal error, the order still loads."""
    text = ctx.message.value(segment, field_number)
    if not text:
        flags.append(
            Flag(code=FlagCode.MISSING_DOSE, detail=f"{segment.position(field_number)} is empty")
        )
        return None, None
    try:
        return parse_number(text), text
    except ValueError:
        ctx.fail(ctx.message.field_error(segment, field_number, NUMBER_FORMAT))
        flags.append(
            Flag(code=FlagCode.MISSING_DOSE, detail=f"{segment.position(field_number)}: {text!r}")
        )
        return None, text


def _dose_unit(
    ctx: Context, segment: SegmentRef, field_number: int, text: str, flags: list[Flag]
) -> str | None:
    """The canonical dose unit of RXE-5, RXO-4 or RXA-7 (give, requested give, administered
    units: CE, identifier else text); an unknown one is kept as sent and flagged."""
    if not text:
        return None
    unit = ctx.terminology.canonical_unit(text)
    unknown = unknown_dose_unit(text, unit, segment.position(field_number))
    if unknown is not None:
        flags.append(unknown)
    return unit


def _timing(ctx: Context, group: _OrderGroup, encoded: SegmentRef) -> _Timing:
    message = ctx.message
    tq1 = group.first("TQ1", after=encoded)
    rxe = encoded if encoded.name == "RXE" else None
    sources: list[tuple[SegmentRef | None, int, int]] = [(rxe, 1, 2), (group.orc, 7, 2)]
    pattern = message.value(tq1, 3)
    for segment, field_number, component in sources:
        pattern = pattern or message.value(segment, field_number, component)
    timing = _Timing(pattern=pattern or None)
    if pattern:
        timing.per_day, timing.as_needed = frequency_per_day(pattern)
    elif tq1 is not None and message.value(tq1, 4):
        timing.per_day = float(message.repetition_count(tq1, 4))
    priorities = (message.value(tq1, 9), message.value(rxe, 1, 6), message.value(group.orc, 7, 6))
    timing.as_needed = timing.as_needed or "PRN" in (p.upper() for p in priorities)
    timing.start = _first_time(ctx, [(tq1, 7, 1), (rxe, 1, 4), (group.orc, 7, 4)])
    timing.end = _first_time(ctx, [(tq1, 8, 1), (rxe, 1, 5), (group.orc, 7, 5)])
    return timing


def _first_time(ctx: Context, places: list[tuple[SegmentRef | None, int, int]]) -> datetime | None:
    """The first readable time among places; a malformed one is reported and skipped."""
    for segment, field_number, component in places:
        try:
            moment = ctx.message.dtm(segment, field_number, component)
        except FeedError as error:
            ctx.fail(error)
            continue
        if moment is not None:
            return moment
    return None


def _order_time(ctx: Context, orc: SegmentRef | None) -> datetime | None:
    """ORC-15 order effective time, else ORC-9 transaction time."""
    return _first_time(ctx, [(orc, 15, 1), (orc, 9, 1)])


def _route(
    ctx: Context, rxr: SegmentRef | None, flags: list[Flag]
) -> tuple[str | None, str | None]:
    """(canonical route, route as sent) from RXR-1 code, else its label."""
    message = ctx.message
    code = message.value(rxr, 1, 1)
    label = message.value(rxr, 1, 2)
    if not code and not label:
        return None, None
    system = message.value(rxr, 1, 3) or "HL70162"
    terminology = ctx.terminology
    route = terminology.route(system, code) or terminology.route("TEXT", label)
    if route is None and rxr is not None:
        detail = f"{rxr.position(1)}: route {code or label!r} not mapped"
        flags.append(Flag(code=FlagCode.UNMAPPED_CODE, detail=detail))
    return route, code or label


def _order_status(ctx: Context, orc: SegmentRef | None) -> str:
    if orc is None:
        return "unknown"
    message = ctx.message
    status = _ORDER_STATUS.get(message.value(orc, 5).upper())
    return status or _CONTROL_STATUS.get(message.value(orc, 1).upper(), "unknown")


def _prescriber(ctx: Context, orc: SegmentRef | None, encoded: SegmentRef) -> str | None:
    """ORC-12 ordering provider (XCN.1 id, else family and given names), else RXE-13."""
    message = ctx.message
    places: list[tuple[SegmentRef | None, int]] = [(orc, 12)]
    if encoded.name == "RXE":
        places.append((encoded, 13))
    for segment, field_number in places:
        identifier = message.value(segment, field_number, 1)
        names = [message.value(segment, field_number, c) for c in (2, 3)]
        name = " ".join(part for part in names if part)
        if identifier or name:
            return identifier or name
    return None


# Administrations -----------------------------------------------------------------------------


def load_administrations(ctx: Context) -> None:
    """One MedicationAdministration per RXA (RAS^O17)."""
    for group in _order_groups(ctx):
        for rxa in group.all("RXA"):
            try:
                _load_administration(ctx, group, rxa)
            except FeedError as error:
                ctx.fail(error)


def _load_administration(ctx: Context, group: _OrderGroup, rxa: SegmentRef) -> None:
    message = ctx.message
    time = message.dtm(rxa, 3)
    if time is None:
        raise message.field_error(rxa, 3, "the administration start time (RXA-3)")
    drug = _drug_coding(ctx, rxa, 5)
    flags: list[Flag] = []
    atc = _atc(ctx, rxa, 5, drug, flags)
    dose, _ = _dose(ctx, rxa, 6, flags)
    unit_text = message.value(rxa, 7, 1) or message.value(rxa, 7, 2)
    dose_unit = _dose_unit(ctx, rxa, 7, unit_text, flags)
    route, _ = _route(ctx, group.first("RXR", after=rxa), flags)
    order_id = message.value(group.orc, 2) or message.value(group.orc, 3) or None
    administration_id = f"{order_id or message.message_id}:{rxa.label}"
    fields: dict[str, Any] = {
        "fact_id": ctx.fact_id("administration", administration_id),
        "flags": tuple(flags),
        "administration_id": administration_id,
        "order_id": order_id,
        "drug": drug,
        "atc": atc,
        "label": drug.display,
        "dose": dose,
        "dose_unit": dose_unit,
        "route": route,
        "time": time,
        "status": _ADMINISTRATION_STATUS.get(message.value(rxa, 20).upper(), "completed"),
    }
    ctx.add(MedicationAdministration, rxa, rxa.position(5), **fields)
