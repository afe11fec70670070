"""Evaluate a compiled pack for one patient (or a whole fact set) as of a time.

The runtime half of the engine: the evaluation ``Context`` (one patient as of one time, with
the caches every rule shares), the queries the compiled closures call (lab series by bisection,
clinical queries, derived values with their evidence), and the driver that iterates drug-line
combinations, builds explained ``Alert`` objects and formats messages.

>>> from datetime import datetime
>>> from engine.facts import Coding, LabResult, MedicationOrder, Patient, Source
>>> ir = {"ir_version": 1, "pack": {"name": "demo", "version": "1.0.0", "file": "demo.rules",
...       "sha256": "0"}, "params": {}, "sets": {"acei": {"system": "atc", "source": {},
...       "terms": [{"include": ["C09A"], "exclude": []}]}}, "rules": [{"id": "demo.k",
...       "version": 1, "title": "K+", "severity": "major", "level": 1, "reference": None,
...       "problem": {"code": "7", "display": "p"}, "intervention": {"code": "2", "display": "i"},
...       "source": {"file": "demo.rules", "line": 3},
...       "depends_on": {"kinds": ["lab", "medication_order"], "concepts": ["potassium"]},
...       "bindings": [{"name": "d", "kind": "drug", "set": "acei", "routes": None, "span": [5, 5]},
...                    {"name": "k", "kind": "value", "span": [6, 5], "expr": {"op": "lab",
...                     "args": [], "concept": "potassium", "fact_kind": "lab",
...                     "select": "latest", "window": None, "type": "lab", "unit": "mmol/L"}}],
...       "condition": {"op": "gt", "type": "bool", "args": [
...           {"op": "attr", "name": "value", "type": "number", "unit": "mmol/L",
...            "args": [{"op": "var", "name": "k", "type": "lab", "unit": "mmol/L", "args": []}]},
...           {"op": "const", "value": 5.5, "type": "number", "unit": "mmol/L", "args": []}]},
...       "escalations": [], "message": [{"text": "K+ "}, {"expr": {"op": "attr", "name": "value",
...           "type": "number", "unit": "mmol/L", "args": [{"op": "var", "name": "k",
...           "type": "lab", "args": []}]}}]}]}
>>> src = Source(feed="csv", document="labs.csv", position="line 2")
>>> facts = [
...     MedicationOrder(fact_id="o1", patient_id="p1", source=src, order_id="o1",
...                     drug=Coding(code="C09AA05"), atc="C09AA05", label="ramipril 5 mg",
...                     start=datetime(2024, 1, 1)),
...     LabResult(fact_id="l1", patient_id="p1", source=src, concept="potassium",
...               code=Coding(code="2823-3"), value=5.9, unit="mmol/L",
...               time=datetime(2024, 1, 2, 8))]
>>> from engine.factset import FactSet
>>> [alert.message for alert in evaluate(ir, FactSet(facts), datetime(2024, 1, 2, 9))]
['K+ 5.9 mmol/L']
"""

from __future__ import annotations

import itertools
import os
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from engine.alerts import Alert, AlertDrug, Evidence, Severity, alert_id
from engine.derived import Amount, age_in_years, ckd_epi_2021, cockcroft_gault
from engine.facts import (
    Allergy,
    Condition,
    LabResult,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Stay,
)
from engine.factset import FactSet, PatientRecord

if TYPE_CHECKING:
    from engine.compile import CodeSets, CompiledPack, CompiledRule, MessagePart, Selection

__all__ = [
    "Context",
    "current_stay",
    "evaluate",
    "evaluate_patient",
    "format_value",
    "is_active",
    "normalise_time",
]

Closure = Callable[["Context"], Any]
Measure = LabResult | Observation
WindowBounds = tuple[datetime | None, datetime, bool]  # start (incl.), end, end inclusive?
WindowFn = Callable[["Context"], WindowBounds | None]


