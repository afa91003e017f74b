"""OpenAI-wire adapters (openai, Azure key, Azure Entra ID, databricks-model-serving, custom) and
the legacy ones (ai21labs, palm), each against a real HTTP server on loopback.

The wire cases share one table (`WIRE`): request shape, plain responses, streams and errors run
for every row. The legacy providers have their own table of calls (`LEGACY`); the error table
(`ERRORS`) runs for all eight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from mock_http import MockResponse, MockUpstream, RecordedRequest, sse

# Imported for their registrations: adapter_for loads modules only while the registry is empty.
from engine.gateway._errors import status_for
from providers.adapters import ProviderAdapter, ProviderError, adapter_for, databricks, legacy  # noqa: F401
from providers.adapters._base import StreamError, StreamTally
from providers.adapters._sse import EventFramer
from providers.adapters.custom import route_url
from providers.adapters.openai import OpenAIAdapter, model_to_sse

Json = dict[str, Any]

OPENAI_KEY = "sk-openai-3f9a1c7e5b2d4f60"
AZURE_KEY = "azure-key-8c2e4a6f1b3d5e70"
ENTRA_SECRET = "entra-secret-5d7f9b1c3e2a4c68"
ENTRA_TOKEN = "eyJ0eXAiOiJKV1Qi.entra-token-1a2b3c4d"
DBX_TOKEN = "dapi-4e6a8c0b2d1f3e57a9"
CUSTOM_KEY = "custom-key-9b7d5f3a1c2e4a86"
CUSTOM_TOKEN = "custom-bearer-2c4e6a8b0d1f3a59"
AI21_KEY = "ai21-key-7a5c3e1b9d2f4a60"
PALM_KEY = "AIzaSy-palm-key-6b4d2f0a8c1e3b57"
TENANT = "tenant-1234"
# Set on the pooled client: seeing it upstream proves the adapter used the client it was given.
POOL_HEADER = "x-pooled-client"


# -- upstream fixtures ------------------------------------------------------------------------

USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}

REPLIES: dict[str, Json] = {
    "chat": {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "upstream-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    },
    "completions": {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1700000000,
        "model": "upstream-model",
        "choices": [{"index": 0, "text": "Hello", "finish_reason": "length", "logprobs": None}],
        "usage": USAGE,
    },
    # OpenAI's embeddings usage has no completion_tokens: the adapter completes it.
    "embeddings": {
        "object": "list",
        "model": "upstream-model",
        "data": [
            {"object": "embedding", "index": 0, "embedding": [0.1, 0.2]},
            {"object": "embedding", "index": 1, "embedding": [0.3, 0.4]},
        ],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    },
}


def _chat_chunk(delta: Json, finish: str | None = None) -> Json:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "upstream-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _text_chunk(text: str, finish: str | None = None) -> Json:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1700000000,
        "model": "upstream-model",
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
    }


CHUNKS: dict[str, list[Json]] = {
    "chat": [
        _chat_chunk({"role": "assistant", "content": ""}),
        _chat_chunk({"content": "Hel"}),
        _chat_chunk({"content": "lo"}),
        _chat_chunk({}, "stop"),
        {**_chat_chunk({}), "choices": [], "usage": USAGE},
    ],
    "completions": [
        _text_chunk("Hel"),
        _text_chunk("lo", "stop"),
        {**_text_chunk(""), "choices": [], "usage": USAGE},
    ],
}


def sse_frames(chunks: list[Json]) -> list[bytes]:
    """Real SSE: one frame split across HTTP chunks, a comment, [DONE], then junk to ignore."""
    frames = sse([(None, c) for c in chunks])
    first = frames.pop(0)
    return [
        first[:7],
        first[7:],
        b": keep-alive\n\n",
        *frames,
        *sse([(None, "[DONE]")]),
        b"data: {not json, and after [DONE] so never read\n\n",
    ]


def route_of(body: Json) -> str:
    return "chat" if "messages" in body else "completions" if "prompt" in body else "embeddings"


def is_token_request(request: RecordedRequest) -> bool:
    return request.path.endswith("/oauth2/v2.0/token")


def wire_upstream(error: MockResponse | None = None) -> Callable[[RecordedRequest], MockResponse]:
    """An OpenAI-wire server (and Entra ID token endpoint); `error` answers every API call."""

    def handler(request: RecordedRequest) -> MockResponse:
        if is_token_request(request):
            return MockResponse(json={"access_token": ENTRA_TOKEN, "expires_in": 3599})
        if error is not None:
            return error
        body = request.json()
        route = route_of(body)
        if body.get("stream"):
            return MockResponse(chunks=sse_frames(CHUNKS[route]))
        return MockResponse(json=REPLIES[route])

    return handler


# -- harness ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[MockUpstream]:
    # One server per module: each MockUpstream costs ~0.5 s to shut down (serve_forever's poll).
    with MockUpstream(lambda _: MockResponse(500, json={"error": "no handler set"})) as running:
        yield running


@pytest.fixture
def upstream(server: MockUpstream, monkeypatch: pytest.MonkeyPatch) -> MockUpstream:
    """The shared server, its request log cleared; Entra ID's authority points at it too."""
    server.requests.clear()
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", server.url)
    return server


