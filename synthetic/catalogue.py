"""The injected situations: for each covered rule, positive cases and near-miss controls.

A ``Scenario`` is data: the lines to prescribe relative to an anchor time, an optional lab
result to inject, who is eligible, what to override (age, weight, renal function), and how the
situation's time window is read (``Window``). ``scenarios.py`` applies them; ``truth.py`` turns
them into the ground truth. Rule ids and thresholds follow ``rule-catalogue.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["DEFAULT_RATE", "SCENARIOS", "Lab", "Line", "Scenario", "Window", "covered_rules"]

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

    ``hours`` is the rule's look-back in the pack ("latest creatinine within 48 h"): past it
    the rule no longer reads the injected result, so the situation no longer holds.
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


def _p(rule: str, variant: str, lines: tuple[Line, ...], window: Window, **kw: object) -> Scenario:
    return Scenario(rule, True, variant, lines, window, **kw)  # type: ignore[arg-type]


def _c(rule: str, variant: str, lines: tuple[Line, ...], window: Window, **kw: object) -> Scenario:
    return Scenario(rule, False, variant, lines, window, **kw)  # type: ignore[arg-type]


L = Line
LINES = Window("lines")
# "egfr within 7 d" and "clearance within 7 d": both read the latest creatinine of 7 days.
RENAL = Window("state", 7 * 24, "creatinine")
MACROGOL = L("macrogol", core=False)


def _renal() -> list[Scenario]:
    met_hi, met_lo = L("metformin"), L("metformin", dose=500)
    aki = Window("latest", 48, "creatinine")  # the rule reads the latest creatinine of 48 h
    return [
        _p("renal.metformin_egfr", "egfr_below_30", (met_hi,), RENAL, renal=("egfr", 17, 27)),
        _c(
            "renal.metformin_egfr",
            "egfr_just_above_30",
            (met_lo,),
            RENAL,
            renal=("egfr", 31.5, 33.5),
        ),
        _p("renal.metformin_dose", "2000mg_egfr_30_45", (met_hi,), RENAL, renal=("egfr", 34, 42)),
        _c("renal.metformin_dose", "1000mg_egfr_30_45", (met_lo,), RENAL, renal=("egfr", 34, 42)),
        _p(
            "renal.dabigatran",
            "crcl_below_30",
            (L("dabigatran", dose=110),),
            RENAL,
            renal=("crcl", 17, 27),
        ),
        _c(
            "renal.dabigatran",
            "crcl_just_above_30",
            (L("dabigatran", dose=110),),
            RENAL,
            renal=("crcl", 32.5, 36),
        ),
        _p(
            "renal.xaban",
            "apixaban_crcl_below_15",
            (L("apixaban", dose=2.5),),
            RENAL,
            renal=("crcl", 8, 13),
        ),
        _p(
            "renal.xaban",
            "rivaroxaban_crcl_below_15",
            (L("rivaroxaban", dose=15),),
            RENAL,
            renal=("crcl", 8, 13),
        ),
        _c(
            "renal.xaban",
            "apixaban_crcl_just_above_15",
            (L("apixaban", dose=2.5),),
            RENAL,
            renal=("crcl", 16.5, 19),
        ),
        _p(
            "renal.lmwh_curative",
            "enoxaparin_bid_crcl_below_30",
            (L("enoxaparin_cur"),),
            RENAL,
            renal=("crcl", 17, 27),
        ),
        _c(
            "renal.lmwh_curative",
            "enoxaparin_bid_crcl_just_above_30",
            (L("enoxaparin_cur"),),
            RENAL,
            renal=("crcl", 32.5, 36),
        ),
        _p(
            "renal.gabapentinoid",
            "pregabalin_300mg",
            (L("pregabalin", dose=150),),
            RENAL,
            renal=("crcl", 17, 27),
        ),
        _p(
            "renal.gabapentinoid",
            "gabapentin_1200mg",
            (L("gabapentin", dose=400),),
            RENAL,
            renal=("crcl", 17, 27),
        ),
        _c(
            "renal.gabapentinoid",
            "pregabalin_150mg",
            (L("pregabalin", dose=75),),
            RENAL,
            renal=("crcl", 17, 27),
        ),
        _p(
            "renal.nephrotoxic_aki",
            "ramipril_doubling",
            (L("ramipril"),),
            aki,
            lab=Lab("creatinine", (1.7, 2.3), scale="baseline", decimals=0),
            min_renal=45,
        ),
        _p(
            "renal.nephrotoxic_aki",
            "furosemide_doubling",
            (L("furosemide"),),
            aki,
            lab=Lab("creatinine", (1.7, 2.3), scale="baseline", decimals=0),
            min_renal=45,
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
    k48 = Window("latest", 48, "potassium")
    hyper_sev = ((6.0, "critical"), (-INF, "major"))
    return [
        _p(
            "bio.hyperkalaemia",
            "ramipril",
            (L("ramipril"),),
            k48,
            lab=Lab("potassium", (5.7, 6.8)),
            severity=hyper_sev,
        ),
        _p(
            "bio.hyperkalaemia",
            "spironolactone",
            (L("spironolactone"),),
            k48,
            lab=Lab("potassium", (5.7, 6.8)),
            severity=hyper_sev,
            min_renal=45,
        ),
        _p(
            "bio.hyperkalaemia",
            "irbesartan",
            (L("irbesartan"),),
            k48,
            lab=Lab("potassium", (5.7, 6.8)),
            severity=hyper_sev,
        ),
        _c(
            "bio.hyperkalaemia",
            "k_at_5_5",
            (L("perindopril"),),
            k48,
            lab=Lab("potassium", (5.4, 5.5)),
        ),
        _c(
            "bio.hyperkalaemia",
            "with_binder",
            (L("ramipril"), L("patiromer", core=False)),
            k48,
            lab=Lab("potassium", (5.8, 6.3)),
        ),
        _p(
            "bio.hypokalaemia_qt",
            "citalopram",
            (L("citalopram"),),
            k48,
            lab=Lab("potassium", (2.7, 3.4)),
        ),
        _p(
            "bio.hypokalaemia_qt",
            "amiodarone",
            (L("amiodarone"),),
            k48,
            lab=Lab("potassium", (2.7, 3.4)),
        ),
        _p(
            "bio.hypokalaemia_qt",
            "haloperidol",
            (L("haloperidol"),),
            k48,
            lab=Lab("potassium", (2.7, 3.4)),
        ),
        _c(
            "bio.hypokalaemia_qt",
            "k_at_3_5",
            (L("escitalopram"),),
            k48,
            lab=Lab("potassium", (3.5, 3.6)),
        ),
        _c(
            "bio.hypokalaemia_qt",
            "with_potassium",
            (L("escitalopram"), L("potassium_chloride", core=False)),
            k48,
            lab=Lab("potassium", (3.0, 3.3)),
            min_renal=45,
        ),
        _p(
            "bio.digoxin",
            "level_above_2",
            (L("digoxin"),),
            Window("latest", 7 * 24, "digoxin"),
            lab=Lab("digoxin", (2.2, 3.5), decimals=2),
            min_renal=40,
        ),
        _p(
            "bio.digoxin",
            "hypokalaemia",
            (L("digoxin"),),
            k48,
            lab=Lab("potassium", (2.9, 3.4)),
            min_renal=40,
        ),
        _c(
            "bio.digoxin",
            "level_at_2",
            (L("digoxin"),),
            Window("latest", 7 * 24, "digoxin"),
            lab=Lab("digoxin", (1.7, 2.0), decimals=2),
            min_renal=40,
        ),
        _p(
            "bio.hyponatraemia",
            "hydrochlorothiazide",
            (L("hydrochlorothiazide"),),
            Window("latest", 72, "sodium"),
            lab=Lab("sodium", (121, 129), decimals=0),
            severity=((125, "major"), (-INF, "critical")),
        ),
        _p(
            "bio.hyponatraemia",
            "sertraline",
            (L("sertraline"),),
            Window("latest", 72, "sodium"),
            lab=Lab("sodium", (121, 129), decimals=0),
            severity=((125, "major"), (-INF, "critical")),
        ),
        _c(
            "bio.hyponatraemia",
            "na_at_130",
            (L("citalopram"),),
            Window("latest", 72, "sodium"),
            lab=Lab("sodium", (130, 131), decimals=0),
        ),
        _p(
            "bio.hypoglycaemia",
            "insulin",
            (L("insulin_glargine"),),
            Window("any", 24, "glucose"),
            lab=Lab("glucose", (2.0, 3.2)),
        ),
        _p(
            "bio.hypoglycaemia",
            "gliclazide",
            (L("gliclazide"),),
            Window("any", 24, "glucose"),
            lab=Lab("glucose", (2.0, 3.2)),
            min_renal=45,
        ),
        _c(
            "bio.hypoglycaemia",
            "glucose_at_3_3",
            (L("insulin_aspart"),),
            Window("any", 24, "glucose"),
            lab=Lab("glucose", (3.3, 3.5)),
        ),
        _p(
            "bio.heparin_platelets",
            "platelets_below_100",
            (L("enoxaparin_prev"),),
            Window("latest", 72, "platelets"),
            lab=Lab("platelets", (60, 95), at=(96, 200), decimals=0),
            need_days=10,
        ),
        _c(
            "bio.heparin_platelets",
            "fall_below_50pct",
            (L("enoxaparin_prev"),),
            Window("latest", 72, "platelets"),
            lab=Lab("platelets", (0.6, 0.6), at=(96, 200), scale="baseline", decimals=0),
            need_days=10,
            min_platelets=185,
        ),
        _p(
            "bio.clozapine_neutrophils",
            "neutropenia",
            (L("clozapine"),),
            Window("any", 7 * 24, "neutrophils"),
            lab=Lab("neutrophils", (0.5, 1.4)),
        ),
        _c(
            "bio.clozapine_neutrophils",
            "neutrophils_at_1_5",
            (L("clozapine"),),
            Window("any", 7 * 24, "neutrophils"),
            lab=Lab("neutrophils", (1.5, 1.7)),
        ),
        _p(
            "bio.statin_ck",
            "atorvastatin",
            (L("atorvastatin"),),
            Window("latest", 7 * 24, "ck"),
            lab=Lab("ck", (11, 40), scale="uln", decimals=0),
        ),
        _p(
            "bio.statin_ck",
            "simvastatin",
            (L("simvastatin"),),
            Window("latest", 7 * 24, "ck"),
            lab=Lab("ck", (11, 40), scale="uln", decimals=0),
        ),
        _c(
            "bio.statin_ck",
            "ck_9x",
            (L("rosuvastatin"),),
            Window("latest", 7 * 24, "ck"),
            lab=Lab("ck", (8.5, 9.7), scale="uln", decimals=0),
        ),
        _p(
            "bio.hepatotoxic_alt",
            "amiodarone",
            (L("amiodarone"),),
            Window("any", 72, "alt"),
            lab=Lab("alt", (5.5, 15), scale="uln", decimals=0),
        ),
        _p(
            "bio.hepatotoxic_alt",
            "atorvastatin",
            (L("atorvastatin"),),
            Window("any", 72, "alt"),
            lab=Lab("alt", (5.5, 15), scale="uln", decimals=0),
        ),
        _c(
            "bio.hepatotoxic_alt",
            "alt_4_5x",
            (L("amiodarone"),),
            Window("any", 72, "alt"),
            lab=Lab("alt", (4.0, 4.8), scale="uln", decimals=0),
        ),
    ]


def _anticoagulation() -> list[Scenario]:
    inr72 = Window("latest", 72, "inr")
    return [
        _p(
            "coag.vka_inr_high",
            "fluindione",
            (L("fluindione"),),
            inr72,
            lab=Lab("inr", (4.2, 9.0)),
            severity=((6.0, "critical"), (-INF, "major")),
        ),
        _p(
            "coag.vka_inr_high",
            "warfarin",
            (L("warfarin"),),
            inr72,
            lab=Lab("inr", (4.2, 9.0)),
            severity=((6.0, "critical"), (-INF, "major")),
        ),
        _c("coag.vka_inr_high", "inr_at_4", (L("fluindione"),), inr72, lab=Lab("inr", (3.8, 4.0))),
        _p(
            "coag.vka_no_inr",
            "fluindione_one_inr",
            (L("fluindione"),),
            Window("no_inr", 7 * 24, "inr"),
            need_days=9,
            suppress=("inr",),
            inr_every_days=INF,
        ),
        _c(
            "coag.vka_no_inr",
            "inr_every_6_5_days",
            (L("warfarin"),),
            Window("no_inr", 7 * 24, "inr"),
            need_days=9,
            suppress=("inr",),
            inr_every_days=6.5,
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
    return [
        _p(
            "tdm.aminoglycoside",
            "gentamicin_no_level",
            (L("gentamicin", hours=96),),
            Window("delay", 48),
            min_renal=50,
            **iv_course,
        ),
        _p(
            "tdm.aminoglycoside",
            "amikacin_no_level",
            (L("amikacin", hours=96),),
            Window("delay", 48),
            min_renal=50,
            **iv_course,
        ),
        _c(
            "tdm.aminoglycoside",
            "level_at_40h",
            (L("gentamicin", hours=96),),
            Window("delay", 48),
            lab=Lab("gentamicin", (0.4, 1.2), at=(36, 46)),
            min_renal=50,
            **iv_course,
        ),
        _p(
            "tdm.vancomycin",
            "no_level",
            (L("vancomycin", hours=120),),
            Window("delay", 48),
            min_renal=50,
            **iv_course,
        ),
        _c(
            "tdm.vancomycin",
            "level_at_40h",
            (L("vancomycin", hours=120),),
            Window("delay", 48),
            lab=Lab("vancomycin", (12, 20), at=(36, 46)),
            min_renal=50,
            **iv_course,
        ),
        _p(
            "infect.iv_to_oral",
            "levofloxacin_iv_5d",
            (L("levofloxacin_iv", hours=120), ORAL_CONTEXT),
            Window("delay", 72),
            need_days=6,
        ),
        _p(
            "infect.iv_to_oral",
            "metronidazole_iv_5d",
            (L("metronidazole_iv", hours=120), ORAL_CONTEXT),
            Window("delay", 72),
            need_days=6,
        ),
        _c(
            "infect.iv_to_oral",
            "ciprofloxacin_iv_60h",
            (L("ciprofloxacin_iv", hours=60), ORAL_CONTEXT),
            Window("delay", 72),
            need_days=6,
        ),
        _p(
            "infect.duration",
            "ceftriaxone_open",
            (L("ceftriaxone"),),
            Window("delay", 7 * 24),
            in_progress_days=(8, 12),
        ),
        _p(
            "infect.duration",
            "amoxicillin_clav_open",
            (L("amoxicillin_clav"),),
            Window("delay", 7 * 24),
            in_progress_days=(8, 12),
        ),
        _c(
            "infect.duration",
            "planned_14_days",
            (L("ceftriaxone", hours=14 * 24),),
            Window("delay", 7 * 24),
            in_progress_days=(8, 12),
        ),
    ]


def _dosage() -> list[Scenario]:
    q4h = (1, 4.0, "h")
    daily = (1, 1.0, "d")
    return [
        _p(
            "dose.paracetamol_max",
            "6g_q4h",
            (L("paracetamol_po", schedule=q4h),),
            LINES,
            min_weight=55,
        ),
        _p(
            "dose.paracetamol_max",
            "two_lines_5g",
            (L("paracetamol_po"), L("paracetamol_iv", schedule=daily, at=6)),
            LINES,
            min_weight=55,
        ),
        _p("dose.paracetamol_max", "4g_under_50kg", (L("paracetamol_po"),), LINES, weight=(39, 47)),
        _c("dose.paracetamol_max", "4g_over_50kg", (L("paracetamol_po"),), LINES, min_weight=55),
        _c(
            "dose.paracetamol_max",
            "3g_under_50kg",
            (L("paracetamol_po", schedule=(3, 1.0, "d")),),
            LINES,
            weight=(39, 47),
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
        _p("combo.opioid_no_laxative", "morphine", (L("morphine_po"),), Window("delay", 48)),
        _p("combo.opioid_no_laxative", "oxycodone", (L("oxycodone"),), Window("delay", 48)),
        _c(
            "combo.opioid_no_laxative",
            "laxative_at_40h",
            (L("morphine_po"), L("lactulose", at=40, core=False)),
            Window("delay", 48),
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
        _p("elderly.long_benzo", "bromazepam", (L("bromazepam"),), LINES, age=(76, 120)),
        _p("elderly.long_benzo", "diazepam", (L("diazepam"),), LINES, age=(76, 120)),
        _c(
            "elderly.long_benzo",
            "bromazepam_age_74",
            (L("bromazepam"),),
            LINES,
            set_age=(74.03, 74.97),
        ),
        _p("elderly.anticholinergic", "hydroxyzine", (L("hydroxyzine"),), LINES, age=(76, 120)),
        _p("elderly.anticholinergic", "oxybutynin", (L("oxybutynin"),), LINES, age=(76, 120)),
        _c(
            "elderly.anticholinergic",
            "hydroxyzine_age_74",
            (L("hydroxyzine"),),
            LINES,
            set_age=(74.03, 74.97),
        ),
        _p(
            "elderly.nsaid_renal",
            "ibuprofen_crcl_below_50",
            (L("ibuprofen", hours=120),),
            RENAL,
            age=(66, 120),
            renal=("crcl", 32, 45),
        ),
        _c(
            "elderly.nsaid_renal",
            "ibuprofen_crcl_above_50",
            (L("ibuprofen", hours=120),),
            RENAL,
            age=(66, 120),
            renal=("crcl", 53, 60),
        ),
    ]


SCENARIOS: tuple[Scenario, ...] = tuple(
    _renal() + _biology() + _anticoagulation() + _monitoring() + _dosage() + _combinations()
)


def covered_rules() -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.rule for s in SCENARIOS))
