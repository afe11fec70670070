"""Evaluate a loaded pack for one patient (or a whole fact set) as of a time.

The driver of the engine: it selects a pack's rules, builds one evaluation ``Context`` per
patient (``vigie.engine.runtime``, with the queries the pack's closures call), iterates drug-line
combinations, builds explained ``Alert`` objects and formats messages. ``Context`` and
``is_active`` are re-exported here for the live evaluator.

>>> from datetime import datetime
>>> from vigie.facts import Coding, LabResult, MedicationOrder, Patient, Source
>>> ir = {"ir_version": 1, "pack": {"name": "demo", "version": "1.0.0", "file": "demo.rules",
...       "sha256": "0"}, "params": {}, "sets": {"acei": {"system": "atc",
...       "source": {"file": "demo.rules", "line": 2},
...       "terms": [{"include": ["C09A"], "exclude": []}]}}, "rules": [{"id": "demo.k",
...       "version": 1, "title": "K+", "severity": "major", "level": 1, "reference": None,
...       "problem": {"code": "7", "display": "p"}, "intervention": {"code": "2", "display": "i"},
...       "source": {"file": "demo.rules", "line": 3},
...       "depends_on": {"kinds": ["lab", "medication_order"], "concepts": ["potassium"]},
...       "bindings": [{"name": "d", "kind": "drug", "set": "acei", "routes": None, "span": [5, 5]},
...                    {"name": "k", "kind": "value", "span": [6, 5], "expr": {"op": "lab",
...                     "args": [], "concept": "potassium", "fact_kind": "lab",
...                     "select": "latest", "window": None, "type": "lab", "unit": "mmol/L",
...                     "span": [6, 9]}}],
...       "condition": {"op": "gt", "type": "bool", "span": [7, 5], "args": [
...           {"op": "attr", "name": "value", "type": "number", "unit": "mmol/L", "span": [7, 5],
...            "args": [{"op": "var", "name": "k", "type": "lab", "unit": "mmol/L",
...                      "span": [7, 5], "args": []}]},
...           {"op": "const", "value": 5.5, "type": "number", "unit": "mmol/L", "span": [7, 9],
...            "args": []}]},
...       "escalations": [], "message": [{"text": "K+ "}, {"expr": {"op": "attr", "name": "value",
...           "type": "number", "unit": "mmol/L", "span": [8, 10], "args": [{"op": "var",
...           "name": "k", "type": "lab", "unit": "mmol/L", "span": [8, 10], "args": []}]}}]}]}
>>> src = Source(feed="csv", document="labs.csv", position="line 2")
>>> facts = [
...     MedicationOrder(fact_id="o1", patient_id="p1", source=src, order_id="o1",
...                     drug=Coding(code="C09AA05"), atc="C09AA05", label="ramipril 5 mg",
...                     start=datetime(2024, 1, 1)),
...     LabResult(fact_id="l1", patient_id="p1", source=src, concept="potassium",
...               code=Coding(code="2823-3"), value=5.9, unit="mmol/L",
...               time=datetime(2024, 1, 2, 8))]
>>> from vigie.engine.factset import FactSet
>>> [alert.message for alert in evaluate(ir, FactSet(facts), datetime(2024, 1, 2, 9))]
['K+ 5.9 mmol/L']
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from operator import attrgetter
from typing import Any, cast

from vigie.engine.alerts import Alert, AlertDrug, Evidence, Severity, Threshold, alert_id
from vigie.engine.derived import Amount
from vigie.engine.factset import FactSet, PatientRecord
from vigie.engine.load import (
    LoadedPack,
    LoadedRule,
    PackError,
    RuleRuntimeError,
    Selection,
    load_pack,
)
from vigie.engine.runtime import (
    QUALITATIVE_TEXT,
    Context,
    is_active,
    line_evidence,
    line_label,
)
from vigie.engine.site_config import SiteConfig
from vigie.facts import LabResult, MedicationOrder, Observation, Stay
from vigie.settings import site_timezone

__all__ = [
    "Combination",
    "Context",
    "combination_alert_id",
    "current_stay",
    "evaluate",
    "evaluate_patient",
    "evaluate_rule",
    "explain_combination",
    "firing_combinations",
    "format_value",
    "is_active",
    "normalise_time",
]

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
    pack: LoadedPack | Mapping[str, Any],
    facts: FactSet | PatientRecord,
    as_of: datetime,
    *,
    cursors: Mapping[str, float] | None = None,
    level: int = 1,
    enabled: Iterable[str] = (),
    disabled: Iterable[str] = (),
    site: SiteConfig | None = None,
) -> list[Alert]:
    """The alerts of a pack on some facts as of a time, in rule order then identity.

    ``pack`` is a ``LoadedPack`` or an IR dict (loaded here); ``facts`` a ``FactSet``
    (every patient) or one ``PatientRecord``. ``cursors`` move parameters inside their range,
    ``level`` selects rules up to that sensitivity level, ``enabled``/``disabled`` list rule ids
    turned on or off whatever their level. ``site`` (a ``SiteConfig`` checked against this
    pack) replaces those four per patient: the settings of the ward of the stay the patient is
    in at ``as_of`` (the hospital's when none), no alert where the pack is off. Errors are
    ``EngineError``s (``PackError`` for a bad pack or configuration, ``RuleRuntimeError``
    naming the rule and its source line).
    """
    enabled, disabled = tuple(enabled), tuple(disabled)
    if site is not None and (cursors or level != 1 or enabled or disabled):
        raise PackError("give either a site configuration or cursors/level/enabled/disabled")
    selection = select(pack, cursors=cursors, level=level, enabled=enabled, disabled=disabled)
    if site is not None:
        site.check_pack(selection.pack)
    at = normalise_time(as_of)
    if isinstance(facts, PatientRecord):
        facts.sort()
        records: Iterable[PatientRecord] = [facts]
    else:
        patients = facts.patients()
        records = (patients[key] for key in sorted(patients))
    found: list[tuple[int, Alert]] = []
    for record in records:
        chosen = selection
        if site is not None:
            stay = current_stay(record, at)
            ward = site.selection(selection.pack, stay.ward if stay else None)
            if ward is None:
                continue  # the pack is off in this ward
            chosen = ward
        for index, alerts in evaluate_patient(chosen, record, at).items():
            found.extend((index, alert) for alert in alerts)
    found.sort(key=lambda item: (item[0], item[1].patient_id, item[1].id))
    return [alert for _, alert in found]


def select(
    pack: LoadedPack | Mapping[str, Any],
    *,
    cursors: Mapping[str, float] | None = None,
    level: int = 1,
    enabled: Iterable[str] = (),
    disabled: Iterable[str] = (),
) -> Selection:
    """The selection (rules on, parameter values) of a loaded pack or an IR dict."""
    if not isinstance(pack, LoadedPack):
        ir = getattr(pack, "ir", pack)  # ``rules.CompiledPack`` carries its IR
        if not isinstance(ir, Mapping):
            raise PackError(f"expected a loaded pack or an IR dict, got {type(pack).__name__}")
        pack = load_pack(ir)
    return pack.select(cursors=cursors, level=level, enabled=enabled, disabled=disabled)


def evaluate_patient(
    selection: Selection,
    record: PatientRecord,
    as_of: datetime,
    rules: Iterable[LoadedRule] | None = None,
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
    """The stay the patient is in at ``as_of`` (the latest admitted one if several; the first
    of those, as ``max``, on a tie). Evaluated on every live update: a loop, no key function."""
    found: Stay | None = None
    found_key: tuple[datetime, str] = (datetime.min, "")
    for s in record.stays:
        if (
            s.status != "cancelled"
            and (s.admit_time is None or s.admit_time <= as_of)
            and (s.discharge_time is None or s.discharge_time > as_of)
        ):
            key = (s.admit_time or datetime.min, s.stay_id)
            if found is None or key > found_key:
                found, found_key = s, key
    return found


def evaluate_rule(rule: LoadedRule, ctx: Context, stay: Stay | None) -> list[Alert]:
    """Every alert of one rule for the context's patient, explained (wrapped errors, never raw
    ones)."""
    return [
        explain_combination(rule, ctx, combo, identity, stay)
        for combo, identity in firing_combinations(rule, ctx)
    ]


def firing_combinations(rule: LoadedRule, ctx: Context) -> list[Combination]:
    """The combinations of drug lines for which the rule fires, each with its identity (its
    sorted order ids), not explained: the live store explains an alert when it is read
    (``explain_combination``)."""
    pools: list[list[MedicationOrder]] = []
    for binding in rule.drug_bindings:
        lines = ctx.lines(binding.set, binding.routes)
        if not lines:
            return []
        pools.append(lines)
    ctx.bound, ctx.values, ctx.combo_values = {}, {}, {}
    try:  # the combinations in place (a call less per rule: a hot path of the live store)
        names = rule.drug_names
        found: list[Combination] = []
        fired: set[tuple[str, ...]] = set()
        bound = ctx.bound
        condition = rule.condition
        if len(pools) <= 1:  # most rules bind one line or none: no combinations to build
            if not pools:
                return [((), ())] if condition(ctx) is True else found
            name = names[0]
            for line in pools[0]:
                one: tuple[str, ...] = (line.order_id,)
                if one in fired:
                    continue  # another line of the same order: the same alert
                bound[name] = line
                if ctx.combo_values:
                    ctx.combo_values = {}
                if condition(ctx) is True:
                    fired.add(one)
                    found.append(((line,), one))
            return found
        for combo, identity in _combinations(pools):
            if identity in fired:
                continue  # the same lines in another binding order are the same alert
            for name, line in zip(names, combo, strict=True):
                bound[name] = line
            if ctx.combo_values:
                ctx.combo_values = {}
            if condition(ctx) is True:
                fired.add(identity)
                found.append((combo, identity))
        return found
    except Exception as error:  # a rule must never surface a raw exception
        raise _located(error, rule, ctx) from error


def explain_combination(
    rule: LoadedRule,
    ctx: Context,
    combo: Sequence[MedicationOrder],
    identity: tuple[str, ...],
    stay: Stay | None,
) -> Alert:
    """The alert of one firing combination, explained: the combination evaluated again with
    tracing on (evidence, thresholds, severity after escalations, message)."""
    ctx.bound = dict(zip(rule.drug_names, combo, strict=True))
    try:
        return _explain(rule, ctx, combo, identity, stay)
    except Exception as error:  # a rule must never surface a raw exception
        raise _located(error, rule, ctx) from error


def _located(error: Exception, rule: LoadedRule, ctx: Context) -> RuleRuntimeError:
    """A rule's runtime error, with the rule and patient it happened on."""
    if isinstance(error, RuleRuntimeError):
        return error.located(
            rule_id=rule.id, file=rule.file, line=rule.line, patient_id=ctx.record.patient_id
        )
    return RuleRuntimeError(
        f"{type(error).__name__}: {error}",
        rule_id=rule.id,
        file=rule.file,
        line=rule.line,
        patient_id=ctx.record.patient_id,
    )


