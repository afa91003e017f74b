"""Anthropic adapter: the unified llm/v1 schema over the Messages API.

Upstream API: https://docs.anthropic.com/en/api/messages (streaming:
https://docs.anthropic.com/en/api/messages-streaming).

Request (``POST {base}/v1/messages``, headers ``x-api-key`` and ``anthropic-version``)::

    {"model": "claude-3-opus", "max_tokens": 1024, "system": "Be brief.",
     "messages": [{"role": "user", "content": "Hi"}], "stop_sequences": ["END"]}

Response::

    {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-3-opus",
     "content": [{"type": "text", "text": "Hello!"}], "stop_reason": "end_turn",
     "usage": {"input_tokens": 10, "output_tokens": 3}}

Stream (SSE)::

    event: message_start        data: {"type": "message_start", "message": {"id": "msg_01",
                                       "usage": {"input_tokens": 10, "output_tokens": 1}}}
    event: content_block_delta  data: {"type": "content_block_delta", "index": 0,
                                       "delta": {"type": "text_delta", "text": "Hel"}}
    event: message_delta        data: {"type": "message_delta",
                                       "delta": {"stop_reason": "end_turn"},
                                       "usage": {"output_tokens": 3}}
    event: message_stop         data: {"type": "message_stop"}

Completions (``llm/v1/completions``, e.g. claude-2) go through the same endpoint: the prompt is
sent as one user message and the answer comes back in ``text_completion`` shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
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
    redacting,
    response_json,
    send,
    stream_lines,
    usage,
)
from ._client import UpstreamClient
from ._common import credential, event_json, prompt_of, stop_list, text_of
from ._registry import register_adapter
from ._sse import SseEvent, parse_sse

__all__ = [
    "AnthropicAdapter",
    "StreamState",
    "chat_to_model",
    "completions_to_model",
    "message_text",
    "model_to_chat",
    "model_to_completions",
    "model_to_chat_streaming",
]

PROVIDER = "anthropic"
DEFAULT_BASE = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
# Anthropic requires max_tokens; OpenAI callers usually leave it out.
DEFAULT_MAX_TOKENS = 1024
# Unified keys Anthropic accepts under the same name; anything else OpenAI-only
# (presence_penalty, user, logit_bias, ...) is dropped because Anthropic rejects unknown keys.
_PASSTHROUGH = ("temperature", "top_p", "top_k", "metadata")

# Anthropic stop_reason -> OpenAI finish_reason.
FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}


def _finish_reason(stop_reason: Any) -> str | None:
    if stop_reason is None:
        return None
    # A reason newer than this table still ended the turn.
    return FINISH_REASONS.get(stop_reason, "stop")


# -- request translation (pure) ---------------------------------------------------------------


def chat_to_model(body: Json, model: str, *, stream: bool = False) -> Json:
    """Unified chat body -> Messages API body (a new dict; `body` is not touched)."""
    if (body.get("n") or 1) > 1:
        raise ProviderError("unsupported", f"{PROVIDER} does not support n > 1")
    system: list[str] = []
    turns: list[tuple[str, list[str]]] = []
    for message in body.get("messages") or []:
        role = message.get("role")
        text = text_of(message.get("content"), PROVIDER)
        if role == "system":
            system.append(text)
        elif role in ("user", "assistant"):
            # Anthropic wants alternating turns, so a run of one role becomes one message.
            if turns and turns[-1][0] == role:
                turns[-1][1].append(text)
            else:
                turns.append((role, [text]))
        else:
            raise ProviderError("unsupported", f"{PROVIDER}: message role {role!r} unsupported")
    max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
    payload: Json = {
        "model": model,
        "messages": [
            {
                "role": role,
                "content": texts[0]
                if len(texts) == 1
                else [{"type": "text", "text": t} for t in texts],
            }
            for role, texts in turns
        ],
        "max_tokens": DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
    }
    if system:
        payload["system"] = "\n\n".join(system)
    stop = stop_list(body)
    if stop:
        payload["stop_sequences"] = stop
    for key in _PASSTHROUGH:
        if body.get(key) is not None:
            payload[key] = body[key]
    if stream:
        payload["stream"] = True
    return payload


def completions_to_model(body: Json, model: str, *, stream: bool = False) -> Json:
    """Unified completions body -> Messages API body: the prompt is one user message."""
    chat_body = {k: v for k, v in body.items() if k != "prompt"}
    chat_body["messages"] = [{"role": "user", "content": prompt_of(body, PROVIDER)}]
    return chat_to_model(chat_body, model, stream=stream)


# -- response translation (pure) --------------------------------------------------------------


def message_text(resp: Json, provider: str = PROVIDER) -> str:
    """The answer in a Messages API response (Bedrock's too): its text blocks, joined."""
    content = resp.get("content")
    if not isinstance(content, list):
        raise ProviderError("upstream_server", f"{provider} answered without a content list")
    # Only text blocks carry an answer; tool_use / thinking blocks have no OpenAI text.
    return "".join(
        str(block.get("text", ""))
        for block in content
        if isinstance(block, dict) and block.get("type") == "text"
    )


def _to_openai(build: Callable[..., Json], resp: Json, model: str) -> Json:
    """`resp` through `build` (chat_response or completion_response)."""
    text = message_text(resp)
    tokens = resp.get("usage") or {}
    return build(
        resp.get("model") or model,
        [(text, _finish_reason(resp.get("stop_reason")))],
        tokens.get("input_tokens"),
        tokens.get("output_tokens"),
        response_id=resp.get("id"),
    )


def model_to_chat(resp: Json, model: str) -> Json:
    return _to_openai(chat_response, resp, model)


def model_to_completions(resp: Json, model: str) -> Json:
    return _to_openai(completion_response, resp, model)


@dataclass(slots=True)
class StreamState(BaseStreamState):
    """What one stream has seen so far; the translator reads and updates it."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    done: bool = False


def model_to_chat_streaming(event: SseEvent, state: StreamState) -> list[Json]:
    """One Anthropic SSE event -> zero or more OpenAI chunks (chat or completion shape)."""
    data = event_json(event.data, PROVIDER)
    kind = data.get("type") or event.event
    out = state.chunk

    if kind == "message_start":
        message = data.get("message") or {}
        state.response_id = message.get("id") or state.response_id
        state.model = message.get("model") or state.model
        state.prompt_tokens = (message.get("usage") or {}).get("input_tokens")
        # OpenAI clients expect the role on the first chat chunk; completions have no role.
        return [out(role="assistant", text="")] if state.chat else []
    if kind == "content_block_delta":
        delta = data.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            return [out(text=delta["text"])]
        return []  # input_json_delta, thinking_delta, ...: no OpenAI text
    if kind == "message_delta":
        state.finish_reason = _finish_reason((data.get("delta") or {}).get("stop_reason"))
        tokens = data.get("usage") or {}
        state.completion_tokens = tokens.get("output_tokens", state.completion_tokens)
        # Some Anthropic-compatible proxies report input tokens here, not in message_start.
        state.prompt_tokens = tokens.get("input_tokens") or state.prompt_tokens
        return []
    if kind == "message_stop":
        state.done = True
        return [
            out(
                finish_reason=state.finish_reason or "stop",
                usage_=usage(state.prompt_tokens, state.completion_tokens),
            )
        ]
    if kind == "error":
        error = data.get("error") or {}
        message = error.get("message") or error.get("type") or "unknown error"
        raise ProviderError("upstream_server", f"{PROVIDER} stream error: {message}")
    # ping, content_block_start/stop and event types newer than this adapter carry nothing.
    return []


# -- transport --------------------------------------------------------------------------------


@register_adapter
class AnthropicAdapter(ProviderAdapter):
    PROVIDER = PROVIDER
    DEFAULT_BASE = DEFAULT_BASE

    def __init__(self, model: Json, client: UpstreamClient) -> None:
        super().__init__(model, client)
        config = model.get("anthropic_config") or {}
        self._api_key: str = credential(
            config, "anthropic_api_key", required_in=f"{PROVIDER}_config"
        )
        base = config.get("anthropic_api_base") or self.DEFAULT_BASE
        self.url = f"{base.rstrip('/')}/v1/messages"

    def _headers(self) -> dict[str, str]:
        return {"x-api-key": self._api_key, "anthropic-version": API_VERSION}

    async def _post(self, payload: Json) -> Json:
        with redacting(self._api_key):
            response = await send(
                self.client, PROVIDER, "POST", self.url, headers=self._headers(), json=payload
            )
            return response_json(response, PROVIDER, object_only=True)

    async def _stream(self, payload: Json, *, chat: bool) -> AsyncIterator[Json]:
        state = StreamState(model=self.name, chat=chat)
        with redacting(self._api_key):
            lines = stream_lines(
                self.client, PROVIDER, "POST", self.url, headers=self._headers(), json=payload
            )
            # Closed with this stream (a client gone mid-stream): the connection goes back now.
            async with aclosing(lines), aclosing(parse_sse(lines)) as events:
                async for event in events:
                    for out in model_to_chat_streaming(event, state):
                        yield out
            if not state.done:
                raise StreamError("upstream_server", f"{PROVIDER} stream ended early")

    async def _chat(self, body: Json) -> Json:
        return model_to_chat(await self._post(chat_to_model(body, self.name)), self.name)

    def _chat_stream(self, body: Json) -> AsyncIterator[Json]:
        # Translate now so a bad request fails at the call, not at the first chunk.
        return self._stream(chat_to_model(body, self.name, stream=True), chat=True)

    async def _completions(self, body: Json) -> Json:
        payload = completions_to_model(body, self.name)
        return model_to_completions(await self._post(payload), self.name)

    def _completions_stream(self, body: Json) -> AsyncIterator[Json]:
        return self._stream(completions_to_model(body, self.name, stream=True), chat=False)
