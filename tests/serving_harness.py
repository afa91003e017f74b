"""Start a real `engine serve` process on loopback, and an OpenAI-speaking mock upstream."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from mock_http import MockResponse, RecordedRequest, sse

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self,
        state: Path | str,
        *,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        log_dir: Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.state = state  # a SQLite file, or a PostgreSQL URL (then `log_dir` is needed)
        self.args = args  # more `engine serve` options
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (log_dir or Path(state).parent) / f"serve-{self.port}.log"
        self._env = env or {}
        # Its own process group: `kill_group` takes its workers with it (kill -9 of a replica).
        self.new_session = new_session
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}", **self._env}
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in __exit__
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "serve",
                "--state",
                str(self.state),
                "--port",
                str(self.port),
                *self.args,
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            start_new_session=self.new_session,
        )
        # Generous: with two vLLM lanes and other workers on two cores, a start that takes
        # 3 s alone has taken over 120 s (CI, load average 11).
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"engine serve exited: {self.log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"engine serve did not start: {self.log.read_text()}")

    def wait_serial(self, serial: int, timeout: float = 60) -> None:
        """Wait until the server's routing table reflects state serial `serial` or later."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(self.url + "/health", timeout=1).json()["serial"] >= serial:
                return
            time.sleep(0.05)
        raise TimeoutError(f"server did not reach serial {serial}")

    def kill_group(self) -> None:
        """SIGKILL the process and every worker of it (needs `new_session`)."""
        assert self.process is not None and self.new_session
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            self._log_file.close()
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)  # stopping its runners takes a while on a loaded machine
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


def openai_upstream(request: RecordedRequest) -> MockResponse:
    """A tiny OpenAI: echoes the model name so tests can tell upstream entities apart."""
    body = request.json() if request.body else {}
    model = body.get("model", "?")
    if request.path.endswith("/embeddings"):
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return MockResponse(
            json={
                "object": "list",
                "model": model,
                "data": [
                    {"object": "embedding", "index": i, "embedding": [0.5, -0.25, float(i)]}
                    for i in range(len(inputs))
                ],
                "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs)},
            }
        )
    chat = request.path.endswith("/chat/completions")
    if body.get("stream"):
        pieces = ["Hel", "lo", "!"]
        events: list[tuple[str | None, Any]] = []
        for i, piece in enumerate(pieces):
            if chat:
                choice = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
                if i == 0:
                    choice["delta"]["role"] = "assistant"
            else:
                choice = {"index": 0, "text": piece, "finish_reason": None}
            events.append(
                (
                    None,
                    {
                        "id": "x",
                        "object": "chat.completion.chunk" if chat else "text_completion",
                        "model": model,
                        "choices": [choice],
                    },
                )
            )
        events.append(
            (
                None,
                {
                    "id": "x",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                },
            )
        )
        events.append((None, "[DONE]"))
        return MockResponse(chunks=sse(events))
    if chat:
        content = "reply from " + model
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": "completion from " + model, "finish_reason": "stop"}
        obj = "text_completion"
    return MockResponse(
        json={
            "id": "r",
            "object": obj,
            "created": 1,
            "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
        }
    )


def openai_entity(name: str, model: str, base: str, *, task: str = "llm/v1/chat") -> dict[str, Any]:
    return {
        "name": name,
        "external_model": {
            "name": model,
            "provider": "openai",
            "task": task,
            "openai_config": {
                "openai_api_key": "{{secrets/scope/openai}}",
                "openai_api_base": base,
            },
        },
    }


def endpoint(
    name: str, entities: list[dict[str, Any]], split: list[int] | None = None, **extra: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "config": {"served_entities": entities}}
    if split is not None:
        spec["config"]["traffic_config"] = {
            "routes": [
                {"served_entity_name": e["name"], "traffic_percentage": p}
                for e, p in zip(entities, split, strict=True)
            ]
        }
    spec.update(extra)
    return spec


def dumps(value: Any) -> str:
    return json.dumps(value)


def without_replica(metrics_text: str) -> str:
    """/metrics as a host of one replica would render it: the `replica` label taken out of
    every series (replica-mode hosts add it; tests of other things compare series by value)."""
    import re

    text = re.sub(r'\{replica="[^"]*"\}', "", metrics_text)
    return re.sub(r'replica="[^"]*",', "", text)
