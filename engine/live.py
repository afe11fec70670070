"""Incremental (live) evaluation: a new fact re-evaluates only the rules it can change.

``LiveEvaluator`` keeps, per patient, the facts received so far that its rules can read (a
``PatientRecord`` kept sorted; stays always) and the current alerts per rule. ``add(fact)``
re-evaluates, for that patient only, the rules whose ``depends_on`` lists the fact's kind (and,
for labs and observations, its concept; for an order line, the rules reading a set it is in:
``line_sets``) that an active line can trigger or that have alerts to resolve, and returns what
changed as an ``AlertDiff`` (new, updated, resolved alerts by alert id). A fact no rule reads
costs a dictionary lookup.

An alert is explained when it is read, not when it is found. An update keeps what fired (the
rule, the drug lines, the evaluation time and stay: ``_Entry``); ``alerts()`` and a diff's lists
explain it (the combination evaluated again with tracing on: evidence, thresholds, severity
after escalations, message), once. That gives the alert an immediate explanation would have
given: until the rule is evaluated again, none of the facts it reads changes (a change of one
re-evaluates it, which makes a new entry), and a diff still held when more facts come is
explained before they are taken in. So a firing update costs its evaluation; its explanation
is paid by whoever reads it (the service's live worklist, before writing the alerts).

Time is a timer queue, not a poll. Each evaluation of a rule for a patient computes the next
moment its result could change by time passing alone (a fact leaving a ``within`` window, an
order line's duration reaching its threshold, a birthday for age, clearance and eGFR: see
``rule_timing``), and each patient has one entry for its next event (an order line or a stay
starting or ending, a fact dated later than the clock when it arrived becoming visible). All of
them sit in one heap; ``tick(now)`` pops the entries due and re-evaluates those rules of those
patients only. Entries superseded by a later evaluation stay in the heap and are skipped when
popped (the state keeps the one deadline that counts). After ``tick(t)`` the current alerts are
exactly those of ``evaluate(pack, all facts, t)`` (the property tests hold the two together);
a clock going back re-evaluates in full the patients evaluated later than ``t``.

Diffs combine: an alert that appears then resolves within one batch is no change at all.

>>> from vigie.engine.alerts import Alert
>>> AlertDiff().merge(AlertDiff(new=[])).new
[]
"""

from __future__ import annotations

import heapq
import weakref
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from operator import attrgetter, itemgetter
from typing import Any

from vigie.engine.alerts import Alert
from vigie.engine.derived import counts_for_mme
from vigie.engine.evaluate import (
    Context,
    combination_alert_id,
    current_stay,
    explain_combination,
    firing_combinations,
    is_active,
    normalise_time,
    select,
)
from vigie.engine.factset import PatientRecord
from vigie.engine.load import CodeSets, LoadedPack, LoadedRule, Selection
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

__all__ = [
    "OPIOID_LINES",
    "AlertDiff",
    "LiveEvaluator",
    "RuleTiming",
    "line_sets",
    "rule_timing",
    "same_content",
]


# A pending change of a live evaluation, by alert id: the alert's content before (its last
# explanation, None if it had none), its entry after (None: it stopped), the rule id and patient.
_Change = tuple[Alert | None, "_Entry | None", str, str]


class AlertDiff:
    """What changed: alerts that appeared, changed (same id, other content) or stopped.

    The live evaluator's diffs are explained when first read (``new``, ``updated``,
    ``resolved``, comparison, ``bool``): until then they hold the changes by alert id, the
    content each alert had before (its last explanation) and its entry after. An alert that
    nobody could have read yet (never explained) and that stopped is no change; one that fired
    again is ``updated`` only when its explanation differs from the last one. A diff still held
    when its evaluator is given more facts is explained first, as the update left it."""

    __slots__ = ("__weakref__", "_changes", "_explain", "_new", "_resolved", "_updated")

    def __init__(
        self,
        new: list[Alert] | None = None,
        updated: list[Alert] | None = None,
        resolved: list[Alert] | None = None,
    ) -> None:  # built on every update, so kept cheap: a list is made when first read
        self._new = new
        self._updated = updated
        self._resolved = resolved
        self._changes: dict[str, _Change] | None = None
        self._explain: Callable[[_Entry], Alert] | None = None

    @classmethod
    def _pending(cls, changes: dict[str, _Change], explain: Callable[[_Entry], Alert]) -> AlertDiff:
        diff = cls()
        diff._changes, diff._explain = changes, explain
        return diff

    def _settle(self) -> None:
        """Explain the pending changes into the three lists (once)."""
        changes, explain = self._changes, self._explain
        if not changes or explain is None:
            return
        new: list[Alert] = []
        updated: list[Alert] = []
        resolved: list[Alert] = []
        for before, after, _, _ in changes.values():
            if after is None:
                if before is not None:
                    resolved.append(before)
                continue
            alert = explain(after)  # may raise (a rule's error): the changes are kept
            if before is None:
                new.append(alert)
            elif not same_content(before, alert):
                updated.append(alert)
        self._changes = None
        self._new = (self._new or []) + new
        self._updated = (self._updated or []) + updated
        self._resolved = (self._resolved or []) + resolved

    def _lists(self) -> tuple[list[Alert], list[Alert], list[Alert]]:
        """New, updated and resolved, explained (the lists made when first read)."""
        self._settle()
        if self._new is None or self._updated is None or self._resolved is None:
            self._new, self._updated = self._new or [], self._updated or []
            self._resolved = self._resolved or []
        return self._new, self._updated, self._resolved

    @property
    def new(self) -> list[Alert]:
        return self._lists()[0]

    @property
    def updated(self) -> list[Alert]:
        return self._lists()[1]

    @property
    def resolved(self) -> list[Alert]:
        return self._lists()[2]

    def patients(self) -> set[str]:
        """The patients with a change, unexplained changes included (that may turn out to be
        none: an alert fired again unchanged)."""
        parts = (self._new, self._updated, self._resolved)
        found = {a.patient_id for part in parts if part for a in part}
        found.update(change[3] for change in (self._changes or {}).values())
        return found

    def __bool__(self) -> bool:
        if self._new or self._updated or self._resolved:
            return True
        changes = self._changes
        if not changes:
            return False
        for before, after, _, _ in changes.values():
            if (before is None) != (after is None):
                return True  # new, or resolved after being explained
        self._settle()
        return bool(self._new or self._updated or self._resolved)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AlertDiff):
            return NotImplemented
        return (self.new, self.updated, self.resolved) == (other.new, other.updated, other.resolved)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by content

    def __repr__(self) -> str:
        return f"AlertDiff(new={self.new!r}, updated={self.updated!r}, resolved={self.resolved!r})"

    def merge(self, later: AlertDiff) -> AlertDiff:
        """This diff followed by ``later``, as one diff (new then resolved cancel out...)."""
        if self._explain is not None or later._explain is not None:
            explained = self._new or self._updated or self._resolved
            if not (explained or later._new or later._updated or later._resolved):
                changes = dict(self._changes or {})
                _merge_changes(changes, later._changes or {})
                return AlertDiff._pending(changes, self._explain or later._explain)  # type: ignore[arg-type]
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


