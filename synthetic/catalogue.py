"""The injected situations: for each covered rule, positive cases and near-miss controls.

A ``Scenario`` is data: the lines to prescribe relative to an anchor time, an optional lab
result to inject, who is eligible, what to override (age, weight, renal function), and how the
situation's time window is read (``Window``). ``scenarios.py`` applies them; ``truth.py`` turns
them into the ground truth.

Rule ids, look-backs, delays and the thresholds the situations sit around come from the
clinical source, ``rule-catalogue.md`` (``rule_catalogue.py`` reads it), never from the rule
pack the truth judges; where the catalogue gives no window, from the default pack's stated
reading (``UNSTATED_WINDOWS_HOURS``). A positive with ``lapse`` leaves its injected result
alone until the look-back has passed, and the truth then holds a control: the same result, just
too old. A pack whose look-back is wider than the catalogue's fires there and fails the truth.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

from vigie.synthetic.rule_catalogue import UNSTATED_WINDOWS_HOURS, load_catalogue

__all__ = [
    "DEFAULT_RATE",
    "SCENARIOS",
    "Lab",
    "Line",
    "Scenario",
    "Window",
    "covered_rules",
    "truth_variants",
]

INF = math.inf
DEFAULT_RATE = 0.0025  # share of stays given each rule's positive case
CONTROL_RATIO = 0.6  # controls per positive


@dataclass(frozen=True)
class Line:
    """A line to prescribe: formulary key, optional dose and schedule, hours after the anchor."""

    drug: str
    dose: float | None = None
    schedule: tuple[int, float, str] | None = None  # frequency, period, unit
    at: float = 0.0
    hours: float | None = None  # planned duration; None: until discharge (or no end)
    core: bool = True  # part of the situation (bounds its window)
    # A core line the rule's alert names (the truth's ``order_ids``); False for a context line
    # that only makes the situation hold (the truth's ``context_order_ids``).
    named: bool = True
    prn: bool = False


@dataclass(frozen=True)
class Lab:
    """A result to inject ``at`` hours after the anchor; ``scale`` reads ``value`` relative to
    the upper reference limit (``uln``) or the patient's baseline (``baseline``, ``add``)."""

    concept: str
    value: tuple[float, float]
    at: tuple[float, float] = (24.0, 60.0)
    scale: str = ""
    decimals: int = 1


@dataclass(frozen=True)
class Window:
    """How long the situation holds.

    ``lines``: while all core lines overlap. ``latest``: from the injected result until the next
    result of that concept, ``hours`` after it, or a core line's end. ``any``: from the result
    for ``hours`` (a "within" window). ``state``: the patient's renal state with the core lines
    (from the first result of ``concept`` within ``hours`` before the lines start, or after,
    until no result is left within ``hours`` or a core line ends). ``delay``: ``hours`` after
    the first core line starts, while core lines run. ``no_inr``: a VKA running ≥ 3 days and
    ``hours`` without a result of ``concept`` (a control: while one is still that recent).

    ``hours`` is the rule's look-back in the catalogue ("latest K+ within 48 h"), or the
    default pack's stated reading where the catalogue gives none: past it the rule no longer
    reads the injected result, so the situation no longer holds.
    """

    kind: str
    hours: float = INF
    concept: str = ""


@dataclass(frozen=True)
class Scenario:
    rule: str
    positive: bool
    variant: str
    lines: tuple[Line, ...]
    window: Window
    lab: Lab | None = None
    need_days: float = 4.0
    age: tuple[float, float] = (18.0, 120.0)
    set_age: tuple[float, float] | None = None  # held for the whole stay
    sex: str | None = None
    min_renal: float = 0.0
    renal: tuple[str, float, float] | None = None  # ('crcl'|'egfr', low, high) at the anchor
    weight: tuple[float, float] | None = None
    min_weight: float = 0.0
    min_platelets: float = 0.0
    in_progress_days: tuple[float, float] | None = None  # anchor this many days before the end
    allergy: str | None = None
    pregnancy: str | None = None
    suppress: tuple[str, ...] = ()  # background series dropped for the stay
    inr_every_days: float | None = None  # explicit INR series for the stay (VKA monitoring)
    severity: tuple[tuple[float, str], ...] = ()  # (threshold on the lab value, severity)
    extra: dict[str, object] = field(default_factory=dict)
    # Results injected before ``lab`` (an earlier INR); ``lab`` is the one the window follows.
    earlier: tuple[Lab, ...] = ()
    # The injected result is left alone (later background results of its concept dropped) and
    # the truth adds a control from when the look-back has passed until a core line ends.
    lapse: bool = False

    @property
    def lapse_variant(self) -> str:
        return f"{self.variant}_past_lookback"


def _p(rule: str, variant: str, lines: tuple[Line, ...], window: Window, **kw: object) -> Scenario:
    return Scenario(rule, True, variant, lines, window, **kw)  # type: ignore[arg-type]


def _c(rule: str, variant: str, lines: tuple[Line, ...], window: Window, **kw: object) -> Scenario:
    return Scenario(rule, False, variant, lines, window, **kw)  # type: ignore[arg-type]


L = Line
LINES = Window("lines")
CATALOGUE = load_catalogue()
hours = CATALOGUE.duration_hours
# The catalogue's renal rules say "clearance < 30 mL/min" without a window: the pack's stated
# reading is a creatinine of the last 7 days (renal.metformin_egfr gives its own, 7 days).
RENAL = Window("state", UNSTATED_WINDOWS_HOURS["creatinine"], "creatinine")
MACROGOL = L("macrogol", core=False)


