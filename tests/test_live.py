"""The live evaluator: dependent rules only, time-based rules on tick, batch = incremental."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from vigie.engine import Alert, FactSet, LiveEvaluator, evaluate, load_pack
from vigie.engine import live as live_module
from vigie.engine.alerts import Evidence
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
from vigie.facts.model import Ingredient
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
    assert live.explained == 2  # the two high results each built (explained) the alert
    diff = live.add(lab("potassium", 4.5, T0 + timedelta(days=1, hours=3), "K3"))
    assert [a.id for a in diff.resolved] == [first.id] and not diff.new
    assert live.alerts() == [] and live.explained == 2


def test_a_corrected_result_replaces_the_previous_one() -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("ORD1", "C09AA05"))
    assert live.add(lab("potassium", 6.0, T0 + timedelta(days=1, hours=1), "K1")).new
    diff = live.add(lab("potassium", 4.0, T0 + timedelta(days=1, hours=1), "K1"))  # same id
    assert diff.resolved and live.alerts() == []
    record = live.record("p1")
    assert record is not None and [f.value for f in record.labs["potassium"]] == [4.0]


def _evaluated(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the rules evaluated from now on (each evaluation)."""
    seen: list[str] = []
    real = live_module.firing_combinations

    def spy(rule: Any, ctx: Any) -> list[Any]:
        seen.append(rule.id)
        return real(rule, ctx)

    monkeypatch.setattr(live_module, "firing_combinations", spy)
    return seen


def test_add_reevaluates_only_dependent_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    for oid, atc in [("o1", "C09AA05"), ("o2", "B01AA03"), ("o3", "N06AB04"), ("o4", "A10BA02")]:
        live.add(order(oid, atc))
    seen = _evaluated(monkeypatch)
    live.add(lab("potassium", 4.0, T0 + timedelta(days=1, hours=1), "K1"))
    assert seen and set(seen) <= {"bio.hyperkalaemia", "bio.hypokalaemia_qt", "bio.digoxin"}
    seen.clear()
    live.add(lab("inr", 2.5, T0 + timedelta(days=1, hours=2), "I1"))
    assert set(seen) <= {"coag.vka_inr_high", "coag.vka_no_inr", "coag.vka_relay"}
    assert "coag.vka_inr_high" in seen


