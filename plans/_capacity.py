"""Capacity of a runner cluster, checked at plan time. Pure: the engine reads the cluster (Ray's
nodes and their resources) and passes it in as data.

| rule | refuses                                                                          |
| ---- | -------------------------------------------------------------------------------- |
| C1   | an entity one replica of which no node can hold, even empty (names what lacks)   |
| C2   | a change whose new replicas fit only once the old version's have stopped: an     |
|      | update keeps the old config serving until the new one is ready (zero downtime)   |

Resource names are Ray's: `CPU`, `GPU`, `memory` (bytes), and custom names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from schemas import RuleId

from ._canonical import Canonical
from ._diff import render_path
from ._model import PlanError

__all__ = ["ClusterCapacity", "NodeCapacity", "capacity_errors"]

# (resources of one replica, replicas it starts with) for one self-hosted entity config.
Demand = Callable[[Mapping[str, Any]], tuple[Mapping[str, float], int]]
_EPSILON = 1e-9


@dataclass(frozen=True)
class NodeCapacity:
    """One live node: its resources in all, and those free now."""

    node: str  # shown in messages (the node's address)
    total: Mapping[str, float]
    available: Mapping[str, float]


@dataclass(frozen=True)
class ClusterCapacity:
    nodes: Sequence[NodeCapacity]
    # What a replica of an entity asks for; raises ValueError for a bad request (shown as C1).
    demand: Demand
    name: str = "the Ray cluster"


def _fits(wanted: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(free.get(k, 0.0) + _EPSILON >= v for k, v in wanted.items())


def _amount(key: str, value: float) -> str:
    return f"{value / 2**30:.1f} GiB of memory" if key == "memory" else f"{value:g} {key}"


def _missing(wanted: Mapping[str, float], nodes: Sequence[NodeCapacity]) -> str:
    """What no node has enough of, e.g. `worker_gpu (asks 1, the most a node has is 0)`."""
    parts = []
    for key, value in sorted(wanted.items()):
        most = max((n.total.get(key, 0.0) for n in nodes), default=0.0)
        if most + _EPSILON < value:
            parts.append(f"{key} (asks {_amount(key, value)}, the most a node has is {most:g})")
    if parts:
        return "; ".join(parts)
    return "no single node has all of it at once"


def _self_hosted(doc: Canonical | None) -> dict[str, dict[str, Any]]:
    entities = (doc or {}).get("config", {}).get("served_entities") or []
    return {e.get("name"): e for e in entities if "external_model" not in e}


def _place(replicas: list[Mapping[str, float]], free: list[dict[str, float]]) -> bool:
    """First-fit, largest request first: whether every replica finds a node."""
    for wanted in sorted(replicas, key=lambda w: -sum(w.values())):
        for node in free:
            if _fits(wanted, node):
                for k, v in wanted.items():
                    node[k] = node.get(k, 0.0) - v
                break
        else:
            return False
    return True


def capacity_errors(
    desired: Canonical, before: Canonical | None, capacity: ClusterCapacity
) -> list[PlanError]:
    """C1/C2 errors of one endpoint's change (before: the config as applied, if any)."""
    errors: list[PlanError] = []
    old = _self_hosted(before)
    starting: list[Mapping[str, float]] = []
    for name, entity in _self_hosted(desired).items():
        path = render_path(("config", "served_entities", ("name", name)))
        try:
            wanted, count = capacity.demand(entity)
        except ValueError as exc:
            errors.append(PlanError(RuleId.C1, path, str(exc)))
            continue
        if not any(_fits(wanted, n.total) for n in capacity.nodes):
            asks = ", ".join(_amount(k, v) for k, v in sorted(wanted.items()))
            errors.append(
                PlanError(
                    RuleId.C1,
                    path,
                    f"no node of {capacity.name} ({len(capacity.nodes)} nodes) can hold one "
                    f"replica, which asks for {asks}: missing {_missing(wanted, capacity.nodes)}",
                )
            )
        elif old.get(name) != entity:
            starting += [wanted] * count  # a new or changed entity starts new replicas
    if errors or not starting:
        return errors
    if _place(starting, [dict(n.available) for n in capacity.nodes]):
        return []
    # Would they fit with the old version's replicas gone (the whole cluster free of them)?
    old_replicas: list[Mapping[str, float]] = []
    for entity in old.values():
        try:
            wanted, count = capacity.demand(entity)
        except ValueError:
            continue
        old_replicas += [wanted] * count
    if old_replicas and _place(starting, [dict(n.total) for n in capacity.nodes]):
        return [
            PlanError(
                RuleId.C2,
                "config.served_entities",
                f"the new replicas fit in {capacity.name} only once the old version's "
                f"{len(old_replicas)} replica(s) have stopped, and an update keeps them serving "
                "until the new ones are ready; add capacity, or delete the endpoint and create "
                "it again (downtime)",
            )
        ]
    return [
        PlanError(
            RuleId.C1,
            "config.served_entities",
            f"{capacity.name} has no free room now for the {len(starting)} replica(s) this "
            "change starts (other runners hold its resources); free or add capacity",
        )
    ]
