"""OpenAI and Azure OpenAI, and the transport every OpenAI-wire upstream shares.

Upstream API: https://platform.openai.com/docs/api-reference/chat/create
Azure OpenAI: https://learn.microsoft.com/azure/ai-services/openai/reference
Entra ID token: https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow

    POST https://api.openai.com/v1/chat/completions
    {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}
    -> {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}}

The upstream already speaks the unified schema, so translation is a pass-through: `model` is set
by the adapter (dropped where the URL names the model), `stream` follows the method called, and a
response only gets its `usage` completed where an OpenAI-compatible server leaves it out.

Streams reach the gateway's client as the upstream's own bytes (`chat_sse`), whole events at a
time: parsing and re-serialising every chunk cost 40-60 us per event. Only events that matter
are parsed, found by scanning bytes: one with a `usage` object (usually just the last chunk),
an `error`, and `[DONE]`, without which a stream did not end (it was cut).

    data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,
           "delta":{"content":"Hel"},"finish_reason":null}]}
    data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[],
           "usage":{"prompt_tokens":8,"completion_tokens":2,"total_tokens":10}}
    data: [DONE]
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from typing import Any
from urllib.parse import quote

from schemas import looks_like_secret_reference

from ._base import (
    SSE_TYPE,
    Json,
    ProviderAdapter,
    ProviderError,
    StreamError,
    StreamTally,
    redact,
    response_json,
    send,
    stream_bytes,
    stream_lines,
    upstream_error_message,
    usage,
)
from ._client import UpstreamClient
from ._common import credential as _lookup
from ._registry import register_adapter
from ._sse import EventFramer, event_data, parse_sse

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "EMBEDDINGS",
    "OpenAIAdapter",
    "OpenAICompatibleAdapter",
    "credential",
    "model_to_chunk",
    "model_to_response",
    "model_to_sse",
    "request_to_model",
    "require",
    "response_json",
    "scrub",
]

# Route suffixes of OpenAI's API (and of every server that copies it).
CHAT = "chat/completions"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"

# What an echoed secret becomes in an error message.
MASK = "***"

ENTRA_SCOPE = "https://cognitiveservices.azure.com/.default"
# azure-identity reads the same variable, so sovereign clouds work the same way for both.
ENTRA_AUTHORITY_ENV = "AZURE_AUTHORITY_HOST"
ENTRA_DEFAULT_AUTHORITY = "https://login.microsoftonline.com"


# -- config helpers (shared by every adapter in this family) ---------------------------------


def credential(config: Json, field: str) -> str | None:
    """A resolved secret from `field` or its `*_plaintext` twin (either may carry the value)."""
    value = _lookup(config, field)
    if value is None:
        return None
    value = str(value)
    if looks_like_secret_reference(value):
        # The engine resolves references before building adapters; sending one is a bug.
        raise ProviderError("config", f"{field} is an unresolved secret reference")
    return value


def require(value: str | None, provider: str, what: str) -> str:
    if not value:
        raise ProviderError("config", f"{provider}: {what} is required")
    return value


def scrub(exc: ProviderError, secrets: Iterable[str | None]) -> ProviderError:
    """`redact` with this family's mask."""
    return redact(exc, secrets, MASK)


# -- translation (pure: no I/O) ---------------------------------------------------------------


def request_to_model(
    body: Json, *, model: str | None, stream: bool = False, include_usage: bool = False
) -> Json:
    """Unified body -> upstream body: every key passes except `model` and `stream`, which we own."""
    out = {k: v for k, v in body.items() if k not in ("model", "stream")}
    if model is not None:
        out["model"] = model
    if stream:
        out["stream"] = True
        if include_usage:
            out.setdefault("stream_options", {"include_usage": True})
    else:
        # OpenAI answers 400 to stream_options on a non-streaming request.
        out.pop("stream_options", None)
    return out


