"""Fact frames on disk (``vigie.store.parquet``): they read back as written, in exactly the
columns of ``fact_columns``, and a damaged directory is a clear error naming file and column."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tests.factories import T0, lab, order, patient, source, weight
from vigie.engine.columnar import evaluate_columnar
from vigie.engine.evaluate import evaluate
from vigie.engine.factset import FactSet, fact_columns
from vigie.errors import VigieError
from vigie.facts import FACT_KINDS, Allergy, Coding, MedicationOrder, Stay
from vigie.facts.model import Ingredient
from vigie.rules import compile_pack
from vigie.store.parquet import (
    FORMAT,
    MANIFEST,
    SCHEMA_VERSION,
    FramesError,
    is_frames_directory,
    read_frames,
    write_frames,
)
from vigie.synthetic.frames import hospital_frames


def _facts() -> FactSet:
    """Every column shape: a list of structs (a combination product), a list of strings
    (allergy ATC codes), flags, dates, times, nulls; a kind (pregnancy) with no fact."""
    combination = MedicationOrder(
        fact_id="o2", patient_id="p1", source=source(), order_id="o2",
        drug=Coding(system="ATC", code="N02AJ06", display="paracetamol/codeine"),
        atc="N02AJ06", dose=1, dose_unit="tablet", frequency_per_day=4, start=T0,
        ingredients=(
            Ingredient(name="paracetamol", atc="N02BE01", amount=500, unit="mg"),
            Ingredient(name="codeine", atc="R05DA04", amount=30, unit="mg", source="bdpm"),
        ),
    )  # fmt: skip
    allergy = Allergy(
        fact_id="a1", patient_id="p1", source=source(), substance=Coding(code="J01C"),
        atc=("J01C", "J01D"), criticality="high",
    )  # fmt: skip
    stay = Stay(
        fact_id="s1", patient_id="p1", source=source(), stay_id="s1", ward="MED-1",
        admit_time=datetime(2024, 2, 28, 10), status="in-progress",
    )  # fmt: skip
    return FactSet(
        [
            patient(),
            stay,
            order("p1", "o1", "C09AA05"),
            order("p1", "o3", None),  # unmapped: a flag
            combination,
            lab("p1", "potassium", 5.9),
            lab("p1", None, None, unit=None, fid="lab-unmapped"),
            weight("p1", 71.5),
            allergy,
        ]
    )


def test_frames_read_back_as_written_in_the_kinds_columns(tmp_path: Path) -> None:
    frames = _facts().frames()
    written = write_frames(frames, tmp_path)
    assert [p.name for p in written] == [f"{kind}.parquet" for kind in FACT_KINDS] + [MANIFEST]
    back = read_frames(tmp_path)
    assert list(back) == list(FACT_KINDS)
    for kind in FACT_KINDS:
        assert back[kind].schema == pl.Schema(fact_columns(kind)), kind
        assert_frame_equal(back[kind], frames[kind])
    combination = back["medication_order"].filter(pl.col("fact_id") == "o2")
    assert combination["ingredients"].to_list()[0][1]["amount"] == pytest.approx(30)
    assert back["allergy"]["atc"].to_list() == [["J01C", "J01D"]]
    assert back["pregnancy"].height == 0


def test_manifest_names_the_format_its_version_and_the_rows(tmp_path: Path) -> None:
    write_frames(_facts().frames(), tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["format"] == FORMAT == "vigie-fact-frames"
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["rows"]["medication_order"] == 3
    assert manifest["rows"]["lab"] == 2
    assert manifest["rows"]["pregnancy"] == 0


def test_a_kind_left_out_is_written_empty_and_kinds_can_be_chosen(tmp_path: Path) -> None:
    frames = _facts().frames()
    write_frames({"lab": frames["lab"]}, tmp_path)
    back = read_frames(tmp_path, kinds=["lab", "stay"])
    assert list(back) == ["lab", "stay"]
    assert back["lab"].height == 2
    assert back["stay"].height == 0
    assert back["stay"].schema == pl.Schema(fact_columns("stay"))


def test_a_generated_hospital_survives_the_round_trip(tmp_path: Path) -> None:
    frames = hospital_frames(40, 3, seed=2)
    write_frames(frames, tmp_path)
    back = read_frames(tmp_path)
    for kind in FACT_KINDS:
        assert_frame_equal(back[kind], frames[kind])


def test_alerts_from_the_files_are_the_alerts_from_the_facts(tmp_path: Path) -> None:
    """The potassium of 5.9 mmol/L on an ACE inhibitor (catalogue bio.hyperkalaemia, > 5.5)
    fires the same alert through the files as through the fact set."""
    ir, _ = compile_pack(
        """pack "t" version "1.0.0"
