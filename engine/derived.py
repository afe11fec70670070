"""Derived clinical values: age, renal function, daily dose and morphine equivalents.

Pure functions on plain numbers, so the rule evaluator, the batch evaluator and the tests share
one definition. Inputs are in the canonical units of ``vigie.facts`` (creatinine µmol/L, weight
kg); a missing or meaningless input gives ``None`` (unknown), never a guess.

References:

- Cockcroft DW, Gault MH. Prediction of creatinine clearance from serum creatinine.
  Nephron 1976;16:31-41 — in SI units the constant 1.23 (men) or 1.04 (women) replaces
  ``1 / 72`` with creatinine in mg/dL (× 88.42 µmol/L per mg/dL, × 0.85 for women).
- Inker LA et al. New creatinine- and cystatin C-based equations to estimate GFR without race
  (CKD-EPI 2021). N Engl J Med 2021;385:1737-49.
- CDC Clinical Practice Guideline for Prescribing Opioids for Pain, 2022 (MMWR Recomm Rep
  2022;71(3)), table of morphine milligram equivalent conversion factors.

>>> round(cockcroft_gault(age=70, weight_kg=60, creatinine_umol_l=100, sex="F"), 2)
43.68
>>> round(ckd_epi_2021(creatinine_umol_l=88.42, age=50, sex="M"))
92
>>> total_daily_dose([(1000.0, "mg"), (500.0, "mg")])
Amount(value=1500.0, unit='mg', lower_bound=False)
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from vigie.facts.model import Ingredient
from vigie.terminology.compositions import combination_atc_codes
from vigie.terminology.names import name_key
from vigie.terminology.units import MmeFactor, default_unit_tables, read_rows

__all__ = [
    "AMOUNT_UNITS",
    "CREATININE_UMOL_PER_MG_DL",
    "MME_FACTORS",
    "Amount",
    "IngredientDose",
    "age_in_years",
    "amount_arithmetic",
    "amount_in",
    "ckd_epi_2021",
    "cockcroft_gault",
    "compare_amounts",
    "counts_for_mme",
    "ingredient_doses",
    "ingredient_mme_factor",
    "is_combination_code",
    "mme_factor",
    "morphine_equivalents",
    "order_mme",
    "total_daily_dose",
]

_UNITS = default_unit_tables()
CREATININE_UMOL_PER_MG_DL = _UNITS.required_conversion("creatinine", "mg/dL", "µmol/L")


def _amount_units() -> dict[str, tuple[str, float]]:
    """Every spelling of a dose unit (``units.csv``, ``dose=yes``) → (base unit, factor)."""
    found: dict[str, tuple[str, float]] = {}
    for unit in _UNITS.units.values():
        if unit.dose:
            for spelling in sorted(_UNITS.spellings_of(unit.symbol)):
                found[spelling] = (_UNITS.base_units[unit.dimension], unit.factor)
    return found


# Drug amounts are summed and compared in one unit per dimension: masses in mg, IU, MME.
AMOUNT_UNITS: dict[str, tuple[str, float]] = _amount_units()


@dataclass(frozen=True, slots=True)
class Amount:
    """A drug amount whose unit is only known at run time (``d.daily_dose``, ``mme``...).

    ``unit`` is ``None`` for a sum over no line (zero, comparable with any unit).
    ``lower_bound`` says the true amount may be larger: some line's dose was not known in a
    comparable unit, so only "the known part already exceeds the threshold" can be concluded.
    """

    value: float
    unit: str | None
    lower_bound: bool = False


def amount_in(amount: Amount, unit: str) -> float | None:
    """The amount's value in ``unit`` (mg, µg, g, IU, MME), or None when the units differ.

    >>> amount_in(Amount(2.0, "g"), "mg")
    2000.0
    >>> amount_in(Amount(4000.0, "IU"), "mg") is None
    True
    """
    if amount.unit is None:
        return amount.value
    if amount.unit == unit:
        return amount.value
    source = AMOUNT_UNITS.get(amount.unit)
    target = AMOUNT_UNITS.get(unit)
    if source is None or target is None or source[0] != target[0]:
        return None
    return amount.value * source[1] / target[1]


_COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "eq": operator.eq,
    "ne": operator.ne,
}


def _base_unit(amount: Amount) -> str | None:
    known = AMOUNT_UNITS.get(amount.unit or "")
    return known[0] if known else amount.unit


def _base_unit_of(value: Amount | float) -> str | None:
    return _base_unit(value) if isinstance(value, Amount) else None


def _as_float(value: Amount | float, unit: str | None) -> float | None:
    if not isinstance(value, Amount):
        return float(value)
    return amount_in(value, unit) if unit else value.value


def compare_amounts(
    op: str,
    left: Amount | float,
    right: Amount | float,
    left_unit: str | None = None,
    right_unit: str | None = None,
) -> bool | None:
    """Compare where one side (or both) is a drug amount; ``*_unit`` are the static units of
    plain numbers (``mg``, ``IU``, ``MME``). Units that cannot be converted give unknown.

    A lower bound concludes only when the known part already passes a ``>``/``>=`` (a ``<``/
    ``<=`` with the amount on the right); any other use of a lower bound is unknown.

    >>> compare_amounts("gt", Amount(4.5, "g"), 4000.0, None, "mg")
    True
    >>> compare_amounts("gt", Amount(3000.0, "mg", lower_bound=True), 4000.0, None, "mg") is None
    True
    >>> compare_amounts("ge", Amount(5000.0, "mg", lower_bound=True), 4000.0, None, "mg")
    True
    >>> compare_amounts("lt", Amount(5000.0, "mg", lower_bound=True), 4000.0, None, "mg") is None
    True
    >>> compare_amounts("gt", Amount(4000.0, "IU"), 60.0, None, "mg") is None
    True
    """
    left_amount, right_amount = isinstance(left, Amount), isinstance(right, Amount)
    if left_amount and right_amount:
        assert isinstance(left, Amount) and isinstance(right, Amount)
        if left.lower_bound or right.lower_bound:
            return None
        unit = _base_unit(left) or _base_unit(right)
        x, y = _as_float(left, unit), _as_float(right, unit)
    else:
        x = _as_float(left, right_unit or _base_unit_of(left))
        y = _as_float(right, left_unit or _base_unit_of(right))
    if x is None or y is None:
        return None
    result = _COMPARISONS[op](x, y)
    lower_left = isinstance(left, Amount) and left.lower_bound
    lower_right = isinstance(right, Amount) and right.lower_bound
    if lower_left or lower_right:
        concludes = (lower_left and op in ("gt", "ge")) or (lower_right and op in ("lt", "le"))
        return True if concludes and result else None
    return result


def amount_arithmetic(
    op: str,
    left: Amount | float,
    right: Amount | float,
    left_unit: str | None = None,
    right_unit: str | None = None,
) -> Amount | float | None:
    """``add``/``sub``/``mul``/``div`` with a drug amount: exact amounts only.

    >>> amount_arithmetic("mul", Amount(500.0, "mg"), 2.0)
    Amount(value=1000.0, unit='mg', lower_bound=False)
    >>> amount_arithmetic("div", Amount(1.0, "g"), Amount(500.0, "mg"))
    2.0
    >>> amount_arithmetic("add", Amount(1.0, "g", lower_bound=True), 1.0, None, "mg") is None
    True
    """
    if any(isinstance(v, Amount) and v.lower_bound for v in (left, right)):
        return None
    amount = left if isinstance(left, Amount) else right
    assert isinstance(amount, Amount)
    unit = _base_unit(amount)
    if op in ("add", "sub") or (isinstance(left, Amount) and isinstance(right, Amount)):
        x = (
            _as_float(left, unit)
            if isinstance(left, Amount)
            else _as_float(Amount(left, left_unit), unit)
        )
        y = (
            _as_float(right, unit)
            if isinstance(right, Amount)
            else _as_float(Amount(right, right_unit), unit)
        )
    else:
        x, y = _as_float(left, unit), _as_float(right, unit)
    if x is None or y is None or (op == "div" and y == 0):
        return None
    if op == "div" and isinstance(right, Amount):
        return x / y if isinstance(left, Amount) else None
    value = {"add": x + y, "sub": x - y, "mul": x * y}.get(op, x / y if y else 0.0)
    return Amount(value, unit)


def age_in_years(birth_date: date, at: date | datetime) -> int:
    """Completed years between ``birth_date`` and ``at`` (the evaluation time).

    >>> age_in_years(date(1950, 6, 15), datetime(2024, 6, 14, 23, 0))
    73
    >>> age_in_years(date(1950, 6, 15), date(2024, 6, 15))
    74
    """
    day = at.date() if isinstance(at, datetime) else at
    years = day.year - birth_date.year
    if (day.month, day.day) < (birth_date.month, birth_date.day):
        years -= 1
    return years


def cockcroft_gault(
    *, age: float, weight_kg: float, creatinine_umol_l: float, sex: str
) -> float | None:
    """Creatinine clearance (mL/min): (140 − age) × weight × (1.23 men, 1.04 women) / creatinine.

    Unknown (None) for a sex other than ``F``/``M`` or a non-positive creatinine.

    >>> round(cockcroft_gault(age=60, weight_kg=80, creatinine_umol_l=120, sex="M"), 1)
    65.6
    >>> cockcroft_gault(age=60, weight_kg=80, creatinine_umol_l=120, sex="U") is None
    True
    """
    factor = {"M": 1.23, "F": 1.04}.get(sex)
    if factor is None or creatinine_umol_l <= 0:
        return None
    return (140 - age) * weight_kg * factor / creatinine_umol_l


def ckd_epi_2021(*, creatinine_umol_l: float, age: float, sex: str) -> float | None:
    """eGFR (mL/min/1.73 m²) by the race-free CKD-EPI 2021 creatinine equation.

    142 × min(S/κ, 1)^α × max(S/κ, 1)^−1.200 × 0.9938^age × 1.012 (women), with S the
    creatinine in mg/dL, κ 0.7 (women) or 0.9 (men), α −0.241 (women) or −0.302 (men).

    >>> round(ckd_epi_2021(creatinine_umol_l=0.7 * 88.42, age=40, sex="F"))
    112
    >>> ckd_epi_2021(creatinine_umol_l=80, age=40, sex="O") is None
    True
    """
    if sex not in ("F", "M") or creatinine_umol_l <= 0:
        return None
    female = sex == "F"
    kappa, alpha = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine_umol_l / CREATININE_UMOL_PER_MG_DL / kappa
    egfr: float = 142 * min(ratio, 1.0) ** alpha * max(ratio, 1.0) ** -1.200 * 0.9938**age
    return egfr * 1.012 if female else egfr


# Combination products: per-ingredient doses ---------------------------------------------------

_VOLUMES = {"mL": 1.0, "ml": 1.0, "L": 1000.0, "l": 1000.0}
# A mass dose is read as a whole or half number of dose units of one ingredient's strength.
_UNIT_STEP = 0.5
_TOLERANCE = 0.01


@dataclass(frozen=True, slots=True)
class IngredientDose:
    """One ingredient's amount a day on a combination line, in ``unit`` (mg or IU), with how
    the line's dose reached it (``reading``); ``per_day`` None when it cannot be known."""

    ingredient: Ingredient
    per_dose: float | None
    per_day: float | None
    unit: str | None
    reading: str


