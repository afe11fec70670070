"""The rule author's routes (``vigie.api.routes.rules`` and ``.config``): every endpoint × role
(401 / 403 / allowed), the packs the service runs with their rules and cursors, a pack checked
(diagnostics with their line and column) and tested (pass / fail per case with the difference),
and the site configuration: validated against the packs' declared ranges, versioned, audited.
On SQLite and PostgreSQL (one store per module and backend, tests/test_api.py's fixtures).
"""

from __future__ import annotations

import json
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_api import (  # noqa: F401  (fixtures and the backend parametrisation)
    ROLES,
    Service,
    database_url,
    pytest_generate_tests,
)
from vigie import rules
from vigie.api.app import DEFAULT_MAX_BODY_BYTES, create_app
from vigie.api.batch import compile_packs
from vigie.store import ServiceStore
from vigie.store.service import RulePackVersion

with warnings.catch_warnings():  # starlette asks for httpx2, which this environment lacks
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

EXAMPLE = Path(__file__).parents[1] / "docs" / "site-config.example.toml"

PACK = """\
pack "demo" version "1.0.0"

param k_max = 5.5 mmol/L in 5.0 .. 6.5 "Seuil"
set acei = atc C09A, C09B

rule demo.k "Hyperkaliémie sous IEC"
  problem 7 intervention 2 severity major
  when
    d = active drug in acei
    k = latest potassium within 48 h
    k > k_max
  say "K+ {k} sous {d.label}"
"""
BROKEN = PACK.replace("latest potassium", "latest kaliemie")

RAMIPRIL = "{id: ram, atc: C09AA05, label: RAMIPRIL 5 mg, dose: 5 mg, per_day: 1, route: oral}"
CASES = f"""\
defaults:
  patient: {{age: 70, sex: M, weight: 72 kg}}
  drugs: [{RAMIPRIL}]
cases:
  - name: K 6.1 under ramipril fires
    rule: demo.k
    labs: [{{potassium: 6.1 mmol/L, at: -6h}}]
    expect: [{{rule: demo.k, severity: major, drugs: [ram], evidence: {{k: 6.1}}}}]
  - name: K 5.0 does not fire
    rule: demo.k
    labs: [{{potassium: 5.0 mmol/L, at: -6h}}]
    expect: []
  - name: a cursor at 6.4 silences K 6.1
    rule: demo.k
    cursors: {{k_max: 6.4 mmol/L}}
    labs: [{{potassium: 6.1 mmol/L, at: -6h}}]
    expect: []
  - name: expects the wrong severity
    rule: demo.k
    labs: [{{potassium: 6.3 mmol/L, at: -6h}}]
    expect: [{{rule: demo.k, severity: minor}}]
  - name: expects an alert that does not come
    rule: demo.k
    labs: [{{potassium: 5.2 mmol/L, at: -6h}}]
    expect: [{{rule: demo.k}}]
  - name: a cursor out of its range
    rule: demo.k
    cursors: {{k_max: 9 mmol/L}}
    labs: [{{potassium: 6.1 mmol/L, at: -6h}}]
    expect: []
"""


@pytest.fixture(scope="module")
def api(database_url: str) -> Iterator[Service]:  # noqa: F811
    app = create_app(database_url)
    service: ServiceStore = app.state.service
    tokens = {role: service.add_user(f"{role}.r", [role])[1] for role in ROLES}
    with TestClient(app) as client:
        yield Service(client, service, tokens)


@pytest.fixture(scope="module")
def shipped() -> list[dict[str, Any]]:
    """The IR of the packs the service runs (the shipped default and ANSM packs)."""
    return compile_packs(())


def _example() -> dict[str, Any]:
    return tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))


def _position(text: str, word: str) -> tuple[int, int]:
    """(line, column) of the first ``word`` in ``text``, both from 1."""
    for number, line in enumerate(text.splitlines(), start=1):
        if word in line:
            return number, line.index(word) + 1
    raise AssertionError(f"{word!r} not in the text")


