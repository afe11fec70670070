"""Alerts as FHIR R4 ``DetectedIssue`` resources (and a ``collection`` Bundle of them).

The export is plain JSON (dicts), built from the :class:`~vigie.engine.alerts.Alert` alone; the
engine never loads ``fhir.resources`` (the layering forbids it), the tests validate every
produced resource with ``fhir.resources.R4B``. Mapping, element by element (R4
https://hl7.org/fhir/R4/detectedissue.html):

``id`` / ``identifier``
    The stable alert id; ``identifier.system`` is ``urn:vigie:alert``.
``status``
    R4 binds it to ObservationStatus (registered | preliminary | final | amended | corrected |
    cancelled | entered-in-error | unknown). From the alert's lifecycle (:class:`Lifecycle`,
    kept by the alert store; none given: ``open``), :data:`STATUS`:
    ``open`` → ``preliminary`` (awaits the pharmacist's review);
    ``intervention`` → ``final`` with a ``mitigation`` (reviewed and acted upon);
    ``dismissed`` → ``final`` without mitigation ("complete, no further action needed":
    reviewed, nothing to do), except a dismissal for ``data_error`` → ``entered-in-error``
    (raised from wrong data, it should never have existed);
    ``resolved_by_data`` → ``cancelled`` (the review never completed: the situation ended
    first). R5's own DetectedIssue status (preliminary | final | entered-in-error | mitigated)
    reads the same way, ``mitigated`` being R4's final + mitigation. The mapping loses the
    Vigie status, so it is in the ``urn:vigie:extension:lifecycle`` extension (sub-extensions
    ``status``, ``changed``, ``actor``, ``reasonCode``, ``reason``).
``severity``
    DetectedIssue.severity is ``high | moderate | low``: ``critical`` and ``major`` → ``high``,
    ``moderate`` → ``moderate``, ``minor`` → ``low`` (:data:`SEVERITY`). The Vigie severity itself
    stays in the ``urn:vigie:extension:rule`` extension (``severity``), since two map to ``high``.
``code``
    The SFPC problem, coded in the Interop'Santé code system
    ``https://hl7.fr/ig/fhir/medication/CodeSystem/fr-pharmaceutical-intervention-problem-code``
    (display from the code system), ``text`` the rule's title.
``patient``, ``identifiedDateTime``, ``implicated``, ``detail``
    ``Patient/<patient_id>``; the evaluation time (naive UTC, written with ``Z``); one
    ``MedicationRequest/<order_id>`` per drug line (display the line's label); the message.
``reference``
    Absent: R4 types it ``uri`` and the rules' references are citations ("RCP metformine 4.3"),
    not URIs. The citation is in the rule extension (``reference``) and in the narrative.
``evidence``
    One entry per evidence item, in the alert's order. ``code`` names what the item is: a coding
    when the value has a standard system (ATC for a drug line, ICD-10 for a condition) and
    always a ``text`` "<binding>: <code> = <value> <unit> (<time>)". ``detail`` references the
    fact: ``Observation`` (lab, observation, pregnancy), ``MedicationRequest``,
    ``MedicationAdministration``, ``Patient``, ``Condition``, ``AllergyIntolerance``,
    ``Encounter`` (stay) as ``Reference.type``, the Vigie fact id as ``Reference.identifier``
    (system ``urn:vigie:fact``), and ``Reference.reference`` ``<Type>/<id>`` when the fact was
    read from a FHIR resource; a derived value (clearance, eGFR, age, daily dose, MME)
    references the facts it was computed from. Where a
    fact came from is the ``urn:vigie:extension:fact-source`` extension on its Reference
    (sub-extensions ``feed``, ``document``, ``messageId``, ``position``), and its
    ``Reference.display`` says it in words.
``mitigation``
    For an ``intervention`` only: ``action`` the SFPC intervention type (the type code system
    above) when the pharmacist gave one, ``text`` what was done; ``date`` the decision's time;
    ``author.display`` who decided (a name, not a Practitioner resource). Absent otherwise: it
    records actions taken.
``extension``
    ``urn:vigie:extension:rule`` (sub-extensions ``id``, ``version``, ``pack``, ``packVersion``,
    ``file``, ``line``, ``severity``, ``reference``) and
    ``urn:vigie:extension:suggested-intervention`` (the rule's SFPC intervention type, coded in
    ``.../CodeSystem/fr-pharmaceutical-intervention-type-code``). Extension URLs are logical
    names (FHIR allows them), documented here and in the README; no StructureDefinition is
    published.
``text``
    A generated narrative: title, severity, message, rule (its file's name and line) and its
    citation.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import PurePath
from typing import Any, Final, Literal

from vigie.engine.alerts import Alert, Evidence
from vigie.facts import Source
from vigie.terminology.sfpc import PROBLEM_DISPLAYS

__all__ = [
    "ALERT_IDENTIFIER_SYSTEM",
    "INTERVENTION_SYSTEM",
    "PROBLEM_SYSTEM",
    "SEVERITY",
    "STATUS",
    "Lifecycle",
    "alert_to_detected_issue",
    "alerts_to_bundle",
]

JSON = dict[str, Any]

ALERT_IDENTIFIER_SYSTEM: Final = "urn:vigie:alert"
FACT_IDENTIFIER_SYSTEM: Final = "urn:vigie:fact"
RULE_EXTENSION: Final = "urn:vigie:extension:rule"
SOURCE_EXTENSION: Final = "urn:vigie:extension:fact-source"
INTERVENTION_EXTENSION: Final = "urn:vigie:extension:suggested-intervention"
LIFECYCLE_EXTENSION: Final = "urn:vigie:extension:lifecycle"

# Interop'Santé code systems (the FSH code systems of hl7.fhir.fr.medication; copy in
# shared/data/fr-medication-ig/sfpc_pharmaceutical_intervention_codesystems/). The canonical
# URL is the IG's (https://hl7.fr/ig/fhir/medication) + /CodeSystem/ + the code system's Id.
_IG: Final = "https://hl7.fr/ig/fhir/medication/CodeSystem/"
PROBLEM_SYSTEM: Final = _IG + "fr-pharmaceutical-intervention-problem-code"
INTERVENTION_SYSTEM: Final = _IG + "fr-pharmaceutical-intervention-type-code"

# Displays exactly as in the code system files, spelling included (the problem codes' in
# terminology/sfpc.py; FrPharmaceuticalInterventionTypeCode.fsh below); a test keeps them equal.
INTERVENTION_DISPLAYS: Final = {
    "1": "Ajout (prescrption nouvelle)",
    "2": "Arrêt",
    "3": "Substitution/echange",
    "4": "Choix de la voie d'administration",
    "5": "Suivi thérapeutique",
    "6": "Optimisation modalités d'administration",
    "7": "Adaptation posologique",
}

SEVERITY: Final = {"critical": "high", "major": "high", "moderate": "moderate", "minor": "low"}
"""Vigie severity → DetectedIssue.severity (R4 value set detectedissue-severity)."""

LifecycleStatus = Literal["open", "resolved_by_data", "intervention", "dismissed"]

STATUS: Final = {
    "open": "preliminary",
    "intervention": "final",
    "dismissed": "final",
    "resolved_by_data": "cancelled",
}
"""Alert lifecycle status → DetectedIssue.status (R4 ObservationStatus; see the module
docstring), but for a dismissal for ``data_error`` (``entered-in-error``)."""


@dataclass(frozen=True)
class Lifecycle:
    """Where an alert is in its lifecycle, as the alert store keeps it (``vigie.store.alerts``):
    its status, when and by whom it was set, and the reason — a dismissal's reason code and
    text, or an intervention's SFPC type and text."""

    status: LifecycleStatus = "open"
    changed: datetime | None = None
    actor: str | None = None
    reason_code: str | None = None
    reason: str | None = None

    def fhir_status(self) -> str:
        if self.status == "dismissed" and self.reason_code == "data_error":
            return "entered-in-error"
        return STATUS[self.status]


