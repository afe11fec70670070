"""An MLLP listener: HL7 v2 messages over TCP, each acknowledged once it is durably stored.

MLLP frames a message as ``0x0B`` + message + ``0x1C 0x0D``. A connection may carry many
messages, a frame may arrive over several TCP reads and several frames in one; bytes outside a
frame are dropped (counted), a frame cut short by a new start byte is dropped (never
acknowledged: the sender sends it again), a frame over ``max_frame`` bytes is refused (``AR``).

For each message, in the order of its connection:

1. its raw bytes are kept in the store and **committed** (``FactStore.keep_raws``, the first
   step of every ingest, see ``vigie.ingest.pipeline``);
2. then the ACK is sent: ``AA`` (accepted; also for a duplicate, stored once), ``AE`` with an
   ERR segment and the reason when the message cannot be stored (database error, an id the
   store cannot hold) or is malformed beyond recognition (its MSH header cannot be read: no
   separators, no message type or control id — the connector's located error, e.g.
   ``MSH-9: expected a message type``; an empty MSH-9 or MSH-10 is ERR-3 101, required field
   missing, ERR-2 ``MSH^1^9`` or ``MSH^1^10``: ``parse_received``; the same message sent again
   is refused again), ``AR`` when it is not HL7 v2 at all (no MSH);
3. then it is parsed by the HL7 v2 connector and what it gave is stored (facts, or dead letters
   with located errors), in a worker process by default, and the facts go to the
   ``on_facts`` hook (a live evaluator) in the listener's process.

So ``AA`` means "durably stored", not "mapped without error": a message whose header is readable
but whose content fails (a bad PID, a bad OBX-5) is acknowledged, then dead-lettered with its
located error, and can be replayed after a mapping fix (``vigie.ingest.messages``). A message
acknowledged and not yet parsed when the process dies is parsed at the next start
(``recover``), from the stored bytes. A malformed message is kept and dead-lettered too.

Throughput: the messages of every connection waiting at one moment are kept in one
transaction (group commit), by one keeper thread, and their ACKs handed back to the loop at
once. An ACK is never sent before its message's transaction has committed; it never waits for
a parse. The keep stays in a thread of its own: done in the loop's thread (tried), it spared
two hand-offs per ACK but the loop could not read the next frames while a commit waited on
the disk, and with 8 connections fewer messages were acknowledged per second.

Parsing and storing what the messages gave runs, in order, in a **worker process**
(``parser="process"``, what ``"auto"`` takes unless the store is an in-memory SQLite
database; see ``vigie.ingest.mllp_worker``): a thread hands it what the keeper kept (those of
``HAND_LINGER`` at once); the worker parses each message as it comes, stores what they gave
in one transaction per ``WORKER_LINGER``, for the listener's ingest run (another process
never takes over a message it is parsing, and it stores nothing another process took over),
and answers once that transaction has committed; another thread of the listener reads the
answers, takes the messages off those under way (``_Ingestor._settled``) and calls the hooks
with the results, in order (the worker pickles them only when there are hooks: 0.08 ms a
message to pickle, 0.18 ms for the listener to read back, facts included). So the listener's
interpreter is left to the event loop and the keeper, and the parse runs on another core
(``benchmarks/bench_mllp.py``, one sender waiting for each ACK: the listener spends 0.55-1.06
ms of CPU a message on PostgreSQL and 1.23-2.1 on SQLite, against 1.48-3.23 ms with the parse
in its interpreter; the worker 0.75-1.6 ms). A worker that dies leaves what it had not stored
``received`` (``recover`` at the next start, or a new send, parses it) and a new one is
started; if none can start, the listener parses in a thread. A script that starts a
listener must do so under ``if __name__ == "__main__":`` (a ``forkserver`` worker imports the
script's main module, as every ``spawn``/``forkserver`` process of ``multiprocessing`` does).

With ``parser="thread"`` a second thread parses, each message as it comes, what they gave
stored in one transaction per ``PARSE_LINGER``, the facts' JSON made before that transaction
takes the write lock the keeper waits for on SQLite (on PostgreSQL a keep of new messages
takes no lock, see ``FactStore.keep_raws``); during a burst it gives way to the keeper
(``PARSE_DEFER``). So does the hand-off to a worker on SQLite, whose keep waits for the
worker's saves; on PostgreSQL the worker parses during a burst (see ``_Ingestor``).

Run it in an asyncio loop (``serve_mllp``), in a background thread (``start_mllp_thread``,
for tests and for ``vigie serve --mllp-port``), or as a process (``run_mllp``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import re
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from vigie.connectors.base import Connector, RawMessage
from vigie.connectors.hl7v2.framing import msh_fields
from vigie.connectors.registry import connector_for
from vigie.facts import AnyFact
from vigie.ingest.messages import MessageResult, result_of
from vigie.ingest.mllp_worker import (
    GROUP_MESSAGES,
    KeptMessage,
    ParseReply,
    ParseWorker,
    load_code_tables,
)
from vigie.ingest.pipeline import (
    MLLP_DOCUMENT,
    ParsedMessage,
    parse_received,
    parsed_payloads,
    raw_batches,
    recover,
    save_parsed,
)
from vigie.store import AuditEntry, FactStore, RawRecord, ServiceStore, StoreError
from vigie.store.database import in_memory_url

__all__ = [
    "MAX_FRAME",
    "SWITCH_INTERVAL",
    "Acknowledgement",
    "FrameReader",
    "MllpServer",
    "MllpStats",
    "MllpThread",
    "ParserPlace",
    "build_ack",
    "frame",
    "run_mllp",
    "serve_mllp",
    "start_mllp_thread",
]

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_FRAME = 16 << 20
"""The largest message accepted (16 MiB); a longer frame is refused with ``AR``."""
PARSE_LINGER = 0.02
"""Seconds a parser in a thread waits for more kept messages before storing what they gave in
one transaction: storing costs far more per transaction than per message, and while the parser
waits, the keeper commits and acknowledges at full speed (facts reach ``on_facts`` this much
later at most). Tried at 0.05 and 0.1 s: the same messages ACKed per second within the
noise of a shared machine, a higher p99 ACK latency (a longer save holds the write lock the
keeper waits for: PostgreSQL, one connection, p99 34-36 ms at 0.1 s, 18-22 ms at 0.02 s).
A worker process waits longer (``vigie.ingest.mllp_worker.WORKER_LINGER``)."""

PARSE_DEFER = 5.0
"""Seconds a kept message may wait for its parse while frames keep coming (at most): during a
burst the parser gives way to the keep, which then has the interpreter to itself and ACKs at
its own speed; past this age, or once the burst is over, the parser works (and the ACKs of a
longer burst come at what parsing leaves them). The raw message is committed before its
ACK: a deferred parse delays its facts, never its safety."""

HAND_LINGER = 0.01
"""Seconds the listener waits for more kept messages before it sends them to its parse worker
at once: a thread of the listener woken for each message took the interpreter from the keeper
and the event loop just as an ACK was on its way."""

_BUSY = 0.01
"""The listener is in a burst while it has kept a frame within this many seconds (frames at
more than ~100 a second; at 5 ms, a loaded machine's slower ACKs ended the bursts it made)."""

SWITCH_INTERVAL = 0.001
"""Seconds between the interpreter's thread switches in a process that ``run_mllp`` runs
(Python's default: 0.005). The keeper waits on the database and the socket while the parser
computes, and after each of its round trips (five a commit on PostgreSQL) it may wait up to
the interval for the interpreter lock. Measured against the default, A/B in one run, one
connection, three rounds: SQLite 640/523, 531/394, 360/367 messages ACKed per second;
PostgreSQL 158/183, 177/180, 179/140: no loss, a gain on SQLite that the noise of a shared
machine leaves uncertain (a first run's 1.6x on PostgreSQL did not repeat)."""

_READ_BYTES = 1 << 16
_DEFAULT_SEPARATORS = (b"|", b"^~\\&")
_MAX_REASON = 400  # characters of an error text sent back in MSA-3 / ERR-8
# HL7 table 0357 (message error condition codes) as sent in ERR-3.
_NOT_HL7 = "100^Segment sequence error^HL70357"
_MALFORMED = "102^Data type error^HL70357"
_MISSING = "101^Required field missing^HL70357"  # an empty MSH-9 or MSH-10
# A frame over ``max_frame``: 104 is the table's code for a value longer than the receiver
# takes (added to table 0357 after v2.5: a v2.5 sender still reads ERR-3's text). None of the
# v2.5 codes fits: 100 says segments out of order or missing, 207 a failure of the receiver.
_TOO_LONG = "104^Value too long^HL70357"
_LOCATION = re.compile(r"\b([A-Z][A-Z0-9]{2})(?:\[(\d+)\])?-(\d+)")

FactsHook = Callable[[list[AnyFact]], None]
ResultsHook = Callable[[list[MessageResult]], None]


def frame(message: bytes) -> bytes:
    """A message wrapped in MLLP's start and end blocks (what a sender writes)."""
    return START_BLOCK + message + END_BLOCK


# Framing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Oversized:
    """A frame longer than the bound: refused, its bytes dropped."""

    size: int


class FrameReader:
    """Cuts an MLLP byte stream into frames, across reads.

    >>> reader = FrameReader()
    >>> reader.feed(b"noise\\x0bMSH|1\\x1c\\r\\x0bMSH|2\\x1c")
    [b'MSH|1']
    >>> reader.feed(b"\\r"), reader.dropped, reader.partial
    ([b'MSH|2'], 5, False)
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.dropped = 0  # bytes outside frames, and of frames cut short
        self._buffer = bytearray()
        self._inside = False  # a start block was read, the end block not yet
        self._skipping = 0  # bytes of an oversized frame dropped so far (0: not skipping)

    @property
    def partial(self) -> bool:
        """Whether a frame has begun and not ended (what a closed connection loses)."""
        return self._inside

    def feed(self, data: bytes) -> list[bytes | Oversized]:
        """The frames completed by ``data``, in order (an ``Oversized`` for a refused one)."""
        self._buffer += data
        frames: list[bytes | Oversized] = []
        while self._buffer:
            if not self._inside and not self._start():
                break
            if not self._inside:
                continue
            found = self._end()
            if found is None:
                break
            frames.append(found)
        return frames

    def _start(self) -> bool:
        """Drop what precedes the next start block; whether one was found."""
        at = self._buffer.find(START_BLOCK)
        if at < 0:
            self.dropped += len(self._buffer)
            self._buffer.clear()
            return False
        self.dropped += at
        del self._buffer[: at + 1]
        self._inside = True
        return True

    def _end(self) -> bytes | Oversized | None:
        """The frame ending in the buffer, or None until more bytes come."""
        while True:
            end = self._buffer.find(END_BLOCK[:1])
            restart = self._buffer.find(START_BLOCK, 0, len(self._buffer) if end < 0 else end)
            if restart < 0:
                break
            self._drop(restart + 1)  # a new frame begins before this one ended: this one is lost
        if end < 0 or end + 1 >= len(self._buffer):
            if end < 0 and len(self._buffer) + self._skipping > self.max_frame:
                self._skipping += len(self._buffer)  # too long: dropped as it comes
                self.dropped += len(self._buffer)
                self._buffer.clear()
            return None
        content = bytes(self._buffer[:end])
        # The end block is 0x1C 0x0D; a lone 0x1C (some senders) ends the frame too.
        del self._buffer[: end + (2 if self._buffer[end + 1 : end + 2] == b"\r" else 1)]
        self._inside = False
        if self._skipping:
            size, self._skipping = self._skipping + len(content), 0
            self.dropped += len(content)
            return Oversized(size)
        if len(content) > self.max_frame:
            self.dropped += len(content)
            return Oversized(len(content))
        return content

    def _drop(self, count: int) -> None:
        """Drop a frame cut short and the start block that cut it (the new frame is read)."""
        self.dropped += count - 1
        self._skipping = 0
        del self._buffer[:count]


# Acknowledgements --------------------------------------------------------------------------


@dataclass(frozen=True)
class Acknowledgement:
    """What a message's ACK says: ``code`` (AA, AE, AR), the reason of a refusal, where in the
    message (``PID-3``), and the HL7 table 0357 error code."""

    code: str
    reason: str | None = None
    location: str | None = None
    error_code: str = "207^Application internal error^HL70357"


def _header(content: bytes) -> tuple[bytes, list[bytes]] | None:
    """(field separator, MSH fields) of a message, or None without a readable MSH."""
    fields = msh_fields(content)
    if fields is None:
        return None
    start = content.find(b"MSH")
    return content[start + 3 : start + 4], fields


def _field(fields: Sequence[bytes], number: int) -> bytes:
    """MSH-``number`` (MSH-1 is the separator, so MSH-n is at index n - 1)."""
    return fields[number - 1] if len(fields) >= number else b""


def _escape(text: str, separator: bytes, encoding_chars: bytes) -> str:
    """Text fit for one HL7 field: separators and the escape character escaped, one line."""
    chars = encoding_chars.decode("latin-1")
    escape = chars[2] if len(chars) > 2 else "\\"
    names = {escape: "E", separator.decode("latin-1"): "F"}
    for char, name in zip(chars, "SRET", strict=False):
        if char != escape:
            names.setdefault(char, name)
    escaped = "".join(f"{escape}{names[c]}{escape}" if c in names else c for c in text)
    return " ".join(escaped.split())


def _error_location(location: str | None, component: str) -> str:
    """ERR-2 (ERL: segment^sequence^field) from a connector's position (``OBX[2]-5``)."""
    found = _LOCATION.search(location or "")
    if found is None:
        return ""
    segment, sequence, field_number = found.groups()
    return component.join((segment, sequence or "1", field_number))


def build_ack(content: bytes, ack: Acknowledgement, encoding: str | None = None) -> bytes:
    """The ACK of a message: MSH with the sender and receiver swapped, the incoming message's
    separators, ``ACK^<trigger>^ACK``, processing id and version; MSA with the code and the
    original control id (MSH-10); for AE/AR, MSA-3 and an ERR segment with the reason.

    >>> ack = build_ack(b"MSH|^~\\\\&|LAB|CHU|VIGIE|PHARMA|2024||ORU^R01|M1|P|2.5\\r",
    ...                 Acknowledgement("AA"))
    >>> [segment.split(b"|")[:3] for segment in ack.split(b"\\r") if segment][1:]
    [[b'MSA', b'AA', b'M1']]
    >>> ack.split(b"|")[2:6], ack.split(b"|")[8]
    ([b'VIGIE', b'PHARMA', b'LAB', b'CHU'], b'ACK^R01^ACK')
    """
    header = _header(content)
    separator, fields = header if header else (_DEFAULT_SEPARATORS[0], [b"MSH"])
    encoding_chars = _field(fields, 2) or _DEFAULT_SEPARATORS[1]
    if len(encoding_chars) < 2 or separator in encoding_chars:
        encoding_chars = _DEFAULT_SEPARATORS[1]
    component = encoding_chars[:1]
    trigger = _field(fields, 9).split(component)[1:2]
    control_id = uuid.uuid4().hex[:20].encode()
    now = datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z").encode()
    msh = [
        b"MSH",
        encoding_chars,
        _field(fields, 5),
        _field(fields, 6),
        _field(fields, 3),
        _field(fields, 4),
        now,
        b"",
        component.join([b"ACK", *trigger, b"ACK"] if trigger and trigger[0] else [b"ACK"]),
        control_id,
        _field(fields, 11) or b"P",
        _field(fields, 12) or b"2.5",
    ]
    msa = [b"MSA", ack.code.encode(), _field(fields, 10)]
    err: list[bytes] = []
    if ack.code != "AA":
        codec = encoding or "utf-8"
        reason = _escape((ack.reason or "")[:_MAX_REASON], separator, encoding_chars)
        text = reason.encode(codec, "replace")
        msa.append(text)
        location = _error_location(ack.location, component.decode("latin-1"))
        error_code = ack.error_code.replace("^", component.decode("latin-1"))
        err = [b"ERR", b"", location.encode(), error_code.encode(), b"E", b"", b"", b"", text]
    segments = [separator.join(msh), separator.join(msa), *([separator.join(err)] if err else [])]
    return b"\r".join(segments) + b"\r"


# Keeping and parsing -----------------------------------------------------------------------


@dataclass
class _Message:
    """One message of a frame, on its way through the keeper and the parser threads."""

    raw: RawMessage
    parsed: ParsedMessage | None = None  # before its ACK (a suspicious header), or by the parser
    record: RawRecord | None = None
    ack: Acknowledgement | None = None
    kept_at: float = 0.0  # ``time.monotonic()`` of its commit
    run: int = 0  # the ingest run that kept it (``FactStore.ingest_run``)


@dataclass
class _Frame:
    """A frame a connection read, its messages, and the future its ACK is given through."""

    content: bytes
    messages: list[_Message]
    future: asyncio.Future[tuple[str, bytes]]
    loop: asyncio.AbstractEventLoop
    refused: Acknowledgement | None = None  # refused before any storage (oversized)

    def acknowledge(self) -> None:
        """Build the frame's ACK and hand it to its connection (from any thread)."""
        _acknowledge_all([self])

    def reply(self) -> tuple[str, bytes]:
        """The frame's ACK: its code and its bytes."""
        ack = self.refused or _worst([m.ack for m in self.messages])
        if ack.code == "AR" and any(_header(m.raw.content) for m in self.messages):
            ack = dataclasses.replace(ack, code="AE")  # stray lines beside a real message
        encoding = self.messages[0].raw.encoding if self.messages else None
        return ack.code, build_ack(self.content, ack, encoding)


_Reply = tuple[asyncio.Future[tuple[str, bytes]], tuple[str, bytes]]


def _acknowledge_all(frames: Sequence[_Frame]) -> None:
    """Hand the ACKs of frames to their connections, one wake-up of each loop for all of them
    (one per frame made the loop and the keeper take turns at the interpreter lock)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Reply]] = {}
    for item in frames:
        by_loop.setdefault(item.loop, []).append((item.future, item.reply()))
    for loop, replies in by_loop.items():
        loop.call_soon_threadsafe(_settle, replies)


def _settle(replies: list[_Reply]) -> None:
    for future, reply in replies:
        if not future.done():  # the connection may be gone
            future.set_result(reply)


_RANK = {"AA": 0, "AE": 1, "AR": 2}


def _worst(acks: Sequence[Acknowledgement | None]) -> Acknowledgement:
    """A frame's ACK: that of its worst message (a frame holds one message but for a batch)."""
    known = [ack for ack in acks if ack is not None]
    if not known:
        return Acknowledgement("AE", "the message was not processed")
    return max(known, key=lambda ack: _RANK[ack.code])


@dataclass
class MllpStats:
    """What a listener did since it started (for tests, logs and benchmarks)."""

    connections: int = 0
    frames: int = 0
    acks: dict[str, int] = field(default_factory=lambda: {"AA": 0, "AE": 0, "AR": 0})
    dropped_bytes: int = 0
    groups: int = 0  # keep transactions (group commits)
    parsed: int = 0
    errors: int = 0  # store or hook failures (logged)


def _suspicious(content: bytes) -> bool:
    """Whether a message's header is unreadable: no MSH with separators, no MSH-9 or
    MSH-10. Such a message is parsed before its ACK, for the reason of its AE/AR."""
    header = _header(content)
    if header is None:
        return True
    _, fields = header
    return not _field(fields, 9).strip() or not _field(fields, 10).strip()


ParserPlace = Literal["auto", "process", "thread"]
"""Where a listener parses what it kept: ``process``, a worker process
(``vigie.ingest.mllp_worker``); ``thread``, a thread of the listener's process; ``auto``, a
process unless the store is an in-memory SQLite database (one per connection: a worker would
not see the listener's)."""


def _parses_in_process(place: ParserPlace, url: str) -> bool:
    """Whether a listener on the store of ``url`` parses in a worker process (``ParserPlace``).

    >>> _parses_in_process("auto", "sqlite://"), _parses_in_process("auto", "sqlite:///v.db")
    (False, True)
    """
    if place not in ("auto", "process", "thread"):
        raise ValueError(f"parser: expected 'auto', 'process' or 'thread', got {place!r}")
    if in_memory_url(url):
        if place == "process":
            raise ValueError(
                "parser='process': a worker process cannot open an in-memory SQLite store "
                "(one per connection): parser='thread'"
            )
        return False
    return place != "thread"


class _Ingestor:
    """The threads behind a listener: the keeper commits the raw messages of every connection
    waiting, then lets their ACKs go; the parser parses and stores what they gave — in a thread
    of its own, or in a worker process, to which a thread hands what the keeper kept and whose
    replies another thread reads (``vigie.ingest.mllp_worker.ParseWorker``).

    ``_lock`` guards the bookkeeping of the messages under way, so that a message sent again
    while its first copy is still being parsed is answered as a duplicate, not parsed twice
    (the worker's reply that a save has committed takes them off). With the parser in a
    thread, on SQLite, it also makes a keep and a save of this listener take turns (SQLite
    has one writer; a connection that finds the file locked sleeps 1, 2, 5 ms... before trying
    again, where this lock wakes it at once); a worker process's save and a keep wait for each
    other as two processes do (tried: a lock file taken by both, which woke the keep as soon
    as a save ended, made the keep wait for every save and acknowledged fewer messages). On
    PostgreSQL a keep of new messages takes no lock
    (``FactStore.keep_raws``) and does not wait for the parser's save.

    During a burst the parser in a thread gives way to the keeper (``PARSE_DEFER``). On SQLite
    the hand-off to a worker does too: the worker's saves hold the store's write lock, which
    the keep waits for (3,000 messages on one connection, A/B against the parse in a thread:
    475-513 ACKed a second against 547-737 with the worker parsing during the burst; with the
    hand-off deferred, 109/106, 406/143, 356/354 on a noisier machine). On PostgreSQL a keep
    does not wait for a save, and the worker parses during a burst. Tried: handing over all
    that was kept once the first message was ``PARSE_DEFER`` old: the worker then took 5 s of
    messages at a time and stored them 500 a transaction, which SQLite's keep waited for
    (12,000 messages: 179 ACKed a second, p99 49 ms; one run, the code before 134 a second on
    the machine of that moment); the messages are handed over as they come of age instead.
    """

    def __init__(
        self,
        store: FactStore,
        on_facts: FactsHook | None,
        on_results: ResultsHook | None,
        stats: MllpStats,
        parser: ParserPlace = "auto",
    ) -> None:
        self.store = store
        self.connector: Connector = connector_for("hl7")
        self.on_facts = on_facts
        self.on_results = on_results
        self.stats = stats
        self._frames: queue.Queue[_Frame | None] = queue.Queue()
        self._kept: queue.Queue[list[_Message] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._under_way: set[int] = set()  # raw ids kept, not yet stored by the parser
        self._keeping = False  # the keeper has frames in hand (the keeper writes both)
        self._last_keep = 0.0  # ``time.monotonic()`` when it last finished with its frames
        self.started = False
        self.worker: ParseWorker | None = None
        if _parses_in_process(parser, store.url):
            hooked = on_results is not None or on_facts is not None
            self.worker = ParseWorker(store.url, hooked, self._finished, self._lost)
        # The keep and the save of this process take turns on SQLite (see above).
        self._one_writer = store.engine.dialect.name == "sqlite" and self.worker is None
        self._defers = store.engine.dialect.name == "sqlite"  # the hand-off (see above)
        self._keeper = threading.Thread(target=self._keep_loop, name="mllp-keeper", daemon=True)
        hand = self._parse_loop if self.worker is None else self._hand_loop
        self._parser = threading.Thread(target=hand, name="mllp-parser", daemon=True)

    def start(self) -> None:
        self._keeper.start()
        if self.worker is not None:
            self.worker.start()  # in the background: ACKs do not wait for it
        self._parser.start()
        self.started = True

    def submit(self, item: _Frame) -> None:
        self._frames.put(item)

    def stop(self) -> None:
        """Finish every frame submitted and parse what they gave, then stop the threads and
        the worker (blocking)."""
        if not self.started:
            return
        self._frames.put(None)
        self._keeper.join()
        self._parser.join()
        if self.worker is not None:
            self.worker.stop()

    # keeper

    def _keep_loop(self) -> None:
        while True:
            first = self._frames.get()
            if first is None:
                self._kept.put(None)
                return
            self._keeping = True
            frames = [first]
            count = len(first.messages)
            stopping = False
            while count < GROUP_MESSAGES:
                try:
                    more = self._frames.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                frames.append(more)
                count += len(more.messages)
            try:
                self._keep(frames)
            except Exception as error:  # never let a listener thread die: the frames get AE
                log.error("MLLP keep failed: %s", error.__class__.__name__)
                self.stats.errors += 1
                for item in frames:
                    for message in item.messages:
                        message.ack = message.ack or _store_failure(error)
            _acknowledge_all(frames)
            self._keeping, self._last_keep = False, time.monotonic()
            if stopping:
                self._kept.put(None)
                return

    def _keep(self, frames: list[_Frame]) -> None:
        messages = [message for item in frames for message in item.messages]
        for message in messages:
            if _suspicious(message.raw.content):
                message.parsed = parse_received(self.connector, message.raw)
        to_parse: list[_Message] = []
        for group in raw_batches(messages):
            try:
                records = self._keep_group(group)
                for message, record in zip(group, records, strict=True):
                    message.record = record
                self.stats.groups += 1
            except StoreError as error:
                log.error("MLLP: messages not stored: %s", error.__class__.__name__)
                self.stats.errors += 1
                for message in group:
                    message.ack = _store_failure(error)
                continue
            for message in group:
                message.ack = _acknowledgement(message)
                kept = message.record
                if kept is not None and not kept.duplicate and kept.refused is None:
                    to_parse.append(message)
        if to_parse:
            kept_at, run = time.monotonic(), self.store.ingest_run or 0
            for message in to_parse:
                message.kept_at, message.run = kept_at, run
            self._kept.put(to_parse)

    def _keep_group(self, group: list[_Message]) -> list[RawRecord]:
        """Keep messages of distinct keys, committed; their records, settled (``_settled``)
        against the messages under way when the keep began."""
        raws = [message.raw for message in group]
        if self._one_writer:
            with self._lock:
                return self._settled(set(self._under_way), self.store.keep_raws(raws))
        with self._lock:
            under_way = set(self._under_way)
        records = self.store.keep_raws(raws)
        with self._lock:
            return self._settled(under_way, records)

    def _settled(self, under_way: set[int], records: list[RawRecord]) -> list[RawRecord]:
        """Kept messages' records, now under way; one whose first copy was under way is a
        duplicate (that copy's parse stores it). The parser stops counting a message under
        way only after its save has committed, so a copy kept before that commit finds its
        first copy under way, and one kept after finds it stored (``keep_raws``)."""
        settled = []
        for record in records:
            if record.duplicate or record.refused is not None:
                settled.append(record)
            elif record.id in under_way:
                settled.append(dataclasses.replace(record, duplicate=True))
            else:
                self._under_way.add(record.id)
                settled.append(record)
        return settled

    # parser

    def _parse_loop(self) -> None:
        while (first := self._kept.get()) is not None:
            if self._parse_here(first):
                return

    def _parse_here(self, first: list[_Message]) -> bool:
        """Parse and store kept messages in this thread, ``first`` and those that follow
        within ``PARSE_LINGER``; whether the listener stops."""
        self._give_way(first[0].kept_at)
        messages, stopping = self._gather(first)
        self._parse_safely(messages)
        return stopping

    def _parse_safely(self, messages: list[_Message]) -> None:
        try:
            self._parse(messages)
        except Exception as error:  # logged; the messages stay ``received``: ``recover``
            log.error("MLLP parse/store failed: %s", error.__class__.__name__)
            self.stats.errors += 1

    # hand-off to the worker process

    def _hand_loop(self) -> None:
        """Hand kept messages to the worker, in order, those kept within ``HAND_LINGER`` of
        each other at once (on SQLite, during a burst, only those ``PARSE_DEFER`` old: see
        ``_Ingestor``); parse them here when there is no worker."""
        pending: deque[list[_Message]] = deque()
        stopping = False
        while not stopping or pending:
            if not pending:
                first = self._kept.get()
                if first is None:
                    return
                pending.append(first)
            time.sleep(HAND_LINGER)
            stopping = self._drain(pending) or stopping
            for kept in _by_run(self._due(pending, stopping)):
                self._hand(kept)

    def _drain(self, pending: deque[list[_Message]]) -> bool:
        """Move what the keeper kept meanwhile to ``pending``; whether the listener stops."""
        while True:
            try:
                kept = self._kept.get_nowait()
            except queue.Empty:
                return False
            if kept is None:
                return True
            pending.append(kept)

    def _due(self, pending: deque[list[_Message]], stopping: bool) -> list[list[_Message]]:
        """The kept messages to hand over now, taken off ``pending``: all of them, but on
        SQLite during a burst, those ``PARSE_DEFER`` old (``_defer_parse``)."""
        due = []
        now = time.monotonic()
        while pending and (
            stopping
            or not self._defers
            or not _defer_parse(now, self._keeping, self._last_keep, pending[0][0].kept_at)
        ):
            due.append(pending.popleft())
        return due

    def _hand(self, kept: list[list[_Message]]) -> None:
        """Send kept messages of one run to the worker, or parse them here when there is
        none."""
        assert self.worker is not None
        messages = [message for group in kept for message in group]
        batch = [KeptMessage(m.record.id, m.record.replaced, m.raw) for m in messages if m.record]
        if not self.worker.send(messages[0].run, batch):
            self._parse_safely(messages)

    def _finished(self, raw_ids: list[int], reply: ParseReply) -> None:
        """The worker finished these messages (its reply: what it stored, committed)."""
        with self._lock:
            self._under_way.difference_update(raw_ids)
        self.stats.parsed += reply.stored
        if reply.failure is not None:  # the rest stay ``received``: ``recover``
            log.error("MLLP parse/store failed: %s", reply.failure)
            self.stats.errors += 1
        if reply.results:
            self._hooks(list(reply.results))

    def _lost(self, raw_ids: list[int], exit_code: int | None) -> None:
        """The worker ended before it finished these messages: they stay ``received``, parsed
        at the next start (``recover``) or when sent again; a new worker takes the next."""
        with self._lock:
            self._under_way.difference_update(raw_ids)
        log.error(
            "MLLP: the parse worker ended (exit code %s) before it stored %d messages, left "
            "for the next start (recover) or a new send",
            exit_code,
            len(raw_ids),
        )
        self.stats.errors += 1

    def _gather(self, first: list[_Message]) -> tuple[list[_Message], bool]:
        """The kept messages of one save: those kept within ``PARSE_LINGER`` of the first (at
        most ``GROUP_MESSAGES``), each parsed as it comes; and whether the listener stops.

        Parsing as they come spreads the parser's work: parsed all at once, a group held the
        interpreter for tens of milliseconds while the keeper waited to commit and ACK.
        """
        messages: list[_Message] = []
        kept: list[_Message] | None = first
        deadline = time.monotonic() + PARSE_LINGER
        while kept is not None:
            self._parse_early(kept)
            messages.extend(kept)
            if len(messages) >= GROUP_MESSAGES:
                return messages, False
            try:
                kept = self._kept.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return messages, False
        return messages, True

    def _parse_early(self, messages: list[_Message]) -> None:
        for message in messages:
            if message.parsed is None:
                # A failure here (a ConfigurationError) is raised again by ``_store``, which
                # leaves the messages ``received`` for ``recover``.
                with contextlib.suppress(Exception):
                    message.parsed = parse_received(self.connector, message.raw)
            time.sleep(0)  # let the keeper in between messages

    def _parse(self, messages: list[_Message]) -> None:
        """Parse and store, in order; versions of one message id go to separate transactions,
        so that each is settled against the one before (``FactStore.save_outcomes``)."""
        try:
            for group in raw_batches(messages):
                self._store(group)
        finally:  # a failure leaves them ``received``, for ``recover``; never "under way"
            with self._lock:
                self._under_way.difference_update(m.record.id for m in messages if m.record)

    def _give_way(self, kept_at: float) -> None:
        """Wait while the listener is busy keeping frames, up to ``PARSE_DEFER`` after
        ``kept_at`` (see ``PARSE_DEFER``)."""
        while _defer_parse(time.monotonic(), self._keeping, self._last_keep, kept_at):
            time.sleep(_BUSY)

    def _store(self, messages: list[_Message]) -> None:
        parsed = []
        for message in messages:
            assert message.record is not None
            result = message.parsed or parse_received(self.connector, message.raw)
            parsed.append((message.record.id, result, message.record.replaced))
        payloads = parsed_payloads(result for _, result, _ in parsed)  # before the lock
        with self._lock:
            stored = save_parsed(self.store, parsed, payloads)
            self._under_way.difference_update(raw_id for raw_id, _, _ in parsed)
        self.stats.parsed += len(stored)
        self._hooks([result_of(message) for message in stored])

    def _hooks(self, results: list[MessageResult]) -> None:
        try:
            if self.on_results is not None:
                self.on_results(results)
            facts = [fact for result in results for fact in result.facts]
            if self.on_facts is not None and facts:
                self.on_facts(facts)
        except Exception as error:  # a hook's failure must not stop the listener
            log.error("MLLP hook failed: %s", error.__class__.__name__)
            self.stats.errors += 1


def _by_run(kept: list[list[_Message]]) -> Iterator[list[list[_Message]]]:
    """Groups of kept messages in order, cut where the ingest run changes (rare: the store
    began a new one)."""
    batch: list[list[_Message]] = []
    for group in kept:
        if batch and group[0].run != batch[0][0].run:
            yield batch
            batch = []
        batch.append(group)
    if batch:
        yield batch


def _defer_parse(now: float, keeping: bool, last_keep: float, kept_at: float) -> bool:
    """Whether the parse of a message kept at ``kept_at`` waits: the listener is keeping
    frames or kept some within ``_BUSY`` seconds (a burst: a keep that waited for the parser's
    save counts), and the message is younger than ``PARSE_DEFER``.

    >>> _defer_parse(now=10.0, keeping=False, last_keep=9.995, kept_at=9.0)
    True
    >>> _defer_parse(now=10.0, keeping=True, last_keep=9.5, kept_at=9.0)
    True
    >>> _defer_parse(10.0, False, 9.9, kept_at=9.0), _defer_parse(10.0, True, 9.995, kept_at=4.0)
    (False, False)
    """
    return (keeping or now - last_keep < _BUSY) and now - kept_at < PARSE_DEFER


def _store_failure(error: Exception) -> Acknowledgement:
    reason = str(error) if isinstance(error, StoreError) else error.__class__.__name__
    return Acknowledgement("AE", f"message not stored, send it again: {reason}")


def _acknowledgement(message: _Message) -> Acknowledgement:
    """The ACK of a kept message (see the module's docstring)."""
    record = message.record
    assert record is not None
    if record.refused is not None:
        return Acknowledgement("AE", record.refused, "MSH-10")
    parsed = message.parsed
    if parsed is None or parsed.fatal is None:  # a duplicate of a refused one is refused again
        return Acknowledgement("AA")
    fatal = parsed.fatal
    if _header(message.raw.content) is None and b"MSH" not in message.raw.content[:8]:
        return Acknowledgement("AR", str(fatal), fatal.position, _NOT_HL7)
    code = _MISSING if fatal.found == "" else _MALFORMED
    return Acknowledgement("AE", str(fatal), fatal.position, code)


# The listener ------------------------------------------------------------------------------


class MllpServer:
    """An MLLP listener on an asyncio loop (see the module's docstring); ``serve_mllp`` makes
    and starts one."""

    def __init__(
        self,
        store: FactStore,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_facts: FactsHook | None = None,
        on_results: ResultsHook | None = None,
        max_frame: int = MAX_FRAME,
        parser: ParserPlace = "auto",
    ) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.max_frame = max_frame
        self.stats = MllpStats()
        self._ingestor = _Ingestor(store, on_facts, on_results, self.stats, parser)
        self._service = ServiceStore(store)  # the audit log
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], bool] = {}  # task -> busy
        self._closing = False

    @property
    def parse_worker(self) -> int | None:
        """The process id of the parse worker, while one takes messages (``ParserPlace``)."""
        worker = self._ingestor.worker
        return None if worker is None else worker.pid

    async def start(self, recover_first: bool = True) -> None:
        """Parse what a killed process left unfinished (``recover``), load the code tables,
        then listen."""
        loop = asyncio.get_running_loop()
        if recover_first:
            await loop.run_in_executor(None, recover, self.store)
        # The code tables, read once, now: not while the first message's ACK waits.
        await loop.run_in_executor(None, load_code_tables)
        self._ingestor.start()
        self._server = await asyncio.start_server(self._connection, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("MLLP listening on %s:%s", self.host, self.port)

    async def close(self) -> None:
        """Stop listening, let the frames being processed get their ACK, close the
        connections, finish parsing what was kept."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        if self._connections:
            await asyncio.wait(list(self._connections))
        if self._server is not None:
            await self._server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, self._ingestor.stop)

    async def _audit(self, peer: str, stage: str, **detail: Any) -> bool:
        """An entry of the audit log for a connection (actor ``mllp:<peer address>``): written
        when it opens and when it closes, with what it sent; whether it was written."""
        entry = AuditEntry(
            actor=f"mllp:{peer}",
            roles=("feed",),
            action="ingest",
            resource=f"MLLP {self.host}:{self.port}",
            detail={"stage": stage, **detail},
        )
        try:
            await asyncio.wrap_future(self._service.submit_audit(entry))
        except StoreError as error:  # names the store, never a message
            log.error(
                "MLLP: the audit entry of a connection (%s) was not written: %s", stage, error
            )
            return False
        return True

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = False
        self.stats.connections += 1
        address = writer.get_extra_info("peername")
        peer = str(address[0]) if address else "unknown"
        document = f"{MLLP_DOCUMENT}{peer}"
        if not await self._audit(peer, "connected"):  # nothing kept without its audit entry
            del self._connections[task]
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            return
        frames = FrameReader(self.max_frame)
        acks: dict[str, int] = {"AA": 0, "AE": 0, "AR": 0}
        try:
            while not self._closing:
                data = await reader.read(_READ_BYTES)
                if not data:
                    break
                found = frames.feed(data)
                if not found:
                    continue
                self._connections[task] = True
                replies = await self._acknowledge(document, found, acks)
                writer.write(b"".join(frame(reply) for reply in replies))
                await writer.drain()
                self._connections[task] = False
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.stats.dropped_bytes += frames.dropped
            if frames.partial:
                log.info("MLLP: a connection closed inside a frame (not acknowledged)")
            del self._connections[task]
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()
            await self._audit(
                peer,
                "closed",
                frames=sum(acks.values()),
                acks=acks,
                dropped_bytes=frames.dropped,
                closed_inside_a_frame=frames.partial,
            )

    async def _acknowledge(
        self, document: str, found: list[bytes | Oversized], acks: dict[str, int]
    ) -> list[bytes]:
        loop = asyncio.get_running_loop()
        futures = []
        for content in found:
            self.stats.frames += 1
            future: asyncio.Future[tuple[str, bytes]] = loop.create_future()
            futures.append(future)
            if isinstance(content, Oversized):
                refused = Acknowledgement(
                    "AR",
                    f"a message of at most {self.max_frame} bytes, got {content.size}",
                    error_code=_TOO_LONG,
                )
                _Frame(b"", [], future, loop, refused).acknowledge()
                continue
            number = self.stats.frames
            messages = [
                _Message(_numbered(raw, number))
                for raw in self._ingestor.connector.split(document, content)
            ]
            self._ingestor.submit(_Frame(content, messages, future, loop))
        replies = []
        for future in futures:
            code, reply = await future
            self.stats.acks[code] += 1
            acks[code] += 1
            replies.append(reply)
        return replies


def _numbered(raw: RawMessage, number: int) -> RawMessage:
    """A frame's message located by the frame's rank on the listener."""
    position = f"message {number}"
    if raw.position and raw.position != "message 1":
        position += f", {raw.position} of the frame"
    return dataclasses.replace(raw, position=position)


async def serve_mllp(
    store: FactStore,
    host: str = "127.0.0.1",
    port: int = 2575,
    *,
    on_facts: FactsHook | None = None,
    on_results: ResultsHook | None = None,
    max_frame: int = MAX_FRAME,
    recover_first: bool = True,
    parser: ParserPlace = "auto",
) -> MllpServer:
    """Start an MLLP listener on the running loop; ``await server.close()`` stops it.

    ``port`` 0 picks a free port (``server.port``). ``on_facts`` receives the facts of each
    group of messages stored (in arrival order), ``on_results`` their ``MessageResult``s;
    both are called from a thread of the listener (the parser, or the one that reads the
    parse worker's replies). ``parser``: where the messages are parsed (``ParserPlace``).
    """
    server = MllpServer(
        store,
        host,
        port,
        on_facts=on_facts,
        on_results=on_results,
        max_frame=max_frame,
        parser=parser,
    )
    await server.start(recover_first)
    return server


class MllpThread:
    """An MLLP listener running its own loop in a background thread: ``start_mllp_thread``
    makes one; ``stop()`` shuts it down cleanly."""

    def __init__(self, **options: object) -> None:
        self._options = options
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._failure: BaseException | None = None
        self.server: MllpServer | None = None
        self._thread = threading.Thread(target=self._run, name="mllp-listener", daemon=True)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def start(self) -> MllpThread:
        self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise self._failure
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            self.server = await serve_mllp(**self._options)  # type: ignore[arg-type]
        except BaseException as error:
            self._failure = error
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()
        await self.server.close()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop listening, finish what was received, and end the thread."""
        if self._loop is not None and self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(timeout)

    def __enter__(self) -> MllpThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_mllp_thread(
    store: FactStore,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    on_facts: FactsHook | None = None,
    on_results: ResultsHook | None = None,
    max_frame: int = MAX_FRAME,
    recover_first: bool = True,
    parser: ParserPlace = "auto",
) -> MllpThread:
    """An MLLP listener in a background thread, started (``.port`` is its port); ``parser``:
    where it parses (``ParserPlace``)."""
    return MllpThread(
        store=store,
        host=host,
        port=port,
        on_facts=on_facts,
        on_results=on_results,
        max_frame=max_frame,
        recover_first=recover_first,
        parser=parser,
    ).start()


def run_mllp(
    store: FactStore,
    host: str = "127.0.0.1",
    port: int = 2575,
    *,
    on_listening: Callable[[int], None] | None = None,
    **options: object,
) -> None:
    """Serve MLLP in this process until SIGINT or SIGTERM, then shut down cleanly.
    ``on_listening`` is told the port once listening; ``options`` are ``serve_mllp``'s
    (``parser``: where it parses, ``ParserPlace``). The process's thread switch interval
    is set to ``SWITCH_INTERVAL`` (a process that runs the listener beside other work may set
    it too)."""
    sys.setswitchinterval(SWITCH_INTERVAL)

    async def main() -> None:
        server = await serve_mllp(store, host, port, **options)  # type: ignore[arg-type]
        if on_listening is not None:
            on_listening(server.port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await server.close()

    asyncio.run(main())