# Every endpoint × role ---------------------------------------------------------------------------

CHECK = {"text": PACK, "file": "demo.rules"}
TEST = {"text": PACK, "file": "demo.rules", "cases": CASES}
CONFIG = {"config": {"hospital": {"level": 1, "cursors": {"k_max": 5.8}}}, "comment": "roles"}
# (method, path, body, the roles allowed, their status)
ENDPOINTS = [
    ("GET", "/rules", None, ("rule_author", "pharmacist"), 200),
    ("POST", "/rules/check", CHECK, ("rule_author",), 200),
    ("POST", "/rules/test", TEST, ("rule_author",), 200),
    ("GET", "/config/cursors", None, ("rule_author", "pharmacist"), 200),
    ("GET", "/config/cursors/versions", None, ("rule_author", "pharmacist"), 200),
    ("PUT", "/config/cursors", CONFIG, ("rule_author",), 200),
]


@pytest.mark.parametrize(("method", "path", "body", "allowed", "ok"), ENDPOINTS)
def test_every_endpoint_checks_the_token_and_the_role(
    api: Service, method: str, path: str, body: Any, allowed: tuple[str, ...], ok: int
) -> None:
    versions = len(api.service.site_config_versions())
    for role in (None, "forged", *ROLES):
        answer = api.client.request(method, path, json=body, headers=api.as_(role))
        expected = 401 if role in (None, "forged") else ok if role in allowed else 403
        assert answer.status_code == expected, (role, answer.json())
        if expected == 401:
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
        if expected == 403:
            needed = " or ".join(allowed)
            assert answer.json()["detail"] == f"this needs the role {needed}; {role}.r has {role}"
            denied = api.service.audit_log(actor=f"{role}.r", action="denied", limit=1)[0]
            assert denied.resource == f"{method} {path}"
    # a refused PUT saved nothing; the allowed one saved at most one version (once per text)
    assert len(api.service.site_config_versions()) - versions <= (method == "PUT")


# GET /rules --------------------------------------------------------------------------------------


def test_the_packs_the_service_runs_with_their_rules_and_cursors(
    api: Service, shipped: list[dict[str, Any]]
) -> None:
    page = api.client.get("/rules", headers=api.as_("pharmacist")).json()
    packs = [(p["name"], p["version"], p["sha256"], p["file"], p["rules"]) for p in page["packs"]]
    assert packs == [
        (ir["pack"]["name"], ir["pack"]["version"], ir["pack"]["sha256"], ir["pack"]["file"],
         len(ir["rules"]))
        for ir in shipped
    ]  # fmt: skip
    assert [p["file"] for p in page["packs"]] == [
        "rules/packs/default.rules",
        "rules/packs/ansm-interactions.rules",
    ]
    every = [rule for ir in shipped for rule in ir["rules"]]
    assert page["total"] == len(every) > 1678 and len(page["items"]) == page["limit"] == 100
    default = shipped[0]
    declared = {p["name"]: p for p in page["packs"][0]["params"]}
    assert set(declared) == set(default["params"])
    assert declared["k_max"] | {"label": None} == {
        "name": "k_max", "pack": "vigie-default", "value": 5.5, "unit": "mmol/L",
        "dimension": default["params"]["k_max"]["dimension"], "min": 5.0, "max": 6.5,
        "label": None, "file": "rules/packs/default.rules",
        "line": default["params"]["k_max"]["source"]["line"],
    }  # fmt: skip
    found = api.client.get(
        "/rules", params={"q": "HYPERKALIEMIE medicament", "pack": "default.rules"},
        headers=api.as_("rule_author"),
    ).json()  # fmt: skip
    assert [rule["id"] for rule in found["items"]] == ["bio.hyperkalaemia"]
    rule = found["items"][0]
    source = next(r for r in default["rules"] if r["id"] == "bio.hyperkalaemia")
    assert (rule["version"], rule["title"], rule["severity"], rule["level"]) == (
        source["version"], source["title"], source["severity"], source["level"],
    )  # fmt: skip
    assert rule["problem"] == source["problem"] and rule["intervention"] == source["intervention"]
    assert (rule["file"], rule["line"]) == ("rules/packs/default.rules", source["source"]["line"])
    assert [p["name"] for p in rule["params"]] == ["k_max"]
    assert rule["params"][0] == declared["k_max"]


