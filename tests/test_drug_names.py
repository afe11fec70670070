"""The fallback from a drug's name to ATC (issue 8 item 3): label parser, name tables, connector,
quality report.

Expected ATC codes are the WHO ATC/DDD Index's (WHO Collaborating Centre for Drug Statistics
Methodology), written here from the index, not read from the tables under test. Strengths are
those the RxNorm names and French product names write.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vigie.connectors.base import RawMessage
from vigie.connectors.fhir import connector as fhir
from vigie.connectors.hl7v2 import connector as hl7v2
from vigie.connectors.tabular.canonical import write_canonical_csv
from vigie.connectors.tabular.connector import TabularConnector
from vigie.engine.quality import quality_report, render_text
from vigie.facts import Coding, FlagCode, MedicationOrder
from vigie.facts.model import Ingredient
from vigie.terminology import DATA_DIR, Terminology
from vigie.terminology.names import (
    DrugNames,
    LabelIngredient,
    name_key,
    parse_label,
    route_class,
)
from vigie.terminology.units import read_rows

UNSEEN = Path(__file__).parent / "data" / "fhir" / "synthea-unseen-rxnorm.json"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
_TERMS = Terminology()


@pytest.fixture(scope="module")
def terms() -> Terminology:
    return Terminology()


@pytest.fixture(scope="module")
def names() -> DrugNames:
    return DrugNames(DATA_DIR)


# Label parser ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "ingredients", "route"),
    [
        ("amlodipine 5 MG Oral Tablet", [("amlodipine", 5.0, "mg", 1.0, None)], "oral"),
        (
            "Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet",
            [("Amoxicillin", 250.0, "mg", 1.0, None), ("Clavulanate", 125.0, "mg", 1.0, None)],
            "oral",
        ),
        (
            "1 ML Morphine Sulfate 10 MG/ML Injection",
            [("Morphine Sulfate", 10.0, "mg", 1.0, "mL")],
            "parenteral",
        ),
        (
            "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet",
            [("Metformin hydrochloride", 500.0, "mg", 1.0, None)],
            "oral",
        ),
        (
            "200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler",
            [("Albuterol", 0.09, "mg", 1.0, "actuation")],
            "inhaled",
        ),
        (
            "NDA020800 0.3 ML Epinephrine 1 MG/ML Auto-Injector",
            [("Epinephrine", 1.0, "mg", 1.0, "mL")],
            "parenteral",
        ),
        ("PARACETAMOL 500 mg, comprimé", [("PARACETAMOL", 500.0, "mg", 1.0, None)], "oral"),
        (
            "AMOXICILLINE/ACIDE CLAVULANIQUE 1 g/125 mg, poudre pour suspension buvable",
            [("AMOXICILLINE", 1.0, "g", 1.0, None), ("ACIDE CLAVULANIQUE", 125.0, "mg", 1.0, None)],
            "oral",
        ),
        ("Diazepam [Valium]", [("Diazepam", None, None, 1.0, None)], None),
        ("Lasix 40mg", [("Lasix", 40.0, "mg", 1.0, None)], None),
        (
            "Insulin Glargine 100 UNT/ML Injectable Solution",
            [("Insulin Glargine", 100.0, "IU", 1.0, "mL")],
            "parenteral",
        ),
        ("DOLIPRANE 2,4 %, suspension buvable", [("DOLIPRANE", 2.4, "%", 1.0, None)], "oral"),
    ],
)
def test_label_parser_reads_names_strengths_and_route(
    label: str, ingredients: list[tuple[object, ...]], route: str | None
) -> None:
    parsed = parse_label(label)
    assert parsed is not None, label
    got = [(i.name, i.amount, i.unit, i.per_amount, i.per_unit) for i in parsed.ingredients]
    assert got == ingredients, label
    assert parsed.route == route, label


@pytest.mark.parametrize("text", [None, "", "   ", "123", "5 MG", "/ / /", "x" * 600])
def test_label_parser_gives_none_without_a_name(text: str | None) -> None:
    assert parse_label(text) is None


_WORD = st.from_regex(r"[A-Za-z][a-z]{2,11}", fullmatch=True)
_FORMS = [
    "Oral Tablet",
    "Oral Capsule",
    "Injection",
    "Oral Solution",
    "Extended Release Oral Tablet",
]
_UNITS = {"MG": "mg", "MCG": "µg", "G": "g", "UNT": "IU", "MEQ": "mEq", "mg": "mg", "ML": "mL"}


@given(
    words=st.lists(_WORD, min_size=1, max_size=4),
    whole=st.integers(0, 100_000),
    decimals=st.sampled_from(["", ".5", ".25", ".125", ".04"]),
    unit=st.sampled_from(sorted(_UNITS)),
    form=st.sampled_from(_FORMS),
)
def test_any_well_formed_label_parses_back(
    words: list[str], whole: int, decimals: str, unit: str, form: str
) -> None:
    name = " ".join(words)
    amount = f"{whole}{decimals}"
    parsed = parse_label(f"{name} {amount} {unit} {form}")
    assert parsed is not None
    assert parsed.ingredients == (LabelIngredient(name, float(amount), _UNITS[unit]),)
    assert parsed.form == form
    assert parsed.route == route_class(form)


@given(st.text(max_size=300))
def test_any_text_is_read_without_a_library_exception(text: str) -> None:
    parsed = parse_label(text)
    assert parsed is None or all(i.name.strip() for i in parsed.ingredients)
    _TERMS.drug_by_name(text)  # the whole fallback, never raising either


# Name comparison ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("french", "english"),
    [
        ("CHLORHYDRATE D'AMIODARONE", "amiodarone hydrochloride"),
        ("ATORVASTATINE CALCIQUE TRIHYDRATÉE", "Atorvastatin"),
        ("NAPROXÈNE SODIQUE", "naproxen sodium"),
        ("ACIDE CLAVULANIQUE", "Clavulanate"),
        ("CLAVULANATE DE POTASSIUM", "clavulanic acid"),
        ("ACIDE ACÉTYLSALICYLIQUE", "acetylsalicylic acid"),
        ("BÉSILATE D'AMLODIPINE", "amlodipine besylate"),
        ("MALÉATE DE CHLORPHÉNAMINE", "chlorphenamine maleate"),
        ("CHLORURE DE POTASSIUM", "potassium chloride"),
    ],
)
def test_french_and_english_names_compare_equal(french: str, english: str) -> None:
    assert name_key(french) == name_key(english)


def test_salts_that_change_the_substance_are_kept() -> None:
    assert name_key("ferrous sulfate") != name_key("ferrous fumarate")
    assert name_key("CHLORURE DE SODIUM") != name_key("CHLORURE DE POTASSIUM")
    assert name_key("calcium carbonate") != name_key("magnesium carbonate")
    assert name_key("CARBONATE DE CALCIUM") == name_key("Calcium Carbonate")


# Name tables: ATC codes per the WHO ATC/DDD Index ---------------------------------------


@pytest.mark.parametrize(
    ("label", "atc"),
    [
        # the unseen Synthea drugs
        ("amlodipine 5 MG Oral Tablet", "C08CA01"),
        ("Naproxen 500 MG Oral Tablet", "M01AE02"),
        ("Captopril 25 MG Oral Tablet", "C09AA01"),
        ("Atorvastatin 80 MG Oral Tablet", "C10AA05"),
        ("amiodarone hydrochloride 200 MG Oral Tablet", "C01BD01"),
        ("Oxycodone Hydrochloride 5 MG Oral Tablet", "N02AA05"),
        ("Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet", "N02AJ17"),
        # US adopted names
        ("Acetaminophen 500 MG Oral Tablet", "N02BE01"),
        ("Epinephrine 1 MG/ML Injectable Solution", "C01CA24"),
        # route decides: salbutamol inhaled R03AC02, systemic R03CC02
        ("albuterol 0.83 MG/ML Inhalation Solution", "R03AC02"),
        ("Albuterol 0.5 MG/ML Injectable Solution", "R03CC02"),
        # salts
        ("ferrous sulfate 325 MG Oral Tablet", "B03AA07"),
        ("1 ML Morphine Sulfate 10 MG/ML Injection", "N02AA01"),
        # combinations found among BDPM products of exactly those substances
        ("Amoxicillin 875 MG / Clavulanate 125 MG Oral Tablet", "J01CR02"),
        ("Acetaminophen 325 MG / tramadol hydrochloride 37.5 MG Oral Tablet", "N02AJ13"),
        ("Sulfamethoxazole 800 MG / Trimethoprim 160 MG Oral Tablet", "J01EE01"),
        # French product names
        ("PARACETAMOL 500 mg, comprimé", "N02BE01"),
        ("PARACETAMOL BIOGARAN 1000 mg, comprimé", "N02BE01"),
        ("PARACETAMOL/CODEINE 500 mg/30 mg, comprimé", "N02AJ06"),
        ("METFORMINE 850 mg, comprimé pelliculé", "A10BA02"),
        # substances whose BDPM products carry no ATC, known from the ANSM thesaurus's substances
        # reviewed against the WHO index (WHO ATC: digoxin C01AA05, warfarin B01AA03,
        # fexofenadine R06AX26)
        ("Digoxin 0.125 MG Oral Tablet", "C01AA05"),
        ("Warfarin Sodium 5 MG Oral Tablet", "B01AA03"),
        ("Fexofenadine hydrochloride 30 MG Oral Tablet", "R06AX26"),
        ("DIGOXINE NATIVELLE 0,25 mg, comprimé", "C01AA05"),
    ],
)
def test_name_gives_the_who_atc(terms: Terminology, label: str, atc: str) -> None:
    match = terms.drug_by_name(label)
    assert match is not None, label
    assert match.atc == atc, (label, match)


def test_combination_without_a_known_code_still_gives_its_ingredients(terms: Terminology) -> None:
    # hydrocodone has no BDPM product; no combination code is guessed
    match = terms.drug_by_name("Acetaminophen 300 MG / HYDROcodone Bitartrate 5 MG Oral Tablet")
    assert match is not None and match.atc is None
    assert [(m.written.name, m.atc) for m in match.ingredients] == [
        ("Acetaminophen", "N02BE01"),
        ("HYDROcodone Bitartrate", None),
    ]


@pytest.mark.parametrize("label", ["Camila 28 Day Pack", "Lasix 40mg", "Water for injection"])
def test_a_name_that_is_no_known_substance_gives_nothing(terms: Terminology, label: str) -> None:
    assert terms.drug_by_name(label) is None


def test_every_alias_leads_to_a_known_substance(names: DrugNames) -> None:
    for row in read_rows("drugs_names_aliases.csv"):
        assert names.substance_key(row["name"]) == name_key(row["inn"]), row


def test_who_supplement_only_holds_what_the_bdpm_lacks() -> None:
    bdpm = {r["key"] for r in read_rows("drugs_names.csv")}
    for row in read_rows("drugs_names_who.csv"):
        key = " + ".join(sorted(name_key(part) for part in row["name"].split(" + ")))
        assert key not in bdpm, f"drugs_names_who.csv: {row['name']} is in the BDPM table"


def test_who_rows_of_the_ansm_substances_are_copied_unchanged() -> None:
    """drugs_names_who_ansm.csv is the single-code WHO rows of the ANSM pack's reviewed table."""
    packs = Path(__file__).resolve().parents[1] / "rules" / "packs"
    wanted = [
        (row["substance"], row["atc"])
        for row in read_rows("ansm_substances.csv", packs)
        if len(row["atc"].split()) == 1 and row["basis"].startswith("WHO ATC index")
    ]
    assert [(r["name"], r["atc"]) for r in read_rows("drugs_names_who_ansm.csv")] == wanted


