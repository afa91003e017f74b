"""The routing table: compiled from the state when a config version activates.

A table is immutable. A request takes the current table once and finishes on it, so an apply
that switches versions never changes a request in flight; the next request sees the new table.
Adapters (and their pooled HTTP clients) are kept across rebuilds for entity instances that
did not change, and closed once retired and idle.
"""

from __future__ import annotations

import bisect
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from providers.adapters import ProviderAdapter, ProviderError, adapter_for
from providers.adapters._transport import AiohttpClient

from ..secrets_store import parse_secret_reference
from ..state import EndpointRow, EntityRow
from ._ratelimit import LimitRule, rules_from_spec

__all__ = ["EndpointRoute", "RoutingTable", "ServedEntity", "Upstream", "TableBuilder"]

log = logging.getLogger("engine.gateway")
UPSTREAM_TIMEOUT = httpx.Timeout(connect=10.0, read=300.0, write=60.0, pool=60.0)


class Upstream:
    """An adapter with its own keep-alive client, closed when retired and idle."""

    def __init__(self, adapter: ProviderAdapter, client: AiohttpClient) -> None:
        self.adapter = adapter
        self.client = client
        self.in_flight = 0
        self.retired = False
        # Scale to zero: when a request last used it, and whether its runner is being stopped
        # (requests then wait for a cold start instead of calling a server that goes away).
        self.last_used = time.monotonic()
        self.parked = False

    def acquire(self) -> None:
        self.in_flight += 1
        self.last_used = time.monotonic()

    async def release(self) -> None:
        self.in_flight -= 1
        self.last_used = time.monotonic()
        if self.retired and self.in_flight == 0:
            await self.client.aclose()

    async def retire(self) -> None:
        self.retired = True
        if self.in_flight == 0:
            await self.client.aclose()


@dataclass
class ServedEntity:
    name: str
    instance_id: int
    upstream: Upstream | None
    # Why the entity cannot serve (no upstream), e.g. a secret that does not resolve.
    unavailable: str = ""
    # A runner that stops when idle (scale_to_zero_enabled), and whether it is stopped now.
    scale_to_zero: bool = False
    scaled_to_zero: bool = False
    # The catalog's default system prompt, added to chat requests that have none.
    system_prompt: str | None = None

    def needs_start(self) -> bool:
        """A request must wait for a cold start: the runner is stopped or being stopped."""
        return self.scaled_to_zero or (self.upstream is not None and self.upstream.parked)


@dataclass
class EndpointRoute:
    name: str
    id: str
    task: str | None
    config_version: int | None
    entities: dict[str, ServedEntity]
    order: list[str]
    cumulative: list[int]
    targets: list[ServedEntity]
    rate_rules: tuple[LimitRule, ...]
    usage_tracking: bool
    fallback: bool
    acl: list[tuple[str, str, str]] = field(default_factory=list)

    def pick(self, rnd: Callable[[], float] = random.random) -> ServedEntity | None:
        """A served entity by traffic weight (entities at 0% are never picked)."""
        if not self.cumulative:
            return None
        total = self.cumulative[-1]
        return self.targets[bisect.bisect_right(self.cumulative, rnd() * total)]


@dataclass
class RoutingTable:
    serial: int = -1
    endpoints: dict[str, EndpointRoute] = field(default_factory=dict)


def _task_of(spec: dict[str, Any]) -> str | None:
    for entity in spec.get("config", {}).get("served_entities") or []:
        model = entity.get("external_model")
        if model:
            return model.get("task")
    return None


def _scaled_to_zero(instance: EntityRow) -> bool:
    return bool((instance.handle or {}).get("scaled_to_zero"))


