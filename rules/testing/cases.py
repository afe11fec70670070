"""Rule test case files: YAML with relative times and compact facts → test cases and facts.

The format is documented in ``docs/rules.md`` ("Testing rules"). Loading never raises anything
but ``CaseFileError``, which names the file, the line, the case and the key. Facts are built as
a feed would build them (units through the terminology tables), each with a ``Source`` pointing
at the test file line, so an alert's evidence points back to the case.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from vigie import rules
from vigie.errors import VigieError
from vigie.facts import (
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
from vigie.facts.model import Ingredient
from vigie.terminology import (
    QualitativeResult,
    UnknownUnit,
    default_terminology,
    normalise_icd10,
)

__all__ = [
    "DEFAULT_AS_OF",
    "TESTS_FOLDER",
    "TEST_SUFFIXES",
    "CaseFileError",
    "ExpectedAlert",
    "Here",
    "PackRef",
    "RuleTestCase",
    "RuleTestFile",
    "load_test_file",
    "parse_relative_time",
    "quantity",
    "shown_path",
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
    "status", "as_needed", "product", "ingredients",
)  # fmt: skip
INGREDIENT_KEYS = ("name", "atc", "strength", "per")
DOSE_UNITS = ("mg", "µg", "g", "IU", "mL", "tablet", "µg/h", "MIU")
ROUTES = (
    "oral", "iv", "im", "sc", "sublingual", "transdermal", "topical", "inhaled", "nasal",
    "rectal", "vaginal", "ophthalmic",
)  # fmt: skip


def _product(here: Here, value: Any, label: str | None) -> tuple[Coding, tuple[Ingredient, ...]]:
    """``product: CIS 66003374``: the product's code and its composition from the terminology's
    tables, as a connector reads it (``vigie.connectors.compositions``)."""
    system, _, code = str(value).strip().partition(" ")
    found = default_terminology().drug_ingredients(system, code.strip())
    if len(found) < 2:
        message = f"{value!r} is not a combination product of the composition tables"
        raise here.error(f"{message}; write it as SYSTEM CODE: CIS 66003374, UCD 3400893936047")
    ingredients = tuple(Ingredient(**component._asdict()) for component in found)
    return Coding(system=system, code=code.strip(), display=label), ingredients


def _ingredients(here: Here, value: Any) -> tuple[Ingredient, ...]:
    """``ingredients: [{name: Oxycodone, atc: N02AA05, strength: 5 mg, per: 1 tablet}, ...]``:
    a composition written in the case (``per`` defaults to one unit of the form; ``5 mL``)."""
    if not isinstance(value, list) or len(value) < 2:
        raise here.error("expected a list of two ingredients or more")
    found = []
    for index, item in enumerate(value):
        at = here.at(index, item)
        spec = _mapping(at, item, INGREDIENT_KEYS)
        if not spec.get("name"):
            raise at.error("an ingredient needs a name")
        try:
            amount, unit = quantity(spec["strength"]) if spec.get("strength") else (None, None)
            per_amount, per_unit = quantity(spec.get("per") or "1")
        except ValueError as exc:
            raise at.error(str(exc)) from None
        found.append(
            Ingredient(
                name=str(spec["name"]),
                atc=str(spec["atc"]) if spec.get("atc") else None,
                amount=amount,
                unit=unit,
                per_amount=per_amount,
                per_unit=per_unit if per_unit in ("mL", "L", "g") else None,
                source="test",
            )
        )
    return tuple(found)


# Errors -----------------------------------------------------------------------------------------


class CaseFileError(VigieError):
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
class Here:
    """Where the builder is in a test file, to locate an error or name a fact's source."""

    file: str
    line: int | None = None
    case: str | None = None
    key: str = ""

    def at(self, key: str | int, node: Any = None) -> Here:
        part = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.key else key)
        return Here(self.file, _line_of(node) or self.line, self.case, self.key + part)

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


