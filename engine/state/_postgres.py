"""PostgreSQL implementation of the state store (for a team, and for several serving hosts).

The same tables, columns and schema versions as the SQLite store (its DDL, translated by
`pg_ddl`), the same `meta` rows (lineage, serial, schema_version) and the same Python
migration steps; rows are mapped by the shared functions of `_rows.py`.

Transactions, as on SQLite:

- every write is one transaction that first locks the `serial` row (`FOR UPDATE`), so writers
  queue as they do behind SQLite's `BEGIN IMMEDIATE`, then bumps it;
- reads that must agree with each other (`snapshot`, `serving_view`) run in one REPEATABLE
  READ transaction: one consistent view of the database;
- the state lock is taken under a transaction-scoped advisory lock, so two acquirers cannot
  both see it free; a dead holder's lock is taken over, as on SQLite.

A connection that broke (the server restarted) is replaced at the next call; the call that
found it broken fails with StateError, which the serving host logs while it keeps serving its
last good routing table.
"""

from __future__ import annotations

import os
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

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
from engine.state._pgconn import PgConnection, QmarkConnection, mask_url, pg_ddl
from engine.state._rows import (
    MIGRATION_STEPS,
)
from engine.state._sqlite import _MIGRATIONS, SCHEMA_VERSION
from engine.state._statements import SharedStatements
from engine.state._ui_sessions import UiSessionRecords
from engine.state.location import StateLocation
from engine.state.notify import STATE_CHANNEL
from schemas import now_ms

__all__ = ["PostgresStateStore"]

# Advisory lock keys (64-bit) derived from names, so each use has its own.
_MIGRATE_KEY = zlib.crc32(b"serving-engine:migrate")


_LOCK_COLUMNS = (
    "key",
    "id",
    "holder",
    "operation",
    "acquired_ms",
    "lease_expires_ms",
    "host",
    "pid",
)


def _lock_key(name: str) -> int:
    return zlib.crc32(f"serving-engine:lock:{name}".encode())


def _overlaps(held: Sequence[str], wanted: Sequence[str]) -> bool:
    """Whether a (dead) lock on `held` stands in the way of `wanted` (see blocking_lock)."""
    return WHOLE_STATE in (*held, *wanted) or bool(set(held) & set(wanted))


