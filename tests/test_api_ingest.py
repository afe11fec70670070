"""``POST /ingest/hl7``, ``POST /ingest/fhir``, ``GET /deadletters``, ``POST
/deadletters/{id}/replay`` and the live worklist behind them (``vigie.api.live``): roles, an
alert raised by a lab result without a batch refresh, located errors in a batch, dead letters
and their replay, duplicates, FHIR Bundle and NDJSON, retractions resolving an alert, the audit;
``LiveWorklist.start`` gives the worklist ``refresh_worklist`` gives. SQLite and PostgreSQL (one
app per module and backend, each test on patients of its own).
"""

from __future__ import annotations

import gzip
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.test_api import ROLES, database_url, pytest_generate_tests  # noqa: F401 (fixtures)
from vigie.api.app import create_app, refresh_worklist
from vigie.api.live import LiveWorklist
from vigie.connectors.base import FeedError
from vigie.connectors.hl7v2 import connector as hl7_connector
from vigie.ingest.messages import ingest_hl7
from vigie.store import AlertStore, FactStore, ServiceError, ServiceStore
from vigie.store.alerts import AlertError

with warnings.catch_warnings():  # starlette asks for httpx2, which this environment lacks
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

AS_OF = datetime(2024, 3, 6, 9, 0)  # the service's fixed clock: the messages' day
HL7 = {"Content-Type": "application/hl7-v2"}


@dataclass
class Service:
    client: TestClient
    service: ServiceStore
    tokens: dict[str, str]

    def as_(self, role: str | None, **headers: str) -> dict[str, str]:
        if role is None:
            return headers
        return {"Authorization": f"Bearer {self.tokens.get(role, 'vigie_forged')}", **headers}

    def hl7(self, body: str | bytes, role: str = "feed") -> Any:
        return self.client.post("/ingest/hl7", content=body, headers=self.as_(role, **HL7))

    def worklist(self, patient: str) -> list[dict[str, Any]]:
        page = self.client.get(
            "/worklist", params={"patient": patient}, headers=self.as_("pharmacist")
        )
        assert page.status_code == 200, page.text
        items: list[dict[str, Any]] = page.json()["items"]
        return items


@pytest.fixture(scope="module")
def api(database_url: str) -> Iterator[Service]:  # noqa: F811 (the imported fixture)
    app = create_app(database_url, live=True, as_of=AS_OF, tick_seconds=0)
    service: ServiceStore = app.state.service
    tokens = {role: service.add_user(f"{role}.ingest", [role])[1] for role in ROLES}
    with TestClient(app) as client:
        assert app.state.live.started
        yield Service(client, service, tokens)


# Messages ----------------------------------------------------------------------------------------


def _segments(*segments: str) -> str:
    return "\r".join(segments) + "\r"


def adt(pid: str, ward: str = "CARDIO") -> str:
    """An admission on 5 March 2024, 09:45."""
    return _segments(
        f"MSH|^~\\&|SIH|CHU|VIGIE|PHARMA|20240305100000||ADT^A01|ADT-{pid}|P|2.5",
        f"PID|1||{pid}^^^CHU^PI||DOE^Jo||19400517|F",
        f"PV1|1|I|{ward}^214^2^CHU||||||||||||||||NDA-{pid}^^^CHU^VN" + "|" * 25 + "20240305094500",
    )


def rde(pid: str, atc: str = "C09AA05", label: str = "RAMIPRIL 5 MG") -> str:
    """A line of ``atc`` from 5 March 2024, 12:00, once a day."""
    return _segments(
        f"MSH|^~\\&|PHARMA|CHU|VIGIE|PHARMA|20240305120000||RDE^O11|RDE-{pid}|P|2.5",
        f"PID|1||{pid}^^^CHU^PI||DOE^Jo||19400517|F",
        f"ORC|NW|PRESC-{pid}|DISP-{pid}||IP||||20240305115500",
        f"RXE||{atc}^{label}^WHOATC|5||mg",
        "TQ1|1||QD||||20240305120000",
        "RXR|PO^Orale^HL70162",
    )