def exchange(
    upstream: MockUpstream,
    handler: Callable[[RecordedRequest], MockResponse],
    model_for: Callable[[str], Json],
    use: Callable[[ProviderAdapter], Awaitable[Any]],
    *,
    timeout: float = 5.0,
) -> tuple[Any, list[RecordedRequest]]:
    """Serve `handler`, build the adapter for `model_for(upstream.url)`, run `use(adapter)`."""
    upstream.handler = handler

    async def main() -> Any:
        async with httpx.AsyncClient(timeout=timeout, headers={POOL_HEADER: "1"}) as client:
            return await use(adapter_for(model_for(upstream.url), client))

    return asyncio.run(main()), list(upstream.requests)


async def collect(chunks: AsyncIterator[Json]) -> list[Json]:
    return [c async for c in chunks]


async def failure(call: Callable[[], Awaitable[Any]]) -> ProviderError:
    try:
        await call()
    except ProviderError as exc:
        return exc
    raise AssertionError("expected a ProviderError")


def settle(seconds: float = 0.05) -> None:
    """Wait out the server's side of a connection we hung up on mid-response.

    Its broken-pipe report then lands in this test's captured output, not between tests.
    """
    time.sleep(seconds)


def assert_no_secret(exc: ProviderError, secrets: tuple[str, ...]) -> None:
    for secret in secrets:
        assert secret not in exc.message and secret not in str(exc), f"{secret!r} leaked"


# -- the OpenAI-wire table --------------------------------------------------------------------


def _openai_error(message: str) -> Json:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}


@dataclass(frozen=True)
class Wire:
    id: str
    model: Callable[[str], Json]  # upstream URL -> external_model block, secrets resolved
    paths: dict[str, str]  # route -> upstream path
    headers: dict[str, str]  # headers the upstream must see (lower-case names)
    secrets: tuple[str, ...]
    query: dict[str, list[str]] = field(default_factory=dict)
    sends_model: bool = True  # False where the URL names the model
    stream_usage: bool = False  # asks for `stream_options.include_usage` on chat streams
    error_body: Callable[[str], Json] = _openai_error


def _model(provider: str, name: str, **config: Any) -> Json:
    return {"provider": provider, "name": name, "task": "llm/v1/chat", **config}


_AZURE = {"chat": "chat/completions", "completions": "completions", "embeddings": "embeddings"}
_AZURE_PATHS = {k: f"/openai/deployments/gpt4o-prod/{v}" for k, v in _AZURE.items()}
_AZURE_BASE = {"openai_api_version": "2024-06-01", "openai_deployment_name": "gpt4o-prod"}

