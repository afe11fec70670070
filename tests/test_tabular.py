"""The CSV connector: mapping files, the French DPI example, the canonical layout, bad input.

Regenerate the golden file after a deliberate change (then read the diff before committing):
``.venv/bin/python -m tests.test_tabular``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import string
from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigie.connectors import base
from vigie.connectors.base import FeedError, ParseOutcome, RawMessage
from vigie.connectors.tabular import connector as tabular
from vigie.connectors.tabular.canonical import format_number
from vigie.connectors.tabular.connector import TabularConnector, write_canonical_csv
from vigie.connectors.tabular.mapping import (
    EXAMPLE_MAPPING,
    KINDS,
    SYNTHETIC_MAPPING,
    MappingError,
    load_mapping,
)
from vigie.facts import (
    Allergy,
    Coding,
    Condition,
    FlagCode,
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
from vigie.terminology import default_terminology
from vigie.terminology.tables import DATA_DIR as TERMINOLOGY_DIR

HERE = Path(__file__).parent
FRENCH_EXPORT = HERE / "data" / "csv" / "french-dpi"
GOLDEN = HERE / "golden" / "csv" / "french-dpi.json"


def read_file(connector: TabularConnector, path: Path) -> tuple[list[Any], list[str]]:
    """All facts and error texts of one file, the way ingest reads it."""
    facts, errors = [], []
    for raw in connector.split(path.name, path.read_bytes()):
        try:
            outcome = connector.parse(raw)
        except FeedError as error:
            errors.append(str(error))
            continue
        facts.extend(outcome.facts)
        errors.extend(str(e) for e in outcome.errors)
    return facts, errors


def read_text(
    name: str, text: str, connector: TabularConnector | None = None, encoding: str = "utf-8"
) -> ParseOutcome:
    connector = connector or TabularConnector()
    outcome = ParseOutcome()
    for raw in connector.split(name, text.encode(encoding)):
        outcome.extend(connector.parse(raw))
    return outcome


@pytest.fixture(scope="module")
def french() -> TabularConnector:
    return TabularConnector(EXAMPLE_MAPPING)


@pytest.fixture(scope="module")
def synthetic() -> TabularConnector:
    return TabularConnector()


# The French DPI export (latin-1, ';', decimal comma, dd/mm/yyyy HH:MM) ------------------------


def french_export_as_json() -> dict[str, Any]:
    connector = TabularConnector(EXAMPLE_MAPPING)
    result: dict[str, Any] = {}
    for path in sorted(FRENCH_EXPORT.glob("*.csv")):
        facts, errors = read_file(connector, path)
        result[path.name] = {
            "facts": [{"kind": f.kind, **f.model_dump(mode="json")} for f in facts],
            "errors": errors,
        }
    return result


def test_french_export_matches_golden() -> None:
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert french_export_as_json() == expected


def test_french_export_message_ids(french: TabularConnector) -> None:
    """``name = "example-dpi"`` (example-dpi.toml), the file's name, its only row group (each
    file of the export holds fewer rows than ``rows_per_message``)."""
    for path in sorted(FRENCH_EXPORT.glob("*.csv")):
        ids = [raw.message_id for raw in french.split(str(path), path.read_bytes())]
        assert ids == [f"example-dpi|{path.name}#1"], path.name


def test_french_export_key_values(french: TabularConnector) -> None:
    """The golden file's most important values, stated here so that a regeneration is read."""
    labs, errors = read_file(french, FRENCH_EXPORT / "BIOLOGIE_20240301.csv")
    assert errors == []
    potassium = labs[0]
    assert (potassium.concept, potassium.value, potassium.unit) == ("potassium", 5.9, "mmol/L")
    assert (potassium.original_value, potassium.original_unit) == ("5,9", "mmol/l")
    assert potassium.time == datetime(2024, 2, 29, 6, 30)
    assert (potassium.reference_low, potassium.reference_high, potassium.abnormal_flag) == (
        3.5,
        5.0,
        "H",
    )
    creatinine_mg_l = labs[4]  # 12,5 mg/L x 8.842 = 110.525 µmol/L, range converted too
    assert (creatinine_mg_l.value, creatinine_mg_l.unit) == (110.525, "µmol/L")
    assert creatinine_mg_l.reference_high == pytest.approx(90.1884)
    inr = labs[5]  # no unit in the export: the mapping's implied unit
    assert (inr.concept, inr.value, inr.unit, inr.original_unit) == ("inr", 3.4, "1", None)
    flags = {lab.original_value: [f.code for f in lab.flags] for lab in labs if lab.flags}
    assert flags == {
        "hémolysé": [FlagCode.NON_NUMERIC_VALUE],
        ">90": [FlagCode.NON_NUMERIC_VALUE],
        "95": [FlagCode.UNKNOWN_UNIT],  # mg/100ml
        "250": [FlagCode.UNMAPPED_CODE],  # FERRI
    }
    assert potassium.source.position == "line 2" and potassium.source.feed == "csv"


