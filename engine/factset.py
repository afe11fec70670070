"""Two views of the same facts: columnar (polars, for batch) and per patient (for live).

Both are built from one list of fact models, so they cannot disagree on content:

>>> from datetime import datetime
>>> from vigie.facts import Coding, LabResult, Source
>>> src = Source(feed="csv", document="labs.csv", position="line 2")
>>> k = LabResult(fact_id="l1", patient_id="p1", source=src, concept="potassium",
...               code=Coding(system="LOINC", code="2823-3"), value=5.9, unit="mmol/L",
...               time=datetime(2024, 1, 2, 8))
>>> facts = FactSet([k])
>>> facts.frame("lab").select("patient_id", "concept", "value").row(0)
('p1', 'potassium', 5.9)
>>> facts.patient("p1").latest_lab("potassium").value
5.9
"""

from __future__ import annotations

import types
import typing
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from typing import Any

import polars as pl

from vigie.facts import (
    FACT_KINDS,
    Allergy,
    AnyFact,
    Coding,
    Condition,
    Fact,
    LabResult,
    MedicationAdministration,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Source,
    Stay,
)

__all__ = ["INGREDIENT_STRUCT", "FactSet", "PatientRecord", "fact_columns", "fact_row"]

_SCALARS: dict[Any, pl.DataType] = {
    str: pl.String(),
    float: pl.Float64(),
    int: pl.Int64(),
    bool: pl.Boolean(),
    datetime: pl.Datetime("us"),
    date: pl.Date(),
}


# A combination product's ingredients (``vigie.facts.model.Ingredient``), one struct per substance.
INGREDIENT_STRUCT = pl.Struct(
    {
        "name": pl.String(),
        "atc": pl.String(),
        "amount": pl.Float64(),
        "unit": pl.String(),
        "per_amount": pl.Float64(),
        "per_unit": pl.String(),
        "source": pl.String(),
    }
)


