"""A dose in tablets (or with no unit) turned into the amount of substance, for every connector.

Many feeds give the dose of a drug line as a count of dose units: Synthea writes
``doseQuantity: {value: 1.0}`` with no unit for ``amlodipine 5 MG Oral Tablet``; a French
pharmacy writes ``2 comprimé(s)`` of ``METFORMINE 500 mg, comprimé``. A dose rule
(``daily dose of metformin > 2000 mg``) cannot read such a line. When the product has one
active substance whose strength is known, ``dose_by_strength`` gives the line's dose as that
substance's amount:

- a count of dose units (no unit, or a dose-form unit: tablet, capsule, sachet...) times a
  strength per unit of the form (``5 MG`` of an Oral Tablet): 1 × amlodipine 5 mg → 5 mg;
- a volume (mL, L) through a concentration (``1 ML Morphine Sulfate 10 MG/ML Injection``):
  2 mL × 10 mg/mL → 20 mg;

and the daily dose follows (the same administrations a day). The line keeps ``original_dose``
and ``original_dose_unit`` as received and carries a ``dose_from_strength`` flag naming the
reading, the strength and where it came from
(``2 tablet × METHOTREXATE 10 mg/unit [label] = 20 mg``).

Nothing is guessed: a dose already in a mass or in IU stays; a combination product (two
substances or more) stays as it is (its doses are per ingredient, ``ingredients``); a strength
not read as a plain amount (``%``, per hour, per actuation) or a unit of form that does not
match the strength's reference (mL of a product whose strength is per tablet) leaves the dose
as it was. A number without unit is read as a count of dose units only when it is a plausible
count (at most ``MAX_BARE_COUNT``) and differs from the strength (a bare ``5`` for a 5 mg
tablet may be 5 mg as well as 5 tablets: left as it was).

The strength comes from, in order: the product's stated single ingredient (FHIR
``Medication.ingredient.strength``), else the label's (``label_strength``, the RxNorm display or
the product name, read by ``vigie.terminology.names``). The BDPM and site composition tables hold
combination products only (two substances or more): they give no single-substance strength.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from vigie.connectors.drug_labels import NameLookup
from vigie.facts import Flag, FlagCode
from vigie.facts.model import Ingredient
from vigie.terminology.compositions import combination_atc_codes
from vigie.terminology.names import LabelIngredient, parse_label

__all__ = [
    "DOSE_FORM_UNITS",
    "MAX_BARE_COUNT",
    "StrengthDose",
    "dose_by_strength",
    "is_plain_strength",
    "label_strength",
]

# Canonical dose units (unit_aliases.csv) that count units of the dose form: a strength "per
# unit of the form" (per tablet, per capsule, per ampoule) applies to each. Bags and bottles
# are left out: their labels give concentrations, and a per-bag reading would be a guess.
DOSE_FORM_UNITS = frozenset(
    {
        "tablet",
        "capsule",
        "sachet",
        "suppository",
        "ampoule",
        "vial",
        "syringe",
    }
)
# Volumes a concentration is given per (mL per unit).
_VOLUMES = {"mL": 1.0, "L": 1000.0}
# Strength units a dose can be expressed in (MedicationOrder.dose_unit's canonical amounts),
# with the UCUM spellings a FHIR strength may use.
_AMOUNT_UNITS = {"mg": "mg", "µg": "µg", "ug": "µg", "mcg": "µg", "g": "g", "IU": "IU"}
_AMOUNT_UNITS |= {"[iU]": "IU", "[IU]": "IU", "UI": "IU"}
MAX_BARE_COUNT = 10.0


class StrengthDose(NamedTuple):
    """A line's dose as its substance's amount, with the flag saying how it was read."""

    dose: float
    dose_unit: str
    daily_dose: float | None
    flag: Flag


def _show(value: float) -> str:
    return f"{round(value, 6):g}"


def is_plain_strength(strength: Ingredient) -> bool:
    """A strength a dose can be read through: a positive amount in mg, µg, g or IU, per unit
    of the dose form or per a volume. A name that ends in a number is refused: the strength may
    have been cut at a thousands separator (``VITAMINE D 100 000 UI`` read as ``100`` + ``0``).
    """
    words = strength.name.split()
    return (
        strength.amount is not None
        and strength.amount > 0
        and strength.unit in _AMOUNT_UNITS
        and strength.per_amount > 0
        and (strength.per_unit is None or strength.per_unit in _VOLUMES)
        and not (words and words[-1].isdigit())
    )


def label_strength(
    terminology: NameLookup, labels: Iterable[str | None], *, atc: str | None, source: str
) -> Ingredient | None:
    """The strength of a single-substance product as its label writes it, or ``None``.

    The first label naming known substances decides: it must name exactly one, with a
    strength; when the line's ``atc`` and the substance's are both known they must agree (a
    label naming another substance than the code is not read). A label whose name is not known
    (a brand, a misspelling: ``Lasix 40mg``, ``Simvistatin 10 MG``) gives its one strength
    when the line's code gives a single-substance ATC (seven characters, not a code of
    combination products): the code says what the substance is, the label how much.
    """
    texts = [label for label in labels if label]
    for label in texts:
        match = terminology.drug_by_name(label)
        if match is None:
            continue
        if len(match.ingredients) != 1:
            return None
        found = match.ingredients[0]
        if found.written.amount is None or (atc and found.atc and found.atc != atc):
            return None
        return _as_ingredient(found.written, found.atc or atc, source)
    if atc is None or len(atc) != 7 or atc in combination_atc_codes():
        return None
    for label in texts:
        parsed = parse_label(label)
        if parsed is None:
            continue
        if len(parsed.ingredients) != 1 or parsed.ingredients[0].amount is None:
            return None
        return _as_ingredient(parsed.ingredients[0], atc, source)
    return None


def _as_ingredient(written: LabelIngredient, atc: str | None, source: str) -> Ingredient:
    """The strength a label writes, as the line's one ingredient."""
    return Ingredient(
        name=written.name,
        atc=atc,
        amount=written.amount,
        unit=written.unit,
        per_amount=written.per_amount,
        per_unit=written.per_unit,
        source=source,
    )


