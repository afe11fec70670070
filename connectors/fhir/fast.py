"""Facts from FHIR R4 resources held as plain JSON dicts: the shared reader.

``vigie.connectors.fhir.connector`` calls the extractors on every resource, after validating it with
``fhir.resources`` (the validated path) or without validation (the fast path, for bulk NDJSON
loads): both paths therefore give the same facts for a valid resource, and a test holds them
together over the reference files. This module holds the typed readers, the message context and
the Patient, Condition and AllergyIntolerance extractors; Encounters are read in
``vigie.connectors.fhir.encounter``, Observations in ``vigie.connectors.fhir.observation`` and
medication resources in ``vigie.connectors.fhir.medication``, with the same readers.

Because the fast path sees unvalidated JSON, every field is read through typed getters that raise
``EntryProblem`` (a FHIR path relative to the resource, what was expected, what was found) on a
wrong shape; the connector turns it into a located ``FeedError``.

Choices worth knowing:

- Times are naive UTC: an offset is applied then dropped (the fact store and polars frames hold
  naive datetimes); a time without offset and a partial date (``2020-05``) are taken as given.
- Patient ids are FHIR logical ids; references (``Patient/x``, ``urn:uuid:x`` via the Bundle's
  fullUrls, ``#x``) resolve through the message to the Patient's ``id``.
- A resource its sender withdrew (``withdrawn``: status ``entered-in-error``; a Condition or
  AllergyIntolerance verified ``entered-in-error`` or ``refuted``) is still read, so that the
  connector can retract the facts it would give under the same fact ids.
- ``Source.version_time`` is the resource's ``meta.lastUpdated``, else its message's time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from vigie.connectors.base import as_utc
from vigie.connectors.fhir.fast_facts import (
    TerminologyMemo,
    coding,
    flag,
    normalised_system,
    trusted_fact,
)
from vigie.facts import (
    Allergy,
    AnyFact,
    Coding,
    Condition,
    Flag,
    FlagCode,
    Patient,
    Sex,
    Source,
)

__all__ = [
    "EXTRACTORS",
    "RESOURCE_TYPES",
    "EntryProblem",
    "MessageContext",
    "ResourceEntry",
    "ResourceIndex",
    "Where",
    "parse_fhir_datetime",
    "parse_fhir_instant",
    "reference_id",
    "version_time",
    "withdrawn",
]

FEED = "fhir"
_Fact = TypeVar("_Fact", bound=BaseModel)

# The concrete resource types of FHIR R4B (the version ``fhir.resources`` validates against).
_R4B_RESOURCE_NAMES = """
    Account ActivityDefinition AdministrableProductDefinition AdverseEvent AllergyIntolerance
    Appointment AppointmentResponse AuditEvent Basic Binary BiologicallyDerivedProduct
    BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem
    ChargeItemDefinition Citation Claim ClaimResponse ClinicalImpression ClinicalUseDefinition
    CodeSystem Communication CommunicationRequest CompartmentDefinition Composition ConceptMap
    Condition Consent Contract Coverage CoverageEligibilityRequest CoverageEligibilityResponse
    DetectedIssue Device DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement
    DiagnosticReport DocumentManifest DocumentReference Encounter Endpoint EnrollmentRequest
    EnrollmentResponse EpisodeOfCare EventDefinition Evidence EvidenceReport EvidenceVariable
    ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal GraphDefinition Group
    GuidanceResponse HealthcareService ImagingStudy Immunization ImmunizationEvaluation
    ImmunizationRecommendation ImplementationGuide Ingredient InsurancePlan Invoice Library
    Linkage List Location ManufacturedItemDefinition Measure MeasureReport Media Medication
    MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest
    MedicationStatement MedicinalProductDefinition MessageDefinition MessageHeader
    MolecularSequence NamingSystem NutritionOrder NutritionProduct Observation
    ObservationDefinition OperationDefinition OperationOutcome Organization
    OrganizationAffiliation PackagedProductDefinition Parameters Patient PaymentNotice
    PaymentReconciliation Person PlanDefinition Practitioner PractitionerRole Procedure
    Provenance Questionnaire QuestionnaireResponse RegulatedAuthorization RelatedPerson
    RequestGroup ResearchDefinition ResearchElementDefinition ResearchStudy ResearchSubject
    RiskAssessment Schedule SearchParameter ServiceRequest Slot Specimen SpecimenDefinition
    StructureDefinition StructureMap Subscription SubscriptionStatus SubscriptionTopic Substance
    SubstanceDefinition SupplyDelivery SupplyRequest Task TerminologyCapabilities TestReport
    TestScript ValueSet VerificationResult VisionPrescription
