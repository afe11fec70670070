"""Synthetic French hospital: wards, patients, stays, orders, labs, and a ground truth.

``generate(beds, days, seed, fmt, out)`` writes the hospital's feeds as CSV (the canonical
layout), FHIR R4 Bulk NDJSON or HL7 v2.5 batches, plus ``hospital.json`` (wards and beds),
``truth.json`` and ``truth.csv`` (the injected situations per rule, with their time windows).
Same seed, same bytes. Work is done per chunk of wards with numpy/polars columns.

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as d:
...     summary = generate(20, 2, seed=1, fmt="csv", out=pathlib.Path(d))
>>> sum(w.beds for w in summary.wards)
20
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import polars as pl

from vigie.synthetic.catalogue import DEFAULT_RATE, covered_rules
from vigie.synthetic.export_csv import CsvExporter
from vigie.synthetic.export_fhir import FhirExporter
from vigie.synthetic.export_hl7 import Hl7Exporter
from vigie.synthetic.formulary import load_formulary
from vigie.synthetic.hospital import DAY, Period, Ward, allocate_wards
from vigie.synthetic.tables import KINDS, IdCounters, build_chunk
from vigie.synthetic.timefmt import as_iso
from vigie.synthetic.truth import TRUTH_SCHEMA, truth_meta

__all__ = [
    "DEFAULT_START",
    "FORMATS",
    "GenerationSummary",
    "generate",
    "hospital_tables",
]

FORMATS = ("csv", "fhir", "hl7")
DEFAULT_START = datetime(2025, 1, 6)  # a fixed Monday: output must not depend on today
CHUNK_BEDS = 2500


METADATA_FILES = frozenset({"hospital.json", "truth.json", "truth.csv"})


@dataclass
class GenerationSummary:
    beds: int
    days: int
    seed: int
    format: str
    start: datetime
    wards: list[Ward]
    counts: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    situations: dict[str, dict[str, int]] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def facts(self) -> int:
        return sum(self.counts.values())

    @property
    def feed_files(self) -> list[Path]:
        """The files a hospital's feeds would carry: what `vigie ingest` should read."""
        return [path for path in self.files if path.name not in METADATA_FILES]

    def describe(self) -> str:
        lines = [
            f"{self.beds} beds in {len(self.wards)} wards, {self.days} days from "
            f"{self.start:%Y-%m-%d}, seed {self.seed}, format {self.format}: "
            f"{self.facts:,} facts in {self.elapsed:.1f} s"
        ]
        lines += [f"  {kind:16} {n:>10,}" for kind, n in self.counts.items()]
        positives = sum(v["positive"] for v in self.situations.values())
        controls = sum(v["control"] for v in self.situations.values())
        background = sum(v.get("background", 0) for v in self.situations.values())
        lines.append(
            f"  injected situations: {positives:,} positive, {controls:,} controls "
            f"over {len(self.situations)} rules, {background:,} background situations "
            "(truth.json, truth.csv)"
        )
        lines.append(f"  {len(self.files)} files written")
        return "\n".join(lines)


def _period(start: datetime | None, days: int) -> Period:
    when = start or DEFAULT_START
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    seconds = int(when.replace(tzinfo=UTC).timestamp()) // 60 * 60
    return Period(seconds, seconds + days * DAY)


def _chunks(wards: list[Ward], size: int) -> list[list[Ward]]:
    chunks: list[list[Ward]] = [[]]
    for ward in wards:
        if chunks[-1] and sum(w.beds for w in chunks[-1]) + ward.beds > size:
            chunks.append([])
        chunks[-1].append(ward)
    return chunks


def _rates(rates: Mapping[str, float] | None) -> dict[str, float]:
    rules = covered_rules()
    unknown = set(rates or {}) - set(rules)
    if unknown:
        raise ValueError(f"unknown rule ids in rates: {', '.join(sorted(unknown))}")
    return {rule: float((rates or {}).get(rule, DEFAULT_RATE)) for rule in rules}


