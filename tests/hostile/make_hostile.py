"""Write the hostile-input suite: bad files for every connector, and what each must give.

Run ``python tests/hostile/make_hostile.py`` from the repository to regenerate
``tests/hostile/<format>/`` and ``tests/hostile/manifest.json``; the output is deterministic
(fixed random seeds, no time stamps). ``tests/test_hostile.py`` ingests each file and holds the
store to the manifest.

Every hostile file is built from good seed messages (cited in ``SEEDS``) by a known change:
cut, garbage, wrong encoding, a byte-order mark, NUL bytes, deep nesting, entity expansion, an
external entity, absurd values, a huge field, repeated ids, good and bad mixed. Each good
message is rewritten to a patient id of its own, so that the test can tell, patient by patient,
that the good messages of a file landed and the bad ones did not. The expectations in the
manifest come from that construction and from the formats' rules (the README's Store section,
each connector's documented framing), never from running the connectors:

- ``messages``: how many messages the file holds (HL7: one per ``MSH`` group, text before the
  first ``MSH`` being one more; HPRIM: one per ``H`` .. ``L`` group, likewise; FHIR: one per
  NDJSON line or one per JSON document; PN13: one per document; CSV: one per group of
  ``rows_per_message`` rows, 1,000 in the example mapping, so one per file here, except that
  the rows from an unclosed quote on are a message of their own);
- ``loaded``: messages that must load without any error; ``dead``: messages that must leave a
  dead letter (rejected, or partial when the rest of the message still loads); ``rejected``:
  those among them that must be rejected whole; ``duplicate``: messages sent again unchanged;
  ``either``: messages whose content is legal but absurd, which may load or be dead-lettered
  (never crash); the four add up to ``messages``;
- ``dead_letters``: a text each expected dead letter's position must contain (``PID-7``,
  ``line 4``); every dead letter must in any case name its document, message and a position;
- ``lands``: patient id -> number of facts the store must hold for that patient afterwards;
  ``absent``: patient ids that must not be in the store;
- ``secret``: a file whose content must appear nowhere in facts or dead letters (XXE).

Files too large to keep in git (``huge``) are listed with ``at_test_time``: the test builds them
with ``build_huge`` below.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SHARED = Path(os.environ.get("VIGIE_SHARED_DATA") or REPO.parent / "shared" / "data")

SEEDS = {
    "hl7": "tests/golden/hl7v2/oru_r01_renal.hl7 (the project's ORU^R01 golden message): MSH, "
    "PID, PV1, ORC, OBR and its first three OBX (potassium 2823-3, creatinine 2160-0 and a "
    "local creatinine code, all numeric with a unit and a time); MSH-10 and PID-3 rewritten",
    "fhir": "shared/data/fhir/synthea-bulk-10/Patient.000.ndjson line 1 (Synthea, CC0) for "
    "Patient; tests/golden/fhir/mixed-resources.ndjson line 3 (Observation o-crea, "
    "creatinine 2160-0) for Observation; ids and subject rewritten",
    "hprim": "shared/data/hprim/libhprim_test_oru_h2.1.hpr (libHprim test vector, LGPL-3.0): "
    "H, P, OBR (with its A continuation), three OBX, C and L records; P field 3 rewritten",
    "pn13": "shared/data/fr-medication-ig/pn13_xml/PN13-prescription-specialite__02__"
    "DOLIPRANE_1000_MG_3x_jour.xml (ANS Interop'Santé example, CC0): one "
    "M_Prescription_médicaments (patient, stay, one order line); Ipp and Id_séjour rewritten",
    "csv": "tests/data/csv/french-dpi/PATIENTS_20240301.csv and BIOLOGIE_20240301.csv (the "
    "project's French DPI export, Latin-1, ';', read with connectors/tabular/mappings/"
    "example-dpi.toml); IPP rewritten",
}

# Facts one good seed message gives, from its content (see SEEDS): HL7 PID + 3 OBX; HPRIM
# P + 3 OBX; PN13 Patient + Séjour + 1 order line; FHIR one resource per line; CSV one per row.
FACTS_PER_SEED = {"hl7": 4, "hprim": 4, "pn13": 3}
ETC_PASSWD = "/etc/passwd"
HUGE_BYTES = 5_000_000
MB_DIGITS = 1_000_000


def _read(path: Path) -> bytes:
    if not path.is_file():
        sys.exit(f"seed not found: {path} (set VIGIE_SHARED_DATA)")
    return path.read_bytes()


def _entry(fmt: str, name: str, category: str, built: str, **expect: Any) -> dict[str, Any]:
    expect.setdefault("file_rejected", False)
    for key in ("loaded", "dead", "rejected", "duplicate", "either"):
        expect.setdefault(key, 0)
    expect.setdefault("dead_letters", [])
    expect.setdefault("lands", {})
    expect.setdefault("absent", [])
    if not expect["file_rejected"]:
        counted = sum(expect[k] for k in ("loaded", "dead", "duplicate", "either"))
        assert counted == expect["messages"], (name, counted, expect["messages"])
    return {
        "file": f"{fmt}/{name}",
        "format": fmt,
        "category": category,
        "built": built,
        "seed": SEEDS[fmt],
        "expect": expect,
    }


def _garbage(seed: int, size: int, alphabet: bytes) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.choice(alphabet) for _ in range(size))


PRINTABLE = bytes(range(0x21, 0x7F))


# HL7 v2 ------------------------------------------------------------------------------------


def _hl7_seed() -> list[str]:
    text = _read(REPO / "tests/golden/hl7v2/oru_r01_renal.hl7").decode("utf-8")
    segments = [s for s in re.split(r"\r\n|\r|\n", text) if s]
    kept = [s for s in segments if not s.startswith(("OBX", "NTE"))]
    obx = [s for s in segments if s.startswith("OBX")][:3]
    return kept + obx


def hl7_message(tag: str, patient: str, **fields: str) -> str:
    """The seed with MSH-10 = ``tag`` and PID-3 = ``patient``; ``fields`` replace others
    (``PID-7``, ``OBX1-5``: field 5 of the first OBX), segments ending in CR."""
    out = []
    obx = 0
    for segment in _hl7_seed():
        parts = segment.split("|")
        name = parts[0]
        if name == "MSH":
            parts[9] = tag  # MSH-10: MSH-1 is the separator itself
        elif name == "PID":
            parts[3] = f"{patient}^^^CHU-NORD^PI"
        key = name
        if name == "OBX":
            obx += 1
            key = f"OBX{obx}"
        for spec, value in fields.items():
            seg, _, number = spec.partition("-")
            if seg == key:
                index = int(number) - (1 if name == "MSH" else 0)
                parts += [""] * (index + 1 - len(parts))
                parts[index] = value
        out.append("|".join(parts))
    return "\r".join(out) + "\r"


def hl7_files() -> dict[str, tuple[bytes, dict[str, Any]]]:
    files: dict[str, tuple[bytes, dict[str, Any]]] = {}
    n = FACTS_PER_SEED["hl7"]

    def add(name: str, content: bytes, category: str, built: str, **expect: Any) -> None:
        files[name] = (content, _entry("hl7", name, category, built, **expect))

    def good(tag: str, count: int) -> list[str]:
        return [hl7_message(f"{tag}-{i}", f"HL7-{tag}-{i}") for i in range(1, count + 1)]

    msgs = good("GOOD", 3)
    add(
        "good.hl7",
        "\n".join(msgs).encode(),
        "good",
        "three good messages (the baseline every other file is measured against)",
        messages=3,
        loaded=3,
        lands={f"HL7-GOOD-{i}": n for i in (1, 2, 3)},
    )
    msgs = good("TRUNC", 3)
    cut = msgs[2][: msgs[2].index("|mmol/L|", msgs[2].index("OBX|1"))]
    add(
        "truncated-obx.hl7",
        "\n".join([*msgs[:2], cut]).encode(),
        "truncated",
        "three messages, the file cut inside the first OBX of the third (after OBX-5)",
        messages=3,
        loaded=2,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "OBX"}],
        lands={"HL7-TRUNC-1": n, "HL7-TRUNC-2": n},
        absent=["HL7-TRUNC-3"],
    )
    msgs = good("CUTMSH", 2)
    add(
        "truncated-msh.hl7",
        ("\n".join(msgs) + "\nMSH|^~\\&|LAB").encode(),
        "truncated",
        "two messages, then a third cut after MSH-3",
        messages=3,
        loaded=2,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "MSH"}],
        lands={f"HL7-CUTMSH-{i}": n for i in (1, 2)},
    )
    msgs = good("GARB", 2)
    junk = _garbage(7, 300, PRINTABLE).replace(b"MSH", b"msh")
    add(
        "garbage-banner.hl7",
        junk + b"\r\n" + "\n".join(msgs).encode(),
        "garbage",
        "300 printable random bytes before the first MSH, then two good messages",
        messages=3,
        loaded=2,
        dead=1,
        rejected=1,
        lands={f"HL7-GARB-{i}": n for i in (1, 2)},
        dead_letters=[{"where": "segment 1"}],
    )
    binary = _garbage(8, 400, bytes(range(256))).replace(b"MSH", b"msh")
    add(
        "garbage-binary.hl7",
        b"\n".join([msgs[0].encode(), binary, msgs[1].encode()]),
        "garbage",
        "a good message, 400 random bytes (any byte value) as a line of its own, a good "
        "message: the bytes belong to the first message (no MSH), which is dead-lettered",
        messages=2,
        loaded=1,
        dead=1,
        lands={"HL7-GARB-2": n},
        absent=["HL7-GARB-1"],
        dead_letters=[{"where": "byte"}],
    )
    add(
        "empty.hl7",
        b"",
        "empty",
        "an empty file: no MSH where the first segment should be",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "segment 1"}],
    )
    add(
        "blank.hl7",
        b" \r\n\r\n\t\n",
        "empty",
        "a file of blanks and line ends",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "segment 1"}],
    )
    latin = hl7_message("ENC-2", "HL7-ENC-2", **{"OBX1-3": "2823-3^Potassium sérique^LN"})
    add(
        "wrong-encoding-latin1.hl7",
        b"\n".join(
            [
                hl7_message("ENC-1", "HL7-ENC-1").encode(),
                latin.encode("latin-1"),
                hl7_message("ENC-3", "HL7-ENC-3").encode(),
            ]
        ),
        "wrong encoding",
        "three messages declaring MSH-18 UNICODE UTF-8; the second written in Latin-1 (é as "
        "byte E9): it loads read as Latin-1 with a located note, or is dead-lettered",
        messages=3,
        loaded=2,
        either=1,
        lands={"HL7-ENC-1": n, "HL7-ENC-3": n},
    )
    add(
        "utf16.hl7",
        "\n".join(good("U16", 2)).encode("utf-16"),
        "wrong encoding",
        "two good messages encoded in UTF-16 with a byte-order mark: HL7 v2 is byte-framed "
        "ASCII-compatible text, so nothing can load",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "byte 0"}],
        absent=["HL7-U16-1", "HL7-U16-2"],
    )
    msgs = good("BOM", 2)
    add(
        "bom.hl7",
        b"\xef\xbb\xbf" + "\n".join(msgs).encode(),
        "BOM",
        "a UTF-8 byte-order mark then two good messages: the mark is not data",
        messages=2,
        loaded=2,
        lands={f"HL7-BOM-{i}": n for i in (1, 2)},
    )
    msgs = good("NUL", 3)
    nul = msgs[1].replace("|5.9|", "|5\x00.9|")
    add(
        "nul.hl7",
        "\n".join([msgs[0], nul, msgs[2]]).encode(),
        "NUL",
        "three messages; a NUL byte inside OBX-5 of the first OBX of the second",
        messages=3,
        loaded=2,
        dead=1,
        dead_letters=[{"where": "OBX"}],
        lands={"HL7-NUL-1": n, "HL7-NUL-3": n},
    )
    absurd = [
        hl7_message("ABS-1", "HL7-ABS-1", **{"PID-7": "00000101"}),
        hl7_message("ABS-2", "HL7-ABS-2", **{"PID-7": "99991231"}),
        hl7_message("ABS-3", "HL7-ABS-3", **{"OBX1-5": "-5.9"}),
        hl7_message("ABS-4", "HL7-ABS-4", **{"OBX1-5": "1e308"}),
        hl7_message("ABS-5", "HL7-ABS-5", **{"OBX1-5": "9" * 5000}),
        hl7_message("ABS-6", "HL7-ABS-6", **{"OBX1-14": "00010101000000"}),
        hl7_message("ABS-7", "HL7-ABS-7", **{"OBX1-14": "99991231235959"}),
        hl7_message("ABS-8", "HL7-ABS-8"),
    ]
    add(
        "absurd-values.hl7",
        "\n".join(absurd).encode(),
        "absurd values",
        "PID-7 in year 0 (no such date: a located error), PID-7 on 9999-12-31, OBX-5 "
        "negative, 1e308, 5,000 digits; OBX-14 on 0001-01-01 and 9999-12-31 (legal but "
        "absurd: load or dead letter); a good message last",
        messages=8,
        dead=1,
        either=6,
        loaded=1,
        dead_letters=[{"where": "PID-7"}],
        lands={"HL7-ABS-8": n},
    )
    add(
        "long-ids.hl7",
        "\n".join(
            [
                hl7_message("LONG-1", "HL7-LONG-1"),
                hl7_message("LONG-2", "P" * 200),
                hl7_message("L" * 600, "HL7-LONG-3"),
                hl7_message("LONG-4", "HL7-LONG-4"),
            ]
        ).encode(),
        "absurd values",
        "four messages: good; a PID-3 of 200 characters (the store holds 128); an MSH-10 of "
        "600 characters (a message id over 512); good: each bad one is dead-lettered alone",
        messages=4,
        loaded=2,
        dead=2,
        rejected=2,
        dead_letters=[{"where": "message 2"}, {"where": "message 3"}],
        lands={"HL7-LONG-1": n, "HL7-LONG-4": n},
        absent=["HL7-LONG-3"],
    )
    first = hl7_message("DUP-1", "HL7-DUP-1")
    changed = hl7_message("DUP-1", "HL7-DUP-1", **{"OBX1-5": "6.1"})
    add(
        "duplicate-ids.hl7",
        "\n".join([first, first, changed]).encode(),
        "duplicate ids",
        "the same message twice, then the same MSH-10 with another potassium value: the "
        "second is a duplicate, the third a new version (framing appends #3 to its id), "
        "whose result replaces the first's (same lab fact id)",
        messages=3,
        loaded=2,
        duplicate=1,
        lands={"HL7-DUP-1": n},
    )
    msgs = good("MIX", 4)
    bad_date = hl7_message("MIX-B", "HL7-MIX-B", **{"OBX1-14": "2024-13-45"})
    no_pid = "\r".join(
        s for s in hl7_message("MIX-C", "HL7-MIX-C").split("\r") if not s.startswith("PID")
    )
    add(
        "mixed.hl7",
        "\n".join([msgs[0], bad_date, msgs[1], no_pid, msgs[2], msgs[3]]).encode(),
        "mixed",
        "four good messages among a message whose first OBX-14 is '2024-13-45' (partial: "
        "its other results load) and an ORU without PID (rejected)",
        messages=6,
        loaded=4,
        dead=2,
        dead_letters=[{"where": "OBX[1]-14"}],
        lands={**{f"HL7-MIX-{i}": n for i in (1, 2, 3, 4)}, "HL7-MIX-B": n - 1},
    )
    return files


# HPRIM Santé -------------------------------------------------------------------------------


def _hprim_seed() -> str:
    return _read(SHARED / "hprim/libhprim_test_oru_h2.1.hpr").decode("latin-1")


def hprim_message(patient: str, **fields: str) -> str:
    """The seed with P field 3 = ``patient``; ``fields`` (``OBX1-6``, ``P-8``) replace others.
    Lines end in CR, as in the seed."""
    lines = [line for line in re.split(r"\r\n|\r|\n", _hprim_seed()) if line]
    out, obx = [], 0
    for line in lines:
        parts = line.split("|")
        key = parts[0]
        if key == "P":
            parts[2] = patient
        if key == "OBX":
            obx += 1
            key = f"OBX{obx}"
        for spec, value in fields.items():
            record, _, number = spec.partition("-")
            if record == key:
                index = int(number) - 1
                parts += [""] * (index + 1 - len(parts))
                parts[index] = value
        out.append("|".join(parts))
    return "\r".join(out) + "\r"


def hprim_files() -> dict[str, tuple[bytes, dict[str, Any]]]:
    files: dict[str, tuple[bytes, dict[str, Any]]] = {}
    n = FACTS_PER_SEED["hprim"]

    def add(name: str, content: bytes, category: str, built: str, **expect: Any) -> None:
        files[name] = (content, _entry("hprim", name, category, built, **expect))

    def good(tag: str, count: int) -> list[str]:
        return [hprim_message(f"HPR-{tag}-{i}") for i in range(1, count + 1)]

    msgs = good("GOOD", 2)
    add(
        "good.hpr",
        "".join(msgs).encode("latin-1"),
        "good",
        "two good messages",
        messages=2,
        loaded=2,
        lands={f"HPR-GOOD-{i}": n for i in (1, 2)},
    )
    msgs = good("TRUNC", 2)
    cut = msgs[1][: msgs[1].index("OBX|2|")]
    add(
        "truncated.hpr",
        (msgs[0] + cut).encode("latin-1"),
        "truncated",
        "two messages, the second cut before its second OBX (no L record): what came before "
        "loads, the missing end is a located error",
        messages=2,
        loaded=1,
        dead=1,
        dead_letters=[{"where": "line"}],
        lands={"HPR-TRUNC-1": n, "HPR-TRUNC-2": 2},
    )
    msgs = good("GARB", 2)
    junk = _garbage(11, 200, PRINTABLE)
    add(
        "garbage.hpr",
        junk + b"\r" + "".join(msgs).encode("latin-1"),
        "garbage",
        "200 printable random bytes before the first H, then two good messages",
        messages=3,
        loaded=2,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 1"}],
        lands={f"HPR-GARB-{i}": n for i in (1, 2)},
    )
    add(
        "empty.hpr",
        b"",
        "empty",
        "an empty file",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 1"}],
    )
    msgs = good("U16", 1)
    add(
        "utf16.hpr",
        msgs[0].encode("utf-16"),
        "wrong encoding",
        "a good message encoded in UTF-16 with a byte-order mark",
        messages=1,
        dead=1,
        rejected=1,
        absent=["HPR-U16-1"],
        dead_letters=[{"where": "line 1"}],
    )
    msgs = good("BOM", 2)
    add(
        "bom.hpr",
        b"\xef\xbb\xbf" + "".join(msgs).encode("utf-8"),
        "BOM",
        "a UTF-8 byte-order mark then two good messages in UTF-8",
        messages=2,
        loaded=2,
        lands={f"HPR-BOM-{i}": n for i in (1, 2)},
    )
    msgs = good("NUL", 3)
    add(
        "nul.hpr",
        (msgs[0] + msgs[1].replace("|16|", "|1\x006|") + msgs[2]).encode("latin-1"),
        "NUL",
        "three messages, a NUL byte inside the first OBX value of the second (nine records a "
        "message, one a line: that OBX is line 9 + 5)",
        messages=3,
        loaded=2,
        dead=1,
        lands={"HPR-NUL-1": n, "HPR-NUL-3": n},
        dead_letters=[{"where": "line 14"}],
    )
    absurd = [
        hprim_message("HPR-ABS-1", **{"P-8": "00000101"}),
        hprim_message("HPR-ABS-2", **{"P-8": "99991231"}),
        hprim_message("HPR-ABS-3", **{"OBX1-6": "-16"}),
        hprim_message("HPR-ABS-4", **{"OBX1-6": "1e308"}),
        hprim_message("HPR-ABS-5", **{"OBX1-6": "9" * 5000}),
        hprim_message("HPR-ABS-6", **{"OBX1-15": "00010101"}),
        hprim_message("HPR-ABS-7", **{"OBX1-15": "99991231235959"}),
        hprim_message("HPR-ABS-9", **{"H-14": "00010101"}),
        hprim_message("HPR-ABS-8"),
    ]
    add(
        "absurd-values.hpr",
        "".join(absurd).encode("latin-1"),
        "absurd values",
        "birth date in year 0 (a located error: P field 8), 9999-12-31; an OBX value "
        "negative, 1e308, 5,000 digits; an observation time on 0001-01-01 and 9999-12-31; a "
        "message written (H field 14) on 0001-01-01; a good message last",
        messages=9,
        dead=1,
        either=7,
        loaded=1,
        dead_letters=[{"where": "P[1] field 8"}],
        lands={"HPR-ABS-8": n},
    )
    first = hprim_message("HPR-DUP-1")
    changed = hprim_message("HPR-DUP-1", **{"OBX1-6": "17"})
    add(
        "duplicate-ids.hpr",
        (first + first + changed).encode("latin-1"),
        "duplicate ids",
        "the same message twice, then the same patient and request with another value: the "
        "message id is the sender, patient and request numbers (hprim.py), so a duplicate, "
        "then a new version whose result replaces the first (same lab fact id)",
        messages=3,
        loaded=2,
        duplicate=1,
        lands={"HPR-DUP-1": n},
    )
    msgs = good("MIX", 3)
    no_patient = hprim_message("")
    add(
        "mixed.hpr",
        (msgs[0] + no_patient + msgs[1] + msgs[2]).encode("latin-1"),
        "mixed",
        "three good messages and one whose P record has no patient id (its results cannot "
        "load: a located error at P field 3)",
        messages=4,
        loaded=3,
        dead=1,
        dead_letters=[{"where": "P[1] field 3"}],
        lands={f"HPR-MIX-{i}": n for i in (1, 2, 3)},
    )
    return files


# FHIR --------------------------------------------------------------------------------------


def _fhir_patient(patient: str) -> dict[str, Any]:
    line = _read(SHARED / "fhir/synthea-bulk-10/Patient.000.ndjson").split(b"\n", 1)[0]
    resource: dict[str, Any] = json.loads(line)
    resource["id"] = patient
    return resource


def _fhir_creatinine(patient: str, **changes: Any) -> dict[str, Any]:
    line = (REPO / "tests/golden/fhir/mixed-resources.ndjson").read_bytes().split(b"\n")[2]
    resource: dict[str, Any] = json.loads(line)
    resource["id"] = f"crea-{patient}"
    resource["subject"] = {"reference": f"Patient/{patient}"}
    resource.update(changes)
    return resource


def _line(resource: dict[str, Any]) -> str:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":"))


def _ndjson(resources: list[dict[str, Any]]) -> bytes:
    return "".join(_line(r) + "\n" for r in resources).encode()


def _bundle(resources: list[dict[str, Any]], bundle_id: str) -> dict[str, Any]:
    entries = [
        {"fullUrl": f"urn:uuid:{r['resourceType']}-{r['id']}", "resource": r} for r in resources
    ]
    return {"resourceType": "Bundle", "id": bundle_id, "type": "collection", "entry": entries}


def fhir_files() -> dict[str, tuple[bytes, dict[str, Any]]]:
    files: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def add(name: str, content: bytes, category: str, built: str, **expect: Any) -> None:
        files[name] = (content, _entry("fhir", name, category, built, **expect))

    def pair(tag: str) -> list[dict[str, Any]]:
        return [_fhir_patient(tag), _fhir_creatinine(tag)]

    add(
        "good.ndjson",
        _ndjson(pair("FH-GOOD-1") + pair("FH-GOOD-2")),
        "good",
        "NDJSON: two patients, each with a creatinine Observation (one message per line)",
        messages=4,
        loaded=4,
        lands={"FH-GOOD-1": 2, "FH-GOOD-2": 2},
    )
    bundle = json.dumps(_bundle(pair("FH-BGOOD"), "b-good")).encode()
    add(
        "good-bundle.json",
        bundle,
        "good",
        "a collection Bundle: a patient and a creatinine",
        messages=1,
        loaded=1,
        lands={"FH-BGOOD": 2},
    )
    lines = _ndjson(pair("FH-TRUNC-1") + pair("FH-TRUNC-2"))
    add(
        "truncated.ndjson",
        lines[: lines.rindex(b'"valueQuantity"')],
        "truncated",
        "NDJSON of four lines, cut inside the last (the second creatinine)",
        messages=4,
        loaded=3,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 4"}],
        lands={"FH-TRUNC-1": 2, "FH-TRUNC-2": 1},
    )
    add(
        "truncated-bundle.json",
        bundle[: len(bundle) // 2],
        "truncated",
        "the good Bundle cut in its middle",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 1"}],
        absent=["FH-BGOOD"],
    )
    resources = pair("FH-GARB-1") + pair("FH-GARB-2")
    junk = _garbage(21, 300, PRINTABLE).replace(b"\n", b" ")
    add(
        "garbage.ndjson",
        _ndjson(resources[:2]) + junk + b"\n" + _ndjson(resources[2:]),
        "garbage",
        "NDJSON: two good lines, a line of 300 printable random bytes, two good lines",
        messages=5,
        loaded=4,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 3"}],
        lands={"FH-GARB-1": 2, "FH-GARB-2": 2},
    )
    add(
        "empty.json",
        b"",
        "empty",
        "an empty file",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 1"}],
    )
    add(
        "utf16.json",
        bundle.decode().encode("utf-16"),
        "wrong encoding",
        "the good Bundle encoded in UTF-16 (JSON exchanged between systems is UTF-8)",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "byte 0"}],
        absent=["FH-BGOOD"],
    )
    latin = _fhir_patient("FH-ENC-2")
    latin["name"] = [{"family": "Lefèvre", "given": ["Hélène"]}]
    add(
        "wrong-encoding-latin1.ndjson",
        b"".join(
            [
                _line(_fhir_patient("FH-ENC-1")).encode() + b"\n",
                _line(latin).encode("latin-1") + b"\n",
                _line(_fhir_patient("FH-ENC-3")).encode() + b"\n",
            ]
        ),
        "wrong encoding",
        "NDJSON: three patients, the second written in Latin-1 (not UTF-8)",
        messages=3,
        loaded=2,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "byte"}],
        lands={"FH-ENC-1": 1, "FH-ENC-3": 1},
        absent=["FH-ENC-2"],
    )
    add(
        "bom.json",
        b"\xef\xbb\xbf" + json.dumps(_bundle(pair("FH-BOM"), "b-bom")).encode(),
        "BOM",
        "a UTF-8 byte-order mark before a good Bundle",
        messages=1,
        loaded=1,
        lands={"FH-BOM": 2},
    )
    resources = pair("FH-NUL-1") + pair("FH-NUL-2")
    nul_lines = _ndjson(resources).split(b"\n")
    nul_lines[1] = nul_lines[1].replace(b'"status":"final"', b'"status":"fi\x00nal"')
    nul_lines[2] = nul_lines[2].replace(b'"gender":', b'\x00"gender":')
    add(
        "nul.ndjson",
        b"\n".join(nul_lines),
        "NUL",
        "NDJSON of four lines: a raw NUL byte inside a string of line 2 (JSON forbids control "
        "characters in strings) and between two members of line 3",
        messages=4,
        loaded=2,
        dead=2,
        rejected=2,
        dead_letters=[{"where": "line 2"}, {"where": "line 3"}],
        lands={"FH-NUL-1": 1, "FH-NUL-2": 1},
    )
    nested = _fhir_patient("FH-DEEP-1")
    nested["extension"] = [{"url": "http://example.org/deep", "valueString": "x"}]
    deep_text = _line(nested).replace(
        '"valueString":"x"', '"valueX":' + "[" * 100_000 + "]" * 100_000
    )
    add(
        "deep-nesting.ndjson",
        _ndjson([_fhir_patient("FH-DEEP-0")])
        + deep_text.encode()
        + b"\n"
        + _ndjson([_fhir_patient("FH-DEEP-2")]),
        "deep nesting",
        "NDJSON: a good patient, a patient whose extension holds 100,000 nested arrays, a good "
        "patient",
        messages=3,
        loaded=2,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 2"}],
        lands={"FH-DEEP-0": 1, "FH-DEEP-2": 1},
        absent=["FH-DEEP-1"],
    )
    deep_bundle = _bundle(pair("FH-DEEPB"), "b-deep")
    text = json.dumps(deep_bundle)
    text = text[:-1] + ',"meta":{"tag":' + '{"a":' * 50_000 + "1" + "}" * 50_000 + "}}"
    add(
        "deep-nesting-bundle.json",
        text.encode(),
        "deep nesting",
        "a Bundle whose meta.tag nests 50,000 objects",
        messages=1,
        dead=1,
        rejected=1,
        absent=["FH-DEEPB"],
        dead_letters=[{"where": "line 1"}],
    )
    absurd = [
        _fhir_patient("FH-ABS-1") | {"birthDate": "0000-01-01"},
        _fhir_patient("FH-ABS-2") | {"birthDate": "9999-12-31"},
        _fhir_creatinine("FH-ABS-2", valueQuantity={"value": -1.4, "unit": "mg/dL"}),
        _fhir_creatinine("FH-ABS-3", valueQuantity={"value": 1e308, "unit": "mg/dL"}),
        _fhir_creatinine("FH-ABS-4", effectiveDateTime="0001-01-01T00:00:00+14:00"),
        _fhir_creatinine("FH-ABS-5", effectiveDateTime="9999-12-31T23:59:59-12:00"),
        _fhir_patient("FH-ABS-6"),
    ]
    lines = _ndjson(absurd).split(b"\n")
    lines.insert(
        6,
        _line(_fhir_creatinine("FH-ABS-7"))
        .replace('"value":1.4', '"value":' + "9" * MB_DIGITS)
        .encode(),
    )
    add(
        "absurd-values.ndjson",
        b"\n".join(lines),
        "absurd values",
        "NDJSON: a birth date in year 0 (no such date: located error), one on 9999-12-31; "
        "creatinine -1.4, 1e308; times 0001-01-01T00:00+14:00 (before year 1 in UTC) and "
        "9999-12-31T23:59:59-12:00 (after 9999 in UTC); a creatinine of 1,000,000 digits; "
        "a good patient last",
        messages=8,
        loaded=1,
        dead=1,
        either=6,
        dead_letters=[{"where": "line 1"}],
        lands={"FH-ABS-6": 1},
    )
    long_bundle = _bundle(
        [
            *pair("FH-LONGB-1"),
            _fhir_creatinine("FH-LONGB-2") | {"subject": {"reference": f"Patient/{'P' * 200}"}},
        ],
        "b-long",
    )
    add(
        "long-ids-bundle.json",
        json.dumps(long_bundle).encode(),
        "absurd values",
        "a Bundle: a patient and a creatinine, and a creatinine whose subject reference names "
        "a patient id of 200 characters (the store holds 128): that entry is a located error, "
        "the others load (the Bundle is one message: it must not be refused whole)",
        messages=1,
        dead=1,
        dead_letters=[{"where": "entry[2]"}],
        lands={"FH-LONGB-1": 2},
    )
    one = _fhir_patient("FH-DUP-1")
    other = _fhir_patient("FH-DUP-1") | {
        "gender": "female" if one.get("gender") == "male" else "male"
    }
    add(
        "duplicate-ids.ndjson",
        _ndjson([one, one, other]),
        "duplicate ids",
        "NDJSON: the same Patient line twice, then Patient/FH-DUP-1 with another gender: the "
        "second is a duplicate, the third a correction replacing the first",
        messages=3,
        loaded=2,
        duplicate=1,
        lands={"FH-DUP-1": 1},
    )
    dup_bundle = _bundle(
        [_fhir_patient("FH-DUPB"), _fhir_patient("FH-DUPB"), _fhir_creatinine("FH-DUPB")], "b-dup"
    )
    add(
        "duplicate-ids-bundle.json",
        json.dumps(dup_bundle).encode(),
        "duplicate ids",
        "a Bundle holding the same Patient entry twice (same fullUrl) and a creatinine",
        messages=1,
        either=1,
        lands={"FH-DUPB": 2},
    )
    resources = pair("FH-MIX-1") + pair("FH-MIX-2")
    bad_value = _fhir_creatinine("FH-MIX-3", valueQuantity={"value": "high", "unit": "mg/dL"})
    bad_type = {"resourceType": "Patient", "id": "FH-MIX-4", "birthDate": 19500304}
    add(
        "mixed.ndjson",
        _ndjson([*resources[:2], bad_value, _fhir_patient("FH-MIX-3"), bad_type, *resources[2:]]),
        "mixed",
        "NDJSON: two good patients with their creatinine, a creatinine whose value is the "
        "string 'high', a good patient, a Patient whose birthDate is a number",
        messages=7,
        loaded=5,
        dead=2,
        rejected=2,
        dead_letters=[{"where": "line 3"}, {"where": "line 5"}],
        lands={"FH-MIX-1": 2, "FH-MIX-2": 2, "FH-MIX-3": 1},
        absent=["FH-MIX-4"],
    )
    mixed_bundle = _bundle([*pair("FH-MIXB-1"), bad_value, bad_type], "b-mixed")
    add(
        "mixed-bundle.json",
        json.dumps(mixed_bundle).encode(),
        "mixed",
        "a Bundle: a patient and a creatinine, a creatinine whose value is a string, a Patient "
        "whose birthDate is a number (entries 2 and 3 are located errors, the rest loads)",
        messages=1,
        dead=1,
        dead_letters=[{"where": "entry[2]"}, {"where": "entry[3]"}],
        lands={"FH-MIXB-1": 2},
        absent=["FH-MIX-4"],
    )
    return files


# PN13 --------------------------------------------------------------------------------------

_PN13_SEED = (
    "fr-medication-ig/pn13_xml/PN13-prescription-specialite__02__DOLIPRANE_1000_MG_3x_jour.xml"
)


def _pn13_parts() -> tuple[str, str, str]:
    """(envelope head, one M_Prescription_médicaments, envelope tail) of the seed."""
    text = _read(SHARED / _PN13_SEED).decode("utf-8")
    start = text.index("    <M_Prescription_médicaments>")
    end = text.index("</M_Prescription_médicaments>") + len("</M_Prescription_médicaments>\n")
    return text[:start], text[start:end], text[end:]


def pn13_message(patient: str, replace: dict[str, str] | None = None) -> str:
    body = _pn13_parts()[1]
    body = body.replace("<Ipp>123456</Ipp>", f"<Ipp>{patient}</Ipp>")
    body = body.replace("<Id_séjour>234567</Id_séjour>", f"<Id_séjour>S-{patient}</Id_séjour>")
    for old, new in (replace or {}).items():
        assert old in body, old
        body = body.replace(old, new)
    return body


def _quantity(number: str) -> dict[str, str]:
    """Both quantities of the seed's order line (prescribed and per intake) set to ``number``."""
    return {"<Nombre>1</Nombre>": f"<Nombre>{number}</Nombre>"}


