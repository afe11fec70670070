"""Warnings for thresholds and codes that are well formed but most likely wrong.

Two checks, both warnings (the pack still compiles):

- R036, a unit slip: a threshold compared with a lab, once converted to the lab's canonical unit,
  falls outside the range decision thresholds on that lab plausibly lie in (``thresholds.csv``).
  ``creatinine > 1.2 mmol/L`` is 1200 µmol/L (meant: 1.2 mg/dL, 106 µmol/L); ``glucose < 0.6
  mmol/L`` is a glycaemia no one alerts at (meant: 0.6 g/L, 3.3 mmol/L). The hint names the unit
  in which the number written would be plausible.
- R060, an ATC code or prefix that no known product carries and that does not fit the known
  codes around it (``atc_plausible``): the codes of the terminology's drug tables (BDPM CIS and
  CIP13, RxNorm, the site formulary), of the allergen table and the WHO codes reviewed for the
  ANSM pack; a rule code is known when some known code starts with it.

>>> from vigie.rules.concepts import default_catalogue
>>> slip = threshold_slip(default_catalogue(), "creatinine", 1.2, "mmol/L")
>>> slip is not None and slip.canonical, slip and slip.suggestion
(1200.0, ('mg/dL', 106.104))
>>> threshold_slip(default_catalogue(), "creatinine", 120, "µmol/L") is None
True
>>> atc_known("C09AA05"), atc_plausible("C09AA99"), atc_plausible("C99")
(True, False, False)
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from vigie import settings
from vigie.rules.concepts import TERMINOLOGY_DIR, Catalogue
from vigie.rules.units import concept_factor, known_units
from vigie.terminology.units import read_rows

__all__ = [
    "ATC_LEVELS",
    "Slip",
    "atc_close_codes",
    "atc_known",
    "atc_plausible",
    "known_atc_codes",
    "threshold_ranges",
    "threshold_slip",
]

# Lengths of the five ATC levels (anatomical group, therapeutic, pharmacological, chemical
# subgroups, substance): C, C09, C09A, C09AA, C09AA05.
ATC_LEVELS = (1, 3, 4, 5, 7)
_SITE_DRUGS = "site_drugs.csv"


@cache
def threshold_ranges() -> dict[str, tuple[float, float]]:
    """Concept → (low, high) plausible decision thresholds, in the canonical unit."""
    rows = read_rows("thresholds.csv", Path(__file__).parent)
    return {r["concept"]: (float(r["low"]), float(r["high"])) for r in rows}


@dataclass(frozen=True)
class Slip:
    """A threshold outside its lab's plausible range."""

    concept: str
    number: float  # as written
    unit: str  # as written
    canonical: float  # in the concept's canonical unit
    canonical_unit: str
    low: float  # the plausible range, canonical unit
    high: float
    factor: float  # written unit → canonical unit
    suggestion: tuple[str, float] | None  # (unit, canonical value) that would be plausible

    def message(self) -> str:
        shown = _shown(self.canonical_unit)
        written = f"{_num(self.number)} {self.unit}".strip()
        ranges = f"{_num(self.low / self.factor)}–{_num(self.high / self.factor)} {self.unit}"
        if self.unit and self.unit != self.canonical_unit:
            written += f" ({_num(self.canonical)} {shown})".replace(" )", ")")
            ranges += f" = {_num(self.low)}–{_num(self.high)} {shown}"
        return (
            f"implausible threshold for {self.concept}: {written} is outside its plausible "
            f"range {ranges.strip()}"
        )

    def hint(self) -> str:
        if self.suggestion is None:
            unit = _shown(self.canonical_unit)
            kind = f"is in {unit}" if unit else "is a number without unit"
            return f"{self.concept} {kind}; check the number and its unit"
        unit, value = self.suggestion
        return (
            f"did you mean {unit}? {_num(self.number)} {unit} is "
            f"{_num(value)} {_shown(self.canonical_unit)}"
        ).strip()


def threshold_slip(catalogue: Catalogue, concept: str, number: float, unit: str) -> Slip | None:
    """The slip when ``number unit`` compared with ``concept`` lies outside its plausible range."""
    bounds = threshold_ranges().get(concept)
    lab = catalogue.concepts.get(concept)
    if bounds is None or lab is None:
        return None
    unit = "" if unit in ("", "1") else unit
    written = unit or lab.unit
    factor = concept_factor(catalogue, concept, written) if unit else 1.0
    if factor is None:
        return None
    low, high = bounds
    canonical = round(number * factor, 10)
    if low <= canonical <= high or number == 0:
        return None
    return Slip(
        concept,
        number,
        unit,
        canonical,
        lab.unit,
        low,
        high,
        factor,
        _suggestion(catalogue, concept, number, written, bounds),
    )


def _suggestion(
    catalogue: Catalogue, concept: str, number: float, written: str, bounds: tuple[float, float]
) -> tuple[str, float] | None:
    """The unit (of the lab's dimension, or convertible for it) making ``number`` plausible,
    the nearest the middle of the range (on a log scale) when several do."""
    low, high = bounds
    middle = math.log(low * high) / 2
    units = set(known_units()) | {
        key[1] for key in catalogue.conversions if key[0] in (concept, "*") and key[2]
    }
    found: list[tuple[float, str, float]] = []
    for unit in sorted(units - {written}):
        if not unit[:1].isalpha():  # `/mm3` converts data but cannot be written in a rule
            continue
        factor = concept_factor(catalogue, concept, unit)
        if factor is None:
            continue
        value = round(number * factor, 10)
        if low <= value <= high:
            found.append((abs(math.log(value) - middle), unit, round(value, 4)))
    if not found:
        return None
    _, unit, value = min(found)
    return unit, value


