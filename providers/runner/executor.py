"""The runner executor: self-hosted served entities (entity_name/entity_version) as real vLLM
OpenAI-compatible server processes on this machine.

One server per entity instance, in `root/<endpoint>/<entity>-<instance_id>/` (server.log,
server.pid, its own temp folder); the caches all of them share in `root/.cache/`, or the
`cache_dir` given (a restart or a wake from zero finds the model inspected, and on GPU its
graphs compiled). Because the folder is named after the instance id, `stop(deployment, None)`
finds and stops a server even when the apply that started it died before recording the
handle.

The handle is JSON: {"pid", "port", "base_url", "log_file", "workdir"}. Resolved secrets
(environment_vars) reach only the server's environment: never the handle, the pid file or an
error message.
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import DeploymentState, replace_secret_references

from .._executor import (
    Deployment,
    EntityStatus,
    Executor,
    ExecutorError,
    SecretResolver,
    SecretUnavailable,
)
from .vllm_process import (
    CACHE_DIR,
    PID_FILE,
    TASKS,
    RunningServer,
    ServerStartError,
    VllmServerSpec,
    launch,
    log_tail,
    stop_by_pidfile,
)

__all__ = ["ModelInfo", "RunnerExecutor", "gpus_needed", "replica_bounds", "replicas_of"]

# GPUs each GPU workload type stands for (tensor parallel size); CPU types need none.
_GPUS_BY_WORKLOAD = {
    "GPU_SMALL": 1,
    "GPU_MEDIUM": 1,
    "GPU_LARGE": 1,
    "GPU_XLARGE": 1,
    "MULTIGPU_MEDIUM": 4,
    "GPU_XLARGE_8": 8,
}


@dataclass(frozen=True)
class ModelInfo:
    """Where a registered model version lies and what it serves."""

    path: Path
    task: str  # llm/v1/chat | llm/v1/completions | llm/v1/embeddings
    model_type: str | None = None
    context_length: int | None = None  # served as --max-model-len when set
    # Output tokens/s one replica sustains on this host (`engine models calibrate`).
    throughput_chunk_size: int | None = None


def replica_bounds(config: dict[str, Any], chunk: int | None) -> tuple[int, int]:
    """(fewest, most) replicas of an entity: provisioned throughput / the chunk one replica
    sustains. Without provisioned throughput (or a calibrated chunk), one replica."""
    most_tokens = config.get("max_provisioned_throughput")
    if not chunk or not isinstance(most_tokens, int) or most_tokens <= 0:
        return 1, 1
    most = max(1, most_tokens // chunk)
    fewest = (config.get("min_provisioned_throughput") or 0) // chunk
    # Zero replicas is scale to zero's job; provisioned capacity keeps one serving.
    return min(max(1, fewest), most), most


def replicas_of(handle: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The replicas recorded in a handle (a handle from before replicas is one replica)."""
    if not handle:
        return []
    return list(handle.get("replicas") or ([handle] if handle.get("pid") else []))


def _handle(replicas: list[dict[str, Any]]) -> dict[str, Any]:
    # Replica 0's fields stay at the top: readers of single-server handles keep working.
    return {**replicas[0], "replicas": replicas} if replicas else {}


def gpus_needed(workload_type: str | None) -> int:
    """GPUs a workload type asks for: 0 for CPU types (and the default, CPU)."""
    if not workload_type:
        return 0
    if workload_type in _GPUS_BY_WORKLOAD:
        return _GPUS_BY_WORKLOAD[workload_type]
    return 1 if "GPU" in workload_type else 0


def _safe_name(text: str) -> str:
    # Entity and endpoint names are validated elsewhere; this only keeps paths inside root.
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", text).lstrip(".") or "_"


