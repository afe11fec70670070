"""Concurrency: two ingests at once into the same store lose nothing and give the facts of a
sequential run.

Two real processes are started together on one store (a SQLite file; PostgreSQL in a fresh
schema, so that both also race to create the tables): `vigie ingest` itself (batches of 500),
and a child calling ``ingest`` with small batches, so that the two interleave many times. Either
both read the same file (every message is then met by both: it must be stored once, loaded by
one process and a duplicate for the other), or each reads its own file, the messages of one
hospital split by patient, so that both write the same tables at once but each fact comes from
one file only and the sequential result does not depend on which file goes first. Races depend
on timing: each case runs several rounds.

Expected values come from a sequential ingest of the same files into a fresh store: the same
facts, JSON for JSON, by (kind, fact id), every message `loaded`, no dead letter, each process
ending with exit code 0 and nothing on its error output (no traceback, no StoreError).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from tests.conftest import POSTGRES_URL
from vigie.connectors.base import RawMessage
from vigie.ingest import ingest
from vigie.store import FactStore, MessageOutcome, RawRecord
from vigie.synthetic import generate

ROUNDS = 3
SMALL_BATCH = 40
CHILD = (
    "import sys; from pathlib import Path; from vigie.ingest import ingest; "
    "from vigie.store import FactStore; store = FactStore(sys.argv[1]); "
    f"report = ingest([Path(sys.argv[2])], store, batch_size={SMALL_BATCH}); store.close(); "
    "print('Messages:', ', '.join(f'{k} {v}' for k, v in report.total_messages().items()))"
)
PATIENT = re.compile(rb"\rPID\|[^|\r]*\|[^|\r]*\|([^|^\r]*)")


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (feed,) = generate(60, 3, 11, "hl7", tmp_path_factory.mktemp("hospital")).feed_files
    return feed


@pytest.fixture(scope="module")
def split(hospital: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The hospital's messages in two files, each patient's messages (in their order) in one."""
    messages = hospital.read_bytes().split(b"\rMSH|")
    messages = [messages[0], *(b"MSH|" + message for message in messages[1:])]
    patients = sorted({_patient(message) for message in messages})
    first = set(patients[::2])
    folder = tmp_path_factory.mktemp("split")
    paths = folder / "first.hl7", folder / "second.hl7"
    for path, keep in zip(paths, (True, False), strict=True):
        chosen = [m for m in messages if (_patient(m) in first) == keep]
        assert chosen, "each file must hold messages"
        path.write_bytes(b"\r".join(message.rstrip(b"\r") for message in chosen) + b"\r")
    return paths


def _patient(message: bytes) -> bytes:
    found = PATIENT.search(message)
    assert found is not None, "every message of the synthetic hospital names its patient"
    return found.group(1)


def _facts(store: FactStore) -> dict[tuple[str, str], dict[str, Any]]:
    return {(f.kind, f.fact_id): f.model_dump(mode="json") for f in store.iter_facts()}


def _sequential(files: list[Path], folder: Path) -> tuple[dict[Any, Any], int]:
    """The facts and the number of messages of a one-process ingest, one file after the other."""
    with FactStore(f"sqlite:///{folder / 'sequential.db'}") as store:
        for file in files:
            ingest([file], store)
        counts = store.raw_counts()
        assert set(counts) == {"loaded"}, "the reference hospital loads without error"
        return _facts(store), counts["loaded"]


def _command(runner: str, url: str, file: Path) -> list[str]:
    if runner == "cli":
        return [sys.executable, "-m", "vigie.api.cli", "ingest", str(file)]
    return [sys.executable, "-c", CHILD, url, str(file)]


def _messages(output: str) -> Counter[str]:
    """The message counts a process printed (`Messages: duplicate 3, loaded 858`)."""
    (line,) = [line for line in output.splitlines() if line.startswith("Messages:")]
    counts = Counter[str]()
    for part in line.removeprefix("Messages:").split(","):
        status, number = part.split()
        counts[status] = int(number.replace(",", ""))
    return counts