# Fact kind → the FHIR resource type a reference to that fact names.
RESOURCE_TYPE: Final = {
    "lab": "Observation",
    "observation": "Observation",
    "pregnancy": "Observation",
    "medication_order": "MedicationRequest",
    "medication_administration": "MedicationAdministration",
    "patient": "Patient",
    "condition": "Condition",
    "allergy": "AllergyIntolerance",
    "stay": "Encounter",
}

# A fact id the FHIR connector gives: ``fhir:<resource type>/<logical id>`` (a suffix after the
# id, for one ingredient of a combination, is not a resource of its own).
_FHIR_FACT_ID: Final = re.compile(r"fhir:([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")

# Evidence codes with a standard system, by fact kind.
_CODE_SYSTEM: Final = {
    "medication_order": "http://www.whocc.no/atc",
    "medication_administration": "http://www.whocc.no/atc",
    "condition": "http://hl7.org/fhir/sid/icd-10",
}


def fhir_datetime(value: datetime) -> str:
    """A FHIR dateTime: naive times are UTC (the fact model's convention) and written with Z."""
    if value.tzinfo is not None:
        offset = value.utcoffset()
        if offset is not None and offset.total_seconds() == 0:
            return value.replace(tzinfo=None).isoformat() + "Z"
        return value.isoformat()
    return value.isoformat() + "Z"


