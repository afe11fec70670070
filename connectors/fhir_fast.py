"""Facts from FHIR R4 resources held as plain JSON dicts: the shared reader.

``connectors.fhir`` calls these extractors on every resource, after validating it with
``fhir.resources`` (the validated path) or without validation (the fast path, for bulk NDJSON
loads): both paths therefore give the same facts for a valid resource, and a test holds them
together over the reference files. Medication resources are read in ``connectors.fhir_medication``
with the same typed readers.

Because the fast path sees unvalidated JSON, every field is read through typed getters that raise
``EntryProblem`` (a FHIR path relative to the resource, what was expected, what was found) on a
wrong shape; the connector turns it into a located ``FeedError``.

Choices worth knowing:

- Times are naive UTC: an offset is applied then dropped (the fact store and polars frames hold
  naive datetimes); a time without offset and a partial date (``2020-05``) are taken as given.
- Patient ids are FHIR logical ids; references (``Patient/x``, ``urn:uuid:x`` via the Bundle's
  fullUrls, ``#x``) resolve through the message to the Patient's ``id``.
- Observations: a code mapped to a ``lab`` concept gives a ``LabResult``, to an ``observation``
  concept an ``Observation``; an unmapped code gives a ``LabResult`` with ``concept=None`` and an
  ``unmapped_code`` flag when the category is ``laboratory``, and no fact otherwise (vital signs,
  surveys, social history...: nothing a rule reads). Components are read the same way but only
  when mapped. Pregnancy status (LOINC 82810-3, 11449-6) gives a ``Pregnancy`` fact, with the
  estimated due date of its 11778-8 component; an 11778-8 Observation alone gives a pregnant
  ``Pregnancy`` with that date (due dates are calendar days, never shifted). Cancelled
  and entered-in-error observations, refuted conditions and allergies give no fact.
- A value with a comparator (``<5``) or without a number keeps its text and gets a
  ``non_numeric_value`` flag; a unit the tables cannot convert gives ``value=None`` and an
  ``unknown_unit`` flag.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

import orjson

from connectors.terminology import Concept, Terminology, UnknownUnit, normalise_system
from engine.facts import (
    Allergy,
    AnyFact,
    Coding,
    Condition,
    Flag,
    FlagCode,
    LabResult,
    Observation,
    Patient,
    Pregnancy,
    Sex,
    Source,
    Stay,
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
    "reference_id",
]

FEED = "fhir"

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


@dataclass(frozen=True)
class Where:
    """Where a resource sits in its message: ``Bundle.entry[3].resource``, ``line 7`` or the
    resource type for a single-resource file; ``at`` locates a field inside it."""

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
    for index, item in enumerate(_items(node, key, path)):
        if not isinstance(item, dict):
            raise EntryProblem(f"{_join(path, key)}[{index}]", "a JSON object", item)
        yield f"{_join(path, key)}[{index}]", item


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


@lru_cache(maxsize=16384)  # bulk files repeat their timestamps (order authored = visit start)
def parse_fhir_datetime(text: str) -> datetime | None:
    """A FHIR date/dateTime/instant as a naive UTC datetime, or ``None`` when invalid.

    >>> parse_fhir_datetime("2021-08-02T17:26:27.603+02:00")
    datetime.datetime(2021, 8, 2, 15, 26, 27, 603000)
    >>> parse_fhir_datetime("2020-05")
    datetime.datetime(2020, 5, 1, 0, 0)
    """
    match = _DATETIME.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, _, second, fraction, offset = match.groups()
    try:
        if hour is None:
            return datetime(int(year), int(month or 1), int(day or 1))
        if second is None or (fraction and len(fraction) > 6):
            text = _normalised_time(match)
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if offset:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _normalised_time(match: re.Match[str]) -> str:
    """The ISO text with seconds and at most 6 fraction digits, which fromisoformat needs."""
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    fraction_text = f".{fraction[:6]}" if fraction else ""
    return f"{year}-{month}-{day}T{hour}:{minute}:{second or '00'}{fraction_text}{offset or ''}"


def _datetime(node: dict[str, Any], key: str, path: str) -> datetime | None:
    value = _text(node, key, path)
    if value is None:
        return None
    moment = parse_fhir_datetime(value)
    if moment is None:
        raise EntryProblem(_join(path, key), _DATETIME_EXPECTED, value)
    return moment


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
    for coding_path, coding in _objects(concept, "coding", _join(path, key)):
        code = _text(coding, "code", coding_path)
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


@dataclass(frozen=True)
class MessageContext:
    """What every resource of a message shares."""

    document: str
    message_id: str
    terminology: Terminology
    index: ResourceIndex


@dataclass(frozen=True)
class ResourceEntry:
    """One resource being read: the resource, where it sits, its message."""

    resource: dict[str, Any]
    resource_type: str
    resource_id: str
    where: Where
    context: MessageContext

    def source(self, path: str = "") -> Source:
        return Source(
            feed=FEED,
            document=self.context.document,
            message_id=self.context.message_id,
            position=self.where.at(path),
        )

    def fact_id(self, suffix: str = "") -> str:
        return f"fhir:{self.resource_type}/{self.resource_id}{suffix}"

    @property
    def terminology(self) -> Terminology:
        return self.context.terminology

    def referenced_id(self, key: str) -> str | None:
        """The logical id behind a Reference field, resolved through the message."""
        reference = _obj(self.resource, key, "")
        if reference is None:
            return None
        text = _text(reference, "reference", key)
        if text:
            target = self.context.index.resolve(text)
            return self.context.index.logical_id(target) if target else reference_id(text)
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
    if concept is None:
        return []
    codings = []
    for coding_path, coding in _objects(concept, "coding", path):
        code = _text(coding, "code", coding_path)
        if code and code.strip():
            system = _text(coding, "system", coding_path)
            display = _text(coding, "display", coding_path)
            codings.append(Coding(system=system, code=code, display=display))
    return codings


def _unmapped(what: str, codings: list[Coding]) -> Flag:
    codes = ", ".join(f"{normalise_system(c.system)}|{c.code}" for c in codings) or "no code"
    return Flag(code=FlagCode.UNMAPPED_CODE, detail=f"{what} not mapped: {codes}")


# Patient and Encounter ---------------------------------------------------------------------

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
        Patient(
            fact_id=entry.fact_id(),
            patient_id=entry.resource_id,
            source=entry.source(),
            birth_date=_date(resource, "birthDate", ""),
            sex=Sex(sex),
        )
    ]


_STAY_STATUS = {
    "planned": "planned",
    "arrived": "planned",
    "triaged": "planned",
    "in-progress": "in-progress",
    "onleave": "in-progress",
    "finished": "finished",
    "cancelled": "cancelled",
    "entered-in-error": "cancelled",
    "unknown": "unknown",
}


def _stay(entry: ResourceEntry) -> list[AnyFact]:
    resource = entry.resource
    period = _obj(resource, "period", "") or {}
    places = _places(entry)
    ward = _ward_place(places)
    return [
        Stay(
            fact_id=entry.fact_id(),
            patient_id=entry.patient_id("subject"),
            source=entry.source(),
            stay_id=entry.resource_id,
            ward=ward.name if ward else _ward_otherwise(resource),
            bed=_bed(places, ward),
            admit_time=_datetime(period, "start", "period"),
            discharge_time=_datetime(period, "end", "period"),
            status=_coded(resource, "status", "", _STAY_STATUS, "unknown"),
        )
    ]


# Encounter.location[].status values of places the patient is not in now.
_PAST_OR_FUTURE_PLACE = frozenset({"completed", "planned"})
_BED_TYPES = ("bd", "ro")  # bed, room (location-physical-type)
_WARD_TYPE = "wa"


@dataclass(frozen=True)
class _Place:
    """An Encounter.location[] entry: its name and physical type (``wa``, ``ro``, ``bd``...)."""

    name: str
    physical_type: str | None


def _places(entry: ResourceEntry) -> list[_Place]:
    """The locations of the stay, those the patient has left (or not reached) set aside.

    A location's physical type is read on the Encounter, else on the Location resource when the
    message holds it; its name is the reference's display, else the Location's name, else its id.
    """
    current: list[_Place] = []
    other: list[_Place] = []
    for path, location in _objects(entry.resource, "location", ""):
        reference = _obj(location, "location", path)
        if reference is None:
            continue
        ref_path = _join(path, "location")
        target = _text(reference, "reference", ref_path)
        resolved = entry.context.index.resolve(target) if target else None
        name = _text(reference, "display", ref_path) or _location_name(resolved, target)
        if not name:
            continue
        physical = _concept_code(location, "physicalType", path)
        if physical is None:
            physical = _location_type(resolved)
        place = _Place(name, physical)
        past = _text(location, "status", path) in _PAST_OR_FUTURE_PLACE
        (other if past else current).append(place)
    return current or other


def _location_name(resolved: dict[str, Any] | None, reference: str | None) -> str | None:
    name = resolved.get("name") if resolved is not None else None
    if isinstance(name, str) and name:
        return name
    return reference_id(reference) if reference else None


def _location_type(resolved: dict[str, Any] | None) -> str | None:
    """A Location resource's physical type; a malformed one is that resource's own problem
    (reported on its entry), so the stay is read without it."""
    if resolved is None:
        return None
    try:
        return _concept_code(resolved, "physicalType", "")
    except EntryProblem:
        return None


def _ward_place(places: list[_Place]) -> _Place | None:
    """The ward-level location (``wa``), else the first that is not a bed or a room."""
    for place in places:
        if place.physical_type == _WARD_TYPE:
            return place
    return next((p for p in places if p.physical_type not in _BED_TYPES), None)


def _bed(places: list[_Place], ward: _Place | None) -> str | None:
    """The bed (``bd``) or room (``ro``) location, ``room/bed`` with both as HL7 PV1-3 gives
    them; without physical types, the second location."""
    typed = {p.physical_type: p.name for p in places if p.physical_type in _BED_TYPES}
    if typed:
        room, bed = typed.get("ro"), typed.get("bd")
        return f"{room}/{bed}" if room and bed else bed or room
    others = [p for p in places[1:] if p is not ward and p.physical_type is None]
    return others[0].name if others else None


def _ward_otherwise(resource: dict[str, Any]) -> str | None:
    """Without a location: the service provider, else the encounter class."""
    provider = _obj(resource, "serviceProvider", "")
    if provider is not None:
        name = _text(provider, "display", "serviceProvider")
        if name:
            return name
    encounter_class = _obj(resource, "class", "")
    if encounter_class is not None:
        return _text(encounter_class, "display", "class") or _text(encounter_class, "code", "class")
    return None


# Observations ------------------------------------------------------------------------------

_PREGNANCY_CODES = frozenset({"82810-3", "11449-6"})
# Estimated due date: by any method, from the last menstrual period, from the ovulation date.
_DUE_DATE_CODES = frozenset({"11778-8", "11779-6", "11780-4"})
_PREGNANCY_ANSWERS = {
    "77386006": "pregnant",  # SNOMED Pregnant
    "LA15173-0": "pregnant",
    "60001007": "not-pregnant",  # SNOMED Not pregnant
    "LA26683-5": "not-pregnant",
    "261665006": "unknown",
    "LA4489-6": "unknown",
}
_SKIPPED_STATUS = frozenset({"cancelled", "entered-in-error"})


@dataclass(frozen=True)
class _Reading:
    """A value[x] as read: the number when there is one, its unit and the text as received."""

    field: str
    number: float | None
    units: tuple[str, ...]
    original_value: str | None
    original_unit: str | None
    flags: tuple[Flag, ...] = ()


def _reading(node: dict[str, Any], path: str) -> _Reading | None:
    """The value[x] of an Observation or component, or ``None`` when it has none."""
    quantity = _obj(node, "valueQuantity", path)
    if quantity is not None:
        return _quantity_reading(quantity, _join(path, "valueQuantity"))
    number = _number(node, "valueInteger", path)
    if number is not None:
        return _Reading(_join(path, "valueInteger"), number, (), _number_text(node), None)
    for key in ("valueString", "valueCodeableConcept", "valueBoolean", "valueRange"):
        if key in node:
            value = node[key]
            shown = value if isinstance(value, str) else _show(value)
            detail = f"{key} is not a number"
            flag = Flag(code=FlagCode.NON_NUMERIC_VALUE, detail=detail)
            return _Reading(_join(path, key), None, (), shown, None, (flag,))
    return None


def _quantity_reading(quantity: dict[str, Any], path: str) -> _Reading:
    number = _number(quantity, "value", path)
    code, unit = _text(quantity, "code", path), _text(quantity, "unit", path)
    comparator = _text(quantity, "comparator", path)
    original = None if number is None else _number_text(quantity)
    flags: tuple[Flag, ...] = ()
    if comparator and original is not None:
        original = comparator + original
        detail = f"value given as {original}, not an exact number"
        flags, number = (Flag(code=FlagCode.NON_NUMERIC_VALUE, detail=detail),), None
    elif number is None:
        flags = (Flag(code=FlagCode.NON_NUMERIC_VALUE, detail="quantity without a value"),)
    units = tuple(u for u in (code, unit) if u)
    return _Reading(path, number, units, original, unit or code, flags)


def _canonical(
    terminology: Terminology, concept: Concept, number: float | None, units: tuple[str, ...]
) -> tuple[float, str] | None:
    """The number in the concept's canonical unit, trying the UCUM code then the label."""
    if number is None:
        return None
    for unit in units:
        try:
            return terminology.to_canonical(concept.name, number, unit)
        except UnknownUnit:
            continue
    return None