def test_name_tables_are_not_read_as_code_tables(terms: Terminology) -> None:
    assert not terms.drug_known("LOCAL", "amlodipin")
    assert not terms.drug_known("NAME", "amlodipin")


# FHIR connector ------------------------------------------------------------------------------


def _orders(validate: bool) -> dict[str, MedicationOrder]:
    raw = RawMessage("fhir", UNSEEN.name, UNSEEN.read_bytes(), UNSEEN.name)
    outcome = fhir.parse(raw, validate=validate)
    assert outcome.errors == []
    return {o.drug.code: o for o in outcome.facts if isinstance(o, MedicationOrder)}


def test_fhir_falls_back_to_the_name_after_the_code_tables() -> None:
    orders = _orders(validate=True)
    amlodipine = orders["197361"]
    assert amlodipine.atc == "C08CA01" and amlodipine.ingredients == ()
    # the dose (1, no unit) is read through the label's strength (tests/test_dose_strength.py)
    assert [f.code for f in amlodipine.flags] == [
        FlagCode.ATC_FROM_NAME,
        FlagCode.DOSE_FROM_STRENGTH,
    ]
    assert "RXNORM|197361" in amlodipine.flags[0].detail
    assert "amlodipine 5 MG Oral Tablet" in amlodipine.flags[0].detail
    lisinopril = orders["314076"]  # in drugs_rxnorm.csv: by code, no ATC flag
    assert lisinopril.atc == "C09AA03"
    assert [f.code for f in lisinopril.flags] == [FlagCode.DOSE_FROM_STRENGTH]


