"""The HL7 v2 connector: reference samples, French fixtures, goldens, bad input, fuzzing.

Golden files: ``tests/golden/hl7v2/<name>.hl7`` are inputs, ``<name>.json`` what each message
gives (facts, non-fatal errors, fatal error, ignored). Regenerate, then read the diff before
trusting it: ``VIGIE_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_hl7v2.py -k golden``.

Every example-based test runs under both readers (``VIGIE_HL7_PARSER=lazy`` and
``python-hl7``, see ``pytest_generate_tests``); the Hypothesis tests run on the default reader,
plus one quick fuzz of the python-hl7 one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import hl7
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SHARED_DATA
from vigie import settings as vigie_settings
from vigie.connectors.base import FeedError, RawMessage, as_utc, site_timezone
from vigie.connectors.hl7v2 import connector as hl7v2
from vigie.connectors.hl7v2.hl7lib_reader import Hl7libMessage
from vigie.connectors.hl7v2.message import Hl7Message, parse_dtm
from vigie.connectors.hl7v2.pharmacy import frequency_per_day
from vigie.connectors.hl7v2.readers import HL7_PARSERS, read_message
from vigie.engine.factset import FactSet
from vigie.facts import (
    Allergy,
    Condition,
    FlagCode,
    LabResult,
    MedicationAdministration,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Sex,
    Stay,
)

GOLDEN = Path(__file__).parent / "golden" / "hl7v2"
SAMPLE_DIR = SHARED_DATA / "hl7v2"
SAMPLES = sorted(str(p.relative_to(SAMPLE_DIR)) for p in SAMPLE_DIR.rglob("*.hl7"))
GOLDEN_INPUTS = sorted(p.name for p in GOLDEN.glob("*.hl7"))
HISTORY_GOLDEN = "adt_oru_history_pregnancy.hl7"
FACT_TYPES = (
    Patient,
    Stay,
    MedicationOrder,
    MedicationAdministration,
    LabResult,
    Observation,
    Condition,
    Allergy,
    Pregnancy,
)


def control_id(message_id: str | None) -> str:
    """MSH-10 out of a message id (the connector prefixes it with the sender MSH-3^MSH-4)."""
    return (message_id or "").rsplit("|", 1)[-1]


# Helpers -------------------------------------------------------------------------------------


def messages(document: str, content: bytes) -> list[tuple[RawMessage, Any]]:
    """(raw, outcome or FeedError) for every message of a document."""
    results: list[tuple[RawMessage, Any]] = []
    for raw in hl7v2.split(document, content):
        try:
            results.append((raw, hl7v2.parse(raw)))
        except FeedError as error:
            results.append((raw, error))
    return results


def only(document: str, content: bytes) -> hl7v2.Hl7Outcome:
    (_, outcome), *rest = messages(document, content)
    assert not rest
    assert not isinstance(outcome, FeedError), str(outcome)
    return outcome


def facts_of(outcome: hl7v2.Hl7Outcome, cls: type) -> list[Any]:
    return [fact for fact in outcome.facts if isinstance(fact, cls)]


def hl7_text(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode("utf-8")


MSH_ORU = "MSH|^~\\&|LAB|CHU|VIGIE|PHARMA|20240306081200||ORU^R01|M1|P|2.5"
PID = "PID|1||IPP1^^^CHU^PI||DOE^Jo||19500101|F"
OBX_K = "OBX|1|NM|2823-3^Potassium^LN||5.9|mmol/L|3.5-5.1|H|||F|||20240306074000"
OBX_NA = "OBX|2|NM|2951-2^Sodium^LN||139|mmol/L|136-145|N|||F|||20240306074000"


def assert_located(error: FeedError, document: str) -> None:
    assert error.document == document
    assert error.message_id
    assert error.position, str(error)
    assert "expected" in str(error)


# Both readers ------------------------------------------------------------------------------

PARSER_VARIABLE = "VIGIE_HL7_PARSER"
# Tests that choose their reader themselves, or check the lazy one against python-hl7.
_ONE_READER_TESTS = frozenset(
    {
        "test_both_readers_give_identical_facts_and_errors",
        "test_field_access_agrees_with_python_hl7",
        "test_reader_selection",
        "test_a_python_hl7_failure_is_a_located_feed_error",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Example-based tests run under both readers; Hypothesis ones on the default only."""
    if metafunc.definition.get_closest_marker("property") is not None:
        return
    if metafunc.function.__name__ in _ONE_READER_TESTS:
        return
    metafunc.parametrize("hl7_parser", HL7_PARSERS, indirect=True)


