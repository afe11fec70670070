"""Benchmark: ``GET /worklist`` throughput and latency at 16 and 64 concurrent clients (target
1,000 req/s with p99 <= 50 ms at 64 clients, issue 10).

The store holds a generated hospital (``vigie.synthetic.generate``, CSV, ``--beds`` beds over
``--days`` days, seed 1, each covered rule's case rate ``--rate``: a busy hospital) ingested by
the ingest pipeline, its worklist refreshed as of the end of the period (``refresh_worklist``:
a few hundred open alerts), and a pharmacist user
(``ServiceStore.add_user``). Stores: a SQLite file, and PostgreSQL (a fresh schema of database
``test`` on 127.0.0.1, dropped at the end; ``--no-postgres`` skips it).

The server is the real one, as production runs it: ``vigie serve --no-live --no-refresh
--database URL --port P [--workers N]`` in a process of its own (one uvicorn worker, the CLI's
default, then ``--workers 2``: the port bound once, two server processes accepting on it; the
per-request log lines go to a file). The load generator is another process (so it does not take
the server's GIL; it still shares the machine's cores with the server and, for PostgreSQL, the
database): asyncio with one keep-alive connection per client and no HTTP library (the request's
bytes built once, the answer's headers read and its body by ``Content-Length``; an HTTP
library's own CPU would be taken from the server's cores), each client looping
``GET /worklist?limit=50`` (or with ``&ward=`` the ward of most open alerts) for ``--seconds``
after ``--warmup`` seconds. A request counts if it began and ended in the measured window;
any answer but 200 with a JSON object, or a transport error, is an error and is reported.

``--baseline DIR`` also runs each server imported from another source tree (``git archive
<commit> | tar -x -C DIR``), one after the other with the current one, the order alternating
between servers and rounds (``--repeat``): an A/B in one run. uvicorn parses HTTP with
httptools when it is installed (a dependency since 2026-12-07), with h11 otherwise;
``--baseline-h11`` hides httptools from the baseline's servers (a stub package first on their
path), so that a baseline from before that dependency serves as it did.

Every read writes an audit row (group commit: ``vigie.store.service.AuditWriter``). To show what
that costs, one more case per store runs a server started from a small ``python -c`` script in
which the audit does nothing: labelled "without audit (not a production setting)".

Printed per case: store, server, clients, query, req/s (ratio to 1,000), median, p99 (ratio
to 50 ms), max, errors, the CPU share of a core the server (its processes) and the load
generator used, and the server's CPU milliseconds per request answered (warm-up included: the
figure least disturbed by other work on the machine); per server its peak RSS (the workers'
sum); the load average before and after. Cases alternate (16 then 64 clients, plain then
ward), the machine is shared: compare within a run.

    .venv/bin/python benchmarks/bench_worklist.py [--seconds 20] [--warmup 3]
        [--clients 16,64] [--workers 1,2] [--beds 1000] [--days 4] [--rate 0.3] [--no-postgres]
        [--no-unaudited] [--baseline DIR] [--baseline-h11] [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench_ingest_store import postgres_schema

TARGET_RPS = 1000
TARGET_P99_MS = 50.0
TARGET_CLIENTS = 64

UNAUDITED_SERVER = (
    "import sys; from concurrent.futures import Future; "
    "from vigie.store.service import ServiceStore\n"
    "def unaudited(self, entry):\n"  # the benchmark's no-audit case only
    "    done = Future(); done.set_result(None); return done\n"
    "def unaudited_async(self, entry):\n"
    "    import asyncio; done = asyncio.get_running_loop().create_future()\n"
    "    done.set_result(None); return done\n"
    "ServiceStore.submit_audit = unaudited; ServiceStore.audit = lambda self, entry: None\n"
    "ServiceStore.submit_audit_async = unaudited_async\n"
    "from vigie.api.cli import main; sys.exit(main(sys.argv[1:]))"
)


# The store -----------------------------------------------------------------------------------


def fill_store(url: str, feeds: list[Path], as_of: Any) -> tuple[str, int, str]:
    """Ingest the hospital, refresh the worklist, add a pharmacist: (token, open alerts, the
    ward of most open alerts)."""
    from vigie.api.app import refresh_worklist
    from vigie.ingest import ingest
    from vigie.store import AlertStore, FactStore, ServiceStore

    with FactStore(url) as store:
        ingest(feeds, store, "csv")
        refresh_worklist(store, as_of)
        _, token = ServiceStore(store).add_user("bench.pharmacien", ["pharmacist"])
        alerts = AlertStore(store)
        size = alerts.worklist_size()
        wards = Counter(alert.ward for alert in alerts.worklist(limit=size or 1))
    ward = wards.most_common(1)[0][0] if wards else ""
    return token, size, ward


# The server ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(
    url: str,
    audited: bool,
    log: Path,
    token: str,
    workers: int = 1,
    source: Path | None = None,
    h11: bool = False,
) -> tuple[subprocess.Popen[bytes], int]:
    """The server (``vigie serve``, or the no-audit script) on a free port, once it answers;
    imported from the source tree ``source`` when given; with uvicorn's h11 parser when
    ``h11`` (httptools hidden)."""
    port = _free_port()
    options = ["serve", "--no-live", "--no-refresh", "--database", url, "--port", str(port)]
    options += ["--workers", str(workers)]
    if audited:
        command = [str(Path(sys.executable).parent / "vigie"), *options]
    else:
        command = [sys.executable, "-c", UNAUDITED_SERVER, *options]
    env = {**os.environ, "VIGIE_TIMEZONE": "UTC"}
    path = [str(source)] if source is not None else []
    if h11:  # uvicorn takes httptools if it imports: a package that does not, first
        hidden = log.parent / "without-httptools"
        (hidden / "httptools").mkdir(parents=True, exist_ok=True)
        (hidden / "httptools" / "__init__.py").write_text("raise ImportError('hidden')\n")
        path.insert(0, str(hidden))
    if path:
        env["PYTHONPATH"] = os.pathsep.join(path)
    # Run from the log's folder: ``python -c`` (the no-audit script) and ``python -m`` (the
    # workers of --workers) put their working directory first on sys.path, and a checkout's
    # own ``vigie`` folder there would be imported instead of ``source``.
    with log.open("ab") as out:
        child = subprocess.Popen(command, stdout=out, stderr=out, env=env, cwd=log.parent)
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the server stopped (exit {child.returncode}); see {log}")
        try:
            answer = httpx.get(
                f"http://127.0.0.1:{port}/worklist",
                headers={"Authorization": f"Bearer {token}"},
                timeout=2,
            )
            if answer.status_code == 200:
                return child, port
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    child.kill()
    raise RuntimeError(f"the server did not answer within 60 s; see {log}")


def _tree(pid: int) -> list[int]:
    """A process and its descendants (Linux; the workers of ``vigie serve --workers``)."""
    found = [pid]
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                found += _tree(int(child))
    except OSError:
        pass
    return found


def stop_server(child: subprocess.Popen[bytes]) -> float:
    """Stop the server; its peak RSS in MB (VmHWM, read before it exits; the workers' sum)."""
    peak = 0.0
    for pid in _tree(child.pid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak += int(line.split()[1]) / 1024
        except OSError:
            pass
    child.terminate()
    child.wait(60)
    return peak


# The load generator (its own process) --------------------------------------------------------


class _BadAnswer(Exception):
    """An HTTP answer the lean client cannot read (no Content-Length, a cut body)."""


async def _answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 answer: its status and body (by ``Content-Length``)."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    length = -1
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length < 0:
        raise _BadAnswer("no Content-Length")
    return status, await reader.readexactly(length)


async def _client(
    port: int, request: bytes, window: tuple[float, float], out: list[Any], every: list[int]
) -> None:
    """One client on its own keep-alive connection: the request's bytes written as built once,
    the answer's headers read and its body by ``Content-Length`` (no HTTP library: the load
    generator should cost little next to the server). A 200 must carry a JSON object."""
    began_at, end_at = window
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while (began := time.perf_counter()) < end_at:
        status: int | str
        try:
            if connection is None:
                connection = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = connection
            writer.write(request)
            status, body = await _answer(reader)
            if status == 200 and not (body.startswith(b"{") and body.endswith(b"}")):
                status = "not a JSON object"
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            _BadAnswer,
            ValueError,
            IndexError,
        ) as error:
            status = type(error).__name__
            if connection is not None:
                connection[1].close()
            connection = None
        ended = time.perf_counter()
        every[0] += 1
        if began >= began_at and ended <= end_at:
            out.append((ended - began, status))
    if connection is not None:
        connection[1].close()


async def _load(
    port: int, token: str, query: str, clients: int, warmup: float, seconds: float
) -> tuple[list[Any], int]:
    request = (
        f"GET /worklist?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
    ).encode("ascii")
    now = time.perf_counter()
    window = (now + warmup, now + warmup + seconds)
    results: list[Any] = []
    every = [0]  # every request answered, the warm-up's too
    await asyncio.gather(*(_client(port, request, window, results, every) for _ in range(clients)))
    return results, every[0]


def load_main(
    port: int, token: str, query: str, clients: int, warmup: float, seconds: float
) -> None:
    """In the load generator's process: run the clients, print the figures as JSON."""
    cpu = time.process_time()
    results, answered = asyncio.run(_load(port, token, query, clients, warmup, seconds))
    cpu = time.process_time() - cpu
    ok = sorted(latency for latency, status in results if status == 200)
    every = sorted(latency for latency, _ in results)
    errors = Counter(str(status) for _, status in results if status != 200)
    print(
        json.dumps(
            {
                "requests": len(results),
                "answered": answered,
                "rate": len(results) / seconds,
                "median_ms": statistics.median(every) * 1000 if every else float("nan"),
                "p99_ms": every[int(0.99 * (len(every) - 1))] * 1000 if every else float("nan"),
                "max_ms": every[-1] * 1000 if every else float("nan"),
                "ok": len(ok),
                "errors": dict(errors),
                "cpu_share": cpu / (warmup + seconds),
            }
        )
    )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its descendants so far (Linux), 0
    elsewhere."""
    total = 0.0
    for member in _tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def run_case(
    server: int, port: int, token: str, query: str, clients: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One load generator process against the server (pid ``server``); its figures, and the
    server's CPU share over the whole case (warm-up included)."""
    cpu, began = _cpu_seconds(server), time.perf_counter()
    command = [
        sys.executable,
        __file__,
        "--load",
        json.dumps([port, token, query, clients, args.warmup, args.seconds]),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    spent = _cpu_seconds(server) - cpu
    figures["server_cpu"] = spent / (time.perf_counter() - began)
    # per request answered during the case, warm-up included (as the CPU is)
    figures["server_ms_per_request"] = spent * 1000 / max(figures["answered"], 1)
    return dict(figures)


def _print(label: str, clients: int, what: str, figures: dict[str, Any]) -> None:
    rate, p99 = figures["rate"], figures["p99_ms"]
    errors = figures["errors"]
    said = ", ".join(f"{n} x {k}" for k, n in sorted(errors.items())) if errors else "none"
    print(
        f"{label:<52} {clients:>3} clients {what:<9} {rate:7,.0f} req/s "
        f"(ratio to {TARGET_RPS:,}: {rate / TARGET_RPS:4.2f}), median {figures['median_ms']:6.1f} "
        f"ms, p99 {p99:7.1f} ms (ratio to {TARGET_P99_MS:.0f}: {p99 / TARGET_P99_MS:5.2f}), "
        f"max {figures['max_ms']:7.1f} ms; errors {said}; CPU: server "
        f"{figures['server_cpu']:.0%} ({figures['server_ms_per_request']:.2f} ms a request), "
        f"load generator {figures['cpu_share']:.0%} of a core",
        flush=True,
    )


# The run -------------------------------------------------------------------------------------


def bench_store(
    name: str, url: str, feeds: list[Path], as_of: Any, args: argparse.Namespace, folder: Path
) -> None:
    began = time.perf_counter()
    token, size, ward = fill_store(url, feeds, as_of)
    print(
        f"\n{name}: {size:,} open alerts, ward filter {ward} "
        f"(store filled in {time.perf_counter() - began:.0f} s)",
        flush=True,
    )
    queries = {"limit=50": "limit=50", "ward": f"limit=50&ward={ward}"}
    servers = [
        (f"vigie serve ({n} uvicorn worker{'s' if n > 1 else ''})", True, n) for n in args.workers
    ]
    if not args.no_unaudited:
        servers.append(("without audit (not a production setting)", False, 1))
    sources: list[tuple[str, Path | None]] = [("", None)]
    if args.baseline is not None:
        tag = "baseline (h11), " if args.baseline_h11 else "baseline, "
        sources = [("current, ", None), (tag, args.baseline.resolve())]
    runs = [
        (f"{tag}{label}", audited, workers, source)
        for round_number in range(args.repeat)
        for number, (label, audited, workers) in enumerate(servers)
        for tag, source in (sources if (round_number + number) % 2 == 0 else sources[::-1])
    ]
    for label, audited, workers, source in runs:
        h11 = args.baseline_h11 and source is not None
        log = folder / "server.log"
        child, port = start_server(url, audited, log, token, workers, source, h11)
        try:
            for clients in args.clients if audited else [TARGET_CLIENTS]:
                for what, query in queries.items() if audited else [("limit=50", "limit=50")]:
                    _print(
                        f"{name}, {label}",
                        clients,
                        what,
                        run_case(child.pid, port, token, query, clients, args),
                    )
        finally:
            peak = stop_server(child)
        print(f"{name}, {label}: server peak RSS {peak:,.0f} MB", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--clients", default="16,64")
    parser.add_argument("--workers", default="1,2", help="vigie serve --workers, each a server")
    parser.add_argument("--beds", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.3, help="case rate per covered rule")
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-unaudited", action="store_true", help="skip the no-audit case")
    parser.add_argument("--baseline", type=Path, help="a source tree to compare with (A/B)")
    parser.add_argument(
        "--baseline-h11", action="store_true", help="the baseline's servers parse with h11"
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every server")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # the load generator's process
    args = parser.parse_args()
    if args.load:
        load_main(*json.loads(args.load))
        return 0
    args.clients = [int(n) for n in args.clients.split(",")]
    args.workers = [int(n) for n in args.workers.split(",")]
    os.environ.setdefault("VIGIE_TIMEZONE", "UTC")
    from vigie.synthetic import generate
    from vigie.synthetic.catalogue import covered_rules

    print(
        f"machine: {os.cpu_count()} cores, shared by the server, the load generator (its own "
        f"process) and PostgreSQL; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"each case: {args.warmup:.0f} s warm-up, then {args.seconds:.0f} s measured")
    try:
        import httptools  # noqa: F401

        parser_name = "httptools"
    except ImportError:
        parser_name = "h11"
    print(f"uvicorn's HTTP parser: {parser_name}" + (" (h11 for the baseline)" * args.baseline_h11))
    with tempfile.TemporaryDirectory(prefix="vigie-bench-worklist-") as name:
        folder = Path(name)
        rates = dict.fromkeys(covered_rules(), args.rate)
        hospital = folder / "hospital"
        summary = generate(args.beds, args.days, 1, "csv", hospital, rates=rates, min_cases=1)
        feeds = list(summary.feed_files)
        as_of = summary.start + timedelta(days=args.days)
        print(
            f"hospital: {args.beds} beds, {args.days} days, case rate {args.rate} per rule; "
            f"worklist as of {as_of:%Y-%m-%d}"
        )
        bench_store("SQLite", f"sqlite:///{folder / 'vigie.db'}", feeds, as_of, args, folder)
        if not args.no_postgres:
            with postgres_schema() as url:
                bench_store("PostgreSQL", url, feeds, as_of, args, folder)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nbenchmark process peak RSS {peak:.0f} MB; load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
