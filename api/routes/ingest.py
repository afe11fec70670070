"""``POST /ingest/hl7``, ``POST /ingest/fhir``: messages from the hospital's feeds (role
``feed``); ``GET /deadletters`` and ``POST /deadletters/{id}/replay`` (roles ``feed`` or
``admin``).

Each message of a body is kept raw first (committed), then parsed, then what it gave is stored
(``vigie.ingest.messages``); its facts go to the live worklist (``app.state.live``, when the app
runs one), so that an alert appears in ``GET /worklist`` without a batch refresh. A message that
fails is kept and dead-lettered with its located error, the others go on.

The answer lists every message of the body in order: its id, status, position in the body,
facts stored (counted by kind), retractions, and errors (each with its position: HL7 segment and
field such as ``OBX[2]-5``, JSON path, line; what was expected; what was found), and the codes
and units of the facts stored that the engine could not map (``unmapped``: a lab code no table
maps, a drug without ATC, a unit with no conversion; each with its system, the position first
seen and a count). Those are warnings: the message is loaded, its status unchanged, but the
rules cannot see such facts. Status:

- ``200`` when no message failed (each ``loaded``, ``duplicate``, ``ignored`` or ``superseded``);
- ``207`` (multi-status) when some failed (``partial``: loaded with errors, or ``rejected``) and
  others did not, or one was loaded with errors: the body says which and why;
- ``422`` when every message of the body was rejected (nothing loaded).

Every message is stored in each case: the sender need not send a failed one again (it is in the
dead letters, replayed after a mapping fix); sending it again is harmless: ingest is idempotent
on the message id (the same message is ``duplicate``, stored once). An empty body is a 400, a
media type or a content coding (gzip...) the route does not read a 415.

The audit log gets two entries per request (action ``ingest`` or ``replay``), never the content:
one committed before anything is stored (``stage: received``: the body's size and media type, or
the dead letter replayed), so that no write is ever without its entry, even when the process
dies while ingesting; then one naming the message ids, their statuses and the patients touched
(``stage: stored``). An entry ``received`` without its ``stored`` is a request cut short: the
raw messages it kept are in the store, and parsed again at the next start. If the first entry
cannot be written, nothing is stored and the answer is 503.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from vigie.api.auth import Caller, Feed, require
from vigie.errors import VigieError
from vigie.ingest.messages import (
    MessageResult,
    ReplayError,
    dead_letters,
    ingest_fhir,
    ingest_hl7,
    replay_dead_letter,
)
from vigie.store import FactStore, ServiceError

__all__ = ["router"]

log = logging.getLogger("vigie.api")

NOT_AUDITED = "the request could not be written to the audit log: nothing was stored; send it again"
router = APIRouter(tags=["ingest"])

FeedOrAdmin = Annotated[Caller, require("feed", "admin")]
MAX_ID = 2**31 - 1  # the ids are the database's INTEGER

HL7_TYPES = (
    "application/hl7-v2",
    "x-application/hl7-v2+er7",
    "application/edi-hl7v2",
    "text/plain",
    "application/octet-stream",
)
FHIR_JSON_TYPES = ("application/fhir+json", "application/json")
NDJSON_TYPES = ("application/fhir+ndjson", "application/x-ndjson", "application/ndjson")


# Answers -----------------------------------------------------------------------------------------


class MessageErrorOut(BaseModel):
    text: str = Field(description="the whole error, located")
    position: str | None = Field(description="HL7 segment and field (OBX[2]-5), JSON path, line")
    expected: str | None
    found: str | None
    fatal: bool = Field(description="true: nothing of the message loaded")


class UnmappedOut(BaseModel):
    """A code or unit of the message the engine could not map: the fact is stored, but no rule
    that looks for its concept or ATC sees it. A warning: the status is unchanged."""

    type: Literal["unmapped_code", "unknown_unit"] = Field(
        description="unmapped_code: no table maps the code; unknown_unit: the result's "
        "concept has no conversion from the unit"
    )
    kind: str = Field(description="the fact's kind: lab, observation, medication_order...")
    system: str | None = Field(description="the code's system as sent (LN, WHOATC, a URI)")
    code: str | None = Field(
        description="the code as sent (for unknown_unit: the result's code); null when the "
        "remark is about another field (a route): see text"
    )
    unit: str | None = Field(description="unknown_unit: the unit as sent")
    position: str | None = Field(
        description="where first seen: HL7 segment and field (OBX[2]-3), JSON path, line"
    )
    text: str = Field(description="the connector's remark, located")
    count: int = Field(description="facts of the message carrying it")


class MessageOut(BaseModel):
    message_id: str = Field(description="HL7: MSH-3^MSH-4|MSH-10; FHIR: Bundle id, Type/id")
    status: Literal["loaded", "partial", "rejected", "ignored", "duplicate", "superseded"]
    position: str | None = Field(description="where in the body (message 2, line 5)")
    facts: dict[str, int] = Field(description="facts stored, by kind")
    retractions: int = Field(description="facts withdrawn by the message")
    correction: bool = Field(description="a new version of a message the store held")
    errors: list[MessageErrorOut]
    unmapped: list[UnmappedOut] = Field(
        description="codes and units of the facts stored that the engine could not map "
        "(distinct, in the order first seen); warnings: the message is loaded all the same"
    )


class IngestAnswer(BaseModel):
    """What became of each message of the body, in order."""

    messages: list[MessageOut]
    loaded: int = Field(description="messages whose facts were stored (loaded or partial)")
    failed: int = Field(description="messages with errors (partial or rejected), dead-lettered")
    duplicates: int
    worklist_updated: bool = Field(
        description="the live worklist took the facts in (false: the service runs none, or "
        "it failed and will catch up)"
    )


class DeadLetterOut(BaseModel):
    id: int = Field(description="what a replay names")
    raw_id: int
    feed: str
    document: str
    message_id: str
    message_position: str | None
    message_status: str
    error: str
    position: str | None
    fatal: bool
    created_at: str


class DeadLetterPage(BaseModel):
    items: list[DeadLetterOut]
    next_after: int | None = Field(description="pass as ?after= for the next page (null: done)")


_ANSWERS: dict[int | str, dict[str, Any]] = {
    207: {"model": IngestAnswer, "description": "some messages failed: each says why"},
    422: {"model": IngestAnswer, "description": "every message was rejected: each says why"},
}


def _status_of(results: Sequence[MessageResult]) -> int:
    failed = [r for r in results if r.failed]
    if not failed:
        return status.HTTP_200_OK
    if all(r.status == "rejected" for r in results):
        return status.HTTP_422_UNPROCESSABLE_CONTENT
    return status.HTTP_207_MULTI_STATUS


def _answer(results: Sequence[MessageResult], updated: bool) -> JSONResponse:
    answer = IngestAnswer(
        messages=[MessageOut.model_validate(r.summary()) for r in results],
        loaded=sum(1 for r in results if r.status in ("loaded", "partial")),
        failed=sum(1 for r in results if r.failed),
        duplicates=sum(1 for r in results if r.status == "duplicate"),
        worklist_updated=updated,
    )
    return JSONResponse(answer.model_dump(mode="json"), status_code=_status_of(results))


# Steps -------------------------------------------------------------------------------------------


def _media(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _unsupported(media: str, accepted: Sequence[str]) -> HTTPException:
    return HTTPException(
        status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
        detail=f"send {', '.join(accepted)}; not {media or 'no media type'}",
    )


async def _body(request: Request) -> bytes:
    coding = request.headers.get("content-encoding", "").strip().lower()
    if coding not in ("", "identity"):
        # Not decoded: its bytes would be kept and parsed as text, and rejected with a
        # misleading error (a gzip body reads as "UTF-16 or UTF-32 bytes").
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f"send the body uncompressed (Content-Encoding identity); not {coding}",
        )
    body = await request.body()
    if not body.strip():
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="the body holds no message")
    return body


def _to_live(request: Request, results: Sequence[MessageResult]) -> bool:
    """Give the messages' facts to the live worklist; whether it took them. A failure (the
    worklist's table unwritable) is logged: the facts are stored, and the worklist catches up
    at its next write or start."""
    live = getattr(request.app.state, "live", None)
    if live is None or not live.started:
        return False
    try:
        live.apply_results(results)
    except VigieError as error:
        log.error("live worklist update failed: %s", error.__class__.__name__)
        return False
    return True


def _audit(caller: Caller, action: str, results: Sequence[MessageResult]) -> None:
    """Who sent which messages, and which patients they touched (never the content)."""
    patients = sorted(
        {f.patient_id for r in results for f in r.facts}
        | {x.patient_id for r in results for x in r.retractions}
    )
    caller.audit(
        action,
        patient_id=patients[0] if len(patients) == 1 else None,
        detail={
            "stage": "stored",
            "messages": [{"id": r.message_id, "status": r.status} for r in results],
            "patients": patients,
        },
    )


async def _ingest(
    request: Request,
    caller: Caller,
    action: str,
    run: Callable[[FactStore], list[MessageResult]],
    received: Mapping[str, Any],
) -> JSONResponse:
    """Run an ingest (``run``) between its two audit entries (module docstring); ``received``
    describes the request before anything is read from it."""
    store = caller.service.facts

    def work() -> tuple[list[MessageResult], bool]:
        try:
            caller.audit(action, detail={"stage": "received", **received})
        except ServiceError:  # nothing stored without its entry
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=NOT_AUDITED) from None
        results = run(store)
        updated = _to_live(request, results)
        _audit(caller, action, results)
        return results, updated

    results, updated = await run_in_threadpool(work)
    return _answer(results, updated)


# Routes ------------------------------------------------------------------------------------------


def _body_doc(types: Sequence[str], text: str) -> dict[str, Any]:
    content = {media: {"schema": {"type": "string", "description": text}} for media in types}
    return {"requestBody": {"required": True, "content": content}}


@router.post(
    "/ingest/hl7",
    response_model=IngestAnswer,
    responses=_ANSWERS,
    summary="Ingest HL7 v2 messages",
    openapi_extra=_body_doc(HL7_TYPES, "one or many HL7 v2 messages (ER7), each from its MSH"),
)
async def post_hl7(request: Request, caller: Feed) -> JSONResponse:
    """One or many HL7 v2 messages (ER7 text; segments ended by ``\\r``, ``\\n`` or
    ``\\r\\n``; each message from its ``MSH``; character set by ``MSH-18``, else UTF-8, else
    Latin-1). Each is stored raw, parsed, its facts applied to the live worklist; the answer
    gives each message's id, status and errors (200, 207, 422: module docstring)."""
    media = _media(request)
    if media and media not in HL7_TYPES:
        raise _unsupported(media, HL7_TYPES)
    body = await _body(request)
    received = {"bytes": len(body), "media_type": media or None}
    return await _ingest(request, caller, "ingest", lambda store: ingest_hl7(store, body), received)


