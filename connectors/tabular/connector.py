"""CSV exports read through a mapping file (``feed = "csv"``).

Many French DPIs can only export tables. A **mapping file** (TOML) says what each export file
means; the connector applies it. ``connectors/tabular/mappings/example-dpi.toml`` is the commented
example to copy for a new DPI, ``vigie-synthetic.toml`` the mapping of Vigie's own canonical
layout (see ``write_canonical_csv``). The format, in short::

    name = "my-dpi"                 # used in messages
    [defaults]                      # dialect for every file (each [kind] may override it)
    delimiter = ";"                 # one character; "\\t" for tabs
    encoding = "latin-1"            # utf-8 (default), latin-1, cp1252, or a list tried in order
    decimal = ","                   # "." (default) or ","
    date_formats = ["%d/%m/%Y %H:%M", "%d/%m/%Y"]   # strptime formats, or "iso" (default)
    rows_per_message = 1000         # rows per raw message (1 = one message per row)
    exports = "replace"             # a file re-exported under its name replaces its earlier
                                    # version ("add": files only add rows; see "Versions")
    list_separator = "|"            # between several ATC codes in one cell

    [routes]                        # shared local tables (orders, administrations)
    "per os" = "oral"               # route label -> canonical route
    [drug_codes]                    # local drug code -> ATC
    "100234" = "C09AA05"
    # drug_table = "site-drugs.csv" # or a site CSV (code,atc), path relative to the mapping

    [labs]                          # one section per fact kind ([[labs]] for several files)
    file = ["BIO_*.csv"]            # file-name patterns (case-insensitive glob)
    [labs.columns]                  # fact field = "CSV column" (or ["COL1", "COL2"] joined by -)
    patient_id = "IPP"
    [labs.constants]                # a field's value when it has no column or the cell is empty
    code_system = "LOCAL"
    [labs.codes]                    # local lab code -> concept (or {concept=..., unit=...})
    K = "potassium"
    [labs.values.abnormal_flag]     # translate a field's cell values
    "+" = "H"

Kinds and their fields are ``vigie.connectors.tabular.mapping.KINDS`` (the fields of each kind are
the columns of the canonical layout, plus a few extras): patients, stays, orders, administrations,
labs, observations, conditions, allergies, pregnancies. Local tables per kind: ``codes``
(labs/observations: concept; conditions: ICD-10), ``units`` (unit spelling -> unit),
``drug_codes``/``drug_table``, ``routes``, ``dose_units``, ``frequencies`` (``"3/j" = 3``,
``"1/sem" = 0.142857``), ``substance_codes`` (allergies: code -> ATC or list of ATC),
``values.<field>`` (``"H" = "M"``). A mistake is a ``MappingError`` naming the file and key.

How rows become facts:

- ``split`` cuts a file into row groups, each keeping the header; ``message_id`` is
  ``<mapping name>|<file name>#<group number>`` (see "Versions" below); ``position`` is
  ``line N``. A file no mapped layout fits is one message named by its content.
- ``parse`` reads each row. A bad cell (bad date, bad number, missing required value, bytes not
  in the declared encoding) is a non-fatal error such as ``orders.csv: line 12, column 'start':
  expected a date like 2024-03-01T08:00, got '32/13/2024'``; the other rows load. A required
  column missing from the header is fatal; a mapped optional column missing is reported once
  per message and left empty.
- Labs and observations: concept from the mapping's ``codes`` table, else the terminology; the
  value read in the mapping's number syntax, then normalised by ``vigie.connectors.labs`` like
  every feed's (converted to the concept's unit with the range; an unmapped code keeps its
  value as sent, an unknown unit or a non-numeric value gives ``value=None``, each flagged);
  the cell text is kept in ``original_value/unit``. A row's concept decides whether it is a
  LabResult or an Observation; an unmapped code takes its file's kind.
- Drugs: ATC column if filled, else ``drug_atc(system, code)``, else the mapping's
  ``drug_codes``; unmapped: kept and flagged. Routes: mapping ``routes``, else the terminology.
- Times become naive UTC (``vigie.connectors.base.as_utc``): a time without an offset is in the
  site's zone (``VIGIE_TIMEZONE``). Dates (birth date, due date) stay dates.
- Rows without an id column get an id derived from what identifies them (patient, code and
  time for a lab: ``lab-<hash>``), stable on re-ingest; a corrected value replaces the fact.

Versions (issue 7). An export file is a snapshot of what the DPI holds, and its name says which
export it is (daily exports carry their date: ``BIOLOGIE_20240301.csv``). The same file name,
exported again with changed rows, is therefore a new version of the same export: each row group
keeps its id (the mapping, which names the DPI, scopes it), and the store replaces the facts of
the earlier version's group with the later one's — a corrected row replaces its fact, a row no
longer exported loses it. Which version is later is the mapping's ``version_time`` column (the
latest of a group's rows: the DPI's update or export time), else arrival order; each fact's
``Source.version_time`` is its row's. A ``record_status`` column whose value is (or translates
through ``[kind.values.record_status]`` to) ``entered-in-error`` or ``deleted`` gives a
``Retraction`` of the row's fact instead of the fact. Limits: a re-export with fewer row groups
leaves the facts of the groups it no longer has (the rows' ids still meet theirs, so a corrected
row replaces its fact wherever it moved), and two different exports under one name replace each
other. A DPI that writes only each run's new rows, or a sliding window (the last 48 hours), under
one fixed name declares ``exports = "add"`` (in ``[defaults]`` or a kind's section): its row
groups are then named by their content, every file only adds rows, and a correction reaches a
fact through the row's identity alone (its id column, else what identifies the row).

The module itself is a connector with the default mapping (``$VIGIE_CSV_MAPPING`` or the
synthetic one); ``configure(path)`` changes it, ``TabularConnector(mapping)`` is another one.

>>> connector = TabularConnector()
>>> content = b"patient_id,birth_date,sex\\np1,1940-05-01,F\\n"
>>> [raw] = connector.split("patients.csv", content)
>>> raw.position, connector.parse(raw).facts[0].sex.value
('line 2', 'F')
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from vigie import settings
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
from vigie.connectors.labs import CodeMatch, Reading, ReferenceRange, match_code, normalise
from vigie.connectors.tabular.canonical import CANONICAL_FILES, write_canonical_csv
from vigie.connectors.tabular.mapping import (
    ISO,
    SYNTHETIC_MAPPING,
    CsvFormat,
    FileMapping,
    LocalConcept,
    MappingError,
    TabularMapping,
    is_atc,
    load_mapping,
    parse_number,
)
from vigie.facts import (
    Allergy,
    Coding,
    Condition,
    Fact,
    Flag,
    FlagCode,
    LabResult,
    MedicationAdministration,
    MedicationOrder,
    Observation,
    Patient,
    Pregnancy,
    Retraction,
    Source,
    Stay,
)
from vigie.terminology import Terminology, default_terminology

__all__ = [
    "CANONICAL_FILES",
    "MappingError",
    "TabularConnector",
    "TabularMapping",
    "configure",
    "default_connector",
    "feed",
    "load_mapping",
    "parse",
    "parse_number",
    "sniff",
    "split",
    "write_canonical_csv",
]

feed = "csv"

_EXAMPLE_TIME = datetime(2024, 3, 1, 8, 0)
_TRUE = {"true", "1", "yes", "y", "oui", "o", "vrai"}
_FALSE = {"false", "0", "no", "n", "non", "faux"}
_LINE = re.compile(r"[^\n]*\n|[^\n]+")
_LINE_BYTES = re.compile(rb"[^\n]*\n|[^\n]+")
_SNIFF_BYTES = 4096
_WITHDRAWN = frozenset({"entered-in-error", "deleted"})  # a row's record_status retracting it
_Value = TypeVar("_Value")
# The csv module refuses cells over 128 KiB and the reader cannot go on after that: the rows
# after a huge cell would be lost. The document is already in memory: no limit is needed.
csv.field_size_limit(2**31 - 1)


# Records: CSV rows with their physical line numbers ------------------------------------------
#
# Files are read as latin-1 first: it maps every byte to one character, so splitting never
# fails and the bytes of each row group are kept exactly; CSV syntax (delimiters, quotes,
# newlines) is ASCII in utf-8, latin-1 and cp1252 alike. Cells are then decoded with the
# encoding the mapping declares, one by one, so a badly encoded cell is a located error.


@dataclass(frozen=True)
class _Record:
    line: int  # first physical line, 1-based
    end: int  # last physical line (a quoted cell may hold newlines)
    cells: list[str]  # latin-1 view of the bytes

    @property
    def blank(self) -> bool:
        return not any(cell.strip() for cell in self.cells)


class _BrokenRecord(Exception):
    def __init__(self, line: int, reason: str, field: int | None = None, end: int = 0) -> None:
        super().__init__(reason)
        self.line, self.reason = line, reason
        self.field, self.end = field, end  # an unclosed quote: its field, the last line


def _unclosed_quote(lines: Sequence[str], delimiter: str) -> bool:
    """Whether a record that runs to the end of the document does so inside a quoted cell.

    The lenient reader ends such a cell at the end of the data and keeps every line after the
    quote in it; the strict one says so.
    """
    try:
        for _ in csv.reader(iter(lines), delimiter=delimiter, strict=True):
            pass
    except csv.Error as error:
        return "unexpected end of data" in str(error)
    return False


def _physical_lines(text: str) -> list[str]:
    return _LINE.findall(text)


def _lines_from(content: bytes, start: int) -> Iterator[str]:
    """The physical lines of ``content`` from byte ``start``, one at a time (latin-1 view)."""
    return (match.group().decode("latin-1") for match in _LINE_BYTES.finditer(content, start))


def _line_count(content: bytes, start: int) -> int:
    """How many physical lines ``content`` holds from byte ``start``."""
    unterminated = len(content) > start and not content.endswith(b"\n")
    return content.count(b"\n", start) + unterminated


class _LineFeed:
    """Lines handed to the CSV reader one at a time, one read ahead so that the record ending
    the document is known as such; the lines of the current record are kept (to read it again
    strictly) and ``offset`` counts the characters handed out (bytes, in the latin-1 view)."""

    def __init__(self, lines: Iterable[str]) -> None:
        self._lines = iter(lines)
        self._ahead = next(self._lines, None)
        self.record: list[str] = []
        self.offset = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self._ahead
        if line is None:
            raise StopIteration
        self._ahead = next(self._lines, None)
        self.record.append(line)
        self.offset += len(line)
        return line

    @property
    def exhausted(self) -> bool:
        return self._ahead is None


def _records(
    lines: Iterable[str] | _LineFeed, delimiter: str, first_line: int = 1
) -> Iterator[_Record]:
    """The CSV records of ``lines``, read lazily; a ``_LineFeed`` given tells where each ends."""
    feed = lines if isinstance(lines, _LineFeed) else _LineFeed(lines)
    reader = csv.reader(feed, delimiter=delimiter)
    start = first_line
    while True:
        feed.record = []
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise _BrokenRecord(start, str(error)) from None
        end = first_line + reader.line_num - 1
        if feed.exhausted and cells and _unclosed_quote(feed.record, delimiter):
            found = '"' + cells[-1].split("\n", 1)[0].rstrip("\r")
            raise _BrokenRecord(start, found, field=len(cells), end=end)
        yield _Record(start, end, cells)
        start = end + 1


def _decode(cell: str, encodings: Sequence[str]) -> str | None:
    """A latin-1 view cell in the declared encoding, or ``None`` when its bytes are not."""
    raw = cell.encode("latin-1")
    for encoding in encodings:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return None


def _decode_header(record: _Record, fmt: CsvFormat) -> list[str] | None:
    names = [_decode(cell, fmt.encodings) for cell in record.cells]
    if any(name is None for name in names):
        return None
    return [str(name).lstrip("\ufeff").strip() for name in names]


# Identifying which mapped file a document is --------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    spec: FileMapping
    header: _Record
    names: list[str] | None  # decoded column names, None when not in the declared encoding

    @property
    def fits(self) -> bool:
        return self.names is not None and self.spec.required_columns() <= set(self.names)


_UTF8_BOM = "\xef\xbb\xbf"  # the UTF-8 signature, as the Latin-1 view of a document shows it


def _layout(spec: FileMapping, lines: Sequence[str]) -> _Layout | None:
    """The layout of a document if it is ``spec``'s file. A UTF-8 signature (what Excel's
    "CSV UTF-8" writes) says the document is UTF-8 whatever the mapping declares: it is read
    in UTF-8 first, then in the declared encodings."""
    first = lines[:1]
    if first and first[0].startswith(_UTF8_BOM):
        first = [first[0].removeprefix(_UTF8_BOM)]
        encodings = ("utf-8", *(e for e in spec.format.encodings if e != "utf-8"))
        spec = replace(spec, format=replace(spec.format, encodings=encodings))
    try:
        header = next(_records(first, spec.format.delimiter), None)
    except _BrokenRecord:
        return None
    if header is None:
        return None
    return _Layout(spec, header, _decode_header(header, spec.format))


def _identify(mapping: TabularMapping, document: str, lines: Sequence[str]) -> _Layout | None:
    """Which file of the mapping a document is: by name and header, else by header alone."""
    by_name = [f for f in mapping.files if f.matches_name(document)]
    layouts = [layout for f in by_name if (layout := _layout(f, lines))]
    for layout in layouts:
        if layout.fits:
            return layout
    if layouts:  # named like a mapped file: parse will say which column is missing
        return layouts[0]
    full = [
        layout
        for f in mapping.files
        if (layout := _layout(f, lines)) and f.all_columns() <= set(layout.names or ())
    ]
    return max(full, key=lambda layout: len(layout.spec.all_columns()), default=None)


# Cells ----------------------------------------------------------------------------------------


def _parse_datetime(text: str, formats: Sequence[str]) -> datetime | None:
    for fmt in formats:
        try:
            return datetime.fromisoformat(text) if fmt == ISO else datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def _date_example(formats: Sequence[str], day_only: bool = False) -> str:
    def one(fmt: str) -> str:
        if fmt == ISO:
            return "2024-03-01" if day_only else "2024-03-01T08:00"
        return _EXAMPLE_TIME.strftime(fmt)

    return " or ".join(dict.fromkeys(one(fmt) for fmt in formats))


_IDENTITY = {
    "administrations": ("patient_id", "order_id", "drug_system", "drug_code", "time"),
    "labs": ("patient_id", "code_system", "code", "time"),
    "observations": ("patient_id", "code_system", "code", "time"),
    "conditions": ("patient_id", "code_system", "code", "onset"),
    "allergies": ("patient_id", "substance_system", "substance_code"),
    "pregnancies": ("patient_id", "recorded"),
}


class _Row:
    """One CSV row read through a file mapping: typed cells, located errors."""

    def __init__(
        self,
        spec: FileMapping,
        columns: dict[str, int],
        record: _Record,
        line: int,
        raw: RawMessage,
        terminology: Terminology,
    ) -> None:
        self.spec, self.columns, self.record = spec, columns, record
        self.line, self.raw, self.terminology = line, raw, terminology
        self._texts: dict[str, str | None] = {}
        self._source: Source | None = None

    @property
    def source(self) -> Source:
        """Where the row is, and when the DPI wrote this version of it: the mapped
        ``version_time`` cell (a row's update time or the export's time), if any."""
        if self._source is None:
            self._source = Source(
                feed=feed,
                document=self.raw.document,
                message_id=self.raw.message_id,
                position=f"line {self.line}",
                version_time=self.when("version_time"),
            )
        return self._source

    # Errors and raw text ---------------------------------------------------------------

    def where(self, field: str) -> str:
        cols = self.spec.columns.get(field)
        if not cols:
            return f"line {self.line}, constant '{field}'"
        return f"line {self.line}, column " + "+".join(repr(c) for c in cols)

    def error(self, field: str, expected: str, found: str | None = None) -> FeedError:
        return FeedError(self.raw.document, self.where(field), expected, found=found)

    def cell(self, column: str) -> str | None:
        index = self.columns.get(column)
        if index is None or index >= len(self.record.cells):
            return None
        raw = self.record.cells[index]
        # Mappings only allow ASCII-compatible encodings: ASCII cells need no decoding.
        text = raw if raw.isascii() else _decode(raw, self.spec.format.encodings)
        if text is None:
            shown = self.record.cells[index].encode("latin-1").decode("ascii", "backslashreplace")
            expected = f"text in {' or '.join(self.spec.format.encodings)}"
            raise FeedError(
                self.raw.document, f"line {self.line}, column {column!r}", expected, found=shown
            )
        return text.strip() or None

    def cell_text(self, field: str) -> str | None:
        """The cell(s) of a field as written (several columns joined by ``-``), or None."""
        if field not in self._texts:
            parts = [self.cell(c) for c in self.spec.columns.get(field, ())]
            self._texts[field] = "-".join(p for p in parts if p) or None
        return self._texts[field]

    def constant(self, field: str) -> Any:
        return self.spec.constants.get(field)

    def constant_as(self, field: str, convert: Callable[[Any], _Value]) -> _Value | None:
        """A field's constant (when its cell is empty or it has no column), converted."""
        value = self.constant(field)
        return None if value is None else convert(value)

    # Typed values ----------------------------------------------------------------------

    def text(self, field: str) -> str | None:
        text = self.cell_text(field)
        if text is None:
            return self.constant_as(field, str)
        translated = self.spec.values[field].get(text) if field in self.spec.values else None
        return text if translated is None else str(translated)

    def required(self, field: str) -> str:
        text = self.text(field)
        if text is None:
            raise self.error(field, f"a value for '{field}'", "")
        return text

    def number(self, field: str) -> float | None:
        text = self.cell_text(field)
        if text is None:
            return self.constant_as(field, float)
        number = parse_number(text, self.spec.format.decimal)
        if number is None:
            mark = "a decimal comma" if self.spec.format.decimal == "," else "a decimal point"
            raise self.error(
                field, f"a number with {mark}, such as 1{self.spec.format.decimal}5", text
            )
        return number

    def when(self, field: str) -> datetime | None:
        value = self._datetime(field, day_only=False)
        try:
            return None if value is None else as_utc(value)  # no offset: the site's zone
        except TimeOutOfRange:
            raise self.error(field, f"a date-time {UTC_RANGE}", self.cell_text(field)) from None

    def required_when(self, field: str) -> datetime:
        value = self.when(field)
        if value is None:
            raise self.error(field, f"a date for '{field}'", "")
        return value

    def day(self, field: str) -> date | None:
        value = self._datetime(field, day_only=True)
        return None if value is None else value.date()

    def _datetime(self, field: str, day_only: bool) -> datetime | None:
        text = self.cell_text(field)
        if text is None:
            return None
        formats = self.spec.format.date_formats
        value = _parse_datetime(text, formats)
        if value is None:
            raise self.error(field, f"a date like {_date_example(formats, day_only)}", text)
        return value

    def flag(self, field: str) -> bool | None:
        text = self.cell_text(field)
        if text is None:
            return self.constant_as(field, bool)
        table = self.spec.values.get(field)
        translated = table.get(text) if table else None
        if isinstance(translated, bool):
            return translated
        if text.casefold() in _TRUE | _FALSE:
            return text.casefold() in _TRUE
        raise self.error(field, "yes or no (true/false, 1/0, oui/non, or a [values] entry)", text)

    def choice(self, field: str) -> str | None:
        text = self.cell_text(field)
        if text is None:
            return self.constant_as(field, str)
        table = self.spec.values.get(field)
        translated = table.get(text) if table else None
        if translated is not None:
            return str(translated)
        choices = self.spec.schema.fields[field].choices
        for choice in choices:
            if text.casefold() == choice.casefold():
                return choice
        raise self.error(field, f"one of {', '.join(choices)} (or a [values] entry)", text)

    def atc_list(self, field: str) -> tuple[str, ...]:
        text = self.text(field)
        if text is None:
            return ()
        sep = self.spec.format.list_separator
        codes = tuple(part.strip().upper() for part in text.split(sep) if part.strip())
        for code in codes:
            if not is_atc(code):
                raise self.error(field, "an ATC code such as C09AA05", code)
        return codes

    def content_id(self, prefix: str) -> str:
        """An id for exports without an id column, from what identifies the row's fact.

        Only identifying fields count (patient, code, time), so a corrected value or status
        in a later export replaces the fact instead of adding a second one.
        """
        cells = [f"{f}={self.text(f) or ''}" for f in _IDENTITY[self.spec.kind]]
        digest = hashlib.sha256("\x1f".join([self.spec.kind, *cells]).encode()).hexdigest()
        return f"{prefix}-{digest[:16]}"


