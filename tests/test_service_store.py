"""The service store (``vigie.store.service``): users and tokens, wards, decisions with their
SFPC codes and outcome, versions, the append-only audit log; and the worklist refreshed from the
store's facts (``vigie.api.app.refresh_worklist``). On SQLite and PostgreSQL (``store_url``).

Alerts come from real evaluations of the default pack (the facts of tests/test_evaluate.py).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from tests.test_evaluate import NOW, default_ir, drug, hyperkalaemia_facts, lab
from vigie.api.app import refresh_worklist
from vigie.engine import FactSet, evaluate
from vigie.engine.alerts import alert_id
from vigie.facts import AnyFact
from vigie.store import (
    AlertStore,
    AlertTransitionError,
    AuditEntry,
    Dismissal,
    FactStore,
    Intervention,
    ServiceError,
    ServiceStore,
    UnknownAlertError,
    UnknownResourceError,
    Ward,
)
from vigie.store.service import (
    CDS_CARD_DAYS,
    AuditDetail,
    AuditWriter,
    DecisionRow,
    GenerationReader,
    IssuedCard,
    RulePackVersion,
    TokenRow,
)

H = timedelta(hours=1)
K_ALERT = alert_id("bio.hyperkalaemia", "p1", ["ORD1"])
DEFAULT_PACK = Path(__file__).parents[1] / "rules/packs/default.rules"


@pytest.fixture
def service(store_url: str) -> Iterator[ServiceStore]:
    with FactStore(store_url) as facts:
        yield ServiceStore(facts)


def _raise(service: ServiceStore, facts: Sequence[AnyFact] = (), at: datetime = NOW) -> None:
    alerts = evaluate(default_ir(), FactSet(list(facts or hyperkalaemia_facts())), at)
    service.alerts.reconcile(alerts, at)


def _entry(action: str, patient: str | None = None) -> AuditEntry:
    return AuditEntry("pharm.a", ("pharmacist",), action, f"alert {K_ALERT}", patient)


# Users and tokens -------------------------------------------------------------------------------


def test_a_token_names_its_user_and_only_its_hash_is_kept(service: ServiceStore) -> None:
    user, token = service.add_user("pharm.a", ["pharmacist", "rule_author", "pharmacist"])
    assert user.roles == ("pharmacist", "rule_author")
    assert token.startswith("vigie_") and len(token) > 40
    assert service.authenticate(token) == user
    assert service.authenticate(token + "x") is None
    with service.facts.session() as session:
        (stored,) = session.scalars(select(TokenRow.token_sha256)).all()
    assert stored == hashlib.sha256(token.encode()).hexdigest() != token
    second = service.new_token("pharm.a")
    assert second != token and service.authenticate(second) == user
    assert [u.name for u in service.users()] == ["pharm.a"]


def test_users_are_refused_with_a_reason(service: ServiceStore) -> None:
    service.add_user("pharm.a", ["pharmacist"])
    with pytest.raises(ServiceError, match="exists already"):
        service.add_user("pharm.a", ["admin"])
    with pytest.raises(ServiceError, match="unknown role 'root'"):
        service.add_user("b", ["root"])
    with pytest.raises(ServiceError, match="at least one role"):
        service.add_user("b", [])
    with pytest.raises(ServiceError, match="user name of 1 to 128"):
        service.add_user("  ", ["admin"])
    with pytest.raises(UnknownResourceError, match="no user 'nobody'"):
        service.new_token("nobody")


def test_tokens_are_replaced_revoked_and_users_disabled_at_once_in_the_process(
    service: ServiceStore,
) -> None:
    user, first = service.add_user("pharm.a", ["pharmacist"])
    service.add_user("pharm.b", ["pharmacist"])
    second = service.new_token("pharm.a")
    assert service.authenticate(first) == user == service.remembered_user(first)
    third = service.new_token("pharm.a", _entry("user:token"), replace=True)
    # Revoked, and forgotten by this process's token cache at once (not TOKEN_CACHE_SECONDS later)
    assert service.remembered_user(first) is None and service.authenticate(first) is None
    assert service.authenticate(second) is None and service.authenticate(third) == user
    assert service.revoke_tokens("pharm.a", _entry("user:revoke")) == 1
    assert service.remembered_user(third) is None and service.authenticate(third) is None
    assert service.revoke_tokens("pharm.a") == 0
    assert [u.name for u in service.users()] == ["pharm.a", "pharm.b"]  # the user stays
    fourth = service.new_token("pharm.a")
    assert service.authenticate(fourth) == user
    assert service.set_active("pharm.a", False, _entry("user:disable"))
    assert not service.set_active("pharm.a", False)
    assert service.remembered_user(fourth) is None and service.authenticate(fourth) is None
    assert [u.active for u in service.users()] == [False, True]
    assert service.set_active("pharm.a", True, _entry("user:enable"))
    assert service.authenticate(fourth) is not None  # not revoked: works again
    actions = [entry.action for entry in service.audit_log()]
    assert actions == ["user:enable", "user:disable", "user:revoke", "user:token"]
    for change in (
        lambda: service.revoke_tokens("nobody"),
        lambda: service.set_active("nobody", False),
        lambda: service.new_token("nobody", replace=True),
    ):
        with pytest.raises(UnknownResourceError, match="no user 'nobody'"):
            change()


# Wards ------------------------------------------------------------------------------------------


def test_wards_are_created_then_changed(service: ServiceStore) -> None:
    service.put_ward(Ward("H1", "CARDIO", "Cardiologie", 30), "admin.a")
    service.put_ward(Ward("H1", "NEPHRO", "Néphrologie", 20), "admin.a")
    service.put_ward(Ward("H1", "CARDIO", "Cardiologie 1", 32), "admin.a")
    assert service.wards() == [
        Ward("H1", "CARDIO", "Cardiologie 1", 32),
        Ward("H1", "NEPHRO", "Néphrologie", 20),
    ]
    assert service.wards("H2") == []
    with pytest.raises(ServiceError, match="bed count"):
        service.put_ward(Ward("H1", "X", "X", -1), "admin.a")


# Decisions --------------------------------------------------------------------------------------


def test_an_intervention_keeps_its_codes_event_and_audit_in_one_transaction(
    service: ServiceStore,
) -> None:
    _raise(service)
    ip = Intervention(
        "ramipril arrêté, K+ à recontrôler", code="2", problem_code="4", prescriber_contacted=True
    )
    stored, record = service.decide(
        K_ALERT, ip, actor="pharm.a", at=NOW + H, audit=_entry("decision", "p1")
    )
    assert stored.status == "intervention"
    # the pharmacist's problem code (4) differs from the rule's (7): both are kept
    assert stored.payload["problem"]["code"] == "7"
    assert (record.problem_code, record.intervention_code, record.kind) == (
        "4",
        "2",
        "intervention",
    )
    assert (record.prescriber_contacted, record.rule_id, record.patient_id) == (
        True,
        "bio.hyperkalaemia",
        "p1",
    )
    assert record.decided_at == NOW + H and record.outcome is None
    event = service.alerts.events(K_ALERT)[-1]
    assert event.to_status == "intervention"
    assert event.detail == {
        "intervention_type": "2",
        "text": "ramipril arrêté, K+ à recontrôler",
        "problem_code": "4",
        "prescriber_contacted": True,
    }
    with service.facts.session() as session:
        assert session.scalar(select(DecisionRow.event_id)) == event.seq
    (logged,) = service.audit_log()
    assert (logged.action, logged.patient_id, logged.actor) == ("decision", "p1", "pharm.a")

    answered = service.record_outcome(
        K_ALERT, "accepted_modified", actor="pharm.b", comment="dose halved", at=NOW + 3 * H
    )
    assert (answered.outcome, answered.outcome_by, answered.outcome_at) == (
        "accepted_modified",
        "pharm.b",
        NOW + 3 * H,
    )
    assert service.decisions(K_ALERT) == [answered]
    with pytest.raises(AlertTransitionError, match="has one"):
        service.record_outcome(K_ALERT, "accepted", actor="pharm.b")


def test_a_refused_decision_leaves_no_trace(service: ServiceStore) -> None:
    _raise(service)
    service.decide(K_ALERT, Dismissal("not_relevant"), actor="pharm.a", audit=_entry("d"))
    with pytest.raises(AlertTransitionError, match="it is dismissed"):
        service.decide(K_ALERT, Intervention("x", code="2"), actor="b", audit=_entry("again"))
    with pytest.raises(UnknownAlertError):
        service.decide("nope", Dismissal("not_relevant"), actor="b", audit=_entry("nope"))
    with pytest.raises(AlertTransitionError, match="no intervention recorded"):
        service.record_outcome(K_ALERT, "accepted", actor="b")
    with pytest.raises(ServiceError, match="unknown outcome 'maybe'"):
        service.record_outcome(K_ALERT, "maybe", actor="b")
    (dismissal,) = service.decisions()
    assert (dismissal.kind, dismissal.dismiss_reason, dismissal.comment) == (
        "dismissal",
        "not_relevant",
        None,
    )
    assert [e.action for e in service.audit_log()] == ["d"]
    assert [e.to_status for e in service.alerts.events(K_ALERT)] == ["open", "dismissed"]


def test_interventions_awaiting_an_outcome_are_each_alert_s_latest(
    service: ServiceStore,
) -> None:
    """An alert intervened on, reopened by new evidence and intervened on again waits for the
    answer to its second intervention only (the one an outcome is recorded on); an answered
    one waits no more; a dismissal never waits."""
    facts = hyperkalaemia_facts()
    _raise(service, facts)
    service.decide(K_ALERT, Intervention("stop", code="2"), actor="a", at=NOW + H)
    assert [d.alert_id for d in service.awaiting_outcome()] == [K_ALERT]
    later = NOW + 24 * H
    facts.append(lab("potassium", 6.3, later - H, fid="LAB2"))
    _raise(service, facts, later)  # new evidence: open again
    assert service.alerts.get(K_ALERT).status == "open"
    _, second = service.decide(K_ALERT, Intervention("again", code="7"), actor="b", at=later)
    (waiting,) = service.awaiting_outcome()
    assert (waiting.id, waiting.intervention_code) == (second.id, "7")
    assert service.awaiting_outcome(ward="NOWHERE") == []
    service.record_outcome(K_ALERT, "accepted", actor="b", at=later + H)
    assert service.awaiting_outcome() == []


def test_decisions_outcomes_and_audit_are_append_only(service: ServiceStore) -> None:
    _raise(service)
    service.decide(K_ALERT, Intervention("stop", code="2"), actor="a", audit=_entry("decision"))
    service.record_outcome(K_ALERT, "accepted", actor="a")
    engine = service.facts.engine
    for table in ("decision", "decision_outcome", "audit_log"):
        for statement in (f"UPDATE {table} SET id = id + 100", f"DELETE FROM {table}"):
            refused = pytest.raises(DBAPIError, match=f"{table} is append-only")
            with refused, engine.begin() as connection:
                connection.execute(text(statement))
    assert len(service.decisions()) == 1 and service.audit_size() == 1
    assert not any(name.startswith(("delete", "update", "remove")) for name in dir(service))


# Versions ---------------------------------------------------------------------------------------


def test_site_configuration_and_rule_pack_versions(service: ServiceStore) -> None:
    assert service.site_config() is None
    first = service.save_site_config("[hospital]\nid = 'H1'\n", "author.a", "first")
    second = service.save_site_config("[hospital]\nid = 'H1'\nlevel = 2\n", "author.b")
    assert service.site_config() == second != first
    assert service.site_config(first.version) == first
    assert [v.author for v in service.site_config_versions()] == ["author.a", "author.b"]
    pack = RulePackVersion("p", "1.0", "abc", "rules/p.rules", 'pack "p" version "1.0"\n')
    service.record_rule_packs([pack])
    service.record_rule_packs([pack])  # the same version again: kept once
    assert service.rule_pack("p", "1.0") == pack
    assert service.rule_pack("p", "2.0") is None


# The worklist from the store's facts ------------------------------------------------------------


def _store_facts(facts: FactStore, rows: Sequence[AnyFact]) -> None:
    with facts._write_session() as session:
        facts.save_facts(session, rows, None)
        session.commit()


def test_refresh_evaluates_the_stored_facts_into_the_worklist(service: ServiceStore) -> None:
    _store_facts(service.facts, hyperkalaemia_facts())
    done = refresh_worklist(service.facts, NOW, [DEFAULT_PACK])
    assert done.opened == [K_ALERT]
    (alert,) = service.alerts.worklist()
    assert (alert.id, alert.ward) == (K_ALERT, "CARDIO") and alert.priority is not None
    recorded = service.rule_pack("vigie-default", alert.payload["rule"]["pack_version"])
    assert recorded is not None and recorded.text == DEFAULT_PACK.read_text(encoding="utf-8")
    assert refresh_worklist(service.facts, NOW + H, [DEFAULT_PACK]).kept == [K_ALERT]
    # ramipril stopped: the next refresh no longer raises it
    stopped = drug("ORD1", "C09AA05", label="ramipril 5 mg", end=NOW + H, status="stopped")
    _store_facts(service.facts, [stopped])
    assert refresh_worklist(service.facts, NOW + 2 * H, [DEFAULT_PACK]).resolved == [K_ALERT]
    assert service.alerts.worklist() == []


def _issued(uuid: str, at: datetime, label: str = "Remove the draft order") -> IssuedCard:
    return IssuedCard(
        uuid=uuid,
        service_id="vigie-order-sign",
        hook_instance="hook-1",
        alert_id="a" * 64,
        rule_id="renal.metformin_egfr",
        patient_id="p1",
        suggestions={"s-1": label},
        override_codes=("benefit-outweighs-risk", "data-error"),
        alert={"id": "a" * 64, "evidence": [{"value": 25.0}]},
        issued_at=at,
    )


def test_cds_cards_are_kept_replaced_and_found_by_uuid_and_service(
    service: ServiceStore,
) -> None:
    first = _issued("00000000-0000-5000-8000-000000000001", NOW)
    service.keep_cds_cards([first, _issued("00000000-0000-5000-8000-000000000002", NOW)])
    assert service.cds_card(first.uuid, "vigie-order-sign") == first
    assert service.cds_card(first.uuid, "vigie-medication-verify") is None  # another service
    assert service.cds_card("00000000-0000-5000-8000-00000000000f", "vigie-order-sign") is None
    # the same card answered again (same alert, same hook instance): the later one is kept
    again = _issued(first.uuid, NOW + timedelta(minutes=1), label="Remove it")
    service.keep_cds_cards([again])
    assert service.cds_card(first.uuid, "vigie-order-sign") == again


def test_cds_cards_older_than_the_kept_days_are_deleted(service: ServiceStore) -> None:
    old = _issued("00000000-0000-5000-8000-000000000001", NOW)
    recent = _issued("00000000-0000-5000-8000-000000000002", NOW + timedelta(days=2))
    service.keep_cds_cards([old, recent])
    later = NOW + timedelta(days=CDS_CARD_DAYS, hours=1)  # old is over the limit, recent not
    # this process deleted old cards a moment ago: it does not look again for ten minutes
    service.keep_cds_cards([_issued("00000000-0000-5000-8000-000000000003", later)])
    assert service.cds_card(old.uuid, "vigie-order-sign") == old
    # another process (or this one, later) deletes it
    ServiceStore(service.facts).keep_cds_cards(
        [_issued("00000000-0000-5000-8000-000000000004", later)]
    )
    assert service.cds_card(old.uuid, "vigie-order-sign") is None
    assert service.cds_card(recent.uuid, "vigie-order-sign") == recent


def test_a_waiter_that_went_away_neither_stops_the_audit_writer_nor_loses_its_entry() -> None:
    """A request cancelled while its audit entry waits (its client went away: the asyncio task
    cancels the future it awaited) must not kill the writer's thread: the entries of the same
    batch are still answered, later ones too, and the cancelled one's entry is written."""
    written: list[str] = []
    release = threading.Event()

    def write(entries: list[AuditEntry]) -> None:
        if entries[0].action == "first":
            release.wait(10)  # hold the first commit: the next entries wait together
        written.extend(entry.action for entry in entries)

    writer = AuditWriter(write, idle=0.5)
    first = writer.submit(AuditEntry("pharm.a", ("pharmacist",), "first", "worklist"))
    time.sleep(0.05)  # the thread took the first entry alone
    gone, kept = (
        writer.submit(AuditEntry("pharm.a", ("pharmacist",), action, "worklist"))
        for action in ("gone", "kept")
    )
    assert gone.cancel()
    release.set()
    assert first.result(10) is None and kept.result(10) is None
    later = writer.submit(AuditEntry("pharm.a", ("pharmacist",), "later", "worklist"))
    assert later.result(10) is None
    assert written == ["first", "gone", "kept", "later"]