def _cursor(rule: str, name: str) -> float:
    return CATALOGUE.cursor(rule, name).default


def _latest(rule: str, phrase: str, concept: str) -> Window:
    """The window of "latest <phrase> within W" in the catalogue's words for ``rule``."""
    return Window("latest", hours(rule, phrase), concept)


def _unstated(concept: str, kind: str = "latest") -> Window:
    return Window(kind, UNSTATED_WINDOWS_HOURS[concept], concept)


# The renal state's last creatinine: the patient's own value, written just after the lines
# start; nothing newer comes (``lapse``), so the clearance is unknown once it is too old.
LAST_CREATININE = Lab("creatinine", (1.0, 1.0), at=(1.0, 2.0), scale="baseline", decimals=0)
RENAL_LAPSE = dict(lab=LAST_CREATININE, lapse=True, need_days=RENAL.hours / 24 + 1.5)


def _early(lab: Lab) -> Lab:
    """The same result, early in the scenario so that its look-back runs out in the data."""
    return Lab(lab.concept, lab.value, (2.0, 8.0), lab.scale, lab.decimals)


def _renal() -> list[Scenario]:
    met_hi, met_lo = L("metformin"), L("metformin", dose=500)
    aki_rule = "renal.nephrotoxic_aki"
    aki = _latest(aki_rule, "rose", "creatinine")  # "a rise ... within 48 h"
    doubling = Lab("creatinine", (1.7, 2.3), scale="baseline", decimals=0)
    egfr_max = _cursor("renal.metformin_egfr", "egfr_max")
    dabigatran_crcl = _cursor("renal.dabigatran", "crcl_max")
    xaban_crcl = _cursor("renal.xaban", "crcl_max")
    lmwh_crcl = _cursor("renal.lmwh_curative", "crcl_max")
    gabapentinoid_crcl, _ = CATALOGUE.quantity("renal.gabapentinoid", "clearance <")
    metformin_renal = Window("state", hours("renal.metformin_egfr", "eGFR"), "creatinine")
    return [
        _p(
            "renal.metformin_egfr",
            "egfr_below_30",
            (met_hi,),
            metformin_renal,
            renal=("egfr", egfr_max - 13, egfr_max - 3),
        ),
        _p(
            "renal.metformin_egfr",
            "egfr_below_30_last_creatinine",
            (met_hi,),
            metformin_renal,
            renal=("egfr", egfr_max - 13, egfr_max - 3),
            **(RENAL_LAPSE | {"need_days": metformin_renal.hours / 24 + 1.5}),
        ),
        _c(
            "renal.metformin_egfr",
            "egfr_just_above_30",
            (met_lo,),
            metformin_renal,
            renal=("egfr", egfr_max + 1.5, egfr_max + 3.5),
        ),
        _p("renal.metformin_dose", "2000mg_egfr_30_45", (met_hi,), RENAL, renal=("egfr", 34, 42)),
        _c("renal.metformin_dose", "1000mg_egfr_30_45", (met_lo,), RENAL, renal=("egfr", 34, 42)),
        _p(
            "renal.dabigatran",
            "crcl_below_30",
            (L("dabigatran", dose=110),),
            RENAL,
            renal=("crcl", dabigatran_crcl - 13, dabigatran_crcl - 3),
        ),
        _p(
            "renal.dabigatran",
            "crcl_below_30_last_creatinine",
            (L("dabigatran", dose=110),),
            RENAL,
            renal=("crcl", dabigatran_crcl - 13, dabigatran_crcl - 3),
            **RENAL_LAPSE,
        ),
        _c(
            "renal.dabigatran",
            "crcl_just_above_30",
            (L("dabigatran", dose=110),),
            RENAL,
            renal=("crcl", dabigatran_crcl + 2.5, dabigatran_crcl + 6),
        ),
        _p(
            "renal.xaban",
            "apixaban_crcl_below_15",
            (L("apixaban", dose=2.5),),
            RENAL,
            renal=("crcl", xaban_crcl - 7, xaban_crcl - 2),
        ),
        _p(
            "renal.xaban",
            "rivaroxaban_crcl_below_15",
            (L("rivaroxaban", dose=15),),
            RENAL,
            renal=("crcl", xaban_crcl - 7, xaban_crcl - 2),
        ),
        _p(
            "renal.xaban",
            "apixaban_crcl_below_15_last_creatinine",
            (L("apixaban", dose=2.5),),
            RENAL,
            renal=("crcl", xaban_crcl - 7, xaban_crcl - 2),
            **RENAL_LAPSE,
        ),
        _c(
            "renal.xaban",
            "apixaban_crcl_just_above_15",
            (L("apixaban", dose=2.5),),
            RENAL,
            renal=("crcl", xaban_crcl + 1.5, xaban_crcl + 4),
        ),
        _p(
            "renal.lmwh_curative",
            "enoxaparin_bid_crcl_below_30",
            (L("enoxaparin_cur"),),
            RENAL,
            renal=("crcl", lmwh_crcl - 13, lmwh_crcl - 3),
        ),
        _p(
            "renal.lmwh_curative",
            "enoxaparin_bid_crcl_below_30_last_creatinine",
            (L("enoxaparin_cur"),),
            RENAL,
            renal=("crcl", lmwh_crcl - 13, lmwh_crcl - 3),
            **RENAL_LAPSE,
        ),
        _c(
            "renal.lmwh_curative",
            "enoxaparin_bid_crcl_just_above_30",
            (L("enoxaparin_cur"),),
            RENAL,
            renal=("crcl", lmwh_crcl + 2.5, lmwh_crcl + 6),
        ),
        _p(
            "renal.gabapentinoid",
            "pregabalin_300mg",
            (L("pregabalin", dose=150),),
            RENAL,
            renal=("crcl", gabapentinoid_crcl - 13, gabapentinoid_crcl - 3),
        ),
        _p(
            "renal.gabapentinoid",
            "gabapentin_1200mg",
            (L("gabapentin", dose=400),),
            RENAL,
            renal=("crcl", gabapentinoid_crcl - 13, gabapentinoid_crcl - 3),
        ),
        _p(
            "renal.gabapentinoid",
            "pregabalin_300mg_last_creatinine",
            (L("pregabalin", dose=150),),
            RENAL,
            renal=("crcl", gabapentinoid_crcl - 13, gabapentinoid_crcl - 3),
            **RENAL_LAPSE,
        ),
        _c(
            "renal.gabapentinoid",
            "pregabalin_300mg_crcl_just_above_30",
            (L("pregabalin", dose=150),),
            RENAL,
            renal=("crcl", gabapentinoid_crcl + 2.5, gabapentinoid_crcl + 6),
        ),
        _c(
            "renal.gabapentinoid",
            "pregabalin_150mg",
            (L("pregabalin", dose=75),),
            RENAL,
            renal=("crcl", gabapentinoid_crcl - 13, gabapentinoid_crcl - 3),
        ),
        _p(
            aki_rule,
            "ramipril_doubling",
            (L("ramipril"),),
            aki,
            lab=doubling,
            min_renal=45,
        ),
        _p(
            "renal.nephrotoxic_aki",
            "furosemide_doubling",
            (L("furosemide"),),
            aki,
            lab=doubling,
            min_renal=45,
        ),
        _p(
            aki_rule,
            "ramipril_doubling_early",
            (L("ramipril"),),
            aki,
            lab=_early(doubling),
            min_renal=45,
            lapse=True,
            need_days=aki.hours / 24 + 2,
        ),
        _c(
            "renal.nephrotoxic_aki",
            "irbesartan_rise_below_26",
            (L("irbesartan"),),
            aki,
            lab=Lab("creatinine", (12, 18), scale="add", decimals=0),
            min_renal=45,
        ),
        _c(
            "renal.nephrotoxic_aki",
            "doubling_without_nephrotoxic",
            (L("amlodipine"),),
            aki,
            lab=Lab("creatinine", (1.7, 2.3), scale="baseline", decimals=0),
            min_renal=45,
        ),
    ]