class PostgresStateStore(HostRecords, UiSessionRecords, SharedStatements):
    def __init__(self, location: StateLocation) -> None:
        self.location = location
        # Per-host files (runner folders, logs, the model cache) live in the local folder.
        self.path = location.local_dir / "state.postgresql"
        self._pg = PgConnection(location.url)
        self._mutex = self._pg.mutex
        self._migrate()

    def close(self) -> None:
        self._pg.close()

    def __enter__(self) -> PostgresStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------

    def _error(self, exc: psycopg.Error) -> StateError:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return StateError(f"state database {mask_url(self.location.url)}: {detail}")

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with self._mutex:
            try:
                conn = self._pg.begin(begin)
            except psycopg.Error as exc:
                raise self._error(exc) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if not conn.broken:
                    conn.execute("ROLLBACK")
                if isinstance(exc, psycopg.Error):
                    raise self._error(exc) from None
                raise

    @contextmanager
    def _write(self) -> Iterator[QmarkConnection]:
        """One transaction that bumps the serial (writers queue on the serial row)."""
        with self._transaction("BEGIN") as conn:
            conn.execute("SELECT value FROM meta WHERE key = 'serial' FOR UPDATE")
            yield QmarkConnection(self._pg)
            conn.execute("UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'serial'")
            # Delivered at commit: the replicas listening rebuild their tables (notify.py).
            conn.execute(f"NOTIFY {STATE_CHANNEL}")

    @contextmanager
    def _read(self) -> Iterator[QmarkConnection]:
        with self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"):
            yield QmarkConnection(self._pg)

    @staticmethod
    def _meta(conn: QmarkConnection, key: str) -> str:
        return conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()["value"]

    @contextmanager
    def _untracked(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A write that is not a state change (host heartbeats, lock bookkeeping)."""
        with self._transaction("BEGIN") as conn:
            yield conn

    def _migrate(self) -> None:
        # Two processes opening a new database at once: one migrates, the other then sees it.
        with self._untracked() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_KEY,))
            version = 0
            if conn.execute("SELECT to_regclass('meta') AS t").fetchone()["t"] is not None:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = int(row["value"]) if row else 0
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{mask_url(self.location.url)} was written by a newer serving-engine "
                    f"(schema {version}, this one knows {SCHEMA_VERSION}); upgrade serving-engine"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in pg_ddl(_MIGRATIONS[target]).split(";"):
                    if statement.strip():
                        conn.execute(statement)
                if target in MIGRATION_STEPS:
                    MIGRATION_STEPS[target](QmarkConnection(self._pg))
                if target == 1:
                    conn.execute(
                        "INSERT INTO meta (key, value) VALUES ('lineage', %s), ('serial', '0')",
                        (uuid.uuid4().hex,),
                    )
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(target),),
                )

    @contextmanager
    def _hosts_tx(self) -> Iterator[QmarkConnection]:
        """An untracked transaction on the hosts table, serialised by an advisory lock."""
        with self._untracked() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("hosts"),))
            yield QmarkConnection(self._pg)

    # -- locks: per endpoint name, or WHOLE_STATE ---------------------------------------------

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
        """Take every key or none, waiting up to `timeout` seconds; a dead holder's lock is
        taken over whole (see the SQLite store).

        PostgreSQL's own locking makes check-and-take atomic without queueing every acquirer:
        transaction-scoped advisory locks, one per key in sorted order (two acquirers can never
        wait on each other in a cycle), and WHOLE_STATE's key taken exclusively by a whole-state
        lock but shared by a per-endpoint one, so updates of different endpoints go through at
        once and a whole-state acquirer excludes them all. Released with the transaction: an
        acquirer that dies leaves nothing behind."""
        wanted = lock_keys(keys)
        deadline = time.monotonic() + timeout
        while True:
            with self._untracked() as conn:
                whole = (
                    "pg_advisory_xact_lock"
                    if WHOLE_STATE in wanted
                    else ("pg_advisory_xact_lock_shared")
                )
                conn.execute(f"SELECT {whole}(%s)", (_lock_key(WHOLE_STATE),))
                for key in wanted:
                    if key != WHOLE_STATE:
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(key),))
                held = self._lock_rows(conn)
                now = now_ms()
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
                    dead = [i.id for i in held if _overlaps(i.keys, wanted)]
                    conn.execute("DELETE FROM locks WHERE id = ANY(%s)", (dead,))
                    conn.cursor().executemany(
                        "INSERT INTO locks (key, id, holder, operation, acquired_ms, "
                        "lease_expires_ms, host, pid) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
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
                    return info
            if time.monotonic() >= deadline:
                raise LockHeld(blocker)
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def renew_lock(self, lock_id: str, lease_ms: int = DEFAULT_LEASE_MS) -> None:
        with self._untracked() as conn:
            conn.execute(
                "UPDATE locks SET lease_expires_ms = %s WHERE id = %s",
                (now_ms() + lease_ms, lock_id),
            )

    def release_lock(self, lock_id: str) -> None:
        with self._untracked() as conn:
            conn.execute("DELETE FROM locks WHERE id = %s", (lock_id,))

    def force_unlock(self, lock_id: str) -> LockInfo:
        with self._untracked() as conn:
            held = self._lock_rows(conn)
            match = [i for i in held if i.id == lock_id]
            if not match:
                raise StateError(no_such_lock(lock_id, held))
            conn.execute("DELETE FROM locks WHERE id = %s", (lock_id,))
            return match[0]

    @staticmethod
    def _lock_rows(conn: Any) -> list[LockInfo]:
        """On a psycopg connection or a QmarkConnection (dict rows on both)."""
        rows = conn.execute(
            "SELECT key, id, holder, operation, acquired_ms, lease_expires_ms, host, pid "
            "FROM locks ORDER BY id, key"
        ).fetchall()
        return group_lock_rows(tuple(r[c] for c in _LOCK_COLUMNS) for r in rows)