def test_the_ansm_rules_by_pack_filters_and_pages(
    api: Service, shipped: list[dict[str, Any]]
) -> None:
    author = api.as_("rule_author")
    ansm = [rule["id"] for rule in shipped[1]["rules"]]
    pages = [
        api.client.get(
            "/rules", params={"pack": "ansm-interactions", "limit": 700, "offset": offset},
            headers=author,
        ).json()
        for offset in (0, 700, 1400)
    ]  # fmt: skip
    assert [rule["id"] for page in pages for rule in page["items"]] == ansm
    assert {page["total"] for page in pages} == {len(ansm)}
    critical = api.client.get(
        "/rules", params={"pack": "ansm-interactions", "severity": "critical", "level": 2},
        headers=author,
    ).json()  # fmt: skip
    expected = [
        r["id"] for r in shipped[1]["rules"] if (r["severity"], r["level"]) == ("critical", 2)
    ]
    assert critical["total"] == len(expected) > 0
    assert [r["id"] for r in critical["items"]] == expected[:100]
    # every word, in any case and with or without accents, in the id or the title
    aspirin = api.client.get(
        "/rules", params={"q": "Acétylsalicylique ANTICOAGULANTS", "limit": 2000}, headers=author
    ).json()
    assert aspirin["total"] == len(aspirin["items"]) > 0
    assert "ansm.ci.acide_acetylsalicylique.anticoagulants_oraux" in {
        r["id"] for r in aspirin["items"]
    }
    for rule in aspirin["items"]:
        text = f"{rule['id']} {rule['title']}".upper()
        assert "ACETYLSALICYLIQUE" in text and "ANTICOAGULANTS" in text
    missing = api.client.get("/rules", params={"pack": "nope"}, headers=author)
    assert missing.status_code == 404
    assert "vigie-default, ansm-interactions" in missing.json()["detail"]
    assert api.client.get("/rules", params={"limit": 0}, headers=author).status_code == 422


def test_the_pack_versions_the_store_recorded(api: Service, shipped: list[dict[str, Any]]) -> None:
    header = shipped[0]["pack"]
    api.service.record_rule_packs(
        [RulePackVersion(header["name"], "0.9.0", "0" * 64, "rules/packs/default.rules", "old")]
    )
    page = api.client.get("/rules", params={"limit": 1}, headers=api.as_("rule_author")).json()
    recorded = page["packs"][0]["recorded"]
    assert [(v["version"], v["sha256"]) for v in recorded][-1] == ("0.9.0", "0" * 64)
    assert recorded[-1]["source"] == "rules/packs/default.rules" and recorded[-1]["first_used"]
    assert "text" not in recorded[-1]


# POST /rules/check -------------------------------------------------------------------------------


def test_a_broken_pack_is_answered_with_its_diagnostic_where_it_is(api: Service) -> None:
    answer = api.client.post(
        "/rules/check", json={"text": BROKEN, "file": "demo.rules"}, headers=api.as_("rule_author")
    )
    assert answer.status_code == 200
    checked = answer.json()
    line, column = _position(BROKEN, "kaliemie")
    assert (checked["ok"], checked["errors"], checked["rules"], checked["pack"]) == (
        False, 1, 0, None,
    )  # fmt: skip
    (diagnostic,) = checked["diagnostics"]
    assert {k: diagnostic[k] for k in ("code", "severity", "file", "line", "column")} == {
        "code": "R012", "severity": "error", "file": "demo.rules", "line": line, "column": column,
    }  # fmt: skip
    assert diagnostic["end_column"] == column + len("kaliemie")
    assert "kaliemie" in diagnostic["message"] and diagnostic["hint"] == "did you mean 'potassium'?"
    expected, diagnostics = rules.compile_pack(BROKEN, "demo.rules")
    assert expected is None and diagnostic["rendered"] == rules.render(diagnostics[0], BROKEN)
    assert f"{line} |     k = latest kaliemie" in diagnostic["rendered"]