def _base(amount: float | None, unit: str | None) -> tuple[float, str] | None:
    known = AMOUNT_UNITS.get(unit or "")
    if amount is None or known is None or known[0] == "MME":
        return None
    return amount * known[1], known[0]


def _show(value: float) -> str:
    return f"{round(value, 3):g}"


def _product_per_dose(
    ingredients: Sequence[Ingredient], dose: float, dose_unit: str
) -> tuple[float, str | None, str] | tuple[None, None, str]:
    """How much product one dose is, in the unit the strengths are given for (a count of dose
    units when ``None``), and the reading, for a dose in mass, volume or dose units."""
    mass = _base(dose, dose_unit)
    if mass is not None:
        # A mass dose is the dose of one ingredient: the first, by decreasing strength, of
        # which it is a whole or half number of units (1000 mg of codeine/paracetamol
        # 30 mg/500 mg is two tablets' paracetamol; 60 mg is two tablets' codeine).
        strengths = [
            (base[0], i)
            for i in ingredients
            if (base := _base(i.amount, i.unit)) is not None and base[1] == mass[1] and base[0] > 0
        ]
        for strength, lead in sorted(strengths, key=lambda item: -item[0]):
            units = mass[0] / strength
            steps = units / _UNIT_STEP
            if lead.per_unit is not None or (
                steps >= 1 - _TOLERANCE and abs(steps - round(steps)) <= _TOLERANCE * steps
            ):
                reading = (
                    f"{_show(dose)} {dose_unit} read as {lead.name} "
                    f"({_show(units)} × {_show(lead.amount or 0)} {lead.unit})"
                )
                if lead.per_unit in _VOLUMES:  # volumes are compared in mL
                    return units * lead.per_amount * _VOLUMES[lead.per_unit], "mL", reading
                return units * lead.per_amount, lead.per_unit, reading
        written = ", ".join(f"{i.name} {_show(s)} {mass[1]}" for s, i in strengths)
        return None, None, f"{_show(dose)} {dose_unit} matches no strength ({written})"
    if dose_unit in _VOLUMES:
        return dose * _VOLUMES[dose_unit], "mL", f"{_show(dose)} {dose_unit}"
    if "/" in dose_unit:
        return None, None, f"a dose in {dose_unit} cannot be split into ingredients"
    return dose, None, f"{_show(dose)} {dose_unit}"


