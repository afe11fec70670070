"""What a Spark executor runs for ``vigie batch --engine spark``; nothing here imports pyspark.

The driver (``vigie.api.spark``) sends the facts as one wide Arrow table — every fact kind in
the same rows, a ``kind`` column saying which, partitioned by patient so that all of a
patient's facts meet in one partition — and a ``PartitionEvaluator``, which Spark pickles to
each task. The evaluator holds the packs as their IR in JSON text, loaded once per executor
process (a cache keyed by the text's hash: Python workers are reused), never per row or per
task. For a partition it rebuilds the per-kind polars frames of ``fact_columns`` from the Arrow
batches, runs the columnar evaluator (``evaluate_columnar``) for every pack and returns one
row per alert: the pack's position, the sort keys of the local run and the alert pickled (the
very objects ``evaluate_columnar`` built, so the driver gets back exactly what the local run
returns). An exception is returned as an ``error`` row, which the driver raises as its own error:
a user never reads a Py4J or Java trace.

Wide table: a column keeps its name when every kind that has it gives it the same type, and is
named ``<kind>__<name>`` otherwise (``atc``: a string on order lines, a list on allergies).
Times travel as microseconds since the epoch (``Int64``), so that neither Spark's session time
zone nor its two timestamp types can move them. ``row`` is each fact's position in its kind's
frame: an executor puts its facts back in that order.

>>> from datetime import datetime
>>> from vigie.engine.factset import FactSet
>>> from vigie.facts import Coding, LabResult, Source
>>> lab = LabResult(fact_id="l1", patient_id="p1", concept="potassium", value=5.9,
...     unit="mmol/L", code=Coding(code="2823-3"), time=datetime(2024, 1, 2, 8, 0, 0, 1),
...     source=Source(feed="csv", document="x.csv", position="line 2"))
>>> frames = FactSet([lab]).frames()
>>> wide = wide_table(frames)
>>> wide.num_rows, wide.column("kind").to_pylist()
(1, ['lab'])
>>> back = frames_from_wide(wide)
>>> all(back[kind].equals(frames[kind]) for kind in frames)
True
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

import polars as pl
import pyarrow as pa

from vigie.engine.alerts import Alert
from vigie.engine.columnar import evaluate_columnar
from vigie.engine.errors import EngineError
from vigie.engine.evaluate import normalise_time
from vigie.engine.factset import fact_columns
from vigie.engine.load import LoadedPack, load_pack
from vigie.engine.site_config import SiteConfig
from vigie.facts import FACT_KINDS

__all__ = [
    "RESULT_SCHEMA",
    "PartitionEvaluator",
    "PartitionFailure",
    "alerts_from_rows",
    "frames_from_wide",
    "wide_table",
]

# One row per alert (``error`` null), or one row per failure (``error`` set, ``alert`` null).
RESULT_SCHEMA = pa.schema(
    [
        ("pack", pa.int32()),
        ("rule_index", pa.int64()),
        ("patient_id", pa.string()),
        ("alert_id", pa.string()),
        ("alert", pa.binary()),
        ("error", pa.string()),
    ]
)
RESULT_DDL = (
    "pack int, rule_index long, patient_id string, alert_id string, alert binary, error string"
)


# Facts as one wide table -------------------------------------------------------------------------


_OWN = ("kind", "row")  # the wide table's own columns


@cache
def wide_columns() -> dict[str, dict[str, str]]:
    """kind -> {column of ``fact_columns(kind)``: its name in the wide table}."""
    types: dict[str, set[str]] = {}
    for kind in FACT_KINDS:
        for name, dtype in fact_columns(kind).items():
            types.setdefault(name, set()).add(str(dtype))
    return {
        kind: {
            name: name if len(types[name]) == 1 and name not in _OWN else f"{kind}__{name}"
            for name in fact_columns(kind)
        }
        for kind in FACT_KINDS
    }


def _is_time(dtype: pl.DataType) -> bool:
    return isinstance(dtype, pl.Datetime)


def wide_table(
    frames: Mapping[str, pl.DataFrame], patients: Sequence[str] | None = None
) -> pa.Table:
    """Every fact of the frames (of these patients only, when given) in one Arrow table."""
    wanted = None if patients is None else pl.Series(list(patients), dtype=pl.String())
    parts = []
    for kind, names in wide_columns().items():
        frame = frames.get(kind)
        if frame is None or not frame.height:
            continue
        if wanted is not None:
            frame = frame.with_row_index("row").filter(pl.col("patient_id").is_in(wanted.implode()))
        else:
            frame = frame.with_row_index("row")
        schema = fact_columns(kind)
        parts.append(
            frame.select(
                pl.lit(kind).alias("kind"),
                pl.col("row").cast(pl.Int64),
                *(
                    (pl.col(c).dt.epoch("us") if _is_time(t) else pl.col(c)).alias(names[c])
                    for c, t in schema.items()
                ),
            )
        )
    if not parts:
        return pl.DataFrame(
            schema={"kind": pl.String, "row": pl.Int64, "patient_id": pl.String}
        ).to_arrow()
    return pl.concat(parts, how="diagonal").to_arrow()


def frames_from_wide(table: pa.Table) -> dict[str, pl.DataFrame]:
    """The per-kind frames of ``fact_columns`` (every kind, empty ones too) from a wide table
    or a part of one, each in its facts' original order."""
    wide = pl.from_arrow(table)
    assert isinstance(wide, pl.DataFrame)
    frames = {}
    for kind, names in wide_columns().items():
        schema = fact_columns(kind)
        rows = wide.filter(pl.col("kind") == kind).sort("row")
        frames[kind] = rows.select(
            (
                pl.col(names[c]).cast(pl.Int64).cast(pl.Datetime("us"))
                if _is_time(t)
                else pl.col(names[c]).cast(t)
            ).alias(c)
            if names[c] in rows.columns
            else pl.lit(None, dtype=t).alias(c)
            for c, t in schema.items()
        )
    return frames


