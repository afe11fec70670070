"""``GET /worklist``: the open alerts, by priority, for the pharmacist.

A page is computed once per generation of the alerts (``AlertStore.generation``: every write of
the alerts, in any process, makes a new one in its transaction) and kept as its JSON bytes,
keyed by its query (filters, ``limit``, ``offset``). Each request first learns the generation
from a read of it that *began after the request arrived* (requests arriving together share one
read, in a worker thread): a page kept for another generation is dropped, so a page is never
served to a request that arrived after a write of the alerts committed. Requests asking for a
page being computed wait for it rather than compute it again. Each read is audited (the alerts
and patients it showed) and answered once its audit entry is committed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from vigie.api.auth import Pharmacist
from vigie.api.routes.schemas import AlertSummary
from vigie.store import AlertStore

__all__ = ["WorklistPage", "WorklistPages", "router"]

router = APIRouter(tags=["worklist"])
Severity = Literal["critical", "major", "moderate", "minor"]
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
    """A worklist page as answered (its JSON), with what its read's audit entry names."""

    body: bytes
    alerts: list[str]
    patients: list[str]


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
    return RenderedPage(
        page.model_dump_json().encode("utf-8"),
        [item.id for item in items],
        sorted({item.patient_id for item in items}),
    )


class GenerationReads:
    """Reads of the alerts' generation shared by the requests that wait at the same time: a
    request waits for the first read that begins after it asks (the one running began
    before: it joins the next, which begins when that one ends)."""

    def __init__(self, alerts: AlertStore) -> None:
        self._alerts = alerts
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: asyncio.Future[int | None] | None = None
        self._next: asyncio.Future[int | None] | None = None

    async def current(self) -> int | None:
        """The generation, as read after this call began."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a test client's): start afresh
            self._loop, self._running, self._next = loop, None, None
        if self._running is None:
            self._running = self._start()
            return await asyncio.shield(self._running)
        if self._next is None:
            self._next = loop.create_future()
        return await asyncio.shield(self._next)

    def _start(self) -> asyncio.Future[int | None]:
        read = asyncio.ensure_future(run_in_threadpool(self._alerts.generation))
        read.add_done_callback(self._ended)
        return read

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


def pages_of(request: Request) -> WorklistPages:
    """The app's worklist pages (made with the first request)."""
    state = request.app.state
    pages: WorklistPages | None = getattr(state, "worklist_pages", None)
    if pages is None:
        pages = state.worklist_pages = WorklistPages(state.service.alerts)
    return pages


@router.get("/worklist", response_model=WorklistPage, summary="Open alerts by priority")
async def get_worklist(
    request: Request,
    caller: Pharmacist,
    ward: Annotated[str | None, Query(max_length=128, description="ward (UF) code")] = None,
    severity: Annotated[list[Severity] | None, Query(description="one or more")] = None,
    rule: Annotated[str | None, Query(max_length=128, description="rule id")] = None,
    patient: Annotated[str | None, Query(max_length=128, description="patient id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,  # a database integer
) -> Response:
    """The open alerts, highest priority first (then severity, first seen, id), filtered by
    ward, severities, rule and patient; ``limit`` and ``offset`` page through them. The read
    is audited with the alerts and patients it shows."""
    severities = tuple(severity) if severity is not None else None
    page = await pages_of(request).page((ward, severities, rule, patient, limit, offset))
    filters = {"ward": ward, "severities": severity, "rule_id": rule, "patient_id": patient}
    await caller.audit_async(
        "read",
        "worklist",
        patient_id=patient,
        detail={
            "filters": {k: v for k, v in filters.items() if v is not None},
            "alerts": page.alerts,
            "patients": page.patients,
        },
    )
    return Response(page.body, media_type="application/json")
