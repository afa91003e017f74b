"""Provisioned throughput on this host: which models it can provision, and how fast one replica is.

`optimization_info(entry)` answers `GET .../get-model-optimization-info/{model}/{version}`:
`optimizable` (the model folder's `architectures` entry is one the installed vLLM implements),
`model_type`, and `throughput_chunk_size`: the output tokens/s one replica sustains on this host,
as measured by `calibrate` (`engine models calibrate`) and stored in the catalog. Until a model is
calibrated no number is invented: the answer leaves `throughput_chunk_size` out and says how to
calibrate in `message`.

`calibrate` starts ONE vLLM server for a catalog entry (as one replica is started), warms it up,
drives it with a fixed number of concurrent requests of a fixed output length (`ignore_eos`) for
a fixed time, and measures output tokens/s from the responses' `usage.completion_tokens`. The
server is always stopped, also on Ctrl-C, SIGTERM or an error: no process is left behind.

Which architectures the installed vLLM implements is read once per process, lazily, from its
model registry's source; where that source is not laid out as expected, vLLM itself is asked in
a subprocess (importing it takes seconds and pulls in torch, which this process keeps out).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from providers.runner.vllm_process import ServerStartError, VllmServerSpec, launch

__all__ = [
    "CalibrationError",
    "CalibrationResult",
    "Terminated",
    "archs_from_vllm",
    "calibrate",
    "chunk_from_rate",
    "model_architectures",
    "not_calibrated_message",
    "optimization_info",
    "supported_architectures",
]


class CalibrationModel(Protocol):
    """A catalog model as calibration reads it (the engine's catalog entries have these
    fields; providers/ never imports engine/)."""

    name: str
    version: str
    path: Path
    task: str
    model_type: str | None
    context_length: int | None
    throughput_chunk_size: int | None


log = logging.getLogger("engine.calibrate")

_ARCHS_MARKER = "ENGINE_VLLM_ARCHS="
_ARCHS_SCRIPT = f"""
import json
from vllm.model_executor.models import ModelRegistry
print({_ARCHS_MARKER!r} + json.dumps(sorted(ModelRegistry.get_supported_archs())), flush=True)
"""
_ARCHS_TIMEOUT = 180.0
_archs_lock = threading.Lock()
_archs: frozenset[str] | None = None

_PROMPT = "Write a long story about a lighthouse keeper who collects maps of imaginary islands."


class CalibrationError(Exception):
    """Calibration could not measure (bad arguments, server did not start, requests failed)."""


# -- optimizable: what the installed vLLM implements --------------------------------------------


def supported_architectures() -> frozenset[str] | None:
    """The model architectures the installed vLLM implements (empty when vLLM is not installed).

    None when vLLM is installed but could not be asked (it failed or took too long); that answer
    is not cached, so a later call asks again. A successful answer is cached for the process.
    """
    global _archs
    with _archs_lock:
        if _archs is None:
            spec = importlib.util.find_spec("vllm")
            if spec is None:
                _archs = frozenset()
            else:
                _archs = _archs_from_source(spec.submodule_search_locations) or archs_from_vllm()
        return _archs


def archs_from_vllm(python: str = sys.executable) -> frozenset[str] | None:
    """Ask vLLM's ModelRegistry in a subprocess (seconds: it imports torch)."""
    with tempfile.TemporaryDirectory(prefix="engine-archs-") as tmp:
        env = {
            **os.environ,
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TMPDIR": tmp,
            "VLLM_CACHE_ROOT": str(Path(tmp) / "vllm"),
        }
        try:
            done = subprocess.run(
                [python, "-c", _ARCHS_SCRIPT],
                capture_output=True,
                text=True,
                env=env,
                cwd=tmp,
                timeout=_ARCHS_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("cannot ask vLLM for its architectures: %s", exc)
            return None
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_ARCHS_MARKER):
            return frozenset(json.loads(line[len(_ARCHS_MARKER) :]))
    log.warning(
        "cannot ask vLLM for its architectures (exit %s): %s",
        done.returncode,
        done.stderr.strip().splitlines()[-1:] or "no output",
    )
    return None


