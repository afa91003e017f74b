"""`engine serve --header-timeout` (and `engine up`): a connection whose request head does not
arrive in time is closed; a request whose head arrived is never cut.

A real `engine serve` on loopback with a 1 s header timeout, raw sockets for what a slow or idle
client does. Every wait for the server to close is generous (WAIT); the tests assert that it
closes, never how fast.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine, run_cli, write_specs
from mock_http import MockResponse, MockUpstream, RecordedRequest, sse
from serving_harness import ServerProcess, endpoint, openai_entity, openai_upstream
from test_engine_up import Up

from engine.access.tokens import create_token

HEADER_TIMEOUT = "1"
WAIT = 30.0  # seconds the server may take to close on a loaded 2-core machine before a failure
TRICKLE = 0.3  # seconds between the bytes a slow client sends
SLOW_EVENTS = 10  # events of the slow stream, TRICKLE apart: three times the header timeout
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def upstream_handler(request: RecordedRequest) -> MockResponse:
    body = request.json() if request.body else {}
    if body.get("model") == "slow-stream":
        return MockResponse(chunks=_slow_stream())
    return openai_upstream(request)


def _slow_stream() -> Iterator[bytes]:
    for i in range(SLOW_EVENTS):
        chunk = {"id": "s", "object": "chat.completion.chunk", "model": "slow-stream"}
        chunk["choices"] = [{"index": 0, "delta": {"content": f"t{i}"}, "finish_reason": None}]
        yield sse([(None, chunk)])[0]
        time.sleep(TRICKLE)
    yield sse([(None, "[DONE]")])[0]


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(upstream_handler) as server:
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream):  # noqa: ANN201
    root = tmp_path_factory.mktemp("header-timeout")
    engine = Engine(root / "state" / "state.db")
    engine.secrets.create_scope("scope")
    engine.secrets.put_secret("scope", "openai", "sk-upstream-key")
    base = upstream.url + "/v1"
    specs = write_specs(
        root / "specs",
        [
            endpoint("chat", [openai_entity("gpt4", "gpt-4", base)]),
            endpoint("slow", [openai_entity("s", "slow-stream", base)]),
        ],
    )
    _, report = engine.apply(specs)
    assert report.ok, report.failed
    _, token = create_token(engine.store, "alice@example.com")
    with ServerProcess(engine.state, args=("--header-timeout", HEADER_TIMEOUT)) as server:
        server.wait_serial(engine.store.serial)
        yield server, token
    engine.close()


# -- what a client does, on a raw socket --------------------------------------------------------


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=WAIT)


def closed_by_server(sock: socket.socket, wait: float = WAIT) -> bool:
    """True once the server has closed the connection (EOF or reset) within `wait` seconds."""
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except ConnectionError:
            return True
        except TimeoutError:
            return False
    return False


def trickle_until_closed(sock: socket.socket, data: Iterator[bytes], wait: float = WAIT) -> bool:
    """Send `data` one byte every TRICKLE seconds; True when the server closes first."""
    deadline = time.monotonic() + wait
    for byte in data:
        if time.monotonic() > deadline:
            return False
        readable, _, _ = select.select([sock], [], [], TRICKLE)
        if readable:
            return closed_by_server(sock, wait=0.5)
        try:
            sock.sendall(byte)
        except ConnectionError:
            return True
    return False


def endless_head() -> Iterator[bytes]:
    """A request head that never ends: one header value that grows forever."""
    yield from (bytes([b]) for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    while True:
        yield b"a"


def blank_lines() -> Iterator[bytes]:
    while True:
        yield b"\r"
        yield b"\n"


def get_health(conn: http.client.HTTPConnection) -> dict[str, Any]:
    conn.request("GET", "/health")
    response = conn.getresponse()
    assert response.status == 200
    return json.loads(response.read())


def kept_alive(url: str) -> http.client.HTTPConnection:
    """A connection that has had one answered request (so it is a kept-alive one)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=WAIT)
    get_health(conn)
    return conn


# -- closed: idle and slow heads -----------------------------------------------------------------


def test_an_idle_new_connection_is_closed(served) -> None:  # noqa: ANN001
    server, _ = served
    with connect(server.url) as sock:
        assert closed_by_server(sock)


def test_a_slowloris_head_is_closed(served) -> None:  # noqa: ANN001
    server, _ = served
    with connect(server.url) as sock:
        assert trickle_until_closed(sock, endless_head())


def test_a_slow_head_on_a_kept_alive_connection_is_closed(served) -> None:  # noqa: ANN001
    server, _ = served
    conn = kept_alive(server.url)
    assert conn.sock is not None
    assert trickle_until_closed(conn.sock, endless_head())
    conn.close()


