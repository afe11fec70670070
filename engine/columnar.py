"""The batch evaluator: a pack's IR compiled to polars queries over fact frames.

The live evaluator (``vigie.engine.evaluate``) walks one patient at a time through closures;
this one evaluates every patient at once. Each rule becomes a lazy polars query over a frame of
*candidate rows* — one row per patient (a rule without drug binding) or per combination of active
drug lines of the bound sets — and every expression node becomes a polars expression over that
frame. Queries read shared scans computed once per evaluation, whatever the number of rules: the
active lines (collected once), the lab and observation series, and each (series, selection,
window) result per patient (the latest potassium of the last 48 h is one scan, however many
rules read it). There is no Python loop over patients or fact rows: the few Python functions of
the engine that are not formulas (how a combination product's dose reaches its ingredients, MME
factors, set membership by code prefix) run once per *distinct* value (line shape, ATC code and
route) and come back as a table joined to the lines or, for set membership, as ``is_in`` tests
on the lines' ATC codes (and routes, for a set restricted to some).

Values follow the closures' semantics exactly — Kleene's unknown (null) everywhere, drug amounts
as (value, unit, lower bound), windows (start inclusive, end, end inclusive), ties and orders —
and a property test (tests/test_columnar.py) holds the two evaluators to the same alerts.

Detection is columnar; explanation is not: a firing row (rule, patient, bound lines) is then
explained by the same tracer the live evaluator uses (``evaluate.explain_combination``), on
that patient's facts rebuilt from the frames, so that evidence, message and thresholds are
identical by construction. That is one Python step per *alert*, the output, not per patient or fact.

>>> from datetime import datetime
>>> from vigie.engine.evaluate import evaluate
>>> from vigie.engine.factset import FactSet
>>> from vigie.facts import Coding, LabResult, MedicationOrder, Source
>>> from vigie.rules import compile_pack
>>> ir, _ = compile_pack('''pack "demo" version "1.0.0"
... set acei = atc C09A
... rule demo.k "K+ high"
...   problem 7 intervention 2 severity major level 1 version 1
...   when
...     d = active drug in acei
...     k = latest potassium within 48 h
...     k > 5.5 mmol/L
...   say "K+ {k}"
... ''', "demo.rules")
>>> src = Source(feed="csv", document="x.csv", position="line 2")
>>> facts = FactSet([
...     MedicationOrder(fact_id="o1", patient_id="p1", source=src, order_id="o1",
...                     drug=Coding(code="C09AA05"), atc="C09AA05", start=datetime(2024, 1, 1)),
...     LabResult(fact_id="l1", patient_id="p1", source=src, concept="potassium",
...               code=Coding(code="2823-3"), value=5.9, unit="mmol/L",
...               time=datetime(2024, 1, 2, 8))])
>>> at = datetime(2024, 1, 2, 9)
>>> [a.message for a in evaluate_columnar(ir, facts.frames(), at)]
['K+ 5.9 mmol/L']
>>> evaluate_columnar(ir, facts.frames(), at) == evaluate(ir, facts, at)
True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import polars as pl

from vigie.engine.alerts import Alert
from vigie.engine.derived import (
    AMOUNT_UNITS,
    CREATININE_UMOL_PER_MG_DL,
    ingredient_doses,
    is_combination_code,
    order_mme,
)
from vigie.engine.errors import PackError
from vigie.engine.evaluate import current_stay, explain_combination, normalise_time, select
from vigie.engine.expressions import expand_routes
from vigie.engine.factset import PatientRecord, fact_columns
from vigie.engine.load import LoadedPack, LoadedRule, Selection
from vigie.engine.runtime import CodeSets, Context
from vigie.engine.site_config import SiteConfig
from vigie.facts import (
    FACT_KINDS,
    Allergy,
    Coding,
    Condition,
    LabResult,
    MedicationAdministration,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Sex,
    Source,
    Stay,
)
from vigie.facts.model import Ingredient

__all__ = [
    "DETECTION_SCHEMA",
    "detect",
    "empty_frames",
    "evaluate_columnar",
    "explain",
    "in_stay",
    "patients_of",
    "records_from_frames",
]

Frames = Mapping[str, pl.DataFrame]

DETECTION_SCHEMA: dict[str, pl.DataType] = {
    "rule_index": pl.Int64(),
    "rule_id": pl.String(),
    "patient_id": pl.String(),
    "fact_ids": pl.List(pl.String()),  # the bound lines, in the rule's binding order
    "severity": pl.String(),
}

_ENDED = ("completed", "stopped")


def _collect_options() -> dict[str, Any]:
    """How the evaluator collects, since polars 2: with the in-memory engine, faster than the
    streaming default on the queries of one evaluation (small frames, many short plans;
    benchmarks/bench_batch_vs_polars.py), and its joins in the order the queries are written
    (polars' join reordering joined the pair rules' member lines with themselves by patient
    before narrowing them to the pairs of sets the rules name: on the ANSM pack and 3,000 beds,
    60-130 ms instead of 15 ms). Before polars 2, both are what collect does by default."""
    flags = getattr(pl, "QueryOptFlags", None)
    if flags is None or not hasattr(flags(), "join_order"):
        return {}
    return {"engine": "in-memory", "optimizations": flags(join_order=False)}


_COLLECT = _collect_options()


def _collect(frame: pl.LazyFrame) -> pl.DataFrame:
    return cast(pl.DataFrame, frame.collect(**_COLLECT))


_LINE_COLUMNS = (
    "fact_id", "order_id", "atc", "route", "label", "dose", "dose_unit", "daily",
    "frequency_per_day", "start", "end",
)  # fmt: skip
# What the per-line dose and MME functions read: a line's shape.
_SHAPE = ("atc", "route", "dose", "dose_unit", "daily", "ingredients")
# A line's daily dose: as given, else the dose times the frequency.
_DAILY = (
    pl.when(pl.col("daily_dose").is_not_null())
    .then(pl.col("daily_dose"))
    .otherwise(pl.col("dose") * pl.col("frequency_per_day"))
    .alias("daily")
)
# A dose unit's base unit and factor to it (null for a unit not known), for ``replace_strict``.
_UNIT_NAMES = pl.Series(list(AMOUNT_UNITS), dtype=pl.String())
_UNIT_BASES = pl.Series([base for base, _ in AMOUNT_UNITS.values()], dtype=pl.String())
_UNIT_FACTORS = pl.Series([factor for _, factor in AMOUNT_UNITS.values()], dtype=pl.Float64())


@dataclass(frozen=True)
class _Membership:
    """A set's members among the (ATC, route) pairs of the active lines: the codes in it on
    every route they have, and (codes, routes) pairs in it on some routes only."""

    always: tuple[str, ...]
    some: tuple[tuple[tuple[str, ...], frozenset[str | None]], ...]

    def expr(self, atc: pl.Expr, route: pl.Expr) -> pl.Expr:
        """Over lines (whose pairs are those counted): in the set (never null)."""
        parts = [atc.is_in(list(self.always))] if self.always else []
        for codes, routes in self.some:
            named = sorted(r for r in routes if r is not None)
            on_route = route.is_in(named) if named else pl.lit(False)
            if None in routes:
                on_route = route.is_null() | on_route
            parts.append(atc.is_in(list(codes)) & on_route)
        found = parts[0] if len(parts) == 1 else pl.any_horizontal(parts)
        return found.fill_null(False)


def empty_frames() -> dict[str, pl.DataFrame]:
    """A frame per fact kind, empty, with its schema."""
    return {kind: pl.DataFrame(schema=fact_columns(kind)) for kind in FACT_KINDS}


# Public entry points -----------------------------------------------------------------------------


def evaluate_columnar(
    pack: LoadedPack | Mapping[str, Any],
    frames: Frames,
    as_of: datetime,
    *,
    cursors: Mapping[str, float] | None = None,
    level: int = 1,
    enabled: Iterable[str] = (),
    disabled: Iterable[str] = (),
    site: SiteConfig | None = None,
    patients: Sequence[str] | None = None,
    records: dict[str, PatientRecord] | None = None,
) -> list[Alert]:
    """The alerts of a pack on fact frames as of a time — what ``evaluate`` returns on the same
    facts, in the same order. ``patients`` restricts the evaluation to those patient ids;
    ``records`` keeps the patients' records rebuilt to explain alerts, for the next pack or the
    priority score to reuse."""
    enabled, disabled = tuple(enabled), tuple(disabled)
    if site is not None and (cursors or level != 1 or enabled or disabled):
        raise PackError("give either a site configuration or cursors/level/enabled/disabled")
    selection = select(pack, cursors=cursors, level=level, enabled=enabled, disabled=disabled)
    at = normalise_time(as_of)
    frames = _complete(frames)
    if patients is not None:
        wanted = pl.Series(list(patients), dtype=pl.String())
        frames = {
            k: f.filter(pl.col("patient_id").is_in(wanted.implode())) for k, f in frames.items()
        }
    if site is None:
        groups = [(selection, frames)]
    else:
        site.check_pack(selection.pack)
        groups = _by_ward_selection(selection, site, frames, at)
    found = []
    for chosen, part in groups:
        found.append(explain(chosen, part, at, detect(chosen, part, at), records))
    alerts = [alert for part in found for alert in part]
    order = {rule.id: rule.index for rule in selection.pack.rules}
    alerts.sort(key=lambda a: (order[a.rule_id], a.patient_id, a.id))
    return alerts


def detect(selection: Selection, frames: Frames, as_of: datetime) -> pl.DataFrame:
    """Which rules fire for which patient and lines, with the severity (escalations applied):
    a frame of ``DETECTION_SCHEMA``, one row per alert."""
    scans = _Scans(_complete(frames), normalise_time(as_of), selection)
    queries = [
        q
        for rule in selection.rules
        if scans.may_fire(rule) and (q := _RuleQuery(rule, scans).build()) is not None
    ]
    queries.extend(scans.pair_rule_queries())
    if not queries:
        return pl.DataFrame(schema=DETECTION_SCHEMA)
    schema = pl.Schema(DETECTION_SCHEMA)
    parts = [q.select(list(DETECTION_SCHEMA)).cast(schema) for q in queries]
    found = pl.concat(parts).sort("rule_index", "patient_id", maintain_order=True)
    return _collect(found)


def explain(
    selection: Selection,
    frames: Frames,
    as_of: datetime,
    detected: pl.DataFrame,
    records: dict[str, PatientRecord] | None = None,
) -> list[Alert]:
    """The explained alerts of detected rows (evidence, message, thresholds), by the live
    evaluator's tracer on the facts of the patients concerned, rebuilt from the frames (once:
    ``records`` keeps them across calls)."""
    if not detected.height:
        return []
    at = normalise_time(as_of)
    records = {} if records is None else records
    wanted = [p for p in detected.get_column("patient_id").unique().to_list() if p not in records]
    records.update(records_from_frames(frames, wanted))
    by_index = {rule.index: rule for rule in selection.rules}
    contexts: dict[str, tuple[Context, dict[str, MedicationOrder], Stay | None]] = {}
    alerts = []
    for index, patient_id, fact_ids in detected.select(
        "rule_index", "patient_id", "fact_ids"
    ).iter_rows():
        rule = by_index[index]
        if patient_id not in contexts:
            record = records[patient_id]
            ctx = Context(record, at, selection.pack.sets, selection.params)
            lines = {o.fact_id: o for o in record.orders}
            contexts[patient_id] = (ctx, lines, current_stay(record, at))
        ctx, lines, stay = contexts[patient_id]
        combo = [lines[f] for f in fact_ids]
        identity = tuple(sorted(line.order_id for line in combo))
        alerts.append(explain_combination(rule, ctx, combo, identity, stay))
    return alerts


# Frames → facts (for the explanation of firing rows) ---------------------------------------------


def records_from_frames(frames: Frames, patient_ids: Iterable[str]) -> dict[str, PatientRecord]:
    """The per-patient records of some patients, their facts rebuilt from frame rows."""
    ids = pl.Series(list(patient_ids), dtype=pl.String())
    records = {pid: PatientRecord(pid) for pid in ids.to_list()}
    for kind, frame in frames.items():
        if not frame.height:
            continue
        build = _BUILDERS.get(kind)
        if build is None:
            continue
        for row in frame.filter(pl.col("patient_id").is_in(ids.implode())).iter_rows(named=True):
            records[row["patient_id"]].add(build(row))
    for record in records.values():
        record.sort()
    return records


def _source(row: Mapping[str, Any]) -> Source:
    return Source.model_construct(
        feed=row["source_feed"],
        document=row["source_document"],
        message_id=row["source_message_id"],
        position=row["source_position"],
        version_time=row.get("source_version_time"),
    )


def _coding(row: Mapping[str, Any], name: str) -> Coding:
    return Coding.model_construct(
        system=row[f"{name}_system"], code=row[f"{name}_code"], display=row[f"{name}_display"]
    )


def _common(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "fact_id": row["fact_id"],
        "patient_id": row["patient_id"],
        "source": _source(row),
        "flags": (),
    }


_FIELD_NAMES: dict[tuple[type[Any], tuple[str, ...]], tuple[str, ...]] = {}


def _field_names(model: type[Any], skip: tuple[str, ...]) -> tuple[str, ...]:
    """A fact model's fields that a frame holds as they are (once per model)."""
    found = _FIELD_NAMES.get((model, skip))
    if found is None:
        taken = {*skip, "fact_id", "patient_id", "source", "flags"}
        found = tuple(name for name in model.model_fields if name not in taken)
        _FIELD_NAMES[(model, skip)] = found
    return found


