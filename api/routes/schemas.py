"""Shapes shared by several resources (``XPublic``: what the service answers)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from vigie.rules.check import INTERVENTION_CODES, PROBLEM_CODES
from vigie.store import StoredAlert

__all__ = ["AlertSummary", "CodedValue", "intervention_value", "problem_value"]


class CodedValue(BaseModel):
    code: str
    display: str


def problem_value(code: str | None) -> CodedValue | None:
    return None if code is None else CodedValue(code=code, display=PROBLEM_CODES.get(code, ""))


def intervention_value(code: str | None) -> CodedValue | None:
    if code is None:
        return None
    return CodedValue(code=code, display=INTERVENTION_CODES.get(code, ""))


class AlertSummary(BaseModel):
    """An alert as the worklist shows it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    rule_id: str
    rule_version: int
    title: str
    message: str
    severity: str
    priority: float | None
    patient_id: str
    ward: str | None
    status: str
    problem: CodedValue | None
    intervention: CodedValue | None
    first_seen: datetime
    last_seen: datetime
    evidence_key: str

    @classmethod
    def of(cls, alert: StoredAlert) -> AlertSummary:
        payload: dict[str, Any] = alert.payload
        return cls(
            id=alert.id,
            rule_id=alert.rule_id,
            rule_version=alert.rule_version,
            title=str(payload.get("title", "")),
            message=str(payload.get("message", "")),
            severity=alert.severity,
            priority=alert.priority,
            patient_id=alert.patient_id,
            ward=alert.ward,
            status=alert.status,
            problem=_coded(payload.get("problem")),
            intervention=_coded(payload.get("intervention")),
            first_seen=alert.first_seen,
            last_seen=alert.last_seen,
            evidence_key=alert.evidence_key,
        )


def _coded(value: Any) -> CodedValue | None:
    if isinstance(value, dict) and "code" in value:
        return CodedValue(code=str(value["code"]), display=str(value.get("display", "")))
    return None
