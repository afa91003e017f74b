"""RedisLimits against a real redis-server: exact across OS processes, tokens reserved and
settled, and what a stopped Redis does (the declared fallback, logged once, in /metrics, and
recovered when it is back)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from limits_worker import route_of
from redis_server import RedisServer, redis_url  # noqa: F401 - the session fixture
from serving_harness import ROOT, TESTS

from engine.access.tokens import Principal
from engine.gateway._limiter import LimitsFallback, open_limits
from engine.gateway._metrics import Metrics
from engine.gateway._redis_limits import DEFAULT_TOKEN_ESTIMATE, RedisLimits

ALICE = Principal("alice@example.com", frozenset({"ml"}))
BOB = Principal("bob@example.com", frozenset({"ml"}))


def calls(n: int) -> dict[str, Any]:
    return {"rate_limits": [{"calls": n, "key": "endpoint", "renewal_period": "minute"}]}


def run_workers(url: str, spec: dict[str, Any], callers: list[list[Any]], processes: int = 4):
    """Every caller admitted once, spread round robin over `processes` OS processes, each
    with its own RedisLimits, all released at the same moment; [(caller, admitted)]."""
    job = {"url": url, "lineage": uuid.uuid4().hex, "endpoint_id": uuid.uuid4().hex}
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    workers = [
        subprocess.Popen(
            [sys.executable, str(TESTS / "limits_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(processes)
    ]
    try:
        for n, worker in enumerate(workers):
            assert worker.stdin is not None and worker.stdout is not None
            share = callers[n::processes]
            worker.stdin.write(json.dumps({**job, "spec": spec, "callers": share}) + "\n")
            worker.stdin.flush()
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        for worker in workers:
            worker.stdin.write("go\n")  # type: ignore[union-attr]
            worker.stdin.flush()  # type: ignore[union-attr]
        results = []
        for worker in workers:
            out, _ = worker.communicate(timeout=60)
            assert worker.returncode == 0
            results += [(name, admitted) for name, admitted, _ in json.loads(out)]
        return results
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()


def test_four_processes_admit_exactly_the_limit(redis_url: str) -> None:  # noqa: F811
    callers = [["alice@example.com", ["ml"], "user"]] * 1000
    results = run_workers(redis_url, calls(100), callers)
    assert len(results) == 1000
    assert sum(admitted for _, admitted in results) == 100


def test_per_user_and_group_limits_are_exact_per_subject(redis_url: str) -> None:  # noqa: F811
    spec = {
        **calls(10_000),
        "ai_gateway": {
            "rate_limits": [
                {"key": "user", "calls": 10, "renewal_period": "minute"},
                {"key": "user", "principal": "alice", "calls": 25, "renewal_period": "minute"},
                {"key": "service_principal", "calls": 7, "renewal_period": "minute"},
                {"key": "user_group", "principal": "ml", "calls": 15, "renewal_period": "minute"},
            ]
        },
    }
    callers = (
        [["alice", ["ml"], "user"]] * 100  # her own limit: the group's does not apply to her
        + [["bob", [], "user"]] * 100
        + [["carol", [], "user"]] * 100
        + [["sp-1", [], "service_principal"]] * 100
        + [["eve", ["ml"], "user"]] * 100  # eve and frank share the group's 15
        + [["frank", ["ml"], "user"]] * 100
    )
    admitted = Counter(name for name, ok in run_workers(redis_url, spec, callers) if ok)
    assert admitted["alice"] == 25
    assert admitted["bob"] == admitted["carol"] == 10
    assert admitted["sp-1"] == 7
    assert admitted["eve"] + admitted["frank"] == 15
    assert admitted["eve"] <= 10 and admitted["frank"] <= 10


def _limits(url: str, **kwargs: Any) -> tuple[RedisLimits, Metrics]:
    metrics = Metrics()
    limits = open_limits(url, lineage=uuid.uuid4().hex, metrics=metrics, **kwargs)
    assert isinstance(limits, RedisLimits)
    return limits, metrics


def test_all_or_nothing_across_windows(redis_url: str) -> None:  # noqa: F811
    """A call refused by one window is counted in none: alice's refusals leave the
    endpoint's window to bob."""
    spec = {
        **calls(50),
        "ai_gateway": {
            "rate_limits": [
                {"key": "user", "principal": ALICE.name, "calls": 20, "renewal_period": "minute"}
            ]
        },
    }

    async def run() -> tuple[int, int, str]:
        limits, _ = _limits(redis_url)
        await limits.start()
        route = route_of("endpoint-1", spec)
        alice = await asyncio.gather(*(limits.admit(route, ALICE, None) for _ in range(100)))
        bob = await asyncio.gather(*(limits.admit(route, BOB, None) for _ in range(100)))
        await limits.close()
        refused = next(d for d in alice if not d.admitted)
        return sum(d.admitted for d in alice), sum(d.admitted for d in bob), refused.message

    alice, bob, message = asyncio.run(run())
    assert (alice, bob) == (20, 30)
    assert message == f"rate limit exceeded: 20 calls per minute per user {ALICE.name}"


