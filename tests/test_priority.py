"""The priority score and the worklist (issue 9, item 5).

Expectations come from the rule catalogue (thresholds, severities) and from the score's stated
rationale (docs/priority.md): severity dominates; further past the threshold, older, worse renal
function, more other open alerts and a better PPV never rank lower.
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import lab, order, patient, source, weight
from vigie.engine import FactSet, evaluate
from vigie.engine.alerts import Alert, Threshold
from vigie.engine.priority import (
    OLD_AGE,
    RENAL_LIMIT,
    PatientContext,
    priority,
    threshold_distance,
    worklist,
)
from vigie.facts import AnyFact, Stay
from vigie.rules import compile_pack

REPO = Path(__file__).parents[1]
NOW = datetime(2024, 3, 4, 12, 0)
LAB_TIME = datetime(2024, 3, 4, 8, 0)
SEVERITIES = ["minor", "moderate", "major", "critical"]  # catalogue order, lowest first


@cache
def default_ir() -> dict[str, Any]:
    path = REPO / "rules/packs/default.rules"
    ir, diagnostics = compile_pack(path.read_text(encoding="utf-8"), str(path))
    assert ir is not None, [d.message for d in diagnostics if d.is_error]
    return ir


def stay(pid: str, ward: str, admit: datetime = datetime(2024, 3, 1)) -> Stay:
    return Stay(
        fact_id=f"S-{pid}-{ward}",
        patient_id=pid,
        source=source("PV1"),
        stay_id=f"S-{pid}-{ward}",
        ward=ward,
        admit_time=admit,
        status="in-progress",
    )


def on_ramipril(
    pid: str, k: float, born: date = date(1960, 5, 1), ward: str = "CARDIO"
) -> list[AnyFact]:
    """A patient on ramipril (C09AA05, potassium-raising) with one K+ result."""
    return [
        patient(pid, born=born),
        order(pid, f"ORD-{pid}", "C09AA05"),
        lab(pid, "potassium", k, time=LAB_TIME, fid=f"K-{pid}"),
        stay(pid, ward),
    ]


def alerts_of(facts: list[AnyFact]) -> list[Alert]:
    return evaluate(default_ir(), FactSet(facts), NOW)


def order_of(facts: list[AnyFact], **filters: Any) -> list[tuple[str, str]]:
    alerts = alerts_of(facts)
    return [
        (i.alert.patient_id, i.alert.rule_id)
        for i in worklist(alerts, FactSet(facts), NOW, **filters)
    ]


# The threshold recorded on the alert ----------------------------------------------------------


def test_hyperkalaemia_alert_records_the_value_and_the_catalogue_threshold() -> None:
    (alert,) = alerts_of(on_ramipril("p1", 5.9))
    assert alert.rule_id == "bio.hyperkalaemia" and alert.severity == "major"
    # Catalogue: K+ > k_max 5.5 mmol/L; the escalation (≥ 6.0) is not a threshold of the condition.
    assert alert.thresholds == (
        Threshold(name="k", op="gt", value=5.9, threshold=5.5, unit="mmol/L", param="k_max"),
    )


def test_escalation_comparisons_are_not_thresholds() -> None:
    # K+ 6.3: critical by the escalation K+ >= 6.0 (catalogue); the threshold is still k_max.
    (alert,) = alerts_of(on_ramipril("p1", 6.3))
    assert alert.severity == "critical"
    assert [(t.param, t.threshold) for t in alert.thresholds] == [("k_max", 5.5)]


def test_threshold_written_first_is_read_the_same_way() -> None:
    # `k_max < k` says the same as `k > k_max`: recorded with the measured value first.
    text = (
        'pack "t" version "1.0.0"\n'
        "set raising = atc C09A\n"
        "param k_max = 5.5 mmol/L in 5.0 .. 6.5\n"
        'rule t.k "K"\n  problem 7 intervention 2 severity major\n  when\n'
        "    d = active drug in raising\n    k = latest potassium within 48 h\n"
        '    k_max < k\n  say "K {k}"\n'
    )
    ir, diagnostics = compile_pack(text, "t.rules")
    assert ir is not None, [d.message for d in diagnostics]
    (alert,) = evaluate(ir, FactSet(on_ramipril("p1", 5.9)), NOW)
    (threshold,) = alert.thresholds
    assert (threshold.name, threshold.op, threshold.value, threshold.threshold) == (
        "k",
        "gt",
        5.9,
        5.5,
    )


def test_metformin_egfr_records_a_below_threshold() -> None:
    facts: list[AnyFact] = [
        patient("p1"),
        order("p1", "M1", "A10BA02"),
        lab("p1", "egfr", 12.0, unit="mL/min/1.73m2", time=LAB_TIME, fid="G1"),
    ]
    (alert,) = [a for a in alerts_of(facts) if a.rule_id == "renal.metformin_egfr"]
    (threshold,) = alert.thresholds
    assert (threshold.op, threshold.value, threshold.threshold) == ("lt", 12.0, 30.0)
    assert threshold.param == "metformin_egfr_max"
    assert threshold_distance(threshold) == pytest.approx(18 / 30)


def test_daily_dose_records_the_amount_against_the_dose_limit_not_the_weight() -> None:
    # Catalogue dose.paracetamol_max: > 4 g/day, or > 3 g/day under 50 kg. At 44 kg and
    # 3 x 1000 mg + 0.5: 3.5 g against 3 g; the weight (< 50 kg) is patient context.
    facts: list[AnyFact] = [
        patient("p1"),
        order("p1", "P1", "N02BE01", dose=1000, per_day=3.5),
        weight("p1", 44.0),
    ]
    (alert,) = [a for a in alerts_of(facts) if a.rule_id == "dose.paracetamol_max"]
    assert [(t.name, t.op, t.value, t.threshold, t.unit) for t in alert.thresholds] == [
        ("p", "gt", 3500.0, 3000.0, "mg")
    ]
    assert threshold_distance(alert.thresholds[0]) == pytest.approx(500 / 3000)


def test_alert_without_a_numeric_threshold_records_none() -> None:
    # Two DOACs (catalogue coag.doac_duplicate): no measured value, no threshold.
    facts: list[AnyFact] = [
        patient("p1"),
        order("p1", "A1", "B01AF01"),
        order("p1", "A2", "B01AF02"),
    ]
    alerts = [a for a in alerts_of(facts) if a.rule_id == "coag.doac_duplicate"]
    assert alerts and all(a.thresholds == () for a in alerts)
    assert "thresholds" not in alerts[0].model_dump(exclude_defaults=True)


# Concrete orderings on the default pack --------------------------------------------------------


def test_higher_potassium_ranks_first_within_major() -> None:
    facts = on_ramipril("low", 5.6) + on_ramipril("high", 5.9)
    assert order_of(facts) == [("high", "bio.hyperkalaemia"), ("low", "bio.hyperkalaemia")]


def test_critical_potassium_ranks_above_major_whatever_the_context() -> None:
    # 6.8 escalates to critical (catalogue); the major patient is old, renal-impaired and has
    # another alert, yet stays below.
    young_critical = on_ramipril("crit", 6.8, born=date(1990, 1, 1))
    old_major = [
        *on_ramipril("old", 5.6, born=date(1930, 1, 1)),
        lab("old", "egfr", 12.0, unit="mL/min/1.73m2", time=LAB_TIME, fid="G-old"),
        order("old", "M-old", "A10BA02"),  # metformin with eGFR 12: a second (major) alert
    ]
    ranked = order_of(young_critical + old_major)
    assert ranked[0] == ("crit", "bio.hyperkalaemia")
    assert set(ranked[1:]) == {("old", "bio.hyperkalaemia"), ("old", "renal.metformin_egfr")}


def test_metformin_further_below_egfr_threshold_ranks_first() -> None:
    def on_metformin(pid: str, egfr: float) -> list[AnyFact]:
        return [
            patient(pid, born=date(1960, 1, 1)),
            order(pid, f"M-{pid}", "A10BA02"),
            lab(pid, "egfr", egfr, unit="mL/min/1.73m2", time=LAB_TIME, fid=f"G-{pid}"),
        ]

    facts = on_metformin("g28", 28.0) + on_metformin("g12", 12.0)
    ranked = [r for r in order_of(facts) if r[1] == "renal.metformin_egfr"]
    assert ranked == [("g12", "renal.metformin_egfr"), ("g28", "renal.metformin_egfr")]


def test_older_patient_ranks_first_at_equal_potassium() -> None:
    facts = on_ramipril("young", 5.8, born=date(1980, 1, 1)) + on_ramipril(
        "old", 5.8, born=date(1940, 1, 1)
    )
    assert order_of(facts)[0][0] == "old"
    items = worklist(alerts_of(facts), FactSet(facts), NOW)
    old = next(i for i in items if i.alert.patient_id == "old")
    assert old.context.age == 84 and old.priority.age > 0


def test_renal_context_from_cockcroft_gault() -> None:
    # No eGFR sent: creatinine 300 µmol/L, 60 kg, 83-year-old woman:
    # (140 - 83) × 60 × 1.04 / 300 = 11.9 mL/min < 30.
    facts = [
        *on_ramipril("p1", 5.8, born=date(1940, 5, 1)),
        lab("p1", "creatinine", 300.0, unit="µmol/L", time=LAB_TIME, fid="C1"),
        weight("p1", 60.0),
    ]
    (item,) = worklist(alerts_of(facts), FactSet(facts), NOW)
    assert item.context.renal is not None and item.context.renal < RENAL_LIMIT
    assert item.priority.renal > 0


def test_renal_context_takes_the_lowest_available_value() -> None:
    # docs/priority.md: the lowest of the reported eGFR and the reported clearance (the cautious
    # reading); no creatinine, so nothing computed.
    facts = [
        *on_ramipril("p1", 5.8),
        lab("p1", "egfr", 45.0, unit="mL/min/1.73m2", time=LAB_TIME, fid="G1"),
        lab("p1", "creatinine_clearance", 20.0, unit="mL/min", time=LAB_TIME, fid="CL1"),
    ]
    (item,) = worklist(alerts_of(facts), FactSet(facts), NOW)
    assert (item.context.renal, item.context.renal_source) == (20.0, "clearance (reported)")
    assert item.priority.renal > 0


# Filters ---------------------------------------------------------------------------------------


def test_filters_by_current_ward_and_severity() -> None:
    facts = (
        on_ramipril("c1", 5.9, ward="CARDIO")
        + on_ramipril("n1", 6.5, ward="NEPHRO")
        + on_ramipril("n2", 5.7, ward="NEPHRO")
    )
    assert [p for p, _ in order_of(facts, ward="NEPHRO")] == ["n1", "n2"]
    assert [p for p, _ in order_of(facts, ward=["CARDIO"])] == ["c1"]
    assert [p for p, _ in order_of(facts, severity="major")] == ["c1", "n2"]
    assert [p for p, _ in order_of(facts, ward="NEPHRO", severity="critical")] == ["n1"]
    assert order_of(facts, ward="ICU") == []


def test_ward_is_the_current_stay_of_the_factset() -> None:
    facts = on_ramipril("p1", 5.9, ward="CARDIO")
    alerts = alerts_of(facts)
    moved = [*facts, stay("p1", "GERIATRIE", admit=datetime(2024, 3, 4, 10, 0))]
    items = worklist(alerts, FactSet(moved), NOW, ward="GERIATRIE")
    assert [i.alert.patient_id for i in items] == ["p1"]
    assert worklist(alerts, FactSet(moved), NOW, ward="CARDIO") == []


def test_aware_evaluation_time_reads_the_same_context() -> None:
    facts = on_ramipril("p1", 5.8, born=date(1940, 1, 1))
    alerts = alerts_of(facts)
    naive = worklist(alerts, FactSet(facts), NOW)
    aware = worklist(alerts, FactSet(facts), NOW.replace(tzinfo=UTC))
    assert naive == aware and naive[0].context.ward == "CARDIO"


# Determinism -----------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False))
def test_order_does_not_depend_on_input_order(rng: random.Random) -> None:
    facts = (
        on_ramipril("a", 5.8)
        + on_ramipril("b", 5.8)  # same score as "a": ties broken by patient id
        + on_ramipril("c", 6.2)
        + on_ramipril("d", 5.6, born=date(1935, 1, 1))
    )
    alerts = alerts_of(facts)
    expected = [i.alert.id for i in worklist(alerts, FactSet(facts), NOW)]
    shuffled = list(alerts)
    rng.shuffle(shuffled)
    assert [i.alert.id for i in worklist(shuffled, FactSet(facts), NOW)] == expected
    assert expected.index(alerts_of(on_ramipril("a", 5.8))[0].id) < expected.index(
        alerts_of(on_ramipril("b", 5.8))[0].id
    )


# Monotonicity (Hypothesis) -----------------------------------------------------------------------


@cache
def base_alert() -> Alert:
    (alert,) = alerts_of(on_ramipril("p1", 5.9))
    return alert


def with_(severity: str, thresholds: tuple[Threshold, ...] = ()) -> Alert:
    return base_alert().model_copy(update={"severity": severity, "thresholds": thresholds})


contexts = st.builds(
    PatientContext,
    age=st.none() | st.integers(0, 110),
    renal=st.none() | st.floats(0, 200, allow_nan=False),
    other_open_alerts=st.integers(0, 30),
)
thresholds = st.builds(
    Threshold,
    name=st.just("x"),
    op=st.sampled_from(["lt", "le", "gt", "ge"]),
    value=st.floats(-1e4, 1e4, allow_nan=False),
    threshold=st.floats(-1e4, 1e4, allow_nan=False),
)
ppvs = st.none() | st.dictionaries(st.just("bio.hyperkalaemia"), st.floats(0, 1))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(range(len(SEVERITIES) - 1)),
    st.lists(thresholds, max_size=3),
    st.lists(thresholds, max_size=3),
    contexts,
    contexts,
    ppvs,
    ppvs,
)
def test_higher_severity_always_ranks_higher(
    low: int,
    t_low: list[Threshold],
    t_high: list[Threshold],
    c_low: PatientContext,
    c_high: PatientContext,
    p_low: dict[str, float] | None,
    p_high: dict[str, float] | None,
) -> None:
    """Severity dominates: even with every other part against it (and so all else equal)."""
    high = SEVERITIES[low + 1]
    below = priority(with_(SEVERITIES[low], tuple(t_low)), c_low, p_low).score
    above = priority(with_(high, tuple(t_high)), c_high, p_high).score
    assert above > below


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(SEVERITIES),
    st.sampled_from(["lt", "le", "gt", "ge"]),
    st.floats(0.01, 1e4),
    st.floats(0, 1e4),
    st.floats(0, 1e4),
    contexts,
)
def test_further_past_the_threshold_never_ranks_lower(
    severity: str, op: str, threshold: float, d1: float, d2: float, context: PatientContext
) -> None:
    near, far = sorted((d1, d2))
    sign = 1 if op in ("gt", "ge") else -1

    def score(past: float) -> float:
        t = Threshold(name="x", op=op, value=threshold + sign * past, threshold=threshold)
        return priority(with_(severity, (t,)), context).score

    assert score(far) >= score(near)
    assert score(near) >= priority(with_(severity), context).score  # no threshold: 0 points


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(SEVERITIES),
    st.lists(thresholds, max_size=2),
    contexts,
    st.integers(0, 110),
    st.floats(0, 200, allow_nan=False),
    st.integers(0, 30),
)
def test_older_renal_impaired_or_busier_patient_never_ranks_lower(
    severity: str,
    recorded: list[Threshold],
    context: PatientContext,
    extra_years: int,
    renal_drop: float,
    extra_alerts: int,
) -> None:
    alert = with_(severity, tuple(recorded))
    worse = PatientContext(
        age=None if context.age is None else context.age + extra_years,
        renal=None if context.renal is None else max(context.renal - renal_drop, 0.0),
        other_open_alerts=context.other_open_alerts + extra_alerts,
    )
    assert priority(alert, worse).score >= priority(alert, context).score
    # Known beats unknown when known is at risk.
    old = PatientContext(age=OLD_AGE, renal=RENAL_LIMIT - 1, other_open_alerts=0)
    assert priority(alert, old).score > priority(alert, PatientContext()).score


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(SEVERITIES), contexts, st.floats(0, 1), st.floats(0, 1))
def test_better_ppv_never_ranks_lower(
    severity: str, context: PatientContext, a: float, b: float
) -> None:
    low, high = sorted((a, b))
    alert = with_(severity)
    ranked = [priority(alert, context, {alert.rule_id: v}).score for v in (low, high)]
    assert ranked[1] >= ranked[0]


@settings(max_examples=20, deadline=None)
@given(st.floats(5.51, 5.99), st.floats(5.51, 5.99))
def test_evaluated_potassium_orders_by_value(k1: float, k2: float) -> None:
    """End to end on the default pack: of two major hyperkalaemias, the higher K+ never ranks
    lower (all else equal)."""
    facts = on_ramipril("a", round(k1, 2)) + on_ramipril("b", round(k2, 2))
    items = worklist(alerts_of(facts), FactSet(facts), NOW)
    values = [i.priority.threshold.value for i in items if i.priority.threshold is not None]
    assert len(values) == 2 and values[0] >= values[1]
