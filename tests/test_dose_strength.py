"""A dose in tablets (or a bare number) or in mL read as the substance's amount through the
product's strength (``vigie.connectors.dose_strength``), in every connector.

Expectations come from the labels' strengths, read by hand (``amlodipine 5 MG Oral Tablet``,
1 tablet a day: 5 mg a day), not from the code under test.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vigie.connectors.base import RawMessage
from vigie.connectors.dose_strength import dose_by_strength
from vigie.connectors.fhir import connector as fhir
from vigie.connectors.hl7v2 import connector as hl7v2
from vigie.connectors.registry import connector_for, detect_format
from vigie.connectors.tabular.canonical import write_canonical_csv
from vigie.connectors.tabular.connector import TabularConnector
from vigie.engine import FactSet, evaluate
from vigie.engine.quality import quality_report, render_text
from vigie.facts import FlagCode, MedicationOrder
from vigie.facts.model import Ingredient
from vigie.rules import compile_pack

HERE = Path(__file__).parent
REPO = HERE.parent
UNSEEN = HERE / "data" / "fhir" / "synthea-unseen-rxnorm.json"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"


def _by_strength(order: MedicationOrder) -> bool:
    return any(f.code is FlagCode.DOSE_FROM_STRENGTH for f in order.flags)


def _fhir_orders(content: bytes, *, validate: bool = True) -> list[MedicationOrder]:
    raw = RawMessage("fhir", "test.json", content, "test")
    outcome = fhir.parse(raw, validate=validate)
    assert outcome.errors == []
    return [f for f in outcome.facts if isinstance(f, MedicationOrder)]


# The unseen Synthea-shaped file: 1 tablet a day, dose written without unit -------------------

# RxNorm code -> the strength its display writes, in mg (by hand from the file's displays).
UNSEEN_STRENGTHS = {
    "197361": 5.0,  # amlodipine 5 MG Oral Tablet
    "198014": 500.0,  # Naproxen 500 MG Oral Tablet
    "833036": 25.0,  # Captopril 25 MG Oral Tablet
    "259255": 80.0,  # Atorvastatin 80 MG Oral Tablet
    "833528": 200.0,  # amiodarone hydrochloride 200 MG Oral Tablet
    "1049621": 5.0,  # Oxycodone Hydrochloride 5 MG Oral Tablet
    "313988": 40.0,  # Furosemide 40 MG Oral Tablet
    "314076": 10.0,  # lisinopril 10 MG Oral Tablet
}
UNSEEN_COMBINATIONS = {"1049221", "856987"}  # acetaminophen/oxycodone, acetaminophen/hydrocodone


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "fast"])
def test_unseen_synthea_doses_become_milligrams(validate: bool) -> None:
    orders = {o.drug.code: o for o in _fhir_orders(UNSEEN.read_bytes(), validate=validate)}
    assert set(orders) == set(UNSEEN_STRENGTHS) | UNSEEN_COMBINATIONS
    for code, strength in UNSEEN_STRENGTHS.items():
        order = orders[code]
        assert order.frequency_per_day == 1, code
        assert (order.dose, order.dose_unit, order.daily_dose) == (strength, "mg", strength), code
        assert (order.original_dose, order.original_dose_unit) == ("1", None), code
        assert _by_strength(order) and order.ingredients == (), code
    for code in UNSEEN_COMBINATIONS:  # per ingredient, as before: the line keeps its tablets
        order = orders[code]
        assert (order.dose, order.dose_unit, order.daily_dose) == (1.0, None, 1.0), code
        assert not _by_strength(order) and len(order.ingredients) == 2, code


def test_both_fhir_paths_give_the_same_facts() -> None:
    content = UNSEEN.read_bytes()
    assert _fhir_orders(content, validate=False) == _fhir_orders(content, validate=True)
    for order in _fhir_orders(content, validate=False):
        assert MedicationOrder.model_validate(order.model_dump()) == order


def test_the_flag_names_the_reading_the_strength_and_its_source() -> None:
    (amlodipine,) = [o for o in _fhir_orders(UNSEEN.read_bytes()) if o.drug.code == "197361"]
    (flag,) = [f for f in amlodipine.flags if f.code is FlagCode.DOSE_FROM_STRENGTH]
    assert flag.detail == (
        "1 (no unit: units of the form) × amlodipine 5 mg/unit [rxnorm-display] = 5 mg"
    )


# The reference Synthea data ------------------------------------------------------------------

_MG = re.compile(r"(\d+(?:\.\d+)?) ?MG\b", re.IGNORECASE)


def test_reference_synthea_orders_with_a_dose_all_get_their_amount(shared_data: Path) -> None:
    """Synthea writes every dose as a bare count of tablets: each single-substance line with a
    dose now has it in mg, the label's one ``N MG`` strength times the count (measured: 382
    of 382 lines with a dose, 0 before)."""
    dosed = converted = 0
    for path in sorted((shared_data / "fhir").rglob("*.*json")):  # Bundles and bulk NDJSON
        if path.name == "MANIFEST.json":
            continue
        content = path.read_bytes()
        connector = connector_for(detect_format(path, content))
        for raw in connector.split(path.name, content):
            for order in connector.parse(raw).facts:
                if not isinstance(order, MedicationOrder) or order.original_dose is None:
                    continue
                dosed += 1
                strengths = _MG.findall(order.label or "")
                if order.ingredients or len(strengths) != 1:
                    assert not _by_strength(order), (path.name, order.label)
                    continue
                converted += 1
                expected = float(order.original_dose) * float(strengths[0])
                where = (path.name, order.order_id, order.label)
                assert order.original_dose_unit is None, where
                assert order.dose == pytest.approx(expected) and order.dose_unit == "mg", where
                assert order.frequency_per_day is not None, where
                per_day = expected * order.frequency_per_day
                assert order.daily_dose == pytest.approx(per_day), where
                assert _by_strength(order), where
    assert (dosed, converted) == (382, 382)  # measured; before this change none was in mg


# FHIR: liquids, a Medication's stated strength, and what is never read -----------------------


def _bundle(medication: dict[str, Any], dose: dict[str, Any], per_day: int = 1) -> bytes:
    """The unseen file's patient with one MedicationRequest of ``medication``."""
    bundle = json.loads(UNSEEN.read_text(encoding="utf-8"))
    request = copy.deepcopy(bundle["entry"][1]["resource"])
    request.pop("medicationCodeableConcept")
    request.update(medication)
    dosage = request["dosageInstruction"][0]
    dosage["timing"]["repeat"]["frequency"] = per_day
    dosage["doseAndRate"][0]["doseQuantity"] = dose
    bundle["entry"] = [bundle["entry"][0], {"resource": request}]
    return json.dumps(bundle).encode()