def model_to_response(payload: Any, provider: str) -> Json:
    """An OpenAI-shaped response as-is, with `usage` filled in where the upstream left gaps."""
    if not isinstance(payload, dict):
        raise ProviderError("upstream_server", f"{provider} sent an unexpected response")
    raw = payload.get("usage")
    if raw is None:
        raw = {}
    elif not isinstance(raw, dict):
        raise ProviderError("upstream_server", f"{provider} sent a `usage` that is not an object")
    filled = usage(raw.get("prompt_tokens"), raw.get("completion_tokens"))
    filled.update({k: v for k, v in raw.items() if v is not None})
    return {**payload, "usage": filled}


def model_to_chunk(data: str, provider: str) -> Json | None:
    """One SSE `data:` payload -> the chunk dict as-is; None at the `[DONE]` sentinel."""
    if data.strip() == "[DONE]":
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        raise StreamError("upstream_server", f"{provider} sent a malformed stream event") from None
    if not isinstance(payload, dict):
        raise StreamError("upstream_server", f"{provider} sent a malformed stream event")
    error = _stream_error(payload, provider)
    if error is not None:
        raise error
    return payload


def _stream_error(payload: Json, provider: str) -> StreamError | None:
    if "error" in payload and "choices" not in payload:
        # An error after the 200 was sent: the status is gone, so it is the upstream's fault.
        message = upstream_error_message(payload)
        return StreamError("upstream_server", f"{provider} stream error: {message}")
    return None


# Byte patterns of the events worth parsing: `usage` holding an object (OpenAI sends
# `"usage":null` on every chunk when usage is asked for), an `error` key, and [DONE].
_MARKS = (b'"usage"', b'"error"', b"[DONE]")
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_ERROR = re.compile(rb'"error"\s*:')


def _next_mark(block: bytes, at: int) -> int:
    """Where the next event that may need reading has a mark; -1 when none does."""
    hits = [i for i in (block.find(mark, at) for mark in _MARKS) if i >= 0]
    return min(hits) if hits else -1


def _marked(block: bytes) -> bool:
    return b'"usage"' in block or b'"error"' in block or b"[DONE]" in block


def model_to_sse(
    block: bytes, tally: StreamTally, provider: str
) -> tuple[bytes, bool, StreamError | None]:
    """Whole SSE events of an OpenAI-wire stream -> (bytes to forward as they are, [DONE]
    seen, the upstream's error event). `usage` objects are recorded in `tally` on the way.

    Only the events holding a mark are cut out and looked at (a read can hold a whole
    stream's events). The forwarded bytes stop after `[DONE]`, or before an error event
    (the gateway sends its own error event instead).
    """
    if not _marked(block):
        return block, False, None  # the common case: a read of plain content chunks
    at = 0
    while (mark := _next_mark(block, at)) >= 0:
        start = block.rfind(b"\n\n", 0, mark)
        start = 0 if start < 0 else start + 2
        end = block.find(b"\n\n", mark)
        end = len(block) if end < 0 else end + 2
        raw, at = block[start:end], end
        data = event_data(raw)
        if data.strip() == b"[DONE]":
            return block[:end], True, None
        if _USAGE.search(raw) is None and _ERROR.search(raw) is None:
            continue  # `"usage":null`, or the words in a content string
        try:
            payload = json.loads(data)
        except ValueError:
            continue  # passed through as it came, like every event
        if isinstance(payload, dict):
            error = _stream_error(payload, provider)
            if error is not None:
                return block[:start], False, error
            if isinstance(payload.get("usage"), dict) and payload["usage"]:
                tally.usage = payload["usage"]
    return block, False, None


# -- transport ----------------------------------------------------------------------------------


