"""Alerts exported as FHIR R4 DetectedIssue: valid R4 (fhir.resources R4B), and each element
checked against the alert it came from, the FHIR spec and the Interop'Santé code systems.

Alerts come from evaluating the default pack on a few patients. Expectations come from the spec
(https://hl7.org/fhir/R4/detectedissue.html: severity is high | moderate | low), the code system
files in shared/data and the alerts themselves, never from the exporter.

The golden file (tests/golden/detectedissue/hyperkalaemia.json) was checked by hand against the
alert and the R4 DetectedIssue element list; regenerate it only after checking again:
``.venv/bin/python -m tests.test_fhir_export --regenerate``.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.detectedissue import DetectedIssue

from tests.test_evaluate import NOW, default_ir, drug, hyperkalaemia_facts, lab, patient, src
from vigie.engine import Alert, FactSet, evaluate, fhir_export
from vigie.engine.fhir_export import alert_to_detected_issue, alerts_to_bundle
from vigie.facts import AnyFact, Coding, Observation, Sex
from vigie.rules.check import INTERVENTION_CODES, PROBLEM_CODES

GOLDEN = Path(__file__).parent / "golden" / "detectedissue" / "hyperkalaemia.json"
CODE_SYSTEMS = "fr-medication-ig/sfpc_pharmaceutical_intervention_codesystems"
# The IG's canonical (https://hl7.fr/ig/fhir/medication, "Official URL" of its code system
# pages) + /CodeSystem/ + the Id line of each .fsh file.
IG_CANONICAL = "https://hl7.fr/ig/fhir/medication"

# R4 detectedissue-severity, and what each Vigie severity must become (ARCHITECTURE.md severities).
FHIR_SEVERITIES = {"high", "moderate", "low"}
EXPECTED_SEVERITY = {"critical": "high", "major": "high", "moderate": "moderate", "minor": "low"}

# Fact kinds to the R4 resource a reference to them must name.
EXPECTED_TYPE = {
    "lab": "Observation",
    "observation": "Observation",
    "medication_order": "MedicationRequest",
    "patient": "Patient",
    "condition": "Condition",
    "stay": "Encounter",
}


def _scenarios() -> list[AnyFact]:
    """Five patients, each firing a different rule of the default pack."""
    p2_weight = Observation(
        fact_id="W2",
        patient_id="p2",
        source=src("OBX[2]-5"),
        concept="weight",
        code=Coding(system="LOINC", code="29463-7"),
        value=60.0,
        unit="kg",
        time=datetime(2024, 3, 2),
    )
    return [
        *hyperkalaemia_facts(),  # p1: K+ 5.9 under ramipril, major
        # p2: dabigatran with a Cockcroft clearance of (140 - 84) x 60 x 1.04 / 200 = 17.5 mL/min
        patient("p2", born=date(1940, 1, 1)),
        p2_weight,
        lab("creatinine", 200.0, datetime(2024, 3, 3), "µmol/L", pid="p2", fid="CREA2"),
        drug("D2", "B01AE07", pid="p2", label="PRADAXA 110 mg"),
        # p3: warfarin and ibuprofen (ANSM: association déconseillée)
        patient("p3", born=date(1980, 1, 1), sex=Sex.MALE),
        drug("W3", "B01AA03", pid="p3", label="warfarine 5 mg"),
        drug("I3", "M01AE01", pid="p3", label="ibuprofène 400 mg", per_day=3.0),
        # p4: amoxicillin for a month without an end date (minor)
        patient("p4", born=date(1990, 1, 1)),
        drug("A4", "J01CA04", pid="p4", start=datetime(2024, 2, 1), label="amoxicilline 1 g"),
        # p5: K+ 6.3 under spironolactone: escalated to critical
        patient("p5"),
        drug("S5", "C03DA01", pid="p5", label="spironolactone 25 mg"),
        # (its potassium read from a FHIR Observation: the connector's fact id fhir:<Type>/<id>)
        lab("potassium", 6.3, datetime(2024, 3, 4, 9, 0), pid="p5", fid="fhir:Observation/k-5"),
    ]


@cache
def alerts() -> tuple[Alert, ...]:
    found = tuple(evaluate(default_ir(), FactSet(_scenarios()), NOW))
    assert found, "the scenarios fire no alert"
    return found


def _codes(path: Path) -> tuple[str, dict[str, str]]:
    """A .fsh code system: its Id and its ``* #code "display"`` lines."""
    text = path.read_text(encoding="utf-8")
    match = re.search(r"^Id:\s*(\S+)", text, re.MULTILINE)
    assert match, f"{path}: no 'Id:' line"
    codes = dict(re.findall(r'^\* #(\S+) "([^"]*)"', text, re.MULTILINE))
    assert codes, f"{path}: no '* #code \"display\"' line"
    return match.group(1), codes