def pn13_document(*messages: str, head: str | None = None) -> str:
    start, _, end = _pn13_parts()
    return (start if head is None else head) + "".join(messages) + end


def pn13_files() -> dict[str, tuple[bytes, dict[str, Any]]]:
    files: dict[str, tuple[bytes, dict[str, Any]]] = {}
    n = FACTS_PER_SEED["pn13"]

    def add(name: str, content: bytes, category: str, built: str, **expect: Any) -> None:
        files[name] = (content, _entry("pn13", name, category, built, **expect))

    good = pn13_document(pn13_message("PN-GOOD-1"), pn13_message("PN-GOOD-2"))
    add(
        "good.xml",
        good.encode(),
        "good",
        "a <Messages> document holding two prescription messages (one raw message per file)",
        messages=1,
        loaded=1,
        lands={"PN-GOOD-1": n, "PN-GOOD-2": n},
    )
    document = pn13_document(pn13_message("PN-TRUNC-1"), pn13_message("PN-TRUNC-2")).encode()
    add(
        "truncated.xml",
        document[: document.index(b"<Dh_fin>", 1200)],
        "truncated",
        "the two-message document cut inside the second message's order line",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line"}],
        absent=["PN-TRUNC-1", "PN-TRUNC-2"],
    )
    add(
        "garbage.xml",
        _garbage(31, 500, bytes(range(256))),
        "garbage",
        "500 random bytes (any value)",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 1"}],
    )
    add(
        "empty.xml",
        b"",
        "empty",
        "an empty file",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 1"}],
    )
    latin = pn13_document(pn13_message("PN-ENC-1")).encode("latin-1")
    add(
        "wrong-encoding-latin1.xml",
        latin,
        "wrong encoding",
        "the document declaring UTF-8, written in Latin-1 (tag names with é become invalid UTF-8)",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 3"}],
        absent=["PN-ENC-1"],
    )
    utf16 = pn13_document(pn13_message("PN-U16-1")).replace('encoding="UTF-8"', 'encoding="UTF-16"')
    add(
        "utf16.xml",
        utf16.encode("utf-16"),
        "wrong encoding",
        "the document in UTF-16 with a byte-order mark, declaring UTF-16 (legal XML: it may "
        "load, or be refused with a located error)",
        messages=1,
        either=1,
    )
    add(
        "bom.xml",
        b"\xef\xbb\xbf" + pn13_document(pn13_message("PN-BOM-1")).encode(),
        "BOM",
        "a UTF-8 byte-order mark before the document (legal XML)",
        messages=1,
        loaded=1,
        lands={"PN-BOM-1": n},
    )
    add(
        "nul.xml",
        pn13_document(
            pn13_message("PN-NUL-1"),
            pn13_message("PN-NUL-2", {"<Nombre>1</Nombre>": "<Nombre>1\x00</Nombre>"}),
        ).encode(),
        "NUL",
        "two messages, a NUL byte inside a <Nombre> of the second (not XML text)",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line"}],
        absent=["PN-NUL-1", "PN-NUL-2"],
    )
    depth = 100_000
    deep_message = pn13_message(
        "PN-DEEP-2",
        {
            "<Fourniture>1</Fourniture>": "<Fourniture>1</Fourniture>"
            + "<x>" * depth
            + "</x>" * depth
        },
    )
    add(
        "deep-nesting.xml",
        pn13_document(pn13_message("PN-DEEP-1"), deep_message).encode(),
        "deep nesting",
        "two messages; the second's order line holds 100,000 nested unknown elements "
        "(well-formed: the unknown elements are ignored, both messages load)",
        messages=1,
        either=1,
        lands={"PN-DEEP-1": n},
    )
    head = _pn13_parts()[0]
    lol = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    ]
    doctype = "<!DOCTYPE Messages [\n" + "\n".join(lol) + "\n]>\n"
    laughs = head.replace("<Messages", doctype + "<Messages", 1)
    add(
        "billion-laughs.xml",
        pn13_document(pn13_message("PN-LOL-1", {"PN-LOL-1": "&lol9;"}), head=laughs).encode(),
        "entity expansion",
        "the classic billion laughs: 10 levels of entities each ten times the one below "
        "(10^9 'lol'), used as the Ipp; a DTD is refused before any expansion",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 2"}],
    )
    laughs16 = laughs.replace('encoding="UTF-8"', 'encoding="UTF-16"')
    add(
        "billion-laughs-utf16.xml",
        pn13_document(pn13_message("PN-LOL-2", {"PN-LOL-2": "&lol9;"}), head=laughs16).encode(
            "utf-16"
        ),
        "entity expansion",
        "the billion laughs in UTF-16 (a byte search for '<!DOCTYPE' does not see it)",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 2"}],
    )
    xxe_head = head.replace(
        "<Messages",
        f'<!DOCTYPE Messages [<!ENTITY xxe SYSTEM "file://{ETC_PASSWD}">]>\n<Messages',
        1,
    )
    add(
        "xxe.xml",
        pn13_document(
            pn13_message("PN-XXE-1", {"<Libellé_élément_prescr>": "<Libellé_élément_prescr>&xxe;"}),
            head=xxe_head,
        ).encode(),
        "XXE",
        f"an external entity naming {ETC_PASSWD}, used in an order line's label: the "
        "file must never be read",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 2"}],
        secret=ETC_PASSWD,
        absent=["PN-XXE-1"],
    )
    xxe16 = xxe_head.replace('encoding="UTF-8"', 'encoding="UTF-16"')
    add(
        "xxe-utf16.xml",
        pn13_document(pn13_message("PN-XXE-2", {"PN-XXE-2": "&xxe;"}), head=xxe16).encode("utf-16"),
        "XXE",
        f"the external entity ({ETC_PASSWD}) in a UTF-16 document, used as the Ipp",
        messages=1,
        dead=1,
        rejected=1,
        secret=ETC_PASSWD,
        dead_letters=[{"where": "line 2"}],
    )
    xxe_param = head.replace(
        "<Messages", f'<!DOCTYPE Messages SYSTEM "file://{ETC_PASSWD}">\n<Messages', 1
    )
    add(
        "xxe-external-dtd.xml",
        pn13_document(pn13_message("PN-XXE-3"), head=xxe_param).encode(),
        "XXE",
        f"an external DTD ({ETC_PASSWD}) named by the DOCTYPE",
        messages=1,
        dead=1,
        rejected=1,
        secret=ETC_PASSWD,
        absent=["PN-XXE-3"],
        dead_letters=[{"where": "line 2"}],
    )
    absurd = pn13_document(
        pn13_message(
            "PN-ABS-1",
            {"<Dh_début>20071228070000</Dh_début>": "<Dh_début>00000101000000</Dh_début>"},
        ),
        pn13_message(
            "PN-ABS-2", {"<Dh_fin>20071230180000</Dh_fin>": "<Dh_fin>99991231235959</Dh_fin>"}
        ),
        pn13_message("PN-ABS-3", _quantity("-1")),
        pn13_message("PN-ABS-4", _quantity("1e308")),
        pn13_message("PN-ABS-5", _quantity("9" * MB_DIGITS)),
        pn13_message("PN-ABS-6"),
    )
    add(
        "absurd-values.xml",
        absurd.encode(),
        "absurd values",
        "six messages: an order starting in year 0 (no such date: located error), one ending "
        "on 9999-12-31, posology quantities -1, 1e308 and 1,000,000 digits; a good message",
        messages=1,
        dead=1,
        dead_letters=[{"where": "Dh_début"}],
        lands={"PN-ABS-6": n},
    )
    year_one = {
        "<Dh_prescription>20071227103300</Dh_prescription>": "<Dh_prescription>"
        "00010101000000</Dh_prescription>"
    }
    add(
        "absurd-version-time.xml",
        pn13_document(pn13_message("PN-VT-1", year_one)).encode(),
        "absurd values",
        "one message prescribed (Dh_prescription, the document's version time) on 0001-01-01 "
        "00:00: legal, but before year 1 in UTC when read in a zone east of UTC",
        messages=1,
        either=1,
        lands={"PN-VT-1": n},
    )
    long_ids = pn13_document(
        pn13_message("PN-LONG-1"),
        pn13_message("PN-LONG-2", {"<Ipp>PN-LONG-2</Ipp>": f"<Ipp>{'P' * 200}</Ipp>"}),
        pn13_message("PN-LONG-3", {"<Id_élément_prescr>id1<": f"<Id_élément_prescr>{'L' * 600}<"}),
        pn13_message("PN-LONG-4"),
    )
    add(
        "long-ids.xml",
        long_ids.encode(),
        "absurd values",
        "four messages: good; an Ipp of 200 characters (the store holds 128); an order line id "
        "of 600 characters (a fact id over the store's 512); good. The two bad ones are located "
        "errors, the others load (the document is one message: it must not be refused whole)",
        messages=1,
        dead=1,
        dead_letters=[
            {"where": "M_Prescription_médicaments[2]"},
            {"where": "Elément_prescr_médic"},
        ],
        lands={"PN-LONG-1": n, "PN-LONG-3": n - 1, "PN-LONG-4": n},
    )
    dup = pn13_message("PN-DUP-1")
    add(
        "duplicate-ids.xml",
        pn13_document(dup, dup).encode(),
        "duplicate ids",
        "the same prescription message twice in one document (same Ipp, stay, order line "
        "id): facts with the same id once",
        messages=1,
        either=1,
        lands={"PN-DUP-1": n},
    )
    add(
        "mixed.xml",
        pn13_document(
            pn13_message("PN-MIX-1"),
            pn13_message("PN-MIX-2", {"<Ipp>PN-MIX-2</Ipp>": "<Ipp></Ipp>"}),
            pn13_message("PN-MIX-3"),
        ).encode(),
        "mixed",
        "three messages, the second without a patient id (a located error at its Patient "
        "element); the others load",
        messages=1,
        dead=1,
        dead_letters=[{"where": "Patient"}],
        lands={"PN-MIX-1": n, "PN-MIX-3": n},
    )
    return files


