"""Rule checker: every diagnostic code, with position, caret, hint; units; the CLI entry point.

``tests/data/rules/mistakes.rules`` holds one mistake of (nearly) each kind; its rendered
diagnostics are the golden ``tests/golden/rules/mistakes.txt``. Regenerate after a deliberate
change with ``VIGIE_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_rules_check.py -k golden``
and review the diff.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from vigie import settings as vigie_settings
from vigie.rules import check_command, compile_files, compile_pack, render
from vigie.rules.diagnostics import CODES, Diagnostic
from vigie.rules.ir import iter_ir_nodes

DATA = Path(__file__).parent / "data" / "rules"
GOLDEN = Path(__file__).parent / "golden" / "rules"
MISTAKES = DATA / "mistakes.rules"
DEFAULT_PACK = Path(__file__).parents[1] / "rules" / "packs" / "default.rules"
REGENERATE = vigie_settings.value("regenerate_golden")
HEADER = 'pack "t" version "1.0.0"\n'


def diagnostics_of(text: str) -> list[Diagnostic]:
    _, diagnostics = compile_pack(text, "t.rules")
    return diagnostics


def rule_with(when: str, say: str = "x", head: str = "") -> str:
    return (
        HEADER + head + 'rule t.r "T"\n  problem 7 intervention 2 severity major\n'
        f'  when\n{when}\n  say "{say}"\n'
    )


def one(text: str, code: str) -> Diagnostic:
    found = [d for d in diagnostics_of(text) if d.code == code]
    assert len(found) == 1, diagnostics_of(text)
    return found[0]


@pytest.fixture(scope="module")
def mistakes() -> list[Diagnostic]:
    _, diagnostics = compile_pack(MISTAKES.read_text(encoding="utf-8"), "mistakes.rules")
    return diagnostics


# The pack of mistakes ----------------------------------------------------------------------------


def test_golden_rendered_mistakes(mistakes: list[Diagnostic]) -> None:
    source = MISTAKES.read_text(encoding="utf-8")
    rendered = "\n".join(render(d, source) for d in mistakes) + "\n"
    expected = GOLDEN / "mistakes.txt"
    if REGENERATE:
        expected.write_text(rendered, encoding="utf-8")
    assert rendered == expected.read_text(encoding="utf-8")


# code, line, column, message, hint (None: no hint expected; "" any)
EXPECTED = [
    ("R059", 2, 1, "pack version '1.0' is not x.y.z", 'e.g. version "1.0.0"'),
    ("R050", 4, 22, "'C9A' is not an ATC code or prefix", ""),
    ("R016", 5, 5, "set 'acei' is already declared on line 4", None),
    ("R051", 6, 20, "'K250' is not an ICD-10 code or prefix", "write K25.0"),
    ("R057", 7, 18, "cannot expand the range B01AF03..B01AF01", ""),
    ("R017", 8, 5, "set 'loop' contains itself", None),
    ("R014", 9, 30, "unknown route 'intravenous'", "did you mean 'iv'?"),
    ("R030", 10, 23, "set 'ulcers' holds icd10 codes, not atc", None),
    ("R055", 12, 15, "default 5.5 mmol/L is outside 5 .. 5.2", ""),
    ("R056", 13, 34, "bound in mmol/L but the default is in h", ""),
    ("R032", 14, 18, "unknown unit 'mL/mn'", "did you mean 'mL/min'?"),
    ("R016", 15, 7, "parameter 'k_max' is already declared on line 12", None),
    ("R015", 16, 7, "parameter 'age' hides the derived value 'age'", None),
    ("R017", 18, 8, "definition 'circular' refers to itself", None),
    ("R010", 20, 23, "unknown name 'k'", ""),
    ("R012", 26, 16, "unknown lab 'kaliemie'", "did you mean 'potassium'?"),
    ("R010", 27, 9, "unknown name 'k_mx'", "did you mean the parameter 'k_max'?"),
    ("R013", 28, 7, "a drug line has no attribute 'labl'", "did you mean 'label'?"),
    ("R011", 29, 24, "unknown set 'aceis'", "did you mean 'acei'?"),
    ("R052", 34, 3, "unknown SFPC problem code '11'", ""),
    ("R053", 34, 14, "unknown SFPC intervention code '8'", ""),
    ("R054", 34, 38, "unknown severity 'majr'", "did you mean 'major'?"),
    ("R058", 34, 43, "level must be a whole number from 1; got 0", None),
    ("R031", 37, 9, "cannot compare creatinine (µmol/L) with 30 mL/min", ""),
    ("R034", 38, 9, "a unit is needed: creatinine is in µmol/L", "write `1.2 µmol/L`"),
    ("R032", 39, 9, "unknown unit 'mmol/h'", "did you mean 'mmol/L'?"),
    ("R030", 40, 5, "cannot compare a time with a quantity in mmol/L", None),
    ("R033", 41, 5, "a statement is a condition or `name = …`", None),
    ("R019", 44, 5, "'w' is bound but never used", ""),
    ("R010", 45, 5, "unknown name 'later'", "'later' is bound later, on line 46; bind it first"),
    ("R033", 47, 5, "`active drug in …` only binds a drug line", ""),
    ("R018", 48, 5, "'curative' needs arguments", ""),
    ("R018", 50, 5, "'curative' takes 1 argument(s), not 2", None),
    ("R015", 52, 5, "binding 'sex' hides the derived value 'sex'", ""),
    ("R035", 53, 26, "a creatinine result (µmol/L) has no attribute 'tme'", "did you mean 'time'?"),
    ("R035", 53, 34, "the message names 'unknown', which is not bound", ""),
    ("R035", 53, 44, "bad placeholder {unclosed `{`}", ""),
    ("R070", 55, 6, "rule 'bio.units' is already defined on line 33", None),
    ("R001", 64, 9, "unexpected `>`; expected an expression", None),
    ("R012", 70, 16, "unknown lab 'potasium'", "did you mean 'potassium'?"),
    ("R072", 74, 6, "the rule has no `say`", ""),
    ("R073", 74, 6, "the rule has no `problem` or `intervention` or `severity`", ""),
    ("R076", 74, 6, "the rule has no title", ""),
    ("R074", 77, 3, "`when` is already given on line 75", None),
    ("R071", 80, 6, "the rule has no `when`", ""),
    ("R075", 84, 1, "a pack has one header", None),
]


@pytest.mark.parametrize(("code", "line", "column", "message", "hint"), EXPECTED)
def test_each_mistake_is_reported(
    mistakes: list[Diagnostic], code: str, line: int, column: int, message: str, hint: str | None
) -> None:
    at = [d for d in mistakes if (d.span.line, d.span.column, d.code) == (line, column, code)]
    assert at, f"no {code} at {line}:{column}"
    diagnostic = next((d for d in at if d.message.startswith(message)), at[0])
    assert diagnostic.message.startswith(message)
    assert diagnostic.span.file == "mistakes.rules"
    if hint is None:
        assert diagnostic.hint is None
    elif hint:
        assert diagnostic.hint == hint


def test_the_mistakes_pack_produces_no_ir_and_all_its_errors_at_once(
    mistakes: list[Diagnostic],
) -> None:
    ir, _ = compile_pack(MISTAKES.read_text(encoding="utf-8"), "mistakes.rules")
    assert ir is None
    assert len([d for d in mistakes if d.is_error]) >= 45
    positions = [(d.span.line, d.span.column) for d in mistakes]
    assert positions == sorted(positions)


def test_every_code_is_covered_by_some_test(mistakes: list[Diagnostic]) -> None:
    covered = {d.code for d in mistakes} | {"R000", "R002", "R003"}  # tested below
    covered |= {"R036", "R060"}  # warnings: tests/test_rules_warnings.py
    assert covered == set(CODES)


def test_rendering_has_location_source_line_carets_and_hint(mistakes: list[Diagnostic]) -> None:
    source = MISTAKES.read_text(encoding="utf-8")
    lab = next(d for d in mistakes if d.code == "R012")
    assert render(lab, source).splitlines() == [
        "mistakes.rules:26:16: error[R012] unknown lab 'kaliemie'",
        "   26 |     k = latest kaliemie within 48 h",
        "      |                ^^^^^^^^",
        "       hint: did you mean 'potassium'?",
    ]


# Codes reported outside the mistakes pack --------------------------------------------------------


def test_unreadable_file_is_r000(tmp_path: Path) -> None:
    (compiled,) = compile_files([tmp_path / "missing.rules"])
    assert compiled.ir is None
    (diagnostic,) = compiled.diagnostics
    assert diagnostic.code == "R000" and diagnostic.span.file.endswith("missing.rules")


def test_a_pack_nested_deeper_than_the_parser_recurses_is_r000(tmp_path: Path) -> None:
    """Thousands of nested ``not`` exhaust the parser's recursion: a diagnostic, not a crash."""
    path = tmp_path / "deep.rules"
    rule = 'rule t.r "T"\n  problem 7 intervention 2 severity major\n  when\n'
    path.write_text(HEADER + rule + "    " + "not " * 5000 + "age > 3\n", encoding="utf-8")
    (compiled,) = compile_files([path])
    assert compiled.ir is None
    (diagnostic,) = compiled.diagnostics
    assert diagnostic.code == "R000" and "nested too deeply" in diagnostic.message
    err = io.StringIO()
    assert check_command([path], out=io.StringIO(), err=err) == 1
    assert "nested too deeply" in err.getvalue()


