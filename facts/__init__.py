"""The canonical fact model every feed is normalised into (see ``vigie.facts.model``).

A leaf package: it imports nothing of the project, so connectors, the store and the engine can
all depend on it without loading one another.
"""

from vigie.facts.model import (
    CODED_FIELDS,
    FACT_KINDS,
    Allergy,
    AnyFact,
    Coding,
    Condition,
    Fact,
    Flag,
    FlagCode,
    LabResult,
    MedicationAdministration,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Retraction,
    Sex,
    Source,
    Stay,
)

__all__ = [
    "CODED_FIELDS",
    "FACT_KINDS",
    "Allergy",
    "AnyFact",
    "Coding",
    "Condition",
    "Fact",
    "Flag",
    "FlagCode",
    "LabResult",
    "MedicationAdministration",
    "MedicationOrder",
    "Observation",
    "Patient",
    "Pregnancy",
    "Retraction",
    "Sex",
    "Source",
    "Stay",
]