def _merge_changes(changes: dict[str, _Change], later: Mapping[str, _Change]) -> None:
    """``later``'s changes after ``changes``' (in place): each alert from its content before the
    first to its entry after the last; one that appeared and stopped in between is none."""
    for alert_id, change in later.items():
        earlier = changes.get(alert_id)
        if earlier is None:
            changes[alert_id] = change
        elif earlier[0] is None and change[1] is None:
            del changes[alert_id]
        else:
            changes[alert_id] = (earlier[0], change[1], change[2], change[3])


@dataclass(slots=True, eq=False)
class _Entry:
    """An alert of the live state: found (rule, patient, drug lines, evaluation time and stay)
    on an update, explained when read (``alert``, then kept). ``seen`` is the last explanation
    of the same alert before this evaluation (None if there was none): what the next diff
    compares with."""

    id: str
    patient_id: str
    rule: LoadedRule
    combo: tuple[MedicationOrder, ...]
    identity: tuple[str, ...]
    stay: Stay | None
    as_of: datetime
    seen: Alert | None
    alert: Alert | None = None

    @property
    def shown(self) -> Alert | None:
        """Its latest explanation: its own, or the one before it."""
        return self.alert if self.alert is not None else self.seen


def same_content(a: Alert, b: Alert) -> bool:
    """The same alert as a worklist shows it: equal but for ``as_of`` (when it was last
    evaluated)."""
    return (
        a.severity == b.severity
        and a.message == b.message
        and a.stay_id == b.stay_id
        and a.ward == b.ward
        and a.evidence == b.evidence
        and a.drugs == b.drugs
        and a.priority == b.priority
    )


_MEASURE_TYPES = (LabResult, Observation)  # a tuple: ``isinstance`` without a union per call


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


# ``_visible_from`` by the fact's exact type (a subclass goes through the function).
_VISIBLE_AT: dict[type, Callable[[Any], datetime | None]] = {
    LabResult: attrgetter("time"),
    Observation: attrgetter("time"),
    MedicationAdministration: attrgetter("time"),
    Condition: attrgetter("onset"),
    Allergy: attrgetter("recorded"),
    Pregnancy: attrgetter("recorded"),
}


def _concept(fact: AnyFact) -> str | None:
    return fact.concept if isinstance(fact, _MEASURE_TYPES) else None


# Timers ------------------------------------------------------------------------------------------
#
# Time reaches a rule's result in a few ways only: facts dated later than the evaluation time are
# not read yet, order lines and stays start and end (both are patient events, below), windows
# ``within w`` (a fact at t leaves the window after t + w), an order line's ``duration``
# compared with a constant or a parameter (start + c), and the age (birthdays; clearance and eGFR
# read it). Between two such moments the result cannot change, so a rule is re-evaluated only
# when the next one is reached. Anything else that reads the clock (``now``, a duration
# used otherwise than against a constant) makes the rule *polled*: re-evaluated on every tick.

_MICROSECOND = timedelta(microseconds=1)
_COMPARISONS = frozenset({"gt", "ge", "lt", "le", "eq", "ne", "between"})
_COUNTS = frozenset({"lab_count", "lab_none"})


@dataclass(frozen=True, slots=True)
class RuleTiming:
    """What time passing can change in a rule: offsets added to fact times (window lengths,
    duration thresholds), order-line durations, ages; ``polled`` when that cannot be bounded,
    ``moving_evidence`` when a firing alert quotes a window start that slides with the clock
    (a count over ``within w``)."""

    offsets: tuple[timedelta, ...] = ()
    durations: bool = False
    age: bool = False
    polled: bool = False
    moving_evidence: bool = False


def rule_timing(rule: Mapping[str, Any], params: Mapping[str, float]) -> RuleTiming | None:
    """The timing of a rule's IR (``None``: only patient events can change its result).

    >>> rule_timing({"bindings": [], "condition": {"op": "age", "args": []}, "escalations": [],
    ...              "message": []}, {})
    RuleTiming(offsets=(), durations=False, age=True, polled=False, moving_evidence=False)
    """
    reader = _TimingReader(params)
    reader.read([rule.get("bindings"), rule.get("condition"), rule.get("escalations")], None)
    for part in rule.get("message") or ():
        reader.read(part.get("expr"), None, message=True)
    timing = RuleTiming(
        offsets=tuple(timedelta(seconds=s) for s in sorted(reader.offsets)),
        durations=reader.durations,
        age=reader.age,
        polled=reader.polled,
        moving_evidence=reader.moving_evidence,
    )
    return timing if timing != RuleTiming() else None


class _TimingReader:
    def __init__(self, params: Mapping[str, float]) -> None:
        self.params = params
        self.offsets: set[float] = set()
        self.durations = self.age = self.polled = self.moving_evidence = False

    def read(self, node: Any, parent: Mapping[str, Any] | None, message: bool = False) -> None:
        if isinstance(node, list):
            for item in node:
                self.read(item, parent, message)
            return
        if not isinstance(node, dict):
            return
        op = node.get("op")
        if op == "now":
            self.polled = True
        elif op == "attr" and node.get("name") == "duration":
            self._duration(node, parent, message)
        elif op in ("age", "clearance", "egfr"):
            self.age = True
        window = node.get("window") if op else None
        if isinstance(window, dict) and window.get("within"):
            seconds = self.offset(window["within"])
            if seconds is None:
                self.polled = True
            else:
                self.offsets.add(seconds)
            if op in _COUNTS and not window.get("before"):
                self.moving_evidence = True
        for value in node.values():
            if isinstance(value, dict | list):
                self.read(value, node, message)

    def _duration(
        self, node: Mapping[str, Any], parent: Mapping[str, Any] | None, message: bool
    ) -> None:
        self.durations = True
        others = [a for a in (parent or {}).get("args", ()) if a is not node]
        thresholds = [self.offset(a) for a in others]
        if message or parent is None or parent.get("op") not in _COMPARISONS or None in thresholds:
            self.polled = True
            return
        self.offsets.update(t for t in thresholds if t is not None)

    def offset(self, node: Mapping[str, Any]) -> float | None:
        """Seconds of a constant duration (a constant, a parameter, their conversion)."""
        match node.get("op"):
            case "const" if isinstance(node.get("value"), int | float):
                return float(node["value"])
            case "param" if node.get("name") in self.params:
                return float(self.params[node["name"]])
            case "convert":
                inner = self.offset(node["args"][0])
                return None if inner is None else inner * float(node["factor"])
        return None


_LINE_QUERIES = frozenset({"any_drug", "count_drugs", "daily_dose", "in_set"})
OPIOID_LINES = "<opioid lines>"
"""The lines ``mme`` sums (``derived.counts_for_mme``), as a set name no pack can declare."""