WIRE = [
    Wire(
        id="openai",
        model=lambda url: _model(
            "openai",
            "gpt-4o",
            openai_config={
                "openai_api_key": OPENAI_KEY,
                "openai_api_base": f"{url}/v1",
                "openai_organization": "org-42",
            },
        ),
        paths={"chat": "/v1/chat/completions", "completions": "/v1/completions"}
        | {"embeddings": "/v1/embeddings"},
        headers={"authorization": f"Bearer {OPENAI_KEY}", "openai-organization": "org-42"},
        secrets=(OPENAI_KEY,),
        stream_usage=True,
    ),
    Wire(
        id="azure-key",
        model=lambda url: _model(
            "openai",
            "gpt-4o",
            openai_config={
                "openai_api_type": "Azure",  # case-insensitive, as the platform documents
                "openai_api_key_plaintext": AZURE_KEY,
                "openai_api_base": f"{url}/",
                **_AZURE_BASE,
            },
        ),
        paths=_AZURE_PATHS,
        query={"api-version": ["2024-06-01"]},
        headers={"api-key": AZURE_KEY},
        secrets=(AZURE_KEY,),
        sends_model=False,
        error_body=lambda m: {"error": {"code": "BadRequest", "message": m}},
    ),
    Wire(
        id="azure-entra",
        model=lambda url: _model(
            "openai",
            "gpt-4o",
            openai_config={
                "openai_api_type": "azuread",
                "openai_api_base": url,
                "microsoft_entra_tenant_id": TENANT,
                "microsoft_entra_client_id": "client-1",
                "microsoft_entra_client_secret": ENTRA_SECRET,
                **_AZURE_BASE,
            },
        ),
        paths=_AZURE_PATHS,
        query={"api-version": ["2024-06-01"]},
        headers={"authorization": f"Bearer {ENTRA_TOKEN}"},
        secrets=(ENTRA_SECRET, ENTRA_TOKEN),
        sends_model=False,
    ),
    Wire(
        id="databricks",
        model=lambda url: _model(
            "databricks-model-serving",
            "remote-llm",
            databricks_model_serving_config={
                "databricks_workspace_url": url,
                "databricks_api_token": DBX_TOKEN,
            },
        ),
        paths=dict.fromkeys(_AZURE, "/serving-endpoints/remote-llm/invocations"),
        headers={"authorization": f"Bearer {DBX_TOKEN}"},
        secrets=(DBX_TOKEN,),
        sends_model=False,
        error_body=lambda m: {"error_code": "BAD_REQUEST", "message": m},
    ),
    Wire(
        id="custom-api-key",
        model=lambda url: _model(
            "custom",
            "my-llm",
            custom_provider_config={
                "custom_provider_url": f"{url}/v1",
                "api_key_auth": {"key": "X-API-Key", "value_plaintext": CUSTOM_KEY},
            },
        ),
        paths={k: f"/v1/{v}" for k, v in _AZURE.items()},
        headers={"x-api-key": CUSTOM_KEY},
        secrets=(CUSTOM_KEY,),
        error_body=lambda m: {"object": "error", "message": m, "code": 400},
    ),
    Wire(
        id="custom-bearer",
        model=lambda url: _model(
            "custom",
            "my-llm",
            custom_provider_config={
                # A URL ending in a route is the base for every route.
                "custom_provider_url": f"{url}/api/chat/completions",
                "bearer_token_auth": {"token": CUSTOM_TOKEN},
            },
        ),
        paths={k: f"/api/{v}" for k, v in _AZURE.items()},
        headers={"authorization": f"Bearer {CUSTOM_TOKEN}"},
        secrets=(CUSTOM_TOKEN,),
        error_body=lambda m: {"detail": m},
    ),
]
WIRE_IDS = [w.id for w in WIRE]

# route -> (adapter method, unified request body). `model` and `stream` are ours to set.
CALLS: dict[str, tuple[str, Json]] = {
    "chat": (
        "chat",
        {
            "messages": [{"role": "user", "content": "Hi"}],
            "temperature": 0.2,
            "max_tokens": 16,
            "user": "u-1",
            "model": "client-picked",
            "stream": True,
        },
    ),
    "completions": (
        "completions",
        {"prompt": "Say hi", "max_tokens": 8, "n": 1, "stop": ["\n"], "stream": True},
    ),
    "embeddings": ("embeddings", {"input": ["a", "b"], "encoding_format": "base64"}),
}


def expected_body(wire: Wire, route: str, *, stream: bool) -> Json:
    _, body = CALLS[route]
    out = {k: v for k, v in body.items() if k not in ("model", "stream", "encoding_format")}
    if wire.sends_model:
        out["model"] = "gpt-4o" if wire.id == "openai" else "my-llm"
    if stream:
        out["stream"] = True
        if wire.stream_usage and route == "chat":
            out["stream_options"] = {"include_usage": True}
    return out


def api_requests(requests: list[RecordedRequest]) -> list[RecordedRequest]:
    return [r for r in requests if not is_token_request(r)]


def assert_request(wire: Wire, route: str, request: RecordedRequest, *, stream: bool) -> None:
    assert request.method == "POST"
    assert request.path == wire.paths[route]
    assert request.query == wire.query
    for name, value in wire.headers.items():
        assert request.headers.get(name) == value, name
    assert request.headers.get(POOL_HEADER) == "1"
    assert request.json() == expected_body(wire, route, stream=stream)


