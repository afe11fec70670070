"""Diagnostics as data, and their rendering with the source line and a caret.

A ``Diagnostic`` is what every stage reports: a code (``R012``), a severity, a message, the span
it is about and an optional hint. ``render`` gives the compiler-style text::

    pack.rules:12:8: error[R012] unknown lab 'kaliemie'
       12 |   k = latest kaliemie within 48 h
          |              ^^^^^^^^
       hint: did you mean 'potassium'?

Codes: R00x syntax, R01x names, R03x types and units, R05x codes and ranges, R07x structure;
``CODES`` lists them all with a one-line description (docs/rules-design.md repeats the table).
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from vigie.rules.nodes import Span

__all__ = [
    "CODES",
    "Diagnostic",
    "Severity",
    "close_matches",
    "error",
    "render",
    "render_all",
    "sort_diagnostics",
    "source_lines",
    "warning",
]

Severity = Literal["error", "warning"]

CODES: dict[str, str] = {
    "R000": "a pack file cannot be read",
    "R001": "unexpected token",
    "R002": "unexpected character",
    "R003": "unexpected end of file",
    "R010": "unknown name",
    "R011": "unknown set",
    "R012": "unknown lab or observation",
    "R013": "unknown attribute",
    "R014": "unknown route",
    "R015": "name bound twice or shadowing a built-in, parameter or definition",
    "R016": "declaration repeated",
    "R017": "definition refers to itself",
    "R018": "wrong call of a definition",
    "R019": "binding never used (warning)",
    "R030": "type mismatch",
    "R031": "units that cannot be converted",
    "R032": "unknown unit",
    "R033": "misplaced statement or query",
    "R034": "a unit is needed",
    "R035": "bad message placeholder",
    "R036": "threshold outside the lab's plausible range, likely a unit slip (warning)",
    "R050": "ATC code badly shaped",
    "R051": "ICD-10 code badly shaped",
    "R052": "unknown SFPC problem code",
    "R053": "unknown SFPC intervention code",
    "R054": "unknown severity",
    "R055": "parameter default outside its range",
    "R056": "parameter bounds of another dimension",
    "R057": "code range that cannot be expanded",
    "R058": "level or version not a positive whole number",
    "R059": "pack version not x.y.z",
    "R060": "ATC code or prefix that no known product carries (warning)",
    "R070": "rule id repeated",
    "R071": "rule without `when`",
    "R072": "rule without `say`",
    "R073": "rule without `problem`, `intervention` or `severity`",
    "R074": "clause repeated in a rule",
    "R075": "pack header missing, repeated or not first",
    "R076": "rule without a title",
}


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    span: Span
    hint: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def location(self) -> str:
        return f"{self.span.file}:{self.span.line}:{self.span.column}"

    def headline(self) -> str:
        return f"{self.location()}: {self.severity}[{self.code}] {self.message}"

    def as_dict(self) -> dict[str, object]:
        s = self.span
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "file": s.file,
            "line": s.line,
            "column": s.column,
            "end_line": s.end_line,
            "end_column": s.end_column,
            "hint": self.hint,
        }


def error(code: str, message: str, span: Span, hint: str | None = None) -> Diagnostic:
    return Diagnostic(code, "error", message, span, hint)


def warning(code: str, message: str, span: Span, hint: str | None = None) -> Diagnostic:
    return Diagnostic(code, "warning", message, span, hint)


def sort_diagnostics(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    """Source order, duplicates (same code, place and message) removed."""
    unique = {(d.span.file, d.span.line, d.span.column, d.code, d.message): d for d in diagnostics}
    return [unique[key] for key in sorted(unique)]


def render(diagnostic: Diagnostic, source: str) -> str:
    """The headline, the source line with carets under the span, and the hint."""
    lines = [diagnostic.headline()]
    text_lines = source_lines(source)
    span = diagnostic.span
    if source and 1 <= span.line <= len(text_lines):
        line_text = text_lines[span.line - 1]
        gutter = f"{span.line:>5} | "
        lines.append(gutter + line_text)
        lines.append(" " * (len(gutter) - 2) + "| " + _carets(line_text, span))
    if diagnostic.hint:
        lines.append(f"{'':>5}  hint: {diagnostic.hint}")
    return "\n".join(lines)


def source_lines(source: str) -> list[str]:
    """Lines as the parser counts them: only ``\n`` ends a line (``\r\n`` allowed)."""
    return [line.removesuffix("\r") for line in source.split("\n")]


def render_all(diagnostics: Iterable[Diagnostic], source: str) -> str:
    return "\n".join(render(d, source) for d in diagnostics)


def _carets(line_text: str, span: Span) -> str:
    """Spaces (tabs kept, so the caret lines up) then one caret per spanned character."""
    start = max(span.column - 1, 0)
    if span.end_line == span.line and span.end_column > span.column:
        end = span.end_column - 1
    else:
        end = max(len(line_text.rstrip()), start + 1)
    pad = "".join("\t" if ch == "\t" else " " for ch in line_text[:start])
    pad += " " * max(start - len(line_text), 0)
    return pad + "^" * max(min(end, max(len(line_text), start + 1)) - start, 1)


def close_matches(word: str, candidates: Mapping[str, str], limit: int = 1) -> list[str]:
    """Names near ``word``: ``candidates`` maps a spelling (a name or a label) to its name.

    Spellings are compared without case or accents, so ``kaliemie`` finds ``potassium``
    through its label ``Kaliémie``.
    """
    keyed: dict[str, str] = {}
    for spelling, name in sorted(candidates.items()):
        keyed.setdefault(_fold(spelling), name)
    matches = difflib.get_close_matches(_fold(word), list(keyed), n=limit * 3, cutoff=0.7)
    names: list[str] = []
    for match in matches:
        if keyed[match] not in names and keyed[match] != word:
            names.append(keyed[match])
    return names[:limit]


def _fold(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in plain if not unicodedata.combining(c))
