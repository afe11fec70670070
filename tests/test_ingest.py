"""The ingest pipeline: raw kept first, bad messages dead-lettered, the rest goes on."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from vigie.connectors import registry
from vigie.ingest import ingest, read_feed
from vigie.store import FactStore


@pytest.fixture(autouse=True)
def fake_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.FORMATS, "fake", "tests.fake_connector")


@pytest.fixture
def store(store_url: str) -> Iterator[FactStore]:
    with FactStore(store_url) as opened:
        yield opened


def _write(tmp_path: Path, text: str, name: str = "labs.fake") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bad_and_crashing_messages_are_dead_lettered_and_the_rest_loads(
    tmp_path: Path, store: FactStore
) -> None:
    path = _write(tmp_path, "p1;potassium;5.1\nnot a message\nboom\np2;sodium;131\n")
    report = ingest([path], store, fmt="fake")
    assert report.total_messages() == {"loaded": 2, "rejected": 2}
    assert store.counts()["lab"] == 2
    letters = store.dead_letters()
    assert [d.position for d in letters] == ["line 2", "line 3"]
    assert "expected 3 fields" in letters[0].error and "got 'not a message'" in letters[0].error
    assert "internal error KeyError" in letters[1].error
    assert store.raw_content("fake", "labs.fake:2") == b"not a message"  # nothing lost


def test_ingest_twice_is_idempotent(tmp_path: Path, store: FactStore) -> None:
    path = _write(tmp_path, "p1;potassium;5.1\np1;potassium;5.4\n")
    ingest([path], store, fmt="fake")
    again = ingest([path], store, fmt="fake")
    assert again.total_messages() == {"duplicate": 2}
    assert store.counts()["lab"] == 2
    assert store.raw_counts() == {"loaded": 2}


def test_auto_format_detection_and_unknown_files(tmp_path: Path) -> None:
    _write(tmp_path, "p1;potassium;5.1\n")
    _write(tmp_path, "just some notes", name="notes.txt")
    reports: list = []
    parsed = list(read_feed([tmp_path], "auto", reports))
    assert [p.status for p in parsed] == ["loaded"]
    by_name = {Path(r.path).name: r for r in reports}
    assert by_name["labs.fake"].format == "fake"
    assert by_name["notes.txt"].format is None
    assert by_name["notes.txt"].skipped is None
    assert "expected a feed" in by_name["notes.txt"].rejected
