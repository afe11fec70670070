"""Terminology and units, driven by the data files beside this module.

Every mapping is data, not code:

- ``labs.csv``: the lab and observation concepts (creatinine, potassium, weight, QTc...), their
  kind (``lab`` or ``observation``) and canonical unit.
- ``lab_codes.csv``: code system + code → concept, with the unit the code implies when the
  message does not send one (LOINC 2160-0 is creatinine in mg/dL).
- ``unit_aliases.csv``: spellings met in feeds → one canonical spelling (``mmol/l``, ``mEq/L``
  → ``mmol/L`` where equivalent for monovalent ions is handled by the conversion table).
- ``unit_conversions.csv``: per concept (or ``*`` for any), from unit → to unit, factor.
- ``routes.csv``: route codes and labels (HL7 0162, EDQM, SNOMED, PN13, free text) → canonical
  route (``oral``, ``iv``, ``sc``, ``im``, ``transdermal``...).
- drug tables (``drugs_*.csv[.gz]``): CIS/CIP13 → ATC derived from the BDPM, RxNorm → ATC, and a
  site table for local codes (UCD, hospital formulary), replaceable per site.

Nothing is guessed: an unmapped code returns ``None`` and an unknown unit raises
``UnknownUnit``; the connector keeps the fact and flags it.

>>> t = default_terminology()
>>> t.lab_concept("http://loinc.org", "2160-0").name
'creatinine'
>>> t.to_canonical("creatinine", 1.2, "mg/dL")
(106.104, 'µmol/L')
"""

from __future__ import annotations

import csv
import gzip
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = [
    "ATC_SYSTEMS",
    "LOINC",
    "Concept",
    "Terminology",
    "UnknownUnit",
    "default_terminology",
    "normalise_system",
]

DATA_DIR = Path(__file__).parent
LOINC = "http://loinc.org"

# Short names for the code systems met in feeds; every lookup goes through these.
_SYSTEM_ALIASES = {
    "http://loinc.org": "LOINC",
    "urn:oid:2.16.840.1.113883.6.1": "LOINC",
    "ln": "LOINC",
    "loinc": "LOINC",
    "http://www.whocc.no/atc": "ATC",
    "http://www.who.int/atc": "ATC",
    "urn:oid:2.16.840.1.113883.6.73": "ATC",
    "atc": "ATC",
    "whoatc": "ATC",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RXNORM",
    "urn:oid:2.16.840.1.113883.6.88": "RXNORM",
    "rxnorm": "RXNORM",
    "rxn": "RXNORM",
    "http://snomed.info/sct": "SNOMED",
    "sct": "SNOMED",
    "snomed": "SNOMED",
    "http://hl7.org/fhir/sid/icd-10": "ICD10",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD10",
    "urn:oid:2.16.840.1.113883.6.3": "ICD10",
    "i10": "ICD10",
    "icd10": "ICD10",
    "cim10": "ICD10",
    "cim-10": "ICD10",
    "http://data.esante.gouv.fr/ansm/medicament/codeCIS": "CIS",
    "urn:oid:1.2.250.1.213.2.3.1": "CIS",
    "cis": "CIS",
    "http://data.esante.gouv.fr/ansm/medicament/codeCIP13": "CIP13",
    "urn:oid:1.2.250.1.213.2.3.2": "CIP13",
    "cip13": "CIP13",
    "cip": "CIP13",
    "http://data.esante.gouv.fr/ansm/medicament/UCD": "UCD",
    "urn:oid:1.2.250.1.213.2.3.3": "UCD",
    "ucd": "UCD",
    "ndc": "NDC",
    "http://hl7.org/fhir/sid/ndc": "NDC",
}

ATC_SYSTEMS = frozenset({"ATC"})


def normalise_system(system: str | None) -> str:
    """The short name of a code system (``LOINC``, ``ATC``, ``RXNORM``...), or ``LOCAL``."""
    if not system:
        return "LOCAL"
    key = system.strip()
    return _SYSTEM_ALIASES.get(key, _SYSTEM_ALIASES.get(key.lower(), key.upper()))


class UnknownUnit(ValueError):
    """A unit the tables cannot convert to the concept's canonical unit."""

    def __init__(self, concept: str, unit: str | None, canonical: str) -> None:
        self.concept, self.unit, self.canonical = concept, unit, canonical
        super().__init__(f"unit {unit!r} cannot be converted to {canonical} for {concept}")


@dataclass(frozen=True)
class Concept:
    """A lab or observation concept and its canonical unit."""

    name: str
    kind: str  # "lab" or "observation"
    unit: str
    label: str


@dataclass(frozen=True)
class _CodeEntry:
    concept: str
    implied_unit: str | None


def _rows(name: str, directory: Path = DATA_DIR) -> Iterator[dict[str, str]]:
    """Rows of a CSV data file (``#`` lines are comments, e.g. the source citation)."""
    path = directory / name
    if not path.exists() and (directory / f"{name}.gz").exists():
        path = directory / f"{name}.gz"
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = (line for line in io.StringIO(raw.decode("utf-8")) if not line.startswith("#"))
    yield from csv.DictReader(lines)


