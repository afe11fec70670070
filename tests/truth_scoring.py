"""Score a rule pack's alerts against the synthetic hospital's ground truth.

Each truth row (``vigie.synthetic.truth``) is an injected situation: a *positive* the rule
must report while its window holds (an alert of that rule for that patient, with the expected
severity, whose drug lines include the order ids the truth names and none of its context lines,
the lines that only make the situation hold), or a *control* (a near miss) it must keep silent
on; a *background* row (a situation the generator did not inject but knows the background
meets, with its reason) is held to the same standard as a positive. A row is checked at
named checkpoints inside its window (``CHECKPOINTS``: a minute after it opens, its middle, a
minute before it closes); an open window (``window_end`` null: "still holding at the end of the
data") is read up to the end of the data. Each patient is evaluated once per distinct time,
through its ``PatientRecord``.

The whole hospital is checked too (``sweep``): every patient is evaluated at regular times over
the evaluation period, and an alert is *explained* only when a positive or background row of
that rule and patient holds at that time; any other alert is a false positive of the pack or a
gap in the generator's truth, and fails the test.

>>> row = TruthRow("r", "positive", "v", "p", "s", (), datetime(2025, 1, 6), datetime(2025, 1, 8))
>>> row.evaluation_time(datetime(2025, 1, 20))
datetime.datetime(2025, 1, 7, 0, 0)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import polars as pl

from vigie.engine import Alert, FactSet, LoadedPack, evaluate
from vigie.engine.columnar import evaluate_columnar

__all__ = [
    "CHECKPOINTS",
    "Checkpoint",
    "RuleScore",
    "Score",
    "Sweep",
    "SweptAlert",
    "TruthRow",
    "Verdict",
    "read_truth_json",
    "score",
    "sweep",
    "sweep_times",
    "truth_rows",
]

_EPOCH = datetime(1970, 1, 1)
# Edges are checked a minute inside the window: exactly at an edge, whether a bound is inclusive
# is the rule's business, not the truth's.
_MARGIN = timedelta(minutes=1)


@dataclass(frozen=True)
class TruthRow:
    """One injected situation, times naive UTC like fact times."""

    rule_id: str
    expected: str  # "positive", "background" (must fire, not injected) or "control"
    variant: str
    patient_id: str
    stay_id: str
    order_ids: tuple[str, ...]
    window_start: datetime
    window_end: datetime | None  # None: still holding at the end of the data
    severity: str = ""
    # Lines that make the situation hold without the alert naming them.
    context_order_ids: tuple[str, ...] = ()

    @property
    def positive(self) -> bool:
        return self.expected in ("positive", "background")

    def span(self, data_end: datetime) -> tuple[datetime, datetime]:
        """The window as a closed interval; an open one runs until ``data_end`` (or, should it
        start after the data ends, just past its start)."""
        end = self.window_end or max(data_end, self.window_start + 2 * _MARGIN)
        return self.window_start, end

    def evaluation_time(self, data_end: datetime) -> datetime:
        """The middle of the window."""
        start, end = self.span(data_end)
        return (start + (end - start) / 2).replace(microsecond=0)

    def describe(self) -> str:
        end = f"{self.window_end:%Y-%m-%d %H:%M}" if self.window_end else "open"
        context = "".join(f"context {order} " for order in self.context_order_ids)
        return (
            f"{self.rule_id} {self.expected} {self.variant} patient {self.patient_id} "
            f"stay {self.stay_id} orders {','.join(self.order_ids) or '-'} {context}"
            f"window {self.window_start:%Y-%m-%d %H:%M}..{end}"
        )


def _order_ids(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    parts = value.split(";") if isinstance(value, str) else value
    return tuple(part for part in parts if part)


def _from_seconds(seconds: int | None) -> datetime | None:
    return None if seconds is None else _EPOCH + timedelta(seconds=seconds)


def _from_iso(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text).astimezone(UTC).replace(tzinfo=None)


def _row(record: Mapping[str, Any], start: datetime, end: datetime | None) -> TruthRow:
    return TruthRow(
        rule_id=record["rule_id"],
        expected=record["expected"],
        variant=record["variant"],
        patient_id=record["patient_id"],
        stay_id=record["stay_id"],
        order_ids=_order_ids(record["order_ids"]),
        window_start=start,
        window_end=end,
        severity=record["severity"],
        context_order_ids=_order_ids(record.get("context_order_ids")),
    )


def truth_rows(frame: pl.DataFrame) -> list[TruthRow]:
    """Rows of a chunk's ``truth`` table (windows in epoch seconds)."""
    rows = []
    for record in frame.iter_rows(named=True):
        start = _from_seconds(record["window_start"])
        assert start is not None, record
        rows.append(_row(record, start, _from_seconds(record["window_end"])))
    return rows


