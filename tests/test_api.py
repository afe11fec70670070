"""The service's HTTP API (``vigie.api.app``): every endpoint × role (401 / 403 / allowed), the
worklist and alert detail, decisions end to end, the audit of reads and writes, errors as JSON
(422 with the field and why, 404, 409, 413, 500 without a trace), no patient data in the
application log; ``vigie users add`` and ``vigie serve``. On SQLite and PostgreSQL: one store per
module and backend, holding the real alerts of two patients (default pack, facts of
tests/test_evaluate.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from tests.conftest import postgres_schema
from tests.test_evaluate import NOW, default_ir, drug, hyperkalaemia_facts, lab, patient, src
from vigie.api.app import _AccessLog, create_app
from vigie.api.cli import main
from vigie.engine import FactSet, evaluate
from vigie.engine.alerts import alert_id
from vigie.facts import AnyFact, Stay
from vigie.store import FactStore, ServiceStore, StoreError
from vigie.store.service import TOKEN_CACHE_SECONDS, AuditEntry

with warnings.catch_warnings():  # starlette asks for httpx2, which this environment lacks
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ROLES = ("pharmacist", "rule_author", "admin", "feed")
P1_ALERT = alert_id("bio.hyperkalaemia", "p1", ["ORD1"])  # for the intervention
P2_ALERT = alert_id("bio.hyperkalaemia", "p2", ["ORD2"])  # for the dismissal


def _second_patient() -> list[AnyFact]:
    """p2: K+ 6.4 under ramipril, in nephrology."""
    return [
        patient("p2"),
        drug("ORD2", "C09AA05", pid="p2", label="ramipril 10 mg"),
        lab("potassium", 6.4, datetime(2024, 3, 4, 9, 0), pid="p2", fid="LAB2"),
        Stay(
            fact_id="S2",
            patient_id="p2",
            source=src("PV1"),
            stay_id="S2",
            ward="NEPHRO",
            admit_time=datetime(2024, 3, 1),
            status="in-progress",
        ),
    ]


@dataclass
class Service:
    client: TestClient
    service: ServiceStore
    tokens: dict[str, str]  # role -> token of a user with that role only

    def as_(self, role: str | None) -> dict[str, str]:
        if role is None:
            return {}
        token = self.tokens.get(role, "vigie_not-a-token")
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('api') / 'vigie.db'}"
        return
    with postgres_schema("vigie_api") as url:
        yield url


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "database_url" in metafunc.fixturenames:
        metafunc.parametrize(
            "database_url",
            ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
            indirect=True,
            scope="module",
        )


@pytest.fixture(scope="module")
def api(database_url: str) -> Iterator[Service]:
    app = create_app(database_url)
    service: ServiceStore = app.state.service
    facts = [*hyperkalaemia_facts(), *_second_patient()]
    service.alerts.reconcile(evaluate(default_ir(), FactSet(facts), NOW), NOW)
    with service.facts._write_session() as session:
        service.facts.save_facts(session, facts, None)
        session.commit()
    tokens = {role: service.add_user(f"{role}.a", [role])[1] for role in ROLES}
    with TestClient(app) as client:
        yield Service(client, service, tokens)


# Every endpoint × role ---------------------------------------------------------------------------

WARD = {"hospital": "H1", "code": "CARDIO", "label": "Cardiologie", "beds": 30}
DISMISSAL = {"kind": "dismissal", "reason": "not_relevant"}
# (method, path, body, the role allowed, its status). The decision's allowed case is the
# end-to-end test below (it changes the alert).
ENDPOINTS = [
    ("GET", "/worklist", None, "pharmacist", 200),
    ("GET", f"/alerts/{P1_ALERT}", None, "pharmacist", 200),
    ("POST", f"/alerts/{P1_ALERT}/decision", DISMISSAL, "pharmacist", None),
    ("GET", "/wards", None, "admin", 200),
    ("POST", "/wards", WARD, "admin", 201),
    ("GET", "/audit", None, "admin", 200),
    ("GET", "/interventions/awaiting-outcome", None, "pharmacist", 200),
]


@pytest.mark.parametrize(("method", "path", "body", "allowed", "ok"), ENDPOINTS)
def test_every_endpoint_checks_the_token_and_the_role(
    api: Service, method: str, path: str, body: Any, allowed: str, ok: int | None
) -> None:
    for role in (None, "forged", *ROLES):
        if role == allowed and ok is None:
            continue
        answer = api.client.request(method, path, json=body, headers=api.as_(role))
        expected = 401 if role in (None, "forged") else ok if role == allowed else 403
        assert answer.status_code == expected, (role, answer.json())
        if expected == 401:
            challenge = answer.headers["WWW-Authenticate"]
            assert challenge.startswith("Bearer")
            assert ('error="invalid_token"' in challenge) == (role == "forged")
        if expected == 403:
            assert answer.json()["detail"] == f"this needs the role {allowed}; {role}.a has {role}"
    assert api.service.alerts.get(P1_ALERT).status == "open"  # nothing decided by a refusal


def test_a_user_with_several_roles_may_do_what_each_allows(api: Service) -> None:
    _, token = api.service.add_user("pharm.admin", ["pharmacist", "admin"])
    headers = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/worklist", headers=headers).status_code == 200
    assert api.client.get("/audit", headers=headers).status_code == 200


def test_refusals_are_audited(api: Service) -> None:
    api.client.get("/audit", headers=api.as_("feed"))
    entry = api.service.audit_log(actor="feed.a", action="denied", limit=1)[0]
    assert (entry.resource, entry.roles, entry.detail) == (
        "GET /audit",
        ("feed",),
        {"required": ["admin"]},
    )


# Worklist and alert ------------------------------------------------------------------------------


def test_the_worklist_by_priority_with_filters_and_pages(api: Service) -> None:
    pharmacist = api.as_("pharmacist")
    page = api.client.get("/worklist", headers=pharmacist).json()
    open_ids = [a.id for a in api.service.alerts.worklist()]
    assert [item["id"] for item in page["items"]] == open_ids and page["total"] == len(open_ids)
    assert {P1_ALERT, P2_ALERT} <= set(open_ids)
    first = page["items"][0]
    assert first["rule_id"] and first["title"] and first["problem"]["display"]
    for query, expected in [
        ({"ward": "NEPHRO"}, [P2_ALERT]),
        ({"patient": "p1"}, [P1_ALERT]),
        ({"rule": "bio.hyperkalaemia", "severity": ["major", "critical"]}, None),
        ({"severity": "minor", "patient": "p2"}, []),
    ]:
        got = api.client.get("/worklist", params=query, headers=pharmacist).json()
        ids = [item["id"] for item in got["items"]]
        if expected is None:
            assert {P1_ALERT, P2_ALERT} <= set(ids)
            assert {item["rule_id"] for item in got["items"]} == {"bio.hyperkalaemia"}
        else:
            assert ids == expected and got["total"] == len(expected)
    paged = [
        api.client.get("/worklist", params={"limit": 1, "offset": n}, headers=pharmacist).json()
        for n in range(len(open_ids))
    ]
    assert [p["items"][0]["id"] for p in paged] == open_ids
    assert {p["total"] for p in paged} == {len(open_ids)}
    entry = api.service.audit_log(actor="pharmacist.a", action="read", limit=1)[0]
    assert entry.resource == "worklist" and entry.detail is not None
    assert entry.detail["patients"] == [api.service.alerts.get(open_ids[-1]).patient_id]


def test_an_alert_with_its_evidence_rule_and_patient_context(api: Service) -> None:
    answer = api.client.get(f"/alerts/{P2_ALERT}", headers=api.as_("pharmacist"))
    assert answer.status_code == 200
    alert = answer.json()
    assert (alert["patient_id"], alert["ward"], alert["status"]) == ("p2", "NEPHRO", "open")
    assert any(e["fact_id"] == "LAB2" and e["value"] == 6.4 for e in alert["evidence"])
    rule = alert["rule"]
    assert (rule["id"], rule["pack"]) == ("bio.hyperkalaemia", "vigie-default")
    assert rule["line"] > 0 and rule["text"].startswith("rule bio.hyperkalaemia ")
    assert "potassium" in rule["text"]
    context = alert["patient"]
    assert context["as_of"] == NOW.isoformat() and context["stay"]["ward"] == "NEPHRO"
    assert [(lab["concept"], lab["value"]) for lab in context["labs"]] == [("potassium", 6.4)]
    assert [order["order_id"] for order in context["active_orders"]] == ["ORD2"]
    assert alert["decisions"] == []
    entry = api.service.audit_log(actor="pharmacist.a", patient_id="p2", limit=1)[0]
    assert (entry.action, entry.resource) == ("read", f"alert {P2_ALERT}")


# Decisions end to end ----------------------------------------------------------------------------


def test_an_intervention_then_its_outcome(api: Service) -> None:
    pharmacist = api.as_("pharmacist")
    read = api.client.get(f"/alerts/{P1_ALERT}", headers=pharmacist).json()
    body = {
        "kind": "intervention",
        "problem": "4",
        "intervention": "7",
        "comment": "ramipril 5 → 2,5 mg, K+ demain",
        "prescriber_contacted": True,
        "evidence_key": read["evidence_key"],
    }
    answer = api.client.post(f"/alerts/{P1_ALERT}/decision", json=body, headers=pharmacist)
    assert answer.status_code == 201, answer.json()
    decided = answer.json()
    assert decided["status"] == "intervention"
    assert decided["decision"]["problem"] == {"code": "4", "display": "Surdosage"}
    assert decided["decision"]["intervention"]["code"] == "7"
    assert decided["decision"]["prescriber_contacted"] is True
    worklist = api.client.get("/worklist", headers=pharmacist).json()
    assert P1_ALERT not in [item["id"] for item in worklist["items"]]
    awaiting = api.client.get("/interventions/awaiting-outcome", headers=pharmacist).json()
    assert [(d["alert_id"], d["outcome"]) for d in awaiting] == [(P1_ALERT, None)]
    again = api.client.post(f"/alerts/{P1_ALERT}/decision", json=body, headers=pharmacist)
    assert again.status_code == 409 and "it is intervention" in again.json()["detail"]

    outcome = {"kind": "outcome", "outcome": "accepted_modified", "comment": "2,5 mg"}
    answer = api.client.post(f"/alerts/{P1_ALERT}/decision", json=outcome, headers=pharmacist)
    assert answer.status_code == 201
    assert answer.json()["decision"]["outcome"] == "accepted_modified"
    shown = api.client.get(f"/alerts/{P1_ALERT}", headers=pharmacist).json()
    (decision,) = shown["decisions"]
    assert (decision["outcome"], decision["outcome_by"]) == ("accepted_modified", "pharmacist.a")
    assert api.client.get("/interventions/awaiting-outcome", headers=pharmacist).json() == []
    actions = [e.action for e in api.service.audit_log(patient_id="p1", limit=5)]
    assert actions[:3] == ["read", "decision:outcome", "decision:intervention"]


def test_a_dismissal_needs_a_reason_from_the_list(api: Service) -> None:
    pharmacist = api.as_("pharmacist")
    path = f"/alerts/{P2_ALERT}/decision"
    answer = api.client.post(
        path, json={"kind": "dismissal", "reason": "bored"}, headers=pharmacist
    )
    assert answer.status_code == 422 and "body.dismissal.reason" in answer.json()["detail"]
    other = {"kind": "dismissal", "reason": "other"}
    for body in (other, {**other, "comment": "  "}):  # a bad request, not a lifecycle refusal
        answer = api.client.post(path, json=body, headers=pharmacist)
        assert answer.status_code == 422
        assert answer.json()["detail"] == (
            "invalid request: body.dismissal.comment: "
            "a dismissal with reason 'other' needs a comment saying why"
        )
    stale = {**DISMISSAL, "evidence_key": "0" * 32}
    answer = api.client.post(path, json=stale, headers=pharmacist)
    assert answer.status_code == 409 and "evidence changed" in answer.json()["detail"]
    answer = api.client.post(path, json={**DISMISSAL, "comment": "suivi"}, headers=pharmacist)
    assert answer.status_code == 201
    assert answer.json()["decision"]["dismiss_reason"] == "not_relevant"
    assert api.service.alerts.get(P2_ALERT).status == "dismissed"
    no_ip = {"kind": "outcome", "outcome": "accepted"}
    answer = api.client.post(path, json=no_ip, headers=pharmacist)
    assert answer.status_code == 409 and "no intervention recorded" in answer.json()["detail"]


# Bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"problem": "11"},
            "body.intervention.problem: unknown SFPC problem code '11': expected one of 1, 2, "
            "3, 4, 5, 6.1, 6.2, 6.3, 6.4, 6.5, 7, 8, 9, 10",
        ),
        (
            {"intervention": "8"},
            "body.intervention.intervention: unknown SFPC intervention code '8': expected one "
            "of 1, 2, 3, 4, 5, 6, 7",
        ),
        ({"comment": ""}, "body.intervention.comment: String should have at least 1 character"),
        ({"comment": " \n"}, "body.intervention.comment: expected what was done, got only blanks"),
        ({"kind": "advice"}, "body: Input tag 'advice' found using 'kind' does not match"),
        ({"extra": 1}, "body.intervention.extra: Extra inputs are not permitted"),
    ],
)
def test_a_bad_decision_is_a_422_naming_the_field(
    api: Service, body: dict[str, Any], message: str
) -> None:
    good = {
        "kind": "intervention",
        "problem": "1",
        "intervention": "2",
        "comment": "stop",
        "prescriber_contacted": False,
    }
    answer = api.client.post(
        f"/alerts/{P1_ALERT}/decision", json={**good, **body}, headers=api.as_("pharmacist")
    )
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(f"invalid request: {message}")
    assert "Traceback" not in answer.text


def test_malformed_json_unknown_alert_and_bad_query(api: Service) -> None:
    pharmacist = api.as_("pharmacist")
    answer = api.client.post(
        f"/alerts/{P1_ALERT}/decision",
        content=b'{"kind": "intervention",',
        headers={**pharmacist, "Content-Type": "application/json"},
    )
    assert answer.status_code == 422
    assert answer.json()["detail"] == (
        "invalid request: body: JSON decode error at line 1, column 25: "
        "Expecting property name enclosed in double quotes"
    )
    answer = api.client.post(
        f"/alerts/{P1_ALERT}/decision",
        content=b'{"kind": "dismissal",\n "reason" "other"}',
        headers={**pharmacist, "Content-Type": "application/json"},
    )
    assert answer.json()["errors"] == [
        {
            "field": "body",
            "message": "JSON decode error at line 2, column 11: Expecting ':' delimiter",
        }
    ]
    answer = api.client.get("/alerts/nope", headers=pharmacist)
    assert (answer.status_code, answer.json()) == (404, {"detail": "no alert 'nope'"})
    answer = api.client.get("/alerts/bad id!", headers=pharmacist)
    assert answer.status_code == 422 and "path.alert_id" in answer.json()["detail"]
    answer = api.client.get("/worklist", params={"limit": 0}, headers=pharmacist)
    assert answer.status_code == 422 and "query.limit" in answer.json()["detail"]
    answer = api.client.post("/wards", json={**WARD, "beds": -1}, headers=api.as_("admin"))
    assert answer.status_code == 422 and "body.beds" in answer.json()["detail"]


def test_the_audit_entries_still_queued_are_written_before_the_app_shuts_down(
    store_url: str,
) -> None:
    """The writer's thread is a daemon: entries still queued when the process ends would be
    lost. The app's shutdown commits them before closing its store."""
    with FactStore(store_url) as store:
        app = create_app(store=store)
        service: ServiceStore = app.state.service
        writer = service._audit_writer
        assert writer is not None
        write = writer._write

        def slow(entries: list[AuditEntry]) -> None:
            time.sleep(0.3)
            write(entries)

        writer._write = slow
        before = service.audit_size()
        with TestClient(app):
            for n in range(3):
                service.submit_audit(AuditEntry("pharm.a", ("pharmacist",), f"r{n}", "worklist"))
        assert service.audit_size() == before + 3  # at once: the shutdown waited for them


