"""Bounded memory: ingest batches are cut by raw bytes, CSV row groups are slices of the
document, and ``vigie quality`` tallies a feed without holding its facts (issue 7)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from vigie.api.cli import main
from vigie.connectors import registry
from vigie.connectors.base import RawMessage
from vigie.connectors.tabular import TabularConnector
from vigie.connectors.tabular import connector as tabular
from vigie.engine.quality import QualityTally
from vigie.ingest import ingest
from vigie.store import FactStore

LABS_HEADER = "lab_id,patient_id,code_system,code,value,unit,time,reference_low,reference_high\n"


@pytest.fixture(autouse=True)
def fake_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.FORMATS, "fake", "tests.fake_connector")


@pytest.fixture
def store(store_url: str) -> Iterator[FactStore]:
    with FactStore(store_url) as opened:
        yield opened


def _batches(store: FactStore, monkeypatch: pytest.MonkeyPatch) -> list[list[RawMessage]]:
    """The raw messages of each batch, as ingest hands them to the store (one call a batch)."""
    seen: list[list[RawMessage]] = []
    keep_raws = store.keep_raws

    def spy(raws: Sequence[Any]) -> Any:
        seen.append(list(raws))
        return keep_raws(raws)

    monkeypatch.setattr(store, "keep_raws", spy)
    return seen


def _fake_feed(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "labs.fake"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_a_batch_holds_no_more_raw_bytes_than_the_bound(
    tmp_path: Path, store: FactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [f"p{n};potassium;5.1" for n in range(10)]  # 16 bytes each, one fact each
    batches = _batches(store, monkeypatch)
    report = ingest([_fake_feed(tmp_path, lines)], store, fmt="fake", batch_bytes=40)
    assert [len(batch) for batch in batches] == [2, 2, 2, 2, 2]  # a third would make 48 bytes
    assert report.total_messages() == {"loaded": 10}
    assert store.counts()["lab"] == 10


def test_a_message_over_the_bound_goes_alone_and_loads(
    tmp_path: Path, store: FactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_id = "p" + "1" * 60  # a 75-byte message, over the 40-byte bound
    lines = ["p1;potassium;5.1", f"{long_id};potassium;5.2", "p2;sodium;131", "p3;sodium;139"]
    batches = _batches(store, monkeypatch)
    ingest([_fake_feed(tmp_path, lines)], store, fmt="fake", batch_bytes=40)
    assert [[raw.position for raw in batch] for batch in batches] == [
        ["line 1"],
        ["line 2"],
        ["line 3", "line 4"],
    ]
    assert store.counts()["lab"] == 4


def test_the_message_count_still_bounds_a_batch(
    tmp_path: Path, store: FactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [f"p{n};potassium;5.1" for n in range(10)]
    batches = _batches(store, monkeypatch)
    ingest([_fake_feed(tmp_path, lines)], store, fmt="fake", batch_size=3, batch_bytes=1 << 30)
    assert [len(batch) for batch in batches] == [3, 3, 3, 1]


def _labs_csv(rows: int) -> str:
    """A canonical labs export, every row the same length (one potassium a row)."""
    body = "".join(
        f"k{n:04d},p{n % 7},LOINC,2823-3,4.{n % 10},mmol/L,2024-03-01T08:00,3.5,5.0\n"
        for n in range(rows)
    )
    return LABS_HEADER + body


def test_csv_row_groups_bound_the_facts_a_batch_holds(
    tmp_path: Path, store: FactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(tabular._active, "default", TabularConnector(rows_per_message=10))
    path = tmp_path / "labs.csv"
    path.write_text(_labs_csv(100))
    group = len(LABS_HEADER) + 10 * len(_labs_csv(1)[len(LABS_HEADER) :])  # bytes of 10 rows
    batches = _batches(store, monkeypatch)
    report = ingest([path], store, fmt="csv", batch_bytes=3 * group)
    rows = [sum(raw.content.count(b"\n") - 1 for raw in batch) for batch in batches]
    assert rows == [30, 30, 30, 10]  # 3 groups of 10 rows (each with the header) a batch
    assert report.total_facts() == {"lab": 100}
    assert store.counts()["lab"] == 100


def test_csv_row_groups_are_consecutive_slices_of_the_document() -> None:
    quoted = 'k0009,p1,LOINC,2823-3,4.5,mmol/L,2024-03-01T08:00,"3.5\n",5.0\n'
    tail = _labs_csv(3)[len(LABS_HEADER) :]
    rows = _labs_csv(9)[len(LABS_HEADER) :] + "\n" + quoted + "  \n" + tail
    content = (LABS_HEADER + rows).encode()
    groups = list(TabularConnector(rows_per_message=4).split("labs.csv", content))
    header = LABS_HEADER.encode()
    assert all(raw.content.startswith(header) for raw in groups)
    assert b"".join(raw.content[len(header) :] for raw in groups) == content[len(header) :]
    # lines 2-10: 9 rows; 11: blank; 12-13: one row (a quoted line break); 14: blank; 15-17:
    # 3 rows. Groups of 4 rows: 2-5, 6-9, 10-16 (blank lines ride along), 17.
    assert [raw.position for raw in groups] == ["line 2", "line 6", "line 10", "line 17"]


def test_quality_tally_lists_fatal_errors_first_and_counts_every_error() -> None:
    tally = QualityTally(limit=3)
    tally.add_errors(["row 1 bad", "row 2 bad"])
    tally.add_errors(["message 3 unreadable"], fatal=True)
    tally.add_errors(["row 4 bad", "row 5 bad"])
    tally.add_errors(["message 6 unreadable"], fatal=True)
    report = tally.report()
    assert report.errors == ["message 3 unreadable", "message 6 unreadable", "row 1 bad"]
    assert report.error_count == 6


def test_quality_on_files_counts_every_error_and_lists_the_first_fifty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _labs_csv(20)
    bad = "".join(f"x{n:03d},p1,LOINC,2823-3,4.1,mmol/L,not a date,3.5,5.0\n" for n in range(60))
    (tmp_path / "labs.csv").write_text(good + bad)
    assert main(["quality", "--json", "--input", str(tmp_path / "labs.csv")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["lab"] == 20 and report["patients"] == 7
    assert report["error_count"] == 60 and len(report["errors"]) == 50
    assert "line 22" in report["errors"][0] and "not a date" in report["errors"][0]