def _fields(row: Mapping[str, Any], model: type[Any], skip: tuple[str, ...]) -> dict[str, Any]:
    return {name: row[name] for name in _field_names(model, skip)}


def _order(row: Mapping[str, Any]) -> MedicationOrder:
    ingredients = tuple(Ingredient.model_construct(**i) for i in row["ingredients"] or ())
    return MedicationOrder.model_construct(
        **_common(row),
        **_fields(row, MedicationOrder, ("drug", "ingredients")),
        drug=_coding(row, "drug"),
        ingredients=ingredients,
    )


def _patient(row: Mapping[str, Any]) -> Patient:
    return Patient.model_construct(
        **_common(row), birth_date=row["birth_date"], sex=Sex(row["sex"] or "U")
    )


def _allergy(row: Mapping[str, Any]) -> Allergy:
    return Allergy.model_construct(
        **_common(row),
        **_fields(row, Allergy, ("substance", "atc")),
        substance=_coding(row, "substance"),
        atc=tuple(row["atc"] or ()),
    )


def _plain(model: type[Any], coding: str | None = None) -> Any:
    def build(row: Mapping[str, Any]) -> Any:
        extra = {coding: _coding(row, coding)} if coding else {}
        return model.model_construct(
            **_common(row), **_fields(row, model, (coding,) if coding else ()), **extra
        )

    return build


_BUILDERS = {
    "patient": _patient,
    "stay": _plain(Stay),
    "medication_order": _order,
    "medication_administration": _plain(MedicationAdministration, "drug"),
    "lab": _plain(LabResult, "code"),
    "observation": _plain(Observation, "code"),
    "condition": _plain(Condition, "code"),
    "allergy": _allergy,
    "pregnancy": _plain(Pregnancy),
}


def _complete(frames: Frames) -> dict[str, pl.DataFrame]:
    """Every kind present (an empty frame with its schema where missing)."""
    out = dict(frames)
    for kind in FACT_KINDS:
        if kind not in out:
            out[kind] = pl.DataFrame(schema=fact_columns(kind))
    return out


def _by_ward_selection(
    selection: Selection, site: SiteConfig, frames: Frames, at: datetime
) -> list[tuple[Selection, dict[str, pl.DataFrame]]]:
    """Patients grouped by the selection of the ward of their current stay (the hospital's
    when none); patients in wards where the pack is off are left out."""
    ward_of = _current_wards(frames, at)
    patients = patients_of(frames)
    assigned = patients.join(ward_of, on="patient_id", how="left")
    groups: list[tuple[Selection, dict[str, pl.DataFrame]]] = []
    keyed: dict[int, tuple[Selection, list[str]]] = {}
    for (ward,), part in assigned.group_by(["ward"], maintain_order=True):
        chosen = site.selection(selection.pack, cast(str | None, ward))
        if chosen is None:
            continue
        keyed.setdefault(id(chosen), (chosen, []))[1].extend(part.get_column("patient_id"))
    for chosen, ids in keyed.values():
        wanted = pl.Series(ids, dtype=pl.String())
        part_frames = {
            k: f.filter(pl.col("patient_id").is_in(wanted.implode())) for k, f in frames.items()
        }
        groups.append((chosen, part_frames))
    return groups


def patients_of(frames: Frames) -> pl.DataFrame:
    """Every patient id of the frames (any fact kind), sorted, as a one-column frame."""
    ids = [f.select("patient_id") for f in frames.values() if f.height]
    if not ids:
        return pl.DataFrame(schema={"patient_id": pl.String()})
    return pl.concat(ids).unique().sort("patient_id")


def _current_wards(frames: Frames, at: datetime) -> pl.DataFrame:
    """The ward of the stay each patient is in at ``at`` (``current_stay``: the latest admitted
    one, by admission time then stay id, among stays not cancelled that contain ``at``)."""
    stays = frames["stay"].filter(
        (pl.col("status") != "cancelled")
        & (pl.col("admit_time").is_null() | (pl.col("admit_time") <= at))
        & (pl.col("discharge_time").is_null() | (pl.col("discharge_time") > at))
    )
    return (
        stays.with_columns(pl.col("admit_time").fill_null(datetime.min).alias("__admit"))
        .sort("__admit", "stay_id")
        .group_by("patient_id")
        .agg(pl.col("ward").last())
    )


def in_stay(frames: Frames, at: datetime) -> list[str]:
    """Patients with a stay containing ``at`` (the batch's ``--scope inpatients``), sorted."""
    return sorted(_current_wards(_complete(frames), normalise_time(at))["patient_id"].to_list())


# Shared scans ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bounds:
    """A window in columns of the candidate rows (or constants): start (None: unbounded),
    end, end inclusive, and whether the window is known at all."""

    start: pl.Expr
    end: pl.Expr
    inclusive: pl.Expr
    known: pl.Expr
    constant: tuple[datetime | None, datetime, bool] | None = None  # known bounds, all rows
    unknown: bool = False  # unknown for every row


