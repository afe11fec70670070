"""Corrections of PN13, HPRIM and CSV messages, end to end through ``ingest`` into the store.

Each feed names a message after what it is a version of (see each connector's docstring,
"Message identity"/"Versions"), so a correction is a new version of the same message: the store
keeps both, applies the one with the later version time and removes what the other gave. Each
case sends the original then the correction, and the correction then the original (the older
one arriving late), and checks that only the correction's facts remain — on SQLite and
PostgreSQL. The originals are the reference files; the corrections change them as a sender
would (a later emission time, a changed value, an element dropped).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from vigie.connectors.tabular import connector as tabular
from vigie.facts import LabResult, MedicationOrder, Observation
from vigie.ingest import ingest
from vigie.store import FactStore

PN13_DC = "PN13-prescription-DC__01__Parac_tamol_en_cas_de_douleur.xml"
HPRIM_21 = "libhprim_test_oru_h2.1.hpr"


def send(store: FactStore, folder: Path, name: str, content: bytes, fmt: str) -> None:
    """One delivery: the file is written in its own folder, as a new drop would be."""
    path = folder / f"delivery-{len(list(folder.iterdir()))}" / name
    path.parent.mkdir()
    path.write_bytes(content)
    report = ingest([path], store, fmt=fmt)
    assert report.errors() == [], report.errors()


def in_both_orders(
    store_url: str, tmp_path: Path, original: bytes, correction: bytes, name: str, fmt: str
) -> Iterator[FactStore]:
    """The store after original → correction, then a fresh one after correction → original."""
    for order, (first, second) in enumerate([(original, correction), (correction, original)]):
        folder = tmp_path / f"order-{order}"
        folder.mkdir()
        with FactStore(store_url) as store:
            store.reset()  # each order starts from an empty store
            send(store, folder, name, first, fmt)
            send(store, folder, name, second, fmt)
            yield store


# PN13 ------------------------------------------------------------------------------------------


def pn13_correction(original: bytes) -> bytes:
    """The prescription sent again at 17:05 (was 16:42:53): 500 mg a dose (was 1000 mg), and
    without the height (``Code_rens_compl_2``, 189 cm) the first version gave."""
    emitted = 'Phast-dh_émission="20220411164253"'.encode()
    corrected = original.replace(emitted, 'Phast-dh_émission="20220411170500"'.encode())
    corrected = corrected.replace(b"<Nombre>1000.0</Nombre>", b"<Nombre>500.0</Nombre>")
    height = re.compile(rb"\s*<Rens_compl>\s*<Code_rens_compl_2>.*?</Rens_compl>", re.DOTALL)
    corrected, dropped = height.subn(b"", corrected)
    assert dropped == 1 and corrected.count(b"<Nombre>500.0</Nombre>") == 2
    return corrected


def test_pn13_only_the_correction_remains(
    store_url: str, tmp_path: Path, shared_data: Path
) -> None:
    original = (shared_data / "fr-medication-ig" / "pn13_xml" / PN13_DC).read_bytes()
    correction = pn13_correction(original)
    for store in in_both_orders(store_url, tmp_path, original, correction, PN13_DC, "pn13"):
        orders = [f for f in store.iter_facts(["medication_order"])]
        assert [(o.fact_id, o.dose) for o in orders if isinstance(o, MedicationOrder)] == [
            ("pn13:order:5000001820:31626", 500)
        ]
        assert orders[0].source.version_time == datetime(2022, 4, 11, 17, 5)
        measures = [f for f in store.iter_facts() if isinstance(f, Observation)]
        assert [m.value for m in measures] == [120]  # the weight; the height is gone
        versions = store.raw_versions("pn13", "5000001820|10723")
        assert len(versions) == 2  # both kept: the history of the prescription


# HPRIM -----------------------------------------------------------------------------------------


def hprim_correction(original: bytes) -> bytes:
    """The 2.1 sample sent again the next morning (H field 14 201204300815, was 201204292059):
    TGO corrected from 16 to 18 UI/l (status C), the haematocrit OBX no longer sent."""
    corrected = original.replace(b"|201204292059", b"|201204300815")
    corrected = corrected.replace(b"||16|UI/l|10 - 40|N|||F|", b"||18|UI/l|10 - 40|N|||C|")
    corrected, dropped = re.subn(rb"OBX\|2\|NM\|HT~[^\r\n]*\r?\n", b"", corrected)
    assert dropped == 1 and b"||18|UI/l" in corrected and b"201204300815" in corrected
    return corrected


def labs_by_code(store: FactStore) -> dict[str, LabResult]:
    return {f.code.code: f for f in store.iter_facts(["lab"]) if isinstance(f, LabResult)}


def test_hprim_only_the_correction_remains(
    store_url: str, tmp_path: Path, shared_data: Path
) -> None:
    original = (shared_data / "hprim" / HPRIM_21).read_bytes()
    correction = hprim_correction(original)
    for store in in_both_orders(store_url, tmp_path, original, correction, HPRIM_21, "hprim"):
        labs = labs_by_code(store)
        assert sorted(labs) == ["OT1", "TEXTE"]  # HT (haematocrit) is gone
        assert labs["OT1"].value == 18
        assert labs["OT1"].source.version_time == datetime(2012, 4, 30, 8, 15)
        assert len(store.raw_versions("hprim", "PO|398:idechantillo/20428E9575")) == 2


def test_hprim_a_deleted_result_is_withdrawn(
    store_url: str, tmp_path: Path, shared_data: Path
) -> None:
    """The laboratory deletes the TGO result (OBX field 12 ``D``) the next morning."""
    original = (shared_data / "hprim" / HPRIM_21).read_bytes()
    deletion = original.replace(b"|201204292059", b"|201204300815")
    deletion = deletion.replace(b"||16|UI/l|10 - 40|N|||F|", b"||16|UI/l|10 - 40|N|||D|")
    assert deletion.count(b"|||D|") == 1
    for store in in_both_orders(store_url, tmp_path, original, deletion, HPRIM_21, "hprim"):
        assert sorted(labs_by_code(store)) == ["HT", "TEXTE"]
        assert store.retracted_count() == 1


# CSV -------------------------------------------------------------------------------------------

CSV_MAPPING = """
name = "dpi-x"
[orders]
file = "ORDERS_*.csv"
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
CSV_HEADER = "ID,IPP,CODE,DOSE,UPDATED,STATE\n"
CSV_NAME = "ORDERS_20240301.csv"


