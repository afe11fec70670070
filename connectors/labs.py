"""Lab results and measurements, normalised the same way whatever the feed.

Every connector finds, in its own format, a result's code(s), its value as text, its unit, its
reference range and its abnormal flag; this module turns them into the fields of a
``LabResult`` or an ``Observation`` (weight, height, QTc go through the same concept tables).
A connector overrides only what its format decides: where each piece sits, its number syntax
(``NumberSyntax``: HL7 NM, a decimal comma in a CSV export...), which codes to try, and the fact
kind of an unmapped code. The one behaviour:

- **Code → concept**: the first code the tables map wins (FHIR may send several codings, an
  HPRIM local code is tried as ``HPRIM`` then ``LOCAL``); the code also gives the unit it
  implies when the message sends none (LOINC 2160-0 is creatinine in mg/dL). A mapped concept
  decides the kind (``lab`` → ``LabResult``, ``observation`` → ``Observation``).
- **Unmapped code**: the fact is kept with ``concept=None`` and an ``unmapped_code`` flag; its
  number and reference range stay as received, its unit in its canonical spelling (``mmol/l``
  → ``mmol/L``): nothing is converted, since nothing says what the code measures.
- **Mapped code**: the value is converted to the concept's canonical unit (creatinine mg/dL ×
  88.42 → µmol/L, ``unit_conversions.csv``), from the unit sent or else the implied one.
- **Unknown unit** (sent or implied, it cannot be converted; no unit at all counts as
  unknown): ``value`` and ``unit`` are ``None``, an ``unknown_unit`` flag names the unit; the
  concept's unit is never assumed.
- **Non-numeric value** (text, a bound such as ``<5``, no value at all): ``value`` is ``None``
  and a ``non_numeric_value`` flag says why, for a mapped or an unmapped code (after the
  ``unmapped_code`` flag): a ``None`` value always has its flag. For a mapped code ``unit`` is
  the canonical unit when the unit converts, since the reference range is still given in it.
- **Original value and unit** are always the text as received.
- **Reference range**: converted exactly like the value (same unit, or the range's own unit
  when the format gives one); ``None`` bounds when that unit is unknown. Text ranges read
  ``3.5-5.1``, ``3,5 - 5,1 mmol/L``, ``10 à 40``, ``<5`` (high only), ``>=60`` (low only);
  anything else, a reversed range included, is unreadable (``parse_reference_range`` gives
  ``None``; the connector decides whether to report it).
- **Abnormal flag**: the code as sent (HL7 table 0078, FHIR ObservationInterpretation, HPRIM
  field 9 share ``L``, ``H``, ``LL``, ``HH``, ``N``, ``A``...), stripped; never derived from
  the range.
- **Qualitative value** (a lab result, mapped or not): ``positive`` or ``negative`` from, in
  order, the coded answer (``Reading.codes``: SNOMED 10828004 Positive, LOINC LA6577-6
  Negative...), the text of a non-numeric value and the displays and codes of its answer as
  written words (``Positif``, ``non détecté``, ``NEG``), then the interpretation code sent as
  abnormal flag (``POS``, ``NEG``, ``DET``, ``ND``...); ``qualitative_results.csv`` lists them
  all. The value wins over the interpretation. A result read as positive or negative is a
  usable value: its ``value`` stays ``None`` but it carries no ``non_numeric_value`` flag.
  ``A`` (abnormal) or an unlisted word gives no qualitative value: it is never guessed.

Flag details say what is wrong; a format whose fields have names finer than the fact's
``source`` (HL7: the unit is ``OBX[2]-6``, the value ``OBX[2]-5``) passes ``FlagPositions`` and
each detail starts with the field it is about. Otherwise the same result gives the same facts
from every feed.

>>> from vigie.terminology import default_terminology
>>> from vigie.facts import Coding
>>> tables = default_terminology()
>>> match = match_code(tables, [Coding(system="LN", code="2160-0")])
>>> result = normalise(tables, match, read_value("1.2", "mg/dL", decimal_point),
...                    reference=parse_reference_range("0.6-1.1"))
>>> result.concept, result.value, result.unit, result.reference_low, result.reference_high
('creatinine', 106.104, 'µmol/L', 53.052, 97.262)
>>> hcg = match_code(tables, [Coding(system="LN", code="2106-3")])
>>> answer = Coding(system="http://snomed.info/sct", code="10828004", display="Positive")
>>> normalise(tables, hcg, Reading("Positive", None, None, codes=(answer,))).qualitative
'positive'
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from typing import Any, Literal, NamedTuple, Protocol

from vigie.facts import Coding, Flag, FlagCode, LabResult, Observation
from vigie.terminology import Concept, QualitativeResult, UnknownUnit

__all__ = [
    "CodeMatch",
    "FlagPositions",
    "LabTables",
    "Measurement",
    "NumberSyntax",
    "Reading",
    "ReferenceRange",
    "decimal_point",
    "decimal_point_or_comma",
    "match_code",
    "normalise",
    "parse_reference_range",
    "read_value",
]

NumberSyntax = Callable[[str], float | None]
"""How a format writes a number: the text → the number, or ``None`` when it is not one."""

Kind = Literal["lab", "observation"]

# ASCII digits only: \d would also accept Arabic-Indic or full-width digits.
_DECIMAL_POINT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\Z")
_DECIMAL_POINT_OR_COMMA = re.compile(r"[+-]?(?:[0-9]+(?:[.,][0-9]*)?|[.,][0-9]+)\Z")
_NUM = r"[+-]?[0-9]+(?:[.,][0-9]+)?"
# A range, then optional text that does not start with a digit (a unit, a comment).
_RANGE = re.compile(
    rf"(?P<low>{_NUM})\s*(?:-|–|_|\.\.|to|à)\s*(?P<high>{_NUM})(?:\s*[^0-9\s].*)?\Z"
)
_BOUND = re.compile(rf"(?P<op><=?|>=?|≤|≥)\s*(?P<value>{_NUM})(?:\s*[^0-9\s].*)?\Z")
_UPPER_BOUNDS = frozenset({"<", "<=", "≤"})


def decimal_point(text: str) -> float | None:
    """A number with an optional sign and a decimal point (HL7 NM, JSON-like text)."""
    return _finite(float(text)) if _DECIMAL_POINT.match(text) else None


def decimal_point_or_comma(text: str) -> float | None:
    """A number with a decimal point or comma, spaces around it allowed (HPRIM, PN13)."""
    text = text.strip()
    if not _DECIMAL_POINT_OR_COMMA.match(text):
        return None
    return _finite(float(text.replace(",", ".")))


def _finite(number: float) -> float | None:
    """``None`` for digits beyond a float's range (they read as infinity): not a number."""
    return number if math.isfinite(number) else None


