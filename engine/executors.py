"""The executors applies use: the built-in ones, plugins, and the CLI's stop-only runner executor.

The CLI's runner executor stops self-hosted runners, and never starts one.

Runner processes belong to a serving host (`engine serve`, `engine up`): one started by a CLI
command would outlive it. Stopping, though, is always safe: a runner is found by the pid file in
its workdir under `<state dir>/runners/` (the same folders the host's executor uses), so
`engine destroy`, or an `engine apply` that removes a self-hosted entity, stops the process even
when a live host started it; the host then sees the endpoint gone and drops its route.

Apply refuses, before it changes anything, a plan that would start a self-hosted entity with
this executor (its `start_refusal`); hot changes, deletes and configs that reuse running
instances go through.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any, NoReturn

from engine.state import StateLocation, resolve_state
from providers import (
    Deployment,
    ExecutorRegistry,
    ExecutorUnavailable,
    ExternalModelExecutor,
    SecretResolver,
)
from providers.runner import ModelInfo, RunnerExecutor

__all__ = ["START_HINT", "StopOnlyRunnerExecutor", "build_executors", "cli_executors"]

PLUGINS_ENV = "ENGINE_EXECUTOR_PLUGINS"

START_HINT = (
    "self-hosted entities (entity_name/entity_version) run on a serving host, and this command "
    "cannot start one: run `engine up PATH...` (starts a host and applies the specs), or apply "
    "through a running host's REST API (`engine serve`)"
)


def build_executors() -> ExecutorRegistry:
    """The built-in executors, then plugins named in $ENGINE_EXECUTOR_PLUGINS (`module:func`)."""
    registry = ExecutorRegistry()
    registry.register("external", ExternalModelExecutor())
    for spec in filter(None, os.environ.get(PLUGINS_ENV, "").split(",")):
        module_name, _, func_name = spec.strip().partition(":")
        plugin = getattr(importlib.import_module(module_name), func_name or "register")
        plugin(registry)
    return registry


def _no_model(entity: dict[str, Any]) -> ModelInfo:
    raise KeyError("this process does not start runners")


class StopOnlyRunnerExecutor(RunnerExecutor):
    """A RunnerExecutor whose prepare/start refuse; stop works by pid file.

    (`engine refresh` keeps reporting self-hosted entities as unreadable: only the host knows
    which of its runners are scaled to zero on purpose.)
    """

    start_refusal = START_HINT

    def __init__(self, root: Path) -> None:
        super().__init__(root, _no_model, cpu_fallback=False, gpus=0)

    def prepare(self, deployment: Deployment, resolve: SecretResolver) -> NoReturn:
        raise ExecutorUnavailable(f"{deployment.label}: {START_HINT}")

    def start(self, deployment: Deployment) -> NoReturn:
        raise ExecutorUnavailable(f"{deployment.label}: {START_HINT}")


def _stop_only_ray(location: StateLocation) -> RunnerExecutor | None:
    """With $ENGINE_RUNNERS=ray: a Ray runner executor that stops this state's actors (in its
    namespace) and starts none. (Without it, the host's reconciler stops the actors of deleted
    entities on its next pass.)"""
    from engine.host.capacity import ray_settings_from_env
    from engine.state import open_state
    from providers.runner.ray_executor import RayRunnerExecutor

    settings = ray_settings_from_env()
    if settings is None:
        return None
    store = open_state(location)
    try:
        lineage = store.lineage
    finally:
        store.close()
    settings = dataclasses.replace(settings, namespace=f"{settings.namespace}-{lineage[:12]}")

    class StopOnlyRayRunnerExecutor(RayRunnerExecutor):
        start_refusal = START_HINT

        def prepare(self, deployment: Deployment, resolve: SecretResolver) -> NoReturn:
            raise ExecutorUnavailable(f"{deployment.label}: {START_HINT}")

        def start(self, deployment: Deployment) -> NoReturn:
            raise ExecutorUnavailable(f"{deployment.label}: {START_HINT}")

    return StopOnlyRayRunnerExecutor(settings, _no_model, cpu_fallback=False)


def cli_executors(state: Path | StateLocation) -> ExecutorRegistry:
    """The executors of a CLI command: the built-in ones and plugins, plus (unless a plugin
    provides one) a runner executor that can stop the runners of this state but not start any
    (Ray actors with $ENGINE_RUNNERS=ray, else local processes by pid file)."""
    registry = build_executors()
    if not registry.has("self_hosted"):
        location = resolve_state(state)
        ray = _stop_only_ray(location)
        registry.register(
            "self_hosted", ray or StopOnlyRunnerExecutor(location.local_dir / "runners")
        )
    return registry
