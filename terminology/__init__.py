"""Terminology and units as data files, with their loaders: ``vigie.terminology.tables`` (codes,
feeds' units) and ``vigie.terminology.units`` (the unit tables the rules and the engine read)."""

from vigie.terminology.tables import (
    ATC_SYSTEMS,
    DATA_DIR,
    LOINC,
    Concept,
    QualitativeResult,
    Terminology,
    UnknownUnit,
    default_terminology,
    normalise_icd10,
    normalise_system,
    ucd13,
)
from vigie.terminology.units import UnitTables, default_unit_tables

__all__ = [
    "ATC_SYSTEMS",
    "DATA_DIR",
    "LOINC",
    "Concept",
    "QualitativeResult",
    "Terminology",
    "UnitTables",
    "UnknownUnit",
    "default_terminology",
    "default_unit_tables",
    "normalise_icd10",
    "normalise_system",
    "ucd13",
]
