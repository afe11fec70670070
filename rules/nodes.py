"""The syntax tree of a rule pack: small frozen dataclasses whose fields are their children.

Every node carries a ``span`` (file, line, column, end line, end column; 1-based, end column
exclusive) that equality ignores, so two trees parsed from differently laid-out text compare
equal. ``dump`` turns a tree into plain data for golden files.

>>> Name("k") == Name("k", span=Span("a.rules", 3, 5, 3, 6))
True
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

__all__ = [
    "NO_SPAN",
    "AnyDrug",
    "Arith",
    "Attribute",
    "Between",
    "BindDrug",
    "Binding",
    "BoolOp",
    "Call",
    "Clause",
    "Code",
    "Compare",
    "CountDrugs",
    "DailyDose",
    "Decl",
    "DefineDecl",
    "EscalateClause",
    "Expr",
    "Guard",
    "HasAllergy",
    "HasCondition",
    "HasPregnancy",
    "Ident",
    "InlineSet",
    "InterventionClause",
    "Known",
    "LabQuery",
    "LevelClause",
    "Member",
    "Name",
    "Negate",
    "Node",
    "Not",
    "Otherwise",
    "Pack",
    "PackHeader",
    "ParamDecl",
    "Placeholder",
    "ProblemClause",
    "Qualitative",
    "Quantity",
    "ReferenceClause",
    "RuleDecl",
    "SayClause",
    "SetDecl",
    "SetItem",
    "SetName",
    "SetRef",
    "SeverityClause",
    "Span",
    "Statement",
    "Text",
    "TextPart",
    "VersionClause",
    "WhenClause",
    "Window",
    "Windowed",
    "dump",
]


# A field added after the golden dumps were written: ``dump`` leaves it out at its default.
_OMIT_DEFAULT = {"omit_default": True}


@dataclass(frozen=True)
class Span:
    """A place in a pack file: 1-based line and column, end column exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def start(self) -> tuple[int, int]:
        return self.line, self.column


NO_SPAN = Span("<none>", 0, 0, 0, 0)


