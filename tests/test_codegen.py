"""Rules compiled to Python source (``vigie.engine.codegen``) against the closures they replace.

The closure builder stays the reference: a pack loaded with ``codegen=False`` evaluates through
``vigie.engine.expressions`` alone. The generated functions must give the same value for any
expression (Kleene's unknown included), record the same thresholds, and the same alerts —
evidence and messages included — on any facts.
"""

from __future__ import annotations

import linecache
import traceback
from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_columnar import a_fact
from vigie.engine import FactSet, LoadedPack, RuleRuntimeError, evaluate, load_pack
from vigie.engine.codegen import MAX_DEPTH, compile_function
from vigie.engine.expressions import ClosureBuilder, Scope
from vigie.engine.factset import PatientRecord
from vigie.engine.runtime import CodeSets, Context
from vigie.facts import AnyFact
from vigie.rules import compile_pack

PACKS = Path(__file__).parents[1] / "rules" / "packs"
AT = datetime(2024, 3, 15, 12, 0)


@cache
def packs(name: str) -> tuple[LoadedPack, LoadedPack]:
    """The pack loaded as generated code, and as closures."""
    text = (PACKS / name).read_text(encoding="utf-8")
    ir, diagnostics = compile_pack(text, f"rules/packs/{name}")
    assert ir is not None, diagnostics
    return load_pack(ir), load_pack(ir, codegen=False)


def same_alerts(facts: list[AnyFact], at: datetime, name: str) -> None:
    generated, closures = packs(name)
    fact_set = FactSet(facts)
    mine = [a.model_dump() for a in evaluate(generated, fact_set, at)]
    theirs = [a.model_dump() for a in evaluate(closures, fact_set, at)]
    assert mine == theirs


# Whole packs on any facts ------------------------------------------------------------------------


@pytest.mark.property
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts=st.lists(a_fact(), min_size=1, max_size=60))
def test_generated_code_gives_the_alerts_of_the_closures(facts: list[AnyFact]) -> None:
    same_alerts(facts, AT, "default.rules")


@pytest.mark.property
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts=st.lists(a_fact(), min_size=1, max_size=60))
def test_generated_code_gives_the_alerts_of_the_closures_ansm(facts: list[AnyFact]) -> None:
    same_alerts(facts, AT, "ansm-interactions.rules")


def test_every_rule_has_its_generated_source_and_it_is_deterministic() -> None:
    generated, closures = packs("default.rules")
    again = load_pack(compile_pack((PACKS / "default.rules").read_text("utf-8"), "x")[0] or {})
    for rule, twin, plain in zip(generated.rules, again.rules, closures.rules, strict=True):
        assert "def condition(ctx):" in rule.source or "condition = " in rule.source, rule.id
        assert rule.source == twin.source
        assert plain.source == ""


# Expressions: values, unknowns and thresholds ------------------------------------------------

# Named values: ``unknown`` (a lab without result...) and ``k``, read through the value caches.
_SCOPE = Scope(
    CodeSets({}),
    frozenset({"p"}),
    frozenset(),
    {"unknown": (lambda ctx: None, False), "k": (lambda ctx: 5.5, True)},
)
_NUMBERS = st.sampled_from([0.0, 1.0, 2.5, 5.5, -3.0])


def _const(value: Any, type_: str) -> dict[str, Any]:
    unit = "mmol/L" if type_ == "number" else None  # a unit: not a drug amount
    return {"op": "const", "type": type_, "unit": unit, "value": value, "args": [], "span": [1, 1]}


def _measured(node: dict[str, Any]) -> dict[str, Any]:
    return {**node, "unit": "mmol/L"}


def _number() -> st.SearchStrategy[dict[str, Any]]:
    leaves = st.one_of(
        _NUMBERS.map(lambda v: _const(v, "number")),
        st.just({"op": "param", "name": "p", "type": "number", "args": [], "span": [1, 2]}),
        st.sampled_from(["unknown", "k"]).map(
            lambda name: {"op": "var", "name": name, "type": "number", "args": []}
        ),
    ).map(_measured)
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(
                lambda x, f: {"op": "convert", "factor": f, "type": "number", "args": [x]},
                inner,
                st.sampled_from([1.0, 0.001, 1000.0]),
            ),
            st.builds(
                lambda x, y: {"op": "otherwise", "type": "number", "args": [x, y]}, inner, inner
            ),
        ).map(_measured),
        max_leaves=4,
    )


