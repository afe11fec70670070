"""The per-patient evaluator: Kleene logic, windows, drug combinations, evidence, identity."""

from __future__ import annotations

import copy
import json
from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from vigie import engine
from vigie import facts as fact_model
from vigie.engine import FactSet, PackError, PatientRecord, RuleRuntimeError, evaluate, load_pack
from vigie.facts import (
    AnyFact,
    Coding,
    Condition,
    LabResult,
    MedicationOrder,
    Patient,
    Sex,
    Source,
    Stay,
)
from vigie.facts.model import Ingredient
from vigie.rules import compile_pack

REPO = Path(__file__).parents[1]
NOW = datetime(2024, 3, 4, 12, 0)
HEADER = 'pack "test" version "1.0.0"\n'
RULE = 'rule t.r "Test"\n  problem 7 intervention 2 severity major\n  when\n'


def compile_text(body: str) -> dict[str, Any]:
    ir, diagnostics = compile_pack(HEADER + body, "test.rules")
    assert ir is not None, [d.message for d in diagnostics]
    return ir


def one_rule(when: str, say: str = "ok", extra: str = "") -> dict[str, Any]:
    lines = "\n".join(f"    {line}" for line in when.strip().splitlines())
    return compile_text(f'{extra}\n{RULE}{lines}\n  say "{say}"\n')


@cache
def default_ir() -> dict[str, Any]:
    return compile_text_file(REPO / "rules/packs/default.rules")


@cache
def ansm_ir() -> dict[str, Any]:
    return compile_text_file(REPO / "rules/packs/ansm-interactions.rules")


def compile_text_file(path: Path) -> dict[str, Any]:
    ir, diagnostics = compile_pack(path.read_text(encoding="utf-8"), str(path))
    assert ir is not None, [d.message for d in diagnostics if d.is_error]
    return ir


def src(position: str) -> Source:
    return Source(feed="hl7v2", document="lab.hl7", message_id="MSG1", position=position)


def patient(pid: str = "p1", born: date = date(1950, 1, 1), sex: Sex = Sex.FEMALE) -> Patient:
    return Patient(fact_id=pid, patient_id=pid, source=src("PID"), birth_date=born, sex=sex)


def lab(
    concept: str,
    value: float | None,
    time: datetime,
    unit: str = "mmol/L",
    pid: str = "p1",
    fid: str | None = None,
) -> LabResult:
    return LabResult(
        fact_id=fid or f"{concept}-{time:%m%d%H%M}",
        patient_id=pid,
        source=src("OBX[1]-5"),
        concept=concept,
        code=Coding(system="LOINC", code="x"),
        value=value,
        unit=unit,
        time=time,
    )


def drug(
    oid: str,
    atc: str | None,
    *,
    pid: str = "p1",
    start: datetime | None = datetime(2024, 3, 1),
    end: datetime | None = None,
    status: str = "active",
    dose: float | None = 10.0,
    unit: str | None = "mg",
    per_day: float | None = 1.0,
    route: str | None = "oral",
    label: str | None = None,
) -> MedicationOrder:
    return MedicationOrder(
        fact_id=oid,
        patient_id=pid,
        source=src("RXE"),
        order_id=oid,
        drug=Coding(system="ATC", code=atc or "X", display=label or oid),
        atc=atc,
        label=label or oid,
        dose=dose,
        dose_unit=unit,
        frequency_per_day=per_day,
        daily_dose=None if dose is None or per_day is None else dose * per_day,
        route=route,
        start=start,
        end=end,
        status=status,  # type: ignore[arg-type]
    )


def fired(ir: dict[str, Any], facts: list[AnyFact], at: datetime = NOW, **kw: Any) -> bool:
    return bool(evaluate(ir, FactSet(facts), at, **kw))


# Kleene logic, as a grid -------------------------------------------------------------------------

# X is "latest potassium > 5.0 mmol/L", Y is "latest sodium < 130 mmol/L": true, false or unknown
# (no result) depending on the facts given.
T, F, U = True, False, None
X = "latest potassium > 5.0 mmol/L"
Y = "latest sodium < 130 mmol/L"
KLEENE = [
    # expression, x, y, expected
    *[(f"({X}) and ({Y})", x, y, e) for x, y, e in [
        (T, T, T), (T, F, F), (T, U, U), (F, T, F), (F, F, F), (F, U, F),
        (U, T, U), (U, F, F), (U, U, U)]],
    *[(f"({X}) or ({Y})", x, y, e) for x, y, e in [
        (T, T, T), (T, F, T), (T, U, T), (F, T, T), (F, F, F), (F, U, U),
        (U, T, T), (U, F, U), (U, U, U)]],
    *[(f"not ({X})", x, None, e) for x, e in [(T, F), (F, T), (U, U)]],
    *[("known (latest potassium)", x, None, e) for x, e in [(T, T), (F, T), (U, F)]],
    *[("(latest potassium otherwise 9 mmol/L) > 5.0 mmol/L", x, None, e)
      for x, e in [(T, T), (F, F), (U, T)]],
]  # fmt: skip