class OpenAICompatibleAdapter(ProviderAdapter):
    """Calls for upstreams that speak OpenAI's wire format; subclasses say where and how to auth.

    Subclasses set `upstream_model` (None where the URL names the model) and `stream_usage`,
    and implement `_url`, `_headers` and `_secrets`.
    """

    def __init__(self, model: Json, client: UpstreamClient) -> None:
        super().__init__(model, client)
        self.upstream_model: str | None = self.name
        self.stream_usage = False

    def _url(self, route: str) -> tuple[str, dict[str, str] | None]:
        raise NotImplementedError

    async def _headers(self) -> dict[str, str]:
        raise NotImplementedError

    def _secrets(self) -> list[str | None]:
        """Every value that must never reach an error message."""
        return []

    async def _chat(self, body: Json) -> Json:
        return await self._call(CHAT, body)

    def _chat_stream(self, body: Json) -> AsyncIterator[Json]:
        return self._stream(CHAT, body)

    async def _completions(self, body: Json) -> Json:
        return await self._call(COMPLETIONS, body)

    def _completions_stream(self, body: Json) -> AsyncIterator[Json]:
        return self._stream(COMPLETIONS, body)

    async def _embeddings(self, body: Json) -> Json:
        # The contract is float vectors (the gateway encodes base64 itself when asked).
        body = {k: v for k, v in body.items() if k != "encoding_format"}
        return await self._call(EMBEDDINGS, body)

    async def _request(self, route: str, body: Json, *, stream: bool) -> Json:
        """The URL and keyword arguments of one POST (the headers may need a token fetched)."""
        url, params = self._url(route)
        include_usage = stream and self.stream_usage and route == CHAT
        return {
            "url": url,
            "params": params,
            "headers": await self._headers(),
            "json": request_to_model(
                body, model=self.upstream_model, stream=stream, include_usage=include_usage
            ),
        }

    async def _call(self, route: str, body: Json) -> Json:
        try:
            request = await self._request(route, body, stream=False)
            response = await send(self.client, self.PROVIDER, "POST", **request)
            return model_to_response(response_json(response, self.PROVIDER), self.PROVIDER)
        except ProviderError as exc:
            raise scrub(exc, self._secrets()) from None

    def _chat_sse(self, body: Json, tally: StreamTally) -> AsyncIterator[bytes]:
        return self._passthrough(CHAT, body, tally)

    def _completions_sse(self, body: Json, tally: StreamTally) -> AsyncIterator[bytes]:
        return self._passthrough(COMPLETIONS, body, tally)

    def _ended_early(self) -> StreamError:
        return StreamError("upstream_server", f"{self.PROVIDER} stream ended before [DONE]")

    async def _stream(self, route: str, body: Json) -> AsyncIterator[Json]:
        try:
            request = await self._request(route, body, stream=True)
            lines = stream_lines(self.client, self.PROVIDER, "POST", **request)
            # Close both generators on [DONE] or on error so the connection goes back now.
            async with aclosing(lines), aclosing(parse_sse(lines)) as events:
                async for event in events:
                    item = model_to_chunk(event.data, self.PROVIDER)
                    if item is None:
                        return
                    yield item
            raise self._ended_early()
        except ProviderError as exc:
            raise scrub(exc, self._secrets()) from None

    async def _passthrough(
        self, route: str, body: Json, tally: StreamTally
    ) -> AsyncIterator[bytes]:
        """The upstream's events as it sent them, up to its [DONE] (see `model_to_sse`)."""
        try:
            request = await self._request(route, body, stream=True)
            pieces = stream_bytes(
                self.client, self.PROVIDER, "POST", content_type=SSE_TYPE, **request
            )
            framer = EventFramer()
            async with aclosing(pieces):
                async for piece in pieces:
                    block = framer.feed(piece)
                    if not block:
                        continue
                    forward, done, error = model_to_sse(block, tally, self.PROVIDER)
                    if forward:
                        yield forward
                    if error is not None:
                        raise error
                    if done:
                        return  # closing `pieces` gives the connection back now
            raise self._ended_early()
        except ProviderError as exc:
            raise scrub(exc, self._secrets()) from None


# -- OpenAI / Azure OpenAI ------------------------------------------------------------------------