# Evaluation context ------------------------------------------------------------------------------


class Context:
    """One patient as of one time, with the caches shared by every rule evaluated on it.

    ``bound`` holds the current combination of drug lines, ``values`` the value bindings that do
    not depend on it (kept across combinations), ``combo_values`` those that do. ``trace``, when
    not None, collects the evidence each query reads (only while explaining a firing rule).
    """

    __slots__ = (
        "_active",
        "_lines",
        "as_of",
        "bound",
        "combo_values",
        "params",
        "record",
        "sets",
        "trace",
        "values",
    )

    def __init__(
        self, record: PatientRecord, as_of: datetime, sets: CodeSets, params: Mapping[str, float]
    ) -> None:
        self.record = record
        self.as_of = as_of
        self.sets = sets
        self.params = params
        self.trace: list[Evidence] | None = None
        self.bound: dict[str, MedicationOrder] = {}
        self.values: dict[str, Any] = {}
        self.combo_values: dict[str, Any] = {}
        self._active: list[MedicationOrder] | None = None
        self._lines: dict[tuple[str | None, frozenset[str] | None], list[MedicationOrder]] = {}

    def active_lines(self) -> list[MedicationOrder]:
        """Active order lines, in a stable order (order id) so that results never depend on
        the order in which facts arrived."""
        if self._active is None:
            at = self.as_of
            self._active = sorted(
                (o for o in self.record.orders if is_active(o, at)), key=_line_key
            )
        return self._active

    def lines(self, set_name: str | None, routes: frozenset[str] | None) -> list[MedicationOrder]:
        """Active lines whose ATC is in the set (any line: None) and route in ``routes``."""
        key = (set_name, routes)
        found = self._lines.get(key)
        if found is None:
            atc = self.sets.atc
            found = [
                o
                for o in self.active_lines()
                if (set_name is None or set_name in atc(o.atc))
                and (routes is None or (o.route is not None and o.route in routes))
            ]
            self._lines[key] = found
        return found

    def active_set_names(self) -> set[str]:
        names: set[str] = set()
        atc = self.sets.atc
        for line in self.active_lines():
            names.update(atc(line.atc))
        return names

    def note(self, evidence: Evidence) -> None:
        if self.trace is not None:
            self.trace.append(evidence)


# A line that ended (completed, stopped) was active over its period: exports and replays see the
# final status, so the period decides. Other statuses (on-hold, cancelled, draft) never are.
_ENDED = frozenset({"completed", "stopped"})


def is_active(line: MedicationOrder, at: datetime) -> bool:
    """Whether an order line is active at ``at``: started (or no start), not yet ended (or no
    end), and either ``active`` or ``completed``/``stopped`` with a known end after ``at``."""
    if line.start is not None and line.start > at:
        return False
    if line.end is not None:
        return line.end > at and (line.status == "active" or line.status in _ENDED)
    return line.status == "active"


def _line_key(line: MedicationOrder) -> tuple[str, str]:
    return (line.order_id, line.fact_id)


def line_label(line: MedicationOrder) -> str | None:
    return line.label or line.drug.display or line.drug.code


def _time_of(fact: Measure) -> datetime:
    return fact.time


# Evidence ----------------------------------------------------------------------------------------


def measure_evidence(name: str, fact: Measure) -> Evidence:
    return Evidence.model_construct(
        name=name,
        kind=fact.kind,
        code=fact.concept,
        value=fact.value,
        unit=fact.unit,
        time=fact.time,
        fact_id=fact.fact_id,
        source=fact.source,
        inputs=(),
    )


def line_evidence(name: str, line: MedicationOrder) -> Evidence:
    return Evidence.model_construct(
        name=name,
        kind=line.kind,
        code=line.atc,
        value=line_label(line),
        unit=None,
        time=line.start,
        fact_id=line.fact_id,
        source=line.source,
        inputs=(),
    )


