"""The state store: the one truth about endpoints, config versions, entities and the lock.

`StateStore` (protocol.py) is the interface callers are typed against; `SqliteStateStore` is the
embedded default that implements it, `PostgresStateStore` (_postgres.py) the one for a team.
`open_state` picks one from a `StateLocation` (location.py): a path or a `postgresql://` URL.
"""

from engine.state._hosts import RUNNER_ROLE
from engine.state._lock import RECONCILE_OP, SCALE_TO_ZERO_OP, WHOLE_STATE, LockHeld, LockInfo
from engine.state._open import open_state
from engine.state._private import create_private_file
from engine.state._records import EndpointRow, EntityRow, HistoryRow
from engine.state._sqlite import SqliteStateStore, StateError, resolve_state_path
from engine.state.location import StateLocation, resolve_state
from engine.state.protocol import CoreStore, DirectoryStore, Permission, StateStore

__all__ = [
    "RECONCILE_OP",
    "RUNNER_ROLE",
    "SCALE_TO_ZERO_OP",
    "WHOLE_STATE",
    "CoreStore",
    "DirectoryStore",
    "EndpointRow",
    "EntityRow",
    "HistoryRow",
    "LockHeld",
    "LockInfo",
    "Permission",
    "SqliteStateStore",
    "StateError",
    "StateLocation",
    "StateStore",
    "create_private_file",
    "open_state",
    "resolve_state",
    "resolve_state_path",
]
