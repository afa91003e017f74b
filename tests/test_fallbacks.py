"""`fallback_config` through a real `engine serve`: who was asked, in which order, who answered.

One loopback upstream records every request; each entity's model name scripts its answer:
`limited` 429, `broken` 500, `hang` answers after the gateway's read timeout, `cut` streams one
chunk and drops the connection, anything else answers "from MODEL".
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from engine_harness import engine_with_openai_key, write_specs
from mock_http import MockResponse, MockUpstream, RecordedRequest, sse
from serving_harness import ServerProcess, endpoint, openai_entity

from engine.access.tokens import create_token

READ_TIMEOUT_S = 2


def _chunk(model: str, text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "s",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
    }


def handler(request: RecordedRequest) -> MockResponse:
    body = request.json()
    model = body["model"]
    if model == "limited":
        return MockResponse(429, json={"error": {"message": "slow down"}})
    if model == "broken":
        return MockResponse(500, json={"error": {"message": "it broke"}})
    if model == "hang":
        return MockResponse(json={}, delay=READ_TIMEOUT_S * 4)
    if body.get("stream"):
        if model == "cut":
            return MockResponse(chunks=sse([(None, _chunk(model, "half"))]), cut=True)
        events: list[tuple[str | None, Any]] = [
            (None, _chunk(model, "from ")),
            (None, _chunk(model, model, "stop")),
            (None, "[DONE]"),
        ]
        return MockResponse(chunks=sse(events))
    return MockResponse(
        json={
            "id": "r",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"from {model}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
    )


def _endpoint(name: str, base: str, models: list[str], first: int = 0, **extra: Any) -> Any:
    """Entities a, b, c... serving `models`; all traffic to entity number `first`."""
    entities = [openai_entity(chr(97 + i), m, base) for i, m in enumerate(models)]
    split = [100 if i == first else 0 for i in range(len(models))]
    gateway = extra.pop("ai_gateway", {"fallback_config": {"enabled": True}})
    return endpoint(name, entities, split, ai_gateway=gateway, **extra)


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(handler) as server:
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("fallbacks")
    engine = engine_with_openai_key(tmp / "state.db")
    base = upstream.url + "/v1"
    specs = write_specs(
        tmp / "specs",
        [
            _endpoint("on-429", base, ["limited", "ok"]),
            _endpoint("on-500", base, ["broken", "ok"]),
            _endpoint("on-timeout", base, ["hang", "ok"]),
            _endpoint("all-fail", base, ["limited", "broken"]),
            _endpoint("round", base, ["ok", "limited", "broken"], first=1),
            _endpoint("cut", base, ["cut", "ok"]),
            _endpoint("off", base, ["limited", "ok"], ai_gateway={}),
        ],
    )
    _, report = engine.apply(specs)
    assert report.ok, report.failed
    _, token = create_token(engine.store, "alice@example.com")
    env = {"ENGINE_UPSTREAM_READ_TIMEOUT": str(READ_TIMEOUT_S)}
    with ServerProcess(engine.state, log_dir=tmp, env=env) as server:
        server.wait_serial(engine.store.serial)
        yield server, {"Authorization": f"Bearer {token}"}
    engine.close()


def _asked(upstream: MockUpstream, since: int) -> list[str]:
    return [r.json()["model"] for r in upstream.requests[since:]]


def _query(server: ServerProcess, auth: dict[str, str], name: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{server.url}/serving-endpoints/{name}/invocations",
        headers=auth,
        json={"messages": [{"role": "user", "content": "hi"}], **extra},
        timeout=60,
    )


@pytest.mark.parametrize(
    ("name", "first"), [("on-429", "limited"), ("on-500", "broken"), ("on-timeout", "hang")]
)
def test_a_failing_entity_falls_back(served, upstream: MockUpstream, name: str, first: str) -> None:  # noqa: ANN001
    server, auth = served
    before = len(upstream.requests)
    answer = _query(server, auth, name)
    assert answer.status_code == 200, answer.text
    assert answer.headers["served-model-name"] == "b"
    assert answer.json()["choices"][0]["message"]["content"] == "from ok"
    assert _asked(upstream, before) == [first, "ok"]


def test_fallback_goes_round_the_entity_list_in_order(served, upstream: MockUpstream) -> None:  # noqa: ANN001
    server, auth = served
    before = len(upstream.requests)
    answer = _query(server, auth, "round")  # traffic goes to b; then c, then a
    assert answer.status_code == 200, answer.text
    assert answer.headers["served-model-name"] == "a"
    assert _asked(upstream, before) == ["limited", "broken", "ok"]


def test_when_all_fail_the_last_error_is_answered(served, upstream: MockUpstream) -> None:  # noqa: ANN001
    server, auth = served
    before = len(upstream.requests)
    answer = _query(server, auth, "all-fail")
    assert answer.status_code == 502  # b's 500, not a's 429
    assert "it broke" in answer.json()["message"]
    assert _asked(upstream, before) == ["limited", "broken"]


def test_without_fallback_config_there_is_none(served, upstream: MockUpstream) -> None:  # noqa: ANN001
    server, auth = served
    before = len(upstream.requests)
    assert _query(server, auth, "off").status_code == 429
    assert _asked(upstream, before) == ["limited"]


def test_a_named_entity_does_not_fall_back(served, upstream: MockUpstream) -> None:  # noqa: ANN001
    server, auth = served
    before = len(upstream.requests)
    answer = httpx.post(
        f"{server.url}/serving-endpoints/on-500/served-models/a/invocations",
        headers=auth,
        json={"messages": [{"role": "user", "content": "hi"}]},
        timeout=60,
    )
    assert answer.status_code == 502
    assert _asked(upstream, before) == ["broken"]


def _events(server: ServerProcess, auth: dict[str, str], name: str) -> tuple[httpx.Headers, list]:
    with httpx.stream(
        "POST",
        f"{server.url}/serving-endpoints/{name}/invocations",
        headers=auth,
        json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        return response.headers, [x if x == "[DONE]" else json.loads(x) for x in lines]


@pytest.mark.parametrize(
    ("name", "first"), [("on-429", "limited"), ("on-500", "broken"), ("on-timeout", "hang")]
)
def test_a_stream_refused_before_its_first_byte_falls_back(
    served,  # noqa: ANN001
    upstream: MockUpstream,
    name: str,
    first: str,
) -> None:
    server, auth = served
    before = len(upstream.requests)
    headers, events = _events(server, auth, name)
    assert headers["served-model-name"] == "b"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "from ok" and events[-1] == "[DONE]"
    assert _asked(upstream, before) == [first, "ok"]


def test_a_stream_that_failed_after_its_first_byte_is_not_retried(
    served,  # noqa: ANN001
    upstream: MockUpstream,
) -> None:
    server, auth = served
    before = len(upstream.requests)
    headers, events = _events(server, auth, "cut")
    assert headers["served-model-name"] == "a"
    assert events[0]["choices"][0]["delta"]["content"] == "half"
    last = events[-1]
    assert "[DONE]" not in events
    assert last["error_code"] and last["message"]
    assert set(last["error"]) == {"message", "type", "code"}
    assert _asked(upstream, before) == ["cut"]
