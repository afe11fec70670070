"""IR → functions: a rule pack loaded once into Python functions of an evaluation context.

Stages, each importing only earlier ones: ``vigie.engine.errors`` → ``vigie.engine.runtime``
(context, queries, code sets) → ``vigie.engine.expressions`` (expression nodes as closures) →
``vigie.engine.codegen`` (their logic as generated Python) → this module (rules, packs,
selections) → ``vigie.engine.evaluate`` (the driver). The rule language compiles text to IR
(``vigie.rules.compile_pack``); the engine loads that IR into functions (``load_pack``).

The rule language's compiler (``rules/``) and the engine meet only at the JSON IR described in
``docs/rules-design.md``; this module reads that IR (never lark, never ``rules``) and turns
each part of a rule (condition, escalations, named values, message placeholders) into a
function ``(Context) -> value`` once per pack — generated Python calling the queries' closures
(``LoadedRule.source`` shows it) — so that evaluating a patient never walks the JSON tree
again. Values follow the IR's types: ``bool`` is
``True``/``False``/``None`` (Kleene's unknown), numbers are floats (drug amounts and MME are
``vigie.engine.derived.Amount``), times naive UTC datetimes, drug lines ``MedicationOrder`` and lab
results ``LabResult``/``Observation``. ``None`` is *unknown* everywhere.

Sets become prefix indexes (an ATC code's matching sets are computed once per code and cached),
parameters take site values (``cursors``) checked against their range, and a selection picks
the rules of a sensitivity level and the site's enable/disable lists.

>>> pack = load_pack({"ir_version": 1, "pack": {"name": "demo", "version": "1.0.0",
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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from vigie.engine.alerts import CodedValue, RuleRef
from vigie.engine.codegen import compile_function, compile_message, function_source
from vigie.engine.errors import EngineError, PackError, RuleRuntimeError
from vigie.engine.expressions import ClosureBuilder, Scope, expand_routes
from vigie.engine.runtime import Closure, CodeSets
from vigie.ir_schema import IR_VERSION, ir_adapter, json_path

__all__ = [
    "CodeSets",
    "DrugBinding",
    "EngineError",
    "LoadedPack",
    "LoadedRule",
    "MessagePart",
    "PackError",
    "ParamSpec",
    "RuleRuntimeError",
    "Selection",
    "check_ir",
    "load_pack",
    "param_spec",
]

SUPPORTED_IR_VERSION = IR_VERSION


# Parameters --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParamSpec:
    name: str
    value: float
    unit: str | None
    min: float
    max: float
    label: str | None
    source: str | None = field(default=None, compare=False)  # "file:line" of the declaration

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
class LoadedRule:
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
    drug_names: tuple[str, ...]  # the bindings' names, in order (bound on every combination)
    condition: Closure
    escalations: tuple[tuple[str, Closure], ...]
    message: tuple[MessagePart, ...]
    kinds: frozenset[str]
    concepts: frozenset[str]
    clock_dependent: bool  # its result may change with time alone (windows, durations, age)
    # A set some active line must be in for the rule to fire: its first drug binding's, or for a
    # rule that binds no line, the set whose daily dose its condition needs above 0.
    trigger_set: str | None
    # The sets each of which some active line must be in for the rule to fire: its trigger set
    # and every drug binding's set (a binding's pool is empty otherwise).
    required_sets: frozenset[str]
    # The rule's IR, for analyses of the compiled form (the live evaluator's timers).
    ir: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    # The Python source generated for its condition, escalations, values and message
    # (``vigie.engine.codegen``; empty when loaded as closures), for debugging.
    source: str = field(default="", compare=False, repr=False)

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


def _required_set(rule: Mapping[str, Any], params: Mapping[str, ParamSpec]) -> str | None:
    """A set some active line must be in for a rule that binds no line to fire: its condition
    needs ``daily dose of SET`` above a positive amount (no line of the set gives a daily dose
    of 0, which is above no positive amount). Conjunctions need what one conjunct needs,
    disjunctions what every disjunct needs; anything else needs nothing (None)."""
    values = {b["name"]: b["expr"] for b in rule["bindings"] if b["kind"] == "value"}

    def dose_set(node: Mapping[str, Any]) -> str | None:
        if node.get("op") == "var":
            node = values.get(node.get("name", ""), {})
        return node.get("set") if node.get("op") == "daily_dose" else None

    def positive(node: Mapping[str, Any], or_zero: bool) -> bool:
        """Whether the value is above 0 (``or_zero``: at least 0) whatever the cursors."""
        if node.get("op") == "const":
            value = node.get("value")
        elif node.get("op") == "param" and node.get("name") in params:
            value = params[node["name"]].min
        else:
            return False
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return value > 0 or (or_zero and value == 0)

    def needs(node: Mapping[str, Any]) -> str | None:
        op, args = node.get("op"), node.get("args") or []
        if op == "and":
            return next((found for a in args if (found := needs(a)) is not None), None)
        if op == "or":
            sets = {needs(a) for a in args}
            return sets.pop() if len(sets) == 1 else None
        if op in ("gt", "ge") and len(args) == 2:  # dose > c, dose >= c
            found = dose_set(args[0])
            return found if found and positive(args[1], or_zero=op == "gt") else None
        if op in ("lt", "le") and len(args) == 2:  # c < dose, c <= dose
            found = dose_set(args[1])
            return found if found and positive(args[0], or_zero=op == "lt") else None
        if op == "between" and len(args) == 3:  # low <= dose < high
            found = dose_set(args[0])
            return found if found and positive(args[1], or_zero=False) else None
        return None

    return needs(rule["condition"])


def _load_rule(
    index: int,
    rule: Mapping[str, Any],
    pack: Mapping[str, Any],
    sets: CodeSets,
    params: Mapping[str, ParamSpec],
    codegen: bool = True,
) -> LoadedRule:
    drugs = [b for b in rule["bindings"] if b["kind"] == "drug"]
    scope = Scope(sets, params, frozenset(b["name"] for b in drugs))
    parts = _RuleParts(ClosureBuilder(scope), rule["id"], codegen)
    combo_names = set(scope.drugs)
    for binding in rule["bindings"]:
        if binding["kind"] != "value":
            continue
        combo = bool(_var_names(binding["expr"]) & combo_names)
        if combo:
            combo_names.add(binding["name"])
        name = binding["name"]
        fn = parts.function(binding["expr"], _function_name("value", name), name)
        scope.values[name] = (fn, combo)
    for binding in drugs:
        if binding.get("set") is not None and binding["set"] not in sets.system:
            raise PackError(f"rule {rule['id']}: unknown set {binding['set']!r}")
    drug_bindings = tuple(
        DrugBinding(b["name"], b.get("set"), expand_routes(b.get("routes"), sets)) for b in drugs
    )
    source = rule["source"]
    condition = parts.function(rule["condition"], "condition")
    escalations = tuple(
        (e["severity"], parts.function(e["condition"], f"escalation_{i}"))
        for i, e in enumerate(rule["escalations"])
    )
    message = tuple(
        MessagePart(part["text"])
        if "text" in part
        else MessagePart(
            None,
            parts.message(part["expr"], f"message_{i}"),
            part["expr"]["type"],
            part["expr"].get("unit"),
        )
        for i, part in enumerate(rule["message"])
    )
    depends = rule.get("depends_on") or {}
    trigger = next((b.set for b in drug_bindings if b.set is not None), _required_set(rule, params))
    return LoadedRule(
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
        drug_names=tuple(b.name for b in drug_bindings),
        condition=condition,
        escalations=escalations,
        message=message,
        kinds=frozenset(depends.get("kinds", ())),
        concepts=frozenset(depends.get("concepts", ())),
        clock_dependent=_clock_dependent(rule),
        trigger_set=trigger,
        required_sets=frozenset({b.set for b in drug_bindings if b.set is not None})
        | frozenset(() if trigger is None else (trigger,)),
        ir=rule,
        source=parts.source(),
    )


class _RuleParts:
    """A rule's functions: generated Python (``vigie.engine.codegen``), or the closure
    builder's closures when ``codegen`` is off (the reference the generated code is tested
    against)."""

    def __init__(self, builder: ClosureBuilder, rule_id: str, codegen: bool) -> None:
        self.builder = builder
        self.rule_id = rule_id
        self.codegen = codegen
        self.sources: list[str] = []

    def function(self, node: Mapping[str, Any], name: str, label: str | None = None) -> Closure:
        if not self.codegen:
            return self.builder.build(node, label)
        fn: Closure = compile_function(self.builder, node, self.rule_id, name, label)
        self.sources.append(function_source(fn, name))
        return fn

    def message(self, node: Mapping[str, Any], name: str) -> Closure:
        if not self.codegen:
            return self.builder.message(node)
        fn: Closure = compile_message(self.builder, node, self.rule_id, name)
        self.sources.append(function_source(fn, name))
        return fn

    def source(self) -> str:
        return "\n".join(self.sources)


def _function_name(prefix: str, name: str) -> str:
    """``value_k`` for the binding ``k`` (a name Python accepts, else ``value``)."""
    candidate = f"{prefix}_{name}"
    return candidate if candidate.isidentifier() and candidate.isascii() else prefix


# Packs -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The rules a site runs and the parameter values it uses, indexed for candidate lookup."""

    pack: LoadedPack
    params: Mapping[str, float]
    rules: tuple[LoadedRule, ...]
    level: int
    always: tuple[LoadedRule, ...] = field(init=False)
    by_trigger: Mapping[str, tuple[LoadedRule, ...]] = field(init=False)

    def __post_init__(self) -> None:
        by_trigger: dict[str, list[LoadedRule]] = {}
        for rule in self.rules:
            if rule.trigger_set is not None:
                by_trigger.setdefault(rule.trigger_set, []).append(rule)
        object.__setattr__(self, "always", tuple(r for r in self.rules if r.trigger_set is None))
        object.__setattr__(self, "by_trigger", {k: tuple(v) for k, v in by_trigger.items()})

    def candidates(self, set_names: Iterable[str]) -> list[LoadedRule]:
        """Rules that may fire when lines of these sets are present (sorted by rule order)."""
        found = list(self.always)
        for name in set_names:
            found.extend(self.by_trigger.get(name, ()))
        found.sort(key=lambda r: r.index)
        return found


