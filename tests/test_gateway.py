"""`engine serve` end to end: real server process, real sockets, an OpenAI-speaking upstream."""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from engine_harness import Engine, write_specs
from mock_http import MockUpstream
from serving_harness import ServerProcess, endpoint, openai_entity, openai_upstream

from engine.access.tokens import create_token
from engine.state import resolve_state


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(openai_upstream) as server:
        yield server


@pytest.fixture
def stack(tmp_path: Path, upstream: MockUpstream, state_url: str):  # noqa: ANN201
    engine = Engine(state_url)
    engine.secrets.create_scope("scope")
    engine.secrets.put_secret("scope", "openai", "sk-upstream-key")
    base = upstream.url + "/v1"
    specs = write_specs(
        tmp_path / "specs",
        [
            endpoint("chat", [openai_entity("gpt4", "gpt-4", base)]),
            endpoint(
                "completions",
                [openai_entity("instruct", "gpt-3.5-instruct", base, task="llm/v1/completions")],
            ),
            endpoint(
                "embeddings", [openai_entity("ada", "ada-002", base, task="llm/v1/embeddings")]
            ),
            endpoint(
                "split",
                [
                    openai_entity("big", "model-big", base),
                    openai_entity("small", "model-small", base),
                ],
                [90, 10],
            ),
            endpoint(
                "limited",
                [openai_entity("m", "model-limited", base)],
                rate_limits=[{"calls": 100, "key": "endpoint", "renewal_period": "minute"}],
                ai_gateway={"usage_tracking_config": {"enabled": True}},
            ),
            endpoint(
                "blocked",
                [openai_entity("m", "model-blocked", base)],
                ai_gateway={"rate_limits": [{"calls": 0, "renewal_period": "minute"}]},
            ),
        ],
    )
    _, report = engine.apply(specs)
    assert report.ok, report.failed
    _, token = create_token(engine.store, "alice@example.com", groups=["ml"])
    with ServerProcess(engine.state, log_dir=tmp_path) as server:
        server.wait_serial(engine.store.serial)
        yield engine, server, {"Authorization": f"Bearer {token}"}, specs, base
    engine.close()


def test_invocations_per_task(stack) -> None:  # noqa: ANN001
    engine, server, auth, _, _ = stack
    with httpx.Client(base_url=server.url, headers=auth) as client:
        chat = client.post(
            "/serving-endpoints/chat/invocations",
            json={
                "messages": [{"role": "user", "content": "hi"}],
                "temperature": 0.1,
                "max_tokens": 5,
            },
        )
        assert chat.status_code == 200, chat.text
        assert chat.headers["served-model-name"] == "gpt4"
        assert chat.json()["choices"][0]["message"]["content"] == "reply from gpt-4"
        assert chat.json()["usage"]["total_tokens"] == 9
        completion = client.post(
            "/serving-endpoints/completions/invocations",
            json={"prompt": "say", "n": 1, "stop": ["\n"]},
        )
        assert completion.json()["choices"][0]["text"] == "completion from gpt-3.5-instruct"
        vectors = client.post(
            "/serving-endpoints/embeddings/invocations", json={"input": ["a", "b"]}
        )
        assert [d["embedding"] for d in vectors.json()["data"]] == [
            [0.5, -0.25, 0.0],
            [0.5, -0.25, 1.0],
        ]
        packed = client.post(
            "/serving-endpoints/embeddings",
            json={"model": "embeddings", "input": "a", "encoding_format": "base64"},
        )
        raw = base64.b64decode(packed.json()["data"][0]["embedding"])
        assert struct.unpack("<3f", raw) == (0.5, -0.25, 0.0)


