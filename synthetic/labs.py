"""Laboratory time series: an admission panel, then panels every few days (daily in ICU).

Each patient has a baseline per analyte; every result is the baseline with bounded noise, so
background values never cross a covered rule's threshold (creatinine ±2.5 %: never a KDIGO rise;
K+ 3.6–5.0; Na+ ≥ 134; glucose ≥ 3.8; INR under a VKA ≤ 3.3 ...). Injected situations add
their own results and may suppress a series, whole or from a time on (``ScenarioLabs``). Codes
are LOINC; creatinine is sent in µmol/L or mg/dL and glucose in mmol/L, g/L or mg/dL, per
patient, to exercise conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vigie.synthetic.arrays import IntArray
from vigie.synthetic.formulary import Formulary
from vigie.synthetic.hospital import (
    DAY,
    HOUR,
    WARD_PROFILES,
    Period,
    Stays,
    ckd_epi_2021,
)
from vigie.synthetic.orders import Orders

__all__ = [
    "CONCEPTS",
    "EMISSIONS",
    "Emission",
    "Labs",
    "ScenarioLabs",
    "generate_labs",
    "lab_baselines",
    "reference_high",
]


@dataclass(frozen=True)
class Emission:
    """How a concept is sent: LOINC code, UCUM unit, factor from the canonical value, decimals."""

    code: str
    display: str
    unit: str
    per_canonical: float
    decimals: int


CONCEPTS: tuple[str, ...] = (
    "creatinine",
    "egfr",
    "potassium",
    "sodium",
    "glucose",
    "platelets",
    "neutrophils",
    "inr",
    "ck",
    "alt",
    "digoxin",
    "gentamicin",
    "amikacin",
    "vancomycin",
)

# Per concept, the ways it is sent; index 0 is the canonical unit (used by injected results).
EMISSIONS: dict[str, tuple[Emission, ...]] = {
    "creatinine": (
        Emission("14682-9", "Créatinine", "umol/L", 1.0, 0),
        Emission("2160-0", "Créatinine", "mg/dL", 1 / 88.42, 2),
    ),
    "egfr": (Emission("62238-1", "DFG estimé CKD-EPI", "mL/min/{1.73_m2}", 1.0, 0),),
    "potassium": (Emission("2823-3", "Potassium", "mmol/L", 1.0, 1),),
    "sodium": (Emission("2951-2", "Sodium", "mmol/L", 1.0, 0),),
    "glucose": (
        Emission("15074-8", "Glucose", "mmol/L", 1.0, 2),
        Emission("2345-7", "Glucose", "g/L", 1 / 5.55062, 2),
        Emission("2345-7", "Glucose", "mg/dL", 1 / 0.0555062, 0),
    ),
    "platelets": (Emission("777-3", "Plaquettes", "10*9/L", 1.0, 0),),
    "neutrophils": (Emission("751-8", "Polynucléaires neutrophiles", "10*9/L", 1.0, 1),),
    "inr": (Emission("6301-6", "INR", "{INR}", 1.0, 1),),
    "ck": (Emission("2157-6", "Créatine kinase", "U/L", 1.0, 0),),
    "alt": (Emission("1742-6", "ALAT", "U/L", 1.0, 0),),
    "digoxin": (Emission("10535-3", "Digoxinémie", "ug/L", 1.0, 2),),
    "gentamicin": (Emission("3665-7", "Gentamicinémie", "mg/L", 1.0, 1),),
    "amikacin": (Emission("3319-1", "Amikacinémie", "mg/L", 1.0, 1),),
    "vancomycin": (Emission("4092-3", "Vancocinémie", "mg/L", 1.0, 1),),
}

# Reference ranges in the canonical unit: (low, high) for men, then women; nan when none.
_NAN = float("nan")
_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "creatinine": ((64, 104), (49, 90)),
    "egfr": ((90, _NAN), (90, _NAN)),
    "potassium": ((3.5, 5.0), (3.5, 5.0)),
    "sodium": ((136, 145), (136, 145)),
    "glucose": ((3.9, 5.8), (3.9, 5.8)),
    "platelets": ((150, 400), (150, 400)),
    "neutrophils": ((1.8, 7.5), (1.8, 7.5)),
    "inr": ((0.8, 1.2), (0.8, 1.2)),
    "ck": ((_NAN, 190), (_NAN, 170)),
    "alt": ((_NAN, 40), (_NAN, 35)),
    "digoxin": ((0.5, 2.0), (0.5, 2.0)),
    "gentamicin": ((_NAN, _NAN), (_NAN, _NAN)),
    "amikacin": ((_NAN, _NAN), (_NAN, _NAN)),
    "vancomycin": ((_NAN, _NAN), (_NAN, _NAN)),
}


def reference_high(concept: str, female: np.ndarray) -> np.ndarray:
    men, women = _RANGES[concept]
    return np.where(female, women[1], men[1])


def lab_baselines(rng: np.random.Generator, stays: Stays) -> None:
    """Per-patient analyte baselines (canonical units), stored in ``stays.extra``."""
    n = len(stays)
    stays.extra.update(
        potassium=rng.uniform(3.8, 4.8, n),
        sodium=rng.uniform(136, 143, n),
        glucose=rng.uniform(4.5, 6.0, n),
        glucose_diabetic=rng.uniform(6.0, 10.0, n),
        platelets=rng.uniform(160, 380, n),
        neutrophils=rng.uniform(2.0, 7.0, n),
        inr=rng.uniform(0.9, 1.15, n),
        inr_vka=rng.uniform(2.2, 3.0, n),
        ck=rng.uniform(40, 200, n),
        alt=rng.uniform(10, 40, n),
        creatinine_unit=(rng.uniform(size=n) < 0.25).astype(np.int64),
        glucose_unit=np.searchsorted([0.6, 0.9], rng.uniform(size=n)).astype(np.int64),
    )


@dataclass
class ScenarioLabs:
    """Results written by injected situations (canonical values) and series they suppress."""

    stay: np.ndarray
    concept: np.ndarray  # index into CONCEPTS
    time: np.ndarray
    value: np.ndarray
    suppress_stay: np.ndarray
    suppress_concept: np.ndarray
    suppress_from: np.ndarray  # background results of the series at or after this time go


@dataclass
class Labs:
    """Every result as sent: code, unit, value and range in that unit, plus canonical value."""

    stay: np.ndarray
    concept: np.ndarray
    emission: np.ndarray  # index into EMISSIONS[concept]
    time: np.ndarray
    value: np.ndarray  # as sent
    canonical: np.ndarray
    low: np.ndarray  # as sent, nan when none
    high: np.ndarray

    def __len__(self) -> int:
        return len(self.stay)


def _ragged_cumsum(values: IntArray, counts: IntArray) -> IntArray:
    total = np.cumsum(values)
    starts = np.repeat(np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    offsets: IntArray = np.concatenate([[0], total])[starts]
    return total - offsets


def _panel_times(
    rng: np.random.Generator, stays: Stays, period: Period
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stay, time, is admission panel) of every lab panel within the kept history."""
    data_end = stays.data_end(period)
    first = stays.admit + (rng.uniform(0.5, 3, len(stays)) * HOUR).astype(np.int64)
    days = np.ceil((data_end - stays.admit) / DAY).astype(np.int64) + 1
    counts = np.maximum(days, 1)
    stay = np.repeat(np.arange(len(stays)), counts)
    gap_choices = [WARD_PROFILES[k].lab_gaps for k in stays.kind]
    gap = np.empty(len(stay), dtype=np.int64)
    for gaps in set(gap_choices):
        rows = np.isin(stay, [i for i, g in enumerate(gap_choices) if g == gaps])
        gap[rows] = rng.choice(gaps, rows.sum())
    day = stays.admit[stay] // DAY + _ragged_cumsum(gap, counts)
    follow = day * DAY + 6 * HOUR + (rng.uniform(0, 2, len(stay)) * HOUR).astype(np.int64)
    stay = np.concatenate([np.arange(len(stays)), stay])
    time = np.concatenate([first, follow]) // 60 * 60
    admission = np.concatenate([np.ones(len(stays), bool), np.zeros(len(follow), bool)])
    keep = (time < data_end[stay]) & (time >= period.history_start) & (time > stays.admit[stay])
    return stay[keep], time[keep], admission[keep]


