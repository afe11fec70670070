"""Background medication orders, drawn per stay from the ward's formulary, vectorised.

Lines are sampled without replacement in proportion to the ward's prescribing weights (Gumbel
top-k), at most one line per exclusivity group. Gates keep the background clean for the covered
rules: no line past its ``max_age`` or below its ``min_renal``, no teratogen in pregnancy, no
drug of a class the patient is allergic to, an opioid always comes with a laxative, paracetamol
is lowered to 3 g/day under 52 kg, except IV paracetamol under 48 kg: 1 g four times a day at
that weight is a real error, kept on purpose and written into the truth as a background
situation (``truth._background_paracetamol``). Stays chosen for an injected situation get inert
lines only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vigie.synthetic.arrays import FloatArray, IntArray
from vigie.synthetic.formulary import WARD_KINDS, Formulary
from vigie.synthetic.hospital import DAY, HOUR, WARD_PROFILES, Period, Stays

__all__ = ["PRN_KEYS", "Orders", "background_orders", "concat_orders"]

MAX_LINES = 14
# Paracetamol is lowered to 3 g/day under this weight (the catalogue's limit is 50 kg; the day-7
# weight may differ by 1 %), except IV lines under ``KEPT_ERROR_KG``: see the module's docstring.
LIGHT_PARACETAMOL_KG = 52.0
KEPT_ERROR_KG = 48.0
PRN_KEYS = ("tramadol", "zopiclone", "zolpidem", "oxazepam", "alprazolam", "nefopam_iv")


@dataclass
class Orders:
    """Columns of medication lines; ``end`` is -1 when the line has no end date."""

    stay: IntArray  # index into Stays
    drug: IntArray  # formulary row
    dose: FloatArray
    frequency: IntArray  # administrations per period
    period: FloatArray
    period_unit: np.ndarray
    start: IntArray
    end: IntArray
    status: np.ndarray
    as_needed: np.ndarray
    scenario: np.ndarray  # bool: written by an injected situation

    def __len__(self) -> int:
        return len(self.stay)

    def per_day(self) -> FloatArray:
        scale = np.where(
            self.period_unit == "h", 1 / 24, np.where(self.period_unit == "wk", 7.0, 1.0)
        )
        return self.frequency / (self.period * scale)


def concat_orders(parts: list[Orders]) -> Orders:
    names = Orders.__dataclass_fields__
    return Orders(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in names})


def _allowed(
    stays: Stays,
    formulary: Formulary,
    period: Period,
    scenario: np.ndarray,
    pregnant: np.ndarray,
    allergy_prefixes: list[tuple[str, ...]],
    renal: np.ndarray,
) -> np.ndarray:
    """Boolean (stays × lines): which lines a stay may get in the background."""
    kinds = np.array([WARD_KINDS.index(k) for k in stays.kind], dtype=int)
    ok = formulary.ward_weight[:, kinds].T > 0
    age_end = stays.age_years(stays.data_end(period))
    ok &= ~(age_end[:, None] >= np.nan_to_num(formulary.max_age, nan=500)[None, :] + 0.99)
    ok &= ~(renal[:, None] < np.nan_to_num(formulary.min_renal, nan=0)[None, :])
    ok &= ~(pregnant[:, None] & formulary.tags["teratogen"][None, :])
    ok &= ~(scenario[:, None] & ~formulary.tags["inert"][None, :])
    for i, prefixes in enumerate(allergy_prefixes):
        for prefix in prefixes:
            ok[i] &= ~np.char.startswith(formulary.atc, prefix)
    return ok


def _sample_lines(
    rng: np.random.Generator,
    weights: np.ndarray,
    ok: np.ndarray,
    counts: np.ndarray,
    groups: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(stay index, line) pairs: up to ``counts`` distinct lines per stay, one per group."""
    with np.errstate(divide="ignore"):
        scores = np.where(ok, np.log(weights), -np.inf)
    scores = scores + rng.gumbel(size=scores.shape)
    for group in np.unique(groups[groups >= 0]):
        cols = np.flatnonzero(groups == group)
        best = cols[np.argmax(scores[:, cols], axis=1)]
        keep = scores[np.arange(len(scores)), best]
        scores[:, cols] = -np.inf
        scores[np.arange(len(scores)), best] = keep
    top = np.argsort(-scores, axis=1, kind="stable")[:, :MAX_LINES]
    top_scores = np.take_along_axis(scores, top, axis=1)
    take = (np.arange(top.shape[1])[None, :] < counts[:, None]) & np.isfinite(top_scores)
    stay_index = np.broadcast_to(np.arange(len(scores))[:, None], top.shape)[take]
    return stay_index, top[take]


def _dose(formulary: Formulary, drug: IntArray, weight: FloatArray) -> FloatArray:
    dose = formulary.dose[drug].copy()
    per_kg = formulary.per_kg[drug]
    raw = dose * weight
    step = np.where(formulary.unit[drug] == "IU", 1000.0, np.where(raw >= 1000, 250.0, 10.0))
    dose[per_kg] = (np.round(raw / step) * step)[per_kg]
    return dose