# Module scope: Hypothesis rejects function-scoped fixtures, and this one is autouse. Pytest
# regroups the tests by reader, so the variable switches only a few times.
@pytest.fixture(scope="module", autouse=True)
def hl7_parser(request: pytest.FixtureRequest) -> Iterator[str]:
    """The reader a test runs under: its parameter, else the default (``lazy``)."""
    name = str(getattr(request, "param", HL7_PARSERS[0]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PARSER_VARIABLE, name)
        yield name


def test_reader_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = next(hl7v2.split("k.hl7", hl7_text(MSH_ORU, PID, OBX_K)))
    monkeypatch.delenv(PARSER_VARIABLE, raising=False)
    assert type(read_message(raw)) is Hl7Message
    monkeypatch.setenv(PARSER_VARIABLE, "python-hl7")
    assert type(read_message(raw)) is Hl7libMessage
    monkeypatch.setenv(PARSER_VARIABLE, "lazy")
    assert type(read_message(raw)) is Hl7Message
    monkeypatch.setenv(PARSER_VARIABLE, "hl7apy")
    with pytest.raises(ValueError, match=r"VIGIE_HL7_PARSER='hl7apy'.*'lazy' or 'python-hl7'"):
        hl7v2.parse(raw)


def test_a_python_hl7_failure_is_a_located_feed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # After the reader's own checks python-hl7 has not been seen to fail, so make it fail on
    # one segment: the error is located there and names python-hl7's exception.
    real_parse = hl7.parse

    def failing_parse(text: str) -> Any:
        if "\rZXX|" in text:
            raise hl7.ParseException("cannot read ZXX")
        return real_parse(text)

    monkeypatch.setattr(hl7, "parse", failing_parse)
    monkeypatch.setenv(PARSER_VARIABLE, "python-hl7")
    raw = next(hl7v2.split("b.hl7", hl7_text(MSH_ORU, PID, "ZXX|1", OBX_K)))
    with pytest.raises(FeedError) as caught:
        hl7v2.parse(raw)
    assert_located(caught.value, "b.hl7")
    assert caught.value.position == "segment 3"
    assert "a message python-hl7 can read" in str(caught.value)
    assert "ParseException: cannot read ZXX" in str(caught.value)


def reading(document: str, content: bytes) -> list[Any]:
    """Everything a document gives: facts, notes, errors with their positions, fatal errors."""
    form: list[Any] = []
    for _, outcome in messages(document, content):
        if isinstance(outcome, FeedError):
            form.append(("fatal", str(outcome), outcome.position))
            continue
        facts = [fact.model_dump(mode="json") for fact in outcome.facts]
        errors = [(str(error), error.position) for error in outcome.errors]
        form.append((outcome.message_type, outcome.ignored, outcome.notes, facts, errors))
    return form


def readings_by_reader(document: str, content: bytes) -> dict[str, list[Any]]:
    with pytest.MonkeyPatch.context() as patch:
        results = {}
        for name in HL7_PARSERS:
            patch.setenv(PARSER_VARIABLE, name)
            results[name] = reading(document, content)
    return results


def test_both_readers_give_identical_facts_and_errors(shared_data: Path) -> None:
    paths = sorted((shared_data / "hl7v2").rglob("*.hl7")) + sorted(GOLDEN.glob("*.hl7"))
    assert len(paths) > 150
    counts = {"facts": 0, "errors": 0, "fatal": 0}
    for path in paths:
        by_reader = readings_by_reader(path.name, path.read_bytes())
        assert by_reader["python-hl7"] == by_reader["lazy"], str(path)
        for entry in by_reader["lazy"]:
            if entry[0] == "fatal":
                counts["fatal"] += 1
            else:
                counts["facts"] += len(entry[3])
                counts["errors"] += len(entry[4])
    # The comparison covered facts, non-fatal errors and fatal errors alike.
    assert counts["facts"] > 300 and counts["errors"] > 0 and counts["fatal"] > 0, counts


# Every reference sample ----------------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_reference_sample_loads_or_fails_located(shared_data: Path, sample: str) -> None:
    path = shared_data / "hl7v2" / sample
    results = messages(path.name, path.read_bytes())
    assert results, "split gave no message"
    for raw, outcome in results:
        assert raw.feed == "hl7v2" and raw.document == path.name
        assert raw.position and raw.position.startswith("message ")
        if isinstance(outcome, FeedError):
            assert_located(outcome, path.name)
            continue
        for error in outcome.errors:
            assert_located(error, path.name)
        if outcome.ignored is None:
            assert facts_of(outcome, Patient), "a supported message with a PID gives its patient"
        for fact in outcome.facts:
            assert isinstance(fact, FACT_TYPES)
            assert fact.source.feed == "hl7v2" and fact.source.document == path.name
            assert fact.source.message_id == raw.message_id and fact.source.position
        kinds_ids = [(fact.kind, fact.fact_id) for fact in outcome.facts]
        assert len(kinds_ids) == len(set(kinds_ids)), "fact ids unique within a message"


def test_reference_samples_overall(shared_data: Path) -> None:
    """Most samples give facts; the non-clinical types are ignored, not rejected."""
    loaded = ignored = rejected = 0
    for path in sorted((shared_data / "hl7v2").rglob("*.hl7")):
        for _, outcome in messages(path.name, path.read_bytes()):
            if isinstance(outcome, FeedError):
                rejected += 1
            elif outcome.ignored:
                ignored += 1
            else:
                loaded += 1
    assert loaded >= 120
    assert ignored >= 50  # SIU, MDM, BAR, DFT, VXU, OML...
    assert rejected <= 2


def test_reference_adt_a01_birth_date_ward_and_stay(shared_data: Path) -> None:
    path = shared_data / "hl7v2/microsoft_fhir_converter/samples/ADT-A01-01.hl7"
    outcome = only(path.name, path.read_bytes())
    (patient,) = facts_of(outcome, Patient)
    assert patient.patient_id == "PATID1234"  # PID-3 first identifier (MR), not the SS one
    assert patient.birth_date == date(1988, 8, 18) and patient.sex is Sex.MALE
    (stay,) = facts_of(outcome, Stay)
    assert stay.stay_id == "40007716"
    assert stay.ward == "HUH AE OMU" and stay.bed == "OMU B/Bed 03"
    assert stay.admit_time == datetime(2015, 2, 8, 10, 24, 19)  # 11:34:19+0110, as UTC
    assert stay.status == "in-progress"
    # Its OBX has two repetitions in an NM value: a located non-fatal error.
    assert [e.position for e in outcome.errors] == ["OBX[1]-5"]


def test_reference_adt_a03_discharges(shared_data: Path) -> None:
    path = (
        shared_data
        / "hl7v2/linuxforhealth_extracted"
        / ("HL7ADTMessageTest__04__testAdtA03MininumSegments__ADT_A03.hl7")
    )
    outcome = only(path.name, path.read_bytes())
    (stay,) = facts_of(outcome, Stay)
    assert stay.status == "finished" and stay.discharge_time is not None


def test_reference_rde_drug_dose_frequency(shared_data: Path) -> None:
    path = (
        shared_data
        / "hl7v2/linuxforhealth_extracted"
        / (
            "Hl7MedicationRequestFHIRConversionTest__01__test_medicationreq_patient__RDE_O11_RDE_O11.hl7"
        )
    )
    outcome = only(path.name, path.read_bytes())
    (order,) = facts_of(outcome, MedicationOrder)
    assert order.order_id == "F800006" and order.stay_id == "V446911"
    assert (order.drug.system, order.drug.code) == ("NDC", "62756-017")
    assert order.drug.display == "Testosterone Cypionate"
    assert (order.dose, order.dose_unit) == (100.0, "mg")
    assert (order.frequency_text, order.frequency_per_day, order.daily_dose) == ("BID", 2.0, 200.0)
    assert order.start == datetime(2018, 6, 22, 23, 0)
    # no NDC table: the ATC comes from the text, testosterone G03BA03 (WHO ATC index)
    assert order.atc == "G03BA03" and order.flags[0].code is FlagCode.ATC_FROM_NAME
    assert "RXE[1]-2 NDC|62756-017" in order.flags[0].detail


def test_reference_rde_cancelled_order_status(shared_data: Path) -> None:
    path = (
        shared_data
        / "hl7v2/linuxforhealth_extracted"
        / (
            "Hl7MedicationRequestFHIRConversionTest__08__test_medicationreq_status__RDE_O11_RDE_O11.hl7"
        )
    )
    (order,) = facts_of(only(path.name, path.read_bytes()), MedicationOrder)
    assert order.status == "cancelled"  # ORC-1 CA


def test_reference_omp_route_and_rde_infusion_route(shared_data: Path) -> None:
    folder = shared_data / "hl7v2/linuxforhealth_extracted"
    path = folder / "Hl7MedicationRequestFHIRConversionTest__09__medicationFromOMPTest__OMP_O09.hl7"
    (order,) = facts_of(only(path.name, path.read_bytes()), MedicationOrder)
    assert (order.route, order.original_route) == ("oral", "PO")
    assert order.drug.code == "00054418425" and order.stay_id == "Visit_111"
    path = SHARED_DATA / "hl7v2/microsoft_fhir_converter/samples/RDE-O11-01.hl7"
    (order,) = facts_of(only(path.name, path.read_bytes()), MedicationOrder)
    assert (order.route, order.dose, order.order_id) == ("iv", 5.0, "1163422591")


def test_reference_oru_glucose_structured_numeric(shared_data: Path) -> None:
    path = shared_data / "hl7v2/microsoft_fhir_converter/samples/ORU-R01-RMGEAD.hl7"
    outcome = only(path.name, path.read_bytes())
    (glucose,) = facts_of(outcome, LabResult)
    assert glucose.original_value == "182" and glucose.original_unit == "mg/dl"
    assert glucose.code.code == "1554-5"
    assert glucose.time == datetime(2002, 2, 15, 1, 30)  # OBR-7 07:30+0600, OBX-14 empty
    if glucose.concept == "glucose":  # 1554-5 is mapped in lab_codes.csv
        assert glucose.unit == "mmol/L" and glucose.value == pytest.approx(10.10, abs=0.01)
        assert glucose.reference_low == pytest.approx(3.885, abs=0.01)  # "70_105" in mg/dL


def test_reference_oru_without_patient_id_is_rejected_located(shared_data: Path) -> None:
    path = (
        shared_data
        / "hl7v2/linuxforhealth_extracted"
        / (
            "Hl7ObservationFHIRConversionTest__02__extendedObservationUnusualRangesAndOtherTest__ORU_R01.hl7"
        )
    )
    ((_, error),) = messages(path.name, path.read_bytes())
    assert isinstance(error, FeedError)
    assert error.position == "PID-3" and control_id(error.message_id) == "NIST-LOI_5.0_1.1-NG"


def test_java_escaped_encoding_characters_are_repaired(shared_data: Path) -> None:
    path = (
        shared_data
        / "hl7v2/linuxforhealth_extracted"
        / ("Hl7ORUMessageTest__02__test_oru_with_multiple_observations__ORU_R01.hl7")
    )
    outcome = only(path.name, path.read_bytes())
    assert any("MSH-2" in note for note in outcome.notes)
    assert len(facts_of(outcome, LabResult)) == 2  # ST results with local codes: unmapped


# French fixtures: specific facts -------------------------------------------------------------


def golden_input(name: str) -> tuple[str, bytes]:
    return name, (GOLDEN / name).read_bytes()


def test_oru_potassium_creatinine_values_and_units() -> None:
    outcome = only(*golden_input("oru_r01_renal.hl7"))
    labs = {fact.source.position: fact for fact in facts_of(outcome, LabResult)}
    potassium = labs["OBX[1]-5"]
    assert (potassium.concept, potassium.value, potassium.unit) == ("potassium", 5.9, "mmol/L")
    assert (potassium.reference_low, potassium.reference_high) == (3.5, 5.1)
    assert potassium.abnormal_flag == "H" and potassium.time == datetime(2024, 3, 6, 7, 40)
    creatinine = labs["OBX[2]-5"]
    assert creatinine.concept == "creatinine" and creatinine.unit == "µmol/L"
    assert creatinine.value == pytest.approx(1.8 * 88.42)
    assert (creatinine.original_value, creatinine.original_unit) == ("1.8", "mg/dL")
    assert creatinine.reference_high == pytest.approx(1.2 * 88.42)
    assert creatinine.code.display == "Créatinine"
    local = labs["OBX[3]-5"]
    assert local.concept is None and local.flags[0].code is FlagCode.UNMAPPED_CODE
    egfr = labs["OBX[4]-5"]
    assert egfr.concept == "egfr" and egfr.value is None and egfr.original_value == ">60"
    assert egfr.flags[0].code is FlagCode.NON_NUMERIC_VALUE
    (qtc,) = facts_of(outcome, Observation)
    assert (qtc.concept, qtc.value, qtc.unit) == ("qtc", 478.0, "ms")


def test_rde_drug_code_dose_route_and_frequency() -> None:
    outcome = only(*golden_input("rde_o11_whoatc.hl7"))
    orders = {order.order_id: order for order in facts_of(outcome, MedicationOrder)}
    furosemide = orders["PRESC-1001"]
    assert (furosemide.atc, furosemide.drug.system) == ("C03CA01", "WHOATC")
    assert (furosemide.dose, furosemide.dose_unit, furosemide.route) == (40.0, "mg", "oral")
    assert (furosemide.frequency_per_day, furosemide.daily_dose) == (2.0, 80.0)
    assert furosemide.start == datetime(2024, 3, 5, 18, 0)
    assert furosemide.end == datetime(2024, 3, 12, 18, 0)
    assert furosemide.status == "active" and furosemide.prescriber == "4567"
    enoxaparin = orders["PRESC-1002"]
    assert (enoxaparin.dose_unit, enoxaparin.route, enoxaparin.daily_dose) == ("IU", "sc", 4000.0)
    paracetamol = orders["PRESC-1003"]
    assert paracetamol.as_needed and paracetamol.frequency_per_day == 4.0
    assert paracetamol.dose is None and paracetamol.original_dose == "1O"
    assert [e.position for e in outcome.errors] == ["RXE[3]-3"]  # the order still loads


def test_adt_weight_height_and_stay() -> None:
    outcome = only(*golden_input("adt_a01_latin1.hl7"))
    observations = {fact.concept: fact for fact in facts_of(outcome, Observation)}
    assert (observations["weight"].value, observations["weight"].unit) == (62.5, "kg")
    assert (observations["height"].value, observations["height"].unit) == (158.0, "cm")
    # No OBX-14 on the height: an observation in an ADT takes the message time (+0100).
    assert observations["height"].time == datetime(2024, 3, 5, 9, 15)
    (stay,) = facts_of(outcome, Stay)
    assert (stay.stay_id, stay.ward, stay.bed) == ("NDA0000456", "CARDIO", "214/2")


def test_batch_transfer_then_discharge_update_one_stay_and_truncated_last_is_rejected() -> None:
    results = messages(*golden_input("batch_adt_mllp.hl7"))
    assert [control_id(raw.message_id) for raw, _ in results] == [
        "ADT0002",
        "ADT0003",
        "SIU0001",
        "LAB0099",
    ]
    transfer, discharge, appointment, truncated = (outcome for _, outcome in results)
    (moved,) = facts_of(transfer, Stay)
    (left,) = facts_of(discharge, Stay)
    assert moved.fact_id == left.fact_id  # the A03 replaces the A02's stay
    assert (moved.ward, moved.status) == ("USIC", "in-progress")
    assert (left.status, left.discharge_time) == ("finished", datetime(2024, 3, 10, 10, 30))
    assert appointment.ignored == "ignored message type SIU^S12"
    assert not appointment.facts and not appointment.errors
    assert isinstance(truncated, FeedError) and "truncated" in str(truncated)


def test_omp_prn_text_route_and_ras_administration() -> None:
    order_outcome, administration_outcome = (
        outcome for _, outcome in messages(*golden_input("omp_o09_ras_o17.hl7"))
    )
    (order,) = facts_of(order_outcome, MedicationOrder)
    assert order.as_needed and order.frequency_per_day == 3.0 and order.route == "oral"
    assert order.start == datetime(2024, 3, 8, 10, 0)  # ORC-7.4
    (given_dose,) = facts_of(administration_outcome, MedicationAdministration)
    assert given_dose.order_id == "PRESC-2001" and given_dose.atc == "N02BE01"
    assert (given_dose.dose, given_dose.route, given_dose.status) == (500.0, "oral", "completed")


def test_diagnoses_allergies_and_pregnancy_in_adt_and_oru() -> None:
    admission, report = (outcome for _, outcome in messages(*golden_input(HISTORY_GOLDEN)))
    conditions = {c.source.position: c for c in facts_of(admission, Condition)}
    assert {p: c.icd10 for p, c in conditions.items()} == {
        "DG1[1]-3": "O09.9",  # CIM10
        "DG1[2]-3": "N18.4",  # I10
        "DG1[3]-3": "E11.9",  # ICD10, sent as E119
        "DG1[4]-3": "I10",  # SNOMED CT through the table
        "DG1[5]-3": "K92.0",  # system from the v2.3 coding method DG1-2
        "DG1[7]-3": "I50.9",  # DG1[6] is deleted (DG1-21 D)
    }
    assert conditions["DG1[1]-3"].onset == datetime(2024, 6, 12, 7, 45)  # +0200 honoured
    assert conditions["DG1[3]-3"].onset is None  # malformed date reported, diagnosis kept
    allergies = {a.source.position: a for a in facts_of(admission, Allergy)}
    penicillin, paracetamol, eggs, local = (allergies[f"AL1[{n}]-3"] for n in range(1, 5))
    assert (penicillin.atc, penicillin.criticality) == (("J01C",), "high")
    assert penicillin.recorded == datetime(2015, 3, 10)
    assert "N02BE01" in paracetamol.atc and paracetamol.criticality == "low"
    assert (eggs.atc, eggs.flags, eggs.criticality) == ((), (), "low")  # food: no drug ruled out
    assert local.atc == () and local.flags[0].code is FlagCode.UNMAPPED_CODE
    assert len(allergies) == 4  # AL1[5] says "no known drug allergy"
    assert [e.position for e in admission.errors] == ["DG1[3]-5", "DG1[8]-3", "AL1[6]-3"]
    (pregnancy,) = facts_of(admission, Pregnancy)
    assert (pregnancy.status, pregnancy.estimated_due_date) == ("pregnant", date(2024, 11, 5))
    assert pregnancy.recorded == datetime(2024, 6, 12, 8, 5)
    not_pregnant, unmapped = facts_of(report, Pregnancy)
    assert not_pregnant.status == "not-pregnant" and not_pregnant.estimated_due_date is None
    assert unmapped.status == "unknown" and unmapped.flags[0].code is FlagCode.UNMAPPED_CODE
    for outcome in (admission, report):  # pregnancy OBX are not also lab results
        codes = {lab.code.code for lab in facts_of(outcome, LabResult)}
        assert not codes & {"82810-3", "11778-8"}
    assert [lab.concept for lab in facts_of(report, LabResult)] == ["potassium"]


def test_a_due_date_alone_says_pregnant_and_a_bad_one_is_located() -> None:
    due = "OBX|1|DT|11778-8^EDD^LN||20250301||||||F|||20241001080000"
    bad = "OBX|2|DT|11778-8^EDD^LN||2025-03-01||||||F|||20241002080000"
    outcome = only("edd.hl7", hl7_text(MSH_ORU, PID, due, bad))
    (pregnancy,) = facts_of(outcome, Pregnancy)
    assert (pregnancy.status, pregnancy.estimated_due_date) == ("pregnant", date(2025, 3, 1))
    assert [(e.position, e.found) for e in outcome.errors] == [("OBX[2]-5", "2025-03-01")]


# Encodings -----------------------------------------------------------------------------------

NAMES = "PID|1||IPP9^^^CHU^PI||HÉRAULT^Zoé||19800101|F"
OBX_CREAT = "OBX|1|NM|14682-9^Créatinine^LN||88|µmol/L|45-90|N|||F|||20240306074000"


@pytest.mark.parametrize(
    ("charset", "codec", "expected_encoding"),
    [
        ("|||||FRA|8859/1", "latin-1", "latin-1"),
        ("", "latin-1", "latin-1"),  # no MSH-18: not UTF-8, so Latin-1
        ("|||||FRA|UNICODE UTF-8", "utf-8", "utf-8"),
        ("", "utf-8", "utf-8"),
    ],
)
def test_latin1_and_utf8_decode(charset: str, codec: str, expected_encoding: str) -> None:
    content = "\r".join([MSH_ORU + charset, NAMES, OBX_CREAT]).encode(codec)
    (raw,) = hl7v2.split("fr.hl7", content)
    assert raw.encoding == expected_encoding
    outcome = hl7v2.parse(raw)
    assert not outcome.errors
    (lab,) = facts_of(outcome, LabResult)
    assert lab.code.display == "Créatinine" and lab.original_unit == "µmol/L"
    assert (lab.concept, lab.value, lab.unit) == ("creatinine", 88.0, "µmol/L")


def test_utf8_declared_but_latin1_bytes_is_a_located_error() -> None:
    content = "\r".join([MSH_ORU + "|||||FRA|UNICODE UTF-8", NAMES]).encode("latin-1")
    ((_, error),) = messages("bad.hl7", content)
    assert isinstance(error, FeedError)
    assert error.position and error.position.startswith("PID-5 (byte ")
    assert "utf-8" in error.expected and "UNICODE UTF-8" in error.expected


def test_ascii_declared_with_accents_is_a_located_error() -> None:
    content = "\r".join([MSH_ORU + "|||||FRA|ASCII", NAMES]).encode("latin-1")
    ((_, error),) = messages("bad.hl7", content)
    assert isinstance(error, FeedError) and error.position.startswith("PID-5")


def test_utf16_file_is_rejected() -> None:
    content = "\r".join([MSH_ORU, PID]).encode("utf-16")
    results = messages("utf16.hl7", content)
    assert results and all(isinstance(outcome, FeedError) for _, outcome in results)


def test_a_stray_nul_byte_is_located_not_taken_for_utf16() -> None:
    content = hl7_text(MSH_ORU, PID.replace("IPP1", "IPP\x001"), OBX_K)
    ((_, error),) = messages("nul.hl7", content)
    assert isinstance(error, FeedError)
    offset = content.index(b"\x00")
    assert error.position == f"PID-3 (byte {offset})"
    assert error.expected == "text without NUL byte (0x00)"
    for codec in ("utf-16-le", "utf-32-le"):  # without a byte order mark: NULs everywhere
        ((_, error),) = messages("wide.hl7", "\r".join([MSH_ORU, PID]).encode(codec))
        assert isinstance(error, FeedError) and error.position == "byte 0"
        assert "UTF-16 or UTF-32" in str(error.expected)


def test_unknown_charset_is_reported_and_guessed() -> None:
    content = hl7_text(MSH_ORU + "|||||FRA|KLINGON", PID, OBX_K)
    outcome = only("x.hl7", content)
    assert [e.position for e in outcome.errors] == ["MSH-18"]
    assert len(facts_of(outcome, LabResult)) == 1


# Framing and splitting -----------------------------------------------------------------------


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
def test_segment_separators(separator: str) -> None:
    second = MSH_ORU.replace("|M1|", "|M2|")
    content = separator.join([MSH_ORU, PID, OBX_K, second, PID, OBX_NA]).encode()
    results = messages("b.hl7", content)
    assert [control_id(raw.message_id) for raw, _ in results] == ["M1", "M2"]
    assert [raw.position for raw, _ in results] == ["message 1", "message 2"]
    assert [len(facts_of(outcome, LabResult)) for _, outcome in results] == [1, 1]


def test_mllp_framing_and_bom() -> None:
    body = hl7_text(MSH_ORU, PID, OBX_K)
    content = (
        b"\xef\xbb\xbf\x0b" + body + b"\x1c\r\x0b" + body.replace(b"|M1|", b"|M2|") + b"\x1c\r"
    )
    results = messages("mllp.hl7", content)
    assert [control_id(raw.message_id) for raw, _ in results] == ["M1", "M2"]
    assert all(len(facts_of(outcome, LabResult)) == 1 for _, outcome in results)


def test_message_id_falls_back_to_a_content_hash_and_duplicates_are_kept_apart() -> None:
    no_id = MSH_ORU.replace("|M1|", "||")
    (raw,) = hl7v2.split("a.hl7", hl7_text(no_id, PID, OBX_K))
    assert raw.message_id.startswith("sha256:")
    again = next(hl7v2.split("a.hl7", hl7_text(no_id, PID, OBX_K)))
    assert again.message_id == raw.message_id  # stable: re-ingesting gives the same id
    twice = hl7_text(MSH_ORU, PID, OBX_K) + hl7_text(MSH_ORU, PID, OBX_NA)
    assert [control_id(r.message_id) for r in hl7v2.split("d.hl7", twice)] == ["M1", "M1#2"]


def test_a_malformed_message_time_is_reported_once_and_the_facts_load() -> None:
    """MSH-7 (else EVN-2) is the message's version time, which settles corrections: a bad one
    is a located, non-fatal error, even where no fact time falls back on it (an ORU)."""
    bad = MSH_ORU.replace("20240306081200", "2024-13-45")
    outcome = only("t.hl7", hl7_text(bad, PID, OBX_K))
    assert outcome.version_time is None and len(facts_of(outcome, LabResult)) == 1
    assert [(e.position, e.found) for e in outcome.errors] == [("MSH-7", "2024-13-45")]
    adt = bad.replace("ORU^R01", "ADT^A01")  # also the stay's event time: reported there only
    outcome = only("t.hl7", hl7_text(adt, "EVN|A01", PID, "PV1|1|I|CARDIO^001^1"))
    assert [e.position for e in outcome.errors] == ["MSH-7"]
    evn = only("t.hl7", hl7_text(MSH_ORU, "EVN|R01|20241399", PID, OBX_K))
    assert [e.position for e in evn.errors] == ["EVN-2"]
    assert not only("t.hl7", hl7_text(MSH_ORU.replace("20240306081200", ""), PID, OBX_K)).errors


def test_results_of_several_patients_in_one_oru_go_to_their_own_patient() -> None:
    other = "PID|1||IPP2^^^CHU^PI||ROE^Al||19600101|M"
    outcome = only("two.hl7", hl7_text(MSH_ORU, PID, OBX_K, other, OBX_NA, PID, OBX_NA))
    assert [p.patient_id for p in facts_of(outcome, Patient)] == ["IPP1", "IPP2"]
    owners = [(lab.source.position, lab.patient_id) for lab in facts_of(outcome, LabResult)]
    assert owners == [("OBX[1]-5", "IPP1"), ("OBX[2]-5", "IPP2"), ("OBX[3]-5", "IPP1")]


def test_a_later_pid_without_identifier_rejects_the_message() -> None:
    ((_, error),) = messages("x.hl7", hl7_text(MSH_ORU, PID, OBX_K, "PID|2||||ROE", OBX_NA))
    assert isinstance(error, FeedError) and error.position == "PID[2]-3"


def test_times_without_offset_are_read_in_the_site_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIGIE_TIMEZONE", "Europe/Paris")
    site_timezone.cache_clear()
    try:
        outcome = only("tz.hl7", hl7_text(MSH_ORU, PID.replace("19500101", "195001012330"), OBX_K))
    finally:
        monkeypatch.undo()
        site_timezone.cache_clear()
    (lab,) = facts_of(outcome, LabResult)
    assert lab.time == datetime(2024, 3, 6, 6, 40)  # 07:40 in Paris (winter) is 06:40 UTC
    (patient,) = facts_of(outcome, Patient)
    assert patient.birth_date == date(1950, 1, 1)  # never shifted to the previous day


def test_explicit_offsets_are_honoured_for_every_event_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Site zone Paris, times sent in New York (-0500) or Réunion (+0400): the offset wins."""
    monkeypatch.setenv("VIGIE_TIMEZONE", "Europe/Paris")
    site_timezone.cache_clear()
    pid = "PID|1||IPP1^^^CHU^PI||DOE^Jo||195001012330+1400|F"
    adt = hl7_text(
        "MSH|^~\\&|SIH|CHU|||20240305101500-0500||ADT^A03|A1|P|2.5",
        pid,
        "PV1|1|I|MED^1^2||||||||||||||||V1" + "|" * 25 + "20240301080000-0500|20240305100000+0400",
        "OBX|1|NM|29463-7^Poids^LN||70|kg|||||F|||20240301090000-0500",
        "DG1|1||I10^HTA^I10||20240301083000-0500|F",
        "AL1|1|DA|J01C^Pénicillines^WHOATC|SV||20240301120000+0400",
    )
    rde = hl7_text(
        "MSH|^~\\&|PHARMA|CHU|||20240305120000||RDE^O11|R1|P|2.5",
        pid,
        "ORC|NW|P1|||||||20240305115500-0500",
        "RXE||C03CA01^FUROSEMIDE^WHOATC|40||mg",
        "TQ1|1||BID||||20240305180000+0400|20240312180000-0500",
        "OBR|1|DEM1|BIO1|IONO^Iono^L|||20240306070500-0500",
        "OBX|1|NM|2823-3^Potassium^LN||4.2|mmol/L|||||F",
        "ORC|NW|P2" + "|" * 13 + "20240305110000+0100",  # ORC-15
        "RXE||C03CA01^FUROSEMIDE^WHOATC|40||mg",
    )
    ras = hl7_text(
        "MSH|^~\\&|PHARMA|CHU|||20240308143000||RAS^O17|S1|P|2.5",
        pid,
        "ORC|RE|P1",
        "RXA|0|1|20240308140500-0500|20240308140500-0500|C03CA01^FUROSEMIDE^WHOATC|40|mg",
    )
    try:
        adt_outcome, rde_outcome, ras_outcome = (
            only(name, content)
            for name, content in (("a.hl7", adt), ("r.hl7", rde), ("s.hl7", ras))
        )
    finally:
        monkeypatch.undo()
        site_timezone.cache_clear()
    (stay,) = facts_of(adt_outcome, Stay)
    assert (stay.admit_time, stay.discharge_time) == (
        datetime(2024, 3, 1, 13, 0),
        datetime(2024, 3, 5, 6, 0),
    )
    assert facts_of(adt_outcome, Observation)[0].time == datetime(2024, 3, 1, 14, 0)
    assert facts_of(adt_outcome, Condition)[0].onset == datetime(2024, 3, 1, 13, 30)
    assert facts_of(adt_outcome, Allergy)[0].recorded == datetime(2024, 3, 1, 8, 0)
    first, second = facts_of(rde_outcome, MedicationOrder)
    assert (first.start, first.end) == (datetime(2024, 3, 5, 14, 0), datetime(2024, 3, 12, 23, 0))
    assert second.start == datetime(2024, 3, 5, 10, 0)
    assert facts_of(rde_outcome, LabResult)[0].time == datetime(2024, 3, 6, 12, 5)  # OBR-7
    assert facts_of(ras_outcome, MedicationAdministration)[0].time == datetime(2024, 3, 8, 19, 5)
    for outcome in (adt_outcome, rde_outcome, ras_outcome):
        (patient,) = facts_of(outcome, Patient)
        assert patient.birth_date == date(1950, 1, 1)  # a birth date is never shifted


def test_order_time_orc9_honours_its_offset() -> None:
    rde = hl7_text(
        "MSH|^~\\&|PHARMA|CHU|||20240305120000||RDE^O11|R1|P|2.5",
        PID,
        "ORC|NW|P1|||||||20240305115500-0500",
        "RXE||C03CA01^FUROSEMIDE^WHOATC|40||mg",
    )
    (order,) = facts_of(only("r.hl7", rde), MedicationOrder)
    assert order.start == datetime(2024, 3, 5, 16, 55)


def test_a_corrected_result_in_a_new_message_replaces_the_original() -> None:
    obr = "OBR|1|DEM7|BIO7^LABO|IONO^Ionogramme^L|||20240306070500"
    original = hl7_text(MSH_ORU, PID, "ORC|RE|DEM7|BIO7^LABO", obr, OBX_K, OBX_NA)
    corrected = hl7_text(
        MSH_ORU.replace("|M1|", "|M2|").replace("20240306081200", "20240306093000"),
        PID,
        "ORC|RE|DEM7|BIO7^LABO",
        obr,
        OBX_K.replace("|5.9|", "|6.4|").replace("|F|||", "|C|||"),
    )
    first, second = only("m1.hl7", original), only("m2.hl7", corrected)
    facts = FactSet([*first.facts, *second.facts])
    potassium, sodium = sorted(facts.of_kind("lab"), key=lambda lab: lab.concept)
    assert (potassium.concept, potassium.value) == ("potassium", 6.4)
    assert control_id(potassium.source.message_id) == "M2"  # the message is in the source
    assert sodium.value == 139.0  # not re-sent: untouched


def test_results_without_an_order_number_are_identified_by_their_time() -> None:
    weight = "OBX|1|NM|29463-7^Poids^LN||70|kg|||||F|||20240305100000"
    msh = "MSH|^~\\&|SIH|CHU|||20240305101500||ADT^A08|{}|P|2.5"
    sent = [
        hl7_text(msh.format("A1"), PID, weight),
        hl7_text(msh.format("A2"), PID, weight.replace("|70|", "|71.5|")),  # corrected
        hl7_text(msh.format("A3"), PID, weight.replace("20240305100000", "20240312100000")),
    ]
    facts = FactSet(f for content in sent for f in only("adt.hl7", content).facts)
    weights = sorted(facts.of_kind("observation"), key=lambda o: o.time)
    assert [(w.value, w.time.day) for w in weights] == [(71.5, 5), (70.0, 12)]


def test_reparsing_gives_the_same_fact_ids() -> None:
    name, content = golden_input("oru_r01_renal.hl7")
    first = [f.fact_id for f in only(name, content).facts]
    assert first == [f.fact_id for f in only(name, content).facts]


def test_sniff() -> None:
    assert hl7v2.sniff(b"MSH|^~\\&|A", "x.txt")
    assert hl7v2.sniff(b"\xef\xbb\xbf\x0bMSH|^~\\&|A", "x")
    assert hl7v2.sniff(b"FHS|^~\\&|A", "x")
    assert not hl7v2.sniff(b"H|~^\\&|||", "x.hpr")
    assert not hl7v2.sniff(b'{"resourceType": "Bundle"}', "x.json")


# Bad input -----------------------------------------------------------------------------------


def test_hprim_file_given_to_hl7_is_a_clear_error(shared_data: Path) -> None:
    path = next(iter(sorted((shared_data / "hprim").rglob("*.hpr*")) or [None]), None)
    content = path.read_bytes() if path else b"H|~^\\&|||LAB\rP|1||123\rL|1\r"
    name = path.name if path else "lab.hpr"
    results = messages(name, content)
    assert results
    for _, error in results:
        assert isinstance(error, FeedError)
        assert error.position == "segment 1" and "MSH" in error.expected
        assert "HPRIM" in error.expected


def test_wrong_separators_are_fatal() -> None:
    for header in ("MSH^~|\\&|LAB", "MSH|^^\\&|LAB", "MSH|^~|LAB", "MSHX^~\\&"):
        content = hl7_text(header + "||||20240101||ORU^R01|M1|P|2.5", PID)
        ((_, error),) = messages("sep.hl7", content)
        assert isinstance(error, FeedError), header
        assert error.position in ("MSH-1", "MSH-2", "segment 1"), (header, str(error))


def test_swapped_component_and_repetition_fail_on_the_message_type() -> None:
    content = hl7_text(MSH_ORU.replace("^~\\&", "~^\\&"), PID)
    ((_, error),) = messages("swap.hl7", content)
    assert isinstance(error, FeedError) and error.position == "MSH-9"
    assert "not the usual" in error.expected


@pytest.mark.parametrize(
    ("content", "position"),
    [
        (b"MSH|^~\\&|LAB|CHU|||20240101", "MSH-12"),  # truncated header
        (hl7_text(MSH_ORU, "PID|1||IPP1", "OB"), "segment 3"),  # cut inside a segment id
        (hl7_text(MSH_ORU), "PID"),  # nothing after MSH
        (hl7_text(MSH_ORU, "PID|1||||DOE"), "PID-3"),  # no patient id
        (hl7_text(MSH_ORU.replace("ORU^R01", ""), PID), "MSH-9"),  # no message type
        (b"\x0b" + hl7_text(MSH_ORU, PID, "OBX|1|NM|2823-3^K^LN||5"), "segment 3 (end of message)"),
    ],
)
def test_unreadable_messages_are_fatal_and_located(content: bytes, position: str) -> None:
    ((_, error),) = messages("cut.hl7", content)
    assert isinstance(error, FeedError)
    assert error.position == position, str(error)


def test_bad_obx_is_non_fatal_and_the_others_load() -> None:
    content = hl7_text(
        MSH_ORU,
        PID,
        OBX_K,
        "OBX|2|NM|2951-2^Sodium^LN||13,9|mmol/L|||||F|||20240306074000",
        "OBX|3|NM|2951-2^Sodium^LN||139|mmol/L|||||F|||20241306074000",
        "OBX|4|NM|2160-0^Creatinine^LN||1.1|mg/dL|||||F|||20240306074000",
    )
    outcome = only("obx.hl7", content)
    assert [f.source.position for f in facts_of(outcome, LabResult)] == ["OBX[1]-5", "OBX[4]-5"]
    errors = {e.position: e for e in outcome.errors}
    assert set(errors) == {"OBX[2]-5", "OBX[3]-14"}
    assert errors["OBX[2]-5"].found == "13,9" and "number" in errors["OBX[2]-5"].expected
    assert errors["OBX[3]-14"].found == "20241306074000" and "YYYY" in errors["OBX[3]-14"].expected
    assert "obx.hl7: message LAB^CHU|M1: OBX[3]-14: expected an HL7 date/time" in str(
        errors["OBX[3]-14"]
    )


def test_bad_birth_date_is_located_and_the_patient_still_loads() -> None:
    outcome = only("pid.hl7", hl7_text(MSH_ORU, "PID|1||IPP1||DOE||1950-01-01|female", OBX_K))
    (patient,) = facts_of(outcome, Patient)
    assert patient.birth_date is None and patient.sex is Sex.FEMALE
    assert [(e.position, e.found) for e in outcome.errors] == [("PID-7", "1950-01-01")]


def test_unknown_sex_code_is_located() -> None:
    outcome = only("pid.hl7", hl7_text(MSH_ORU, "PID|1||IPP1||DOE||19500101|Q", OBX_K))
    assert [e.position for e in outcome.errors] == ["PID-8"]


def test_unknown_unit_is_kept_and_flagged_with_its_position() -> None:
    outcome = only("u.hl7", hl7_text(MSH_ORU, PID, OBX_K.replace("|mmol/L|", "|mg/furlong|")))
    (lab,) = facts_of(outcome, LabResult)
    assert lab.value is None and lab.original_value == "5.9" and lab.original_unit == "mg/furlong"
    (flag,) = lab.flags
    assert flag.code is FlagCode.UNKNOWN_UNIT
    assert flag.detail.startswith("OBX[1]-6:") and "mg/furlong" in flag.detail


def test_other_message_types_are_ignored_not_errors() -> None:
    for kind in ("SIU^S12", "MDM^T02", "VXU^V04", "BAR^P01", "ACK"):
        outcome = only("x.hl7", hl7_text(MSH_ORU.replace("ORU^R01", kind), PID))
        assert outcome.ignored == f"ignored message type {kind}"
        assert not outcome.facts and not outcome.errors


@pytest.mark.parametrize("status", ["D", "W"])
def test_a_deleted_or_wrong_result_retracts_the_result_it_names(status: str) -> None:
    """HL7 table 0085: OBX-11 D deletes the OBX record, W posts the original as wrong. The
    withdrawal names the same result (patient, order, code, sub-id): the same fact id."""
    (sent,) = facts_of(only("k.hl7", hl7_text(MSH_ORU, PID, OBX_K)), LabResult)
    withdrawn = OBX_K.replace("|F|", f"|{status}|")
    outcome = only(
        "n.hl7", hl7_text(MSH_ORU, PID, withdrawn, "OBX|2|ED|X^Img^L||^IM^JPEG^Base64^AA")
    )
    assert not facts_of(outcome, LabResult) and not outcome.errors
    (retraction,) = outcome.retractions
    assert (retraction.kind, retraction.fact_id) == ("lab", sent.fact_id)
    assert retraction.patient_id == sent.patient_id
    assert retraction.source.position == "OBX[1]-11"
    assert len(outcome.notes) == 1  # the image OBX


def test_a_result_that_cannot_be_obtained_is_skipped_with_a_note() -> None:
    outcome = only("x.hl7", hl7_text(MSH_ORU, PID, OBX_K.replace("|F|", "|X|")))
    assert not facts_of(outcome, LabResult) and not outcome.retractions and not outcome.errors
    assert len(outcome.notes) == 1


def test_facts_carry_the_message_time_as_their_version() -> None:
    """EVN-2 (recorded date/time) when present, else MSH-7; naive UTC (site zone UTC here)."""
    msh_time = MSH_ORU.split("|")[6]
    outcome = only("k.hl7", hl7_text(MSH_ORU, PID, OBX_K))
    expected = as_utc(datetime.strptime(msh_time, "%Y%m%d%H%M%S"))
    assert outcome.version_time == expected
    assert {fact.source.version_time for fact in outcome.facts} == {expected}


# Units of the pieces -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024", datetime(2024, 1, 1)),
        ("202403", datetime(2024, 3, 1)),
        ("20240306", datetime(2024, 3, 6)),
        ("2024030607", datetime(2024, 3, 6, 7)),
        ("202403060740", datetime(2024, 3, 6, 7, 40)),
        ("20240306074012.5", datetime(2024, 3, 6, 7, 40, 12, 500000)),
        (
            "20240306074012+0100",
            datetime(2024, 3, 6, 7, 40, 12, tzinfo=timezone(timedelta(hours=1))),
        ),
        ("202403060740-0530", datetime(2024, 3, 6, 7, 40, tzinfo=timezone(-timedelta(hours=5.5)))),
    ],
)
def test_dtm_accepts(text: str, expected: datetime) -> None:
    assert parse_dtm(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "24",
        "2024-03-06",
        "2024030",
        "20241306",
        "20240230",
        "2024030625",
        "202403060760",
        "20240306.5",
        "20240306074012+01",
        "20240306074012+2500",
        "20240306 0740",
        "２０２４",
    ],
)
def test_dtm_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_dtm(text)


@pytest.mark.parametrize(
    ("pattern", "per_day", "as_needed"),
    [
        ("QD", 1.0, False),
        ("BID", 2.0, False),
        ("TID", 3.0, False),
        ("QID", 4.0, False),
        ("Q6H", 4.0, False),
        ("Q8H", 3.0, False),
        ("q12h", 2.0, False),
        ("QW", 1 / 7, False),
        ("Q2D", 0.5, False),
        ("QOD", 0.5, False),
        ("3ID", 3.0, False),
        ("Q6H PRN", 4.0, True),
        ("PRN", None, True),
        ("Every 6 hours", None, False),
        ("Q0H", None, False),
    ],
)
def test_repeat_patterns(pattern: str, per_day: float | None, as_needed: bool) -> None:
    assert frequency_per_day(pattern) == (per_day, as_needed)


# Goldens -------------------------------------------------------------------------------------


def golden_form(document: str, content: bytes) -> list[dict[str, Any]]:
    form = []
    for raw, outcome in messages(document, content):
        entry: dict[str, Any] = {
            "message_id": raw.message_id,
            "position": raw.position,
            "encoding": raw.encoding,
        }
        if isinstance(outcome, FeedError):
            entry["fatal"] = str(outcome)
        else:
            entry["message_type"] = outcome.message_type
            entry["ignored"] = outcome.ignored
            entry["facts"] = [
                {"kind": fact.kind, **fact.model_dump(mode="json")} for fact in outcome.facts
            ]
            entry["errors"] = [str(error) for error in outcome.errors]
        form.append(entry)
    return form


@pytest.mark.parametrize("name", GOLDEN_INPUTS)
def test_golden(name: str) -> None:
    actual = golden_form(*golden_input(name))
    expected_path = GOLDEN / f"{Path(name).stem}.json"
    if vigie_settings.value("regenerate_golden"):
        text = json.dumps(actual, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
        expected_path.write_text(text, encoding="utf-8")
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    assert actual == expected


# The field reader agrees with python-hl7 -----------------------------------------------------


def _python_hl7_value(message: Hl7Message, node: Any, indexes: tuple[int, int, int]) -> str:
    """python-hl7's leaf at (repetition, component, subcomponent), cleaned like ours."""
    for index in indexes:
        if isinstance(node, str):
            node = node if index == 1 else ""
        else:
            node = node[index - 1] if index <= len(node) else ""
    text = node if isinstance(node, str) else str(node)
    if message.escape in text:
        text = message.unescape(text)
    text = text.strip()
    return "" if text == '""' else text


def _agreement(document: str, content: bytes) -> int:
    checked = 0
    for raw in hl7v2.split(document, content):
        try:
            message = Hl7Message(raw)
        except FeedError:
            continue
        lines = [
            "|".join(segment.fields[:1] + segment.fields[2:])
            if segment.name == "MSH"
            else "|".join(segment.fields)
            for segment in message.segments
        ]
        if message.separator != "|" or message.encoding_chars != "^~\\&":
            continue
        parsed = hl7.parse("\r".join(lines))
        for segment, reference in zip(message.segments, parsed, strict=True):
            for number in range(3 if segment.name == "MSH" else 1, len(segment.fields)):
                node = reference[number]
                for indexes in ((1, 1, 1), (1, 2, 1), (1, 1, 2), (2, 1, 1), (1, 3, 1), (2, 2, 2)):
                    ours = message.value(segment, number, indexes[1], indexes[2], indexes[0])
                    assert ours == _python_hl7_value(message, node, indexes), (
                        f"{document} {segment.position(number)} {indexes}"
                    )
                    checked += 1
    return checked


def test_field_access_agrees_with_python_hl7(shared_data: Path) -> None:
    checked = 0
    for path in sorted((shared_data / "hl7v2").rglob("*.hl7")):
        checked += _agreement(path.name, path.read_bytes())
    for name in GOLDEN_INPUTS:
        checked += _agreement(*golden_input(name))
    assert checked > 50_000


# Fuzzing -------------------------------------------------------------------------------------

_SEEDS = [(GOLDEN / name).read_bytes() for name in GOLDEN_INPUTS] + [
    hl7_text(MSH_ORU, PID, OBX_K, OBX_NA)
]
_NOISE = st.sampled_from(list(b"|^~\\&\r\n\x0b\x1c 0123456789.-+<>AZMSHPIDOBX\xe9\xc3\x00\xff"))


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    content = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(content)))
        action = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        if action == "truncate":
            del content[position:]
        elif action == "delete":
            del content[position : position + draw(st.integers(1, 20))]
        elif action == "insert" or position == len(content):
            content[position:position] = bytes([draw(_NOISE)])
        else:
            content[position] = draw(_NOISE)
    return bytes(content)


