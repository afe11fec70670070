"""IR → closures: a rule pack compiled once into Python functions of an evaluation context.

The rule language's compiler (``rules/``) and the engine meet only at the JSON IR described in
``docs/rules-design.md``; this module reads that IR (never lark, never ``rules``) and turns
every expression node into a closure ``(Context) -> value`` once per pack, so that evaluating a
patient never walks the JSON tree again. Values follow the IR's types: ``bool`` is
``True``/``False``/``None`` (Kleene's unknown), numbers are floats (drug amounts and MME are
``engine.derived.Amount``), times naive UTC datetimes, drug lines ``MedicationOrder`` and lab
results ``LabResult``/``Observation``. ``None`` is *unknown* everywhere.

Sets become prefix indexes (an ATC code's matching sets are computed once per code and cached),
parameters take site values (``cursors``) checked against their range, and a selection picks
the rules of a sensitivity level and the site's enable/disable lists.

>>> pack = compile_ir({"ir_version": 1, "pack": {"name": "demo", "version": "1.0.0",
...     "file": "demo.rules", "sha256": "0"}, "sets": {}, "params": {"k_max": {"value": 5.5,
...     "unit": "mmol/L", "dimension": "molar_concentration", "min": 5.0, "max": 6.5,
...     "label": None, "source": {"file": "demo.rules", "line": 2}}}, "rules": []})
>>> try:
...     pack.select(cursors={"k_max": 7.0})
... except PackError as error:
...     print(error)
parameter k_max = 7.0 is outside its range 5.0 .. 6.5 mmol/L
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engine.alerts import CodedValue, RuleRef
from engine.derived import (
    Amount,
    amount_arithmetic,
    compare_amounts,
    morphine_equivalents,
    total_daily_dose,
)
from engine.evaluate import (
    MEASURE_ATTRS,
    ORDER_ATTRS,
    Closure,
    Context,
    Measure,
    WindowBounds,
    WindowFn,
    age_value,
    amount_evidence,
    clearance_value,
    derived_evidence,
    egfr_computed,
    has_allergy,
    has_condition,
    has_pregnancy,
    lab_count,
    lab_select,
    line_daily_dose,
    line_evidence,
    patient_evidence,
)

__all__ = [
    "CodeSets",
    "CompiledPack",
    "CompiledRule",
    "DrugBinding",
    "EngineError",
    "MessagePart",
    "PackError",
    "ParamSpec",
    "RuleRuntimeError",
    "Selection",
    "compile_ir",
]

SUPPORTED_IR_VERSION = 1


# Errors ------------------------------------------------------------------------------------------


class EngineError(Exception):
    """Root of the engine's errors: nothing else escapes ``evaluate`` or ``compile_ir``."""


class PackError(EngineError):
    """An IR the engine cannot use, or a site configuration that does not fit the pack."""


class RuleRuntimeError(EngineError):
    """A rule failed while evaluating: says which rule, where in its source, for whom."""

    def __init__(
        self,
        detail: str,
        *,
        rule_id: str | None = None,
        file: str | None = None,
        line: int | None = None,
        span: Sequence[int] | None = None,
        patient_id: str | None = None,
    ) -> None:
        self.detail = detail
        self.rule_id = rule_id
        self.file = file
        self.line = line
        self.span = tuple(span) if span else None
        self.patient_id = patient_id
        super().__init__(self.describe())

    def describe(self) -> str:
        where = self.file or "<pack>"
        if self.span:
            where += f":{self.span[0]}:{self.span[1]}"
        elif self.line is not None:
            where += f":{self.line}"
        rule = f" in rule {self.rule_id}" if self.rule_id else ""
        patient = f" (patient {self.patient_id})" if self.patient_id else ""
        return f"{where}: evaluation error{rule}{patient}: {self.detail}"

    def located(self, *, rule_id: str, file: str, line: int, patient_id: str) -> RuleRuntimeError:
        return RuleRuntimeError(
            self.detail,
            rule_id=rule_id,
            file=file,
            line=line,
            span=self.span,
            patient_id=patient_id,
        )


def _fail(node: Mapping[str, Any], error: Exception) -> RuleRuntimeError:
    return RuleRuntimeError(
        f"{node.get('op')}: {type(error).__name__}: {error}", span=node.get("span")
    )


# Sets --------------------------------------------------------------------------------------------


