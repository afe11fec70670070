"""Units in rules: their dimension, and the factor between two units.

A unit written in a rule (``mmol/L``, ``mg/dL``, ``48 h``) is looked up in the terminology's
unit tables (``units.csv``: dimensions with factors to a base unit, durations in seconds, masses
in mg...; ``unit_spellings.csv``: ``days`` → ``d``; read by ``vigie.terminology.units``). A literal
compared with a lab is converted to the lab concept's canonical unit: first with the
terminology's per-concept factor (``unit_conversions.csv``: creatinine mg/dL → µmol/L is a
molar-mass question no generic table answers), then within one dimension.

>>> from vigie.rules.concepts import default_catalogue
>>> round(concept_factor(default_catalogue(), "creatinine", "mg/dL"), 4)
88.42
>>> unit_factor("d", "h")
24.0
>>> concept_factor(default_catalogue(), "creatinine", "mL/min") is None
True
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from vigie.rules.concepts import Catalogue
from vigie.terminology.units import default_unit_tables

__all__ = [
    "BASE_UNITS",
    "UnitInfo",
    "canonical_spelling",
    "concept_factor",
    "known_units",
    "suggest_unit",
    "unit_factor",
    "unit_hint",
    "unit_info",
]


@dataclass(frozen=True)
class UnitInfo:
    symbol: str
    dimension: str
    factor: float  # value × factor = value in the dimension's base unit


_TABLES = default_unit_tables()
_TABLE: dict[str, tuple[str, float]] = {
    symbol: (unit.dimension, unit.factor) for symbol, unit in _TABLES.units.items()
}
BASE_UNITS: dict[str, str] = dict(_TABLES.base_units)


def canonical_spelling(unit: str, catalogue: Catalogue | None = None) -> str:
    """``μg`` (Greek mu) → ``µg``, ``days`` → ``d``, then the terminology's spellings."""
    text = _TABLES.spell(unit)
    if text in _TABLE or catalogue is None:
        return text
    return catalogue.spelling(text)


def unit_info(unit: str, catalogue: Catalogue | None = None) -> UnitInfo | None:
    """The dimension of a unit, or ``None`` for a unit the rules do not know."""
    symbol = canonical_spelling(unit, catalogue)
    entry = _TABLE.get(symbol)
    return UnitInfo(symbol, *entry) if entry else None


def known_units() -> list[str]:
    return sorted(_TABLE)


def suggest_unit(word: str, catalogue: Catalogue | None = None) -> str | None:
    """The unit a misspelt one most likely stands for, from the unit tables: a spelling or a
    symbol written in another case (``MMOL/L``), without its plural or as an abbreviation of a
    spelling (``hrs``, ``hr`` → ``h`` through ``hours``), else the nearest symbol.

    >>> suggest_unit("hrs"), suggest_unit("Mmol/l"), suggest_unit("mmol")
    ('h', 'mmol/L', 'mmol/L')
    """
    spellings: dict[str, str] = {symbol: symbol for symbol in _TABLE}
    spellings.update(
        {s: t for s, t in _TABLES.spellings.items() if canonical_spelling(t) in _TABLE}
    )
    if catalogue is not None:
        spellings.update({s: catalogue.spelling(t) for s, t in catalogue.aliases.items()})
    folded = {s.lower(): t for s, t in sorted(spellings.items())}
    text = word.strip().lower()
    for guess in (text, text.removesuffix("s"), text.removesuffix("es")):
        if guess in folded:
            return folded[guess]
    short = text.removesuffix("s")
    if len(short) >= 2 and short.isalpha():  # an abbreviation: hr → hour, wk → week, mo → month
        words = [s for s in folded if s.isalpha() and len(s) > len(short) and s[0] == short[0]]
        abbreviated = sorted((len(s), s) for s in words if _subsequence(short, s))
        if abbreviated:
            return folded[abbreviated[0][1]]
    same_start = [s for s in folded if s[:1] == text[:1]]  # a slip rarely hits the first letter
    found = difflib.get_close_matches(text, same_start, n=1, cutoff=0.75)
    if not found and text.isalpha():  # a concentration without its volume: mmol → mmol/L
        found = sorted(s for s in folded if s.startswith(text + "/"))[:1]
    return folded[found[0]] if found else None


def unit_hint(word: str, catalogue: Catalogue | None = None) -> str:
    """The hint of an unknown unit (R032): the unit meant, or the units there are."""
    found = suggest_unit(word, catalogue)
    if found is not None:
        return f"did you mean '{found}'?"
    if word.lower().removesuffix("s") in ("min", "minute", "sec", "second"):
        return "durations are in ms, s, h, d, w, months or years (30 min = 0.5 h)"
    return "units are those of terminology/units.csv and unit_spellings.csv (mmol/L, mg/dL, h...)"


def _subsequence(short: str, long: str) -> bool:
    letters = iter(long)
    return all(ch in letters for ch in short)


def unit_factor(source: str, target: str, catalogue: Catalogue | None = None) -> float | None:
    """The factor from ``source`` to ``target`` when both are of one dimension."""
    a, b = unit_info(source, catalogue), unit_info(target, catalogue)
    if a is None or b is None or a.dimension != b.dimension:
        return None
    return a.factor / b.factor


def concept_factor(catalogue: Catalogue, concept: str, unit: str) -> float | None:
    """The factor from ``unit`` to the concept's canonical unit: the terminology's table
    first (molar ↔ mass concentrations are per concept), then one dimension."""
    if concept not in catalogue.concepts:
        return None
    symbol = canonical_spelling(unit, catalogue)
    table = catalogue.conversion(concept, symbol)
    if table is not None:
        return table
    return unit_factor(symbol, catalogue.concepts[concept].unit, catalogue)
