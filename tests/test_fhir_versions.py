"""FHIR message identity, event (version) time and withdrawn data (issue 7, items 3 and 4).

Expectations come from the FHIR R4 specification and the reference files, read here with json
and datetime, never through the connector:

- ``Bundle.id`` names a Bundle only within its sender; an ``identifier`` with a ``system`` is
  global; a ``message`` Bundle's sender is its MessageHeader's ``source.endpoint``; a resource's
  ``meta.source`` names where it comes from.
- ``meta.lastUpdated`` and ``Bundle.timestamp`` are instants (they carry an offset).
- ``entered-in-error`` (a resource's status, or the ``verificationStatus`` of a Condition or an
  AllergyIntolerance) means the resource should not have existed: what it said is withdrawn.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from vigie.connectors.base import FeedError, ParseOutcome
from vigie.connectors.fhir import connector as fhir
from vigie.facts import AnyFact, LabResult, Retraction
from vigie.ingest import IngestReport, ingest
from vigie.store import FactStore

CONVERTER = "hl7v2/microsoft_fhir_converter/expected_fhir"
ADT_A01 = "hl7v2/microsoft_fhir_converter/expected_fhir/ADT_A01/ADT-A01-01-expected.json"
ADT_A03 = "hl7v2/microsoft_fhir_converter/expected_fhir/ADT_A03/ADT-A03-01-expected.json"
PATHS = pytest.mark.parametrize("validate", [True, False], ids=["validated", "fast"])


def converter_bundles(shared: Path) -> list[Path]:
    return sorted((shared / CONVERTER).rglob("*.json"))


def instant(text: str) -> datetime:
    """A FHIR instant as naive UTC, read with the standard library."""
    return datetime.fromisoformat(text).astimezone(UTC).replace(tzinfo=None)


def parse_one(name: str, content: bytes, validate: bool = True) -> ParseOutcome:
    (raw,) = fhir.split(name, content)
    return fhir.parse(raw, validate=validate)


def bundle(*items: dict[str, Any], **fields: Any) -> dict[str, Any]:
    entries = [{"fullUrl": f"urn:uuid:{i}", "resource": item} for i, item in enumerate(items)]
    return {"resourceType": "Bundle", "type": "collection", **fields, "entry": entries}


def message_id(document: dict[str, Any], name: str = "b.json") -> str:
    (raw,) = fhir.split(name, orjson.dumps(document))
    return raw.message_id


def sha256_id(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}
CREATININE = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                              "observation-category", "code": "laboratory"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-01-02T08:00:00Z",
    "valueQuantity": {"value": 1.2, "unit": "mg/dL"},
}  # fmt: skip


# Message identity ---------------------------------------------------------------------------


def test_converter_bundles_share_bundle_ids_but_stay_distinct_messages(shared_data: Path) -> None:
    paths = converter_bundles(shared_data)
    assert len(paths) == 28
    documents = [json.loads(path.read_bytes()) for path in paths]
    # The premise: the converter reuses Bundle.id (and an identifier without system).
    assert len({document["id"] for document in documents}) < 28
    assert all("system" not in document["identifier"] for document in documents)
    ids = [raw.message_id for path in paths for raw in fhir.split(path.name, path.read_bytes())]
    assert ids == [sha256_id(path.read_bytes()) for path in paths]  # no identity: the content
    assert len(set(ids)) == 28


def test_identifier_with_a_system_is_the_identity() -> None:
    identifier = {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:8f4b"}
    document = bundle(PATIENT, id="b1", identifier=identifier, meta={"source": "http://lab"})
    assert message_id(document) == "identifier|urn:ietf:rfc:3986|urn:uuid:8f4b"
    without_system = bundle(PATIENT, id="b1", identifier={"value": "MSG00001"})
    content = orjson.dumps(without_system)
    assert message_id(without_system) == sha256_id(content)


def test_an_identity_too_long_for_the_store_is_hashed_and_stays_stable() -> None:
    """The store holds message ids up to 512 characters: a long identity keeps its meaning
    (the same identifier, the same id) through its hash."""
    identifier = {"system": "urn:ietf:rfc:3986", "value": "urn:x:" + "9" * 300}
    identity = f"identifier|{identifier['system']}|{identifier['value']}"
    expected = "identity-sha256:" + hashlib.sha256(identity.encode()).hexdigest()
    assert message_id(bundle(PATIENT, identifier=identifier)) == expected
    assert message_id(bundle(CREATININE, identifier=identifier)) == expected


def test_sender_scopes_the_bundle_id() -> None:
    document = bundle(PATIENT, id="b1", meta={"source": "http://lab.example/fhir"})
    assert message_id(document) == "http://lab.example/fhir|Bundle/b1"
    other_sender = bundle(PATIENT, id="b1", meta={"source": "http://pharmacy.example/fhir"})
    assert message_id(other_sender) != message_id(document)
    no_id = bundle(PATIENT, meta={"source": "http://lab.example/fhir"})
    assert message_id(no_id) == sha256_id(orjson.dumps(no_id))


def test_a_message_bundle_is_scoped_by_its_message_header_source(shared_data: Path) -> None:
    """Two converter outputs of unrelated HL7 messages (an A01 and an A03) share Bundle.id and
    MessageHeader.source.endpoint: as the batch Bundles they are, two messages; sent as FHIR
    messages, the same message id from the same sender would be two versions of one message."""
    a01, a03 = (json.loads((shared_data / name).read_bytes()) for name in (ADT_A01, ADT_A03))
    assert a01["type"] == a03["type"] == "batch" and a01["id"] == a03["id"]
    assert message_id(a01) != message_id(a03)
    header = a01["entry"][0]["resource"]
    assert header["resourceType"] == "MessageHeader"
    endpoint = header["source"]["endpoint"]
    for document in (a01, a03):
        document["type"] = "message"
        assert message_id(document) == f"{endpoint}|Bundle/{a01['id']}"


def test_resource_ids_are_the_servers_logical_ids_scoped_by_meta_source() -> None:
    assert message_id(PATIENT, "p.json") == "Patient/p1"
    sourced = {**PATIENT, "meta": {"source": "http://lab.example/fhir"}}
    assert message_id(sourced, "p.json") == "http://lab.example/fhir|Patient/p1"
    lines = b"\n".join(orjson.dumps(r) for r in (PATIENT, sourced, CREATININE)) + b"\n"
    assert [raw.message_id for raw in fhir.split("bulk.ndjson", lines)] == [
        "Patient/p1",
        "http://lab.example/fhir|Patient/p1",
        "Observation/o1",
    ]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # Bulk exports write meta right after the id
        (b'{"resourceType":"Patient","id":"p1","meta":{"source":"http://lab"},"gender":"male"}',
         "http://lab|Patient/p1"),
        (b'{"resourceType":"Patient","id":"p1","meta":{"tag":[{"code":"x"}],"source":"http://lab"'
         b'}}', "http://lab|Patient/p1"),
        (b'{"resourceType":"Patient","id":"p1","meta":{"profile":["http://x/resource-source"]}}',
         "Patient/p1"),
        (b'{"resourceType":"Patient","id":"p1","gender":"male","meta":{"source":"http://lab"}}',
         "http://lab|Patient/p1"),
        (b'{"resourceType": "Patient", "id": "p1", "meta": {"source": "http://lab"}}',
         "http://lab|Patient/p1"),
        # HAPI: source system#request id; the request id changes with every update
        (b'{"resourceType":"Patient","id":"p1","meta":{"source":"http://lab#Kq3vA9"}}',
         "http://lab|Patient/p1"),
        (b'{"resourceType":"Patient","id":"p1","meta":{"source":"#Kq3vA9"}}', "Patient/p1"),
        # a source elsewhere is not the resource's meta.source
        (b'{"resourceType":"Patient","id":"p1","contained":[{"resourceType":"Organization","id":'
         b'"o","meta":{"source":"http://other"}}]}', "Patient/p1"),
    ],
)  # fmt: skip
def test_ndjson_line_ids_read_meta_source_wherever_it_is(line: bytes, expected: str) -> None:
    assert [raw.message_id for raw in fhir.split("bulk.ndjson", line + b"\n")] == [expected]


def test_a_sourced_bundle_sent_again_changed_is_a_new_version_of_the_same_id() -> None:
    first = bundle(PATIENT, CREATININE, id="b1", meta={"source": "http://lab.example/fhir"})
    corrected = bundle(
        PATIENT, {**CREATININE, "valueQuantity": {"value": 1.4, "unit": "mg/dL"}},
        id="b1", meta={"source": "http://lab.example/fhir"},
    )  # fmt: skip
    (one,) = fhir.split("b.json", orjson.dumps(first))
    (two,) = fhir.split("b-corrected.json", orjson.dumps(corrected))
    assert one.message_id == two.message_id == "http://lab.example/fhir|Bundle/b1"
    assert one.sha256 != two.sha256


# Version times ------------------------------------------------------------------------------


def resource_of(document: dict[str, Any], fact_id: str) -> dict[str, Any]:
    """The resource a fact id ``fhir:Type/id[suffix]`` names, found in the Bundle by json."""
    match = re.fullmatch(r"fhir:([A-Za-z]+)/([^/]+)(/.*)?", fact_id)
    assert match is not None, fact_id
    (resource,) = [
        entry["resource"]
        for entry in document["entry"]
        if entry["resource"]["resourceType"] == match[1] and entry["resource"]["id"] == match[2]
    ]
    return resource


@PATHS
def test_converter_facts_carry_last_updated_else_the_bundle_timestamp(
    shared_data: Path, validate: bool
) -> None:
    seen_own = seen_bundle = 0
    for path in converter_bundles(shared_data):
        document = json.loads(path.read_bytes())
        outcome = parse_one(path.name, path.read_bytes(), validate)
        assert outcome.version_time == instant(document["timestamp"]), path.name
        for fact in outcome.facts:
            resource = resource_of(document, fact.fact_id)
            own = resource.get("meta", {}).get("lastUpdated")
            expected = instant(own or document["timestamp"])
            assert fact.source.version_time == expected, (path.name, fact.fact_id)
            seen_own, seen_bundle = seen_own + bool(own), seen_bundle + (not own)
    assert seen_own and seen_bundle  # both cases are in the files


@PATHS
def test_adt_a01_times_as_written(shared_data: Path, validate: bool) -> None:
    path = shared_data / ADT_A01
    outcome = parse_one(path.name, path.read_bytes(), validate)
    times = {fact.kind: fact.source.version_time for fact in outcome.facts}
    # Patient meta.lastUpdated 2005-01-10T04:05:14+05:30; Bundle.timestamp 1989-08-18T14:41+05:30
    assert times["patient"] == datetime(2005, 1, 9, 22, 35, 14)
    assert times["stay"] == datetime(1989, 8, 18, 9, 11)
    assert outcome.version_time == datetime(1989, 8, 18, 9, 11)


@PATHS
def test_bundle_without_timestamp(validate: bool) -> None:
    older = {**PATIENT, "meta": {"lastUpdated": "2024-03-01T10:00:00+01:00"}}
    newer = {**CREATININE, "meta": {"lastUpdated": "2024-03-02T10:00:00.123Z"}}
    outcome = parse_one("b.json", orjson.dumps(bundle(older, newer)), validate)
    assert outcome.errors == []
    assert [f.source.version_time for f in outcome.facts] == [
        datetime(2024, 3, 1, 9, 0),
        datetime(2024, 3, 2, 10, 0, 0, 123000),
    ]
    assert outcome.version_time == datetime(2024, 3, 2, 10, 0, 0, 123000)  # the latest
    stamped = bundle(PATIENT, newer, meta={"lastUpdated": "2024-03-05T00:00:00-05:00"})
    outcome = parse_one("b.json", orjson.dumps(stamped), validate)
    assert [f.source.version_time for f in outcome.facts] == [
        datetime(2024, 3, 5, 5, 0),  # the Bundle's meta.lastUpdated
        datetime(2024, 3, 2, 10, 0, 0, 123000),  # its own
    ]
    assert outcome.version_time == datetime(2024, 3, 5, 5, 0)


@PATHS
def test_ndjson_lines_carry_their_own_last_updated(validate: bool) -> None:
    sourced = {**CREATININE, "meta": {"lastUpdated": "2024-03-02T10:00:00+02:00"}}
    lines = orjson.dumps(PATIENT) + b"\n" + orjson.dumps(sourced) + b"\n"
    outcomes = [fhir.parse(raw, validate=validate) for raw in fhir.split("b.ndjson", lines)]
    assert [o.version_time for o in outcomes] == [None, datetime(2024, 3, 2, 8, 0)]
    assert [o.facts[0].source.version_time for o in outcomes] == [None, datetime(2024, 3, 2, 8)]
    # no version time: the stored form of the fact is as before (no version_time key)
    assert "version_time" not in outcomes[0].facts[0].source.model_dump()


def test_synthea_bulk_has_no_version_times(shared_data: Path) -> None:
    path = shared_data / "fhir/synthea-bulk-10/Patient.000.ndjson"
    assert b"lastUpdated" not in path.read_bytes()
    for raw in fhir.split(path.name, path.read_bytes()):
        outcome = fhir.parse(raw)
        assert outcome.version_time is None
        assert all(fact.source.version_time is None for fact in outcome.facts)


@PATHS
@pytest.mark.parametrize("written", ["2024-03-02T10:00:00", "2024-03-02", "yesterday"])
def test_last_updated_without_offset_is_a_located_error(validate: bool, written: str) -> None:
    """An instant has an offset (the R4B models reject the others): the entry is rejected."""
    wrong = {**CREATININE, "meta": {"lastUpdated": written}}
    outcome = parse_one("b.json", orjson.dumps(bundle(PATIENT, wrong)), validate)
    (error,) = outcome.errors
    assert error.position == "Bundle.entry[1].resource.meta.lastUpdated"
    assert error.found == written
    assert [fact.kind for fact in outcome.facts] == ["patient"]


@PATHS
def test_malformed_bundle_timestamp_is_reported_once_and_the_facts_load(validate: bool) -> None:
    content = orjson.dumps(bundle(PATIENT, CREATININE, timestamp="2024-03-02 10:00"))
    outcome = parse_one("b.json", content, validate)
    (error,) = outcome.errors
    assert error.position == "Bundle.timestamp" and error.found == "2024-03-02 10:00"
    assert [fact.kind for fact in outcome.facts] == ["patient", "lab"]
    assert outcome.version_time is None


# Withdrawn data ------------------------------------------------------------------------------

MORNING_AND_NOON = {
    "resourceType": "MedicationRequest",
    "id": "mr1",
    "status": "active",
    "intent": "order",
    "medicationCodeableConcept": {"text": "hydrocortisone"},
    "subject": {"reference": "Patient/p1"},
    "dosageInstruction": [
        {"doseAndRate": [{"doseQuantity": {"value": 20, "unit": "mg"}}],
         "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}},
        {"doseAndRate": [{"doseQuantity": {"value": 10, "unit": "mg"}}],
         "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}},
    ],
}  # fmt: skip
GIVEN = {
    "resourceType": "MedicationAdministration",
    "id": "ma1",
    "status": "completed",
    "medicationCodeableConcept": {"text": "hydrocortisone"},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-01-02T08:00:00Z",
}
STAY = {
    "resourceType": "Encounter",
    "id": "e1",
    "status": "in-progress",
    "class": {"code": "IMP"},
    "subject": {"reference": "Patient/p1"},
    "period": {"start": "2024-01-01T08:00:00Z"},
}
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
DIAGNOSIS = {
    "resourceType": "Condition",
    "id": "c1",
    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "N18.4"}]},
    "subject": {"reference": "Patient/p1"},
    "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
}
ALLERGY = {
    "resourceType": "AllergyIntolerance",
    "id": "a1",
    "code": {"text": "penicillin"},
    "patient": {"reference": "Patient/p1"},
    "verificationStatus": {"coding": [{"code": "confirmed"}]},
}


def entered_in_error(resource: dict[str, Any], code: str = "entered-in-error") -> dict[str, Any]:
    if "verificationStatus" in resource:
        return {**resource, "verificationStatus": {"coding": [{"code": code}]}}
    return {**resource, "status": code}


def keys(items: list[AnyFact] | list[Retraction]) -> list[tuple[str, str, str]]:
    return [(item.kind, item.fact_id, item.patient_id) for item in items]


@PATHS
@pytest.mark.parametrize(
    "resource", [CREATININE, MORNING_AND_NOON, GIVEN, STAY, DIAGNOSIS, ALLERGY],
    ids=["Observation", "MedicationRequest", "MedicationAdministration", "Encounter",
         "Condition", "AllergyIntolerance"],
)  # fmt: skip
def test_entered_in_error_retracts_the_facts_the_resource_gave(
    resource: dict[str, Any], validate: bool
) -> None:
    standing = parse_one("b.json", orjson.dumps(bundle(PATIENT, resource)), validate)
    assert standing.errors == [] and standing.retractions == []
    given = [fact for fact in standing.facts if fact.kind != "patient"]
    assert given  # the valid resource gives facts...
    withdrawn = entered_in_error(resource)
    outcome = parse_one("b.json", orjson.dumps(bundle(PATIENT, withdrawn)), validate)
    assert outcome.errors == []
    assert [fact.kind for fact in outcome.facts] == ["patient"]  # ...the withdrawn one none,
    assert keys(outcome.retractions) == keys(given)  # but retracts them, same kinds and ids
    field = "verificationStatus" if "verificationStatus" in resource else "status"
    assert {r.source.position for r in outcome.retractions} == {f"Bundle.entry[1].resource.{field}"}


def test_medication_request_retracts_every_dosage_line() -> None:
    outcome = parse_one("mr.json", orjson.dumps(entered_in_error(MORNING_AND_NOON)))
    assert [r.fact_id for r in outcome.retractions] == [
        "fhir:MedicationRequest/mr1/dosage[0]",
        "fhir:MedicationRequest/mr1/dosage[1]",
    ]


@PATHS
def test_refuted_condition_retracts_it(validate: bool) -> None:
    """Refuted: ruled out by later evidence. A provisional diagnosis loaded before must go."""
    outcome = parse_one("c.json", orjson.dumps(entered_in_error(DIAGNOSIS, "refuted")), validate)
    assert outcome.facts == []
    assert keys(outcome.retractions) == [("condition", "fhir:Condition/c1", "p1")]


@PATHS
def test_retraction_carries_the_version_time(validate: bool) -> None:
    withdrawn = {**entered_in_error(CREATININE), "meta": {"lastUpdated": "2024-01-03T09:00:00Z"}}
    line = orjson.dumps(withdrawn)
    (raw,) = fhir.split("Observation.ndjson", line + b"\n")
    outcome = fhir.parse(raw, validate=validate)
    (retraction,) = outcome.retractions
    assert (retraction.kind, retraction.fact_id) == ("lab", "fhir:Observation/o1")
    assert retraction.source.version_time == datetime(2024, 1, 3, 9, 0)
    assert retraction.source.message_id == "Observation/o1"
    assert outcome.version_time == datetime(2024, 1, 3, 9, 0)


def transaction(*entries: dict[str, Any]) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": list(entries)})


def delete(url: Any) -> dict[str, Any]:
    return {"request": {"method": "DELETE", "url": url}}


@PATHS
def test_delete_entries(validate: bool) -> None:
    content = transaction(
        {"fullUrl": "urn:uuid:0", "resource": PATIENT, "request": {"method": "PUT",
                                                                    "url": "Patient/p1"}},
        delete("Patient/p2"),
        delete("Observation/o1"),
        delete("Location/l1"),
        delete("Observation?code=2160-0"),
        {"resource": CREATININE, "request": {"method": "DELETE", "url": "Observation/o1"}},
    )  # fmt: skip
    outcome = parse_one("t.json", content, validate)
    assert [fact.kind for fact in outcome.facts] == ["patient"]
    # A Patient's fact is named by its id alone; the deleted resource sent with it is retracted.
    assert keys(outcome.retractions) == [
        ("patient", "fhir:Patient/p2", "p2"),
        ("lab", "fhir:Observation/o1", "p1"),
    ]
    assert [r.source.position for r in outcome.retractions] == [
        "Bundle.entry[1].request.url",
        "Bundle.entry[5].request",
    ]
    # Without its content an Observation's facts cannot be named: said, not silently dropped.
    # A Location gives no fact: nothing to withdraw.
    observation, conditional = outcome.errors
    assert observation.position == "Bundle.entry[2].request.url"
    assert "not applied" in observation.expected and observation.found == "Observation/o1"
    assert conditional.position == "Bundle.entry[4].request.url"
    assert "not applied" in conditional.expected


def test_delete_without_url_is_located_and_the_rest_loads() -> None:
    content = transaction(delete(None), {"resource": PATIENT})
    outcome = parse_one("t.json", content)
    (error,) = outcome.errors
    assert isinstance(error, FeedError) and error.position == "Bundle.entry[0].request.url"
    assert [fact.kind for fact in outcome.facts] == ["patient"]


def test_both_paths_give_the_same_facts_and_times_on_the_converter_bundles(
    shared_data: Path,
) -> None:
    for path in converter_bundles(shared_data):
        checked = parse_one(path.name, path.read_bytes(), validate=True)
        fast = parse_one(path.name, path.read_bytes(), validate=False)
        assert fast.facts == checked.facts, path.name
        assert [f.model_dump_json() for f in fast.facts] == [
            f.model_dump_json() for f in checked.facts
        ], path.name
        assert (fast.version_time, fast.retractions) == (checked.version_time, [])


# End to end: through ingest into the store (SQLite and PostgreSQL) -------------------------


@pytest.fixture
def store(store_url: str) -> Iterator[FactStore]:
    with FactStore(store_url) as opened:
        yield opened


def send(store: FactStore, folder: Path, name: str, document: dict[str, Any]) -> IngestReport:
    path = folder / name
    path.write_bytes(orjson.dumps(document))
    return ingest([path], store, fmt="fhir")


def creatinine(store: FactStore) -> list[str | None]:
    """The creatinine results the rules see, as the values written (mg/dL)."""
    labs = [fact for fact in store.iter_facts(kinds=["lab"]) if isinstance(fact, LabResult)]
    return [lab.original_value for lab in labs if lab.concept == "creatinine"]


def updated(resource: dict[str, Any], at: str, **changes: Any) -> dict[str, Any]:
    return {**resource, **changes, "meta": {"lastUpdated": at}}


def test_the_28_converter_bundles_are_28_messages_in_the_store(
    shared_data: Path, store: FactStore
) -> None:
    paths = converter_bundles(shared_data)
    ingest([shared_data / CONVERTER], store, fmt="fhir")
    assert sum(store.raw_counts().values()) == 28
    assert "superseded" not in store.raw_counts()
    for path in paths:  # none replaced: each file is the one version of its own message
        (version,) = store.raw_versions("fhir", sha256_id(path.read_bytes()))
        assert version.content == path.read_bytes()


def test_an_observation_then_its_entered_in_error_version(store: FactStore, tmp_path: Path) -> None:
    """Two Bundles without identity (two messages): only the retraction can withdraw the lab."""
    send(store, tmp_path, "b1.json", bundle(PATIENT, CREATININE))
    assert creatinine(store) == ["1.2"]
    withdrawn = updated(entered_in_error(CREATININE), "2024-01-03T09:00:00Z")
    report = send(store, tmp_path, "b2.json", bundle(PATIENT, withdrawn))
    assert report.total_retractions() == {"lab": 1}
    assert creatinine(store) == []
    assert [fact.kind for fact in store.iter_facts()] == ["patient"]


def test_a_resource_withdrawn_then_its_older_version_arriving_late(
    store: FactStore, tmp_path: Path
) -> None:
    """Observation/o1 as single-resource files: versions of one message, ordered by
    meta.lastUpdated; the original arriving after its withdrawal does not bring it back."""
    original = updated(CREATININE, "2024-01-02T09:00:00+01:00")
    withdrawn = updated(entered_in_error(CREATININE), "2024-01-03T09:00:00+01:00")
    send(store, tmp_path, "withdrawn.json", withdrawn)
    send(store, tmp_path, "original.json", original)
    assert creatinine(store) == []
    versions = store.raw_versions("fhir", "Observation/o1")
    assert [v.status for v in versions] == ["loaded", "superseded"]
    assert [v.version_time for v in versions] == [datetime(2024, 1, 3, 8), datetime(2024, 1, 2, 8)]


@pytest.mark.parametrize("as_bundles", [False, True], ids=["resource-versions", "two-bundles"])
def test_an_older_last_updated_arriving_after_a_newer_leaves_the_newer(
    store: FactStore, tmp_path: Path, as_bundles: bool
) -> None:
    newer = updated(
        CREATININE, "2024-01-02T12:00:00Z", valueQuantity={"value": 1.4, "unit": "mg/dL"}
    )
    older = updated(CREATININE, "2024-01-02T10:00:00Z")
    if as_bundles:  # two messages giving one fact: the fact's version time decides
        send(store, tmp_path, "newer.json", bundle(PATIENT, newer))
        send(store, tmp_path, "older.json", bundle(PATIENT, older))
    else:  # two versions of one message (Observation/o1): the message's version time decides
        send(store, tmp_path, "newer.json", newer)
        send(store, tmp_path, "older.json", older)
    assert creatinine(store) == ["1.4"]
    (lab,) = store.iter_facts(kinds=["lab"])
    assert lab.source.version_time == datetime(2024, 1, 2, 12, 0)


def test_a_sourced_bundle_corrected_is_a_new_version_that_replaces_the_first(
    store: FactStore, tmp_path: Path
) -> None:
    sender = {"source": "http://lab.example/fhir"}
    potassium = {**CREATININE, "id": "o2", "code": {"coding": [{"system": "http://loinc.org",
                                                                "code": "2823-3"}]},
                 "valueQuantity": {"value": 5.9, "unit": "mmol/L"}}  # fmt: skip
    first = bundle(PATIENT, CREATININE, potassium, id="b1", meta=sender,
                   timestamp="2024-01-02T09:00:00+01:00")  # fmt: skip
    corrected = bundle(PATIENT, updated(CREATININE, "2024-01-02T10:00:00+01:00",
                                        valueQuantity={"value": 1.4, "unit": "mg/dL"}),
                       id="b1", meta=sender, timestamp="2024-01-02T10:00:00+01:00")  # fmt: skip
    send(store, tmp_path, "b1.json", first)
    report = send(store, tmp_path, "b1-corrected.json", corrected)
    assert report.total_corrections() == 1
    labs = sorted((f.fact_id, f.original_value) for f in store.iter_facts(kinds=["lab"]))
    assert labs == [("fhir:Observation/o1", "1.4")]  # the potassium only the first gave is gone
    versions = store.raw_versions("fhir", "http://lab.example/fhir|Bundle/b1")
    assert [v.status for v in versions] == ["superseded", "loaded"]
    assert [v.content for v in versions] == [orjson.dumps(first), orjson.dumps(corrected)]