def test_flush_writes_the_entries_of_a_loop_turn_that_ended_before_handing_them_over() -> None:
    """``submit_async`` hands a turn's entries to the writer at the loop's next turn; a loop
    stopped in the turn that submitted (a server shutting down, a cancelled request) never
    runs it. ``flush`` queues them and waits for their commit."""
    written: list[str] = []
    writer = AuditWriter(lambda entries: written.extend(e.action for e in entries), idle=0.5)

    loop = asyncio.new_event_loop()

    def submit_and_stop() -> None:
        writer.submit_async(AuditEntry("pharm.a", ("pharmacist",), "left", "worklist"))
        loop.stop()  # in the turn that submitted

    loop.call_soon(submit_and_stop)
    try:
        loop.run_forever()
    finally:
        loop.close()
    time.sleep(0.1)
    assert written == []  # nothing handed over: the entry would be lost with the process
    assert writer.flush(10) is True
    assert written == ["left"]


def test_flush_waits_for_the_batch_being_written_and_says_when_it_could_not() -> None:
    written: list[str] = []
    release = threading.Event()

    def write(entries: list[AuditEntry]) -> None:
        release.wait(10)
        written.extend(entry.action for entry in entries)

    writer = AuditWriter(write, idle=0.5)
    for action in ("a", "b"):
        writer.submit(AuditEntry("pharm.a", ("pharmacist",), action, "worklist"))
    time.sleep(0.05)  # the thread holds the first batch
    assert writer.flush(0.2) is False  # held: not written within the time given
    release.set()
    assert writer.flush(10) is True
    assert sorted(written) == ["a", "b"]
    assert writer.flush(0.01) is True  # nothing left: at once