_FIELD_TEXT = st.text(alphabet="0123456789.,-+<>=^~&\\ABCDHINOPQRTWXé: ", max_size=24)


@st.composite
def field_mutations(draw: st.DrawFn) -> bytes:
    """A seed with some fields (not MSH-1/2) replaced by random text: reaches the fact builders."""
    seed = draw(st.sampled_from(_SEEDS)).decode("latin-1")
    segments = [segment.split("|") for segment in seed.replace("\n", "\r").split("\r")]
    for _ in range(draw(st.integers(1, 4))):
        fields = draw(st.sampled_from([s for s in segments if len(s) > 2]))
        index = draw(st.integers(2 if fields[0].endswith("MSH") else 1, len(fields) + 3))
        fields.extend([""] * (index + 1 - len(fields)))
        fields[index] = draw(_FIELD_TEXT)
    return "\r".join("|".join(fields) for fields in segments).encode("utf-8")


def _parse_everything(content: bytes) -> None:
    for raw in hl7v2.split("fuzz.hl7", content):
        try:
            outcome = hl7v2.parse(raw)
        except FeedError as error:
            assert error.document == "fuzz.hl7"
            continue
        for error in outcome.errors:
            assert isinstance(error, FeedError) and error.position


@pytest.mark.property
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages())
def test_mutated_messages_parse_or_raise_feed_error(content: bytes) -> None:
    _parse_everything(content)


