"""Terminology tables and unit conversion: conversions, drug codes (BDPM, RxNorm, site formulary),
allergens, diagnoses, routes, and coverage of the codes met in the reference data."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vigie.terminology import (
    DATA_DIR,
    Terminology,
    UnknownUnit,
    default_terminology,
    normalise_icd10,
    normalise_system,
    ucd13,
)
from vigie.terminology.build_tables import build

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
UCD = "http://data.esante.gouv.fr/ansm/medicament/UCD"
ATC_SHAPE = r"[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?"


@pytest.fixture(scope="module")
def terms() -> Terminology:
    return Terminology()


# Reference data walkers ----------------------------------------------------------------


def _fhir_resources(fhir: Path) -> Iterator[dict]:
    """Every resource of the Synthea bundles and bulk NDJSON files."""
    for path in sorted((fhir / "synthea-r4").glob("*.json")):
        if path.name != "MANIFEST.json":
            yield from (e["resource"] for e in json.loads(path.read_text())["entry"])
    for path in sorted((fhir / "synthea-bulk-10").glob("*.ndjson")):
        yield from (json.loads(line) for line in path.read_text().splitlines() if line.strip())


def _codings(node: object) -> Iterator[dict]:
    if isinstance(node, dict):
        if "system" in node and "code" in node:
            yield node
        for value in node.values():
            yield from _codings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _codings(value)


def _rxnorm_codes(fhir: Path) -> dict[str, str]:
    """RxNorm code → display, anywhere in the drug and allergy resources."""
    kinds = {"MedicationRequest", "Medication", "MedicationStatement", "AllergyIntolerance"}
    return {
        c["code"]: c.get("display", "")
        for r in _fhir_resources(fhir)
        if r["resourceType"] in kinds
        for c in _codings(r)
        if normalise_system(c["system"]) == "RXNORM"
    }


def _bdpm(path: Path) -> Iterator[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        for line in handle:
            yield line.rstrip("\r\n").split("\t")


# Units ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("concept", "value", "unit", "expected"),
    [
        ("creatinine", 1.0, "mg/dL", 88.42),
        ("creatinine", 1.2, "mg/dl", 106.104),
        ("creatinine", 12.0, "mg/L", 106.104),
        ("creatinine", 0.1, "mmol/L", 100.0),
        ("creatinine", 88.42, "µmol/L", 88.42),
        ("creatinine", 88.42, "umol/L", 88.42),
        ("glucose", 1.0, "g/L", 5.55062),
        ("glucose", 1.0, "g/l", 5.55062),
        ("glucose", 180.16, "mg/dL", 10.0),
        ("glucose", 5.5, "mmol/L", 5.5),
        ("platelets", 250_000, "/mm3", 250.0),
        ("platelets", 250_000, "{cells}/uL", 250.0),
        ("platelets", 250, "10*3/uL", 250.0),
        ("platelets", 250, "giga.l-1", 250.0),
        ("weight", 150.0, "[lb_av]", 68.038856),
        ("weight", 150.0, "lb", 68.038856),
        ("weight", 70_000, "g", 70.0),
        ("potassium", 4.2, "mEq/L", 4.2),
        ("digoxin", 1.0, "nmol/L", 0.781),
    ],
)
def test_to_canonical_converts_known_units(
    terms: Terminology, concept: str, value: float, unit: str, expected: float
) -> None:
    converted, canonical = terms.to_canonical(concept, value, unit)
    assert canonical == terms.concepts[concept].unit
    assert converted == pytest.approx(expected, rel=1e-5)


def test_creatinine_round_trip_between_mg_dl_and_umol_l(terms: Terminology) -> None:
    umol, _ = terms.to_canonical("creatinine", 1.0, "mg/dL")
    # mg/dL ↔ µmol/L are the same quantity: 88.42 µmol/L back through the factor is 1 mg/dL.
    assert umol / 88.42 == pytest.approx(1.0)
    assert terms.to_canonical("creatinine", umol, "µmol/L") == (umol, "µmol/L")


@pytest.mark.parametrize(
    ("concept", "unit"),
    [("creatinine", "furlong"), ("creatinine", "mmol/mol"), ("weight", "mg/dL"), ("inr", "s")],
)
def test_unknown_unit_raises(terms: Terminology, concept: str, unit: str) -> None:
    with pytest.raises(UnknownUnit) as raised:
        terms.to_canonical(concept, 1.0, unit)
    assert raised.value.unit == unit
    assert raised.value.canonical == terms.concepts[concept].unit


def test_missing_unit_raises_unless_canonical_is_dimensionless(terms: Terminology) -> None:
    with pytest.raises(UnknownUnit):
        terms.to_canonical("creatinine", 80.0, None)


_CONVERTIBLE = sorted(
    {
        (r["concept"], r["from_unit"])
        for r in csv.DictReader(
            line
            for line in (DATA_DIR / "unit_conversions.csv").read_text("utf-8").splitlines()
            if not line.startswith("#")
        )
        if r["concept"] != "*"
    }
)
_VALUES = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)


@pytest.mark.property
@given(pair=st.sampled_from(_CONVERTIBLE), a=_VALUES, b=_VALUES, k=st.integers(2, 1000))
def test_conversion_is_monotonic_and_proportional(
    pair: tuple[str, str], a: float, b: float, k: int
) -> None:
    terms = default_terminology()
    concept, unit = pair
    low, high = sorted((a, b))
    to_canon = terms.to_canonical
    assert to_canon(concept, low, unit)[0] <= to_canon(concept, high, unit)[0]
    single, scaled = to_canon(concept, low, unit)[0], to_canon(concept, k * low, unit)[0]
    # Results are rounded to 6 decimals, hence the absolute tolerance.
    assert math.isclose(scaled, k * single, rel_tol=1e-6, abs_tol=k * 1e-6)


# Lab codes, routes, systems ------------------------------------------------------------


@pytest.mark.parametrize(
    ("system", "code", "concept"),
    [
        ("http://loinc.org", "2160-0", "creatinine"),
        ("http://loinc.org", "59826-8", "creatinine"),
        ("LN", "48642-3", "egfr"),
        ("http://loinc.org", "38875-1", "inr"),
        ("http://loinc.org", "46418-0", "inr"),
        ("http://loinc.org", "1554-5", "glucose"),
        ("http://loinc.org", "26515-7", "platelets"),
    ],
)
def test_lab_codes(terms: Terminology, system: str, code: str, concept: str) -> None:
    found = terms.lab_concept(system, code)
    assert found is not None and found.name == concept


@pytest.mark.parametrize(
    ("system", "code", "route"),
    [
        (SNOMED, "26643006", "oral"),
        (SNOMED, "47625008", "iv"),
        (SNOMED, "34206005", "sc"),
        (SNOMED, "78421000", "im"),
        (SNOMED, "45890007", "transdermal"),
        ("http://standardterms.edqm.eu", "20053000", "oral"),
        ("http://standardterms.edqm.eu", "20045000", "iv"),
        ("EDQM", "20066000", "sc"),
        ("edqm", "20035000", "im"),
        ("urn:oid:0.4.0.127.0.16.1.1.2.1", "20070000", "transdermal"),
        ("PN13", "54", "oral"),
        ("PN13", "49", "iv"),
        (None, "Voie orale", "oral"),
    ],
)
def test_route_codes(terms: Terminology, system: str | None, code: str, route: str) -> None:
    assert terms.route(system, code) == route


@pytest.mark.parametrize(
    ("system", "short"),
    [
        ("http://standardterms.edqm.eu", "EDQM"),
        ("http://snomed.info/sct", "SNOMED"),
        (RXNORM, "RXNORM"),
        (UCD, "UCD"),
        ("cip7", "CIP7"),
        (None, "LOCAL"),
    ],
)
def test_normalise_system(system: str | None, short: str) -> None:
    assert normalise_system(system) == short


def test_unmapped_codes_return_none(terms: Terminology) -> None:
    assert terms.lab_concept("http://loinc.org", "0000-0") is None
    assert terms.implied_unit("http://loinc.org", "0000-0") is None
    assert terms.drug_atc(RXNORM, "999999999") is None
    assert terms.drug_atc("CIS", "00000000") is None
    assert terms.drug_atc("LOCAL", "NOT-IN-FORMULARY") is None
    assert terms.route(SNOMED, "0") is None
    assert terms.icd10(SNOMED, "160903007") is None  # "Full-time employment"
    assert terms.icd10("http://loinc.org", "2160-0") is None
    assert terms.allergy_atc(SNOMED, "0") == ()
    assert terms.allergy_is_drug(SNOMED, "0") is None


# BDPM drug tables ----------------------------------------------------------------------


def test_cis_to_atc_on_every_bdpm_mitm_row(terms: Terminology, shared_data: Path) -> None:
    rows = list(_bdpm(shared_data / "bdpm" / "CIS_MITM.txt"))
    assert len(rows) > 8000
    wrong = [(cis, atc) for cis, atc, *_ in rows if terms.drug_atc("CIS", cis) != atc]
    assert wrong == []


def test_cip13_and_cip7_to_atc_on_real_bdpm_rows(terms: Terminology, shared_data: Path) -> None:
    mitm = {f[0]: f[1] for f in _bdpm(shared_data / "bdpm" / "CIS_MITM.txt")}
    packs = [f for f in _bdpm(shared_data / "bdpm" / "CIS_CIP_bdpm.txt") if f[0] in mitm]
    assert len(packs) > 12000
    for cis, cip7, *_, cip13 in (f[:7] for f in packs):
        assert terms.drug_atc("urn:oid:1.2.250.1.213.2.3.2", cip13) == mitm[cis]
        assert terms.drug_atc("CIP7", cip7) == mitm[cis]
    # First row of CIS_CIP_bdpm.txt: ANASTROZOLE, ATC inherited from its generic group.
    assert terms.drug_atc("CIP13", "3400949497294") == "L02BG03"
    assert terms.drug_atc("CIP", "4949729") == "L02BG03"  # 7 digits sent as CIP: a CIP7


def test_bdpm_tables_are_current_and_deterministic(shared_data: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    counts = build(shared_data / "bdpm", first)
    build(shared_data / "bdpm", second)
    assert counts["drugs_bdpm_cis.csv.gz"] > 11000
    for name in counts:
        assert (first / name).read_bytes() == (second / name).read_bytes()
        assert (first / name).read_bytes() == (DATA_DIR / name).read_bytes(), f"rebuild {name}"


def test_substance_table_maps_thesaurus_spelling(terms: Terminology) -> None:
    assert "A10BA02" in terms.substance_atc("metformine")
    assert terms.substance_atc("METFORMINE", single_only=True) == {"A10BA02"}
    assert "N02BE01" in terms.substance_atc("Paracétamol")
    assert terms.substance_atc("not a substance") == frozenset()


# RxNorm ----------------------------------------------------------------------------------


def test_every_rxnorm_code_in_reference_fhir_is_in_the_table(
    terms: Terminology, shared_data: Path
) -> None:
    codes = _rxnorm_codes(shared_data / "fhir")
    assert len(codes) >= 70
    missing = {c: d for c, d in codes.items() if not terms.drug_known(RXNORM, c)}
    assert missing == {}
    for code in codes:
        atc = terms.drug_atc(RXNORM, code)
        assert atc is None or re.fullmatch(ATC_SHAPE, atc), (code, atc)


@pytest.mark.parametrize(
    ("code", "atc"),
    [
        ("860975", "A10BA02"),  # 24 HR Metformin hydrochloride 500 MG ER
        ("855332", "B01AA03"),  # Warfarin Sodium 5 MG
        ("562251", "J01CR02"),  # Amoxicillin / Clavulanate
        ("10831", "J01EE01"),  # Sulfamethoxazole / Trimethoprim
        ("106892", "A10AD01"),  # Humulin 70/30
        ("1599803", "N06DA52"),  # Donepezil / Memantine
        ("243670", "B01AC06"),  # Aspirin 81 MG
        ("197604", "C01AA05"),  # Digoxin 0.125 MG
        ("1367439", "G02BB01"),  # NuvaRing
        ("1719286", "C03CA01"),  # Furosemide injection
    ],
)
def test_rxnorm_spot_checks(terms: Terminology, code: str, atc: str) -> None:
    assert terms.drug_atc(RXNORM, code) == atc


def test_empty_atc_is_known_but_unmapped(tmp_path: Path) -> None:
    for name in ("labs.csv", "lab_codes.csv", "unit_aliases.csv", "unit_conversions.csv"):
        shutil.copy(DATA_DIR / name, tmp_path / name)
    (tmp_path / "routes.csv").write_text("system,code,route\n", encoding="utf-8")
    (tmp_path / "drugs_test.csv").write_text(
        "# test table\nsystem,code,atc\nRXNORM,1,\nRXNORM,2,a10ba02\n", encoding="utf-8"
    )
    terms = Terminology(data_dir=tmp_path)
    assert terms.drug_atc(RXNORM, "1") is None
    assert terms.drug_known(RXNORM, "1")
    assert terms.allergy_is_drug(RXNORM, "1") is False
    assert terms.drug_atc(RXNORM, "2") == "A10BA02"
    assert not terms.drug_known(RXNORM, "3")
    assert terms.icd10(SNOMED, "433144002") is None  # no condition table in this directory


# Site formulary ------------------------------------------------------------------------


def test_ucd7_expands_to_ucd13() -> None:
    assert ucd13("9216902") == "3400892169026"
    assert ucd13("3400892169026") == "3400892169026"


@pytest.mark.parametrize(
    ("system", "code", "atc"),
    [
        (UCD, "3400892669236", "B01AB05"),  # LOVENOX 4000UI
        (UCD, "3400890387606", "A10BA02"),  # GLUCOPHAGE 500MG
        ("UCD", "9216902", "N02BE01"),  # DOLIPRANE 1000MG, UCD7 as in PN13
        ("http://BogusSystemMedicabase.com", "MV00001070", "B01AA12"),  # FLUINDIONE
    ],
)
def test_site_table(terms: Terminology, system: str, code: str, atc: str) -> None:
    assert terms.drug_atc(system, code) == atc


def test_every_ucd_code_of_the_french_examples_is_in_the_site_table(
    terms: Terminology, shared_data: Path
) -> None:
    ig = shared_data / "fr-medication-ig"
    found = {
        c["code"]
        for path in sorted((ig / "fhir_bundles").glob("*.json"))
        for c in _codings(json.loads(path.read_text()))
        if normalise_system(c["system"]) == "UCD"
    }
    for path in sorted((ig / "pn13_xml").glob("*.xml")):
        text = path.read_text(encoding="iso-8859-1")
        found |= set(re.findall(r"<Code_composant_1>(\d+)</", text))
    assert len(found) > 30
    assert {code for code in found if not terms.drug_atc("UCD", code)} == set()


def test_site_override_through_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "site_drugs.csv").write_text(
        "system,code,atc\nLOCAL,FORM-0042,C09AA05\nUCD,3400892669236,\n", encoding="utf-8"
    )
    (tmp_path / "site_lab_codes.csv").write_text(
        "system,code,concept,implied_unit\nLOCAL,CREA,creatinine,µmol/L\n", encoding="utf-8"
    )
    monkeypatch.setenv("VIGIE_SITE_TABLES", str(tmp_path))
    default_terminology.cache_clear()
    try:
        terms = default_terminology()
        assert terms.drug_atc("LOCAL", "FORM-0042") == "C09AA05"
        assert terms.drug_atc(None, "FORM-0042") == "C09AA05"
        # The site marks the shipped LOVENOX row as known but unmapped: its choice wins.
        assert terms.drug_atc(UCD, "3400892669236") is None
        assert terms.drug_known(UCD, "3400892669236")
        assert terms.lab_concept("LOCAL", "CREA").name == "creatinine"
        assert terms.drug_atc(RXNORM, "860975") == "A10BA02"  # shipped tables still there
    finally:
        monkeypatch.undo()  # before clearing, so that no later test sees the site tables
        default_terminology.cache_clear()
    assert Terminology().drug_atc(UCD, "3400892669236") == "B01AB05"


# Allergies -------------------------------------------------------------------------------


def test_every_allergy_code_in_reference_fhir_is_classified(
    terms: Terminology, shared_data: Path
) -> None:
    allergens = {
        (c["system"], c["code"])
        for r in _fhir_resources(shared_data / "fhir")
        if r["resourceType"] == "AllergyIntolerance"
        for c in r["code"]["coding"]
    }
    assert len(allergens) >= 18
    assert {a for a in allergens if terms.allergy_is_drug(*a) is None} == set()


def test_allergy_atc(terms: Terminology) -> None:
    assert terms.allergy_atc(SNOMED, "91936005") == ("J01C",)
    assert "B01AC06" in terms.allergy_atc(RXNORM, "1191")
    assert terms.allergy_atc(RXNORM, "10831") == ("J01EE",)
    assert terms.allergy_is_drug(RXNORM, "1191") is True
    assert terms.allergy_atc(SNOMED, "418689008") == ()  # grass pollen
    assert terms.allergy_is_drug(SNOMED, "91935009") is False  # peanuts
    # Not an allergen row: falls back to the drug tables.
    assert terms.allergy_atc(RXNORM, "308192") == ("J01CA04",)
    assert terms.allergy_is_drug(RXNORM, "308192") is True


# Diagnoses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("K92.0", "K92.0"),
        ("K920", "K92.0"),
        ("k92.0", "K92.0"),
        (" N18.5 ", "N18.5"),
        ("E11", "E11"),
        ("G63.2*", "G63.2"),
        ("Z5100", "Z51.00"),
        ("U07.1", "U07.1"),
        ("K9", None),
        ("92.0", None),
        ("", None),
        ("not a code", None),
    ],
)
def test_icd10_normalisation(terms: Terminology, code: str, expected: str | None) -> None:
    assert normalise_icd10(code) == expected
    assert terms.icd10("http://hl7.org/fhir/sid/icd-10", code) == expected


@pytest.mark.parametrize(
    ("snomed", "icd10"),
    [
        ("431857002", "N18.4"),  # CKD stage 4
        ("46177005", "N18.5"),  # end-stage renal disease
        ("44054006", "E11"),  # type 2 diabetes
        ("72892002", "Z34.9"),  # normal pregnancy
        ("88805009", "I50.0"),  # chronic congestive heart failure
        ("59621000", "I10"),  # essential hypertension
        ("6072007", "K62.5"),  # bleeding from anus
    ],
)
def test_snomed_conditions_to_icd10(terms: Terminology, snomed: str, icd10: str) -> None:
    assert terms.icd10(SNOMED, snomed) == icd10


def test_condition_table_codes_are_met_in_reference_data(
    terms: Terminology, shared_data: Path
) -> None:
    met = {
        c["code"]
        for r in _fhir_resources(shared_data / "fhir")
        if r["resourceType"] == "Condition"
        for c in _codings(r.get("code", {}))
    }
    table = {
        r["snomed"]
        for r in csv.DictReader(
            line
            for line in (DATA_DIR / "conditions_snomed_icd10.csv").read_text("utf-8").splitlines()
            if not line.startswith("#")
        )
    }
    assert table <= met
    assert all(terms.icd10(SNOMED, code) for code in table)


# Compositions of combination products (issue 8 item 4) --------------------------------------


def _compo_rows(shared_data: Path, cis: str) -> list[list[str]]:
    """CIS_COMPO_bdpm.txt lines of one product, read with csv independently of the builder."""
    path = shared_data / "bdpm" / "CIS_COMPO_bdpm.txt"
    with path.open(encoding="utf-8", newline="") as handle:
        return [row for row in csv.reader(handle, delimiter="\t") if row and row[0] == cis]


def test_compositions_of_combination_products_follow_the_bdpm(
    terms: Terminology, shared_data: Path
) -> None:
    # DAFALGAN CODEINE: the two SA lines of CIS_COMPO_bdpm.txt, strength per tablet
    source = {(r[3], r[4], r[5]) for r in _compo_rows(shared_data, "66003374") if r[6] == "SA"}
    assert source == {
        ("PARACÉTAMOL", "500 mg", "un comprimé"),
        ("CODÉINE (PHOSPHATE DE) HÉMIHYDRATÉ", "30 mg", "un comprimé"),
    }
    found = terms.drug_ingredients("CIS", "66003374")
    assert {(i.name, i.amount, i.unit, i.per_amount, i.per_unit, i.source) for i in found} == {
        ("PARACÉTAMOL", 500.0, "mg", 1.0, None, "bdpm"),
        ("CODÉINE (PHOSPHATE DE) HÉMIHYDRATÉ", 30.0, "mg", 1.0, None, "bdpm"),
    }
    # the substance's own ATC, from the BDPM products of paracetamol alone
    assert {i.name: i.atc for i in found}["PARACÉTAMOL"] == "N02BE01"
    # a CIP13 of the product (CIS_CIP_bdpm.txt) gives the same composition
    assert terms.drug_ingredients("CIP13", "3400933275815") == found
    # a single-substance product (DOLIPRANE 1000 mg, CIS 60234100) and unknown codes: none
    assert terms.drug_ingredients("CIS", "60234100") == ()
    assert terms.drug_ingredients("CIS", "1") == ()


def test_site_compositions_are_the_bdpm_ones_of_the_named_products(terms: Terminology) -> None:
    # compositions_site.csv copies the BDPM rows of the CIS each UCD label names
    for ucd, cis in [("3400891479287", "66003374"), ("3400893936047", "60904643")]:
        site = terms.drug_ingredients("UCD", ucd)
        bdpm = terms.drug_ingredients("CIS", cis)
        assert [i._replace(source=None) for i in site] == [i._replace(source=None) for i in bdpm]
        assert {i.source for i in site} == {"site"}
    # a UCD7 expands to its UCD13 as for the ATC
    assert terms.drug_ingredients("UCD", "9147928") == terms.drug_ingredients(
        "UCD", "3400891479287"
    )


def test_a_strength_given_on_the_active_moiety_only_is_read_from_it(
    terms: Terminology, shared_data: Path
) -> None:
    # Amoxicillin/clavulanate CIS 60099738: the SA lines (AMOXICILLINE TRIHYDRATÉE, CLAVULANATE
    # DE POTASSIUM) have no strength; their FT lines (active moieties) have 500 mg and 62,5 mg
    rows = _compo_rows(shared_data, "60099738")
    assert {(r[3], r[4], r[6]) for r in rows} == {
        ("AMOXICILLINE ANHYDRE", "500 mg", "FT"),
        ("AMOXICILLINE TRIHYDRATÉE", "", "SA"),
        ("CLAVULANATE DE POTASSIUM", "", "SA"),
        ("CLAVULANIQUE (ACIDE)", "62,5 mg", "FT"),
    }
    found = terms.drug_ingredients("CIS", "60099738")
    assert {(i.name, i.amount, i.unit) for i in found} == {
        ("AMOXICILLINE ANHYDRE", 500.0, "mg"),
        ("CLAVULANIQUE (ACIDE)", 62.5, "mg"),
    }
