"""Anthropic and Cohere adapters against a real HTTP server (tests/mock_http.py).

Every test drives the adapter through `adapter_for` with one shared `httpx.AsyncClient`, so the
registry, the transport helpers and the SSE framing are exercised over a real socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from mock_http import MockResponse, MockUpstream, RecordedRequest, sse

from engine.gateway._errors import status_for
from providers.adapters import ProviderAdapter, ProviderError, adapter_for
from providers.adapters.anthropic import AnthropicAdapter
from providers.adapters.cohere import CohereAdapter

ANTHROPIC_KEY = "sk-ant-api03-TESTKEY-do-not-leak-0001"
COHERE_KEY = "co-TESTKEY-do-not-leak-0002"

Handler = Callable[[RecordedRequest], MockResponse]
Action = Callable[[ProviderAdapter], Awaitable[Any]]


def anthropic_model(base: str | None, *, key_field: str = "anthropic_api_key", **extra: Any):
    config: dict[str, Any] = {key_field: ANTHROPIC_KEY}
    if base is not None:
        config["anthropic_api_base"] = base
    return {
        "provider": "anthropic",
        "name": "claude-3-opus",
        "task": "llm/v1/chat",
        "anthropic_config": config,
        **extra,
    }


def cohere_model(base: str | None, *, key_field: str = "cohere_api_key", **extra: Any):
    config: dict[str, Any] = {key_field: COHERE_KEY}
    if base is not None:
        config["cohere_api_base"] = base
    return {
        "provider": "cohere",
        "name": "command-r",
        "task": "llm/v1/chat",
        "cohere_config": config,
        **extra,
    }


class Switchboard:
    """Routes the module's one MockUpstream to the handler of the call in progress."""

    def __init__(self) -> None:
        self.url = ""
        self.handler: Handler | None = None
        self.requests: list[RecordedRequest] = []

    def __call__(self, request: RecordedRequest) -> MockResponse:
        self.requests.append(request)
        assert self.handler is not None
        return self.handler(request)


BOARD = Switchboard()


@pytest.fixture(scope="module", autouse=True)
def shared_upstream() -> Iterator[MockUpstream]:
    # One server for the module: shutting a MockUpstream down costs ~0.5 s (its poll interval).
    with MockUpstream(BOARD) as upstream:
        BOARD.url = upstream.url
        yield upstream


def drive(
    handler: Handler,
    model_for: Callable[[str], dict[str, Any]],
    action: Action,
    *,
    timeout: float = 5.0,
) -> tuple[Any, list[RecordedRequest]]:
    """Run `action` on an adapter pointed at the mock upstream; errors propagate."""

    async def main() -> Any:
        async with httpx.AsyncClient(timeout=timeout) as client:
            return await action(adapter_for(model_for(BOARD.url), client))

    BOARD.handler, BOARD.requests = handler, []
    return asyncio.run(main()), BOARD.requests


def drive_error(
    handler: Handler, model_for: Callable[[str], dict[str, Any]], action: Action, **kw: Any
) -> tuple[ProviderError, list[RecordedRequest]]:
    with pytest.raises(ProviderError) as info:
        drive(handler, model_for, action, **kw)
    return info.value, BOARD.requests


async def collect(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item async for item in stream]


def chat(body: dict[str, Any]) -> Action:
    return lambda adapter: adapter.chat(body)


def chat_stream(body: dict[str, Any]) -> Action:
    return lambda adapter: collect(adapter.chat_stream(body))


def completions(body: dict[str, Any]) -> Action:
    return lambda adapter: adapter.completions(body)


def completions_stream(body: dict[str, Any]) -> Action:
    return lambda adapter: collect(adapter.completions_stream(body))


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    """What an OpenAI client would show: chat deltas or completion text, concatenated."""
    parts = []
    for c in chunks:
        choice = c["choices"][0]
        parts.append(
            (choice["delta"].get("content") or "") if "delta" in choice else choice["text"]
        )
    return "".join(parts)


def reply(payload: Any, status: int = 200, **kw: Any) -> Handler:
    return lambda request: MockResponse(status=status, json=payload, **kw)


def stream_reply(events: list[tuple[str | None, Any]], extra: tuple[bytes, ...] = ()) -> Handler:
    return lambda request: MockResponse(chunks=[*extra, *sse(events)])


BASIC_CHAT = {"messages": [{"role": "user", "content": "Hi"}]}


# -- Anthropic --------------------------------------------------------------------------------

