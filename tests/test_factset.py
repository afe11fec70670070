from datetime import timedelta

import polars as pl

from tests.factories import T0, lab, order, patient, weight
from vigie.engine.factset import FactSet, fact_columns, fact_row
from vigie.facts import FACT_KINDS


def test_every_kind_has_a_frame_schema_matching_its_rows() -> None:
    facts = FactSet([])
    for kind in FACT_KINDS:
        frame = facts.frame(kind)
        assert frame.height == 0
        assert frame.schema == pl.Schema(fact_columns(kind))


def test_columnar_and_patient_views_hold_the_same_facts() -> None:
    k1 = lab("p1", "potassium", 4.1, time=T0)
    k2 = lab("p1", "potassium", 5.9, time=T0 + timedelta(hours=12))
    facts = FactSet([patient("p1"), k2, k1, weight("p1", 61.5), order("p1", "o1", "N02BE01")])
    assert facts.counts()["lab"] == 2
    frame = facts.frame("lab").sort("time")
    assert frame["value"].to_list() == [4.1, 5.9]
    record = facts.patient("p1")
    assert [r.value for r in record.labs["potassium"]] == [4.1, 5.9]
    assert record.latest_lab("potassium") == k2
    assert record.latest_observation("weight").value == 61.5
    assert facts.frame("medication_order")["daily_dose"].to_list() == [3000]


def test_same_fact_id_replaces_instead_of_duplicating() -> None:
    first = lab("p1", "potassium", 4.1, fid="same")
    corrected = lab("p1", "potassium", 4.4, fid="same")
    facts = FactSet([first, corrected])
    assert len(facts) == 1
    assert facts.patient("p1").latest_lab("potassium").value == 4.4


def test_unmapped_lab_stays_out_of_concept_series_but_in_the_frame() -> None:
    unmapped = lab("p1", None, 12.0, code="XYZ")
    facts = FactSet([unmapped])
    assert facts.patient("p1").labs == {}
    assert facts.patient("p1").unmapped_labs == [unmapped]
    assert facts.frame("lab")["code_code"].to_list() == ["XYZ"]


def test_fact_row_flattens_source_coding_and_flags() -> None:
    row = fact_row(order("p1", "o9", None))
    assert row["drug_system"] == "LOCAL"
    assert row["source_position"] == "line 2"
    assert row["flags"] == ["unmapped_code"]
    assert set(row) == set(fact_columns("medication_order"))


def test_sparse_patient_is_merged_over_the_fuller_one() -> None:
    from vigie.facts import Sex

    full = patient("p1")
    sparse = full.model_copy(update={"birth_date": None, "sex": Sex.UNKNOWN})
    record = FactSet([full, sparse]).patient("p1").patient
    assert (record.birth_date, record.sex) == (full.birth_date, full.sex)
