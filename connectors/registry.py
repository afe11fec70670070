"""Which connector reads which feed, which files are feeds, and ``--format auto`` detection.

Feed candidates: every file named on the command line is one; inside a folder, every file but
hidden ones and the documentation and metadata that travel with feeds (``is_metadata``:
README, LICENSE, NOTICE, CHANGELOG, MANIFEST.json, ``*.md``, and the synthetic generator's
``hospital.json``, ``truth.json``, ``truth.csv``). Those are skipped, and the ingest report says
so. A candidate that no connector recognises is rejected with ``UnknownFormat``, a located
error saying what was found (an empty file, UTF-16 text, a JSON array, a header no mapping
knows...) and what was expected; it is never skipped in silence.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from vigie.connectors.base import Connector
from vigie.errors import VigieError

__all__ = [
    "FORMATS",
    "METADATA_NAMES",
    "UnknownFormat",
    "connector_for",
    "detect_format",
    "is_metadata",
]

# feed name -> module implementing the Connector protocol
FORMATS: dict[str, str] = {
    "fhir": "vigie.connectors.fhir.connector",
    "hl7": "vigie.connectors.hl7v2.connector",
    "hprim": "vigie.connectors.hprim",
    "pn13": "vigie.connectors.pn13",
    "csv": "vigie.connectors.tabular.connector",
}

# Sniffing order: the most specific signatures first.
_SNIFF_ORDER = ("hprim", "hl7", "pn13", "fhir", "csv")

# Files met in a folder that are not feeds (lower case): exact names, and name prefixes.
METADATA_NAMES = frozenset({"hospital.json", "truth.json", "truth.csv", "manifest.json"})
_METADATA_PREFIXES = ("readme", "license", "licence", "notice", "changelog")
_METADATA_SUFFIXES = (".md",)

_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_HEAD_BYTES = 4096
_EXPECTED = (
    "a feed: HL7 v2 ('MSH|' at the start of a line), HPRIM ('H|~^\\&|'), FHIR JSON (an object "
    "with 'resourceType') or NDJSON, PN13 XML ('<Messages>'), or a CSV whose header fits a "
    "mapped layout (--mapping); or name the format with --format"
)


class UnknownFormat(VigieError, ValueError):
    """No connector recognises a document."""


def connector_for(fmt: str) -> Connector:
    """The connector module of a format name (``fhir``, ``hl7``, ``hprim``, ``pn13``, ``csv``)."""
    if fmt not in FORMATS:
        raise UnknownFormat(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    module: Connector = importlib.import_module(FORMATS[fmt])
    return module


def is_metadata(name: str) -> bool:
    """Whether a file met in a folder is documentation or metadata, not a feed."""
    lowered = name.lower()
    return (
        lowered in METADATA_NAMES
        or lowered.startswith(_METADATA_PREFIXES)
        or lowered.endswith(_METADATA_SUFFIXES)
    )


def detect_format(path: Path, content: bytes) -> str:
    """The format of a document from its content and name, or a located ``UnknownFormat``.

    ``content`` is the whole document: each connector's ``sniff`` reads as much as it needs
    (most a few KB; FHIR parses the JSON when ``resourceType`` is not near the start).
    """
    problem = _not_text(content)
    if problem is None:
        others = [fmt for fmt in FORMATS if fmt not in _SNIFF_ORDER]
        for fmt in (*others, *_SNIFF_ORDER):
            if connector_for(fmt).sniff(content, path.name):
                return fmt
        problem = ("line 1", _describe(content))
    position, found = problem
    raise UnknownFormat(f"{path}: {position}: expected {_EXPECTED}, got {found}")


def _not_text(content: bytes) -> tuple[str, str] | None:
    """(position, what was found) when a document is empty or not ASCII-compatible text."""
    if not content.removeprefix(_UTF8_BOM).strip():
        return "byte 0", "an empty file" if not content else "an empty file (blanks only)"
    head = content[:_HEAD_BYTES]
    if head.startswith(_UTF16_BOMS):
        return "byte 0", (
            f"UTF-16 text (byte-order mark {head[:2].hex(' ').upper()}); feeds are read as "
            "UTF-8 or an ISO 8859 charset: re-encode the file as UTF-8"
        )
    nul = head.find(b"\x00")
    if nul >= 0:
        looks_utf16 = head[0:1] == b"\x00" or head[1:2] == b"\x00"
        what = "UTF-16 text without byte-order mark" if looks_utf16 else "binary content"
        return f"byte {nul}", (
            f"{what} (a NUL byte); feeds are read as UTF-8 or an ISO 8859 charset"
            + (": re-encode the file as UTF-8" if looks_utf16 else "")
        )
    return None


def _describe(content: bytes) -> str:
    """What a text document that no connector took starts with."""
    text = content.removeprefix(_UTF8_BOM).lstrip()
    first = text.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace")
    shown = repr(first if len(first) <= 60 else first[:59] + "…")
    if text.startswith(b"["):
        return f"a JSON array {shown} (FHIR JSON is one object: a Bundle or a resource)"
    if text.startswith(b"{"):
        return f"a JSON object without 'resourceType' {shown}"
    return shown
