"""Lab results, observations and pregnancies from FHIR R4 Observation resources.

Read with the typed readers of ``vigie.connectors.fhir.fast`` (see there for the shared
conventions).

- A code mapped to a ``lab`` concept gives a ``LabResult``, to an ``observation`` concept an
  ``Observation``; an unmapped code gives a ``LabResult`` with ``concept=None`` and an
  ``unmapped_code`` flag when the category is ``laboratory``, and no fact otherwise (vital signs,
  surveys, social history...: nothing a rule reads). Components are read the same way but only
  when mapped.
- Pregnancy status (LOINC 82810-3, 11449-6) gives a ``Pregnancy`` fact, with the estimated due
  date of its 11778-8 component; an 11778-8 Observation alone gives a pregnant ``Pregnancy``
  with that date (due dates are calendar days, never shifted). Cancelled observations give no
  fact; entered-in-error ones are read like the others, and the connector turns their facts into
  retractions (``vigie.connectors.fhir.fast.withdrawn``).
- Values, units, reference ranges and interpretations are normalised by
  ``vigie.connectors.labs`` like every feed's: a Quantity's UCUM code is tried before its label,
  a comparator (``<5``) makes the value a bound (kept as text, flagged ``non_numeric_value``),
  a range end's own unit wins over the value's, the first interpretation coding (else its text)
  is the abnormal flag. A valueCodeableConcept's codings (SNOMED 10828004 Positive...) and text
  (``Négatif``), else an interpretation such as ``POS``, give the qualitative value.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any, NamedTuple

from vigie.connectors.fhir.fast import (
    _DATETIME_EXPECTED,
    EntryProblem,
    ResourceEntry,
    _codings,
    _datetime,
    _first,
    _join,
    _number,
    _number_text,
    _obj,
    _objects,
    _period_start,
    _show,
    _text,
    _unmapped,
    parse_fhir_datetime,
)
from vigie.connectors.fhir.fast_facts import normalised_system
from vigie.connectors.labs import Reading, ReferenceRange, match_code, normalise
from vigie.facts import AnyFact, Coding, Flag, LabResult, Observation, Pregnancy

__all__ = ["EXTRACTORS"]

_PREGNANCY_CODES = frozenset({"82810-3", "11449-6"})
# Estimated due date: by any method, from the last menstrual period, from the ovulation date.
_DUE_DATE_CODES = frozenset({"11778-8", "11779-6", "11780-4"})
_PREGNANCY_ANSWERS = {
    "77386006": "pregnant",  # SNOMED Pregnant
    "LA15173-0": "pregnant",
    "60001007": "not-pregnant",  # SNOMED Not pregnant
    "LA26683-5": "not-pregnant",
    "261665006": "unknown",
    "LA4489-6": "unknown",
}
_SKIPPED_STATUS = frozenset({"cancelled"})


class _Value(NamedTuple):
    """A value[x] as read, and the path of the field it sits in."""

    field: str
    reading: Reading


def _reading(node: dict[str, Any], path: str) -> _Value | None:
    """The value[x] of an Observation or component, or ``None`` when it has none."""
    quantity = _obj(node, "valueQuantity", path)
    if quantity is not None:
        return _Value(_join(path, "valueQuantity"), _quantity_reading(quantity, path))
    number = _number(node, "valueInteger", path)
    if number is not None:
        return _Value(_join(path, "valueInteger"), Reading(_number_text(node), number, None))
    answer = _obj(node, "valueCodeableConcept", path)
    if answer is not None:
        return _Value(_join(path, "valueCodeableConcept"), _answer_reading(answer, path))
    for key in ("valueString", "valueBoolean", "valueRange"):
        if key in node:
            value = node[key]
            shown = value if isinstance(value, str) else _show(value)
            return _Value(_join(path, key), Reading(shown, None, None))
    return None


def _answer_reading(answer: dict[str, Any], path: str) -> Reading:
    """A valueCodeableConcept: its codings, shown as its text, else the first coding's display
    or code (as HL7 v2 shows a CE answer)."""
    answer_path = _join(path, "valueCodeableConcept")
    codes = tuple(_codings(answer, answer_path))
    shown = _text(answer, "text", answer_path)
    if not shown and codes:
        shown = codes[0].display or codes[0].code
    return Reading(shown or _show(answer), None, None, codes=codes)


def _quantity_reading(quantity: dict[str, Any], path: str) -> Reading:
    """A Quantity: a comparator (``<5``) makes it a bound, not a number; the UCUM code is tried
    before the label to convert it."""
    path = _join(path, "valueQuantity")
    number = _number(quantity, "value", path)
    code, unit = _text(quantity, "code", path), _text(quantity, "unit", path)
    comparator = _text(quantity, "comparator", path)
    text = None if number is None else _number_text(quantity)
    if comparator and text is not None:
        text, number = comparator + text, None
    spellings = tuple(u for u in (code, unit) if u)
    return Reading(text, number, unit or code, spellings)


def _time(resource: dict[str, Any]) -> datetime:
    time = (
        _datetime(resource, "effectiveDateTime", "")
        or _period_start(resource, "effectivePeriod", "")
        or _datetime(resource, "effectiveInstant", "")
        or _datetime(resource, "issued", "")
    )
    if time is None:
        raise EntryProblem("effective[x]", "the time of the observation (effective[x] or issued)")
    return time


def _is_laboratory(resource: dict[str, Any]) -> bool:
    for path, category in _objects(resource, "category", ""):
        if any(c.code == "laboratory" for c in _codings(category, path)):
            return True
    return False


def _observation(entry: ResourceEntry) -> list[AnyFact]:
    resource = entry.resource
    if _text(resource, "status", "") in _SKIPPED_STATUS:
        return []
    codings = _codings(_obj(resource, "code", ""), "code")
    if _has_loinc(codings, _PREGNANCY_CODES):
        return [_pregnancy(entry)]
    if _has_loinc(codings, _DUE_DATE_CODES):
        return _due_date_alone(entry)
    time = _time(resource)
    facts: list[AnyFact] = []
    components = list(_objects(resource, "component", ""))
    reading = _reading(resource, "")
    if reading is not None or not components:
        laboratory = _is_laboratory(resource)
        fact = _measurement(entry, resource, "", codings, reading, time, laboratory)
        facts.extend([fact] if fact else [])
    for index, (path, component) in enumerate(components):
        component_codings = _codings(_obj(component, "code", path), _join(path, "code"))
        component_reading = _reading(component, path)
        suffix = f"/component[{index}]"
        fact = _measurement(
            entry, component, path, component_codings, component_reading, time, False, suffix
        )
        facts.extend([fact] if fact else [])
    return facts


def _measurement(
    entry: ResourceEntry,
    node: dict[str, Any],
    path: str,
    codings: list[Coding],
    value: _Value | None,
    time: datetime,
    laboratory: bool,
    suffix: str = "",
) -> LabResult | Observation | None:
    """A LabResult or Observation from a coded value; ``None`` for an unmapped non-lab code."""
    if not codings:
        return None
    terminology = entry.terminology
    match = match_code(terminology, codings)
    if match.concept is None and not laboratory:
        return None
    value = value or _Value(_join(path, "value[x]"), Reading(None, None, None))
    measurement = normalise(
        terminology,
        match,
        value.reading,
        reference=_reference_range(node, path),
        abnormal_flag=_interpretation(node, path),
    )
    fields = measurement.fields() | {
        "fact_id": entry.fact_id(suffix),
        "patient_id": entry.patient_id("subject"),
        "source": entry.source(value.field),
        "code": match.coding,
        "time": time,
    }
    return entry.fact(measurement.model, **fields)


def _reference_range(node: dict[str, Any], path: str) -> ReferenceRange | None:
    """The first referenceRange: its low and high, in their own unit when they give one."""
    first = _first(node, "referenceRange", path)
    if first is None:
        return None
    range_path, reference_range = first
    low, low_units = _range_end(reference_range, "low", range_path)
    high, high_units = _range_end(reference_range, "high", range_path)
    return ReferenceRange(low, high, low_units or high_units)


def _interpretation(node: dict[str, Any], path: str) -> str | None:
    first = _first(node, "interpretation", path)
    if first is None:
        return None
    item_path, item = first
    return next((c.code for c in _codings(item, item_path)), None) or _text(item, "text", item_path)


def _range_end(
    reference_range: dict[str, Any], end: str, path: str
) -> tuple[float | None, tuple[str, ...]]:
    quantity = _obj(reference_range, end, path)
    if quantity is None:
        return None, ()
    number = _number(quantity, "value", _join(path, end))
    own = tuple(u for u in (_text(quantity, "code", path), _text(quantity, "unit", path)) if u)
    return number, own


def _has_loinc(codings: list[Coding], codes: frozenset[str]) -> bool:
    return any(c.code in codes and normalised_system(c.system) == "LOINC" for c in codings)


def _pregnancy(entry: ResourceEntry) -> Pregnancy:
    """A pregnancy status Observation, with the due date its component gives (11778-8)."""
    resource = entry.resource
    answer = _obj(resource, "valueCodeableConcept", "")
    codes = [c.code for c in _codings(answer, "valueCodeableConcept")]
    status = next((_PREGNANCY_ANSWERS[c] for c in codes if c in _PREGNANCY_ANSWERS), "unknown")
    flags: tuple[Flag, ...] = ()
    if status == "unknown" and codes:
        flags = (_unmapped("pregnancy status answer", _codings(answer, "valueCodeableConcept")),)
    return entry.fact(
        Pregnancy,
        fact_id=entry.fact_id(),
        patient_id=entry.patient_id("subject"),
        source=entry.source("valueCodeableConcept" if answer else ""),
        flags=flags,
        status=status,
        recorded=_time(resource),
        estimated_due_date=_component_due_date(resource),
    )


def _component_due_date(resource: dict[str, Any]) -> date | None:
    for path, component in _objects(resource, "component", ""):
        codings = _codings(_obj(component, "code", path), _join(path, "code"))
        if _has_loinc(codings, _DUE_DATE_CODES):
            return _calendar_date(component, path)
    return None


def _due_date_alone(entry: ResourceEntry) -> list[AnyFact]:
    """An estimated due date Observation by itself: it is only given for a pregnancy."""
    due = _calendar_date(entry.resource, "")
    if due is None:
        return []
    pregnancy = entry.fact(
        Pregnancy,
        fact_id=entry.fact_id(),
        patient_id=entry.patient_id("subject"),
        source=entry.source("valueDateTime"),
        status="pregnant",
        recorded=_time(entry.resource),
        estimated_due_date=due,
    )
    return [pregnancy]


def _calendar_date(node: dict[str, Any], path: str) -> date | None:
    """A due date (``valueDateTime``) as the calendar day written, never shifted to UTC."""
    value = _text(node, "valueDateTime", path)
    if value is None:
        return None
    if parse_fhir_datetime(value) is None:
        raise EntryProblem(_join(path, "valueDateTime"), _DATETIME_EXPECTED, value)
    day = parse_fhir_datetime(value[:10])
    assert day is not None  # the date part of a valid dateTime
    return day.date()


EXTRACTORS: dict[str, Callable[[ResourceEntry], list[AnyFact]]] = {"Observation": _observation}
