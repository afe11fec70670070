"""The quality committee's figures (CME, COMEDIMS) over the alert store and the decisions:
IP per 100 beds per month, alerts per day, the funnel and PPV per rule, the time to decision,
the IPs by SFPC code; and the pseudonymised export of the rows behind them.

Every figure is defined in docs/metrics.md; in short:

- Days and months are the hospital's (``VIGIE_TIMEZONE``): the store's times are naive UTC and
  are converted before they are cut into days; the period's ``start`` and ``end`` are days,
  both included.
- An **IP** is a decision of kind ``intervention`` (``ServiceStore.decide``), counted in the
  month of its decision time, in the ward the alert had then (the ``decision`` row keeps it).
- **Decided**: every decision (intervention or dismissal) taken in the period. **Relevant**:
  an intervention, or a dismissal whose reason says the alert was right but needed no action
  (:data:`~vigie.store.alerts.RELEVANT_DISMISSALS`), as ``AlertStore.observed_ppv`` counts it.
  **Accepted**: an IP whose outcome is ``accepted`` or ``accepted_modified``.
- **Alerts**: the alerts first raised in the period (their ``first_seen``), in their ward.
- The figures are the activity of the period: the decisions taken in it, on alerts opened in it
  or before. They hold no patient identifier; the export (:func:`export_rows`) names patients
  and alerts by keyed pseudonyms only (:func:`pseudonym`).

>>> from vigie.store import FactStore, ServiceStore
>>> figures = compute(ServiceStore(FactStore("sqlite://")), MetricsFilter(), tz=UTC)
>>> figures.funnel.total
FunnelRow(rule_id=None, alerts=0, decided=0, relevant=0, ip=0, accepted=0, not_accepted=0, awaiting_outcome=0)
>>> pseudonym(b"0123456789abcdef", "patient", "p1") == pseudonym(b"0123456789abcdef", "patient", "p1")
True
"""  # noqa: E501

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Final, cast

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from vigie.settings import site_timezone
from vigie.store.alerts import RELEVANT_DISMISSALS, AlertEventRow, AlertRow
from vigie.store.database import StoreError
from vigie.store.service import (
    DecisionOutcomeRow,
    DecisionRow,
    ServiceError,
    ServiceStore,
    Ward,
)

__all__ = [
    "ACCEPTED_OUTCOMES",
    "CSV_COLUMNS",
    "CodeCount",
    "DayCount",
    "DecisionTime",
    "Funnel",
    "FunnelRow",
    "HospitalMonth",
    "IpRates",
    "Metrics",
    "MetricsError",
    "MetricsFilter",
    "PpvRow",
    "TimesToDecision",
    "WardMonth",
    "compute",
    "export_csv",
    "export_rows",
    "pseudonym",
]

ACCEPTED_OUTCOMES: Final = frozenset({"accepted", "accepted_modified"})
_CHUNK: Final = 2000  # ids per IN (...) list
_MAX_DAYS: Final = 3660  # a period of ten years at most (one row per day)
_FIRST_DAY: Final = date(1900, 1, 1)  # the days a filter may name
_LAST_DAY: Final = date(2999, 12, 31)

NOTE_NO_BEDS: Final = "no beds declared for this ward (0 beds): rate not computed"
NOTE_UNDECLARED: Final = "ward not declared (POST /wards): no bed count, rate not computed"
NOTE_NO_WARD: Final = "alerts without a ward: no bed count, rate not computed"
NOTE_AMBIGUOUS: Final = (
    "ward code declared in several hospitals: its IPs are not attributed to one hospital"
)
NOTE_HOSPITAL_NO_BEDS: Final = "no beds declared in this hospital's wards: rate not computed"


class MetricsError(ServiceError):
    """Filters the metrics cannot use (a period ending before it starts, an unknown ward)."""


@dataclass(frozen=True)
class MetricsFilter:
    """The period (days in the hospital's time zone, both included; None: unbounded), and the
    hospital and ward (None: all)."""

    start: date | None = None
    end: date | None = None
    hospital: str | None = None
    ward: str | None = None

    def check(self) -> None:
        for name, day in (("from", self.start), ("to", self.end)):
            if day is not None and not _FIRST_DAY <= day <= _LAST_DAY:
                raise MetricsError(f"{name}: a day from {_FIRST_DAY} to {_LAST_DAY}, got {day}")
        if self.start is not None and self.end is not None:
            if self.end < self.start:
                raise MetricsError(f"the period ends ({self.end}) before it starts ({self.start})")
            _check_span(self.start, self.end)

    def shown(self) -> dict[str, str]:
        """The filters given, as text (for the audit log)."""
        given = {
            "from": self.start.isoformat() if self.start else None,
            "to": self.end.isoformat() if self.end else None,
            "hospital": self.hospital,
            "ward": self.ward,
        }
        return {k: v for k, v in given.items() if v is not None}


