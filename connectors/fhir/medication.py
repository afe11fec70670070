"""Medication facts from FHIR R4 resources held as plain JSON dicts.

MedicationRequest → MedicationOrder and MedicationAdministration → MedicationAdministration,
read with the typed readers of ``vigie.connectors.fhir.fast`` (see there for the shared
conventions).

- The drug is ``medicationCodeableConcept``, or the Medication that ``medicationReference``
  points at (contained, or elsewhere in the message). Every coding is tried for an ATC code
  (ATC, RxNorm, CIS, CIP13, UCD, site codes via ``Terminology.drug_atc``); the first coding is
  kept as the drug code. An unresolvable reference is kept as the drug code, flagged.
- A compound Medication without a code of its own (an infusion of referenced ingredients) gives
  one order per ingredient (``order_id`` ``<id>/ingredient[j]``), without dose: the dose
  written is the mixture's.
- Several dosageInstructions give one order each (``<id>/dosage[i]``): concurrent instructions
  (same or no ``sequence``) then sum up as separate lines, and sequential ones (tapering) are
  chained in time when their durations allow.
- Frequency per day: ``frequency`` (or ``frequencyMax`` when absent, or for a PRN line) per
  ``period`` ``periodUnit``; else the number of ``when`` events (AC/PC/C count three meals) or
  of ``timeOfDay`` times, scaled by ``dayOfWeek``. A month counts 30 days.
- A continuous infusion (``rateRatio`` without frequency) gives a daily dose of rate × 24 h.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from vigie.connectors.compositions import code_ingredients
from vigie.connectors.dose_strength import dose_by_strength, is_plain_strength, label_strength
from vigie.connectors.dose_units import unknown_dose_unit
from vigie.connectors.drug_labels import label_drug
from vigie.connectors.fhir.fast import (
    EntryProblem,
    ResourceEntry,
    _boolean,
    _coded,
    _codings,
    _concept_code,
    _datetime,
    _items,
    _join,
    _number,
    _number_text,
    _obj,
    _objects,
    _period_start,
    _show,
    _text,
    _texts,
    _unmapped,
    reference_id,
)
from vigie.connectors.fhir.fast_facts import TerminologyMemo, coding, flag, normalised_system
from vigie.facts import AnyFact, Coding, Flag, FlagCode, MedicationAdministration, MedicationOrder
from vigie.facts.model import Ingredient

__all__ = ["EXTRACTORS"]


class _Drug(NamedTuple):
    """One drug of an order: its code as received, ATC, label; ``suffix`` names an ingredient."""

    coding: Coding
    atc: str | None
    label: str | None
    suffix: str = ""
    is_ingredient: bool = False
    flags: tuple[Flag, ...] = ()
    ingredients: tuple[Ingredient, ...] = ()  # of a combination product, read from its label
    strength: Ingredient | None = None  # of a single-substance product (``dose_strength``)


def _drug_from_concept(
    concept: dict[str, Any], path: str, terminology: TerminologyMemo, suffix: str = ""
) -> _Drug | None:
    codings = _codings(concept, path)
    text = _text(concept, "text", path)
    if not codings:
        if not text:
            return None
        codings = [coding(None, text, text)]
    atc = None
    for candidate in codings:
        atc = terminology.drug_atc(candidate.system, candidate.code)
        if atc is not None:
            break
    flags: tuple[Flag, ...] = () if atc else (_unmapped("drug", codings),)
    label = text or codings[0].display
    ingredients: tuple[Ingredient, ...] = ()
    from_label = label_drug(
        terminology,
        [text, *(c.display for c in codings)],
        atc=atc,
        codes=", ".join(f"{normalised_system(c.system)}|{c.code}" for c in codings),
        source=_label_source(codings),
    )
    if from_label is not None:
        ingredients = from_label.ingredients
        if from_label.flags:  # the ATC came from the name: the code is no longer unmapped
            atc, flags = from_label.atc, from_label.flags
    # The composition tables (BDPM, site formulary) know a product's code better than its label.
    coded = code_ingredients(terminology, ((c.system, c.code) for c in codings))
    ingredients = coded or ingredients
    strength = None
    if not ingredients and not suffix:
        labels = (text, *(c.display for c in codings))
        strength = _label_strength(terminology, labels, atc, _label_source(codings))
    return _Drug(codings[0], atc, label, suffix, bool(suffix), flags, ingredients, strength)


# label_strength per (terminology, labels, ATC, source): a bulk file names the same few hundred
# products over and over.
_STRENGTHS: dict[tuple[object, tuple[str | None, ...], str | None, str], Ingredient | None] = {}
_STRENGTHS_LIMIT = 10_000


def _label_strength(
    terminology: TerminologyMemo, labels: tuple[str | None, ...], atc: str | None, source: str
) -> Ingredient | None:
    key = (terminology.terminology, labels, atc, source)
    if key in _STRENGTHS:
        return _STRENGTHS[key]
    if len(_STRENGTHS) >= _STRENGTHS_LIMIT:
        _STRENGTHS.clear()
    found = _STRENGTHS[key] = label_strength(terminology, labels, atc=atc, source=source)
    return found


def _label_source(codings: list[Coding]) -> str:
    """Where ingredients read from a label come from: an RxNorm display, or other text."""
    rxnorm = any(normalised_system(c.system) == "RXNORM" and c.display for c in codings)
    return "rxnorm-display" if rxnorm else "label"


def _unresolved_drug(reference: dict[str, Any], path: str) -> _Drug:
    text = _text(reference, "reference", path) or ""
    display = _text(reference, "display", path)
    detail = f"medication reference {text!r} not found in the message"
    return _Drug(
        coding(None, text or display or "unknown", display),
        None,
        display,
        flags=(flag(FlagCode.UNMAPPED_CODE, detail),),
    )


def _resolve_local(entry: ResourceEntry, reference: str) -> dict[str, Any] | None:
    """A reference resolved among the resource's contained resources, then the message."""
    if reference.startswith("#"):
        for path, contained in _objects(entry.resource, "contained", ""):
            if _text(contained, "id", path) == reference[1:]:
                return contained
    return entry.context.index.resolve(reference)


