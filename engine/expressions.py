"""IR expression nodes → closures ``(Context) -> value``, built once per rule.

Every node of a rule's condition, escalations, value bindings and message becomes a closure
over the run-time queries of ``vigie.engine.runtime``, so that evaluating a patient never walks the
JSON tree again. Values follow the IR's types: ``bool`` is ``True``/``False``/``None``
(Kleene's unknown), numbers are floats (drug amounts and MME are ``vigie.engine.derived.Amount``),
times naive UTC datetimes. ``None`` is *unknown* everywhere. Rules and packs are assembled by
``vigie.engine.load``.

>>> from vigie.engine.runtime import CodeSets
>>> builder = ClosureBuilder(Scope(CodeSets({}), frozenset(), frozenset()))
>>> unknown = builder.build({"op": "and", "type": "bool", "args": [
...     {"op": "const", "type": "bool", "value": True, "args": []},
...     {"op": "const", "type": "bool", "value": None, "args": []}]})
>>> print(unknown(None))
None
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from vigie.engine.alerts import Threshold, ThresholdOp
from vigie.engine.derived import (
    Amount,
    amount_arithmetic,
    amount_in,
    compare_amounts,
)
from vigie.engine.errors import PackError, RuleRuntimeError
from vigie.engine.runtime import (
    MEASURE_ATTRS,
    ORDER_ATTRS,
    QUALITATIVE_TEXT,
    Closure,
    CodeSets,
    Context,
    Measure,
    WindowBounds,
    WindowFn,
    age_value,
    clearance_value,
    egfr_computed,
    has_allergy,
    has_condition,
    has_pregnancy,
    lab_count,
    lab_select,
    line_evidence,
    measure_evidence,
    opioid_mme,
    patient_input,
    set_daily_dose,
)

__all__ = ["ClosureBuilder", "Scope", "expand_routes"]

# Closure builder ---------------------------------------------------------------------------------


def _fail(node: Mapping[str, Any], error: Exception) -> RuleRuntimeError:
    return RuleRuntimeError(
        f"{node.get('op')}: {type(error).__name__}: {error}", span=node.get("span")
    )


_MISSING = object()
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
}
_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
}


@dataclass(frozen=True, slots=True)
class Scope:
    """What names mean inside one rule while building its closures."""

    sets: CodeSets
    params: Collection[str]  # the pack's parameter names (values come with the selection)
    drugs: frozenset[str]
    values: dict[str, tuple[Closure, bool]] = field(default_factory=dict)  # name → (fn, combo?)


def _amount_capable(node: Mapping[str, Any]) -> bool:
    """Number nodes whose run-time value may be an ``Amount`` (drug amounts, MME)."""
    return node.get("type") == "number" and node.get("unit") in (None, "MME")


class ClosureBuilder:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def build(self, node: Mapping[str, Any], label: str | None = None) -> Closure:
        op = node.get("op")
        builder = getattr(self, f"_op_{op}", None)
        if builder is None:
            raise PackError(f"unknown IR operation {op!r} at {node.get('span')}")
        fn: Closure = builder(node, label)
        return fn

    def message(self, node: Mapping[str, Any]) -> Closure:
        """A message placeholder: ``{k}`` of a lab result (``attr value`` of a lab) shows its
        number, or ``positif``/``négatif`` for a qualitative result without one."""
        (arg,) = node.get("args") or [{}]
        if node.get("op") != "attr" or node.get("name") != "value" or arg.get("type") != "lab":
            return self.build(node)
        result = self.build(arg)

        def value_or_reading(ctx: Context) -> Any:
            fact = result(ctx)
            if fact is None:
                return None
            qualitative = getattr(fact, "qualitative", None)
            if fact.value is None and qualitative is not None:
                return QUALITATIVE_TEXT[qualitative]
            return fact.value

        return value_or_reading

    def _args(self, node: Mapping[str, Any]) -> list[Closure]:
        return [self.build(arg) for arg in node.get("args", ())]

    # Values and names

    def _op_const(self, node: Mapping[str, Any], label: str | None) -> Closure:
        value = node["value"]
        if node["type"] == "number":
            value = float(value)
        return lambda ctx: value

    def _op_param(self, node: Mapping[str, Any], label: str | None) -> Closure:
        name = node["name"]
        if name not in self.scope.params:
            raise PackError(f"unknown parameter {name!r} at {node.get('span')}")
        return lambda ctx: ctx.params[name]

    def _op_convert(self, node: Mapping[str, Any], label: str | None) -> Closure:
        (x,) = self._args(node)
        factor = float(node["factor"])

        def convert(ctx: Context) -> Any:
            v = x(ctx)
            if v is None:
                return None
            if isinstance(v, Amount):
                return None if v.lower_bound else v.value * factor
            return v * factor

        return convert

    def _op_var(self, node: Mapping[str, Any], label: str | None) -> Closure:
        name = node["name"]
        if name in self.scope.drugs:
            return lambda ctx: ctx.bound[name]
        if name not in self.scope.values:
            raise PackError(f"unknown name {name!r} at {node.get('span')}")
        expr, combo = self.scope.values[name]
        if combo:

            def combo_var(ctx: Context) -> Any:
                value = ctx.combo_values.get(name, _MISSING)
                if value is _MISSING:
                    value = ctx.combo_values[name] = expr(ctx)
                return value

            return combo_var

        def shared_var(ctx: Context) -> Any:
            value = ctx.values.get(name, _MISSING)
            if value is _MISSING:
                value = ctx.values[name] = expr(ctx)
            return value

        return shared_var

    def _op_now(self, node: Mapping[str, Any], label: str | None) -> Closure:
        return lambda ctx: ctx.as_of

    def _op_attr(self, node: Mapping[str, Any], label: str | None) -> Closure:
        (arg,) = node["args"]
        x = self.build(arg)
        name = node["name"]
        getter = (ORDER_ATTRS if arg["type"] == "order" else MEASURE_ATTRS).get(name)
        if getter is None:
            raise PackError(f"unknown attribute {name!r} of {arg['type']} at {node.get('span')}")

        def attr(ctx: Context) -> Any:
            v = x(ctx)
            return None if v is None else getter(ctx, v)

        return attr

    # Logic

    def _op_and(self, node: Mapping[str, Any], label: str | None) -> Closure:
        args = self._args(node)

        def kleene_and(ctx: Context) -> bool | None:
            unknown = False
            for arg in args:
                v = arg(ctx)
                if v is False:
                    return False
                if v is None:
                    unknown = True
            return None if unknown else True

        return kleene_and

    def _op_or(self, node: Mapping[str, Any], label: str | None) -> Closure:
        args = self._args(node)

        def kleene_or(ctx: Context) -> bool | None:
            unknown = False
            for arg in args:
                v = arg(ctx)
                if v is True:
                    return True
                if v is None:
                    unknown = True
            return None if unknown else False

        return kleene_or

    def _op_not(self, node: Mapping[str, Any], label: str | None) -> Closure:
        (x,) = self._args(node)

        def kleene_not(ctx: Context) -> bool | None:
            v = x(ctx)
            return None if v is None else not v

        return kleene_not

    def _op_known(self, node: Mapping[str, Any], label: str | None) -> Closure:
        (x,) = self._args(node)

        def known(ctx: Context) -> bool:
            v = x(ctx)
            return v is not None and not (isinstance(v, Amount) and v.lower_bound)

        return known

    def _op_otherwise(self, node: Mapping[str, Any], label: str | None) -> Closure:
        x, y = self._args(node)

        def otherwise(ctx: Context) -> Any:
            v = x(ctx)
            return y(ctx) if v is None else v

        return otherwise

    # Comparisons

    def _compare(self, node: Mapping[str, Any], label: str | None) -> Closure:
        op = node["op"]
        left, right = node["args"]
        a, b = self.build(left), self.build(right)
        test = _COMPARE[op]
        recorded = _threshold_shape(node)
        if _amount_capable(left) or _amount_capable(right):
            units = (left.get("unit"), right.get("unit"))
            return _amount_comparison(node, op, a, b, *units, recorded=recorded)

        def compare(ctx: Context) -> bool | None:
            x = a(ctx)
            if x is None:
                return None
            y = b(ctx)
            if y is None:
                return None
            try:
                held = test(x, y)
            except TypeError as error:
                raise _fail(node, error) from error
            if held is True and recorded is not None and ctx.thresholds is not None:
                _record_threshold(ctx, recorded, x, y)
            return held

        return compare

    _op_lt = _op_le = _op_gt = _op_ge = _op_eq = _op_ne = _compare

    def _op_between(self, node: Mapping[str, Any], label: str | None) -> Closure:
        x, low, high = node["args"]
        fx, flow, fhigh = self.build(x), self.build(low), self.build(high)
        if any(_amount_capable(n) for n in (x, low, high)):
            units = (low.get("unit"), high.get("unit"))
            at_least = _amount_comparison(node, "ge", fx, flow, x.get("unit"), units[0])
            below = _amount_comparison(node, "lt", fx, fhigh, x.get("unit"), units[1])
            return lambda ctx: _and2(at_least(ctx), below(ctx))

        def between(ctx: Context) -> bool | None:
            v, lo, hi = fx(ctx), flow(ctx), fhigh(ctx)
            if v is None or lo is None or hi is None:
                return None
            try:
                return bool(lo <= v < hi)
            except TypeError as error:
                raise _fail(node, error) from error

        return between

    def _op_qualitative(self, node: Mapping[str, Any], label: str | None) -> Closure:
        """Whether a lab result was read as positive (or negative); unknown without a result
        or when the result is neither (a number, an unlisted word)."""
        (x,) = self._args(node)
        wanted = node["result"]

        def qualitative(ctx: Context) -> bool | None:
            fact = x(ctx)
            found = None if fact is None else getattr(fact, "qualitative", None)
            return None if found is None else found == wanted

        return qualitative

    def _op_in_set(self, node: Mapping[str, Any], label: str | None) -> Closure:
        (arg,) = node["args"]
        x = self.build(arg)
        name = node["set"]
        system = self.scope.sets.system.get(name)
        if system is None:
            raise PackError(f"unknown set {name!r} at {node.get('span')}")
        sets = self.scope.sets
        if system == "route":
            routes = sets.routes[name]
            return lambda ctx: _none_or(x(ctx), lambda v: v in routes)
        if arg["type"] == "order":

            def line_in_set(ctx: Context) -> bool | None:
                line = x(ctx)
                if line is None or line.atc is None:
                    return None
                return name in sets.matching(system, line.atc, line.route)

            return line_in_set
        return lambda ctx: _none_or(x(ctx), lambda v: name in sets.matching(system, v))

    # Arithmetic

    def _arith(self, node: Mapping[str, Any], label: str | None) -> Closure:
        op = node["op"]
        left, right = node["args"]
        a, b = self.build(left), self.build(right)
        units = (left.get("unit"), right.get("unit"))
        apply = _ARITH[op]
        timed = "time" in (left["type"], right["type"])

        def arith(ctx: Context) -> Any:
            x = a(ctx)
            if x is None:
                return None
            y = b(ctx)
            if y is None:
                return None
            try:
                if timed:
                    return _time_arith(op, x, y)
                if isinstance(x, Amount) or isinstance(y, Amount):
                    return amount_arithmetic(op, x, y, *units)
                if op == "div" and y == 0:
                    return None
                return apply(x, y)
            except (TypeError, OverflowError, ValueError) as error:
                raise _fail(node, error) from error

        return arith

    _op_add = _op_sub = _op_mul = _op_div = _arith

    def _op_neg(self, node: Mapping[str, Any], label: str | None) -> Closure:
        (x,) = self._args(node)

        def neg(ctx: Context) -> Any:
            v = x(ctx)
            if isinstance(v, Amount):
                return None if v.lower_bound else Amount(-v.value, v.unit)
            return None if v is None else -v

        return neg

    # Drug queries

    def _routes(self, routes: Sequence[str] | None) -> frozenset[str] | None:
        return expand_routes(routes, self.scope.sets)

    def _op_any_drug(self, node: Mapping[str, Any], label: str | None) -> Closure:
        set_name, routes = node.get("set"), self._routes(node.get("routes"))
        name = label or (set_name or "drug")

        def any_drug(ctx: Context) -> bool:
            lines = ctx.lines(set_name, routes)
            if ctx.trace is not None:
                for line in lines:
                    ctx.trace.append(ctx.cached(line_evidence, name, line))
            return bool(lines)

        return any_drug

    def _op_count_drugs(self, node: Mapping[str, Any], label: str | None) -> Closure:
        set_name, routes = node.get("set"), self._routes(node.get("routes"))
        name = label or (set_name or "drugs")

        def count_drugs(ctx: Context) -> float:
            lines = ctx.lines(set_name, routes)
            if ctx.trace is not None:
                inputs = [ctx.cached(line_evidence, name, line) for line in lines]
                ctx.trace.append(ctx.derived(name, "count_drugs", float(len(lines)), None, inputs))
            return float(len(lines))

        return count_drugs

    def _op_daily_dose(self, node: Mapping[str, Any], label: str | None) -> Closure:
        set_name = node["set"]
        name = label or f"daily dose of {set_name}"
        return lambda ctx: set_daily_dose(ctx, set_name, name)

    def _op_mme(self, node: Mapping[str, Any], label: str | None) -> Closure:
        name = label or "mme"
        return lambda ctx: opioid_mme(ctx, name)

    # Lab and observation queries

    def _window(self, window: Mapping[str, Any] | None) -> WindowFn:
        return _build_window(window, self)

    def _op_lab(self, node: Mapping[str, Any], label: str | None) -> Closure:
        return lab_select(
            node["fact_kind"],
            node["concept"],
            node["select"],
            self._window(node.get("window")),
            label or node["concept"],
            share=window_key(node.get("window")),
        )

    def _op_lab_count(self, node: Mapping[str, Any], label: str | None) -> Closure:
        count = lab_count(node, self._window(node.get("window")), label)
        return lambda ctx: _none_or(count(ctx), float)

    def _op_lab_none(self, node: Mapping[str, Any], label: str | None) -> Closure:
        count = lab_count(node, self._window(node.get("window")), label)
        return lambda ctx: _none_or(count(ctx), lambda n: n == 0)

    # Clinical queries

    def _op_has_condition(self, node: Mapping[str, Any], label: str | None) -> Closure:
        set_name, active_only = node["set"], bool(node.get("active_only"))
        window = self._window(node.get("window")) if node.get("window") else None
        return has_condition(self.scope.sets, set_name, active_only, window, label or set_name)

    def _op_has_allergy(self, node: Mapping[str, Any], label: str | None) -> Closure:
        (x,) = self._args(node)
        return has_allergy(x, label or "allergy")

    def _op_has_pregnancy(self, node: Mapping[str, Any], label: str | None) -> Closure:
        return has_pregnancy(self._window(node.get("window")), label or "pregnancy")

    def _op_age(self, node: Mapping[str, Any], label: str | None) -> Closure:
        name = label or "age"

        def age(ctx: Context) -> float | None:
            return age_value(ctx, name)

        return age

    def _op_sex(self, node: Mapping[str, Any], label: str | None) -> Closure:
        name = label or "sex"

        def sex(ctx: Context) -> str | None:
            patient = ctx.record.patient
            if patient is None:
                return None
            if ctx.trace is not None:
                inputs = [patient_input(ctx, patient)]
                ctx.trace.append(ctx.derived(name, "sex", patient.sex.value, None, inputs))
            return patient.sex.value

        return sex

    def _op_weight(self, node: Mapping[str, Any], label: str | None) -> Closure:
        return self._observation(node, "weight", label)

    def _op_height(self, node: Mapping[str, Any], label: str | None) -> Closure:
        return self._observation(node, "height", label)

    def _observation(self, node: Mapping[str, Any], concept: str, label: str | None) -> Closure:
        select = lab_select(
            "observation", concept, "latest", self._window(node.get("window")), label or concept
        )
        return lambda ctx: _none_or(select(ctx), _value)

    def _op_clearance(self, node: Mapping[str, Any], label: str | None) -> Closure:
        share = window_key(node.get("window"))
        window = self._window(node.get("window"))
        creatinine = lab_select("lab", "creatinine", "latest", window, share=share)
        weight = lab_select(
            "observation", "weight", "latest", _build_window(None, self), share=window_key(None)
        )
        name = label or "clearance"
        key = None if share is None else ("clearance", share)  # the same for every rule

        def clearance(ctx: Context) -> float | None:
            if key is None or ctx.trace is not None:  # explaining: traced, not shared
                return clearance_value(ctx, creatinine, weight, name)
            value: float | None = ctx.shared.get(key, _MISSING)
            if value is _MISSING:
                value = ctx.shared[key] = clearance_value(ctx, creatinine, weight, name)
            return value

        return clearance

    def _op_egfr(self, node: Mapping[str, Any], label: str | None) -> Closure:
        """The latest eGFR in the window, reported or CKD-EPI 2021 (rule-catalogue.md): the
        reported one, unless a creatinine taken after it gives a computable CKD-EPI value (an
        eGFR reported with the creatinine it came from wins over recomputing it)."""
        window = self._window(node.get("window"))
        share = window_key(node.get("window"))
        reported = lab_select("lab", "egfr", "latest", window, share=share)
        creatinine = lab_select("lab", "creatinine", "latest", window, share=share)
        name = label or "egfr"
        key = None if share is None else ("egfr", share)  # the same for every rule

        def egfr(ctx: Context) -> float | None:
            if key is None or ctx.trace is not None:  # explaining: traced, not shared
                return latest_egfr(ctx)
            value: float | None = ctx.shared.get(key, _MISSING)
            if value is _MISSING:
                value = ctx.shared[key] = latest_egfr(ctx)
            return value

        def latest_egfr(ctx: Context) -> float | None:
            result = reported(ctx)
            if result is not None:
                later = creatinine(ctx)
                if later is not None and later.value is not None and later.time > result.time:
                    computed = egfr_computed(ctx, creatinine, name)
                    if computed is not None:
                        return computed
                if ctx.trace is not None:
                    ctx.trace.append(ctx.cached(measure_evidence, name, result))
                return result.value
            return egfr_computed(ctx, creatinine, name)

        return egfr


def _and2(x: bool | None, y: bool | None) -> bool | None:
    if x is False or y is False:
        return False
    return None if x is None or y is None else True


def _none_or(value: Any, fn: Callable[[Any], Any]) -> Any:
    return None if value is None else fn(value)


# Thresholds: ``measured op threshold`` (or ``threshold op measured``) where the threshold is a
# parameter or a constant (possibly converted) and the measured side is a lab value, a derived
# renal function, a drug amount (daily dose, MME)... — not the patient's age, weight or height
# (patient context: a criterion, not the triggering value), a duration or an order line's
# attribute (a frequency). Recorded only while explaining.
_FLIP = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}
_CHARACTERISTICS = frozenset({"age", "weight", "height"})
_NOT_MEASURES = frozenset({"s", "years", "kg", "cm", "m"})
_ThresholdShape = tuple[str, str, bool, str | None, str | None]  # name, op, flipped, unit, param


def _threshold_operand(node: Mapping[str, Any]) -> tuple[bool, str | None]:
    """Whether a node is a threshold (a parameter or constant, through conversions), and the
    parameter's name when it is one."""
    while node.get("op") == "convert":
        (node,) = node.get("args") or [{}]
    if node.get("op") == "param":
        return True, node.get("name")
    return node.get("op") == "const", None


