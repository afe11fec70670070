"""Alerts with identity and lifecycle, kept in the fact store's database.

An evaluation (``vigie.engine.evaluate``, the live evaluator's ``AlertDiff``) says which alerts
hold *now*; the alert store remembers them across evaluations, with what the pharmacist decided.
Two tables, created with the fact store's (same database, same engine, same write lock):

- ``alert``: one row per alert id (the engine's stable identity: rule id + patient + the bound
  order lines), with its rule and version, patient, ward, severity, priority, lifecycle
  ``status``, the ``evidence_key`` (a hash of the evidence that made it fire, see
  :func:`evidence_key`), ``first_seen``, ``last_seen``, ``status_changed_at``, the decision's
  reason, and ``payload`` (the alert's JSON, as last raised).
- ``alert_event``: append-only, one row per transition or decision (alert id, time, from and to
  status, actor, reason, evidence key, details). The database itself refuses ``UPDATE`` and
  ``DELETE`` on it (triggers on SQLite and PostgreSQL). Replaying an alert's events gives its
  current status.
- ``alert_generation``: one row, a number that every write of the alerts (an evaluation applied,
  a decision) increments in its own transaction. A reader that keeps something computed from
  the alerts (the service's worklist pages) reads it first: the same number, the same alerts
  (:meth:`AlertStore.generation`), whichever process wrote them.

Lifecycle (docs/alerts.md has the table):

- ``open``: raised and not decided. An evaluation that no longer raises it (reconcile over a
  scope holding its patient, or a diff's ``resolved``) makes it ``resolved_by_data``.
- ``resolved_by_data``: raised again, it reopens.
- ``dismissed`` (pharmacist, with a reason code and text): raised again with the same evidence
  key it stays dismissed; with another evidence key (a new lab, a changed value) it reopens,
  with an event saying why.
- ``intervention`` (pharmacist, with the SFPC intervention type and text): like ``dismissed`` —
  the intervention answered the situation as it was; a changed evidence is a new situation.
- A decided alert (``dismissed``, ``intervention``) that an evaluation no longer raises keeps its
  status: the data does not overwrite the pharmacist's decision; ``raised`` turns false.

Decisions are taken on ``open`` alerts only; anything else is an
:class:`AlertTransitionError`. The store never imports the engine: an alert is anything with an
``id`` and a pydantic ``model_dump`` of the alert JSON contract (``vigie.engine.alerts.Alert``),
a diff anything with ``new``, ``updated`` and ``resolved`` (``vigie.engine.live.AlertDiff``).

>>> from vigie.store import FactStore
>>> alerts = AlertStore(FactStore("sqlite://"))
>>> alerts.worklist()
[]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, Protocol, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    case,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Mapped, Session, defer, mapped_column

from vigie.store.database import FactStore, StoreError, _Base

__all__ = [
    "DISMISS_REASONS",
    "EVALUATION_ACTOR",
    "RELEVANT_DISMISSALS",
    "AlertError",
    "AlertEvent",
    "AlertStatus",
    "AlertStore",
    "AlertTransitionError",
    "Dismissal",
    "Intervention",
    "Reconciled",
    "StoredAlert",
    "UnknownAlertError",
    "evidence_changes",
    "evidence_key",
    "replay",
]

AlertStatus = Literal["open", "resolved_by_data", "intervention", "dismissed"]
DECIDED: Final = frozenset({"intervention", "dismissed"})

# Why a pharmacist dismisses an alert (the code is required; ``other`` requires the text too).
DISMISS_REASONS: Final = {
    "not_relevant": "not clinically relevant for this patient",
    "already_handled": "already handled with the prescriber",
    "accepted_risk": "risk known and accepted, monitoring in place",
    "data_error": "the data behind the alert is wrong or incomplete",
    "duplicate": "the same problem as another alert",
    "other": "other reason (free text)",
}
# The dismissals that still say the alert was right (a real problem, needing no action now):
# with the interventions, the "relevant" decisions of the observed PPV and of the metrics
# (docs/metrics.md). ``not_relevant``, ``data_error``, ``duplicate`` and ``other`` are not.
RELEVANT_DISMISSALS: Final = frozenset({"already_handled", "accepted_risk"})
# SFPC intervention types (ARCHITECTURE.md: intervention ``1``..``7``).
INTERVENTION_TYPES: Final = frozenset(str(code) for code in range(1, 8))

EVALUATION_ACTOR: Final = "evaluation"  # the actor of transitions the data makes
_SEVERITY_RANK: Final = {"critical": 0, "major": 1, "moderate": 2, "minor": 3}
_CHUNK: Final = 2000  # ids per IN (...) list, well under SQLite's parameter limit


class AlertError(StoreError):
    """Root of the alert store's errors (a ``StoreError``, hence a ``VigieError``)."""