def _drugs(entry: ResourceEntry) -> list[_Drug]:
    """The drugs of a MedicationRequest or MedicationAdministration (``medication[x]``)."""
    resource, terminology = entry.resource, entry.terminology
    concept = _obj(resource, "medicationCodeableConcept", "")
    if concept is not None:
        drug = _drug_from_concept(concept, "medicationCodeableConcept", terminology)
        if drug is None:
            raise EntryProblem("medicationCodeableConcept", "a coding or a text", concept)
        return [drug]
    reference = _obj(resource, "medicationReference", "")
    if reference is None:
        raise EntryProblem("medication[x]", "medicationCodeableConcept or medicationReference")
    medication = _resolve_local(entry, _text(reference, "reference", "medicationReference") or "")
    if medication is None or medication.get("resourceType") != "Medication":
        return [_unresolved_drug(reference, "medicationReference")]
    return _medication_drugs(entry, medication)


def _medication_drugs(entry: ResourceEntry, medication: dict[str, Any]) -> list[_Drug]:
    """A Medication's own code, else one drug per ingredient (a compound preparation)."""
    path, terminology = "medicationReference", entry.terminology
    code = _obj(medication, "code", path)
    drug = _drug_from_concept(code, path, terminology) if code else None
    if drug is not None:
        stated = _stated_ingredients(entry, medication, path)
        complete = all(i.amount is not None for i in stated)
        if len(stated) >= 2 and (complete or not drug.ingredients):
            drug = drug._replace(ingredients=stated, strength=None)
        elif len(stated) == 1 and is_plain_strength(stated[0]) and not drug.ingredients:
            drug = drug._replace(strength=stated[0])  # the message's strength wins the label's
        return [drug]
    drugs = []
    for index, (item_path, ingredient) in enumerate(_objects(medication, "ingredient", path)):
        suffix = f"/ingredient[{index}]"
        drug = _ingredient_drug(entry, ingredient, item_path, suffix)
        if drug is not None:
            drugs.append(drug)
    if not drugs:
        raise EntryProblem(path, "a Medication with a code or ingredients")
    return drugs


