"""The state store's statements that read and write the same way on SQLite and PostgreSQL.

Both stores hold the same tables (see `pg_ddl`) and hand these methods a connection that takes
`?` placeholders and returns rows by column name: sqlite3's own, or `QmarkConnection` over
psycopg. The SQL is the part both dialects share (upserts are `ON CONFLICT ... DO UPDATE`, not
SQLite's `INSERT OR REPLACE`, with the same result), so each statement is written once. What
differs stays in each store: transactions, migrations, locks and the host records.

A store provides `_read()` and `_write()` (a context manager yielding that connection; a write
bumps the serial), `_meta(conn, key)` and `_lock_rows(conn)`.
"""

from __future__ import annotations

import uuid
from typing import Any

from engine.state._errors import StateError
from engine.state._records import EndpointRow, EntityRow, HistoryRow, endpoint_record
from engine.state._rows import (
    dumps,
    endpoint_from,
    entity_from,
    group_active,
    history_from,
    token_from,
)
from plans import StateSnapshot
from schemas import ConfigUpdateState, DeploymentState, EntityRole, now_ms

__all__ = ["SharedStatements"]

_PUT_PERMISSION = (
    "INSERT INTO permissions VALUES (?, ?, ?, ?) ON CONFLICT "
    "(endpoint_id, principal_type, principal) DO UPDATE SET level = excluded.level"
)
_PUT_SECRET_ACL = (
    "INSERT INTO secret_acls VALUES (?, ?, ?) ON CONFLICT (scope, principal) "
    "DO UPDATE SET permission = excluded.permission"
)
_MODEL_COLUMNS = (
    "name",
    "version",
    "path",
    "task",
    "model_type",
    "context_length",
    "default_system_prompt",
    "throughput_chunk_size",
    "registered_ms",
)
_PUT_MODEL = (
    f"INSERT INTO models ({', '.join(_MODEL_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_MODEL_COLUMNS))}) ON CONFLICT (name, version) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _MODEL_COLUMNS[2:])
)


class SharedStatements:
    """Reads, directory writes and config updates: one body for both stores."""

    _read: Any
    _write: Any
    _meta: Any
    _lock_rows: Any

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
            rows = [endpoint_from(r) for r in conn.execute("SELECT * FROM endpoints")]
        now = now_ms()
        return StateSnapshot(
            lineage=lineage,
            serial=serial,
            endpoints={row.name: endpoint_record(row, held, now) for row in rows},
        )

    def get_endpoint(self, name: str) -> EndpointRow | None:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM endpoints WHERE name = ?", (name,)).fetchone()
        return endpoint_from(row) if row else None

    def get_endpoint_by_id(self, endpoint_id: str) -> EndpointRow | None:
        with self._read() as conn:
            row = conn.execute("SELECT * FROM endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        return endpoint_from(row) if row else None

    def list_endpoints(self) -> list[EndpointRow]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM endpoints ORDER BY name").fetchall()
        return [endpoint_from(r) for r in rows]

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
        return [entity_from(r) for r in rows]

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
            rows = [endpoint_from(r) for r in conn.execute("SELECT * FROM endpoints")]
            entities = [
                entity_from(r)
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
                _PUT_PERMISSION,
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
                _PUT_SECRET_ACL,
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
                _PUT_SECRET_ACL,
                [(scope, principal, permission) for principal, permission in entries],
            )

    # -- the model catalog ------------------------------------------------------------------

    def put_model(self, record: dict[str, Any]) -> None:
        with self._write() as conn:
            row = {"throughput_chunk_size": None, "registered_ms": now_ms(), **record}
            conn.execute(_PUT_MODEL, tuple(row[column] for column in _MODEL_COLUMNS))

    def models(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM models ORDER BY name, version").fetchall()
        return [dict(row) for row in rows]

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
            return conn.execute("DELETE FROM tokens WHERE id = ?", (token_id,)).rowcount > 0

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
        now = now_ms()
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
                    _PUT_PERMISSION,
                    [
                        (endpoint_id, manager, actor, "CAN_MANAGE"),
                        (endpoint_id, "group_name", "users", "CAN_QUERY"),
                    ],
                )
            conn.execute(
                "UPDATE endpoints SET pending = ?, pending_version = ?, pending_started_ms = ?, "
                "config_update = ?, update_message = '', "
                "deleting = 0, stack = COALESCE(stack, ?) WHERE name = ?",
                (dumps(desired), version, now, ConfigUpdateState.IN_PROGRESS, stack, name),
            )
            # The config each version began with, so that any two versions can be diffed
            # (secrets in it are references and keyed hashes, as in the spec column).
            begun = {"config": desired.get("config")} if "config" in desired else {}
            self._history(conn, name, version, actor, "begin-update", begun)
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
                    dumps(config),
                    role,
                    DeploymentState.CREATING,
                    config_version,
                    now_ms(),
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
            args.append(dumps(handle))
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
        now = now_ms()
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
        return [entity_from(r) for r in retiring]

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

    def request_cancel(self, name: str, *, actor: str) -> int | None:
        """Record that the config update in progress should stop (the pending version), or
        None when no update is in progress. The apply running it polls `cancel_requested`."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT config_update, pending_version FROM endpoints WHERE name = ?", (name,)
            ).fetchone()
            if (
                row is None
                or row["config_update"] != ConfigUpdateState.IN_PROGRESS
                or row["pending_version"] is None
            ):
                return None
            version = int(row["pending_version"])
            self._history(conn, name, version, actor, "cancel-requested", {})
        return version

    def cancel_requested(self, name: str) -> bool:
        """Whether a cancel was asked for since the endpoint's latest update began."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT 1 AS hit FROM history WHERE endpoint = ? AND action = 'cancel-requested' "
                "AND id > COALESCE((SELECT MAX(id) FROM history WHERE endpoint = ? "
                "AND action = 'begin-update'), 0) LIMIT 1",
                (name, name),
            ).fetchone()
        return row is not None

    def cancel_update(self, name: str, message: str, *, actor: str) -> None:
        """The update stopped on request: pending dropped, the old config keeps serving."""
        with self._write() as conn:
            row = conn.execute(
                "SELECT pending_version FROM endpoints WHERE name = ?", (name,)
            ).fetchone()
            conn.execute(
                "UPDATE endpoints SET pending = NULL, pending_version = NULL, "
                "pending_started_ms = NULL, config_update = ?, update_message = ? WHERE name = ?",
                (ConfigUpdateState.UPDATE_CANCELED, message, name),
            )
            self._history(
                conn,
                name,
                row["pending_version"] if row else None,
                actor,
                "update-canceled",
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
                (dumps(desired), now_ms(), name),
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
        return [entity_from(r) for r in rows]

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

    def _history(
        self,
        conn: Any,
        name: str,
        version: int | None,
        actor: str,
        action: str,
        summary: dict[str, Any],
    ) -> None:
        conn.execute(
            "INSERT INTO history (endpoint, config_version, at_ms, actor, action, summary) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (name, version, now_ms(), actor, action, dumps(summary)),
        )