def fact_evidence(name: str, fact: Patient | Condition | Allergy | Pregnancy) -> Evidence:
    code: str | None
    value: str | None
    time: datetime | None = None
    if isinstance(fact, Patient):
        code, value = "birth_date", fact.birth_date.isoformat() if fact.birth_date else None
    elif isinstance(fact, Condition):
        code, value, time = fact.icd10, fact.code.display, fact.onset
    elif isinstance(fact, Allergy):
        code, value, time = ",".join(fact.atc), fact.substance.display, fact.recorded
    else:
        code, value, time = "pregnancy", fact.status, fact.recorded
    return Evidence.model_construct(
        name=name,
        kind=fact.kind,
        code=code,
        value=value,
        unit=None,
        time=time,
        fact_id=fact.fact_id,
        source=fact.source,
        inputs=(),
    )


def derived_evidence(
    name: str,
    code: str,
    value: float | str | None,
    unit: str | None,
    inputs: Iterable[Evidence],
    time: datetime | None = None,
) -> Evidence:
    return Evidence.model_construct(
        name=name,
        kind="derived",
        code=code,
        value=value,
        unit=unit,
        time=time,
        fact_id=None,
        source=None,
        inputs=tuple(inputs),
    )


# Attributes


def line_daily_dose(line: MedicationOrder) -> float | None:
    if line.daily_dose is not None:
        return line.daily_dose
    if line.dose is not None and line.frequency_per_day is not None:
        return line.dose * line.frequency_per_day
    return None


def line_amount(value: float | None, unit: str | None) -> Amount | None:
    return None if value is None or unit is None else Amount(value, unit)


def _duration(ctx: Context, line: MedicationOrder) -> float | None:
    return None if line.start is None else (ctx.as_of - line.start).total_seconds()


ORDER_ATTRS: dict[str, Callable[[Context, Any], Any]] = {
    "start": lambda ctx, o: o.start,
    "end": lambda ctx, o: o.end,
    "duration": _duration,
    "route": lambda ctx, o: o.route,
    "label": lambda ctx, o: line_label(o),
    "order_id": lambda ctx, o: o.order_id,
    "atc": lambda ctx, o: o.atc,
    "dose": lambda ctx, o: line_amount(o.dose, o.dose_unit),
    "daily_dose": lambda ctx, o: line_amount(line_daily_dose(o), o.dose_unit),
    "frequency": lambda ctx, o: o.frequency_per_day,
}
MEASURE_ATTRS: dict[str, Callable[[Context, Any], Any]] = {
    "value": lambda ctx, f: f.value,
    "time": lambda ctx, f: f.time,
    "high": lambda ctx, f: getattr(f, "reference_high", None),
    "low": lambda ctx, f: getattr(f, "reference_low", None),
    "unit": lambda ctx, f: f.unit,
}


def amount_evidence(
    name: str, code: str, total: Amount | None, lines: Iterable[MedicationOrder]
) -> Evidence:
    value = None if total is None else total.value
    unit = None if total is None else (total.unit or "mg")
    if total is not None and total.lower_bound:
        code += " (lower bound)"
    return derived_evidence(name, code, value, unit, [line_evidence(name, o) for o in lines])


def _series(ctx: Context, fact_kind: str, concept: str) -> list[Any]:
    store = ctx.record.labs if fact_kind == "lab" else ctx.record.observations
    return store.get(concept) or []


def _slice(series: Sequence[Measure], bounds: WindowBounds) -> tuple[int, int]:
    start, end, inclusive = bounds
    hi = (bisect_right if inclusive else bisect_left)(series, end, key=_time_of)
    lo = 0 if start is None else bisect_left(series, start, 0, hi, key=_time_of)
    return lo, hi