def test_a_body_over_the_limit_is_a_413(api: Service) -> None:
    app = create_app(store=api.service.facts, max_body_bytes=1000)
    app.state.service = api.service
    with TestClient(app) as client:
        admin = api.as_("admin")
        big = {**WARD, "label": "x" * 2000}
        answer = client.post("/wards", json=big, headers=admin)
        assert answer.status_code == 413
        assert answer.json() == {"detail": "request body over the limit of 1,000 bytes"}

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
            yield b'{"hospital": "H1", "label": "'
            yield b"x" * 2000
            yield b'"}'

        answer = client.post(
            "/wards", content=chunks(), headers={**admin, "Content-Type": "application/json"}
        )
        assert answer.status_code == 413
        assert client.post("/wards", json=WARD, headers=admin).status_code == 201


def test_a_bug_is_a_500_without_its_message_nor_patient_data_in_the_log(
    api: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("patient p1 kaliemie 6.4 mmol/L")

    monkeypatch.setattr(api.service.alerts, "worklist", broken)
    with caplog.at_level(logging.DEBUG):
        answer = api.client.get(
            "/worklist", params={"patient": "p1"}, headers=api.as_("pharmacist")
        )
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal error (logged); the request was not completed"}
    # every record of the server side (the test's HTTP client logs the URL it calls)
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("httpx"))
    assert "RuntimeError" in logged and "/worklist" in logged
    # the error's text stays out (not "6.4" alone: a request's time, "16.4 ms", may hold it)
    assert "p1" not in logged and "kaliemie" not in logged and "mmol" not in logged