def hospital_tables(
    beds: int,
    days: int,
    seed: int,
    start: datetime | None = None,
    rates: Mapping[str, float] | None = None,
    chunk_beds: int = CHUNK_BEDS,
    min_cases: int = 0,
) -> Iterator[tuple[list[Ward], dict[str, pl.DataFrame]]]:
    """Yield (wards, tables) per chunk; the tables are polars frames in the CSV layout.
    ``min_cases``: each scenario (positive or control variant) is injected at least that many
    times per chunk, where enough stays can host it (tests that need every variant)."""
    period = _period(start, days)
    formulary = load_formulary()
    ids = IdCounters()
    full_rates = _rates(rates)
    for index, wards in enumerate(_chunks(allocate_wards(beds), chunk_beds)):
        rng = np.random.default_rng([seed, index])
        yield wards, build_chunk(rng, wards, period, formulary, full_rates, ids, min_cases)


def _exporter(fmt: str, out: Path, wards: list[Ward]) -> CsvExporter | FhirExporter | Hl7Exporter:
    if fmt == "csv":
        return CsvExporter(out)
    if fmt == "fhir":
        return FhirExporter(out, [(w.code, w.name, w.beds) for w in wards])
    if fmt == "hl7":
        return Hl7Exporter(out)
    raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _hospital_json(out: Path, wards: list[Ward], period: Period, seed: int, fmt: str) -> Path:
    doc = {
        "generator": "vigie synthetic hospital",
        "seed": seed,
        "format": fmt,
        "times": "UTC",
        "period": {"start": _iso(period.start), "end": _iso(period.end)},
        "beds": sum(w.beds for w in wards),
        "wards": [{"code": w.code, "kind": w.kind, "name": w.name, "beds": w.beds} for w in wards],
    }
    path = out / "hospital.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _write_truth(
    out: Path, truth: pl.DataFrame, period: Period, rates: dict[str, float], seed: int
) -> list[Path]:
    frame = truth.with_columns(
        as_iso("window_start").alias("window_start"), as_iso("window_end").alias("window_end")
    )
    csv_path, json_path = out / "truth.csv", out / "truth.json"
    frame.write_csv(csv_path, line_terminator="\n")
    meta = truth_meta(period, rates)
    meta["evaluation_period"] = {"start": _iso(period.start), "end": _iso(period.end)}
    rows = (
        frame.with_columns(
            pl.col("order_ids", "context_order_ids").str.split(";"),
            pl.col("key_values").map_elements(orjson.loads, return_dtype=pl.Object),
        ).to_dicts()
        if len(frame)
        else []
    )
    doc = {
        "seed": seed,
        "times": "UTC; window_end null = still holding at the end of the data",
        **meta,
        "situations": rows,
    }
    json_path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    return [csv_path, json_path]


def generate(
    beds: int,
    days: int,
    seed: int,
    fmt: str,
    out: Path,
    start: datetime | None = None,
    *,
    rates: Mapping[str, float] | None = None,
    chunk_beds: int = CHUNK_BEDS,
    min_cases: int = 0,
) -> GenerationSummary:
    """Write a synthetic hospital of ``beds`` beds over ``days`` days in ``fmt`` into ``out``.

    ``rates`` maps covered rule ids to the share of stays given a positive case (controls are
    0.6 × that); ``start`` is the first day (default ``DEFAULT_START``; naive = UTC).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    began = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    period = _period(start, days)
    all_wards = allocate_wards(beds)
    exporter = _exporter(fmt, out, all_wards)
    counts = dict.fromkeys(KINDS, 0)
    truths = []
    for _, tables in hospital_tables(beds, days, seed, start, rates, chunk_beds, min_cases):
        exporter.write(tables)
        for kind in KINDS:
            counts[kind] += len(tables[kind])
        truths.append(tables["truth"])
    truth = pl.concat(truths) if truths else pl.DataFrame(schema=TRUTH_SCHEMA)
    full_rates = _rates(rates)
    files = [
        _hospital_json(out, all_wards, period, seed, fmt),
        *exporter.close(),
        *_write_truth(out, truth, period, full_rates, seed),
    ]
    situations = {rule: {"positive": 0, "control": 0, "background": 0} for rule in full_rates}
    for row in truth.group_by("rule_id", "expected").len().iter_rows():
        situations[row[0]][row[1]] = row[2]
    return GenerationSummary(
        beds,
        days,
        seed,
        fmt,
        datetime.fromtimestamp(period.start, UTC).replace(tzinfo=None),
        all_wards,
        counts,
        files,
        situations,
        time.perf_counter() - began,
    )