def _required_ops(rule: Mapping[str, Any]) -> set[str]:
    """The operators every firing of the rule evaluates to true: the condition's, through
    ``and`` only (``has_allergy`` there: no alert without an allergy on record).

    >>> sorted(_required_ops({"condition": {"op": "and", "args": [
    ...     {"op": "has_allergy", "args": []}, {"op": "or", "args": [
    ...         {"op": "has_condition", "args": []}]}]}}))
    ['and', 'has_allergy', 'or']
    """
    found: set[str] = set()
    stack = [rule.get("condition")]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found.add(node.get("op", ""))
            if node.get("op") == "and":
                stack.extend(node.get("args") or ())
    return found


def line_sets(rule: Mapping[str, Any]) -> frozenset[str] | None:
    """The sets whose lines a rule can read (bound, tested, counted or summed; ``mme``: the
    opioid lines, ``OPIOID_LINES``), ``None`` when any line can matter (a binding without a
    set, a query without a set).

    >>> sorted(line_sets({"bindings": [{"kind": "drug", "set": "vka"}],
    ...                   "condition": {"op": "any_drug", "set": "nsaids", "args": []}}) or ())
    ['nsaids', 'vka']
    >>> line_sets({"bindings": [], "condition": {"op": "mme", "args": []}})
    frozenset({'<opioid lines>'})
    """
    names: set[str] = set()
    for binding in rule.get("bindings") or ():
        if binding.get("kind") == "drug":
            if binding.get("set") is None:
                return None
            names.add(binding["set"])
    stack: list[Any] = [rule.get(k) for k in ("bindings", "condition", "escalations", "message")]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            op = node.get("op")
            if op == "mme":
                names.add(OPIOID_LINES)
            elif op in _LINE_QUERIES and node.get("set") is None:
                return None
            elif op in _LINE_QUERIES:
                names.add(node["set"])
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
    return frozenset(names)


def _next_birthday(birth: date, after: datetime) -> datetime:
    """The first midnight after ``after`` at which ``age_in_years`` changes (29 February: the
    age changes on 1 March in other years)."""
    for year in (after.year, after.year + 1):
        try:
            day = date(year, birth.month, birth.day)
        except ValueError:
            day = date(year, 3, 1)
        moment = datetime(day.year, day.month, day.day)
        if moment > after:
            return moment
    raise AssertionError("a birthday comes every year")  # pragma: no cover


class _Deadline:
    """The earliest moment after ``at`` among candidate moments where a result may change:
    the moment itself, or the next microsecond when it is ``at`` (strict comparisons and
    inclusive window ends change just after)."""

    __slots__ = ("at", "best")

    def __init__(self, at: datetime) -> None:
        self.at = at
        self.best: datetime | None = None

    def offer(self, moment: datetime) -> None:
        if moment < self.at:
            return
        if moment == self.at:
            moment = moment + _MICROSECOND
        if self.best is None or moment < self.best:
            self.best = moment

    def offer_series(self, series: Sequence[LabResult | Observation], offset: timedelta) -> None:
        """The first fact of a time-sorted series whose time + offset is not before ``at``."""
        i = bisect_left(series, self.at - offset, key=_fact_time)
        if i < len(series):
            self.offer(series[i].time + offset)


_fact_time: Callable[[LabResult | Observation], datetime] = attrgetter("time")


def _anchors(fact: AnyFact, timing: RuleTiming) -> list[datetime]:
    """The moments of a fact that the rule's offsets count from."""
    match fact:
        case LabResult() | Observation() | MedicationAdministration():
            return [fact.time]
        case MedicationOrder() if timing.durations:
            return [t for t in (fact.start, fact.end) if t is not None]
        case Condition() if fact.onset is not None:
            return [fact.onset]
        case Allergy() if fact.recorded is not None:
            return [fact.recorded]
        case Pregnancy():
            return [fact.recorded]
    return []


def _rule_deadline(
    rule: LoadedRule, timing: RuleTiming, record: PatientRecord, at: datetime, firing: bool
) -> datetime | None:
    """When the rule must next be re-evaluated for this patient (None: only on events)."""
    if timing.polled or (firing and timing.moving_evidence):
        return at + _MICROSECOND
    deadline = _Deadline(at)
    offsets = timing.offsets
    for concept in rule.concepts:
        for series in (record.labs.get(concept), record.observations.get(concept)):
            if series:
                for offset in offsets:
                    deadline.offer_series(series, offset)
    others: list[AnyFact] = []
    kinds = rule.kinds
    if timing.durations:
        others.extend(record.orders)
    if "condition" in kinds:
        others.extend(record.conditions)
    if "allergy" in kinds:
        others.extend(record.allergies)
    if "pregnancy" in kinds:
        others.extend(record.pregnancies)
    if "medication_administration" in kinds:
        others.extend(record.administrations)
    for fact in others:
        _offer_fact(deadline, fact, timing)
    patient = record.patient
    if timing.age and patient is not None and patient.birth_date is not None:
        deadline.offer(_next_birthday(patient.birth_date, at))
    return deadline.best


def _offer_fact(deadline: _Deadline, fact: AnyFact, timing: RuleTiming) -> None:
    for anchor in _anchors(fact, timing):
        for offset in timing.offsets:
            deadline.offer(anchor + offset)


def _fact_deadline(fact: AnyFact, timing: RuleTiming, at: datetime) -> datetime | None:
    """The earliest moment after ``at`` where this one fact may change the rule's result."""
    if isinstance(fact, _MEASURE_TYPES):  # the common case, without the helpers
        moment = fact.time
        for offset in timing.offsets:  # sorted: the first reaching ``at`` is the earliest
            if moment + offset >= at:
                moment += offset
                return at + _MICROSECOND if moment == at else moment
        return None
    deadline = _Deadline(at)
    _offer_fact(deadline, fact, timing)
    if timing.age and isinstance(fact, Patient) and fact.birth_date is not None:
        deadline.offer(_next_birthday(fact.birth_date, at))
    return deadline.best


def _event_moments(fact: object) -> tuple[datetime | None, ...]:
    """Patient events of a fact: an order line or a stay starting or ending."""
    match fact:
        case MedicationOrder():
            return (fact.start, fact.end)
        case Stay():
            return (fact.admit_time, fact.discharge_time)
    return ()


@dataclass(slots=True)
class _PatientState:
    record: PatientRecord
    # rule index → identity (sorted order ids of the drug lines) → alert
    alerts: dict[int, dict[tuple[str, ...], _Entry]] = field(default_factory=dict)
    facts: dict[tuple[str, str], AnyFact] = field(default_factory=dict)
    # Facts dated later than when they arrived: (visible from, sequence, kind, concept), a heap.
    pending: list[tuple[datetime, int, str, str | None]] = field(default_factory=list)
    events_until: datetime | None = None  # patient events up to then have been processed
    event_due: datetime | None = None  # the next patient event scheduled in the global queue
    timers: dict[int, tuple[datetime, datetime]] = field(default_factory=dict)  # deadline, base
    latest: datetime | None = None  # the latest evaluation time of any of its rules
    stay: tuple[str | None, str | None] = (None, None)
    active: _ActiveLines | None = None  # active lines, while no line starts or ends
    # The current stay over [since, until): (stay, since, until), while no stay comes or goes.
    stay_at: tuple[Stay | None, datetime, datetime | None] | None = None
    # The evidence built while explaining its alerts (``Context.evidence``): an alert explained
    # again on a later update reuses the descriptions of the facts it already quoted.
    evidence: dict[tuple[Any, ...], tuple[Any, Any]] = field(default_factory=dict)


