"""An external model whose adapter cannot be built: refused at apply, unavailable when served.

Apply builds each external entity's adapter (no network), so a bad key fails the apply with a
reason instead of applying READY and failing on the first query. A config that still cannot be
built when the host serves it (a secret rotated to a bad value, state from an older engine) makes
that entity unavailable (503 with the reason, never a secret), never a host that cannot start.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine, run_cli, write_specs
from mock_http import MockUpstream
from provider_fakes import ScriptedProviders, external_model, service_account_key
from serving_harness import ServerProcess, endpoint

from engine.access.tokens import Principal, create_token
from engine.asgi import ApiError
from engine.gateway._dataplane import DataPlane
from engine.gateway._limiter import InProcessLimits
from engine.gateway._metrics import Metrics
from engine.gateway._table import TableBuilder

OPENAI_KEY = "sk-openai-secret-0d9c3b"
BAD_KEY = "rotated-to-something-that-is-no-key-6a1f"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def _entity(name: str, provider: str, base: str, key: str) -> dict[str, Any]:
    return {"name": name, "external_model": external_model(provider, "ok", base, key)}


def test_a_vertex_endpoint_and_an_unbuildable_one_do_not_stop_the_host(tmp_path: Path) -> None:
    with MockUpstream(ScriptedProviders()) as upstream:
        engine = Engine(tmp_path / "state" / "state.db")
        engine.secrets.create_scope("keys")
        engine.secrets.put_secret("keys", "openai", OPENAI_KEY)
        good = service_account_key(f"{upstream.url}/token")
        engine.secrets.put_secret("keys", "vertex", good)
        engine.secrets.put_secret("keys", "rotated", good)
        vertex = "google-cloud-vertex-ai"
        specs = [
            endpoint("gemini", [_entity("g", vertex, upstream.url, "{{secrets/keys/vertex}}")]),
            endpoint("rotated", [_entity("r", vertex, upstream.url, "{{secrets/keys/rotated}}")]),
            endpoint("gpt", [_entity("o", "openai", upstream.url, "{{secrets/keys/openai}}")]),
        ]
        _, report = engine.apply(write_specs(tmp_path / "specs", specs))
        assert report.ok, report.failed
        # After apply, someone rotates a key to a value that is no service-account key.
        engine.secrets.put_secret("keys", "rotated", BAD_KEY)
        _, token = create_token(engine.store, "alice@example.com")
        auth = {"Authorization": f"Bearer {token}"}
        with ServerProcess(engine.state) as server:  # it starts: that is the first check
            server.wait_serial(engine.store.serial)
            with httpx.Client(base_url=server.url, headers=auth, timeout=30) as client:
                gemini = client.post("/serving-endpoints/gemini/invocations", json=CHAT)
                gpt = client.post("/serving-endpoints/gpt/invocations", json=CHAT)
                rotated = client.post("/serving-endpoints/rotated/invocations", json=CHAT)
                streamed = client.post(
                    "/serving-endpoints/rotated/invocations", json={**CHAT, "stream": True}
                )
        engine.close()
    # The Vertex endpoint serves through the gateway's own client, and so does OpenAI.
    assert gemini.status_code == 200, gemini.text
    assert gemini.json()["choices"][0]["message"]["content"] == "vertex ok"
    assert gpt.status_code == 200, gpt.text
    for answer in (rotated, streamed):
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert body["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert "served entity 'r'" in body["message"]
        assert "private_key must be a service-account JSON key" in body["message"]
        assert BAD_KEY not in answer.text
    assert BAD_KEY not in server.log.read_text()


def test_an_adapter_that_raises_anything_makes_its_entity_unavailable(tmp_path: Path) -> None:
    """State the schema would refuse today (an older engine's, or edited by hand) makes the
    adapter raise AttributeError: that entity answers 503, the table and the rest still work."""
    engine = Engine(tmp_path / "state.db")
    engine.secrets.create_scope("keys")
    engine.secrets.put_secret("keys", "openai", OPENAI_KEY)
    key = "{{secrets/keys/openai}}"
    specs = [
        endpoint("broken", [_entity("b", "openai", "http://127.0.0.1:9", key)]),
        endpoint("fine", [_entity("f", "openai", "http://127.0.0.1:9", key)]),
    ]
    _, report = engine.apply(write_specs(tmp_path / "specs", specs))
    assert report.ok, report.failed
    serial, view = engine.store.serving_view()
    edited = []
    for row, entities in view:
        if row.name == "broken":
            (entity,) = entities
            model = json.loads(json.dumps(entity.config["external_model"]))
            model["openai_config"]["openai_api_base"] = 5  # `.rstrip` of an int
            config = {**entity.config, "external_model": model}
            entities = [dataclasses.replace(entity, config=config)]
        edited.append((row, entities))

    def resolve(reference: str) -> str:
        return engine.secrets.resolve(reference)

    async def scenario() -> tuple[Any, ApiError]:
        builder = TableBuilder(resolve)
        table = builder.build(serial, edited)
        try:
            dataplane = DataPlane(InProcessLimits(), Metrics(), None)
            with pytest.raises(ApiError) as caught:
                await dataplane.invoke(_no_send, table, Principal("alice"), "broken", dict(CHAT))
            return table, caught.value
        finally:
            await builder.close()

    table, refused = asyncio.run(scenario())
    engine.close()
    broken = table.endpoints["broken"].entities["b"]
    assert broken.upstream is None
    assert broken.unavailable == "the openai adapter cannot be built (AttributeError)"
    assert table.endpoints["fine"].entities["f"].upstream is not None
    assert (refused.status, refused.error_code) == (503, "TEMPORARILY_UNAVAILABLE")
    assert "served entity 'b'" in refused.message and "AttributeError" in refused.message


async def _no_send(message: dict[str, Any]) -> None:
    raise AssertionError(f"nothing is sent for a refused request: {message}")


def test_cli_apply_of_a_bad_vertex_key_fails_with_one_clear_line(tmp_path: Path) -> None:
    # A service-account JSON key whose private_key is not a PEM key.
    bad = json.loads(service_account_key("http://127.0.0.1:9/token"))
    bad["private_key"] = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC-not-really-a-key"
    config = {
        "project_id": "proj",
        "region": "us-central1",
        "private_key_plaintext": json.dumps(bad),
    }
    model = {
        "name": "gemini-1.5-pro",
        "provider": "google-cloud-vertex-ai",
        "task": "llm/v1/chat",
        "google_cloud_vertex_ai_config": config,
    }
    specs = write_specs(
        tmp_path / "specs", [endpoint("bad-vertex", [{"name": "g", "external_model": model}])]
    )
    state = tmp_path / "state.db"
    result = run_cli("apply", str(specs), "--auto-approve", env={"ENGINE_STATE": str(state)})
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: bad-vertex")]
    assert len(errors) == 1, result.stderr
    assert "private_key is not a usable service-account JSON key" in errors[0]
    assert "its private_key is not a PEM key" in errors[0]
    assert "Traceback" not in result.stderr
    output = result.stdout + result.stderr
    assert bad["private_key"] not in output and "BEGIN PRIVATE KEY" not in output
    engine = Engine(state)
    try:
        row = engine.store.get_endpoint("bad-vertex")
        assert row is not None and row.config_update == "UPDATE_FAILED"
        assert "private_key" in row.update_message
        assert all(e.deployment != "DEPLOYMENT_READY" for e in engine.store.entities("bad-vertex"))
    finally:
        engine.close()