def _concept(code: str, display: str) -> dict[str, Any]:
    return {
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": code, "display": display}]
        }
    }


def _one(content: bytes) -> MedicationOrder:
    (order,) = _fhir_orders(content)
    assert _fhir_orders(content, validate=False) == [order]
    return order


def test_a_volume_goes_through_the_concentration() -> None:
    """1 ML Morphine Sulfate 10 MG/ML Injection, 2 mL six times a day: 20 mg, 120 mg a day."""
    morphine = _concept("1732136", "1 ML Morphine Sulfate 10 MG/ML Injection")
    order = _one(_bundle(morphine, {"value": 2, "unit": "mL", "system": UCUM, "code": "mL"}, 6))
    assert (order.dose, order.dose_unit, order.daily_dose) == (20, "mg", 120)
    assert (order.original_dose, order.original_dose_unit) == ("2", "mL")
    assert order.atc == "N02AA01" and _by_strength(order)


def test_a_medication_stated_strength_is_used() -> None:
    """A contained Medication coded by a brand name the tables do not know, with its one
    ingredient's strength: 500 mg per tablet, 2 tablets twice a day = 1000 mg, 2000 mg/day."""
    medication = {
        "contained": [
            {
                "resourceType": "Medication",
                "id": "med",
                "code": {"text": "GLUCOBRAND"},
                "ingredient": [
                    {
                        "itemCodeableConcept": {"text": "metformin hydrochloride"},
                        "strength": {
                            "numerator": {"value": 500, "unit": "mg", "system": UCUM, "code": "mg"},
                            "denominator": {"value": 1, "unit": "tablet"},
                        },
                    }
                ],
            }
        ],
        "medicationReference": {"reference": "#med"},
    }
    order = _one(_bundle(medication, {"value": 2, "unit": "tablet"}, 2))
    assert (order.dose, order.dose_unit, order.daily_dose) == (1000, "mg", 2000)
    (flag,) = [f for f in order.flags if f.code is FlagCode.DOSE_FROM_STRENGTH]
    assert "[fhir-ingredient]" in flag.detail and order.ingredients == ()