def ingredient_doses(
    ingredients: Sequence[Ingredient],
    dose: float | None,
    dose_unit: str | None,
    daily_dose: float | None,
) -> list[IngredientDose]:
    """The amount of each ingredient per dose and per day on a line of a combination product.

    A dose in dose units (``2 tablet``) or in volume reaches each ingredient through its
    strength; a dose in mass is read as the dose of one ingredient (see ``_product_per_dose``)
    and the others follow the product's ratio. Unknown (None) when the strength, the dose or
    the frequency is.

    >>> codeine = Ingredient(name="codeine", amount=30, unit="mg", source="bdpm")
    >>> paracetamol = Ingredient(name="paracetamol", amount=500, unit="mg", source="bdpm")
    >>> [(d.ingredient.name, d.per_day) for d in ingredient_doses([codeine, paracetamol],
    ...                                                            1000, "mg", 4000)]
    [('codeine', 240.0), ('paracetamol', 4000.0)]
    >>> [d.per_day for d in ingredient_doses([codeine, paracetamol], 2, "tablet", 8)]
    [240.0, 4000.0]
    """
    if dose is None or dose_unit is None:
        return [IngredientDose(i, None, None, None, "no dose") for i in ingredients]
    times = None if daily_dose is None or dose == 0 else daily_dose / dose
    quantity, per_unit, reading = _product_per_dose(ingredients, dose, dose_unit)
    out = []
    for ingredient in ingredients:
        base = _base(ingredient.amount, ingredient.unit)
        per = _VOLUMES.get(ingredient.per_unit or "")
        same_reference = (ingredient.per_unit or None) == per_unit or (
            per is not None and per_unit == "mL"
        )
        if quantity is None or base is None or not same_reference:
            out.append(IngredientDose(ingredient, None, None, base and base[1], reading))
            continue
        per_amount = ingredient.per_amount * (per or 1.0)
        per_dose = base[0] * quantity / per_amount
        per_day = None if times is None else per_dose * times
        out.append(IngredientDose(ingredient, per_dose, per_day, base[1], reading))
    return out


