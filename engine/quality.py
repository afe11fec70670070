"""The data-quality report a pharmacist and an interface engineer read before trusting alerts.

Counts per fact kind, unmapped codes with their frequency, unknown units (of results and
measurements, and of drug lines' doses: a dose rule cannot read those), implausible values
(limits in ``plausibility.csv``), orders without dose or frequency, combination products whose
composition is unknown (their dose is credited to no substance: daily doses and MME are lower
bounds), orders whose dose was read through the product's strength (a ``dose_from_strength``
flag: tablets of a 5 mg product as mg) and those whose dose is still a count of dose units
(tablets, or a number without unit: no dose rule can read it), patients without weight or
creatinine, and — when given — the ingest outcome
(messages per status, errors).

Drug lines (orders and administrations) are counted per feed by where their ATC code came from:
the code tables, the fallback from the drug's name (an ``atc_from_name`` flag), or nowhere; the
name fallback rate is the share of lines mapped by name, and the codes mapped by name are listed
so that the tables can be completed. It is tallied
as facts stream by (``QualityTally``), keeping a few fields per fact rather than the facts, so
that it runs on a whole hospital's feeds in bounded memory.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vigie.engine.derived import is_combination_code
from vigie.facts import (
    CODED_FIELDS,
    FACT_KINDS,
    AnyFact,
    Coding,
    FlagCode,
    LabResult,
    MedicationAdministration,
    MedicationOrder,
    Observation,
)

__all__ = ["PLAUSIBILITY", "QualityReport", "QualityTally", "quality_report", "render_text"]

# Canonical dose units that count units of the dose form (unit_aliases.csv): a dose in them,
# or without unit, is no amount a dose rule can read.
_FORM_UNITS = frozenset(
    {"tablet", "capsule", "sachet", "suppository", "ampoule", "vial", "syringe", "patch", "bag",
     "bottle"}
)  # fmt: skip


def _load_plausibility(path: Path) -> dict[str, tuple[float, float]]:
    with path.open(encoding="utf-8") as handle:
        rows = csv.DictReader(line for line in handle if not line.startswith("#"))
        return {r["concept"]: (float(r["low"]), float(r["high"])) for r in rows}


PLAUSIBILITY = _load_plausibility(Path(__file__).with_name("plausibility.csv"))


@dataclass
class QualityReport:
    counts: dict[str, int]
    patients: int
    unmapped_codes: list[dict[str, Any]] = field(default_factory=list)
    unknown_units: list[dict[str, Any]] = field(default_factory=list)
    implausible_values: list[dict[str, Any]] = field(default_factory=list)
    orders_without_dose: int = 0
    orders_without_frequency: int = 0
    orders_without_atc: int = 0
    orders_without_route: int = 0
    orders_without_composition: int = 0  # a combination code, no ingredients: doses not split
    orders_dose_by_strength: int = 0  # tablets (or no unit, mL) read as mg through the strength
    orders_dose_in_units: int = 0  # a single-substance dose still in tablets or without unit
    drug_mapping: list[dict[str, Any]] = field(default_factory=list)
    mapped_by_name: list[dict[str, Any]] = field(default_factory=list)
    patients_without_weight: int = 0
    patients_without_creatinine: int = 0
    labs_without_number: dict[str, int] = field(default_factory=dict)  # positive, negative, unread
    messages: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Noted:
    """What one fact adds to the report beyond its patient (most facts add nothing more)."""

    patient_id: str
    unmapped: tuple[str | None, str | None, str | None] | None = None  # system, code, display
    unknown_unit: tuple[str | None, str | None] | None = None  # concept, unit as sent
    implausible: dict[str, Any] | None = None  # the row the report lists
    # no dose, frequency, ATC, route; a combination product's code without its composition;
    # a dose read through the strength; a single-substance dose still in units of the form
    order_gaps: tuple[bool, bool, bool, bool, bool, bool, bool] | None = None
    measured: str | None = None  # weight or creatinine with a value
    without_number: str | None = None  # a lab without number: positive, negative or unread
    drug_mapping: tuple[str, str] | None = None  # feed, "code" / "name" / "none" (drug lines)
    by_name: tuple[str | None, str, str | None, str | None] | None = None  # system, code, ...


_Contribution = str | _Noted  # a patient id alone, or what more the fact adds


class QualityTally:
    """The report computed as facts stream by: what each fact adds is kept in a few fields,
    never the fact, so a whole feed is reported on in bounded memory.

    Facts with the same (kind, fact_id) replace each other, the last one winning, in the place
    of the first (the rule of ``FactSet`` and of the store): counts are of distinct facts.

    >>> from datetime import datetime
    >>> from vigie.facts import Source
    >>> def potassium(value: float) -> LabResult:
    ...     return LabResult(fact_id="k1", patient_id="p1", concept="potassium", value=value,
    ...                      source=Source(feed="csv", document="labs.csv", position="line 2"),
    ...                      code=Coding(system="LOINC", code="2823-3"), unit="mmol/L",
    ...                      time=datetime(2024, 1, 2, 8))
    >>> tally = QualityTally()
    >>> tally.add_fact(potassium(42.0))
    >>> [row["value"] for row in tally.report().implausible_values]
    [42.0]
    >>> tally.add_fact(potassium(4.2))  # k1 sent again, corrected: it replaces the first
    >>> report = tally.report()
    >>> report.counts["lab"], report.implausible_values
    (1, [])
    """

    def __init__(self, limit: int = 50) -> None:
        self.limit = limit
        self._facts: dict[str, dict[str, _Contribution]] = {kind: {} for kind in FACT_KINDS}
        self._patient_ids: dict[str, str] = {}  # one string per patient, shared by its facts
        self._feeds: dict[str, str] = {}  # one string per feed name, likewise
        self.messages: Counter[str] = Counter()
        self._errors: dict[bool, list[str]] = {True: [], False: []}  # fatal first, as read
        self._error_count = 0

    def add_fact(self, fact: AnyFact) -> None:
        patient_id = self._patient_ids.setdefault(fact.patient_id, fact.patient_id)
        noted = _Noted(patient_id)
        _note_code(noted, fact)
        if isinstance(fact, LabResult | Observation):
            _note_measurement(noted, fact)
        elif isinstance(fact, MedicationOrder):
            noted.order_gaps = (
                fact.dose is None,
                fact.frequency_per_day is None,
                fact.atc is None,
                fact.route is None,
                not fact.ingredients and is_combination_code(fact.atc),
                _flagged(fact, FlagCode.DOSE_FROM_STRENGTH),
                fact.dose is not None
                and not fact.ingredients
                and (fact.dose_unit is None or fact.dose_unit in _FORM_UNITS),
            )
        if isinstance(fact, MedicationOrder | MedicationAdministration):
            self._note_drug_mapping(noted, fact)
            _note_dose_unit(noted, fact)
        plain = noted == _Noted(patient_id)
        self._facts[fact.kind][fact.fact_id] = patient_id if plain else noted

    def _note_drug_mapping(
        self, noted: _Noted, fact: MedicationOrder | MedicationAdministration
    ) -> None:
        feed = self._feeds.setdefault(fact.source.feed, fact.source.feed)
        if fact.atc is None:
            noted.drug_mapping = (feed, "none")
        elif _flagged(fact, FlagCode.ATC_FROM_NAME):
            noted.drug_mapping = (feed, "name")
            noted.by_name = (fact.drug.system, fact.drug.code, fact.drug.display, fact.atc)
        else:
            noted.drug_mapping = (feed, "code")

    def add_facts(self, facts: Iterable[AnyFact]) -> None:
        for fact in facts:
            self.add_fact(fact)

    def add_errors(self, errors: Sequence[object], fatal: bool = False) -> None:
        """Errors of the ingest, as read; only the first ``limit`` are kept (as text)."""
        kept = self._errors[fatal]
        kept.extend(str(error) for error in errors[: max(self.limit - len(kept), 0)])
        self._error_count += len(errors)

    def report(self) -> QualityReport:
        contributions = {kind: list(facts.values()) for kind, facts in self._facts.items()}
        noted = {
            kind: [c for c in cs if isinstance(c, _Noted)] for kind, cs in contributions.items()
        }
        patients = {_patient(c) for cs in contributions.values() for c in cs}
        orders = [c.order_gaps for c in noted["medication_order"] if c.order_gaps]
        errors = self._errors[True] + self._errors[False]
        return QualityReport(
            counts={kind: len(cs) for kind, cs in contributions.items()},
            patients=len(patients),
            unmapped_codes=_unmapped_codes(noted, self.limit),
            unknown_units=_unknown_units(noted, self.limit),
            implausible_values=_implausible(noted, self.limit),
            orders_without_dose=sum(gaps[0] for gaps in orders),
            orders_without_frequency=sum(gaps[1] for gaps in orders),
            orders_without_atc=sum(gaps[2] for gaps in orders),
            orders_without_route=sum(gaps[3] for gaps in orders),
            orders_without_composition=sum(gaps[4] for gaps in orders),
            orders_dose_by_strength=sum(gaps[5] for gaps in orders),
            orders_dose_in_units=sum(gaps[6] for gaps in orders),
            drug_mapping=_drug_mapping(noted),
            mapped_by_name=_mapped_by_name(noted, self.limit),
            patients_without_weight=len(patients - _measured(noted["observation"], "weight")),
            patients_without_creatinine=len(patients - _measured(noted["lab"], "creatinine")),
            labs_without_number=_without_number(noted["lab"]),
            messages=dict(self.messages),
            errors=errors[: self.limit],
            error_count=self._error_count,
        )


def _patient(contribution: _Contribution) -> str:
    return contribution if isinstance(contribution, str) else contribution.patient_id


def _note_code(noted: _Noted, fact: AnyFact) -> None:
    field_name = CODED_FIELDS.get(fact.kind)
    if field_name is None or not _flagged(fact, FlagCode.UNMAPPED_CODE):
        return
    coding: Coding | None = getattr(fact, field_name)
    noted.unmapped = (
        (None, None, None) if coding is None else (coding.system, coding.code, coding.display)
    )


def _note_dose_unit(noted: _Noted, fact: MedicationOrder | MedicationAdministration) -> None:
    """A dose in a unit no table knows: listed by the drug's ATC code and the unit as sent."""
    if _flagged(fact, FlagCode.UNKNOWN_UNIT):
        sent = getattr(fact, "original_dose_unit", None) or fact.dose_unit
        noted.unknown_unit = (fact.atc, sent)


