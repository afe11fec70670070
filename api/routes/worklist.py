"""``GET /worklist``: the open alerts, by priority, for the pharmacist.

A page is computed once per generation of the alerts (``AlertStore.generation``: every write of
the alerts, in any process, makes a new one in its transaction) and kept as its JSON bytes,
keyed by its query (filters, ``limit``, ``offset``). Each request first learns the generation
from a read of it that *began after the request arrived*, on a connection held for it
(``GenerationReader``): on SQLite each request reads it on the event loop (a few
microseconds); on PostgreSQL requests arriving together share one read, in a worker thread. A
page kept for another generation is dropped, so a page is never served to a request that
arrived after a write of the alerts committed. Requests asking for a page being computed wait
for it rather than compute it again. Each read is audited (the alerts and patients it showed)
and answered once its audit entry is committed.

The common request (a pharmacist's token the process remembers, valid parameters) is answered
by ``WorklistFastPath``, an ASGI middleware, before FastAPI routes it: the same page, audit
entry and answer as the route's, without the routing, dependency solving and validation that
were most of a request's CPU. Any other request goes on to the route, which answers it as
declared (401, 403, 422, a refusal of the store).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, get_args
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from vigie.api.auth import Caller, Pharmacist, token_reads_of
from vigie.api.routes.schemas import AlertSummary
from vigie.errors import VigieError
from vigie.store import AlertStore, StoreError
from vigie.store.service import AuditDetail, GenerationReader

__all__ = ["WorklistFastPath", "WorklistPage", "WorklistPages", "router"]

router = APIRouter(tags=["worklist"])
Severity = Literal["critical", "major", "moderate", "minor"]
_SEVERITIES: Final = frozenset(get_args(Severity))
# The parameters' bounds, as the route declares them
_TEXT_MAX: Final = 128
_LIMIT: Final = (1, 500)
_OFFSET: Final = (0, 1_000_000_000)  # a database integer
# What is kept per generation (each query its own page; the oldest go first past either bound)
_MAX_PAGES: Final = 1024
_MAX_BYTES: Final = 64 * 1024 * 1024

# ward, severities, rule, patient, limit, offset
PageQuery = tuple[str | None, tuple[str, ...] | None, str | None, str | None, int, int]


class WorklistPage(BaseModel):
    """One page of the worklist: ``total`` open alerts match the filters."""

    total: int
    offset: int
    limit: int
    items: list[AlertSummary]


@dataclass(frozen=True)
class RenderedPage:
    """A worklist page as answered (its JSON), with what its read's audit entry names: the
    alerts and patients shown, and the entry's detail (``AuditDetail``: its JSON made once for
    every read of the page)."""

    body: bytes
    alerts: list[str]
    patients: list[str]
    audit_detail: AuditDetail


def render(alerts: AlertStore, query: PageQuery) -> RenderedPage:
    """Read one page of the worklist and make its JSON (``WorklistPage``)."""
    ward, severities, rule, patient, limit, offset = query
    filters: dict[str, Any] = {
        "ward": ward,
        "severities": severities,
        "rule_id": rule,
        "patient_id": patient,
    }
    items = alerts.worklist(limit=limit, offset=offset, **filters)
    total = alerts.worklist_size(**filters)
    page = WorklistPage(
        total=total, offset=offset, limit=limit, items=[AlertSummary.of(a) for a in items]
    )
    shown = [item.id for item in items]
    patients = sorted({item.patient_id for item in items})
    return RenderedPage(
        page.model_dump_json().encode("utf-8"),
        shown,
        patients,
        AuditDetail(_read_detail(query, shown, patients)),
    )


class GenerationReads:
    """Reads of the alerts' generation, each begun after the request asking for it. On SQLite,
    the request's own read, on the event loop. Otherwise (or when that read fails: a lock held
    longer than it waits) reads in a worker thread shared by the requests that wait at the same
    time: a request waits for the first read that begins after it asks (the one running began
    before: it joins the next, which begins when that one ends)."""

    def __init__(self, alerts: AlertStore) -> None:
        self._alerts = alerts
        self._reader = GenerationReader(alerts)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: asyncio.Future[int | None] | None = None
        self._next: asyncio.Future[int | None] | None = None

    async def current(self) -> int | None:
        """The generation, as read after this call began."""
        if self._reader.local:
            try:
                return self._reader.read()
            except StoreError:
                pass  # read again in a thread, waiting as long as the store's reads do
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a test client's): start afresh
            self._loop, self._running, self._next = loop, None, None
        if self._running is None:
            self._running = self._start()
            return await asyncio.shield(self._running)
        if self._next is None:
            self._next = loop.create_future()
        return await asyncio.shield(self._next)

    def close(self) -> None:
        self._reader.close()

    def _start(self) -> asyncio.Future[int | None]:
        # the held connection is the event loop's on SQLite: a thread reads through the pool
        read = self._alerts.generation if self._reader.local else self._reader.read
        running = asyncio.ensure_future(run_in_threadpool(read))
        running.add_done_callback(self._ended)
        return running

    def _ended(self, read: asyncio.Future[int | None]) -> None:
        """Start the read the waiting requests joined, and give it their future."""
        if read is not self._running:  # from an event loop given up
            return
        waiting, self._running, self._next = self._next, None, None
        if waiting is None:
            return
        self._running = self._start()
        self._running.add_done_callback(lambda done: _copy(done, waiting))


def _copy(done: asyncio.Future[int | None], into: asyncio.Future[int | None]) -> None:
    if into.done():
        return
    if done.cancelled():
        into.cancel()
    elif (error := done.exception()) is not None:
        into.set_exception(error)
    else:
        into.set_result(done.result())


class WorklistPages:
    """The pages of one generation of the alerts (module docstring), in one process."""

    def __init__(
        self, alerts: AlertStore, max_pages: int = _MAX_PAGES, max_bytes: int = _MAX_BYTES
    ) -> None:
        self._alerts = alerts
        self._generations = GenerationReads(alerts)
        self._max_pages = max_pages
        self._max_bytes = max_bytes
        self._generation: int | None = None
        self._pages: dict[PageQuery, RenderedPage] = {}
        self._bytes = 0
        self._computing: dict[PageQuery, asyncio.Future[RenderedPage]] = {}

    def close(self) -> None:
        """Release the connection held for the generation's reads."""
        self._generations.close()

    async def page(self, query: PageQuery) -> RenderedPage:
        """The page for ``query`` as of now: kept if the generation read now is the one it
        was computed at, computed (in a worker thread) otherwise."""
        generation = await self._generations.current()
        if generation is None:  # no generation row yet: nothing can be kept
            return await run_in_threadpool(render, self._alerts, query)
        if generation != self._generation:
            self._generation, self._pages, self._computing = generation, {}, {}
            self._bytes = 0
        kept = self._pages.get(query)
        if kept is not None:
            return kept
        computing = self._computing.get(query)
        if computing is None or computing.get_loop() is not asyncio.get_running_loop():
            computing = asyncio.ensure_future(self._compute(generation, query))
            self._computing[query] = computing
        return await asyncio.shield(computing)

    async def _compute(self, generation: int, query: PageQuery) -> RenderedPage:
        """Compute a page read after ``generation`` was: it is at least as recent, and kept
        for that generation only if no other was seen meanwhile."""
        try:
            page = await run_in_threadpool(render, self._alerts, query)
        finally:
            if self._generation == generation:
                self._computing.pop(query, None)
        if self._generation == generation and query not in self._pages:
            self._keep(query, page)
        return page

    def _keep(self, query: PageQuery, page: RenderedPage) -> None:
        while self._pages and (
            len(self._pages) >= self._max_pages or self._bytes + len(page.body) > self._max_bytes
        ):
            oldest = next(iter(self._pages))
            self._bytes -= len(self._pages.pop(oldest).body)
        if len(page.body) <= self._max_bytes:
            self._pages[query] = page
            self._bytes += len(page.body)


