"""Derived clinical values against hand-computed and published references."""

from __future__ import annotations

import doctest
from datetime import date, datetime

import pytest

from vigie.engine import derived
from vigie.engine.derived import (
    Amount,
    IngredientDose,
    age_in_years,
    amount_arithmetic,
    amount_in,
    ckd_epi_2021,
    cockcroft_gault,
    compare_amounts,
    ingredient_doses,
    is_combination_code,
    line_mme,
    morphine_equivalents,
    order_mme,
    total_daily_dose,
)
from vigie.facts.model import Ingredient


def test_doctests() -> None:
    result = doctest.testmod(derived)
    assert result.attempted > 20 and result.failed == 0


@pytest.mark.parametrize(
    ("birth", "at", "years"),
    [
        (date(1950, 6, 15), datetime(2024, 6, 14, 23, 59), 73),  # the day before the birthday
        (date(1950, 6, 15), datetime(2024, 6, 15, 0, 0), 74),
        (date(2000, 2, 29), datetime(2023, 2, 28), 22),  # leap-day birthday
        (date(2000, 2, 29), datetime(2023, 3, 1), 23),
    ],
)
def test_age_counts_completed_years(birth: date, at: datetime, years: int) -> None:
    assert age_in_years(birth, at) == years


def test_cockcroft_gault_reference_woman() -> None:
    # 70-year-old woman, 60 kg, creatinine 100 µmol/L: (140 − 70) × 60 × 1.04 / 100
    value = cockcroft_gault(age=70, weight_kg=60, creatinine_umol_l=100, sex="F")
    assert value == pytest.approx(43.68)


def test_cockcroft_gault_reference_man() -> None:
    # 50-year-old man, 80 kg, creatinine 90 µmol/L: 90 × 80 × 1.23 / 90 = 98.4
    value = cockcroft_gault(age=50, weight_kg=80, creatinine_umol_l=90, sex="M")
    assert value == pytest.approx(98.4)


@pytest.mark.parametrize("sex", ["U", "O", ""])
def test_cockcroft_gault_unknown_without_binary_sex(sex: str) -> None:
    assert cockcroft_gault(age=50, weight_kg=80, creatinine_umol_l=90, sex=sex) is None


def test_cockcroft_gault_zero_creatinine_is_unknown() -> None:
    assert cockcroft_gault(age=50, weight_kg=80, creatinine_umol_l=0, sex="M") is None


@pytest.mark.parametrize(
    ("creatinine_mg_dl", "age", "sex", "egfr"),
    [
        # Computed by hand from the published equation (Inker 2021), whole mL/min/1.73 m².
        (1.0, 50, "M", 92),
        (0.7, 40, "F", 112),
        (1.2, 60, "F", 52),
        (2.5, 75, "M", 26),
        (0.6, 30, "M", 133),
    ],
)
def test_ckd_epi_2021_published_values(
    creatinine_mg_dl: float, age: int, sex: str, egfr: int
) -> None:
    value = ckd_epi_2021(creatinine_umol_l=creatinine_mg_dl * 88.42, age=age, sex=sex)
    assert value is not None
    assert round(value) == egfr


def test_ckd_epi_2021_by_hand() -> None:
    # Woman, 60 years, 1.2 mg/dL: 142 × (1.2/0.7)^−1.2 × 0.9938^60 × 1.012
    expected = 142 * (1.2 / 0.7) ** -1.2 * 0.9938**60 * 1.012
    value = ckd_epi_2021(creatinine_umol_l=1.2 * 88.42, age=60, sex="F")
    assert value == pytest.approx(expected)


def test_amount_units() -> None:
    assert amount_in(Amount(1.5, "g"), "mg") == 1500.0
    assert amount_in(Amount(250.0, "µg"), "mg") == pytest.approx(0.25)
    assert amount_in(Amount(10.0, "tablet"), "mg") is None
    assert amount_in(Amount(0.0, None), "IU") == 0.0