def _note_measurement(noted: _Noted, fact: LabResult | Observation) -> None:
    if _flagged(fact, FlagCode.UNKNOWN_UNIT):
        noted.unknown_unit = (fact.concept, fact.original_unit)
    if isinstance(fact, LabResult) and fact.value is None:
        noted.without_number = fact.qualitative or "unread"
    if fact.value is None or fact.concept is None:
        return
    if fact.concept == _MEASURED[fact.kind]:
        noted.measured = fact.concept
    bounds = PLAUSIBILITY.get(fact.concept)
    if bounds is not None and _outside(fact.value, *bounds):
        noted.implausible = {
            "patient_id": fact.patient_id,
            "concept": fact.concept,
            "value": fact.value,
            "unit": fact.unit,
            "time": fact.time,
            "source_document": fact.source.document,
            "source_message_id": fact.source.message_id,
            "source_position": fact.source.position,
            "low": bounds[0],
            "high": bounds[1],
        }


# Weight is an observation, creatinine a lab: a patient without either is reported.
_MEASURED = {"observation": "weight", "lab": "creatinine"}


def _without_number(noted: list[_Noted]) -> dict[str, int]:
    """Lab results without a number: read as positive, as negative, or neither (``unread``)."""
    found = Counter(n.without_number for n in noted if n.without_number)
    return {reading: found[reading] for reading in ("positive", "negative", "unread")}