def test_a_client_gone_before_its_body_is_read_is_no_bug(caplog: pytest.LogCaptureFixture) -> None:
    """A sender that closes its connection mid-body (a cut network, a timeout) is logged as
    such (499, INFO), not as an unexpected error answered 500."""

    async def reads_the_body(scope: Scope, receive: Receive, send: Send) -> None:
        await Request(scope, receive).body()

    async def disconnected() -> Message:
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/ingest/hl7", "headers": []}
    with caplog.at_level(logging.DEBUG, logger="vigie"):
        asyncio.run(_AccessLog(reads_the_body)(scope, disconnected, send))
    assert sent == []
    records = [r for r in caplog.records if r.name.startswith("vigie")]
    assert [r.levelname for r in records] == ["INFO", "INFO"]
    assert records[0].getMessage() == "POST (no route): the client disconnected"
    assert records[1].getMessage().startswith("POST (no route) 499 ")


def test_the_application_log_names_routes_not_patients(
    api: Service, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="vigie"):
        api.client.get("/worklist", params={"patient": "p2"}, headers=api.as_("pharmacist"))
        api.client.get(f"/alerts/{P2_ALERT}", headers=api.as_("pharmacist"))
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("vigie")]
    assert any(line.startswith("GET /worklist 200") for line in lines)
    assert any(line.startswith("GET /alerts/{alert_id} 200") for line in lines)
    assert not any("p2" in line or P2_ALERT in line for line in lines)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite://"])