def quantity(value: Any) -> tuple[float, str | None]:
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

    here: Here
    as_of: datetime
    facts: list[AnyFact] = field(default_factory=list)

    def source(self, here: Here) -> Source:
        line = f" (line {here.line})" if here.line else ""
        return Source(
            feed="test", document=here.file, position=f"case {here.case} / {here.key}{line}"
        )

    def time(self, here: Here, value: Any) -> datetime:
        try:
            return parse_relative_time(value, self.as_of)
        except ValueError as exc:
            raise here.error(str(exc)) from None

    def build(self, spec: dict[str, Any]) -> list[AnyFact]:
        builders: dict[str, Callable[[Here, Any], None]] = {
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

    def _each(self, build_one: Callable[[Here, Any], None]) -> Callable[[Here, Any], None]:
        def build_all(here: Here, items: Any) -> None:
            if not isinstance(items, list):
                raise here.error("expected a list")
            for index, item in enumerate(items):
                build_one(here.at(index, item), item)

        return build_all

    def patient(self, here: Here, spec: Any) -> None:
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

    def drug(self, here: Here, spec: Any) -> None:
        spec = _mapping(here, spec, DRUG_KEYS)
        index = len([f for f in self.facts if isinstance(f, MedicationOrder)])
        order_id = str(spec.get("id", f"o{index + 1}"))
        atc = spec.get("atc")
        label = spec.get("label") or atc
        dose, dose_unit = self._dose(here.at("dose"), spec.get("dose"))
        per_day = self._per_day(here, spec)
        daily = self._daily_dose(here, spec, dose, dose_unit, per_day)
        route = self._route(here.at("route"), spec.get("route"))
        drug = Coding(system="ATC" if atc else "LOCAL", code=str(atc or order_id), display=label)
        ingredients: tuple[Ingredient, ...] = ()
        if spec.get("product") is not None and spec.get("ingredients") is not None:
            raise here.error("give product or ingredients, not both")
        if spec.get("product") is not None:
            drug, ingredients = _product(here.at("product"), spec["product"], label)
            atc = atc or default_terminology().drug_atc(drug.system, drug.code)
        if spec.get("ingredients") is not None:
            ingredients = _ingredients(here.at("ingredients"), spec["ingredients"])
        self.facts.append(
            MedicationOrder(
                fact_id=order_id, patient_id=PATIENT_ID, source=self.source(here),
                order_id=order_id, drug=drug, ingredients=ingredients,
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

    def _dose(self, here: Here, value: Any) -> tuple[float | None, str | None]:
        if value is None:
            return None, None
        try:
            amount, unit = quantity(value)
        except ValueError as exc:
            raise here.error(str(exc)) from None
        spelled = default_terminology().canonical_unit(unit) if unit else None
        if spelled not in DOSE_UNITS:
            raise here.error(f"dose unit {unit!r} is not one of {', '.join(DOSE_UNITS)}")
        return amount, spelled

    def _per_day(self, here: Here, spec: dict[str, Any]) -> float | None:
        try:
            if "per_day" in spec and "per_week" in spec:
                raise ValueError("give per_day or per_week, not both")
            if spec.get("per_week") is not None:
                return _number(spec["per_week"]) / 7
            return _number(spec["per_day"]) if spec.get("per_day") is not None else None
        except ValueError as exc:
            raise here.at("per_day").error(str(exc)) from None

    def _daily_dose(
        self, here: Here, spec: dict[str, Any], dose: float | None, unit: str | None,
        per_day: float | None,
    ) -> float | None:  # fmt: skip
        if spec.get("daily_dose") is None:
            return dose * per_day if dose is not None and per_day is not None else None
        amount, daily_unit = self._dose(here.at("daily_dose"), spec["daily_dose"])
        if unit is not None and daily_unit != unit:
            raise here.at("daily_dose").error(f"daily dose in {daily_unit}, dose in {unit}")
        return amount

    def _route(self, here: Here, value: Any) -> str | None:
        if value is None:
            return None
        text = str(value)
        route = text if text in ROUTES else default_terminology().route("TEXT", text)
        if route is None:
            raise here.error(f"unknown route {text!r}; expected one of {', '.join(ROUTES)}")
        return route

    def _choice(self, here: Here, value: Any, allowed: tuple[str, ...]) -> Any:
        if value not in allowed:
            raise here.error(f"{value!r} is not one of {', '.join(allowed)}")
        return value

    def lab(self, here: Here, spec: Any) -> None:
        self._measure(here, spec, "lab")

    def observation(self, here: Here, spec: Any) -> None:
        self._measure(here, spec, "observation")

    def _measure(self, here: Here, spec: Any, kind: str) -> None:
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
            qualitative = self._qualitative(value, original)
            self.facts.append(
                LabResult(**common, reference_low=low, reference_high=high, qualitative=qualitative)
            )
        else:
            self.facts.append(Observation(**common))

    def _qualitative(self, value: float | None, original: str | None) -> QualitativeResult | None:
        """A text result read as the feeds read it: ``positive``, ``Négatif``, ``not detected``."""
        if value is not None or original is None:
            return None
        return default_terminology().qualitative_word(original)

    def _check_concept(self, here: Here, concept: str, kind: str) -> None:
        concepts = default_terminology().concepts
        if concept not in concepts:
            hint = difflib.get_close_matches(concept, list(concepts), n=1)
            near = f"; did you mean {hint[0]!r}?" if hint else ""
            raise here.error(f"unknown {kind} concept {concept!r}{near}")
        actual = concepts[concept].kind
        if actual != kind:
            raise here.error(f"{concept} is an {actual}: list it under {actual}s")

    def _canonical(
        self, here: Here, concept: str, written: Any
    ) -> tuple[float | None, str | None, str | None]:
        """(canonical value, unit as written, original text); a text result has no value."""
        if written is None:
            return None, None, None
        try:
            amount, unit = quantity(written)
        except ValueError:
            return None, None, str(written)  # "hémolysé": kept, not numeric
        value = self._convert(here, concept, amount, unit)
        return value, unit, str(written)

    def _convert(self, here: Here, concept: str, amount: float, unit: str | None) -> float:
        canonical = default_terminology().concepts[concept].unit
        if unit is None and canonical != "1":
            raise here.error(f"a unit is needed (the canonical unit of {concept} is {canonical})")
        try:
            return default_terminology().to_canonical(concept, amount, unit or "1")[0]
        except UnknownUnit as exc:
            raise here.error(str(exc)) from None

    def _bound(self, here: Here, concept: str, written: Any, unit: str | None) -> float | None:
        if written is None:
            return None
        try:
            amount, bound_unit = quantity(written)
        except ValueError as exc:
            raise here.error(str(exc)) from None
        return self._convert(here, concept, amount, bound_unit or unit)

    def condition(self, here: Here, spec: Any) -> None:
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

    def allergy(self, here: Here, spec: Any) -> None:
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

    def pregnancy(self, here: Here, spec: Any) -> None:
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

    def _optional_time(self, here: Here, spec: dict[str, Any], key: str) -> datetime | None:
        return self.time(here.at(key), spec[key]) if spec.get(key) is not None else None

    def _of(self, kind: type) -> list[AnyFact]:
        return [f for f in self.facts if isinstance(f, kind)]


_KINDS: dict[str, type] = {"lab": LabResult, "observation": Observation}


def _mapping(here: Here, spec: Any, allowed: Sequence[str] | None) -> dict[str, Any]:
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
    shown = shown or shown_path(path)
    here = Here(shown)
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


def shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _pack_refs(path: Path, here: Here, spec: Any) -> tuple[PackRef, ...]:
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


def _as_of(here: Here, value: Any, default: datetime) -> datetime:
    if value is None:
        return default
    try:
        return parse_relative_time(value, default)
    except ValueError as exc:
        raise here.error(str(exc)) from None


def _rule_ids(here: Here, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise here.error("expected a rule id or a list of rule ids")
    return tuple(items)


def _case(
    here: Here, spec: Any, defaults: dict[str, Any], packs: tuple[PackRef, ...],
    file_as_of: datetime, file_ignore: tuple[str, ...],
) -> RuleTestCase:  # fmt: skip
    name = spec.get("name") if isinstance(spec, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise here.error("a case needs a name (name: ...)")
    here = Here(here.file, here.line, name, "")
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


def _level(here: Here, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise here.error(f"level is a whole number ≥ 1, got {value!r}")
    return value


def _cursors(here: Here, value: Any) -> tuple[tuple[str, Any, int | None], ...]:
    if value is None:
        return ()
    spec = _mapping(here, value, None)
    return tuple((str(k), v, here.line) for k, v in spec.items())


def _expectations(here: Here, value: Any) -> tuple[ExpectedAlert, ...]:
    if not isinstance(value, list):
        raise here.error("expected a list of alerts ([] when none is expected)")
    return tuple(_expectation(here.at(i, item), item) for i, item in enumerate(value))


def _expectation(here: Here, spec: Any) -> ExpectedAlert:
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


def _check_unique_names(here: Here, cases: list[RuleTestCase]) -> None:
    seen: set[str] = set()
    for case in cases:
        if case.name in seen:
            raise CaseFileError(here.file, "case name repeated", line=case.line, case=case.name)
        seen.add(case.name)