def is_combination_code(atc: str | None) -> bool:
    """An ATC code only combination products carry: the BDPM's (``combination_atc_codes``)
    and the combination rows of ``mme_factors.csv``. A line so coded whose composition is not
    known has a dose no substance can be credited with."""
    return atc is not None and (atc in combination_atc_codes() or atc in _MME_COMBINATIONS)


def total_daily_dose(lines: Iterable[tuple[float | None, str | None]]) -> Amount | None:
    """Sum of daily doses (value, unit) over lines: masses in mg, IU kept.

    A line without daily dose or in another unit (tablet, mL) makes the sum a lower bound;
    mass and IU lines mixed make it unknown (None); no line gives 0.

    >>> total_daily_dose([(1.0, "g"), (500.0, "mg")])
    Amount(value=1500.0, unit='mg', lower_bound=False)
    >>> total_daily_dose([(1000.0, "mg"), (None, "mg"), (2.0, "tablet")])
    Amount(value=1000.0, unit='mg', lower_bound=True)
    >>> total_daily_dose([(1000.0, "mg"), (4000.0, "IU")]) is None
    True
    >>> total_daily_dose([])
    Amount(value=0.0, unit=None, lower_bound=False)
    """
    total = 0.0
    unit: str | None = None
    lower_bound = False
    for value, line_unit in lines:
        known = AMOUNT_UNITS.get(line_unit or "")
        if value is None or known is None or known[0] == "MME":
            lower_bound = True
            continue
        if unit is not None and unit != known[0]:
            return None
        unit = known[0]
        total += value * known[1]
    return Amount(total, unit, lower_bound)


