"""The MLLP listener over real TCP sockets: ACK after the raw message is committed, AE/AR with
the reason, framing across reads, duplicates stored once, and a listener killed mid-stream;
with the parse in a worker process and in a thread of the listener (``ParserPlace``), and the
worker's own life: killed, stopped, left by a killed listener."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from vigie.ingest import ingest, recover
from vigie.ingest.messages import dead_letters, ingest_hl7, replay_dead_letter
from vigie.ingest.mllp import (
    Acknowledgement,
    FrameReader,
    MllpServer,
    MllpThread,
    Oversized,
    ParserPlace,
    build_ack,
    frame,
    start_mllp_thread,
)
from vigie.store import FactStore, ServiceError, ServiceStore, StoreError
from vigie.store.concurrency import process_start
from vigie.store.database import RawMessageRow


def oru(control_id: str, patient: str = "P1", value: str = "5.9") -> bytes:
    return (
        f"MSH|^~\\&|LAB|CHU|VIGIE|PHARMA|20240102080000||ORU^R01^ORU_R01|{control_id}|P|2.5\r"
        f"PID|1||{patient}^^^H^PI||DOE^JO||19500101|F\r"
        f"OBX|1|NM|2823-3^Potassium^LN||{value}|mmol/L|3.5-5.1|H|||F|||202401020800\r"
    ).encode()


class Client:
    """A sender: writes bytes, reads ACK frames."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.frames = FrameReader()
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def acks(self, count: int) -> list[dict[str, list[str]]]:
        while len(self.pending) < count:
            data = self.socket.recv(65536)
            if not data:
                raise ConnectionError(f"closed after {len(self.pending)} ACKs of {count}")
            self.pending += [f for f in self.frames.feed(data) if isinstance(f, bytes)]
        got, self.pending = self.pending[:count], self.pending[count:]
        return [_segments(ack) for ack in got]

    def close(self) -> None:
        self.socket.close()


def _segments(ack: bytes) -> dict[str, list[str]]:
    separator = chr(ack[3])
    lines = [line for line in ack.decode("utf-8").split("\r") if line]
    return {line[:3]: line.split(separator) for line in lines}


@pytest.fixture
def store(store_url: str) -> Iterator[FactStore]:
    with FactStore(store_url) as opened:
        yield opened


@pytest.fixture(params=["process", "thread"])
def parser(request: pytest.FixtureRequest) -> ParserPlace:
    """Where the listener parses: each test that parses runs with both."""
    place: ParserPlace = request.param
    return place


@pytest.fixture
def listener(store: FactStore, parser: ParserPlace) -> Iterator[MllpThread]:
    with start_mllp_thread(store, parser=parser) as running:
        yield running


@pytest.fixture
def client(listener: MllpThread) -> Iterator[Client]:
    sender = Client(listener.port)
    yield sender
    sender.close()


