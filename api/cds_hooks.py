"""CDS Hooks services (1.x and 2.0) on the engine: discovery, three hooks, cards and feedback.

Prescribing software calls Vigie while an order is written (``order-select``), before it is
signed (``order-sign``) and when a pharmacist verifies a patient's medication
(``medication-verify``, Vigie's own hook). Each call carries the patient in ``context`` and the
patient's record in ``prefetch`` (FHIR R4 resources); Vigie turns them into facts with the FHIR
connector (``vigie.connectors.fhir.parse``), evaluates the rule packs on the patient's record as
of now, and answers with cards. See ``docs/cds-hooks.md``.

Mounting: ``app.include_router(cds_router(...))``; the router handles its own errors (every
error is an ``OperationOutcome`` with a 4xx status and a message saying what to fix; an
internal error is a 500 without the library's exception text).

Choices, each written once here:

- Draft orders are evaluated as if signed now: ``status`` ``draft`` reads ``active`` and a
  start later than now reads now (a rule sees the line the prescriber is about to sign).
- ``order-sign`` answers with the alerts that involve one of ``draftOrders``, ``order-select``
  with those that involve one of ``selections``, ``medication-verify`` with every alert.
- :data:`INDICATOR`: ``critical`` → ``critical``, ``major`` → ``warning``, ``moderate`` and
  ``minor`` → ``info``.
- A card's ``uuid`` is a UUID 5 of the alert id and the ``hookInstance``: the same alert in the
  same hook instance is the same card (a client may call twice), another instance a new card.
- A suggestion is offered only where the action is obvious: the rule's SFPC intervention is
  ``2`` (stop) and a line of the alert is a draft order with an id → "remove the draft order"
  (an action of type ``delete`` on ``MedicationRequest/<id>``, CDS Hooks 2.0 ``resourceId``);
  one suggestion per such line, hence ``selectionBehavior`` ``at-most-one``.
- The prefetch is read by the FHIR connector's fast path with its element check (every
  element name, JSON shape, required element and choice of the resources read, against R4B):
  the facts of full validation at a fifth of its cost; ``validate_prefetch`` validates it with
  the ``fhir.resources`` models instead. A bad resource is a 400 naming its JSON path and
  what was expected there.
- Prefetch values ``null`` or absent are fetched from ``fhirServer`` (with
  ``fhirAuthorization``'s bearer token, through httpx) when the request gives one; a required
  key still missing is a 412 with an ``OperationOutcome``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeVar

import orjson
import pydantic
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from vigie.connectors.base import FeedError, RawMessage
from vigie.connectors.fhir import parse as parse_fhir
from vigie.connectors.fhir import parse_decoded as parse_fhir_decoded
from vigie.engine import Alert, EngineError, LoadedPack, PatientRecord, evaluate, load_pack
from vigie.engine.alerts import Evidence
from vigie.engine.evaluate import current_stay, normalise_time
from vigie.engine.fhir_export import INTERVENTION_DISPLAYS, evidence_text, fhir_datetime
from vigie.engine.site_config import SiteConfig
from vigie.errors import VigieError
from vigie.facts import AnyFact, MedicationOrder
from vigie.store.service import IssuedCard, ServiceError, ServiceStore
from vigie.terminology.sfpc import PROBLEM_DISPLAYS

if TYPE_CHECKING:
    import httpx

__all__ = [
    "INDICATOR",
    "OVERRIDE_REASONS",
    "OVERRIDE_SYSTEM",
    "SERVICES",
    "SUMMARY_LIMIT",
    "CardFeedback",
    "CdsHooks",
    "CdsHooksError",
    "CdsService",
    "Evaluator",
    "OverrideReason",
    "PackEvaluator",
    "PrefetchQuery",
    "WardOf",
    "alert_card",
    "cds_router",
    "default_packs",
    "pack_evaluator",
]

log = logging.getLogger(__name__)

INDICATOR: Final = {"critical": "critical", "major": "warning", "moderate": "info", "minor": "info"}
"""Vigie severity → card indicator (CDS Hooks: info | warning | critical)."""

SUMMARY_LIMIT: Final = 140
"""The spec: a card's summary SHOULD be under 140 characters; ours always is."""

RULE_TOPIC_SYSTEM: Final = "urn:vigie:rule"
OVERRIDE_SYSTEM: Final = "urn:vigie:cds-hooks:override-reason"
# UUID 5 namespace of card and suggestion ids (fixed: ids must not change between releases).
CARD_NAMESPACE: Final = uuid.UUID("6f1c2a52-3b0e-5d1f-9a57-1c1e0a7b9d41")
MAX_BODY_BYTES: Final = 20 * 1024 * 1024
REMEMBERED_CARDS: Final = 10_000  # cards kept for feedback (the oldest forgotten first)
FHIR_TIMEOUT_SECONDS: Final = 5.0
FHIR_MAX_PAGES: Final = 100
# FHIR logical ids (R4 ``id``): also what makes a patient id safe inside a fallback query.
_FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_SEVERITY_RANK: Final = {"critical": 0, "major": 1, "moderate": 2, "minor": 3}
_STOP: Final = "2"  # SFPC intervention type "Arrêt"

Evaluator = Callable[[PatientRecord, datetime], list[Alert]]
"""The alerts of one patient's record as of a (naive UTC) time."""


class CdsHooksError(VigieError):
    """A request the service cannot answer: its HTTP status, an OperationOutcome issue code
    and a message saying what is wrong (never a library's exception text)."""

    def __init__(self, status: int, message: str, code: str = "invalid") -> None:
        self.status, self.code, self.message = status, code, message
        super().__init__(message)

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.message, self.code)


def operation_outcome(message: str, code: str, severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": message}],
    }