# CSV ---------------------------------------------------------------------------------------

_CSV_DIR = REPO / "tests/data/csv/french-dpi"


def _csv_rows(name: str) -> tuple[str, list[str]]:
    lines = (_CSV_DIR / name).read_bytes().decode("latin-1").splitlines()
    return lines[0], lines[1:]


def csv_patients(*patients: str, birth: str = "12/05/1938") -> list[str]:
    rows = _csv_rows("PATIENTS_20240301.csv")[1]
    template = rows[0].split(";")
    return [";".join([p, template[1], birth, template[3]]) for p in patients]


def csv_labs(patient: str, value: str = "5,9", when: str = "29/02/2024 06:30") -> str:
    _, rows = _csv_rows("BIOLOGIE_20240301.csv")
    cells = rows[0].split(";")
    cells[0], cells[4], cells[6] = patient, value, when
    return ";".join(cells)


def _csv(name: str, rows: list[str]) -> bytes:
    header = _csv_rows(name)[0]
    return ("\r\n".join([header, *rows]) + "\r\n").encode("latin-1")


def csv_files() -> dict[str, tuple[bytes, dict[str, Any]]]:
    files: dict[str, tuple[bytes, dict[str, Any]]] = {}
    pat, bio = "PATIENTS_20240301.csv", "BIOLOGIE_20240301.csv"

    def add(name: str, content: bytes, category: str, built: str, **expect: Any) -> None:
        files[name] = (content, _entry("csv", name, category, built, **expect))

    add(
        "PATIENTS_good.csv",
        _csv(pat, csv_patients("CSV-GOOD-1", "CSV-GOOD-2")),
        "good",
        "the French export's patient file with two rows (one message: 1,000 rows a message)",
        messages=1,
        loaded=1,
        lands={"CSV-GOOD-1": 1, "CSV-GOOD-2": 1},
    )
    content = _csv(bio, [csv_labs("CSV-TRUNC-1"), csv_labs("CSV-TRUNC-2")])
    add(
        "BIOLOGIE_truncated.csv",
        content[: content.rindex(b";mmol/l;")],
        "truncated",
        "two lab rows, the file cut inside the second (line 3) before its unit",
        messages=1,
        dead=1,
        dead_letters=[{"where": "line 3"}],
        lands={"CSV-TRUNC-1": 1},
        absent=["CSV-TRUNC-2"],
    )
    add(
        "PATIENTS_garbage.csv",
        _csv(
            pat,
            [
                *csv_patients("CSV-GARB-1"),
                _garbage(41, 200, PRINTABLE).decode(),
                *csv_patients("CSV-GARB-3"),
            ],
        ),
        "garbage",
        "a good row, a row of 200 printable random bytes (line 3), a good row",
        messages=1,
        dead=1,
        dead_letters=[{"where": "line 3"}],
        lands={"CSV-GARB-1": 1, "CSV-GARB-3": 1},
    )
    add(
        "PATIENTS_empty.csv",
        b"",
        "empty",
        "an empty file",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 1"}],
    )
    add(
        "PATIENTS_header_only.csv",
        _csv(pat, []),
        "empty",
        "the header and no row",
        messages=0,
        file_rejected=False,
    )
    add(
        "PATIENTS_utf16.csv",
        _csv(pat, csv_patients("CSV-U16-1")).decode("latin-1").encode("utf-16"),
        "wrong encoding",
        "the good patient file in UTF-16 (the mapping says Latin-1)",
        messages=1,
        dead=1,
        rejected=1,
        dead_letters=[{"where": "line 1"}],
        absent=["CSV-U16-1"],
    )
    utf8_rows = (
        _csv(pat, csv_patients("CSV-ENC-1"))
        .decode("latin-1")
        .replace("PATIENT-A", "PATIENT-É")
        .encode("utf-8")
    )
    add(
        "PATIENTS_utf8.csv",
        utf8_rows,
        "wrong encoding",
        "the patient file in UTF-8 where the mapping says Latin-1 (É becomes 'Ã‰': every "
        "byte is Latin-1, the name is not read by Vigie, the row loads)",
        messages=1,
        loaded=1,
        lands={"CSV-ENC-1": 1},
    )
    add(
        "PATIENTS_bom.csv",
        b"\xef\xbb\xbf" + _csv(pat, csv_patients("CSV-BOM-1")),
        "BOM",
        "a UTF-8 byte-order mark before the header of a Latin-1 export: the signature says "
        "UTF-8, the header is read without it and the cells in UTF-8, else in the mapping's "
        "Latin-1, so the row loads",
        messages=1,
        loaded=1,
        lands={"CSV-BOM-1": 1},
    )
    add(
        "PATIENTS_nul.csv",
        _csv(
            pat,
            [
                *csv_patients("CSV-NUL-1"),
                *csv_patients("CSV-N\x00UL-2"),
                *csv_patients("CSV-NUL-3"),
            ],
        ),
        "NUL",
        "three rows, a NUL byte in the second row's IPP (line 3)",
        messages=1,
        dead=1,
        dead_letters=[{"where": "line 3"}],
        lands={"CSV-NUL-1": 1, "CSV-NUL-3": 1},
    )
    add(
        "BIOLOGIE_absurd.csv",
        _csv(
            bio,
            [
                csv_labs("CSV-ABS-1", when="01/01/0000 00:00"),
                csv_labs("CSV-ABS-2", when="31/12/9999 23:59"),
                csv_labs("CSV-ABS-3", value="-5,9"),
                csv_labs("CSV-ABS-4", value="1e308"),
                csv_labs("CSV-ABS-5", value="9" * MB_DIGITS),
                csv_labs("CSV-ABS-6", when="01/01/0001 00:00"),
                csv_labs("CSV-ABS-7"),
            ],
        ),
        "absurd values",
        "lab rows: sampled in year 0 (no such date: a located error at line 2), on "
        "9999-12-31 23:59 and 0001-01-01 00:00; values -5,9, 1e308, 1,000,000 digits; a good "
        "row last (line 8)",
        messages=1,
        dead=1,
        dead_letters=[{"where": "line 2"}],
        lands={"CSV-ABS-7": 1},
        absent=["CSV-ABS-1"],
    )
    add(
        "PATIENTS_duplicate.csv",
        _csv(
            pat,
            [
                *csv_patients("CSV-DUP-1"),
                *csv_patients("CSV-DUP-1"),
                *csv_patients("CSV-DUP-1", birth="03/11/1951"),
            ],
        ),
        "duplicate ids",
        "the same patient row twice, then the same IPP with another birth date: one patient "
        "fact (same id), loaded or reported, never a crash",
        messages=1,
        either=1,
        lands={"CSV-DUP-1": 1},
    )
    add(
        "PATIENTS_mixed.csv",
        _csv(
            pat,
            [
                *csv_patients("CSV-MIX-1"),
                *csv_patients("CSV-MIX-2", birth="32/13/1950"),
                ";PATIENT-X;01/01/1950;F",
                *csv_patients("CSV-MIX-4"),
                '"CSV-MIX-5;PATIENT;01/01/1950;F',
                *csv_patients("CSV-MIX-6"),
            ],
        ),
        "mixed",
        "rows: good (line 2), a birth date 32/13/1950 (line 3), no IPP (line 4), good (line "
        "5), an unclosed quote (line 6, swallowing line 7): the rows from the quote on are a "
        "message of their own (CSV framing), so two messages, both with errors",
        messages=2,
        dead=2,
        dead_letters=[{"where": "line 3"}, {"where": "line 4"}, {"where": "line 6"}],
        lands={"CSV-MIX-1": 1, "CSV-MIX-4": 1},
        absent=["CSV-MIX-6"],
    )
    return files