def _boolean() -> st.SearchStrategy[dict[str, Any]]:
    comparison = st.builds(
        lambda op, x, y: {"op": op, "type": "bool", "args": [x, y], "span": [2, 3]},
        st.sampled_from(["lt", "le", "gt", "ge", "eq", "ne"]),
        _number(),
        _number(),
    )
    between = st.builds(
        lambda x, lo, hi: {"op": "between", "type": "bool", "args": [x, lo, hi]},
        _number(),
        _number(),
        _number(),
    )
    leaves = st.one_of(
        st.sampled_from([True, False, None]).map(lambda v: _const(v, "bool")),
        comparison,
        between,
        _number().map(lambda x: {"op": "known", "type": "bool", "args": [x]}),
    )
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.builds(lambda x: {"op": "not", "type": "bool", "args": [x]}, inner),
            st.builds(
                lambda op, args: {"op": op, "type": "bool", "args": args},
                st.sampled_from(["and", "or"]),
                st.lists(inner, min_size=1, max_size=4),
            ),
            st.builds(
                lambda x, y: {"op": "otherwise", "type": "bool", "args": [x, y]}, inner, inner
            ),
        ),
        max_leaves=12,
    )


def _context(p: float, tracing: bool) -> Context:
    ctx = Context(PatientRecord("p1"), AT, CodeSets({}), {"p": p})
    ctx.thresholds = [] if tracing else None
    return ctx


@pytest.mark.property
@settings(max_examples=400, deadline=None)
@given(node=_boolean(), p=st.sampled_from([0.0, 2.5, 7.0]), tracing=st.booleans())
def test_kleene_logic_and_thresholds_as_the_closures(
    node: dict[str, Any], p: float, tracing: bool
) -> None:
    builder = ClosureBuilder(_SCOPE)
    generated = compile_function(builder, node, "t.r", "condition")
    closure = builder.build(node)
    mine, theirs = _context(p, tracing), _context(p, tracing)
    assert generated(mine) is closure(theirs)  # True, False or None: the same object
    assert mine.thresholds == theirs.thresholds
    assert mine.values == theirs.values and mine.combo_values == theirs.combo_values


def test_a_type_error_is_located_and_names_the_generated_line() -> None:
    node = {
        "op": "gt", "type": "bool", "span": [5, 7],
        "args": [_const("high", "text"), _const(1.0, "number")],
    }  # fmt: skip
    fn = compile_function(ClosureBuilder(_SCOPE), node, "t.r", "condition")
    with pytest.raises(RuleRuntimeError, match="gt: TypeError") as raised:
        fn(_context(0.0, False))
    assert raised.value.span == (5, 7)
    last = traceback.extract_tb(raised.value.__traceback__)[-1]
    assert last.filename.startswith("<vigie rule t.r condition")
    assert last.line == "raise _fail(_n0, error) from error"  # the generated line, shown
    assert linecache.getline(last.filename, last.lineno or 0).strip() == last.line


def test_nesting_deeper_than_python_allows_stays_a_closure() -> None:
    node: dict[str, Any] = _const(None, "bool")
    for _ in range(3 * MAX_DEPTH):
        node = {"op": "and", "type": "bool", "args": [_const(True, "bool"), node]}
    fn = compile_function(ClosureBuilder(_SCOPE), node, "t.r", "condition")
    assert fn(_context(0.0, False)) is None  # True and ... and unknown


def test_rules_evaluate_the_same_on_a_day_of_a_generated_hospital() -> None:
    from vigie.synthetic.canonical import canonical_hospital
    from vigie.synthetic.catalogue import covered_rules

    facts, _ = canonical_hospital(20, 2, 5, rates=dict.fromkeys(covered_rules(), 0.05), min_cases=1)
    moment = max(f.time for f in facts if hasattr(f, "time")) - timedelta(hours=3)
    same_alerts(facts, moment, "default.rules")
    same_alerts(facts, moment, "ansm-interactions.rules")


def test_sources_leave_linecache_with_their_pack() -> None:
    import gc

    ir, _ = compile_pack((PACKS / "default.rules").read_text("utf-8"), "default.rules")
    before = {name for name in linecache.cache if name.startswith("<vigie rule")}
    loaded = load_pack(ir or {})
    added = {name for name in linecache.cache if name.startswith("<vigie rule")} - before
    assert len(added) >= len(loaded.rules)  # a condition at least per rule, while loaded
    del loaded
    gc.collect()
    assert added <= set(linecache.cache)  # not removed by the collector (checkcache may run)
    load_pack(ir or {})  # the next pack loaded removes them: reloading does not accumulate
    assert not added & set(linecache.cache)


def test_checkcache_while_generated_functions_are_collected() -> None:
    """The collector running inside ``linecache.checkcache`` (it lists the keys, then reads
    each) must not remove an entry meanwhile: it failed with a KeyError in a doctest run."""
    import gc

    ir, _ = compile_pack((PACKS / "default.rules").read_text("utf-8"), "default.rules")
    loaded = load_pack(ir or {})
    names = [name for name in linecache.cache if name.startswith("<vigie rule")]
    listed = list(linecache.cache.keys())
    del loaded
    gc.collect()  # as if it ran between checkcache's listing and its reads
    assert all(name in linecache.cache for name in names)
    for name in listed:
        linecache.cache[name]  # what checkcache reads: no KeyError
    linecache.checkcache()