def _outside(value: float, low: float, high: float) -> bool:
    """Out of the plausible range; NaN is (it is no measurement)."""
    return math.isnan(value) or value < low or value > high


def _flagged(fact: AnyFact, code: FlagCode) -> bool:
    return any(flag.code == code for flag in fact.flags)


def _unmapped_codes(noted: dict[str, list[_Noted]], limit: int) -> list[dict[str, Any]]:
    """Unmapped codes by kind, system and code, most frequent first, with the first label."""
    counts: Counter[tuple[str, str | None, str | None]] = Counter()
    labels: dict[tuple[str, str | None, str | None], str | None] = {}
    for kind in CODED_FIELDS:
        for contribution in noted[kind]:
            if contribution.unmapped is not None:
                system, code, display = contribution.unmapped
                counts[kind, system, code] += 1
                if labels.get((kind, system, code)) is None:
                    labels[kind, system, code] = display
    ranked = sorted(
        counts.items(),
        key=lambda item: (
            -item[1],
            item[0][0],
            *_last_if_none(item[0][2]),
            *_last_if_none(item[0][1]),
        ),
    )
    return [
        {
            "kind": kind,
            "system": system,
            "code": code,
            "count": count,
            "display": labels[kind, system, code],
        }
        for (kind, system, code), count in ranked[:limit]
    ]