class Terminology:
    """Loaded mapping tables. Use ``default_terminology()`` for the shipped tables.

    ``site_dir`` points at a site's own tables (``site_drugs.csv``, ``site_lab_codes.csv``)
    that are read after, and win over, the shipped ones.
    """

    def __init__(self, data_dir: Path = DATA_DIR, site_dir: Path | None = None) -> None:
        self.concepts = {
            r["concept"]: Concept(r["concept"], r["kind"], r["unit"], r["label"])
            for r in _rows("labs.csv", data_dir)
        }
        self._codes: dict[tuple[str, str], _CodeEntry] = {}
        self._load_codes(_rows("lab_codes.csv", data_dir))
        self._aliases = {r["alias"].strip(): r["unit"] for r in _rows("unit_aliases.csv", data_dir)}
        self._conversions: dict[tuple[str, str, str], float] = {}
        for r in _rows("unit_conversions.csv", data_dir):
            key = (r["concept"], self.canonical_unit(r["from_unit"]), r["to_unit"])
            self._conversions[key] = float(r["factor"])
        self._routes = {
            (normalise_system(r["system"]), r["code"].strip().lower()): r["route"]
            for r in _rows("routes.csv", data_dir)
        }
        self._drugs: dict[tuple[str, str], str] = {}
        for name in ("drugs_bdpm_cis.csv", "drugs_bdpm_cip13.csv", "drugs_rxnorm.csv",
                     "drugs_site.csv"):
            if (data_dir / name).exists() or (data_dir / f"{name}.gz").exists():
                self._load_drugs(_rows(name, data_dir))
        if site_dir is not None:
            self._load_site(site_dir)

    def _load_codes(self, rows: Iterator[dict[str, str]]) -> None:
        for r in rows:
            key = (normalise_system(r["system"]), r["code"].strip())
            self._codes[key] = _CodeEntry(r["concept"], r.get("implied_unit") or None)

    def _load_drugs(self, rows: Iterator[dict[str, str]]) -> None:
        for r in rows:
            self._drugs[(normalise_system(r["system"]), r["code"].strip())] = r["atc"].strip()

    def _load_site(self, site_dir: Path) -> None:
        if (site_dir / "site_lab_codes.csv").exists():
            self._load_codes(_rows("site_lab_codes.csv", site_dir))
        if (site_dir / "site_drugs.csv").exists():
            self._load_drugs(_rows("site_drugs.csv", site_dir))

    # Labs and observations -------------------------------------------------------------

    def lab_concept(self, system: str | None, code: str) -> Concept | None:
        """The concept a lab/observation code stands for, or ``None`` when unmapped."""
        entry = self._codes.get((normalise_system(system), code.strip()))
        return self.concepts[entry.concept] if entry else None

    def implied_unit(self, system: str | None, code: str) -> str | None:
        entry = self._codes.get((normalise_system(system), code.strip()))
        return entry.implied_unit if entry else None

    def canonical_unit(self, unit: str | None) -> str:
        """One spelling per unit (``mmol/l`` → ``mmol/L``); unknown spellings pass through."""
        if unit is None:
            return ""
        text = unit.strip()
        return self._aliases.get(text, self._aliases.get(text.lower(), text))

    def to_canonical(self, concept: str, value: float, unit: str | None) -> tuple[float, str]:
        """Convert a value to the concept's canonical unit, or raise ``UnknownUnit``."""
        target = self.concepts[concept].unit
        source = self.canonical_unit(unit)
        if source == target:
            return value, target
        factor = self._conversions.get((concept, source, target))
        if factor is None:
            factor = self._conversions.get(("*", source, target))
        if factor is None:
            raise UnknownUnit(concept, unit, target)
        return round(value * factor, 6), target

    # Drugs, routes, diagnoses ------------------------------------------------------------

    def drug_atc(self, system: str | None, code: str) -> str | None:
        """ATC code of a drug code: ATC itself, CIS, CIP13, RxNorm, UCD/local via tables."""
        short = normalise_system(system)
        code = code.strip()
        if short in ATC_SYSTEMS:
            return code.upper() or None
        return self._drugs.get((short, code))

    def route(self, system: str | None, code_or_text: str | None) -> str | None:
        """Canonical route for a route code or label, or ``None`` when unknown."""
        if not code_or_text:
            return None
        key = code_or_text.strip().lower()
        return self._routes.get((normalise_system(system), key)) or self._routes.get(
            ("TEXT", key)
        )


@cache
def default_terminology() -> Terminology:
    """The shipped tables, plus the site tables in ``$VIGIE_SITE_TABLES`` if set."""
    site = os.environ.get("VIGIE_SITE_TABLES")
    return Terminology(site_dir=Path(site) if site else None)