def _kleene_facts(x: bool | None, y: bool | None) -> list[AnyFact]:
    facts: list[AnyFact] = [patient()]
    if x is not None:
        facts.append(lab("potassium", 6.0 if x else 4.0, NOW - timedelta(hours=1)))
    if y is not None:
        facts.append(lab("sodium", 120.0 if y else 140.0, NOW - timedelta(hours=1)))
    return facts


@pytest.mark.parametrize(("expression", "x", "y", "expected"), KLEENE)
def test_kleene_truth_table(
    expression: str, x: bool | None, y: bool | None, expected: bool | None
) -> None:
    facts = _kleene_facts(x, y)
    # A rule fires only on true; the negated rule fires only on false: unknown fires neither.
    assert fired(one_rule(expression), facts) is (expected is True)
    assert fired(one_rule(f"not ({expression})"), facts) is (expected is False)


def test_unknown_never_fires_even_negated_comparisons() -> None:
    facts: list[AnyFact] = [patient()]
    assert not fired(one_rule("latest potassium > 5 mmol/L"), facts)
    assert not fired(one_rule("latest potassium <= 5 mmol/L"), facts)
    assert fired(one_rule("no potassium within 48 h"), facts)


# Windows and boundaries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "inside"),
    [
        (timedelta(hours=48), True),  # the start is inclusive
        (timedelta(hours=48, minutes=1), False),
        (timedelta(0), True),  # the evaluation time is inclusive
        (-timedelta(minutes=1), False),  # a fact dated after as-of is never read
    ],
)
def test_within_window_boundaries(age: timedelta, inside: bool) -> None:
    ir = one_rule("latest potassium within 48 h > 5.5 mmol/L")
    assert fired(ir, [lab("potassium", 6.0, NOW - age)]) is inside


def test_future_facts_are_never_read() -> None:
    ir = one_rule("latest potassium > 5.5 mmol/L")
    facts: list[AnyFact] = [
        lab("potassium", 4.0, NOW - timedelta(hours=2)),
        lab("potassium", 6.5, NOW + timedelta(hours=2)),
    ]
    assert not fired(ir, facts)
    assert fired(ir, facts, NOW + timedelta(hours=2))


def test_before_is_exclusive_and_min_max_select() -> None:
    ir = one_rule(
        """
        c = latest creatinine within 48 h
        low = min creatinine within 48 h before c.time
        c - low >= 26.5 µmol/L
        """,
        say="{c} {low}",
    )
    t = NOW - timedelta(hours=1)
    facts: list[AnyFact] = [
        lab("creatinine", 80.0, t - timedelta(hours=30), "µmol/L"),
        lab("creatinine", 95.0, t - timedelta(hours=10), "µmol/L"),
        lab("creatinine", 110.0, t, "µmol/L"),
    ]
    (alert,) = evaluate(ir, FactSet(facts), NOW)
    assert alert.message == "110 µmol/L 80 µmol/L"
    # Only the latest creatinine itself: the window before it is empty, so unknown.
    assert not fired(ir, facts[2:])


def test_latest_skips_non_numeric_results_and_ties_take_largest_id() -> None:
    ir = one_rule("k = latest potassium\nk > 0 mmol/L", say="{k}")
    t = NOW - timedelta(hours=1)
    facts: list[AnyFact] = [
        lab("potassium", 4.1, t, fid="a"),
        lab("potassium", 4.2, t, fid="b"),
        lab("potassium", None, t + timedelta(minutes=5), fid="c"),
    ]
    (alert,) = evaluate(ir, FactSet(facts), NOW)
    assert alert.message == "4.2 mmol/L"