def lab_select(
    fact_kind: str, concept: str, select: str, window: WindowFn, label: str | None = None
) -> Callable[[Context], Measure | None]:
    """latest / first / min / max numeric result in the window (None when there is none)."""
    pick = _PICKERS[select]

    def lab(ctx: Context) -> Measure | None:
        series = _series(ctx, fact_kind, concept)
        if not series:
            return None
        bounds = window(ctx)
        if bounds is None:
            return None
        lo, hi = _slice(series, bounds)
        found = pick(series, lo, hi)
        if found is not None and label is not None and ctx.trace is not None:
            ctx.trace.append(measure_evidence(label, found))
        return found

    return lab


def _pick_latest(series: Sequence[Measure], lo: int, hi: int) -> Measure | None:
    for i in range(hi - 1, lo - 1, -1):
        if series[i].value is not None:
            return series[i]
    return None


def _pick_first(series: Sequence[Measure], lo: int, hi: int) -> Measure | None:
    for i in range(lo, hi):
        if series[i].value is not None:
            return series[i]
    return None


def _pick_extreme(smallest: bool) -> Callable[[Sequence[Measure], int, int], Measure | None]:
    def pick(series: Sequence[Measure], lo: int, hi: int) -> Measure | None:
        best: Measure | None = None
        best_value = 0.0
        for i in range(lo, hi):  # ties go to the latest: iterate forward, replace on equal
            v = series[i].value
            if v is not None and (
                best is None or (v <= best_value if smallest else v >= best_value)
            ):
                best, best_value = series[i], v
        return best

    return pick


_PICKERS = {
    "latest": _pick_latest,
    "first": _pick_first,
    "min": _pick_extreme(True),
    "max": _pick_extreme(False),
}


def lab_count(
    node: Mapping[str, Any], window: WindowFn, label: str | None
) -> Callable[[Context], int | None]:
    fact_kind, concept = node["fact_kind"], node["concept"]
    name = label or concept

    def count(ctx: Context) -> int | None:
        bounds = window(ctx)
        if bounds is None:
            return None
        series = _series(ctx, fact_kind, concept)
        lo, hi = _slice(series, bounds) if series else (0, 0)
        if ctx.trace is not None:
            inputs = [measure_evidence(name, f) for f in series[lo:hi]]
            ctx.trace.append(
                derived_evidence(name, f"count {concept}", float(hi - lo), None, inputs, bounds[0])
            )
        return hi - lo

    return count


# Clinical queries


def _visible(moment: datetime | None, ctx: Context) -> bool:
    return moment is None or moment <= ctx.as_of


def _in_window(moment: datetime | None, bounds: WindowBounds) -> bool:
    start, end, inclusive = bounds
    if moment is None or (start is not None and moment < start):
        return False
    return moment <= end if inclusive else moment < end


def has_condition(
    sets: CodeSets, set_name: str, active_only: bool, window: WindowFn | None, label: str
) -> Closure:
    def has_condition(ctx: Context) -> bool | None:
        bounds = window(ctx) if window is not None else None
        if window is not None and bounds is None:
            return None
        found = sorted(
            (
                c
                for c in ctx.record.conditions
                if c.icd10
                and set_name in sets.matching("icd10", c.icd10)
                and (not active_only or c.clinical_status == "active")
                and _visible(c.onset, ctx)
                and (bounds is None or _in_window(c.onset, bounds))
            ),
            key=lambda c: c.fact_id,
        )
        if ctx.trace is not None:
            ctx.trace.extend(fact_evidence(label, c) for c in found)
        return bool(found)

    return has_condition


def has_allergy(line_fn: Closure, label: str) -> Closure:
    def has_allergy(ctx: Context) -> bool:
        line = line_fn(ctx)
        atc = None if line is None else line.atc
        if not atc:
            return False
        found = sorted(
            (
                a
                for a in ctx.record.allergies
                if a.clinical_status in ("active", "unknown")
                and _visible(a.recorded, ctx)
                and any(atc.startswith(prefix) for prefix in a.atc if prefix)
            ),
            key=lambda a: a.fact_id,
        )
        if ctx.trace is not None:
            ctx.trace.extend(fact_evidence(label, a) for a in found)
        return bool(found)

    return has_allergy


