"""``vigie batch`` (issue 9 item 6): feeds to alerts as of a time, in the output contract.

Expectations come from the data: the Synthea bundle's own JSON (Coleman Ortiz's metformin and
eGFR), the generated hospital's ground truth (``truth.json``, read by ``tests.truth_scoring``)
and its FHIR Encounters and Patients read here with ``json`` (who is in a stay at the time,
in which ward, how old).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.truth_scoring import TruthRow, read_truth_json
from vigie.api.batch import read_parquet_alerts, read_parquet_header
from vigie.api.cli import main
from vigie.synthetic import generate

AS_OF = datetime(2025, 1, 10, 12, 0)


def _time(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment.replace(tzinfo=None) - (moment.utcoffset() or timedelta(0))


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hospital")
    generate(40, 7, 3, "fhir", out, min_cases=1)
    return out


def _run(*args: str) -> int:
    return main(["batch", *args])


def _batch(inputs: list[Path], out: Path, *extra: str, as_of: str = "") -> dict[str, Any]:
    when = as_of or AS_OF.isoformat() + "Z"
    code = _run("--input", *map(str, inputs), "--as-of", when, "--out", str(out), *extra)
    assert code == 0
    if out.suffix == ".parquet":
        return {}
    document: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return document


def _ndjson(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _in_stay(hospital: Path, at: datetime) -> dict[str, str]:
    """Patient id -> ward, for every Encounter whose period contains ``at`` (status ignored)."""
    found = {}
    for encounter in _ndjson(hospital / "Encounter.ndjson"):
        period = encounter.get("period", {})
        start, end = period.get("start"), period.get("end")
        if (start is None or _time(start) <= at) and (end is None or _time(end) > at):
            patient = encounter["subject"]["reference"].removeprefix("Patient/")
            found[patient] = encounter["location"][0]["location"]["display"]
    return found


def _holding(hospital: Path, at: datetime) -> list[TruthRow]:
    rows, data_end = read_truth_json(hospital / "truth.json")
    margin = timedelta(minutes=1)
    return [
        row
        for row in rows
        if row.positive and row.span(data_end)[0] + margin <= at <= row.span(data_end)[1] - margin
    ]


# Real data ----------------------------------------------------------------------------------------


def test_synthea_coleman_ortiz_metformin_alert_with_its_evidence(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = shared_data / "fhir" / "synthea-r4"
    (bundle_path,) = folder.glob("Coleman_Ortiz_*.json")
    bundle = json.loads(bundle_path.read_text(encoding="utf-8"))
    resources = [entry["resource"] for entry in bundle["entry"]]
    (patient,) = [r for r in resources if r["resourceType"] == "Patient"]
    egfrs = [
        r
        for r in resources
        if r["resourceType"] == "Observation"
        and r["code"]["coding"][0]["code"] == "33914-3"
        and r["effectiveDateTime"].startswith("1980-07-16")
    ]
    (egfr,) = egfrs
    assert egfr["valueQuantity"]["unit"] == "mL/min"  # the quirk: no /1.73m2 in the bundle
    metformin = [
        r
        for r in resources
        if r["resourceType"] == "MedicationRequest"
        and "metformin" in r["medicationCodeableConcept"]["text"].lower()
        and r["status"] == "active"
    ]
    assert metformin

    document = _batch([folder], tmp_path / "x.json", as_of="1980-07-16T21:00Z")
    printed = capsys.readouterr().out
    assert document["as_of"] == "1980-07-16T21:00:00Z"
    assert set(document["rule_pack"]) == {"name", "version", "sha256"}
    (alert,) = [
        a
        for a in document["alerts"]
        if a["rule_id"] == "renal.metformin_egfr" and a["patient_id"] == patient["id"]
    ]
    for key in ("id", "stay_id", "ward", "title", "problem", "intervention", "severity"):
        assert key in alert
    assert alert["drugs"][0]["label"] in {m["medicationCodeableConcept"]["text"] for m in metformin}
    (lab,) = [e for e in alert["evidence"] if e["kind"] == "lab"]
    assert lab["code"] == "egfr"
    assert lab["value"] == pytest.approx(egfr["valueQuantity"]["value"], abs=1e-6)
    assert lab["unit"] == "mL/min/1.73m2"
    assert _time(lab["time"]) == _time(egfr["effectiveDateTime"])
    assert lab["source"]["document"] == bundle_path.name
    # the relabelled unit is reported, not taken silently
    (note,) = document["summary"]["units_accepted_from_feeds_only"]
    assert (note["concept"], note["unit_sent"], note["read_as"]) == (
        "egfr",
        "mL/min",
        "mL/min/1.73m2",
    )
    bundles = [json.loads(path.read_text(encoding="utf-8")) for path in folder.glob("*.json")]
    sent_plain = sum(
        1
        for doc in bundles
        if isinstance(doc, dict) and doc.get("resourceType") == "Bundle"
        for entry in doc.get("entry", [])
        if entry["resource"]["resourceType"] == "Observation"
        and entry["resource"]["code"]["coding"][0]["code"] in {"33914-3", "62238-1", "98979-8"}
        and entry["resource"].get("valueQuantity", {}).get("unit") == "mL/min"
    )
    assert note["results"] == sent_plain > 0
    assert "egfr results sent in mL/min read as mL/min/1.73m2" in printed
    assert "renal.metformin_egfr" in printed


# Generated hospital: scope, truth -----------------------------------------------------------------


def test_scope_inpatients_is_the_stays_whose_period_holds_the_time(
    hospital: Path, tmp_path: Path
) -> None:
    inpatients = _batch([hospital], tmp_path / "in.json")
    everyone = _batch([hospital], tmp_path / "all.json", "--scope", "all")
    in_stay = _in_stay(hospital, AS_OF)
    patients = {p["id"] for p in _ndjson(hospital / "Patient.ndjson")}
    assert inpatients["summary"]["patients_evaluated"] == len(in_stay)
    assert everyone["summary"]["patients_evaluated"] == len(patients) > len(in_stay)
    # an encounter whose status is now 'finished' but whose period holds AS_OF is in scope
    finished = {
        e["subject"]["reference"].removeprefix("Patient/")
        for e in _ndjson(hospital / "Encounter.ndjson")
        if e["status"] == "finished"
    }
    assert finished & set(in_stay)
    expected = [a for a in everyone["alerts"] if a["patient_id"] in in_stay]
    assert inpatients["alerts"] == expected
    for alert in inpatients["alerts"]:
        assert alert["ward"] == in_stay[alert["patient_id"]]


@pytest.mark.parametrize("scope", ["inpatients", "all"])
def test_injected_situations_holding_then_are_reported(
    hospital: Path, tmp_path: Path, scope: str
) -> None:
    checked = 0
    for day in range(1, 7):
        at = datetime(2025, 1, 6, 12) + timedelta(days=day)
        document = _batch(
            [hospital], tmp_path / f"{day}.json", "--scope", scope, as_of=at.isoformat()
        )
        in_stay = _in_stay(hospital, at)
        for row in _holding(hospital, at):
            if scope == "inpatients" and row.patient_id not in in_stay:
                continue
            matching = [
                a
                for a in document["alerts"]
                if a["rule_id"] == row.rule_id
                and a["patient_id"] == row.patient_id
                and set(row.order_ids) <= {d["order_id"] for d in a["drugs"]}
            ]
            assert matching, f"{at}: {row.describe()}"
            checked += 1
    assert checked >= 10


# Outputs ------------------------------------------------------------------------------------------


def test_parquet_reads_back_equal_to_json(hospital: Path, tmp_path: Path) -> None:
    document = _batch([hospital], tmp_path / "x.json", "--scope", "all")
    assert document["alerts"]
    _batch([hospital], tmp_path / "x.parquet", "--scope", "all")
    assert read_parquet_alerts(tmp_path / "x.parquet") == document["alerts"]
    # the run itself is in the file's key-value metadata: its time, packs and counts
    header = read_parquet_header(tmp_path / "x.parquet")
    assert header["as_of"] == "2025-01-10T12:00:00Z"  # the --as-of given
    assert header["rule_pack"] == document["rule_pack"]
    assert header["rule_packs"] == document["rule_packs"]
    assert [p["name"] for p in header["rule_packs"]] == ["vigie-default", "ansm-interactions"]
    assert all(len(p["sha256"]) == 64 for p in header["rule_packs"])
    summary = header["summary"]
    assert summary["alerts"] == len(document["alerts"])
    assert summary["patients_with_alerts"] == len({a["patient_id"] for a in document["alerts"]})
    assert {k: v for k, v in summary.items() if k != "seconds"} == {
        k: v for k, v in document["summary"].items() if k != "seconds"
    }


_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)?")


def _strings(value: Any) -> Iterator[tuple[str, str]]:
    """(key, string) for every string value at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str):
                yield key, item
            else:
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_every_time_of_the_json_output_is_utc_with_z(hospital: Path, tmp_path: Path) -> None:
    """The contract's times (the run's and each alert's ``as_of``, the evidence's ``time``
    and its source's ``version_time``) are ISO 8601 UTC with ``Z``, as the run's ``as_of``."""
    document = _batch([hospital], tmp_path / "x.json", "--scope", "all")
    assert document["as_of"] == "2025-01-10T12:00:00Z"
    assert {a["as_of"] for a in document["alerts"]} == {document["as_of"]}
    times = [(k, v) for k, v in _strings(document) if _ISO_TIME.fullmatch(v)]
    keys = {k for k, _ in times}
    assert {"as_of", "time"} <= keys, keys
    assert [(k, v) for k, v in times if not v.endswith("Z")] == []
    # and they are the source data's times: a lab's evidence time is its Observation's
    observed = {
        f"Observation/{o['id']}": _time(o["effectiveDateTime"])
        for o in _ndjson(hospital / "Observation.ndjson")
        if "effectiveDateTime" in o
    }
    labs = [
        e
        for a in document["alerts"]
        for e in a["evidence"]
        if e["kind"] == "lab" and e["source"]["message_id"] in observed
    ]
    assert labs
    for evidence in labs:
        assert _time(evidence["time"]) == observed[evidence["source"]["message_id"]]