class _Scans:
    """What every rule of one evaluation reads, computed once."""

    def __init__(self, frames: Mapping[str, pl.DataFrame], at: datetime, selection: Selection):
        self.frames = frames
        self.at = at
        self.at_expr = _time(at)  # the evaluation time as a literal, built once
        self.selection = selection
        self.sets: CodeSets = selection.pack.sets
        self.params = selection.params
        self._cache: dict[Any, pl.LazyFrame] = {}
        self._counter = itertools.count()
        self._shape_table: pl.DataFrame | None = None
        self._shaped: pl.LazyFrame | None = None
        self._series: dict[tuple[str, str], pl.LazyFrame] = {}
        self._base = self._active_lines()
        self.lines = self._base.lazy()
        # ATC code → its routes on active lines; set → its member codes → their routes.
        self._routes_of: dict[str, set[str | None]] = {}
        self._members: dict[str, dict[str, set[str | None]]] = {}
        self._specs: dict[str, _Membership] = {}
        self._memberships()
        # The sets some active line is in (the others' rules have no candidate row).
        self.present = frozenset(self._members)

    def may_fire(self, rule: LoadedRule) -> bool:
        """False when a drug binding's set has no active line: the rule has no candidate row
        (``Selection.candidates`` skips it the same way)."""
        return all(b.set is None or b.set in self.present for b in rule.drug_bindings)

    @property
    def patients(self) -> pl.LazyFrame:
        """Every patient of the frames (the rows of a rule without drug binding)."""
        return self.cached("patients", lambda: patients_of(self.frames).lazy())

    def name(self, hint: str) -> str:
        return f"__{hint}{next(self._counter)}"

    def cached(self, key: Any, build: Any) -> pl.LazyFrame:
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = build().cache()
        return found

    # Lines

    def _active(self) -> pl.LazyFrame:
        """The order lines active at the evaluation time (``is_active``), in frame order."""
        at = self.at_expr
        ended = pl.col("status").is_in(["active", *_ENDED])
        return (
            self.frames["medication_order"]
            .lazy()
            .filter(
                (pl.col("start").is_null() | (pl.col("start") <= at))
                & pl.when(pl.col("end").is_not_null())
                .then((pl.col("end") > at) & ended)
                .otherwise(pl.col("status") == "active")
            )
        )

    def _active_lines(self) -> pl.DataFrame:
        """Active order lines with their label and daily dose, in no order: readers order them
        by order id then fact id, the order the live evaluator iterates them in. Collected
        once, as the columns the rules read (ingredients apart: ``shaped_lines``)."""
        lines = self._active().select(
            "patient_id",
            "fact_id",
            "order_id",
            "atc",
            "route",
            pl.coalesce("label", "drug_display", "drug_code").alias("label"),
            "dose",
            "dose_unit",
            _DAILY,
            "frequency_per_day",
            "start",
            "end",
        )
        return _collect(lines)

    def _memberships(self) -> None:
        """Which distinct (ATC, route) pairs of the active lines are in which set: the sets of
        each pair (``CodeSets.atc``, once per pair), inverted to the pairs of each set."""
        pairs = self._base.select("atc", "route").unique().rows()
        atc_sets = self.sets.atc
        for atc, route in pairs:  # once per distinct (ATC, route) pair
            if not atc:
                continue  # in no set (``CodeSets.atc``)
            self._routes_of.setdefault(atc, set()).add(route)
            for name in atc_sets(atc, route):
                self._members.setdefault(name, {}).setdefault(atc, set()).add(route)

    def _membership(self, set_name: str) -> _Membership:
        """A set's members among the pairs: the codes in it on every route they have, the
        (codes, routes) in it on some routes only."""
        found = self._specs.get(set_name)
        if found is None:
            codes = self._members[set_name]
            always = sorted(c for c, routes in codes.items() if routes == self._routes_of[c])
            some: dict[frozenset[str | None], list[str]] = {}
            for c, routes in codes.items():
                if routes != self._routes_of[c]:
                    some.setdefault(frozenset(routes), []).append(c)
            parts = tuple((tuple(sorted(c)), routes) for routes, c in some.items())
            found = self._specs[set_name] = _Membership(tuple(always), parts)
        return found

    def member_pairs(self, set_names: Iterable[str]) -> pl.DataFrame:
        """The (ATC, route, set) member pairs of some sets, as a table."""
        rows = [
            (atc, route, name)
            for name in sorted(set(set_names) & self.present)
            for atc, routes in self._members[name].items()
            for route in routes
        ]
        schema = {"atc": pl.String(), "route": pl.String(), "set": pl.String()}
        return pl.DataFrame(rows, schema=schema, orient="row")

    def shaped_lines(self) -> pl.LazyFrame:
        """The active lines with their shape (what the dose and MME functions read, the
        ingredients included), collected once when a rule reads a daily dose or MME."""
        if self._shaped is None:
            shaped = self._active().select(
                "patient_id",
                "fact_id",
                "order_id",
                *[_DAILY if c == "daily" else c for c in _SHAPE],
            )
            self._shaped = _collect(shaped).lazy()
        return self._shaped

    def member(
        self, set_name: str, atc: pl.Expr | None = None, route: pl.Expr | None = None
    ) -> pl.Expr:
        """Whether a line (its ``atc`` and ``route`` columns, by default those of ``lines``)
        is in a set: false for a set of another system (as ``CodeSets.atc``)."""
        if set_name not in self.present:
            return pl.lit(False)
        return self._membership(set_name).expr(
            pl.col("atc") if atc is None else atc, pl.col("route") if route is None else route
        )

    def bound_lines(self, set_name: str | None, routes: frozenset[str] | None) -> pl.LazyFrame:
        """``ctx.lines(set, routes)``: active lines in the set with a route among ``routes``."""
        lines = self.lines
        if set_name is not None:
            lines = lines.filter(self.member(set_name))
        if routes is not None:
            lines = lines.filter(pl.col("route").is_in(sorted(routes)))
        return lines

    def drug_query(self, set_name: str | None, routes: frozenset[str] | None) -> pl.LazyFrame:
        """Per patient: the number of lines of ``ctx.lines(set, routes)`` (patients without
        one are missing: the caller fills 0)."""
        key = ("drugs", set_name, routes)
        return self.cached(
            key,
            lambda: (
                self.bound_lines(set_name, routes)
                .group_by("patient_id")
                .agg(pl.len().cast(pl.Float64).alias("n"))
            ),
        )

    def daily_dose(self, set_name: str) -> pl.LazyFrame:
        """Per patient: ``set_daily_dose`` as (value, unit, lower) — patients without a line in
        the set are missing (the caller fills the empty sum)."""
        return self.cached(("daily_dose", set_name), lambda: self._daily_dose(set_name))

    def _shapes(self) -> pl.DataFrame:
        """The distinct line shapes (what the dose and MME functions read), once."""
        if self._shape_table is None:
            shapes = self.shaped_lines().select(_SHAPE).unique(maintain_order=True)
            self._shape_table = _collect(shapes)
        return self._shape_table

    def _by_shape(
        self, rows: list[tuple[Any, ...]], parts: Mapping[str, pl.DataType]
    ) -> pl.LazyFrame:
        """Active lines joined to values computed per line shape (``rows``: the shape's
        columns, then ``parts``)."""
        lines = self.shaped_lines()
        schema = dict(lines.select(_SHAPE).collect_schema()) | dict(parts)
        table = pl.DataFrame(rows, schema=schema, orient="row")
        return lines.join(table.lazy(), on=list(_SHAPE), how="inner", nulls_equal=True)

    def _daily_dose(self, set_name: str) -> pl.LazyFrame:
        atc_sets = self.sets.atc
        rows = []
        for atc, route, dose, unit, daily, ingredients in self._shapes().iter_rows():
            in_set = set_name in atc_sets(atc, route)
            entries: list[tuple[float | None, str | None]] = []
            if ingredients:
                parts = tuple(Ingredient.model_construct(**i) for i in ingredients)
                found = [
                    d
                    for d in ingredient_doses(parts, dose, unit, daily)
                    if set_name in atc_sets(d.ingredient.atc, route)
                ]
                if not found and in_set:
                    entries.append((None, None))
                entries.extend((d.per_day, d.unit) for d in found)
            elif in_set and is_combination_code(atc):
                entries.append((None, None))
            elif in_set:
                entries.append((daily, unit))
            if entries:
                rows.append((atc, route, dose, unit, daily, ingredients, *_line_sum(entries)))
        sums: dict[str, pl.DataType] = {
            "part": pl.Float64(),
            "part_unit": pl.String(),
            "part_lower": pl.Boolean(),
            "part_mixed": pl.Boolean(),
        }
        joined = self._by_shape(rows, sums)
        return _patient_sums(joined, "part", "part_unit", "part_lower", "part_mixed")

    def mme(self) -> pl.LazyFrame:
        """Per patient: ``opioid_mme`` as (value, unit MME, lower) over active opioid lines."""
        return self.cached("mme", self._mme)

    def _mme(self) -> pl.LazyFrame:
        rows = []
        for atc, route, dose, unit, daily, ingredients in self._shapes().iter_rows():
            parts = tuple(Ingredient.model_construct(**i) for i in ingredients or ())
            opioid, mme, _doses = order_mme(atc, route, dose, unit, daily, parts)
            if opioid:
                rows.append((atc, route, dose, unit, daily, ingredients, mme))
        joined = self._by_shape(rows, {"part": pl.Float64()})
        return (
            joined.sort("patient_id", "order_id", "fact_id")
            .group_by("patient_id", maintain_order=True)
            .agg(
                pl.col("part").fill_null(0.0).cum_sum().last().alias("value"),
                pl.col("part").is_null().any().alias("lower"),
            )
            .with_columns(pl.lit("MME").alias("unit"))
        )

    # Series

    def series(self, fact_kind: str, concept: str) -> pl.LazyFrame:
        """A lab or observation series up to the evaluation time (in no order: each reader
        picks by time and fact id). Not a cache node: each reader's window is pushed down to
        the scan of the kind's frame (one pass over it, for the few rows of the window)."""
        key = (fact_kind, concept)
        found = self._series.get(key)
        if found is None:
            frame = self.frames[fact_kind].lazy()
            if fact_kind == "lab":
                extra = [pl.col("reference_high"), pl.col("reference_low"), pl.col("qualitative")]
            else:
                extra = [
                    pl.lit(None, pl.Float64()).alias("reference_high"),
                    pl.lit(None, pl.Float64()).alias("reference_low"),
                    pl.lit(None, pl.String()).alias("qualitative"),
                ]
            chosen = frame.filter(
                (pl.col("concept") == concept) & (pl.col("time") <= self.at_expr)
            ).select("patient_id", "fact_id", "value", "unit", "time", *extra)
            found = self._series[key] = chosen
        return found

    def age_frame(self) -> pl.LazyFrame:
        """Per patient: birth date, sex and age in completed years at the evaluation time."""

        def build() -> pl.LazyFrame:
            day = self.at.date()
            born = pl.col("birth_date")
            before = (born.dt.month() > day.month) | (
                (born.dt.month() == day.month) & (born.dt.day() > day.day)
            )
            years = pl.lit(day.year) - born.dt.year() - before.cast(pl.Int32())
            return (
                self.frames["patient"]
                .lazy()
                .select("patient_id", "birth_date", "sex", years.cast(pl.Int64()).alias("age"))
            )

        return self.cached("age", build)

    # Pair rules (two drug bindings, always true: the ANSM interactions)

    def pair_rule_queries(self) -> list[pl.LazyFrame]:
        rules = [r for r in self.selection.rules if _is_pair_rule(r) and self.may_fire(r)]
        if not rules:
            return []
        table = pl.DataFrame(
            {
                "rule_index": [r.index for r in rules],
                "rule_id": [r.id for r in rules],
                "severity": [r.severity for r in rules],
                "set_a": [r.drug_bindings[0].set for r in rules],
                "set_b": [r.drug_bindings[1].set for r in rules],
            },
            schema={
                "rule_index": pl.Int64(),
                "rule_id": pl.String(),
                "severity": pl.String(),
                "set_a": pl.String(),
                "set_b": pl.String(),
            },
        ).lazy()
        wanted = {b.set for r in rules for b in r.drug_bindings}
        pairs = self.member_pairs(n for n in wanted if n is not None)
        codes = pairs.get_column("atc").unique()
        member = (
            self.lines.filter(pl.col("atc").is_in(codes.implode()))  # fewer lines to join
            .select("patient_id", "fact_id", "order_id", "atc", "route")
            .join(pairs.lazy(), on=["atc", "route"], nulls_equal=True)
            .drop("atc", "route")
        )
        a = member.rename({"set": "set_a", "fact_id": "fa", "order_id": "oa"})
        b = member.rename({"set": "set_b", "fact_id": "fb", "order_id": "ob"})
        combos = (
            table.join(a, on="set_a")
            .join(b, on=["patient_id", "set_b"])
            .filter(pl.col("fa") != pl.col("fb"))
            .with_columns(
                pl.min_horizontal("oa", "ob").alias("__id1"),
                pl.max_horizontal("oa", "ob").alias("__id2"),
            )
            .sort("rule_index", "patient_id", "oa", "fa", "ob", "fb")
            .unique(
                ["rule_index", "patient_id", "__id1", "__id2"], keep="first", maintain_order=True
            )
            .select(
                "rule_index",
                "rule_id",
                "patient_id",
                pl.concat_list("fa", "fb").alias("fact_ids"),
                "severity",
            )
        )
        return [combos]