# Services and prefetch ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PrefetchQuery:
    """One prefetch key: its FHIR query template (prefetch tokens ``{{context.x}}`` and
    CDS Hooks 2.0's ``{{today() - N days}}``), and whether the service cannot work without it."""

    key: str
    template: str
    required: bool = True

    def render(self, context: Mapping[str, Any], today: date) -> str:
        return _TOKEN.sub(
            lambda match: _token_value(match[1].strip(), context, today), self.template
        )


_TOKEN: Final = re.compile(r"\{\{(.+?)\}\}")
_TODAY: Final = re.compile(r"today\(\)(?:\s*-\s*(\d+)\s*days?)?")


def _token_value(token: str, context: Mapping[str, Any], today: date) -> str:
    relative = _TODAY.fullmatch(token)
    if relative is not None:
        return (today - timedelta(days=int(relative[1] or 0))).isoformat()
    value: Any = context
    for part in token.removeprefix("context.").split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if not isinstance(value, str) or not _FHIR_ID.fullmatch(value):
        raise CdsHooksError(400, f"prefetch token {{{{{token}}}}}: no id in the request context")
    return value


RECENT_DAYS: Final = 90

PREFETCH: Final = (
    PrefetchQuery("patient", "Patient/{{context.patientId}}"),
    PrefetchQuery("medications", "MedicationRequest?patient={{context.patientId}}&status=active"),
    PrefetchQuery(
        "observations",
        "Observation?patient={{context.patientId}}&date=ge{{today() - " + f"{RECENT_DAYS} days}}}}",
    ),
    # Optional: the allergy, pregnancy and bleeding-history rules read them; without them (and
    # no FHIR server) those rules see no allergy or condition.
    PrefetchQuery("allergies", "AllergyIntolerance?patient={{context.patientId}}", False),
    PrefetchQuery("conditions", "Condition?patient={{context.patientId}}", False),
)


@dataclass(frozen=True)
class CdsService:
    """One CDS service: its id, hook, texts, and what its context carries."""

    id: str
    hook: str
    title: str
    description: str
    draft_orders: bool  # context.draftOrders required (order hooks)
    selections: bool  # context.selections required (order-select)
    prefetch: tuple[PrefetchQuery, ...] = PREFETCH

    def discovery(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": {query.key: query.template for query in self.prefetch},
        }


SERVICES: Final = (
    CdsService(
        "vigie-order-sign",
        "order-sign",
        "Vigie: medication order check before signing",
        "Checks the draft medication orders against the patient's active medications, recent "
        "labs, allergies and conditions with the Vigie rule packs (renal dosing, biology, "
        "anticoagulation, interactions...); one card per problem involving a draft order.",
        draft_orders=True,
        selections=False,
    ),
    CdsService(
        "vigie-order-select",
        "order-select",
        "Vigie: medication order check on selection",
        "Checks the medication orders just selected (context.selections), with the other draft "
        "orders and the patient's record as context.",
        draft_orders=True,
        selections=True,
    ),
    CdsService(
        "vigie-medication-verify",
        "medication-verify",
        "Vigie: pharmaceutical analysis of the patient's medication",
        "For the pharmacist verifying a patient's medication: every problem the rule packs find "
        "in the patient's active medications, labs, allergies and conditions.",
        draft_orders=False,
        selections=False,
    ),
)


# Override reasons --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OverrideReason:
    """A reason offered to override a card, and the alert store's dismissal reason it maps to
    (``vigie.store.alerts.DISMISS_REASONS``)."""

    code: str
    display: str
    dismiss_reason: str

    def coding(self) -> dict[str, str]:
        return {"system": OVERRIDE_SYSTEM, "code": self.code, "display": self.display}


OVERRIDE_REASONS: Final = (
    OverrideReason("benefit-outweighs-risk", "Benefit outweighs risk", "accepted_risk"),
    OverrideReason("patient-monitored", "Patient already monitored", "accepted_risk"),
    OverrideReason("not-applicable", "Not applicable to this patient", "not_relevant"),
    OverrideReason("already-handled", "Already handled", "already_handled"),
    OverrideReason("data-error", "The data behind the card is wrong", "data_error"),
)
_OVERRIDE_BY_CODE: Final = {reason.code: reason for reason in OVERRIDE_REASONS}


# Cards -------------------------------------------------------------------------------------------


def card_uuid(alert_id: str, hook_instance: str) -> str:
    return str(uuid.uuid5(CARD_NAMESPACE, f"{alert_id}\x1f{hook_instance}"))