@dataclass(slots=True)
class _ActiveLines:
    """The active lines of a patient over [since, until), their sets, and the lines of each
    (set, routes) the rules asked for (``Context.lines``), shared by every evaluation then."""

    lines: list[MedicationOrder]
    line_sets: list[tuple[MedicationOrder, frozenset[str]]]  # each line with its own sets
    names: frozenset[str]
    by_set: dict[tuple[str | None, frozenset[str] | None], list[MedicationOrder]]
    since: datetime
    until: datetime | None
    amounts: dict[Any, Any]  # what only the lines decide (``Context.amounts``)
    # The rules they can trigger among the readers of a (kind, concept) key, by the id of the
    # readers' mapping (``LiveEvaluator._dependents``' values, which live as long as the
    # evaluator): with and without the rules needing an allergy on record.
    evaluable: dict[int, tuple[dict[int, LoadedRule], dict[int, LoadedRule]]]


class _LiveContext(Context):
    """An evaluation context that starts from the patient's cached active lines."""

    __slots__ = ("_names",)

    def __init__(
        self,
        record: PatientRecord,
        as_of: datetime,
        sets: CodeSets,
        params: Mapping[str, float],
        active: _ActiveLines,
        state: _PatientState,
    ) -> None:  # every slot of ``Context`` set once (not built by it, then replaced)
        self.sets = sets
        self.params = params
        self.trace = self.thresholds = None
        self.bound, self.values, self.combo_values = {}, {}, {}
        self.renew(record, as_of, active, state)

    def renew(
        self, record: PatientRecord, as_of: datetime, active: _ActiveLines, state: _PatientState
    ) -> None:
        """The same context for another evaluation (the evaluator keeps one: ``bound``,
        ``values`` and ``combo_values`` are reset by ``firing_combinations``)."""
        self.record = record
        self.as_of = as_of
        self._active = active.lines
        self._line_sets = active.line_sets
        self._lines = active.by_set
        self.amounts = active.amounts
        self._names = active.names
        self.evidence = state.evidence
        self.shared = {}

    def active_set_names(self) -> set[str]:
        return set(self._names)


_EVENTS = -1  # the rule index of a patient's event entries in the timer queue
_MEASURES = frozenset({"lab", "observation"})  # the kinds whose concept says which rules read
_NONE: Mapping[int, LoadedRule] = {}
_NO_KEYS: AbstractSet[tuple[str, str | None]] = frozenset()
_OPIOID_NAMES = frozenset({OPIOID_LINES})
_ALWAYS_KEPT = (Stay, Patient)  # kept whether a rule reads them or not


