"""The canonical fact model: what every feed is normalised into.

Each fact is a small frozen pydantic model. It says which patient it belongs to, carries a
stable ``fact_id`` (unique within its kind, so re-ingesting the same message replaces instead of
duplicating), a ``source`` telling where it came from (feed, document, message, position) for
alert explanations, and ``flags`` for what the terminology layer could not map (an unmapped code
or an unknown unit is kept and flagged, never guessed).

Quantities are kept twice: the canonical value and unit the rules use, and the value and unit as
received.

>>> from datetime import datetime
>>> src = Source(feed="fhir", document="bundle.json", position="Bundle.entry[3]")
>>> lab = LabResult(fact_id="lab-1", patient_id="p1", source=src, concept="potassium",
...                 code=Coding(system="http://loinc.org", code="2823-3"),
...                 value=5.9, unit="mmol/L", original_value="5.9", original_unit="mmol/L",
...                 time=datetime(2024, 1, 2, 8, 0))
>>> lab.kind
'lab'
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer

__all__ = [
    "FACT_KINDS",
    "Allergy",
    "AnyFact",
    "Coding",
    "Condition",
    "Fact",
    "Flag",
    "FlagCode",
    "Ingredient",
    "LabResult",
    "MedicationAdministration",
    "MedicationOrder",
    "Observation",
    "Patient",
    "Pregnancy",
    "Retraction",
    "Sex",
    "Source",
    "Stay",
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Source(_Frozen):
    """Where a fact came from, precisely enough to point a human at it.

    ``feed`` is the connector (``fhir``, ``hl7v2``, ``hprim``, ``pn13``, ``csv``, ``synthetic``);
    ``document`` the file name (or channel); ``message_id`` the message or resource id when the
    feed has one; ``position`` the place inside it: an HL7 segment and field (``OBX[2]-5``), a
    FHIR path (``Bundle.entry[3].resource.valueQuantity``), an XML path, or a CSV ``line 12``.

    ``version_time`` is when the sender recorded this version of the fact (naive UTC): HL7 EVN-2,
    else MSH-7; FHIR ``meta.lastUpdated``, else the Bundle's ``timestamp``; the PN13 or HPRIM
    message date. Of two versions of one fact the later ``version_time`` wins, whatever order
    they arrive in; ``None`` (a feed without one) leaves arrival order to decide.
    """

    feed: str
    document: str
    message_id: str | None = None
    position: str | None = None
    version_time: datetime | None = None

    @model_serializer(mode="wrap")
    def _without_unknown_version(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No ``version_time`` key when there is none: stored payloads stay as they were."""
        data: dict[str, Any] = handler(self)
        if data.get("version_time") is None:
            data.pop("version_time", None)
        return data

    def describe(self) -> str:
        parts = [self.feed, self.document]
        if self.message_id:
            parts.append(f"message {self.message_id}")
        if self.position:
            parts.append(self.position)
        return " / ".join(parts)


class Coding(_Frozen):
    """A code as received: its system (URI or short name such as ``LOCAL``), code and label."""

    system: str | None = None
    code: str
    display: str | None = None


class FlagCode(StrEnum):
    UNMAPPED_CODE = "unmapped_code"
    UNKNOWN_UNIT = "unknown_unit"
    IMPLAUSIBLE_VALUE = "implausible_value"
    MISSING_DOSE = "missing_dose"
    MISSING_FREQUENCY = "missing_frequency"
    NON_NUMERIC_VALUE = "non_numeric_value"
    ATC_FROM_NAME = "atc_from_name"  # drug code unmapped; ATC found from the label's substances
    # dose in tablets (or no unit) or mL read as the substance amount through the strength
    DOSE_FROM_STRENGTH = "dose_from_strength"


class Flag(_Frozen):
    """A data-quality remark attached to a fact (reported by ``vigie quality``)."""

    code: FlagCode
    detail: str