@pytest.mark.parametrize(
    ("display", "dose"),
    [
        # a mass dose stays as it is
        ("Metformin hydrochloride 500 MG Oral Tablet", {"value": 500, "unit": "mg", "code": "mg"}),
        # a bare 5 for a 5 mg tablet may be 5 mg as well as 5 tablets
        ("amlodipine 5 MG Oral Tablet", {"value": 5}),
        # a bare number too large to be a count of tablets
        ("Acetaminophen 325 MG Oral Tablet", {"value": 650}),
        # mL of a product whose strength is per tablet
        ("Furosemide 40 MG Oral Tablet", {"value": 4, "unit": "mL", "code": "mL"}),
        # a strength per hour (a patch); a concentration with a dose that is no volume
        ("72 HR fentanyl 0.025 MG/HR Transdermal System", {"value": 1}),
        ("Hydrocortisone 10 MG/ML Topical Cream", {"value": 1}),
        # a strength in percent
        ("Hydrocortisone 1 % Topical Cream", {"value": 1}),
        # a strength the label cuts at a thousands separator
        ("VITAMINE D 100 000 UI solution buvable", {"value": 1, "unit": "ampoule"}),
    ],
)
def test_what_is_not_read_through_a_strength(display: str, dose: dict[str, Any]) -> None:
    order = _one(_bundle(_concept("0", display), dose))
    assert (order.dose, order.original_dose) == (dose["value"], str(dose["value"]))
    assert not _by_strength(order)


def test_the_function_reads_only_plain_strengths() -> None:
    tablet = Ingredient(name="x", amount=10, unit="mg", source="label")
    assert dose_by_strength(0.5, "tablet", 1.0, tablet) is not None
    assert dose_by_strength(1, "bag", 1, tablet) is None  # a bag holds a concentration
    assert dose_by_strength(1, None, 1, tablet.model_copy(update={"unit": "%"})) is None
    assert dose_by_strength(1, None, 1, tablet.model_copy(update={"amount": 0.0})) is None
    per_litre = Ingredient(name="glucose", amount=50, unit="g", per_unit="L", source="label")
    found = dose_by_strength(250, "mL", 500, per_litre)  # 250 mL of 50 g/L: 12.5 g
    assert found is not None and (found.dose, found.dose_unit, found.daily_dose) == (12.5, "g", 25)


# HL7 v2 and CSV ------------------------------------------------------------------------------


def test_hl7_liquid_order_in_ml() -> None:
    rde = (
        "\r".join(
            [
                "MSH|^~\\&|PHARMA|CHU|||20240305120000||RDE^O11|R1|P|2.5",
                "PID|||P1^^^CHU^PI||DOE^JANE||19480302|F",
                "ORC|NW|O1|||||||20240305115500",
                "RXE||LOC7^Furosemide 10 MG/ML Oral Solution^LOCAL|4||mL",
                "TQ1|1||BID",
            ]
        )
        + "\r"
    ).encode()
    (raw,) = hl7v2.split("rde.hl7", rde)
    (order,) = [f for f in hl7v2.parse(raw).facts if isinstance(f, MedicationOrder)]
    assert (order.dose, order.dose_unit, order.daily_dose) == (40, "mg", 80)
    assert (order.original_dose, order.original_dose_unit) == ("4", "mL")
    assert order.atc == "C03CA01" and _by_strength(order)