@dataclass(frozen=True)
class Node:
    span: Span = field(default=NO_SPAN, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Ident(Node):
    """A name where its own position matters (a lab, an attribute, a declared name)."""

    name: str


# Sets --------------------------------------------------------------------


@dataclass(frozen=True)
class Code(Node):
    """An ATC or ICD-10 code or prefix; ``last`` is set for a range ``B01AF01..B01AF03``;
    ``exact`` for ``exactly N05AX`` (that code itself, not the codes below it)."""

    text: str
    last: str | None = None
    exact: bool = field(default=False, metadata=_OMIT_DEFAULT)


@dataclass(frozen=True)
class SetName(Node):
    """A reference to a declared set (or, in a route list, possibly a route)."""

    name: str


SetItem = Code | SetName


@dataclass(frozen=True)
class InlineSet(Node):
    """A set body: ``atc C09A, C09B except C09AA01`` or ``route oral, iv``; a declared ATC
    set may keep only some routes (``atc J01GB route iv, im``: ``routes``)."""

    system: Literal["atc", "icd10", "route"]
    items: tuple[SetItem, ...]
    excepts: tuple[SetItem, ...] = ()
    routes: tuple[Ident, ...] | None = field(default=None, metadata=_OMIT_DEFAULT)


SetRef = SetName | InlineSet


# Expressions --------------------------------------------------------------------


@dataclass(frozen=True)
class Quantity(Node):
    """A number with an optional unit, kept as written (``1.2`` ``mg/dL``)."""

    number: str
    unit: str | None = None


@dataclass(frozen=True)
class Text(Node):
    value: str


@dataclass(frozen=True)
class Name(Node):
    name: str


@dataclass(frozen=True)
class Windowed(Node):
    """A derived value over a window: ``clearance within 7 d``."""

    name: str
    within: Expr


@dataclass(frozen=True)
class Call(Node):
    """A parameterised definition applied to drug bindings: ``curative_heparin(h)``."""

    name: str
    args: tuple[Ident, ...]


@dataclass(frozen=True)
class Attribute(Node):
    target: Expr
    name: Ident


@dataclass(frozen=True)
class Not(Node):
    operand: Expr


@dataclass(frozen=True)
class Known(Node):
    operand: Expr


@dataclass(frozen=True)
class Negate(Node):
    operand: Expr


@dataclass(frozen=True)
class BoolOp(Node):
    op: Literal["and", "or"]
    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Compare(Node):
    op: Literal["<", "<=", ">", ">=", "==", "!="]
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Between(Node):
    """``value in low .. high``: low <= value < high."""

    value: Expr
    low: Expr
    high: Expr


@dataclass(frozen=True)
class Member(Node):
    """``d in pregabalin``: the right side is a set name (checked later) or an inline set."""

    value: Expr
    target: Expr | InlineSet


@dataclass(frozen=True)
class Qualitative(Node):
    """``latest hcg is positive``: a lab result read as positive or negative."""

    value: Expr
    result: Literal["positive", "negative"]


@dataclass(frozen=True)
class Arith(Node):
    op: Literal["+", "-", "*", "/"]
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Otherwise(Node):
    """``x otherwise y``: y when x is unknown."""

    value: Expr
    fallback: Expr


@dataclass(frozen=True)
class Window(Node):
    """``within D``, ``since T``, either one ``before T``, or ``before T`` alone."""

    within: Expr | None = None
    since: Expr | None = None
    before: Expr | None = None


@dataclass(frozen=True)
class BindDrug(Node):
    """``active drug in S route R``: only valid as the value of a binding."""

    set: SetRef | None
    routes: tuple[Ident, ...] | None


@dataclass(frozen=True)
class AnyDrug(Node):
    set: SetRef | None
    routes: tuple[Ident, ...] | None


@dataclass(frozen=True)
class CountDrugs(Node):
    set: SetRef | None
    routes: tuple[Ident, ...] | None


@dataclass(frozen=True)
class LabQuery(Node):
    """``latest|first|min|max|count|no LAB [window]``."""

    select: Literal["latest", "first", "min", "max", "count", "no"]
    concept: Ident
    window: Window | None


@dataclass(frozen=True)
class HasCondition(Node):
    set: SetRef
    active_only: bool
    window: Window | None


@dataclass(frozen=True)
class HasAllergy(Node):
    drug: Ident


@dataclass(frozen=True)
class HasPregnancy(Node):
    window: Window | None


@dataclass(frozen=True)
class DailyDose(Node):
    set: SetRef


Expr = (
    Quantity
    | Text
    | Name
    | Windowed
    | Call
    | Attribute
    | Not
    | Known
    | Negate
    | BoolOp
    | Compare
    | Between
    | Member
    | Qualitative
    | Arith
    | Otherwise
    | BindDrug
    | AnyDrug
    | CountDrugs
    | LabQuery
    | HasCondition
    | HasAllergy
    | HasPregnancy
    | DailyDose
)


# Rules --------------------------------------------------------------------


@dataclass(frozen=True)
class Binding(Node):
    name: Ident
    value: Expr


@dataclass(frozen=True)
class Guard(Node):
    """A ``when`` line that must hold (``k > k_max``); not a clinical condition (diagnosis),
    which is ``HasCondition``."""

    expr: Expr


Statement = Binding | Guard


@dataclass(frozen=True)
class TextPart(Node):
    text: str


@dataclass(frozen=True)
class Placeholder(Node):
    """``{k}`` or ``{k.time}`` in a message; the span points inside the string."""

    path: tuple[str, ...]


@dataclass(frozen=True)
class VersionClause(Node):
    number: str


@dataclass(frozen=True)
class ProblemClause(Node):
    code: str


@dataclass(frozen=True)
class InterventionClause(Node):
    code: str


@dataclass(frozen=True)
class SeverityClause(Node):
    severity: Ident


@dataclass(frozen=True)
class LevelClause(Node):
    number: str


@dataclass(frozen=True)
class ReferenceClause(Node):
    text: str


@dataclass(frozen=True)
class SayClause(Node):
    parts: tuple[TextPart | Placeholder, ...]


@dataclass(frozen=True)
class EscalateClause(Node):
    severity: Ident
    condition: Expr


@dataclass(frozen=True)
class WhenClause(Node):
    statements: tuple[Statement, ...]


Clause = (
    VersionClause
    | ProblemClause
    | InterventionClause
    | SeverityClause
    | LevelClause
    | ReferenceClause
    | SayClause
    | EscalateClause
    | WhenClause
)


# Declarations --------------------------------------------------------------------


@dataclass(frozen=True)
class PackHeader(Node):
    name: str
    version: str


@dataclass(frozen=True)
class SetDecl(Node):
    name: Ident
    body: InlineSet


@dataclass(frozen=True)
class ParamDecl(Node):
    name: Ident
    default: Quantity
    low: Quantity
    high: Quantity
    label: str | None = None


@dataclass(frozen=True)
class DefineDecl(Node):
    name: Ident
    params: tuple[Ident, ...]
    body: Expr


@dataclass(frozen=True)
class RuleDecl(Node):
    rule_id: Ident
    title: str | None
    clauses: tuple[Clause, ...]


Decl = PackHeader | SetDecl | ParamDecl | DefineDecl | RuleDecl


@dataclass(frozen=True)
class Pack(Node):
    decls: tuple[Decl, ...]


JSONValue = None | bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"]


def dump(node: object, *, spans: bool = True) -> JSONValue:
    """Plain data for a tree: ``{"node": class name, field: value..., "at": "l:c-el:ec"}``."""
    if isinstance(node, Node):
        out: dict[str, JSONValue] = {"node": type(node).__name__}
        for f in fields(node):
            value = getattr(node, f.name)
            if f.name == "span" or (f.metadata.get("omit_default") and value == f.default):
                continue
            out[f.name] = dump(value, spans=spans)
        if spans:
            s = node.span
            out["at"] = f"{s.line}:{s.column}-{s.end_line}:{s.end_column}"
        return out
    if isinstance(node, tuple | list):
        return [dump(item, spans=spans) for item in node]
    if node is None or isinstance(node, bool | int | float | str):
        return node
    raise TypeError(f"cannot dump {type(node).__name__}")