class RunnerExecutor(Executor):
    kind = "self_hosted"
    backend = "local"
    # Local runners never outlive their host; runners on a cluster (Ray) do.
    outlives_host = False

    def __init__(
        self,
        root: Path,
        resolve_model: Callable[[dict[str, Any]], ModelInfo],
        *,
        cpu_fallback: bool,
        gpus: int,
        kv_cache_bytes: int | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / CACHE_DIR
        self.resolve_model = resolve_model
        self.cpu_fallback = cpu_fallback
        self.gpus = gpus
        self.kv_cache_bytes = kv_cache_bytes
        self._lock = threading.Lock()
        self._prepared: dict[int, VllmServerSpec] = {}
        # Kept after start: more replicas of an instance start from the same spec.
        self._specs: dict[int, tuple[VllmServerSpec, tuple[int, int]]] = {}
        # Servers this process started, by workdir: the Popen lets stop() reap them (no zombies).
        self._servers: dict[Path, RunningServer] = {}

    # -- paths and lookups --------------------------------------------------------------------

    def workdir(self, deployment: Deployment, replica: int = 0) -> Path:
        entity = f"{_safe_name(deployment.entity)}-{deployment.instance_id}"
        # Replica 0 keeps the folder of single-server instances; more replicas are siblings.
        suffix = f".r{replica}" if replica else ""
        return self.root / _safe_name(deployment.endpoint) / (entity + suffix)

    def _trusted(self, recorded: Any) -> Path | None:
        # Trust a recorded folder only inside our root: a handle never makes us kill
        # something elsewhere.
        if recorded and Path(recorded).resolve().is_relative_to(self.root.resolve()):
            return Path(recorded)
        return None

    def _workdirs(self, deployment: Deployment, handle: dict[str, Any] | None) -> list[Path]:
        """Every replica folder of an instance: recorded ones and any found on disk (a crash
        may have come between starting a replica and recording it)."""
        base = self.workdir(deployment)
        found = [base, *sorted(base.parent.glob(base.name + ".r*"))]
        recorded = [self._trusted(r.get("workdir")) for r in replicas_of(handle)]
        return list(dict.fromkeys([*(r for r in recorded if r is not None), *found]))

    def _server_at(self, workdir: Path) -> RunningServer | None:
        with self._lock:
            server = self._servers.get(workdir)
        return server if server is not None else RunningServer.attach(workdir)

    def _recorded_servers(
        self, deployment: Deployment, handle: dict[str, Any] | None
    ) -> list[RunningServer | None]:
        replicas = replicas_of(handle)
        if not replicas:
            return [self._server_at(self.workdir(deployment))]
        return [
            self._server_at(self._trusted(r.get("workdir")) or self.workdir(deployment, k))
            for k, r in enumerate(replicas)
        ]

    # -- Executor -------------------------------------------------------------------------------

    def prepare(self, deployment: Deployment, resolve: SecretResolver) -> None:
        label, config = deployment.label, deployment.config
        if not config.get("entity_name"):
            raise ExecutorError(f"{label}: not a self-hosted entity (no entity_name)")
        try:
            info = self.resolve_model(config)
        except KeyError as exc:
            detail = exc.args[0] if exc.args else f"{config.get('entity_name')}"
            raise ExecutorError(f"{label}: unknown model: {detail}") from None
        if info.task not in TASKS:
            raise ExecutorError(f"{label}: model task {info.task!r} cannot be served by vLLM")
        if not Path(info.path).exists():
            raise ExecutorError(f"{label}: model folder {info.path} does not exist")

        workload = config.get("workload_type")
        needed = gpus_needed(workload)
        cpu = self.gpus == 0
        if needed and cpu and not self.cpu_fallback:
            raise ExecutorError(
                f"{label}: workload_type {workload} needs a GPU and this machine has none "
                "(enable the CPU fallback to serve it on the CPU)"
            )
        if needed and not cpu and needed > self.gpus:
            raise ExecutorError(
                f"{label}: workload_type {workload} needs {needed} GPUs; this machine has "
                f"{self.gpus}"
            )

        env = {
            str(key): self._resolve_secrets(label, str(value), resolve)
            for key, value in (config.get("environment_vars") or {}).items()
        }
        spec = VllmServerSpec(
            model=Path(info.path),
            served_model_name=deployment.entity,
            task=info.task,
            max_model_len=info.context_length,
            tensor_parallel_size=1 if cpu else max(1, needed),
            env=env,
            cpu=cpu,
            cache_dir=self.cache_dir,
            **({"kv_cache_bytes": self.kv_cache_bytes} if self.kv_cache_bytes else {}),
        )
        bounds = replica_bounds(config, info.throughput_chunk_size)
        with self._lock:
            self._prepared[deployment.instance_id] = spec
            self._specs[deployment.instance_id] = (spec, bounds)

    @staticmethod
    def _resolve_secrets(label: str, value: str, resolve: SecretResolver) -> str:
        def one(reference: str) -> str:
            try:
                return resolve(reference)
            except KeyError as exc:
                # Name the reference, never a value.
                why = exc.reason if isinstance(exc, SecretUnavailable) else "does not resolve"
                raise ExecutorError(f"{label}: secret reference {reference}: {why}") from None

        return replace_secret_references(value, one)

    def start(self, deployment: Deployment) -> dict[str, Any]:
        with self._lock:
            spec = self._prepared.pop(deployment.instance_id, None)
            kept = self._specs.get(deployment.instance_id)
        if spec is None or kept is None:
            raise ExecutorError(f"{deployment.label}: start without prepare")
        fewest = kept[1][0]
        # Servers left by an earlier start of this same instance (a crashed apply re-running):
        # stop them, so that one instance never has two servers per replica.
        for workdir in self._workdirs(deployment, None):
            stop_by_pidfile(workdir)
        return _handle([self._launch(deployment, spec, k) for k in range(fewest)])

    def _launch(self, deployment: Deployment, spec: VllmServerSpec, replica: int) -> dict[str, Any]:
        workdir = self.workdir(deployment, replica)
        stop_by_pidfile(workdir)
        if spec.cpu and "VLLM_CPU_OMP_THREADS_BIND" not in spec.env:
            # vLLM pins each CPU engine's worker to a core of its choice, the same one for
            # every server. With one runner busy on that core, a second runner's processes
            # starting next to it hung for minutes in sched_setaffinity on two cores (seen
            # in updates and replica starts under load). Unbound runners let the kernel
            # spread them; an entity's environment_vars may still set a binding.
            env = {**spec.env, "VLLM_CPU_OMP_THREADS_BIND": "nobind"}
            spec = dataclasses.replace(spec, env=env)
        log = workdir / "server.log"
        if log.exists():
            log.replace(workdir / "server.log.1")
        try:
            server = launch(spec, workdir)
        except OSError as exc:
            raise ExecutorError(f"{deployment.label}: cannot start vLLM: {exc}") from None
        with self._lock:
            self._servers[workdir] = server
        return server.handle()

    def wait_ready(self, deployment: Deployment, handle: dict[str, Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for server in self._recorded_servers(deployment, handle):
            if server is None:
                raise ExecutorError(f"{deployment.label}: no server was started (no {PID_FILE})")
            try:
                server.wait_ready(max(1.0, deadline - time.monotonic()))
            except ServerStartError as exc:
                # A timeout may pass on a retry; a server that exited will exit again.
                raise ExecutorError(
                    f"{deployment.label}: {exc}", permanent=not server.alive()
                ) from None

    def stop(self, deployment: Deployment, handle: dict[str, Any] | None) -> None:
        with self._lock:
            self._prepared.pop(deployment.instance_id, None)
            self._specs.pop(deployment.instance_id, None)
        for workdir in self._workdirs(deployment, handle):
            self._stop_at(deployment, workdir)

    def _stop_at(self, deployment: Deployment, workdir: Path) -> None:
        with self._lock:
            server = self._servers.pop(workdir, None)
        try:
            if server is not None:
                server.stop()
            else:
                stop_by_pidfile(workdir)
        except OSError as exc:
            raise ExecutorError(f"{deployment.label}: cannot stop its vLLM server: {exc}") from None

    def status(self, deployment: Deployment, handle: dict[str, Any] | None) -> EntityStatus:
        for server in self._recorded_servers(deployment, handle):
            if server is None:
                return EntityStatus(
                    DeploymentState.FAILED, "no vLLM server is recorded for this entity"
                )
            if not server.alive():
                code = server.exit_code()
                how = f" (exit code {code})" if code is not None else ""
                reason = f"the vLLM server is not running{how}"
            elif not server.health():
                reason = "the vLLM server does not answer /health"
            else:
                continue
            return EntityStatus(
                DeploymentState.FAILED,
                f"{reason}\n--- last lines of the server log ---\n{log_tail(server.log_file)}",
            )
        return EntityStatus(DeploymentState.READY)

    def head_up(self) -> bool:
        """Whether the runtime that places runners answers (always, for this machine)."""
        return True

    def logs(self, deployment: Deployment, handle: dict[str, Any] | None) -> list[str]:
        """The server log lines of each replica (the logs route shows them)."""
        lines: list[str] = []
        for replica in replicas_of(handle):
            log_file = replica.get("log_file")
            if not log_file:
                continue
            try:
                with open(log_file, encoding="utf-8", errors="replace") as f:
                    lines += f.read()[-65536:].splitlines()
            except OSError:
                lines.append(f"(log file {log_file} is gone)")
        return lines

    def stop_all(self) -> None:
        """Stop every server this process started and has not stopped: the host is going, and
        runners never outlive it (also those of an apply or a replica still starting)."""
        with self._lock:
            servers = list(self._servers.items())
            self._servers.clear()
        for _, server in servers:
            try:
                server.stop()
            except OSError:
                stop_by_pidfile(server.workdir)

    def reap(self) -> None:
        """Forget servers that exited (e.g. stopped by a CLI destroy through their pid files):
        polling an exited child collects it, so no zombie waits for the host to exit."""
        with self._lock:
            for workdir, server in list(self._servers.items()):
                if server.process is not None and server.process.poll() is not None:
                    del self._servers[workdir]

    # -- replicas (provisioned throughput) ------------------------------------------------------

    def bounds(self, deployment: Deployment) -> tuple[int, int] | None:
        """(fewest, most) replicas of a prepared or started instance."""
        with self._lock:
            kept = self._specs.get(deployment.instance_id)
        return kept[1] if kept else None

    def add_replica(
        self, deployment: Deployment, handle: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """Start one more replica and wait until it serves; returns the handle with it."""
        with self._lock:
            kept = self._specs.get(deployment.instance_id)
        if kept is None:
            raise ExecutorError(f"{deployment.label}: add a replica without prepare")
        replicas = replicas_of(handle)
        started = self._launch(deployment, kept[0], len(replicas))
        server = self._server_at(Path(started["workdir"]))
        assert server is not None
        try:
            server.wait_ready(timeout)
        except ServerStartError as exc:
            self._stop_at(deployment, Path(started["workdir"]))
            raise ExecutorError(f"{deployment.label}: {exc}") from None
        return _handle([*replicas, started])

    def without_last_replica(self, handle: dict[str, Any]) -> dict[str, Any]:
        """The handle once its last replica is gone (the caller drains, then stops it)."""
        return _handle(replicas_of(handle)[:-1])

    def stop_replica(self, deployment: Deployment, replica: dict[str, Any]) -> None:
        workdir = self._trusted(replica.get("workdir"))
        if workdir is not None:
            self._stop_at(deployment, workdir)
