"""`system.serving.served_entities`: projected from the state, not written by applies.

Why a projection: every apply path (the CLI, `engine up`, the REST API, a crash recovered by
the next apply) already ends in the state, so a table derived from it cannot miss an update
or disagree with it, and nothing new sits between an apply and its commit. The state keeps
the active entity instances (each with the config version it came with and when the apply
added it) and the history (when an endpoint was deleted); it does not keep entities that a
later config replaced, so the table keeps what it saw: `project` merges the rows already in
the table with the state of now, one row per served entity instance (SCD type 1: a join on
`served_entity_id` never duplicates), and `endpoint_delete_time` is set once the endpoint is
gone. The serving host writes the merged table whenever it changes; `engine sql` merges the
same way before a query, so it is current even when no host runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from engine.state import EndpointRow, EntityRow, HistoryRow
from engine.tables._rows import served_entity_id

__all__ = ["project"]

History = Callable[[str], list[HistoryRow]]


def _row(endpoint: EndpointRow, entity: EntityRow, workspace_id: str) -> dict[str, Any]:
    config = entity.config
    external = config.get("external_model")
    custom = None
    if external:
        kind = "EXTERNAL_MODEL"
        name, version, task = external.get("name"), None, external.get("task")
        external = {k: external.get(k) for k in ("provider", "name", "task")}
    else:
        kind = "FOUNDATION_MODEL" if config.get("max_provisioned_throughput") else "CUSTOM_MODEL"
        name, version, task = config.get("entity_name"), config.get("entity_version"), None
        custom = {
            k: config.get(k)
            for k in (
                "workload_size",
                "workload_type",
                "scale_to_zero_enabled",
                "min_provisioned_throughput",
                "max_provisioned_throughput",
            )
        }
    return {
        "served_entity_id": served_entity_id(endpoint.id, entity.id),
        "account_id": None,
        "workspace_id": workspace_id,
        "created_by": endpoint.creator,
        "endpoint_name": endpoint.name,
        "endpoint_id": endpoint.id,
        "served_entity_name": entity.name,
        "entity_type": kind,
        "entity_name": name,
        "entity_version": None if version is None else str(version),
        "endpoint_config_version": entity.config_version,
        "task": task,
        "external_model_config": external,
        "custom_model_config": custom,
        "change_time": entity.created_ms * 1000,
        "endpoint_delete_time": None,
    }


def _deleted_at(history: History, name: str, after_us: int, now_ms: int) -> int:
    """When endpoint `name` was deleted (the first deletion after the row was made), in us."""
    for row in history(name):
        if row.action == "delete" and row.at_ms * 1000 >= after_us:
            return row.at_ms * 1000
    return now_ms * 1000


def project(
    known: Iterable[dict[str, Any]],
    view: list[tuple[EndpointRow, list[EntityRow]]],
    *,
    workspace_id: str,
    history: History,
    now_ms: int,
) -> list[dict[str, Any]]:
    """The table's rows: `known` (as read from the table) merged with the state's `view`."""
    rows = {r["served_entity_id"]: r for r in known}
    live: set[str] = set()
    for endpoint, entities in view:
        live.add(endpoint.id)
        for entity in entities:
            row = _row(endpoint, entity, workspace_id)
            rows.setdefault(row["served_entity_id"], row)
    for key, row in rows.items():
        if row["endpoint_id"] not in live and row["endpoint_delete_time"] is None:
            deleted = _deleted_at(history, row["endpoint_name"], row["change_time"], now_ms)
            rows[key] = {**row, "endpoint_delete_time": deleted}
    return sorted(rows.values(), key=lambda r: (r["change_time"], r["served_entity_id"]))