def test_blank_lines_after_a_response_do_not_hold_the_connection(served) -> None:  # noqa: ANN001
    # The parser skips blank lines between requests without starting a message, and uvicorn's
    # keep-alive timer restarts on no byte: only the header timeout closes this one.
    server, _ = served
    conn = kept_alive(server.url)
    assert conn.sock is not None
    assert trickle_until_closed(conn.sock, blank_lines())
    conn.close()


# -- not cut: normal requests, keep-alive, slow bodies, long streams -------------------------------


def test_keep_alive_and_pipelined_requests_are_served(served) -> None:  # noqa: ANN001
    server, _ = served
    conn = kept_alive(server.url)
    sock = conn.sock
    # Idle for longer than the header timeout: an idle kept-alive connection is uvicorn's
    # keep-alive timeout's (75 s) to close, not this one's, so a pooled client can reuse it.
    time.sleep(3 * float(HEADER_TIMEOUT))
    assert get_health(conn)["status"]
    assert conn.sock is sock  # the same connection served both
    conn.close()

    with connect(server.url) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        answers = b""
        while answers.count(b"HTTP/1.1 200 ") < 2 or not answers.endswith(b"}"):
            data = raw.recv(65536)  # the socket's timeout (WAIT) fails a missing answer
            assert data, answers
            answers += data
        assert answers.count(b'"status"') == 2, answers


def test_a_slow_body_after_its_head_is_not_cut(served) -> None:  # noqa: ANN001
    server, token = served
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=WAIT)
    body = json.dumps(CHAT).encode()
    pieces = [body[i : i + 4] for i in range(0, len(body), 4)]
    assert len(pieces) * TRICKLE > 2 * float(HEADER_TIMEOUT)
    conn.putrequest("POST", "/serving-endpoints/chat/invocations")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    for piece in pieces:
        time.sleep(TRICKLE)
        conn.send(piece)
    response = conn.getresponse()
    answer = response.read()
    assert response.status == 200, answer
    assert json.loads(answer)["choices"][0]["message"]["content"] == "reply from gpt-4"
    # And the connection is kept alive for the next request.
    assert get_health(conn)["status"]
    conn.close()


def test_a_long_streaming_response_is_not_cut(served) -> None:  # noqa: ANN001
    server, token = served
    with (
        httpx.Client(base_url=server.url, timeout=WAIT) as client,
        client.stream(
            "POST",
            "/serving-endpoints/slow/invocations",
            json={**CHAT, "stream": True},
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    texts = [json.loads(line[6:])["choices"][0]["delta"]["content"] for line in lines[:-1]]
    assert texts == [f"t{i}" for i in range(SLOW_EVENTS)]


# -- the option itself ---------------------------------------------------------------------------


def test_engine_up_closes_an_idle_connection(
    tmp_path: Path, upstream: MockUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = Engine(tmp_path / "state" / "state.db")
    engine.secrets.create_scope("scope")
    engine.secrets.put_secret("scope", "openai", "sk-upstream-key")
    base = upstream.url + "/v1"
    specs = write_specs(
        tmp_path / "specs", [endpoint("chat", [openai_entity("gpt4", "gpt-4", base)])]
    )
    engine.close()
    # From the environment this time (the harness passes it on).
    monkeypatch.setenv("ENGINE_HEADER_TIMEOUT", HEADER_TIMEOUT)
    up = Up(specs, engine.state)
    try:
        up.wait_for("Serving on", 60)
        with connect(up.url) as sock:
            assert closed_by_server(sock)
        conn = kept_alive(up.url)  # and it serves
        conn.close()
    finally:
        assert up.stop() == 0, up.output


@pytest.mark.parametrize(
    ("command", "args", "env", "message"),
    [
        ("serve", ("--header-timeout", "0"), {}, "--header-timeout: must be a positive number"),
        ("up", ("--header-timeout", "-1"), {}, "--header-timeout: must be a positive number"),
        ("serve", (), {"ENGINE_HEADER_TIMEOUT": "soon"}, "$ENGINE_HEADER_TIMEOUT: not a number"),
        ("up", (), {"ENGINE_HEADER_TIMEOUT": "inf"}, "$ENGINE_HEADER_TIMEOUT: must be a positive"),
    ],
)
def test_bad_header_timeouts_are_one_line_usage_errors(
    tmp_path: Path, command: str, args: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    paths = (str(tmp_path),) if command == "up" else ()
    result = run_cli(command, *paths, "--state", str(tmp_path / "s.db"), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "s.db").exists()  # refused before the state is opened