ANTHROPIC_MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-3-opus-20240229",
    "content": [
        {"type": "text", "text": "Hello"},
        {"type": "tool_use", "id": "toolu_1", "name": "x", "input": {}},
        {"type": "text", "text": ", world"},
    ],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 6},
}

ANTHROPIC_STREAM = [
    (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_stream_1",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "claude-3-opus-20240229",
                "stop_reason": None,
                "usage": {"input_tokens": 25, "output_tokens": 1},
            },
        },
    ),
    (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ),
    ("ping", {"type": "ping"}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    ),
    ("brand_new_event", {"type": "brand_new_event", "payload": {"anything": 1}}),
    (
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo!"}},
    ),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
            "usage": {"output_tokens": 15},
        },
    ),
    ("message_stop", {"type": "message_stop"}),
]


@pytest.mark.parametrize("key_field", ["anthropic_api_key", "anthropic_api_key_plaintext"])
def test_anthropic_chat_request_shape(key_field: str) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "Hi"},
            {"role": "user", "content": "Are you there?"},
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "Good."},
        ],
        "stop": "END",
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
        "user": "someone",  # OpenAI-only: Anthropic would reject it
    }
    _, requests = drive(
        reply(ANTHROPIC_MESSAGE), lambda url: anthropic_model(url, key_field=key_field), chat(body)
    )
    (request,) = requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["x-api-key"] == ANTHROPIC_KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.json() == {
        "model": "claude-3-opus",
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hi"},
                    {"type": "text", "text": "Are you there?"},
                ],
            },
            {"role": "assistant", "content": "Yes."},
            {"role": "user", "content": "Good."},
        ],
        "max_tokens": 1024,
        "stop_sequences": ["END"],
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 40,
    }
    # The caller's body is not mutated by the translation.
    assert body["stop"] == "END" and "max_tokens" not in body


def test_anthropic_explicit_max_tokens_and_stop_list() -> None:
    body = {**BASIC_CHAT, "max_tokens": 77, "stop": ["a", "b"]}
    _, requests = drive(reply(ANTHROPIC_MESSAGE), anthropic_model, chat(body))
    sent = requests[0].json()
    assert sent["max_tokens"] == 77
    assert sent["stop_sequences"] == ["a", "b"]
    assert "system" not in sent and "stream" not in sent


def test_anthropic_chat_response() -> None:
    result, _ = drive(reply(ANTHROPIC_MESSAGE), anthropic_model, chat(BASIC_CHAT))
    assert result["object"] == "chat.completion"
    assert result["id"] == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert result["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello, world"},
            "finish_reason": "stop",
        }
    ]
    assert result["usage"] == {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
    ],
)
def test_anthropic_stop_reasons(stop_reason: str, finish_reason: str) -> None:
    message = {**ANTHROPIC_MESSAGE, "stop_reason": stop_reason}
    result, _ = drive(reply(message), anthropic_model, chat(BASIC_CHAT))
    assert result["choices"][0]["finish_reason"] == finish_reason


def test_anthropic_n_greater_than_one_is_unsupported_and_sends_nothing() -> None:
    err, requests = drive_error(
        reply(ANTHROPIC_MESSAGE), anthropic_model, chat({**BASIC_CHAT, "n": 2})
    )
    assert err.kind == "unsupported" and status_for(err) == 400
    assert requests == []


def test_anthropic_completions() -> None:
    body = {"prompt": "Say hi", "max_tokens": 20, "stop": ["\n"]}
    result, requests = drive(reply(ANTHROPIC_MESSAGE), anthropic_model, completions(body))
    assert requests[0].path == "/v1/messages"
    assert requests[0].json() == {
        "model": "claude-3-opus",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 20,
        "stop_sequences": ["\n"],
    }
    assert result["object"] == "text_completion"
    assert result["choices"][0]["text"] == "Hello, world"
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"]["total_tokens"] == 18


def test_anthropic_chat_stream() -> None:
    chunks, requests = drive(
        stream_reply(ANTHROPIC_STREAM, extra=(b": keep-alive comment\n\n",)),
        anthropic_model,
        chat_stream(BASIC_CHAT),
    )
    sent = requests[0].json()
    assert sent["stream"] is True and sent["max_tokens"] == 1024
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["id"] == "msg_stream_1" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert streamed_text(chunks) == "Hello!"
    # Only the last chunk finishes, and it carries the usage.
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}


