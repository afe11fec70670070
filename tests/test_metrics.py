"""The quality committee's figures (``vigie.store.metrics``, ``GET /metrics``) and the
pseudonymised export (``GET /metrics/export.csv``), on SQLite and PostgreSQL.

One store per module and backend, built through the public APIs: real alerts from evaluating
facts (default pack: ``bio.hyperkalaemia`` and ``dose.paracetamol_max`` for every patient),
``AlertStore.reconcile`` at chosen times, ``ServiceStore.decide`` / ``record_outcome`` /
``put_ward``. Every expected figure below is counted by hand from the scenario (the table in
``SCENARIO``), never computed by the code under test. Days are Europe/Paris: UTC+1 until
2025-03-30, UTC+2 after.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import pytest

from tests.test_api import database_url, pytest_generate_tests  # noqa: F401 (fixtures)
from tests.test_evaluate import NOW, default_ir, drug, lab, patient, src
from vigie import settings
from vigie.api.app import create_app
from vigie.engine import FactSet, evaluate
from vigie.facts import AnyFact, Stay
from vigie.store import ServiceStore
from vigie.store.alerts import Dismissal, Intervention
from vigie.store.metrics import CSV_COLUMNS, MetricsFilter, compute, pseudonym
from vigie.store.service import Ward

with warnings.catch_warnings():  # starlette asks for httpx2, which this environment lacks
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

K, P = "bio.hyperkalaemia", "dose.paracetamol_max"
KEY = "metrics-test-key-0123456789"
OTHER_KEY = "another-test-key-9876543210"
MARCH = {"from": "2025-03-01", "to": "2025-03-31"}

WARDS = [
    Ward("H1", "CARDIO", "Cardiologie", 20),
    Ward("H1", "NEPHRO", "Néphrologie", 10),
    Ward("H1", "GERIA", "Gériatrie", 0),  # no beds declared
    Ward("H2", "PNEUMO", "Pneumologie", 40),
]
# patient -> (ward, when its two alerts were first raised, UTC). URG is not a declared ward.
PATIENTS = {
    "IPP9000001": ("CARDIO", datetime(2025, 3, 3, 8, 0)),
    "IPP9000002": ("CARDIO", datetime(2025, 3, 3, 9, 0)),
    "IPP9000003": ("CARDIO", datetime(2025, 3, 4, 8, 0)),
    "IPP9000004": ("NEPHRO", datetime(2025, 3, 4, 23, 30)),  # 5 March 00:30 in Paris
    "IPP9000005": ("GERIA", datetime(2025, 3, 10, 8, 0)),
    "IPP9000006": ("PNEUMO", datetime(2025, 3, 10, 8, 0)),
    "IPP9000007": ("URG", datetime(2025, 3, 11, 8, 0)),
    "IPP9000008": ("NEPHRO", datetime(2025, 3, 12, 8, 0)),
}
# (patient, rule, decision, decided at UTC, outcome). A decision is ("ip", problem,
# intervention) or ("dismiss", reason). Hours to decision in the comments.
SCENARIO: list[tuple[str, str, tuple[str, ...], datetime, str | None]] = [
    ("IPP9000001", K, ("ip", "7", "2"), datetime(2025, 3, 3, 10, 0), "accepted"),  # 2 h
    ("IPP9000001", P, ("ip", "4", "7"), datetime(2025, 3, 3, 14, 0), "accepted_modified"),  # 6
    ("IPP9000002", K, ("ip", "7", "1"), datetime(2025, 3, 4, 9, 0), "not_accepted"),  # 24 h
    ("IPP9000002", P, ("dismiss", "already_handled"), datetime(2025, 3, 3, 10, 0), None),  # 1
    ("IPP9000003", K, ("dismiss", "not_relevant"), datetime(2025, 3, 4, 12, 0), None),  # 4 h
    # 1 April 00:30 in Paris (UTC+2 since 30 March): an April IP; 662.5 h
    ("IPP9000003", P, ("ip", "4", "7"), datetime(2025, 3, 31, 22, 30), None),
    ("IPP9000004", K, ("ip", "7", "2"), datetime(2025, 3, 5, 8, 0), "accepted"),  # 8.5 h
    ("IPP9000004", P, ("dismiss", "accepted_risk"), datetime(2025, 3, 5, 0, 30), None),  # 1 h
    ("IPP9000005", K, ("ip", "7", "2"), datetime(2025, 3, 10, 12, 0), "accepted"),  # 4 h
    ("IPP9000005", P, ("dismiss", "data_error"), datetime(2025, 3, 10, 9, 0), None),  # 1 h
    ("IPP9000006", K, ("ip", "7", "2"), datetime(2025, 3, 10, 20, 0), "accepted"),  # 12 h
    ("IPP9000006", P, ("ip", "4", "3"), datetime(2025, 3, 11, 8, 0), "not_accepted"),  # 24 h
    ("IPP9000007", K, ("ip", "7", "2"), datetime(2025, 3, 11, 10, 0), None),  # 2 h
    # IPP9000007's paracetamol alert stays open
    ("IPP9000008", K, ("dismiss", "duplicate"), datetime(2025, 3, 12, 9, 0), None),  # 1 h
    # ... a new potassium reopens it on 20 March 08:00, then (3 h after the reopening):
    ("IPP9000008", K, ("ip", "7", "2"), datetime(2025, 3, 20, 11, 0), None),
    # IPP9000008's paracetamol alert stays open
]
REOPENED_AT = datetime(2025, 3, 20, 8, 0)


def facts_of(pid: str, ward: str, potassium: float = 5.9) -> list[AnyFact]:
    """K+ high under ramipril and 6 g of paracetamol a day: two alerts of the default pack."""
    return [
        patient(pid),
        drug(f"RAM-{pid}", "C09AA05", pid=pid, label="ramipril 5 mg"),
        drug(f"PARA-{pid}", "N02BE01", pid=pid, dose=1000, per_day=6, label="paracétamol 1 g"),
        lab("potassium", 5.9, datetime(2024, 3, 4, 8, 0), pid=pid, fid=f"K1-{pid}"),
        *(
            [lab("potassium", potassium, datetime(2024, 3, 4, 10, 0), pid=pid, fid=f"K2-{pid}")]
            if potassium != 5.9
            else []
        ),
        Stay(
            fact_id=f"SEJ-{pid}",
            patient_id=pid,
            source=src("PV1"),
            stay_id=f"SEJ-{pid}",
            ward=ward,
            admit_time=datetime(2024, 3, 1),
            status="in-progress",
        ),
    ]


IDS: dict[tuple[str, str], str] = {}  # (patient, rule) -> the alert id the engine gave


def alert_of(pid: str, rule: str) -> str:
    return IDS[(pid, rule)]


def build(service: ServiceStore) -> None:
    ir = default_ir()
    for declared in WARDS:
        service.put_ward(declared, actor="admin.a")
    for pid, (ward, opened) in PATIENTS.items():
        raised = evaluate(ir, FactSet(facts_of(pid, ward)), NOW)
        assert {a.rule_id for a in raised} == {K, P}
        IDS.update(((pid, a.rule_id), a.id) for a in raised)
        service.alerts.reconcile(raised, opened, scope={pid})
    for pid, rule, decision, at, outcome in SCENARIO:
        if pid == "IPP9000008" and decision[0] == "ip":  # reopened by new evidence first
            changed = evaluate(ir, FactSet(facts_of(pid, "NEPHRO", potassium=6.1)), NOW)
            done = service.alerts.reconcile(changed, REOPENED_AT, scope={pid})
            assert done.reopened == [alert_of(pid, K)]
        if decision[0] == "ip":
            chosen: Intervention | Dismissal = Intervention(
                "done", code=decision[2], problem_code=decision[1], prescriber_contacted=True
            )
        else:
            chosen = Dismissal(decision[1], "seen")
        service.decide(alert_of(pid, rule), chosen, actor="pharmacist.a", at=at)
        if outcome is not None:
            service.record_outcome(alert_of(pid, rule), outcome, actor="pharmacist.a")


@dataclass
class Api:
    client: TestClient
    service: ServiceStore
    tokens: dict[str, str]
    url: str  # the store's database

    def get(self, path: str, role: str | None, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens.get(role or '', 'vigie_forged')}"}
        return self.client.get(path, params=params, headers=headers if role else {})


@pytest.fixture(scope="module")
def api(database_url: str) -> Iterator[Api]:  # noqa: F811 (the fixture imported above)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VIGIE_TIMEZONE", "Europe/Paris")
        patch.delenv("VIGIE_PSEUDONYM_KEY", raising=False)
        settings.reload()
        app = create_app(database_url)
        service: ServiceStore = app.state.service
        build(service)
        roles = ("pharmacist", "rule_author", "admin", "feed")
        tokens = {role: service.add_user(f"{role}.a", [role])[1] for role in roles}
        with TestClient(app) as client:
            yield Api(client, service, tokens, database_url)
        service.facts.close()
    settings.reload()


def march(api: Api, **params: Any) -> Any:
    answer = api.get("/metrics", "pharmacist", **MARCH, **params)
    assert answer.status_code == 200, answer.json()
    return answer.json()


# IP per 100 beds per month -----------------------------------------------------------------------


def test_ip_per_100_beds_per_ward_and_hospital(api: Api) -> None:
    rates = march(api)["ip_per_100_beds"]
    wards = {(w["hospital"], w["ward"], w["month"]): w for w in rates["wards"]}
    # CARDIO: 3 IPs in March (IPP9000001 x2, IPP9000002 K), 20 beds: 3 / 20 x 100 = 15
    cardio = wards[("H1", "CARDIO", "2025-03")]
    assert (cardio["ip"], cardio["beds"], cardio["ip_per_100_beds"]) == (3, 20, 15.0)
    assert cardio["note"] is None and cardio["partial"] is False and cardio["label"]
    # NEPHRO: IPP9000004 K and IPP9000008 K (decided twice: one IP), 10 beds: 20
    assert (
        wards[("H1", "NEPHRO", "2025-03")]["ip"],
        wards[("H1", "NEPHRO", "2025-03")]["ip_per_100_beds"],
    ) == (2, 20.0)
    # GERIA: 1 IP, 0 beds: no rate, a note (never a division by zero)
    geria = wards[("H1", "GERIA", "2025-03")]
    assert (geria["ip"], geria["beds"], geria["ip_per_100_beds"]) == (1, 0, None)
    assert "no beds" in geria["note"]
    # PNEUMO: 2 IPs / 40 beds = 5
    assert wards[("H2", "PNEUMO", "2025-03")]["ip_per_100_beds"] == 5.0
    # URG is not declared: its IP is shown, in no hospital, without a rate
    urg = wards[(None, "URG", "2025-03")]
    assert (urg["ip"], urg["beds"], urg["ip_per_100_beds"]) == (1, None, None)
    assert "not declared" in urg["note"]
    assert len(rates["wards"]) == 5  # one month, four declared wards and URG
    hospitals = {(h["hospital"], h["month"]): h for h in rates["hospitals"]}
    # H1: 3 + 2 + 1 = 6 IPs over 20 + 10 + 0 = 30 beds = 20; H2: 2 / 40 = 5
    assert (hospitals[("H1", "2025-03")]["ip"], hospitals[("H1", "2025-03")]["beds"]) == (6, 30)
    assert hospitals[("H1", "2025-03")]["ip_per_100_beds"] == 20.0
    assert hospitals[("H2", "2025-03")]["ip_per_100_beds"] == 5.0
    assert set(hospitals) == {("H1", "2025-03"), ("H2", "2025-03")}
    assert any("not declared" in note for note in march(api)["notes"])


def test_the_month_is_the_hospitals_and_a_cut_month_is_partial(api: Api) -> None:
    got = api.get("/metrics", "admin", **{"from": "2025-03-20", "to": "2025-04-30"}).json()
    wards = {(w["ward"], w["month"]): w for w in got["ip_per_100_beds"]["wards"]}
    # IPP9000003's IP at 31 March 22:30 UTC is 1 April 00:30 in Paris: April, 1 / 20 = 5
    assert (wards[("CARDIO", "2025-04")]["ip"], wards[("CARDIO", "2025-04")]["partial"]) == (
        1,
        False,
    )
    assert wards[("CARDIO", "2025-04")]["ip_per_100_beds"] == 5.0
    # March from the 20th: only IPP9000008's second decision (NEPHRO); the month is cut
    assert (wards[("NEPHRO", "2025-03")]["ip"], wards[("NEPHRO", "2025-03")]["partial"]) == (
        1,
        True,
    )
    assert wards[("CARDIO", "2025-03")]["ip"] == 0
    hospitals = {(h["hospital"], h["month"]): h for h in got["ip_per_100_beds"]["hospitals"]}
    assert hospitals[("H1", "2025-04")]["ip_per_100_beds"] == round(100 * 1 / 30, 2)  # 3.33


# Alerts per day, funnel, PPV ---------------------------------------------------------------------


def test_alerts_opened_per_day_in_the_hospitals_days(api: Api) -> None:
    days = {d["day"]: d for d in march(api)["alerts_per_day"]}
    assert len(days) == 31 and sum(d["total"] for d in days.values()) == 16  # 8 patients x 2
    assert days["2025-03-03"] == {"day": "2025-03-03", "total": 4, "by_rule": {K: 2, P: 2}}
    assert days["2025-03-04"]["total"] == 2  # IPP9000003 only: IPP9000004 is the 5th in Paris
    assert days["2025-03-05"]["by_rule"] == {K: 1, P: 1}
    assert days["2025-03-10"]["total"] == 4 and days["2025-03-01"]["total"] == 0
    assert days["2025-03-20"]["total"] == 0  # a reopening is not an opening


def test_the_funnel_per_rule(api: Api) -> None:
    funnel = march(api)["funnel"]
    by_rule = {row["rule_id"]: row for row in funnel["by_rule"]}
    # hyperkalaemia: 8 alerts; 9 decisions (IPP9000008 twice); 7 IPs, all relevant; accepted:
    # IPP9000001, 4, 5, 6; not accepted: IPP9000002; awaiting: IPP9000007, 8
    assert by_rule[K] == {
        "rule_id": K, "alerts": 8, "decided": 9, "relevant": 7, "ip": 7,
        "accepted": 4, "not_accepted": 1, "awaiting_outcome": 2,
    }  # fmt: skip
    # paracetamol: 8 alerts; 5 decisions in March (IPP9000003's is April's); IPs IPP9000001
    # (accepted with a modification) and 6 (not accepted); relevant adds already_handled and
    # accepted_risk, not data_error
    assert by_rule[P] == {
        "rule_id": P, "alerts": 8, "decided": 5, "relevant": 4, "ip": 2,
        "accepted": 1, "not_accepted": 1, "awaiting_outcome": 0,
    }  # fmt: skip
    assert funnel["total"] == {
        "rule_id": None, "alerts": 16, "decided": 14, "relevant": 11, "ip": 9,
        "accepted": 5, "not_accepted": 2, "awaiting_outcome": 2,
    }  # fmt: skip


def test_ppv_per_rule_with_its_counts_and_as_the_priority_reads_it(api: Api) -> None:
    got = march(api)
    ppv = {row["rule_id"]: row for row in got["ppv"]}
    assert ppv[K] == {"rule_id": K, "decided": 9, "relevant": 7, "ppv": round(7 / 9, 4)}
    assert ppv[P] == {"rule_id": P, "decided": 5, "relevant": 4, "ppv": 0.8}
    assert got["ppv_total"] == {
        "rule_id": None,
        "decided": 14,
        "relevant": 11,
        "ppv": round(11 / 14, 4),
    }
    # Over all time (April's IP too): paracetamol 5 relevant of 6; the priority's observed
    # PPV counts the same
    everything = api.get("/metrics", "rule_author").json()
    assert {r["rule_id"]: (r["relevant"], r["decided"]) for r in everything["ppv"]} == {
        K: (7, 9),
        P: (5, 6),
    }
    assert api.service.alerts.observed_ppv(min_decisions=1) == {K: 7 / 9, P: 5 / 6}


def test_median_time_to_decision(api: Api) -> None:
    times = march(api)["time_to_decision"]
    # hyperkalaemia, hours: 2, 24, 4, 8.5, 4, 12, 2, 1 and 3 (the second decision of
    # IPP9000008 counts from its reopening) -> 1 2 2 3 [4] 4 8.5 12 24
    by_rule = {row["rule_id"]: row for row in times["by_rule"]}
    assert by_rule[K] == {"rule_id": K, "decisions": 9, "median_hours": 4.0}
    # paracetamol: 6, 1, 1, 1, 24 -> 1 1 [1] 6 24
    assert by_rule[P] == {"rule_id": P, "decisions": 5, "median_hours": 1.0}
    # all 14: 1 1 1 1 2 2 [3 4] 4 6 8.5 12 24 24 -> 3.5
    assert times["overall"] == {"rule_id": None, "decisions": 14, "median_hours": 3.5}


def test_ips_by_sfpc_problem_and_intervention_code(api: Api) -> None:
    got = march(api)
    problems = {row["code"]: row["ip"] for row in got["ip_by_problem"]}
    assert problems == {"7": 7, "4": 2}
    assert [row["code"] for row in got["ip_by_problem"]] == ["4", "7"]
    assert all(row["label"] for row in got["ip_by_problem"])  # SFPC displays
    assert {row["code"]: row["ip"] for row in got["ip_by_intervention"]} == {
        "2": 6,
        "1": 1,
        "7": 1,
        "3": 1,
    }


def test_filters_by_ward_and_hospital(api: Api) -> None:
    nephro = march(api, ward="NEPHRO")
    # IPP9000004 and 8: 4 alerts; decisions: IP, accepted_risk, duplicate, IP
    assert nephro["funnel"]["total"] == {
        "rule_id": None, "alerts": 4, "decided": 4, "relevant": 3, "ip": 2,
        "accepted": 1, "not_accepted": 0, "awaiting_outcome": 1,
    }  # fmt: skip
    assert [(w["ward"], w["ip"]) for w in nephro["ip_per_100_beds"]["wards"]] == [("NEPHRO", 2)]
    h2 = march(api, hospital="H2")
    assert (h2["funnel"]["total"]["alerts"], h2["funnel"]["total"]["ip"]) == (2, 2)
    assert [h["hospital"] for h in h2["ip_per_100_beds"]["hospitals"]] == ["H2"]
    h1 = march(api, hospital="H1")
    assert h1["funnel"]["total"]["alerts"] == 12  # IPP9000001..5 and 8
    assert h1["period"] == {**MARCH, "hospital": "H1"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2025-03-31", "to": "2025-03-01"}, "ends"),
        ({"hospital": "H9"}, "H9"),
        ({"hospital": "H2", "ward": "CARDIO"}, "CARDIO"),
        ({"from": "March"}, "from"),
        ({"from": "0001-01-01"}, "from"),
        ({"to": "9999-12-31"}, "to"),
        ({"from": "2010-01-01"}, "at most 3660 days"),  # stretched to the data (2025)
    ],
)
def test_bad_filters_are_422_saying_why(api: Api, params: dict[str, str], field: str) -> None:
    answer = api.get("/metrics", "pharmacist", **params)
    assert answer.status_code == 422 and field in str(answer.json()["detail"])


# Roles and audit ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/metrics", {"pharmacist", "admin", "rule_author"}),
        ("/metrics/export.csv", {"pharmacist", "admin"}),
    ],
)
def test_roles(api: Api, path: str, allowed: set[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIE_PSEUDONYM_KEY", KEY)
    assert api.get(path, None).status_code == 401
    assert api.get(path, "forged").status_code == 401
    for role in ("pharmacist", "rule_author", "admin", "feed"):
        assert api.get(path, role).status_code == (200 if role in allowed else 403), role


def test_reads_are_audited_with_their_filters(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    march(api, ward="CARDIO")
    entry = api.service.audit_log(actor="pharmacist.a", action="read", limit=1)[0]
    assert (entry.resource, entry.patient_id) == ("metrics", None)
    assert entry.detail == {"filters": {**MARCH, "ward": "CARDIO"}}
    monkeypatch.setenv("VIGIE_PSEUDONYM_KEY", KEY)
    api.get("/metrics/export.csv", "admin", **MARCH)
    entry = api.service.audit_log(actor="admin.a", action="export", limit=1)[0]
    assert entry.resource == "metrics/export.csv"
    assert entry.detail == {"filters": MARCH, "rows": 17}


# The pseudonymised export ------------------------------------------------------------------------


def export(api: Api, key: str, **params: Any) -> tuple[bytes, list[dict[str, str]]]:
    os.environ["VIGIE_PSEUDONYM_KEY"] = key
    try:
        answer = api.get("/metrics/export.csv", "pharmacist", **params)
    finally:
        del os.environ["VIGIE_PSEUDONYM_KEY"]
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/csv")
    body = answer.content
    text = body.decode("utf-8-sig")
    return body, list(csv.DictReader(io.StringIO(text, newline=""), delimiter=";"))


def test_the_export_has_no_patient_id_nor_stay_nor_time_of_day(api: Api) -> None:
    body, rows = export(api, KEY, **MARCH)
    assert body.startswith(b"\xef\xbb\xbf")  # UTF-8 byte order mark, for Excel
    assert body.split(b"\r\n")[0].decode("utf-8-sig").split(";") == list(CSV_COLUMNS)
    for pid in PATIENTS:
        assert pid.encode() not in body and f"SEJ-{pid}".encode() not in body
    assert b"IPP" not in body and b"SEJ" not in body and b"T0" not in body
    # 14 decisions in March, and the alerts opened in March without a decision in it:
    # IPP9000003's paracetamol (decided in April), IPP9000007's and 8's paracetamol
    assert len(rows) == 17
    decided = [r for r in rows if r["decision"]]
    assert len(decided) == 14 and sum(r["decision"] == "intervention" for r in decided) == 9
    assert sum(r["relevant"] == "1" for r in decided) == 11
    assert sum(r["outcome"] in ("accepted", "accepted_modified") for r in decided) == 5
    assert {r["opened_day"] for r in rows} <= {f"2025-03-{d:02d}" for d in range(1, 32)}
    nephro_night = [r for r in rows if r["ward"] == "NEPHRO" and r["opened_day"] == "2025-03-05"]
    assert len(nephro_night) == 2  # IPP9000004 opened 4 March 23:30 UTC, the 5th in Paris
    second = [r for r in rows if r["decision_day"] == "2025-03-20"]
    assert [(r["minutes_to_decision"], r["hospital"], r["problem_code"]) for r in second] == [
        ("180", "H1", "7")
    ]
    urg = [r for r in rows if r["ward"] == "URG"]
    assert len(urg) == 2 and {r["hospital"] for r in urg} == {""}


def test_the_pseudonym_is_stable_for_one_key_and_changes_with_another(api: Api) -> None:
    _, first = export(api, KEY, **MARCH)
    _, again = export(api, KEY, **MARCH)
    _, other = export(api, OTHER_KEY, **MARCH)
    assert first == again
    mine = {r["patient"] for r in first}
    assert len(mine) == 8 and all(len(p) == 16 for p in mine)
    assert mine.isdisjoint({r["patient"] for r in other})
    # the same patient's rows share a pseudonym: HMAC-SHA256(key, "patient" NUL id)
    expected = pseudonym(KEY.encode(), "patient", "IPP9000006")
    assert sum(r["patient"] == expected for r in first) == 2
    assert {r["ward"] for r in first if r["patient"] == expected} == {"PNEUMO"}


@pytest.mark.parametrize("key", [None, "short"])
def test_the_export_without_a_usable_key_is_a_clear_error(api: Api, key: str | None) -> None:
    if key is not None:
        os.environ["VIGIE_PSEUDONYM_KEY"] = key
    try:
        answer = api.get("/metrics/export.csv", "pharmacist")
    finally:
        os.environ.pop("VIGIE_PSEUDONYM_KEY", None)
    assert answer.status_code == 503
    detail = answer.json()["detail"]
    assert "VIGIE_PSEUDONYM_KEY" in detail and "at least 16 characters" in detail
    assert "short" not in detail  # the key is never shown


def test_the_store_function_agrees_with_the_route(api: Api) -> None:
    """``compute`` called directly (as ``vigie metrics`` would), same figures."""
    figures = compute(
        api.service, MetricsFilter(date(2025, 3, 1), date(2025, 3, 31)), today=date(2026, 1, 1)
    )
    assert (figures.funnel.total.ip, figures.funnel.total.decided) == (9, 14)
    assert {(w.ward, w.ip_per_100_beds) for w in figures.ip_per_100_beds.wards} == {
        ("CARDIO", 15.0),
        ("NEPHRO", 20.0),
        ("GERIA", None),
        ("PNEUMO", 5.0),
        ("URG", None),
    }


def test_a_text_cell_is_never_a_spreadsheet_formula() -> None:
    """A ward code comes from the feeds: ``=HYPERLINK(...)`` must stay text in a spreadsheet."""
    from vigie.store.metrics import _cell, export_csv

    assert [_cell(t) for t in ("=1+1", "+33", "-2", "@SUM(A1)", "CARDIO", None)] == [
        "'=1+1",
        "'+33",
        "'-2",
        "'@SUM(A1)",
        "CARDIO",
        "",
    ]
    body = export_csv([[_cell('=HYPERLINK("x";"y")'), "a;b"]])
    assert body.decode("utf-8-sig").split("\r\n")[1] == '"\'=HYPERLINK(""x"";""y"")";"a;b"'


def test_vigie_metrics_prints_the_same_figures(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from vigie.api.cli import main

    argv = ["metrics", "--database", api.url, "--from", "2025-03-01", "--to", "2025-03-31"]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == march(api)
    assert main([*argv, "--ward", "CARDIO"]) == 0
    out = capsys.readouterr().out
    assert "H1\tCARDIO\t2025-03\t3\t20\t15.0" in out  # 3 IPs / 20 beds
    assert f"{K}\t3\t3\t2\t2\t1\t0.6667" in out  # IPP9000001..3: 2 relevant of 3 decided
    assert "IPP" not in out
    assert main(["metrics", "--database", api.url, "--hospital", "H9"]) != 0
    assert "H9" in capsys.readouterr().err
