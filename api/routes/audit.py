"""``GET /audit`` (admin): the append-only audit log, latest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from vigie.api.auth import Admin

__all__ = ["AuditPublic", "router"]

router = APIRouter(tags=["audit"])


class AuditPublic(BaseModel):
    seq: int
    at: datetime
    actor: str
    roles: list[str]
    action: str
    resource: str
    patient_id: str | None
    detail: dict[str, Any] | None


@router.get("/audit", response_model=list[AuditPublic], summary="The audit log")
def get_audit(
    caller: Admin,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    patient: Annotated[str | None, Query(max_length=128)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,  # a database integer
) -> list[AuditPublic]:
    """Who read or wrote what, when, about which patient; filtered when asked. Reading the
    log is itself audited (it names patients)."""
    entries = caller.service.audit_log(
        actor=actor, patient_id=patient, action=action, limit=limit, offset=offset
    )
    caller.audit("read", "audit", patient_id=patient)
    return [
        AuditPublic(
            seq=entry.seq or 0,
            at=entry.at or datetime.min,
            actor=entry.actor,
            roles=list(entry.roles),
            action=entry.action,
            resource=entry.resource,
            patient_id=entry.patient_id,
            detail=dict(entry.detail) if entry.detail is not None else None,
        )
        for entry in entries
    ]