def test_counters_belong_to_one_lineage_and_endpoint_and_expire(redis_url: str) -> None:  # noqa: F811
    async def run() -> list[int]:
        lineage = uuid.uuid4().hex
        first = RedisLimits(redis_url, lineage=lineage, metrics=Metrics())
        other_state = RedisLimits(redis_url, lineage=uuid.uuid4().hex, metrics=Metrics())
        for limits in (first, other_state):
            await limits.start()
        counts = []
        for limits, endpoint_id in (
            (first, "id-1"),
            (first, "id-1"),  # the same endpoint: the window is used up
            (first, "id-2"),  # the endpoint re-created (a new id): a fresh window
            (other_state, "id-1"),  # another state's endpoint with the same id
        ):
            route = route_of(endpoint_id, calls(3))
            decisions = [await limits.admit(route, ALICE, None) for _ in range(5)]
            counts.append(sum(d.admitted for d in decisions))
        for limits in (first, other_state):
            await limits.close()
        return counts

    assert asyncio.run(run()) == [3, 0, 3, 3]
    client = redis.Redis.from_url(redis_url)
    keys = client.keys("engine:limits:*")
    assert keys
    assert all(0 < client.pttl(k) <= 61_000 for k in keys)


def _token_total(url: str, pattern: str = "engine:limits:*:s") -> int:
    client = redis.Redis.from_url(url)
    return sum(int(client.get(k) or 0) for k in client.keys(pattern))


def test_tokens_reserve_at_admission_and_settle_with_the_usage(redis_url: str) -> None:  # noqa: F811
    spec = {
        "ai_gateway": {
            "rate_limits": [{"key": "endpoint", "tokens": 1000, "renewal_period": "minute"}]
        }
    }

    async def run() -> None:
        limits, _ = _limits(redis_url)
        await limits.start()
        route = route_of(uuid.uuid4().hex, spec)
        pattern = f"engine:limits:*{route.id}*:s"

        async def total() -> int:
            await limits.wait_settled()
            return _token_total(redis_url, pattern)

        a = await limits.admit(route, ALICE, 600)
        b = await limits.admit(route, ALICE, 600)  # 600 reserved < 1000: room
        assert a.admitted and b.admitted and a.ticket and b.ticket
        assert await total() == 1200
        full = await limits.admit(route, ALICE, 1)  # the reservations fill the window
        assert not full.admitted and full.status == 429 and full.retry_after >= 1
        assert full.message == "rate limit exceeded: 1000 tokens per minute per endpoint"
        limits.settle(a.ticket, 100)  # used less than reserved: the rest is refunded
        assert await total() == 700
        limits.settle(a.ticket, 999)  # settled once only
        assert await total() == 700
        c = await limits.admit(route, ALICE, None)  # no max_tokens: the declared default
        assert c.admitted
        assert await total() == 700 + DEFAULT_TOKEN_ESTIMATE
        limits.settle(b.ticket, 0)  # a failed request releases its reservation
        limits.settle(c.ticket, 1500)  # used more than reserved: the difference is charged
        assert await total() == 100 + 1500
        assert not (await limits.admit(route, ALICE, 1)).admitted
        await limits.close()

    asyncio.run(run())


