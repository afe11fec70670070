"""The ground truth: for every injected situation, when it holds and its key values.

Windows are computed from the data actually written (the injected result, the next result of
the same concept, the lines' real start and end after discharge capping), with the semantics
named in ``catalogue.Window`` and recorded per rule in ``truth.json``; a window's look-back is
the rule's own, so the truth stops expecting an alert when the rule stops reading the result.
Controls (near misses) carry the window in which the rule must *not* fire; a ``lapse`` positive
is followed by a control from when its result is older than the catalogue's look-back. A row
names the lines the rule's alert must name (``order_ids``) apart from the context lines that
only make the situation hold and bound its window (``context_order_ids``: "takes other drugs by
mouth"). The truth is exhaustive for the covered rules over the evaluation period: background
stays are generated so as never to meet them, except where the background keeps a real error
on purpose; those stays get a *background* row with its reason, computed from the catalogue's
definition (``_background_paracetamol``), not by running any rule.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from typing import Any

import numpy as np
import orjson
import polars as pl

from vigie.synthetic.catalogue import SCENARIOS, Window
from vigie.synthetic.formulary import Formulary
from vigie.synthetic.hospital import (
    DAY,
    HOUR,
    YEAR_DAYS,
    Period,
    Stays,
    ckd_epi_2021,
    cockcroft_gault,
)
from vigie.synthetic.labs import CONCEPTS, Labs
from vigie.synthetic.orders import Orders
from vigie.synthetic.rule_catalogue import load_catalogue
from vigie.synthetic.scenarios import Plan, Situation

__all__ = [
    "RULE_SEVERITY",
    "TRUTH_FIELDS",
    "TRUTH_SCHEMA",
    "WINDOW_SEMANTICS",
    "truth_frame",
    "truth_meta",
]

NONE = -1
CATALOGUE = load_catalogue()
# How long a VKA runs before the rule expects an INR ("a VKA active for ≥ 3 days").
VKA_SETTLING = int(CATALOGUE.duration_hours("coag.vka_no_inr", "active for") * HOUR)
# When the admission weight is recorded (``clinical.observations``).
WEIGHT_RECORDED = 15 * 60

RULE_SEVERITY = {
    "renal.metformin_egfr": "major",
    "renal.metformin_dose": "moderate",
    "renal.dabigatran": "major",
    "renal.xaban": "major",
    "renal.lmwh_curative": "major",
    "renal.nephrotoxic_aki": "major",
    "renal.gabapentinoid": "moderate",
    "bio.hyperkalaemia": "major",
    "bio.hypokalaemia_qt": "major",
    "bio.digoxin": "major",
    "bio.hyponatraemia": "major",
    "bio.hypoglycaemia": "critical",
    "bio.heparin_platelets": "critical",
    "bio.clozapine_neutrophils": "critical",
    "bio.statin_ck": "major",
    "bio.hepatotoxic_alt": "major",
    "coag.vka_inr_high": "major",
    "coag.vka_no_inr": "moderate",
    "coag.vka_relay": "moderate",
    "coag.doac_duplicate": "critical",
    "coag.warfarin_nsaid": "major",
    "tdm.aminoglycoside": "major",
    "tdm.vancomycin": "major",
    "infect.iv_to_oral": "minor",
    "infect.duration": "minor",
    "dose.paracetamol_max": "major",
    "dose.methotrexate_daily": "critical",
    "dose.colchicine_max": "major",
    "dose.opioid_mme": "moderate",
    "combo.opioid_benzo": "moderate",
    "combo.opioid_no_laxative": "minor",
    "combo.duplicate_class": "moderate",
    "combo.allergy": "critical",
    "combo.pregnancy": "critical",
    "elderly.long_benzo": "moderate",
    "elderly.anticholinergic": "moderate",
    "elderly.nsaid_renal": "major",
}

WINDOW_SEMANTICS = {
    "lines": "while every involved line is active",
    "latest": "from the injected result until the next result of the same concept, the "
    "look-back (hours) after it, or the end of an involved line",
    "any": "from the injected result for the look-back (hours): 'a value within W'",
    "state": "renal state: from when a creatinine within the look-back exists while the lines "
    "are active, until a line ends or no creatinine is left within the look-back",
    "delay": "from 'hours' after the first involved line starts until a line ends",
    "no_inr": "positive: from when the VKA has run >= 3 days with no INR within the look-back, "
    "until the next INR or the line ends; control: from when the VKA has run 3 days until "
    "that moment (the last INR + the look-back) or the line ends",
}

TRUTH_FIELDS = {
    "rule_id": "the rule of the default pack",
    "expected": "positive: the rule must report the situation throughout its window; control: "
    "a near miss, the rule must stay silent throughout its window; background: a situation "
    "the background meets without being injected (the reason in key_values), to be reported "
    "like a positive",
    "order_ids": "the lines the rule's alert must name (it may name others, never a context line)",
    "context_order_ids": "lines the alert does not name but that make the situation hold and "
    "bound its window (e.g. an oral line for 'takes other drugs by mouth'); null when none",
    "window_start": "when the situation starts to hold (UTC)",
    "window_end": "when it stops holding, even after the end of the data when the data say "
    "so (a look-back running out); null = still holding at the end of the data",
    "severity": "the alert's expected severity",
    "key_values": "the values that make the situation (doses, lab value, renal function, age)",
}

TRUTH_SCHEMA = {
    "rule_id": pl.Utf8,
    "expected": pl.Utf8,
    "variant": pl.Utf8,
    "patient_id": pl.Utf8,
    "stay_id": pl.Utf8,
    "ward": pl.Utf8,
    "order_ids": pl.Utf8,
    "context_order_ids": pl.Utf8,
    "window_start": pl.Int64,
    "window_end": pl.Int64,
    "severity": pl.Utf8,
    "key_values": pl.Utf8,
}


def _min_end(spans: list[tuple[int, int]]) -> int:
    ends = [e for _, e in spans if e >= 0]
    return min(ends) if ends else NONE


def _cap(end: int, limit: int) -> int:
    """The earlier of two ends where NONE means 'still holding at the end of the data'."""
    if end == NONE:
        return limit
    return end if limit == NONE else min(end, limit)


class _LabIndex:
    """Times and values per (stay, concept) for the chosen stays, sorted by time."""

    def __init__(self, labs: Labs, chosen: np.ndarray) -> None:
        rows = np.flatnonzero(chosen[labs.stay])
        self.series: dict[tuple[int, int], tuple[list[int], list[float]]] = defaultdict(
            lambda: ([], [])
        )
        for r in rows:
            times, values = self.series[(int(labs.stay[r]), int(labs.concept[r]))]
            times.append(int(labs.time[r]))
            values.append(float(labs.canonical[r]))

    def get(self, stay: int, concept: str) -> tuple[list[int], list[float]]:
        return self.series.get((stay, CONCEPTS.index(concept)), ([], []))


def _window(sit: Situation, index: _LabIndex) -> tuple[int, int]:
    """(start, end) of the situation; end NONE = still holding when the data ends."""
    w: Window = sit.scenario.window
    starts = [s for s, _ in sit.core_spans]
    line_end = _min_end(sit.core_spans)
    lookback = w.hours * HOUR
    if w.kind == "lines":
        return max(starts), line_end
    if w.kind in ("latest", "any"):
        assert sit.lab_time is not None
        t = sit.lab_time
        end = line_end
        if not math.isinf(lookback):
            end = _cap(end, t + int(lookback))
        if w.kind == "latest":
            times, _ = index.get(sit.stay, w.concept)
            later = bisect_right(times, t)
            if later < len(times):
                end = _cap(end, times[later])
        return t, end
    if w.kind == "state":
        times, _ = index.get(sit.stay, w.concept)
        begin = max(starts)
        if any(begin - lookback <= x <= begin for x in times):
            start = begin
        else:
            after = bisect_right(times, begin)
            if after == len(times):
                return NONE, NONE
            start = times[after]
        return start, _cap(line_end, _stale(times, start, lookback))
    if w.kind == "delay":
        return sit.core_spans[0][0] + int(lookback), line_end
    if w.kind == "no_inr":
        return _no_inr_window(sit, index, int(lookback), line_end)
    raise ValueError(f"unknown window kind {w.kind}")


def _stale(times: list[int], at: int, lookback: float) -> int:
    """When, from ``at`` on, no result is left within the look-back (NONE: never)."""
    if math.isinf(lookback):
        return NONE
    k = bisect_right(times, at) - 1
    while k + 1 < len(times) and times[k + 1] - times[k] <= lookback:
        k += 1
    return times[k] + int(lookback)


def _no_inr_window(
    sit: Situation, index: _LabIndex, lookback: int, line_end: int
) -> tuple[int, int]:
    """A positive holds from the first moment the VKA has run long enough with no INR within
    the look-back until the next INR; a control is the time before that moment, in which
    every check finds a recent INR."""
    settled = sit.core_spans[0][0] + VKA_SETTLING
    times, _ = index.get(sit.stay, "inr")
    onset = settled
    moved = True
    while moved:
        moved = False
        for t in times:
            if t <= onset < t + lookback:
                onset, moved = t + lookback, True
    if not sit.scenario.positive:
        return settled, _cap(line_end, onset)
    later = bisect_right(times, onset)
    return onset, line_end if later == len(times) else _cap(line_end, times[later])


def _nonempty(start: int, end: int) -> bool:
    return start != NONE and (end == NONE or start < end)


def _renal_keys(sit: Situation, stays: Stays, index: _LabIndex, at: int) -> dict[str, float]:
    times, values = index.get(sit.stay, "creatinine")
    if not times:
        return {}
    k = max(bisect_right(times, at) - 1, 0)
    creat, when = values[k], times[k]
    age = np.array([(when - stays.birth[sit.stay]) / (DAY * YEAR_DAYS)])
    female = np.array([stays.sex[sit.stay] == "F"])
    weight = np.array([stays.weight[sit.stay]])
    crcl = cockcroft_gault(np.array([creat]), age, weight, female)[0]
    egfr = ckd_epi_2021(np.array([creat]), age, female)[0]
    return {
        "creatinine_umol_l": round(creat, 1),
        "egfr": round(float(egfr)),
        "crcl_ml_min": round(float(crcl), 1),
        "weight_kg": float(weight[0]),
    }


def _keys(sit: Situation, stays: Stays, index: _LabIndex, start: int) -> dict[str, object]:
    s = sit.scenario
    at = start if start != NONE else sit.anchor
    keys: dict[str, object] = {"daily_dose": sit.daily_doses}
    keys["age_years"] = math.floor((at - stays.birth[sit.stay]) / (DAY * YEAR_DAYS))
    if s.lab is not None and sit.lab_value is not None:
        keys[s.lab.concept] = sit.lab_value
    if s.renal is not None or s.window.kind in ("state",) or s.rule == "renal.nephrotoxic_aki":
        keys.update(_renal_keys(sit, stays, index, at))
    if s.weight is not None or s.rule == "dose.paracetamol_max":
        keys["weight_kg"] = float(stays.weight[sit.stay])
    keys.update({k: v for k, v in s.extra.items() if k != "severity"})
    return keys


def _severity(sit: Situation) -> str:
    s = sit.scenario
    if "severity" in s.extra:
        return str(s.extra["severity"])
    if s.severity and sit.lab_value is not None:
        for threshold, level in s.severity:
            if sit.lab_value >= threshold:
                return level
    if "mme" in s.extra:
        major, _ = CATALOGUE.quantity(s.rule, "major ≥")  # "moderate (major ≥ 120)"
        return "major" if float(s.extra["mme"]) >= major else "moderate"  # type: ignore[arg-type]
    return RULE_SEVERITY[s.rule]


def _lapse_window(sit: Situation, index: _LabIndex, data_end: int) -> tuple[int, int]:
    """A ``lapse`` positive's control: from when the injected result is older than the
    look-back until a core line ends (or a newer result of the concept comes). For a renal
    state, the injected creatinine is the last one: the clearance is unknown past its window."""
    w: Window = sit.scenario.window
    assert sit.lab_time is not None and w.kind in ("latest", "any", "state"), sit.scenario
    start = sit.lab_time + int(w.hours * HOUR)
    end = _min_end(sit.core_spans)
    if w.kind in ("latest", "state"):
        times, _ = index.get(sit.stay, w.concept)
        later = bisect_right(times, sit.lab_time)
        if later < len(times):
            end = _cap(end, times[later])
    return (start, end) if start < data_end else (NONE, NONE)


def _row(
    sit: Situation,
    expected: str,
    variant: str,
    window: tuple[int, int],
    ids: _Ids,
    severity: str,
    keys: dict[str, object],
) -> dict[str, object]:
    start, end = window
    return {
        "rule_id": sit.scenario.rule,
        "expected": expected,
        "variant": variant,
        "patient_id": ids.patients[sit.stay],
        "stay_id": ids.stays[sit.stay],
        "ward": ids.wards[sit.stay],
        "order_ids": ";".join(ids.orders[ids.offset + r] for r in sit.core_orders),
        "context_order_ids": ";".join(ids.orders[ids.offset + r] for r in sit.context_orders)
        or None,
        "window_start": start,
        "window_end": None if end == NONE else end,
        "severity": severity,
        "key_values": _json(keys),
    }


def _json(keys: dict[str, object]) -> str:
    return orjson.dumps(keys, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()


class _Ids:
    """The chunk's identifiers: patient, stay and ward per stay; order ids (scenario rows
    start at ``offset``)."""

    def __init__(
        self,
        stays: Stays,
        offset: int,
        orders: np.ndarray,
        patients: np.ndarray,
        stay_ids: np.ndarray,
    ) -> None:
        self.wards, self.offset, self.orders = stays.ward, offset, orders
        self.patients, self.stays = patients, stay_ids


def _background_paracetamol(
    orders: Orders, formulary: Formulary, stays: Stays, period: Period, ids: _Ids
) -> list[dict[str, object]]:
    """Background stays that meet dose.paracetamol_max as the catalogue words it ("daily dose
    > 4 g, or > 3 g when weight < 50 kg"): the background keeps IV paracetamol 1 g four times
    a day for patients under 48 kg, a real error (``orders._build``). The weight the rule reads
    is the admission one, or a day-7 one within 1 % of it (``clinical.observations``): within
    1 % of the limit the case is left undecided, and the background never writes one."""
    rule = "dose.paracetamol_max"
    grams = {"g": 1000.0, "mg": 1.0}
    most, unit = CATALOGUE.quantity(rule, "daily dose >")
    light_most, light_unit = CATALOGUE.quantity(rule, "or >")
    light, _ = CATALOGUE.quantity(rule, "weight <")
    rows = []
    background = np.flatnonzero(~orders.scenario)
    paracetamol = background[np.char.startswith(formulary.atc[orders.drug[background]], "N02BE01")]
    daily = (orders.dose * orders.per_day())[paracetamol]
    for r, dose in zip(paracetamol, daily, strict=True):
        i = int(orders.stay[r])
        weight = float(stays.weight[i])
        if abs(weight - light) <= 0.01 * light and dose > light_most * grams[light_unit]:
            raise ValueError(f"background paracetamol {dose} mg/day at {weight} kg: undecided")
        under = weight < light
        over = dose > most * grams[unit] or (under and dose > light_most * grams[light_unit])
        start = max(int(orders.start[r]), int(stays.admit[i]) + WEIGHT_RECORDED)
        end = int(orders.end[r])
        if not over or start >= int(stays.data_end(period)[i]) or (end != NONE and end <= start):
            continue
        limit = light_most if under else most
        reason = (
            f"paracetamol {dose:g} mg/day at {weight:g} kg: more than {limit:g} g/day"
            + (f" under {light:g} kg" if under else "")
            + f" ({CATALOGUE.path}, {rule})"
        )
        rows.append(
            {
                "rule_id": rule,
                "expected": "background",
                "variant": "background_iv_4g_under_50kg" if under else "background_over_4g",
                "patient_id": ids.patients[i],
                "stay_id": ids.stays[i],
                "ward": ids.wards[i],
                "order_ids": ids.orders[r],
                "context_order_ids": None,
                "window_start": start,
                "window_end": None if end == NONE else end,
                "severity": RULE_SEVERITY[rule],
                "key_values": _json(
                    {"daily_dose": {"paracetamol": dose}, "weight_kg": weight, "reason": reason}
                ),
            }
        )
    return rows


def truth_frame(
    plan: Plan,
    labs: Labs,
    stays: Stays,
    period: Period,
    orders: Orders,
    formulary: Formulary,
    order_ids: np.ndarray,
    patient_ids: np.ndarray,
    stay_ids: np.ndarray,
) -> pl.DataFrame:
    """One row per situation, windows in epoch seconds (NONE = open at the end of the data).

    ``orders`` are the chunk's lines, background first then the scenarios' (``plan.orders``)."""
    index = _LabIndex(labs, plan.chosen)
    ids = _Ids(stays, len(orders) - len(plan.orders), order_ids, patient_ids, stay_ids)
    rows = []
    for sit in plan.situations:
        s = sit.scenario
        start, end = _window(sit, index)
        if not _nonempty(start, end):
            if s.positive:
                continue  # the data never made the situation true (e.g. no result in time)
            start = min(begin for begin, _ in sit.core_spans)
            ends = [e for _, e in sit.core_spans]
            end = NONE if NONE in ends else max(ends)
        keys = _keys(sit, stays, index, start)
        expected = "positive" if s.positive else "control"
        rows.append(_row(sit, expected, s.variant, (start, end), ids, _severity(sit), keys))
        if s.lapse:
            lapse = _lapse_window(sit, index, int(stays.data_end(period)[sit.stay]))
            if _nonempty(*lapse):
                keys = {**keys, "lookback_hours": s.window.hours}
                rows.append(_row(sit, "control", s.lapse_variant, lapse, ids, _severity(sit), keys))
    rows += _background_paracetamol(orders, formulary, stays, period, ids)
    return pl.DataFrame(rows, schema=TRUTH_SCHEMA)


def truth_meta(period: Period, rates: dict[str, float]) -> dict[str, object]:
    rules: dict[str, dict[str, Any]] = {}
    for s in SCENARIOS:
        entry = rules.setdefault(
            s.rule,
            {
                "rate": rates[s.rule],
                "window": s.window.kind,
                "semantics": WINDOW_SEMANTICS[s.window.kind],
                "lookback_hours": None,
                "variants": [],
            },
        )
        if not math.isinf(s.window.hours):
            entry["lookback_hours"] = s.window.hours
        lookback = None if math.isinf(s.window.hours) else s.window.hours
        entry["variants"].append(
            {
                "variant": s.variant,
                "expected": "positive" if s.positive else "control",
                "lookback_hours": lookback,
            }
        )
        if s.lapse:
            entry["variants"].append(
                {"variant": s.lapse_variant, "expected": "control", "lookback_hours": lookback}
            )
    return {
        "evaluation_period": {"start": period.start, "end": period.end},
        "fields": TRUTH_FIELDS,
        "rules": rules,
    }
