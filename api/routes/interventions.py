"""``GET /interventions/awaiting-outcome`` (pharmacist): the interventions whose outcome the
prescriber has not given yet, for the pharmacist to record it (``POST /alerts/{id}/decision``
with ``kind: outcome``); the worklist lists open alerts only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from vigie.api.auth import Pharmacist
from vigie.api.routes.alerts import DecisionPublic

__all__ = ["router"]

router = APIRouter(tags=["decisions"])


@router.get(
    "/interventions/awaiting-outcome",
    response_model=list[DecisionPublic],
    summary="Interventions waiting for the prescriber's answer",
)
def get_awaiting_outcome(
    caller: Pharmacist,
    ward: Annotated[str | None, Query(max_length=128, description="ward (UF) code")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,  # a database integer
) -> list[DecisionPublic]:
    """Each alert's latest intervention without an outcome, oldest first; the read is
    audited with the patients it shows."""
    records = caller.service.awaiting_outcome(ward=ward, limit=limit, offset=offset)
    caller.audit(
        "read",
        "interventions awaiting an outcome",
        detail={
            "ward": ward,
            "alerts": [r.alert_id for r in records],
            "patients": sorted({r.patient_id for r in records}),
        },
    )
    return [DecisionPublic.of(record) for record in records]