def dose_by_strength(
    dose: float | None,
    dose_unit: str | None,
    daily_dose: float | None,
    strength: Ingredient | None,
) -> StrengthDose | None:
    """The dose of a single-substance line as the substance's amount, or ``None`` to keep it.

    ``dose_unit`` is the canonical unit (``None``: a number without unit).

    >>> amlodipine = Ingredient(name="amlodipine", amount=5, unit="mg", source="rxnorm-display")
    >>> found = dose_by_strength(1.0, None, 1.0, amlodipine)
    >>> found.dose, found.dose_unit, found.daily_dose
    (5.0, 'mg', 5.0)
    >>> morphine = Ingredient(name="morphine", amount=10, unit="mg", per_unit="mL")
    >>> dose_by_strength(2.0, "mL", 12.0, morphine).daily_dose
    120.0
    >>> dose_by_strength(5.0, None, 5.0, amlodipine) is None  # 5 mg or 5 tablets: not read
    True
    >>> dose_by_strength(500.0, "mg", 1000.0, amlodipine) is None
    True
    """
    if dose is None or strength is None or strength.amount is None:
        return None
    if not is_plain_strength(strength):
        return None
    unit = _AMOUNT_UNITS[strength.unit or ""]
    if strength.per_unit is None:  # per unit of the dose form
        if dose_unit is None:
            if dose > MAX_BARE_COUNT or (dose == strength.amount and dose != 1):
                return None
        elif dose_unit not in DOSE_FORM_UNITS:
            return None
        per_dose = strength.amount * dose / strength.per_amount
        reading = f"{_show(dose)} {dose_unit or '(no unit: units of the form)'}"
        per = f"{_show(strength.per_amount)} unit" if strength.per_amount != 1 else "unit"
    elif strength.per_unit in _VOLUMES and dose_unit in _VOLUMES:
        volume = dose * _VOLUMES[dose_unit]
        per_dose = strength.amount * volume / (strength.per_amount * _VOLUMES[strength.per_unit])
        reading = f"{_show(dose)} {dose_unit}"
        per = (
            f"{_show(strength.per_amount)} {strength.per_unit}"
            if strength.per_amount != 1
            else strength.per_unit
        )
    else:
        return None
    # The daily dose is the new dose times the administrations a day (daily / dose as given).
    if daily_dose is None:
        daily = None
    elif dose:
        daily = per_dose * (daily_dose / dose)
    else:
        daily = daily_dose
    detail = (
        f"{reading} × {strength.name} {_show(strength.amount)} {strength.unit}/{per} "
        f"[{strength.source or 'strength'}] = {_show(per_dose)} {unit}"
    )
    return StrengthDose(
        per_dose, unit, daily, Flag(code=FlagCode.DOSE_FROM_STRENGTH, detail=detail)
    )
