"""The alert store: identity and lifecycle across real evaluations, on SQLite and PostgreSQL.

Alerts come from ``evaluate`` with the default pack on small fact sets (the helpers of
tests/test_evaluate.py). Expected statuses follow the lifecycle of ARCHITECTURE.md and
docs/alerts.md (open → resolved_by_data, or a pharmacist's intervention / dismissal; a dismissed
alert does not come back unless its evidence changes); evidence changes are the facts each
scenario adds by hand. The property test holds the store to a reference model of that table
written here, independently of the store.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from fhir.resources.R4B.detectedissue import DetectedIssue
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from tests.conftest import postgres_schema
from tests.test_evaluate import NOW, default_ir, drug, hyperkalaemia_facts, lab, patient
from vigie.engine import Alert, FactSet, evaluate
from vigie.engine.alerts import Evidence, alert_id
from vigie.engine.fhir_export import INTERVENTION_SYSTEM, Lifecycle, alert_to_detected_issue
from vigie.engine.live import AlertDiff, LiveEvaluator
from vigie.engine.priority import worklist as engine_worklist
from vigie.errors import VigieError
from vigie.facts import AnyFact, MedicationOrder
from vigie.store import (
    AlertError,
    AlertStore,
    AlertTransitionError,
    Dismissal,
    FactStore,
    Intervention,
    StoredAlert,
    UnknownAlertError,
)
from vigie.store.alerts import AlertEvent, AlertRow, evidence_key, replay

H = timedelta(hours=1)
# The hyperkalaemia alert of p1: rule id + patient + its one bound order line (ramipril ORD1).
K_ALERT = alert_id("bio.hyperkalaemia", "p1", ["ORD1"])
# R4 DetectedIssue.status is bound (required) to ObservationStatus.
OBSERVATION_STATUS = {
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
}


@pytest.fixture
def alerts(store_url: str) -> Iterator[AlertStore]:
    facts = FactStore(store_url)
    yield AlertStore(facts)
    facts.close()


def run(facts: Sequence[AnyFact], at: datetime) -> list[Alert]:
    return evaluate(default_ir(), FactSet(list(facts)), at)


def ramipril_stopped(at: datetime) -> MedicationOrder:
    """The same order line ORD1, stopped at ``at`` (a new version of the line)."""
    return drug("ORD1", "C09AA05", label="ramipril 5 mg", end=at, status="stopped")


def statuses(store: AlertStore) -> dict[str, str]:
    return {a.id: a.status for a in store.alerts()}


# The lifecycle on real evaluations --------------------------------------------------------------


def test_full_lifecycle_from_real_evaluations(alerts: AlertStore) -> None:
    facts = hyperkalaemia_facts()  # K+ 5.9 (LAB1, 03-04 08:00) under ramipril (ORD1)
    first = run(facts, NOW)
    assert [a.id for a in first] == [K_ALERT]

    done = alerts.reconcile(first, NOW)
    assert done.opened == [K_ALERT]
    stored = alerts.get(K_ALERT)
    assert (stored.status, stored.rule_id, stored.patient_id) == ("open", "bio.hyperkalaemia", "p1")
    assert (stored.ward, stored.severity, stored.rule_version) == ("CARDIO", "major", 3)
    assert stored.first_seen == stored.last_seen == stored.status_changed_at == NOW
    assert stored.payload == first[0].model_dump(mode="json")

    # Evaluated again an hour later: the same alert, seen again, not duplicated.
    assert alerts.reconcile(run(facts, NOW + H), NOW + H).kept == [K_ALERT]
    stored = alerts.get(K_ALERT)
    assert (stored.first_seen, stored.last_seen, stored.status) == (NOW, NOW + H, "open")
    assert [a.id for a in alerts.worklist()] == [K_ALERT]

    # The pharmacist dismisses it; the next day's evaluation (LAB1 still within 48 h) keeps it.
    reason = Dismissal("accepted_risk", "K+ contrôlée tous les jours")
    dismissed = alerts.decide(K_ALERT, reason, actor="pharm.a", at=NOW + 2 * H)
    assert (dismissed.status, dismissed.reason_code, dismissed.actor) == (
        "dismissed",
        "accepted_risk",
        "pharm.a",
    )
    next_morning = datetime(2024, 3, 5, 8, 0)
    assert alerts.reconcile(run(facts, next_morning), next_morning).kept == [K_ALERT]
    assert alerts.get(K_ALERT).status == "dismissed"
    assert alerts.worklist() == []

    # A new potassium, 6.1 mmol/L: the evidence changed, the alert reopens (critical: K+ >= 6.0).
    facts.append(lab("potassium", 6.1, datetime(2024, 3, 5, 9, 0), fid="LAB2"))
    at = datetime(2024, 3, 5, 10, 0)
    assert alerts.reconcile(run(facts, at), at).reopened == [K_ALERT]
    stored = alerts.get(K_ALERT)
    assert (stored.status, stored.severity, stored.actor) == ("open", "critical", "evaluation")
    reopening = alerts.events(K_ALERT)[-1]
    assert (reopening.from_status, reopening.to_status) == ("dismissed", "open")
    assert reopening.reason is not None
    assert "evidence changed since dismissed" in reopening.reason
    assert "LAB1" in reopening.reason and "LAB2" in reopening.reason and "6.1" in reopening.reason

    # An intervention: the prescriber stops ramipril. Once stopped, the alert is no longer
    # raised, and the decision stands.
    stop = Intervention("Arrêt du ramipril proposé au prescripteur, accepté", code="2")
    alerts.decide(K_ALERT, stop, actor="pharm.b", at=at + H)
    facts[1] = ramipril_stopped(at + 2 * H)
    assert run(facts, at + 3 * H) == []
    done = alerts.reconcile([], at + 3 * H)
    assert (done.resolved, done.kept) == ([], [])
    stored = alerts.get(K_ALERT)
    assert (stored.status, stored.raised, stored.reason_code) == ("intervention", False, "2")

    log = [(e.from_status, e.to_status, e.actor) for e in alerts.events(K_ALERT)]
    assert log == [
        (None, "open", "evaluation"),
        ("open", "dismissed", "pharm.a"),
        ("dismissed", "open", "evaluation"),
        ("open", "intervention", "pharm.b"),
    ]
    assert replay(alerts.events()) == statuses(alerts) == {K_ALERT: "intervention"}
    with pytest.raises(AlertError, match="from dismissed, but the log so far gives open"):
        replay([e for e in alerts.events() if e.to_status != "dismissed"])  # a lost event


def test_dismissed_stays_dismissed_across_reevaluations_with_the_same_evidence(
    alerts: AlertStore,
) -> None:
    facts = hyperkalaemia_facts()
    alerts.reconcile(run(facts, NOW), NOW)
    key = alerts.get(K_ALERT).evidence_key
    alerts.decide(K_ALERT, Dismissal("not_relevant"), actor="pharm.a", at=NOW + H)
    # Every hour for the next day and a half (LAB1 at 03-04 08:00 stays within 48 h).
    for hours in range(2, 40, 3):
        at = NOW + hours * H
        raised = run(facts, at)
        assert [a.id for a in raised] == [K_ALERT]
        assert alerts.reconcile(raised, at).kept == [K_ALERT]
        assert alerts.get(K_ALERT).evidence_key == key
    stored = alerts.get(K_ALERT)
    assert (stored.status, stored.last_seen) == ("dismissed", NOW + 38 * H)
    assert len(alerts.events(K_ALERT)) == 2  # raised, dismissed: nothing since


def test_dismissed_reopens_when_a_new_potassium_arrives(alerts: AlertStore) -> None:
    facts = hyperkalaemia_facts()
    alerts.reconcile(run(facts, NOW), NOW)
    alerts.decide(K_ALERT, Dismissal("other", "patient en fin de vie"), actor="a", at=NOW)
    # Same value, another sample: new evidence all the same (another fact, another time).
    facts.append(lab("potassium", 5.9, NOW + H, fid="LAB2"))
    done = alerts.reconcile(run(facts, NOW + 2 * H), NOW + 2 * H)
    assert done.reopened == [K_ALERT]
    event = alerts.events(K_ALERT)[-1]
    assert event.detail is not None
    assert event.detail["changes"] == [
        "k: potassium 5.9 mmol/L 2024-03-04T08:00:00 [LAB1]"
        " → potassium 5.9 mmol/L 2024-03-04T13:00:00 [LAB2]"
    ]
    assert event.detail["previous_evidence_key"] != event.evidence_key


def test_resolved_by_data_when_the_drug_stops(alerts: AlertStore) -> None:
    facts = hyperkalaemia_facts()
    alerts.reconcile(run(facts, NOW), NOW)
    facts[1] = ramipril_stopped(NOW + H)
    assert run(facts, NOW + 2 * H) == []  # the rule needs an active potassium-raising drug
    done = alerts.reconcile([], NOW + 2 * H)
    assert done.resolved == [K_ALERT]
    stored = alerts.get(K_ALERT)
    assert (stored.status, stored.raised, stored.status_changed_at) == (
        "resolved_by_data",
        False,
        NOW + 2 * H,
    )
    assert stored.last_seen == NOW  # last raised then
    assert alerts.worklist() == []
    with pytest.raises(AlertTransitionError, match="resolved_by_data"):
        alerts.decide(K_ALERT, Dismissal("not_relevant"), actor="a")


def test_resolved_by_data_raised_again_reopens(alerts: AlertStore) -> None:
    facts = hyperkalaemia_facts()
    alerts.reconcile(run(facts, NOW), NOW)
    facts.append(lab("potassium", 4.8, NOW + H, fid="LAB2"))  # back to normal
    assert alerts.reconcile(run(facts, NOW + 2 * H), NOW + 2 * H).resolved == [K_ALERT]
    facts.append(lab("potassium", 5.8, NOW + 5 * H, fid="LAB3"))  # high again
    assert alerts.reconcile(run(facts, NOW + 6 * H), NOW + 6 * H).reopened == [K_ALERT]
    event = alerts.events(K_ALERT)[-1]
    assert (event.from_status, event.to_status) == ("resolved_by_data", "open")
    assert event.reason is not None and "LAB3" in event.reason
    assert [a.id for a in alerts.worklist()] == [K_ALERT]


def test_an_intervention_stays_unless_the_evidence_changes(alerts: AlertStore) -> None:
    facts = hyperkalaemia_facts()
    alerts.reconcile(run(facts, NOW), NOW)
    alerts.decide(K_ALERT, Intervention("dose réduite", code="7"), actor="a", at=NOW)
    assert alerts.reconcile(run(facts, NOW + H), NOW + H).kept == [K_ALERT]
    assert alerts.get(K_ALERT).status == "intervention"
    facts.append(lab("potassium", 6.4, NOW + 2 * H, fid="LAB2"))
    assert alerts.reconcile(run(facts, NOW + 3 * H), NOW + 3 * H).reopened == [K_ALERT]
    event = alerts.events(K_ALERT)[-1]
    assert (event.from_status, event.to_status) == ("intervention", "open")


def test_reconcile_resolves_only_within_its_scope(alerts: AlertStore) -> None:
    p2: list[AnyFact] = [
        patient("p2", born=date(1980, 1, 1)),
        drug("W2", "B01AA03", pid="p2", label="warfarine 5 mg"),
        drug("I2", "M01AE01", pid="p2", label="ibuprofène 400 mg", per_day=3.0),
    ]
    both = run([*hyperkalaemia_facts(), *p2], NOW)
    assert {a.patient_id for a in both} == {"p1", "p2"}
    alerts.reconcile(both, NOW)
    # Re-evaluating p2 alone, with nothing raised, resolves p2's alerts and leaves p1's open.
    done = alerts.reconcile([], NOW + H, scope={"p2"})
    assert sorted(done.resolved) == sorted(a.id for a in both if a.patient_id == "p2")
    assert alerts.get(K_ALERT).status == "open"
    with pytest.raises(AlertError, match="outside the scope"):
        alerts.reconcile(both, NOW + 2 * H, scope={"p2"})


def test_decisions_the_lifecycle_refuses(alerts: AlertStore) -> None:
    alerts.reconcile(run(hyperkalaemia_facts(), NOW), NOW)
    refused: list[tuple[Dismissal | Intervention, str]] = [
        (Dismissal(""), "reason code"),
        (Dismissal("bored"), "reason code"),
        (Dismissal("other", "  "), "needs its text"),
        (Intervention(""), "needs its text"),
        (Intervention("ok", code="8"), "1..7"),
    ]
    for decision, message in refused:
        with pytest.raises(AlertTransitionError, match=message):
            alerts.decide(K_ALERT, decision, actor="a")
    with pytest.raises(AlertTransitionError, match="actor"):
        alerts.decide(K_ALERT, Dismissal("not_relevant"), actor=" ")
    with pytest.raises(AlertTransitionError, match="evidence changed"):
        alerts.decide(K_ALERT, Dismissal("not_relevant"), actor="a", evidence_key="0" * 32)
    with pytest.raises(UnknownAlertError, match="nope"):
        alerts.decide("nope", Dismissal("not_relevant"), actor="a")
    assert statuses(alerts) == {K_ALERT: "open"} and len(alerts.events()) == 1

    key = alerts.get(K_ALERT).evidence_key
    alerts.decide(K_ALERT, Dismissal("duplicate"), actor="a", evidence_key=key)
    for decision in (Dismissal("not_relevant"), Intervention("après coup")):
        with pytest.raises(AlertTransitionError, match="it is dismissed"):
            alerts.decide(K_ALERT, decision, actor="a")
    for error in (AlertTransitionError, UnknownAlertError, AlertError):
        assert issubclass(error, VigieError)


def test_the_event_log_is_append_only(alerts: AlertStore) -> None:
    facts = hyperkalaemia_facts()
    alerts.reconcile(run(facts, NOW), NOW)
    alerts.decide(K_ALERT, Dismissal("not_relevant"), actor="a", at=NOW + H)
    before = alerts.events()
    engine = alerts.facts.engine
    for statement in (
        "UPDATE alert_event SET to_status = 'open'",
        "UPDATE alert_event SET actor = 'someone else' WHERE to_status = 'dismissed'",
        "DELETE FROM alert_event",
        "DELETE FROM alert_event WHERE to_status = 'dismissed'",
    ):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text(statement))
    if engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as connection:
            connection.execute(text("TRUNCATE alert_event CASCADE"))
    assert alerts.events() == before
    assert not any(name.startswith(("delete", "update", "remove")) for name in dir(alerts))


def test_a_store_made_before_the_alert_tables_gets_them(store_url: str) -> None:
    with FactStore(store_url) as facts, facts.engine.begin() as connection:
        connection.execute(text("DROP TABLE alert_event"))
        connection.execute(text("DROP TABLE alert"))
    with FactStore(store_url) as facts:  # opened again: the tables (and triggers) are made
        alerts = AlertStore(facts)
        alerts.reconcile(run(hyperkalaemia_facts(), NOW), NOW)
        assert statuses(alerts) == {K_ALERT: "open"}
        with pytest.raises(DBAPIError, match="append-only"), facts.engine.begin() as c:
            c.execute(text("DELETE FROM alert_event"))


# Evidence key -----------------------------------------------------------------------------------


def test_the_evidence_key_follows_the_facts_not_the_evaluation_time() -> None:
    # warfarin without an INR: the count's evidence time is its window's start, which moves
    # with the evaluation time; the key must not.
    facts: list[AnyFact] = [
        patient("p3"),
        drug("W3", "B01AA03", pid="p3", label="warfarine 5 mg"),
    ]
    (early,) = [a for a in run(facts, NOW) if a.rule_id == "coag.vka_no_inr"]
    (later,) = [a for a in run(facts, NOW + 30 * H) if a.rule_id == "coag.vka_no_inr"]
    assert early.evidence != later.evidence  # the window start moved...
    assert evidence_key(early.model_dump(mode="json")) == evidence_key(
        later.model_dump(mode="json")
    )  # ...the evidence did not
    # An age grows with the clock, its birth date does not: born 1980-03-05, 43 years old on
    # 03-04, 44 on 03-06 (warfarin + NSAID quotes the age), same key.
    birthday: list[AnyFact] = [
        patient("p3", born=date(1980, 3, 5)),
        facts[1],
        drug("I3", "M01AE01", pid="p3", label="ibuprofène 400 mg"),
    ]
    keys, ages = [], []
    for at in (NOW, NOW + 48 * H):
        (alert,) = [a for a in run(birthday, at) if a.rule_id == "coag.warfarin_nsaid"]
        ages += [e.value for e in alert.evidence if e.name == "age"]
        keys.append(evidence_key(alert.model_dump(mode="json")))
    assert ages == [43.0, 44.0]
    assert keys[0] == keys[1]

    base = run(hyperkalaemia_facts(), NOW)[0].model_dump(mode="json")
    changed_value = run(hyperkalaemia_facts(k=6.2), NOW)[0].model_dump(mode="json")
    assert evidence_key(base) != evidence_key(changed_value)
    # Where a fact came from (message, position) is not its evidence.
    moved: dict[str, Any] = {**base, "evidence": [dict(e) for e in base["evidence"]]}
    for item in moved["evidence"]:
        item["source"] = {"feed": "fhir", "document": "other.ndjson"}
    assert evidence_key(moved) == evidence_key(base)


def test_a_derived_value_keys_on_its_inputs() -> None:
    def clearance(creatinine: float, fid: str) -> dict[str, Any]:
        crea = Evidence(
            name="creatinine",
            kind="lab",
            code="creatinine",
            value=creatinine,
            unit="µmol/L",
            time=NOW,
            fact_id=fid,
        )
        item = Evidence(
            name="crcl",
            kind="derived",
            code="clearance",
            value=80.0,
            unit="mL/min",
            time=NOW,
            inputs=(crea,),
        )
        return {"evidence": [item.model_dump(mode="json")]}

    assert evidence_key(clearance(100.0, "C1")) != evidence_key(clearance(120.0, "C1"))
    assert evidence_key(clearance(100.0, "C1")) != evidence_key(clearance(100.0, "C2"))


# Live evaluator ---------------------------------------------------------------------------------


def test_apply_diff_keeps_the_store_equal_to_the_live_evaluator(alerts: AlertStore) -> None:
    live = LiveEvaluator(default_ir(), now=NOW - 4 * H)
    for fact in hyperkalaemia_facts():
        alerts.apply_diff(live.add(fact, NOW - 3 * H), NOW - 3 * H)
    alerts.apply_diff(live.tick(NOW), NOW)
    assert {a.id for a in alerts.worklist()} == {a.id for a in live.alerts()} == {K_ALERT}
    alerts.decide(K_ALERT, Dismissal("not_relevant"), actor="a", at=NOW)
    # The same fact again changes nothing; the line stopped resolves the (dismissed) alert.
    alerts.apply_diff(live.add(hyperkalaemia_facts()[2], NOW + H), NOW + H)
    assert alerts.get(K_ALERT).status == "dismissed"
    diff = live.add(ramipril_stopped(NOW + H), NOW + 2 * H)
    assert [a.id for a in diff.resolved] == [K_ALERT]
    done = alerts.apply_diff(diff, NOW + 2 * H)
    assert done.resolved == []  # a decision is not overwritten by the data
    assert (alerts.get(K_ALERT).status, alerts.get(K_ALERT).raised) == ("dismissed", False)
    # An open alert resolved by a diff.
    other = alerts.apply_diff(AlertDiff(new=run(hyperkalaemia_facts(), NOW)), NOW)
    assert other.reopened == [] and other.kept == [K_ALERT]  # same evidence: stays dismissed


def test_apply_diff_resolves_an_open_alert(alerts: AlertStore) -> None:
    raised = run(hyperkalaemia_facts(), NOW)
    assert alerts.apply_diff(AlertDiff(new=raised), NOW).opened == [K_ALERT]
    assert alerts.apply_diff(AlertDiff(resolved=raised), NOW + H).resolved == [K_ALERT]
    assert alerts.apply_diff(AlertDiff(updated=raised), NOW + 2 * H).reopened == [K_ALERT]


# Worklist ---------------------------------------------------------------------------------------


def _hospital() -> list[AnyFact]:
    from tests.test_fhir_export import _scenarios

    return _scenarios()


def test_worklist_is_the_open_alerts_by_priority_filtered_by_ward_and_severity(
    alerts: AlertStore,
) -> None:
    facts = _hospital()
    raised = run(facts, NOW)
    scored = [
        item.alert.model_copy(update={"priority": item.priority.score})
        for item in engine_worklist(raised, FactSet(facts), NOW)
    ]
    alerts.reconcile(scored, NOW)
    by_priority = sorted(scored, key=lambda a: -(a.priority or 0.0))
    assert len({a.priority for a in scored}) == len(scored)  # no tie: one expected order
    assert [a.id for a in alerts.worklist()] == [a.id for a in by_priority]
    assert [a.id for a in alerts.worklist(limit=2)] == [a.id for a in by_priority[:2]]
    assert [a.id for a in alerts.worklist(ward="CARDIO")] == [K_ALERT]
    critical = [a.id for a in scored if a.severity == "critical"]
    assert [a.id for a in alerts.worklist(severities=["critical"])] == critical
    majors = [a.id for a in by_priority if a.severity in {"major", "critical"}]
    assert [a.id for a in alerts.worklist(severities={"major", "critical"})] == majors
    # A decided alert leaves the worklist.
    top = by_priority[0].id
    alerts.decide(top, Intervention("appel au prescripteur"), actor="a", at=NOW)
    assert [a.id for a in alerts.worklist()] == [a.id for a in by_priority[1:]]
    with pytest.raises(AlertError, match="unknown severities"):
        alerts.worklist(severities=["high"])


def test_worklist_without_priority_orders_by_severity(alerts: AlertStore) -> None:
    raised = run(_hospital(), NOW)
    assert all(a.priority is None for a in raised)
    alerts.reconcile(raised, NOW)
    rank = {"critical": 0, "major": 1, "moderate": 2, "minor": 3}
    assert [a.severity for a in alerts.worklist()] == sorted(
        (a.severity for a in raised), key=rank.__getitem__
    )


# FHIR export of the lifecycle ------------------------------------------------------------------


def _lifecycle(stored: StoredAlert) -> tuple[Alert, Lifecycle]:
    alert = Alert.model_validate(stored.payload)
    lifecycle = Lifecycle(
        status=stored.status,
        changed=stored.status_changed_at,
        actor=stored.actor,
        reason_code=stored.reason_code,
        reason=stored.reason,
    )
    return alert, lifecycle


def _parts(issue: dict[str, Any], url: str) -> dict[str, Any]:
    (extension,) = [e for e in issue["extension"] if e["url"] == url]
    return {
        p["url"]: next(v for k, v in p.items() if k.startswith("value"))
        for p in extension["extension"]
    }


def test_each_lifecycle_status_exports_as_valid_r4(alerts: AlertStore) -> None:
    facts = _hospital()
    raised = {a.rule_id + a.patient_id: a.id for a in run(facts, NOW)}
    alerts.reconcile(run(facts, NOW), NOW)
    intervened = raised["bio.hyperkalaemiap1"]
    dismissed = raised["coag.warfarin_nsaidp3"]
    wrong_data = raised["renal.dabigatranp2"]
    alerts.decide(intervened, Intervention("Arrêt proposé", code="2"), actor="pharm.a", at=NOW)
    alerts.decide(dismissed, Dismissal("accepted_risk"), actor="pharm.b", at=NOW)
    alerts.decide(wrong_data, Dismissal("data_error", "poids faux"), actor="pharm.b", at=NOW)
    # p5's potassium falls back: its alert is resolved by the data.
    facts.append(lab("potassium", 4.2, NOW + H, pid="p5", fid="K5b"))
    alerts.reconcile(run(facts, NOW + 2 * H), NOW + 2 * H)
    resolved = raised["bio.hyperkalaemiap5"]

    expected = {
        intervened: ("intervention", "final"),
        dismissed: ("dismissed", "final"),
        wrong_data: ("dismissed", "entered-in-error"),
        resolved: ("resolved_by_data", "cancelled"),
    }
    for stored in alerts.alerts():
        alert, lifecycle = _lifecycle(stored)
        issue = alert_to_detected_issue(alert, lifecycle)
        DetectedIssue.model_validate(issue)
        assert issue["status"] in OBSERVATION_STATUS
        status, fhir_status = expected.get(stored.id, ("open", "preliminary"))
        assert (stored.status, issue["status"]) == (status, fhir_status)
        parts = _parts(issue, "urn:vigie:extension:lifecycle")
        assert parts["status"] == status
        assert parts["changed"] == stored.status_changed_at.isoformat() + "Z"
        if status != "intervention":
            assert "mitigation" not in issue
    issue = alert_to_detected_issue(*_lifecycle(alerts.get(intervened)))
    (mitigation,) = issue["mitigation"]
    assert mitigation["action"]["coding"] == [
        {"system": INTERVENTION_SYSTEM, "code": "2", "display": "Arrêt"}
    ]
    assert mitigation["action"]["text"] == "Arrêt proposé"
    assert (mitigation["date"], mitigation["author"]) == (
        "2024-03-04T12:00:00Z",
        {"display": "pharm.a"},
    )
    assert INTERVENTION_SYSTEM.endswith("fr-pharmaceutical-intervention-type-code")


# Property: any sequence of evaluations and decisions ---------------------------------------------

# p1: potassium (none, or one of three samples, two of them high) under ramipril active or
# stopped; p2: warfarin with ibuprofen stopped or on, the line's label corrected from 400 to
# 200 mg (the same line, other evidence). Each world is evaluated once.
K_SAMPLES = (None, ("KA", 5.9), ("KB", 6.2), ("KC", 5.7), ("KD", 4.5))
NSAID_LABELS = (None, "ibuprofène 400 mg", "ibuprofène 200 mg")


@cache
def world(k: int, ramipril_on: bool, nsaid: int) -> tuple[Alert, ...]:
    label = NSAID_LABELS[nsaid]
    facts: list[AnyFact] = [
        patient("p1"),
        drug("ORD1", "C09AA05", label="ramipril 5 mg")
        if ramipril_on
        else ramipril_stopped(NOW - 2 * H),
        patient("p2", born=date(1980, 1, 1)),
        drug("W2", "B01AA03", pid="p2", label="warfarine 5 mg"),
        drug("I2", "M01AE01", pid="p2", label=label)
        if label
        else drug("I2", "M01AE01", pid="p2", end=NOW - 2 * H, status="stopped"),
    ]
    sample = K_SAMPLES[k]
    if sample is not None:
        facts.append(lab("potassium", sample[1], NOW - 3 * H, fid=sample[0]))
    return tuple(run(facts, NOW))


def _facts_of(alert: Alert) -> frozenset[tuple[Any, ...]]:
    """The model's own notion of an alert's evidence: the facts (id, value, time) behind it."""
    found: set[tuple[Any, ...]] = set()
    pending = list(alert.evidence)
    while pending:
        item = pending.pop()
        if item.fact_id is not None:
            found.add((item.fact_id, item.value, item.time))
        pending.extend(item.inputs)
    return frozenset(found)


class Model:
    """The lifecycle table of docs/alerts.md, over the test's own evidence notion."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.evidence: dict[str, frozenset[tuple[Any, ...]]] = {}
        self.raised: set[str] = set()

    def evaluate(self, raised: Sequence[Alert], patients: set[str] | None) -> None:
        for alert in raised:
            before, facts = self.status.get(alert.id), _facts_of(alert)
            changed = facts != self.evidence.get(alert.id)
            if before in (None, "resolved_by_data") or (
                before in ("dismissed", "intervention") and changed
            ):
                self.status[alert.id] = "open"
            self.evidence[alert.id] = facts
        ids = {a.id for a in raised}
        for gone in [i for i in self.raised - ids if patients is None or _patient(i) in patients]:
            self.raised.discard(gone)
            if self.status[gone] == "open":
                self.status[gone] = "resolved_by_data"
        self.raised |= ids


