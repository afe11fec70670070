"""The alert: what the evaluator returns, in the output contract of ARCHITECTURE.md.

An alert explains itself: the rule (id, version, source file and line), the SFPC problem and
intervention codes, the drug lines involved, and the evidence — each fact that made it fire with
where it came from (feed, document, message, position).

Identity (``Alert.id``) is stable: rule id + patient + the sorted order ids of the matched drug
lines, hashed, so re-evaluation updates an alert instead of duplicating it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict

from vigie.facts import Source

__all__ = ["Alert", "AlertDrug", "CodedValue", "Evidence", "RuleRef", "Threshold", "alert_id"]

Severity = Literal["critical", "major", "moderate", "minor"]
ThresholdOp = Literal["lt", "le", "gt", "ge"]


# The field names of each model, for ``model_construct``'s check that every field is given.
_FIELD_NAMES: dict[type, frozenset[str]] = {}
_new = object.__new__
_set = object.__setattr__


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @classmethod
    def model_construct(  # type: ignore[override]  # the pydantic plugin's per-model form
        cls, _fields_set: set[str] | None = None, **values: Any
    ) -> Self:
        """pydantic's ``model_construct``, without its per-field loop when every field is
        given (explaining an alert builds a handful of these: the live store's firing path)."""
        names = _FIELD_NAMES.get(cls)
        if names is None:
            names = _FIELD_NAMES[cls] = frozenset(cls.__pydantic_fields__)
        if _fields_set is not None or values.keys() != names:
            return super().model_construct(_fields_set, **values)
        built = _new(cls)
        _set(built, "__dict__", values)
        _set(built, "__pydantic_fields_set__", set(values))
        _set(built, "__pydantic_extra__", None)
        _set(built, "__pydantic_private__", None)
        return built


class CodedValue(_Frozen):
    code: str
    display: str


class AlertDrug(_Frozen):
    order_id: str
    atc: str | None
    label: str | None


class Evidence(_Frozen):
    """One fact (or derived value) behind an alert.

    ``kind`` is a fact kind (``lab``, ``medication_order``...) or ``derived`` for computed values
    (clearance, eGFR, age, daily dose, MME) — then ``code`` names it and ``inputs`` lists the
    facts it was computed from.
    """

    name: str  # the rule's binding or expression it backs (``k``, ``clearance``...)
    kind: str
    code: str | None = None
    value: float | str | None = None
    unit: str | None = None
    time: datetime | None = None
    fact_id: str | None = None
    source: Source | None = None
    inputs: tuple[Evidence, ...] = ()


class Threshold(_Frozen):
    """A numeric comparison that held when the alert fired: a measured value against the rule's
    threshold (a parameter or a constant), e.g. ``k`` 6.8 ``gt`` ``k_max`` 5.5 mmol/L.

    ``name`` is the measured side (the binding ``k``, or ``clearance``, ``egfr``...), ``param``
    the parameter's name when the threshold is one. The priority score reads how far past the
    threshold the value is (``vigie.engine.priority``).
    """

    name: str
    op: ThresholdOp
    value: float
    threshold: float
    unit: str | None = None
    param: str | None = None


class RuleRef(_Frozen):
    id: str
    version: int
    pack: str
    pack_version: str
    file: str
    line: int


class Alert(_Frozen):
    id: str
    patient_id: str
    stay_id: str | None = None
    ward: str | None = None
    rule_id: str
    rule: RuleRef
    title: str
    problem: CodedValue
    intervention: CodedValue
    severity: Severity
    level: int
    priority: float | None = None
    drugs: tuple[AlertDrug, ...] = ()
    evidence: tuple[Evidence, ...] = ()
    thresholds: tuple[Threshold, ...] = ()  # optional: empty when no threshold comparison held
    message: str
    reference: str | None = None
    as_of: datetime


def alert_id(rule_id: str, patient_id: str, order_ids: list[str]) -> str:
    """Stable identity: same rule, patient and drug lines → same id, whatever else changed."""
    key = "\x1f".join([rule_id, patient_id, *sorted(order_ids)])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