@pytest.mark.parametrize("route", ["chat", "completions", "embeddings"])
@pytest.mark.parametrize("wire", WIRE, ids=WIRE_IDS)
def test_wire_call(wire: Wire, route: str, upstream: MockUpstream) -> None:
    method, body = CALLS[route]
    result, requests = exchange(
        upstream, wire_upstream(), wire.model, lambda a: getattr(a, method)(body)
    )

    (request,) = api_requests(requests)
    assert_request(wire, route, request, stream=False)
    reply = REPLIES[route]
    assert result["object"] == reply["object"]
    if route == "embeddings":
        assert [d["embedding"] for d in result["data"]] == [[0.1, 0.2], [0.3, 0.4]]
        assert result["usage"] == {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2}
    else:
        assert result["choices"] == reply["choices"]
        assert result["usage"] == USAGE


@pytest.mark.parametrize("route", ["chat", "completions"])
@pytest.mark.parametrize("wire", WIRE, ids=WIRE_IDS)
def test_wire_stream(wire: Wire, route: str, upstream: MockUpstream) -> None:
    method, body = CALLS[route]
    chunks, requests = exchange(
        upstream,
        wire_upstream(),
        wire.model,
        lambda a: collect(getattr(a, f"{method}_stream")(body)),
    )

    (request,) = api_requests(requests)
    assert_request(wire, route, request, stream=True)
    assert chunks == CHUNKS[route]  # as-is, in order, stopped at [DONE]
    assert chunks[-1]["usage"] == USAGE
    settle()


@pytest.mark.parametrize("route", ["chat", "completions"])
@pytest.mark.parametrize("wire", WIRE, ids=WIRE_IDS)
def test_wire_sse_passes_the_upstream_bytes_through(
    wire: Wire, route: str, upstream: MockUpstream
) -> None:
    method, body = CALLS[route]
    tally = StreamTally()

    async def collect_bytes(adapter: ProviderAdapter) -> bytes:
        return b"".join([b async for b in getattr(adapter, f"{method}_sse")(body, tally)])

    sent, requests = exchange(upstream, wire_upstream(), wire.model, collect_bytes)

    (request,) = api_requests(requests)
    assert_request(wire, route, request, stream=True)
    assert sent == b"".join(sse_frames(CHUNKS[route])[:-1])  # as sent, up to [DONE] included
    assert tally.usage == USAGE
    settle()


def scan(pieces: list[bytes]) -> tuple[bytes, StreamTally, bool, StreamError | None]:
    """Feed `pieces` to a framer and `model_to_sse`, as the passthrough does."""
    framer, tally, out = EventFramer(), StreamTally(), b""
    for piece in pieces:
        block = framer.feed(piece)
        if block:
            forward, done, error = model_to_sse(block, tally, "openai")
            out += forward
            if done or error:
                return out, tally, done, error
    return out, tally, False, None


STREAM = b"".join(sse_frames(CHUNKS["chat"])[:-1])


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_passthrough_framing_does_not_depend_on_how_bytes_arrive(size: int) -> None:
    pieces = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    out, tally, done, error = scan(pieces)
    assert (out, tally.usage, done, error) == (STREAM, USAGE, True, None)


def test_passthrough_reads_only_usage_objects_and_errors() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    out, tally, done, _ = scan([crlf[:5], crlf[5:]])
    assert (out, tally.usage, done) == (STREAM, USAGE, True)  # line ends made LF

    # `"usage": null` on every chunk (OpenAI with include_usage) and "usage" as content text.
    text = sse([(None, {**_chat_chunk({"content": "usage"}), "usage": None}), (None, "[DONE]")])
    out, tally, done, _ = scan(text)
    assert (out, tally.usage, done) == (b"".join(text), None, True)

    # Continuous usage (vLLM's continuous_usage_stats): the last one is the total.
    counts = [{**USAGE, "completion_tokens": n} for n in (1, 2)]
    frames = sse([(None, {**_chat_chunk({"content": "x"}), "usage": u}) for u in counts])
    assert scan(frames)[1].usage == counts[-1]

    failing = sse([(None, _chat_chunk({"content": "Hel"})), (None, {"error": {"message": "boom"}})])
    out, _, done, error = scan([b"".join(failing)])
    assert out == failing[0] and not done  # what came before the error event, not the event
    assert isinstance(error, StreamError) and "boom" in error.message


