"""One message the database refuses never poisons its batch: it is dead-lettered, the rest lands.

The store keeps the same limits on SQLite as on PostgreSQL (patient ids of 128 characters,
message and fact ids of 512, no NUL byte in a key), so a message is refused alike on both; any
other database error on one message is caught by retrying the batch message by message.
A dead-lettered message sent again is retried (parsed and stored again), never counted as a
silent duplicate: the report says "rejected" again and the dead letters are not doubled.
"""

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from vigie.connectors import registry
from vigie.ingest import ingest
from vigie.store import FactStore

LONG_PATIENT = "P" * 200
LONG_ID = "M" * 600


@pytest.fixture(autouse=True)
def fake_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.FORMATS, "fake", "tests.fake_connector")


@pytest.fixture
def store(store_url: str) -> Iterator[FactStore]:
    with FactStore(store_url) as opened:
        yield opened


def _feed(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "labs.fake"
    path.write_bytes("\n".join(lines).encode() + b"\n")
    return path


BAD_LINES = [
    "p1;potassium;5.1",
    f"{LONG_PATIENT};potassium;5.2",  # patient id over the column's 128 characters
    f"p3;potassium;5.3#{LONG_ID}",  # message id (HL7 MSH-10) over 512 characters
    "p\x004;sodium;131",  # NUL byte in the patient id: PostgreSQL refuses it
    "p5;sodium;140#ID\x00X",  # NUL byte in the message id
    "p6;sodium;141",
]


def test_refused_messages_are_dead_lettered_and_the_batch_lands(
    tmp_path: Path, store: FactStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = _feed(tmp_path, BAD_LINES)
    report = ingest([path], store, fmt="fake")
    assert report.total_messages() == {"loaded": 2, "rejected": 4}
    assert store.counts()["lab"] == 2
    assert sorted(f.patient_id for f in store.iter_facts()) == ["p1", "p6"]
    assert store.raw_counts() == {"loaded": 2, "rejected": 4}
    letters = store.dead_letters()
    assert [d.position for d in letters] == ["line 2", "line 3", "line 4", "line 5"]
    assert all(d.fatal for d in letters)
    texts = [d.error for d in letters]
    assert "expected a patient id of at most 128 characters, got 200" in texts[0]
    assert "expected a message id of at most 512 characters, got 600" in texts[1]
    assert "expected a patient id without NUL byte" in texts[2]
    assert "expected a message id without NUL byte" in texts[3]
    assert texts == report.errors()
    # nothing lost: the refused messages' bytes are kept, under a stand-in id when theirs is
    # not storable
    assert store.raw_content("fake", "labs.fake:2") == f"{LONG_PATIENT};potassium;5.2".encode()
    # no patient data in the dead letters, the report or the log
    written = "\n".join([*texts, caplog.text])
    assert LONG_PATIENT not in written and "\x00" not in written and "p\\x004" not in written


def test_a_dead_lettered_message_sent_again_is_retried_not_a_duplicate(
    tmp_path: Path, store: FactStore
) -> None:
    path = _feed(tmp_path, BAD_LINES)
    ingest([path], store, fmt="fake")
    again = ingest([path], store, fmt="fake")
    assert again.total_messages() == {"duplicate": 2, "rejected": 4}
    assert len(again.errors()) == 4
    assert len(store.dead_letters()) == 4  # replaced, not doubled
    assert store.raw_counts() == {"loaded": 2, "rejected": 4}


def test_a_rejected_message_retried_after_a_fix_loads(tmp_path: Path, store: FactStore) -> None:
    path = _feed(tmp_path, ["p1;potassium;5.1", "p2;potassium;5.2;extra"])
    assert ingest([path], store, fmt="fake").total_messages() == {"loaded": 1, "rejected": 1}
    path.write_text("p1;potassium;5.1\np2;potassium;5.2#labs.fake:2\n")  # same id, fixed
    assert ingest([path], store, fmt="fake").total_messages() == {"duplicate": 1, "loaded": 1}
    assert store.dead_letters() == []
    assert store.counts()["lab"] == 2


def _refuse_poison(url: str) -> None:
    """A trigger standing for any database error the store's own checks do not foresee."""
    engine = create_engine(url)
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON fact "
                "WHEN NEW.patient_id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END"
            )
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                "IF NEW.patient_id = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_poison BEFORE INSERT ON fact "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
    engine.dispose()


def test_any_database_error_on_one_message_dead_letters_only_it(
    tmp_path: Path, store: FactStore, store_url: str
) -> None:
    _refuse_poison(store_url)
    lines = [f"p{n};potassium;5.{n}" for n in range(1, 6)]
    lines.insert(2, "poison;sodium;140")
    report = ingest([_feed(tmp_path, lines)], store, fmt="fake", batch_size=500)
    assert report.total_messages() == {"loaded": 5, "rejected": 1}
    assert store.counts()["lab"] == 5
    (letter,) = store.dead_letters()
    assert letter.position == "line 3" and letter.fatal
    assert "the store refused the message" in letter.error and "poisoned row" in letter.error
    assert "INSERT" not in letter.error and "parameters" not in letter.error


def test_a_refused_whole_document_message_is_located_at_the_document(
    tmp_path: Path, store: FactStore, store_url: str
) -> None:
    """A FHIR Bundle is one message with no place inside its file: its dead letter names the
    whole document, never no position at all."""
    _refuse_poison(store_url)
    bundle = tmp_path / "poison.json"
    patient = {"resourceType": "Patient", "id": "poison", "gender": "female"}
    bundle.write_text(
        '{"resourceType": "Bundle", "type": "collection", "entry": [{"resource": '
        + json.dumps(patient)
        + "}]}"
    )
    report = ingest([bundle], store, fmt="fhir")
    assert report.total_messages() == {"rejected": 1}
    (letter,) = store.dead_letters()
    assert letter.position == "whole document"
    assert letter.error.startswith("poison.json: message ") and "whole document" in letter.error


def test_the_log_gives_why_a_message_was_refused_never_its_id(
    tmp_path: Path, store: FactStore, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A message id may be a patient's (FHIR ``Patient/<id>``, a PN13 IPP): the log names the
    raw message's row and the reason, the dead letter (in the store) names the message."""
    caplog.set_level(logging.DEBUG)
    _refuse_poison(store_url)
    long_id = "SECRET-IPP-" + "7" * 190  # over 128 characters: refused by the store's check
    documents = tmp_path / "fhir"
    documents.mkdir()
    for name, patient_id in (("long.json", long_id), ("poison.json", "poison")):
        patient = {"resourceType": "Patient", "id": patient_id, "gender": "female"}
        (documents / name).write_text(json.dumps(patient))
    report = ingest([documents], store, fmt="fhir")
    assert report.total_messages() == {"rejected": 2}
    letters = {d.position: d for d in store.dead_letters()}
    # the id the store cannot hold is refused by the connector, located, before the store
    assert "Patient/SECRET-IPP-" in letters["Patient"].error
    assert "expected a patient id of at most 128 characters" in letters["Patient"].error
    assert "Patient/poison" in letters["whole document"].error  # refused by the database
    logged = [r.getMessage() for r in caplog.records if "refused by the store" in r.getMessage()]
    assert len(logged) == 1 and "the store refused the message" in logged[0], caplog.text
    assert "SECRET-IPP" not in caplog.text and "Patient/poison" not in caplog.text
