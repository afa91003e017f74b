"""What both state stores share: JSON columns, rows to records, and the Python migration steps.

Both stores keep the same tables and columns (JSON documents as TEXT, written with sorted keys
so equal documents are equal text), and read rows by column name, so one mapping serves a
`sqlite3.Row` and a psycopg dict row alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from engine.state._records import EndpointRow, EntityRow, HistoryRow
from schemas import MANAGED_SCOPE, find_secret_references

__all__ = [
    "MIGRATION_STEPS",
    "Row",
    "dumps",
    "endpoint_from",
    "entity_from",
    "group_active",
    "history_from",
    "loads",
    "token_from",
]

# A row read by column name: sqlite3.Row or a psycopg dict row.
Row = Mapping[str, Any]


def dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def endpoint_from(row: Row) -> EndpointRow:
    return EndpointRow(
        name=row["name"],
        id=row["id"],
        stack=row["stack"],
        creator=row["creator"],
        creator_kind=row["creator_kind"],
        created_ms=row["created_ms"],
        updated_ms=row["updated_ms"],
        spec=loads(row["spec"]),
        config_version=row["config_version"],
        config_update=row["config_update"],
        update_message=row["update_message"],
        pending=loads(row["pending"]),
        pending_version=row["pending_version"],
        pending_started_ms=row["pending_started_ms"],
        deleting=bool(row["deleting"]),
    )


def entity_from(row: Row) -> EntityRow:
    return EntityRow(
        id=row["id"],
        endpoint=row["endpoint"],
        name=row["name"],
        fingerprint=row["fingerprint"],
        config=json.loads(row["config"]),
        role=row["role"],
        deployment=row["deployment"],
        message=row["message"],
        handle=loads(row["handle"]),
        config_version=row["config_version"],
        created_ms=row["created_ms"],
    )


def history_from(row: Row) -> HistoryRow:
    return HistoryRow(
        endpoint=row["endpoint"],
        config_version=row["config_version"],
        at_ms=row["at_ms"],
        actor=row["actor"],
        action=row["action"],
        summary=json.loads(row["summary"]),
    )


def token_from(row: Row) -> dict[str, Any]:
    return {**dict(row), "groups": json.loads(row["groups"]), "admin": bool(row["admin"])}


def group_active(
    rows: Sequence[EndpointRow], entities: Iterable[EntityRow]
) -> list[tuple[EndpointRow, list[EntityRow]]]:
    """Every endpoint with its active entities (in entity id order)."""
    by_endpoint: dict[str, list[EntityRow]] = {}
    for entity in entities:
        by_endpoint.setdefault(entity.endpoint, []).append(entity)
    return [(row, by_endpoint.get(row.name, [])) for row in rows]


# -- Python migration steps ------------------------------------------------------------------


class QmarkConnection(Protocol):
    """What a migration step needs: `?` placeholders, rows by column name."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> Any: ...


def _grant_existing_creators(conn: QmarkConnection) -> None:
    """Schema 6: endpoints made through the API before ACLs existed keep serving.

    Their creator is a token's principal; it gets READ on every scope its endpoint references,
    and nothing else (a scope with no entry is the admins' until they grant it).
    """
    kinds = {
        r["principal"]: r["kind"]
        for r in conn.execute("SELECT principal, kind FROM tokens ORDER BY created_ms")
    }
    for row in conn.execute("SELECT name, creator, spec, pending FROM endpoints").fetchall():
        kind = kinds.get(row["creator"])
        if kind is None:
            continue
        conn.execute("UPDATE endpoints SET creator_kind = ? WHERE name = ?", (kind, row["name"]))
        configs = [row["spec"] or "", row["pending"] or ""] + [
            e["config"]
            for e in conn.execute("SELECT config FROM entities WHERE endpoint = ?", (row["name"],))
        ]
        scopes = {scope for text in configs for scope, _ in find_secret_references(text)}
        # ON CONFLICT DO NOTHING: the one spelling of INSERT OR IGNORE both databases know.
        conn.executemany(
            "INSERT INTO secret_acls VALUES (?, ?, 'READ') ON CONFLICT DO NOTHING",
            [(scope, row["creator"]) for scope in sorted(scopes) if scope != MANAGED_SCOPE],
        )


# Python steps that follow a schema version's statements, on either store.
MIGRATION_STEPS: dict[int, Callable[[Any], None]] = {6: _grant_existing_creators}
