"""Which connector reads which feed, and format detection for ``--format auto``."""

from __future__ import annotations

import importlib
from pathlib import Path

from vigie.connectors.base import Connector
from vigie.errors import VigieError

__all__ = ["FORMATS", "UnknownFormat", "connector_for", "detect_format"]

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


class UnknownFormat(VigieError, ValueError):
    """No connector recognises a document."""


def connector_for(fmt: str) -> Connector:
    """The connector module of a format name (``fhir``, ``hl7``, ``hprim``, ``pn13``, ``csv``)."""
    if fmt not in FORMATS:
        raise UnknownFormat(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    module: Connector = importlib.import_module(FORMATS[fmt])
    return module


def detect_format(path: Path, head: bytes) -> str:
    """The format of a document from its first bytes and name, or ``UnknownFormat``."""
    others = [fmt for fmt in FORMATS if fmt not in _SNIFF_ORDER]
    for fmt in (*others, *_SNIFF_ORDER):
        if connector_for(fmt).sniff(head, path.name):
            return fmt
    raise UnknownFormat(
        f"{path}: format not recognised (expected HL7 v2 'MSH|', HPRIM 'H|', FHIR JSON/NDJSON, "
        "PN13 XML or a mapped CSV); use --format"
    )