def _time(resource: dict[str, Any]) -> datetime:
    time = (
        _datetime(resource, "effectiveDateTime", "")
        or _period_start(resource, "effectivePeriod", "")
        or _datetime(resource, "effectiveInstant", "")
        or _datetime(resource, "issued", "")
    )
    if time is None:
        raise EntryProblem("effective[x]", "the time of the observation (effective[x] or issued)")
    return time


def _is_laboratory(resource: dict[str, Any]) -> bool:
    for path, category in _objects(resource, "category", ""):
        if any(c.code == "laboratory" for c in _codings(category, path)):
            return True
    return False


def _observation(entry: ResourceEntry) -> list[AnyFact]:
    resource = entry.resource
    if _text(resource, "status", "") in _SKIPPED_STATUS:
        return []
    codings = _codings(_obj(resource, "code", ""), "code")
    if _has_loinc(codings, _PREGNANCY_CODES):
        return [_pregnancy(entry)]
    if _has_loinc(codings, _DUE_DATE_CODES):
        return _due_date_alone(entry)
    time = _time(resource)
    facts: list[AnyFact] = []
    components = list(_objects(resource, "component", ""))
    reading = _reading(resource, "")
    if reading is not None or not components:
        laboratory = _is_laboratory(resource)
        fact = _measurement(entry, resource, "", codings, reading, time, laboratory)
        facts.extend([fact] if fact else [])
    for index, (path, component) in enumerate(components):
        component_codings = _codings(_obj(component, "code", path), _join(path, "code"))
        component_reading = _reading(component, path)
        suffix = f"/component[{index}]"
        fact = _measurement(
            entry, component, path, component_codings, component_reading, time, False, suffix
        )
        facts.extend([fact] if fact else [])
    return facts


