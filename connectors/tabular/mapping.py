"""CSV mapping files: what a hospital's table exports mean, as data.

A mapping is a TOML file (see ``example-dpi.toml`` beside this module, commented line by line,
and ``vigie-synthetic.toml`` for the canonical layout). ``load_mapping(path)`` reads and checks
it; every mistake is a ``MappingError`` naming the mapping file and the TOML key, e.g.
``example-dpi.toml: orders.columns: expected a field of orders (did you mean 'start'?), got
'strat'``. The connector that applies a mapping to CSV files is
``vigie.connectors.tabular.connector``.

This module only knows the format: the fields of each fact kind (``KINDS``), their types, which
local tables a kind accepts, and the CSV dialect options.

>>> mapping = load_mapping(SYNTHETIC_MAPPING)
>>> [f.kind for f in mapping.files][:3]
['patients', 'stays', 'orders']
"""

from __future__ import annotations

import codecs
import csv
import difflib
import fnmatch
import math
import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePath
from typing import Any, Literal

from vigie.connectors.base import FeedError
from vigie.facts import (
    Allergy,
    Condition,
    Fact,
    LabResult,
    MedicationAdministration,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Sex,
    Stay,
)
from vigie.terminology import Terminology, default_terminology

__all__ = [
    "EXAMPLE_MAPPING",
    "ISO",
    "KINDS",
    "SYNTHETIC_MAPPING",
    "CodeTable",
    "CsvFormat",
    "FieldSchema",
    "FileMapping",
    "KindSchema",
    "LocalConcept",
    "MappingError",
    "TabularMapping",
    "is_atc",
    "load_mapping",
    "parse_number",
]

MAPPINGS_DIR = Path(__file__).parent / "mappings"
SYNTHETIC_MAPPING = MAPPINGS_DIR / "vigie-synthetic.toml"
EXAMPLE_MAPPING = MAPPINGS_DIR / "example-dpi.toml"
ISO = "iso"  # the date format name meaning ISO 8601 (datetime.fromisoformat)

FieldType = Literal["text", "datetime", "date", "number", "bool", "enum", "atc", "atc_list"]

# ATC codes and prefixes: level 1 (C) to level 5 (C09AA05).
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_ATC = re.compile(r"^[A-Z](\d\d([A-Z]([A-Z](\d\d)?)?)?)?$")


def is_atc(code: str) -> bool:
    """Whether ``code`` is an ATC code or prefix (``C``, ``C09``, ``C09AA``, ``C09AA05``)."""
    return bool(_ATC.match(code))


class MappingError(FeedError):
    """A mistake in a mapping file: names the file and the TOML key."""

    def __init__(self, path: str | Path, key: str | None, expected: str, found: Any = None):
        super().__init__(
            str(path), key or None, expected, found=None if found is None else str(found)
        )


# Fact kinds and their fields ------------------------------------------------------------


@dataclass(frozen=True)
class FieldSchema:
    """A field a mapping can fill: its type, whether every row needs it, allowed values."""

    name: str
    type: FieldType = "text"
    required: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class KindSchema:
    """A fact kind as a table: its fields (the canonical layout first) and local tables."""

    name: str
    fact: type[Fact]
    fields: Mapping[str, FieldSchema]
    canonical: tuple[str, ...]
    tables: frozenset[str] = frozenset()


# Fields every kind accepts, for versions (see the connector's docstring, "Versions"): when the
# DPI wrote this version of the row (or exported it), and a status saying the row's fact was
# entered in error or deleted (``current`` otherwise; local values through [kind.values]).
_VERSION_TYPES: dict[str, FieldType] = {"version_time": "datetime", "record_status": "enum"}
_VERSION_CHOICES = {"record_status": ("current", "entered-in-error", "deleted")}


def _choices(model: type[Fact], name: str) -> tuple[str, ...]:
    """The allowed values of a Literal field, read from the fact model so both stay in sync."""
    return tuple(typing.get_args(model.model_fields[name].annotation))


