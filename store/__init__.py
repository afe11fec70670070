"""The fact store: raw inbound messages, dead letters and facts (``vigie.store.database``), and
the alerts with their lifecycle (``vigie.store.alerts``), in one database."""

from vigie.store.alerts import (
    AlertError,
    AlertEvent,
    AlertStore,
    AlertTransitionError,
    Dismissal,
    Intervention,
    Reconciled,
    StoredAlert,
    UnknownAlertError,
)
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
    "AlertError",
    "AlertEvent",
    "AlertStore",
    "AlertTransitionError",
    "DeadLetter",
    "Dismissal",
    "FactStore",
    "Intervention",
    "MessageOutcome",
    "RawRecord",
    "RawVersion",
    "Reconciled",
    "SavedBatch",
    "StoreError",
    "StoredAlert",
    "StoredRaw",
    "UnknownAlertError",
    "default_database_url",
]