class Ingredient(_Frozen):
    """One active substance of a product, with its strength when known.

    The strength reads ``amount`` ``unit`` per ``per_amount`` ``per_unit``: paracetamol 500 mg
    per 1 tablet, codeine 30 mg per 1 tablet, amoxicillin 250 mg per 5 mL. ``per_unit`` ``None``
    means per one unit of the line's dose form. ``atc`` is the substance's own ATC code (N02BE01
    for paracetamol), not the product's combination code (N02AJ06). ``source`` says where the
    composition came from (``bdpm``, ``rxnorm-display``, ``fhir-ingredient``, ``site``...).
    """

    name: str
    atc: str | None = None
    amount: float | None = None
    unit: str | None = None
    per_amount: float = 1.0
    per_unit: str | None = None
    source: str | None = None


class Sex(StrEnum):
    FEMALE = "F"
    MALE = "M"
    OTHER = "O"
    UNKNOWN = "U"


class Fact(_Frozen):
    """Fields common to every fact kind."""

    kind: ClassVar[str]
    fact_id: str
    patient_id: str
    source: Source
    flags: tuple[Flag, ...] = ()


class Patient(Fact):
    kind: ClassVar[str] = "patient"
    birth_date: date | None = None
    sex: Sex = Sex.UNKNOWN

    def merged_over(self, older: Patient) -> Patient:
        """This record completed by an older one: feeds often send sparse demographics
        (a lab result's PID without birth date) that must not erase what an admission gave."""
        return self.model_copy(
            update={
                "birth_date": self.birth_date or older.birth_date,
                "sex": older.sex if self.sex == Sex.UNKNOWN else self.sex,
            }
        )


class Stay(Fact):
    """A hospital stay (FHIR Encounter, HL7 PV1 visit): where the patient is and since when."""

    kind: ClassVar[str] = "stay"
    stay_id: str
    ward: str | None = None
    bed: str | None = None
    admit_time: datetime | None = None
    discharge_time: datetime | None = None
    status: Literal["planned", "in-progress", "finished", "cancelled", "unknown"] = "unknown"


