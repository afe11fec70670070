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

from dataclasses import dataclass

from vigie.rules.concepts import Catalogue
from vigie.terminology.units import default_unit_tables

__all__ = [
    "BASE_UNITS",
    "UnitInfo",
    "canonical_spelling",
    "concept_factor",
    "known_units",
    "unit_factor",
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
