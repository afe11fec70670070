"""The engine's exceptions: one tree, so nothing else escapes ``load_pack`` or ``evaluate``.

``PackError`` is raised while loading a pack or selecting its rules (a stage before any
patient); ``RuleRuntimeError`` while evaluating, located on the rule's source line and patient.

>>> print(RuleRuntimeError("gt: TypeError: bad operands", span=(12, 8)).located(
...     rule_id="bio.k", file="demo.rules", line=12, patient_id="p1"))
demo.rules:12:8: evaluation error in rule bio.k (patient p1): gt: TypeError: bad operands
"""

from __future__ import annotations

from collections.abc import Sequence

from vigie.errors import VigieError

__all__ = ["EngineError", "PackError", "RuleRuntimeError"]


class EngineError(VigieError):
    """Root of the engine's errors: nothing else escapes ``evaluate`` or ``load_pack``."""


class PackError(EngineError):
    """An IR the engine cannot use, or a site configuration that does not fit the pack."""


class RuleRuntimeError(EngineError):
    """A rule failed while evaluating: says which rule, where in its source, for whom."""

    def __init__(
        self,
        detail: str,
        *,
        rule_id: str | None = None,
        file: str | None = None,
        line: int | None = None,
        span: Sequence[int] | None = None,
        patient_id: str | None = None,
    ) -> None:
        self.detail = detail
        self.rule_id = rule_id
        self.file = file
        self.line = line
        self.span = tuple(span) if span else None
        self.patient_id = patient_id
        super().__init__(self.describe())

    def describe(self) -> str:
        where = self.file or "<pack>"
        if self.span:
            where += f":{self.span[0]}:{self.span[1]}"
        elif self.line is not None:
            where += f":{self.line}"
        rule = f" in rule {self.rule_id}" if self.rule_id else ""
        patient = f" (patient {self.patient_id})" if self.patient_id else ""
        return f"{where}: evaluation error{rule}{patient}: {self.detail}"

    def located(self, *, rule_id: str, file: str, line: int, patient_id: str) -> RuleRuntimeError:
        return RuleRuntimeError(
            self.detail,
            rule_id=rule_id,
            file=file,
            line=line,
            span=self.span,
            patient_id=patient_id,
        )
