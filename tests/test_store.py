from collections.abc import Iterator
from datetime import timedelta

import pytest

from tests.factories import T0, lab, patient
from vigie.connectors.base import RawMessage
from vigie.store import FactStore, StoreError


def _raw(message_id: str, content: bytes = b"MSH|...") -> RawMessage:
    return RawMessage(feed="hl7v2", document="a.hl7", content=content, message_id=message_id)


@pytest.fixture
def store(store_url: str) -> Iterator[FactStore]:
    with FactStore(store_url) as opened:
        yield opened


def test_facts_round_trip_and_replace_by_id(store: FactStore) -> None:
    facts = [
        patient("p1"),
        lab("p1", "potassium", 5.1),
        lab("p1", "potassium", 6.2, time=T0 + timedelta(hours=6)),
    ]
    with store.session() as session:
        raw = store.record_raw(session, _raw("M1"))
        store.save_facts(session, facts, raw.id)
        store.save_facts(session, [lab("p1", "potassium", 5.3)], raw.id)  # same id as the first
        session.commit()
    loaded = list(store.iter_facts())
    assert sorted(f.fact_id for f in loaded) == sorted(f.fact_id for f in facts)
    values = sorted(f.value for f in store.iter_facts(kinds=["lab"]))
    assert values == [5.3, 6.2]
    assert store.counts()["lab"] == 2
    assert list(store.iter_facts(patient_id="nobody")) == []


def test_raw_messages_are_idempotent_and_corrections_replace(store: FactStore) -> None:
    with store.session() as session:
        first = store.record_raw(session, _raw("M1"))
        store.save_facts(session, [lab("p1", "potassium", 5.1, fid="k")], first.id)
        store.record_errors(session, first.id, [("bad OBX", "OBX[2]-5", False)])
        store.mark(session, first.id, "loaded", 1)
        again = store.record_raw(session, _raw("M1"))
        assert again.duplicate and again.id == first.id
        corrected = store.record_raw(session, _raw("M1", b"MSH|corrected"))
        assert corrected.replaced and not corrected.duplicate
        session.commit()
    # the correction dropped what the first version gave
    assert store.counts()["lab"] == 0
    assert store.dead_letters() == []
    assert store.raw_content("hl7v2", "M1") == b"MSH|corrected"


def test_dead_letters_keep_message_and_position(store: FactStore) -> None:
    with store.session() as session:
        raw = store.record_raw(session, _raw("BAD"))
        store.record_errors(session, raw.id, [("a.hl7: PID-7: expected a date", "PID-7", True)])
        store.mark(session, raw.id, "rejected", 0)
        session.commit()
    (letter,) = store.dead_letters()
    assert (letter.message_id, letter.position, letter.fatal) == ("BAD", "PID-7", True)
    assert store.raw_counts() == {"rejected": 1}


def test_bad_url_is_a_store_error_without_password() -> None:
    with pytest.raises(StoreError) as caught:
        FactStore("postgresql+psycopg://u:secret@127.0.0.1:1/nowhere")
    assert "secret" not in str(caught.value)


def test_sparse_patient_record_does_not_erase_demographics(store: FactStore) -> None:
    from vigie.facts import Sex

    full = patient("p1")
    sparse = full.model_copy(update={"birth_date": None, "sex": Sex.UNKNOWN})
    with store.session() as session:
        raw = store.record_raw(session, _raw("ADT1"))
        store.save_facts(session, [full], raw.id)
        session.commit()
        later = store.record_raw(session, _raw("ORU1"))
        store.save_facts(session, [sparse], later.id)
        session.commit()
    (stored,) = store.iter_facts(kinds=["patient"])
    assert (stored.birth_date, stored.sex) == (full.birth_date, full.sex)