@dataclass(frozen=True)
class LoadedPack:
    name: str
    version: str
    sha256: str | None
    file: str | None
    rules: tuple[LoadedRule, ...]
    params: Mapping[str, ParamSpec]
    sets: CodeSets
    _selections: dict[Any, Selection] = field(default_factory=dict, repr=False, compare=False)

    def rule(self, rule_id: str) -> LoadedRule:
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


def load_pack(ir: Mapping[str, Any], *, codegen: bool = True) -> LoadedPack:
    """Load an IR dict (as written by ``rules.compile_pack``) into functions, once: Python
    generated from the IR (``vigie.engine.codegen``), or the closures of
    ``vigie.engine.expressions`` alone when ``codegen`` is off (the same results).

    The IR is first checked against its schema (``vigie.ir_schema``): a malformed one is a
    ``PackError`` that says where, e.g. ``malformed IR at rules[0].condition.args[1]: ...``.
    """
    check_ir(ir)
    try:
        pack = ir["pack"]
        sets = CodeSets(ir.get("sets") or {})
        params = {name: param_spec(name, spec) for name, spec in (ir.get("params") or {}).items()}
        rules = tuple(
            _load_rule(i, rule, pack, sets, params, codegen) for i, rule in enumerate(ir["rules"])
        )
    except PackError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise PackError(f"malformed IR: {type(error).__name__}: {error}") from error
    return LoadedPack(
        name=pack["name"],
        version=pack["version"],
        sha256=pack.get("sha256"),
        file=pack.get("file"),
        rules=rules,
        params=params,
        sets=sets,
    )