def _string_extension(url: str, value: str | None) -> Iterator[JSON]:
    if value:
        yield {"url": url, "valueString": value}


def _source_extension(source: Source) -> JSON:
    parts = [
        *_string_extension("feed", source.feed),
        *_string_extension("document", source.document),
        *_string_extension("messageId", source.message_id),
        *_string_extension("position", source.position),
    ]
    return {"url": SOURCE_EXTENSION, "extension": parts}


def _source_text(source: Source) -> str:
    where = [source.feed, source.document, source.message_id, source.position]
    return " ".join(part for part in where if part)


def _facts(item: Evidence) -> Iterator[Evidence]:
    """The facts behind an evidence item: itself, or the inputs of a derived value (nested)."""
    if item.kind == "derived":
        for child in item.inputs:
            yield from _facts(child)
    elif item.fact_id is not None:
        yield item


def _fact_reference(item: Evidence) -> JSON:
    """A Reference to the fact behind an evidence item.

    Fact ids are Vigie's (``LAB1``, ``fhir:Observation/abc``, an HL7 order line...), not ids on
    a FHIR server: the fact is named by ``identifier`` (system ``urn:vigie:fact``) and ``type``;
    a fact read from a FHIR resource (``fhir:<Type>/<id>``) also gets the literal reference
    ``<Type>/<id>`` to that resource.
    """
    reference: JSON = {}
    if item.source is not None:
        reference["extension"] = [_source_extension(item.source)]
    fact_id = item.fact_id or ""
    from_fhir = _FHIR_FACT_ID.fullmatch(fact_id)
    if from_fhir is not None:
        reference["reference"] = f"{from_fhir[1]}/{from_fhir[2]}"
        reference["type"] = from_fhir[1]
    elif item.kind in RESOURCE_TYPE:
        reference["type"] = RESOURCE_TYPE[item.kind]
    reference["identifier"] = {"system": FACT_IDENTIFIER_SYSTEM, "value": fact_id}
    display = f"{item.kind} {fact_id}"
    if item.source is not None:
        display += f" ({_source_text(item.source)})"
    reference["display"] = display
    return reference


def evidence_text(item: Evidence) -> str:
    """``<binding>: <code> = <value> <unit> (<time>)``, the parts that are known."""
    text = f"{item.name}: {item.code or item.kind}"
    if item.value is not None:
        value = f"{item.value:g}" if isinstance(item.value, float) else str(item.value)
        text += f" = {value}" + (f" {item.unit}" if item.unit else "")
    if item.time is not None:
        text += f" ({fhir_datetime(item.time)})"
    return text


def _evidence(item: Evidence) -> JSON:
    code: JSON = {"text": evidence_text(item)}
    system = _CODE_SYSTEM.get(item.kind)
    if system is not None and item.code:
        code["coding"] = [{"system": system, "code": item.code}]
    entry: JSON = {"code": [code]}
    seen: set[tuple[str, str | None]] = set()
    details = []
    for fact in _facts(item):
        key = (fact.kind, fact.fact_id)
        if key not in seen:
            seen.add(key)
            details.append(_fact_reference(fact))
    if details:
        entry["detail"] = details
    return entry


def _rule_extension(alert: Alert) -> JSON:
    rule = alert.rule
    parts: list[JSON] = [
        {"url": "id", "valueString": rule.id},
        {"url": "version", "valueInteger": rule.version},
        *_string_extension("pack", rule.pack),
        *_string_extension("packVersion", rule.pack_version),
        *_string_extension("file", rule.file),
        {"url": "line", "valueInteger": rule.line},
        {"url": "severity", "valueCode": alert.severity},
        *_string_extension("reference", alert.reference),
    ]
    return {"url": RULE_EXTENSION, "extension": parts}


def _intervention_extension(alert: Alert) -> JSON:
    code = alert.intervention.code
    coding = {"system": INTERVENTION_SYSTEM, "code": code}
    if code in INTERVENTION_DISPLAYS:
        coding["display"] = INTERVENTION_DISPLAYS[code]
    return {"url": INTERVENTION_EXTENSION, "valueCodeableConcept": {"coding": [coding]}}