def _stated_ingredients(
    entry: ResourceEntry, medication: dict[str, Any], path: str
) -> tuple[Ingredient, ...]:
    """The active ingredients a coded Medication states with their ``strength`` (a Ratio;
    source ``fhir-ingredient``). For a combination product (two or more), with every strength
    given they win over the tables (the message describes the product given); without, the
    tables' composition of the code is kept when there is one. One ingredient with its strength
    is a single-substance product's strength (``dose_strength``)."""
    found = []
    for item_path, item in _objects(medication, "ingredient", path):
        if _boolean(item, "isActive", item_path) is False:
            continue
        concept = _obj(item, "itemCodeableConcept", item_path)
        reference = _obj(item, "itemReference", item_path)
        if concept is None and reference is not None:
            target = _resolve_local(entry, _text(reference, "reference", item_path) or "")
            concept = _obj(target, "code", item_path) if target is not None else None
            concept = concept or {"text": _text(reference, "display", item_path)}
        codings = _codings(concept, item_path) if concept else []
        name = (concept and _text(concept, "text", item_path)) or next(
            (c.display for c in codings if c.display), None
        )
        if not name:
            continue
        atc = next(
            (a for c in codings if (a := entry.terminology.drug_atc(c.system, c.code))), None
        )
        found.append(_ingredient(name, atc, _obj(item, "strength", item_path), item_path))
    return tuple(found)


def _ingredient(
    name: str, atc: str | None, strength: dict[str, Any] | None, path: str
) -> Ingredient:
    """An ingredient with its strength Ratio: numerator per denominator (a denominator in a
    dose-form unit, or none, is per unit of the form)."""
    numerator = _obj(strength, "numerator", path) if strength else None
    denominator = _obj(strength, "denominator", path) if strength else None
    amount = _number(numerator, "value", path) if numerator else None
    unit = _quantity_unit(numerator, path) if numerator else None
    per_amount = (_number(denominator, "value", path) if denominator else None) or 1.0
    per_unit = (
        (_text(denominator, "code", path) or _text(denominator, "unit", path))
        if denominator
        else None
    )
    if per_unit not in _REFERENCE_UNITS:
        per_unit = None  # per tablet, per capsule...: per unit of the dose form
    return Ingredient(
        name=name,
        atc=atc,
        amount=amount,
        unit=unit if amount is not None else None,
        per_amount=per_amount if per_unit else 1.0,
        per_unit=_REFERENCE_UNITS.get(per_unit or ""),
        source="fhir-ingredient",
    )


def _quantity_unit(quantity: dict[str, Any], path: str) -> str | None:
    """A Quantity's unit: its UCUM code (``mg``, ``ug``) when coded in UCUM, else as written."""
    code = _text(quantity, "code", path)
    if code and _text(quantity, "system", path) == "http://unitsofmeasure.org":
        return code
    return _text(quantity, "unit", path) or code


# Strength denominators that are amounts of product, not dose-form units (UCUM and written).
_REFERENCE_UNITS = {"mL": "mL", "ml": "mL", "L": "L", "l": "L", "g": "g"}


def _ingredient_drug(
    entry: ResourceEntry, ingredient: dict[str, Any], path: str, suffix: str
) -> _Drug | None:
    concept = _obj(ingredient, "itemCodeableConcept", path)
    if concept is not None:
        return _drug_from_concept(concept, path, entry.terminology, suffix)
    reference = _obj(ingredient, "itemReference", path)
    if reference is None:
        return None
    target = _resolve_local(entry, _text(reference, "reference", path) or "")
    code = _obj(target, "code", path) if target is not None else None
    drug = _drug_from_concept(code, path, entry.terminology, suffix) if code else None
    if drug is None:
        unresolved = _unresolved_drug(reference, path)
        return _Drug(unresolved.coding, None, unresolved.label, suffix, True, unresolved.flags)
    return drug


# Per-day factors of the FHIR UnitsOfTime (a month counts 30 days, a year 365).
_PER_DAY = {
    "s": 86400.0,
    "min": 1440.0,
    "h": 24.0,
    "d": 1.0,
    "wk": 1 / 7,
    "mo": 1 / 30,
    "a": 1 / 365,
}
_DURATION = {
    "s": timedelta(seconds=1),
    "min": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "wk": timedelta(weeks=1),
    "mo": timedelta(days=30),
    "a": timedelta(days=365),
}
# Event codes of Timing.repeat.when standing for several events a day: AC/PC/C are every meal.
_MEAL_EVENTS = {"AC": 3, "PC": 3, "C": 3}
_UCUM = "http://unitsofmeasure.org"