def test_an_in_memory_store_is_refused(url: str) -> None:
    # each server thread would open its own empty database
    with pytest.raises(StoreError, match="not in-memory SQLite"):
        create_app(url)


def test_the_openapi_schema_lists_every_route_with_its_security(api: Service) -> None:
    schema = api.client.get("/openapi.json").json()
    assert {
        "/worklist",
        "/alerts/{alert_id}",
        "/alerts/{alert_id}/decision",
        "/wards",
        "/audit",
        "/cds-services",
        "/cds-services/{service_id}",
        "/cds-services/{service_id}/feedback",
    } <= set(schema["paths"])
    assert schema["components"]["securitySchemes"]["token"]["scheme"] == "bearer"
    for route, path in schema["paths"].items():
        for operation in path.values():
            assert operation["security"] == [{"token": []}], route


# Command line ------------------------------------------------------------------------------------


def test_users_add_prints_a_token_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'vigie.db'}"
    assert (
        main(
            [
                "users",
                "add",
                "pharm.b",
                "--role",
                "pharmacist",
                "--role",
                "admin",
                "--database",
                url,
            ]
        )
        == 0
    )
    token = capsys.readouterr().out.strip().splitlines()[-1]
    with FactStore(url) as facts:
        user = ServiceStore(facts).authenticate(token)
        assert user is not None and user.roles == ("admin", "pharmacist")
    assert main(["users", "add", "pharm.b", "--role", "admin", "--database", url]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["users", "list", "--database", url]) == 0
    assert capsys.readouterr().out == "pharm.b\tadmin,pharmacist\n"