def test_fhir_combination_gets_its_ingredients_with_strengths() -> None:
    percocet = _orders(validate=True)["1049221"]
    assert percocet.atc == "N02AJ17"
    assert percocet.ingredients == (
        Ingredient(
            name="Acetaminophen", atc="N02BE01", amount=325.0, unit="mg", source="rxnorm-display"
        ),
        Ingredient(
            name="Oxycodone Hydrochloride",
            atc="N02AA05",
            amount=5.0,
            unit="mg",
            source="rxnorm-display",
        ),
    )
    hydrocodone = _orders(validate=True)["856987"]
    assert hydrocodone.atc is None
    assert [f.code for f in hydrocodone.flags] == [FlagCode.UNMAPPED_CODE]
    assert [(i.atc, i.amount) for i in hydrocodone.ingredients] == [("N02BE01", 300.0), (None, 5.0)]


def test_fhir_fast_path_gives_the_same_facts() -> None:
    assert _orders(validate=False) == _orders(validate=True)
    for order in _orders(validate=False).values():
        assert MedicationOrder.model_validate(order.model_dump()) == order


def test_mapped_combination_codes_keep_their_atc_and_gain_ingredients(terms: Terminology) -> None:
    bundle = json.loads(UNSEEN.read_text())
    request = bundle["entry"][1]["resource"]
    request["medicationCodeableConcept"] = {
        "coding": [
            {
                "system": RXNORM,
                "code": "562251",
                "display": "Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet",
            }
        ]
    }
    raw = RawMessage("fhir", "amoxiclav.json", json.dumps(bundle).encode(), "amoxiclav")
    orders = [o for o in fhir.parse(raw).facts if isinstance(o, MedicationOrder)]
    (amoxiclav,) = [o for o in orders if o.drug.code == "562251"]
    assert amoxiclav.atc == "J01CR02" and amoxiclav.flags == ()
    assert [(i.name, i.atc, i.amount) for i in amoxiclav.ingredients] == [
        ("Amoxicillin", "J01CA04", 250.0),
        ("Clavulanate", None, 125.0),  # no ATC of its own: only met with amoxicillin
    ]


