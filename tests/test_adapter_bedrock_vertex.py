"""Amazon Bedrock and Vertex AI adapters against a real HTTP server on 127.0.0.1.

Bedrock: every request's SigV4 signature is re-computed from what the server received, and
streams are real AWS event-stream frames. Vertex: a real RSA service-account key, a token
endpoint that verifies the JWT-bearer grant, and the Bearer token on every call.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import inspect
import json
import re
import struct
import sys
import threading
import zlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from mock_http import MockResponse, MockUpstream, RecordedRequest, sse

from engine.gateway._errors import status_for
from providers.adapters import ProviderError, adapter_for
from providers.adapters.bedrock import BedrockAdapter
from providers.adapters.vertex import VertexAdapter

KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "us-west-2"
TOKEN = "ya29.c.test-access-token-0123456789abcdef"


def run(call: Callable[[httpx.AsyncClient], Awaitable[Any] | Any], *, timeout: float = 5.0) -> Any:
    """Run `call` with a fresh shared client on a fresh event loop (awaiting what it returns)."""

    async def main() -> Any:
        async with httpx.AsyncClient(timeout=timeout) as client:
            result = call(client)
            return await result if inspect.isawaitable(result) else result

    return asyncio.run(main())


async def collect(stream: Any) -> list[dict[str, Any]]:
    return [item async for item in stream]


def streamed_text(chunks: list[dict[str, Any]], index: int = 0) -> str:
    out = []
    for item in chunks:
        for choice in item["choices"]:
            if choice["index"] == index:
                out.append(choice.get("delta", {}).get("content") or choice.get("text") or "")
    return "".join(out)


def assert_no_secrets(message: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in message


CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hey"},
        {"role": "user", "content": [{"type": "text", "text": "Tell me"}]},
    ],
    "temperature": 0.5,
    "max_tokens": 50,
    "stop": "END",
}


# == Amazon Bedrock ===========================================================================


def bedrock_model(family: str, name: str, base: str, **config: Any) -> dict[str, Any]:
    block = {
        "aws_region": REGION,
        "bedrock_provider": family,
        "aws_access_key_id": KEY_ID,
        "aws_secret_access_key": SECRET,
        "bedrock_api_base": base,
        **config,
    }
    return {
        "name": name,
        "provider": "amazon-bedrock",
        "task": "llm/v1/chat",
        "amazon_bedrock_config": {k: v for k, v in block.items() if v is not None},
    }


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (+CRC32), string headers, payload, CRC32."""
    encoded = b""
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        # Header value type 7 is a string with a 2-byte length.
        encoded += bytes([len(raw_name)]) + raw_name + b"\x07"
        encoded += struct.pack(">H", len(raw_value)) + raw_value
    total = 12 + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total, len(encoded))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def chunk_frame(data: dict[str, Any]) -> bytes:
    part = {"bytes": base64.b64encode(json.dumps(data).encode()).decode()}
    headers = {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return frame(headers, json.dumps(part).encode())


def exception_frame(exception_type: str, message: str) -> bytes:
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return frame(headers, json.dumps({"message": message}).encode())


def event_stream(frames: list[bytes], piece: int = 7) -> MockResponse:
    # Cut across frame boundaries so the adapter has to buffer partial frames.
    blob = b"".join(frames)
    pieces = [blob[i : i + piece] for i in range(0, len(blob), piece)]
    return MockResponse(
        chunks=pieces, headers={"Content-Type": "application/vnd.amazon.eventstream"}
    )


AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


def sigv4_signature(
    request: RecordedRequest, base: str, signed: list[str], secret: str, body: bytes
) -> str:
    """Re-compute the signature with botocore from what the server received."""
    amz_date = request.headers["x-amz-date"]
    aws_request = AWSRequest(
        method=request.method,
        url=base + request.path,
        data=body,
        headers={name: request.headers[name] for name in signed},
    )
    aws_request.context["timestamp"] = amz_date
    auth = SigV4Auth(Credentials(KEY_ID, secret), "bedrock", REGION)
    canonical = auth.canonical_request(aws_request)
    return auth.signature(auth.string_to_sign(aws_request, canonical), aws_request)


def assert_sigv4(request: RecordedRequest, base: str, key_id: str = KEY_ID) -> None:
    match = AUTH.fullmatch(request.headers["authorization"])
    assert match, request.headers["authorization"]
    amz_date = request.headers["x-amz-date"]
    assert re.fullmatch(r"\d{8}T\d{6}Z", amz_date)
    assert match["key"] == key_id
    assert match["date"] == amz_date[:8]
    assert (match["region"], match["service"]) == (REGION, "bedrock")
    signed = match["signed"].split(";")
    assert signed == sorted(signed)
    assert {"host", "x-amz-date", "content-type"} <= set(signed)
    expected = sigv4_signature(request, base, signed, SECRET, request.body)
    assert expected == match["signature"]
    # The signature covers the exact bytes: one more byte must not verify.
    assert sigv4_signature(request, base, signed, SECRET, request.body + b" ") != expected


BEDROCK_CASES = {
    "anthropic": dict(
        model="anthropic.claude-3-sonnet-20240229-v1:0",
        path="/model/anthropic.claude-3-sonnet-20240229-v1%3A0/invoke",
        sent={
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 50,
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hey"},
                {"role": "user", "content": "Tell me"},
            ],
            "temperature": 0.5,
            "stop_sequences": ["END"],
        },
        answer={
            "id": "msg_bdrk_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-sonnet-20240229",
            "content": [{"type": "text", "text": "Hello!"}],
            "stop_reason": "max_tokens",
            "usage": {"input_tokens": 12, "output_tokens": 50},
        },
        headers={},
        expected=("Hello!", "length", 12, 50),
    ),
    "cohere": dict(
        model="cohere.command-r-v1:0",
        path="/model/cohere.command-r-v1%3A0/invoke",
        sent={
            "message": "Tell me",
            "chat_history": [
                {"role": "USER", "message": "Hi"},
                {"role": "CHATBOT", "message": "Hey"},
            ],
            "preamble": "Be brief.",
            "temperature": 0.5,
            "max_tokens": 50,
            "stop_sequences": ["END"],
        },
        answer={
            "response_id": "r-1",
            "text": "Hello!",
            "generation_id": "g-1",
            "finish_reason": "COMPLETE",
            "chat_history": [],
        },
        # Cohere's body has no counts; Bedrock sends them as headers.
        headers={"X-Amzn-Bedrock-Input-Token-Count": "9", "X-Amzn-Bedrock-Output-Token-Count": "2"},
        expected=("Hello!", "stop", 9, 2),
    ),
    "amazon": dict(
        model="amazon.titan-text-express-v1",
        path="/model/amazon.titan-text-express-v1/invoke",
        sent={
            "inputText": "Be brief.\nUser: Hi\nBot: Hey\nUser: Tell me\nBot:",
            "textGenerationConfig": {
                "maxTokenCount": 50,
                "temperature": 0.5,
                "stopSequences": ["END"],
            },
        },
        answer={
            "inputTextTokenCount": 14,
            "results": [{"tokenCount": 3, "outputText": "Hello!", "completionReason": "FINISH"}],
        },
        headers={},
        expected=("Hello!", "stop", 14, 3),
    ),
    "ai21labs": dict(
        model="ai21.j2-ultra-v1",
        path="/model/ai21.j2-ultra-v1/invoke",
        sent={
            "prompt": "Be brief.\nUser: Hi\nAssistant: Hey\nUser: Tell me\nAssistant:",
            "maxTokens": 50,
            "temperature": 0.5,
            "stopSequences": ["END"],
        },
        answer={
            "id": 1234,
            "prompt": {"text": "...", "tokens": [{}, {}, {}, {}]},
            "completions": [
                {
                    "data": {"text": " Hello!", "tokens": [{}, {}]},
                    "finishReason": {"reason": "endoftext"},
                }
            ],
        },
        headers={},
        expected=(" Hello!", "stop", 4, 2),
    ),
}