class _Dosing(NamedTuple):
    """What one dosageInstruction says (all None for an order without one)."""

    path: str = ""
    dose: float | None = None
    dose_unit: str | None = None
    original_dose: str | None = None
    original_dose_unit: str | None = None
    frequency_per_day: float | None = None
    frequency_text: str | None = None
    daily_dose: float | None = None
    as_needed: bool = False
    route: str | None = None
    original_route: str | None = None
    flags: tuple[Flag, ...] = ()


def _dose_unit(quantity: dict[str, Any], path: str, terminology: TerminologyMemo) -> str | None:
    """The dose unit in one spelling: UCUM/EDQM code or label through the unit aliases."""
    return _sent_dose_unit(quantity, path, terminology)[1]


def _sent_dose_unit(
    quantity: dict[str, Any], path: str, terminology: TerminologyMemo
) -> tuple[str, str | None]:
    """(the key read, ``code`` or ``unit``; the dose unit in one spelling)."""
    code, unit = _text(quantity, "code", path), _text(quantity, "unit", path)
    for key, candidate in (("code", code), ("unit", unit)):
        if candidate and terminology.canonical_unit(candidate) != candidate.strip():
            return key, terminology.canonical_unit(candidate)
    if code and _text(quantity, "system", path) == _UCUM:
        return "code", code
    return ("unit", unit) if unit else ("code", code)


def _checked_dose_unit(
    quantity: dict[str, Any], path: str, terminology: TerminologyMemo
) -> tuple[str | None, tuple[Flag, ...]]:
    """The dose unit of a doseQuantity (or dosage.dose), flagged when no dose unit is known."""
    key, unit = _sent_dose_unit(quantity, path, terminology)
    sent = _text(quantity, key, path)
    unknown = unknown_dose_unit(sent, unit, _join(path, key))
    return unit, (flag(unknown.code, unknown.detail),) if unknown is not None else ()


def _chosen_dose_and_rate(dosage: dict[str, Any], path: str) -> tuple[str, dict[str, Any]] | None:
    """The doseAndRate to read: the 'ordered' one when several are given (not 'calculated')."""
    candidates = list(_objects(dosage, "doseAndRate", path))
    for item_path, item in candidates:
        if _concept_code(item, "type", item_path) == "ordered":
            return item_path, item
    return candidates[0] if candidates else None


def _dose_quantity(item: dict[str, Any], path: str) -> tuple[str, dict[str, Any]] | None:
    quantity = _obj(item, "doseQuantity", path)
    if quantity is not None:
        return _join(path, "doseQuantity"), quantity
    dose_range = _obj(item, "doseRange", path)
    if dose_range is None:
        return None
    range_path = _join(path, "doseRange")
    for end in ("low", "high"):  # the low end is the dose the order commits to
        quantity = _obj(dose_range, end, range_path)
        if quantity is not None:
            return _join(range_path, end), quantity
    return None


def _rate_per_day(
    item: dict[str, Any], path: str, terminology: TerminologyMemo
) -> tuple[float, str | None, str] | None:
    """An infusion rate as an amount per day, its unit and a text (``5 mg/h``)."""
    ratio = _obj(item, "rateRatio", path)
    if ratio is None:
        return None
    ratio_path = _join(path, "rateRatio")
    numerator = _obj(ratio, "numerator", ratio_path) or {}
    denominator = _obj(ratio, "denominator", ratio_path) or {}
    amount = _number(numerator, "value", _join(ratio_path, "numerator"))
    over = _number(denominator, "value", _join(ratio_path, "denominator"))
    unit = _text(denominator, "code", _join(ratio_path, "denominator"))
    if amount is None or not over or unit not in _PER_DAY:
        return None
    amount_unit = _dose_unit(numerator, _join(ratio_path, "numerator"), terminology)
    text = f"{_number_text(numerator)} {amount_unit or ''}/{_number_text(denominator)} {unit}"
    return amount / over * _PER_DAY[unit], amount_unit, text


