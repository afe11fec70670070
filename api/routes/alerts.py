"""``GET /alerts/{id}`` (an alert with its evidence, rule and patient context) and
``POST /alerts/{id}/decision`` (the pharmacist's intervention, its later outcome, or a
dismissal).

The patient context is read from the fact store as the evaluation saw it, at the alert's
``as_of``: the patient's demographics, the stay then, the latest result of each lab concept
up to then, and the order lines active then.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, status
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from vigie import rules
from vigie.api.auth import Pharmacist
from vigie.api.routes.schemas import AlertSummary, CodedValue, intervention_value, problem_value
from vigie.engine.runtime import is_active
from vigie.facts import MedicationOrder
from vigie.rules.check import INTERVENTION_CODES, PROBLEM_CODES
from vigie.store import DecisionRecord, Dismissal, FactStore, Intervention, ServiceStore
from vigie.store.alerts import DISMISS_REASONS
from vigie.store.service import OUTCOMES

__all__ = ["AlertDetail", "DecisionCreate", "DecisionPublic", "router"]

router = APIRouter(prefix="/alerts", tags=["alerts"])
AlertId = Annotated[str, PathParam(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
_LABS_SHOWN = 30


# Shapes ------------------------------------------------------------------------------------------


class RuleSource(BaseModel):
    id: str
    version: int
    pack: str | None
    pack_version: str | None
    file: str | None
    line: int | None
    text: str | None = Field(description="the rule's source text, when the pack is known")


class PatientContext(BaseModel):
    patient_id: str
    as_of: datetime | None
    birth_date: str | None
    sex: str | None
    stay: dict[str, Any] | None
    labs: list[dict[str, Any]]
    active_orders: list[dict[str, Any]]


class DecisionPublic(BaseModel):
    id: int
    alert_id: str
    rule_id: str
    patient_id: str
    ward: str | None
    kind: Literal["intervention", "dismissal"]
    decided_at: datetime
    actor: str
    problem: CodedValue | None
    intervention: CodedValue | None
    dismiss_reason: str | None
    comment: str | None
    prescriber_contacted: bool | None
    outcome: str | None
    outcome_at: datetime | None
    outcome_by: str | None
    outcome_comment: str | None

    @classmethod
    def of(cls, record: DecisionRecord) -> DecisionPublic:
        return cls(
            id=record.id,
            alert_id=record.alert_id,
            rule_id=record.rule_id,
            patient_id=record.patient_id,
            ward=record.ward,
            kind=record.kind,
            decided_at=record.decided_at,
            actor=record.actor,
            problem=problem_value(record.problem_code),
            intervention=intervention_value(record.intervention_code),
            dismiss_reason=record.dismiss_reason,
            comment=record.comment,
            prescriber_contacted=record.prescriber_contacted,
            outcome=record.outcome,
            outcome_at=record.outcome_at,
            outcome_by=record.outcome_by,
            outcome_comment=record.outcome_comment,
        )


class AlertDetail(AlertSummary):
    """An alert with what the pharmacist needs to decide."""

    model_config = ConfigDict(extra="forbid")

    raised: bool
    status_changed_at: datetime
    status_actor: str
    reason_code: str | None
    reason: str | None
    as_of: datetime | None
    reference: str | None
    drugs: list[dict[str, Any]]
    evidence: list[dict[str, Any]]
    thresholds: list[dict[str, Any]]
    rule: RuleSource
    patient: PatientContext
    decisions: list[DecisionPublic]


def _known(codes: dict[str, str], what: str, value: str) -> str:
    if value not in codes:
        raise ValueError(f"unknown SFPC {what} code {value!r}: expected one of {', '.join(codes)}")
    return value


class InterventionCreate(BaseModel):
    """A pharmaceutical intervention (IP): the SFPC problem and intervention codes (they may
    differ from the rule's), what was done, whether the prescriber was contacted."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["intervention"]
    problem: str = Field(description="SFPC problem code: " + ", ".join(PROBLEM_CODES))
    intervention: str = Field(
        description="SFPC intervention code: " + ", ".join(INTERVENTION_CODES)
    )
    comment: str = Field(min_length=1, max_length=4000, description="what was done")
    prescriber_contacted: bool
    evidence_key: str | None = Field(
        default=None, max_length=64, description="the evidence key read; refused if it changed"
    )

    @field_validator("problem")
    @classmethod
    def _problem(cls, value: str) -> str:
        return _known(PROBLEM_CODES, "problem", value)

    @field_validator("intervention")
    @classmethod
    def _intervention(cls, value: str) -> str:
        return _known(INTERVENTION_CODES, "intervention", value)

    @field_validator("comment")
    @classmethod
    def _comment(cls, value: str) -> str:
        # Checked here, not only by the store: a blank text is a bad request (422), not a
        # decision the lifecycle refuses (409).
        if not value.strip():
            raise ValueError("expected what was done, got only blanks")
        return value


class OutcomeCreate(BaseModel):
    """The prescriber's answer to the intervention recorded on the alert."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["outcome"]
    outcome: Literal["accepted", "not_accepted", "accepted_modified"] = Field(
        description="; ".join(f"{k}: {v}" for k, v in OUTCOMES.items())
    )
    comment: str | None = Field(default=None, max_length=4000)


class DismissalCreate(BaseModel):
    """A dismissal with a reason from the list (``other`` needs a comment)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["dismissal"]
    reason: Literal[
        "not_relevant", "already_handled", "accepted_risk", "data_error", "duplicate", "other"
    ] = Field(description="; ".join(f"{k}: {v}" for k, v in DISMISS_REASONS.items()))
    comment: str = Field(default="", max_length=4000, validate_default=True)
    evidence_key: str | None = Field(default=None, max_length=64)

    @field_validator("comment")
    @classmethod
    def _comment(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("reason") == "other" and not value.strip():
            raise ValueError("a dismissal with reason 'other' needs a comment saying why")
        return value


DecisionCreate = Annotated[
    InterventionCreate | OutcomeCreate | DismissalCreate, Field(discriminator="kind")
]


class DecisionResult(BaseModel):
    alert_id: str
    status: str
    decision: DecisionPublic


# Routes ------------------------------------------------------------------------------------------


@router.get("/{alert_id}", response_model=AlertDetail, summary="An alert and its context")
def get_alert(alert_id: AlertId, caller: Pharmacist) -> AlertDetail:
    """The alert with its evidence, its rule (id, version, source line and text) and the
    patient's context; the read is audited."""
    service = caller.service
    alert = service.alerts.get(alert_id)
    payload = alert.payload
    as_of = _time(payload.get("as_of"))
    detail = AlertDetail(
        **AlertSummary.of(alert).model_dump(),
        raised=alert.raised,
        status_changed_at=alert.status_changed_at,
        status_actor=alert.actor,
        reason_code=alert.reason_code,
        reason=alert.reason,
        as_of=as_of,
        reference=payload.get("reference"),
        drugs=list(payload.get("drugs") or ()),
        evidence=list(payload.get("evidence") or ()),
        thresholds=list(payload.get("thresholds") or ()),
        rule=_rule_source(service, alert.rule_id, alert.rule_version, payload.get("rule") or {}),
        patient=patient_context(service.facts, alert.patient_id, as_of),
        decisions=[DecisionPublic.of(d) for d in service.decisions(alert_id)],
    )
    caller.audit("read", f"alert {alert_id}", patient_id=alert.patient_id)
    return detail


@router.post(
    "/{alert_id}/decision",
    response_model=DecisionResult,
    status_code=status.HTTP_201_CREATED,
    summary="Record an intervention, its outcome, or a dismissal",
)
def post_decision(alert_id: AlertId, body: DecisionCreate, caller: Pharmacist) -> DecisionResult:
    """An intervention or a dismissal on an open alert (409 otherwise), or later the outcome of
    the intervention recorded on it; audited in the same transaction."""
    service, actor = caller.service, caller.user.name
    alert = service.alerts.get(alert_id)
    entry = caller.entry(f"decision:{body.kind}", f"alert {alert_id}", alert.patient_id)
    if isinstance(body, OutcomeCreate):
        record = service.record_outcome(
            alert_id, body.outcome, actor=actor, comment=body.comment, audit=entry
        )
        return DecisionResult(
            alert_id=alert_id, status=alert.status, decision=DecisionPublic.of(record)
        )
    decision: Intervention | Dismissal
    if isinstance(body, InterventionCreate):
        decision = Intervention(
            body.comment,
            code=body.intervention,
            problem_code=body.problem,
            prescriber_contacted=body.prescriber_contacted,
        )
    else:
        decision = Dismissal(body.reason, body.comment)
    stored, record = service.decide(
        alert_id, decision, actor=actor, evidence_key=body.evidence_key, audit=entry
    )
    return DecisionResult(
        alert_id=alert_id, status=stored.status, decision=DecisionPublic.of(record)
    )


# Rule text and patient context -------------------------------------------------------------------

_PACK_HEADER = re.compile(r'^pack\s+"([^"]+)"\s+version\s+"([^"]+)"', re.MULTILINE)


def _rule_source(
    service: ServiceStore, rule_id: str, version: int, rule: dict[str, Any]
) -> RuleSource:
    pack, pack_version = rule.get("pack"), rule.get("pack_version")
    file, line = rule.get("file"), rule.get("line")
    text = None
    if pack and pack_version and isinstance(line, int):
        source = _pack_text(service, str(pack), str(pack_version), file)
        text = None if source is None else rule_text(source, line)
    return RuleSource(
        id=rule_id,
        version=version,
        pack=pack,
        pack_version=pack_version,
        file=file,
        line=line,
        text=text,
    )


def _pack_text(service: ServiceStore, pack: str, version: str, file: Any) -> str | None:
    """The text of the pack version that raised the alert: as recorded by the evaluation
    (``refresh_worklist``), else the shipped pack of that file name when it is that pack and
    version."""
    recorded = service.rule_pack(pack, version)
    if recorded is not None:
        return recorded.text
    if isinstance(file, str) and file.endswith(".rules"):
        shipped = Path(rules.__file__).parent / "packs" / Path(file).name
        try:
            text = shipped.read_text(encoding="utf-8")
        except OSError:
            return None
        header = _PACK_HEADER.search(text)
        if header and header.groups() == (pack, version):
            return text
    return None


def rule_text(source: str, line: int) -> str | None:
    """The rule declared at ``line`` (1-based) of a pack's text: its line and the indented
    lines under it, without trailing blank or comment lines."""
    lines = source.splitlines()
    if not 1 <= line <= len(lines) or not lines[line - 1].startswith("rule "):
        return None
    block = [lines[line - 1]]
    for following in lines[line:]:
        if following.strip() and not following[0].isspace():
            break
        block.append(following)
    while block and (not block[-1].strip() or block[-1].lstrip().startswith("#")):
        block.pop()
    return "\n".join(block)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.rstrip("Z"))
    except ValueError:
        return None


def _at_or_before(value: Any, as_of: datetime | None) -> bool:
    moment = _time(value)
    return as_of is None or moment is None or moment <= as_of


def patient_context(facts: FactStore, patient_id: str, as_of: datetime | None) -> PatientContext:
    """What the pharmacist reads beside an alert, from the fact store, as of ``as_of`` (the
    evaluation's time; now when unknown): orders active then as the engine reads them
    (``vigie.engine.runtime.is_active``: by their period)."""
    moment = as_of or datetime.now(UTC).replace(tzinfo=None)
    kinds = ("patient", "stay", "lab", "medication_order")
    by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    for fact in facts.iter_facts(kinds, patient_id=patient_id):
        if isinstance(fact, MedicationOrder) and not is_active(fact, moment):
            continue
        by_kind[fact.kind].append(fact.model_dump(mode="json"))
    patient = by_kind["patient"][0] if by_kind["patient"] else {}
    return PatientContext(
        patient_id=patient_id,
        as_of=moment,
        birth_date=patient.get("birth_date"),
        sex=patient.get("sex"),
        stay=_stay(by_kind["stay"], moment),
        labs=_latest_labs(by_kind["lab"], moment),
        active_orders=by_kind["medication_order"],
    )


def _stay(stays: list[dict[str, Any]], as_of: datetime | None) -> dict[str, Any] | None:
    current = [
        s
        for s in stays
        if s.get("status") != "cancelled"
        and _at_or_before(s.get("admit_time"), as_of)
        and (s.get("discharge_time") is None or not _at_or_before(s["discharge_time"], as_of))
    ]
    current.sort(key=lambda s: str(s.get("admit_time") or ""))
    return current[-1] if current else None


def _latest_labs(labs: list[dict[str, Any]], as_of: datetime | None) -> list[dict[str, Any]]:
    """The latest result of each concept (or unmapped code) up to ``as_of``, latest first."""
    latest: dict[str, dict[str, Any]] = {}
    for lab in labs:
        if not _at_or_before(lab.get("time"), as_of):
            continue
        key = lab.get("concept") or f"code:{(lab.get('code') or {}).get('code')}"
        if key not in latest or str(lab.get("time")) > str(latest[key].get("time")):
            latest[key] = lab
    shown = sorted(latest.values(), key=lambda lab: str(lab.get("time")), reverse=True)
    return shown[:_LABS_SHOWN]