def test_latest_within_a_window_reads_the_newest_result_dated_in_it() -> None:
    """``latest x within w``: the newest result dated in [as of - w, as of] with a value; one
    dated later than the evaluation time is not read yet, one older than the window is not
    in it."""
    ir = one_rule("k = latest potassium within 48 h\nk > 5.5 mmol/L", say="{k}")
    old = lab("potassium", 6.0, NOW - timedelta(hours=72), fid="old")
    assert not fired(ir, [old])  # older than the window: none
    recent = lab("potassium", 5.9, NOW - timedelta(hours=47), fid="recent")
    assert [a.message for a in evaluate(ir, FactSet([old, recent]), NOW)] == ["5.9 mmol/L"]
    later = lab("potassium", 4.0, NOW + timedelta(hours=1), fid="later")
    assert [a.message for a in evaluate(ir, FactSet([old, recent, later]), NOW)] == ["5.9 mmol/L"]
    assert not fired(ir, [old, recent, later], NOW + timedelta(hours=1))
    at_the_edge = NOW - timedelta(hours=48)  # the window's start is included
    edge = lab("potassium", 5.8, at_the_edge, fid="edge")
    assert [a.message for a in evaluate(ir, FactSet([old, edge]), NOW)] == ["5.8 mmol/L"]


def test_count_and_none_include_non_numeric_results() -> None:
    t = NOW - timedelta(hours=1)
    facts: list[AnyFact] = [lab("inr", None, t, unit="1")]
    assert fired(one_rule("count inr within 7 d == 1"), facts)
    assert not fired(one_rule("no inr within 7 d"), facts)


# Drug lines --------------------------------------------------------------------------------------


def test_active_order_semantics() -> None:
    ir = one_rule("d = active drug in atc C09A")
    at = NOW
    cases = [
        (drug("o", "C09AA05"), True),
        (drug("o", "C09AA05", start=at), True),  # start ≤ as-of
        (drug("o", "C09AA05", start=at + timedelta(minutes=1)), False),
        (drug("o", "C09AA05", end=at), False),  # end > as-of required
        (drug("o", "C09AA05", end=at + timedelta(minutes=1)), True),
        (drug("o", "C09AA05", start=None), True),
        (drug("o", "C09AA05", status="on-hold"), False),
        (drug("o", "C09AA05", status="cancelled"), False),
        # a line that has since ended was active over its period (exports carry final status)
        (drug("o", "C09AA05", status="completed", end=at + timedelta(days=1)), True),
        (drug("o", "C09AA05", status="completed", end=None), False),
        (drug("o", "C09BA05"), False),  # C09B is not under the C09A prefix
        (drug("o", "C03CA01"), False),
        (drug("o", None), False),
    ]
    for line, expected in cases:
        assert fired(ir, [line], at) is expected, line


def test_route_lists_exclude_lines_without_route() -> None:
    ir = one_rule("v = active drug in atc J01XA01 route iv")
    assert fired(ir, [drug("v", "J01XA01", route="iv")])
    assert not fired(ir, [drug("v", "J01XA01", route="oral")])
    assert not fired(ir, [drug("v", "J01XA01", route=None)])


def test_pairs_never_bind_one_line_twice_and_report_a_same_set_pair_once() -> None:
    ir = one_rule(
        "a = active drug in atc N06AB\nb = active drug in atc N06AB", say="{a.label}+{b.label}"
    )
    one = [drug("o1", "N06AB04")]
    assert evaluate(ir, FactSet(one), NOW) == []
    two = [drug("o1", "N06AB04"), drug("o2", "N06AB06")]
    (alert,) = evaluate(ir, FactSet(two), NOW)
    assert alert.message == "o1+o2"
    assert [d.order_id for d in alert.drugs] == ["o1", "o2"]
    three = [*two, drug("o3", "N06AB10")]
    alerts = evaluate(ir, FactSet(three), NOW)
    assert sorted(tuple(d.order_id for d in a.drugs) for a in alerts) == [
        ("o1", "o2"),
        ("o1", "o3"),
        ("o2", "o3"),
    ]


def test_pair_over_two_sets_is_reported_once_in_binding_order() -> None:
    ir = one_rule(
        "d = active drug in atc B01AF\nother = active drug in atc B01A",
        say="{d.label}/{other.label}",
    )
    facts = [drug("riva", "B01AF01"), drug("apix", "B01AF02")]
    alerts = evaluate(ir, FactSet(facts), NOW)
    assert [a.message for a in alerts] == ["apix/riva"]  # lines in order id order


