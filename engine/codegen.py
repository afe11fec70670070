"""IR expressions → Python source: one generated function per part of a rule.

The closure builder (``vigie.engine.expressions``) turns every IR node into a closure, so that a
condition such as ``k > k_max and not any active drug in binders`` is a tree of eight closures
called one by one. This module writes the logic of such a tree — Kleene's ``and``/``or``/``not``,
``known``, ``otherwise``, comparisons, ``between``, unit conversions, attributes, parameters,
constants and named values — as the statements of one Python function, compiled once per pack
(``compile``/``exec``). The queries (labs, drug lines, clinical facts, derived values, arithmetic,
drug amounts) stay the builder's closures, called from the generated code, so that what they
read and the evidence they record are the same objects either way.

The generated code keeps the closures' semantics exactly: ``None`` is *unknown*, operands are
evaluated in the same order and short-circuit at the same point (the evidence a traced
evaluation records, and the order it records it in, do not change), a ``TypeError`` in a
comparison is the same located ``RuleRuntimeError``. Each function's source is kept (its
``source`` attribute) and registered with ``linecache`` while the function lives, so that a
traceback shows the generated line (a collected function's entry is removed at the next
registration, ``release_sources``: not by the collector, which may run while
``linecache.checkcache`` iterates the cache); a loaded rule's ``source`` is the whole generated
form of its parts. A subtree nested deeper than ``MAX_DEPTH`` stays a closure call (Python
limits the nesting of blocks).

>>> from vigie.engine.expressions import ClosureBuilder, Scope
>>> from vigie.engine.runtime import CodeSets
>>> builder = ClosureBuilder(Scope(CodeSets({}), frozenset(), frozenset()))
>>> fn = compile_function(builder, {"op": "or", "type": "bool", "args": [
...     {"op": "const", "type": "bool", "value": None, "args": []},
...     {"op": "const", "type": "bool", "value": True, "args": []}]}, "demo", "condition")
>>> fn(None)
True
>>> print(fn.source.splitlines()[0])
def condition(ctx):  # demo
"""

from __future__ import annotations

import functools
import itertools
import linecache
import weakref
from collections.abc import Callable, Mapping
from types import CodeType
from typing import Any

from vigie.engine.derived import Amount
from vigie.engine.errors import PackError
from vigie.engine.expressions import (
    _MISSING,
    ClosureBuilder,
    _amount_capable,
    _fail,
    _record_threshold,
    _threshold_shape,
)
from vigie.engine.runtime import MEASURE_ATTRS, ORDER_ATTRS, QUALITATIVE_TEXT

__all__ = [
    "MAX_DEPTH",
    "compile_function",
    "compile_message",
    "function_source",
    "release_sources",
]

MAX_DEPTH = 40  # indentation levels of generated code before a subtree stays a closure

_OPERATORS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
_MEASURE_FIELDS = {"value": "value", "time": "time", "unit": "unit"}
_ORDER_FIELDS = {
    "start": "start",
    "end": "end",
    "route": "route",
    "order_id": "order_id",
    "atc": "atc",
    "frequency": "frequency_per_day",
}
_SHARED: dict[str, Any] = {
    "_MISSING": _MISSING,
    "Amount": Amount,
    "QUALITATIVE_TEXT": QUALITATIVE_TEXT,
    "_fail": _fail,
    "_record_threshold": _record_threshold,
}
_serial = itertools.count()  # distinct file names for linecache
# The linecache entries of generated functions since collected, removed at the next
# registration: the collector may run inside ``linecache.checkcache``, which reads every key it
# listed before and fails on one removed meanwhile.
_released: list[str] = []


def release_sources() -> None:
    """Remove the linecache entries of the generated functions collected since (done at each
    registration: a service reloading packs does not accumulate sources)."""
    while _released:
        linecache.cache.pop(_released.pop(), None)


