"""Text → syntax tree (``vigie.rules.nodes``), with lark's errors turned into the language's own.

``parse`` raises ``RuleSyntaxError`` carrying every syntax error of the pack; ``parse_recovering``
returns the tree of what did parse plus those diagnostics, so that the checker can report the
rest of the pack's errors at once. Recovery blanks the declaration holding the error (keeping
line numbers) and parses again; the names of dropped declarations are returned so the checker
does not report them as unknown.

>>> pack = parse('pack "p" version "1.0.0"\\nset acei = atc C09A\\n', "p.rules")
>>> pack.decls[1].body.items[0].text
'C09A'
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)
from lark.lexer import PatternStr
from lark.tree import Meta

from vigie.rules import nodes as n
from vigie.rules.diagnostics import Diagnostic, close_matches, error, source_lines
from vigie.rules.errors import RuleSyntaxError

__all__ = [
    "ParseResult",
    "expected_words",
    "keywords",
    "parse",
    "parse_recovering",
    "placeholder_is_well_formed",
    "rule_parser",
]

GRAMMAR = Path(__file__).with_name("grammar.lark")
_MAX_SYNTAX_ERRORS = 50
_DECL_START = re.compile(r"[ \t]*(pack|set|param|define|rule)\b[ \t]*([a-z_][a-z0-9_.]*)?")
_PLACEHOLDER_NAME = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class ParseResult:
    pack: n.Pack
    diagnostics: tuple[Diagnostic, ...]
    lost_names: frozenset[str]  # declarations dropped by error recovery


@cache
def rule_parser() -> Lark:
    """The LALR parser, built once per process."""
    return Lark(
        GRAMMAR.read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
    )


def parse(text: str, file: str = "<string>") -> n.Pack:
    """The syntax tree of a pack, or ``RuleSyntaxError`` with every syntax error in it."""
    result = parse_recovering(text, file)
    if result.diagnostics:
        raise RuleSyntaxError(result.diagnostics)
    return result.pack


def parse_recovering(text: str, file: str = "<string>") -> ParseResult:
    """Parse as much as possible: the tree of the good declarations and the syntax errors."""
    work = text if text.endswith("\n") else text + "\n"
    diagnostics: list[Diagnostic] = []
    lost: set[str] = set()
    while True:
        try:
            tree = rule_parser().parse(work)
            pack = _ToNodes(file).transform(tree)
            return ParseResult(cast(n.Pack, pack), tuple(diagnostics), frozenset(lost))
        except UnexpectedInput as exc:
            diagnostic = _diagnostic(exc, work, file)
        except VisitError as exc:  # a bug in _ToNodes: report it located, never raw
            diagnostic = error("R001", f"cannot read this: {exc.orig_exc}", _end_span(work, file))
        except LarkError as exc:
            diagnostic = error("R001", f"cannot parse: {exc}", _end_span(work, file))
        diagnostics.append(diagnostic)
        blanked, name = _blank_declaration(work, _culprit_line(work, diagnostic))
        if name:
            lost.add(name)
        if blanked == work or len(diagnostics) >= _MAX_SYNTAX_ERRORS:
            return ParseResult(n.Pack(()), tuple(diagnostics), frozenset(lost))
        work = blanked


# Error recovery --------------------------------------------------------------------


def _culprit_line(text: str, diagnostic: Diagnostic) -> int:
    """The line whose declaration is at fault: an error on the first word of a declaration
    (``rule`` after ``set x = atc C09A,``) is the previous declaration's unfinished business."""
    lines = source_lines(text)
    line = diagnostic.span.line
    if 1 < line <= len(lines) and _DECL_START.match(lines[line - 1]):
        indent = len(lines[line - 1]) - len(lines[line - 1].lstrip())
        if diagnostic.span.column == indent + 1:
            return line - 1
    return line


