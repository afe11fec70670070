"""The ``vigie`` command line: one entry point, one sub-command per job.

Exit codes are ``ExitCode`` (listed by ``vigie --help`` with the settings). A Vigie error is
one line on stderr with its exit code, never a traceback: a bad setting (``ConfigurationError``),
the store (``StoreError``), a bad mapping file or site table (``FeedError``), any other
``VigieError``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING

from platformdirs import user_data_dir

from vigie import settings
from vigie.connectors.base import FeedError
from vigie.connectors.registry import FORMATS
from vigie.engine.factset import FactSet
from vigie.engine.quality import QualityTally, quality_report, render_text
from vigie.errors import ConfigurationError, VigieError
from vigie.ingest import FileReport, IngestReport, ingest, read_feed
from vigie.ingest.unmapped import Unmapped
from vigie.store import AuditEntry, FactStore, ServiceError, StoreError

if TYPE_CHECKING:
    from vigie.store.alerts import Reconciled
    from vigie.synthetic import GenerationSummary

__all__ = ["EXIT_CODE_MEANINGS", "ExitCode", "main"]


class ExitCode(IntEnum):
    """What ``vigie`` returns (sub-commands return these values, as plain ints too)."""

    OK = 0
    PROBLEMS = 1
    USAGE = 2
    STORE = 3


EXIT_CODE_MEANINGS = {
    ExitCode.OK: "success",
    ExitCode.PROBLEMS: "the job ran and found problems: rejected or unreadable input, a pack "
    "that does not compile, a failing rule test, an error in the rules or the engine",
    ExitCode.USAGE: "bad arguments or configuration: a command not available yet, a bad "
    "setting, mapping file or site table",
    ExitCode.STORE: "the store could not be opened or written",
}

_LATER = {
    "replay": "replay (issue: evaluation engine)",
}


def _add_generate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("generate", help="write a synthetic hospital's feeds and ground truth")
    p.add_argument("--beds", type=int, default=200)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--format", choices=("fhir", "hl7", "csv"), default="fhir")
    p.add_argument(
        "--start",
        type=datetime.fromisoformat,
        default=None,
        help="first day of the period (ISO date; default: a fixed date)",
    )
    p.add_argument("--out", type=Path, required=True)


def _add_rules(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rules = sub.add_parser("rules", help="check, test and import rule packs")
    actions = rules.add_subparsers(dest="rules_command", required=True)
    check = actions.add_parser("check", help="compile packs and print every diagnostic")
    check.add_argument("packs", nargs="+", type=Path, metavar="PACK")
    check.add_argument("--show-ir", action="store_true", help="print the compiled IR (JSON)")
    test = actions.add_parser("test", help="run rule test cases against packs")
    test.add_argument("paths", nargs="+", type=Path, metavar="PACK_OR_TESTS")
    mutate = actions.add_parser(
        "mutate",
        help="double and halve each threshold and window of a pack in turn; report the "
        "changes no rule test case notices",
    )
    mutate.add_argument("pack", type=Path, metavar="PACK")
    mutate.add_argument(
        "--only", nargs="+", default=[], metavar="RULE", help="rules (or defines) to mutate"
    )
    source = actions.add_parser(
        "source", help="print the Python each rule of a pack is compiled to (what the engine runs)"
    )
    source.add_argument("pack", type=Path, metavar="PACK")
    source.add_argument("--rule", nargs="+", default=[], metavar="RULE", help="these rules only")
    ansm = actions.add_parser("import-ansm", help="generate the ANSM interaction pack")
    ansm.add_argument(
        "--thesaurus",
        type=Path,
        metavar="DIR",
        help="folder of the thesaurus JSON (default: ../shared/data/...)",
    )
    ansm.add_argument("--out", type=Path, default=Path("rules/packs/ansm-interactions.rules"))
    ansm.add_argument(
        "--report", type=Path, default=Path("rules/packs/ansm-interactions-report.md")
    )


def _add_service(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the pharmacist's service (HTTP API)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--database",
        metavar="URL",
        help="the store (default: VIGIE_DATABASE_URL, else the user's SQLite file)",
    )
    serve.add_argument(
        "--as-of",
        type=_as_of,
        metavar="TIME",
        help="refresh the worklist as of this time at start (default: now)",
    )
    serve.add_argument(
        "--no-refresh",
        action="store_true",
        help="serve the worklist as stored: no evaluation at start, no live worklist",
    )
    serve.add_argument(
        "--no-live",
        action="store_true",
        help="no live worklist: ingested facts are stored, the worklist is refreshed at start only",
    )
    serve.add_argument(
        "--tick",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how often the live worklist evaluates what time passing changed (default: 30)",
    )
    serve.add_argument(
        "--mllp-port",
        type=int,
        metavar="PORT",
        help="also listen for HL7 v2 over MLLP on this port (e.g. 2575)",
    )
    serve.add_argument(
        "--mllp-host", default=None, metavar="HOST", help="the MLLP listener's (default: --host)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="HTTP server processes sharing the port (default: 1); more than one needs "
        "--no-live or --no-refresh and no --mllp-port (the live worklist and the MLLP listener "
        "run in one process)",
    )
    # A worker of --workers: joins the port's SO_REUSEPORT group with a socket of its own.
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    users = sub.add_parser("users", help="the service's users and their tokens")
    actions = users.add_subparsers(dest="users_command", required=True)
    add = actions.add_parser("add", help="add a user with roles; print its token (once)")
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--role",
        dest="roles",
        action="append",
        required=True,
        choices=("pharmacist", "rule_author", "admin", "feed"),
        help="a role (repeat for several)",
    )
    add.add_argument("--database", metavar="URL", help="the store (default: as vigie serve)")
    actions.add_parser("list", help="the users and their roles").add_argument(
        "--database", metavar="URL"
    )
    token = actions.add_parser(
        "token", help="issue a new token for an existing user; print it (once)"
    )
    token.add_argument("name", metavar="NAME")
    token.add_argument(
        "--replace",
        action="store_true",
        help="revoke the user's other tokens in the same transaction (a lost or leaked token)",
    )
    token.add_argument("--database", metavar="URL", help="the store (default: as vigie serve)")
    for action, what in (
        ("revoke", "revoke every token of a user (the user stays: `token` gives a new one)"),
        ("disable", "disable a user: their tokens are refused (kept, for `enable`)"),
        ("enable", "enable a disabled user again (their tokens not revoked work again)"),
    ):
        command = actions.add_parser(action, help=what)
        command.add_argument("name", metavar="NAME")
        command.add_argument(
            "--database", metavar="URL", help="the store (default: as vigie serve)"
        )
    metrics = sub.add_parser(
        "metrics", help="the quality figures of GET /metrics (IP per 100 beds, funnel, PPV...)"
    )
    metrics.add_argument("--from", dest="start", type=date.fromisoformat, metavar="DAY")
    metrics.add_argument("--to", dest="end", type=date.fromisoformat, metavar="DAY")
    metrics.add_argument("--hospital")
    metrics.add_argument("--ward")
    metrics.add_argument("--json", action="store_true", help="the JSON of GET /metrics")
    metrics.add_argument("--database", metavar="URL", help="the store (default: as vigie serve)")


def _cmd_serve(args: argparse.Namespace) -> int:
    from vigie.api.app import refresh_worklist

    def refreshed(done: Reconciled, how: str = "") -> None:
        print(
            f"Worklist refreshed: {len(done.opened):,} new, {len(done.reopened):,} "
            f"reopened, {len(done.resolved):,} resolved, {len(done.kept):,} unchanged{how}",
            flush=True,
        )

    live = not (args.no_refresh or args.no_live)
    if args.workers < 1:
        raise SystemExit("vigie serve: --workers is 1 or more")
    if args.workers > 1 and (live or args.mllp_port is not None):
        raise SystemExit(
            "vigie serve: --workers N (N > 1) needs --no-live or --no-refresh and no "
            "--mllp-port: the live worklist and the MLLP listener keep their state in one process"
        )
    with FactStore(args.database or None) as store:
        print(f"Store: {store.safe_url}")
        if not live and not args.no_refresh and not args.worker:  # the parent of workers did
            refreshed(refresh_worklist(store, args.as_of))
        if args.workers == 1:
            return _serve_one(args, store, live, refreshed)
        url = store.url
    return _serve_workers(args, url)


def _freeze() -> None:
    """Move what the process holds for its life out of the garbage collector's generations:
    the app's compiled packs and code sets (about a million objects), then the facts the
    live worklist loaded at start. A full collection walked them all every few thousand
    requests, stalling every request meanwhile (100 ms and more: the p99 of ``GET
    /worklist`` and of CDS Hooks calls). Objects freed later by reference counting are freed
    as before; only cycles among frozen objects are never collected (the evaluators a new
    site configuration replaces are freed by reference counting: checked with weak references).
    Called again after a configuration built new evaluators: one collection of what is not
    frozen yet, instead of the periodic full ones walking them."""
    gc.collect()
    gc.freeze()


def _serve_one(
    args: argparse.Namespace, store: FactStore, live: bool, refreshed: Callable[..., None]
) -> int:
    """Serve the app on the store in this process (with the live worklist when ``live``)."""
    import uvicorn

    from vigie.api.app import create_app

    mllp = None
    if args.mllp_port is not None:
        mllp = (args.mllp_host or args.host, args.mllp_port)  # the app logs where it listens
    app = create_app(
        store=store,
        live=live,
        refresh=not args.no_refresh,
        as_of=args.as_of,
        tick_seconds=args.tick,
        mllp=mllp,
    )
    if app.state.live is not None:  # started with the app: every stored fact evaluated

        def started(done: Reconciled, at: datetime) -> None:
            refreshed(done, f" (live worklist, as of {at:%Y-%m-%dT%H:%M}Z)")
            _freeze()  # the facts the live worklist holds from now on, likewise

        app.state.live.on_start = started
        # the new evaluators of a site configuration saved later hold the facts again
        app.state.live.on_configured = _freeze
    _log_requests()
    _freeze()
    # The server's access log would print query strings (patient ids): the app logs each
    # request by its route's template instead.
    if not args.worker:
        uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info")
        return ExitCode.OK
    server = uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="info"))
    server.run(sockets=[_reuse_port_socket(args.host, args.port, listen=True)])
    return ExitCode.OK


def _reuse_port_socket(host: str, port: int, listen: bool) -> socket.socket:
    """A TCP socket bound to ``(host, port)`` with SO_REUSEPORT, listening if ``listen``.

    The workers of ``--workers`` each listen on a socket of their own in the port's
    SO_REUSEPORT group, so the kernel spreads new connections evenly between them by their
    addresses. With one socket shared by every worker, the first worker to wake accepted
    every waiting connection at once (asyncio accepts in a loop): measured with 64 keep-alive
    clients and 2 workers, one of them served almost all of them (103 % of a core for the
    server instead of 160-170 %). The parent holds a bound socket that does not listen: it
    reserves the port (and gives its number when 0 is asked) and gets no connection."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    # proto given: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP (with
    # 0, Nagle's algorithm stays on and every answer waits ~40 ms for the delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _serve_workers(args: argparse.Namespace, url: str) -> int:
    """``--workers N``: reserve the port here, then run N ``vigie serve`` processes each
    listening on it (SO_REUSEPORT: the kernel spreads the connections evenly), until
    interrupted or one stops. The workers refresh nothing at start (done here); with
    ``--no-live`` the one that saves a site configuration refreshes the store's worklist.
    Each worker has its own store connections, worklist pages and token cache (what they keep
    is checked against the store: ``vigie.api.routes.worklist``, ``vigie.api.auth``)."""
    import signal
    import subprocess

    try:
        listener = _reuse_port_socket(args.host, args.port, listen=False)
    except OSError as error:
        raise SystemExit(f"vigie serve: cannot bind {args.host}:{args.port}: {error}") from None
    host, port = listener.getsockname()[:2]
    mode = "--no-refresh" if args.no_refresh else "--no-live"
    command = [sys.executable, "-m", "vigie.api.cli", "serve", mode, "--worker"]
    command += ["--database", url, "--host", host, "--port", str(port)]
    if args.as_of is not None:
        command += ["--as-of", args.as_of.isoformat()]
    workers = [subprocess.Popen(command) for _ in range(args.workers)]
    print(f"{args.workers} workers serving http://{args.host}:{port}", flush=True)

    def stop(*_: object) -> None:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        while all(worker.poll() is None for worker in workers):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        for worker in workers:
            worker.wait()
        listener.close()
    return ExitCode.OK