def _measurement(
    entry: ResourceEntry,
    node: dict[str, Any],
    path: str,
    codings: list[Coding],
    reading: _Reading | None,
    time: datetime,
    laboratory: bool,
    suffix: str = "",
) -> LabResult | Observation | None:
    """A LabResult or Observation from a coded value; ``None`` for an unmapped non-lab code."""
    terminology = entry.terminology
    concept, coding = None, codings[0] if codings else None
    for candidate in codings:
        concept = terminology.lab_concept(candidate.system, candidate.code)
        if concept is not None:
            coding = candidate
            break
    if coding is None or (concept is None and not laboratory):
        return None
    reading = reading or _Reading(
        _join(path, "value[x]"), None, (), None, None,
        (Flag(code=FlagCode.NON_NUMERIC_VALUE, detail="no value[x]"),),
    )  # fmt: skip
    units = reading.units or _implied(terminology, coding)
    value, unit, flags = _normalised(terminology, concept, reading, units)
    fields = {
        "fact_id": entry.fact_id(suffix),
        "patient_id": entry.patient_id("subject"),
        "source": entry.source(reading.field),
        "flags": reading.flags + flags,
        "concept": concept.name if concept else None,
        "code": coding,
        "value": value,
        "unit": unit,
        "original_value": reading.original_value,
        "original_unit": reading.original_unit,
        "time": time,
    }
    if concept is not None and concept.kind == "observation":
        return Observation(**fields)
    return LabResult(**fields, **_lab_extras(entry, node, path, concept, units))