class UnknownAlertError(AlertError):
    """No alert with that id in the store."""


class AlertTransitionError(AlertError):
    """A decision the lifecycle does not allow, or that lacks what it requires (a reason)."""


# Tables ---------------------------------------------------------------------------------------


class AlertRow(_Base):
    __tablename__ = "alert"
    __table_args__ = (
        Index("ix_alert_status_ward", "status", "ward"),
        Index("ix_alert_patient", "patient_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(128))
    rule_version: Mapped[int] = mapped_column(Integer)
    patient_id: Mapped[str] = mapped_column(String(128))
    ward: Mapped[str | None] = mapped_column(String(128), nullable=True)
    severity: Mapped[str] = mapped_column(String(16))
    priority: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(24))
    # Whether the latest evaluation of its patient raised it (false once resolved, or decided
    # and no longer raised).
    raised: Mapped[bool] = mapped_column(default=True)
    evidence_key: Mapped[str] = mapped_column(String(64))
    first_seen: Mapped[datetime] = mapped_column(DateTime)
    last_seen: Mapped[datetime] = mapped_column(DateTime)
    status_changed_at: Mapped[datetime] = mapped_column(DateTime)
    actor: Mapped[str] = mapped_column(String(128))  # who made the current status
    reason_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class AlertEventRow(_Base):
    """Append-only: the database refuses to update or delete a row (triggers below)."""

    __tablename__ = "alert_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alert.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    from_status: Mapped[str | None] = mapped_column(String(24), nullable=True)
    to_status: Mapped[str] = mapped_column(String(24))
    actor: Mapped[str] = mapped_column(String(128))
    reason_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    evidence_key: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)


class AlertGenerationRow(_Base):
    """One row (id 1): the generation of the alerts, incremented by every write of them in the
    write's transaction. It starts at the time it is made, in microseconds, so that a store
    made again (``FactStore.reset``) does not give an old number back."""

    __tablename__ = "alert_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    generation: Mapped[int] = mapped_column(BigInteger)


_REFUSAL = "alert_event is append-only"
# The database itself refuses to change the log, whoever connects.
_APPEND_ONLY = {
    "sqlite": (
        "CREATE TRIGGER IF NOT EXISTS alert_event_no_update BEFORE UPDATE ON alert_event "
        f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END",
        "CREATE TRIGGER IF NOT EXISTS alert_event_no_delete BEFORE DELETE ON alert_event "
        f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END",
    ),
    "postgresql": (
        "CREATE OR REPLACE FUNCTION alert_event_append_only() RETURNS trigger "
        f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{_REFUSAL}'; END $$",
        "CREATE TRIGGER alert_event_no_change BEFORE UPDATE OR DELETE ON alert_event "
        "FOR EACH ROW EXECUTE FUNCTION alert_event_append_only()",
        "CREATE TRIGGER alert_event_no_truncate BEFORE TRUNCATE ON alert_event "
        "FOR EACH STATEMENT EXECUTE FUNCTION alert_event_append_only()",
    ),
}


@event.listens_for(AlertEventRow.__table__, "after_create")
def _make_append_only(target: object, connection: Connection, **_: object) -> None:
    """Run when ``create_all`` creates the log table (with the fact store's tables)."""
    for statement in _APPEND_ONLY.get(connection.dialect.name, ()):
        connection.exec_driver_sql(statement)


# What the store reads from the engine (duck-typed: the store does not import the engine) ------


class RaisedAlert(Protocol):
    """An alert as the engine gives it (``vigie.engine.alerts.Alert``)."""

    @property
    def id(self) -> str: ...

    def model_dump(self, *, mode: str) -> dict[str, Any]: ...


