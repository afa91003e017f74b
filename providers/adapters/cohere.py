"""Cohere adapter: the unified llm/v1 schema over Cohere's v2 API.

Upstream API: https://docs.cohere.com/reference/chat (streaming:
https://docs.cohere.com/reference/chat-stream) and https://docs.cohere.com/reference/embed.

Chat request (``POST {base}/v2/chat``, header ``Authorization: Bearer <key>``)::

    {"model": "command-r", "messages": [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": "Hi"}], "max_tokens": 100, "p": 0.9, "stop_sequences": ["END"]}

Chat response::

    {"id": "c14c80c3", "finish_reason": "COMPLETE",
     "message": {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
     "usage": {"billed_units": {"input_tokens": 5, "output_tokens": 2},
               "tokens": {"input_tokens": 70, "output_tokens": 2}}}

Stream (SSE)::

    event: message-start  data: {"type": "message-start", "id": "c14c80c3", ...}
    event: content-delta  data: {"type": "content-delta", "index": 0,
                                 "delta": {"message": {"content": {"text": "Hel"}}}}
    event: message-end    data: {"type": "message-end", "delta": {"finish_reason": "COMPLETE",
                                 "usage": {"billed_units": {"input_tokens": 5, ...}}}}

Embeddings (``POST {base}/v2/embed``)::

    {"model": "embed-english-v3.0", "texts": ["hello"], "input_type": "search_document",
     "embedding_types": ["float"]}
    -> {"embeddings": {"float": [[0.1, 0.2]]}, "meta": {"billed_units": {"input_tokens": 1}}}

Completions go through /v2/chat: the prompt is one user message, the answer a text_completion.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from ._base import (
    BaseStreamState,
    Json,
    ProviderAdapter,
    ProviderError,
    StreamError,
    chat_response,
    completion_response,
    embeddings_response,
    redacting,
    response_json,
    send,
    stream_lines,
    usage,
)
from ._client import UpstreamClient
from ._common import credential, event_json, input_texts, prompt_of, stop_list, text_of
from ._registry import register_adapter
from ._sse import SseEvent, parse_sse

__all__ = [
    "CohereAdapter",
    "StreamState",
    "chat_to_model",
    "completions_to_model",
    "embeddings_to_model",
    "model_to_chat",
    "model_to_completions",
    "model_to_chat_streaming",
    "model_to_embeddings",
]

PROVIDER = "cohere"
DEFAULT_BASE = "https://api.cohere.com"
# Unified key -> Cohere v2 chat key, for parameters both sides have.
_CHAT_PARAMS: dict[str, str] = {
    "temperature": "temperature",
    "max_tokens": "max_tokens",
    "top_p": "p",
    "top_k": "k",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
}

# Cohere finish_reason -> OpenAI finish_reason ("ERROR" is raised instead, see _finish_reason).
FINISH_REASONS: dict[str, str] = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}


def _finish_reason(reason: Any, error: Any = None) -> str | None:
    if reason is None:
        return None
    if reason == "ERROR":
        # Cohere reports a failed generation as a finish reason; it is not an answer.
        raise ProviderError("upstream_server", f"{PROVIDER} generation failed: {error or reason}")
    # A reason newer than this table still ended the turn.
    return FINISH_REASONS.get(reason, "stop")


# -- request translation (pure) ---------------------------------------------------------------


def _message_to_model(message: Json) -> Json:
    # v2 roles (system/user/assistant/tool) and tool-call fields match OpenAI's.
    out: Json = {"role": message.get("role")}
    if message.get("content") is not None or not message.get("tool_calls"):
        out["content"] = text_of(message.get("content"), PROVIDER)
    for key in ("tool_calls", "tool_call_id"):
        if message.get(key) is not None:
            out[key] = message[key]
    return out


def chat_to_model(body: Json, model: str, *, stream: bool = False) -> Json:
    """Unified chat body -> v2 chat body (a new dict; `body` is not touched)."""
    if (body.get("n") or 1) > 1:
        raise ProviderError("unsupported", f"{PROVIDER} does not support n > 1")
    payload: Json = {
        "model": model,
        "messages": [_message_to_model(m) for m in body.get("messages") or []],
    }
    for ours, theirs in _CHAT_PARAMS.items():
        if body.get(ours) is not None:
            payload[theirs] = body[ours]
    if payload.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
        payload["max_tokens"] = body["max_completion_tokens"]
    stop = stop_list(body)
    if stop:
        payload["stop_sequences"] = stop
    if stream:
        payload["stream"] = True
    return payload


def completions_to_model(body: Json, model: str, *, stream: bool = False) -> Json:
    """Unified completions body -> v2 chat body: the prompt is one user message."""
    chat_body = {k: v for k, v in body.items() if k != "prompt"}
    chat_body["messages"] = [{"role": "user", "content": prompt_of(body, PROVIDER)}]
    return chat_to_model(chat_body, model, stream=stream)


def embeddings_to_model(body: Json, model: str) -> Json:
    payload: Json = {
        "model": model,
        "texts": input_texts(body, PROVIDER, allow_empty=True),
        # v3+ embed models require input_type; a caller embedding queries can override it.
        "input_type": body.get("input_type") or "search_document",
        "embedding_types": ["float"],
    }
    if body.get("truncate") is not None:
        payload["truncate"] = body["truncate"]
    return payload


# -- response translation (pure) --------------------------------------------------------------


def _token_counts(tokens: Any) -> tuple[int | None, int | None]:
    """(input, output) from v2 `usage`: billed units when present, else raw token counts."""
    if not isinstance(tokens, dict):
        return None, None
    for key in ("billed_units", "tokens"):
        counts = tokens.get(key)
        if isinstance(counts, dict) and (
            counts.get("input_tokens") is not None or counts.get("output_tokens") is not None
        ):
            return counts.get("input_tokens"), counts.get("output_tokens")
    return None, None


def _message_parts(resp: Json) -> tuple[str, str | None, int | None, int | None]:
    message = resp.get("message")
    if not isinstance(message, dict):
        raise ProviderError("upstream_server", f"{PROVIDER} answered without a message")
    # Only text items carry an answer; a tool-call-only reply has no content at all.
    text = "".join(
        str(item.get("text", ""))
        for item in message.get("content") or []
        if isinstance(item, dict) and item.get("type", "text") == "text"
    )
    finish = _finish_reason(resp.get("finish_reason"))
    prompt_tokens, completion_tokens = _token_counts(resp.get("usage"))
    return text, finish, prompt_tokens, completion_tokens


def model_to_chat(resp: Json, model: str) -> Json:
    text, finish, prompt_tokens, completion_tokens = _message_parts(resp)
    return chat_response(
        model, [(text, finish)], prompt_tokens, completion_tokens, response_id=resp.get("id")
    )


def model_to_completions(resp: Json, model: str) -> Json:
    text, finish, prompt_tokens, completion_tokens = _message_parts(resp)
    return completion_response(
        model, [(text, finish)], prompt_tokens, completion_tokens, response_id=resp.get("id")
    )


def model_to_embeddings(resp: Json, model: str) -> Json:
    vectors = (resp.get("embeddings") or {}).get("float")
    if not isinstance(vectors, list):
        raise ProviderError("upstream_server", f"{PROVIDER} answered without float embeddings")
    billed = (resp.get("meta") or {}).get("billed_units") or {}
    return embeddings_response(model, vectors, billed.get("input_tokens"))


@dataclass(slots=True)
class StreamState(BaseStreamState):
    """What one stream has seen so far; the translator reads and updates it."""

    done: bool = False


def model_to_chat_streaming(event: SseEvent, state: StreamState) -> list[Json]:
    """One v2 SSE event -> zero or more OpenAI chunks (chat or completion shape)."""
    data = event_json(event.data, PROVIDER)
    kind = data.get("type") or event.event
    out = state.chunk

    if kind == "message-start":
        state.response_id = data.get("id") or state.response_id
        # OpenAI clients expect the role on the first chat chunk; completions have no role.
        return [out(role="assistant", text="")] if state.chat else []
    if kind == "content-delta":
        content = ((data.get("delta") or {}).get("message") or {}).get("content") or {}
        text = content.get("text") if isinstance(content, dict) else None
        return [out(text=text)] if text else []
    if kind == "message-end":
        delta = data.get("delta") or {}
        finish = _finish_reason(delta.get("finish_reason"), delta.get("error"))
        prompt_tokens, completion_tokens = _token_counts(delta.get("usage"))
        state.done = True
        return [out(finish_reason=finish or "stop", usage_=usage(prompt_tokens, completion_tokens))]
    # content-start/end, tool-*, citation-*, debug and newer event types carry no text.
    return []


# -- transport --------------------------------------------------------------------------------


@register_adapter
class CohereAdapter(ProviderAdapter):
    PROVIDER = PROVIDER
    DEFAULT_BASE = DEFAULT_BASE

    def __init__(self, model: Json, client: UpstreamClient) -> None:
        super().__init__(model, client)
        config = model.get("cohere_config") or {}
        self._api_key: str = credential(config, "cohere_api_key", required_in=f"{PROVIDER}_config")
        self.base = (config.get("cohere_api_base") or self.DEFAULT_BASE).rstrip("/")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"}

    async def _post(self, path: str, payload: Json) -> Json:
        with redacting(self._api_key):
            response = await send(
                self.client,
                PROVIDER,
                "POST",
                f"{self.base}{path}",
                headers=self._headers(),
                json=payload,
            )
            return response_json(response, PROVIDER, object_only=True)

    async def _stream(self, payload: Json, *, chat: bool) -> AsyncIterator[Json]:
        state = StreamState(model=self.name, chat=chat)
        with redacting(self._api_key):
            lines = stream_lines(
                self.client,
                PROVIDER,
                "POST",
                f"{self.base}/v2/chat",
                headers=self._headers(),
                json=payload,
            )
            # Closed with this stream (a client gone mid-stream): the connection goes back now.
            async with aclosing(lines), aclosing(parse_sse(lines)) as events:
                async for event in events:
                    for out in model_to_chat_streaming(event, state):
                        yield out
            if not state.done:
                raise StreamError("upstream_server", f"{PROVIDER} stream ended early")

    async def _chat(self, body: Json) -> Json:
        payload = chat_to_model(body, self.name)
        return model_to_chat(await self._post("/v2/chat", payload), self.name)

    def _chat_stream(self, body: Json) -> AsyncIterator[Json]:
        # Translate now so a bad request fails at the call, not at the first chunk.
        return self._stream(chat_to_model(body, self.name, stream=True), chat=True)

    async def _completions(self, body: Json) -> Json:
        payload = completions_to_model(body, self.name)
        return model_to_completions(await self._post("/v2/chat", payload), self.name)

    def _completions_stream(self, body: Json) -> AsyncIterator[Json]:
        return self._stream(completions_to_model(body, self.name, stream=True), chat=False)

    async def _embeddings(self, body: Json) -> Json:
        payload = embeddings_to_model(body, self.name)
        return model_to_embeddings(await self._post("/v2/embed", payload), self.name)