def test_a_pack_as_plain_text_and_a_good_pack(api: Service) -> None:
    author = api.as_("rule_author")
    plain = api.client.post(
        "/rules/check",
        params={"file": "mine.rules"},
        content=BROKEN.encode("utf-8"),
        headers={**author, "Content-Type": "text/plain; charset=utf-8"},
    ).json()
    assert [(d["file"], d["line"]) for d in plain["diagnostics"]] == [
        ("mine.rules", _position(BROKEN, "kaliemie")[0])
    ]
    good = api.client.post("/rules/check", json=CHECK, headers=author).json()
    assert (good["ok"], good["errors"], good["rules"], good["diagnostics"]) == (True, 0, 1, [])
    assert good["pack"]["name"] == "demo" and good["pack"]["version"] == "1.0.0"
    assert len(good["pack"]["sha256"]) == 64


@pytest.mark.parametrize(
    ("content", "media", "status", "detail"),
    [
        (b"\xff\xfepack", "text/plain", 400, "not UTF-8"),
        (b"<pack/>", "application/xml", 415, "application/json or text/plain"),
        (b"pack", None, 415, "no media type"),
        (b'{"text": 3}', "application/json", 422, "body.text"),
        (b'{"text": "x", "file": "../etc/passwd"}', "application/json", 422, "body.file"),
        (b'{"text": "x", "extra": 1}', "application/json", 422, "body.extra"),
        (b'{"text": ', "application/json", 422, "JSON"),
    ],
)
def test_a_body_that_is_not_a_pack_text_is_a_4xx(
    api: Service, content: bytes, media: str | None, status: int, detail: str
) -> None:
    headers = api.as_("rule_author") | ({"Content-Type": media} if media else {})
    answer = api.client.post("/rules/check", content=content, headers=headers)
    assert answer.status_code == status, answer.json()
    assert detail in answer.json()["detail"]