def _blank_declaration(text: str, error_line: int) -> tuple[str, str | None]:
    """The text with the declaration around ``error_line`` emptied (line breaks kept)."""
    lines = [line + "\n" for line in text.split("\n")]
    lines[-1] = lines[-1][:-1]
    error_index = min(max(error_line, 1), len(lines)) - 1
    start = error_index
    while start > 0 and not _DECL_START.match(lines[start]):
        start -= 1
    end = error_index + 1
    while end < len(lines) and not _DECL_START.match(lines[end]):
        end += 1
    match = _DECL_START.match(lines[start])
    name = match.group(2) if match and match.group(1) != "pack" else None
    if match and match.group(1) == "pack":
        name = "<pack>"
    for i in range(start, end):
        body = lines[i].rstrip("\r\n")
        lines[i] = lines[i][len(body) :]
    return "".join(lines), name


# Lark errors → diagnostics -------------------------------------------------------------------

# How a terminal is named in a message when it is not a plain keyword or symbol.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "ATTRIBUTE": "an attribute name",
    "NUMBER": "a number",
    "UNIT": "a unit",
    "CODE": "a code",
    "STRING": "a quoted string",
    "RULE_ID": "a rule id",
    "COMP_OP": "a comparison (< <= > >= == !=)",
    "_NL": "end of line",
    "$END": "end of file",
}
_EXPRESSION_STARTS = {
    "NAME", "NUMBER", "STRING", "(", "-", "not", "known", "active", "any", "count",
    "latest", "first", "min", "max", "no", "has", "daily",
}  # fmt: skip
_OPERATORS = {"and", "or", "in", "otherwise", ".", "+", "-", "*", "/", "COMP_OP", ".."}


def _terminal_text(name: str) -> str:
    """``WHEN`` → ``when``; named terminals keep their name (``NAME``)."""
    terminals = {t.name: t for t in rule_parser().terminals}
    term = terminals.get(name)
    if term is not None and isinstance(term.pattern, PatternStr):
        return term.pattern.value
    return name


# Keywords named first when expected: a rule's missing `when` or `say` is the likeliest mistake.
_FIRST_KEYWORDS = ("when", "say", "problem", "intervention", "severity", "level", "version",
                   "reference", "escalate", "rule", "set", "param", "define", "pack")  # fmt: skip
# Keywords that start a line: a misspelt one (`sya "..."`, `whne`) is named in the hint.
_LINE_KEYWORDS = frozenset(_FIRST_KEYWORDS)


def _word_order(text: str) -> tuple[int, bool, str]:
    first = _FIRST_KEYWORDS.index(text) if text in _FIRST_KEYWORDS else len(_FIRST_KEYWORDS)
    return first, text not in _TERMINAL_WORDS, text


def expected_words(expected: Iterable[str]) -> str:
    """Lark's terminal names as words: ``a unit``, ``a number``, ```when```..."""
    texts = {_terminal_text(name) for name in expected if not name.startswith("_CONT")}
    words: list[str] = []
    if {"NAME", "NUMBER", "("} <= texts:
        texts -= _EXPRESSION_STARTS
        words.append("an expression")
    if len(texts & _OPERATORS) >= 4:
        texts -= _OPERATORS
        words.append("an operator")
    tail = [t for t in ("_NL", "$END") if t in texts]
    for text in sorted(texts - {"_NL", "$END"}, key=_word_order):
        words.append(_TERMINAL_WORDS.get(text, f"`{text}`"))
    words.extend(_TERMINAL_WORDS[t] for t in tail)
    if len(words) > 8:
        words = [*words[:7], "…"]
    if not words:
        return "nothing more"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _diagnostic(exc: UnexpectedInput, text: str, file: str) -> Diagnostic:
    if isinstance(exc, UnexpectedToken):
        return _unexpected_token(exc, text, file)
    if isinstance(exc, UnexpectedCharacters):
        return _unexpected_character(exc, text, file)
    if isinstance(exc, UnexpectedEOF):
        expected = f"; expected {expected_words(exc.expected)}"
        return error("R003", "unexpected end of file" + expected, _end_span(text, file))
    return error("R001", str(exc).splitlines()[0], _end_span(text, file))