# What the figures look like (also the API's response: docs/metrics.md) -----------------------


@dataclass(frozen=True)
class WardMonth:
    """IPs of one ward in one month, per 100 beds (None, with a note, when it has no beds)."""

    hospital: str | None
    ward: str | None
    label: str | None
    month: str  # YYYY-MM
    ip: int
    beds: int | None
    ip_per_100_beds: float | None
    partial: bool  # the period (or today) cuts the month
    note: str | None = None


@dataclass(frozen=True)
class HospitalMonth:
    """IPs of one hospital's declared wards in one month, per 100 of their beds."""

    hospital: str
    month: str
    ip: int
    beds: int
    ip_per_100_beds: float | None
    partial: bool
    note: str | None = None


@dataclass(frozen=True)
class IpRates:
    hospitals: list[HospitalMonth]
    wards: list[WardMonth]


@dataclass(frozen=True)
class DayCount:
    """Alerts first raised on a day, in total and per rule."""

    day: str  # YYYY-MM-DD
    total: int
    by_rule: dict[str, int]


@dataclass(frozen=True)
class FunnelRow:
    """One rule's funnel (``rule_id`` None: every rule): alerts opened in the period, then the
    decisions taken in it: decided ⊇ relevant ⊇ ip ⊇ accepted."""

    rule_id: str | None
    alerts: int
    decided: int
    relevant: int
    ip: int
    accepted: int
    not_accepted: int
    awaiting_outcome: int


@dataclass(frozen=True)
class Funnel:
    by_rule: list[FunnelRow]
    total: FunnelRow


@dataclass(frozen=True)
class PpvRow:
    """relevant / decided (None when nothing was decided)."""

    rule_id: str | None
    decided: int
    relevant: int
    ppv: float | None


@dataclass(frozen=True)
class DecisionTime:
    """Median hours from an alert's opening (first raise, or its reopening) to its decision."""

    rule_id: str | None
    decisions: int
    median_hours: float | None


@dataclass(frozen=True)
class TimesToDecision:
    overall: DecisionTime
    by_rule: list[DecisionTime]


@dataclass(frozen=True)
class CodeCount:
    code: str | None  # None: an IP recorded without that code
    label: str | None
    ip: int


@dataclass(frozen=True)
class Metrics:
    """Every figure of ``GET /metrics`` (docs/metrics.md)."""

    period: dict[str, str]  # the filters given
    time_zone: str
    ip_per_100_beds: IpRates
    alerts_per_day: list[DayCount]
    funnel: Funnel
    ppv: list[PpvRow]
    ppv_total: PpvRow
    time_to_decision: TimesToDecision
    ip_by_problem: list[CodeCount]
    ip_by_intervention: list[CodeCount]
    notes: list[str] = field(default_factory=list)


# Reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Decision:
    id: int
    event_id: int
    alert_id: str
    kind: str
    decided_at: datetime
    rule_id: str
    patient_id: str
    ward: str | None
    severity: str
    first_seen: datetime
    problem_code: str | None
    intervention_code: str | None
    dismiss_reason: str | None
    prescriber_contacted: bool | None
    outcome: str | None
    outcome_at: datetime | None

    @property
    def relevant(self) -> bool:
        return self.kind == "intervention" or self.dismiss_reason in RELEVANT_DISMISSALS

    @property
    def ip(self) -> bool:
        return self.kind == "intervention"


@dataclass(frozen=True)
class _Alert:
    id: str
    rule_id: str
    patient_id: str
    ward: str | None
    severity: str
    first_seen: datetime


