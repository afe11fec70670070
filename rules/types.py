"""The checker's types: what an expression denotes, with its unit and lab concept.

``QUANTITY`` values carry a dimension (``duration``, ``molar_concentration``...), the unit they
have at run time (the lab concept's canonical unit, ``s`` for durations) and, for lab values and
derived values, the concept whose conversion factors apply. Drug amounts (``d.daily_dose``,
``daily dose of S``) have the dimension ``dose``: their unit (mg, IU...) is only known at run
time, so they compare with masses and international units.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "BARE_NUMBER_CONCEPTS",
    "BOOL",
    "CODE",
    "DERIVED",
    "DOSE",
    "DURATION",
    "ERROR",
    "LAB_ATTRIBUTES",
    "NUMBER",
    "ORDER",
    "ORDER_ATTRIBUTES",
    "TEXT",
    "TIME",
    "WINDOWED_DERIVED",
    "Kind",
    "Type",
    "lab_type",
    "quantity",
]


class Kind(StrEnum):
    BOOL = "bool"
    QUANTITY = "number"
    TIME = "time"
    ORDER = "order"
    LAB = "lab"
    TEXT = "text"
    CODE = "code"
    ERROR = "error"  # an expression already reported: no further message about it


@dataclass(frozen=True)
class Type:
    kind: Kind
    dimension: str | None = None
    unit: str | None = None
    concept: str | None = None
    bare: bool = False  # a number written without a unit

    def describe(self) -> str:
        if self.kind is Kind.LAB:
            return f"a {self.concept} result ({self.unit})"
        if self.kind is Kind.QUANTITY:
            return self._describe_quantity()
        return {
            Kind.BOOL: "a condition",
            Kind.TIME: "a time",
            Kind.ORDER: "a drug line",
            Kind.TEXT: "a text",
            Kind.CODE: "an ATC code",
            Kind.ERROR: "an erroneous expression",
        }[self.kind]

    def _describe_quantity(self) -> str:
        if self.bare:
            return "a number without unit"
        if self.dimension == "dose":
            return "a drug amount"
        if self.dimension == "duration":
            return "a duration"
        if self.dimension == "ratio":
            return f"{self.concept} (no unit)" if self.concept else "a number"
        if self.concept:
            return f"{self.concept} ({self.unit})"
        return f"a quantity in {self.unit}"

    @property
    def is_number(self) -> bool:
        return self.kind in (Kind.QUANTITY, Kind.LAB)

    def as_value(self) -> Type:
        """A lab result used as a number is its value."""
        if self.kind is Kind.LAB:
            return quantity(self.dimension, self.unit, self.concept)
        return self


def quantity(dimension: str | None, unit: str | None, concept: str | None = None) -> Type:
    return Type(Kind.QUANTITY, dimension, unit, concept)


def lab_type(concept: str, dimension: str | None, unit: str) -> Type:
    return Type(Kind.LAB, dimension, unit, concept)


BOOL = Type(Kind.BOOL)
TIME = Type(Kind.TIME)
ORDER = Type(Kind.ORDER)
TEXT = Type(Kind.TEXT)
CODE = Type(Kind.CODE)
ERROR = Type(Kind.ERROR)
NUMBER = quantity("ratio", "1")
DURATION = quantity("duration", "s")
DOSE = quantity("dose", None)

# Concepts whose values may be compared with a number written without unit.
BARE_NUMBER_CONCEPTS = {"age": "years", "frequency": "/d"}

DERIVED: dict[str, Type] = {
    "age": quantity("duration", "years", "age"),
    "sex": TEXT,
    "weight": quantity("mass", "kg", "weight"),
    "height": quantity("length", "cm", "height"),
    "clearance": quantity("clearance", "mL/min", "creatinine_clearance"),
    "egfr": quantity("normalised_clearance", "mL/min/1.73m2", "egfr"),
    "mme": quantity("morphine_equivalent", "MME"),
    "now": TIME,
}
WINDOWED_DERIVED = frozenset({"clearance", "egfr", "weight", "height"})

ORDER_ATTRIBUTES: dict[str, Type] = {
    "start": TIME,
    "end": TIME,
    "duration": DURATION,
    "route": TEXT,
    "dose": DOSE,
    "daily_dose": DOSE,
    "frequency": quantity("frequency", "/d", "frequency"),
    "atc": CODE,
    "label": TEXT,
    "order_id": TEXT,
}

LAB_ATTRIBUTES = ("value", "time", "high", "low", "unit")