def _schema(
    name: str,
    fact: type[Fact],
    canonical: str,
    types: Mapping[str, FieldType] | None = None,
    required: str = "",
    extra: str = "",
    tables: str = "",
    choices: Mapping[str, tuple[str, ...]] | None = None,
) -> KindSchema:
    types = {**(types or {}), **_VERSION_TYPES}
    choices = {**(choices or {}), **_VERSION_CHOICES}
    names = canonical.split() + extra.split() + list(_VERSION_TYPES)
    fields = {
        n: FieldSchema(n, types.get(n, "text"), n in required.split(), choices.get(n, ()))
        for n in names
    }
    return KindSchema(name, fact, fields, tuple(canonical.split()), frozenset(tables.split()))


_DRUG_TABLES = "drug_codes drug_table routes dose_units"
_STATUS = {"clinical_status": _choices(Condition, "clinical_status")}

KINDS: dict[str, KindSchema] = {
    s.name: s
    for s in (
        _schema(
            "patients",
            Patient,
            "patient_id birth_date sex",
            {"birth_date": "date", "sex": "enum"},
            required="patient_id",
            choices={"sex": tuple(sex.value for sex in Sex)},
        ),
        _schema(
            "stays",
            Stay,
            "stay_id patient_id ward bed admit_time discharge_time status",
            {"admit_time": "datetime", "discharge_time": "datetime", "status": "enum"},
            required="stay_id patient_id",
            choices={"status": _choices(Stay, "status")},
        ),
        _schema(
            "orders",
            MedicationOrder,
            "order_id patient_id stay_id drug_system drug_code atc label dose dose_unit "
            "frequency_per_day frequency_text as_needed route start end status prescriber",
            {
                "atc": "atc",
                "dose": "number",
                "frequency_per_day": "number",
                "as_needed": "bool",
                "start": "datetime",
                "end": "datetime",
                "status": "enum",
            },
            required="order_id patient_id drug_code",
            extra="route_system",
            tables=_DRUG_TABLES + " frequencies",
            choices={"status": _choices(MedicationOrder, "status")},
        ),
        _schema(
            "administrations",
            MedicationAdministration,
            "administration_id order_id patient_id drug_system drug_code atc label dose "
            "dose_unit route time status",
            {"atc": "atc", "dose": "number", "time": "datetime", "status": "enum"},
            required="patient_id drug_code time",
            extra="route_system",
            tables=_DRUG_TABLES,
            choices={"status": _choices(MedicationAdministration, "status")},
        ),
        _schema(
            "labs",
            LabResult,
            "lab_id patient_id code_system code value unit time reference_low reference_high",
            {"time": "datetime", "reference_low": "number", "reference_high": "number"},
            required="patient_id code time",
            extra="display abnormal_flag",
            tables="codes units",
        ),
        _schema(
            "observations",
            Observation,
            "observation_id patient_id code_system code value unit time",
            {"time": "datetime"},
            required="patient_id code time",
            extra="display",
            tables="codes units",
        ),
        _schema(
            "conditions",
            Condition,
            "condition_id patient_id code_system code display onset abatement clinical_status",
            {"onset": "datetime", "abatement": "datetime", "clinical_status": "enum"},
            required="patient_id code",
            tables="codes",
            choices=_STATUS,
        ),
        _schema(
            "allergies",
            Allergy,
            "allergy_id patient_id substance_system substance_code substance_display atc "
            "criticality recorded clinical_status",
            {
                "atc": "atc_list",
                "criticality": "enum",
                "recorded": "datetime",
                "clinical_status": "enum",
            },
            required="patient_id substance_code",
            tables="substance_codes",
            choices={"criticality": _choices(Allergy, "criticality"), **_STATUS},
        ),
        _schema(
            "pregnancies",
            Pregnancy,
            "pregnancy_id patient_id status recorded estimated_due_date",
            {"status": "enum", "recorded": "datetime", "estimated_due_date": "date"},
            required="patient_id recorded",
            choices={"status": _choices(Pregnancy, "status")},
        ),
    )
}