def test_daily_dose_lower_bound_semantics() -> None:
    ir = one_rule("p = daily dose of atc N02BE01\np > 4 g", say="{p}")
    negated = one_rule("p = daily dose of atc N02BE01\nnot (p > 4 g)")
    known = [drug("a", "N02BE01", dose=1000, per_day=3)]
    unknown_line = drug("b", "N02BE01", dose=None)
    # 3 g known plus a line without dose: "> 4 g" is unknown, so neither rule fires
    assert not fired(ir, [*known, unknown_line])
    assert not fired(negated, [*known, unknown_line])
    # 5 g known plus an unknown line: already above 4 g, true whatever the other line gives
    more = [drug("a", "N02BE01", dose=1000, per_day=5), unknown_line]
    (alert,) = evaluate(ir, FactSet(more), NOW)
    assert alert.message == "≥ 5000 mg"
    # a tablet line is a lower bound too; masses convert (g → mg)
    assert fired(ir, [drug("a", "N02BE01", dose=2.5, unit="g", per_day=2)])
    assert not fired(ir, [drug("a", "N02BE01", dose=1, unit="tablet", per_day=6)])
    assert fired(negated, [patient()])  # no line: 0 mg, not above 4 g


# A rule that binds no line but needs a daily dose above a positive amount cannot fire without a
# line of that set: the evaluators skip it then (``LoadedRule.trigger_set``). Each row: the
# condition, whether it needs a paracetamol line, and whether it fires for a patient with none
# (0 mg a day) — by the rule's meaning, so a wrong skip fails here.
DOSE = "p = daily dose of atc N02BE01\n"
NEEDS_A_LINE = [
    (DOSE + "p > 4 g", True, False),
    (DOSE + "p >= 4 g", True, False),
    (DOSE + "p > 0 mg", True, False),
    (DOSE + "p >= 0 mg", False, True),  # 0 mg is at least 0 mg
    (DOSE + "not (p > 4 g)", False, True),
    (DOSE + "p < 1 g", False, True),
    (DOSE + "p > 4 g or (weight < 50 kg and p > 3 g)", True, False),
    (DOSE + "p > 4 g or latest potassium > 5 mmol/L", False, False),  # no potassium: unknown
    (DOSE + "p in 1 g .. 2 g", True, False),
    (DOSE + "p in 0 g .. 2 g", False, True),
]


@pytest.mark.parametrize(("when", "needs_a_line", "fires_without"), NEEDS_A_LINE)
def test_a_rule_without_line_needs_the_set_its_daily_dose_must_exceed(
    when: str, needs_a_line: bool, fires_without: bool
) -> None:
    ir = one_rule(when)
    (rule,) = load_pack(ir).rules
    assert (rule.trigger_set is not None) == needs_a_line
    assert fired(ir, [patient()]) == fires_without
    other_line = drug("o", "C09AA05")  # a line of another set changes nothing
    assert fired(ir, [patient(), other_line]) == fires_without
    if needs_a_line:  # skipped without a line, evaluated with one
        assert fired(ir, [patient(), drug("a", "N02BE01", dose=1000, per_day=5)]) == (
            "1 g .." not in when
        )
        assert fired(ir, [patient(), drug("a", "N02BE01", dose=500, per_day=3)]) == (
            "1 g .." in when or "p > 0 mg" in when
        )


def test_drug_amount_against_iu_and_mg() -> None:
    ir = one_rule("h = active drug in atc B01AB05\nh.daily_dose > 6000 IU or h.daily_dose > 60 mg")
    assert fired(ir, [drug("e", "B01AB05", dose=4000, unit="IU", per_day=2)])
    assert fired(ir, [drug("e", "B01AB05", dose=40, unit="mg", per_day=2)])
    assert not fired(ir, [drug("e", "B01AB05", dose=4000, unit="IU", per_day=1)])


# Alerts: identity, evidence, messages, severity --------------------------------------------------


def hyperkalaemia_facts(k: float = 5.9) -> list[AnyFact]:
    return [
        patient(),
        drug("ORD1", "C09AA05", label="ramipril 5 mg"),
        lab("potassium", k, datetime(2024, 3, 4, 8, 0), fid="LAB1"),
        Stay(
            fact_id="S1",
            patient_id="p1",
            source=src("PV1"),
            stay_id="S1",
            ward="CARDIO",
            admit_time=datetime(2024, 3, 1),
            status="in-progress",
        ),
    ]


