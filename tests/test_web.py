"""The pharmacist's web page (``vigie.api.routes.web`` and ``vigie/api/static``): its files and
codes over HTTP, then the page end to end in a real headless Chromium (Debian's ``chromium`` and
``chromedriver`` in /usr/bin, driven by Selenium) against the real app served by uvicorn on a
SQLite file holding real alerts of three patients: log in (a wrong token and a token without
the role refused in French), the worklist by priority and its filters, the top alert with its
evidence and rule, an intervention with SFPC codes, the alert gone from the worklist, its
outcome recorded later, the IP counted in the metrics page; ``vigie demo --serve``.

The browser test fails (never skips) when the browser, its driver or Selenium is missing: CI
installs them (.ci).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.test_api import _second_patient
from tests.test_evaluate import NOW, default_ir, drug, hyperkalaemia_facts, lab, patient, src
from vigie.api.app import create_app
from vigie.api.routes import web
from vigie.engine import FactSet, evaluate
from vigie.facts import AnyFact, Stay
from vigie.rules.check import INTERVENTION_CODES, PROBLEM_CODES
from vigie.settings import site_timezone
from vigie.store import FactStore, ServiceStore, Ward
from vigie.store.alerts import DISMISS_REASONS
from vigie.store.service import OUTCOMES

with warnings.catch_warnings():  # starlette asks for httpx2, which this environment lacks
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HOSTILE_LABEL = '<img src=x id="injected">ramipril'  # a drug label that must stay text


def _third_patient() -> list[AnyFact]:
    """p3: K+ 6.1 under a ramipril line whose label is markup, in geriatrics."""
    return [
        patient("p3"),
        drug("ORD3", "C09AA05", pid="p3", label=HOSTILE_LABEL),
        lab("potassium", 6.1, datetime(2024, 3, 4, 7, 0), pid="p3", fid="LAB3"),
        Stay(
            fact_id="S3",
            patient_id="p3",
            source=src("PV1"),
            stay_id="S3",
            ward="GERIA",
            admit_time=datetime(2024, 3, 2),
            status="in-progress",
        ),
    ]


# The page's files and codes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    app = create_app(f"sqlite:///{tmp_path_factory.mktemp('web') / 'vigie.db'}")
    with TestClient(app) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("path", "media_type", "starts"),
    [
        ("/", "text/html", b"<!DOCTYPE html>"),
        ("/static/index.html", "text/html", b"<!DOCTYPE html>"),
        ("/static/app.js", "text/javascript", b"// Vigie"),
        ("/static/style.css", "text/css", b"/* Vigie"),
    ],
)
def test_the_page_files_need_no_token_and_have_their_type(
    client: TestClient, path: str, media_type: str, starts: bytes
) -> None:
    answer = client.get(path)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == f"{media_type}; charset=utf-8"
    assert answer.content.startswith(starts)
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in answer.headers["content-security-policy"]


@pytest.mark.parametrize(
    "path", ["/static/nothing.js", "/static/__init__.py", "/static/..%2fapp.py"]
)
def test_only_the_page_files_are_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_the_page_has_no_inline_script_or_style_and_writes_no_markup() -> None:
    """The policy forbids inline code; values reach the DOM as text only."""
    html = web.PAGE_FILES["index.html"].decode()
    script = web.PAGE_FILES["app.js"].decode()
    assert "<script>" not in html and " style=" not in html and "onclick" not in html
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


def test_the_codes_are_the_apis_with_french_labels(client: TestClient) -> None:
    codes = client.get("/static/codes.json").json()
    assert [c["code"] for c in codes["problems"]] == list(PROBLEM_CODES)
    assert [c["code"] for c in codes["interventions"]] == list(INTERVENTION_CODES)
    assert {c["code"] for c in codes["dismiss_reasons"]} == set(DISMISS_REASONS)
    assert {c["code"] for c in codes["outcomes"]} == set(OUTCOMES)
    labels = {c["code"]: c["label"] for c in codes["problems"]}
    assert labels["4"] == "Surdosage" and labels["6.4"].endswith("contre-indiquée")
    assert {c["code"]: c["label"] for c in codes["interventions"]}["7"] == "Adaptation posologique"


def test_the_page_is_not_in_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path == "/" or path.startswith("/static")]


def test_the_page_files_ship_in_the_package() -> None:
    folder = Path(web.__file__).parents[1] / "static"
    shipped = {p.name for p in folder.iterdir() if p.suffix in {".html", ".js", ".css"}}
    assert shipped == set(web.PAGE_FILES) == {"index.html", "app.js", "style.css"}
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text(encoding="utf-8")
    assert all(f'"*.{suffix}"' in pyproject for suffix in ("html", "js", "css"))


# The page in a real browser ----------------------------------------------------------------------


@dataclass
class Served:
    url: str
    service: ServiceStore
    token: str
    feed_token: str


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The real app under uvicorn on 127.0.0.1 and a free port, in a thread of this process,
    over a SQLite file with the alerts of three patients, wards with beds and a pharmacist."""
    import uvicorn

    app = create_app(f"sqlite:///{tmp_path_factory.mktemp('web-e2e') / 'vigie.db'}")
    service: ServiceStore = app.state.service
    facts = [*hyperkalaemia_facts(), *_second_patient(), *_third_patient()]
    with service.facts._write_session() as session:
        service.facts.save_facts(session, facts, None)
        session.commit()
    service.alerts.reconcile(evaluate(default_ir(), FactSet(facts), NOW), NOW)
    for code, label, beds in [("CARDIO", "Cardiologie", 30), ("NEPHRO", "Néphrologie", 20)]:
        service.put_ward(Ward("H1", code, label, beds), "admin.web")
    service.put_ward(Ward("H1", "GERIA", "Gériatrie", 40), "admin.web")
    _, token = service.add_user("pharm.web", ["pharmacist"])
    _, feed_token = service.add_user("feed.web", ["feed"])

    sock = _free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the service did not start under uvicorn")
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{port}", service, token, feed_token)
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.fail(
            f"the browser test needs Debian's chromium and chromedriver: {', '.join(missing)} "
            "missing (apt-get install chromium chromium-driver; CI installs them through .ci)"
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service as DriverService
    except ImportError:
        pytest.fail("the browser test needs selenium: pip install -e '.[dev]'")
    options = Options()
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--lang=fr-FR",
    ):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium") or str(CHROMIUM)
    driver = webdriver.Chrome(service=DriverService(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Callable[[Any], Any], what: str, seconds: float = 10) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    waiting = WebDriverWait(
        driver, seconds, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
    )
    try:
        return waiting.until(condition)
    except TimeoutException:
        shown = driver.find_element("tag name", "body").text[:1500]
        pytest.fail(f"the page did not show {what} within {seconds} s; it shows:\n{shown}")


def _visible(driver: Any, element_id: str) -> bool:
    found = driver.find_elements("id", element_id)
    return bool(found) and found[0].is_displayed()


def _worklist_ids(driver: Any) -> list[str]:
    """The alert ids of the worklist's rows, read at once (the rows are redrawn as a whole)."""
    ids: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#worklist tbody tr'))"
        ".map(row => row.dataset.alertId)"
    )
    return ids


