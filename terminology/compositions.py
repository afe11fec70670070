"""Compositions of combination products: their active substances and strengths.

A combination product (codeine/paracetamol, oxycodone/naloxone...) carries one ATC code for the
whole product (N02AJ06), so the dose of each of its substances needs the product's composition.
Two tables hold it, both with the columns ``system,code,name,atc,amount,unit,per_amount,per_unit``
(one row per substance of a product):

- ``compositions_bdpm.csv.gz``: built from the BDPM by ``build_tables.py`` (``composition_rows``)
  for the products of two active substances or more, keyed by CIS and by each CIP13 and CIP7
  of the CIS. ``name`` is the active substance as weighed (the BDPM ``SA`` line:
  ``PHOSPHATE DE CODÉINE HÉMIHYDRATÉ``; its active moiety, the ``FT`` line, where only that
  one gives the strength: ``CLAVULANIQUE (ACIDE)`` 62.5 mg), ``atc`` the ATC the BDPM gives
  most products of that substance alone (paracetamol: N02BE01; empty when none carries one, as
  for codeine), the strength ``amount unit`` per ``per_amount
  per_unit`` (``per_unit`` empty: per unit of the dose form, a tablet or a capsule);
- ``compositions_site.csv``: the site formulary's combination products (UCD or local codes),
  read last; a site adds its own in ``site_compositions.csv``, in the folder named by
  ``$VIGIE_SITE_TABLES``.

A product whose strength the BDPM does not write as a plain amount (homeopathic dilutions,
``qsp``) keeps its substances with ``amount`` empty: the composition is then known, the dose of
each substance is not.

>>> rows = [{"system": "CIS", "code": "66003374", "name": "PARACÉTAMOL", "atc": "N02BE01",
...          "amount": "500", "unit": "mg", "per_amount": "1", "per_unit": ""}]
>>> table = CompositionTable(rows)
>>> paracetamol = table.ingredients("CIS", "66003374")[0]
>>> paracetamol.amount, paracetamol.unit, paracetamol.per_unit, paracetamol.source
(500.0, 'mg', None, 'bdpm')
>>> parse_strength("0,0800 g"), parse_strength("1 000 UI"), parse_strength("2CH à 30CH")
((0.08, 'g'), (1000.0, 'IU'), None)
>>> parse_reference("un comprimé"), parse_reference("100 mL de solution buvable")
((1.0, None), (100.0, 'mL'))
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import NamedTuple

from vigie.terminology.units import read_rows

__all__ = [
    "COMPOSITION_COLUMNS",
    "Component",
    "CompositionTable",
    "combination_atc_codes",
    "composition_rows",
    "parse_reference",
    "parse_strength",
]

COMPOSITION_COLUMNS = ("system", "code", "name", "atc", "amount", "unit", "per_amount", "per_unit")

# Units of a BDPM strength → the spelling the unit tables know (units.csv).
_STRENGTH_UNITS = {
    "mg": "mg",
    "g": "g",
    "µg": "µg",
    "microgramme": "µg",
    "microgrammes": "µg",
    "ui": "IU",
    "u.i.": "IU",
    "ml": "mL",
}
_NUMBER = r"([0-9][0-9  ]*(?:,[0-9]+)?|[0-9]*,[0-9]+)"
_STRENGTH = re.compile(rf"{_NUMBER}\s*([a-zµ.]+)", re.IGNORECASE)
_REFERENCE = re.compile(
    rf"(?:(un|une)\b|{_NUMBER}\s*(ml|millilitres?|g|grammes?|l|litres?)\b|{_NUMBER}\s+[a-zé])",
    re.IGNORECASE,
)
_REFERENCE_UNITS = {"ml": "mL", "millilitre": "mL", "g": "g", "gramme": "g", "l": "L", "litre": "L"}


def _number(text: str) -> float:
    return float(re.sub(r"[  ]", "", text).replace(",", "."))


def parse_strength(text: str) -> tuple[float, str] | None:
    """``500 mg`` → (500.0, "mg"); None for what is not a plain amount (``2CH``, ``qsp``)."""
    match = _STRENGTH.fullmatch(text.strip())
    if match is None:
        return None
    unit = _STRENGTH_UNITS.get(match.group(2).lower())
    return None if unit is None else (_number(match.group(1)), unit)


def parse_reference(text: str) -> tuple[float, str | None] | None:
    """What a strength is given for: ``un comprimé`` → (1.0, None) (one unit of the form),
    ``100 mL de solution`` → (100.0, "mL"), ``1 flacon`` → (1.0, None); None when the
    reference is not written.

    >>> parse_reference("1 litre de solution"), parse_reference("1 flacon de 5 ml")
    ((1.0, 'L'), (1.0, None))
    """
    match = _REFERENCE.match(text.strip())
    if match is None:
        return None
    if match.group(1):
        return 1.0, None
    if match.group(2):
        unit = match.group(3).lower().removesuffix("s")
        return _number(match.group(2)), _REFERENCE_UNITS[unit]
    return _number(match.group(4)), None


class Component(NamedTuple):
    """One substance of a product, as ``vigie.facts.model.Ingredient`` has it (the terminology does
    not import the fact model: a connector builds ``Ingredient(**component._asdict())``)."""

    name: str
    atc: str | None = None
    amount: float | None = None
    unit: str | None = None
    per_amount: float = 1.0
    per_unit: str | None = None
    source: str | None = None


@dataclass(frozen=True)
class _Line:
    cis: str
    form: str
    substance_code: str
    name: str
    strength: str
    reference: str
    nature: str
    link: str


def _lines(rows: Iterable[list[str]]) -> Iterator[_Line]:
    for f in rows:
        if len(f) >= 8 and f[6] in ("SA", "FT") and f[0].isdigit():
            yield _Line(f[0], f[1], f[2], " ".join(f[3].split()), f[4], f[5], f[6], f[7])


def _substance_atc(lines: list[_Line], atc_of: Mapping[str, str]) -> dict[str, str]:
    """BDPM substance code → the ATC most single-substance products of it carry (ties: the
    first code in order), from its SA and FT lines alike."""
    groups: dict[str, set[str]] = defaultdict(set)
    for line in lines:
        groups[line.cis].add(line.link)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for line in lines:
        atc = atc_of.get(line.cis)
        if atc is not None and len(groups[line.cis]) == 1 and len(atc) == 7:
            counts[line.substance_code][atc] += 1
    return {
        code: min(c.items(), key=lambda item: (-item[1], item[0]))[0] for code, c in counts.items()
    }


def composition_rows(
    compo: Iterable[list[str]],
    atc_of: Mapping[str, str],
    cips: Mapping[str, list[tuple[str, str]]],
) -> list[tuple[str, ...]]:
    """Rows of ``compositions_bdpm.csv.gz`` from the fields of ``CIS_COMPO_bdpm.txt``.

    Only products of two active substances or more (two SA/FT link groups) in one dose form;
    one row per SA line (the substance as weighed; its FT, the active moiety, when only the FT
    gives the strength: amoxicillin/clavulanate), keyed by the CIS and by each of its
    ``cips`` ((system, code) pairs). A substance's ``atc`` comes from its SA code, else from
    the FT (active moiety) of its link group.
    """
    lines = list(_lines(compo))
    substance_atc = _substance_atc(lines, atc_of)
    by_cis: dict[str, list[_Line]] = defaultdict(list)
    for line in lines:
        by_cis[line.cis].append(line)
    out: list[tuple[str, ...]] = []
    for cis, product in sorted(by_cis.items()):
        if len({line.form for line in product}) != 1 or len({ln.link for ln in product}) < 2:
            continue
        moieties = {line.link: line for line in product if line.nature == "FT"}
        substances: list[tuple[str, ...]] = []
        for sa in product:
            if sa.nature != "SA":
                continue
            moiety = moieties.get(sa.link)
            atc = substance_atc.get(sa.substance_code) or substance_atc.get(
                moiety.substance_code if moiety else "", ""
            )
            # The BDPM writes the strength on the SA line, or only on its FT (amoxicillin
            # trihydrate: 500 mg of amoxicillin anhydrous): then the FT is the ingredient.
            line = sa if sa.strength or moiety is None or not moiety.strength else moiety
            strength, reference = parse_strength(line.strength), parse_reference(line.reference)
            if strength is None or reference is None:
                amount = unit = per_amount = per_unit = ""
            else:
                amount, unit = _text(strength[0]), strength[1]
                per_amount, per_unit = _text(reference[0]), reference[1] or ""
            substances.append((line.name, atc, amount, unit, per_amount, per_unit))
        for system, code in [("CIS", cis), *cips.get(cis, [])]:
            out.extend((system, code, *substance) for substance in sorted(substances))
    return out


def _text(number: float) -> str:
    return f"{number:g}" if abs(number) < 1e15 else repr(number)


class CompositionTable:
    """(system, code) → the ingredients of a combination product."""

    def __init__(self, rows: Iterable[Mapping[str, str]], source: str = "bdpm") -> None:
        self._table: dict[tuple[str, str], list[Component]] = {}
        self.add(rows, source)

    def add(self, rows: Iterable[Mapping[str, str]], source: str) -> None:
        """Read rows (later tables win: a product's rows replace what an earlier one gave)."""
        fresh: dict[tuple[str, str], list[Component]] = defaultdict(list)
        for r in rows:
            amount, per_amount = r.get("amount") or "", r.get("per_amount") or ""
            fresh[r["system"].strip().upper(), r["code"].strip()].append(
                Component(
                    name=r["name"].strip(),
                    atc=(r.get("atc") or "").strip().upper() or None,
                    amount=float(amount) if amount else None,
                    unit=(r.get("unit") or "").strip() or None,
                    per_amount=float(per_amount) if per_amount else 1.0,
                    per_unit=(r.get("per_unit") or "").strip() or None,
                    source=source,
                )
            )
        self._table.update(fresh)

    def ingredients(self, system: str, code: str) -> tuple[Component, ...]:
        """The ingredients of a product code (``()`` when it is not a known combination)."""
        return tuple(self._table.get((system, code.strip()), ()))

    def __len__(self) -> int:
        return len(self._table)


@cache
def combination_atc_codes(directory: Path | None = None) -> frozenset[str]:
    """ATC codes that only combination products carry: every BDPM product the MITM file codes
    with it (``drugs_bdpm_cis.csv.gz``) is in ``compositions_bdpm.csv.gz``. A line coded so whose
    composition is unknown has a dose that no substance can be credited with.

    >>> "N02AJ06" in combination_atc_codes(), "N02BE01" in combination_atc_codes()
    (True, False)
    """
    directory = directory or Path(__file__).parent
    rows = read_rows("compositions_bdpm.csv", directory)
    combined = {r["code"] for r in rows if r["system"] == "CIS"}
    atc_combined: set[str] = set()
    atc_single: set[str] = set()
    for r in read_rows("drugs_bdpm_cis.csv", directory):
        if r["basis"] != "MITM":  # inherited from a generic group: maybe no composition lines
            continue
        atc = r["atc"].strip().upper()
        (atc_combined if r["code"] in combined else atc_single).add(atc)
    return frozenset(atc_combined - atc_single)
