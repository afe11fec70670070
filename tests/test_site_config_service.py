"""The saved site configuration (``PUT /config/cursors``) is what the service runs: the live
worklist (per ward, by the stay a patient is in), ``refresh_worklist``, the CDS Hooks services,
and again after a restart. SQLite and PostgreSQL.

Expectations come from the rules' meaning (docs/rules.md, the rule catalogue): the
hyperkalaemia rule fires when the latest potassium within 48 h is above ``k_max`` (5.5 mmol/L,
a cursor declared in 5.0 .. 6.5) under a potassium-raising drug (ramipril); the long-acting
benzodiazepine rule from ``long_benzo_age_min`` years; a rule or pack turned off raises nothing.
The live worklist must equal ``vigie batch --config`` with the same file at the same time.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import postgres_schema
from tests.test_api_ingest import _fhir_patient, _potassium, adt, oru, rde
from tests.test_evaluate import drug, lab, patient, src
from vigie.api.app import create_app, refresh_worklist, saved_site_config
from vigie.api.batch import batch
from vigie.api.live import LiveWorklist
from vigie.engine.alerts import Alert
from vigie.engine.site_config import parse_site_config
from vigie.facts import AnyFact, Stay
from vigie.store import AlertStore, Dismissal, FactStore, ServiceStore

with warnings.catch_warnings():  # starlette asks for httpx2, which this environment lacks
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

AS_OF = datetime(2024, 3, 6, 9, 0)  # the messages' day (tests/test_api_ingest.py)
HL7 = {"Content-Type": "application/hl7-v2"}
HYPERKALAEMIA = "bio.hyperkalaemia"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh store per test: SQLite file, or a PostgreSQL schema of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vigie.db'}"
        return
    with postgres_schema("vigie_site") as found:
        yield found


def _save(store: FactStore, text: str) -> None:
    ServiceStore(store).save_site_config(text, "test", "test")


def _facts_into(store: FactStore, facts: list[AnyFact]) -> None:
    with store._write_session() as session:
        store.save_facts(session, facts, None)
        session.commit()


# Through the API ---------------------------------------------------------------------------------


class Api:
    """A live service with a fixed clock, a rule author, a pharmacist and a feed."""

    def __init__(self, url: str, live: bool = True) -> None:
        self.app = create_app(
            url, live=live, refresh=not live, as_of=AS_OF, clock=lambda: AS_OF, tick_seconds=0
        )
        self.service: ServiceStore = self.app.state.service
        known = {user.name for user in self.service.users()}
        self.tokens = {}
        for role in ("pharmacist", "rule_author", "feed"):
            if f"{role}.site" not in known:
                self.tokens[role] = self.service.add_user(f"{role}.site", [role])[1]
            else:  # a restart: new tokens for the same users
                self.tokens[role] = self.service.add_user(f"{role}.site2", [role])[1]
        self.client = TestClient(self.app)

    def __enter__(self) -> Api:
        self.client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)
        self.service.facts.close()

    def as_(self, role: str, **headers: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}", **headers}

    def hl7(self, *messages: str) -> None:
        answer = self.client.post(
            "/ingest/hl7", content="".join(messages), headers=self.as_("feed", **HL7)
        )
        assert answer.status_code == 200 and answer.json()["failed"] == 0, answer.text

    def put(self, config: dict[str, Any]) -> dict[str, Any]:
        answer = self.client.put(
            "/config/cursors", json={"config": config}, headers=self.as_("rule_author")
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def flagged(self) -> set[str]:
        """The patients with a hyperkalaemia alert on GET /worklist."""
        answer = self.client.get(
            "/worklist",
            params={"rule": HYPERKALAEMIA, "limit": 500},
            headers=self.as_("pharmacist"),
        )
        assert answer.status_code == 200, answer.text
        return {item["patient_id"] for item in answer.json()["items"]}

    def status(self, patient_id: str) -> str:
        (alert,) = [
            a
            for a in self.service.alerts.alerts()
            if a.patient_id == patient_id and a.rule_id == HYPERKALAEMIA
        ]
        return alert.status

    def order_sign_rules(self, patient_id: str, potassium: float) -> list[str]:
        """The rules of the cards of an order-sign of ramipril for the patient, with a potassium
        of ``potassium`` in the prefetch (the request says nothing of the ward)."""
        resources = _fhir_patient(patient_id)
        person = resources[0]
        draft = {**resources[2], "id": f"draft-{patient_id}", "status": "draft"}
        body = {
            "hook": "order-sign",
            "hookInstance": f"instance-{patient_id}-{potassium}",
            "context": {
                "userId": "Practitioner/p1",
                "patientId": patient_id,
                "draftOrders": {"resourceType": "Bundle", "type": "collection",
                                "entry": [{"resource": draft}]},
            },
            "prefetch": {
                "patient": person,
                "medications": {"resourceType": "Bundle", "type": "searchset", "entry": []},
                "observations": {"resourceType": "Bundle", "type": "searchset",
                                 "entry": [{"resource": _potassium(patient_id, potassium)}]},
            },
        }  # fmt: skip
        answer = self.client.post(
            "/cds-services/vigie-order-sign", json=body, headers=self.as_("feed")
        )
        assert answer.status_code == 200, answer.text
        return [card["source"]["topic"]["code"] for card in answer.json()["cards"]]


def _admit(api: Api, pid: str, ward: str, potassium: str) -> None:
    """Admitted to ``ward`` on 5 March, ramipril from then, a potassium on 6 March 07:40."""
    api.hl7(adt(pid, ward), rde(pid), oru(pid, potassium))


def test_a_saved_configuration_applies_at_once_per_ward_and_after_a_restart(url: str) -> None:
    with Api(url) as api:
        _admit(api, "C1", "CARDIO", "5.8")
        _admit(api, "C2", "CARDIO", "5.4")
        _admit(api, "N1", "NEPHRO", "5.8")
        _admit(api, "N2", "NEPHRO", "5.4")
        _admit(api, "M1", "CARDIO", "5.8")
        # The packs' default: above 5.5 mmol/L, whatever the ward.
        assert api.flagged() == {"C1", "N1", "M1"}

        # Nephrology lives with a higher potassium: alert from above 6.0 there only.
        saved = api.put({"wards": {"NEPHRO": {"cursors": {"k_max": 6.0}}}})
        assert saved["wards"]["NEPHRO"]["cursors"] == {"k_max": 6.0}
        assert api.flagged() == {"C1", "M1"}
        assert api.status("N1") == "resolved_by_data"
        (n1,) = [a for a in api.service.alerts.alerts() if a.patient_id == "N1"]
        resolved = api.service.alerts.events(n1.id)[-1]
        assert resolved.to_status == "resolved_by_data"  # the log says the configuration did it
        assert resolved.reason.endswith(f"under site configuration version {saved['version']}")
        # CDS Hooks: the same draft and potassium, one patient in each ward (the store's stay).
        assert api.order_sign_rules("N1", 5.8) == []
        assert api.order_sign_rules("C1", 5.8) == [HYPERKALAEMIA]

        # M1 moves to nephrology (the same visit, another ward): its settings follow it.
        api.hl7(adt("M1", "NEPHRO").replace("ADT-M1", "ADT-M1-2"))
        assert api.flagged() == {"C1"}
        assert api.order_sign_rules("M1", 5.8) == []

        # The cursor moved down in nephrology: 5.4 and 5.8 are above 5.2 there, not in cardio.
        api.put({"wards": {"NEPHRO": {"cursors": {"k_max": 5.2}}}})
        assert api.flagged() == {"C1", "N1", "N2", "M1"}
        assert api.status("N1") == "open"  # reopened
        assert api.order_sign_rules("N2", 5.4) == [HYPERKALAEMIA]
        assert api.order_sign_rules("C2", 5.4) == []

    # A restart on the same store: the saved configuration applies from the start (with the
    # packs' defaults, N2 and N1 would be resolved, 5.4 being under 5.5).
    with Api(url) as api:
        assert api.app.state.live.site is not None
        assert api.flagged() == {"C1", "N1", "N2", "M1"}
        assert api.order_sign_rules("N2", 5.4) == [HYPERKALAEMIA]

        # A pharmacist dismissed C1's alert; then the rule is turned off hospital-wide.
        (c1,) = [a for a in api.service.alerts.alerts() if a.patient_id == "C1"]
        api.service.decide(c1.id, Dismissal("accepted_risk", "K+ daily"), actor="pharm.a")
        api.put(
            {
                "hospital": {"disable": [HYPERKALAEMIA]},
                "wards": {"NEPHRO": {"cursors": {"k_max": 5.2}}},
            }
        )
        assert api.flagged() == set()
        for pid in ("N1", "N2", "M1"):
            assert api.status(pid) == "resolved_by_data"
        stored = api.service.alerts.get(c1.id)
        assert (stored.status, stored.raised) == ("dismissed", False)  # the decision stays
        assert api.order_sign_rules("C1", 5.8) == []
        assert api.order_sign_rules("N2", 5.4) == []

        # Turned on again: the resolved alerts reopen; the dismissed one, same evidence, stays.
        api.put({"wards": {"NEPHRO": {"cursors": {"k_max": 5.2}}}})
        assert api.flagged() == {"N1", "N2", "M1"}
        assert api.service.alerts.get(c1.id).status == "dismissed"


def test_refresh_worklist_applies_the_saved_configuration(url: str) -> None:
    facts = [
        *_potassium_patient("C1", "CARDIO", 5.8),
        *_potassium_patient("N1", "NEPHRO", 5.8),
        *_potassium_patient("N2", "NEPHRO", 6.2),
    ]
    with FactStore(url) as store:
        _facts_into(store, facts)
        refresh_worklist(store, AS_OF)
        assert _open(store) == {"C1", "N1", "N2"}
        _save(store, "[wards.NEPHRO.cursors]\nk_max = 6.0\n")
        refresh_worklist(store, AS_OF)
        assert _open(store) == {"C1", "N2"}


def test_without_the_live_worklist_a_saved_configuration_refreshes_the_stored_one(
    url: str,
) -> None:
    """``vigie serve --no-live``: the worklist is the store's; saving a configuration
    evaluates it again at once, and the alerts it withdraws say which version did."""
    with FactStore(url) as store:
        _facts_into(store, [*_potassium_patient("N1", "NEPHRO", 5.8)])
        refresh_worklist(store, AS_OF)  # what vigie serve --no-live does at start
    with Api(url, live=False) as api:
        assert api.flagged() == {"N1"}
        saved = api.put({"wards": {"NEPHRO": {"cursors": {"k_max": 6.0}}}})
        assert api.flagged() == set()  # 5.8 is under 6.0 in nephrology
        (n1,) = [a for a in api.service.alerts.alerts() if a.patient_id == "N1"]
        event = api.service.alerts.events(n1.id)[-1]
        assert event.to_status == "resolved_by_data"
        assert event.reason is not None
        assert event.reason.endswith(f"under site configuration version {saved['version']}")


def test_a_configuration_saved_by_one_worker_reaches_the_others_cds_hooks(url: str) -> None:
    """Two processes of ``vigie serve --workers`` on one store: a version saved through one
    applies to the other's CDS Hooks services within its follower's delay (here none)."""
    with FactStore(url) as store:
        _facts_into(store, [*_potassium_patient("N1", "NEPHRO", 5.8)])
    with Api(url, live=False) as first, Api(url, live=False) as second:
        second.app.state.site_follower.ttl = 0.0  # every call reads the latest version
        assert second.order_sign_rules("N1", 5.8) == [HYPERKALAEMIA]
        first.put({"wards": {"NEPHRO": {"cursors": {"k_max": 6.0}}}})
        assert second.order_sign_rules("N1", 5.8) == []
        assert second.order_sign_rules("N1", 6.2) == [HYPERKALAEMIA]
        first.put({"wards": {"NEPHRO": {"cursors": {"k_max": 5.2}}}})
        assert second.order_sign_rules("N1", 5.4) == [HYPERKALAEMIA]


def test_the_follower_reads_the_store_at_most_once_per_delay(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Api(url, live=False) as api:
        follower = api.app.state.site_follower
        reads: list[int] = []
        real = ServiceStore.site_config

        def counted(self: ServiceStore, version: int | None = None) -> Any:
            reads.append(1)
            return real(self, version)

        monkeypatch.setattr(ServiceStore, "site_config", counted)
        follower.ttl = 3600.0
        follower.follow(force=True)  # starts a delay of an hour
        for _ in range(5):
            api.order_sign_rules("N9", 5.8)
        assert len(reads) == 1  # the forced read only


def _potassium_patient(pid: str, ward: str, value: float) -> list[AnyFact]:
    return [
        patient(pid),
        drug(f"ORD-{pid}", "C09AA05", pid=pid, label="ramipril 10 mg"),
        lab("potassium", value, datetime(2024, 3, 6, 7, 40), pid=pid, fid=f"LAB-{pid}"),
        Stay(
            fact_id=f"S-{pid}",
            patient_id=pid,
            source=src("PV1"),
            stay_id=f"S-{pid}",
            ward=ward,
            admit_time=datetime(2024, 3, 1),
            status="in-progress",
        ),
    ]


def _open(store: FactStore) -> set[str]:
    return {
        a.patient_id for a in AlertStore(store).worklist(limit=None) if a.rule_id == HYPERKALAEMIA
    }


# Live = batch, per ward --------------------------------------------------------------------------

# GER-1: a rule off; SSR-1: a cursor moved (from 75 years); CARDIO-1: the ANSM pack off.
SITE = """\
[wards.GER-1]
disable = ["infect.duration"]
[wards.SSR-1.cursors]
long_benzo_age_min = 85
[wards.CARDIO-1]
packs = ["vigie-default"]
"""


def _key(alert: Alert) -> tuple[Any, ...]:
    return (alert.id, alert.rule_id, alert.patient_id, alert.ward, alert.severity, alert.priority)


def _keys(alerts: list[Alert]) -> list[tuple[Any, ...]]:
    return [_key(alert) for alert in sorted(alerts, key=lambda a: a.id)]


def _batch(tmp_path: Path, url: str, at: datetime, config: Path | None) -> list[Alert]:
    out = tmp_path / f"batch-{config is not None}.json"
    result, _, _ = batch((), at, out, config=config, store=url)
    return result.alerts


def test_the_live_worklist_equals_the_batch_with_the_same_configuration(
    url: str, tmp_path: Path
) -> None:
    from vigie.synthetic import DEFAULT_START
    from vigie.synthetic.canonical import canonical_hospital
    from vigie.synthetic.catalogue import covered_rules

    facts, _ = canonical_hospital(120, 4, 11, rates=dict.fromkeys(covered_rules(), 0.08))
    at = DEFAULT_START + timedelta(days=4)
    config = tmp_path / "site.toml"
    config.write_text(SITE, encoding="utf-8")
    with FactStore(url) as store:
        _facts_into(store, facts)
        default = _batch(tmp_path, url, at, None)
        configured = _batch(tmp_path, url, at, config)
        _save(store, SITE)
        live = LiveWorklist(store, as_of=at, site=saved_site_config(store))
        live.start(at - timedelta(hours=12))  # then time passes: stays start and end
        live.tick(at)
        assert _keys(live.worklist()) == _keys(configured)
        stored = AlertStore(store).worklist(limit=None)
        assert sorted(a.id for a in stored) == sorted(a.id for a in configured)
        # Configured again while running (evaluators of unchanged settings kept): the same.
        live.configure(None)
        assert _keys(live.worklist()) == _keys(default)
        live.configure(saved_site_config(store))
        assert _keys(live.worklist()) == _keys(configured)

    # What the configuration changes, by the rules' meaning: only removals, each one of them.
    kept = {a.id for a in configured}
    assert kept <= {a.id for a in default}
    removed = [a for a in default if a.id not in kept]
    off_ger = {a.id for a in removed if a.ward == "GER-1" and a.rule_id == "infect.duration"}
    off_cardio = {a.id for a in removed if a.ward == "CARDIO-1" and a.rule_id.startswith("ansm.")}
    younger = {
        a.id
        for a in removed
        if a.ward == "SSR-1" and a.rule_id == "elderly.long_benzo" and _age(a) < 85
    }
    assert off_ger and off_cardio and younger  # each setting changed something here
    assert {a.id for a in removed} == off_ger | off_cardio | younger
    assert not any(a.rule_id == "infect.duration" and a.ward == "GER-1" for a in configured)
    assert any(a.rule_id == "infect.duration" and a.ward != "GER-1" for a in configured)
    assert all(_age(a) >= 85 for a in configured if a.rule_id == "elderly.long_benzo"
               and a.ward == "SSR-1")  # fmt: skip


def _age(alert: Alert) -> float:
    (age,) = [e.value for e in alert.evidence if e.name == "age"]
    assert isinstance(age, float | int)
    return float(age)


def test_a_patient_moving_ward_as_time_passes_runs_the_new_ward_settings(url: str) -> None:
    """A stay in cardiology until noon, then one in nephrology (known in advance): the
    potassium of 5.8 is an alert in cardiology (5.5), none in nephrology (6.0), and the live
    worklist follows the clock as the batch does."""
    noon = datetime(2024, 3, 6, 12, 0)
    facts: list[AnyFact] = [
        patient("T1"),
        drug("ORD-T1", "C09AA05", pid="T1", label="ramipril 10 mg"),
        lab("potassium", 5.8, datetime(2024, 3, 6, 7, 40), pid="T1", fid="LAB-T1"),
        Stay(fact_id="S-T1a", patient_id="T1", source=src("PV1"), stay_id="S-T1a",
             ward="CARDIO", admit_time=datetime(2024, 3, 1), discharge_time=noon,
             status="finished"),
        Stay(fact_id="S-T1b", patient_id="T1", source=src("PV1"), stay_id="S-T1b",
             ward="NEPHRO", admit_time=noon, status="in-progress"),
    ]  # fmt: skip
    with FactStore(url) as store:
        _facts_into(store, facts)
        _save(store, "[wards.NEPHRO.cursors]\nk_max = 6.0\n")
        live = LiveWorklist(store, site=saved_site_config(store))
        live.start(datetime(2024, 3, 6, 11, 0))
        assert [(a.rule_id, a.ward) for a in live.worklist()] == [(HYPERKALAEMIA, "CARDIO")]
        live.tick(datetime(2024, 3, 6, 13, 0))
        assert live.worklist() == []
        assert _open(store) == set()
        live.tick(datetime(2024, 3, 6, 11, 30))  # the clock back: cardiology again
        assert [a.ward for a in live.worklist()] == ["CARDIO"]


def test_facts_applied_while_a_configuration_loads_reach_it_without_waiting(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``configure`` reads the store for its new evaluators without holding the worklist: a
    potassium applied meanwhile is taken at once (under the configuration in force: 5.3 is
    under 5.5, no alert) and given to the new evaluators before they are swapped in (5.3 is
    above nephrology's new 5.2: an alert)."""
    with FactStore(url) as store:
        _facts_into(store, [*_potassium_patient("N1", "NEPHRO", 5.4)])
        _facts_into(store, [f for f in _potassium_patient("N2", "NEPHRO", 5.0) if f.kind != "lab"])
        live = LiveWorklist(store, as_of=AS_OF)
        live.start()
        assert live.worklist() == []
        late = lab("potassium", 5.3, datetime(2024, 3, 6, 8, 10), pid="N2", fid="LAB-N2")
        taken: list[Any] = []
        real = store.iter_facts

        def iter_facts(*args: Any, **kwargs: Any) -> Iterator[AnyFact]:
            for n, fact in enumerate(real(*args, **kwargs)):
                if n == 1:  # half-way through the store: an ingest's facts arrive
                    sender = threading.Thread(target=lambda: taken.append(live.apply([late])))
                    sender.start()
                    sender.join(timeout=10)
                    assert not sender.is_alive(), "apply waited for the configuration"
                    assert live.worklist() == []  # the configuration in force: 5.5
                yield fact

        monkeypatch.setattr(store, "iter_facts", iter_facts)
        site = parse_site_config("[wards.NEPHRO.cursors]\nk_max = 5.2\n", "v", live.packs)
        live.configure(site)
        assert taken and {a.patient_id for a in live.worklist()} == {"N1", "N2"}
        assert _open(store) == {"N1", "N2"}


