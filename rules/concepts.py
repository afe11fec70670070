"""The checker's window on the terminology tables, read by path so the engine never imports
``connectors``.

It reads, from ``connectors/terminology/`` (or any directory with the same files):
``labs.csv`` (lab and observation concepts with their canonical unit and French label),
``unit_conversions.csv`` (per-concept factors to the canonical unit), ``unit_aliases.csv``
(spellings → one spelling) and ``routes.csv`` (canonical route names).

>>> catalogue = default_catalogue()
>>> catalogue.concepts["creatinine"].unit
'µmol/L'
>>> catalogue.conversion("creatinine", "mg/dL")
88.42
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["TERMINOLOGY_DIR", "Catalogue", "LabConcept", "default_catalogue"]

TERMINOLOGY_DIR = Path(__file__).resolve().parents[1] / "terminology"


@dataclass(frozen=True)
class LabConcept:
    name: str
    kind: str  # "lab" or "observation": the fact kind it is read from
    unit: str
    label: str


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
            r["concept"]: LabConcept(r["concept"], r["kind"], r["unit"], r["label"])
            for r in _rows(directory / "labs.csv")
        }
        aliases = {
            r["alias"].strip(): r["unit"].strip() for r in _rows(directory / "unit_aliases.csv")
        }
        conversions = {
            (r["concept"], _spell(aliases, r["from_unit"]), _spell(aliases, r["to_unit"])): float(
                r["factor"]
            )
            for r in _rows(directory / "unit_conversions.csv")
            if (r.get("use") or "").strip() != "feeds"  # label fixes for data, not for rules
        }
        route_rows = _rows(directory / "routes.csv")
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


def _rows(path: Path) -> list[dict[str, str]]:
    """CSV rows, ``#`` lines being comments (sources and notes) as in the terminology tables."""
    text = path.read_text(encoding="utf-8")
    lines = [line for line in io.StringIO(text) if not line.startswith("#")]
    return list(csv.DictReader(lines))


@cache
def default_catalogue() -> Catalogue:
    """The shipped terminology tables."""
    return Catalogue.from_directory(TERMINOLOGY_DIR)
