"""``--format auto``: nothing is silently skipped.

A file that no connector recognises is *rejected* (a located error, counted, exit code 1), never
skipped; recognisable content after a preamble is read; only documentation and metadata files
met in a folder (README, LICENSE, MANIFEST.json, the synthetic generator's hospital.json and
truth files) are skipped, and the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vigie.api.cli import ExitCode, main
from vigie.ingest import FileReport, read_feed
from vigie.synthetic.generator import METADATA_FILES

HL7 = (
    b"MSH|^~\\&|LAB|CHU|||20240102||ORU^R01|M1|P|2.5\r"
    b"PID|1||P1^^^H^PI||DOE^JO||19500101|F\r"
    b"OBX|1|NM|2823-3^Potassium^LN||5.9|mmol/L|3.5-5.1|H|||F|||202401020800\r"
)
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1950-01-01"}


def _reports(*paths: Path) -> tuple[list[FileReport], list[str]]:
    reports: list[FileReport] = []
    statuses = [parsed.status for parsed in read_feed(list(paths), "auto", reports)]
    return reports, statuses


def _one(path: Path) -> FileReport:
    reports, _ = _reports(path)
    (report,) = reports
    return report


def _late_resource_type() -> bytes:
    padded = {"text": {"status": "generated", "div": "x" * 5000}, **PATIENT}
    padded["resourceType"] = padded.pop("resourceType")  # written last, after 5 KB
    return json.dumps(padded).encode()


UNRECOGNISED = {
    "empty.hl7": (b"", "an empty file"),
    "blank.txt": (b"  \r\n\n", "an empty file"),
    "array.json": (json.dumps([PATIENT]).encode(), "a JSON array"),
    "utf16-bom.hl7": (("\ufeff" + HL7.decode()).encode("utf-16-le"), "UTF-16"),
    "utf16.hl7": (HL7.decode().encode("utf-16-le"), "UTF-16"),
    "utf16-be.hl7": (HL7.decode().encode("utf-16-be"), "UTF-16"),
    "columns.csv": (b"foo,bar,baz\n1,2,3\n", "foo,bar,baz"),
    "config.json": (b'{"name": "x"}', "JSON object without 'resourceType'"),
    "notes.txt": (b"just some notes\n", "just some notes"),
}


@pytest.mark.parametrize("name", UNRECOGNISED)
def test_an_unrecognised_file_is_rejected_with_a_located_error(tmp_path: Path, name: str) -> None:
    content, found = UNRECOGNISED[name]
    path = tmp_path / name
    path.write_bytes(content)
    report = _one(path)
    assert report.skipped is None
    assert report.rejected is not None
    assert report.rejected.startswith(f"{path}: ")
    assert "expected " in report.rejected and found in report.rejected


@pytest.mark.parametrize("name", UNRECOGNISED)
def test_ingest_exits_1_and_lists_a_rejected_file(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("VIGIE_DATABASE_URL", f"sqlite:///{tmp_path / 'store.db'}")
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    (feeds / name).write_bytes(UNRECOGNISED[name][0])
    assert main(["ingest", str(feeds)]) == ExitCode.PROBLEMS
    out = capsys.readouterr().out
    assert f"Rejected: {feeds / name}: " in out
    assert "Files: 0 read, 1 rejected" in out


def test_a_utf8_bom_is_read(tmp_path: Path) -> None:
    for name, content in {
        "bom.hl7": b"\xef\xbb\xbf" + HL7,
        "bom.json": b"\xef\xbb\xbf" + json.dumps(PATIENT).encode(),
        "bom.csv": b"\xef\xbb\xbfpatient_id,birth_date,sex\nP1,1950-01-01,F\n",
    }.items():
        (tmp_path / name).write_bytes(content)
    reports, statuses = _reports(tmp_path)
    assert [r.format for r in reports] == ["csv", "hl7", "fhir"]
    assert statuses == ["loaded"] * 3


def test_hl7_after_a_banner_line_is_read_and_the_banner_reported(tmp_path: Path) -> None:
    path = tmp_path / "export.txt"
    path.write_bytes(b"*** export LAB 2024-01-02 ***\r\n" + HL7)
    reports: list[FileReport] = []
    parsed = list(read_feed([path], "auto", reports))
    assert reports[0].format == "hl7"
    assert [p.status for p in parsed] == ["rejected", "loaded"]  # the banner is not dropped
    error = str(parsed[0].fatal)
    assert error.startswith(f"{path.name}: message sha256:")
    assert "segment 1: expected an HL7 v2 message starting with an MSH segment" in error
    assert "got '*** export LAB" in error


def test_fhir_resource_type_after_the_first_4_kb_is_found_by_parsing(tmp_path: Path) -> None:
    path = tmp_path / "patient.json"
    path.write_bytes(_late_resource_type())
    reports, statuses = _reports(path)
    assert reports[0].format == "fhir"
    assert statuses == ["loaded"]


def test_metadata_files_in_a_folder_are_skipped_and_said_so(tmp_path: Path) -> None:
    metadata = {"README.md", "hospital.json", "truth.json", "truth.csv", "MANIFEST.json"}
    for name in metadata:
        (tmp_path / name).write_text("{}")
    (tmp_path / "labs.hl7").write_bytes(HL7)
    reports, statuses = _reports(tmp_path)
    assert statuses == ["loaded"]
    skipped = {Path(r.path).name: r.skipped for r in reports if r.skipped}
    assert set(skipped) == metadata
    assert all("not a feed" in why for why in skipped.values())
    assert all(r.rejected is None for r in reports)


def test_a_metadata_file_named_on_the_command_line_is_read(tmp_path: Path) -> None:
    path = tmp_path / "truth.json"
    path.write_text("{}")
    assert _one(path).rejected is not None


def test_the_generators_metadata_files_are_metadata() -> None:
    from vigie.connectors.registry import METADATA_NAMES, is_metadata

    assert all(is_metadata(name) for name in METADATA_FILES)
    assert not any(is_metadata(name) for name in ("labs.hl7", "Patient.ndjson", "orders.csv"))
    assert METADATA_NAMES


def test_the_reference_feeds_are_all_recognised(shared_data: Path) -> None:
    folders = ["hl7v2", "hprim", "fr-medication-ig/pn13_xml", "fhir/synthea-r4"]
    reports, _ = _reports(*(shared_data / folder for folder in folders))
    assert [r.rejected for r in reports if r.rejected] == []
