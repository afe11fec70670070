"""Rule tests as data: ``vigie rules test PACK... [TESTS...]``.

A test file (YAML, format in ``docs/rules.md``, "Testing rules") names the pack(s) it tests and
holds cases: a patient's facts in compact form with times relative to the case's evaluation
time, and the alerts expected (or their absence). The runner compiles the packs
(``rules.compile_pack``), builds the facts (units through the terminology tables, as a feed
would), evaluates (``engine.evaluate``) and compares; it prints one line per case like pytest,
a diff for each failure, and a coverage check: every rule of a tested pack needs a firing and a
non-firing case.

Each built fact's ``Source`` is ``feed="test"``, the test file, and ``case <name> / labs[2]
(line 34)``, so an alert's evidence points back to the line of the test file.

>>> import io
>>> out = io.StringIO()
>>> test_command([Path("no/such/file.yaml")], out=out)
1
>>> "no such file" in out.getvalue()
True
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

import yaml

import rules
from connectors.terminology import UnknownUnit, default_terminology, normalise_icd10
from engine.alerts import Alert
from engine.facts import (
    Allergy,
    AnyFact,
    Coding,
    Condition,
    LabResult,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Sex,
    Source,
)
from engine.factset import FactSet
from rules.units import unit_factor

__all__ = [
    "DEFAULT_AS_OF",
    "CaseFileError",
    "CaseResult",
    "ExpectedAlert",
    "PackCache",
    "PackRef",
    "RuleTestCase",
    "RuleTestFile",
    "TestReport",
    "compare_alerts",
    "coverage_gaps",
    "discover_test_files",
    "load_test_file",
    "parse_relative_time",
    "run_case",
    "run_tests",
    "test_command",
]

# Test files are collected by pytest only from tests/; the names below are not pytest tests.
DEFAULT_AS_OF = datetime(2024, 3, 1, 8, 0)
PATIENT_ID = "test-patient"
TESTS_FOLDER = Path(rules.__file__).parent / "tests"
TEST_SUFFIXES = (".yaml", ".yml")

FILE_KEYS = ("packs", "as_of", "defaults", "ignore", "cases")
CASE_KEYS = (
    "name", "rule", "note", "as_of", "level", "cursors", "patient", "drugs", "labs",
    "observations", "conditions", "allergies", "pregnancies", "expect", "absent", "ignore",
)  # fmt: skip
FACT_KEYS = ("patient", "drugs", "labs", "observations", "conditions", "allergies", "pregnancies")
EXPECT_KEYS = (
    "rule", "problem", "intervention", "severity", "drugs", "message", "evidence", "title",
)  # fmt: skip
PATIENT_KEYS = ("age", "birth_date", "sex", "weight", "height")
DRUG_KEYS = (
    "id", "atc", "label", "dose", "per_day", "per_week", "daily_dose", "start", "end", "route",
    "status", "as_needed",
)  # fmt: skip
DOSE_UNITS = ("mg", "µg", "g", "IU", "mL", "tablet", "µg/h", "MIU")
ROUTES = (
    "oral", "iv", "im", "sc", "sublingual", "transdermal", "topical", "inhaled", "nasal",
    "rectal", "vaginal", "ophthalmic",
)  # fmt: skip


# Errors -----------------------------------------------------------------------------------------


class CaseFileError(Exception):
    """A malformed test file, located: file, line, case and key."""

    def __init__(
        self, file: str, message: str, *, line: int | None = None, case: str | None = None,
        key: str | None = None,
    ) -> None:  # fmt: skip
        self.file, self.line, self.case, self.key, self.message = file, line, case, key, message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        parts = [where]
        if self.case is not None:
            parts.append(f"case {self.case!r}")
        if self.key:
            parts.append(self.key)
        return ": ".join([*parts, self.message])


@dataclass(frozen=True)
class _Here:
    """Where the builder is in a test file, to locate an error or name a fact's source."""

    file: str
    line: int | None = None
    case: str | None = None
    key: str = ""

    def at(self, key: str | int, node: Any = None) -> _Here:
        part = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.key else key)
        return _Here(self.file, _line_of(node) or self.line, self.case, self.key + part)

    def error(self, message: str) -> CaseFileError:
        return CaseFileError(self.file, message, line=self.line, case=self.case, key=self.key)


# YAML with line numbers -------------------------------------------------------------------------


class _LocatedDict(dict[Any, Any]):
    line: int = 0


class _LocatedList(list[Any]):
    line: int = 0


