"""Derived clinical values against hand-computed and published references."""

from __future__ import annotations

import doctest
from datetime import date, datetime

import pytest

from vigie.engine import derived
from vigie.engine.derived import (
    Amount,
    age_in_years,
    amount_arithmetic,
    amount_in,
    ckd_epi_2021,
    cockcroft_gault,
    compare_amounts,
    line_mme,
    morphine_equivalents,
    total_daily_dose,
)


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
        (("N02AJ06", "oral", 30.0, "mg", 180.0), 27.0),  # codeine combination × 0.15
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