def test_a_stream_without_done_is_an_error(upstream: MockUpstream) -> None:
    model = WIRE[0].model
    cut = lambda _: MockResponse(chunks=sse_frames(CHUNKS["chat"])[:-2])  # noqa: E731
    tally = StreamTally()
    body = CALLS["chat"][1]

    async def sse_bytes(adapter: ProviderAdapter) -> ProviderError:
        return await failure(lambda: collect_sse(adapter.chat_sse(body, tally)))

    async def chunks(adapter: ProviderAdapter) -> ProviderError:
        return await failure(lambda: collect(adapter.chat_stream(body)))

    for use in (sse_bytes, chunks):
        exc, _ = exchange(upstream, cut, model, use)
        assert isinstance(exc, StreamError) and "ended before [DONE]" in exc.message
    settle()


async def collect_sse(frames: AsyncIterator[bytes]) -> bytes:
    return b"".join([f async for f in frames])


# -- errors, for all eight providers ----------------------------------------------------------


@dataclass(frozen=True)
class ErrorCase:
    id: str
    status: int | None  # upstream status; None: the upstream never answers in time
    message: str
    kind: str
    http_status: int


# The upstream answers this late; the client gives up after 0.1 s. Far apart: on a loaded
# machine the client's timer may fire hundreds of ms late, after a 0.3 s answer had arrived.
TIMEOUT_DELAY = 1.5

ERRORS = [
    ErrorCase("client", 400, "max_tokens is too large", "upstream_client", 400),
    # Some upstreams echo the rejected key: it must be masked, the rest kept.
    ErrorCase("echoed-key", 401, "Incorrect API key provided: {secrets}", "upstream_client", 502),
    ErrorCase("server", 503, "The engine is currently overloaded", "upstream_server", 502),
    ErrorCase("timeout", None, "", "timeout", 504),
]


@dataclass(frozen=True)
class Target:
    """A provider as the error table sees it: how to build it, call it, and shape its errors."""

    id: str
    model: Callable[[str], Json]
    error_body: Callable[[str], Json]
    secrets: tuple[str, ...]
    streams: bool


def _ai21_model(url: str) -> Json:
    config = {"ai21labs_api_key": AI21_KEY, "ai21labs_api_base": url}
    return _model("ai21labs", "j2-ultra", ai21labs_config=config)


def _palm_model(url: str) -> Json:
    config = {"palm_api_key_plaintext": PALM_KEY, "palm_api_base": url}
    return _model("palm", "text-bison-001", palm_config=config)


TARGETS = [Target(w.id, w.model, w.error_body, w.secrets, True) for w in WIRE] + [
    Target("ai21labs", _ai21_model, lambda m: {"detail": m}, (AI21_KEY,), False),
    Target(
        "palm",
        _palm_model,
        lambda m: {"error": {"code": 400, "message": m, "status": "INVALID_ARGUMENT"}},
        (PALM_KEY,),
        False,
    ),
]


def error_upstream(target: Target, case: ErrorCase) -> Callable[[RecordedRequest], MockResponse]:
    if case.status is None:
        return wire_upstream(MockResponse(delay=TIMEOUT_DELAY, json={}))
    message = case.message.format(secrets=" ".join(target.secrets))
    return wire_upstream(MockResponse(status=case.status, json=target.error_body(message)))


# Legacy providers have no streams: test_legacy_streaming_is_unsupported covers them.
ERROR_PARAMS = [
    pytest.param(target, case, stream, id=f"{target.id}-{case.id}-{mode}")
    for target in TARGETS
    for case in ERRORS
    for stream, mode in ((False, "plain"), (True, "stream"))
    if target.streams or not stream
]


@pytest.mark.parametrize(("target", "case", "stream"), ERROR_PARAMS)
def test_upstream_error(
    target: Target, case: ErrorCase, stream: bool, upstream: MockUpstream
) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}]}

    async def call(adapter: ProviderAdapter) -> ProviderError:
        if stream:
            return await failure(lambda: collect(adapter.chat_stream(body)))
        return await failure(lambda: adapter.chat(body))

    timeout = 0.1 if case.status is None else 5.0
    exc, _ = exchange(upstream, error_upstream(target, case), target.model, call, timeout=timeout)
    if case.status is None:
        settle(TIMEOUT_DELAY)  # the late handler still writes its answer

    assert (exc.kind, status_for(exc)) == (case.kind, case.http_status)
    assert exc.status == case.status
    if case.status is not None:
        assert case.message.split(":")[0] in exc.message  # the provider's own words
    assert_no_secret(exc, target.secrets)