def _biology() -> list[Scenario]:
    hyper, hypo, dig = "bio.hyperkalaemia", "bio.hypokalaemia_qt", "bio.digoxin"
    k_hyper, k_hypo = _latest(hyper, "K+", "potassium"), _latest(hypo, "K+", "potassium")
    k_dig = _latest(dig, "K+", "potassium")
    k_max, k_min = _cursor(hyper, "k_max"), _cursor(hypo, "k_min")
    k_critical, _ = CATALOGUE.quantity(hyper, "K+ ≥")
    hyper_sev = ((k_critical, "critical"), (-INF, "major"))
    high_k = Lab("potassium", (k_max + 0.2, k_max + 1.3))
    # Each side of the severity's threshold, so that both levels occur.
    high_k_major = Lab("potassium", (k_max + 0.2, k_critical - 0.1))
    high_k_critical = Lab("potassium", (k_critical, k_critical + 0.8))
    low_k = Lab("potassium", (k_min - 0.8, k_min - 0.1))
    dig_level = _unstated("digoxin")  # the catalogue gives no window for the level
    dig_max, _ = CATALOGUE.quantity(dig, "digoxin level >")
    high_level = Lab("digoxin", (dig_max + 0.2, dig_max + 1.5), decimals=2)
    na_rule = "bio.hyponatraemia"
    na = _latest(na_rule, "Na+", "sodium")
    na_min = _cursor(na_rule, "na_min")
    na_critical, _ = CATALOGUE.quantity(na_rule, "critical <")
    na_sev = ((na_critical, "major"), (-INF, "critical"))
    low_na = Lab("sodium", (na_critical - 4, na_min - 1), decimals=0)
    low_na_major = Lab("sodium", (na_critical, na_min - 1), decimals=0)
    low_na_critical = Lab("sodium", (na_critical - 4, na_critical - 1), decimals=0)
    glu_rule = "bio.hypoglycaemia"
    glucose = Window("any", hours(glu_rule, "glucose"), "glucose")
    glucose_min = _cursor(glu_rule, "glucose_min")
    low_glucose = Lab("glucose", (glucose_min - 1.3, glucose_min - 0.1))
    hit = "bio.heparin_platelets"
    platelets = _unstated("platelets")
    platelets_min, _ = CATALOGUE.quantity(hit, "platelets <")
    clz = "bio.clozapine_neutrophils"
    neutrophils = Window("any", hours(clz, "neutrophils"), "neutrophils")
    neutrophils_min, _ = CATALOGUE.quantity(clz, "neutrophils <")
    neutropenia = Lab("neutrophils", (neutrophils_min - 1.0, neutrophils_min - 0.1))
    ck_rule = "bio.statin_ck"
    ck = _unstated("ck")
    ck_uln, _ = CATALOGUE.quantity(ck_rule, "CK >")
    high_ck = Lab("ck", (ck_uln + 1, ck_uln * 4), scale="uln", decimals=0)
    alt_rule = "bio.hepatotoxic_alt"
    alt = Window("any", hours(alt_rule, "ALT"), "alt")
    alt_uln, _ = CATALOGUE.quantity(alt_rule, "ALT >")
    high_alt = Lab("alt", (alt_uln + 0.5, alt_uln * 3), scale="uln", decimals=0)
    return [
        _p(hyper, "ramipril", (L("ramipril"),), k_hyper, lab=high_k_major, severity=hyper_sev),
        _p(
            hyper,
            "spironolactone",
            (L("spironolactone"),),
            k_hyper,
            lab=high_k,
            severity=hyper_sev,
            min_renal=45,
        ),
        _p(
            hyper,
            "irbesartan",
            (L("irbesartan"),),
            k_hyper,
            lab=high_k_critical,
            severity=hyper_sev,
        ),
        _p(
            hyper,
            "perindopril_early",
            (L("perindopril"),),
            k_hyper,
            lab=_early(high_k),
            severity=hyper_sev,
            lapse=True,
            need_days=k_hyper.hours / 24 + 2,
        ),
        _c(
            hyper,
            "k_at_5_5",
            (L("perindopril"),),
            k_hyper,
            lab=Lab("potassium", (k_max - 0.1, k_max)),
        ),
        _c(
            hyper,
            "with_binder",
            (L("ramipril"), L("patiromer", core=False)),
            k_hyper,
            lab=Lab("potassium", (k_max + 0.3, k_max + 0.8)),
        ),
        _p(hypo, "citalopram", (L("citalopram"),), k_hypo, lab=low_k),
        _p(hypo, "amiodarone", (L("amiodarone"),), k_hypo, lab=low_k),
        _p(hypo, "haloperidol", (L("haloperidol"),), k_hypo, lab=low_k),
        _p(
            hypo,
            "escitalopram_early",
            (L("escitalopram"),),
            k_hypo,
            lab=_early(low_k),
            lapse=True,
            need_days=k_hypo.hours / 24 + 2,
        ),
        _c(
            hypo,
            "k_at_3_5",
            (L("escitalopram"),),
            k_hypo,
            lab=Lab("potassium", (k_min, k_min + 0.1)),
        ),
        _c(
            hypo,
            "with_potassium",
            (L("escitalopram"), L("potassium_chloride", core=False)),
            k_hypo,
            lab=Lab("potassium", (k_min - 0.5, k_min - 0.2)),
            min_renal=45,
        ),
        _p(dig, "level_above_2", (L("digoxin"),), dig_level, lab=high_level, min_renal=40),
        _p(
            dig,
            "level_above_2_early",
            (L("digoxin"),),
            dig_level,
            lab=_early(high_level),
            min_renal=40,
            lapse=True,
            need_days=dig_level.hours / 24 + 2,
        ),
        _p(dig, "hypokalaemia", (L("digoxin"),), k_dig, lab=low_k, min_renal=40),
        _p(
            dig,
            "hypokalaemia_early",
            (L("digoxin"),),
            k_dig,
            lab=_early(low_k),
            min_renal=40,
            lapse=True,
            need_days=k_dig.hours / 24 + 2,
        ),
        _c(
            dig,
            "level_at_2",
            (L("digoxin"),),
            dig_level,
            lab=Lab("digoxin", (dig_max - 0.3, dig_max), decimals=2),
            min_renal=40,
        ),
        _p(
            na_rule,
            "hydrochlorothiazide",
            (L("hydrochlorothiazide"),),
            na,
            lab=low_na_major,
            severity=na_sev,
        ),
        _p(na_rule, "sertraline", (L("sertraline"),), na, lab=low_na_critical, severity=na_sev),
        _p(
            na_rule,
            "sertraline_early",
            (L("sertraline"),),
            na,
            lab=_early(low_na),
            severity=na_sev,
            lapse=True,
            need_days=na.hours / 24 + 2,
        ),
        _c(
            na_rule,
            "na_at_130",
            (L("citalopram"),),
            na,
            lab=Lab("sodium", (na_min, na_min + 1), decimals=0),
        ),
        _p(glu_rule, "insulin", (L("insulin_glargine"),), glucose, lab=low_glucose),
        _p(
            glu_rule,
            "gliclazide",
            (L("gliclazide"),),
            glucose,
            lab=low_glucose,
            min_renal=45,
        ),
        _p(
            glu_rule,
            "insulin_early",
            (L("insulin_glargine"),),
            glucose,
            lab=_early(low_glucose),
            lapse=True,
            need_days=glucose.hours / 24 + 2,
        ),
        _c(
            glu_rule,
            "glucose_at_3_3",
            (L("insulin_aspart"),),
            glucose,
            lab=Lab("glucose", (glucose_min, glucose_min + 0.2)),
        ),
        _p(
            hit,
            "platelets_below_100",
            (L("enoxaparin_prev"),),
            platelets,
            lab=Lab("platelets", (platelets_min - 40, platelets_min - 5), at=(96, 200), decimals=0),
            need_days=10,
        ),
        _p(
            hit,
            "platelets_below_100_early",
            (L("enoxaparin_prev"),),
            platelets,
            lab=Lab("platelets", (platelets_min - 40, platelets_min - 5), at=(30, 40), decimals=0),
            lapse=True,
            need_days=platelets.hours / 24 + 3,
        ),
        _c(
            hit,
            "fall_below_50pct",
            (L("enoxaparin_prev"),),
            platelets,
            lab=Lab("platelets", (0.6, 0.6), at=(96, 200), scale="baseline", decimals=0),
            need_days=10,
            min_platelets=185,
        ),
        _p(clz, "neutropenia", (L("clozapine"),), neutrophils, lab=neutropenia),
        _p(
            clz,
            "neutropenia_early",
            (L("clozapine"),),
            neutrophils,
            lab=_early(neutropenia),
            lapse=True,
            need_days=neutrophils.hours / 24 + 2,
        ),
        _c(
            clz,
            "neutrophils_at_1_5",
            (L("clozapine"),),
            neutrophils,
            lab=Lab("neutrophils", (neutrophils_min, neutrophils_min + 0.2)),
        ),
        _p(ck_rule, "atorvastatin", (L("atorvastatin"),), ck, lab=high_ck),
        _p(ck_rule, "simvastatin", (L("simvastatin"),), ck, lab=high_ck),
        _p(
            ck_rule,
            "simvastatin_early",
            (L("simvastatin"),),
            ck,
            lab=_early(high_ck),
            lapse=True,
            need_days=ck.hours / 24 + 2,
        ),
        _c(
            ck_rule,
            "ck_9x",
            (L("rosuvastatin"),),
            ck,
            lab=Lab("ck", (ck_uln - 1.5, ck_uln - 0.3), scale="uln", decimals=0),
        ),
        _p(alt_rule, "amiodarone", (L("amiodarone"),), alt, lab=high_alt),
        _p(alt_rule, "atorvastatin", (L("atorvastatin"),), alt, lab=high_alt),
        _p(
            alt_rule,
            "amiodarone_early",
            (L("amiodarone"),),
            alt,
            lab=_early(high_alt),
            lapse=True,
            need_days=alt.hours / 24 + 2,
        ),
        _c(
            alt_rule,
            "alt_4_5x",
            (L("amiodarone"),),
            alt,
            lab=Lab("alt", (alt_uln - 1.0, alt_uln - 0.2), scale="uln", decimals=0),
        ),
    ]


