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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg

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
from engine.state._records import EndpointRow, EntityRow, HistoryRow, endpoint_record
from engine.state._rows import (
    MIGRATION_STEPS,
    dumps,
    endpoint_from,
    entity_from,
    group_active,
    history_from,
    token_from,
)
from engine.state._sqlite import _MIGRATIONS, SCHEMA_VERSION, StateError
from engine.state.location import StateLocation
from plans import StateSnapshot
from schemas import ConfigUpdateState, DeploymentState, EntityRole, now_ms

__all__ = ["PostgresStateStore"]

# Advisory lock keys (64-bit) derived from names, so each use has its own.
_MIGRATE_KEY = zlib.crc32(b"serving-engine:migrate")


def _lock_key(name: str) -> int:
    return zlib.crc32(f"serving-engine:lock:{name}".encode())


def _overlaps(held: Sequence[str], wanted: Sequence[str]) -> bool:
    """Whether a (dead) lock on `held` stands in the way of `wanted` (see blocking_lock)."""
    return WHOLE_STATE in (*held, *wanted) or bool(set(held) & set(wanted))


class PostgresStateStore:
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
    def _write(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """One transaction that bumps the serial (writers queue on the serial row)."""
        with self._transaction("BEGIN") as conn:
            conn.execute("SELECT value FROM meta WHERE key = 'serial' FOR UPDATE")
            yield conn
            conn.execute("UPDATE meta SET value = (value::bigint + 1)::text WHERE key = 'serial'")

    @contextmanager
    def _read(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") as conn:
            yield conn

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

    @staticmethod
    def _meta(conn: psycopg.Connection[dict[str, Any]], key: str) -> str:
        return conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()["value"]

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
        """What plans need, read in one transaction (see the SQLite store)."""
        with self._read() as conn:
            lineage = self._meta(conn, "lineage")
            serial = int(self._meta(conn, "serial"))
            held = [i for i in self._lock_rows(conn) if i.id != lock_id]
            rows = [endpoint_from(r) for r in conn.execute("SELECT * FROM endpoints")]
        now = now_ms()
        return StateSnapshot(
            lineage=lineage,
            serial=serial,
            endpoints={row.name: endpoint_record(row, held, now) for row in rows},
        )

    def get_endpoint(self, name: str) -> EndpointRow | None:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM endpoints WHERE name = %s", (name,)).fetchone()
        return endpoint_from(row) if row else None

    def get_endpoint_by_id(self, endpoint_id: str) -> EndpointRow | None:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM endpoints WHERE id = %s", (endpoint_id,)).fetchone()
        return endpoint_from(row) if row else None

    def list_endpoints(self) -> list[EndpointRow]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM endpoints ORDER BY name").fetchall()
        return [endpoint_from(r) for r in rows]

    def entities(self, endpoint: str | None = None, role: str | None = None) -> list[EntityRow]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM entities WHERE (%(e)s::text IS NULL OR endpoint = %(e)s) "
                "AND (%(r)s::text IS NULL OR role = %(r)s) ORDER BY id",
                {"e": endpoint, "r": role},
            ).fetchall()
        return [entity_from(r) for r in rows]

    def history(self, endpoint: str) -> list[HistoryRow]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM history WHERE endpoint = %s ORDER BY id", (endpoint,)
            ).fetchall()
        return [history_from(r) for r in rows]

    def serving_view(self) -> tuple[int, list[tuple[EndpointRow, list[EntityRow]]]]:
        """The serial and every endpoint with its active entities, read in one transaction."""
        with self._read() as conn:
            serial = int(self._meta(conn, "serial"))
            rows = [endpoint_from(r) for r in conn.execute("SELECT * FROM endpoints")]
            entities = [
                entity_from(r)
                for r in conn.execute(
                    "SELECT * FROM entities WHERE role = %s ORDER BY id", (EntityRole.ACTIVE,)
                )
            ]
        return serial, group_active(rows, entities)

    # -- permissions ------------------------------------------------------------------------

    def all_permissions(self) -> dict[str, list[tuple[str, str, str]]]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM permissions").fetchall()
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
                "SELECT * FROM permissions WHERE endpoint_id = %s ORDER BY principal_type, "
                "principal",
                (endpoint_id,),
            ).fetchall()
        return [(r["principal_type"], r["principal"], r["level"]) for r in rows]

    def set_permissions(
        self, endpoint_id: str, entries: list[tuple[str, str, str]], *, replace: bool
    ) -> None:
        with self._write() as conn:
            if replace:
                conn.execute("DELETE FROM permissions WHERE endpoint_id = %s", (endpoint_id,))
            self._put_permissions(conn, [(endpoint_id, t, p, level) for t, p, level in entries])

    @staticmethod
    def _put_permissions(
        conn: psycopg.Connection[dict[str, Any]], rows: list[tuple[str, str, str, str]]
    ) -> None:
        if rows:
            conn.cursor().executemany(
                "INSERT INTO permissions VALUES (%s, %s, %s, %s) ON CONFLICT "
                "(endpoint_id, principal_type, principal) DO UPDATE SET level = excluded.level",
                rows,
            )

    # -- secret scope ACLs ------------------------------------------------------------------

    def all_secret_acls(self) -> dict[str, list[tuple[str, str]]]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM secret_acls ORDER BY scope, principal").fetchall()
        out: dict[str, list[tuple[str, str]]] = {}
        for r in rows:
            out.setdefault(r["scope"], []).append((r["principal"], r["permission"]))
        return out

    def secret_acls(self, scope: str) -> list[tuple[str, str]]:
        """(principal, permission) entries of one scope, by principal."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM secret_acls WHERE scope = %s ORDER BY principal", (scope,)
            ).fetchall()
        return [(r["principal"], r["permission"]) for r in rows]

    def put_secret_acl(self, scope: str, principal: str, permission: str) -> None:
        with self._write() as conn:
            self._put_acls(conn, [(scope, principal, permission)])

    def delete_secret_acl(self, scope: str, principal: str) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                "DELETE FROM secret_acls WHERE scope = %s AND principal = %s", (scope, principal)
            )
            return cursor.rowcount > 0

    def reset_secret_acls(self, scope: str, entries: list[tuple[str, str]]) -> None:
        """Replace every entry of a scope (a new scope starts from its creator's alone)."""
        with self._write() as conn:
            conn.execute("DELETE FROM secret_acls WHERE scope = %s", (scope,))
            self._put_acls(conn, [(scope, principal, level) for principal, level in entries])

    @staticmethod
    def _put_acls(
        conn: psycopg.Connection[dict[str, Any]], rows: list[tuple[str, str, str]]
    ) -> None:
        if rows:
            conn.cursor().executemany(
                "INSERT INTO secret_acls VALUES (%s, %s, %s) ON CONFLICT (scope, principal) "
                "DO UPDATE SET permission = excluded.permission",
                rows,
            )

    # -- the model catalog ------------------------------------------------------------------

    def put_model(self, record: dict[str, Any]) -> None:
        row = {"throughput_chunk_size": None, "registered_ms": now_ms(), **record}
        with self._write() as conn:
            conn.execute(
                "INSERT INTO models (name, version, path, task, model_type, context_length, "
                "default_system_prompt, throughput_chunk_size, registered_ms) VALUES "
                "(%(name)s, %(version)s, %(path)s, %(task)s, %(model_type)s, "
                "%(context_length)s, %(default_system_prompt)s, %(throughput_chunk_size)s, "
                "%(registered_ms)s) ON CONFLICT (name, version) DO UPDATE SET "
                "path = excluded.path, task = excluded.task, model_type = excluded.model_type, "
                "context_length = excluded.context_length, "
                "default_system_prompt = excluded.default_system_prompt, "
                "throughput_chunk_size = excluded.throughput_chunk_size, "
                "registered_ms = excluded.registered_ms",
                row,
            )

    def models(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [dict(r) for r in conn.execute("SELECT * FROM models ORDER BY name, version")]

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
                "INSERT INTO tokens (id, token_hash, principal, groups, kind, admin, comment, "
                "created_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    token_id,
                    token_hash,
                    principal,
                    dumps(groups),
                    kind,
                    int(admin),
                    comment,
                    now_ms(),
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
            return conn.execute("DELETE FROM tokens WHERE id = %s", (token_id,)).rowcount > 0

    _UPSERT_HOST = (
        "INSERT INTO hosts (id, pid, hostname, address, started_ms, last_seen_ms) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
        "last_seen_ms = excluded.last_seen_ms, address = excluded.address"
    )

    def heartbeat(self, host_id: str, *, pid: int, hostname: str, address: str) -> None:
        """Record that a serving host is alive (not a state change: the serial stays)."""
        now = now_ms()
        with self._untracked() as conn:
            conn.execute(self._UPSERT_HOST, (host_id, pid, hostname, address, now, now))

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
        (returned then); one transaction under an advisory lock, as on SQLite."""
        now = now_ms()
        with self._untracked() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("hosts"),))
            others = [
                dict(r)
                for r in conn.execute(
                    "SELECT id, pid, hostname, address, started_ms, last_seen_ms FROM hosts "
                    "WHERE id != %s",
                    (host_id,),
                )
            ]
            live = next((other for other in others if alive(other)), None)
            if live is None:
                conn.execute("DELETE FROM hosts WHERE id != %s", (host_id,))
                conn.execute(self._UPSERT_HOST, (host_id, pid, hostname, address, now, now))
        return live

    def hosts(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, pid, hostname, address, started_ms, last_seen_ms FROM hosts"
            ).fetchall()
        return [dict(r) for r in rows]

    def remove_host(self, host_id: str) -> None:
        with self._untracked() as conn:
            conn.execute("DELETE FROM hosts WHERE id = %s", (host_id,))

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
    def _lock_rows(conn: psycopg.Connection[dict[str, Any]]) -> list[LockInfo]:
        rows = conn.execute(
            "SELECT key, id, holder, operation, acquired_ms, lease_expires_ms, host, pid "
            "FROM locks ORDER BY id, key"
        )
        return group_lock_rows(tuple(r.values()) for r in rows)

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
        """Record the new config as pending (creating the endpoint row if needed); see the
        SQLite store for who the creator is and its default permissions."""
        now = now_ms()
        with self._write() as conn:
            exists = conn.execute("SELECT 1 FROM endpoints WHERE name = %s", (name,)).fetchone()
            if not exists:
                endpoint_id = uuid.uuid4().hex
                conn.execute(
                    "INSERT INTO endpoints (name, id, stack, creator, creator_kind, created_ms, "
                    "updated_ms) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (name, endpoint_id, stack, actor, actor_kind, now, now),
                )
                manager = (
                    "service_principal_name" if actor_kind == "service_principal" else "user_name"
                )
                self._put_permissions(
                    conn,
                    [
                        (endpoint_id, manager, actor, "CAN_MANAGE"),
                        (endpoint_id, "group_name", "users", "CAN_QUERY"),
                    ],
                )
            conn.execute(
                "UPDATE endpoints SET pending = %s, pending_version = %s, pending_started_ms = %s, "
                "config_update = %s, update_message = '', "
                "deleting = 0, stack = COALESCE(stack, %s) WHERE name = %s",
                (dumps(desired), version, now, ConfigUpdateState.IN_PROGRESS, stack, name),
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
            row = conn.execute(
                "INSERT INTO entities (endpoint, name, fingerprint, config, role, deployment, "
                "config_version, created_ms) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
                "RETURNING id",
                (
                    endpoint,
                    name,
                    fingerprint,
                    dumps(config),
                    role,
                    DeploymentState.CREATING,
                    config_version,
                    now_ms(),
                ),
            ).fetchone()
            return int(row["id"])

    def update_entity(
        self,
        entity_id: int,
        *,
        deployment: str | None = None,
        message: str | None = None,
        handle: dict[str, Any] | None = None,
    ) -> None:
        if deployment is None and message is None and handle is None:
            return
        with self._write() as conn:
            conn.execute(
                "UPDATE entities SET deployment = COALESCE(%s, deployment), "
                "message = COALESCE(%s, message), handle = COALESCE(%s, handle) WHERE id = %s",
                (deployment, message, dumps(handle), entity_id),
            )

    def delete_entity(self, entity_id: int) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM entities WHERE id = %s", (entity_id,))

    def activate(
        self, name: str, *, keep: list[int], actor: str, summary: dict[str, Any]
    ) -> list[EntityRow]:
        """Atomically make the pending config active; every entity of the endpoint not in
        `keep` becomes `retiring` and is returned."""
        now = now_ms()
        with self._write() as conn:
            row = conn.execute(
                "SELECT pending_version FROM endpoints WHERE name = %s", (name,)
            ).fetchone()
            if row is None or row["pending_version"] is None:
                raise StateError(f"endpoint {name!r} has no pending config to activate")
            conn.execute(
                "UPDATE endpoints SET spec = pending, config_version = pending_version, "
                "pending = NULL, pending_version = NULL, pending_started_ms = NULL, "
                "config_update = %s, update_message = '', updated_ms = %s WHERE name = %s",
                (ConfigUpdateState.NOT_UPDATING, now, name),
            )
            # As on SQLite, where `id NOT IN (NULL)` matches nothing: no `keep`, no role change.
            if keep:
                conn.execute(
                    "UPDATE entities SET role = CASE WHEN id = ANY(%s) THEN %s ELSE %s END "
                    "WHERE endpoint = %s",
                    (list(keep), EntityRole.ACTIVE, EntityRole.RETIRING, name),
                )
            self._history(conn, name, row["pending_version"], actor, "activate", summary)
            retiring = conn.execute(
                "SELECT * FROM entities WHERE endpoint = %s AND role = %s ORDER BY id",
                (name, EntityRole.RETIRING),
            ).fetchall()
        return [entity_from(r) for r in retiring]

    def fail_update(self, name: str, message: str, *, actor: str) -> None:
        """The old config keeps serving; the endpoint says why the new one did not come up."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT pending_version FROM endpoints WHERE name = %s", (name,)
            ).fetchone()
            conn.execute(
                "UPDATE endpoints SET pending = NULL, pending_version = NULL, "
                "pending_started_ms = NULL, config_update = %s, update_message = %s "
                "WHERE name = %s",
                (ConfigUpdateState.UPDATE_FAILED, message, name),
            )
            version = row["pending_version"] if row else None
            self._history(conn, name, version, actor, "update-failed", {"message": message})

    def clear_interrupted(self, name: str, *, actor: str) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE endpoints SET pending = NULL, pending_version = NULL, "
                "pending_started_ms = NULL, config_update = %s WHERE name = %s",
                (ConfigUpdateState.NOT_UPDATING, name),
            )
            self._history(conn, name, None, actor, "recovered", {})

    def update_in_place(
        self, name: str, *, desired: dict[str, Any], actor: str, summary: dict[str, Any]
    ) -> None:
        """A change outside `config` (tags, rate limits, gateway): no new config version."""
        with self._write() as conn:
            row = conn.execute(
                "UPDATE endpoints SET spec = %s, updated_ms = %s WHERE name = %s "
                "RETURNING config_version",
                (dumps(desired), now_ms(), name),
            ).fetchone()
            version = row["config_version"] if row else None
            self._history(conn, name, version, actor, "update", summary)

    def mark_deleting(self, name: str, *, actor: str) -> list[EntityRow]:
        with self._write() as conn:
            conn.execute(
                "UPDATE endpoints SET deleting = 1, config_update = %s WHERE name = %s",
                (ConfigUpdateState.IN_PROGRESS, name),
            )
            conn.execute(
                "UPDATE entities SET role = %s WHERE endpoint = %s", (EntityRole.RETIRING, name)
            )
            self._history(conn, name, None, actor, "begin-delete", {})
            rows = conn.execute(
                "SELECT * FROM entities WHERE endpoint = %s ORDER BY id", (name,)
            ).fetchall()
        return [entity_from(r) for r in rows]

    def delete_endpoint(self, name: str, *, actor: str) -> None:
        with self._write() as conn:
            left = conn.execute(
                "SELECT COUNT(*) AS n FROM entities WHERE endpoint = %s", (name,)
            ).fetchone()
            if left["n"]:
                raise StateError(f"endpoint {name!r} still has entities; stop them first")
            conn.execute(
                "DELETE FROM permissions WHERE endpoint_id = "
                "(SELECT id FROM endpoints WHERE name = %s)",
                (name,),
            )
            conn.execute("DELETE FROM endpoints WHERE name = %s", (name,))
            self._history(conn, name, None, actor, "delete", {})

    def set_stack(self, name: str, stack: str | None) -> None:
        with self._write() as conn:
            conn.execute("UPDATE endpoints SET stack = %s WHERE name = %s", (stack, name))

    def _history(
        self,
        conn: psycopg.Connection[dict[str, Any]],
        name: str,
        version: int | None,
        actor: str,
        action: str,
        summary: dict[str, Any],
    ) -> None:
        conn.execute(
            "INSERT INTO history (endpoint, config_version, at_ms, actor, action, summary) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (name, version, now_ms(), actor, action, dumps(summary)),
        )