class _Scope:
    """The filters turned into UTC bounds and a set of ward codes."""

    def __init__(self, filters: MetricsFilter, wards: Sequence[Ward], tz: tzinfo) -> None:
        filters.check()
        self.filters, self.tz = filters, tz
        self.since = _utc(filters.start, tz) if filters.start else None
        self.until = _utc(filters.end + timedelta(days=1), tz) if filters.end else None
        self.wards = list(wards)
        hospitals: dict[str, set[str]] = defaultdict(set)
        for ward in wards:
            hospitals[ward.code].add(ward.hospital)
        self.hospitals_of = dict(hospitals)
        codes: set[str] | None = None  # None: every ward, and alerts without one
        if filters.hospital is not None:
            codes = {w.code for w in wards if w.hospital == filters.hospital}
            if not codes:
                raise MetricsError(f"no ward declared in hospital {filters.hospital!r}")
        if filters.ward is not None:
            if codes is not None and filters.ward not in codes:
                raise MetricsError(
                    f"ward {filters.ward!r} is not declared in hospital {filters.hospital!r}"
                )
            codes = {filters.ward}
        self.codes = codes

    def declared(self) -> list[Ward]:
        """The declared wards the filters keep."""
        return [
            w
            for w in self.wards
            if (self.filters.hospital is None or w.hospital == self.filters.hospital)
            and (self.filters.ward is None or w.code == self.filters.ward)
        ]

    def where(self, moment: Any, ward: Any) -> list[Any]:
        clauses = []
        if self.since is not None:
            clauses.append(moment >= self.since)
        if self.until is not None:
            clauses.append(moment < self.until)
        if self.codes is not None:
            clauses.append(ward.in_(sorted(self.codes)))
        return clauses

    def local(self, moment: datetime) -> datetime:
        return moment.replace(tzinfo=UTC).astimezone(self.tz)


def _check_span(first: date, last: date) -> None:
    """A period (given, or stretched to the data by a missing bound) of at most
    :data:`_MAX_DAYS` days: the answer has a row per day."""
    if (last - first).days >= _MAX_DAYS:
        raise MetricsError(
            f"a period of at most {_MAX_DAYS} days, got {first} to {last} (give from and to)"
        )


def _utc(day: date, tz: tzinfo) -> datetime:
    """The UTC instant (naive) of a day's local midnight."""
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC).replace(tzinfo=None)


def _read(service: ServiceStore, scope: _Scope) -> tuple[list[_Decision], list[_Alert]]:
    decisions = (
        select(  # the fields of _Decision, in its order
            DecisionRow.id,
            DecisionRow.event_id,
            DecisionRow.alert_id,
            DecisionRow.kind,
            DecisionRow.decided_at,
            DecisionRow.rule_id,
            DecisionRow.patient_id,
            DecisionRow.ward,
            AlertRow.severity,
            AlertRow.first_seen,
            DecisionRow.problem_code,
            DecisionRow.intervention_code,
            DecisionRow.dismiss_reason,
            DecisionRow.prescriber_contacted,
            DecisionOutcomeRow.outcome,
            DecisionOutcomeRow.at,
        )
        .join(AlertRow, AlertRow.id == DecisionRow.alert_id)
        .outerjoin(DecisionOutcomeRow, DecisionOutcomeRow.decision_id == DecisionRow.id)
        .where(*scope.where(DecisionRow.decided_at, DecisionRow.ward))
        .order_by(DecisionRow.id)
    )
    alerts = (
        select(
            AlertRow.id,
            AlertRow.rule_id,
            AlertRow.patient_id,
            AlertRow.ward,
            AlertRow.severity,
            AlertRow.first_seen,
        )
        .where(*scope.where(AlertRow.first_seen, AlertRow.ward))
        .order_by(AlertRow.id)
    )
    try:
        with service.facts.session() as session:
            found = [_Decision(*cast(tuple[Any, ...], row)) for row in session.execute(decisions)]
            opened = [_Alert(*row) for row in session.execute(alerts)]
    except SQLAlchemyError as error:
        raise StoreError(f"cannot read the decisions: {error.__class__.__name__}") from error
    return found, opened


def _openings(service: ServiceStore, decisions: Sequence[_Decision]) -> dict[int, datetime]:
    """For each decision (by id), when its alert was last opened before it: the latest
    ``open`` event of the alert's log preceding the decision's event."""
    ids = sorted({d.alert_id for d in decisions})
    opened: dict[str, list[tuple[int, datetime]]] = defaultdict(list)
    try:
        with service.facts.session() as session:
            for start in range(0, len(ids), _CHUNK):
                query = select(AlertEventRow.alert_id, AlertEventRow.id, AlertEventRow.at).where(
                    AlertEventRow.alert_id.in_(ids[start : start + _CHUNK]),
                    AlertEventRow.to_status == "open",
                )
                for alert_id, seq, at in session.execute(query):
                    opened[alert_id].append((seq, at))
    except SQLAlchemyError as error:
        raise StoreError(f"cannot read the alert events: {error.__class__.__name__}") from error
    found = {}
    for decision in decisions:
        before = [(seq, at) for seq, at in opened[decision.alert_id] if seq < decision.event_id]
        found[decision.id] = max(before)[1] if before else decision.first_seen
    return found