def test_unexpected_character_and_end_of_file_are_r002_r003() -> None:
    assert one(HEADER + "set x = atc C09A ; C09B\n", "R002").span.column == 18
    eof = one(HEADER + "define x = (age > 3", "R003")
    assert (eof.span.line, eof.span.column) == (2, 20)


def test_missing_header() -> None:
    diagnostic = one("set x = atc C09A\n", "R075")
    assert diagnostic.message == "the pack header is missing"
    assert (diagnostic.span.line, diagnostic.span.column) == (1, 1)


def test_syntax_error_does_not_cascade_into_unknown_names() -> None:
    text = rule_with("    any active drug in acei", head="set acei = atc C09A,\n\n")
    diagnostics = diagnostics_of(text)
    assert [d.code for d in diagnostics] == ["R001"]


# Types and units ---------------------------------------------------------------------------------


def constants(text: str) -> list[tuple[float, str]]:
    ir, diagnostics = compile_pack(text, "t.rules")
    assert ir is not None, diagnostics
    return [
        (node["value"], node["unit"])
        for node in iter_ir_nodes(ir["rules"])
        if node["op"] == "const" and node.get("type") == "number"
    ]


def test_literals_are_converted_to_the_concept_unit() -> None:
    when = (
        "    c = latest creatinine within 2 d\n    c > 1.2 mg/dL\n"
        "    g = latest glucose within 1 d\n    g < 60 mg/dL\n"
        "    w = latest weight\n    w < 110 lb"
    )
    found = constants(rule_with(when))
    assert (106.104, "µmol/L") in found
    assert (3.330372, "mmol/L") in found
    assert (49.8951607, "kg") in found
    assert (172800.0, "s") in found