def _frequency(repeat: dict[str, Any], as_needed: bool, path: str) -> float | None:
    """Administrations per day from Timing.repeat (frequency per period, else when/timeOfDay)."""
    count = _number(repeat, "frequency", path)
    most = _number(repeat, "frequencyMax", path)
    if most is not None and (count is None or as_needed):
        count = most  # a PRN line keeps its maximum frequency
    length = _number(repeat, "period", path)
    if length is None:
        length = _number(repeat, "periodMax", path)
    unit = _text(repeat, "periodUnit", path)
    if unit is not None and (count is not None or length is not None):
        if unit not in _PER_DAY:
            raise EntryProblem(_join(path, "periodUnit"), "one of s, min, h, d, wk, mo, a", unit)
        if length is not None and length <= 0:
            raise EntryProblem(_join(path, "period"), "a positive period", length)
        return (1.0 if count is None else count) * _PER_DAY[unit] / (length or 1.0)
    whens = _texts(repeat, "when", path)
    events = max(sum(_MEAL_EVENTS.get(w, 1) for w in whens), len(_texts(repeat, "timeOfDay", path)))
    if not events:
        return None
    days = len(_texts(repeat, "dayOfWeek", path))
    return events * days / 7 if days else float(events)


def _frequency_text(dosage: dict[str, Any], repeat: dict[str, Any], path: str) -> str | None:
    text = _text(dosage, "text", path)
    if text or not repeat:
        return text
    parts = []
    for key in ("frequency", "frequencyMax", "period", "periodMax", "periodUnit"):
        if key in repeat:
            parts.append(f"{key} {_show(repeat[key])}")
    for key in ("when", "timeOfDay", "dayOfWeek"):
        if repeat.get(key):
            parts.append(f"{key} {' '.join(map(_show, _items(repeat, key, path)))}")
    return "; ".join(parts) or None


def _route(
    dosage: dict[str, Any], path: str, terminology: TerminologyMemo
) -> tuple[str | None, str | None, tuple[Flag, ...]]:
    concept = _obj(dosage, "route", path)
    if concept is None:
        return None, None, ()
    codings = _codings(concept, _join(path, "route"))
    text = _text(concept, "text", _join(path, "route"))
    route = next(
        (
            r
            for c in codings
            if (r := terminology.route(c.system, c.code) or terminology.route(None, c.display))
        ),
        None,
    ) or terminology.route(None, text)
    original = text or next((c.display or c.code for c in codings), None)
    if route is None and (codings or text):
        return None, original, (_unmapped("route", codings or [coding(None, text or "")]),)
    return route, original, ()


def _dosing(dosage: dict[str, Any], path: str, terminology: TerminologyMemo) -> _Dosing:
    timing = _obj(dosage, "timing", path) or {}
    repeat = _obj(timing, "repeat", _join(path, "timing")) or {}
    repeat_path = _join(path, "timing.repeat")
    as_needed = bool(_boolean(dosage, "asNeededBoolean", path)) or (
        _obj(dosage, "asNeededCodeableConcept", path) is not None
    )
    frequency = _frequency(repeat, as_needed, repeat_path)
    route, original_route, flags = _route(dosage, path, terminology)
    chosen = _chosen_dose_and_rate(dosage, path)
    quantity = _dose_quantity(chosen[1], chosen[0]) if chosen else None
    rate = _rate_per_day(chosen[1], chosen[0], terminology) if chosen and not quantity else None
    dose = dose_unit = original_dose = original_unit = daily = None
    if quantity is not None:
        quantity_path, node = quantity
        dose = _number(node, "value", quantity_path)
        dose_unit, unit_flags = _checked_dose_unit(node, quantity_path, terminology)
        flags += unit_flags
        original_dose = _number_text(node) if dose is not None else None
        original_unit = _text(node, "unit", quantity_path) or _text(node, "code", quantity_path)
        if dose is not None and frequency is not None:
            daily = dose * frequency
    frequency_text = _frequency_text(dosage, repeat, path)
    if rate is not None and "frequency" not in repeat and "period" not in repeat:
        daily, dose_unit, frequency_text = rate  # a continuous infusion: rate x 24 h
    if dose is None and daily is None:
        flags += (flag(FlagCode.MISSING_DOSE, f"no dose in {path}"),)
    if frequency is None and not as_needed and daily is None:
        flags += (flag(FlagCode.MISSING_FREQUENCY, f"no frequency in {path}"),)
    return _Dosing(
        path, dose, dose_unit, original_dose, original_unit, frequency, frequency_text, daily,
        as_needed, route, original_route, flags,
    )  # fmt: skip


