"""The fact store: raw inbound messages, dead letters and facts (``vigie.store.database``), the
alerts with their lifecycle (``vigie.store.alerts``), and the service's users, wards, decisions,
versions and audit log (``vigie.store.service``), in one database, made and upgraded by its
migrations (``vigie.store.migrations``)."""

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
from vigie.store.service import (
    AuditEntry,
    DecisionRecord,
    ServiceError,
    ServiceStore,
    UnknownResourceError,
    User,
    Ward,
)

__all__ = [
    "DONE_STATUSES",
    "AlertError",
    "AlertEvent",
    "AlertStore",
    "AlertTransitionError",
    "AuditEntry",
    "DeadLetter",
    "DecisionRecord",
    "Dismissal",
    "FactStore",
    "Intervention",
    "MessageOutcome",
    "RawRecord",
    "RawVersion",
    "Reconciled",
    "SavedBatch",
    "ServiceError",
    "ServiceStore",
    "StoreError",
    "StoredAlert",
    "StoredRaw",
    "UnknownAlertError",
    "UnknownResourceError",
    "User",
    "Ward",
    "default_database_url",
]