# CDC 2022 factors (``mme_factors.csv``): per mg a day of the line's daily dose, or per µg/h of
# the dose for a patch (``MME_RATES``, transdermal fentanyl).
_MME: dict[str, MmeFactor] = dict(_UNITS.mme_factors)
_MME_ROWS = read_rows("mme_factors.csv")
_MME_COMBINATIONS = frozenset(r["atc"] for r in _MME_ROWS if r.get("combination") == "yes")
# An ingredient without ATC (codeine: no BDPM product of codeine alone carries one) finds its
# factor by name among the single-substance rows (mg/d, any route): "codeine (antitussive)".
_MME_BY_NAME: dict[str, str] = {
    name_key(re.sub(r"\(.*?\)", "", r["substance"])): r["atc"]
    for r in reversed(_MME_ROWS)
    if r.get("combination") != "yes" and r["per"] == "mg/d" and not r["route"]
}
MME_FACTORS: dict[str, float] = {
    atc: entry.factor for atc, entry in _MME.items() if entry.per == "mg/d" and entry.route is None
}


def _rate_spellings(rate: str) -> frozenset[str]:
    """``µg/h`` → every way a dose in µg/h is written (``ug/h``, ``mcg/h``, Greek mu)."""
    amount, _, per = rate.partition("/")
    return frozenset(f"{spelling}/{per}" for spelling in _UNITS.spellings_of(amount))


_RATE_UNITS = {entry.per: _rate_spellings(entry.per) for entry in _MME.values()}


def is_opioid_line(atc: str | None) -> bool:
    """Lines that count towards MME: the N02A opioids and the factor table's other codes."""
    return atc is not None and (atc.startswith("N02A") or atc in _MME)


def counts_for_mme(atc: str | None, ingredients: Sequence[Ingredient] = ()) -> bool:
    """Whether a line may count towards MME (``order_mme`` says it is an opioid line only for
    such a line): an opioid code, or an ingredient with a factor. A line for which this is false
    cannot change a patient's MME.

    >>> counts_for_mme("N02BE01"), counts_for_mme("N02AA01")
    (False, True)
    >>> counts_for_mme("N02BE51", [Ingredient(name="PHOSPHATE DE CODÉINE HÉMIHYDRATÉ")])
    True
    """
    return is_opioid_line(atc) or any(ingredient_mme_factor(i) is not None for i in ingredients)


def mme_factor(atc: str | None, route: str | None) -> float | None:
    """The CDC 2022 factor of an opioid line, or None when it has none (a lower bound then).

    >>> mme_factor("N02AA05", "oral")
    1.5
    >>> mme_factor("N02AB03", "iv") is None
    True
    """
    entry = _MME.get(atc or "")
    if entry is None or (entry.route is not None and route != entry.route):
        return None
    return entry.factor


def line_mme(
    atc: str | None,
    route: str | None,
    dose: float | None,
    dose_unit: str | None,
    daily_dose: float | None,
) -> float | None:
    """MME per day of one opioid line, or None when it cannot be computed.

    >>> line_mme("N02AA05", "oral", 10.0, "mg", 20.0)
    30.0
    >>> line_mme("N02AB03", "transdermal", 25.0, "µg/h", 8.33)
    60.0
    """
    factor = mme_factor(atc, route)
    if factor is None or atc in _MME_COMBINATIONS:  # whose mg? the composition tells
        return None
    per = _MME[atc or ""].per
    if per != "mg/d":  # a rate (a patch's µg/h): the factor applies to the dose itself
        if dose is None or dose_unit not in _RATE_UNITS[per]:
            return None
        return dose * factor
    if daily_dose is None:
        return None
    milligrams = amount_in(Amount(daily_dose, dose_unit), "mg") if dose_unit else None
    return None if milligrams is None else milligrams * factor


