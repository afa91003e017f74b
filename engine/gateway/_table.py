"""The routing table: compiled from the state when a config version activates.

A table is immutable. A request takes the current table once and finishes on it, so an apply
that switches versions never changes a request in flight; the next request sees the new table.
Adapters (and their pooled HTTP clients) are kept across rebuilds for entity instances that
did not change, and closed once retired and idle.
"""

from __future__ import annotations

import bisect
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from engine.access.secret_acls import CreatorAccess
from engine.gateway._errors import masked
from engine.gateway._guardrails import Guardrails, compile_guardrails
from engine.gateway._ratelimit import LimitRule, rules_from_spec
from engine.gateway._replicas import ReplicaSet
from engine.state import EndpointRow, EntityRow
from engine.tables._names import TableName, payload_table_of
from providers.adapters import ProviderAdapter, ProviderError, adapter_for
from providers.adapters._transport import AiohttpClient
from providers.external import references_in
from providers.runner.executor import replica_bounds, replicas_of
from schemas import DeploymentState, parse_secret_reference

__all__ = ["EndpointRoute", "RoutingTable", "ServedEntity", "Upstream", "TableBuilder"]

log = logging.getLogger("engine.gateway")
# Seconds an upstream may take to answer (or between two chunks of a stream).
UPSTREAM_READ_TIMEOUT_ENV = "ENGINE_UPSTREAM_READ_TIMEOUT"
DEFAULT_READ_TIMEOUT = 300.0


def upstream_timeout() -> httpx.Timeout:
    """The upstreams' timeouts; the read timeout from $ENGINE_UPSTREAM_READ_TIMEOUT if set."""
    raw = os.environ.get(UPSTREAM_READ_TIMEOUT_ENV, "").strip()
    try:
        read = float(raw) if raw else DEFAULT_READ_TIMEOUT
    except ValueError:
        read = 0.0
    if not 0 < read < float("inf"):
        log.warning(
            "%s=%r is not a number of seconds above 0; using %s",
            UPSTREAM_READ_TIMEOUT_ENV,
            raw,
            DEFAULT_READ_TIMEOUT,
        )
        read = DEFAULT_READ_TIMEOUT
    return httpx.Timeout(connect=10.0, read=read, write=60.0, pool=60.0)


class Upstream:
    """An adapter with its own keep-alive client, closed when retired and idle."""

    def __init__(
        self,
        adapter: ProviderAdapter | ReplicaSet,
        client: AiohttpClient,
        secrets: tuple[str, ...] = (),
    ) -> None:
        self.adapter = adapter
        self.client = client
        # The secret values its config resolved to: masked in every error the gateway answers.
        self.secrets = secrets
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
    # Provisioned throughput: runner replicas now, and (chunk tokens/s, fewest, most).
    replicas: int = 1
    provisioned: tuple[int, int, int] | None = None

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
    # ai_gateway.guardrails compiled; None (the usual case) costs a request nothing.
    guardrails: Guardrails | None = None
    # `ai_gateway.inference_table_config`: the payload table (None: payloads are not logged).
    payload_table: TableName | None = None

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


_Key = tuple[int, str, tuple[str, ...]]


def _scaled_to_zero(instance: EntityRow) -> bool:
    return bool((instance.handle or {}).get("scaled_to_zero"))