def has_pregnancy(window: WindowFn, label: str) -> Closure:
    def has_pregnancy(ctx: Context) -> bool | None:
        bounds = window(ctx)
        if bounds is None:
            return None
        recorded = [p for p in ctx.record.pregnancies if _in_window(p.recorded, bounds)]
        if not recorded:
            return False
        latest = max(recorded, key=lambda p: (p.recorded, p.fact_id))
        if latest.status == "pregnant" and ctx.trace is not None:
            ctx.trace.append(fact_evidence(label, latest))
        return latest.status == "pregnant"

    return has_pregnancy


def patient_evidence(patient: Patient) -> Evidence:
    return fact_evidence("patient", patient)


def age_value(ctx: Context, name: str) -> float | None:
    patient = ctx.record.patient
    if patient is None or patient.birth_date is None:
        return None
    years = float(age_in_years(patient.birth_date, ctx.as_of))
    if ctx.trace is not None:
        ctx.trace.append(derived_evidence(name, "age", years, "years", [patient_evidence(patient)]))
    return years


def _sex_fm(ctx: Context) -> str | None:
    patient = ctx.record.patient
    sex = None if patient is None else patient.sex.value
    return sex if sex in ("F", "M") else None


def clearance_value(
    ctx: Context,
    creatinine_fn: Callable[[Context], Measure | None],
    weight_fn: Callable[[Context], Measure | None],
    name: str,
) -> float | None:
    patient, sex = ctx.record.patient, _sex_fm(ctx)
    if patient is None or patient.birth_date is None or sex is None:
        return None
    creatinine, weight = creatinine_fn(ctx), weight_fn(ctx)
    if creatinine is None or weight is None or creatinine.value is None or weight.value is None:
        return None
    age = age_in_years(patient.birth_date, ctx.as_of)
    value = cockcroft_gault(
        age=age, weight_kg=weight.value, creatinine_umol_l=creatinine.value, sex=sex
    )
    if value is not None and ctx.trace is not None:
        inputs = [
            measure_evidence("creatinine", creatinine),
            measure_evidence("weight", weight),
            derived_evidence("age", "age", float(age), "years", [patient_evidence(patient)]),
        ]
        ctx.trace.append(
            derived_evidence(name, "clearance", value, "mL/min", inputs, creatinine.time)
        )
    return value


def egfr_computed(
    ctx: Context, creatinine_fn: Callable[[Context], Measure | None], name: str
) -> float | None:
    patient, sex = ctx.record.patient, _sex_fm(ctx)
    if patient is None or patient.birth_date is None or sex is None:
        return None
    creatinine = creatinine_fn(ctx)
    if creatinine is None or creatinine.value is None:
        return None
    age = age_in_years(patient.birth_date, ctx.as_of)
    value = ckd_epi_2021(creatinine_umol_l=creatinine.value, age=age, sex=sex)
    if value is not None and ctx.trace is not None:
        inputs = [
            measure_evidence("creatinine", creatinine),
            derived_evidence("age", "age", float(age), "years", [patient_evidence(patient)]),
        ]
        ctx.trace.append(
            derived_evidence(
                name, "egfr (CKD-EPI 2021)", value, "mL/min/1.73m2", inputs, creatinine.time
            )
        )
    return value


# Driver ------------------------------------------------------------------------------------------