def test_mme_is_evaluated_again_when_an_opioid_line_comes_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MME sums the opioid lines (catalogue: CDC 2022 factors, morphine 1, oxycodone 1.5,
    codeine 0.15): another line cannot change it, so it does not evaluate the MME rule."""
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("MOR", "N02AA01", dose=30.0, frequency_per_day=2.0, daily_dose=60.0))  # 60
    seen = _evaluated(monkeypatch)
    live.add(order("PARA", "N02BE01", dose=1000.0, frequency_per_day=3.0, daily_dose=3000.0))
    assert "dose.opioid_mme" not in seen
    diff = live.add(order("OXY", "N02AA05", dose=20.0, frequency_per_day=2.0, daily_dose=40.0))
    assert "dose.opioid_mme" in seen  # 60 + 40 × 1.5 = 120 MME: ≥ 90, and major from 120
    assert [(a.rule_id, a.severity) for a in diff.new] == [("dose.opioid_mme", "major")]
    seen.clear()
    # Codeine in a product coded as paracetamol (N02BE51: not an opioid code) counts by its
    # composition: 4 × 30 mg × 0.15 = 18 MME, 138 in all.
    codeine = Ingredient(name="PHOSPHATE DE CODÉINE HÉMIHYDRATÉ", amount=30.0, unit="mg")
    paracetamol = Ingredient(name="PARACÉTAMOL", atc="N02BE01", amount=500.0, unit="mg")
    diff = live.add(
        order(
            "CODO", "N02BE51", dose=1.0, dose_unit="tablet", frequency_per_day=4.0,
            daily_dose=4.0, ingredients=(codeine, paracetamol),
        )
    )  # fmt: skip
    assert "dose.opioid_mme" in seen
    [alert] = [a for a in live.alerts() if a.rule_id == "dose.opioid_mme"]
    assert alert.message.startswith("Opioïdes : 138 MME")
    # Stopping the paracetamol (a new version of a non-opioid line) leaves MME alone.
    seen.clear()
    live.add(order("PARA", "N02BE01", end=T0 + timedelta(hours=12)))
    assert "dose.opioid_mme" not in seen


def test_the_allergy_rule_needs_an_allergy_on_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """combo.allergy (catalogue: an active drug whose ATC class matches a recorded allergy)
    cannot fire without an allergy: a line coming for a patient with none does not evaluate it;
    an allergy coming does, and so does a line once there is one."""
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    seen = _evaluated(monkeypatch)
    live.add(order("AMOX", "J01CA04", dose=1000.0, frequency_per_day=3.0, daily_dose=3000.0))
    live.add(order("PARA", "N02BE01", dose=1000.0, frequency_per_day=3.0, daily_dose=3000.0))
    assert "combo.allergy" not in seen and live.alerts() == []
    allergy = Allergy(
        fact_id="A1", patient_id="p1", source=SRC, substance=Coding(code="penicillins"),
        atc=("J01C",), recorded=T0,
    )  # fmt: skip
    diff = live.add(allergy)
    assert [(a.rule_id, a.severity) for a in diff.new] == [("combo.allergy", "critical")]
    seen.clear()
    live.add(order("CLOXA", "J01CF02", dose=1000.0, frequency_per_day=4.0, daily_dose=4000.0))
    assert "combo.allergy" in seen
    assert sorted(a.drugs[0].order_id for a in live.alerts()) == ["AMOX", "CLOXA"]


def test_an_allergy_retracted_resolves_its_alert_and_another_keeps_it() -> None:
    """The rules an allergy reaches are chosen once per set of active lines (kept with them),
    with and without those needing an allergy on record: one with an alert is evaluated
    either way, so the alert resolves when the last allergy is withdrawn (catalogue:
    combo.allergy, an active drug of the class of a recorded allergy)."""
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("AMOX", "J01CA04", dose=1000.0, frequency_per_day=3.0, daily_dose=3000.0))
    allergies = [
        Allergy(
            fact_id=f"A{i}",
            patient_id="p1",
            source=SRC,
            substance=Coding(code="penicillins"),
            atc=("J01C",),
            recorded=T0,
        )
        for i in (1, 2)
    ]
    assert [a.rule_id for a in live.add(allergies[0]).new] == ["combo.allergy"]
    assert not live.add(allergies[1]).resolved  # the same alert (its evidence may grow)
    diff = live.retract("allergy", "A1")
    assert not diff.resolved and not diff.new  # the other allergy still makes it
    assert [a.rule_id for a in live.alerts()] == ["combo.allergy"]
    assert [a.rule_id for a in live.retract("allergy", "A2").resolved] == ["combo.allergy"]
    assert live.alerts() == []
    assert [a.rule_id for a in live.add(allergies[0]).new] == ["combo.allergy"]


def test_a_daily_dose_kept_with_the_lines_follows_them() -> None:
    """A set's daily dose is summed once per set of active lines and kept with them: a result
    coming reads it as it was; another line, a new version of one or one stopping sums it
    again (catalogue: renal.metformin_dose, metformin > 1000 mg/day with an eGFR of 30-45)."""
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(hours=1))
    day_1000 = {"dose": 500.0, "frequency_per_day": 2.0, "daily_dose": 1000.0}
    day_500 = {"dose": 500.0, "frequency_per_day": 1.0, "daily_dose": 500.0}
    live.add(order("MET", "A10BA02", **day_1000))
    live.add(lab("egfr", 38.0, T0 + timedelta(hours=1), "G1"))
    live.add(lab("egfr", 36.0, T0 + timedelta(hours=2), "G2"))
    assert live.alerts() == []  # 1000 mg/day: not above 1000
    diff = live.add(order("MET2", "A10BA02", **day_500), T0 + timedelta(hours=3))
    assert [a.rule_id for a in diff.new] == ["renal.metformin_dose"]  # 1500 mg/day
    live.add(lab("egfr", 37.0, T0 + timedelta(hours=4), "G3"))
    assert [a.message[:25] for a in live.alerts()] == ["Metformine 1500 mg par jo"]
    live.add(order("MET", "A10BA02", **day_500), T0 + timedelta(hours=5))  # a new version
    live.add(lab("egfr", 37.5, T0 + timedelta(hours=6), "G4"))
    assert live.alerts() == []  # 500 + 500 mg/day
    live.add(order("MET3", "A10BA02", **day_500), T0 + timedelta(hours=7))
    assert len(live.alerts()) == 1  # 1500 mg/day again
    live.add(order("MET3", "A10BA02", end=T0 + timedelta(hours=8), **day_500))
    live.add(lab("egfr", 37.0, T0 + timedelta(hours=9), "G5"), T0 + timedelta(hours=9))
    assert live.alerts() == []  # stopped: 1000 mg/day


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
    assert live.add(lab("potassium", 6.0, T0 + timedelta(days=1), "K1")).new
    stay = Stay(
        fact_id="S1", patient_id="p1", source=SRC, stay_id="S1", ward="NEPHRO", admit_time=T0
    )
    diff = live.add(stay)
    assert [(a.stay_id, a.ward) for a in diff.updated] == [("S1", "NEPHRO")]
    assert [(a.stay_id, a.ward) for a in live.alerts()] == [("S1", "NEPHRO")]


# Explained when read -----------------------------------------------------------------------


def test_alerts_are_explained_when_read_not_when_found() -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("o", "C09AA05"))
    live.add(lab("potassium", 5.9, T0 + timedelta(days=1, hours=1), "K1"))
    live.add(lab("potassium", 6.2, T0 + timedelta(days=1, hours=2), "K2"))
    assert (live.fired, live.explained) == (2, 0)  # found twice, read by nobody
    [alert] = live.alerts()
    assert live.explained == 1 and alert.message.startswith("K+ 6.2")
    assert live.alerts() == [alert] and live.explained == 1  # kept once explained


def test_a_held_diff_is_explained_as_its_update_left_it() -> None:
    """A diff read after later facts came shows the alert as of its own update: the evaluator
    explains the diffs still held before a fact changes what they would be explained from."""
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("o", "C09AA05"))
    first = live.add(lab("potassium", 5.9, T0 + timedelta(days=1, hours=1), "K1"))
    # The same result corrected (same id): the alert stops. ``first`` was not read yet.
    second = live.add(lab("potassium", 4.1, T0 + timedelta(days=1, hours=1), "K1"))
    [alert] = first.new
    assert alert.message.startswith("K+ 5.9") and alert.severity == "major"
    assert [a.id for a in second.resolved] == [alert.id] and second.resolved[0] == alert
    assert not second.new and not second.updated and live.alerts() == []


def test_a_dropped_diff_is_no_change_to_those_who_never_read_it() -> None:
    """Diffs nobody read (dropped) merge into the next one read: an alert nobody could have
    seen shows up as new, and one that stopped before anyone read it is no change."""
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("o", "C09AA05"))
    live.add(lab("potassium", 5.9, T0 + timedelta(days=1, hours=1), "K1"))  # dropped
    diff = live.add(lab("potassium", 6.2, T0 + timedelta(days=1, hours=2), "K2"))
    assert [a.severity for a in diff.new] == ["critical"] and not diff.updated
    live.add(lab("potassium", 6.4, T0 + timedelta(days=1, hours=3), "K3"))  # dropped
    diff = live.add(lab("potassium", 4.0, T0 + timedelta(days=1, hours=4), "K4"))
    # The alert was last read at 6.2: it stops as it was read.
    [gone] = diff.resolved
    assert gone.message.startswith("K+ 6.2") and not diff.new and not diff.updated
    live.add(lab("potassium", 6.0, T0 + timedelta(days=1, hours=5), "K5"))  # dropped
    assert not live.add(lab("potassium", 4.2, T0 + timedelta(days=1, hours=6), "K6"))
    assert live.fired == 4 and live.explained == 1


def test_an_alert_found_again_unchanged_is_no_update() -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("o", "C09AA05"))
    assert live.add(lab("potassium", 5.9, T0 + timedelta(days=1, hours=1), "K1")).new
    # A result no rule reads differently: the alert is evaluated again, and is the same.
    diff = live.add(lab("potassium", 5.9, T0 + timedelta(days=1, hours=1), "K1"))
    assert live.fired == 2 and not diff and diff == AlertDiff()


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


# Timers ---------------------------------------------------------------------------------------

MICRO = timedelta(microseconds=1)


def test_rule_timing_reads_windows_durations_and_ages() -> None:
    live = LiveEvaluator(default_pack())
    # "k = latest potassium within 48 h": a result leaves the window 48 h after it was taken.
    hyperkalaemia = live.timing("bio.hyperkalaemia")
    assert hyperkalaemia is not None and hyperkalaemia.offsets == (timedelta(hours=48),)
    assert not (hyperkalaemia.durations or hyperkalaemia.age or hyperkalaemia.polled)
    # "v.duration >= vancomycin_delay" (48 h) and "no vancomycin since v.start".
    vancomycin = live.timing("tdm.vancomycin")
    assert vancomycin is not None and vancomycin.durations
    assert vancomycin.offsets == (timedelta(hours=48),)
    # "age >= long_benzo_age_min": birthdays only.
    benzo = live.timing("elderly.long_benzo")
    assert benzo is not None and benzo.age and benzo.offsets == ()
    # Two active lines of direct oral anticoagulants: nothing but lines starting and ending.
    assert live.timing("coag.doac_duplicate") is None
    # A count over "within 7 d" quotes its sliding window start when the alert fires.
    no_inr = live.timing("coag.vka_no_inr")
    assert no_inr is not None and no_inr.moving_evidence
    assert set(no_inr.offsets) == {timedelta(days=3), timedelta(days=7)}


def test_a_moved_cursor_moves_the_timer() -> None:
    live = LiveEvaluator(default_pack(), cursors={"vancomycin_delay": 24.0})
    timing = live.timing("tdm.vancomycin")
    assert timing is not None and timing.offsets == (timedelta(hours=24),)


def test_rule_timing_of_unbounded_clock_reads_is_polled() -> None:
    now = {"op": "now", "args": [], "type": "time"}
    duration = {"op": "attr", "name": "duration", "type": "number", "unit": "s", "args": []}
    lab = {"op": "var", "name": "k", "type": "lab", "args": []}
    compare_times = {"op": "gt", "args": [now, {"op": "attr", "name": "time", "args": [lab]}]}
    rule = {"bindings": [], "condition": compare_times, "escalations": [], "message": []}
    timing = live_module.rule_timing(rule, {})
    assert timing is not None and timing.polled
    shown = {"bindings": [], "condition": {"op": "const", "value": True, "args": []},
             "escalations": [], "message": [{"expr": duration}]}  # fmt: skip
    timing = live_module.rule_timing(shown, {})
    assert timing is not None and timing.polled  # a message quoting a duration moves always
    against_lab = {"op": "ge", "args": [duration, {"op": "attr", "name": "value", "args": [lab]}]}
    rule = {"bindings": [], "condition": against_lab, "escalations": [], "message": []}
    timing = live_module.rule_timing(rule, {})
    assert timing is not None and timing.polled


def test_window_edges_to_the_microsecond() -> None:
    live = LiveEvaluator(default_pack(), now=T0)
    live.add(order("o", "C09AA05", start=T0))
    taken = T0 + timedelta(hours=1)
    assert live.add(lab("potassium", 5.9, taken, "K1")).new
    deadline = live.next_deadline()  # the edge (evaluated there, then a microsecond later)
    assert deadline is not None and taken + timedelta(hours=48) <= deadline
    # "within 48 h" includes a result exactly 48 h old, not one a microsecond older.
    assert not live.tick(taken + timedelta(hours=48))
    assert [a.rule_id for a in live.tick(taken + timedelta(hours=48) + MICRO).resolved] == [
        "bio.hyperkalaemia"
    ]


def test_durations_fire_at_their_threshold() -> None:
    live = LiveEvaluator(default_pack(), now=T0)
    live.add(order("AVK", "B01AA03", start=T0))
    # "v.duration >= 3 d": not a microsecond before three days, exactly at three days.
    assert not live.tick(T0 + timedelta(days=3) - MICRO)
    assert [a.rule_id for a in live.tick(T0 + timedelta(days=3)).new] == ["coag.vka_no_inr"]


def test_birthdays_fire_age_rules() -> None:
    live = LiveEvaluator(default_pack(), now=datetime(2024, 3, 1, 12))
    live.add(Patient(fact_id="p1", patient_id="p1", source=SRC, birth_date=date(1949, 3, 2)))
    live.add(order("DIAZ", "N05BA01", start=datetime(2024, 2, 1)))  # diazepam: long half-life
    # 74 until midnight of 2 March 2024, then 75 = long_benzo_age_min.
    assert live.next_deadline() == datetime(2024, 3, 2)
    assert not live.tick(datetime(2024, 3, 1, 23, 59, 59))
    assert [a.rule_id for a in live.tick(datetime(2024, 3, 2)).new] == ["elderly.long_benzo"]


def test_a_leap_day_birthday_comes_on_the_first_of_march() -> None:
    # age_in_years: born 29 February, one is a year older from 1 March in common years.
    born = date(1948, 2, 29)
    assert live_module._next_birthday(born, datetime(2023, 2, 28, 12)) == datetime(2023, 3, 1)
    assert live_module._next_birthday(born, datetime(2024, 1, 1)) == datetime(2024, 2, 29)


def test_tick_touches_only_what_is_due(monkeypatch: pytest.MonkeyPatch) -> None:
    live = LiveEvaluator(default_pack(), now=T0)
    for i in range(50):  # fifty patients on a VKA with an INR in range, checked daily
        pid = f"P{i:02d}"
        live.add(order(f"AVK{i}", "B01AA03", start=T0 - timedelta(days=10), patient_id=pid))
        live.add(lab("inr", 2.5, T0 + timedelta(hours=i), f"I{i}", pid))
    seen: list[tuple[str, str]] = []
    real = live_module.firing_combinations

    def spy(rule: Any, ctx: Any) -> list[Any]:
        seen.append((ctx.record.patient_id, rule.id))
        return real(rule, ctx)

    monkeypatch.setattr(live_module, "firing_combinations", spy)
    assert not live.tick(T0 + timedelta(hours=50))  # no window or threshold reached: no work
    assert seen == []
    # Patient P00's INR (T0) leaves the 72 h window of vka_inr_high/vka_relay at T0 + 72 h;
    # vka_no_inr counts its offsets (3 d of treatment, 7 d of window) from every fact it reads,
    # so it is checked then too (an over-approximation: more checks, never a missed one).
    live.tick(T0 + timedelta(hours=72) + MICRO)
    assert {pid for pid, _ in seen} == {"P00"}
    assert (
        {"coag.vka_inr_high"}
        <= {rule for _, rule in seen}
        <= {
            "coag.vka_inr_high",
            "coag.vka_relay",
            "coag.vka_no_inr",
        }
    )


def test_the_clock_going_back_evaluates_again() -> None:
    live = LiveEvaluator(default_pack(), now=T0)
    live.add(order("AVK", "B01AA03", start=T0))
    assert live.tick(T0 + timedelta(days=4)).new
    assert live.tick(T0 + timedelta(days=1)).resolved  # replaying an earlier moment
    assert live.tick(T0 + timedelta(days=5)).new


def test_a_new_line_reevaluates_the_rules_reading_its_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("RAMI", "C09AA05"))  # ramipril: potassium raising
    live.add(lab("potassium", 4.5, T0 + timedelta(hours=20), "K1"))
    seen = _evaluated(monkeypatch)
    live.add(order("PARA", "N02BE01", dose=1000.0, daily_dose=3000.0))  # paracetamol
    # "daily dose of paracetamol" reads it; "d = active drug" (allergy) reads any line, but
    # needs an allergy on record (none here); "mme" reads opioid lines; hyperkalaemia reads
    # potassium-raising lines and binders only.
    assert "dose.paracetamol_max" in seen
    assert not {"combo.allergy", "dose.opioid_mme", "bio.hyperkalaemia"} & set(seen)
    assert live_module.line_sets(default_pack().rule("combo.allergy").ir) is None
    assert live_module.line_sets(default_pack().rule("bio.hyperkalaemia").ir) == {
        "potassium_raising",
        "potassium_binders",
    }


def test_fast_construction_builds_the_same_models() -> None:
    """Alerts and evidence are built with ``model_construct`` while explaining; its fast path
    (every field given) must give what pydantic's own gives."""
    values = {
        "name": "k", "kind": "lab", "code": "potassium", "value": 5.9, "unit": "mmol/L",
        "time": T0, "fact_id": "K1", "source": SRC, "inputs": (),
    }  # fmt: skip
    fast = Evidence.model_construct(**values)
    slow = BaseModel.model_construct.__func__(Evidence, **values)  # type: ignore[attr-defined]
    assert fast == slow and hash(fast) == hash(slow)
    assert fast.model_dump() == slow.model_dump() == Evidence.model_validate(values).model_dump()
    assert fast.model_fields_set == slow.model_fields_set
    partial = Evidence.model_construct(name="k", kind="lab")  # pydantic fills the defaults
    assert partial.model_fields_set == {"name", "kind"}


