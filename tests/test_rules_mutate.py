"""The mutation check: a moved threshold or window some case notices is killed, one no case
notices survives, a mutant that does not compile is counted apart, a failing case kills nothing."""

from __future__ import annotations

import textwrap
from pathlib import Path

from vigie.rules.testing.mutate import mutants, run_mutants

PACK = """\
pack "mini" version "1.0.0"
set raising = atc C09AA
param k_max = 5.5 mmol/L in 5.0 .. 6.5 "Seuil"

rule bio.k "Hyperkaliémie"
  problem 7 intervention 2 severity major level 1
  when
    d = active drug in raising
    k = latest potassium within 48 h
    k > k_max
  say "K+ {k}"
"""

CASE = """
  - name: NAME
    rule: bio.k
    drugs: [{id: rami, atc: C09AA05, dose: 5 mg, per_day: 1, start: -5d, route: oral}]
    labs: [{potassium: VALUE mmol/L, at: AGE}]
    expect: EXPECT
"""


def _tests(tmp_path: Path, *cases: tuple[str, str, str, str]) -> Path:
    body = "".join(
        CASE.replace("NAME", name)
        .replace("VALUE", value)
        .replace("AGE", age)
        .replace("EXPECT", expect)
        for name, value, age, expect in cases
    )
    path = tmp_path / "mini.yaml"
    path.write_text(f"packs: mini.rules\ncases:{textwrap.dedent(body)}", encoding="utf-8")
    return path


def test_the_mutants_are_every_number_doubled_and_halved_and_the_cursor_bounds() -> None:
    found = {(m.owner, m.written, m.new, m.how) for m in mutants(PACK)}
    assert found == {
        ("param k_max", "5.5", "5.0", "low bound"),
        ("param k_max", "5.5", "6.5", "high bound"),
        ("rule bio.k", "48", "96", "doubled"),
        ("rule bio.k", "48", "24", "halved"),
    }
    (mutant,) = [m for m in mutants(PACK) if m.how == "doubled"]
    assert "within 96 h" in mutant.apply(PACK)


def test_a_window_no_case_probes_survives_and_a_probed_threshold_is_killed(
    tmp_path: Path,
) -> None:
    pack = tmp_path / "mini.rules"
    pack.write_text(PACK, encoding="utf-8")
    tests = _tests(
        tmp_path,
        ("fires at 5.9", "5.9", "-6h", "[{rule: bio.k}]"),
        ("quiet at 5.5", "5.5", "-6h", "[]"),
        ("quiet at 5.4", "5.4", "-6h", "[]"),
    )
    report = run_mutants(pack, [tests], mutants(PACK))
    killed = {(m.new, case) for m, case in report.killed}
    assert killed == {("5.0", "quiet at 5.5"), ("6.5", "fires at 5.9")}
    # no case has a potassium near the 48 h edge: widening or narrowing it goes unnoticed
    assert {m.new for m in report.survived} == {"96", "24"}
    assert report.failing == [] and report.invalid == []


def test_a_case_at_the_window_edge_kills_both_window_mutants(tmp_path: Path) -> None:
    pack = tmp_path / "mini.rules"
    pack.write_text(PACK, encoding="utf-8")
    tests = _tests(
        tmp_path,
        ("inside at 36 h", "5.9", "-36h", "[{rule: bio.k}]"),
        ("outside at 60 h", "5.9", "-60h", "[]"),
    )
    window = [m for m in mutants(PACK) if m.owner == "rule bio.k"]
    report = run_mutants(pack, [tests], window)
    assert {m.new: case for m, case in report.killed} == {
        "96": "outside at 60 h",
        "24": "inside at 36 h",
    }


def test_a_case_failing_on_the_pack_as_written_kills_nothing(tmp_path: Path) -> None:
    pack = tmp_path / "mini.rules"
    pack.write_text(PACK, encoding="utf-8")
    tests = _tests(tmp_path, ("wrongly expects an alert at 5.0", "5.0", "-6h", "[{rule: bio.k}]"))
    report = run_mutants(pack, [tests], mutants(PACK))
    assert report.failing == [f"{tests}::wrongly expects an alert at 5.0"]
    assert report.killed == [] and len(report.survived) == 4