class AlertChanges(Protocol):
    """What changed in a live evaluation (``vigie.engine.live.AlertDiff``)."""

    @property
    def new(self) -> Sequence[RaisedAlert]: ...

    @property
    def updated(self) -> Sequence[RaisedAlert]: ...

    @property
    def resolved(self) -> Sequence[RaisedAlert]: ...


# What the store gives back ----------------------------------------------------------------------


@dataclass(frozen=True)
class StoredAlert:
    """An alert as the store holds it: identity, lifecycle, and the alert JSON last raised."""

    id: str
    rule_id: str
    rule_version: int
    patient_id: str
    ward: str | None
    severity: str
    priority: float | None
    status: AlertStatus
    raised: bool
    evidence_key: str
    first_seen: datetime
    last_seen: datetime
    status_changed_at: datetime
    actor: str
    reason_code: str | None
    reason: str | None
    payload: dict[str, Any]


@dataclass(frozen=True)
class AlertEvent:
    """One row of the append-only log: a transition or a decision (``from_status`` is None
    when the alert was first raised)."""

    seq: int
    alert_id: str
    at: datetime
    from_status: str | None
    to_status: str
    actor: str
    reason_code: str | None
    reason: str | None
    evidence_key: str
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class Intervention:
    """A pharmaceutical intervention: the SFPC type (``1``..``7``) when known, and the text;
    the service also gives the SFPC problem code (which may differ from the rule's) and whether
    the prescriber was contacted, kept in the decision's event."""

    text: str
    code: str | None = None
    problem_code: str | None = None
    prescriber_contacted: bool | None = None


@dataclass(frozen=True)
class Dismissal:
    """A dismissal: a reason code of :data:`DISMISS_REASONS`, and text (required for
    ``other``)."""

    reason_code: str
    text: str = ""


@dataclass
class Reconciled:
    """What one evaluation did to the store, by alert id."""

    opened: list[str] = field(default_factory=list)  # raised for the first time
    reopened: list[str] = field(default_factory=list)  # back to open (resolved or changed)
    resolved: list[str] = field(default_factory=list)  # open → resolved_by_data
    kept: list[str] = field(default_factory=list)  # raised again, status unchanged


# The lifecycle, as pure functions ---------------------------------------------------------------


def on_raised(status: str | None, stored_key: str | None, key: str) -> str | None:
    """Why an alert an evaluation raises goes back to ``open``, or None when it keeps its
    status (``None`` status: first raised)."""
    if status is None:
        return "raised"
    if status == "resolved_by_data":
        changed = ", evidence changed" if key != stored_key else ""
        return f"raised again after resolved_by_data{changed}"
    if status in DECIDED and key != stored_key:
        return f"evidence changed since {status}"
    return None


def on_missing(status: str) -> bool:
    """Whether an alert the evaluation no longer raises becomes ``resolved_by_data``: only an
    open one (a pharmacist's decision is not overwritten by the data)."""
    return status == "open"


def replay(events: Iterable[AlertEvent]) -> dict[str, str]:
    """Each alert's status after its events, in log order; a break in the chain (an event
    whose ``from_status`` is not the status so far) is an ``AlertError``."""
    status: dict[str, str] = {}
    for item in events:
        if status.get(item.alert_id) != item.from_status:
            raise AlertError(
                f"event {item.seq} of alert {item.alert_id}: from {item.from_status}, "
                f"but the log so far gives {status.get(item.alert_id)}"
            )
        status[item.alert_id] = item.to_status
    return status


# Evidence key -----------------------------------------------------------------------------------


def _evidence_item(item: Mapping[str, Any]) -> str:
    """One evidence item (and its inputs) as canonical text for the key.

    A derived value's ``time`` is left out (a count's window start moves with the evaluation
    time) and so is an age's value (it grows with the clock; its input, the birth date, stays).
    """
    derived = item.get("kind") == "derived"
    part = {
        "name": item.get("name"),
        "kind": item.get("kind"),
        "code": item.get("code"),
        "fact_id": item.get("fact_id"),
        "value": None if derived and item.get("code") == "age" else item.get("value"),
        "unit": item.get("unit"),
        "time": None if derived else item.get("time"),
        "inputs": sorted(_evidence_item(child) for child in item.get("inputs") or ()),
    }
    return json.dumps(part, sort_keys=True, ensure_ascii=False)