def test_facts_no_rule_reads_are_not_kept() -> None:
    live = LiveEvaluator(default_pack(), now=T0)
    live.add(order("o", "C09AA05"))
    assert not live.add(lab("troponin", 0.2, T0, "T1"))  # no rule of the pack reads troponin
    record = live.record("p1")
    assert record is not None and "troponin" not in record.labs and record.orders


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


# Windows and duration thresholds of the default pack, to tick right at their edges.
EDGES = [timedelta(hours=h) for h in (24, 48, 72, 168)]
NUDGES = [-timedelta(microseconds=1), timedelta(0), timedelta(microseconds=1)]


@st.composite
def steps_strategy(draw: st.DrawFn) -> list[tuple[AnyFact, datetime | None, datetime | None]]:
    """Facts with, before each, maybe a tick (sometimes exactly at a window edge of an earlier
    fact, or a microsecond either side) and maybe an explicit clock for the ``add`` (earlier
    than the fact: a fact dated in the future, read only once the clock reaches it)."""
    facts = draw(st.lists(facts_strategy(), min_size=20, max_size=80))
    steps: list[tuple[AnyFact, datetime | None, datetime | None]] = []
    for i, fact in enumerate(facts):
        tick: datetime | None = None
        choice = draw(st.sampled_from(["none", "none", "time", "edge"]))
        if choice == "time":
            tick = _moment(draw(times))
        elif choice == "edge" and i:
            moment = _time_of(facts[draw(st.integers(0, i - 1))])
            if moment is not None:
                edge = draw(st.sampled_from(EDGES)) + draw(st.sampled_from(NUDGES))
                tick = moment + edge
        now = None
        when = _time_of(fact)
        if when is not None and draw(st.integers(0, 4)) == 0:
            now = when - timedelta(minutes=draw(st.integers(1, RECENT)))
        steps.append((fact, tick, now))
    return steps