@pytest.mark.parametrize("family", sorted(BEDROCK_CASES))
def test_bedrock_chat_request_shape_signature_and_response(family: str) -> None:
    case = BEDROCK_CASES[family]
    answer = MockResponse(json=case["answer"], headers=case["headers"])
    with MockUpstream(lambda r: answer) as upstream:
        model = bedrock_model(family, case["model"], upstream.url)
        result = run(lambda c: adapter_for(model, c).chat(CHAT))

    (request,) = upstream.requests
    assert (request.method, request.path) == ("POST", case["path"])
    assert request.json() == case["sent"]
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert_sigv4(request, upstream.url)

    text, finish, prompt_tokens, completion_tokens = case["expected"]
    assert result["object"] == "chat.completion"
    assert result["model"] == case["model"]
    assert result["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
    ]
    assert result["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def test_bedrock_plaintext_credentials_and_case_insensitive_family() -> None:
    answer = MockResponse(json=BEDROCK_CASES["amazon"]["answer"])
    with MockUpstream(lambda r: answer) as upstream:
        model = bedrock_model(
            "Amazon",
            "amazon.titan-text-express-v1",
            upstream.url,
            aws_access_key_id=None,
            aws_secret_access_key=None,
            aws_access_key_id_plaintext=KEY_ID,
            aws_secret_access_key_plaintext=SECRET,
        )
        run(lambda c: adapter_for(model, c).chat(CHAT))
    assert_sigv4(upstream.requests[0], upstream.url)


def test_bedrock_completions_and_ai21_n() -> None:
    titan = MockResponse(json=BEDROCK_CASES["amazon"]["answer"])
    ai21 = MockResponse(
        json={
            "id": 7,
            "prompt": {"tokens": [{}, {}]},
            "completions": [
                {"data": {"text": "a", "tokens": [{}]}, "finishReason": {"reason": "length"}},
                {"data": {"text": "b", "tokens": [{}]}, "finishReason": {"reason": "stop"}},
            ],
        }
    )
    with MockUpstream(lambda r: titan if "titan" in r.path else ai21) as upstream:
        titan_model = bedrock_model("amazon", "amazon.titan-text-express-v1", upstream.url)
        ai21_model = bedrock_model("ai21labs", "ai21.j2-mid-v1", upstream.url)

        async def both(client: httpx.AsyncClient) -> tuple[Any, Any]:
            one = await adapter_for(titan_model, client).completions(
                {"prompt": ["Once upon"], "top_p": 0.9}
            )
            two = await adapter_for(ai21_model, client).completions({"prompt": "Hi", "n": 2})
            return one, two

        titan_result, ai21_result = run(both)

    assert upstream.requests[0].json() == {
        "inputText": "Once upon",
        "textGenerationConfig": {"topP": 0.9},
    }
    assert upstream.requests[1].json() == {"prompt": "Hi", "numResults": 2}
    assert titan_result["object"] == "text_completion"
    assert titan_result["choices"][0]["text"] == "Hello!"
    assert titan_result["usage"]["total_tokens"] == 17
    assert [(c["text"], c["finish_reason"]) for c in ai21_result["choices"]] == [
        ("a", "length"),
        ("b", "stop"),
    ]
    assert ai21_result["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}


def test_bedrock_titan_embeddings_one_request_per_input() -> None:
    def answer(request: RecordedRequest) -> MockResponse:
        text = request.json()["inputText"]
        return MockResponse(json={"embedding": [float(len(text)), 0.5], "inputTextTokenCount": 2})

    with MockUpstream(answer) as upstream:
        model = bedrock_model("amazon", "amazon.titan-embed-text-v1", upstream.url)
        result = run(lambda c: adapter_for(model, c).embeddings({"input": ["a", "bbb", "cc"]}))

    assert len(upstream.requests) == 3
    assert sorted(r.json()["inputText"] for r in upstream.requests) == ["a", "bbb", "cc"]
    for request in upstream.requests:
        assert request.path == "/model/amazon.titan-embed-text-v1/invoke"
        assert_sigv4(request, upstream.url)
    # Order follows the input, whatever order the calls finished in.
    assert [d["embedding"] for d in result["data"]] == [[1.0, 0.5], [3.0, 0.5], [2.0, 0.5]]
    assert [d["index"] for d in result["data"]] == [0, 1, 2]
    assert result["usage"] == {"prompt_tokens": 6, "completion_tokens": 0, "total_tokens": 6}


def test_bedrock_cohere_embeddings() -> None:
    answer = MockResponse(
        json={"id": "e1", "embeddings": [[0.1, 0.2], [0.3, 0.4]], "response_type": "x"},
        headers={"X-Amzn-Bedrock-Input-Token-Count": "5"},
    )
    with MockUpstream(lambda r: answer) as upstream:
        model = bedrock_model("cohere", "cohere.embed-english-v3", upstream.url)
        result = run(
            lambda c: adapter_for(model, c).embeddings(
                {"input": ["hi", "there"], "input_type": "search_query"}
            )
        )
    (request,) = upstream.requests
    assert request.json() == {"texts": ["hi", "there"], "input_type": "search_query"}
    assert_sigv4(request, upstream.url)
    assert [d["embedding"] for d in result["data"]] == [[0.1, 0.2], [0.3, 0.4]]
    assert result["usage"]["prompt_tokens"] == 5


METRICS = {"inputTokenCount": 7, "outputTokenCount": 2, "invocationLatency": 9}

BEDROCK_STREAMS = {
    "anthropic": (
        "anthropic.claude-3-haiku-20240307-v1:0",
        [
            {
                "type": "message_start",
                "message": {
                    "id": "msg_1",
                    "role": "assistant",
                    "content": [],
                    "usage": {"input_tokens": 7, "output_tokens": 1},
                },
            },
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}},
            {"type": "ping"},
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hel"},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "lo"},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 2},
            },
            {"type": "message_stop", "amazon-bedrock-invocationMetrics": METRICS},
        ],
    ),
    "amazon": (
        "amazon.titan-text-express-v1",
        [
            {
                "outputText": "Hel",
                "index": 0,
                "totalOutputTextTokenCount": 1,
                "completionReason": None,
                "inputTextTokenCount": 7,
            },
            {
                "outputText": "lo",
                "index": 0,
                "totalOutputTextTokenCount": 2,
                "completionReason": "FINISH",
                "amazon-bedrock-invocationMetrics": METRICS,
            },
        ],
    ),
    "cohere": (
        "cohere.command-r-plus-v1:0",
        [
            {"is_finished": False, "event_type": "stream-start", "generation_id": "g"},
            {"is_finished": False, "event_type": "text-generation", "text": "Hel"},
            {"is_finished": False, "event_type": "text-generation", "text": "lo"},
            {
                "is_finished": True,
                "event_type": "stream-end",
                "finish_reason": "COMPLETE",
                "response": {"text": "Hello"},
                "amazon-bedrock-invocationMetrics": METRICS,
            },
        ],
    ),
}


