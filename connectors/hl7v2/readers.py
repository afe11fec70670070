"""The two HL7 v2 message readers and the choice between them (``VIGIE_HL7_PARSER``).

``lazy`` (``vigie.connectors.hl7v2.message.Hl7Message``, the default: about 4x faster) splits
fields only when read; ``python-hl7`` (``vigie.connectors.hl7v2.hl7lib_reader.Hl7libMessage``)
reads every field from the tree ``hl7.parse`` builds. Both give the same facts and errors.
"""

from __future__ import annotations

from vigie import settings
from vigie.connectors.base import RawMessage
from vigie.connectors.hl7v2.hl7lib_reader import Hl7libMessage
from vigie.connectors.hl7v2.message import Hl7Message

__all__ = ["HL7_PARSERS", "read_message", "selected_parser"]

HL7_PARSERS: tuple[str, ...] = settings.choices("hl7_parser")  # ("lazy", "python-hl7")


def selected_parser() -> str:
    """The reader chosen by ``VIGIE_HL7_PARSER``; ``ConfigurationError`` (a ``ValueError``)
    naming the choices if unknown.

    Read on every call, not cached: it costs nothing next to a parse, and a test or a
    long-running service can switch it.
    """
    name: str = settings.value("hl7_parser")
    return name


def read_message(raw: RawMessage) -> Hl7Message:
    """One message read by the selected reader; ``FeedError`` if it cannot be read."""
    if selected_parser() == "python-hl7":
        return Hl7libMessage(raw)
    return Hl7Message(raw)
