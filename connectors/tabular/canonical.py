"""Vigie's canonical CSV layout: facts written as the tables ``vigie-synthetic.toml`` reads.

One file per kind (``patients.csv``, ``stays.csv``, ``orders.csv``...), the columns of
``KINDS[kind].canonical``, UTF-8, comma delimiter, dot decimals, ISO 8601 times (fact times are
naive UTC: written with ``+00:00``), several ATC codes in one cell separated by ``|``. Reading
a written file back with ``vigie.connectors.tabular.connector`` gives the same facts (sources
aside) for facts
in the form the reader makes: the ``original_*`` fields hold the text written, the drug's
``display`` is its label.

>>> import tempfile
>>> sorted(write_canonical_csv([], tempfile.mkdtemp()))[:3]
['administrations', 'allergies', 'conditions']
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from vigie.connectors.tabular.mapping import KINDS, parse_number
from vigie.facts import (
    AnyFact,
    FlagCode,
    LabResult,
    MedicationAdministration,
    MedicationOrder,
    Observation,
)
from vigie.terminology import Terminology, UnknownUnit, default_terminology

__all__ = ["CANONICAL_FILES", "format_number", "write_canonical_csv"]

CANONICAL_FILES = {kind: f"{kind}.csv" for kind in KINDS}


def write_canonical_csv(
    facts: Iterable[AnyFact], out_dir: str | Path, terminology: Terminology | None = None
) -> dict[str, Path]:
    """Write facts as the canonical layout (``vigie-synthetic.toml``): one file per kind.

    Every kind's file is written, header only when it has no facts. Values are written so that
    reading them back gives the same facts: a lab's value as received when it converts back to
    the same canonical value, else the canonical value and unit.
    """
    term = terminology or default_terminology()
    rows: dict[str, list[dict[str, str]]] = {kind: [] for kind in KINDS}
    for fact in facts:
        kind = _KIND_OF_FACT[fact.kind]
        rows[kind].append({k: _cell(v) for k, v in _WRITERS[kind](fact, term).items()})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, table in rows.items():
        paths[kind] = out / CANONICAL_FILES[kind]
        with paths[kind].open("w", encoding="utf-8", newline="") as handle:
            # CRLF as RFC 4180 says: the csv module then also quotes cells holding a bare CR.
            writer = csv.DictWriter(handle, KINDS[kind].canonical, lineterminator="\r\n")
            writer.writeheader()
            writer.writerows(table)
    return paths


_KIND_OF_FACT = {
    "patient": "patients",
    "stay": "stays",
    "medication_order": "orders",
    "medication_administration": "administrations",
    "lab": "labs",
    "observation": "observations",
    "condition": "conditions",
    "allergy": "allergies",
    "pregnancy": "pregnancies",
}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float | int):
        return format_number(float(value))
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC).isoformat()  # fact times are naive UTC: say so
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, tuple):
        return "|".join(value)
    return str(value.value if hasattr(value, "value") else value)


def format_number(value: float) -> str:
    """The shortest text that reads back as the same float."""
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _as_written(original: str | None, value: float | None) -> str | float | None:
    """The received text when it reads back as ``value`` in the canonical layout."""
    if original is not None and value is not None and parse_number(original) == value:
        return original
    return value


def _drug_row(fact: MedicationOrder | MedicationAdministration) -> dict[str, Any]:
    # An ATC found from the drug's name is derived, not received: left out, the reader finds it
    # again from the label, flagged the same way.
    by_name = any(flag.code is FlagCode.ATC_FROM_NAME for flag in fact.flags)
    return {
        "patient_id": fact.patient_id,
        "drug_system": fact.drug.system,
        "drug_code": fact.drug.code,
        "atc": None if by_name else fact.atc,
        "label": fact.label or fact.drug.display,
        "dose_unit": fact.dose_unit,
        "status": fact.status,
    }


def _order_row(fact: MedicationOrder, term: Terminology) -> dict[str, Any]:
    original_route = fact.original_route
    if original_route and term.route(None, original_route) != fact.route:
        original_route = None
    # A dose read through the product's strength is derived: written as received (tablets, or
    # a bare number), the reader reads it again through the label, flagged the same way.
    by_strength = any(flag.code is FlagCode.DOSE_FROM_STRENGTH for flag in fact.flags)
    dose = fact.original_dose if by_strength else _as_written(fact.original_dose, fact.dose)
    row = _drug_row(fact) | {
        "order_id": fact.order_id,
        "stay_id": fact.stay_id,
        "dose": dose,
        "frequency_per_day": fact.frequency_per_day,
        "frequency_text": fact.frequency_text,
        "as_needed": fact.as_needed,
        "route": original_route or fact.route,
        "start": fact.start,
        "end": fact.end,
        "prescriber": fact.prescriber,
    }
    if by_strength:
        row["dose_unit"] = fact.original_dose_unit
    return row


def _administration_row(fact: MedicationAdministration, term: Terminology) -> dict[str, Any]:
    return _drug_row(fact) | {
        "administration_id": fact.administration_id,
        "order_id": fact.order_id,
        "dose": fact.dose,
        "route": fact.route,
        "time": fact.time,
    }


def _value_cells(fact: LabResult | Observation, term: Terminology) -> tuple[Any, Any]:
    """The value and unit to write: as received if they convert back to the same value."""
    original, unit = fact.original_value, fact.original_unit
    if fact.value is None:
        return original, unit
    number = None if original is None else parse_number(original)
    if number is not None and fact.concept is not None:
        try:
            if term.to_canonical(fact.concept, number, unit) == (fact.value, fact.unit):
                return original, unit
        except UnknownUnit:
            pass
    return fact.value, fact.unit


def _lab_row(fact: LabResult, term: Terminology) -> dict[str, Any]:
    value, unit = _value_cells(fact, term)
    has_range = (fact.reference_low, fact.reference_high) != (None, None)
    if has_range and fact.concept and not _is_canonical(term, fact.concept, unit):
        # The range is in the canonical unit: the written value and unit must be too.
        unit = term.concepts[fact.concept].unit
        value = value if fact.value is None else fact.value
    range_cells = {"reference_low": fact.reference_low, "reference_high": fact.reference_high}
    return _measure_row(fact, "lab_id", value, unit) | range_cells


def _is_canonical(term: Terminology, concept: str, unit: str | None) -> bool:
    try:
        return term.to_canonical(concept, 1.0, unit) == (1.0, term.concepts[concept].unit)
    except UnknownUnit:
        return False


def _observation_row(fact: Observation, term: Terminology) -> dict[str, Any]:
    return _measure_row(fact, "observation_id", *_value_cells(fact, term))


def _measure_row(
    fact: LabResult | Observation, id_column: str, value: Any, unit: str | None
) -> dict[str, Any]:
    """The cells labs and observations share, in the layout's column order."""
    return {
        id_column: fact.fact_id,
        "patient_id": fact.patient_id,
        "code_system": fact.code.system,
        "code": fact.code.code,
        "value": value,
        "unit": unit,
        "time": fact.time,
    }


