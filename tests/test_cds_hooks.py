"""CDS Hooks services (api/cds_hooks.py), mounted on a bare FastAPI app.

Patient data are real FHIR R4 resources: Coleman Ortiz's Synthea bundle (shared data), whose
active metformin meets an eGFR of 5.3 on 1980-07-16. What a card must say comes from the rule
catalogue (shared/rule-catalogue.md): ``renal.metformin_egfr`` — metformin active and the latest
eGFR within 7 days < 30, problem 1 → intervention 2 (stop), severity major — and from the CDS
Hooks specification (summary under 140 characters, indicator info | warning | critical, a
suggestion has a uuid and a label, ``selectionBehavior`` with suggestions, override reasons are
Codings). The severity → indicator mapping is the one docs/cds-hooks.md documents.
"""

from __future__ import annotations

import copy
import importlib
import json
import uuid
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigie.api.cds_hooks import (
    CardFeedback,
    StoredCards,
    alert_card,
    cds_router,
    default_packs,
)
from vigie.engine import Alert, AlertDrug, Evidence
from vigie.engine.alerts import CodedValue, RuleRef
from vigie.facts import Source
from vigie.store import FactStore, ServiceStore

with warnings.catch_warnings():  # starlette asks for httpx2, which this environment lacks
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

NOW = datetime(1980, 7, 16, 21, 0, tzinfo=UTC)
SERVER = "https://ehr.example.org/fhir"
TOKEN = "token-123"
INDICATORS = {"info", "warning", "critical"}
# docs/cds-hooks.md: critical → critical, major → warning, moderate and minor → info
DOCUMENTED_INDICATOR = {
    "critical": "critical",
    "major": "warning",
    "moderate": "info",
    "minor": "info",
}


# Coleman Ortiz's record as a FHIR server would serve it ------------------------------------------


@pytest.fixture(scope="module")
def coleman(shared_data: Path) -> list[dict[str, Any]]:
    """Coleman Ortiz's resources, references made literal (``Patient/<id>``) as a FHIR server
    returns them (the bundle is a transaction with ``urn:uuid:`` references)."""
    (path,) = (shared_data / "fhir" / "synthea-r4").glob("Coleman_Ortiz_*.json")
    resources = [e["resource"] for e in json.loads(path.read_text(encoding="utf-8"))["entry"]]
    patient_id = resources[0]["id"]
    served = []
    for resource in resources:
        resource = copy.deepcopy(resource)
        for key in ("subject", "patient"):
            if key in resource:
                resource[key] = {"reference": f"Patient/{patient_id}"}
        resource.pop("encounter", None)
        served.append(resource)
    return served


def _patient(resources: list[dict[str, Any]]) -> dict[str, Any]:
    (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
    return patient


def _searchset(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"fullUrl": f"{SERVER}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources
        ],
    }


def _of_type(resources: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == kind]


def _active_orders(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in _of_type(resources, "MedicationRequest") if r["status"] == "active"]


def _recent_observations(
    resources: list[dict[str, Any]], since: str, until: str
) -> list[dict[str, Any]]:
    return [
        r
        for r in _of_type(resources, "Observation")
        if since <= r.get("effectiveDateTime", "")[:10] <= until
    ]


def _prefetch(resources: list[dict[str, Any]], now: datetime = NOW) -> dict[str, Any]:
    """The three required keys, as the discovery document asks: observations of 90 days."""
    since = (now - timedelta(days=90)).date().isoformat()
    return {
        "patient": _patient(resources),
        "medications": _searchset(_active_orders(resources)),
        "observations": _searchset(_recent_observations(resources, since, now.date().isoformat())),
    }


def _metformin(resources: list[dict[str, Any]]) -> dict[str, Any]:
    (order,) = [
        r
        for r in _active_orders(resources)
        if "metformin" in r["medicationCodeableConcept"]["coding"][0]["display"].lower()
    ]
    return order


def _draft(order: dict[str, Any], draft_id: str) -> dict[str, Any]:
    draft = copy.deepcopy(order)
    draft.update(id=draft_id, status="draft", authoredOn="1980-07-16T20:55:00Z")
    return draft


