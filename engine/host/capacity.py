"""The runner cluster's capacity for plans: with the Ray backend (`engine serve --runners ray`,
or $ENGINE_RUNNERS=ray for a CLI plan), the planner gets the cluster's live nodes and what one
replica of each entity asks for (plans/_capacity.py checks them; it does no I/O itself)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from engine.catalog.models import ModelCatalog
from plans import ClusterCapacity, NodeCapacity
from providers import ExecutorError
from providers.runner.executor import replica_bounds

__all__ = ["RAY_SETTINGS_ENV", "cluster_capacity", "ray_settings_from_env"]

RAY_SETTINGS_ENV = "ENGINE_RAY_SETTINGS"
_THROUGHPUT_FIELDS = ("min_provisioned_throughput", "max_provisioned_throughput")


def ray_settings_from_env() -> Any:
    """The Ray backend's settings as `engine serve --runners ray` exported them (None: local)."""
    if os.environ.get("ENGINE_RUNNERS", "local") != "ray":
        return None
    from providers.runner.ray_executor import RaySettings

    try:
        extra = json.loads(os.environ.get(RAY_SETTINGS_ENV) or "{}")
    except json.JSONDecodeError:
        extra = {}
    known = {k: extra[k] for k in ("cpus", "memory_bytes", "resources") if k in extra}
    return RaySettings(address=os.environ.get("RAY_ADDRESS") or "auto", **known)


def cluster_capacity(catalog: ModelCatalog) -> ClusterCapacity | None:
    """The Ray cluster as a plan sees it, or None with local runners."""
    settings = ray_settings_from_env()
    if settings is None:
        return None
    from providers.runner.ray_executor import cluster_nodes, replica_resources

    def demand(entity: Mapping[str, Any]) -> tuple[Mapping[str, float], int]:
        entry = None
        if any(entity.get(f) is not None for f in _THROUGHPUT_FIELDS):
            entry = catalog.get(entity.get("entity_name", ""), entity.get("entity_version", ""))
        chunk = entry.throughput_chunk_size if entry is not None else None
        return replica_resources(entity, settings), replica_bounds(dict(entity), chunk)[0]

    name = f"the Ray cluster at {settings.address}"
    try:
        nodes = cluster_nodes(settings)
    except ExecutorError as exc:
        return ClusterCapacity((), demand, f"{name} (unreachable: {exc.message})")
    return ClusterCapacity(
        tuple(NodeCapacity(n["address"], n["total"], n["available"]) for n in nodes), demand, name
    )