def test_vigie_serve_is_told_when_a_configuration_built_evaluators(url: str) -> None:
    """``on_configured`` (``vigie serve`` freezes what new evaluators hold, out of the garbage
    collector's full passes) follows a configuration that built evaluators, once they serve;
    one that changes no setting builds none and is not told."""
    with FactStore(url) as store:
        _facts_into(store, _potassium_patient("N1", "NEPHRO", 5.4))
        live = LiveWorklist(store, as_of=AS_OF)
        told: list[bool] = []
        live.on_configured = lambda: told.append(live.worklist() != [])
        site = parse_site_config("[wards.NEPHRO.cursors]\nk_max = 5.2\n", "v", live.packs)
        live.start()
        live.configure(site)  # nephrology's k_max: an evaluator of its own
        assert told == [True]  # told after the swap: 5.4 is above nephrology's 5.2
        live.configure(site)  # the same settings: the evaluators are kept
        live.configure(parse_site_config("", "v2", live.packs))  # the hospital's, kept too
        assert told == [True] and live.worklist() == []
        before = LiveWorklist(store, as_of=AS_OF)
        before.on_configured = lambda: told.append(False)
        before.configure(site)  # before start: kept for it, nothing built
        before.start()
        assert told == [True] and before.worklist() != []


def test_a_version_the_live_worklist_cannot_apply_is_saved_and_said(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store unreadable while the live worklist reloads: the PUT answers 503 naming the
    saved version, the worklist keeps the settings it had, and a restart applies the version."""
    with Api(url) as api:
        _admit(api, "N1", "NEPHRO", "5.8")
        assert api.flagged() == {"N1"}

        def unreadable(*_: object, **__: object) -> Any:
            raise OSError("disk gone")

        monkeypatch.setattr(api.app.state.live.store, "iter_facts", unreadable)
        config = {"wards": {"NEPHRO": {"cursors": {"k_max": 6.0}}}}
        answer = api.client.put(
            "/config/cursors", json={"config": config}, headers=api.as_("rule_author")
        )
        assert answer.status_code == 503
        assert "version 1 is saved" in answer.json()["detail"]
        assert "disk gone" not in answer.text
        assert api.flagged() == {"N1"}  # the packs' default still: 5.8 > 5.5
        monkeypatch.undo()
    with Api(url) as api:
        assert api.flagged() == set()  # 5.8 is not above 6.0 in nephrology
        assert api.status("N1") == "resolved_by_data"
