"""What the payload table records when the AI gateway acts: each fallback attempt, and each
guardrail block and mask, through a real `engine serve`, read back from the Delta tables.

The loopback upstream answers by model name: `broken` 500, `limited` 429, `echo` with the last
user message (a stream of it comes 5 characters a chunk).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from deltalake import DeltaTable
from engine_harness import engine_with_openai_key, write_specs
from mock_http import MockResponse, MockUpstream, RecordedRequest, sse
from serving_harness import ServerProcess, endpoint, openai_entity

from engine.access.tokens import create_token

EMAIL = "jane.roe@example.org"


def _last_user(body: dict[str, Any]) -> str:
    return [m["content"] for m in body["messages"] if m.get("role") == "user"][-1]


def _chunk(model: str, text: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {
        "id": "s",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def handler(request: RecordedRequest) -> MockResponse:
    body = request.json()
    model = body["model"]
    if model == "broken":
        return MockResponse(500, json={"error": {"message": "it broke"}})
    if model == "limited":
        return MockResponse(429, json={"error": {"message": "slow down"}})
    text = _last_user(body)
    if body.get("stream"):
        events: list[tuple[str | None, Any]] = [
            (None, _chunk(model, text[i : i + 5])) for i in range(0, len(text), 5)
        ]
        events += [(None, _chunk(model, None, "stop")), (None, "[DONE]")]
        return MockResponse(chunks=sse(events))
    return MockResponse(
        json={
            "id": "r",
            "object": "chat.completion",
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }
    )


def _gateway(prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "usage_tracking_config": {"enabled": True},
        "inference_table_config": {
            "enabled": True,
            "catalog_name": "main",
            "schema_name": "default",
            "table_name_prefix": prefix,
        },
        **extra,
    }


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(handler) as server:
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("tables-gateway")
    engine = engine_with_openai_key(tmp / "state.db")
    base = upstream.url + "/v1"
    fallback = {"fallback_config": {"enabled": True}}
    entities = [
        openai_entity("a", "broken", base),
        openai_entity("b", "limited", base),
        openai_entity("c", "echo", base),
    ]
    guard = {"input": {"pii": {"behavior": "BLOCK"}}}
    mask = {"input": {"pii": {"behavior": "MASK"}}, "output": {"pii": {"behavior": "MASK"}}}
    specs = write_specs(
        tmp / "specs",
        [
            endpoint("fb", entities, [100, 0, 0], ai_gateway=_gateway("fb", **fallback)),
            endpoint(
                "allfail",
                entities[:2],
                [100, 0],
                ai_gateway=_gateway("allfail", **fallback),
            ),
            endpoint(
                "block",
                [openai_entity("m", "echo", base)],
                ai_gateway=_gateway("block", guardrails=guard),
            ),
            endpoint(
                "mask",
                [openai_entity("m", "echo", base)],
                ai_gateway=_gateway("mask", guardrails=mask),
            ),
            endpoint(
                "words",
                [openai_entity("m", "echo", base)],
                ai_gateway=_gateway(
                    "words", guardrails={"output": {"invalid_keywords": ["forbidden"]}}
                ),
            ),
        ],
    )
    _, report = engine.apply(specs)
    assert report.ok, report.failed
    _, token = create_token(engine.store, "alice@example.com")
    with ServerProcess(engine.state, log_dir=tmp) as server:
        server.wait_serial(engine.store.serial)
        yield server, {"Authorization": f"Bearer {token}"}, engine.state.parent / "tables"
    engine.close()


def _rows(root: Path, table: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The table's rows, once it has at least `n`: in request order, and within a request by
    status (an attempt's row is written before its request's last one, but a Delta table has
    no row order)."""
    path = root / "main" / "default" / table
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if (path / "_delta_log").is_dir():
            rows = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
            if len(rows) >= n:
                first = {}
                for r in rows:
                    at = first.get(r["databricks_request_id"], r["request_time"])
                    first[r["databricks_request_id"]] = min(at, r["request_time"])
                return sorted(
                    rows, key=lambda r: (first[r["databricks_request_id"]], -r["status_code"])
                )
        time.sleep(0.3)
    raise AssertionError(f"{table}: {len(rows)} rows of {n} after {timeout} s: {rows}")


def _usage(root: Path) -> list[dict[str, Any]]:
    path = root / "system" / "serving" / "endpoint_usage"
    return DeltaTable(str(path)).to_pyarrow_table().to_pylist()


def _chat(server: ServerProcess, auth: dict[str, str], name: str, text: str, **extra: Any) -> Any:
    body = {"messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(
        f"{server.url}/serving-endpoints/{name}/invocations", headers=auth, json=body, timeout=60
    )


