"""The IR's schema: the contract between the rule language (which writes the IR) and the engine
(which loads it), as ``docs/rules-design.md`` ("IR") specifies it.

A leaf module: it imports nothing of the project (no parser, no lark, no engine), so that the
producer (``vigie.rules.ir``) types what it writes with it and the consumer
(``vigie.engine.load``) checks what it reads. ``ir_adapter()`` is pydantic's validator over
these TypedDicts; unknown keys are refused, so a misspelt field is found where it is read.

>>> from pydantic import ValidationError
>>> ir = {"ir_version": 1, "pack": {"name": "demo", "version": "1.0.0", "file": "demo.rules",
...       "sha256": "0"}, "sets": {}, "params": {}, "rules": []}
>>> ir_adapter().validate_python(ir)["pack"]["name"]
'demo'
>>> ir["sets"] = {"acei": {"system": "atc", "terms": [], "source": {"file": "demo.rules"}}}
>>> try:
...     ir_adapter().validate_python(ir)
... except ValidationError as error:
...     print(json_path(ir, error.errors()[0]["loc"]), error.errors()[0]["msg"])
sets.acei.source.line Field required
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Annotated, Any, Final, Literal, NotRequired, TypeAlias, get_args

from annotated_types import Len
from pydantic import ConfigDict, Discriminator, Field, Tag, TypeAdapter, with_config
from typing_extensions import TypedDict

__all__ = [
    "EXPRESSION_OPS",
    "IR",
    "IR_VERSION",
    "Binding",
    "CodeSet",
    "CodedValue",
    "DependsOn",
    "DrugBinding",
    "Escalation",
    "Expr",
    "MessageExpr",
    "MessagePart",
    "MessageText",
    "PackHeader",
    "Param",
    "Rule",
    "SetSystem",
    "SetTerm",
    "SourceLine",
    "ValueBinding",
    "Window",
    "ir_adapter",
    "json_path",
]

IR_VERSION: Final = 1

_STRICT = ConfigDict(extra="forbid")

Span = Annotated[list[int], Len(2, 2)]  # [line, column] of the source
ValueType = Literal["bool", "number", "time", "order", "lab", "text", "code"]
FactKind = Literal[
    "medication_order", "lab", "observation", "patient", "condition", "allergy", "pregnancy"
]
SetSystem = Literal["atc", "icd10", "route"]
Severity = Literal["critical", "major", "moderate", "minor"]


# Expressions -------------------------------------------------------------------------------------


ConstOp = Literal["const"]
NamedOp = Literal["param", "var", "attr"]
ConvertOp = Literal["convert"]
OperatorOp = Literal[
    "and", "or", "not", "known",
    "lt", "le", "gt", "ge", "eq", "ne", "between",
    "add", "sub", "mul", "div", "neg", "otherwise",
    "has_allergy", "mme", "age", "sex", "now",
]  # fmt: skip
SetOp = Literal["in_set", "daily_dose"]
DrugQueryOp = Literal["any_drug", "count_drugs"]
WindowedOp = Literal["weight", "height", "clearance", "egfr", "has_pregnancy"]
LabOp = Literal["lab"]
LabCountOp = Literal["lab_count", "lab_none"]
QualitativeOp = Literal["qualitative"]
ConditionOp = Literal["has_condition"]
_OP_GROUPS = (ConstOp, NamedOp, ConvertOp, OperatorOp, SetOp, DrugQueryOp, WindowedOp, LabOp)
EXPRESSION_OPS = frozenset(
    op for ops in (*_OP_GROUPS, LabCountOp, ConditionOp, QualitativeOp) for op in get_args(ops)
)


class _Node(TypedDict):
    """Fields of every expression node; ``unit`` on nodes of type ``number`` or ``lab`` (the
    unit of the value, ``"1"`` for a plain number, ``None`` for a drug amount)."""

    args: list[Expr]
    span: Span
    type: ValueType
    unit: NotRequired[str | None]


@with_config(_STRICT)
class ConstNode(_Node):
    op: ConstOp
    value: float | str | bool


@with_config(_STRICT)
class NamedNode(_Node):
    """``param`` (a parameter), ``var`` (a binding), ``attr`` (an attribute of its argument)."""

    op: NamedOp
    name: str


@with_config(_STRICT)
class ConvertNode(_Node):
    op: ConvertOp
    factor: float


@with_config(_STRICT)
class OperatorNode(_Node):
    """Logic, comparisons, arithmetic, and the derived values that take no field."""

    op: OperatorOp


@with_config(_STRICT)
class SetNode(_Node):
    op: SetOp
    set: str


@with_config(_STRICT)
class DrugQueryNode(_Node):
    op: DrugQueryOp
    set: str | None
    routes: list[str] | None


@with_config(_STRICT)
class Window(TypedDict):
    """A query's time window: ``within`` seconds back, ``since`` a time, ``before`` a time."""

    within: Expr | None
    since: Expr | None
    before: Expr | None


@with_config(_STRICT)
class WindowedNode(_Node):
    """Derived values read over a window (``None``: any time)."""

    op: WindowedOp
    window: Window | None


@with_config(_STRICT)
class LabNode(_Node):
    op: LabOp
    concept: str
    fact_kind: Literal["lab", "observation"]
    select: Literal["latest", "first", "min", "max"]
    window: Window | None