def test_default_hyperkalaemia_alert_explains_itself() -> None:
    (alert,) = evaluate(default_ir(), FactSet(hyperkalaemia_facts()), NOW)
    assert alert.rule_id == "bio.hyperkalaemia"
    assert alert.message == "K+ 5.9 mmol/L le 2024-03-04 08:00 sous ramipril 5 mg"
    assert alert.severity == "major"
    assert (alert.stay_id, alert.ward) == ("S1", "CARDIO")
    assert alert.rule.file.endswith("default.rules") and alert.rule.line > 0
    assert (alert.problem.code, alert.intervention.code) == ("7", "2")
    assert [(d.order_id, d.atc, d.label) for d in alert.drugs] == [
        ("ORD1", "C09AA05", "ramipril 5 mg")
    ]
    by_name = {e.name: e for e in alert.evidence}
    k = by_name["k"]
    assert (k.kind, k.code, k.value, k.unit, k.fact_id) == (
        "lab",
        "potassium",
        5.9,
        "mmol/L",
        "LAB1",
    )
    assert k.time == datetime(2024, 3, 4, 8, 0)
    assert k.source is not None and k.source.position == "OBX[1]-5"
    assert by_name["d"].kind == "medication_order" and by_name["d"].source is not None


def test_escalation_sets_severity() -> None:
    (alert,) = evaluate(default_ir(), FactSet(hyperkalaemia_facts(6.3)), NOW)
    assert alert.severity == "critical"


def test_alert_ids_are_stable_across_reevaluation() -> None:
    facts = hyperkalaemia_facts()
    first = evaluate(default_ir(), FactSet(facts), NOW)
    later = evaluate(
        default_ir(),
        FactSet([*facts, lab("potassium", 6.1, NOW - timedelta(hours=1), fid="LAB2")]),
        NOW + timedelta(hours=1),
    )
    assert [a.id for a in first] == [a.id for a in later]
    assert first[0].id == engine.alert_id("bio.hyperkalaemia", "p1", ["ORD1"])
    assert later[0].message.startswith("K+ 6.1 mmol/L")


def test_clearance_evidence_nests_its_inputs() -> None:
    weight = fact_model.Observation(
        fact_id="W1",
        patient_id="p1",
        source=src("OBX[2]-5"),
        concept="weight",
        code=Coding(code="29463-7"),
        value=60.0,
        unit="kg",
        time=datetime(2024, 3, 2),
    )
    facts: list[AnyFact] = [
        patient(born=date(1954, 1, 1)),  # 70 years old on NOW
        weight,
        lab("creatinine", 100.0, datetime(2024, 3, 3), "µmol/L", fid="CREA"),
    ]
    ir = one_rule("crcl = clearance within 7 d\ncrcl < 50 mL/min", say="{crcl}")
    (alert,) = evaluate(ir, FactSet(facts), NOW)
    assert alert.message == "43.7 mL/min"  # (140 − 70) × 60 × 1.04 / 100 = 43.68
    (crcl,) = [e for e in alert.evidence if e.name == "crcl"]
    assert crcl.kind == "derived" and crcl.code == "clearance"
    assert crcl.value == pytest.approx(43.68)
    inputs = {e.name: e for e in crcl.inputs}
    assert inputs["creatinine"].fact_id == "CREA" and inputs["weight"].fact_id == "W1"
    assert inputs["age"].value == 70 and inputs["age"].inputs[0].kind == "patient"


def test_message_formats_unknown_as_question_mark() -> None:
    ir = one_rule("age >= 0", say="{clearance} {age} ans")
    (alert,) = evaluate(ir, FactSet([patient(born=date(1950, 1, 1))]), NOW)
    assert alert.message == "? 74 ans"


def test_conditions_and_allergies() -> None:
    onset = datetime(2024, 1, 1)
    cond = Condition(
        fact_id="C1",
        patient_id="p1",
        source=src("DG1"),
        code=Coding(code="K92.1"),
        icd10="K92.1",
        onset=onset,
    )
    ir = one_rule("has condition in icd10 K92.0..K92.2")
    assert fired(ir, [cond])
    assert not fired(ir, [cond], onset - timedelta(days=1))  # not yet known
    assert not fired(one_rule("has condition in icd10 K92.1 within 7 d"), [cond])
    allergy = fact_model.Allergy(
        fact_id="A1", patient_id="p1", source=src("AL1"), substance=Coding(code="x"), atc=("J01C",)
    )
    ir = one_rule("d = active drug\nhas allergy to d", say="{d.atc}")
    assert [a.message for a in evaluate(ir, FactSet([allergy, drug("amox", "J01CA04")]), NOW)] == [
        "J01CA04"
    ]
    assert not fired(ir, [allergy, drug("cef", "J01DB01")])


# Configuration and errors ------------------------------------------------------------------------