BUILDERS: dict[str, Callable[[], dict[str, tuple[bytes, dict[str, Any]]]]] = {
    "hl7": hl7_files,
    "hprim": hprim_files,
    "fhir": fhir_files,
    "pn13": pn13_files,
    "csv": csv_files,
}

# Huge fields: built at test time (build_huge), listed in the manifest.
HUGE: dict[str, dict[str, Any]] = {
    "hl7": {"name": "huge-field.hl7", "lands": {"HL7-HUGE-1": 4, "HL7-HUGE-3": 4}},
    "hprim": {"name": "huge-field.hpr", "lands": {"HPR-HUGE-1": 4, "HPR-HUGE-3": 4}},
    "fhir": {"name": "huge-field.ndjson", "lands": {"FH-HUGE-1": 1, "FH-HUGE-3": 1}},
    "pn13": {"name": "huge-field.xml", "lands": {"PN-HUGE-1": 3}},
    "csv": {"name": "PATIENTS_huge.csv", "lands": {"CSV-HUGE-1": 1, "CSV-HUGE-3": 1}},
}


def build_huge(fmt: str) -> bytes:
    """A file whose middle message (row) has a field of ``HUGE_BYTES`` characters."""
    big = "A" * HUGE_BYTES
    if fmt == "hl7":
        msgs = [hl7_message(f"HUGE-{i}", f"HL7-HUGE-{i}") for i in (1, 2, 3)]
        msgs[1] = msgs[1].replace("|Ionogramme^L|", f"|{big}^L|")
        return "\n".join(msgs).encode()
    if fmt == "hprim":
        msgs = [hprim_message(f"HPR-HUGE-{i}") for i in (1, 2, 3)]
        msgs[1] = msgs[1].replace("Anemie macrocytaire", big)
        return "".join(msgs).encode("latin-1")
    if fmt == "fhir":
        middle = _fhir_patient("FH-HUGE-2")
        middle["name"] = [{"family": big}]
        return _ndjson([_fhir_patient("FH-HUGE-1"), middle, _fhir_patient("FH-HUGE-3")])
    if fmt == "pn13":
        return pn13_document(
            pn13_message("PN-HUGE-1"),
            pn13_message("PN-HUGE-2", {"Doliprane cpr 3x1g/j x 3j": big}),
        ).encode()
    rows = csv_patients("CSV-HUGE-1", "CSV-HUGE-2", "CSV-HUGE-3")
    rows[1] = rows[1].replace("PATIENT-A", big)
    return _csv("PATIENTS_20240301.csv", rows)