def _time_of(fact: AnyFact) -> datetime | None:
    if isinstance(fact, LabResult | Observation):
        return fact.time
    if isinstance(fact, MedicationOrder):
        return fact.start
    if isinstance(fact, Condition):
        return fact.onset
    if isinstance(fact, Allergy):
        return fact.recorded
    if isinstance(fact, Pregnancy):
        return fact.recorded
    if isinstance(fact, Stay):
        return fact.admit_time
    return None


@pytest.mark.property
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps_strategy(), end=st.integers(SPAN - RECENT, SPAN + RECENT))
def test_incremental_equals_batch(
    steps: list[tuple[AnyFact, datetime | None, datetime | None]], end: int
) -> None:
    """Fed fact by fact, the live evaluator agrees with a batch evaluation of the facts so far
    after every ``tick`` (and at the end) — and random facts never crash either."""
    pack = default_pack()
    live = LiveEvaluator(pack, now=T0)
    seen: list[AnyFact] = []
    for fact, tick, now in steps:
        if tick is not None:
            live.tick(tick)
            batch = evaluate(pack, FactSet(seen), tick) if seen else []
            assert [content(a) for a in live.alerts()] == [content(a) for a in batch]
        live.add(fact, now)
        seen.append(fact)
    at = _moment(end)
    live.tick(at)
    batch = evaluate(pack, FactSet(seen), at)
    assert [content(a) for a in live.alerts()] == [content(a) for a in batch]