# -- legacy providers -------------------------------------------------------------------------

AI21_REPLY = {
    "id": "ai21-1",
    "prompt": {"text": "Say hi", "tokens": [{}, {}, {}]},
    "completions": [
        {"data": {"text": " hi", "tokens": [{}]}, "finishReason": {"reason": "endoftext"}},
        {"data": {"text": " hello", "tokens": [{}, {}]}, "finishReason": {"reason": "length"}},
    ],
}


@dataclass(frozen=True)
class LegacyCall:
    id: str
    model: Callable[[str], Json]
    method: str
    body: Json
    replies: list[Json]  # one per upstream request, in order
    upstream: list[tuple[str, Json]]  # (path, body) of each upstream request
    expected: Json  # a subset of the translated response


LEGACY = [
    LegacyCall(
        id="ai21labs-completions",
        model=_ai21_model,
        method="completions",
        body={"prompt": "Say hi", "max_tokens": 8, "temperature": 0.5, "n": 2, "stop": "."},
        replies=[AI21_REPLY],
        upstream=[
            (
                "/studio/v1/j2-ultra/complete",
                {
                    "prompt": "Say hi",
                    "maxTokens": 8,
                    "temperature": 0.5,
                    "numResults": 2,
                    "stopSequences": ["."],
                },
            )
        ],
        expected={
            "object": "text_completion",
            "choices": [
                {"index": 0, "text": " hi", "finish_reason": "stop", "logprobs": None},
                {"index": 1, "text": " hello", "finish_reason": "length", "logprobs": None},
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        },
    ),
    LegacyCall(
        id="ai21labs-chat",
        model=_ai21_model,
        method="chat",
        body={
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Say hi"},
            ],
            "max_tokens": 8,
        },
        replies=[AI21_REPLY],
        upstream=[
            (
                "/studio/v1/j2-ultra/complete",
                {"prompt": "system: Be brief.\nuser: Say hi\nassistant:", "maxTokens": 8},
            )
        ],
        expected={
            "object": "chat.completion",
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        },
    ),
    LegacyCall(
        id="palm-completions",
        model=_palm_model,
        method="completions",
        body={"prompt": "Say hi", "temperature": 0.3, "n": 1, "max_tokens": 8, "stop": ["."]},
        replies=[{"candidates": [{"output": " hi"}]}],
        upstream=[
            (
                "/v1beta2/models/text-bison-001:generateText",
                {
                    "prompt": {"text": "Say hi"},
                    "temperature": 0.3,
                    "candidateCount": 1,
                    "maxOutputTokens": 8,
                    "stopSequences": ["."],
                },
            )
        ],
        expected={
            "object": "text_completion",
            "choices": [{"index": 0, "text": " hi", "finish_reason": None, "logprobs": None}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        },
    ),
    LegacyCall(
        id="palm-chat",
        model=_palm_model,
        method="chat",
        body={
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            "temperature": 0.1,
        },
        replies=[{"candidates": [{"author": "1", "content": "Hello"}]}],
        upstream=[
            (
                "/v1beta2/models/text-bison-001:generateMessage",
                {
                    "prompt": {
                        "context": "Be brief.",
                        "messages": [{"author": "user", "content": "Hi"}],
                    },
                    "temperature": 0.1,
                },
            )
        ],
        expected={
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello"},
                    "finish_reason": None,
                }
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        },
    ),
    LegacyCall(
        id="palm-embeddings",
        model=_palm_model,
        method="embeddings",
        body={"input": ["a", "b"]},
        replies=[{"embedding": {"value": [0.1]}}, {"embedding": {"value": [0.2]}}],
        upstream=[
            ("/v1beta2/models/text-bison-001:embedText", {"text": "a"}),
            ("/v1beta2/models/text-bison-001:embedText", {"text": "b"}),
        ],
        expected={
            "object": "list",
            "data": [
                {"object": "embedding", "index": 0, "embedding": [0.1]},
                {"object": "embedding", "index": 1, "embedding": [0.2]},
            ],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        },
    ),
]