set acei = atc C09A
rule t.k "K+ high"
  problem 7 intervention 2 severity major level 1 version 1
  when
    d = active drug in acei
    k = latest potassium within 48 h
    k > 5.5 mmol/L
  say "K+ {k}"
""",
        "t.rules",
    )
    assert ir is not None
    facts = _facts()
    write_frames(facts.frames(), tmp_path)
    at = datetime(2024, 3, 1, 12)
    alerts = evaluate_columnar(ir, read_frames(tmp_path), at)
    assert [a.message for a in alerts] == ["K+ 5.9 mmol/L"]
    assert alerts == evaluate(ir, facts, at)


def _written(tmp_path: Path) -> Path:
    write_frames(_facts().frames(), tmp_path)
    return tmp_path


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    (_written(tmp_path) / "lab.parquet").unlink()
    with pytest.raises(FramesError, match=r"lab\.parquet: missing \(lab facts\)"):
        read_frames(tmp_path)


def test_a_missing_column_is_named_with_its_file(tmp_path: Path) -> None:
    path = _written(tmp_path) / "lab.parquet"
    pl.read_parquet(path).drop("time").write_parquet(path)
    with pytest.raises(FramesError, match=r"lab\.parquet: missing column 'time'") as raised:
        read_frames(tmp_path)
    assert isinstance(raised.value, VigieError)
    assert "Datetime" in str(raised.value)


def test_a_column_of_another_type_is_named_with_both_types(tmp_path: Path) -> None:
    path = _written(tmp_path) / "medication_order.parquet"
    frame = pl.read_parquet(path).with_columns(pl.col("dose").cast(pl.String))
    frame.write_parquet(path)
    with pytest.raises(FramesError) as raised:
        read_frames(tmp_path)
    message = str(raised.value)
    assert "medication_order.parquet" in message
    assert "column 'dose' is String, expected Float64" in message


def test_times_with_another_unit_are_refused_not_converted(tmp_path: Path) -> None:
    path = _written(tmp_path) / "lab.parquet"
    pl.read_parquet(path).with_columns(pl.col("time").cast(pl.Datetime("ms"))).write_parquet(path)
    with pytest.raises(FramesError, match=r"column 'time' is Datetime\(time_unit='ms'"):
        read_frames(tmp_path)


def test_extra_columns_in_a_file_are_left_unread(tmp_path: Path) -> None:
    path = _written(tmp_path) / "lab.parquet"
    pl.read_parquet(path).with_columns(pl.lit(1).alias("site_extra")).write_parquet(path)
    assert read_frames(tmp_path)["lab"].columns == list(fact_columns("lab"))


def test_no_manifest_or_another_version_is_refused(tmp_path: Path) -> None:
    assert not is_frames_directory(tmp_path)
    with pytest.raises(FramesError, match="no manifest"):
        read_frames(tmp_path)
    manifest = _written(tmp_path) / MANIFEST
    assert is_frames_directory(tmp_path)
    assert not is_frames_directory(manifest)
    document = json.loads(manifest.read_text(encoding="utf-8"))
    manifest.write_text(json.dumps({**document, "schema_version": 99}), encoding="utf-8")
    with pytest.raises(FramesError, match="schema version 99; this Vigie reads version 1"):
        read_frames(tmp_path)
    manifest.write_text("{not json", encoding="utf-8")
    with pytest.raises(FramesError, match="cannot read the manifest"):
        read_frames(tmp_path)


def test_a_file_that_is_not_parquet_is_refused(tmp_path: Path) -> None:
    (_written(tmp_path) / "stay.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(FramesError, match=r"stay\.parquet: not a readable Parquet file"):
        read_frames(tmp_path)


def test_writing_checks_the_frames_too(tmp_path: Path) -> None:
    frames = _facts().frames()
    with pytest.raises(FramesError, match="unknown fact kinds labs"):
        write_frames({"labs": frames["lab"]}, tmp_path)
    with pytest.raises(FramesError, match=r"frame 'lab': missing column 'concept'"):
        write_frames({"lab": frames["lab"].drop("concept")}, tmp_path)
