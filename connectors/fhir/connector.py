"""The FHIR R4 connector: Bundles, single resources and Bulk FHIR NDJSON into facts.

A JSON document (a Bundle of any type, or one resource) is one ``RawMessage``; an NDJSON
document gives one ``RawMessage`` per line (position ``line N``). Resources become facts as
described in ``vigie.connectors.fhir.fast`` and its siblings: Patient → Patient, Encounter → Stay,
MedicationRequest → MedicationOrder, MedicationAdministration → MedicationAdministration,
Observation → LabResult / Observation / Pregnancy, Condition → Condition, AllergyIntolerance →
Allergy. Other resource types are read (and validated) but give no facts.

Two paths give the same facts for valid input:

- validated: each resource is first validated with the
  ``fhir.resources`` R4B models; a resource that fails is a located ``FeedError`` for that entry
  (``Bundle.entry[3].resource.dosageInstruction[0].timing``) and the other entries still load;
- fast: plain dict walking on orjson output, for bulk loads.
  The extractor's typed getters still reject wrong shapes with a located error; with
  ``parse_decoded(..., elements=True)`` (the CDS Hooks prefetch) each resource is first held to
  R4B's element tables (``vigie.connectors.fhir.elements``), which finds what validation finds
  but URI and OID patterns, integer bounds and invariants, at a fifth of its cost.

Patient ids are FHIR logical ids: ``Patient/<id>``, ``urn:uuid:<id>`` (through the Bundle's
fullUrls) and ``#<id>`` all resolve to the Patient's ``id``.

Message ids (``RawMessage.message_id``; the store keeps one message per feed and id, and a
different content under a known id is a new version of that message, never a silent
replacement). A Bundle's ``id`` names it only within its sender: converters and servers reuse
ids (the Microsoft FHIR converter's reference Bundles of unrelated HL7 messages share one). So:

- a Bundle with an ``identifier`` that has a ``system``: ``identifier|<system>|<value>``;
- else a Bundle with a sender, its ``meta.source`` or, for a ``message`` Bundle, its
  MessageHeader's ``source.endpoint``: ``<sender>|Bundle/<id>``;
- else no identity: the content hash (``sha256:...``). The same bytes are a duplicate, any other
  content another message; corrections of such data are made per resource, through fact ids and
  version times.
- a single resource (a file, an NDJSON line): ``Type/id``, the server's logical id, as
  ``<meta.source>|Type/id`` when it names its source.

A ``meta.source`` counts without its ``#fragment`` (a request id on HAPI servers).

Event time: every fact's ``Source.version_time`` is its resource's ``meta.lastUpdated``, else the
Bundle's ``timestamp``, else the Bundle's ``meta.lastUpdated`` (instants, read as naive UTC); the
message's ``ParseOutcome.version_time`` is the Bundle's own, else the latest of its resources'.

Withdrawn data: a resource with status ``entered-in-error`` (or a Condition or
AllergyIntolerance verified ``entered-in-error`` or ``refuted``) gives no fact but a
``Retraction`` of each fact it would give standing (same kinds and fact ids). A Bundle entry
whose request is a ``DELETE`` retracts the same way when it carries the resource; without it,
only a Patient's fact can be named: deleting another resource Vigie reads is a located non-fatal
error saying the deletion is not applied.

>>> raw = RawMessage("fhir", "p.json", b'{"resourceType": "Patient", "id": "p1"}', "Patient/p1")
>>> [f.patient_id for f in parse(raw).facts]
['p1']
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import orjson
import pydantic

from vigie import settings
from vigie.connectors.base import FeedError, ParseOutcome, RawMessage, key_problem
from vigie.connectors.fhir import encounter as fhir_encounter
from vigie.connectors.fhir import fast as fhir_fast
from vigie.connectors.fhir import medication as fhir_medication
from vigie.connectors.fhir import observation as fhir_observation
from vigie.connectors.fhir.elements import check_bundle, check_elements
from vigie.connectors.fhir.fast import (
    RESOURCE_TYPES,
    EntryProblem,
    MessageContext,
    ResourceEntry,
    ResourceIndex,
    Where,
    _instant,
    version_time,
    withdrawn,
)
from vigie.connectors.fhir.fast_facts import memo_for
from vigie.facts import AnyFact, Retraction, Source
from vigie.terminology import default_terminology

__all__ = [
    "feed",
    "parse",
    "parse_decoded",
    "resource_facts",
    "sniff",
    "split",
    "validation_mode",
]

feed = "fhir"

VALIDATION_MODES: tuple[str, ...] = settings.choices("fhir_validate")  # documents, always, never


def validation_mode() -> str:
    """``VIGIE_FHIR_VALIDATE``: ``documents`` (default: Bundles and single-resource files are
    validated, Bulk NDJSON lines take the fast path, which gives the same facts), ``always`` or
    ``never``; ``ConfigurationError`` (a ``ValueError``) otherwise."""
    mode: str = settings.value("fhir_validate")
    return mode


def _validates(raw: RawMessage) -> bool:
    mode = validation_mode()
    if mode == "documents":
        return not (raw.position or "").startswith("line ")
    return mode == "always"


"""Default of ``parse``: validate every resource with ``fhir.resources`` (R4B) first."""

_BOM = b"\xef\xbb\xbf"
_SNIFF_BYTES = 4096
_NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".ndjson.txt")
# Message ids longer than this are hashed (the store holds ids up to 512 characters).
_LONGEST_IDENTITY = 256
# The usual head of a Bulk FHIR line; lets split name a line without parsing it.
_LINE_HEAD = re.compile(
    rb'\s*\{\s*"resourceType"\s*:\s*"([A-Za-z]{1,64})"\s*,\s*"id"\s*:\s*"([A-Za-z0-9\-.]{1,64})"'
)


# Splitting -----------------------------------------------------------------------------------


def sniff(head: bytes, name: str) -> bool:
    """A JSON object with a ``resourceType`` (Bundle, resource, or NDJSON of resources).

    ``head`` is the whole document when the caller has it (``vigie ingest`` does): a
    ``resourceType`` within the first 4 KB is enough; otherwise the document (or, for NDJSON,
    its first line) is parsed, since JSON keys may come in any order.
    """
    text = head[:_SNIFF_BYTES].removeprefix(_BOM).lstrip()
    if not text.startswith(b"{"):
        return False
    return b'"resourceType"' in text or _names_resource_type(head.removeprefix(_BOM))


def _names_resource_type(content: bytes) -> bool:
    for candidate in (content, content.lstrip().split(b"\n", 1)[0]):
        try:
            document = orjson.loads(candidate)
        except orjson.JSONDecodeError:
            continue
        return isinstance(document, dict) and "resourceType" in document
    return False


def split(document: str, content: bytes) -> Iterator[RawMessage]:
    """One message per JSON document, or per line of an NDJSON document."""
    if _is_ndjson(document, content):
        yield from _split_lines(document, content)
        return
    yield RawMessage(feed, document, content, _document_id(content))


def _is_ndjson(document: str, content: bytes) -> bool:
    if document.lower().endswith(_NDJSON_SUFFIXES):
        return True
    first, _, rest = content.removeprefix(_BOM).lstrip().partition(b"\n")
    if not rest.strip() or not first.startswith(b"{"):
        return False
    try:  # a pretty-printed document's first line is not a JSON value by itself
        return isinstance(orjson.loads(first), dict)
    except orjson.JSONDecodeError:
        return False


def _split_lines(document: str, content: bytes) -> Iterator[RawMessage]:
    # One search of the whole document costs a third of one per line (bulk files have none).
    sources = b'"source"' in content
    for number, line in enumerate(content.removeprefix(_BOM).split(b"\n"), start=1):
        line = line.strip()
        if line:
            message_id = _line_id(line, sources)
            yield RawMessage(feed, document, line, message_id, position=f"line {number}")


def _line_id(line: bytes, sources: bool = True) -> str:
    """``Type/id`` read from the line's head without parsing it, when the line cannot hold a
    ``meta.source`` (``sources``: whether its document has the word anywhere); else as a
    document."""
    match = _LINE_HEAD.match(line)
    if match is not None and match[1] != b"Bundle" and not (sources and b'"source"' in line):
        return (match[1] + b"/" + match[2]).decode()
    return _document_id(line)


def _document_id(content: bytes) -> str:
    """The message's identity (see the module docstring), else its content hash."""
    try:
        document = orjson.loads(content.removeprefix(_BOM))
    except orjson.JSONDecodeError:
        document = None
    identity = _identity(document) if isinstance(document, dict) else None
    if identity is None:
        return "sha256:" + hashlib.sha256(content).hexdigest()
    if len(identity) > _LONGEST_IDENTITY:  # the same identity still gives the same id
        return "identity-sha256:" + hashlib.sha256(identity.encode()).hexdigest()
    return identity