@pytest.mark.parametrize("call", LEGACY, ids=[c.id for c in LEGACY])
def test_legacy_call(call: LegacyCall, upstream: MockUpstream) -> None:
    replies = iter(call.replies)
    result, requests = exchange(
        upstream,
        lambda _: MockResponse(json=next(replies)),
        call.model,
        lambda a: getattr(a, call.method)(call.body),
    )

    assert [(r.path, r.json()) for r in requests] == call.upstream
    for request in requests:
        assert request.headers.get(POOL_HEADER) == "1"
        if call.model is _ai21_model:
            assert request.headers["authorization"] == f"Bearer {AI21_KEY}"
            assert request.query == {}
        else:
            assert request.query == {"key": [PALM_KEY]}
            assert "authorization" not in request.headers
    assert {k: result[k] for k in call.expected} == call.expected


@pytest.mark.parametrize("model_for", [_ai21_model, _palm_model], ids=["ai21labs", "palm"])
@pytest.mark.parametrize("method", ["chat_stream", "completions_stream"])
def test_legacy_streaming_is_unsupported(model_for: Callable[[str], Json], method: str) -> None:
    async def main() -> ProviderError:
        async with httpx.AsyncClient() as client:
            adapter = adapter_for(model_for("http://127.0.0.1:9"), client)
            return await failure(lambda: collect(getattr(adapter, method)({"prompt": "x"})))

    exc = asyncio.run(main())
    assert (exc.kind, status_for(exc)) == ("unsupported", 400)


def test_ai21_has_no_embeddings() -> None:
    async def main() -> ProviderError:
        async with httpx.AsyncClient() as client:
            adapter = adapter_for(_ai21_model("http://127.0.0.1:9"), client)
            return await failure(lambda: adapter.embeddings({"input": "x"}))

    assert asyncio.run(main()).kind == "unsupported"


# -- Entra ID tokens ----------------------------------------------------------------------------

ENTRA = next(w for w in WIRE if w.id == "azure-entra")


def test_entra_token_request_and_cache(upstream: MockUpstream) -> None:
    now = [1000.0]  # the adapter's clock; the token lives 3599 s, refreshed 300 s early
    body = {"messages": [{"role": "user", "content": "Hi"}]}
    upstream.handler = wire_upstream()

    async def main() -> None:
        async with httpx.AsyncClient(timeout=5) as client:
            adapter = OpenAIAdapter(ENTRA.model(upstream.url), client, clock=lambda: now[0])
            await asyncio.gather(adapter.chat(body), adapter.chat(body))  # one fetch for both
            now[0] += 3599 - 300 - 1  # a second before the refresh point: cached
            await adapter.chat(body)
            now[0] += 2  # past it: refreshed
            await adapter.chat(body)

    asyncio.run(main())
    requests = upstream.requests

    tokens = [r for r in requests if is_token_request(r)]
    assert len(tokens) == 2 and len(api_requests(requests)) == 4
    token = tokens[0]
    assert token.path == f"/{TENANT}/oauth2/v2.0/token"
    assert token.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(token.body.decode()) == {
        "grant_type": ["client_credentials"],
        "client_id": ["client-1"],
        "client_secret": [ENTRA_SECRET],
        "scope": ["https://cognitiveservices.azure.com/.default"],
    }


def test_entra_rejected_credentials_are_a_config_error(upstream: MockUpstream) -> None:
    def handler(request: RecordedRequest) -> MockResponse:
        # Entra ID's real shape; the description never carries the secret, but make sure.
        detail = f"AADSTS7000215: Invalid client secret provided: {ENTRA_SECRET}"
        return MockResponse(400, json={"error": detail, "error_description": detail})

    body = {"messages": [{"role": "user", "content": "Hi"}]}
    exc, requests = exchange(
        upstream, handler, ENTRA.model, lambda a: failure(lambda: a.chat(body))
    )
    assert [r.path for r in requests] == [f"/{TENANT}/oauth2/v2.0/token"]
    assert (exc.kind, status_for(exc)) == ("config", 502)
    assert "AADSTS7000215" in exc.message
    assert_no_secret(exc, ENTRA.secrets)


# -- what the upstream can get wrong ------------------------------------------------------------

CUSTOM = next(w for w in WIRE if w.id == "custom-api-key")
OPENAI = next(w for w in WIRE if w.id == "openai")
CHAT_BODY = {"messages": [{"role": "user", "content": "Hi"}]}