class CodeSets:
    """Prefix membership for ``atc`` and ``icd10`` sets, equality for ``route`` sets.

    A code is in a set when one of its terms includes a prefix of the code and excludes none.
    ``matching(code)`` gives every set of the system containing the code, cached per code.
    """

    def __init__(self, sets: Mapping[str, Mapping[str, Any]]) -> None:
        self.system: dict[str, str] = {}
        self.routes: dict[str, frozenset[str]] = {}
        self._prefixes: dict[str, dict[str, list[tuple[str, tuple[str, ...]]]]] = {
            "atc": {},
            "icd10": {},
        }
        self._cache: dict[str, dict[str, frozenset[str]]] = {"atc": {}, "icd10": {}}
        for name, spec in sets.items():
            system = spec["system"]
            self.system[name] = system
            if system == "route":
                self.routes[name] = frozenset(r for t in spec["terms"] for r in t["include"])
            elif system in self._prefixes:
                for term in spec["terms"]:
                    excludes = tuple(term.get("exclude") or ())
                    for prefix in term["include"]:
                        self._prefixes[system].setdefault(prefix, []).append((name, excludes))
            else:
                raise PackError(f"set {name}: unknown system {system!r}")

    def matching(self, system: str, code: str) -> frozenset[str]:
        cache = self._cache[system]
        found = cache.get(code)
        if found is None:
            found = cache[code] = self._match(system, code)
        return found

    def _match(self, system: str, code: str) -> frozenset[str]:
        prefixes = self._prefixes[system]
        names: set[str] = set()
        for end in range(1, len(code) + 1):
            for name, excludes in prefixes.get(code[:end], ()):
                if not any(code.startswith(e) for e in excludes):
                    names.add(name)
        return frozenset(names)

    def atc(self, code: str | None) -> frozenset[str]:
        return self.matching("atc", code) if code else frozenset()