# Figures ---------------------------------------------------------------------------------------


def compute(
    service: ServiceStore,
    filters: MetricsFilter,
    *,
    tz: tzinfo | None = None,
    today: date | None = None,
    problem_labels: Mapping[str, str] | None = None,
    intervention_labels: Mapping[str, str] | None = None,
) -> Metrics:
    """Every figure over the period and wards of ``filters`` (module docstring; definitions
    in docs/metrics.md). ``tz``: the hospital's time zone (default ``VIGIE_TIMEZONE``);
    ``today``: the day a month still under way is cut at (default: today there); the labels
    name the SFPC codes (the service passes ``vigie.rules.check``'s)."""
    zone = tz or site_timezone()
    scope = _Scope(filters, service.wards(), zone)
    decisions, alerts = _read(service, scope)
    openings = _openings(service, decisions)
    now = today or datetime.now(zone).date()
    rates, notes = _ip_rates(scope, decisions, now)
    funnel = _funnel(decisions, alerts)
    return Metrics(
        period=filters.shown(),
        time_zone=str(zone),
        ip_per_100_beds=rates,
        alerts_per_day=_per_day(scope, alerts),
        funnel=funnel,
        ppv=[_ppv(row) for row in funnel.by_rule],
        ppv_total=_ppv(funnel.total),
        time_to_decision=_times(decisions, openings),
        ip_by_problem=_codes(decisions, "problem_code", problem_labels or {}),
        ip_by_intervention=_codes(decisions, "intervention_code", intervention_labels or {}),
        notes=notes,
    )


def _month(moment: date) -> str:
    return f"{moment.year:04d}-{moment.month:02d}"


def _months(scope: _Scope, seen: Iterable[date]) -> list[tuple[str, date, date]]:
    """The months of the period (or from the first to the last IP when unbounded), each with
    its first and last day."""
    days = sorted(seen)
    first = scope.filters.start or (days[0] if days else None)
    last = scope.filters.end or (days[-1] if days else None)
    if first is None or last is None:
        return []
    _check_span(first, last)
    months = []
    cursor = first.replace(day=1)
    while cursor <= last:
        following = (cursor + timedelta(days=32)).replace(day=1)
        months.append((_month(cursor), cursor, following - timedelta(days=1)))
        cursor = following
    return months


def _rate(ip: int, beds: int) -> float | None:
    return round(100.0 * ip / beds, 2) if beds > 0 else None


def _ip_rates(
    scope: _Scope, decisions: Sequence[_Decision], today: date
) -> tuple[IpRates, list[str]]:
    ips = [d for d in decisions if d.ip]
    counts: Counter[tuple[str, str | None]] = Counter(
        (_month(scope.local(d.decided_at).date()), d.ward) for d in ips
    )
    months = _months(scope, (scope.local(d.decided_at).date() for d in ips))
    start, end = scope.filters.start, scope.filters.end

    def partial(first: date, last: date) -> bool:
        return bool((start and start > first) or (end and end < last) or last >= today)

    declared = scope.declared()
    ambiguous = {code for code, where in scope.hospitals_of.items() if len(where) > 1}
    wards: list[WardMonth] = []
    hospitals: list[HospitalMonth] = []
    notes: list[str] = []
    by_hospital: dict[str, list[Ward]] = defaultdict(list)
    for ward in declared:
        by_hospital[ward.hospital].append(ward)
    undeclared = sorted(
        {code for _, code in counts if code is not None and code not in scope.hospitals_of}
    )
    without_ward = any(code is None for _, code in counts)
    for month, first, last in months:
        cut = partial(first, last)
        for ward in declared:
            if ward.code in ambiguous:
                ip = counts[(month, ward.code)]
                wards.append(
                    WardMonth(
                        ward.hospital,
                        ward.code,
                        ward.label,
                        month,
                        ip,
                        ward.beds,
                        None,
                        cut,
                        NOTE_AMBIGUOUS,
                    )
                )
                continue
            ip = counts[(month, ward.code)]
            note: str | None = NOTE_NO_BEDS if ward.beds == 0 else None
            rate = _rate(ip, ward.beds)
            wards.append(
                WardMonth(
                    ward.hospital, ward.code, ward.label, month, ip, ward.beds, rate, cut, note
                )
            )
        for code in undeclared:
            wards.append(
                WardMonth(
                    None, code, None, month, counts[(month, code)], None, None, cut, NOTE_UNDECLARED
                )
            )
        if without_ward:
            wards.append(
                WardMonth(
                    None, None, None, month, counts[(month, None)], None, None, cut, NOTE_NO_WARD
                )
            )
        for hospital, its_wards in sorted(by_hospital.items()):
            counted = [w for w in its_wards if w.code not in ambiguous]
            ip = sum(counts[(month, w.code)] for w in counted)
            beds = sum(w.beds for w in counted)
            note = NOTE_HOSPITAL_NO_BEDS if beds == 0 else None
            if len(counted) < len(its_wards):
                note = NOTE_AMBIGUOUS
            hospitals.append(HospitalMonth(hospital, month, ip, beds, _rate(ip, beds), cut, note))
    if undeclared:
        ip = sum(n for (_, code), n in counts.items() if code in undeclared)
        notes.append(
            f"{ip} IP(s) in {len(undeclared)} ward(s) not declared (POST /wards): counted in "
            "no hospital, no rate"
        )
    if without_ward:
        ip = sum(n for (_, code), n in counts.items() if code is None)
        notes.append(f"{ip} IP(s) on alerts without a ward: counted in no hospital, no rate")
    if any(w.beds == 0 for w in declared):
        notes.append("wards declared with 0 beds have no rate (ip_per_100_beds null)")
    if ambiguous & {w.code for w in declared}:
        notes.append(f"ward codes declared in several hospitals: {sorted(ambiguous)}")
    return IpRates(hospitals, wards), notes


