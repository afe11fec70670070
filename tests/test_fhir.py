"""The FHIR R4 connector: reference bundles and NDJSON, French prescriptions, goldens, bad input.

Regenerate the golden files (then read the diff before trusting it):
``.venv/bin/python -m tests.test_fhir --regenerate``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigie.connectors.base import FeedError, RawMessage
from vigie.connectors.fhir import connector as fhir
from vigie.facts import (
    FACT_KINDS,
    AnyFact,
    FlagCode,
    LabResult,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Stay,
)

GOLDEN = Path(__file__).parent / "golden" / "fhir"
FR_BUNDLES = "fr-medication-ig/fhir_bundles"
# Inputs checked against tests/golden/fhir/<name>.json: three French prescriptions (plain,
# PN13 translation with a compound infusion, PRN with patient vitals) and a hand-written NDJSON
# covering every fact kind and the flags.
GOLDEN_INPUTS = (
    f"{FR_BUNDLES}/Bundle-HAS-06-1-Presc-Methotrexate.json",
    f"{FR_BUNDLES}/Bundle-TradPN13FHIR-Presc-perfusion-6-composants.json",
    f"{FR_BUNDLES}/Bundle-TradPN13FHIR-Presc-Paracetamol-SiDouleur.json",
    "golden:mixed-resources.ndjson",
)


@dataclass
class Loaded:
    """What a document gave: facts, and every error (fatal per message, or per entry)."""

    facts: list[AnyFact]
    errors: list[FeedError]

    def of(self, kind: type[AnyFact]) -> list[Any]:
        return [fact for fact in self.facts if isinstance(fact, kind)]


def load_bytes(name: str, content: bytes, validate: bool = True) -> Loaded:
    loaded = Loaded([], [])
    for raw in fhir.split(name, content):
        try:
            outcome = fhir.parse(raw, validate=validate)
        except FeedError as error:
            loaded.errors.append(error)
            continue
        loaded.facts.extend(outcome.facts)
        loaded.errors.extend(outcome.errors)
    return loaded


def load(path: Path, validate: bool = True) -> Loaded:
    return load_bytes(path.name, path.read_bytes(), validate)


def resources(path: Path) -> list[dict[str, Any]]:
    """The resources of a reference file, read with json (independently of the connector)."""
    if path.suffix == ".ndjson":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [entry["resource"] for entry in json.loads(path.read_text())["entry"]]


def is_laboratory(observation: dict[str, Any]) -> bool:
    return any(
        coding.get("code") == "laboratory"
        for category in observation.get("category", [])
        for coding in category.get("coding", [])
    )


def resource_counts(items: Iterable[dict[str, Any]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for resource in items:
        kind = resource["resourceType"]
        counts[kind] += 1
        if kind == "Observation" and is_laboratory(resource):
            counts["laboratory"] += 1
    return counts


def reference_files(shared: Path) -> list[Path]:
    return [
        *sorted((shared / "fhir/synthea-r4").glob("*_*.json")),
        *sorted((shared / "fhir/synthea-bulk-10").glob("*.ndjson")),
        *sorted((shared / FR_BUNDLES).glob("*.json")),
    ]


@pytest.fixture(scope="module")
def validated(shared_data: Path) -> dict[Path, Loaded]:
    return {path: load(path) for path in reference_files(shared_data)}


# Reference data ------------------------------------------------------------------------------


def test_every_synthea_bundle_loads_one_fact_per_resource(
    shared_data: Path, validated: dict[Path, Loaded]
) -> None:
    bundles = sorted((shared_data / "fhir/synthea-r4").glob("*_*.json"))
    assert len(bundles) == 12
    for path in bundles:
        loaded, counts = validated[path], resource_counts(resources(path))
        assert loaded.errors == [], path.name
        assert len(loaded.of(Patient)) == counts["Patient"] == 1
        assert len(loaded.of(MedicationOrder)) == counts["MedicationRequest"], path.name
        assert len(loaded.of(LabResult)) == counts["laboratory"], path.name


def test_synthea_patient_ids_resolve_from_urn_uuid_references(
    shared_data: Path, validated: dict[Path, Loaded]
) -> None:
    for path in sorted((shared_data / "fhir/synthea-r4").glob("*_*.json")):
        (patient,) = validated[path].of(Patient)
        (resource,) = [r for r in resources(path) if r["resourceType"] == "Patient"]
        assert patient.patient_id == resource["id"]
        assert {fact.patient_id for fact in validated[path].facts} == {patient.patient_id}


def test_bulk_ndjson_loads_entirely(shared_data: Path, validated: dict[Path, Loaded]) -> None:
    bulk = sorted((shared_data / "fhir/synthea-bulk-10").glob("*.ndjson"))
    facts = [fact for path in bulk for fact in validated[path].facts]
    counts = resource_counts(r for path in bulk for r in resources(path))
    kinds = Counter(fact.kind for fact in facts)
    assert [e for path in bulk for e in validated[path].errors] == []
    assert kinds["patient"] == counts["Patient"]
    assert kinds["medication_order"] == counts["MedicationRequest"]
    assert kinds["stay"] == counts["Encounter"]
    assert kinds["condition"] == counts["Condition"]
    assert kinds["allergy"] == counts["AllergyIntolerance"]
    patients = {fact.patient_id for fact in facts if fact.kind == "patient"}
    assert {fact.patient_id for fact in facts} == patients  # every Patient/<id> resolves


def test_creatinine_is_converted_and_egfr_kept(validated: dict[Path, Loaded]) -> None:
    (coleman,) = [loaded for path, loaded in validated.items() if "Coleman_Ortiz" in path.name]
    creatinine = [lab for lab in coleman.of(LabResult) if lab.concept == "creatinine"]
    assert creatinine and all(lab.unit == "µmol/L" for lab in creatinine)
    for lab in creatinine:
        assert lab.value == pytest.approx(float(lab.original_value) * 88.42, abs=1e-3)
        assert lab.source.position.endswith(".resource.valueQuantity")
    egfr = [lab.value for lab in coleman.of(LabResult) if lab.concept == "egfr" and lab.value]
    assert min(egfr) < 30


def test_unmapped_lab_codes_are_kept_and_flagged(validated: dict[Path, Loaded]) -> None:
    labs = [lab for loaded in validated.values() for lab in loaded.of(LabResult)]
    unmapped = [lab for lab in labs if lab.concept is None]
    assert unmapped and len(unmapped) < len(labs)
    assert all(FlagCode.UNMAPPED_CODE in {f.code for f in lab.flags} for lab in unmapped)
    assert all(lab.original_value is not None for lab in unmapped)


def test_fact_ids_are_unique_within_their_kind(validated: dict[Path, Loaded]) -> None:
    for path, loaded in validated.items():
        ids = Counter((fact.kind, fact.fact_id) for fact in loaded.facts)
        assert max(ids.values(), default=1) == 1, path.name
    synthea = Counter(
        (fact.kind, fact.fact_id)
        for path, loaded in validated.items()
        if "synthea" in str(path)
        for fact in loaded.facts
    )
    assert max(synthea.values()) == 1


def test_reingesting_gives_the_same_facts(shared_data: Path) -> None:
    path = shared_data / FR_BUNDLES / "Bundle-Presc-Capecitabine-Dose-Calculee.json"
    assert load(path).facts == load(path).facts


# French prescriptions -----------------------------------------------------------------------


def test_every_french_bundle_loads(shared_data: Path, validated: dict[Path, Loaded]) -> None:
    bundles = sorted((shared_data / FR_BUNDLES).glob("*.json"))
    assert len(bundles) == 85
    for path in bundles:
        assert validated[path].errors == [], path.name
        requests = resource_counts(resources(path))["MedicationRequest"]
        assert len(validated[path].of(MedicationOrder)) >= requests, path.name


def orders(validated: dict[Path, Loaded], name: str) -> list[MedicationOrder]:
    (loaded,) = [loaded for path, loaded in validated.items() if path.name == name]
    result: list[MedicationOrder] = loaded.of(MedicationOrder)
    return result


def test_methotrexate_weekly(validated: dict[Path, Loaded]) -> None:
    # "METHOTREXATE 10 mg comprimé", 2 comprimés a week: 2 x 10 mg through the label's strength
    (tablets,) = orders(validated, "Bundle-HAS-06-1-Presc-Methotrexate.json")
    assert (tablets.dose, tablets.dose_unit) == (20, "mg")
    assert (tablets.original_dose, tablets.original_dose_unit) == ("2", "comprimé")
    assert [f.code for f in tablets.flags] == [FlagCode.DOSE_FROM_STRENGTH]
    assert tablets.frequency_per_day == pytest.approx(1 / 7)
    assert tablets.daily_dose == pytest.approx(20 / 7)
    assert tablets.atc == "L04AX03"
    (milligrams,) = orders(validated, "Bundle-HAS-06-2-Presc-Methotrexate.json")
    assert (milligrams.dose, milligrams.dose_unit) == (20, "mg")
    assert milligrams.daily_dose == pytest.approx(20 / 7)


def test_enoxaparin_ucd_edqm_route_and_unit(validated: dict[Path, Loaded]) -> None:
    (order,) = orders(validated, "Bundle-HAS-29-Presc-LOVENOX.json")
    assert order.drug.code == "3400892669465" and order.atc == "B01AB05"  # UCD
    # "LOVENOX 6000UI SRG0,6ML +ERIS", 1 syringe: 6000 IU through the label's strength
    assert (order.dose, order.dose_unit, order.frequency_per_day) == (6000, "IU", 1)
    assert (order.original_dose, order.original_dose_unit) == ("1", "Seringue")
    assert (order.route, order.original_route) == ("sc", "Voie sous-cutanée")


def test_timing_variants(validated: dict[Path, Loaded]) -> None:
    (ropinirole,) = orders(validated, "Bundle-HAS-09-Presc-Ropinirole.json")
    assert ropinirole.frequency_per_day == 3  # three timeOfDay
    (glucophage,) = orders(validated, "Bundle-HAS-27-1-presc-GLUCOPHAGE.json")
    assert glucophage.frequency_per_day == 2  # when MORN, EVE
    (amiodarone,) = orders(validated, "Bundle-HAS-23-2-Presc-Amiodarone.json")
    assert amiodarone.frequency_per_day == pytest.approx(5 / 7)
    assert amiodarone.end == datetime(2025, 8, 22, 9, 33)  # authoredOn + boundsDuration 1 month
    (capecitabine,) = orders(validated, "Bundle-Presc-Capecitabine-Dose-Calculee.json")
    assert (capecitabine.dose, capecitabine.dose_unit) == (1800, "mg")  # 'ordered', not 1000 mg/m²
    assert capecitabine.start == datetime(2021, 10, 15, 20, 6)
    assert capecitabine.route == "oral"


def test_prn_keeps_its_maximum_frequency(validated: dict[Path, Loaded]) -> None:
    (order,) = orders(validated, "Bundle-TradPN13FHIR-Presc-Paracetamol-SiDouleur.json")
    assert order.as_needed and order.frequency_per_day == 4  # at most once every 6 h
    assert (order.dose, order.daily_dose, order.route) == (1000, 4000, "oral")
    assert order.patient_id == "patient-TradPN13FHIR-Presc-Paracetamol-SiDouleur"  # '#id' ref


def test_several_dosage_instructions_give_one_line_each(validated: dict[Path, Loaded]) -> None:
    morning, noon = orders(validated, "Bundle-HAS-20-Presc-Hydrocortisone.json")
    assert (morning.dose, noon.dose) == (20, 10)
    assert morning.order_id.endswith("/dosage[0]") and noon.order_id.endswith("/dosage[1]")
    assert morning.daily_dose + noon.daily_dose == 30
    pca, bolus = orders(validated, "Bundle-TradPN13FHIR-Presc-Morphine-PCA.json")
    assert (pca.daily_dose, pca.dose_unit, pca.dose) == (120, "mg", None)  # 5 mg/h continuous
    assert bolus.as_needed and bolus.frequency_per_day == 12


def test_compound_infusion_gives_one_line_per_ingredient(validated: dict[Path, Loaded]) -> None:
    lines = orders(validated, "Bundle-Presc-MiniperfCefotaxime-En20min-Pdt3j.json")
    assert [line.label for line in lines] == ["CEFOTAXINE", "GLUCOSE"]
    assert all(line.dose is None and line.route == "iv" for line in lines)


def test_vitals_become_observations(validated: dict[Path, Loaded]) -> None:
    (loaded,) = [v for p, v in validated.items() if "TradPN13FHIR-Presc-Paracetamol.json" in p.name]
    vitals = {obs.concept: obs.value for obs in loaded.of(Observation)}
    assert vitals == {"height": 189, "weight": 120}


# Golden files -------------------------------------------------------------------------------


def golden_input(spec: str, shared: Path) -> Path:
    return GOLDEN / spec.removeprefix("golden:") if spec.startswith("golden:") else shared / spec


def golden_document(spec: str, shared: Path) -> dict[str, Any]:
    loaded = load(golden_input(spec, shared))
    return {
        "input": spec,
        "facts": [
            {"kind": fact.kind, **fact.model_dump(mode="json", exclude_defaults=True)}
            for fact in loaded.facts
        ],
        "errors": [str(error) for error in loaded.errors],
    }


def golden_path(spec: str) -> Path:
    return GOLDEN / (Path(spec.removeprefix("golden:")).stem + ".json")


@pytest.mark.parametrize("spec", GOLDEN_INPUTS)
def test_golden(spec: str, shared_data: Path) -> None:
    expected = json.loads(golden_path(spec).read_text(encoding="utf-8"))
    assert golden_document(spec, shared_data) == expected


def regenerate_goldens() -> None:
    from tests.conftest import SHARED_DATA

    for spec in GOLDEN_INPUTS:
        document = golden_document(spec, SHARED_DATA)
        text = json.dumps(document, ensure_ascii=False, indent=1, sort_keys=True)
        golden_path(spec).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {golden_path(spec)}")


# Fast path ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_fast_path_gives_the_validated_facts(
    shared_data: Path, validated: dict[Path, Loaded]
) -> None:
    for path in reference_files(shared_data):
        fast = load(path, validate=False)
        assert fast.errors == validated[path].errors == [], path.name
        assert fast.facts == validated[path].facts, path.name
        # What model equality does not see: field order, the fields set, an int for a float.
        for built, checked in zip(fast.facts, validated[path].facts, strict=True):
            assert built.model_dump_json() == checked.model_dump_json(), path.name
            assert built.model_fields_set == checked.model_fields_set, path.name


def fast_path_inputs(shared: Path) -> list[Path]:
    """Every reference file, and the hand-written NDJSON that has every fact kind and flag."""
    return [*reference_files(shared), GOLDEN / "mixed-resources.ndjson"]


@pytest.mark.slow
def test_fast_path_builds_valid_models(shared_data: Path) -> None:
    """The fast path builds facts without pydantic validation: validation must accept each one
    as it is (and model_dump must not warn about a value of the wrong type)."""
    kinds: set[str] = set()
    for path in fast_path_inputs(shared_data):
        for fact in load(path, validate=False).facts:
            assert type(fact).model_validate(fact.model_dump()) == fact, (path.name, fact)
            kinds.add(fact.kind)
    assert kinds == set(FACT_KINDS)


def test_fast_path_matches_the_goldens(shared_data: Path) -> None:
    path = GOLDEN / "mixed-resources.ndjson"
    fast, checked = load(path, validate=False), load(path)
    assert fast.facts == checked.facts
    for built, expected in zip(fast.facts, checked.facts, strict=True):
        assert built.model_dump_json() == expected.model_dump_json()


# Bad input ----------------------------------------------------------------------------------

PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}
CREATININE = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-01-02T08:00:00Z",
    "valueQuantity": {"value": 1.2, "unit": "mg/dL"},
}


def bundle(*items: dict[str, Any]) -> bytes:
    entries = [{"fullUrl": f"urn:uuid:{i}", "resource": item} for i, item in enumerate(items)]
    return orjson.dumps({"resourceType": "Bundle", "type": "collection", "entry": entries})


def with_(resource: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**resource, **changes}


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "fast"])
def test_truncated_json_names_line_and_column(validate: bool) -> None:
    content = b'{\n  "resourceType": "Bundle",\n  "entry": [\n    {"resource": {'
    (raw,) = fhir.split("cut.json", content)
    with pytest.raises(FeedError) as caught:
        fhir.parse(raw, validate=validate)
    assert caught.value.document == "cut.json"
    assert caught.value.position == "line 4, column 19"
    assert "valid JSON" in caught.value.expected


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "fast"])
def test_wrong_resource_type(validate: bool) -> None:
    (raw,) = fhir.split("x.json", b'{"resourceType": "Bundel", "id": "b1"}')
    with pytest.raises(FeedError, match="resourceType: expected a FHIR R4 resource type"):
        fhir.parse(raw, validate=validate)


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "fast"])
def test_bad_entries_are_located_and_the_others_still_load(validate: bool) -> None:
    content = bundle(
        PATIENT,
        {"resourceType": "Observasion", "id": "bad"},
        with_(CREATININE, id="o2", effectiveDateTime="2024-13-45"),
        with_(CREATININE, id="o3", valueQuantity={"value": 5, "unit": "furlongs"}),
        CREATININE,
    )
    (raw,) = fhir.split("b.json", content)
    outcome = fhir.parse(raw, validate=validate)
    positions = [error.position for error in outcome.errors]
    assert positions == [
        "Bundle.entry[1].resource: resourceType",
        "Bundle.entry[2].resource.effectiveDateTime",
    ]
    assert all(error.document == "b.json" and error.message_id for error in outcome.errors)
    assert "2024-13-45" in str(outcome.errors[1])
    kinds = [(fact.kind, fact.fact_id) for fact in outcome.facts]
    assert kinds == [
        ("patient", "fhir:Patient/p1"),
        ("lab", "fhir:Observation/o3"),
        ("lab", "fhir:Observation/o1"),
    ]
    furlongs = outcome.facts[1]
    assert isinstance(furlongs, LabResult)
    assert furlongs.value is None and furlongs.original_unit == "furlongs"
    assert [flag.code for flag in furlongs.flags] == [FlagCode.UNKNOWN_UNIT]


def test_validation_error_names_the_json_path() -> None:
    request = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {"text": "paracetamol"},
        "subject": {"reference": "Patient/p1"},
        "dosageInstruction": [{"timing": {"repeat": {"frequency": "twice"}}}],
    }
    (raw,) = fhir.split("mr.json", bundle(PATIENT, PATIENT, PATIENT, request))
    outcome = fhir.parse(raw, validate=True)
    (error,) = outcome.errors
    assert error.position == "Bundle.entry[3].resource.dosageInstruction[0].timing.repeat.frequency"
    assert len(outcome.facts) == 3
    fast = fhir.parse(raw, validate=False)
    assert [e.position for e in fast.errors] == [error.position]


def test_non_utf8_bytes_are_located() -> None:
    content = b'{"resourceType": "Patient", "id": "p\xe9"}'
    (raw,) = fhir.split("latin1.json", content)
    with pytest.raises(FeedError) as caught:
        fhir.parse(raw)
    assert caught.value.position == "byte 36" and caught.value.expected == "UTF-8 text"


def test_ndjson_bad_line_does_not_stop_the_others() -> None:
    lines = [orjson.dumps(PATIENT), b'{"resourceType": "Observation", "id": ', orjson.dumps(
        CREATININE)]  # fmt: skip
    loaded = load_bytes("bulk.ndjson", b"\n".join(lines) + b"\n")
    assert [fact.kind for fact in loaded.facts] == ["patient", "lab"]
    (error,) = loaded.errors
    assert error.position.startswith("line 2, column")
    assert [fact.source.position for fact in loaded.facts] == [
        "line 1: Patient.birthDate",  # a Patient's evidence is its birth date
        "line 3: Observation.valueQuantity",
    ]


# Splitting and sniffing ---------------------------------------------------------------------


def test_split_names_messages() -> None:
    ndjson = b'{"resourceType":"Patient","id":"a"}\n\n{"id":"b","resourceType":"Patient"}\n'
    raws = list(fhir.split("Patient.ndjson", ndjson))
    assert [(r.message_id, r.position) for r in raws] == [
        ("Patient/a", "line 1"),
        ("Patient/b", "line 3"),
    ]
    # Bundle.id alone is no identity (see tests/test_fhir_versions.py): the content hash
    content = b'{"resourceType":"Bundle","id":"B1","type":"batch"}'
    (bundle_raw,) = fhir.split("b.json", content)
    assert bundle_raw.message_id == "sha256:" + hashlib.sha256(content).hexdigest()
    (anonymous,) = fhir.split("b.json", b'{"resourceType":"Bundle","type":"batch"}')
    assert anonymous.message_id.startswith("sha256:")
    assert len(list(fhir.split("x.json", ndjson))) == 2  # NDJSON recognised by content too


def test_sniff() -> None:
    assert fhir.sniff(b'\xef\xbb\xbf{\n "resourceType": "Bundle"', "b.json")
    assert fhir.sniff(b'{"resourceType":"Patient","id":"a"}\n', "x.ndjson")
    assert not fhir.sniff(b"MSH|^~\\&|", "a.hl7")
    assert not fhir.sniff(b'{"name": "x"}', "config.json")


def test_pregnancy_status_observation() -> None:
    status = {
        "resourceType": "Observation",
        "id": "preg",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "82810-3"}]},
        "subject": {"reference": "urn:uuid:0"},
        "effectiveDateTime": "2024-03-01",
        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct",
                                             "code": "77386006"}]},
    }  # fmt: skip
    loaded = load_bytes("p.json", bundle(PATIENT, status))
    (pregnancy,) = loaded.of(Pregnancy)
    assert (pregnancy.status, pregnancy.patient_id) == ("pregnant", "p1")


PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"


def place(
    reference: str, display: str | None = None, kind: str | None = None, status: str | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {"location": {"reference": f"Location/{reference}"}}
    if display:
        item["location"]["display"] = display
    if kind:
        item["physicalType"] = {"coding": [{"system": PHYSICAL_TYPE, "code": kind}]}
    if status:
        item["status"] = status
    return item  # fmt: skip


def encounter(*locations: dict[str, Any], **extra: Any) -> dict[str, Any]:
    encounter_class = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}
    return {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "in-progress",
        "class": encounter_class,
        "subject": {"reference": "Patient/p1"},
        "location": list(locations),
        **extra,
    }


def location(rid: str, name: str, kind: str) -> dict[str, Any]:
    return {"resourceType": "Location", "id": rid, "name": name,
            "physicalType": {"coding": [{"system": PHYSICAL_TYPE, "code": kind}]}}  # fmt: skip


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "fast"])
@pytest.mark.parametrize(
    ("resources", "ward", "bed"),
    [
        # as the synthetic hospital writes it: ward and bed typed on the Encounter
        ([encounter(place("MED-1", "MED-1", "wa"), place("MED-1-004", "004", "bd"))],
         "MED-1", "004"),
        # types and names only on the Location resources of the Bundle, bed listed first
        ([encounter(place("b7"), place("w1")), location("w1", "Cardiologie", "wa"),
          location("b7", "Lit 7", "bd")], "Cardiologie", "Lit 7"),
        # no types: the ward is the first location, the bed the second
        ([encounter(place("w", "Pneumologie"), place("b", "12-A"))], "Pneumologie", "12-A"),
        # one untyped location (Synthea): the ward, no bed
        ([encounter(place("w", "Cardiologie"))], "Cardiologie", None),
        # the ward the patient left is not the current one; room and bed read as HL7 gives them
        ([encounter(place("u", "Urgences", "wa", "completed"), place("o", "Obst", "wa", "active"),
                    place("r", "Ch 3", "ro"), place("b", "Lit 1", "bd"))], "Obst", "Ch 3/Lit 1"),
        # only a bed: the ward comes from the service provider
        ([encounter(place("b", "Lit 2", "bd"), serviceProvider={"display": "Gériatrie"})],
         "Gériatrie", "Lit 2"),
    ],
)  # fmt: skip
def test_encounter_ward_and_bed_from_its_locations(
    resources: list[dict[str, Any]], ward: str, bed: str | None, validate: bool
) -> None:
    loaded = load_bytes("e.json", bundle(PATIENT, *resources), validate)
    assert not loaded.errors, [str(e) for e in loaded.errors]
    (stay,) = loaded.of(Stay)
    assert (stay.ward, stay.bed) == (ward, bed)


PREGNANT = {
    "resourceType": "Observation", "id": "preg", "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "82810-3"}]},
    "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-03-01T10:00:00+01:00",
    "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA15173-0"}]},
}  # fmt: skip


def due_date(value: str) -> dict[str, Any]:
    return {"code": {"coding": [{"system": "http://loinc.org", "code": "11778-8"}]},
            "valueDateTime": value}  # fmt: skip


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "fast"])
def test_pregnancy_due_date_from_a_component_or_its_own_observation(validate: bool) -> None:
    with_due = with_(PREGNANT, component=[due_date("2024-09-20")])
    alone = with_(PREGNANT, id="edd", code={"coding": [{"system": "http://loinc.org",
                                                          "code": "11778-8"}]},
                  valueCodeableConcept=None, valueDateTime="2024-09-21T00:00:00+02:00")  # fmt: skip
    del alone["valueCodeableConcept"]
    loaded = load_bytes("p.json", bundle(PATIENT, with_due, alone), validate)
    assert not loaded.errors, [str(e) for e in loaded.errors]
    dates = {p.fact_id: (p.status, p.estimated_due_date) for p in loaded.of(Pregnancy)}
    assert dates == {
        "fhir:Observation/preg": ("pregnant", date(2024, 9, 20)),
        "fhir:Observation/edd": ("pregnant", date(2024, 9, 21)),  # the day written, not UTC's
    }


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "fast"])
def test_malformed_due_date_is_located(validate: bool) -> None:
    malformed = with_(PREGNANT, component=[due_date("20/09/2024")])
    loaded = load_bytes("p.json", bundle(PATIENT, malformed), validate)
    (error,) = loaded.errors
    assert error.position is not None and "component[0].valueDateTime" in error.position
    assert loaded.of(Patient) and not loaded.of(Pregnancy)


@pytest.mark.parametrize("validate", [True, False], ids=["validated", "fast"])
def test_time_beyond_utc_range_is_located(validate: bool) -> None:
    """Year 1 at +01:00 is a valid FHIR dateTime that UTC cannot hold: a located error, not an
    OverflowError escaping the connector."""
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"code": "IMP"},
        "subject": {"reference": "Patient/p1"},
        "period": {"start": "0001-01-01T00:00:00+01:00"},
    }
    loaded = load_bytes("e.json", bundle(PATIENT, encounter), validate)
    (error,) = loaded.errors
    assert error.position == "Bundle.entry[1].resource.period.start"
    assert error.found == "0001-01-01T00:00:00+01:00"
    assert loaded.of(Patient) and not loaded.of(Stay)


# Fuzzing --------------------------------------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)  # orjson's range
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=12,
)  # fmt: skip
_KEYS = st.sampled_from(
    ["subject", "code", "valueQuantity", "dosageInstruction", "effectiveDateTime", "status",
     "medicationCodeableConcept", "medicationReference", "period", "component", "category",
     "referenceRange", "contained", "patient", "location", "birthDate", "gender", "entry", "id"]
)  # fmt: skip
_TYPES = st.sampled_from(
    ["Patient", "Encounter", "MedicationRequest", "MedicationAdministration", "Observation",
     "Condition", "AllergyIntolerance", "Bundle", "Medication"]
)  # fmt: skip


def parse_or_feed_error(raw: RawMessage, validate: bool) -> None:
    try:
        outcome = fhir.parse(raw, validate=validate)
    except FeedError as error:
        assert error.document == raw.document
        return
    assert all(error.position for error in outcome.errors)


@pytest.mark.property
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=st.binary(max_size=200), validate=st.booleans())
def test_random_bytes_give_facts_or_feed_errors(content: bytes, validate: bool) -> None:
    for raw in fhir.split("fuzz.json", content):
        parse_or_feed_error(raw, validate)


@pytest.mark.property
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=_TYPES,
    fields=st.dictionaries(_KEYS, _JSON, max_size=6),
    as_entry=st.booleans(),
    validate=st.booleans(),
)
def test_fhir_ish_json_gives_facts_or_feed_errors(
    kind: str, fields: dict[str, Any], as_entry: bool, validate: bool
) -> None:
    resource = {"resourceType": kind, **fields}
    content = bundle(PATIENT, resource) if as_entry else orjson.dumps(resource)
    for raw in fhir.split("fuzz.json", content):
        parse_or_feed_error(raw, validate)


@pytest.mark.property
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), validate=st.booleans())
def test_mutated_reference_resources_give_facts_or_feed_errors(
    data: st.DataObject, validate: bool
) -> None:
    source = GOLDEN / "mixed-resources.ndjson"
    lines = [orjson.loads(line) for line in source.read_bytes().splitlines()]
    resource = data.draw(st.sampled_from(lines))
    mutated = mutate(resource, data)
    (raw,) = fhir.split("mutated.json", orjson.dumps(mutated))
    parse_or_feed_error(raw, validate)


def mutate(node: Any, data: st.DataObject, depth: int = 0) -> Any:
    """Replace one subtree (drawn by Hypothesis) with random JSON."""
    if depth > 0 and data.draw(st.integers(0, 3)) == 0:
        return data.draw(_JSON)
    if isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node)))
        return {**node, key: mutate(node[key], data, depth + 1)}
    if isinstance(node, list) and node:
        index = data.draw(st.integers(0, len(node) - 1))
        return [*node[:index], mutate(node[index], data, depth + 1), *node[index + 1 :]]
    return data.draw(_JSON)


if __name__ == "__main__":
    if "--regenerate" in sys.argv:
        regenerate_goldens()


def test_validation_mode_validates_documents_and_fast_paths_bulk_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bundle = RawMessage("fhir", "b.json", b"{}", "Bundle/1")
    line = RawMessage("fhir", "Observation.ndjson", b"{}", "Observation/1", position="line 3")
    assert fhir._validates(bundle) and not fhir._validates(line)
    monkeypatch.setenv("VIGIE_FHIR_VALIDATE", "always")
    assert fhir._validates(line)
    monkeypatch.setenv("VIGIE_FHIR_VALIDATE", "never")
    assert not fhir._validates(bundle)
    monkeypatch.setenv("VIGIE_FHIR_VALIDATE", "sometimes")
    with pytest.raises(ValueError, match="VIGIE_FHIR_VALIDATE='sometimes'"):
        fhir.validation_mode()


def test_combination_products_carry_their_composition(validated: dict[Path, Loaded]) -> None:
    # UCD 3400893936047 CODOLIPRANE 500/30MG CPR (site formulary): per tablet paracetamol
    # 500 mg and codeine phosphate hemihydrate 30 mg (BDPM CIS 60904643, CIS_COMPO_bdpm.txt).
    (order,) = orders(validated, "Bundle-Presc-CODOLIPRANE-MedCodeableConcept.json")
    assert order.atc == "N02AJ06"
    strengths = {(i.name, i.atc, i.amount, i.unit, i.per_unit, i.source) for i in order.ingredients}
    assert strengths == {
        ("PARACÉTAMOL", "N02BE01", 500.0, "mg", None, "site"),
        ("PHOSPHATE DE CODÉINE HÉMIHYDRATÉ", None, 30.0, "mg", None, "site"),
    }
    # a single-substance product has none
    (doliprane,) = orders(validated, "Bundle-TradPN13FHIR-Presc-Paracetamol-SiDouleur.json")
    assert doliprane.ingredients == ()


def test_a_medication_states_its_ingredients_with_their_strength() -> None:
    # A Medication coded by its CIS (DAFALGAN CODEINE 66003374) that states its ingredients:
    # the stated strengths win (source fhir-ingredient); a strength per mL keeps its reference.
    medication = {
        "resourceType": "Medication",
        "id": "m1",
        "code": {"coding": [{"system": "CIS", "code": "66003374", "display": "DAFALGAN CODEINE"}]},
        "ingredient": [
            {
                "itemCodeableConcept": {"text": "paracetamol"},
                "strength": {
                    "numerator": {
                        "value": 500,
                        "unit": "milligramme",
                        "system": "http://unitsofmeasure.org",
                        "code": "mg",
                    },
                    "denominator": {"value": 1, "unit": "comprimé"},
                },
            },
            {
                "itemCodeableConcept": {"text": "codeine phosphate"},
                "strength": {
                    "numerator": {"value": 6, "unit": "mg"},
                    "denominator": {"value": 1, "code": "mL"},
                },
            },
        ],
    }
    request = {
        "resourceType": "MedicationRequest",
        "id": "r1",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2024-03-01T08:00:00Z",
        "medicationReference": {"reference": "#m1"},
        "contained": [medication],
    }
    loaded = load_bytes("combo.json", json.dumps(request).encode())
    (order,) = loaded.of(MedicationOrder)
    assert [
        (i.name, i.amount, i.unit, i.per_amount, i.per_unit, i.source) for i in order.ingredients
    ] == [
        ("paracetamol", 500.0, "mg", 1.0, None, "fhir-ingredient"),
        ("codeine phosphate", 6.0, "mg", 1.0, "mL", "fhir-ingredient"),
    ]
    # without stated ingredients, or stated without strength, the CIS gives the BDPM one
    bdpm = {("PARACÉTAMOL", 500.0, "bdpm"), ("CODÉINE (PHOSPHATE DE) HÉMIHYDRATÉ", 30.0, "bdpm")}
    for item in medication["ingredient"]:
        del item["strength"]
    (order,) = load_bytes("combo.json", json.dumps(request).encode()).of(MedicationOrder)
    assert {(i.name, i.amount, i.source) for i in order.ingredients} == bdpm
    del medication["ingredient"]
    (order,) = load_bytes("combo.json", json.dumps(request).encode()).of(MedicationOrder)
    assert {(i.name, i.amount, i.source) for i in order.ingredients} == bdpm


# The element check (the fast path of the CDS Hooks prefetch) --------------------------------


def load_checked(path: Path) -> Loaded:
    """A document through the fast path with its element check (``parse_decoded``)."""
    loaded = Loaded([], [])
    for raw in fhir.split(path.name, path.read_bytes()):
        document = orjson.loads(raw.content.removeprefix(b"\xef\xbb\xbf"))
        try:
            outcome = fhir.parse_decoded(document, raw, validate=False, elements=True)
        except FeedError as error:
            loaded.errors.append(error)
            continue
        loaded.facts.extend(outcome.facts)
        loaded.errors.extend(outcome.errors)
    return loaded


@pytest.mark.slow
def test_element_check_gives_the_validated_facts(
    shared_data: Path, validated: dict[Path, Loaded]
) -> None:
    """Every reference file passes the check and gives exactly the validated path's facts."""
    expected = {
        **validated,
        GOLDEN / "mixed-resources.ndjson": load(GOLDEN / "mixed-resources.ndjson"),
    }
    for path in fast_path_inputs(shared_data):
        checked = load_checked(path)
        assert checked.errors == expected[path].errors == [], path.name
        assert checked.facts == expected[path].facts, path.name
        for built, reference in zip(checked.facts, expected[path].facts, strict=True):
            assert built.model_dump_json() == reference.model_dump_json(), path.name
            assert built.model_fields_set == reference.model_fields_set, path.name


