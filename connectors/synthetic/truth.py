"""The ground truth: for every injected situation, when it holds and its key values.

Windows are computed from the data actually written (the injected result, the next result of
the same concept, the lines' real start and end after discharge capping), with the semantics
named in ``catalogue.Window`` and recorded per rule in ``truth.json``. Controls (near misses)
carry the window in which the rule must *not* fire. The truth is exhaustive for the covered
rules over the evaluation period: background stays are generated so as never to meet them.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from typing import Any

import numpy as np
import orjson
import polars as pl

from connectors.synthetic.catalogue import SCENARIOS, Window
from connectors.synthetic.hospital import (
    DAY,
    HOUR,
    YEAR_DAYS,
    Period,
    Stays,
    ckd_epi_2021,
    cockcroft_gault,
)
from connectors.synthetic.labs import CONCEPTS, Labs
from connectors.synthetic.scenarios import Plan, Situation

__all__ = ["RULE_SEVERITY", "TRUTH_SCHEMA", "WINDOW_SEMANTICS", "truth_frame", "truth_meta"]

NONE = -1

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
    "are active, until a line ends",
    "delay": "from 'hours' after the first involved line starts until a line ends",
    "no_inr": "VKA active for >= 3 days and no INR in the previous 7 days",
}

TRUTH_SCHEMA = {
    "rule_id": pl.Utf8,
    "expected": pl.Utf8,
    "variant": pl.Utf8,
    "patient_id": pl.Utf8,
    "stay_id": pl.Utf8,
    "ward": pl.Utf8,
    "order_ids": pl.Utf8,
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
    if w.kind == "lines":
        return max(starts), line_end
    if w.kind in ("latest", "any"):
        assert sit.lab_time is not None
        t = sit.lab_time
        end = line_end
        if not math.isinf(w.hours):
            end = _cap(end, t + int(w.hours * HOUR))
        if w.kind == "latest":
            times, _ = index.get(sit.stay, w.concept)
            later = bisect_right(times, t)
            if later < len(times):
                end = _cap(end, times[later])
        return t, end
    if w.kind == "state":
        times, _ = index.get(sit.stay, w.concept)
        begin = max(starts)
        lookback = -math.inf if math.isinf(w.hours) else begin - w.hours * HOUR
        before = [x for x in times if lookback <= x <= begin]
        if before:
            return begin, line_end
        after = bisect_right(times, begin)
        return (times[after], line_end) if after < len(times) else (NONE, NONE)
    if w.kind == "delay":
        return sit.core_spans[0][0] + int(w.hours * HOUR), line_end
    if w.kind == "no_inr":
        return _no_inr_start(sit, index), line_end
    raise ValueError(f"unknown window kind {w.kind}")


def _no_inr_start(sit: Situation, index: _LabIndex) -> int:
    begin = sit.core_spans[0][0] + 3 * DAY
    times, _ = index.get(sit.stay, "inr")
    moved = True
    while moved:
        moved = False
        for t in times:
            if t <= begin < t + 7 * DAY:
                begin, moved = t + 7 * DAY, True
    return begin


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
        return "major" if float(s.extra["mme"]) >= 120 else "moderate"  # type: ignore[arg-type]
    return RULE_SEVERITY[s.rule]


def truth_frame(
    plan: Plan,
    labs: Labs,
    stays: Stays,
    order_offset: int,
    order_ids: np.ndarray,
    patient_ids: np.ndarray,
    stay_ids: np.ndarray,
) -> pl.DataFrame:
    """One row per situation, windows in epoch seconds (NONE = open at the end of the data)."""
    index = _LabIndex(labs, plan.chosen)
    rows = []
    for sit in plan.situations:
        start, end = _window(sit, index)
        if not _nonempty(start, end):
            if sit.scenario.positive:
                continue  # the data never made the situation true (e.g. no result in time)
            start = min(s for s, _ in sit.core_spans)
            ends = [e for _, e in sit.core_spans]
            end = NONE if NONE in ends else max(ends)
        rows.append(
            {
                "rule_id": sit.scenario.rule,
                "expected": "positive" if sit.scenario.positive else "control",
                "variant": sit.scenario.variant,
                "patient_id": patient_ids[sit.stay],
                "stay_id": stay_ids[sit.stay],
                "ward": stays.ward[sit.stay],
                "order_ids": ";".join(order_ids[order_offset + r] for r in sit.core_orders),
                "window_start": start,
                "window_end": None if end == NONE else end,
                "severity": _severity(sit),
                "key_values": orjson.dumps(
                    _keys(sit, stays, index, start),
                    option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY,
                ).decode(),
            }
        )
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
        entry["variants"].append(
            {"variant": s.variant, "expected": "positive" if s.positive else "control"}
        )
    return {"evaluation_period": {"start": period.start, "end": period.end}, "rules": rules}