def test_cursors_move_thresholds_inside_their_range() -> None:
    facts = hyperkalaemia_facts(5.7)
    assert fired(default_ir(), facts)
    assert not fired(default_ir(), facts, cursors={"k_max": 6.0})
    with pytest.raises(PackError, match=r"k_max = 7.0 is outside its range 5.0 .. 6.5 mmol/L"):
        evaluate(default_ir(), FactSet(facts), NOW, cursors={"k_max": 7.0})
    with pytest.raises(PackError, match="unknown parameter"):
        evaluate(default_ir(), FactSet(facts), NOW, cursors={"k_maxx": 6.0})


def test_levels_and_enable_disable_lists() -> None:
    ir = compile_text(
        f'{RULE}    age >= 0\n  say "one"\n'
        'rule t.two "Two"\n  problem 7 intervention 2 severity minor level 2\n'
        '  when\n    age >= 0\n  say "two"\n'
    )
    facts: list[AnyFact] = [patient()]
    assert [a.rule_id for a in evaluate(ir, FactSet(facts), NOW)] == ["t.r"]
    assert [a.rule_id for a in evaluate(ir, FactSet(facts), NOW, level=2)] == ["t.r", "t.two"]
    assert [a.rule_id for a in evaluate(ir, FactSet(facts), NOW, enabled=["t.two"],
                                        disabled=["t.r"])] == ["t.two"]  # fmt: skip
    with pytest.raises(PackError, match="unknown rule id"):
        evaluate(ir, FactSet(facts), NOW, disabled=["t.nope"])


def test_runtime_failures_name_the_rule_and_line() -> None:
    ir = copy.deepcopy(one_rule("latest potassium > 5 mmol/L"))
    # Sabotage the IR: compare a lab value with a text (the checker would never allow it).
    ir["rules"][0]["condition"]["args"][1] = {
        "op": "const", "args": [], "value": "high", "type": "text", "span": [5, 30],
    }  # fmt: skip
    facts: list[AnyFact] = [lab("potassium", 6.0, NOW)]
    with pytest.raises(RuleRuntimeError) as raised:
        evaluate(ir, FactSet(facts), NOW)
    error = raised.value
    assert error.rule_id == "t.r" and error.file == "test.rules" and error.patient_id == "p1"
    assert "t.r" in str(error) and "TypeError" in str(error)


def test_bad_ir_is_a_pack_error() -> None:
    with pytest.raises(PackError, match="IR version"):
        load_pack({"ir_version": 99})
    broken = copy.deepcopy(one_rule("latest potassium > 5 mmol/L"))
    broken["rules"][0]["condition"]["op"] = "frobnicate"
    with pytest.raises(PackError, match="frobnicate"):
        load_pack(broken)


def test_ir_round_trips_through_json_and_patient_record_input() -> None:
    ir = json.loads(json.dumps(default_ir()))
    record = PatientRecord("p1")
    for fact in hyperkalaemia_facts():
        record.add(fact)
    (alert,) = evaluate(load_pack(ir), record, NOW)
    assert alert.rule_id == "bio.hyperkalaemia"