Combination = tuple[tuple[MedicationOrder, ...], tuple[str, ...]]  # lines, identity


def _combinations(pools: list[list[MedicationOrder]]) -> Iterable[Combination]:
    """The combinations of lines of the bindings' pools, in ``itertools.product`` order, each
    with its identity (its sorted order ids); two bindings never bind the same line."""
    if len(pools) == 1:  # most rules bind one line
        return [((line,), (line.order_id,)) for line in pools[0]]
    if len(pools) == 2:  # interactions: a pair
        return _pairs(*pools)
    return _product(pools)


def _pairs(first: list[MedicationOrder], second: list[MedicationOrder]) -> Iterable[Combination]:
    for a in first:
        one = a.order_id
        for b in second:
            if b is not a:
                other = b.order_id
                yield (a, b), (one, other) if one <= other else (other, one)


def _product(pools: list[list[MedicationOrder]]) -> Iterable[Combination]:
    for combo in itertools.product(*pools):
        if len({id(line) for line in combo}) == len(combo):
            yield combo, tuple(sorted([line.order_id for line in combo]))


def _explain(
    rule: LoadedRule,
    ctx: Context,
    combo: Sequence[MedicationOrder],
    identity: tuple[str, ...],
    stay: Stay | None,
) -> Alert:
    """Evaluate the bound combination again with tracing on and explain it: evidence,
    thresholds, severity and message (built whatever the condition gives: it fired)."""
    shared = ctx.values
    thresholds: list[Threshold] = []
    ctx.values, ctx.combo_values = {}, {}
    ctx.trace, ctx.thresholds = [], thresholds
    try:
        rule.condition(ctx)
        ctx.thresholds = None  # the condition's thresholds; escalations already set severity
        severity = rule.severity
        for escalated, condition in rule.escalations:
            if condition(ctx) is True:
                severity = escalated
                break
        message = "".join(
            [
                (p.text or "") if p.fn is None else format_value(p.fn(ctx), p.type, p.unit)
                for p in rule.message
            ]
        )
        trace = ctx.trace
    finally:
        ctx.trace = ctx.thresholds = None
        ctx.values, ctx.combo_values = shared, {}
    bindings = [
        ctx.cached(line_evidence, b.name, line)
        for b, line in zip(rule.drug_bindings, combo, strict=True)
    ]
    lines = _alert_lines(ctx.record.orders, combo, trace)
    return Alert.model_construct(
        id=combination_alert_id(rule.id, ctx.record.patient_id, identity),
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
        drugs=tuple([ctx.cached(_alert_drug, "", line) for line in lines]),
        evidence=_unique([*bindings, *trace]),
        thresholds=tuple(thresholds),
        message=message,
        reference=rule.reference,
        as_of=ctx.as_of,
    )