def _measured_name(node: Mapping[str, Any]) -> str:
    """The measured side's name: the binding (``k`` of ``k.value``), or the operation."""
    while node.get("op") in ("attr", "convert") and node.get("args"):
        (node,) = node["args"]
    return str(node.get("name") or node.get("op"))


def _reads_order(node: Mapping[str, Any]) -> bool:
    if node.get("type") == "order":
        return True
    return any(_reads_order(arg) for arg in node.get("args") or ())


def _threshold_shape(node: Mapping[str, Any]) -> _ThresholdShape | None:
    op = node["op"]
    if op not in _FLIP:
        return None
    left, right = node["args"]
    if left.get("type") != "number" or right.get("type") != "number":
        return None
    right_is, right_param = _threshold_operand(right)
    left_is, left_param = _threshold_operand(left)
    if right_is and not left_is:
        measured, flipped, param = left, False, right_param
    elif left_is and not right_is:
        measured, flipped, param = right, True, left_param
    else:
        return None
    if measured.get("op") in _CHARACTERISTICS or measured.get("unit") in _NOT_MEASURES:
        return None  # age, weight, height are patient context; durations are not measures
    if _reads_order(measured):
        return None  # a dosing criterion (frequency...), not a measured value
    name = _measured_name(measured)
    return name, _FLIP[op] if flipped else op, flipped, measured.get("unit"), param