def _orders_bundle(*orders: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": order} for order in orders],
    }


def _call(
    hook: str, patient_id: str, instance: str = "instance-1", **context: Any
) -> dict[str, Any]:
    return {
        "hook": hook,
        "hookInstance": instance,
        "context": {"userId": "Practitioner/p1", "patientId": patient_id, **context},
    }


class FhirServer:
    """A FHIR server answering the prefetch queries from Coleman's resources (searchsets paged
    by 10), for requests with the bearer token; it records every query."""

    def __init__(self, resources: list[dict[str, Any]]) -> None:
        self.resources = resources
        self.queries: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.queries.append(request)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"resourceType": "OperationOutcome", "issue": []})
        kind = request.url.path.removeprefix("/fhir/")
        params = request.url.params
        if kind.startswith("Patient/"):
            return httpx.Response(200, json=_patient(self.resources))
        found = _of_type(self.resources, kind)
        if kind == "MedicationRequest" and params.get("status") == "active":
            found = _active_orders(self.resources)
        if kind == "Observation":
            since = params["date"].removeprefix("ge")
            found = _recent_observations(self.resources, since, "9999")  # later ones too
        return httpx.Response(200, json=self._page(request, found, int(params.get("page", 1))))

    def _page(self, request: httpx.Request, found: list[dict[str, Any]], page: int) -> Any:
        bundle = _searchset(found[(page - 1) * 10 : page * 10])
        if page * 10 < len(found):
            bundle["link"] = [
                {"relation": "next", "url": str(request.url.copy_set_param("page", page + 1))}
            ]
        return bundle


@pytest.fixture(scope="module")
def server(coleman: list[dict[str, Any]]) -> FhirServer:
    return FhirServer(coleman)


@pytest.fixture(scope="module")
def feedback_log() -> list[CardFeedback]:
    return []


