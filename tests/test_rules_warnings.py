"""Warnings for plausible-looking but wrong rules (issue 8): a threshold in the wrong unit (R036),
an ATC code no known product carries (R060); and the unit hints of R032.

Expected values come from chemistry and the WHO ATC index, not from the code: creatinine's molar
mass 113.12 g/mol makes 1 mg/dL = 88.4 µmol/L, glucose's 180.16 g/mol makes 1 g/L = 5.55 mmol/L;
1 mmol = 1000 µmol; ramipril is C09AA05, lithium N05AN01, rivaroxaban..edoxaban B01AF01..03.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from vigie.engine.quality import PLAUSIBILITY
from vigie.rules import check_command, compile_pack
from vigie.rules.concepts import default_catalogue
from vigie.rules.diagnostics import Diagnostic
from vigie.rules.plausibility import threshold_ranges

PACKS = sorted((Path(__file__).parents[1] / "rules" / "packs").glob("*.rules"))
HEADER = 'pack "t" version "1.0.0"\n'


def rule(when: str, head: str = "") -> str:
    return (
        HEADER + head + 'rule t.r "T"\n  problem 7 intervention 2 severity major\n'
        f'  when\n{when}\n  say "x"\n'
    )


def labs(condition: str, head: str = "") -> str:
    return rule(
        "    c = latest creatinine within 48 h\n    g = latest glucose within 48 h\n"
        "    p = latest platelets within 48 h\n    i = latest inr within 48 h\n"
        "    k = latest potassium within 48 h\n    c0 = first creatinine within 7 d\n"
        f"    {condition}",
        head,
    )


def diagnostics(text: str) -> list[Diagnostic]:
    ir, found = compile_pack(text, "t.rules")
    assert ir is not None, found  # warnings never stop the compilation
    return found


def codes(text: str, code: str) -> list[Diagnostic]:
    return [d for d in diagnostics(text) if d.code == code]


# R036: unit slips ---------------------------------------------------------------------------


def test_creatinine_in_mmol_per_litre_is_a_slip_with_both_ranges_and_the_unit_meant() -> None:
    (found,) = codes(labs("c > 1.2 mmol/L"), "R036")
    assert found.severity == "warning"
    assert "creatinine" in found.message
    assert "1.2 mmol/L (1200 µmol/L)" in found.message
    low, high = threshold_ranges()["creatinine"]
    assert f"{low / 1000:g}–{high / 1000:g} mmol/L" in found.message  # the unit written
    assert f"{low:g}–{high:g} µmol/L" in found.message  # the canonical unit
    assert found.hint == "did you mean mg/dL? 1.2 mg/dL is 106.1 µmol/L"


def test_glucose_in_mmol_per_litre_written_for_grams_per_litre() -> None:
    (found,) = codes(labs("g < 0.6 mmol/L"), "R036")
    assert "glucose" in found.message and "0.6 mmol/L" in found.message
    assert found.hint == "did you mean g/L? 0.6 g/L is 3.33 mmol/L"


@pytest.mark.parametrize(
    ("condition", "meant"),
    [
        ("g < 70 mmol/L", "mg/dL"),  # 70 mg/dL = 3.9 mmol/L, the ADA level 1 hypoglycaemia
        ("c > 120 mg/dL", "µmol/L"),
    ],
)
def test_other_slips_name_the_unit_meant(condition: str, meant: str) -> None:
    (found,) = codes(labs(condition), "R036")
    assert found.hint is not None and found.hint.startswith(f"did you mean {meant}?")


def test_a_slip_with_no_unit_to_suggest_still_warns() -> None:
    (found,) = codes(labs("i > 40"), "R036")  # INR is a ratio: no other unit
    assert found.hint == "inr is a number without unit; check the number and its unit"
    (found,) = codes(labs("k > 55 mmol/L"), "R036")
    assert found.hint == "potassium is in mmol/L; check the number and its unit"
    # 50 000 /mm3 would be 50 G/L, but /mm3 cannot be written in a rule: no suggestion
    (found,) = codes(labs("p < 50000 G/L"), "R036")
    assert found.hint == "platelets is in G/L; check the number and its unit"


@pytest.mark.parametrize(
    "condition",
    [
        "c > 1.2 mg/dL",  # 106 µmol/L
        "c > 120 µmol/L",
        "c >= 354 µmol/L",  # KDIGO stage 3
        "g < 70 mg/dL",
        "g < 0.6 g/L",
        "g < 3.3 mmol/L",
        "p < 50 G/L",
        "i > 4",
        "k in 3.5 .. 5 mmol/L",
        "c - c0 >= 5 µmol/L",  # a rise, not a level: not checked
    ],
)
def test_plausible_thresholds_do_not_warn(condition: str) -> None:
    assert codes(labs(condition), "R036") == []


def test_both_bounds_of_a_range_and_the_left_side_are_checked() -> None:
    found = codes(labs("c in 1 .. 2 mmol/L or 1.2 mmol/L < c"), "R036")
    assert [d.message.split(": ")[1].split(" is")[0] for d in found] == [
        "2 mmol/L (2000 µmol/L)",  # 1 mmol/L = 1000 µmol/L is within the range
        "1.2 mmol/L (1200 µmol/L)",
    ]


def test_a_parameter_default_is_checked_where_it_is_compared_with_a_lab() -> None:
    head = 'param creat_max = 1.2 mmol/L in 1 .. 2 "Créatinine"\n'
    (found,) = codes(labs("c > creat_max", head), "R036")
    assert found.span.line == 12 and "1.2 mmol/L (1200 µmol/L)" in found.message


def test_check_command_shows_warnings_and_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "slip.rules"
    path.write_text(labs("c > 1.2 mmol/L") + "\nset acei = atc C09AA99\n", encoding="utf-8")
    err = io.StringIO()
    assert check_command([path], out=io.StringIO(), err=err) == 0
    text = err.getvalue()
    assert "warning[R036]" in text and "warning[R060]" in text
    assert text.count("warning[R036]") == text.count("warning[R060]") == 1
    assert "0 error(s)" in text


def test_threshold_ranges_cover_every_lab_and_lie_within_the_data_quality_limits() -> None:
    """One truth about what is physiologically possible: the data-quality limits
    (engine/plausibility.csv) bound every threshold range."""
    ranges = threshold_ranges()
    assert set(ranges) == set(default_catalogue().concepts)
    for concept, (low, high) in ranges.items():
        assert 0 < low < high
        if concept in PLAUSIBILITY:
            limit_low, limit_high = PLAUSIBILITY[concept]
            assert limit_low <= low and high <= limit_high, concept


# R060: unknown ATC codes --------------------------------------------------------------------


def test_an_atc_code_no_product_carries_warns_with_close_known_codes() -> None:
    (found,) = codes(HEADER + "set acei = atc C09AA99\n", "R060")
    assert found.severity == "warning"
    assert found.message == "ATC code C09AA99 matches no known product"
    assert found.hint is not None and found.hint.startswith("known codes nearby: C09AA")
    (found,) = codes(HEADER + "set x = atc C99\n", "R060")  # no therapeutic group C99
    assert found.span.column == 13


@pytest.mark.parametrize(
    "codes_text",
    [
        "C09AA05",  # ramipril
        "C09A, C09AA",  # level prefixes
        "N05AN01",  # lithium: marketed, not in the BDPM product table (reviewed WHO code)
        "B01AF01..B01AF03",
        "C09A except C09AA99",  # leaving out a code that matches nothing is harmless
    ],
)
def test_known_atc_codes_do_not_warn(codes_text: str) -> None:
    assert codes(HEADER + f"set s = atc {codes_text}\n", "R060") == []


def test_a_range_warns_only_when_none_of_its_codes_is_known() -> None:
    (found,) = codes(HEADER + "set s = atc C09AA97..C09AA99\n", "R060")
    assert found.message == "ATC range C09AA97..C09AA99 matches no known product"


# The shipped packs ----------------------------------------------------------------------------


@pytest.mark.parametrize("pack", PACKS, ids=[p.name for p in PACKS])
def test_the_shipped_packs_raise_neither_warning(pack: Path) -> None:
    found = diagnostics(pack.read_text(encoding="utf-8"))
    assert [d for d in found if d.code in ("R036", "R060")] == []


# R032: unit hints ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "hint"),
    [
        ("hrs", "did you mean 'h'?"),
        ("wks", "did you mean 'w'?"),
        ("mg/dk", "did you mean 'mg/dL'?"),
        ("mmol", "did you mean 'mmol/L'?"),
        ("mins", "durations are in ms, s, h, d, w, months or years (30 min = 0.5 h)"),
    ],
)
def test_an_unknown_unit_suggests_the_unit_meant(unit: str, hint: str) -> None:
    text = labs(f"k > 5 mmol/L and (latest potassium within 48 h).time > now - 2 {unit}")
    _, found = compile_pack(text, "t.rules")
    (unknown,) = [d for d in found if d.code == "R032"]
    assert unknown.message == f"unknown unit '{unit}'" and unknown.hint == hint


def test_an_exact_code_no_product_carries_itself_warns() -> None:
    # The BDPM tables code five CIS N05AX itself (DEPAKOTE, DIVALCOTE, DEPAMIDE: valproate
    # products without a substance level) and none C09AA itself (every ACE inhibitor is coded
    # at the substance level, C09AA01...).
    assert codes(HEADER + "set valproate = atc exactly N05AX\n", "R060") == []
    (found,) = codes(HEADER + "set acei = atc exactly C09AA\n", "R060")
    assert found.severity == "warning"
    assert found.message == "no known product is coded exactly C09AA"
    assert found.hint is not None and "C09AA01" in found.hint
    assert found.span.column == 16
    # after `except`, an exact code matching nothing is harmless, as a plain one
    assert codes(HEADER + "set s = atc N05AX, exactly N05AX except N05AX99\n", "R060") == []