_NO_DOSING = _Dosing(
    flags=(
        flag(FlagCode.MISSING_DOSE, "no dosageInstruction"),
        flag(FlagCode.MISSING_FREQUENCY, "no dosageInstruction"),
    )
)

_Window = tuple[datetime | None, datetime | None]


def _order_window(resource: dict[str, Any]) -> _Window:
    """The order's own period: dispenseRequest.validityPeriod, else from authoredOn."""
    dispense = _obj(resource, "dispenseRequest", "") or {}
    validity = _obj(dispense, "validityPeriod", "dispenseRequest") or {}
    validity_path = "dispenseRequest.validityPeriod"
    start = _datetime(validity, "start", validity_path) or _datetime(resource, "authoredOn", "")
    return start, _datetime(validity, "end", validity_path)


def _duration(node: dict[str, Any] | None, path: str) -> timedelta | None:
    if node is None:
        return None
    value = _number(node, "value", path)
    unit = _text(node, "code", path) or _text(node, "unit", path)
    if value is None or unit not in _DURATION:
        return None
    return value * _DURATION[unit]


def _dosage_windows(dosages: list[tuple[str, dict[str, Any]]], order: _Window) -> list[_Window]:
    """Start and end of each dosageInstruction.

    Instructions sharing a ``sequence`` (or without one) run together; a later sequence starts
    when the previous one ends (known only through its bounds), as in a tapering regimen.
    """
    windows: list[_Window] = []
    phase_start, phase_end, previous = order[0], None, object()
    for path, dosage in dosages:
        sequence = dosage.get("sequence")
        if windows and sequence != previous:
            phase_start, phase_end = phase_end, None
        previous = sequence
        timing = _obj(dosage, "timing", path) or {}
        repeat = _obj(timing, "repeat", _join(path, "timing")) or {}
        repeat_path = _join(path, "timing.repeat")
        bounds = _obj(repeat, "boundsPeriod", repeat_path) or {}
        bounds_path = _join(repeat_path, "boundsPeriod")
        start = _datetime(bounds, "start", bounds_path) or phase_start
        length = _duration(_obj(repeat, "boundsDuration", repeat_path), repeat_path)
        end = _datetime(bounds, "end", bounds_path)
        if end is None:
            end = start + length if start is not None and length is not None else order[1]
        windows.append((start, end))
        phase_end = end if phase_end is None else max(phase_end, end or phase_end)
    return windows


_ORDER_STATUS = {
    "active": "active",
    "on-hold": "on-hold",
    "completed": "completed",
    "stopped": "stopped",
    "cancelled": "cancelled",
    "draft": "draft",
    "entered-in-error": "cancelled",  # only read to name the facts it retracts
    "unknown": "unknown",
}


def _prescriber(resource: dict[str, Any]) -> str | None:
    requester = _obj(resource, "requester", "")
    if requester is None:
        return None
    display = _text(requester, "display", "requester")
    reference = _text(requester, "reference", "requester")
    return display or (reference_id(reference) if reference else None)


def _medication_request(entry: ResourceEntry) -> list[AnyFact]:
    resource = entry.resource
    patient_id = entry.patient_id("subject")
    drugs = _drugs(entry)
    status = _coded(resource, "status", "", _ORDER_STATUS, "unknown")
    dosages = list(_objects(resource, "dosageInstruction", ""))
    order_window = _order_window(resource)
    windows = _dosage_windows(dosages, order_window) or [order_window]
    dosings = [_dosing(d, p, entry.terminology) for p, d in dosages] or [_NO_DOSING]
    common = {
        "patient_id": patient_id,
        "stay_id": entry.referenced_id("encounter"),
        "status": status,
        "prescriber": _prescriber(resource),
    }
    facts: list[AnyFact] = []
    for index, (dosing, (start, end)) in enumerate(zip(dosings, windows, strict=True)):
        for drug in drugs:
            suffix = (f"/dosage[{index}]" if len(dosings) > 1 else "") + drug.suffix
            facts.append(_order(entry, suffix, drug, dosing, start, end, common))
    return facts