def test_duration_parameter_is_scaled_to_seconds() -> None:
    head = "param window = 48 h in 24 h .. 96 h\n"
    ir, _ = compile_pack(rule_with("    no potassium within window", head=head), "t")
    assert ir is not None
    (convert,) = [n for n in iter_ir_nodes(ir["rules"]) if n["op"] == "convert"]
    assert convert["factor"] == 3600.0 and convert["unit"] == "s"
    assert convert["args"][0] == {**convert["args"][0], "op": "param", "name": "window"}
    assert ir["params"]["window"] == {
        "value": 48.0,
        "unit": "h",
        "dimension": "duration",
        "min": 24.0,
        "max": 96.0,
        "label": None,
        "source": {"file": "t", "line": 2},
    }


def test_age_accepts_a_bare_number_or_years() -> None:
    assert (75.0, "years") in constants(rule_with("    age >= 75"))
    assert (75.0, "years") in constants(rule_with("    age >= 900 months"))


def test_units_that_do_not_match() -> None:
    diagnostic = one(rule_with("    latest creatinine within 2 d > 30 mL/min"), "R031")
    assert diagnostic.message == "cannot compare creatinine (µmol/L) with 30 mL/min"
    assert one(rule_with("    weight < 30 mL/min"), "R031").hint == "weight is in kg"
    dose = one(rule_with("    daily dose of atc N02BE01 > 4 mmol/L"), "R031")
    assert dose.message == "cannot compare a drug amount with 4 mmol/L"


