"""The live evaluator: dependent rules only, time-based rules on tick, batch = incremental."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigie.engine import Alert, FactSet, LiveEvaluator, evaluate, load_pack
from vigie.engine import live as live_module
from vigie.engine.live import AlertDiff
from vigie.engine.load import LoadedPack
from vigie.facts import (
    Allergy,
    AnyFact,
    Coding,
    Condition,
    LabResult,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Sex,
    Source,
    Stay,
)
from vigie.rules import compile_pack

REPO = Path(__file__).parents[1]
T0 = datetime(2024, 3, 1, 0, 0)
SRC = Source(feed="test", document="live.hl7", position="OBX[1]-5")


@cache
def default_pack() -> LoadedPack:
    path = REPO / "rules/packs/default.rules"
    ir, _ = compile_pack(path.read_text(encoding="utf-8"), str(path))
    assert ir is not None
    return load_pack(ir)


def order(oid: str, atc: str, start: datetime = T0, **fields: Any) -> MedicationOrder:
    values: dict[str, Any] = {
        "dose": 5.0,
        "dose_unit": "mg",
        "frequency_per_day": 1.0,
        "daily_dose": 5.0,
        "route": "oral",
    }
    values.update(fields)
    return MedicationOrder(
        fact_id=oid,
        patient_id=values.pop("patient_id", "p1"),
        source=SRC,
        order_id=oid,
        drug=Coding(code=atc, display=oid),
        atc=atc,
        label=oid,
        start=start,
        **values,
    )


def lab(concept: str, value: float | None, time: datetime, fid: str, pid: str = "p1") -> LabResult:
    return LabResult(
        fact_id=fid,
        patient_id=pid,
        source=SRC,
        concept=concept,
        code=Coding(code=concept),
        value=value,
        unit=UNITS.get(concept),
        time=time,
    )


UNITS = {
    "potassium": "mmol/L",
    "sodium": "mmol/L",
    "creatinine": "µmol/L",
    "glucose": "mmol/L",
    "platelets": "G/L",
    "inr": None,
    "egfr": "mL/min/1.73m2",
    "vancomycin": "mg/L",
    "ck": "U/L",
    "alt": "U/L",
    "neutrophils": "G/L",
}


def content(alert: Alert) -> dict[str, Any]:
    return alert.model_dump(exclude={"as_of"})


def test_add_reports_new_updated_and_resolved() -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    assert not live.add(Patient(fact_id="p1", patient_id="p1", source=SRC, sex=Sex.FEMALE))
    assert not live.add(order("ORD1", "C09AA05"))
    diff = live.add(lab("potassium", 5.9, T0 + timedelta(days=1, hours=1), "K1"))
    assert [a.rule_id for a in diff.new] == ["bio.hyperkalaemia"] and not diff.resolved
    first = diff.new[0]
    diff = live.add(lab("potassium", 6.2, T0 + timedelta(days=1, hours=2), "K2"))
    assert [a.id for a in diff.updated] == [first.id] and diff.updated[0].severity == "critical"
    diff = live.add(lab("potassium", 4.5, T0 + timedelta(days=1, hours=3), "K3"))
    assert [a.id for a in diff.resolved] == [first.id] and not diff.new
    assert live.alerts() == []


def test_a_corrected_result_replaces_the_previous_one() -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("ORD1", "C09AA05"))
    assert live.add(lab("potassium", 6.0, T0 + timedelta(days=1, hours=1), "K1")).new
    diff = live.add(lab("potassium", 4.0, T0 + timedelta(days=1, hours=1), "K1"))  # same id
    assert diff.resolved and live.alerts() == []
    record = live.record("p1")
    assert record is not None and [f.value for f in record.labs["potassium"]] == [4.0]


def test_add_reevaluates_only_dependent_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    for oid, atc in [("o1", "C09AA05"), ("o2", "B01AA03"), ("o3", "N06AB04"), ("o4", "A10BA02")]:
        live.add(order(oid, atc))
    seen: list[str] = []
    real = live_module.evaluate_rule

    def spy(rule: Any, ctx: Any, stay: Any) -> list[Alert]:
        seen.append(rule.id)
        return real(rule, ctx, stay)

    monkeypatch.setattr(live_module, "evaluate_rule", spy)
    live.add(lab("potassium", 4.0, T0 + timedelta(days=1, hours=1), "K1"))
    assert seen and set(seen) <= {"bio.hyperkalaemia", "bio.hypokalaemia_qt", "bio.digoxin"}
    seen.clear()
    live.add(lab("inr", 2.5, T0 + timedelta(days=1, hours=2), "I1"))
    assert set(seen) <= {"coag.vka_inr_high", "coag.vka_no_inr", "coag.vka_relay"}
    assert "coag.vka_inr_high" in seen


def test_tick_fires_and_resolves_time_based_rules() -> None:
    live = LiveEvaluator(default_pack(), now=T0)
    live.add(order("AVK", "B01AA03", start=T0))
    assert not live.tick(T0 + timedelta(days=2))  # VKA for < 3 days
    diff = live.tick(T0 + timedelta(days=3))  # ≥ 3 days with no INR in 7 days
    assert [a.rule_id for a in diff.new] == ["coag.vka_no_inr"]
    assert live.add(lab("inr", 2.5, T0 + timedelta(days=3, hours=1), "I1")).resolved
    diff = live.tick(T0 + timedelta(days=10, hours=2))  # the INR is now older than 7 days
    assert [a.rule_id for a in diff.new] == ["coag.vka_no_inr"]


def test_tick_follows_order_ends_and_future_facts() -> None:
    live = LiveEvaluator(default_pack(), now=T0)
    live.add(order("o", "C09AA05", start=T0, end=T0 + timedelta(days=2), status="completed"))
    k = lab("potassium", 6.0, T0 + timedelta(days=1), "K1")
    assert not live.add(k, now=T0 + timedelta(hours=1))  # dated later than now: not yet read
    assert [a.rule_id for a in live.tick(T0 + timedelta(days=1)).new] == ["bio.hyperkalaemia"]
    assert live.tick(T0 + timedelta(days=2)).resolved  # the line ended


def test_stay_changes_move_alerts() -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("o", "C09AA05"))
    live.add(lab("potassium", 6.0, T0 + timedelta(days=1), "K1"))
    stay = Stay(
        fact_id="S1", patient_id="p1", source=SRC, stay_id="S1", ward="NEPHRO", admit_time=T0
    )
    diff = live.add(stay)
    assert [(a.stay_id, a.ward) for a in diff.updated] == [("S1", "NEPHRO")]


def test_diff_merge() -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("o", "C09AA05"))
    diff = live.add_many(
        [
            lab("potassium", 6.0, T0 + timedelta(days=1), "K1"),
            lab("potassium", 4.0, T0 + timedelta(days=1, hours=1), "K2"),
        ]
    )
    assert diff == AlertDiff()  # appeared then resolved: no change


# Batch = incremental ------------------------------------------------------------------------

DRUGS = [
    ("C09AA05", "oral"),  # ramipril: potassium raising, nephrotoxic
    ("C03DA01", "oral"),  # spironolactone
    ("V03AE01", "oral"),  # potassium binder
    ("A12BA01", "oral"),  # potassium supplement
    ("B01AA03", "oral"),  # warfarin
    ("B01AF01", "oral"),  # rivaroxaban
    ("B01AE07", "oral"),  # dabigatran
    ("B01AB05", "sc"),  # enoxaparin
    ("M01AE01", "oral"),  # ibuprofen
    ("M01AE01", "topical"),
    ("A10BA02", "oral"),  # metformin
    ("N02AA01", "oral"),  # morphine
    ("N02BE01", "oral"),  # paracetamol
    ("N05BA01", "oral"),  # diazepam
    ("N06AB04", "oral"),  # citalopram
    ("N06AB06", "oral"),  # sertraline
    ("J01XA01", "iv"),  # vancomycin
    ("J01MA12", "iv"),  # levofloxacin
    ("L04AX03", "oral"),  # methotrexate
    ("C01AA05", "oral"),  # digoxin
    ("A06AD15", "oral"),  # macrogol
    ("A02BC01", "oral"),  # omeprazole
]
LABS = {
    "potassium": (2.5, 7.0),
    "sodium": (118.0, 145.0),
    "creatinine": (40.0, 400.0),
    "glucose": (2.0, 12.0),
    "platelets": (20.0, 400.0),
    "inr": (0.9, 7.0),
    "egfr": (10.0, 90.0),
    "vancomycin": (5.0, 30.0),
    "ck": (50.0, 5000.0),
    "alt": (10.0, 400.0),
    "neutrophils": (0.5, 6.0),
}
PATIENTS = ("p1", "p2")
SPAN = 14 * 24 * 60  # minutes
RECENT = 3 * 24 * 60


def _moment(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


# Half the times fall in the last days of the span, where the final evaluation looks, so that
# windows, durations and drug periods meet often enough for rules to fire.
times = st.one_of(st.integers(0, SPAN), st.integers(SPAN - RECENT, SPAN))


@st.composite
def facts_strategy(draw: st.DrawFn) -> AnyFact:
    pid = draw(st.sampled_from(PATIENTS))
    kind = draw(
        st.sampled_from(["order", "order", "lab", "lab", "lab", "weight", "patient", "other"])
    )
    if kind == "order":
        atc, route = draw(st.sampled_from(DRUGS))
        start = _moment(draw(times))
        ended = draw(st.booleans())
        end = start + timedelta(minutes=draw(st.integers(1, SPAN))) if ended else None
        status = draw(st.sampled_from(["completed", "stopped", "active"])) if ended else "active"
        dose = draw(st.sampled_from([None, 5.0, 500.0, 1000.0, 4000.0]))
        per_day = draw(st.sampled_from([None, 1.0, 2.0, 4.0, 1 / 7]))
        owner = pid if draw(st.integers(0, 9)) else "any"  # sometimes a line moves patient
        return order(
            f"ORD-{owner}-{draw(st.integers(0, 7))}",
            atc,
            start=start,
            end=end,
            status=status,
            route=route,
            patient_id=pid,
            dose=dose,
            dose_unit=draw(st.sampled_from(["mg", "mg", "mg", "IU", "tablet", "µg"])),
            frequency_per_day=per_day,
            daily_dose=None if dose is None or per_day is None else dose * per_day,
        )
    if kind == "lab":
        concept = draw(st.sampled_from(sorted(LABS)))
        low, high = LABS[concept]
        value = draw(st.one_of(st.sampled_from([low, high]), st.floats(low, high), st.none()))
        return lab(
            concept,
            value,
            _moment(draw(times)),
            f"LAB-{draw(st.integers(0, 40))}",
            pid,
        )
    if kind == "weight":
        return Observation(
            fact_id=f"W-{draw(st.integers(0, 5))}",
            patient_id=pid,
            source=SRC,
            concept="weight",
            code=Coding(code="29463-7"),
            value=draw(st.floats(35.0, 120.0)),
            unit="kg",
            time=_moment(draw(times)),
        )
    if kind == "patient":
        return Patient(
            fact_id=pid,
            patient_id=pid,
            source=SRC,
            birth_date=draw(st.one_of(st.dates(date(1925, 1, 1), date(2005, 1, 1)), st.none())),
            sex=draw(st.sampled_from([Sex.FEMALE, Sex.MALE, Sex.FEMALE, Sex.MALE, Sex.UNKNOWN])),
        )
    other = draw(st.sampled_from(["condition", "allergy", "pregnancy", "stay"]))
    when = _moment(draw(times))
    fid = f"{other}-{draw(st.integers(0, 3))}"
    if other == "condition":
        code = draw(st.sampled_from(["K92.1", "O80", "I10"]))
        return Condition(
            fact_id=fid, patient_id=pid, source=SRC, code=Coding(code=code), icd10=code, onset=when
        )
    if other == "allergy":
        return Allergy(
            fact_id=fid,
            patient_id=pid,
            source=SRC,
            substance=Coding(code="x"),
            atc=(draw(st.sampled_from(["M01A", "C09", "N02"])),),
            recorded=when,
        )
    if other == "pregnancy":
        return Pregnancy(
            fact_id=fid,
            patient_id=pid,
            source=SRC,
            status=draw(st.sampled_from(["pregnant", "not-pregnant"])),
            recorded=when,
        )
    return Stay(
        fact_id=fid,
        patient_id=pid,
        source=SRC,
        stay_id=fid,
        ward=draw(st.sampled_from(["MED", "CHIR"])),
        admit_time=when,
        discharge_time=when + timedelta(days=draw(st.integers(1, 10))),
        status="in-progress",
    )


steps = st.lists(
    st.tuples(facts_strategy(), st.one_of(st.none(), st.none(), times)),
    min_size=20,
    max_size=80,
)


@pytest.mark.property
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, end=st.integers(SPAN - RECENT, SPAN + RECENT))
def test_incremental_equals_batch(steps: list[tuple[AnyFact, int | None]], end: int) -> None:
    """Fed fact by fact, the live evaluator agrees with a batch evaluation of the facts so far
    after every ``tick`` (and at the end) — and random facts never crash either."""
    pack = default_pack()
    live = LiveEvaluator(pack, now=T0)
    seen: list[AnyFact] = []
    for fact, tick in steps:
        if tick is not None:
            live.tick(_moment(tick))
            batch = evaluate(pack, FactSet(seen), _moment(tick)) if seen else []
            assert [content(a) for a in live.alerts()] == [content(a) for a in batch]
        live.add(fact)
        seen.append(fact)
    at = _moment(end)
    live.tick(at)
    batch = evaluate(pack, FactSet(seen), at)
    assert [content(a) for a in live.alerts()] == [content(a) for a in batch]