def test_french_orders(french: TabularConnector) -> None:
    orders, errors = read_file(french, FRENCH_EXPORT / "PRESCRIPTIONS_20240301.csv")
    assert errors == []
    by_id = {o.order_id: o for o in orders}
    ramipril = by_id["100231-1"]
    assert (ramipril.atc, ramipril.route, ramipril.original_route) == ("C09AA05", "oral", "per os")
    assert (ramipril.dose, ramipril.dose_unit, ramipril.daily_dose) == (5.0, "mg", 5.0)
    fluindione = by_id["100232-1"]  # site table code, decimal comma, dose unit table
    # "FLUINDIONE 20 mg cp séc", 0,75 cp: 15 mg through the label's strength
    assert (fluindione.atc, fluindione.dose, fluindione.dose_unit) == ("B01AA12", 15, "mg")
    assert (fluindione.original_dose, fluindione.original_dose_unit) == ("0,75", "cp")
    assert [f.code for f in fluindione.flags] == [FlagCode.DOSE_FROM_STRENGTH]
    assert fluindione.status == "on-hold"
    methotrexate = by_id["100232-2"]
    assert methotrexate.frequency_per_day == pytest.approx(1 / 7, rel=1e-5)
    assert methotrexate.label == "METHOTREXATE 2,5 mg cp"  # quoted cell, comma kept
    assert by_id["100232-3"].status == "stopped"  # "Arrêtée" read as latin-1
    assert by_id["100231-4"].as_needed is True and by_id["100231-4"].route == "iv"
    magistral = by_id["100232-4"]
    assert magistral.atc is None and magistral.route is None
    unmapped, unknown = FlagCode.UNMAPPED_CODE, FlagCode.UNKNOWN_UNIT
    assert [f.code for f in magistral.flags] == [unmapped, unknown, unmapped]
    assert "LIV9999" in magistral.flags[0].detail
    # "supp" is neither in unit_aliases.csv nor in the mapping's [dose_units]: no dose rule
    # can read the dose, which the flag says with the column it was read from
    assert magistral.flags[1].detail.startswith("column UNITE_DOSE: unit 'supp' ")


def test_french_export_other_kinds(french: TabularConnector) -> None:
    facts = {p.name.split("_")[0]: read_file(french, p)[0] for p in FRENCH_EXPORT.glob("*.csv")}
    assert [p.sex for p in facts["PATIENTS"]] == [Sex.FEMALE, Sex.MALE, Sex.FEMALE]
    assert facts["SEJOURS"][2].status == "finished"
    assert [a.atc for a in facts["ALLERGIES"]] == [("J01C",), ("M01A",), ()]
    assert [c.icd10 for c in facts["DIAGNOSTICS"]] == ["I50.9", "N18.4", "M05.9"]
    assert [o.concept for o in facts["CONSTANTES"]] == ["weight", "height", "weight", "qtc"]
    assert facts["GROSSESSES"][0].estimated_due_date == date(2024, 9, 15)
    assert [a.status for a in facts["ADMINISTRATIONS"]] == ["completed", "completed", "not-done"]


def test_content_ids_are_stable_and_distinct(french: TabularConnector) -> None:
    path = FRENCH_EXPORT / "BIOLOGIE_20240301.csv"
    first = [f.fact_id for f in read_file(french, path)[0]]
    again = [f.fact_id for f in read_file(TabularConnector(EXAMPLE_MAPPING), path)[0]]
    assert first == again and len(set(first)) == len(first)
    corrected = path.read_bytes().replace(b";5,9;", b";5,8;")  # a corrected result
    [raw] = french.split(path.name, corrected)
    facts = french.parse(raw).facts
    assert facts[0].value == 5.8 and [f.fact_id for f in facts] == first


# Splitting ------------------------------------------------------------------------------------

ORDERS_HEADER = ",".join(KINDS["orders"].canonical)


def order_line(order_id: str, start: str = "2024-03-01T08:00", dose: str = "500") -> str:
    return (
        f"{order_id},p1,s1,ATC,N02BE01,N02BE01,PARACETAMOL,{dose},mg,3,3/j,false,oral,"
        f"{start},,active,dr"
    )


def orders_csv(count: int) -> str:
    return "\n".join([ORDERS_HEADER, *(order_line(f"o{i}") for i in range(count))]) + "\n"


def test_split_keeps_header_and_locates_groups() -> None:
    connector = TabularConnector(rows_per_message=2)
    raws = list(connector.split("orders.csv", orders_csv(5).encode()))
    assert [r.position for r in raws] == ["line 2", "line 4", "line 6"]
    # <mapping name>|<file name>#<row group>: the mapping names the DPI (vigie-synthetic.toml)
    assert [r.message_id for r in raws] == [
        "vigie-synthetic|orders.csv#1",
        "vigie-synthetic|orders.csv#2",
        "vigie-synthetic|orders.csv#3",
    ]
    assert all(r.content.decode().startswith(ORDERS_HEADER + "\n") for r in raws)
    facts = [f for r in raws for f in connector.parse(r).facts]
    assert [f.order_id for f in facts] == [f"o{i}" for i in range(5)]
    assert [f.source.position for f in facts] == [f"line {n}" for n in range(2, 7)]


def test_default_row_group_is_a_thousand_rows(synthetic: TabularConnector) -> None:
    raws = list(synthetic.split("orders.csv", orders_csv(2500).encode()))
    assert [r.position for r in raws] == ["line 2", "line 1002", "line 2002"]


