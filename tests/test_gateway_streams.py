"""Streams through `engine serve`: real server process, upstreams on loopback in each format.

What a client of a stream may count on: `data: [DONE]` comes only when the upstream's stream
ended as its format says a stream ends; a stream that breaks (not an event stream, cut, an
error event) ends with one event in the platform's error shape instead; an OpenAI-wire
upstream's events reach the client as the upstream sent them, with usage accounted; and a
client that goes away stops the upstream call.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine, write_specs
from mock_http import MockResponse, MockUpstream, RecordedRequest, sse
from provider_fakes import VERTEX_TOKEN, service_account_key
from serving_harness import ServerProcess, endpoint
from test_adapter_bedrock_vertex import chunk_frame, event_stream

from engine.access.tokens import create_token
from engine.gateway._usage import read_usage

CHAT = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
USAGE = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
# Connections the gateway's pool keeps per upstream (engine/gateway/_table.py).
POOL = 256
WAIT = 60.0  # seconds a condition may take on a loaded 2-core machine before a test fails


def chunk(text: str | None, **extra: Any) -> dict[str, Any]:
    choices = [] if text is None else [{"index": 0, "delta": {"content": text}}]
    return {"id": "c1", "object": "chat.completion.chunk", "choices": choices, **extra}


# The upstream's own bytes: json.dumps' default separators, which the gateway never writes.
HELLO = sse(
    [
        (None, chunk("Hel", usage=None)),
        (None, chunk("lo", usage=None)),
        (None, chunk(None, usage=USAGE)),
        (None, "[DONE]"),
    ]
)


def slow(stop_after: int = 3000) -> Iterator[bytes]:
    """A long generation: an event every 20 ms (a minute in all), until the reader goes."""
    for i in range(stop_after):
        yield sse([(None, chunk(f"t{i} "))])[0]
        time.sleep(0.02)
    yield sse([(None, "[DONE]")])[0]


ANTHROPIC_START = {
    "type": "message_start",
    "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 5}},
}
ANTHROPIC_DELTA = {
    "type": "content_block_delta",
    "index": 0,
    "delta": {"type": "text_delta", "text": "Hel"},
}

# model name -> what the upstream answers a stream request with.
OPENAI: dict[str, Callable[[], MockResponse]] = {
    "hello": lambda: MockResponse(chunks=HELLO),
    # A server that ignores `stream` and answers the whole completion as JSON.
    "json-200": lambda: MockResponse(
        json={"object": "chat.completion", "choices": [], "usage": USAGE}
    ),
    "text-200": lambda: MockResponse(
        body=b"model is warming up", headers={"Content-Type": "text/plain"}
    ),
    # The body ends properly, but before [DONE] (e.g. a proxy that gave up).
    "ended": lambda: MockResponse(chunks=HELLO[:2]),
    # The connection drops mid-body.
    "dropped": lambda: MockResponse(chunks=HELLO[:2], cut=True),
    "error-event": lambda: MockResponse(
        chunks=[HELLO[0], *sse([(None, {"error": {"message": "engine overloaded"}})])]
    ),
    "slow": lambda: MockResponse(chunks=slow()),
    "refuses": lambda: MockResponse(status=429, json={"error": {"message": "slow down"}}),
}


GEMINI_PART = {
    "candidates": [{"index": 0, "content": {"role": "model", "parts": [{"text": "Hel"}]}}]
}


def handler(request: RecordedRequest) -> MockResponse:
    if request.path == "/token":  # Google's token endpoint, for Vertex AI
        return MockResponse(json={"access_token": VERTEX_TOKEN, "expires_in": 3600})
    if request.path.endswith(":streamGenerateContent"):  # Vertex AI, cut before a finishReason
        return MockResponse(chunks=sse([(None, GEMINI_PART), (None, GEMINI_PART)]))
    if request.path == "/v1/messages":  # Anthropic, cut before message_stop
        events = [("message_start", ANTHROPIC_START), ("content_block_delta", ANTHROPIC_DELTA)]
        return MockResponse(chunks=sse(events))
    if request.path.endswith("/invoke-with-response-stream"):  # Bedrock, the same cut
        return event_stream([chunk_frame(ANTHROPIC_START), chunk_frame(ANTHROPIC_DELTA)])
    return OPENAI[request.json()["model"]]()


def openai(model_name: str, base: str) -> dict[str, Any]:
    config = {"openai_api_key_plaintext": "sk-test", "openai_api_base": base + "/v1"}
    model = {"name": model_name, "provider": "openai", "task": "llm/v1/chat"}
    return {"name": "e", "external_model": {**model, "openai_config": config}}


def native(provider: str, name: str, config_key: str, config: dict[str, Any]) -> dict[str, Any]:
    model = {"name": name, "provider": provider, "task": "llm/v1/chat", config_key: config}
    return {"name": "e", "external_model": model}


@dataclass
class Gateway:
    url: str
    auth: dict[str, str]
    upstream: MockUpstream
    usage_db: Path

    def stream(self, name: str) -> tuple[int, bytes]:
        """Status and body of one chat stream through endpoint `name`."""
        with httpx.stream(
            "POST",
            f"{self.url}/serving-endpoints/{name}/invocations",
            json=CHAT,
            headers=self.auth,
            timeout=30,
        ) as response:
            return response.status_code, response.read()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("streams")
    with MockUpstream(handler) as upstream:
        base = upstream.url
        specs = [endpoint(name, [openai(name, base)]) for name in OPENAI]
        specs += [
            endpoint(
                "hello-limited",
                [openai("hello", base)],
                ai_gateway={
                    "usage_tracking_config": {"enabled": True},
                    "rate_limits": [{"tokens": 10, "key": "endpoint", "renewal_period": "minute"}],
                },
            ),
            endpoint(
                "anthropic",
                [
                    native(
                        "anthropic",
                        "claude",
                        "anthropic_config",
                        {"anthropic_api_key_plaintext": "sk-ant", "anthropic_api_base": base},
                    )
                ],
            ),
            endpoint(
                "vertex",
                [
                    native(
                        "google-cloud-vertex-ai",
                        "gemini-1.5-pro",
                        "google_cloud_vertex_ai_config",
                        {
                            "project_id": "proj",
                            "region": "us-central1",
                            "private_key_plaintext": service_account_key(f"{base}/token"),
                            "vertex_api_base": base,
                        },
                    )
                ],
            ),
            endpoint(
                "bedrock",
                [
                    native(
                        "amazon-bedrock",
                        "anthropic.claude-v2",
                        "amazon_bedrock_config",
                        {
                            "aws_region": "us-east-1",
                            "bedrock_provider": "anthropic",
                            "aws_access_key_id_plaintext": "AKIATESTTESTTEST0000",
                            "aws_secret_access_key_plaintext": "secret",
                            "bedrock_api_base": base,
                        },
                    )
                ],
            ),
        ]
        engine = Engine(tmp / "state" / "state.db")
        _, report = engine.apply(write_specs(tmp / "specs", specs))
        assert report.ok, report.failed
        _, token = create_token(engine.store, "alice@example.com")
        with ServerProcess(engine.state) as server:
            server.wait_serial(engine.store.serial)
            auth = {"Authorization": f"Bearer {token}"}
            yield Gateway(server.url, auth, upstream, engine.state.parent / "usage.db")
        engine.close()


def events(body: bytes) -> list[bytes]:
    return [e for e in body.split(b"\n\n") if e.strip()]


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """A bounded wait on a condition (the bound only decides when a test gives up)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT:.0f} s: {what}")
        time.sleep(0.05)


