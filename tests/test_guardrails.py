"""Guardrails enforced by a real `engine serve`: what the upstream received proves it.

The upstream is a real HTTP server on 127.0.0.1 that records every request: model `echo`
answers with the last user message (so output guardrails see what a test sends, and a stream
of it comes 5 characters a chunk, splitting every entity across chunks); model `guard` is a
Llama Guard that calls anything mentioning "bomb" unsafe.
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
from engine.gateway._guardrails import compile_guardrails
from engine.gateway._metrics import Metrics
from engine.gateway._pii import detector, mask

PII = "mail john.doe@example.com, card 4111 1111 1111 1111, ssn 078-05-1121"


def _last_user(body: dict[str, Any]) -> str:
    users = [m["content"] for m in body.get("messages", []) if m.get("role") == "user"]
    return users[-1] if users else body.get("prompt", "")


def handler(request: RecordedRequest) -> MockResponse:
    body = request.json()
    model = body.get("model")
    if model == "guard":
        said = " ".join(str(m.get("content")) for m in body["messages"])
        verdict = "unsafe\nS9" if "bomb" in said else "safe"
        text = verdict
    else:
        text = _last_user(body)
    if body.get("stream"):
        pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
        events: list[tuple[str | None, Any]] = [
            (
                None,
                {
                    "id": "s",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}],
                },
            )
            for p in pieces
        ]
        events.append(
            (
                None,
                {
                    "id": "s",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                },
            )
        )
        events.append((None, "[DONE]"))
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
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        }
    )


def _guarded(name: str, base: str, guardrails: dict[str, Any]) -> dict[str, Any]:
    return endpoint(name, [openai_entity("m", "echo", base)], ai_gateway={"guardrails": guardrails})


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(handler) as server:
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("guardrails")
    engine = engine_with_openai_key(tmp / "state.db")
    base = upstream.url + "/v1"
    specs = write_specs(
        tmp / "specs",
        [
            _guarded("block-in", base, {"input": {"pii": {"behavior": "BLOCK"}}}),
            _guarded(
                "mask",
                base,
                {"input": {"pii": {"behavior": "MASK"}}, "output": {"pii": {"behavior": "MASK"}}},
            ),
            _guarded("mask-out", base, {"output": {"pii": {"behavior": "MASK"}}}),
            _guarded("block-out", base, {"output": {"pii": {"behavior": "BLOCK"}}}),
            _guarded("none", base, {"input": {"pii": {"behavior": "NONE"}}}),
            _guarded(
                "words",
                base,
                {"input": {"invalid_keywords": ["Project X"], "valid_topics": ["cooking"]}},
            ),
            _guarded("safe", base, {"input": {"safety": True}, "output": {"safety": True}}),
            endpoint("guard", [openai_entity("llama-guard", "guard", base)]),
        ],
    )
    _, report = engine.apply(specs)
    assert report.ok, report.failed
    _, token = create_token(engine.store, "alice@example.com")
    _, admin = create_token(engine.store, "root", admin=True)
    with ServerProcess(
        engine.state, log_dir=tmp, env={"ENGINE_SAFETY_ENDPOINT": "guard"}
    ) as server:
        server.wait_serial(engine.store.serial)
        yield server, {"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {admin}"}
    engine.close()


def _chat(server: ServerProcess, auth: dict[str, str], name: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/serving-endpoints/{name}/invocations",
        headers=auth,
        json={"messages": [{"role": "user", "content": text}]},
        timeout=60,
    )


def _sent(upstream: MockUpstream, since: int) -> list[str]:
    """The user texts the upstream received after request number `since`."""
    return [_last_user(r.json()) for r in upstream.requests[since:]]


def _stream(server: ServerProcess, auth: dict[str, str], name: str, text: str) -> list[Any]:
    events = []
    with httpx.stream(
        "POST",
        f"{server.url}/serving-endpoints/{name}/invocations",
        headers=auth,
        json={"messages": [{"role": "user", "content": text}], "stream": True},
        timeout=60,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


def _streamed_text(events: list[Any]) -> str:
    return "".join(
        c["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and "choices" in e
        for c in e["choices"]
    )


def test_block_input_sends_nothing_upstream(served, upstream: MockUpstream) -> None:  # noqa: ANN001
    server, auth, _ = served
    before = len(upstream.requests)
    answer = _chat(server, auth, "block-in", "hello " + PII)
    assert answer.status_code == 400
    body = answer.json()
    assert body["error_code"] == "BAD_REQUEST"
    for entity in ("CREDIT_CARD", "EMAIL_ADDRESS", "US_SSN"):
        assert entity in body["message"]
    assert "john.doe" not in body["message"]
    assert len(upstream.requests) == before  # nothing was sent
    clean = _chat(server, auth, "block-in", "hello, nothing personal here")
    assert clean.status_code == 200, clean.text
    assert _sent(upstream, before) == ["hello, nothing personal here"]


def test_mask_input_and_output(served, upstream: MockUpstream) -> None:  # noqa: ANN001
    server, auth, _ = served
    before = len(upstream.requests)
    answer = _chat(server, auth, "mask", "hello " + PII)
    assert answer.status_code == 200, answer.text
    expected = "hello mail <EMAIL_ADDRESS>, card <CREDIT_CARD>, ssn <US_SSN>"
    assert _sent(upstream, before) == [expected]  # the upstream saw only the masked text
    assert answer.json()["choices"][0]["message"]["content"] == expected


def test_mask_output_only(served, upstream: MockUpstream) -> None:  # noqa: ANN001
    server, auth, _ = served
    before = len(upstream.requests)
    answer = _chat(server, auth, "mask-out", "echo " + PII)
    assert _sent(upstream, before) == ["echo " + PII]  # input not guarded
    content = answer.json()["choices"][0]["message"]["content"]
    assert content == "echo mail <EMAIL_ADDRESS>, card <CREDIT_CARD>, ssn <US_SSN>"


def test_mask_output_stream_never_splits_an_entity(served, upstream: MockUpstream) -> None:  # noqa: ANN001
    server, auth, _ = served
    text = "x" * 150 + " reach me at jane.roe@example.org or 192.168.10.20 thanks " + PII
    events = _stream(server, auth, "mask-out", text)
    assert events[-1] == "[DONE]"
    said = _streamed_text(events)
    assert said == (
        "x" * 150 + " reach me at <EMAIL_ADDRESS> or <IP_ADDRESS> thanks "
        "mail <EMAIL_ADDRESS>, card <CREDIT_CARD>, ssn <US_SSN>"
    )
    for secret in ("jane", "roe@", "192.168", "4111", "1121", "john"):
        assert all(secret not in json.dumps(e) for e in events)
    # Released while streaming, not all at the end: the text comes in more than one chunk.
    assert sum(1 for e in events if isinstance(e, dict) and _streamed_text([e])) > 1


def test_block_output_and_block_output_stream(served) -> None:  # noqa: ANN001
    server, auth, _ = served
    answer = _chat(server, auth, "block-out", "echo " + PII)
    assert answer.status_code == 400
    assert "Output guardrail" in answer.json()["message"]
    assert "EMAIL_ADDRESS" in answer.json()["message"]
    assert "john.doe" not in answer.text
    events = _stream(server, auth, "block-out", "fine so far " * 20 + PII)
    last = events[-1]
    assert last["error_code"] == "BAD_REQUEST"
    assert last["error"]["code"] == "BAD_REQUEST" and last["error"]["type"]
    assert "[DONE]" not in events
    streamed = _streamed_text(events)
    assert "john" not in streamed and "4111" not in streamed


def test_none_behaviour_passes_pii(served, upstream: MockUpstream) -> None:  # noqa: ANN001
    server, auth, _ = served
    before = len(upstream.requests)
    assert _chat(server, auth, "none", PII).status_code == 200
    assert _sent(upstream, before) == [PII]


def test_keywords_and_topics(served, upstream: MockUpstream) -> None:  # noqa: ANN001
    server, auth, _ = served
    before = len(upstream.requests)
    keyword = _chat(server, auth, "words", "cooking tips for project x please")
    assert keyword.status_code == 400
    assert "invalid keyword" in keyword.json()["message"]
    off_topic = _chat(server, auth, "words", "tell me about cars")
    assert off_topic.status_code == 400
    assert "cooking" in off_topic.json()["message"]
    assert len(upstream.requests) == before
    assert _chat(server, auth, "words", "Cooking rice: how long?").status_code == 200


def test_safety_asks_the_guard_model(served, upstream: MockUpstream) -> None:  # noqa: ANN001
    server, auth, _ = served
    before = len(upstream.requests)
    unsafe = _chat(server, auth, "safe", "how do I build a bomb")
    assert unsafe.status_code == 400
    assert "unsafe" in unsafe.json()["message"] and "S9" in unsafe.json()["message"]
    models = [r.json()["model"] for r in upstream.requests[before:]]
    assert models == ["guard"]  # asked the guard, never the model
    before = len(upstream.requests)
    fine = _chat(server, auth, "safe", "how do I bake bread")
    assert fine.status_code == 200
    # The guard is asked about the prompt, then about the prompt and the answer.
    asked = [r.json() for r in upstream.requests[before:]]
    assert [a["model"] for a in asked] == ["guard", "echo", "guard"]
    assert [m["role"] for m in asked[2]["messages"]] == ["user", "assistant"]
    # A stream's answer is held until the guard has read all of it.
    events = _stream(server, auth, "safe", "how do I bake bread")
    assert _streamed_text(events) == "how do I bake bread" and events[-1] == "[DONE]"


def test_blocks_and_masks_are_counted(served) -> None:  # noqa: ANN001
    server, auth, admin = served
    _chat(server, auth, "block-in", PII)
    _chat(server, auth, "mask", PII)
    text = httpx.get(server.url + "/metrics", headers=admin, timeout=30).text
    assert (
        'serving_guardrail_actions_total{endpoint="block-in",direction="input",'
        'guardrail="pii",action="block"}' in text
    )
    assert (
        'serving_guardrail_actions_total{endpoint="mask",direction="input",'
        'guardrail="pii",action="mask"}' in text
    )


# --- the pieces, in-process --------------------------------------------------------------


def test_detector_covers_the_documented_types() -> None:
    text = (
        "a@b.example.com, +44 20 7946 0958, 4111-1111-1111-1111, GB82 WEST 1234 5698 7654 32, "
        "10.1.2.3, 2001:db8::1, 078-05-1121"
    )
    types = {s.entity_type for s in detector().find(text)}
    assert types == {
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "CREDIT_CARD",
        "IBAN_CODE",
        "IP_ADDRESS",
        "US_SSN",
    }
    # Checksums: a card number that fails Luhn and a broken IBAN are not PII.
    assert detector().find("card 4111 1111 1111 1112, iban GB82 WEST 1234 5698 7654 33") == []
    assert mask("hi", []) == "hi"


def test_gated_recognizers_find_what_presidio_finds() -> None:
    """The detector runs the IP and SSN recognizers only where a cheap gate says they could
    match: on each text, the same IP and SSN spans as Presidio's own recognizers, ungated."""
    from presidio_analyzer.predefined_recognizers import IpRecognizer, UsSsnRecognizer

    texts = [
        "abcd::ef and fe80::1%eth0 and :: alone",  # IPv6 without a decimal digit
        "mapped ::ffff:10.0.0.1/96, embedded 64:ff9b::192.0.2.33, full 1:2:3:4:5:6:7:8",
        "net 10.1.2.0/24, 256.1.1.1, 1.2.3, 01.02.03.04, at 12:30:45 on 2024-07-15",
        "Note: see A:B: and dead:beef:: for details; v4 8.8.8.8.",
        "ssn 078-05-1121, 078 05 1121, 078.05.1121, 123456789, 12345-6789, 000-00-0000",
        "In 2024 revenue grew 12.5% to $48.2 million; order 5521 shipped, 7 of 9 sites.",
    ]
    for text in texts:
        for entity, recognizer in (("IP_ADDRESS", IpRecognizer()), ("US_SSN", UsSsnRecognizer())):
            ungated = {
                (r.start, r.end) for r in recognizer.analyze(text, [entity]) if r.score >= 0.4
            }
            got = {(s.start, s.end) for s in detector().find(text) if s.entity_type == entity}
            assert got == ungated, (text, entity)
    assert {s.entity_type for s in detector().find("abcd::ef")} == {"IP_ADDRESS"}


def test_no_guardrails_compile_to_nothing() -> None:
    assert compile_guardrails("e", None) is None
    assert compile_guardrails("e", {"input": {"pii": {"behavior": "NONE"}}}) is None
    assert compile_guardrails("e", {"input": {"safety": False}, "output": {}}) is None
    assert Metrics().guardrails == {}


def test_detector_tries_no_network() -> None:
    """tldextract's default extractor fetches the public suffix list (and logs a traceback
    where there is no network): the detector's never tries."""
    import subprocess
    import sys

    from serving_harness import ROOT

    script = (
        "from engine.gateway._pii import detector\n"
        "print([s.entity_type for s in detector().find('x@mail.example.co.uk')])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['EMAIL_ADDRESS']"
    assert "Public Suffix" not in done.stderr and "publicsuffix" not in done.stderr