def read_truth_json(path: Path) -> tuple[list[TruthRow], datetime]:
    """The rows of a ``truth.json`` and the end of its evaluation period."""
    doc = orjson.loads(path.read_bytes())
    data_end = _from_iso(doc["evaluation_period"]["end"])
    assert data_end is not None
    rows = []
    for record in doc["situations"]:
        start = _from_iso(record["window_start"])
        assert start is not None, record
        rows.append(_row(record, start, _from_iso(record["window_end"])))
    return rows, data_end


@dataclass(frozen=True)
class Verdict:
    """What the pack said about one truth row at its evaluation time."""

    row: TruthRow
    checkpoint: str
    at: datetime
    alerts: tuple[tuple[tuple[str, ...], str], ...]  # (sorted order ids, severity) of the rule

    @property
    def matching(self) -> tuple[tuple[tuple[str, ...], str], ...]:
        """The rule's alerts whose drug lines include every order id the truth names and none
        of its context lines."""
        wanted, context = set(self.row.order_ids), set(self.row.context_order_ids)
        return tuple(
            alert
            for alert in self.alerts
            if wanted <= set(alert[0]) and not context & set(alert[0])
        )

    @property
    def ok(self) -> bool:
        if not self.row.positive:
            return not self.alerts
        return any(severity == self.row.severity for _, severity in self.matching)

    def explain(self) -> str:
        got = "; ".join(f"[{','.join(ids)}] {sev}" for ids, sev in self.alerts) or "no alert"
        want = f"severity {self.row.severity}" if self.row.positive else "silence"
        return (
            f"{self.row.describe()} at {self.checkpoint} {self.at:%Y-%m-%d %H:%M}: "
            f"want {want}, got {got}"
        )


@dataclass
class RuleScore:
    """Rows of one rule: a row counts as met when every checkpoint of it is met."""

    positives_found: int = 0
    positives: int = 0
    controls_silent: int = 0
    controls: int = 0

    def add(self, row: TruthRow, met: bool) -> None:
        if row.positive:
            self.positives += 1
            self.positives_found += met
        else:
            self.controls += 1
            self.controls_silent += met

    def __iadd__(self, other: RuleScore) -> RuleScore:
        self.positives_found += other.positives_found
        self.positives += other.positives
        self.controls_silent += other.controls_silent
        self.controls += other.controls
        return self

    def line(self, name: str) -> str:
        return (
            f"{name:28} {self.positives_found:>7} / {self.positives:<6} "
            f"{self.controls_silent:>7} / {self.controls:<6}"
        )


@dataclass
class Score:
    """The verdicts of a pack on a truth: every row at each of its checkpoints."""

    verdicts: list[Verdict]

    @property
    def failures(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.ok]

    def by_row(self) -> dict[TruthRow, list[Verdict]]:
        rows: dict[TruthRow, list[Verdict]] = defaultdict(list)
        for verdict in self.verdicts:
            rows[verdict.row].append(verdict)
        return rows

    def by_rule(self) -> dict[str, RuleScore]:
        rules: dict[str, RuleScore] = defaultdict(RuleScore)
        for row, verdicts in self.by_row().items():
            rules[row.rule_id].add(row, all(v.ok for v in verdicts))
        return dict(sorted(rules.items()))

    def outcomes(self) -> dict[tuple[TruthRow, str], tuple[tuple[tuple[str, ...], str], ...]]:
        """The rule's alerts per row and checkpoint: two scores agree when these are equal."""
        return {(v.row, v.checkpoint): v.alerts for v in self.verdicts}

    def table(self) -> str:
        lines = [f"{'rule':28} {'positives found':>16} {'controls silent':>16}"]
        total = RuleScore()
        for rule, rule_score in self.by_rule().items():
            lines.append(rule_score.line(rule))
            total += rule_score
        lines.append(total.line("total"))
        return "\n".join(lines)

    def report(self, limit: int = 40) -> str:
        failures = self.failures
        shown = [f"  {v.explain()}" for v in failures[:limit]]
        more = [f"  ... and {len(failures) - limit} more"] if len(failures) > limit else []
        return "\n".join([self.table(), f"{len(failures)} failing checks:", *shown, *more])


def _rule_alerts(alerts: Iterable[Alert], rule_id: str) -> tuple[tuple[tuple[str, ...], str], ...]:
    found = {
        (tuple(sorted(drug.order_id for drug in alert.drugs)), alert.severity)
        for alert in alerts
        if alert.rule_id == rule_id
    }
    return tuple(sorted(found))


def _near_start(row: TruthRow, data_end: datetime) -> datetime:
    start, _ = row.span(data_end)
    return min(start + _MARGIN, row.evaluation_time(data_end))


def _near_end(row: TruthRow, data_end: datetime) -> datetime:
    _, end = row.span(data_end)
    return max(end - _MARGIN, row.evaluation_time(data_end))