def oru(pid: str, value: str = "6.4", control: str | None = None, status: str = "F") -> str:
    """A potassium of 6 March 2024, 07:40."""
    return _segments(
        f"MSH|^~\\&|LAB|CHU|VIGIE|PHARMA|20240306081200||ORU^R01|{control or 'ORU-' + pid}|P|2.5",
        f"PID|1||{pid}^^^CHU^PI||DOE^Jo||19400517|F",
        f"OBX|1|NM|2823-3^Potassium^LN||{value}|mmol/L|3.5-5.1|H|||{status}|||20240306074000",
    )


def _alert_rules(items: list[dict[str, Any]]) -> list[str]:
    return [item["rule_id"] for item in items]


# Roles -------------------------------------------------------------------------------------------

PATIENT_ROLE2 = b'{"resourceType": "Patient", "id": "ROLE2"}'
# (method, path, body, content type, the roles allowed, their status)
ENDPOINTS = [
    ("POST", "/ingest/hl7", adt("ROLE1"), "application/hl7-v2", {"feed"}, 200),
    ("POST", "/ingest/fhir", PATIENT_ROLE2, "application/fhir+json", {"feed"}, 200),
    ("GET", "/deadletters", None, None, {"feed", "admin"}, 200),
    ("POST", "/deadletters/999999/replay", None, None, {"feed", "admin"}, 404),
]


@pytest.mark.parametrize(("method", "path", "body", "media", "allowed", "ok"), ENDPOINTS)
def test_every_endpoint_checks_the_token_and_the_role(
    api: Service, method: str, path: str, body: Any, media: str | None, allowed: set[str], ok: int
) -> None:
    for role in (None, "forged", *ROLES):
        headers = api.as_(role, **({"Content-Type": media} if media else {}))
        answer = api.client.request(method, path, content=body, headers=headers)
        expected = 401 if role in (None, "forged") else ok if role in allowed else 403
        assert answer.status_code == expected, (role, answer.text)


# HL7 v2 ------------------------------------------------------------------------------------------


