"""The unit tables (``terminology/units.csv`` and its neighbours) against published values, and
the rule language and the engine reading the same tables."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vigie.engine import derived
from vigie.engine.derived import Amount, amount_in, line_mme, mme_factor
from vigie.rules.concepts import default_catalogue
from vigie.rules.units import concept_factor, unit_factor, unit_info
from vigie.terminology.units import DATA_DIR, UnitTables, default_unit_tables


@pytest.mark.parametrize(
    ("concept", "unit", "factor"),
    [
        # Creatinine: M = 113.12 g/mol, 1 mg/dL = 88.4 µmol/L (the conventional 88.42).
        ("creatinine", "mg/dL", 88.42),
        ("creatinine", "mg/L", 8.842),
        # Glucose: M = 180.16 g/mol, 1 mg/dL = 0.0555 mmol/L, 1 g/L = 5.55 mmol/L.
        ("glucose", "mg/dL", 0.0555),
        ("glucose", "g/L", 5.55),
        # Monovalent ions: 1 mEq/L = 1 mmol/L; platelets 1 /mm3 = 10^6/L = 0.001 G/L.
        ("potassium", "mEq/L", 1.0),
        ("platelets", "/mm3", 0.001),
        # Weight: the international pound is exactly 0.45359237 kg.
        ("weight", "lb", 0.45359237),
    ],
)
def test_concept_factors_match_the_literature(concept: str, unit: str, factor: float) -> None:
    found = concept_factor(default_catalogue(), concept, unit)
    assert found == pytest.approx(factor, rel=2e-3)


@pytest.mark.parametrize(
    ("source", "target", "factor"),
    [
        ("d", "h", 24.0),
        ("w", "d", 7.0),
        ("years", "d", 365.25),  # the Julian year
        ("h", "s", 3600.0),
        ("g", "mg", 1000.0),
        ("mcg", "mg", 0.001),
        ("mg/dL", "mg/L", 10.0),
        ("g/dL", "g/L", 10.0),
        ("µmol/L", "mmol/L", 0.001),
        ("ng/mL", "µg/L", 1.0),
        ("m", "cm", 100.0),
    ],
)
def test_unit_factors_within_a_dimension(source: str, target: str, factor: float) -> None:
    assert unit_factor(source, target) == pytest.approx(factor)


def test_units_of_different_dimensions_do_not_convert() -> None:
    assert unit_factor("mg/dL", "mmol/L") is None
    assert unit_factor("mL/min", "mL/min/1.73m2") is None
    assert unit_info("furlongs") is None


@pytest.mark.parametrize(
    ("atc", "route", "factor"),
    [
        # CDC 2022 Clinical Practice Guideline (MMWR Recomm Rep 2022;71(3)), table of factors.
        ("N02AA01", "oral", 1.0),  # morphine
        ("N02AA05", "oral", 1.5),  # oxycodone
        ("N02AA03", "oral", 5.0),  # hydromorphone
        ("N02AX02", "oral", 0.2),  # tramadol
        ("N02AX06", "oral", 0.4),  # tapentadol
        ("N07BC02", "oral", 4.7),  # methadone
        ("N02AB03", "transdermal", 2.4),  # fentanyl patch, per µg/h
        ("N02AB03", "iv", None),  # no factor for other fentanyl routes
    ],
)
def test_mme_factors_match_the_cdc_2022_table(atc: str, route: str, factor: float | None) -> None:
    assert mme_factor(atc, route) == factor


def test_a_fentanyl_patch_dose_is_read_in_any_spelling_of_micrograms_per_hour() -> None:
    for unit in ("µg/h", "\u03bcg/h", "ug/h", "mcg/h"):
        assert line_mme("N02AB03", "transdermal", 25.0, unit, None) == pytest.approx(60.0)
    assert line_mme("N02AB03", "transdermal", 25.0, "mg", None) is None


def test_the_engine_and_the_rules_read_one_table() -> None:
    tables = default_unit_tables()
    assert tables.conversion("creatinine", "mg/dL", "µmol/L") == derived.CREATININE_UMOL_PER_MG_DL
    for spelling, (base, factor) in derived.AMOUNT_UNITS.items():
        assert unit_factor(spelling, base) == pytest.approx(factor), spelling
    assert set(derived.AMOUNT_UNITS) == {
        "mg", "µg", "\u03bcg", "ug", "mcg", "g", "kg", "IU", "UI", "MME",
    }  # fmt: skip
    assert amount_in(Amount(2.0, "g"), "mg") == 2000.0
    assert amount_in(Amount(1.0, "lb"), "mg") is None  # a pound is no drug amount


def test_every_dimension_has_a_base_unit_of_factor_one() -> None:
    tables = default_unit_tables()
    for unit in tables.units.values():
        base = tables.units[tables.base_units[unit.dimension]]
        assert (base.dimension, base.factor) == (unit.dimension, 1.0)


def test_a_table_without_a_base_unit_is_refused(tmp_path: Path) -> None:
    for path in DATA_DIR.glob("*.csv"):
        shutil.copy(path, tmp_path / path.name)
    dimensions = tmp_path / "unit_dimensions.csv"
    dimensions.write_text(
        dimensions.read_text(encoding="utf-8").replace("duration,s", "duration,h"),
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="duration"):
        UnitTables.from_directory(tmp_path)


def test_module_doctests() -> None:
    import doctest

    from vigie.terminology import units

    result = doctest.testmod(units)
    assert result.attempted > 0 and result.failed == 0
