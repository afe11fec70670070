"""The fact store: raw inbound messages, dead letters and facts (``vigie.store.database``)."""

from vigie.store.database import (
    DeadLetter,
    FactStore,
    RawRecord,
    StoreError,
    default_database_url,
)

__all__ = [
    "DeadLetter",
    "FactStore",
    "RawRecord",
    "StoreError",
    "default_database_url",
]