def _wait(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


async def _await(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


def _records(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if text in r.getMessage()]


def test_stopped_redis_refuses_by_default_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "engine.gateway")
    server = RedisServer(tmp_path).start()

    async def run() -> None:
        limits, metrics = _limits(server.url)
        limits.probe_interval = 0.05
        assert limits.fallback is LimitsFallback.REFUSE
        await limits.start()
        route, free = route_of("e", calls(1000)), route_of("f", {})
        assert (await limits.admit(route, ALICE, None)).admitted
        assert "engine_limits_backend_up 1" in metrics.render()
        await asyncio.to_thread(server.stop)
        decisions = [await limits.admit(route, ALICE, None) for _ in range(20)]
        assert {(d.admitted, d.status, d.retry_after) for d in decisions} == {(False, 503, 1)}
        assert "unreachable" in decisions[0].message and server.url not in decisions[0].message
        assert (await limits.admit(free, ALICE, None)).admitted  # no limit: nothing to check
        text = metrics.render()
        assert "engine_limits_backend_up 0" in text
        assert metrics.limits_backend_errors >= 1
        assert 'engine_limits_fallback_total{mode="refuse"} 20' in text
        assert len(_records(caplog, "is unreachable")) == 1  # once per outage, not per request
        await asyncio.to_thread(server.start)  # same port, empty (no persistence)
        await _await(lambda: limits.up)
        assert (await limits.admit(route, ALICE, None)).admitted
        assert "engine_limits_backend_up 1" in metrics.render()
        assert len(_records(caplog, "is back:")) == 1
        await limits.close()

    try:
        asyncio.run(run())
    finally:
        server.stop()


def test_stopped_redis_with_local_fallback_counts_in_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "engine.gateway")
    server = RedisServer(tmp_path).start()

    async def run() -> None:
        limits, metrics = _limits(server.url, fallback=LimitsFallback.LOCAL)
        await limits.start()
        route = route_of("e", calls(5))
        assert (await limits.admit(route, ALICE, None)).admitted  # counted in Redis
        await asyncio.to_thread(server.stop)
        decisions = [await limits.admit(route, ALICE, None) for _ in range(10)]
        # The local windows start empty: this replica admits up to the whole limit again.
        assert sum(d.admitted for d in decisions) == 5
        assert {d.status for d in decisions if not d.admitted} == {429}
        assert 'engine_limits_fallback_total{mode="local"} 10' in metrics.render()
        (warning,) = _records(caplog, "is unreachable")
        assert "the limit x the replica count" in warning.getMessage()
        await limits.close()

    try:
        asyncio.run(run())
    finally:
        server.stop()


def test_redis_down_at_start_is_an_outage_that_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "engine.gateway")
    server = RedisServer(tmp_path)  # not started yet

    async def run() -> None:
        limits, metrics = _limits(server.url)
        limits.probe_interval = 0.05
        await limits.start()
        assert not limits.up and "engine_limits_backend_up 0" in metrics.render()
        assert len(_records(caplog, "cannot be reached")) == 1
        route = route_of("e", calls(10))
        assert (await limits.admit(route, ALICE, None)).status == 503
        await asyncio.to_thread(server.start)
        await _await(lambda: limits.up)
        assert (await limits.admit(route, ALICE, None)).admitted
        await limits.close()

    try:
        asyncio.run(run())
    finally:
        server.stop()


def test_limits_url_is_checked_and_never_shows_its_password() -> None:
    from engine.gateway._limiter import check_limits_url, redacted

    assert check_limits_url("redis://127.0.0.1:6379/0")
    for bad in ("http://h:1/0", "redis://:s3cret@h:port/0", "redis://:s3cret@h:1/x", "redis:///0"):
        with pytest.raises(ValueError) as info:
            check_limits_url(bad)
        assert "s3cret" not in str(info.value)
    assert redacted("redis://user:s3cret@h:1/0") == "redis://***@h:1/0"