@functools.lru_cache(maxsize=65536)
def combination_alert_id(rule_id: str, patient_id: str, identity: tuple[str, ...]) -> str:
    """``alert_id`` of a firing combination, hashed once per alert (the live store computes it
    on every update where the alert still fires)."""
    return alert_id(rule_id, patient_id, list(identity))


def _alert_drug(_: str, line: MedicationOrder) -> AlertDrug:
    return AlertDrug.model_construct(order_id=line.order_id, atc=line.atc, label=line_label(line))


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
    lines = list(combo)
    if not wanted:
        return lines
    by_fact = {line.fact_id: line for line in orders}
    seen = {line.fact_id for line in combo}
    for fact_id in wanted:
        if fact_id not in seen and fact_id in by_fact:
            seen.add(fact_id)
            lines.append(by_fact[fact_id])
    return lines


# What makes two pieces of evidence the same for an alert (read in C).
_evidence_key: Callable[[Evidence], tuple[Any, ...]] = attrgetter(
    "name", "kind", "code", "fact_id", "value", "time"
)


def _unique(evidence: Iterable[Evidence]) -> tuple[Evidence, ...]:
    seen: set[tuple[Any, ...]] = set()
    kept: list[Evidence] = []
    for item in evidence:
        key = _evidence_key(item)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    return tuple(kept)