def _unexpected_token(exc: UnexpectedToken, text: str, file: str) -> Diagnostic:
    token: Token = exc.token
    accepts = exc.accepts or exc.expected
    expected = expected_words(accepts)
    if token.type == "$END":
        return error("R003", f"unexpected end of file; expected {expected}", _end_span(text, file))
    span = _token_span(token, file)
    if token.type == "_NL":
        span = n.Span(file, span.line, span.column, span.line, span.column + 1)
        hint = _line_end_hint(accepts)
        return error("R001", f"unexpected end of line; expected {expected}", span, hint)
    reserved = _reserved_word(token, accepts, text, file)
    if reserved is not None:
        return reserved
    what = _describe_token(token)
    hint = _token_hint(token) or _misspelt_keyword(token, accepts, text)
    accepted = {_terminal_text(name) for name in accepts}
    if str(token) == "min" and "UNIT" in accepted:
        hint = "there is no minute unit: durations are in ms, s, h, d, w (30 min = 0.5 h)"
    elif hint is None and token.type == "NAME" and "when" in accepted:
        hint = "a rule's statements follow `when`, on the line after it"
    return error("R001", f"unexpected {what}; expected {expected}", span, hint)


_BINDING_START = re.compile(r"[ \t]*([a-z_][a-z0-9_]*)[ \t]*=(?!=)")


def _reserved_word(token: Token, accepts: Iterable[str], text: str, file: str) -> Diagnostic | None:
    """A keyword where a name is expected (`set when = ...`), or bound (`latest = ...`)."""
    word = str(token)
    names_only = "NAME" in set(accepts) and "NUMBER" not in set(accepts)  # not an expression
    if names_only and word in keywords() and token.type != "NAME":
        span = _token_span(token, file)
        hint = _trailing_comma_hint(token, text) or _rename(word)
        return error("R001", f"`{word}` is a reserved word; expected a name", span, hint)
    line_text = source_lines(text)[(token.line or 1) - 1]
    match = _BINDING_START.match(line_text)
    if word == "=" and match and match.group(1) in keywords():
        line, column = token.line or 1, match.start(1) + 1
        span = n.Span(file, line, column, line, match.end(1) + 1)
        message = f"`{match.group(1)}` is a reserved word; it cannot name a binding"
        return error("R001", message, span, _rename(match.group(1)))
    return None


def _trailing_comma_hint(token: Token, text: str) -> str | None:
    """A keyword starting a line after a line that ends with a comma: the list before (a set's
    codes) was left open, so the keyword was read as its next item (`set a = atc C09A,`)."""
    lines = source_lines(text)
    number = token.line or 1
    if lines[number - 1][: (token.column or 1) - 1].strip():
        return None
    for previous in range(number - 2, -1, -1):
        content = lines[previous].split("#", 1)[0].rstrip()
        if content:
            if content.endswith(","):
                return (
                    f"line {previous + 1} ends with `,`, so its list goes on to this line: "
                    "remove the comma"
                )
            return None
    return None


def _rename(word: str) -> str:
    return f"a keyword cannot be a name: choose another, e.g. `{word}_value`"


def _misspelt_keyword(token: Token, accepts: Iterable[str], text: str) -> str | None:
    """`sya "..."`, `whne`: the line starts with a word close to a line keyword."""
    line_text = source_lines(text)[(token.line or 1) - 1]
    first = re.match(r"[ \t]*([A-Za-z_]+)", line_text)
    if first is None or first.group(1) in keywords():
        return None
    expected = {_terminal_text(name) for name in accepts}
    candidates = sorted(_LINE_KEYWORDS & expected) or sorted(_LINE_KEYWORDS)
    word = first.group(1).lower()
    found = [k for k in candidates if sorted(k) == sorted(word)]  # letters swapped: sya
    found = found or close_matches(word, {k: k for k in candidates})
    return f"did you mean `{found[0]}`?" if found else None


