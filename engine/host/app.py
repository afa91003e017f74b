"""The serving host's ASGI application: it owns the lifecycle (startup, state polling,
heartbeat, the reconciler, runners, scale to zero, autoscaling, shutdown) and routes each
request to the data plane (engine/gateway/routes.py) or the control plane (engine/control/).

The routing table is rebuilt when the state's serial moves (an apply, a token change); the
swap is one assignment, so a request in flight keeps the table it started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from engine.access.permissions import level_in
from engine.access.secret_acls import CreatorAccess, resolver_as_creator
from engine.access.tokens import Principal, TokenIndex
from engine.asgi import (
    ApiError,
    header,
    send_error,
    send_json,
    send_text,
    serve_lifespan,
)
from engine.catalog.models import ModelCatalog
from engine.control import ControlPlane, EndpointService
from engine.executors import build_executors
from engine.gateway._dataplane import DataPlane
from engine.gateway._limiter import InProcessLimits, Limiter, LimitsFallback, open_limits
from engine.gateway._metrics import Metrics, Visible
from engine.gateway._table import EndpointRoute, RoutingTable, ServedEntity, TableBuilder
from engine.gateway._usage import UsageRecorder, usage_recorder_for
from engine.gateway.routes import QueryRoutes
from engine.host.autoscale import Autoscaler, ThroughputMeter
from engine.host.one_host import claim_state, new_host_id
from engine.host.runners import Backoff, make_runner_executor, restart_runners, stop_runners
from engine.host.scale_to_zero import ColdStartError, ScaleToZero
from engine.secrets.store import SecretStore, SecretStoreError, secret_store_for_state
from engine.state import (
    EndpointRow,
    EntityRow,
    StateLocation,
    StateStore,
    open_state,
    resolve_state,
)
from engine.ui import ServingUi
from providers import ExecutorRegistry
from providers.runner import RunnerExecutor

__all__ = ["ServingApp"]


def _seconds(value: float | None, env: str, default: float) -> float:
    if value is not None:
        return value
    try:
        return float(os.environ[env])
    except (KeyError, ValueError):
        return default


log = logging.getLogger("engine.gateway")
Handler = Callable[[dict[str, Any], Any, Any], Awaitable[bool]]


class ServingApp:
    """`engine serve`'s ASGI app. `extra_routes` (control plane) get first refusal on paths."""

    def __init__(
        self,
        state_path: Path | str | StateLocation,
        *,
        poll_interval: float | None = None,
        heartbeat_interval: float = 2.0,
        reconcile_interval: float = 3.0,
        address: str = "",
        scale_to_zero_after: float | None = None,
        cold_start_wait: float | None = None,
        metrics_public: bool = False,
        host_id: str | None = None,
        limits: str | None = None,
        limits_fallback: LimitsFallback = LimitsFallback.REFUSE,
    ) -> None:
        self.state_path = resolve_state(state_path)
        # `--metrics-public`: /metrics answers without a token, every series (for a scraper on
        # a private network); otherwise a caller sees the series of endpoints it may view.
        self.metrics_public = metrics_public
        # How often the host looks for changes made elsewhere (the CLI, another process); its
        # own API's changes are served at once (catch_up).
        self.poll_interval = _seconds(poll_interval, "ENGINE_STATE_POLL_INTERVAL", 0.2)
        self.heartbeat_interval = heartbeat_interval
        self.address = address
        self.table = RoutingTable()
        self.tokens = TokenIndex([])
        self.metrics = Metrics()
        # `--limits`: where rate limits are counted (None: in this process), and what a shared
        # store's outage does (`--limits-fallback`); built at startup, under the state's lineage.
        self.limits_url = limits
        self.limits_fallback = limits_fallback
        self.limiter: Limiter = InProcessLimits()
        self.extra_routes: list[Handler] = []
        # The id this host claims the state under (`engine up` claims it before it starts).
        self.host_id = host_id or new_host_id()
        self._tasks: list[asyncio.Task[None]] = []
        self._refreshing = asyncio.Lock()
        self._store: StateStore | None = None
        self._secrets: SecretStore | None = None
        self.usage: UsageRecorder | None = None
        self.dataplane: DataPlane | None = None
        self.queries: QueryRoutes | None = None
        self._builder: TableBuilder | None = None
        self.runners: RunnerExecutor | None = None
        self._restart: asyncio.Task[None] | None = None
        self._backoff = Backoff()
        self._reconciling: asyncio.Future[None] | None = None
        self.reconcile_interval = reconcile_interval
        # Scale to zero: idle seconds before a runner stops (Model Serving's 30 minutes by
        # default), and how long a request waits for a cold start before a 503.
        self.scale_to_zero_after = _seconds(
            scale_to_zero_after, "ENGINE_SCALE_TO_ZERO_AFTER", 1800.0
        )
        self.cold_start_wait = _seconds(cold_start_wait, "ENGINE_COLD_START_WAIT", 120.0)
        self.scaler: ScaleToZero | None = None
        # Provisioned throughput: seconds of low load before a replica is removed.
        self.scale_down_after = _seconds(None, "ENGINE_SCALE_DOWN_AFTER", 300.0)
        self.meter = ThroughputMeter()
        self.autoscaler: Autoscaler | None = None

    @property
    def store(self) -> StateStore:
        """The host's open state store (from startup to shutdown)."""
        if self._store is None:
            raise RuntimeError("the serving host has not started")
        return self._store

    @property
    def secrets(self) -> SecretStore:
        if self._secrets is None:
            raise RuntimeError("the serving host has not started")
        return self._secrets

    # -- lifecycle ------------------------------------------------------------------------------

    async def startup(self) -> None:
        self._store = open_state(self.state_path)
        # One host per state (a no-op when the CLI claimed it already under this id).
        claim_state(self._store, self.host_id, address=self.address)
        self._secrets = secret_store_for_state(self.state_path)
        self.usage = usage_recorder_for(self.state_path)
        self.usage.start()
        self.limiter = open_limits(
            self.limits_url,
            lineage=self._store.lineage,
            metrics=self.metrics,
            fallback=self.limits_fallback,
        )
        await self.limiter.start()
        self.dataplane = DataPlane(
            self.limiter, self.metrics, self.usage, waker=self.wake, meter=self.meter
        )
        self.queries = QueryRoutes(self.dataplane, lambda: self.table, self.authenticate)
        self.runners = make_runner_executor(self.state_path)
        self.scaler = ScaleToZero(
            self.state_path,
            self.runners,
            self._resolver_for,
            idle_after=self.scale_to_zero_after,
            cold_start_wait=self.cold_start_wait,
            holder=f"host:{self.host_id}",
        )
        self.autoscaler = Autoscaler(
            self.state_path,
            self.runners,
            self._resolver_for,
            self.meter,
            drain=self._drain_replica,
            scale_down_after=self.scale_down_after,
        )
        self._builder = TableBuilder(
            self._resolve, self._runner_task, self._system_prompt, self._chunk_size
        )
        service = EndpointService(self.state_path, self._executors, drain=self.drain)
        self.extra_routes.append(ControlPlane(self, service))
        self.extra_routes.append(ServingUi(self, service))
        # Runners of active entities start with their host (a background thread: queries to
        # external models are served meanwhile).
        self._restart = asyncio.create_task(asyncio.to_thread(self._restart_runners))
        await self.refresh(force=True)
        self._tasks = [
            asyncio.create_task(self._poll(), name="state-poll"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._reconcile(), name="reconcile"),
        ]

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._builder is not None:
            await self._builder.close()
        if self._store is not None and self.runners is not None:
            # Runners being started (at startup or by a reconcile pass) are stopped too.
            pending = {t for t in (self._restart, self._reconciling) if t is not None}
            if pending:
                await asyncio.wait(pending)
            if self.scaler is not None:
                await self.scaler.wait_starts()
            if self.autoscaler is not None:
                await self.autoscaler.wait()
            await asyncio.to_thread(stop_runners, self._store, self.runners)
            # Runners of applies still starting (pending entities) stop with the host too.
            await asyncio.to_thread(self.runners.stop_all)
        if self.usage is not None:
            self.usage.close()
        await self.limiter.close()
        if self._store is not None:
            self._store.remove_host(self.host_id)
            self._store.close()
        if self._secrets is not None:
            self._secrets.close()

    def drain(self, row: EntityRow, timeout: float = 60.0) -> None:
        """Block (in an apply's thread) until the routing table no longer sends requests to
        this entity instance and those in flight have finished; bounded by `timeout`."""
        if self._store is None or self._builder is None:
            return
        key = (row.id, row.fingerprint)
        target = open_state(self.state_path)
        try:
            serial = target.serial
        finally:
            target.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            refreshed = self.table.serial >= serial
            if refreshed and not self._builder.routed(key) and not self._builder.in_flight(key):
                return
            time.sleep(0.05)
        log.warning("entity instance %s still busy after %.0f s; stopping it", row.id, timeout)

    def executors(self) -> ExecutorRegistry:
        """The executors of applies done by this host: its runners start self-hosted entities."""
        registry = build_executors()
        if self.runners is not None:
            registry.register("self_hosted", self.runners, replace=True)
        return registry

    _executors = executors

    def _restart_runners(self) -> None:
        """One reconcile pass; an endpoint whose update holds its lock is left to that update."""
        store = open_state(self.state_path)
        try:
            busy = self.autoscaler.busy if self.autoscaler is not None else (lambda _: False)
            restart_runners(
                store,
                self.runners,
                self._resolver_for,
                self._backoff,
                busy,
                holder=f"host:{self.host_id}",
            )
        finally:
            store.close()

    async def _reconcile(self) -> None:
        """The reconciler: a runner that dies is restarted with backoff, without an apply."""
        while True:
            await asyncio.sleep(self.reconcile_interval)
            if self._restart is not None and not self._restart.done():
                continue
            if self.scaler is not None:
                await self.scaler.park_idle(self.table)
            if self.autoscaler is not None:
                self.autoscaler.step(self.table)
            # Kept so that shutdown waits for a pass in progress before stopping runners.
            self._reconciling = asyncio.ensure_future(asyncio.to_thread(self._restart_runners))
            try:
                await self._reconciling
            except Exception:  # noqa: BLE001 - keep reconciling
                log.exception("reconcile pass failed")

    def _runner_task(self, entity: dict[str, Any]) -> str | None:
        entry = self._catalog_entry(entity)
        return entry.task if entry else None

    def _chunk_size(self, entity: dict[str, Any]) -> int | None:
        entry = self._catalog_entry(entity)
        return entry.throughput_chunk_size if entry else None

    def _drain_replica(self, instance_id: int, serial: int, timeout: float = 60.0) -> None:
        """Block (in a thread) until the routing table is at `serial` and the retired upstreams
        of an instance (a replica set that lost a replica) have no request in flight."""
        assert self._builder is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.table.serial >= serial and not self._builder.draining(instance_id):
                return
            time.sleep(0.05)

    def _system_prompt(self, entity: dict[str, Any]) -> str | None:
        entry = self._catalog_entry(entity)
        return entry.default_system_prompt if entry else None

    def _catalog_entry(self, entity: dict[str, Any]) -> Any:
        assert self._store is not None
        return ModelCatalog(self._store).get(
            entity.get("entity_name", ""), entity.get("entity_version", "")
        )

    async def wake(self, route: EndpointRoute, entity: ServedEntity) -> ServedEntity:
        """A request for a scaled-to-zero runner: start it, wait (bounded), route to it."""
        assert self.scaler is not None
        retry = [("retry-after", str(max(1, round(min(self.cold_start_wait, 30)))))]
        try:
            await self.scaler.wake(entity.instance_id)
        except TimeoutError:
            raise ApiError(
                503,
                "TEMPORARILY_UNAVAILABLE",
                f"served entity {entity.name!r} of {route.name!r} is starting from zero; "
                "retry shortly",
                retry,
            ) from None
        except ColdStartError as exc:
            raise ApiError(503, "TEMPORARILY_UNAVAILABLE", exc.message, retry) from None
        await self.refresh()
        fresh = self.table.endpoints.get(route.name)
        started = fresh.entities.get(entity.name) if fresh is not None else None
        if started is None or started.upstream is None or started.needs_start():
            raise ApiError(
                503,
                "TEMPORARILY_UNAVAILABLE",
                f"served entity {entity.name!r} of {route.name!r} is not serving yet; retry",
                retry,
            )
        return started

    def _resolve(self, reference: str) -> str:
        assert self._secrets is not None
        try:
            return self._secrets.resolve(reference)
        except SecretStoreError:
            raise KeyError(reference) from None

    def _resolver_for(self, endpoint: str) -> Callable[[str], str]:
        """What starts a runner resolves its secrets as the endpoint's creator, as of now."""
        assert self._store is not None
        return resolver_as_creator(self._store, self._store.get_endpoint(endpoint), self._resolve)

    async def refresh(self, *, force: bool = False) -> None:
        """Rebuild the routing table and token index if the state moved on."""
        assert self._store is not None and self._builder is not None
        async with self._refreshing:
            # One rebuild at a time: a caller that waited finds the table already current.
            serial = self._store.serial
            if not force and serial == self.table.serial:
                return
            serial, view = self._store.serving_view()
            self.tokens = TokenIndex.load(self._store)
            self.table = self._builder.build(
                serial, view, self._store.all_permissions(), CreatorAccess.load(self._store)
            )
            await self._builder.retire_unused()

    async def catch_up(self) -> None:
        """The routing table at least at the state's serial as of now (read-your-writes: the
        control plane calls this before it answers)."""
        await self.refresh()

    def metrics_text(self, visible: Visible = None) -> str:
        return self.metrics.render(visible)

    async def _metrics(self, scope: dict[str, Any], send: Any) -> None:
        visible: Visible = None
        if not self.metrics_public:
            principal = self.authenticate(scope)
            if not principal.admin:
                visible = (await asyncio.to_thread(self._viewable, principal)).__contains__
        await send_text(send, 200, self.metrics_text(visible), "text/plain; version=0.0.4")

    def _viewable(self, principal: Principal) -> frozenset[str]:
        """Names of the endpoints the caller may view (CAN_VIEW or more)."""
        acls = self.store.all_permissions()
        return frozenset(
            row.name
            for row in self.store.list_endpoints()
            if level_in(acls.get(row.id, []), principal) is not None
        )

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - keep serving the last good table
                log.exception("cannot refresh the routing table")

    async def _heartbeat(self) -> None:
        assert self._store is not None
        while True:
            try:
                self._store.heartbeat(
                    self.host_id,
                    pid=os.getpid(),
                    hostname=socket.gethostname(),
                    address=self.address,
                )
            except Exception:  # noqa: BLE001
                log.exception("cannot record the heartbeat")
            await asyncio.sleep(self.heartbeat_interval)

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._dispatch(scope, receive, send)
        except ApiError as exc:
            await send_error(send, exc)
        except Exception:  # noqa: BLE001 - one bad request never takes the host down
            log.exception("request failed: %s %s", scope["method"], scope["path"])
            await send_error(send, ApiError(500, "INTERNAL_ERROR", "the server failed to answer"))

    async def _lifespan(self, receive: Any, send: Any) -> None:
        await serve_lifespan(receive, send, self.startup, self.shutdown)

    def authenticate(self, scope: dict[str, Any]) -> Principal:
        principal = self.tokens.principal_for(header(scope, b"authorization"))
        if principal is None:
            raise ApiError(
                401,
                "UNAUTHENTICATED",
                "a valid bearer token is required (create one with `engine tokens create`)",
            )
        return principal

    async def _dispatch(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        if self.queries is not None and await self.queries(scope, receive, send):
            return
        for handler in self.extra_routes:
            if await handler(scope, receive, send):
                return
        if path == "/health" and method == "GET":
            await send_json(send, 200, {"status": "ok", "serial": self.table.serial})
        elif path == "/metrics" and method == "GET":
            await self._metrics(scope, send)
        else:
            raise ApiError(404, "ENDPOINT_NOT_FOUND", f"no API at {method} {path}")

    def entity_logs(self, row: EndpointRow, entity: str, build: bool) -> str | None:
        """Log lines of a served entity: its lifecycle from the state, and the runner's log."""
        assert self._store is not None
        instances = [e for e in self._store.entities(row.name) if e.name == entity]
        served = {e["name"] for e in (row.spec or {}).get("config", {}).get("served_entities", [])}
        if not instances and entity not in served:
            return None
        lines = []
        for instance in instances:
            model = instance.config.get("external_model")
            what = f"external model {model['provider']}/{model['name']}" if model else "runner"
            if build:
                lines.append(f"{what}: nothing to build (config version {instance.config_version})")
                continue
            lines.append(
                f"{what} instance {instance.id} ({instance.role}): {instance.deployment}"
                + (f": {instance.message}" if instance.message else "")
            )
            log_file = (instance.handle or {}).get("log_file")
            if log_file:
                try:
                    with open(log_file, encoding="utf-8", errors="replace") as f:
                        lines += f.read()[-65536:].splitlines()
                except OSError:
                    lines.append(f"(log file {log_file} is gone)")
        for item in self._store.history(row.name)[-50:]:
            lines.append(
                f"{item.at_ms} {item.actor} {item.action} config_version={item.config_version}"
            )
        return "\n".join(lines) + "\n"
