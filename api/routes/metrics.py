"""``GET /metrics`` and ``GET /metrics/export.csv``: the quality committee's figures (CME,
COMEDIMS) and the pseudonymised rows behind them (definitions: docs/metrics.md).

- ``GET /metrics`` (pharmacist, admin, rule_author): aggregates only, no patient identifier.
  Rule authors read it too: the funnel and PPV per rule are what they tune the rules with.
- ``GET /metrics/export.csv`` (pharmacist, admin): one row per decision or undecided alert,
  patients and alerts named by keyed pseudonyms (HMAC-SHA256, key ``VIGIE_PSEUDONYM_KEY``;
  unset: 503 saying so). Pseudonymised data is still personal data: rule authors do not get it.

Both reads are audited with their filters (the export with its row count).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from vigie import settings
from vigie.api.auth import Caller, require
from vigie.errors import ConfigurationError
from vigie.rules.check import INTERVENTION_CODES, PROBLEM_CODES
from vigie.store.metrics import Metrics, MetricsFilter, compute, export_csv, export_rows

__all__ = ["router"]

router = APIRouter(tags=["metrics"])

MetricsReader = Annotated[Caller, require("pharmacist", "admin", "rule_author")]
Exporter = Annotated[Caller, require("pharmacist", "admin")]
From = Annotated[
    date | None,
    Query(alias="from", description="first day of the period (YYYY-MM-DD, included)"),
]
To = Annotated[date | None, Query(description="last day of the period (YYYY-MM-DD, included)")]
Hospital = Annotated[str | None, Query(max_length=64, description="hospital code")]
WardCode = Annotated[str | None, Query(max_length=128, description="ward (UF) code")]


@router.get("/metrics", response_model=Metrics, summary="Quality figures (IP per 100 beds...)")
def get_metrics(
    caller: MetricsReader,
    start: From = None,
    to: To = None,
    hospital: Hospital = None,
    ward: WardCode = None,
) -> Metrics:
    """IP per 100 beds per month (per hospital and ward), alerts opened per day, the funnel
    alerts → relevant → IP → accepted and the PPV per rule, the median time to decision, the
    IPs by SFPC problem and intervention code; days in the hospital's time zone. Audited."""
    filters = MetricsFilter(start, to, hospital, ward)
    figures = compute(
        caller.service,
        filters,
        problem_labels=PROBLEM_CODES,
        intervention_labels=INTERVENTION_CODES,
    )
    caller.audit("read", "metrics", detail={"filters": filters.shown()})
    return figures


@router.get(
    "/metrics/export.csv",
    response_class=Response,
    summary="Pseudonymised rows behind the metrics (CSV)",
    responses={
        200: {"content": {"text/csv": {}}, "description": "UTF-8 with BOM, ';'-separated"},
        503: {"description": "VIGIE_PSEUDONYM_KEY is not set"},
    },
)
def get_metrics_export(
    caller: Exporter,
    start: From = None,
    to: To = None,
    hospital: Hospital = None,
    ward: WardCode = None,
) -> Response:
    """One row per decision taken in the period and per alert opened in it without a
    decision: keyed pseudonyms of the patient and the alert, rule, severity, hospital, ward,
    days, decision codes, outcome, minutes to decision. No patient id, stay, name or free
    text. ``;``-separated UTF-8 with a byte order mark (a French spreadsheet opens it as is).
    Audited with the row count."""
    try:
        key = settings.pseudonym_key()
    except ConfigurationError as error:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"the export is not configured: {error}",
        ) from None
    filters = MetricsFilter(start, to, hospital, ward)
    rows = export_rows(caller.service, filters, key)
    caller.audit(
        "export", "metrics/export.csv", detail={"filters": filters.shown(), "rows": len(rows)}
    )
    name = "vigie-metrics" + "".join(f"-{v}" for v in filters.shown().values()) + ".csv"
    return Response(
        export_csv(rows),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{_safe(name)}"'},
    )


def _safe(name: str) -> str:
    """A file name with only letters, digits, dot, dash and underscore."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