def _narrative(alert: Alert) -> JSON:
    rule = alert.rule
    lines = [
        f"<p><b>{escape(alert.title)}</b> ({escape(alert.severity)})</p>",
        f"<p>{escape(alert.message)}</p>",
        f"<p>Règle {escape(rule.id)} v{rule.version}, {escape(PurePath(rule.file).name)}:"
        f"{rule.line}</p>",
    ]
    if alert.reference:
        lines.append(f"<p>Référence : {escape(alert.reference)}</p>")
    div = '<div xmlns="http://www.w3.org/1999/xhtml">' + "".join(lines) + "</div>"
    return {"status": "generated", "div": div}


def _lifecycle_extension(lifecycle: Lifecycle) -> JSON:
    parts: list[JSON] = [{"url": "status", "valueCode": lifecycle.status}]
    if lifecycle.changed is not None:
        parts.append({"url": "changed", "valueDateTime": fhir_datetime(lifecycle.changed)})
    parts.extend(_string_extension("actor", lifecycle.actor))
    if lifecycle.reason_code:
        parts.append({"url": "reasonCode", "valueCode": lifecycle.reason_code})
    parts.extend(_string_extension("reason", lifecycle.reason))
    return {"url": LIFECYCLE_EXTENSION, "extension": parts}


def _mitigation(lifecycle: Lifecycle) -> JSON:
    """An intervention as the action taken: SFPC type when given, and what was done."""
    action: JSON = {}
    code = lifecycle.reason_code
    if code:
        coding = {"system": INTERVENTION_SYSTEM, "code": code}
        if code in INTERVENTION_DISPLAYS:
            coding["display"] = INTERVENTION_DISPLAYS[code]
        action["coding"] = [coding]
    action["text"] = lifecycle.reason or "intervention"
    mitigation: JSON = {"action": action}
    if lifecycle.changed is not None:
        mitigation["date"] = fhir_datetime(lifecycle.changed)
    if lifecycle.actor:
        mitigation["author"] = {"display": lifecycle.actor}
    return mitigation


def alert_to_detected_issue(alert: Alert, lifecycle: Lifecycle | None = None) -> JSON:
    """One alert as a FHIR R4 ``DetectedIssue`` (a JSON-ready dict); see the module docstring.

    ``lifecycle`` is where the alert is in its lifecycle; none: open, as evaluated, and the
    issue has no lifecycle extension.
    """
    status = (lifecycle or Lifecycle()).fhir_status()
    extensions = [_rule_extension(alert), _intervention_extension(alert)]
    if lifecycle is not None:
        extensions.append(_lifecycle_extension(lifecycle))
    problem = {"system": PROBLEM_SYSTEM, "code": alert.problem.code}
    if alert.problem.code in PROBLEM_DISPLAYS:
        problem["display"] = PROBLEM_DISPLAYS[alert.problem.code]
    issue: JSON = {
        "resourceType": "DetectedIssue",
        "id": alert.id,
        "text": _narrative(alert),
        "extension": extensions,
        "identifier": [{"system": ALERT_IDENTIFIER_SYSTEM, "value": alert.id}],
        "status": status,
        "code": {"coding": [problem], "text": alert.title},
        "severity": SEVERITY[alert.severity],
        "patient": {"reference": f"Patient/{alert.patient_id}"},
        "identifiedDateTime": fhir_datetime(alert.as_of),
    }
    if alert.drugs:
        issue["implicated"] = [
            {"reference": f"MedicationRequest/{drug.order_id}"}
            | ({"display": drug.label} if drug.label else {})
            for drug in alert.drugs
        ]
    if alert.evidence:
        issue["evidence"] = [_evidence(item) for item in alert.evidence]
    issue["detail"] = alert.message
    if lifecycle is not None and lifecycle.status == "intervention":
        issue["mitigation"] = [_mitigation(lifecycle)]
    return issue


def alerts_to_bundle(
    alerts: Iterable[Alert],
    timestamp: datetime | None = None,
    lifecycles: Mapping[str, Lifecycle] | None = None,
) -> JSON:
    """A ``collection`` Bundle of the alerts' DetectedIssues, in the given order.

    Each entry's ``fullUrl`` is a UUID derived from the alert id (the same alert always gets the
    same one); ``timestamp`` (an instant) is written when given; ``lifecycles`` gives alerts'
    lifecycles by alert id (an alert not in it is exported as open, without the extension).
    """
    known = lifecycles or {}
    bundle: JSON = {"resourceType": "Bundle", "type": "collection"}
    if timestamp is not None:
        bundle["timestamp"] = fhir_datetime(timestamp)
    bundle["entry"] = [
        {
            "fullUrl": uuid.uuid5(uuid.NAMESPACE_URL, f"{ALERT_IDENTIFIER_SYSTEM}:{a.id}").urn,
            "resource": alert_to_detected_issue(a, known.get(a.id)),
        }
        for a in alerts
    ]
    return bundle
