"""Assemble one chunk of the hospital into polars tables in the canonical CSV layout.

Times stay integer epoch seconds (UTC) here; exporters format them. Columns whose name starts
with ``_`` are helpers for the HL7 and FHIR exporters and are not written to CSV.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from vigie.synthetic import clinical
from vigie.synthetic.formulary import Formulary, schedule_texts
from vigie.synthetic.hospital import (
    Period,
    Stays,
    Ward,
    anthropometrics,
    generate_stays,
    renal_baseline,
    renal_function,
)
from vigie.synthetic.labs import CONCEPTS, EMISSIONS, Labs, generate_labs, lab_baselines
from vigie.synthetic.orders import Orders, background_orders, concat_orders
from vigie.synthetic.scenarios import plan_scenarios
from vigie.synthetic.truth import truth_frame

__all__ = ["KINDS", "IdCounters", "build_chunk"]

KINDS = (
    "patients",
    "stays",
    "orders",
    "administrations",
    "labs",
    "observations",
    "conditions",
    "allergies",
    "pregnancies",
)

_PREFIX = {
    "patients": ("PAT", 7),
    "stays": ("SEJ", 7),
    "orders": ("ORD", 8),
    "administrations": ("ADM", 9),
    "labs": ("LAB", 9),
    "observations": ("OBS", 8),
    "conditions": ("CND", 8),
    "allergies": ("ALG", 7),
    "pregnancies": ("GRS", 6),
}

OBSERVATION_CODES = {
    "weight": ("29463-7", "Poids corporel", "kg"),
    "height": ("8302-2", "Taille", "cm"),
}


@dataclass
class IdCounters:
    """Running numbers per kind, so ids stay unique across chunks."""

    next: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_PREFIX, 1))

    def take(self, kind: str, n: int) -> np.ndarray:
        prefix, width = _PREFIX[kind]
        first = self.next[kind]
        self.next[kind] += n
        if n == 0:
            return np.array([], dtype="<U1")
        numbers = np.arange(first, first + n).astype(str)
        return np.char.add(prefix, np.char.zfill(numbers, width))


def _opt(values: np.ndarray) -> pl.Series:
    """Epoch seconds with -1 meaning none → nullable Int64."""
    return pl.Series(values, dtype=pl.Int64).set(pl.Series(values < 0), None)


def _patients_and_stays(stays: Stays, pid: np.ndarray, sid: np.ndarray) -> tuple[pl.DataFrame, ...]:
    patients = pl.DataFrame({"patient_id": pid, "birth_date": stays.birth, "sex": stays.sex})
    table = pl.DataFrame(
        {
            "stay_id": sid,
            "patient_id": pid,
            "ward": stays.ward,
            "bed": stays.bed,
            "admit_time": stays.admit,
            "discharge_time": _opt(stays.discharge),
            "status": np.where(stays.discharge < 0, "in-progress", "finished"),
        }
    )
    return patients, table


def _orders_table(
    rng: np.random.Generator,
    orders: Orders,
    formulary: Formulary,
    stays: Stays,
    oid: np.ndarray,
    pid: np.ndarray,
    sid: np.ndarray,
) -> pl.DataFrame:
    drug = orders.drug
    keys = [
        f"{f}|{p}|{u}"
        for f, p, u in zip(orders.frequency, orders.period, orders.period_unit, strict=True)
    ]
    texts = {
        k: schedule_texts(int(k.split("|")[0]), float(k.split("|")[1]), k.split("|")[2])
        for k in set(keys)
    }
    doctor = rng.integers(1, 7, len(orders)).astype(str)
    return pl.DataFrame(
        {
            "order_id": oid,
            "patient_id": pid[orders.stay],
            "stay_id": sid[orders.stay],
            "drug_system": np.full(len(orders), "ATC"),
            "drug_code": formulary.atc[drug],
            "atc": formulary.atc[drug],
            "label": formulary.label[drug],
            "dose": orders.dose,
            "dose_unit": formulary.unit[drug],
            "frequency_per_day": np.round(orders.per_day(), 6),
            "frequency_text": [texts[k][0] for k in keys],
            "as_needed": orders.as_needed,
            "route": formulary.route[drug],
            "start": orders.start,
            "end": _opt(orders.end),
            "status": orders.status,
            "prescriber": np.char.add(
                np.char.add("DR-", stays.ward[orders.stay]), np.char.add("-", doctor)
            ),
            "_frequency": orders.frequency,
            "_period": orders.period,
            "_period_unit": orders.period_unit,
            "_hl7_pattern": [texts[k][1] for k in keys],
            "_ward": stays.ward[orders.stay],
            "_bed": stays.bed[orders.stay],
        },
        schema_overrides={"dose": pl.Float64, "frequency_per_day": pl.Float64},
    )


def _labs_table(labs: Labs, lid: np.ndarray, pid: np.ndarray, sid: np.ndarray) -> pl.DataFrame:
    n = len(labs)
    code, unit, display = (np.empty(n, dtype=object) for _ in range(3))
    for c, name in enumerate(CONCEPTS):
        for e, spec in enumerate(EMISSIONS[name]):
            rows = (labs.concept == c) & (labs.emission == e)
            code[rows], unit[rows], display[rows] = spec.code, spec.unit, spec.display
    return pl.DataFrame(
        {
            "lab_id": lid,
            "patient_id": pid[labs.stay],
            "code_system": np.full(n, "LOINC"),
            "code": code.astype(str),
            "value": labs.value,
            "unit": unit.astype(str),
            "time": labs.time,
            "reference_low": labs.low,
            "reference_high": labs.high,
            "_stay_id": sid[labs.stay],
            "_display": display.astype(str),
            "_concept": np.array(CONCEPTS)[labs.concept],
        }
    ).with_columns(pl.col("reference_low", "reference_high").fill_nan(None))


def _observations_table(
    rng: np.random.Generator,
    stays: Stays,
    period: Period,
    ids: IdCounters,
    pid: np.ndarray,
    sid: np.ndarray,
) -> pl.DataFrame:
    stay, concept, time, value = clinical.observations(rng, stays, period)
    spec = np.array([OBSERVATION_CODES[c] for c in concept]).reshape(-1, 3)
    return pl.DataFrame(
        {
            "observation_id": ids.take("observations", len(stay)),
            "patient_id": pid[stay],
            "code_system": np.full(len(stay), "LOINC"),
            "code": spec[:, 0],
            "value": value,
            "unit": spec[:, 2],
            "time": time,
            "_stay_id": sid[stay],
            "_display": spec[:, 1],
        },
        schema_overrides={"value": pl.Float64},
    )


def _conditions_table(
    rng: np.random.Generator,
    stays: Stays,
    orders: Orders,
    formulary: Formulary,
    pregnant: np.ndarray,
    ids: IdCounters,
    pid: np.ndarray,
    sid: np.ndarray,
) -> pl.DataFrame:
    stay, code, onset = clinical.conditions(rng, stays, orders, formulary, pregnant)
    return pl.DataFrame(
        {
            "condition_id": ids.take("conditions", len(stay)),
            "patient_id": pid[stay],
            "code_system": np.full(len(stay), "ICD10"),
            "code": code,
            "display": [clinical.DIAGNOSES[c] for c in code],
            "onset": onset,
            "abatement": pl.Series([None] * len(stay), dtype=pl.Int64),
            "clinical_status": np.full(len(stay), "active"),
            "_stay_id": sid[stay],
        }
    )


def _TEXT(*names: str) -> dict[str, type[pl.Utf8]]:
    return dict.fromkeys(names, pl.Utf8)


def _allergies_table(
    rows: list[tuple[int, str, int]], ids: IdCounters, pid: np.ndarray
) -> pl.DataFrame:
    rows = sorted(rows)
    allergens = [clinical.ALLERGENS[k] for _, k, _ in rows]
    return pl.DataFrame(
        {
            "allergy_id": ids.take("allergies", len(rows)),
            "patient_id": [pid[i] for i, _, _ in rows],
            "substance_system": [a.system for a in allergens],
            "substance_code": [a.code for a in allergens],
            "substance_display": [a.display for a in allergens],
            "atc": [a.atc for a in allergens],
            "criticality": ["high" if a.atc.startswith("J01") else "low" for a in allergens],
            "recorded": [r for _, _, r in rows],
            "clinical_status": ["active"] * len(rows),
        },
        schema_overrides={
            "recorded": pl.Int64,
            **_TEXT(
                "allergy_id",
                "patient_id",
                "substance_system",
                "substance_code",
                "substance_display",
                "atc",
                "criticality",
                "clinical_status",
            ),
        },
    )


def _pregnancies_table(
    rows: list[tuple[int, str, int, int]], ids: IdCounters, pid: np.ndarray
) -> pl.DataFrame:
    rows = sorted(rows)
    return pl.DataFrame(
        {
            "pregnancy_id": ids.take("pregnancies", len(rows)),
            "patient_id": [pid[i] for i, *_ in rows],
            "status": [s for _, s, _, _ in rows],
            "recorded": [r for _, _, r, _ in rows],
            "estimated_due_date": [d for *_, d in rows],
        },
        schema_overrides={
            "recorded": pl.Int64,
            "estimated_due_date": pl.Int64,
            **_TEXT("pregnancy_id", "patient_id", "status"),
        },
    )


def _administrations_table(
    stays: Stays, orders: Orders, table: pl.DataFrame, period: Period, ids: IdCounters
) -> pl.DataFrame:
    row, time = clinical.administrations(stays, orders, period)
    picked = table[row.tolist()] if len(row) else table.clear()
    return picked.select(
        pl.Series("administration_id", ids.take("administrations", len(row))),
        "order_id",
        "patient_id",
        "drug_system",
        "drug_code",
        "atc",
        "label",
        "dose",
        "dose_unit",
        "route",
        pl.Series("time", time, dtype=pl.Int64),
        pl.lit("completed").alias("status"),
        pl.col("stay_id").alias("_stay_id"),
    )


def build_chunk(
    rng: np.random.Generator,
    wards: list[Ward],
    period: Period,
    formulary: Formulary,
    rates: Mapping[str, float],
    ids: IdCounters,
    min_cases: int = 0,
) -> dict[str, pl.DataFrame]:
    """Every table of a group of wards, plus ``truth``."""
    stays = generate_stays(rng, wards, period)
    anthropometrics(rng, stays)
    renal_baseline(rng, stays)
    lab_baselines(rng, stays)
    plan = plan_scenarios(rng, stays, period, formulary, rates, min_cases)
    allergy_rows, prefixes = clinical.background_allergies(rng, stays, plan.chosen)
    pregnancy_rows, pregnant = clinical.background_pregnancies(rng, stays, period, plan.chosen)
    cg, egfr = renal_function(stays, stays.admit)
    background = background_orders(
        rng, stays, formulary, period, plan.chosen, pregnant, prefixes, np.minimum(cg, egfr)
    )
    orders = concat_orders([background, plan.orders])
    labs = generate_labs(rng, stays, orders, formulary, period, plan.labs)
    pid, sid = ids.take("patients", len(stays)), ids.take("stays", len(stays))
    oid = ids.take("orders", len(orders))
    patients, stays_table = _patients_and_stays(stays, pid, sid)
    orders_table = _orders_table(rng, orders, formulary, stays, oid, pid, sid)
    all_pregnancies = pregnancy_rows + plan.pregnancies
    pregnant_now = np.zeros(len(stays), bool)
    for i, status, *_ in all_pregnancies:
        pregnant_now[i] |= status == "pregnant"
    return {
        "patients": patients,
        "stays": stays_table,
        "orders": orders_table,
        "administrations": _administrations_table(stays, orders, orders_table, period, ids),
        "labs": _labs_table(labs, ids.take("labs", len(labs)), pid, sid),
        "observations": _observations_table(rng, stays, period, ids, pid, sid),
        "conditions": _conditions_table(rng, stays, orders, formulary, pregnant_now, ids, pid, sid),
        "allergies": _allergies_table(allergy_rows + plan.allergies, ids, pid),
        "pregnancies": _pregnancies_table(all_pregnancies, ids, pid),
        "truth": truth_frame(plan, labs, stays, period, orders, formulary, oid, pid, sid),
    }
