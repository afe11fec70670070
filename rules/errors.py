"""The rule language's exceptions: one tree, each carrying its diagnostics.

``RuleError`` is the root. ``RuleSyntaxError`` comes from the parser (lark's exceptions are
wrapped into it and never escape); ``RuleCheckError`` from ``compile_pack_or_raise`` when the
checker found errors. Each holds every diagnostic found, the first one as ``diagnostic``.
"""

from __future__ import annotations

from collections.abc import Sequence

from vigie.errors import VigieError
from vigie.rules.diagnostics import Diagnostic

__all__ = ["RuleCheckError", "RuleError", "RuleSyntaxError"]


class RuleError(VigieError):
    """A pack that cannot be compiled; ``diagnostics`` says why and where."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        if not diagnostics:
            raise ValueError("a RuleError needs at least one diagnostic")
        self.diagnostics = tuple(diagnostics)
        self.diagnostic = self.diagnostics[0]
        more = len(self.diagnostics) - 1
        suffix = f" (and {more} more)" if more else ""
        super().__init__(self.diagnostic.headline() + suffix)


class RuleSyntaxError(RuleError):
    """The text is not in the language's grammar."""


class RuleCheckError(RuleError):
    """The text parses but names, types, units, codes or structure are wrong."""