def test_the_ansm_pack_fits_the_body_limit_and_a_larger_body_is_a_413(tmp_path: Path) -> None:
    """One backend suffices: nothing here reads the store. The ANSM pack (1.1 MB) is checked
    through the API; a body over the app's limit (10 MiB) is refused before it is read."""
    app = create_app(f"sqlite:///{tmp_path / 'vigie.db'}")
    _, token = app.state.service.add_user("author", ["rule_author"])
    headers = {"Authorization": f"Bearer {token}"}
    ansm = (Path(rules.__file__).parent / "packs" / "ansm-interactions.rules").read_text("utf-8")
    body = json.dumps({"text": ansm, "file": "ansm-interactions.rules"}).encode("utf-8")
    assert 1_000_000 < len(body) < DEFAULT_MAX_BODY_BYTES
    with TestClient(app) as client:
        answer = client.post(
            "/rules/check", content=body, headers={**headers, "Content-Type": "application/json"}
        )
        assert answer.status_code == 200
        checked = answer.json()
        assert (checked["ok"], checked["errors"], checked["rules"]) == (True, 0, 1678)
        assert checked["pack"]["name"] == "ansm-interactions"
        huge = ansm * (DEFAULT_MAX_BODY_BYTES // len(ansm) + 1)
        refused = client.post(
            "/rules/check", content=huge.encode(), headers={**headers, "Content-Type": "text/plain"}
        )
        assert refused.status_code == 413
        assert "over the limit" in refused.json()["detail"]
    app.state.service.facts.close()


# POST /rules/test --------------------------------------------------------------------------------


def test_rule_cases_pass_or_fail_with_the_difference(api: Service) -> None:
    answer = api.client.post("/rules/test", json=TEST, headers=api.as_("rule_author"))
    assert answer.status_code == 200
    tested = answer.json()
    by_name = {case["name"]: case for case in tested["cases"]}
    assert {name: case["status"] for name, case in by_name.items()} == {
        "K 6.1 under ramipril fires": "PASS",
        "K 5.0 does not fire": "PASS",
        "a cursor at 6.4 silences K 6.1": "PASS",
        "expects the wrong severity": "FAIL",
        "expects an alert that does not come": "FAIL",
        "a cursor out of its range": "ERROR",
    }
    assert (tested["passed"], tested["failed"], tested["errors"]) == (3, 2, 1)
    assert (tested["compiled"], tested["ok"], tested["uncovered"]) == (True, False, {})
    fired = by_name["K 6.1 under ramipril fires"]
    assert fired["diff"] == [] and fired["line"] == _position(CASES, "K 6.1 under")[0]
    assert [(a["rule_id"], a["severity"], a["drugs"]) for a in fired["alerts"]] == [
        ("demo.k", "major", ["ram"])
    ]
    assert by_name["expects the wrong severity"]["diff"] == [
        "~ demo.k drugs [ram] major: severity: expected minor, got major"
    ]
    (missing,) = by_name["expects an alert that does not come"]["diff"]
    assert missing.startswith("- missing: demo.k (line ")
    error = by_name["a cursor out of its range"]["error"]
    assert "cases.yaml" in error and "outside the parameter's range 5 .. 6.5" in error


def test_a_pack_that_does_not_compile_errors_every_case(api: Service) -> None:
    body = {**TEST, "text": BROKEN}
    tested = api.client.post("/rules/test", json=body, headers=api.as_("rule_author")).json()
    assert (tested["compiled"], tested["ok"]) == (False, False)
    assert [d["line"] for d in tested["diagnostics"]] == [_position(BROKEN, "kaliemie")[0]]
    assert {case["status"] for case in tested["cases"]} == {"ERROR"}
    assert "does not compile" in tested["cases"][0]["error"]


def test_coverage_gaps_are_reported(api: Service) -> None:
    only_firing = CASES.split("  - name: K 5.0")[0]
    tested = api.client.post(
        "/rules/test", json={**TEST, "cases": only_firing}, headers=api.as_("rule_author")
    ).json()
    assert tested["passed"] == 1 and tested["uncovered"] == {"demo.k": ["no non-firing case"]}
    assert tested["ok"] is False


@pytest.mark.parametrize(
    ("cases", "detail"),
    [
        ("packs: other.rules\n" + CASES, "packs names 'other.rules'"),
        ("packs: ../../../etc/passwd\n" + CASES, "packs names '../../../etc/passwd'"),
        ("packs: [{path: /etc/hostname}]\n" + CASES, "packs names '/etc/hostname'"),
        ("cases: [\n", "cases: cases.yaml:"),
        ("cases: []\n", "expected a non-empty list of cases"),
        (CASES.replace("rule: demo.k\n    labs", "rule: demo.k\n    labz", 1), "labz"),
    ],
)
def test_a_bad_test_file_is_a_422_and_names_only_the_pack_posted(
    api: Service, cases: str, detail: str
) -> None:
    answer = api.client.post(
        "/rules/test", json={**TEST, "cases": cases}, headers=api.as_("rule_author")
    )
    assert answer.status_code == 422, answer.json()
    assert detail in answer.json()["detail"]


def test_the_test_file_may_name_the_pack_posted(api: Service) -> None:
    named = "packs: demo.rules\n" + CASES
    tested = api.client.post(
        "/rules/test", json={**TEST, "cases": named}, headers=api.as_("rule_author")
    ).json()
    assert (tested["passed"], tested["failed"], tested["errors"]) == (3, 2, 1)


# /config/cursors ---------------------------------------------------------------------------------


def test_a_configuration_is_checked_versioned_and_audited(api: Service) -> None:
    author = api.as_("rule_author")
    config = _example()
    saved = api.client.put(
        "/config/cursors", json={"config": config, "comment": "the example"}, headers=author
    )
    assert saved.status_code == 200, saved.json()
    first = saved.json()
    assert first["config"] == config and first["problem"] is None and not first["unchanged"]
    assert tomllib.loads(first["text"]) == config
    assert first["author"] == "rule_author.r" and first["comment"] == "the example"
    assert first["hospital"]["cursors"] == {
        "k_max": 5.5, "aminoglycoside_delay": 48.0, "mme_max": 90.0
    }  # fmt: skip
    nephro = first["wards"]["NEPHRO-1"]
    assert nephro["cursors"]["k_max"] == 6.0 and nephro["level"] == 1
    assert first["wards"]["REA-1"]["packs"] == ["vigie-default"]
    assert {c["name"] for c in first["cursors"]} >= {"k_max", "mme_max"}

    config["wards"]["NEPHRO-1"]["cursors"]["k_max"] = 6.2
    second = api.client.put(
        "/config/cursors",
        json={"config": config, "comment": "dialysis", "base_version": first["version"]},
        headers=author,
    ).json()
    assert second["version"] > first["version"]
    assert second["wards"]["NEPHRO-1"]["cursors"]["k_max"] == 6.2

    # the same text again is not a new version; a stale base version is a conflict
    again = api.client.put("/config/cursors", json={"config": config}, headers=author).json()
    assert again["unchanged"] and again["version"] == second["version"]
    stale = api.client.put(
        "/config/cursors",
        json={"config": config, "base_version": first["version"]},
        headers=author,
    )
    assert stale.status_code == 409 and f"latest is {second['version']}" in stale.json()["detail"]

    current = api.client.get("/config/cursors", headers=api.as_("pharmacist")).json()
    assert current["version"] == second["version"] and current["config"] == config
    past = api.client.get(
        "/config/cursors", params={"version": first["version"]}, headers=author
    ).json()
    assert past["wards"]["NEPHRO-1"]["cursors"]["k_max"] == 6.0
    assert (
        api.client.get("/config/cursors", params={"version": 10**6}, headers=author).status_code
        == 404
    )

    versions = api.client.get("/config/cursors/versions", headers=author).json()
    assert [v["version"] for v in versions[:2]] == [second["version"], first["version"]]
    assert versions[0]["author"] == "rule_author.r" and versions[0]["comment"] == "dialysis"
    assert versions[0]["created_at"] >= versions[1]["created_at"]

    entry = api.service.audit_log(actor="rule_author.r", action="write", limit=1)[0]
    assert entry.resource == "site configuration" and entry.detail is not None
    assert entry.detail["changes"] == [
        {"path": "wards.NEPHRO-1.cursors.k_max", "from": 6.0, "to": 6.2}
    ]
    assert entry.detail["base_version"] == first["version"]
    assert entry.detail["comment"] == "dialysis" and entry.detail["sha256"] == second["sha256"]


def test_a_cursor_out_of_its_range_is_a_422_naming_it(api: Service) -> None:
    author = api.as_("rule_author")
    versions = len(api.service.site_config_versions())
    writes = len(api.service.audit_log(action="write", limit=1000))
    config = _example()
    config["wards"]["NEPHRO-1"]["cursors"]["k_max"] = 7.5
    refused = api.client.put("/config/cursors", json={"config": config}, headers=author)
    assert refused.status_code == 422
    (error,) = refused.json()["errors"]
    assert error["field"] == "body.config.wards.NEPHRO-1.cursors.k_max"
    assert error["message"].startswith(
        "7.5 mmol/L is outside the declared range 5.0 .. 6.5 mmol/L of cursor k_max"
    )
    assert "rules/packs/default.rules:" in error["message"]

    text = EXAMPLE.read_text(encoding="utf-8").replace("k_max = 6.0", "k_max = 9")
    line, column = _position(text, "k_max = 9")
    as_toml = api.client.put(
        "/config/cursors",
        content=text.encode("utf-8"),
        params={"comment": "too high"},
        headers={**author, "Content-Type": "application/toml"},
    )
    assert as_toml.status_code == 422
    (error,) = as_toml.json()["errors"]
    assert (error["field"], error["line"], error["column"]) == (
        "body.wards.NEPHRO-1.cursors.k_max", line, column,
    )  # fmt: skip
    assert "9.0 mmol/L is outside the declared range 5.0 .. 6.5 mmol/L" in error["message"]
    # nothing saved, nothing written to the audit log
    assert len(api.service.site_config_versions()) == versions
    assert len(api.service.audit_log(action="write", limit=1000)) == writes


def test_every_error_of_a_configuration_is_in_the_422(api: Service) -> None:
    # three independent mistakes in the example: a misspelt key, a cursor outside the
    # catalogue's range (k_max in 5.0 .. 6.5 mmol/L), a rule id not in the catalogue
    text = (
        EXAMPLE.read_text(encoding="utf-8")
        .replace("level = 2\n", "levle = 2\n")
        .replace("k_max = 6.0", "k_max = 9")
        .replace('"combo.opioid_benzo"', '"combo.opioid_benzos"')
    )
    refused = api.client.put(
        "/config/cursors",
        content=text.encode("utf-8"),
        headers={**api.as_("rule_author"), "Content-Type": "application/toml"},
    )
    assert refused.status_code == 422
    errors = refused.json()["errors"]
    found = [(e["field"], e["line"], e["column"]) for e in errors]
    assert found == [
        ("body.wards.NEPHRO-1.cursors.k_max", *_position(text, "k_max = 9")),
        ("body.wards.GER-1.levle", *_position(text, "levle = 2")),
        ("body.wards.REA-1.disable[0]", *_position(text, '"combo.opioid_benzos"')),
    ]
    assert "outside the declared range 5.0 .. 6.5 mmol/L" in errors[0]["message"]
    assert "unknown key 'levle'" in errors[1]["message"]
    assert "unknown rule id 'combo.opioid_benzos'" in errors[2]["message"]
    assert refused.json()["detail"].endswith("(and 2 more)")


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"config": {"hospital": {"cursors": {"k_maxx": 5.6}}}},
         "body.config.hospital.cursors.k_maxx", "did you mean 'k_max'"),
        ({"config": {"hospital": {"cursors": {"k_max": "6 mg"}}}},
         "body.config.hospital.cursors.k_max", "wrong unit 'mg'"),
        ({"config": {"hospital": {"packs": ["nope"]}}}, "body.config.hospital.packs[0]",
         "unknown pack 'nope'"),
        ({"config": {"hospital": {"level": 0}}}, "body.config.hospital.level", "bad level 0"),
        ({"config": {"hospital": {"level": None}}}, "body.config.hospital.level", "null"),
        ({"config": {"wards": {"W": {"disable": ["x.y"]}}}}, "body.config.wards.W.disable[0]",
         "unknown rule id 'x.y'"),
        ({"config": {"colour": "blue"}}, "body.config.colour", "unknown key 'colour'"),
        ({"text": "[hospital\nlevel = 1\n"}, "body.text", "not valid TOML"),
        ({"text": "x = 1", "config": {}}, "body", "not both"),
        ({}, "body", "config (JSON) or text (TOML)"),
    ],
)  # fmt: skip
def test_a_bad_configuration_is_a_422_naming_the_field(
    api: Service, body: dict[str, Any], field: str, message: str
) -> None:
    answer = api.client.put("/config/cursors", json=body, headers=api.as_("rule_author"))
    assert answer.status_code == 422, answer.json()
    fields = [(e["field"], e["message"]) for e in answer.json()["errors"]]
    assert any(f == field and message in m for f, m in fields), fields