class TableBuilder:
    """Builds tables; owns the upstreams so that unchanged entities keep their connections."""

    def __init__(
        self,
        resolve: Callable[[str], str],
        runner_task: Callable[[dict[str, Any]], str | None] = lambda entity: None,
        system_prompt: Callable[[dict[str, Any]], str | None] = lambda entity: None,
        chunk_size: Callable[[dict[str, Any]], int | None] = lambda entity: None,
    ) -> None:
        self._resolve = resolve
        self._timeout = upstream_timeout()
        self._runner_task = runner_task
        self._system_prompt = system_prompt
        self._chunk_size = chunk_size
        # Keyed by (instance id, fingerprint, replica URLs): a new replica set is a new upstream.
        self._retired: list[tuple[_Key, Upstream]] = []
        self._draining: dict[_Key, list[Upstream]] = {}
        self._upstreams: dict[_Key, Upstream] = {}

    def build(
        self,
        serial: int,
        view: list[tuple[EndpointRow, list[EntityRow]]],
        acls: dict[str, list[tuple[str, str, str]]] | None = None,
        creators: CreatorAccess | None = None,
    ) -> RoutingTable:
        """The table of `view`; with `creators`, an external entity whose endpoint's creator may
        no longer read a scope its config references stops serving (its upstream retires)."""
        table = RoutingTable(serial=serial)
        live: set[_Key] = set()
        for row, entities in view:
            if row.spec is None or row.deleting or "config" not in row.spec:
                continue
            route = self._route(row, entities, live, creators)
            route.acl = (acls or {}).get(row.id, [])
            table.endpoints[row.name] = route
        self._retired = [(k, u) for k, u in self._upstreams.items() if k not in live]
        for key, upstream in self._retired:
            self._draining.setdefault(key, []).append(upstream)
        self._upstreams = {k: u for k, u in self._upstreams.items() if k in live}
        return table

    def in_flight(self, key: tuple[int, str]) -> int:
        """Requests still running on an entity instance (live or retired upstreams)."""
        busy = sum(u.in_flight for k, u in self._upstreams.items() if k[:2] == key)
        return busy + sum(
            u.in_flight for k, ups in self._draining.items() if k[:2] == key for u in ups
        )

    def routed(self, key: tuple[int, str]) -> bool:
        return any(k[:2] == key for k in self._upstreams)

    def draining(self, instance_id: int) -> int:
        """Requests still running on retired upstreams of an instance (e.g. a removed replica)."""
        return sum(
            u.in_flight for k, ups in self._draining.items() if k[0] == instance_id for u in ups
        )

    def busy_retired(self) -> list[tuple[int, str]]:
        """(instance id, fingerprint) of upstreams no longer routed with requests in flight."""
        return sorted({k[:2] for k, ups in self._draining.items() if any(u.in_flight for u in ups)})

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
        self,
        row: EndpointRow,
        entities: list[EntityRow],
        live: set[_Key],
        creators: CreatorAccess | None,
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
                instance.deployment != DeploymentState.READY and not _scaled_to_zero(instance)
            ):
                served[name] = ServedEntity(name, -1, None, "the served entity is not ready")
                continue
            denied = creators and _denied_secret(row, instance, creators)
            if denied:
                log.error("%s/%s: %s", row.name, name, denied)
                served[name] = ServedEntity(name, instance.id, None, denied)
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
            guardrails=compile_guardrails(row.name, gateway.get("guardrails")),
            payload_table=_payload_table(row.name, spec),
        )

    def _served(self, instance: EntityRow, live: set[_Key]) -> ServedEntity:
        served = self._upstream_of(instance, live)
        if "external_model" not in instance.config:
            config = instance.config
            served.scale_to_zero = bool(config.get("scale_to_zero_enabled"))
            served.system_prompt = self._system_prompt(config)
            served.replicas = max(1, len(replicas_of(instance.handle)))
            chunk = self._chunk_size(config)
            if chunk and config.get("max_provisioned_throughput"):
                served.provisioned = (chunk, *replica_bounds(config, chunk))
        return served

    def _upstream_of(self, instance: EntityRow, live: set[_Key]) -> ServedEntity:
        if _scaled_to_zero(instance):
            # Not live: its old upstream retires; a cold start makes a new one (new port).
            return ServedEntity(
                instance.name, instance.id, None, "scaled to zero", scaled_to_zero=True
            )
        external = instance.config.get("external_model")
        urls = (
            () if external else tuple(r.get("base_url", "") for r in replicas_of(instance.handle))
        )
        key = (instance.id, instance.fingerprint, urls)
        live.add(key)
        upstream = self._upstreams.get(key)
        if upstream is None:
            models = [external] if external else self._runner_models(instance, urls)
            if not models:
                return ServedEntity(instance.name, instance.id, None, "no runner for this entity")
            secrets: list[str] = []
            try:
                resolved = [self._resolved(model, secrets) for model in models]
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
            # vLLM's server (uvicorn) closes idle connections after 5 s: keep ours for less.
            client = AiohttpClient(
                timeout=self._timeout, max_connections=256, keepalive=15.0 if external else 3.0
            )
            try:
                adapters = [adapter_for(model, client) for model in resolved]
            except Exception as exc:
                # One entity that cannot be built is unavailable, never a host that cannot
                # start: the other endpoints keep serving. (The client is not open yet.)
                reason = _unbuildable(exc, (external or {}).get("provider"), secrets)
                log.error("%s/%s: %s", instance.endpoint, instance.name, reason)
                return ServedEntity(instance.name, instance.id, None, reason)
            adapter = adapters[0] if len(adapters) == 1 else ReplicaSet(adapters)
            upstream = self._upstreams[key] = Upstream(adapter, client, tuple(secrets))
        return ServedEntity(instance.name, instance.id, upstream)

    def _self_hosted_task(self, spec: dict[str, Any]) -> str | None:
        for entity in spec["config"].get("served_entities") or []:
            task = self._runner_task(entity)
            if task:
                return task
        return None

    def _runner_models(self, instance: EntityRow, urls: tuple[str, ...]) -> list[dict[str, Any]]:
        """A vLLM runner speaks OpenAI's API: serve each replica through the same adapter
        interface as external models."""
        task = self._runner_task(instance.config)
        if not urls or not all(urls) or not task:
            return []
        return [
            {
                "provider": "openai",
                "name": instance.name,  # the runner serves the model under the entity's name
                "task": task,
                "openai_config": {"openai_api_key": "unused", "openai_api_base": base_url},
            }
            for base_url in urls
        ]

    def _resolved(self, value: Any, secrets: list[str]) -> Any:
        """`value` with its secret references resolved; each value found is added to `secrets`."""
        if isinstance(value, str):
            if not parse_secret_reference(value):
                return value
            secret = self._resolve(value)
            secrets.append(secret)
            return secret
        if isinstance(value, dict):
            return {k: self._resolved(v, secrets) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolved(v, secrets) for v in value]
        return value


def _payload_table(endpoint: str, spec: dict[str, Any]) -> TableName | None:
    try:
        return payload_table_of(endpoint, spec)
    except ValueError as exc:  # validate refuses such names (R7); a state from before did not
        log.error("%s: inference table not written: %s", endpoint, exc)
        return None


def _denied_secret(row: EndpointRow, instance: EntityRow, creators: CreatorAccess) -> str | None:
    """Why an external entity may not use its secrets any more (None: it may)."""
    external = instance.config.get("external_model")
    if not external:
        return None  # a runner resolved its secrets when it started
    for reference in references_in(external):
        scope, _ = parse_secret_reference(reference) or ("", "")
        reason = creators.denial(row, scope)
        if reason is not None:
            return f"secret {reference} may not be used: {reason}"
    return None


def _unbuildable(exc: Exception, provider: str | None, secrets: list[str]) -> str:
    """Why an entity's adapter cannot be built, for its 503s and the log: never a secret."""
    if isinstance(exc, ProviderError):
        return f"its configuration cannot work: {masked(exc.message, secrets)}"
    # Not the exception's text: it may quote a config value, and so a secret.
    return f"the {provider or 'runner'} adapter cannot be built ({type(exc).__name__})"
