"""Message-level ingest (HTTP bodies): raw kept first, parsed, facts given back, failures located
and dead-lettered, idempotent on the message id, dead letters replayed after a mapping fix."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from vigie.connectors.base import FeedError
from vigie.connectors.hl7v2 import connector as hl7_connector
from vigie.ingest import ingest
from vigie.ingest.messages import (
    ReplayError,
    dead_letters,
    ingest_fhir,
    ingest_hl7,
    replay_dead_letter,
    replay_dead_letters,
)
from vigie.store import FactStore


@pytest.fixture
def store(store_url: str) -> Iterator[FactStore]:
    with FactStore(store_url) as opened:
        yield opened


def oru(control_id: str, patient: str = "P1", value: str = "5.9", sep: str = "\r") -> str:
    segments = [
        f"MSH|^~\\&|LAB|CHU|VIGIE|PHARMA|20240102080000||ORU^R01|{control_id}|P|2.5",
        f"PID|1||{patient}^^^H^PI||DOE^JO||19500101|F",
        f"OBX|1|NM|2823-3^Potassium^LN||{value}|mmol/L|3.5-5.1|H|||F|||202401020800",
    ]
    return sep.join(segments) + sep


def _facts(store: FactStore) -> dict[tuple[str, str], dict[str, Any]]:
    return {(f.kind, f.fact_id): f.model_dump(mode="json") for f in store.iter_facts()}


def test_one_message_is_kept_parsed_and_gives_its_facts(store: FactStore) -> None:
    (result,) = ingest_hl7(store, oru("M1").encode())
    assert (result.message_id, result.status, result.errors) == ("LAB^CHU|M1", "loaded", ())
    assert sorted(fact.kind for fact in result.facts) == ["lab", "patient"]
    assert store.raw_content("hl7v2", "LAB^CHU|M1") == oru("M1").encode()
    assert store.counts()["lab"] == 1
    assert result.summary()["facts"] == {"patient": 1, "lab": 1}


def test_the_same_message_twice_is_recorded_once(store: FactStore) -> None:
    ingest_hl7(store, oru("M1").encode())
    (again,) = ingest_hl7(store, oru("M1").encode())
    assert (again.status, again.facts) == ("duplicate", ())
    assert store.raw_counts() == {"loaded": 1}
    assert len(store.raw_versions("hl7v2", "LAB^CHU|M1")) == 1


@pytest.mark.parametrize("separator", ["\r", "\n", "\r\n"])
def test_many_messages_are_cut_at_each_msh_whatever_the_line_ends(
    store: FactStore, separator: str
) -> None:
    body = "".join(oru(f"M{i}", f"P{i}", sep=separator) for i in range(3))
    results = ingest_hl7(store, body)  # text: taken as given
    assert [(r.message_id, r.status) for r in results] == [
        (f"LAB^CHU|M{i}", "loaded") for i in range(3)
    ]
    assert [r.position for r in results] == ["message 1", "message 2", "message 3"]
    assert store.counts()["lab"] == 3


def test_a_broken_message_is_located_and_dead_lettered_the_rest_loads(store: FactStore) -> None:
    broken = oru("M2").replace("ORU^R01", "")
    bad_value = oru("M3", "P3", value="abc")
    results = ingest_hl7(store, (oru("M1") + broken + bad_value + oru("M4", "P4")).encode())
    assert [r.status for r in results] == ["loaded", "rejected", "partial", "loaded"]
    rejected, partial = results[1], results[2]
    (error,) = rejected.errors
    assert (error.position, error.fatal) == ("MSH-9", True)
    assert error.expected.startswith("a message type")
    assert "LAB^CHU|M2" in error.text and rejected.facts == ()
    (warning,) = partial.errors
    assert (warning.position, warning.found, warning.fatal) == ("OBX[1]-5", "abc", False)
    assert [fact.kind for fact in partial.facts] == ["patient"]  # the rest of it loaded
    letters = dead_letters(store)
    assert [(d.message_id, d.position, d.fatal) for d in letters] == [
        ("LAB^CHU|M2", "MSH-9", True),
        ("LAB^CHU|M3", "OBX[1]-5", False),
    ]
    assert store.raw_content("hl7v2", "LAB^CHU|M2") == broken.encode()  # nothing lost


def test_a_dead_lettered_message_sent_again_is_parsed_again(store: FactStore) -> None:
    body = oru("M3", value="abc").encode()
    assert ingest_hl7(store, body)[0].status == "partial"
    assert ingest_hl7(store, body)[0].status == "partial"  # retried, not a duplicate
    assert len(dead_letters(store)) == 1  # its earlier dead letter replaced


def test_fhir_bundle_and_ndjson(store: FactStore) -> None:
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "male"}
    lab = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-02T08:00:00Z",
        "valueQuantity": {"value": 5.9, "unit": "mmol/L"},
    }
    bundle = {
        "resourceType": "Bundle",
        "id": "b1",
        "identifier": {"system": "urn:lab", "value": "b1"},
        "type": "collection",
        "entry": [{"resource": patient}, {"resource": lab}],
    }
    (result,) = ingest_fhir(store, bundle)
    assert (result.message_id, result.status) == ("identifier|urn:lab|b1", "loaded")
    assert sorted(f.kind for f in result.facts) == ["lab", "patient"]
    assert ingest_fhir(store, orjson.dumps(bundle))[0].status == "duplicate"
    lab2 = {**lab, "id": "o2", "valueQuantity": {"value": 6.1, "unit": "mmol/L"}}
    lines = b"\n".join(orjson.dumps(r) for r in (patient, lab2))
    results = ingest_fhir(store, lines, ndjson=True)
    assert [(r.message_id, r.status, r.position) for r in results] == [
        ("Patient/p1", "loaded", "line 1"),
        ("Observation/o2", "loaded", "line 2"),
    ]
    assert store.counts()["lab"] == 2


def test_a_message_whose_every_part_failed_is_rejected_and_supersedes_nothing(
    store: FactStore,
) -> None:
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-01-01", "gender": "male"}
    first = {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:lab", "value": "b2"},
        "type": "collection",
        "meta": {"lastUpdated": "2024-01-02T08:00:00Z"},
        "entry": [{"resource": patient}],
    }
    assert ingest_fhir(store, first)[0].status == "loaded"
    # A later version of the same message whose every entry fails: rejected, like a message
    # that yields nothing (was partial), and the facts of the version before stay.
    broken = {
        **first,
        "meta": {"lastUpdated": "2024-01-03T08:00:00Z"},
        "entry": [{"resource": "oops"}, {"fullUrl": "x"}],
    }
    (result,) = ingest_fhir(store, broken)
    assert (result.status, result.facts, len(result.errors)) == ("rejected", (), 2)
    assert not any(error.fatal for error in result.errors)  # each entry located, not fatal
    assert store.raw_counts() == {"loaded": 1, "rejected": 1}
    assert store.counts()["patient"] == 1


def test_fhir_errors_are_located_by_json_path(store: FactStore) -> None:
    (not_json,) = ingest_fhir(store, b'{"resourceType": "Bundle", ')
    assert not_json.status == "rejected" and not_json.errors[0].fatal
    assert "line 1" in (not_json.errors[0].position or "")
    wrong = {"resourceType": "Observation", "id": "o9", "status": "final"}
    (result,) = ingest_fhir(store, wrong)
    assert result.status == "rejected"
    assert "subject" in result.errors[0].text or "code" in result.errors[0].text
    assert [d.message_id for d in dead_letters(store)] == [not_json.message_id, "Observation/o9"]


def test_dead_letters_page_and_filter(store: FactStore) -> None:
    ingest_hl7(store, "".join(oru(f"M{i}", value="abc") for i in range(5)))
    ingest_fhir(store, b"{")
    first = dead_letters(store, limit=2)
    second = dead_letters(store, limit=10, after=first[-1].id)
    assert [d.message_id for d in first + second][:5] == [f"LAB^CHU|M{i}" for i in range(5)]
    assert len(first + second) == 6
    assert [d.feed for d in dead_letters(store, feed="fhir")] == ["fhir"]
    assert first[0].message_status == "partial" and first[0].as_dict()["raw_id"] > 0


def test_replay_after_a_mapping_fix(
    store: FactStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A connector bug dead-letters messages; once fixed, their replay loads them from the
    bytes the store kept, exactly as a fresh ingest would."""
    parse = hl7_connector.parse

    def broken_mapping(raw: Any, *args: Any) -> Any:
        if b"PID|1||P2" in raw.content:
            raise FeedError(raw.document, "PID-3", "a mapped patient id", message_id="x")
        return parse(raw, *args)

    monkeypatch.setattr(hl7_connector, "parse", broken_mapping)
    body = (oru("M1") + oru("M2", "P2") + oru("M3", "P3")).encode()
    assert [r.status for r in ingest_hl7(store, body)] == ["loaded", "rejected", "loaded"]
    (letter,) = dead_letters(store)
    assert letter.message_id == "LAB^CHU|M2"
    monkeypatch.setattr(hl7_connector, "parse", parse)  # the fix
    replayed = replay_dead_letter(store, letter.id)
    assert (replayed.message_id, replayed.status) == ("LAB^CHU|M2", "loaded")
    assert {f.patient_id for f in replayed.facts} == {"P2"}
    assert dead_letters(store) == [] and store.raw_counts() == {"loaded": 3}
    with FactStore(f"sqlite:///{tmp_path / 'reference.db'}") as ref:
        ingest_hl7(ref, body)
        assert _facts(ref) == _facts(store)
    with pytest.raises(ReplayError, match="no dead letter"):
        replay_dead_letter(store, letter.id)  # replayed already
    assert len(store.raw_versions("hl7v2", "LAB^CHU|M2")) == 1  # the same row, retried


