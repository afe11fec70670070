"""Terminology and units as data files, with their loader (``vigie.terminology.tables``)."""

from vigie.terminology.tables import (
    ATC_SYSTEMS,
    DATA_DIR,
    LOINC,
    Concept,
    Terminology,
    UnknownUnit,
    default_terminology,
    normalise_icd10,
    normalise_system,
    ucd13,
)

__all__ = [
    "ATC_SYSTEMS",
    "DATA_DIR",
    "LOINC",
    "Concept",
    "Terminology",
    "UnknownUnit",
    "default_terminology",
    "normalise_icd10",
    "normalise_system",
    "ucd13",
]
