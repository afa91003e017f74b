"""The provider adapter interface: unified `llm/v1` requests in, OpenAI-shaped responses out.

An adapter serves one external-model entity. It is built from the entity's config with every
secret already resolved (the engine resolves; providers never import engine/), and one pooled
`UpstreamClient` per upstream that the gateway owns and closes. Building one does no I/O, so
apply builds it too, to check the config before anything serves.

Request bodies are the unified schema (OpenAI's): chat `messages`, completions `prompt`,
embeddings `input`; `temperature`, `max_tokens`, `n`, `stop`, `stream`; other keys are
provider parameters passed through where the provider has them.

Responses are OpenAI's shapes with `usage` (`prompt_tokens`, `completion_tokens`,
`total_tokens`). Streams yield OpenAI `chat.completion.chunk` / `text_completion` chunk dicts;
the last chunk carries `usage` when the provider reports it. Embeddings are float lists (the
gateway encodes base64 when asked).

Exceptions (what failed, never an HTTP answer: the gateway maps a kind and upstream status to
its own status in one place, engine/gateway/_errors.py; an upstream 401 is not the caller's)::

    ProviderError                 kind + upstream status + message (never a key or token)
      kind = "upstream_client"    upstream said 4xx (`status`; a 429's `retry_after` seconds)
      kind = "upstream_server"    upstream said 5xx, sent garbage, or cannot be reached
      kind = "timeout"            no answer in time
      kind = "unsupported"        this provider cannot do this task
      kind = "config"             the entity's config cannot work (e.g. its key is refused)
      kind = "unavailable"        the entity cannot serve now (raised by the gateway, not adapters)
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
import uuid
from abc import ABC
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import httpx

from schemas import now_ms

from ._client import UpstreamClient, UpstreamReply, UpstreamStream

__all__ = [
    "BaseStreamState",
    "ProviderAdapter",
    "ProviderError",
    "Json",
    "chat_id",
    "chat_response",
    "completion_response",
    "chunk",
    "embeddings_response",
    "usage",
    "new_id",
    "raise_for_upstream",
    "upstream_error_message",
    "response_json",
    "retry_after",
    "redact",
    "redacting",
    "REDACTED",
    "send",
    "stream_bytes",
    "stream_lines",
]

Json = dict[str, Any]
_T = TypeVar("_T")


class ProviderError(Exception):
    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        # Seconds the upstream asked us to wait (its Retry-After), when it said.
        self.retry_after = retry_after


class ProviderAdapter(ABC):
    """Translation for one provider. Override the `_` methods the provider supports."""

    PROVIDER: ClassVar[str]
    # Default base URL (the provider's official API); `*_api_base` in the config overrides it.
    DEFAULT_BASE: ClassVar[str] = ""

    def __init__(self, model: Json, client: UpstreamClient) -> None:
        """`model` is the entity's `external_model` block, secrets resolved. No I/O here."""
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
    """OpenAI's `usage` from two counts (None is 0); a count that is no whole number >= 0 is
    the upstream's garbage (a ProviderError, not a TypeError deep in the gateway)."""
    p, c = _count(prompt), _count(completion)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProviderError(
            "upstream_server", "the upstream sent a token count that is not a whole number"
        )
    return value


