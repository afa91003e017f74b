"""The default (in-process) limits reserve tokens as the Redis backend does: requests in flight
count against a token limit, and each settles with its real usage."""

from __future__ import annotations

import asyncio
import uuid

from limits_worker import route_of

from engine.access.tokens import Principal
from engine.gateway._limiter import InProcessLimits
from engine.gateway._ratelimit import DEFAULT_TOKEN_ESTIMATE

ALICE = Principal("alice@example.com", "user", (), False)
SPEC = {
    "ai_gateway": {"rate_limits": [{"key": "endpoint", "tokens": 1000, "renewal_period": "minute"}]}
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _used(limits: InProcessLimits, clock: Clock) -> int:
    return sum(w.used(clock.now) for w in limits.limiter._tokens.values())


def test_tokens_reserve_at_admission_and_settle_with_the_usage() -> None:
    async def run() -> None:
        clock = Clock()
        limits = InProcessLimits(clock)
        route = route_of(uuid.uuid4().hex, SPEC)
        a = await limits.admit(route, ALICE, 600)
        b = await limits.admit(route, ALICE, 600)  # 600 reserved < 1000: room
        assert a.admitted and b.admitted and a.ticket and b.ticket
        assert _used(limits, clock) == 1200
        full = await limits.admit(route, ALICE, 1)  # the reservations in flight fill it
        assert not full.admitted and full.status == 429
        assert full.message == "rate limit exceeded: 1000 tokens per minute per endpoint"
        limits.settle(a.ticket, 100)  # used less than reserved: the rest is refunded
        assert _used(limits, clock) == 700
        limits.settle(a.ticket, 999)  # settled once only
        assert _used(limits, clock) == 700
        c = await limits.admit(route, ALICE, None)  # no max_tokens: the default estimate
        assert c.admitted and _used(limits, clock) == 700 + DEFAULT_TOKEN_ESTIMATE
        limits.settle(b.ticket, 0)  # a failed request releases its reservation
        limits.settle(c.ticket, 1500)  # used more than reserved: the difference is charged
        assert _used(limits, clock) == 100 + 1500
        assert not (await limits.admit(route, ALICE, 1)).admitted
        clock.now += 61  # the window moved on: all of it has expired
        assert (await limits.admit(route, ALICE, 1)).admitted

    asyncio.run(run())


def test_a_request_longer_than_the_window_is_charged_when_it_ends() -> None:
    async def run() -> None:
        clock = Clock()
        limits = InProcessLimits(clock)
        route = route_of(uuid.uuid4().hex, SPEC)
        slow = await limits.admit(route, ALICE, 300)
        clock.now += 90  # its reservation left the window while it ran
        assert _used(limits, clock) == 0
        limits.settle(slow.ticket, 1200)
        assert _used(limits, clock) == 1200  # charged now, for the next minute
        assert not (await limits.admit(route, ALICE, 1)).admitted

    asyncio.run(run())
