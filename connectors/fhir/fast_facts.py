"""Building facts cheaply on the FHIR fast path, without changing a single one.

Bulk NDJSON loads build one or two pydantic models per resource line, and validating them costs
as much as reading the resource. Three things make it cheaper:

- ``trusted_fact``: a fact built from values that are already of the field's Python type (the
  typed readers give ``float``, ``datetime``, ``date``, ``Coding``, tuples of ``Flag``, enum
  members), without pydantic validation. ``BaseModel.model_construct`` does the same job but
  walks every field's aliases and defaults in Python: measured slower than validation itself
  (about 20 µs against 6 µs for a MedicationOrder), hence this leaner version. Only the fast path
  uses it; the validated path still validates every fact, and tests hold both paths to the same
  facts and check that every fast-path fact survives ``model_validate(model_dump())``.
- ``coding`` and ``flag``: frozen models are shared between facts (a bulk file repeats the same
  few hundred codes), validated once when first met.
- ``TerminologyMemo``: the terminology answers per (system, code), kept for the tables' lifetime.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any, TypeVar

from pydantic import BaseModel

from vigie.facts import Coding, Flag, FlagCode
from vigie.terminology import Concept, QualitativeResult, Terminology, normalise_system
from vigie.terminology.compositions import Component
from vigie.terminology.names import NameMatch

__all__ = [
    "TerminologyMemo",
    "coding",
    "flag",
    "memo_for",
    "normalised_system",
    "trusted_fact",
]

_Model = TypeVar("_Model", bound=BaseModel)
_REQUIRED = object()
_set_attribute = object.__setattr__
# Interned models and memoised answers are dropped past this size: a feed with endless distinct
# codes must not grow memory without bound.
_MEMO_LIMIT = 100_000


class _Layout:
    """A model's fields in declaration order with their defaults, and which are required."""

    __slots__ = ("names", "required", "template")

    def __init__(self, model: type[BaseModel]) -> None:
        if model.__pydantic_post_init__ or model.__private_attributes__:
            raise TypeError(f"{model.__name__} needs pydantic's own construction")
        template: dict[str, Any] = {}
        for name, field in model.model_fields.items():
            if field.default_factory is not None or field.alias or field.validation_alias:
                raise TypeError(f"{model.__name__}.{name} needs pydantic's own construction")
            template[name] = _REQUIRED if field.is_required() else field.default
        self.template = template
        self.names = frozenset(template)
        self.required = frozenset(name for name, value in template.items() if value is _REQUIRED)


@cache
def _layout(model: type[BaseModel]) -> _Layout:
    return _Layout(model)


def trusted_fact(model: type[_Model], values: dict[str, Any]) -> _Model:
    """A model instance from values already of its fields' types, as validation would build it
    (same field order, same ``model_fields_set``); raises ``TypeError`` on a missing or unknown
    field name. Field values are not checked: callers pass what the typed readers give."""
    layout = _layout(model)
    given = values.keys()
    if not layout.required <= given or not given <= layout.names:
        missing = sorted(layout.required - given)
        unknown = sorted(given - layout.names)
        raise TypeError(f"{model.__name__}: missing {missing}, unknown {unknown}")
    fields = layout.template.copy()
    fields.update(values)  # keeps the declaration order of the template
    instance = model.__new__(model)
    _set_attribute(instance, "__dict__", fields)
    _set_attribute(instance, "__pydantic_fields_set__", set(given))
    _set_attribute(instance, "__pydantic_extra__", None)
    _set_attribute(instance, "__pydantic_private__", None)
    return instance


_CODINGS: dict[tuple[str | None, str, str | None], Coding] = {}
_FLAGS: dict[tuple[FlagCode, str], Flag] = {}


def coding(system: str | None, code: str, display: str | None = None) -> Coding:
    """A validated ``Coding``, shared by every fact that carries the same one."""
    key = (system, code, display)
    found = _CODINGS.get(key)
    if found is None:
        if len(_CODINGS) >= _MEMO_LIMIT:
            _CODINGS.clear()
        found = _CODINGS[key] = Coding(system=system, code=code, display=display)
    return found


def flag(code: FlagCode, detail: str) -> Flag:
    """A validated ``Flag``, shared by every fact that carries the same one."""
    key = (code, detail)
    found = _FLAGS.get(key)
    if found is None:
        if len(_FLAGS) >= _MEMO_LIMIT:
            _FLAGS.clear()
        found = _FLAGS[key] = Flag(code=code, detail=detail)
    return found


