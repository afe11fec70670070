"""The synthetic hospital's formulary (``formulary.csv``) as numpy columns.

Each row is a prescribable line: ATC code, French DCI label, usual dose, schedule, route, and
which wards prescribe it how often. The gating columns (``group``, ``max_age``, ``min_renal``,
``max_days``, tags) keep background prescriptions clean so that only injected situations fire
the covered rules: the ground truth can then be exhaustive for them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from vigie.synthetic.arrays import FloatArray

__all__ = ["TAGS", "WARD_KINDS", "Formulary", "load_formulary", "schedule_texts"]

DATA = Path(__file__).parent / "formulary.csv"

# Ward kinds (the specialty of a UF); formulary rows name them in their ``wards`` column.
WARD_KINDS: tuple[str, ...] = (
    "MED",
    "GER",
    "CARDIO",
    "NEPHRO",
    "REA",
    "CHIR",
    "PNEUMO",
    "INFECT",
    "ONCO",
    "SSR",
    "PSY",
    "RHUMATO",
    "OBST",
)

TAGS = (
    "inert",
    "teratogen",
    "opioid",
    "laxative",
    "penicillin",
    "sulfonamide",
    "vka",
    "aminoglycoside",
    "vancomycin",
    "digoxin",
)

_FORBIDDEN = set('|^~\\&"\r\n')  # HL7 delimiters and JSON quotes never appear in labels


@dataclass(frozen=True)
class Formulary:
    """Columns of the formulary; row ``i`` of every array is the same line."""

    keys: np.ndarray
    atc: np.ndarray
    label: np.ndarray
    dose: FloatArray
    unit: np.ndarray
    frequency: FloatArray
    period: FloatArray
    period_unit: np.ndarray
    per_kg: np.ndarray
    route: np.ndarray
    ward_weight: np.ndarray  # (lines, ward kinds)
    group: np.ndarray  # int, -1 when the line belongs to no group
    max_age: np.ndarray  # float, nan when unbounded
    min_renal: np.ndarray
    max_days: np.ndarray
    indication: np.ndarray
    tags: dict[str, np.ndarray]

    @property
    def per_day(self) -> FloatArray:
        return self.frequency / _period_days(self.period, self.period_unit)

    def index(self, key: str) -> int:
        return int(np.flatnonzero(self.keys == key)[0])

    def __len__(self) -> int:
        return len(self.keys)


def _period_days(period: FloatArray, unit: np.ndarray) -> FloatArray:
    scale = np.where(unit == "h", 1 / 24, np.where(unit == "wk", 7.0, 1.0))
    return period * scale


def _ward_weights(spec: str, weight: float) -> np.ndarray:
    """``*:3;CHIR:4`` → a weight per ward kind (later entries override earlier ones)."""
    out = np.zeros(len(WARD_KINDS))
    for part in filter(None, spec.split(";")):
        name, _, mult = part.partition(":")
        factor = float(mult) if mult else 1.0
        if name == "*":
            out[:] = factor
        else:
            out[WARD_KINDS.index(name)] = factor
    return out * weight


def _float_or_nan(text: str) -> float:
    return float(text) if text.strip() else float("nan")


@cache
def load_formulary(path: Path = DATA) -> Formulary:
    lines = (line for line in io.StringIO(path.read_text("utf-8")) if not line.startswith("#"))
    rows = list(csv.DictReader(lines))
    for row in rows:
        if _FORBIDDEN & set(row["label"]):
            raise ValueError(f"{path.name}: label {row['label']!r} has a reserved character")
    groups = sorted({r["group"] for r in rows if r["group"]})
    tag_sets = [set(filter(None, r["tags"].split(";"))) for r in rows]
    return Formulary(
        keys=np.array([r["key"] for r in rows]),
        atc=np.array([r["atc"] for r in rows]),
        label=np.array([r["label"] for r in rows]),
        dose=np.array([float(r["dose"]) for r in rows]),
        unit=np.array([r["unit"] for r in rows]),
        frequency=np.array([float(r["frequency"]) for r in rows]),
        period=np.array([float(r["period"]) for r in rows]),
        period_unit=np.array([r["period_unit"] for r in rows]),
        per_kg=np.array([r["per_kg"] == "1" for r in rows]),
        route=np.array([r["route"] for r in rows]),
        ward_weight=np.stack([_ward_weights(r["wards"], float(r["weight"])) for r in rows]),
        group=np.array([groups.index(r["group"]) if r["group"] else -1 for r in rows]),
        max_age=np.array([_float_or_nan(r["max_age"]) for r in rows]),
        min_renal=np.array([_float_or_nan(r["min_renal"]) for r in rows]),
        max_days=np.array([_float_or_nan(r["max_days"]) for r in rows]),
        indication=np.array([r["indication"] for r in rows]),
        tags={tag: np.array([tag in s for s in tag_sets]) for tag in TAGS},
    )


_DAILY_HL7 = {1: "Q24H", 2: "BID", 3: "TID", 4: "QID"}
_DAILY_FR = {1: "1 fois par jour", 2: "2 fois par jour", 3: "3 fois par jour", 4: "4 fois par jour"}


def schedule_texts(frequency: int, period: float, unit: str) -> tuple[str, str]:
    """(French text, HL7 TQ1-3 repeat pattern) of a schedule such as 3 per 1 d."""
    if unit == "d" and period == 1 and frequency in _DAILY_HL7:
        return _DAILY_FR[frequency], _DAILY_HL7[frequency]
    if frequency != 1:
        raise ValueError(f"unsupported schedule {frequency}/{period} {unit}")
    hours = period * {"h": 1, "d": 24, "wk": 168}[unit]
    if hours % 24 == 0 and hours > 24:
        days = int(hours // 24)
        text = "1 fois par semaine" if days == 7 else f"toutes les {days * 24} heures"
        return text, f"Q{days}D" if days == 7 else f"Q{int(hours)}H"
    return f"toutes les {int(hours)} heures", f"Q{int(hours)}H"