def normalise_time(moment: datetime) -> datetime:
    """Evaluation times are naive UTC, like fact times; an aware time is converted.

    >>> from datetime import timedelta, timezone
    >>> normalise_time(datetime(2024, 1, 2, 9, 0, tzinfo=timezone(timedelta(hours=1))))
    datetime.datetime(2024, 1, 2, 8, 0)
    """
    if moment.tzinfo is not None:
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def evaluate(
    pack: CompiledPack | Mapping[str, Any],
    facts: FactSet | PatientRecord,
    as_of: datetime,
    *,
    cursors: Mapping[str, float] | None = None,
    level: int = 1,
    enabled: Iterable[str] = (),
    disabled: Iterable[str] = (),
) -> list[Alert]:
    """The alerts of a pack on some facts as of a time, in rule order then identity.

    ``pack`` is a ``CompiledPack`` or an IR dict (compiled here); ``facts`` a ``FactSet``
    (every patient) or one ``PatientRecord``. ``cursors`` move parameters inside their range,
    ``level`` selects rules up to that sensitivity level, ``enabled``/``disabled`` list rule ids
    turned on or off whatever their level. Errors are ``EngineError``s (``PackError`` for a bad
    pack or configuration, ``RuleRuntimeError`` naming the rule and its source line).
    """
    selection = select(pack, cursors=cursors, level=level, enabled=enabled, disabled=disabled)
    at = normalise_time(as_of)
    if isinstance(facts, PatientRecord):
        facts.sort()
        records: Iterable[PatientRecord] = [facts]
    else:
        patients = facts.patients()
        records = (patients[key] for key in sorted(patients))
    found: list[tuple[int, Alert]] = []
    for record in records:
        for index, alerts in evaluate_patient(selection, record, at).items():
            found.extend((index, alert) for alert in alerts)
    found.sort(key=lambda item: (item[0], item[1].patient_id, item[1].id))
    return [alert for _, alert in found]


def select(
    pack: CompiledPack | Mapping[str, Any],
    *,
    cursors: Mapping[str, float] | None = None,
    level: int = 1,
    enabled: Iterable[str] = (),
    disabled: Iterable[str] = (),
) -> Selection:
    """The selection (rules on, parameter values) of a compiled pack or an IR dict."""
    from engine.compile import CompiledPack, PackError, compile_ir

    if not isinstance(pack, CompiledPack):
        ir = getattr(pack, "ir", pack)  # ``rules.CompiledPack`` carries its IR
        if not isinstance(ir, Mapping):
            raise PackError(f"expected a compiled pack or an IR dict, got {type(pack).__name__}")
        pack = compile_ir(ir)
    return pack.select(cursors=cursors, level=level, enabled=enabled, disabled=disabled)


def evaluate_patient(
    selection: Selection,
    record: PatientRecord,
    as_of: datetime,
    rules: Iterable[CompiledRule] | None = None,
) -> dict[int, list[Alert]]:
    """Alerts per rule index for one patient; ``rules`` restricts to those (live updates),
    otherwise the rules that some active line (or none) can trigger are evaluated."""
    ctx = Context(record, as_of, selection.pack.sets, selection.params)
    if rules is None:
        rules = selection.candidates(ctx.active_set_names())
    stay = current_stay(record, as_of)
    results: dict[int, list[Alert]] = {}
    for rule in rules:
        alerts = evaluate_rule(rule, ctx, stay)
        if alerts:
            results[rule.index] = alerts
    return results


def current_stay(record: PatientRecord, as_of: datetime) -> Stay | None:
    """The stay the patient is in at ``as_of`` (the latest admitted one if several)."""
    current = [
        s
        for s in record.stays
        if s.status != "cancelled"
        and (s.admit_time is None or s.admit_time <= as_of)
        and (s.discharge_time is None or s.discharge_time > as_of)
    ]
    if not current:
        return None
    return max(current, key=lambda s: (s.admit_time or datetime.min, s.stay_id))