class LabTables(Protocol):
    """The terminology lookups normalisation needs (a ``Terminology`` or a memo of one)."""

    def lab_concept(self, system: str | None, code: str) -> Concept | None: ...

    def implied_unit(self, system: str | None, code: str) -> str | None: ...

    def canonical_unit(self, unit: str | None) -> str: ...

    def to_canonical(self, concept: str, value: float, unit: str | None) -> tuple[float, str]: ...

    def qualitative(self, system: str | None, code: str) -> QualitativeResult | None: ...

    def qualitative_word(self, text: str) -> QualitativeResult | None: ...


class CodeMatch(NamedTuple):
    """The code a result is filed under and its concept (``None``: unmapped).

    The unit the code implies is looked up in the tables when needed (no unit sent), unless
    ``implied_unit`` gives it (a CSV mapping's local code table does).
    """

    coding: Coding
    concept: Concept | None
    implied_unit: str | None = None
    implied_by_tables: bool = False

    def unit_implied(self, tables: LabTables) -> str | None:
        if self.implied_by_tables:
            return tables.implied_unit(self.coding.system, self.coding.code)
        return self.implied_unit


def match_code(tables: LabTables, codings: Sequence[Coding]) -> CodeMatch:
    """The first coding the tables map, else the first coding (unmapped). Needs one coding."""
    for coding in codings:
        concept = tables.lab_concept(coding.system, coding.code)
        if concept is not None:
            return CodeMatch(coding, concept, implied_by_tables=True)
    return CodeMatch(codings[0], None)


class Reading(NamedTuple):
    """A value as the message gives it.

    ``text`` is the value as received (``None``: no value), ``number`` what it reads as in the
    format's syntax (``None``: not a number), ``unit`` the unit as received. ``unit_spellings``
    are the spellings to convert from, in order, when the format has several (FHIR's UCUM code
    and label); by default the unit itself. ``codes`` are the codes of a coded answer (FHIR
    valueCodeableConcept, HL7 CE/CWE), tried for a qualitative value.
    """

    text: str | None
    number: float | None
    unit: str | None
    unit_spellings: tuple[str, ...] | None = None
    codes: tuple[Coding, ...] = ()

    @property
    def spellings(self) -> tuple[str, ...]:
        if self.unit_spellings is not None:
            return self.unit_spellings
        return (self.unit,) if self.unit else ()


