"""Rule tests as data: every case of rules/tests/*.yaml, the coverage check, and the runner.

Each case of each test file is one pytest test (id ``file.yaml::case name``), so one failing
case is one failing test whose message is the runner's diff.
"""

from __future__ import annotations

import io
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from vigie.engine.alerts import Alert, AlertDrug, CodedValue, RuleRef, alert_id
from vigie.facts import LabResult, MedicationOrder, Observation, Patient
from vigie.rules.testing.cases import (
    TESTS_FOLDER,
    CaseFileError,
    RuleTestCase,
    load_test_file,
    parse_relative_time,
)
from vigie.rules.testing.runner import PackCache, coverage_gaps, run_case, run_tests, test_command

DEFAULT_PACK = (TESTS_FOLDER.parent / "packs" / "default.rules").resolve()
CASE_FILES = sorted(TESTS_FOLDER.glob("*.yaml"))
PACKS = PackCache()


def _collect() -> list[Any]:
    params: list[Any] = []
    for path in CASE_FILES:
        try:
            test_file = load_test_file(path)
        except CaseFileError as exc:
            params.append(pytest.param(None, str(exc), id=f"{path.name}::<malformed>"))
            continue
        params += [
            pytest.param(case, None, id=f"{path.name}::{case.name}") for case in test_file.cases
        ]
    return params


@pytest.mark.parametrize(("case", "load_error"), _collect())
def test_rule_case(case: RuleTestCase | None, load_error: str | None) -> None:
    assert load_error is None, load_error
    assert case is not None
    result = run_case(case, PACKS)
    assert result.error is None, result.error
    assert result.passed, "\n".join([f"{case.id}:", *result.diff])


def test_every_rule_of_the_default_pack_has_a_firing_and_a_non_firing_case() -> None:
    files = [load_test_file(path) for path in CASE_FILES]
    assert coverage_gaps(files, [DEFAULT_PACK], PACKS) == {}


def test_the_case_files_cover_the_37_catalogue_rules() -> None:
    ir = PACKS.get(DEFAULT_PACK).ir
    assert ir is not None
    assert len(ir["rules"]) == 37


# The runner itself -----------------------------------------------------------------------------


def _write(tmp_path: Path, body: str, name: str = "cases.yaml") -> Path:
    path = tmp_path / name
    header = f"packs: {DEFAULT_PACK}\n"
    path.write_text(header + textwrap.dedent(body), encoding="utf-8")
    return path


HYPERKALAEMIA = """
cases:
  - name: K+ 5.9 under ramipril
    rule: bio.hyperkalaemia
    patient: {age: 82, sex: F, weight: 58 kg}
    drugs: [{id: o1, atc: C09AA05, label: ramipril, dose: 5 mg, per_day: 1, start: -5d}]
    labs: [{potassium: 5.9 mmol/L, at: -6h}, {creatinine: 1.4 mg/dL, at: -1d}]
    expect: [{rule: bio.hyperkalaemia, severity: SEVERITY, drugs: [o1]}]
"""


def test_facts_are_built_in_canonical_units_with_their_source_line(tmp_path: Path) -> None:
    path = _write(tmp_path, HYPERKALAEMIA.replace("SEVERITY", "major"))
    (case,) = load_test_file(path, shown="cases.yaml").cases
    facts = {type(f).__name__ + getattr(f, "concept", ""): f for f in case.facts}
    creatinine = facts["LabResultcreatinine"]
    assert isinstance(creatinine, LabResult)
    assert (creatinine.value, creatinine.unit) == (pytest.approx(123.788), "µmol/L")
    assert creatinine.time == datetime(2024, 2, 29, 8, 0)
    assert creatinine.source.document == "cases.yaml"
    assert creatinine.source.position == "case K+ 5.9 under ramipril / labs[1] (line 8)"
    order = facts["MedicationOrder"]
    assert isinstance(order, MedicationOrder)
    assert (order.daily_dose, order.dose_unit, order.start) == (5.0, "mg", datetime(2024, 2, 25, 8))
    patient = facts["Patient"]
    assert isinstance(patient, Patient) and patient.birth_date is not None
    weight = facts["Observationweight"]
    assert isinstance(weight, Observation) and weight.value == 58.0