@pytest.mark.parametrize("family", sorted(BEDROCK_STREAMS))
def test_bedrock_stream_event_frames(family: str) -> None:
    model_id, events = BEDROCK_STREAMS[family]
    response = event_stream([chunk_frame(e) for e in events])
    with MockUpstream(lambda r: response) as upstream:
        model = bedrock_model(family, model_id, upstream.url)
        chunks = run(lambda c: collect(adapter_for(model, c).chat_stream(CHAT)))

    (request,) = upstream.requests
    assert request.path.endswith("/invoke-with-response-stream")
    assert request.headers["accept"] == "application/vnd.amazon.eventstream"
    assert "stream" not in request.json() and "model" not in request.json()
    assert_sigv4(request, upstream.url)

    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert streamed_text(chunks) == "Hello"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_bedrock_completions_stream() -> None:
    model_id, events = BEDROCK_STREAMS["amazon"]
    response = event_stream([chunk_frame(e) for e in events], piece=1000)
    with MockUpstream(lambda r: response) as upstream:
        model = bedrock_model("amazon", model_id, upstream.url)
        chunks = run(lambda c: collect(adapter_for(model, c).completions_stream({"prompt": "x"})))
    assert upstream.requests[0].json() == {"inputText": "x", "textGenerationConfig": {}}
    assert all(c["object"] == "text_completion" for c in chunks)
    assert streamed_text(chunks) == "Hello"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == 9