@pytest.fixture(scope="module")
def client(server: FhirServer, feedback_log: list[CardFeedback]) -> Iterator[TestClient]:
    app = FastAPI()
    http = httpx.Client(transport=httpx.MockTransport(server))
    app.include_router(
        cds_router(
            default_packs(),
            record_feedback=feedback_log.append,
            fhir_client=http,
            clock=lambda: NOW,
        )
    )
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _outcome(response: httpx.Response, status: int) -> str:
    """The OperationOutcome's message of an error response (checked to be one)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    (issue,) = body["issue"]
    assert issue["severity"] == "error"
    assert "Traceback" not in response.text
    message: str = issue["diagnostics"]
    return message


# Discovery ---------------------------------------------------------------------------------------


def test_discovery_lists_three_services_with_their_prefetch(client: TestClient) -> None:
    response = client.get("/cds-services")
    assert response.status_code == 200
    services = {s["hook"]: s for s in response.json()["services"]}
    assert set(services) == {"order-sign", "order-select", "medication-verify"}
    for service in services.values():
        assert service["id"] and service["title"] and service["description"]
        prefetch = service["prefetch"]
        assert prefetch["patient"] == "Patient/{{context.patientId}}"
        assert prefetch["medications"] == (
            "MedicationRequest?patient={{context.patientId}}&status=active"
        )
        assert prefetch["observations"].startswith(
            "Observation?patient={{context.patientId}}&date=ge{{today() - "
        )
    assert len({s["id"] for s in services.values()}) == 3


# order-sign --------------------------------------------------------------------------------------


def _order_sign(coleman: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    draft = _draft(_metformin(coleman), "draft-metformin")
    body = _call("order-sign", _patient(coleman)["id"], draftOrders=_orders_bundle(draft))
    body["prefetch"] = _prefetch(coleman)
    body.update(extra)
    return body


def _metformin_cards(cards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cards if c["source"]["topic"]["code"] == "renal.metformin_egfr"]


def test_order_sign_draft_metformin_with_low_egfr_gives_a_stop_card(
    client: TestClient, coleman: list[dict[str, Any]]
) -> None:
    response = client.post("/cds-services/vigie-order-sign", json=_order_sign(coleman))
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    # Coleman's own active metformin meets the same eGFR, but order-sign answers for the draft
    (card,) = _metformin_cards(cards)
    assert len(card["summary"]) < 140
    assert card["indicator"] == "warning"  # severity major
    assert card["source"]["label"].startswith("Vigie — ")
    uuid.UUID(card["uuid"])
    assert "5.3" in card["detail"] and "prefetch.observations" in card["detail"]
    assert "renal.metformin_egfr" in card["detail"]
    # intervention 2 (stop) on a draft: the obvious action is to remove the draft order
    (suggestion,) = card["suggestions"]
    assert card["selectionBehavior"] == "at-most-one"
    assert suggestion["label"] and uuid.UUID(suggestion["uuid"])
    (action,) = suggestion["actions"]
    assert action["type"] == "delete"
    assert action["resourceId"] == ["MedicationRequest/draft-metformin"]
    reasons = card["overrideReasons"]
    assert reasons and all(r["code"] and r["display"] and r["system"] for r in reasons)
    for other in cards:  # every card involves the draft
        assert "context.draftOrders" in other["detail"]


def test_the_same_hook_instance_gives_the_same_card_ids(
    client: TestClient, coleman: list[dict[str, Any]]
) -> None:
    first = client.post("/cds-services/vigie-order-sign", json=_order_sign(coleman)).json()
    again = client.post("/cds-services/vigie-order-sign", json=_order_sign(coleman)).json()
    other = _order_sign(coleman, hookInstance="instance-2")
    later = client.post("/cds-services/vigie-order-sign", json=other).json()
    (a,), (b,), (c,) = (_metformin_cards(x["cards"]) for x in (first, again, later))
    assert a["uuid"] == b["uuid"] != c["uuid"]


def test_order_sign_quiet_when_egfr_is_above_30(
    client: TestClient, coleman: list[dict[str, Any]]
) -> None:
    """1980-01-01: the latest eGFR (1979-12-29) is 41: no renal card for the draft."""
    body = _order_sign(coleman)
    body["prefetch"] = _prefetch(coleman, datetime(1980, 1, 1, tzinfo=UTC))
    observations = body["prefetch"]["observations"]["entry"]
    egfrs = [
        e["resource"]["valueQuantity"]["value"]
        for e in observations
        if e["resource"]["code"]["coding"][0]["code"] == "33914-3"
    ]
    assert egfrs and min(egfrs) > 30  # the data say so, not the service
    app = FastAPI()
    app.include_router(
        cds_router(default_packs(), clock=lambda: datetime(1980, 1, 1, tzinfo=UTC), warm_up=False)
    )
    response = TestClient(app).post("/cds-services/vigie-order-sign", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"cards": []}


# order-select and medication-verify -------------------------------------------------------------


def test_order_select_answers_for_the_selected_orders_only(
    client: TestClient, coleman: list[dict[str, Any]]
) -> None:
    metformin = _draft(_metformin(coleman), "draft-metformin")
    (metoprolol,) = [
        r
        for r in _active_orders(coleman)
        if "metoprolol" in r["medicationCodeableConcept"]["coding"][0]["display"]
    ]
    other = _draft(metoprolol, "draft-metoprolol")
    patient_id = _patient(coleman)["id"]

    def selecting(selected: str) -> httpx.Response:
        body = _call(
            "order-select",
            patient_id,
            draftOrders=_orders_bundle(metformin, other),
            selections=[f"MedicationRequest/{selected}"],
        )
        body["prefetch"] = _prefetch(coleman)
        return client.post("/cds-services/vigie-order-select", json=body)

    assert _metformin_cards(selecting("draft-metoprolol").json()["cards"]) == []
    (card,) = _metformin_cards(selecting("draft-metformin").json()["cards"])
    assert card["suggestions"][0]["actions"][0]["resourceId"] == [
        "MedicationRequest/draft-metformin"
    ]
    message = _outcome(selecting("not-a-draft"), 400)
    assert "context.selections" in message and "not-a-draft" in message


def test_medication_verify_reports_the_active_metformin_without_suggestion(
    client: TestClient, coleman: list[dict[str, Any]]
) -> None:
    body = _call("medication-verify", _patient(coleman)["id"])
    body["prefetch"] = _prefetch(coleman)
    response = client.post("/cds-services/vigie-medication-verify", json=body)
    assert response.status_code == 200, response.text
    (card,) = _metformin_cards(response.json()["cards"])
    assert card["indicator"] == "warning"
    # the line is signed already: removing it is not the service's to suggest
    assert "suggestions" not in card and "selectionBehavior" not in card
    assert "prefetch.medications" in card["detail"]  # the signed line, read from the prefetch


# Prefetch: 412 and the FHIR server fallback ---------------------------------------------------


def test_missing_prefetch_without_fhir_server_is_412_with_an_operation_outcome(
    client: TestClient, coleman: list[dict[str, Any]]
) -> None:
    body = _order_sign(coleman)
    del body["prefetch"]["observations"]
    body["prefetch"]["patient"] = None  # the client could not fetch it
    message = _outcome(client.post("/cds-services/vigie-order-sign", json=body), 412)
    assert "observations" in message and "patient" in message and "fhirServer" in message


def test_missing_prefetch_is_fetched_from_the_fhir_server(
    client: TestClient, coleman: list[dict[str, Any]], server: FhirServer
) -> None:
    body = _order_sign(coleman, fhirServer=SERVER)
    body["fhirAuthorization"] = {
        "accessToken": TOKEN,
        "tokenType": "Bearer",
        "expiresIn": 300,
        "scope": "patient/*.read",
        "subject": "vigie",
    }
    del body["prefetch"]
    server.queries.clear()
    response = client.post("/cds-services/vigie-order-sign", json=body)
    assert response.status_code == 200, response.text
    (card,) = _metformin_cards(response.json()["cards"])
    assert card["suggestions"][0]["actions"][0]["resourceId"] == [
        "MedicationRequest/draft-metformin"
    ]
    patient_id = _patient(coleman)["id"]
    asked = {(q.url.path, q.url.params.get("date")) for q in server.queries}
    assert (f"/fhir/Patient/{patient_id}", None) in asked
    assert ("/fhir/Observation", "ge1980-04-17") in asked  # today() - 90 days
    assert len([q for q in server.queries if q.url.path == "/fhir/Observation"]) > 1  # pages
    for query in server.queries:
        assert query.url.params.get("patient", patient_id) == patient_id


def test_fhir_server_refusing_the_token_is_a_502_naming_the_query(
    client: TestClient, coleman: list[dict[str, Any]]
) -> None:
    body = _order_sign(coleman, fhirServer=SERVER)
    body["fhirAuthorization"] = {"accessToken": "expired", "tokenType": "Bearer"}
    del body["prefetch"]["medications"]
    message = _outcome(client.post("/cds-services/vigie-order-sign", json=body), 502)
    assert "prefetch.medications" in message and "401" in message


# Feedback ----------------------------------------------------------------------------------------


def _signed_card(client: TestClient, coleman: list[dict[str, Any]], instance: str) -> Any:
    body = _order_sign(coleman, hookInstance=instance)
    (card,) = _metformin_cards(
        client.post("/cds-services/vigie-order-sign", json=body).json()["cards"]
    )
    return card


def test_feedback_accepted_and_overridden_reach_the_callback(
    client: TestClient, coleman: list[dict[str, Any]], feedback_log: list[CardFeedback]
) -> None:
    accepted = _signed_card(client, coleman, "feedback-1")
    overridden = _signed_card(client, coleman, "feedback-2")
    reason = next(r for r in overridden["overrideReasons"] if r["code"] == "patient-monitored")
    feedback_log.clear()
    response = client.post(
        "/cds-services/vigie-order-sign/feedback",
        json={
            "feedback": [
                {
                    "card": accepted["uuid"],
                    "outcome": "accepted",
                    "acceptedSuggestions": [{"id": accepted["suggestions"][0]["uuid"]}],
                    "outcomeTimestamp": "1980-07-16T21:02:00Z",
                },
                {
                    "card": overridden["uuid"],
                    "outcome": "overridden",
                    "overrideReason": {"reason": reason, "userComment": "néphrologue prévenu"},
                    "outcomeTimestamp": "1980-07-16T21:03:00+01:00",
                },
            ]
        },
    )
    assert response.status_code == 200, response.text
    first, second = feedback_log
    assert first.outcome == "accepted" and first.card_uuid == accepted["uuid"]
    assert first.alert.rule_id == "renal.metformin_egfr"
    assert first.accepted_suggestions == (accepted["suggestions"][0]["label"],)
    assert first.hook_instance == "feedback-1"
    assert first.outcome_time == datetime(1980, 7, 16, 21, 2)
    assert second.outcome == "overridden" and second.override_code == "patient-monitored"
    assert second.dismiss_reason == "accepted_risk"  # a reason of the alert store
    assert second.user_comment == "néphrologue prévenu"
    assert second.outcome_time == datetime(1980, 7, 16, 20, 3)


def test_feedback_on_an_unknown_card_is_404_and_records_nothing(
    client: TestClient, coleman: list[dict[str, Any]], feedback_log: list[CardFeedback]
) -> None:
    known = _signed_card(client, coleman, "feedback-3")
    feedback_log.clear()
    items = [
        {"card": known["uuid"], "outcome": "overridden", "outcomeTimestamp": "1980-07-16T21:02Z"},
        {"card": str(uuid.uuid4()), "outcome": "overridden", "outcomeTimestamp": "1980-07-16"},
    ]
    response = client.post("/cds-services/vigie-order-sign/feedback", json={"feedback": items})
    assert "no card" in _outcome(response, 404)
    assert feedback_log == []


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"outcome": "accepted", "outcomeTimestamp": "1980-07-16T21:02Z"}, "acceptedSuggestions"),
        ({"outcome": "ignored", "outcomeTimestamp": "1980-07-16T21:02Z"}, "outcome"),
        ({"outcome": "overridden"}, "outcomeTimestamp"),
        (
            {
                "outcome": "overridden",
                "overrideReason": {"reason": {"code": "too-busy"}},
                "outcomeTimestamp": "1980-07-16T21:02Z",
            },
            "too-busy",
        ),
    ],
)
def test_bad_feedback_is_400_saying_what_is_wrong(
    client: TestClient, coleman: list[dict[str, Any]], item: dict[str, Any], expected: str
) -> None:
    card = _signed_card(client, coleman, "feedback-4")
    body = {"feedback": [{"card": card["uuid"], **item}]}
    response = client.post("/cds-services/vigie-order-sign/feedback", json=body)
    assert expected in _outcome(response, 400)


# Bad input ---------------------------------------------------------------------------------------


def test_malformed_json_is_400(client: TestClient) -> None:
    response = client.post(
        "/cds-services/vigie-order-sign",
        content=b'{"hook": "order-sign", ',
        headers={"content-type": "application/json"},
    )
    assert "malformed JSON" in _outcome(response, 400)


def test_unknown_service_is_404_naming_the_known_ones(client: TestClient) -> None:
    message = _outcome(client.post("/cds-services/patient-greeter", json={}), 404)
    assert "patient-greeter" in message and "vigie-order-sign" in message
    assert "no CDS service" in _outcome(client.post("/cds-services/nope/feedback", json={}), 404)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda b: b["context"].update(draftOrders={"entry": []}), "context.draftOrders"),
        (
            lambda b: b["context"].update(
                draftOrders=_orders_bundle({"resourceType": "Medication-Request", "id": "x"})
            ),
            "Bundle.entry[0].resource: resourceType",
        ),
        (
            lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(status=12),
            "context.draftOrders: Bundle.entry[0].resource.status",
        ),
        (lambda b: b["context"].pop("patientId"), "context.patientId"),
        (lambda b: b["context"].update(patientId="../Patient"), "context.patientId"),
        (lambda b: b.update(hook="patient-view"), "answers hook 'order-sign'"),
        (lambda b: b.pop("hookInstance"), "hookInstance"),
        (lambda b: b["prefetch"].update(observations=[1, 2]), "prefetch.observations"),
        (
            lambda b: b["context"]["draftOrders"]["entry"][0]["resource"].update(
                subject={"reference": "Patient/someone-else"}
            ),
            "someone-else",
        ),
    ],
)
def test_bad_requests_are_400_with_a_clear_message(
    client: TestClient, coleman: list[dict[str, Any]], change: Any, expected: str
) -> None:
    body = _order_sign(coleman)
    change(body)
    response = client.post("/cds-services/vigie-order-sign", json=body)
    assert expected in _outcome(response, 400)


def test_an_internal_error_does_not_leak_the_exception(
    coleman: list[dict[str, Any]],
) -> None:
    def broken(record: Any, at: datetime) -> list[Alert]:
        raise RuntimeError("secret detail of patient 42")

    app = FastAPI()
    app.include_router(cds_router(evaluator=broken, clock=lambda: NOW, warm_up=False))
    response = TestClient(app, raise_server_exceptions=False).post(
        "/cds-services/vigie-order-sign", json=_order_sign(coleman)
    )
    message = _outcome(response, 500)
    assert "secret" not in response.text and "RuntimeError" not in response.text
    assert message


def test_a_store_that_cannot_keep_the_cards_does_not_stop_the_answer(
    coleman: list[dict[str, Any]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The prescriber still sees the card (safety first) and the failure is logged without the
    patient; feedback while the store cannot be read is a 503."""
    facts = FactStore(f"sqlite:///{tmp_path / 'vigie.db'}")
    app = FastAPI()
    cards = StoredCards(ServiceStore(facts))
    app.include_router(cds_router(clock=lambda: NOW, warm_up=False, cards=cards))
    client = TestClient(app)
    with facts.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE cds_card")
    card = _signed_card(client, coleman, "store-down")
    assert card["summary"]
    assert "cards answered but not kept" in caplog.text
    assert _patient(coleman)["id"] not in caplog.text
    item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "1980-07-16T21:00Z"}
    response = client.post("/cds-services/vigie-order-sign/feedback", json={"feedback": [item]})
    assert "the store cannot be read" in _outcome(response, 503)
    facts.close()


