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
    read_json,
    send_error,
    send_json,
    send_text,
    serve_lifespan,
)
from engine.catalog.models import ModelCatalog
from engine.control import ControlPlane, EndpointService
from engine.executors import StopOnlyRunnerExecutor, build_executors
from engine.gateway._dataplane import DataPlane
from engine.gateway._limiter import InProcessLimits, Limiter, LimitsFallback, open_limits
from engine.gateway._metrics import Metrics, Visible
from engine.gateway._table import EndpointRoute, RoutingTable, ServedEntity, TableBuilder
from engine.gateway._usage import UsageRecorder, usage_recorder_for
from engine.gateway.routes import QueryRoutes
from engine.host.autoscale import Autoscaler, ThroughputMeter
from engine.host.membership import SINGLE, alive_now, join_state, limits_mode, new_host_id
from engine.host.peer_listener import PeerListener
from engine.host.peers import PEER_HEADER, WAKE_PATH, Peers, needs_runner_host
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
from engine.state.notify import StateListener
from engine.tables._names import tables_root
from engine.tables.recorder import TableRecorder
from engine.ui import ServingUi
from providers import Deployment, ExecutorError, ExecutorRegistry
from providers.runner import RunnerExecutor
from providers.runner.ray_executor import RayRunnerExecutor, RaySettings
from schemas import now_ms

