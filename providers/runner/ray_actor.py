"""The Ray actor of one runner replica: it starts the same vLLM OpenAI server a local runner
runs (vllm_process.launch), on the node Ray placed it on, and answers for it.

The actor is a plain class here; ray_executor.py makes it remote (`ray.remote(VllmReplica)`)
with the replica's resource request, detached and named, so that it outlives the serving host
that created it and a restarted host adopts it by name. Ray is imported only inside methods:
this module imports without Ray installed.

The server listens on the node's own address (the gateway reaches it from another machine),
writes its log and pid file under `<node temp dir>/serving-engine-ray/<actor name>/`, and gets
SIGTERM if the actor's process dies (a node that leaves, `ray.kill`), so no server outlives its
actor on a machine that stays up.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from .vllm_process import (
    CACHE_DIR,
    LOG_FILE,
    RunningServer,
    ServerStartError,
    VllmServerSpec,
    launch,
    log_tail,
)

__all__ = ["VllmReplica", "node_workdir"]

_LOG_READ_BYTES = 65536


def node_workdir(actor_name: str) -> Path:
    """The replica's folder on its node (the node's temp dir: Ray's `ray start` environment)."""
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", actor_name).lstrip(".") or "_"
    return Path(tempfile.gettempdir()) / "serving-engine-ray" / safe


class VllmReplica:
    """One vLLM server on a Ray node. Methods answer plain JSON values (no Ray types)."""

    def __init__(self, actor_name: str, spec: VllmServerSpec) -> None:
        import ray

        self.node_ip = ray.util.get_node_ip_address()
        self.node_id = ray.get_runtime_context().get_node_id()
        # The host's interpreter path may not exist on this node: run this node's Python.
        self.workdir = node_workdir(actor_name)
        # The host's cache folder is on the host: this node's replicas share one of their own.
        self.spec = dataclasses.replace(
            spec,
            host=self.node_ip,
            python=sys.executable,
            cache_dir=self.workdir.parent / CACHE_DIR,
        )
        self.server: RunningServer | None = None

    def start(self) -> dict[str, Any]:
        """Launch the server (a second call restarts it); returns the replica's handle."""
        self.stop()
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / LOG_FILE
        if log.exists():
            log.replace(self.workdir / (LOG_FILE + ".1"))
        self.server = launch(self.spec, self.workdir, die_with_parent=True)
        return {
            **self.server.handle(),
            "node_id": self.node_id,
            "node_ip": self.node_ip,
            "actor_pid": os.getpid(),
        }

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """{"ok": True} once it serves, else {"ok": False, "message", "permanent"}."""
        if self.server is None:
            return {"ok": False, "message": "the replica has no server", "permanent": True}
        try:
            self.server.wait_ready(timeout)
        except ServerStartError as exc:
            return {"ok": False, "message": str(exc), "permanent": not self.server.alive()}
        return {"ok": True}

    def status(self) -> dict[str, Any]:
        """{"alive", "healthy", "exit_code", "log_tail"} of the server."""
        server = self.server
        if server is None:
            return {"alive": False, "healthy": False, "exit_code": None, "log_tail": ""}
        alive = server.alive()
        healthy = alive and server.health()
        return {
            "alive": alive,
            "healthy": healthy,
            "exit_code": server.exit_code(),
            "log_tail": "" if healthy else log_tail(server.log_file),
        }

    def logs(self) -> str:
        """The server log's last 64 kB (the host's logs route streams it from here)."""
        try:
            with open(self.workdir / LOG_FILE, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _LOG_READ_BYTES))
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Stop the server and everything it forked (idempotent)."""
        if self.server is not None:
            self.server.stop()
            self.server = None