def test_aware_as_of_is_converted_to_utc() -> None:
    from datetime import timezone

    aware = datetime(2024, 3, 4, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert evaluate(default_ir(), FactSet(hyperkalaemia_facts()), aware)[0].as_of == NOW


def test_the_package_attribute_evaluate_is_the_function() -> None:
    # What the engine may import is stated in tests/test_layering.py.
    assert engine.evaluate is evaluate


# Whole packs on a synthetic hospital -------------------------------------------------------------


@pytest.mark.slow
def test_default_and_ansm_packs_on_a_synthetic_hospital() -> None:
    import polars as pl

    from vigie.synthetic.canonical import canonical_hospital

    rates = {
        rule: 0.03 for rule in ("bio.hyperkalaemia", "coag.vka_inr_high", "renal.metformin_egfr")
    }
    facts, truth = canonical_hospital(120, 7, seed=11, rates=rates)
    hospital = FactSet(facts)
    default, ansm = load_pack(default_ir()), load_pack(ansm_ir())
    end = datetime(2025, 1, 12, 12)
    assert isinstance(evaluate(default, hospital, end), list)
    assert isinstance(evaluate(ansm, hospital, end, level=3), list)

    truth = truth.filter(pl.col("rule_id").is_in(list(rates)))
    checked = 0
    for row in truth.iter_rows(named=True):
        start = datetime(1970, 1, 1) + timedelta(seconds=row["window_start"])
        at = start + timedelta(minutes=1)
        alerts = [
            a
            for a in evaluate(default, hospital.patient(row["patient_id"]), at)
            if a.rule_id == row["rule_id"]
        ]
        assert bool(alerts) == (row["expected"] == "positive"), row
        if alerts:
            assert alerts[0].severity == row["severity"], row
        checked += 1
    assert {r for r in truth["rule_id"]} == set(rates) and checked >= 6


def test_module_doctests() -> None:
    import doctest
    import sys

    for name in ("vigie.engine.load", "vigie.engine.evaluate", "vigie.engine.live"):
        result = doctest.testmod(sys.modules[name])
        assert result.attempted > 0 and result.failed == 0, name


def test_an_exact_code_matches_that_code_only() -> None:
    # `exactly N05AX`: the valproate products the BDPM codes N05AX (DEPAKOTE), not the
    # antipsychotics below N05AX (risperidone N05AX08).
    ir = one_rule(
        "v = active drug in valproate", extra="set valproate = atc N03AG01, exactly N05AX"
    )
    assert fired(ir, [drug("dk", "N05AX")])
    assert fired(ir, [drug("dp", "N03AG01")])
    assert not fired(ir, [drug("ri", "N05AX08")])
    assert not fired(ir, [drug("n5", "N05A")])
    # inline, and through a set that names it
    assert fired(one_rule("v = active drug in atc exactly N05AX"), [drug("dk", "N05AX")])
    nested = one_rule(
        "v = active drug in teratogens",
        extra="set valproate = atc exactly N05AX\nset teratogens = atc valproate, D10BA01",
    )
    assert fired(nested, [drug("dk", "N05AX")])
    assert not fired(nested, [drug("ri", "N05AX12")])


def test_a_set_with_routes_leaves_out_lines_given_by_other_routes() -> None:
    extra = (
        "set systemic_aminoglycosides = atc J01GB route iv, im\n"
        "set nephrotoxic = atc systemic_aminoglycosides, C03C"
    )
    for binding in (
        "a = active drug in systemic_aminoglycosides",
        "a = active drug in nephrotoxic",
    ):
        ir = one_rule(binding, extra=extra)
        assert fired(ir, [drug("t", "J01GB01", route="iv")])
        assert fired(ir, [drug("t", "J01GB01", route="im")])
        assert not fired(ir, [drug("t", "J01GB01", route="inhalation")])
        # a line without route is kept (the set names forms, it does not require a route)
        assert fired(ir, [drug("t", "J01GB01", route=None)])
    # the other codes of the outer set keep every route
    assert fired(one_rule("a = active drug in nephrotoxic", extra=extra), [drug("f", "C03CA01")])
    # membership of a bound line, count and daily dose read the route too
    member = one_rule("d = active drug in atc J01GB\nd in systemic_aminoglycosides", extra=extra)
    assert fired(member, [drug("t", "J01GB03", route="iv")])
    assert not fired(member, [drug("t", "J01GB03", route="inhalation")])
    count = one_rule("count active drugs in systemic_aminoglycosides >= 2", extra=extra)
    assert not fired(
        count, [drug("a", "J01GB03", route="iv"), drug("b", "J01GB01", route="inhalation")]
    )
    assert fired(count, [drug("a", "J01GB03", route="iv"), drug("b", "J01GB01", route="im")])


def test_combination_evidence_shows_each_ingredient_and_its_source() -> None:
    # codeine/paracetamol 500 mg/30 mg (BDPM CIS 66003374), 3 tablets x4: 12 x 500 mg = 6 g
    # paracetamol (dose.paracetamol_max: > 4 g)
    line = drug("dc", "N02AJ06", dose=3, unit="tablet", per_day=4).model_copy(
        update={
            "ingredients": (
                Ingredient(name="PARACÉTAMOL", atc="N02BE01", amount=500, unit="mg",
                                      source="bdpm"),
                Ingredient(name="CODÉINE", amount=30, unit="mg", source="bdpm"),
            )
        }
    )  # fmt: skip
    alerts = evaluate(default_ir(), FactSet([patient(), line]), NOW)
    (alert,) = [a for a in alerts if a.rule_id == "dose.paracetamol_max"]
    (p,) = [e for e in alert.evidence if e.name == "p"]
    assert (p.value, p.unit) == (6000.0, "mg")
    (ingredient,) = p.inputs
    assert ingredient.value == 6000.0 and ingredient.unit == "mg"
    assert ingredient.code is not None
    assert "PARACÉTAMOL 500 mg/unit" in ingredient.code and "[bdpm]" in ingredient.code
    assert [i.fact_id for i in ingredient.inputs] == ["dc"]


def test_mme_evidence_says_when_a_composition_is_unknown() -> None:
    # morphine 120 mg/day (120 MME, major) with a codeine/paracetamol line of unknown
    # composition: that line's MME is unknown, the sum a lower bound that still passes 90
    morphine = drug("mo", "N02AA01", dose=60, per_day=2)
    combination = drug("dc", "N02AJ06", dose=1000, per_day=4)
    alerts = evaluate(default_ir(), FactSet([patient(), morphine, combination]), NOW)
    (alert,) = [a for a in alerts if a.rule_id == "dose.opioid_mme"]
    (m,) = [e for e in alert.evidence if e.name == "m"]
    assert m.value == 120.0 and m.code == "mme (lower bound)"
    codes = [e.code for e in m.inputs]
    assert any(c and c.startswith("composition unknown") for c in codes)


# Explaining apart from finding: the live store explains an alert when it is read -----------------


def _evaluator() -> Any:
    import importlib

    return importlib.import_module("vigie.engine.evaluate")


def _context(facts: list[AnyFact]) -> Any:
    module = _evaluator()
    selection = load_pack(default_ir()).select()
    record = PatientRecord("p1")
    for fact in facts:
        record.add(fact)
    record.sort()
    return module.Context(record, NOW, selection.pack.sets, selection.params), selection


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (hyperkalaemia_facts(5.9), {("bio.hyperkalaemia", "major")}),
        (hyperkalaemia_facts(6.3), {("bio.hyperkalaemia", "critical")}),  # escalated
        (hyperkalaemia_facts(4.1), set()),
        (  # two NSAIDs with a VKA, aged 74, no INR: pairs of lines
            [patient(), drug("a", "M01AE01"), drug("b", "M01AB05"), drug("c", "B01AA03")],
            {
                ("coag.warfarin_nsaid", "critical"),  # age > 65: critical (one per NSAID)
                ("combo.duplicate_class", "moderate"),
                ("coag.vka_no_inr", "moderate"),
            },
        ),
    ],
)
def test_a_combination_explained_later_is_the_alert_evaluated_at_once(
    facts: list[AnyFact], expected: set[tuple[str, str]]
) -> None:
    """Finding the firing combinations (``firing_combinations``) and explaining each one on a
    fresh context of the same facts, as the live store does when an alert is read, gives the
    alerts of ``evaluate_rule`` (found and explained in one go), whatever the first context
    cached."""
    module = _evaluator()
    ctx, selection = _context(facts)
    stay = module.current_stay(ctx.record, NOW)
    found = [(r, combo) for r in selection.rules for combo in module.firing_combinations(r, ctx)]
    later, _ = _context(facts)
    explained = [
        module.explain_combination(rule, later, lines, identity, stay).model_dump()
        for rule, (lines, identity) in found
    ]
    direct, _ = _context(facts)
    at_once = [
        alert.model_dump()
        for rule in selection.rules
        for alert in module.evaluate_rule(rule, direct, stay)
    ]
    assert explained == at_once
    assert {(a["rule_id"], a["severity"]) for a in at_once} == expected