# Messages ----------------------------------------------------------------------------------------

_MEASURES = (LabResult, Observation)
_NUMBERS = (int, float)
# Units the message templates already say in words ("à {age} ans", "{m.frequency} fois par jour").
_SILENT_UNITS = frozenset({"1", "years", "/d"})
# Units that French messages write otherwise: a day is "j" (jour), a week "sem." (a cursor
# declared as "7 d" reads "7 j", like format_duration and the packs' "mg/j"); international
# units are "UI" (unités internationales).
_DISPLAY_UNITS = {
    "d": "j",
    "w": "sem.",
    "IU": "UI",
    "MIU": "MUI",
    "IU/L": "UI/L",
    "mIU/mL": "mUI/mL",
}


def format_value(value: Any, type_: str | None = None, unit: str | None = None) -> str:
    """A value as a message shows it: numbers with their unit, local times, labels; ``?``
    when unknown.

    >>> format_value(5.9, "number", "mmol/L"), format_value(43.6799, "number", "mL/min")
    ('5.9 mmol/L', '43.7 mL/min')
    >>> format_value(Amount(1500.0, "mg", lower_bound=True)), format_value(None)
    ('≥ 1500 mg', '?')
    >>> format_value(7 * 86400.0, "number", "s"), format_value(82.0, "number", "years")
    ('7 j', '82')
    >>> format_value(7.0, "duration", "d"), format_value(2.0, "duration", "w")
    ('7 j', '2 sem.')
    >>> format_value(Amount(18000.0, "IU"))
    '18000 UI'
    """
    if value is None:
        return "?"
    if type(value) is float:  # the common case first
        if unit == "s":
            return format_duration(value)
        if unit in _SILENT_UNITS:
            return format_number(value)
        return _with_unit(format_number(value), unit)
    if type(value) is str:  # a label, a route...
        return value
    if isinstance(value, Amount):
        prefix = "≥ " if value.lower_bound else ""
        return prefix + _with_unit(format_number(value.value), value.unit)
    if isinstance(value, bool):
        return "oui" if value else "non"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, MedicationOrder):
        return line_label(value) or value.order_id
    if isinstance(value, _MEASURES):
        return _measure_text(value)
    if isinstance(value, _NUMBERS):
        if unit == "s":
            return format_duration(float(value))
        if unit in _SILENT_UNITS:
            return format_number(float(value))
        return _with_unit(format_number(float(value)), unit)
    return str(value)