@pytest.mark.parametrize(
    ("exception_type", "kind", "status"),
    [
        ("validationException", "upstream_client", 400),
        ("throttlingException", "upstream_client", 429),
        ("internalServerException", "upstream_server", 500),
        ("modelStreamErrorException", "upstream_server", 424),
    ],
)
def test_bedrock_stream_exception_event(exception_type: str, kind: str, status: int) -> None:
    frames = [
        chunk_frame({"outputText": "Hel", "completionReason": None}),
        exception_frame(exception_type, "Too many tokens, slow down"),
    ]
    seen: list[dict[str, Any]] = []

    async def consume(client: httpx.AsyncClient) -> None:
        model = bedrock_model("amazon", "amazon.titan-text-express-v1", upstream.url)
        async for item in adapter_for(model, client).chat_stream(CHAT):
            seen.append(item)

    with (
        MockUpstream(lambda r: event_stream(frames)) as upstream,
        pytest.raises(ProviderError) as info,
    ):
        run(consume)
    assert streamed_text(seen) == "Hel"
    assert (info.value.kind, info.value.status) == (kind, status)
    assert exception_type in info.value.message
    assert "Too many tokens, slow down" in info.value.message
    assert_no_secrets(info.value.message, SECRET, KEY_ID)


def test_bedrock_stream_corrupt_frame_and_early_end() -> None:
    good = chunk_frame({"outputText": "Hel", "completionReason": None})
    corrupt = bytearray(chunk_frame({"outputText": "lo"}))
    corrupt[-1] ^= 0xFF  # message CRC no longer matches
    responses = iter([event_stream([good, bytes(corrupt)]), event_stream([good])])
    with MockUpstream(lambda r: next(responses)) as upstream:
        model = bedrock_model("amazon", "amazon.titan-text-express-v1", upstream.url)
        for expected in ("malformed event stream", "ended early"):
            with pytest.raises(ProviderError) as info:
                run(lambda c: collect(adapter_for(model, c).chat_stream(CHAT)))
            assert info.value.kind == "upstream_server"
            assert expected in info.value.message


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "upstream_client"), (403, "upstream_client"), (500, "upstream_server")],
)
@pytest.mark.parametrize("streaming", [False, True])
def test_bedrock_upstream_http_errors(status: int, kind: str, streaming: bool) -> None:
    body = {"message": f"The request failed ({status})"}
    answer = MockResponse(status=status, json=body, headers={"x-amzn-ErrorType": "X"})
    with MockUpstream(lambda r: answer) as upstream:
        model = bedrock_model("anthropic", "anthropic.claude-v2", upstream.url)

        async def call(client: httpx.AsyncClient) -> Any:
            adapter = adapter_for(model, client)
            if streaming:
                return await collect(adapter.chat_stream(CHAT))
            return await adapter.chat(CHAT)

        with pytest.raises(ProviderError) as info:
            run(call)
    assert (info.value.kind, info.value.status) == (kind, status)
    assert f"The request failed ({status})" in info.value.message
    assert_no_secrets(str(info.value), SECRET)