def check_ir(ir: Mapping[str, Any]) -> None:
    """The IR's version, then its shape against ``vigie.ir_schema``; ``PackError`` if wrong."""
    version = ir.get("ir_version") if isinstance(ir, Mapping) else None
    if version != SUPPORTED_IR_VERSION:
        raise PackError(
            f"IR version {version!r} is not supported (expected {SUPPORTED_IR_VERSION})"
        )
    try:
        ir_adapter().validate_python(ir)
    except ValidationError as error:
        raise PackError(_schema_error(ir, error)) from None


def _schema_error(ir: Mapping[str, Any], error: ValidationError) -> str:
    """The first problem with its JSON path; pydantic's list of expected tags is left out."""
    problems = error.errors(include_url=False)
    first = problems[0]
    context = first.get("ctx") or {}
    if first["type"] == "union_tag_invalid":
        detail = f"unknown {context['discriminator'].strip(chr(39))} {context['tag']!r}"
    else:
        detail = first["msg"]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"malformed IR at {json_path(ir, first['loc'])}: {detail}{more}"


def param_spec(name: str, spec: Mapping[str, Any]) -> ParamSpec:
    """A cursor of the IR (``params``) as the evaluator reads it."""
    return ParamSpec(
        name=name,
        value=float(spec["value"]),
        unit=spec.get("unit"),
        min=float(spec["min"]),
        max=float(spec["max"]),
        label=spec.get("label"),
        source=_param_source(spec.get("source")),
    )


def _param_source(source: Any) -> str | None:
    """The IR's ``{"file": ..., "line": ...}`` of a parameter as ``file:line``."""
    if not isinstance(source, Mapping) or not source.get("file"):
        return None
    return f"{source['file']}:{source.get('line', '?')}"