PATIENT_OF: dict[str, str] = {}


def _patient(alert_id: str) -> str:
    return PATIENT_OF[alert_id]


evaluations = st.tuples(
    st.just("evaluate"),
    st.integers(0, len(K_SAMPLES) - 1),
    st.booleans(),
    st.integers(0, len(NSAID_LABELS) - 1),
    st.sampled_from([None, "p1", "p2"]),
)
decisions = st.tuples(
    st.sampled_from(["dismiss", "intervene"]),
    st.integers(0, 7),
    st.sampled_from(["not_relevant", "data_error", "other"]),
)


@contextmanager
def _empty_store(backend: str) -> Iterator[FactStore]:
    """A new store per example: SQLite in memory, or a fresh PostgreSQL schema."""
    if backend == "sqlite":
        with FactStore("sqlite://") as facts:
            yield facts
        return
    with postgres_schema("vigie_prop") as url, FactStore(url) as facts:
        yield facts


def _run_operations(backend: str, operations: list[tuple[Any, ...]]) -> None:
    model, log = Model(), list[AlertEvent]()
    with _empty_store(backend) as facts:
        store = AlertStore(facts)
        for step, operation in enumerate(operations):
            at = NOW + step * H
            if operation[0] == "evaluate":
                _, k, ramipril_on, nsaid, only = operation
                raised = [a for a in world(k, ramipril_on, nsaid) if only in (None, a.patient_id)]
                PATIENT_OF.update((a.id, a.patient_id) for a in raised)
                scope = None if only is None else {only}
                store.reconcile(raised, at, scope=scope)
                model.evaluate(raised, scope)
            else:
                _decide(store, model, operation, at)
            _check(store, model, log)