def _anticoagulation() -> list[Scenario]:
    high = "coag.vka_inr_high"
    inr_high = _latest(high, "INR", "inr")
    inr_max = _cursor(high, "inr_max")
    inr_critical, _ = CATALOGUE.quantity(high, "critical when INR ≥")
    high_inr = Lab("inr", (inr_max + 0.2, inr_critical + 3))
    inr_sev = ((inr_critical, "critical"), (-INF, "major"))
    no_inr = "coag.vka_no_inr"
    no_inr_window = Window("no_inr", hours(no_inr, "no INR"), "inr")
    no_inr_days = no_inr_window.hours / 24
    relay = "coag.vka_relay"
    relay_window = _unstated("inr")  # the catalogue gives no window for the latest INR
    apart = hours(relay, "latest INRs")  # "the two latest INRs (≥ 24 h apart)"
    inr_target, _ = CATALOGUE.quantity(relay, "are ≥")
    # Both lines stop before the INRs are as old as coag.vka_no_inr's window.
    relay_lines = (
        L("warfarin", hours=(no_inr_days - 0.5) * 24),
        L("enoxaparin_cur", at=1, hours=(no_inr_days - 0.5) * 24 - 1),
    )
    first_inr = Lab("inr", (inr_target + 0.1, inr_target + 0.8), at=(20, 26))
    later = (26 + apart + 2, 26 + apart + 20)  # ≥ 24 h after the first
    second_inr = Lab("inr", (inr_target + 0.1, inr_target + 0.8), at=later)
    relay_kw: dict[str, object] = dict(suppress=("inr",), min_renal=45, need_days=7)
    return [
        _p(
            high,
            "fluindione",
            (L("fluindione"),),
            inr_high,
            lab=Lab("inr", (inr_max + 0.2, inr_critical - 0.2)),
            severity=inr_sev,
        ),
        _p(
            high,
            "warfarin",
            (L("warfarin"),),
            inr_high,
            lab=Lab("inr", (inr_critical, inr_critical + 3)),
            severity=inr_sev,
        ),
        _p(
            high,
            "warfarin_early",
            # The VKA stops before the injected INR is as old as coag.vka_no_inr's window.
            (L("warfarin", hours=(no_inr_days - 0.5) * 24),),
            inr_high,
            lab=_early(high_inr),
            severity=inr_sev,
            lapse=True,
            need_days=inr_high.hours / 24 + 2,
        ),
        _c(
            high,
            "inr_at_4",
            (L("fluindione"),),
            inr_high,
            lab=Lab("inr", (inr_max - 0.2, inr_max)),
        ),
        _p(
            no_inr,
            "fluindione_one_inr",
            (L("fluindione"),),
            no_inr_window,
            need_days=no_inr_days + 2,
            suppress=("inr",),
            inr_every_days=INF,
        ),
        _p(
            no_inr,
            "fluindione_no_inr_at_all",  # "active for ≥ 3 days" is all that holds it back
            (L("fluindione"),),
            no_inr_window,
            need_days=hours(no_inr, "active for") / 24 + 2,
            suppress=("inr",),
        ),
        _c(
            no_inr,
            "inr_every_6_5_days",
            (L("warfarin"),),
            no_inr_window,
            need_days=no_inr_days + 2,
            suppress=("inr",),
            inr_every_days=no_inr_days - 0.5,
        ),
        _p(
            relay,
            "two_inrs_in_range",
            relay_lines,
            relay_window,
            lab=second_inr,
            earlier=(first_inr,),
            lapse=True,
            **relay_kw,
        ),
        _c(relay, "one_inr_in_range", relay_lines, LINES, lab=first_inr, **relay_kw),
        _c(
            relay,
            "two_inrs_under_24h_apart",
            relay_lines,
            LINES,
            # 19 to 23 h after the first: just under the catalogue's 24 h.
            lab=Lab("inr", second_inr.value, at=(24 + apart - 5, 24 + apart - 1)),
            earlier=(Lab("inr", first_inr.value, at=(24, 25)),),
            **relay_kw,
        ),
        _c(
            relay,
            "latest_inr_1_9",
            relay_lines,
            LINES,
            lab=Lab("inr", (inr_target - 0.1, inr_target - 0.1), at=later),
            earlier=(first_inr,),
            **relay_kw,
        ),
        _c(
            relay,
            "previous_inr_1_9",
            relay_lines,
            LINES,
            lab=second_inr,
            earlier=(Lab("inr", (inr_target - 0.1, inr_target - 0.1), at=first_inr.at),),
            **relay_kw,
        ),
        _p(
            "coag.doac_duplicate",
            "apixaban_enoxaparin_curative",
            (L("apixaban"), L("enoxaparin_cur", at=12)),
            LINES,
            min_renal=45,
        ),
        _p(
            "coag.doac_duplicate",
            "rivaroxaban_apixaban",
            (L("rivaroxaban"), L("apixaban", at=20)),
            LINES,
            min_renal=45,
        ),
        _c(
            "coag.doac_duplicate",
            "apixaban_enoxaparin_preventive",
            (L("apixaban"), L("enoxaparin_prev", at=12)),
            LINES,
            min_renal=45,
        ),
        _p(
            "coag.warfarin_nsaid",
            "fluindione_ibuprofen",
            (L("fluindione"), L("ibuprofen", at=24, hours=120)),
            LINES,
            min_renal=60,
            age=(18, 60),
            extra={"severity": "major"},
        ),
        _p(
            "coag.warfarin_nsaid",
            "warfarin_ketoprofen_elderly",
            (L("warfarin"), L("ketoprofen", at=24, hours=120)),
            LINES,
            min_renal=60,
            age=(70, 120),
            extra={"severity": "critical"},
        ),
        _c(
            "coag.warfarin_nsaid",
            "topical_ketoprofen",
            (L("fluindione"), L("ketoprofen_gel", at=24, hours=120)),
            LINES,
            min_renal=60,
        ),
    ]