class _Loader(yaml.SafeLoader):
    """A safe loader whose mappings and lists remember their line (1-based)."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LocatedDict:
    mapping = _LocatedDict(loader.construct_mapping(node, deep=True))
    mapping.line = node.start_mark.line + 1
    return mapping


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> _LocatedList:
    sequence = _LocatedList(loader.construct_sequence(node, deep=True))
    sequence.line = node.start_mark.line + 1
    return sequence


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _line_of(node: Any) -> int | None:
    return getattr(node, "line", None) or None


def _read_yaml(path: Path, shown: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CaseFileError(shown, f"cannot read the test file: {exc}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise CaseFileError(shown, f"not valid YAML: {problem}", line=line) from None


# The model of a test file ---------------------------------------------------------------------


@dataclass(frozen=True)
class PackRef:
    path: Path
    coverage: bool = True


@dataclass(frozen=True)
class ExpectedAlert:
    rule: str
    line: int | None
    problem: str | None = None
    intervention: str | None = None
    severity: str | None = None
    title: str | None = None
    drugs: tuple[str, ...] | None = None
    message: tuple[str, ...] = ()
    evidence: tuple[tuple[str, Any], ...] = ()

    def describe(self) -> str:
        parts = [self.rule]
        if self.drugs is not None:
            parts.append(f"drugs [{', '.join(self.drugs)}]")
        if self.severity:
            parts.append(self.severity)
        return " ".join(parts)


@dataclass(frozen=True)
class RuleTestCase:
    file: str
    name: str
    line: int | None
    packs: tuple[PackRef, ...]
    as_of: datetime
    level: int
    cursors: tuple[tuple[str, Any, int | None], ...]  # name, value as written, line
    facts: tuple[AnyFact, ...]
    expect: tuple[ExpectedAlert, ...] | None
    absent: tuple[str, ...]
    ignore: tuple[str, ...]
    rule: str | None = None

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"

    def fires(self) -> set[str]:
        return {e.rule for e in self.expect or ()}

    def does_not_fire(self) -> set[str]:
        quiet = set(self.absent)
        if self.rule and self.expect is not None and self.rule not in self.fires():
            quiet.add(self.rule)
        return quiet


@dataclass(frozen=True)
class RuleTestFile:
    path: Path
    shown: str
    packs: tuple[PackRef, ...]
    cases: tuple[RuleTestCase, ...]


# Values: times, quantities ----------------------------------------------------------------------

_RELATIVE = re.compile(r"^([+-])((?:\d+(?:\.\d+)?(?:w|d|h|min|s))+)$")
_RELATIVE_PART = re.compile(r"(\d+(?:\.\d+)?)(w|d|h|min|s)")
_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "min": 60, "s": 1}
_QUANTITY = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*(\S.*?)?\s*$")


def parse_relative_time(value: Any, as_of: datetime) -> datetime:
    """``-6h``, ``-2d23h``, ``+1d``, ``0`` or ``now`` (relative to ``as_of``), or an ISO time.

    >>> parse_relative_time("-2d23h", datetime(2024, 3, 1, 8))
    datetime.datetime(2024, 2, 27, 9, 0)
    """
    if isinstance(value, datetime):
        return _naive_utc(value)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if value == 0 or value == "now":
        return as_of
    text = str(value).strip()
    match = _RELATIVE.match(text)
    if match:
        seconds = sum(float(n) * _SECONDS[u] for n, u in _RELATIVE_PART.findall(match[2]))
        return as_of + timedelta(seconds=seconds if match[1] == "+" else -seconds)
    try:
        return _naive_utc(datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(
            f"expected a relative time such as -6h, -3d, -2d23h, +1d, 0 (units w d h min s) "
            f"or an ISO date-time, got {value!r}"
        ) from None


def _naive_utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


def _quantity(value: Any) -> tuple[float, str | None]:
    """``5.9 mmol/L`` → (5.9, "mmol/L"); a bare number → (number, None)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number with its unit, got {value!r}")
    if isinstance(value, int | float):
        return float(value), None
    match = _QUANTITY.match(str(value))
    if not match:
        raise ValueError(f"expected a number with its unit (e.g. 5.9 mmol/L), got {value!r}")
    return float(match[1]), match[2]


