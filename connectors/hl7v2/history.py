"""HL7 v2 patient history segments → Condition (DG1) and Allergy (AL1) facts.

Read in every supported message that carries them (ADT, ORU, orders; IHE PAM FR admissions
carry both). A DG1 or AL1 that cannot be read is a located non-fatal error (``DG1[2]-3``); a bad
date inside one is reported and the fact still loads without it.

DG1 (v2.5):

- DG1-3 code^text^system (alternate code in components 4-6); DG1-2, the coding method of
  v2.3, gives the system when DG1-3.3 is empty; DG1-4, the v2.3 description, names a diagnosis
  sent without a code. ``icd10`` comes from ``Terminology.icd10``: ICD-10 under any of its
  names (``I10``, ``ICD10``, ``CIM10``...), SNOMED CT through its table; otherwise the code is
  kept and flagged.
- DG1-5 diagnosis time → ``onset``. DG1-6 type (A admitting, W working, F final) is not part
  of the fact id, so a working diagnosis later sent as final replaces it (the Condition model
  has no field for the type). DG1-21 action ``D`` (delete) gives no fact, with a note.
- Fact id: the patient and DG1-20 diagnosis identifier when sent, else the patient, the visit
  (PV1-19) and the code: a diagnosis belongs to a visit, and re-sending it updates it.

AL1 (v2.5):

- AL1-2 allergen type (user table 0127): food, environmental, animal, plant and pollen
  allergens (FA, EA, AA, PA, LA) rule out no drug; others are looked up as drugs.
- AL1-3 allergen code^text^system (WHOATC/ATC, RxNorm, SNOMED CT, local; alternate code in
  components 4-6) → ``atc`` through ``Terminology.allergy_atc``; a drug allergen without an
  ATC is kept and flagged. "No known allergy" entries give no fact.
- AL1-4 severity (user table 0128): SV severe → criticality ``high``, MO moderate and MI mild
  → ``low``, anything else ``unknown``. AL1-6 identification date → ``recorded``.
- Fact id: the patient and the allergen code, so that every admission re-sending the
  patient's allergies updates them instead of adding more.
"""

from __future__ import annotations

from collections.abc import Callable

from vigie.connectors.base import FeedError
from vigie.connectors.hl7v2.clinical import Context, time_or_error, visit_number
from vigie.connectors.hl7v2.message import Hl7Message, SegmentRef
from vigie.facts import Allergy, Coding, Condition, Flag, FlagCode
from vigie.terminology import normalise_system

__all__ = ["load_allergies", "load_conditions", "load_history"]

_DELETED = "D"  # DG1-21 diagnosis action code (table 0206)
_NON_DRUG_ALLERGENS = frozenset({"FA", "EA", "AA", "PA", "LA"})
_CRITICALITY = {
    "SV": "high",
    "SEVERE": "high",
    "MO": "low",
    "MODERATE": "low",
    "MI": "low",
    "MILD": "low",
}
# "No known (drug/food/environmental) allergy" sent as an AL1: a statement, not an allergen.
_NO_KNOWN_ALLERGY = frozenset(
    {"NKA", "NKDA", "NKFA", "NKEA", "716186003", "409137002", "429625007", "428607008"}
)


def load_history(ctx: Context) -> None:
    """Conditions (DG1) and allergies (AL1) of the message."""
    load_conditions(ctx)
    load_allergies(ctx)


# Conditions (DG1) ----------------------------------------------------------------------------


def load_conditions(ctx: Context) -> None:
    """A Condition per DG1; a bad one is a located non-fatal error."""
    _load_each(ctx, "DG1", _load_condition)


def _load_condition(ctx: Context, dg1: SegmentRef) -> None:
    message = ctx.message
    if message.value(dg1, 21).upper() == _DELETED:
        ctx.note(f"{dg1.label}: deleted diagnosis (DG1-21 {_DELETED}), skipped")
        return
    codings = _diagnosis_codings(message, dg1)
    terminology = ctx.terminology
    icd10 = next((i for c in codings if (i := terminology.icd10(c.system, c.code))), None)
    coding = next((c for c in codings if normalise_system(c.system) == "ICD10"), codings[0])
    flags: tuple[Flag, ...] = ()
    if icd10 is None:
        detail = f"{dg1.position(3)}: no ICD-10 for {coding.system or 'LOCAL'} code {coding.code!r}"
        flags = (Flag(code=FlagCode.UNMAPPED_CODE, detail=detail),)
    fact_id = ctx.fact_id("condition", _condition_key(ctx, dg1, icd10, coding))
    ctx.add(
        Condition,
        dg1,
        dg1.position(3),
        fact_id=ctx.unique_id(fact_id, dg1),
        flags=flags,
        code=coding,
        icd10=icd10,
        onset=time_or_error(ctx, dg1, 5),
    )