def _ingest_together(runner: str, url: str, files: tuple[Path, Path]) -> list[Counter[str]]:
    """Start two ingests at once, wait for both; each one's message counts."""
    env = {**os.environ, "VIGIE_TIMEZONE": "UTC", "VIGIE_DATABASE_URL": url}
    children = [
        subprocess.Popen(
            _command(runner, url, file), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for file in files
    ]
    outputs = [child.communicate(timeout=300) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert (child.returncode, err.decode()) == (0, ""), out.decode()
    return [_messages(out.decode()) for out, _ in outputs]


def _check_rounds(
    runner: str, urls: list[str], files: tuple[Path, Path], tmp_path: Path, same_file: bool
) -> None:
    expected, total = _sequential(sorted(set(files)), tmp_path)
    for url in urls:
        counts = _ingest_together(runner, url, files)
        with FactStore(url) as store:
            assert _facts(store) == expected
            assert store.raw_counts() == {"loaded": total}
            assert store.dead_letters() == []
        loaded = sum(count["loaded"] for count in counts)
        assert loaded == total, "each message is stored by one process only"
        if same_file:
            assert all(sum(count.values()) == total for count in counts)
            assert sum(count["duplicate"] for count in counts) == total


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[str]]:
    """One fresh store per round: SQLite files, or PostgreSQL schemas (dropped afterwards)."""
    if request.param == "sqlite":
        yield [f"sqlite:///{tmp_path / f'round{n}.db'}" for n in range(ROUNDS)]
        return
    schemas = [f"vigie_test_{os.getpid()}_{os.urandom(3).hex()}" for _ in range(ROUNDS)]
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        for schema in schemas:
            connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield [f"{POSTGRES_URL}?options=-csearch_path%3D{schema}" for schema in schemas]
    with admin.begin() as connection:
        for schema in schemas:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["cli", "small-batches"])
def test_two_ingests_of_the_same_file_at_once(
    runner: str, stores: list[str], hospital: Path, tmp_path: Path
) -> None:
    _check_rounds(runner, stores, (hospital, hospital), tmp_path, same_file=True)


@pytest.mark.slow
@pytest.mark.parametrize("runner", ["cli", "small-batches"])
def test_two_ingests_of_different_files_at_once(
    runner: str, stores: list[str], split: tuple[Path, Path], tmp_path: Path
) -> None:
    _check_rounds(runner, stores, split, tmp_path, same_file=False)


# In one process, step by step: two stores opened on one database are two ingest runs.


def _message(message_id: str) -> RawMessage:
    content = (
        f"MSH|^~\\&|LAB|H|VIGIE|H|20240101120000||ORU^R01|{message_id}|P|2.5\r"
        "PID|1||P1^^^H^PI||DOE^JANE||19500101|F\r"
    ).encode()
    return RawMessage("hl7v2", "a.hl7", content, message_id)


def _outcome(record: RawRecord, raw: RawMessage) -> MessageOutcome:
    return MessageOutcome(record.id, raw.document, raw.message_id, raw.position, "ignored")


def test_recovery_leaves_a_live_ingest_its_messages(store_url: str) -> None:
    raws = [_message("M1"), _message("M2")]
    with FactStore(store_url) as first, FactStore(store_url) as second:
        first.keep_raws(raws)  # kept, being parsed by the first run
        assert second.claim_unfinished() == []
        assert [raw.message_id for raw in first.unfinished()] == ["M1", "M2"]
        first.close()  # over before storing what they gave: the second run takes them
        assert [raw.message_id for raw in second.claim_unfinished()] == ["M1", "M2"]


@pytest.mark.postgres
def test_a_closed_run_is_over_before_the_server_sees_its_connection_go(postgres_url: str) -> None:
    # PostgreSQL releases a session's locks when its backend ends, a moment after the client
    # closed the connection (longer on a loaded server): the run must release its own lock,
    # not leave another store to find it alive meanwhile. Here the connection stays open.
    with FactStore(postgres_url) as first, FactStore(postgres_url) as second:
        first.keep_raws([_message("M1")])
        connection = first._run_connection
        assert connection is not None
        invalidate, close = connection.invalidate, connection.close  # closed at the end
        connection.invalidate = connection.close = lambda *args: None  # type: ignore[method-assign,assignment]
        try:
            first.close()
            assert [raw.message_id for raw in second.claim_unfinished()] == ["M1"]
        finally:
            invalidate()
            close()


