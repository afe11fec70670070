"""``vigie batch --engine spark`` (issue 9 item 7): the same alerts as the local run.

The reference is the local columnar run (``run_packs`` without engine), itself held to the live
evaluator by tests/test_columnar.py. Without Spark: the wide table carries every fact kind
there and back, and partitions of patients evaluated apart give the local alerts, in the local
order (what each executor does, called directly). With Spark (marked ``spark``, local mode): the
alerts of a generated hospital, through the Python API and through ``vigie batch`` writing its
file; a pack failing inside an executor is a one-paragraph ``BatchError``.
"""

from __future__ import annotations

import copy
import json
import sys
import zlib
from collections.abc import Iterator
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest

from vigie.api.batch import (
    BatchError,
    compile_packs,
    in_scope,
    run_packs,
    worklist_order,
)
from vigie.api.cli import main
from vigie.engine.alerts import Alert
from vigie.engine.factset import FactSet
from vigie.engine.load import load_pack
from vigie.engine.spark import (
    PartitionEvaluator,
    PartitionFailure,
    alerts_from_rows,
    frames_from_wide,
    wide_table,
)

AS_OF = datetime(2025, 1, 10, 12, 0)  # the generated week (from 2025-01-06), stays in progress


@cache
def hospital() -> dict[str, pl.DataFrame]:
    """A generated 60-bed week, every catalogue rule's situations injected (10 % of stays)."""
    from vigie.synthetic.canonical import canonical_hospital
    from vigie.synthetic.catalogue import covered_rules

    facts, _ = canonical_hospital(60, 7, seed=7, rates=dict.fromkeys(covered_rules(), 0.1))
    return FactSet(facts).frames()


@cache
def packs_ir() -> tuple[dict[str, Any], ...]:
    """The default and ANSM packs, as their IR."""
    return tuple(compile_packs([]))


@cache
def local_alerts() -> tuple[Alert, ...]:
    frames = hospital()
    patients = in_scope(frames, AS_OF, "inpatients")
    return tuple(run_packs([load_pack(ir) for ir in packs_ir()], frames, AS_OF, patients))


def dumps(alerts: Any) -> list[dict[str, Any]]:
    return [alert.model_dump() for alert in alerts]


def test_the_reference_run_has_alerts_of_many_rules_and_patients() -> None:
    """The comparison below means something: several rules, many patients."""
    alerts = local_alerts()
    assert len({a.rule_id for a in alerts}) >= 5
    assert len({a.patient_id for a in alerts}) >= 10


# Without Spark: what the driver ships and what each executor does --------------------------------


def test_the_wide_table_carries_every_kind_there_and_back() -> None:
    frames = hospital()
    wide = wide_table(frames)
    assert wide.num_rows == sum(f.height for f in frames.values())
    # atc is a string on order lines and a list on allergies: two columns
    assert {"medication_order__atc", "allergy__atc"} <= set(wide.column_names)
    back = frames_from_wide(wide)
    for kind, frame in frames.items():
        assert back[kind].schema == frame.schema, kind
        assert back[kind].equals(frame), kind


def test_the_wide_table_keeps_only_the_patients_in_scope() -> None:
    frames = hospital()
    patients = in_scope(frames, AS_OF, "inpatients")[:5]
    wide = wide_table(frames, patients)
    assert set(wide.column("patient_id").to_pylist()) == set(patients)
    expected = sum(f.filter(pl.col("patient_id").is_in(patients)).height for f in frames.values())
    assert wide.num_rows == expected


