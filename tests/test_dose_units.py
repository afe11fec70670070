"""A dose in a unit no table knows is flagged ``unknown_unit`` by every connector, located, and
listed by ``vigie quality`` and the ingest answers (``vigie.connectors.dose_units``).

Positions are those of HL7 v2.5: RXE-5 give units, RXO-4 requested give units, RXA-7
administered units; FHIR R4: ``Dosage.doseAndRate.doseQuantity``,
``MedicationAdministration.dosage.dose``. Known units are those of ``units.csv`` (dose=yes)
and ``unit_aliases.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.factories import order
from vigie.connectors import pn13
from vigie.connectors.dose_units import is_dose_unit, unknown_dose_unit
from vigie.connectors.fhir import connector as fhir
from vigie.connectors.hl7v2 import connector as hl7v2
from vigie.engine.factset import FactSet
from vigie.engine.quality import quality_report, render_text
from vigie.facts import AnyFact, Flag, FlagCode, MedicationAdministration, MedicationOrder
from vigie.ingest.unmapped import unmapped_in

UNKNOWN = "is not a known dose unit (units.csv, unit_aliases.csv)"
MSH = "MSH|^~\\&|PHARMA|CHU|VIGIE|PHARMA|20240102080000||{type}|{id}|P|2.5"
PID = "PID|1||P1^^^H^PI||DOE^JO||19500101|F"
RAS_PARSEC = (  # one administration of 2 parsec
    MSH.format(type="RAS^O17", id="A1"),
    PID,
    "ORC|RE|O1",
    "RXA|0|1|20240102080000|20240102080000|N02BE01^PARACETAMOL^WHOATC|2|parsec",
)


def unit_flags(fact: AnyFact) -> list[str]:
    return [f.detail for f in fact.flags if f.code is FlagCode.UNKNOWN_UNIT]


def hl7_facts(*segments: str) -> list[AnyFact]:
    content = ("\r".join(segments) + "\r").encode()
    facts: list[AnyFact] = []
    for raw in hl7v2.split("t.hl7", content):
        outcome = hl7v2.parse(raw)
        assert outcome.errors == []
        facts += outcome.facts
    return facts


def hl7_order(segment: str, kind: str = "RDE^O11") -> MedicationOrder:
    facts = hl7_facts(MSH.format(type=kind, id="M1"), PID, "ORC|NW|O1", segment, "TQ1|1||BID")
    (found,) = [f for f in facts if isinstance(f, MedicationOrder)]
    return found


# The shared decision --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "unit", ["mg", "µg", "g", "IU", "mL", "tablet", "capsule", "ampoule", "patch", "bag"]
)
def test_canonical_dose_units_are_known(unit: str) -> None:
    assert is_dose_unit(unit)


@pytest.mark.parametrize("unit", ["parsec", "mmol/L", "mg/hr", "43", ""])
def test_other_units_are_not_dose_units(unit: str) -> None:
    assert not is_dose_unit(unit)


def test_no_unit_is_no_unknown_unit() -> None:
    assert unknown_dose_unit(None, None, "RXE[1]-5") is None
    assert unknown_dose_unit("  ", None, "RXE[1]-5") is None


# HL7 v2 -----------------------------------------------------------------------------------------


def test_hl7_rxe5_unknown_give_unit_is_flagged_at_its_field() -> None:
    found = hl7_order("RXE||N02BE01^PARACETAMOL^WHOATC|2||parsec")
    assert (found.dose, found.dose_unit, found.original_dose_unit) == (2.0, "parsec", "parsec")
    assert unit_flags(found) == [f"RXE[1]-5: unit 'parsec' {UNKNOWN}"]


def test_hl7_rxo4_unknown_requested_give_unit_is_flagged_at_its_field() -> None:
    found = hl7_order("RXO|N02BE01^PARACETAMOL^WHOATC|2||parsec", kind="OMP^O09")
    assert unit_flags(found) == [f"RXO[1]-4: unit 'parsec' {UNKNOWN}"]


def test_hl7_rxa7_unknown_administered_unit_is_flagged_at_its_field() -> None:
    facts = hl7_facts(*RAS_PARSEC)
    (given,) = [f for f in facts if isinstance(f, MedicationAdministration)]
    assert given.dose_unit == "parsec"
    assert unit_flags(given) == [f"RXA[1]-7: unit 'parsec' {UNKNOWN}"]


@pytest.mark.parametrize(
    ("sent", "canonical"),
    # unit_aliases.csv rows: mcg → µg, tab → tablet, UI → IU, ml → mL (and upper case: MG → mg)
    [("mg", "mg"), ("MG", "mg"), ("mcg", "µg"), ("tab", "tablet"), ("UI", "IU"), ("ml", "mL")],
)
def test_hl7_known_spellings_are_not_flagged(sent: str, canonical: str) -> None:
    found = hl7_order(f"RXE||N02BE01^PARACETAMOL^WHOATC|2||{sent}")
    assert (found.dose_unit, unit_flags(found)) == (canonical, [])


def test_hl7_unit_as_text_component_is_read_and_no_unit_is_not_flagged() -> None:
    found = hl7_order("RXE||N02BE01^PARACETAMOL^WHOATC|2||^parsec")  # CE.2 text only
    assert unit_flags(found) == [f"RXE[1]-5: unit 'parsec' {UNKNOWN}"]
    bare = hl7_order("RXE||N02BE01^PARACETAMOL^WHOATC|2||")
    assert (bare.dose_unit, unit_flags(bare)) == (None, [])


# FHIR (both paths) -------------------------------------------------------------------------


ATC = {"coding": [{"system": "http://www.whocc.no/atc", "code": "N02BE01"}]}


def request(quantity: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": ATC,
        "dosageInstruction": [
            {
                "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": quantity}],
            }
        ],
    }


def fhir_facts(resource: dict[str, Any], validate: bool) -> list[AnyFact]:
    facts: list[AnyFact] = []
    for raw in fhir.split("r.json", orjson.dumps(resource)):
        outcome = fhir.parse(raw, validate=validate)
        assert outcome.errors == []
        facts += outcome.facts
    return facts


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "fast"])
def test_fhir_unknown_dose_quantity_unit_is_flagged_at_its_json_path(validate: bool) -> None:
    (found,) = fhir_facts(request({"value": 2, "unit": "parsec"}), validate)
    assert isinstance(found, MedicationOrder) and found.dose_unit == "parsec"
    path = "dosageInstruction[0].doseAndRate[0].doseQuantity.unit"
    assert unit_flags(found) == [f"{path}: unit 'parsec' {UNKNOWN}"]
    ucum = {"value": 2, "system": "http://unitsofmeasure.org", "code": "parsec"}
    (coded,) = fhir_facts(request(ucum), validate)
    assert unit_flags(coded) == [f"{path.replace('.unit', '.code')}: unit 'parsec' {UNKNOWN}"]


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "fast"])
def test_fhir_known_dose_units_are_not_flagged(validate: bool) -> None:
    for quantity in (
        {"value": 500, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
        {"value": 1, "unit": "comprimé"},  # unit_aliases.csv: comprimé → tablet
        {"value": 1, "unit": "Comprimé", "system": "http://standardterms.edqm.eu",
         "code": "15054000"},
        {"value": 2},  # no unit: a bare count, not an unknown unit
    ):  # fmt: skip
        (found,) = fhir_facts(request(quantity), validate)
        assert unit_flags(found) == [], quantity


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "fast"])
def test_fhir_administration_unknown_dose_unit_is_flagged(validate: bool) -> None:
    resource = {
        "resourceType": "MedicationAdministration",
        "id": "ma1",
        "status": "completed",
        "medicationCodeableConcept": ATC,
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-02T08:00:00Z",
        "dosage": {"dose": {"value": 2, "unit": "parsec"}},
    }
    (found,) = fhir_facts(resource, validate)
    assert isinstance(found, MedicationAdministration)
    assert unit_flags(found) == [f"dosage.dose.unit: unit 'parsec' {UNKNOWN}"]


# PN13 ---------------------------------------------------------------------------------------


def test_pn13_unknown_posology_unit_is_flagged_at_its_element(shared_data: Path) -> None:
    name = "PN13-prescription-specialite__02__DOLIPRANE_1000_MG_3x_jour.xml"
    text = (shared_data / "fr-medication-ig" / "pn13_xml" / name).read_text(encoding="utf-8")
    head, _, tail = text.rpartition("<Unité>cpr</Unité>")  # the posology's quantity
    [raw] = pn13.split(name, f"{head}<Unité>parsec</Unité>{tail}".encode())
    (found,) = [f for f in pn13.parse(raw).facts if isinstance(f, MedicationOrder)]
    (detail,) = unit_flags(found)
    assert detail.endswith(f"/Elément_posologie/Quantité/Unité: unit 'parsec' {UNKNOWN}")
    assert found.original_dose_unit == "parsec"


# vigie quality and the ingest answers -----------------------------------------------------


def flagged_order(fid: str, unit: str, where: str) -> MedicationOrder:
    base = order("p1", fid, "N02BE01")
    flag = unknown_dose_unit(unit, unit, where)
    assert isinstance(flag, Flag)
    fields = {"dose_unit": unit, "original_dose_unit": unit, "flags": (flag,)}
    return base.model_copy(update=fields)


def test_quality_lists_unknown_dose_units() -> None:
    facts = FactSet([flagged_order("o1", "parsec", "RXE[1]-5"), order("p1", "o2", "N02BE01")])
    report = quality_report(facts)
    assert report.unknown_units == [
        {"kind": "medication_order", "concept": "N02BE01", "unit": "parsec", "count": 1}
    ]
    assert "parsec" in render_text(report)


def test_ingest_answer_lists_an_unknown_dose_unit_with_its_field() -> None:
    facts = hl7_facts(
        MSH.format(type="RDE^O11", id="M1"),
        PID,
        "ORC|NW|O1",
        "RXE||N02BE01^PARACETAMOL^WHOATC|2||parsec",
        "ORC|NW|O2",
        "RXE||N02BE01^PARACETAMOL^WHOATC|2||parsec",
    )
    (found,) = unmapped_in(facts)
    assert (found.type, found.kind, found.unit, found.position, found.count) == (
        "unknown_unit",
        "medication_order",
        "parsec",
        "RXE[1]-5",
        2,
    )


def test_ingest_answer_gives_an_administration_its_unit() -> None:
    facts = hl7_facts(*RAS_PARSEC)
    (found,) = unmapped_in(facts)
    assert (found.kind, found.unit, found.position) == (
        "medication_administration",
        "parsec",
        "RXA[1]-7",
    )