def test_replay_of_a_message_that_still_fails_keeps_it_dead_lettered(store: FactStore) -> None:
    ingest_hl7(store, oru("M1", value="abc") + oru("M2").replace("ORU^R01", ""))
    results = replay_dead_letters(store)
    assert [(r.message_id, r.status) for r in results] == [
        ("LAB^CHU|M1", "partial"),
        ("LAB^CHU|M2", "rejected"),
    ]
    assert [d.message_id for d in dead_letters(store)] == ["LAB^CHU|M1", "LAB^CHU|M2"]
    with pytest.raises(ReplayError):
        replay_dead_letter(store, 10_000)


def test_real_messages_load_as_the_file_ingest_loads_them(
    shared_data: Path, store: FactStore, tmp_path: Path
) -> None:
    """Every HL7 v2 sample of the reference data, posted one body per file, gives the same
    statuses and the same facts as ``vigie ingest`` of the files."""
    files = sorted((shared_data / "hl7v2").rglob("*.hl7"))
    assert len(files) > 50
    statuses: dict[str, int] = {}
    for path in files:
        for result in ingest_hl7(store, path.read_bytes(), document=path.name):
            statuses[result.status] = statuses.get(result.status, 0) + 1
    with FactStore(f"sqlite:///{tmp_path / 'files.db'}") as reference:
        report = ingest(files, reference, fmt="hl7")
        assert statuses == dict(report.total_messages())
        assert _facts(store) == _facts(reference)
        assert store.raw_counts() == reference.raw_counts()
    assert statuses.get("loaded", 0) > 50


