"""The MLLP listener's parse worker: a process that parses the messages the listener kept and
stores what they gave, so that the listener's interpreter is left to its event loop and keeper
(read a frame, commit it, send its ACK) and the parse runs on another core.

One worker per listener, so that messages are settled in the order they were kept (the
versions of one message id one after the other, ``FactStore.save_outcomes``). The listener
(``vigie.ingest.mllp``) sends it ``ParseBatch``es over a pipe, in order, and ``None`` to stop;
the worker answers each save with a ``ParseReply``: the last batch it finished, and the
``MessageResult``s of what it stored when the listener has hooks to call (pickled facts cost
the worker and the listener CPU: not sent otherwise).

The messages belong to the listener's ingest run, which the worker stores for
(``FactStore.store_for_run``): a message another process took over — the listener taken for
killed — is left to that process, as the listener's own store would leave it. A batch whose
parse or save fails is answered with the error's class name (never its text: it may quote a
message) and stays ``received``, for ``recover``.

The worker ends when told, or when the listener is gone (its end of the pipe closes: EOF): a
listener killed leaves no worker behind. It ignores SIGINT (a Ctrl-C reaches every process of
the terminal's group: the listener stops it after a clean shutdown); SIGTERM ends it at once,
what it was parsing left ``received``.

Workers are forked from a ``forkserver`` (never from the listener, a threaded process) that
imports this module and reads the code tables once (``vigie.ingest._worker_preload``): a worker
is ready in tens of milliseconds, not the 1.5 s of a fresh interpreter's imports.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess

from vigie import settings
from vigie.connectors.base import Connector, RawMessage
from vigie.connectors.registry import connector_for
from vigie.ingest.messages import MessageResult, result_of
from vigie.ingest.pipeline import (
    ParsedMessage,
    parse_received,
    parsed_payloads,
    raw_batches,
    save_parsed,
)
from vigie.store import FactStore
from vigie.terminology import default_terminology

__all__ = [
    "GROUP_MESSAGES",
    "WORKER_LINGER",
    "KeptMessage",
    "LogFormat",
    "ParseBatch",
    "ParseReply",
    "ParseWorker",
    "Ready",
    "Surroundings",
    "load_code_tables",
    "serve_parses",
    "worker_context",
]

log = logging.getLogger(__name__)

GROUP_MESSAGES = 500
"""At most this many messages kept per transaction (and ``BATCH_BYTES`` raw bytes), and
stored per transaction by the parser."""

WORKER_LINGER = 0.1
"""Seconds the worker waits for more kept messages before storing what they gave in one
transaction (``vigie.ingest.mllp.PARSE_LINGER`` of a parser in a thread, 0.02 s). Storing what
8 messages gave (20 ms at 400 a second) cost 1.8 ms of CPU a message, 100 messages 0.84 ms
(PostgreSQL; a transaction's statements are most of it). In the worker the wait holds no
interpreter lock the keeper needs, and on PostgreSQL a save does not hold up a keep of new
messages. Measured, 12,000 messages on one connection, SQLite: 474 messages ACKed per second
at 0.1 s, 379 at 0.02 s, p99 ACK latency 21 and 16 ms (a longer save holds SQLite's write
lock longer)."""


@dataclass(frozen=True)
class KeptMessage:
    """A message the listener kept (committed, acknowledged), to parse: its raw id, whether it
    is a new version of a message the store knew, its bytes."""

    raw_id: int
    replaced: bool
    raw: RawMessage


@dataclass(frozen=True)
class ParseBatch:
    """Messages the listener kept, numbered in the order it sent them; ``run``: the ingest run
    they belong to (the listener's)."""

    number: int
    run: int
    messages: tuple[KeptMessage, ...]


@dataclass(frozen=True)
class Ready:
    """The worker's first word: its store is open, it takes batches."""

    pid: int


@dataclass(frozen=True)
class ParseReply:
    """What a save did: the batches up to ``last`` are finished — stored, or left ``received``
    by a ``failure`` (an error's class name) — ``stored`` messages settled, and their results
    when the listener asked for them."""

    last: int
    stored: int
    results: tuple[MessageResult, ...] | None = None
    failure: str | None = None


def load_code_tables() -> None:
    """The terminology and the tables it reads on first use (compositions of combination
    products: 0.2 to 0.5 s, which a parser would spend while the first messages came in)."""
    default_terminology().drug_ingredients(None, "")


def worker_context() -> BaseContext:
    """The processes workers are made with: a forkserver that preloads the parse (spawn where
    there is none): never a fork of the threaded listener."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["vigie.ingest._worker_preload"])  # before its first start
    return context


# The worker's side ---------------------------------------------------------------------------


@dataclass
class _Parsed:
    """A kept message and, once parsed, what the connector made of it."""

    kept: KeptMessage
    parsed: ParsedMessage | None = None

    @property
    def raw(self) -> RawMessage:
        return self.kept.raw


@dataclass
class _Save:
    """The messages of one save: kept by one run, up to batch ``last``."""

    run: int
    last: int
    messages: list[_Parsed] = field(default_factory=list)


@dataclass(frozen=True)
class LogFormat:
    """How the listener's process writes the log lines of ``vigie.ingest.mllp_worker``: the
    format of the first handler they reach (``vigie serve``: time, level, logger name) and the
    level of the ``vigie`` logger."""

    fmt: str | None
    datefmt: str | None
    style: str
    level: int

    @classmethod
    def here(cls) -> LogFormat | None:
        """This process's, or None when no handler would take the lines (logging's last
        resort prints the bare message, in the worker as here)."""
        logger: logging.Logger | None = log
        while logger is not None:
            for handler in logger.handlers:
                formatter = handler.formatter or logging.Formatter()
                style = _STYLES.get(type(formatter._style), "%")
                level = logging.getLogger("vigie").getEffectiveLevel()
                return cls(formatter._fmt, formatter.datefmt, style, level)
            logger = logger.parent if logger.propagate else None
        return None

    def take(self) -> None:
        """Write this process's ``vigie`` log lines to stderr in this format (a worker's, at
        its start: the forkserver it is forked from has no logging set up)."""
        package = logging.getLogger("vigie")
        for handler in [h for h in package.handlers if h.get_name() == _WORKER_HANDLER]:
            package.removeHandler(handler)
        handler = logging.StreamHandler()
        handler.set_name(_WORKER_HANDLER)
        handler.setFormatter(logging.Formatter(self.fmt, self.datefmt, self.style))  # type: ignore[arg-type]
        package.addHandler(handler)
        package.setLevel(self.level)
        package.propagate = False  # its lines once, whatever the root logger has


_STYLES = {
    logging.PercentStyle: "%",
    logging.StrFormatStyle: "{",
    logging.StringTemplateStyle: "$",
}
_WORKER_HANDLER = "vigie-mllp-parser"


@dataclass(frozen=True)
class Surroundings:
    """What a worker takes from the listener's process: its working directory (a SQLite file
    given by a relative path), its ``VIGIE_*`` settings and its log format. A worker is forked
    from the forkserver, which has those of the moment it started."""

    directory: str
    settings: dict[str, str]
    log_format: LogFormat | None = None

    @classmethod
    def here(cls) -> Surroundings:
        variables = {k: v for k, v in os.environ.items() if k.startswith(settings.ENV_PREFIX)}
        return cls(os.getcwd(), variables, LogFormat.here())

    def take(self) -> None:
        """Make them this process's (a worker's, at its start)."""
        os.chdir(self.directory)
        if self.log_format is not None:
            self.log_format.take()
        if self.settings == Surroundings.here().settings:
            return
        for name in [name for name in os.environ if name.startswith(settings.ENV_PREFIX)]:
            del os.environ[name]
        os.environ.update(self.settings)
        settings.reload()
        default_terminology.cache_clear()  # read with the forkserver's settings


def serve_parses(
    url: str, link: Connection, with_results: bool, surroundings: Surroundings
) -> None:
    """The worker process: parse and store the batches that come over ``link`` until told to
    stop or the listener is gone (see the module's docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        surroundings.take()
        with FactStore(url) as store:
            link.send(Ready(os.getpid()))
            _serve(store, link, with_results)
    except (EOFError, OSError):  # the listener is gone: what was under way stays ``received``
        pass
    except BaseException as error:  # its class only: an error's text may quote a message
        log.error("MLLP parse worker ended: %s", error.__class__.__name__)
        raise SystemExit(1) from None
    finally:
        link.close()


def _serve(store: FactStore, link: Connection, with_results: bool) -> None:
    connector = connector_for("hl7")
    batch: ParseBatch | None = link.recv()
    while batch is not None:
        save, batch, stopping = _gather(link, batch, connector)
        link.send(_store(store, connector, save, with_results))
        if stopping:
            return
        if batch is None:
            batch = link.recv()


def _gather(
    link: Connection, first: ParseBatch, connector: Connector
) -> tuple[_Save, ParseBatch | None, bool]:
    """The kept messages of one save, each parsed as it comes: those that come within
    ``WORKER_LINGER`` of the first, at most ``GROUP_MESSAGES``, of one run; the batch of
    another run that came (rare: the listener's store began a new one), and whether the
    listener stops.

    Parsing as they come uses the wait: the save that follows is that much sooner."""
    save = _Save(first.run, first.number)
    deadline = time.monotonic() + WORKER_LINGER
    batch: ParseBatch | None = first
    while batch is not None:
        if batch.run != save.run:
            return save, batch, False
        save.last = batch.number
        save.messages.extend(_parsed_early(connector, batch))
        if len(save.messages) >= GROUP_MESSAGES:
            return save, None, False
        if not link.poll(max(0.0, deadline - time.monotonic())):
            return save, None, False
        batch = link.recv()
    return save, None, True


def _parsed_early(connector: Connector, batch: ParseBatch) -> list[_Parsed]:
    parsed = []
    for kept in batch.messages:
        message = _Parsed(kept)
        # A failure here (a ConfigurationError) is raised again by ``_store``, which leaves
        # the messages ``received`` for ``recover``.
        with contextlib.suppress(Exception):
            message.parsed = parse_received(connector, kept.raw)
        parsed.append(message)
    return parsed


def _store(store: FactStore, connector: Connector, save: _Save, with_results: bool) -> ParseReply:
    """Store what the messages gave, versions of one message id in separate transactions, so
    that each is settled against the one before (``FactStore.save_outcomes``); a failure
    stops there, the rest left ``received``."""
    store.store_for_run(save.run)
    results: list[MessageResult] = []
    stored = 0
    failure: str | None = None
    try:
        for group in raw_batches(save.messages):
            parsed = [
                (m.kept.raw_id, m.parsed or parse_received(connector, m.raw), m.kept.replaced)
                for m in group
            ]
            payloads = parsed_payloads(message for _, message, _ in parsed)
            done = save_parsed(store, parsed, payloads)
            stored += len(done)
            if with_results:
                results.extend(result_of(message) for message in done)
    except Exception as error:  # its class only: an error's text may quote a message
        failure = error.__class__.__name__
    return ParseReply(save.last, stored, tuple(results) if with_results else None, failure)


# The listener's side --------------------------------------------------------------------------

_START_POLL = 0.05  # seconds between looks at a worker that is starting


class ParseWorker:
    """The listener's side of its parse worker: starts it in the background (``start``), sends
    it the kept messages in order (``send``), reads its replies in a thread of its own, which
    reports each finished batch (``finished``: the raw ids and the reply), and starts a new
    worker when one dies (``lost``: the raw ids of the batches it had not finished, left
    ``received``). ``send`` says ``False`` when no worker could be started: the caller parses
    itself. ``stop`` lets the worker finish what it was sent, and joins it.
    """

    def __init__(
        self,
        url: str,
        with_results: bool,
        finished: Callable[[list[int], ParseReply], None],
        lost: Callable[[list[int], int | None], None],
    ) -> None:
        self._url = url
        self._with_results = with_results
        self._finished = finished
        self._lost = lost
        self._state = threading.Condition()
        self._starting = True
        self._stopping = False
        self._link: Connection | None = None  # while a worker takes batches
        self._process: BaseProcess | None = None
        self._number = 0
        self._in_flight: deque[tuple[int, list[int]]] = deque()  # (batch number, raw ids)
        self._reader = threading.Thread(target=self._run, name="mllp-parse-worker", daemon=True)

    @property
    def pid(self) -> int | None:
        """The worker's process id while one takes batches."""
        with self._state:
            process = self._process if self._link is not None else None
            return None if process is None else process.pid

    def start(self) -> None:
        self._reader.start()

    def send(self, run: int, messages: Sequence[KeptMessage]) -> bool:
        """Hand kept messages to the worker, in order (waits while one starts); ``False`` when
        there is none: the caller parses them."""
        with self._state:
            while self._starting:
                self._state.wait()
            link = self._link
            if link is None:
                return False
            self._number += 1
            batch = ParseBatch(self._number, run, tuple(messages))
            self._in_flight.append((batch.number, [kept.raw_id for kept in messages]))
        with contextlib.suppress(OSError):  # it died: the reader reports the batch lost
            link.send(batch)
        return True

    def stop(self) -> None:
        """Let the worker finish what it was sent, then end it and the reader (blocking)."""
        if not self._reader.is_alive():
            return
        with self._state:
            self._stopping = True
            while self._starting:
                self._state.wait()
            link = self._link
        if link is not None:
            with contextlib.suppress(OSError):
                link.send(None)
        self._reader.join()

    def _run(self) -> None:
        try:
            self._supervise(worker_context())
        except Exception as error:  # a bug here: the listener parses in its own thread
            log.error("MLLP: the parse worker's reader failed: %s", error.__class__.__name__)
            with self._state:
                self._starting, self._link = False, None
                process, self._process = self._process, None
                self._state.notify_all()
            if process is not None:
                process.kill()
                _ended(process)

    def _supervise(self, context: BaseContext) -> None:
        """Start a worker, report its replies until it ends, start another, until stopped."""
        while True:
            link = self._start(context)
            if link is None:
                return
            self._read(link)
            with self._state:
                self._starting = not self._stopping
                self._link = None
                lost = [raw_id for _, ids in self._in_flight for raw_id in ids]
                self._in_flight.clear()
                process, self._process = self._process, None
            exit_code = _ended(process)
            link.close()
            if lost or not self._stopping:
                self._lost(lost, exit_code)
            if self._stopping:
                return

    def _start(self, context: BaseContext) -> Connection | None:
        """A new worker's end of the pipe once it is ready; ``None`` when it cannot start
        (the caller parses in its own thread from then on) or the listener stops first."""
        link: Connection | None = None
        process: BaseProcess | None = None
        try:
            link, process = self._spawn(context)
        except Exception as error:  # its class only (see the module's docstring)
            log.error("MLLP: no parse worker (%s)", error.__class__.__name__)
        finally:
            with self._state:
                self._starting = False
                self._link, self._process = link, process
                self._state.notify_all()
        return link

    def _spawn(self, context: BaseContext) -> tuple[Connection | None, BaseProcess | None]:
        link, far_end = context.Pipe()
        process: BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=serve_parses,
            args=(self._url, far_end, self._with_results, Surroundings.here()),
            name="vigie-mllp-parser",
            daemon=True,  # ended by multiprocessing if this process exits unstopped
        )
        began = time.monotonic()
        try:
            process.start()
        except BaseException:
            link.close()
            raise
        finally:
            far_end.close()  # the worker's EOF once this process is gone
        ready = self._ready(link, process)
        if ready is not None:
            log.info("MLLP parse worker %d ready in %.2f s", ready.pid, time.monotonic() - began)
            return link, process
        link.close()
        code = _ended(process)
        if not self._stopping:
            log.error(
                "MLLP: the parse worker did not start (exit code %s): parsing in the "
                "listener's thread",
                code,
            )
        return None, None

    def _ready(self, link: Connection, process: BaseProcess) -> Ready | None:
        try:
            while not link.poll(_START_POLL):
                if self._stopping or not process.is_alive():
                    return None
            ready = link.recv()
        except (EOFError, OSError):  # it ended before its first word
            return None
        return ready if isinstance(ready, Ready) else None

    def _read(self, link: Connection) -> None:
        """Report the worker's replies until it ends (EOF)."""
        while True:
            try:
                reply: ParseReply = link.recv()
            except (EOFError, OSError):
                return
            with self._state:
                ids = []
                while self._in_flight and self._in_flight[0][0] <= reply.last:
                    ids.extend(self._in_flight.popleft()[1])
            self._finished(ids, reply)


def _ended(process: BaseProcess | None) -> int | None:
    """Wait for a worker that ended or is ending (killed if it hangs); its exit code."""
    if process is None:
        return None
    process.join(_END_WAIT)
    if process.is_alive():
        process.kill()
        process.join()
    code = process.exitcode
    process.close()
    return code


_END_WAIT = 10.0  # seconds a worker that closed its pipe may take to exit