def _stream(server: ServerProcess, auth: dict[str, str], name: str, text: str) -> str:
    body = {"messages": [{"role": "user", "content": text}], "stream": True}
    with httpx.stream(
        "POST",
        f"{server.url}/serving-endpoints/{name}/invocations",
        headers=auth,
        json=body,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        return "".join(response.iter_text())


def test_each_fallback_attempt_has_a_row_of_the_same_request(served) -> None:  # noqa: ANN001
    server, auth, root = served
    answer = _chat(server, auth, "fb", "hello", client_request_id="req-7")
    assert answer.status_code == 200 and answer.headers["served-model-name"] == "c"
    _stream(server, auth, "fb", "streamed")
    rows = _rows(root, "fb_payload", 6)
    call, stream = rows[:3], rows[3:]
    for attempts in (call, stream):
        # a's 500 (answered as the gateway answers it, 502), b's 429, c's answer.
        assert [r["status_code"] for r in attempts] == [502, 429, 200]
        assert len({r["databricks_request_id"] for r in attempts}) == 1  # one request
        assert len({r["served_entity_id"] for r in attempts}) == 3  # three entities
    assert json.loads(call[0]["response"])["error_code"]
    assert "it broke" in json.loads(call[0]["response"])["message"]
    assert json.loads(call[1]["response"])["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert json.loads(call[2]["response"])["choices"][0]["message"]["content"] == "hello"
    assert {r["client_request_id"] for r in call} == {"req-7"}
    assert json.loads(stream[2]["response"])["choices"][0]["message"]["content"] == "streamed"
    # The usage table counts requests, not attempts: one row each, of the entity that answered.
    ids = {call[0]["databricks_request_id"], stream[0]["databricks_request_id"]}
    usage = [u for u in _usage(root) if u["databricks_request_id"] in ids]
    assert len(usage) == 2
    assert {u["served_entity_id"] for u in usage} == {call[2]["served_entity_id"]}


def test_when_all_fail_each_attempt_and_the_answer_are_rows(served) -> None:  # noqa: ANN001
    server, auth, root = served
    answer = _chat(server, auth, "allfail", "hello")
    assert answer.status_code == 429  # the last entity's error is the answer
    rows = _rows(root, "allfail_payload", 2)
    assert [r["status_code"] for r in rows] == [502, 429]
    assert len({r["served_entity_id"] for r in rows}) == 2
    assert json.loads(rows[1]["response"]) == answer.json()


def test_a_blocked_request_is_a_row_without_its_pii(served) -> None:  # noqa: ANN001
    server, auth, root = served
    answer = _chat(server, auth, "block", f"write to {EMAIL}", client_request_id="b-1")
    assert answer.status_code == 400
    (row,) = _rows(root, "block_payload", 1)
    assert row["status_code"] == 400 and row["client_request_id"] == "b-1"
    assert json.loads(row["response"]) == answer.json()
    assert "EMAIL_ADDRESS" in json.loads(row["response"])["message"]
    request = json.loads(row["request"])
    assert request["messages"][0]["content"] == "write to <EMAIL_ADDRESS>"
    assert request["client_request_id"] == "b-1"  # the rest of the body as sent
    assert EMAIL not in json.dumps(row, default=str)


def test_masked_texts_are_logged_as_the_model_and_the_caller_got_them(served) -> None:  # noqa: ANN001
    server, auth, root = served
    answer = _chat(server, auth, "mask", f"mail {EMAIL} now")
    assert answer.status_code == 200
    _stream(server, auth, "mask", "x" * 40 + f" mail {EMAIL} now")
    call, stream = _rows(root, "mask_payload", 2)
    assert json.loads(call["request"])["messages"][0]["content"] == "mail <EMAIL_ADDRESS> now"
    answered = json.loads(call["response"])["choices"][0]["message"]["content"]
    assert (
        answered == "mail <EMAIL_ADDRESS> now" == answer.json()["choices"][0]["message"]["content"]
    )
    merged = json.loads(stream["response"])["choices"][0]["message"]["content"]
    assert merged == "x" * 40 + " mail <EMAIL_ADDRESS> now"
    for row in (call, stream):
        assert EMAIL not in json.dumps(row, default=str)


def test_an_output_block_is_a_row_with_the_error(served) -> None:  # noqa: ANN001
    server, auth, root = served
    answer = _chat(server, auth, "words", "this is forbidden")
    assert answer.status_code == 400
    (row,) = _rows(root, "words_payload", 1)
    assert row["status_code"] == 400
    assert json.loads(row["response"]) == answer.json()
    assert json.loads(row["request"])["messages"][0]["content"] == "this is forbidden"