def compile_function(
    builder: ClosureBuilder,
    node: Mapping[str, Any],
    rule_id: str,
    name: str,
    label: str | None = None,
) -> Any:
    """The function computing ``node`` (a value binding's expression with its ``label``, a
    condition...), as a Python function with a ``source`` attribute."""
    writer = _Writer(builder)
    result = writer.value(node, 1, label)
    if writer.only_closure is not None:  # a query alone: the closure itself, no wrapper
        return writer.only_closure
    return writer.finish(name, rule_id, result)


def compile_message(
    builder: ClosureBuilder, node: Mapping[str, Any], rule_id: str, name: str = "placeholder"
) -> Any:
    """A message placeholder as ``ClosureBuilder.message`` reads it: ``{k}`` of a lab result
    shows its number, or ``positif``/``négatif`` for a qualitative result without one."""
    (arg,) = node.get("args") or [{}]
    if node.get("op") != "attr" or node.get("name") != "value" or arg.get("type") != "lab":
        return compile_function(builder, node, rule_id, name)
    writer = _Writer(builder)
    fact = writer.value(arg, 1, None)
    out = writer.temp()
    writer.emit(1, f"if {fact} is None:")
    writer.emit(2, f"{out} = None")
    reading = f"getattr({fact}, 'qualitative', None)"
    writer.emit(1, f"elif {fact}.value is None and {reading} is not None:")
    writer.emit(2, f"{out} = QUALITATIVE_TEXT[{fact}.qualitative]")
    writer.emit(1, "else:")
    writer.emit(2, f"{out} = {fact}.value")
    return writer.finish(name, rule_id, out)


