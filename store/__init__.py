"""The fact store: raw inbound messages, dead letters and facts (``vigie.store.database``)."""

from vigie.store.database import (
    DONE_STATUSES,
    DeadLetter,
    FactStore,
    MessageOutcome,
    RawRecord,
    RawVersion,
    SavedBatch,
    StoredRaw,
    StoreError,
    default_database_url,
)

__all__ = [
    "DONE_STATUSES",
    "DeadLetter",
    "FactStore",
    "MessageOutcome",
    "RawRecord",
    "RawVersion",
    "SavedBatch",
    "StoreError",
    "StoredRaw",
    "default_database_url",
]