# Quality report ------------------------------------------------------------------------------


def test_quality_reports_lines_by_code_by_name_and_unmapped_per_feed() -> None:
    facts = list(_orders(validate=True).values())
    report = quality_report(facts)
    assert report.drug_mapping == [
        {
            "feed": "fhir",
            "kind": "medication_order",
            "lines": 10,
            "by_code": 1,
            "by_name": 8,
            "unmapped": 1,
            "name_rate": 0.8,
        }
    ]
    assert {row["code"] for row in report.mapped_by_name} == {
        "197361", "198014", "833036", "259255", "833528", "1049621", "1049221", "313988",
    }  # fmt: skip
    assert [row["code"] for row in report.unmapped_codes] == ["856987"]
    text = render_text(report)
    assert "fhir  medication_order  10  1  8  1  80.0%" in text


# Other connectors: HL7 v2 drug text, CSV label --------------------------------------------------


def test_hl7_drug_text_gives_the_atc_and_a_combination_its_ingredients() -> None:
    rde = (
        "\r".join(
            [
                "MSH|^~\\&|PHARMA|CHU|||20240305120000||RDE^O11|R1|P|2.5",
                "PID|||P1^^^CHU^PI||DOE^JANE||19480302|F",
                "ORC|NW|O1|||||||20240305115500",
                "RXE||LOC123^amlodipine 5 mg comprimé^LOCAL|1||TAB",
                "TQ1|1||QD",
                "ORC|NW|O2|||||||20240305115500",
                "RXE||LOC9^Acetaminophen 325 MG / Oxycodone Hydrochloride 5 MG Oral Tablet^LOCAL"
                "|1||TAB",
                "TQ1|1||QID",
            ]
        )
        + "\r"
    ).encode()
    (raw,) = hl7v2.split("rde.hl7", rde)
    orders = {o.order_id: o for o in hl7v2.parse(raw).facts if isinstance(o, MedicationOrder)}
    assert orders["O1"].atc == "C08CA01"
    assert [f.code for f in orders["O1"].flags] == [
        FlagCode.ATC_FROM_NAME,
        FlagCode.DOSE_FROM_STRENGTH,  # 1 TAB of amlodipine 5 mg: 5 mg
    ]
    assert (orders["O1"].dose, orders["O1"].dose_unit) == (5, "mg")
    assert "RXE[1]-2 LOCAL|LOC123" in orders["O1"].flags[0].detail
    assert orders["O2"].atc == "N02AJ17"
    assert [(i.atc, i.amount, i.unit) for i in orders["O2"].ingredients] == [
        ("N02BE01", 325.0, "mg"),
        ("N02AA05", 5.0, "mg"),
    ]
    assert {i.source for i in orders["O2"].ingredients} == {"label"}


def test_csv_label_gives_the_atc(tmp_path: Path) -> None:
    line = _orders(validate=True)["197361"].model_copy(
        update={
            "atc": None,
            "flags": (),
            "drug": Coding(system="LOCAL", code="AML5", display=None),
            "label": "AMLODIPINE 5 mg, gélule",
        }
    )
    write_canonical_csv([line], tmp_path)
    connector = TabularConnector()
    path = tmp_path / "orders.csv"
    (raw,) = connector.split(path.name, path.read_bytes())
    (order,) = [f for f in connector.parse(raw).facts if isinstance(f, MedicationOrder)]
    assert order.atc == "C08CA01"
    assert [f.code for f in order.flags] == [FlagCode.ATC_FROM_NAME]
