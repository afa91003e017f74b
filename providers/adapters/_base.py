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

The gateway streams through `chat_sse` / `completions_sse`: the client's SSE bytes, ending in
`data: [DONE]` only when the upstream's stream ended as its format says a stream ends, with
the usage seen recorded in a `StreamTally`. By default they frame the translated chunks;
adapters whose upstream already speaks OpenAI's stream format pass its bytes through.

Exceptions (what failed, never an HTTP answer: the gateway maps a kind and upstream status to
its own status in one place, engine/gateway/_errors.py; an upstream 401 is not the caller's)::

    ProviderError                 kind + upstream status + message (never a key or token)
      kind = "upstream_client"    upstream said 4xx (`status`; a 429's `retry_after` seconds)
      kind = "upstream_server"    upstream said 5xx, sent garbage, or cannot be reached
      kind = "timeout"            no answer in time
      kind = "unsupported"        this provider cannot do this task
      kind = "config"             the entity's config cannot work (e.g. its key is refused)
      kind = "unavailable"        the entity cannot serve now (raised by the gateway, not adapters)
      StreamError                 the upstream accepted a stream (2xx), then broke it: not an
                                  event stream, cut before its end, a failure mid-stream
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
import uuid
from abc import ABC
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import httpx

from schemas import now_ms

from ._client import UpstreamClient, UpstreamReply, UpstreamStream
from ._sse import DONE, event

__all__ = [
    "BaseStreamState",
    "ProviderAdapter",
    "ProviderError",
    "StreamError",
    "StreamTally",
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
    "SSE_TYPE",
    "send",
    "sse_frames",
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


class StreamError(ProviderError):
    """The upstream answered a stream request with 2xx and then failed it.

    Whatever the gateway has sent by then, the client's answer is a stream: the error is its
    last event (an upstream that refused the stream keeps its status instead).
    """


@dataclass(slots=True)
class StreamTally:
    """What the gateway accounts for one stream, filled in as its events pass."""

    # The upstream's last `usage` object (OpenAI's keys), None until one is seen.
    usage: Json | None = None


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

    def chat_sse(self, body: Json, tally: StreamTally) -> AsyncIterator[bytes]:
        """The chat stream as the client's SSE bytes (see the module docstring)."""
        return self._chat_sse(body, tally)

    def completions_sse(self, body: Json, tally: StreamTally) -> AsyncIterator[bytes]:
        return self._completions_sse(body, tally)

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

    def _chat_sse(self, body: Json, tally: StreamTally) -> AsyncIterator[bytes]:
        return sse_frames(lambda: self.chat_stream(body), tally)

    def _completions_sse(self, body: Json, tally: StreamTally) -> AsyncIterator[bytes]:
        return sse_frames(lambda: self.completions_stream(body), tally)

    def _unsupported(self, what: str) -> ProviderError:
        return ProviderError("unsupported", f"provider {self.PROVIDER!r} does not support {what}")


# -- shared response builders ---------------------------------------------------------------


def usage(prompt: int | None, completion: int | None) -> Json:
    """OpenAI's `usage` from two counts (None is 0); a count that is no whole number >= 0 is
    the upstream's garbage (a ProviderError, not a TypeError deep in the gateway)."""
    p, c = _count(prompt), _count(completion)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _count(value: Any) -> int:
    if type(value) is int and value >= 0:  # the common case first (bool is not int here)
        return value
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


async def sse_frames(
    open_chunks: Callable[[], AsyncIterator[Json]], tally: StreamTally
) -> AsyncIterator[bytes]:
    """Translated chunks as SSE events, then `[DONE]` (a translator raises if its stream broke).

    The chunks are opened at the first frame: an adapter that rejects the request at the call
    (content it cannot send, say) raises where every other stream error is raised.
    """
    async with aclosing(open_chunks()) as chunks:
        async for item in chunks:
            tally.usage = item.get("usage") or tally.usage
            yield event(item)
    yield DONE


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
    return type(exc)(  # a StreamError stays one
        exc.kind, message, status=exc.status, retry_after=exc.retry_after
    )


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


SSE_TYPE = "text/event-stream"
# How much of a body that is not a stream is read for its message.
_PEEK = 4096


async def _not_a_stream(response: UpstreamStream, provider: str, media: str) -> StreamError:
    """A 2xx answer in another format, e.g. a JSON body from a server that ignored `stream`."""
    head = b""
    async for piece in response.aiter_bytes():
        head += piece
        if len(head) >= _PEEK:
            break
    text = head[:_PEEK].decode("utf-8", errors="replace").strip()
    try:
        said = upstream_error_message(json.loads(text)) if text else ""
    except ValueError:
        said = text[:200]
    detail = f": {said}" if said else ""
    return StreamError(
        "upstream_server",
        f"{provider} answered the stream request with {media}, not an event stream{detail}",
    )


async def _streamed(
    client: UpstreamClient,
    provider: str,
    method: str,
    url: str,
    pieces: Callable[[UpstreamStream], AsyncIterator[_T]],
    kwargs: Json,
    content_type: str | None,
) -> AsyncIterator[_T]:
    """`pieces` of a streaming response; status and format are checked before the first one.

    Failures after a 2xx are StreamErrors: the upstream had accepted the stream.
    """
    accepted = False
    try:
        async with client.stream(method, url, **kwargs) as response:
            if response.status_code >= 400:
                await response.aread()
                raise_for_upstream(response, provider)
            accepted = True
            media = (response.headers.get("content-type") or "").split(";")[0].strip().lower()
            if content_type is not None and media and media != content_type:
                raise await _not_a_stream(response, provider, media)
            async for piece in pieces(response):
                yield piece
    except httpx.TimeoutException:
        error = StreamError if accepted else ProviderError
        raise error("timeout", f"{provider} did not answer in time") from None
    except httpx.HTTPError as exc:
        error = StreamError if accepted else ProviderError
        raise error("upstream_server", f"{provider} stream failed: {type(exc).__name__}") from None


def stream_bytes(
    client: UpstreamClient,
    provider: str,
    method: str,
    url: str,
    *,
    content_type: str | None = None,
    **kwargs: Any,
) -> AsyncIterator[bytes]:
    """Bytes of a streaming response as they arrive (passed-through SSE, AWS event streams).

    The status is checked before the first byte (an error body becomes a ProviderError), a
    2xx of another `content_type` than the one given is a StreamError, and transport errors
    are mapped to timeout / upstream_server.
    """
    return _streamed(client, provider, method, url, lambda r: r.aiter_bytes(), kwargs, content_type)


def stream_lines(
    client: UpstreamClient, provider: str, method: str, url: str, **kwargs: Any
) -> AsyncIterator[str]:
    """Lines of an SSE response; the same checks and error mapping as `stream_bytes`.

    The lines come from the client's own reader (httpx's, or aiohttp's on the gateway's hot
    path), so they split and decode exactly as each client does.
    """
    return _streamed(client, provider, method, url, lambda r: r.aiter_lines(), kwargs, SSE_TYPE)
