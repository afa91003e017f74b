"""Endpoints in the platform's read shapes (`ServingEndpoint`, `ServingEndpointDetailed`).

Plaintext secrets are write-only: the state holds only their keyed hashes, and views drop even
those, as the platform's GET drops `*_plaintext` fields.
"""

from __future__ import annotations

import copy
from typing import Any

from engine.state import EndpointRow, EntityRow, StateStore
from plans import is_sensitive
from schemas import DeploymentState, EntityRole, ReadyState

__all__ = ["endpoint_detail", "endpoint_summary", "endpoint_type", "strip_sensitive", "task_of"]


def strip_sensitive(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: strip_sensitive(v) for k, v in value.items() if not is_sensitive(v)}
    if isinstance(value, list):
        return [strip_sensitive(v) for v in value]
    return value


def task_of(spec: dict[str, Any] | None) -> str | None:
    for entity in (spec or {}).get("config", {}).get("served_entities") or []:
        if "external_model" in entity:
            return entity["external_model"].get("task")
    return None


def endpoint_type(spec: dict[str, Any] | None) -> str | None:
    """`EXTERNAL_MODEL` for an endpoint of external models, as the platform's GET and list say
    (clients choose the request shape by it); other kinds carry none."""
    entities = (spec or {}).get("config", {}).get("served_entities") or []
    if entities and all("external_model" in e for e in entities):
        return "EXTERNAL_MODEL"
    return None


def _routes(config: dict[str, Any]) -> dict[str, Any]:
    # The platform echoes both names in each route; clients read either.
    routes = [
        {**r, "served_model_name": r["served_entity_name"]}
        for r in config.get("traffic_config", {}).get("routes") or []
    ]
    return {"routes": routes}


def _entity_state(instance: EntityRow | None, pending: bool) -> dict[str, str]:
    if instance is None:
        return {"deployment": DeploymentState.CREATING, "deployment_state_message": ""}
    return {"deployment": instance.deployment, "deployment_state_message": instance.message}


def _served(
    config: dict[str, Any], instances: dict[str, EntityRow], row: EndpointRow, pending: bool
) -> list[dict[str, Any]]:
    out = []
    for entity in config.get("served_entities") or []:
        item = strip_sensitive(copy.deepcopy(entity))
        item["state"] = _entity_state(instances.get(entity["name"]), pending)
        item["creator"] = row.creator
        item["creation_timestamp"] = row.created_ms
        out.append(item)
    return out


def _state(row: EndpointRow, active: list[EntityRow]) -> dict[str, str]:
    ready = bool(active) and all(e.deployment == DeploymentState.READY for e in active)
    if row.spec is not None and not (row.spec.get("config") or {}).get("served_entities"):
        ready = True
    return {
        "ready": ReadyState.READY if ready else ReadyState.NOT_READY,
        "config_update": row.config_update,
    }


def endpoint_detail(
    store: StateStore, row: EndpointRow, permission_level: str | None = None
) -> dict[str, Any]:
    """`ServingEndpointDetailed`: what `GET /api/2.0/serving-endpoints/{name}` answers."""
    entities = store.entities(row.name)
    active = {e.name: e for e in entities if e.role == EntityRole.ACTIVE}
    pending = {e.name: e for e in entities if e.role == EntityRole.PENDING}
    spec = row.spec or {}
    view: dict[str, Any] = {
        "name": row.name,
        "id": row.id,
        "creator": row.creator,
        "creation_timestamp": row.created_ms,
        "last_updated_timestamp": row.updated_ms,
        "state": _state(row, list(active.values())),
        "route_optimized": bool(spec.get("route_optimized")),
    }
    if row.update_message:
        view["state"]["config_update_message"] = row.update_message
    if "config" in spec:
        config = spec["config"]
        view["config"] = {
            "served_entities": _served(config, active, row, pending=False),
            "traffic_config": _routes(config),
            "config_version": row.config_version,
        }
        if "auto_capture_config" in config:
            view["config"]["auto_capture_config"] = config["auto_capture_config"]
    if row.pending is not None:
        config = row.pending.get("config", {})
        view["pending_config"] = {
            "served_entities": _served(config, pending, row, pending=True),
            "traffic_config": _routes(config),
            "config_version": row.pending_version,
            "start_time": row.pending_started_ms,
        }
    task = task_of(spec) or task_of(row.pending)
    if task:
        view["task"] = task
    kind = endpoint_type(spec) or endpoint_type(row.pending)
    if kind:
        view["endpoint_type"] = kind
    for key in (
        "tags",
        "ai_gateway",
        "description",
        "budget_policy_id",
        "email_notifications",
        "telemetry_config",
    ):
        if key in spec:
            view[key] = copy.deepcopy(spec[key])
    view.setdefault("tags", [])
    if permission_level:
        view["permission_level"] = permission_level
    return view


def endpoint_summary(store: StateStore, row: EndpointRow) -> dict[str, Any]:
    """`ServingEndpoint`: an item of `GET /api/2.0/serving-endpoints`."""
    detail = endpoint_detail(store, row)
    summary = {k: v for k, v in detail.items() if k not in ("pending_config",)}
    if "config" in detail:
        summary["config"] = {
            "served_entities": [
                {
                    k: v
                    for k, v in e.items()
                    if k
                    in (
                        "name",
                        "entity_name",
                        "entity_version",
                        "external_model",
                        "foundation_model",
                    )
                }
                for e in detail["config"]["served_entities"]
            ]
        }
    return summary