# Facts from rows ------------------------------------------------------------------------------


def _flag(code: FlagCode, detail: str) -> Flag:
    return Flag(code=code, detail=detail)


def _given(**fields: Any) -> dict[str, Any]:
    """Keyword arguments without the empty ones, so the fact models' defaults apply."""
    return {name: value for name, value in fields.items() if value is not None}


def _patient(row: _Row) -> Patient:
    pid = row.required("patient_id")
    fields = _given(birth_date=row.day("birth_date"), sex=row.choice("sex"))
    return Patient(fact_id=pid, patient_id=pid, source=row.source, **fields)


def _stay(row: _Row) -> Stay:
    stay_id = row.required("stay_id")
    fields = _given(
        ward=row.text("ward"),
        bed=row.text("bed"),
        admit_time=row.when("admit_time"),
        discharge_time=row.when("discharge_time"),
        status=row.choice("status"),
    )
    return Stay(
        fact_id=stay_id,
        patient_id=row.required("patient_id"),
        source=row.source,
        stay_id=stay_id,
        **fields,
    )


def _drug(row: _Row) -> tuple[Coding, str | None, list[Flag]]:
    system, code, label = row.text("drug_system"), row.required("drug_code"), row.text("label")
    atc = (row.atc_list("atc") or (None,))[0]
    if atc is None:
        found = row.terminology.drug_atc(system, code)
        atc = found if found and is_atc(found) else row.spec.drug_codes.get(code)
    flags: list[Flag] = []
    by_name = None
    if atc is None and label and not row.terminology.drug_known(system, code):
        by_name = label_drug(
            row.terminology, [label], atc=None, codes=f"{system or 'LOCAL'}|{code}"
        )
    if by_name is not None and by_name.flags:  # no ATC from the code: the label gives one
        atc = by_name.atc
        flags.extend(by_name.flags)
    # A code the tables know to have no ATC (a device, a vaccine) is mapped, not flagged.
    elif atc is None and not row.terminology.drug_known(system, code):
        detail = (
            f"drug {system or 'LOCAL'}|{code} ({label or 'no label'}) has no ATC: not in the "
            f"terminology nor in [{row.spec.key}.drug_codes]"
        )
        flags.append(_flag(FlagCode.UNMAPPED_CODE, detail))
    return Coding(system=system, code=code, display=label), atc, flags