def _order(
    entry: ResourceEntry,
    suffix: str,
    drug: _Drug,
    dosing: _Dosing,
    start: datetime | None,
    end: datetime | None,
    common: dict[str, Any],
) -> MedicationOrder:
    dose_fields: dict[str, Any] = {
        "dose": dosing.dose,
        "dose_unit": dosing.dose_unit,
        "original_dose": dosing.original_dose,
        "original_dose_unit": dosing.original_dose_unit,
        "daily_dose": dosing.daily_dose,
    }
    flags = drug.flags + dosing.flags
    by_strength = dose_by_strength(dosing.dose, dosing.dose_unit, dosing.daily_dose, drug.strength)
    if by_strength is not None:  # a count of tablets (or mL) read as the substance's amount
        dose_fields["dose"], dose_fields["dose_unit"] = by_strength.dose, by_strength.dose_unit
        dose_fields["daily_dose"] = by_strength.daily_dose
        flags += (flag(by_strength.flag.code, by_strength.flag.detail),)
    if drug.is_ingredient:  # the dose given is the whole preparation's, not this ingredient's
        dose_fields = {key: None for key in dose_fields}
        if not any(remark.code is FlagCode.MISSING_DOSE for remark in flags):
            detail = "dose given for the whole preparation, not per ingredient"
            flags += (flag(FlagCode.MISSING_DOSE, detail),)
    return entry.fact(
        MedicationOrder,
        fact_id=entry.fact_id(suffix),
        source=entry.source(dosing.path),
        flags=flags,
        order_id=entry.resource_id + suffix,
        drug=drug.coding,
        atc=drug.atc,
        label=drug.label,
        frequency_per_day=dosing.frequency_per_day,
        frequency_text=dosing.frequency_text,
        as_needed=dosing.as_needed,
        route=dosing.route,
        original_route=dosing.original_route,
        start=start,
        end=end,
        **dose_fields,
        **common,
        **({"ingredients": drug.ingredients} if drug.ingredients else {}),
    )


_ADMINISTRATION_STATUS = {
    "completed": "completed",
    "not-done": "not-done",
    "in-progress": "in-progress",
    "on-hold": "unknown",
    "stopped": "unknown",
    "entered-in-error": "unknown",  # only read to name the facts it retracts
    "unknown": "unknown",
}


def _medication_administration(entry: ResourceEntry) -> list[AnyFact]:
    resource = entry.resource
    time = _datetime(resource, "effectiveDateTime", "") or _period_start(
        resource, "effectivePeriod", ""
    )
    if time is None:
        raise EntryProblem("effective[x]", "the time of the administration")
    dosage = _obj(resource, "dosage", "") or {}
    quantity = _obj(dosage, "dose", "dosage")
    route, _, route_flags = _route(dosage, "dosage", entry.terminology)
    dose_unit, unit_flags = (
        _checked_dose_unit(quantity, "dosage.dose", entry.terminology) if quantity else (None, ())
    )
    common = {
        "patient_id": entry.patient_id("subject"),
        "order_id": entry.referenced_id("request"),
        "time": time,
        "status": _coded(resource, "status", "", _ADMINISTRATION_STATUS, "unknown"),
        "route": route,
        "dose": _number(quantity, "value", "dosage.dose") if quantity else None,
        "dose_unit": dose_unit,
    }
    return [
        entry.fact(
            MedicationAdministration,
            fact_id=entry.fact_id(drug.suffix),
            source=entry.source(),
            flags=drug.flags + route_flags + unit_flags,
            administration_id=entry.resource_id + drug.suffix,
            drug=drug.coding,
            atc=drug.atc,
            label=drug.label,
            **common,
        )
        for drug in _drugs(entry)
    ]


EXTRACTORS: dict[str, Callable[[ResourceEntry], list[AnyFact]]] = {
    "MedicationRequest": _medication_request,
    "MedicationAdministration": _medication_administration,
}