@with_config(_STRICT)
class LabCountNode(_Node):
    op: LabCountOp
    concept: str
    fact_kind: Literal["lab", "observation"]
    window: Window | None


@with_config(_STRICT)
class QualitativeNode(_Node):
    """Whether its argument, a lab result, was read as ``result`` (positive or negative)."""

    op: QualitativeOp
    result: Literal["positive", "negative"]


@with_config(_STRICT)
class ConditionNode(_Node):
    op: ConditionOp
    set: str
    active_only: bool
    window: Window | None


Expr: TypeAlias = Annotated[
    ConstNode
    | NamedNode
    | ConvertNode
    | OperatorNode
    | SetNode
    | DrugQueryNode
    | WindowedNode
    | LabNode
    | LabCountNode
    | QualitativeNode
    | ConditionNode,
    Field(discriminator="op"),
]


# Pack ----------------------------------------------------------------------------------------


@with_config(_STRICT)
class SourceLine(TypedDict):
    file: str
    line: int


@with_config(_STRICT)
class PackHeader(TypedDict):
    name: str
    version: str
    file: str
    sha256: str  # of the UTF-8 source text


@with_config(_STRICT)
class SetTerm(TypedDict):
    """``include``/``exclude``: code prefixes; ``exact``: codes matched only when equal
    (``exactly N05AX``); ``routes``: a drug line with a known route outside them is not in the
    set (absent: any route)."""

    include: list[str]
    exclude: list[str]
    exact: NotRequired[list[str]]
    routes: NotRequired[list[str]]


@with_config(_STRICT)
class CodeSet(TypedDict):
    system: SetSystem
    terms: list[SetTerm]
    source: SourceLine


@with_config(_STRICT)
class Param(TypedDict):
    """A cursor: ``value``, ``min``, ``max`` in ``unit`` (``None`` with ``dimension`` for a
    plain number); a site may move ``value`` inside the range."""

    value: float
    unit: str | None
    dimension: str | None
    min: float
    max: float
    label: str | None
    source: SourceLine


# Rules ---------------------------------------------------------------------------------------


@with_config(_STRICT)
class CodedValue(TypedDict):
    code: str
    display: str


@with_config(_STRICT)
class DependsOn(TypedDict):
    kinds: list[FactKind]
    concepts: list[str]


@with_config(_STRICT)
class DrugBinding(TypedDict):
    name: str
    kind: Literal["drug"]
    set: str | None
    routes: list[str] | None
    span: Span


@with_config(_STRICT)
class ValueBinding(TypedDict):
    name: str
    kind: Literal["value"]
    expr: Expr
    span: Span


Binding: TypeAlias = Annotated[DrugBinding | ValueBinding, Field(discriminator="kind")]


@with_config(_STRICT)
class Escalation(TypedDict):
    severity: Severity
    condition: Expr


@with_config(_STRICT)
class MessageText(TypedDict):
    text: str


@with_config(_STRICT)
class MessageExpr(TypedDict):
    expr: Expr


def _message_part_tag(part: Any) -> str | None:
    if isinstance(part, Mapping):
        return "message_expr" if "expr" in part else "message_text"
    return None


MessagePart: TypeAlias = Annotated[
    Annotated[MessageText, Tag("message_text")] | Annotated[MessageExpr, Tag("message_expr")],
    Discriminator(_message_part_tag),
]


@with_config(_STRICT)
class Rule(TypedDict):
    id: str
    version: int
    title: str
    severity: Severity
    level: int
    reference: str | None
    problem: CodedValue  # SFPC problem code
    intervention: CodedValue  # SFPC intervention code
    source: SourceLine
    depends_on: DependsOn
    bindings: list[Binding]
    condition: Expr
    escalations: list[Escalation]
    message: list[MessagePart]


@with_config(_STRICT)
class IR(TypedDict):
    """A compiled pack, as ``vigie.rules.compile_pack`` writes it and the engine loads it."""

    ir_version: Literal[1]  # IR_VERSION
    pack: PackHeader
    sets: dict[str, CodeSet]
    params: dict[str, Param]
    rules: list[Rule]


@cache
def ir_adapter() -> TypeAdapter[IR]:
    """The validator of a whole IR (built on first use: a few milliseconds)."""
    return TypeAdapter(IR)


def json_path(document: Any, loc: Sequence[int | str]) -> str:
    """The place of a validation error in the document, as ``rules[3].condition.args[0]``.

    Pydantic's ``loc`` also holds the tags of the unions it went through (an ``op`` or binding
    ``kind``); walking the document tells them from keys. A key absent from the document (a
    missing field) ends the path.
    """
    path = ""
    node: Any = document
    for index, step in enumerate(loc):
        if isinstance(node, Sequence) and not isinstance(node, str) and isinstance(step, int):
            path += f"[{step}]"
            node = node[step] if 0 <= step < len(node) else None
        elif isinstance(node, Mapping) and step in node:
            path += f".{step}" if path else str(step)
            node = node[step]
        elif index == len(loc) - 1 and isinstance(step, str) and not _is_tag(node, step):
            path += f".{step}" if path else step
        # anything else is a union tag: not a step in the document
    return path or "<root>"


def _is_tag(node: Any, step: str) -> bool:
    return isinstance(node, Mapping) and step in (node.get("op"), node.get("kind"))
