"""Wards, beds, stays and patients of a synthetic hospital, as numpy columns.

A bed is a renewal process: stays (log-normal length by ward) separated by empty gaps sized so
that occupancy is about 85 %. The process starts well before the period so that the beds are in
their steady state on day one; stays that overlap the period are kept, with their history.
Times are integer seconds since the Unix epoch (UTC) throughout the generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vigie.synthetic.arrays import BoolArray, FloatArray, IntArray
from vigie.synthetic.formulary import WARD_KINDS

__all__ = [
    "DAY",
    "HOUR",
    "WARD_PROFILES",
    "Period",
    "Stays",
    "Ward",
    "WardProfile",
    "allocate_wards",
    "anthropometrics",
    "ckd_epi_2021",
    "cockcroft_gault",
    "creatinine_for_crcl",
    "creatinine_for_egfr",
    "generate_stays",
    "renal_baseline",
    "renal_function",
]

HOUR = 3600
DAY = 24 * HOUR
YEAR_DAYS = 365.2425
OCCUPANCY = 0.85


@dataclass(frozen=True)
class WardProfile:
    kind: str
    name: str
    share: float  # share of the hospital's beds
    uf_size: int  # usual beds per UF
    los_median: float  # days
    age: tuple[float, float, float, float]  # mean, sd, min, max
    female: float
    orders: float  # mean background lines per stay
    ckd: float  # share of patients with chronic kidney disease
    lab_gaps: tuple[int, ...]  # days between follow-up lab panels


WARD_PROFILES: dict[str, WardProfile] = {
    p.kind: p
    for p in (
        WardProfile(
            "MED", "Médecine interne", 0.12, 28, 7, (68, 17, 18, 100), 0.5, 7, 0.12, (1, 2, 3)
        ),
        WardProfile("GER", "Gériatrie", 0.12, 30, 10, (86, 5, 75, 103), 0.65, 8, 0.25, (1, 2, 3)),
        WardProfile("CARDIO", "Cardiologie", 0.10, 26, 5, (72, 13, 25, 100), 0.42, 7, 0.15, (1, 2)),
        WardProfile("NEPHRO", "Néphrologie", 0.05, 22, 6, (66, 15, 20, 98), 0.45, 8, 0.5, (1, 2)),
        WardProfile("REA", "Réanimation", 0.05, 12, 6, (62, 16, 18, 95), 0.4, 10, 0.12, (1,)),
        WardProfile(
            "CHIR", "Chirurgie digestive", 0.10, 28, 5, (60, 17, 18, 98), 0.48, 6, 0.08, (1, 2, 3)
        ),
        WardProfile(
            "PNEUMO", "Pneumologie", 0.08, 26, 7, (68, 14, 20, 100), 0.45, 7, 0.12, (1, 2, 3)
        ),
        WardProfile(
            "INFECT",
            "Maladies infectieuses",
            0.05,
            22,
            8,
            (55, 18, 18, 98),
            0.45,
            6,
            0.1,
            (1, 2, 3),
        ),
        WardProfile("ONCO", "Oncologie", 0.08, 26, 6, (64, 13, 20, 96), 0.5, 7, 0.1, (1, 2, 3)),
        WardProfile(
            "SSR",
            "Soins de suite et de réadaptation",
            0.12,
            30,
            24,
            (78, 11, 30, 102),
            0.58,
            7,
            0.18,
            (2, 3, 4),
        ),
        WardProfile("PSY", "Psychiatrie", 0.05, 24, 18, (42, 15, 18, 90), 0.5, 5, 0.04, (2, 3, 4)),
        WardProfile(
            "RHUMATO", "Rhumatologie", 0.03, 20, 5, (60, 15, 20, 95), 0.6, 5, 0.08, (1, 2, 3)
        ),
        WardProfile(
            "OBST", "Gynécologie-obstétrique", 0.05, 24, 4, (31, 6, 18, 44), 1.0, 3, 0.0, (1, 2)
        ),
    )
}
assert tuple(WARD_PROFILES) == WARD_KINDS


@dataclass(frozen=True)
class Ward:
    """One UF: its code (``CARDIO-2``), kind, French name and number of beds."""

    code: str
    kind: str
    name: str
    beds: int

    @property
    def profile(self) -> WardProfile:
        return WARD_PROFILES[self.kind]


@dataclass(frozen=True)
class Period:
    """The period the data covers: [start, end) in epoch seconds; labs kept from ``history``."""

    start: int
    end: int
    history_days: int = 14

    @property
    def history_start(self) -> int:
        return self.start - self.history_days * DAY


def _largest_remainder(total: int, shares: FloatArray) -> IntArray:
    raw: FloatArray = shares / shares.sum() * total
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def allocate_wards(beds: int) -> list[Ward]:
    """Split ``beds`` into UFs by specialty share; the UF bed counts sum to ``beds`` exactly."""
    if beds < 1:
        raise ValueError("a hospital needs at least one bed")
    profiles = list(WARD_PROFILES.values())
    per_kind = _largest_remainder(beds, np.array([p.share for p in profiles]))
    wards: list[Ward] = []
    for profile, kind_beds in zip(profiles, per_kind, strict=True):
        if kind_beds == 0:
            continue
        units = max(1, round(kind_beds / profile.uf_size))
        sizes = _largest_remainder(int(kind_beds), np.ones(units))
        for i, size in enumerate(sizes, start=1):
            wards.append(
                Ward(f"{profile.kind}-{i}", profile.kind, f"{profile.name} {i}", int(size))
            )
    return wards


@dataclass
class Stays:
    """Columns of the stays of a group of wards, one row per stay (one patient per stay)."""

    ward: np.ndarray  # ward code
    kind: np.ndarray  # ward kind
    bed: np.ndarray  # bed label within the ward, '001'...
    admit: IntArray  # epoch seconds
    discharge: IntArray  # epoch seconds; -1 while still in the bed at the period end
    sex: np.ndarray  # 'F' / 'M'
    birth: IntArray  # epoch seconds (midnight)
    height: FloatArray  # cm
    weight: FloatArray  # kg at admission
    creatinine: FloatArray  # baseline, µmol/L
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.admit)

    def data_end(self, period: Period) -> np.ndarray:
        """When the stay's data stops: discharge, or the period end while still in."""
        return np.where(self.discharge < 0, period.end, self.discharge)

    def age_years(self, at: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Age in (fractional) years at ``at``, for every stay or for ``rows``."""
        birth = self.birth if rows is None else self.birth[rows]
        return (at - birth) / (DAY * YEAR_DAYS)


def _bed_stays(
    rng: np.random.Generator, ward: Ward, period: Period
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bed index, admit, discharge) of every stay of one ward that overlaps the period."""
    profile = ward.profile
    sigma = 0.7
    los_mean = profile.los_median * np.exp(sigma**2 / 2)
    gap_mean = los_mean * (1 - OCCUPANCY) / OCCUPANCY
    warmup = min(4 * los_mean, 150.0)
    span = warmup + (period.end - period.start) / DAY
    cycles = int(np.ceil(span / (los_mean + gap_mean) * 2.5)) + 6
    los = np.clip(rng.lognormal(np.log(profile.los_median), sigma, (ward.beds, cycles)), 0.15, 150)
    gap = rng.exponential(gap_mean, (ward.beds, cycles)) + 2 / 24
    phase = rng.uniform(0, los_mean + gap_mean, (ward.beds, 1))
    ends = np.cumsum(los + gap, axis=1) - gap - phase - warmup
    starts = ends - los
    # A bed whose cycles stop short of the period end would look empty: extend by resampling.
    if (ends[:, -1] < span).any():
        raise RuntimeError("bed process too short; raise the cycle count")
    admit = period.start + np.round(starts * DAY).astype(np.int64) // 60 * 60
    discharge = period.start + np.round(ends * DAY).astype(np.int64) // 60 * 60
    keep = (discharge > period.start) & (admit < period.end)
    bed_index = np.broadcast_to(np.arange(ward.beds)[:, None], keep.shape)[keep]
    return bed_index, admit[keep], np.where(discharge[keep] >= period.end, -1, discharge[keep])


def _labels(numbers: np.ndarray, width: int = 3) -> np.ndarray:
    """'001', '002'... (numpy's zfill cannot take an empty array)."""
    if len(numbers) == 0:
        return np.array([], dtype=f"<U{width}")
    return np.char.zfill(numbers.astype(str), width)


def _ages(rng: np.random.Generator, profile: WardProfile, n: int) -> np.ndarray:
    mean, sd, low, high = profile.age
    return np.clip(rng.normal(mean, sd, n), low, high)


def generate_stays(rng: np.random.Generator, wards: list[Ward], period: Period) -> Stays:
    """Stays and their patients' demographics for a group of wards."""
    parts = []
    for ward in wards:
        bed, admit, discharge = _bed_stays(rng, ward, period)
        n = len(admit)
        profile = ward.profile
        sex = np.where(rng.uniform(size=n) < profile.female, "F", "M")
        age = _ages(rng, profile, n)
        parts.append(
            (
                np.full(n, ward.code),
                np.full(n, ward.kind),
                _labels(bed + 1),
                admit,
                discharge,
                sex,
                age,
            )
        )
    cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
    ward_code, kind, bed, admit, discharge, sex, age = cols
    birth_day = (admit // DAY) - np.round(age * YEAR_DAYS).astype(np.int64)
    n = len(admit)
    stays = Stays(
        ward_code,
        kind,
        bed,
        admit,
        discharge,
        sex,
        birth_day * DAY,
        np.zeros(n),
        np.zeros(n),
        np.zeros(n),
    )
    return stays


def anthropometrics(rng: np.random.Generator, stays: Stays) -> None:
    """Height and admission weight plausible for age and sex."""
    n = len(stays)
    age = stays.age_years(stays.admit)
    female = stays.sex == "F"
    shrink = np.maximum(age - 50, 0)
    height = np.where(
        female, rng.normal(163, 6.5, n) - 0.1 * shrink, rng.normal(176, 7, n) - 0.08 * shrink
    )
    bmi = np.exp(rng.normal(np.log(np.where(age >= 80, 24.0, 26.0)), 0.17, n))
    stays.height = np.round(np.clip(height, 140, 205))
    weight: FloatArray = np.clip(bmi * (stays.height / 100) ** 2, 36, 180)
    stays.weight = np.round(weight, 1)


def ckd_epi_2021(creatinine: FloatArray, age: FloatArray, female: BoolArray) -> FloatArray:
    """eGFR (mL/min/1.73 m²) by CKD-EPI 2021 from creatinine in µmol/L."""
    scr = creatinine / 88.42
    kappa = np.where(female, 0.7, 0.9)
    alpha = np.where(female, -0.241, -0.302)
    ratio = scr / kappa
    egfr = (
        142 * np.minimum(ratio, 1) ** alpha * np.maximum(ratio, 1) ** -1.2 * 0.9938 ** np.floor(age)
    )
    return egfr * np.where(female, 1.012, 1.0)


def creatinine_for_egfr(egfr: FloatArray, age: FloatArray, female: BoolArray) -> FloatArray:
    """The creatinine (µmol/L) giving ``egfr`` by CKD-EPI 2021 (inverse of the above)."""
    kappa = np.where(female, 0.7, 0.9)
    alpha = np.where(female, -0.241, -0.302)
    base = 142 * 0.9938 ** np.floor(age) * np.where(female, 1.012, 1.0)
    high = kappa * (egfr / base) ** (-1 / 1.2)  # branch creatinine > kappa
    low = kappa * (egfr / base) ** (1 / alpha)
    return np.where(high / kappa > 1, high, low) * 88.42


def cockcroft_gault(
    creatinine: FloatArray, age: FloatArray, weight: FloatArray, female: BoolArray
) -> FloatArray:
    """Creatinine clearance (mL/min); creatinine in µmol/L, age in whole years."""
    scr = creatinine / 88.42
    return (140 - np.floor(age)) * weight * np.where(female, 0.85, 1.0) / (72 * scr)


def creatinine_for_crcl(
    crcl: FloatArray, age: FloatArray, weight: FloatArray, female: BoolArray
) -> FloatArray:
    return (140 - np.floor(age)) * weight * np.where(female, 0.85, 1.0) / (72 * crcl) * 88.42


def renal_baseline(rng: np.random.Generator, stays: Stays) -> None:
    """Baseline creatinine from an age-dependent eGFR with a chronic kidney disease tail."""
    n = len(stays)
    age = stays.age_years(stays.admit)
    ckd_share = np.array([WARD_PROFILES[k].ckd for k in stays.kind]) if n else np.zeros(0)
    egfr = rng.normal(105 - 0.9 * np.maximum(age - 40, 0), 14, n)
    egfr = np.where(rng.uniform(size=n) < ckd_share, rng.uniform(16, 55, n), egfr)
    egfr = np.clip(egfr, 16, 125)
    stays.creatinine = np.clip(creatinine_for_egfr(egfr, age, stays.sex == "F"), 35, 420)


def renal_function(stays: Stays, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Cockcroft-Gault clearance, CKD-EPI eGFR) of the baseline creatinine at a time."""
    age = stays.age_years(at)
    female = stays.sex == "F"
    return (
        cockcroft_gault(stays.creatinine, age, stays.weight, female),
        ckd_epi_2021(stays.creatinine, age, female),
    )