def test_a_re_export_under_the_same_name_is_a_new_version(synthetic: TabularConnector) -> None:
    content = orders_csv(3).encode()
    [first] = synthetic.split("exports/orders.csv", content)
    [again] = synthetic.split("orders.csv", content)
    assert (first.message_id, first.sha256) == (again.message_id, again.sha256)  # a duplicate
    [changed] = synthetic.split("orders.csv", content.replace(b"dr\n", b"dr2\n", 1))
    assert changed.message_id == first.message_id and changed.sha256 != first.sha256
    [other] = synthetic.split("orders_20240302.csv", content)
    assert other.message_id != first.message_id  # another export


# Versions: version_time and record_status columns -------------------------------------------

VERSIONED_MAPPING = """
name = "dpi-x"
[orders]
file = "ORDERS*.csv"
[orders.columns]
order_id = "ID"
patient_id = "IPP"
drug_code = "CODE"
dose = "DOSE"
version_time = "UPDATED"
record_status = "STATE"
[orders.values.record_status]
"OK" = "current"
"CANCELLED" = "entered-in-error"
"""
VERSIONED_ROWS = "ID,IPP,CODE,DOSE,UPDATED,STATE\n{rows}"


@pytest.fixture
def versioned(tmp_path: Path) -> TabularConnector:
    path = tmp_path / "versioned.toml"
    path.write_text(VERSIONED_MAPPING, encoding="utf-8")
    return TabularConnector(path)


def parse_text(connector: TabularConnector, name: str, text: str) -> tuple[RawMessage, Any]:
    [raw] = connector.split(name, text.encode())
    return raw, connector.parse(raw)


def test_version_time_is_the_rows_column(versioned: TabularConnector) -> None:
    rows = "o1,p1,N02BE01,500,2024-03-01T08:00,OK\no2,p1,N02BE01,1000,2024-03-01T09:30,OK\n"
    raw, outcome = parse_text(versioned, "ORDERS_1.csv", VERSIONED_ROWS.format(rows=rows))
    assert raw.message_id == "dpi-x|ORDERS_1.csv#1"
    times = [order.source.version_time for order in outcome.facts]
    assert times == [datetime(2024, 3, 1, 8, 0), datetime(2024, 3, 1, 9, 30)]
    assert outcome.version_time == datetime(2024, 3, 1, 9, 30)  # the group's latest row


def test_without_a_version_time_column_there_is_none(synthetic: TabularConnector) -> None:
    [raw] = synthetic.split("orders.csv", orders_csv(2).encode())
    outcome = synthetic.parse(raw)
    assert outcome.version_time is None
    assert {order.source.version_time for order in outcome.facts} == {None}


def test_a_cancelled_row_is_a_retraction(versioned: TabularConnector) -> None:
    rows = "o1,p1,N02BE01,500,2024-03-01T08:00,OK\no2,p1,N02BE01,1000,2024-03-02T10:00,CANCELLED\n"
    _, outcome = parse_text(versioned, "ORDERS_1.csv", VERSIONED_ROWS.format(rows=rows))
    assert [order.fact_id for order in outcome.facts] == ["o1"]
    [retraction] = outcome.retractions
    assert (retraction.kind, retraction.fact_id, retraction.patient_id) == (
        "medication_order",
        "o2",
        "p1",
    )
    assert retraction.source.position == "line 3"
    assert retraction.source.version_time == datetime(2024, 3, 2, 10, 0)


def test_a_record_status_the_mapping_does_not_know_is_located(
    versioned: TabularConnector,
) -> None:
    rows = "o1,p1,N02BE01,500,2024-03-01T08:00,GONE\n"
    _, outcome = parse_text(versioned, "ORDERS_1.csv", VERSIONED_ROWS.format(rows=rows))
    assert (outcome.facts, outcome.retractions) == ([], [])
    [error] = outcome.errors
    assert error.position == "line 2, column 'STATE'" and error.found == "GONE"
    assert "current, entered-in-error, deleted" in error.expected


def test_a_bad_version_time_is_located(versioned: TabularConnector) -> None:
    rows = "o1,p1,N02BE01,500,yesterday,OK\n"
    _, outcome = parse_text(versioned, "ORDERS_1.csv", VERSIONED_ROWS.format(rows=rows))
    [error] = outcome.errors
    assert error.position == "line 2, column 'UPDATED'" and error.found == "yesterday"


def test_a_corrected_re_export_is_a_later_version(versioned: TabularConnector) -> None:
    original = VERSIONED_ROWS.format(rows="o1,p1,N02BE01,500,2024-03-01T08:00,OK\n")
    corrected = VERSIONED_ROWS.format(rows="o1,p1,N02BE01,250,2024-03-01T11:00,OK\n")
    first, before = parse_text(versioned, "ORDERS_1.csv", original)
    second, after = parse_text(versioned, "ORDERS_1.csv", corrected)
    assert first.message_id == second.message_id and first.sha256 != second.sha256
    assert (before.version_time, after.version_time) == (
        datetime(2024, 3, 1, 8, 0),
        datetime(2024, 3, 1, 11, 0),
    )
    assert [(o.fact_id, o.dose) for o in after.facts] == [("o1", 250)]


def test_one_message_per_row() -> None:
    connector = TabularConnector(rows_per_message=1)
    text = orders_csv(3).replace("o1,", "o1,", 1)
    raws = list(connector.split("orders.csv", text.encode()))
    assert [r.position for r in raws] == ["line 2", "line 3", "line 4"]
    assert connector.parse(raws[1]).facts[0].source.position == "line 3"