@pytest.mark.parametrize("streaming", [False, True])
def test_bedrock_timeout(streaming: bool) -> None:
    slow = MockResponse(json=BEDROCK_CASES["amazon"]["answer"], delay=1.0)
    with MockUpstream(lambda r: slow) as upstream:
        model = bedrock_model("amazon", "amazon.titan-text-express-v1", upstream.url)

        async def call(client: httpx.AsyncClient) -> Any:
            adapter = adapter_for(model, client)
            if streaming:
                return await collect(adapter.chat_stream(CHAT))
            return await adapter.chat(CHAT)

        with pytest.raises(ProviderError) as info:
            run(call, timeout=0.2)
    assert info.value.kind == "timeout"
    assert status_for(info.value) == 504
    assert_no_secrets(str(info.value), SECRET)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> pytest.MonkeyPatch:
    """An environment where botocore's chain can only find what the test puts there."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


def test_bedrock_instance_profile_uses_default_chain(aws_env: pytest.MonkeyPatch) -> None:
    aws_env.setenv("AWS_ACCESS_KEY_ID", "AKIAENVIRONMENT00001")
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    aws_env.setenv("AWS_SESSION_TOKEN", "session-token-1")
    answer = MockResponse(json=BEDROCK_CASES["amazon"]["answer"])
    with MockUpstream(lambda r: answer) as upstream:
        model = bedrock_model(
            "amazon",
            "amazon.titan-text-express-v1",
            upstream.url,
            aws_access_key_id=None,
            aws_secret_access_key=None,
            instance_profile_arn="arn:aws:iam::123456789012:instance-profile/bedrock",
        )

        async def twice(client: httpx.AsyncClient) -> None:
            adapter = adapter_for(model, client)
            await adapter.chat(CHAT)
            await adapter.chat(CHAT)

        run(twice)
    for request in upstream.requests:
        assert request.headers["x-amz-security-token"] == "session-token-1"
        assert "x-amz-security-token" in AUTH.fullmatch(request.headers["authorization"])["signed"]
        assert_sigv4(request, upstream.url, key_id="AKIAENVIRONMENT00001")


def test_bedrock_default_chain_without_credentials_is_config_error(
    aws_env: pytest.MonkeyPatch,
) -> None:
    model = bedrock_model(
        "amazon",
        "amazon.titan-text-express-v1",
        "http://127.0.0.1:9",
        aws_access_key_id=None,
        aws_secret_access_key=None,
        uc_service_credential_name="main.creds.bedrock",
    )
    with pytest.raises(ProviderError) as info:
        run(lambda c: adapter_for(model, c).chat(CHAT))
    assert info.value.kind == "config"
    assert "no AWS credentials" in info.value.message


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"aws_region": None}, "aws_region"),
        ({"bedrock_provider": "meta"}, "bedrock_provider"),
        ({"aws_secret_access_key": None}, "both"),
        ({"aws_access_key_id": None, "aws_secret_access_key": None}, "instance_profile_arn"),
    ],
)
def test_bedrock_config_errors(change: dict[str, Any], needle: str) -> None:
    model = bedrock_model("amazon", "amazon.titan-text-express-v1", "http://127.0.0.1:9")
    config = model["amazon_bedrock_config"]
    for key, value in change.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    with pytest.raises(ProviderError) as info:
        run(lambda c: adapter_for(model, c))
    assert info.value.kind == "config"
    assert needle in info.value.message
    assert_no_secrets(info.value.message, SECRET, KEY_ID)


def test_bedrock_unsupported_requests() -> None:
    base = "http://127.0.0.1:9"

    async def attempts(client: httpx.AsyncClient) -> list[ProviderError]:
        errors = []
        ai21 = adapter_for(bedrock_model("ai21labs", "ai21.j2-ultra-v1", base), client)
        claude = adapter_for(bedrock_model("anthropic", "anthropic.claude-v2", base), client)
        titan = adapter_for(bedrock_model("amazon", "amazon.titan-text-lite-v1", base), client)
        for call in (
            lambda: ai21.chat_stream(CHAT),
            lambda: claude.embeddings({"input": "x"}),
            lambda: titan.chat({**CHAT, "n": 2}),
        ):
            with pytest.raises(ProviderError) as info:
                result = call()
                if asyncio.iscoroutine(result):
                    await result
            errors.append(info.value)
        return errors

    errors = run(attempts)
    assert [e.kind for e in errors] == ["unsupported"] * 3
    assert all(status_for(e) == 400 for e in errors)


# == Google Cloud Vertex AI ===================================================================

PROJECT, LOCATION, GEMINI = "my-proj", "us-central1", "gemini-1.5-pro"
GEMINI_PATH = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/{GEMINI}"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


@functools.cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem() -> str:
    return (
        rsa_key()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# A hang guard, not a timing expectation: how long a gated token answer waits for its gate.
GATE_WAIT = 10.0


class FakeGoogle:
    """Token endpoint (verifies the JWT-bearer grant) + a scripted Vertex API."""

    def __init__(
        self,
        respond: Callable[[RecordedRequest], MockResponse] | None = None,
        *,
        expires_in: int = 3600,
        token_delay: float = 0.0,
        token_error: bool = False,
        token_gate: threading.Event | None = None,
    ) -> None:
        self.respond = respond or (lambda r: MockResponse(json=GEMINI_ANSWER))
        self.expires_in = expires_in
        self.token_delay = token_delay
        self.token_error = token_error
        # When given, the token answer waits (at most GATE_WAIT s) until the test opens the
        # gate; `gate_opened` records, per token request, whether it was opened in that time.
        self.token_gate = token_gate
        self.gate_opened: list[bool] = []
        self.token_requests: list[RecordedRequest] = []
        self.claims: list[dict[str, Any]] = []
        self.api_requests: list[RecordedRequest] = []
        self.upstream = MockUpstream(self)

    def __call__(self, request: RecordedRequest) -> MockResponse:
        if request.path == "/token":
            self.token_requests.append(request)
            if self.token_gate is not None:
                self.gate_opened.append(self.token_gate.wait(GATE_WAIT))
            if self.token_error:
                return MockResponse(
                    status=400,
                    json={"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
                )
            form = parse_qs(request.body.decode())
            assert form["grant_type"] == [JWT_BEARER]
            header, payload, signature = form["assertion"][0].split(".")
            rsa_key().public_key().verify(
                b64url_decode(signature),
                f"{header}.{payload}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            assert json.loads(b64url_decode(header))["alg"] == "RS256"
            self.claims.append(json.loads(b64url_decode(payload)))
            token = {"access_token": TOKEN, "expires_in": self.expires_in, "token_type": "Bearer"}
            return MockResponse(json=token, delay=self.token_delay)
        self.api_requests.append(request)
        return self.respond(request)

    def key_json(self) -> str:
        return json.dumps(
            {
                "type": "service_account",
                "project_id": PROJECT,
                "private_key_id": "f00dfeed0123",
                "private_key": private_pem(),
                "client_email": f"gateway@{PROJECT}.iam.gserviceaccount.com",
                "client_id": "1234567890",
                "token_uri": f"{self.upstream.url}/token",
            }
        )

    def model(self, task: str = "llm/v1/chat", name: str = GEMINI, **config: Any) -> dict:
        block = {
            "project_id": PROJECT,
            "region": LOCATION,
            "private_key": self.key_json(),
            "vertex_api_base": self.upstream.url,
            **config,
        }
        return {
            "name": name,
            "provider": "google-cloud-vertex-ai",
            "task": task,
            "google_cloud_vertex_ai_config": {k: v for k, v in block.items() if v is not None},
        }


@contextmanager
def google(*args: Any, **kwargs: Any) -> Iterator[FakeGoogle]:
    fake = FakeGoogle(*args, **kwargs)
    with fake.upstream:
        yield fake


GEMINI_ANSWER = {
    "candidates": [
        {
            "index": 0,
            "content": {"role": "model", "parts": [{"text": "Hello"}, {"text": " there"}]},
            "finishReason": "STOP",
        }
    ],
    "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 2, "totalTokenCount": 8},
    "responseId": "resp-1",
}

SECRETS = (TOKEN, "f00dfeed0123")


def key_secrets() -> tuple[str, ...]:
    lines = private_pem().splitlines()
    return (*SECRETS, private_pem(), lines[1], lines[len(lines) // 2])


def test_vertex_jwt_bearer_grant_and_token_reused() -> None:
    with google() as fake:
        model = fake.model()

        async def twice(client: httpx.AsyncClient) -> list[Any]:
            adapter = adapter_for(model, client)
            assert isinstance(adapter, VertexAdapter)
            return [await adapter.chat(CHAT), await adapter.chat(CHAT)]

        results = run(twice)

    assert len(fake.token_requests) == 1
    (claims,) = fake.claims
    assert claims["iss"] == f"gateway@{PROJECT}.iam.gserviceaccount.com"
    # google-auth names Google's token endpoint as the audience even when posting elsewhere.
    assert claims["aud"] in (f"{fake.upstream.url}/token", "https://oauth2.googleapis.com/token")
    assert claims["exp"] > claims["iat"]
    assert claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
    assert len(fake.api_requests) == 2
    for request in fake.api_requests:
        assert request.path == f"{GEMINI_PATH}:generateContent"
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert results[0]["choices"][0]["message"]["content"] == "Hello there"


def test_vertex_concurrent_calls_fetch_one_token() -> None:
    with google(token_delay=0.2) as fake:
        model = fake.model()

        async def many(client: httpx.AsyncClient) -> None:
            adapter = adapter_for(model, client)
            await asyncio.gather(*(adapter.chat(CHAT) for _ in range(5)))

        run(many)
    assert len(fake.token_requests) == 1
    assert len(fake.api_requests) == 5


def test_vertex_token_refreshed_when_near_expiry() -> None:
    # A token that is already inside the refresh margin is used once, then replaced.
    with google(expires_in=0) as fake:
        model = fake.model()

        async def twice(client: httpx.AsyncClient) -> None:
            adapter = adapter_for(model, client)
            await adapter.chat(CHAT)
            await adapter.chat(CHAT)

        run(twice)
    assert len(fake.token_requests) == 2


def test_vertex_token_refresh_does_not_block_event_loop() -> None:
    # The token answer waits until a task on the event loop opens the gate, which that task
    # can do only if the loop keeps running while the token call is in flight.
    gate = threading.Event()
    with google(token_gate=gate) as fake:
        model = fake.model()

        async def with_opener(client: httpx.AsyncClient) -> None:
            async def open_when_asked() -> None:
                while not fake.token_requests:
                    await asyncio.sleep(0.01)
                gate.set()

            opener = asyncio.create_task(open_when_asked())
            try:
                await adapter_for(model, client).chat(CHAT)
            finally:
                gate.set()
                await opener

        run(with_opener)
    assert fake.gate_opened == [True]


def test_vertex_token_without_requests_uses_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    # google-auth's requests transport fails to import when `requests` is missing.
    monkeypatch.setitem(sys.modules, "google.auth.transport.requests", None)
    with google() as fake:
        model = fake.model()
        result = run(lambda c: adapter_for(model, c).chat(CHAT))
    assert len(fake.token_requests) == 1
    assert fake.api_requests[0].headers["authorization"] == f"Bearer {TOKEN}"
    assert result["usage"]["total_tokens"] == 8


def test_vertex_chat_request_shape_and_response() -> None:
    answer = {
        "candidates": [
            {
                "index": 1,
                "content": {"role": "model", "parts": [{"text": "B"}]},
                "finishReason": "MAX_TOKENS",
            },
            {
                "index": 0,
                "content": {
                    "role": "model",
                    "parts": [{"text": "thinking...", "thought": True}, {"text": "A"}],
                },
                "finishReason": "STOP",
            },
        ],
        "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 4},
    }
    body = {
        **CHAT,
        "messages": [*CHAT["messages"], {"role": "user", "content": "More"}],
        "n": 2,
        "top_p": 0.8,
        "top_k": 20,
    }
    with google(lambda r: MockResponse(json=answer)) as fake:
        model = fake.model()
        result = run(lambda c: adapter_for(model, c).chat(body))

    (request,) = fake.api_requests
    assert request.json() == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hey"}]},
            {"role": "user", "parts": [{"text": "Tell me"}, {"text": "More"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "temperature": 0.5,
            "maxOutputTokens": 50,
            "topP": 0.8,
            "topK": 20,
            "candidateCount": 2,
            "stopSequences": ["END"],
        },
    }
    assert result["object"] == "chat.completion"
    assert [(c["message"]["content"], c["finish_reason"]) for c in result["choices"]] == [
        ("A", "stop"),
        ("B", "length"),
    ]
    assert result["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


@pytest.mark.parametrize(
    ("answer", "finish"),
    [
        ({"candidates": [{"content": {"parts": []}, "finishReason": "SAFETY"}]}, "content_filter"),
        ({"candidates": [{"finishReason": "RECITATION"}]}, "content_filter"),
        ({"promptFeedback": {"blockReason": "SAFETY"}}, "content_filter"),
        (
            {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "OTHER"}]},
            "stop",
        ),
    ],
)
def test_vertex_finish_reasons(answer: dict[str, Any], finish: str) -> None:
    with google(lambda r: MockResponse(json=answer)) as fake:
        model = fake.model()
        result = run(lambda c: adapter_for(model, c).chat(CHAT))
    assert result["choices"][0]["finish_reason"] == finish


def test_vertex_completions() -> None:
    with google() as fake:
        model = fake.model("llm/v1/completions")
        result = run(
            lambda c: adapter_for(model, c).completions({"prompt": "Say hi", "max_tokens": 5})
        )
    assert fake.api_requests[0].json() == {
        "contents": [{"role": "user", "parts": [{"text": "Say hi"}]}],
        "generationConfig": {"maxOutputTokens": 5},
    }
    assert result["object"] == "text_completion"
    assert result["choices"][0]["text"] == "Hello there"
    assert result["choices"][0]["finish_reason"] == "stop"
    assert result["usage"]["total_tokens"] == 8


GEMINI_STREAM = [
    {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
        "usageMetadata": {"promptTokenCount": 6},
    },
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}}]},
    {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "!"}]}, "finishReason": "STOP"}
        ],
        "usageMetadata": {"promptTokenCount": 6, "candidatesTokenCount": 3},
    },
]


@pytest.mark.parametrize("chat", [True, False])
def test_vertex_stream(chat: bool) -> None:
    response = MockResponse(chunks=sse((None, event) for event in GEMINI_STREAM))
    with google(lambda r: response) as fake:
        model = fake.model()

        async def call(client: httpx.AsyncClient) -> list[dict[str, Any]]:
            adapter = adapter_for(model, client)
            if chat:
                return await collect(adapter.chat_stream(CHAT))
            return await collect(adapter.completions_stream({"prompt": "Say hi"}))

        chunks = run(call)

    (request,) = fake.api_requests
    assert request.path == f"{GEMINI_PATH}:streamGenerateContent"
    assert request.query == {"alt": ["sse"]}
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert streamed_text(chunks) == "Hello!"
    assert all(
        c["object"] == ("chat.completion.chunk" if chat else "text_completion") for c in chunks
    )
    if chat:
        assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert "usage" not in chunks[0]
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9}


def test_vertex_stream_without_finish_is_an_error() -> None:
    response = MockResponse(chunks=sse((None, event) for event in GEMINI_STREAM[:2]))
    with google(lambda r: response) as fake:
        model = fake.model()
        with pytest.raises(ProviderError) as info:
            run(lambda c: collect(adapter_for(model, c).chat_stream(CHAT)))
    assert info.value.kind == "upstream_server"
    assert "ended early" in info.value.message


def test_vertex_embeddings() -> None:
    answer = {
        "predictions": [
            {"embeddings": {"values": [0.1, 0.2], "statistics": {"token_count": 2.0}}},
            {"embeddings": {"values": [0.3, 0.4], "statistics": {"token_count": 3.0}}},
        ],
        "metadata": {"billableCharacterCount": 10},
    }
    with google(lambda r: MockResponse(json=answer)) as fake:
        model = fake.model("llm/v1/embeddings", name="text-embedding-004")
        result = run(
            lambda c: adapter_for(model, c).embeddings({"input": ["hi", "there"], "dimensions": 2})
        )
    (request,) = fake.api_requests
    assert request.path == (
        f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"
        "text-embedding-004:predict"
    )
    assert request.json() == {
        "instances": [{"content": "hi"}, {"content": "there"}],
        "parameters": {"outputDimensionality": 2},
    }
    assert [d["embedding"] for d in result["data"]] == [[0.1, 0.2], [0.3, 0.4]]
    assert result["usage"] == {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}


@pytest.mark.parametrize(
    ("status", "google_status", "kind"),
    [
        (400, "INVALID_ARGUMENT", "upstream_client"),
        (429, "RESOURCE_EXHAUSTED", "upstream_client"),
        (500, "INTERNAL", "upstream_server"),
        (503, "UNAVAILABLE", "upstream_server"),
    ],
)
@pytest.mark.parametrize("streaming", [False, True])
def test_vertex_upstream_http_errors(
    status: int, google_status: str, kind: str, streaming: bool
) -> None:
    error = {
        "error": {"code": status, "message": f"It went wrong ({status})", "status": google_status}
    }
    with google(lambda r: MockResponse(status=status, json=error)) as fake:
        model = fake.model()

        async def call(client: httpx.AsyncClient) -> Any:
            adapter = adapter_for(model, client)
            if streaming:
                return await collect(adapter.chat_stream(CHAT))
            return await adapter.chat(CHAT)

        with pytest.raises(ProviderError) as info:
            run(call)
    assert (info.value.kind, info.value.status) == (kind, status)
    assert f"It went wrong ({status})" in info.value.message
    assert_no_secrets(str(info.value), *key_secrets())


def test_vertex_error_echoing_the_token_is_redacted() -> None:
    error = {"error": {"code": 400, "message": f"bad header Bearer {TOKEN}", "status": "X"}}
    with google(lambda r: MockResponse(status=400, json=error)) as fake:
        model = fake.model()
        with pytest.raises(ProviderError) as info:
            run(lambda c: adapter_for(model, c).chat(CHAT))
    assert "[REDACTED]" in info.value.message
    assert_no_secrets(str(info.value), *key_secrets())


def test_vertex_401_drops_the_cached_token() -> None:
    answers = iter(
        [
            MockResponse(status=401, json={"error": {"code": 401, "message": "expired"}}),
            MockResponse(json=GEMINI_ANSWER),
        ]
    )
    with google(lambda r: next(answers)) as fake:
        model = fake.model()

        async def twice(client: httpx.AsyncClient) -> Any:
            adapter = adapter_for(model, client)
            with pytest.raises(ProviderError):
                await adapter.chat(CHAT)
            return await adapter.chat(CHAT)

        result = run(twice)
    assert len(fake.token_requests) == 2
    assert result["choices"][0]["message"]["content"] == "Hello there"


@pytest.mark.parametrize("streaming", [False, True])
def test_vertex_timeout(streaming: bool) -> None:
    with google(lambda r: MockResponse(json=GEMINI_ANSWER, delay=1.0)) as fake:
        model = fake.model()

        async def call(client: httpx.AsyncClient) -> Any:
            adapter = adapter_for(model, client)
            if streaming:
                return await collect(adapter.chat_stream(CHAT))
            return await adapter.chat(CHAT)

        with pytest.raises(ProviderError) as info:
            run(call, timeout=0.3)
    assert info.value.kind == "timeout"
    assert_no_secrets(str(info.value), *key_secrets())


def test_vertex_token_endpoint_refusal_is_config_error() -> None:
    with google(token_error=True) as fake:
        model = fake.model()
        with pytest.raises(ProviderError) as info:
            run(lambda c: adapter_for(model, c).chat(CHAT))
    assert info.value.kind == "config"
    assert "invalid_grant" in info.value.message
    assert fake.api_requests == []
    assert_no_secrets(str(info.value), *key_secrets())


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        (lambda: private_pem(), "service-account JSON key"),
        (lambda: "not json at all", "service-account JSON key"),
        (lambda: json.dumps({"private_key": private_pem()}), "client_email, token_uri"),
        (
            lambda: json.dumps(
                {"private_key": "garbage", "client_email": "a@b.c", "token_uri": "http://x/token"}
            ),
            "not a PEM key",
        ),
    ],
)
def test_vertex_bad_key_is_config_error(key: Callable[[], str], needle: str) -> None:
    with google() as fake:
        model = fake.model(private_key=None, private_key_plaintext=key())
        with pytest.raises(ProviderError) as info:
            run(lambda c: adapter_for(model, c))
    assert info.value.kind == "config"
    assert needle in info.value.message
    assert_no_secrets(str(info.value), *key_secrets())


def test_vertex_plaintext_key_and_global_location() -> None:
    with google() as fake:
        model = fake.model(private_key=None, private_key_plaintext=fake.key_json())
        result = run(lambda c: adapter_for(model, c).chat(CHAT))
        assert result["usage"]["total_tokens"] == 8
        model_global = fake.model(region="global", vertex_api_base=None)
        adapter = run(lambda c: adapter_for(model_global, c))
    assert adapter.model_url.startswith(
        f"https://aiplatform.googleapis.com/v1/projects/{PROJECT}/locations/global/"
    )


def test_registry_names() -> None:
    async def build(client: httpx.AsyncClient) -> tuple[Any, Any]:
        bedrock = adapter_for(bedrock_model("amazon", "amazon.titan-text-lite-v1", "x"), client)
        with google() as fake:
            vertex = adapter_for(fake.model(), client)
        return bedrock, vertex

    bedrock, vertex = run(build)
    assert isinstance(bedrock, BedrockAdapter) and isinstance(vertex, VertexAdapter)
    assert bedrock.invoke_url == "x/model/amazon.titan-text-lite-v1/invoke"


@pytest.mark.parametrize("transport", ["requests", "httpx"])
def test_vertex_token_fetch_time_is_bounded(
    transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The token call gets the client's read timeout, not google-auth's 120 s default.
    if transport == "httpx":
        monkeypatch.setitem(sys.modules, "google.auth.transport.requests", None)
    # The token endpoint does not answer until GATE_WAIT has passed: a token call bounded by
    # the client's 0.3 s read timeout fails as a timeout; an unbounded one would get the token
    # late, and the chat would succeed.
    gate = threading.Event()
    with google(token_gate=gate) as fake:
        model = fake.model()

        async def bounded(client: httpx.AsyncClient) -> None:
            try:
                with pytest.raises(ProviderError) as info:
                    await adapter_for(model, client).chat(CHAT)
            finally:
                gate.set()
            assert info.value.kind == "timeout"
            assert_no_secrets(str(info.value), *key_secrets())

        run(bounded, timeout=0.3)
    assert fake.api_requests == []