def _record_threshold(ctx: Context, shape: _ThresholdShape, x: Any, y: Any) -> None:
    """Add the comparison to ``ctx.thresholds`` (once; the model built once per context)."""
    name, op, flipped, unit, param = shape
    value, threshold = (y, x) if flipped else (x, y)
    if type(value) is not float and not _plain_number(value):
        return
    if type(threshold) is not float and not _plain_number(threshold):
        return
    key = ("threshold", name, op, float(value), float(threshold), unit, param)
    hit = ctx.evidence.get(key)
    item: Threshold
    if hit is not None:
        item = hit[1]
    else:
        item = Threshold.model_construct(
            name=name,
            op=cast(ThresholdOp, op),
            value=float(value),
            threshold=float(threshold),
            unit=unit,
            param=param,
        )
        ctx.keep(key, None, item)
    found = ctx.thresholds
    if found is not None and item not in found:
        found.append(item)


def _plain_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _value(fact: Measure) -> float | None:
    return fact.value


def expand_routes(routes: Sequence[str] | None, sets: CodeSets) -> frozenset[str] | None:
    if routes is None:
        return None
    expanded: set[str] = set()
    for route in routes:
        expanded.update(sets.routes.get(route, (route,)))
    return frozenset(expanded)


def _amount_comparison(
    node: Mapping[str, Any],
    op: str,
    a: Closure,
    b: Closure,
    left_unit: str | None,
    right_unit: str | None,
    recorded: _ThresholdShape | None = None,
) -> Closure:
    def compare(ctx: Context) -> bool | None:
        x = a(ctx)
        if x is None:
            return None
        y = b(ctx)
        if y is None:
            return None
        try:
            held = compare_amounts(op, x, y, left_unit, right_unit)
        except TypeError as error:
            raise _fail(node, error) from error
        if held is True and recorded is not None and ctx.thresholds is not None:
            _record_amount_threshold(ctx, recorded, x, y, left_unit, right_unit)
        return held

    return compare