"""
RESOURCE_TYPES = frozenset(_R4B_RESOURCE_NAMES.split())


class EntryProblem(Exception):
    """A resource field with the wrong shape; ``path`` is relative to the resource."""

    def __init__(self, path: str, expected: str, found: object = None) -> None:
        self.path = path
        self.expected = expected
        self.found = None if found is None else _show(found)
        super().__init__(f"{path}: expected {expected}")


def _show(value: object) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value, default=repr).decode()
    return text if len(text) <= 80 else text[:79] + "…"


# Locations -------------------------------------------------------------------------------


# The classes built for every resource (Where, MessageContext, ResourceEntry) are slotted
# dataclasses, not frozen ones: a frozen dataclass costs four times as much to build.


@dataclass(slots=True)
class Where:
    """Where a resource sits in its message: ``Bundle.entry[3].resource``, ``line 7`` or the
    resource type for a single-resource file; ``at`` locates a field inside it (``line 7:
    Encounter.period``, ``Bundle.entry[3].resource.period``)."""

    base: str
    field_prefix: str

    @classmethod
    def in_bundle(cls, index: int) -> Where:
        base = f"Bundle.entry[{index}].resource"
        return cls(base, base + ".")

    @classmethod
    def on_line(cls, position: str, resource_type: str) -> Where:
        return cls(position, f"{position}: {resource_type}.")

    @classmethod
    def alone(cls, resource_type: str) -> Where:
        return cls(resource_type, resource_type + ".")

    def at(self, path: str) -> str:
        return self.field_prefix + path if path else self.base


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# Typed getters: the only way fields are read --------------------------------------------


def _obj(node: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value = node.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise EntryProblem(_join(path, key), "a JSON object", value)


def _items(node: dict[str, Any], key: str, path: str) -> list[Any]:
    value = node.get(key)
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise EntryProblem(_join(path, key), "a JSON array", value)


def _objects(node: dict[str, Any], key: str, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    items = _items(node, key, path)
    if not items:
        return
    array_path = _join(path, key)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise EntryProblem(f"{array_path}[{index}]", "a JSON object", item)
        yield f"{array_path}[{index}]", item


def _first(node: dict[str, Any], key: str, path: str) -> tuple[str, dict[str, Any]] | None:
    return next(_objects(node, key, path), None)


def _text(node: dict[str, Any], key: str, path: str) -> str | None:
    value = node.get(key)
    if value is None or isinstance(value, str):
        return value
    raise EntryProblem(_join(path, key), "a string", value)


def _texts(node: dict[str, Any], key: str, path: str) -> list[str]:
    values = _items(node, key, path)
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise EntryProblem(f"{_join(path, key)}[{index}]", "a string", value)
    return values


def _number(node: dict[str, Any], key: str, path: str) -> float | None:
    value = node.get(key)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise EntryProblem(_join(path, key), "a finite number", value)
        return float(value)
    raise EntryProblem(_join(path, key), "a number", value)


def _number_text(quantity: dict[str, Any]) -> str:
    value = quantity.get("value")
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _boolean(node: dict[str, Any], key: str, path: str) -> bool | None:
    value = node.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise EntryProblem(_join(path, key), "true or false", value)


_DATETIME = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_DATETIME_EXPECTED = "a FHIR dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+hh:mm)"


# The usual instant (seconds, at most 6 fraction digits, an offset): fromisoformat reads it as is.
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})")


@lru_cache(maxsize=16384)  # bulk files repeat their timestamps (order authored = visit start)
def parse_fhir_datetime(text: str) -> datetime | None:
    """A FHIR date/dateTime/instant as a naive UTC datetime, or ``None`` when invalid (a time
    that UTC cannot hold, such as year 1 at +01:00, included).

    >>> parse_fhir_datetime("2021-08-02T17:26:27.603+02:00")
    datetime.datetime(2021, 8, 2, 15, 26, 27, 603000)
    >>> parse_fhir_datetime("2020-05")
    datetime.datetime(2020, 5, 1, 0, 0)
    """
    try:
        if _INSTANT.fullmatch(text):
            return datetime.fromisoformat(text).astimezone(UTC).replace(tzinfo=None)
        return _partial_datetime(text)
    except (ValueError, OverflowError):
        return None


def _partial_datetime(text: str) -> datetime | None:
    """A date, a partial date or a dateTime without seconds or offset, or with a long fraction;
    raises ``ValueError`` on an impossible date or time."""
    match = _DATETIME.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, _, second, fraction, offset = match.groups()
    if hour is None:
        return datetime(int(year), int(month or 1), int(day or 1))
    if second is None or (fraction and len(fraction) > 6):
        text = _normalised_time(match)
    moment = datetime.fromisoformat(text)
    if offset:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _normalised_time(match: re.Match[str]) -> str:
    """The ISO text with seconds and at most 6 fraction digits, which fromisoformat needs."""
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    fraction_text = f".{fraction[:6]}" if fraction else ""
    return f"{year}-{month}-{day}T{hour}:{minute}:{second or '00'}{fraction_text}{offset or ''}"


def _datetime(node: dict[str, Any], key: str, path: str) -> datetime | None:
    value = node.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise EntryProblem(_join(path, key), "a string", value)
    moment = parse_fhir_datetime(value)
    if moment is None:
        raise EntryProblem(_join(path, key), _DATETIME_EXPECTED, value)
    return moment


# A FHIR instant: seconds and an offset are required (the validated path rejects the rest too).
_FHIR_INSTANT = re.compile(
    r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)
_INSTANT_EXPECTED = "a FHIR instant (YYYY-MM-DDThh:mm:ss[.sss]+hh:mm, or Z)"


@lru_cache(maxsize=4096)  # a message's resources share their Bundle's or server's times
def parse_fhir_instant(text: str) -> datetime | None:
    """A FHIR instant (``meta.lastUpdated``, ``Bundle.timestamp``) as a naive UTC datetime, or
    ``None`` when it is not one (no offset, no seconds, an impossible time).

    >>> parse_fhir_instant("2005-01-10T04:05:14+05:30")
    datetime.datetime(2005, 1, 9, 22, 35, 14)
    >>> parse_fhir_instant("2005-01-10T04:05:14") is None
    True
    """
    match = _FHIR_INSTANT.fullmatch(text)
    if match is None:
        return None
    moment, fraction, offset = match.groups()
    if fraction:
        moment += "." + fraction[:6]
    try:
        return as_utc(datetime.fromisoformat(moment + offset))
    except (ValueError, OverflowError):
        return None


def _instant(node: dict[str, Any], key: str, path: str) -> datetime | None:
    value = _text(node, key, path)
    if value is None:
        return None
    moment = parse_fhir_instant(value)
    if moment is None:
        raise EntryProblem(_join(path, key), _INSTANT_EXPECTED, value)
    return moment


def version_time(resource: dict[str, Any]) -> datetime | None:
    """When the server recorded this version of a resource (``meta.lastUpdated``), naive UTC.

    Raises ``EntryProblem`` on a malformed ``meta`` or instant.
    """
    meta = resource.get("meta")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise EntryProblem("meta", "a JSON object", meta)
    return None if meta.get("lastUpdated") is None else _instant(meta, "lastUpdated", "meta")


def _date(node: dict[str, Any], key: str, path: str) -> date | None:
    value = _text(node, key, path)
    if value is None:
        return None
    moment = parse_fhir_datetime(value) if "T" not in value else None
    if moment is None:
        raise EntryProblem(_join(path, key), "a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD)", value)
    return moment.date()


def _period_start(node: dict[str, Any], key: str, path: str) -> datetime | None:
    period = _obj(node, key, path)
    return None if period is None else _datetime(period, "start", _join(path, key))


def _coded(node: dict[str, Any], key: str, path: str, mapping: dict[str, str], default: str) -> str:
    """A FHIR code mapped onto the fact's vocabulary; an unknown code is an error."""
    value = _text(node, key, path)
    if value is None:
        return default
    if value in mapping:
        return mapping[value]
    raise EntryProblem(_join(path, key), f"one of {', '.join(sorted(mapping))}", value)