@pytest.mark.property
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field_mutations())
def test_messages_with_random_fields_parse_or_raise_feed_error(content: bytes) -> None:
    _parse_everything(content)


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400).map(str.encode)))
def test_random_input_parses_or_raises_feed_error(content: bytes) -> None:
    _parse_everything(content)


@pytest.mark.property
@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="MSHPIDOBX|^~\\&\r\n0123456789", max_size=300))
def test_random_hl7_like_text_parses_or_raises_feed_error(text: str) -> None:
    _parse_everything(("MSH|^~\\&|" + text).encode())


@pytest.mark.property
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_messages(), field_mutations()))
def test_python_hl7_reader_on_mutated_messages_gives_facts_or_feed_error(content: bytes) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PARSER_VARIABLE, "python-hl7")
        _parse_everything(content)


# Truncated documents --------------------------------------------------------------------------
# A document that ends without a segment terminator (CR, LF or the MLLP end block) inside an OBX
# whose OBX-11 (result status, required by HL7 v2) is missing or empty was cut short: the message
# is rejected, located at the last field present. A terminated segment may omit trailing fields
# (HL7 allows it), and so may a complete OBX at the end of a file without a final CR (several
# reference files end so): neither is truncation.

_CUT = hl7_text(MSH_ORU, PID)
_TIMED = hl7_text(MSH_ORU, PID, "OBR|1||||||20240306074000")  # OBR-7: the results' time


