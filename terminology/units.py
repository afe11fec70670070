"""The unit tables, read from the data files beside this module: one loader for the rule
language, the engine and the connectors.

- ``units.csv``: the units rules and drug amounts are written in, each with its dimension and
  its factor to the dimension's base unit (``unit_dimensions.csv``); ``dose`` marks the units
  a drug amount is summed and compared in.
- ``unit_spellings.csv``: spellings a rule author (or a dose field) may write for those units
  (``days`` → ``d``, ``mcg`` → ``µg``); the Greek mu always reads as the micro sign.
- ``unit_aliases.csv``: the feeds' spellings of lab units (``mmol/l`` → ``mmol/L``).
- ``unit_conversions.csv``: per-concept factors to the concept's canonical unit (creatinine
  mg/dL → µmol/L is a molar-mass question no dimension answers); ``use=feeds`` rows fix labels
  met in data and are not for rules.
- ``mme_factors.csv``: the CDC 2022 morphine milligram equivalent factors per opioid ATC code.

CSV files share one format: UTF-8, a header line, ``#`` lines are comments (sources, notes), and
a ``.csv.gz`` is read when the plain file is absent.

>>> tables = default_unit_tables()
>>> tables.units["mg/dL"]
Unit(symbol='mg/dL', dimension='mass_concentration', factor=10.0, dose=False)
>>> tables.base_units["duration"], tables.spell("days")
('s', 'd')
>>> tables.conversion("creatinine", "mg/dL", "µmol/L")
88.42
>>> tables.mme_factors["N02AB03"]
MmeFactor(atc='N02AB03', factor=2.4, per='µg/h', route='transdermal')
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = [
    "DATA_DIR",
    "Conversion",
    "MmeFactor",
    "Unit",
    "UnitTables",
    "default_unit_tables",
    "micro_sign",
    "read_rows",
    "read_unit_aliases",
    "read_unit_conversions",
]

DATA_DIR = Path(__file__).parent
_GREEK_MU, _MICRO_SIGN = "\u03bc", "\u00b5"


def read_rows(name: str, directory: Path = DATA_DIR) -> list[dict[str, str]]:
    """Rows of a CSV data file (``#`` lines are comments); ``name.gz`` when ``name`` is absent."""
    path = directory / name
    if not path.exists() and (directory / f"{name}.gz").exists():
        path = directory / f"{name}.gz"
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    lines = [line for line in io.StringIO(raw.decode("utf-8")) if not line.startswith("#")]
    return list(csv.DictReader(lines))


def micro_sign(unit: str) -> str:
    """``μg`` written with the Greek mu → ``µg`` with the micro sign, as the tables spell it."""
    return unit.replace(_GREEK_MU, _MICRO_SIGN)


@dataclass(frozen=True, slots=True)
class Unit:
    symbol: str
    dimension: str
    factor: float  # value × factor = value in the dimension's base unit
    dose: bool  # a unit drug amounts are summed and compared in


@dataclass(frozen=True, slots=True)
class Conversion:
    """A row of ``unit_conversions.csv``: canonical value = value × factor."""

    concept: str  # a concept name, or ``*`` for any
    from_unit: str
    to_unit: str
    factor: float
    use: str  # "" for every use, "feeds" for labels met in data only


@dataclass(frozen=True, slots=True)
class MmeFactor:
    """Morphine milligram equivalents per unit of an opioid line's dose.

    ``per`` is ``mg/d`` (per mg a day of the line's daily dose) or a rate such as ``µg/h`` (per
    µg/h of the line's dose: a patch); ``route``, when given, is the only route it holds for.
    """

    atc: str
    factor: float
    per: str
    route: str | None


def read_unit_aliases(directory: Path = DATA_DIR) -> dict[str, str]:
    """``unit_aliases.csv``: a feed's spelling → the canonical spelling."""
    return {r["alias"].strip(): r["unit"].strip() for r in read_rows("unit_aliases.csv", directory)}


def read_unit_conversions(directory: Path = DATA_DIR) -> tuple[Conversion, ...]:
    """``unit_conversions.csv``, in file order (spellings as written: each reader normalises)."""
    return tuple(
        Conversion(
            r["concept"].strip(),
            r["from_unit"].strip(),
            r["to_unit"].strip(),
            float(r["factor"]),
            (r.get("use") or "").strip(),
        )
        for r in read_rows("unit_conversions.csv", directory)
    )


@dataclass(frozen=True)
class UnitTables:
    """Every unit table, loaded once (``default_unit_tables()`` for the shipped files)."""

    units: dict[str, Unit]
    base_units: dict[str, str]  # dimension → base unit
    spellings: dict[str, str]  # a rule author's spelling → unit of ``units``
    aliases: dict[str, str]  # a feed's spelling → canonical spelling
    conversions: tuple[Conversion, ...]
    mme_factors: dict[str, MmeFactor]  # ATC code → factor

    @classmethod
    def from_directory(cls, directory: Path = DATA_DIR) -> UnitTables:
        units = {
            r["unit"]: Unit(r["unit"], r["dimension"], float(r["factor"]), r["dose"] == "yes")
            for r in read_rows("units.csv", directory)
        }
        base_units = {
            r["dimension"]: r["base_unit"] for r in read_rows("unit_dimensions.csv", directory)
        }
        _check_base_units(units, base_units)
        spellings = {r["spelling"]: r["unit"] for r in read_rows("unit_spellings.csv", directory)}
        mme = {
            r["atc"]: MmeFactor(r["atc"], float(r["factor"]), r["per"], r["route"] or None)
            for r in read_rows("mme_factors.csv", directory)
        }
        aliases = read_unit_aliases(directory)
        conversions = read_unit_conversions(directory)
        return cls(units, base_units, spellings, aliases, conversions, mme)

    def spell(self, unit: str) -> str:
        """A rule author's spelling of a unit → its symbol in ``units`` (others pass through)."""
        text = micro_sign(unit.strip())
        return self.spellings.get(text, text)

    def spellings_of(self, symbol: str) -> frozenset[str]:
        """Every way ``symbol`` may be written: itself, with a Greek mu, and its spellings.

        >>> sorted(default_unit_tables().spellings_of("µg"))
        ['mcg', 'ug', 'µg', 'μg']
        """
        found = {symbol, symbol.replace(_MICRO_SIGN, _GREEK_MU)}
        found.update(s for s, target in self.spellings.items() if target == symbol)
        return frozenset(found)

    def conversion(self, concept: str, from_unit: str, to_unit: str) -> float | None:
        """The table's factor for exactly this concept (not ``*``) and these spellings."""
        for row in self.conversions:
            if (row.concept, row.from_unit, row.to_unit) == (concept, from_unit, to_unit):
                return row.factor
        return None

    def required_conversion(self, concept: str, from_unit: str, to_unit: str) -> float:
        """``conversion``, for a factor the code cannot work without (``LookupError`` if absent)."""
        factor = self.conversion(concept, from_unit, to_unit)
        if factor is None:
            raise LookupError(f"unit_conversions.csv: no {concept} {from_unit} → {to_unit} row")
        return factor


def _check_base_units(units: dict[str, Unit], base_units: dict[str, str]) -> None:
    """A broken table must fail where it is read, not as a wrong factor in a rule."""
    for dimension in {u.dimension for u in units.values()}:
        base = units.get(base_units.get(dimension, ""))
        if base is None or base.dimension != dimension or base.factor != 1.0:
            raise ValueError(f"units.csv: dimension {dimension} has no base unit of factor 1")


@cache
def default_unit_tables() -> UnitTables:
    """The shipped unit tables."""
    return UnitTables.from_directory(DATA_DIR)