def test_users_token_revoke_disable_and_enable_each_audited(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    def users(*argv: str) -> tuple[int, str]:
        code = main(["users", *argv, "--database", store_url])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    code, out = users("add", "pharm.b", "--role", "pharmacist")
    old = out.strip().splitlines()[-1]
    assert code == 0
    with FactStore(store_url) as facts:
        service = ServiceStore(facts)
        code, out = users("token", "pharm.b")
        new = out.strip().splitlines()[-1]
        assert code == 0 and new.startswith("vigie_") and "still valid" in out
        assert service.authenticate(old) is not None and service.authenticate(new) is not None
        code, out = users("revoke", "pharm.b")
        assert code == 0 and "2 token(s) of pharm.b revoked" in out
        assert service.authenticate(old) is None and service.authenticate(new) is None
        assert users("list")[1] == "pharm.b\tpharmacist\n"  # the user stays
        code, out = users("token", "pharm.b", "--replace")
        first = out.strip().splitlines()[-1]
        assert service.authenticate(first) is not None  # remembered by this process
        code, out = users("token", "pharm.b", "--replace")
        second = out.strip().splitlines()[-1]
        assert service.remembered_user(first) is not None  # another process revoked it:
        service.clock = lambda: time.monotonic() + TOKEN_CACHE_SECONDS  # refused after 1 s
        assert service.remembered_user(first) is None and service.authenticate(first) is None
        assert service.authenticate(second) is not None
        service.token_cache_seconds = 0.0  # from now on each check reads the store
        assert users("disable", "pharm.b") == (0, f"User pharm.b disabled in {facts.safe_url}.\n")
        assert service.authenticate(second) is None
        assert users("list")[1] == "pharm.b\tpharmacist\tdisabled\n"
        code, out = users("token", "pharm.b")
        assert "pharm.b is disabled" in out and service.authenticate(out.split()[-1]) is None
        assert users("enable", "pharm.b")[0] == 0
        assert service.authenticate(second) is not None
        assert users("enable", "pharm.b")[1].endswith(
            "(it was already) in " + facts.safe_url + ".\n"
        )
        for command in ("token", "revoke", "disable", "enable"):
            code, out = users(command, "nobody")
            assert code == 2 and "no user 'nobody'" in out
        log = service.audit_log(limit=20)
    assert [(e.action, e.resource, dict(e.detail or {})) for e in reversed(log)] == [
        ("user:add", "user pharm.b", {"roles": ["pharmacist"]}),
        ("user:token", "user pharm.b", {"replace": False}),
        ("user:revoke", "user pharm.b", {}),
        ("user:token", "user pharm.b", {"replace": True}),
        ("user:token", "user pharm.b", {"replace": True}),
        ("user:disable", "user pharm.b", {"active": False}),
        ("user:token", "user pharm.b", {"replace": False}),
        ("user:enable", "user pharm.b", {"active": True}),
        ("user:enable", "user pharm.b", {"active": True}),
    ]
    assert all(e.actor.startswith("cli:") and e.roles == () for e in log)


def test_serve_refreshes_the_worklist_then_runs_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    url = f"sqlite:///{tmp_path / 'vigie.db'}"
    with FactStore(url) as facts, facts._write_session() as session:
        facts.save_facts(session, hyperkalaemia_facts(), None)
        session.commit()
    served: dict[str, Any] = {}

    def run(app: Any, **options: Any) -> None:
        served.update(options, app=app, frozen=gc.get_freeze_count())
        with TestClient(app) as client:  # the live worklist starts: the store's facts loaded
            served["frozen after start"] = gc.get_freeze_count()
            served["status"] = client.get("/worklist").status_code

    monkeypatch.setattr(uvicorn, "run", run)
    logger = logging.getLogger("vigie")
    handlers, level = list(logger.handlers), logger.level
    try:
        as_of = NOW.isoformat()
        assert main(["serve", "--database", url, "--as-of", as_of, "--port", "8123"]) == 0
    finally:  # serve's log handler writes to this test's captured stderr: not to keep
        logger.handlers, logger.level = handlers, level
        gc.unfreeze()  # serve froze this process's objects: the other tests' to collect
    # What the app holds for its life is out of the collector's generations before serving,
    # and what the live worklist loaded at start joins it (full collections walked it all).
    assert served["frozen"] > 0
    assert served["frozen after start"] > served["frozen"]
    printed = capsys.readouterr()
    assert "Worklist refreshed: 1 new" in printed.out
    assert "vigie.api: GET /worklist 401" in printed.err
    assert (served["port"], served["access_log"], served["status"]) == (8123, False, 401)
    with FactStore(url) as facts:
        assert [a.rule_id for a in ServiceStore(facts).alerts.worklist()] == ["bio.hyperkalaemia"]