def _wait_parsed(store: FactStore, count: int) -> None:
    """Parsing follows the ACK: wait until at least ``count`` messages are kept and none is
    left unparsed (every raw version is kept before its ACK, so after the ACKs the rows are
    all there; a message sent in two versions is two rows for one control id)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        counts = store.raw_counts()
        if sum(counts.values()) >= count and not counts.get("received", 0):
            return
        time.sleep(0.02)
    raise AssertionError(f"not parsed: {store.raw_counts()}")


# Framing and ACKs, no socket ------------------------------------------------------------------


def test_frames_across_reads_with_garbage_and_cut_frames() -> None:
    reader = FrameReader(max_frame=100)
    stream = b"junk\x0bMSH|A\x1c\r\r\n\x0bMSH|B\x1c\rmore\x0bMSH|cut\x0bMSH|C\x1c\x0bMSH|D\x1c\r"
    frames = [found for byte in stream for found in reader.feed(bytes([byte]))]
    assert frames == [b"MSH|A", b"MSH|B", b"MSH|C", b"MSH|D"]  # a lone 0x1C ends a frame too
    assert reader.dropped == len(b"junk") + len(b"\r\n") + len(b"more") + len(b"MSH|cut")
    assert reader.feed(b"\x0b" + b"x" * 150)[:1] == [] and reader.partial
    assert reader.feed(b"y\x1c\r\x0bMSH|E\x1c\r") == [Oversized(151), b"MSH|E"]


def test_ack_takes_the_incoming_separators_and_control_id() -> None:
    message = b"MSH#$%\\&#LAB#CHU#VIGIE#PH#2024##ADT$A01$ADT_A01#C-77#T#2.3\rPID#1\r"
    ack = build_ack(message, Acknowledgement("AE", "bad #1 $x", "PID[1]-3"), "latin-1")
    msh, msa, err = ack.split(b"\r")[:3]
    assert msh.split(b"#")[1:12] == [
        b"$%\\&",
        b"VIGIE",
        b"PH",
        b"LAB",
        b"CHU",
        msh.split(b"#")[6],
        b"",
        b"ACK$A01$ACK",
        msh.split(b"#")[9],
        b"T",
        b"2.3",
    ]
    assert msa == b"MSA#AE#C-77#bad \\F\\1 \\S\\x"
    assert err.split(b"#")[2:5] == [b"PID$1$3", b"207$Application internal error$HL70357", b"E"]


# Over TCP ------------------------------------------------------------------------------------


def test_a_message_is_acknowledged_once_stored(store: FactStore, client: Client) -> None:
    client.send(frame(oru("M1")))
    (ack,) = client.acks(1)
    assert ack["MSA"][1:3] == ["AA", "M1"]
    assert ack["MSH"][8] == "ACK^R01^ACK" and ack["MSH"][2:6] == ["VIGIE", "PHARMA", "LAB", "CHU"]
    assert "ERR" not in ack
    assert store.raw_content("hl7v2", "LAB^CHU|M1") == oru("M1")  # committed before the ACK
    _wait_parsed(store, 1)
    assert store.raw_counts() == {"loaded": 1} and store.counts()["lab"] == 1


def test_several_messages_in_one_write_and_one_over_many(
    store: FactStore, listener: MllpThread, client: Client
) -> None:
    client.send(b"".join(frame(oru(f"M{i}", f"P{i}")) for i in range(5)))
    assert [ack["MSA"][2] for ack in client.acks(5)] == [f"M{i}" for i in range(5)]
    whole = b"noise" + frame(oru("M9", "P9"))
    for start in range(0, len(whole), 7):
        client.send(whole[start : start + 7])
        time.sleep(0.002)
    (ack,) = client.acks(1)
    assert ack["MSA"][1:3] == ["AA", "M9"]
    _wait_parsed(store, 6)
    assert store.counts()["lab"] == 6
    client.close()
    listener.stop()
    assert listener.server is not None and listener.server.stats.dropped_bytes == len(b"noise")


def test_broken_messages_get_ae_or_ar_and_the_rest_goes_on(
    store: FactStore, client: Client
) -> None:
    no_type = oru("M2").replace(b"ORU^R01^ORU_R01", b"")
    batch = [oru("M1"), no_type, b"not HL7 at all", oru("M4", "P4"), oru("M5", value="abc")]
    client.send(b"".join(map(frame, batch)))
    acks = client.acks(5)
    assert [ack["MSA"][1] for ack in acks] == ["AA", "AE", "AR", "AA", "AA"]
    assert acks[1]["MSA"][2] == "M2" and "MSH-9: expected a message type" in acks[1]["MSA"][3]
    # HL7 table 0357: an empty MSH-9 is a required field missing (101), not a data type error
    assert acks[1]["ERR"][2] == "MSH^1^9" and acks[1]["ERR"][3].startswith("101^")
    assert "expected an HL7 v2 message starting with an MSH segment" in acks[2]["ERR"][8]
    _wait_parsed(store, 5)
    # A bad OBX-5 in a readable message: acknowledged (stored), then dead-lettered, located.
    assert store.raw_counts() == {"loaded": 2, "rejected": 2, "partial": 1}
    assert [(d.position, d.fatal) for d in dead_letters(store)] == [
        ("MSH-9", True),
        ("segment 1", True),
        ("OBX[1]-5", False),
    ]


def _no_control_id(patient: str) -> bytes:
    return (
        b"MSH|^~\\&|LAB|CHU|VIGIE|PHARMA|20261205103000||ORU^R01||P|2.5\r"
        b"PID|1||" + patient.encode() + b"^^^H^PI||DOE^JO||19500101|F\r"
        b"OBR|1||LAB9|2823-3^Potassium^LN|||202612051000\r"
        b"OBX|1|NM|2823-3^Potassium^LN||5.9|mmol/L|3.5-5.1|H|||F|||202612051000\r"
    )


def test_a_message_without_a_control_id_gets_ae_and_is_dead_lettered(
    store: FactStore, client: Client
) -> None:
    no_control_id = _no_control_id("P9")
    # Sent twice (the second a duplicate of the first: refused again, stored once), then M3
    client.send(frame(no_control_id) + frame(no_control_id) + frame(oru("M3")))
    acks = client.acks(3)
    assert [ack["MSA"][1] for ack in acks] == ["AE", "AE", "AA"]
    for ack in acks[:2]:
        assert ack["MSA"][2] == "" and "MSH-10: expected a message control id" in ack["MSA"][3]
        # HL7 table 0357: 101 Required field missing, at MSH-10
        assert ack["ERR"][2] == "MSH^1^10" and ack["ERR"][3].startswith("101^Required field")
    _wait_parsed(store, 2)
    assert store.raw_counts() == {"rejected": 1, "loaded": 1}  # kept, no fact from it
    assert [(d.position, d.fatal) for d in dead_letters(store)] == [("MSH-10", True)]


def test_replaying_a_message_without_a_control_id_refuses_it_again(
    store: FactStore, client: Client, tmp_path: Path
) -> None:
    """A dead letter remembers its transport (its document ``mllp://peer``): replayed, a
    message the listener refused for want of MSH-10 is refused again, not loaded."""
    client.send(frame(_no_control_id("P9")))
    assert client.acks(1)[0]["MSA"][1] == "AE"
    _wait_parsed(store, 1)
    (letter,) = dead_letters(store)
    assert letter.document.startswith("mllp://") and letter.position == "MSH-10"
    replayed = replay_dead_letter(store, letter.id)
    assert (replayed.status, replayed.facts) == ("rejected", ())
    (error,) = replayed.errors
    assert error.position == "MSH-10" and "expected a message control id" in error.text
    assert store.raw_counts() == {"rejected": 1}  # nothing loaded from it
    (again,) = dead_letters(store)
    assert (again.document, again.position, again.fatal) == (letter.document, "MSH-10", True)
    # such a message from a file loads: the policy is the transport's, not the message's
    path = tmp_path / "lab.hl7"
    path.write_bytes(_no_control_id("P7"))
    ingest([path], store)
    assert store.raw_counts() == {"rejected": 1, "loaded": 1}


def test_an_oversized_frame_gets_ar_with_value_too_long_and_the_next_goes_on(
    store: FactStore,
) -> None:
    with start_mllp_thread(store, max_frame=1000, parser="thread") as listener:
        sender = Client(listener.port)
        sender.send(frame(oru("M1").replace(b"DOE^JO", b"DOE^" + b"J" * 2000)) + frame(oru("M2")))
        too_long, accepted = sender.acks(2)
        sender.close()
    assert too_long["MSA"][1] == "AR" and "at most 1000 bytes" in too_long["MSA"][3]
    # HL7 table 0357: 104 Value too long (not 100 Segment sequence error)
    assert too_long["ERR"][3] == "104^Value too long^HL70357"
    assert accepted["MSA"][1:3] == ["AA", "M2"]


def _log_in_worker(surroundings: Any) -> None:
    """A parse worker's start (``Surroundings.take``), then a line of its log."""
    import logging

    surroundings.take()
    logging.getLogger("vigie.ingest.mllp_worker").warning("a worker line")


def test_the_parse_worker_logs_in_the_listeners_format() -> None:
    """Under ``vigie serve`` (its logging set up), a line of the worker process has the time,
    level and logger name as a line of the listener's process."""
    script = (
        "import logging\n"
        "from vigie.api.cli import _log_requests\n"
        "from vigie.ingest.mllp_worker import Surroundings, worker_context\n"
        "from tests.test_mllp import _log_in_worker\n"
        "if __name__ == '__main__':\n"
        "    _log_requests()\n"
        "    logging.getLogger('vigie.ingest.mllp').warning('a listener line')\n"
        "    here = Surroundings.here()\n"
        "    worker = worker_context().Process(target=_log_in_worker, args=(here,))\n"
        "    worker.start()\n"
        "    worker.join(60)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"
    assert re.fullmatch(rf"{stamp} WARNING vigie\.ingest\.mllp: a listener line", lines[0])
    assert re.fullmatch(rf"{stamp} WARNING vigie\.ingest\.mllp_worker: a worker line", lines[1])
    assert len(lines) == 2


def test_a_message_without_a_control_id_left_unparsed_is_refused_at_recovery(
    store_url: str,
) -> None:
    """Kept over MLLP, the process gone before its parse: ``recover`` at the next start
    refuses it as the listener would have; one from a file without MSH-10 loads."""
    from vigie.connectors.registry import connector_for

    hl7 = connector_for("hl7")
    raws = [
        *hl7.split("mllp://127.0.0.1", _no_control_id("P8")),
        *hl7.split("lab.hl7", _no_control_id("P7")),
    ]
    with FactStore(store_url) as gone:
        gone.keep_raws(raws)
    with FactStore(store_url) as store:
        recover(store)
        assert store.raw_counts() == {"rejected": 1, "loaded": 1}
        (letter,) = dead_letters(store)
        assert (letter.document, letter.position, letter.fatal) == (
            "mllp://127.0.0.1",
            "MSH-10",
            True,
        )


def test_a_duplicate_is_acknowledged_and_stored_once(store: FactStore, client: Client) -> None:
    client.send(frame(oru("M1")) + frame(oru("M1")))
    assert [ack["MSA"][1:3] for ack in client.acks(2)] == [["AA", "M1"], ["AA", "M1"]]
    _wait_parsed(store, 1)
    client.send(frame(oru("M1")))
    assert client.acks(1)[0]["MSA"][1] == "AA"
    assert len(store.raw_versions("hl7v2", "LAB^CHU|M1")) == 1
    assert store.raw_counts() == {"loaded": 1}


def test_a_correction_in_the_same_write_supersedes_the_first_version(
    store: FactStore, client: Client
) -> None:
    """Two versions of one message kept in one group are stored one after the other, so that
    the later (MSH-7) replaces the earlier, as the file ingest does."""
    first = oru("M1", value="5.9")
    corrected = oru("M1", value="4.1").replace(b"|20240102080000|", b"|20240102090000|")
    client.send(frame(first) + frame(corrected))
    assert [ack["MSA"][1:3] for ack in client.acks(2)] == [["AA", "M1"], ["AA", "M1"]]
    _wait_parsed(store, 2)
    assert store.raw_counts() == {"loaded": 1, "superseded": 1}
    (lab,) = store.iter_facts(["lab"])
    assert lab.value == 4.1  # type: ignore[union-attr]


def test_a_message_that_cannot_be_stored_gets_ae_and_is_not_lost_on_resend(
    store: FactStore, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    keep = store.keep_raws

    def unreachable(raws: Any) -> Any:
        raise StoreError("cannot keep the raw messages in the store: disk full")

    monkeypatch.setattr(store, "keep_raws", unreachable)
    client.send(frame(oru("M1")))
    (ack,) = client.acks(1)
    assert ack["MSA"][1] == "AE" and "disk full" in ack["ERR"][8]
    assert store.raw_content("hl7v2", "LAB^CHU|M1") is None
    monkeypatch.setattr(store, "keep_raws", keep)
    client.send(frame(oru("M1")))
    assert client.acks(1)[0]["MSA"][1] == "AA"
    _wait_parsed(store, 1)


def test_concurrent_connections_keep_their_order_and_facts_reach_the_hook(
    store: FactStore, parser: ParserPlace
) -> None:
    seen: list[Any] = []
    lock = threading.Lock()

    def on_facts(facts: list[Any]) -> None:
        with lock:
            seen.extend(facts)

    with start_mllp_thread(store, on_facts=on_facts, parser=parser) as listener:
        orders: dict[int, list[str]] = {}

        def send(number: int) -> None:
            sender = Client(listener.port)
            ids = [f"C{number}-{i}" for i in range(25)]
            for start in range(0, 25, 5):  # pipelined, five frames per write
                sender.send(b"".join(frame(oru(i, f"P{number}")) for i in ids[start : start + 5]))
            orders[number] = [ack["MSA"][2] for ack in sender.acks(25)]
            sender.close()

        threads = [threading.Thread(target=send, args=(n,)) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert orders == {n: [f"C{n}-{i}" for i in range(25)] for n in range(6)}
    assert store.raw_counts() == {"loaded": 150}  # stop() finished the parsing
    assert sorted(f.kind for f in seen).count("lab") == 150
    assert listener.server is not None
    assert listener.server.stats.acks["AA"] == 150
    assert listener.server.stats.groups < 150  # messages of several frames shared a commit


def test_acks_do_not_wait_for_the_parse(store: FactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ACK says the raw message is committed, not parsed: with the parser held up, every
    message is acknowledged (one at a time, as a sender waiting for each ACK does) and kept
    ``received``; released, the parser stores what they gave."""
    from vigie.ingest import mllp

    listener = start_mllp_thread(store, parser="thread")
    client = Client(listener.port)

    released = threading.Event()
    parse = mllp.parse_received

    def held(*args: Any) -> Any:
        assert released.wait(20), "the parser was never released"
        return parse(*args)

    monkeypatch.setattr(mllp, "parse_received", held)
    for number in range(5):
        client.send(frame(oru(f"M{number}")))
        assert client.acks(1)[0]["MSA"][1:3] == ["AA", f"M{number}"]
    assert store.raw_counts() == {"received": 5}
    released.set()
    _wait_parsed(store, 5)
    assert store.raw_counts() == {"loaded": 5}
    client.close()
    listener.stop()


def test_clean_shutdown_closes_idle_connections(store: FactStore, parser: ParserPlace) -> None:
    listener = start_mllp_thread(store, parser=parser)
    sender = Client(listener.port)
    sender.send(frame(oru("M1")))
    sender.acks(1)
    listener.stop()
    assert sender.socket.recv(10) == b""  # closed by the listener
    assert store.raw_counts() == {"loaded": 1}
    sender.close()


def test_each_connection_is_in_the_audit_log_with_what_it_sent(store: FactStore) -> None:
    """A feed writes patient data: its connection opens and closes in the audit log (actor
    ``mllp:<address>``), the closing entry with the frames and ACK codes it got."""
    listener = start_mllp_thread(store)
    sender = Client(listener.port)
    sender.send(frame(oru("M1")) + frame(b"not HL7 at all") + frame(oru("M2")))
    assert [ack["MSA"][1] for ack in sender.acks(3)] == ["AA", "AR", "AA"]
    sender.close()
    deadline = time.monotonic() + 10
    while len(ServiceStore(store).audit_log(actor="mllp:127.0.0.1")) < 2:
        assert time.monotonic() < deadline, "the closing entry was not written"
        time.sleep(0.02)
    listener.stop()
    closed, opened = ServiceStore(store).audit_log(actor="mllp:127.0.0.1")
    assert (opened.action, opened.resource) == ("ingest", f"MLLP 127.0.0.1:{listener.port}")
    assert opened.detail == {"stage": "connected"} and opened.patient_id is None
    assert closed.detail == {
        "stage": "closed",
        "frames": 3,
        "acks": {"AA": 2, "AE": 0, "AR": 1},
        "dropped_bytes": 0,
        "closed_inside_a_frame": False,
    }


def test_a_connection_whose_audit_entry_cannot_be_written_is_closed_unread(
    store: FactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(self: ServiceStore, entry: Any) -> Future[None]:
        done: Future[None] = Future()
        done.set_exception(ServiceError("the audit log is not writable (test)"))
        return done

    monkeypatch.setattr(ServiceStore, "submit_audit", refused)
    with start_mllp_thread(store) as listener:
        sender = Client(listener.port)
        sender.send(frame(oru("M1")))
        with pytest.raises(ConnectionError):
            sender.acks(1)  # closed without an ACK: the sender sends it again later
        sender.close()
    assert store.raw_counts() == {}


def test_real_messages_give_the_facts_of_the_file_ingest(
    shared_data: Path, store: FactStore, client: Client, tmp_path: Path
) -> None:
    """Every HL7 v2 sample of the reference data sent over MLLP, one frame per message,
    gives the facts the file ingest gives; each ACK carries its message's control id. A
    sample without one (MSH-10, which a file may lack) is refused over MLLP: AE, kept and
    dead-lettered."""
    from vigie.connectors.hl7v2.framing import cut_messages, read_header

    files = sorted((shared_data / "hl7v2").rglob("*.hl7"))
    by_file = {path: [piece.content for piece in cut_messages(path.read_bytes())] for path in files}
    messages = [message for path in files for message in by_file[path]]
    ids = [read_header(message).control_id or "" for message in messages]
    with_ids = [path for path in files if all(read_header(m).control_id for m in by_file[path])]
    without = len(messages) - sum(len(by_file[path]) for path in with_ids)
    assert without == ids.count("") > 0  # files of one message each
    client.send(b"".join(frame(message) for message in messages))
    acks = client.acks(len(messages))
    assert [ack["MSA"][2] for ack in acks] == ids
    assert [ack["MSA"][1] for ack in acks] == ["AA" if id_ else "AE" for id_ in ids]
    _wait_parsed(store, len(set(ids)))
    with FactStore(f"sqlite:///{tmp_path / 'files.db'}") as reference:
        ingest(with_ids, reference, fmt="hl7")
        assert _facts(store) == _facts(reference)
        expected = reference.raw_counts()
        expected["rejected"] = expected.get("rejected", 0) + without
        assert store.raw_counts() == expected


# The parse worker ------------------------------------------------------------------------------


def _worker(listener: MllpThread, other_than: int | None = None) -> int:
    """The process id of the listener's parse worker, once one is ready (another than
    ``other_than``)."""
    assert listener.server is not None
    deadline = time.monotonic() + 30
    while (pid := listener.server.parse_worker) in (None, other_than):
        assert time.monotonic() < deadline, "no parse worker"
        time.sleep(0.02)
    assert pid is not None
    return pid


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (gone, or a zombie not reaped yet) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while process_start(pid) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_versions_of_one_message_are_settled_in_the_order_they_came(
    store: FactStore, client: Client
) -> None:
    """Three versions of each of 20 messages, one header time, sent over several writes that
    the parser takes in several saves: each message's last version is the one applied."""
    frames = [
        frame(oru(f"M{number}", f"P{number}", value=f"{version}.{number}"))
        for version in (1, 2, 3)
        for number in range(20)
    ]
    for start in range(0, len(frames), 7):
        client.send(b"".join(frames[start : start + 7]))
        time.sleep(0.005)
    assert {ack["MSA"][1] for ack in client.acks(len(frames))} == {"AA"}
    _wait_parsed(store, len(frames))
    assert store.raw_counts() == {"loaded": 20, "superseded": 40}
    values = {lab.patient_id: lab.value for lab in store.iter_facts(["lab"])}  # type: ignore[union-attr]
    assert len(values) == 20 and set(values.values()) == {float(f"3.{n}") for n in range(20)}


def test_the_hooks_get_each_message_with_its_facts_in_order(
    store: FactStore, parser: ParserPlace
) -> None:
    seen: list[Any] = []
    with start_mllp_thread(store, on_results=seen.extend, parser=parser) as listener:
        sender = Client(listener.port)
        for number in range(12):
            sender.send(frame(oru(f"M{number}", f"P{number}")))
            sender.acks(1)
        sender.send(frame(oru("M0", "P0")))  # a duplicate: nothing to report
        sender.acks(1)
        sender.close()
    assert [result.message_id for result in seen] == [f"LAB^CHU|M{n}" for n in range(12)]
    assert {result.status for result in seen} == {"loaded"}
    assert [len(result.facts) for result in seen] == [len(seen[0].facts)] * 12
    assert {fact.kind for result in seen for fact in result.facts} >= {"lab", "patient"}


def test_an_in_memory_store_is_parsed_in_a_thread() -> None:
    """A worker process would open an empty database of its own: ``auto`` parses in a thread,
    ``process`` is refused."""
    with FactStore("sqlite://") as store:
        with pytest.raises(ValueError, match="in-memory SQLite"):
            MllpServer(store, parser="process")
        assert MllpServer(store)._ingestor.worker is None
        assert MllpServer(store, parser="thread")._ingestor.worker is None


def test_stop_ends_the_worker(store: FactStore) -> None:
    listener = start_mllp_thread(store, parser="process")
    pid = _worker(listener)
    sender = Client(listener.port)
    sender.send(frame(oru("M1")))
    sender.acks(1)
    listener.stop()
    assert store.raw_counts() == {"loaded": 1}  # parsed before the worker stopped
    assert _gone(pid, timeout=1.0)
    sender.close()


def test_acks_go_on_while_the_worker_is_held_and_no_other_store_takes_its_messages(
    store: FactStore, store_url: str
) -> None:
    """The worker stores for the listener's ingest run: a ``recover`` by another store finds
    that run alive and takes none of the messages under way; the worker, let go, stores them
    (its outcomes are not refused as those of a run taken over)."""
    with start_mllp_thread(store, parser="process") as listener:
        pid = _worker(listener)
        os.kill(pid, signal.SIGSTOP)
        try:
            sender = Client(listener.port)
            for number in range(5):  # one at a time, each ACK awaited
                sender.send(frame(oru(f"M{number}")))
                assert sender.acks(1)[0]["MSA"][1:3] == ["AA", f"M{number}"]
            with FactStore(store_url) as other:
                assert recover(other).files == []
            assert store.raw_counts() == {"received": 5}
        finally:
            os.kill(pid, signal.SIGCONT)
        _wait_parsed(store, 5)
        assert store.raw_counts() == {"loaded": 5}
        sender.close()


def test_a_killed_worker_leaves_its_messages_received_and_a_new_one_takes_the_next(
    store: FactStore, caplog: pytest.LogCaptureFixture
) -> None:
    """What a killed worker had in hand stays ``received`` (the next start's ``recover``, or a
    new send, parses it); the listener goes on acknowledging, and a new worker parses what
    comes next."""
    with start_mllp_thread(store, parser="process") as listener:
        first = _worker(listener)
        os.kill(first, signal.SIGSTOP)
        sender = Client(listener.port)
        sender.send(b"".join(frame(oru(f"A{n}", f"P{n}")) for n in range(5)))
        assert {ack["MSA"][1] for ack in sender.acks(5)} == {"AA"}
        time.sleep(0.2)  # handed to the worker (``HAND_LINGER``)
        os.kill(first, signal.SIGKILL)
        second = _worker(listener, other_than=first)
        sender.send(b"".join(frame(oru(f"B{n}", f"P{n}")) for n in range(5)))
        assert {ack["MSA"][1] for ack in sender.acks(5)} == {"AA"}
        deadline = time.monotonic() + 20
        while store.raw_counts().get("loaded", 0) < 5:
            assert time.monotonic() < deadline, store.raw_counts()
            time.sleep(0.02)
        assert _statuses(store) == {
            **{f"LAB^CHU|A{n}": "received" for n in range(5)},
            **{f"LAB^CHU|B{n}": "loaded" for n in range(5)},
        }
        sender.send(frame(oru("A0", "P0")))  # sent again: parsed now
        assert sender.acks(1)[0]["MSA"][1] == "AA"
        sender.close()
        assert listener.server is not None and listener.server.stats.errors == 1
    assert _gone(first) and _gone(second)
    assert "the parse worker ended (exit code -9) before it stored 5 messages" in caplog.text
    assert _statuses(store)["LAB^CHU|A0"] == "loaded"
    recover(store)  # what a restart does
    assert store.raw_counts() == {"loaded": 10}


# Killed mid-stream ----------------------------------------------------------------------------

SERVER = (
    "import sys; from vigie.store import FactStore; from vigie.ingest.mllp import run_mllp; "
    "run_mllp(FactStore(sys.argv[1]), port=0, parser=sys.argv[2], "
    "on_listening=lambda port: print(port, flush=True))"
)


def _start_server(url: str, parser: ParserPlace) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "VIGIE_TIMEZONE": "UTC"}
    child = subprocess.Popen(
        [sys.executable, "-c", SERVER, url, parser], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.wait()
        raise AssertionError(f"the listener did not start (exit {child.returncode})")
    return child, int(line)


def _grandchildren(pid: int) -> set[int]:
    """The processes whose parent is a child of ``pid`` (a listener's parse worker is forked
    from its forkserver)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
    children = {child for child, parent in parents.items() if parent == pid}
    return {process for process, parent in parents.items() if parent in children}


def _send_until_killed(
    port: int, child: subprocess.Popen[str], ids: list[str], workers: set[int]
) -> set[str]:
    """Send every message pipelined; kill the listener (SIGKILL) once a third are ACKed,
    noting its parse workers in ``workers``; the control ids ACKed (AA) before the connection
    dropped."""
    sender = Client(port)
    acked: set[str] = set()

    def write() -> None:
        try:
            for start in range(0, len(ids), 10):
                chunk = ids[start : start + 10]
                sender.send(b"".join(frame(oru(i, f"P{i}")) for i in chunk))
        except OSError:
            pass  # the listener was killed

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while True:
            (ack,) = sender.acks(1)
            assert ack["MSA"][1] == "AA"
            acked.add(ack["MSA"][2])
            if len(acked) == len(ids) // 3:
                workers.update(_grandchildren(child.pid))
                child.send_signal(signal.SIGKILL)
    except (ConnectionError, OSError):
        pass
    writer.join()
    sender.close()
    _ended(child, 30)
    return acked


def _ended(child: subprocess.Popen[str], timeout: float) -> int:
    child.wait(timeout)
    assert child.stdout is not None
    child.stdout.close()
    return child.returncode


@pytest.mark.slow
def test_killed_mid_stream_loses_no_acked_message_and_duplicates_none(
    store_url: str, parser: ParserPlace, tmp_path: Path
) -> None:
    """The listener killed (SIGKILL) while messages stream in: its parse worker ends too (its
    pipe closes), and the restart parses what was ACKed and not parsed."""
    ids = [f"K{i}" for i in range(1500)]
    FactStore(store_url).close()  # the tables, before the listener
    child, port = _start_server(store_url, parser)
    deadline = time.monotonic() + 30
    while parser == "process" and not _grandchildren(child.pid):  # started in the background
        assert time.monotonic() < deadline, "no parse worker"
        time.sleep(0.05)
    workers: set[int] = set()
    acked = _send_until_killed(port, child, ids, workers)
    assert child.returncode == -signal.SIGKILL
    assert len(workers) == (1 if parser == "process" else 0)
    assert all(_gone(worker) for worker in workers)
    assert len(ids) // 3 <= len(acked) < len(ids)
    with FactStore(store_url) as store:
        kept = set(_raw_ids(store))
        assert {f"LAB^CHU|{i}" for i in acked} <= kept  # every ACKed message was committed
    child, port = _start_server(store_url, parser)  # recovers what was kept and not parsed
    try:
        # Before anything is sent again: the restart parsed what the killed listener had
        # ACKed (parsing runs after the ACK) and not parsed; nothing is left unparsed.
        with FactStore(store_url) as store:
            statuses = _statuses(store)
        assert "received" not in statuses.values()
        assert {statuses[f"LAB^CHU|{i}"] for i in acked} == {"loaded"}
        sender = Client(port)
        sender.send(b"".join(frame(oru(i, f"P{i}")) for i in ids))  # everything again
        assert [ack["MSA"][1:3] for ack in sender.acks(len(ids))] == [["AA", i] for i in ids]
        sender.close()
    finally:
        child.send_signal(signal.SIGTERM)
        assert _ended(child, 30) == 0  # a clean shutdown
    with FactStore(store_url) as store:
        rows = _raw_ids(store)
        assert sorted(rows) == sorted(f"LAB^CHU|{i}" for i in ids)  # each once
        assert store.raw_counts() == {"loaded": len(ids)}
        with FactStore(f"sqlite:///{tmp_path / 'reference.db'}") as reference:
            ingest_hl7(reference, b"".join(oru(i, f"P{i}") for i in ids))
            assert _facts(store) == _facts(reference)


def _facts(store: FactStore) -> dict[tuple[str, str], dict[str, Any]]:
    """Facts by key, their source document left out (a file name, or ``mllp://host``)."""
    facts = {}
    for fact in store.iter_facts():
        payload = fact.model_dump(mode="json")
        del payload["source"]["document"]
        facts[(fact.kind, fact.fact_id)] = payload
    return facts


def _statuses(store: FactStore) -> dict[str, str]:
    query = select(RawMessageRow.message_id, RawMessageRow.status)
    with store.session() as session:
        return {message_id: status for message_id, status in session.execute(query)}


def _raw_ids(store: FactStore) -> list[str]:
    query = select(RawMessageRow.message_id, func.count()).group_by(RawMessageRow.message_id)
    with store.session() as session:
        counted = session.execute(query).all()
    assert all(count == 1 for _, count in counted), "a message stored twice"
    return [message_id for message_id, _ in counted]