def _route(row: _Row) -> tuple[str | None, str | None, list[Flag]]:
    text = row.text("route")
    if text is None:
        return None, None, []
    route = row.spec.routes.get(text) or row.terminology.route(row.text("route_system"), text)
    if route is None:
        detail = f"route {text!r} is not in [{row.spec.key}.routes] nor in the terminology"
        return None, text, [_flag(FlagCode.UNMAPPED_CODE, detail)]
    return route, text, []


def _dose(row: _Row) -> tuple[float | None, str | None, list[Flag]]:
    dose, sent = row.number("dose"), row.text("dose_unit")
    unit = row.spec.dose_units.get(sent) or sent
    flags = [] if dose is not None else [_flag(FlagCode.MISSING_DOSE, "no dose in the row")]
    columns = "-".join(row.spec.columns.get("dose_unit", ()))
    where = f"column {columns}" if columns else f"[{row.spec.key}] dose_unit"
    canonical = row.terminology.canonical_unit(unit) if unit else None
    unknown = unknown_dose_unit(sent, canonical, where)
    return dose, unit, flags if unknown is None else [*flags, unknown]


def _frequency(row: _Row) -> tuple[float | None, list[Flag]]:
    per_day, text = row.number("frequency_per_day"), row.text("frequency_text")
    if per_day is None and text is not None:
        per_day = row.spec.frequencies.get(text)
        if per_day is None:
            detail = f"frequency {text!r} is not in [{row.spec.key}.frequencies]"
            return None, [_flag(FlagCode.MISSING_FREQUENCY, detail)]
    if per_day is None:
        return None, [_flag(FlagCode.MISSING_FREQUENCY, "no frequency in the row")]
    return float(per_day), []