def _archs_from_source(locations: Any) -> frozenset[str] | None:
    """The keys of `_VLLM_MODELS` in vLLM's model registry, read from its source without
    importing it (milliseconds instead of seconds); None when the source is not laid out as
    expected, and then vLLM itself is asked."""
    try:
        path = Path(next(iter(locations))) / "model_executor" / "models" / "registry.py"
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (StopIteration, TypeError, OSError, SyntaxError, ValueError):
        return None
    tables: dict[str, set[str]] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if not isinstance(target, ast.Name) or not isinstance(node.value, ast.Dict):
            continue
        keys: set[str] | None = set()
        for key, value in zip(node.value.keys, node.value.values, strict=True):
            if key is None and isinstance(value, ast.Name) and value.id in tables:
                keys |= tables[value.id]  # **_OTHER_MODELS
            elif key is None and isinstance(value, ast.DictComp):
                # **{k: v for k, v in _OTHER_MODELS.items() if ...}: a subset of a table that
                # _VLLM_MODELS spreads as a whole too (the test with vllm checks the result).
                continue
            elif isinstance(key, ast.Constant) and isinstance(key.value, str):
                keys.add(key.value)
            else:
                keys = None
                break
        if keys is not None:
            tables[target.id] = keys
    found = tables.get("_VLLM_MODELS")
    return frozenset(found) if found else None


