"""Apply the injected situations of ``catalogue.py`` to chosen stays of a chunk.

Stays are drawn per scenario among the eligible ones (binomial count at the rule's rate); the
chosen stays get inert background lines only, so that the scenario's own lines and results are
the only thing a covered rule can see. Work here is per chosen stay (a few per thousand), not
per fact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from vigie.synthetic.catalogue import (
    CONTROL_RATIO,
    DEFAULT_RATE,
    SCENARIOS,
    Lab,
    Line,
    Scenario,
)
from vigie.synthetic.formulary import Formulary
from vigie.synthetic.hospital import (
    DAY,
    HOUR,
    WARD_PROFILES,
    YEAR_DAYS,
    Period,
    Stays,
    creatinine_for_crcl,
    creatinine_for_egfr,
    renal_function,
)
from vigie.synthetic.labs import CONCEPTS, ScenarioLabs, reference_high
from vigie.synthetic.orders import Orders

__all__ = ["Plan", "Situation", "plan_scenarios"]

_WHOLE_SERIES = np.iinfo(np.int64).min  # a suppression from the beginning of time


@dataclass
class Situation:
    """One injected case: which scenario, where, when, and what it wrote."""

    scenario: Scenario
    stay: int
    anchor: int
    core_orders: list[int]  # rows of Plan.orders the rule's alert names
    core_spans: list[tuple[int, int]]  # (start, end or -1) of every core line, in line order
    lab_time: int | None = None
    lab_value: float | None = None
    daily_doses: dict[str, float] = field(default_factory=dict)
    context_orders: list[int] = field(default_factory=list)  # core rows the alert does not name


@dataclass
class Plan:
    chosen: np.ndarray  # bool per stay
    orders: Orders
    labs: ScenarioLabs
    allergies: list[tuple[int, str, int]]  # stay, allergy key, recorded
    pregnancies: list[tuple[int, str, int, int]]  # stay, status, recorded, due (epoch s)
    situations: list[Situation]


def _restrictiveness(s: Scenario) -> int:
    """Scenarios that few stays can host pick first."""
    return -sum(
        (
            s.in_progress_days is not None,
            s.sex is not None,
            s.need_days >= 9,
            s.min_platelets > 0,
            s.age[0] > 60,
        )
    )


ORDERED = sorted(SCENARIOS, key=_restrictiveness)


def _variant_rate(s: Scenario, rates: Mapping[str, float]) -> float:
    siblings = sum(1 for o in SCENARIOS if o.rule == s.rule and o.positive == s.positive)
    rate = rates.get(s.rule, DEFAULT_RATE) * (1.0 if s.positive else CONTROL_RATIO)
    return min(rate / siblings, 1.0)


def _eligible(
    s: Scenario, stays: Stays, period: Period, renal: np.ndarray, free: np.ndarray
) -> np.ndarray:
    data_end = stays.data_end(period)
    room = data_end - np.maximum(stays.admit + 2 * HOUR, period.start)
    ok = free & (room >= s.need_days * DAY)
    if s.in_progress_days is not None:
        latest = period.end - s.in_progress_days[1] * DAY - 2 * HOUR
        ok &= (stays.discharge < 0) & (stays.admit <= latest)
    if s.set_age is None:
        ok &= (stays.age_years(stays.admit) >= s.age[0]) & (stays.age_years(data_end) < s.age[1])
    else:  # only a nearby age is overridden, in a ward whose patients may be that old
        age = stays.age_years(stays.admit)
        ok &= (age >= s.set_age[0] - 10) & (age < s.set_age[1] + 10)
        lowest = np.array([WARD_PROFILES[kind].age[2] for kind in stays.kind])
        highest = np.array([WARD_PROFILES[kind].age[3] for kind in stays.kind])
        ok &= (lowest <= s.set_age[0]) & (s.set_age[1] <= highest)
    if s.sex is not None:
        ok &= stays.sex == s.sex
    ok &= renal >= s.min_renal
    ok &= stays.weight >= s.min_weight
    if s.min_platelets:
        ok &= stays.extra["platelets"] >= s.min_platelets
    return ok


# stay, drug, dose, frequency, period, period unit, start, end, status, as needed
_OrderRow = tuple[int, int, float, int, float, str, int, int, str, bool]


class _Writer:
    """Collects the rows scenarios write, then hands them over as columns."""

    def __init__(
        self, rng: np.random.Generator, stays: Stays, period: Period, formulary: Formulary
    ) -> None:
        self.rng, self.stays, self.period, self.formulary = rng, stays, period, formulary
        self.order_rows: list[_OrderRow] = []
        self.lab_rows: list[tuple[int, int, int, float]] = []
        self.suppress: list[tuple[int, int, int]] = []  # stay, concept, from (epoch s)
        self.allergies: list[tuple[int, str, int]] = []
        self.pregnancies: list[tuple[int, str, int, int]] = []
        self.situations: list[Situation] = []

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))

    def apply(self, s: Scenario, i: int) -> None:
        anchor = self._anchor(s, i)
        self._override(s, i, anchor)
        situation = Situation(s, i, anchor, [], [])
        for line in s.lines:
            self._prescribe(situation, line, i, anchor)
        for lab in s.earlier:
            self._inject(situation, lab, i, anchor)
        if s.lab is not None:
            self._inject(situation, s.lab, i, anchor)
            if s.lapse and s.window.kind in ("latest", "state"):
                # Nothing newer hides the injected result once its look-back has passed.
                assert situation.lab_time is not None
                self.suppress.append((i, CONCEPTS.index(s.lab.concept), situation.lab_time + 1))
        self._records(s, i, anchor)
        self.situations.append(situation)

    def _anchor(self, s: Scenario, i: int) -> int:
        st = self.stays
        if s.in_progress_days is not None:
            lo, hi = s.in_progress_days
            return int(self.period.end - self.uniform(lo, hi) * DAY) // 60 * 60
        first = max(int(st.admit[i]) + 2 * HOUR, self.period.start)
        slack = int(st.data_end(self.period)[i]) - first - s.need_days * DAY
        return int(first + self.uniform(0, max(slack, 0))) // 60 * 60

    def _override(self, s: Scenario, i: int, anchor: int) -> None:
        st = self.stays
        if s.set_age is not None:
            span = (st.data_end(self.period)[i] - st.admit[i]) / (DAY * YEAR_DAYS)
            age = self.uniform(s.set_age[0], max(s.set_age[0], s.set_age[1] - span))
            st.birth[i] = (int(st.admit[i]) - int(age * YEAR_DAYS * DAY)) // DAY * DAY
        if s.weight is not None:
            st.weight[i] = round(self.uniform(*s.weight), 1)
        if s.renal is not None:
            kind, lo, hi = s.renal
            target = np.array([self.uniform(lo, hi)])
            age_at_anchor = np.array([(anchor - st.birth[i]) / (DAY * YEAR_DAYS)])
            female = np.array([st.sex[i] == "F"])
            if kind == "crcl":
                weight = np.array([st.weight[i]])
                creat = creatinine_for_crcl(target, age_at_anchor, weight, female)
            else:
                creat = creatinine_for_egfr(target, age_at_anchor, female)
            st.creatinine[i] = float(np.clip(creat[0], 35, 1500))

    def _prescribe(self, situation: Situation, line: Line, i: int, anchor: int) -> None:
        st, f = self.stays, self.formulary
        drug = f.index(line.drug)
        start = max(anchor + int(line.at * HOUR), int(st.admit[i]) + 600) // 60 * 60
        data_end = int(st.data_end(self.period)[i])
        discharge = int(st.discharge[i])
        end = -1 if line.hours is None else start + int(line.hours * HOUR)
        if discharge >= 0 and (end < 0 or end > discharge):
            end = discharge
        status = "active" if end < 0 or end > data_end else "completed"
        frequency, period, unit = line.schedule or (
            int(f.frequency[drug]),
            f.period[drug],
            f.period_unit[drug],
        )
        dose = line.dose if line.dose is not None else float(f.dose[drug])
        if line.dose is None and f.per_kg[drug]:
            step = 1000.0 if f.unit[drug] == "IU" else 10.0
            dose = round(dose * st.weight[i] / step) * step
        row = len(self.order_rows)
        self.order_rows.append(
            (i, drug, dose, frequency, period, unit, start, end, status, line.prn)
        )
        if line.core:
            (situation.core_orders if line.named else situation.context_orders).append(row)
            situation.core_spans.append((start, end))
            per_day = frequency / (period * {"h": 1 / 24, "d": 1.0, "wk": 7.0}[unit])
            situation.daily_doses[line.drug] = round(dose * per_day, 4)

    def _inject(self, situation: Situation, lab: Lab, i: int, anchor: int) -> None:
        """Write ``lab``; the situation remembers the last result written (its window's)."""
        st = self.stays
        when = (anchor + int(self.uniform(*lab.at) * HOUR)) // 60 * 60
        raw = self.uniform(*lab.value)
        female = np.array([st.sex[i] == "F"])
        baseline = {"creatinine": st.creatinine[i]}.get(lab.concept) or st.extra.get(
            lab.concept, np.zeros(len(st))
        )[i]
        value = {
            "": raw,
            "uln": raw * float(reference_high(lab.concept, female)[0]),
            "baseline": raw * float(baseline),
            "add": float(baseline) + raw,
        }[lab.scale]
        value = round(value, lab.decimals)
        self.lab_rows.append((i, CONCEPTS.index(lab.concept), when, value))
        situation.lab_time, situation.lab_value = when, value

    def _records(self, s: Scenario, i: int, anchor: int) -> None:
        st = self.stays
        recorded = int(st.admit[i]) + int(self.uniform(0.2, 1.5) * HOUR) // 60 * 60
        for concept in s.suppress:
            self.suppress.append((i, CONCEPTS.index(concept), _WHOLE_SERIES))
        if s.inr_every_days is not None:
            data_end = int(st.data_end(self.period)[i])
            when = anchor + 2 * HOUR
            while when < data_end:
                self.lab_rows.append(
                    (i, CONCEPTS.index("inr"), when, round(self.uniform(2.0, 3.0), 1))
                )
                if math.isinf(s.inr_every_days):
                    break
                when += int(s.inr_every_days * DAY)
        if s.allergy is not None:
            self.allergies.append((i, s.allergy, recorded))
        if s.pregnancy is not None:
            due = (anchor + int(self.uniform(40, 200) * DAY)) // DAY * DAY
            self.pregnancies.append((i, s.pregnancy, recorded, due))

    def plan(self, chosen: np.ndarray) -> Plan:
        rows = self.order_rows
        cols = list(zip(*rows, strict=True)) if rows else [()] * 10
        orders = Orders(
            stay=np.array(cols[0], dtype=np.int64),
            drug=np.array(cols[1], dtype=np.int64),
            dose=np.array(cols[2], dtype=float),
            frequency=np.array(cols[3], dtype=np.int64),
            period=np.array(cols[4], dtype=float),
            period_unit=np.array(cols[5], dtype="<U2"),
            start=np.array(cols[6], dtype=np.int64),
            end=np.array(cols[7], dtype=np.int64),
            status=np.array(cols[8], dtype="<U9"),
            as_needed=np.array(cols[9], dtype=bool),
            scenario=np.ones(len(rows), dtype=bool),
        )
        lab_cols = list(zip(*self.lab_rows, strict=True)) if self.lab_rows else [()] * 4
        sup = list(zip(*self.suppress, strict=True)) if self.suppress else [()] * 3
        labs = ScenarioLabs(
            np.array(lab_cols[0], dtype=np.int64),
            np.array(lab_cols[1], dtype=np.int64),
            np.array(lab_cols[2], dtype=np.int64),
            np.array(lab_cols[3], dtype=float),
            np.array(sup[0], dtype=np.int64),
            np.array(sup[1], dtype=np.int64),
            np.array(sup[2], dtype=np.int64),
        )
        return Plan(chosen, orders, labs, self.allergies, self.pregnancies, self.situations)


def plan_scenarios(
    rng: np.random.Generator,
    stays: Stays,
    period: Period,
    formulary: Formulary,
    rates: Mapping[str, float],
    min_cases: int = 0,
) -> Plan:
    """Choose the stays that host each scenario and write the scenario's data; each scenario
    gets at least ``min_cases`` stays where enough stays can host it."""
    cg, egfr = renal_function(stays, stays.admit)
    renal = np.minimum(cg, egfr)
    chosen = np.zeros(len(stays), dtype=bool)
    writer = _Writer(rng, stays, period, formulary)
    for scenario in ORDERED:
        count = rng.binomial(len(stays), _variant_rate(scenario, rates)) if len(stays) else 0
        count = max(count, min_cases)
        if count == 0:
            continue
        pool = np.flatnonzero(_eligible(scenario, stays, period, renal, ~chosen))
        picked = rng.choice(pool, size=min(count, len(pool)), replace=False)
        for i in np.sort(picked):
            chosen[i] = True
            writer.apply(scenario, int(i))
    return writer.plan(chosen)
