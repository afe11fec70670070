"""End to end through the command line: real reference data into a real store."""

import json
from collections import Counter
from pathlib import Path

import pytest

from vigie.api.cli import main
from vigie.store import FactStore


def _resource_counts(folder: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in sorted(folder.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            continue
        for entry in bundle["entry"]:
            resource = entry["resource"]
            kind = resource["resourceType"]
            counts[kind] += 1
            if kind != "Observation":
                continue
            categories = {
                c.get("code") for cat in resource.get("category", []) for c in cat.get("coding", [])
            }
            counts["lab"] += "laboratory" in categories
    return counts


@pytest.mark.slow
def test_ingest_synthea_bundles_into_the_store(
    shared_data: Path, store_url: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("VIGIE_DATABASE_URL", store_url)
    folder = shared_data / "fhir" / "synthea-r4"
    assert main(["ingest", str(folder)]) == 0
    expected = _resource_counts(folder)
    with FactStore(store_url) as store:
        counts = store.counts()
        assert counts["patient"] == expected["Patient"] == 12
        assert counts["medication_order"] == expected["MedicationRequest"]
        assert counts["lab"] == expected["lab"]
        assert store.dead_letters() == []
    # a second ingest is idempotent: everything is a duplicate, nothing doubles
    assert main(["ingest", str(folder)]) == 0
    assert "duplicate 12" in capsys.readouterr().out
    with FactStore(store_url) as store:
        assert store.counts() == counts


@pytest.mark.slow
def test_ingest_a_mix_of_every_feed_keeps_bad_messages(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    url = f"sqlite:///{tmp_path / 'mix.db'}"
    monkeypatch.setenv("VIGIE_DATABASE_URL", url)
    paths = [
        shared_data / "hl7v2",
        shared_data / "hprim",
        shared_data / "fr-medication-ig" / "pn13_xml",
        shared_data / "fhir" / "synthea-bulk-10",
    ]
    code = main(["ingest", *map(str, paths)])
    out = capsys.readouterr().out
    assert code == 1  # some reference HL7 messages are rejected, with located errors
    assert "Errors (" in out
    with FactStore(url) as store:
        counts = store.counts()
        assert counts["medication_order"] > 0 and counts["lab"] > 0 and counts["patient"] > 10
        letters = store.dead_letters()
        assert letters and all(letter.error for letter in letters)
        raw = store.raw_counts()
        assert raw.get("loaded", 0) > raw.get("rejected", 0)


def test_ingest_names_the_codes_and_units_it_could_not_map(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Loaded all the same (exit 0), but the summary says which codes and units the rules
    cannot see: counted, distinct, with the file, message and field where first seen."""
    monkeypatch.setenv("VIGIE_DATABASE_URL", store_url)
    messages = [
        [
            f"MSH|^~\\&|LAB|CHU|VIGIE|PHARMA|20240102080000||ORU^R01|CLI-U{n}|P|2.5",
            f"PID|1||CLIU{n}^^^H^PI||DOE^JO||19500101|F",
            "OBX|1|NM|99999-9^Made up^LN||6.4|mmol/L|3.5-5.1|H|||F|||202401020800",
            f"OBX|2|NM|2823-3^Potassium^LN||6.4|{unit}|3.5-5.1|H|||F|||202401020800",
        ]
        for n, unit in ((1, "mmol/L"), (2, "furlong"))
    ]
    feed = tmp_path / "lab.hl7"
    feed.write_text("".join("\r".join(m) + "\r" for m in messages), encoding="utf-8")
    assert main(["ingest", str(feed)]) == 0
    out = capsys.readouterr().out
    assert "Unmapped codes and units (2 distinct, on 3 facts" in out
    assert f"  unmapped_code lab LN|99999-9: 2x, first at {feed}, message 1, OBX[1]-3" in out
    assert (
        f"  unknown_unit lab LN|2823-3 unit 'furlong': 1x, first at {feed}, message 2, OBX[2]-6"
        in out
    )


def test_quality_json_on_files(shared_data: Path, capsys) -> None:
    folder = shared_data / "fhir" / "synthea-r4"
    assert main(["quality", "--json", "--input", str(folder)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["patient"] == 12
    assert report["patients"] == 12
    assert {"unmapped_codes", "unknown_units", "implausible_values"} <= set(report)


def test_quality_on_files_names_a_file_it_cannot_read(
    shared_data: Path, tmp_path: Path, capsys
) -> None:
    """As ingest does, the quality report never skips an unrecognised file silently."""
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\n")
    feed = shared_data / "fhir" / "synthea-r4"
    assert main(["quality", "--input", str(junk), str(feed)]) == 1
    out = capsys.readouterr().out
    assert f"{junk}: line 1: expected a feed" in out
    assert "1 rejected or unreadable" in out
    assert main(["quality", "--json", "--input", str(junk)]) == 1
    assert any(str(junk) in error for error in json.loads(capsys.readouterr().out)["errors"])


def test_commands_of_later_issues_say_so(capsys) -> None:
    assert main(["replay", "--as-of", "2024-01-01"]) == 2
    assert "not available yet" in capsys.readouterr().err


@pytest.fixture
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user's data folder (where the demo keeps its own store), in the test's tmp folder."""
    home = tmp_path / "data-home"
    monkeypatch.setenv("XDG_DATA_HOME", str(home))
    return home


def _demo_stores(home: Path) -> list[Path]:
    return sorted((home / "vigie" / "demo").glob("*.db"))


def test_demo_generates_ingests_and_reports(data_home: Path, capsys) -> None:
    assert main(["demo", "--beds", "20", "--days", "3", "--format", "fhir"]) == 0
    out = capsys.readouterr().out
    assert "Data quality of the store" in out and "Errors: 0" in out
    assert "Alerts as of 2025-01-09 00:00 UTC" in out
    (demo,) = _demo_stores(data_home)
    assert str(demo) in out  # says where its store is, for a look afterwards
    with FactStore(f"sqlite:///{demo}") as store:
        counts = store.counts()
        assert counts["patient"] > 0 and counts["medication_order"] > 0 and counts["lab"] > 0
        assert store.raw_counts().get("rejected", 0) == 0


def _hospital(url: str) -> tuple[dict[str, int], set[str]]:
    with FactStore(url) as store:
        patients = {f.patient_id for f in store.iter_facts() if f.kind == "patient"}
        return store.counts(), patients


def test_demo_never_writes_into_the_configured_store(
    tmp_path: Path, data_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``VIGIE_DATABASE_URL``'s store (the hospital's) is not the demo's: left untouched."""
    url = f"sqlite:///{tmp_path / 'hospital.db'}"
    monkeypatch.setenv("VIGIE_DATABASE_URL", url)
    feeds = tmp_path / "feeds"
    assert main(["generate", "--beds", "4", "--days", "1", "--seed", "3", "--out", str(feeds)]) == 0
    assert main(["ingest", str(feeds)]) == 0
    before = _hospital(url)
    assert main(["demo", "--beds", "6", "--days", "2"]) == 0
    assert _hospital(url) == before


def test_two_demos_never_mix_their_hospitals(data_home: Path) -> None:
    assert main(["demo", "--beds", "6", "--days", "2", "--seed", "1"]) == 0
    assert main(["demo", "--beds", "6", "--days", "2", "--seed", "2"]) == 0
    first, second = (_hospital(f"sqlite:///{path}") for path in _demo_stores(data_home))
    assert first[1] and second[1] and first != second
    assert main(["demo", "--beds", "6", "--days", "2", "--seed", "1"]) == 0  # a rerun: no double
    assert _hospital(f"sqlite:///{_demo_stores(data_home)[0]}") == first


def test_demo_refuses_a_store_that_holds_data(tmp_path: Path, data_home: Path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    assert main(["demo", "--beds", "6", "--days", "2", "--store", url]) == 0  # empty: accepted
    loaded = _hospital(url)
    assert loaded[1]
    capsys.readouterr()
    assert main(["demo", "--beds", "6", "--days", "2", "--seed", "5", "--store", url]) == 2
    assert "already holds data" in capsys.readouterr().err
    assert _hospital(url) == loaded


def test_generate_writes_feeds_and_truth(tmp_path: Path, capsys) -> None:
    out = tmp_path / "h"
    assert (
        main(
            [
                "generate",
                "--beds",
                "20",
                "--days",
                "2",
                "--seed",
                "7",
                "--format",
                "csv",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert {"hospital.json", "truth.json", "patients.csv", "labs.csv"} <= {
        p.name for p in out.iterdir()
    }
    assert "20 beds" in capsys.readouterr().out


def test_rules_check_exit_codes(capsys) -> None:
    assert main(["rules", "check", "rules/packs/default.rules"]) == 0
    assert main(["rules", "check", "tests/data/rules/mistakes.rules"]) == 1
    err = capsys.readouterr().err
    assert "error[R012]" in err and "did you mean" in err and "^" in err


@pytest.mark.slow
def test_rules_test_passes_on_the_default_pack(capsys) -> None:
    assert main(["rules", "test", "rules/packs/default.rules"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out


def test_missing_file_is_reported_and_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("VIGIE_DATABASE_URL", f"sqlite:///{tmp_path / 'v.db'}")
    assert main(["ingest", str(tmp_path / "missing.hl7")]) == 1
    out = capsys.readouterr().out
    assert "Not read:" in out and "missing.hl7: cannot read" in out
    assert "dead-letter" not in out  # nothing was received, so nothing is dead-lettered


def test_bad_time_zone_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from vigie.connectors import base

    monkeypatch.setenv("VIGIE_TIMEZONE", "Mars/Olympus")
    base.site_timezone.cache_clear()
    try:
        assert main(["quality", "--input", "tests/data/csv"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vigie: configuration error: VIGIE_TIMEZONE='Mars/Olympus'")
    finally:
        monkeypatch.setenv("VIGIE_TIMEZONE", "UTC")
        base.site_timezone.cache_clear()


def test_help_lists_every_setting_and_the_exit_codes(capsys) -> None:
    from vigie import settings
    from vigie.api.cli import EXIT_CODE_MEANINGS, ExitCode

    with pytest.raises(SystemExit) as stopped:
        main(["--help"])
    assert stopped.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # the help wraps long lines
    for setting in settings.describe():
        assert f"{setting.variable} ({setting.kind}; default: {setting.default})" in out
        assert " ".join(setting.doc.split()) in out
    for code in ExitCode:
        assert f"{code.value} {code.name}: {' '.join(EXIT_CODE_MEANINGS[code].split())}" in out
    assert [int(code) for code in ExitCode] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("variable", "value"),
    [("VIGIE_HL7_PARSER", "hl7apy"), ("VIGIE_FHIR_VALIDATE", "sometimes")],
)
def test_a_bad_setting_is_one_line_before_any_work(
    monkeypatch: pytest.MonkeyPatch, capsys, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["quality", "--input", "tests/data/csv"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.splitlines()
    assert line.startswith(f"vigie: configuration error: {variable}={value!r}: expected ")


def test_a_store_that_cannot_be_opened_is_one_line_and_exit_3(
    monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path
) -> None:
    monkeypatch.setenv("VIGIE_DATABASE_URL", f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    assert main(["quality"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("vigie: cannot open the store") and len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_any_vigie_error_of_a_command_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from vigie.api import cli
    from vigie.engine.errors import PackError

    def failing(args: object) -> int:
        raise PackError("the pack needs rule bio.k\nwhich it does not have")

    monkeypatch.setattr(cli, "_cmd_quality", failing)
    assert main(["quality"]) == 1
    assert capsys.readouterr().err == ("vigie: the pack needs rule bio.k which it does not have\n")


DEFAULT_PACK = Path(__file__).parents[1] / "rules" / "packs" / "default.rules"


def test_rules_source_prints_the_python_a_rule_runs_as(capsys) -> None:
    lines = DEFAULT_PACK.read_text(encoding="utf-8").splitlines()
    declared = [
        (number, line.split()[1])
        for number, line in enumerate(lines, start=1)
        if line.startswith("rule ")
    ]
    assert main(["rules", "source", str(DEFAULT_PACK), "--rule", "bio.hyperkalaemia"]) == 0
    printed = capsys.readouterr().out
    (line,) = [number for number, rule_id in declared if rule_id == "bio.hyperkalaemia"]
    header, _, body = printed.partition("\n")
    assert header.startswith("# rule bio.hyperkalaemia v") and header.endswith(f":{line})")
    assert "def condition(ctx):  # bio.hyperkalaemia" in body
    functions = body[body.index("def condition") :]
    compile(functions, "<printed>", "exec")  # the functions shown are the Python that runs
    assert main(["rules", "source", str(DEFAULT_PACK)]) == 0
    headers = [h for h in capsys.readouterr().out.splitlines() if h.startswith("# rule ")]
    assert [h.split()[2] for h in headers] == [rule_id for _, rule_id in declared]


def test_rules_source_refuses_an_unknown_rule_and_a_broken_pack(tmp_path: Path, capsys) -> None:
    assert main(["rules", "source", str(DEFAULT_PACK), "--rule", "bio.nope"]) == 2
    assert "no rule bio.nope in" in capsys.readouterr().err
    broken = tmp_path / "broken.rules"
    broken.write_text('rule x.y "t"\n  when nonsense here\n', encoding="utf-8")
    assert main(["rules", "source", str(broken)]) == 1
    err = capsys.readouterr().err
    assert "broken.rules:" in err and "does not compile" in err


def test_a_reader_that_closes_the_pipe_gets_no_traceback() -> None:
    # `vigie rules source PACK | head`: the reader closes the pipe early; the command stops
    # quietly (exit 1: the output was cut) instead of printing a BrokenPipeError traceback.
    import subprocess
    import sys

    with subprocess.Popen(
        [sys.executable, "-m", "vigie.api.cli", "rules", "source", "rules/packs/default.rules"],
        cwd=Path(__file__).parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.read(100)
        process.stdout.close()
        error = process.stderr.read().decode()
        code = process.wait(timeout=120)
    assert "Traceback" not in error and "BrokenPipeError" not in error
    assert code == 1
