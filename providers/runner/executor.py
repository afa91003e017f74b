"""The runner executor: self-hosted served entities (entity_name/entity_version) as real vLLM
OpenAI-compatible server processes on this machine.

One server per entity instance, in `root/<endpoint>/<entity>-<instance_id>/` (server.log,
server.pid, its own temp and cache folders). Because the folder is named after the instance id,
`stop(deployment, None)` finds and stops a server even when the apply that started it died
before recording the handle.

The handle is JSON: {"pid", "port", "base_url", "log_file", "workdir"}. Resolved secrets
(environment_vars) reach only the server's environment: never the handle, the pid file or an
error message.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._executor import Deployment, EntityStatus, Executor, ExecutorError, SecretResolver
from .vllm_process import (
    PID_FILE,
    TASKS,
    RunningServer,
    ServerStartError,
    VllmServerSpec,
    launch,
    log_tail,
    stop_by_pidfile,
)

__all__ = ["ModelInfo", "RunnerExecutor", "gpus_needed"]

_REFERENCE = re.compile(r"\{\{secrets/[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+\}\}")
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

    def __init__(
        self,
        root: Path,
        resolve_model: Callable[[dict[str, Any]], ModelInfo],
        *,
        cpu_fallback: bool,
        gpus: int,
        kv_cache_bytes: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.resolve_model = resolve_model
        self.cpu_fallback = cpu_fallback
        self.gpus = gpus
        self.kv_cache_bytes = kv_cache_bytes
        self._lock = threading.Lock()
        self._prepared: dict[int, VllmServerSpec] = {}
        # Servers this process started: the Popen lets stop() reap them (no zombies).
        self._servers: dict[int, RunningServer] = {}

    # -- paths and lookups --------------------------------------------------------------------

    def workdir(self, deployment: Deployment) -> Path:
        entity = f"{_safe_name(deployment.entity)}-{deployment.instance_id}"
        return self.root / _safe_name(deployment.endpoint) / entity

    def _workdir_of(self, deployment: Deployment, handle: dict[str, Any] | None) -> Path:
        expected = self.workdir(deployment)
        if handle and handle.get("workdir"):
            recorded = Path(handle["workdir"])
            # Trust a recorded folder only inside our root: a handle never makes us kill
            # something elsewhere.
            if recorded.resolve().is_relative_to(self.root.resolve()):
                return recorded
        return expected

    def _server(
        self, deployment: Deployment, handle: dict[str, Any] | None
    ) -> RunningServer | None:
        with self._lock:
            server = self._servers.get(deployment.instance_id)
        if server is not None:
            return server
        return RunningServer.attach(self._workdir_of(deployment, handle))

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
            **({"kv_cache_bytes": self.kv_cache_bytes} if self.kv_cache_bytes else {}),
        )
        with self._lock:
            self._prepared[deployment.instance_id] = spec

    @staticmethod
    def _resolve_secrets(label: str, value: str, resolve: SecretResolver) -> str:
        def one(match: re.Match[str]) -> str:
            try:
                return resolve(match.group(0))
            except KeyError:
                # Name the reference, never a value.
                raise ExecutorError(
                    f"{label}: secret reference {match.group(0)} does not resolve"
                ) from None

        return _REFERENCE.sub(one, value)

    def start(self, deployment: Deployment) -> dict[str, Any]:
        with self._lock:
            spec = self._prepared.pop(deployment.instance_id, None)
        if spec is None:
            raise ExecutorError(f"{deployment.label}: start without prepare")
        workdir = self.workdir(deployment)
        # A server left by an earlier start of this same instance (a crashed apply re-running):
        # stop it, so that one instance never has two servers.
        stop_by_pidfile(workdir)
        log = workdir / "server.log"
        if log.exists():
            log.replace(workdir / "server.log.1")
        try:
            server = launch(spec, workdir)
        except OSError as exc:
            raise ExecutorError(f"{deployment.label}: cannot start vLLM: {exc}") from None
        with self._lock:
            self._servers[deployment.instance_id] = server
        return server.handle()

    def wait_ready(self, deployment: Deployment, handle: dict[str, Any], timeout: float) -> None:
        server = self._server(deployment, handle)
        if server is None:
            raise ExecutorError(f"{deployment.label}: no server was started (no {PID_FILE})")
        try:
            server.wait_ready(timeout)
        except ServerStartError as exc:
            # A timeout may pass on a retry; a server that exited will exit again.
            raise ExecutorError(
                f"{deployment.label}: {exc}", permanent=not server.alive()
            ) from None

    def stop(self, deployment: Deployment, handle: dict[str, Any] | None) -> None:
        with self._lock:
            self._prepared.pop(deployment.instance_id, None)
            server = self._servers.pop(deployment.instance_id, None)
        try:
            if server is not None:
                server.stop()
            else:
                stop_by_pidfile(self._workdir_of(deployment, handle))
        except OSError as exc:
            raise ExecutorError(f"{deployment.label}: cannot stop its vLLM server: {exc}") from None

    def status(self, deployment: Deployment, handle: dict[str, Any] | None) -> EntityStatus:
        server = self._server(deployment, handle)
        if server is None:
            return EntityStatus("DEPLOYMENT_FAILED", "no vLLM server is recorded for this entity")
        if not server.alive():
            code = server.exit_code()
            how = f" (exit code {code})" if code is not None else ""
            reason = f"the vLLM server is not running{how}"
        elif not server.health():
            reason = "the vLLM server does not answer /health"
        else:
            return EntityStatus("DEPLOYMENT_READY")
        return EntityStatus(
            "DEPLOYMENT_FAILED",
            f"{reason}\n--- last lines of the server log ---\n{log_tail(server.log_file)}",
        )
