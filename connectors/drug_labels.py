"""The fallback every connector applies to a drug line whose code no table maps: its label.

``Terminology.drug_by_name`` reads the substances and strengths a label writes
(``amlodipine 5 MG Oral Tablet``, ``PARACETAMOL 500 mg, comprimé``) and finds their ATC code
(``vigie.terminology.names``). ``label_drug`` turns that into what a fact carries:

- the ATC, with an ``atc_from_name`` flag naming the code that was not mapped and the
  substances matched, so that ``vigie quality`` counts the line as mapped by name;
- for a label of two or more substances, the ingredients with their strengths (``Ingredient``,
  source ``rxnorm-display`` for an RxNorm display, ``label`` for other text), also when the
  product's code is mapped: the per-ingredient doses need them.

A combination without a known combination code keeps ``atc`` ``None`` (and the connector's
``unmapped_code`` flag) but still gives its ingredients.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

from vigie.facts import Flag, FlagCode
from vigie.facts.model import Ingredient
from vigie.terminology.names import NameMatch

__all__ = ["LabelDrug", "NameLookup", "label_drug"]


class NameLookup(Protocol):
    """What the fallback asks of the terminology (a ``Terminology`` or a memo of one)."""

    def drug_by_name(self, label: str) -> NameMatch | None: ...


class LabelDrug(NamedTuple):
    """What a label adds to a drug line: ATC (when the code gave none), flags, ingredients."""

    atc: str | None
    flags: tuple[Flag, ...]
    ingredients: tuple[Ingredient, ...]


def _ingredients(match: NameMatch, source: str) -> tuple[Ingredient, ...]:
    if len(match.ingredients) < 2:
        return ()
    return tuple(
        Ingredient(
            name=found.written.name,
            atc=found.atc,
            amount=found.written.amount,
            unit=found.written.unit,
            per_amount=found.written.per_amount,
            per_unit=found.written.per_unit,
            source=source,
        )
        for found in match.ingredients
    )


def label_drug(
    terminology: NameLookup,
    labels: Iterable[str | None],
    *,
    atc: str | None,
    codes: str,
    source: str = "label",
) -> LabelDrug | None:
    """The label's contribution to a drug line whose code gave ``atc`` (``None``: unmapped).

    ``labels`` are tried in order (the text, then each coding's display); the first naming a
    known substance is used, one that gives an ATC preferred. ``codes`` names the drug codes
    for the flag (``RXNORM|197361``). ``None`` when no label names a known substance.
    """
    found: tuple[str, NameMatch] | None = None
    for label in labels:
        match = terminology.drug_by_name(label) if label else None
        if label is None or match is None:
            continue
        if found is None or (found[1].atc is None and match.atc is not None):
            found = (label, match)
        if atc is not None or match.atc is not None:
            break
    if found is None:
        return None
    label, match = found
    ingredients = _ingredients(match, source)
    if atc is not None or match.atc is None:
        return LabelDrug(atc, (), ingredients)
    detail = f"drug not mapped: {codes}; ATC {match.atc} from the name {label!r} ({match.matched})"
    return LabelDrug(match.atc, (Flag(code=FlagCode.ATC_FROM_NAME, detail=detail),), ingredients)