ORDER = {
    "resourceType": "MedicationRequest",
    "id": "mr1",
    "status": "active",
    "intent": "order",
    "medicationCodeableConcept": {"text": "paracetamol"},
    "subject": {"reference": "Patient/p1"},
}


def _without(resource: dict[str, Any], key: str) -> dict[str, Any]:
    return {name: value for name, value in resource.items() if name != key}


def _nested(resource: dict[str, Any], key: str, **changes: Any) -> dict[str, Any]:
    return {**resource, key: {**resource[key], **changes}}


_QUANTITY = CREATININE["valueQuantity"]
# (resource, where the element check finds the problem, what it expects there, where the
# validated path finds it). The fast path without the check reads each of these without error:
# a misspelt element is data silently lost, a missing required element goes unnoticed.
ELEMENT_PROBLEMS = {
    "status missing": (
        _without(CREATININE, "status"), ".status", "a value (required field)", ".status"),
    "code missing": (_without(CREATININE, "code"), ".code", "required", ".code"),
    "element misspelt": (
        {**_without(CREATININE, "valueQuantity"), "valueQuantitiy": _QUANTITY},
        ".valueQuantitiy", "no such element in FHIR R4B", ".valueQuantitiy",
    ),
    "nested element misspelt": (
        with_(CREATININE, valueQuantity={"vlaue": 1.2, "unit": "mg/dL"}),
        ".valueQuantity.vlaue", "no such element in FHIR R4B", ".valueQuantity.vlaue",
    ),
    "empty string": (
        _nested(CREATININE, "valueQuantity", unit=""), ".valueQuantity.unit",
        "a non-empty string", ".valueQuantity.unit",
    ),
    "code with spaces": (
        with_(CREATININE, code={"coding": [{"system": "http://loinc.org", "code": " 2160-0"}]}),
        ".code.coding[0].code", "a FHIR code", ".code.coding[0].code",
    ),
    "bad id": (with_(CREATININE, id="o 1"), ".id", "a FHIR id", ".id"),
    "choice given twice": (
        with_(CREATININE, effectivePeriod={"start": "2024-01-02T08:00:00Z"}),
        ".effectivePeriod", "only one of effective[x]", "",
    ),
    "unread element of the wrong shape": (
        with_(PATIENT, name="Dupont"), ".name", "a JSON array", ".name"),
    "patient element misspelt": (
        {**_without(PATIENT, "birthDate"), "birthdate": "1960-01-01"}, ".birthdate",
        "no such element in FHIR R4B", ".birthdate",
    ),
    "contained resource": (
        with_(ORDER, contained=[{"resourceType": "Medication", "id": "m1", "cod": {}}]),
        ".contained[0].cod", "no such element in FHIR R4B", ".contained[0].cod",
    ),
    "intent missing": (_without(ORDER, "intent"), ".intent", "required", ".intent"),
    "null in an array of objects": (
        with_(ORDER, note=[None]), ".note[0]", "a JSON object", ".note"),
    "required element null": (
        with_(ORDER, status=None), ".status", "a value (required field)", ".status"),
}  # fmt: skip