def test_daily_dose_sum_converts_masses_to_mg() -> None:
    assert total_daily_dose([(1.0, "g"), (500.0, "mg"), (500_000.0, "µg")]) == Amount(2000.0, "mg")


def test_daily_dose_lower_bound_and_mixed_units() -> None:
    assert total_daily_dose([(3000.0, "mg"), (None, "mg")]) == Amount(3000.0, "mg", True)
    assert total_daily_dose([(3000.0, "mg"), (2.0, "tablet")]) == Amount(3000.0, "mg", True)
    assert total_daily_dose([(3000.0, "mg"), (4000.0, "IU")]) is None
    assert total_daily_dose([(4000.0, "IU"), (2000.0, "UI")]) == Amount(6000.0, "IU")


@pytest.mark.parametrize(
    ("op", "amount", "threshold", "expected"),
    [
        # exact amounts compare normally
        ("gt", Amount(4500.0, "mg"), 4000.0, True),
        ("gt", Amount(3500.0, "mg"), 4000.0, False),
        # a lower bound concludes only when its known part already passes > / >=
        ("gt", Amount(4500.0, "mg", True), 4000.0, True),
        ("ge", Amount(4000.0, "mg", True), 4000.0, True),
        ("gt", Amount(3500.0, "mg", True), 4000.0, None),
        ("lt", Amount(3500.0, "mg", True), 4000.0, None),
        ("eq", Amount(4000.0, "mg", True), 4000.0, None),
        # units that do not convert are unknown
        ("gt", Amount(8000.0, "IU"), 60.0, None),
        ("gt", Amount(2.0, "tablet"), 1.0, None),
    ],
)
def test_amount_comparison_grid(
    op: str, amount: Amount, threshold: float, expected: bool | None
) -> None:
    assert compare_amounts(op, amount, threshold, None, "mg") is expected


def test_lower_bound_on_the_right() -> None:
    assert compare_amounts("lt", 4000.0, Amount(4500.0, "mg", True), "mg", None) is True
    assert compare_amounts("gt", 4000.0, Amount(4500.0, "mg", True), "mg", None) is None


def test_amount_arithmetic() -> None:
    assert amount_arithmetic("mul", 2.0, Amount(1.0, "g")) == Amount(2000.0, "mg")
    assert amount_arithmetic("sub", Amount(1.0, "g"), 200.0, None, "mg") == Amount(800.0, "mg")
    assert amount_arithmetic("div", Amount(1.0, "g"), 0.0) is None
    assert amount_arithmetic("mul", Amount(1.0, "g", True), 2.0) is None


@pytest.mark.parametrize(
    ("line", "mme"),
    [
        (("N02AA01", "oral", 30.0, "mg", 60.0), 60.0),  # morphine × 1
        (("N02AA05", "oral", 20.0, "mg", 40.0), 60.0),  # oxycodone × 1.5
        (("N02AX02", "oral", 100.0, "mg", 300.0), 60.0),  # tramadol × 0.2
        (("R05DA04", "oral", 30.0, "mg", 180.0), 27.0),  # codeine × 0.15
        (("N02AA03", "oral", 4.0, "mg", 16.0), 80.0),  # hydromorphone × 5
        (("N07BC02", "oral", 20.0, "mg", 20.0), 94.0),  # methadone × 4.7
        (("N02AX06", "oral", 100.0, "mg", 200.0), 80.0),  # tapentadol × 0.4
        (("N02AB03", "transdermal", 25.0, "µg/h", 8.33), 60.0),  # fentanyl 25 µg/h × 2.4
        (("N02AA01", "oral", 30000.0, "µg", 60000.0), 60.0),  # daily dose in µg
    ],
)
def test_mme_cdc_2022_examples(line: tuple[str, str, float, str, float], mme: float) -> None:
    assert line_mme(*line) == pytest.approx(mme)


