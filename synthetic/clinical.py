"""Allergies, pregnancies, diagnoses, body measurements and administrations of the stays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vigie.synthetic.formulary import Formulary
from vigie.synthetic.hospital import DAY, HOUR, Period, Stays
from vigie.synthetic.orders import Orders

__all__ = [
    "ALLERGENS",
    "DIAGNOSES",
    "Allergen",
    "administrations",
    "background_allergies",
    "background_pregnancies",
    "conditions",
    "observations",
]


@dataclass(frozen=True)
class Allergen:
    system: str  # ATC for drug classes, SNOMED otherwise
    code: str
    display: str
    atc: str  # ATC class the allergy stands for ('' when not a drug)
    share: float  # background prevalence


ALLERGENS: dict[str, Allergen] = {
    "penicillin": Allergen("ATC", "J01C", "Pénicillines", "J01C", 0.07),
    "sulfonamide": Allergen("ATC", "J01E", "Sulfamides antibactériens", "J01E", 0.02),
    "contrast": Allergen("ATC", "V08A", "Produits de contraste iodés", "V08A", 0.01),
    "latex": Allergen("SNOMED", "111088007", "Latex (substance)", "", 0.01),
}

DIAGNOSES: dict[str, str] = {
    "A09": "Diarrhée et gastro-entérite d'origine présumée infectieuse",
    "A41.9": "Sepsis, sans précision",
    "B37.9": "Candidose, sans précision",
    "C18.9": "Tumeur maligne du côlon, sans précision",
    "C34.9": "Tumeur maligne des bronches ou du poumon, sans précision",
    "C50.9": "Tumeur maligne du sein, sans précision",
    "C80.9": "Tumeur maligne de siège non précisé",
    "D25.9": "Léiomyome de l'utérus, sans précision",
    "D50.9": "Anémie par carence en fer, sans précision",
    "D52.9": "Anémie par carence en acide folique, sans précision",
    "E03.9": "Hypothyroïdie, sans précision",
    "E11.9": "Diabète sucré de type 2, sans complication",
    "E51.9": "Carence en thiamine, sans précision",
    "E55.9": "Carence en vitamine D, sans précision",
    "E78.0": "Hypercholestérolémie essentielle",
    "E87.5": "Hyperkaliémie",
    "E87.6": "Hypokaliémie",
    "F05.9": "Delirium, sans précision",
    "F10.3": "Troubles mentaux liés à l'alcool : syndrome de sevrage",
    "F20.9": "Schizophrénie, sans précision",
    "F31.9": "Trouble affectif bipolaire, sans précision",
    "F32.9": "Épisode dépressif, sans précision",
    "F41.9": "Trouble anxieux, sans précision",
    "G20": "Maladie de Parkinson",
    "G30.9": "Maladie d'Alzheimer, sans précision",
    "G40.9": "Épilepsie, sans précision",
    "G47.0": "Insomnie",
    "I10": "Hypertension essentielle (primitive)",
    "I21.9": "Infarctus aigu du myocarde, sans précision",
    "I25.9": "Cardiopathie ischémique chronique, sans précision",
    "I26.9": "Embolie pulmonaire sans mention de cœur pulmonaire aigu",
    "I48.9": "Fibrillation et flutter auriculaires, sans précision",
    "I50.9": "Insuffisance cardiaque, sans précision",
    "I63.9": "Infarctus cérébral, sans précision",
    "J18.9": "Pneumopathie, sans précision",
    "J44.1": "Maladie pulmonaire obstructive chronique avec épisodes aigus",
    "J96.0": "Insuffisance respiratoire aiguë",
    "K35.8": "Appendicite aiguë, autre et sans précision",
    "K56.6": "Occlusion intestinale, autre et sans précision",
    "K59.0": "Constipation",
    "K65.0": "Péritonite aiguë",
    "K80.2": "Calcul de la vésicule biliaire sans cholécystite",
    "K85.9": "Pancréatite aiguë, sans précision",
    "M06.9": "Polyarthrite rhumatoïde, sans précision",
    "M10.9": "Goutte, sans précision",
    "M54.5": "Lombalgie basse",
    "M79.2": "Névralgie et névrite, sans précision",
    "M81.9": "Ostéoporose, sans précision",
    "N17.9": "Insuffisance rénale aiguë, sans précision",
    "N18.4": "Maladie rénale chronique, stade 4",
    "N39.0": "Infection des voies urinaires, siège non précisé",
    "N32.8": "Autres affections précisées de la vessie",
    "N40": "Hyperplasie de la prostate",
    "N80.9": "Endométriose, sans précision",
    "N83.2": "Kystes de l'ovaire, autres et sans précision",
    "R10.4": "Douleurs abdominales, autres et non précisées",
    "R11": "Nausées et vomissements",
    "S72.0": "Fracture du col du fémur",
    "Z29.2": "Autres chimiothérapies prophylactiques",
    "Z29.8": "Autres mesures prophylactiques précisées",
    "Z33": "État de grossesse, fortuit",
    "Z94.0": "Greffe de rein",
}

WARD_DIAGNOSES: dict[str, tuple[str, ...]] = {
    "MED": ("J18.9", "N39.0", "A41.9", "I50.9", "E87.6", "F05.9"),
    "GER": ("S72.0", "F05.9", "J18.9", "G30.9", "I50.9", "N39.0"),
    "CARDIO": ("I50.9", "I48.9", "I21.9", "I25.9", "I10"),
    "NEPHRO": ("N18.4", "N17.9", "Z94.0", "I10"),
    "REA": ("A41.9", "J96.0", "I21.9", "I63.9", "K85.9"),
    "CHIR": ("K35.8", "K56.6", "K80.2", "C18.9", "K65.0"),
    "PNEUMO": ("J44.1", "J18.9", "C34.9", "I26.9", "J96.0"),
    "INFECT": ("A41.9", "N39.0", "J18.9", "A09", "B37.9"),
    "ONCO": ("C34.9", "C18.9", "C50.9", "C80.9"),
    "SSR": ("S72.0", "I63.9", "M81.9", "G20"),
    "PSY": ("F20.9", "F31.9", "F32.9", "F41.9", "F10.3"),
    "RHUMATO": ("M06.9", "M10.9", "M54.5", "M81.9"),
    "OBST": ("N80.9", "N83.2", "D25.9", "R10.4"),
}


def background_allergies(
    rng: np.random.Generator, stays: Stays, chosen: np.ndarray
) -> tuple[list[tuple[int, str, int]], list[tuple[str, ...]]]:
    """(rows, ATC prefixes per stay): at most one recorded allergy per background stay."""
    n = len(stays)
    keys = list(ALLERGENS)
    cum = np.cumsum([ALLERGENS[k].share for k in keys])
    pick = np.searchsorted(cum, rng.uniform(size=n))
    recorded = stays.admit + (rng.uniform(0.2, 1.5, n) * HOUR).astype(np.int64) // 60 * 60
    rows = [
        (int(i), keys[pick[i]], int(recorded[i]))
        for i in np.flatnonzero((pick < len(keys)) & ~chosen)
    ]
    prefixes: list[tuple[str, ...]] = [()] * n
    for i, key, _ in rows:
        if ALLERGENS[key].atc:
            prefixes[i] = (ALLERGENS[key].atc,)
    return rows, prefixes


def background_pregnancies(
    rng: np.random.Generator, stays: Stays, period: Period, chosen: np.ndarray
) -> tuple[list[tuple[int, str, int, int]], np.ndarray]:
    """Pregnancies of women aged 18–44 (most of obstetrics, a few elsewhere)."""
    n = len(stays)
    age = stays.age_years(stays.data_end(period))
    fertile = (stays.sex == "F") & (stays.age_years(stays.admit) >= 18) & (age < 45) & ~chosen
    share = np.where(stays.kind == "OBST", 0.7, 0.02)
    pregnant = fertile & (rng.uniform(size=n) < share)
    recorded = stays.admit + (rng.uniform(0.2, 1.5, n) * HOUR).astype(np.int64) // 60 * 60
    weeks = np.where(stays.kind == "OBST", rng.uniform(0, 8, n), rng.uniform(5, 35, n))
    due = (stays.admit + (weeks * 7 * DAY).astype(np.int64)) // DAY * DAY
    rows = [(int(i), "pregnant", int(recorded[i]), int(due[i])) for i in np.flatnonzero(pregnant)]
    return rows, pregnant


def conditions(
    rng: np.random.Generator,
    stays: Stays,
    orders: Orders,
    formulary: Formulary,
    pregnant_stays: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stay, ICD-10 code, onset): the stay's main diagnosis, the lines' indications, Z33."""
    n = len(stays)
    main = np.array(
        [
            WARD_DIAGNOSES[k][j % len(WARD_DIAGNOSES[k])]
            for k, j in zip(stays.kind, rng.integers(0, 60, n), strict=True)
        ],
        dtype="<U6",
    )
    indication = formulary.indication[orders.drug]
    has = indication != ""
    pairs = np.unique(np.rec.fromarrays([orders.stay[has], indication[has]]))
    chronic_stay = pairs["f0"].astype(np.int64)
    chronic_code = pairs["f1"].astype("<U6")
    keep = chronic_code != main[chronic_stay]
    chronic_stay, chronic_code = chronic_stay[keep], chronic_code[keep]
    onset_chronic = stays.admit[chronic_stay] - (
        rng.uniform(30, 3000, len(chronic_stay)) * DAY
    ).astype(np.int64)
    preg = np.flatnonzero(pregnant_stays)
    stay = np.concatenate([np.arange(n), chronic_stay, preg])
    code = np.concatenate([main, chronic_code, np.full(len(preg), "Z33")])
    onset = np.concatenate([stays.admit, onset_chronic // DAY * DAY, stays.admit[preg]])
    order = np.lexsort((code, stay))
    return stay[order], code[order], onset[order]


def observations(
    rng: np.random.Generator, stays: Stays, period: Period
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(stay, concept 'weight'/'height', time, value): admission weight and height, weight at
    day 7 (±1 %) for longer stays."""
    n = len(stays)
    at = stays.admit + 15 * 60
    later = stays.admit + 7 * DAY
    again = np.flatnonzero(later < stays.data_end(period))
    stay = np.concatenate([np.arange(n), np.arange(n), again])
    concept = np.concatenate(
        [np.full(n, "weight"), np.full(n, "height"), np.full(len(again), "weight")]
    )
    time = np.concatenate([at, at, later[again]])
    drift = np.round(stays.weight[again] * (1 + rng.uniform(-0.01, 0.01, len(again))), 1)
    value = np.concatenate([stays.weight, stays.height, drift])
    order = np.lexsort((time, stay))
    return stay[order], concept[order], time[order], value[order]


def administrations(stays: Stays, orders: Orders, period: Period) -> tuple[np.ndarray, np.ndarray]:
    """(order row, time) of every scheduled dose given in intensive care (electronic chart)."""
    icu = (stays.kind[orders.stay] == "REA") & ~orders.as_needed
    rows = np.flatnonzero(icu)
    data_end = stays.data_end(period)[orders.stay[rows]]
    stop = np.where(orders.end[rows] < 0, data_end, np.minimum(orders.end[rows], data_end))
    interval = (
        orders.period[rows]
        * np.where(
            orders.period_unit[rows] == "h",
            HOUR,
            np.where(orders.period_unit[rows] == "wk", 7 * DAY, DAY),
        )
        / orders.frequency[rows]
    ).astype(np.int64)
    counts = np.maximum(np.ceil((stop - orders.start[rows]) / interval), 0).astype(np.int64)
    row = np.repeat(rows, counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    time = orders.start[row] + k * np.repeat(interval, counts)
    keep = time >= period.history_start
    return row[keep], time[keep]
