"""The Ray runner executor: each replica of a self-hosted entity is a Ray actor
(ray_actor.VllmReplica) running the same vLLM OpenAI server a local runner runs, placed by Ray
on a node that has the replica's resources.

| what a replica asks Ray for | from                                                         |
| --------------------------- | ------------------------------------------------------------ |
| GPU                         | the entity's workload_type (gpus_needed; 0 for CPU types)    |
| CPU                         | the operator's `--ray-cpus` (default 1)                      |
| memory                      | the operator's `--ray-memory` (default 2 GiB)                |
| custom resources            | the operator's `--ray-resources` JSON, then the entity's own |
|                             | `environment_vars.ENGINE_RAY_RESOURCES` JSON (wins per key)  |

The entity's knob rides in `environment_vars` so that a spec stays in the platform's shape (any
client can send it); it is removed from the server's environment. A replica asking for more than
one GPU gets a placement group of one STRICT_PACK bundle (tensor parallel on one node, vLLM's
own multiprocessing executor).

Actors are detached and named `runner:<endpoint>:<entity>:<instance id>:r<replica>` in the
state's namespace: they survive the serving host (a new host adopts them by name; the state
records actor, node and address), and `stop(deployment, None)` finds them even when the apply
that started them died before recording the handle. Ray is imported on first use: without the
`ray` extra this module imports, and the executor says how to install it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas import DeploymentState

from .._executor import Deployment, EntityStatus, ExecutorError, SecretResolver
from .executor import ModelInfo, RunnerExecutor, _handle, gpus_needed, replicas_of
from .ray_actor import VllmReplica
from .vllm_process import VllmServerSpec

__all__ = [
    "SPEC_RESOURCES_ENV",
    "RayRunnerExecutor",
    "RaySettings",
    "cluster_nodes",
    "replica_resources",
    "spec_resources",
]

SPEC_RESOURCES_ENV = "ENGINE_RAY_RESOURCES"
_GIB = 2**30
# How long Ray may take to find a node for a replica before its start fails (temporary).
_PLACEMENT_TIMEOUT = 120.0
_CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class RaySettings:
    """Where the cluster is and what every replica asks for besides its GPUs."""

    address: str = "auto"
    namespace: str = "serving-engine"
    cpus: float = 1.0
    memory_bytes: int = 2 * _GIB
    resources: Mapping[str, float] = field(default_factory=dict)


def spec_resources(config: Mapping[str, Any]) -> dict[str, float]:
    """The entity's custom resources (`environment_vars.ENGINE_RAY_RESOURCES`, a JSON object of
    name -> amount). Raises ValueError naming the field when it is not one."""
    raw = (config.get("environment_vars") or {}).get(SPEC_RESOURCES_ENV)
    if raw is None:
        return {}
    where = f"environment_vars.{SPEC_RESOURCES_ENV}"
    try:
        value = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        raise ValueError(
            f'{where}: not JSON (expected an object such as {{"gpu_a100": 1}})'
        ) from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        for k, v in value.items()
    ):
        raise ValueError(f"{where}: expected a JSON object of resource name -> positive amount")
    reserved = sorted(set(value) & {"CPU", "GPU", "memory"})
    if reserved:
        raise ValueError(
            f"{where}: {', '.join(reserved)} come from workload_type and the operator's "
            "--ray-cpus/--ray-memory, not from custom resources"
        )
    return {k: float(v) for k, v in value.items()}


def replica_resources(config: Mapping[str, Any], settings: RaySettings) -> dict[str, float]:
    """What one replica of an entity asks Ray for (Ray's names: CPU, GPU, memory, custom)."""
    wanted = {"CPU": float(settings.cpus), "memory": float(settings.memory_bytes)}
    gpus = gpus_needed(config.get("workload_type"))
    if gpus:
        wanted["GPU"] = float(gpus)
    return {**wanted, **dict(settings.resources), **spec_resources(config)}


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ExecutorError(
            "the Ray runner backend needs Ray: pip install 'serving-engine[ray]'"
        ) from None
    return ray


_init_lock = threading.Lock()
# A driver whose head stays away longer than Ray's reconnect timeout (60 s) exits: the serving
# host, with its local runners and the gateway, must not. Ray calls are guarded by head_up().
_RECONNECT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
_RECONNECT_FOREVER = str(10 * 365 * 86400)


def gcs_address(ray: Any) -> str | None:
    """HOST:PORT of the head's GCS this process is connected to (None when not connected)."""
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # noqa: BLE001
        return None


def head_answers(address: str | None, timeout: float = 2.0) -> bool:
    """A TCP connect to the head's GCS port: Ray's own calls block while it is away."""
    if not address or ":" not in address:
        return False
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def connect(settings: RaySettings) -> Any:
    """ray, connected to the cluster as a driver in the state's namespace (once per process).
    Raises ExecutorError (temporary) when the head is unreachable."""
    ray = _ray()
    with _init_lock:
        if ray.is_initialized():
            address = gcs_address(ray)
            if not head_answers(address):
                raise ExecutorError(
                    f"the Ray head at {address} does not answer (lost?); Ray runners are "
                    "neither checked nor restarted until it is back",
                    permanent=False,
                )
        else:
            address = settings.address.removeprefix("ray://")
            if address != "auto" and not head_answers(address):
                # ray.init would wait for it (Ray's reconnect timeout is lifted below).
                raise ExecutorError(
                    f"cannot reach the Ray cluster at {settings.address}: nothing answers there",
                    permanent=False,
                )
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            os.environ.setdefault(_RECONNECT_ENV, _RECONNECT_FOREVER)
            try:
                ray.init(
                    address=settings.address,
                    namespace=settings.namespace,
                    logging_level="warning",
                    log_to_driver=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ExecutorError(
                    f"cannot reach the Ray cluster at {settings.address}: {exc}", permanent=False
                ) from None
    return ray


def cluster_nodes(settings: RaySettings) -> list[dict[str, Any]]:
    """The cluster's live nodes: {"node_id", "address", "total", "available"} (Ray's names)."""
    ray = connect(settings)
    available = _available_by_node(ray)
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        total = {k: float(v) for k, v in node["Resources"].items() if not k.startswith("node:")}
        nodes.append(
            {
                "node_id": node["NodeID"],
                "address": node.get("NodeManagerAddress", ""),
                "total": total,
                "available": available.get(node["NodeID"], total),
            }
        )
    return nodes


def _available_by_node(ray: Any) -> dict[str, dict[str, float]]:
    # Per-node free resources; Ray exposes them only in its private state API.
    try:
        from ray._private.state import state

        per_node = state._available_resources_per_node()
    except Exception:  # noqa: BLE001 - an older or newer Ray: fall back to totals
        return {}
    return {
        node: {k: float(v) for k, v in res.items() if not k.startswith("node:")}
        for node, res in per_node.items()
    }


def actor_name(deployment: Deployment, replica: int) -> str:
    return f"runner:{deployment.endpoint}:{deployment.entity}:{deployment.instance_id}:r{replica}"


class RayRunnerExecutor(RunnerExecutor):
    """Self-hosted entities as Ray actors; same interface and lifecycle as RunnerExecutor."""

    backend = "ray"
    # Detached actors keep serving while the host restarts; the next host adopts them.
    outlives_host = True

    def __init__(
        self,
        settings: RaySettings,
        resolve_model: Callable[[dict[str, Any]], ModelInfo],
        *,
        cpu_fallback: bool,
        kv_cache_bytes: int | None = None,
    ) -> None:
        super().__init__(
            Path("/nonexistent-ray-runners"),
            resolve_model,
            cpu_fallback=cpu_fallback,
            gpus=0,
            kv_cache_bytes=kv_cache_bytes,
        )
        self.settings = settings
        self._resources: dict[int, dict[str, float]] = {}

    # -- Executor -------------------------------------------------------------------------------

    def prepare(self, deployment: Deployment, resolve: SecretResolver) -> None:
        try:
            wanted = replica_resources(deployment.config, self.settings)
        except ValueError as exc:
            raise ExecutorError(f"{deployment.label}: {exc}") from None
        # Whether vLLM runs on GPUs is the placed node's matter: the plan checked the cluster.
        self.gpus = int(max((n["total"].get("GPU", 0) for n in self._nodes()), default=0))
        super().prepare(deployment, resolve)
        with self._lock:
            spec, bounds = self._specs[deployment.instance_id]
            env = {k: v for k, v in spec.env.items() if k != SPEC_RESOURCES_ENV}
            spec = _replace(spec, env=env)
            self._prepared[deployment.instance_id] = spec
            self._specs[deployment.instance_id] = (spec, bounds)
            self._resources[deployment.instance_id] = wanted

    def _nodes(self) -> list[dict[str, Any]]:
        try:
            return cluster_nodes(self.settings)
        except ExecutorError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray's errors are many; the message says which
            raise ExecutorError(f"cannot read the Ray cluster: {exc}", permanent=False) from None

    def start(self, deployment: Deployment) -> dict[str, Any]:
        with self._lock:
            spec = self._prepared.pop(deployment.instance_id, None)
            kept = self._specs.get(deployment.instance_id)
        if spec is None or kept is None:
            raise ExecutorError(f"{deployment.label}: start without prepare")
        # Actors left by an earlier start of this instance (a crashed apply re-running).
        self._kill_instance(deployment, None)
        return _handle([self._launch(deployment, spec, k) for k in range(kept[1][0])])

    def _launch(self, deployment: Deployment, spec: VllmServerSpec, replica: int) -> dict[str, Any]:
        ray = connect(self.settings)
        name = actor_name(deployment, replica)
        self._kill_name(name)
        with self._lock:
            wanted = dict(self._resources.get(deployment.instance_id) or {})
        if spec.cpu and "VLLM_CPU_OMP_THREADS_BIND" not in spec.env:
            # As for local runners (executor.py): several servers on one machine must not pin
            # the same core.
            spec = _replace(spec, env={**spec.env, "VLLM_CPU_OMP_THREADS_BIND": "nobind"})
        options: dict[str, Any] = {
            "name": name,
            "namespace": self.settings.namespace,
            "lifetime": "detached",
            "max_restarts": 0,  # the host's reconciler restarts, with backoff and state
            "max_concurrency": 4,  # status and logs answer while wait_ready blocks
            "num_cpus": wanted.pop("CPU", 0.0),
            "num_gpus": wanted.pop("GPU", 0.0),
            "memory": wanted.pop("memory", 0.0),
            "resources": wanted,
        }
        if options["num_gpus"] > 1:
            options["scheduling_strategy"] = self._placement_group(ray, name, options)
        actor = ray.remote(VllmReplica).options(**options).remote(name, spec)
        try:
            started = ray.get(actor.start.remote(), timeout=_PLACEMENT_TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            self._kill_name(name)
            pending = type(exc).__name__ == "GetTimeoutError"
            why = (
                f"Ray found no node with the free resources it asks for ({_describe(options)}) "
                f"within {_PLACEMENT_TIMEOUT:.0f} s"
                if pending
                else f"its Ray actor failed to start: {exc}"
            )
            raise ExecutorError(f"{deployment.label}: {why}", permanent=False) from None
        return {**started, "backend": "ray", "actor": name, "namespace": self.settings.namespace}

    def _placement_group(self, ray: Any, name: str, options: dict[str, Any]) -> Any:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], **options["resources"]}
        if options["memory"]:
            bundle["memory"] = options["memory"]
        group = ray.util.placement_group([bundle], strategy="STRICT_PACK", name=f"pg:{name}")
        return PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)

    def wait_ready(self, deployment: Deployment, handle: dict[str, Any], timeout: float) -> None:
        ray = connect(self.settings)
        deadline = time.monotonic() + timeout
        for replica in replicas_of(handle):
            actor = self._actor(replica.get("actor"))
            if actor is None:
                raise ExecutorError(
                    f"{deployment.label}: its Ray actor {replica.get('actor')} is gone",
                    permanent=False,
                )
            left = max(1.0, deadline - time.monotonic())
            try:
                answer = ray.get(actor.wait_ready.remote(left), timeout=left + _CALL_TIMEOUT)
            except Exception as exc:  # noqa: BLE001
                raise ExecutorError(
                    f"{deployment.label}: its Ray actor stopped answering: {exc}", permanent=False
                ) from None
            if not answer["ok"]:
                raise ExecutorError(
                    f"{deployment.label}: {answer['message']}", permanent=answer["permanent"]
                )

    def stop(self, deployment: Deployment, handle: dict[str, Any] | None) -> None:
        with self._lock:
            self._prepared.pop(deployment.instance_id, None)
            self._specs.pop(deployment.instance_id, None)
            self._resources.pop(deployment.instance_id, None)
        self._kill_instance(deployment, handle)

    def status(self, deployment: Deployment, handle: dict[str, Any] | None) -> EntityStatus:
        replicas = replicas_of(handle)
        if not replicas or not all(r.get("actor") for r in replicas):
            return EntityStatus(DeploymentState.FAILED, "no Ray actor is recorded for this entity")
        try:
            ray = connect(self.settings)
        except ExecutorError as exc:
            return EntityStatus(DeploymentState.FAILED, f"the Ray head is unreachable: {exc}")
        for replica in replicas:
            where = f"Ray actor {replica['actor']} on node {replica.get('node_ip', '?')}"
            actor = self._actor(replica["actor"])
            if actor is None:
                return EntityStatus(
                    DeploymentState.FAILED,
                    f"the {where} is gone (its node may have left the cluster)",
                )
            try:
                answer = ray.get(actor.status.remote(), timeout=_CALL_TIMEOUT)
            except Exception as exc:  # noqa: BLE001
                return EntityStatus(
                    DeploymentState.FAILED, f"the {where} does not answer: {type(exc).__name__}"
                )
            if answer["healthy"]:
                continue
            if not answer["alive"]:
                code = answer.get("exit_code")
                reason = "the vLLM server is not running" + (
                    f" (exit code {code})" if code is not None else ""
                )
            else:
                reason = "the vLLM server does not answer /health"
            return EntityStatus(
                DeploymentState.FAILED,
                f"{reason} ({where})\n--- last lines of the server log ---\n{answer['log_tail']}",
            )
        return EntityStatus(DeploymentState.READY)

    def logs(self, deployment: Deployment, handle: dict[str, Any] | None) -> list[str]:
        """The server log of each replica, read through its actor (the node may be another
        machine)."""
        ray = connect(self.settings)
        lines: list[str] = []
        for replica in replicas_of(handle):
            actor = self._actor(replica.get("actor"))
            if actor is None:
                lines.append(f"(Ray actor {replica.get('actor')} is gone)")
                continue
            try:
                lines += ray.get(actor.logs.remote(), timeout=_CALL_TIMEOUT).splitlines()
            except Exception as exc:  # noqa: BLE001
                lines.append(f"(Ray actor {replica.get('actor')} does not answer: {exc})")
        return lines

    def head_up(self) -> bool:
        try:
            connect(self.settings)
        except ExecutorError:
            return False
        return True

    def sweep(self, known: set[int]) -> list[str]:
        """Stop the actors of instances the state no longer has (an endpoint deleted by a
        command that could not reach Ray); returns their names. An instance's row exists
        before its actor starts, so a starting one is never taken for an orphan."""
        ray = connect(self.settings)
        orphans = []
        for entry in ray.util.list_named_actors(all_namespaces=True):
            name = str(entry.get("name", ""))
            if entry.get("namespace") != self.settings.namespace or not name.startswith("runner:"):
                continue
            instance = name.rsplit(":", 2)[-2]
            if instance.isdigit() and int(instance) not in known:
                self._kill_name(name)
                orphans.append(name)
        return orphans

    def stop_all(self) -> None:
        """Nothing: the actors are the cluster's and outlive this host (a new host adopts
        them; an apply that re-runs stops what an unfinished one started)."""

    def reap(self) -> None:
        """Nothing to reap: no runner is a child of this process."""

    # -- replicas -------------------------------------------------------------------------------

    def add_replica(
        self, deployment: Deployment, handle: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        with self._lock:
            kept = self._specs.get(deployment.instance_id)
        if kept is None:
            raise ExecutorError(f"{deployment.label}: add a replica without prepare")
        replicas = replicas_of(handle)
        started = self._launch(deployment, kept[0], len(replicas))
        try:
            self.wait_ready(deployment, _handle([started]), timeout)
        except ExecutorError:
            self._kill_name(started["actor"])
            raise
        return _handle([*replicas, started])

    def stop_replica(self, deployment: Deployment, replica: dict[str, Any]) -> None:
        name = replica.get("actor")
        # Only an actor of this instance: a handle never makes us kill another one.
        if isinstance(name, str) and name.startswith(actor_name(deployment, 0)[:-1]):
            self._kill_name(name)

    # -- actors ---------------------------------------------------------------------------------

    def _actor(self, name: Any) -> Any:
        if not isinstance(name, str):
            return None
        ray = connect(self.settings)
        try:
            return ray.get_actor(name, namespace=self.settings.namespace)
        except ValueError:
            return None

    def _kill_instance(self, deployment: Deployment, handle: dict[str, Any] | None) -> None:
        ray = connect(self.settings)
        prefix = actor_name(deployment, 0)[:-1]
        names = {r.get("actor") for r in replicas_of(handle) if r.get("actor")}
        with contextlib.suppress(Exception):
            for entry in ray.util.list_named_actors(all_namespaces=True):
                if entry.get("namespace") == self.settings.namespace and str(
                    entry.get("name", "")
                ).startswith(prefix):
                    names.add(entry["name"])
        for name in sorted(n for n in names if isinstance(n, str)):
            self._kill_name(name)

    def _kill_name(self, name: str) -> None:
        """Stop the actor's server (its whole process group), then the actor, then its
        placement group, if any. Idempotent."""
        ray = connect(self.settings)
        actor = self._actor(name)
        if actor is not None:
            with contextlib.suppress(Exception):
                ray.get(actor.stop.remote(), timeout=_CALL_TIMEOUT)
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        with contextlib.suppress(Exception):
            ray.util.remove_placement_group(ray.util.get_placement_group(f"pg:{name}"))


def _replace(spec: VllmServerSpec, **changes: Any) -> VllmServerSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)


def _describe(options: dict[str, Any]) -> str:
    parts = [f"CPU {options['num_cpus']:g}"]
    if options["num_gpus"]:
        parts.append(f"GPU {options['num_gpus']:g}")
    if options["memory"]:
        parts.append(f"memory {options['memory'] / _GIB:.1f} GiB")
    parts += [f"{k} {v:g}" for k, v in sorted(options["resources"].items())]
    return ", ".join(parts)