def test_quoted_newlines_crlf_and_blank_lines() -> None:
    text = (
        ORDERS_HEADER
        + "\r\n"
        + order_line("o1").replace("PARACETAMOL", '"PARA\r\nCETAMOL"')
        + "\r\n\r\n"
        + order_line("o2")
        + "\r\n"
    )
    connector = TabularConnector(rows_per_message=1)
    raws = list(connector.split("orders.csv", text.encode()))
    facts = [f for r in raws for f in connector.parse(r).facts]
    assert [f.label for f in facts] == ["PARA\r\nCETAMOL", "PARACETAMOL"]
    assert [f.source.position for f in facts] == ["line 2", "line 5"]


# Bad rows and bad headers ---------------------------------------------------------------------


def test_bad_date_is_located_and_other_rows_load() -> None:
    lines = [order_line(f"o{i}") for i in range(12)]
    lines[10] = order_line("o10", start="32/13/2024")
    outcome = read_text("orders.csv", "\n".join([ORDERS_HEADER, *lines]) + "\n")
    assert [str(e) for e in outcome.errors] == [
        "orders.csv: line 12, column 'start': expected a date like 2024-03-01T08:00, "
        "got '32/13/2024'"
    ]
    assert len(outcome.facts) == 11


def test_times_become_naive_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """An offset is honoured; a time without one is in the site's zone (VIGIE_TIMEZONE)."""
    monkeypatch.setenv("VIGIE_TIMEZONE", "Europe/Paris")
    base.site_timezone.cache_clear()
    try:
        rows = [
            order_line("o1", start="2024-07-01T12:00"),
            order_line("o2", start="2024-07-01T12:00-04:00"),
        ]
        outcome = read_text("orders.csv", "\n".join([ORDERS_HEADER, *rows]))
    finally:
        base.site_timezone.cache_clear()
    assert [f.start for f in outcome.facts] == [datetime(2024, 7, 1, 10), datetime(2024, 7, 1, 16)]


def test_bad_number_missing_value_bad_choice() -> None:
    rows = [
        order_line("o1", dose='"1,5"'),
        order_line("", dose="2"),
        order_line("o3").replace(",active,", ",running,"),
        order_line("o4"),
    ]
    outcome = read_text("orders.csv", "\n".join([ORDERS_HEADER, *rows]))
    assert [str(e) for e in outcome.errors] == [
        "orders.csv: line 2, column 'dose': expected a number with a decimal point, such as "
        "1.5, got '1,5'",
        "orders.csv: line 3, column 'order_id': expected a value for 'order_id', got ''",
        "orders.csv: line 4, column 'status': expected one of active, on-hold, completed, "
        "stopped, cancelled, draft, unknown (or a [values] entry), got 'running'",
    ]
    assert [f.order_id for f in outcome.facts] == ["o4"]


def test_unquoted_delimiter_shifting_a_row_is_refused() -> None:
    row = order_line("o1").replace("PARACETAMOL", "PARACETAMOL, 500")
    outcome = read_text("orders.csv", "\n".join([ORDERS_HEADER, row, order_line("o2")]))
    assert [str(e) for e in outcome.errors] == [
        "orders.csv: line 2: expected 17 cells like the header (an unquoted ',' inside a "
        "cell?), got '18 cells'"
    ]
    assert [f.order_id for f in outcome.facts] == ["o2"]


def test_missing_required_column_is_fatal_and_named(synthetic: TabularConnector) -> None:
    header = ORDERS_HEADER.replace("drug_code,", "")
    [raw] = synthetic.split("orders.csv", f"{header}\no1,p1\n".encode())
    with pytest.raises(FeedError) as caught:
        synthetic.parse(raw)
    assert str(caught.value).startswith(
        "orders.csv: line 1: expected a column 'drug_code' for 'drug_code' "
        "(mapping vigie-synthetic.toml [orders.columns])"
    )


def test_missing_optional_column_is_reported_and_rows_load() -> None:
    header = "patient_id,birth_date"
    outcome = read_text("patients.csv", f"{header}\np1,1940-05-01\n")
    assert [str(e) for e in outcome.errors] == [
        "patients.csv: line 1: expected a column 'sex' for 'sex' (mapping vigie-synthetic.toml "
        "[patients.columns]), got 'patient_id,birth_date'"
    ]
    assert outcome.facts[0].birth_date == date(1940, 5, 1)


def test_wrong_encoding_is_located_and_other_rows_load() -> None:
    text = orders_csv(3).replace("PARACETAMOL", "PARACÉTAMOL", 1)  # row 2 only
    outcome = read_text("orders.csv", text, encoding="latin-1")  # mapping says UTF-8
    assert [str(e) for e in outcome.errors] == [
        "orders.csv: line 2, column 'label': expected text in utf-8-sig, got 'PARAC\\\\xc9TAMOL'"
    ]
    assert [f.order_id for f in outcome.facts] == ["o1", "o2"]


