"""Rule language parser: syntax trees, spans, syntax errors as located diagnostics.

The golden syntax trees under ``tests/golden/rules/*.tree.json`` come from the ``*.rules``
files beside them. After a deliberate grammar change, regenerate them with
``VIGIE_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_rules_parser.py -k golden`` and review
the diff.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import lark
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigie import settings as vigie_settings
from vigie.rules import compile_pack, parse
from vigie.rules import nodes as n
from vigie.rules.diagnostics import Diagnostic, source_lines
from vigie.rules.errors import RuleSyntaxError
from vigie.rules.parser import GRAMMAR, keywords, parse_recovering

GOLDEN = Path(__file__).parent / "golden" / "rules"
DEFAULT_PACK = Path(__file__).parents[1] / "rules" / "packs" / "default.rules"
REGENERATE = vigie_settings.value("regenerate_golden")
HEADER = 'pack "t" version "1.0.0"\n'


def golden_inputs() -> list[Path]:
    return sorted(GOLDEN.glob("*.rules"))


def first_rule(text: str) -> n.RuleDecl:
    pack = parse(HEADER + text, "t.rules")
    return next(d for d in pack.decls if isinstance(d, n.RuleDecl))


def when_statements(body: str) -> tuple[n.Statement, ...]:
    rule = first_rule(f'rule t.r "t"\n  when\n{body}\n  say "x"\n')
    when = next(c for c in rule.clauses if isinstance(c, n.WhenClause))
    return when.statements


def only_expr(body: str) -> n.Expr:
    (statement,) = when_statements(body)
    assert isinstance(statement, n.Guard)
    return statement.expr


def syntax_errors(text: str) -> tuple[Diagnostic, ...]:
    with pytest.raises(RuleSyntaxError) as caught:
        parse(text, "bad.rules")
    return caught.value.diagnostics


# Golden syntax trees -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", golden_inputs(), ids=lambda p: p.stem)
def test_golden_syntax_tree(source: Path) -> None:
    tree = parse(source.read_text(encoding="utf-8"), source.name)
    dumped = json.dumps(n.dump(tree), indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    expected = source.with_suffix(".tree.json")
    if REGENERATE:
        expected.write_text(dumped, encoding="utf-8")
    assert dumped == expected.read_text(encoding="utf-8")


def test_golden_inputs_exist() -> None:
    assert {p.stem for p in golden_inputs()} >= {"hyperkalaemia", "expressions", "sets"}


# Trees and spans ---------------------------------------------------------------------------------


def test_equality_ignores_layout_and_spans() -> None:
    compact = 'rule a.b "t"\n when\n  k = latest potassium within 48 h\n  k > 5 mmol/L\n say "x"\n'
    spread = (
        '\n\n# comment\nrule a.b "t"   # title\n    when\n'
        "        k   =   latest potassium   within 48 h\n\n"
        '        k > 5 mmol/L\n    say "x"\n'
    )
    assert first_rule(compact) == first_rule(spread)
    assert first_rule(compact).span != first_rule(spread).span


def test_spans_point_at_the_source_text() -> None:
    text = HEADER + 'rule a.b "t"\n  when\n    k = latest kaliemie within 48 h\n'
    rule = parse(text, "s.rules").decls[1]
    assert isinstance(rule, n.RuleDecl)
    when = rule.clauses[0]
    assert isinstance(when, n.WhenClause)
    binding = when.statements[0]
    assert isinstance(binding, n.Binding) and isinstance(binding.value, n.LabQuery)
    span = binding.value.concept.span
    line = text.splitlines()[span.line - 1]
    assert (span.file, span.line) == ("s.rules", 4)
    assert line[span.column - 1 : span.end_column - 1] == "kaliemie"


def test_precedence_and_or_not_comparison_arithmetic() -> None:
    expr = only_expr("    not a > 1 + 2 * 3 and b or c")
    assert isinstance(expr, n.BoolOp) and expr.op == "or"
    left = expr.operands[0]
    assert isinstance(left, n.BoolOp) and left.op == "and"
    negation = left.operands[0]
    assert isinstance(negation, n.Not) and isinstance(negation.operand, n.Compare)
    total = negation.operand.right
    assert isinstance(total, n.Arith) and total.op == "+"
    assert isinstance(total.right, n.Arith) and total.right.op == "*"


def test_statement_continues_after_operator_or_before_and_or() -> None:
    statements = when_statements(
        "    a > 1 and\n      b > 2\n    c > 3\n    # and a comment: no continuation\n"
        "      or d > 4\n    e > 5"
    )
    assert len(statements) == 3
    middle = statements[1]
    assert isinstance(middle, n.Guard) and isinstance(middle.expr, n.BoolOp)
    assert middle.expr.op == "or"


def test_unit_and_name_share_spelling() -> None:
    # `d` is a binding name and, after a number, the unit "days".
    expr = only_expr("    d.duration > 7 d")
    assert expr == n.Compare(
        ">", n.Attribute(n.Name("d"), n.Ident("duration")), n.Quantity("7", "d")
    )


def test_attribute_may_be_spelt_like_a_keyword() -> None:
    expr = only_expr('    d.dose > 5 mg and d.route == "iv"')
    assert isinstance(expr, n.BoolOp)
    first = expr.operands[0]
    assert isinstance(first, n.Compare) and first.left == n.Attribute(n.Name("d"), n.Ident("dose"))


def test_code_ranges_and_set_references() -> None:
    pack = parse(HEADER + "set x = atc B01AF01..B01AF03, acei except C09AA01\n", "t")
    decl = pack.decls[1]
    assert isinstance(decl, n.SetDecl)
    assert decl.body == n.InlineSet(
        "atc",
        (n.Code("B01AF01", "B01AF03"), n.SetName("acei")),
        (n.Code("C09AA01"),),
    )


def test_windows() -> None:
    expr = only_expr("    min creatinine within 7 d before (k.time - 24 h) > 1 mg/dL")
    assert isinstance(expr, n.Compare) and isinstance(expr.left, n.LabQuery)
    window = expr.left.window
    assert window is not None and window.within == n.Quantity("7", "d")
    assert isinstance(window.before, n.Arith)


def test_message_template_parts_and_columns() -> None:
    text = HEADER + 'rule a.b "t"\n  say "K+ {k} \\"{d.label}\\" {{x}}"\n'
    rule = parse(text, "t").decls[1]
    assert isinstance(rule, n.RuleDecl)
    say = rule.clauses[0]
    assert isinstance(say, n.SayClause)
    texts = [p.text if isinstance(p, n.TextPart) else p.path for p in say.parts]
    assert texts == ["K+ ", ("k",), ' "', ("d", "label"), '" {x}']
    label = say.parts[3]
    line = text.splitlines()[label.span.line - 1]
    assert line[label.span.column - 1 : label.span.end_column - 1] == "{d.label}"


# Grammar properties ------------------------------------------------------------------------------


def test_the_only_grammar_conflict_is_the_drug_filter() -> None:
    """`active drug in X`: shift (a set filter); any new conflict must be looked at."""
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    level = lark.logger.level
    lark.logger.addHandler(handler)
    lark.logger.setLevel(logging.DEBUG)
    try:
        lark.Lark(GRAMMAR.read_text(encoding="utf-8"), parser="lalr", debug=True)
    finally:
        lark.logger.removeHandler(handler)
        lark.logger.setLevel(level)
    conflicts = [m for m in messages if "conflict" in m.lower()]
    rules_involved = [m for m in messages if m.startswith(" * ")]
    assert conflicts and all("terminal IN" in m for m in conflicts)
    assert rules_involved and all("drug_filter" in m for m in rules_involved)


def test_name_terminal_excludes_exactly_the_keywords() -> None:
    grammar = GRAMMAR.read_text(encoding="utf-8")
    match = re.search(r"^NAME: /\(\?!\(([a-z0-9|]+)\)", grammar, re.MULTILINE)
    assert match is not None
    assert set(match.group(1).split("|")) == set(keywords())


# Syntax errors -----------------------------------------------------------------------------------


def test_expected_unit_number_and_keyword_in_words() -> None:
    (diagnostic,) = syntax_errors(HEADER + "param k = 5 mmol/L in 4 ..\n")
    assert diagnostic.code == "R001"
    assert "expected a number" in diagnostic.message
    assert (diagnostic.span.line, diagnostic.span.column) == (2, 27)

    (diagnostic,) = syntax_errors(HEADER + 'rule a.b "t"\n  escalate major k > 1\n')
    assert "expected `when`" in diagnostic.message

    (diagnostic,) = syntax_errors(HEADER + "param k = 5 in 4 .. 6 7\n")
    assert "a quoted string" in diagnostic.message


def test_keyword_where_an_expression_is_expected() -> None:
    text = HEADER + 'rule a.b "t"\n  when\n    k > 5 mmol/L and\n  say "x"\n'
    (diagnostic,) = syntax_errors(text)
    assert diagnostic.message == "unexpected `say`; expected an expression"
    assert (diagnostic.span.line, diagnostic.span.column) == (5, 3)


def test_single_equals_in_a_condition_hints_double() -> None:
    (diagnostic,) = syntax_errors(HEADER + 'rule a.b "t"\n  when\n    age > 3 and sex = "F"\n')
    assert diagnostic.hint is not None and "`==`" in diagnostic.hint


def test_unterminated_string_and_unexpected_character() -> None:
    (diagnostic,) = syntax_errors(HEADER + 'rule a.b "t\n')
    assert (diagnostic.code, diagnostic.message) == ("R002", "unterminated string")
    (diagnostic,) = syntax_errors(HEADER + "set x = atc C09A ; C09B\n")
    assert diagnostic.code == "R002" and "';'" in diagnostic.message
    assert (diagnostic.span.line, diagnostic.span.column) == (2, 18)


def test_end_of_file_inside_brackets() -> None:
    (diagnostic,) = syntax_errors(HEADER + "define x = (age > 3")
    assert diagnostic.code == "R003"
    assert "expected `)`" in diagnostic.message


def test_uppercase_keyword_hint() -> None:
    (diagnostic,) = syntax_errors(HEADER + 'Rule a.b "t"\n')
    assert diagnostic.hint == "keywords are lowercase: `rule`"


def test_every_syntax_error_reported_and_the_rest_still_parsed() -> None:
    text = HEADER + (
        "set a = atc\n"  # error 1
        "set b = atc C09A\n"
        'rule x.y "t"\n  when\n    k > > 1\n  say "x"\n'  # error 2
        'rule x.z "t"\n  say "fine"\n'
    )
    result = parse_recovering(text, "r.rules")
    assert [d.span.line for d in result.diagnostics] == [2, 6]
    names = [getattr(d, "name", None) for d in result.pack.decls]
    assert n.Ident("b") in names
    assert result.lost_names == {"a", "x.y"}
    assert any(isinstance(d, n.RuleDecl) and d.rule_id.name == "x.z" for d in result.pack.decls)


def test_rule_syntax_error_carries_all_diagnostics() -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse(HEADER + "set a = atc\nset b = atc ,\n", "r.rules")
    error = caught.value
    assert len(error.diagnostics) == 2
    assert str(error).startswith("r.rules:2:12: error[R001]")
    assert "(and 1 more)" in str(error)


# Property: any text parses or fails with a located error of our own ------------------------------

_TOKENS = [
    "rule", "when", "say", "set", "param", "define", "pack", "and", "or", "not", "in", "..",
    "atc", "icd10", "route", "except", "latest", "min", "within", "before", "since", "active",
    "drug", "any", "has", "condition", "known", "otherwise", "escalate", "problem", "k", "d",
    "potassium", "48 h", "5.5 mmol/L", "C09A", "K92.0", "B01AF01..B01AF03", "=", "==", ">",
    "(", ")", ",", ".", "+", "-", "*", "/", '"x {k}"', '"', "#", "\n", "\n  ", " ", "\t", "{",
    "1.2", "µmol/L", "é", "\r\n", "is", "positive", "negative", "hcg",
]  # fmt: skip


def assert_located(diagnostics: tuple[Diagnostic, ...] | list[Diagnostic], text: str) -> None:
    lines = source_lines(text)
    for diagnostic in diagnostics:
        span = diagnostic.span
        assert 1 <= span.line <= max(len(lines), 1), (diagnostic, text)
        assert 1 <= span.column <= len(lines[span.line - 1]) + 1, (diagnostic, text)


@pytest.mark.property
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_TOKENS), max_size=40).map(" ".join) | st.text(max_size=80))
def test_random_text_parses_or_fails_located(text: str) -> None:
    try:
        parse(text, "fuzz.rules")
    except RuleSyntaxError as exc:
        assert exc.diagnostics
        assert_located(exc.diagnostics, text)


@pytest.mark.property
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_default_pack_compiles_or_fails_located(data: st.DataObject) -> None:
    text = DEFAULT_PACK.read_text(encoding="utf-8")
    for _ in range(data.draw(st.integers(1, 3))):
        start = data.draw(st.integers(0, len(text)))
        end = data.draw(st.integers(start, min(len(text), start + 40)))
        insert = data.draw(st.sampled_from(["", *_TOKENS]))
        text = text[:start] + insert + text[end:]
    ir, diagnostics = compile_pack(text, "mutant.rules")
    assert (ir is None) == any(d.is_error for d in diagnostics)
    assert_located(diagnostics, text)


# Issue 8: the keyword expected first, reserved words, misspelt keywords --------------------------

RULE_HEAD = 'rule t.r "T"\n  problem 7 intervention 2 severity major\n'


def test_a_rule_without_when_names_when_first_then_say() -> None:
    text = HEADER + RULE_HEAD + '    k = latest potassium within 48 h\n  say "x"\n'
    (diagnostic,) = syntax_errors(text)
    assert diagnostic.message.startswith("unexpected name 'k'; expected `when`, `say`, ")
    assert diagnostic.hint == "a rule's statements follow `when`, on the line after it"


@pytest.mark.parametrize(
    ("line", "keyword"), [("  whne", "when"), ('  sya "x"', "say"), ("  severty major", "severity")]
)
def test_a_misspelt_clause_keyword_is_named(line: str, keyword: str) -> None:
    body = "  when\n    age > 75 years\n" if keyword != "when" else ""
    tail = '  say "x"\n' if keyword != "say" else ""
    text = HEADER + RULE_HEAD + body + line + "\n" + ("    age > 75 years\n" if not body else "")
    (diagnostic,) = syntax_errors(text + tail)
    assert diagnostic.hint == f"did you mean `{keyword}`?"


@pytest.mark.parametrize(
    ("text", "word", "column"),
    [
        ("set when = atc C09\n", "when", 5),
        ("param max = 5 mmol/L in 4 .. 6\n", "max", 7),
        ("define latest = age > 75 years\n", "latest", 8),
    ],
)
def test_a_keyword_declared_as_a_name_is_a_reserved_word(text: str, word: str, column: int) -> None:
    (diagnostic,) = syntax_errors(HEADER + text)
    assert diagnostic.message == f"`{word}` is a reserved word; expected a name"
    assert diagnostic.span.column == column
    assert diagnostic.hint == f"a keyword cannot be a name: choose another, e.g. `{word}_value`"


@pytest.mark.parametrize("word", ["latest", "count", "no"])
def test_a_keyword_bound_in_a_rule_is_a_reserved_word(word: str) -> None:
    text = HEADER + RULE_HEAD + f'  when\n    {word} = latest potassium within 48 h\n  say "x"\n'
    (diagnostic,) = syntax_errors(text)
    assert diagnostic.message == f"`{word}` is a reserved word; it cannot name a binding"
    assert (diagnostic.span.line, diagnostic.span.column) == (5, 5)
    assert diagnostic.span.end_column == 5 + len(word)


def test_minutes_are_not_a_unit() -> None:
    text = HEADER + RULE_HEAD + '  when\n    k = latest potassium within 30 min\n  say "x"\n'
    (diagnostic,) = syntax_errors(text)
    assert (
        diagnostic.hint
        == "there is no minute unit: durations are in ms, s, h, d, w (30 min = 0.5 h)"
    )


@pytest.mark.parametrize("next_line", ['param k = 5 mmol/L in 4 .. 6 "k"', 'rule t.r "T"'])
def test_a_set_left_open_by_a_trailing_comma_says_so(next_line: str) -> None:
    # `set acei = atc C09A,` then a declaration: the keyword is read as the set's next code;
    # the author must be told about the comma on line 2, not only that the keyword is reserved.
    text = 'pack "p" version "1.0.0"\nset acei = atc C09A,\n\n# a comment\n' + next_line + "\n"
    (diagnostic,) = syntax_errors(text)
    assert (diagnostic.span.line, diagnostic.span.column) == (5, 1)
    assert (
        diagnostic.hint
        == "line 2 ends with `,`, so its list goes on to this line: remove the comma"
    )
