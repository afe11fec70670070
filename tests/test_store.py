import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.factories import T0, lab, patient
from vigie.connectors.base import RawMessage
from vigie.facts import LabResult, Retraction, Source
from vigie.store import FactStore, MessageOutcome, RawRecord, SavedBatch, StoreError


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


def _version(value: float, at: datetime | None, fid: str = "k") -> LabResult:
    """A potassium result as a message version recorded at ``at`` gives it."""
    fact = lab("p1", "potassium", value, fid=fid)
    return fact.model_copy(update={"source": fact.source.model_copy(update={"version_time": at})})


def _send(
    store: FactStore, content: bytes, facts: list[LabResult], at: datetime | None
) -> tuple[RawRecord, SavedBatch]:
    """What an ingest does with one message M1: keep it, then save what it gave."""
    (record,) = store.keep_raws([_raw("M1", content)])
    if record.duplicate:
        return record, SavedBatch()
    outcome = MessageOutcome(record.id, "a.hl7", "M1", None, "loaded", facts, [], version_time=at)
    return record, store.save_outcomes([outcome])


def test_raw_messages_are_idempotent(store: FactStore) -> None:
    first, _ = _send(store, b"MSH|1", [_version(5.1, T0)], T0)
    again, saved = _send(store, b"MSH|1", [_version(5.1, T0)], T0)
    assert again.duplicate and again.id == first.id and saved == SavedBatch()
    assert [v.status for v in store.raw_versions("hl7v2", "M1")] == ["loaded"]


def test_a_correction_replaces_what_the_version_it_corrects_gave(store: FactStore) -> None:
    _send(store, b"MSH|1", [_version(5.1, T0), _version(4.0, T0, fid="na")], T0)
    later = T0 + timedelta(hours=1)
    corrected, saved = _send(store, b"MSH|2", [_version(5.6, later)], later)
    assert corrected.replaced and not corrected.duplicate and not saved.superseded
    # the fact the correction no longer gives is gone, the other has the corrected value
    assert [(f.fact_id, f.value) for f in store.iter_facts()] == [("k", 5.6)]
    versions = store.raw_versions("hl7v2", "M1")  # history: both versions kept
    assert [(v.content, v.status) for v in versions] == [
        (b"MSH|1", "superseded"),
        (b"MSH|2", "loaded"),
    ]
    assert store.raw_content("hl7v2", "M1") == b"MSH|2"


def test_an_older_version_arriving_late_is_history_only(store: FactStore) -> None:
    later = T0 + timedelta(hours=1)
    _send(store, b"MSH|2", [_version(5.6, later)], later)
    old, saved = _send(store, b"MSH|1", [_version(5.1, T0), _version(4.0, T0, fid="na")], T0)
    assert saved.superseded == {old.id}
    assert [(f.fact_id, f.value) for f in store.iter_facts()] == [("k", 5.6)]
    assert store.raw_content("hl7v2", "M1") == b"MSH|2"
    assert [v.status for v in store.raw_versions("hl7v2", "M1")] == ["loaded", "superseded"]
    again, _ = _send(store, b"MSH|1", [], T0)  # sent once more: a duplicate, not a retry
    assert again.duplicate


def test_without_sender_times_the_later_arrival_wins(store: FactStore) -> None:
    _send(store, b"MSH|1", [_version(5.1, None)], None)
    _send(store, b"MSH|2", [_version(5.6, None)], None)
    assert [f.value for f in store.iter_facts()] == [5.6]


def test_a_fact_keeps_its_latest_version_whatever_the_message(store: FactStore) -> None:
    """Two different messages give one fact: the later sender time wins, not the arrival."""
    later = T0 + timedelta(hours=2)
    with store.session() as session:
        newer = store.record_raw(session, _raw("ORU2"))
        store.save_facts(session, [_version(6.1, later)], newer.id)
        older = store.record_raw(session, _raw("ORU1"))
        store.save_facts(session, [_version(5.0, T0)], older.id)
        session.commit()
    assert [f.value for f in store.iter_facts()] == [6.1]