def _shown(diff: AlertDiff) -> tuple[list[Any], ...]:
    return tuple(
        sorted((a.id, content(a)) for a in part) for part in (diff.new, diff.updated, diff.resolved)
    )


@pytest.mark.property
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    facts=st.lists(facts_strategy(), min_size=10, max_size=80),
    messages=st.lists(st.tuples(st.integers(1, 8), st.integers(0, 2 * 24 * 60)), min_size=1),
    edges=st.lists(st.tuples(st.sampled_from(EDGES), st.sampled_from(NUDGES)), max_size=3),
)
def test_a_message_evaluated_once_equals_its_facts_one_by_one(
    facts: list[AnyFact],
    messages: list[tuple[int, int]],
    edges: list[tuple[timedelta, timedelta]],
) -> None:
    """``add_many(facts, now)`` evaluates each patient's rules once after the message's facts
    are in: the same diff, the same alerts and the same timers as adding them one by one at
    that time (their diffs merged), checked by ticks at window edges of the message's facts
    (a microsecond either side) before the next message."""
    pack = default_pack()
    one_by_one, batched = LiveEvaluator(pack, now=T0), LiveEvaluator(pack, now=T0)
    clock, start = T0, 0
    for size, minutes in messages * (len(facts) // len(messages) + 1):
        message = facts[start : start + size]
        if not message:
            break
        start += size
        clock += timedelta(minutes=minutes)
        merged = AlertDiff()
        for fact in message:
            merged = merged.merge(one_by_one.add(fact, clock))
        assert _shown(batched.add_many(message, clock)) == _shown(merged)
        assert [content(a) for a in batched.alerts()] == [content(a) for a in one_by_one.alerts()]
        moments = [t for f in message if (t := _time_of(f)) is not None]
        ticks = sorted(t + edge + nudge for t in moments[:2] for edge, nudge in edges)
        for moment in [t for t in ticks if t > clock] + [clock + timedelta(hours=8)]:
            assert _shown(batched.tick(moment)) == _shown(one_by_one.tick(moment))
            assert [content(a) for a in batched.alerts()] == [
                content(a) for a in one_by_one.alerts()
            ]
            clock = moment


def test_a_message_of_results_evaluates_the_rules_once(monkeypatch: pytest.MonkeyPatch) -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("RAMI", "C09AA05"))  # ramipril: hyperkalaemia reads it
    seen = _evaluated(monkeypatch)
    at = T0 + timedelta(days=1, hours=2)
    results = [lab("potassium", 5.8 + i / 10, at - timedelta(minutes=i), f"K{i}") for i in range(5)]
    diff = live.add_many(results, at)
    assert seen.count("bio.hyperkalaemia") == 1  # not once per result
    [alert] = diff.new
    assert alert.rule_id == "bio.hyperkalaemia" and alert.message.startswith("K+ 5.8 mmol/L")


