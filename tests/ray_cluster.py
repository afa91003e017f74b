"""A real two-node Ray cluster on this machine for tests: a head node and a worker node with a
custom resource of its own (`worker_node`), each a `ray start --block` process in its own process
group, on free ports, in a temp folder of its own.

Stopping signals those two process groups and then any process left whose command line names
this cluster's temp folder: never `ray stop` (it stops every Ray cluster of the machine, other
sessions' too). Ray's dashboard and usage stats are off; each node has one CPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving_harness import ROOT, TESTS, free_port

from providers.runner.ray_executor import head_answers

__all__ = ["RayCluster", "WORKER_RESOURCE", "ray_cluster"]

WORKER_RESOURCE = "worker_node"
_RAY = str(Path(sys.executable).with_name("ray"))
_RESULT = "RESULT "
WORKER_PORTS = 40


def _ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _worker_range(taken: set[int], width: int = WORKER_PORTS) -> int:
    """The first port of `width + 1` free-looking ports that hold none of `taken`: `ray start`
    refuses a worker range that holds another of its ports (a CI run hit that once)."""
    while True:
        base = free_port()
        if base + width <= 65535 and not any(base <= p <= base + width for p in taken):
            return base


@dataclass
class RayCluster:
    root: Path
    address: str = ""
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """What Ray's processes (and so the runners' actors) run with: the repo importable,
        temp files under this cluster's folder, no usage stats."""
        return {
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}",
            "TMPDIR": str(self.root / "tmp"),
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def _start(self, name: str, args: list[str]) -> None:
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        ports = _ports(8)
        agent, grpc, runtime, metrics, manager, objects, client, dash = ports
        gcs = int(self.address.rsplit(":", 1)[1]) if self.address else 0
        base = _worker_range({*ports, gcs})
        command = [
            _RAY,
            "start",
            "--block",
            "--num-cpus=1",
            "--disable-usage-stats",
            "--include-log-monitor=false",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={grpc}",
            f"--runtime-env-agent-port={runtime}",
            f"--metrics-export-port={metrics}",
            f"--node-manager-port={manager}",
            f"--object-manager-port={objects}",
            # Worker processes take ports from a small range of their own.
            f"--min-worker-port={base}",
            f"--max-worker-port={base + WORKER_PORTS}",
            "--object-store-memory=200000000",
            *args,
        ]
        if "--head" in args:
            command += [
                f"--ray-client-server-port={client}",
                f"--dashboard-port={dash}",
                "--include-dashboard=false",
                f"--temp-dir={self.root / 'ray'}",
            ]
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - the process holds it
        self.processes.append(
            subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )
        )

    def query(self, code: str, timeout: float = 60.0) -> Any:
        """Run `code` (which sets `result`) in a fresh Ray driver of this cluster; returns
        `result`, or None when the driver failed or hung. The result travels on a marked line:
        the driver's stdout also carries lines Ray's workers forward to it."""
        script = (
            "import json, ray\n"
            "ray.init(address='auto', logging_level='error', log_to_driver=False)\n"
            f"{code}\n"
            f"print({_RESULT!r} + json.dumps(result))\n"
        )
        try:
            out = subprocess.run(
                [sys.executable, "-c", script],
                capture_output=True,
                text=True,
                env={**self.env, "RAY_ADDRESS": self.address},
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
        for line in reversed(out.stdout.splitlines()):
            if line.startswith(_RESULT):
                return json.loads(line[len(_RESULT) :])
        return None

    def nodes(self) -> list[dict]:
        """The live nodes, or [] while the head is not answering yet. A driver started before
        the GCS listens can hang for minutes (Ray >= 2.60), so wait for the port first."""
        if not head_answers(self.address):
            return []
        return self.query("result = [n for n in ray.nodes() if n['Alive']]") or []

    def worker_node_id(self) -> str:
        (node,) = [n for n in self.nodes() if WORKER_RESOURCE in n["Resources"]]
        return node["NodeID"]

    def start(self, *, worker: bool = True) -> RayCluster:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self._start("head", ["--head", f"--port={port}", "--node-ip-address=127.0.0.1"])
        self._wait_nodes(1)
        if worker:
            self.add_worker()
        return self

    def add_worker(self) -> str:
        """Start a worker node (again): a node with `worker_node: 1` joins the cluster; returns
        its node id once it is live (a node killed before may still count as alive a while)."""
        before = {n["NodeID"] for n in self.nodes()}
        self._start(
            "worker",
            [
                f"--address={self.address}",
                "--node-ip-address=127.0.0.1",
                f'--resources={{"{WORKER_RESOURCE}": 1}}',
            ],
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            for node in self.nodes():
                if WORKER_RESOURCE in node["Resources"] and node["NodeID"] not in before:
                    return str(node["NodeID"])
            time.sleep(1)
        raise RuntimeError(f"the worker node did not join: {self.logs()}")

    def kill_worker(self) -> None:
        """SIGKILL the worker node's process group (raylet, its workers, the actors on it): a
        node that leaves the cluster without saying so."""
        worker = self.processes.pop()
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()

    def _wait_nodes(self, count: int, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() is not None and process.returncode != -signal.SIGKILL:
                    raise RuntimeError(f"ray start exited: {self.logs()}")
            if len(self.nodes()) >= count:
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster has not {count} nodes: {self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.root.glob("*.log"))

    def leftovers(self) -> list[int]:
        """Processes whose command line names this cluster's folder (ours, by construction)."""
        mine = str(self.root).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes()
                env = (entry / "environ").read_bytes()
                if mine in cmd or mine in env:
                    found.append(int(entry.name))
        return found

    def stop(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        deadline = time.monotonic() + 20
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def ray_cluster(*, worker: bool = True) -> Iterator[RayCluster]:
    """The cluster (head only with `worker=False`), stopped on exit."""
    # A short folder: Ray's and vLLM's unix socket paths must stay under 108 bytes.
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp")))
    try:
        yield cluster.start(worker=worker)
    finally:
        cluster.stop()