def assert_ends_in_error(body: bytes, needle: str) -> None:
    assert b"data: [DONE]" not in events(body), body
    last = events(body)[-1]
    assert last.startswith(b"data: "), body
    error = json.loads(last[6:])
    assert error["error_code"] == "TEMPORARILY_UNAVAILABLE", error
    assert needle in error["message"], error


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("json-200", "application/json, not an event stream"),
        ("text-200", "text/plain, not an event stream: model is warming up"),
    ],
)
def test_a_2xx_that_is_not_an_event_stream_ends_in_an_error_event(
    gateway: Gateway, name: str, needle: str
) -> None:
    status, body = gateway.stream(name)
    assert status == 200
    assert len(events(body)) == 1, body  # nothing from the body is passed on as events
    assert_ends_in_error(body, needle)


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("ended", "ended before [DONE]"),
        ("dropped", "stream failed"),
        ("anthropic", "ended early"),
        ("bedrock", "ended early"),
        ("vertex", "ended early"),
        ("error-event", "engine overloaded"),
    ],
)
def test_a_stream_cut_before_its_end_is_not_completed(
    gateway: Gateway, name: str, needle: str
) -> None:
    status, body = gateway.stream(name)
    assert status == 200
    assert len(events(body)) >= 2, body  # what came before the cut was passed on
    assert_ends_in_error(body, needle)