# "Any active drug route oral" binds no line: the alert names the IV antibiotic alone, and the
# oral line is context that makes the situation hold.
ORAL_CONTEXT = L("amlodipine", at=-1, named=False)


def _monitoring() -> list[Scenario]:
    iv_course = dict(need_days=6)
    aminoglycoside = Window("delay", CATALOGUE.cursor("tdm.aminoglycoside", "delay").hours)
    vancomycin = Window("delay", CATALOGUE.cursor("tdm.vancomycin", "delay").hours)
    iv_to_oral = Window("delay", CATALOGUE.cursor("infect.iv_to_oral", "delay").hours)
    duration = Window("delay", hours("infect.duration", "active >"))
    return [
        _p(
            "tdm.aminoglycoside",
            "gentamicin_no_level",
            (L("gentamicin", hours=96),),
            aminoglycoside,
            min_renal=50,
            **iv_course,
        ),
        _p(
            "tdm.aminoglycoside",
            "amikacin_no_level",
            (L("amikacin", hours=96),),
            aminoglycoside,
            min_renal=50,
            **iv_course,
        ),
        _c(
            "tdm.aminoglycoside",
            "level_at_40h",
            (L("gentamicin", hours=96),),
            aminoglycoside,
            lab=Lab("gentamicin", (0.4, 1.2), at=(36, 46)),
            min_renal=50,
            **iv_course,
        ),
        _p(
            "tdm.vancomycin",
            "no_level",
            (L("vancomycin", hours=120),),
            vancomycin,
            min_renal=50,
            **iv_course,
        ),
        _c(
            "tdm.vancomycin",
            "level_at_40h",
            (L("vancomycin", hours=120),),
            vancomycin,
            lab=Lab("vancomycin", (12, 20), at=(36, 46)),
            min_renal=50,
            **iv_course,
        ),
        _p(
            "infect.iv_to_oral",
            "levofloxacin_iv_5d",
            (L("levofloxacin_iv", hours=120), ORAL_CONTEXT),
            iv_to_oral,
            need_days=6,
        ),
        _p(
            "infect.iv_to_oral",
            "metronidazole_iv_5d",
            (L("metronidazole_iv", hours=120), ORAL_CONTEXT),
            iv_to_oral,
            need_days=6,
        ),
        _c(
            "infect.iv_to_oral",
            "ciprofloxacin_iv_60h",
            (L("ciprofloxacin_iv", hours=60), ORAL_CONTEXT),
            iv_to_oral,
            need_days=6,
        ),
        _p(
            "infect.duration",
            "ceftriaxone_open",
            (L("ceftriaxone"),),
            duration,
            in_progress_days=(8, 12),
        ),
        _p(
            "infect.duration",
            "amoxicillin_clav_open",
            (L("amoxicillin_clav"),),
            duration,
            in_progress_days=(8, 12),
        ),
        _c(
            "infect.duration",
            "planned_14_days",
            (L("ceftriaxone", hours=14 * 24),),
            duration,
            in_progress_days=(8, 12),
        ),
    ]