def test_a_high_potassium_under_ramipril_raises_the_alert_live(api: Service) -> None:
    answer = api.hl7(adt("K1") + rde("K1"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert [(m["message_id"], m["status"]) for m in body["messages"]] == [
        ("SIH^CHU|ADT-K1", "loaded"),
        ("PHARMA^CHU|RDE-K1", "loaded"),
    ]
    assert body["messages"][1]["facts"] == {"patient": 1, "medication_order": 1}
    assert (body["loaded"], body["failed"], body["worklist_updated"]) == (2, 0, True)
    assert api.worklist("K1") == []
    answer = api.hl7(oru("K1"))
    assert answer.status_code == 200 and answer.json()["messages"][0]["facts"] == {
        "patient": 1,
        "lab": 1,
    }
    (alert,) = api.worklist("K1")  # no batch refresh: the live worklist wrote it
    assert (alert["rule_id"], alert["ward"]) == ("bio.hyperkalaemia", "CARDIO")
    assert alert["priority"] > 300  # major, 84 years old: the score is computed
    entry, received = api.service.audit_log(actor="feed.ingest", limit=2)
    assert (entry.action, entry.resource, entry.patient_id) == ("ingest", "POST /ingest/hl7", "K1")
    assert entry.detail == {
        "stage": "stored",
        "messages": [{"id": "LAB^CHU|ORU-K1", "status": "loaded"}],
        "patients": ["K1"],
    }
    assert "6.4" not in str(entry.detail) and "DOE" not in str(entry.detail)
    # Written before anything was stored: the request's size and type, no patient.
    assert (received.action, received.resource, received.patient_id) == (
        "ingest",
        "POST /ingest/hl7",
        None,
    )
    assert received.detail == {
        "stage": "received",
        "bytes": len(oru("K1").encode()),
        "media_type": "application/hl7-v2",
    }
    # A normal potassium later resolves it (a new result, not a retraction).
    later = oru("K1", "4.1", control="ORU-K1-2").replace("20240306074000", "20240306084000")
    assert api.hl7(later).status_code == 200
    assert api.worklist("K1") == []
    assert api.service.alerts.alerts(status="resolved_by_data")


def test_a_broken_message_in_a_batch_is_named_and_the_others_load(
    api: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = oru("B2").replace("ORU^R01", "")  # no message type: rejected
    bad_value = oru("B3", value="abc", control="ORU-B3")  # a bad OBX-5: loaded with an error
    answer = api.hl7(adt("B1") + rde("B1") + broken + bad_value + oru("B1"))
    assert answer.status_code == 207, answer.text
    body = answer.json()
    assert [m["status"] for m in body["messages"]] == [
        "loaded",
        "loaded",
        "rejected",
        "partial",
        "loaded",
    ]
    assert (body["loaded"], body["failed"]) == (4, 2)
    rejected, partial = body["messages"][2], body["messages"][3]
    assert (rejected["message_id"], rejected["position"]) == ("LAB^CHU|ORU-B2", "message 3")
    (error,) = rejected["errors"]
    assert (error["position"], error["fatal"]) == ("MSH-9", True)
    assert error["expected"].startswith("a message type")
    (warning,) = partial["errors"]
    assert (warning["position"], warning["found"], warning["fatal"]) == ("OBX[1]-5", "abc", False)
    assert _alert_rules(api.worklist("B1")) == ["bio.hyperkalaemia"]  # the rest went on

    letters = api.client.get("/deadletters", headers=api.as_("admin")).json()["items"]
    mine = {d["message_id"]: d for d in letters if d["message_id"].endswith(("B2", "B3"))}
    assert mine["LAB^CHU|ORU-B2"]["position"] == "MSH-9"
    assert mine["LAB^CHU|ORU-B3"]["message_status"] == "partial"
    # Not fixed: the replay fails again and says so.
    replay = api.client.post(
        f"/deadletters/{mine['LAB^CHU|ORU-B2']['id']}/replay", headers=api.as_("feed")
    )
    assert replay.status_code == 422
    (again,) = replay.json()["messages"]
    assert (again["status"], again["errors"][0]["position"]) == ("rejected", "MSH-9")
    gone = api.client.post(
        f"/deadletters/{mine['LAB^CHU|ORU-B2']['id']}/replay", headers=api.as_("feed")
    )
    assert gone.status_code == 404 and "no dead letter" in gone.json()["detail"]


def test_a_replay_after_a_mapping_fix_raises_the_alert(
    api: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert api.hl7(adt("R1") + rde("R1")).status_code == 200
    parse = hl7_connector.parse

    def broken_mapping(raw: Any, *args: Any) -> Any:
        if b"ORU^R01|ORU-R1|" in raw.content:
            raise FeedError(raw.document, "PID-3", "a mapped patient id", message_id="x")
        return parse(raw, *args)

    monkeypatch.setattr(hl7_connector, "parse", broken_mapping)
    answer = api.hl7(oru("R1"))
    assert answer.status_code == 422
    assert answer.json()["messages"][0]["errors"][0]["position"] == "PID-3"
    assert api.worklist("R1") == []
    letters = api.client.get("/deadletters", params={"feed": "hl7v2"}, headers=api.as_("feed"))
    (letter,) = [d for d in letters.json()["items"] if d["message_id"] == "LAB^CHU|ORU-R1"]
    monkeypatch.setattr(hl7_connector, "parse", parse)  # the fix
    replay = api.client.post(f"/deadletters/{letter['id']}/replay", headers=api.as_("admin"))
    assert replay.status_code == 200, replay.text
    assert replay.json()["messages"][0]["status"] == "loaded"
    assert _alert_rules(api.worklist("R1")) == ["bio.hyperkalaemia"]
    entry = api.service.audit_log(actor="admin.ingest", action="replay", limit=1)[0]
    assert entry.patient_id == "R1"


def test_the_same_message_twice_is_stored_once(api: Service) -> None:
    body = adt("D1") + rde("D1") + oru("D1")
    assert api.hl7(body).status_code == 200
    again = api.hl7(body)
    assert again.status_code == 200
    assert [m["status"] for m in again.json()["messages"]] == ["duplicate"] * 3
    assert again.json()["duplicates"] == 3
    facts = api.service.facts
    assert len(facts.raw_versions("hl7v2", "LAB^CHU|ORU-D1")) == 1
    assert len(list(facts.iter_facts(kinds=["lab"], patient_id="D1"))) == 1
    assert _alert_rules(api.worklist("D1")) == ["bio.hyperkalaemia"]


def test_a_retracted_result_resolves_the_alert(api: Service) -> None:
    assert api.hl7(adt("X1") + rde("X1") + oru("X1")).status_code == 200
    (alert,) = api.worklist("X1")
    withdrawn = oru("X1", control="ORU-X1-D", status="D")  # OBX-11 D: deleted
    answer = api.hl7(withdrawn)
    assert answer.status_code == 200 and answer.json()["messages"][0]["retractions"] == 1
    assert api.worklist("X1") == []
    assert api.service.alerts.get(alert["id"]).status == "resolved_by_data"


def test_a_version_older_than_the_retraction_stays_withdrawn_as_in_the_store(
    api: Service,
) -> None:
    """A delayed message (sent 08:30) arriving after the withdrawal (09:00) of the result it
    carries: the store keeps the result withdrawn, and so does the live worklist."""
    assert api.hl7(adt("V1") + rde("V1") + oru("V1")).status_code == 200
    assert _alert_rules(api.worklist("V1")) == ["bio.hyperkalaemia"]
    withdrawn = oru("V1", control="ORU-V1-D", status="D").replace(
        "20240306081200", "20240306090000"
    )
    assert api.hl7(withdrawn).json()["messages"][0]["retractions"] == 1
    delayed = oru("V1", control="ORU-V1-OLD").replace("20240306081200", "20240306083000")
    assert api.hl7(delayed).json()["messages"][0]["status"] == "loaded"
    assert list(api.service.facts.iter_facts(kinds=["lab"], patient_id="V1")) == []
    assert api.worklist("V1") == []
    # A later version is a new result again, in the store and in the worklist.
    later = oru("V1", control="ORU-V1-NEW").replace("20240306081200", "20240306091000")
    assert api.hl7(later).status_code == 200
    assert len(list(api.service.facts.iter_facts(kinds=["lab"], patient_id="V1"))) == 1
    assert _alert_rules(api.worklist("V1")) == ["bio.hyperkalaemia"]


def test_an_ingest_whose_audit_entry_cannot_be_written_stores_nothing(
    api: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entry ``received`` goes first: without it, no message is kept (a 503 saying so),
    and the same message sent again once the log is back loads as new."""
    before = api.service.facts.raw_counts()

    def refused(self: ServiceStore, entry: Any) -> None:
        raise ServiceError("the audit log is not writable (test)")

    monkeypatch.setattr(ServiceStore, "audit", refused)
    answer = api.hl7(oru("AU1"))
    assert answer.status_code == 503 and "nothing was stored" in answer.json()["detail"]
    assert api.service.facts.raw_counts() == before
    monkeypatch.undo()
    again = api.hl7(oru("AU1"))
    assert again.status_code == 200 and again.json()["messages"][0]["status"] == "loaded"


def test_bad_bodies_are_refused_before_anything_is_stored(api: Service) -> None:
    before = api.service.facts.raw_counts()
    assert api.hl7(b"").status_code == 400
    wrong = api.client.post(
        "/ingest/hl7", content=b"{}", headers=api.as_("feed", **{"Content-Type": "image/png"})
    )
    assert wrong.status_code == 415 and "application/hl7-v2" in wrong.json()["detail"]
    xml = api.client.post(
        "/ingest/fhir", content=b"<x/>", headers=api.as_("feed", **{"Content-Type": "text/xml"})
    )
    assert xml.status_code == 415
    for route, media in (
        ("/ingest/hl7", "application/hl7-v2"),
        ("/ingest/fhir", "application/json"),
    ):
        gzipped = api.client.post(  # a content coding the routes do not decode
            route,
            content=gzip.compress(oru("GZ1").encode()),
            headers=api.as_("feed", **{"Content-Type": media, "Content-Encoding": "gzip"}),
        )
        assert gzipped.status_code == 415
        assert gzipped.json() == {
            "detail": "send the body uncompressed (Content-Encoding identity); not gzip"
        }
    assert api.service.facts.raw_counts() == before
    not_hl7 = api.hl7(b"hello")  # kept and rejected, with its error
    assert not_hl7.status_code == 422
    assert not_hl7.json()["messages"][0]["errors"][0]["position"] == "segment 1"


# FHIR --------------------------------------------------------------------------------------------


def _fhir_patient(pid: str) -> list[dict[str, Any]]:
    subject = {"reference": f"Patient/{pid}"}
    return [
        {"resourceType": "Patient", "id": pid, "birthDate": "1940-05-17", "gender": "female"},
        {
            "resourceType": "Encounter",
            "id": f"E-{pid}",
            "status": "in-progress",
            "class": {"code": "IMP"},
            "subject": subject,
            "period": {"start": "2024-03-05T09:45:00Z"},
            "serviceProvider": {"display": "NEPHRO"},
        },
        {
            "resourceType": "MedicationRequest",
            "id": f"MR-{pid}",
            "status": "active",
            "intent": "order",
            "subject": subject,
            "authoredOn": "2024-03-05T12:00:00Z",
            "medicationCodeableConcept": {
                "coding": [{"system": "http://www.whocc.no/atc", "code": "C09AA05"}],
                "text": "ramipril 5 mg",
            },
            "dosageInstruction": [
                {
                    "timing": {
                        "repeat": {
                            "frequency": 1,
                            "period": 1,
                            "periodUnit": "d",
                            "boundsPeriod": {"start": "2024-03-05T12:00:00Z"},
                        }
                    },
                    "doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg"}}],
                }
            ],
        },
    ]


def _potassium(pid: str, value: float, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"K-{pid}",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2024-03-06T07:40:00Z",
        "valueQuantity": {"value": value, "unit": "mmol/L"},
    }


def _fhir(api: Service, body: bytes, media: str) -> Any:
    return api.client.post(
        "/ingest/fhir", content=body, headers=api.as_("feed", **{"Content-Type": media})
    )


def test_a_fhir_bundle_raises_the_alert_and_entered_in_error_resolves_it(api: Service) -> None:
    bundle = {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:test", "value": "F1"},
        "type": "collection",
        "entry": [{"resource": r} for r in [*_fhir_patient("F1"), _potassium("F1", 6.3)]],
    }
    answer = _fhir(api, orjson.dumps(bundle), "application/fhir+json")
    assert answer.status_code == 200, answer.text
    (message,) = answer.json()["messages"]
    assert message["message_id"] == "identifier|urn:test|F1" and message["status"] == "loaded"
    (alert,) = api.worklist("F1")
    assert (alert["rule_id"], alert["ward"]) == ("bio.hyperkalaemia", "NEPHRO")
    assert _fhir(api, orjson.dumps(bundle), "application/fhir+json").json()["duplicates"] == 1
    withdrawn = _potassium("F1", 6.3, status="entered-in-error")
    answer = _fhir(api, orjson.dumps(withdrawn), "application/fhir+json")
    assert answer.status_code == 200 and answer.json()["messages"][0]["retractions"] == 1
    assert api.worklist("F1") == []


def test_ndjson_lines_are_messages_each(api: Service) -> None:
    lines = [*_fhir_patient("N1"), _potassium("N1", 6.6)]
    body = b"\n".join(orjson.dumps(r) for r in lines) + b"\n{not json\n"
    answer = _fhir(api, body, "application/fhir+ndjson")
    assert answer.status_code == 207, answer.text
    messages = answer.json()["messages"]
    assert [m["status"] for m in messages] == ["loaded"] * 4 + ["rejected"]
    assert messages[4]["position"] == "line 5" and "line 5" in messages[4]["errors"][0]["position"]
    assert _alert_rules(api.worklist("N1")) == ["bio.hyperkalaemia"]
    again = _fhir(api, body.replace(b"{not json\n", b""), "application/x-ndjson")
    assert again.status_code == 200 and again.json()["duplicates"] == 4


def test_a_message_whose_every_part_failed_is_rejected_and_one_with_facts_partial(
    api: Service,
) -> None:
    all_failed = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": "oops"}, {"fullUrl": "x"}],
    }
    answer = _fhir(api, orjson.dumps(all_failed), "application/fhir+json")
    assert answer.status_code == 422, answer.text  # as a message that yields nothing
    body = answer.json()
    (message,) = body["messages"]
    assert (message["status"], message["facts"], body["loaded"], body["failed"]) == (
        "rejected",
        {},
        0,
        1,
    )
    assert [(e["position"], e["fatal"]) for e in message["errors"]] == [
        ("Bundle.entry[0].resource", False),
        ("Bundle.entry[1].resource", False),
    ]
    letters = api.client.get("/deadletters", headers=api.as_("admin")).json()["items"]
    mine = [d for d in letters if d["message_id"] == message["message_id"]]
    assert [d["message_status"] for d in mine] == ["rejected", "rejected"]
    # Some entries loaded, some failed: partial (207)
    some = {**all_failed, "entry": [{"resource": _fhir_patient("R1")[0]}, {"resource": "oops"}]}
    answer = _fhir(api, orjson.dumps(some), "application/fhir+json")
    assert answer.status_code == 207 and answer.json()["messages"][0]["status"] == "partial"
    # NDJSON: a line whose every part failed is rejected; the body, with a line loaded, is 207
    lines = [_fhir_patient("R2")[0], {**all_failed, "entry": [{"resource": 1}]}]
    answer = _fhir(api, b"\n".join(map(orjson.dumps, lines)), "application/fhir+ndjson")
    assert answer.status_code == 207, answer.text
    assert [m["status"] for m in answer.json()["messages"]] == ["loaded", "rejected"]


# The worklist at start ---------------------------------------------------------------------------


def test_the_worklist_at_start_is_that_of_a_batch_refresh(tmp_path: Any) -> None:
    """Two stores with the same facts: one refreshed by the batch evaluator, one started live
    (every fact evaluated, then reconciled): the same open alerts, priorities and wards."""
    from vigie.synthetic import DEFAULT_START
    from vigie.synthetic.canonical import canonical_hospital
    from vigie.synthetic.catalogue import covered_rules

    facts, _ = canonical_hospital(60, 4, 11, rates=dict.fromkeys(covered_rules(), 0.02))
    at = DEFAULT_START + timedelta(days=4)
    worklists = []
    for name in ("batch", "live"):
        with FactStore(f"sqlite:///{tmp_path / name}.db") as store:
            with store._write_session() as session:
                store.save_facts(session, facts, None)
                session.commit()
            if name == "batch":
                refresh_worklist(store, at)
            else:
                live = LiveWorklist(store)
                live.start(at)
                assert len(live.worklist()) == len(AlertStore(store).worklist(limit=None))
            worklists.append(
                [(a.id, a.priority, a.severity, a.ward) for a in AlertStore(store).worklist(None)]
            )
    assert worklists[0] == worklists[1] and len(worklists[0]) >= 5


# MLLP with the app -------------------------------------------------------------------------------


def _frame(message: str) -> bytes:
    return b"\x0b" + message.encode() + b"\x1c\r"


def test_an_mllp_listener_started_with_the_app_feeds_the_live_worklist(
    database_url: str,  # noqa: F811 (the imported fixture)
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = create_app(database_url, live=True, as_of=AS_OF, tick_seconds=0, mllp=("127.0.0.1", 0))
    service: ServiceStore = app.state.service
    pharmacist = {"Authorization": f"Bearer {service.add_user('pharm.mllp', ['pharmacist'])[1]}"}
    with caplog.at_level("INFO", logger="vigie.api"), TestClient(app) as client:
        listener = app.state.mllp
        assert listener.port != 0  # port 0 asked for a free one: the log says which
        assert f"MLLP (HL7 v2) listener on 127.0.0.1:{listener.port}" in caplog.text
        with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as connection:
            for message in (adt("M1"), rde("M1"), oru("M1")):
                connection.sendall(_frame(message))
                ack = connection.recv(4096)
                assert b"MSA|AA|" in ack
        deadline = time.monotonic() + 10
        while True:  # parsed after the ACK, in the listener's thread
            items = client.get("/worklist", params={"patient": "M1"}, headers=pharmacist)
            if items.json()["items"] or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert _alert_rules(items.json()["items"]) == ["bio.hyperkalaemia"]
    assert not listener._thread.is_alive()  # stopped with the app


# The live worklist's clock and writes ------------------------------------------------------------


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _send(store: FactStore, live: LiveWorklist, *messages: str) -> Any:
    """Ingest the messages into the store and give their facts to the live worklist."""
    return live.apply_results([r for m in messages for r in ingest_hl7(store, m)])


def test_time_passing_resolves_alerts_by_tick_and_in_the_background(tmp_path: Any) -> None:
    clock = _Clock(AS_OF)
    with FactStore(f"sqlite:///{tmp_path / 'tick.db'}") as store:
        live = LiveWorklist(store, clock=clock)
        assert _send(store, live, adt("T1")) is None  # not started: start reads the store
        live.start()
        until_noon = rde("T1").replace("||||20240305120000", "||||20240305120000|20240306120000")
        _send(store, live, until_noon, oru("T1"))
        (alert,) = live.worklist("T1")
        clock.now = AS_OF + timedelta(hours=2)
        live.tick()  # the line runs until noon
        assert [a.id for a in live.worklist("T1")] == [alert.id]
        clock.now = AS_OF + timedelta(hours=4)  # the line has ended
        live.start_ticking(0.02)
        try:
            deadline = time.monotonic() + 10
            while live.worklist("T1") and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            live.stop()
        assert live.worklist("T1") == []
        assert AlertStore(store).get(alert.id).status == "resolved_by_data"


def test_a_failed_write_is_caught_up_by_the_next_one(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FactStore(f"sqlite:///{tmp_path / 'stale.db'}") as store:
        live = LiveWorklist(store, as_of=AS_OF)
        live.start()
        alerts = live.alerts

        def down(*_: Any, **__: Any) -> Any:
            raise AlertError("cannot apply the alert changes: database down")

        monkeypatch.setattr(alerts, "apply_diff", down)
        with pytest.raises(AlertError):
            _send(store, live, adt("S1"), rde("S1"), oru("S1"))
        assert alerts.worklist(patient_id="S1") == []
        monkeypatch.undo()
        _send(store, live, adt("S2"))  # any later write reconciles every patient
        assert [a.rule_id for a in alerts.worklist(patient_id="S1")] == ["bio.hyperkalaemia"]


def test_after_a_restart_a_retraction_still_outranks_an_older_version(tmp_path: Any) -> None:
    with FactStore(f"sqlite:///{tmp_path / 'restart.db'}") as store:
        withdrawn = oru("W1", control="ORU-W1-D", status="D").replace(
            "20240306081200", "20240306090000"
        )
        for message in (adt("W1"), rde("W1"), oru("W1"), withdrawn):
            ingest_hl7(store, message)
        live = LiveWorklist(store, as_of=AS_OF)
        live.start()  # a new process: the retraction is known from the store only
        delayed = oru("W1", control="ORU-W1-OLD").replace("20240306081200", "20240306083000")
        _send(store, live, delayed)
        assert live.worklist("W1") == [] and AlertStore(store).worklist(patient_id="W1") == []


# Unmapped codes and units ------------------------------------------------------------------------


def test_unmapped_codes_and_units_are_listed_in_the_answer_of_a_loaded_message(
    api: Service,
) -> None:
    """A potassium under a made-up code is stored but no rule sees it: the answer says so per
    message (code, system, position, count), and the message is loaded all the same (200)."""
    body = (
        adt("UM1")
        + rde("UM1")
        + _segments(
            "MSH|^~\\&|LAB|CHU|VIGIE|PHARMA|20240306081200||ORU^R01|ORU-UM1|P|2.5",
            "PID|1||UM1^^^CHU^PI||DOE^Jo||19400517|F",
            "OBX|1|NM|99999-9^Made up^LN||6.4|mmol/L|3.5-5.1|H|||F|||20240306074000",
            "OBX|2|NM|2823-3^Potassium^LN||6.4|furlong|3.5-5.1|H|||F|||20240306074000",
        )
    )
    answer = api.hl7(body)
    assert answer.status_code == 200, answer.text
    messages = answer.json()["messages"]
    assert [(m["status"], m["errors"], m["unmapped"]) for m in messages[:2]] == [
        ("loaded", [], []),
        ("loaded", [], []),
    ]
    lab = messages[2]
    assert (lab["status"], lab["errors"]) == ("loaded", [])
    assert [
        (u["type"], u["kind"], u["system"], u["code"], u["unit"], u["position"], u["count"])
        for u in lab["unmapped"]
    ] == [
        ("unmapped_code", "lab", "LN", "99999-9", None, "OBX[1]-3", 1),
        ("unknown_unit", "lab", "LN", "2823-3", "furlong", "OBX[2]-6", 1),
    ]
    assert api.worklist("UM1") == []  # neither result is seen by the hyperkalaemia rule


def test_the_openapi_answer_declares_the_unmapped_list(api: Service) -> None:
    schemas = api.client.get("/openapi.json").json()["components"]["schemas"]
    assert "unmapped" in schemas["MessageOut"]["required"]
    assert set(schemas["UnmappedOut"]["properties"]) == {
        "type",
        "kind",
        "system",
        "code",
        "unit",
        "position",
        "text",
        "count",
    }
