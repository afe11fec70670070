"""Benchmark: MLLP ingest, messages per second acknowledged durably (target 500/s).

The listener runs in a process of its own (``vigie.ingest.mllp.run_mllp``) on a SQLite file or
on PostgreSQL (a fresh schema of database ``test`` on 127.0.0.1); the senders are threads of
this process, each on its own TCP connection, each behaving as an MLLP sender does: send one
message, wait for its ACK, send the next. The messages are the HL7 v2 export of a generated
hospital (ADT, ORU, RDE/OMP, RAS), in file order, dealt round-robin to the connections.

Measured per case: messages ACKed per second (first send to last ACK), the median and p99 of
the ACK latency (send to ACK received), the time until every message is also parsed and
its facts stored (``received`` none left: during a burst the listener defers parsing, up to
``PARSE_DEFER`` = 5 s a message, so this rate, not the ACK rate, is what a sender can keep up
for long; ``--messages 12000`` makes the burst outlast the deferral), and the CPU time per
message of the listener and of its parse worker (from ``/proc``: what a message costs, whatever
else the machine runs; the worker is the process forked from the listener's forkserver, 0 with
the parse in a thread).
Every ACK is ``AA`` and comes after the message's raw bytes are committed, so the figure is
durable throughput. Cases
alternate (SQLite 1, PG 1, SQLite 8, PG 8), repeated ``--repeat`` times; the machine is
shared, so compare within a run.

Before each case, the floor: durable commits per second of the bare driver on the same
database (one ~700-byte INSERT, then COMMIT, in a loop; SQLite in WAL mode with its default
``synchronous=FULL``, PostgreSQL with ``synchronous_commit`` on). A sender with one connection
waits for each ACK, so it cannot go faster than one such commit per message: that case is
given as a ratio to the floor too. The disk is shared with whatever else runs, and the floor
moves with it.

``--baseline DIR`` also runs every case with the listener imported from another source tree
(``git archive <commit> | tar -x -C DIR``), interleaved with the current one: an A/B in one run.

    .venv/bin/python benchmarks/bench_mllp.py [--messages 3000] [--connections 1,8]
        [--repeat 2] [--no-postgres | --no-sqlite] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from pathlib import Path

from bench_ingest_store import postgres_schema

TARGET_MESSAGES_PER_SECOND = 500

SERVER = (
    "import sys; from vigie.store import FactStore; from vigie.ingest.mllp import run_mllp; "
    "run_mllp(FactStore(sys.argv[1]), port=0, "
    "on_listening=lambda port: print(port, flush=True))"
)


def _messages(count: int, folder: Path) -> list[bytes]:
    from vigie.connectors.hl7v2.framing import cut_messages
    from vigie.synthetic import generate

    beds, days = 60, 3
    while True:
        feeds = generate(beds, days, 1, "hl7", folder / f"{beds}x{days}").feed_files
        messages = [
            piece.content
            for feed in sorted(feeds)
            for piece in cut_messages(feed.read_bytes())
            if piece.is_message
        ]
        if len(messages) >= count:
            return messages[:count]
        beds *= 2


def _sender(port: int, messages: list[bytes], latencies: list[float], codes: list[str]) -> None:
    from vigie.ingest.mllp import FrameReader, frame

    with socket.create_connection(("127.0.0.1", port), timeout=60) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = FrameReader()
        for message in messages:
            began = time.perf_counter()
            connection.sendall(frame(message))
            acks: Sequence[bytes | object] = []
            while not acks:
                data = connection.recv(65536)
                if not data:
                    raise ConnectionError("the listener closed the connection")
                acks = reader.feed(data)
            latencies.append(time.perf_counter() - began)
            ack = acks[0]
            assert isinstance(ack, bytes)
            codes.append(ack.split(b"\rMSA", 1)[1][1:3].decode())


@contextmanager
def _sqlite_store(folder: Path) -> Iterator[str]:
    """The URL of a new SQLite file in ``folder``."""
    yield f"sqlite:///{folder / f'{uuid.uuid4().hex[:8]}.db'}"


def _cpu_seconds(pid: int) -> float:
    """CPU time (user and system) process ``pid`` has used: less noisy than its rate on a
    shared machine, it says what each message costs the listener."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker_cpu_seconds(pid: int) -> float:
    """CPU time of the parse worker of listener ``pid``: of the processes whose parent is a
    child of it (a worker is forked from the listener's forkserver; the forkserver's own start,
    its imports, is left out). 0 with the parser in a thread."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    children = {child for child, parent in parents.items() if parent == pid}
    total = 0.0
    for process in (child for child, parent in parents.items() if parent in children):
        with contextlib.suppress(OSError, IndexError):
            total += _cpu_seconds(process)
    return total


def _unfinished(url: str) -> int:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            query = "SELECT count(*) FROM raw_message WHERE status = 'received'"
            return int(connection.execute(text(query)).scalar_one())
    finally:
        engine.dispose()


FLOOR_COMMITS = 300


def durable_floor(url: str, commits: int = FLOOR_COMMITS) -> float:
    """Durable commits per second of the bare driver on the database of ``url``: one small
    INSERT and a COMMIT per transaction, in a table of its own (dropped afterwards)."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    row = b"x" * 700
    try:
        with engine.connect() as connection:
            driver = connection.connection.dbapi_connection
            assert driver is not None
            sqlite = engine.dialect.name == "sqlite"
            if sqlite:
                driver.isolation_level = None
                driver.execute("PRAGMA journal_mode=WAL")
            cursor = driver.cursor()
            cursor.execute("CREATE TABLE bench_floor (id INTEGER PRIMARY KEY, content BYTEA)")
            if not sqlite:
                driver.commit()
            mark = "?" if sqlite else "%s"
            began = time.perf_counter()
            for number in range(commits):
                if sqlite:
                    cursor.execute("BEGIN IMMEDIATE")
                cursor.execute(f"INSERT INTO bench_floor VALUES ({mark}, {mark})", (number, row))
                if sqlite:
                    cursor.execute("COMMIT")
                else:
                    driver.commit()
            rate = commits / (time.perf_counter() - began)
            cursor.execute("DROP TABLE bench_floor")
            if not sqlite:
                driver.commit()
            return rate
    finally:
        engine.dispose()