def test_anthropic_completions_stream() -> None:
    chunks, requests = drive(
        stream_reply(ANTHROPIC_STREAM), anthropic_model, completions_stream({"prompt": "Hi"})
    )
    assert requests[0].json()["messages"] == [{"role": "user", "content": "Hi"}]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert streamed_text(chunks) == "Hello!"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["total_tokens"] == 40


def test_anthropic_error_event_mid_stream() -> None:
    events = [
        *ANTHROPIC_STREAM[:4],
        (
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        ),
    ]
    seen: list[dict[str, Any]] = []

    async def consume(adapter: ProviderAdapter) -> None:
        async for item in adapter.chat_stream(BASIC_CHAT):
            seen.append(item)

    err, _ = drive_error(stream_reply(events), anthropic_model, consume)
    assert err.kind == "upstream_server" and status_for(err) == 502
    assert "Overloaded" in err.message
    assert streamed_text(seen) == "Hel"  # what arrived before the error was delivered


def test_anthropic_stream_cut_off_before_message_stop() -> None:
    err, _ = drive_error(
        stream_reply(ANTHROPIC_STREAM[:-1]), anthropic_model, chat_stream(BASIC_CHAT)
    )
    assert err.kind == "upstream_server"


def test_anthropic_config_errors_and_default_base() -> None:
    async def build(model: dict[str, Any]) -> ProviderAdapter:
        async with httpx.AsyncClient() as client:
            return adapter_for(model, client)

    adapter = asyncio.run(build(anthropic_model(None)))
    assert isinstance(adapter, AnthropicAdapter)
    assert adapter.url == "https://api.anthropic.com/v1/messages"
    with pytest.raises(ProviderError) as info:
        asyncio.run(build({**anthropic_model(None), "anthropic_config": {}}))
    assert info.value.kind == "config"


# -- Cohere -----------------------------------------------------------------------------------

COHERE_CHAT = {
    "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
    "finish_reason": "COMPLETE",
    "message": {
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}],
    },
    "usage": {
        "billed_units": {"input_tokens": 5, "output_tokens": 2},
        "tokens": {"input_tokens": 71, "output_tokens": 2},
    },
}

COHERE_STREAM = [
    (
        "message-start",
        {
            "id": "co-stream-1",
            "type": "message-start",
            "delta": {"message": {"role": "assistant", "content": [], "tool_calls": []}},
        },
    ),
    (
        "content-start",
        {
            "type": "content-start",
            "index": 0,
            "delta": {"message": {"content": {"type": "text", "text": ""}}},
        },
    ),
    ("ping", {"type": "ping"}),
    (
        "content-delta",
        {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Bon"}}}},
    ),
    ("citation-start", {"type": "citation-start", "index": 0, "delta": {"message": {}}}),
    (
        "content-delta",
        {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "jour"}}}},
    ),
    ("content-end", {"type": "content-end", "index": 0}),
    (
        "message-end",
        {
            "type": "message-end",
            "delta": {
                "finish_reason": "MAX_TOKENS",
                "usage": {
                    "billed_units": {"input_tokens": 3, "output_tokens": 2},
                    "tokens": {"input_tokens": 70, "output_tokens": 2},
                },
            },
        },
    ),
]


@pytest.mark.parametrize("key_field", ["cohere_api_key", "cohere_api_key_plaintext"])
def test_cohere_chat_request_shape(key_field: str) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
        "temperature": 0.5,
        "max_tokens": 100,
        "stop": "END",
        "top_p": 0.8,
        "top_k": 10,
        "user": "someone",  # OpenAI-only: not forwarded
    }
    _, requests = drive(
        reply(COHERE_CHAT), lambda url: cohere_model(url, key_field=key_field), chat(body)
    )
    (request,) = requests
    assert (request.method, request.path) == ("POST", "/v2/chat")
    assert request.headers["authorization"] == f"Bearer {COHERE_KEY}"
    assert request.json() == {
        "model": "command-r",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "temperature": 0.5,
        "max_tokens": 100,
        "stop_sequences": ["END"],
        "p": 0.8,
        "k": 10,
    }


def test_cohere_chat_response() -> None:
    result, requests = drive(reply(COHERE_CHAT), cohere_model, chat(BASIC_CHAT))
    assert "max_tokens" not in requests[0].json()  # Cohere has its own default
    assert result["object"] == "chat.completion"
    assert result["id"] == COHERE_CHAT["id"]
    assert result["model"] == "command-r"
    assert result["choices"][0]["message"] == {"role": "assistant", "content": "Hello there"}
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