def test_a_passing_case_passes_and_its_evidence_points_at_the_test_file(tmp_path: Path) -> None:
    path = _write(tmp_path, HYPERKALAEMIA.replace("SEVERITY", "major"))
    (case,) = load_test_file(path, shown="cases.yaml").cases
    result = run_case(case, PACKS)
    assert result.passed, result.diff or result.error
    (alert,) = result.alerts
    positions = {e.name: e.source.position for e in alert.evidence if e.source}
    assert positions["k"] == "case K+ 5.9 under ramipril / labs[0] (line 8)"


def test_a_wrong_expectation_fails_with_a_diff(tmp_path: Path) -> None:
    path = _write(tmp_path, HYPERKALAEMIA.replace("SEVERITY", "critical"))
    out = io.StringIO()
    assert test_command([path], out=out) == 1
    text = out.getvalue()
    assert "FAIL " in text and "::K+ 5.9 under ramipril" in text
    assert "severity: expected critical, got major" in text
    assert "== 0 passed, 1 failed, 0 error(s)" in text


def _alert(rule_id: str, orders: list[str], severity: str = "major") -> Alert:
    return Alert(
        id=alert_id(rule_id, "p", orders),
        patient_id="p",
        rule_id=rule_id,
        rule=RuleRef(id=rule_id, version=1, pack="t", pack_version="1.0.0", file="t", line=1),
        title="t",
        problem=CodedValue(code="7", display="x"),
        intervention=CodedValue(code="2", display="x"),
        severity=severity,  # type: ignore[arg-type]
        level=1,
        drugs=tuple(AlertDrug(order_id=o, atc=None, label=o) for o in orders),
        message=f"message of {rule_id}",
        as_of=datetime(2024, 3, 1, 8),
    )


def test_missing_unexpected_and_absent_alerts_are_reported(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        cases:
          - name: three problems
            drugs: [{id: o1, atc: C09AA05}, {id: o2, atc: C03DA01}]
            expect: [{rule: bio.hyperkalaemia, drugs: [o1]}, bio.digoxin]
            absent: [combo.allergy]
        """,
    )

    def fake_evaluate(*_: Any, **__: Any) -> list[Alert]:
        return [_alert("bio.hyperkalaemia", ["o2"]), _alert("combo.allergy", ["o1"])]

    report = run_tests([path], evaluate=fake_evaluate, cache=PACKS)
    (result,) = report.results
    assert result.status == "FAIL"
    assert result.diff == [
        "+ fired though listed absent: combo.allergy drugs [o1] major: 'message of combo.allergy'",
        "- missing: bio.hyperkalaemia drugs [o1] (line 6)",
        "- missing: bio.digoxin (line 6)",
        "+ unexpected: bio.hyperkalaemia drugs [o2] major: 'message of bio.hyperkalaemia'",
    ]


def test_ignored_rules_are_not_unexpected(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        ignore: [combo.*]
        cases:
          - {name: quiet, drugs: [{id: o1, atc: C09AA05}], expect: []}
        """,
    )
    report = run_tests(
        [path], evaluate=lambda *_, **__: [_alert("combo.allergy", ["o1"])], cache=PACKS
    )
    assert report.results[0].passed


