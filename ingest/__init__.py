"""The ingest pipeline: feed files → raw messages (kept first) → connectors → facts → store.

Used by the command line (``vigie ingest``, ``vigie quality``, ``vigie demo``) and by the HTTP
service's feed endpoints; see ``vigie.ingest.pipeline``.
"""

from vigie.ingest.pipeline import (
    FileReport,
    IngestReport,
    ParsedMessage,
    ingest,
    read_feed,
    recover,
)

__all__ = ["FileReport", "IngestReport", "ParsedMessage", "ingest", "read_feed", "recover"]