def test_the_service_flushes_its_audit_entries_into_the_database(service: ServiceStore) -> None:
    """Entries nobody waited for are in the log once ``flush_audit`` returns (the app calls
    it at shutdown, before closing its store)."""
    before = service.audit_size()
    for n in range(5):
        service.submit_audit(_entry(f"read-{n}"))
    assert service.flush_audit(10) is True
    assert service.audit_size() == before + 5


def test_audit_entries_of_one_batch_are_written_as_given(service: ServiceStore) -> None:
    """The writer's own connection (no ORM) writes what the ORM reads back: the time, the
    roles, a detail given as a mapping, as an ``AuditDetail`` (its JSON made once for all the
    entries naming it) or none."""
    shared = AuditDetail({"alerts": ["a1", "a2"], "patients": ["p1"], "filters": {}})
    at = datetime(2026, 12, 6, 10, 30, 15, 123456)
    entries = [
        AuditEntry("pharm.a", ("pharmacist", "admin"), "read", "worklist", "p1", shared, at),
        AuditEntry("pharm.b", ("pharmacist",), "read", "worklist", None, shared),
        AuditEntry("pharm.c", ("pharmacist",), "denied", "GET /x", None, {"required": ["a"]}),
        AuditEntry("pharm.d", ("pharmacist",), "read", "x" * 600),
    ]
    for done in [service.submit_audit(entry) for entry in entries]:
        assert done.result(10) is None
    logged = {entry.actor: entry for entry in service.audit_log(limit=10)}
    first = logged["pharm.a"]
    assert (first.at, first.roles, first.patient_id) == (at, ("pharmacist", "admin"), "p1")
    assert first.detail == dict(shared) == logged["pharm.b"].detail
    assert logged["pharm.c"].detail == {"required": ["a"]}
    assert logged["pharm.d"].detail is None and logged["pharm.d"].resource == "x" * 512
    assert logged["pharm.b"].at is not None and logged["pharm.b"].at >= at