def _is_pair_rule(rule: LoadedRule) -> bool:
    ir = rule.ir
    return (
        len(rule.drug_bindings) == 2
        and all(b.set is not None and b.routes is None for b in rule.drug_bindings)
        and ir["condition"].get("op") == "const"
        and ir["condition"].get("value") is True
        and not ir["escalations"]
    )


def _line_sum(
    entries: list[tuple[float | None, str | None]],
) -> tuple[float, str | None, bool, bool]:
    """One line's part of ``total_daily_dose``: the sum of its known entries (in order), their
    base unit, whether one is unknown, whether its own entries mix units."""
    total, unit, lower, mixed = 0.0, None, False, False
    for value, line_unit in entries:
        known = AMOUNT_UNITS.get(line_unit or "")
        if value is None or known is None or known[0] == "MME":
            lower = True
            continue
        if unit is not None and unit != known[0]:
            mixed = True
        unit = known[0]
        total += value * known[1]
    return total, unit, lower, mixed


def _patient_sums(
    parts: pl.LazyFrame, value: str, unit: str, lower: str, mixed: str
) -> pl.LazyFrame:
    """Per patient, lines in (order id, fact id) order: the running sum of line parts (the
    order the closures add them in), unknown when units mix, a lower bound when some part is."""
    return (
        parts.sort("patient_id", "order_id", "fact_id")
        .group_by("patient_id", maintain_order=True)
        .agg(
            pl.col(value).cum_sum().last().alias("value"),
            pl.col(unit).drop_nulls().unique().alias("units"),
            pl.col(lower).any().alias("lower"),
            pl.col(mixed).any().alias("mixed"),
        )
        .select(
            "patient_id",
            pl.when(pl.col("mixed") | (pl.col("units").list.len() > 1))
            .then(None)
            .otherwise(pl.col("value"))
            .alias("value"),
            pl.when(pl.col("mixed") | (pl.col("units").list.len() > 1))
            .then(None)
            .otherwise(pl.col("units").list.first())
            .alias("unit"),
            pl.col("lower"),
        )
    )


# Rule queries ------------------------------------------------------------------------------------

_NONE: Any = object()  # no static value


@dataclass
class _Val:
    """A compiled value: a scalar expression (bool, number, time, text, code), a drug amount
    (value, unit, lower bound; None when ``value`` is null), a bound line (``prefix``: the
    binding's columns) or a lab/observation result (``prefix``: its columns, null fact id when
    there is none). ``const`` holds the value when it is the same for every row."""

    kind: str
    expr: pl.Expr | None = None
    unit: pl.Expr | None = None
    lower: pl.Expr | None = None
    prefix: str | None = None
    const: Any = field(default=_NONE)
    base: pl.Expr | None = None  # an amount's unit: its base unit (mg, IU, MME), null if unknown
    factor: pl.Expr | None = None  # and its factor to the base unit

    @property
    def amount(self) -> tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr]:
        """(value, unit, lower bound, base unit, factor) of an amount."""
        return cast(
            tuple[pl.Expr, pl.Expr, pl.Expr, pl.Expr, pl.Expr],
            (self.expr, self.unit, self.lower, self.base, self.factor),
        )

    def col(self, name: str) -> pl.Expr:
        return pl.col(f"{self.prefix}.{name}")


def _scalar(expr: pl.Expr, const: Any = _NONE) -> _Val:
    return _Val("scalar", expr, const=const)


def _lit(value: Any) -> _Val:
    dtype: pl.DataType | None = None
    if isinstance(value, bool):
        dtype = pl.Boolean()
    elif isinstance(value, float):
        dtype = pl.Float64()
    elif isinstance(value, datetime):
        return _scalar(_time(value), value)
    elif isinstance(value, str):
        dtype = pl.String()
    return _scalar(pl.lit(value, dtype=dtype), value)


