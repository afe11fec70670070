"""Event time, not arrival, decides (HL7 v2 end to end, through ``ingest`` into the store).

Each case sends real HL7 v2 messages in the wrong order, or a correction, or a withdrawal, and
checks what the store gives the rules afterwards — on SQLite and PostgreSQL. The expected
outcomes come from HL7 v2.5: EVN-2 / MSH-7 say when the sender recorded a message; table 0085
says OBX-11 ``D`` deletes a result and ``W`` posts it as wrong; MSH-10 identifies a message
within its sender (MSH-3/MSH-4), so the same MSH-10 with a new content is a new version.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from vigie.facts import LabResult, Stay
from vigie.ingest import IngestReport, ingest
from vigie.store import FactStore

PID = "PID|1||IPP7^^^CHU^PI||MARTIN^Lea||19480203|F"


def _msh(kind: str, control_id: str, at: str, sender: str = "SIH") -> str:
    return f"MSH|^~\\&|{sender}|CHU|VIGIE|PHARMA|{at}||{kind}|{control_id}|P|2.5"


def _pv1(discharge: str = "") -> str:
    # PV1-19 visit number V77, PV1-44 admission, PV1-45 discharge
    return "PV1|1|I|CARDIO^12^1||||||||||||||||V77" + "|" * 25 + f"20240301080000|{discharge}"


def _obx(value: str, status: str = "F") -> str:
    return f"OBX|1|NM|2823-3^Potassium^LN||{value}|mmol/L|3.5-5.1||||{status}|||20240306074000"


def _orc_obr() -> list[str]:
    return ["ORC|RE|CMD1|ECH1", "OBR|1|CMD1|ECH1|KALIUM^Kaliemie^L|||20240306074000"]


def _message(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode("utf-8")


@pytest.fixture
def store(store_url: str) -> Iterator[FactStore]:
    with FactStore(store_url) as opened:
        yield opened


def _send(store: FactStore, folder: Path, name: str, content: bytes) -> IngestReport:
    path = folder / name
    path.write_bytes(content)
    return ingest([path], store, fmt="hl7")


def _stays(store: FactStore) -> list[Stay]:
    return [fact for fact in store.iter_facts(kinds=["stay"]) if isinstance(fact, Stay)]


def _potassium(store: FactStore) -> list[float | None]:
    return [fact.value for fact in store.iter_facts(kinds=["lab"]) if isinstance(fact, LabResult)]


def test_an_admission_received_after_the_discharge_does_not_reopen_the_stay(
    store: FactStore, tmp_path: Path
) -> None:
    discharge = _message(
        _msh("ADT^A03", "EV2", "20240305101500"),
        "EVN|A03|20240305101500",
        PID,
        _pv1("20240305100000"),
    )
    admission = _message(
        _msh("ADT^A01", "EV1", "20240301080500"), "EVN|A01|20240301080500", PID, _pv1()
    )
    _send(store, tmp_path, "a03.hl7", discharge)
    report = _send(store, tmp_path, "a01.hl7", admission)
    assert report.total_messages() == {"loaded": 1}
    (stay,) = _stays(store)
    assert stay.status == "finished" and stay.discharge_time is not None


def test_in_order_the_discharge_closes_the_stay(store: FactStore, tmp_path: Path) -> None:
    """The control: the same two messages in their own order give the same stay."""
    _send(
        store,
        tmp_path,
        "a01.hl7",
        _message(_msh("ADT^A01", "EV1", "20240301080500"), "EVN|A01|20240301080500", PID, _pv1()),
    )
    assert [stay.status for stay in _stays(store)] == ["in-progress"]
    _send(
        store,
        tmp_path,
        "a03.hl7",
        _message(
            _msh("ADT^A03", "EV2", "20240305101500"),
            "EVN|A03|20240305101500",
            PID,
            _pv1("20240305100000"),
        ),
    )
    assert [stay.status for stay in _stays(store)] == ["finished"]


@pytest.mark.parametrize("status", ["D", "W"])
def test_a_deleted_result_is_retracted_and_the_original_arriving_late_stays_withdrawn(
    store: FactStore, tmp_path: Path, status: str
) -> None:
    result = [PID, *_orc_obr(), _obx("6.4")]
    _send(
        store, tmp_path, "r1.hl7", _message(_msh("ORU^R01", "L1", "20240306081000", "LAB"), *result)
    )
    assert _potassium(store) == [6.4]
    withdrawal = [PID, *_orc_obr(), _obx("", status)]
    report = _send(
        store,
        tmp_path,
        "r2.hl7",
        _message(_msh("ORU^R01", "L2", "20240306093000", "LAB"), *withdrawal),
    )
    assert report.total_messages() == {"loaded": 1} and report.total_retractions() == {"lab": 1}
    assert _potassium(store) == [] and store.retracted_count() == 1
    # the original result re-sent by another route, with its old time: still withdrawn
    _send(
        store,
        tmp_path,
        "r3.hl7",
        _message(_msh("ORU^R01", "L1B", "20240306081000", "LAB"), *result),
    )
    assert _potassium(store) == []


def test_a_later_corrected_result_replaces_the_value(store: FactStore, tmp_path: Path) -> None:
    _send(
        store,
        tmp_path,
        "r1.hl7",
        _message(_msh("ORU^R01", "L1", "20240306081000", "LAB"), PID, *_orc_obr(), _obx("6.4")),
    )
    _send(
        store,
        tmp_path,
        "r2.hl7",
        _message(
            _msh("ORU^R01", "L3", "20240306100000", "LAB"), PID, *_orc_obr(), _obx("4.6", "C")
        ),
    )
    assert _potassium(store) == [4.6]
    # the preliminary sent late (older MSH-7) does not overwrite the correction
    _send(
        store,
        tmp_path,
        "r0.hl7",
        _message(
            _msh("ORU^R01", "L0", "20240306075000", "LAB"), PID, *_orc_obr(), _obx("6.9", "P")
        ),
    )
    assert _potassium(store) == [4.6]


def test_a_new_version_of_a_message_replaces_what_the_old_one_gave(
    store: FactStore, tmp_path: Path
) -> None:
    """The same sender and MSH-10 with another content: the later version applies, the facts
    the first version gave and the second does not are gone, both versions stay readable."""
    two_results = [
        PID,
        *_orc_obr(),
        _obx("6.4"),
        "OBX|2|NM|2951-2^Sodium^LN||128|mmol/L|||||F|||20240306074000",
    ]
    first = _message(_msh("ORU^R01", "L1", "20240306081000", "LAB"), *two_results)
    _send(store, tmp_path, "v1.hl7", first)
    assert sorted(f.concept or "" for f in store.iter_facts(kinds=["lab"])) == [
        "potassium",
        "sodium",
    ]
    second = _message(_msh("ORU^R01", "L1", "20240306090000", "LAB"), PID, *_orc_obr(), _obx("5.0"))
    report = _send(store, tmp_path, "v2.hl7", second)
    assert report.total_corrections() == 1 and report.total_messages() == {"loaded": 1}
    assert [(f.concept, f.value) for f in store.iter_facts(kinds=["lab"])] == [("potassium", 5.0)]
    versions = store.raw_versions("hl7v2", "LAB^CHU|L1")
    assert [v.status for v in versions] == ["superseded", "loaded"]
    assert [v.content for v in versions] == [first, second]


def test_an_older_version_arriving_late_is_kept_without_effect(
    store: FactStore, tmp_path: Path
) -> None:
    newer = _message(_msh("ORU^R01", "L1", "20240306090000", "LAB"), PID, *_orc_obr(), _obx("5.0"))
    older = _message(_msh("ORU^R01", "L1", "20240306081000", "LAB"), PID, *_orc_obr(), _obx("6.4"))
    _send(store, tmp_path, "v2.hl7", newer)
    report = _send(store, tmp_path, "v1.hl7", older)
    assert report.total_messages() == {"superseded": 1} and report.total_corrections() == 1
    assert _potassium(store) == [5.0]
    assert store.raw_content("hl7v2", "LAB^CHU|L1") == newer
    assert [v.status for v in store.raw_versions("hl7v2", "LAB^CHU|L1")] == ["loaded", "superseded"]
    # sent once more, the old version is a duplicate: nothing changes, nothing is re-parsed
    assert _send(store, tmp_path, "v1.hl7", older).total_messages() == {"duplicate": 1}