def test_evidence_is_described_once_per_fact_object() -> None:
    module = _evaluator()
    selection = load_pack(default_ir()).select()
    (rule,) = [r for r in selection.rules if r.id == "bio.hyperkalaemia"]
    facts = hyperkalaemia_facts(5.9)
    record = PatientRecord("p1")
    for fact in facts:
        record.add(fact)
    ctx = module.Context(record, NOW, selection.pack.sets, selection.params)
    (first,) = module.evaluate_rule(rule, ctx, None)
    (again,) = module.evaluate_rule(rule, ctx, None)
    assert again == first
    assert all(a is b for a, b in zip(again.evidence, first.evidence, strict=True))
    assert all(a is b for a, b in zip(again.thresholds, first.thresholds, strict=True))
    # a new version of the result (another object, same id) is described anew, even with the
    # cache of the earlier context (as the live store keeps it)
    newer = lab("potassium", 6.1, datetime(2024, 3, 4, 8, 0), fid="LAB1")
    record.labs["potassium"] = [newer]
    later = module.Context(record, NOW, selection.pack.sets, selection.params)
    later.evidence = ctx.evidence
    (updated,) = module.evaluate_rule(rule, later, None)
    assert updated.id == first.id
    assert updated.message == "K+ 6.1 mmol/L le 2024-03-04 08:00 sous ramipril 5 mg"
    assert [e.value for e in updated.evidence if e.name == "k"] == [6.1]
    assert [(t.value, t.threshold) for t in updated.thresholds] == [(6.1, 5.5)]
    assert updated.severity == "critical"  # escalate critical when k >= 6.0 mmol/L