def _unexpected_character(exc: UnexpectedCharacters, text: str, file: str) -> Diagnostic:
    line, column = _clamp(text, exc.line, exc.column)
    span = n.Span(file, line, column, line, column + 1)
    char = exc.char
    if char == '"':
        return error("R002", "unterminated string", span, "a string ends on the line it starts")
    hint = None
    if char.isupper():
        hint = "names are lowercase; codes go after `atc` or `icd10`, units after a number"
    expected = expected_words(exc.allowed or ())
    return error("R002", f"unexpected character {char!r}; expected {expected}", span, hint)


_VALUE_TOKENS = {"NAME": "name", "ATTRIBUTE": "name", "NUMBER": "number", "UNIT": "unit",
                 "CODE": "code", "STRING": "string", "RULE_ID": "rule id"}  # fmt: skip


def _describe_token(token: Token) -> str:
    if token.type in _VALUE_TOKENS:
        return f"{_VALUE_TOKENS[token.type]} {str(token)!r}"
    return f"`{token!s}`"


def _token_hint(token: Token) -> str | None:
    if str(token) == "=":
        return "`=` binds a name at the start of a statement; compare with `==`"
    if token.type == "NAME" and str(token) in {"and", "or"}:
        return None
    word = str(token)
    if token.type in {"UNIT", "CODE"} and word.lower() in keywords():
        return f"keywords are lowercase: `{word.lower()}`"
    if token.type in {"UNIT", "CODE"} and word[:1].isupper():
        return "names are lowercase; codes go after `atc` or `icd10`, units after a number"
    if token.type == "UNIT":
        return "a unit follows a number directly: `5.5 mmol/L`"
    return None


@cache
def keywords() -> frozenset[str]:
    """The reserved words of the language (the grammar's alphabetic literal terminals)."""
    return frozenset(
        t.pattern.value
        for t in rule_parser().terminals
        if isinstance(t.pattern, PatternStr) and t.pattern.value[:1].isalpha()
    )


def _line_end_hint(accepts: Iterable[str]) -> str | None:
    if {"NAME", "NUMBER"} <= set(accepts):
        return "a statement continues on the next line only after `and`, `or`, `,`, `=` or `(`"
    return None


def _token_span(token: Token, file: str) -> n.Span:
    line = token.line or 1
    column = token.column or 1
    end_line = token.end_line or line
    end_column = token.end_column or column + max(len(str(token)), 1)
    return n.Span(file, line, column, end_line, end_column)


def _end_span(text: str, file: str) -> n.Span:
    """The end of the text as written (the newline the parser appends is not part of it)."""
    lines = source_lines(text.removesuffix("\n") if text.endswith("\n") else text)
    line = len(lines)
    column = len(lines[-1]) + 1
    return n.Span(file, line, column, line, column + 1)


def _clamp(text: str, line: int, column: int) -> tuple[int, int]:
    lines = source_lines(text)
    line = min(max(line, 1), len(lines))
    return line, min(max(column, 1), len(lines[line - 1]) + 1)


# Tree → nodes ---------------------------------------------------------------------------------


def _span(meta: Meta, file: str) -> n.Span:
    if getattr(meta, "empty", True):
        return n.NO_SPAN
    return n.Span(file, meta.line, meta.column, meta.end_line, meta.end_column)


def _string_value(raw: str) -> str:
    """The content of a quoted string: ``\\"`` and ``\\\\`` are escapes, nothing else."""
    return re.sub(r'\\(["\\])', r"\1", raw[1:-1])