OPERATIONS = st.lists(st.one_of(evaluations, decisions), min_size=1, max_size=14)


@pytest.mark.property
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS)
def test_any_sequence_of_evaluations_and_decisions_keeps_the_invariants(
    operations: list[tuple[Any, ...]],
) -> None:
    _run_operations("sqlite", operations)


@pytest.mark.property
@pytest.mark.postgres
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS)
def test_the_invariants_hold_on_postgresql(operations: list[tuple[Any, ...]]) -> None:
    _run_operations("postgres", operations)


def _decide(store: AlertStore, model: Model, operation: tuple[Any, ...], at: datetime) -> None:
    kind, index, reason = operation
    known = sorted(model.status)
    if not known:
        return
    target = known[index % len(known)]
    decision = Dismissal(reason, "texte") if kind == "dismiss" else Intervention("fait", code="5")
    if model.status[target] != "open":
        with pytest.raises(AlertTransitionError):
            store.decide(target, decision, actor="pharm", at=at)
        return
    store.decide(target, decision, actor="pharm", at=at)
    model.status[target] = "dismissed" if kind == "dismiss" else "intervention"


def _check(store: AlertStore, model: Model, log: list[AlertEvent]) -> None:
    with store.facts.engine.connect() as connection:
        rows, ids = connection.execute(
            select(func.count(), func.count(AlertRow.id.distinct()))
        ).one()
    assert rows == ids == len(model.status)  # exactly one row per alert id
    assert statuses(store) == model.status
    events = store.events()
    assert replay(events) == model.status  # the log replays to the current status
    assert events[: len(log)] == log  # append-only: what was written is still there, unchanged
    for new in events[len(log) :]:
        event(f"{new.from_status} -> {new.to_status}")  # what the examples exercised
    log[:] = events
    assert {a.id for a in store.worklist(limit=None)} == {
        i for i, s in model.status.items() if s == "open"
    }
    assert all(a.raised == (a.id in model.raised) for a in store.alerts())