@register_adapter
class OpenAIAdapter(OpenAICompatibleAdapter):
    """OpenAI (`openai_api_type` openai), Azure OpenAI with a key (azure) or Entra ID (azuread)."""

    PROVIDER = "openai"
    DEFAULT_BASE = "https://api.openai.com/v1"
    # Refresh a token this long before it expires (azure-identity refreshes 5 minutes early).
    TOKEN_MARGIN_S = 300.0

    def __init__(
        self,
        model: Json,
        client: UpstreamClient,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(model, client)
        config: Json = model.get("openai_config") or {}
        p = self.PROVIDER
        self.api_type = str(config.get("openai_api_type") or "openai").lower()
        self.base = (config.get("openai_api_base") or self.DEFAULT_BASE).rstrip("/")
        self.organization: str | None = config.get("openai_organization")
        self.api_key = credential(config, "openai_api_key")
        self.client_secret: str | None = None
        self.api_version = self.deployment = self.tenant = self.client_id = self.token_url = ""
        self._clock = clock
        self._token: str | None = None
        self._token_expiry = 0.0
        self._token_lock = asyncio.Lock()

        if self.api_type == "openai":
            self.stream_usage = True
            require(self.api_key, p, "openai_config.openai_api_key")
            return
        if self.api_type not in ("azure", "azuread"):
            raise ProviderError("config", f"{p}: unknown openai_api_type {self.api_type!r}")
        # Azure: the deployment in the URL picks the model, and it has no stream_options.
        self.upstream_model = None
        kind = f"openai_api_type {self.api_type!r}"
        require(config.get("openai_api_base"), p, f"openai_config.openai_api_base for {kind}")
        self.api_version = require(
            config.get("openai_api_version"), p, f"openai_config.openai_api_version for {kind}"
        )
        self.deployment = require(
            config.get("openai_deployment_name"),
            p,
            f"openai_config.openai_deployment_name for {kind}",
        )
        if self.api_type == "azure":
            require(self.api_key, p, "openai_config.openai_api_key")
            return
        self.tenant = require(
            config.get("microsoft_entra_tenant_id"), p, "openai_config.microsoft_entra_tenant_id"
        )
        self.client_id = require(
            config.get("microsoft_entra_client_id"), p, "openai_config.microsoft_entra_client_id"
        )
        self.client_secret = require(
            credential(config, "microsoft_entra_client_secret"),
            p,
            "openai_config.microsoft_entra_client_secret",
        )
        authority = os.environ.get(ENTRA_AUTHORITY_ENV) or ENTRA_DEFAULT_AUTHORITY
        if "://" not in authority:
            authority = f"https://{authority}"  # azure-identity accepts a bare host too
        self.token_url = f"{authority.rstrip('/')}/{quote(self.tenant, safe='')}/oauth2/v2.0/token"

    def _url(self, route: str) -> tuple[str, dict[str, str] | None]:
        if self.api_type == "openai":
            return f"{self.base}/{route}", None
        deployment = quote(self.deployment, safe="")
        return (
            f"{self.base}/openai/deployments/{deployment}/{route}",
            {"api-version": self.api_version},
        )

    async def _headers(self) -> dict[str, str]:
        if self.api_type == "azure":
            return {"api-key": self.api_key or ""}
        if self.api_type == "azuread":
            return {"Authorization": f"Bearer {await self._entra_token()}"}
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if self.organization:
            headers["OpenAI-Organization"] = self.organization
        return headers

    def _secrets(self) -> list[str | None]:
        return [self.api_key, self.client_secret, self._token]

    async def _entra_token(self) -> str:
        """A client-credentials token, cached until shortly before it expires."""
        async with self._token_lock:  # one refresh, however many requests wait on it
            if self._token is not None and self._clock() < self._token_expiry:
                return self._token
            form = {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_secret": self.client_secret or "",
                "scope": ENTRA_SCOPE,
            }
            try:
                response = await send(
                    self.client, "Microsoft Entra ID", "POST", self.token_url, data=form
                )
            except ProviderError as exc:
                if exc.kind != "upstream_client":
                    raise
                # A rejected tenant, client or secret is the entity's config, not the caller's.
                raise ProviderError(
                    "config",
                    f"{self.PROVIDER}: token request failed: {exc.message}",
                    status=exc.status,
                ) from None
            payload = response_json(response, "Microsoft Entra ID")
            token = payload.get("access_token") if isinstance(payload, dict) else None
            if not isinstance(token, str) or not token:
                raise ProviderError("upstream_server", "Microsoft Entra ID sent no access_token")
            try:
                lifetime = float(payload.get("expires_in", 0))
            except (TypeError, ValueError):
                lifetime = 0.0
            # Short-lived tokens get half their life instead of a margin larger than it.
            margin = min(self.TOKEN_MARGIN_S, lifetime / 2)
            self._token, self._token_expiry = token, self._clock() + lifetime - margin
            return token
