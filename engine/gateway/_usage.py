"""Usage records (`ai_gateway.usage_tracking_config.enabled`), written off the hot path.

Requests append to an in-memory list; a background thread flushes it to `usage.db` beside the
state every second (and on shutdown), so a request never waits for a disk write. The file says
who called what: it is created 0600, as the state is. With a PostgreSQL state the records go
to that database instead (schema `engine_usage`, the same table), so the usage of every
replica is in one place.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any, NamedTuple

from engine.state import StateLocation, create_private_file, resolve_state

__all__ = [
    "USAGE_DB_NAME",
    "UsageRecord",
    "UsageRecorder",
    "create_usage_table",
    "query_usage",
    "read_usage",
    "usage_recorder_for",
]

USAGE_DB_NAME = "usage.db"
log = logging.getLogger("engine.gateway")
_PG_SCHEMA = "engine_usage"


class UsageRecord(NamedTuple):
    """One answered request's usage (a tuple: made once per request on the event loop, where
    a frozen dataclass's __init__ costs several times as much)."""

    at_ms: int
    endpoint: str
    entity: str
    principal: str
    status: int
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    at_ms INTEGER NOT NULL, endpoint TEXT NOT NULL, entity TEXT NOT NULL,
    principal TEXT NOT NULL, status INTEGER NOT NULL, latency_ms REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL
)
"""
# The Serving UI's charts read one endpoint's last hours (engine/ui/_charts.py): an index that
# holds every column they read, so the read touches only that endpoint's records, in order.
_INDEX = (
    "CREATE INDEX IF NOT EXISTS usage_by_endpoint ON usage "
    "(endpoint, at_ms, status, latency_ms, prompt_tokens, completion_tokens)"
)


def create_usage_table(conn: Any) -> None:
    """The usage table (and the charts' index) in a PostgreSQL connection whose search path
    is `engine_usage`."""
    from engine.state._pgconn import pg_ddl

    conn.execute(pg_ddl(_SCHEMA))
    conn.execute(_INDEX)


def usage_recorder_for(state: Path | str | StateLocation) -> UsageRecorder:
    """`usage.db` beside a SQLite state; the state's own database for PostgreSQL."""
    location = resolve_state(state)
    if location.is_postgres:
        return UsageRecorder(location.local_dir / USAGE_DB_NAME, postgres_url=location.url)
    return UsageRecorder(location.path.parent / USAGE_DB_NAME)


_COLUMNS = len(UsageRecord._fields)


def _rows_per_statement(conn: sqlite3.Connection) -> int:
    """Rows one INSERT may carry: this SQLite's bound on variables (999 before 3.32)."""
    return max(1, min(conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // _COLUMNS, 1000))


def _insert_rows(n: int) -> str:
    row = "(" + ", ".join("?" * _COLUMNS) + ")"
    return "INSERT INTO usage VALUES " + ", ".join([row] * n)


class UsageRecorder:
    def __init__(
        self, path: Path, interval: float = 1.0, *, postgres_url: str | None = None
    ) -> None:
        self.path = path
        self._postgres_url = postgres_url
        self._pending: list[UsageRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="usage-flush", daemon=True)

    def start(self) -> None:
        if self._postgres_url is not None:
            import psycopg

            # Replicas starting at once may race to create it; the loser's error is moot.
            with self._pg() as conn, contextlib.suppress(psycopg.errors.UniqueViolation):
                create_usage_table(conn)
        else:
            create_private_file(self.path)
            with sqlite3.connect(self.path) as conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(_SCHEMA)
                conn.execute(_INDEX)
        self._thread.start()

    def _pg(self) -> Any:
        """A short-lived connection: a flush a second is far from needing a pool."""
        from engine.state._pgconn import PgConnection

        assert self._postgres_url is not None
        return PgConnection(self._postgres_url, schema=_PG_SCHEMA).live()

    def record(self, record: UsageRecord) -> None:
        with self._lock:
            self._pending.append(record)

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        # The records are the rows: tuples in the table's column order. Few statements, not
        # one per row: each database call lets go of the GIL, and under load taking it back
        # from the event loop waits out the switch interval (5 ms) every time, so a row at a
        # time made a 12 ms flush of 1,500 rows take seconds and the loop switch threads
        # hundreds of times a second.
        if self._postgres_url is not None:
            with (
                self._pg() as conn,
                conn.cursor() as cursor,
                cursor.copy("COPY usage FROM STDIN") as copy,
            ):
                for row in batch:
                    copy.write_row(row)
            return
        with sqlite3.connect(self.path, timeout=30) as conn:
            per_statement = _rows_per_statement(conn)
            for start in range(0, len(batch), per_statement):
                chunk = batch[start : start + per_statement]
                conn.execute(_insert_rows(len(chunk)), [v for row in chunk for v in row])

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - a database that is down loses a batch, not the thread
                log.exception("cannot write usage records")

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.flush()


def read_usage(path: Path | StateLocation) -> list[UsageRecord]:
    """The records of `usage.db`, or of a state location's (its database for PostgreSQL)."""
    if isinstance(path, StateLocation):
        if path.is_postgres:
            return _read_usage_pg(path.url)
        path = path.path.parent / USAGE_DB_NAME
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT * FROM usage ORDER BY at_ms").fetchall()
    return [UsageRecord(*row) for row in rows]


def _read_usage_pg(url: str) -> list[UsageRecord]:
    from engine.state._pgconn import PgConnection

    pg = PgConnection(url, schema=_PG_SCHEMA)
    try:
        conn = pg.live()
        if conn.execute("SELECT to_regclass('usage') AS t").fetchone()["t"] is None:
            return []
        rows = conn.execute("SELECT * FROM usage ORDER BY at_ms").fetchall()
    finally:
        pg.close()
    return [UsageRecord(**row) for row in rows]


def query_usage(
    location: StateLocation, sql: str, params: tuple[Any, ...]
) -> list[tuple[Any, ...]]:
    """Rows of one read-only query (`?` placeholders) on a state's usage records; none yet:
    no rows."""
    if location.is_postgres:
        from engine.state._pgconn import PgConnection

        pg = PgConnection(location.url, schema=_PG_SCHEMA)
        try:
            conn = pg.live()
            if conn.execute("SELECT to_regclass('usage') AS t").fetchone()["t"] is None:
                return []
            rows = conn.execute(sql.replace("?", "%s"), params).fetchall()
        finally:
            pg.close()
        return [tuple(r.values()) for r in rows]
    path = location.path.parent / USAGE_DB_NAME
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
        return conn.execute(sql, params).fetchall()