def read_value(text: str | None, unit: str | None, syntax: NumberSyntax) -> Reading:
    """A value's text read with the format's number syntax (empty text and unit: none)."""
    text = text or None
    return Reading(text, None if text is None else syntax(text), unit or None)


class ReferenceRange(NamedTuple):
    """Bounds as received; ``units`` the range's own unit spellings, if it has one."""

    low: float | None
    high: float | None
    units: tuple[str, ...] = ()


def parse_reference_range(text: str | None) -> ReferenceRange | None:
    """``3.5-5.1`` → 3.5..5.1; ``<5`` → ..5; ``>60`` → 60..; ``None`` when unreadable.

    >>> parse_reference_range("3,5 - 5,1 mmol/L"), parse_reference_range(">= 60")
    (ReferenceRange(low=3.5, high=5.1, units=()), ReferenceRange(low=60.0, high=None, units=()))
    >>> parse_reference_range("5-3") is None
    True
    """
    text = (text or "").strip()
    match = _RANGE.match(text)
    if match:
        low, high = _decimal(match["low"]), _decimal(match["high"])
        return ReferenceRange(low, high) if low <= high else None
    match = _BOUND.match(text)
    if match:
        bound = _decimal(match["value"])
        if match["op"] in _UPPER_BOUNDS:
            return ReferenceRange(None, bound)
        return ReferenceRange(bound, None)
    return None


def _decimal(text: str) -> float:
    return float(text.replace(",", "."))


class FlagPositions(NamedTuple):
    """Where the code, the value and the unit sit, to start flag details with: ``prefix`` and
    each part's suffix (``OBX[1]-`` and ``3``, ``5``, ``6``), joined only when a flag needs it.
    """

    prefix: str
    code: str = ""
    value: str = ""
    unit: str = ""


NOWHERE = FlagPositions("")
"""No positions: flag details without a field name."""


class Measurement(NamedTuple):
    """A normalised result: the fields of its fact but the identity, code, time and source."""

    kind: Kind
    concept: str | None
    value: float | None
    unit: str | None
    original_value: str | None
    original_unit: str | None
    reference_low: float | None
    reference_high: float | None
    abnormal_flag: str | None
    flags: tuple[Flag, ...]
    qualitative: QualitativeResult | None = None

    @property
    def model(self) -> type[LabResult] | type[Observation]:
        return LabResult if self.kind == "lab" else Observation

    def fields(self) -> dict[str, Any]:
        """Keyword arguments for ``model`` (an Observation has no range, abnormal flag nor
        qualitative value)."""
        fields = {
            "flags": self.flags,
            "concept": self.concept,
            "value": self.value,
            "unit": self.unit,
            "original_value": self.original_value,
            "original_unit": self.original_unit,
        }
        if self.kind == "lab":
            fields["reference_low"] = self.reference_low
            fields["reference_high"] = self.reference_high
            fields["abnormal_flag"] = self.abnormal_flag
            fields["qualitative"] = self.qualitative
        return fields


def normalise(
    tables: LabTables,
    match: CodeMatch,
    reading: Reading,
    *,
    reference: ReferenceRange | None = None,
    abnormal_flag: str | None = None,
    unmapped_kind: Kind = "lab",
    positions: FlagPositions = NOWHERE,
) -> Measurement:
    """The one normalisation of a result (see the module docstring)."""
    reference = reference or ReferenceRange(None, None)
    flag = (abnormal_flag or "").strip() or None
    qualitative = _qualitative(tables, reading, flag)
    if match.concept is None:
        found = _as_received(tables, match, reading, reference, unmapped_kind, positions)
    else:
        found = _converted(tables, match.concept, match, reading, reference, positions)
    kind, value, unit, low, high, flags = found
    if kind != "lab":
        qualitative = None
    elif qualitative is not None:
        flags = tuple(f for f in flags if f.code is not FlagCode.NON_NUMERIC_VALUE)
    return Measurement(
        kind,
        match.concept.name if match.concept else None,
        value,
        unit,
        reading.text,
        reading.unit,
        low,
        high,
        flag,
        flags,
        qualitative,
    )