def evidence_key(alert: Mapping[str, Any]) -> str:
    """A hash of the evidence that made an alert fire (fact ids, values, units, times, the facts
    a derived value came from): a changed value or a newer lab changes it; a new evaluation of
    the same facts does not. ``alert`` is the alert's JSON (``model_dump(mode="json")``)."""
    items = sorted(_evidence_item(item) for item in alert.get("evidence") or ())
    return hashlib.sha256("\n".join(items).encode("utf-8")).hexdigest()[:32]


def _shown(item: Mapping[str, Any]) -> str:
    """An evidence item in words: ``potassium 6.1 mmol/L 2024-03-05T08:00:00 [LAB2]``."""
    parts = [str(item.get("code") or item.get("kind"))]
    if item.get("value") is not None:
        parts.append(f"{item['value']}" + (f" {item['unit']}" if item.get("unit") else ""))
    if item.get("time") and item.get("kind") != "derived":
        parts.append(str(item["time"]))
    if item.get("fact_id"):
        parts.append(f"[{item['fact_id']}]")
    return " ".join(parts)


def evidence_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What changed between two raises of an alert, per evidence binding, in words:
    ``k: potassium 5.9 mmol/L ... [LAB1] → potassium 6.1 mmol/L ... [LAB2]``."""

    def by_name(alert: Mapping[str, Any]) -> dict[str, list[Mapping[str, Any]]]:
        named: dict[str, list[Mapping[str, Any]]] = {}
        for item in alert.get("evidence") or ():
            named.setdefault(str(item.get("name")), []).append(item)
        return named

    old, new = by_name(before), by_name(after)
    changes = []
    for name in sorted(old.keys() | new.keys()):
        was, now = old.get(name, []), new.get(name, [])
        if sorted(map(_evidence_item, was)) != sorted(map(_evidence_item, now)):
            shown_was = ", ".join(map(_shown, was)) or "none"
            shown_now = ", ".join(map(_shown, now)) or "none"
            changes.append(f"{name}: {shown_was} → {shown_now}")
    return changes


# The store --------------------------------------------------------------------------------------


def _naive_utc(moment: datetime) -> datetime:
    """Times are stored naive UTC, as facts and alerts carry them."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]


def _stored(row: AlertRow) -> StoredAlert:
    return StoredAlert(
        id=row.id,
        rule_id=row.rule_id,
        rule_version=row.rule_version,
        patient_id=row.patient_id,
        ward=row.ward,
        severity=row.severity,
        priority=row.priority,
        status=cast(AlertStatus, row.status),  # only the lifecycle writes it
        raised=row.raised,
        evidence_key=row.evidence_key,
        first_seen=row.first_seen,
        last_seen=row.last_seen,
        status_changed_at=row.status_changed_at,
        actor=row.actor,
        reason_code=row.reason_code,
        reason=row.reason,
        payload=row.payload,
    )


def _event(row: AlertEventRow) -> AlertEvent:
    return AlertEvent(
        seq=row.id,
        alert_id=row.alert_id,
        at=row.at,
        from_status=row.from_status,
        to_status=row.to_status,
        actor=row.actor,
        reason_code=row.reason_code,
        reason=row.reason,
        evidence_key=row.evidence_key,
        detail=row.detail,
    )


def _check_decision(decision: Intervention | Dismissal) -> None:
    if isinstance(decision, Dismissal):
        if decision.reason_code not in DISMISS_REASONS:
            known = ", ".join(DISMISS_REASONS)
            raise AlertTransitionError(
                f"a dismissal needs a reason code ({known}), got {decision.reason_code!r}"
            )
        if decision.reason_code == "other" and not decision.text.strip():
            raise AlertTransitionError("a dismissal with reason 'other' needs its text")
    else:
        if decision.code is not None and decision.code not in INTERVENTION_TYPES:
            raise AlertTransitionError(f"SFPC intervention type is 1..7, got {decision.code!r}")
        if not decision.text.strip():
            raise AlertTransitionError("an intervention needs its text (what was done)")