def test_the_configuration_as_toml_text(api: Service) -> None:
    author = api.as_("rule_author")
    text = '[hospital]\nlevel = 2\n\n[wards."CARDIO 1".cursors]\nk_max = "6.1 mmol/L"\n'
    saved = api.client.put(
        "/config/cursors",
        content=text.encode("utf-8"),
        params={"comment": "as text"},
        headers={**author, "Content-Type": "text/plain"},
    )
    assert saved.status_code == 200, saved.json()
    got = saved.json()
    assert got["text"] == text and got["comment"] == "as text"
    assert got["hospital"]["level"] == 2 and got["wards"]["CARDIO 1"]["cursors"] == {"k_max": 6.1}
    assert got["config"] == {
        "hospital": {"level": 2},
        "wards": {"CARDIO 1": {"cursors": {"k_max": "6.1 mmol/L"}}},
    }
    as_json_text = api.client.put(
        "/config/cursors", json={"text": text.replace("2", "1", 1)}, headers=author
    ).json()
    assert as_json_text["hospital"]["level"] == 1 and as_json_text["version"] > got["version"]
    unsupported = api.client.put(
        "/config/cursors", content=b"x", headers={**author, "Content-Type": "application/yaml"}
    )
    assert unsupported.status_code == 415


# Texts nested deeper than the parsers recurse ----------------------------------------------------