def _concept_code(node: dict[str, Any], key: str, path: str) -> str | None:
    """The first code of a CodeableConcept (``clinicalStatus``, ``interpretation``...)."""
    concept = _obj(node, key, path)
    if concept is None:
        return None
    for coding_path, item in _objects(concept, "coding", _join(path, key)):
        code = _text(item, "code", coding_path)
        if code:
            return code
    return None


# References and the message's resources --------------------------------------------------


def reference_id(reference: str) -> str:
    """The logical id a reference points at.

    >>> [reference_id(r) for r in ("Patient/p1", "urn:uuid:p1", "#p1", "http://x/Patient/p1")]
    ['p1', 'p1', 'p1', 'p1']
    """
    if reference.startswith("#"):
        return reference[1:]
    if reference.startswith(("urn:uuid:", "urn:oid:")):
        return reference[9 if reference.startswith("urn:uuid:") else 8 :]
    if "?" in reference:  # a conditional reference: no id, kept whole so it stays consistent
        return reference
    if "/_history/" not in reference and not reference.endswith("/"):
        return reference.rpartition("/")[2]  # the usual Type/id or base/Type/id
    parts = reference.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return parts[-1]


def _content_id(resource: dict[str, Any]) -> str:
    digest = hashlib.sha256(orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return "sha256-" + digest[:24]


class ResourceIndex:
    """The resources of one message by every name a reference may use for them."""

    def __init__(self) -> None:
        self._by_reference: dict[str, dict[str, Any]] = {}
        self._logical_ids: dict[int, str] = {}

    def add(self, resource: dict[str, Any], full_url: str | None) -> None:
        resource_type, rid = resource.get("resourceType"), resource.get("id")
        if isinstance(full_url, str) and full_url:
            self._by_reference[full_url] = resource
            if not isinstance(rid, str):
                self._logical_ids[id(resource)] = reference_id(full_url)
        if isinstance(rid, str) and isinstance(resource_type, str):
            self._by_reference[f"{resource_type}/{rid}"] = resource
            # Some producers (the French IG examples) point at Bundle entries with '#id'.
            self._by_reference.setdefault(f"#{rid}", resource)

    def __bool__(self) -> bool:
        return bool(self._by_reference)  # an NDJSON line's index is empty

    def resolve(self, reference: str) -> dict[str, Any] | None:
        if not self._by_reference:  # an NDJSON line: nothing to resolve against
            return None
        found = self._by_reference.get(reference)
        if found is None and "/" in reference and not reference.startswith("urn:"):
            parts = reference.rstrip("/").split("/")
            if len(parts) >= 2:
                found = self._by_reference.get(f"{parts[-2]}/{parts[-1]}")
        return found

    def logical_id(self, resource: dict[str, Any]) -> str:
        rid = resource.get("id")
        if isinstance(rid, str) and rid:
            return rid
        return self._logical_ids.get(id(resource)) or _content_id(resource)


@dataclass(slots=True)
class MessageContext:
    """What every resource of a message shares.

    ``validated`` facts are built through pydantic validation (the validated path); the fast
    path builds them straight from the typed readers' values (see
    ``vigie.connectors.fhir.fast_facts``). ``version_time`` is the message's own (a Bundle's
    ``timestamp``, else its ``meta.lastUpdated``): the version time of a resource that has none.
    """

    document: str
    message_id: str
    terminology: TerminologyMemo
    index: ResourceIndex
    validated: bool = True
    version_time: datetime | None = None
    elements_checked: bool = False  # the fast path's element check (connector.parse_decoded)


@dataclass(slots=True)
class ResourceEntry:
    """One resource being read: the resource, where it sits, its message, and when this version
    of it was recorded (its ``meta.lastUpdated``, else its message's time)."""

    resource: dict[str, Any]
    resource_type: str
    resource_id: str
    where: Where
    context: MessageContext
    version_time: datetime | None = None

    def fact(self, model: type[_Fact], **fields: Any) -> _Fact:
        """A fact of this resource: validated on the validated path, trusted on the fast one."""
        if self.context.validated:
            return model(**fields)
        return trusted_fact(model, fields)

    def source(self, path: str = "") -> Source:
        context = self.context
        if self.version_time is None:  # left unset: a fifth field costs 1% of a bulk load
            return self.fact(
                Source,
                feed=FEED,
                document=context.document,
                message_id=context.message_id,
                position=self.where.at(path),
            )
        return self.fact(
            Source,
            feed=FEED,
            document=context.document,
            message_id=context.message_id,
            position=self.where.at(path),
            version_time=self.version_time,
        )

    def fact_id(self, suffix: str = "") -> str:
        return f"fhir:{self.resource_type}/{self.resource_id}{suffix}"

    @property
    def terminology(self) -> TerminologyMemo:
        return self.context.terminology

    def referenced_id(self, key: str) -> str | None:
        """The logical id behind a Reference field, resolved through the message."""
        reference = _obj(self.resource, key, "")
        if reference is None:
            return None
        text = _text(reference, "reference", key)
        if text:
            index = self.context.index
            target = index.resolve(text) if index else None
            return index.logical_id(target) if target else reference_id(text)
        identifier = _obj(reference, "identifier", key)
        if identifier is not None:
            return _text(identifier, "value", _join(key, "identifier"))
        return None

    def patient_id(self, key: str) -> str:
        patient = self.referenced_id(key)
        if not patient:
            raise EntryProblem(key, "a reference to the Patient", self.resource.get(key))
        return patient


# Codes -------------------------------------------------------------------------------------


def _codings(concept: dict[str, Any] | None, path: str) -> list[Coding]:
    """The codings of a CodeableConcept that have a code. Hot on bulk loads, so the JSON path of
    an item is only spelled out when that item has a wrong shape."""
    if concept is None:
        return []
    codings = []
    for index, item in enumerate(_items(concept, "coding", path)):
        if not isinstance(item, dict):
            raise EntryProblem(_coding_path(path, index), "a JSON object", item)
        code = item.get("code")
        if code is None:
            continue
        if not isinstance(code, str):
            raise EntryProblem(_coding_path(path, index) + ".code", "a string", code)
        if not code.strip():
            continue
        system, display = item.get("system"), item.get("display")
        if not (system is None or isinstance(system, str)):
            raise EntryProblem(_coding_path(path, index) + ".system", "a string", system)
        if not (display is None or isinstance(display, str)):
            raise EntryProblem(_coding_path(path, index) + ".display", "a string", display)
        codings.append(coding(system, code, display))
    return codings


def _coding_path(path: str, index: int) -> str:
    return f"{_join(path, 'coding')}[{index}]"


def _text_coding(text: str) -> Coding:
    """A code known only by its text (a local label): kept as the code and its display."""
    return coding(None, text, text)


def _unmapped(what: str, codings: list[Coding]) -> Flag:
    codes = ", ".join(f"{normalised_system(c.system)}|{c.code}" for c in codings) or "no code"
    return flag(FlagCode.UNMAPPED_CODE, f"{what} not mapped: {codes}")


# Patients --------------------------------------------------------------------------------

_SEX: dict[str, str] = {
    "male": Sex.MALE,
    "female": Sex.FEMALE,
    "other": Sex.OTHER,
    "unknown": Sex.UNKNOWN,
}


def _patient(entry: ResourceEntry) -> list[AnyFact]:
    resource = entry.resource
    sex = _coded(resource, "gender", "", _SEX, Sex.UNKNOWN)
    return [
        entry.fact(
            Patient,
            fact_id=entry.fact_id(),
            patient_id=entry.resource_id,
            source=entry.source("birthDate"),  # what an alert's age evidence comes from
            birth_date=_date(resource, "birthDate", ""),
            sex=Sex(sex),
        )
    ]


# Conditions and allergies ------------------------------------------------------------------

_CLINICAL_STATUS = {
    "active": "active",
    "recurrence": "active",
    "relapse": "active",
    "inactive": "inactive",
    "remission": "resolved",
    "resolved": "resolved",
}
# A refuted condition was ruled out: like one entered in error, what it said must not stand.
_WITHDRAWN_VERIFICATION = frozenset({"refuted", "entered-in-error"})


def withdrawn(resource: dict[str, Any]) -> bool:
    """Whether the sender withdrew what this resource says: a status ``entered-in-error``
    (Observation, MedicationRequest, MedicationAdministration, Encounter...), or a
    ``verificationStatus`` (Condition, AllergyIntolerance) ``entered-in-error`` or ``refuted``.

    Raises ``EntryProblem`` on a malformed ``verificationStatus``.
    """
    if resource.get("status") == "entered-in-error":
        return True
    if "verificationStatus" not in resource:
        return False
    return _concept_code(resource, "verificationStatus", "") in _WITHDRAWN_VERIFICATION


def _clinical_status(resource: dict[str, Any]) -> str:
    code = _concept_code(resource, "clinicalStatus", "")
    if code is None:
        return "unknown"
    if code not in _CLINICAL_STATUS:
        expected = f"one of {', '.join(sorted(_CLINICAL_STATUS))}"
        raise EntryProblem("clinicalStatus", expected, code)
    return _CLINICAL_STATUS[code]


def _condition(entry: ResourceEntry) -> list[AnyFact]:
    resource = entry.resource
    code = _obj(resource, "code", "")
    codings = _codings(code, "code")
    terminology = entry.terminology
    icd10 = next((c for c in codings if normalised_system(c.system) == "ICD10"), None)
    text = _text(code, "text", "code") if code else None
    coding = icd10 or (codings[0] if codings else None)
    # ICD-10 as sent (normalised), else through the SNOMED → ICD-10 table
    icd10_code = next((i for c in codings if (i := terminology.icd10(c.system, c.code))), None)
    flags: tuple[Flag, ...] = ()
    if coding is None:
        if not text:
            raise EntryProblem("code", "a coded or named condition", code)
        coding = _text_coding(text)
        flags = (_unmapped("condition", [coding]),)
    abatement = _datetime(resource, "abatementDateTime", "")
    abatement_period = _obj(resource, "abatementPeriod", "")
    if abatement is None and abatement_period is not None:
        abatement = _datetime(abatement_period, "end", "abatementPeriod")
    onset = _datetime(resource, "onsetDateTime", "") or _period_start(resource, "onsetPeriod", "")
    return [
        entry.fact(
            Condition,
            fact_id=entry.fact_id(),
            patient_id=entry.patient_id("subject"),
            source=entry.source("code"),
            flags=flags,
            code=coding,
            icd10=icd10_code,
            onset=onset or _datetime(resource, "recordedDate", ""),
            abatement=abatement,
            clinical_status=_clinical_status(resource),
        )
    ]


_CRITICALITY = {"low": "low", "high": "high", "unable-to-assess": "unable-to-assess"}


def _allergy(entry: ResourceEntry) -> list[AnyFact]:
    resource = entry.resource
    path, concept = "code", _obj(resource, "code", "")
    if concept is None:  # the substance may only be named in the reaction
        first = _first(resource, "reaction", "")
        if first is not None:
            path = _join(first[0], "substance")
            concept = _obj(first[1], "substance", first[0])
    codings = _codings(concept, path)
    text = _text(concept, "text", path) if concept else None
    if not codings:
        if not text:
            raise EntryProblem("code", "the substance of the allergy", concept)
        codings = [_text_coding(text)]
    terminology = entry.terminology
    atc = tuple(
        dict.fromkeys(a for c in codings for a in terminology.allergy_atc(c.system, c.code))
    )
    known_non_drug = any(terminology.allergy_is_drug(c.system, c.code) is False for c in codings)
    return [
        entry.fact(
            Allergy,
            fact_id=entry.fact_id(),
            patient_id=entry.patient_id("patient"),
            source=entry.source(path),
            flags=() if atc or known_non_drug else (_unmapped("allergy substance", codings),),
            substance=codings[0],
            atc=atc,
            criticality=_coded(resource, "criticality", "", _CRITICALITY, "unknown"),
            recorded=_datetime(resource, "recordedDate", "")
            or _datetime(resource, "onsetDateTime", ""),
            clinical_status=_clinical_status(resource),
        )
    ]


EXTRACTORS: dict[str, Callable[[ResourceEntry], list[AnyFact]]] = {
    "Patient": _patient,
    "Condition": _condition,
    "AllergyIntolerance": _allergy,
}
