"""Provisioned throughput: runner replicas follow the load, between min and max.

An entity with `min/max_provisioned_throughput` and a calibrated chunk (the output tokens/s one
replica sustains here) runs between min/chunk (at least one) and max/chunk replicas. The host
measures each instance's output tokens/s over a short window; it adds a replica when the load
passes 80% of what the current replicas sustain (a saturated replica set delivers about its
capacity, so the target must sit below it), and removes one after the load stayed low for a
while (hysteresis: no flapping on a short lull).

A new replica joins the routing table once it answers; a removed one leaves the table first,
finishes its requests, then stops.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path

from engine.gateway._table import RoutingTable
from engine.host.scale_to_zero import READY_TIMEOUT, active_entity
from engine.state import open_state
from providers import Deployment, ExecutorError
from providers.runner import RunnerExecutor
from providers.runner.executor import replicas_of
from schemas import DeploymentState

__all__ = ["Autoscaler", "ThroughputMeter", "desired_replicas"]

log = logging.getLogger("engine.gateway")
TARGET_UTILIZATION = 0.8


def desired_replicas(rate: float, chunk: int, fewest: int, most: int) -> int:
    """Replicas for `rate` output tokens/s when one replica sustains `chunk`."""
    need = math.ceil(rate / (chunk * TARGET_UTILIZATION)) if rate > 0 else 0
    return max(fewest, min(most, need))


class ThroughputMeter:
    """Output tokens per entity instance over a sliding window."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._events: defaultdict[int, deque[tuple[float, int]]] = defaultdict(deque)
        # Tokens/s the other replicas of the state report (the runner host's autoscaler sums
        # the whole load, not only what passed through its own process).
        self.elsewhere: dict[int, float] = {}

    def record(self, instance_id: int, tokens: int) -> None:
        if tokens > 0:
            self._events[instance_id].append((time.monotonic(), tokens))

    def rate(self, instance_id: int) -> float:
        """Tokens/s of an instance: through this process, plus the other replicas' reports."""
        return self.local_rate(instance_id) + self.elsewhere.get(instance_id, 0.0)

    def local_rate(self, instance_id: int) -> float:
        events = self._events.get(instance_id)
        if not events:
            return 0.0
        horizon = time.monotonic() - self.window
        while events and events[0][0] < horizon:
            events.popleft()
        return sum(tokens for _, tokens in events) / self.window

    def local_rates(self) -> dict[int, float]:
        """Tokens/s of every instance through this process (for this replica's report)."""
        rates = {i: self.local_rate(i) for i in list(self._events)}
        return {i: round(r, 3) for i, r in rates.items() if r > 0}


class Autoscaler:
    def __init__(
        self,
        state_path: Path,
        runners: RunnerExecutor,
        resolver_for: Callable[[str], Callable[[str], str]],
        meter: ThroughputMeter,
        *,
        drain: Callable[[int, int], None],
        scale_down_after: float,
    ) -> None:
        self.state_path = state_path
        self.runners = runners
        # endpoint name -> the resolver of its secrets (as its creator)
        self.resolver_for = resolver_for
        self.meter = meter
        self.drain = drain  # (instance id, state serial): wait until a removed replica is idle
        self.scale_down_after = scale_down_after
        self._low_since: dict[int, float] = {}
        self._busy: dict[int, asyncio.Future[None]] = {}

    def step(self, table: RoutingTable) -> None:
        """One pass: start at most one replica change per instance, in the background."""
        now = time.monotonic()
        for route in table.endpoints.values():
            for entity in route.entities.values():
                if entity.provisioned is None or entity.upstream is None:
                    continue
                instance_id = entity.instance_id
                if instance_id in self._busy:
                    continue
                chunk, fewest, most = entity.provisioned
                want = desired_replicas(self.meter.rate(instance_id), chunk, fewest, most)
                if want > entity.replicas:
                    self._low_since.pop(instance_id, None)
                    self._spawn(instance_id, self._grow)
                elif want < entity.replicas:
                    since = self._low_since.setdefault(instance_id, now)
                    if now - since >= self.scale_down_after:
                        self._low_since.pop(instance_id, None)
                        self._spawn(instance_id, self._shrink)
                else:
                    self._low_since.pop(instance_id, None)

    def _spawn(self, instance_id: int, change: Callable[[int], None]) -> None:
        task = asyncio.ensure_future(asyncio.to_thread(change, instance_id))
        self._busy[instance_id] = task

        def done(finished: asyncio.Future[None]) -> None:
            self._busy.pop(instance_id, None)
            if not finished.cancelled() and finished.exception() is not None:
                log.error(
                    "replica change of instance %s failed: %s", instance_id, finished.exception()
                )

        task.add_done_callback(done)

    def busy(self, instance_id: int) -> bool:
        """A replica of this instance is being added or removed."""
        return instance_id in self._busy

    async def wait(self) -> None:
        """For shutdown: replica changes in progress finish before the runners stop."""
        if self._busy:
            await asyncio.wait(set(self._busy.values()))

    def _grow(self, instance_id: int) -> None:
        store = open_state(self.state_path)
        try:
            row = active_entity(store, instance_id)
            if row is None or row.deployment != DeploymentState.READY or not row.handle:
                return
            deployment = Deployment(row.endpoint, row.name, row.id, row.config)
            if self.runners.bounds(deployment) is None:
                self.runners.prepare(deployment, self.resolver_for(deployment.endpoint))
            count = len(replicas_of(row.handle))
            log.info("%s: load needs more replicas; starting replica %d", deployment.label, count)
            try:
                handle = self.runners.add_replica(deployment, row.handle, READY_TIMEOUT)
            except ExecutorError as exc:
                log.error("%s: cannot add a replica: %s", deployment.label, exc.message)
                return
            if active_entity(store, instance_id) is None:
                self.runners.stop_replica(deployment, replicas_of(handle)[-1])
                return
            store.update_entity(instance_id, handle=handle)
        finally:
            store.close()

    def _shrink(self, instance_id: int) -> None:
        store = open_state(self.state_path)
        try:
            row = active_entity(store, instance_id)
            replicas = replicas_of(row.handle) if row is not None else []
            if row is None or len(replicas) <= 1:
                return
            deployment = Deployment(row.endpoint, row.name, row.id, row.config)
            log.info("%s: load fell; stopping replica %d", deployment.label, len(replicas) - 1)
            # Out of the routing table first; stopped once its requests finished.
            store.update_entity(instance_id, handle=self.runners.without_last_replica(row.handle))
            self.drain(instance_id, store.serial)
            self.runners.stop_replica(deployment, replicas[-1])
        finally:
            store.close()