def test_a_retraction_withdraws_a_fact_and_an_older_version_does_not_bring_it_back(
    store: FactStore,
) -> None:
    later = T0 + timedelta(hours=1)
    withdrawn = Retraction(
        kind="lab",
        fact_id="k",
        patient_id="p1",
        source=Source(feed="hl7v2", document="a.hl7", version_time=later),
    )
    with store.session() as session:
        raw = store.record_raw(session, _raw("ORU1"))
        store.save_facts(session, [_version(5.1, T0)], raw.id)
        store.retract(session, [(withdrawn, raw.id)])
        store.save_facts(session, [_version(5.1, T0)], raw.id)  # the original, re-sent late
        session.commit()
    assert list(store.iter_facts()) == []
    assert store.counts()["lab"] == 0 and store.retracted_count() == 1
    with store.session() as session:  # a later version of the fact stands again
        store.save_facts(session, [_version(5.3, later + timedelta(hours=1))], raw.id)
        session.commit()
    assert [f.value for f in store.iter_facts()] == [5.3]


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


def test_a_store_from_before_message_versions_is_refused_clearly(tmp_path: Path) -> None:
    """A store made by an earlier Vigie (fact rows without version time) is not written into:
    its facts could not be ordered; the error says what to do."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE fact (kind VARCHAR(32), fact_id VARCHAR(512), patient_id VARCHAR(128),"
            " raw_message_id INTEGER, payload JSON, PRIMARY KEY (kind, fact_id))"
        )
    with pytest.raises(StoreError, match=r"earlier Vigie .*schema 1, expected 2.*new store"):
        FactStore(f"sqlite:///{path}")


def test_a_new_store_records_its_schema_version(store_url: str) -> None:
    FactStore(store_url).close()
    with FactStore(store_url) as reopened:  # opened again: the recorded version is checked
        assert reopened.counts()["lab"] == 0


def test_recovery_claims_unfinished_messages_within_a_byte_bound(store_url: str) -> None:
    """Messages a closed run kept but never finished are claimed oldest first, no more raw
    bytes at once than an ingest batch holds (the first one whatever its size)."""
    with FactStore(store_url) as first:
        first.keep_raws([_raw(f"M{n}", b"x" * 100) for n in range(10)])
    with FactStore(store_url) as second:
        claimed = second.claim_unfinished(limit=500, max_bytes=250)
        assert [raw.message_id for raw in claimed] == ["M0", "M1"]
        assert len(second.claim_unfinished(limit=3, max_bytes=None)) == 3
    with FactStore(store_url) as third:  # one message over the bound is still taken, alone
        assert len(third.claim_unfinished(limit=500, max_bytes=10)) == 1


def test_many_messages_with_one_outcome_all_get_it(store: FactStore) -> None:
    """Statuses of a batch where most messages share theirs (written by group) and a few
    differ (written one by one): each message gets its own."""
    records = store.keep_raws([_raw(f"N{n}", f"MSH|{n}".encode()) for n in range(45)])
    at = T0 + timedelta(days=1)
    outcomes = [
        MessageOutcome(
            r.id,
            "a.hl7",
            f"N{n}",
            None,
            "loaded",
            [_version(5.0, at, f"k{n}")],
            version_time=at if n < 40 else None,
        )
        for n, r in enumerate(records)
    ]
    outcomes[3] = replace(outcomes[3], status="partial", errors=[("bad OBX", "OBX[2]-5", False)])
    store.save_outcomes(outcomes)
    statuses = {n: store.raw_versions("hl7v2", f"N{n}")[0] for n in range(45)}
    assert [n for n, v in statuses.items() if v.status != "loaded"] == [3]
    assert {statuses[n].version_time for n in range(40)} == {at}
    assert {statuses[n].version_time for n in range(40, 45)} == {None}
    assert store.raw_counts() == {"loaded": 44, "partial": 1}


@pytest.mark.postgres
def test_a_batch_written_as_arrays_gives_the_rows_written_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On PostgreSQL a batch's facts and statuses are written as one statement of arrays each
    (``_upsert_arrays``, ``_outcomes_arrays``): the rows, to the payloads' text, are those the
    statement per row writes; quotes, backslashes, non-ASCII text, unknown times, a
    retraction and a dead letter included."""
    from tests.conftest import postgres_schema

    def batch(store: FactStore) -> tuple[object, ...]:
        records = store.keep_raws([_raw(f"N{n}", f"MSH|{n}".encode()) for n in range(4)])
        at = T0 + timedelta(days=1)
        odd = lab('p"1\\', "potassium", 5.0, unit='mmol"\\/L é', fid='k"\\1')
        withdrawn = Retraction(
            kind="lab", fact_id="k2", patient_id="p1", source=_version(5.1, at).source
        )
        outcomes = [
            MessageOutcome(
                records[0].id,
                "a.hl7",
                "N0",
                None,
                "loaded",
                [patient("p1"), odd, _version(5.1, at, "k2")],
                version_time=at,
            ),
            MessageOutcome(records[1].id, "a.hl7", "N1", None, "loaded", [_version(5.2, None)]),
            MessageOutcome(
                records[2].id,
                "a.hl7",
                "N2",
                None,
                "partial",
                [_version(5.3, at, "k4")],
                [("bad OBX", "OBX[2]-5", False)],
            ),
            MessageOutcome(records[3].id, "a.hl7", "N3", None, "loaded", retractions=[withdrawn]),
        ]
        store.save_outcomes(outcomes)
        with store.engine.connect() as connection:
            facts = connection.exec_driver_sql(
                "SELECT kind, fact_id, patient_id, raw_message_id, payload::text, version_time, "
                "retracted FROM fact ORDER BY kind, fact_id"
            ).all()
            raws = connection.exec_driver_sql(
                "SELECT id, status, fact_count, version_time FROM raw_message ORDER BY id"
            ).all()
        return facts, raws, store.dead_letters()

    with postgres_schema() as arrays_url, postgres_schema() as rows_url:
        with FactStore(arrays_url) as store:
            as_arrays = batch(store)
        monkeypatch.setattr(FactStore, "_arrays", lambda self: False)
        with FactStore(rows_url) as store:
            one_by_one = batch(store)
    assert as_arrays == one_by_one
    facts, raws, letters = as_arrays
    assert len(facts) == 5 and [row[1] for row in raws] == ["loaded", "loaded", "partial", "loaded"]
    assert [letter.position for letter in letters] == ["OBX[2]-5"]


