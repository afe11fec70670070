"""FHIR R4 connector: Bundles and Bulk NDJSON, validated and fast paths.

The ``Connector`` protocol is implemented in ``vigie.connectors.fhir.connector``.
"""

from vigie.connectors.fhir.connector import (
    feed,
    parse,
    parse_decoded,
    resource_facts,
    sniff,
    split,
    validation_mode,
)

__all__ = [
    "feed",
    "parse",
    "parse_decoded",
    "resource_facts",
    "sniff",
    "split",
    "validation_mode",
]