def test_a_batch_of_audit_entries_is_appended_in_its_order(service: ServiceStore) -> None:
    """Batches of any size append their entries in the order given (the log is read in its
    ids' order); each size is the same statement on PostgreSQL (no text per size)."""
    for size in (1, 2, 7, 300):
        actions = [f"read-{size}-{n:03d}" for n in range(size)]
        at = datetime(2026, 12, 7, 9, 0)
        entries = [
            AuditEntry("pharm.a", ("pharmacist",), action, "worklist", None, {"n": n}, at)
            for n, action in enumerate(actions)
        ]
        service._write_audit(entries)
        logged = service.audit_log(limit=size)[::-1]  # the latest first: turned back
        assert [entry.action for entry in logged] == actions
        assert [entry.detail for entry in logged] == [{"n": n} for n in range(size)]


def test_an_audit_entry_the_database_refuses_fails_alone_and_the_writer_goes_on(
    service: ServiceStore,
) -> None:
    bad = AuditEntry(None, ("pharmacist",), "read", "worklist")  # type: ignore[arg-type]
    good = AuditEntry("pharm.a", ("pharmacist",), "read", "worklist")
    waits = [service.submit_audit(entry) for entry in (good, bad, good)]
    assert waits[0].result(10) is None and waits[2].result(10) is None
    with pytest.raises(ServiceError, match="cannot write the audit log in") as refused:
        waits[1].result(10)
    assert "pharm" not in str(refused.value)
    service.audit(good)  # on a new connection
    assert service.audit_size() == 3