def test_missing_usage_is_zero_filled(upstream: MockUpstream) -> None:
    reply = {k: v for k, v in REPLIES["chat"].items() if k != "usage"}
    result, _ = exchange(
        upstream, lambda _: MockResponse(json=reply), CUSTOM.model, lambda a: a.chat(CHAT_BODY)
    )
    assert result["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


@pytest.mark.parametrize(
    "response",
    [MockResponse(body=b"<html>gateway</html>"), MockResponse(json=["not", "an", "object"])],
    ids=["not-json", "not-an-object"],
)
def test_garbage_body_is_upstream_server(response: MockResponse, upstream: MockUpstream) -> None:
    exc, _ = exchange(
        upstream, lambda _: response, OPENAI.model, lambda a: failure(lambda: a.chat(CHAT_BODY))
    )
    assert (exc.kind, status_for(exc)) == ("upstream_server", 502)


def test_error_event_mid_stream(upstream: MockUpstream) -> None:
    frames = sse(
        [(None, CHUNKS["chat"][0]), (None, {"error": {"message": f"overloaded {OPENAI_KEY}"}})]
    )
    got: list[Json] = []

    async def use(adapter: ProviderAdapter) -> ProviderError:
        async def read() -> None:
            async for item in adapter.chat_stream(CHAT_BODY):
                got.append(item)

        return await failure(read)

    exc, _ = exchange(upstream, lambda _: MockResponse(chunks=frames), OPENAI.model, use)
    settle()
    assert got == CHUNKS["chat"][:1]
    assert exc.kind == "upstream_server" and "overloaded ***" in exc.message
    assert_no_secret(exc, OPENAI.secrets)


# -- config and registration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "route", "url"),
    [
        ("http://h/v1", "chat/completions", "http://h/v1/chat/completions"),
        ("http://h/v1/", "embeddings", "http://h/v1/embeddings"),
        ("http://h/v1/chat/completions", "chat/completions", "http://h/v1/chat/completions"),
        ("http://h/v1/chat/completions", "completions", "http://h/v1/completions"),
        ("http://h/v1/completions", "embeddings", "http://h/v1/embeddings"),
        ("http://h/serve?tenant=a", "completions", "http://h/serve/completions?tenant=a"),
    ],
)
def test_custom_route_url(configured: str, route: str, url: str) -> None:
    assert route_url(configured, route) == url


@pytest.mark.parametrize(
    "model",
    [
        _model("openai", "m", openai_config={}),
        _model("openai", "m", openai_config={"openai_api_key": "{{secrets/scope/key}}"}),
        _model("openai", "m", openai_config={"openai_api_key": "k", "openai_api_type": "aws"}),
        _model(
            "openai",
            "m",
            openai_config={"openai_api_type": "azure", "openai_api_key": "k"} | _AZURE_BASE,
        ),
        _model(
            "openai",
            "m",
            openai_config={"openai_api_type": "azuread", "openai_api_base": "http://a"}
            | _AZURE_BASE,
        ),
        _model("databricks-model-serving", "e", databricks_model_serving_config={}),
        _model("custom", "m", custom_provider_config={}),
        _model("palm", "m", palm_config={}),
    ],
    ids=[
        "no-key",
        "unresolved-ref",
        "unknown-type",
        "azure-no-base",
        "azuread-no-tenant",
        "databricks-no-url",
        "custom-no-url",
        "palm-no-key",
    ],
)
def test_unusable_config_is_a_config_error(model: Json) -> None:
    async def main() -> None:
        async with httpx.AsyncClient() as client:
            adapter_for(model, client)

    with pytest.raises(ProviderError) as info:
        asyncio.run(main())
    assert (info.value.kind, status_for(info.value)) == ("config", 502)
    assert "{{secrets" not in info.value.message


def test_registered_providers() -> None:
    async def main() -> dict[str, str]:
        async with httpx.AsyncClient() as client:
            return {t.id: type(adapter_for(t.model("http://h"), client)).__name__ for t in TARGETS}

    assert asyncio.run(main()) == {
        "openai": "OpenAIAdapter",
        "azure-key": "OpenAIAdapter",
        "azure-entra": "OpenAIAdapter",
        "databricks": "DatabricksModelServingAdapter",
        "custom-api-key": "CustomAdapter",
        "custom-bearer": "CustomAdapter",
        "ai21labs": "Ai21LabsAdapter",
        "palm": "PalmAdapter",
    }
