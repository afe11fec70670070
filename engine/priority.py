"""The priority score of an alert and the pharmacist's worklist (issue 9, item 5).

The score is a sum of named, bounded components, so that the worklist can say why an alert is
high. Severity dominates: its steps are :data:`SEVERITY_STEP` apart and every other component
together stays below one step, so a critical alert always ranks above a major one whatever the
context. Within a severity:

- *distance past the threshold* — how far the triggering value is beyond the rule's threshold,
  relative to the threshold (K+ 6.8 against 5.5 is 24 % past it, 5.6 is 2 %), capped at
  :data:`DISTANCE_CAP`; read from the comparisons recorded on the alert
  (:class:`~vigie.engine.alerts.Threshold`); the furthest one counts. Alerts with no threshold
  (an interaction, a missing level) score 0 here;
- *age* ≥ :data:`OLD_AGE` years at the evaluation time;
- *renal function*: the lowest of the latest reported eGFR, the latest reported creatinine
  clearance, and the CKD-EPI 2021 and Cockcroft–Gault values computed from the latest
  creatinine (and weight), below :data:`RENAL_LIMIT`;
- *other open alerts* of the same patient, :data:`OTHER_ALERT_WEIGHT` each up to
  :data:`OTHER_ALERTS_CAP`;
- *observed PPV* of the rule (accepted interventions / alerts reviewed), when a mapping is given;
  a rule missing from the mapping gets :data:`PPV_PRIOR`. Without a mapping (no decisions
  recorded yet) the component is 0 for every alert.

>>> SEVERITY_STEP > DISTANCE_WEIGHT + AGE_WEIGHT + RENAL_WEIGHT + OTHER_ALERTS_MAX + PPV_WEIGHT
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from vigie.engine.alerts import Alert, Threshold
from vigie.engine.derived import age_in_years, ckd_epi_2021, cockcroft_gault
from vigie.engine.evaluate import current_stay, normalise_time
from vigie.engine.factset import FactSet, PatientRecord

__all__ = [
    "AGE_WEIGHT",
    "DISTANCE_CAP",
    "DISTANCE_WEIGHT",
    "OLD_AGE",
    "OTHER_ALERTS_CAP",
    "OTHER_ALERT_WEIGHT",
    "PPV_PRIOR",
    "PPV_WEIGHT",
    "RENAL_LIMIT",
    "RENAL_WEIGHT",
    "SEVERITY_POINTS",
    "SEVERITY_STEP",
    "PatientContext",
    "Priority",
    "WorklistItem",
    "patient_context",
    "priority",
    "threshold_distance",
    "worklist",
]

SEVERITY_STEP = 100.0
SEVERITY_POINTS: dict[str, float] = {
    "critical": 4 * SEVERITY_STEP,
    "major": 3 * SEVERITY_STEP,
    "moderate": 2 * SEVERITY_STEP,
    "minor": 1 * SEVERITY_STEP,
}
DISTANCE_WEIGHT = 40.0  # points at DISTANCE_CAP (a value twice the threshold, or at zero)
DISTANCE_CAP = 1.0  # relative distance counted at most
OLD_AGE = 75  # years
AGE_WEIGHT = 15.0
RENAL_LIMIT = 30.0  # mL/min (clearance) or mL/min/1.73 m² (eGFR)
RENAL_WEIGHT = 15.0
OTHER_ALERT_WEIGHT = 3.0
OTHER_ALERTS_CAP = 5
OTHER_ALERTS_MAX = OTHER_ALERT_WEIGHT * OTHER_ALERTS_CAP
PPV_WEIGHT = 14.0
PPV_PRIOR = 0.5  # a rule with no decisions yet, when others have some

_SEVERITY_RANK = {"critical": 0, "major": 1, "moderate": 2, "minor": 3}


@dataclass(frozen=True, slots=True)
class PatientContext:
    """What the score reads about the patient (None: unknown, which adds nothing)."""

    age: int | None = None
    renal: float | None = None  # the lowest of the available renal function values
    renal_source: str | None = None  # which value it is (``egfr``, ``clearance``...)
    other_open_alerts: int = 0
    ward: str | None = None


@dataclass(frozen=True, slots=True)
class Priority:
    """A score and its parts: ``score`` is the sum of the components."""

    score: float
    severity: float
    distance: float  # points for the distance past the threshold
    distance_ratio: float  # the relative distance itself (capped)
    threshold: Threshold | None  # the furthest comparison, when one was recorded
    age: float
    renal: float
    other_alerts: float
    ppv: float

    def components(self) -> dict[str, float]:
        """The named parts, in the order the worklist shows them."""
        return {
            "severity": self.severity,
            "distance": self.distance,
            "age": self.age,
            "renal": self.renal,
            "other_alerts": self.other_alerts,
            "ppv": self.ppv,
        }


@dataclass(frozen=True, slots=True)
class WorklistItem:
    alert: Alert
    priority: Priority
    context: PatientContext


def threshold_distance(threshold: Threshold) -> float:
    """How far past its threshold a value is, relative to the threshold, in [0, DISTANCE_CAP].

    >>> from vigie.engine.alerts import Threshold
    >>> round(threshold_distance(Threshold(name="k", op="gt", value=6.8, threshold=5.5)), 3)
    0.236
    >>> round(threshold_distance(Threshold(name="g", op="lt", value=10, threshold=30)), 3)
    0.667
    """
    past = threshold.value - threshold.threshold
    if threshold.op in ("lt", "le"):
        past = -past
    if past <= 0:
        return 0.0
    scale = abs(threshold.threshold)
    ratio = DISTANCE_CAP if scale == 0 else past / scale
    return min(ratio, DISTANCE_CAP)


def priority(
    alert: Alert, context: PatientContext, ppv: Mapping[str, float] | None = None
) -> Priority:
    """The score of one alert in its patient's context; ``ppv`` maps rule id → observed PPV."""
    furthest: Threshold | None = None
    ratio = 0.0
    for threshold in alert.thresholds:
        distance = threshold_distance(threshold)
        if furthest is None or distance > ratio:
            furthest, ratio = threshold, distance
    others = min(context.other_open_alerts, OTHER_ALERTS_CAP)
    ppv_points = 0.0
    if ppv is not None:
        observed = ppv.get(alert.rule_id, PPV_PRIOR)
        ppv_points = PPV_WEIGHT * min(max(observed, 0.0), 1.0)
    parts = (
        SEVERITY_POINTS[alert.severity],
        DISTANCE_WEIGHT * ratio / DISTANCE_CAP,
        AGE_WEIGHT if context.age is not None and context.age >= OLD_AGE else 0.0,
        RENAL_WEIGHT if context.renal is not None and context.renal < RENAL_LIMIT else 0.0,
        OTHER_ALERT_WEIGHT * others,
        ppv_points,
    )
    return Priority(
        score=round(sum(parts), 6),
        severity=parts[0],
        distance=parts[1],
        distance_ratio=ratio,
        threshold=furthest,
        age=parts[2],
        renal=parts[3],
        other_alerts=parts[4],
        ppv=parts[5],
    )


