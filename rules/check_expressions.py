"""Type and unit checking of expressions, recording what the IR stage needs.

``ExpressionChecker`` walks one expression in a ``Scope`` (the bindings visible at that point),
reports diagnostics and fills ``Annotations``: the type of each node, the value of each literal
in the unit it is compared in (``1.2 mg/dL`` against creatinine → ``106.104 µmol/L``), the
conversion factor to apply to other expressions (a parameter in hours used as a duration in
seconds), which lab results are used as numbers, and what each name resolves to.

Annotations are keyed by ``id(node)``: the tree is alive for the whole compilation and two
equal nodes at different places (equality ignores spans) must be told apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from vigie.rules import nodes as n
from vigie.rules.concepts import Catalogue
from vigie.rules.diagnostics import Diagnostic, close_matches, error, warning
from vigie.rules.plausibility import threshold_slip
from vigie.rules.types import (
    BARE_NUMBER_CONCEPTS,
    BOOL,
    DERIVED,
    DOSE,
    DURATION,
    ERROR,
    LAB_ATTRIBUTES,
    NUMBER,
    ORDER_ATTRIBUTES,
    TEXT,
    TIME,
    WINDOWED_DERIVED,
    Kind,
    Type,
    lab_type,
    quantity,
)
from vigie.rules.units import BASE_UNITS, concept_factor, unit_factor, unit_hint, unit_info

__all__ = [
    "Annotations",
    "ExpressionChecker",
    "PackSymbols",
    "ParamInfo",
    "Resolution",
    "Scope",
    "round_constant",
]

# A drug amount (``d.daily_dose``...) compares with a mass or a number of IU, in the base unit.
_DRUG_AMOUNT_DIMENSIONS = frozenset({"mass", "international_unit"})


@dataclass(frozen=True)
class Resolution:
    kind: Literal["binding", "param", "define", "derived"]
    name: str


@dataclass
class Annotations:
    types: dict[int, Type] = field(default_factory=dict)
    literals: dict[int, tuple[float, str]] = field(default_factory=dict)
    conversions: dict[int, tuple[float, str]] = field(default_factory=dict)
    values: set[int] = field(default_factory=set)
    names: dict[int, Resolution] = field(default_factory=dict)
    set_names: dict[int, str] = field(default_factory=dict)  # set ref / member target → IR set
    routes: dict[int, tuple[str, ...]] = field(default_factory=dict)  # drug query → routes


@dataclass(frozen=True)
class ParamInfo:
    decl: n.ParamDecl
    type: Type
    value: float
    low: float
    high: float


@dataclass
class PackSymbols:
    """What declarations make visible to expressions."""

    catalogue: Catalogue
    sets: dict[str, str] = field(default_factory=dict)  # name → system
    params: dict[str, ParamInfo] = field(default_factory=dict)
    defines: dict[str, tuple[n.DefineDecl, Type]] = field(default_factory=dict)
    lost: frozenset[str] = frozenset()  # dropped by syntax error recovery: never "unknown"


@dataclass
class Scope:
    """Names bound so far in a rule (or a definition's parameters)."""

    bindings: dict[str, Type] = field(default_factory=dict)
    later: dict[str, int] = field(default_factory=dict)  # bound further down: name → line
    used: set[str] = field(default_factory=set)
    in_define: str | None = None


def round_constant(value: float) -> float:
    """Ten significant digits: conversions give 106.104, not 106.10399999999998."""
    return float(f"{value:.10g}")


SetResolver = Callable[[n.SetRef, str], "str | None"]
RouteResolver = Callable[[n.Ident], set[str]]


class ExpressionChecker:
    """Checks expressions; sets and routes are resolved through the pack checker's callbacks
    (``set_ref(ref, system)`` → the set's IR name, ``route_names(ident)`` → routes)."""

    def __init__(
        self,
        symbols: PackSymbols,
        notes: Annotations,
        report: Callable[[Diagnostic], None],
        set_ref: SetResolver,
        route_names: RouteResolver,
    ) -> None:
        self.symbols = symbols
        self.catalogue = symbols.catalogue
        self.notes = notes
        self.report = report
        self.set_ref = set_ref
        self.route_names = route_names

    # Entry points ----------------------------------------------------------------

    def expr(self, node: n.Expr, scope: Scope) -> Type:
        method = getattr(self, f"_{type(node).__name__}", None)
        result = method(node, scope) if method else self._unsupported(node)
        self.notes.types[id(node)] = result
        return result

    def value(self, node: n.Expr, scope: Scope) -> Type:
        """An expression used as a value: a lab result stands for its number."""
        result = self.expr(node, scope)
        if result.kind is Kind.LAB:
            self.notes.values.add(id(node))
            return result.as_value()
        return result

    def condition(self, node: n.Expr, scope: Scope, what: str) -> None:
        result = self.expr(node, scope)
        if result.kind not in (Kind.BOOL, Kind.ERROR):
            self._error("R030", f"{what} needs a condition; this is {result.describe()}", node)

    def binding_value(self, node: n.Expr, scope: Scope) -> Type:
        """The value of ``name = ...``: the one place ``active drug in S`` is allowed."""
        if isinstance(node, n.BindDrug):
            self._drug_filter(node, node.set, node.routes)
            self.notes.types[id(node)] = Type(Kind.ORDER)
            return Type(Kind.ORDER)
        return self.expr(node, scope)

    # Diagnostics helpers ----------------------------------------------------------------

    def _error(self, code: str, message: str, node: n.Node, hint: str | None = None) -> Type:
        self.report(error(code, message, node.span, hint))
        return ERROR

    def _unsupported(self, node: n.Node) -> Type:
        return self._error("R030", f"{type(node).__name__} is not an expression", node)

    def _hint(self, word: str, candidates: Mapping[str, str], kind: str = "") -> str | None:
        found = close_matches(word, candidates)
        if not found:
            return None
        return f"did you mean {kind}{' ' if kind else ''}'{found[0]}'?"

    # Literals and names ----------------------------------------------------------------

    def _Quantity(self, node: n.Quantity, scope: Scope) -> Type:
        number = float(node.number)
        if node.unit is None:
            self.notes.literals[id(node)] = (number, "1")
            return Type(Kind.QUANTITY, "ratio", "1", None, bare=True)
        info = unit_info(node.unit, self.catalogue)
        if info is not None:
            self.notes.literals[id(node)] = (number, info.symbol)
            return quantity(info.dimension, info.symbol)
        spelling = self.catalogue.spelling(node.unit)
        if any(spelling == key[1] for key in self.catalogue.conversions):
            # A unit only the per-concept table knows (mEq/L): usable against that concept.
            self.notes.literals[id(node)] = (number, spelling)
            return quantity(None, spelling)
        hint = unit_hint(node.unit, self.catalogue)
        return self._error("R032", f"unknown unit '{node.unit}'", node, hint)

    def _Text(self, node: n.Text, scope: Scope) -> Type:
        return TEXT

    def _Name(self, node: n.Name, scope: Scope) -> Type:
        name = node.name
        if name in scope.bindings:
            scope.used.add(name)
            self.notes.names[id(node)] = Resolution("binding", name)
            return scope.bindings[name]
        if name in self.symbols.params:
            self.notes.names[id(node)] = Resolution("param", name)
            return self.symbols.params[name].type
        if name in self.symbols.defines:
            decl, result = self.symbols.defines[name]
            self.notes.names[id(node)] = Resolution("define", name)
            if decl.params:
                args = ", ".join(p.name for p in decl.params)
                hint = f"write `{name}({args})` with drug bindings"
                return self._error("R018", f"'{name}' needs arguments", node, hint)
            return result
        if name in DERIVED:
            self.notes.names[id(node)] = Resolution("derived", name)
            return DERIVED[name]
        return self._unknown_name(node, name, scope)

    def _unknown_name(self, node: n.Node, name: str, scope: Scope) -> Type:
        if name in self.symbols.lost:
            return ERROR
        hint: str | None
        if name in scope.later:
            hint = f"'{name}' is bound later, on line {scope.later[name]}; bind it first"
        elif name in self.catalogue.concepts:
            hint = f"'{name}' is a lab: write `latest {name} within 48 h`"
        elif scope.in_define and name not in scope.bindings:
            hint = self._name_hint(name, scope) or (
                "a definition sees parameters, other definitions and derived values, not a "
                "rule's bindings; pass drug lines as arguments"
            )
        else:
            hint = self._name_hint(name, scope)
        return self._error("R010", f"unknown name '{name}'", node, hint)

    def _name_hint(self, name: str, scope: Scope) -> str | None:
        kinds: dict[str, str] = {}
        for candidate in DERIVED:
            kinds[candidate] = "derived value"
        for candidate in self.symbols.defines:
            kinds[candidate] = "definition"
        for candidate in self.symbols.params:
            kinds[candidate] = "parameter"
        for candidate in scope.bindings:
            kinds[candidate] = "binding"
        found = close_matches(name, {k: k for k in kinds})
        return f"did you mean the {kinds[found[0]]} '{found[0]}'?" if found else None

    def _Windowed(self, node: n.Windowed, scope: Scope) -> Type:
        if node.name not in DERIVED:
            return self._unknown_name(node, node.name, scope)
        self.notes.names[id(node)] = Resolution("derived", node.name)
        self._expect_duration(node.within, scope)
        if node.name not in WINDOWED_DERIVED:
            allowed = ", ".join(sorted(WINDOWED_DERIVED))
            return self._error("R030", f"'{node.name}' takes no window (only {allowed} do)", node)
        return DERIVED[node.name]

    def _Call(self, node: n.Call, scope: Scope) -> Type:
        entry = self.symbols.defines.get(node.name)
        if entry is None:
            if node.name in self.symbols.lost:
                return ERROR
            hint = self._hint(node.name, {d: d for d in self.symbols.defines}, "definition")
            return self._error("R018", f"'{node.name}' is not a definition", node, hint)
        decl, result = entry
        self.notes.names[id(node)] = Resolution("define", node.name)
        if len(node.args) != len(decl.params):
            expected = len(decl.params)
            message = f"'{node.name}' takes {expected} argument(s), not {len(node.args)}"
            return self._error("R018", message, node)
        for arg in node.args:
            self._expect_order_binding(arg, scope)
        return result

    def _expect_order_binding(self, ident: n.Ident, scope: Scope) -> None:
        bound = scope.bindings.get(ident.name)
        if bound is None:
            self._unknown_name(ident, ident.name, scope)
            return
        scope.used.add(ident.name)
        if bound.kind not in (Kind.ORDER, Kind.ERROR):
            self._error("R030", f"'{ident.name}' is {bound.describe()}, not a drug line", ident)

    def _Attribute(self, node: n.Attribute, scope: Scope) -> Type:
        target = self.expr(node.target, scope)
        name = node.name.name
        if target.kind is Kind.ERROR:
            return ERROR
        if target.kind is Kind.ORDER:
            if name in ORDER_ATTRIBUTES:
                return ORDER_ATTRIBUTES[name]
            hint = self._hint(name, {a: a for a in ORDER_ATTRIBUTES})
            return self._error("R013", f"a drug line has no attribute '{name}'", node.name, hint)
        if target.kind is Kind.LAB:
            return self._lab_attribute(node, target)
        message = f"{target.describe()} has no attribute '{name}'"
        return self._error("R013", message, node.name)

    def _lab_attribute(self, node: n.Attribute, target: Type) -> Type:
        name = node.name.name
        if name in ("value", "high", "low"):
            return target.as_value()
        if name == "time":
            return TIME
        if name == "unit":
            return TEXT
        hint = self._hint(name, {a: a for a in LAB_ATTRIBUTES})
        return self._error("R013", f"a lab result has no attribute '{name}'", node.name, hint)

    # Logic ----------------------------------------------------------------

    def _Not(self, node: n.Not, scope: Scope) -> Type:
        self.condition(node.operand, scope, "`not`")
        return BOOL

    def _Known(self, node: n.Known, scope: Scope) -> Type:
        self.expr(node.operand, scope)
        return BOOL

    def _BoolOp(self, node: n.BoolOp, scope: Scope) -> Type:
        for operand in node.operands:
            self.condition(operand, scope, f"`{node.op}`")
        return BOOL

    def _Compare(self, node: n.Compare, scope: Scope) -> Type:
        left = self.value(node.left, scope)
        right = self.value(node.right, scope)
        if Kind.ERROR in (left.kind, right.kind):
            return BOOL
        if left.kind is Kind.QUANTITY and right.kind is Kind.QUANTITY:
            self.unify(node.left, left, node.right, right, "compare")
        elif not _comparable(left, right, node.op):
            message = f"cannot compare {left.describe()} with {right.describe()}"
            self._error("R030", message, node)
        return BOOL

    def _Between(self, node: n.Between, scope: Scope) -> Type:
        value = self.value(node.value, scope)
        low = self.value(node.low, scope)
        high = self.value(node.high, scope)
        if low.bare and not high.bare and isinstance(node.high, n.Quantity):
            low = self._bare_low(node, high)
        for bound_node, bound in ((node.low, low), (node.high, high)):
            if Kind.ERROR in (value.kind, bound.kind):
                continue
            if value.kind is Kind.QUANTITY and bound.kind is Kind.QUANTITY:
                self.unify(node.value, value, bound_node, bound, "compare")
            elif not value.kind is bound.kind is Kind.TIME:
                message = f"cannot compare {value.describe()} with {bound.describe()}"
                self._error("R030", message, bound_node)
        return BOOL

    def _Qualitative(self, node: n.Qualitative, scope: Scope) -> Type:
        """``latest hcg is positive``: a lab result (a query or a binding to one) of a concept
        whose results may be qualitative, read by ``latest`` or ``first`` (``min``/``max``
        compare numbers and never pick a positive or negative result)."""
        target = self.expr(node.value, scope)
        if target.kind is not Kind.ERROR:
            problem = self._qualitative_problem(node, target)
            if problem is not None:
                self._error("R030", problem[0], node.value, problem[1])
        return BOOL

    def _qualitative_problem(
        self, node: n.Qualitative, target: Type
    ) -> tuple[str, str | None] | None:
        test = f"`is {node.result}`"
        if target.kind is not Kind.LAB:
            return f"{test} needs a lab result; this is {target.describe()}", None
        concept = self.catalogue.concepts.get(target.concept or "")
        if concept is not None and not concept.qualitative:
            readable = [c.name for c in self.catalogue.concepts.values() if c.qualitative]
            message = f"{concept.name} results are numbers ({concept.unit}), never {node.result}"
            return message, f"{test} reads qualitative results: {', '.join(readable) or 'none'}"
        if isinstance(node.value, n.LabQuery) and node.value.select in ("min", "max"):
            select = node.value.select
            return f"{test} reads the latest or first result; `{select}` compares numbers", None
        return None

    def _bare_low(self, node: n.Between, high: Type) -> Type:
        """``30 .. 45 mL/min``: a low bound written without unit takes the high bound's."""
        if not isinstance(node.low, n.Quantity) or high.unit is None:
            return self.notes.types[id(node.low)]
        low = quantity(high.dimension, high.unit)
        self.notes.literals[id(node.low)] = (float(node.low.number), high.unit)
        self.notes.types[id(node.low)] = low
        return low

    def _Member(self, node: n.Member, scope: Scope) -> Type:
        value = self.expr(node.value, scope)
        system = {Kind.ORDER: "atc", Kind.CODE: "atc", Kind.TEXT: "route"}.get(value.kind)
        set_name = self._member_target(node.target, system)
        if set_name is not None:
            self.notes.set_names[id(node)] = set_name
        if value.kind is not Kind.ERROR and system is None:
            message = (
                f"`in SET` needs a drug line, an ATC code or a route; this is {value.describe()}"
            )
            self._error("R030", message, node.value)
        return BOOL

    def _member_target(self, target: n.Expr | n.InlineSet, system: str | None) -> str | None:
        if isinstance(target, n.InlineSet):
            return self.set_ref(target, system or target.system)
        if isinstance(target, n.Name):
            return self.set_ref(n.SetName(target.name, span=target.span), system or "atc")
        self._error("R030", "`in` needs a set name or `atc ...` after it", target)
        return None

    # Arithmetic ----------------------------------------------------------------

    def _Arith(self, node: n.Arith, scope: Scope) -> Type:
        left = self.value(node.left, scope)
        right = self.value(node.right, scope)
        if Kind.ERROR in (left.kind, right.kind):
            return ERROR
        if Kind.TIME in (left.kind, right.kind):
            return self._time_arith(node, left, right)
        if left.kind is not Kind.QUANTITY or right.kind is not Kind.QUANTITY:
            verb = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide"}[node.op]
            message = f"cannot {verb} {left.describe()} and {right.describe()}"
            return self._error("R030", message, node, _window_hint(node.left))
        if node.op in "+-":
            return self.unify(node.left, left, node.right, right, "add")
        return self._scale(node, left, right)

    def _scale(self, node: n.Arith, left: Type, right: Type) -> Type:
        """``*`` and ``/``: a quantity times a plain number keeps its unit; q / q is a ratio."""
        left_plain = left.dimension == "ratio" and left.concept is None
        right_plain = right.dimension == "ratio" and right.concept is None
        if right_plain:
            return left if not left.bare else NUMBER
        if left_plain and node.op == "*":
            return right
        if node.op == "/":
            result = self.unify(node.left, left, node.right, right, "divide")
            return ERROR if result.kind is Kind.ERROR else NUMBER
        message = f"cannot multiply {left.describe()} by {right.describe()}"
        return self._error("R030", message, node, "multiply by a plain number: `10 * k.high`")

    def _time_arith(self, node: n.Arith, left: Type, right: Type) -> Type:
        if left.kind is right.kind is Kind.TIME and node.op == "-":
            return DURATION
        if left.kind is Kind.TIME and self._is_duration(right) and node.op in "+-":
            self._to_seconds(node.right, right)
            return TIME
        if right.kind is Kind.TIME and self._is_duration(left) and node.op == "+":
            self._to_seconds(node.left, left)
            return TIME
        message = f"cannot {node.op} {left.describe()} and {right.describe()}"
        return self._error("R030", message, node, "a time plus or minus a duration is a time")

    def _Negate(self, node: n.Negate, scope: Scope) -> Type:
        operand = self.value(node.operand, scope)
        if operand.kind not in (Kind.QUANTITY, Kind.ERROR):
            return self._error("R030", f"cannot negate {operand.describe()}", node)
        return operand

    def _Otherwise(self, node: n.Otherwise, scope: Scope) -> Type:
        value = self.value(node.value, scope)
        fallback = self.value(node.fallback, scope)
        if Kind.ERROR in (value.kind, fallback.kind):
            return value
        if value.kind is fallback.kind is Kind.QUANTITY:
            return self.unify(node.value, value, node.fallback, fallback, "replace")
        if value.kind is not fallback.kind:
            message = (
                f"`otherwise` needs one kind of value: {value.describe()}, {fallback.describe()}"
            )
            return self._error("R030", message, node)
        return value

    # Units ----------------------------------------------------------------

    def unify(
        self, left_node: n.Expr, left: Type, right_node: n.Expr, right: Type, verb: str
    ) -> Type:
        """Bring two quantities to one unit (recording conversions); the common type."""
        if "dose" in (left.dimension, right.dimension):
            return self._unify_dose(left_node, left, right_node, right, verb)
        if left.bare and right.bare:
            return NUMBER
        if left.bare or right.bare:
            return self._unify_bare(left_node, left, right_node, right, verb)
        if self._is_duration(left) and self._is_duration(right):
            self._to_seconds(left_node, left)
            self._to_seconds(right_node, right)
            return DURATION
        target_node, target, source_node, source = self._target(left_node, left, right_node, right)
        factor = self._factor(source, target)
        if factor is None:
            target_text = self._show(target_node, target)
            message = f"cannot {verb} {target_text} with {self._show(source_node, source)}"
            if target_node is not left_node:
                message = f"cannot {verb} {self._show(left_node, left)} with {target_text}"
            return self._error("R031", message, source_node, self._unit_hint(target))
        self.convert(source_node, factor, target.unit or "1")
        if verb == "compare" and target.concept and not isinstance(target_node, n.Arith):
            self._plausible_threshold(source_node, target.concept)
        return quantity(target.dimension, target.unit, target.concept)

    def _plausible_threshold(self, node: n.Expr, concept: str) -> None:
        """R036: a threshold written (or a parameter's default) outside the lab's plausible
        range; not after arithmetic (a rise of creatinine is no creatinine level)."""
        if isinstance(node, n.Quantity):
            written = self.notes.types.get(id(node))  # `1 .. 2 mmol/L`: the low bound's unit
            number, unit = float(node.number), node.unit or (written and written.unit) or ""
        elif isinstance(node, n.Name) and node.name in self.symbols.params:
            default = self.symbols.params[node.name].decl.default
            number, unit = float(default.number), default.unit or ""
        else:
            return
        slip = threshold_slip(self.catalogue, concept, number, unit)
        if slip is not None:
            self.report(warning("R036", slip.message(), node.span, slip.hint()))

    def _target(
        self, left_node: n.Expr, left: Type, right_node: n.Expr, right: Type
    ) -> tuple[n.Expr, Type, n.Expr, Type]:
        """The side whose unit wins: a lab concept, else not a literal, else the left."""
        if right.concept and not left.concept:
            return right_node, right, left_node, left
        literal_left = isinstance(left_node, n.Quantity) and not isinstance(right_node, n.Quantity)
        if literal_left and not left.concept:
            return right_node, right, left_node, left
        return left_node, left, right_node, right

    def _factor(self, source: Type, target: Type) -> float | None:
        if source.unit is None or target.unit is None:
            return None
        if target.concept and target.concept in self.catalogue.concepts:
            return concept_factor(self.catalogue, target.concept, source.unit)
        if source.concept and source.concept in self.catalogue.concepts and source.unit:
            inverse = concept_factor(self.catalogue, source.concept, target.unit)
            return 1 / inverse if inverse else None
        if source.unit == target.unit:
            return 1.0
        return unit_factor(source.unit, target.unit, self.catalogue)

    def _unify_bare(
        self, left_node: n.Expr, left: Type, right_node: n.Expr, right: Type, verb: str
    ) -> Type:
        bare_node, other = (left_node, right) if left.bare else (right_node, left)
        if other.dimension == "ratio" or other.concept in BARE_NUMBER_CONCEPTS:
            if isinstance(bare_node, n.Quantity):
                self.notes.literals[id(bare_node)] = (float(bare_node.number), other.unit or "1")
            other_node = right_node if left.bare else left_node
            if other.concept and verb == "compare" and not isinstance(other_node, n.Arith):
                self._plausible_threshold(bare_node, other.concept)
            return quantity(other.dimension, other.unit, other.concept)
        example = f"`{bare_node.number} {other.unit}`" if isinstance(bare_node, n.Quantity) else ""
        hint = f"write {example}" if example else f"give it a unit ({other.unit})"
        if other.dimension == "duration":
            hint = "durations are written `48 h`, `7 d`, `2 w`, `9 months` or `75 years`"
        unit = other.unit if other.dimension != "duration" else "a duration unit"
        subject = other.concept or other.describe()
        message = f"a unit is needed: {subject} is in {unit}"
        return self._error("R034", message, bare_node, hint)

    def _unify_dose(
        self, left_node: n.Expr, left: Type, right_node: n.Expr, right: Type, verb: str
    ) -> Type:
        if left.dimension == right.dimension == "dose":
            return DOSE
        other_node, other = (right_node, right) if left.dimension == "dose" else (left_node, left)
        dimension = other.dimension or ""
        base = BASE_UNITS.get(dimension) if dimension in _DRUG_AMOUNT_DIMENSIONS else None
        if base is None or other.unit is None:
            if other.bare:
                message = "a unit is needed: a drug amount is compared in mg, g, µg or IU"
                return self._error("R034", message, other_node, "write e.g. `4 g` or `6000 IU`")
            message = f"cannot {verb} a drug amount with {self._show(other_node, other)}"
            return self._error("R031", message, other_node, "drug amounts are in mg, g, µg or IU")
        factor = unit_factor(other.unit, base, self.catalogue) or 1.0
        self.convert(other_node, factor, base)
        return DOSE

    def _is_duration(self, t: Type) -> bool:
        return t.kind is Kind.QUANTITY and t.dimension == "duration" and t.concept is None

    def _to_seconds(self, node: n.Expr, t: Type) -> None:
        factor = unit_factor(t.unit or "s", "s") or 1.0
        self.convert(node, factor, "s")

    def convert(self, node: n.Expr, factor: float, unit: str) -> None:
        """Record that ``node`` is used in ``unit``: literals are folded, others scaled."""
        if isinstance(node, n.Quantity) and id(node) in self.notes.literals:
            self.notes.literals[id(node)] = (round_constant(float(node.number) * factor), unit)
        elif factor != 1.0:
            self.notes.conversions[id(node)] = (round_constant(factor), unit)

    def _show(self, node: n.Expr, t: Type) -> str:
        if isinstance(node, n.Quantity):
            return f"{node.number} {node.unit}" if node.unit else node.number
        if t.concept and t.unit:
            return f"{t.concept} ({t.unit})"
        return t.describe()

    def _unit_hint(self, target: Type) -> str | None:
        if target.concept in self.catalogue.concepts:
            return f"{target.concept} is in {target.unit}"
        return f"use a unit of the same kind as {target.unit}" if target.unit else None

    def _expect_duration(self, node: n.Expr, scope: Scope) -> None:
        t = self.value(node, scope)
        if t.kind is Kind.ERROR:
            return
        if self._is_duration(t):
            self._to_seconds(node, t)
        elif t.bare:
            hint = "durations are written `48 h`, `7 d`, `2 w`, `9 months` or `75 years`"
            self._error("R034", "a unit is needed: a window is a duration", node, hint)
        else:
            self._error("R030", f"a window needs a duration; this is {t.describe()}", node)

    def _expect_time(self, node: n.Expr, scope: Scope) -> None:
        t = self.value(node, scope)
        if t.kind not in (Kind.TIME, Kind.ERROR):
            message = f"`since` and `before` need a time; this is {t.describe()}"
            self._error("R030", message, node, "e.g. `d.start`, `k.time` or `(now - 7 d)`")

    def window(self, window: n.Window | None, scope: Scope) -> None:
        if window is None:
            return
        if window.within is not None:
            self._expect_duration(window.within, scope)
        for bound in (window.since, window.before):
            if bound is not None:
                self._expect_time(bound, scope)

    # Queries ----------------------------------------------------------------

    def _BindDrug(self, node: n.BindDrug, scope: Scope) -> Type:
        self._drug_filter(node, node.set, node.routes)
        hint = "bind it (`d = active drug in …`) or test it (`any active drug in …`)"
        return self._error("R033", "`active drug in …` only binds a drug line", node, hint)

    def _AnyDrug(self, node: n.AnyDrug, scope: Scope) -> Type:
        self._drug_filter(node, node.set, node.routes)
        return BOOL

    def _CountDrugs(self, node: n.CountDrugs, scope: Scope) -> Type:
        self._drug_filter(node, node.set, node.routes)
        return NUMBER

    def _drug_filter(
        self, node: n.Node, set_ref: n.SetRef | None, routes: tuple[n.Ident, ...] | None
    ) -> None:
        if set_ref is not None:
            name = self.set_ref(set_ref, "atc")
            if name is not None:
                self.notes.set_names[id(node)] = name
        if routes is not None:
            self.notes.routes[id(node)] = self.resolve_routes(routes)

    def resolve_routes(self, routes: Iterable[n.Ident]) -> tuple[str, ...]:
        """Route names and route sets → the sorted canonical routes they stand for."""
        resolved: set[str] = set()
        for ident in routes:
            resolved |= self.route_names(ident)
        return tuple(sorted(resolved))

    def _LabQuery(self, node: n.LabQuery, scope: Scope) -> Type:
        self.window(node.window, scope)
        concept = self.catalogue.concepts.get(node.concept.name)
        if concept is None:
            hint = self._hint(node.concept.name, self.catalogue.name_spellings())
            if hint is None and node.concept.name in DERIVED:
                hint = f"'{node.concept.name}' is a derived value: use it by name"
            return self._error("R012", f"unknown lab '{node.concept.name}'", node.concept, hint)
        if node.select == "count":
            return NUMBER
        if node.select == "no":
            return BOOL
        info = unit_info(concept.unit, self.catalogue)
        return lab_type(concept.name, info.dimension if info else None, concept.unit)

    def _HasCondition(self, node: n.HasCondition, scope: Scope) -> Type:
        self.window(node.window, scope)
        name = self.set_ref(node.set, "icd10")
        if name is not None:
            self.notes.set_names[id(node)] = name
        return BOOL

    def _HasAllergy(self, node: n.HasAllergy, scope: Scope) -> Type:
        self._expect_order_binding(node.drug, scope)
        return BOOL

    def _HasPregnancy(self, node: n.HasPregnancy, scope: Scope) -> Type:
        self.window(node.window, scope)
        return BOOL

    def _DailyDose(self, node: n.DailyDose, scope: Scope) -> Type:
        name = self.set_ref(node.set, "atc")
        if name is not None:
            self.notes.set_names[id(node)] = name
        return DOSE


def _comparable(left: Type, right: Type, op: str) -> bool:
    """Times with times; texts and codes with each other, for equality only."""
    if left.kind is right.kind is Kind.TIME:
        return True
    return {left.kind, right.kind} <= {Kind.TEXT, Kind.CODE} and op in ("==", "!=")


def _window_hint(left: n.Expr) -> str | None:
    """``no inr since d.start + 3 d`` adds to the query: the bound needs brackets."""
    window = getattr(left, "window", None)
    if isinstance(left, n.Windowed) or window is not None:
        return "a window bound with arithmetic goes in brackets: `since (d.start + 3 d)`"
    return None