def _qualitative(
    tables: LabTables, reading: Reading, interpretation: str | None
) -> QualitativeResult | None:
    """Positive or negative: the coded answer, the written value, then the interpretation."""
    for coding in reading.codes:
        found = tables.qualitative(coding.system, coding.code)
        if found is not None:
            return found
    if reading.number is None:
        words = [reading.text] + [w for c in reading.codes for w in (c.display, c.code)]
        for word in words:
            found = tables.qualitative_word(word) if word else None
            if found is not None:
                return found
    return _interpreted(tables, interpretation)


def _interpreted(tables: LabTables, interpretation: str | None) -> QualitativeResult | None:
    """An interpretation code: HL7 table 0078 and v3 ObservationInterpretation share POS, NEG,
    DET, ND, RR and NR (the flag is passed on without its system)."""
    return tables.qualitative("HL70078", interpretation) if interpretation else None


# kind, value, unit, reference low and high, flags
_Normalised = tuple[Kind, float | None, str | None, float | None, float | None, tuple[Flag, ...]]


def _converted(
    tables: LabTables,
    concept: Concept,
    match: CodeMatch,
    reading: Reading,
    reference: ReferenceRange,
    positions: FlagPositions,
) -> _Normalised:
    """Value and range in the concept's unit, from the unit sent or else the implied one."""
    spellings = reading.spellings
    if not spellings:
        implied = match.unit_implied(tables)
        spellings = (implied,) if implied else ()
    conversion = _conversion(tables, concept.name, spellings, reading.number)
    unit, value = conversion if conversion else (None, None)
    flags: tuple[Flag, ...] = ()
    if reading.number is None:
        flags = (_non_numeric(reading.text, positions),)
    elif unit is None:
        shown = reading.unit or (spellings[0] if spellings else None)
        detail = str(UnknownUnit(concept.name, shown, concept.unit))
        flags = (_flag(FlagCode.UNKNOWN_UNIT, _at(positions, positions.unit, detail)),)
    low, high = _converted_range(tables, concept, reference, unit)
    kind: Kind = "lab" if concept.kind == "lab" else "observation"
    return kind, value, None if unit is None else concept.unit, low, high, flags


def _as_received(
    tables: LabTables,
    match: CodeMatch,
    reading: Reading,
    reference: ReferenceRange,
    kind: Kind,
    positions: FlagPositions,
) -> _Normalised:
    """An unmapped code: everything as received, the unit in its canonical spelling."""
    detail = f"code {match.coding.code!r} is not mapped to a lab or observation concept"
    flags: tuple[Flag, ...] = (
        _flag(FlagCode.UNMAPPED_CODE, _at(positions, positions.code, detail)),
    )
    if reading.number is None:
        flags += (_non_numeric(reading.text, positions),)
    spellings = reading.spellings
    unit = tables.canonical_unit(spellings[0]) or None if spellings else None
    return kind, reading.number, unit, reference.low, reference.high, flags


def _conversion(
    tables: LabTables, concept: str, spellings: Iterable[str], number: float | None
) -> tuple[str, float | None] | None:
    """The first spelling the tables convert to the concept's unit, with the number converted;
    ``None`` when no spelling converts."""
    for spelling in spellings:
        try:
            converted, _ = tables.to_canonical(concept, 0.0 if number is None else number, spelling)
        except UnknownUnit:
            continue
        return spelling, None if number is None else converted
    return None


def _convert(tables: LabTables, concept: Concept, number: float, unit: str) -> float:
    return tables.to_canonical(concept.name, number, unit)[0]


def _converted_range(
    tables: LabTables, concept: Concept, reference: ReferenceRange, unit: str | None
) -> tuple[float | None, float | None]:
    if reference.units:
        own = _conversion(tables, concept.name, reference.units, None)
        unit = own[0] if own else None
    if unit is None:
        return None, None
    low, high = reference.low, reference.high
    return (
        None if low is None else _convert(tables, concept, low, unit),
        None if high is None else _convert(tables, concept, high, unit),
    )


def _non_numeric(text: str | None, positions: FlagPositions) -> Flag:
    detail = "no value" if text is None else f"{text!r} is not a number"
    return _flag(FlagCode.NON_NUMERIC_VALUE, _at(positions, positions.value, detail))


def _at(positions: FlagPositions, part: str, detail: str) -> str:
    return f"{positions.prefix}{part}: {detail}" if positions.prefix else detail


@lru_cache(maxsize=4096)  # feeds repeat the same few flags; a Flag is frozen, so shareable
def _flag(code: FlagCode, detail: str) -> Flag:
    return Flag(code=code, detail=detail)