def run_case(
    url: str, messages: list[bytes], connections: int, source: Path | None = None
) -> dict[str, float]:
    """One listener process (imported from ``source`` when given), ``connections`` senders;
    the figures of the case."""
    from vigie.store import FactStore

    FactStore(url).close()  # the tables, before the listener
    env = {**os.environ, "VIGIE_TIMEZONE": "UTC"}
    if source is not None:
        env["PYTHONPATH"] = str(source)
    # ``python -c`` puts its working directory first on the import path, before PYTHONPATH:
    # run from the source tree, not from wherever the benchmark was started (a checkout's
    # own code would shadow the baseline's).
    child = subprocess.Popen(
        [sys.executable, "-c", SERVER, url],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=source,
    )
    assert child.stdout is not None
    port = int(child.stdout.readline())
    shares = [messages[n::connections] for n in range(connections)]
    latencies: list[list[float]] = [[] for _ in shares]
    codes: list[list[str]] = [[] for _ in shares]
    threads = [
        threading.Thread(target=_sender, args=(port, share, latencies[n], codes[n]))
        for n, share in enumerate(shares)
    ]
    cpu_at_start = _cpu_seconds(child.pid)
    worker_at_start = _worker_cpu_seconds(child.pid)
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    acked = time.perf_counter() - began
    while _unfinished(url):
        time.sleep(0.01)
    parsed = time.perf_counter() - began
    cpu = _cpu_seconds(child.pid) - cpu_at_start
    worker_cpu = _worker_cpu_seconds(child.pid) - worker_at_start
    child.terminate()
    child.wait(60)
    child.stdout.close()
    every = sorted(latency for share in latencies for latency in share)
    all_codes = [code for share in codes for code in share]
    assert len(every) == len(messages), "a message was not acknowledged"
    return {
        "rate": len(messages) / acked,
        "median_ms": statistics.median(every) * 1000,
        "p99_ms": every[int(0.99 * (len(every) - 1))] * 1000,
        "parsed_rate": len(messages) / parsed,
        "aa": all_codes.count("AA") / len(all_codes),
        "cpu_ms": cpu * 1000 / len(messages),
        "worker_cpu_ms": worker_cpu * 1000 / len(messages),
    }


def _print(label: str, figures: dict[str, float], floor: float | None = None) -> None:
    rate = figures["rate"]
    to_floor = f", {rate / floor:4.2f} of the floor" if floor else ""
    print(
        f"{label:<37} {rate:7,.0f} msg/s ACKed (ratio to {TARGET_MESSAGES_PER_SECOND}/s: "
        f"{rate / TARGET_MESSAGES_PER_SECOND:4.2f}{to_floor}), ACK latency median "
        f"{figures['median_ms']:6.2f} ms, p99 {figures['p99_ms']:6.2f} ms; all parsed and "
        f"stored at {figures['parsed_rate']:7,.0f} msg/s; listener CPU "
        f"{figures['cpu_ms']:4.2f} ms/msg, worker {figures['worker_cpu_ms']:4.2f}; "
        f"AA {figures['aa']:.0%}",
        flush=True,
    )


def _case(
    label: str,
    stores: Callable[[], AbstractContextManager[str]],
    messages: list[bytes],
    connections: int,
    sources: list[tuple[str, Path | None]],
) -> None:
    """The floor of the database, then the case with each source tree, each on a new store
    of that database (``stores()`` gives one)."""
    floor: float | None = None
    for name, source in sources:
        with stores() as url:
            if floor is None:
                floor = durable_floor(url)
                print(f"{label}: floor {floor:7,.0f} durable commits/s (bare driver)", flush=True)
            figures = run_case(url, messages, connections, source)
        _print(f"  {name}, {connections} conn.", figures, floor if connections == 1 else None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--connections", default="1,8")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--baseline", type=Path, help="a source tree to compare with (A/B)")
    args = parser.parse_args()
    os.environ.setdefault("VIGIE_TIMEZONE", "UTC")
    sources: list[tuple[str, Path | None]] = [("current", None)]
    if args.baseline is not None:
        sources.append(("baseline", args.baseline.resolve()))
    with tempfile.TemporaryDirectory(prefix="vigie-bench-mllp-") as name:
        folder = Path(name)
        messages = _messages(args.messages, folder)
        size = sum(map(len, messages)) / len(messages)
        print(f"{len(messages):,} HL7 v2 messages of a generated hospital, {size:,.0f} bytes each")
        for round_number in range(1, args.repeat + 1):
            order = sources if round_number % 2 else sources[::-1]  # neither always first
            for connections in map(int, args.connections.split(",")):
                if not args.no_sqlite:
                    label = f"SQLite, {connections} conn. (run {round_number})"
                    _case(label, partial(_sqlite_store, folder), messages, connections, order)
                if not args.no_postgres:
                    label = f"PostgreSQL, {connections} conn. (run {round_number})"
                    _case(label, postgres_schema, messages, connections, order)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
