"""Checked tree → the intermediate representation (IR): plain JSON data, the only thing the
evaluators read (docs/rules-design.md, section "IR", defines every node).

The IR is deterministic: no ids from memory, sets and dependency lists sorted, and
``dumps_ir`` writes sorted keys, so compiling a pack twice gives the same bytes. Definitions are
inlined (a parameterised one with its drug arguments substituted); constants are in the unit
their expression is evaluated in; every expression keeps its source ``span`` and every rule its
``source`` line and what it ``depends_on``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any, cast

from vigie.ir_schema import EXPRESSION_OPS, IR, IR_VERSION, Param, Rule, SetSystem
from vigie.ir_schema import SetTerm as IRSetTerm
from vigie.rules import nodes as n
from vigie.rules.check import INTERVENTION_CODES, PROBLEM_CODES, CheckResult, RuleInfo, SetTerm
from vigie.rules.check_expressions import Annotations
from vigie.rules.concepts import Catalogue, default_catalogue
from vigie.rules.types import DERIVED, WINDOWED_DERIVED, Kind, Type

__all__ = ["IR_OPS", "IR_VERSION", "build_ir", "dumps_ir", "iter_ir_nodes"]

# Every expression op the IR may contain (docs/rules-design.md documents each one; the schema,
# ``vigie.ir_schema``, states each one's fields).
IR_OPS = EXPRESSION_OPS
IRNode = dict[str, Any]

_COMPARISONS = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}
_ARITHMETIC = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
# What each derived value reads: (fact kind, concept or None).
_DERIVED_READS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "age": (("patient", None),),
    "sex": (("patient", None),),
    "weight": (("observation", "weight"),),
    "height": (("observation", "height"),),
    "clearance": (("patient", None), ("lab", "creatinine"), ("observation", "weight")),
    "egfr": (("patient", None), ("lab", "egfr"), ("lab", "creatinine")),
    "mme": (("medication_order", None),),
    "now": (),
}
_DRUG_OPS = {"any_drug", "count_drugs", "daily_dose"}
_FACT_OPS = {"has_condition": "condition", "has_allergy": "allergy", "has_pregnancy": "pregnancy"}


def build_ir(result: CheckResult, source: str, file: str, catalogue: Catalogue | None = None) -> IR:
    """The IR of a pack that checked without errors, in the shape of ``vigie.ir_schema.IR``."""
    if not result.ok:
        raise ValueError("build_ir needs a pack without errors")
    lowering = _Lowering(result, catalogue or default_catalogue())
    header = result.header
    return {
        "ir_version": IR_VERSION,
        "pack": {
            "name": header.name if header else "",
            "version": header.version if header else "",
            "file": file,
            "sha256": hashlib.sha256(source.encode("utf-8")).hexdigest(),
        },
        "sets": {
            name: {
                "system": cast(SetSystem, s.system),
                "terms": [_term(term) for term in s.terms],
                "source": {"file": s.span.file, "line": s.span.line},
            }
            for name, s in result.sets.items()
        },
        "params": {name: _param(info) for name, info in result.params.items()},
        "rules": [lowering.rule(rule) for rule in result.rules],
    }


def dumps_ir(ir: Mapping[str, Any]) -> str:
    """The canonical JSON text of an IR: sorted keys, UTF-8, two-space indent."""
    return json.dumps(ir, sort_keys=True, ensure_ascii=False, indent=2) + "\n"


def iter_ir_nodes(value: Any) -> Iterator[IRNode]:
    """Every expression node (a dict with ``op``) inside an IR value."""
    if isinstance(value, dict):
        if "op" in value:
            yield value
        for item in value.values():
            yield from iter_ir_nodes(item)
    elif isinstance(value, list):
        for item in value:
            yield from iter_ir_nodes(item)


def _term(term: SetTerm) -> IRSetTerm:
    """A set term; ``exact`` and ``routes`` are written only when the set has them."""
    out: IRSetTerm = {"include": list(term.include), "exclude": list(term.exclude)}
    if term.exact:
        out["exact"] = list(term.exact)
    if term.routes is not None:
        out["routes"] = list(term.routes)
    return out


def _param(info: Any) -> Param:
    decl: n.ParamDecl = info.decl
    unit = None if info.type.bare else info.type.unit
    return {
        "value": info.value,
        "unit": unit,
        "dimension": None if info.type.bare else info.type.dimension,
        "min": info.low,
        "max": info.high,
        "label": decl.label,
        "source": {"file": decl.span.file, "line": decl.span.line},
    }


class _Lowering:
    def __init__(self, result: CheckResult, catalogue: Catalogue) -> None:
        self.result = result
        self.notes: Annotations = result.notes
        self.catalogue = catalogue

    # Rules ----------------------------------------------------------------

    def rule(self, rule: RuleInfo) -> Rule:
        decl = rule.decl
        conditions = [self.expr(s.expr, {}) for s in rule.statements if isinstance(s, n.Guard)]
        out: IRNode = {
            "id": decl.rule_id.name,
            "version": rule.version,
            "title": decl.title,
            "problem": {"code": rule.problem, "display": PROBLEM_CODES[rule.problem or ""]},
            "intervention": {
                "code": rule.intervention,
                "display": INTERVENTION_CODES[rule.intervention or ""],
            },
            "severity": rule.severity,
            "level": rule.level,
            "reference": rule.reference,
            "source": {"file": decl.span.file, "line": decl.span.line},
            "bindings": [self.binding(s) for s in rule.statements if isinstance(s, n.Binding)],
            "condition": _conjunction(conditions, [decl.span.line, decl.span.column]),
            "escalations": [
                {"severity": e.severity.name, "condition": self.expr(e.condition, {})}
                for e in rule.escalations
            ],
            "message": self.message(rule),
        }
        out["depends_on"] = _depends_on(out, self.catalogue)
        return cast(Rule, out)  # expression nodes are built as dicts: the schema test checks them

    def binding(self, statement: n.Binding) -> IRNode:
        value = statement.value
        span = [statement.span.line, statement.span.column]
        if isinstance(value, n.BindDrug):
            return {
                "name": statement.name.name,
                "kind": "drug",
                "set": self.notes.set_names.get(id(value)),
                "routes": self._routes(value),
                "span": span,
            }
        return {
            "name": statement.name.name,
            "kind": "value",
            "expr": self.expr(value, {}),
            "span": span,
        }

    def message(self, rule: RuleInfo) -> list[IRNode]:
        parts: list[IRNode] = []
        for part in rule.say.parts if rule.say else ():
            if isinstance(part, n.TextPart):
                parts.append({"text": part.text})
            else:
                parts.append({"expr": self.placeholder(part, rule)})
        return parts

    def placeholder(self, part: n.Placeholder, rule: RuleInfo) -> IRNode:
        """``{k}`` is the value of k (a lab result prints its value), ``{k.time}`` an attribute."""
        name = part.path[0]
        resolution = self.notes.names[id(part)]
        head_type = rule.bindings.get(name) if resolution.kind == "binding" else None
        head = self._reference(name, resolution.kind, part, head_type, {})
        part_type = self.notes.types[id(part)]
        if len(part.path) == 2:
            return self._node("attr", part, part_type, [head], name=part.path[1])
        if head.get("type") == "lab":
            return self._node("attr", part, part_type.as_value(), [head], name="value")
        return head

    # Expressions ----------------------------------------------------------------

    def expr(self, node: n.Expr, subst: Mapping[str, str]) -> IRNode:
        """The IR of an expression; ``subst`` renames a definition's parameters."""
        method = getattr(self, f"_{type(node).__name__}")
        lowered: IRNode = method(node, subst)
        if id(node) in self.notes.values:
            value_type = self.notes.types[id(node)].as_value()
            lowered = self._node("attr", node, value_type, [lowered], name="value")
        if id(node) in self.notes.conversions:
            factor, unit = self.notes.conversions[id(node)]
            lowered = {
                "op": "convert",
                "args": [lowered],
                "factor": factor,
                "type": "number",
                "unit": unit,
                "span": lowered["span"],
            }
        return lowered

    def _node(
        self, op: str, node: n.Node, t: Type | None, args: list[IRNode], **extra: Any
    ) -> IRNode:
        out: IRNode = {"op": op, "args": args, "span": [node.span.line, node.span.column]}
        t = t or self.notes.types.get(id(node))
        if t is not None:
            out["type"] = t.kind.value
            if t.kind in (Kind.QUANTITY, Kind.LAB):
                out["unit"] = t.unit
        out.update(extra)
        return out

    def _Quantity(self, node: n.Quantity, subst: Mapping[str, str]) -> IRNode:
        value, unit = self.notes.literals[id(node)]
        t = self.notes.types[id(node)]
        return {
            "op": "const",
            "args": [],
            "value": value,
            "type": "number",
            "unit": unit if not t.bare or unit != "1" else "1",
            "span": [node.span.line, node.span.column],
        }

    def _Text(self, node: n.Text, subst: Mapping[str, str]) -> IRNode:
        return self._node("const", node, None, [], value=node.value)

    def _Name(self, node: n.Name, subst: Mapping[str, str]) -> IRNode:
        return self._name(node, subst)

    def _name(self, node: n.Name, subst: Mapping[str, str]) -> IRNode:
        resolution = self.notes.names[id(node)]
        return self._reference(
            node.name, resolution.kind, node, self.notes.types.get(id(node)), subst
        )

    def _reference(
        self, name: str, kind: str, node: n.Node, t: Type | None, subst: Mapping[str, str]
    ) -> IRNode:
        if kind == "binding":
            return self._node("var", node, t, [], name=subst.get(name, name))
        if kind == "param":
            return self._node("param", node, self.result.params[name].type, [], name=name)
        if kind == "define":
            decl, _ = self.result.defines[name]
            return self.expr(decl.body, {})
        return self._derived(name, node, None)

    def _derived(self, name: str, node: n.Node, window: IRNode | None) -> IRNode:
        extra: dict[str, Any] = {}
        if name in WINDOWED_DERIVED:
            extra["window"] = window
        return self._node(name, node, DERIVED[name], [], **extra)

    def _Windowed(self, node: n.Windowed, subst: Mapping[str, str]) -> IRNode:
        within = self.expr(node.within, subst)
        return self._derived(node.name, node, {"within": within, "since": None, "before": None})

    def _Call(self, node: n.Call, subst: Mapping[str, str]) -> IRNode:
        decl, _ = self.result.defines[node.name]
        inner = {
            p.name: subst.get(a.name, a.name) for p, a in zip(decl.params, node.args, strict=True)
        }
        return self.expr(decl.body, inner)

    def _Attribute(self, node: n.Attribute, subst: Mapping[str, str]) -> IRNode:
        target = self.expr(node.target, subst)
        return self._node("attr", node, None, [target], name=node.name.name)

    def _Not(self, node: n.Not, subst: Mapping[str, str]) -> IRNode:
        return self._node("not", node, None, [self.expr(node.operand, subst)])

    def _Known(self, node: n.Known, subst: Mapping[str, str]) -> IRNode:
        return self._node("known", node, None, [self.expr(node.operand, subst)])

    def _Negate(self, node: n.Negate, subst: Mapping[str, str]) -> IRNode:
        return self._node("neg", node, None, [self.expr(node.operand, subst)])

    def _BoolOp(self, node: n.BoolOp, subst: Mapping[str, str]) -> IRNode:
        return self._node(node.op, node, None, [self.expr(o, subst) for o in node.operands])

    def _Compare(self, node: n.Compare, subst: Mapping[str, str]) -> IRNode:
        args = [self.expr(node.left, subst), self.expr(node.right, subst)]
        return self._node(_COMPARISONS[node.op], node, None, args)

    def _Between(self, node: n.Between, subst: Mapping[str, str]) -> IRNode:
        args = [self.expr(e, subst) for e in (node.value, node.low, node.high)]
        return self._node("between", node, None, args)

    def _Member(self, node: n.Member, subst: Mapping[str, str]) -> IRNode:
        value = self.expr(node.value, subst)
        return self._node("in_set", node, None, [value], set=self.notes.set_names[id(node)])

    def _Qualitative(self, node: n.Qualitative, subst: Mapping[str, str]) -> IRNode:
        value = self.expr(node.value, subst)
        return self._node("qualitative", node, None, [value], result=node.result)

    def _Arith(self, node: n.Arith, subst: Mapping[str, str]) -> IRNode:
        args = [self.expr(node.left, subst), self.expr(node.right, subst)]
        return self._node(_ARITHMETIC[node.op], node, None, args)

    def _Otherwise(self, node: n.Otherwise, subst: Mapping[str, str]) -> IRNode:
        args = [self.expr(node.value, subst), self.expr(node.fallback, subst)]
        return self._node("otherwise", node, None, args)

    # Queries ----------------------------------------------------------------

    def _routes(self, node: n.Node) -> list[str] | None:
        routes = self.notes.routes.get(id(node))
        return list(routes) if routes is not None else None

    def _drug_query(self, op: str, node: n.AnyDrug | n.CountDrugs) -> IRNode:
        return self._node(
            op, node, None, [], set=self.notes.set_names.get(id(node)), routes=self._routes(node)
        )

    def _AnyDrug(self, node: n.AnyDrug, subst: Mapping[str, str]) -> IRNode:
        return self._drug_query("any_drug", node)

    def _CountDrugs(self, node: n.CountDrugs, subst: Mapping[str, str]) -> IRNode:
        return self._drug_query("count_drugs", node)

    def _window(self, window: n.Window | None, subst: Mapping[str, str]) -> IRNode | None:
        if window is None:
            return None
        return {
            key: self.expr(bound, subst) if bound is not None else None
            for key, bound in (
                ("within", window.within),
                ("since", window.since),
                ("before", window.before),
            )
        }

    def _LabQuery(self, node: n.LabQuery, subst: Mapping[str, str]) -> IRNode:
        concept = self.catalogue.concepts[node.concept.name]
        common = {"concept": concept.name, "fact_kind": concept.kind}
        window = self._window(node.window, subst)
        if node.select == "count":
            return self._node("lab_count", node, None, [], window=window, **common)
        if node.select == "no":
            return self._node("lab_none", node, None, [], window=window, **common)
        return self._node("lab", node, None, [], select=node.select, window=window, **common)

    def _HasCondition(self, node: n.HasCondition, subst: Mapping[str, str]) -> IRNode:
        return self._node(
            "has_condition",
            node,
            None,
            [],
            set=self.notes.set_names[id(node)],
            active_only=node.active_only,
            window=self._window(node.window, subst),
        )

    def _HasAllergy(self, node: n.HasAllergy, subst: Mapping[str, str]) -> IRNode:
        drug = node.drug
        var = {
            "op": "var",
            "args": [],
            "name": subst.get(drug.name, drug.name),
            "type": "order",
            "span": [drug.span.line, drug.span.column],
        }
        return self._node("has_allergy", node, None, [var])

    def _HasPregnancy(self, node: n.HasPregnancy, subst: Mapping[str, str]) -> IRNode:
        return self._node("has_pregnancy", node, None, [], window=self._window(node.window, subst))

    def _DailyDose(self, node: n.DailyDose, subst: Mapping[str, str]) -> IRNode:
        return self._node("daily_dose", node, None, [], set=self.notes.set_names[id(node)])