def test_observed_ppv_counts_decisions_per_rule(alerts: AlertStore) -> None:
    """PPV = relevant decisions / decisions per rule, from the decision log (relevant: an
    intervention, or a dismissal saying the alert was right but needed no action —
    docs/metrics.md); a rule with too few decisions is left to the priority's prior."""
    facts = hyperkalaemia_facts()
    alerts.reconcile(run(facts, NOW), NOW)
    alerts.decide(K_ALERT, Dismissal("not_relevant", "K+ hémolysé"), actor="a", at=NOW + H)
    facts.append(lab("potassium", 6.1, datetime(2024, 3, 5, 9, 0), fid="LAB2"))
    at = datetime(2024, 3, 5, 10, 0)
    alerts.reconcile(run(facts, at), at)  # new evidence: reopened, decided again
    alerts.decide(K_ALERT, Intervention("Arrêt du ramipril"), actor="b", at=at + H)
    assert alerts.observed_ppv(min_decisions=2) == {"bio.hyperkalaemia": 0.5}
    assert alerts.observed_ppv(min_decisions=3) == {}
    assert alerts.observed_ppv() == {}  # five decisions by default
    facts.append(lab("potassium", 6.3, datetime(2024, 3, 6, 9, 0), fid="LAB3"))
    at = datetime(2024, 3, 6, 10, 0)
    alerts.reconcile(run(facts, at), at)  # reopened again: right, but already handled
    alerts.decide(K_ALERT, Dismissal("accepted_risk", "suivi quotidien"), actor="c", at=at + H)
    assert alerts.observed_ppv(min_decisions=3) == {"bio.hyperkalaemia": 2 / 3}
