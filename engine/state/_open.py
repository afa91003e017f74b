"""Open the state a location names: a SQLite file, or a PostgreSQL database."""

from __future__ import annotations

import os

from engine.state._sqlite import SqliteStateStore
from engine.state.location import StateLocation, resolve_state
from engine.state.protocol import StateStore

__all__ = ["open_state"]


def open_state(state: str | os.PathLike[str] | StateLocation | None = None) -> StateStore:
    """`--state` (a path, a `postgresql://` URL, a location), else `$ENGINE_STATE`, else
    `.engine/state.db`."""
    location = resolve_state(state)
    if location.is_postgres:
        # psycopg is imported only by those who use PostgreSQL.
        from engine.state._postgres import PostgresStateStore

        return PostgresStateStore(location)
    return SqliteStateStore(location.path)