def _partitions(table: pa.Table, count: int) -> Iterator[list[pa.RecordBatch]]:
    """The table split by a hash of the patient id (as ``repartition`` does), each part as
    small record batches (Spark's Arrow batches are bounded too), rows shuffled."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    part = pl.col("patient_id").map_elements(
        lambda p: zlib.crc32(p.encode()) % count, return_dtype=pl.Int64
    )
    frame = frame.with_columns(part.alias("_part")).sample(fraction=1.0, shuffle=True, seed=3)
    for index in range(count):
        rows = frame.filter(pl.col("_part") == index).drop("_part").to_arrow()
        yield rows.to_batches(max_chunksize=97)


def test_partitions_evaluated_apart_give_the_local_alerts_in_the_local_order() -> None:
    frames = hospital()
    patients = in_scope(frames, AS_OF, "inpatients")
    evaluator = PartitionEvaluator.of(packs_ir(), AS_OF)
    rows = []
    for batches in _partitions(wide_table(frames, patients), 3):
        for result in evaluator(batches):
            rows += result.to_pylist()
    spread = {zlib.crc32(a.patient_id.encode()) % 3 for a in local_alerts()}
    assert spread == {0, 1, 2}  # every partition has alerts of its own
    assert dumps(worklist_order(alerts_from_rows(rows))) == dumps(local_alerts())


def test_an_empty_partition_yields_nothing() -> None:
    assert list(PartitionEvaluator.of(packs_ir(), AS_OF)(iter([]))) == []


def _broken_pack() -> dict[str, Any]:
    """A pack whose IR the driver never loads and an executor cannot: an IR version from the
    future."""
    ir = copy.deepcopy(packs_ir()[0])
    ir["ir_version"] = 999
    return ir


def test_an_executor_failure_comes_back_as_an_error_row() -> None:
    evaluator = PartitionEvaluator.of([packs_ir()[0], _broken_pack()], AS_OF)
    batches = wide_table(hospital()).to_batches()
    rows = [row for result in evaluator(batches) for row in result.to_pylist()]
    assert rows[-1]["error"] is not None and rows[-1]["pack"] == 1
    assert rows[-1]["error"].startswith("PackError: ")
    with pytest.raises(PartitionFailure):
        alerts_from_rows(rows)


def test_without_pyspark_the_spark_engine_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)  # import pyspark -> ImportError
    args = ["batch", "--input", str(tmp_path), "--as-of", "2025-01-10T12:00Z", "--engine"]
    code = main([*args, "spark", "--out", str(tmp_path / "x.json")])
    assert code == 2
    assert "install vigie[spark]" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_a_bad_spark_master_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VIGIE_SPARK_MASTER", "bogus://nowhere")
    args = ["batch", "--input", str(tmp_path), "--as-of", "2025-01-10T12:00Z", "--engine"]
    assert main([*args, "spark", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "VIGIE_SPARK_MASTER='bogus://nowhere'" in err and "local[N]" in err


# With Spark (local mode) --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spark() -> None:
    pytest.importorskip("pyspark", reason="the spark extra: pip install 'vigie[spark]'")


@pytest.mark.spark
@pytest.mark.slow
def test_spark_gives_the_local_alerts_in_the_local_order(spark: None) -> None:
    frames = hospital()
    patients = in_scope(frames, AS_OF, "inpatients")
    alerts = run_packs(packs_ir(), frames, AS_OF, patients, engine="spark")
    assert dumps(alerts) == dumps(local_alerts())


@pytest.mark.spark
@pytest.mark.slow
def test_vigie_batch_engine_spark_writes_the_local_file(spark: None, tmp_path: Path) -> None:
    """From HL7 v2 files, with a site configuration (evaluated per ward): the two output files
    differ only in the run's duration."""
    from vigie.synthetic import generate
    from vigie.synthetic.catalogue import covered_rules

    feeds = tmp_path / "feeds"
    generate(40, 7, 11, "hl7", feeds, rates=dict.fromkeys(covered_rules(), 0.1))
    site = tmp_path / "site.toml"
    site.write_text("[hospital.cursors]\nlong_benzo_age_min = 70\n", encoding="utf-8")
    texts = {}
    for engine in ("local", "spark"):
        out = tmp_path / f"{engine}.json"
        args = ["--input", str(feeds), "--as-of", "2025-01-10T12:00Z", "--config", str(site)]
        assert main(["batch", *args, "--out", str(out), "--engine", engine]) == 0
        texts[engine] = out.read_text(encoding="utf-8")
    document = json.loads(texts["local"])
    assert len({a["rule_id"] for a in document["alerts"]}) >= 5

    def without_duration(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.lstrip().startswith('"seconds"')]

    assert without_duration(texts["spark"]) == without_duration(texts["local"])


@pytest.mark.spark
@pytest.mark.slow
def test_a_pack_failing_in_an_executor_is_a_batch_error(spark: None) -> None:
    frames = hospital()
    patients = in_scope(frames, AS_OF, "inpatients")
    with pytest.raises(BatchError) as raised:
        run_packs([packs_ir()[0], _broken_pack()], frames, AS_OF, patients, engine="spark")
    message = str(raised.value)
    name = packs_ir()[0]["pack"]["name"]
    assert message.startswith(f"evaluation failed in a Spark executor (pack {name} ")
    assert "PackError" in message and "999" in message
    assert "Traceback" not in message and "py4j" not in message.lower()
    assert not raised.value.usage


@pytest.mark.spark
def test_without_java_spark_is_a_batch_error(
    spark: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))  # no bin/java there
    frames = hospital()
    with pytest.raises(BatchError, match=r"no Java .* Java 17 or newer") as raised:
        run_packs(packs_ir(), frames, AS_OF, in_scope(frames, AS_OF, "inpatients"), engine="spark")
    assert not raised.value.usage