def test_a_batch_mixing_sender_times_with_and_without_offset_is_stored(store: FactStore) -> None:
    """A batch whose facts and messages carry times with and without an offset is stored (on
    PostgreSQL a list of both could not be sent as one array: written row by row)."""
    records = store.keep_raws([_raw(f"T{n}", f"MSH|{n}".encode()) for n in range(2)])
    aware = datetime(2024, 1, 1, 10, tzinfo=UTC)
    outcomes = [
        MessageOutcome(
            record.id,
            "a.hl7",
            f"T{n}",
            None,
            "loaded",
            [_version(5.0 + n, at, f"t{n}")],
            [],
            (),
            at,
        )
        for n, (record, at) in enumerate(zip(records, [T0, aware], strict=True))
    ]
    assert store.save_outcomes(outcomes) == SavedBatch()
    assert sorted(f.fact_id for f in store.iter_facts()) == ["t0", "t1"]
    assert store.raw_counts() == {"loaded": 2}


@pytest.mark.postgres
def test_new_messages_are_kept_on_a_held_connection_reopened_after_a_failure() -> None:
    """On PostgreSQL new raw messages are kept on one driver connection held for it (an MLLP
    sender waits for each such commit): the same connection from one keep to the next; one
    that broke is a ``StoreError`` naming what failed, nothing kept, and the next keep opens
    another; closing the store closes it."""
    from tests.conftest import postgres_schema

    with postgres_schema() as url, FactStore(url) as store:
        (first,) = store.keep_raws([_raw("M1")])
        held = store._keeper
        assert held is not None and not held.closed
        (second,) = store.keep_raws([_raw("M2")])
        assert store._keeper is held and second.id != first.id
        held.close()  # the server went away, say
        with pytest.raises(StoreError, match=r"cannot keep the raw messages in .*: "):
            store.keep_raws([_raw("M3")])
        assert store.raw_counts() == {"received": 2}
        (third,) = store.keep_raws([_raw("M3")])
        assert not third.duplicate and store._keeper is not None and store._keeper is not held
        assert store.raw_counts() == {"received": 3}
        reopened = store._keeper
    assert reopened.closed
