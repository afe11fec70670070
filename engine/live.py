"""Incremental (live) evaluation: a new fact re-evaluates only the rules it can change.

``LiveEvaluator`` keeps, per patient, the facts received so far (a ``PatientRecord`` kept
sorted) and the current alerts per rule. ``add(fact)`` re-evaluates, for that patient only, the
rules whose ``depends_on`` lists the fact's kind (and, for labs and observations, its concept)
and returns what changed as an ``AlertDiff`` (new, updated, resolved alerts by alert id).
``tick(now)`` re-checks what time alone can change: rules with windows, durations or age; order
lines starting or ending; facts dated later than the clock when they arrived becoming visible;
the patient's current stay. After ``tick(t)`` the current alerts are exactly those of
``evaluate(pack, all facts, t)`` (the property tests hold the two together).

Diffs combine: an alert that appears then resolves within one batch is no change at all.

>>> from vigie.engine.alerts import Alert
>>> AlertDiff().merge(AlertDiff(new=[])).new
[]
"""

from __future__ import annotations

import heapq
from bisect import insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vigie.engine.alerts import Alert
from vigie.engine.evaluate import Context, current_stay, evaluate_rule, normalise_time, select
from vigie.engine.factset import PatientRecord
from vigie.engine.load import LoadedPack, LoadedRule, Selection
from vigie.facts import (
    Allergy,
    AnyFact,
    Condition,
    LabResult,
    MedicationAdministration,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Stay,
)

__all__ = ["AlertDiff", "LiveEvaluator"]


@dataclass
class AlertDiff:
    """What changed: alerts that appeared, changed (same id, other content) or stopped."""

    new: list[Alert] = field(default_factory=list)
    updated: list[Alert] = field(default_factory=list)
    resolved: list[Alert] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.updated or self.resolved)

    def merge(self, later: AlertDiff) -> AlertDiff:
        """This diff followed by ``later``, as one diff (new then resolved cancel out...)."""
        state: dict[str, tuple[str, Alert]] = {}
        for status, alerts in (("new", self.new), ("updated", self.updated)):
            state.update((a.id, (status, a)) for a in alerts)
        state.update((a.id, ("resolved", a)) for a in self.resolved)
        for alert in later.new:
            before = state.get(alert.id)
            state[alert.id] = ("updated" if before and before[0] == "resolved" else "new", alert)
        for alert in later.updated:
            before = state.get(alert.id)
            state[alert.id] = ("new" if before and before[0] == "new" else "updated", alert)
        for alert in later.resolved:
            before = state.get(alert.id)
            if before and before[0] == "new":
                del state[alert.id]
            else:
                state[alert.id] = ("resolved", alert)
        merged = AlertDiff()
        for status, alert in state.values():
            getattr(merged, status).append(alert)
        return merged


def _same_content(a: Alert, b: Alert) -> bool:
    """Equal but for ``as_of`` (when it was last evaluated)."""
    return (
        a.severity == b.severity
        and a.message == b.message
        and a.stay_id == b.stay_id
        and a.ward == b.ward
        and a.evidence == b.evidence
        and a.drugs == b.drugs
        and a.priority == b.priority
    )


# When a fact becomes visible to rules (facts dated after the evaluation time are never read).
def _visible_from(fact: AnyFact) -> datetime | None:
    match fact:
        case LabResult() | Observation() | MedicationAdministration():
            return fact.time
        case Condition():
            return fact.onset
        case Allergy() | Pregnancy():
            return fact.recorded
    return None


def _concept(fact: AnyFact) -> str | None:
    return fact.concept if isinstance(fact, LabResult | Observation) else None


@dataclass
class _PatientState:
    record: PatientRecord
    alerts: dict[int, dict[str, Alert]] = field(default_factory=dict)  # rule index → id → alert
    facts: dict[tuple[str, str], AnyFact] = field(default_factory=dict)
    pending: list[tuple[datetime, int, str, str | None]] = field(default_factory=list)  # heap
    checked_until: datetime | None = None  # every event up to then has been processed
    # Evaluation times since the last tick: alerts reflect a mix of these times.
    oldest: datetime | None = None
    latest: datetime | None = None
    stay: tuple[str | None, str | None] = (None, None)