def new_id(prefix: str) -> str:
    """A fresh response id, e.g. `chatcmpl-…`, for an upstream that sends none."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def chat_id() -> str:
    """A fresh chat completion id (a stream state's default before the upstream names one)."""
    return new_id("chatcmpl")


def _response(
    kind: str,
    prefix: str,
    model: str,
    choices: list[Json],
    prompt_tokens: int | None,
    completion_tokens: int | None,
    response_id: str | None,
) -> Json:
    return {
        "id": response_id or new_id(prefix),
        "object": kind,
        "created": now_ms() // 1000,
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_response(
    model: str,
    contents: list[tuple[str, str | None]],
    prompt_tokens: int | None,
    completion_tokens: int | None,
    *,
    response_id: str | None = None,
) -> Json:
    """`contents`: one (text, finish_reason) per choice."""
    choices = [
        {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        for i, (text, finish) in enumerate(contents)
    ]
    return _response(
        "chat.completion", "chatcmpl", model, choices, prompt_tokens, completion_tokens, response_id
    )


def completion_response(
    model: str,
    contents: list[tuple[str, str | None]],
    prompt_tokens: int | None,
    completion_tokens: int | None,
    *,
    response_id: str | None = None,
) -> Json:
    choices = [
        {"index": i, "text": text, "finish_reason": finish, "logprobs": None}
        for i, (text, finish) in enumerate(contents)
    ]
    return _response(
        "text_completion", "cmpl", model, choices, prompt_tokens, completion_tokens, response_id
    )


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
        "created": now_ms() // 1000,
        "model": model,
        "choices": [choice],
    }
    if usage_ is not None:
        out["usage"] = usage_
    return out


@dataclass(slots=True)
class BaseStreamState:
    """What every stream translator tracks; each adapter's `StreamState` adds its own fields."""

    model: str
    chat: bool = True
    response_id: str = field(default_factory=chat_id)

    def chunk(self, **kwargs: Any) -> Json:
        """One chunk of this stream: `chunk` with its model, id and shape."""
        return chunk(self.model, self.response_id, chat=self.chat, **kwargs)


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

REDACTED = "[REDACTED]"


def upstream_error_message(source: UpstreamReply | Json | list[Any]) -> str:
    """The provider's own message from an error body (every provider nests it differently).

    `source` is the response, or its body already parsed (a stream's error event, say). A list
    is looked into at its first item: Google's APIs can answer `[{"error": {...}}]`.
    """
    body: Any = source
    if not isinstance(source, dict | list):
        try:
            body = source.json()
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            text = source.text.strip()
            return text[:500] or f"HTTP {source.status_code}"
    first = body[0] if isinstance(body, list) and body else body
    for path in (("error", "message"), ("message",), ("error",), ("detail",), ("Message",)):
        value: Any = first
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str) and value:
            return value
    return json.dumps(body)[:500]


def retry_after(response: UpstreamReply) -> float | None:
    """Seconds the upstream asks callers to wait: `retry-after-ms` (OpenAI, Azure), or
    `Retry-After` as seconds or an HTTP date (RFC 9110 10.2.3); None when absent or unreadable."""
    headers = response.headers
    millis = headers.get("retry-after-ms")
    try:
        if millis is not None and math.isfinite(float(millis)):
            return max(0.0, float(millis) / 1000)
    except ValueError:
        pass
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - dt.datetime.now(dt.UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def raise_for_upstream(response: UpstreamReply, provider: str) -> None:
    if response.status_code < 400:
        return
    message = f"{provider} error: {upstream_error_message(response)}"
    kind = "upstream_client" if response.status_code < 500 else "upstream_server"
    wait = retry_after(response) if response.status_code == 429 else None
    raise ProviderError(kind, message, status=response.status_code, retry_after=wait)


def response_json(response: UpstreamReply, provider: str, *, object_only: bool = False) -> Any:
    """A 2xx body as JSON; anything else is the upstream misbehaving (502), not the caller.

    `object_only`: the body must be a JSON object, as every native (non-OpenAI) API answers.
    """
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        if not object_only:
            raise ProviderError(
                "upstream_server", f"{provider} sent a response that is not JSON"
            ) from None
        body = None
    if object_only and not isinstance(body, dict):
        raise ProviderError("upstream_server", f"{provider} answered with a body that is not JSON")
    return body


def redact(
    exc: ProviderError, secrets: Iterable[str | None], mask: str = REDACTED
) -> ProviderError:
    """The same error with any secret an upstream echoed back masked (some echo the bad key)."""
    message = exc.message
    for secret in secrets:
        if secret:
            message = message.replace(secret, mask)
    if message == exc.message:
        return exc
    return ProviderError(exc.kind, message, status=exc.status, retry_after=exc.retry_after)


@contextmanager
def redacting(*secrets: str | None, mask: str = REDACTED) -> Iterator[None]:
    """`redact` every ProviderError raised inside the block (a call, a stream's whole life)."""
    try:
        yield
    except ProviderError as exc:
        masked = redact(exc, secrets, mask)
        if masked is exc:
            raise
        raise masked from None


async def send(
    client: UpstreamClient, provider: str, method: str, url: str, **kwargs: Any
) -> UpstreamReply:
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


async def _streamed(
    client: UpstreamClient,
    provider: str,
    method: str,
    url: str,
    pieces: Callable[[UpstreamStream], AsyncIterator[_T]],
    kwargs: Json,
) -> AsyncIterator[_T]:
    """`pieces` of a streaming response; status is checked before the first one arrives."""
    try:
        async with client.stream(method, url, **kwargs) as response:
            if response.status_code >= 400:
                await response.aread()
                raise_for_upstream(response, provider)
            async for piece in pieces(response):
                yield piece
    except httpx.TimeoutException:
        raise ProviderError("timeout", f"{provider} did not answer in time") from None
    except httpx.HTTPError as exc:
        raise ProviderError(
            "upstream_server", f"{provider} stream failed: {type(exc).__name__}"
        ) from None


def stream_bytes(
    client: UpstreamClient, provider: str, method: str, url: str, **kwargs: Any
) -> AsyncIterator[bytes]:
    """Bytes of a streaming response as they arrive (binary framing: AWS event streams).

    The status is checked before the first byte (an error body becomes a ProviderError) and
    transport errors are mapped to timeout / upstream_server.
    """
    return _streamed(client, provider, method, url, lambda r: r.aiter_bytes(), kwargs)


def stream_lines(
    client: UpstreamClient, provider: str, method: str, url: str, **kwargs: Any
) -> AsyncIterator[str]:
    """Lines of a streaming response (SSE); the same checks and error mapping as `stream_bytes`.

    The lines come from the client's own reader (httpx's, or aiohttp's on the gateway's hot
    path), so they split and decode exactly as each client does.
    """
    return _streamed(client, provider, method, url, lambda r: r.aiter_lines(), kwargs)