def _order(row: _Row) -> MedicationOrder:
    order_id = row.required("order_id")
    drug, atc, drug_flags = _drug(row)
    dose, dose_unit, dose_flags = _dose(row)
    per_day, frequency_flags = _frequency(row)
    route, original_route, route_flags = _route(row)
    daily = dose * per_day if dose is not None and per_day is not None else None
    ingredients = code_ingredients(row.terminology, [(drug.system, drug.code)])
    if not ingredients and dose is not None:  # one substance: tablets (or mL) as its amount
        strength = label_strength(row.terminology, [drug.display], atc=atc, source="label")
        unit = row.terminology.canonical_unit(dose_unit) if dose_unit else None
        by_strength = dose_by_strength(dose, unit, daily, strength)
        if by_strength is not None:
            dose, dose_unit, daily = by_strength.dose, by_strength.dose_unit, by_strength.daily_dose
            dose_flags = [*dose_flags, by_strength.flag]
    fields = _given(
        stay_id=row.text("stay_id"),
        atc=atc,
        label=row.text("label"),
        dose=dose,
        dose_unit=dose_unit,
        original_dose=row.cell_text("dose"),
        original_dose_unit=row.cell_text("dose_unit"),
        frequency_per_day=per_day,
        frequency_text=row.text("frequency_text"),
        daily_dose=daily,
        as_needed=row.flag("as_needed"),
        route=route,
        original_route=original_route,
        start=row.when("start"),
        end=row.when("end"),
        status=row.choice("status"),
        prescriber=row.text("prescriber"),
    )
    flags = (*drug_flags, *dose_flags, *frequency_flags, *route_flags)
    return MedicationOrder(
        fact_id=order_id,
        patient_id=row.required("patient_id"),
        source=row.source,
        flags=flags,
        order_id=order_id,
        drug=drug,
        ingredients=ingredients,
        **fields,
    )