def _identity(document: dict[str, Any]) -> str | None:
    kind, rid = document.get("resourceType"), document.get("id")
    if kind == "Bundle":
        return _bundle_identity(document)
    if not isinstance(kind, str) or not _filled(rid):
        return None
    sender = _meta_source(document)
    return f"{sender}|{kind}/{rid}" if sender else f"{kind}/{rid}"


def _bundle_identity(bundle: dict[str, Any]) -> str | None:
    """``identifier|system|value``, else ``sender|Bundle/id``, else none (``Bundle.id`` alone
    is no identity: converters and servers reuse it for unrelated Bundles)."""
    identifier = bundle.get("identifier")
    if isinstance(identifier, dict):
        system, value = identifier.get("system"), identifier.get("value")
        if _filled(system) and _filled(value):
            return f"identifier|{system}|{value}"
    sender = _meta_source(bundle) or _message_sender(bundle)
    rid = bundle.get("id")
    return f"{sender}|Bundle/{rid}" if sender and _filled(rid) else None


def _meta_source(resource: dict[str, Any]) -> str | None:
    """``meta.source`` without its fragment: servers such as HAPI append the id of the request
    that wrote the resource (``http://lab/fhir#Kq3v``), which changes with every update."""
    meta = resource.get("meta")
    source = meta.get("source") if isinstance(meta, dict) else None
    if not isinstance(source, str):
        return None
    system = source.partition("#")[0]
    return system if _filled(system) else None


