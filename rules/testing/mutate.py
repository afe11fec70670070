"""Mutation check of a rule pack: does some test notice when a threshold or a window moves?

Every number written in the pack's rules and definitions (a threshold ``> 5.5 mmol/L``, a
look-back ``within 48 h``, a dose ``> 1000 mg``, a ratio ``1.5``) gives two mutants: the number
doubled and halved; a cursor (``param``) gives its two declared bounds in place of its default.
Each mutant is compiled and the pack's rule test cases are run against it. A mutant is *killed*
when some case fails, and *survives* when every case still passes: the tests would not have
noticed that mistake in the pack. A mutant that does not compile (a bound outside a cursor's
range...) is counted apart, neither killed nor surviving.

``vigie rules mutate PACK [--only RULE...]`` prints every mutant with its place and outcome,
then the survivors; it exits 1 when one survives.

>>> _scaled("48", 2.0), _scaled("7", 0.5), _scaled("1.5", 2.0), _scaled("0.6", 0.5)
('96', '3.5', '3', '0.3')
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, is_dataclass
from decimal import Decimal
from pathlib import Path
from typing import TextIO

from vigie.rules import nodes as n
from vigie.rules.compile import compile_files
from vigie.rules.parser import parse
from vigie.rules.testing.runner import PackCache, discover_test_files, run_tests

__all__ = ["Mutant", "MutationReport", "mutants", "mutate_command", "run_mutants"]


@dataclass(frozen=True)
class Mutant:
    """One change of the pack's text: ``written`` at ``line``:``column`` becomes ``new``."""

    owner: str  # "rule renal.metformin", "define pregnant", "param k_max"
    line: int
    column: int
    written: str
    new: str
    how: str  # "doubled", "halved", "low bound", "high bound"

    def apply(self, source: str) -> str:
        lines = source.splitlines(keepends=True)
        text = lines[self.line - 1]
        start = self.column - 1
        assert text[start : start + len(self.written)] == self.written, (self, text)
        lines[self.line - 1] = text[:start] + self.new + text[start + len(self.written) :]
        return "".join(lines)

    def describe(self) -> str:
        where = f"line {self.line}:{self.column} {self.owner}"
        return f"{where}: {self.written} -> {self.new} ({self.how})"


def _scaled(number: str, factor: float) -> str:
    """``number`` times ``factor``, written without a needless decimal part."""
    value = Decimal(number) * Decimal(str(factor))
    text = format(value.normalize(), "f")
    return text


def _quantities(node: object) -> Iterator[n.Quantity]:
    """Every Quantity under a node, in source order."""
    if isinstance(node, n.Quantity):
        yield node
        return
    if isinstance(node, tuple | list):
        for item in node:
            yield from _quantities(item)
        return
    if is_dataclass(node) and not isinstance(node, type):
        for field in fields(node):
            if field.name != "span":
                yield from _quantities(getattr(node, field.name))


def mutants(source: str, file: str = "<pack>", only: Sequence[str] = ()) -> list[Mutant]:
    """The mutants of a pack's text (see the module's docstring), in source order."""
    found: list[Mutant] = []
    for decl in parse(source, file).decls:
        if isinstance(decl, n.ParamDecl):
            owner = f"param {decl.name.name}"
            if only and not any(name in owner for name in only):
                continue
            default = decl.default
            for bound, how in ((decl.low, "low bound"), (decl.high, "high bound")):
                if bound.number != default.number:
                    span = default.span
                    found.append(
                        Mutant(owner, span.line, span.column, default.number, bound.number, how)
                    )
            continue
        if isinstance(decl, n.RuleDecl):
            owner = f"rule {decl.rule_id.name}"
        elif isinstance(decl, n.DefineDecl):
            owner = f"define {decl.name.name}"
        else:
            continue
        if only and not any(name in owner for name in only):
            continue
        for quantity in _quantities(decl):
            span = quantity.span
            for factor, how in ((2.0, "doubled"), (0.5, "halved")):
                new = _scaled(quantity.number, factor)
                found.append(Mutant(owner, span.line, span.column, quantity.number, new, how))
    return found


@dataclass
class MutationReport:
    killed: list[tuple[Mutant, str]]  # with the first failing case
    survived: list[Mutant]
    invalid: list[tuple[Mutant, str]]  # with the first compile error
    failing: list[str]  # cases that fail on the pack as it is: they cannot kill a mutant

    def lines(self) -> Iterator[str]:
        for case in self.failing:
            yield f"ignored   case {case!r}: it fails on the pack as written"
        for mutant, case in self.killed:
            yield f"killed    {mutant.describe()}  [by {case}]"
        for mutant, error in self.invalid:
            yield f"invalid   {mutant.describe()}  [{error}]"
        for mutant in self.survived:
            yield f"SURVIVED  {mutant.describe()}"
        total = len(self.killed) + len(self.survived)
        yield (
            f"{total} mutants: {len(self.killed)} killed, {len(self.survived)} survived"
            f" ({len(self.invalid)} did not compile)"
        )


def run_mutants(pack: Path, tests: Sequence[Path], chosen: Sequence[Mutant]) -> MutationReport:
    """Compile each mutant of ``pack`` and run ``tests`` (rule test case files) against it."""
    source = pack.read_text(encoding="utf-8")
    cache = PackCache()  # the other packs the cases name are compiled once
    baseline = run_tests(list(tests), cache=cache).results
    failing = {result.case.id for result in baseline if not result.passed}
    report = MutationReport([], [], [], sorted(failing))
    with tempfile.TemporaryDirectory(prefix="vigie-mutant-") as folder:
        mutant_path = Path(folder) / pack.name
        for mutant in chosen:
            mutant_path.write_text(mutant.apply(source), encoding="utf-8")
            (compiled,) = compile_files([mutant_path])
            if not compiled.ok:
                first = next(d for d in compiled.diagnostics if d.is_error)
                report.invalid.append((mutant, f"{first.code} {first.message}"))
                continue
            cache.preload(pack, compiled)
            results = run_tests(list(tests), cache=cache).results
            failed = [r for r in results if not r.passed and r.case.id not in failing]
            if failed:
                report.killed.append((mutant, failed[0].case.name))
            else:
                report.survived.append(mutant)
    return report


def mutate_command(pack: Path, only: Sequence[str] = (), out: TextIO | None = None) -> int:
    """``vigie rules mutate PACK [--only RULE...]``: 1 when a mutant survives, else 0."""
    out = out or sys.stdout
    tests = discover_test_files([pack])
    if not tests:
        print(f"no test file names {pack} (looked in rules/tests/)", file=out)
        return 1
    chosen = mutants(pack.read_text(encoding="utf-8"), str(pack), only)
    report = run_mutants(pack, tests, chosen)
    for line in report.lines():
        print(line, file=out)
    return 1 if report.survived else 0