def _stay_flags(stays: Stays, orders: Orders, formulary: Formulary) -> dict[str, np.ndarray]:
    """Which stays have a VKA, a glucose-lowering drug, a heparin, clozapine."""
    atc = formulary.atc[orders.drug]

    def having(mask: np.ndarray) -> np.ndarray:
        out = np.zeros(len(stays), bool)
        out[orders.stay[mask]] = True
        return out

    return {
        "vka": having(formulary.tags["vka"][orders.drug]),
        "diabetic": having(np.char.startswith(atc, "A10")),
        "heparin": having(np.char.startswith(atc, "B01AB")),
        "clozapine": having(atc == "N05AH02"),
    }


def _panel_rows(
    rng: np.random.Generator, stays: Stays, orders: Orders, formulary: Formulary, period: Period
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stay, concept, time) of background results."""
    stay, time, admission = _panel_times(rng, stays, period)
    flags = {k: v[stay] for k, v in _stay_flags(stays, orders, formulary).items()}
    u = rng.uniform(size=(6, len(stay)))
    members = {
        "creatinine": np.ones(len(stay), bool),
        "potassium": np.ones(len(stay), bool),
        "sodium": np.ones(len(stay), bool),
        "glucose": admission | flags["diabetic"] | (u[0] < 0.4),
        "platelets": admission | flags["heparin"] | flags["clozapine"] | (u[1] < 0.5),
        "inr": flags["vka"] | (admission & (u[2] < 0.4)),
        "alt": admission & (u[3] < 0.6),
        "ck": admission & (u[4] < 0.25),
    }
    members["neutrophils"] = members["platelets"]
    parts = [(stay[m], np.full(m.sum(), CONCEPTS.index(c)), time[m]) for c, m in members.items()]
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]


def _background_values(
    rng: np.random.Generator,
    stays: Stays,
    orders: Orders,
    formulary: Formulary,
    stay: np.ndarray,
    concept: np.ndarray,
) -> np.ndarray:
    """Canonical values: baseline with bounded noise."""
    flags = _stay_flags(stays, orders, formulary)
    ex = stays.extra
    n = len(stay)
    noise = rng.uniform(-1, 1, n)
    value = np.zeros(n)
    rules = {
        "creatinine": stays.creatinine[stay] * (1 + 0.025 * noise),
        "potassium": ex["potassium"][stay] + 0.2 * noise,
        "sodium": ex["sodium"][stay] + 2 * noise,
        "glucose": np.where(
            flags["diabetic"][stay], ex["glucose_diabetic"][stay], ex["glucose"][stay]
        )
        * (1 + 0.15 * noise),
        "platelets": ex["platelets"][stay] * (1 + 0.1 * noise),
        "neutrophils": ex["neutrophils"][stay] * (1 + 0.1 * noise),
        "inr": np.where(
            flags["vka"][stay], ex["inr_vka"][stay] + 0.3 * noise, ex["inr"][stay] + 0.05 * noise
        ),
        "ck": ex["ck"][stay] * (1 + 0.15 * noise),
        "alt": ex["alt"][stay] * (1 + 0.15 * noise),
    }
    for name, values in rules.items():
        rows = concept == CONCEPTS.index(name)
        value[rows] = values[rows]
    return value


def _drug_levels(
    rng: np.random.Generator, stays: Stays, orders: Orders, formulary: Formulary, period: Period
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Levels for background aminoglycosides and vancomycin (before 48 h) and digoxin."""
    key = formulary.keys[orders.drug]
    data_end = stays.data_end(period)[orders.stay]
    end = np.where(orders.end < 0, data_end, np.minimum(orders.end, data_end))
    background = ~orders.scenario
    specs = (
        ("gentamicin", "gentamicin", (20, 40), (0.3, 1.5), 1.0),
        ("amikacin", "amikacin", (20, 40), (1.0, 4.0), 1.0),
        ("vancomycin", "vancomycin", (20, 40), (10.0, 20.0), 1.0),
        ("digoxin", "digoxin", (30, 54), (0.5, 1.4), 0.5),
    )
    parts = []
    for drug, concept, (lo, hi), (vlo, vhi), share in specs:
        rows = np.flatnonzero(background & (key == drug))
        when = orders.start[rows] + (rng.uniform(lo, hi, len(rows)) * HOUR).astype(np.int64)
        take = (when < end[rows]) & (rng.uniform(size=len(rows)) < share)
        rows, when = rows[take], when[take] // 60 * 60
        parts.append(
            (
                orders.stay[rows],
                np.full(len(rows), CONCEPTS.index(concept)),
                when,
                rng.uniform(vlo, vhi, len(rows)),
            )
        )
    return tuple(np.concatenate(p) for p in zip(*parts, strict=True))  # type: ignore[return-value]