@pytest.mark.parametrize(
    ("tail", "position"),
    [
        (b"OBX|1|NM|2823-3^Pot", "OBX[1]-3"),  # cut in the observation id
        (b"OBX|1|NM|2823-3^Potassium^LN||5.", "OBX[1]-5"),  # cut in the value: never a 5.0
        (b"OBX|1|NM|2823-3^Potassium^LN||5.9|mmol/L|3.5-5.1|H|||", "OBX[1]-11"),
    ],
)
def test_a_file_cut_inside_an_obx_is_a_located_error(tail: bytes, position: str) -> None:
    second = _CUT.replace(b"|M1|", b"|M2|") + tail
    (_, ok), (raw, error) = messages("cut.hl7", _CUT + OBX_K.encode() + b"\r" + second)
    assert not isinstance(ok, FeedError) and facts_of(ok, LabResult)
    assert isinstance(error, FeedError), "the cut message must not load"
    assert raw.position == "message 2"
    assert error.position == position
    assert "OBX-11" in error.expected and "truncated" in error.expected
    assert str(error).startswith(f"cut.hl7: message LAB^CHU|M2: {position}: expected ")


@pytest.mark.parametrize(
    "content",
    [
        _TIMED + b"OBX|1|NM|2823-3^Potassium^LN||5.9\r",  # terminated: trailing fields omitted
        _TIMED + b"OBX|1|NM|2823-3^Potassium^LN||5.9|mmol/L|||||F",  # complete, no final CR
        _TIMED + b"OBX|1|NM|2823-3^Potassium^LN||5.9|mmol/L|||||F|||20240306074000",
        b"\x0b" + _TIMED + b"OBX|1|NM|2823-3^Potassium^LN||5.9\x1c\r",  # MLLP end block
    ],
)
def test_omitted_trailing_fields_are_not_truncation(content: bytes) -> None:
    outcome = only("ok.hl7", content)
    assert [f.value for f in facts_of(outcome, LabResult)] == [5.9]