def _administration(row: _Row) -> MedicationAdministration:
    admin_id = row.text("administration_id") or row.content_id("administration")
    drug, atc, drug_flags = _drug(row)
    dose, dose_unit, dose_flags = _dose(row)
    # an administration's dose is optional, not a defect; a dose in an unknown unit is one
    unit_flags = [f for f in dose_flags if f.code is FlagCode.UNKNOWN_UNIT]
    route, _, route_flags = _route(row)
    fields = _given(
        order_id=row.text("order_id"),
        atc=atc,
        label=row.text("label"),
        dose=dose,
        dose_unit=dose_unit,
        route=route,
        status=row.choice("status"),
    )
    return MedicationAdministration(
        fact_id=admin_id,
        patient_id=row.required("patient_id"),
        source=row.source,
        flags=(*drug_flags, *unit_flags, *route_flags),
        administration_id=admin_id,
        drug=drug,
        time=row.required_when("time"),
        **fields,
    )


def _code_match(row: _Row, coding: Coding) -> CodeMatch:
    """The mapping's ``codes`` table first (local code → concept and the unit it implies), then
    the terminology."""
    local: LocalConcept | None = row.spec.codes.get(coding.code)
    if local is not None:
        return CodeMatch(coding, row.terminology.concepts[local.concept], local.unit)
    return match_code(row.terminology, [coding])


