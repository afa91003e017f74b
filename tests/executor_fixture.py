"""A controllable executor for tests: slow, failing or crashing on demand.

Registered through `ENGINE_EXECUTOR_PLUGINS=executor_fixture:register` (with tests/ on
PYTHONPATH). What it "runs" is a marker file per instance in $TEST_EXECUTOR_DIR, so a test can
compare what is running with what the state tracks.

Environment:
    TEST_EXECUTOR_DIR       where marker files live (required)
    TEST_EXECUTOR_DELAY     seconds wait_ready takes
    TEST_EXECUTOR_FAIL      comma-separated entity names whose wait_ready fails
    TEST_EXECUTOR_CRASH_AT  `step:n`: SIGKILL this process at the n-th `step`
                            (prepare, start, wait, stop, stopped)
    TEST_EXECUTOR_TRACE     file that gets one line per step (to enumerate crash points)
    TEST_EXECUTOR_EXTERNAL  "1": also run external-model entities
    TEST_EXECUTOR_HOLD      comma-separated entity names whose wait_ready blocks until the
                            file `release-<name>` appears in $TEST_EXECUTOR_DIR (up to 120 s)
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

from providers import Deployment, EntityStatus, Executor, ExecutorError, SecretResolver


class ControllableExecutor(Executor):
    kind = "self_hosted"

    def __init__(
        self,
        directory: Path,
        *,
        delay: float = 0.0,
        fail: frozenset[str] = frozenset(),
        crash_at: tuple[str, int] | None = None,
        trace: Path | None = None,
        hold: frozenset[str] = frozenset(),
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.delay = delay
        self.fail = fail
        self.crash_at = crash_at
        self.trace = trace
        self.hold = hold
        self.counts: Counter[str] = Counter()

    def _step(self, step: str) -> None:
        self.counts[step] += 1
        if self.trace is not None:
            with open(self.trace, "a", encoding="utf-8") as f:
                f.write(f"{step}:{self.counts[step]}\n")
        if self.crash_at == (step, self.counts[step]):
            os.kill(os.getpid(), signal.SIGKILL)

    def _marker(self, deployment: Deployment) -> Path:
        return self.directory / f"{deployment.instance_id}.json"

    def prepare(self, deployment: Deployment, resolve: SecretResolver) -> None:
        self._step("prepare")

    def start(self, deployment: Deployment) -> dict[str, Any]:
        self._marker(deployment).write_text(
            json.dumps({"endpoint": deployment.endpoint, "entity": deployment.entity})
        )
        self._step("start")
        return {"marker": str(self._marker(deployment))}

    def wait_ready(self, deployment: Deployment, handle: dict[str, Any], timeout: float) -> None:
        self._step("wait")
        if self.delay:
            time.sleep(self.delay)
        if deployment.entity in self.hold:
            release = self.directory / f"release-{deployment.entity}"
            deadline = time.monotonic() + 120
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        if deployment.entity in self.fail:
            raise ExecutorError(f"{deployment.entity} failed its readiness check (test)")

    def stop(self, deployment: Deployment, handle: dict[str, Any] | None) -> None:
        self._step("stop")
        self._marker(deployment).unlink(missing_ok=True)
        self._step("stopped")

    def status(self, deployment: Deployment, handle: dict[str, Any] | None) -> EntityStatus:
        if self._marker(deployment).exists():
            return EntityStatus("DEPLOYMENT_READY")
        return EntityStatus("DEPLOYMENT_FAILED", "marker file is gone")

    def running(self) -> set[int]:
        return {int(p.stem) for p in self.directory.glob("*.json")}


def from_environment() -> ControllableExecutor:
    crash = os.environ.get("TEST_EXECUTOR_CRASH_AT")
    crash_at = None
    if crash:
        step, _, n = crash.partition(":")
        crash_at = (step, int(n or 1))
    trace = os.environ.get("TEST_EXECUTOR_TRACE")
    return ControllableExecutor(
        Path(os.environ["TEST_EXECUTOR_DIR"]),
        delay=float(os.environ.get("TEST_EXECUTOR_DELAY", "0")),
        fail=frozenset(filter(None, os.environ.get("TEST_EXECUTOR_FAIL", "").split(","))),
        crash_at=crash_at,
        trace=Path(trace) if trace else None,
        hold=frozenset(filter(None, os.environ.get("TEST_EXECUTOR_HOLD", "").split(","))),
    )


class _AsExternal(ControllableExecutor):
    kind = "external"


def register(registry: Any) -> None:
    executor = from_environment()
    registry.register("self_hosted", executor, replace=True)
    if os.environ.get("TEST_EXECUTOR_EXTERNAL") == "1":
        external = _AsExternal(
            executor.directory, delay=executor.delay, fail=executor.fail, hold=executor.hold
        )
        external.crash_at, external.trace, external.counts = (
            executor.crash_at,
            executor.trace,
            executor.counts,
        )
        registry.register("external", external, replace=True)