def pages_of(app: Any) -> WorklistPages:
    """The app's worklist pages (made with the first request; closed with the app)."""
    state = app.state
    pages: WorklistPages | None = getattr(state, "worklist_pages", None)
    if pages is None:
        pages = state.worklist_pages = WorklistPages(state.service.alerts)
    return pages


def _read_detail(query: PageQuery, alerts: list[str], patients: list[str]) -> dict[str, Any]:
    """What the audit entry of a read names: its filters, the alerts and patients shown."""
    ward, severities, rule, patient, _, _ = query
    filters = {
        "ward": ward,
        "severities": list(severities) if severities is not None else None,
        "rule_id": rule,
        "patient_id": patient,
    }
    return {
        "filters": {k: v for k, v in filters.items() if v is not None},
        "alerts": alerts,
        "patients": patients,
    }


async def _read_audited(caller: Caller, query: PageQuery, app: Any) -> RenderedPage:
    """The page, once the read's audit entry is committed (503 if it cannot be)."""
    page = await pages_of(app).page(query)
    await caller.audit_async("read", "worklist", patient_id=query[3], detail=page.audit_detail)
    return page


@router.get("/worklist", response_model=WorklistPage, summary="Open alerts by priority")
async def get_worklist(
    request: Request,
    caller: Pharmacist,
    ward: Annotated[str | None, Query(max_length=_TEXT_MAX, description="ward (UF) code")] = None,
    severity: Annotated[list[Severity] | None, Query(description="one or more")] = None,
    rule: Annotated[str | None, Query(max_length=_TEXT_MAX, description="rule id")] = None,
    patient: Annotated[str | None, Query(max_length=_TEXT_MAX, description="patient id")] = None,
    limit: Annotated[int, Query(ge=_LIMIT[0], le=_LIMIT[1])] = 50,
    offset: Annotated[int, Query(ge=_OFFSET[0], le=_OFFSET[1])] = 0,
) -> Response:
    """The open alerts, highest priority first (then severity, first seen, id), filtered by
    ward, severities, rule and patient; ``limit`` and ``offset`` page through them. The read
    is audited with the alerts and patients it shows."""
    severities = tuple(severity) if severity is not None else None
    query = (ward, severities, rule, patient, limit, offset)
    page = await _read_audited(caller, query, request.app)
    return Response(page.body, media_type="application/json")


