"""The synthetic hospital as fact frames (``vigie.synthetic.frames``) equals the per-fact path,
``FactSet(tables_to_facts(tables)).frames()``, row for row, in ``fact_columns``' schema."""

from __future__ import annotations

from datetime import date, datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from vigie.engine.factset import FactSet, fact_columns
from vigie.facts import FACT_KINDS
from vigie.synthetic import hospital_tables
from vigie.synthetic.canonical import canonical_facts, tables_to_facts
from vigie.synthetic.frames import hospital_frames, tables_to_frames


def _chunk(beds: int = 120, days: int = 4, seed: int = 5) -> dict[str, pl.DataFrame]:
    # min_cases=1: every scenario variant of the catalogue is injected at least once
    return next(iter(hospital_tables(beds, days, seed, min_cases=1)))[1]


def test_every_kind_has_exactly_the_fact_columns() -> None:
    frames = tables_to_frames(_chunk(30, 2))
    assert list(frames) == list(FACT_KINDS)
    for kind, frame in frames.items():
        assert frame.schema == pl.Schema(fact_columns(kind)), kind


def test_frames_equal_the_facts_of_the_same_tables() -> None:
    tables = _chunk()
    expected = FactSet(tables_to_facts(tables)).frames()
    frames = tables_to_frames(tables)
    for kind in FACT_KINDS:
        assert frames[kind].height > 0, kind  # every kind exercised
        assert_frame_equal(frames[kind], expected[kind])


def test_a_hospital_equals_its_canonical_facts() -> None:
    frames = hospital_frames(60, 3, seed=8)
    expected = FactSet(canonical_facts(60, 3, seed=8)).frames()
    for kind in FACT_KINDS:
        assert_frame_equal(frames[kind], expected[kind])


@pytest.mark.slow
def test_chunks_are_concatenated_in_order() -> None:
    """Ids continue across chunks (``IdCounters``), rows keep the chunks' order."""
    frames = hospital_frames(150, 3, seed=8, chunk_beds=40)
    chunks = list(hospital_tables(150, 3, 8, chunk_beds=40))
    assert len(chunks) > 2
    expected = FactSet([fact for _, t in chunks for fact in tables_to_facts(t)]).frames()
    for kind in FACT_KINDS:
        assert_frame_equal(frames[kind], expected[kind])


def _labs_table(values: list[float], units: list[str], codes: list[str]) -> pl.DataFrame:
    n = len(values)
    return pl.DataFrame(
        {
            "lab_id": [f"L{i}" for i in range(n)],
            "patient_id": ["P1"] * n,
            "code_system": ["LOINC"] * n,
            "code": codes,
            "value": values,
            "unit": units,
            "time": [1_736_150_400] * n,  # 2025-01-06T08:00:00Z
            "reference_low": [None] * n,
            "reference_high": [None] * n,
        },
        schema_overrides={"reference_low": pl.Float64, "reference_high": pl.Float64},
    )


def test_lab_values_are_converted_to_the_concepts_unit_by_hand() -> None:
    """Creatinine 1.5 mg/dL = 1.5 x 88.42 = 132.63 µmol/L; glucose 1.2 g/L = 1.2 x 5.55062
    = 6.660744 mmol/L (terminology/unit_conversions.csv: M = 180.16 g/mol); potassium in its
    own unit is kept as sent. The value as received is kept as Python writes it, 1e-05
    included (polars alone would write 0.00001)."""
    tables = dict(_chunk(30, 2))
    tables["labs"] = _labs_table(
        [1.5, 1.2, 5.9, 1e-05], ["mg/dL", "g/L", "mmol/L", "mmol/L"],
        ["2160-0", "2345-7", "2823-3", "2823-3"],
    )  # fmt: skip
    lab = tables_to_frames(tables)["lab"]
    assert lab["concept"].to_list() == ["creatinine", "glucose", "potassium", "potassium"]
    assert lab["value"].to_list() == pytest.approx([132.63, 6.660744, 5.9, 1e-05])
    assert lab["unit"].to_list() == ["µmol/L", "mmol/L", "mmol/L", "mmol/L"]
    assert lab["original_value"].to_list() == ["1.5", "1.2", "5.9", "1e-05"]
    assert lab["original_unit"].to_list() == ["mg/dL", "g/L", "mmol/L", "mmol/L"]
    assert lab["time"].to_list() == [datetime(2025, 1, 6, 8)] * 4
    assert lab["code_system"].unique().to_list() == ["http://loinc.org"]
    assert_frame_equal(lab, FactSet(tables_to_facts(tables)).frame("lab"))


def test_dates_times_and_lists_read_as_the_models_read_them() -> None:
    tables = dict(_chunk(30, 2))
    tables["patients"] = pl.DataFrame(
        {"patient_id": ["P1"], "birth_date": [-461_552_400], "sex": ["F"]}
    )  # 1955-05-17T23:00Z: before the epoch, not midnight (floor, not truncation)
    tables["allergies"] = pl.DataFrame(
        {
            "allergy_id": ["A1", "A2"],
            "patient_id": ["P1", "P1"],
            "substance_system": ["ATC", "LOCAL"],
            "substance_code": ["J01C", "X"],
            "substance_display": ["Pénicillines", "Inconnu"],
            "atc": ["J01C", ""],
            "criticality": ["high", "low"],
            "recorded": [1_736_150_400, None],
            "clinical_status": ["active", "active"],
        }
    )
    frames = tables_to_frames(tables)
    assert frames["patient"]["birth_date"].to_list() == [date(1955, 5, 17)]
    assert frames["allergy"]["atc"].to_list() == [["J01C"], []]
    assert frames["allergy"]["recorded"].to_list() == [datetime(2025, 1, 6, 8), None]
    expected = FactSet(tables_to_facts(tables)).frames()
    assert_frame_equal(frames["patient"], expected["patient"])
    assert_frame_equal(frames["allergy"], expected["allergy"])


def test_orders_daily_dose_is_dose_times_frequency() -> None:
    orders = tables_to_frames(_chunk(30, 2))["medication_order"]
    assert orders.height > 0
    product = orders["dose"] * orders["frequency_per_day"]
    assert (orders["daily_dose"] == product).all()
    assert orders["drug_system"].unique().to_list() == ["ATC"]
    assert orders["ingredients"].list.len().max() == 0