def test_header_in_wrong_encoding_is_fatal(tmp_path: Path) -> None:
    mapping = tmp_path / "cp.toml"
    mapping.write_text(
        '[defaults]\nencoding = "utf-8"\n[patients]\nfile = "p*.csv"\n'
        '[patients.columns]\npatient_id = "NUMÉRO"\n',
        encoding="utf-8",
    )
    connector = TabularConnector(mapping)
    [raw] = connector.split("p.csv", "NUMÉRO\n1\n".encode("latin-1"))
    with pytest.raises(FeedError, match=r"p\.csv: line 1: expected a header in utf-8"):
        connector.parse(raw)


def test_broken_csv_is_located_and_earlier_rows_load() -> None:
    text = orders_csv(2) + order_line("o9").replace("dr", "d\rr") + "\n" + order_line("o10")
    outcome = read_text("orders.csv", text)
    assert [f.order_id for f in outcome.facts] == ["o0", "o1"]
    assert str(outcome.errors[0]).startswith("orders.csv: line 4: expected well-formed CSV")


def test_unclosed_quote_is_located_instead_of_swallowing_the_rest() -> None:
    quoted = order_line("o2").replace("PARACETAMOL", '"PARACETAMOL 500')  # never closed
    text = orders_csv(2) + quoted + "\n" + order_line("o3") + "\n" + order_line("o4") + "\n"
    for rows in (None, 1):
        outcome = read_text("orders.csv", text, TabularConnector(rows_per_message=rows))
        assert [f.order_id for f in outcome.facts] == ["o0", "o1"]
        (error,) = outcome.errors
        assert str(error) == (
            "orders.csv: line 4, field 7 (label): expected a closing '\"' for the quote opened "
            "in this field (lines 4 to 6 are not read: the quote runs to the end of the file), "
            "got "
            "'\"PARACETAMOL 500,500,mg,3,3/j,false,oral,2024-03-01T08:00,,…'"
        )


def test_unrecognised_and_empty_documents(synthetic: TabularConnector) -> None:
    for name, content in (("notes.csv", b"a,b,c\n1,2,3\n"), ("orders.csv", b"")):
        [raw] = synthetic.split(name, content)
        with pytest.raises(FeedError, match=rf"{name}: line 1: expected a header row"):
            synthetic.parse(raw)


# Sniffing and the module as a connector -------------------------------------------------------


def test_sniff(synthetic: TabularConnector, french: TabularConnector) -> None:
    assert synthetic.sniff(orders_csv(1).encode(), "export-0001.csv")  # header alone
    assert synthetic.sniff(b"patient_id,birth_date,sex\n", "x.txt")
    assert not synthetic.sniff(b"MSH|^~\\&|LAB|...\r", "adt.hl7")
    assert not synthetic.sniff(b'{"resourceType": "Bundle"}', "b.json")
    assert not synthetic.sniff(b"a,b,c\n", "notes.csv")
    head = (FRENCH_EXPORT / "BIOLOGIE_20240301.csv").read_bytes()[:200]
    assert french.sniff(head, "BIOLOGIE_20240301.csv")
    assert french.sniff(head, "renamed.csv")  # header matches a mapped layout
    assert not synthetic.sniff(head, "renamed.csv")


def test_module_is_a_connector_with_a_configurable_mapping() -> None:
    assert tabular.feed == "csv"
    try:
        tabular.configure(EXAMPLE_MAPPING)
        path = FRENCH_EXPORT / "PATIENTS_20240301.csv"
        [raw] = tabular.split(path.name, path.read_bytes())
        assert isinstance(raw, RawMessage) and raw.feed == "csv"
        assert len(tabular.parse(raw).facts) == 3
        assert tabular.sniff(path.read_bytes(), path.name)
    finally:
        tabular.configure(None)
    assert Path(tabular.default_connector().mapping.path) == SYNTHETIC_MAPPING


# Mapping files --------------------------------------------------------------------------------

GOOD_ORDERS = """
[orders]
file = "rx*.csv"
[orders.columns]
order_id = "ID"
patient_id = "IPP"
drug_code = "CODE"
"""


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[prescriptions]\nfile = 'x'\n", "bad.toml: prescriptions: expected a section"),
        (
            GOOD_ORDERS + 'strat = "DEBUT"\n',
            "bad.toml: orders.columns: expected a field of orders (did you mean 'start'?), "
            "got 'strat'",
        ),
        (
            GOOD_ORDERS.replace('drug_code = "CODE"\n', ""),
            "bad.toml: orders.columns: expected a column for the required field 'drug_code'",
        ),
        (
            GOOD_ORDERS + "[orders.drug_codes]\nX1 = 'paracetamol'\n",
            "bad.toml: orders.drug_codes.X1: expected an ATC code such as C09AA05, "
            "got 'paracetamol'",
        ),
        (
            "[labs]\nfile = 'b.csv'\n[labs.columns]\npatient_id = 'P'\ncode = 'C'\n"
            "time = 'T'\n[labs.codes]\nK = 'kalemia'\n",
            "bad.toml: labs.codes.K: expected a concept of the terminology",
        ),
        (GOOD_ORDERS + "[orders.codes]\nK = 'potassium'\n", "bad.toml: orders.codes: expected"),
        ("[defaults]\ndate_formats = ['dd/mm/yyyy']\n" + GOOD_ORDERS, "defaults.date_formats"),
        ("[defaults]\nencoding = 'latin-9000'\n" + GOOD_ORDERS, "defaults.encoding"),
        ("[defaults]\nencoding = 'utf-16'\n" + GOOD_ORDERS, "defaults.encoding"),
        ("[defaults]\ndecimal = ';'\n" + GOOD_ORDERS, "defaults.decimal"),
        (GOOD_ORDERS + "[orders.values.status]\nX = 'running'\n", "orders.values.status.X"),
        ('drug_table = "missing.csv"\n' + GOOD_ORDERS, "bad.toml: drug_table: expected a read"),
        (GOOD_ORDERS + "[orders.constants]\ndose = 'ten'\n", "orders.constants.dose"),
        ("[orders\nfile = 'x'", "bad.toml: expected valid TOML"),
        ("name = 'empty'\n", "bad.toml: expected at least one section"),
        (GOOD_ORDERS.replace('file = "rx*.csv"', ""), "bad.toml: orders.file: expected"),
        (
            "[defaults]\nexports = 'sometimes'\n" + GOOD_ORDERS,
            'defaults.exports: expected "replace" (snapshots) or "add" (new rows only)',
        ),
    ],
)
def test_mapping_errors_name_the_file_and_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml, encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        load_mapping(path)
    assert isinstance(caught.value, FeedError)
    assert str(caught.value).startswith(str(tmp_path / "bad.toml"))
    assert message in str(caught.value)


