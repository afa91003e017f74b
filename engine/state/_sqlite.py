"""SQLite implementation of the state store (the embedded default).

WAL mode so that the serving host can read while an apply writes; every write is one
`BEGIN IMMEDIATE` transaction that bumps the monotonic serial, so a crash between two steps
leaves exactly the steps before it. The schema carries a version; `_MIGRATIONS` upgrades older
files in place. The public methods are the whole interface a PostgreSQL store would implement.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
from engine.state._records import EndpointRow, EntityRow, HistoryRow, endpoint_record
from engine.state._rows import MIGRATION_STEPS as _MIGRATION_STEPS
from engine.state._rows import dumps as _dumps
from engine.state._rows import (
    endpoint_from,
    entity_from,
    group_active,
    history_from,
    token_from,
)
from engine.state.location import STATE_ENV_VAR, StateLocation
from plans import StateSnapshot
from schemas import (
    ConfigUpdateState,
    DeploymentState,
    EntityRole,
    now_ms,
)

__all__ = ["SqliteStateStore", "StateError", "resolve_state_path"]

SCHEMA_VERSION = 7

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
}


class StateError(Exception):
    """The state file cannot be used (unreadable, newer schema, inconsistent request)."""


def resolve_state_path(state: Path | None) -> Path:
    """`--state`, else `$ENGINE_STATE`, else `.engine/state.db` under the working directory."""
    if state is not None:
        return state
    from_env = os.environ.get(STATE_ENV_VAR, "").strip()
    return Path(from_env) if from_env else Path.cwd() / ".engine" / "state.db"


def _now_ms() -> int:
    return now_ms()


class SqliteStateStore:
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

    @property
    def lineage(self) -> str:
        with self._read() as conn:
            return self._meta(conn, "lineage")

    @property
    def serial(self) -> int:
        with self._read() as conn:
            return int(self._meta(conn, "serial"))

    def snapshot(self, *, lock_id: str | None = None) -> StateSnapshot:
        """What plans need, read in one transaction.

        An IN_PROGRESS update whose endpoint no live holder has locked (other than `lock_id`,
        the caller's own lock) was left by an apply that died: it is marked interrupted, so the
        plan resumes it.
        """
        with self._read() as conn:
            lineage = self._meta(conn, "lineage")
            serial = int(self._meta(conn, "serial"))
            held = [i for i in self._lock_rows(conn) if i.id != lock_id]
            rows = [self._endpoint(r) for r in conn.execute("SELECT * FROM endpoints")]
        now = _now_ms()
        return StateSnapshot(
            lineage=lineage,
            serial=serial,
            endpoints={row.name: endpoint_record(row, held, now) for row in rows},
        )

    def get_endpoint(self, name: str) -> EndpointRow | None:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM endpoints WHERE name = ?", (name,)).fetchone()
        return self._endpoint(row) if row else None

    def get_endpoint_by_id(self, endpoint_id: str) -> EndpointRow | None:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        return self._endpoint(row) if row else None

    def list_endpoints(self) -> list[EndpointRow]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM endpoints ORDER BY name").fetchall()
        return [self._endpoint(r) for r in rows]

    def entities(self, endpoint: str | None = None, role: str | None = None) -> list[EntityRow]:
        query, args = "SELECT * FROM entities WHERE 1=1", []
        if endpoint is not None:
            query += " AND endpoint = ?"
            args.append(endpoint)
        if role is not None:
            query += " AND role = ?"
            args.append(role)
        with self._read() as conn:
            rows = conn.execute(query + " ORDER BY id", args).fetchall()
        return [self._entity(r) for r in rows]

    def history(self, endpoint: str) -> list[HistoryRow]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT endpoint, config_version, at_ms, actor, action, summary FROM history "
                "WHERE endpoint = ? ORDER BY id",
                (endpoint,),
            ).fetchall()
        return [history_from(r) for r in rows]

    def serving_view(self) -> tuple[int, list[tuple[EndpointRow, list[EntityRow]]]]:
        """The serial and every endpoint with its active entities, read in one transaction."""
        with self._read() as conn:
            serial = int(self._meta(conn, "serial"))
            rows = [self._endpoint(r) for r in conn.execute("SELECT * FROM endpoints")]
            entities = [
                self._entity(r)
                for r in conn.execute(
                    "SELECT * FROM entities WHERE role = ? ORDER BY id", (EntityRole.ACTIVE,)
                )
            ]
        return serial, group_active(rows, entities)

    # -- permissions ----------------------------------------------------------------------------

    def all_permissions(self) -> dict[str, list[tuple[str, str, str]]]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT endpoint_id, principal_type, principal, level FROM permissions"
            ).fetchall()
        out: dict[str, list[tuple[str, str, str]]] = {}
        for r in rows:
            out.setdefault(r["endpoint_id"], []).append(
                (r["principal_type"], r["principal"], r["level"])
            )
        return out

    def permissions(self, endpoint_id: str) -> list[tuple[str, str, str]]:
        """(principal_type, principal, level): user_name, group_name or service_principal_name."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT principal_type, principal, level FROM permissions WHERE endpoint_id = ? "
                "ORDER BY principal_type, principal",
                (endpoint_id,),
            ).fetchall()
        return [(r["principal_type"], r["principal"], r["level"]) for r in rows]

    def set_permissions(
        self, endpoint_id: str, entries: list[tuple[str, str, str]], *, replace: bool
    ) -> None:
        with self._write() as conn:
            if replace:
                conn.execute("DELETE FROM permissions WHERE endpoint_id = ?", (endpoint_id,))
            conn.executemany(
                "INSERT OR REPLACE INTO permissions VALUES (?, ?, ?, ?)",
                [(endpoint_id, t, p, level) for t, p, level in entries],
            )

    # -- secret scope ACLs -------------------------------------------------------------------

    def all_secret_acls(self) -> dict[str, list[tuple[str, str]]]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT scope, principal, permission FROM secret_acls ORDER BY scope, principal"
            ).fetchall()
        out: dict[str, list[tuple[str, str]]] = {}
        for r in rows:
            out.setdefault(r["scope"], []).append((r["principal"], r["permission"]))
        return out

    def secret_acls(self, scope: str) -> list[tuple[str, str]]:
        """(principal, permission) entries of one scope, by principal."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT principal, permission FROM secret_acls WHERE scope = ? ORDER BY principal",
                (scope,),
            ).fetchall()
        return [(r["principal"], r["permission"]) for r in rows]

    def put_secret_acl(self, scope: str, principal: str, permission: str) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO secret_acls VALUES (?, ?, ?)",
                (scope, principal, permission),
            )

    def delete_secret_acl(self, scope: str, principal: str) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM secret_acls WHERE scope = ? AND principal = ?", (scope, principal)
            )
            return cursor.rowcount > 0

    def reset_secret_acls(self, scope: str, entries: list[tuple[str, str]]) -> None:
        """Replace every entry of a scope (a new scope starts from its creator's alone)."""
        with self._write() as conn:
            conn.execute("DELETE FROM secret_acls WHERE scope = ?", (scope,))
            conn.executemany(
                "INSERT OR REPLACE INTO secret_acls VALUES (?, ?, ?)",
                [(scope, principal, permission) for principal, permission in entries],
            )

    # -- the model catalog ------------------------------------------------------------------

    def put_model(self, record: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO models (name, version, path, task, model_type, "
                "context_length, default_system_prompt, throughput_chunk_size, registered_ms) "
                "VALUES (:name, :version, :path, :task, :model_type, :context_length, "
                ":default_system_prompt, :throughput_chunk_size, :registered_ms)",
                {"throughput_chunk_size": None, "registered_ms": _now_ms(), **record},
            )

    def models(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM models ORDER BY name, version").fetchall()
        return [dict(row) for row in rows]

    # -- tokens and hosts -------------------------------------------------------------------

    def add_token(
        self,
        *,
        token_hash: str,
        principal: str,
        groups: list[str],
        kind: str = "user",
        admin: bool = False,
        comment: str = "",
    ) -> str:
        token_id = uuid.uuid4().hex[:12]
        with self._write() as conn:
            conn.execute(
                "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    token_id,
                    token_hash,
                    principal,
                    _dumps(groups),
                    kind,
                    int(admin),
                    comment,
                    _now_ms(),
                ),
            )
        return token_id

    def list_tokens(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, token_hash, principal, groups, kind, admin, comment, created_ms "
                "FROM tokens ORDER BY created_ms"
            ).fetchall()
        return [token_from(r) for r in rows]

    def delete_token(self, token_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount > 0

    def heartbeat(self, host_id: str, *, pid: int, hostname: str, address: str) -> None:
        """Record that a serving host is alive (not a state change: the serial stays)."""
        now = _now_ms()
        with self._mutex:
            self._conn.execute(
                "INSERT INTO hosts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "last_seen_ms = excluded.last_seen_ms, address = excluded.address",
                (host_id, pid, hostname, address, now, now),
            )

    def claim_host(
        self,
        host_id: str,
        *,
        pid: int,
        hostname: str,
        address: str,
        alive: Callable[[dict[str, Any]], bool],
    ) -> dict[str, Any] | None:
        """Record serving host `host_id` unless another host that `alive` accepts is recorded
        (returned then). One transaction, so two hosts starting at once cannot both claim the
        state; the records of dead hosts are removed (a killed host never blocks the next)."""
        now = _now_ms()
        with self._mutex:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                others = [
                    dict(r)
                    for r in conn.execute(
                        "SELECT id, pid, hostname, address, started_ms, last_seen_ms FROM hosts "
                        "WHERE id != ?",
                        (host_id,),
                    )
                ]
                live = next((other for other in others if alive(other)), None)
                if live is None:
                    conn.execute("DELETE FROM hosts WHERE id != ?", (host_id,))
                    conn.execute(
                        "INSERT INTO hosts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE "
                        "SET last_seen_ms = excluded.last_seen_ms, address = excluded.address",
                        (host_id, pid, hostname, address, now, now),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return live

    def hosts(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, pid, hostname, address, started_ms, last_seen_ms FROM hosts"
            ).fetchall()
        return [dict(r) for r in rows]

    def remove_host(self, host_id: str) -> None:
        with self._mutex:
            self._conn.execute("DELETE FROM hosts WHERE id = ?", (host_id,))

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

    # -- writing: config updates ------------------------------------------------------------

    def begin_update(
        self,
        name: str,
        *,
        stack: str | None,
        desired: dict[str, Any],
        version: int,
        actor: str,
        actor_kind: str = "operator",
    ) -> EndpointRow:
        """Record the new config as pending (creating the endpoint row if needed).

        A new endpoint's creator is `actor` of `actor_kind` (user, service_principal, or the
        operator of the state files): it manages the endpoint and its secrets resolve as it."""
        now = _now_ms()
        with self._write() as conn:
            exists = conn.execute("SELECT 1 FROM endpoints WHERE name = ?", (name,)).fetchone()
            if not exists:
                endpoint_id = uuid.uuid4().hex
                conn.execute(
                    "INSERT INTO endpoints (name, id, stack, creator, creator_kind, created_ms, "
                    "updated_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (name, endpoint_id, stack, actor, actor_kind, now, now),
                )
                manager = (
                    "service_principal_name" if actor_kind == "service_principal" else "user_name"
                )
                # The creator manages it; every authenticated caller may query it until an
                # operator replaces the ACL (PUT /api/2.0/permissions/serving-endpoints/{id}).
                conn.executemany(
                    "INSERT OR REPLACE INTO permissions VALUES (?, ?, ?, ?)",
                    [
                        (endpoint_id, manager, actor, "CAN_MANAGE"),
                        (endpoint_id, "group_name", "users", "CAN_QUERY"),
                    ],
                )
            conn.execute(
                "UPDATE endpoints SET pending = ?, pending_version = ?, pending_started_ms = ?, "
                "config_update = ?, update_message = '', "
                "deleting = 0, stack = COALESCE(stack, ?) WHERE name = ?",
                (_dumps(desired), version, now, ConfigUpdateState.IN_PROGRESS, stack, name),
            )
            self._history(conn, name, version, actor, "begin-update", {})
        row = self.get_endpoint(name)
        assert row is not None
        return row

    def add_entity(
        self,
        endpoint: str,
        *,
        name: str,
        fingerprint: str,
        config: dict[str, Any],
        config_version: int,
        role: str = EntityRole.PENDING,
    ) -> int:
        """Track an entity before anything starts it, so no started entity is ever untracked."""
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO entities (endpoint, name, fingerprint, config, role, deployment, "
                "config_version, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    endpoint,
                    name,
                    fingerprint,
                    _dumps(config),
                    role,
                    DeploymentState.CREATING,
                    config_version,
                    _now_ms(),
                ),
            )
            return int(cursor.lastrowid)

    def update_entity(
        self,
        entity_id: int,
        *,
        deployment: str | None = None,
        message: str | None = None,
        handle: dict[str, Any] | None = None,
    ) -> None:
        sets, args = [], []
        if deployment is not None:
            sets.append("deployment = ?")
            args.append(deployment)
        if message is not None:
            sets.append("message = ?")
            args.append(message)
        if handle is not None:
            sets.append("handle = ?")
            args.append(_dumps(handle))
        if not sets:
            return
        with self._write() as conn:
            conn.execute(f"UPDATE entities SET {', '.join(sets)} WHERE id = ?", (*args, entity_id))

    def delete_entity(self, entity_id: int) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM entities WHERE id = ?", (entity_id,))

    def activate(
        self, name: str, *, keep: list[int], actor: str, summary: dict[str, Any]
    ) -> list[EntityRow]:
        """Atomically make the pending config active.

        `keep` are the entity ids that serve the new config (pending ones and reused active
        ones); every other entity of the endpoint becomes `retiring` and is returned.
        """
        now = _now_ms()
        with self._write() as conn:
            row = conn.execute(
                "SELECT pending_version FROM endpoints WHERE name = ?", (name,)
            ).fetchone()
            if row is None or row["pending_version"] is None:
                raise StateError(f"endpoint {name!r} has no pending config to activate")
            conn.execute(
                "UPDATE endpoints SET spec = pending, config_version = pending_version, "
                "pending = NULL, pending_version = NULL, pending_started_ms = NULL, "
                "config_update = ?, update_message = '', updated_ms = ? "
                "WHERE name = ?",
                (ConfigUpdateState.NOT_UPDATING, now, name),
            )
            marks = ",".join("?" * len(keep)) or "NULL"
            conn.execute(
                f"UPDATE entities SET role = ? WHERE endpoint = ? AND id IN ({marks})",
                (EntityRole.ACTIVE, name, *keep),
            )
            conn.execute(
                f"UPDATE entities SET role = ? WHERE endpoint = ? AND id NOT IN ({marks})",
                (EntityRole.RETIRING, name, *keep),
            )
            self._history(conn, name, row["pending_version"], actor, "activate", summary)
            retiring = conn.execute(
                "SELECT * FROM entities WHERE endpoint = ? AND role = ? ORDER BY id",
                (name, EntityRole.RETIRING),
            ).fetchall()
        return [self._entity(r) for r in retiring]

    def fail_update(self, name: str, message: str, *, actor: str) -> None:
        """The old config keeps serving; the endpoint says why the new one did not come up."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT pending_version FROM endpoints WHERE name = ?", (name,)
            ).fetchone()
            conn.execute(
                "UPDATE endpoints SET pending = NULL, pending_version = NULL, "
                "pending_started_ms = NULL, "
                "config_update = ?, update_message = ? WHERE name = ?",
                (ConfigUpdateState.UPDATE_FAILED, message, name),
            )
            self._history(
                conn,
                name,
                row["pending_version"] if row else None,
                actor,
                "update-failed",
                {"message": message},
            )

    def clear_interrupted(self, name: str, *, actor: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE endpoints SET pending = NULL, pending_version = NULL, "
                "pending_started_ms = NULL, "
                "config_update = ? WHERE name = ?",
                (ConfigUpdateState.NOT_UPDATING, name),
            )
            self._history(conn, name, None, actor, "recovered", {})

    def update_in_place(
        self, name: str, *, desired: dict[str, Any], actor: str, summary: dict[str, Any]
    ) -> None:
        """A change outside `config` (tags, rate limits, gateway): no new config version."""
        with self._write() as conn:
            conn.execute(
                "UPDATE endpoints SET spec = ?, updated_ms = ? WHERE name = ?",
                (_dumps(desired), _now_ms(), name),
            )
            version = conn.execute(
                "SELECT config_version FROM endpoints WHERE name = ?", (name,)
            ).fetchone()
            self._history(
                conn, name, version["config_version"] if version else None, actor, "update", summary
            )

    def mark_deleting(self, name: str, *, actor: str) -> list[EntityRow]:
        with self._write() as conn:
            conn.execute(
                "UPDATE endpoints SET deleting = 1, config_update = ? WHERE name = ?",
                (ConfigUpdateState.IN_PROGRESS, name),
            )
            conn.execute(
                "UPDATE entities SET role = ? WHERE endpoint = ?", (EntityRole.RETIRING, name)
            )
            self._history(conn, name, None, actor, "begin-delete", {})
            rows = conn.execute(
                "SELECT * FROM entities WHERE endpoint = ? ORDER BY id", (name,)
            ).fetchall()
        return [self._entity(r) for r in rows]

    def delete_endpoint(self, name: str, *, actor: str) -> None:
        with self._write() as conn:
            left = conn.execute("SELECT COUNT(*) AS n FROM entities WHERE endpoint = ?", (name,))
            if left.fetchone()["n"]:
                raise StateError(f"endpoint {name!r} still has entities; stop them first")
            conn.execute(
                "DELETE FROM permissions WHERE endpoint_id = "
                "(SELECT id FROM endpoints WHERE name = ?)",
                (name,),
            )
            conn.execute("DELETE FROM endpoints WHERE name = ?", (name,))
            self._history(conn, name, None, actor, "delete", {})

    def set_stack(self, name: str, stack: str | None) -> None:
        with self._write() as conn:
            conn.execute("UPDATE endpoints SET stack = ? WHERE name = ?", (stack, name))

    # -- row mapping ------------------------------------------------------------------------

    def _history(
        self,
        conn: sqlite3.Connection,
        name: str,
        version: int | None,
        actor: str,
        action: str,
        summary: dict[str, Any],
    ) -> None:
        conn.execute(
            "INSERT INTO history (endpoint, config_version, at_ms, actor, action, summary) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, version, _now_ms(), actor, action, _dumps(summary)),
        )

    @staticmethod
    def _lock_rows(conn: sqlite3.Connection) -> list[LockInfo]:
        return group_lock_rows(
            tuple(r)
            for r in conn.execute(
                "SELECT key, id, holder, operation, acquired_ms, lease_expires_ms, host, pid "
                "FROM locks ORDER BY id, key"
            )
        )

    # Rows to records: shared with the PostgreSQL store (_rows.py).
    _endpoint = staticmethod(endpoint_from)
    _entity = staticmethod(entity_from)
