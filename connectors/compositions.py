"""The composition of a combination product from its code, for every connector.

A line's product code (CIS, CIP13/CIP7, UCD, a site code) is looked up in the terminology's
composition tables (``Terminology.drug_ingredients``: the BDPM's combination products and the
site formulary's); the substances and strengths found become the line's ``ingredients``, with
``source`` ``bdpm`` or ``site``. A single-substance product or an unknown code gives none: the
line's own ATC and dose are its substance's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from vigie.facts.model import Ingredient
from vigie.terminology.compositions import Component

__all__ = ["CompositionLookup", "code_ingredients"]


class CompositionLookup(Protocol):
    """What the lookup asks of the terminology (a ``Terminology`` or a memo of one)."""

    def drug_ingredients(self, system: str | None, code: str) -> tuple[Component, ...]: ...


def code_ingredients(
    terminology: CompositionLookup, codes: Iterable[tuple[str | None, str]]
) -> tuple[Ingredient, ...]:
    """The ingredients of the first (system, code) the composition tables know, else ``()``."""
    for system, code in codes:
        found = terminology.drug_ingredients(system, code) if code else ()
        if len(found) >= 2:
            return tuple(Ingredient(**component._asdict()) for component in found)
    return ()