def _diagnosis_codings(message: Hl7Message, dg1: SegmentRef) -> list[Coding]:
    """DG1-3 and its alternate code; the DG1-4 description alone when no code is sent."""
    fallback_system = message.value(dg1, 2) or None
    codings = _codings(message, dg1, 3, fallback_system)
    if codings:
        return codings
    description = message.value(dg1, 4)
    if description:
        return [Coding(system=None, code=description, display=description)]
    raise message.field_error(
        dg1, 3, "a diagnosis code (code^text^system, e.g. E11.9^Diabète de type 2^I10)"
    )


def _condition_key(ctx: Context, dg1: SegmentRef, icd10: str | None, coding: Coding) -> str:
    patient_id = ctx.patient_for(dg1)
    identifier = ctx.message.entity_id(dg1, 20)
    if identifier:
        return f"{patient_id}:id={identifier}"
    code = icd10 or f"{normalise_system(coding.system)}|{coding.code}"
    return f"{patient_id}:{visit_number(ctx.message) or ''}:{code}"


# Allergies (AL1) -----------------------------------------------------------------------------


def load_allergies(ctx: Context) -> None:
    """An Allergy per AL1; a bad one is a located non-fatal error."""
    _load_each(ctx, "AL1", _load_allergy)


def _load_each(ctx: Context, name: str, load: Callable[[Context, SegmentRef], None]) -> None:
    """``load`` on every segment called ``name``; a located error is kept, the rest goes on."""
    for segment in ctx.message.all(name):
        try:
            load(ctx, segment)
        except FeedError as error:
            ctx.fail(error)


def _load_allergy(ctx: Context, al1: SegmentRef) -> None:
    message = ctx.message
    codings = _codings(message, al1, 3, None)
    if not codings:
        raise message.field_error(al1, 3, "an allergen (code^text^system)")
    if any(c.code.upper() in _NO_KNOWN_ALLERGY for c in codings):
        ctx.note(f"{al1.label}: no known allergy ({codings[0].code}), no fact")
        return
    substance = codings[0]
    atc, flags = _allergen_atc(ctx, al1, codings)
    patient_id = ctx.patient_for(al1)
    key = f"{patient_id}:{normalise_system(substance.system)}|{substance.code}"
    ctx.add(
        Allergy,
        al1,
        al1.position(3),
        fact_id=ctx.unique_id(ctx.fact_id("allergy", key), al1),
        flags=flags,
        substance=substance,
        atc=atc,
        criticality=_criticality(message, al1),
        recorded=time_or_error(ctx, al1, 6),
    )


def _allergen_atc(
    ctx: Context, al1: SegmentRef, codings: list[Coding]
) -> tuple[tuple[str, ...], tuple[Flag, ...]]:
    """ATC codes or prefixes the allergen rules out; flagged when a drug allergen has none."""
    if ctx.message.value(al1, 2).upper() in _NON_DRUG_ALLERGENS:
        return (), ()
    terminology = ctx.terminology
    atc = tuple(
        dict.fromkeys(a for c in codings for a in terminology.allergy_atc(c.system, c.code))
    )
    if atc or any(terminology.allergy_is_drug(c.system, c.code) is False for c in codings):
        return atc, ()
    substance = codings[0]
    detail = (
        f"{al1.position(3)}: no ATC for {substance.system or 'LOCAL'} allergen {substance.code!r}"
    )
    return (), (Flag(code=FlagCode.UNMAPPED_CODE, detail=detail),)


def _criticality(message: Hl7Message, al1: SegmentRef) -> str:
    severity = message.value(al1, 4, 1) or message.value(al1, 4, 2)
    return _CRITICALITY.get(severity.upper(), "unknown")


# Shared --------------------------------------------------------------------------------------


def _codings(
    message: Hl7Message, segment: SegmentRef, field: int, fallback_system: str | None
) -> list[Coding]:
    """A CE/CWE field's code and alternate code; a text sent alone stands as a local code."""
    codings = []
    for first in (1, 4):
        code = message.value(segment, field, first)
        display = message.value(segment, field, first + 1) or None
        if code:
            system = message.value(segment, field, first + 2) or (
                fallback_system if first == 1 else None
            )
            codings.append(Coding(system=system, code=code, display=display))
        elif first == 1 and display:
            codings.append(Coding(system=None, code=display, display=display))
    return codings