# What a loaded mapping holds ------------------------------------------------------------


@dataclass(frozen=True)
class CsvFormat:
    """The CSV dialect of one export file."""

    delimiter: str = ","
    encodings: tuple[str, ...] = ("utf-8",)
    decimal: str = "."
    date_formats: tuple[str, ...] = (ISO,)
    rows_per_message: int = 1000
    list_separator: str = "|"
    # "replace": the same file name exported again is a new version of that export (a full
    # snapshot: what it no longer holds is removed); "add": every file only adds rows (a DPI that
    # writes each run's rows, or a sliding window, under one fixed name).
    exports: str = "replace"


class CodeTable:
    """A local code table: exact key first, then trimmed and case-insensitive."""

    def __init__(self, entries: Mapping[str, Any] | None = None) -> None:
        self.entries = dict(entries or {})
        self._folded = {k.strip().casefold(): v for k, v in self.entries.items()}

    def get(self, key: str | None) -> Any:
        if key is None:
            return None
        found = self.entries.get(key)
        return found if found is not None else self._folded.get(key.strip().casefold())

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __repr__(self) -> str:
        return f"CodeTable({self.entries!r})"


@dataclass(frozen=True)
class LocalConcept:
    """A local lab/observation code's concept, and the unit it implies when none is sent."""

    concept: str
    unit: str | None = None


@dataclass(frozen=True)
class FileMapping:
    """How to read one kind of export file: which files, dialect, columns and local tables.

    ``columns`` maps a field to the column(s) holding it (several columns are joined with
    ``-``, e.g. a prescription number and a line number make an order id); ``constants`` gives
    a field's value when it has no column or its cell is empty; ``values`` translates cell
    values of a field (``"H" = "M"``); the other tables translate local codes.
    """

    kind: str
    key: str  # the TOML key, "orders" or "labs[1]", for error messages
    patterns: tuple[str, ...]
    format: CsvFormat
    columns: Mapping[str, tuple[str, ...]]
    constants: Mapping[str, Any] = field(default_factory=dict)
    values: Mapping[str, CodeTable] = field(default_factory=dict)
    codes: CodeTable = field(default_factory=CodeTable)  # -> LocalConcept, or ICD-10 code
    units: CodeTable = field(default_factory=CodeTable)
    drug_codes: CodeTable = field(default_factory=CodeTable)
    substance_codes: CodeTable = field(default_factory=CodeTable)  # -> tuple of ATC
    routes: CodeTable = field(default_factory=CodeTable)
    dose_units: CodeTable = field(default_factory=CodeTable)
    frequencies: CodeTable = field(default_factory=CodeTable)

    @property
    def schema(self) -> KindSchema:
        return KINDS[self.kind]

    def matches_name(self, document: str) -> bool:
        name = PurePath(document).name.casefold()
        return any(fnmatch.fnmatchcase(name, p.casefold()) for p in self.patterns)

    def required_columns(self) -> set[str]:
        fields = self.schema.fields
        return {
            c
            for name, cols in self.columns.items()
            if fields[name].required and name not in self.constants
            for c in cols
        }

    def all_columns(self) -> set[str]:
        return {c for cols in self.columns.values() for c in cols}


@dataclass(frozen=True)
class TabularMapping:
    """A loaded, checked mapping file: one ``FileMapping`` per export file kind."""

    name: str
    path: str
    files: tuple[FileMapping, ...]


# Loading and checking ----------------------------------------------------------------------

_FORMAT_KEYS = {
    "delimiter",
    "encoding",
    "decimal",
    "date_formats",
    "rows_per_message",
    "list_separator",
    "exports",
}
_EXPORTS = ("replace", "add")
_SHARED_TABLES = {"routes", "drug_codes", "dose_units", "frequencies", "drug_table"}
_TOP_KEYS = {"name", "description", "defaults", *_SHARED_TABLES}
_FILE_KEYS = {"file", "columns", "constants", "values", *_FORMAT_KEYS}
_ALL_TABLES = {"codes", "units", "substance_codes", *_SHARED_TABLES}
_BOOLEAN_TARGETS = (True, False)