class MedicationOrder(Fact):
    """One prescription line.

    ``dose`` is per administration in ``dose_unit`` (canonical: mg, µg, g, IU, mL, or a
    dose-form unit such as ``tablet`` when no strength is known: a single-substance line sent
    in tablets, without unit or in mL with a known strength carries its substance's amount,
    flagged ``dose_from_strength``, the dose as sent in ``original_dose`` and
    ``original_dose_unit``; see ``vigie.connectors.dose_strength``); ``frequency_per_day`` the
    number of administrations per day (1/7 for weekly); ``daily_dose`` their product when both
    are known. ``as_needed`` lines (PRN) keep their maximum frequency when the order gives one.
    ``ingredients`` lists the active substances of a combination product with their strengths
    (empty for a single-substance product, whose substance is ``atc``, or when unknown).
    """

    kind: ClassVar[str] = "medication_order"
    order_id: str
    stay_id: str | None = None
    drug: Coding
    atc: str | None = None
    label: str | None = None
    dose: float | None = None
    dose_unit: str | None = None
    original_dose: str | None = None
    original_dose_unit: str | None = None
    frequency_per_day: float | None = None
    frequency_text: str | None = None
    daily_dose: float | None = None
    as_needed: bool = False
    route: str | None = None
    original_route: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    status: Literal[
        "active", "on-hold", "completed", "stopped", "cancelled", "draft", "unknown"
    ] = "active"
    prescriber: str | None = None
    ingredients: tuple[Ingredient, ...] = ()

    @model_serializer(mode="wrap")
    def _without_empty_ingredients(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No ``ingredients`` key for a single-substance line: stored payloads stay as they were."""
        data: dict[str, Any] = handler(self)
        if not data.get("ingredients"):
            data.pop("ingredients", None)
        return data


class MedicationAdministration(Fact):
    kind: ClassVar[str] = "medication_administration"
    administration_id: str
    order_id: str | None = None
    drug: Coding
    atc: str | None = None
    label: str | None = None
    dose: float | None = None
    dose_unit: str | None = None
    route: str | None = None
    time: datetime
    status: Literal["completed", "not-done", "in-progress", "unknown"] = "completed"


class LabResult(Fact):
    """A laboratory result, normalised to the concept's canonical unit.

    ``concept`` is the terminology layer's name (``creatinine``, ``potassium``...) or ``None``
    when the code is unmapped (then an ``unmapped_code`` flag says so). ``value`` is ``None``
    when the result is not numeric or its unit is unknown; the original is always kept.
    ``qualitative`` is the result read as ``positive`` or ``negative`` (a coded answer such as
    SNOMED 10828004 Positive, a word such as ``négatif``, an interpretation code such as
    ``POS``), ``None`` when the result says neither.
    """

    kind: ClassVar[str] = "lab"
    concept: str | None
    code: Coding
    value: float | None = None
    unit: str | None = None
    original_value: str | None = None
    original_unit: str | None = None
    time: datetime
    reference_low: float | None = None
    reference_high: float | None = None
    abnormal_flag: str | None = None
    qualitative: Literal["positive", "negative"] | None = None

    @model_serializer(mode="wrap")
    def _without_unknown_qualitative(
        self, handler: SerializerFunctionWrapHandler
    ) -> dict[str, Any]:
        """No ``qualitative`` key when there is none: stored payloads stay as they were."""
        data: dict[str, Any] = handler(self)
        if data.get("qualitative") is None:
            data.pop("qualitative", None)
        return data


class Observation(Fact):
    """A clinical measurement that is not a lab: weight, height, QTc."""

    kind: ClassVar[str] = "observation"
    concept: str | None
    code: Coding
    value: float | None = None
    unit: str | None = None
    original_value: str | None = None
    original_unit: str | None = None
    time: datetime


class Condition(Fact):
    """A diagnosis; ``icd10`` is filled when the code is (or maps to) ICD-10."""

    kind: ClassVar[str] = "condition"
    code: Coding
    icd10: str | None = None
    onset: datetime | None = None
    abatement: datetime | None = None
    clinical_status: Literal["active", "resolved", "inactive", "unknown"] = "active"


class Allergy(Fact):
    """An allergy or intolerance; ``atc`` lists the ATC codes or prefixes it stands for."""

    kind: ClassVar[str] = "allergy"
    substance: Coding
    atc: tuple[str, ...] = ()
    criticality: Literal["low", "high", "unable-to-assess", "unknown"] = "unknown"
    recorded: datetime | None = None
    clinical_status: Literal["active", "resolved", "inactive", "unknown"] = "active"


class Pregnancy(Fact):
    """A recorded pregnancy status (from a condition, an observation or a feed field)."""

    kind: ClassVar[str] = "pregnancy"
    status: Literal["pregnant", "not-pregnant", "unknown"] = "pregnant"
    recorded: datetime
    estimated_due_date: date | None = None


class Retraction(_Frozen):
    """A fact withdrawn by its sender: HL7 OBX-11 ``D`` (deleted) or ``W`` (wrong), FHIR
    ``entered-in-error``. The store marks the fact retracted (it stops reaching the rules) unless
    it holds a later version of it; ``source`` says which message withdrew it and when.
    """

    kind: str
    fact_id: str
    patient_id: str
    source: Source


AnyFact = (
    Patient
    | Stay
    | MedicationOrder
    | MedicationAdministration
    | LabResult
    | Observation
    | Condition
    | Allergy
    | Pregnancy
)

FACT_KINDS: dict[str, type[Fact]] = {
    cls.kind: cls
    for cls in (
        Patient,
        Stay,
        MedicationOrder,
        MedicationAdministration,
        LabResult,
        Observation,
        Condition,
        Allergy,
        Pregnancy,
    )
}

CODED_FIELDS: dict[str, str] = {
    "lab": "code",
    "observation": "code",
    "medication_order": "drug",
    "medication_administration": "drug",
    "condition": "code",
    "allergy": "substance",
}
"""The field holding the code of each coded fact kind (a ``Coding``): what an unmapped code
is reported from (``vigie quality``, the ingest answers' ``unmapped``)."""