# The executor's side -----------------------------------------------------------------------------


@cache
def _loaded(pack_json: str, digest: str) -> LoadedPack:
    """A pack loaded from its IR once per Python process (``digest`` is the key)."""
    return load_pack(json.loads(pack_json))


def pack_digest(pack_json: str) -> str:
    return hashlib.sha256(pack_json.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PartitionEvaluator:
    """The function of ``mapInArrow``: a partition's Arrow batches in, result rows out."""

    packs: tuple[tuple[str, str], ...]  # (IR as JSON text, its sha256) per pack, in order
    as_of: datetime
    site: SiteConfig | None = None

    @classmethod
    def of(
        cls, irs: Sequence[Mapping[str, Any]], as_of: datetime, site: SiteConfig | None = None
    ) -> PartitionEvaluator:
        texts = [json.dumps(ir, sort_keys=True, ensure_ascii=False) for ir in irs]
        return cls(tuple((t, pack_digest(t)) for t in texts), normalise_time(as_of), site)

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        position = -1
        try:
            received = [batch for batch in batches if batch.num_rows]
            if not received:
                return
            table = pa.Table.from_batches(received)
            frames = frames_from_wide(table)
            for position, (text, digest) in enumerate(self.packs):
                pack = _loaded(text, digest)
                alerts = evaluate_columnar(pack, frames, self.as_of, site=self.site)
                yield _result_batch(position, pack, alerts)
        except Exception as error:  # every failure goes back to the driver, as data
            yield _error_batch(position, error)

    def pack_name(self, position: int) -> str:
        if not 0 <= position < len(self.packs):
            return "?"
        pack = json.loads(self.packs[position][0]).get("pack") or {}
        return f"{pack.get('name', '?')} {pack.get('version', '')}".strip()


def _result_batch(position: int, pack: LoadedPack, alerts: Sequence[Alert]) -> pa.RecordBatch:
    order = {rule.id: rule.index for rule in pack.rules}
    columns = {
        "pack": [position] * len(alerts),
        "rule_index": [order[a.rule_id] for a in alerts],
        "patient_id": [a.patient_id for a in alerts],
        "alert_id": [a.id for a in alerts],
        "alert": [pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL) for a in alerts],
        "error": [None] * len(alerts),
    }
    return pa.RecordBatch.from_pydict(columns, schema=RESULT_SCHEMA)


def _error_batch(position: int, error: BaseException) -> pa.RecordBatch:
    detail = f"{type(error).__name__}: {error}"
    columns = {"pack": [position], "rule_index": [None], "patient_id": [None],
               "alert_id": [None], "alert": [None], "error": [detail]}  # fmt: skip
    return pa.RecordBatch.from_pydict(columns, schema=RESULT_SCHEMA)


class PartitionFailure(EngineError):
    """An executor's error row: which pack (position, -1 before any) and what was raised."""

    def __init__(self, pack: int, detail: str) -> None:
        super().__init__(detail)
        self.pack = pack
        self.detail = detail


def alerts_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[Alert]:
    """The alerts of the result rows in the local run's order (pack after pack, each by rule,
    patient and identity); ``PartitionFailure`` for the first error row."""
    kept = []
    for row in rows:
        if row["error"] is not None:
            raise PartitionFailure(row["pack"], row["error"])
        kept.append(row)
    kept.sort(key=lambda r: (r["pack"], r["rule_index"], r["patient_id"], r["alert_id"]))
    return [_unpickle(row["alert"]) for row in kept]


def _unpickle(data: bytes) -> Alert:
    alert = pickle.loads(data)  # rows this run's own executors wrote
    if not isinstance(alert, Alert):
        raise PartitionFailure(-1, f"an executor returned {type(alert).__name__}, not an alert")
    return alert