def load_mapping(path: str | Path, terminology: Terminology | None = None) -> TabularMapping:
    """Read and check a mapping file; raise ``MappingError`` naming the file and key."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise MappingError(path, None, "a readable mapping file", error.strerror) from error
    except UnicodeDecodeError as error:
        raise MappingError(path, f"byte {error.start}", "a UTF-8 TOML file") from error
    except tomllib.TOMLDecodeError as error:
        raise MappingError(path, None, f"valid TOML ({error})") from error
    return _Loader(path, terminology or default_terminology()).mapping(document)


class _Loader:
    """Checks a parsed TOML document and builds the mapping; every error names its key."""

    def __init__(self, path: Path, terminology: Terminology) -> None:
        self.path = path
        self.terminology = terminology

    def fail(self, key: str, expected: str, found: Any = None) -> MappingError:
        return MappingError(self.path, key, expected, found)

    def mapping(self, document: dict[str, Any]) -> TabularMapping:
        for key in document:
            if key not in _TOP_KEYS and key not in KINDS:
                raise self.fail(key, f"a section {_one_of(key, [*KINDS, *_TOP_KEYS])}", key)
        defaults = self.format(self.table(document, "defaults"), "defaults", CsvFormat())
        shared = {k: document[k] for k in _SHARED_TABLES if k in document}
        files = [
            self.file_mapping(kind, key, table, defaults, shared)
            for kind in document
            if kind in KINDS
            for key, table in self.file_tables(document, kind)
        ]
        if not files:
            raise self.fail("", f"at least one section among {', '.join(KINDS)}")
        name = document.get("name", self.path.stem)
        return TabularMapping(str(name), str(self.path), tuple(files))

    def file_tables(self, document: dict[str, Any], kind: str) -> list[tuple[str, dict[str, Any]]]:
        value = document[kind]
        if isinstance(value, dict):
            return [(kind, value)]
        if isinstance(value, list) and all(isinstance(v, dict) for v in value):
            return [(f"{kind}[{i}]", v) for i, v in enumerate(value)]
        raise self.fail(kind, "a table [kind] or an array of tables [[kind]]", value)

    def table(self, parent: Mapping[str, Any], key: str, prefix: str = "") -> dict[str, Any]:
        value = parent.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(prefix + key, "a table", value)
        return value

    # Dialect --------------------------------------------------------------------------

    def format(self, table: Mapping[str, Any], key: str, base: CsvFormat) -> CsvFormat:
        options: dict[str, Any] = {}
        for name, value in table.items():
            where = f"{key}.{name}"
            if name not in _FORMAT_KEYS:
                raise self.fail(where, f"a format option {_one_of(name, _FORMAT_KEYS)}", name)
            options.update(self.format_option(name, value, where))
        return CsvFormat(**{**base.__dict__, **options})

    def format_option(self, name: str, value: Any, where: str) -> dict[str, Any]:
        if name == "delimiter":
            if not (isinstance(value, str) and len(value) == 1 and value not in "\r\n\"'"):
                raise self.fail(where, 'one character such as ";" or "," or "\\t"', value)
            return {"delimiter": value}
        if name == "encoding":
            return {"encodings": self.encodings(value, where)}
        if name == "decimal":
            if value not in (".", ","):
                raise self.fail(where, '"." or ","', value)
            return {"decimal": value}
        if name == "date_formats":
            return {"date_formats": self.date_formats(value, where)}
        if name == "rows_per_message":
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise self.fail(where, "a whole number of rows, 1 or more", value)
            return {"rows_per_message": value}
        if name == "exports":
            if value not in _EXPORTS:
                raise self.fail(where, '"replace" (snapshots) or "add" (new rows only)', value)
            return {"exports": value}
        if not (isinstance(value, str) and len(value) == 1):
            raise self.fail(where, 'one character such as "|"', value)
        return {"list_separator": value}

    def encodings(self, value: Any, where: str) -> tuple[str, ...]:
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, list) or not names:
            raise self.fail(where, 'an encoding such as "utf-8", "latin-1" or "cp1252"', value)
        for name in names:
            if not _ascii_compatible(str(name)):
                raise self.fail(where, "an encoding such as utf-8, latin-1, cp1252", name)
        return tuple(str(n) for n in names)

    def date_formats(self, value: Any, where: str) -> tuple[str, ...]:
        formats = [value] if isinstance(value, str) else value
        if not isinstance(formats, list) or not formats:
            raise self.fail(where, 'a list of formats such as ["%d/%m/%Y %H:%M", "iso"]', value)
        for fmt in formats:
            if fmt != ISO and not _valid_strptime(fmt):
                raise self.fail(where, 'a strptime format such as "%d/%m/%Y %H:%M" or "iso"', fmt)
        return tuple(formats)

    # One file kind ----------------------------------------------------------------------

    def file_mapping(
        self,
        kind: str,
        key: str,
        table: dict[str, Any],
        defaults: CsvFormat,
        shared: Mapping[str, Any],
    ) -> FileMapping:
        schema = KINDS[kind]
        for name in table:
            if name not in _FILE_KEYS and name not in schema.tables:
                allowed = [*_FILE_KEYS, *schema.tables]
                raise self.fail(f"{key}.{name}", f"a key of {kind} {_one_of(name, allowed)}", name)
        fmt = self.format({k: v for k, v in table.items() if k in _FORMAT_KEYS}, key, defaults)
        columns = self.columns(schema, key, table)
        constants = self.constants(schema, key, table, fmt)
        self.check_required(schema, key, columns, constants)
        tables = self.local_tables(schema, key, table, shared)
        return FileMapping(
            kind=kind,
            key=key,
            patterns=self.patterns(key, table),
            format=fmt,
            columns=columns,
            constants=constants,
            values=self.values(schema, key, table),
            **tables,
        )

    def patterns(self, key: str, table: Mapping[str, Any]) -> tuple[str, ...]:
        value = table.get("file")
        patterns = [value] if isinstance(value, str) else value
        if (
            not isinstance(patterns, list)
            or not patterns
            or not all(isinstance(p, str) and p for p in patterns)
        ):
            raise self.fail(f"{key}.file", 'a file name pattern such as "BIO_*.csv"', value)
        return tuple(patterns)

    def columns(
        self, schema: KindSchema, key: str, table: Mapping[str, Any]
    ) -> dict[str, tuple[str, ...]]:
        columns: dict[str, tuple[str, ...]] = {}
        for name, value in self.table(table, "columns", f"{key}.").items():
            where = f"{key}.columns.{name}"
            self.check_field(schema, name, f"{key}.columns")
            cols = [value] if isinstance(value, str) else value
            if (
                not isinstance(cols, list)
                or not cols
                or not all(isinstance(c, str) and c.strip() for c in cols)
            ):
                raise self.fail(where, "a column name, or a list of column names", value)
            columns[name] = tuple(c.strip() for c in cols)
        return columns

    def check_field(self, schema: KindSchema, name: str, where: str) -> None:
        if name not in schema.fields:
            raise self.fail(where, f"a field of {schema.name} {_one_of(name, schema.fields)}", name)

    def constants(
        self, schema: KindSchema, key: str, table: Mapping[str, Any], fmt: CsvFormat
    ) -> dict[str, Any]:
        constants = self.table(table, "constants", f"{key}.")
        for name, value in constants.items():
            where = f"{key}.constants.{name}"
            self.check_field(schema, name, f"{key}.constants")
            kind = schema.fields[name].type
            if kind in ("datetime", "date"):
                raise self.fail(where, "a constant for a text, number or code field", value)
            if kind == "number" and not _is_number(value):
                raise self.fail(where, "a number", value)
            if kind == "bool" and not isinstance(value, bool):
                raise self.fail(where, "true or false", value)
            if kind == "enum" and value not in schema.fields[name].choices:
                raise self.fail(where, f"one of {', '.join(schema.fields[name].choices)}", value)
            if kind in ("text", "atc", "atc_list") and not isinstance(value, str):
                raise self.fail(where, "a text value in quotes", value)
            if kind in ("atc", "atc_list") and not all(is_atc(a) for a in _split(value, fmt)):
                raise self.fail(where, "ATC codes such as C09AA05", value)
        return dict(constants)

    def check_required(
        self,
        schema: KindSchema,
        key: str,
        columns: Mapping[str, Any],
        constants: Mapping[str, Any],
    ) -> None:
        for name, spec in schema.fields.items():
            if spec.required and name not in columns and name not in constants:
                raise self.fail(f"{key}.columns", f"a column for the required field '{name}'")

    def values(
        self, schema: KindSchema, key: str, table: Mapping[str, Any]
    ) -> dict[str, CodeTable]:
        values: dict[str, CodeTable] = {}
        for name, entries in self.table(table, "values", f"{key}.").items():
            where = f"{key}.values.{name}"
            self.check_field(schema, name, f"{key}.values")
            spec = schema.fields[name]
            if spec.type not in ("enum", "bool", "text") or not isinstance(entries, dict):
                raise self.fail(where, "a table of cell value = value, for a text/code field")
            for cell, target in entries.items():
                if spec.type == "enum" and target not in spec.choices:
                    raise self.fail(f"{where}.{cell}", f"one of {', '.join(spec.choices)}", target)
                if spec.type == "bool" and target not in _BOOLEAN_TARGETS:
                    raise self.fail(f"{where}.{cell}", "true or false", target)
                if spec.type == "text" and not isinstance(target, str):
                    raise self.fail(f"{where}.{cell}", "a text value in quotes", target)
            values[name] = CodeTable(entries)
        return values

    # Local code tables ------------------------------------------------------------------

    def local_tables(
        self, schema: KindSchema, key: str, table: Mapping[str, Any], shared: Mapping[str, Any]
    ) -> dict[str, CodeTable]:
        """Each local table: site drug tables, then shared entries, then the kind's own."""
        tables: dict[str, CodeTable] = {}
        for name in sorted(schema.tables - {"drug_table"}):
            entries: dict[str, Any] = {}
            if name == "drug_codes":
                for where, parent in (("drug_table", shared), (f"{key}.drug_table", table)):
                    if "drug_table" in parent:
                        entries |= self.drug_table(parent["drug_table"], where)
            for prefix, parent in (("", shared), (key, table)):
                own = self.code_table(parent, name, prefix)
                entries |= self.checked_table(schema, name, own, prefix)
            tables[name] = CodeTable(entries)
        return tables

    def code_table(self, parent: Mapping[str, Any], name: str, key: str) -> dict[str, Any]:
        return self.table(parent, name, f"{key}." if key else "")

    def checked_table(
        self, schema: KindSchema, name: str, entries: dict[str, Any], key: str
    ) -> dict[str, Any]:
        where = f"{key}.{name}" if key else name
        check = {
            "codes": self.lab_code if schema.name in ("labs", "observations") else self.icd10,
            "units": self.text_target,
            "drug_codes": self.atc_target,
            "substance_codes": self.atc_list_target,
            "routes": self.text_target,
            "dose_units": self.text_target,
            "frequencies": self.frequency,
        }[name]
        return {code: check(target, f"{where}.{code}") for code, target in entries.items()}

    def lab_code(self, target: Any, where: str) -> LocalConcept:
        if isinstance(target, str):
            target = {"concept": target}
        if not isinstance(target, dict) or set(target) - {"concept", "unit"}:
            raise self.fail(where, 'a concept name or { concept = "...", unit = "..." }', target)
        concept = target.get("concept")
        if concept not in self.terminology.concepts:
            known = _one_of(str(concept), self.terminology.concepts)
            raise self.fail(where, f"a concept of the terminology {known}", concept)
        unit = target.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise self.fail(where, "a unit in quotes", unit)
        return LocalConcept(concept, unit)

    def icd10(self, target: Any, where: str) -> str:
        if not (isinstance(target, str) and re.match(r"^[A-Z]\d\d(\.?[0-9A-Z]{1,4})?$", target)):
            raise self.fail(where, "an ICD-10 code such as N18.5", target)
        return target

    def text_target(self, target: Any, where: str) -> str:
        if not (isinstance(target, str) and target.strip()):
            raise self.fail(where, "a value in quotes", target)
        return target.strip()

    def atc_target(self, target: Any, where: str) -> str:
        if not (isinstance(target, str) and is_atc(target)):
            raise self.fail(where, "an ATC code such as C09AA05", target)
        return target

    def atc_list_target(self, target: Any, where: str) -> tuple[str, ...]:
        codes = [target] if isinstance(target, str) else target
        if not isinstance(codes, list) or not codes:
            raise self.fail(where, 'an ATC code or a list such as ["J01C", "J01D"]', target)
        return tuple(self.atc_target(code, where) for code in codes)

    def frequency(self, target: Any, where: str) -> float:
        if not _is_number(target) or target < 0:
            raise self.fail(where, "administrations per day, a number such as 3 or 0.142857")
        return float(target)

    def drug_table(self, value: Any, where: str) -> dict[str, str]:
        """A site CSV (columns ``code`` and ``atc``; ``#`` lines are comments)."""
        if not isinstance(value, str):
            raise self.fail(where, "a CSV file path relative to the mapping", value)
        path = self.path.parent / value
        try:
            lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise self.fail(where, "a readable UTF-8 CSV file", str(path)) from error
        rows = list(csv.DictReader(ln for ln in lines if not ln.startswith("#")))
        if not rows or not {"code", "atc"} <= set(rows[0]):
            raise self.fail(where, "a CSV with columns code,atc", str(path))
        for number, row in enumerate(rows, start=2):
            if not is_atc((row["atc"] or "").strip()):
                raise self.fail(f"{where} ({value} row {number})", "an ATC code", row["atc"])
        return {row["code"].strip(): row["atc"].strip() for row in rows}


