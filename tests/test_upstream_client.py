"""The UpstreamClient seam: both clients implement it, and every adapter builds on each.

An adapter built on a client without a member it reads fails when the gateway builds its
routing table (a Vertex AI endpoint once stopped `engine serve` from starting because the
gateway's client had no `timeout`). So every registered adapter is built here on the gateway's
own client and on the client apply checks configs with.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from provider_fakes import service_account_key

from engine.gateway._table import upstream_timeout
from providers.adapters import (
    ProviderAdapter,
    UpstreamClient,
    UpstreamReply,
    UpstreamStream,
    adapter_for,
    registered_adapters,
)
from providers.adapters._transport import AiohttpClient, UpstreamResponse
from providers.external import check_adapter

if TYPE_CHECKING:
    # For a type checker: both clients are UpstreamClients (the tests below check at run time).
    _gateway_client: UpstreamClient = AiohttpClient()
    _httpx_client: UpstreamClient = httpx.AsyncClient()

BASE = "http://127.0.0.1:9"  # never called: building an adapter does no I/O

# A valid, minimal `external_model` block per registered provider. A provider registered
# without one here fails test_every_provider_has_a_minimal_config: add it.
MINIMAL: dict[str, dict[str, Any]] = {
    "openai": {"openai_config": {"openai_api_key": "sk-x"}},
    "anthropic": {"anthropic_config": {"anthropic_api_key": "sk-ant-x"}},
    "cohere": {"cohere_config": {"cohere_api_key": "co-x"}},
    "amazon-bedrock": {
        "amazon_bedrock_config": {
            "aws_region": "us-east-1",
            "bedrock_provider": "anthropic",
            "aws_access_key_id": "AKIDEXAMPLE",
            "aws_secret_access_key": "secret",
        }
    },
    "google-cloud-vertex-ai": {
        "google_cloud_vertex_ai_config": {
            "project_id": "proj",
            "region": "us-central1",
            "private_key": service_account_key(f"{BASE}/token"),
        }
    },
    "databricks-model-serving": {
        "databricks_model_serving_config": {
            "databricks_workspace_url": "https://example.cloud.databricks.com",
            "databricks_api_token": "dapi-x",
        }
    },
    "custom": {
        "custom_provider_config": {
            "custom_provider_url": f"{BASE}/v1",
            "bearer_token_auth": {"token": "t"},
        }
    },
    "ai21labs": {"ai21labs_config": {"ai21labs_api_key": "ai21-x"}},
    "palm": {"palm_config": {"palm_api_key": "palm-x"}},
}


def _model(provider: str) -> dict[str, Any]:
    return {"name": "m", "provider": provider, "task": "llm/v1/chat", **MINIMAL[provider]}


def test_both_clients_are_upstream_clients() -> None:
    async def main() -> None:
        gateway = AiohttpClient(timeout=upstream_timeout())
        async with httpx.AsyncClient() as plain:
            assert isinstance(gateway, UpstreamClient)
            assert isinstance(plain, UpstreamClient)
            assert gateway.timeout.read == 300.0 and plain.timeout.read == 5.0
        await gateway.aclose()

    asyncio.run(main())
    # Their answers too: the gateway's buffered one, and httpx's (buffered or streamed).
    assert isinstance(UpstreamResponse(200, {}, b"{}"), UpstreamReply)
    assert isinstance(httpx.Response(200, json={}), UpstreamStream)
    assert not isinstance(object(), UpstreamClient)


def test_every_provider_has_a_minimal_config() -> None:
    assert set(MINIMAL) == set(registered_adapters())


@pytest.mark.parametrize("provider", sorted(registered_adapters()))
def test_every_adapter_builds_on_the_gateway_client(provider: str) -> None:
    async def main() -> ProviderAdapter:
        # The client exactly as the routing table makes it.
        client = AiohttpClient(timeout=upstream_timeout(), max_connections=256, keepalive=15.0)
        try:
            return adapter_for(_model(provider), client)
        finally:
            await client.aclose()

    adapter = asyncio.run(main())
    assert type(adapter) is registered_adapters()[provider]


@pytest.mark.parametrize("provider", sorted(registered_adapters()))
def test_every_adapter_builds_on_the_apply_check_client(provider: str) -> None:
    check_adapter("ep/m#1", _model(provider))  # raises ExecutorError if it cannot


def test_the_gateway_client_takes_its_read_timeout_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENGINE_UPSTREAM_READ_TIMEOUT", "7.5")
    assert AiohttpClient(timeout=upstream_timeout()).timeout.read == 7.5
    for bad in ("soon", "0", "-1", "inf"):
        monkeypatch.setenv("ENGINE_UPSTREAM_READ_TIMEOUT", bad)
        assert upstream_timeout().read == 300.0