def _implied(terminology: Terminology, coding: Coding) -> tuple[str, ...]:
    unit = terminology.implied_unit(coding.system, coding.code)
    return (unit,) if unit else ()


def _normalised(
    terminology: Terminology, concept: Concept | None, reading: _Reading, units: tuple[str, ...]
) -> tuple[float | None, str | None, tuple[Flag, ...]]:
    if concept is None:
        flag = Flag(code=FlagCode.UNMAPPED_CODE, detail="laboratory code not mapped to a concept")
        unit = terminology.canonical_unit(units[0]) if units else None
        return reading.number, unit, (flag,)
    if reading.number is None:
        return None, concept.unit, ()
    converted = _canonical(terminology, concept, reading.number, units)
    if converted is None:
        detail = f"unit {reading.original_unit!r} cannot be converted to {concept.unit}"
        return None, concept.unit, (Flag(code=FlagCode.UNKNOWN_UNIT, detail=detail),)
    return converted[0], converted[1], ()


def _lab_extras(
    entry: ResourceEntry,
    node: dict[str, Any],
    path: str,
    concept: Concept | None,
    units: tuple[str, ...],
) -> dict[str, Any]:
    low = high = None
    first = _first(node, "referenceRange", path)
    if first is not None:
        range_path, reference_range = first
        low = _range_end(entry.terminology, concept, reference_range, "low", range_path, units)
        high = _range_end(entry.terminology, concept, reference_range, "high", range_path, units)
    return {
        "reference_low": low,
        "reference_high": high,
        "abnormal_flag": _interpretation(node, path),
    }