_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def _time(value: datetime | None) -> pl.Expr:
    """A naive time as a literal ``Datetime("us")``: built from its microseconds since the
    epoch (``pl.lit`` of a ``datetime`` costs ~0.14 ms, a tenth of that this way)."""
    if value is None:
        return pl.lit(None, pl.Datetime("us"))
    return pl.lit((value - _EPOCH) // _MICROSECOND, pl.Int64()).cast(pl.Datetime("us"))


_NULL_BOOL = pl.lit(None, pl.Boolean())
_NULL_FLOAT = pl.lit(None, pl.Float64())
_LAB_FIELDS = ("fact_id", "value", "unit", "time", "reference_high", "reference_low", "qualitative")


def _one_amount(amount: _Val, result: pl.Expr, concludes: bool) -> pl.Expr:
    """A comparison of one amount with a number: unknown without the amount; with a lower
    bound, true only when it already passes a comparison it can conclude (``>``/``>=`` with
    the amount on the left), else unknown."""
    value, _, lower, _, _ = amount.amount
    lower_result = pl.when(result).then(pl.lit(True)).otherwise(_NULL_BOOL)
    return (
        pl.when(value.is_null())
        .then(_NULL_BOOL)
        .when(lower)
        .then(lower_result if concludes else _NULL_BOOL)
        .otherwise(result)
    )


def _seconds(w: pl.Expr) -> pl.Expr:
    """A duration in seconds as a polars duration (microseconds, as ``timedelta`` rounds)."""
    return pl.duration(microseconds=(w * 1_000_000).round(0).cast(pl.Int64()))


def _to_seconds(delta: pl.Expr) -> pl.Expr:
    return delta.dt.total_microseconds() / 1_000_000


def _amount_in(
    amount: _Val, target: pl.Expr, target_base: pl.Expr, target_factor: pl.Expr
) -> pl.Expr:
    """``amount_in``: the amount's value in ``target`` (null target: the value as is)."""
    value, unit, _, base, factor = amount.amount
    return (
        pl.when(target.is_null() | unit.is_null() | (unit == target))
        .then(value)
        .when(base.is_not_null() & target_base.is_not_null() & (base == target_base))
        .then(value * factor / target_factor)
        .otherwise(_NULL_FLOAT)
    )


def _in_unit(amount: _Val, unit: str | None) -> pl.Expr:
    """The amount in a unit known when compiling (None: as it is)."""
    base, factor = AMOUNT_UNITS.get(unit or "", (None, None))
    return _amount_in(amount, _unit_lit(unit), _unit_lit(base), pl.lit(factor, pl.Float64()))


def _in_base(amount: _Val, unit: pl.Expr) -> pl.Expr:
    """The amount in ``unit``, a base unit (mg, IU, MME: factor 1) or an unknown unit."""
    known = unit.is_in(sorted(_BASES))
    return _amount_in(
        amount, unit, pl.when(known).then(unit).otherwise(_unit_lit(None)), pl.lit(1.0)
    )


def _base_of(amount: _Val) -> pl.Expr:
    """``_base_unit``: the base unit of a known dose unit, else the unit itself."""
    return pl.coalesce(cast(pl.Expr, amount.base), cast(pl.Expr, amount.unit))


def _unit_lit(unit: str | None) -> pl.Expr:
    return pl.lit(unit, pl.String())


_BASES = frozenset(base for base, _ in AMOUNT_UNITS.values())
assert all(AMOUNT_UNITS[b] == (b, 1.0) for b in _BASES)  # base units convert by 1


def _amount(value: pl.Expr, unit: pl.Expr, lower: pl.Expr, base: pl.Expr, factor: pl.Expr) -> _Val:
    return _Val("amount", value, unit, lower, base=base, factor=factor)


def _base_amount(value: pl.Expr, unit: pl.Expr, lower: pl.Expr) -> _Val:
    """An amount whose unit is a base unit or null (sums, arithmetic results)."""
    return _amount(value, unit, lower, unit, pl.when(unit.is_not_null()).then(pl.lit(1.0)))


_COMPARE_OPS = {
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
}


class _RuleQuery:
    """One rule compiled to a lazy query over its candidate rows."""

    def __init__(self, rule: LoadedRule, scans: _Scans) -> None:
        self.rule = rule
        self.scans = scans
        self.at = scans.at
        self.vars: dict[str, _Val] = {}
        self.frame: pl.LazyFrame = pl.LazyFrame()
        self._patient_joined = False

    # Driver

    def build(self) -> pl.LazyFrame | None:
        if _is_pair_rule(self.rule):
            return None  # evaluated with every other pair rule in one join
        ir = self.rule.ir
        self.frame = self._rows()
        for binding in ir["bindings"]:
            if binding["kind"] == "value":
                self.vars[binding["name"]] = self._store(
                    binding["name"], self.expr(binding["expr"])
                )
        condition = self._bool(self.expr(ir["condition"]))
        severity: pl.Expr = pl.lit(self.rule.severity, pl.String())
        escalations = [
            (e["severity"], self._bool(self.expr(e["condition"]))) for e in ir["escalations"]
        ]
        if escalations:
            chain: Any = pl
            for level, test in escalations:
                chain = chain.when(test.fill_null(False)).then(pl.lit(level, pl.String()))
            severity = chain.otherwise(severity)
        names = [b.name for b in self.rule.drug_bindings]
        ranks = [f"{n}.{key}" for n in names for key in ("order_id", "fact_id")]
        identity = (
            pl.concat_list([pl.col(f"{n}.order_id") for n in names]).list.sort()
            if names
            else pl.lit([], pl.List(pl.String()))
        )
        fact_ids = (
            pl.concat_list([pl.col(f"{n}.fact_id") for n in names])
            if names
            else pl.lit([], pl.List(pl.String()))
        )
        fired = (
            self.frame.filter(condition)
            .with_columns(identity.alias("__identity"), fact_ids.alias("fact_ids"))
            .sort(["patient_id", *ranks])
            .unique(["patient_id", "__identity"], keep="first", maintain_order=True)
        )
        return fired.select(
            pl.lit(self.rule.index, pl.Int64()).alias("rule_index"),
            pl.lit(self.rule.id, pl.String()).alias("rule_id"),
            pl.col("patient_id"),
            pl.col("fact_ids").cast(pl.List(pl.String())),
            severity.alias("severity"),
        )

    def _rows(self) -> pl.LazyFrame:
        """Patients (no drug binding) or combinations of distinct lines, one per binding."""
        frame: pl.LazyFrame | None = None
        seen: list[str] = []
        for binding in self.rule.drug_bindings:
            lines = self.scans.bound_lines(binding.set, binding.routes).select(
                "patient_id", *[pl.col(c).alias(f"{binding.name}.{c}") for c in _LINE_COLUMNS]
            )
            if frame is None:
                frame = lines
            else:
                frame = frame.join(lines, on="patient_id")
                mine = pl.col(f"{binding.name}.fact_id")
                frame = frame.filter(
                    pl.all_horizontal([mine != pl.col(f"{other}.fact_id") for other in seen])
                )
            seen.append(binding.name)
            self.vars[binding.name] = _Val("order", prefix=binding.name)
        if frame is None:
            frame = self.scans.patients
        return frame.with_row_index("__row")

    def _store(self, name: str, value: _Val) -> _Val:
        """A value binding kept as columns (computed once per row, read by every use)."""
        if value.kind == "scalar":
            if value.const is not _NONE:
                return value
            column = self.scans.name(f"v_{name}_")
            self.frame = self.frame.with_columns(cast(pl.Expr, value.expr).alias(column))
            return _scalar(pl.col(column))
        if value.kind == "amount":
            stem = self.scans.name(f"v_{name}_")
            parts = ("value", "unit", "lower", "base", "factor")
            self.frame = self.frame.with_columns(
                e.alias(f"{stem}.{p}") for p, e in zip(parts, value.amount, strict=True)
            )
            return _amount(*(pl.col(f"{stem}.{p}") for p in parts))
        return value  # lines and results already are columns

    def _bool(self, value: _Val) -> pl.Expr:
        if value.kind != "scalar":
            raise PackError(f"rule {self.rule.id}: a condition must be a truth value")
        return cast(pl.Expr, value.expr)

    def _join_patient(self, table: pl.LazyFrame, columns: Mapping[str, str]) -> None:
        """Left-join a per-patient table, its columns renamed (old → new)."""
        self.frame = self.frame.join(
            table.select("patient_id", *[pl.col(k).alias(v) for k, v in columns.items()]),
            on="patient_id",
            how="left",
        )

    # Expressions

    def expr(self, node: Mapping[str, Any]) -> _Val:
        op = node["op"]
        method = getattr(self, f"_op_{op}", None)
        if method is None:
            raise PackError(f"rule {self.rule.id}: IR operation {op!r} has no columnar form")
        return cast(_Val, method(node))

    def _args(self, node: Mapping[str, Any]) -> list[_Val]:
        return [self.expr(a) for a in node.get("args", ())]

    def _op_const(self, node: Mapping[str, Any]) -> _Val:
        value = node["value"]
        return _lit(float(value) if node["type"] == "number" else value)

    def _op_param(self, node: Mapping[str, Any]) -> _Val:
        return _lit(float(self.scans.params[node["name"]]))

    def _op_now(self, node: Mapping[str, Any]) -> _Val:
        return _scalar(self.scans.at_expr, self.at)

    def _op_var(self, node: Mapping[str, Any]) -> _Val:
        return self.vars[node["name"]]

    def _op_convert(self, node: Mapping[str, Any]) -> _Val:
        (x,) = self._args(node)
        factor = float(node["factor"])
        if x.kind == "amount":
            value, _, lower, _, _ = x.amount
            return _scalar(pl.when(lower).then(_NULL_FLOAT).otherwise(value * factor))
        if x.const is not _NONE:
            return _lit(None if x.const is None else x.const * factor)
        return _scalar(cast(pl.Expr, x.expr) * factor)

    def _op_attr(self, node: Mapping[str, Any]) -> _Val:
        (x,) = self._args(node)
        name = node["name"]
        if x.kind == "order":
            return self._line_attr(x, name)
        if x.kind == "lab":
            column = {"high": "reference_high", "low": "reference_low"}.get(name, name)
            if column not in ("value", "time", "reference_high", "reference_low", "unit"):
                raise PackError(f"rule {self.rule.id}: unknown attribute {name!r} of a result")
            return _scalar(x.col(column))
        raise PackError(f"rule {self.rule.id}: attribute {name!r} of a {x.kind}")

    def _line_attr(self, line: _Val, name: str) -> _Val:
        if name == "duration":
            return _scalar(_to_seconds(self.scans.at_expr - line.col("start")))
        if name in ("dose", "daily_dose"):
            value = line.col("dose" if name == "dose" else "daily")
            unit = line.col("dose_unit")
            known = value.is_not_null() & unit.is_not_null()
            return _amount(
                pl.when(known).then(value).otherwise(_NULL_FLOAT),
                pl.when(known).then(unit).otherwise(_unit_lit(None)),
                pl.lit(False),
                unit.replace_strict(_UNIT_NAMES, _UNIT_BASES, default=None),
                unit.replace_strict(_UNIT_NAMES, _UNIT_FACTORS, default=None),
            )
        column = {"frequency": "frequency_per_day"}.get(name, name)
        if column not in ("start", "end", "route", "label", "order_id", "atc", "frequency_per_day"):
            raise PackError(f"rule {self.rule.id}: unknown attribute {name!r} of a drug line")
        return _scalar(line.col(column))

    # Logic

    def _op_and(self, node: Mapping[str, Any]) -> _Val:
        args = [self._bool(a) for a in self._args(node)]
        return _scalar(pl.all_horizontal(args) if len(args) > 1 else args[0])

    def _op_or(self, node: Mapping[str, Any]) -> _Val:
        args = [self._bool(a) for a in self._args(node)]
        return _scalar(pl.any_horizontal(args) if len(args) > 1 else args[0])

    def _op_not(self, node: Mapping[str, Any]) -> _Val:
        (x,) = self._args(node)
        return _scalar(~self._bool(x))

    def _op_known(self, node: Mapping[str, Any]) -> _Val:
        (x,) = self._args(node)
        if x.kind == "amount":
            value, _, lower, _, _ = x.amount
            return _scalar(value.is_not_null() & ~lower)
        if x.kind == "lab":
            return _scalar(x.col("fact_id").is_not_null())
        if x.kind == "order":
            return _lit(True)
        return _scalar(cast(pl.Expr, x.expr).is_not_null())

    def _op_otherwise(self, node: Mapping[str, Any]) -> _Val:
        x, y = self._args(node)
        if x.kind == "scalar" and y.kind == "scalar":
            return _scalar(pl.coalesce(cast(pl.Expr, x.expr), cast(pl.Expr, y.expr)))
        if x.kind == "amount" or y.kind == "amount":
            xa, ya = self._as_amount(x), self._as_amount(y)
            missing = cast(pl.Expr, xa.expr).is_null()
            return _amount(
                *(
                    pl.when(missing).then(b).otherwise(a)
                    for a, b in zip(xa.amount, ya.amount, strict=True)
                )
            )
        raise PackError(f"rule {self.rule.id}: 'otherwise' over {x.kind} and {y.kind}")

    def _as_amount(self, value: _Val) -> _Val:
        if value.kind == "amount":
            return value
        none = _unit_lit(None)
        return _amount(cast(pl.Expr, value.expr), none, pl.lit(False), none, _NULL_FLOAT)

    # Comparisons

    def _compare(self, node: Mapping[str, Any]) -> _Val:
        op = node["op"]
        left, right = node["args"]
        a, b = self.expr(left), self.expr(right)
        if a.kind == "amount" or b.kind == "amount":
            return _scalar(self._amount_compare(op, a, b, left.get("unit"), right.get("unit")))
        if a.kind != "scalar" or b.kind != "scalar":
            raise PackError(f"rule {self.rule.id}: cannot compare a {a.kind} and a {b.kind}")
        if a.const is not _NONE and b.const is not _NONE:
            if a.const is None or b.const is None:
                return _lit(None)
            held = _COMPARE_OPS[op](a.const, b.const)
            return _lit(bool(held))
        return _scalar(_COMPARE_OPS[op](cast(pl.Expr, a.expr), cast(pl.Expr, b.expr)))

    _op_lt = _op_le = _op_gt = _op_ge = _op_eq = _op_ne = _compare

    def _amount_compare(
        self, op: str, a: _Val, b: _Val, left_unit: str | None, right_unit: str | None
    ) -> pl.Expr:
        """``compare_amounts`` over columns."""
        if a.kind == "amount" and b.kind == "amount":
            av, _, al, _, _ = a.amount
            bv, _, bl, _, _ = b.amount
            unit = pl.coalesce(_base_of(a), _base_of(b))
            x, y = _in_base(a, unit), _in_base(b, unit)
            result = _COMPARE_OPS[op](x, y)
            return pl.when(av.is_null() | bv.is_null() | al | bl).then(_NULL_BOOL).otherwise(result)
        if a.kind == "amount":
            x = _in_unit(a, right_unit) if right_unit else _in_base(a, _base_of(a))
            return _one_amount(a, _COMPARE_OPS[op](x, cast(pl.Expr, b.expr)), op in ("gt", "ge"))
        y = _in_unit(b, left_unit) if left_unit else _in_base(b, _base_of(b))
        return _one_amount(b, _COMPARE_OPS[op](cast(pl.Expr, a.expr), y), op in ("lt", "le"))

    def _op_between(self, node: Mapping[str, Any]) -> _Val:
        x, low, high = node["args"]
        v, lo, hi = self.expr(x), self.expr(low), self.expr(high)
        if any(item.kind == "amount" for item in (v, lo, hi)):
            at_least = self._amount_compare("ge", v, lo, x.get("unit"), low.get("unit"))
            below = self._amount_compare("lt", v, hi, x.get("unit"), high.get("unit"))
            return _scalar(at_least & below)
        ve, le, he = cast(pl.Expr, v.expr), cast(pl.Expr, lo.expr), cast(pl.Expr, hi.expr)
        return _scalar(
            pl.when(ve.is_null() | le.is_null() | he.is_null())
            .then(_NULL_BOOL)
            .otherwise((le <= ve) & (ve < he))
        )

    def _op_qualitative(self, node: Mapping[str, Any]) -> _Val:
        (x,) = self._args(node)
        found = x.col("qualitative")
        return _scalar(found == node["result"])

    def _op_in_set(self, node: Mapping[str, Any]) -> _Val:
        (arg,) = node["args"]
        x = self.expr(arg)
        name = node["set"]
        sets = self.scans.sets
        system = sets.system.get(name)
        if system is None:
            raise PackError(f"rule {self.rule.id}: unknown set {name!r}")
        if system == "route":
            routes = sorted(sets.routes[name])
            value = cast(pl.Expr, x.expr)
            return _scalar(pl.when(value.is_null()).then(_NULL_BOOL).otherwise(value.is_in(routes)))
        if x.kind == "order":
            atc = x.col("atc")
            found = self.scans.member(name, atc, x.col("route"))
            return _scalar(pl.when(atc.is_null()).then(_NULL_BOOL).otherwise(found))

        def member(series: pl.Series) -> pl.Series:  # once per distinct code
            table = {
                code: name in sets.matching(system, code) for code in series.drop_nulls().unique()
            }
            return series.replace_strict(table, default=None, return_dtype=pl.Boolean())

        return _scalar(cast(pl.Expr, x.expr).map_batches(member, return_dtype=pl.Boolean()))

    # Arithmetic

    def _arith(self, node: Mapping[str, Any]) -> _Val:
        op = node["op"]
        left, right = node["args"]
        a, b = self.expr(left), self.expr(right)
        if "time" in (left["type"], right["type"]):
            return self._time_arith(op, a, b, left["type"], right["type"])
        if a.kind == "amount" or b.kind == "amount":
            return self._amount_arith(op, a, b, left.get("unit"), right.get("unit"))
        x, y = cast(pl.Expr, a.expr), cast(pl.Expr, b.expr)
        if op == "add":
            return _scalar(x + y)
        if op == "sub":
            return _scalar(x - y)
        if op == "mul":
            return _scalar(x * y)
        return _scalar(pl.when(y == 0).then(_NULL_FLOAT).otherwise(x / y))

    _op_add = _op_sub = _op_mul = _op_div = _arith

    def _time_arith(self, op: str, a: _Val, b: _Val, left: str, right: str) -> _Val:
        x, y = cast(pl.Expr, a.expr), cast(pl.Expr, b.expr)
        if left == "time" and right == "time":
            return _scalar(_to_seconds(x - y) if op == "sub" else pl.lit(None, pl.Float64()))
        if left == "time":
            if op == "add":
                return _scalar(x + _seconds(y))
            if op == "sub":
                return _scalar(x - _seconds(y))
            return _scalar(pl.lit(None, pl.Datetime("us")))
        if op == "add":
            return _scalar(y + _seconds(x))
        return _scalar(pl.lit(None, pl.Datetime("us")))

    def _amount_arith(
        self, op: str, a: _Val, b: _Val, left_unit: str | None, right_unit: str | None
    ) -> _Val:
        """``amount_arithmetic`` over columns: exact amounts only."""
        amount = a if a.kind == "amount" else b
        unit = _base_of(amount)
        lower = pl.lit(False)
        missing = pl.lit(False)
        for side in (a, b):
            missing = missing | cast(pl.Expr, side.expr).is_null()
            if side.kind == "amount":
                lower = lower | cast(pl.Expr, side.lower)

        def as_float(side: _Val, static_unit: str | None, plain_as_amount: bool) -> pl.Expr:
            value = cast(pl.Expr, side.expr)
            if side.kind == "amount":
                return pl.when(unit.is_null()).then(value).otherwise(_in_base(side, unit))
            if plain_as_amount:
                base, factor = AMOUNT_UNITS.get(static_unit or "", (None, None))
                plain = _amount(
                    value, _unit_lit(static_unit), pl.lit(False), _unit_lit(base),
                    pl.lit(factor, pl.Float64()),
                )  # fmt: skip
                return pl.when(unit.is_null()).then(value).otherwise(_in_base(plain, unit))
            return value

        both = a.kind == "amount" and b.kind == "amount"
        plain_as_amount = op in ("add", "sub") or both
        x = as_float(a, left_unit, plain_as_amount)
        y = as_float(b, right_unit, plain_as_amount)
        bad = missing | lower | x.is_null() | y.is_null() | ((y == 0) & (op == "div"))
        if op == "div" and b.kind == "amount":
            if a.kind != "amount":
                return _scalar(_NULL_FLOAT)
            return _scalar(pl.when(bad).then(_NULL_FLOAT).otherwise(x / y))
        value = {"add": x + y, "sub": x - y, "mul": x * y, "div": x / y}[op]
        return _base_amount(
            pl.when(bad).then(_NULL_FLOAT).otherwise(value),
            pl.when(bad).then(_unit_lit(None)).otherwise(unit),
            pl.lit(False),
        )

    def _op_neg(self, node: Mapping[str, Any]) -> _Val:
        (x,) = self._args(node)
        if x.kind == "amount":
            value, unit, lower, base, factor = x.amount
            negated = pl.when(lower).then(_NULL_FLOAT).otherwise(-value)
            return _amount(negated, unit, pl.lit(False), base, factor)
        return _scalar(-cast(pl.Expr, x.expr))

    # Drug queries

    def _op_any_drug(self, node: Mapping[str, Any]) -> _Val:
        count = self._drug_count(node)
        return _scalar(count > 0)

    def _op_count_drugs(self, node: Mapping[str, Any]) -> _Val:
        return _scalar(self._drug_count(node))

    def _drug_count(self, node: Mapping[str, Any]) -> pl.Expr:
        routes = expand_routes(node.get("routes"), self.scans.sets)
        table = self.scans.drug_query(node.get("set"), routes)
        column = self.scans.name("drugs")
        self._join_patient(table, {"n": column})
        return pl.col(column).fill_null(0.0)

    def _op_daily_dose(self, node: Mapping[str, Any]) -> _Val:
        return self._patient_amount(self.scans.daily_dose(node["set"]), None)

    def _op_mme(self, node: Mapping[str, Any]) -> _Val:
        return self._patient_amount(self.scans.mme(), "MME")

    def _patient_amount(self, table: pl.LazyFrame, empty_unit: str | None) -> _Val:
        stem = self.scans.name("amount")
        marked = table.with_columns(pl.lit(True).alias("__has"))
        self._join_patient(
            marked,
            {"value": f"{stem}.value", "unit": f"{stem}.unit", "lower": f"{stem}.lower",
             "__has": f"{stem}.has"},
        )  # fmt: skip
        has = pl.col(f"{stem}.has").is_not_null()
        return _base_amount(
            pl.when(has).then(pl.col(f"{stem}.value")).otherwise(pl.lit(0.0)),
            pl.when(has).then(pl.col(f"{stem}.unit")).otherwise(_unit_lit(empty_unit)),
            pl.when(has).then(pl.col(f"{stem}.lower")).otherwise(pl.lit(False)),
        )

    # Windows

    def _window(self, window: Mapping[str, Any] | None) -> _Bounds:
        """``_build_window`` over columns; constant when every part is."""
        at = self.at
        if window is None:
            return _Bounds(_time(None), self.scans.at_expr, pl.lit(True),
                           pl.lit(True), constant=(None, at, True))  # fmt: skip
        parts = {k: self.expr(v) for k, v in window.items() if v}
        if all(p.const is not _NONE for p in parts.values()):
            bounds = _constant_bounds({k: p.const for k, p in parts.items()}, at)
            if bounds is None:
                return _Bounds(_NULL_FLOAT, _NULL_FLOAT, _NULL_BOOL, pl.lit(False), unknown=True)
            return _Bounds(
                _time(bounds[0]), _time(bounds[1]),
                pl.lit(bounds[2]), pl.lit(True), constant=bounds,
            )  # fmt: skip
        known = pl.lit(True)
        end: pl.Expr = self.scans.at_expr
        inclusive: pl.Expr = pl.lit(True)
        nominal = end
        if "before" in parts:
            b = cast(pl.Expr, parts["before"].expr)
            known = known & b.is_not_null()
            nominal = b
            earlier = b <= end
            end = pl.when(earlier).then(b).otherwise(end)
            inclusive = ~earlier
        start: pl.Expr | None = None
        if "within" in parts:
            w = cast(pl.Expr, parts["within"].expr)
            known = known & w.is_not_null()
            start = nominal - _seconds(w)
        if "since" in parts:
            s = cast(pl.Expr, parts["since"].expr)
            known = known & s.is_not_null()
            start = s if start is None else pl.max_horizontal(start, s)
        return _Bounds(
            start if start is not None else pl.lit(None, pl.Datetime("us")),
            end,
            inclusive,
            known.fill_null(False),
        )

    def _rows_in_window(self, table: pl.LazyFrame, time: str, bounds: _Bounds) -> pl.LazyFrame:
        """(row, facts of the row's patient inside the row's window) — the join for windows
        that depend on the row (a line's start, another result's time)."""
        rows = self.frame.select(
            "__row",
            "patient_id",
            bounds.start.alias("__start"),
            bounds.end.alias("__end"),
            bounds.inclusive.alias("__incl"),
            bounds.known.alias("__known"),
        ).filter(pl.col("__known"))
        moment = pl.col(time)
        inside = (
            moment.is_not_null()
            & (pl.col("__start").is_null() | (moment >= pl.col("__start")))
            & pl.when(pl.col("__incl"))
            .then(moment <= pl.col("__end"))
            .otherwise(moment < pl.col("__end"))
        )
        return rows.join(table, on="patient_id").filter(inside)

    # Labs and observations

    def _op_lab(self, node: Mapping[str, Any]) -> _Val:
        return self._lab(node["fact_kind"], node["concept"], node["select"], node.get("window"))

    def _lab(
        self, fact_kind: str, concept: str, select: str, window: Mapping[str, Any] | None
    ) -> _Val:
        bounds = self._window(window)
        prefix = self.scans.name(f"{concept}_")
        columns = {f: f"{prefix}.{f}" for f in _LAB_FIELDS}
        if bounds.unknown:
            self.frame = self.frame.with_columns(
                [pl.lit(None, _LAB_DTYPES[f]).alias(c) for f, c in columns.items()]
            )
            return _Val("lab", prefix=prefix)
        series = self.scans.series(fact_kind, concept)
        if select in ("latest", "first"):
            candidates = series.filter(
                pl.col("value").is_not_null() | pl.col("qualitative").is_not_null()
            )
        else:
            candidates = series.filter(pl.col("value").is_not_null())
        if bounds.constant is not None:
            start, end, inclusive = bounds.constant
            key = ("lab", fact_kind, concept, select, bounds.constant)

            def build() -> pl.LazyFrame:
                inside = _constant_filter(pl.col("time"), start, end, inclusive)
                return _pick(candidates.filter(inside), select, ["patient_id"])

            table = self.scans.cached(key, build)
            self._join_patient(table, columns)
        else:
            joined = self._rows_in_window(candidates, "time", bounds)
            picked = _pick(joined, select, ["__row"])
            self.frame = self.frame.join(
                picked.select("__row", *[pl.col(k).alias(v) for k, v in columns.items()]),
                on="__row",
                how="left",
            )
        return _Val("lab", prefix=prefix)

    def _count(self, node: Mapping[str, Any]) -> tuple[pl.Expr, pl.Expr]:
        """The number of results in the window (and whether the window is known)."""
        bounds = self._window(node.get("window"))
        if bounds.unknown:
            return _NULL_FLOAT, pl.lit(False)
        series = self.scans.series(node["fact_kind"], node["concept"])
        column = self.scans.name("count")
        if bounds.constant is not None:
            start, end, inclusive = bounds.constant
            key = ("count", node["fact_kind"], node["concept"], bounds.constant)

            def build() -> pl.LazyFrame:
                inside = _constant_filter(pl.col("time"), start, end, inclusive)
                return series.filter(inside).group_by("patient_id").agg(pl.len().alias("n"))

            self._join_patient(self.scans.cached(key, build), {"n": column})
            return pl.col(column).fill_null(0).cast(pl.Float64()), pl.lit(True)
        counted = (
            self._rows_in_window(series, "time", bounds)
            .group_by("__row")
            .agg(pl.len().alias(column))
        )
        self.frame = self.frame.join(counted, on="__row", how="left")
        return pl.col(column).fill_null(0).cast(pl.Float64()), bounds.known

    def _op_lab_count(self, node: Mapping[str, Any]) -> _Val:
        count, known = self._count(node)
        return _scalar(pl.when(known).then(count).otherwise(_NULL_FLOAT))

    def _op_lab_none(self, node: Mapping[str, Any]) -> _Val:
        count, known = self._count(node)
        return _scalar(pl.when(known).then(count == 0).otherwise(_NULL_BOOL))

    def _op_weight(self, node: Mapping[str, Any]) -> _Val:
        return _scalar(
            self._lab("observation", "weight", "latest", node.get("window")).col("value")
        )

    def _op_height(self, node: Mapping[str, Any]) -> _Val:
        return _scalar(
            self._lab("observation", "height", "latest", node.get("window")).col("value")
        )

    # Patient

    def _patient(self) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
        """(birth date, sex, age in completed years) columns, joined once per rule."""
        if not self._patient_joined:
            self._join_patient(
                self.scans.age_frame(),
                {"birth_date": "__patient.birth", "sex": "__patient.sex", "age": "__patient.age"},
            )
            self._patient_joined = True
        return pl.col("__patient.birth"), pl.col("__patient.sex"), pl.col("__patient.age")

    def _op_age(self, node: Mapping[str, Any]) -> _Val:
        born, _, age = self._patient()
        return _scalar(pl.when(born.is_null()).then(_NULL_FLOAT).otherwise(age.cast(pl.Float64())))

    def _op_sex(self, node: Mapping[str, Any]) -> _Val:
        _, sex, _ = self._patient()
        return _scalar(sex)

    def _renal_inputs(self) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
        """(age as float, sex F/M or null, female) for the renal formulas."""
        born, sex, age = self._patient()
        fm = pl.when(born.is_not_null() & sex.is_in(["F", "M"])).then(sex)
        return age.cast(pl.Float64()), fm.otherwise(pl.lit(None, pl.String())), sex == "F"

    def _op_clearance(self, node: Mapping[str, Any]) -> _Val:
        """``clearance_value``: Cockcroft-Gault from the latest creatinine in the window and
        the latest weight ever recorded."""
        creatinine = self._lab("lab", "creatinine", "latest", node.get("window")).col("value")
        weight = self._lab("observation", "weight", "latest", None).col("value")
        age, sex, female = self._renal_inputs()
        factor = pl.when(female).then(pl.lit(1.04)).otherwise(pl.lit(1.23))
        value = (pl.lit(140.0) - age) * weight * factor / creatinine
        return _scalar(
            pl.when(sex.is_null() | (creatinine <= 0) | weight.is_null())
            .then(_NULL_FLOAT)
            .otherwise(value)
        )

    def _op_egfr(self, node: Mapping[str, Any]) -> _Val:
        """The latest eGFR reported in the window, unless a later creatinine gives a CKD-EPI
        2021 value (``expressions._op_egfr``); else CKD-EPI 2021 from the creatinine."""
        window = node.get("window")
        reported = self._lab("lab", "egfr", "latest", window)
        latest_creatinine = self._lab("lab", "creatinine", "latest", window)
        creatinine = latest_creatinine.col("value")
        age, sex, female = self._renal_inputs()
        kappa = pl.when(female).then(pl.lit(0.7)).otherwise(pl.lit(0.9))
        alpha = pl.when(female).then(pl.lit(-0.241)).otherwise(pl.lit(-0.302))
        ratio = creatinine / CREATININE_UMOL_PER_MG_DL / kappa
        egfr = (
            pl.lit(142.0)
            * pl.min_horizontal(ratio, pl.lit(1.0)).pow(alpha)
            * pl.max_horizontal(ratio, pl.lit(1.0)).pow(-1.200)
            * pl.lit(0.9938).pow(age)
        )
        computed = (
            pl.when(sex.is_null() | creatinine.is_null() | (creatinine <= 0))
            .then(_NULL_FLOAT)
            .when(female)
            .then(egfr * 1.012)
            .otherwise(egfr)
        )
        later = computed.is_not_null() & (latest_creatinine.col("time") > reported.col("time"))
        return _scalar(
            pl.when(reported.col("fact_id").is_not_null() & ~later.fill_null(False))
            .then(reported.col("value"))
            .otherwise(computed)
        )

    # Clinical queries

    def _op_has_condition(self, node: Mapping[str, Any]) -> _Val:
        sets = self.scans.sets
        name = node["set"]
        conditions = self.scans.frames["condition"]
        codes = conditions.get_column("icd10").drop_nulls().unique().to_list()
        members = [c for c in codes if name in sets.matching("icd10", c)]
        at = self.scans.at_expr
        found = conditions.lazy().filter(
            pl.col("icd10").is_in(members) & (pl.col("onset").is_null() | (pl.col("onset") <= at))
        )
        if node.get("active_only"):
            found = found.filter(pl.col("clinical_status") == "active")
        window = node.get("window")
        if window is None:
            column = self.scans.name("cond")
            table = found.group_by("patient_id").agg(pl.len().alias("n"))
            self._join_patient(table, {"n": column})
            return _scalar(pl.col(column).is_not_null())
        return self._exists_in_window(found, "onset", self._window(window))

    def _exists_in_window(self, table: pl.LazyFrame, time: str, bounds: _Bounds) -> _Val:
        if bounds.unknown:
            return _lit(None)
        column = self.scans.name("exists")
        if bounds.constant is not None:
            start, end, inclusive = bounds.constant
            inside = _constant_filter(pl.col(time), start, end, inclusive)
            self._join_patient(
                table.filter(inside).group_by("patient_id").agg(pl.len().alias("n")),
                {"n": column},
            )
            return _scalar(pl.col(column).is_not_null())
        counted = (
            self._rows_in_window(table, time, bounds).group_by("__row").agg(pl.len().alias(column))
        )
        self.frame = self.frame.join(counted, on="__row", how="left")
        return _scalar(
            pl.when(bounds.known).then(pl.col(column).is_not_null()).otherwise(_NULL_BOOL)
        )

    def _op_has_pregnancy(self, node: Mapping[str, Any]) -> _Val:
        bounds = self._window(node.get("window"))
        if bounds.unknown:
            return _lit(None)
        pregnancies = (
            self.scans.frames["pregnancy"]
            .lazy()
            .select("patient_id", "fact_id", "status", "recorded")
        )
        column = self.scans.name("pregnant")
        if bounds.constant is not None:
            start, end, inclusive = bounds.constant
            inside = _constant_filter(pl.col("recorded"), start, end, inclusive)
            latest = (
                pregnancies.filter(inside)
                .sort("patient_id", "recorded", "fact_id")
                .group_by("patient_id", maintain_order=True)
                .agg(pl.col("status").last())
            )
            self._join_patient(latest, {"status": column})
            return _scalar(pl.col(column).is_not_null() & (pl.col(column) == "pregnant"))
        latest = (
            self._rows_in_window(pregnancies, "recorded", bounds)
            .sort("__row", "recorded", "fact_id")
            .group_by("__row", maintain_order=True)
            .agg(pl.col("status").last().alias(column))
        )
        self.frame = self.frame.join(latest, on="__row", how="left")
        found = pl.col(column).is_not_null() & (pl.col(column) == "pregnant")
        return _scalar(pl.when(bounds.known).then(found).otherwise(_NULL_BOOL))

    def _op_has_allergy(self, node: Mapping[str, Any]) -> _Val:
        (x,) = self._args(node)
        if x.kind != "order":
            raise PackError(f"rule {self.rule.id}: allergy to a {x.kind}")
        at = self.scans.at_expr
        prefixes = (
            self.scans.frames["allergy"]
            .lazy()
            .filter(
                pl.col("clinical_status").is_in(["active", "unknown"])
                & (pl.col("recorded").is_null() | (pl.col("recorded") <= at))
            )
            .select("patient_id", pl.col("atc").alias("__prefix"))
            .explode("__prefix")
            .filter(pl.col("__prefix").is_not_null() & (pl.col("__prefix") != ""))
        )
        atc = x.col("atc")
        column = self.scans.name("allergic")
        matched = (
            self.frame.select("__row", "patient_id", atc.alias("__atc"))
            .filter(pl.col("__atc").is_not_null() & (pl.col("__atc") != ""))
            .join(prefixes, on="patient_id")
            .filter(pl.col("__atc").str.starts_with(pl.col("__prefix")))
            .group_by("__row")
            .agg(pl.len().alias(column))
        )
        self.frame = self.frame.join(matched, on="__row", how="left")
        return _scalar(pl.col(column).is_not_null())


_LAB_DTYPES: dict[str, pl.DataType] = {
    "fact_id": pl.String(),
    "value": pl.Float64(),
    "unit": pl.String(),
    "time": pl.Datetime("us"),
    "reference_high": pl.Float64(),
    "reference_low": pl.Float64(),
    "qualitative": pl.String(),
}


def _constant_bounds(
    parts: Mapping[str, Any], at: datetime
) -> tuple[datetime | None, datetime, bool] | None:
    """``_build_window`` on constant parts (None when a part is unknown)."""
    end, inclusive = at, True
    nominal = end
    if "before" in parts:
        b = parts["before"]
        if b is None:
            return None
        nominal = b
        if b <= end:
            end, inclusive = b, False
    start: datetime | None = None
    if "within" in parts:
        w = parts["within"]
        if w is None:
            return None
        start = nominal - timedelta(seconds=float(w))
    if "since" in parts:
        s = parts["since"]
        if s is None:
            return None
        start = s if start is None else max(start, s)
    return start, end, inclusive


def _constant_filter(
    moment: pl.Expr, start: datetime | None, end: datetime, inclusive: bool
) -> pl.Expr:
    last = _time(end)
    inside = moment.is_not_null() & (moment <= last if inclusive else moment < last)
    if start is not None:
        inside = inside & (moment >= _time(start))
    return inside


def _pick(table: pl.LazyFrame, select: str, group: list[str]) -> pl.LazyFrame:
    """The chosen result per group, as the closures choose: latest/first in (time, fact id)
    order; min/max by value, ties to the latest."""
    order = ["time", "fact_id"]
    if select == "latest":
        ranked = table.sort([*group, *order], descending=[False] * len(group) + [True, True])
    elif select == "first":
        ranked = table.sort([*group, *order])
    else:
        ranked = table.sort(
            [*group, "value", *order],
            descending=[False] * len(group) + [select == "max", True, True],
        )
    return ranked.unique(group, keep="first", maintain_order=True)