def _record_amount_threshold(
    ctx: Context,
    shape: _ThresholdShape,
    x: Any,
    y: Any,
    left_unit: str | None,
    right_unit: str | None,
) -> None:
    """A drug amount (daily dose, MME) against a plain threshold, in the threshold's unit
    (``p`` 3500 mg against ``3 g`` is recorded as 3.5 gt 3 g); a lower bound counts as its known
    part. Amounts that do not convert to the threshold's unit are not recorded."""
    name, op, flipped, _, param = shape
    measured, threshold, unit = (y, x, left_unit) if flipped else (x, y, right_unit)
    if isinstance(threshold, Amount):
        return
    if isinstance(measured, Amount):
        value = amount_in(measured, unit) if unit else measured.value
        unit = unit or measured.unit
        if value is None:
            return
        measured = value
    pair = (threshold, measured) if flipped else (measured, threshold)
    _record_threshold(ctx, (name, op, flipped, unit, param), *pair)


def _time_arith(op: str, x: Any, y: Any) -> Any:
    """time ± duration (s) → time; time − time → duration (s)."""
    if isinstance(x, datetime) and isinstance(y, datetime):
        return (x - y).total_seconds() if op == "sub" else None
    if isinstance(x, datetime):
        delta = timedelta(seconds=float(y))
        return x + delta if op == "add" else x - delta if op == "sub" else None
    if isinstance(y, datetime) and op == "add":
        return y + timedelta(seconds=float(x))
    return None


