"""The generator's reading of the clinical source, ``shared/rule-catalogue.md``.

The expectations are written from the catalogue's own words (quoted beside each), never from
the rule pack: the truth must stay right when the pack is wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vigie.synthetic.catalogue import SCENARIOS, truth_variants
from vigie.synthetic.rule_catalogue import (
    Catalogue,
    CatalogueError,
    catalogue_text,
    parse_catalogue,
)
from vigie.synthetic.truth import RULE_SEVERITY


@pytest.fixture(scope="module")
def shared_text(shared_data: Path) -> str:
    return (shared_data.parent / "rule-catalogue.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def catalogue(shared_text: str) -> Catalogue:
    return parse_catalogue(shared_text, "shared/rule-catalogue.md")


def test_the_generators_copy_is_the_shared_catalogue(shared_text: str) -> None:
    """The generator's gzipped copy travels with the package; it must be the clinical source
    itself (gzip shared/rule-catalogue.md into synthetic/ again when the catalogue changes)."""
    assert catalogue_text() == shared_text


def test_every_table_row_is_a_rule(catalogue: Catalogue, shared_text: str) -> None:
    rows = [
        line.split("|")[1].strip()
        for line in shared_text.splitlines()
        if line.startswith("| ") and "." in line.split("|")[1]
    ]
    assert len(rows) == 37
    assert list(catalogue.rules) == rows
    sections = {rule.section for rule in catalogue.rules.values()}
    assert sections == {
        "Renal function",
        "Electrolytes and biology",
        "Anticoagulation",
        "Infections and monitoring",
        "Dosage",
        "Elderly and combinations",
    }


@pytest.mark.parametrize(
    ("rule", "phrase", "hours"),
    [
        ("renal.metformin_egfr", "eGFR", 7 * 24),  # "latest eGFR ... within 7 days"
        ("renal.nephrotoxic_aki", "rose", 48),  # "creatinine rose ≥ 26.5 µmol/L within 48 h"
        ("renal.nephrotoxic_aki", "previous", 7 * 24),  # "the lowest of the previous 7 days"
        ("bio.hyperkalaemia", "K+", 48),  # "latest K+ within 48 h > 5.5 mmol/L"
        ("bio.hypokalaemia_qt", "K+", 48),
        ("bio.digoxin", "K+", 48),
        ("bio.hyponatraemia", "Na+", 72),
        ("bio.hypoglycaemia", "glucose", 24),  # "glucose < 3.3 mmol/L within 24 h"
        ("bio.clozapine_neutrophils", "neutrophils", 7 * 24),
        ("bio.hepatotoxic_alt", "ALT", 72),  # "ALT > 5 × upper limit within 72 h"
        ("coag.vka_inr_high", "INR", 72),
        ("coag.vka_no_inr", "active for", 3 * 24),  # "active for ≥ 3 days"
        ("coag.vka_no_inr", "no INR", 7 * 24),  # "no INR in the last 7 days"
        ("coag.vka_relay", "latest INRs", 24),  # "the two latest INRs (≥ 24 h apart)"
        ("infect.duration", "active >", 7 * 24),  # "active > 7 days"
    ],
)
def test_durations_as_the_catalogue_words_them(
    catalogue: Catalogue, rule: str, phrase: str, hours: float
) -> None:
    assert catalogue.duration_hours(rule, phrase) == hours


def test_cursors_and_thresholds(catalogue: Catalogue) -> None:
    window = catalogue.cursor("renal.metformin_egfr", "window")  # "window 7 d in [1, 30]"
    assert (window.default, window.unit, window.low, window.high, window.hours) == (
        7,
        "d",
        1,
        30,
        168,
    )
    egfr = catalogue.cursor("renal.metformin_egfr", "egfr_max")  # "egfr_max 30 in [20, 45]"
    assert (egfr.default, egfr.unit, egfr.low, egfr.high) == (30, None, 20, 45)
    assert catalogue.cursor("tdm.aminoglycoside", "delay").hours == 48  # "delay 48 h in [24, 72]"
    assert catalogue.cursor("renal.nephrotoxic_aki", "rise_abs").default == 26.5
    # "daily dose > 4 g, or > 3 g when weight < 50 kg"
    assert catalogue.quantity("dose.paracetamol_max", "daily dose >") == (4, "g")
    assert catalogue.quantity("dose.paracetamol_max", "or >") == (3, "g")
    assert catalogue.quantity("dose.paracetamol_max", "weight <") == (50, "kg")
    # the severity column: "critical when K+ ≥ 6.0, else major", "major (critical < 125)"
    assert catalogue.quantity("bio.hyperkalaemia", "K+ ≥") == (6.0, "")
    assert catalogue.quantity("bio.hyponatraemia", "critical <") == (125, "")


def test_questions_the_catalogue_cannot_answer_name_the_place(catalogue: Catalogue) -> None:
    with pytest.raises(CatalogueError, match=r"no rule 'bio\.kalaemia'"):
        catalogue.rule("bio.kalaemia")
    with pytest.raises(CatalogueError, match=r"rule-catalogue.md:\d+: bio.digoxin: .* 'sodium'"):
        catalogue.duration_hours("bio.digoxin", "sodium")
    with pytest.raises(CatalogueError, match="no duration"):
        catalogue.duration_hours("dose.paracetamol_max", "daily dose")
    with pytest.raises(CatalogueError, match="has no cursor 'k_max' \\(it has: none\\)"):
        catalogue.cursor("bio.digoxin", "k_max")
    with pytest.raises(CatalogueError, match="not a duration"):
        _ = catalogue.cursor("bio.hyperkalaemia", "k_max").hours


HEADER = (
    "| id | situation | problem → intervention | severity | cursors | source |\n"
    "|---|---|---|---|---|---|\n"
)


@pytest.mark.parametrize(
    ("row", "error"),
    [
        ("| a.b | x | 1 → 2 | major |", r"t.md:5: expected 6 cells, found 4"),
        ("| a.b | x | 1 → 2 | major | k 5 in 1..2 | s |", r"t.md:5: cursor 'k 5 in 1..2'"),
        ("| Bad id | x | 1 → 2 | major | | s |", r"t.md:5: expected a new rule id"),
    ],
)
def test_malformed_rows_are_located(row: str, error: str) -> None:
    with pytest.raises(CatalogueError, match=error):
        parse_catalogue(f"# t\n## S\n{HEADER}{row}\n", "t.md")


def test_a_text_without_tables_is_refused() -> None:
    with pytest.raises(CatalogueError, match="no rule table"):
        parse_catalogue("# nothing here\n", "t.md")


def test_every_catalogue_rule_is_generated_with_a_control(catalogue: Catalogue) -> None:
    """Checked against the catalogue's rule ids, not the pack's nor the generator's."""
    positives = {rule for rule, _, expected in truth_variants() if expected == "positive"}
    controls = {rule for rule, _, expected in truth_variants() if expected == "control"}
    assert set(catalogue.rules) - positives == set()
    assert set(catalogue.rules) - controls == set()
    assert {s.rule for s in SCENARIOS} <= set(catalogue.rules)


def test_the_truths_severities_are_the_catalogues(catalogue: Catalogue) -> None:
    """A rule's usual severity in the truth is the catalogue's: its severity column when it is
    one word, else the level it names after "else" or first ("major (critical < 125)")."""
    words = ("critical", "major", "moderate", "minor")
    for rule_id, rule in catalogue.rules.items():
        text = rule.severity.split("else")[-1] if "else" in rule.severity else rule.severity
        named = [w for w in text.replace(";", " ").replace("(", " ").split() if w in words]
        if rule_id == "coag.warfarin_nsaid":  # "see situation": each variant says its own
            assert named == []
            continue
        assert RULE_SEVERITY[rule_id] == named[0], (rule_id, rule.severity)