def test_csv_tablets_and_the_canonical_layout_round_trip(tmp_path: Path) -> None:
    (source,) = [o for o in _fhir_orders(UNSEEN.read_bytes()) if o.drug.code == "197361"]
    written = source.model_copy(
        update={
            "order_id": "L1",
            "fact_id": "L1",
            "atc": None,
            "flags": (),
            "drug": source.drug.model_copy(update={"system": "LOCAL", "code": "MET5"}),
            "label": "METFORMINE 500 mg, comprimé",
            "dose": 2.0,
            "dose_unit": "comprimé",
            "original_dose": "2",
            "original_dose_unit": "comprimé",
            "frequency_per_day": 2.0,
            "daily_dose": 4.0,
        }
    )
    connector = TabularConnector()

    def read(directory: Path) -> MedicationOrder:
        path = directory / "orders.csv"
        (raw,) = connector.split(path.name, path.read_bytes())
        (order,) = [f for f in connector.parse(raw).facts if isinstance(f, MedicationOrder)]
        return order

    write_canonical_csv([written], tmp_path / "first")
    once = read(tmp_path / "first")
    assert (once.dose, once.dose_unit, once.daily_dose) == (1000, "mg", 2000)
    assert (once.original_dose, once.original_dose_unit) == ("2", "comprimé")
    assert once.atc == "A10BA02" and _by_strength(once)
    write_canonical_csv([once], tmp_path / "second")  # written as received, read the same
    again = read(tmp_path / "second")
    assert again.model_dump(exclude={"source"}) == once.model_dump(exclude={"source"})


# A dose rule sees such a line ----------------------------------------------------------------


def _default_pack() -> dict[str, Any]:
    path = REPO / "rules" / "packs" / "default.rules"
    ir, diagnostics = compile_pack(path.read_text(encoding="utf-8"), str(path))
    assert ir is not None, [d.message for d in diagnostics if d.is_error]
    return ir


def test_metformin_in_tablets_reaches_the_dose_rule() -> None:
    """Metformin hydrochloride 500 MG Oral Tablet, 2 tablets (no unit) twice a day is 2000 mg a
    day: with an eGFR of 40, renal.metformin_dose (catalogue: metformin daily dose > 1000 mg,
    eGFR in [30, 45)) fires; read as 4 tablets a day it could not."""
    metformin = _concept("861007", "Metformin hydrochloride 500 MG Oral Tablet")
    bundle = json.loads(_bundle(metformin, {"value": 2}, 2))
    patient_ref = bundle["entry"][1]["resource"]["subject"]["reference"]
    bundle["entry"].append(
        {
            "resource": {
                "resourceType": "Observation",
                "id": "egfr",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "62238-1"}]},
                "subject": {"reference": patient_ref},
                "effectiveDateTime": "2024-05-02T07:00:00+00:00",
                "valueQuantity": {
                    "value": 40,
                    "unit": "mL/min/{1.73_m2}",
                    "system": UCUM,
                    "code": "mL/min/{1.73_m2}",
                },
            }
        }
    )
    raw = RawMessage("fhir", "metformin.json", json.dumps(bundle).encode(), "metformin")
    outcome = fhir.parse(raw)
    assert outcome.errors == []
    (order,) = [f for f in outcome.facts if isinstance(f, MedicationOrder)]
    assert (order.dose, order.dose_unit, order.daily_dose) == (1000, "mg", 2000)
    alerts = evaluate(_default_pack(), FactSet(outcome.facts), datetime(2024, 5, 3, 12, 0))
    (alert,) = [a for a in alerts if a.rule_id == "renal.metformin_dose"]
    assert "2000 mg" in alert.message
    assert [d.order_id for d in alert.drugs] == [order.order_id]


