"""An alert's age evidence says where the birth date came from, for every feed.

An alert explains itself with the facts that made it fire and where each came from
(ARCHITECTURE.md, STYLE 8). Age is derived from the Patient's birth date, so the Patient input
of an age evidence must point at the birth date as the feed sent it: HL7 v2 PID-7 (not PID-3,
the identifier), FHIR ``Patient.birthDate``, the HPRIM P record's field 8, the PN13
``<Date_naissance>`` element. Expectations are read from the sample messages themselves
(``/work/shared/data``), with plain text and JSON parsing, never from the connectors.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_DATA
from vigie.engine import FactSet, evaluate
from vigie.engine.alerts import Alert, Evidence
from vigie.facts import AnyFact
from vigie.ingest import read_feed
from vigie.rules import compile_pack

AS_OF = datetime(2030, 1, 1)  # after every sample's birth date
# One rule that fires for any patient whose age is known, so its evidence carries the age.
AGE_PACK = """\
pack "age-evidence" version "1.0.0"
rule test.age "Âge connu"
  problem 7 intervention 2 severity minor
  when
    age >= 0 years
  say "âge {age}"
"""

ADT_ORU_SAMPLES = sorted(
    path
    for folder in ("linuxforhealth_extracted", "microsoft_fhir_converter/samples")
    for path in (SHARED_DATA / "hl7v2" / folder).glob("*.hl7")
    if re.search(r"ADT|ORU", path.name)
)


def _age_pack() -> dict[str, Any]:
    ir, diagnostics = compile_pack(AGE_PACK, "age.rules")
    assert ir is not None, [d.message for d in diagnostics]
    return dict(ir)


def _facts(path: Path) -> list[AnyFact]:
    return [
        fact
        for parsed in read_feed([path])
        if parsed.outcome is not None
        for fact in parsed.outcome.facts
    ]


def _age_inputs(facts: list[AnyFact]) -> dict[str, Evidence]:
    """Patient id -> the Patient input of its alert's age evidence."""
    alerts: list[Alert] = evaluate(_age_pack(), FactSet(facts), AS_OF)
    found = {}
    for alert in alerts:
        (age,) = [e for e in alert.evidence if e.kind == "derived" and e.code == "age"]
        (patient,) = age.inputs
        assert patient.kind == "patient" and patient.code == "birth_date"
        found[alert.patient_id] = patient
    return found


def _hl7_birth_dates(path: Path) -> dict[str, tuple[str, date]]:
    """PID-3's first identifier -> (where its PID-7 is, PID-7 as a date), for each patient's
    first PID with a full date in PID-7 (``PID-7``, ``PID[2]-7`` for a message's second PID)."""
    text = path.read_bytes().decode("latin-1")
    segments = [s for s in re.split(r"[\r\n]+", text) if s]
    separator = segments[0][3]
    born: dict[str, tuple[str, date]] = {}
    pids = 0
    for segment in segments:
        fields = segment.split(separator)
        if fields[0] != "PID":
            continue
        pids += 1
        if len(fields) < 8 or not re.match(r"\d{8}", fields[7]):
            continue
        patient_id = re.split(r"[\^~]", fields[3])[0] if fields[3] else fields[2]
        where = "PID-7" if pids == 1 else f"PID[{pids}]-7"
        born.setdefault(patient_id, (where, datetime.strptime(fields[7][:8], "%Y%m%d").date()))
    return born


# the ADT and ORU samples whose PID-7 holds a birth date (the others have none to explain)
BORN_SAMPLES = [path for path in ADT_ORU_SAMPLES if _hl7_birth_dates(path)]


@pytest.mark.parametrize("path", BORN_SAMPLES, ids=lambda p: p.name)
def test_hl7v2_age_evidence_names_pid_7(path: Path) -> None:
    born = _hl7_birth_dates(path)
    inputs = _age_inputs(_facts(path))
    assert set(inputs) == set(born)
    for patient_id, patient in inputs.items():
        assert patient.source is not None and patient.source.feed == "hl7v2"
        assert patient.source.document == path.name
        assert (patient.source.position, patient.value) == (
            born[patient_id][0],
            born[patient_id][1].isoformat(),
        )