@pytest.mark.parametrize(
    ("usage_block", "expected"),
    [
        ({"billed_units": {"input_tokens": 5, "output_tokens": 2}}, (5, 2)),
        ({"tokens": {"input_tokens": 70, "output_tokens": 3}}, (70, 3)),
        ({}, (0, 0)),
    ],
)
def test_cohere_usage_sources(usage_block: dict[str, Any], expected: tuple[int, int]) -> None:
    result, _ = drive(reply({**COHERE_CHAT, "usage": usage_block}), cohere_model, chat(BASIC_CHAT))
    got = result["usage"]
    assert (got["prompt_tokens"], got["completion_tokens"]) == expected


@pytest.mark.parametrize(
    ("reason", "finish_reason"),
    [
        ("COMPLETE", "stop"),
        ("STOP_SEQUENCE", "stop"),
        ("MAX_TOKENS", "length"),
        ("TOOL_CALL", "tool_calls"),
    ],
)
def test_cohere_finish_reasons(reason: str, finish_reason: str) -> None:
    result, _ = drive(
        reply({**COHERE_CHAT, "finish_reason": reason}), cohere_model, chat(BASIC_CHAT)
    )
    assert result["choices"][0]["finish_reason"] == finish_reason


def test_cohere_error_finish_reason_is_an_error() -> None:
    err, _ = drive_error(
        reply({**COHERE_CHAT, "finish_reason": "ERROR"}), cohere_model, chat(BASIC_CHAT)
    )
    assert err.kind == "upstream_server"


def test_cohere_completions() -> None:
    result, requests = drive(
        reply(COHERE_CHAT), cohere_model, completions({"prompt": ["Say hi"], "max_tokens": 5})
    )
    assert requests[0].path == "/v2/chat"
    assert requests[0].json() == {
        "model": "command-r",
        "messages": [{"role": "user", "content": "Say hi"}],
        "max_tokens": 5,
    }
    assert result["object"] == "text_completion"
    assert result["choices"][0]["text"] == "Hello there"
    assert result["usage"]["total_tokens"] == 7