def evaluate_rule(rule: CompiledRule, ctx: Context, stay: Stay | None) -> list[Alert]:
    """Every alert of one rule for the context's patient (wrapped errors, never raw ones)."""
    from engine.compile import RuleRuntimeError

    pools: list[list[MedicationOrder]] = []
    for binding in rule.drug_bindings:
        lines = ctx.lines(binding.set, binding.routes)
        if not lines:
            return []
        pools.append(lines)
    ctx.bound, ctx.values, ctx.combo_values = {}, {}, {}
    try:
        return _fire(rule, ctx, pools, stay)
    except RuleRuntimeError as error:
        raise error.located(
            rule_id=rule.id, file=rule.file, line=rule.line, patient_id=ctx.record.patient_id
        ) from error
    except Exception as error:  # a rule must never surface a raw exception
        raise RuleRuntimeError(
            f"{type(error).__name__}: {error}",
            rule_id=rule.id,
            file=rule.file,
            line=rule.line,
            patient_id=ctx.record.patient_id,
        ) from error


def _fire(
    rule: CompiledRule, ctx: Context, pools: list[list[MedicationOrder]], stay: Stay | None
) -> list[Alert]:
    names = [binding.name for binding in rule.drug_bindings]
    alerts: list[Alert] = []
    fired: set[tuple[str, ...]] = set()
    for combo in itertools.product(*pools):
        if len(combo) > 1 and len({id(line) for line in combo}) < len(combo):
            continue  # two bindings never bind the same line
        identity = tuple(sorted(line.order_id for line in combo))
        if identity in fired:
            continue  # the same lines in another binding order are the same alert
        for name, line in zip(names, combo, strict=True):
            ctx.bound[name] = line
        if ctx.combo_values:
            ctx.combo_values = {}
        if rule.condition(ctx) is True:
            fired.add(identity)
            alerts.append(_explain(rule, ctx, combo, identity, stay))
    return alerts


def _explain(
    rule: CompiledRule,
    ctx: Context,
    combo: Sequence[MedicationOrder],
    identity: tuple[str, ...],
    stay: Stay | None,
) -> Alert:
    """Re-run a firing combination with tracing on: evidence, severity and message."""
    shared = ctx.values
    ctx.values, ctx.combo_values, ctx.trace = {}, {}, []
    try:
        rule.condition(ctx)
        severity = rule.severity
        for escalated, condition in rule.escalations:
            if condition(ctx) is True:
                severity = escalated
                break
        message = "".join(_message_part(part, ctx) for part in rule.message)
        trace = ctx.trace
    finally:
        ctx.values, ctx.combo_values, ctx.trace = shared, {}, None
    bindings = [
        line_evidence(b.name, line) for b, line in zip(rule.drug_bindings, combo, strict=True)
    ]
    lines = _alert_lines(ctx.record.orders, combo, trace)
    return Alert.model_construct(
        id=alert_id(rule.id, ctx.record.patient_id, list(identity)),
        patient_id=ctx.record.patient_id,
        stay_id=stay.stay_id if stay else None,
        ward=stay.ward if stay else None,
        rule_id=rule.id,
        rule=rule.ref,
        title=rule.title,
        problem=rule.problem,
        intervention=rule.intervention,
        severity=cast(Severity, severity),
        level=rule.level,
        priority=None,
        drugs=tuple(
            AlertDrug.model_construct(order_id=o.order_id, atc=o.atc, label=line_label(o))
            for o in lines
        ),
        evidence=_unique([*bindings, *trace]),
        message=message,
        reference=rule.reference,
        as_of=ctx.as_of,
    )


def _alert_lines(
    orders: Sequence[MedicationOrder], combo: Sequence[MedicationOrder], trace: Sequence[Evidence]
) -> list[MedicationOrder]:
    """The bound lines, then the lines a derived value read (the paracetamol lines summed into
    a daily dose, the opioids of an MME): the pharmacist sees every line the alert is about,
    while the alert's identity stays on the bound lines."""
    wanted: list[str] = []
    pending = [item for item in trace if item.kind == "derived"]
    while pending:  # lines read by a derived value; context lines (a PPI, a steroid) stay out
        item = pending.pop(0)
        if item.kind == MedicationOrder.kind and item.fact_id is not None:
            wanted.append(item.fact_id)
        pending.extend(item.inputs)
    by_fact = {line.fact_id: line for line in orders}
    lines = list(combo)
    seen = {line.fact_id for line in combo}
    for fact_id in wanted:
        if fact_id not in seen and fact_id in by_fact:
            seen.add(fact_id)
            lines.append(by_fact[fact_id])
    return lines