def test_the_async_waiters_of_one_commit_are_settled_by_one_callback_on_their_loop() -> None:
    """Each commit wakes an event loop once for all its waiters there (the loop was woken once
    per entry: a write to its self-pipe and a callback each); a waiter cancelled meanwhile is
    skipped and its entry written all the same."""
    written: list[str] = []
    release = threading.Event()

    def write(entries: list[AuditEntry]) -> None:
        if entries[0].action == "first":
            release.wait(10)  # hold the first commit: the next entries wait together
        written.extend(entry.action for entry in entries)

    writer = AuditWriter(write, idle=0.5)

    async def submit_all() -> int:
        loop = asyncio.get_running_loop()
        wakes: list[object] = []
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counted(callback: Any, *args: Any, **options: Any) -> asyncio.Handle:
            wakes.append(callback)
            return call_soon_threadsafe(callback, *args, **options)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        first = writer.submit_async(AuditEntry("pharm.a", ("pharmacist",), "first", "worklist"))
        await asyncio.sleep(0.05)  # the thread took the first entry alone
        together = [
            writer.submit_async(AuditEntry("pharm.a", ("pharmacist",), action, "worklist"))
            for action in ("a", "gone", "b", "c")
        ]
        together[1].cancel()
        release.set()
        assert await first is None
        assert await asyncio.gather(together[0], *together[2:]) == [None, None, None]
        return len(wakes)

    assert asyncio.run(submit_all()) == 2  # one per commit
    assert written == ["first", "a", "gone", "b", "c"]


def test_a_generation_reader_nobody_closed_closes_its_connection(store_url: str) -> None:
    """An app never shut down leaves its worklist's generation reader to the collector: the
    connection it holds outside the pool is closed with it (the driver warned otherwise)."""
    with FactStore(store_url) as store:
        reader = GenerationReader(AlertStore(store))
        reader.read()
        connection = reader._connection
        del reader
        gc.collect()
        with pytest.raises(store.engine.dialect.loaded_dbapi.Error):
            connection.cursor().execute("SELECT 1")