Checkpoint = Callable[[TruthRow, datetime], datetime]

# Where in its window a row is checked: a minute after it opens, its middle, a minute before it
# closes (or before the data ends, for an open window).
CHECKPOINTS: dict[str, Checkpoint] = {
    "start": _near_start,
    "middle": TruthRow.evaluation_time,
    "end": _near_end,
}


def score(
    pack: LoadedPack,
    facts: FactSet,
    rows: Iterable[TruthRow],
    data_end: datetime,
    checkpoints: Iterable[str] = ("middle",),
    columnar: bool = False,
) -> Score:
    """Judge each row at each checkpoint, evaluating each patient once per distinct time —
    one patient at a time (``evaluate``), or with ``columnar`` all the patients due at a time
    in one run of the batch evaluator (``evaluate_columnar``)."""
    names = list(checkpoints)
    checks = [(row, name, CHECKPOINTS[name](row, data_end)) for row in rows for name in names]
    cache: dict[tuple[str, datetime], list[Alert]] = {}
    if columnar:
        due: dict[datetime, set[str]] = defaultdict(set)
        for row, _, at in checks:
            due[at].add(row.patient_id)
        frames = facts.frames()
        for at, patient_ids in due.items():
            for patient_id in patient_ids:
                cache[(patient_id, at)] = []
            for alert in evaluate_columnar(pack, frames, at, patients=sorted(patient_ids)):
                cache[(alert.patient_id, at)].append(alert)
    patients = facts.patients()
    verdicts = []
    for row, name, at in checks:
        key = (row.patient_id, at)
        if key not in cache:
            record = patients.get(row.patient_id)
            cache[key] = [] if record is None else evaluate(pack, record, at)
        verdicts.append(Verdict(row, name, at, _rule_alerts(cache[key], row.rule_id)))
    return Score(verdicts)


# The whole hospital ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SweptAlert:
    """An alert raised while sweeping the hospital, and whether a truth row explains it."""

    rule_id: str
    patient_id: str
    at: datetime
    message: str
    explained: bool

    def describe(self) -> str:
        return (
            f"{self.rule_id} patient {self.patient_id} at {self.at:%Y-%m-%d %H:%M}: {self.message}"
        )


@dataclass
class Sweep:
    """Every alert of the pack at the sweep times, explained or not by the truth."""

    alerts: list[SweptAlert]
    evaluations: int

    @property
    def unexplained(self) -> list[SweptAlert]:
        return [a for a in self.alerts if not a.explained]

    def by_rule(self) -> dict[str, tuple[int, int]]:
        """Per rule: (explained, raised)."""
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for alert in self.alerts:
            counts[alert.rule_id][0] += alert.explained
            counts[alert.rule_id][1] += 1
        return {rule: (c[0], c[1]) for rule, c in sorted(counts.items())}

    def report(self, limit: int = 40) -> str:
        lines = [f"{'rule':28} {'alerts explained':>17}"]
        lines += [f"{rule:28} {e:>8} / {n:<7}" for rule, (e, n) in self.by_rule().items()]
        bad = self.unexplained
        lines.append(f"{len(bad)} unexplained alerts in {self.evaluations} evaluations:")
        lines += [f"  {a.describe()}" for a in bad[:limit]]
        if len(bad) > limit:
            lines.append(f"  ... and {len(bad) - limit} more")
        return "\n".join(lines)


def sweep_times(start: datetime, end: datetime, every: timedelta) -> list[datetime]:
    """``start + every/2``, then every ``every`` until ``end`` (off the hour, off the grid of
    the injected times)."""
    times, at = [], start + every / 2
    while at < end:
        times.append(at)
        at += every
    return times


def sweep(
    pack: LoadedPack, facts: FactSet, rows: Iterable[TruthRow], times: Iterable[datetime]
) -> Sweep:
    """Evaluate every patient at every time; an alert is explained when a positive or
    background row of its rule and patient holds then (a minute of margin at the edges)."""
    holding: dict[tuple[str, str], list[tuple[datetime, datetime | None]]] = defaultdict(list)
    for row in rows:
        if row.positive:
            holding[row.rule_id, row.patient_id].append((row.window_start, row.window_end))
    found: list[SweptAlert] = []
    evaluations = 0
    at_times = list(times)
    for patient_id, record in facts.patients().items():
        for at in at_times:
            evaluations += 1
            for alert in evaluate(pack, record, at):
                windows = holding.get((alert.rule_id, patient_id), [])
                explained = any(
                    start - _MARGIN <= at and (end is None or at <= end + _MARGIN)
                    for start, end in windows
                )
                found.append(SweptAlert(alert.rule_id, patient_id, at, alert.message, explained))
    return Sweep(found, evaluations)
