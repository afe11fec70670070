"""Hostile inputs, as data: every file of ``tests/hostile/`` ingested on SQLite and PostgreSQL.

``tests/hostile/make_hostile.py`` builds the files from good seed messages and writes
``manifest.json``: what each file is and what it must give, from how it was built. Here each
file goes through ``vigie.ingest.ingest`` into a fresh store, and:

- messages in = messages out: the file's report counts exactly the messages it holds
  (loaded + partial + rejected + ignored + duplicate), in the bounds the manifest gives;
- the good messages land: each good patient has its facts in the store; bad ones leave none;
- every dead letter is located (document, message id, position) and is the connector's own
  error: no internal error (a library exception caught by the pipeline), no traceback;
- an external entity is never resolved: the named file's content is nowhere in the store.

Entity expansion is bounded by construction: PN13 refuses a DTD before parsing, and expat
(2.4 on) caps entity amplification besides. Files of several MB (``huge field``) are built at
test time and marked slow.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from vigie import settings
from vigie.connectors.tabular import connector as tabular
from vigie.connectors.tabular.mapping import EXAMPLE_MAPPING
from vigie.ingest import ingest
from vigie.store import FactStore

HOSTILE = Path(__file__).parent / "hostile"
MANIFEST: list[dict[str, Any]] = json.loads(
    (HOSTILE / "manifest.json").read_text(encoding="utf-8")
)["files"]


def _make_hostile(shared_data: Path) -> ModuleType:
    """The generator, reading its seeds from the reference data the settings name."""
    spec = importlib.util.spec_from_file_location("make_hostile", HOSTILE / "make_hostile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.SHARED = shared_data
    return module


def _params() -> Iterator[Any]:
    for entry in MANIFEST:
        marks = [pytest.mark.slow] if entry.get("at_test_time") else []
        yield pytest.param(entry, id=entry["file"], marks=marks)


@pytest.fixture
def store(store_url: str) -> Iterator[FactStore]:
    with FactStore(store_url) as opened:
        yield opened


@pytest.fixture
def example_mapping() -> Iterator[None]:
    """CSV files are the French DPI export's: read with its mapping (``--mapping``)."""
    saved = dict(tabular._active)
    tabular.configure(EXAMPLE_MAPPING)
    yield
    tabular._active.clear()
    tabular._active.update(saved)


def _hostile_file(entry: dict[str, Any], tmp_path: Path, shared_data: Path) -> Path:
    if not entry.get("at_test_time"):
        return HOSTILE / entry["file"]
    path = tmp_path / Path(entry["file"]).name
    path.write_bytes(_make_hostile(shared_data).build_huge(entry["format"]))
    return path


def _check_counts(expect: dict[str, Any], counts: Counter[str]) -> None:
    total = sum(counts.values())
    assert total == expect["messages"], f"messages in {expect['messages']}, out {counts}"
    dead = counts["rejected"] + counts["partial"]
    either = expect["either"]
    assert counts["duplicate"] == expect["duplicate"], counts
    assert expect["loaded"] <= counts["loaded"] <= expect["loaded"] + either, counts
    assert expect["dead"] <= dead <= expect["dead"] + either, counts
    assert counts["rejected"] >= expect["rejected"], counts
    assert counts["ignored"] <= either, counts


def _check_dead_letters(entry: dict[str, Any], store: FactStore, name: str) -> None:
    letters = [d for d in store.dead_letters(limit=10_000) if d.document == name]
    for letter in letters:
        assert letter.message_id and letter.position, letter
        assert letter.error.startswith(name), letter.error
        assert "internal error" not in letter.error, letter.error
        assert "Traceback" not in letter.error, letter.error
    for wanted in entry["expect"]["dead_letters"]:
        where = wanted["where"]
        assert any(where in (d.position or "") for d in letters), (
            f"no dead letter at {where!r}: {[(d.position, d.error[:200]) for d in letters]}"
        )