class LiveEvaluator:
    """Per-patient incremental evaluation of one pack (see the module docstring)."""

    def __init__(
        self,
        pack: LoadedPack | Mapping[str, Any],
        *,
        cursors: Mapping[str, float] | None = None,
        level: int = 1,
        enabled: Iterable[str] = (),
        disabled: Iterable[str] = (),
        now: datetime | None = None,
    ) -> None:
        self.selection: Selection = select(
            pack, cursors=cursors, level=level, enabled=enabled, disabled=disabled
        )
        self.now: datetime | None = normalise_time(now) if now else None
        self._patients: dict[str, _PatientState] = {}
        self._owner: dict[tuple[str, str], str] = {}  # (kind, fact id) → patient id
        self._dependents: dict[tuple[str, str | None], tuple[LoadedRule, ...]] = {}
        self._order: dict[int, int] = {r.index: i for i, r in enumerate(self.selection.rules)}
        self._clock_rules = tuple(r for r in self.selection.rules if r.clock_dependent)
        self._sequence = 0

    # Reading

    def alerts(self, patient_id: str | None = None) -> list[Alert]:
        """Current alerts (one patient or all), in rule order then patient and identity."""
        states = (
            [self._patients[patient_id]]
            if patient_id in self._patients
            else []
            if patient_id is not None
            else list(self._patients.values())
        )
        found = [
            (index, alert)
            for state in states
            for index, alerts in state.alerts.items()
            for alert in alerts.values()
        ]
        found.sort(key=lambda item: (item[0], item[1].patient_id, item[1].id))
        return [alert for _, alert in found]

    def record(self, patient_id: str) -> PatientRecord | None:
        state = self._patients.get(patient_id)
        return state.record if state else None

    # Updates

    def add(self, fact: AnyFact, now: datetime | None = None) -> AlertDiff:
        """Take one fact in and re-evaluate what depends on it, for its patient only."""
        at = self._advance(now, _visible_from(fact))
        diff = AlertDiff()
        previous, moved = self._remove_previous(fact, at, diff)
        if isinstance(fact, Patient) and isinstance(previous, Patient):
            fact = fact.merged_over(previous)  # a sparse record keeps what an earlier one gave
        state = self._patients.get(fact.patient_id)
        fresh = state is None
        if state is None:
            state = self._patients[fact.patient_id] = _PatientState(
                PatientRecord(fact.patient_id), checked_until=at
            )
        touched = self._insert(state, fact, at)
        rules = self.selection.rules if fresh else self._rules_for(touched | moved)
        return diff.merge(self._reevaluate(state, rules, at))

    def add_many(self, facts: Iterable[AnyFact], now: datetime | None = None) -> AlertDiff:
        diff = AlertDiff()
        for fact in facts:
            diff = diff.merge(self.add(fact, now))
        return self._sorted(diff)

    def tick(self, now: datetime) -> AlertDiff:
        """Re-check, for every patient, what time passing until ``now`` can change."""
        at = normalise_time(now)
        self.now = at if self.now is None or at > self.now else self.now
        diff = AlertDiff()
        for patient_id in sorted(self._patients):
            diff = diff.merge(self._tick_patient(self._patients[patient_id], at))
        return self._sorted(diff)

    # Internals

    def _advance(self, now: datetime | None, fact_time: datetime | None) -> datetime:
        if now is not None:
            at = normalise_time(now)
        elif fact_time is not None and (self.now is None or fact_time > self.now):
            at = fact_time
        elif self.now is not None:
            at = self.now
        else:
            at = datetime.now(UTC).replace(tzinfo=None)
        if self.now is None or at > self.now:
            self.now = at
        return at

    def _remove_previous(
        self, fact: AnyFact, at: datetime, diff: AlertDiff
    ) -> tuple[AnyFact | None, set[tuple[str, str | None]]]:
        """Forget an earlier version of the same fact (same kind and id): the version and the
        dependency keys it touched. A fact that moved to another patient re-evaluates that one."""
        key = (fact.kind, fact.fact_id)
        owner = self._owner.get(key)
        self._owner[key] = fact.patient_id
        if owner is None:
            return None, set()
        state = self._patients[owner]
        old = state.facts.pop(key, None)
        if old is None:
            return None, set()
        _discard(state.record, old)
        touched = {(old.kind, _concept(old))}
        if owner != fact.patient_id:
            moved = self._reevaluate(state, self._rules_for(touched), at)
            diff.new, diff.updated, diff.resolved = moved.new, moved.updated, moved.resolved
            return None, set()
        return old, touched

    def _insert(
        self, state: _PatientState, fact: AnyFact, at: datetime
    ) -> set[tuple[str, str | None]]:
        state.facts[(fact.kind, fact.fact_id)] = fact
        _place(state.record, fact)
        visible = _visible_from(fact)
        if visible is not None and visible > at:
            self._sequence += 1
            heapq.heappush(state.pending, (visible, self._sequence, fact.kind, _concept(fact)))
        return {(fact.kind, _concept(fact))}

    def _rules_for(self, keys: Iterable[tuple[str, str | None]]) -> list[LoadedRule]:
        found: dict[int, LoadedRule] = {}
        for kind, concept in keys:
            dependents = self._dependents.get((kind, concept))
            if dependents is None:
                dependents = self._dependents[(kind, concept)] = tuple(
                    r for r in self.selection.rules if r.depends_on(kind, concept)
                )
            found.update((r.index, r) for r in dependents)
        return [found[i] for i in sorted(found)]

    def _tick_patient(self, state: _PatientState, at: datetime) -> AlertDiff:
        since = state.checked_until
        rewound = (state.latest is not None and state.latest > at) or (
            since is not None and state.oldest is not None and state.oldest < since
        )
        if since is None or rewound or at < since:
            # The alerts may reflect a later time (the clock went back, a replay) or an add
            # evaluated before the last tick: start again from the facts.
            rules: Sequence[LoadedRule] = self.selection.rules
            self._requeue(state, at)
        elif at == since and state.latest in (None, at):
            return AlertDiff()
        else:
            keys: set[tuple[str, str | None]] = set()
            if any(
                _crosses(o.start, since, at) or _crosses(o.end, since, at)
                for o in state.record.orders
            ):
                keys.add(("medication_order", None))
            chosen = {r.index: r for r in self._rules_for(keys)}
            chosen.update((r.index, r) for r in self._clock_rules)
            rules = [chosen[i] for i in sorted(chosen)]
        pending: set[tuple[str, str | None]] = set()
        while state.pending and state.pending[0][0] <= at:
            _, _, kind, concept = heapq.heappop(state.pending)
            pending.add((kind, concept))
        if pending and rules is not self.selection.rules:
            extra = {r.index: r for r in [*rules, *self._rules_for(pending)]}
            rules = [extra[i] for i in sorted(extra)]
        diff = self._reevaluate(state, rules, at, restay=True)
        state.checked_until, state.oldest, state.latest = at, None, None
        return diff

    def _requeue(self, state: _PatientState, at: datetime) -> None:
        """After going back in time, facts dated later become events again."""
        state.pending = []
        for fact in state.facts.values():
            visible = _visible_from(fact)
            if visible is not None and visible > at:
                self._sequence += 1
                state.pending.append((visible, self._sequence, fact.kind, _concept(fact)))
        heapq.heapify(state.pending)

    def _reevaluate(
        self,
        state: _PatientState,
        rules: Sequence[LoadedRule],
        at: datetime,
        restay: bool = False,
    ) -> AlertDiff:
        """Evaluate ``rules`` (those some active line can trigger, or alerting) and diff."""
        ctx = Context(state.record, at, self.selection.pack.sets, self.selection.params)
        state.oldest = at if state.oldest is None or at < state.oldest else state.oldest
        state.latest = at if state.latest is None or at > state.latest else state.latest
        names = ctx.active_set_names()
        stay = current_stay(state.record, at)
        diff = AlertDiff()
        for rule in rules:
            old = state.alerts.get(rule.index)
            if rule.trigger_set is not None and rule.trigger_set not in names and not old:
                continue  # no line can bind it and nothing to resolve
            fresh = {a.id: a for a in evaluate_rule(rule, ctx, stay)}
            _diff_rule(old or {}, fresh, diff)
            if fresh:
                state.alerts[rule.index] = fresh
            else:
                state.alerts.pop(rule.index, None)
        stay_key = (stay.stay_id, stay.ward) if stay else (None, None)
        if restay or stay_key != state.stay:
            state.stay = stay_key
            self._restay(state, stay_key, diff)
        return diff

    def _restay(
        self, state: _PatientState, stay: tuple[str | None, str | None], diff: AlertDiff
    ) -> None:
        """Alerts carry the stay current when they were last evaluated: move them along."""
        updated = {a.id for a in diff.updated}
        for alerts in state.alerts.values():
            for alert_id, alert in list(alerts.items()):
                if (alert.stay_id, alert.ward) != stay:
                    moved = alert.model_copy(update={"stay_id": stay[0], "ward": stay[1]})
                    alerts[alert_id] = moved
                    if alert_id in updated:
                        diff.updated = [moved if a.id == alert_id else a for a in diff.updated]
                    elif alert_id in {a.id for a in diff.new}:
                        diff.new = [moved if a.id == alert_id else a for a in diff.new]
                    else:
                        diff.updated.append(moved)

    def _sorted(self, diff: AlertDiff) -> AlertDiff:
        index = {r.id: i for i, r in enumerate(self.selection.rules)}

        def key(alert: Alert) -> tuple[int, str, str]:
            return (index.get(alert.rule_id, -1), alert.patient_id, alert.id)

        return AlertDiff(
            sorted(diff.new, key=key), sorted(diff.updated, key=key), sorted(diff.resolved, key=key)
        )