def test_shipped_mappings_load_and_cover_every_kind() -> None:
    for path in (SYNTHETIC_MAPPING, EXAMPLE_MAPPING):
        assert sorted(f.kind for f in load_mapping(path).files) == sorted(KINDS)
    synthetic = load_mapping(SYNTHETIC_MAPPING)
    for spec in synthetic.files:  # the canonical layout maps each field to its own column
        assert {f: c[0] for f, c in spec.columns.items()} == {
            f: f for f in KINDS[spec.kind].canonical
        }


def test_several_files_of_one_kind_and_joined_columns(tmp_path: Path) -> None:
    path = tmp_path / "two.toml"
    path.write_text(
        """
[[labs]]
file = "chimie*.csv"
[labs.columns]
patient_id = "P"
code = "C"
value = "V"
unit = "U"
time = "T"
[labs.constants]
code_system = "LOINC"
[[labs]]
file = "hemato*.csv"
delimiter = ";"
[labs.columns]
lab_id = ["REQ", "N"]
patient_id = "P"
code = "C"
value = "V"
time = "T"
[labs.constants]
code_system = "LOINC"
unit = "G/L"
""",
        encoding="utf-8",
    )
    connector = TabularConnector(path)
    chemistry = read_text("chimie1.csv", "P,C,V,U,T\np1,2823-3,4.1,mmol/L,2024-03-01\n", connector)
    haematology = read_text(
        "hemato.csv", "REQ;N;P;C;V;T\nR7;2;p1;777-3;150;2024-03-01\n", connector
    )
    assert chemistry.facts[0].value == 4.1 and chemistry.errors == []
    platelets = haematology.facts[0]
    assert (platelets.fact_id, platelets.concept, platelets.unit) == ("R7-2", "platelets", "G/L")


# The canonical layout round-trips -------------------------------------------------------------

_SOURCE = Source(feed="synthetic", document="generated")
_ids = st.text(string.ascii_letters + string.digits + "-_.", min_size=1, max_size=10)
_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Zl", "Zp"))
    | st.sampled_from(list(',;"|\n\r\t ')),
    max_size=20,
).map(str.strip)
_opt_text = _text.map(lambda t: t or None)
_times = st.datetimes(datetime(1900, 1, 2), datetime(2100, 1, 1))  # facts: naive UTC
_opt_times = st.none() | _times
_numbers = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
_atc = st.sampled_from(["N02BE01", "C09AA05", "B01AB05", "A10BA02", "J01CA04", "L01BA01"])
_routes = st.sampled_from(["oral", "iv", "sc", "im", "transdermal"])


def _lab_codes(kind: str) -> list[tuple[str, str, str, str]]:
    """(system, code, concept, canonical unit) for the terminology's codes of one kind."""
    term = default_terminology()
    rows = (
        line
        for line in (TERMINOLOGY_DIR / "lab_codes.csv").read_text(encoding="utf-8").splitlines()
        if not line.startswith("#")
    )
    found = []
    for row in csv.DictReader(rows):
        concept = term.lab_concept(row["system"], row["code"])
        if concept is not None and concept.kind == kind:
            found.append((row["system"], row["code"], concept.name, concept.unit))
    return found


@st.composite
def _patients(draw: st.DrawFn) -> Patient:
    pid = draw(_ids)
    born = draw(st.none() | st.dates(date(1900, 1, 1), date(2030, 1, 1)))
    return Patient(
        fact_id=pid, patient_id=pid, source=_SOURCE, birth_date=born, sex=draw(st.sampled_from(Sex))
    )


@st.composite
def _stays(draw: st.DrawFn) -> Stay:
    sid = draw(_ids)
    return Stay(
        fact_id=sid,
        patient_id=draw(_ids),
        source=_SOURCE,
        stay_id=sid,
        ward=draw(_opt_text),
        bed=draw(_opt_text),
        admit_time=draw(_opt_times),
        discharge_time=draw(_opt_times),
        status=draw(st.sampled_from(KINDS["stays"].fields["status"].choices)),
    )