def _dosage() -> list[Scenario]:
    light, _ = CATALOGUE.quantity("dose.paracetamol_max", "weight <")  # kg
    colchicine_crcl, _ = CATALOGUE.quantity("dose.colchicine_max", "when clearance <")
    q4h = (1, 4.0, "h")
    daily = (1, 1.0, "d")
    return [
        _p(
            "dose.paracetamol_max",
            "6g_q4h",
            (L("paracetamol_po", schedule=q4h),),
            LINES,
            min_weight=light + 5,
        ),
        _p(
            "dose.paracetamol_max",
            "two_lines_5g",
            (L("paracetamol_po"), L("paracetamol_iv", schedule=daily, at=6)),
            LINES,
            min_weight=light + 5,
        ),
        _p(
            "dose.paracetamol_max",
            "4g_under_50kg",
            (L("paracetamol_po"),),
            LINES,
            weight=(light - 11, light - 3),
        ),
        _c(
            "dose.paracetamol_max",
            "4g_over_50kg",
            (L("paracetamol_po"),),
            LINES,
            min_weight=light + 5,
        ),
        _c(
            "dose.paracetamol_max",
            "3g_under_50kg",
            (L("paracetamol_po", schedule=(3, 1.0, "d")),),
            LINES,
            weight=(light - 11, light - 3),
        ),
        _p(
            "dose.methotrexate_daily",
            "10mg_daily",
            (L("methotrexate", dose=10, schedule=daily),),
            LINES,
        ),
        _c("dose.methotrexate_daily", "15mg_weekly", (L("methotrexate"),), LINES),
        _p(
            "dose.colchicine_max",
            "4mg_day",
            (L("colchicine", schedule=(4, 1.0, "d")),),
            LINES,
            min_renal=40,
        ),
        _c(
            "dose.colchicine_max",
            "3mg_day",
            (L("colchicine", schedule=(3, 1.0, "d")),),
            LINES,
            min_renal=40,
        ),
        _p(
            "dose.colchicine_max",
            "2mg_day_crcl_below_30",
            (L("colchicine", schedule=(2, 1.0, "d")),),
            RENAL,
            renal=("crcl", colchicine_crcl - 13, colchicine_crcl - 3),
        ),
        _p(
            "dose.colchicine_max",
            "2mg_day_crcl_below_30_last_creatinine",
            (L("colchicine", schedule=(2, 1.0, "d")),),
            RENAL,
            renal=("crcl", colchicine_crcl - 13, colchicine_crcl - 3),
            **RENAL_LAPSE,
        ),
        _c(
            "dose.colchicine_max",
            "2mg_day_crcl_just_above_30",
            (L("colchicine", schedule=(2, 1.0, "d")),),
            RENAL,
            renal=("crcl", colchicine_crcl + 2.5, colchicine_crcl + 6),
        ),
        _c(
            "dose.colchicine_max",
            "1mg_day_crcl_below_30",
            (L("colchicine", schedule=(1, 1.0, "d")),),
            RENAL,
            renal=("crcl", colchicine_crcl - 13, colchicine_crcl - 3),
        ),
        _p(
            "dose.opioid_mme",
            "morphine_120",
            (L("morphine_po", dose=30), MACROGOL),
            LINES,
            extra={"mme": 120.0},
        ),
        _p(
            "dose.opioid_mme",
            "oxycodone_90",
            (L("oxycodone", dose=30), MACROGOL),
            LINES,
            extra={"mme": 90.0},
        ),
        _p(
            "dose.opioid_mme",
            "fentanyl_120",
            (L("fentanyl_td", dose=50), MACROGOL),
            LINES,
            extra={"mme": 120.0},
        ),
        _p(
            "dose.opioid_mme",
            "morphine_oxycodone_110",
            (L("morphine_po", dose=20), L("oxycodone", dose=10, at=2), MACROGOL),
            LINES,
            extra={"mme": 110.0},
        ),
        _c(
            "dose.opioid_mme",
            "morphine_80",
            (L("morphine_po", dose=20), MACROGOL),
            LINES,
            extra={"mme": 80.0},
        ),
        _c(
            "dose.opioid_mme",
            "tramadol_80",
            (L("tramadol", dose=100, schedule=(4, 1.0, "d")), MACROGOL),
            LINES,
            extra={"mme": 80.0},
        ),
    ]