def test_drug_amounts_compare_with_masses_and_units() -> None:
    text = rule_with("    d = active drug\n    d.daily_dose > 4 g or d.daily_dose > 6000 IU")
    assert {(4000.0, "mg"), (6000.0, "IU")} <= set(constants(text))


def test_time_arithmetic() -> None:
    ok = rule_with("    d = active drug\n    now - d.start > 2 d and d.start + 1 w < now")
    assert not diagnostics_of(ok)
    assert one(rule_with("    d = active drug\n    d.start + now > now"), "R030")


def test_conditions_must_be_boolean() -> None:
    message = one(rule_with("    age > 3 and weight"), "R030").message
    assert message == "`and` needs a condition; this is weight (kg)"


def test_membership_needs_a_drug_code_or_route() -> None:
    diagnostic = one(rule_with("    age in atc C09A"), "R030")
    assert "needs a drug line, an ATC code or a route" in diagnostic.message


def test_definition_parameters_are_drug_lines() -> None:
    head = 'define on_iv(h) = h.route == "iv"\n'
    assert not diagnostics_of(rule_with("    d = active drug\n    on_iv(d)", head=head))


def test_window_bound_needs_brackets_hint() -> None:
    diagnostic = one(rule_with("    d = active drug\n    no inr since d.start + 3 d"), "R030")
    assert diagnostic.hint is not None and "brackets" in diagnostic.hint


def test_default_pack_checks_clean() -> None:
    text = DEFAULT_PACK.read_text(encoding="utf-8")
    assert diagnostics_of(text) == []


# CLI entry point ---------------------------------------------------------------------------------


def test_check_command_ok_prints_ir_on_request(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert check_command([DEFAULT_PACK], show_ir=True, out=out, err=err) == 0
    ir = json.loads(out.getvalue())
    assert ir["ir_version"] == 1 and len(ir["rules"]) >= 35
    assert "0 error(s), 0 warning(s)" in err.getvalue()


def test_check_command_reports_errors_and_fails(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert check_command([MISTAKES, DEFAULT_PACK], out=out, err=err) == 1
    assert out.getvalue() == ""
    text = err.getvalue()
    assert "mistakes.rules:26:16: error[R012] unknown lab 'kaliemie'" in text
    assert "hint: did you mean 'potassium'?" in text
    assert text.rstrip().endswith("0 error(s), 0 warning(s)")  # the default pack still checked


def test_exactly_is_for_atc_codes_and_set_routes_are_checked() -> None:
    found = one(HEADER + "set s = icd10 exactly K25\n", "R030")
    assert found.message == "`exactly` is for ATC codes"
    assert found.span.column == 15
    found = one(HEADER + "set s = atc N05A except exactly N05AX\n", "R030")
    assert found.message == "`exactly` is not allowed after `except`"
    wrong = one(HEADER + "set s = atc J01GB route iv, intravenus\n", "R014")
    assert wrong.message.startswith("unknown route 'intravenus'")
    # `route` may start the next line of a set, and route sets are expanded
    text = HEADER + "set parenteral = route iv, im\nset s = atc J01GB\n    route parenteral\n"
    ir, found_all = compile_pack(text, "t.rules")
    assert ir is not None, found_all
    assert ir["sets"]["s"]["terms"] == [
        {"include": ["J01GB"], "exclude": [], "routes": ["im", "iv"]}
    ]