def _per_day(scope: _Scope, alerts: Sequence[_Alert]) -> list[DayCount]:
    counts: dict[date, Counter[str]] = defaultdict(Counter)
    for alert in alerts:
        counts[scope.local(alert.first_seen).date()][alert.rule_id] += 1
    first = scope.filters.start or min(counts, default=None)
    last = scope.filters.end or max(counts, default=None)
    if first is None or last is None:
        return []
    _check_span(first, last)
    days = []
    for offset in range((last - first).days + 1):
        day = first + timedelta(days=offset)
        rules = counts.get(day, Counter())
        days.append(DayCount(day.isoformat(), sum(rules.values()), dict(sorted(rules.items()))))
    return days


def _funnel_row(rule_id: str | None, decisions: Sequence[_Decision], alerts: int) -> FunnelRow:
    ips = [d for d in decisions if d.ip]
    accepted = sum(d.outcome in ACCEPTED_OUTCOMES for d in ips)
    refused = sum(d.outcome == "not_accepted" for d in ips)
    return FunnelRow(
        rule_id=rule_id,
        alerts=alerts,
        decided=len(decisions),
        relevant=sum(d.relevant for d in decisions),
        ip=len(ips),
        accepted=accepted,
        not_accepted=refused,
        awaiting_outcome=len(ips) - accepted - refused,
    )


def _funnel(decisions: Sequence[_Decision], alerts: Sequence[_Alert]) -> Funnel:
    opened = Counter(a.rule_id for a in alerts)
    by_rule: dict[str, list[_Decision]] = defaultdict(list)
    for decision in decisions:
        by_rule[decision.rule_id].append(decision)
    rules = sorted(opened.keys() | by_rule.keys())
    rows = [_funnel_row(rule, by_rule.get(rule, []), opened[rule]) for rule in rules]
    return Funnel(rows, _funnel_row(None, decisions, len(alerts)))


def _ppv(row: FunnelRow) -> PpvRow:
    ppv = round(row.relevant / row.decided, 4) if row.decided else None
    return PpvRow(row.rule_id, row.decided, row.relevant, ppv)


def _hours(decisions: Sequence[_Decision], openings: Mapping[int, datetime]) -> list[float]:
    return [(d.decided_at - openings[d.id]).total_seconds() / 3600 for d in decisions]


def _median(rule_id: str | None, hours: Sequence[float]) -> DecisionTime:
    median = round(statistics.median(hours), 2) if hours else None
    return DecisionTime(rule_id, len(hours), median)


def _times(decisions: Sequence[_Decision], openings: Mapping[int, datetime]) -> TimesToDecision:
    by_rule: dict[str, list[_Decision]] = defaultdict(list)
    for decision in decisions:
        by_rule[decision.rule_id].append(decision)
    return TimesToDecision(
        overall=_median(None, _hours(decisions, openings)),
        by_rule=[_median(rule, _hours(by_rule[rule], openings)) for rule in sorted(by_rule)],
    )