def _log_requests() -> None:
    """The service's own log lines (one per request, by route template) on stderr."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("vigie")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _cmd_users(args: argparse.Namespace) -> int:
    """``vigie users``: add, list, token, revoke, disable, enable. Every change is written to
    the audit log (actor ``cli:<login>``, action ``user:<command>``) in its transaction."""
    from vigie.store import ServiceStore

    with FactStore(args.database or None) as store:
        service = ServiceStore(store)
        command = args.users_command
        if command == "list":
            for user in service.users():
                state = "" if user.active else "\tdisabled"
                print(f"{user.name}\t{','.join(user.roles)}{state}")
            return ExitCode.OK
        name = args.name
        if command == "add":
            entry = _user_audit("add", name, roles=sorted(set(args.roles)))
            user, token = service.add_user(name, args.roles, entry)
            print(f"User {user.name} ({', '.join(user.roles)}) added to {store.safe_url}.")
        elif command == "token":
            entry = _user_audit("token", name, replace=args.replace)
            token = service.new_token(name, entry, replace=args.replace)
            others = "revoked" if args.replace else "still valid (vigie users revoke)"
            print(
                f"A new token for {name} in {store.safe_url}; the user's other tokens are {others}."
            )
            if not any(user.name == name and user.active for user in service.users()):
                print(f"{name} is disabled: the token works once enabled (vigie users enable).")
        elif command == "revoke":
            count = service.revoke_tokens(name, _user_audit("revoke", name))
            print(f"{count} token(s) of {name} revoked in {store.safe_url}; the user stays.")
            return ExitCode.OK
        else:
            active = command == "enable"
            changed = service.set_active(name, active, _user_audit(command, name, active=active))
            was = "" if changed else " (it was already)"
            print(f"User {name} {command}d{was} in {store.safe_url}.")
            return ExitCode.OK
        print("Token (shown once; only its hash is kept):")
        print(token)
    return ExitCode.OK


def _user_audit(command: str, name: str, **detail: object) -> AuditEntry:
    """The audit entry of a ``vigie users`` change: the actor is the operating-system login
    that ran it (the command line has no Vigie user), with no role."""
    import getpass

    try:
        login = getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment nor the password database
        login = "unknown"
    return AuditEntry(f"cli:{login}", (), f"user:{command}", f"user {name}", detail=detail)


def _cmd_metrics(args: argparse.Namespace) -> int:
    """The figures of ``GET /metrics`` (docs/metrics.md), as text or as its JSON."""
    import dataclasses

    from vigie.rules.check import INTERVENTION_CODES, PROBLEM_CODES
    from vigie.store import ServiceStore
    from vigie.store.metrics import MetricsFilter, compute

    with FactStore(args.database or None) as store:
        figures = compute(
            ServiceStore(store),
            MetricsFilter(args.start, args.end, args.hospital, args.ward),
            problem_labels=PROBLEM_CODES,
            intervention_labels=INTERVENTION_CODES,
        )
    if args.json:
        print(json.dumps(dataclasses.asdict(figures), ensure_ascii=False, indent=2))
        return ExitCode.OK

    def shown(value: object) -> str:
        return "-" if value is None else str(value)

    period = ", ".join(f"{k} {v}" for k, v in figures.period.items()) or "all"
    print(f"Period: {period} (days in {figures.time_zone})")
    print("\nIP per 100 beds per month (hospital, ward, month, IP, beds, rate):")
    for h in figures.ip_per_100_beds.hospitals:
        cut = " (partial)" if h.partial else ""
        print(f"  {h.hospital}\t*\t{h.month}\t{h.ip}\t{h.beds}\t{shown(h.ip_per_100_beds)}{cut}")
    for w in figures.ip_per_100_beds.wards:
        note = f"  [{w.note}]" if w.note else ""
        print(
            f"  {shown(w.hospital)}\t{shown(w.ward)}\t{w.month}\t{w.ip}\t{shown(w.beds)}\t"
            f"{shown(w.ip_per_100_beds)}{note}"
        )
    print("\nFunnel and PPV per rule (alerts, decided, relevant, IP, accepted; PPV):")
    ppv = {row.rule_id: row.ppv for row in [*figures.ppv, figures.ppv_total]}
    for f in [*figures.funnel.by_rule, figures.funnel.total]:
        print(
            f"  {f.rule_id or 'all rules'}\t{f.alerts}\t{f.decided}\t{f.relevant}\t{f.ip}\t"
            f"{f.accepted}\t{shown(ppv[f.rule_id])}"
        )
    times = figures.time_to_decision
    print("\nMedian hours to decision:")
    for t in [*times.by_rule, times.overall]:
        print(f"  {t.rule_id or 'all rules'}\t{shown(t.median_hours)}\t({t.decisions} decisions)")
    print("\nIPs by SFPC problem code:")
    for c in figures.ip_by_problem:
        print(f"  {shown(c.code)}\t{c.ip}\t{c.label or ''}")
    print("IPs by SFPC intervention code:")
    for c in figures.ip_by_intervention:
        print(f"  {shown(c.code)}\t{c.ip}\t{c.label or ''}")
    days = figures.alerts_per_day
    if days:
        total = sum(d.total for d in days)
        print(f"\nAlerts opened: {total:,} over {len(days)} days ({days[0].day} to {days[-1].day})")
    for note in figures.notes:
        print(f"Note: {note}")
    return ExitCode.OK


def _as_of(text: str) -> datetime:
    from vigie.api.batch import parse_time

    try:
        return parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_batch(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "batch", help="evaluate every inpatient of the feeds as of a time; write the alerts"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        nargs="+",
        type=Path,
        default=[],
        metavar="PATH",
        help="feed files or folders (any connector format), or one folder of fact frames "
        "(Parquet, vigie.store.parquet)",
    )
    source.add_argument(
        "--store",
        nargs="?",
        const="",
        metavar="URL",
        help="read the facts from a fact store, as columns (default: VIGIE_DATABASE_URL)",
    )
    p.add_argument(
        "--as-of", type=_as_of, required=True, metavar="TIME", help="ISO 8601; no offset = UTC"
    )
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help=".json or .parquet")
    p.add_argument(
        "--rules",
        nargs="+",
        type=Path,
        default=[],
        metavar="PACK",
        help="packs to run (default: the default and ANSM packs)",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="site configuration (TOML)")
    p.add_argument(
        "--engine",
        choices=("local", "spark"),
        default="local",
        help="local: this process (default); spark: Apache Spark, partitioned by patient "
        "(master VIGIE_SPARK_MASTER; pip install 'vigie[spark]')",
    )
    p.add_argument(
        "--scope",
        choices=("inpatients", "all"),
        default="inpatients",
        help="inpatients: a stay whose period contains --as-of (default); all: every patient",
    )
    p.add_argument("--format", choices=("auto", *FORMATS), default="auto")
    p.add_argument("--mapping", type=Path, metavar="FILE", help="CSV mapping file (TOML)")


def _cmd_batch(args: argparse.Namespace) -> int:
    from vigie.api.batch import BatchError, batch, render_summary
    from vigie.engine.site_config import SiteConfigError

    _configure_mapping(args)
    try:
        result, notes, summary = batch(
            args.input,
            args.as_of,
            args.out,
            args.rules,
            args.config,
            args.scope,
            args.format,
            args.engine,
            args.store,
        )
    except BatchError as error:
        print(f"vigie batch: {error}", file=sys.stderr)
        return ExitCode.USAGE if error.usage else ExitCode.PROBLEMS
    except SiteConfigError as error:
        print(f"vigie batch: configuration error: {error}", file=sys.stderr)
        return ExitCode.USAGE
    except OSError as error:
        print(f"vigie batch: cannot write {args.out}: {error.strerror}", file=sys.stderr)
        return ExitCode.USAGE
    print(f"Batch as of {result.as_of:%Y-%m-%dT%H:%M}Z, scope {args.scope}")
    print(render_summary(summary, notes, args.out))
    problems = notes.unread() or notes.messages["rejected"]
    return ExitCode.PROBLEMS if problems else ExitCode.OK


def _cmd_rules(args: argparse.Namespace) -> int:
    if args.rules_command == "check":
        from vigie.rules import check_command

        return check_command(args.packs, show_ir=args.show_ir)
    if args.rules_command == "import-ansm":
        from vigie.rules.packs.ansm import import_command

        return import_command(args.thesaurus, args.out, args.report)
    if args.rules_command == "source":
        return _rules_source(args.pack, args.rule)
    if args.rules_command == "mutate":
        from vigie.rules.testing.mutate import mutate_command

        return mutate_command(args.pack, args.only)
    from vigie.rules.testing.runner import test_command

    return test_command(args.paths)


def _rules_source(pack: Path, only: Sequence[str]) -> int:
    """``vigie rules source PACK [--rule ID...]``: each rule's generated Python, headed by its id,
    version and source line; diagnostics on stderr as ``rules check`` prints them."""
    from vigie.engine import load_pack
    from vigie.rules import compile_files, render

    (compiled,) = compile_files([pack])
    for diagnostic in compiled.diagnostics:
        print(render(diagnostic, compiled.source), file=sys.stderr)
    if compiled.ir is None:
        print(f"vigie rules source: {pack} does not compile", file=sys.stderr)
        return ExitCode.PROBLEMS
    rules = load_pack(compiled.ir).rules
    unknown = sorted(set(only) - {rule.id for rule in rules})
    if unknown:
        print(f"vigie rules source: no rule {', '.join(unknown)} in {pack}", file=sys.stderr)
        return ExitCode.USAGE
    for rule in rules:
        if not only or rule.id in only:
            print(f"# rule {rule.id} v{rule.version} ({rule.file}:{rule.line})\n{rule.source}\n")
    return ExitCode.OK


def _epilog() -> str:
    """The settings and the exit codes, for ``vigie --help``; both from their declarations."""
    lines = ["settings (environment variables; an empty one counts as unset):"]
    for setting in settings.describe():
        lines.append(f"  {setting.variable} ({setting.kind}; default: {setting.default})")
        lines += textwrap.wrap(setting.doc, 96, initial_indent=" " * 6, subsequent_indent=" " * 6)
    lines += ["", "exit codes:"]
    for code in ExitCode:
        meaning = f"  {code.value}  {code.name}: {EXIT_CODE_MEANINGS[code]}"
        lines += textwrap.wrap(meaning, 96, subsequent_indent=" " * 5)
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vigie",
        description="Vigie: clinical pharmacy decision support (SADP).",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate a small hospital, ingest it, report quality")
    demo.add_argument("--beds", type=int, default=60)
    demo.add_argument("--days", type=int, default=7)
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--format", choices=("fhir", "hl7", "csv"), default="hl7")
    demo.add_argument(
        "--store",
        metavar="URL",
        help="an empty store to load the demo into (default: the demo's own SQLite file, emptied "
        "first; never VIGIE_DATABASE_URL's store)",
    )
    demo.add_argument(
        "--serve",
        action="store_true",
        help="then refresh the worklist and serve the pharmacist's page on the demo's store, with "
        "a pharmacist user whose token is printed",
    )
    demo.add_argument("--host", default="127.0.0.1", help="with --serve (default: 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8000, help="with --serve (default: 8000)")
    _add_generate(sub)
    ing = sub.add_parser("ingest", help="load feeds into the store")
    ing.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    ing.add_argument("--format", choices=("auto", *FORMATS), default="auto")
    ing.add_argument(
        "--mapping",
        type=Path,
        metavar="FILE",
        help="mapping file (TOML) for CSV exports (default: $VIGIE_CSV_MAPPING, "
        "else the synthetic hospital's layout)",
    )
    quality = sub.add_parser("quality", help="data-quality report on feeds or on the store")
    quality.add_argument(
        "--input",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="files or folders to read (default: the store)",
    )
    quality.add_argument("--format", choices=("auto", *FORMATS), default="auto")
    quality.add_argument("--mapping", type=Path, metavar="FILE", help="CSV mapping file (TOML)")
    quality.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_rules(sub)
    _add_batch(sub)
    _add_service(sub)
    for name, what in _LATER.items():
        sub.add_parser(name, help=f"not available yet: {what}")
    return parser


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "none"


def _print_ingest(report: IngestReport, max_errors: int = 20) -> None:
    for file in report.files:
        if not file.skipped:
            print(f"{file.path} [{file.format or '?'}]: messages: {_counts(file.messages)}")
    print(
        f"Facts read (a record re-sent in several messages counts each time): "
        f"{_counts(report.total_facts())}"
    )
    print(f"Messages: {_counts(report.total_messages())}")
    if report.total_retractions():
        print(f"Facts withdrawn by their sender: {_counts(report.total_retractions())}")
    if report.total_corrections():
        print(
            f"Corrections: {report.total_corrections():,} new versions of messages already "
            "stored (every version kept; the one with the latest sender time applies, "
            "'superseded' counts versions older than the one stored)"
        )
    rejected, skipped = report.rejected(), report.skipped()
    read = len(report.files) - len(rejected) - len(skipped) - len(report.unreadable())
    print(f"Files: {read:,} read, {len(rejected):,} rejected, {len(skipped):,} skipped (not feeds)")
    for why in rejected:
        print(f"Rejected: {why}")
    for why in skipped:
        print(f"Skipped: {why}")
    for unreadable in report.unreadable():
        print(f"Not read: {unreadable}")
    errors = report.errors()
    if errors:
        print(f"Errors ({len(errors):,}; kept in the dead-letter store):")
        for error in errors[:max_errors]:
            print(f"  {error}")
        if len(errors) > max_errors:
            print(f"  ... {len(errors) - max_errors:,} more")
    _print_unmapped(report.unmapped(), max_errors)


def _print_unmapped(found: list[Unmapped], limit: int) -> None:
    """The codes and units no table maps: loaded, but invisible to the rules (warnings)."""
    if not found:
        return
    facts = sum(u.count for u in found)
    print(
        f"Unmapped codes and units ({len(found):,} distinct, on {facts:,} facts stored but "
        "invisible to the rules; `vigie quality` lists them all):"
    )
    for u in found[:limit]:
        code = f"{u.system or 'LOCAL'}|{u.code}" if u.code is not None else u.text
        unit = f" unit {u.unit!r}" if u.unit is not None else ""
        print(f"  {u.type} {u.kind} {code}{unit}: {u.count:,}x, first at {u.position}")
    if len(found) > limit:
        print(f"  ... {len(found) - limit:,} more")


def _configure_mapping(args: argparse.Namespace) -> None:
    if getattr(args, "mapping", None) is not None:
        from vigie.connectors.tabular import connector as tabular

        tabular.configure(args.mapping)


def _cmd_ingest(args: argparse.Namespace) -> int:
    _configure_mapping(args)
    with FactStore() as store:
        report = ingest(args.paths, store, args.format)
        print(f"Store: {store.safe_url}")
    _print_ingest(report)
    problems = report.total_messages()["rejected"] or report.unreadable() or report.rejected()
    return ExitCode.PROBLEMS if problems else ExitCode.OK


def _cmd_quality(args: argparse.Namespace) -> int:
    _configure_mapping(args)
    tally = QualityTally()
    files: list[FileReport] = []
    if args.input:  # message by message: the feed's facts are never all in memory
        for parsed in read_feed(args.input, args.format, files):
            tally.messages[parsed.status] += 1
            if parsed.fatal is not None:
                tally.add_errors([parsed.fatal], fatal=True)
            if parsed.outcome is not None:
                tally.add_facts(parsed.outcome.facts)
                tally.add_errors(parsed.outcome.errors)
    else:
        with FactStore() as store:
            tally.add_facts(store.iter_facts())
            tally.messages.update(store.raw_counts())
            tally.add_errors([d.error for d in store.dead_letters()])
    # a file no connector recognises, or that cannot be read, is a fatal error of the report
    unread = [f.rejected or f.unreadable for f in files if f.rejected or f.unreadable]
    tally.add_errors(unread, fatal=True)
    report = tally.report()
    if args.json:
        print(json.dumps(report.as_dict(), default=str, ensure_ascii=False, indent=2))
    else:
        print(render_text(report))
        if files:
            skipped = [f.skipped for f in files if f.skipped]
            read = len(files) - len(unread) - len(skipped)
            print(
                f"Files: {read:,} read, {len(unread):,} rejected or unreadable, "
                f"{len(skipped):,} skipped (not feeds)"
            )
            for line in [*unread, *skipped]:
                print(f"  {line}")
    return ExitCode.PROBLEMS if unread else ExitCode.OK


def _generate(args: argparse.Namespace, out: Path) -> GenerationSummary:
    """Write a synthetic hospital and say what it holds."""
    from vigie.synthetic import generate

    summary = generate(
        args.beds, args.days, args.seed, args.format, out, start=getattr(args, "start", None)
    )
    print(summary.describe())
    return summary


def _cmd_generate(args: argparse.Namespace) -> int:
    _generate(args, args.out)
    return ExitCode.OK


def _print_alerts(facts: FactSet, as_of: datetime, shown: int = 12) -> None:
    """Evaluate the default packs on every patient and print the worklist's head (the code path
    of ``vigie batch --scope all``: packs, evaluation, priority order)."""
    from vigie.api.batch import BatchError, in_scope, load_packs, run_packs, with_priorities

    try:
        packs = load_packs([])
    except BatchError as error:  # a shipped pack that does not compile: said, no alerts
        print(f"\n{error}")
        return
    frames = facts.frames()
    alerts = run_packs(packs, frames, as_of, in_scope(frames, as_of, "all"))
    alerts = with_priorities(alerts, frames, as_of)
    rank = {"critical": 0, "major": 1, "moderate": 2, "minor": 3}
    by_severity: Counter[str] = Counter(a.severity for a in alerts)
    print(
        f"\nAlerts as of {as_of:%Y-%m-%d %H:%M} UTC: {len(alerts):,} "
        f"({', '.join(f'{s} {by_severity[s]}' for s in rank if by_severity[s]) or 'none'}) "
        f"for {len({a.patient_id for a in alerts}):,} patients"
    )
    for rule_id, n in Counter(a.rule_id for a in alerts).most_common(10):
        print(f"  {n:>5}  {rule_id}")
    print(f"First {min(shown, len(alerts))} of the worklist:")
    for alert in alerts[:shown]:
        where = (
            alert.evidence[0].source.describe()
            if alert.evidence and alert.evidence[0].source
            else "derived"
        )
        print(
            f"  [{alert.severity}, priority {alert.priority or 0:.0f}] {alert.rule_id} "
            f"patient {alert.patient_id}"
            f" ({alert.ward or '?'}): {alert.message}\n      rule {alert.rule.file}:"
            f"{alert.rule.line}; first evidence from {where}"
        )


def _demo_store(args: argparse.Namespace) -> FactStore | None:
    """The demo's store: its own SQLite file for these parameters, emptied first, or the empty
    store ``--store`` names. Never one that holds other data (``None``: refused, said why)."""
    if args.store is None:
        folder = Path(user_data_dir("vigie", appauthor=False)) / "demo"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"demo-{args.format}-{args.beds}beds-{args.days}days-seed{args.seed}.db"
        store = FactStore(f"sqlite:///{folder / name}")
        store.reset()  # the demo's own file: a rerun starts from an empty hospital
        return store
    store = FactStore(args.store)
    held = sum(store.raw_counts().values()) + sum(store.counts().values())
    if held:
        print(
            f"vigie demo: {store.safe_url} already holds data ({held:,} messages and facts); "
            "the demo loads only into an empty store: name another --store, or none for the "
            "demo's own",
            file=sys.stderr,
        )
        store.close()
        return None
    return store


def _cmd_demo(args: argparse.Namespace) -> int:
    store = _demo_store(args)
    if store is None:
        return ExitCode.USAGE
    with store:
        with tempfile.TemporaryDirectory(prefix="vigie-demo-") as folder:
            out = Path(folder)
            print(f"Generating a {args.beds}-bed hospital over {args.days} days ({args.format})...")
            summary = _generate(args, out)
            print(f"\nIngesting into {store.safe_url} ...")
            report = ingest(summary.feed_files, store, args.format)
            _print_ingest(report, max_errors=5)
            print("\nData quality of the store:")
            facts = FactSet(store.iter_facts())
            print(render_text(quality_report(facts, store.raw_counts(), [])))
        as_of = summary.start + timedelta(days=args.days)
        _print_alerts(facts, as_of)
        if args.serve:
            return _serve_demo(args, store, summary, as_of)
    print(f"\nThe demo's store stays for a look: VIGIE_DATABASE_URL={store.safe_url} vigie quality")
    return ExitCode.OK


DEMO_HOSPITAL = "DEMO"  # the hospital code of the demo's wards
DEMO_PHARMACIST = "demo.pharmacien"


def _serve_demo(
    args: argparse.Namespace, store: FactStore, summary: GenerationSummary, as_of: datetime
) -> int:
    """The service on the demo's store: the worklist refreshed as of the end of the generated
    period, the generated wards and their beds declared (for the IP per 100 beds), a pharmacist
    user (a new token each run), then uvicorn until interrupted."""
    import uvicorn

    from vigie.api.app import create_app, refresh_worklist
    from vigie.store import ServiceStore, Ward

    print(f"\nRefreshing the worklist as of {as_of:%Y-%m-%d %H:%M} UTC ...")
    done = refresh_worklist(store, as_of)
    print(f"Worklist: {len(done.opened):,} open alerts")
    service = ServiceStore(store)
    for ward in summary.wards:
        service.put_ward(Ward(DEMO_HOSPITAL, ward.code, ward.name, ward.beds), "vigie demo")
    print(f"Wards: {len(summary.wards)} declared in hospital {DEMO_HOSPITAL} with their beds")
    known = {user.name for user in service.users()}
    name = DEMO_PHARMACIST
    for n in range(2, 1000):
        if name not in known:
            break
        name = f"{DEMO_PHARMACIST}{n}"
    _, token = service.add_user(name, ["pharmacist"])
    app = create_app(store=store)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"\nThe pharmacist's page: http://{shown_host}:{args.port}/\n"
        f"Log in as {name} with this token (shown once; only its hash is kept):\n{token}\n"
        "Stop with Ctrl+C; the store stays: "
        f"vigie serve --database {store.safe_url} --as-of {as_of:%Y-%m-%dT%H:%M}"
    )
    _log_requests()
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="info")
    return ExitCode.OK


def _check_settings() -> None:
    """Read every setting now, so that a bad one is one error before any work, not one per
    message; the hospital's time zone is read again (a long-lived caller may have changed it)."""
    settings.reload()
    settings.current()
    settings.site_timezone()


