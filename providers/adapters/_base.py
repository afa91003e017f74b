"""The provider adapter interface: unified `llm/v1` requests in, OpenAI-shaped responses out.

An adapter serves one external-model entity. It is built from the entity's config with every
secret already resolved (the engine resolves; providers never import engine/), and one pooled
`httpx.AsyncClient` per upstream that the gateway owns and closes.

Request bodies are the unified schema (OpenAI's): chat `messages`, completions `prompt`,
embeddings `input`; `temperature`, `max_tokens`, `n`, `stop`, `stream`; other keys are
provider parameters passed through where the provider has them.

Responses are OpenAI's shapes with `usage` (`prompt_tokens`, `completion_tokens`,
`total_tokens`). Streams yield OpenAI `chat.completion.chunk` / `text_completion` chunk dicts;
the last chunk carries `usage` when the provider reports it. Embeddings are float lists (the
gateway encodes base64 when asked).

Exceptions::

    ProviderError                 kind + upstream status + message (never a key or token)
      kind = "upstream_client"    upstream said 4xx: the gateway answers the same status
      kind = "upstream_server"    upstream said 5xx or sent garbage: 502
      kind = "timeout"            no answer in time: 504
      kind = "unsupported"        this provider cannot do this task: 400
      kind = "config"             the entity's config cannot work: 500
"""

from __future__ import annotations

import json
import time
import uuid
from abc import ABC
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import httpx

__all__ = [
    "ProviderAdapter",
    "ProviderError",
    "Json",
    "chat_response",
    "completion_response",
    "chunk",
    "embeddings_response",
    "usage",
    "raise_for_upstream",
    "upstream_error_message",
    "send",
    "stream_lines",
]

Json = dict[str, Any]


class ProviderError(Exception):
    def __init__(self, kind: str, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status

    @property
    def http_status(self) -> int:
        """The status the gateway answers with."""
        if self.kind == "upstream_client" and self.status is not None:
            return self.status
        return {"timeout": 504, "unsupported": 400, "config": 500}.get(self.kind, 502)


class ProviderAdapter(ABC):
    """Translation for one provider. Override the `_` methods the provider supports."""

    PROVIDER: ClassVar[str]
    # Default base URL (the provider's official API); `*_api_base` in the config overrides it.
    DEFAULT_BASE: ClassVar[str] = ""

    def __init__(self, model: Json, client: httpx.AsyncClient) -> None:
        """`model` is the entity's `external_model` block, secrets resolved."""
        self.model = model
        self.name: str = model["name"]
        self.client = client

    # Public API: the gateway calls these.
    async def chat(self, body: Json) -> Json:
        return await self._chat(body)

    def chat_stream(self, body: Json) -> AsyncIterator[Json]:
        return self._chat_stream(body)

    async def completions(self, body: Json) -> Json:
        return await self._completions(body)

    def completions_stream(self, body: Json) -> AsyncIterator[Json]:
        return self._completions_stream(body)

    async def embeddings(self, body: Json) -> Json:
        return await self._embeddings(body)

    # Implementations.
    async def _chat(self, body: Json) -> Json:
        raise self._unsupported("llm/v1/chat")

    def _chat_stream(self, body: Json) -> AsyncIterator[Json]:
        raise self._unsupported("streaming llm/v1/chat")

    async def _completions(self, body: Json) -> Json:
        raise self._unsupported("llm/v1/completions")

    def _completions_stream(self, body: Json) -> AsyncIterator[Json]:
        raise self._unsupported("streaming llm/v1/completions")

    async def _embeddings(self, body: Json) -> Json:
        raise self._unsupported("llm/v1/embeddings")

    def _unsupported(self, what: str) -> ProviderError:
        return ProviderError("unsupported", f"provider {self.PROVIDER!r} does not support {what}")


# -- shared response builders ---------------------------------------------------------------


def usage(prompt: int | None, completion: int | None) -> Json:
    p, c = prompt or 0, completion or 0
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_response(
    model: str,
    contents: list[tuple[str, str | None]],
    prompt_tokens: int | None,
    completion_tokens: int | None,
    *,
    response_id: str | None = None,
) -> Json:
    """`contents`: one (text, finish_reason) per choice."""
    return {
        "id": response_id or _id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }
            for i, (text, finish) in enumerate(contents)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_response(
    model: str,
    contents: list[tuple[str, str | None]],
    prompt_tokens: int | None,
    completion_tokens: int | None,
    *,
    response_id: str | None = None,
) -> Json:
    return {
        "id": response_id or _id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": i, "text": text, "finish_reason": finish, "logprobs": None}
            for i, (text, finish) in enumerate(contents)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chunk(
    model: str,
    response_id: str,
    *,
    text: str | None = None,
    role: str | None = None,
    finish_reason: str | None = None,
    index: int = 0,
    chat: bool = True,
    usage_: Json | None = None,
) -> Json:
    """One streaming chunk in OpenAI's shape (chat delta or completion text)."""
    if chat:
        delta: Json = {}
        if role is not None:
            delta["role"] = role
        if text is not None:
            delta["content"] = text
        choice: Json = {"index": index, "delta": delta, "finish_reason": finish_reason}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": index, "text": text or "", "finish_reason": finish_reason}
        obj = "text_completion"
    out: Json = {
        "id": response_id,
        "object": obj,
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
    }
    if usage_ is not None:
        out["usage"] = usage_
    return out


def embeddings_response(model: str, vectors: list[list[float]], prompt_tokens: int | None) -> Json:
    return {
        "object": "list",
        "model": model,
        "data": [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(vectors)
        ],
        "usage": usage(prompt_tokens, 0),
    }


# -- shared transport helpers -----------------------------------------------------------------


def upstream_error_message(response: httpx.Response) -> str:
    """The provider's own message from an error body (every provider nests it differently)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        text = response.text.strip()
        return text[:500] or f"HTTP {response.status_code}"
    for path in (("error", "message"), ("message",), ("error",), ("detail",), ("Message",)):
        value: Any = body
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            return value
    return json.dumps(body)[:500]


def raise_for_upstream(response: httpx.Response, provider: str) -> None:
    if response.status_code < 400:
        return
    message = f"{provider} error: {upstream_error_message(response)}"
    kind = "upstream_client" if response.status_code < 500 else "upstream_server"
    raise ProviderError(kind, message, status=response.status_code)


async def send(
    client: httpx.AsyncClient, provider: str, method: str, url: str, **kwargs: Any
) -> httpx.Response:
    """One request with transport errors mapped (the most specific first)."""
    try:
        response = await client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        raise ProviderError("timeout", f"{provider} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise ProviderError(
            "upstream_server", f"cannot reach {provider}: {type(exc).__name__}"
        ) from None
    raise_for_upstream(response, provider)
    return response


async def stream_lines(
    client: httpx.AsyncClient,
    provider: str,
    method: str,
    url: str,
    handle: Callable[[str], Any] | None = None,
    **kwargs: Any,
) -> AsyncIterator[str]:
    """Lines of a streaming response; status is checked before the first line."""
    try:
        async with client.stream(method, url, **kwargs) as response:
            if response.status_code >= 400:
                await response.aread()
                raise_for_upstream(response, provider)
            async for line in response.aiter_lines():
                yield line
    except httpx.TimeoutException:
        raise ProviderError("timeout", f"{provider} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise ProviderError(
            "upstream_server", f"{provider} stream failed: {type(exc).__name__}"
        ) from None