# Retractions -------------------------------------------------------------------------------------


def test_a_retracted_result_resolves_its_alert() -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("ORD1", "C09AA05"))
    live.add(lab("potassium", 4.2, T0 + timedelta(hours=20), "K0"))
    first = live.add(lab("potassium", 6.1, T0 + timedelta(days=1, hours=1), "K1")).new
    assert [a.rule_id for a in first] == ["bio.hyperkalaemia"]
    diff = live.retract("lab", "K1")
    assert [a.id for a in diff.resolved] == [first[0].id] and not diff.new
    record = live.record("p1")
    assert record is not None and [f.fact_id for f in record.labs["potassium"]] == ["K0"]
    assert live.alerts() == []
    assert not live.retract("lab", "K1")  # retracted already: nothing
    assert not live.retract("lab", "never-sent")
    assert live.add(lab("potassium", 6.1, T0 + timedelta(days=1, hours=1), "K1")).new  # again


def test_a_retracted_order_line_resolves_the_alerts_it_bound() -> None:
    live = LiveEvaluator(default_pack(), now=T0 + timedelta(days=1))
    live.add(order("ORD1", "C09AA05"))
    assert live.add(lab("potassium", 6.1, T0 + timedelta(days=1, hours=1), "K1")).new
    assert live.retract("medication_order", "ORD1").resolved
    assert live.alerts() == []
    assert live.add(order("ORD1", "C09AA05")).new  # the line sent again


