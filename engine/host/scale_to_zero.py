"""Scale to zero: a runner with `scale_to_zero_enabled` stops after an idle time; the next
request starts it again and waits for it (bounded; then 503 with Retry-After).

A scaled-to-zero entity stays active and READY in the state, with `scaled_to_zero` in its
handle: the routing table sends its requests here instead of to an upstream, the reconciler
leaves it alone, and a host restart does not start it.

Parking takes the state lock (without waiting) so it never races an apply or a reconcile pass
over the same runner. A cold start does not: a request must not wait for an apply that is
starting some other runner; it re-checks that the entity is still active once its runner is
ready, and stops the runner if an apply retired the entity meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from engine.gateway._table import RoutingTable
from engine.state import SCALE_TO_ZERO_OP, EntityRow, LockHeld, StateStore, open_state
from providers import Deployment, ExecutorError
from providers.runner import RunnerExecutor
from schemas import DeploymentState, EntityRole

__all__ = ["ColdStartError", "ScaleToZero", "active_entity"]

log = logging.getLogger("engine.gateway")
READY_TIMEOUT = 600.0


class ColdStartError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _scaled(row: EntityRow) -> bool:
    return bool((row.handle or {}).get("scaled_to_zero"))


class ScaleToZero:
    def __init__(
        self,
        state_path: Path,
        runners: RunnerExecutor,
        resolver_for: Callable[[str], Callable[[str], str]],
        *,
        idle_after: float,
        cold_start_wait: float,
        holder: str,
    ) -> None:
        self.state_path = state_path
        self.runners = runners
        # endpoint name -> the resolver of its secrets (as its creator)
        self.resolver_for = resolver_for
        self.idle_after = idle_after
        self.cold_start_wait = cold_start_wait
        self.holder = holder
        # One transition (park or cold start) per entity instance at a time.
        self._locks: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)
        self._starts: dict[int, asyncio.Future[None]] = {}

    # -- idle -> stopped ------------------------------------------------------------------------

    async def park_idle(self, table: RoutingTable) -> None:
        """Stop the runners whose entities had no request for `idle_after` seconds."""
        now = time.monotonic()
        for route in table.endpoints.values():
            for entity in route.entities.values():
                upstream = entity.upstream
                if (
                    not entity.scale_to_zero
                    or upstream is None
                    or upstream.parked
                    or upstream.in_flight
                    or now - upstream.last_used < self.idle_after
                ):
                    continue
                # From here on, requests wait for a cold start instead of using this runner.
                upstream.parked = True
                try:
                    parked = await asyncio.to_thread(self._park, route.name, entity.instance_id)
                except Exception:  # noqa: BLE001 - the runner keeps serving
                    log.exception("cannot scale %s/%s to zero", route.name, entity.name)
                    parked = False
                if not parked:
                    upstream.parked = False

    def _park(self, endpoint: str, instance_id: int) -> bool:
        store = open_state(self.state_path)
        try:
            try:
                lock = store.acquire_lock(
                    SCALE_TO_ZERO_OP, holder=self.holder, keys=(endpoint,), timeout=0
                )
            except LockHeld:
                return False  # an update or a reconcile pass runs: try again on the next pass
            try:
                with self._locks[instance_id]:
                    row = active_entity(store, instance_id)
                    if row is None or _scaled(row) or row.deployment != DeploymentState.READY:
                        return False
                    deployment = Deployment(row.endpoint, row.name, row.id, row.config)
                    self.runners.stop(deployment, row.handle)
                    store.update_entity(
                        row.id,
                        handle={**(row.handle or {}), "scaled_to_zero": True},
                        message=(
                            f"scaled to zero after {self.idle_after:g} s without requests; "
                            "the next request starts it"
                        ),
                    )
                    log.info("%s: scaled to zero", deployment.label)
                    return True
            finally:
                store.release_lock(lock.id)
        finally:
            store.close()

    # -- request -> started ---------------------------------------------------------------------

    async def wake(self, instance_id: int) -> None:
        """Start a scaled-to-zero runner (once, however many requests wait) and wait for it.

        Raises TimeoutError after `cold_start_wait` seconds (the start goes on), and
        ColdStartError when the runner cannot start.
        """
        start = self._starts.get(instance_id)
        if start is None:
            start = asyncio.ensure_future(asyncio.to_thread(self._cold_start, instance_id))
            self._starts[instance_id] = start
            start.add_done_callback(lambda done: self._forget(instance_id, done))
        await asyncio.wait_for(asyncio.shield(start), self.cold_start_wait)

    def _forget(self, instance_id: int, done: asyncio.Future[None]) -> None:
        if self._starts.get(instance_id) is done:
            del self._starts[instance_id]
        if not done.cancelled() and done.exception() is not None:
            log.warning("cold start of entity instance %s failed", instance_id)

    async def wait_starts(self) -> None:
        """For shutdown: cold starts in progress finish before the host stops its runners."""
        if self._starts:
            await asyncio.wait(set(self._starts.values()))

    def _cold_start(self, instance_id: int) -> None:
        with self._locks[instance_id]:
            store = open_state(self.state_path)
            try:
                row = active_entity(store, instance_id)
                if row is None:
                    raise ColdStartError("the served entity is no longer active")
                if not _scaled(row):
                    return  # started by an earlier request, or parking was called off
                self._start(store, row)
            finally:
                store.close()

    def _start(self, store: StateStore, row: EntityRow) -> None:
        deployment = Deployment(row.endpoint, row.name, row.id, row.config)
        log.info("%s: cold start", deployment.label)
        store.update_entity(row.id, message="starting from zero for a request")
        try:
            self.runners.prepare(deployment, self.resolver_for(deployment.endpoint))
            handle = self.runners.start(deployment)
            self.runners.wait_ready(deployment, handle, READY_TIMEOUT)
        except ExecutorError as exc:
            self.runners.stop(deployment, None)
            # Still scaled to zero: the next request tries again.
            store.update_entity(
                row.id,
                deployment=DeploymentState.FAILED,
                message=f"cold start failed: {exc.message}",
            )
            raise ColdStartError(
                f"served entity {row.name!r} cannot start: {exc.message}"
            ) from None
        if active_entity(store, row.id) is None:
            self.runners.stop(deployment, handle)  # an apply retired it meanwhile
            raise ColdStartError("the served entity is no longer active")
        store.update_entity(row.id, handle=handle, deployment=DeploymentState.READY, message="")
        log.info("%s: started from zero", deployment.label)


def active_entity(store: StateStore, instance_id: int) -> EntityRow | None:
    return next((e for e in store.entities(role=EntityRole.ACTIVE) if e.id == instance_id), None)