def _suppressed(
    stay: np.ndarray, concept: np.ndarray, time: np.ndarray, injected: ScenarioLabs
) -> np.ndarray:
    """Background rows of a suppressed series at or after the time it is suppressed from."""
    keys = injected.suppress_stay * 64 + injected.suppress_concept
    if len(keys) == 0:
        return np.zeros(len(stay), bool)
    order = np.lexsort((injected.suppress_from, keys))  # earliest first for a repeated key
    keys, since = keys[order], injected.suppress_from[order]
    first = np.concatenate([[True], keys[1:] != keys[:-1]])
    keys, since = keys[first], since[first]
    row_keys = stay * 64 + concept
    at = np.minimum(np.searchsorted(keys, row_keys), len(keys) - 1)
    dropped: np.ndarray = (keys[at] == row_keys) & (time >= since[at])
    return dropped


def generate_labs(
    rng: np.random.Generator,
    stays: Stays,
    orders: Orders,
    formulary: Formulary,
    period: Period,
    injected: ScenarioLabs,
) -> Labs:
    """Every lab result of the stays: background panels, drug levels, injected results."""
    stay, concept, time = _panel_rows(rng, stays, orders, formulary, period)
    value = _background_values(rng, stays, orders, formulary, stay, concept)
    drop = _suppressed(stay, concept, time, injected)
    lv = _drug_levels(rng, stays, orders, formulary, period)
    stay = np.concatenate([stay[~drop], lv[0], injected.stay])
    concept = np.concatenate([concept[~drop], lv[1], injected.concept])
    time = np.concatenate([time[~drop], lv[2], injected.time])
    value = np.concatenate([value[~drop], lv[3], injected.value])
    canonical_only = np.concatenate(
        [np.zeros(len(stay) - len(injected.stay), bool), np.ones(len(injected.stay), bool)]
    )
    order = np.lexsort((concept, time, stay))
    return _emit(
        stays, stay[order], concept[order], time[order], value[order], canonical_only[order]
    )


