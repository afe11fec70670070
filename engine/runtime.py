"""What the pack's closures read at run time: the evaluation context and the queries.

The ``Context`` is one patient as of one time, with the caches every rule evaluated on it
shares; ``CodeSets`` answers set membership (ATC and ICD-10 by prefix, routes by equality).
The queries (lab series by bisection, clinical queries, derived values) record the evidence
they read when the context is tracing. The closure builder (``vigie.engine.expressions``) builds
closures over these; the driver (``vigie.engine.evaluate``) creates the context and runs the rules.

>>> sets = CodeSets({"acei": {"system": "atc", "terms": [{"include": ["C09A"], "exclude": []}]},
...     "oral": {"system": "route", "terms": [{"include": ["oral", "po"]}]}})
>>> sorted(sets.atc("C09AA05")), sets.atc("C03CA01"), sorted(sets.routes["oral"])
(['acei'], frozenset(), ['oral', 'po'])
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from operator import attrgetter
from typing import Any, TypeVar

from vigie.engine.alerts import Evidence, Threshold
from vigie.engine.derived import (
    Amount,
    IngredientDose,
    age_in_years,
    ckd_epi_2021,
    cockcroft_gault,
    ingredient_doses,
    is_combination_code,
    order_mme,
    total_daily_dose,
)
from vigie.engine.errors import PackError
from vigie.engine.factset import PatientRecord
from vigie.facts import (
    Allergy,
    Condition,
    LabResult,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Sex,
)

__all__ = [
    "MEASURE_ATTRS",
    "ORDER_ATTRS",
    "QUALITATIVE_TEXT",
    "Closure",
    "CodeSets",
    "Context",
    "Measure",
    "WindowBounds",
    "WindowFn",
    "age_value",
    "amount_evidence",
    "clearance_value",
    "derived_evidence",
    "egfr_computed",
    "fact_evidence",
    "has_allergy",
    "has_condition",
    "has_pregnancy",
    "is_active",
    "lab_count",
    "lab_select",
    "line_amount",
    "line_daily_dose",
    "line_evidence",
    "line_label",
    "measure_evidence",
    "opioid_mme",
    "patient_evidence",
    "patient_input",
    "set_daily_dose",
]

Closure = Callable[["Context"], Any]
Measure = LabResult | Observation
_UNSET: Any = object()  # not in a context's caches (None is a result: no lab in the window)
WindowBounds = tuple[datetime | None, datetime, bool]  # start (incl.), end, end inclusive?
WindowFn = Callable[["Context"], WindowBounds | None]


# Sets --------------------------------------------------------------------------------------------


# A term's entry for one included code: set name, exclusions, routes (None: any route).
_Entry = tuple[str, tuple[str, ...], frozenset[str] | None]


class CodeSets:
    """Prefix membership for ``atc`` and ``icd10`` sets, equality for ``route`` sets.

    A code is in a set when one of its terms includes a prefix of the code and excludes none,
    or lists the code itself as ``exact``. A term with ``routes`` leaves out a drug line whose
    route is known and not one of them (a line without route, or a bare code, is kept).
    ``matching(code, route)`` gives every set of the system containing the code, cached.
    """

    def __init__(self, sets: Mapping[str, Mapping[str, Any]]) -> None:
        self.system: dict[str, str] = {}
        self.routes: dict[str, frozenset[str]] = {}
        self._prefixes: dict[str, dict[str, list[_Entry]]] = {"atc": {}, "icd10": {}}
        self._exact: dict[str, dict[str, list[_Entry]]] = {"atc": {}, "icd10": {}}
        self._cache: dict[str, dict[tuple[str, str | None], frozenset[str]]] = {
            "atc": {},
            "icd10": {},
        }
        for name, spec in sets.items():
            system = spec["system"]
            self.system[name] = system
            if system == "route":
                self.routes[name] = frozenset(r for t in spec["terms"] for r in t["include"])
            elif system in self._prefixes:
                for term in spec["terms"]:
                    excludes = tuple(term.get("exclude") or ())
                    routes = term.get("routes")
                    entry = (name, excludes, None if routes is None else frozenset(routes))
                    for prefix in term["include"]:
                        self._prefixes[system].setdefault(prefix, []).append(entry)
                    for code in term.get("exact") or ():
                        self._exact[system].setdefault(code, []).append((name, (), entry[2]))
            else:
                raise PackError(f"set {name}: unknown system {system!r}")

    def matching(self, system: str, code: str, route: str | None = None) -> frozenset[str]:
        cache = self._cache[system]
        found = cache.get((code, route))
        if found is None:
            found = cache[(code, route)] = self._match(system, code, route)
        return found

    def _match(self, system: str, code: str, route: str | None) -> frozenset[str]:
        prefixes = self._prefixes[system]
        names: set[str] = set()
        for end in range(1, len(code) + 1):
            for name, excludes, routes in prefixes.get(code[:end], ()):
                if not any(code.startswith(e) for e in excludes) and _route_ok(route, routes):
                    names.add(name)
        for name, _, routes in self._exact[system].get(code, ()):
            if _route_ok(route, routes):
                names.add(name)
        return frozenset(names)

    def atc(self, code: str | None, route: str | None = None) -> frozenset[str]:
        """The ATC sets holding a code (given by ``route``, when known)."""
        return self.matching("atc", code, route) if code else frozenset()


def _route_ok(route: str | None, routes: frozenset[str] | None) -> bool:
    return routes is None or route is None or route in routes


_F = TypeVar("_F")
_B = TypeVar("_B")
# Evidence kept per context (the live store: per patient): past this many entries the cache
# starts again, which bounds it for a patient followed for months (an alert quotes a handful).
_CACHE_LIMIT = 512


# Evaluation context ------------------------------------------------------------------------------


class Context:
    """One patient as of one time, with the caches shared by every rule evaluated on it.

    ``bound`` holds the current combination of drug lines, ``values`` the value bindings that do
    not depend on it (kept across combinations), ``combo_values`` those that do. ``trace``, when
    not None, collects the evidence each query reads (only while explaining a firing rule), and
    ``thresholds`` the numeric comparisons against a parameter or constant that held.
    ``amounts`` keeps what only the active lines decide (a set's daily dose, the MME), for as
    long as they are the same (the live store keeps it with them).
    ``evidence`` keeps the evidence (and thresholds) built while explaining, by what they were
    built from (``cached``, ``derived``): a fact read by several alerts, or by the same alert
    explained again, is described once (the live store keeps it with the patient). ``shared``
    keeps what every rule selects alike (the latest creatinine within 48 h...), for the rules
    evaluated on this context.
    """

    __slots__ = (
        "_active",
        "_line_sets",
        "_lines",
        "amounts",
        "as_of",
        "bound",
        "combo_values",
        "evidence",
        "params",
        "record",
        "sets",
        "shared",
        "thresholds",
        "trace",
        "values",
    )

    def __init__(
        self, record: PatientRecord, as_of: datetime, sets: CodeSets, params: Mapping[str, float]
    ) -> None:
        self.record = record
        self.as_of = as_of
        self.sets = sets
        self.params = params
        self.trace: list[Evidence] | None = None
        self.thresholds: list[Threshold] | None = None  # set with ``trace``, while explaining
        self.bound: dict[str, MedicationOrder] = {}
        self.values: dict[str, Any] = {}
        self.combo_values: dict[str, Any] = {}
        self._active: list[MedicationOrder] | None = None
        self._line_sets: list[tuple[MedicationOrder, frozenset[str]]] | None = None
        self._lines: dict[tuple[str | None, frozenset[str] | None], list[MedicationOrder]] = {}
        self.amounts: dict[Hashable, Any] = {}
        self.evidence: dict[tuple[Any, ...], tuple[Any, Any]] = {}
        self.shared: dict[Hashable, Any] = {}

    def active_lines(self) -> list[MedicationOrder]:
        """Active order lines, in a stable order (order id) so that results never depend on
        the order in which facts arrived."""
        if self._active is None:
            at = self.as_of
            self._active = sorted(
                (o for o in self.record.orders if is_active(o, at)), key=_line_key
            )
        return self._active

    def line_sets(self) -> list[tuple[MedicationOrder, frozenset[str]]]:
        """The active lines with the sets each is in (by its ATC code and route)."""
        if self._line_sets is None:
            atc = self.sets.atc
            self._line_sets = [(o, atc(o.atc, o.route)) for o in self.active_lines()]
        return self._line_sets

    def lines(self, set_name: str | None, routes: frozenset[str] | None) -> list[MedicationOrder]:
        """Active lines whose ATC is in the set (any line: None) and route in ``routes``."""
        key = (set_name, routes)
        found = self._lines.get(key)
        if found is None:
            found = [
                o
                for o, names in self.line_sets()
                if (set_name is None or set_name in names)
                and (routes is None or (o.route is not None and o.route in routes))
            ]
            self._lines[key] = found
        return found

    def active_set_names(self) -> set[str]:
        names: set[str] = set()
        atc = self.sets.atc
        for line, own in self.line_sets():
            names.update(own)
            for ingredient in line.ingredients:  # `daily dose of` counts a set's ingredients
                names.update(atc(ingredient.atc, line.route))
        return names

    def note(self, evidence: Evidence) -> None:
        if self.trace is not None:
            self.trace.append(evidence)

    def cached(self, build: Callable[[str, _F], _B], name: str, fact: _F) -> _B:
        """``build(name, fact)``, built once per (build, name, fact object): evidence and
        thresholds are frozen, and a fact object is never changed (a new version is a new
        object). The entry keeps the fact, so that its ``id`` is not reused meanwhile."""
        cache = self.evidence
        key = (build, name, id(fact))
        hit = cache.get(key)
        if hit is not None and hit[0] is fact:
            kept: _B = hit[1]  # (an annotation, not ``cast``: no call on this path)
            return kept
        made = build(name, fact)
        self.keep(key, fact, made)
        return made

    def derived(
        self,
        name: str,
        code: str,
        value: float | str | None,
        unit: str | None,
        inputs: Sequence[Evidence],
        time: datetime | None = None,
    ) -> Evidence:
        """``derived_evidence``, built once per content and input objects (the entry's evidence
        keeps its inputs, so that their ``id``s are not reused meanwhile)."""
        cache = self.evidence
        key = ("derived", name, code, value, unit, time, *map(id, inputs))
        hit = cache.get(key)
        if hit is not None:
            kept: Evidence = hit[1]
            return kept
        made = derived_evidence(name, code, value, unit, inputs, time)
        self.keep(key, None, made)
        return made

    def keep(self, key: tuple[Any, ...], fact: Any, made: Any) -> None:
        """Remember ``made`` (built from ``fact``, kept alive with it) under ``key``."""
        if len(self.evidence) >= _CACHE_LIMIT:
            self.evidence.clear()
        self.evidence[key] = (fact, made)


# A line that ended (completed, stopped) was active over its period: exports and replays see the
# final status, so the period decides. Other statuses (on-hold, cancelled, draft) never are.
_ENDED = frozenset({"completed", "stopped"})


def is_active(line: MedicationOrder, at: datetime) -> bool:
    """Whether an order line is active at ``at``: started (or no start), not yet ended (or no
    end), and either ``active`` or ``completed``/``stopped`` with a known end after ``at``."""
    if line.start is not None and line.start > at:
        return False
    if line.end is not None:
        return line.end > at and (line.status == "active" or line.status in _ENDED)
    return line.status == "active"


def _line_key(line: MedicationOrder) -> tuple[str, str]:
    return (line.order_id, line.fact_id)


def line_label(line: MedicationOrder) -> str | None:
    return line.label or line.drug.display or line.drug.code


_time_of: Callable[[Measure], datetime] = attrgetter("time")  # bisection keys, in C


# Evidence ----------------------------------------------------------------------------------------


QUALITATIVE_TEXT = {"positive": "positif", "negative": "négatif"}
"""A qualitative result as an alert message shows it (messages are in French)."""


def measure_evidence(name: str, fact: Measure) -> Evidence:
    """A lab or observation; a qualitative result shows ``positive`` or ``negative`` as value."""
    value: float | str | None = fact.value
    if value is None and isinstance(fact, LabResult):
        value = fact.qualitative
    return Evidence.model_construct(
        name=name,
        kind=fact.kind,
        code=fact.concept,
        value=value,
        unit=fact.unit,
        time=fact.time,
        fact_id=fact.fact_id,
        source=fact.source,
        inputs=(),
    )


def line_evidence(name: str, line: MedicationOrder) -> Evidence:
    return Evidence.model_construct(
        name=name,
        kind=line.kind,
        code=line.atc,
        value=line_label(line),
        unit=None,
        time=line.start,
        fact_id=line.fact_id,
        source=line.source,
        inputs=(),
    )


def fact_evidence(name: str, fact: Patient | Condition | Allergy | Pregnancy) -> Evidence:
    code: str | None
    value: str | None
    time: datetime | None = None
    if isinstance(fact, Patient):
        code, value = "birth_date", fact.birth_date.isoformat() if fact.birth_date else None
    elif isinstance(fact, Condition):
        code, value, time = fact.icd10, fact.code.display, fact.onset
    elif isinstance(fact, Allergy):
        code, value, time = ",".join(fact.atc), fact.substance.display, fact.recorded
    else:
        code, value, time = "pregnancy", fact.status, fact.recorded
    return Evidence.model_construct(
        name=name,
        kind=fact.kind,
        code=code,
        value=value,
        unit=None,
        time=time,
        fact_id=fact.fact_id,
        source=fact.source,
        inputs=(),
    )


def derived_evidence(
    name: str,
    code: str,
    value: float | str | None,
    unit: str | None,
    inputs: Iterable[Evidence],
    time: datetime | None = None,
) -> Evidence:
    return Evidence.model_construct(
        name=name,
        kind="derived",
        code=code,
        value=value,
        unit=unit,
        time=time,
        fact_id=None,
        source=None,
        inputs=tuple(inputs),
    )


# Attributes


def line_daily_dose(line: MedicationOrder) -> float | None:
    if line.daily_dose is not None:
        return line.daily_dose
    if line.dose is not None and line.frequency_per_day is not None:
        return line.dose * line.frequency_per_day
    return None


def line_amount(value: float | None, unit: str | None) -> Amount | None:
    return None if value is None or unit is None else Amount(value, unit)


def _duration(ctx: Context, line: MedicationOrder) -> float | None:
    return None if line.start is None else (ctx.as_of - line.start).total_seconds()


ORDER_ATTRS: dict[str, Callable[[Context, Any], Any]] = {
    "start": lambda ctx, o: o.start,
    "end": lambda ctx, o: o.end,
    "duration": _duration,
    "route": lambda ctx, o: o.route,
    "label": lambda ctx, o: line_label(o),
    "order_id": lambda ctx, o: o.order_id,
    "atc": lambda ctx, o: o.atc,
    "dose": lambda ctx, o: line_amount(o.dose, o.dose_unit),
    "daily_dose": lambda ctx, o: line_amount(line_daily_dose(o), o.dose_unit),
    "frequency": lambda ctx, o: o.frequency_per_day,
}
MEASURE_ATTRS: dict[str, Callable[[Context, Any], Any]] = {
    "value": lambda ctx, f: f.value,
    "time": lambda ctx, f: f.time,
    "high": lambda ctx, f: getattr(f, "reference_high", None),
    "low": lambda ctx, f: getattr(f, "reference_low", None),
    "unit": lambda ctx, f: f.unit,
}


def amount_evidence(
    name: str, code: str, total: Amount | None, lines: Iterable[MedicationOrder]
) -> Evidence:
    value = None if total is None else total.value
    unit = None if total is None else (total.unit or "mg")
    if total is not None and total.lower_bound:
        code += " (lower bound)"
    return derived_evidence(name, code, value, unit, [line_evidence(name, o) for o in lines])


# Per-ingredient amounts of combination products


def _strength(dose: IngredientDose) -> str:
    i = dose.ingredient
    if i.amount is None:
        return f"{i.name} (strength unknown)"
    per = f"{i.per_amount:g} {i.per_unit}" if i.per_unit else "unit"
    return f"{i.name} {i.amount:g} {i.unit}/{per}"


def ingredient_evidence(
    ctx: Context, name: str, line: MedicationOrder, dose: IngredientDose
) -> Evidence:
    """An ingredient's amount a day on a combination line: strength, where the composition came
    from and how the line's dose reached it, with the line as input."""
    code = f"{_strength(dose)} [{dose.ingredient.source or 'composition'}]: {dose.reading}"
    inputs = [ctx.cached(line_evidence, name, line)]
    return ctx.derived(name, code, dose.per_day, dose.unit, inputs)


def unknown_composition_evidence(ctx: Context, name: str, line: MedicationOrder) -> Evidence:
    code = "composition unknown: the dose of a combination product is credited to no substance"
    return ctx.derived(name, code, None, None, [ctx.cached(line_evidence, name, line)])


def set_daily_dose(ctx: Context, set_name: str, name: str) -> Amount | None:
    """``daily dose of SET``: Σ the daily amounts of the set's substances over active lines.

    A single-substance line in the set counts its daily dose. A combination line counts the
    amounts of those of its ingredients whose ATC is in the set (``ingredient_doses``); when
    none is, or its composition is unknown (a combination code without ingredients), the line
    makes the sum a lower bound and the evidence says so.
    """
    tracing = ctx.trace is not None
    if not tracing:
        kept: Amount | None = ctx.amounts.get(set_name, _UNSET)
        if kept is not _UNSET:
            return kept
    atc = ctx.sets.atc
    amounts: list[tuple[float | None, str | None]] = []
    inputs: list[Evidence] = []
    for line, own in ctx.line_sets():
        in_set = set_name in own
        if line.ingredients:
            doses = [
                d
                for d in ingredient_doses(
                    line.ingredients, line.dose, line.dose_unit, line_daily_dose(line)
                )
                if set_name in atc(d.ingredient.atc, line.route)
            ]
            if not doses and in_set:
                amounts.append((None, None))
                if tracing:
                    code = "no ingredient of the composition is in the set"
                    line_input = [ctx.cached(line_evidence, name, line)]
                    inputs.append(ctx.derived(name, code, None, None, line_input))
            for found in doses:
                amounts.append((found.per_day, found.unit))
                if tracing:
                    inputs.append(ingredient_evidence(ctx, name, line, found))
        elif in_set and is_combination_code(line.atc):
            amounts.append((None, None))
            if tracing:
                inputs.append(unknown_composition_evidence(ctx, name, line))
        elif in_set:
            amounts.append((line_daily_dose(line), line.dose_unit))
            if tracing:
                inputs.append(ctx.cached(line_evidence, name, line))
    total = total_daily_dose(amounts)
    if ctx.trace is not None:
        ctx.trace.append(_total_evidence(ctx, name, "daily_dose", total, inputs))
    else:
        ctx.amounts[set_name] = total
    return total


_MME = ("mme",)  # ``Context.amounts``' key of the MME (a set's daily dose: its name)


def opioid_mme(ctx: Context, name: str) -> Amount:
    """``mme``: Σ MME per day over the active opioid lines, a combination's opioid ingredients
    counted by their own amounts (``order_mme``)."""
    if ctx.trace is None:
        kept: Amount | None = ctx.amounts.get(_MME, _UNSET)
        if kept is not _UNSET:
            return kept  # type: ignore[return-value]  # an Amount, kept by this function
    total = 0.0
    lower_bound = False
    inputs: list[Evidence] = []
    for line in ctx.active_lines():
        opioid, mme, doses = order_mme(
            line.atc,
            line.route,
            line.dose,
            line.dose_unit,
            line_daily_dose(line),
            line.ingredients,
        )
        if not opioid:
            continue
        if mme is None:
            lower_bound = True
        else:
            total += mme
        if ctx.trace is not None:
            if doses:
                inputs.extend(ingredient_evidence(ctx, name, line, d) for d in doses)
            elif not line.ingredients and is_combination_code(line.atc):
                inputs.append(unknown_composition_evidence(ctx, name, line))
            else:
                inputs.append(ctx.cached(line_evidence, name, line))
    amount = Amount(total, "MME", lower_bound)
    if ctx.trace is not None:
        ctx.trace.append(_total_evidence(ctx, name, "mme", amount, inputs))
    else:
        ctx.amounts[_MME] = amount
    return amount


def _total_evidence(
    ctx: Context, name: str, code: str, total: Amount | None, inputs: list[Evidence]
) -> Evidence:
    value = None if total is None else total.value
    unit = None if total is None else (total.unit or "mg")
    if total is not None and total.lower_bound:
        code += " (lower bound)"
    return ctx.derived(name, code, value, unit, inputs)


def _series(ctx: Context, fact_kind: str, concept: str) -> list[Any]:
    store = ctx.record.labs if fact_kind == "lab" else ctx.record.observations
    return store.get(concept) or []


def _slice(series: Sequence[Measure], bounds: WindowBounds) -> tuple[int, int]:
    start, end, inclusive = bounds
    hi = (bisect_right if inclusive else bisect_left)(series, end, key=_time_of)
    lo = 0 if start is None else bisect_left(series, start, 0, hi, key=_time_of)
    return lo, hi


def lab_select(
    fact_kind: str,
    concept: str,
    select: str,
    window: WindowFn,
    label: str | None = None,
    share: Hashable | None = None,
) -> Callable[[Context], Measure | None]:
    """latest / first result with a value (a number, or a qualitative positive or negative),
    min / max numeric result, in the window (None when there is none). ``share``: what makes
    the window the same for every rule (``expressions.window_key``), so that the rules of one
    evaluation select it once (``Context.shared``; not while explaining, which traces it)."""
    pick = _PICKERS[select]
    measures = attrgetter("labs" if fact_kind == "lab" else "observations")  # as ``_series``
    key = None if share is None else (fact_kind, concept, select, share)
    latest = select == "latest"
    # A window ending at the evaluation time with a length (a constant: ``window.length``,
    # None for since ever; a parameter's: ``window.length_of``, None when unknown) is computed
    # in place, without calling it: the most common queries.
    fixed = hasattr(window, "length")
    length: timedelta | None = getattr(window, "length", None)
    length_of: Callable[[Context], timedelta | None] | None = getattr(window, "length_of", None)
    in_place = fixed or length_of is not None

    def lab(ctx: Context) -> Measure | None:  # ``_series`` and ``_slice`` inlined: a hot path
        series = measures(ctx.record).get(concept)
        if not series:
            return None
        if key is not None and ctx.trace is None:
            hit = ctx.shared.get(key, _UNSET)
            if hit is not _UNSET:
                shared: Measure | None = hit
                return shared
        start: datetime | None
        if in_place:
            span = length if length_of is None else length_of(ctx)
            if span is None and not fixed:
                return None  # the parameter is unknown
            end, inclusive = ctx.as_of, True
            start = None if span is None else end - span
        else:
            bounds = window(ctx)
            if bounds is None:
                return None
            start, end, inclusive = bounds
        last = series[-1]  # the newest first: usually ``latest``'s answer, the others unread
        if (
            latest
            and last.value is not None
            and (last.time <= end if inclusive else last.time < end)
        ):
            found = last if start is None or last.time >= start else None
        else:
            hi = (bisect_right if inclusive else bisect_left)(series, end, key=_time_of)
            lo = 0 if start is None else bisect_left(series, start, 0, hi, key=_time_of)
            found = pick(series, lo, hi)
        if ctx.trace is not None:
            if found is not None and label is not None:
                ctx.trace.append(ctx.cached(measure_evidence, label, found))
        elif key is not None:
            ctx.shared[key] = found
        return found

    return lab


def _has_value(fact: Measure) -> bool:
    """A number, or a result read as positive or negative (``LabResult.qualitative``)."""
    return fact.value is not None or getattr(fact, "qualitative", None) is not None


def _pick_latest(series: Sequence[Measure], lo: int, hi: int) -> Measure | None:
    for i in range(hi - 1, lo - 1, -1):
        if _has_value(series[i]):
            return series[i]
    return None


def _pick_first(series: Sequence[Measure], lo: int, hi: int) -> Measure | None:
    for i in range(lo, hi):
        if _has_value(series[i]):
            return series[i]
    return None


def _pick_extreme(smallest: bool) -> Callable[[Sequence[Measure], int, int], Measure | None]:
    def pick(series: Sequence[Measure], lo: int, hi: int) -> Measure | None:
        best: Measure | None = None
        best_value = 0.0
        for i in range(lo, hi):  # ties go to the latest: iterate forward, replace on equal
            v = series[i].value
            if v is not None and (
                best is None or (v <= best_value if smallest else v >= best_value)
            ):
                best, best_value = series[i], v
        return best

    return pick


_PICKERS = {
    "latest": _pick_latest,
    "first": _pick_first,
    "min": _pick_extreme(True),
    "max": _pick_extreme(False),
}


def lab_count(
    node: Mapping[str, Any], window: WindowFn, label: str | None
) -> Callable[[Context], int | None]:
    fact_kind, concept = node["fact_kind"], node["concept"]
    name = label or concept

    def count(ctx: Context) -> int | None:
        bounds = window(ctx)
        if bounds is None:
            return None
        series = _series(ctx, fact_kind, concept)
        lo, hi = _slice(series, bounds) if series else (0, 0)
        if ctx.trace is not None:
            inputs = [ctx.cached(measure_evidence, name, f) for f in series[lo:hi]]
            ctx.trace.append(
                ctx.derived(name, f"count {concept}", float(hi - lo), None, inputs, bounds[0])
            )
        return hi - lo

    return count


# Clinical queries


def _visible(moment: datetime | None, ctx: Context) -> bool:
    return moment is None or moment <= ctx.as_of


def _in_window(moment: datetime | None, bounds: WindowBounds) -> bool:
    start, end, inclusive = bounds
    if moment is None or (start is not None and moment < start):
        return False
    return moment <= end if inclusive else moment < end


def has_condition(
    sets: CodeSets, set_name: str, active_only: bool, window: WindowFn | None, label: str
) -> Closure:
    def has_condition(ctx: Context) -> bool | None:
        bounds = window(ctx) if window is not None else None
        if window is not None and bounds is None:
            return None
        found = sorted(
            (
                c
                for c in ctx.record.conditions
                if c.icd10
                and set_name in sets.matching("icd10", c.icd10)
                and (not active_only or c.clinical_status == "active")
                and _visible(c.onset, ctx)
                and (bounds is None or _in_window(c.onset, bounds))
            ),
            key=lambda c: c.fact_id,
        )
        if ctx.trace is not None:
            ctx.trace.extend(ctx.cached(fact_evidence, label, c) for c in found)
        return bool(found)

    return has_condition


def has_allergy(line_fn: Closure, label: str) -> Closure:
    def has_allergy(ctx: Context) -> bool:
        line = line_fn(ctx)
        atc = None if line is None else line.atc
        if not atc:
            return False
        found = sorted(
            (
                a
                for a in ctx.record.allergies
                if a.clinical_status in ("active", "unknown")
                and _visible(a.recorded, ctx)
                and any(atc.startswith(prefix) for prefix in a.atc if prefix)
            ),
            key=lambda a: a.fact_id,
        )
        if ctx.trace is not None:
            ctx.trace.extend(ctx.cached(fact_evidence, label, a) for a in found)
        return bool(found)

    return has_allergy


def has_pregnancy(window: WindowFn, label: str) -> Closure:
    def has_pregnancy(ctx: Context) -> bool | None:
        bounds = window(ctx)
        if bounds is None:
            return None
        recorded = [p for p in ctx.record.pregnancies if _in_window(p.recorded, bounds)]
        if not recorded:
            return False
        latest = max(recorded, key=lambda p: (p.recorded, p.fact_id))
        if latest.status == "pregnant" and ctx.trace is not None:
            ctx.trace.append(ctx.cached(fact_evidence, label, latest))
        return latest.status == "pregnant"

    return has_pregnancy


def patient_evidence(patient: Patient) -> Evidence:
    return fact_evidence("patient", patient)


def patient_input(ctx: Context, patient: Patient) -> Evidence:
    """The patient record as the input of a derived value (age, sex...), built once."""
    return ctx.cached(fact_evidence, "patient", patient)


def age_value(ctx: Context, name: str) -> float | None:
    patient = ctx.record.patient
    if patient is None or patient.birth_date is None:
        return None
    years = float(_age(ctx, patient.birth_date))
    if ctx.trace is not None:
        ctx.trace.append(ctx.derived(name, "age", years, "years", [patient_input(ctx, patient)]))
    return years


def _sex_fm(ctx: Context) -> str | None:
    patient = ctx.record.patient
    sex = None if patient is None else patient.sex
    return "F" if sex is Sex.FEMALE else "M" if sex is Sex.MALE else None


_AGE = ("age",)  # ``Context.shared``'s key of the patient's age at the evaluation time


def _age(ctx: Context, birth_date: date) -> int:
    """``age_in_years`` at the evaluation time, computed once per context."""
    age: int | None = ctx.shared.get(_AGE)
    if age is None:
        age = ctx.shared[_AGE] = age_in_years(birth_date, ctx.as_of)
    return age


def clearance_value(
    ctx: Context,
    creatinine_fn: Callable[[Context], Measure | None],
    weight_fn: Callable[[Context], Measure | None],
    name: str,
) -> float | None:
    patient, sex = ctx.record.patient, _sex_fm(ctx)
    if patient is None or patient.birth_date is None or sex is None:
        return None
    creatinine, weight = creatinine_fn(ctx), weight_fn(ctx)
    if creatinine is None or weight is None or creatinine.value is None or weight.value is None:
        return None
    age = _age(ctx, patient.birth_date)
    value = cockcroft_gault(
        age=age, weight_kg=weight.value, creatinine_umol_l=creatinine.value, sex=sex
    )
    if value is not None and ctx.trace is not None:
        inputs = [
            ctx.cached(measure_evidence, "creatinine", creatinine),
            ctx.cached(measure_evidence, "weight", weight),
            ctx.derived("age", "age", float(age), "years", [patient_input(ctx, patient)]),
        ]
        ctx.trace.append(ctx.derived(name, "clearance", value, "mL/min", inputs, creatinine.time))
    return value


def egfr_computed(
    ctx: Context, creatinine_fn: Callable[[Context], Measure | None], name: str
) -> float | None:
    patient, sex = ctx.record.patient, _sex_fm(ctx)
    if patient is None or patient.birth_date is None or sex is None:
        return None
    creatinine = creatinine_fn(ctx)
    if creatinine is None or creatinine.value is None:
        return None
    age = _age(ctx, patient.birth_date)
    value = ckd_epi_2021(creatinine_umol_l=creatinine.value, age=age, sex=sex)
    if value is not None and ctx.trace is not None:
        inputs = [
            ctx.cached(measure_evidence, "creatinine", creatinine),
            ctx.derived("age", "age", float(age), "years", [patient_input(ctx, patient)]),
        ]
        ctx.trace.append(
            ctx.derived(
                name, "egfr (CKD-EPI 2021)", value, "mL/min/1.73m2", inputs, creatinine.time
            )
        )
    return value