_Key = tuple[str | None, str]
_Answer = TypeVar("_Answer")


def _remember(answers: dict[_Key, _Answer], key: _Key, answer: _Answer) -> _Answer:
    if len(answers) >= _MEMO_LIMIT:
        answers.clear()
    answers[key] = answer
    return answer


def _ask(
    answers: dict[_Key, _Answer],
    question: Callable[[str | None, str], _Answer],
    system: str | None,
    code: str,
) -> _Answer:
    """The remembered answer to ``question(system, code)``, asked the first time only."""
    key = (system, code)
    if key in answers:
        return answers[key]
    return _remember(answers, key, question(system, code))


class TerminologyMemo:
    """The lookups the FHIR extractors make, memoised per (system, code): a Terminology's tables
    do not change once loaded, and a bulk file asks the same few hundred questions over and over.
    """

    def __init__(self, terminology: Terminology) -> None:
        self.terminology = terminology
        self._concepts: dict[_Key, Concept | None] = {}
        self._implied_units: dict[_Key, str | None] = {}
        self._atc: dict[_Key, str | None] = {}
        self._icd10: dict[_Key, str | None] = {}
        self._by_name: dict[_Key, NameMatch | None] = {}
        self._allergy_atc: dict[_Key, tuple[str, ...]] = {}
        self._allergy_is_drug: dict[_Key, bool | None] = {}
        self._routes: dict[_Key, str | None] = {}
        self._units: dict[_Key, str] = {}

    def lab_concept(self, system: str | None, code: str) -> Concept | None:
        return _ask(self._concepts, self.terminology.lab_concept, system, code)

    def implied_unit(self, system: str | None, code: str) -> str | None:
        return _ask(self._implied_units, self.terminology.implied_unit, system, code)

    def drug_atc(self, system: str | None, code: str) -> str | None:
        return _ask(self._atc, self.terminology.drug_atc, system, code)

    def drug_ingredients(self, system: str | None, code: str) -> tuple[Component, ...]:
        return self.terminology.drug_ingredients(system, code)  # a dict lookup already

    def icd10(self, system: str | None, code: str) -> str | None:
        return _ask(self._icd10, self.terminology.icd10, system, code)

    def drug_by_name(self, label: str) -> NameMatch | None:
        """``Terminology.drug_by_name``, memoised per label."""
        key = (None, label)
        if key in self._by_name:
            return self._by_name[key]
        return _remember(self._by_name, key, self.terminology.drug_by_name(label))

    def allergy_atc(self, system: str | None, code: str) -> tuple[str, ...]:
        return _ask(self._allergy_atc, self.terminology.allergy_atc, system, code)

    def allergy_is_drug(self, system: str | None, code: str) -> bool | None:
        return _ask(self._allergy_is_drug, self.terminology.allergy_is_drug, system, code)

    def route(self, system: str | None, code_or_text: str | None) -> str | None:
        if not code_or_text:
            return None
        return _ask(self._routes, self.terminology.route, system, code_or_text)

    def canonical_unit(self, unit: str | None) -> str:
        if unit is None:
            return ""
        key = (None, unit)
        if key in self._units:
            return self._units[key]
        return _remember(self._units, key, self.terminology.canonical_unit(unit))

    def to_canonical(self, concept: str, value: float, unit: str | None) -> tuple[float, str]:
        """Not memoised: the answer depends on the value (and raises ``UnknownUnit``)."""
        return self.terminology.to_canonical(concept, value, unit)

    def qualitative(self, system: str | None, code: str) -> QualitativeResult | None:
        """Not memoised: one dictionary lookup already."""
        return self.terminology.qualitative(system, code)

    def qualitative_word(self, text: str) -> QualitativeResult | None:
        return self.terminology.qualitative_word(text)


@lru_cache(maxsize=4096)
def normalised_system(system: str | None) -> str:
    """``normalise_system``, memoised: feeds name the same few systems on every coding."""
    return normalise_system(system)


@lru_cache(maxsize=4)  # one per tables instance: default_terminology() gives the same one
def memo_for(terminology: Terminology) -> TerminologyMemo:
    """The memo of a Terminology."""
    return TerminologyMemo(terminology)