def _reading(row: _Row) -> Reading:
    """The value cell in the mapping's number syntax; the unit through its ``units`` table."""
    text, unit = row.text("value"), row.text("unit")
    number = None if text is None else parse_number(text, row.spec.format.decimal)
    spelling = row.spec.units.get(unit) or unit
    spellings = (spelling,) if spelling else ()
    return Reading(row.cell_text("value"), number, row.cell_text("unit"), spellings)


def _measured(row: _Row, prefix: Literal["lab", "observation"]) -> LabResult | Observation:
    """A lab or observation row; the concept decides the kind, ``prefix`` when unmapped."""
    system, code = row.text("code_system"), row.required("code")
    coding = Coding(system=system, code=code, display=row.text("display"))
    time = row.required_when("time")
    reference = None
    if prefix == "lab":
        reference = ReferenceRange(row.number("reference_low"), row.number("reference_high"))
    measurement = normalise(
        row.terminology,
        _code_match(row, coding),
        _reading(row),
        reference=reference,
        abnormal_flag=row.text("abnormal_flag") if prefix == "lab" else None,
        unmapped_kind=prefix,
    )
    fields = measurement.fields() | {
        "fact_id": row.text(f"{prefix}_id") or row.content_id(prefix),
        "patient_id": row.required("patient_id"),
        "source": row.source,
        "code": coding,
        "time": time,
    }
    return measurement.model(**fields)


def _lab(row: _Row) -> LabResult | Observation:
    return _measured(row, "lab")


def _observation(row: _Row) -> LabResult | Observation:
    return _measured(row, "observation")


def _condition(row: _Row) -> Condition:
    system, code = row.text("code_system"), row.required("code")
    icd10 = row.terminology.icd10(system, code) or row.spec.codes.get(code)
    flags = []
    if icd10 is None:
        where = f"[{row.spec.key}.codes]"
        detail = f"condition {system or 'LOCAL'}|{code} has no ICD-10: not in {where}"
        flags.append(_flag(FlagCode.UNMAPPED_CODE, detail))
    fid = row.text("condition_id") or row.content_id("condition")
    return Condition(
        fact_id=fid,
        patient_id=row.required("patient_id"),
        source=row.source,
        flags=tuple(flags),
        code=Coding(system=system, code=code, display=row.text("display")),
        **_given(
            icd10=icd10,
            onset=row.when("onset"),
            abatement=row.when("abatement"),
            clinical_status=row.choice("clinical_status"),
        ),
    )


def _allergy(row: _Row) -> Allergy:
    system, code = row.text("substance_system"), row.required("substance_code")
    atc = row.atc_list("atc") or row.terminology.allergy_atc(system, code)
    atc = atc or row.spec.substance_codes.get(code) or ()
    flags = []
    if not atc:
        detail = (
            f"allergy substance {system or 'LOCAL'}|{code} has no ATC: not in the terminology "
            f"nor in [{row.spec.key}.substance_codes]"
        )
        flags.append(_flag(FlagCode.UNMAPPED_CODE, detail))
    fid = row.text("allergy_id") or row.content_id("allergy")
    return Allergy(
        fact_id=fid,
        patient_id=row.required("patient_id"),
        source=row.source,
        flags=tuple(flags),
        substance=Coding(system=system, code=code, display=row.text("substance_display")),
        atc=tuple(atc),
        **_given(
            criticality=row.choice("criticality"),
            recorded=row.when("recorded"),
            clinical_status=row.choice("clinical_status"),
        ),
    )


def _pregnancy(row: _Row) -> Pregnancy:
    fid = row.text("pregnancy_id") or row.content_id("pregnancy")
    return Pregnancy(
        fact_id=fid,
        patient_id=row.required("patient_id"),
        source=row.source,
        recorded=row.required_when("recorded"),
        **_given(status=row.choice("status"), estimated_due_date=row.day("estimated_due_date")),
    )