# Any card meets the specification's constraints -----------------------------------------------


_SOURCE = Source(feed="fhir", document="prefetch.observations", position="Bundle.entry[0]")
_texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=400)
_ids = st.from_regex(r"[A-Za-z0-9\-.]{1,20}", fullmatch=True)


@st.composite
def _alerts(draw: st.DrawFn) -> tuple[Alert, dict[str, str]]:
    order_ids = draw(st.lists(_ids, min_size=1, max_size=3, unique=True))
    drafts = {o: o for o in order_ids if draw(st.booleans())}
    severity = draw(st.sampled_from(["critical", "major", "moderate", "minor"]))
    rule_id = draw(st.from_regex(r"[a-z]{1,8}\.[a-z_]{1,20}", fullmatch=True))
    evidence = tuple(
        Evidence(name=draw(_texts), kind="lab", value=draw(st.floats(-1e6, 1e6)), source=_SOURCE)
        for _ in range(draw(st.integers(0, 3)))
    )
    alert = Alert(
        id=draw(_ids),
        patient_id="p1",
        rule_id=rule_id,
        rule=RuleRef(
            id=rule_id,
            version=1,
            pack=draw(_texts.filter(str.strip)),
            pack_version="1.0.0",
            file="rules/packs/default.rules",
            line=draw(st.integers(1, 5000)),
        ),
        title=draw(_texts),
        problem=CodedValue(code=draw(st.sampled_from(["1", "4", "6.3", "7"])), display="p"),
        intervention=CodedValue(code=draw(st.sampled_from("1234567")), display="i"),
        severity=severity,
        level=1,
        drugs=tuple(AlertDrug(order_id=o, atc=None, label=draw(_texts)) for o in order_ids),
        evidence=evidence,
        message=draw(_texts),
        reference=draw(st.none() | _texts),
        as_of=datetime(2024, 1, 2, 9),
    )
    return alert, drafts