def test_a_message_another_ingest_is_parsing_is_waited_for_then_a_duplicate(
    store_url: str,
) -> None:
    raw = _message("M1")
    with FactStore(store_url) as first, FactStore(store_url) as second:
        (kept,) = first.keep_raws([raw])
        waiting = threading.Event()
        looked = second._kept_elsewhere

        def look(*args: Any) -> bool:
            found = looked(*args)
            if found:
                waiting.set()
            return found

        second._kept_elsewhere = look  # type: ignore[method-assign]
        records: list[RawRecord] = []
        thread = threading.Thread(target=lambda: records.extend(second.keep_raws([raw])))
        thread.start()
        assert waiting.wait(timeout=60), "the second ingest did not see the first one's message"
        first.save_outcomes([_outcome(kept, raw)])
        thread.join(timeout=60)
        assert [(record.id, record.duplicate) for record in records] == [(kept.id, True)]
        assert first.raw_counts() == {"ignored": 1}


def test_a_late_outcome_of_a_message_taken_over_is_not_stored(store_url: str) -> None:
    raw = _message("M1")
    with FactStore(store_url) as first, FactStore(store_url) as second:
        (kept,) = first.keep_raws([raw])
        second._live_runs = lambda session, runs: set()  # type: ignore[method-assign]
        (claimed,) = second.claim_unfinished()  # the first run taken for killed
        late = replace(_outcome(kept, raw), errors=[("late", None, False)], status="partial")
        first.save_outcomes([late])
        assert first.raw_counts() == {"received": 1} and first.dead_letters() == []
        second.save_outcomes([_outcome(kept, raw)])
        assert (claimed.id, second.raw_counts()) == (kept.id, {"ignored": 1})


def test_a_batch_of_new_messages_is_kept_in_its_order(store_url: str) -> None:
    """Messages the store does not know (on PostgreSQL, kept by one statement): each gets a
    row of its own, numbered in the batch's order, the order a recovery parses them in."""
    raws = [_message(f"M{number}") for number in (3, 1, 2)]
    with FactStore(store_url) as store:
        records = store.keep_raws(raws)
        assert [(record.duplicate, record.replaced) for record in records] == [(False, False)] * 3
        assert [record.id for record in records] == sorted(record.id for record in records)
        assert [raw.message_id for raw in store.unfinished()] == ["M3", "M1", "M2"]


def test_a_batch_mixing_new_and_known_messages_gives_each_its_record(store_url: str) -> None:
    """One message of the batch is known and done: it is a duplicate under its first row, the
    new ones are kept, each record in the batch's place (on PostgreSQL the batch leaves the
    one-statement keep of new messages for the comparing one)."""
    with FactStore(store_url) as store:
        (first,) = store.keep_raws([_message("M1")])
        store.save_outcomes([_outcome(first, _message("M1"))])
        records = store.keep_raws([_message("M0"), _message("M1"), _message("M2")])
        assert [(record.duplicate, record.replaced) for record in records] == [
            (False, False),
            (True, False),
            (False, False),
        ]
        assert records[1].id == first.id
        assert [raw.message_id for raw in store.unfinished()] == ["M0", "M2"]


def test_a_new_version_beside_new_messages_is_kept_as_a_correction(store_url: str) -> None:
    with FactStore(store_url) as store:
        (first,) = store.keep_raws([_message("M1")])
        store.save_outcomes([_outcome(first, _message("M1"))])
        corrected = replace(_message("M1"), content=_message("M1").content + b"NTE|1||new\r")
        records = store.keep_raws([_message("M2"), corrected])
        assert [(record.duplicate, record.replaced) for record in records] == [
            (False, False),
            (False, True),
        ]
        assert len(store.raw_versions("hl7v2", "M1")) == 2


def test_a_batch_larger_than_one_statement_takes_is_kept_whole(store_url: str) -> None:
    """Past 500 messages (PostgreSQL takes 65,535 parameters a statement, a message 11) the
    batch is kept by the comparing path: every message kept once, in order."""
    raws = [_message(f"M{number}") for number in range(501)]
    with FactStore(store_url) as store:
        records = store.keep_raws(raws)
        assert not any(record.duplicate for record in records)
        assert [record.id for record in records] == sorted({record.id for record in records})
        assert store.raw_counts() == {"received": 501}