def _message_sender(bundle: dict[str, Any]) -> str | None:
    """A message Bundle's sender: ``source.endpoint`` of its MessageHeader (the first entry)."""
    entries = bundle.get("entry")
    if bundle.get("type") != "message" or not isinstance(entries, list) or not entries:
        return None
    header = entries[0].get("resource") if isinstance(entries[0], dict) else None
    if not isinstance(header, dict) or header.get("resourceType") != "MessageHeader":
        return None
    source = header.get("source")
    endpoint = source.get("endpoint") if isinstance(source, dict) else None
    return endpoint if _filled(endpoint) else None


def _filled(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


# Parsing ------------------------------------------------------------------------------------


def parse(raw: RawMessage, validate: bool | None = None) -> ParseOutcome:
    """The facts of one message; a Bundle's bad entries are collected, the rest still load.

    Raises ``FeedError`` when the message as a whole is unreadable (bad JSON, not a FHIR
    resource) or when its single resource is invalid.
    """
    return parse_decoded(_load(raw), raw, validate)


def parse_decoded(
    document: object, raw: RawMessage, validate: bool | None = None, elements: bool = False
) -> ParseOutcome:
    """``parse`` of a message already decoded (``document``: its JSON as orjson gives it;
    ``raw`` names it, its content is not read again). ``elements``, on the fast path: every
    resource Vigie reads facts from is first held to R4B's element tables
    (``vigie.connectors.fhir.elements``: element names, JSON shapes, required elements,
    choices, the patterns of codes, ids and dates) and the Bundle's own elements too; a
    resource that fails is a located ``FeedError`` as on the validated path. Same facts."""
    validate = _validates(raw) if validate is None else validate
    kind = _resource_type(document, raw, _root(raw))
    terminology = memo_for(default_terminology())
    context = MessageContext(raw.document, raw.message_id, terminology, ResourceIndex(), validate)
    context.elements_checked = elements and not validate
    assert isinstance(document, dict)  # _resource_type checked it
    if kind == "Bundle":
        return _bundle(document, raw, context, validate)
    if raw.position and raw.position.startswith("line "):
        where = Where.on_line(raw.position, kind)
    else:
        where = Where.alone(kind)
    read = _resource(document, where, context, validate)
    _check_keys(read, where, raw)  # located here, with what was expected and found
    return read


def _root(raw: RawMessage) -> str:
    return raw.position or "document root"


def _load(raw: RawMessage) -> object:
    """The message's JSON; a decoding error names the line and column (or the bad byte)."""
    content = raw.content.removeprefix(_BOM)
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError as error:
        offset = _invalid_utf8_offset(content)
        if offset is not None:
            position = _within(raw, f"byte {offset}")
            raise FeedError(
                raw.document, position, "UTF-8 text", message_id=raw.message_id,
                found=repr(content[offset : offset + 4]),
            ) from None  # fmt: skip
        line, column = _line_column(raw, error)
        raise FeedError(
            raw.document, f"line {line}, column {column}", f"valid JSON ({error.msg})",
            message_id=raw.message_id,
        ) from None  # fmt: skip


def _invalid_utf8_offset(content: bytes) -> int | None:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start
    return None


def _within(raw: RawMessage, where: str) -> str:
    return f"{raw.position}, {where}" if raw.position else where


def _line_column(raw: RawMessage, error: orjson.JSONDecodeError) -> tuple[int, int]:
    """Line and column in the document (an NDJSON message is one line of it)."""
    if raw.position and raw.position.startswith("line "):
        return int(raw.position.removeprefix("line ")), error.colno
    return error.lineno, error.colno


def _resource_type(document: object, raw: RawMessage, position: str) -> str:
    if not isinstance(document, dict):
        raise FeedError(
            raw.document, position, "a FHIR resource (a JSON object with a resourceType)",
            message_id=raw.message_id, found=_kind_of(document),
        )  # fmt: skip
    kind = document.get("resourceType")
    if not isinstance(kind, str) or kind not in RESOURCE_TYPES:
        where = "resourceType" if position == "document root" else f"{position}: resourceType"
        raise FeedError(
            raw.document, where, "a FHIR R4 resource type (Bundle, Patient, MedicationRequest...)",
            message_id=raw.message_id, found=str(kind),
        )  # fmt: skip
    return kind


def _kind_of(value: object) -> str:
    return {list: "a JSON array", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _bundle(
    bundle: dict[str, Any], raw: RawMessage, context: MessageContext, validate: bool
) -> ParseOutcome:
    outcome = ParseOutcome()
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise FeedError(
            raw.document, "Bundle.entry", "a JSON array of entries", message_id=raw.message_id,
            found=_kind_of(entries),
        )  # fmt: skip
    _read_message_time(bundle, raw, context, outcome)
    if validate:
        shell = {key: value for key, value in bundle.items() if key != "entry"}
        problem = _validation_problem(shell, "Bundle", Where.alone("Bundle"), raw)
        if problem is not None and problem.position not in _positions(outcome.errors):
            outcome.errors.append(problem)
    elif context.elements_checked:
        try:
            check_bundle(bundle)
        except EntryProblem as problem:
            outcome.errors.append(_bundle_error(raw, problem))
    readable = []
    for index, entry in enumerate(entries):
        try:
            resource = _entry_resource(entry, index, raw, context)
            deleted = _deletes(entry)
            if deleted and resource is None:
                outcome.retractions.extend(_deletion(entry, index, context))
        except FeedError as error:
            outcome.errors.append(error)
            continue
        if resource is not None:
            readable.append((index, resource, deleted))
    latest = None
    for index, resource, deleted in readable:
        try:
            read = _resource(resource, Where.in_bundle(index), context, validate, deleted)
            _check_keys(read, Where.in_bundle(index), raw)
        except FeedError as error:
            outcome.errors.append(error)
            continue
        outcome.extend(read)
        if read.version_time is not None and (latest is None or read.version_time > latest):
            latest = read.version_time
    outcome.version_time = context.version_time or latest
    return outcome


def _check_keys(read: ParseOutcome, where: Where, raw: RawMessage) -> None:
    """An entry whose facts have keys the store cannot hold fails alone, not its Bundle."""
    for fact in read.facts:
        problem = key_problem(fact)
        if problem is not None:
            raise FeedError(
                raw.document, where.base, problem[0], message_id=raw.message_id, found=problem[1]
            )


def _read_message_time(
    bundle: dict[str, Any], raw: RawMessage, context: MessageContext, outcome: ParseOutcome
) -> None:
    """The Bundle's own version time (``timestamp``, else ``meta.lastUpdated``) into the
    context; a malformed one is a non-fatal error and leaves the message without one."""
    try:
        context.version_time = _instant(bundle, "timestamp", "") or version_time(bundle)
    except EntryProblem as problem:
        outcome.errors.append(_bundle_error(raw, problem))


def _bundle_error(raw: RawMessage, problem: EntryProblem) -> FeedError:
    """A problem in the Bundle's own elements, located from the Bundle."""
    return FeedError(
        raw.document, Where.alone("Bundle").at(problem.path), problem.expected,
        message_id=raw.message_id, found=problem.found,
    )  # fmt: skip


def _positions(errors: list[FeedError]) -> set[str | None]:
    return {error.position for error in errors}


def _deletes(entry: object) -> bool:
    """Whether a Bundle entry deletes its resource (a transaction's or history's DELETE)."""
    request = entry.get("request") if isinstance(entry, dict) else None
    return isinstance(request, dict) and request.get("method") == "DELETE"


# request.url of a DELETE: [base/]Type/id (a conditional delete has a '?' and names no id).
_DELETED_URL = re.compile(r"(?:[^?]*/)?([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})")


def _deletion(entry: dict[str, Any], index: int, context: MessageContext) -> list[Retraction]:
    """The retractions a DELETE without its resource implies, when its facts can be named.

    Only a Patient's can: the others' fact ids or patient depend on the resource's content
    (an Observation's kind and components, an order's dosages, every subject), so their
    deletion is a located error saying it is not applied; types Vigie reads no facts from
    need nothing.
    """
    path = f"Bundle.entry[{index}].request.url"
    url = entry["request"].get("url")
    match = _DELETED_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        raise FeedError(
            context.document, path, "the deleted resource as Type/id (a conditional DELETE is "
            "not applied)", message_id=context.message_id, found=_shown(url),
        )  # fmt: skip
    kind, rid = match[1], match[2]
    if kind not in _EXTRACTORS:
        return []
    if kind != "Patient":
        raise FeedError(
            context.document, path, f"the {kind} itself with status entered-in-error (a DELETE "
            f"of a {kind} is not applied: its facts cannot be named without its content)",
            message_id=context.message_id, found=url,
        )  # fmt: skip
    entry_like = ResourceEntry({}, kind, rid, Where.in_bundle(index), context)
    source = Source(
        feed=feed, document=context.document, message_id=context.message_id, position=path,
        version_time=context.version_time,
    )  # fmt: skip
    return [Retraction(kind="patient", fact_id=entry_like.fact_id(), patient_id=rid, source=source)]


def _shown(value: object) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _entry_resource(
    entry: object, index: int, raw: RawMessage, context: MessageContext
) -> dict[str, Any] | None:
    """An entry's resource, indexed under its fullUrl; ``None`` for a request-only entry."""
    path = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict):
        raise FeedError(raw.document, path, "a JSON object", message_id=raw.message_id,
                        found=_kind_of(entry))  # fmt: skip
    resource = entry.get("resource")
    if resource is None and ("request" in entry or "response" in entry):
        return None  # e.g. a DELETE in a transaction: nothing to read
    if not isinstance(resource, dict):
        raise FeedError(raw.document, f"{path}.resource", "a FHIR resource",
                        message_id=raw.message_id, found=_kind_of(resource))  # fmt: skip
    _resource_type(resource, raw, f"{path}.resource")
    full_url = entry.get("fullUrl")
    context.index.add(resource, full_url if isinstance(full_url, str) else None)
    return resource


def _resource(
    resource: dict[str, Any],
    where: Where,
    context: MessageContext,
    validate: bool,
    deleted: bool = False,
) -> ParseOutcome:
    """One resource's facts (or retractions, when withdrawn or deleted) and its version time,
    or a FeedError located inside it."""
    kind = resource["resourceType"]
    if validate:
        raw_like = _Located(context.document, context.message_id)
        problem = _validation_problem(resource, kind, where, raw_like)
        if problem is not None:
            raise problem
    try:
        if context.elements_checked and kind in _EXTRACTORS:
            check_elements(resource, kind)
        # The usual cases are tested inline: a call per bulk line costs about 1% of a load.
        meta, own_time = resource.get("meta"), None
        if meta is not None and (type(meta) is not dict or "lastUpdated" in meta):
            own_time = version_time(resource)
        facts = resource_facts(resource, where, context, own_time or context.version_time)
        gone = deleted or resource.get("status") == "entered-in-error"
        if gone or ("verificationStatus" in resource and withdrawn(resource)):
            position = _withdrawing_field(resource, where, deleted)
            return ParseOutcome(retractions=_retractions(facts, position), version_time=own_time)
        return ParseOutcome(facts=facts, version_time=own_time)
    except EntryProblem as problem:
        raise FeedError(
            context.document, where.at(problem.path), problem.expected,
            message_id=context.message_id, found=problem.found,
        ) from None  # fmt: skip
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as error:
        # A shape the typed getters did not foresee: still a located error, never a crash.
        expected = f"a well-formed {kind} resource ({type(error).__name__}: {error})"
        raise FeedError(context.document, where.base, expected,
                        message_id=context.message_id) from None  # fmt: skip


_EXTRACTORS = {
    **fhir_fast.EXTRACTORS,
    **fhir_encounter.EXTRACTORS,
    **fhir_observation.EXTRACTORS,
    **fhir_medication.EXTRACTORS,
}


def resource_facts(
    resource: dict[str, Any],
    where: Where,
    context: MessageContext,
    version: datetime | None = None,
) -> list[AnyFact]:
    """The facts one resource gives, without validation (none for the types Vigie ignores),
    with ``version`` as their version time; a withdrawn resource (``withdrawn``) gives the facts
    it would give standing, which the connector retracts.

    Raises ``EntryProblem`` on a field of the wrong shape.
    """
    kind = resource.get("resourceType")
    extractor = _EXTRACTORS.get(kind) if isinstance(kind, str) else None
    if extractor is None:
        return []
    assert isinstance(kind, str)
    rid = context.index.logical_id(resource)
    return extractor(ResourceEntry(resource, kind, rid, where, context, version))


def _withdrawing_field(resource: dict[str, Any], where: Where, deleted: bool) -> str:
    """Where a resource is withdrawn: its entry's DELETE request, its status or its
    verificationStatus."""
    if deleted:
        return where.base.removesuffix(".resource") + ".request"
    if resource.get("status") == "entered-in-error":
        return where.at("status")
    return where.at("verificationStatus")


def _retractions(facts: list[AnyFact], position: str) -> list[Retraction]:
    """The facts a withdrawn resource would give, as retractions of the same kind and id."""
    return [
        Retraction(
            kind=fact.kind, fact_id=fact.fact_id, patient_id=fact.patient_id,
            source=Source(
                feed=feed, document=fact.source.document, message_id=fact.source.message_id,
                position=position, version_time=fact.source.version_time,
            ),
        )
        for fact in facts
    ]  # fmt: skip


class _Located:
    """The document and message names a validation error needs."""

    def __init__(self, document: str, message_id: str) -> None:
        self.document, self.message_id = document, message_id


# Validation with fhir.resources ---------------------------------------------------------------


def _validation_problem(
    resource: dict[str, Any], kind: str, where: Where, raw: RawMessage | _Located
) -> FeedError | None:
    """The first problem ``fhir.resources`` finds in a resource (R4B), as a located error."""
    from fhir.resources.R4B import get_fhir_model_class  # slow import: the fast path skips it

    try:
        get_fhir_model_class(kind).model_validate(resource)
    except pydantic.ValidationError as error:
        return _located_validation_error(error, where, raw)
    except (ValueError, TypeError, RecursionError) as error:
        expected = f"a valid FHIR R4B {kind} ({type(error).__name__}: {error})"
        return FeedError(raw.document, where.base, expected, message_id=raw.message_id)
    return None


def _located_validation_error(
    error: pydantic.ValidationError, where: Where, raw: RawMessage | _Located
) -> FeedError:
    problems = error.errors(include_url=False)
    first = problems[0]
    expected = _expectation(first)
    if len(problems) > 1:
        expected += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})"
    value = first.get("input")
    found = value if isinstance(value, str | int | float) else None
    return FeedError(
        raw.document, where.at(_loc_path(first["loc"])), expected, message_id=raw.message_id,
        found=None if found is None else str(found),
    )  # fmt: skip


def _loc_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _expectation(problem: Any) -> str:
    kind, message = problem["type"], str(problem["msg"]).removeprefix("Value error, ")
    if kind == "missing":
        return "a value (required field)"
    if kind == "extra_forbidden":
        return "no such element in FHIR R4B"
    return f"valid FHIR ({message.rstrip('.')})"