@pytest.mark.property
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_alerts(), _ids)
def test_any_card_meets_the_spec_constraints(
    drawn: tuple[Alert, dict[str, str]], instance: str
) -> None:
    alert, drafts = drawn
    card = alert_card(alert, instance, drafts)
    json.dumps(card)  # plain JSON
    assert isinstance(card["summary"], str) and len(card["summary"]) < 140
    assert "\n" not in card["summary"]
    assert card["indicator"] in INDICATORS
    assert card["indicator"] == DOCUMENTED_INDICATOR[alert.severity]
    assert card["source"]["label"].strip()
    assert card["source"]["topic"]["code"] == alert.rule_id
    assert card["uuid"] == alert_card(alert, instance, drafts)["uuid"]
    uuid.UUID(card["uuid"])
    assert isinstance(card["detail"], str)
    for reason in card["overrideReasons"]:
        assert isinstance(reason["code"], str) and reason["code"]
        assert isinstance(reason["display"], str) and reason["display"]
    suggestions = card.get("suggestions", [])
    assert ("selectionBehavior" in card) == bool(suggestions)
    if suggestions:
        assert card["selectionBehavior"] in {"at-most-one", "any"}
        assert len({s["uuid"] for s in suggestions}) == len(suggestions)
    for suggestion in suggestions:
        uuid.UUID(suggestion["uuid"])
        assert suggestion["label"].strip() and len(suggestion["label"]) < 140
        for action in suggestion["actions"]:
            assert action["type"] in {"create", "update", "delete"}
            assert action["description"]
            for target in action["resourceId"]:
                kind, _, rid = target.partition("/")
                assert kind == "MedicationRequest" and rid in drafts
    # the catalogue's stop intervention on a draft line is the one obvious action
    stops = alert.intervention.code == "2" and any(d.order_id in drafts for d in alert.drugs)
    assert bool(suggestions) == stops