@pytest.mark.slow
def test_log_in_decide_the_top_alert_and_see_it_counted(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver, service = browser, served.service
    open_ids = [a.id for a in service.alerts.worklist()]
    assert len(open_ids) == 3

    # Log in: a wrong token is refused in French, the right one opens the worklist.
    driver.get(served.url + "/")
    _wait(driver, lambda d: _visible(d, "view-login"), "the login form")
    driver.find_element(By.ID, "token").send_keys("vigie_not-a-token")
    driver.find_element(By.ID, "login-submit").click()
    error = _wait(
        driver,
        lambda d: _visible(d, "login-error") and d.find_element(By.ID, "login-error"),
        "the refusal of a wrong token",
    )
    assert error.text.startswith("Jeton refusé")
    token = driver.find_element(By.ID, "token")
    token.clear()
    token.send_keys(served.feed_token)  # a valid token without the pharmacist role
    driver.find_element(By.ID, "login-submit").click()
    _wait(
        driver,
        lambda d: d.find_element(By.ID, "login-error").text.startswith("Accès refusé"),
        "the refusal of a token without the pharmacist role",
    )
    token = driver.find_element(By.ID, "token")
    token.clear()
    token.send_keys(served.token)
    driver.find_element(By.ID, "login-submit").click()

    # The worklist, by priority, escaped.
    _wait(driver, lambda d: len(_worklist_ids(d)) == 3, "the three open alerts")
    assert _worklist_ids(driver) == open_ids
    assert driver.find_element(By.ID, "worklist-count").text.startswith("3 alertes ouvertes")
    assert not driver.find_elements(By.ID, "injected")
    assert HOSTILE_LABEL in driver.find_element(By.ID, "worklist").text
    top = service.alerts.get(open_ids[0])
    first_row = driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")[0]
    assert top.ward is not None and top.ward in first_row.text
    severity = {"critical": "critique", "major": "majeure", "moderate": "modérée"}
    assert first_row.find_element(By.CSS_SELECTOR, ".sev").text == severity[top.severity]

    # Filters: a ward shows its alert only.
    Select(driver.find_element(By.ID, "filter-severity")).select_by_value(top.severity)
    ward = driver.find_element(By.ID, "filter-ward")
    ward.send_keys("NEPHRO")
    driver.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    nephro = [a.id for a in service.alerts.worklist(ward="NEPHRO")]
    _wait(driver, lambda d: _worklist_ids(d) == nephro, "the NEPHRO alert only")
    driver.find_element(By.ID, "filters-clear").click()
    _wait(driver, lambda d: len(_worklist_ids(d)) == 3, "the worklist unfiltered")

    # The top alert: its evidence, rule and patient context.
    driver.find_elements(By.CSS_SELECTOR, "#worklist tbody tr a")[0].click()
    _wait(driver, lambda d: _visible(d, "decide"), "the top alert and its decision form")
    assert driver.find_element(By.ID, "alert-message").text == top.payload["message"]
    evidence = driver.find_element(By.ID, "evidence").text
    k = next(e for e in top.payload["evidence"] if e["kind"] == "lab")
    assert "potassium" in evidence and "OBX[1]-5" in evidence
    assert f"{k['value']}".replace(".", ",") in evidence
    assert driver.find_element(By.ID, "rule-id").text == "bio.hyperkalaemia"
    assert driver.find_element(By.ID, "rule-text").text.startswith("rule bio.hyperkalaemia ")
    assert "default.rules, ligne " in driver.find_element(By.ID, "rule-source").text
    assert driver.find_elements(By.CSS_SELECTOR, "#orders tbody tr")
    assert "Aucune décision" in driver.find_element(By.ID, "decisions-empty").text

    # An intervention with SFPC codes other than the rule's.
    Select(driver.find_element(By.ID, "ip-problem")).select_by_value("4")
    Select(driver.find_element(By.ID, "ip-intervention")).select_by_value("7")
    assert Select(driver.find_element(By.ID, "ip-problem")).first_selected_option.text == (
        "4 — Surdosage"
    )
    driver.find_element(By.ID, "ip-comment").send_keys("ramipril 5 → 2,5 mg, K+ demain")
    driver.find_element(By.ID, "ip-contacted").click()
    driver.find_element(By.ID, "ip-submit").click()

    # Back to the worklist: the alert is gone.
    _wait(driver, lambda d: _visible(d, "view-worklist") and len(_worklist_ids(d)) == 2, "2 alerts")
    assert _worklist_ids(driver) == open_ids[1:]
    assert driver.find_element(By.ID, "message").text.startswith("Intervention enregistrée")
    stored = service.alerts.get(top.id)
    (decision,) = service.decisions(top.id)
    assert stored.status == "intervention"
    assert (decision.problem_code, decision.intervention_code) == ("4", "7")
    assert (decision.actor, decision.prescriber_contacted) == ("pharm.web", True)
    assert decision.comment == "ramipril 5 → 2,5 mg, K+ demain"

    # Later, its outcome: from the interventions awaiting one (under the worklist), back to it.
    _wait(driver, lambda d: _visible(d, "awaiting"), "the interventions awaiting an outcome")
    (waiting,) = driver.find_elements(By.CSS_SELECTOR, "#awaiting li")
    assert top.rule_id in waiting.text and top.patient_id in waiting.text
    waiting.find_element(By.TAG_NAME, "a").click()
    _wait(driver, lambda d: _visible(d, "form-outcome"), "the outcome form")
    assert not _visible(driver, "decide")
    Select(driver.find_element(By.ID, "outcome")).select_by_value("accepted_modified")
    driver.find_element(By.ID, "outcome-comment").send_keys("2,5 mg")
    driver.find_element(By.ID, "outcome-submit").click()
    _wait(
        driver,
        lambda d: "Acceptée avec modification" in d.find_element(By.ID, "decisions").text,
        "the outcome among the decisions",
    )
    assert not _visible(driver, "form-outcome")
    (decision,) = service.decisions(top.id)
    assert (decision.outcome, decision.outcome_comment) == ("accepted_modified", "2,5 mg")
    driver.execute_script("location.hash = '#/worklist'")  # nothing awaits an outcome now
    _wait(driver, lambda d: _visible(d, "view-worklist"), "the worklist")
    _wait(driver, lambda d: not _visible(d, "awaiting"), "no intervention awaiting an outcome")

    # The metrics page counts it: one IP in the top alert's ward this month.
    driver.find_element(By.ID, "nav-metrics").click()
    month = datetime.now(UTC).astimezone(site_timezone()).strftime("%Y-%m")  # the metrics' months
    row = _wait(
        driver,
        lambda d: next(
            (
                r
                for r in d.find_elements(By.CSS_SELECTOR, "#ip-table tbody tr")
                if r.get_attribute("data-month") == month
                and r.get_attribute("data-ward") == top.ward
            ),
            None,
        ),
        f"the IP of {top.ward} in {month}",
    )
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    beds = {"CARDIO": 30, "NEPHRO": 20, "GERIA": 40}[top.ward]
    assert cells[3:] == ["1", str(beds), f"{100 / beds:.1f}".replace(".", ",")]
    hospital = driver.find_element(
        By.CSS_SELECTOR, f"#ip-table tbody tr[data-month='{month}'][data-ward='']"
    )
    assert [cell.text for cell in hospital.find_elements(By.TAG_NAME, "td")][1:] == [
        "H1",
        "tout l'établissement",
        "1",
        "90",
        "1,1",
    ]
    # The chart: the hospital's series first, one bar for the month, its value written on it.
    chart = driver.find_element(By.CSS_SELECTOR, "#chart svg")
    bars = chart.find_elements(By.CSS_SELECTOR, "rect.bar")
    assert [bar.get_attribute("data-month") for bar in bars] == [month]
    assert "1,1" in [label.text for label in chart.find_elements(By.CSS_SELECTOR, "text.value")]
    assert chart.is_displayed() and float(bars[0].get_attribute("height")) > 0
    problems = driver.find_element(By.ID, "ip-problems").text
    assert "Surdosage" in problems


# vigie demo --serve ------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_serve_shows_the_page_with_real_alerts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's hospital, its worklist refreshed, its wards with beds and a pharmacist whose
    printed token opens the worklist; uvicorn.run replaced by a client of the app."""
    import logging

    import uvicorn

    from vigie.api.cli import main

    served: dict[str, Any] = {}

    def run(app: Any, **options: Any) -> None:
        served.update(options)
        token = capsys.readouterr().out.split("(shown once; only its hash is kept):\n")[1]
        headers = {"Authorization": f"Bearer {token.splitlines()[0]}"}
        with TestClient(app) as client:
            served["page"] = client.get("/").status_code
            served["worklist"] = client.get("/worklist", headers=headers).json()
            served["metrics"] = client.get("/metrics", headers=headers).status_code

    monkeypatch.setattr(uvicorn, "run", run)
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    logger = logging.getLogger("vigie")
    handlers, level = list(logger.handlers), logger.level
    try:
        assert main(["demo", "--store", url, "--serve", "--port", "8125"]) == 0
    finally:  # the service's log handler writes to this test's captured stderr: not to keep
        logger.handlers, logger.level = handlers, level
    assert (served["host"], served["port"], served["access_log"]) == ("127.0.0.1", 8125, False)
    assert served["page"] == 200 and served["metrics"] == 200
    worklist = served["worklist"]
    assert worklist["total"] >= 1 and {item["status"] for item in worklist["items"]} == {"open"}
    with FactStore(url) as facts:
        service = ServiceStore(facts)
        assert [(u.name, u.roles) for u in service.users()] == [
            ("demo.pharmacien", ("pharmacist",))
        ]
        wards = service.wards("DEMO")
        assert sum(w.beds for w in wards) == 60
        assert {item["ward"] for item in worklist["items"]} <= {w.code for w in wards}