def test_the_hl7v2_samples_hold_birth_dates() -> None:
    # the parametrised test above covers most of the ADT and ORU samples
    assert len(ADT_ORU_SAMPLES) >= 40 and len(BORN_SAMPLES) >= 20


SYNTHEA_BUNDLES = sorted((SHARED_DATA / "fhir" / "synthea-r4").glob("[A-Z]*_*.json"))


@pytest.mark.parametrize("path", SYNTHEA_BUNDLES, ids=lambda p: p.stem)
def test_fhir_bundle_age_evidence_names_patient_birth_date(path: Path) -> None:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    (index,) = [
        i for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "Patient"
    ]
    resource = bundle["entry"][index]["resource"]
    (patient,) = _age_inputs(_facts(path)).values()
    assert patient.source is not None
    assert patient.source.position == f"Bundle.entry[{index}].resource.birthDate"
    assert patient.value == resource["birthDate"]


def test_fhir_ndjson_age_evidence_names_patient_birth_date() -> None:
    path = SHARED_DATA / "fhir" / "synthea-bulk-10" / "Patient.000.ndjson"
    lines = path.read_text(encoding="utf-8").splitlines()
    expected = {
        resource["id"]: (f"line {number}: Patient.birthDate", resource["birthDate"])
        for number, line in enumerate(lines, start=1)
        if line.strip()
        for resource in [json.loads(line)]
    }
    inputs = _age_inputs(_facts(path))
    assert len(inputs) == len(expected) >= 10
    assert {
        pid: (p.source.position if p.source else None, p.value) for pid, p in inputs.items()
    } == expected


def test_hprim_age_evidence_names_the_p_record_birth_date() -> None:
    path = SHARED_DATA / "hprim" / "libhprim_test_oru_h2.1.hpr"
    lines = re.split(r"[\r\n]+", path.read_bytes().decode("latin-1"))
    (number, record) = next((n, x) for n, x in enumerate(lines, start=1) if x.startswith("P|"))
    fields = record.split("|")  # H|~^\& : '|' separates fields
    inputs = _age_inputs(_facts(path))
    (patient,) = inputs.values()
    assert patient.source is not None
    assert patient.source.position == f"line {number}, P[1] field 8"
    assert patient.value == datetime.strptime(fields[7], "%Y%m%d").date().isoformat()


# the PN13 messages with a <Date_naissance> (DOLIPRANE's <Patient> has none)
PN13_BORN = [
    path
    for path in sorted((SHARED_DATA / "fr-medication-ig" / "pn13_xml").glob("*.xml"))
    if b"Date_naissance" in path.read_bytes()
]


@pytest.mark.parametrize("path", PN13_BORN, ids=lambda p: p.stem[:40])
def test_pn13_age_evidence_names_date_naissance(path: Path) -> None:
    text = path.read_bytes().decode(_xml_encoding(path))
    lines = text.splitlines()
    (number,) = [n for n, line in enumerate(lines, start=1) if "Date_naissance" in line][:1]
    written = re.search(r"<(?:\w+:)?Date_naissance[^>]*>\s*(\d{4}-?\d{2}-?\d{2})", text)
    assert written is not None
    (patient,) = _age_inputs(_facts(path)).values()
    assert patient.source is not None and patient.source.position is not None
    assert patient.source.position.endswith(f"/Patient/Date_naissance (line {number})")
    assert patient.value == date.fromisoformat(written.group(1).replace("-", "")).isoformat()


def _xml_encoding(path: Path) -> str:
    declared = re.search(rb'encoding="([^"]+)"', path.read_bytes()[:200])
    return declared.group(1).decode() if declared else "utf-8"
