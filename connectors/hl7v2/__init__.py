"""HL7 v2 connector: framing, message readers, clinical, pharmacy and history loaders.

The ``Connector`` protocol is implemented in ``vigie.connectors.hl7v2.connector``.
"""

from vigie.connectors.hl7v2.connector import (
    SUPPORTED_MESSAGES,
    Hl7Outcome,
    feed,
    parse,
    sniff,
    split,
)

__all__ = [
    "SUPPORTED_MESSAGES",
    "Hl7Outcome",
    "feed",
    "parse",
    "sniff",
    "split",
]
