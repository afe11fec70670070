"""The pharmacist's web page: a small static app (``vigie/api/static``: HTML, vanilla JS, CSS;
French labels) served at ``/``, which reads and writes through the authenticated JSON API with
the token the pharmacist types in (kept in the tab's ``sessionStorage``).

The page's files and ``/static/codes.json`` (the SFPC problem and intervention codes, the
dismissal reasons and the outcomes with their French labels: the codes the API accepts) hold
no patient data and need no token. None of these routes is in the OpenAPI schema: they are
the page, not the API.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Final

from fastapi import APIRouter, HTTPException, status
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response

from vigie.api import static
from vigie.rules.check import INTERVENTION_CODES, PROBLEM_CODES

__all__ = ["DISMISS_LABELS", "OUTCOME_LABELS", "PAGE_FILES", "codes", "router"]

router = APIRouter(include_in_schema=False)

_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The page's files: every file of the static folder with a type above, read once.
PAGE_FILES: Final = {
    entry.name: entry.read_bytes()
    for entry in resources.files(static).iterdir()
    if entry.is_file() and any(entry.name.endswith(suffix) for suffix in _TYPES)
}
# The page loads its script and style from here and nothing else (no inline script or style:
# a value that slipped into the DOM as markup could not run).
_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

# French labels of the API's dismissal reasons and outcomes (their codes are the API's; the
# outcomes' labels are the Interop'Santé "devenir" code system's; tests/test_web.py checks
# that they name the same codes as DISMISS_REASONS and OUTCOMES).
DISMISS_LABELS: Final = {
    "not_relevant": "Non pertinente cliniquement pour ce patient",
    "already_handled": "Déjà traitée avec le prescripteur",
    "accepted_risk": "Risque connu et accepté, surveillance en place",
    "data_error": "Données erronées ou incomplètes",
    "duplicate": "Même problème qu'une autre alerte",
    "other": "Autre raison (à préciser en commentaire)",
}
OUTCOME_LABELS: Final = {
    "accepted": "Acceptée",
    "not_accepted": "Non acceptée",
    "accepted_modified": "Acceptée avec modification de proposition(s)",
}


def codes() -> dict[str, list[dict[str, str]]]:
    """The codes the decision form offers, in the API's order, with their French labels."""

    def listed(labels: dict[str, str]) -> list[dict[str, str]]:
        return [{"code": code, "label": label} for code, label in labels.items()]

    return {
        "problems": listed(dict(PROBLEM_CODES)),
        "interventions": listed(dict(INTERVENTION_CODES)),
        "dismiss_reasons": listed(DISMISS_LABELS),
        "outcomes": listed(OUTCOME_LABELS),
    }


def _file(name: str) -> Response:
    content = PAGE_FILES.get(name)
    if content is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no page file {name}")
    suffix = name[name.rindex(".") :]
    return Response(content, media_type=_TYPES[suffix], headers=_HEADERS)


@router.get("/")
def page() -> Response:
    """The page (it shows the login form until a token is given)."""
    return _file("index.html")


@router.get("/static/codes.json")
def get_codes() -> JSONResponse:
    return JSONResponse(codes(), headers=_HEADERS)


@router.get("/static/{name}")
def page_file(
    name: Annotated[str, PathParam(max_length=64, pattern=r"^[A-Za-z0-9_-]+\.[a-z]+$")],
) -> Response:
    """The page's script and style (only the files of the static folder)."""
    return _file(name)