def _dependents(
    rules: Iterable[LoadedRule],
) -> dict[tuple[str, str | None], dict[int, LoadedRule]]:
    """The rules reading each (kind, concept) key (concept None but for labs and
    observations), as ``LoadedRule.depends_on`` answers, indexed once."""
    index: dict[tuple[str, str | None], dict[int, LoadedRule]] = {}
    for rule in rules:
        for kind in rule.kinds:
            concepts = rule.concepts if kind in _MEASURES else (None,)
            for concept in concepts:
                index.setdefault((kind, concept), {})[rule.index] = rule
    return index


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
        self._dependents = _dependents(self.selection.rules)
        self._kept_readers = frozenset(id(readers) for readers in self._dependents.values())
        self._by_index = {r.index: r for r in self.selection.rules}
        self._position = {r.id: i for i, r in enumerate(self.selection.rules)}
        self._timing: dict[int, RuleTiming] = {}
        for rule in self.selection.rules:
            timing = rule_timing(rule.ir, self.selection.params)
            if timing is not None:
                self._timing[rule.index] = timing
        self._any_line: dict[int, LoadedRule] = {}
        self._line_readers: dict[str, dict[int, LoadedRule]] = {}
        for index, rule in self._rules_for([("medication_order", None)]).items():
            names = line_sets(rule.ir)
            if names is None:
                self._any_line[index] = rule
            for name in names or ():
                self._line_readers.setdefault(name, {})[index] = rule
        self._reads_mme = OPIOID_LINES in self._line_readers
        # Rules that cannot hold without an allergy on record (``has allergy to d`` among the
        # conditions all required): not evaluated for a patient with none, when a line comes.
        self._needs_allergy = frozenset(
            r.index for r in self.selection.rules if "has_allergy" in _required_ops(r.ir)
        )
        # One queue for every patient: (deadline, sequence, patient id, rule index or _EVENTS).
        self._queue: list[tuple[datetime, int, str, int]] = []
        self._latest: datetime | None = None  # the latest evaluation time of any patient
        self._sequence = 0
        self.fired = 0  # alerts found so far (a rule firing for a combination of lines)
        self.explained = 0  # alerts explained so far (when read)
        self.evaluations = 0  # rule evaluations for one patient so far (firing or not)
        # The diffs returned and maybe still held, explained before the next update changes
        # what they would be explained from.
        self._held: list[weakref.ref[AlertDiff]] = []
        self._context: _LiveContext | None = None  # renewed for each evaluation

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
            (index, entry.patient_id, entry.id, entry)
            for state in states
            for index, entries in state.alerts.items()
            for entry in entries.values()
        ]
        found.sort(key=_first_three)
        return [self._explained(item[3]) for item in found]

    def record(self, patient_id: str) -> PatientRecord | None:
        """The patient's facts as the pack's rules see them (those no rule reads are left
        out, but for stays)."""
        state = self._patients.get(patient_id)
        return state.record if state else None

    def timing(self, rule_id: str) -> RuleTiming | None:
        """How time can change a selected rule (None: only order lines, stays and facts dated
        in the future)."""
        return self._timing.get(self.selection.pack.rule(rule_id).index)

    def queued(self) -> int:
        """Entries in the timer queue (superseded ones included, until popped)."""
        return len(self._queue)

    def next_deadline(self) -> datetime | None:
        """The earliest moment queued (possibly for an entry since superseded)."""
        return self._queue[0][0] if self._queue else None

    # Updates

    def add(self, fact: AnyFact, now: datetime | None = None) -> AlertDiff:
        """Take one fact in and re-evaluate what depends on it, for its patient only."""
        if self._held:
            self._settle_held()
        changes = self._add_measure(fact, now) if isinstance(fact, _MEASURE_TYPES) else None
        if changes is None:
            changes = self._add(fact, now)
        return self._diff(changes) if changes else AlertDiff()

    def _add_measure(
        self, fact: LabResult | Observation, now: datetime | None
    ) -> dict[str, _Change] | None:
        """``_add`` for the most common fact: a new result of a known patient, dated no later
        than ``now``, that some rule reads (its concept's readers evaluated). None: not that
        case, ``_add`` takes it (what is done here before saying so, ``_advance``, it redoes
        alike)."""
        if now is None:
            return None
        at = now if now.tzinfo is None else normalise_time(now)
        if self.now is None or at > self.now:
            self.now = at
        concept = fact.concept
        readers = self._dependents.get((fact.kind, concept))
        if not readers and (fact.kind, fact.fact_id) not in self._owner:
            return {}  # no rule reads it (nor an earlier version of it)
        state = self._patients.get(fact.patient_id)
        if (
            not readers
            or concept is None
            or state is None
            or fact.time > at  # visible later: an event to queue
            or (state.events_until is not None and at < state.events_until)  # a rewind
        ):
            return None
        key = (fact.kind, fact.fact_id)
        owners = self._owner
        if key in owners:  # a new version of a fact: its earlier one goes
            return None
        owners[key] = fact.patient_id
        state.facts[key] = fact
        _add_to_series(state.record, fact, concept)
        return self._reevaluate(state, readers, at, fact=fact)

    def add_many(self, facts: Iterable[AnyFact], now: datetime | None = None) -> AlertDiff:
        """Take several facts in (a message's), as one diff. With ``now`` given, each patient's
        rules that the facts reach are evaluated once, after all of them are in: the alerts and
        their timers are those of adding the facts one by one at ``now``, without evaluating
        the same rules again for each result of a message. Without it, each fact is evaluated
        as ``add`` does, at its own time."""
        if self._held:
            self._settle_held()
        changes: dict[str, _Change] = {}
        if now is None:
            for fact in facts:
                more = self._add(fact, now)
                if more:
                    _merge_changes(changes, more)
            return self._diff(changes, sort=True)
        waiting: dict[str, tuple[_PatientState, list[Mapping[int, LoadedRule]]]] = {}
        at = normalise_time(now)
        for fact in facts:
            taken = self._take(fact, now)
            if taken is None:
                continue
            state, rules, at, elsewhere = taken
            if elsewhere:  # a fact that moved to another patient: the first one, evaluated
                _merge_changes(changes, elsewhere)
            if state is not None:
                waiting.setdefault(state.record.patient_id, (state, []))[1].append(rules)
        for state, reached in waiting.values():
            rules = (
                reached[0] if len(reached) == 1 else {k: r for m in reached for k, r in m.items()}
            )
            _merge_changes(changes, self._reevaluate(state, rules, at, full=True))
        return self._diff(changes, sort=True)

    def _add(self, fact: AnyFact, now: datetime | None) -> dict[str, _Change] | None:
        taken = self._take(fact, now)
        if taken is None:
            return None
        state, rules, at, elsewhere = taken
        if state is None:
            return elsewhere
        fresh = rules is self._by_index  # a new patient: every rule, timers computed in full
        changed = self._reevaluate(state, rules, at, fact=fact, full=fresh)
        if elsewhere:  # another patient's alerts: no id in common
            changed.update(elsewhere)
        return changed

    def _take(
        self, fact: AnyFact, now: datetime | None
    ) -> (
        tuple[_PatientState | None, Mapping[int, LoadedRule], datetime, dict[str, _Change] | None]
        | None
    ):
        """Put a fact in its patient's record (its earlier version out): the patient's state
        and the rules to evaluate again (state None: none), the evaluation time, and what
        changed for another patient the fact moved from. None: no rule reads the fact."""
        getter = _VISIBLE_AT.get(type(fact))  # ``_visible_from`` without a call, most facts
        visible = getter(fact) if getter is not None else _visible_from(fact)
        at = self._advance(now, visible)
        key = (fact.kind, fact.concept if isinstance(fact, _MEASURE_TYPES) else None)
        readers = self._dependents.get(key if key[0] in _MEASURES else (key[0], None), _NONE)
        if not readers and not isinstance(fact, Stay) and (key[0], fact.fact_id) not in self._owner:
            return None  # no rule of the pack reads it (a stay moves alerts along)
        previous, moved, elsewhere = self._remove_previous(fact, at)
        if isinstance(fact, Patient) and isinstance(previous, Patient):
            fact = fact.merged_over(previous)  # a sparse record keeps what an earlier one gave
        state = self._patients.get(fact.patient_id)
        fresh = state is None
        if state is None:
            state = self._patients[fact.patient_id] = _PatientState(
                PatientRecord(fact.patient_id), events_until=at
            )
        else:
            self._rewind_events(state, at)
        self._insert(state, fact, at, visible, bool(readers))
        self._schedule_events(state, fact, at, visible)
        if fresh:
            rules: Mapping[int, LoadedRule] = self._by_index
        elif isinstance(fact, MedicationOrder):
            lines = [fact, previous] if isinstance(previous, MedicationOrder) else [fact]
            rules = self._rules_for_lines(lines)
        else:
            rules = self._rules_for(moved | {key}) if moved and moved - {key} else readers
        if not rules and not isinstance(fact, Stay):
            return None, rules, at, elsewhere  # nothing reads it (a stay may move alerts along)
        return state, rules, at, elsewhere

    def retract(self, kind: str, fact_id: str, now: datetime | None = None) -> AlertDiff:
        """Withdraw a fact its sender retracted (HL7 OBX-11 ``D``/``W``, FHIR
        ``entered-in-error``): it leaves its patient's record and the rules reading it are
        evaluated again, as when an earlier version is replaced (after it, the alerts are those
        of ``evaluate`` on the remaining facts). A fact the evaluator does not hold (never
        received, retracted already, or of a kind no rule reads) changes nothing."""
        if self._held:
            self._settle_held()
        key = (kind, fact_id)
        owner = self._owner.get(key)
        state = self._patients.get(owner) if owner is not None else None
        old = state.facts.get(key) if state is not None else None
        if state is None or old is None:
            return AlertDiff()
        del self._owner[key]
        del state.facts[key]
        at = self._advance(now, None)
        self._rewind_events(state, at)
        _discard(state.record, old)
        rules: Mapping[int, LoadedRule]
        if isinstance(old, Stay):
            state.stay_at = None
        if isinstance(old, MedicationOrder):
            state.active = None
            rules = self._rules_for_lines([old])
        else:
            rules = self._rules_for({(old.kind, _concept(old))})
        changes = self._reevaluate(state, rules, at, restay=isinstance(old, Stay), full=True)
        return self._diff(changes, sort=True)

    def tick(self, now: datetime) -> AlertDiff:
        """Re-evaluate what time passing until ``now`` may have changed: the rules whose next
        deadline has come, of those patients only (any patient evaluated later than ``now`` —
        the clock went back — is evaluated again in full)."""
        if self._held:
            self._settle_held()
        at = normalise_time(now)
        self.now = at if self.now is None or at > self.now else self.now
        changes: dict[str, _Change] = {}
        if self._latest is not None and at < self._latest:
            changes = self._rewind(at)
        due: dict[str, set[int]] = {}
        queue = self._queue
        while queue and queue[0][0] <= at:
            deadline, _, patient_id, index = heapq.heappop(queue)
            state = self._patients[patient_id]
            if index == _EVENTS:
                if state.event_due == deadline:
                    state.event_due = None
                    due.setdefault(patient_id, set()).add(index)
            else:
                timer = state.timers.get(index)
                if timer is not None and timer[0] == deadline:
                    del state.timers[index]
                    due.setdefault(patient_id, set()).add(index)
        for patient_id in sorted(due):
            changed = self._tick_patient(self._patients[patient_id], due[patient_id], at)
            _merge_changes(changes, changed)
        return self._diff(changes, sort=True)

    # Explaining

    def _diff(self, changes: dict[str, _Change] | None, sort: bool = False) -> AlertDiff:
        """The diff of these changes, explained when read (held until then: ``_settle_held``)."""
        if not changes:
            return AlertDiff()
        if sort and len(changes) > 1:
            position = self._position
            ordered = sorted(
                changes.items(),
                key=lambda item: (position.get(item[1][2], -1), item[1][3], item[0]),
            )
            changes = dict(ordered)
        diff = AlertDiff._pending(changes, self._explained)
        self._held.append(weakref.ref(diff))
        return diff

    def _settle_held(self) -> None:
        """Explain the diffs still held before facts change: as the update that made them left
        them (a diff no longer held costs nothing)."""
        held, self._held = self._held, []
        for ref in held:
            diff = ref()
            if diff is not None:
                diff._settle()

    def _explained(self, entry: _Entry) -> Alert:
        """The entry's alert, explained on the patient's facts as of its evaluation (once)."""
        alert = entry.alert
        if alert is None:
            state = self._patients[entry.patient_id]
            active = self._active_lines(state, entry.as_of, keep=False)
            ctx = _LiveContext(
                state.record, entry.as_of, self.selection.pack.sets, self.selection.params,
                active, state,
            )  # fmt: skip
            alert = entry.alert = explain_combination(
                entry.rule, ctx, entry.combo, entry.identity, entry.stay
            )
            self.explained += 1
        return alert

    # Internals

    def _advance(self, now: datetime | None, fact_time: datetime | None) -> datetime:
        if now is not None:
            at = now if now.tzinfo is None else normalise_time(now)  # naive: UTC already
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
        self, fact: AnyFact, at: datetime
    ) -> tuple[AnyFact | None, AbstractSet[tuple[str, str | None]], dict[str, _Change] | None]:
        """Forget an earlier version of the same fact (same kind and id): the version and the
        dependency keys it touched. A fact that moved to another patient re-evaluates that one:
        what changed there comes third (None when it did not move)."""
        key = (fact.kind, fact.fact_id)
        owner = self._owner.get(key)
        self._owner[key] = fact.patient_id
        if owner is None:
            return None, _NO_KEYS, None
        state = self._patients[owner]
        old = state.facts.pop(key, None)
        if old is None:
            return None, _NO_KEYS, None
        _discard(state.record, old)
        if isinstance(old, MedicationOrder):
            state.active = None
        elif isinstance(old, Stay):
            state.stay_at = None
        touched = {(old.kind, _concept(old))}
        if owner != fact.patient_id:
            self._rewind_events(state, at)
            return None, _NO_KEYS, self._reevaluate(state, self._rules_for(touched), at)
        return old, touched, None

    def _insert(
        self,
        state: _PatientState,
        fact: AnyFact,
        at: datetime,
        visible: datetime | None,
        read: bool,
    ) -> None:
        state.facts[(fact.kind, fact.fact_id)] = fact
        if type(fact) is LabResult and read and fact.concept is not None:  # most facts
            _add_to_series(state.record, fact, fact.concept)
        elif isinstance(fact, MedicationOrder):
            _place(state.record, fact)
            if state.active is not None:
                state.active = self._with_line(state.active, fact, at)
        elif read or isinstance(fact, _ALWAYS_KEPT):
            _place(state.record, fact)  # a fact no rule of the pack reads is not kept
            if isinstance(fact, Stay):
                state.stay_at = None
        if visible is not None and visible > at:
            self._sequence += 1
            heapq.heappush(state.pending, (visible, self._sequence, fact.kind, _concept(fact)))

    def _rules_for(self, keys: Iterable[tuple[str, str | None]]) -> Mapping[int, LoadedRule]:
        """The selected rules that read facts of these (kind, concept) keys, by index."""
        found: Mapping[int, LoadedRule] = {}
        index = self._dependents
        for kind, concept in keys:
            dependents = index.get((kind, concept if kind in _MEASURES else None), _NONE)
            if dependents:
                found = dependents if not found else {**found, **dependents}
        return found

    def _rules_for_lines(self, lines: Iterable[MedicationOrder]) -> Mapping[int, LoadedRule]:
        """The rules a change of these order lines can affect: those reading a set the line (or
        an ingredient of it) is in, and those reading any line (a set-less binding, ``mme``)."""
        found = dict(self._any_line)
        for line in lines:
            for name in self._line_names(line):
                found.update(self._line_readers.get(name, {}))
        return found

    def _line_names(self, line: MedicationOrder) -> frozenset[str]:
        """The sets a line is in, with those of its ingredients (`daily dose of` counts a set's
        ingredients)."""
        atc = self.selection.pack.sets.atc
        names = atc(line.atc, line.route)
        for ingredient in line.ingredients:
            names = names | atc(ingredient.atc, line.route)
        if self._reads_mme and counts_for_mme(line.atc, line.ingredients):
            names = names | _OPIOID_NAMES
        return names

    # Patient events: order lines and stays starting or ending, facts dated in the future.

    def _schedule_events(
        self, state: _PatientState, fact: AnyFact, at: datetime, visible: datetime | None
    ) -> None:
        if visible is not None:  # a result, a condition...: visible from then, no other event
            if visible > at:
                self._queue_events(state, visible)
            return
        moments = [m for m in _event_moments(fact) if m is not None and m > at]
        if moments:
            self._queue_events(state, min(moments))

    def _queue_events(self, state: _PatientState, moment: datetime | None) -> None:
        if moment is not None and (state.event_due is None or moment < state.event_due):
            state.event_due = moment
            self._push(moment, state.record.patient_id, _EVENTS)

    def _next_event(self, state: _PatientState, after: datetime) -> datetime | None:
        moments = [
            m
            for fact in (*state.record.orders, *state.record.stays)
            for m in _event_moments(fact)
            if m is not None and m > after
        ]
        if state.pending:
            moments.append(state.pending[0][0])
        return min(moments, default=None)

    def _rewind_events(self, state: _PatientState, at: datetime) -> None:
        """An evaluation earlier than events already processed: process them again later."""
        if state.events_until is not None and at < state.events_until:
            state.events_until = at
            self._requeue(state, at)
            self._queue_events(state, self._next_event(state, at))

    def _crossed(self, state: _PatientState, at: datetime) -> Mapping[int, LoadedRule]:
        """The rules that read what happened after ``events_until`` up to ``at``: lines that
        started or ended, facts dated in the future that became visible."""
        since = state.events_until
        keys: set[tuple[str, str | None]] = set()
        if since is None:
            keys.add(("medication_order", None))
        lines = [
            o
            for o in state.record.orders
            if since is not None and (_crosses(o.start, since, at) or _crosses(o.end, since, at))
        ]
        while state.pending and state.pending[0][0] <= at:
            _, _, kind, concept = heapq.heappop(state.pending)
            keys.add((kind, concept))
        rules = self._rules_for(keys)
        return {**rules, **self._rules_for_lines(lines)} if lines else rules

    def _tick_patient(
        self, state: _PatientState, due: set[int], at: datetime
    ) -> dict[str, _Change]:
        chosen: dict[int, LoadedRule] = {}
        events = _EVENTS in due
        if events:
            chosen.update(self._crossed(state, at))
            state.events_until = at
            self._queue_events(state, self._next_event(state, at))
        chosen.update((i, self._by_index[i]) for i in due if i != _EVENTS)
        return self._reevaluate(state, chosen, at, restay=events)

    def _rewind(self, at: datetime) -> dict[str, _Change]:
        """The clock went back: patients evaluated later than ``at`` start again from facts."""
        changes: dict[str, _Change] = {}
        for patient_id in sorted(self._patients):
            state = self._patients[patient_id]
            if state.latest is None or state.latest <= at:
                continue
            state.timers.clear()
            state.event_due, state.events_until, state.latest = None, at, None
            self._requeue(state, at)
            self._queue_events(state, self._next_event(state, at))
            changes.update(self._reevaluate(state, self._by_index, at, restay=True, full=True))
        self._latest = max((s.latest for s in self._patients.values() if s.latest), default=None)
        return changes

    def _requeue(self, state: _PatientState, at: datetime) -> None:
        """After going back in time, facts dated later become events again."""
        state.pending = []
        for fact in state.facts.values():
            visible = _visible_from(fact)
            if visible is not None and visible > at:
                self._sequence += 1
                state.pending.append((visible, self._sequence, fact.kind, _concept(fact)))
        heapq.heapify(state.pending)

    def _push(self, deadline: datetime, patient_id: str, index: int) -> None:
        self._sequence += 1
        heapq.heappush(self._queue, (deadline, self._sequence, patient_id, index))

    def _reevaluate(
        self,
        state: _PatientState,
        rules: Mapping[int, LoadedRule],
        at: datetime,
        restay: bool = False,
        fact: AnyFact | None = None,
        full: bool = False,
    ) -> dict[str, _Change]:
        """Evaluate ``rules`` (those some active line can trigger, or with alerts), keep their
        alerts (unexplained entries), set their timers (``fact``: the one fact added since,
        ``full``: recompute them) and say what changed."""
        active = state.active  # ``_active_lines``' and ``_stay_at``'s kept answers, read here
        if active is None or not (
            active.since <= at and (active.until is None or at < active.until)
        ):
            active = self._active_lines(state, at)
        if state.latest is None or at > state.latest:
            state.latest = at
            if self._latest is None or at > self._latest:
                self._latest = at
        chosen = self._evaluable(state, rules, active)  # the others' timers dropped
        kept = state.stay_at
        if kept is not None and kept[1] <= at and (kept[2] is None or at < kept[2]):
            stay = kept[0]
        else:
            stay = self._stay_at(state, at)
        changes: dict[str, _Change] = {}
        if chosen:  # a context only for rules to evaluate (most facts reach none)
            kept_ctx = self._context
            if kept_ctx is None:
                kept_ctx = self._context = _LiveContext(
                    state.record, at, self.selection.pack.sets, self.selection.params, active,
                    state,
                )  # fmt: skip
            else:
                kept_ctx.renew(state.record, at, active, state)
            ctx = kept_ctx
            alerts, timings = state.alerts, self._timing
            patient_id = state.record.patient_id
        for index in sorted(chosen) if len(chosen) > 1 else chosen:
            rule = chosen[index]
            found = firing_combinations(rule, ctx)
            self.evaluations += 1
            old = alerts.get(index)
            if found:
                self.fired += len(found)
                fresh: dict[tuple[str, ...], _Entry] = {}
                rule_id = rule.id
                for combo, identity in found:
                    before = old.get(identity) if old else None
                    if before is None:
                        alert_id, seen = combination_alert_id(rule_id, patient_id, identity), None
                    else:  # found again: its id and its last explanation (``shown``)
                        alert_id = before.id
                        seen = before.alert if before.alert is not None else before.seen
                    fresh[identity] = entry = _Entry(
                        alert_id, patient_id, rule, combo, identity, stay, at, seen
                    )
                    changes[alert_id] = (seen, entry, rule_id, patient_id)
                if old:
                    for identity, entry in old.items():
                        if identity not in fresh:
                            changes[entry.id] = (entry.shown, None, rule_id, patient_id)
                alerts[index] = fresh
            elif old is not None:  # resolved by data
                for entry in old.values():
                    changes[entry.id] = (entry.shown, None, rule.id, patient_id)
                del alerts[index]
            timing = timings.get(index)
            if timing is not None:
                self._set_timer(state, rule, timing, at, fact, full, bool(found))
        stay_key = _stay_key(stay)
        if restay or stay_key != state.stay:
            state.stay = stay_key
            self._restay(state, stay, changes)
        return changes

    def _stay_at(self, state: _PatientState, at: datetime) -> Stay | None:
        """``current_stay`` at ``at``, kept over the interval where it cannot change (no stay
        admitted or discharged in it)."""
        kept = state.stay_at
        if kept is not None and kept[1] <= at and (kept[2] is None or at < kept[2]):
            return kept[0]
        stay = current_stay(state.record, at)
        moments = [
            m
            for s in state.record.stays
            if s.status != "cancelled"
            for m in (s.admit_time, s.discharge_time)
            if m is not None
        ]
        since = max((m for m in moments if m <= at), default=datetime.min)
        until = min((m for m in moments if m > at), default=None)
        state.stay_at = (stay, since, until)
        return stay

    def _evaluable(
        self, state: _PatientState, rules: Mapping[int, LoadedRule], active: _ActiveLines
    ) -> Mapping[int, LoadedRule]:
        """Those of ``rules`` that the active lines can trigger (some line in each of the
        rule's ``required_sets``: an interaction needs both its classes), and those with alerts
        to resolve: a pack of a thousand interactions costs its active classes. Another rule
        could not fire (a drug binding's pool would be empty) and needs no timer: a line
        starting or arriving evaluates it again. A rule that needs an allergy on record is not
        evaluated for a patient with none (an allergy arriving evaluates it). The readers of a
        lab or any fact kind are chosen once per set of active lines (kept with them)."""
        key = id(rules)
        keep = key in self._kept_readers
        kept = active.evaluable.get(key) if keep else None
        allergies = bool(state.record.allergies)
        if kept is not None:
            chosen: Mapping[int, LoadedRule] = kept[0] if allergies else kept[1]
        else:
            triggered = without = self._triggered(rules, active.names)
            if (keep or not allergies) and not self._needs_allergy.isdisjoint(triggered):
                without = {i: r for i, r in triggered.items() if i not in self._needs_allergy}
            if keep:
                active.evaluable[key] = (triggered, without)
            chosen = triggered if allergies else without
        extra = [i for i in state.alerts if i in rules and i not in chosen]
        if extra:
            chosen = {**chosen, **{i: rules[i] for i in extra}}
        timers = state.timers
        if timers and len(chosen) < len(rules):  # not evaluated: a timer no longer follows its
            for index in [i for i in (rules if len(rules) < len(timers) else timers)
                          if i in timers and i in rules and i not in chosen]:  # fmt: skip
                del timers[index]  # facts (a new version of one would not be offered to it)
        return chosen

    def _triggered(
        self, rules: Mapping[int, LoadedRule], names: frozenset[str]
    ) -> dict[int, LoadedRule]:
        """Those of ``rules`` whose ``required_sets`` the active lines' sets cover."""
        chosen: dict[int, LoadedRule] = {}
        if len(rules) <= 2 * len(names):
            for index, rule in rules.items():
                if rule.required_sets <= names:
                    chosen[index] = rule
        else:
            selection = self.selection
            chosen.update(
                (r.index, r)
                for r in selection.always
                if r.index in rules and r.required_sets <= names
            )
            for name in names:
                for rule in selection.by_trigger.get(name, ()):
                    if rule.index in rules and rule.required_sets <= names:
                        chosen[rule.index] = rule
        return chosen

    def _active_lines(self, state: _PatientState, at: datetime, keep: bool = True) -> _ActiveLines:
        """The patient's active lines at ``at`` and their sets, kept while no line starts or
        ends (a new line is added to them: ``_with_line``; a new version of a line, or a
        retracted one, has them computed again). ``keep=False``: not kept (explaining an alert
        evaluated earlier than the latest evaluation)."""
        active = state.active
        if (
            active is not None
            and active.since <= at
            and (active.until is None or at < active.until)
        ):
            return active
        lines = sorted((o for o in state.record.orders if is_active(o, at)), key=_line_key)
        atc = self.selection.pack.sets.atc
        line_sets = [(line, atc(line.atc, line.route)) for line in lines]
        names = frozenset[str]().union(*(self._line_names(line) for line in lines))
        moments = [m for o in state.record.orders for m in (o.start, o.end) if m is not None]
        since = max((m for m in moments if m <= at), default=datetime.min)
        until = min((m for m in moments if m > at), default=None)
        before = state.active  # the rules chosen for the same sets hold for these lines too
        evaluable = before.evaluable if before is not None and before.names == names else {}
        active = _ActiveLines(lines, line_sets, names, {}, since, until, {}, evaluable)
        if keep:
            state.active = active
        return active

    def _with_line(
        self, active: _ActiveLines, line: MedicationOrder, at: datetime
    ) -> _ActiveLines | None:
        """The active lines once a new line arrived (no earlier version), from those kept
        before it when they hold at ``at`` (None otherwise: ``_active_lines`` starts again)."""
        since, until = active.since, active.until
        if not (since <= at and (until is None or at < until)):
            return None
        for moment in (line.start, line.end):
            if moment is None:
                continue
            if moment <= at:
                since = max(since, moment)
            elif until is None or moment < until:
                until = moment
        if not is_active(line, at):
            return _ActiveLines(
                active.lines,
                active.line_sets,
                active.names,
                active.by_set,
                since,
                until,
                active.amounts,  # the same lines: the same amounts and rules
                active.evaluable,
            )
        own = self.selection.pack.sets.atc(line.atc, line.route)
        position = bisect_right(active.lines, _line_key(line), key=_line_key)
        lines = list(active.lines)
        lines.insert(position, line)
        line_sets = list(active.line_sets)
        line_sets.insert(position, (line, own))
        names = active.names | self._line_names(line)
        evaluable = active.evaluable if names == active.names else {}
        return _ActiveLines(lines, line_sets, names, {}, since, until, {}, evaluable)

    def _set_timer(
        self,
        state: _PatientState,
        rule: LoadedRule,
        timing: RuleTiming,
        at: datetime,
        fact: AnyFact | None,
        full: bool,
        firing: bool,
    ) -> None:
        """Keep the rule's deadline: the earliest moment after ``at`` where its result may
        change. A deadline still to come stays valid for a later evaluation; a new fact can only
        bring it forward."""
        timer = state.timers.get(rule.index)
        if (
            full
            or timer is None
            or not timer[1] <= at < timer[0]  # evaluated earlier, or the deadline has come
            or timing.moving_evidence  # polled while firing: recompute either way
        ):
            deadline = _rule_deadline(rule, timing, state.record, at, firing)
        else:
            deadline = timer[0]
            extra = None if fact is None else _fact_deadline(fact, timing, at)
            if extra is not None and extra < deadline:
                deadline = extra
        if deadline is None:
            state.timers.pop(rule.index, None)
            return
        state.timers[rule.index] = (deadline, at)
        if timer is None or timer[0] != deadline:
            self._push(deadline, state.record.patient_id, rule.index)

    def _restay(self, state: _PatientState, stay: Stay | None, changes: dict[str, _Change]) -> None:
        """Alerts carry the stay current when they were last evaluated: move them along."""
        key = _stay_key(stay)
        for entries in state.alerts.values():
            for identity, entry in list(entries.items()):
                if _stay_key(entry.stay) == key:
                    continue
                alert_id = entry.id
                moved = _Entry(
                    alert_id, entry.patient_id, entry.rule, entry.combo, identity, stay,
                    entry.as_of, entry.shown,
                )  # fmt: skip
                if entry.alert is not None:  # explained already: the same with the new stay
                    moved.alert = entry.alert.model_copy(update={"stay_id": key[0], "ward": key[1]})
                entries[identity] = moved
                earlier = changes.get(alert_id)
                before = entry.shown if earlier is None else earlier[0]
                changes[alert_id] = (before, moved, entry.rule.id, entry.patient_id)