# Parameters --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    value: float
    unit: str | None
    min: float
    max: float
    label: str | None

    def checked(self, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise PackError(f"parameter {self.name} must be a number, got {value!r}")
        if not self.min <= value <= self.max:
            unit = f" {self.unit}" if self.unit else ""
            raise PackError(
                f"parameter {self.name} = {value} is outside its range "
                f"{self.min} .. {self.max}{unit}"
            )
        return float(value)


# Expression compiler -----------------------------------------------------------------------------

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
class _Scope:
    """What names mean inside one rule while compiling it."""

    sets: CodeSets
    params: Mapping[str, ParamSpec]
    drugs: frozenset[str]
    values: dict[str, tuple[Closure, bool]] = field(default_factory=dict)  # name → (fn, combo?)


def _amount_capable(node: Mapping[str, Any]) -> bool:
    """Number nodes whose run-time value may be an ``Amount`` (drug amounts, MME)."""
    return node.get("type") == "number" and node.get("unit") in (None, "MME")


class _ExprCompiler:
    def __init__(self, scope: _Scope) -> None:
        self.scope = scope

    def compile(self, node: Mapping[str, Any], label: str | None = None) -> Closure:
        op = node.get("op")
        builder = getattr(self, f"_op_{op}", None)
        if builder is None:
            raise PackError(f"unknown IR operation {op!r} at {node.get('span')}")
        fn: Closure = builder(node, label)
        return fn

    def _args(self, node: Mapping[str, Any]) -> list[Closure]:
        return [self.compile(arg) for arg in node.get("args", ())]

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
        x = self.compile(arg)
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
        a, b = self.compile(left), self.compile(right)
        test = _COMPARE[op]
        if _amount_capable(left) or _amount_capable(right):
            return _amount_comparison(node, op, a, b, left.get("unit"), right.get("unit"))

        def compare(ctx: Context) -> bool | None:
            x = a(ctx)
            if x is None:
                return None
            y = b(ctx)
            if y is None:
                return None
            try:
                return test(x, y)
            except TypeError as error:
                raise _fail(node, error) from error

        return compare

    _op_lt = _op_le = _op_gt = _op_ge = _op_eq = _op_ne = _compare

    def _op_between(self, node: Mapping[str, Any], label: str | None) -> Closure:
        x, low, high = node["args"]
        fx, flow, fhigh = self.compile(x), self.compile(low), self.compile(high)
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

    def _op_in_set(self, node: Mapping[str, Any], label: str | None) -> Closure:
        (arg,) = node["args"]
        x = self.compile(arg)
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
                return name in sets.matching(system, line.atc)

            return line_in_set
        return lambda ctx: _none_or(x(ctx), lambda v: name in sets.matching(system, v))

    # Arithmetic

    def _arith(self, node: Mapping[str, Any], label: str | None) -> Closure:
        op = node["op"]
        left, right = node["args"]
        a, b = self.compile(left), self.compile(right)
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
        return _expand_routes(routes, self.scope.sets)

    def _op_any_drug(self, node: Mapping[str, Any], label: str | None) -> Closure:
        set_name, routes = node.get("set"), self._routes(node.get("routes"))
        name = label or (set_name or "drug")

        def any_drug(ctx: Context) -> bool:
            lines = ctx.lines(set_name, routes)
            if ctx.trace is not None:
                for line in lines:
                    ctx.trace.append(line_evidence(name, line))
            return bool(lines)

        return any_drug

    def _op_count_drugs(self, node: Mapping[str, Any], label: str | None) -> Closure:
        set_name, routes = node.get("set"), self._routes(node.get("routes"))
        name = label or (set_name or "drugs")

        def count_drugs(ctx: Context) -> float:
            lines = ctx.lines(set_name, routes)
            if ctx.trace is not None:
                ctx.trace.append(
                    derived_evidence(
                        name,
                        "count_drugs",
                        float(len(lines)),
                        None,
                        [line_evidence(name, line) for line in lines],
                    )
                )
            return float(len(lines))

        return count_drugs

    def _op_daily_dose(self, node: Mapping[str, Any], label: str | None) -> Closure:
        set_name = node["set"]
        name = label or f"daily dose of {set_name}"

        def daily_dose(ctx: Context) -> Amount | None:
            lines = ctx.lines(set_name, None)
            total = total_daily_dose((line_daily_dose(o), o.dose_unit) for o in lines)
            if ctx.trace is not None:
                ctx.trace.append(amount_evidence(name, "daily_dose", total, lines))
            return total

        return daily_dose

    def _op_mme(self, node: Mapping[str, Any], label: str | None) -> Closure:
        name = label or "mme"

        def mme(ctx: Context) -> Amount:
            lines = ctx.active_lines()
            total = morphine_equivalents(
                (o.atc, o.route, o.dose, o.dose_unit, line_daily_dose(o)) for o in lines
            )
            if ctx.trace is not None:
                opioid = [
                    o for o in lines if o.atc and o.atc.startswith(("N02A", "N07BC", "R05DA"))
                ]
                ctx.trace.append(amount_evidence(name, "mme", total, opioid))
            return total

        return mme

    # Lab and observation queries

    def _window(self, window: Mapping[str, Any] | None) -> WindowFn:
        return _compile_window(window, self)

    def _op_lab(self, node: Mapping[str, Any], label: str | None) -> Closure:
        return lab_select(
            node["fact_kind"],
            node["concept"],
            node["select"],
            self._window(node.get("window")),
            label or node["concept"],
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
                ctx.trace.append(
                    derived_evidence(
                        name, "sex", patient.sex.value, None, [patient_evidence(patient)]
                    )
                )
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
        creatinine = lab_select("lab", "creatinine", "latest", self._window(node.get("window")))
        weight = lab_select("observation", "weight", "latest", _compile_window(None, self))
        name = label or "clearance"

        def clearance(ctx: Context) -> float | None:
            return clearance_value(ctx, creatinine, weight, name)

        return clearance

    def _op_egfr(self, node: Mapping[str, Any], label: str | None) -> Closure:
        window = self._window(node.get("window"))
        reported = lab_select("lab", "egfr", "latest", window, label or "egfr")
        creatinine = lab_select("lab", "creatinine", "latest", window)
        name = label or "egfr"

        def egfr(ctx: Context) -> float | None:
            result = reported(ctx)
            if result is not None:
                return result.value
            return egfr_computed(ctx, creatinine, name)

        return egfr


def _and2(x: bool | None, y: bool | None) -> bool | None:
    if x is False or y is False:
        return False
    return None if x is None or y is None else True


def _none_or(value: Any, fn: Callable[[Any], Any]) -> Any:
    return None if value is None else fn(value)


def _value(fact: Measure) -> float | None:
    return fact.value


def _expand_routes(routes: Sequence[str] | None, sets: CodeSets) -> frozenset[str] | None:
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
) -> Closure:
    def compare(ctx: Context) -> bool | None:
        x = a(ctx)
        if x is None:
            return None
        y = b(ctx)
        if y is None:
            return None
        try:
            return compare_amounts(op, x, y, left_unit, right_unit)
        except TypeError as error:
            raise _fail(node, error) from error

    return compare


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


def _compile_window(window: Mapping[str, Any] | None, compiler: _ExprCompiler) -> WindowFn:
    """A window as (start inclusive, end, end inclusive) — None when a bound is unknown.

    The end is ``before`` (exclusive) or the evaluation time (inclusive), never later than the
    evaluation time (facts dated after it are never read); the start is the nominal end minus
    ``within``, or ``since``.
    """
    if window is None:
        return lambda ctx: (None, ctx.as_of, True)
    parts = {k: compiler.compile(window[k]) if window.get(k) else None for k in window}
    within, since, before = parts.get("within"), parts.get("since"), parts.get("before")

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


# Rules -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DrugBinding:
    name: str
    set: str | None
    routes: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class MessagePart:
    """A literal text (``fn`` None) or an expression with its IR type and unit."""

    text: str | None
    fn: Closure | None = None
    type: str | None = None
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    index: int
    id: str
    version: int
    title: str
    severity: str
    level: int
    reference: str | None
    file: str
    line: int
    ref: RuleRef
    problem: CodedValue
    intervention: CodedValue
    drug_bindings: tuple[DrugBinding, ...]
    condition: Closure
    escalations: tuple[tuple[str, Closure], ...]
    message: tuple[MessagePart, ...]
    kinds: frozenset[str]
    concepts: frozenset[str]
    clock_dependent: bool  # its result may change with time alone (windows, durations, age)
    trigger_set: str | None  # a set some active line must be in for the rule to fire

    def depends_on(self, kind: str, concept: str | None) -> bool:
        if kind not in self.kinds:
            return False
        return kind not in ("lab", "observation") or concept in self.concepts


def _var_names(node: Any) -> set[str]:
    names: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("op") == "var":
                names.add(item["name"])
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return names


def _clock_dependent(rule: Mapping[str, Any]) -> bool:
    """Whether time passing alone can change the rule's result (besides order start/end and
    facts dated in the future, which the live evaluator tracks as events)."""
    stack: list[Any] = [rule["bindings"], rule["condition"], rule["escalations"], rule["message"]]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            op = item.get("op")
            if op in ("now", "age", "clearance", "egfr") or (
                op == "attr" and item.get("name") == "duration"
            ):
                return True
            window = item.get("window") if op else None
            if isinstance(window, dict) and window.get("within") and not window.get("before"):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _compile_rule(
    index: int,
    rule: Mapping[str, Any],
    pack: Mapping[str, Any],
    sets: CodeSets,
    params: Mapping[str, ParamSpec],
) -> CompiledRule:
    drugs = [b for b in rule["bindings"] if b["kind"] == "drug"]
    scope = _Scope(sets, params, frozenset(b["name"] for b in drugs))
    compiler = _ExprCompiler(scope)
    combo_names = set(scope.drugs)
    for binding in rule["bindings"]:
        if binding["kind"] != "value":
            continue
        combo = bool(_var_names(binding["expr"]) & combo_names)
        if combo:
            combo_names.add(binding["name"])
        scope.values[binding["name"]] = (compiler.compile(binding["expr"], binding["name"]), combo)
    for binding in drugs:
        if binding.get("set") is not None and binding["set"] not in sets.system:
            raise PackError(f"rule {rule['id']}: unknown set {binding['set']!r}")
    drug_bindings = tuple(
        DrugBinding(b["name"], b.get("set"), _expand_routes(b.get("routes"), sets)) for b in drugs
    )
    source = rule["source"]
    message = tuple(
        MessagePart(part["text"])
        if "text" in part
        else MessagePart(
            None, compiler.compile(part["expr"]), part["expr"]["type"], part["expr"].get("unit")
        )
        for part in rule["message"]
    )
    depends = rule.get("depends_on") or {}
    return CompiledRule(
        index=index,
        id=rule["id"],
        version=int(rule.get("version", 1)),
        title=rule["title"],
        severity=rule["severity"],
        level=int(rule.get("level", 1)),
        reference=rule.get("reference"),
        file=source["file"],
        line=int(source["line"]),
        ref=RuleRef.model_construct(
            id=rule["id"],
            version=int(rule.get("version", 1)),
            pack=pack["name"],
            pack_version=pack["version"],
            file=source["file"],
            line=int(source["line"]),
        ),
        problem=CodedValue(**rule["problem"]),
        intervention=CodedValue(**rule["intervention"]),
        drug_bindings=drug_bindings,
        condition=compiler.compile(rule["condition"]),
        escalations=tuple(
            (e["severity"], compiler.compile(e["condition"])) for e in rule["escalations"]
        ),
        message=message,
        kinds=frozenset(depends.get("kinds", ())),
        concepts=frozenset(depends.get("concepts", ())),
        clock_dependent=_clock_dependent(rule),
        trigger_set=next((b.set for b in drug_bindings if b.set is not None), None),
    )


# Packs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The rules a site runs and the parameter values it uses, indexed for candidate lookup."""

    pack: CompiledPack
    params: Mapping[str, float]
    rules: tuple[CompiledRule, ...]
    level: int
    always: tuple[CompiledRule, ...] = field(init=False)
    by_trigger: Mapping[str, tuple[CompiledRule, ...]] = field(init=False)

    def __post_init__(self) -> None:
        by_trigger: dict[str, list[CompiledRule]] = {}
        for rule in self.rules:
            if rule.trigger_set is not None:
                by_trigger.setdefault(rule.trigger_set, []).append(rule)
        object.__setattr__(self, "always", tuple(r for r in self.rules if r.trigger_set is None))
        object.__setattr__(self, "by_trigger", {k: tuple(v) for k, v in by_trigger.items()})

    def candidates(self, set_names: Iterable[str]) -> list[CompiledRule]:
        """Rules that may fire when lines of these sets are present (sorted by rule order)."""
        found = list(self.always)
        for name in set_names:
            found.extend(self.by_trigger.get(name, ()))
        found.sort(key=lambda r: r.index)
        return found


@dataclass(frozen=True)
class CompiledPack:
    name: str
    version: str
    sha256: str | None
    file: str | None
    rules: tuple[CompiledRule, ...]
    params: Mapping[str, ParamSpec]
    sets: CodeSets
    _selections: dict[Any, Selection] = field(default_factory=dict, repr=False, compare=False)

    def rule(self, rule_id: str) -> CompiledRule:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    def select(
        self,
        *,
        cursors: Mapping[str, float] | None = None,
        level: int = 1,
        enabled: Iterable[str] = (),
        disabled: Iterable[str] = (),
    ) -> Selection:
        """Rules with ``level`` ≤ the chosen level or listed in ``enabled``, minus ``disabled``;
        parameters at their default unless a cursor moves them (inside their range)."""
        key = (
            tuple(sorted((cursors or {}).items())),
            level,
            frozenset(enabled),
            frozenset(disabled),
        )
        found = self._selections.get(key)
        if found is None:
            found = self._selections[key] = self._select(cursors or {}, level, key[2], key[3])
        return found

    def _select(
        self,
        cursors: Mapping[str, float],
        level: int,
        enabled: frozenset[str],
        disabled: frozenset[str],
    ) -> Selection:
        if isinstance(level, bool) or not isinstance(level, int) or level < 1:
            raise PackError(f"level must be a whole number >= 1, got {level!r}")
        unknown = sorted(set(cursors) - set(self.params))
        if unknown:
            raise PackError(
                f"unknown parameter(s) {', '.join(unknown)} for pack {self.name}; "
                f"known: {', '.join(sorted(self.params)) or 'none'}"
            )
        ids = {r.id for r in self.rules}
        strangers = sorted((enabled | disabled) - ids)
        if strangers:
            raise PackError(f"unknown rule id(s) {', '.join(strangers)} in pack {self.name}")
        params = {name: spec.value for name, spec in self.params.items()}
        params.update({name: self.params[name].checked(v) for name, v in cursors.items()})
        rules = tuple(
            r for r in self.rules if (r.level <= level or r.id in enabled) and r.id not in disabled
        )
        return Selection(self, params, rules, level)


def compile_ir(ir: Mapping[str, Any]) -> CompiledPack:
    """Compile an IR dict (as written by ``rules.compile_pack``) into closures, once."""
    try:
        version = ir.get("ir_version")
        if version != SUPPORTED_IR_VERSION:
            raise PackError(f"IR version {version!r} is not supported (expected 1)")
        pack = ir["pack"]
        sets = CodeSets(ir.get("sets") or {})
        params = {name: _param(name, spec) for name, spec in (ir.get("params") or {}).items()}
        rules = tuple(
            _compile_rule(i, rule, pack, sets, params) for i, rule in enumerate(ir["rules"])
        )
    except PackError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PackError(f"malformed IR: {type(error).__name__}: {error}") from error
    return CompiledPack(
        name=pack["name"],
        version=pack["version"],
        sha256=pack.get("sha256"),
        file=pack.get("file"),
        rules=rules,
        params=params,
        sets=sets,
    )


def _param(name: str, spec: Mapping[str, Any]) -> ParamSpec:
    return ParamSpec(
        name=name,
        value=float(spec["value"]),
        unit=spec.get("unit"),
        min=float(spec["min"]),
        max=float(spec["max"]),
        label=spec.get("label"),
    )