_BUILDERS: dict[str, Callable[[_Row], Fact]] = {
    "patients": _patient,
    "stays": _stay,
    "orders": _order,
    "administrations": _administration,
    "labs": _lab,
    "observations": _observation,
    "conditions": _condition,
    "allergies": _allergy,
    "pregnancies": _pregnancy,
}


# The connector --------------------------------------------------------------------------------


class TabularConnector:
    """A CSV connector bound to one mapping (the synthetic layout by default).

    ``rows_per_message`` overrides the mapping's row-group size (1 = one message per row).
    """

    feed = feed

    def __init__(
        self,
        mapping: TabularMapping | str | Path | None = None,
        terminology: Terminology | None = None,
        rows_per_message: int | None = None,
    ) -> None:
        self.terminology = terminology or default_terminology()
        if mapping is None or isinstance(mapping, str | Path):
            mapping = load_mapping(mapping or SYNTHETIC_MAPPING, self.terminology)
        self.mapping = mapping
        self.rows_per_message = rows_per_message

    def sniff(self, head: bytes, name: str) -> bool:
        """A mapped file: its header fits a mapped layout (the name helps, but is not needed)."""
        first_line = head[: _SNIFF_BYTES + 1].split(b"\n", 1)[0]
        lines = _physical_lines(first_line.decode("latin-1"))
        layout = _identify(self.mapping, name, lines) if lines else None
        return layout is not None and (layout.fits or len(layout.header.cells) > 1)

    def split(self, document: str, content: bytes) -> Iterator[RawMessage]:
        """Row groups, each with the header; never raises (``parse`` reports bad content).

        The document is read one line at a time and each group is a slice of its bytes, so
        splitting holds one row group beside the document, never a copy of it.
        """
        lines = list(itertools.islice(_lines_from(content, 0), 1))  # the header line
        layout = _identify(self.mapping, document, lines) if lines else None
        if layout is None:  # empty or unrecognised: one message, so parse can say why
            yield self._message(document, content, 1, max(_line_count(content, 0), 1), None)
            return
        fmt = layout.spec.format
        size = self.rows_per_message or fmt.rows_per_message
        header = len(lines[0])  # bytes: the header is the first physical line
        groups = _row_groups(content, header, fmt.delimiter, size)
        for number, (first, last, start, stop) in enumerate(groups, 1):
            group = content[:header] + content[start:stop]
            named = number if fmt.exports == "replace" else None
            yield self._message(document, group, first, last, fmt.encodings[0], named)

    def _message(
        self,
        document: str,
        content: bytes,
        first: int,
        last: int,
        encoding: str | None,
        group: int | None = None,
    ) -> RawMessage:
        name = Path(document).name
        if group is None:  # unmapped, or exports that only add rows: named by their content
            message_id = f"{name}:{first}-{last}:{hashlib.sha256(content).hexdigest()[:12]}"
        else:  # see the module's docstring, "Versions"
            message_id = f"{self.mapping.name}|{name}#{group}"
        return RawMessage(
            feed=feed,
            document=document,
            content=content,
            message_id=message_id,
            position=f"line {first}",
            encoding=encoding,
        )

    def parse(self, raw: RawMessage) -> ParseOutcome:
        """Facts from the rows; a bad row is a located non-fatal error, a bad header is fatal."""
        lines = _physical_lines(raw.content.decode("latin-1"))
        layout = _identify(self.mapping, raw.document, lines) if lines else None
        if layout is None:
            raise self._unrecognised(raw, lines)
        columns, outcome = self._columns(raw, layout)
        offset = _first_line(raw.position, layout.header.end + 1) - (layout.header.end + 1)
        build = _BUILDERS[layout.spec.kind]
        delimiter = layout.spec.format.delimiter
        try:
            rows = _records(lines[layout.header.end :], delimiter, layout.header.end + 1)
            for record in rows:
                if not record.blank:
                    self._row(raw, layout, columns, record, record.line + offset, build, outcome)
        except _BrokenRecord as broken:
            outcome.errors.append(_broken_error(raw, layout, broken, offset))
        outcome.version_time = _latest_version(outcome)
        return outcome

    def _row(
        self,
        raw: RawMessage,
        layout: _Layout,
        columns: dict[str, int],
        record: _Record,
        line: int,
        build: Callable[[_Row], Fact],
        outcome: ParseOutcome,
    ) -> None:
        try:
            _check_width(raw, layout, record, line)
            row = _Row(layout.spec, columns, record, line, raw, self.terminology)
            fact = build(row)
            _check_keys(raw, fact, line)
            withdrawn = row.choice("record_status") in _WITHDRAWN
        except FeedError as error:
            outcome.errors.append(error)
        except ValidationError as error:  # a model constraint the mapping checks did not cover
            problem = error.errors()[0]
            expected = f"a valid {layout.spec.kind} row ({problem['loc']}: {problem['msg']})"
            outcome.errors.append(FeedError(raw.document, f"line {line}", expected))
        else:
            if withdrawn:  # the row says its fact was entered in error or deleted
                outcome.retractions.append(_retraction(fact))
            else:
                outcome.facts.append(fact)  # type: ignore[arg-type]

    def _unrecognised(self, raw: RawMessage, lines: list[str]) -> FeedError:
        files = "; ".join(f"{f.key}: {', '.join(f.patterns)}" for f in self.mapping.files)
        expected = f"a header row of a file of mapping {self.mapping.name!r} ({files})"
        found = lines[0].rstrip("\r\n") if lines else ""
        return FeedError(raw.document, "line 1", expected, found=found)

    def _columns(self, raw: RawMessage, layout: _Layout) -> tuple[dict[str, int], ParseOutcome]:
        """Column positions by name; a missing required column is fatal, another is reported."""
        spec, names = layout.spec, layout.names
        if names is None:
            expected = f"a header in {' or '.join(spec.format.encodings)}"
            raise FeedError(raw.document, "line 1", expected)
        index: dict[str, int] = {}
        for position, name in enumerate(names):
            index.setdefault(name, position)
        outcome = ParseOutcome()
        required = spec.required_columns()
        for field, cols in spec.columns.items():
            for column in cols:
                if column in index:
                    continue
                expected = (
                    f"a column {column!r} for '{field}' "
                    f"(mapping {Path(self.mapping.path).name} [{spec.key}.columns])"
                )
                error = FeedError(raw.document, "line 1", expected, found=",".join(names))
                if column in required:
                    raise error
                outcome.errors.append(error)
        return index, outcome