def _payloads(alerts: Iterable[RaisedAlert]) -> dict[str, dict[str, Any]]:
    return {alert.id: alert.model_dump(mode="json") for alert in alerts}


def _rows(session: Session, ids: Sequence[str]) -> dict[str, AlertRow]:
    """The stored rows of these alert ids; the payload is read only when used (an evidence
    change to describe), not for every alert seen again."""
    rows: dict[str, AlertRow] = {}
    for chunk in _chunks(ids):
        query = select(AlertRow).where(AlertRow.id.in_(chunk)).options(defer(AlertRow.payload))
        rows.update((row.id, row) for row in session.scalars(query))
    return rows


def _current(session: Session, scope: Collection[str] | None) -> set[str]:
    """The ids of the scope's alerts that the previous evaluation raised."""
    query = select(AlertRow.id).where(AlertRow.raised.is_(True))
    if scope is None:
        return set(session.scalars(query))
    ids: set[str] = set()
    for chunk in _chunks(sorted(scope)):
        ids.update(session.scalars(query.where(AlertRow.patient_id.in_(chunk))))
    return ids


def _transition(
    row: AlertRow,
    to_status: str,
    at: datetime,
    actor: str,
    reason: str | None,
    detail: dict[str, Any] | None = None,
    reason_code: str | None = None,
) -> dict[str, Any]:
    """Change the row's status; the event saying so (an ``alert_event`` row's values), to
    append to the log."""
    from_status = row.status
    row.status = to_status
    row.status_changed_at = at
    row.actor = actor
    row.reason_code = reason_code
    row.reason = reason
    return {
        "alert_id": row.id,
        "at": at,
        "from_status": from_status,
        "to_status": to_status,
        "actor": actor,
        "reason_code": reason_code,
        "reason": reason,
        "evidence_key": row.evidence_key,
        "detail": detail,
    }


def _append(session: Session, events: list[dict[str, Any]]) -> None:
    """Append events to the log, in order (one statement for all of them)."""
    if events:
        session.execute(insert(AlertEventRow), events)


def first_generation() -> int:
    """The generation a new ``alert_generation`` row starts at: now, in microseconds."""
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def _next_generation(session: Session) -> None:
    """Increment the alerts' generation in the session's (write) transaction; make its row
    when missing (a table made again from the models)."""
    bumped = session.execute(
        update(AlertGenerationRow)
        .where(AlertGenerationRow.id == 1)
        .values(generation=AlertGenerationRow.generation + 1)
    )
    if not getattr(bumped, "rowcount", 1):
        session.execute(insert(AlertGenerationRow).values(id=1, generation=first_generation()))


_GENERATION: Final = select(AlertGenerationRow.generation).where(AlertGenerationRow.id == 1)


def _fill(row: AlertRow, payload: dict[str, Any], key: str, at: datetime) -> None:
    """What a raise refreshes: the alert's JSON and what is read from it."""
    row.rule_id = payload["rule_id"]
    row.rule_version = int(payload["rule"]["version"])
    row.patient_id = payload["patient_id"]
    row.ward = payload.get("ward")
    row.severity = payload["severity"]
    row.priority = payload.get("priority")
    row.evidence_key = key
    row.raised = True
    row.last_seen = at if row.last_seen is None else max(row.last_seen, at)
    row.payload = payload