def test_a_ward_cursor_changes_an_alert(hospital: Path, tmp_path: Path) -> None:
    """elderly.long_benzo's cursor long_benzo_age_min (65 in 65..85): at 85 in one patient's
    ward, that patient (younger than 85) no longer raises it; the others are unchanged."""
    plain = _batch([hospital], tmp_path / "plain.json")
    births = {p["id"]: p["birthDate"] for p in _ndjson(hospital / "Patient.ndjson")}
    in_stay = _in_stay(hospital, AS_OF)
    benzo = [a for a in plain["alerts"] if a["rule_id"] == "elderly.long_benzo"]
    assert benzo
    target = benzo[0]
    born = datetime.fromisoformat(births[target["patient_id"]])
    assert (AS_OF - born).days / 365.25 < 85
    ward = in_stay[target["patient_id"]]
    config = tmp_path / "site.toml"
    config.write_text(
        f'[hospital]\n[wards."{ward}".cursors]\nlong_benzo_age_min = 85\n', encoding="utf-8"
    )
    tuned = _batch([hospital], tmp_path / "tuned.json", "--config", str(config))
    assert target["id"] not in {a["id"] for a in tuned["alerts"]}
    elsewhere = [a for a in plain["alerts"] if in_stay[a["patient_id"]] != ward]
    assert elsewhere and all(a in tuned["alerts"] for a in elsewhere)


