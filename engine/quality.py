"""The data-quality report a pharmacist and an interface engineer read before trusting alerts.

It is computed on the columnar view (polars), so it runs on a whole hospital in seconds:
counts per fact kind, unmapped codes with their frequency, unknown units, implausible values
(limits in ``plausibility.csv``), orders without dose or frequency, patients without weight or
creatinine, and — when given — the ingest outcome (messages per status, errors).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from vigie.engine.factset import FactSet

__all__ = ["PLAUSIBILITY", "QualityReport", "quality_report", "render_text"]

_CODED_KINDS = {
    "lab": "code",
    "observation": "code",
    "medication_order": "drug",
    "medication_administration": "drug",
    "condition": "code",
    "allergy": "substance",
}


def _load_plausibility(path: Path) -> dict[str, tuple[float, float]]:
    with path.open(encoding="utf-8") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        return {r["concept"]: (float(r["low"]), float(r["high"])) for r in rows}


PLAUSIBILITY = _load_plausibility(Path(__file__).with_name("plausibility.csv"))


@dataclass
class QualityReport:
    counts: dict[str, int]
    patients: int
    unmapped_codes: list[dict[str, Any]] = field(default_factory=list)
    unknown_units: list[dict[str, Any]] = field(default_factory=list)
    implausible_values: list[dict[str, Any]] = field(default_factory=list)
    orders_without_dose: int = 0
    orders_without_frequency: int = 0
    orders_without_atc: int = 0
    orders_without_route: int = 0
    patients_without_weight: int = 0
    patients_without_creatinine: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _flagged(frame: pl.DataFrame, flag: str) -> pl.DataFrame:
    return frame.filter(pl.col("flags").list.contains(flag))


def _unmapped_codes(facts: FactSet, limit: int) -> list[dict[str, Any]]:
    parts = []
    for kind, prefix in _CODED_KINDS.items():
        frame = _flagged(facts.frame(kind), "unmapped_code")
        parts.append(
            frame.select(
                pl.lit(kind).alias("kind"),
                pl.col(f"{prefix}_system").alias("system"),
                pl.col(f"{prefix}_code").alias("code"),
                pl.col(f"{prefix}_display").alias("display"),
            )
        )
    grouped = (
        pl.concat(parts)
        .group_by("kind", "system", "code")
        .agg(pl.len().alias("count"), pl.col("display").drop_nulls().first())
        .sort(["count", "kind", "code"], descending=[True, False, False], nulls_last=True)
    )
    return grouped.head(limit).to_dicts()


def _unknown_units(facts: FactSet, limit: int) -> list[dict[str, Any]]:
    parts = [
        _flagged(facts.frame(kind), "unknown_unit").select(
            pl.lit(kind).alias("kind"), "concept", pl.col("original_unit").alias("unit")
        )
        for kind in ("lab", "observation")
    ]
    grouped = (
        pl.concat(parts)
        .group_by("kind", "concept", "unit")
        .agg(pl.len().alias("count"))
        .sort(["count", "concept"], descending=[True, False], nulls_last=True)
    )
    return grouped.head(limit).to_dicts()


def _implausible(facts: FactSet, limit: int) -> list[dict[str, Any]]:
    bounds = pl.DataFrame(
        {
            "concept": list(PLAUSIBILITY),
            "low": [low for low, _ in PLAUSIBILITY.values()],
            "high": [high for _, high in PLAUSIBILITY.values()],
        }
    )
    parts = [
        facts.frame(kind).select(
            "patient_id",
            "concept",
            "value",
            "unit",
            "time",
            "source_document",
            "source_message_id",
            "source_position",
        )
        for kind in ("lab", "observation")
    ]
    found = (
        pl.concat(parts)
        .join(bounds, on="concept")
        .filter((pl.col("value") < pl.col("low")) | (pl.col("value") > pl.col("high")))
        .sort("concept", "time")
    )
    return found.head(limit).to_dicts()


def _patients_without(facts: FactSet, kind: str, concept: str, patients: pl.Series) -> int:
    having = facts.frame(kind).filter(
        (pl.col("concept") == concept) & pl.col("value").is_not_null()
    )["patient_id"]
    return int((~patients.is_in(having.implode())).sum())


def _all_patients(facts: FactSet) -> pl.Series:
    ids = [facts.frame(kind)["patient_id"] for kind in facts.counts()]
    return pl.concat(ids).unique().sort()


def quality_report(
    facts: FactSet,
    messages: dict[str, int] | None = None,
    errors: list[str] | None = None,
    limit: int = 50,
) -> QualityReport:
    """Compute the report; ``messages`` and ``errors`` come from ingest when available."""
    orders = facts.frame("medication_order")
    patients = _all_patients(facts)
    errors = errors or []
    return QualityReport(
        counts=facts.counts(),
        patients=patients.len(),
        unmapped_codes=_unmapped_codes(facts, limit),
        unknown_units=_unknown_units(facts, limit),
        implausible_values=_implausible(facts, limit),
        orders_without_dose=orders.filter(pl.col("dose").is_null()).height,
        orders_without_frequency=orders.filter(pl.col("frequency_per_day").is_null()).height,
        orders_without_atc=orders.filter(pl.col("atc").is_null()).height,
        orders_without_route=orders.filter(pl.col("route").is_null()).height,
        patients_without_weight=_patients_without(facts, "observation", "weight", patients),
        patients_without_creatinine=_patients_without(facts, "lab", "creatinine", patients),
        messages=dict(messages or {}),
        errors=errors[:limit],
        error_count=len(errors),
    )


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    if not rows:
        return ["  (none)"]
    return ["  " + "  ".join(f"{row.get(c)!s}" for c in columns) for row in rows]


def render_text(report: QualityReport) -> str:
    """The report as the plain text ``vigie quality`` prints."""
    lines = ["Facts:"]
    lines += [f"  {kind:<26}{n:>10,}" for kind, n in report.counts.items()]
    lines.append(f"  {'patients':<26}{report.patients:>10,}")
    if report.messages:
        lines.append(
            "Messages: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report.messages.items()))
        )
    r = report
    lines.append(
        f"Orders without dose: {r.orders_without_dose:,}; "
        f"without frequency: {r.orders_without_frequency:,}; "
        f"without ATC: {r.orders_without_atc:,}; without route: {r.orders_without_route:,}"
    )
    lines.append(
        f"Patients without weight: {r.patients_without_weight:,}; "
        f"without creatinine: {r.patients_without_creatinine:,}"
    )
    lines.append("Unmapped codes (kind, system, code, count, label):")
    lines += _table(report.unmapped_codes, ["kind", "system", "code", "count", "display"])
    lines.append("Unknown units (kind, concept, unit, count):")
    lines += _table(report.unknown_units, ["kind", "concept", "unit", "count"])
    lines.append("Implausible values (concept, value, unit, patient, document, position):")
    lines += _table(
        report.implausible_values,
        ["concept", "value", "unit", "patient_id", "source_document", "source_position"],
    )
    lines.append(f"Errors: {report.error_count:,}")
    lines += [f"  {error}" for error in report.errors]
    return "\n".join(lines)