def _combinations() -> list[Scenario]:
    young = (18.0, 74.0)
    laxative = Window("delay", CATALOGUE.cursor("combo.opioid_no_laxative", "delay").hours)
    benzo_age = _cursor("elderly.long_benzo", "age_min")
    anticholinergic_age = _cursor("elderly.anticholinergic", "age_min")
    nsaid_age, _ = CATALOGUE.quantity("elderly.nsaid_renal", "age ≥")
    nsaid_crcl, _ = CATALOGUE.quantity("elderly.nsaid_renal", "clearance <")
    return [
        _p(
            "combo.opioid_benzo",
            "oxycodone_oxazepam",
            (L("oxycodone", dose=5), MACROGOL, L("oxazepam", at=6)),
            LINES,
            age=young,
        ),
        _p(
            "combo.opioid_benzo",
            "tramadol_zopiclone",
            (L("tramadol"), MACROGOL, L("zopiclone", at=10)),
            LINES,
            age=young,
        ),
        _p(
            "combo.opioid_benzo",
            "morphine_alprazolam",
            (L("morphine_po"), MACROGOL, L("alprazolam", at=3)),
            LINES,
            age=young,
        ),
        _c(
            "combo.opioid_benzo",
            "benzo_stopped_before_opioid",
            (L("lorazepam", hours=24), L("morphine_po", at=26), L("macrogol", at=26, core=False)),
            LINES,
            age=young,
        ),
        _p("combo.opioid_no_laxative", "morphine", (L("morphine_po"),), laxative),
        _p("combo.opioid_no_laxative", "oxycodone", (L("oxycodone"),), laxative),
        _c(
            "combo.opioid_no_laxative",
            "laxative_at_40h",
            (L("morphine_po"), L("lactulose", at=40, core=False)),
            laxative,
        ),
        _p("combo.duplicate_class", "two_ppis", (L("omeprazole"), L("pantoprazole", at=8)), LINES),
        _p("combo.duplicate_class", "two_ssris", (L("citalopram"), L("sertraline", at=8)), LINES),
        _p(
            "combo.duplicate_class",
            "two_benzodiazepines",
            (L("oxazepam"), L("alprazolam", at=8)),
            LINES,
            age=young,
        ),
        _p(
            "combo.duplicate_class",
            "two_ace_inhibitors",
            (L("ramipril"), L("perindopril", at=8)),
            LINES,
        ),
        _c(
            "combo.duplicate_class",
            "ppi_switch",
            (L("omeprazole", hours=30), L("esomeprazole", at=31)),
            LINES,
        ),
        _p(
            "combo.allergy",
            "penicillin_amoxicillin",
            (L("amoxicillin", hours=120),),
            LINES,
            allergy="penicillin",
        ),
        _p(
            "combo.allergy",
            "penicillin_piperacillin",
            (L("piperacillin_tazobactam", hours=120),),
            LINES,
            allergy="penicillin",
        ),
        _c(
            "combo.allergy",
            "penicillin_ceftriaxone",
            (L("ceftriaxone", hours=120),),
            LINES,
            allergy="penicillin",
        ),
        _p(
            "combo.pregnancy",
            "valproate",
            (L("valproate"),),
            LINES,
            sex="F",
            age=(18, 44),
            pregnancy="pregnant",
        ),
        _p(
            "combo.pregnancy",
            "ramipril",
            (L("ramipril"),),
            LINES,
            sex="F",
            age=(18, 44),
            pregnancy="pregnant",
        ),
        _c(
            "combo.pregnancy",
            "valproate_not_pregnant",
            (L("valproate"),),
            LINES,
            sex="F",
            age=(18, 44),
            pregnancy="not-pregnant",
        ),
        _p("elderly.long_benzo", "bromazepam", (L("bromazepam"),), LINES, age=(benzo_age + 1, 120)),
        _p("elderly.long_benzo", "diazepam", (L("diazepam"),), LINES, age=(benzo_age + 1, 120)),
        _c(
            "elderly.long_benzo",
            "bromazepam_age_74",
            (L("bromazepam"),),
            LINES,
            set_age=(benzo_age - 0.97, benzo_age - 0.03),
        ),
        _p(
            "elderly.anticholinergic",
            "hydroxyzine",
            (L("hydroxyzine"),),
            LINES,
            age=(anticholinergic_age + 1, 120),
        ),
        _p(
            "elderly.anticholinergic",
            "oxybutynin",
            (L("oxybutynin"),),
            LINES,
            age=(anticholinergic_age + 1, 120),
        ),
        _c(
            "elderly.anticholinergic",
            "hydroxyzine_age_74",
            (L("hydroxyzine"),),
            LINES,
            set_age=(anticholinergic_age - 0.97, anticholinergic_age - 0.03),
        ),
        _p(
            "elderly.nsaid_renal",
            "ibuprofen_crcl_below_50",
            (L("ibuprofen", hours=120),),
            RENAL,
            age=(nsaid_age + 1, 120),
            renal=("crcl", nsaid_crcl - 18, nsaid_crcl - 5),
        ),
        _p(
            "elderly.nsaid_renal",
            "ibuprofen_crcl_below_50_last_creatinine",
            (L("ibuprofen"),),  # no planned end: the creatinine gets older than its window
            RENAL,
            age=(nsaid_age + 1, 120),
            renal=("crcl", nsaid_crcl - 18, nsaid_crcl - 5),
            **RENAL_LAPSE,
        ),
        _c(
            "elderly.nsaid_renal",
            "ibuprofen_crcl_below_50_age_64",
            (L("ibuprofen", hours=120),),
            RENAL,
            set_age=(nsaid_age - 0.97, nsaid_age - 0.03),
            renal=("crcl", nsaid_crcl - 18, nsaid_crcl - 5),
        ),
        _c(
            "elderly.nsaid_renal",
            "ibuprofen_crcl_above_50",
            (L("ibuprofen", hours=120),),
            RENAL,
            age=(nsaid_age + 1, 120),
            renal=("crcl", nsaid_crcl + 3, nsaid_crcl + 10),
        ),
    ]


SCENARIOS: tuple[Scenario, ...] = tuple(
    _renal() + _biology() + _anticoagulation() + _monitoring() + _dosage() + _combinations()
)


def covered_rules() -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.rule for s in SCENARIOS))


def truth_variants() -> Iterator[tuple[str, str, str]]:
    """(rule, variant, expected) of every truth row the scenarios can write: each scenario's
    own, and the control that follows a ``lapse`` positive once its look-back has passed."""
    for s in SCENARIOS:
        yield s.rule, s.variant, "positive" if s.positive else "control"
        if s.lapse:
            yield s.rule, s.lapse_variant, "control"