def _number(value: Any) -> float:
    """A plain number, or a fraction written ``1/7``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(Fraction(str(value).strip()))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"expected a number (or a fraction such as 1/7), got {value!r}") from None


def _birth_date(age: Any, as_of: datetime) -> date:
    """A birth date giving ``age`` completed years at ``as_of`` (the birthday was yesterday)."""
    years = int(_number(age))
    if years != _number(age) or years < 0:
        raise ValueError(f"age is a whole number of years, got {age!r}")
    day = as_of.date()
    try:
        anniversary = day.replace(year=day.year - years)
    except ValueError:  # 29 February
        anniversary = day.replace(year=day.year - years, day=28)
    return anniversary - timedelta(days=1)


# Building facts --------------------------------------------------------------------------------


@dataclass
class _FactBuilder:
    """Turns one case's compact facts into fact models, each sourced to its line."""

    here: _Here
    as_of: datetime
    facts: list[AnyFact] = field(default_factory=list)

    def source(self, here: _Here) -> Source:
        line = f" (line {here.line})" if here.line else ""
        return Source(
            feed="test", document=here.file, position=f"case {here.case} / {here.key}{line}"
        )

    def time(self, here: _Here, value: Any) -> datetime:
        try:
            return parse_relative_time(value, self.as_of)
        except ValueError as exc:
            raise here.error(str(exc)) from None

    def build(self, spec: dict[str, Any]) -> list[AnyFact]:
        builders: dict[str, Callable[[_Here, Any], None]] = {
            "patient": self.patient,
            "drugs": self._each(self.drug),
            "labs": self._each(self.lab),
            "observations": self._each(self.observation),
            "conditions": self._each(self.condition),
            "allergies": self._each(self.allergy),
            "pregnancies": self._each(self.pregnancy),
        }
        for key in FACT_KEYS:
            if spec.get(key) is not None:
                builders[key](self.here.at(key, spec[key]), spec[key])
        return self.facts

    def _each(self, build_one: Callable[[_Here, Any], None]) -> Callable[[_Here, Any], None]:
        def build_all(here: _Here, items: Any) -> None:
            if not isinstance(items, list):
                raise here.error("expected a list")
            for index, item in enumerate(items):
                build_one(here.at(index, item), item)

        return build_all

    def patient(self, here: _Here, spec: Any) -> None:
        spec = _mapping(here, spec, PATIENT_KEYS)
        birth = None
        if "age" in spec and "birth_date" in spec:
            raise here.error("give age or birth_date, not both")
        try:
            if "age" in spec:
                birth = _birth_date(spec["age"], self.as_of)
            elif "birth_date" in spec:
                birth = self.time(here.at("birth_date"), spec["birth_date"]).date()
            sex = Sex(str(spec.get("sex", "U")))
        except ValueError as exc:
            raise here.error(str(exc)) from None
        self.facts.append(
            Patient(fact_id=PATIENT_ID, patient_id=PATIENT_ID, source=self.source(here),
                    birth_date=birth, sex=sex)
        )  # fmt: skip
        for concept in ("weight", "height"):
            if concept in spec:
                item = {concept: spec[concept], "at": "-1d"}
                self.observation(here.at(concept), item)

    def drug(self, here: _Here, spec: Any) -> None:
        spec = _mapping(here, spec, DRUG_KEYS)
        index = len([f for f in self.facts if isinstance(f, MedicationOrder)])
        order_id = str(spec.get("id", f"o{index + 1}"))
        atc = spec.get("atc")
        label = spec.get("label") or atc
        dose, dose_unit = self._dose(here.at("dose"), spec.get("dose"))
        per_day = self._per_day(here, spec)
        daily = self._daily_dose(here, spec, dose, dose_unit, per_day)
        route = self._route(here.at("route"), spec.get("route"))
        self.facts.append(
            MedicationOrder(
                fact_id=order_id, patient_id=PATIENT_ID, source=self.source(here),
                order_id=order_id,
                drug=Coding(system="ATC" if atc else "LOCAL", code=str(atc or order_id),
                            display=label),
                atc=str(atc) if atc else None, label=label, dose=dose, dose_unit=dose_unit,
                frequency_per_day=per_day, daily_dose=daily,
                as_needed=bool(spec.get("as_needed", False)), route=route,
                start=self.time(here.at("start"), spec.get("start", "-1d")),
                end=self.time(here.at("end"), spec["end"]) if spec.get("end") is not None
                else None,
                status=self._choice(here.at("status"), spec.get("status", "active"),
                                    ("active", "on-hold", "completed", "stopped", "cancelled",
                                     "draft", "unknown")),
            )
        )  # fmt: skip

    def _dose(self, here: _Here, value: Any) -> tuple[float | None, str | None]:
        if value is None:
            return None, None
        try:
            amount, unit = _quantity(value)
        except ValueError as exc:
            raise here.error(str(exc)) from None
        spelled = default_terminology().canonical_unit(unit) if unit else None
        if spelled not in DOSE_UNITS:
            raise here.error(f"dose unit {unit!r} is not one of {', '.join(DOSE_UNITS)}")
        return amount, spelled

    def _per_day(self, here: _Here, spec: dict[str, Any]) -> float | None:
        try:
            if "per_day" in spec and "per_week" in spec:
                raise ValueError("give per_day or per_week, not both")
            if spec.get("per_week") is not None:
                return _number(spec["per_week"]) / 7
            return _number(spec["per_day"]) if spec.get("per_day") is not None else None
        except ValueError as exc:
            raise here.at("per_day").error(str(exc)) from None

    def _daily_dose(
        self, here: _Here, spec: dict[str, Any], dose: float | None, unit: str | None,
        per_day: float | None,
    ) -> float | None:  # fmt: skip
        if spec.get("daily_dose") is None:
            return dose * per_day if dose is not None and per_day is not None else None
        amount, daily_unit = self._dose(here.at("daily_dose"), spec["daily_dose"])
        if unit is not None and daily_unit != unit:
            raise here.at("daily_dose").error(f"daily dose in {daily_unit}, dose in {unit}")
        return amount

    def _route(self, here: _Here, value: Any) -> str | None:
        if value is None:
            return None
        text = str(value)
        route = text if text in ROUTES else default_terminology().route("TEXT", text)
        if route is None:
            raise here.error(f"unknown route {text!r}; expected one of {', '.join(ROUTES)}")
        return route

    def _choice(self, here: _Here, value: Any, allowed: tuple[str, ...]) -> Any:
        if value not in allowed:
            raise here.error(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    def lab(self, here: _Here, spec: Any) -> None:
        self._measure(here, spec, "lab")

    def observation(self, here: _Here, spec: Any) -> None:
        self._measure(here, spec, "observation")

    def _measure(self, here: _Here, spec: Any, kind: str) -> None:
        spec = _mapping(here, spec, None)
        concepts = [k for k in spec if k not in ("at", "high", "low", "id")]
        if len(concepts) != 1:
            raise here.error(
                f"a {kind} gives one concept and its value (e.g. potassium: 5.9 mmol/L), "
                f"plus at:, and optionally high:, low:; got keys {sorted(spec)}"
            )
        concept = concepts[0]
        self._check_concept(here.at(concept), concept, kind)
        if "at" not in spec:
            raise here.error("missing key 'at' (when the result was taken, e.g. at: -6h)")
        value, unit, original = self._canonical(here.at(concept), concept, spec[concept])
        low = self._bound(here.at("low"), concept, spec.get("low"), unit)
        high = self._bound(here.at("high"), concept, spec.get("high"), unit)
        index = len([f for f in self.facts if type(f) is _KINDS[kind]])
        common: dict[str, Any] = {
            "fact_id": str(spec.get("id", f"{kind}-{index + 1}")),
            "patient_id": PATIENT_ID,
            "source": self.source(here),
            "concept": concept,
            "code": Coding(system="test", code=concept),
            "value": value,
            "unit": default_terminology().concepts[concept].unit,
            "original_value": original,
            "original_unit": unit,
            "time": self.time(here.at("at"), spec["at"]),
        }
        if kind == "lab":
            self.facts.append(LabResult(**common, reference_low=low, reference_high=high))
        else:
            self.facts.append(Observation(**common))

    def _check_concept(self, here: _Here, concept: str, kind: str) -> None:
        concepts = default_terminology().concepts
        if concept not in concepts:
            hint = difflib.get_close_matches(concept, list(concepts), n=1)
            near = f"; did you mean {hint[0]!r}?" if hint else ""
            raise here.error(f"unknown {kind} concept {concept!r}{near}")
        actual = concepts[concept].kind
        if actual != kind:
            raise here.error(f"{concept} is an {actual}: list it under {actual}s")

    def _canonical(
        self, here: _Here, concept: str, written: Any
    ) -> tuple[float | None, str | None, str | None]:
        """(canonical value, unit as written, original text); a text result has no value."""
        if written is None:
            return None, None, None
        try:
            amount, unit = _quantity(written)
        except ValueError:
            return None, None, str(written)  # "hémolysé": kept, not numeric
        value = self._convert(here, concept, amount, unit)
        return value, unit, str(written)

    def _convert(self, here: _Here, concept: str, amount: float, unit: str | None) -> float:
        canonical = default_terminology().concepts[concept].unit
        if unit is None and canonical != "1":
            raise here.error(f"a unit is needed (the canonical unit of {concept} is {canonical})")
        try:
            return default_terminology().to_canonical(concept, amount, unit or "1")[0]
        except UnknownUnit as exc:
            raise here.error(str(exc)) from None

    def _bound(self, here: _Here, concept: str, written: Any, unit: str | None) -> float | None:
        if written is None:
            return None
        try:
            amount, bound_unit = _quantity(written)
        except ValueError as exc:
            raise here.error(str(exc)) from None
        return self._convert(here, concept, amount, bound_unit or unit)

    def condition(self, here: _Here, spec: Any) -> None:
        spec = _mapping(here, spec, ("icd10", "onset", "abatement", "status", "label"))
        code = normalise_icd10(str(spec.get("icd10") or ""))
        if not code:
            raise here.error("a condition needs an icd10 code (e.g. icd10: K92.1)")
        self.facts.append(
            Condition(
                fact_id=f"condition-{len(self._of(Condition)) + 1}", patient_id=PATIENT_ID,
                source=self.source(here),
                code=Coding(system="http://hl7.org/fhir/sid/icd-10", code=code,
                            display=spec.get("label")),
                icd10=code,
                onset=self._optional_time(here, spec, "onset"),
                abatement=self._optional_time(here, spec, "abatement"),
                clinical_status=self._choice(here.at("status"), spec.get("status", "active"),
                                             ("active", "resolved", "inactive", "unknown")),
            )
        )  # fmt: skip

    def allergy(self, here: _Here, spec: Any) -> None:
        spec = _mapping(here, spec, ("atc", "substance", "status", "criticality", "recorded"))
        codes = spec.get("atc")
        codes = [codes] if isinstance(codes, str) else codes
        if not codes or not all(isinstance(c, str) for c in codes):
            raise here.error("an allergy needs atc: a code or a list of codes (e.g. atc: J01C)")
        substance = str(spec.get("substance") or codes[0])
        self.facts.append(
            Allergy(
                fact_id=f"allergy-{len(self._of(Allergy)) + 1}", patient_id=PATIENT_ID,
                source=self.source(here), substance=Coding(system="test", code=substance),
                atc=tuple(codes),
                criticality=self._choice(here.at("criticality"),
                                         spec.get("criticality", "unknown"),
                                         ("low", "high", "unable-to-assess", "unknown")),
                recorded=self._optional_time(here, spec, "recorded"),
                clinical_status=self._choice(here.at("status"), spec.get("status", "active"),
                                             ("active", "resolved", "inactive", "unknown")),
            )
        )  # fmt: skip

    def pregnancy(self, here: _Here, spec: Any) -> None:
        spec = _mapping(here, spec, ("status", "at"))
        if "at" not in spec:
            raise here.error("missing key 'at' (when the status was recorded)")
        self.facts.append(
            Pregnancy(
                fact_id=f"pregnancy-{len(self._of(Pregnancy)) + 1}", patient_id=PATIENT_ID,
                source=self.source(here),
                status=self._choice(here.at("status"), spec.get("status", "pregnant"),
                                    ("pregnant", "not-pregnant", "unknown")),
                recorded=self.time(here.at("at"), spec["at"]),
            )
        )  # fmt: skip

    def _optional_time(self, here: _Here, spec: dict[str, Any], key: str) -> datetime | None:
        return self.time(here.at(key), spec[key]) if spec.get(key) is not None else None

    def _of(self, kind: type) -> list[AnyFact]:
        return [f for f in self.facts if isinstance(f, kind)]


_KINDS: dict[str, type] = {"lab": LabResult, "observation": Observation}


def _mapping(here: _Here, spec: Any, allowed: Sequence[str] | None) -> dict[str, Any]:
    """``spec`` as a mapping whose keys are all in ``allowed`` (a typo is a located error)."""
    if not isinstance(spec, dict):
        raise here.error(f"expected a mapping (key: value), got {spec!r}")
    for key in spec:
        if allowed is not None and key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            near = f"; did you mean {hint[0]!r}?" if hint else ""
            raise here.at(str(key)).error(
                f"unknown key {key!r}{near} (expected one of {', '.join(allowed)})"
            )
    return spec


# Loading a test file --------------------------------------------------------------------------


def load_test_file(path: Path, shown: str | None = None) -> RuleTestFile:
    """Read and check a test file; ``CaseFileError`` (located) when it is malformed."""
    shown = shown or _shown(path)
    here = _Here(shown)
    document = _read_yaml(path, shown)
    spec = _mapping(here, document, FILE_KEYS)
    packs = _pack_refs(path, here.at("packs", spec.get("packs")), spec.get("packs"))
    as_of = _as_of(here.at("as_of"), spec.get("as_of"), DEFAULT_AS_OF)
    defaults = _mapping(here.at("defaults"), spec.get("defaults") or {}, CASE_KEYS)
    ignore = _rule_ids(here.at("ignore"), spec.get("ignore"))
    cases = spec.get("cases")
    if not isinstance(cases, list) or not cases:
        raise here.at("cases", cases).error("expected a non-empty list of cases")
    loaded = [
        _case(here.at("cases").at(i, c), c, defaults, packs, as_of, ignore)
        for i, c in enumerate(cases)
    ]
    _check_unique_names(here, loaded)
    return RuleTestFile(path, shown, packs, tuple(loaded))


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _pack_refs(path: Path, here: _Here, spec: Any) -> tuple[PackRef, ...]:
    """``packs: [../packs/default.rules, {path: ..., coverage: false}]``, relative to the file."""
    items = [spec] if isinstance(spec, str | dict) else spec
    if not isinstance(items, list) or not items:
        raise here.error("expected the pack(s) tested: a path or a list of paths")
    refs = []
    for index, item in enumerate(items):
        at = here.at(index, item)
        if isinstance(item, dict):
            item = _mapping(at, item, ("path", "coverage"))
            name, coverage = item.get("path"), bool(item.get("coverage", True))
        else:
            name, coverage = item, True
        if not isinstance(name, str):
            raise at.error("expected a pack path (relative to the test file)")
        pack = (path.parent / name).resolve()
        if not pack.is_file():
            raise at.error(f"pack not found: {name} (looked for {pack})")
        refs.append(PackRef(pack, coverage))
    return tuple(refs)


def _as_of(here: _Here, value: Any, default: datetime) -> datetime:
    if value is None:
        return default
    try:
        return parse_relative_time(value, default)
    except ValueError as exc:
        raise here.error(str(exc)) from None


def _rule_ids(here: _Here, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise here.error("expected a rule id or a list of rule ids")
    return tuple(items)


def _case(
    here: _Here, spec: Any, defaults: dict[str, Any], packs: tuple[PackRef, ...],
    file_as_of: datetime, file_ignore: tuple[str, ...],
) -> RuleTestCase:  # fmt: skip
    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise here.error("a case needs a name (name: ...)")
    here = _Here(here.file, here.line, name, "")
    spec = _mapping(here, spec, CASE_KEYS)
    merged = {**defaults, **spec}
    as_of = _as_of(here.at("as_of"), merged.get("as_of"), file_as_of)
    facts = _FactBuilder(here, as_of).build(merged)
    if "expect" not in merged and "absent" not in merged:
        raise here.error("a case needs expect: (the alerts, [] for none) or absent: (rule ids)")
    return RuleTestCase(
        file=here.file, name=name, line=here.line, packs=packs, as_of=as_of,
        level=_level(here.at("level"), merged.get("level", 1)),
        cursors=_cursors(here.at("cursors"), merged.get("cursors")),
        facts=tuple(facts),
        expect=_expectations(here.at("expect", merged["expect"]), merged["expect"])
        if "expect" in merged else None,
        absent=_rule_ids(here.at("absent"), merged.get("absent")),
        ignore=file_ignore + _rule_ids(here.at("ignore"), merged.get("ignore")),
        rule=str(merged["rule"]) if merged.get("rule") else None,
    )  # fmt: skip


def _level(here: _Here, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise here.error(f"level is a whole number ≥ 1, got {value!r}")
    return value


def _cursors(here: _Here, value: Any) -> tuple[tuple[str, Any, int | None], ...]:
    if value is None:
        return ()
    spec = _mapping(here, value, None)
    return tuple((str(k), v, here.line) for k, v in spec.items())


def _expectations(here: _Here, value: Any) -> tuple[ExpectedAlert, ...]:
    if not isinstance(value, list):
        raise here.error("expected a list of alerts ([] when none is expected)")
    return tuple(_expectation(here.at(i, item), item) for i, item in enumerate(value))


def _expectation(here: _Here, spec: Any) -> ExpectedAlert:
    if isinstance(spec, str):
        spec = {"rule": spec}
    spec = _mapping(here, spec, EXPECT_KEYS)
    if not isinstance(spec.get("rule"), str):
        raise here.error("an expected alert needs rule: (the rule id)")
    message = spec.get("message")
    messages = (message,) if isinstance(message, str) else tuple(map(str, message or ()))
    drugs = spec.get("drugs")
    if drugs is not None and not isinstance(drugs, list):
        raise here.at("drugs").error("expected a list of order ids")
    evidence = _mapping(here.at("evidence"), spec.get("evidence") or {}, None)
    return ExpectedAlert(
        rule=spec["rule"], line=here.line,
        problem=_code(spec.get("problem")), intervention=_code(spec.get("intervention")),
        severity=spec.get("severity"), title=spec.get("title"),
        drugs=tuple(sorted(map(str, drugs))) if drugs is not None else None,
        message=messages, evidence=tuple(evidence.items()),
    )  # fmt: skip


def _code(value: Any) -> str | None:
    """SFPC codes as text: ``6.3`` read by YAML as a float is the code ``6.3``."""
    return None if value is None else str(value)


def _check_unique_names(here: _Here, cases: list[RuleTestCase]) -> None:
    seen: set[str] = set()
    for case in cases:
        if case.name in seen:
            raise CaseFileError(here.file, "case name repeated", line=case.line, case=case.name)
        seen.add(case.name)


# Packs ------------------------------------------------------------------------------------------


class PackCache:
    """Compiled packs by path, compiled once per run (the ANSM pack takes seconds)."""

    def __init__(self) -> None:
        self._packs: dict[Path, rules.CompiledPack] = {}

    def get(self, path: Path) -> rules.CompiledPack:
        key = path.resolve()
        if key not in self._packs:
            self._packs[key] = rules.compile_files([key])[0]
        return self._packs[key]


# Running a case --------------------------------------------------------------------------------


@dataclass
class CaseResult:
    case: RuleTestCase
    diff: list[str] = field(default_factory=list)
    error: str | None = None
    alerts: list[Alert] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.error is None and not self.diff

    @property
    def status(self) -> str:
        return "ERROR" if self.error else ("PASS" if self.passed else "FAIL")


Evaluate = Callable[..., list[Alert]]


def _evaluator() -> Evaluate:
    """``engine.evaluate``: the module ``engine/evaluate.py`` or a function of ``engine``."""
    import importlib

    module = importlib.import_module("engine.evaluate")
    function = getattr(module, "evaluate", module)
    if not callable(function):
        raise ImportError("engine.evaluate has no evaluate function")
    return function  # type: ignore[no-any-return]


def run_case(case: RuleTestCase, packs: PackCache, evaluate: Evaluate | None = None) -> CaseResult:
    """Evaluate one case against its packs and compare with what it expects."""
    result = CaseResult(case)
    try:
        evaluate = evaluate or _evaluator()
    except ImportError as exc:
        result.error = f"the evaluator is not available: {exc}"
        return result
    compiled = [packs.get(ref.path) for ref in case.packs]
    broken = [(ref, c) for ref, c in zip(case.packs, compiled, strict=True) if c.ir is None]
    if broken:
        ref, pack = broken[0]
        result.error = f"pack {_shown(ref.path)} does not compile ({_first_error(pack)})"
        return result
    irs = [c.ir for c in compiled if c.ir is not None]
    unknown = _unknown_cursors(case, irs)
    if unknown:
        result.error = "; ".join(unknown)
        return result
    facts = FactSet(case.facts)
    for ir in irs:
        try:
            cursors = _cursor_values(case, ir)
        except CaseFileError as exc:
            result.error = str(exc)
            return result
        try:
            result.alerts += evaluate(
                ir, facts, case.as_of, cursors=cursors or None, level=case.level
            )
        except Exception as exc:  # the evaluator's bug must not stop the other cases
            result.error = f"the evaluator raised {type(exc).__name__}: {exc}"
            return result
    result.diff = compare_alerts(case, result.alerts)
    return result


def _first_error(compiled: rules.CompiledPack) -> str:
    errors = [d for d in compiled.diagnostics if d.is_error]
    return rules.render(errors[0], compiled.source).splitlines()[0] if errors else "no IR"


def _cursor_values(case: RuleTestCase, ir: dict[str, Any]) -> dict[str, float]:
    """This pack's cursor overrides, in each parameter's declared unit, inside its range."""
    params = ir["params"]
    values: dict[str, float] = {}
    for name, written, line in case.cursors:
        if name in params:
            here = _Here(case.file, line, case.name, f"cursors.{name}")
            values[name] = _cursor_value(here, params[name], written)
    return values


def _unknown_cursors(case: RuleTestCase, irs: list[dict[str, Any]]) -> list[str]:
    """Cursors that no pack of the case declares (a typo must not pass silently)."""
    known = {name for ir in irs for name in ir["params"]}
    messages = []
    for name, _, line in case.cursors:
        if name not in known:
            hint = difflib.get_close_matches(name, sorted(known), n=1)
            near = f"; did you mean {hint[0]!r}?" if hint else ""
            here = _Here(case.file, line, case.name, f"cursors.{name}")
            messages.append(str(here.error(f"unknown parameter {name!r}{near}")))
    return messages


def _cursor_value(here: _Here, param: dict[str, Any], written: Any) -> float:
    try:
        amount, unit = _quantity(written)
    except ValueError as exc:
        raise here.error(str(exc)) from None
    declared = param.get("unit")
    if unit is not None and declared is not None and unit != declared:
        factor = unit_factor(unit, declared)
        if factor is None:
            raise here.error(f"{unit} cannot be converted to the parameter's unit {declared}")
        amount *= factor
    low, high = param.get("min"), param.get("max")
    if (low is not None and amount < low) or (high is not None and amount > high):
        raise here.error(f"{amount:g} is outside the parameter's range {low:g} .. {high:g}")
    return amount


# Comparing alerts --------------------------------------------------------------------------------


def compare_alerts(case: RuleTestCase, alerts: Sequence[Alert]) -> list[str]:
    """The differences between what the case expects and the alerts: empty when it passes."""
    diff: list[str] = []
    for alert in alerts:
        if alert.rule_id in case.absent:
            diff.append(f"+ fired though listed absent: {_describe(alert)}")
    if case.expect is None:
        return diff
    pending = [a for a in alerts if not _ignored(a.rule_id, case.ignore)]
    for expected in case.expect:
        diff += _match(expected, pending)
    diff += [f"+ unexpected: {_describe(a)}" for a in pending if a.rule_id not in case.absent]
    return diff


def _ignored(rule_id: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(rule_id, p) for p in patterns)


def _match(expected: ExpectedAlert, pending: list[Alert]) -> list[str]:
    """Take the alert matching ``expected`` out of ``pending``; its differences, if any."""
    candidates = [
        a for a in pending
        if a.rule_id == expected.rule
        and (expected.drugs is None or _order_ids(a) == expected.drugs)
    ]  # fmt: skip
    if not candidates:
        return [f"- missing: {expected.describe()} (line {expected.line})"]
    for alert in candidates:
        if not _field_diffs(expected, alert):
            pending.remove(alert)
            return []
    alert = candidates[0]
    pending.remove(alert)
    return [f"~ {_describe(alert, message=False)}: {d}" for d in _field_diffs(expected, alert)]


def _field_diffs(expected: ExpectedAlert, alert: Alert) -> list[str]:
    diffs = []
    for name, want, got in (
        ("problem", expected.problem, alert.problem.code),
        ("intervention", expected.intervention, alert.intervention.code),
        ("severity", expected.severity, alert.severity),
        ("title", expected.title, alert.title),
    ):
        if want is not None and want != got:
            diffs.append(f"{name}: expected {want}, got {got}")
    diffs += [
        f"message: expected to contain {text!r}, got {alert.message!r}"
        for text in expected.message
        if text not in alert.message
    ]
    for name, want in expected.evidence:
        diffs += _evidence_diff(alert, str(name), want)
    return diffs


def _evidence_diff(alert: Alert, name: str, want: Any) -> list[str]:
    """``evidence: {k: 5.9}``: the evidence named ``k`` has that value, to the digits written."""
    found = [e for e in _flatten_evidence(alert.evidence) if e.name == name]
    if not found:
        names = sorted({e.name for e in _flatten_evidence(alert.evidence)})
        return [f"evidence {name}: expected {want!r}, none in the alert (has {names})"]
    values = [e.value for e in found]
    if any(_same_value(want, v) for v in values):
        return []
    return [f"evidence {name}: expected {want!r}, got {', '.join(map(repr, values))}"]


def _flatten_evidence(evidence: Iterable[Any]) -> Iterator[Any]:
    for item in evidence:
        yield item
        yield from _flatten_evidence(item.inputs)


def _same_value(want: Any, got: Any) -> bool:
    """Numbers compare to the decimals the expected value is written with (28.9 ≈ 28.87)."""
    if isinstance(want, int | float) and not isinstance(want, bool):
        if not isinstance(got, int | float):
            return False
        text = repr(float(want)) if isinstance(want, float) else str(want)
        decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 0
        return round(float(got), decimals) == round(float(want), decimals)
    return str(want) == str(got)


def _order_ids(alert: Alert) -> tuple[str, ...]:
    return tuple(sorted(d.order_id for d in alert.drugs))


def _describe(alert: Alert, message: bool = True) -> str:
    text = f"{alert.rule_id} drugs [{', '.join(_order_ids(alert))}] {alert.severity}"
    return f"{text}: {alert.message!r}" if message else text


# Coverage ---------------------------------------------------------------------------------------


def coverage_gaps(
    files: Sequence[RuleTestFile], packs: Iterable[Path], cache: PackCache
) -> dict[str, list[str]]:
    """Rules of ``packs`` without a firing case or without a non-firing case.

    ``{rule id: ["no firing case" | "no non-firing case", ...]}``.
    """
    fires: set[str] = set()
    quiet: set[str] = set()
    for test_file in files:
        for case in test_file.cases:
            fires |= case.fires()
            quiet |= case.does_not_fire()
    gaps: dict[str, list[str]] = {}
    for path in packs:
        ir = cache.get(path).ir
        for rule in ir["rules"] if ir else ():
            missing = [
                text for text, covered in (("no firing case", rule["id"] in fires),
                                           ("no non-firing case", rule["id"] in quiet))
                if not covered
            ]  # fmt: skip
            if missing:
                gaps[rule["id"]] = missing
    return gaps


# The command ------------------------------------------------------------------------------------


@dataclass
class TestReport:
    __test__ = False  # not a pytest test class
    results: list[CaseResult] = field(default_factory=list)
    file_errors: list[str] = field(default_factory=list)
    covered_packs: list[Path] = field(default_factory=list)
    rules_checked: int = 0
    uncovered: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.file_errors and not self.uncovered and all(r.passed for r in self.results)

    def counts(self) -> tuple[int, int, int]:
        """(passed, failed, errors); a malformed file is one error."""
        passed = sum(r.status == "PASS" for r in self.results)
        failed = sum(r.status == "FAIL" for r in self.results)
        errored = sum(r.status == "ERROR" for r in self.results)
        return passed, failed, errored + len(self.file_errors)

    def lines(self) -> Iterator[str]:
        for error in self.file_errors:
            yield f"ERROR {error}"
        for result in self.results:
            yield f"{result.status} {result.case.id}"
            if result.error:
                yield f"    {result.error}"
            yield from (f"    {line}" for line in result.diff)
        yield from self._coverage_lines()
        passed, failed, errors = self.counts()
        yield (
            f"== {passed} passed, {failed} failed, {errors} error(s)"
            f"{', coverage incomplete' if self.uncovered else ''} in {self.seconds:.2f}s =="
        )

    def _coverage_lines(self) -> Iterator[str]:
        packs = ", ".join(_shown(p) for p in self.covered_packs) or "no pack"
        if not self.uncovered:
            yield (
                f"coverage: {self.rules_checked} rule(s) of {packs}: each has a firing and a "
                "non-firing case"
            )
            return
        yield (
            f"coverage: {len(self.uncovered)} of {self.rules_checked} rule(s) of {packs} "
            "lack a firing or a non-firing case:"
        )
        for rule_id, missing in sorted(self.uncovered.items()):
            yield f"    {rule_id}: {', '.join(missing)}"


def discover_test_files(packs: Sequence[Path], folders: Iterable[Path] = ()) -> list[Path]:
    """Test files (in ``rules/tests/`` and beside the packs) that name one of ``packs``."""
    wanted = {p.resolve() for p in packs}
    places = {TESTS_FOLDER.resolve(), *(f.resolve() for f in folders)}
    for pack in wanted:
        places |= {pack.parent / "tests", pack.parent.parent / "tests"}
    found = []
    for path in sorted({t for place in places if place.is_dir() for t in _yaml_files(place)}):
        try:
            names = {ref.path for ref in load_test_file(path).packs}
        except CaseFileError:
            found.append(path)  # reported when run
            continue
        if names & wanted:
            found.append(path)
    return found


def _yaml_files(folder: Path) -> Iterator[Path]:
    for suffix in TEST_SUFFIXES:
        yield from folder.rglob(f"*{suffix}")


def _split_arguments(paths: Sequence[Path]) -> tuple[list[Path], list[Path], list[str]]:
    """(packs, test files, errors) from the command's arguments (folders are walked)."""
    packs: list[Path] = []
    tests: list[Path] = []
    errors: list[str] = []
    for path in paths:
        if path.is_dir():
            packs += sorted(path.rglob("*.rules"))
            tests += sorted(t for t in _yaml_files(path))
        elif not path.exists():
            errors.append(f"{path}: no such file or folder")
        elif path.suffix == ".rules":
            packs.append(path)
        elif path.suffix in TEST_SUFFIXES:
            tests.append(path)
        else:
            errors.append(f"{path}: neither a pack (.rules) nor a test file (.yaml)")
    return packs, tests, errors


def run_tests(
    paths: Sequence[Path], evaluate: Evaluate | None = None, cache: PackCache | None = None
) -> TestReport:
    """Run the test files among (or found for) ``paths``; see ``test_command``."""
    started = time.perf_counter()
    cache = cache or PackCache()
    packs, test_paths, errors = _split_arguments(paths)
    report = TestReport(file_errors=errors)
    if packs and not test_paths:
        test_paths = discover_test_files(packs)
        if not test_paths:
            report.file_errors.append(
                f"no test file names {', '.join(map(_shown, packs))} (looked in rules/tests/)"
            )
    files = []
    for path in dict.fromkeys(test_paths):
        try:
            files.append(load_test_file(path))
        except CaseFileError as exc:
            report.file_errors.append(str(exc))
    for test_file in files:
        report.results += [run_case(case, cache, evaluate) for case in test_file.cases]
    report.covered_packs = _covered_packs(packs, files)
    report.uncovered = coverage_gaps(files, report.covered_packs, cache)
    irs = [cache.get(p).ir for p in report.covered_packs]
    report.rules_checked = sum(len(ir["rules"]) for ir in irs if ir is not None)
    report.seconds = time.perf_counter() - started
    return report


def _covered_packs(packs: Sequence[Path], files: Sequence[RuleTestFile]) -> list[Path]:
    """Packs whose every rule must be covered: the packs named on the command line and those
    the test files name, except a pack only ever named with ``coverage: false`` (a generated
    pack such as the ANSM interactions, tested by sample)."""
    chosen: dict[Path, bool] = {p.resolve(): False for p in packs}
    for test_file in files:
        for ref in test_file.packs:
            chosen[ref.path] = chosen.get(ref.path, False) or ref.coverage
    exempt = {ref.path for f in files for ref in f.packs if not ref.coverage}
    return [p for p, cover in chosen.items() if cover or p not in exempt]


def test_command(paths: Sequence[Path], out: TextIO | None = None) -> int:
    """``vigie rules test PACK... [TESTS...]``: 0 when every case passes and every rule of the
    tested packs has a firing and a non-firing case, 1 otherwise.

    Arguments are packs (``.rules``), test files (``.yaml``) or folders of either; with packs
    only, the test files of ``rules/tests/`` that name those packs are run.
    """
    out = out or sys.stdout
    report = run_tests(paths)
    for line in report.lines():
        print(line, file=out)
    return 0 if report.ok else 1


test_command.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
