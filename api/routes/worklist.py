"""``GET /worklist``: the open alerts, by priority, for the pharmacist."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel

from vigie.api.auth import Pharmacist
from vigie.api.routes.schemas import AlertSummary

__all__ = ["WorklistPage", "router"]

router = APIRouter(tags=["worklist"])
Severity = Literal["critical", "major", "moderate", "minor"]


class WorklistPage(BaseModel):
    """One page of the worklist: ``total`` open alerts match the filters."""

    total: int
    offset: int
    limit: int
    items: list[AlertSummary]


@router.get("/worklist", response_model=WorklistPage, summary="Open alerts by priority")
def get_worklist(
    caller: Pharmacist,
    ward: Annotated[str | None, Query(max_length=128, description="ward (UF) code")] = None,
    severity: Annotated[list[Severity] | None, Query(description="one or more")] = None,
    rule: Annotated[str | None, Query(max_length=128, description="rule id")] = None,
    patient: Annotated[str | None, Query(max_length=128, description="patient id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,  # a database integer
) -> WorklistPage:
    """The open alerts, highest priority first (then severity, first seen, id), filtered by
    ward, severities, rule and patient; ``limit`` and ``offset`` page through them. The read
    is audited with the patients it shows."""
    alerts = caller.service.alerts
    filters = {"ward": ward, "severities": severity, "rule_id": rule, "patient_id": patient}
    items = alerts.worklist(limit=limit, offset=offset, **filters)  # type: ignore[arg-type]
    total = alerts.worklist_size(**filters)  # type: ignore[arg-type]
    shown = sorted({item.patient_id for item in items})
    caller.audit(
        "read",
        "worklist",
        patient_id=patient,
        detail={
            "filters": {k: v for k, v in filters.items() if v is not None},
            "alerts": [item.id for item in items],
            "patients": shown,
        },
    )
    return WorklistPage(
        total=total, offset=offset, limit=limit, items=[AlertSummary.of(a) for a in items]
    )