@pytest.mark.parametrize(
    ("body", "located"),
    [
        (
            "cases:\n  - name: typo\n    expected: []\n",
            "cases.yaml:3: case 'typo': expected: unknown key 'expected'; did you mean 'expect'?",
        ),
        (
            "cases:\n  - name: bad lab\n    labs: [{kaliemie: 5 mmol/L, at: -1h}]\n"
            "    expect: []\n",
            "cases.yaml:4: case 'bad lab': labs[0].kaliemie: unknown lab concept 'kaliemie'",
        ),
        (
            "cases:\n  - name: bad unit\n    labs: [{potassium: 5 mg, at: -1h}]\n    expect: []\n",
            "cases.yaml:4: case 'bad unit': labs[0].potassium: ",
        ),
        (
            "cases:\n  - name: no unit\n    labs: [{creatinine: 90, at: -1h}]\n    expect: []\n",
            "labs[0].creatinine: a unit is needed (the canonical unit of creatinine is µmol/L)",
        ),
        (
            "cases:\n  - name: bad time\n    drugs: [{id: o1, atc: N02BE01, start: 3 days ago}]\n"
            "    expect: []\n",
            "cases.yaml:4: case 'bad time': drugs[0].start: expected a relative time",
        ),
        (
            "cases:\n  - name: nothing expected\n    drugs: [{id: o1, atc: N02BE01}]\n",
            "case 'nothing expected': a case needs expect:",
        ),
        (
            "cases:\n  - name: not a combination\n    drugs: [{id: o1, product: CIS 60234100}]\n"
            "    expect: []\n",
            "drugs[0].product: 'CIS 60234100' is not a combination product of the composition",
        ),
        (
            "cases:\n  - name: one ingredient\n    drugs: [{id: o1, ingredients: [{name: a}]}]\n"
            "    expect: []\n",
            "drugs[0].ingredients: expected a list of two ingredients or more",
        ),
        ("cases: [\n", "cases.yaml:3: not valid YAML"),
        ("cases: []\n", "cases.yaml:2: cases: expected a non-empty list of cases"),
    ],
)
def test_a_malformed_file_is_a_located_error(tmp_path: Path, body: str, located: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(CaseFileError) as raised:
        load_test_file(path, shown="cases.yaml")
    assert located in str(raised.value)


def test_a_malformed_file_fails_the_command_without_traceback(tmp_path: Path) -> None:
    path = _write(tmp_path, "cases:\n  - name: typo\n    expected: []\n")
    out = io.StringIO()
    assert test_command([path], out=out) == 1
    assert "ERROR " in out.getvalue() and "unknown key 'expected'" in out.getvalue()
    assert "Traceback" not in out.getvalue()


def test_a_cursor_outside_its_range_is_a_located_error(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        cases:
          - name: k_max too high
            cursors: {k_max: 7.5 mmol/L}
            drugs: [{id: o1, atc: C09AA05}]
            expect: []
          - name: unknown cursor
            cursors: {kmax: 6}
            drugs: [{id: o1, atc: C09AA05}]
            expect: []
        """,
    )
    report = run_tests([path], cache=PACKS)
    errors = [r.error or "" for r in report.results]
    assert "cursors.k_max: 7.5 is outside the parameter's range 5 .. 6.5" in errors[0]
    assert "unknown parameter 'kmax'; did you mean 'k_max'?" in errors[1]


def test_coverage_lists_the_rules_without_cases(tmp_path: Path) -> None:
    pack = tmp_path / "mini.rules"
    pack.write_text(
        textwrap.dedent(
            """
            pack "mini" version "1.0.0"
            set acei = atc C09AA
            rule mini.acei "IEC"
              problem 7 intervention 2 severity minor
              when
                d = active drug in acei
              say "{d.label}"
            """
        ),
        encoding="utf-8",
    )
    tests = tmp_path / "mini.yaml"
    tests.write_text(
        "packs: mini.rules\ncases:\n"
        "  - {name: fires, drugs: [{id: o1, atc: C09AA05}], expect: [mini.acei]}\n",
        encoding="utf-8",
    )
    out = io.StringIO()
    assert test_command([pack, tests], out=out) == 1
    assert "mini.acei: no non-firing case" in out.getvalue()
    assert "1 passed, 0 failed" in out.getvalue()


def test_packs_alone_run_the_test_files_that_name_them() -> None:
    out = io.StringIO()
    status = test_command([DEFAULT_PACK], out=out)
    text = out.getvalue()
    assert "renal.yaml::metformin stops below eGFR 30" in text
    assert "ansm.yaml" not in text  # it names only the ANSM pack
    assert status == 0, text[-3000:]


def test_relative_times() -> None:
    now = datetime(2024, 3, 1, 8, 0)
    assert parse_relative_time("-6h", now) == datetime(2024, 3, 1, 2, 0)
    assert parse_relative_time("+1d", now) == datetime(2024, 3, 2, 8, 0)
    assert parse_relative_time("-1w2d30min", now) == datetime(2024, 2, 21, 7, 30)
    assert parse_relative_time(0, now) == now
    assert parse_relative_time("2024-02-01T10:00", now) == datetime(2024, 2, 1, 10, 0)
    with pytest.raises(ValueError, match="relative time"):
        parse_relative_time("-3 days", now)
