"""PN13 (Phast SIPh) XML prescriptions → Patient, Stay, Observation and MedicationOrder facts.

A PN13 document is a ``<Messages>`` envelope (namespace ``http://www.phast.fr/SIPhII``, or none)
holding ``M_Prescription_médicaments`` messages. Each gives the patient (``Ipp``), the stay
(``Id_séjour``, ward = ``Unité_resp_médicale``), measurements (``Rens_compl``: weight, height)
and order lines (``Elément_prescr_médic``). A line prescribing several components (a compound
infusion) gives one MedicationOrder per component, all with the line's ``order_id``, because
rules look at each drug (the potassium chloride in a bag matters on its own).

How the posology is read (``Elément_posologie``), following the Interop'Santé PN13→FHIR
ConceptMaps (hl7.fhir.fr.medication):

- ``Fréquence_structurée``: ``Frq_multiplicité`` times per ``Frq_durée`` × ``Frq_échelle``
  (1 s, 2 min, 3 h, 4 day, 5 week, 6 month, 7 year); a ``Frq_filtre`` (days of week...) is not
  reduced to a daily count. ``Fréquence`` is a site code: only its ``Phast-signification`` is
  read, when it says plainly ``N fois par jour`` or ``toutes les N heures``.
- No frequency at all means once a day (the PN13 rule), except for an ``if needed`` element
  (``Type_événement_début`` 3), whose maximum comes from the minimum interval (an element with
  ``Type_événement_début`` 4 and ``Evénement_début`` 1, e.g. 6 h → at most 4 a day).
- ``Type_événement_début`` 4 with ``Evénement_début`` 3 is a maximum quantity per day: the
  daily dose is capped by it.
- A ``Débit`` (rate, e.g. ``5 mg/h``) counts as that dose every hour.
- A quantity in the unit ``dose`` is multiplied by the component's prescribed quantity.
- Several elements (morning 1, evening 2) add up: ``frequency_per_day`` and ``daily_dose`` are
  sums; ``dose`` is kept only when all elements give the same one.

Message identity and versions (issue 7): a document is one raw message, named after the
prescription it is a version of, ``<Ipp>|<Phast-id_message>`` (``5000001820|10723``). The
Interop'Santé PN13→FHIR ConceptMap maps ``Messages@Phast-id_message`` to
``MedicationRequest.groupIdentifier`` (the prescription) and ``Id_élément_prescr`` to
``MedicationRequest.identifier`` (the line), both in a system "to be assigned according to the
emitting system": the id is the sender's, and no PN13 message carries its emitter (none of the
six reference messages, in ``Messages`` attributes or elsewhere). The patient's ``Ipp`` scopes
it instead, so that two applications' counters only meet on the same patient. The two examples
sharing ``10723`` are one prescription (same patient, stay, ``Dh_prescription``, emission time
and line ``31626``) coded by substance (DC) in one and by product (UCD) in the other; both
translate to the same FHIR identifiers, so they are two versions of one message here, never two
prescriptions. A document without ``Phast-id_message`` (two of the examples) is named by a
content hash. The version time (``ParseOutcome.version_time`` and every fact's
``Source.version_time``) is ``Phast-dh_émission``, else the latest ``Dh_prescription``, in UTC.
A line is stopped by ``Cré_arr_mod_val`` ``A`` (status ``stopped``: the order existed); PN13 as
shown by the examples and the ConceptMap (where ``Cré_arr_mod_val`` is "unmatched") has no code
saying a line was entered in error, so this connector retracts nothing.

Errors name the XML element and line: ``line 21, /Messages/M_Prescription_médicaments/
Prescription/Elément_prescr_médic[2]/Dh_début: expected a date-time YYYYMMDD[HHMM[SS]]``.
The parser is the standard library's expat (what ElementTree runs on) so that each element keeps
its line; DTDs and entity declarations are refused before parsing.
"""

from __future__ import annotations

import hashlib
import re
import xml.parsers.expat
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from vigie.connectors.base import (
    UTC_RANGE,
    FeedError,
    ParseOutcome,
    RawMessage,
    TimeOutOfRange,
    as_utc,
    key_problem,
)
from vigie.connectors.compositions import code_ingredients
from vigie.connectors.dose_strength import dose_by_strength, label_strength
from vigie.connectors.dose_units import unknown_dose_unit
from vigie.connectors.drug_labels import label_drug
from vigie.connectors.labs import Reading, decimal_point_or_comma, match_code, normalise
from vigie.facts import (
    AnyFact,
    Coding,
    Flag,
    FlagCode,
    MedicationOrder,
    Patient,
    Sex,
    Source,
    Stay,
)
from vigie.terminology import Terminology, default_terminology, normalise_system

__all__ = ["Element", "feed", "parse", "parse_message", "sniff", "split", "ucd13"]

feed = "pn13"

PRESCRIPTION = "M_Prescription_médicaments"
RENS_COMPL_SYSTEM = "PN13_RENS_COMPL"
ROUTE_SYSTEM = "PN13"

