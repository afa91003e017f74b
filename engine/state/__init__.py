"""The state store: the one truth about endpoints, config versions, entities and the lock."""

from engine.state._lock import LockHeld, LockInfo
from engine.state._records import EndpointRow, EntityRow, HistoryRow
from engine.state._sqlite import SqliteStateStore, StateError, open_state, resolve_state_path

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