def _crosses(moment: datetime | None, since: datetime, until: datetime) -> bool:
    return moment is not None and since < moment <= until


def _diff_rule(old: Mapping[str, Alert], fresh: Mapping[str, Alert], diff: AlertDiff) -> None:
    for alert_id, alert in fresh.items():
        before = old.get(alert_id)
        if before is None:
            diff.new.append(alert)
        elif not _same_content(before, alert):
            diff.updated.append(alert)
    diff.resolved.extend(alert for alert_id, alert in old.items() if alert_id not in fresh)


def _measure_key(fact: LabResult | Observation) -> tuple[datetime, str]:
    return (fact.time, fact.fact_id)


def _place(record: PatientRecord, fact: AnyFact) -> None:
    """Add a fact to a record, keeping series sorted as ``PatientRecord.sort`` would."""
    match fact:
        case LabResult(concept=str(concept)):
            insort(record.labs.setdefault(concept, []), fact, key=_measure_key)
        case Observation(concept=str(concept)):
            insort(record.observations.setdefault(concept, []), fact, key=_measure_key)
        case Stay():
            record.stays.append(fact)
            record.stays.sort(key=lambda s: (s.admit_time or datetime.min, s.stay_id))
        case MedicationAdministration():
            insort(record.administrations, fact, key=lambda a: (a.time, a.fact_id))
        case _:
            record.add(fact)


def _discard(record: PatientRecord, fact: AnyFact) -> None:
    match fact:
        case Patient():
            if record.patient is fact:
                record.patient = None
        case LabResult(concept=str(concept)):
            _remove(record.labs.get(concept, []), fact)
        case LabResult():
            _remove(record.unmapped_labs, fact)
        case Observation(concept=str(concept)):
            _remove(record.observations.get(concept, []), fact)
        case Stay():
            _remove(record.stays, fact)
        case MedicationOrder():
            _remove(record.orders, fact)
        case MedicationAdministration():
            _remove(record.administrations, fact)
        case Condition():
            _remove(record.conditions, fact)
        case Allergy():
            _remove(record.allergies, fact)
        case Pregnancy():
            _remove(record.pregnancies, fact)


def _remove(facts: list[Any], fact: AnyFact) -> None:
    for i, candidate in enumerate(facts):
        if candidate is fact:
            del facts[i]
            return