def _times(
    rng: np.random.Generator,
    formulary: Formulary,
    drug: np.ndarray,
    admit: np.ndarray,
    data_end: np.ndarray,
    discharge: np.ndarray,
    inert: np.ndarray,
    period: Period,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, end (-1: none) and status of background lines."""
    n = len(drug)
    max_days = formulary.max_days[drug]
    course = ~np.isnan(max_days)
    length = data_end - admit
    delay = np.where(
        course,
        rng.uniform(0, 1, n) * np.minimum(0.5 * length, 3 * DAY),
        rng.uniform(0.25, 6, n) * HOUR,
    )
    start = admit + (delay // 60 * 60).astype(np.int64)
    course_days = rng.uniform(np.minimum(2, 0.5 * np.nan_to_num(max_days)), np.nan_to_num(max_days))
    end = np.where(course, start + (course_days * DAY // 60 * 60).astype(np.int64), -1)
    stopped = inert & ~course & (rng.uniform(size=n) < 0.1)
    early = start + ((data_end - start) * rng.uniform(0.2, 0.9, n) // 60 * 60).astype(np.int64)
    end = np.where(stopped, early, end)
    ended_at_discharge = (discharge >= 0) & ((end < 0) | (end > discharge))
    end = np.where(ended_at_discharge, discharge, end)
    status = np.where(
        end < 0,
        "active",
        np.where(
            end > period.end, "active", np.where(stopped & (end < data_end), "stopped", "completed")
        ),
    )
    return start, end, status


def background_orders(
    rng: np.random.Generator,
    stays: Stays,
    formulary: Formulary,
    period: Period,
    scenario: np.ndarray,
    pregnant: np.ndarray,
    allergy_prefixes: list[tuple[str, ...]],
    renal: np.ndarray,
) -> Orders:
    """The usual prescriptions of every stay (inert ones only for scenario stays)."""
    n = len(stays)
    mean = np.array([WARD_PROFILES[k].orders for k in stays.kind]) if n else np.zeros(0)
    counts = np.where(scenario, rng.poisson(3, n) + 1, np.clip(rng.poisson(mean - 2) + 2, 1, 14))
    kinds = np.array([WARD_KINDS.index(k) for k in stays.kind], dtype=int)
    ok = _allowed(stays, formulary, period, scenario, pregnant, allergy_prefixes, renal)
    weights = formulary.ward_weight[:, kinds].T
    stay, drug = _sample_lines(rng, weights, ok, counts, formulary.group)
    stay, drug = _add_laxatives(formulary, stay, drug)
    return _build(rng, stays, formulary, period, stay, drug)


def _add_laxatives(
    formulary: Formulary, stay: np.ndarray, drug: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Every stay with an opioid line and no laxative gets macrogol (its times follow later)."""
    with_opioid = np.unique(stay[formulary.tags["opioid"][drug]])
    with_laxative = np.unique(stay[formulary.tags["laxative"][drug]])
    missing = np.setdiff1d(with_opioid, with_laxative)
    stay = np.concatenate([stay, missing])
    drug = np.concatenate([drug, np.full(len(missing), formulary.index("macrogol"))])
    order = np.argsort(stay, kind="stable")
    return stay[order], drug[order]


def _build(
    rng: np.random.Generator,
    stays: Stays,
    formulary: Formulary,
    period: Period,
    stay: np.ndarray,
    drug: np.ndarray,
) -> Orders:
    n = len(stay)
    start, end, status = _times(
        rng,
        formulary,
        drug,
        stays.admit[stay],
        stays.data_end(period)[stay],
        stays.discharge[stay],
        formulary.tags["inert"][drug],
        period,
    )
    start, end, status = _align_laxatives(formulary, stay, drug, start, end, status)
    frequency = formulary.frequency[drug].astype(np.int64)
    weight = stays.weight[stay]
    paracetamol = np.char.startswith(formulary.atc[drug], "N02BE01")
    iv = formulary.route[drug] == "iv"
    light = paracetamol & (weight < LIGHT_PARACETAMOL_KG) & ~(iv & (weight < KEPT_ERROR_KG))
    frequency = np.where(light, 3, frequency)
    prn = np.isin(formulary.keys[drug], PRN_KEYS) & (rng.uniform(size=n) < 0.25)
    keep = start < stays.data_end(period)[stay]
    orders = Orders(
        stay,
        drug,
        _dose(formulary, drug, stays.weight[stay]),
        frequency,
        formulary.period[drug],
        formulary.period_unit[drug],
        start,
        end,
        status,
        prn,
        np.zeros(n, dtype=bool),
    )
    return Orders(**{k: getattr(orders, k)[keep] for k in Orders.__dataclass_fields__})


def _align_laxatives(
    formulary: Formulary,
    stay: np.ndarray,
    drug: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    status: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A laxative covers its stay's opioid: same start, and runs at least as long."""
    opioid = formulary.tags["opioid"][drug]
    if not opioid.any():
        return start, end, status
    first = np.full(stay.max() + 1, np.iinfo(np.int64).max)
    np.minimum.at(first, stay[opioid], start[opioid])
    laxative = formulary.tags["laxative"][drug] & (first[stay] < np.iinfo(np.int64).max)
    start = np.where(laxative, np.minimum(start, first[stay]), start)
    last = np.full(stay.max() + 1, -2, dtype=np.int64)
    open_end = np.where(end < 0, np.iinfo(np.int64).max, end)
    np.maximum.at(last, stay[opioid], open_end[opioid])
    lax_end = np.where(end < 0, np.iinfo(np.int64).max, end)
    cover = laxative & (lax_end < last[stay])
    end = np.where(cover, np.where(last[stay] == np.iinfo(np.int64).max, -1, last[stay]), end)
    status = np.where(cover, np.where(end < 0, "active", "completed"), status)
    return start, end, status