def _bounds(window: Mapping[str, Any]) -> list[str]:
    return [k for k in ("within", "since", "before") if window.get(k)]


_PARAMETRIC = frozenset({"const", "param", "convert", "mul", "sub"})


def _parametric(node: Any) -> bool:
    """Whether an expression depends on the pack's parameters and constants only (the same
    value for every patient and time of one selection)."""
    if not isinstance(node, Mapping):
        return True
    return node.get("op") in _PARAMETRIC and all(_parametric(a) for a in node.get("args") or ())


def window_key(window: Mapping[str, Any] | None) -> Hashable | None:
    """What makes two windows the same for every patient and time of one selection: no window,
    or ``within`` a constant or parameter (None for one read from the patient's facts, e.g.
    ``since d.start``). Results selected in the same window can be shared between the rules of
    one evaluation (``Context.shared``).

    >>> window_key({"within": {"op": "param", "name": "w", "args": [], "span": [1, 2]}})
    ('within', '{"args":[],"name":"w","op":"param"}')
    >>> window_key({"since": {"op": "attr", "name": "start", "args": []}}) is None
    True
    """
    if window is None:
        return ("always",)
    within = window.get("within")
    if _bounds(window) != ["within"] or not _parametric(within):
        return None
    return ("within", json.dumps(_without_spans(within), sort_keys=True, separators=(",", ":")))