@pytest.mark.parametrize(
    ("resource", "position", "expected", "validated_position"),
    list(ELEMENT_PROBLEMS.values()),
    ids=list(ELEMENT_PROBLEMS),
)
def test_element_check_locates_what_validation_finds(
    resource: dict[str, Any], position: str, expected: str, validated_position: str
) -> None:
    (raw,) = fhir.split("b.json", bundle(PATIENT, resource))
    document = orjson.loads(raw.content)
    base = "Bundle.entry[1].resource"
    checked = fhir.parse_decoded(document, raw, validate=False, elements=True)
    (error,) = checked.errors
    assert error.position == base + position and expected in error.expected
    assert [f.kind for f in checked.facts] == ["patient"]  # the other entry still loads
    (problem,) = fhir.parse(raw, validate=True).errors
    assert problem.position == base + validated_position
    assert fhir.parse(raw, validate=False).errors == []  # what the check adds to the fast path


def test_element_check_of_odd_structures() -> None:
    """A contained 'resource' of a type that is no resource, and extensions nested 400 deep
    (within the 1,024 levels orjson decodes, past Python's recursion limit): located errors,
    no crash."""
    deep: dict[str, Any] = {"url": "urn:x", "valueString": "x"}
    for _ in range(400):
        deep = {"url": "urn:x", "extension": [deep]}
    cases = {
        ".contained[0].resourceType": with_(ORDER, contained=[{"resourceType": "Element"}]),
        "": with_(PATIENT, extension=[deep]),
    }
    raw = RawMessage("fhir", "b.json", b"", "b")
    for position, resource in cases.items():
        document = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": resource}],
        }
        checked = fhir.parse_decoded(document, raw, validate=False, elements=True)
        (error,) = checked.errors
        assert error.position == "Bundle.entry[0].resource" + position, error