def _facts_of(store: FactStore, patient_id: str) -> list[Any]:
    return list(store.iter_facts(patient_id=patient_id))


def _check_secret(store: FactStore, secret: str) -> None:
    lines = [line for line in Path(secret).read_text().splitlines() if len(line) > 8]
    stored = json.dumps([f.model_dump(mode="json") for f in store.iter_facts()])
    stored += json.dumps([d.error for d in store.dead_letters(limit=10_000)])
    assert lines and not any(line in stored for line in lines)


@pytest.mark.parametrize("entry", list(_params()))
def test_hostile_file(
    entry: dict[str, Any],
    store: FactStore,
    tmp_path: Path,
    shared_data: Path,
    example_mapping: None,
) -> None:
    expect = entry["expect"]
    path = _hostile_file(entry, tmp_path, shared_data)
    report = ingest([path], store, fmt=entry["format"])
    [file] = report.files
    assert bool(file.rejected) == expect["file_rejected"], file
    _check_counts(expect, file.messages)
    assert not any("internal error" in error for error in file.errors), file.errors
    _check_dead_letters(entry, store, path.name)
    for patient_id, count in expect["lands"].items():
        facts = _facts_of(store, patient_id)
        assert len(facts) == count, (patient_id, [f.kind for f in facts], file.errors)
    for patient_id in expect["absent"]:
        assert _facts_of(store, patient_id) == [], patient_id
    if "secret" in expect:
        _check_secret(store, expect["secret"])


ABSURD = [pytest.param(e, id=e["file"]) for e in MANIFEST if e["category"] == "absurd values"]
# Times without an offset are read in the site's zone: 0001-01-01 00:00 in Paris (UTC+0:09
# then) and 9999-12-31 23:59 in Pago Pago (UTC-11) fall outside the years a UTC time can hold.
ZONES = ["Europe/Paris", "Pacific/Pago_Pago", "Pacific/Kiritimati"]


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("entry", ABSURD)
def test_absurd_times_in_any_site_zone(
    entry: dict[str, Any],
    zone: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    example_mapping: None,
) -> None:
    """The absurd-values files give the same counts whatever the site's time zone."""
    monkeypatch.setenv("VIGIE_TIMEZONE", zone)
    settings.reload()
    try:
        with FactStore(f"sqlite:///{tmp_path / 'vigie.db'}") as store:
            report = ingest([HOSTILE / entry["file"]], store, fmt=entry["format"])
            [file] = report.files
            _check_counts(entry["expect"], file.messages)
            _check_dead_letters(entry, store, Path(entry["file"]).name)
            for patient_id, count in entry["expect"]["lands"].items():
                assert len(_facts_of(store, patient_id)) == count, patient_id
    finally:
        monkeypatch.undo()
        settings.reload()


def test_manifest_covers_every_connector_and_category() -> None:
    """Each connector has its good baseline and the issue's categories (where they apply)."""
    categories: dict[str, set[str]] = {}
    for entry in MANIFEST:
        categories.setdefault(entry["format"], set()).add(entry["category"])
    common = {
        "good",
        "truncated",
        "garbage",
        "empty",
        "wrong encoding",
        "BOM",
        "NUL",
        "absurd values",
        "huge field",
        "duplicate ids",
        "mixed",
    }
    assert set(categories) == {"hl7", "fhir", "hprim", "pn13", "csv"}
    for fmt, found in categories.items():
        assert common <= found, (fmt, common - found)
    assert {"deep nesting"} <= categories["fhir"]
    assert {"deep nesting", "entity expansion", "XXE"} <= categories["pn13"]


def test_committed_files_are_the_generator_output(shared_data: Path) -> None:
    """The files in git are what ``make_hostile.py`` writes (no hand edits, deterministic)."""
    module = _make_hostile(shared_data)
    for fmt, build in module.BUILDERS.items():
        for name, (content, entry) in build().items():
            assert (HOSTILE / fmt / name).read_bytes() == content, name
            assert entry in MANIFEST, name
