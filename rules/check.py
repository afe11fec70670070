"""The checker: names, types, units, codes, ranges and structure of a parsed pack.

``check(pack)`` reports every problem of the pack at once (as ``Diagnostic`` data) and returns
what the IR stage needs: the resolved sets (ATC/ICD-10 prefixes, route names), the parameters
with their range, the definitions, each rule's clauses, and the expression ``Annotations``
(types, literals in canonical units, conversions, name resolutions).

>>> from vigie.rules.parser import parse
>>> result = check(parse('pack "p" version "1.0.0"\\nset x = atc C9A\\n', "p.rules"))
>>> [d.code for d in result.diagnostics]
['R050']
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from typing import NamedTuple

from vigie.rules import nodes as n
from vigie.rules.check_expressions import (
    Annotations,
    ExpressionChecker,
    PackSymbols,
    ParamInfo,
    Resolution,
    Scope,
)
from vigie.rules.concepts import Catalogue, default_catalogue
from vigie.rules.diagnostics import Diagnostic, close_matches, error, sort_diagnostics, warning
from vigie.rules.parser import placeholder_is_well_formed
from vigie.rules.plausibility import atc_close_codes, atc_plausible, known_atc_codes
from vigie.rules.types import DERIVED, ERROR, LAB_ATTRIBUTES, ORDER_ATTRIBUTES, Kind, Type, quantity
from vigie.rules.units import unit_factor, unit_hint, unit_info
from vigie.terminology.sfpc import PROBLEM_DISPLAYS

__all__ = [
    "INTERVENTION_CODES",
    "PROBLEM_CODES",
    "SEVERITIES",
    "CheckResult",
    "ResolvedSet",
    "RuleInfo",
    "SetTerm",
    "check",
    "iter_nodes",
]

# SFPC pharmaceutical intervention codes (Interop'Santé code systems, see
# shared/data/fr-medication-ig/sfpc_pharmaceutical_intervention_codesystems/).
PROBLEM_CODES = PROBLEM_DISPLAYS
INTERVENTION_CODES = {
    "1": "Ajout (prescription nouvelle)",
    "2": "Arrêt",
    "3": "Substitution/échange",
    "4": "Choix de la voie d'administration",
    "5": "Suivi thérapeutique",
    "6": "Optimisation modalités d'administration",
    "7": "Adaptation posologique",
}
SEVERITIES = ("critical", "major", "moderate", "minor")

_ATC = re.compile(r"[ABCDGHJLMNPRSV]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?")
_ICD10 = re.compile(r"[A-Z]([0-9]([0-9A-Z](\.[0-9A-Z]{1,4})?)?)?")
_ICD10_UNDOTTED = re.compile(r"([A-Z][0-9][0-9A-Z])([0-9A-Z]{1,4})")
_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+")
_MAX_RANGE = 500


class SetTerm(NamedTuple):
    """Codes matched alike: ``include`` prefixes less the ``exclude`` prefixes, ``exact`` codes
    (``exactly N05AX``) only when equal; ``routes``: a drug line with a known route outside
    them is not matched (None: any route)."""

    include: tuple[str, ...]
    exclude: tuple[str, ...]
    exact: tuple[str, ...] = ()
    routes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ResolvedSet:
    """A set as the evaluator matches it: a code is in the set when some term includes a
    prefix of it and excludes none, or lists it as exact (routes: equality instead of
    prefixes)."""

    system: str
    terms: tuple[SetTerm, ...]
    span: n.Span


@dataclass
class RuleInfo:
    decl: n.RuleDecl
    version: int = 1
    problem: str | None = None
    intervention: str | None = None
    severity: str | None = None
    level: int = 1
    reference: str | None = None
    statements: tuple[n.Statement, ...] = ()
    escalations: tuple[n.EscalateClause, ...] = ()
    say: n.SayClause | None = None
    bindings: dict[str, Type] = field(default_factory=dict)


@dataclass
class CheckResult:
    pack: n.Pack
    header: n.PackHeader | None
    sets: dict[str, ResolvedSet]
    params: dict[str, ParamInfo]
    defines: dict[str, tuple[n.DefineDecl, Type]]
    rules: list[RuleInfo]
    notes: Annotations
    diagnostics: list[Diagnostic]

    @property
    def ok(self) -> bool:
        return not any(d.is_error for d in self.diagnostics)


def check(
    pack: n.Pack,
    catalogue: Catalogue | None = None,
    *,
    lost_names: Iterable[str] = (),
) -> CheckResult:
    """Check a parsed pack; ``lost_names`` are declarations a syntax error dropped."""
    return _PackChecker(pack, catalogue or default_catalogue(), frozenset(lost_names)).run()


def iter_nodes(node: object) -> Iterator[n.Node]:
    """Every node under ``node`` (itself included), depth first in field order."""
    if isinstance(node, n.Node):
        yield node
        for f in fields(node):
            if f.name != "span":
                yield from iter_nodes(getattr(node, f.name))
    elif isinstance(node, tuple):
        for item in node:
            yield from iter_nodes(item)


class _PackChecker:
    def __init__(self, pack: n.Pack, catalogue: Catalogue, lost: frozenset[str]) -> None:
        self.pack = pack
        self.catalogue = catalogue
        self.lost = lost
        self.diagnostics: list[Diagnostic] = []
        self.notes = Annotations()
        self.symbols = PackSymbols(catalogue, lost=lost)
        self.set_decls: dict[str, n.SetDecl] = {}
        self.resolved: dict[str, ResolvedSet | None] = {}
        self.resolving: set[str] = set()
        self.exprs = ExpressionChecker(
            self.symbols, self.notes, self.diagnostics.append, self.set_ref, self.route_names
        )

    def _error(self, code: str, message: str, node: n.Node, hint: str | None = None) -> None:
        self.diagnostics.append(error(code, message, node.span, hint))

    def run(self) -> CheckResult:
        header = self._header()
        self._collect_sets()
        self._params()
        self._defines()
        rules = self._rules()
        return CheckResult(
            self.pack,
            header,
            {k: v for k, v in sorted(self.resolved.items()) if v is not None},
            self.symbols.params,
            self.symbols.defines,
            rules,
            self.notes,
            sort_diagnostics(self.diagnostics),
        )

    # Pack header ----------------------------------------------------------------

    def _header(self) -> n.PackHeader | None:
        headers = [d for d in self.pack.decls if isinstance(d, n.PackHeader)]
        example = 'a pack starts with `pack "name" version "1.0.0"`'
        if not headers:
            if "<pack>" not in self.lost:
                at = self.pack.decls[0] if self.pack.decls else self.pack
                span = at.span if at.span.line else n.Span(self._file(), 1, 1, 1, 2)
                self.diagnostics.append(error("R075", "the pack header is missing", span, example))
            return None
        if self.pack.decls[0] is not headers[0]:
            self._error("R075", "the pack header must come first", headers[0], example)
        for extra in headers[1:]:
            self._error("R075", "a pack has one header", extra)
        if not _VERSION.fullmatch(headers[0].version):
            hint = 'e.g. version "1.0.0"'
            message = f"pack version '{headers[0].version}' is not x.y.z"
            self._error("R059", message, headers[0], hint)
        return headers[0]

    def _file(self) -> str:
        for node in iter_nodes(self.pack):
            if node.span.line:
                return node.span.file
        return "<string>"

    # Sets ----------------------------------------------------------------

    def _collect_sets(self) -> None:
        for decl in self.pack.decls:
            if isinstance(decl, n.SetDecl):
                if decl.name.name in self.set_decls:
                    self._repeated(decl.name, self.set_decls[decl.name.name].name, "set")
                    continue
                self.set_decls[decl.name.name] = decl
                self.symbols.sets[decl.name.name] = decl.body.system
        for name in self.set_decls:
            self._resolve_set(name)

    def _repeated(self, ident: n.Ident, first: n.Ident, what: str) -> None:
        message = f"{what} '{ident.name}' is already declared on line {first.span.line}"
        self._error("R016", message, ident)

    def _resolve_set(self, name: str) -> ResolvedSet | None:
        if name in self.resolved:
            return self.resolved[name]
        decl = self.set_decls[name]
        if name in self.resolving:
            self._error("R017", f"set '{name}' contains itself", decl.name)
            return None
        self.resolving.add(name)
        result = self._resolve_body(decl.body)
        self.resolving.discard(name)
        self.resolved[name] = result
        return result

    def _resolve_body(self, body: n.InlineSet) -> ResolvedSet:
        if body.system == "route":
            names = set[str]().union(*(self._route_item(item) for item in body.items))
            return ResolvedSet("route", (SetTerm(tuple(sorted(names)), ()),), body.span)
        excepts = tuple(sorted(set(self._except_codes(body))))
        routes = self._set_routes(body)
        own: set[str] = set()
        exact: set[str] = set()
        terms: list[SetTerm] = []
        for item in body.items:
            if isinstance(item, n.Code):
                (exact if item.exact else own).update(self._codes(item, body.system))
            else:
                terms.extend(self._nested_terms(item, body.system, excepts, routes))
        exact = {code for code in exact if not code.startswith(excepts)}
        if own or exact:
            terms.insert(0, SetTerm(tuple(sorted(own)), excepts, tuple(sorted(exact)), routes))
        return ResolvedSet(body.system, _merge_terms(terms), body.span)

    def _set_routes(self, body: n.InlineSet) -> tuple[str, ...] | None:
        """The canonical routes of ``atc ... route iv, im`` (None: no route restriction)."""
        if body.routes is None:
            return None
        routes = set[str]().union(*(self.route_names(ident) for ident in body.routes))
        return tuple(sorted(routes))

    def _nested_terms(
        self,
        item: n.SetName,
        system: str,
        excepts: tuple[str, ...],
        routes: tuple[str, ...] | None,
    ) -> list[SetTerm]:
        if item.name not in self.set_decls:
            self._unknown_set(item)
            return []
        nested = self._resolve_set(item.name)
        if nested is None:
            return []
        if nested.system != system:
            message = f"set '{item.name}' holds {nested.system} codes, not {system}"
            self._error("R030", message, item)
            return []
        return [
            SetTerm(
                term.include,
                tuple(sorted(set(term.exclude) | set(excepts))),
                tuple(code for code in term.exact if not code.startswith(excepts)),
                _both_routes(term.routes, routes),
            )
            for term in nested.terms
        ]

    def _except_codes(self, body: n.InlineSet) -> list[str]:
        codes: list[str] = []
        for item in body.excepts:
            if isinstance(item, n.Code) and item.exact:
                hint = "a code after `except` leaves out itself and the codes below it"
                self._error("R030", "`exactly` is not allowed after `except`", item, hint)
            elif isinstance(item, n.Code):
                codes.extend(self._codes(item, body.system, excluded=True))
            else:
                self._error("R030", "list codes after `except`, not a set", item)
        return codes

    def _codes(self, code: n.Code, system: str, *, excluded: bool = False) -> list[str]:
        """The codes a code item stands for (a range expanded), each checked for shape; an ATC
        code no product is known by is reported, unless ``excluded`` (after `except`: leaving
        out a code that matches nothing is harmless)."""
        texts = [code.text] if code.last is None else self._expand(code)
        codes = [text for text in texts if self._code_shape_ok(text, system, code)]
        if code.exact and system != "atc":
            self._error("R030", "`exactly` is for ATC codes", code)
        elif code.exact and codes and not excluded:
            if not any(c in known_atc_codes() for c in codes):
                self._unknown_exact_atc(code, codes)
        elif system == "atc" and codes and not excluded and not any(map(atc_plausible, codes)):
            self._unknown_atc(code, codes)
        return codes

    def _unknown_exact_atc(self, code: n.Code, codes: list[str]) -> None:
        """R060 (warning): ``exactly X`` where no known product is coded X itself (the codes
        below it are not in the set, so it would match nothing)."""
        text = code.text if code.last is None else f"{code.text}..{code.last}"
        message = f"no known product is coded exactly {text}"
        below = sorted(c for c in known_atc_codes() if c.startswith(codes[0]) and c != codes[0])
        hint = (
            f"known products are coded below it ({', '.join(below[:3])}); "
            f"without `exactly`, {text} covers them"
            if below
            else None
        )
        self.diagnostics.append(warning("R060", message, code.span, hint))

    def _unknown_atc(self, code: n.Code, codes: list[str]) -> None:
        """R060 (warning): no known code nor a plausible neighbour of one (nor, for a range,
        any code of it)."""
        text = code.text if code.last is None else f"{code.text}..{code.last}"
        what = "ATC code" if code.last is None else "ATC range"
        message = f"{what} {text} matches no known product"
        close = atc_close_codes(codes[0])
        hint = f"known codes nearby: {', '.join(close)}" if close else None
        self.diagnostics.append(warning("R060", message, code.span, hint))

    def _expand(self, code: n.Code) -> list[str]:
        first, last = code.text, code.last or code.text
        a = re.fullmatch(r"(.*?)([0-9]+)", first)
        b = re.fullmatch(r"(.*?)([0-9]+)", last)
        if (
            a is None
            or b is None
            or a.group(1) != b.group(1)
            or len(a.group(2)) != len(b.group(2))
            or not 0 <= int(b.group(2)) - int(a.group(2)) < _MAX_RANGE
        ):
            hint = "a range changes only its last digits: B01AF01..B01AF03, K25..K28"
            self._error("R057", f"cannot expand the range {first}..{last}", code, hint)
            return []
        prefix, width = a.group(1), len(a.group(2))
        return [f"{prefix}{i:0{width}d}" for i in range(int(a.group(2)), int(b.group(2)) + 1)]

    def _code_shape_ok(self, text: str, system: str, node: n.Node) -> bool:
        if system == "atc" and not _ATC.fullmatch(text):
            hint = "ATC codes look like C09AA01, or a prefix of one: C, C09, C09A, C09AA"
            self._error("R050", f"'{text}' is not an ATC code or prefix", node, hint)
            return False
        if system == "icd10" and not _ICD10.fullmatch(text):
            undotted = _ICD10_UNDOTTED.fullmatch(text)
            hint = (
                f"write {undotted.group(1)}.{undotted.group(2)}"
                if undotted
                else "ICD-10 codes look like K92.0, or a prefix: K92, K9, K"
            )
            self._error("R051", f"'{text}' is not an ICD-10 code or prefix", node, hint)
            return False
        return True

    def _route_item(self, item: n.SetItem) -> set[str]:
        if isinstance(item, n.Code):
            self._error("R014", f"'{item.text}' is not a route", item)
            return set()
        return self.route_names(n.Ident(item.name, span=item.span))

    def route_names(self, ident: n.Ident) -> set[str]:
        """A canonical route (``oral``) or a route set → the routes it stands for."""
        if ident.name in self.catalogue.routes:  # a route wins over a set of the same name
            return {ident.name}
        if ident.name in self.set_decls:
            resolved = self._resolve_set(ident.name)
            if resolved is None:
                return set()
            if resolved.system != "route":
                self._error("R030", f"set '{ident.name}' is not a set of routes", ident)
                return set()
            return set(resolved.terms[0][0]) if resolved.terms else set()
        if ident.name not in self.lost:
            candidates = {r: r for r in self.catalogue.routes}
            candidates.update({s: s for s, d in self.set_decls.items() if d.body.system == "route"})
            candidates.update(self.catalogue.route_spellings)
            found = close_matches(ident.name, candidates)
            hint = f"did you mean '{found[0]}'?" if found else None
            known = ", ".join(sorted(self.catalogue.routes))
            self._error("R014", f"unknown route '{ident.name}' (routes: {known})", ident, hint)
        return set()

    def set_ref(self, ref: n.SetRef, system: str) -> str | None:
        """The IR name of a set reference, checking it holds ``system`` codes."""
        resolved: ResolvedSet | None
        if isinstance(ref, n.InlineSet):
            name = f"@{ref.span.line}:{ref.span.column}"
            self.resolved[name] = resolved = self._resolve_body(ref)
        else:
            if ref.name not in self.set_decls:
                self._unknown_set(ref)
                return None
            name = ref.name
            resolved = self._resolve_set(name)
        if resolved is None:
            return None
        if resolved.system != system:
            message = f"'{name}' is a set of {resolved.system} codes; {system} is needed here"
            self._error("R030", message, ref)
            return None
        return name

    def _unknown_set(self, ref: n.SetName) -> None:
        if ref.name in self.lost:
            return
        found = close_matches(ref.name, {s: s for s in self.set_decls})
        hint = f"did you mean '{found[0]}'?" if found else None
        upper = ref.name.upper()
        if hint is None and (_ATC.fullmatch(upper) or _ICD10.fullmatch(upper)):
            hint = f"codes are uppercase: {upper}"
        self._error("R011", f"unknown set '{ref.name}'", ref, hint)

    # Parameters ----------------------------------------------------------------

    def _params(self) -> None:
        for decl in self.pack.decls:
            if not isinstance(decl, n.ParamDecl):
                continue
            name = decl.name.name
            if name in self.symbols.params:
                self._repeated(decl.name, self.symbols.params[name].decl.name, "parameter")
                continue
            if name in DERIVED:
                self._error(
                    "R015", f"parameter '{name}' hides the derived value '{name}'", decl.name
                )
            info = self._param(decl)
            if info is not None:
                self.symbols.params[name] = info

    def _param(self, decl: n.ParamDecl) -> ParamInfo | None:
        default = decl.default
        if default.unit is None:
            param_type = Type(Kind.QUANTITY, "ratio", "1", None, bare=True)
        else:
            info = unit_info(default.unit, self.catalogue)
            if info is None:
                hint = unit_hint(default.unit, self.catalogue)
                self._error("R032", f"unknown unit '{default.unit}'", default, hint)
                return ParamInfo(decl, ERROR, 0.0, 0.0, 0.0)
            param_type = quantity(info.dimension, info.symbol)
        low = self._bound(decl.low, param_type)
        high = self._bound(decl.high, param_type)
        value = float(default.number)
        if low is None or high is None:
            return ParamInfo(decl, param_type, value, value, value)
        unit = param_type.unit if not param_type.bare else ""
        if low > high:
            self._error("R055", f"the range {low:g} .. {high:g} {unit} is empty", decl.low)
        elif not low <= value <= high:
            message = f"default {value:g} {unit} is outside {low:g} .. {high:g}".replace("  ", " ")
            self._error("R055", message, default, "the default must lie inside the range")
        return ParamInfo(decl, param_type, value, low, high)

    def _bound(self, bound: n.Quantity, param_type: Type) -> float | None:
        """A range bound in the default's unit (a bound without unit takes the default's)."""
        number = float(bound.number)
        if bound.unit is None or param_type.unit is None:
            return number
        info = unit_info(bound.unit, self.catalogue)
        if info is None:
            hint = unit_hint(bound.unit, self.catalogue)
            self._error("R032", f"unknown unit '{bound.unit}'", bound, hint)
            return None
        factor = unit_factor(info.symbol, param_type.unit, self.catalogue)
        if factor is None:
            message = f"bound in {info.symbol} but the default is in {param_type.unit}"
            self._error("R056", message, bound, "bounds and default share one dimension")
            return None
        return number * factor

    # Definitions ----------------------------------------------------------------

    def _defines(self) -> None:
        decls: dict[str, n.DefineDecl] = {}
        for decl in self.pack.decls:
            if not isinstance(decl, n.DefineDecl):
                continue
            name = decl.name.name
            if name in decls:
                self._repeated(decl.name, decls[name].name, "definition")
            elif name in self.symbols.params:
                self._repeated(decl.name, self.symbols.params[name].decl.name, "name")
            elif name in DERIVED:
                self._error("R015", f"definition '{name}' hides the derived value", decl.name)
            else:
                decls[name] = decl
        state: dict[str, str] = {}
        for name in decls:
            self._define(name, decls, state)

    def _define(self, name: str, decls: dict[str, n.DefineDecl], state: dict[str, str]) -> None:
        """Check a definition after those it uses (depth first); a cycle is R017."""
        if state.get(name) == "done":
            return
        decl = decls[name]
        if state.get(name) == "active":
            self._error("R017", f"definition '{name}' refers to itself", decl.name)
            self.symbols.defines[name] = (decl, ERROR)
            return
        state[name] = "active"
        for used in _names_used(decl.body):
            if used in decls and used != name and used not in {p.name for p in decl.params}:
                self._define(used, decls, state)
            elif used == name:
                self._error("R017", f"definition '{name}' refers to itself", decl.name)
                self.symbols.defines[name] = (decl, ERROR)
        if name not in self.symbols.defines:
            params = {p.name: Type(Kind.ORDER) for p in decl.params}
            scope = Scope(bindings=params, in_define=name)
            self.symbols.defines[name] = (decl, ERROR)  # placeholder while checking the body
            self.symbols.defines[name] = (decl, self.exprs.expr(decl.body, scope))
        state[name] = "done"

    # Rules ----------------------------------------------------------------

    def _rules(self) -> list[RuleInfo]:
        seen: dict[str, n.RuleDecl] = {}
        rules: list[RuleInfo] = []
        for decl in self.pack.decls:
            if not isinstance(decl, n.RuleDecl):
                continue
            rule_id = decl.rule_id.name
            if rule_id in seen:
                line = seen[rule_id].span.line
                message = f"rule '{rule_id}' is already defined on line {line}"
                self._error("R070", message, decl.rule_id)
                self._rule(decl)  # its own mistakes are still worth reporting
                continue
            seen[rule_id] = decl
            rules.append(self._rule(decl))
        return rules

    def _rule(self, decl: n.RuleDecl) -> RuleInfo:
        info = RuleInfo(decl)
        if decl.title is None:
            hint = f'rule {decl.rule_id.name} "Title of the alert"'
            self._error("R076", "the rule has no title", decl.rule_id, hint)
        self._clauses(decl, info)
        scope = Scope()
        self._statements(info, scope)
        for clause in info.escalations:
            self._severity(clause.severity)
            self.exprs.condition(clause.condition, scope, "`escalate … when`")
        if info.say is not None:
            self._message(info.say, scope)
        self._unused_bindings(info, scope)
        info.bindings = dict(scope.bindings)
        return info

    def _clauses(self, decl: n.RuleDecl, info: RuleInfo) -> None:
        seen: dict[type, n.Clause] = {}
        statements: list[n.Statement] = []
        escalations: list[n.EscalateClause] = []
        for clause in decl.clauses:
            if isinstance(clause, n.EscalateClause):
                escalations.append(clause)
                continue
            if type(clause) in seen:
                keyword = _clause_keyword(clause)
                line = seen[type(clause)].span.line
                self._error("R074", f"`{keyword}` is already given on line {line}", clause)
                continue
            seen[type(clause)] = clause
            self._clause(clause, info, statements)
        info.statements = tuple(statements)
        info.escalations = tuple(escalations)
        self._missing_clauses(decl, seen)

    def _clause(self, clause: n.Clause, info: RuleInfo, statements: list[n.Statement]) -> None:
        if isinstance(clause, n.VersionClause):
            info.version = self._positive(clause.number, "version", clause)
        elif isinstance(clause, n.LevelClause):
            info.level = self._positive(clause.number, "level", clause)
        elif isinstance(clause, n.ProblemClause):
            info.problem = self._sfpc(clause.code, PROBLEM_CODES, "R052", "problem", clause)
        elif isinstance(clause, n.InterventionClause):
            codes = INTERVENTION_CODES
            info.intervention = self._sfpc(clause.code, codes, "R053", "intervention", clause)
        elif isinstance(clause, n.SeverityClause):
            info.severity = self._severity(clause.severity)
        elif isinstance(clause, n.ReferenceClause):
            info.reference = clause.text
        elif isinstance(clause, n.SayClause):
            info.say = clause
        elif isinstance(clause, n.WhenClause):
            statements.extend(clause.statements)

    def _missing_clauses(self, decl: n.RuleDecl, seen: dict[type, n.Clause]) -> None:
        where = decl.rule_id
        if n.WhenClause not in seen:
            self._error("R071", "the rule has no `when`", where, "add `when` and its conditions")
        if n.SayClause not in seen:
            self._error("R072", "the rule has no `say`", where, 'add `say "message {name}"`')
        missing = [
            keyword
            for keyword, kind in (
                ("problem", n.ProblemClause),
                ("intervention", n.InterventionClause),
                ("severity", n.SeverityClause),
            )
            if kind not in seen
        ]
        if missing:
            message = "the rule has no " + " or ".join(f"`{m}`" for m in missing)
            hint = "e.g. `problem 7 intervention 2 severity major level 1`"
            self._error("R073", message, where, hint)

    def _positive(self, text: str, what: str, node: n.Node) -> int:
        if not text.isdigit() or int(text) < 1:
            self._error("R058", f"{what} must be a whole number from 1; got {text}", node)
            return 1
        return int(text)

    def _sfpc(
        self, code: str, codes: dict[str, str], diag: str, what: str, node: n.Node
    ) -> str | None:
        if code in codes:
            return code
        listed = ", ".join(codes)
        self._error(diag, f"unknown SFPC {what} code '{code}'", node, f"codes: {listed}")
        return None

    def _severity(self, ident: n.Ident) -> str | None:
        if ident.name in SEVERITIES:
            return ident.name
        found = close_matches(ident.name, {s: s for s in SEVERITIES})
        hint = f"did you mean '{found[0]}'?" if found else "severities: " + ", ".join(SEVERITIES)
        self._error("R054", f"unknown severity '{ident.name}'", ident, hint)
        return None

    def _statements(self, info: RuleInfo, scope: Scope) -> None:
        for statement in info.statements:
            if isinstance(statement, n.Binding):
                scope.later.setdefault(statement.name.name, statement.span.line)
        for statement in info.statements:
            if isinstance(statement, n.Binding):
                self._binding(statement, scope)
                continue
            result = self.exprs.expr(statement.expr, scope)
            if result.kind not in (Kind.BOOL, Kind.ERROR):
                message = f"a statement is a condition or `name = …`; this is {result.describe()}"
                self._error("R033", message, statement.expr)

    def _binding(self, statement: n.Binding, scope: Scope) -> None:
        name = statement.name.name
        if scope.later.get(name) == statement.span.line:
            del scope.later[name]
        shadowed = self._shadowed_kind(name)
        if name in scope.bindings:
            self._error("R015", f"'{name}' is already bound in this rule", statement.name)
        elif shadowed:
            hint = "choose another name" + ("; compare with `==`" if name in DERIVED else "")
            message = f"binding '{name}' hides the {shadowed} '{name}'"
            self._error("R015", message, statement.name, hint)
        scope.bindings[name] = self.exprs.binding_value(statement.value, scope)

    def _shadowed_kind(self, name: str) -> str | None:
        if name in self.symbols.params:
            return "parameter"
        if name in self.symbols.defines:
            return "definition"
        if name in DERIVED:
            return "derived value"
        return None

    def _message(self, say: n.SayClause, scope: Scope) -> None:
        for part in say.parts:
            if isinstance(part, n.Placeholder):
                self._placeholder(part, scope)

    def _placeholder(self, part: n.Placeholder, scope: Scope) -> None:
        if not placeholder_is_well_formed(part):
            hint = "a placeholder is `{name}` or `{name.attribute}`; write `{{` for a brace"
            inner = ".".join(part.path) if part.path else "unclosed `{`"
            self._error("R035", f"bad placeholder {{{inner}}}", part, hint)
            return
        head = part.path[0]
        resolution, head_type = self._placeholder_head(head, scope)
        if resolution is None:
            candidates = {name: name for name in (*scope.bindings, *self.symbols.params, *DERIVED)}
            found = close_matches(head, candidates)
            hint = f"did you mean '{found[0]}'?" if found else "name a binding of the rule"
            self._error("R035", f"the message names '{head}', which is not bound", part, hint)
            return
        if resolution.kind == "binding":
            scope.used.add(head)
        self.notes.names[id(part)] = resolution
        self.notes.types[id(part)] = self._placeholder_type(part, head_type)

    def _placeholder_head(self, head: str, scope: Scope) -> tuple[Resolution | None, Type]:
        if head in scope.bindings:
            return Resolution("binding", head), scope.bindings[head]
        if head in self.symbols.params:
            return Resolution("param", head), self.symbols.params[head].type
        if head in self.symbols.defines and not self.symbols.defines[head][0].params:
            return Resolution("define", head), self.symbols.defines[head][1]
        if head in DERIVED:
            return Resolution("derived", head), DERIVED[head]
        return None, ERROR

    def _placeholder_type(self, part: n.Placeholder, head_type: Type) -> Type:
        if len(part.path) == 1:
            return head_type
        attribute = part.path[1]
        if head_type.kind is Kind.ORDER and attribute in ORDER_ATTRIBUTES:
            return ORDER_ATTRIBUTES[attribute]
        if head_type.kind is Kind.LAB and attribute in LAB_ATTRIBUTES:
            return {"time": Type(Kind.TIME), "unit": Type(Kind.TEXT)}.get(
                attribute, head_type.as_value()
            )
        if head_type.kind is Kind.ERROR:
            return ERROR
        allowed = ORDER_ATTRIBUTES if head_type.kind is Kind.ORDER else LAB_ATTRIBUTES
        found = close_matches(attribute, {a: a for a in allowed})
        hint = f"did you mean '{found[0]}'?" if found else None
        message = f"{head_type.describe()} has no attribute '{attribute}'"
        self._error("R035", message, part, hint)
        return ERROR

    def _unused_bindings(self, info: RuleInfo, scope: Scope) -> None:
        for statement in info.statements:
            if not isinstance(statement, n.Binding):
                continue
            name = statement.name.name
            if name not in scope.used and scope.bindings.get(name, ERROR).kind is not Kind.ORDER:
                message = f"'{name}' is bound but never used"
                hint = "use it in a condition or the message, or remove it"
                self.diagnostics.append(warning("R019", message, statement.name.span, hint))


def _names_used(expr: n.Expr) -> set[str]:
    used: set[str] = set()
    for node in iter_nodes(expr):
        if isinstance(node, n.Name | n.Call):
            used.add(node.name)
    return used


def _merge_terms(terms: list[SetTerm]) -> tuple[SetTerm, ...]:
    """Terms with the same exclusions and routes merged, each sorted: one canonical form per
    set."""
    merged: dict[tuple[tuple[str, ...], tuple[str, ...] | None], tuple[set[str], set[str]]] = {}
    for term in terms:
        include, exact = merged.setdefault((term.exclude, term.routes), (set(), set()))
        include.update(term.include)
        exact.update(term.exact)
    out = [
        SetTerm(tuple(sorted(inc)), exc, tuple(sorted(exact)), routes)
        for (exc, routes), (inc, exact) in merged.items()
        if inc or exact
    ]
    return tuple(sorted(out, key=lambda t: (t.routes or (), t.exclude, t.include, t.exact)))


def _both_routes(
    inner: tuple[str, ...] | None, outer: tuple[str, ...] | None
) -> tuple[str, ...] | None:
    """A nested set's routes within the outer set's: both restrictions hold."""
    if inner is None or outer is None:
        return inner if outer is None else outer
    return tuple(sorted(set(inner) & set(outer)))


def _clause_keyword(clause: n.Clause) -> str:
    return type(clause).__name__.removesuffix("Clause").lower()