DEEP = 5000


def test_a_pack_nested_too_deeply_is_the_compiler_s_diagnostic(api: Service) -> None:
    """The compiler answers a pack deeper than its parser recurses with an R000 diagnostic (as
    ``vigie rules check`` does), never a crash: a check reports it, a test run errs on it."""
    deep = PACK.replace("k > k_max", "not " * DEEP + "k > k_max")
    headers = api.as_("rule_author")
    checked = api.client.post("/rules/check", json={"text": deep}, headers=headers)
    assert checked.status_code == 200, checked.text
    (diagnostic,) = checked.json()["diagnostics"]
    assert diagnostic["code"] == "R000" and "nested too deeply" in diagnostic["message"]
    tested = api.client.post("/rules/test", json={**TEST, "text": deep}, headers=headers)
    assert tested.status_code in (200, 422), tested.text
    assert "nested too deeply" in tested.text


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("POST", "/rules/test", {**TEST, "cases": "cases: " + "[" * DEEP + "]" * DEEP}, "cases"),
        ("PUT", "/config/cursors", {"text": "x = " + "[" * DEEP + "]" * DEEP}, "body.text"),
    ],
)  # fmt: skip
def test_a_text_nested_too_deeply_is_a_422_not_a_crash(
    api: Service, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    answer = api.client.request(method, path, json=body, headers=api.as_("rule_author"))
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith(f"{field}: nested too deeply")


def test_at_most_so_many_cases_per_request(api: Service, monkeypatch: pytest.MonkeyPatch) -> None:
    from vigie.api.routes import rules as routes

    monkeypatch.setattr(routes, "MAX_CASES", 5)
    answer = api.client.post("/rules/test", json=TEST, headers=api.as_("rule_author"))
    assert answer.status_code == 422
    assert answer.json()["detail"] == "cases: 6 cases; at most 5 per request"


def test_the_packs_of_the_app_and_a_pack_that_cannot_load(tmp_path: Path) -> None:
    """An app whose ``state.pack_paths`` names its packs lists those; a pack of the server that
    is missing or does not compile is the service's fault: 503, not the request's."""
    app = create_app(f"sqlite:///{tmp_path / 'vigie.db'}")
    _, token = app.state.service.add_user("reader", ["pharmacist"])
    headers = {"Authorization": f"Bearer {token}"}
    (tmp_path / "demo.rules").write_text(PACK, encoding="utf-8")
    (tmp_path / "broken.rules").write_text(BROKEN, encoding="utf-8")
    with TestClient(app) as client:
        app.state.pack_paths = [tmp_path / "demo.rules"]
        page = client.get("/rules", headers=headers).json()
        assert [(p["name"], p["rules"]) for p in page["packs"]] == [("demo", 1)]
        assert [(r["id"], r["line"]) for r in page["items"]] == [
            ("demo.k", _position(PACK, "rule demo.k")[0])
        ]
        for name, detail in [("missing.rules", "cannot be read"), ("broken.rules", "compile")]:
            app.state.pack_paths = [tmp_path / name]
            answer = client.get("/rules", headers=headers)
            assert answer.status_code == 503 and detail in answer.json()["detail"]
    app.state.service.facts.close()