def _latest_value(values: Sequence[object], at: datetime) -> float | None:
    latest: tuple[datetime, str, float] | None = None
    for fact in values:
        time = getattr(fact, "time", None)
        value = getattr(fact, "value", None)
        if time is None or value is None or time > at:
            continue
        key = (time, str(getattr(fact, "fact_id", "")), float(value))
        if latest is None or key > latest:
            latest = key
    return None if latest is None else latest[2]


def patient_context(
    record: PatientRecord | None, as_of: datetime, open_alerts: int = 0
) -> PatientContext:
    """Age, renal function and ward of a patient at ``as_of``; ``open_alerts`` is the number of
    *other* open alerts of the patient."""
    if record is None:
        return PatientContext(other_open_alerts=open_alerts)
    as_of = normalise_time(as_of)
    patient = record.patient
    birth = None if patient is None else patient.birth_date
    age = None if birth is None else age_in_years(birth, as_of)
    sex = None if patient is None else patient.sex.value
    candidates: list[tuple[float, str]] = []
    for concept, name in (("egfr", "egfr"), ("creatinine_clearance", "clearance (reported)")):
        value = _latest_value(record.labs.get(concept, []), as_of)
        if value is not None:
            candidates.append((value, name))
    creatinine = _latest_value(record.labs.get("creatinine", []), as_of)
    if creatinine is not None and age is not None and sex in ("F", "M"):
        computed = ckd_epi_2021(creatinine_umol_l=creatinine, age=age, sex=str(sex))
        if computed is not None:
            candidates.append((computed, "egfr (CKD-EPI 2021)"))
        weight = _latest_value(record.observations.get("weight", []), as_of)
        if weight is not None:
            clearance = cockcroft_gault(
                age=age, weight_kg=weight, creatinine_umol_l=creatinine, sex=str(sex)
            )
            if clearance is not None:
                candidates.append((clearance, "clearance (Cockcroft-Gault)"))
    renal, source = min(candidates) if candidates else (None, None)
    stay = current_stay(record, as_of)
    return PatientContext(
        age=age,
        renal=renal,
        renal_source=source,
        other_open_alerts=open_alerts,
        ward=None if stay is None else stay.ward,
    )


def worklist(
    alerts: Iterable[Alert],
    facts: FactSet | Mapping[str, PatientRecord],
    as_of: datetime,
    *,
    ward: str | Iterable[str] | None = None,
    severity: str | Iterable[str] | None = None,
    ppv: Mapping[str, float] | None = None,
) -> list[WorklistItem]:
    """Open alerts sorted by priority, highest first, filtered by ward and severity.

    ``alerts`` are the open alerts (the caller drops resolved and decided ones); ``facts`` a
    fact set or the records of (at least) their patients. The ward is
    that of the patient's current stay in ``facts`` at ``as_of`` (the alert's own ward when the
    patient has none there). Other open alerts are counted over all of ``alerts``, before
    filtering. Ties are broken by severity, patient id, rule id and alert id, so the order never
    depends on the input order.
    """
    as_of = normalise_time(as_of)  # facts are naive UTC; an aware time is converted
    every = list(alerts)
    per_patient = Counter(alert.patient_id for alert in every)
    records = facts.patients() if isinstance(facts, FactSet) else facts
    wards = None if ward is None else {ward} if isinstance(ward, str) else set(ward)
    severities = (
        None if severity is None else {severity} if isinstance(severity, str) else set(severity)
    )
    contexts: dict[str, PatientContext] = {}
    items: list[WorklistItem] = []
    for alert in every:
        if severities is not None and alert.severity not in severities:
            continue
        context = contexts.get(alert.patient_id)
        if context is None:
            context = patient_context(
                records.get(alert.patient_id), as_of, per_patient[alert.patient_id] - 1
            )
            contexts[alert.patient_id] = context
        current_ward = context.ward if context.ward is not None else alert.ward
        if wards is not None and current_ward not in wards:
            continue
        items.append(WorklistItem(alert, priority(alert, context, ppv), context))
    items.sort(
        key=lambda item: (
            -item.priority.score,
            _SEVERITY_RANK[item.alert.severity],
            item.alert.patient_id,
            item.alert.rule_id,
            item.alert.id,
        )
    )
    return items