# The common request, answered before routing ---------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
_ROUTE: Final = router.routes[-1]  # named in the access log, as when routed
_TEXTS: Final = {"ward": 0, "rule": 2, "patient": 3}  # parameter -> its place in PageQuery


def lean_query(query_string: bytes) -> PageQuery | None:
    """The page a query string asks for, when each of the route's parameters is valid and given
    at most once (``severity`` any number of times); None otherwise, for the route to validate
    (and refuse, 422 naming the parameter). Decoded as Starlette does; other parameters are
    ignored, as the route ignores them."""
    found: dict[str, str] = {}
    severities: list[str] = []
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "severity":
            if value not in _SEVERITIES:
                return None
            severities.append(value)
        elif name in found:
            return None
        else:
            found[name] = value
    texts: list[str | None] = [None, None, None, None]
    for name, place in _TEXTS.items():
        text = found.get(name)
        if text is not None and len(text) > _TEXT_MAX:
            return None
        texts[place] = text
    limit = _bounded(found.get("limit", "50"), _LIMIT)
    offset = _bounded(found.get("offset", "0"), _OFFSET)
    if limit is None or offset is None:
        return None
    ward, _, rule, patient = texts
    return (ward, tuple(severities) if severities else None, rule, patient, limit, offset)


def _bounded(text: str, bounds: tuple[int, int]) -> int | None:
    """An integer written in ASCII digits within the bounds; None for anything else (which
    the route's validation decides: a sign, spaces, ``5_0``...)."""
    if not (text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if bounds[0] <= number <= bounds[1] else None


def _bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The token of the ``Authorization: Bearer`` header, as FastAPI's ``HTTPBearer`` reads it
    (the first such header; the scheme in any case); None without one."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            credentials = credentials.strip()
            return credentials if scheme.lower() == "bearer" and credentials else None
    return None


class WorklistFastPath:
    """ASGI middleware: ``GET /worklist`` answered before FastAPI routes it when it is the common
    case (a bearer token whose remembered user is a pharmacist; parameters that ``lean_query``
    reads), with the page, the audit entry and the answer of the route (which it shares). Any
    other request, or a refusal of the store before the audit, goes on to the app."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != "/worklist"
            or scope["method"] != "GET"
            or not await self._answered(scope, receive, send)
        ):
            await self.app(scope, receive, send)

    async def _answered(self, scope: Scope, receive: Receive, send: Send) -> bool:
        query = lean_query(scope["query_string"])
        token = _bearer_token(scope["headers"])
        if query is None or token is None:
            return False
        app = scope["app"]
        try:
            user = await token_reads_of(app).user(token)
            if user is None or "pharmacist" not in user.roles:
                return False
            scope["route"] = _ROUTE
            caller = Caller(user, app.state.service, "GET", "/worklist")
            page = await _read_audited(caller, query, app)
        except HTTPException as refused:  # the audit entry not written: not answered
            answer = JSONResponse({"detail": refused.detail}, status_code=refused.status_code)
            await answer(scope, receive, send)
            return True
        except VigieError:  # the store refused a read: the route reads again, answers why
            return False
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(page.body)).encode("ascii")),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": page.body})
        return True