def _without_spans(node: Any) -> Any:
    if isinstance(node, Mapping):
        return {k: _without_spans(v) for k, v in node.items() if k != "span"}
    if isinstance(node, list):
        return [_without_spans(v) for v in node]
    return node


def _constant_seconds(node: Mapping[str, Any] | None) -> float | None:
    """The seconds of a constant duration (a number, converted), as its closures compute
    them; None when it is not one."""
    if node is None:
        return None
    if node.get("op") == "const" and node.get("type") == "number":
        value = node.get("value")
        return None if value is None or isinstance(value, bool) else float(value)
    if node.get("op") == "convert":
        (inner,) = node.get("args") or [{}]
        seconds = _constant_seconds(inner)
        return None if seconds is None else seconds * float(node["factor"])
    return None


def _fixed_window(length: timedelta | None) -> WindowFn:
    """A window ending at the evaluation time (inclusive) and starting ``length`` before it (no
    start: None). Its length is kept on it (``length``) for a query to compute the bounds in
    place (``runtime.lab_select``)."""

    def bounds(ctx: Context) -> WindowBounds:
        return (None if length is None else ctx.as_of - length, ctx.as_of, True)

    bounds.length = length  # type: ignore[attr-defined]
    return bounds


def _parametric_window(within: Closure) -> WindowFn:
    """``within p``, p a parameter: its length computed once per parameter set (a selection's
    parameters do not change; a context carries its selection's)."""
    # The parameters last seen with the length they gave, replaced as one (threads may share
    # a loaded pack with different parameters: a ward's cursors).
    last: list[tuple[Any, timedelta | None]] = [(None, None)]

    def length_of(ctx: Context) -> timedelta | None:
        params = ctx.params
        seen, length = last[0]
        if seen is not params:
            w = within(ctx)
            length = None if w is None else timedelta(seconds=float(w))
            last[0] = (params, length)
        return length

    def bounds(ctx: Context) -> WindowBounds | None:
        length = length_of(ctx)
        return None if length is None else (ctx.as_of - length, ctx.as_of, True)

    bounds.length_of = length_of  # type: ignore[attr-defined]  # for a query to use in place
    return bounds