def _stay_key(stay: Stay | None) -> tuple[str | None, str | None]:
    return (stay.stay_id, stay.ward) if stay else (None, None)


_first_three = itemgetter(0, 1, 2)


def _line_key(line: MedicationOrder) -> tuple[str, str]:
    return (line.order_id, line.fact_id)  # as ``Context.active_lines`` orders them


def _crosses(moment: datetime | None, since: datetime, until: datetime) -> bool:
    return moment is not None and since < moment <= until


def _measure_key(fact: LabResult | Observation) -> tuple[datetime, str]:
    return (fact.time, fact.fact_id)


def _insort_measure(series: list[Any], fact: LabResult | Observation) -> None:
    """Keep a series sorted by (time, fact id); results mostly arrive latest last."""
    last = series[-1] if series else None
    if (
        last is None
        or last.time < fact.time
        or (last.time == fact.time and last.fact_id < fact.fact_id)
    ):
        series.append(fact)
    else:
        insort(series, fact, key=_measure_key)


def _add_to_series(record: PatientRecord, fact: LabResult | Observation, concept: str) -> None:
    """A result into its concept's series, kept sorted as ``PatientRecord.sort`` would."""
    series: dict[str, list[Any]] = (
        record.labs if isinstance(fact, LabResult) else record.observations
    )
    _insort_measure(series.setdefault(concept, []), fact)


def _place(record: PatientRecord, fact: AnyFact) -> None:
    """Add a fact to a record, keeping series sorted as ``PatientRecord.sort`` would."""
    match fact:
        case LabResult(concept=str(concept)) | Observation(concept=str(concept)):
            _add_to_series(record, fact, concept)
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