class TableBuilder:
    """Builds tables; owns the upstreams so that unchanged entities keep their connections."""

    def __init__(
        self,
        resolve: Callable[[str], str],
        runner_task: Callable[[dict[str, Any]], str | None] = lambda entity: None,
        system_prompt: Callable[[dict[str, Any]], str | None] = lambda entity: None,
    ) -> None:
        self._resolve = resolve
        self._runner_task = runner_task
        self._system_prompt = system_prompt
        self._retired: list[tuple[tuple[int, str], Upstream]] = []
        self._draining: dict[tuple[int, str], list[Upstream]] = {}
        self._upstreams: dict[tuple[int, str], Upstream] = {}

    def build(
        self,
        serial: int,
        view: list[tuple[EndpointRow, list[EntityRow]]],
        acls: dict[str, list[tuple[str, str, str]]] | None = None,
    ) -> RoutingTable:
        table = RoutingTable(serial=serial)
        live: set[tuple[int, str]] = set()
        for row, entities in view:
            if row.spec is None or row.deleting or "config" not in row.spec:
                continue
            route = self._route(row, entities, live)
            route.acl = (acls or {}).get(row.id, [])
            table.endpoints[row.name] = route
        self._retired = [(k, u) for k, u in self._upstreams.items() if k not in live]
        for key, upstream in self._retired:
            self._draining.setdefault(key, []).append(upstream)
        self._upstreams = {k: u for k, u in self._upstreams.items() if k in live}
        return table

    def in_flight(self, key: tuple[int, str]) -> int:
        """Requests still running on an entity instance (live or retired upstreams)."""
        live = self._upstreams.get(key)
        busy = live.in_flight if live is not None else 0
        return busy + sum(u.in_flight for u in self._draining.get(key, []))

    def routed(self, key: tuple[int, str]) -> bool:
        return key in self._upstreams

    async def retire_unused(self) -> None:
        for _, upstream in self._retired:
            await upstream.retire()
        self._retired = []
        self._draining = {k: [u for u in ups if u.in_flight] for k, ups in self._draining.items()}
        self._draining = {k: ups for k, ups in self._draining.items() if ups}

    async def close(self) -> None:
        for upstream in self._upstreams.values():
            await upstream.retire()
        self._upstreams = {}

    def _route(
        self, row: EndpointRow, entities: list[EntityRow], live: set[tuple[int, str]]
    ) -> EndpointRoute:
        spec = row.spec or {}
        by_name = {e.name: e for e in entities}
        served: dict[str, ServedEntity] = {}
        order: list[str] = []
        for entity_spec in spec["config"].get("served_entities") or []:
            name = entity_spec["name"]
            order.append(name)
            instance = by_name.get(name)
            # A scaled-to-zero runner is started by the next request, also after a failed
            # cold start (the request then waits for another try).
            if instance is None or (
                instance.deployment != "DEPLOYMENT_READY" and not _scaled_to_zero(instance)
            ):
                served[name] = ServedEntity(name, -1, None, "the served entity is not ready")
                continue
            served[name] = self._served(instance, live)
        weights: list[int] = []
        targets: list[ServedEntity] = []
        for route in spec["config"].get("traffic_config", {}).get("routes") or []:
            target = served.get(route["served_entity_name"])
            if target is not None and route["traffic_percentage"] > 0:
                total = (weights[-1] if weights else 0) + route["traffic_percentage"]
                weights.append(total)
                targets.append(target)
        gateway = spec.get("ai_gateway") or {}
        return EndpointRoute(
            name=row.name,
            id=row.id,
            task=_task_of(spec) or self._self_hosted_task(spec),
            config_version=row.config_version,
            entities=served,
            order=order,
            cumulative=weights,
            targets=targets,
            rate_rules=rules_from_spec(spec),
            usage_tracking=bool((gateway.get("usage_tracking_config") or {}).get("enabled")),
            fallback=bool((gateway.get("fallback_config") or {}).get("enabled")),
        )

    def _served(self, instance: EntityRow, live: set[tuple[int, str]]) -> ServedEntity:
        served = self._upstream_of(instance, live)
        if "external_model" not in instance.config:
            served.scale_to_zero = bool(instance.config.get("scale_to_zero_enabled"))
            served.system_prompt = self._system_prompt(instance.config)
        return served

    def _upstream_of(self, instance: EntityRow, live: set[tuple[int, str]]) -> ServedEntity:
        if _scaled_to_zero(instance):
            # Not live: its old upstream retires; a cold start makes a new one (new port).
            return ServedEntity(
                instance.name, instance.id, None, "scaled to zero", scaled_to_zero=True
            )
        key = (instance.id, instance.fingerprint)
        live.add(key)
        upstream = self._upstreams.get(key)
        if upstream is None:
            model = instance.config.get("external_model")
            if model is None:
                model = self._runner_model(instance)
            if model is None:
                return ServedEntity(instance.name, instance.id, None, "no runner for this entity")
            try:
                resolved = self._resolved(model)
            except KeyError as exc:
                log.error(
                    "%s/%s: secret %s does not resolve",
                    instance.endpoint,
                    instance.name,
                    exc.args[0],
                )
                return ServedEntity(
                    instance.name, instance.id, None, f"secret {exc.args[0]} does not resolve"
                )
            client = AiohttpClient(timeout=UPSTREAM_TIMEOUT, max_connections=256)
            try:
                adapter = adapter_for(resolved, client)
            except ProviderError as exc:
                return ServedEntity(instance.name, instance.id, None, exc.message)
            upstream = self._upstreams[key] = Upstream(adapter, client)
        return ServedEntity(instance.name, instance.id, upstream)

    def _self_hosted_task(self, spec: dict[str, Any]) -> str | None:
        for entity in spec["config"].get("served_entities") or []:
            task = self._runner_task(entity)
            if task:
                return task
        return None

    def _runner_model(self, instance: EntityRow) -> dict[str, Any] | None:
        """A vLLM runner speaks OpenAI's API: serve it through the same adapter interface."""
        base_url = (instance.handle or {}).get("base_url")
        task = self._runner_task(instance.config)
        if not base_url or not task:
            return None
        return {
            "provider": "openai",
            "name": instance.name,  # the runner serves the model under the entity's name
            "task": task,
            "openai_config": {"openai_api_key": "unused", "openai_api_base": base_url},
        }

    def _resolved(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._resolve(value) if parse_secret_reference(value) else value
        if isinstance(value, dict):
            return {k: self._resolved(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolved(v) for v in value]
        return value