def test_the_openai_sdk_raises_on_a_cut_stream(gateway: Gateway) -> None:
    """The error event carries the `error` object OpenAI-compatible clients look for: the SDK
    raises instead of returning a silently truncated answer."""
    import openai

    token = gateway.auth["Authorization"].removeprefix("Bearer ")
    client = openai.OpenAI(base_url=gateway.url + "/serving-endpoints", api_key=token)
    stream = client.chat.completions.create(model="ended", messages=CHAT["messages"], stream=True)
    with pytest.raises(openai.APIError, match="ended before"):
        for _ in stream:
            pass
    # A whole stream reads to its end as usual.
    whole = client.chat.completions.create(model="hello", messages=CHAT["messages"], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in whole if c.choices) == "Hello"


def test_a_stream_refused_before_it_starts_keeps_a_status(gateway: Gateway) -> None:
    """Nothing is sent yet, so the client gets a status, not a stream with an error event."""
    refused = httpx.post(
        f"{gateway.url}/serving-endpoints/refuses/invocations", json=CHAT, headers=gateway.auth
    )
    assert refused.status_code == 429, refused.text
    assert refused.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    # Content the adapter cannot send (Anthropic takes text parts only) is the caller's 400.
    image = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    body = {**CHAT, "messages": [{"role": "user", "content": image}]}
    rejected = httpx.post(
        f"{gateway.url}/serving-endpoints/anthropic/invocations", json=body, headers=gateway.auth
    )
    assert rejected.status_code == 400, rejected.text
    assert rejected.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_openai_wire_events_pass_through_as_sent_with_usage_accounted(gateway: Gateway) -> None:
    status, body = gateway.stream("hello-limited")
    assert status == 200
    assert body == b"".join(HELLO)  # byte for byte, [DONE] included, nothing added
    metrics = httpx.get(gateway.url + "/metrics", headers=gateway.auth).text
    for kind, n in (("prompt", 5), ("completion", 3)):
        line = f'serving_tokens_total{{endpoint="hello-limited",entity="e",type="{kind}"}} {n}'
        assert line in metrics
    wait_for(lambda: read_usage(gateway.usage_db), "the usage record was written")
    (record,) = read_usage(gateway.usage_db)
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (200, 5, 3)
    # The limit is 10 tokens a minute and 8 are charged: one more stream fits, then none.
    assert gateway.stream("hello-limited")[0] == 200
    assert gateway.stream("hello-limited")[0] == 429


def test_a_client_gone_mid_stream_stops_the_upstream_call(gateway: Gateway) -> None:
    upstream = gateway.upstream
    clients = threading.local()  # one per worker: building an httpx client costs ~10 ms CPU
    made: list[httpx.Client] = []

    def abandon(_: int) -> None:
        if not hasattr(clients, "client"):
            clients.client = httpx.Client(base_url=gateway.url, headers=gateway.auth, timeout=30)
            made.append(clients.client)
        path = "/serving-endpoints/slow/invocations"
        with clients.client.stream("POST", path, json=CHAT) as response:
            assert response.status_code == 200
            next(response.iter_lines())  # the first event is here; then the client goes away

    before = upstream.streams_abandoned
    abandon(0)
    wait_for(lambda: upstream.streams_abandoned > before, "the upstream saw its stream closed")
    # More abandoned streams than the pool has connections: none may keep one.
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(abandon, range(POOL + 8)))
    finally:
        for client in made:
            client.close()
    wait_for(
        lambda: upstream.streams_abandoned >= before + POOL + 9,
        "every abandoned stream's upstream connection was closed",
    )
    status, body = gateway.stream("hello")
    assert status == 200 and body.endswith(b"data: [DONE]\n\n")