def _measure_text(fact: LabResult | Observation) -> str:
    """A number with its unit; a qualitative result as ``positif``/``négatif``; else ``?``."""
    if fact.value is not None:
        return _with_unit(format_number(fact.value), fact.unit)
    if isinstance(fact, LabResult) and fact.qualitative is not None:
        return QUALITATIVE_TEXT[fact.qualitative]
    return "?"


def _with_unit(number: str, unit: str | None) -> str:
    return f"{number} {_DISPLAY_UNITS.get(unit, unit)}" if unit else number


@functools.lru_cache(maxsize=8192)
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
    """A duration in the largest whole unit, as French messages write it: ``7 j`` (jours,
    like the packs' ``mg/j``), ``48 h``, ``90 min``."""
    for unit, size in (("j", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if abs(seconds) >= size and (
            seconds % size == 0 or unit == "min" or abs(seconds) >= 10 * size
        ):
            return f"{format_number(seconds / size)} {unit}"
    if abs(seconds) >= 3600:
        return f"{format_number(seconds / 3600.0)} h"
    return f"{format_number(seconds)} s"


def format_time(moment: datetime) -> str:
    """A fact time (naive UTC) as local ``YYYY-MM-DD HH:MM``."""
    return _local_time(moment, site_timezone())


@functools.lru_cache(maxsize=8192)
def _local_time(moment: datetime, zone: tzinfo) -> str:
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    local = aware.astimezone(zone)
    if local.year >= 1000:  # ISO text up to the minute is that format, built faster
        return local.isoformat(" ", "minutes")[:16]
    return local.strftime("%Y-%m-%d %H:%M")