@dataclass
class _Step:
    """One evaluation applied in one write transaction: alert rows are written first, then
    their events (an event references its alert)."""

    session: Session
    at: datetime
    result: Reconciled = field(default_factory=Reconciled)
    missed_because: str = "no longer raised by the evaluation"  # the reason of a miss's event
    events: list[dict[str, Any]] = field(default_factory=list)

    def raise_alert(self, row: AlertRow | None, payload: dict[str, Any]) -> None:
        key = evidence_key(payload)
        if row is None:
            row = AlertRow(id=payload["id"], first_seen=self.at, status=None)
            _fill(row, payload, key, self.at)
            self.session.add(row)
            self.events.append(_transition(row, "open", self.at, EVALUATION_ACTOR, "raised"))
            self.result.opened.append(row.id)
            return
        reason = on_raised(row.status, row.evidence_key, key)
        changes = evidence_changes(row.payload, payload) if key != row.evidence_key else []
        detail = {"previous_evidence_key": row.evidence_key, "changes": changes}
        _fill(row, payload, key, self.at)
        if reason is None:
            self.result.kept.append(row.id)
            return
        reason += "".join(f"; {change}" for change in changes)
        reopened = _transition(row, "open", self.at, EVALUATION_ACTOR, reason, detail)
        self.events.append(reopened)
        self.result.reopened.append(row.id)

    def miss(self, row: AlertRow) -> None:
        row.raised = False
        if on_missing(row.status):
            self.events.append(
                _transition(row, "resolved_by_data", self.at, EVALUATION_ACTOR, self.missed_because)
            )
            self.result.resolved.append(row.id)

    def commit(self, touched: bool) -> None:
        """Write the rows and their events; a step that ``touched`` alerts makes a new
        generation."""
        self.session.flush()
        _append(self.session, self.events)
        if touched:
            _next_generation(self.session)
        self.session.commit()


def _open_alerts(
    query: Any,
    ward: str | None,
    severities: Iterable[str] | None,
    rule_id: str | None,
    patient_id: str | None,
) -> Any:
    """``query`` restricted to the open alerts matching the worklist's filters."""
    query = query.where(AlertRow.status == "open")
    if ward is not None:
        query = query.where(AlertRow.ward == ward)
    if severities is not None:
        wanted = sorted(set(severities))
        unknown = set(wanted) - set(_SEVERITY_RANK)
        if unknown:
            raise AlertError(f"unknown severities {sorted(unknown)}: {list(_SEVERITY_RANK)}")
        query = query.where(AlertRow.severity.in_(wanted))
    if rule_id is not None:
        query = query.where(AlertRow.rule_id == rule_id)
    if patient_id is not None:
        query = query.where(AlertRow.patient_id == patient_id)
    return query