def test_element_check_of_the_bundle_itself() -> None:
    document = orjson.loads(bundle(PATIENT))
    document["entry"][0]["fullurl"] = document["entry"][0].pop("fullUrl")
    raw = RawMessage("fhir", "b.json", b"", "b")
    (error,) = fhir.parse_decoded(document, raw, validate=False, elements=True).errors
    assert error.position == "Bundle.entry[0].fullurl"
    assert "no such element" in error.expected
    del document["type"]  # the Bundle's own elements come first; one problem is said
    errors = fhir.parse_decoded(document, raw, validate=False, elements=True).errors
    assert [(e.position, e.expected) for e in errors] == [
        ("Bundle.type", "a value (required field)")
    ]


def test_element_check_reads_only_the_types_vigie_maps() -> None:
    """A resource type that gives no fact is not checked: nothing of it reaches the rules."""
    practitioner = {"resourceType": "Practitioner", "id": "pr1", "nmae": [{"family": "X"}]}
    (raw,) = fhir.split("b.json", bundle(PATIENT, practitioner))
    checked = fhir.parse_decoded(orjson.loads(raw.content), raw, validate=False, elements=True)
    assert checked.errors == [] and [f.kind for f in checked.facts] == ["patient"]


def _read(raw: RawMessage, document: Any, validate: bool, elements: bool) -> Loaded:
    try:
        outcome = fhir.parse_decoded(document, raw, validate=validate, elements=elements)
    except FeedError as error:
        return Loaded([], [error])
    return Loaded(outcome.facts, outcome.errors)


# What the element check refuses that validation (pydantic's lax mode) coerces: a number or a
# boolean given as a string, as the fast path's readers refuse it where they read.
_STRICTER = ("an integer", "a number", "true or false")


@pytest.mark.property
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_element_check_refuses_nothing_that_validation_and_the_fast_path_accept(
    data: st.DataObject,
) -> None:
    """A reference resource, one subtree replaced by random JSON: what both validation and
    the fast path read without error, the element check reads too, into the same facts."""
    lines = [
        orjson.loads(line) for line in (GOLDEN / "mixed-resources.ndjson").read_bytes().splitlines()
    ]
    mutated = mutate(data.draw(st.sampled_from(lines)), data)
    (raw,) = fhir.split("mutated.json", orjson.dumps(mutated))
    validated = _read(raw, orjson.loads(raw.content), validate=True, elements=False)
    fast = _read(raw, orjson.loads(raw.content), validate=False, elements=False)
    checked = _read(raw, orjson.loads(raw.content), validate=False, elements=True)
    assert all(error.position for error in checked.errors)
    if validated.errors or fast.errors:
        return
    if checked.errors:
        assert checked.errors[0].expected in _STRICTER, checked.errors[0]
        return
    assert checked.facts == validated.facts
