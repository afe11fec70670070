"""The compile step of the rule language: pack text → IR, with every diagnostic.

``compile_pack`` runs the stages (``parser`` → ``check`` → ``ir``) over one pack's text;
``compile_files`` does it for pack files, ``check_command`` is ``vigie rules check``. The
result is the IR (``vigie.ir_schema``) that the engine loads (``vigie.engine.load_pack``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

from vigie.rules.check import check
from vigie.rules.concepts import Catalogue
from vigie.rules.diagnostics import Diagnostic, error, render, sort_diagnostics
from vigie.rules.errors import RuleCheckError, RuleSyntaxError
from vigie.rules.ir import build_ir, dumps_ir
from vigie.rules.nodes import Span
from vigie.rules.parser import parse_recovering

__all__ = [
    "CompiledPack",
    "check_command",
    "compile_files",
    "compile_pack",
    "compile_pack_or_raise",
]

IR = dict[str, Any]


def compile_pack(
    text: str, file: str = "<string>", catalogue: Catalogue | None = None
) -> tuple[IR | None, list[Diagnostic]]:
    """Parse, check and lower a pack: ``(ir, diagnostics)``; ``ir`` is ``None`` on any error.

    Every error of the pack is reported, syntax errors included (the declaration holding a
    syntax error is skipped and the rest is still checked). Warnings do not stop the IR.
    """
    try:
        parsed = parse_recovering(text, file)
        result = check(parsed.pack, catalogue, lost_names=parsed.lost_names)
        diagnostics = sort_diagnostics([*parsed.diagnostics, *result.diagnostics])
        if any(d.is_error for d in diagnostics):
            return None, diagnostics
        return cast(IR, build_ir(result, text, file, catalogue)), diagnostics
    except RecursionError:  # the parser's tree transform recurses once per nesting level
        message = "cannot read the pack: expressions nested too deeply (hundreds of levels)"
        return None, [error("R000", message, Span(file, 1, 1, 1, 1))]


def compile_pack_or_raise(text: str, file: str = "<string>") -> IR:
    """The IR of a pack, or ``RuleSyntaxError`` / ``RuleCheckError`` with every diagnostic."""
    ir, diagnostics = compile_pack(text, file)
    if ir is None:
        errors = [d for d in diagnostics if d.is_error]
        if any(d.code < "R010" for d in errors):
            raise RuleSyntaxError(errors)
        raise RuleCheckError(errors)
    return ir


@dataclass(frozen=True)
class CompiledPack:
    path: str
    source: str
    ir: IR | None
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return self.ir is not None


def compile_files(paths: Iterable[str | Path]) -> list[CompiledPack]:
    """Compile each pack file on its own; an unreadable file gives an R000 diagnostic."""
    compiled: list[CompiledPack] = []
    for path in paths:
        name = str(path)
        try:
            source = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            diagnostic = error("R000", f"cannot read the pack: {reason}", Span(name, 1, 1, 1, 1))
            compiled.append(CompiledPack(name, "", None, (diagnostic,)))
            continue
        ir, diagnostics = compile_pack(source, name)
        compiled.append(CompiledPack(name, source, ir, tuple(diagnostics)))
    return compiled


def check_command(
    paths: Sequence[str | Path],
    show_ir: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``vigie rules check PACK... [--show-ir]``: diagnostics on stderr, IR on stdout.

    Returns 0 when every pack compiles (warnings allowed), 1 otherwise.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    status = 0
    for pack in compile_files(paths):
        for diagnostic in pack.diagnostics:
            print(render(diagnostic, pack.source), file=err)
        errors = sum(d.is_error for d in pack.diagnostics)
        warnings = len(pack.diagnostics) - errors
        rules = len(pack.ir["rules"]) if pack.ir else 0
        summary = f"{pack.path}: {rules} rules, {errors} error(s), {warnings} warning(s)"
        print(summary, file=err)
        if pack.ir is None:
            status = 1
        elif show_ir:
            out.write(dumps_ir(pack.ir))
    return status