def test_prefetch_read_without_validation_gives_the_same_cards(
    client: TestClient, coleman: list[dict[str, Any]]
) -> None:
    app = FastAPI()
    app.include_router(
        cds_router(default_packs(), clock=lambda: NOW, warm_up=False, validate_prefetch=False)
    )
    body = _order_sign(coleman)
    fast = TestClient(app).post("/cds-services/vigie-order-sign", json=body)
    validated = client.post("/cds-services/vigie-order-sign", json=body)
    assert fast.status_code == validated.status_code == 200
    assert fast.json() == validated.json() and _metformin_cards(fast.json()["cards"])


def test_a_fhir_server_outside_the_allowed_ones_is_not_called(
    coleman: list[dict[str, Any]], server: FhirServer
) -> None:
    http = httpx.Client(transport=httpx.MockTransport(server))
    app = FastAPI()
    app.include_router(
        cds_router(
            default_packs(),
            fhir_client=http,
            fhir_servers=["https://ehr.example.org/fhir-other", "https://ehr.example"],
            clock=lambda: NOW,
            warm_up=False,
        )
    )
    body = _order_sign(coleman, fhirServer=SERVER)
    body["fhirAuthorization"] = {"accessToken": TOKEN, "tokenType": "Bearer"}
    del body["prefetch"]["observations"]
    server.queries.clear()
    response = TestClient(app).post("/cds-services/vigie-order-sign", json=body)
    assert SERVER in _outcome(response, 403)
    assert server.queries == []