def _shown(unit: str) -> str:
    return "" if unit == "1" else unit


def _num(value: float) -> str:
    return f"{value:.4g}"


# ATC codes ----------------------------------------------------------------------------------

# WHO ATC codes reviewed for the ANSM pack (substances and classes the BDPM maps incompletely):
# read as data, so that codes of substances the product tables miss (lithium, domperidone,
# gabapentin: BDPM gives an ATC to few products) are not reported.
_REVIEWED = (("packs", "ansm_substances.csv"), ("packs", "ansm_classes.csv"))
_TERMINOLOGY_EXTRA = ("allergy_atc.csv",)
_MARGIN = 10  # substance numbers a subgroup may hold beyond its highest known one
_LETTER_MARGIN = 2  # subgroup letters beyond the highest known (C07DB after C07DA)
_COMBINATION_SERIES = (5, 7)  # WHO numbers combinations 51-59 and 71-79 (N02BA51, C01BA71)


@cache
def known_atc_codes() -> frozenset[str]:
    """The ATC codes known to Vigie: the products of the terminology's drug tables
    (``drugs_*.csv[.gz]``: BDPM CIS and CIP13, RxNorm, the site formulary, and the site tables of
    ``$VIGIE_SITE_TABLES`` when set), the allergen table, and the reviewed WHO codes of the ANSM
    pack's tables."""
    codes: set[str] = set()
    names = {p.name.removesuffix(".gz") for p in TERMINOLOGY_DIR.glob("drugs_*.csv*")}
    for name in sorted(names) + list(_TERMINOLOGY_EXTRA):
        if (TERMINOLOGY_DIR / name).exists() or (TERMINOLOGY_DIR / f"{name}.gz").exists():
            codes.update(_atc_column(read_rows(name, TERMINOLOGY_DIR)))
    site: Path | None = settings.value("site_tables")
    if site is not None and (site / _SITE_DRUGS).exists():
        codes.update(_atc_column(read_rows(_SITE_DRUGS, site)))
    for folder, name in _REVIEWED:
        path = Path(__file__).parent / folder
        if (path / name).exists():
            codes.update(_atc_column(read_rows(name, path)))
    return frozenset(code for code in codes if _ATC_SHAPE.fullmatch(code))


_ATC_SHAPE = re.compile(r"[A-Z]([0-9]{2}([A-Z]([A-Z]([0-9]{2})?)?)?)?")


def _atc_column(rows: list[dict[str, str]]) -> set[str]:
    return {code for r in rows for code in (r.get("atc") or "").upper().split() if code}


@cache
def _known_prefixes() -> frozenset[str]:
    return frozenset(
        code[:level] for code in known_atc_codes() for level in ATC_LEVELS if len(code) >= level
    )


def atc_known(code: str) -> bool:
    """A code some known product carries, or an ATC level prefix of one."""
    return code.upper() in _known_prefixes()


def atc_plausible(code: str) -> bool:
    """Known, or fitting the known codes around it, level by level: under a plausible parent,
    a letter up to two after the highest known sibling's (or ``X``, WHO's "other"), a number
    up to the highest known sibling's plus a margin (a combination series 5x or 7x always); a
    parent with no known child accepts any. The product tables are far from the whole WHO
    index (BDPM gives an ATC to few products): a real code is let through, a slip (C09AA99,
    C99) is not."""
    text = code.upper()
    if text in _known_prefixes():
        return True
    level = ATC_LEVELS.index(len(text)) if len(text) in ATC_LEVELS else 0
    if level == 0:
        return False
    start = ATC_LEVELS[level - 1]
    parent, own = text[:start], text[start:]
    if not atc_plausible(parent):
        return False
    siblings = [p[start:] for p in _known_prefixes() if len(p) == len(text) and p[:start] == parent]
    if not siblings:
        return True
    if own.isalpha():
        return own == "X" or ord(own) <= ord(max(siblings)) + _LETTER_MARGIN
    number = int(own)
    if number // 10 in _COMBINATION_SERIES:
        return True
    plain = [int(s) for s in siblings if int(s) // 10 not in _COMBINATION_SERIES]
    return not plain or number <= max(plain) + _MARGIN


def atc_close_codes(code: str, limit: int = 3) -> list[str]:
    """Known codes or prefixes of the same level near ``code``: the same parent group first."""
    text = code.upper()
    same_level = sorted(p for p in _known_prefixes() if len(p) == len(text))
    for cut in range(len(text) - 1, 0, -1):  # siblings under the longest known parent
        siblings = [p for p in same_level if p.startswith(text[:cut])]
        if siblings and cut >= len(text) - 2:
            close = difflib.get_close_matches(text, siblings, n=limit, cutoff=0.0)
            return sorted(close)
    return difflib.get_close_matches(text, same_level, n=limit, cutoff=0.6)