def model_architectures(path: Path) -> list[str]:
    """The `architectures` of a model folder's config.json ([] when it has none)."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return []
    value = config.get("architectures") if isinstance(config, dict) else None
    return [a for a in value if isinstance(a, str)] if isinstance(value, list) else []


def not_calibrated_message(name: str, version: str) -> str:
    return (
        f"model {name} version {version} has no throughput_chunk_size: it is not calibrated on "
        f"this host; run `engine models calibrate {name} --version {version}` (or set a known "
        "value with --chunk-size N)"
    )


def optimization_info(
    entry: CalibrationModel, archs: frozenset[str] | None = None
) -> dict[str, Any]:
    """The body of `get-model-optimization-info` for a catalog entry."""
    known = supported_architectures() if archs is None else archs
    optimizable = bool(known) and any(a in known for a in model_architectures(entry.path))
    body: dict[str, Any] = {"optimizable": optimizable, "model_type": entry.model_type or ""}
    if entry.throughput_chunk_size:
        body["throughput_chunk_size"] = entry.throughput_chunk_size
    else:
        body["message"] = not_calibrated_message(entry.name, entry.version)
    return body


# -- calibration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationResult:
    chunk_size: int  # what is stored: the measured rate rounded down
    tokens_per_second: float  # measured output tokens/s
    requests: int  # requests that finished in the measured window (wholly or partly)
    concurrency: int
    max_tokens: int
    seconds: float
    startup_seconds: float


def chunk_from_rate(rate: float) -> int:
    """Round a measured rate down: to 10 tokens/s from 100 up, to 1 below; at least 1."""
    if rate >= 100:
        return int(rate // 10) * 10
    return max(1, int(math.floor(rate)))


def _request(task: str, model: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
    common = {"model": model, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0.8}
    if task == "llm/v1/completions":
        return "/completions", {**common, "prompt": _PROMPT}
    return "/chat/completions", {**common, "messages": [{"role": "user", "content": _PROMPT}]}


class _Load:
    """N threads that send requests back to back until told to stop; each request's
    (start, end, completion tokens) is recorded."""

    def __init__(self, base_url: str, task: str, model: str, concurrency: int, max_tokens: int):
        self.path, self.body = _request(task, model, max_tokens)
        self.url = base_url + self.path
        self.concurrency = concurrency
        self.samples: list[tuple[float, float, int]] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._client = httpx.Client(
            trust_env=False,
            timeout=httpx.Timeout(300.0, connect=10.0),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    def one(self) -> tuple[float, float, int]:
        start = time.monotonic()
        response = self._client.post(self.url, json=self.body)
        end = time.monotonic()
        response.raise_for_status()
        tokens = int((response.json().get("usage") or {}).get("completion_tokens") or 0)
        return start, end, tokens

    def _worker(self) -> None:
        while not self._stop.is_set():
            try:
                sample = self.one()
            except (httpx.HTTPError, ValueError) as exc:
                with self._lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self._stop.set()
                return
            with self._lock:
                self.samples.append(sample)

    def burst(self) -> None:
        """One request per worker at once (the warm-up); raises on the first failure."""
        threads = [
            threading.Thread(target=self._warm, daemon=True) for _ in range(self.concurrency)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.errors:
            raise CalibrationError(f"warm-up request to {self.path} failed: {self.errors[0]}")

    def _warm(self) -> None:
        try:
            self.one()
        except (httpx.HTTPError, ValueError) as exc:
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def run(self, seconds: float) -> tuple[float, float]:
        """Load the server for `seconds`; wait for requests in flight. Returns the window."""
        threads = [
            threading.Thread(target=self._worker, daemon=True) for _ in range(self.concurrency)
        ]
        begin = time.monotonic()
        for t in threads:
            t.start()
        self._stop.wait(seconds)
        end = time.monotonic()
        self._stop.set()
        for t in threads:
            t.join()
        if self.errors:
            raise CalibrationError(f"request to {self.path} failed: {self.errors[0]}")
        return begin, end

    def close(self) -> None:
        self._stop.set()
        self._client.close()


def _tokens_in(samples: list[tuple[float, float, int]], begin: float, end: float) -> float:
    """Output tokens generated inside [begin, end]: a request's tokens are spread evenly over its
    duration, so requests still in flight at the end count for the part inside the window."""
    total = 0.0
    for start, stop, tokens in samples:
        overlap = min(stop, end) - max(start, begin)
        if overlap > 0:
            total += tokens * overlap / max(stop - start, 1e-9)
    return total


class Terminated(BaseException):
    """SIGTERM or SIGHUP while calibrating: unwind (and stop the server) like Ctrl-C does."""


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """In the main thread, SIGTERM/SIGHUP raise, so `finally` blocks stop the server."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    raised = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if not raised.is_set():  # once: a second signal must not cut the cleanup short
            raised.set()
            raise Terminated(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def calibrate(
    entry: CalibrationModel,
    workdir: Path,
    *,
    concurrency: int = 16,
    seconds: float = 20.0,
    max_tokens: int = 64,
    cpu: bool = True,
    ready_timeout: float = 600.0,
    python: str = sys.executable,
    progress: Callable[[str], None] = lambda _: None,
) -> CalibrationResult:
    """Measure the output tokens/s one replica of `entry` sustains on this host.

    The server runs in `workdir` (removed afterwards, unless the server failed to start: its
    log is kept there) and is stopped on every way out of this function.
    """
    if entry.task not in ("llm/v1/chat", "llm/v1/completions"):
        raise CalibrationError(
            f"model {entry.name} version {entry.version} serves {entry.task}: calibration "
            "measures generated tokens/s; set the value with --chunk-size N instead"
        )
    if concurrency < 1 or max_tokens < 1 or seconds <= 0:
        raise CalibrationError("--concurrency, --max-tokens and --seconds must be positive")
    if not Path(entry.path).is_dir():
        raise CalibrationError(f"model folder {entry.path} does not exist")
    spec = VllmServerSpec(
        model=Path(entry.path),
        served_model_name="calibration",
        task=entry.task,
        max_model_len=entry.context_length,
        cpu=cpu,
        python=python,
    )
    keep_workdir = False
    server = None
    with _signals_unwind():
        try:
            progress(f"starting vLLM for {entry.name} version {entry.version} (log: {workdir})")
            started = time.monotonic()
            try:
                server = launch(spec, workdir)
            except OSError as exc:
                raise CalibrationError(f"cannot start vLLM: {exc}") from None
            try:
                server.wait_ready(ready_timeout)
            except ServerStartError as exc:
                keep_workdir = True
                raise CalibrationError(f"{exc}\n(server log kept in {server.log_file})") from None
            startup = time.monotonic() - started
            progress(f"ready after {startup:.0f} s; warming up with {concurrency} requests")
            load = _Load(
                server.base_url, entry.task, spec.served_model_name, concurrency, max_tokens
            )
            try:
                load.burst()
                progress(
                    f"measuring for {seconds:g} s: {concurrency} concurrent requests of "
                    f"{max_tokens} output tokens"
                )
                begin, end = load.run(seconds)
            finally:
                load.close()
            tokens = _tokens_in(load.samples, begin, end)
            rate = tokens / (end - begin)
            if rate <= 0:
                raise CalibrationError(
                    "no output tokens were measured (the responses carried no "
                    "usage.completion_tokens)"
                )
            finished = sum(1 for s, e, _ in load.samples if e > begin and s < end)
            return CalibrationResult(
                chunk_size=chunk_from_rate(rate),
                tokens_per_second=rate,
                requests=finished,
                concurrency=concurrency,
                max_tokens=max_tokens,
                seconds=end - begin,
                startup_seconds=startup,
            )
        finally:
            if server is not None:
                progress("stopping vLLM")
                server.stop()
            if not keep_workdir:
                shutil.rmtree(workdir, ignore_errors=True)