# Unmapped codes and units ----------------------------------------------------------------


def _unmapped_oru(control_id: str) -> bytes:
    segments = [
        f"MSH|^~\\&|LAB|CHU|VIGIE|PHARMA|20240102080000||ORU^R01|{control_id}|P|2.5",
        "PID|1||P1^^^H^PI||DOE^JO||19500101|F",
        "OBX|1|NM|99999-9^Made up^LN||6.4|mmol/L|3.5-5.1|H|||F|||202401020800",
        "OBX|2|NM|99999-9^Made up^LN||6.5|mmol/L|3.5-5.1|H|||F|||202401020900",
        "OBX|3|NM|2823-3^Potassium^LN||6.4|furlong|3.5-5.1|H|||F|||202401020800",
    ]
    return ("\r".join(segments) + "\r").encode()


def test_unmapped_codes_and_units_are_warnings_of_a_loaded_message(store: FactStore) -> None:
    """A code no table maps and a unit with no conversion are listed, located, distinct and
    counted; the message stays ``loaded``, without errors."""
    (result,) = ingest_hl7(store, _unmapped_oru("U1"))
    assert (result.status, result.errors) == ("loaded", ())
    summary = result.summary()
    assert summary["unmapped"] == [
        {
            "type": "unmapped_code",
            "kind": "lab",
            "system": "LN",
            "code": "99999-9",
            "unit": None,
            "position": "OBX[1]-3",
            "text": "OBX[1]-3: code '99999-9' is not mapped to a lab or observation concept",
            "count": 2,
        },
        {
            "type": "unknown_unit",
            "kind": "lab",
            "system": "LN",
            "code": "2823-3",
            "unit": "furlong",
            "position": "OBX[3]-6",
            "text": "OBX[3]-6: unit 'furlong' cannot be converted to mmol/L for potassium",
            "count": 1,
        },
    ]
    # a duplicate gives nothing again; a mapped message lists nothing
    (again,) = ingest_hl7(store, _unmapped_oru("U1"))
    assert (again.status, again.summary()["unmapped"]) == ("duplicate", [])
    assert ingest_hl7(store, oru("U2").encode())[0].summary()["unmapped"] == []


def test_an_unmapped_fhir_code_is_located_by_its_resource(store: FactStore) -> None:
    lab = {
        "resourceType": "Observation",
        "id": "o9",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "99999-9"}]},
        "subject": {"reference": "Patient/p9"},
        "effectiveDateTime": "2024-01-02T08:00:00Z",
        "valueQuantity": {"value": 5.9, "unit": "mmol/L"},
    }
    (result,) = ingest_fhir(store, lab)
    assert result.status == "loaded"
    (found,) = result.summary()["unmapped"]
    assert (found["type"], found["kind"], found["code"], found["count"]) == (
        "unmapped_code",
        "lab",
        "99999-9",
        1,
    )
    assert (found["system"], found["position"]) == ("http://loinc.org", "Observation.valueQuantity")