def _exit_code(error: VigieError) -> ExitCode:
    if isinstance(error, ServiceError):  # a record refused (a duplicate user): not the store
        return ExitCode.USAGE
    if isinstance(error, StoreError):
        return ExitCode.STORE
    if isinstance(error, ConfigurationError | FeedError):  # a setting, mapping file, site table
        return ExitCode.USAGE
    return ExitCode.PROBLEMS


def _describe(error: VigieError) -> str:
    """One line for the user: what went wrong, without a traceback."""
    prefix = "configuration error: " if isinstance(error, ConfigurationError) else ""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return f"vigie: {prefix}{text}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _LATER:
        print(
            f"vigie {argv[0]}: not available yet; it comes with {_LATER[argv[0]]}.", file=sys.stderr
        )
        return ExitCode.USAGE
    args = _parser().parse_args(argv)
    commands = {
        "ingest": _cmd_ingest,
        "quality": _cmd_quality,
        "generate": _cmd_generate,
        "demo": _cmd_demo,
        "rules": _cmd_rules,
        "batch": _cmd_batch,
        "serve": _cmd_serve,
        "users": _cmd_users,
        "metrics": _cmd_metrics,
    }
    try:
        _check_settings()
        return commands[args.command](args)
    except VigieError as error:
        print(_describe(error), file=sys.stderr)
        return _exit_code(error)
    except BrokenPipeError:
        # The reader went away (`vigie rules source PACK | head`): no traceback. Point stdout
        # at /dev/null so that flushing it at exit does not fail again (Python's documented
        # way, "Note on SIGPIPE"); the output was cut, hence not success.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return ExitCode.PROBLEMS


if __name__ == "__main__":
    sys.exit(main())