def _drug(draw: st.DrawFn) -> dict[str, Any]:
    label = draw(_opt_text)
    system = draw(st.sampled_from([None, "ATC", "CIS", "UCD", "LOCAL"]))
    code = draw(_ids)
    return {"drug": Coding(system=system, code=code, display=label), "label": label}


@st.composite
def _orders(draw: st.DrawFn, complete: bool = True) -> MedicationOrder:
    oid = draw(_ids)
    dose = draw(_numbers if complete else st.none() | _numbers)
    per_day = draw(st.floats(0, 24) if complete else st.none() | st.floats(0, 24))
    route = draw(_routes if complete else st.none() | _routes)
    dose_unit = draw(st.sampled_from(["mg", "g", "µg", "IU", "mL", "tablet"]))
    return MedicationOrder(
        fact_id=oid,
        patient_id=draw(_ids),
        source=_SOURCE,
        order_id=oid,
        stay_id=draw(st.none() | _ids),
        **_drug(draw),
        atc=draw(_atc if complete else st.none() | _atc),
        dose=dose,
        dose_unit=dose_unit,
        original_dose=None if dose is None else format_number(dose),
        original_dose_unit=dose_unit,
        frequency_per_day=per_day,
        frequency_text=draw(_opt_text),
        daily_dose=None if dose is None or per_day is None else dose * per_day,
        as_needed=draw(st.booleans()),
        route=route,
        original_route=route,
        start=draw(_opt_times),
        end=draw(_opt_times),
        status=draw(st.sampled_from(KINDS["orders"].fields["status"].choices)),
        prescriber=draw(_opt_text),
    )


@st.composite
def _administrations(draw: st.DrawFn) -> MedicationAdministration:
    aid = draw(_ids)
    return MedicationAdministration(
        fact_id=aid,
        patient_id=draw(_ids),
        source=_SOURCE,
        administration_id=aid,
        order_id=draw(st.none() | _ids),
        **_drug(draw),
        atc=draw(_atc),
        dose=draw(st.none() | _numbers),
        dose_unit=draw(st.none() | st.sampled_from(["mg", "g", "mL"])),
        route=draw(st.none() | _routes),
        time=draw(_times),
        status=draw(st.sampled_from(KINDS["administrations"].fields["status"].choices)),
    )


