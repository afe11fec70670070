"""CDS Hooks mounted in the service (``create_app``): the services need a ``feed`` or
``pharmacist`` token, and a prescriber's feedback on a card becomes a decision on its alert in
the store (accepted: an intervention with its outcome accepted; overridden: a dismissal with
the mapped reason), audited, whichever of SQLite and PostgreSQL holds it. The card contents are
tested in tests/test_cds_hooks.py; this is the wiring."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pytest

from tests.test_api import database_url, pytest_generate_tests  # noqa: F401 (fixtures)
from tests.test_cds_hooks import (  # noqa: F401 (coleman: a fixture)
    NOW,
    _call,
    _draft,
    _metformin,
    _metformin_cards,
    _orders_bundle,
    _patient,
    _prefetch,
    coleman,
)
from vigie.api.app import create_app
from vigie.store import ServiceStore

with warnings.catch_warnings():  # starlette asks for httpx2, which this environment lacks
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@dataclass
class Service:
    client: TestClient
    service: ServiceStore
    tokens: dict[str, str]

    def as_(self, role: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"} if role else {}


@pytest.fixture(scope="module")
def api(database_url: str) -> Iterator[Service]:  # noqa: F811 (the imported fixture)
    app = create_app(database_url, clock=lambda: NOW)
    service: ServiceStore = app.state.service
    roles = ("pharmacist", "rule_author", "admin", "feed")
    tokens = {role: service.add_user(f"{role}.cds", [role])[1] for role in roles}
    with TestClient(app) as client:
        yield Service(client, service, tokens)


@pytest.mark.parametrize(
    ("role", "status"),
    [(None, 401), ("admin", 403), ("rule_author", 403), ("feed", 200), ("pharmacist", 200)],
)
def test_the_services_need_a_feed_or_pharmacist_token(
    api: Service, role: str | None, status: int
) -> None:
    assert api.client.get("/cds-services", headers=api.as_(role)).status_code == status


def _card(
    api: Service,
    coleman: list[dict[str, Any]],  # noqa: F811
    instance: str,
    draft: str = "draft-metformin",
) -> dict[str, Any]:
    """The stop-metformin card of an order-sign of a draft metformin order ``draft``."""
    orders = _orders_bundle(_draft(_metformin(coleman), draft))
    body = _call("order-sign", _patient(coleman)["id"], instance, draftOrders=orders)
    body["prefetch"] = _prefetch(coleman)
    response = api.client.post("/cds-services/vigie-order-sign", json=body, headers=api.as_("feed"))
    assert response.status_code == 200, response.text
    (card,) = _metformin_cards(response.json()["cards"])
    return card


def test_feedback_becomes_decisions_on_the_alerts(
    api: Service,
    coleman: list[dict[str, Any]],  # noqa: F811
) -> None:
    card = _card(api, coleman, "app-1")
    feedback = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": "1980-07-16T21:02:00Z",
    }
    response = _feedback(api.client, api.tokens["feed"], [feedback])
    assert response.status_code == 200, response.text
    decided = [d for d in api.service.decisions() if d.actor == "cds-hooks:vigie-order-sign"]
    (decision,) = decided
    alert = api.service.alerts.get(decision.alert_id)
    assert alert.rule_id == "renal.metformin_egfr" and alert.status == "intervention"
    # the rule's SFPC codes (catalogue: metformin and eGFR < 30 — problem 1, stop: 2)
    assert (decision.problem_code, decision.intervention_code) == ("1", "2")
    assert decision.outcome == "accepted"
    assert decision.decided_at == datetime(1980, 7, 16, 21, 2)
    # the same card again: the alert is decided already, a 409 saying so, nothing recorded
    again = _feedback(api.client, api.tokens["feed"], [feedback])
    assert again.status_code == 409, again.text
    assert "decided" in again.text or "cannot" in again.text
    assert len([d for d in api.service.decisions() if d.alert_id == alert.id]) == 1


def test_an_override_becomes_a_dismissal_with_its_reason(
    api: Service,
    coleman: list[dict[str, Any]],  # noqa: F811
) -> None:
    card = _card(api, coleman, "app-2", draft="draft-metformin-2")
    reason = next(r for r in card["overrideReasons"] if r["code"] == "patient-monitored")
    feedback = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": reason, "userComment": "néphrologue prévenu"},
        "outcomeTimestamp": "1980-07-16T21:03:00Z",
    }
    response = _feedback(api.client, api.tokens["feed"], [feedback])
    assert response.status_code == 200, response.text
    (decision,) = [d for d in api.service.decisions() if d.decided_at.minute == 3]
    assert decision.kind == "dismissal" and decision.dismiss_reason == "accepted_risk"
    assert decision.comment == "néphrologue prévenu"
    assert api.service.alerts.get(decision.alert_id).status == "dismissed"


def test_an_override_without_a_reason_says_so(
    api: Service,
    coleman: list[dict[str, Any]],  # noqa: F811
) -> None:
    """``overrideReason`` is optional in CDS Hooks: the dismissal says none was given (its
    text read "overridden: None")."""
    card = _card(api, coleman, "app-7", draft="draft-7")
    feedback = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": "1980-07-16T21:07:00Z",
    }
    response = _feedback(api.client, api.tokens["feed"], [feedback])
    assert response.status_code == 200, response.text
    (decision,) = [d for d in api.service.decisions() if d.decided_at.minute == 7]
    assert decision.kind == "dismissal" and decision.dismiss_reason == "other"
    assert decision.comment == "overridden in the prescribing software, no reason given"


def _feedback(client: TestClient, token: str, items: list[dict[str, Any]]) -> Any:
    url = "/cds-services/vigie-order-sign/feedback"
    headers = {"Authorization": f"Bearer {token}"}
    return client.post(url, json={"feedback": items}, headers=headers)


def test_feedback_after_a_restart_is_recorded(
    api: Service,
    database_url: str,  # noqa: F811
    coleman: list[dict[str, Any]],  # noqa: F811
) -> None:
    """The card is answered by one app, which stops; the app made again on the same store
    (a restart) records the feedback on it."""
    first = create_app(database_url, clock=lambda: NOW)
    with TestClient(first) as client:
        card = _card(Service(client, api.service, api.tokens), coleman, "app-3", "draft-3")
    restarted = create_app(database_url, clock=lambda: NOW)
    reason = next(r for r in card["overrideReasons"] if r["code"] == "not-applicable")
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": reason},
        "outcomeTimestamp": "1980-07-16T21:04:00Z",
    }
    with TestClient(restarted) as client:
        response = _feedback(client, api.tokens["feed"], [item])
    assert response.status_code == 200, response.text
    (decision,) = [d for d in api.service.decisions() if d.decided_at.minute == 4]
    assert decision.kind == "dismissal" and decision.dismiss_reason == "not_relevant"
    assert api.service.alerts.get(decision.alert_id).rule_id == "renal.metformin_egfr"


def test_feedback_reaching_another_worker_is_recorded(
    api: Service,
    database_url: str,  # noqa: F811
    coleman: list[dict[str, Any]],  # noqa: F811
) -> None:
    """Two apps on one store at once (``vigie serve --workers 2``): the card answered by one,
    its feedback sent to the other; the other's checks are those of the card it never saw."""
    card = _card(api, coleman, "app-4", "draft-4")
    suggestion = card["suggestions"][0]["uuid"]
    other = create_app(database_url, clock=lambda: NOW)
    token = api.tokens["feed"]
    item = {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "1980-07-16T21:05:00Z"}
    with TestClient(other) as client:
        unknown = _feedback(client, token, [{**item, "card": "not-a-card"}])
        assert unknown.status_code == 404, unknown.text
        assert "no card 'not-a-card' from vigie-order-sign" in unknown.text
        no_such = _feedback(client, token, [{**item, "acceptedSuggestions": [{"id": "x"}]}])
        assert no_such.status_code == 400, no_such.text
        assert "has no suggestion 'x'" in no_such.text
        taken = _feedback(client, token, [{**item, "acceptedSuggestions": [{"id": suggestion}]}])
    assert taken.status_code == 200, taken.text
    (decision,) = [d for d in api.service.decisions() if d.decided_at.minute == 5]
    assert decision.kind == "intervention" and decision.outcome == "accepted"
    assert (decision.problem_code, decision.intervention_code) == ("1", "2")
    # a card of one service is unknown to another
    verify = "/cds-services/vigie-medication-verify/feedback"
    headers = api.as_("feed")
    elsewhere = api.client.post(verify, json={"feedback": [item]}, headers=headers)
    assert elsewhere.status_code == 404, elsewhere.text