def _codes(
    decisions: Sequence[_Decision], attribute: str, labels: Mapping[str, str]
) -> list[CodeCount]:
    counts = Counter(getattr(d, attribute) for d in decisions if d.ip)

    def order(code: str | None) -> tuple[int, list[int | str]]:
        if code is None:
            return (1, [])
        return (0, [int(p) if p.isdigit() else p for p in code.split(".")])

    return [
        CodeCount(code, labels.get(code) if code else None, counts[code])
        for code in sorted(counts, key=order)
    ]


# Export ----------------------------------------------------------------------------------------

CSV_COLUMNS: Final = (
    "patient",
    "alert",
    "rule_id",
    "severity",
    "hospital",
    "ward",
    "opened_day",
    "decision_day",
    "decision",
    "relevant",
    "dismiss_reason",
    "problem_code",
    "intervention_code",
    "prescriber_contacted",
    "outcome",
    "outcome_day",
    "minutes_to_decision",
)
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r")


def pseudonym(key: bytes, kind: str, identifier: str) -> str:
    """A keyed pseudonym: the first 16 hex digits of HMAC-SHA256(key, kind NUL identifier).
    Stable for one key, unrelated under another; ``kind`` ("patient", "alert") keeps a patient
    id and an alert id that happen to be equal from sharing a pseudonym."""
    message = f"{kind}\x00{identifier}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:16]


def _cell(text: str | None) -> str:
    """A text cell a spreadsheet will not read as a formula (a ward code from a feed could
    start with ``=``)."""
    if not text:
        return ""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _flag(value: bool | None) -> str:
    return "" if value is None else "1" if value else "0"


def export_rows(
    service: ServiceStore, filters: MetricsFilter, key: bytes, *, tz: tzinfo | None = None
) -> list[list[str]]:
    """The rows behind the figures, pseudonymised: one per decision taken in the period, and
    one per alert opened in the period without a decision in it; columns :data:`CSV_COLUMNS`.
    Patients and alerts are keyed pseudonyms (:func:`pseudonym`); times are days; no stay, no
    name, no free text."""
    zone = tz or site_timezone()
    scope = _Scope(filters, service.wards(), zone)
    decisions, alerts = _read(service, scope)
    openings = _openings(service, decisions)

    def hospital(ward: str | None) -> str:
        where = scope.hospitals_of.get(ward or "", set())
        return next(iter(where)) if len(where) == 1 else ""

    def day(moment: datetime | None) -> str:
        return scope.local(moment).date().isoformat() if moment is not None else ""

    rows: list[tuple[tuple[str, str, str], list[str]]] = []
    for d in decisions:
        minutes = round((d.decided_at - openings[d.id]).total_seconds() / 60)
        row = [
            pseudonym(key, "patient", d.patient_id),
            pseudonym(key, "alert", d.alert_id),
            _cell(d.rule_id),
            _cell(d.severity),
            _cell(hospital(d.ward)),
            _cell(d.ward),
            day(d.first_seen),
            day(d.decided_at),
            d.kind,
            _flag(d.relevant),
            _cell(d.dismiss_reason),
            _cell(d.problem_code),
            _cell(d.intervention_code),
            _flag(d.prescriber_contacted),
            _cell(d.outcome),
            day(d.outcome_at),
            str(minutes),
        ]
        rows.append(((row[7], row[2], row[1]), row))
    decided = {d.alert_id for d in decisions}
    for a in alerts:
        if a.id in decided:
            continue
        row = [
            pseudonym(key, "patient", a.patient_id),
            pseudonym(key, "alert", a.id),
            _cell(a.rule_id),
            _cell(a.severity),
            _cell(hospital(a.ward)),
            _cell(a.ward),
            day(a.first_seen),
            *[""] * 10,
        ]
        rows.append(((row[6], row[2], row[1]), row))
    return [row for _, row in sorted(rows, key=lambda item: item[0])]


def export_csv(rows: Iterable[Sequence[str]]) -> bytes:
    """The rows as a CSV a French spreadsheet opens as is: ``;`` between cells (the decimal
    separator there is the comma), UTF-8 with a byte order mark (so that Excel reads the
    accents), CRLF line ends, a header line."""
    text = io.StringIO()
    writer = csv.writer(text, delimiter=";", lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    return text.getvalue().encode("utf-8-sig")