def _build_window(window: Mapping[str, Any] | None, builder: ClosureBuilder) -> WindowFn:
    """A window as (start inclusive, end, end inclusive) — None when a bound is unknown.

    The end is ``before`` (exclusive) or the evaluation time (inclusive), never later than the
    evaluation time (facts dated after it are never read); the start is the nominal end minus
    ``within``, or ``since``.
    """
    if window is None:
        return _fixed_window(None)
    fixed = _constant_seconds(window.get("within")) if set(_bounds(window)) == {"within"} else None
    if fixed is not None:  # ``within 48 h``: the same length at every evaluation
        return _fixed_window(timedelta(seconds=fixed))
    parts = {k: builder.build(window[k]) if window.get(k) else None for k in window}
    within, since, before = parts.get("within"), parts.get("since"), parts.get("before")
    if within is not None and window_key(window) is not None:  # ``within`` a parameter
        return _parametric_window(within)

    def bounds(ctx: Context) -> WindowBounds | None:
        end, inclusive = ctx.as_of, True
        nominal = end
        if before is not None:
            b = before(ctx)
            if b is None:
                return None
            nominal = b
            if b <= end:
                end, inclusive = b, False
        start: datetime | None = None
        if within is not None:
            w = within(ctx)
            if w is None:
                return None
            start = nominal - timedelta(seconds=float(w))
        if since is not None:
            s = since(ctx)
            if s is None:
                return None
            start = s if start is None else max(start, s)
        return (start, end, inclusive)

    return bounds
