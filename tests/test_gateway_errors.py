"""Provider failures through a real `engine serve`: each wire format's errors, mapped at the edge.

An upstream 401/403 is the provider refusing the engine's credentials (502), never the caller's
own 401; 400/404/422 pass the provider's message on as 400; 429 keeps (or gets) a Retry-After;
5xx and a refused connection are 502, a timeout 504, a `usage` of the wrong type 502. Never a 500,
never a secret in the message. One loopback server speaks OpenAI, Anthropic, Vertex AI and
Bedrock (tests/provider_fakes.py); each served entity's model name scripts its answer.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from engine_harness import Engine, write_specs
from mock_http import MockUpstream
from provider_fakes import ScriptedProviders, external_model, service_account_key
from serving_harness import ServerProcess, endpoint, free_port

from engine.access.tokens import create_token

SECRETS = {
    "openai": "sk-openai-secret-4f1c2a7e",
    "anthropic": "sk-ant-secret-9b3e61d0",
    "aws-id": "AKIAFAKEKEYID7Q2",
    "aws-secret": "aws-secret-key-7d2a90c4e1",
}
WIRES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "vertex": "google-cloud-vertex-ai",
    "bedrock": "amazon-bedrock",
}
KEYS = {
    "openai": "{{secrets/keys/openai}}",
    "anthropic": "{{secrets/keys/anthropic}}",
    "vertex": "{{secrets/keys/vertex}}",
    "bedrock": "{{secrets/keys/aws-secret}}",
}
# scenario (= entity and model name) -> (status, error_code, words in the message)
EXPECTED: dict[str, tuple[int, str, str]] = {
    "s401": (502, "TEMPORARILY_UNAVAILABLE", "rejected the engine's credentials"),
    "s403": (502, "TEMPORARILY_UNAVAILABLE", "rejected the engine's credentials"),
    "s400": (400, "INVALID_PARAMETER_VALUE", "says no (400)"),
    "s404": (400, "INVALID_PARAMETER_VALUE", "says no (404)"),
    "s422": (400, "INVALID_PARAMETER_VALUE", "says no (422)"),
    "s429": (429, "REQUEST_LIMIT_EXCEEDED", "says no (429)"),
    "s429-retry7": (429, "REQUEST_LIMIT_EXCEEDED", "says no (429)"),
    "s500": (502, "TEMPORARILY_UNAVAILABLE", "says no (500)"),
    "s503": (502, "TEMPORARILY_UNAVAILABLE", "says no (503)"),
    "slow": (504, "DEADLINE_EXCEEDED", "in time"),
    "down": (502, "TEMPORARILY_UNAVAILABLE", ""),
    "usage-str": (502, "TEMPORARILY_UNAVAILABLE", ""),
    "usage-field": (502, "TEMPORARILY_UNAVAILABLE", ""),
}
STREAMED = ("s401", "s404", "s429-retry7", "s500", "down")
READ_TIMEOUT_S = 2  # the gateway's upstream read timeout here; "slow" answers after 6 s
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("gateway-errors")
    with MockUpstream(ScriptedProviders()) as upstream:
        closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        engine = Engine(root / "state" / "state.db")
        engine.secrets.create_scope("keys")
        for name, value in SECRETS.items():
            engine.secrets.put_secret("keys", name, value)
        engine.secrets.put_secret("keys", "vertex", service_account_key(f"{upstream.url}/token"))
        specs = []
        for short, provider in WIRES.items():
            entities = []
            for scenario in ("ok", *EXPECTED):
                base = closed if scenario == "down" else upstream.url
                model = external_model(
                    provider, scenario, base, KEYS[short], key_id="{{secrets/keys/aws-id}}"
                )
                entities.append({"name": scenario, "external_model": model})
            split = [100] + [0] * (len(entities) - 1)
            specs.append(endpoint(short, entities, split))
        _, report = engine.apply(write_specs(root / "specs", specs))
        assert report.ok, report.failed
        _, token = create_token(engine.store, "alice@example.com")
        env = {"ENGINE_UPSTREAM_READ_TIMEOUT": str(READ_TIMEOUT_S)}
        with ServerProcess(engine.state, env=env) as server:
            server.wait_serial(engine.store.serial)
            with httpx.Client(
                base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as client:
                yield client, server
        engine.close()


def _ask(client: httpx.Client, wire: str, scenario: str, **extra: Any) -> httpx.Response:
    path = f"/serving-endpoints/{wire}/served-models/{scenario}/invocations"
    return client.post(path, json={**CHAT, **extra})


def _assert_no_secret(text: str) -> None:
    for value in SECRETS.values():
        assert value not in text
    assert "BEGIN PRIVATE KEY" not in text and "ya29." not in text


@pytest.mark.parametrize("wire", list(WIRES))
def test_a_working_entity_answers(gateway, wire: str) -> None:  # noqa: ANN001
    client, _ = gateway
    response = _ask(client, wire, "ok")
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] == 5


@pytest.mark.parametrize("scenario", list(EXPECTED))
@pytest.mark.parametrize("wire", list(WIRES))
def test_provider_failures_are_mapped(gateway, wire: str, scenario: str) -> None:  # noqa: ANN001
    client, _ = gateway
    status, code, words = EXPECTED[scenario]
    response = _ask(client, wire, scenario)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] == code
    assert words in body["message"]
    assert repr(scenario) in body["message"]  # it names the served entity
    _assert_no_secret(response.text)
    if scenario[1:4].isdigit():
        # The provider's message is passed on, with the key it quoted back masked.
        assert "was refused" in body["message"]
        assert "[REDACTED]" in body["message"] or "***" in body["message"]
    if scenario == "s429":
        assert response.headers["retry-after"] == "1"  # the default: the upstream said none
    elif scenario == "s429-retry7":
        assert response.headers["retry-after"] == "7"  # the upstream's own
    else:
        assert "retry-after" not in response.headers


@pytest.mark.parametrize("scenario", STREAMED)
@pytest.mark.parametrize("wire", list(WIRES))
def test_failures_before_a_stream_starts_are_mapped(
    gateway,  # noqa: ANN001
    wire: str,
    scenario: str,
) -> None:
    client, _ = gateway
    status, code, words = EXPECTED[scenario]
    response = _ask(client, wire, scenario, stream=True)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error_code"] == code and words in response.json()["message"]
    _assert_no_secret(response.text)
    if scenario == "s429-retry7":
        assert response.headers["retry-after"] == "7"


def test_upstream_errors_are_counted_not_crashes(gateway) -> None:  # noqa: ANN001
    client, server = gateway
    _ask(client, "openai", "s401")
    metrics = client.get("/metrics").text
    assert 'status="502"' in metrics
    assert 'status="500"' not in metrics and 'status="401"' not in metrics