def _interpretation(node: dict[str, Any], path: str) -> str | None:
    first = _first(node, "interpretation", path)
    if first is None:
        return None
    item_path, item = first
    return next((c.code for c in _codings(item, item_path)), None) or _text(item, "text", item_path)


def _range_end(
    terminology: Terminology,
    concept: Concept | None,
    reference_range: dict[str, Any],
    end: str,
    path: str,
    units: tuple[str, ...],
) -> float | None:
    quantity = _obj(reference_range, end, path)
    if quantity is None:
        return None
    number = _number(quantity, "value", _join(path, end))
    own = tuple(u for u in (_text(quantity, "code", path), _text(quantity, "unit", path)) if u)
    if concept is None:
        return number
    converted = _canonical(terminology, concept, number, own or units)
    return converted[0] if converted else None


def _has_loinc(codings: list[Coding], codes: frozenset[str]) -> bool:
    return any(c.code in codes and normalise_system(c.system) == "LOINC" for c in codings)


def _pregnancy(entry: ResourceEntry) -> Pregnancy:
    """A pregnancy status Observation, with the due date its component gives (11778-8)."""
    resource = entry.resource
    answer = _obj(resource, "valueCodeableConcept", "")
    codes = [c.code for c in _codings(answer, "valueCodeableConcept")]
    status = next((_PREGNANCY_ANSWERS[c] for c in codes if c in _PREGNANCY_ANSWERS), "unknown")
    flags: tuple[Flag, ...] = ()
    if status == "unknown" and codes:
        flags = (_unmapped("pregnancy status answer", _codings(answer, "valueCodeableConcept")),)
    return Pregnancy(
        fact_id=entry.fact_id(),
        patient_id=entry.patient_id("subject"),
        source=entry.source("valueCodeableConcept" if answer else ""),
        flags=flags,
        status=status,
        recorded=_time(resource),
        estimated_due_date=_component_due_date(resource),
    )