_FORBIDDEN = re.compile(rb"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
_DECLARED_ENCODING = re.compile(
    rb"^(?:\xef\xbb\xbf)?\s*<\?xml[^>]*encoding\s*=\s*[\"']([A-Za-z0-9._-]+)"
)
_MESSAGE_ID = re.compile(rb"Phast-id_message\s*=\s*[\"']([^\"']*)[\"']")
_IPP = re.compile(rb"<(?:[\w.-]+:)?Ipp>([^<]*)</(?:[\w.-]+:)?Ipp>")
_EMISSION = "Phast-dh_émission"
_RATE = re.compile(r"^\s*(?P<unit>[^/]+?)\s*/\s*(?P<per>h|heure|min|mn|j|jour|24\s*h)\s*$", re.I)
_DATE_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
_SEXES = {"M": Sex.MALE, "F": Sex.FEMALE, "I": Sex.UNKNOWN, "U": Sex.UNKNOWN, "O": Sex.OTHER}
Status = Literal["active", "stopped", "unknown"]
_STATUSES: dict[str, Status] = {"C": "active", "M": "active", "V": "active", "A": "stopped"}
# Frq_échelle → length of one unit in days.
_SCALE_DAYS = {
    "1": 1 / 86400,
    "2": 1 / 1440,
    "3": 1 / 24,
    "4": 1.0,
    "5": 7.0,
    "6": 30.4375,
    "7": 365.25,
}
_HOURS = {
    "h": 1.0,
    "heure": 1.0,
    "heures": 1.0,
    "min": 1 / 60,
    "mn": 1 / 60,
    "j": 24.0,
    "jour": 24.0,
    "jours": 24.0,
}
_PER_HOUR = {"h": 1.0, "heure": 1.0, "min": 60.0, "mn": 60.0, "j": 1 / 24, "jour": 1 / 24}
_WORD_NUMBERS = {
    "un": 1,
    "une": 1,
    "deux": 2,
    "trois": 3,
    "quatre": 4,
    "cinq": 5,
    "six": 6,
    "huit": 8,
    "douze": 12,
}
_TIMES_A_DAY = re.compile(r"^(?P<n>\d+|\w+) fois par (jour|24 ?h)$")
_EVERY_HOURS = re.compile(r"^toutes les (?P<n>\d+|\w+) ?h(eures?)?$")
# Code_composant_N: N says which nomenclature the code is in (Interop'Santé
# PN13-FHIR-prescmed-medicationnoncompound ConceptMap). UCD codes come as UCD7 or UCD13.
_UCD_TYPES = frozenset({"1", "2", "5", "6"})
_SUBSTANCE_TYPES = frozenset({"3", "8", "13"})
_SMS_CODE = re.compile(r"^1\d{11}$")


# Document → raw messages -------------------------------------------------------------------


def sniff(head: bytes, name: str) -> bool:
    """A PN13 document is XML with a ``<Messages>`` root holding ``M_...`` messages."""
    head = head[:4096]
    return b"<Messages" in head and (b"SIPh" in head or b"<M_" in head)


def split(document: str, content: bytes) -> Iterator[RawMessage]:
    """The whole ``<Messages>`` document is one raw message (XML is cut only once parsed).

    Its id names the prescription it is a version of: ``<Ipp>|<Phast-id_message>``, e.g.
    ``5000001820|10723`` (see the module's docstring, "Message identity"); a document without
    ``Phast-id_message`` or ``Ipp`` has no such identity and is named by a content hash.
    """
    own = _first_text(_MESSAGE_ID, content[:4096])
    patient = _first_text(_IPP, content)
    digest = hashlib.sha256(content).hexdigest()[:16]
    message_id = f"{patient}|{own}" if own and patient else digest
    yield RawMessage(feed, document, content, message_id)


def _first_text(pattern: re.Pattern[bytes], content: bytes) -> str:
    match = pattern.search(content)
    return match.group(1).decode("latin-1").strip() if match else ""


# XML with line numbers ---------------------------------------------------------------------


@dataclass(eq=False)
class Element:
    """An XML element, namespace prefix dropped, with where it starts in the document."""

    tag: str
    attrib: dict[str, str]
    line: int
    column: int
    parent: Element | None = None
    children: list[Element] = field(default_factory=list)
    text: str = ""

    @property
    def path(self) -> str:
        """``/Messages/M_Prescription_médicaments/.../Elément_prescr_médic[2]/Dh_début``."""
        if self.parent is None:
            return f"/{self.tag}"
        same = [c for c in self.parent.children if c.tag == self.tag]
        index = f"[{same.index(self) + 1}]" if len(same) > 1 else ""
        return f"{self.parent.path}/{self.tag}{index}"

    @property
    def where(self) -> str:
        return f"line {self.line}, {self.path}"

    def child(self, tag: str) -> Element | None:
        return next((c for c in self.children if c.tag == tag), None)

    def all(self, tag: str) -> list[Element]:
        return [c for c in self.children if c.tag == tag]

    def prefixed(self, prefix: str) -> Element | None:
        """The first child whose tag starts with ``prefix`` (``Code_composant_1``...)."""
        return next((c for c in self.children if c.tag.startswith(prefix)), None)

    def value(self, tag: str) -> str:
        found = self.child(tag)
        return found.text.strip() if found is not None else ""


class _Refused(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _read_xml(raw: RawMessage) -> tuple[Element, list[FeedError]]:
    """The tree, and a warning when the declared encoding had to be overridden.

    Some senders declare ISO-8859-1 but write UTF-8 (one of the Interop'Santé examples does):
    when the declared 8-bit encoding fails and the bytes are valid UTF-8 with non-ASCII
    characters, the document is read as UTF-8 and the mismatch reported.
    """
    forbidden = _FORBIDDEN.search(raw.content)
    if forbidden:
        line = raw.content.count(b"\n", 0, forbidden.start()) + 1
        raise _feed_error(
            raw,
            f"line {line}",
            "XML without DTD or entity declarations (refused for safety)",
            forbidden.group().decode("latin-1"),
        )
    try:
        return _expat_tree(raw, None), []
    except FeedError as error:
        declared = _declared_encoding(raw.content)
        if declared in ("", "utf-8", "utf8") or not _is_utf8_text(raw.content):
            raise
        root = _expat_tree(raw, "UTF-8")
        warning = _feed_error(
            raw,
            "line 1",
            f"content in the declared encoding {declared} "
            f"(the bytes are UTF-8 and were read as UTF-8; {error.position}: "
            f"{error.expected})",
        )
        return root, [warning]


def _declared_encoding(content: bytes) -> str:
    match = _DECLARED_ENCODING.match(content)
    return match.group(1).decode("ascii").lower() if match else ""


def _is_utf8_text(content: bytes) -> bool:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not content.isascii()


def _expat_tree(raw: RawMessage, encoding: str | None) -> Element:
    builder = _TreeBuilder()
    parser = xml.parsers.expat.ParserCreate(encoding)
    builder.attach(parser)
    try:
        parser.Parse(raw.content, True)
    except xml.parsers.expat.ExpatError as error:
        where = f"line {error.lineno}, column {error.offset + 1}"
        reason = xml.parsers.expat.errors.messages.get(error.code, str(error))
        raise _feed_error(raw, where, f"well-formed XML ({reason})") from None
    except _Refused as refused:
        where = f"line {parser.CurrentLineNumber}"
        raise _feed_error(raw, where, "XML without DTD or entities", refused.what) from None
    except (LookupError, ValueError) as error:  # unknown encoding declared, bad codec bytes
        raise _feed_error(raw, "line 1", "XML in a known encoding", str(error)) from None
    if builder.root is None:
        raise _feed_error(raw, "line 1", "an XML document")
    return builder.root


class _TreeBuilder:
    def __init__(self) -> None:
        self.root: Element | None = None
        self.stack: list[Element] = []
        self.parser: xml.parsers.expat.XMLParserType | None = None

    def attach(self, parser: xml.parsers.expat.XMLParserType) -> None:
        self.parser = parser
        parser.StartElementHandler = self.start
        parser.EndElementHandler = self.end
        parser.CharacterDataHandler = self.data
        parser.StartDoctypeDeclHandler = self.refuse_doctype
        parser.EntityDeclHandler = self.refuse_entity

    def start(self, name: str, attrs: dict[str, str]) -> None:
        assert self.parser is not None
        parent = self.stack[-1] if self.stack else None
        element = Element(
            name.rpartition(":")[2],
            dict(attrs),
            self.parser.CurrentLineNumber,
            self.parser.CurrentColumnNumber + 1,
            parent,
        )
        if parent is None:
            self.root = element
        else:
            parent.children.append(element)
        self.stack.append(element)

    def end(self, name: str) -> None:
        self.stack.pop()

    def data(self, text: str) -> None:
        if self.stack:
            self.stack[-1].text += text

    def refuse_doctype(self, *args: object) -> None:
        raise _Refused("<!DOCTYPE")

    def refuse_entity(self, *args: object) -> None:
        raise _Refused("<!ENTITY")


def _feed_error(
    raw: RawMessage, where: str | None, expected: str, found: str | None = None
) -> FeedError:
    return FeedError(raw.document, where, expected, message_id=raw.message_id, found=found)


# Messages → facts --------------------------------------------------------------------------


@dataclass
class _Context:
    raw: RawMessage
    terminology: Terminology
    outcome: ParseOutcome = field(default_factory=ParseOutcome)

    def error(self, element: Element, expected: str, found: str | None = None) -> FeedError:
        return _feed_error(self.raw, element.where, expected, found)

    def problem(self, element: Element, expected: str, found: str | None = None) -> None:
        self.outcome.errors.append(self.error(element, expected, found))

    def source(self, element: Element) -> Source:
        return Source(
            feed=feed,
            document=self.raw.document,
            message_id=self.raw.message_id,
            position=f"{element.path} (line {element.line})",
            version_time=self.outcome.version_time,
        )

    def add(self, fact: AnyFact) -> None:
        """Keep a fact, or report it when the store could not hold its keys (the document is
        one message: one such fact must not make the store refuse all of it)."""
        problem = key_problem(fact)
        if problem is None:
            self.outcome.facts.append(fact)
        else:
            error = _feed_error(self.raw, fact.source.position, problem[0], problem[1])
            self.outcome.errors.append(error)


def parse(raw: RawMessage) -> ParseOutcome:
    """Facts of a PN13 document; raises ``FeedError`` when nothing in it can be read."""
    return parse_message(raw, default_terminology())


def parse_message(raw: RawMessage, terminology: Terminology) -> ParseOutcome:
    """``parse`` with an explicit terminology (a site's own mapping tables)."""
    root, warnings = _read_xml(raw)
    context = _Context(raw, terminology)
    context.outcome.errors.extend(warnings)
    if root.tag != "Messages":
        raise context.error(root, "a PN13 <Messages> root element", root.tag)
    messages = [c for c in root.children if c.tag.startswith("M_")]
    if not messages:
        raise context.error(root, f"at least one <{PRESCRIPTION}> message")
    context.outcome.version_time = _version_time(context, root, messages)
    for message in messages:
        if message.tag != PRESCRIPTION:
            context.problem(
                message, f"<{PRESCRIPTION}> (other PN13 messages are not read)", message.tag
            )
            continue
        try:
            _read_prescription_message(context, message)
        except FeedError as error:
            context.outcome.errors.append(error)
    if not context.outcome.facts and context.outcome.errors:
        raise context.outcome.errors[0]
    return context.outcome


def _version_time(context: _Context, root: Element, messages: list[Element]) -> datetime | None:
    """When the sender wrote this version: ``Phast-dh_émission``, else the latest
    ``Dh_prescription`` (the two Interop'Santé examples without the attribute have one)."""
    emitted = root.attrib.get(_EMISSION, "").strip()
    if emitted:
        local = _parse_datetime(emitted)
        if local is not None:
            return _version_utc(context, root, local)
        context.problem(root, f"a {_EMISSION} date-time YYYYMMDD[HHMM[SS]]", emitted)
    prescribed = [
        _parse_datetime(prescription.value("Dh_prescription"))  # reported when read
        for message in messages
        if message.tag == PRESCRIPTION
        for prescription in message.all("Prescription")
    ]
    latest = max((when for when in prescribed if when is not None), default=None)
    return _version_utc(context, root, latest) if latest else None


def _version_utc(context: _Context, root: Element, local: datetime) -> datetime | None:
    try:
        return as_utc(local)
    except TimeOutOfRange:
        context.problem(root, f"a version time {UTC_RANGE}", local.isoformat())
        return None


def _read_prescription_message(context: _Context, message: Element) -> None:
    patient = _read_patient(context, _required(context, message, "Patient"))
    stay = message.child("Séjour")
    stay_id = stay.value("Id_séjour") if stay is not None else ""
    for prescription in message.all("Prescription") or [
        _required(context, message, "Prescription")
    ]:
        authored = _event_time(context, prescription.child("Dh_prescription"))
        if stay is not None and stay_id:
            context.add(_stay(context, stay, stay_id, patient, prescription))
        for rens in prescription.all("Rens_compl"):
            _read_measure(context, rens, patient, authored)
        for line in prescription.all("Elément_prescr_médic"):
            try:
                _read_order_line(context, line, patient, stay_id or None)
            except FeedError as error:
                context.outcome.errors.append(error)


def _required(context: _Context, parent: Element, tag: str) -> Element:
    found = parent.child(tag)
    if found is None:
        raise context.error(parent, f"a <{tag}> element")
    return found


def _read_patient(context: _Context, element: Element) -> Patient:
    ipp = element.value("Ipp")
    if not ipp:
        raise context.error(element, "an <Ipp> patient identifier")
    born = _datetime(context, element.child("Date_naissance"))
    sex_text = element.value("Sexe").upper()
    if sex_text and sex_text not in _SEXES:
        context.problem(_required(context, element, "Sexe"), "a sex M, F, I or U", sex_text)
    patient = Patient(
        fact_id=f"pn13:patient:{ipp}",
        patient_id=ipp,
        # the birth date's element, what an alert's age evidence comes from
        source=context.source(element.child("Date_naissance") or element),
        birth_date=born.date() if born else None,
        sex=_SEXES.get(sex_text, Sex.UNKNOWN),
    )
    context.add(patient)
    return patient


def _stay(
    context: _Context, stay: Element, stay_id: str, patient: Patient, prescription: Element
) -> Stay:
    ward = prescription.value("Unité_resp_médicale") or prescription.value("Unité_hébergement")
    return Stay(
        fact_id=f"pn13:stay:{stay_id}",
        patient_id=patient.patient_id,
        source=context.source(stay),
        stay_id=stay_id,
        ward=ward or None,
    )


def _read_measure(
    context: _Context, rens: Element, patient: Patient, authored: datetime | None
) -> None:
    """A ``Rens_compl`` with a number: weight, height..., mapped through the lab tables."""
    code_element = rens.prefixed("Code_rens_compl")
    value_element = rens.prefixed("Valeur_rens_compl")
    if value_element is None or value_element.child("Nombre") is None:
        return  # a text remark, not a measurement
    if code_element is None or not code_element.text.strip():
        context.problem(rens, "a <Code_rens_compl> saying what is measured")
        return
    number_element = value_element.child("Nombre")
    number = _number(context, number_element)
    when = _event_time(context, rens.child("Dh_rens_compl")) or authored
    if number is None or number_element is None:
        return
    if when is None:
        context.problem(rens, "a <Dh_rens_compl> (or the prescription's <Dh_prescription>)")
        return
    code = Coding(system=RENS_COMPL_SYSTEM, code=code_element.text.strip())
    reading = Reading(number_element.text.strip(), number, value_element.value("Unité") or None)
    measurement = normalise(
        context.terminology,
        match_code(context.terminology, [code]),
        reading,
        unmapped_kind="observation",
    )
    fields = measurement.fields() | {
        "fact_id": f"pn13:measure:{patient.patient_id}:{code.code}:{when.isoformat()}",
        "patient_id": patient.patient_id,
        "source": context.source(rens),
        "code": code,
        "time": when,
    }
    context.add(measurement.model(**fields))


# Order lines -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Quantity:
    value: float
    unit: str
    where: str = field(default="", compare=False)  # the element the unit was read from


@dataclass(frozen=True)
class _Intake:
    """One posology element: how much each time, how many times a day, if needed or not."""

    quantity: _Quantity | None
    per_day: float | None
    as_needed: bool
    text: str


@dataclass(frozen=True)
class _Posology:
    intakes: tuple[_Intake, ...]
    min_interval_hours: float | None
    max_per_day: _Quantity | None
    notes: tuple[str, ...]


def _read_order_line(
    context: _Context, line: Element, patient: Patient, stay_id: str | None
) -> None:
    order_id = line.value("Id_élément_prescr")
    if not order_id:
        raise context.error(line, "an <Id_élément_prescr> order line identifier")
    components = line.all("Composant_prescrit")
    if not components:
        raise context.error(line, "a <Composant_prescrit> naming the drug")
    common = _line_fields(context, line)
    posology = _read_posology(context, line)
    for index, component in enumerate(components, 1):
        # Senders may number order lines per prescription ('id1'): the id is the patient's.
        fact_id = f"pn13:order:{patient.patient_id}:{order_id}"
        fact_id += f":{index}" if len(components) > 1 else ""
        context.add(
            _order(
                context,
                component,
                fact_id,
                order_id,
                patient,
                stay_id,
                common,
                posology,
                applies=_posology_applies(component, components),
                alone=len(components) == 1,
            )
        )


@dataclass(frozen=True)
class _LineFields:
    """What every component of an order line shares."""

    route_code: str | None
    route: str | None
    start: datetime | None
    end: datetime | None
    status: Status
    prescriber: str | None
    label: str | None
    links: str | None


def _line_fields(context: _Context, line: Element) -> _LineFields:
    route_code = line.value("Voie_administration")
    prescriber = line.child("Identification_prescripteur")
    return _LineFields(
        route_code=route_code or None,
        route=context.terminology.route(ROUTE_SYSTEM, route_code),
        start=_event_time(context, line.child("Dh_début")),
        end=_event_time(context, line.child("Dh_fin")),
        status=_status(context, line),
        prescriber=(prescriber.value("Identifiant") if prescriber is not None else "")
        or line.value("Id_prescripteur")
        or None,
        label=" ".join(line.value("Libellé_élément_prescr").split()) or None,
        links=_links(line),
    )


def _links(line: Element) -> str | None:
    """Say when a line is an alternative to another (``Type_liaison_élément`` 3): both come
    as active orders, but only one of them is meant to be given."""
    others = [
        link.value("Id_élément_lié")
        for link in line.all("Elément_lié")
        if link.value("Type_liaison_élément") == "3"
    ]
    if not others:
        return None
    conditions = [
        e.value("Evénement2_début") or e.value("Evénement_début")
        for e in line.all("Elément_posologie")
        if "3" in (e.value("Type_événement2_début"), e.value("Type_événement_début"))
    ]
    condition = next((c for c in conditions if c and not c.isdigit()), "")
    text = f"alternative to line {', '.join(others)}"
    return f"{text} ({condition})" if condition else text


def _status(context: _Context, line: Element) -> Status:
    code = line.value("Cré_arr_mod_val").upper()
    if not code:
        return "active"
    if code not in _STATUSES:
        context.problem(
            _required(context, line, "Cré_arr_mod_val"),
            "a line status C (create), M (modify), V (validate) or A (stop)",
            code,
        )
        return "unknown"
    return _STATUSES[code]


def _posology_applies(component: Element, components: list[Element]) -> bool:
    """Whether a quantity in a real unit (mg...) is this component's: the only one, or the
    one marked ``Référent_poso``."""
    return len(components) == 1 or component.value("Référent_poso") == "1"


def _order(
    context: _Context,
    component: Element,
    fact_id: str,
    order_id: str,
    patient: Patient,
    stay_id: str | None,
    common: _LineFields,
    posology: _Posology,
    *,
    applies: bool,
    alone: bool = True,
) -> MedicationOrder:
    drug = _drug(context, component)
    flags: list[Flag] = []
    atc = _atc(context.terminology, drug)
    codes = f"{drug.system}|{drug.code}"
    by_name = (
        None if atc else label_drug(context.terminology, [drug.display], atc=None, codes=codes)
    )
    if by_name is not None and by_name.flags:  # the code gave no ATC, the drug's label does
        atc = by_name.atc
        flags.extend(by_name.flags)
    elif atc is None:
        flags.append(
            Flag(
                code=FlagCode.UNMAPPED_CODE,
                detail=f"no ATC for {drug.system} drug code {drug.code!r}",
            )
        )
    if common.route_code and common.route is None:
        flags.append(
            Flag(
                code=FlagCode.UNMAPPED_CODE,
                detail=f"PN13 route code {common.route_code!r} is not mapped",
            )
        )
    dose = _component_dose(context, component, posology, applies)
    if dose.value is None and dose.daily is None:
        flags.append(Flag(code=FlagCode.MISSING_DOSE, detail="no usable dose in the posology"))
    flags.extend(dose.flags)
    if dose.per_day is None:
        flags.append(
            Flag(
                code=FlagCode.MISSING_FREQUENCY,
                detail="no daily frequency could be read from the posology",
            )
        )
    ingredients = code_ingredients(context.terminology, [(drug.system, drug.code)]) or (
        by_name.ingredients if by_name is not None else ()
    )
    value, unit, daily = dose.value, dose.unit, dose.daily
    if alone and not ingredients:  # a component of a mixture is dosed by the mixture's volume
        strength = label_strength(
            context.terminology, [drug.display or common.label], atc=atc, source="label"
        )
        by_strength = dose_by_strength(value, unit or None, daily, strength)
        if by_strength is not None:  # tablets (or mL) of one substance: its amount
            value, unit, daily = by_strength.dose, by_strength.dose_unit, by_strength.daily_dose
            flags.append(by_strength.flag)
    return MedicationOrder(
        fact_id=fact_id,
        patient_id=patient.patient_id,
        source=context.source(component),
        order_id=order_id,
        stay_id=stay_id,
        drug=drug,
        atc=atc,
        label=drug.display or common.label,
        dose=value,
        dose_unit=unit,
        original_dose=dose.original_value,
        original_dose_unit=dose.original_unit,
        frequency_per_day=dose.per_day,
        frequency_text="; ".join(filter(None, [dose.text, common.links])) or None,
        daily_dose=daily,
        as_needed=dose.as_needed,
        route=common.route,
        original_route=common.route_code,
        start=common.start,
        end=common.end,
        status=common.status,
        prescriber=common.prescriber,
        flags=tuple(flags),
        ingredients=ingredients,
    )


def _drug(context: _Context, component: Element) -> Coding:
    code_element = component.prefixed("Code_composant")
    code = code_element.text.strip() if code_element is not None else ""
    if code_element is None or not code:
        raise context.error(component, "a <Code_composant_N> drug code")
    label = " ".join(component.value("Libellé_composant").split()) or None
    return Coding(system=_nomenclature(code_element, code), code=code, display=label)


def _nomenclature(code_element: Element, code: str) -> str:
    """The code system of ``Code_composant_N``: its ``Phast-nomenclature``, else from N."""
    declared = code_element.attrib.get("Phast-nomenclature", "").strip()
    if declared:
        return normalise_system(declared)
    kind = code_element.tag.rpartition("_")[2]
    if kind in _UCD_TYPES:
        return "UCD"
    if kind in _SUBSTANCE_TYPES:
        return "SMS" if _SMS_CODE.match(code) else f"PN13-COMPOSANT-{kind}"
    return f"PN13-COMPOSANT-{kind}"


def _atc(terminology: Terminology, drug: Coding) -> str | None:
    atc = terminology.drug_atc(drug.system, drug.code)
    if atc is None and drug.system == "UCD" and len(drug.code) == 7:
        atc = terminology.drug_atc("UCD", ucd13(drug.code))
    if atc is None and drug.system == "UCD" and len(drug.code) == 13:
        atc = terminology.drug_atc("UCD", drug.code[5:12])
    return atc


def ucd13(ucd7: str) -> str:
    """The UCD13 form of a UCD7 code: ``34008`` + the code + an EAN-13 check digit.

    >>> ucd13("9216902")
    '3400892169026'
    """
    body = f"34008{ucd7}"
    total = sum(int(d) * (3 if i % 2 else 1) for i, d in enumerate(body))
    return body + str((10 - total % 10) % 10)


# Posology ----------------------------------------------------------------------------------


def _read_posology(context: _Context, line: Element) -> _Posology:
    intakes: list[_Intake] = []
    interval: float | None = None
    maximum: _Quantity | None = None
    notes: list[str] = []
    for element in line.all("Elément_posologie"):
        first = element.value("Type_événement_début")
        second = element.value("Type_événement2_début")
        if first == "4" and second in ("", "4"):
            event = element.value("Evénement_début")
            quantity = _quantity(context, element.child("Quantité"))
            if event == "1" and quantity is not None:
                interval = _hours(context, element, quantity)
            elif event == "3" and quantity is not None:
                maximum = quantity
            else:
                notes.append(f"constraint {event or '?'}")
            continue
        intakes.append(_intake(context, element, as_needed=first == "3"))
    return _Posology(tuple(intakes), interval, maximum, tuple(notes))


def _intake(context: _Context, element: Element, *, as_needed: bool) -> _Intake:
    rate = _quantity(context, element.child("Débit"))
    if rate is not None:
        return _rate_intake(context, element, rate)
    quantity = _quantity(context, element.child("Quantité"))
    per_day, text = _frequency(context, element)
    if per_day is None and not text and not as_needed:
        per_day, text = 1.0, "once a day"  # PN13: no frequency means once a day
    amount = f"{_text(quantity.value)} {quantity.unit}" if quantity else "?"
    prefix = "if needed: " if as_needed else ""
    return _Intake(quantity, per_day, as_needed, f"{prefix}{amount} {text}".strip())


def _rate_intake(context: _Context, element: Element, rate: _Quantity) -> _Intake:
    match = _RATE.match(rate.unit)
    per_hour = _PER_HOUR.get(match.group("per").lower().replace(" ", "")) if match else None
    if match and match.group("per").replace(" ", "") == "24h":
        per_hour = 1 / 24
    text = f"{_text(rate.value)} {rate.unit} continuous"
    if not match or per_hour is None:
        context.problem(element, "a rate unit such as mg/h or mL/min", rate.unit)
        return _Intake(None, None, False, text)
    amount = _Quantity(rate.value * per_hour, match.group("unit"), rate.where)
    return _Intake(amount, 24.0, False, text)


def _frequency(context: _Context, element: Element) -> tuple[float | None, str]:
    structured = element.child("Fréquence_structurée")
    if structured is not None:
        return _structured_frequency(context, structured)
    local = element.child("Fréquence")
    if local is not None:
        meaning = local.attrib.get("Phast-signification", "").strip()
        code = f"{local.attrib.get('Phast-nomenclature', 'local')} {local.text.strip()}"
        per_day = _per_day_from_label(meaning)
        return per_day, meaning or f"frequency code {code}"
    return None, ""


def _structured_frequency(context: _Context, element: Element) -> tuple[float | None, str]:
    label = element.value("Frq_libellé")
    if element.child("Frq_filtre") is not None:
        return None, label or "filtered schedule"
    scale = element.value("Frq_échelle")
    if scale not in _SCALE_DAYS:
        context.problem(
            element, "a <Frq_échelle> 1 to 7 (s, min, h, day, week, month, year)", scale
        )
        return None, label
    period = _positive(context, element.child("Frq_durée")) or 1.0
    times = _positive(context, element.child("Frq_multiplicité")) or 1.0
    return round(times / (period * _SCALE_DAYS[scale]), 6), label or "structured frequency"


def _per_day_from_label(label: str) -> float | None:
    """``Trois fois par jour`` → 3, ``Toutes les 8 heures`` → 3; anything else → unknown."""
    text = " ".join(label.lower().split())
    times = _TIMES_A_DAY.match(text)
    if times:
        count = _count(times.group("n"))
        return float(count) if count else None
    every = _EVERY_HOURS.match(text)
    if every:
        hours = _count(every.group("n"))
        return round(24 / hours, 6) if hours else None
    return None


def _count(word: str) -> int | None:
    return int(word) if word.isdigit() else _WORD_NUMBERS.get(word)


def _hours(context: _Context, element: Element, quantity: _Quantity) -> float | None:
    factor = _HOURS.get(quantity.unit.lower())
    if factor is None or quantity.value <= 0:
        context.problem(
            element, "a minimum interval in h, min or j", f"{_text(quantity.value)} {quantity.unit}"
        )
        return None
    return quantity.value * factor


@dataclass(frozen=True)
class _Dose:
    value: float | None
    unit: str | None
    original_value: str | None
    original_unit: str | None
    per_day: float | None
    daily: float | None
    as_needed: bool
    text: str
    flags: tuple[Flag, ...] = ()  # an unknown dose unit


def _component_dose(
    context: _Context, component: Element, posology: _Posology, applies: bool
) -> _Dose:
    """Dose, frequency and daily dose of one component under the line's posology."""
    per_unit = _quantity(context, component.child("Quantité_composant_prescrite"))
    intakes = [_scaled(i, per_unit, applies) for i in posology.intakes]
    intakes = [_with_interval(i, posology.min_interval_hours) for i in intakes]
    per_days = [i.per_day for i in intakes]
    per_day = (
        sum(p for p in per_days if p is not None) if intakes and None not in per_days else None
    )
    units = {context.terminology.canonical_unit(i.quantity.unit) for i in intakes if i.quantity}
    values = {i.quantity.value for i in intakes if i.quantity}
    whole = all(i.quantity for i in intakes) and len(units) == 1
    unit = next(iter(units)) if whole else None
    dose = next(iter(values)) if whole and len(values) == 1 else None
    daily = _daily(intakes, context.terminology, unit, posology.max_per_day) if whole else None
    originals = [i.quantity for i in intakes if i.quantity]
    terminology = context.terminology
    unknown = (
        unknown_dose_unit(q.unit, terminology.canonical_unit(q.unit), q.where) for q in originals
    )
    return _Dose(
        value=dose,
        unit=unit,
        original_value=_text(originals[0].value) if len(originals) == 1 else None,
        original_unit=originals[0].unit if len(originals) == 1 else None,
        per_day=round(per_day, 6) if per_day is not None else None,
        daily=daily,
        as_needed=bool(intakes) and all(i.as_needed for i in intakes),
        text=_describe(intakes, posology),
        flags=tuple(dict.fromkeys(f for f in unknown if f is not None)),
    )


def _scaled(intake: _Intake, per_unit: _Quantity | None, applies: bool) -> _Intake:
    """A quantity in ``dose`` means so many times the component's prescribed quantity."""
    quantity = intake.quantity
    if quantity is None:
        return intake
    if quantity.unit.lower() == "dose":
        scaled = (
            _Quantity(quantity.value * per_unit.value, per_unit.unit, per_unit.where)
            if per_unit
            else None
        )
        return _Intake(scaled, intake.per_day, intake.as_needed, intake.text)
    return intake if applies else _Intake(None, intake.per_day, intake.as_needed, intake.text)


def _with_interval(intake: _Intake, hours: float | None) -> _Intake:
    """An if-needed element without its own frequency may be taken once per interval."""
    if not intake.as_needed or intake.per_day is not None or not hours:
        return intake
    return _Intake(intake.quantity, round(24 / hours, 6), True, intake.text)


def _daily(
    intakes: list[_Intake], terminology: Terminology, unit: str | None, maximum: _Quantity | None
) -> float | None:
    total = None
    if all(i.per_day is not None for i in intakes):
        total = sum(i.quantity.value * i.per_day for i in intakes if i.quantity and i.per_day)
    if maximum is not None and terminology.canonical_unit(maximum.unit) == unit:
        total = maximum.value if total is None else min(total, maximum.value)
    return round(total, 6) if total is not None else None


def _describe(intakes: list[_Intake], posology: _Posology) -> str:
    parts = [i.text for i in intakes]
    if posology.min_interval_hours:
        parts.append(f"at least {_text(posology.min_interval_hours)} h apart")
    if posology.max_per_day:
        parts.append(f"max {_text(posology.max_per_day.value)} {posology.max_per_day.unit}/day")
    return "; ".join(parts + list(posology.notes))


# Values ------------------------------------------------------------------------------------


def _quantity(context: _Context, element: Element | None) -> _Quantity | None:
    """A ``Nombre`` + ``Unité`` pair (``Quantité``, ``Débit``...), or ``None`` when empty."""
    if element is None or element.child("Nombre") is None:
        return None
    number = _number(context, element.child("Nombre"))
    if number is None:
        return None
    return _Quantity(number, element.value("Unité"), f"{element.path}/Unité")


def _number(context: _Context, element: Element | None) -> float | None:
    text = element.text.strip() if element is not None else ""
    if element is None or not text:
        return None
    number = decimal_point_or_comma(text)
    if number is None:
        context.problem(element, "a number", text)
    return number


def _positive(context: _Context, element: Element | None) -> float | None:
    value = _number(context, element)
    if value is not None and value <= 0 and element is not None:
        context.problem(element, "a positive number", element.text.strip())
        return None
    return value


def _datetime(context: _Context, element: Element | None) -> datetime | None:
    """``YYYYMMDD``, ``YYYYMMDDHHMM``, ``YYYYMMDDHHMMSS`` (+ 2 digits of hundredths)."""
    text = element.text.strip() if element is not None else ""
    if element is None or not text:
        return None
    value = _parse_datetime(text)
    if value is None:
        context.problem(element, "a date-time YYYYMMDD[HHMM[SS]]", text)
    return value


def _parse_datetime(text: str) -> datetime | None:
    digits = text[:14] if len(text) == 16 else text
    pattern = _DATE_FORMATS.get(len(digits))
    try:
        if pattern and text.isdigit():
            return datetime.strptime(digits, pattern)
    except ValueError:
        pass
    return None


def _event_time(context: _Context, element: Element | None) -> datetime | None:
    """A time of care: PN13 sends local times without offset; facts hold naive UTC."""
    local = _datetime(context, element)
    if local is None or element is None:
        return None
    try:
        return as_utc(local)
    except TimeOutOfRange:
        context.problem(element, f"a date-time {UTC_RANGE}", element.text.strip())
        return None


def _text(value: float) -> str:
    return f"{value:g}"
