"""The columnar batch evaluator agrees exactly with the live evaluator (the contract of the two).

``evaluate_columnar`` (polars over fact frames) and ``evaluate`` / ``LiveEvaluator`` (closures,
one patient at a time) are two implementations of the rule semantics; Hypothesis generates
hospitals — direct fact strategies with missing data, unit variants, combination products,
qualitative results and facts at window edges to the microsecond, and the synthetic generator's
hospitals with injected rule situations — and requires the same alerts, field for field
(identity, severity, message, evidence, thresholds, lines).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigie.engine import FactSet, LiveEvaluator, evaluate, load_pack
from vigie.engine.columnar import detect, evaluate_columnar, in_stay, records_from_frames
from vigie.engine.evaluate import select
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

PACKS = Path(__file__).parents[1] / "rules" / "packs"
AT = datetime(2024, 3, 15, 12, 0)
SRC = Source(feed="test", document="columnar.hl7", message_id="M1", position="OBX[1]-5")


@cache
def pack(name: str) -> LoadedPack:
    text = (PACKS / name).read_text(encoding="utf-8")
    ir, diagnostics = compile_pack(text, f"rules/packs/{name}")
    assert ir is not None, diagnostics
    return load_pack(ir)


def default() -> LoadedPack:
    return pack("default.rules")


def ansm() -> LoadedPack:
    return pack("ansm-interactions.rules")


def same(facts: list[AnyFact], at: datetime, loaded: LoadedPack, **options: Any) -> list[Any]:
    """Both evaluators on the same facts; their alerts, asserted equal."""
    fact_set = FactSet(facts)
    live = evaluate(loaded, fact_set, at, **options)
    batch = evaluate_columnar(loaded, fact_set.frames(), at, **options)
    assert [a.id for a in batch] == [a.id for a in live]
    for mine, theirs in zip(batch, live, strict=True):
        assert mine.model_dump() == theirs.model_dump(), mine.rule_id
    return batch


# Hand-written cases (expected alerts from the catalogue) -----------------------------------------


def order(oid: str, atc: str, pid: str = "p1", **fields: Any) -> MedicationOrder:
    values: dict[str, Any] = {"start": AT - timedelta(days=5), "route": "oral"}
    values.update(fields)
    return MedicationOrder(
        fact_id=oid,
        patient_id=pid,
        source=SRC,
        order_id=oid,
        drug=Coding(code=atc),
        atc=atc,
        label=f"{atc} line",
        **values,
    )


def lab(concept: str, value: float | None, time: datetime, fid: str, pid: str = "p1",
        **fields: Any) -> LabResult:  # fmt: skip
    return LabResult(
        fact_id=fid,
        patient_id=pid,
        source=SRC,
        concept=concept,
        code=Coding(code=concept),
        value=value,
        unit=fields.pop("unit", None),
        time=time,
        **fields,
    )


def test_hyperkalaemia_escalates_and_the_binder_silences_it() -> None:
    # Catalogue bio.hyperkalaemia: K+ > 5.5 mmol/L within 48 h under a potassium-raising drug,
    # critical from 6.0; a potassium binder (V03AE) on board silences it.
    facts: list[AnyFact] = [
        order("RAMI", "C09AA05"),
        lab("potassium", 6.2, AT - timedelta(hours=3), "K1", unit="mmol/L"),
    ]
    alerts = same(facts, AT, default())
    assert [(a.rule_id, a.severity) for a in alerts] == [("bio.hyperkalaemia", "critical")]
    assert same([*facts, order("BIND", "V03AE01")], AT, default()) == []


def test_window_edges_to_the_microsecond() -> None:
    # "within 48 h" keeps a result exactly 48 h old and drops one a microsecond older.
    rami = order("RAMI", "C09AA05")
    edge = AT - timedelta(hours=48)
    inside = same([rami, lab("potassium", 5.9, edge, "K1", unit="mmol/L")], AT, default())
    assert [a.rule_id for a in inside] == ["bio.hyperkalaemia"]
    older = edge - timedelta(microseconds=1)
    assert same([rami, lab("potassium", 5.9, older, "K1", unit="mmol/L")], AT, default()) == []


def test_a_creatinine_after_the_reported_egfr_gives_the_latest_egfr() -> None:
    # Catalogue renal.metformin_egfr: "latest eGFR (reported or CKD-EPI) within 7 days" < 30.
    # A reported eGFR of 45 six days ago, then a creatinine of 300 µmol/L (3.39 mg/dL) for a
    # woman of 82: CKD-EPI 2021 142 x (3.39/0.7)^-1.200 x 0.9938^82 x 1.012 = 13.0.
    woman = Patient(
        fact_id="P1", patient_id="p1", source=SRC, birth_date=date(1942, 3, 1), sex=Sex.FEMALE
    )
    metformin = order("MET", "A10BA02", dose=500.0, dose_unit="mg", frequency_per_day=2.0)
    reported = lab("egfr", 45.0, AT - timedelta(days=6), "G1", unit="mL/min/1.73m2")
    creatinine = lab("creatinine", 300.0, AT - timedelta(hours=2), "C1", unit="µmol/L")
    alerts = same([woman, metformin, reported, creatinine], AT, default())
    (alert,) = [a for a in alerts if a.rule_id == "renal.metformin_egfr"]
    (g,) = [e for e in alert.evidence if e.name == "g"]
    assert g.value == pytest.approx(13.0, abs=0.05)
    # the same creatinine taken before the reported eGFR: the eGFR of 45 is the latest
    earlier = lab("creatinine", 300.0, AT - timedelta(days=6, hours=1), "C1", unit="µmol/L")
    alerts = same([woman, metformin, reported, earlier], AT, default())
    assert "renal.metformin_egfr" not in {a.rule_id for a in alerts}


def test_a_combination_product_counts_its_paracetamol() -> None:
    # dose.paracetamol_max: > 4 g a day. Two tablets of codeine 30 mg / paracetamol 500 mg five
    # times a day (5 g of paracetamol) with 1 g × 1 of plain paracetamol.
    codeine = Ingredient(name="codeine", amount=30, unit="mg", source="bdpm")
    paracetamol = Ingredient(name="paracetamol", atc="N02BE01", amount=500, unit="mg")
    combo = order("CODO", "N02AJ06", dose=2.0, dose_unit="tablet", frequency_per_day=5.0,
                  ingredients=(codeine, paracetamol))  # fmt: skip
    plain = order("PARA", "N02BE01", dose=1.0, dose_unit="g", frequency_per_day=1.0)
    alerts = same([combo, plain], AT, default())
    assert "dose.paracetamol_max" in {a.rule_id for a in alerts}


def test_pairs_of_the_ansm_pack_are_one_alert_per_pair() -> None:
    # Two NSAIDs and methotrexate: each rule raises each interacting pair of lines once,
    # whichever binding order met it first, and never pairs a line with itself.
    facts: list[AnyFact] = [order("MTX", "L04AX03"), order("IBU", "M01AE01"),
                            order("KETO", "M01AE03")]  # fmt: skip
    alerts = same(facts, AT, ansm(), level=3)
    pairs = [(a.rule_id, tuple(sorted(d.order_id for d in a.drugs[:2]))) for a in alerts]
    assert len(set(pairs)) == len(pairs)
    assert all(len(set(pair)) == 2 for _, pair in pairs)
    assert {pair for _, pair in pairs} >= {("IBU", "KETO"), ("IBU", "MTX"), ("KETO", "MTX")}


def test_detection_lists_the_bound_lines_in_binding_order() -> None:
    facts: list[AnyFact] = [
        order("RAMI", "C09AA05"),
        lab("potassium", 6.5, AT - timedelta(hours=1), "K1", unit="mmol/L"),
    ]
    found = detect(select(default()), FactSet(facts).frames(), AT)
    assert found.select("rule_id", "patient_id", "fact_ids", "severity").rows() == [
        ("bio.hyperkalaemia", "p1", ["RAMI"], "critical")
    ]


def test_records_rebuilt_from_frames_hold_the_same_facts() -> None:
    facts: list[AnyFact] = [
        order("RAMI", "C09AA05", ingredients=(Ingredient(name="x", amount=1.0, unit="mg"),)),
        lab("potassium", 6.5, AT - timedelta(hours=1), "K1", unit="mmol/L"),
        Patient(
            fact_id="p1", patient_id="p1", source=SRC, birth_date=date(1950, 1, 2), sex=Sex.FEMALE
        ),
    ]
    record = records_from_frames(FactSet(facts).frames(), ["p1"])["p1"]
    original = FactSet(facts).patient("p1")
    assert record.orders == original.orders
    assert record.labs == original.labs
    assert record.patient == original.patient


def test_scope_inpatients_reads_stay_periods() -> None:
    stay = Stay(fact_id="S1", patient_id="p1", source=SRC, stay_id="S1", ward="MED",
                admit_time=AT - timedelta(days=1), discharge_time=AT + timedelta(days=1),
                status="finished")  # fmt: skip
    gone = Stay(fact_id="S2", patient_id="p2", source=SRC, stay_id="S2", ward="MED",
                admit_time=AT - timedelta(days=9), discharge_time=AT - timedelta(days=1),
                status="in-progress")  # fmt: skip
    assert in_stay(FactSet([stay, gone]).frames(), AT) == ["p1"]


# Property: any hospital, the same alerts -----------------------------------------------------

DRUGS = [
    ("C09AA05", "oral"), ("C03DA01", "oral"), ("V03AE01", "oral"), ("A12BA01", "oral"),
    ("B01AA03", "oral"), ("B01AF01", "oral"), ("B01AE07", "oral"), ("B01AB05", "sc"),
    ("B01AB01", "iv"), ("M01AE01", "oral"), ("M01AE01", "topical"), ("M01AE01", None),
    ("A10BA02", "oral"), ("N02AA01", "oral"), ("N02AX02", "oral"), ("N02BE01", "oral"),
    ("N05BA01", "oral"), ("N05CF01", "oral"), ("N06AB04", "oral"), ("N06AB06", "oral"),
    ("J01XA01", "iv"), ("J01XA01", "oral"), ("J01GB03", "iv"), ("J01MA12", "iv"),
    ("J01MA12", "oral"), ("L04AX03", "oral"), ("C01AA05", "oral"), ("A06AD15", "oral"),
    ("A02BC01", "oral"), ("N03AX16", "oral"), ("M04AC01", "oral"), ("N05AH02", "oral"),
    ("C10AA05", "oral"), ("D10BA01", "oral"), ("H02AB06", "oral"), ("N02AJ06", "oral"),
    ("B01AB05", "iv"), (None, "oral"),
]  # fmt: skip
LABS = {
    "potassium": (2.5, 7.0, "mmol/L"),
    "sodium": (118.0, 145.0, "mmol/L"),
    "creatinine": (0.0, 400.0, "µmol/L"),
    "glucose": (2.0, 12.0, "mmol/L"),
    "platelets": (20.0, 400.0, "G/L"),
    "inr": (0.9, 7.0, "1"),
    "egfr": (3.0, 90.0, "mL/min/1.73m2"),
    "vancomycin": (5.0, 30.0, "mg/L"),
    "gentamicin": (0.5, 10.0, "mg/L"),
    "ck": (50.0, 5000.0, "U/L"),
    "alt": (10.0, 400.0, "U/L"),
    "neutrophils": (0.5, 6.0, "G/L"),
    "digoxin": (0.5, 3.0, "µg/L"),
    "hcg": (0.0, 100.0, "IU/L"),
}
PATIENTS = ("p1", "p2", "p3")
WINDOWS = [timedelta(hours=h) for h in (24, 48, 72, 168)]  # the default pack's windows
NUDGES = [-timedelta(microseconds=1), timedelta(0), timedelta(microseconds=1)]
DOSE_UNITS = ["mg", "mg", "g", "µg", "IU", "tablet", "mL", "MME", None]

moments = st.one_of(
    st.integers(-20 * 24 * 60, 60).map(lambda m: AT + timedelta(minutes=m)),
    st.builds(lambda w, n: AT - w + n, st.sampled_from(WINDOWS), st.sampled_from(NUDGES)),
)


@st.composite
def a_fact(draw: st.DrawFn) -> AnyFact:
    pid = draw(st.sampled_from(PATIENTS))
    kind = draw(st.sampled_from(["order"] * 4 + ["lab"] * 4 + ["weight", "patient", "other"]))
    if kind == "order":
        atc, route = draw(st.sampled_from(DRUGS))
        start = draw(st.one_of(moments, st.none()))
        end = draw(st.one_of(st.none(), moments))
        ingredients: tuple[Ingredient, ...] = ()
        if atc == "N02AJ06" and draw(st.booleans()):
            ingredients = (
                Ingredient(name="codeine", amount=30.0, unit="mg"),
                Ingredient(name="paracetamol", atc="N02BE01", amount=500.0, unit="mg"),
            )
        dose = draw(st.sampled_from([None, 0.0, 1.0, 2.0, 5.0, 500.0, 1000.0, 4000.0, 0.1]))
        per_day = draw(st.sampled_from([None, 1.0, 2.0, 3.0, 4.0, 1 / 7]))
        daily = draw(st.sampled_from(["computed", "none", "given"]))
        return MedicationOrder(
            fact_id=f"O{draw(st.integers(0, 12))}",
            patient_id=pid,
            source=SRC,
            order_id=f"ORD{draw(st.integers(0, 9))}",
            drug=Coding(code=atc or "LOCAL-1", display=draw(st.sampled_from([None, "Drug"]))),
            atc=atc,
            label=draw(st.sampled_from([None, "ligne"])),
            dose=dose,
            dose_unit=draw(st.sampled_from(DOSE_UNITS)),
            frequency_per_day=per_day,
            daily_dose=(
                None
                if daily == "none" or dose is None or per_day is None
                else dose * per_day
                if daily == "computed"
                else draw(st.floats(0.0, 10000.0))
            ),
            route=route,
            start=start,
            end=end,
            status=draw(st.sampled_from(["active", "active", "completed", "stopped", "on-hold"])),
            ingredients=ingredients,
        )
    if kind == "lab":
        concept = draw(st.sampled_from(sorted(LABS)))
        low, high, unit = LABS[concept]
        value = draw(st.one_of(st.sampled_from([low, high]), st.floats(low, high), st.none()))
        qualitative = None
        if concept == "hcg" and draw(st.booleans()):
            value, qualitative = None, draw(st.sampled_from(["positive", "negative"]))
        return LabResult(
            fact_id=f"L{draw(st.integers(0, 40))}",
            patient_id=pid,
            source=SRC,
            concept=concept,
            code=Coding(code=concept),
            value=value,
            unit=draw(st.sampled_from([unit, unit, None])),
            time=draw(moments),
            reference_high=draw(st.sampled_from([None, None, 40.0, 200.0])),
            qualitative=qualitative,
        )
    if kind == "weight":
        return Observation(
            fact_id=f"W{draw(st.integers(0, 5))}",
            patient_id=pid,
            source=SRC,
            concept="weight",
            code=Coding(code="29463-7"),
            value=draw(st.one_of(st.floats(30.0, 150.0), st.none())),
            unit="kg",
            time=draw(moments),
        )
    if kind == "patient":
        born = st.dates(date(1920, 1, 1), date(2010, 1, 1))
        edge_birthday = st.sampled_from([date(1949, 3, 15), date(1949, 3, 16), date(1944, 2, 29)])
        return Patient(
            fact_id=pid,
            patient_id=pid,
            source=SRC,
            birth_date=draw(st.one_of(born, edge_birthday, st.none())),
            sex=draw(st.sampled_from(list(Sex))),
        )
    other = draw(st.sampled_from(["condition", "allergy", "pregnancy", "stay"]))
    when = draw(st.one_of(moments, st.none()))
    fid = f"{other}-{draw(st.integers(0, 3))}"
    if other == "condition":
        code = draw(st.sampled_from(["K92.1", "K25.0", "O80", "Z33", "I10"]))
        return Condition(
            fact_id=fid, patient_id=pid, source=SRC, code=Coding(code=code), icd10=code,
            onset=when, clinical_status=draw(st.sampled_from(["active", "resolved"])),
        )  # fmt: skip
    if other == "allergy":
        return Allergy(
            fact_id=fid,
            patient_id=pid,
            source=SRC,
            substance=Coding(code="x"),
            atc=tuple(
                draw(st.lists(st.sampled_from(["M01A", "C09", "N02", "", "B01AA03"]), max_size=2))
            ),
            recorded=when,
            clinical_status=draw(st.sampled_from(["active", "unknown", "resolved"])),
        )
    if other == "pregnancy":
        return Pregnancy(
            fact_id=fid,
            patient_id=pid,
            source=SRC,
            status=draw(st.sampled_from(["pregnant", "not-pregnant"])),
            recorded=draw(moments),
        )
    return Stay(
        fact_id=fid,
        patient_id=pid,
        source=SRC,
        stay_id=fid,
        ward=draw(st.sampled_from(["MED", "CHIR", None])),
        admit_time=when,
        discharge_time=None if when is None else when + timedelta(days=draw(st.integers(1, 30))),
        status=draw(st.sampled_from(["in-progress", "finished", "cancelled"])),
    )


@pytest.mark.property
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts=st.lists(a_fact(), min_size=1, max_size=60), shift=st.sampled_from(NUDGES))
def test_columnar_equals_live_on_any_facts(facts: list[AnyFact], shift: timedelta) -> None:
    same(facts, AT + shift, default())


@pytest.mark.property
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts=st.lists(a_fact(), min_size=1, max_size=60))
def test_columnar_equals_live_ansm(facts: list[AnyFact]) -> None:
    same(facts, AT, ansm(), level=3)


@pytest.mark.property
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    facts=st.lists(a_fact(), min_size=1, max_size=40),
    cursors=st.fixed_dictionaries({"k_max": st.sampled_from([5.0, 5.5, 6.5])}),
)
def test_columnar_equals_the_incremental_evaluator(
    facts: list[AnyFact], cursors: dict[str, float]
) -> None:
    """Fed fact by fact then ticked to the evaluation time, the live store holds the alerts the
    batch finds (cursors moved as a site would)."""
    live = LiveEvaluator(default(), cursors=cursors, now=AT - timedelta(days=30))
    live.add_many(facts)
    live.tick(AT)
    batch = evaluate_columnar(default(), FactSet(facts).frames(), AT, cursors=cursors)
    # ``as_of`` aside: the live store's alert carries the time it was last re-evaluated (its
    # timers skip what time cannot change), the batch's the evaluation time.
    assert [a.model_dump(exclude={"as_of"}) for a in batch] == [
        a.model_dump(exclude={"as_of"}) for a in live.alerts()
    ]


@pytest.mark.slow
@pytest.mark.property
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), hours=st.integers(0, 7 * 24), nudge=st.sampled_from(NUDGES))
def test_columnar_equals_live_on_generated_hospitals(
    seed: int, hours: int, nudge: timedelta
) -> None:
    """The synthetic generator's hospital (every catalogue rule's situations injected), at any
    hour of its week: the same alerts from both evaluators, default and ANSM packs."""
    from vigie.synthetic.canonical import canonical_hospital
    from vigie.synthetic.catalogue import covered_rules

    facts, _ = canonical_hospital(40, 7, seed=seed, rates=dict.fromkeys(covered_rules(), 0.1))
    start = min(o.start for o in facts if isinstance(o, MedicationOrder) and o.start)
    at = start + timedelta(hours=hours) + nudge
    same(facts, at, default())
    same(facts, at, ansm(), level=3)


def test_unknown_operations_are_a_pack_error() -> None:
    from vigie.engine.errors import PackError

    loaded = default()
    rule = loaded.rules[0]
    broken = dict(rule.ir)
    broken["condition"] = {"op": "frobnicate", "args": [], "type": "bool", "span": [1, 1]}
    bad = type(rule)(**{**{f: getattr(rule, f) for f in rule.__dataclass_fields__}, "ir": broken})
    selection = select(loaded)
    from vigie.engine.load import Selection

    only = Selection(selection.pack, selection.params, (bad,), 1)
    with pytest.raises(PackError, match="frobnicate"):
        detect(only, FactSet([order("MET", "A10BA02")]).frames(), AT)


def test_frames_without_some_kinds_are_completed() -> None:
    frames = FactSet([order("RAMI", "C09AA05")]).frames()
    assert evaluate_columnar(default(), {"medication_order": frames["medication_order"]}, AT) == []
    assert isinstance(pl.DataFrame(), pl.DataFrame)


def test_sets_restricted_to_routes_read_each_line_route() -> None:
    # Membership is computed once per distinct (ATC, route) pair of the active lines: a code
    # in a set on some routes only (iv, im, or no route) is in it on those lines only, through a
    # binding, a line's membership, a count and a pair rule alike.
    sets = (
        "set systemic_aminoglycosides = atc J01GB route iv, im\n"
        "set nephrotoxic = atc systemic_aminoglycosides, C03C\n"
        "set loop = atc C03C\n"
    )
    rules = {
        "bound": "a = active drug in nephrotoxic",
        "member": "d = active drug in atc J01GB\n    d in systemic_aminoglycosides",
        "count": "count active drugs in systemic_aminoglycosides >= 2",
        "pair": "a = active drug in systemic_aminoglycosides\n    b = active drug in loop",
    }
    text = (
        'pack "routes" version "1.0.0"\n'
        + sets
        + "".join(
            f'rule t.{name} "{name}"\n  problem 7 intervention 2 severity major level 1\n'
            f'  when\n    {when}\n  say "{name}"\n'
            for name, when in rules.items()
        )
    )
    ir, diagnostics = compile_pack(text, "routes.rules")
    assert ir is not None, diagnostics
    loaded = load_pack(ir)
    routes = {"iv": "iv", "im": "im", "inh": "inhalation", "none": None}
    facts: list[AnyFact] = []
    for key, route in routes.items():  # one patient per route of the aminoglycoside lines
        pid = f"p_{key}"
        facts += [order(f"{key}1", "J01GB01", pid, route=route),
                  order(f"{key}2", "J01GB03", pid, route=route),
                  order(f"{key}3", "C03CA01", pid, route="iv")]  # fmt: skip
    facts.append(order("mixed1", "J01GB01", "p_mixed", route="iv"))
    facts.append(order("mixed2", "J01GB01", "p_mixed", route="inhalation"))
    alerts = same(facts, AT, loaded)
    fired = {(a.rule_id, a.patient_id) for a in alerts}
    for key in ("iv", "im", "none"):
        assert {f"t.{r}" for r in rules} <= {rule for rule, p in fired if p == f"p_{key}"}
    # inhalation: only the loop diuretic is nephrotoxic; no aminoglycoside counts or pairs
    assert {rule for rule, p in fired if p == "p_inh"} == {"t.bound"}
    assert {rule for rule, p in fired if p == "p_mixed"} == {"t.bound", "t.member"}
