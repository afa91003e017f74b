"""Two real `engine serve` processes sharing one Redis (`--limits redis://...`): one limit
across both, tokens settled with the real usage (streams too), and a Redis outage as the
declared mode in /metrics, recovered when Redis is back.

The two hosts serve two copies of one state file (same lineage and endpoint ids): the limits
are shared through Redis alone, whatever the state. Replicas on one shared state are
tests/test_serving_replicas.py.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from engine_harness import Engine, write_specs
from mock_http import MockUpstream
from redis_server import RedisServer, redis_url  # noqa: F401 - the session fixture
from serving_harness import (
    ServerProcess,
    endpoint,
    free_port,
    openai_entity,
    openai_upstream,
    without_replica,
)

from engine.access.tokens import create_token

CHAT = {"messages": [{"role": "user", "content": "x"}]}


def _tokens(n: int) -> dict[str, Any]:
    return {"rate_limits": [{"key": "endpoint", "tokens": n, "renewal_period": "minute"}]}


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, dict]]:
    """A state with the endpoints applied (and closed, so it can be copied), a token, ids."""
    root = tmp_path_factory.mktemp("redis-serve")
    with MockUpstream(openai_upstream) as upstream:
        engine = Engine(root / "state" / "state.db")
        engine.secrets.create_scope("scope")
        engine.secrets.put_secret("scope", "openai", "sk-upstream-key")
        base = upstream.url + "/v1"
        dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: every call fails
        specs = write_specs(
            root / "specs",
            [
                endpoint(
                    "limited",
                    [openai_entity("m", "model-limited", base)],
                    rate_limits=[{"calls": 100, "key": "endpoint", "renewal_period": "minute"}],
                ),
                endpoint("tokens", [openai_entity("m", "m", base)], ai_gateway=_tokens(10_000)),
                endpoint("broken", [openai_entity("m", "m", dead)], ai_gateway=_tokens(10_000)),
                endpoint("free", [openai_entity("m", "m", base)]),
            ],
        )
        _, report = engine.apply(specs)
        assert report.ok, report.failed
        _, token = create_token(engine.store, "alice@example.com", groups=["ml"])
        ids = {row.name: row.id for row in engine.store.list_endpoints()}
        engine.close()
        yield root / "state", token, ids


def _copy(state: Path, to: Path) -> Path:
    shutil.copytree(state, to)
    return to / "state.db"


@pytest.fixture(scope="module")
def replicas(
    applied: tuple[Path, str, dict],
    redis_url: str,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[list[ServerProcess], dict[str, str], dict]]:
    state, token, ids = applied
    root = tmp_path_factory.mktemp("replicas")
    servers = [
        ServerProcess(_copy(state, root / name), args=("--limits", redis_url))
        for name in ("a", "b")
    ]
    with servers[0], servers[1]:
        yield servers, {"Authorization": f"Bearer {token}"}, ids


def test_two_hosts_admit_exactly_the_limit_in_total(replicas) -> None:  # noqa: ANN001
    servers, auth, _ = replicas

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        clients = [
            httpx.AsyncClient(base_url=s.url, headers=auth, limits=limits, timeout=120)
            for s in servers
        ]
        try:
            return await asyncio.gather(
                *(
                    clients[i % 2].post("/serving-endpoints/limited/invocations", json=CHAT)
                    for i in range(1000)
                )
            )
        finally:
            for client in clients:
                await client.aclose()

    statuses = Counter(r.status_code for r in asyncio.run(run()))
    assert statuses == {200: 100, 429: 900}, statuses
    refused = 0
    for server in servers:
        text = without_replica(httpx.get(server.url + "/metrics", headers=auth).text)
        assert "engine_limits_backend_up 1" in text
        assert "engine_limits_backend_errors_total 0" in text
        for line in text.splitlines():
            if line.startswith('serving_rate_limited_total{endpoint="limited"}'):
                refused += int(line.rsplit(" ", 1)[1])
    assert refused == 900  # each host refused its share; together the limit's complement


def _until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def _token_total(url: str, endpoint_id: str) -> int:
    client = redis.Redis.from_url(url)
    return sum(int(client.get(k) or 0) for k in client.keys(f"engine:limits:*{endpoint_id}}}*:s"))


def test_tokens_settle_with_the_real_usage(replicas, redis_url: str) -> None:  # noqa: ANN001, F811
    servers, auth, ids = replicas
    a, b = servers
    with (
        httpx.Client(base_url=a.url, headers=auth, timeout=30) as client,
        client.stream(
            "POST",
            "/serving-endpoints/tokens/invocations",
            json={**CHAT, "stream": True, "max_tokens": 500},
        ) as response,
    ):
        assert response.status_code == 200
        assert response.read().endswith(b"data: [DONE]\n\n")
    # The stream's usage (5 + 3) replaced the 500 reserved.
    _until(lambda: _token_total(redis_url, ids["tokens"]) == 8)
    answer = httpx.post(
        b.url + "/serving-endpoints/tokens/invocations", json=CHAT, headers=auth, timeout=30
    )
    assert answer.status_code == 200 and answer.json()["usage"]["total_tokens"] == 9
    _until(lambda: _token_total(redis_url, ids["tokens"]) == 8 + 9)  # counted across hosts
    failed = httpx.post(
        a.url + "/serving-endpoints/broken/invocations",
        json={**CHAT, "max_tokens": 700},
        headers=auth,
        timeout=30,
    )
    assert failed.status_code == 502
    _until(lambda: _token_total(redis_url, ids["broken"]) == 0)  # the reservation released
    assert _token_total(redis_url, ids["tokens"]) == 17


def test_stopped_redis_is_the_declared_mode_and_recovers(
    applied: tuple[Path, str, dict], tmp_path: Path
) -> None:
    state, token, _ = applied
    auth = {"Authorization": f"Bearer {token}"}
    with (
        RedisServer() as rs,
        ServerProcess(_copy(state, tmp_path / "c"), args=("--limits", rs.url)) as server,
        httpx.Client(base_url=server.url, headers=auth, timeout=30) as client,
    ):
        assert client.post("/serving-endpoints/limited/invocations", json=CHAT).status_code == 200
        rs.stop()
        refused = [
            client.post("/serving-endpoints/limited/invocations", json=CHAT) for _ in range(5)
        ]
        assert {r.status_code for r in refused} == {503}
        assert refused[0].json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert refused[0].headers["retry-after"] == "1"
        assert client.post("/serving-endpoints/free/invocations", json=CHAT).status_code == 200
        text = without_replica(client.get("/metrics").text)
        assert "engine_limits_backend_up 0" in text
        assert 'engine_limits_fallback_total{mode="refuse"} 5' in text
        assert "engine_limits_backend_errors_total 0" not in text
        rs.start()
        _until(
            lambda: (
                client.post("/serving-endpoints/limited/invocations", json=CHAT).status_code == 200
            )
        )
        assert "engine_limits_backend_up 1" in without_replica(client.get("/metrics").text)
    log = server.log.read_text()
    assert log.count("is unreachable") == 1, log
    assert log.count("is back:") == 1, log