_WRITERS: dict[str, Callable[[Any, Terminology], dict[str, Any]]] = {
    "patients": lambda f, _: {"patient_id": f.patient_id, "birth_date": f.birth_date, "sex": f.sex},
    "stays": lambda f, _: {name: getattr(f, name) for name in KINDS["stays"].canonical},
    "orders": _order_row,
    "administrations": _administration_row,
    "labs": _lab_row,
    "observations": _observation_row,
    "conditions": lambda f, _: {
        "condition_id": f.fact_id,
        "patient_id": f.patient_id,
        "code_system": f.code.system,
        "code": f.code.code,
        "display": f.code.display,
        "onset": f.onset,
        "abatement": f.abatement,
        "clinical_status": f.clinical_status,
    },
    "allergies": lambda f, _: {
        "allergy_id": f.fact_id,
        "patient_id": f.patient_id,
        "substance_system": f.substance.system,
        "substance_code": f.substance.code,
        "substance_display": f.substance.display,
        "atc": f.atc,
        "criticality": f.criticality,
        "recorded": f.recorded,
        "clinical_status": f.clinical_status,
    },
    "pregnancies": lambda f, _: {
        "pregnancy_id": f.fact_id,
        "patient_id": f.patient_id,
        "status": f.status,
        "recorded": f.recorded,
        "estimated_due_date": f.estimated_due_date,
    },
}
