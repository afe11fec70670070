"""The synthetic hospital as fact frames: the batch evaluator's input, built column by column.

``tables_to_frames(tables)`` gives, for one chunk of ``vigie.synthetic.hospital_tables``, what
``FactSet(tables_to_facts(tables)).frames()`` gives (``vigie.synthetic.canonical``): one polars
frame per fact kind in the columns of ``vigie.engine.factset.fact_columns(kind)``, the facts a
perfect connector would read, row for row in the same order. The canonical path builds a
pydantic model per row; this one is polars expressions over the generator's tables, so a
20,000-bed hospital becomes frames in seconds. What the terminology decides (a LOINC code's
concept, a unit's conversion to the concept's canonical unit) is asked once per *distinct* code
and unit and joined back as a table.

The frames' schemas are written out here (this package sits below the engine and does not
import it); ``tests/test_synthetic_frames.py`` holds them to ``fact_columns``.

>>> frames = hospital_frames(20, 2, seed=1)
>>> frames["lab"].select("concept", "unit").unique().height > 3
True
>>> frames["patient"].columns[:3]
['fact_id', 'patient_id', 'source_feed']
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import polars as pl

from vigie.facts import FACT_KINDS
from vigie.synthetic.generator import CHUNK_BEDS, hospital_tables
from vigie.terminology import default_terminology

__all__ = ["hospital_frames", "tables_to_frames"]

_TIME = pl.Datetime("us")
_TEXT = pl.String()
_NO_TEXT = pl.lit(None, dtype=_TEXT)
_INGREDIENT = pl.Struct(
    {
        "name": pl.String(),
        "atc": pl.String(),
        "amount": pl.Float64(),
        "unit": pl.String(),
        "per_amount": pl.Float64(),
        "per_unit": pl.String(),
        "source": pl.String(),
    }
)


def _time(column: str) -> pl.Expr:
    """Epoch seconds (UTC) as a naive UTC time, as ``canonical._t`` reads them."""
    return (pl.col(column).cast(pl.Int64) * 1_000_000).cast(_TIME)


def _date(column: str) -> pl.Expr:
    return _time(column).dt.date()


def _empty_list(dtype: pl.DataType) -> pl.Expr:
    return pl.lit([], dtype=pl.List(dtype))


def _common(id_column: str) -> list[pl.Expr]:
    """fact id, patient, the synthetic source (``feed=synthetic, document=memory``), no flags."""
    return [
        pl.col(id_column).alias("fact_id"),
        pl.col("patient_id"),
        pl.lit("synthetic", dtype=_TEXT).alias("source_feed"),
        pl.lit("memory", dtype=_TEXT).alias("source_document"),
        _NO_TEXT.alias("source_message_id"),
        _NO_TEXT.alias("source_position"),
        pl.lit(None, dtype=_TIME).alias("source_version_time"),
        _empty_list(_TEXT).alias("flags"),
    ]


def _coding(name: str, system: str, code: str, display: pl.Expr) -> list[pl.Expr]:
    return [
        pl.lit(system, dtype=_TEXT).alias(f"{name}_system"),
        pl.col(code).alias(f"{name}_code"),
        display.alias(f"{name}_display"),
    ]


def _patients(table: pl.DataFrame) -> pl.DataFrame:
    return table.select(*_common("patient_id"), _date("birth_date").alias("birth_date"), "sex")


def _stays(table: pl.DataFrame) -> pl.DataFrame:
    return table.select(
        *_common("stay_id"),
        "stay_id",
        "ward",
        "bed",
        _time("admit_time").alias("admit_time"),
        _time("discharge_time").alias("discharge_time"),
        "status",
    )


def _orders(table: pl.DataFrame) -> pl.DataFrame:
    return table.select(
        *_common("order_id"),
        "order_id",
        "stay_id",
        *_coding("drug", "ATC", "drug_code", pl.col("label")),
        "atc",
        "label",
        "dose",
        "dose_unit",
        _NO_TEXT.alias("original_dose"),
        _NO_TEXT.alias("original_dose_unit"),
        "frequency_per_day",
        "frequency_text",
        (pl.col("dose") * pl.col("frequency_per_day")).alias("daily_dose"),
        "as_needed",
        "route",
        _NO_TEXT.alias("original_route"),
        _time("start").alias("start"),
        _time("end").alias("end"),
        "status",
        "prescriber",
        _empty_list(_INGREDIENT).alias("ingredients"),
    )


def _administrations(table: pl.DataFrame) -> pl.DataFrame:
    return table.select(
        *_common("administration_id"),
        "administration_id",
        "order_id",
        *_coding("drug", "ATC", "drug_code", pl.col("label")),
        "atc",
        "label",
        "dose",
        "dose_unit",
        "route",
        _time("time").alias("time"),
        "status",
    )


def _concepts(table: pl.DataFrame) -> pl.DataFrame:
    """Per distinct code: its concept in the terminology."""
    terms = default_terminology()
    rows = []
    for (code,) in table.select("code").unique().iter_rows():
        concept = terms.lab_concept("LOINC", code)
        if concept is None:
            raise ValueError(f"synthetic code {code!r} has no concept in the terminology")
        rows.append((code, concept.name))
    return pl.DataFrame(rows, schema={"code": _TEXT, "concept": _TEXT}, orient="row")


def _canonical_values(table: pl.DataFrame) -> pl.DataFrame:
    """Per distinct (concept, unit, value): the value in the concept's canonical unit and that
    unit, by ``Terminology.to_canonical`` itself (generated values are few and repeat: a few
    thousand distinct ones for 300,000 labs)."""
    terms = default_terminology()
    rows = [
        (concept, unit, value, *terms.to_canonical(concept, value, unit))
        for concept, unit, value in table.select("concept", "unit", "value").unique().iter_rows()
    ]
    schema = {"concept": _TEXT, "unit": _TEXT, "value": pl.Float64()}
    schema |= {"_canonical_value": pl.Float64(), "_canonical_unit": _TEXT}
    return pl.DataFrame(rows, schema=schema, orient="row")


def _python_str(values: pl.Series) -> pl.Expr:
    """The floats of ``values`` as Python's ``str`` writes them. polars writes the same digits
    except where Python switches to exponent notation (below 1e-4, from 1e16) or spells NaN;
    those rare values (none in a generated hospital) are written by Python, once each."""
    value = pl.col(values.name)
    magnitude = value.abs()
    exotic = ((magnitude < 1e-4) & (magnitude > 0)) | (magnitude >= 1e16)
    rare = values.to_frame().filter(exotic).get_column(values.name).unique().to_list()
    text = value.cast(_TEXT)
    if rare:
        spelled = value.replace_strict(rare, [str(v) for v in rare], default=None)
        text = pl.when(exotic).then(spelled).otherwise(text)
    return pl.when(value.is_nan()).then(pl.lit("nan")).otherwise(text)


def _measures(table: pl.DataFrame, id_column: str, with_references: bool) -> pl.DataFrame:
    """Labs or observations: concept from the code, value in the concept's canonical unit,
    the value and unit as received."""
    keyed = table.join(_concepts(table), on="code", how="left", maintain_order="left")
    converted = keyed.join(
        _canonical_values(keyed), on=["concept", "unit", "value"], how="left",
        maintain_order="left", nulls_equal=True,
    )  # fmt: skip
    references = ["reference_low", "reference_high"] if with_references else []
    extra = [_NO_TEXT.alias("abnormal_flag"), _NO_TEXT.alias("qualitative")]
    return converted.select(
        *_common(id_column),
        "concept",
        *_coding("code", "http://loinc.org", "code", _NO_TEXT),
        pl.col("_canonical_value").alias("value"),
        pl.col("_canonical_unit").alias("unit"),
        _python_str(converted.get_column("value")).alias("original_value"),
        pl.col("unit").alias("original_unit"),
        _time("time").alias("time"),
        *references,
        *(extra if with_references else []),
    )


def _conditions(table: pl.DataFrame) -> pl.DataFrame:
    return table.select(
        *_common("condition_id"),
        *_coding("code", "ICD10", "code", pl.col("display")),
        pl.col("code").alias("icd10"),
        _time("onset").alias("onset"),
        pl.lit(None, dtype=_TIME).alias("abatement"),  # the canonical facts carry none
        "clinical_status",
    )


def _allergies(table: pl.DataFrame) -> pl.DataFrame:
    atc = pl.col("atc")
    return table.select(
        *_common("allergy_id"),
        pl.col("substance_system"),
        pl.col("substance_code"),
        pl.col("substance_display"),
        pl.when(atc.is_null() | (atc == ""))
        .then(_empty_list(_TEXT))
        .otherwise(pl.concat_list(atc))
        .alias("atc"),
        "criticality",
        _time("recorded").alias("recorded"),
        "clinical_status",
    )


def _pregnancies(table: pl.DataFrame) -> pl.DataFrame:
    return table.select(
        *_common("pregnancy_id"),
        "status",
        _time("recorded").alias("recorded"),
        _date("estimated_due_date").alias("estimated_due_date"),
    )


def tables_to_frames(tables: Mapping[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """The fact frames of one chunk's tables, one per fact kind (every kind present)."""
    frames = {
        "patient": _patients(tables["patients"]),
        "stay": _stays(tables["stays"]),
        "medication_order": _orders(tables["orders"]),
        "medication_administration": _administrations(tables["administrations"]),
        "lab": _measures(tables["labs"], "lab_id", with_references=True),
        "observation": _measures(tables["observations"], "observation_id", with_references=False),
        "condition": _conditions(tables["conditions"]),
        "allergy": _allergies(tables["allergies"]),
        "pregnancy": _pregnancies(tables["pregnancies"]),
    }
    return {kind: frames[kind] for kind in FACT_KINDS}


def hospital_frames(
    beds: int,
    days: int,
    seed: int,
    start: datetime | None = None,
    rates: Mapping[str, float] | None = None,
    chunk_beds: int = CHUNK_BEDS,
    min_cases: int = 0,
) -> dict[str, pl.DataFrame]:
    """The fact frames of a whole synthetic hospital (``hospital_tables``' arguments), its
    chunks concatenated in order."""
    chunks = [
        tables_to_frames(tables)
        for _, tables in hospital_tables(beds, days, seed, start, rates, chunk_beds, min_cases)
    ]
    return {kind: pl.concat([chunk[kind] for chunk in chunks], rechunk=True) for kind in FACT_KINDS}