# Errors -------------------------------------------------------------------------------------------


def test_errors_are_one_line_with_their_exit_code(
    hospital: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x.json")
    good = ["--input", str(hospital), "--as-of", "2025-01-10T12:00Z", "--out", out]

    def error_of(*args: str) -> tuple[int, str]:
        code = _run(*args)
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return code, err

    code, err = error_of("--input", str(tmp_path / "nope"), *good[2:])
    assert code == 2 and "no such file or folder" in err and "nope" in err
    with pytest.raises(SystemExit) as exit_:
        _run("--input", str(hospital), "--as-of", "yesterday", "--out", out)
    assert exit_.value.code == 2
    assert "'yesterday' is not an ISO 8601 time" in capsys.readouterr().err
    broken = tmp_path / "broken.rules"
    broken.write_text('rule x.y "t"\n  when\n    k = latest nothing\n', encoding="utf-8")
    code, err = error_of(*good, "--rules", str(broken))
    assert code == 1 and f"{broken} does not compile" in err
    config = tmp_path / "bad.toml"
    config.write_text("[hospital.cursors]\nk_max = 9\n", encoding="utf-8")
    code, err = error_of(*good, "--config", str(config))
    assert code == 2 and "configuration error" in err and f"{config}:2" in err
    assert "outside the declared range" in err
    assert not Path(out).exists()


def test_a_bad_message_is_reported_with_its_position_and_the_rest_read(
    hospital: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    feed = tmp_path / "feed"
    feed.mkdir()
    for path in hospital.glob("*.ndjson"):
        (feed / path.name).write_bytes(path.read_bytes())
    lines = (feed / "Observation.ndjson").read_text(encoding="utf-8").splitlines()
    lines.insert(2, "{not json")
    (feed / "Observation.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "x.json"
    code = _run("--input", str(feed), "--as-of", "2025-01-10T12:00Z", "--out", str(out))
    printed = capsys.readouterr().out
    assert code == 1
    assert "Observation.ndjson" in printed and "line 3" in printed
    reference = _batch([hospital], tmp_path / "ref.json")
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["summary"]["patients_evaluated"] == reference["summary"]["patients_evaluated"]


class _Stream:
    def __init__(self, terminal: bool) -> None:
        self.terminal = terminal
        self.text = ""

    def isatty(self) -> bool:
        return self.terminal

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_only_on_a_terminal() -> None:
    from vigie.api.batch import progress_on_terminal

    assert progress_on_terminal(_Stream(False)) is None
    stream = _Stream(True)
    show = progress_on_terminal(stream)
    assert show is not None
    show(50, 120)
    show(120, 120)
    assert stream.text == "\rEvaluating: 50/120 patients\rEvaluating: 120/120 patients\n"


# Columnar inputs: a fact store, a folder of fact frames -----------------------------------------


def test_the_store_and_a_frames_folder_give_the_feeds_alerts(
    hospital: Path, tmp_path: Path
) -> None:
    """The same hospital read from its feed files, from a fact store it was ingested into (as
    columns), and from a folder of fact frames: the same alerts."""
    from vigie.engine.factset import FactSet
    from vigie.ingest import ingest
    from vigie.store import FactStore
    from vigie.store.parquet import write_frames

    feeds = sorted((hospital / "feed").glob("*")) if (hospital / "feed").exists() else [hospital]
    from_feeds = _batch([hospital], tmp_path / "feeds.json", "--scope", "all")
    url = f"sqlite:///{tmp_path / 'facts.db'}"
    with FactStore(url) as store:
        ingest(feeds, store)
        facts = FactSet(list(store.iter_facts()))
    when = AS_OF.isoformat() + "Z"
    out = tmp_path / "store.json"
    assert _run("--store", url, "--as-of", when, "--out", str(out), "--scope", "all") == 0
    from_store = json.loads(out.read_text(encoding="utf-8"))
    write_frames(facts.frames(), tmp_path / "frames")
    from_frames = _batch([tmp_path / "frames"], tmp_path / "frames.json", "--scope", "all")
    assert from_feeds["alerts"], "the generated hospital raises alerts"
    assert from_store["alerts"] == from_feeds["alerts"]
    assert from_frames["alerts"] == from_feeds["alerts"]
    assert from_store["summary"]["patients_in_input"] == from_feeds["summary"]["patients_in_input"]


def test_a_frames_folder_is_the_only_input(hospital: Path, tmp_path: Path) -> None:
    from vigie.engine.factset import FactSet
    from vigie.store.parquet import write_frames

    write_frames(FactSet([]).frames(), tmp_path / "frames")
    when = AS_OF.isoformat() + "Z"
    code = _run("--input", str(tmp_path / "frames"), str(hospital), "--as-of", when,
                "--out", str(tmp_path / "x.json"))  # fmt: skip
    assert code == 2


def test_compiled_packs_are_cached_by_text_and_compiler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second compilation of the same pack text reads the cached IR (the compiler is not
    called); a changed text compiles again."""
    from vigie import rules
    from vigie.api import batch as batch_module

    monkeypatch.setattr(batch_module, "PACK_CACHE", tmp_path / "packs")
    pack = tmp_path / "one.rules"
    pack.write_text(
        'pack "one" version "1.0.0"\nset acei = atc C09A\n'
        'rule one.k "K+"\n  problem 7 intervention 2 severity major level 1 version 1\n'
        "  when\n    d = active drug in acei\n    k = latest potassium within 48 h\n"
        '    k > 5.5 mmol/L\n  say "K+ {k}"\n',
        encoding="utf-8",
    )
    first = batch_module.compile_packs([pack])
    assert len(list((tmp_path / "packs").glob("*.json"))) == 1

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("compiled again")

    monkeypatch.setattr(rules, "compile_pack", refuse)
    assert batch_module.compile_packs([pack]) == first
    pack.write_text(pack.read_text(encoding="utf-8").replace("5.5", "5.0"), encoding="utf-8")
    with pytest.raises(AssertionError, match="compiled again"):
        batch_module.compile_packs([pack])


@pytest.mark.parametrize("name", ["alerts.json", "alerts.parquet"])
def test_a_write_that_fails_leaves_the_previous_output_whole(
    hospital: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # The nightly file is read by the worklist: a run that dies while writing (disk full,
    # killed) must not leave it truncated, nor destroy the previous night's.
    import polars as pl
    import pyarrow.parquet as pq

    out = tmp_path / name
    _batch([hospital], out, "--scope", "all")
    before = out.read_bytes()

    def half_written(self: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"PAR1 cut")
        raise OSError(28, "No space left on device")

    original = Path.write_text

    def half_written_text(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        original(self, data[:100], *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", half_written)
    monkeypatch.setattr(pq, "write_table", lambda table, path, *a, **k: half_written(table, path))
    monkeypatch.setattr(Path, "write_text", half_written_text)
    code = _run("--input", str(hospital), "--as-of", AS_OF.isoformat() + "Z", "--out", str(out))
    assert code != 0
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_a_site_ward_no_stay_names_is_reported(
    hospital: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A ward code misspelt in the site file is not an error (a ward may be empty tonight),
    # but the run must say that its section applied to no one rather than stay silent.
    wards = [w["code"] for w in json.loads((hospital / "hospital.json").read_text())["wards"]]
    typo = wards[0][:2] + wards[0][3] + wards[0][2] + wards[0][4:]  # two letters swapped
    assert typo not in wards
    config = tmp_path / "site.toml"
    config.write_text(
        f'[wards."{typo}".cursors]\nk_max = 6.0\n[wards."{wards[1]}".cursors]\nk_max = 6.0\n',
        encoding="utf-8",
    )
    document = _batch([hospital], tmp_path / "x.json", "--config", str(config))
    assert document["summary"]["site_wards_not_in_input"] == [f"{typo} (did you mean {wards[0]}?)"]
    printed = capsys.readouterr().out
    assert f"no stay of the input is in ward {typo} (did you mean {wards[0]}?)" in printed
