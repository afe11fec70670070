"""The synthetic hospital as ``vigie.facts`` models, for tests of small hospitals only.

The generation path never builds per-fact objects; this module turns the polars tables of a
small hospital into the facts a perfect connector would give, so that round-trip tests can
compare each format's connector output with them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from typing import Any

import polars as pl

from vigie.facts import (
    Allergy,
    AnyFact,
    Coding,
    Condition,
    LabResult,
    MedicationAdministration,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Sex,
    Source,
    Stay,
)
from vigie.synthetic.generator import hospital_tables
from vigie.terminology import default_terminology

__all__ = ["canonical_facts", "canonical_hospital", "tables_to_facts"]

_SOURCE = Source(feed="synthetic", document="memory")


def _t(seconds: int | None) -> datetime | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)


def _d(seconds: int) -> date:
    return datetime.fromtimestamp(seconds, UTC).date()


def _rows(frame: pl.DataFrame) -> Iterator[dict[str, Any]]:
    yield from frame.iter_rows(named=True)


def _orders(frame: pl.DataFrame) -> Iterator[AnyFact]:
    for r in _rows(frame):
        yield MedicationOrder(
            fact_id=r["order_id"],
            patient_id=r["patient_id"],
            source=_SOURCE,
            order_id=r["order_id"],
            stay_id=r["stay_id"],
            drug=Coding(system="ATC", code=r["drug_code"], display=r["label"]),
            atc=r["atc"],
            label=r["label"],
            dose=r["dose"],
            dose_unit=r["dose_unit"],
            frequency_per_day=r["frequency_per_day"],
            frequency_text=r["frequency_text"],
            daily_dose=r["dose"] * r["frequency_per_day"],
            as_needed=r["as_needed"],
            route=r["route"],
            start=_t(r["start"]),
            end=_t(r["end"]),
            status=r["status"],
            prescriber=r["prescriber"],
        )


def _measures(frame: pl.DataFrame, kind: str) -> Iterator[AnyFact]:
    terms = default_terminology()
    model = LabResult if kind == "labs" else Observation
    for r in _rows(frame):
        concept = terms.lab_concept("LOINC", r["code"])
        assert concept is not None, r["code"]
        value, unit = terms.to_canonical(concept.name, r["value"], r["unit"])
        extra = (
            {"reference_low": r["reference_low"], "reference_high": r["reference_high"]}
            if kind == "labs"
            else {}
        )
        yield model(
            fact_id=r["lab_id" if kind == "labs" else "observation_id"],
            patient_id=r["patient_id"],
            source=_SOURCE,
            concept=concept.name,
            code=Coding(system="http://loinc.org", code=r["code"]),
            value=value,
            unit=unit,
            original_value=str(r["value"]),
            original_unit=r["unit"],
            time=_t(r["time"]),
            **extra,
        )


def tables_to_facts(tables: Mapping[str, pl.DataFrame]) -> list[AnyFact]:
    """Facts of one chunk's tables (see ``vigie.synthetic.hospital_tables``)."""
    facts: list[AnyFact] = []
    for r in _rows(tables["patients"]):
        facts.append(
            Patient(
                fact_id=r["patient_id"],
                patient_id=r["patient_id"],
                source=_SOURCE,
                birth_date=_d(r["birth_date"]),
                sex=Sex(r["sex"]),
            )
        )
    for r in _rows(tables["stays"]):
        facts.append(
            Stay(
                fact_id=r["stay_id"],
                patient_id=r["patient_id"],
                source=_SOURCE,
                stay_id=r["stay_id"],
                ward=r["ward"],
                bed=r["bed"],
                admit_time=_t(r["admit_time"]),
                discharge_time=_t(r["discharge_time"]),
                status=r["status"],
            )
        )
    facts.extend(_orders(tables["orders"]))
    for r in _rows(tables["administrations"]):
        facts.append(
            MedicationAdministration(
                fact_id=r["administration_id"],
                patient_id=r["patient_id"],
                source=_SOURCE,
                administration_id=r["administration_id"],
                order_id=r["order_id"],
                drug=Coding(system="ATC", code=r["drug_code"], display=r["label"]),
                atc=r["atc"],
                label=r["label"],
                dose=r["dose"],
                dose_unit=r["dose_unit"],
                route=r["route"],
                time=_t(r["time"]),
                status=r["status"],
            )
        )
    facts.extend(_measures(tables["labs"], "labs"))
    facts.extend(_measures(tables["observations"], "observations"))
    for r in _rows(tables["conditions"]):
        facts.append(
            Condition(
                fact_id=r["condition_id"],
                patient_id=r["patient_id"],
                source=_SOURCE,
                code=Coding(system="ICD10", code=r["code"], display=r["display"]),
                icd10=r["code"],
                onset=_t(r["onset"]),
                clinical_status=r["clinical_status"],
            )
        )
    for r in _rows(tables["allergies"]):
        facts.append(
            Allergy(
                fact_id=r["allergy_id"],
                patient_id=r["patient_id"],
                source=_SOURCE,
                substance=Coding(
                    system=r["substance_system"],
                    code=r["substance_code"],
                    display=r["substance_display"],
                ),
                atc=(r["atc"],) if r["atc"] else (),
                criticality=r["criticality"],
                recorded=_t(r["recorded"]),
                clinical_status=r["clinical_status"],
            )
        )
    for r in _rows(tables["pregnancies"]):
        facts.append(
            Pregnancy(
                fact_id=r["pregnancy_id"],
                patient_id=r["patient_id"],
                source=_SOURCE,
                status=r["status"],
                recorded=_t(r["recorded"]),
                estimated_due_date=_d(r["estimated_due_date"]),
            )
        )
    return facts


def canonical_hospital(
    beds: int,
    days: int,
    seed: int,
    start: datetime | None = None,
    rates: Mapping[str, float] | None = None,
    min_cases: int = 0,
) -> tuple[list[AnyFact], pl.DataFrame]:
    """Every fact of a (small) synthetic hospital, as a perfect connector would read it, and its
    ground truth (the rows of ``truth.csv``)."""
    facts: list[AnyFact] = []
    truths: list[pl.DataFrame] = []
    for _, tables in hospital_tables(beds, days, seed, start, rates, min_cases=min_cases):
        facts.extend(tables_to_facts(tables))
        truths.append(tables["truth"])
    return facts, pl.concat(truths)


def canonical_facts(
    beds: int,
    days: int,
    seed: int,
    start: datetime | None = None,
    rates: Mapping[str, float] | None = None,
) -> list[AnyFact]:
    """Every fact of a (small) synthetic hospital, as a perfect connector would read it."""
    return canonical_hospital(beds, days, seed, start, rates)[0]