def test_cohere_chat_stream() -> None:
    chunks, requests = drive(
        stream_reply(COHERE_STREAM, extra=(b": keep-alive\n\n",)),
        cohere_model,
        chat_stream(BASIC_CHAT),
    )
    assert requests[0].json()["stream"] is True
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "co-stream-1" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert streamed_text(chunks) == "Bonjour"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_cohere_completions_stream() -> None:
    chunks, _ = drive(
        stream_reply(COHERE_STREAM), cohere_model, completions_stream({"prompt": "x"})
    )
    assert all(c["object"] == "text_completion" for c in chunks)
    assert streamed_text(chunks) == "Bonjour"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_cohere_stream_error_finish_and_cut_off() -> None:
    failed = [
        *COHERE_STREAM[:4],
        (
            "message-end",
            {"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "model crashed"}},
        ),
    ]
    err, _ = drive_error(stream_reply(failed), cohere_model, chat_stream(BASIC_CHAT))
    assert err.kind == "upstream_server" and "model crashed" in err.message
    err, _ = drive_error(stream_reply(COHERE_STREAM[:-1]), cohere_model, chat_stream(BASIC_CHAT))
    assert err.kind == "upstream_server"


@pytest.mark.parametrize(
    ("input_", "texts"), [("one text", ["one text"]), (["a", "b"], ["a", "b"])]
)
def test_cohere_embeddings(input_: Any, texts: list[str]) -> None:
    vectors = [[0.1, 0.2, 0.3] for _ in texts]
    upstream = {
        "id": "emb-1",
        "embeddings": {"float": vectors},
        "texts": texts,
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": 4}},
        "response_type": "embeddings_by_type",
    }
    model = lambda url: cohere_model(url, task="llm/v1/embeddings")  # noqa: E731
    result, requests = drive(
        reply(upstream), model, lambda adapter: adapter.embeddings({"input": input_})
    )
    (request,) = requests
    assert request.path == "/v2/embed"
    assert request.headers["authorization"] == f"Bearer {COHERE_KEY}"
    assert request.json() == {
        "model": "command-r",
        "texts": texts,
        "input_type": "search_document",
        "embedding_types": ["float"],
    }
    assert result["object"] == "list"
    assert [d["embedding"] for d in result["data"]] == vectors
    assert [d["index"] for d in result["data"]] == list(range(len(texts)))
    assert result["usage"] == {"prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 4}


def test_cohere_embeddings_without_meta_and_default_base() -> None:
    result, _ = drive(
        reply({"embeddings": {"float": [[1.0]]}}),
        cohere_model,
        lambda adapter: adapter.embeddings({"input": "x"}),
    )
    assert result["usage"]["prompt_tokens"] == 0

    async def build() -> ProviderAdapter:
        async with httpx.AsyncClient() as client:
            return adapter_for(cohere_model(None), client)

    adapter = asyncio.run(build())
    assert isinstance(adapter, CohereAdapter) and adapter.base == "https://api.cohere.com"


# -- errors, both providers (table-driven) ----------------------------------------------------


@dataclass(frozen=True)
class Vendor:
    name: str
    key: str
    model_for: Callable[[str], dict[str, Any]]
    # The vendor's own error body for a message.
    error_body: Callable[[str], Any]

    def __str__(self) -> str:
        return self.name


VENDORS = [
    Vendor(
        "anthropic",
        ANTHROPIC_KEY,
        anthropic_model,
        lambda msg: {"type": "error", "error": {"type": "invalid_request_error", "message": msg}},
    ),
    Vendor("cohere", COHERE_KEY, cohere_model, lambda msg: {"message": msg}),
]

CALLS: dict[str, Action] = {
    "chat": chat(BASIC_CHAT),
    "chat_stream": chat_stream(BASIC_CHAT),
    "completions": completions({"prompt": "Hi"}),
    "completions_stream": completions_stream({"prompt": "Hi"}),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("vendor", VENDORS, ids=str)
@pytest.mark.parametrize(
    ("status", "kind", "http_status"),
    [
        (400, "upstream_client", 400),
        (404, "upstream_client", 400),
        (429, "upstream_client", 429),
        (500, "upstream_server", 502),
        (529, "upstream_server", 502),  # Anthropic's "overloaded"
    ],
)
def test_upstream_error_status(
    vendor: Vendor, call: str, status: int, kind: str, http_status: int
) -> None:
    handler = reply(vendor.error_body(f"bad thing {status}"), status=status)
    err, _ = drive_error(handler, vendor.model_for, CALLS[call])
    assert (err.kind, err.status, status_for(err)) == (kind, status, http_status)
    assert f"bad thing {status}" in err.message
    assert vendor.key not in str(err)


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("vendor", VENDORS, ids=str)
def test_timeout_is_504(vendor: Vendor, call: str) -> None:
    delay = 0.3
    handler = reply({}, delay=delay)
    started = time.monotonic()
    err, _ = drive_error(handler, vendor.model_for, CALLS[call], timeout=0.05)
    assert (err.kind, status_for(err)) == ("timeout", 504)
    assert vendor.key not in str(err)
    # Let the late answer hit the closed socket while this test still captures its noise.
    time.sleep(max(0.0, delay + 0.1 - (time.monotonic() - started)))


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("vendor", VENDORS, ids=str)
def test_echoed_key_never_reaches_the_error_message(vendor: Vendor, call: str) -> None:
    # A hostile or careless upstream quotes the credential back in its error body.
    handler = reply(vendor.error_body(f"invalid api key: {vendor.key}"), status=401)
    err, _ = drive_error(handler, vendor.model_for, CALLS[call])
    # The provider refused the engine's key: the gateway's 502, never the caller's own 401.
    assert (err.kind, err.status, status_for(err)) == ("upstream_client", 401, 502)
    assert vendor.key not in str(err) and vendor.key not in repr(err.args)
    assert "[REDACTED]" in err.message


@pytest.mark.parametrize("vendor", VENDORS, ids=str)
def test_non_json_success_body_is_upstream_server(vendor: Vendor) -> None:
    handler = lambda request: MockResponse(body=b"<html>gateway</html>")  # noqa: E731
    err, _ = drive_error(handler, vendor.model_for, CALLS["chat"])
    assert (err.kind, status_for(err)) == ("upstream_server", 502)


@pytest.mark.parametrize("vendor", VENDORS, ids=str)
def test_unreachable_upstream_is_502_without_key(vendor: Vendor) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(timeout=2.0) as client:
            # Port 9 (discard) on localhost is closed in test environments.
            await adapter_for(vendor.model_for("http://127.0.0.1:9"), client).chat(BASIC_CHAT)

    with pytest.raises(ProviderError) as info:
        asyncio.run(main())
    assert info.value.kind == "upstream_server" and status_for(info.value) == 502
    assert vendor.key not in str(info.value)