# Names the endpoint that answers `safety` guardrails (`engine serve --safety-endpoint`).
SAFETY_ENDPOINT_ENV = "ENGINE_SAFETY_ENDPOINT"

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
        replica: str = "",
        peer_listen: tuple[str, type | str] | None = None,
        safety_endpoint: str | None = None,
        tables_root: str | None = None,
        ray: RaySettings | None = None,
    ) -> None:
        self.state_path = resolve_state(state_path)
        # `--runners ray`: self-hosted entities are Ray actors on this cluster.
        self.ray = ray
        # The guard model (an endpoint of this host) that `safety` guardrails ask.
        self.safety_endpoint = safety_endpoint or os.environ.get(SAFETY_ENDPOINT_ENV) or None
        # `--tables-root`: where the payload and usage tables go (engine/tables/_names.py).
        self.tables_root = tables_root
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
        self.limits_mode = limits_mode(limits)
        self.limits_fallback = limits_fallback
        self.limiter: Limiter = InProcessLimits()
        # Several replicas of one state: every series of /metrics names this one (a host that
        # counts limits alone has no peers, and keeps its series as they were).
        if replica or self.limits_mode != SINGLE:
            self.metrics.replica = replica or address or socket.gethostname()
        # One replica of the state runs the runners (engine/host/membership.py); the others
        # route to them and hand it what starts or stops one (engine/host/peers.py).
        # Until startup joins the state, an app is its own runner host (as a lone host is).
        self.runner_host = True
        # (interface, uvicorn protocol): a worker of `--workers N` also listens on a private
        # port, the address the other replicas reach it at (engine/host/peer_listener.py).
        self._peer_listen = peer_listen
        self._listener_thread: StateListener | None = None
        self._changed = asyncio.Event()
        self._listener: PeerListener | None = None
        self._reported: tuple[int, tuple[tuple[int, str], ...]] | None = None
        self.extra_routes: list[Handler] = []
        # The id this host claims the state under (`engine up` claims it before it starts).
        self.host_id = host_id or new_host_id()
        self.peers = Peers(self.host_id)
        self._tasks: list[asyncio.Task[None]] = []
        self._refreshing = asyncio.Lock()
        self._store: StateStore | None = None
        self._secrets: SecretStore | None = None
        self.usage: UsageRecorder | None = None
        self.tables: TableRecorder | None = None
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
        if self._peer_listen is not None:
            self._listener = PeerListener(self, *self._peer_listen)
            self.address = await self._listener.start()
        # Join the state's replicas (refused when the rate-limit modes disagree; a no-op when
        # the CLI joined already under this id), then take the runner role if it is free.
        join_state(
            self._store,
            self.host_id,
            address=self.address,
            limits=self.limits_mode,
            peer_hash=self.peers.key_hash,
        )
        self.runner_host = self._store.claim_runner_role(self.host_id, alive=alive_now())
        self.metrics.runner_host = self.runner_host if self.limits_mode != SINGLE else None
        self._secrets = secret_store_for_state(self.state_path)
        self.usage = usage_recorder_for(self.state_path)
        self.usage.start()
        self.tables = TableRecorder(
            tables_root(self.state_path, self.tables_root),
            self.metrics,
            workspace_id=self._store.lineage,
        )
        self.tables.start()
        self.limiter = open_limits(
            self.limits_url,
            lineage=self._store.lineage,
            metrics=self.metrics,
            fallback=self.limits_fallback,
        )
        await self.limiter.start()
        self.dataplane = DataPlane(
            self.limiter,
            self.metrics,
            self.usage,
            waker=self.wake,
            meter=self.meter,
            safety_endpoint=self.safety_endpoint,
            tables=self.tables,
        )
        self.queries = QueryRoutes(self.dataplane, lambda: self.table, self.authenticate)
        self.runners = make_runner_executor(self.state_path, self.ray, lineage=self._store.lineage)
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
        if self.runner_host:
            self._restart = asyncio.create_task(asyncio.to_thread(self._restart_runners))
        await self.refresh(force=True)
        self._changed = asyncio.Event()
        if self.state_path.is_postgres:
            loop = asyncio.get_running_loop()
            self._listener_thread = StateListener(
                self.state_path.url, lambda: loop.call_soon_threadsafe(self._changed.set)
            )
            self._listener_thread.start()
        self._tasks = [
            asyncio.create_task(self._poll(), name="state-poll"),
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._reconcile(), name="reconcile"),
            asyncio.create_task(self._report(), name="report"),
        ]

    async def shutdown(self) -> None:
        if self._listener_thread is not None:
            await asyncio.to_thread(self._listener_thread.stop)
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
            if self.runner_host:  # another replica's runners are not this one's to stop
                await asyncio.to_thread(stop_runners, self._store, self.runners)
            # Runners of applies still starting (pending entities) stop with the host too.
            await asyncio.to_thread(self.runners.stop_all)
        if self.usage is not None:
            self.usage.close()
        if self.tables is not None:
            await asyncio.to_thread(self.tables.close)  # writes every record still pending
        await self.limiter.close()
        await self.peers.close()
        if self._listener is not None:
            await self._listener.close()
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
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                refreshed = self.table.serial >= serial
                here = not self._builder.routed(key) and not self._builder.in_flight(key)
                # ...and on every other replica of the state, as their reports say.
                if refreshed and here and self.peers.caught_up(target, serial, key, row.id):
                    return
                time.sleep(0.05)
        finally:
            target.close()
        log.warning("entity instance %s still busy after %.0f s; stopping it", row.id, timeout)

    def executors(self) -> ExecutorRegistry:
        """The executors of applies done by this host: its runners start self-hosted entities."""
        registry = build_executors()
        if self.runners is not None and self.runner_host:
            registry.register("self_hosted", self.runners, replace=True)
        elif self.runners is not None:
            # Only the runner host starts runners: a change that needs one is forwarded to it
            # (peers.py); this refuses, rather than starts one here, any path that was not.
            registry.register(
                "self_hosted",
                StopOnlyRunnerExecutor(self.state_path.local_dir / "runners"),
                replace=True,
            )
        return registry

    _executors = executors

    def _restart_runners(self) -> None:
        """One reconcile pass; an endpoint whose update holds its lock is left to that update."""
        store = open_state(self.state_path)
        try:
            if self.runners is not None and self.runners.backend == "ray":
                self._sweep_actors(store)
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
            if not self.runner_host:
                continue  # another replica runs the runners
            if self._restart is not None and not self._restart.done():
                continue
            if self.scaler is not None:
                await self.scaler.park_idle(self.table)
            if self.autoscaler is not None:
                self.meter.elsewhere = await asyncio.to_thread(self.peers.rates, self.store)
                self.autoscaler.step(self.table)
            if self.runners is not None and self.runners.backend == "ray":
                # A lost head is reported as such (entity messages say it too).
                up = await asyncio.to_thread(self.runners.head_up)
                if not up and self.metrics.ray_head_up is not False:
                    log.error("the Ray cluster's head does not answer; Ray runners are unmanaged")
                self.metrics.ray_head_up = up
            # Kept so that shutdown waits for a pass in progress before stopping runners.
            self._reconciling = asyncio.ensure_future(asyncio.to_thread(self._restart_runners))
            try:
                await self._reconciling
            except Exception:  # noqa: BLE001 - keep reconciling
                log.exception("reconcile pass failed")

    def _sweep_actors(self, store: StateStore) -> None:
        """Ray actors of instances gone from the state are stopped (see RayRunnerExecutor)."""
        assert isinstance(self.runners, RayRunnerExecutor)
        try:
            stopped = self.runners.sweep({e.id for e in store.entities()})
        except ExecutorError:
            return  # the head is away: reported by head_up
        for name in stopped:
            log.warning("stopped Ray actor %s: its entity is no longer in the state", name)

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
        target = open_state(self.state_path)
        try:
            while time.monotonic() < deadline:
                here = self.table.serial >= serial and not self._builder.draining(instance_id)
                if here and self.peers.caught_up(target, serial, None, instance_id):
                    return
                time.sleep(0.05)
        finally:
            target.close()

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
            if self.runner_host:
                await self.scaler.wake(entity.instance_id)
            else:
                await self.peers.wake(self.store, entity.instance_id)
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
            if self.tables is not None:
                self.tables.observe(view, self._store.history, now_ms())

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
        """Refresh when the state says it changed (PostgreSQL), else every poll interval; with
        notifications arriving, polling is only the fallback (a notification lost while the
        listener reconnects), at a slower pace."""
        while True:
            listening = self._listener_thread is not None and self._listener_thread.listening
            wait = max(self.poll_interval, 1.0) if listening else self.poll_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)
            self._changed.clear()
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - keep serving the last good table
                log.exception("cannot refresh the routing table")

    async def _heartbeat(self) -> None:
        assert self._store is not None
        while True:
            try:
                await asyncio.to_thread(self._beat)
            except Exception:  # noqa: BLE001
                log.exception("cannot record the heartbeat")
            await asyncio.sleep(self.heartbeat_interval)

    def _beat(self) -> None:
        """Heartbeat and report; take the runner role if its holder died (or notice it moved)."""
        self._send_report(force=True)
        holds = self.store.claim_runner_role(self.host_id, alive=alive_now())
        if holds and not self.runner_host:
            log.warning("this replica now runs the runners of the state (the last one is gone)")
            self.runner_host = True
        elif self.runner_host and not holds:
            # Its heartbeats stalled so long that another replica took over: the runners are
            # that one's now, and this one's processes must not linger beside them.
            log.error("another replica took over the runners; stopping the ones started here")
            self.runner_host = False
            if self.runners is not None:
                self.runners.stop_all()
        if self.metrics.runner_host is not None:
            self.metrics.runner_host = self.runner_host

    def _report_now(self) -> tuple[int, tuple[tuple[int, str], ...]]:
        assert self._builder is not None
        return self.table.serial, tuple(self._builder.busy_retired())

    def _send_report(self, *, force: bool = False) -> None:
        """Record what this replica's table has reached (drains on the runner host wait for
        it); untracked, and only when it changed unless `force` (the heartbeat)."""
        current = self._report_now()
        if not force and current == self._reported:
            return
        serial, busy = current
        self.store.heartbeat(
            self.host_id,
            pid=os.getpid(),
            hostname=socket.gethostname(),
            address=self.address,
            report={
                "serial": serial,
                "busy": [list(key) for key in busy],
                "rates": {str(k): v for k, v in self.meter.local_rates().items()},
            },
        )
        self._reported = current

    async def _report(self) -> None:
        """Report at once when the table moves on or a retired entity's last request ends."""
        while True:
            await asyncio.sleep(0.05)
            if self._report_now() != self._reported:
                try:
                    await asyncio.to_thread(self._send_report)
                except Exception:  # noqa: BLE001 - the heartbeat reports again
                    log.exception("cannot record this replica's report")

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
        if path == WAKE_PATH and method == "POST":
            await self._peer_wake(scope, receive, send)
            return
        if not self.runner_host and needs_runner_host(method, path):
            await self.peers.forward(self.store, scope, receive, send)
            await self.catch_up()  # read-your-writes on this replica too
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

    async def _peer_wake(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Another replica asks this one (the runner host) to start a scaled-to-zero runner."""
        if not await asyncio.to_thread(self.peers.is_peer, self.store, header(scope, PEER_HEADER)):
            raise ApiError(403, "PERMISSION_DENIED", "only a replica of this state may call this")
        body = await read_json(receive)
        instance_id = body.get("instance_id") if isinstance(body, dict) else None
        if not isinstance(instance_id, int) or isinstance(instance_id, bool):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "instance_id: an integer is required")
        if not self.runner_host or self.scaler is None:
            raise ApiError(503, "TEMPORARILY_UNAVAILABLE", "this replica no longer runs runners")
        try:
            await self.scaler.wake(instance_id)
        except TimeoutError:
            raise ApiError(
                503, "TEMPORARILY_UNAVAILABLE", "the runner is starting from zero; retry shortly"
            ) from None
        except ColdStartError as exc:
            raise ApiError(503, "TEMPORARILY_UNAVAILABLE", exc.message) from None
        await send_json(send, 200, {})

    def _runner_logs(self, instance: EntityRow) -> list[str]:
        """The runner's own log: a local file, or read through its Ray actor."""
        runners = self.runners or make_runner_executor(self.state_path)
        deployment = Deployment(instance.endpoint, instance.name, instance.id, instance.config)
        try:
            return runners.logs(deployment, instance.handle)
        except ExecutorError as exc:
            return [f"(the runner's log cannot be read: {exc.message})"]

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
            if not model and instance.handle:
                lines += self._runner_logs(instance)
        for item in self._store.history(row.name)[-50:]:
            lines.append(
                f"{item.at_ms} {item.actor} {item.action} config_version={item.config_version}"
            )
        return "\n".join(lines) + "\n"