class AlertStore:
    """The alerts of one fact store's database, with their lifecycle (module docstring)."""

    def __init__(self, facts: FactStore) -> None:
        # The tables were created with the fact store's (they share its metadata).
        self.facts = facts

    def _writing(self, what: str) -> AbstractContextManager[Session]:
        """A session of the fact store's writer; a database error becomes an ``AlertError``."""
        return self.facts.writing(what, AlertError)

    # Evaluations -------------------------------------------------------------------------

    def reconcile(
        self,
        alerts: Iterable[RaisedAlert],
        as_of: datetime,
        scope: Collection[str] | None = None,
        why: str | None = None,
    ) -> Reconciled:
        """Apply one evaluation's full result for ``scope`` (patient ids; None: every patient):
        a new alert opens, one raised again is seen (and reopens when the lifecycle says so),
        an open alert of the scope that is not raised becomes ``resolved_by_data``. ``why``:
        what prompted the evaluation (a new site configuration), said by the events of the
        alerts it resolves."""
        at = _naive_utc(as_of)
        raised = _payloads(alerts)
        if scope is not None:
            outside = sorted({p["patient_id"] for p in raised.values()} - set(scope))
            if outside:
                raise AlertError(f"alerts for patients outside the scope: {outside[:5]}")
        with self._writing("reconcile the alerts") as session:
            step = _Step(session, at)
            if why is not None:
                step.missed_because = f"no longer raised by the evaluation {why}"
            rows = _rows(session, list(raised))
            for alert_id, payload in raised.items():
                step.raise_alert(rows.get(alert_id), payload)
            missed = _rows(session, sorted(_current(session, scope) - raised.keys()))
            for row in missed.values():
                step.miss(row)
            step.commit(bool(raised or missed))
        return step.result

    def apply_diff(self, diff: AlertChanges, as_of: datetime) -> Reconciled:
        """Apply a live evaluator's diff: new and updated alerts are raised, resolved ones are
        no longer raised."""
        at = _naive_utc(as_of)
        raised = _payloads([*diff.new, *diff.updated])
        gone = [alert.id for alert in diff.resolved if alert.id not in raised]
        with self._writing("apply the alert changes") as session:
            step = _Step(session, at)
            rows = _rows(session, [*raised, *gone])
            for alert_id, payload in raised.items():
                step.raise_alert(rows.get(alert_id), payload)
            missed = [rows[alert_id] for alert_id in gone if alert_id in rows]
            for row in missed:
                step.miss(row)
            step.commit(bool(raised or missed))
        return step.result

    # Decisions ---------------------------------------------------------------------------

    def decide(
        self,
        alert_id: str,
        decision: Intervention | Dismissal,
        *,
        actor: str,
        at: datetime | None = None,
        evidence_key: str | None = None,
    ) -> StoredAlert:
        """Record a pharmacist's decision on an open alert.

        ``evidence_key``, when given, is the key of the alert the pharmacist looked at: if the
        evidence changed since, the decision is refused (it would apply to what they did not
        see).
        """
        with self._writing("record the decision") as session:
            stored, _ = self.decide_in(
                session, alert_id, decision, actor=actor, at=at, evidence_key=evidence_key
            )
            session.commit()
            return stored

    def decide_in(
        self,
        session: Session,
        alert_id: str,
        decision: Intervention | Dismissal,
        *,
        actor: str,
        at: datetime | None = None,
        evidence_key: str | None = None,
    ) -> tuple[StoredAlert, int]:
        """``decide`` inside a write session of the caller (``facts._write_session()``), so
        that what the caller records beside the decision (``vigie.store.service``: its codes,
        the audit entry) commits with it or not at all. Gives the alert and the id of the
        decision's event; the caller commits."""
        if not actor.strip():
            raise AlertTransitionError("a decision needs its actor (who decided)")
        _check_decision(decision)
        moment = _naive_utc(at or datetime.now(UTC))
        row = session.get(AlertRow, alert_id)
        if row is None:
            raise UnknownAlertError(f"no alert {alert_id!r}")
        self._check_open(row, decision, evidence_key)
        if isinstance(decision, Dismissal):
            logged = _transition(
                row, "dismissed", moment, actor, decision.text, None, decision.reason_code
            )
        else:
            detail: dict[str, Any] = {"intervention_type": decision.code, "text": decision.text}
            if decision.problem_code is not None:
                detail["problem_code"] = decision.problem_code
            if decision.prescriber_contacted is not None:
                detail["prescriber_contacted"] = decision.prescriber_contacted
            logged = _transition(
                row, "intervention", moment, actor, decision.text, detail, decision.code
            )
        session.flush()
        event_id = session.execute(
            insert(AlertEventRow).values(**logged).returning(AlertEventRow.id)
        ).scalar_one()
        _next_generation(session)
        return _stored(row), event_id

    @staticmethod
    def _check_open(row: AlertRow, decision: Intervention | Dismissal, key: str | None) -> None:
        wanted = "dismiss" if isinstance(decision, Dismissal) else "record an intervention on"
        if row.status != "open":
            raise AlertTransitionError(
                f"cannot {wanted} alert {row.id}: it is {row.status}, decisions are taken on "
                "open alerts"
            )
        if key is not None and key != row.evidence_key:
            raise AlertTransitionError(
                f"cannot {wanted} alert {row.id}: its evidence changed since it was read"
            )

    # Reading -----------------------------------------------------------------------------

    def _read(self) -> Session:
        return self.facts.session()

    def generation(self) -> int | None:
        """The alerts' generation (module docstring): it changes when a write of the alerts
        commits, in the same transaction; None when the store has none (its row missing until
        the next write). One read of one row by its key."""
        try:
            with self.facts.engine.connect() as connection:
                found = connection.execute(_GENERATION).scalar()
        except SQLAlchemyError as error:
            raise AlertError(f"cannot read the alerts: {error.__class__.__name__}") from error
        return None if found is None else int(found)

    def get(self, alert_id: str) -> StoredAlert:
        try:
            with self._read() as session:
                row = session.get(AlertRow, alert_id)
        except SQLAlchemyError as error:
            raise AlertError(f"cannot read alert {alert_id}: {error.__class__.__name__}") from error
        if row is None:
            raise UnknownAlertError(f"no alert {alert_id!r}")
        return _stored(row)

    def alerts(self, status: str | None = None) -> list[StoredAlert]:
        """Every alert (or those with ``status``), by id."""
        query = select(AlertRow).order_by(AlertRow.id)
        if status is not None:
            query = query.where(AlertRow.status == status)
        return [_stored(row) for row in self._rows_of(query)]

    def events(self, alert_id: str | None = None) -> list[AlertEvent]:
        """The event log (of one alert, or all), in the order it was written."""
        query = select(AlertEventRow).order_by(AlertEventRow.id)
        if alert_id is not None:
            query = query.where(AlertEventRow.alert_id == alert_id)
        try:
            with self._read() as session:
                return [_event(row) for row in session.scalars(query)]
        except SQLAlchemyError as error:
            raise AlertError(f"cannot read the alert events: {error.__class__.__name__}") from error

    def worklist(
        self,
        ward: str | None = None,
        severities: Iterable[str] | None = None,
        limit: int | None = 100,
        *,
        rule_id: str | None = None,
        patient_id: str | None = None,
        offset: int = 0,
    ) -> list[StoredAlert]:
        """The open alerts, by priority (highest first; an alert without one last), then
        severity, first seen and id; filtered by ward, severities, rule and patient when given;
        ``offset`` and ``limit`` page through it.

        The priority is the one the alert carried when raised (``vigie.engine.priority``:
        ``vigie batch`` and ``vigie demo`` fill it).
        """
        rank = case(_SEVERITY_RANK, value=AlertRow.severity, else_=len(_SEVERITY_RANK))
        query = _open_alerts(select(AlertRow), ward, severities, rule_id, patient_id).order_by(
            AlertRow.priority.desc().nulls_last(), rank, AlertRow.first_seen, AlertRow.id
        )
        if offset:
            query = query.offset(offset)
        if limit is not None:
            query = query.limit(limit)
        return [_stored(row) for row in self._rows_of(query)]

    def worklist_size(
        self,
        ward: str | None = None,
        severities: Iterable[str] | None = None,
        *,
        rule_id: str | None = None,
        patient_id: str | None = None,
    ) -> int:
        """How many open alerts ``worklist`` pages through with these filters."""
        query = _open_alerts(
            select(func.count()).select_from(AlertRow), ward, severities, rule_id, patient_id
        )
        try:
            with self._read() as session:
                return int(session.execute(query).scalar_one())
        except SQLAlchemyError as error:
            raise AlertError(f"cannot read the alerts: {error.__class__.__name__}") from error

    def observed_ppv(self, min_decisions: int = 5) -> dict[str, float]:
        """Per rule, the share of pharmacists' decisions that found the alert relevant: an
        ``intervention``, or a dismissal whose reason says the alert was right but needed no
        action (:data:`RELEVANT_DISMISSALS`: ``already_handled``, ``accepted_risk``), over every
        ``intervention`` and ``dismissed`` of the event log (an alert decided twice, reopened in
        between, counts twice). The metrics' PPV (``vigie.store.metrics``) uses the same
        definition. Rules with fewer than ``min_decisions`` decisions are left out: the priority
        score then uses its prior (``vigie.engine.priority.PPV_PRIOR``) rather than a ratio of
        two or three."""
        decided = AlertEventRow.to_status.in_(["intervention", "dismissed"])
        relevant = (AlertEventRow.to_status == "intervention") | (
            (AlertEventRow.to_status == "dismissed")
            & AlertEventRow.reason_code.in_(sorted(RELEVANT_DISMISSALS))
        )
        query = (
            select(AlertRow.rule_id, func.count(), func.count(case((relevant, 1))))
            .join(AlertRow, AlertRow.id == AlertEventRow.alert_id)
            .where(decided)
            .group_by(AlertRow.rule_id)
        )
        try:
            with self._read() as session:
                counts = session.execute(query).all()
        except SQLAlchemyError as error:
            raise AlertError(f"cannot read the decisions: {error.__class__.__name__}") from error
        return {
            rule: positives / total
            for rule, total, positives in sorted(counts)
            if total >= min_decisions
        }

    def _rows_of(self, query: Any) -> list[AlertRow]:
        try:
            with self._read() as session:
                return list(session.scalars(query))
        except SQLAlchemyError as error:
            raise AlertError(f"cannot read the alerts: {error.__class__.__name__}") from error