def _conjunction(conditions: list[IRNode], span: list[int]) -> IRNode:
    if not conditions:
        return {"op": "const", "args": [], "value": True, "type": "bool", "span": span}
    if len(conditions) == 1:
        return conditions[0]
    first = conditions[0]["span"]
    return {"op": "and", "args": conditions, "type": "bool", "span": first}


def _depends_on(rule: IRNode, catalogue: Catalogue) -> IRNode:
    """The fact kinds and lab/observation concepts a rule reads (for live re-evaluation)."""
    kinds: set[str] = set()
    concepts: set[str] = set()
    if any(b["kind"] == "drug" for b in rule["bindings"]):
        kinds.add("medication_order")
    for node in iter_ir_nodes(
        [rule["bindings"], rule["condition"], rule["escalations"], rule["message"]]
    ):
        op = node["op"]
        if op in ("lab", "lab_count", "lab_none"):
            kinds.add(node["fact_kind"])
            concepts.add(node["concept"])
        elif op in _DRUG_OPS:
            kinds.add("medication_order")
        elif op in _FACT_OPS:
            kinds.add(_FACT_OPS[op])
        elif op in _DERIVED_READS:
            for kind, concept in _DERIVED_READS[op]:
                kinds.add(kind)
                if concept:
                    concepts.add(concept)
        elif op == "var" and node.get("type") == "order":
            kinds.add("medication_order")
    return {"kinds": sorted(kinds), "concepts": sorted(concepts)}