def test_streaming_is_data_lines_ending_with_done(stack) -> None:  # noqa: ANN001
    _, server, auth, _, _ = stack
    with (
        httpx.Client(base_url=server.url, headers=auth) as client,
        client.stream(
            "POST",
            "/serving-endpoints/chat/invocations",
            json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    text = "".join(
        c["delta"].get("content", "")
        for line in lines[:-1]
        for c in __import__("json").loads(line[6:])["choices"]
    )
    assert text == "Hello!"


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/serving-endpoints/nope/invocations", {"messages": []}, 404, "RESOURCE_DOES_NOT_EXIST"),
        (
            "/serving-endpoints/chat/served-models/nope/invocations",
            {"messages": [{"role": "user", "content": "x"}]},
            404,
            "RESOURCE_DOES_NOT_EXIST",
        ),
        ("/serving-endpoints/chat/invocations", {"prompt": "x"}, 400, "INVALID_PARAMETER_VALUE"),
        (
            "/serving-endpoints/embeddings/invocations",
            {"messages": [{"role": "user", "content": "x"}]},
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            "/serving-endpoints/chat/invocations",
            {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"},
            400,
            "INVALID_PARAMETER_VALUE",
        ),
        (
            "/serving-endpoints/completions",
            {"model": "chat", "prompt": "x"},
            400,
            "INVALID_PARAMETER_VALUE",
        ),
    ],
)
def test_errors_have_the_platform_shape(stack, path, body, status, code) -> None:  # noqa: ANN001
    _, server, auth, _, _ = stack
    response = httpx.post(server.url + path, json=body, headers=auth)
    assert response.status_code == status
    assert response.json()["error_code"] == code and response.json()["message"]
    if status == 400 and "task" in response.json()["message"]:
        assert "llm/v1/" in response.json()["message"]


def test_unknown_or_missing_token_is_401(stack) -> None:  # noqa: ANN001
    _, server, _, _, _ = stack
    body = {"messages": [{"role": "user", "content": "x"}]}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic x"}):
        response = httpx.post(
            server.url + "/serving-endpoints/chat/invocations", json=body, headers=headers
        )
        assert response.status_code == 401
        assert response.json()["error_code"] == "UNAUTHENTICATED"


def test_traffic_split_and_served_models_route(stack) -> None:  # noqa: ANN001
    _, server, auth, _, _ = stack
    body = {"messages": [{"role": "user", "content": "x"}]}

    async def run() -> Counter[str]:
        counts: Counter[str] = Counter()
        # aiohttp, 16 connections: the 2000 requests take seconds, not half a minute.
        connector = aiohttp.TCPConnector(limit=16)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(
            server.url, headers=auth, connector=connector, timeout=timeout
        ) as session:

            async def one() -> None:
                async with session.post("/serving-endpoints/split/invocations", json=body) as r:
                    assert r.status == 200
                    counts[r.headers["served-model-name"]] += 1

            await asyncio.gather(*(one() for _ in range(2000)))
        return counts

    counts = asyncio.run(run())
    assert 0.85 <= counts["big"] / 2000 <= 0.95, counts
    for _ in range(20):
        direct = httpx.post(
            server.url + "/serving-endpoints/split/served-models/small/invocations",
            json=body,
            headers=auth,
        )
        assert direct.headers["served-model-name"] == "small"


def test_rate_limit_exact_under_concurrency(stack) -> None:  # noqa: ANN001
    _, server, auth, _, _ = stack
    body = {"messages": [{"role": "user", "content": "x"}]}

    # aiohttp: 1000 concurrent requests in about a second (httpx's client took over 30 s).
    async def run() -> list[tuple[int, str | None, Any]]:
        async def one(session: aiohttp.ClientSession) -> tuple[int, str | None, Any]:
            async with session.post("/serving-endpoints/limited/invocations", json=body) as r:
                return r.status, r.headers.get("retry-after"), await r.json()

        connector = aiohttp.TCPConnector(limit=200)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(
            server.url, headers=auth, connector=connector, timeout=timeout
        ) as session:
            return await asyncio.gather(*(one(session) for _ in range(1000)))

    responses = asyncio.run(run())
    statuses = Counter(status for status, _, _ in responses)
    assert statuses == {200: 100, 429: 900}, statuses
    _, retry_after, refused = next(r for r in responses if r[0] == 429)
    assert retry_after is not None and int(retry_after) >= 1
    assert refused["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    blocked = httpx.post(
        server.url + "/serving-endpoints/blocked/invocations", json=body, headers=auth
    )
    assert blocked.status_code == 429 and "blocked" in blocked.json()["message"]
    metrics = httpx.get(server.url + "/metrics", headers=auth).text
    assert 'serving_rate_limited_total{endpoint="limited"} 900' in metrics
    assert 'serving_requests_total{endpoint="limited",entity="m",status="200"} 100' in metrics


def test_new_config_while_clients_query(stack) -> None:  # noqa: ANN001
    engine, server, auth, specs, base = stack
    body = {"messages": [{"role": "user", "content": "x"}]}
    failures: list[str] = []
    seen: Counter[str] = Counter()
    stop = threading.Event()

    def client_loop() -> None:
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as client:
            while not stop.is_set():
                r = client.post("/serving-endpoints/chat/invocations", json=body)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                else:
                    seen[r.json()["choices"][0]["message"]["content"]] += 1

    threads = [threading.Thread(target=client_loop) for _ in range(32)]
    for t in threads:
        t.start()

    def wait_for(reply: str) -> None:
        deadline = time.monotonic() + 120
        while seen[reply] == 0 and not failures and time.monotonic() < deadline:
            time.sleep(0.02)

    try:
        wait_for("reply from gpt-4")  # the clients are being answered by the old version
        import yaml

        spec = yaml.safe_load((specs / "chat.yaml").read_text())
        spec["config"]["served_entities"] = [openai_entity("gpt4o", "gpt-4o", base)]
        (specs / "chat.yaml").write_text(yaml.safe_dump(spec))
        _, report = engine.apply(specs)
        assert report.ok
        server.wait_serial(engine.store.serial)
        wait_for("reply from gpt-4o")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert seen["reply from gpt-4"] > 0 and seen["reply from gpt-4o"] > 0


def test_usage_is_recorded_when_tracking_is_enabled(stack) -> None:  # noqa: ANN001
    engine, server, auth, _, _ = stack
    httpx.post(
        server.url + "/serving-endpoints/limited/invocations",
        json={"messages": [{"role": "user", "content": "x"}]},
        headers=auth,
    )
    httpx.post(
        server.url + "/serving-endpoints/chat/invocations",
        json={"messages": [{"role": "user", "content": "x"}]},
        headers=auth,
    )
    from engine.gateway._usage import read_usage

    deadline = time.monotonic() + 60
    records = []
    while time.monotonic() < deadline and not records:
        records = read_usage(resolve_state(engine.state))
        time.sleep(0.2)
    assert [(r.endpoint, r.entity, r.principal, r.status) for r in records] == [
        ("limited", "m", "alice@example.com", 200)
    ]
    assert records[0].prompt_tokens == 5 and records[0].completion_tokens == 4


def test_openai_sdk(stack) -> None:  # noqa: ANN001
    from openai import OpenAI

    _, server, auth, _, _ = stack
    client = OpenAI(
        base_url=server.url + "/serving-endpoints", api_key=auth["Authorization"].split()[1]
    )
    chat = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content == "reply from gpt-4"
    stream = client.chat.completions.create(
        model="chat", stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Hello!"
    completion = client.completions.create(model="completions", prompt="x")
    assert completion.choices[0].text == "completion from gpt-3.5-instruct"
    vectors = client.embeddings.create(model="embeddings", input=["a", "b"])
    assert [round(v, 3) for v in vectors.data[1].embedding] == [0.5, -0.25, 1.0]
    import openai

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="chat", prompt="x")