_DRUG_KINDS = ("medication_order", "medication_administration")


def _drug_mapping(noted: dict[str, list[_Noted]]) -> list[dict[str, Any]]:
    """Per feed and drug kind: lines, ATC by code, by name, none, and the name fallback rate."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for kind in _DRUG_KINDS:
        counts.update(
            (c.drug_mapping[0], kind, c.drug_mapping[1]) for c in noted[kind] if c.drug_mapping
        )
    rows = []
    for feed, kind in sorted({(feed, kind) for feed, kind, _ in counts}):
        by = {way: counts[feed, kind, way] for way in ("code", "name", "none")}
        lines = sum(by.values())
        rows.append(
            {
                "feed": feed,
                "kind": kind,
                "lines": lines,
                "by_code": by["code"],
                "by_name": by["name"],
                "unmapped": by["none"],
                "name_rate": round(by["name"] / lines, 4),
            }
        )
    return rows


def _mapped_by_name(noted: dict[str, list[_Noted]], limit: int) -> list[dict[str, Any]]:
    """Drug codes whose ATC came from the name, most frequent first."""
    counts: Counter[tuple[str, str | None, str, str | None, str | None]] = Counter()
    for kind in _DRUG_KINDS:
        counts.update((kind, *c.by_name) for c in noted[kind] if c.by_name)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0][0], item[0][2]))
    return [
        {
            "kind": kind,
            "system": system,
            "code": code,
            "count": count,
            "display": display,
            "atc": atc,
        }
        for (kind, system, code, display, atc), count in ranked[:limit]
    ]


def _unknown_units(noted: dict[str, list[_Noted]], limit: int) -> list[dict[str, Any]]:
    """Unknown units by kind, concept (a drug line's: its ATC code) and unit as sent, most
    frequent first."""
    counts: Counter[tuple[str, str | None, str | None]] = Counter()
    for kind in ("lab", "observation", "medication_order", "medication_administration"):
        counts.update((kind, *c.unknown_unit) for c in noted[kind] if c.unknown_unit)
    ranked = sorted(
        counts.items(),
        key=lambda item: (
            -item[1],
            *_last_if_none(item[0][1]),
            item[0][0],
            *_last_if_none(item[0][2]),
        ),
    )
    return [
        {"kind": kind, "concept": concept, "unit": unit, "count": count}
        for (kind, concept, unit), count in ranked[:limit]
    ]


def _implausible(noted: dict[str, list[_Noted]], limit: int) -> list[dict[str, Any]]:
    rows = [c.implausible for kind in ("lab", "observation") for c in noted[kind] if c.implausible]
    return sorted(rows, key=lambda row: (row["concept"], row["time"]))[:limit]


def _measured(noted: list[_Noted], concept: str) -> set[str]:
    return {c.patient_id for c in noted if c.measured == concept}


def _last_if_none(text: str | None) -> tuple[bool, str]:
    """A sort key part putting a missing value after every text."""
    return (text is None, text or "")


def quality_report(
    facts: Iterable[AnyFact],
    messages: dict[str, int] | None = None,
    errors: list[str] | None = None,
    limit: int = 50,
) -> QualityReport:
    """Compute the report; ``messages`` and ``errors`` come from ingest when available."""
    tally = QualityTally(limit)
    tally.add_facts(facts)
    tally.messages.update(messages or {})
    tally.add_errors(errors or [])
    return tally.report()


def _table(rows: list[dict[str, Any]], columns: list[str]) -> list[str]:
    if not rows:
        return ["  (none)"]
    return ["  " + "  ".join(f"{row.get(c)!s}" for c in columns) for row in rows]


def render_text(report: QualityReport) -> str:
    """The report as the plain text ``vigie quality`` prints."""
    lines = ["Facts:"]
    lines += [f"  {kind:<26}{n:>10,}" for kind, n in report.counts.items()]
    lines.append(f"  {'patients':<26}{report.patients:>10,}")
    if report.messages:
        lines.append(
            "Messages: " + ", ".join(f"{k} {v:,}" for k, v in sorted(report.messages.items()))
        )
    r = report
    lines.append(
        f"Orders without dose: {r.orders_without_dose:,}; "
        f"without frequency: {r.orders_without_frequency:,}; "
        f"without ATC: {r.orders_without_atc:,}; without route: {r.orders_without_route:,}; "
        f"combination products without composition: {r.orders_without_composition:,}"
    )
    lines.append(
        f"Order doses read through the product's strength: {r.orders_dose_by_strength:,}; "
        f"still in dose units (no strength known): {r.orders_dose_in_units:,}"
    )
    lines.append(
        f"Patients without weight: {r.patients_without_weight:,}; "
        f"without creatinine: {r.patients_without_creatinine:,}"
    )
    if r.labs_without_number:
        lines.append(
            "Lab results without a number: "
            + ", ".join(f"{reading} {n:,}" for reading, n in r.labs_without_number.items())
        )
    lines.append(
        "Drug lines by feed (feed, kind, lines, ATC by code, by name, none, name fallback rate):"
    )
    lines += [
        f"  {row['feed']}  {row['kind']}  {row['lines']:,}  {row['by_code']:,}  "
        f"{row['by_name']:,}  {row['unmapped']:,}  {row['name_rate']:.1%}"
        for row in report.drug_mapping
    ] or ["  (none)"]
    lines.append("Drug codes mapped by name (kind, system, code, count, label, ATC):")
    lines += _table(report.mapped_by_name, ["kind", "system", "code", "count", "display", "atc"])
    lines.append("Unmapped codes (kind, system, code, count, label):")
    lines += _table(report.unmapped_codes, ["kind", "system", "code", "count", "display"])
    lines.append("Unknown units (kind, concept, unit, count):")
    lines += _table(report.unknown_units, ["kind", "concept", "unit", "count"])
    lines.append("Implausible values (concept, value, unit, patient, document, position):")
    lines += _table(
        report.implausible_values,
        ["concept", "value", "unit", "patient_id", "source_document", "source_position"],
    )
    lines.append(f"Errors: {report.error_count:,}")
    lines += [f"  {error}" for error in report.errors]
    return "\n".join(lines)
