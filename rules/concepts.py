"""The checker's window on the terminology tables.

It reads, from ``terminology/`` (or any directory with the same files) through the terminology's
CSV reader (``vigie.terminology.units``): ``labs.csv`` (lab and observation concepts with their
canonical unit, French label and whether their results may be qualitative: positive or
negative), ``unit_conversions.csv`` (per-concept factors to the canonical unit),
``unit_aliases.csv`` (spellings → one spelling) and ``routes.csv`` (canonical route names).

>>> catalogue = default_catalogue()
>>> catalogue.concepts["creatinine"].unit
'µmol/L'
>>> catalogue.conversion("creatinine", "mg/dL")
88.42
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from vigie.terminology.units import (
    DATA_DIR,
    read_rows,
    read_unit_aliases,
    read_unit_conversions,
)

__all__ = ["TERMINOLOGY_DIR", "Catalogue", "LabConcept", "default_catalogue"]

TERMINOLOGY_DIR = DATA_DIR


@dataclass(frozen=True)
class LabConcept:
    name: str
    kind: str  # "lab" or "observation": the fact kind it is read from
    unit: str
    label: str
    qualitative: bool = False  # results may be positive or negative (``is positive``)


@dataclass(frozen=True)
class Catalogue:
    """Concepts, conversion factors, unit spellings and routes, as the rule checker needs them."""

    concepts: dict[str, LabConcept]
    conversions: dict[tuple[str, str, str], float]  # (concept or "*", from, to) → factor
    aliases: dict[str, str]
    routes: frozenset[str]
    route_spellings: dict[str, str]  # free-text route names (``intravenous``) → route

    @classmethod
    def from_directory(cls, directory: Path) -> Catalogue:
        concepts = {
            r["concept"]: LabConcept(
                r["concept"], r["kind"], r["unit"], r["label"], r.get("qualitative") == "yes"
            )
            for r in read_rows("labs.csv", directory)
        }
        aliases = read_unit_aliases(directory)
        conversions = {
            (c.concept, _spell(aliases, c.from_unit), _spell(aliases, c.to_unit)): c.factor
            for c in read_unit_conversions(directory)
            if c.use != "feeds"  # label fixes for data, not for rules
        }
        route_rows = read_rows("routes.csv", directory)
        routes = frozenset(r["route"].strip() for r in route_rows)
        spellings = {
            r["code"].strip().lower(): r["route"].strip()
            for r in route_rows
            if r["system"].strip().upper() == "TEXT"
        }
        return cls(concepts, conversions, aliases, routes, spellings)

    def spelling(self, unit: str) -> str:
        """One spelling per unit, as the terminology layer writes it (``mmol/l`` → ``mmol/L``)."""
        return _spell(self.aliases, unit)

    def conversion(self, concept: str, unit: str) -> float | None:
        """The table's factor from ``unit`` to the concept's canonical unit, if it has one."""
        target = self.concepts[concept].unit if concept in self.concepts else None
        if target is None:
            return None
        source = self.spelling(unit)
        if source == self.spelling(target):
            return 1.0
        for key in ((concept, source, target), ("*", source, target)):
            if key in self.conversions:
                return self.conversions[key]
        return None

    def name_spellings(self) -> dict[str, str]:
        """Concept names and labels → concept name, for "did you mean" hints."""
        spellings = {name: name for name in self.concepts}
        for concept in self.concepts.values():
            for word in [concept.label, *re.split(r"[()/]", concept.label)]:
                if word.strip():
                    spellings.setdefault(word.strip(), concept.name)
        return spellings


def _spell(aliases: dict[str, str], unit: str) -> str:
    text = unit.strip()
    return aliases.get(text, aliases.get(text.lower(), text))


@cache
def default_catalogue() -> Catalogue:
    """The shipped terminology tables."""
    return Catalogue.from_directory(TERMINOLOGY_DIR)