def parse_number(text: str, decimal: str = ".") -> float | None:
    """A finite number written with the given decimal mark (spaces as thousands), or ``None``.

    >>> parse_number("1 234,5", ","), parse_number("4.5", ","), parse_number("4,5", ".")
    (1234.5, 4.5, None)
    """
    text = text.strip().replace("\u00a0", "").replace("\u202f", "")
    if decimal == ",":
        if "," in text and "." in text:
            return None
        text = text.replace(" ", "").replace(",", ".")
    if not _NUMBER.match(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _ascii_compatible(encoding: str) -> bool:
    """Whether an encoding reads ASCII bytes as ASCII (the CSV syntax must be ASCII)."""
    sample = bytes(range(128))
    try:
        codecs.lookup(encoding)
        return sample.decode(encoding) == sample.decode("ascii")
    except (LookupError, UnicodeDecodeError):
        return False


def _split(value: str, fmt: CsvFormat) -> list[str]:
    return [part.strip() for part in value.split(fmt.list_separator) if part.strip()]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _valid_strptime(fmt: Any) -> bool:
    """Whether a strptime format reads back the dates it writes (and has a directive)."""
    if not isinstance(fmt, str) or "%" not in fmt:
        return False
    sample = datetime(2024, 3, 1, 8, 0)
    try:
        return datetime.strptime(sample.strftime(fmt), fmt).date() == sample.date()
    except ValueError:
        return False


def _one_of(name: str, known: Iterable[str]) -> str:
    """``(did you mean 'x'?)`` when a known name is close, else the list of known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    return f"(did you mean {close[0]!r}?)" if close else f"({', '.join(known)})"
