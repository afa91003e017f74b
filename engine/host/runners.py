"""The serving host's runner executor: self-hosted entities on vLLM processes it owns.

Only the host (`engine serve`) registers it: runner processes must never outlive or escape their
host, so a CLI apply that would start one is refused with a hint instead (see providers'
registry). On start the host restarts the runners of its active entities (RECOVERING -> READY);
on shutdown it stops them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from engine.catalog.models import ModelCatalog
from engine.host.inventory import cpu_fallback_allowed, gpu_count
from engine.state import (
    RECONCILE_OP,
    EntityRow,
    LockHeld,
    StateLocation,
    StateStore,
    open_state,
)
from providers import Deployment, ExecutorError
from providers.runner import ModelInfo, RunnerExecutor
from providers.runner.ray_executor import RayRunnerExecutor, RaySettings
from schemas import DeploymentState, EntityRole

__all__ = [
    "RUNNER_CACHE_ENV",
    "Backoff",
    "make_runner_executor",
    "restart_runners",
    "stop_runners",
]

log = logging.getLogger("engine.runners")
# A folder for the caches the local runners share (vLLM's model inspection; on GPU, compiled
# graphs), e.g. on a persistent volume; by default `<state dir>/runners/.cache`.
RUNNER_CACHE_ENV = "ENGINE_RUNNER_CACHE"


def make_runner_executor(
    state_path: StateLocation, ray: RaySettings | None = None, *, lineage: str = ""
) -> RunnerExecutor:
    """The host's runner executor: local vLLM processes, or Ray actors when `ray` is given
    (in a namespace of this state's own, so that two states share a cluster safely)."""

    def resolve(entity: dict[str, Any]) -> ModelInfo:
        store = open_state(state_path)
        try:
            entry = ModelCatalog(store).get(entity["entity_name"], entity["entity_version"])
        finally:
            store.close()
        if entry is None:
            raise KeyError(
                f"model {entity['entity_name']} version {entity['entity_version']} is not in "
                "the model catalog"
            )
        return ModelInfo(
            entry.path,
            entry.task,
            entry.model_type,
            entry.context_length,
            entry.throughput_chunk_size,
        )

    if ray is not None:
        if lineage:
            ray = dataclasses.replace(ray, namespace=f"{ray.namespace}-{lineage[:12]}")
        return RayRunnerExecutor(ray, resolve, cpu_fallback=cpu_fallback_allowed())
    shared_cache = os.environ.get(RUNNER_CACHE_ENV)
    return RunnerExecutor(
        state_path.local_dir / "runners",
        resolve,
        cpu_fallback=cpu_fallback_allowed(),
        gpus=gpu_count(),
        cache_dir=Path(shared_cache) if shared_cache else None,
    )


def _self_hosted(store: StateStore, endpoint: str | None = None) -> list[Any]:
    """Active self-hosted entities that should have a running runner (a scaled-to-zero one
    waits for a request instead, also across host restarts)."""
    return [
        e
        for e in store.entities(endpoint, role=EntityRole.ACTIVE)
        if "external_model" not in e.config and not (e.handle or {}).get("scaled_to_zero")
    ]


def stop_runners(store: StateStore, executor: RunnerExecutor) -> None:
    """The host is stopping: its runners stop with it, and the state says so (runners placed
    on a cluster keep serving: the next host adopts them)."""
    if executor.outlives_host:
        return
    for entity in _self_hosted(store):
        deployment = Deployment(entity.endpoint, entity.name, entity.id, entity.config)
        try:
            executor.stop(deployment, entity.handle)
        except ExecutorError as exc:
            log.error("cannot stop %s: %s", deployment.label, exc.message)
            continue
        store.update_entity(
            entity.id,
            deployment=DeploymentState.RECOVERING,
            message="the serving host stopped; it restarts with the host",
        )


class Backoff:
    """Per entity instance: when the next restart may be tried (5 s, doubling, at most 120 s)."""

    def __init__(self, first: float = 5.0, most: float = 120.0) -> None:
        self.first, self.most = first, most
        self._next: dict[int, tuple[float, float]] = {}

    def due(self, entity_id: int) -> bool:
        return time.monotonic() >= self._next.get(entity_id, (0.0, 0.0))[0]

    def failed(self, entity_id: int) -> None:
        delay = min(self.most, self._next.get(entity_id, (0.0, self.first / 2))[1] * 2)
        self._next[entity_id] = (time.monotonic() + delay, delay)

    def succeeded(self, entity_id: int) -> None:
        self._next.pop(entity_id, None)


def _serving(executor: RunnerExecutor, deployment: Deployment, entity: Any, store: Any) -> bool:
    if executor.status(deployment, entity.handle).deployment == DeploymentState.READY:
        return True
    # A replica removed since the row was read is stopped on purpose: ask again with the
    # handle as it is now.
    fresh = next((e for e in store.entities(role=EntityRole.ACTIVE) if e.id == entity.id), None)
    if fresh is None or fresh.handle == entity.handle:
        return False
    return executor.status(deployment, fresh.handle).deployment == DeploymentState.READY


def restart_runners(
    store: StateStore,
    executor: RunnerExecutor,
    resolver_for: Any,
    backoff: Backoff | None = None,
    busy: Any = lambda entity_id: False,
    *,
    holder: str = "reconcile",
) -> None:
    """Start every active self-hosted entity whose runner is not running (RECOVERING -> READY).

    Level-triggered: each pass re-reads the state and asks each runner; a runner that keeps
    failing is retried with backoff. Each endpoint is looked at holding its lock (taken without
    waiting): one whose update holds it is that update's to bring up, and is looked at again on
    the next pass.
    """
    backoff = backoff or Backoff()
    executor.reap()
    for endpoint in sorted({e.endpoint for e in _self_hosted(store)}):
        try:
            lock = store.acquire_lock(RECONCILE_OP, holder=holder, keys=(endpoint,))
        except LockHeld:
            continue
        try:
            # Read again under the lock: an update that just finished may have replaced them.
            current = _self_hosted(store, endpoint)
            _reconcile_endpoint(store, executor, resolver_for, backoff, busy, current)
        finally:
            store.release_lock(lock.id)


def _reconcile_endpoint(
    store: StateStore,
    executor: RunnerExecutor,
    resolver_for: Any,
    backoff: Backoff,
    busy: Any,
    entities: list[EntityRow],
) -> None:
    for entity in entities:
        if busy(entity.id):
            continue  # a replica is being added or removed: its handle is about to change
        deployment = Deployment(entity.endpoint, entity.name, entity.id, entity.config)
        if _serving(executor, deployment, entity, store):
            if entity.deployment != DeploymentState.READY:
                store.update_entity(entity.id, deployment=DeploymentState.READY, message="")
            backoff.succeeded(entity.id)
            continue
        if not backoff.due(entity.id):
            continue
        log.warning("%s: runner is not serving; restarting it", deployment.label)
        store.update_entity(entity.id, deployment=DeploymentState.RECOVERING, message="restarting")
        try:
            executor.stop(deployment, entity.handle)
            executor.prepare(deployment, resolver_for(deployment.endpoint))
            handle = executor.start(deployment)
            store.update_entity(entity.id, handle=handle)
            executor.wait_ready(deployment, handle, 600)
        except ExecutorError as exc:
            store.update_entity(entity.id, deployment=DeploymentState.FAILED, message=exc.message)
            backoff.failed(entity.id)
            continue
        store.update_entity(entity.id, deployment=DeploymentState.READY, message="")
        backoff.succeeded(entity.id)