def test_mme_sum_and_lower_bounds() -> None:
    lines = [
        ("N02AA01", "oral", 30.0, "mg", 60.0),
        ("N02AX02", "oral", 100.0, "mg", 300.0),
        ("C09AA05", "oral", 5.0, "mg", 5.0),  # not an opioid: ignored
    ]
    assert morphine_equivalents(lines) == Amount(120.0, "MME")
    unknown = [*lines, ("N02AB03", "iv", 50.0, "µg", None)]  # IV fentanyl: no factor
    assert morphine_equivalents(unknown) == Amount(120.0, "MME", lower_bound=True)
    no_dose = [("N02AA05", "oral", None, None, None)]
    assert morphine_equivalents(no_dose) == Amount(0.0, "MME", lower_bound=True)


# Combination products: per-ingredient doses (issue 8 item 4) ----------------------------------
# DAFALGAN CODEINE (BDPM CIS 66003374): paracetamol 500 mg and codeine phosphate hemihydrate
# 30 mg per tablet. CDC 2022 factor of codeine: 0.15.
CODEINE = Ingredient(name="CODÉINE (PHOSPHATE DE) HÉMIHYDRATÉ", amount=30, unit="mg", source="bdpm")
PARACETAMOL = Ingredient(name="PARACÉTAMOL", atc="N02BE01", amount=500, unit="mg", source="bdpm")
DAFALGAN_CODEINE = [CODEINE, PARACETAMOL]


def per_day(doses: list[IngredientDose]) -> dict[str, float | None]:
    return {d.ingredient.name: d.per_day for d in doses}


def test_a_mass_dose_on_a_combination_is_the_dose_of_the_strength_it_is_units_of() -> None:
    # 1000 mg x 4: two tablets' paracetamol (1000 / 500), so 60 mg codeine per dose.
    doses = per_day(ingredient_doses(DAFALGAN_CODEINE, 1000, "mg", 4000))
    assert doses == {CODEINE.name: 240.0, PARACETAMOL.name: 4000.0}
    # 60 mg is not a whole or half number of 500 mg tablets: two tablets' codeine (60 / 30)
    doses = per_day(ingredient_doses(DAFALGAN_CODEINE, 60, "mg", 180))
    assert doses == {CODEINE.name: 180.0, PARACETAMOL.name: 3000.0}
    # 1 g is 1000 mg; 750 mg is one and a half tablets
    assert per_day(ingredient_doses(DAFALGAN_CODEINE, 1, "g", 3)) == {
        CODEINE.name: 180.0,
        PARACETAMOL.name: 3000.0,
    }
    assert per_day(ingredient_doses(DAFALGAN_CODEINE, 750, "mg", 1500))[CODEINE.name] == 90.0
    # 400 mg is neither: unknown, and the reading says why
    (first, _) = ingredient_doses(DAFALGAN_CODEINE, 400, "mg", 1600)
    assert first.per_day is None and "matches no strength" in first.reading