def _unique(evidence: Iterable[Evidence]) -> tuple[Evidence, ...]:
    seen: set[tuple[Any, ...]] = set()
    kept: list[Evidence] = []
    for item in evidence:
        key = (item.name, item.kind, item.code, item.fact_id, item.value, item.time)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return tuple(kept)


# Messages ----------------------------------------------------------------------------------------

# Units the message templates already say in words ("à {age} ans", "{m.frequency} fois par jour").
_SILENT_UNITS = frozenset({"1", "years", "/d"})


def _message_part(part: MessagePart, ctx: Context) -> str:
    if part.fn is None:
        return part.text or ""
    return format_value(part.fn(ctx), part.type, part.unit)


def format_value(value: Any, type_: str | None = None, unit: str | None = None) -> str:
    """A value as a message shows it: numbers with their unit, local times, labels; ``?``
    when unknown.

    >>> format_value(5.9, "number", "mmol/L"), format_value(43.6799, "number", "mL/min")
    ('5.9 mmol/L', '43.7 mL/min')
    >>> format_value(Amount(1500.0, "mg", lower_bound=True)), format_value(None)
    ('≥ 1500 mg', '?')
    >>> format_value(7 * 86400.0, "number", "s"), format_value(82.0, "number", "years")
    ('7 d', '82')
    """
    if value is None:
        return "?"
    if isinstance(value, Amount):
        prefix = "≥ " if value.lower_bound else ""
        return prefix + _with_unit(format_number(value.value), value.unit)
    if isinstance(value, bool):
        return "oui" if value else "non"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, MedicationOrder):
        return line_label(value) or value.order_id
    if isinstance(value, LabResult | Observation):
        return (
            _with_unit(format_number(value.value), value.unit) if value.value is not None else "?"
        )
    if isinstance(value, int | float):
        if unit == "s":
            return format_duration(float(value))
        return _with_unit(format_number(float(value)), None if unit in _SILENT_UNITS else unit)
    return str(value)


def _with_unit(number: str, unit: str | None) -> str:
    return f"{number} {unit}" if unit else number


def format_number(value: float | None) -> str:
    """Sensible precision: 1500, 106, 43.7, 5.9, 1.25, 0.042.

    >>> [format_number(v) for v in (1500.0, 106.104, 43.68, 5.9, 1.254, 0.0423, -2.0)]
    ['1500', '106', '43.7', '5.9', '1.25', '0.0423', '-2']
    """
    if value is None:
        return "?"
    size = abs(value)
    if size >= 100:
        text = f"{value:.0f}"
    elif size >= 10:
        text = f"{value:.1f}"
    elif size >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    if "." in text and "e" not in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def format_duration(seconds: float) -> str:
    """A duration in the largest whole unit: ``7 d``, ``48 h``, ``90 min``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if abs(seconds) >= size and (
            seconds % size == 0 or unit == "min" or abs(seconds) >= 10 * size
        ):
            return f"{format_number(seconds / size)} {unit}"
    if abs(seconds) >= 3600:
        return f"{format_number(seconds / 3600.0)} h"
    return f"{format_number(seconds)} s"


@cache
def site_timezone() -> ZoneInfo:
    """The hospital's time zone for messages (``VIGIE_TIMEZONE``, default Europe/Paris);
    fact times are naive UTC."""
    try:
        return ZoneInfo(os.environ.get("VIGIE_TIMEZONE", "Europe/Paris"))
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def format_time(moment: datetime) -> str:
    """A fact time (naive UTC) as local ``YYYY-MM-DD HH:MM``."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return aware.astimezone(site_timezone()).strftime("%Y-%m-%d %H:%M")