def summary_of(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """One line under ``limit`` characters: whitespace collapsed, cut at a word boundary when
    one is near the end, with an ellipsis.

    >>> summary_of("Metformine   et\\nDFG < 30")
    'Metformine et DFG < 30'
    >>> len(summary_of("mot " * 60)) < 140
    True
    """
    line = " ".join(text.split())
    if len(line) < limit:
        return line
    cut = line[: limit - 2]  # room for the ellipsis, strictly under the limit
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:-—") + "…"


_MARKDOWN_SPECIAL: Final = re.compile(r"([\\`*_{}\[\]<>#|])")


def _md(text: object) -> str:
    """Data text inside markdown: its special characters escaped, on one line."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _evidence_lines(item: Evidence, depth: int = 0) -> list[str]:
    line = f"{'  ' * depth}- {_md(evidence_text(item))}"
    if item.source is not None:
        line += f" — from {_md(item.source.describe())}"
    elif item.kind == "derived":
        line += " — computed from:"
    lines = [line]
    for child in item.inputs:
        lines += _evidence_lines(child, depth + 1)
    return lines


def card_detail(alert: Alert) -> str:
    """The card's markdown: the message, the evidence (values, times, where each came from),
    the rule (id, version, pack, file and line), the SFPC codes and the reference."""
    problem = PROBLEM_DISPLAYS.get(alert.problem.code, alert.problem.display)
    intervention = INTERVENTION_DISPLAYS.get(alert.intervention.code, alert.intervention.display)
    rule = alert.rule
    parts = [
        f"**{_md(alert.title)}** ({alert.severity})",
        _md(alert.message),
        "**Evidence**",
        "\n".join(line for item in alert.evidence for line in _evidence_lines(item)),
        f"**Rule** `{rule.id}` version {rule.version}, pack {_md(rule.pack)} "
        f"{_md(rule.pack_version)}, {_md(Path(rule.file).name)} line {rule.line}; "
        f"evaluated as of {fhir_datetime(alert.as_of)}",
        f"**SFPC** problem {alert.problem.code} ({_md(problem)}) → intervention "
        f"{alert.intervention.code} ({_md(intervention)})",
    ]
    if alert.reference:
        parts.append(f"**Reference** {_md(alert.reference)}")
    return "\n\n".join(part for part in parts if part)


def _suggestions(alert: Alert, card: str, drafts: Mapping[str, str]) -> list[dict[str, Any]]:
    """A suggestion to remove the draft order, for each draft line of a stop alert
    (``drafts``: order id → the draft MedicationRequest's id)."""
    if alert.intervention.code != _STOP:
        return []
    found = []
    for drug in alert.drugs:
        resource_id = drafts.get(drug.order_id)
        if resource_id is None:
            continue
        label = summary_of(f"Remove the draft order {drug.label or drug.atc or resource_id}")
        found.append(
            {
                "label": label,
                "uuid": str(uuid.uuid5(uuid.UUID(card), f"delete\x1f{resource_id}")),
                "isRecommended": True,
                "actions": [
                    {
                        "type": "delete",
                        "description": label,
                        "resourceId": [f"MedicationRequest/{resource_id}"],
                    }
                ],
            }
        )
    return found


def alert_card(alert: Alert, hook_instance: str, drafts: Mapping[str, str]) -> dict[str, Any]:
    """A CDS Hooks card for an alert (``drafts``: order id → draft MedicationRequest id, the
    lines a suggestion may remove)."""
    card = card_uuid(alert.id, hook_instance)
    body: dict[str, Any] = {
        "uuid": card,
        "summary": summary_of(alert.message or alert.title),
        "detail": card_detail(alert),
        "indicator": INDICATOR[alert.severity],
        "source": {
            "label": f"Vigie — {alert.rule.pack} {alert.rule.pack_version}",
            "topic": {"system": RULE_TOPIC_SYSTEM, "code": alert.rule_id, "display": alert.title},
        },
        "overrideReasons": [reason.coding() for reason in OVERRIDE_REASONS],
    }
    suggestions = _suggestions(alert, card, drafts)
    if suggestions:
        body["suggestions"] = suggestions
        body["selectionBehavior"] = "at-most-one"
    return body


# Requests ----------------------------------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class FhirAuthorization(_Lenient):
    access_token: str = Field(alias="accessToken", min_length=1)
    token_type: str = Field("Bearer", alias="tokenType")


class CdsRequest(_Lenient):
    """A hook call (CDS Hooks 1.x and 2.0 fields; others are kept and ignored)."""

    hook: str = Field(min_length=1)
    hook_instance: str = Field(alias="hookInstance", min_length=1)
    fhir_server: str | None = Field(None, alias="fhirServer")
    fhir_authorization: FhirAuthorization | None = Field(None, alias="fhirAuthorization")
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None


class _Coding(_Lenient):
    system: str | None = None
    code: str = Field(min_length=1)
    display: str | None = None


class _OverrideReason(_Lenient):
    reason: _Coding | None = None
    user_comment: str | None = Field(None, alias="userComment")


class _AcceptedSuggestion(_Lenient):
    id: str = Field(min_length=1)


class _FeedbackItem(_Lenient):
    card: str = Field(min_length=1)
    outcome: Literal["accepted", "overridden"]
    accepted_suggestions: list[_AcceptedSuggestion] = Field([], alias="acceptedSuggestions")
    override_reason: _OverrideReason | None = Field(None, alias="overrideReason")
    outcome_timestamp: datetime = Field(alias="outcomeTimestamp")


class FeedbackRequest(_Lenient):
    feedback: list[_FeedbackItem] = Field(min_length=1)


def _read_json(body: bytes, what: str) -> Any:
    if len(body) > MAX_BODY_BYTES:
        raise CdsHooksError(413, f"{what}: larger than {MAX_BODY_BYTES // 2**20} MB", "too-costly")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise CdsHooksError(
            400, f"{what}: malformed JSON (line {error.lineno}, column {error.colno}: {error.msg})"
        ) from None


_Model = TypeVar("_Model", bound=BaseModel)


def _validated(model: type[_Model], document: Any, what: str) -> _Model:
    try:
        return model.model_validate(document)
    except pydantic.ValidationError as error:
        problems = error.errors(include_url=False)
        first = problems[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        message = f"{what}: {where}: {first['msg']}{more}"
        raise CdsHooksError(400, message) from None


# Feedback ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardFeedback:
    """What a clinician did with a card, for the app to record as a decision.

    ``outcome`` ``accepted`` (``accepted_suggestions``: the labels of the suggestions taken) or
    ``overridden`` (``override_code`` one of :data:`OVERRIDE_REASONS`, ``dismiss_reason`` the
    alert store's matching dismissal reason, ``user_comment`` free text). ``alert`` is the alert
    the card was built from; ``outcome_time`` naive UTC.
    """

    service_id: str
    hook_instance: str
    card_uuid: str
    alert: Alert
    outcome: Literal["accepted", "overridden"]
    outcome_time: datetime
    accepted_suggestions: tuple[str, ...] = ()
    override_code: str | None = None
    dismiss_reason: str | None = None
    user_comment: str | None = None


@dataclass(frozen=True)
class _IssuedCard:
    """A card answered: what feedback on it needs."""

    uuid: str
    service_id: str
    hook_instance: str
    alert: Alert
    suggestions: Mapping[str, str]  # suggestion uuid → label
    override_codes: tuple[str, ...]  # the override reasons the card offered
    issued_at: datetime  # naive UTC


class CardKeeper(Protocol):
    """Where the cards answered are kept for their feedback: :class:`StoredCards` (the
    service's store, shared by its processes and kept over a restart) or, without a store,
    :class:`_CardMemory` (this process only)."""

    def keep(self, cards: Sequence[_IssuedCard]) -> None: ...

    def find(self, card: str, service_id: str) -> _IssuedCard | None: ...


@dataclass
class _CardMemory:
    """The cards recently answered, by uuid, in this process only (bounded, oldest forgotten
    first; thread-safe: endpoints run in a thread pool)."""

    size: int = REMEMBERED_CARDS
    cards: OrderedDict[str, _IssuedCard] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def keep(self, cards: Sequence[_IssuedCard]) -> None:
        with self.lock:
            for issued in cards:
                self.cards[issued.uuid] = issued
                self.cards.move_to_end(issued.uuid)
            while len(self.cards) > self.size:
                self.cards.popitem(last=False)

    def find(self, card: str, service_id: str) -> _IssuedCard | None:
        with self.lock:
            issued = self.cards.get(card)
        return issued if issued is not None and issued.service_id == service_id else None


@dataclass
class StoredCards:
    """The cards answered, in the service's store (``ServiceStore.keep_cds_cards``: one
    insert per answer, kept ``CDS_CARD_DAYS`` days): feedback reaches any of the service's
    processes, before or after a restart. A store that cannot keep them does not stop the
    answer (the prescriber sees the cards; feedback on them is then a 404), and is logged."""

    service: ServiceStore

    def keep(self, cards: Sequence[_IssuedCard]) -> None:
        try:
            self.service.keep_cds_cards([_stored(issued) for issued in cards])
        except ServiceError as error:  # names the store, never the patient
            log.warning("CDS Hooks: cards answered but not kept for feedback: %s", error)

    def find(self, card: str, service_id: str) -> _IssuedCard | None:
        try:
            found = self.service.cds_card(card, service_id)
        except ServiceError:
            raise CdsHooksError(
                503, "feedback: the store cannot be read (the cards answered)", "transient"
            ) from None
        if found is None:
            return None
        return _IssuedCard(
            uuid=found.uuid,
            service_id=found.service_id,
            hook_instance=found.hook_instance,
            alert=Alert.model_validate(found.alert),
            suggestions=found.suggestions,
            override_codes=found.override_codes,
            issued_at=found.issued_at,
        )


def _stored(issued: _IssuedCard) -> IssuedCard:
    return IssuedCard(
        uuid=issued.uuid,
        service_id=issued.service_id,
        hook_instance=issued.hook_instance,
        alert_id=issued.alert.id,
        rule_id=issued.alert.rule_id,
        patient_id=issued.alert.patient_id,
        suggestions=issued.suggestions,
        override_codes=issued.override_codes,
        alert=issued.alert.model_dump(mode="json"),
        issued_at=issued.issued_at,
    )


# Packs -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def default_packs(ansm: bool = False) -> tuple[LoadedPack, ...]:
    """The shipped default pack (and the ANSM interaction pack), compiled once per process:
    the default pack alone compiles in about 0.3 s; both go through ``vigie batch``'s compile
    cache (the ANSM pack's parse takes seconds)."""
    from vigie import rules
    from vigie.api.batch import compile_packs

    if ansm:
        return tuple(load_pack(ir) for ir in compile_packs(()))
    label = "rules/packs/default.rules"  # how alerts name the rule's file, wherever installed
    text = (Path(rules.__file__).parent / "packs" / "default.rules").read_text(encoding="utf-8")
    ir, diagnostics = rules.compile_pack(text, label)
    if ir is None:
        errors = [d.headline() for d in diagnostics if d.is_error]
        raise CdsHooksError(500, f"{label} does not compile: {errors[0]}", "exception")
    return (load_pack(ir),)


WardOf = Callable[[str, datetime], str | None]
"""The ward of a patient's current stay at a (naive UTC) time, as the service's store knows it."""


class PackEvaluator:
    """Every pack's alerts for a patient's record, with the site configuration ``site`` (per
    ward: packs, rules and cursors; ``None``: the packs' defaults). The ward is that of the
    stay the record is in at the time (``current_stay``, as ``evaluate`` reads it), else
    ``ward_of(patient id, time)`` — a hook's prefetch carries no stay, the service's store does
    — else none (the hospital's settings). A pack the configuration was not checked against
    runs its defaults. ``site`` may be replaced while serving (the service does so when a new
    configuration is saved): a call reads it once."""

    def __init__(
        self,
        packs: Sequence[LoadedPack],
        site: SiteConfig | None = None,
        ward_of: WardOf | None = None,
    ) -> None:
        self.packs = tuple(packs)
        self.site = site
        self.ward_of = ward_of

    def __call__(self, record: PatientRecord, at: datetime) -> list[Alert]:
        site = self.site
        if site is None:
            return [alert for pack in self.packs for alert in evaluate(pack, record, at)]
        ward = self.ward(site, record, at)
        found: list[Alert] = []
        for pack in self.packs:
            if pack.name not in site.catalogue:
                found += evaluate(pack, record, at)
                continue
            arguments = site.select_arguments(pack, ward)
            if arguments is not None:  # else the pack is off in this ward
                found += evaluate(pack, record, at, **arguments)
        return found

    def ward(self, site: SiteConfig, record: PatientRecord, at: datetime) -> str | None:
        """The ward whose settings apply to the record at ``at``."""
        if not site.wards:
            return None  # every ward runs the hospital's settings
        stay = current_stay(record, normalise_time(at))
        if stay is not None:
            return stay.ward
        return self.ward_of(record.patient_id, at) if self.ward_of is not None else None


def pack_evaluator(
    packs: Sequence[LoadedPack], site: SiteConfig | None = None, ward_of: WardOf | None = None
) -> PackEvaluator:
    """Every pack's alerts for a patient's record (``site``: cursors and rules on per ward;
    ``PackEvaluator``)."""
    return PackEvaluator(packs, site, ward_of)


# The service -------------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Call:
    """One hook call being answered."""

    service: CdsService
    request: CdsRequest
    patient_id: str
    now: datetime  # naive UTC
    drafts: dict[str, str] = field(default_factory=dict)  # order id → draft resource id
    involved: set[str] | None = None  # order ids an alert must involve; None: every alert


class CdsHooks:
    """The CDS Hooks logic, without HTTP: discovery, hook calls, feedback."""

    def __init__(
        self,
        evaluator: Evaluator,
        *,
        record_feedback: Callable[[CardFeedback], None] | None = None,
        fhir_client: httpx.Client | None = None,
        clock: Callable[[], datetime] = _utc_now,
        fhir_servers: Iterable[str] | None = None,
        services: Sequence[CdsService] = SERVICES,
        validate_prefetch: bool = False,
        cards: CardKeeper | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.record_feedback = record_feedback
        self.fhir_client = fhir_client
        self.clock = clock
        # Compared with a final slash: "https://ehr.org/fhir" must not admit "https://ehr.org.evil".
        self.fhir_servers = (
            None if fhir_servers is None else tuple(_with_slash(url) for url in fhir_servers)
        )
        self.services = {service.id: service for service in services}
        self.cards: CardKeeper = _CardMemory() if cards is None else cards
        self.validate_prefetch = validate_prefetch

    # Discovery and lookup

    def discovery(self) -> dict[str, Any]:
        return {"services": [service.discovery() for service in self.services.values()]}

    def service(self, service_id: str) -> CdsService:
        service = self.services.get(service_id)
        if service is None:
            known = ", ".join(self.services)
            raise CdsHooksError(404, f"no CDS service {service_id!r} (known: {known})", "not-found")
        return service

    # Hook calls

    def call(self, service_id: str, body: bytes) -> dict[str, Any]:
        """The cards answering one hook call (``CdsHooksError`` for a bad request)."""
        call, facts = self._read(service_id, body)
        record = PatientRecord(call.patient_id)
        for fact in facts:
            record.add(fact)
        alerts = self.evaluator(record, call.now)
        if call.involved is not None:
            involved = call.involved
            alerts = [a for a in alerts if any(d.order_id in involved for d in a.drugs)]
        alerts.sort(key=lambda a: (_SEVERITY_RANK[a.severity], a.rule_id, a.id))
        answered = [self._card(call, alert) for alert in alerts]
        self.cards.keep([issued for _, issued in answered])
        return {"cards": [card for card, _ in answered]}

    def facts(self, service_id: str, body: bytes) -> list[AnyFact]:
        """The facts a hook call is evaluated on: its draft orders read as signed now, then its
        prefetch (fetched from the ``fhirServer`` where missing), one per kind and id
        (``CdsHooksError`` for a bad request)."""
        return self._read(service_id, body)[1]

    def _read(self, service_id: str, body: bytes) -> tuple[_Call, list[AnyFact]]:
        service = self.service(service_id)
        request = _validated(CdsRequest, _read_json(body, "request"), "request")
        call = self._call(service, request)
        facts = self._draft_facts(call) + self._prefetched_facts(call)
        return call, _latest_per_id(facts)

    def _call(self, service: CdsService, request: CdsRequest) -> _Call:
        if request.hook != service.hook:
            raise CdsHooksError(
                400, f"service {service.id} answers hook {service.hook!r}, not {request.hook!r}"
            )
        patient_id = request.context.get("patientId")
        if not isinstance(patient_id, str) or not _FHIR_ID.fullmatch(patient_id):
            raise CdsHooksError(
                400, "context.patientId: required, a FHIR id (letters, digits, '-', '.')"
            )
        now = self.clock()
        now = now.astimezone(UTC).replace(tzinfo=None) if now.tzinfo else now
        return _Call(service, request, patient_id, now)

    def _card(self, call: _Call, alert: Alert) -> tuple[dict[str, Any], _IssuedCard]:
        card = alert_card(alert, call.request.hook_instance, call.drafts)
        issued = _IssuedCard(
            uuid=card["uuid"],
            service_id=call.service.id,
            hook_instance=call.request.hook_instance,
            alert=alert,
            suggestions={s["uuid"]: s["label"] for s in card.get("suggestions", [])},
            override_codes=tuple(reason["code"] for reason in card["overrideReasons"]),
            issued_at=call.now,
        )
        return card, issued

    # Draft orders

    def _draft_facts(self, call: _Call) -> list[AnyFact]:
        if not call.service.draft_orders:
            return []
        bundle = call.request.context.get("draftOrders")
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise CdsHooksError(400, "context.draftOrders: required, a FHIR R4 Bundle")
        orders = [
            fact
            for fact in self._facts(bundle, "context.draftOrders", call.patient_id)
            if isinstance(fact, MedicationOrder)
        ]
        if not orders:
            raise CdsHooksError(400, "context.draftOrders: no MedicationRequest in the Bundle")
        ids = _resource_ids(bundle, "MedicationRequest")
        call.drafts = {o.order_id: o.order_id for o in orders if o.order_id in ids}
        call.involved = {order.order_id for order in orders}
        if call.service.selections:
            call.involved = _selected(call.request.context.get("selections"), call.involved)
        return [_as_signed(order, call.now) for order in orders]

    # Prefetch

    def _prefetched_facts(self, call: _Call) -> list[AnyFact]:
        given = call.request.prefetch or {}
        facts: list[AnyFact] = []
        missing: list[PrefetchQuery] = []
        for query in call.service.prefetch:
            document = given.get(query.key)
            if document is None:
                document = self._fetched(call, query)
            if document is None:
                if query.required:
                    missing.append(query)
                continue
            if not isinstance(document, dict):
                raise CdsHooksError(400, f"prefetch.{query.key}: expected a FHIR resource")
            where = f"prefetch.{query.key}"
            facts += self._facts(document, where, call.patient_id, self.validate_prefetch)
        if missing:
            keys = ", ".join(query.key for query in missing)
            raise CdsHooksError(
                412,
                f"prefetch missing ({keys}) and no fhirServer to fetch it from: send the "
                "prefetch of the discovery document, or fhirServer and fhirAuthorization",
                "required",
            )
        return facts

    def _fetched(self, call: _Call, query: PrefetchQuery) -> dict[str, Any] | None:
        server = call.request.fhir_server
        if not server:
            return None
        if self.fhir_servers is not None and not _with_slash(server).startswith(self.fhir_servers):
            raise CdsHooksError(403, f"fhirServer {server!r} is not one this service may call")
        path = query.render(call.request.context, call.now.date())
        token = call.request.fhir_authorization
        headers = {"Accept": "application/fhir+json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token.access_token}"
        return _fetch(self._client(), server.rstrip("/") + "/" + path, headers, query.key)

    def _client(self) -> httpx.Client:
        if self.fhir_client is None:
            import httpx  # only the FHIR-server fallback needs it

            self.fhir_client = httpx.Client(timeout=FHIR_TIMEOUT_SECONDS)
        return self.fhir_client

    def _facts(
        self, document: dict[str, Any], where: str, patient_id: str, validate: bool = True
    ) -> list[AnyFact]:
        """The facts of a FHIR resource or Bundle, all about the patient in context
        (``validate``: each resource validated with the R4B models first; else the
        connector's fast path with its element check, which gives the same facts)."""
        # No message id: the request field (the document) is where a fact came from. The
        # document is the request's own JSON, read once: not encoded again to be decoded.
        raw = RawMessage("fhir", where, b"", "")
        try:
            outcome = parse_fhir_decoded(document, raw, validate=validate, elements=True)
        except FeedError as error:
            raise CdsHooksError(400, _feed_message(error, where)) from None
        if outcome.errors:
            more = f" (and {len(outcome.errors) - 1} more)" if len(outcome.errors) > 1 else ""
            raise CdsHooksError(400, _feed_message(outcome.errors[0], where) + more)
        for fact in outcome.facts:
            if fact.patient_id != patient_id:
                position = fact.source.position or "resource"
                raise CdsHooksError(
                    400,
                    f"{where}: {position}: about patient {fact.patient_id!r}, "
                    f"not context.patientId {patient_id!r}",
                )
        return outcome.facts

    # Feedback

    def feedback(self, service_id: str, body: bytes) -> dict[str, Any]:
        """Record what the clinician did with each card (all items checked before any is
        recorded: a 404 for an unknown card records none)."""
        self.service(service_id)
        request = _validated(FeedbackRequest, _read_json(body, "feedback"), "feedback")
        decided = [self._checked_feedback(service_id, item) for item in request.feedback]
        if self.record_feedback is not None:
            for item in decided:
                self.record_feedback(item)
        return {}

    def _checked_feedback(self, service_id: str, item: _FeedbackItem) -> CardFeedback:
        issued = self.cards.find(item.card, service_id)
        if issued is None:
            raise CdsHooksError(
                404, f"feedback: no card {item.card!r} from {service_id}", "not-found"
            )
        when = item.outcome_timestamp
        when = when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when
        base = CardFeedback(
            service_id=service_id,
            hook_instance=issued.hook_instance,
            card_uuid=item.card,
            alert=issued.alert,
            outcome=item.outcome,
            outcome_time=when,
        )
        if item.outcome == "accepted":
            return dataclasses.replace(base, accepted_suggestions=_accepted(item, issued))
        reason = _override(item, issued)
        return dataclasses.replace(
            base,
            override_code=reason.code if reason else None,
            dismiss_reason=reason.dismiss_reason if reason else None,
            user_comment=item.override_reason.user_comment if item.override_reason else None,
        )


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


def _accepted(item: _FeedbackItem, issued: _IssuedCard) -> tuple[str, ...]:
    if item.override_reason is not None:
        raise CdsHooksError(400, "feedback: an accepted card has no overrideReason")
    if not item.accepted_suggestions:
        raise CdsHooksError(400, "feedback: an accepted card needs acceptedSuggestions")
    labels = []
    for accepted in item.accepted_suggestions:
        label = issued.suggestions.get(accepted.id)
        if label is None:
            raise CdsHooksError(
                400, f"feedback: card {item.card} has no suggestion {accepted.id!r}"
            )
        labels.append(label)
    return tuple(labels)


def _override(item: _FeedbackItem, issued: _IssuedCard) -> OverrideReason | None:
    if item.accepted_suggestions:
        raise CdsHooksError(400, "feedback: an overridden card has no acceptedSuggestions")
    coding = item.override_reason.reason if item.override_reason else None
    if coding is None:
        return None  # the spec lets the clinician override without a reason
    reason = _OVERRIDE_BY_CODE.get(coding.code)
    offered = coding.code in issued.override_codes
    if reason is None or not offered or coding.system not in (None, OVERRIDE_SYSTEM):
        known = ", ".join(issued.override_codes)
        raise CdsHooksError(
            400, f"feedback: override reason {coding.code!r} is not one the card offered ({known})"
        )
    return reason


def _feed_message(error: FeedError, where: str) -> str:
    """A connector's located error, named after the request field it is in."""
    position = f": {error.position}" if error.position else ""
    found = f", got {error.found!r}" if error.found is not None else ""
    return f"{where}{position}: expected {error.expected}{found}"


def _resource_ids(bundle: dict[str, Any], kind: str) -> set[str]:
    entries = bundle.get("entry")
    found = set()
    for entry in entries if isinstance(entries, list) else []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict) and resource.get("resourceType") == kind:
            rid = resource.get("id")
            if isinstance(rid, str):
                found.add(rid)
    return found


def _selected(selections: object, drafts: set[str]) -> set[str]:
    """The order ids ``context.selections`` names (``MedicationRequest/<id>``), all drafts."""
    if not isinstance(selections, list) or not selections:
        raise CdsHooksError(400, "context.selections: required, a list of 'MedicationRequest/id'")
    chosen = set()
    for selection in selections:
        kind, _, rid = selection.partition("/") if isinstance(selection, str) else ("", "", "")
        if kind != "MedicationRequest" or rid not in drafts:
            raise CdsHooksError(
                400, f"context.selections: {selection!r} is not a MedicationRequest of draftOrders"
            )
        chosen.add(rid)
    return chosen


def _as_signed(order: MedicationOrder, now: datetime) -> MedicationOrder:
    """A draft order read as the active line it becomes once signed now."""
    start = order.start if order.start is None or order.start <= now else now
    return order.model_copy(update={"status": "active", "start": start})


def _latest_per_id(facts: list[AnyFact]) -> list[AnyFact]:
    """One fact per kind and id, the last given winning (a draft order over a prefetched line
    of the same id)."""
    return list({(fact.kind, fact.fact_id): fact for fact in facts}.values())


def _fetch(
    client: httpx.Client, url: str, headers: dict[str, str], key: str
) -> dict[str, Any] | None:
    """A prefetch query answered by the FHIR server (searchset pages followed); a failure is a
    502 naming the query (a read answered 404 is no data: ``None``)."""
    import httpx

    pages: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url is not None and len(pages) < FHIR_MAX_PAGES:
        try:
            response = client.get(next_url, headers=headers)
        except httpx.HTTPError as error:
            raise CdsHooksError(
                502, f"prefetch.{key}: the FHIR server did not answer ({type(error).__name__})",
                "transient",
            ) from None  # fmt: skip
        if response.status_code == 404 and not pages and "?" not in url:
            return None
        if response.status_code != 200:
            raise CdsHooksError(
                502, f"prefetch.{key}: the FHIR server answered {response.status_code}",
                "exception",
            )  # fmt: skip
        page = _read_json(response.content, f"prefetch.{key} (from the FHIR server)")
        if not isinstance(page, dict):
            raise CdsHooksError(502, f"prefetch.{key}: the FHIR server sent no FHIR resource")
        pages.append(page)
        next_url = _next_link(page)
    if next_url is not None:  # never evaluate on part of the record
        raise CdsHooksError(
            502,
            f"prefetch.{key}: more than {FHIR_MAX_PAGES} pages from the FHIR server",
            "too-costly",
        )
    return pages[0] if len(pages) == 1 else _joined(pages)


def _next_link(page: dict[str, Any]) -> str | None:
    links = page.get("link") if page.get("resourceType") == "Bundle" else None
    for link in links if isinstance(links, list) else []:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) else None
    return None


def _joined(pages: list[dict[str, Any]]) -> dict[str, Any]:
    entries = [e for page in pages for e in page.get("entry", []) if isinstance(e, dict)]
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


# HTTP --------------------------------------------------------------------------------------------


def _inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A model's JSON schema with its definitions inlined (for ``openapi_extra``)."""
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(definitions[ref.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    inlined: dict[str, Any] = inline(schema)
    return inlined


def _body(model: type[BaseModel]) -> dict[str, Any]:
    content = {"application/json": {"schema": _inline_schema(model)}}
    return {"requestBody": {"required": True, "content": content}}


_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    status: {"description": text, "content": {"application/fhir+json": {}}}
    for status, text in (
        (400, "Malformed request: an OperationOutcome says what is wrong"),
        (404, "Unknown service or card"),
        (412, "Prefetch missing and no fhirServer given (OperationOutcome)"),
        (502, "The fhirServer failed to answer a prefetch query"),
    )
}


async def _answered(work: Callable[[bytes], dict[str, Any]], request: Request) -> JSONResponse:
    """Run a handler in the thread pool; errors as OperationOutcomes, never a traceback."""
    try:
        body = await request.body()
        return JSONResponse(await run_in_threadpool(work, body))
    except CdsHooksError as error:
        return JSONResponse(error.outcome(), status_code=error.status)
    except EngineError as error:  # names a rule and the patient: logged by type only
        log.error("CDS Hooks: rule evaluation failed (%s)", type(error).__name__)
        return JSONResponse(
            operation_outcome("the rules could not be evaluated for this request", "exception"),
            status_code=500,
        )
    except Exception as error:
        log.error("CDS Hooks: internal error (%s)", type(error).__name__)
        return JSONResponse(
            operation_outcome("internal error while answering the hook", "exception"),
            status_code=500,
        )


def cds_router(
    packs: Sequence[LoadedPack] | None = None,
    *,
    evaluator: Evaluator | None = None,
    site: SiteConfig | None = None,
    ward_of: WardOf | None = None,
    record_feedback: Callable[[CardFeedback], None] | None = None,
    fhir_client: httpx.Client | None = None,
    fhir_servers: Iterable[str] | None = None,
    clock: Callable[[], datetime] = _utc_now,
    prefix: str = "/cds-services",
    tags: Sequence[str] = ("cds-hooks",),
    warm_up: bool = True,
    validate_prefetch: bool = False,
    cards: CardKeeper | None = None,
) -> APIRouter:
    """The CDS Hooks routes, for ``app.include_router``.

    ``evaluator`` (a patient's record and a time → alerts) replaces the default: ``packs``
    (default: the shipped default pack, compiled once) evaluated with ``site``, per ward
    (``ward_of``: where a patient is, when the request does not say; ``PackEvaluator``).
    ``record_feedback`` is called once per card feedback (``CardFeedback``; it may raise
    ``CdsHooksError`` to answer with that status, any other error is a 500); ``fhir_client``
    (an ``httpx.Client``) fetches missing prefetch from the request's ``fhirServer``, which
    must start with one of ``fhir_servers`` when given; ``clock`` gives "now" (aware or naive
    UTC). The prefetch takes the connector's fast path with its element check
    (``vigie.connectors.fhir.elements``: every element name, JSON shape, required element and
    choice of the resources Vigie reads facts from, against R4B's tables) and gives the facts
    full validation gives, at a fifth of its cost (an inpatient's 414 Observations: about
    20 ms instead of 100); ``validate_prefetch`` validates every prefetched resource with the
    ``fhir.resources`` R4B models instead (also URI and OID patterns, integer bounds,
    invariants; draft orders, a few resources, always are). ``warm_up`` reads and evaluates a small
    record once, so that the first call is as fast as the others. ``cards`` keeps the cards
    answered for their feedback (``StoredCards``: in the service's store; default: in this
    process's memory only, the last ``REMEMBERED_CARDS``). The ``CdsHooks`` object is
    ``router.cds_hooks``.
    """
    if evaluator is None:
        evaluator = pack_evaluator(default_packs() if packs is None else packs, site, ward_of)
    hooks = CdsHooks(
        evaluator,
        record_feedback=record_feedback,
        fhir_client=fhir_client,
        clock=clock,
        fhir_servers=fhir_servers,
        validate_prefetch=validate_prefetch,
        cards=cards,
    )
    if warm_up:
        _warm_up(evaluator)
    router = APIRouter(prefix=prefix, tags=list(tags))
    router.cds_hooks = hooks  # type: ignore[attr-defined]

    @router.get("", summary="CDS Hooks discovery")
    def discovery() -> dict[str, Any]:
        return hooks.discovery()

    @router.post(
        "/{service_id}", summary="Call a CDS service", openapi_extra=_body(CdsRequest),
        responses=_ERRORS,
    )  # fmt: skip
    async def call(service_id: str, request: Request) -> JSONResponse:
        return await _answered(functools.partial(hooks.call, service_id), request)

    @router.post(
        "/{service_id}/feedback", summary="Feedback on cards",
        openapi_extra=_body(FeedbackRequest), responses=_ERRORS,
    )  # fmt: skip
    async def feedback(service_id: str, request: Request) -> JSONResponse:
        return await _answered(functools.partial(hooks.feedback, service_id), request)

    return router


_WARM_UP_PATIENT: Final = "warm-up"
_WARM_UP: Final = {
    "resourceType": "Bundle",
    "type": "searchset",
    "entry": [
        {"resource": {"resourceType": "Patient", "id": _WARM_UP_PATIENT, "gender": "male",
                      "birthDate": "1950-01-01"}},
        {"resource": {
            "resourceType": "MedicationRequest", "id": "warm-up-order", "status": "active",
            "intent": "order", "subject": {"reference": f"Patient/{_WARM_UP_PATIENT}"},
            "medicationCodeableConcept": {"coding": [{
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "860975",
                "display": "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"}]},
            "dosageInstruction": [{"timing": {"repeat": {"frequency": 2, "period": 1,
                                                         "periodUnit": "d"}},
                                   "doseAndRate": [{"doseQuantity": {"value": 1}}]}]}},
        {"resource": {  # a brand name: the label-strength path and its tables
            "resourceType": "MedicationRequest", "id": "warm-up-brand", "status": "active",
            "intent": "order", "subject": {"reference": f"Patient/{_WARM_UP_PATIENT}"},
            "medicationCodeableConcept": {"coding": [{
                "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "315971",
                "display": "Lasix 40mg"}]}}},
        {"resource": {
            "resourceType": "Observation", "id": "warm-up-egfr", "status": "final",
            "subject": {"reference": f"Patient/{_WARM_UP_PATIENT}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "33914-3"}]},
            "effectiveDateTime": "2024-01-01T08:00:00Z",
            "valueQuantity": {"value": 25, "unit": "mL/min/{1.73_m2}",
                              "system": "http://unitsofmeasure.org",
                              "code": "mL/min/{1.73_m2}"}}},
        {"resource": {
            "resourceType": "AllergyIntolerance", "id": "warm-up-allergy",
            "patient": {"reference": f"Patient/{_WARM_UP_PATIENT}"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "91936005"}]}}},
        {"resource": {
            "resourceType": "Condition", "id": "warm-up-condition",
            "subject": {"reference": f"Patient/{_WARM_UP_PATIENT}"},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "K92.2"}]}}},
    ],
}  # fmt: skip


def _warm_up(evaluator: Evaluator) -> None:
    """One Bundle of each resource type read (validated, and through the element check) and
    evaluated at start-up: the first validation imports the FHIR models, the first element
    check reads their tables, the first drug reads the terminology tables, the first
    evaluation builds the rules' caches (about 2 s together), which no hook call should pay."""
    raw = RawMessage("fhir", "warm-up", orjson.dumps(_WARM_UP), "")
    record = PatientRecord(_WARM_UP_PATIENT)
    for fact in parse_fhir(raw, validate=True).facts:
        record.add(fact)
    parse_fhir_decoded(_WARM_UP, raw, validate=False, elements=True)
    evaluator(record, datetime(2024, 1, 2))