@router.post(
    "/ingest/fhir",
    response_model=IngestAnswer,
    responses=_ANSWERS,
    summary="Ingest FHIR R4 resources (a Bundle, a resource, or NDJSON)",
    openapi_extra=_body_doc(
        (*FHIR_JSON_TYPES, *NDJSON_TYPES),
        "a Bundle or one resource (JSON), or NDJSON: one resource or Bundle per line",
    ),
)
async def post_fhir(request: Request, caller: Feed) -> JSONResponse:
    """A FHIR R4 Bundle or resource (``application/fhir+json``), or NDJSON lines
    (``application/fhir+ndjson``, ``application/x-ndjson``: each line a message). A body that
    is not JSON, or not FHIR, is kept and rejected with its located error (422)."""
    media = _media(request)
    if media in NDJSON_TYPES:
        ndjson = True
    elif media in FHIR_JSON_TYPES:
        ndjson = False
    else:
        raise _unsupported(media, (*FHIR_JSON_TYPES, *NDJSON_TYPES))
    body = await _body(request)
    received = {"bytes": len(body), "media_type": media}
    return await _ingest(
        request, caller, "ingest", lambda store: ingest_fhir(store, body, ndjson=ndjson), received
    )


@router.get("/deadletters", response_model=DeadLetterPage, summary="Messages that failed")
def get_dead_letters(
    caller: FeedOrAdmin,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="the last id of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    feed: Annotated[
        str | None, Query(max_length=64, description="hl7v2, fhir... (default: every feed)")
    ] = None,
) -> DeadLetterPage:
    """The dead letters, oldest first: the message (feed, document, id, position, status) and
    its located error. Page with ``after`` (the ``next_after`` of the previous page). A message
    replayed or sent again loses its dead letters, and gets new ones if it fails again."""
    found = dead_letters(caller.service.facts, limit=limit, after=after, feed=feed)
    caller.audit(
        "read",
        "deadletters",
        detail={"dead_letters": [entry.id for entry in found], "feed": feed},
    )
    return DeadLetterPage(
        items=[DeadLetterOut.model_validate(entry.as_dict()) for entry in found],
        next_after=found[-1].id if len(found) == limit else None,
    )


@router.post(
    "/deadletters/{dead_letter_id}/replay",
    response_model=IngestAnswer,
    responses={**_ANSWERS, 404: {"description": "no such dead letter (or replayed already)"}},
    summary="Parse a dead letter's message again (after a mapping fix)",
)
async def post_replay(
    request: Request,
    caller: FeedOrAdmin,
    dead_letter_id: Annotated[int, Path(ge=0, le=MAX_ID)],
) -> JSONResponse:
    """Parse the dead letter's message again from the bytes the store kept, exactly as if it
    had been sent again: after a mapping or terminology fix it loads (200) and its facts reach
    the live worklist; if it still fails, it gets its new dead letters (422, or 207 when loaded
    with errors) and the answer says why. 404 when the dead letter is unknown (a replay
    replaces the message's dead letters: list them again)."""

    def run(store: FactStore) -> list[MessageResult]:
        try:
            return [replay_dead_letter(store, dead_letter_id)]
        except ReplayError as error:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(error)) from None

    return await _ingest(request, caller, "replay", run, {"dead_letter": dead_letter_id})