def ingredient_mme_factor(ingredient: Ingredient) -> float | None:
    """The CDC 2022 factor (per mg a day) of an opioid ingredient: by its own ATC code, else by
    its name (``PHOSPHATE DE CODÉINE`` is codeine); None for a substance without one."""
    atc = ingredient.atc if ingredient.atc in _MME else _MME_BY_NAME.get(name_key(ingredient.name))
    entry = _MME.get(atc or "")
    if entry is None or entry.per != "mg/d" or entry.route is not None or atc in _MME_COMBINATIONS:
        return None
    return entry.factor


def order_mme(
    atc: str | None,
    route: str | None,
    dose: float | None,
    dose_unit: str | None,
    daily_dose: float | None,
    ingredients: Sequence[Ingredient] = (),
) -> tuple[bool, float | None, list[IngredientDose]]:
    """(is an opioid line, MME per day or None, the opioid ingredients' doses) of one line.

    A line with a composition counts its opioid ingredients' amounts (codeine/paracetamol
    500 mg/30 mg, 1000 mg × 4: 240 mg codeine × 0.15 = 36 MME); a combination-coded line
    without composition is an opioid line of unknown MME.

    >>> codeine = Ingredient(name="PHOSPHATE DE CODÉINE HÉMIHYDRATÉ", amount=30, unit="mg")
    >>> paracetamol = Ingredient(name="PARACÉTAMOL", atc="N02BE01", amount=500, unit="mg")
    >>> opioid, mme, _ = order_mme("N02AJ06", "oral", 1000, "mg", 4000, [codeine, paracetamol])
    >>> opioid, round(mme, 6)
    (True, 36.0)
    >>> order_mme("N02AJ06", "oral", 1000, "mg", 4000)
    (True, None, [])
    """
    if ingredients:
        doses = ingredient_doses(ingredients, dose, dose_unit, daily_dose)
        opioids = [(f, d) for d in doses if (f := ingredient_mme_factor(d.ingredient)) is not None]
        if not opioids:  # a combination-coded opioid line whose opioid is not recognised
            opioid_line = is_opioid_line(atc)
            return opioid_line, None if opioid_line else 0.0, []
        total = 0.0
        for factor, found in opioids:
            if found.per_day is None or found.unit != "mg":
                return True, None, [d for _, d in opioids]
            total += found.per_day * factor
        return True, total, [d for _, d in opioids]
    if not is_opioid_line(atc):
        return False, 0.0, []
    return True, line_mme(atc, route, dose, dose_unit, daily_dose), []


def morphine_equivalents(
    lines: Iterable[tuple[str | None, str | None, float | None, str | None, float | None]],
) -> Amount:
    """Σ MME per day over opioid lines given as (atc, route, dose, dose_unit, daily_dose),
    without composition (``order_mme`` takes a line's ingredients).

    Lines that are not opioids are ignored; an opioid line without a usable dose or factor, or
    coded as a combination (whose dose is not the opioid's), makes the sum a lower bound.

    >>> morphine_equivalents([("N02AA01", "oral", 30.0, "mg", 60.0),
    ...                       ("N02AX02", "oral", 100.0, "mg", 300.0)])
    Amount(value=120.0, unit='MME', lower_bound=False)
    >>> morphine_equivalents([("N02AB03", "iv", 50.0, "µg", 100.0)])
    Amount(value=0.0, unit='MME', lower_bound=True)
    """
    total = 0.0
    lower_bound = False
    for atc, route, dose, dose_unit, daily_dose in lines:
        opioid, mme, _ = order_mme(atc, route, dose, dose_unit, daily_dose)
        if not opioid:
            continue
        if mme is None:
            lower_bound = True
        else:
            total += mme
    return Amount(total, "MME", lower_bound)