def _measurement(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A measurement as the reader makes it: converted by the terminology, originals kept."""
    system, code, concept, unit = draw(st.sampled_from(_lab_codes(kind)))
    term = default_terminology()
    received = draw(_numbers)
    value, canonical = term.to_canonical(concept, received, unit)
    return {
        "fact_id": draw(_ids),
        "patient_id": draw(_ids),
        "source": _SOURCE,
        "concept": concept,
        "code": Coding(system=system, code=code),
        "value": value,
        "unit": canonical,
        "original_value": format_number(received),
        "original_unit": unit,
        "time": draw(_times),
    }


@st.composite
def _labs(draw: st.DrawFn) -> LabResult:
    fields = _measurement(draw, "lab")
    term = default_terminology()

    def reference() -> float | None:
        limit = draw(st.none() | _numbers)
        return (
            None
            if limit is None
            else term.to_canonical(fields["concept"], limit, fields["unit"])[0]
        )

    return LabResult(**fields, reference_low=reference(), reference_high=reference())


@st.composite
def _observations(draw: st.DrawFn) -> Observation:
    return Observation(**_measurement(draw, "observation"))


@st.composite
def _conditions(draw: st.DrawFn) -> Condition:
    code = draw(st.sampled_from(["N18.4", "I50.9", "E11", "K92.0", "O09.9"]))
    return Condition(
        fact_id=draw(_ids),
        patient_id=draw(_ids),
        source=_SOURCE,
        code=Coding(system="http://hl7.org/fhir/sid/icd-10", code=code, display=draw(_opt_text)),
        icd10=code,
        onset=draw(_opt_times),
        abatement=draw(_opt_times),
        clinical_status=draw(
            st.sampled_from(KINDS["conditions"].fields["clinical_status"].choices)
        ),
    )


@st.composite
def _allergies(draw: st.DrawFn) -> Allergy:
    fields = KINDS["allergies"].fields
    return Allergy(
        fact_id=draw(_ids),
        patient_id=draw(_ids),
        source=_SOURCE,
        substance=Coding(
            system=draw(st.sampled_from(["LOCAL", None])), code=draw(_ids), display=draw(_opt_text)
        ),
        atc=tuple(draw(st.lists(st.sampled_from(["J01C", "J01CA04", "M01A", "N02"]), min_size=1))),
        criticality=draw(st.sampled_from(fields["criticality"].choices)),
        recorded=draw(_opt_times),
        clinical_status=draw(st.sampled_from(fields["clinical_status"].choices)),
    )


@st.composite
def _pregnancies(draw: st.DrawFn) -> Pregnancy:
    return Pregnancy(
        fact_id=draw(_ids),
        patient_id=draw(_ids),
        source=_SOURCE,
        status=draw(st.sampled_from(KINDS["pregnancies"].fields["status"].choices)),
        recorded=draw(_times),
        estimated_due_date=draw(st.none() | st.dates(date(2000, 1, 1), date(2040, 1, 1))),
    )


_complete_facts = st.lists(
    st.one_of(
        _patients(),
        _stays(),
        _orders(),
        _administrations(),
        _labs(),
        _observations(),
        _conditions(),
        _allergies(),
        _pregnancies(),
    ),
    max_size=12,
)


def _comparable(facts: Iterable[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Facts without their source, in a stable order (the reader reads kind by kind)."""
    rows = [(f.kind, f.model_dump(exclude={"source"})) for f in facts]
    return sorted(rows, key=lambda row: row[0])


def _read_directory(directory: Path) -> tuple[list[Any], list[str]]:
    connector = TabularConnector()
    facts, errors = [], []
    for path in sorted(directory.glob("*.csv")):
        more, more_errors = read_file(connector, path)
        facts.extend(more)
        errors.extend(more_errors)
    return facts, errors


_EXAMPLES = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.property
@_EXAMPLES
@given(facts=_complete_facts)
def test_canonical_layout_round_trips(
    tmp_path_factory: pytest.TempPathFactory, facts: list
) -> None:
    directory = tmp_path_factory.mktemp("canonical")
    write_canonical_csv(facts, directory)
    read, errors = _read_directory(directory)
    assert errors == []
    assert _comparable(read) == _comparable(facts)


@pytest.mark.property
@_EXAMPLES
@given(facts=st.lists(_orders(complete=False), max_size=6))
def test_canonical_layout_is_a_fixed_point_for_flagged_facts(
    tmp_path_factory: pytest.TempPathFactory, facts: list
) -> None:
    """Facts with flags (no ATC, no dose...) read, written and read again do not change."""
    first_dir, second_dir = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    write_canonical_csv(facts, first_dir)
    once, errors = _read_directory(first_dir)
    write_canonical_csv(once, second_dir)
    twice, _ = _read_directory(second_dir)
    assert errors == [] and _comparable(twice) == _comparable(once)


def test_written_layout_keeps_received_lab_values(tmp_path: Path, french: TabularConnector) -> None:
    labs, _ = read_file(french, FRENCH_EXPORT / "BIOLOGIE_20240301.csv")
    write_canonical_csv(labs, tmp_path)
    with (tmp_path / "labs.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert (rows[1]["value"], rows[1]["unit"]) == ("hémolysé", "mmol/l")  # as received
    assert (rows[4]["value"], rows[4]["unit"]) == ("110.525", "µmol/L")  # canonical: range too
    again, errors = _read_directory(tmp_path)  # local codes: unmapped without the mapping
    assert errors == [] and [f.code.code for f in again] == [f.code.code for f in labs]


# Fuzz: random cells give facts or located errors, nothing else --------------------------------

_cells = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(list(',;"\r\n')),
    max_size=12,
)


def _fuzz(
    connector: TabularConnector,
    name: str,
    header: str,
    rows: list[list[str]],
    delimiter: str,
    encoding: str,
) -> None:
    text = "\n".join([header, *(delimiter.join(row) for row in rows)])
    content = text.encode(encoding, errors="replace")
    for raw in connector.split(name, content):
        try:
            outcome = connector.parse(raw)
        except FeedError as error:
            assert error.document == name and error.position
            continue
        assert all(isinstance(e, FeedError) and e.position for e in outcome.errors)
        assert all(
            f.source.position and f.source.position.startswith("line ") for f in outcome.facts
        )


@pytest.mark.property
@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(_cells, max_size=19), max_size=5))
def test_fuzz_synthetic_orders(rows: list[list[str]]) -> None:
    _fuzz(TabularConnector(rows_per_message=2), "orders.csv", ORDERS_HEADER, rows, ",", "utf-8")


_FRENCH_LAB_HEADER = (
    "IPP;NUM_SEJOUR;CODE_ANALYSE;LIBELLE_ANALYSE;RESULTAT;UNITE;DATE_PRELEVEMENT;"
    "VAL_NORM_MIN;VAL_NORM_MAX;ANORMAL"
)
_lab_cells = st.one_of(
    _cells,
    st.sampled_from(["K", "CREA", "INR", "FERRI", "4,5", "1 234,5", "-", "+", "mg/l", "µmol/l"]),
    st.sampled_from(["01/03/2024 08:00", "31/02/2024", "01/03/2024", "99/99/9999 99:99"]),
)


@pytest.mark.property
@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(_lab_cells, min_size=7, max_size=11), max_size=5))
def test_fuzz_french_labs(rows: list[list[str]]) -> None:
    connector = TabularConnector(EXAMPLE_MAPPING)
    _fuzz(connector, "BIOLOGIE_1.csv", _FRENCH_LAB_HEADER, rows, ";", "latin-1")


@pytest.mark.property
@settings(max_examples=150, deadline=None)
@given(content=st.binary(max_size=300), name=st.sampled_from(["orders.csv", "labs.csv", "x.csv"]))
def test_fuzz_random_bytes(content: bytes, name: str) -> None:
    connector = TabularConnector()
    connector.sniff(content, name)
    for raw in connector.split(name, ORDERS_HEADER.encode() + b"\n" + content):
        with contextlib.suppress(FeedError):
            connector.parse(raw)


def regenerate_golden() -> None:
    os.environ["VIGIE_TIMEZONE"] = "UTC"  # as conftest.py sets it for the suite
    base.site_timezone.cache_clear()
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(french_export_as_json(), ensure_ascii=False, indent=1, sort_keys=True)
    GOLDEN.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    regenerate_golden()
