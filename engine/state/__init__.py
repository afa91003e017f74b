"""The state store: the one truth about endpoints, config versions, entities and the lock."""

from ._lock import LockHeld, LockInfo
from ._records import EndpointRow, EntityRow, HistoryRow
from ._sqlite import SqliteStateStore, StateError, open_state, resolve_state_path

__all__ = [
    "EndpointRow",
    "EntityRow",
    "HistoryRow",
    "LockHeld",
    "LockInfo",
    "SqliteStateStore",
    "StateError",
    "open_state",
    "resolve_state_path",
]