# The prefetch's fast path: the facts of full validation, the same errors located ------------


def _served(path: Path) -> list[dict[str, Any]]:
    """A Synthea bundle's resources as a FHIR server serves them (literal patient references)."""
    resources = [e["resource"] for e in json.loads(path.read_text(encoding="utf-8"))["entry"]]
    patient_id = resources[0]["id"]
    for resource in resources:
        for key in ("subject", "patient"):
            if key in resource:
                resource[key] = {"reference": f"Patient/{patient_id}"}
        resource.pop("encounter", None)
    return resources


def _whole_record(resources: list[dict[str, Any]]) -> bytes:
    """A medication-verify call whose prefetch is the patient's whole record, every key."""
    body = _call("medication-verify", _patient(resources)["id"])
    body["prefetch"] = {
        "patient": _patient(resources),
        **{
            key: _searchset(_of_type(resources, kind))
            for key, kind in (
                ("medications", "MedicationRequest"),
                ("observations", "Observation"),
                ("allergies", "AllergyIntolerance"),
                ("conditions", "Condition"),
            )
        },
    }
    return json.dumps(body).encode()


def _bench_bodies(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """The order-sign calls benchmarks/bench_cds_hooks.py times (outpatient, inpatient)."""
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    bench = importlib.import_module("bench_cds_hooks")
    bodies: dict[str, bytes] = bench.cases()
    return bodies


@pytest.mark.slow
def test_the_prefetch_gives_the_facts_of_full_validation(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default prefetch reading (the connector's fast path with its element check) and
    full validation give the same facts, field for field, on every Synthea record of the
    shared data and on the benchmark's calls."""
    validated = cds_router(clock=lambda: NOW, warm_up=False, validate_prefetch=True).cds_hooks  # type: ignore[attr-defined]
    fast = cds_router(clock=lambda: NOW, warm_up=False).cds_hooks  # type: ignore[attr-defined]
    calls = {
        path.name: ("vigie-medication-verify", _whole_record(_served(path)))
        for path in sorted((shared_data / "fhir" / "synthea-r4").glob("*_*.json"))
    }
    for name, body in _bench_bodies(monkeypatch).items():
        calls[f"bench {name}"] = ("vigie-order-sign", body)
    for name, (service, body) in calls.items():
        expected = validated.facts(service, body)
        read = fast.facts(service, body)
        assert len(expected) > 10 and read == expected, name
        for fact, reference in zip(read, expected, strict=True):
            assert fact.model_dump_json() == reference.model_dump_json(), name
            assert fact.model_fields_set == reference.model_fields_set, name


_AT = "prefetch.observations: Bundle.entry[2].resource"


@pytest.mark.parametrize("validate", [False, True], ids=["element-check", "validated"])
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda b: b["prefetch"]["patient"].update(
                birthdate=b["prefetch"]["patient"].pop("birthDate")
            ),
            "prefetch.patient: Patient.birthdate: expected no such element in FHIR R4B",
        ),
        (
            lambda b: b["prefetch"]["observations"]["entry"][2]["resource"].pop("status"),
            f"{_AT}.status: expected ",
        ),
        (
            lambda b: b["prefetch"]["observations"]["entry"][2]["resource"].update(
                valueQuantity={"vlaue": 5.3, "unit": "mL/min"}
            ),
            f"{_AT}.valueQuantity.vlaue: expected no such element in FHIR R4B",
        ),
        (
            lambda b: b["prefetch"]["observations"]["entry"][2]["resource"].update(
                effectiveDateTime="16/07/1980"
            ),
            f"{_AT}.effectiveDateTime: expected ",
        ),
        (
            lambda b: b["prefetch"]["medications"]["entry"][0]["resource"].pop("intent"),
            "prefetch.medications: Bundle.entry[0].resource.intent: expected ",
        ),
        (
            lambda b: b["prefetch"]["medications"].update(typ="searchset"),
            "prefetch.medications: Bundle.typ: expected no such element in FHIR R4B",
        ),
    ],
    ids=[
        "patient-misspelt",
        "status-missing",
        "nested-misspelt",
        "bad-date",
        "intent-missing",
        "bundle-misspelt",
    ],
)
def test_a_bad_prefetch_is_400_naming_its_json_path(
    coleman: list[dict[str, Any]], change: Any, expected: str, validate: bool
) -> None:
    """What is wrong in the prefetch, where, and what was expected there: with the default
    element check as with full validation (the fast path alone read each of these without a
    word, but for the date)."""
    app = FastAPI()
    app.include_router(
        cds_router(default_packs(), clock=lambda: NOW, warm_up=False, validate_prefetch=validate)
    )
    body = copy.deepcopy(_order_sign(coleman))  # the fixture's resources stay as they are
    change(body)
    response = TestClient(app).post("/cds-services/vigie-order-sign", json=body)
    assert expected in _outcome(response, 400)
