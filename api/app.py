"""The pharmacist's service: a FastAPI app over the fact store (``create_app``), and the
refresh of its worklist from the store's facts (``refresh_worklist``).

The app holds one ``FactStore`` (SQLite file by default, PostgreSQL by URL:
``VIGIE_DATABASE_URL`` or ``database_url``), opened and upgraded to the latest migration when
the app is made, and its ``ServiceStore`` (``app.state.service``). Routes are in
``vigie.api.routes``, one module per resource; who may call what in ``vigie.api.auth``.

Errors are answers, never tracebacks: a request that does not validate is a 422 naming each
field and why; an unknown alert 404; a decision the lifecycle refuses 409; another refusal of
the store 422; the store unreachable 503; a body over ``max_body_bytes`` 413; anything else a
500 that says only that it was logged. The application log names the method, the route's
template (``/alerts/{alert_id}``), the status and the time: never a query string, a body or an
id, which may be patient data.

>>> import tempfile
>>> app = create_app(f"sqlite:///{tempfile.mkdtemp()}/vigie.db")
>>> [path for path in sorted(app.openapi()["paths"]) if path.startswith(("/alerts", "/work"))]
['/alerts/{alert_id}', '/alerts/{alert_id}/decision', '/worklist']
>>> app.state.service.facts.close()
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from vigie.api import routes
from vigie.api.auth import require
from vigie.api.cds_hooks import (
    CardFeedback,
    CdsHooksError,
    PackEvaluator,
    StoredCards,
    WardOf,
    cds_router,
)
from vigie.api.routes.worklist import WorklistFastPath
from vigie.engine.evaluate import current_stay
from vigie.engine.factset import PatientRecord
from vigie.engine.live import AlertDiff
from vigie.engine.load import LoadedPack
from vigie.engine.site_config import SiteConfig, SiteConfigError, applied_under, parse_site_config
from vigie.errors import VigieError
from vigie.store import (
    AlertStore,
    FactStore,
    ServiceError,
    ServiceStore,
    StoreError,
    UnknownAlertError,
    UnknownResourceError,
)
from vigie.store.alerts import AlertTransitionError, Dismissal, Intervention, Reconciled
from vigie.store.database import in_memory_url
from vigie.store.service import ConfigVersion

if TYPE_CHECKING:
    from vigie.api.live import LiveWorklist

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "ROUTERS",
    "create_app",
    "refresh_worklist",
    "saved_site_config",
]


def _routers() -> tuple[APIRouter, ...]:
    """The ``router`` of every module of ``vigie.api.routes``, in module name order: a new
    resource is a new module there."""
    found = []
    for module in sorted(pkgutil.iter_modules(routes.__path__), key=lambda m: m.name):
        loaded = importlib.import_module(f"{routes.__name__}.{module.name}")
        router = getattr(loaded, "router", None)
        if isinstance(router, APIRouter):
            found.append(router)
    return tuple(found)


ROUTERS = _routers()  # the routers the app includes

log = logging.getLogger("vigie.api")

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024  # a large FHIR Bundle; the routes of today take far less
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def create_app(
    database_url: str | None = None,
    *,
    store: FactStore | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    cds_packs: Sequence[LoadedPack] | None = None,
    clock: Callable[[], datetime] | None = None,
    live: bool = False,
    refresh: bool = False,
    as_of: datetime | None = None,
    tick_seconds: float | None = None,
    mllp: tuple[str, int] | None = None,
) -> FastAPI:
    """The service over the store at ``database_url`` (default: ``VIGIE_DATABASE_URL``, else
    the user's SQLite file), or over an open ``store`` (then the caller closes it). An
    in-memory SQLite URL is refused: each of the server's threads would see its own, empty,
    database. The CDS Hooks services (``/cds-services``, for prescribing software: roles
    ``feed`` or ``pharmacist``) evaluate ``cds_packs`` (default: the shipped default pack) as
    of ``clock()`` (default: now).

    At start the app parses the messages a killed process left unfinished (``recover``).
    ``live``: the app keeps the worklist current from the facts it ingests
    (``app.state.live``, a ``vigie.api.live.LiveWorklist`` started with the app: every fact of
    the store evaluated, the worklist reconciled), as of ``as_of`` (a fixed time, for a store
    whose data lie in the past) or of ``clock()``; ``tick_seconds``: how often time passing is
    evaluated (default 30 s; 0: never). Without it the worklist is what the store holds
    (``refresh_worklist``, or a caller's own alerts); ``refresh`` (without ``live``): the app
    evaluates the store's worklist again (``refresh_worklist``, as of ``as_of`` or now) when a
    new site configuration is saved. ``mllp``: (host, port) of an HL7 v2 MLLP
    listener started with the app (``app.state.mllp``; port 0: a free one), its facts going to
    the live worklist.

    The site configuration is the latest saved (``PUT /config/cursors``; ``saved_site_config``)
    and applies to the live worklist and the CDS Hooks services, per ward; the route applies a
    new version at once (``app.state.apply_site_config``), and a version another process saved
    (``vigie serve --workers``) reaches this one's CDS Hooks services within a second
    (``SiteFollower``)."""
    if store is None:
        if database_url is not None and in_memory_url(database_url):
            raise StoreError("the service needs a database file or server, not in-memory SQLite")
        store = FactStore(database_url)
        owned = True
    else:
        owned = False

    version, site = _latest_site_config(store)
    worklist = None
    if live:
        from vigie.api.live import LiveWorklist

        worklist = LiveWorklist(store, as_of=as_of, clock=clock, site=site)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        from starlette.concurrency import run_in_threadpool

        from vigie.api.live import DEFAULT_TICK_SECONDS
        from vigie.ingest import recover

        listener, listener_store = None, None
        try:
            await run_in_threadpool(recover, store)
            if worklist is not None:
                await run_in_threadpool(worklist.start)
                ticks = DEFAULT_TICK_SECONDS if tick_seconds is None else tick_seconds
                if ticks > 0:
                    worklist.start_ticking(ticks)
            if mllp is not None:
                from vigie.ingest.mllp import start_mllp_thread

                # The listener's own store: its own ingest run (docs/feeds-live.md).
                listener_store = FactStore(store.url)
                listener = start_mllp_thread(
                    listener_store,
                    mllp[0],
                    mllp[1],
                    on_results=None if worklist is None else worklist.apply_results,
                )
                app.state.mllp = listener
                log.info("MLLP (HL7 v2) listener on %s:%d", mllp[0], listener.port)
            yield
        finally:
            if listener is not None:
                listener.stop()
            if listener_store is not None:
                listener_store.close()
            if worklist is not None:
                worklist.stop()
            pages = getattr(app.state, "worklist_pages", None)
            if pages is not None:
                pages.close()
            if not app.state.service.flush_audit():
                log.error("audit entries still unwritten at shutdown")
            if owned:
                store.close()

    app = FastAPI(
        title="Vigie",
        summary="Clinical pharmacy decision support: worklist, alerts, decisions.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.service = ServiceStore(store)
    app.state.live = worklist
    app.state.mllp = None
    for router in ROUTERS:
        app.include_router(router)
    cds = cds_router(
        cds_packs,
        site=site,
        ward_of=_ward_in_store(store),
        record_feedback=_cds_feedback(app.state.service),
        clock=clock or (lambda: datetime.now(UTC)),
        cards=StoredCards(app.state.service),
    )
    hooks = cds.cds_hooks  # type: ignore[attr-defined]
    follower = SiteFollower(app.state.service, hooks.evaluator, version, site)
    app.state.site_follower = follower
    app.include_router(cds, dependencies=[require("feed", "pharmacist"), Depends(follower)])
    again = (store, as_of) if refresh and worklist is None else None
    app.state.apply_site_config = _site_applier(follower, worklist, again)
    _add_error_handlers(app)
    app.add_middleware(WorklistFastPath)  # within the access log and the body limit
    app.add_middleware(_AccessLog)
    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)
    return app


def _cds_feedback(service: ServiceStore) -> Callable[[CardFeedback], None]:
    """Record what a prescriber did with a CDS Hooks card as a decision on its alert: accepted
    is an intervention (the rule's SFPC codes) with its outcome ``accepted``; overridden is a
    dismissal with the reason the override maps to. The actor is ``cds-hooks:<service>``, so
    the metrics tell these from the pharmacists' decisions. A card's alert that the worklist
    does not hold (a draft order's) is stored first."""

    def record(feedback: CardFeedback) -> None:
        alert = feedback.alert
        actor = f"cds-hooks:{feedback.service_id}"
        at = feedback.outcome_time
        try:
            try:
                service.alerts.get(alert.id)
            except UnknownAlertError:
                service.alerts.apply_diff(AlertDiff(new=[alert]), alert.as_of)
            if feedback.outcome == "accepted":
                taken = ", ".join(feedback.accepted_suggestions) or "no suggestion taken"
                decision: Intervention | Dismissal = Intervention(
                    text=f"CDS Hooks card accepted ({taken})",
                    code=alert.intervention.code,
                    problem_code=alert.problem.code,
                    prescriber_contacted=True,
                )
                service.decide(alert.id, decision, actor=actor, at=at)
                service.record_outcome(alert.id, "accepted", actor=actor, at=at)
                return
            text = feedback.user_comment or (
                f"overridden: {feedback.override_code}"
                if feedback.override_code
                else "overridden in the prescribing software, no reason given"
            )
            decision = Dismissal(reason_code=feedback.dismiss_reason or "other", text=text)
            service.decide(alert.id, decision, actor=actor, at=at)
        except AlertTransitionError as error:  # already decided, by a pharmacist or a card
            raise CdsHooksError(409, str(error), "conflict") from error

    return record


class SiteFollower:
    """Keeps this process's CDS Hooks evaluator on the latest saved site configuration: a
    FastAPI dependency of the CDS Hooks routes that reads the latest saved version from the
    store at most every ``ttl`` seconds and, when it changed, checks it and applies it (a
    version saved through another process of ``vigie serve --workers`` applies here within
    ``ttl``). ``follow(force=True)`` reads at once (the process that saved it). Reads and
    changes take one lock, so a version never replaces a later one. A store that cannot be
    read leaves the configuration in force (the next call reads again)."""

    def __init__(
        self,
        service: ServiceStore,
        evaluator: object,
        version: int | None,
        site: SiteConfig | None,
        ttl: float = 1.0,
    ) -> None:
        self.service, self.evaluator, self.ttl = service, evaluator, ttl
        self.version, self.site = version, site
        self._lock = threading.Lock()
        self._read_at = time.monotonic()  # when the latest version was last read
        self._packs: list[dict[str, Any]] | None = None  # what a version is checked against

    def __call__(self) -> None:
        if time.monotonic() - self._read_at >= self.ttl:
            self.follow()

    def follow(self, force: bool = False) -> SiteConfig | None:
        """The configuration in force after reading the latest saved version."""
        with self._lock:
            if not force and time.monotonic() - self._read_at < self.ttl:
                return self.site
            self._read_at = time.monotonic()
            try:
                saved = self.service.site_config()
            except StoreError as error:
                log.warning("the saved site configuration could not be read: %s", error)
                return self.site
            version = saved.version if saved is not None else None
            if version != self.version:
                if self._packs is None and saved is not None:  # compiled once, when needed
                    from vigie.api.batch import compile_packs

                    self._packs = compile_packs(())
                self.version, self.site = version, _checked_site_config(saved, self._packs)
                if isinstance(self.evaluator, PackEvaluator):
                    self.evaluator.site = self.site
            return self.site


def _site_applier(
    follower: SiteFollower,
    worklist: LiveWorklist | None,
    refresh: tuple[FactStore, datetime | None] | None,
) -> Callable[[SiteConfig | None], None]:
    """What a new saved site configuration changes: the CDS Hooks evaluator's settings, then
    the live worklist (every patient evaluated again: ``LiveWorklist.configure``), or without
    one, when ``refresh`` is (store, as of), the store's worklist (``refresh_worklist``)."""

    def apply(site: SiteConfig | None) -> None:
        follower.follow(force=True)
        if worklist is not None:
            worklist.configure(site)
        elif refresh is not None:
            refresh_worklist(refresh[0], refresh[1], why=applied_under(site))

    return apply


def _ward_in_store(store: FactStore) -> WardOf:
    """The ward of a patient's current stay at a time, from the store's stays (``current_stay``,
    the attribution of ``evaluate`` and ``vigie batch --config``)."""

    def ward_of(patient_id: str, at: datetime) -> str | None:
        record = PatientRecord(patient_id)
        try:
            for stay in store.iter_facts(["stay"], patient_id=patient_id):
                record.add(stay)
        except StoreError:
            raise CdsHooksError(
                503, "the store cannot be read (the patient's ward)", "transient"
            ) from None
        found = current_stay(record, at)
        return found.ward if found is not None else None

    return ward_of


def saved_site_config(
    store: FactStore, packs: Sequence[LoadedPack | Mapping[str, Any]] | None = None
) -> SiteConfig | None:
    """The latest saved site configuration (``PUT /config/cursors``), checked against the
    packs (default: the shipped default and ANSM packs, as the route checks it); ``None`` when
    none is saved, or when the saved one no longer checks against the packs (logged, with why:
    the packs' defaults apply until a configuration that checks is saved)."""
    return _checked_site_config(ServiceStore(store).site_config(), packs)


def _latest_site_config(store: FactStore) -> tuple[int | None, SiteConfig | None]:
    """The latest saved version's number and its configuration (``saved_site_config``)."""
    saved = ServiceStore(store).site_config()
    return (saved.version if saved is not None else None), _checked_site_config(saved)


def _checked_site_config(
    saved: ConfigVersion | None, packs: Sequence[LoadedPack | Mapping[str, Any]] | None = None
) -> SiteConfig | None:
    if saved is None:
        return None
    if packs is None:
        from vigie.api.batch import compile_packs

        packs = compile_packs(())
    try:
        return parse_site_config(saved.text, f"site configuration version {saved.version}", packs)
    except SiteConfigError as error:
        log.error("the saved site configuration does not apply (the packs' defaults do): %s", error)
        return None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vigie")
    except PackageNotFoundError:
        return "0"


# Errors ------------------------------------------------------------------------------------------


def _status_of(error: VigieError) -> int:
    if isinstance(error, UnknownAlertError | UnknownResourceError):
        return status.HTTP_404_NOT_FOUND
    if isinstance(error, AlertTransitionError):
        return status.HTTP_409_CONFLICT
    if isinstance(error, ServiceError):
        return status.HTTP_422_UNPROCESSABLE_CONTENT
    if isinstance(error, StoreError):
        return status.HTTP_503_SERVICE_UNAVAILABLE
    return status.HTTP_400_BAD_REQUEST


def _field(location: Sequence[Any]) -> str:
    return ".".join(str(part) for part in location) or "request"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        # The input is not echoed back (it may be patient data the client already has).
        errors = [_invalid_item(item, error.body) for item in error.errors()]
        text = "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5])
        return JSONResponse(
            {"detail": f"invalid request: {text}", "errors": errors},
            status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
        )

    @app.exception_handler(VigieError)
    async def refused(request: Request, error: VigieError) -> JSONResponse:
        code = _status_of(error)
        log.info("%s %s: %s", request.method, _route(request.scope), error.__class__.__name__)
        return JSONResponse({"detail": _one_line(error)}, status_code=code)

    @app.exception_handler(StarletteHTTPException)
    async def http(_: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"detail": error.detail}, status_code=error.status_code, headers=error.headers
        )


def _invalid_item(item: Any, body: Any) -> dict[str, str]:
    if item.get("type") == "json_invalid":
        return {"field": "body", "message": _json_message(item, body)}
    return {"field": _field(item.get("loc", ())), "message": _message(item)}


def _json_message(item: Any, body: Any) -> str:
    """A body that is not JSON, located by line and column (FastAPI gives the character
    offset as the location's second part) with what the decoder expected there."""
    location = item.get("loc", ())
    offset = location[1] if len(location) > 1 and isinstance(location[1], int) else None
    reason = str((item.get("ctx") or {}).get("error", "not valid JSON"))
    if offset is None or not isinstance(body, str):
        return f"JSON decode error: {reason}"
    line = body.count("\n", 0, offset) + 1
    column = offset - (body.rfind("\n", 0, offset) + 1) + 1
    return f"JSON decode error at line {line}, column {column}: {reason}"


def _message(item: Any) -> str:
    message = str(item.get("msg", "invalid"))
    return message.removeprefix("Value error, ")


def _one_line(error: VigieError) -> str:
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())


# Middleware --------------------------------------------------------------------------------------


def _route(scope: Scope) -> str:
    """The route's template (``/alerts/{alert_id}``), never the path with its ids."""
    route = scope.get("route")
    return getattr(route, "path", None) or "(no route)"


_CLIENT_CLOSED = 499


class _AccessLog:
    """One line per request: method, route template, status, milliseconds. An exception no
    handler took (a bug) is answered 500 here, logged by its class only (its message may
    quote patient data), so that it never reaches the server's own traceback log."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered: dict[str, int] = {}

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except ClientDisconnect:
            # The client went away before its body was read: nobody to answer, and no bug.
            # 499 is the status proxies log for it (nginx).
            answered.setdefault("status", _CLIENT_CLOSED)
            log.info("%s %s: the client disconnected", scope["method"], _route(scope))
        except Exception as error:
            log.error("%s %s: unexpected %s", scope["method"], _route(scope), type(error).__name__)
            if "status" in answered:
                raise  # the answer has begun: only the server can end it
            answered["status"] = status.HTTP_500_INTERNAL_SERVER_ERROR
            await _send_json(
                send,
                answered["status"],
                {"detail": "internal error (logged); the request was not completed"},
            )
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            status_code = answered.get("status", 500)
            log.info("%s %s %d %.1f ms", scope["method"], _route(scope), status_code, elapsed)


async def _send_json(send: Send, status_code: int, content: dict[str, Any]) -> None:
    answer = JSONResponse(content, status_code=status_code)
    await send(
        {"type": "http.response.start", "status": status_code, "headers": answer.raw_headers}
    )
    await send({"type": "http.response.body", "body": answer.body})


class _BodyLimit:
    """Refuse a request body over ``max_bytes`` with 413: by its Content-Length before reading
    (the server holds a body to the length it declares), or, without one (chunked), by reading
    it up to the limit before the app does, then handing it over."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message], receive), send)
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _refuse(self, send: Send) -> None:
        detail = f"request body over the limit of {self.max_bytes:,} bytes"
        await _send_json(send, status.HTTP_413_CONTENT_TOO_LARGE, {"detail": detail})


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives ``messages`` first, then the server's."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


# The worklist from the store's facts -------------------------------------------------------------


def refresh_worklist(
    store: FactStore,
    as_of: datetime | None = None,
    pack_paths: Sequence[Path] = (),
    scope: str = "inpatients",
    why: str | None = None,
) -> Reconciled:
    """Evaluate the store's facts as of ``as_of`` (default: now) with the packs (default: the
    shipped default and ANSM packs) — the columnar evaluator of ``vigie batch --store`` — and
    reconcile the alerts into the store's worklist (``why``: what prompted it, said by the
    events of the alerts it resolves).

    The evaluation covers the patients of ``scope`` (``inpatients``: in a stay at ``as_of``);
    it is complete for every patient of the store (one not in a stay raises nothing), so an
    open alert of a patient gone home is resolved by the data. The text of each pack run is
    recorded (``rule_pack_version``), for the alerts to show their rule. The latest saved site
    configuration applies (``saved_site_config``: per ward, as ``vigie batch --config``)."""
    from vigie.api.batch import (
        compile_packs,
        in_scope,
        record_packs,
        run_packs,
        with_priorities,
    )
    from vigie.engine.evaluate import normalise_time
    from vigie.engine.load import load_pack
    from vigie.store.columns import load_frames

    moment = normalise_time(as_of or datetime.now(UTC))
    packs = [load_pack(ir) for ir in compile_packs(pack_paths)]
    record_packs(store, packs, pack_paths)
    site = saved_site_config(store, packs)
    frames = load_frames(store)
    patients = in_scope(frames, moment, scope)
    records: dict[str, PatientRecord] = {}
    alerts = run_packs(packs, frames, moment, patients, site, records=records)
    alerts = with_priorities(alerts, frames, moment, records)
    everyone = set(in_scope(frames, moment, "all")) | {a.patient_id for a in alerts}
    return AlertStore(store).reconcile(alerts, moment, scope=everyone, why=why)