def _emit(
    stays: Stays,
    stay: np.ndarray,
    concept: np.ndarray,
    time: np.ndarray,
    value: np.ndarray,
    canonical_only: np.ndarray,
) -> Labs:
    """Choose how each result is sent, round it there, and add an eGFR to each creatinine."""
    emission = np.zeros(len(stay), dtype=np.int64)
    for name in ("creatinine", "glucose"):
        rows = (concept == CONCEPTS.index(name)) & ~canonical_only
        emission[rows] = stays.extra[f"{name}_unit"][stay[rows]]
    sent = np.zeros(len(stay))
    canonical = np.zeros(len(stay))
    low = np.full(len(stay), np.nan)
    high = np.full(len(stay), np.nan)
    female = stays.sex[stay] == "F"
    for c, name in enumerate(CONCEPTS):
        for e, spec in enumerate(EMISSIONS[name]):
            rows = (concept == c) & (emission == e)
            sent[rows] = np.round(value[rows] * spec.per_canonical, spec.decimals)
            canonical[rows] = sent[rows] / spec.per_canonical
            (m_low, m_high), (f_low, f_high) = _RANGES[name]
            low[rows] = np.where(female[rows], f_low, m_low) * spec.per_canonical
            high[rows] = np.where(female[rows], f_high, m_high) * spec.per_canonical
    labs = Labs(stay, concept, emission, time, sent, canonical, np.round(low, 2), np.round(high, 2))
    return _with_egfr(stays, labs)


def _with_egfr(stays: Stays, labs: Labs) -> Labs:
    """The lab reports CKD-EPI 2021 beside every creatinine, from the creatinine it sent."""
    creat = np.flatnonzero(labs.concept == CONCEPTS.index("creatinine"))
    s = labs.stay[creat]
    egfr = np.round(
        ckd_epi_2021(
            labs.canonical[creat], stays.age_years(labs.time[creat], s), stays.sex[s] == "F"
        )
    )
    n = len(creat)
    add = Labs(
        s,
        np.full(n, CONCEPTS.index("egfr")),
        np.zeros(n, np.int64),
        labs.time[creat],
        egfr,
        egfr,
        np.full(n, 90.0),
        np.full(n, np.nan),
    )
    merged = Labs(
        **{
            k: np.concatenate([getattr(labs, k), getattr(add, k)])
            for k in Labs.__dataclass_fields__
        }
    )
    order = np.lexsort((merged.concept, merged.time, merged.stay))
    return Labs(**{k: getattr(merged, k)[order] for k in Labs.__dataclass_fields__})
