"""SQLite implementation of the state store (the embedded default).

WAL mode so that the serving host can read while an apply writes; every write is one
`BEGIN IMMEDIATE` transaction that bumps the monotonic serial, so a crash between two steps
leaves exactly the steps before it. The schema carries a version; `_MIGRATIONS` upgrades older
files in place (the PostgreSQL store runs the same versions, translated by `pg_ddl`). The
statements both stores share live in `_statements.py`; this module holds SQLite's own part:
transactions, migrations, locks and the host records.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from engine.state._errors import StateError
from engine.state._hosts import HostRecords
from engine.state._lock import (
    DEFAULT_LEASE_MS,
    WHOLE_STATE,
    LockHeld,
    LockInfo,
    blocking_lock,
    group_lock_rows,
    lock_keys,
    no_such_lock,
    this_host,
)
from engine.state._private import create_private_file
from engine.state._rows import MIGRATION_STEPS as _MIGRATION_STEPS
from engine.state._statements import SharedStatements
from engine.state._ui_sessions import UiSessionRecords
from engine.state.location import STATE_ENV_VAR, StateLocation
from schemas import (
    now_ms,
)

__all__ = ["SqliteStateStore", "StateError", "resolve_state_path"]

SCHEMA_VERSION = 9

_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE endpoints (
        name TEXT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        stack TEXT,
        creator TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        spec TEXT,
        config_version INTEGER,
        config_update TEXT NOT NULL DEFAULT 'NOT_UPDATING',
        update_message TEXT NOT NULL DEFAULT '',
        pending TEXT,
        pending_version INTEGER,
        pending_started_ms INTEGER,
        secret_refs TEXT NOT NULL DEFAULT '{}',
        pending_secret_refs TEXT NOT NULL DEFAULT '{}',
        deleting INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE entities (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        endpoint TEXT NOT NULL,
        name TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        config TEXT NOT NULL,
        role TEXT NOT NULL,
        deployment TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        handle TEXT,
        config_version INTEGER NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE INDEX entities_by_endpoint ON entities (endpoint, role);
    CREATE TABLE history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        endpoint TEXT NOT NULL,
        config_version INTEGER,
        at_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        summary TEXT NOT NULL
    );
    CREATE INDEX history_by_endpoint ON history (endpoint, id);
    CREATE TABLE lock (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        id TEXT NOT NULL,
        holder TEXT NOT NULL,
        operation TEXT NOT NULL,
        acquired_ms INTEGER NOT NULL,
        lease_expires_ms INTEGER NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL
    );
    """,
    # Callers of the serving host (hashed bearer tokens) and serving-host heartbeats.
    2: """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        principal TEXT NOT NULL,
        groups TEXT NOT NULL DEFAULT '[]',
        kind TEXT NOT NULL DEFAULT 'user',
        admin INTEGER NOT NULL DEFAULT 0,
        comment TEXT NOT NULL DEFAULT '',
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE hosts (
        id TEXT PRIMARY KEY,
        pid INTEGER NOT NULL,
        hostname TEXT NOT NULL,
        address TEXT NOT NULL,
        started_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL
    );
    """,
    # Access control lists of endpoints, keyed by endpoint id (as the platform's API is).
    3: """
    CREATE TABLE permissions (
        endpoint_id TEXT NOT NULL,
        principal_type TEXT NOT NULL,
        principal TEXT NOT NULL,
        level TEXT NOT NULL,
        PRIMARY KEY (endpoint_id, principal_type, principal)
    );
    """,
    # The local model catalog: what `entity_name` + `entity_version` serve.
    4: """
    CREATE TABLE models (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        path TEXT NOT NULL,
        task TEXT NOT NULL,
        model_type TEXT,
        context_length INTEGER,
        default_system_prompt TEXT,
        throughput_chunk_size INTEGER,
        registered_ms INTEGER NOT NULL,
        PRIMARY KEY (name, version)
    );
    """,
    # `secret_refs` were never read: the references live in the spec, managed secrets in the
    # secret store. Dropped rather than kept as a second, stale copy.
    5: """
    ALTER TABLE endpoints DROP COLUMN secret_refs;
    ALTER TABLE endpoints DROP COLUMN pending_secret_refs;
    """,
    # Secret scope ACLs (READ < WRITE < MANAGE per principal name), and what kind of principal
    # created each endpoint: its secrets are resolved as that principal. `operator` is whoever
    # runs the CLI on the state files without a token (an admin of this state).
    6: """
    CREATE TABLE secret_acls (
        scope TEXT NOT NULL,
        principal TEXT NOT NULL,
        permission TEXT NOT NULL,
        PRIMARY KEY (scope, principal)
    );
    ALTER TABLE endpoints ADD COLUMN creator_kind TEXT NOT NULL DEFAULT 'operator';
    """,
    # Locks per endpoint instead of one lock on the whole state: a row per key held, the rows
    # of one acquisition sharing its id. A lock held across the upgrade keeps holding it all.
    7: """
    CREATE TABLE locks (
        key TEXT PRIMARY KEY,
        id TEXT NOT NULL,
        holder TEXT NOT NULL,
        operation TEXT NOT NULL,
        acquired_ms INTEGER NOT NULL,
        lease_expires_ms INTEGER NOT NULL,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL
    );
    CREATE INDEX locks_by_id ON locks (id);
    INSERT INTO locks SELECT '*', id, holder, operation, acquired_ms, lease_expires_ms, host, pid
        FROM lock;
    DROP TABLE lock;
    """,
    # Several serving hosts (replicas) on one state: the one that runs the runners, how each
    # counts rate limits (all must agree), what its routing table has caught up with (drains
    # wait for every replica), and the hash of the key replicas call each other with.
    8: """
    ALTER TABLE hosts ADD COLUMN role TEXT NOT NULL DEFAULT '';
    ALTER TABLE hosts ADD COLUMN limits TEXT NOT NULL DEFAULT '';
    ALTER TABLE hosts ADD COLUMN report TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE hosts ADD COLUMN peer_hash TEXT NOT NULL DEFAULT '';
    """,
    # Serving UI sessions, so that any replica accepts one (engine/state/_ui_sessions.py): the
    # hash of the session id, the bearer token sealed with a key derived from the id.
    9: """
    CREATE TABLE ui_sessions (
        id_hash TEXT PRIMARY KEY,
        sealed_token TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL
    );
    CREATE INDEX ui_sessions_by_seen ON ui_sessions (last_seen_ms);
    """,
}