def huge_entries() -> list[dict[str, Any]]:
    descriptions = {
        "hl7": "OBR-4 text of the second message",
        "hprim": "the comment (C record) of the second message",
        "fhir": "the family name of the second patient line",
        "pn13": "the order line label of the second message",
        "csv": "the name cell of the second row",
    }
    entries = []
    for fmt, spec in HUGE.items():
        messages = 1 if fmt in ("pn13", "csv") else 3
        entry = _entry(
            fmt,
            spec["name"],
            "huge field",
            f"three good messages (rows), {HUGE_BYTES:,} characters in {descriptions[fmt]}: it "
            "is not a key, so it loads (or is dead-lettered alone); built at test time",
            messages=messages,
            loaded=messages - 1,
            either=1,
            lands=spec["lands"],
        )
        entry["at_test_time"] = True
        entries.append(entry)
    return entries


def main() -> None:
    manifest = []
    for fmt, build in BUILDERS.items():
        folder = HERE / fmt
        folder.mkdir(exist_ok=True)
        for stale in folder.iterdir():
            stale.unlink()
        for name, (content, entry) in build().items():
            (folder / name).write_bytes(content)
            manifest.append(entry)
    manifest.extend(huge_entries())
    text = json.dumps({"seeds": SEEDS, "files": manifest}, ensure_ascii=False, indent=1)
    (HERE / "manifest.json").write_text(text + "\n", encoding="utf-8")
    print(f"{len(manifest)} hostile files described in {HERE / 'manifest.json'}")


if __name__ == "__main__":
    main()