@pytest.mark.property
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=steps_strategy(),
    picks=st.lists(st.tuples(st.integers(0, 79), st.booleans()), min_size=1, max_size=12),
    end=st.integers(SPAN - RECENT, SPAN + RECENT),
)
def test_retracting_equals_batch_on_the_remaining_facts(
    steps: list[tuple[AnyFact, datetime | None, datetime | None]],
    picks: list[tuple[int, bool]],
    end: int,
) -> None:
    """Facts fed, then some retracted (with ticks between): the live alerts are those of a
    batch evaluation of the facts left, after every retraction and at the end."""
    pack = default_pack()
    live = LiveEvaluator(pack, now=T0)
    seen: list[AnyFact] = []
    for fact, tick, now in steps:
        if tick is not None:
            live.tick(tick)
        live.add(fact, now)
        seen.append(fact)
    clock = max(t for t in (live.now, _moment(SPAN)) if t is not None)
    live.tick(clock)  # the alerts are those of ``evaluate`` at the clock's time
    for index, tick_after in picks:
        fact = seen[index % len(seen)]
        key = (fact.kind, fact.fact_id)
        live.retract(*key, now=clock)
        seen = [f for f in seen if (f.kind, f.fact_id) != key]
        if tick_after:
            clock += timedelta(hours=7)
            live.tick(clock)
        batch = evaluate(pack, FactSet(seen), clock) if seen else []
        assert [content(a) for a in live.alerts()] == [content(a) for a in batch]
        if not seen:
            return
    at = _moment(end)
    live.tick(at)
    batch = evaluate(pack, FactSet(seen), at)
    assert [content(a) for a in live.alerts()] == [content(a) for a in batch]