class _Writer:
    """Statements of one function: each node's value goes to a fresh local (``v1``, ``v2``...);
    constants, nodes and closures the code refers to are the function's globals."""

    def __init__(self, builder: ClosureBuilder) -> None:
        self.builder = builder
        self.lines: list[str] = []
        self.names: dict[str, Any] = dict(_SHARED)
        self.counts: dict[str, int] = {}
        self.locals = 0
        self.constants: set[str] = set()  # names of constants, never None

    @property
    def only_closure(self) -> Any:
        """The closure the whole function calls, when that is all it does."""
        if len(self.lines) == 1 and list(self.counts) == ["_q"] and self.counts["_q"] == 0:
            return self.names["_q0"]
        return None

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def temp(self) -> str:
        self.locals += 1
        return f"v{self.locals}"

    def refer(self, prefix: str, value: Any) -> str:
        number = self.counts[prefix] = self.counts.get(prefix, -1) + 1
        name = f"{prefix}{number}"
        self.names[name] = value
        return name

    def finish(self, name: str, rule_id: str, result: str) -> Any:
        body = [f"def {name}(ctx):", *self.lines, f"    return {result}"]
        code = _compiled("\n".join(body) + "\n")
        namespace = dict(self.names)
        exec(code, namespace)  # our own generated source, from a checked IR
        function = namespace.pop(name)  # its globals need not hold it: no cycle
        source = "\n".join([f"{body[0]}  # {rule_id}", *body[1:]]) + "\n"
        filename = f"<vigie rule {rule_id} {name} #{next(_serial)}>"
        function.__code__ = function.__code__.replace(co_filename=filename)
        function.source = source
        release_sources()
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        weakref.finalize(function, _released.append, filename)  # removed at the next one
        return function

    # Nodes

    def value(self, node: Mapping[str, Any], depth: int, label: str | None = None) -> str:
        """Emit the statements computing ``node`` at ``depth``; the local holding its value.
        Queries stay closures (built with ``label``, the name their evidence carries); the
        nodes written here never read a label."""
        op = node.get("op")
        method: Callable[[Mapping[str, Any], int], str] | None = getattr(self, f"_op_{op}", None)
        if method is None or depth > MAX_DEPTH or self._amounts(node):
            return self._closure(node, depth, label)
        return method(node, depth)

    def _amounts(self, node: Mapping[str, Any]) -> bool:
        """Comparisons involving drug amounts keep the closure (``compare_amounts``)."""
        op = node.get("op")
        if op not in _OPERATORS and op != "between":
            return False
        return any(_amount_capable(arg) for arg in node.get("args") or ())

    def _closure(self, node: Mapping[str, Any], depth: int, label: str | None) -> str:
        fn = self.refer("_q", self.builder.build(node, label))
        out = self.temp()
        self.emit(depth, f"{out} = {fn}(ctx)  # {node.get('op')}")
        return out

    def _op_const(self, node: Mapping[str, Any], depth: int) -> str:
        value = node["value"]
        if node["type"] == "number":
            value = float(value)
        if value is None or isinstance(value, bool):
            return repr(value)
        name = self.refer("_k", value)
        self.constants.add(name)
        return name

    def _op_param(self, node: Mapping[str, Any], depth: int) -> str:
        name = node["name"]
        if name not in self.builder.scope.params:
            raise PackError(f"unknown parameter {name!r} at {node.get('span')}")
        out = self.temp()
        self.emit(depth, f"{out} = ctx.params[{name!r}]")
        return out

    def _op_now(self, node: Mapping[str, Any], depth: int) -> str:
        out = self.temp()
        self.emit(depth, f"{out} = ctx.as_of")
        return out

    def _op_var(self, node: Mapping[str, Any], depth: int) -> str:
        name = node["name"]
        scope = self.builder.scope
        out = self.temp()
        if name in scope.drugs:
            self.emit(depth, f"{out} = ctx.bound[{name!r}]")
            return out
        if name not in scope.values:
            raise PackError(f"unknown name {name!r} at {node.get('span')}")
        expr, combo = scope.values[name]
        fn = self.refer("_b", expr)
        cache = "ctx.combo_values" if combo else "ctx.values"
        self.emit(depth, f"{out} = {cache}.get({name!r}, _MISSING)")
        self.emit(depth, f"if {out} is _MISSING:")
        self.emit(depth + 1, f"{out} = {cache}[{name!r}] = {fn}(ctx)")
        return out

    def _op_attr(self, node: Mapping[str, Any], depth: int) -> str:
        (arg,) = node["args"]
        name = node["name"]
        order = arg["type"] == "order"
        getter = (ORDER_ATTRS if order else MEASURE_ATTRS).get(name)
        if getter is None:
            raise PackError(f"unknown attribute {name!r} of {arg['type']} at {node.get('span')}")
        x = self.value(arg, depth)
        field = (_ORDER_FIELDS if order else _MEASURE_FIELDS).get(name)
        read = f"{x}.{field}" if field else f"{self.refer('_g', getter)}(ctx, {x})"
        out = self.temp()
        self.emit(depth, f"{out} = None if {x} is None else {read}")
        return out

    # Logic

    def _op_and(self, node: Mapping[str, Any], depth: int) -> str:
        return self._kleene(node, depth, "False", "True")

    def _op_or(self, node: Mapping[str, Any], depth: int) -> str:
        return self._kleene(node, depth, "True", "False")

    def _kleene(self, node: Mapping[str, Any], depth: int, decisive: str, neutral: str) -> str:
        """``and`` (decisive False) or ``or`` (decisive True): arguments in order until a
        decisive one; otherwise unknown if one was, else the neutral value."""
        out, unknown = self.temp(), self.temp()
        args = list(node.get("args", ()))
        self.emit(depth, f"{unknown} = False")
        level = depth
        for arg in args:
            v = self.value(arg, level)
            self.emit(level, f"if {v} is {decisive}:")
            self.emit(level + 1, f"{out} = {decisive}")
            self.emit(level, "else:")
            self.emit(level + 1, f"if {v} is None:")
            self.emit(level + 2, f"{unknown} = True")
            level += 1
        self.emit(level, f"{out} = None if {unknown} else {neutral}")
        return out

    def _op_not(self, node: Mapping[str, Any], depth: int) -> str:
        (arg,) = node["args"]
        x = self.value(arg, depth)
        out = self.temp()
        self.emit(depth, f"{out} = None if {x} is None else not {x}")
        return out

    def _op_known(self, node: Mapping[str, Any], depth: int) -> str:
        (arg,) = node["args"]
        x = self.value(arg, depth)
        out = self.temp()
        self.emit(
            depth,
            f"{out} = {x} is not None and not (isinstance({x}, Amount) and {x}.lower_bound)",
        )
        return out

    def _op_otherwise(self, node: Mapping[str, Any], depth: int) -> str:
        first, second = node["args"]
        x = self.value(first, depth)
        out = self.temp()
        self.emit(depth, f"if {x} is None:")
        y = self.value(second, depth + 1)
        self.emit(depth + 1, f"{out} = {y}")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{out} = {x}")
        return out

    # Comparisons

    def _compare(self, node: Mapping[str, Any], depth: int) -> str:
        left, right = node["args"]
        out = self.temp()
        x = self.value(left, depth)
        self.emit(depth, f"if {x} is None:")
        self.emit(depth + 1, f"{out} = None")
        self.emit(depth, "else:")
        y = self.value(right, depth + 1)
        inner = depth + 1
        if y not in self.constants:  # a constant is never unknown
            self.emit(depth + 1, f"if {y} is None:")
            self.emit(depth + 2, f"{out} = None")
            self.emit(depth + 1, "else:")
            inner += 1
        self._guarded(node, inner, f"{out} = {x} {_OPERATORS[node['op']]} {y}")
        shape = _threshold_shape(node)
        if shape is not None:
            recorded = self.refer("_s", shape)
            self.emit(inner, f"if {out} is True and ctx.thresholds is not None:")
            self.emit(inner + 1, f"_record_threshold(ctx, {recorded}, {x}, {y})")
        return out

    _op_lt = _op_le = _op_gt = _op_ge = _op_eq = _op_ne = _compare

    def _guarded(self, node: Mapping[str, Any], depth: int, statement: str) -> None:
        """A statement whose ``TypeError`` is the located error the closures raise."""
        where = self.refer("_n", node)
        self.emit(depth, "try:")
        self.emit(depth + 1, statement)
        self.emit(depth, "except TypeError as error:")
        self.emit(depth + 1, f"raise _fail({where}, error) from error")

    def _op_between(self, node: Mapping[str, Any], depth: int) -> str:
        x, low, high = (self.value(arg, depth) for arg in node["args"])
        out = self.temp()
        self.emit(depth, f"if {x} is None or {low} is None or {high} is None:")
        self.emit(depth + 1, f"{out} = None")
        self.emit(depth, "else:")
        self._guarded(node, depth + 1, f"{out} = bool({low} <= {x} < {high})")
        return out

    def _op_convert(self, node: Mapping[str, Any], depth: int) -> str:
        (arg,) = node["args"]
        factor = self.refer("_k", float(node["factor"]))
        x = self.value(arg, depth)
        out = self.temp()
        self.emit(depth, f"if {x} is None:")
        self.emit(depth + 1, f"{out} = None")
        self.emit(depth, f"elif isinstance({x}, Amount):")
        self.emit(depth + 1, f"{out} = None if {x}.lower_bound else {x}.value * {factor}")
        self.emit(depth, "else:")
        self.emit(depth + 1, f"{out} = {x} * {factor}")
        return out

    def _op_qualitative(self, node: Mapping[str, Any], depth: int) -> str:
        (arg,) = node["args"]
        wanted = self.refer("_k", node["result"])
        x = self.value(arg, depth)
        found, out = self.temp(), self.temp()
        self.emit(depth, f"{found} = None if {x} is None else getattr({x}, 'qualitative', None)")
        self.emit(depth, f"{out} = None if {found} is None else {found} == {wanted}")
        return out


@functools.lru_cache(maxsize=4096)
def _compiled(source: str) -> CodeType:
    """Compiled once per distinct source: the rules of a pack of interactions share a few
    shapes (their sets and constants are globals, not text)."""
    return compile(source, "<vigie rule>", "exec")


def function_source(fn: Any, name: str) -> str:
    """The generated source of a rule's part, or a line saying it is a query's closure."""
    source = getattr(fn, "source", None)
    if isinstance(source, str):
        return source
    return f"{name} = {getattr(fn, '__qualname__', 'closure')}  # a query's closure\n"