def resolve_state_path(state: Path | None) -> Path:
    """`--state`, else `$ENGINE_STATE`, else `.engine/state.db` under the working directory."""
    if state is not None:
        return state
    from_env = os.environ.get(STATE_ENV_VAR, "").strip()
    return Path(from_env) if from_env else Path.cwd() / ".engine" / "state.db"


def _now_ms() -> int:
    return now_ms()


class SqliteStateStore(HostRecords, UiSessionRecords, SharedStatements):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.location = StateLocation(str(self.path), self.path.parent)
        try:
            create_private_file(self.path)
            self._conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            # Rows are read by column name, so a migration that adds or drops a column cannot
            # shift what a position means.
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=30000")
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open state file {self.path}: {exc}") from None
        self._mutex = threading.RLock()
        self._migrate()

    def close(self) -> None:
        with self._mutex:
            self._conn.close()

    def __enter__(self) -> SqliteStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One durable transaction that bumps the serial."""
        with self._mutex:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'serial'"
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._mutex:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                tables = {
                    r["name"]
                    for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                version = 0
                if "meta" in tables:
                    row = self._conn.execute(
                        "SELECT value FROM meta WHERE key = 'schema_version'"
                    ).fetchone()
                    version = int(row["value"]) if row else 0
                if version > SCHEMA_VERSION:
                    raise StateError(
                        f"{self.path} was written by a newer serving-engine (schema "
                        f"{version}, this one knows {SCHEMA_VERSION}); upgrade serving-engine"
                    )
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[target].split(";"):
                        if statement.strip():
                            self._conn.execute(statement)
                    if target in _MIGRATION_STEPS:
                        _MIGRATION_STEPS[target](self._conn)
                    if target == 1:
                        self._conn.executemany(
                            "INSERT INTO meta (key, value) VALUES (?, ?)",
                            [("lineage", uuid.uuid4().hex), ("serial", "0")],
                        )
                    self._conn.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                        (str(target),),
                    )
                self._conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._conn.execute("ROLLBACK") if self._conn.in_transaction else None
                raise StateError(f"{self.path} is not a usable state file: {exc}") from None
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def _meta(self, conn: sqlite3.Connection, key: str) -> str:
        return conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()["value"]

    # -- reading ----------------------------------------------------------------------------

    # -- tokens and hosts -------------------------------------------------------------------

    @contextmanager
    def _hosts_tx(self) -> Iterator[sqlite3.Connection]:
        """An untracked transaction on the hosts table (the serial stays)."""
        with self._mutex:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- the lock ---------------------------------------------------------------------------

    def locks(self) -> list[LockInfo]:
        with self._read() as conn:
            return self._lock_rows(conn)

    def acquire_lock(
        self,
        operation: str,
        *,
        holder: str,
        keys: Sequence[str] = (WHOLE_STATE,),
        timeout: float = 0.0,
        lease_ms: int = DEFAULT_LEASE_MS,
    ) -> LockInfo:
        """Take every key or none, waiting up to `timeout` seconds; a dead holder's keys are
        taken over (its whole lock goes, so no half of it lingers)."""
        wanted = lock_keys(keys)
        deadline = time.monotonic() + timeout
        while True:
            with self._mutex:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    held = self._lock_rows(self._conn)
                    now = _now_ms()
                    blocker = blocking_lock(held, wanted, now)
                    if blocker is None:
                        info = LockInfo(
                            id=uuid.uuid4().hex[:12],
                            holder=holder,
                            operation=operation,
                            acquired_ms=now,
                            lease_expires_ms=now + lease_ms,
                            host=this_host(),
                            pid=os.getpid(),
                            keys=wanted,
                        )
                        for dead in held:
                            if set(dead.keys) & set(wanted) or WHOLE_STATE in wanted + dead.keys:
                                self._conn.execute("DELETE FROM locks WHERE id = ?", (dead.id,))
                        self._conn.executemany(
                            "INSERT INTO locks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [
                                (
                                    key,
                                    info.id,
                                    info.holder,
                                    info.operation,
                                    info.acquired_ms,
                                    info.lease_expires_ms,
                                    info.host,
                                    info.pid,
                                )
                                for key in wanted
                            ],
                        )
                        self._conn.execute("COMMIT")
                        return info
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            if time.monotonic() >= deadline:
                raise LockHeld(blocker)
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def renew_lock(self, lock_id: str, lease_ms: int = DEFAULT_LEASE_MS) -> None:
        with self._mutex:
            self._conn.execute(
                "UPDATE locks SET lease_expires_ms = ? WHERE id = ?",
                (_now_ms() + lease_ms, lock_id),
            )

    def release_lock(self, lock_id: str) -> None:
        with self._mutex:
            self._conn.execute("DELETE FROM locks WHERE id = ?", (lock_id,))

    def force_unlock(self, lock_id: str) -> LockInfo:
        with self._mutex:
            self._conn.execute("BEGIN IMMEDIATE")
            held = self._lock_rows(self._conn)
            match = [i for i in held if i.id == lock_id]
            if not match:
                self._conn.execute("ROLLBACK")
                raise StateError(no_such_lock(lock_id, held))
            self._conn.execute("DELETE FROM locks WHERE id = ?", (lock_id,))
            self._conn.execute("COMMIT")
            return match[0]

    # -- row mapping ------------------------------------------------------------------------

    @staticmethod
    def _lock_rows(conn: sqlite3.Connection) -> list[LockInfo]:
        return group_lock_rows(
            tuple(r)
            for r in conn.execute(
                "SELECT key, id, holder, operation, acquired_ms, lease_expires_ms, host, pid "
                "FROM locks ORDER BY id, key"
            )
        )