def _component_due_date(resource: dict[str, Any]) -> date | None:
    for path, component in _objects(resource, "component", ""):
        codings = _codings(_obj(component, "code", path), _join(path, "code"))
        if _has_loinc(codings, _DUE_DATE_CODES):
            return _calendar_date(component, path)
    return None


def _due_date_alone(entry: ResourceEntry) -> list[AnyFact]:
    """An estimated due date Observation by itself: it is only given for a pregnancy."""
    due = _calendar_date(entry.resource, "")
    if due is None:
        return []
    pregnancy = Pregnancy(
        fact_id=entry.fact_id(),
        patient_id=entry.patient_id("subject"),
        source=entry.source("valueDateTime"),
        status="pregnant",
        recorded=_time(entry.resource),
        estimated_due_date=due,
    )
    return [pregnancy]


def _calendar_date(node: dict[str, Any], path: str) -> date | None:
    """A due date (``valueDateTime``) as the calendar day written, never shifted to UTC."""
    value = _text(node, "valueDateTime", path)
    if value is None:
        return None
    if parse_fhir_datetime(value) is None:
        raise EntryProblem(_join(path, "valueDateTime"), _DATETIME_EXPECTED, value)
    day = parse_fhir_datetime(value[:10])
    assert day is not None  # the date part of a valid dateTime
    return day.date()


# Conditions and allergies ------------------------------------------------------------------

_CLINICAL_STATUS = {
    "active": "active",
    "recurrence": "active",
    "relapse": "active",
    "inactive": "inactive",
    "remission": "resolved",
    "resolved": "resolved",
}
_REFUTED = frozenset({"refuted", "entered-in-error"})


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
    if _concept_code(resource, "verificationStatus", "") in _REFUTED:
        return []
    code = _obj(resource, "code", "")
    codings = _codings(code, "code")
    terminology = entry.terminology
    icd10 = next((c for c in codings if normalise_system(c.system) == "ICD10"), None)
    text = _text(code, "text", "code") if code else None
    coding = icd10 or (codings[0] if codings else None)
    # ICD-10 as sent (normalised), else through the SNOMED → ICD-10 table
    icd10_code = next((i for c in codings if (i := terminology.icd10(c.system, c.code))), None)
    flags: tuple[Flag, ...] = ()
    if coding is None:
        if not text:
            raise EntryProblem("code", "a coded or named condition", code)
        coding = Coding(system=None, code=text, display=text)
        flags = (_unmapped("condition", [coding]),)
    abatement = _datetime(resource, "abatementDateTime", "")
    abatement_period = _obj(resource, "abatementPeriod", "")
    if abatement is None and abatement_period is not None:
        abatement = _datetime(abatement_period, "end", "abatementPeriod")
    onset = _datetime(resource, "onsetDateTime", "") or _period_start(resource, "onsetPeriod", "")
    return [
        Condition(
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


def _allergy_atc(terminology: Terminology, coding: Coding) -> tuple[str, ...]:
    return terminology.allergy_atc(coding.system, coding.code)


def _allergy(entry: ResourceEntry) -> list[AnyFact]:
    resource = entry.resource
    if _concept_code(resource, "verificationStatus", "") in _REFUTED:
        return []
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
        codings = [Coding(system=None, code=text, display=text)]
    terminology = entry.terminology
    atc = tuple(
        dict.fromkeys(a for c in codings for a in terminology.allergy_atc(c.system, c.code))
    )
    known_non_drug = any(terminology.allergy_is_drug(c.system, c.code) is False for c in codings)
    return [
        Allergy(
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
    "Encounter": _stay,
    "Observation": _observation,
    "Condition": _condition,
    "AllergyIntolerance": _allergy,
}