@pytest.fixture
def dpi_mapping(tmp_path: Path) -> Iterator[None]:
    path = tmp_path / "dpi-x.toml"
    path.write_text(CSV_MAPPING, encoding="utf-8")
    tabular.configure(path)
    yield
    tabular.configure(None)


def csv_orders(store: FactStore) -> list[tuple[str, float | None]]:
    orders = store.iter_facts(["medication_order"])
    return [(o.fact_id, o.dose) for o in orders if isinstance(o, MedicationOrder)]


def test_csv_only_the_corrected_export_remains(
    store_url: str, tmp_path: Path, dpi_mapping: None
) -> None:
    """The export re-written at 11:00: o1 corrected to 250 mg, o2 no longer exported."""
    original = CSV_HEADER + "o1,p1,N02BE01,500,2024-03-01T08:00,OK\n"
    original += "o2,p1,N02BE01,1000,2024-03-01T08:00,OK\n"
    correction = CSV_HEADER + "o1,p1,N02BE01,250,2024-03-01T11:00,OK\n"
    contents = original.encode(), correction.encode()
    for store in in_both_orders(store_url, tmp_path, *contents, CSV_NAME, "csv"):
        assert csv_orders(store) == [("o1", 250)]
        assert len(store.raw_versions("csv", f"dpi-x|{CSV_NAME}#1")) == 2


def test_csv_a_cancelled_row_is_withdrawn(
    store_url: str, tmp_path: Path, dpi_mapping: None
) -> None:
    original = CSV_HEADER + "o1,p1,N02BE01,500,2024-03-01T08:00,OK\n"
    cancelled = CSV_HEADER + "o1,p1,N02BE01,500,2024-03-01T11:00,CANCELLED\n"
    contents = original.encode(), cancelled.encode()
    for store in in_both_orders(store_url, tmp_path, *contents, CSV_NAME, "csv"):
        assert csv_orders(store) == []
        assert store.retracted_count() == 1


def test_csv_exports_that_only_add_rows_keep_every_file(store_url: str, tmp_path: Path) -> None:
    """A DPI writing each run's new rows under one fixed name declares exports = "add": a
    later file does not replace the earlier one; a row sent again with a later time still
    replaces its fact through the row's id. (With the default, "replace", o1 would be gone
    after the second file: see test_csv_only_the_corrected_export_remains.)"""
    path = tmp_path / "dpi-add.toml"
    path.write_text(CSV_MAPPING.replace("[orders]\n", '[orders]\nexports = "add"\n'), "utf-8")
    tabular.configure(path)
    try:
        runs = [
            "o1,p1,N02BE01,500,2024-03-01T08:00,OK\n",
            "o2,p1,N02BE01,1000,2024-03-01T12:00,OK\n",
            "o1,p1,N02BE01,250,2024-03-01T13:00,OK\n",
        ]
        with FactStore(store_url) as store:
            send(store, tmp_path, "ORDERS.csv", (CSV_HEADER + runs[0]).encode(), "csv")
            send(store, tmp_path, "ORDERS.csv", (CSV_HEADER + runs[1]).encode(), "csv")
            assert csv_orders(store) == [("o1", 500), ("o2", 1000)]
            send(store, tmp_path, "ORDERS.csv", (CSV_HEADER + runs[2]).encode(), "csv")
            assert csv_orders(store) == [("o1", 250), ("o2", 1000)]
    finally:
        tabular.configure(None)
