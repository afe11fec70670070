"""Units in rules: their dimension, and the factor between two units.

A unit written in a rule (``mmol/L``, ``mg/dL``, ``48 h``) is looked up in a small table of
dimensions with factors to a base unit (durations in seconds, masses in mg...). A literal
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


_TABLE: dict[str, tuple[str, float]] = {
    # durations (base: second); a month is 30.4375 days and a year 365.25 days
    "ms": ("duration", 0.001),
    "s": ("duration", 1.0),
    "h": ("duration", 3600.0),
    "d": ("duration", 86400.0),
    "w": ("duration", 604800.0),
    "months": ("duration", 2629800.0),
    "years": ("duration", 31557600.0),
    # masses (base: mg): drug amounts and body weight
    "µg": ("mass", 0.001),
    "mg": ("mass", 1.0),
    "g": ("mass", 1000.0),
    "kg": ("mass", 1_000_000.0),
    "lb": ("mass", 453592.37),
    "IU": ("international_unit", 1.0),
    "MME": ("morphine_equivalent", 1.0),
    # concentrations
    "mol/L": ("molar_concentration", 1000.0),
    "mmol/L": ("molar_concentration", 1.0),
    "µmol/L": ("molar_concentration", 0.001),
    "nmol/L": ("molar_concentration", 0.000001),
    "g/dL": ("mass_concentration", 10000.0),
    "g/L": ("mass_concentration", 1000.0),
    "mg/dL": ("mass_concentration", 10.0),
    "mg/L": ("mass_concentration", 1.0),
    "µg/mL": ("mass_concentration", 1.0),
    "µg/L": ("mass_concentration", 0.001),
    "ng/mL": ("mass_concentration", 0.001),
    "G/L": ("cell_concentration", 1.0),
    "T/L": ("cell_concentration", 1000.0),
    "U/L": ("activity_concentration", 1.0),
    "IU/L": ("activity_concentration", 1.0),
    # renal function
    "mL/min": ("clearance", 1.0),
    "mL/min/1.73m2": ("normalised_clearance", 1.0),
    # lengths (base: cm)
    "mm": ("length", 0.1),
    "cm": ("length", 1.0),
    "m": ("length", 100.0),
    "1": ("ratio", 1.0),
}

BASE_UNITS: dict[str, str] = {
    "duration": "s",
    "mass": "mg",
    "international_unit": "IU",
    "morphine_equivalent": "MME",
    "molar_concentration": "mmol/L",
    "mass_concentration": "mg/L",
    "cell_concentration": "G/L",
    "activity_concentration": "U/L",
    "clearance": "mL/min",
    "normalised_clearance": "mL/min/1.73m2",
    "length": "cm",
    "ratio": "1",
}

# Spellings a rule author may use for the units above.
_ALIASES = {
    "hour": "h", "hours": "h", "day": "d", "days": "d", "week": "w", "weeks": "w",
    "month": "months", "year": "years", "y": "years",
    "ug": "µg", "mcg": "µg", "UI": "IU", "umol/L": "µmol/L", "ug/L": "µg/L", "ug/mL": "µg/mL",
    "mEq/L": "mEq/L", "UI/L": "IU/L", "ml/min": "mL/min", "mL/min/1.73m²": "mL/min/1.73m2",
}  # fmt: skip


def canonical_spelling(unit: str, catalogue: Catalogue | None = None) -> str:
    """``μg`` (Greek mu) → ``µg``, ``days`` → ``d``, then the terminology's spellings."""
    text = unit.strip().replace("\u03bc", "\u00b5")
    text = _ALIASES.get(text, text)
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
