"""Custom provider: any server that speaks OpenAI's API (vLLM, TGI, llama.cpp, a proxy, ...).

Upstream API: https://platform.openai.com/docs/api-reference/chat/create (the format copied)

    custom_provider_url: https://llm.internal/v1
    api_key_auth: {key: X-API-Key, value: ...}
    POST https://llm.internal/v1/chat/completions
    X-API-Key: ...
    {"model": "my-llm", "messages": [{"role": "user", "content": "Hi"}]}
    -> {"object": "chat.completion", "choices": [...], "usage": {...}}

`custom_provider_url` is the base URL; a URL that already ends in a route
(`.../chat/completions`, `.../completions`, `.../embeddings`) is used as written for that route.
"""

from __future__ import annotations

import httpx

from ._base import Json
from ._client import UpstreamClient
from ._registry import register_adapter
from .openai import CHAT, COMPLETIONS, EMBEDDINGS, OpenAICompatibleAdapter, credential, require

__all__ = ["CustomAdapter", "route_url"]

# Longest first: ".../chat/completions" also ends in "/completions".
_ROUTES = (CHAT, COMPLETIONS, EMBEDDINGS)


def route_url(configured: str, route: str) -> str:
    """The URL for `route` (e.g. "chat/completions") given the configured URL; query kept."""
    url = httpx.URL(configured)
    path = url.path.rstrip("/")
    for known in _ROUTES:
        if path.endswith(f"/{known}"):
            path = path[: -len(known) - 1]
            break
    return str(url.copy_with(path=f"{path}/{route}"))


@register_adapter
class CustomAdapter(OpenAICompatibleAdapter):
    PROVIDER = "custom"

    def __init__(self, model: Json, client: UpstreamClient) -> None:
        super().__init__(model, client)
        config: Json = model.get("custom_provider_config") or {}
        p = self.PROVIDER
        self.url = require(
            config.get("custom_provider_url"), p, "custom_provider_config.custom_provider_url"
        )
        self.auth_headers: dict[str, str] = {}
        api_key_auth: Json | None = config.get("api_key_auth")
        if api_key_auth:
            header = require(api_key_auth.get("key"), p, "api_key_auth.key")
            self.auth_headers[header] = require(
                credential(api_key_auth, "value"), p, "api_key_auth.value"
            )
        bearer: Json | None = config.get("bearer_token_auth")
        if bearer:
            token = require(credential(bearer, "token"), p, "bearer_token_auth.token")
            self.auth_headers["Authorization"] = f"Bearer {token}"

    def _url(self, route: str) -> tuple[str, dict[str, str] | None]:
        return route_url(self.url, route), None

    async def _headers(self) -> dict[str, str]:
        return dict(self.auth_headers)

    def _secrets(self) -> list[str | None]:
        # The bare token: an upstream echoing it back would not repeat our "Bearer " prefix.
        return [v.removeprefix("Bearer ") for v in self.auth_headers.values()]