@pytest.fixture(scope="module")
def problem_system(shared_data: Path) -> tuple[str, dict[str, str]]:
    cs_id, codes = _codes(
        shared_data / CODE_SYSTEMS / "FrPharmaceuticalInterventionProblemCode.fsh"
    )
    return f"{IG_CANONICAL}/CodeSystem/{cs_id}", codes


@pytest.fixture(scope="module")
def intervention_system(shared_data: Path) -> tuple[str, dict[str, str]]:
    cs_id, codes = _codes(shared_data / CODE_SYSTEMS / "FrPharmaceuticalInterventionTypeCode.fsh")
    return f"{IG_CANONICAL}/CodeSystem/{cs_id}", codes


def _extension(element: dict[str, Any], url: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [e for e in element.get("extension", []) if e["url"] == url]
    assert len(found) == 1, f"expected one extension {url}, found {len(found)}"
    return found[0]


def _parts(extension: dict[str, Any]) -> dict[str, Any]:
    """A complex extension's sub-extensions: url -> value."""
    return {
        part["url"]: next(v for k, v in part.items() if k.startswith("value"))
        for part in extension["extension"]
    }


def _utc(value: datetime) -> str:
    return value.isoformat() + "Z"  # fact and alert times are naive UTC


# Validity -----------------------------------------------------------------------------------------


def test_the_scenarios_cover_every_severity_and_several_rules() -> None:
    assert {a.severity for a in alerts()} == set(EXPECTED_SEVERITY)
    rules = {a.rule_id for a in alerts()}
    assert {"bio.hyperkalaemia", "renal.dabigatran", "coag.warfarin_nsaid"} <= rules
    assert "infect.duration" in rules


def test_every_exported_issue_and_the_bundle_are_valid_r4() -> None:
    for alert in alerts():
        issue = alert_to_detected_issue(alert)
        DetectedIssue.model_validate(issue)  # raises on any invalid element
        assert json.loads(json.dumps(issue)) == issue, f"{alert.rule_id}: not plain JSON"
    bundle = alerts_to_bundle(alerts(), timestamp=NOW)
    parsed = Bundle.model_validate(bundle)
    assert parsed.type == "collection" and len(parsed.entry or []) == len(alerts())
    assert bundle["timestamp"] == "2024-03-04T12:00:00Z"
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(set(full_urls)) == len(full_urls)
    assert all(re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", u) for u in full_urls)
    assert alerts_to_bundle(alerts())["entry"][0]["fullUrl"] == full_urls[0]  # stable


def test_the_validator_rejects_what_r4_forbids() -> None:
    """Negative controls: the validation the tests rely on does fail on invalid content."""
    issue = alert_to_detected_issue(alerts()[0])
    with pytest.raises(ValueError, match="identifiedDateTime"):
        DetectedIssue.model_validate(issue | {"identifiedDateTime": "2024-03-04T12:00:00"})
    with pytest.raises(ValueError, match="reason"):
        DetectedIssue.model_validate(issue | {"reason": "not an R4 element"})


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in _strings(v, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) else []


def test_uris_ids_and_datetimes_follow_the_r4_datatypes() -> None:
    """What fhir.resources does not check: uri has no whitespace (R4 uri regex ``\\S*``), id
    matches ``[A-Za-z0-9\\-\\.]{1,64}``, a dateTime with a time has a zone."""
    for alert in alerts():
        issue = alert_to_detected_issue(alert)
        assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", issue["id"])
        for path, value in _strings(issue):
            if path.rsplit(".", 1)[-1] in {"url", "system"}:
                assert re.fullmatch(r"\S+", value), f"{alert.rule_id} {path}: {value!r}"
            if re.fullmatch(r"\d{4}-\d\d-\d\dT[0-9:.]+.*", value):
                assert re.search(r"(Z|[+-]\d\d:\d\d)$", value), f"{alert.rule_id} {path}"


# Element by element -------------------------------------------------------------------------------


def test_identity_status_severity_patient_time_and_message() -> None:
    for alert in alerts():
        issue = alert_to_detected_issue(alert)
        assert issue["resourceType"] == "DetectedIssue"
        assert issue["id"] == alert.id
        assert issue["identifier"] == [{"system": "urn:vigie:alert", "value": alert.id}]
        assert issue["status"] == "preliminary"  # every evaluated alert is open
        assert issue["severity"] == EXPECTED_SEVERITY[alert.severity]
        assert issue["severity"] in FHIR_SEVERITIES
        assert issue["patient"] == {"reference": f"Patient/{alert.patient_id}"}
        assert issue["identifiedDateTime"] == _utc(NOW)
        assert issue["detail"] == alert.message
        assert "mitigation" not in issue  # no decision exists yet
        assert "reference" not in issue  # R4 reference is a uri; citations are not


def test_problem_code_is_in_the_interop_sante_code_system(
    problem_system: tuple[str, dict[str, str]],
) -> None:
    system, codes = problem_system
    assert system == (
        "https://hl7.fr/ig/fhir/medication/CodeSystem/fr-pharmaceutical-intervention-problem-code"
    )
    for alert in alerts():
        (coding,) = alert_to_detected_issue(alert)["code"]["coding"]
        assert coding == {
            "system": system,
            "code": alert.problem.code,
            "display": codes[alert.problem.code],
        }
        assert alert_to_detected_issue(alert)["code"]["text"] == alert.title


def test_export_tables_are_the_code_system_files(
    problem_system: tuple[str, dict[str, str]],
    intervention_system: tuple[str, dict[str, str]],
) -> None:
    """Every code a rule may carry (the checker's SFPC codes) exports with the file's display."""
    assert problem_system == (fhir_export.PROBLEM_SYSTEM, fhir_export.PROBLEM_DISPLAYS)
    assert (intervention_system) == (
        fhir_export.INTERVENTION_SYSTEM,
        fhir_export.INTERVENTION_DISPLAYS,
    )
    assert set(PROBLEM_CODES) == set(problem_system[1])
    assert set(INTERVENTION_CODES) == set(intervention_system[1])


def test_suggested_intervention_is_in_the_type_code_system(
    intervention_system: tuple[str, dict[str, str]],
) -> None:
    system, codes = intervention_system
    for alert in alerts():
        issue = alert_to_detected_issue(alert)
        extension = _extension(issue, "urn:vigie:extension:suggested-intervention")
        (coding,) = extension["valueCodeableConcept"]["coding"]
        code = alert.intervention.code
        assert coding == {"system": system, "code": code, "display": codes[code]}


def test_implicated_are_the_alert_drug_lines() -> None:
    for alert in alerts():
        issue = alert_to_detected_issue(alert)
        implicated = issue.get("implicated", [])
        assert [r["reference"] for r in implicated] == [
            f"MedicationRequest/{d.order_id}" for d in alert.drugs
        ]
        assert [r.get("display") for r in implicated] == [d.label for d in alert.drugs]
    (warfarin_nsaid,) = [a for a in alerts() if a.rule_id == "coag.warfarin_nsaid"]
    refs = {r["reference"] for r in alert_to_detected_issue(warfarin_nsaid)["implicated"]}
    assert refs == {"MedicationRequest/W3", "MedicationRequest/I3"}


def test_rule_extension_names_rule_version_source_and_citation() -> None:
    for alert in alerts():
        parts = _parts(_extension(alert_to_detected_issue(alert), "urn:vigie:extension:rule"))
        rule = alert.rule
        assert parts["id"] == rule.id == alert.rule_id
        assert parts["version"] == rule.version
        assert (parts["pack"], parts["packVersion"]) == (rule.pack, rule.pack_version)
        assert (parts["file"], parts["line"]) == (rule.file, rule.line)
        assert parts["file"].endswith("default.rules") and parts["line"] > 0
        assert parts["severity"] == alert.severity
        assert parts.get("reference") == alert.reference
    (nsaid,) = [a for a in alerts() if a.rule_id == "coag.warfarin_nsaid"]
    parts = _parts(_extension(alert_to_detected_issue(nsaid), "urn:vigie:extension:rule"))
    assert parts["version"] == 2  # 'version 2' in default.rules
    assert parts["reference"] == ("HL7 PDDI-CDS warfarin-NSAIDs; ANSM, thésaurus des interactions")


def test_evidence_references_each_fact_with_its_source() -> None:
    for alert in alerts():
        issue = alert_to_detected_issue(alert)
        assert len(issue["evidence"]) == len(alert.evidence)
        for item, entry in zip(alert.evidence, issue["evidence"], strict=True):
            (code,) = entry["code"]
            assert code["text"].startswith(f"{item.name}: ")
            facts = [item] if item.kind != "derived" else _leaves(item.inputs)
            details = entry.get("detail", [])
            assert len(details) == len({(f.kind, f.fact_id) for f in facts})
            for fact, detail in zip(_unique(facts), details, strict=True):
                assert detail["identifier"] == {"system": "urn:vigie:fact", "value": fact.fact_id}
                assert detail["type"] == EXPECTED_TYPE[fact.kind]
                # a literal reference only to a resource the fact was read from (FHIR feed)
                if fact.fact_id.startswith("fhir:"):
                    assert detail["reference"] == fact.fact_id.removeprefix("fhir:")
                else:
                    assert "reference" not in detail
                assert fact.source is not None
                where = _parts(_extension(detail, "urn:vigie:extension:fact-source"))
                assert where["feed"] == fact.source.feed
                assert where["document"] == fact.source.document
                assert where.get("messageId") == fact.source.message_id
                assert where.get("position") == fact.source.position


def _leaves(items: Any) -> list[Any]:
    out = []
    for item in items:
        out.extend(_leaves(item.inputs) if item.kind == "derived" else [item])
    return out


def _unique(facts: list[Any]) -> list[Any]:
    out: dict[tuple[str, str], Any] = {}
    for fact in facts:
        out.setdefault((fact.kind, fact.fact_id), fact)
    return list(out.values())


def test_derived_clearance_references_the_facts_it_was_computed_from() -> None:
    (alert,) = [a for a in alerts() if a.rule_id == "renal.dabigatran"]
    issue = alert_to_detected_issue(alert)
    (crcl,) = [e for e in issue["evidence"] if e["code"][0]["text"].startswith("crcl: ")]
    refs = {(d["type"], d["identifier"]["value"]) for d in crcl["detail"]}
    # Cockcroft-Gault reads creatinine, weight, and age from the patient's birth date.
    assert refs == {("Observation", "CREA2"), ("Observation", "W2"), ("Patient", "p2")}
    assert crcl["code"][0]["text"].startswith("crcl: clearance = 17.4")  # 17.47 mL/min


def test_a_fact_read_from_fhir_references_its_resource() -> None:
    (alert,) = [a for a in alerts() if a.patient_id == "p5"]
    assert alert.severity == "critical"  # K+ 6.3 >= 6.0: escalated
    issue = alert_to_detected_issue(alert)
    (k,) = [e for e in issue["evidence"] if e["code"][0]["text"].startswith("k: ")]
    (detail,) = k["detail"]
    assert detail["reference"] == "Observation/k-5"
    assert detail["identifier"] == {"system": "urn:vigie:fact", "value": "fhir:Observation/k-5"}


def test_drug_and_lab_evidence_carry_their_codes_and_values() -> None:
    (alert,) = [a for a in alerts() if a.rule_id == "bio.hyperkalaemia" and a.patient_id == "p1"]
    issue = alert_to_detected_issue(alert)
    by_name = {e["code"][0]["text"].split(":")[0]: e for e in issue["evidence"]}
    assert by_name["k"]["code"][0] == {"text": "k: potassium = 5.9 mmol/L (2024-03-04T08:00:00Z)"}
    assert by_name["d"]["code"][0]["coding"] == [
        {"system": "http://www.whocc.no/atc", "code": "C09AA05"}
    ]


# Real data ----------------------------------------------------------------------------------------


def _bundle_resources(path: Path) -> dict[str, dict[str, Any]]:
    """``<Type>/<id>`` -> resource, read with json (independently of the connector)."""
    bundle = json.loads(path.read_text(encoding="utf-8"))
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
        for e in bundle["entry"]
    }


def test_synthea_metformin_alert_points_at_the_bundle_resources(shared_data: Path) -> None:
    """Coleman Ortiz (synthea-r4), 1980-07-16T21:00Z: metformin active and an eGFR of 5.3 that
    day. The exported issue is valid R4 and its literal references name the bundle's own
    MedicationRequest (metformin, RxNorm 860975), eGFR Observation (LOINC 33914-3) and Patient."""
    from tests.test_fhir import load

    (path,) = (shared_data / "fhir" / "synthea-r4").glob("Coleman_Ortiz_*.json")
    resources = _bundle_resources(path)
    found = evaluate(default_ir(), FactSet(load(path).facts), datetime(1980, 7, 16, 21, 0))
    (alert,) = [a for a in found if a.rule_id == "renal.metformin_egfr"]
    issue = alert_to_detected_issue(alert)
    DetectedIssue.model_validate(issue)
    assert issue["patient"]["reference"] in resources
    assert issue["identifiedDateTime"] == "1980-07-16T21:00:00Z"
    (implicated,) = issue["implicated"]
    order = resources[implicated["reference"]]
    assert order["medicationCodeableConcept"]["coding"][0]["code"] == "860975"
    literal = [d["reference"] for e in issue["evidence"] for d in e["detail"] if "reference" in d]
    assert all(ref in resources for ref in literal), literal
    (egfr,) = [resources[r] for r in literal if r.startswith("Observation/")]
    assert egfr["code"]["coding"][0]["code"] == "33914-3"
    assert egfr["effectiveDateTime"] == "1980-07-16T19:20:06+00:00"


# Golden -------------------------------------------------------------------------------------------


def _golden_alert() -> Alert:
    (alert,) = [a for a in alerts() if a.rule_id == "bio.hyperkalaemia" and a.patient_id == "p1"]
    return alert


def test_golden_hyperkalaemia_detected_issue() -> None:
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    got = alert_to_detected_issue(_golden_alert())
    # The rule's file is an absolute path on the machine that evaluated: compare its name.
    for issue in (expected, got):
        for part in _extension(issue, "urn:vigie:extension:rule")["extension"]:
            if part["url"] == "file":
                part["valueString"] = Path(part["valueString"]).name
    assert got == expected


def regenerate_golden() -> None:
    issue = alert_to_detected_issue(_golden_alert())
    for part in _extension(issue, "urn:vigie:extension:rule")["extension"]:
        if part["url"] == "file":
            part["valueString"] = "rules/packs/default.rules"
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(issue, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    if "--regenerate" in sys.argv:
        regenerate_golden()