def test_unseen_orders_read_back_the_same_from_the_canonical_layout(tmp_path: Path) -> None:
    """A dose read through the strength is written as received (1, no unit) and read again
    through the label, flagged the same way: the CSV layout gives back the FHIR facts."""
    orders = _fhir_orders(UNSEEN.read_bytes())
    write_canonical_csv(orders, tmp_path)
    connector = TabularConnector()
    path = tmp_path / "orders.csv"
    read = [
        fact
        for raw in connector.split(path.name, path.read_bytes())
        for fact in connector.parse(raw).facts
        if isinstance(fact, MedicationOrder)
    ]
    assert sum(_by_strength(o) for o in read) == len(UNSEEN_STRENGTHS)
    fields = ("atc", "dose", "dose_unit", "daily_dose", "original_dose", "original_dose_unit")
    by_id = {o.order_id: o for o in read}
    for order in orders:
        again = by_id[order.order_id]
        assert [getattr(again, f) for f in fields] == [getattr(order, f) for f in fields]
        assert [f.code for f in again.flags] == [f.code for f in order.flags], order.label
    (amlodipine,) = [o for o in read if o.drug.code == "197361"]
    assert (amlodipine.dose, amlodipine.daily_dose, amlodipine.original_dose) == (5, 5, "1")
    assert amlodipine.original_dose_unit is None


def test_quality_counts_doses_read_through_the_strength() -> None:
    """The unseen file: 8 single-substance lines read as mg; the 2 combinations keep their
    tablet (split per ingredient by the engine), so no line is left in dose units."""
    facts = _fhir_orders(UNSEEN.read_bytes())
    report = quality_report(facts)
    assert (report.orders_dose_by_strength, report.orders_dose_in_units) == (8, 0)
    assert "Order doses read through the product's strength: 8; still in dose units" in (
        render_text(report)
    )
    # the same lines read with their tablets only (no label): counted as still in units
    bare = [
        o.model_copy(update={"dose": 1.0, "dose_unit": "tablet", "flags": (), "label": None})
        for o in facts
        if not o.ingredients
    ]
    assert quality_report(bare).orders_dose_in_units == 8


_units = st.sampled_from([None, "tablet", "capsule", "mL", "L", "mg", "g", "bag", "mg/h"])
_strength_units = st.sampled_from(["mg", "µg", "g", "IU", "%", "mL", "mmol"])
_per_units = st.sampled_from([None, "mL", "L", "g", "h", "actuation"])
_amounts = st.floats(min_value=0, max_value=1e5, allow_nan=False)


@pytest.mark.property
@given(
    dose=_amounts,
    unit=_units,
    amount=_amounts,
    strength_unit=_strength_units,
    per_amount=st.floats(min_value=0.01, max_value=1000),
    per_unit=_per_units,
)
def test_any_dose_is_kept_or_read_as_count_times_strength(
    dose: float,
    unit: str | None,
    amount: float,
    strength_unit: str,
    per_amount: float,
    per_unit: str | None,
) -> None:
    """Either the dose is kept (None), or it is the count of form units (or the volume) times
    the strength, in the strength's unit; a mass dose is never read."""
    strength = Ingredient(
        name="x", amount=amount, unit=strength_unit, per_amount=per_amount, per_unit=per_unit
    )
    found = dose_by_strength(dose, unit, dose * 2, strength)
    if found is None:
        return
    assert unit not in ("mg", "g", "bag", "mg/h") and strength_unit in ("mg", "µg", "g", "IU")
    assert amount > 0 and per_unit in (None, "mL", "L")
    volume = {"mL": 1.0, "L": 1000.0}
    if per_unit is None:
        assert unit in (None, "tablet", "capsule")
        expected = dose * amount / per_amount
    else:
        assert unit in volume
        expected = dose * volume[unit or ""] * amount / (per_amount * volume[per_unit])
    assert found.dose == pytest.approx(expected) and found.dose_unit == strength_unit
    assert found.daily_dose == pytest.approx(2 * expected)