def _dtype(annotation: Any) -> pl.DataType:
    """The polars type of a scalar fact field (Optional and Literal unwrapped)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _dtype(inner)
    if origin is typing.Literal or (isinstance(annotation, type) and issubclass(annotation, Enum)):
        return pl.String()
    if origin is tuple:
        return pl.List(pl.String())
    return _SCALARS[annotation]


def fact_columns(kind: str) -> dict[str, pl.DataType]:
    """The frame schema of a fact kind: scalar fields as is, codings and source flattened."""
    schema: dict[str, pl.DataType] = {}
    for name, info in FACT_KINDS[kind].model_fields.items():
        annotation = info.annotation
        if annotation is Source:
            for part in ("feed", "document", "message_id", "position"):
                schema[f"source_{part}"] = pl.String()
            schema["source_version_time"] = pl.Datetime("us")
        elif annotation is Coding:
            for part in ("system", "code", "display"):
                schema[f"{name}_{part}"] = pl.String()
        elif name == "flags":
            schema["flags"] = pl.List(pl.String())
        elif name == "ingredients":
            schema["ingredients"] = pl.List(INGREDIENT_STRUCT)
        else:
            schema[name] = _dtype(annotation)
    return schema


def fact_row(fact: Fact) -> dict[str, Any]:
    """One fact as a flat row matching ``fact_columns(fact.kind)``."""
    row: dict[str, Any] = {}
    for name in type(fact).model_fields:
        value = getattr(fact, name)
        if isinstance(value, Source):
            for part in ("feed", "document", "message_id", "position", "version_time"):
                row[f"source_{part}"] = getattr(value, part)
        elif isinstance(value, Coding):
            row.update({f"{name}_{k}": v for k, v in value.model_dump().items()})
        elif name == "flags":
            row["flags"] = [flag.code.value for flag in value]
        elif name == "ingredients":
            row["ingredients"] = [ingredient.model_dump() for ingredient in value]
        elif isinstance(value, Enum):
            row[name] = value.value
        elif isinstance(value, tuple):
            row[name] = list(value)
        else:
            row[name] = value
    return row


@dataclass(slots=True)
class PatientRecord:
    """Everything known about one patient, sorted by time where facts have one."""

    patient_id: str
    patient: Patient | None = None
    stays: list[Stay] = field(default_factory=list)
    orders: list[MedicationOrder] = field(default_factory=list)
    administrations: list[MedicationAdministration] = field(default_factory=list)
    labs: dict[str, list[LabResult]] = field(default_factory=dict)
    unmapped_labs: list[LabResult] = field(default_factory=list)
    observations: dict[str, list[Observation]] = field(default_factory=dict)
    conditions: list[Condition] = field(default_factory=list)
    allergies: list[Allergy] = field(default_factory=list)
    pregnancies: list[Pregnancy] = field(default_factory=list)

    def add(self, fact: AnyFact) -> None:
        match fact:
            case Patient():
                self.patient = fact
            case Stay():
                self.stays.append(fact)
            case MedicationOrder():
                self.orders.append(fact)
            case MedicationAdministration():
                self.administrations.append(fact)
            case LabResult(concept=None):
                self.unmapped_labs.append(fact)
            case LabResult(concept=str(concept)):
                self.labs.setdefault(concept, []).append(fact)
            case Observation(concept=None):
                pass  # unmapped observations stay in the columnar view for quality reports
            case Observation(concept=str(concept)):
                self.observations.setdefault(concept, []).append(fact)
            case Condition():
                self.conditions.append(fact)
            case Allergy():
                self.allergies.append(fact)
            case Pregnancy():
                self.pregnancies.append(fact)

    def sort(self) -> None:
        for labs in self.labs.values():
            labs.sort(key=lambda fact: (fact.time, fact.fact_id))
        for observations in self.observations.values():
            observations.sort(key=lambda fact: (fact.time, fact.fact_id))
        self.stays.sort(key=lambda stay: (stay.admit_time or datetime.min, stay.stay_id))
        self.administrations.sort(key=lambda adm: (adm.time, adm.fact_id))

    def latest_lab(self, concept: str) -> LabResult | None:
        series = self.labs.get(concept)
        return series[-1] if series else None

    def latest_observation(self, concept: str) -> Observation | None:
        series = self.observations.get(concept)
        return series[-1] if series else None


class FactSet:
    """An immutable collection of facts with its columnar and per-patient views.

    Facts with the same (kind, fact_id) replace each other, the last one winning — the same
    rule the store applies, so a re-sent message updates rather than duplicates. Patients are
    merged instead: a sparse record keeps the birth date and sex an earlier one gave.
    """

    def __init__(self, facts: Iterable[AnyFact]) -> None:
        unique: dict[tuple[str, str], AnyFact] = {}
        for fact in facts:
            key = (fact.kind, fact.fact_id)
            older = unique.get(key)
            if isinstance(fact, Patient) and isinstance(older, Patient):
                fact = fact.merged_over(older)
            unique[key] = fact
        self._by_kind: dict[str, list[AnyFact]] = defaultdict(list)
        for fact in unique.values():
            self._by_kind[fact.kind].append(fact)
        self._frames: dict[str, pl.DataFrame] = {}
        self._patients: dict[str, PatientRecord] | None = None

    def __len__(self) -> int:
        return sum(len(facts) for facts in self._by_kind.values())

    def __iter__(self) -> Iterator[AnyFact]:
        for kind in FACT_KINDS:
            yield from self._by_kind.get(kind, ())

    def of_kind(self, kind: str) -> list[AnyFact]:
        return list(self._by_kind.get(kind, ()))

    def counts(self) -> dict[str, int]:
        """Number of facts per kind, every kind listed."""
        return {kind: len(self._by_kind.get(kind, ())) for kind in FACT_KINDS}

    def frame(self, kind: str) -> pl.DataFrame:
        """The columnar view of one kind (an empty frame with the full schema if none)."""
        if kind not in self._frames:
            rows = [fact_row(fact) for fact in self._by_kind.get(kind, ())]
            self._frames[kind] = pl.DataFrame(rows, schema=fact_columns(kind), orient="row")
        return self._frames[kind]

    def frames(self) -> dict[str, pl.DataFrame]:
        return {kind: self.frame(kind) for kind in FACT_KINDS}

    def patients(self) -> dict[str, PatientRecord]:
        """The per-patient view, keyed by patient id."""
        if self._patients is None:
            records: dict[str, PatientRecord] = {}
            for fact in self:
                record = records.setdefault(fact.patient_id, PatientRecord(fact.patient_id))
                record.add(fact)
            for record in records.values():
                record.sort()
            self._patients = records
        return self._patients

    def patient(self, patient_id: str) -> PatientRecord:
        return self.patients().get(patient_id) or PatientRecord(patient_id)