def _row_groups(
    content: bytes, header: int, delimiter: str, size: int
) -> Iterator[tuple[int, int, int, int]]:
    """Each group of ``size`` rows after the header line (``header`` bytes long): its first and
    last physical lines and its bytes (start, stop); blank lines ride along."""
    feed = _LineFeed(_lines_from(content, header))
    first, count, last = 2, 0, 1
    start = stop = header
    try:
        for record in _records(feed, delimiter, 2):
            last, stop = record.end, header + feed.offset
            count += 0 if record.blank else 1
            if count == size:
                yield first, last, start, stop
                first, count, start = last + 1, 0, stop
    except _BrokenRecord as broken:  # the rest goes in one message; parse locates the problem
        cut = header + feed.offset - sum(len(line) for line in feed.record)
        if broken.line > first:
            yield first, broken.line - 1, start, cut
        yield broken.line, broken.line - 1 + _line_count(content, cut), cut, len(content)
        return
    if count:
        yield first, last, start, stop


def _broken_error(
    raw: RawMessage, layout: _Layout, broken: _BrokenRecord, offset: int
) -> FeedError:
    """The located error of a record the CSV reader could not cut."""
    where = f"line {broken.line + offset}"
    if broken.field is None:
        expected = "well-formed CSV (closed quotes, no bare carriage return)"
        return FeedError(raw.document, where, expected, found=broken.reason)
    names = layout.names or []
    name = f" ({names[broken.field - 1]})" if broken.field <= len(names) else ""
    where += f", field {broken.field}{name}"
    first, last = broken.line + offset, broken.end + offset
    span = f"line {first} is" if first == last else f"lines {first} to {last} are"
    expected = (
        f"a closing '\"' for the quote opened in this field ({span} not read: the quote runs "
        "to the end of the file)"
    )
    return FeedError(raw.document, where, expected, found=broken.reason)


def _check_width(raw: RawMessage, layout: _Layout, record: _Record, line: int) -> None:
    """Extra filled cells mean an unquoted delimiter shifted the row: refuse to guess."""
    width = len(layout.header.cells)
    if len(record.cells) > width and any(c.strip() for c in record.cells[width:]):
        delimiter = layout.spec.format.delimiter
        expected = f"{width} cells like the header (an unquoted {delimiter!r} inside a cell?)"
        found = f"{len(record.cells)} cells"
        raise FeedError(raw.document, f"line {line}", expected, found=found)


def _check_keys(raw: RawMessage, fact: Fact, line: int) -> None:
    """Keys the store cannot hold (too long, a NUL byte) fail the row, not its row group."""
    problem = key_problem(fact)
    if problem is not None:
        raise FeedError(raw.document, f"line {line}", problem[0], found=problem[1])


def _retraction(fact: Fact) -> Retraction:
    return Retraction(
        kind=fact.kind, fact_id=fact.fact_id, patient_id=fact.patient_id, source=fact.source
    )


def _latest_version(outcome: ParseOutcome) -> datetime | None:
    """A row group's version time: the latest of its rows' (the export's, when all share it)."""
    sources = [f.source for f in outcome.facts] + [r.source for r in outcome.retractions]
    return max((s.version_time for s in sources if s.version_time), default=None)


def _first_line(position: str | None, default: int) -> int:
    match = re.fullmatch(r"line (\d+)", position or "")
    return int(match.group(1)) if match else default


# The module as a connector, with a default mapping -------------------------------------------

_active: dict[str, TabularConnector] = {}


def configure(
    mapping: TabularMapping | str | Path | None = None, rows_per_message: int | None = None
) -> TabularConnector:
    """Set the mapping the module-level ``sniff``/``split``/``parse`` use (``--mapping FILE``)."""
    _active["default"] = TabularConnector(mapping, rows_per_message=rows_per_message)
    return _active["default"]


def default_connector() -> TabularConnector:
    """The configured connector; first use loads ``$VIGIE_CSV_MAPPING`` or the synthetic one."""
    if "default" not in _active:
        configure(settings.value("csv_mapping"))
    return _active["default"]


def sniff(head: bytes, name: str) -> bool:
    return default_connector().sniff(head, name)


def split(document: str, content: bytes) -> Iterator[RawMessage]:
    return default_connector().split(document, content)


def parse(raw: RawMessage) -> ParseOutcome:
    return default_connector().parse(raw)