def test_a_dose_in_dose_units_reaches_each_ingredient_through_its_strength() -> None:
    # 2 tablets x 4 a day = 8 tablets: 4000 mg paracetamol, 240 mg codeine
    doses = per_day(ingredient_doses(DAFALGAN_CODEINE, 2, "tablet", 8))
    assert doses == {CODEINE.name: 240.0, PARACETAMOL.name: 4000.0}
    # a syrup given per 5 mL: codeine 0.08 g per 100 mL (BDPM CIS 60206154 writes 0,0800 g)
    syrup = [
        Ingredient(name="CODÉINE", amount=0.08, unit="g", per_amount=100, per_unit="mL"),
        Ingredient(name="X", amount=1, unit="g", per_amount=100, per_unit="mL"),
    ]
    assert per_day(ingredient_doses(syrup, 5, "mL", 15))["CODÉINE"] == pytest.approx(12.0)
    # a mass dose of one ingredient given per litre: 2 g of glucose at 50 g/L is 40 mL, so
    # 0.16 g of potassium chloride at 4 g/L
    infusion = [
        Ingredient(name="GLUCOSE", amount=50, unit="g", per_amount=1, per_unit="L"),
        Ingredient(name="KCl", amount=4, unit="g", per_amount=1, per_unit="L"),
    ]
    doses = {d.ingredient.name: d.per_dose for d in ingredient_doses(infusion, 2, "g", 2)}
    assert doses == {"GLUCOSE": pytest.approx(2000.0), "KCl": pytest.approx(160.0)}
    # a strength unknown, a dose unknown, a rate: unknown, never guessed
    unknown = [Ingredient(name="A"), PARACETAMOL]
    assert per_day(ingredient_doses(unknown, 2, "tablet", 8)) == {
        "A": None,
        PARACETAMOL.name: 4000.0,
    }
    assert per_day(ingredient_doses(DAFALGAN_CODEINE, None, None, None))[CODEINE.name] is None
    assert per_day(ingredient_doses(DAFALGAN_CODEINE, 2, "mg/h", 48))[CODEINE.name] is None


def test_mme_of_a_combination_uses_the_opioid_ingredient_amount() -> None:
    # codeine/paracetamol 1000 mg x 4: 240 mg codeine x 0.15 = 36 MME (not 4000 x 0.15 = 600)
    opioid, mme, doses = order_mme("N02AJ06", "oral", 1000, "mg", 4000, DAFALGAN_CODEINE)
    assert opioid and mme == pytest.approx(36.0)
    assert [d.ingredient.name for d in doses] == [CODEINE.name]
    # the same line without composition: an opioid line of unknown MME
    assert order_mme("N02AJ06", "oral", 1000, "mg", 4000) == (True, None, [])
    assert morphine_equivalents([("N02AJ06", "oral", 1000, "mg", 4000)]) == Amount(
        0.0, "MME", lower_bound=True
    )
    # tramadol/paracetamol 37.5 mg/325 mg (BDPM CIS 60152411), 2 tablets x 3: 225 mg x 0.2
    tramadol = [
        Ingredient(name="CHLORHYDRATE DE TRAMADOL", atc="N02AX02", amount=37.5, unit="mg"),
        Ingredient(name="PARACÉTAMOL", atc="N02BE01", amount=325, unit="mg"),
    ]
    assert order_mme("N02AJ13", "oral", 2, "tablet", 6, tramadol)[1] == pytest.approx(45.0)
    # a non-opioid combination is not an opioid line
    caffeine = [PARACETAMOL, Ingredient(name="CAFÉINE", atc="N06BC01", amount=50, unit="mg")]
    assert order_mme("N02BE51", "oral", 1, "tablet", 3, caffeine) == (False, 0.0, [])
    # an RxNorm-shaped combination without product ATC still counts its oxycodone (x 1.5)
    percocet = [
        Ingredient(name="Acetaminophen", amount=325, unit="mg", source="rxnorm-display"),
        Ingredient(name="Oxycodone Hydrochloride", amount=5, unit="mg", source="rxnorm-display"),
    ]
    assert order_mme(None, "oral", 1, "tablet", 4, percocet)[1] == pytest.approx(30.0)
    # 5 mg of it is read as the oxycodone (5 mg is not units of 325 mg): 20 mg a day
    assert order_mme(None, "oral", 5, "mg", 20, percocet)[1] == pytest.approx(30.0)


def test_combination_codes_come_from_the_bdpm_and_the_mme_table() -> None:
    # every BDPM product coded N02AJ06 is a combination; N02AJ17 (oxycodone and paracetamol)
    # has no BDPM product but is a combination row of mme_factors.csv
    assert is_combination_code("N02AJ06") and is_combination_code("N02AJ17")
    assert not is_combination_code("N02BE01") and not is_combination_code("N02AA05")