@v_args(inline=True, meta=True)
class _ToNodes(Transformer[Token, Any]):
    """One method per grammar rule or alias; each returns the node for it."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def _s(self, meta: Meta) -> n.Span:
        return _span(meta, self.file)

    def _ident(self, token: Token) -> n.Ident:
        return n.Ident(str(token), span=_token_span(token, self.file))

    # Declarations
    def start(self, meta: Meta, *decls: n.Decl) -> n.Pack:
        return n.Pack(tuple(decls), span=self._s(meta))

    def pack_decl(self, meta: Meta, name: Token, version: Token) -> n.PackHeader:
        return n.PackHeader(_string_value(name), _string_value(version), span=self._s(meta))

    def set_decl(self, meta: Meta, name: Token, body: n.InlineSet) -> n.SetDecl:
        return n.SetDecl(self._ident(name), body, span=self._s(meta))

    def atc_set(
        self, meta: Meta, items: tuple[n.SetItem, ...], excepts: Any, routes: Any = None
    ) -> n.InlineSet:
        return n.InlineSet("atc", items, excepts or (), routes, span=self._s(meta))

    def icd10_set(self, meta: Meta, items: tuple[n.SetItem, ...], excepts: Any) -> n.InlineSet:
        return n.InlineSet("icd10", items, excepts or (), span=self._s(meta))

    def route_set(self, meta: Meta, names: tuple[n.Ident, ...]) -> n.InlineSet:
        items = tuple(n.SetName(i.name, span=i.span) for i in names)
        return n.InlineSet("route", items, span=self._s(meta))

    def code_list(self, meta: Meta, *items: n.SetItem) -> tuple[n.SetItem, ...]:
        return items

    def code(self, meta: Meta, token: Token) -> n.Code:
        first, _, last = str(token).partition("..")
        return n.Code(first, last or None, span=self._s(meta))

    def exact_code(self, meta: Meta, token: Token) -> n.Code:
        first, _, last = str(token).partition("..")
        return n.Code(first, last or None, exact=True, span=self._s(meta))

    def set_name(self, meta: Meta, token: Token) -> n.SetName:
        return n.SetName(str(token), span=self._s(meta))

    def route_list(self, meta: Meta, *names: Token) -> tuple[n.Ident, ...]:
        return tuple(self._ident(t) for t in names)

    def param_decl(self, meta: Meta, name: Token, *rest: Any) -> n.ParamDecl:
        default, low, high, label = rest
        text = _string_value(label) if label is not None else None
        return n.ParamDecl(self._ident(name), default, low, high, text, span=self._s(meta))

    def quantity(self, meta: Meta, number: Token, unit: Token | None) -> n.Quantity:
        return n.Quantity(str(number), str(unit) if unit else None, span=self._s(meta))

    def define_decl(self, meta: Meta, name: Token, params: Any, body: n.Expr) -> n.DefineDecl:
        return n.DefineDecl(self._ident(name), params or (), body, span=self._s(meta))

    def define_params(self, meta: Meta, *names: Token) -> tuple[n.Ident, ...]:
        return tuple(self._ident(t) for t in names)

    # Rules
    def rule_decl(self, meta: Meta, rule_id: Token, title: Any, *lines: Any) -> n.RuleDecl:
        clauses: list[n.Clause] = []
        for line in lines:
            clauses.extend(line if isinstance(line, list) else [line])
        text = _string_value(title) if title is not None else None
        return n.RuleDecl(self._ident(rule_id), text, tuple(clauses), span=self._s(meta))

    def clause_line(self, meta: Meta, *clauses: n.Clause) -> list[n.Clause]:
        return list(clauses)

    def when_block(self, meta: Meta, *statements: n.Statement) -> n.WhenClause:
        return n.WhenClause(statements, span=self._s(meta))

    def binding(self, meta: Meta, name: Token, value: n.Expr) -> n.Binding:
        return n.Binding(self._ident(name), value, span=self._s(meta))

    def condition(self, meta: Meta, expr: n.Expr) -> n.Guard:
        return n.Guard(expr, span=self._s(meta))

    def version_clause(self, meta: Meta, number: Token) -> n.VersionClause:
        return n.VersionClause(str(number), span=self._s(meta))

    def problem_clause(self, meta: Meta, code: Token) -> n.ProblemClause:
        return n.ProblemClause(str(code), span=self._s(meta))

    def intervention_clause(self, meta: Meta, code: Token) -> n.InterventionClause:
        return n.InterventionClause(str(code), span=self._s(meta))

    def severity_clause(self, meta: Meta, name: Token) -> n.SeverityClause:
        return n.SeverityClause(self._ident(name), span=self._s(meta))

    def level_clause(self, meta: Meta, number: Token) -> n.LevelClause:
        return n.LevelClause(str(number), span=self._s(meta))

    def reference_clause(self, meta: Meta, text: Token) -> n.ReferenceClause:
        return n.ReferenceClause(_string_value(text), span=self._s(meta))

    def say_clause(self, meta: Meta, text: Token) -> n.SayClause:
        return n.SayClause(_template_parts(text, self.file), span=self._s(meta))

    def escalate_clause(self, meta: Meta, severity: Token, cond: n.Expr) -> n.EscalateClause:
        return n.EscalateClause(self._ident(severity), cond, span=self._s(meta))

    # Expressions
    def or_expr(self, meta: Meta, *operands: n.Expr) -> n.BoolOp:
        return n.BoolOp("or", operands, span=self._s(meta))

    def and_expr(self, meta: Meta, *operands: n.Expr) -> n.BoolOp:
        return n.BoolOp("and", operands, span=self._s(meta))

    def not_expr(self, meta: Meta, operand: n.Expr) -> n.Not:
        return n.Not(operand, span=self._s(meta))

    def compare(self, meta: Meta, left: n.Expr, op: Token, right: n.Expr) -> n.Compare:
        return n.Compare(cast(Any, str(op)), left, right, span=self._s(meta))

    def between(self, meta: Meta, value: n.Expr, low: n.Expr, high: n.Expr) -> n.Between:
        return n.Between(value, low, high, span=self._s(meta))

    def member(self, meta: Meta, value: n.Expr, target: Any) -> n.Member:
        return n.Member(value, target, span=self._s(meta))

    def qualitative(self, meta: Meta, value: n.Expr, word: Token) -> n.Qualitative:
        return n.Qualitative(value, cast(Any, str(word)), span=self._s(meta))

    def qualitative_word(self, meta: Meta, token: Token) -> Token:
        return token

    def fallback(self, meta: Meta, *items: n.Expr) -> n.Expr:
        result = items[0]
        for item in items[1:]:
            result = n.Otherwise(result, item, span=self._s(meta))
        return result

    def _fold(self, meta: Meta, items: tuple[Any, ...]) -> n.Expr:
        result: n.Expr = items[0]
        for op, right in zip(items[1::2], items[2::2], strict=True):
            span = n.Span(self.file, result.span.line, result.span.column,
                          right.span.end_line, right.span.end_column)  # fmt: skip
            result = n.Arith(cast(Any, str(op)), result, right, span=span)
        return result

    def sum(self, meta: Meta, *items: Any) -> n.Expr:
        return self._fold(meta, items)

    def product(self, meta: Meta, *items: Any) -> n.Expr:
        return self._fold(meta, items)

    def negate(self, meta: Meta, _minus: Token, operand: n.Expr) -> n.Negate:
        return n.Negate(operand, span=self._s(meta))

    def known(self, meta: Meta, operand: n.Expr) -> n.Known:
        return n.Known(operand, span=self._s(meta))

    def attribute(self, meta: Meta, target: n.Expr, name: Token) -> n.Attribute:
        return n.Attribute(target, self._ident(name), span=self._s(meta))

    def text(self, meta: Meta, token: Token) -> n.Text:
        return n.Text(_string_value(token), span=self._s(meta))

    def name(self, meta: Meta, token: Token) -> n.Name:
        return n.Name(str(token), span=self._s(meta))

    def call(self, meta: Meta, name: Token, *args: Token) -> n.Call:
        return n.Call(str(name), tuple(self._ident(a) for a in args), span=self._s(meta))

    # Queries
    def drug_filter(self, meta: Meta, set_ref: Any, routes: Any) -> tuple[Any, Any]:
        return set_ref, routes

    def bind_drug(self, meta: Meta, drug_filter: tuple[Any, Any]) -> n.BindDrug:
        return n.BindDrug(*drug_filter, span=self._s(meta))

    def any_drug(self, meta: Meta, drug_filter: tuple[Any, Any]) -> n.AnyDrug:
        return n.AnyDrug(*drug_filter, span=self._s(meta))

    def count_drugs(self, meta: Meta, drug_filter: tuple[Any, Any]) -> n.CountDrugs:
        return n.CountDrugs(*drug_filter, span=self._s(meta))

    def lab_kind(self, meta: Meta, token: Token) -> str:
        return str(token)

    def lab_select(self, meta: Meta, kind: str, concept: Token, window: Any) -> n.LabQuery:
        return n.LabQuery(cast(Any, kind), self._ident(concept), window, span=self._s(meta))

    def lab_count(self, meta: Meta, concept: Token, window: Any) -> n.LabQuery:
        return n.LabQuery("count", self._ident(concept), window, span=self._s(meta))

    def lab_none(self, meta: Meta, concept: Token, window: Any) -> n.LabQuery:
        return n.LabQuery("no", self._ident(concept), window, span=self._s(meta))

    def has_condition(self, meta: Meta, set_ref: n.SetRef, window: Any) -> n.HasCondition:
        return n.HasCondition(set_ref, False, window, span=self._s(meta))

    def has_active_condition(self, meta: Meta, set_ref: n.SetRef, window: Any) -> n.HasCondition:
        return n.HasCondition(set_ref, True, window, span=self._s(meta))

    def has_allergy(self, meta: Meta, drug: Token) -> n.HasAllergy:
        return n.HasAllergy(self._ident(drug), span=self._s(meta))

    def has_pregnancy(self, meta: Meta, window: Any) -> n.HasPregnancy:
        return n.HasPregnancy(window, span=self._s(meta))

    def daily_dose(self, meta: Meta, set_ref: n.SetRef) -> n.DailyDose:
        return n.DailyDose(set_ref, span=self._s(meta))

    def windowed(self, meta: Meta, name: Token, within: n.Expr) -> n.Windowed:
        return n.Windowed(str(name), within, span=self._s(meta))

    def window_within(self, meta: Meta, within: n.Expr, before: Any) -> n.Window:
        return n.Window(within=within, before=before, span=self._s(meta))

    def window_since(self, meta: Meta, since: n.Expr, before: Any) -> n.Window:
        return n.Window(since=since, before=before, span=self._s(meta))

    def window_before(self, meta: Meta, before: n.Expr) -> n.Window:
        return n.Window(before=before, span=self._s(meta))


# Message templates --------------------------------------------------------------------


def _template_parts(token: Token, file: str) -> tuple[n.TextPart | n.Placeholder, ...]:
    """Split ``"K+ {k} le {k.time}"`` into text and placeholders, each with its column."""
    raw = str(token)[1:-1]
    line = token.line or 1
    base = (token.column or 1) + 1  # column of the first character inside the quotes
    parts: list[n.TextPart | n.Placeholder] = []
    text: list[str] = []
    text_start = 0
    i = 0

    def flush(end: int) -> None:
        if text:
            span = n.Span(file, line, base + text_start, line, base + end)
            parts.append(n.TextPart("".join(text), span=span))
            text.clear()

    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw) and raw[i + 1] in '"\\':
            if not text:
                text_start = i
            text.append(raw[i + 1])
            i += 2
        elif raw.startswith("{{", i) or raw.startswith("}}", i):
            if not text:
                text_start = i
            text.append(ch)
            i += 2
        elif ch == "{":
            flush(i)
            close = raw.find("}", i)
            end = close + 1 if close >= 0 else len(raw)
            inner = raw[i + 1 : close] if close >= 0 else None
            path = tuple(inner.strip().split(".")) if inner is not None else ()
            span = n.Span(file, line, base + i, line, base + end)
            parts.append(n.Placeholder(path, span=span))
            i = end
        else:
            if not text:
                text_start = i
            text.append(ch)
            i += 1
    flush(len(raw))
    return tuple(parts)


def placeholder_is_well_formed(placeholder: n.Placeholder) -> bool:
    """``{k}`` or ``{k.time}``: one or two lowercase names."""
    return 1 <= len(placeholder.path) <= 2 and all(
        _PLACEHOLDER_NAME.fullmatch(part) for part in placeholder.path
    )
