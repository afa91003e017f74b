"""Rate limits exact across processes: the windows live in Redis.

The algorithm is the in-process limiter's (engine/gateway/_ratelimit.py), a sliding 60-second
**log**, not GCRA and not a two-bucket approximation: each admitted call is one sorted-set
member scored by its time, so "N calls per minute" means N in any 60 s, exactly, for every
process on the Redis db together, and a limit answers the same whether it is counted here or
(with `--limits-fallback local`) in one process. GCRA would cost less memory but allows a burst
of N plus one call per 60/N s, up to 2N in a sliding minute, and a bucket approximation
over-admits at the window's edges. The price of the log: a key holds up to `limit` members
(one per admitted call in the last minute).

One admission is ONE round trip: a Lua script (loaded once, called by EVALSHA) checks every
window that applies to the request (endpoint, user, group, service principal; calls and tokens,
in rule order) and adds the call to all of them or to none. Redis runs a script atomically, so
concurrent admissions from any number of replicas cannot overshoot. The time is Redis's own
(`TIME` inside the script): one clock for every replica, whatever their machines' clocks say.

Tokens: a token window is a log of `request|amount` members plus a running total. Admission
needs room (total < limit, as in-process) and reserves an estimate (the request's `max_tokens`,
else DEFAULT_TOKEN_ESTIMATE), so requests in flight on other replicas count; `settle` replaces
the reservation with the real usage (prompt + completion) at the time it is known, which refunds
or charges the difference; a failed request settles 0, releasing its reservation. A settle that
cannot reach Redis leaves the reservation to expire with its window (it over-counts for at most
a minute; it never over-admits).

Keys: `engine:limits:{LINEAGE:ENDPOINT_ID}:RULE:SUBJECT:c|t|s` (calls log, tokens log, tokens
total). The lineage and endpoint id mean a re-created endpoint, or another state on the same
Redis, starts from empty windows; the `{...}` hash tag keeps one request's keys in one Redis
Cluster slot. Every write sets the key to expire one window after it, so idle windows vanish.

Redis unreachable: the first failed call logs one line and sets `engine_limits_backend_up` to 0;
from then on requests go to the declared fallback (`refuse`: 503; `local`: this process's
in-process windows) without waiting on Redis, while a probe reconnects every PROBE_INTERVAL
seconds; when Redis answers again the limiter logs one line and uses it again. Every failed
Redis call counts in `engine_limits_backend_errors_total`, every decision made without Redis in
`engine_limits_fallback_total`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from engine.gateway._limiter import (
    ADMITTED,
    InProcessLimits,
    LimitsFallback,
    Ticket,
    redacted,
)
from engine.gateway._ratelimit import (
    DEFAULT_TOKEN_ESTIMATE,
    WINDOW,
    Decision,
    LimitRule,
    rejection,
    subjects,
)

if TYPE_CHECKING:
    from engine.access.tokens import Principal
    from engine.gateway._metrics import Metrics
    from engine.gateway._table import EndpointRoute

__all__ = ["DEFAULT_TOKEN_ESTIMATE", "RedisLimits"]

log = logging.getLogger("engine.gateway")

# Seconds a Redis call may take before it counts as failed (loopback/LAN answers in < 1 ms).
TIMEOUT = 1.0
# Seconds between reconnect attempts while Redis is unreachable.
PROBE_INTERVAL = 0.5
# Connections to Redis per process; more concurrent admissions wait for one.
MAX_CONNECTIONS = 64
_WINDOW_US = int(WINDOW * 1_000_000)
_TTL_MS = int(WINDOW * 1000) + 1000

# KEYS: per check, 1 key (calls log) or 2 (tokens log, tokens total), in rule order.
# ARGV: request id, token estimate, the checks as one string ("c100t5000": calls limit 100,
# then tokens limit 5000; one argument, since redis-py's cost grows with each argument).
# Returns {1} when admitted, else {0, check number (1-based), retry-after µs}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window, ttl = WINDOW_US, TTL_MS
local id, estimate = ARGV[1], tonumber(ARGV[2])
local cutoff = now - window
local k = 1
local n = 0
local checks = {}
for kind, limit in string.gmatch(ARGV[3], '([ct])(%d+)') do
  n = n + 1
  limit = tonumber(limit)
  if kind == 'c' then
    local key = KEYS[k]
    k = k + 1
    redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
    local used = redis.call('ZCARD', key)
    if used >= limit then
      local retry = window
      if limit > 0 then
        -- room again when the (used - limit + 1)-th oldest call leaves the window
        local oldest = redis.call('ZRANGE', key, used - limit, used - limit, 'WITHSCORES')
        if oldest[2] then retry = tonumber(oldest[2]) + window - now end
      end
      return {0, n, retry}
    end
    checks[#checks + 1] = {key}
  else
    local key, total_key = KEYS[k], KEYS[k + 1]
    k = k + 2
    local total = tonumber(redis.call('GET', total_key) or '0')
    local expired = redis.call('ZRANGEBYSCORE', key, '-inf', cutoff)
    if #expired > 0 then
      for _, m in ipairs(expired) do total = total - tonumber(string.match(m, '|(%d+)$')) end
      redis.call('ZREMRANGEBYSCORE', key, '-inf', cutoff)
      redis.call('SET', total_key, total, 'PX', ttl)
    end
    if total >= limit then
      local retry = window
      if limit > 0 then
        local needed, freed = total - limit + 1, 0
        local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
        for e = 1, #entries, 2 do
          freed = freed + tonumber(string.match(entries[e], '|(%d+)$'))
          if freed >= needed then
            retry = tonumber(entries[e + 1]) + window - now
            break
          end
        end
      end
      return {0, n, retry}
    end
    checks[#checks + 1] = {key, total_key}
  end
end
for _, check in ipairs(checks) do
  if #check == 1 then
    redis.call('ZADD', check[1], now, id)
    redis.call('PEXPIRE', check[1], ttl)
  elseif estimate > 0 then
    redis.call('ZADD', check[1], now, id .. '|' .. estimate)
    redis.call('INCRBY', check[2], estimate)
    redis.call('PEXPIRE', check[1], ttl)
    redis.call('PEXPIRE', check[2], ttl)
  end
end
return {1}
"""
ADMIT = ADMIT.replace("WINDOW_US", str(_WINDOW_US)).replace("TTL_MS", str(_TTL_MS))

# KEYS: (tokens log, tokens total) pairs. ARGV: request id, estimate, real usage.
# The reservation (if still in the window) is refunded; the usage counts from now.
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl, id = TTL_MS, ARGV[1]
local estimate, used = tonumber(ARGV[2]), tonumber(ARGV[3])
for k = 1, #KEYS, 2 do
  local key, total_key = KEYS[k], KEYS[k + 1]
  if estimate > 0 and redis.call('ZREM', key, id .. '|' .. estimate) == 1 then
    redis.call('DECRBY', total_key, estimate)
  end
  if used > 0 then
    redis.call('ZADD', key, now, id .. '|' .. used)
    redis.call('INCRBY', total_key, used)
  end
  redis.call('PEXPIRE', key, ttl)
  redis.call('PEXPIRE', total_key, ttl)
end
return 1
"""
SETTLE = SETTLE.replace("TTL_MS", str(_TTL_MS))

_REFUSED = Decision(
    False,
    1,
    "rate limits cannot be checked right now (the limits store is unreachable); retry shortly",
    status=503,
)
# (script, keys, args, the waiting request's future)
_Call = tuple[str, list[str], tuple[Any, ...], "asyncio.Future[Any] | None"]
_Check = tuple[LimitRule, str]  # (rule, "calls" | "tokens"), in the order the script checks


class _RedisTicket(Ticket):
    __slots__ = ("keys", "request_id", "estimate")

    def __init__(self, keys: list[str], request_id: str, estimate: int) -> None:
        super().__init__()
        self.keys = keys
        self.request_id = request_id
        self.estimate = estimate


class RedisLimits:
    """The limiter of `--limits redis://...` (module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        lineage: str,
        metrics: Metrics,
        fallback: LimitsFallback = LimitsFallback.REFUSE,
        token_estimate: int = DEFAULT_TOKEN_ESTIMATE,
        probe_interval: float = PROBE_INTERVAL,
    ) -> None:
        self.url = url
        self.where = redacted(url)
        self.fallback = LimitsFallback(fallback)
        self.token_estimate = token_estimate
        self.probe_interval = probe_interval
        self.metrics = metrics
        self.local = InProcessLimits()  # the `local` fallback's windows
        self._prefix = f"engine:limits:{{{lineage}:"
        # Unique request ids across processes: this process's random part, then a counter.
        self._ids = (f"{os.urandom(6).hex()}.{n}" for n in itertools.count())
        self._client: aioredis.Redis | None = None
        self._admit_sha = self._settle_sha = ""
        self._up = False
        self._probe: asyncio.Task[None] | None = None
        self._settling: set[asyncio.Task[None]] = set()
        self._queue: list[_Call] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._in_flight = 0  # EVALSHA round trips on the wire now
        metrics.limits_backend_up = 0

    @property
    def up(self) -> bool:
        return self._up

    async def start(self) -> None:
        """Connect and load the scripts; an unreachable Redis is an outage, not a failed start
        (the fallback answers and the probe reconnects)."""
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url,
            max_connections=MAX_CONNECTIONS,
            timeout=5 * TIMEOUT,  # waiting for a free connection under load is no outage
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            # One immediate retry: a pooled connection that a Redis restart closed.
            retry=Retry(NoBackoff(), 1),
        )
        self._client = aioredis.Redis(connection_pool=pool)
        try:
            await self._load()
        except (RedisError, OSError) as exc:
            self._down(exc)
            return
        self._set_up(True)
        log.info("rate limits are counted in Redis at %s", self.where)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
        await self.wait_settled(2 * TIMEOUT)
        if self._sending:
            await asyncio.wait(set(self._sending), timeout=2 * TIMEOUT)
        if self._client is not None:
            await self._client.aclose()

    # -- admit ---------------------------------------------------------------------------------

    async def admit(
        self, route: EndpointRoute, principal: Principal, max_tokens: int | None
    ) -> Decision:
        rules = route.rate_rules
        if not rules:
            return ADMITTED
        if not self._up:
            return await self._fallback(route, principal, max_tokens)
        prefix = f"{self._prefix}{route.id}}}:"
        keys: list[str] = []
        token_keys: list[str] = []
        spec: list[str] = []
        checks: list[_Check] = []
        for i, rule, subject in subjects(rules, principal.name, principal.groups, principal.kind):
            base = f"{prefix}{i}:{subject}:"
            if rule.calls is not None:
                keys.append(base + "c")
                spec.append(f"c{rule.calls}")
                checks.append((rule, "calls"))
            if rule.tokens is not None:
                pair = (base + "t", base + "s")
                keys += pair
                token_keys += pair
                spec.append(f"t{rule.tokens}")
                checks.append((rule, "tokens"))
        if not checks:
            return ADMITTED
        request_id = next(self._ids)
        estimate = 0
        if token_keys:
            estimate = max_tokens if max_tokens and max_tokens > 0 else self.token_estimate
        try:
            answer = await self._run("admit", keys, (request_id, estimate, "".join(spec)))
        except (RedisError, OSError) as exc:
            self._down(exc)
            return await self._fallback(route, principal, max_tokens)
        if answer[0] != 1:
            rule, unit = checks[int(answer[1]) - 1]
            return rejection(rule, unit, max(1, math.ceil(int(answer[2]) / 1_000_000)))
        if token_keys:
            return Decision(True, ticket=_RedisTicket(token_keys, request_id, estimate))
        return ADMITTED

    async def _fallback(
        self, route: EndpointRoute, principal: Principal, max_tokens: int | None
    ) -> Decision:
        self.metrics.limits_fallback[self.fallback.value] += 1
        if self.fallback is LimitsFallback.LOCAL:
            return await self.local.admit(route, principal, max_tokens)
        return _REFUSED

    # -- settle --------------------------------------------------------------------------------

    def settle(self, ticket: Ticket, tokens: int) -> None:
        if ticket.settled:
            return
        if not isinstance(ticket, _RedisTicket):  # admitted by the local fallback
            self.local.settle(ticket, tokens)
            return
        ticket.settled = True
        if not tokens and not ticket.estimate:
            return
        # In the background: the answer does not wait for the accounting.
        task = asyncio.create_task(self._settle(ticket, tokens))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def wait_settled(self, timeout: float | None = None) -> None:
        """Until the settles sent so far are done (shutdown; tests)."""
        if self._settling:
            await asyncio.wait(set(self._settling), timeout=timeout)

    async def _settle(self, ticket: _RedisTicket, tokens: int) -> None:
        if not self._up:
            return  # the reservation expires with its window
        try:
            await self._run("settle", ticket.keys, (ticket.request_id, ticket.estimate, tokens))
        except (RedisError, OSError) as exc:
            self._down(exc)

    # -- Redis ---------------------------------------------------------------------------------

    async def _load(self) -> None:
        assert self._client is not None
        self._admit_sha = await self._client.script_load(ADMIT)
        self._settle_sha = await self._client.script_load(SETTLE)

    def _sha(self, script: str) -> str:
        return self._admit_sha if script == "admit" else self._settle_sha

    async def _run(self, script: str, keys: list[str], args: tuple[Any, ...]) -> Any:
        """One EVALSHA. Alone, it is sent at once; calls made while others are on the wire
        (concurrent requests) are queued and go out together in the next event-loop iteration
        as one pipeline: one write and one read for all of them, each still its own atomic
        script."""
        if not self._in_flight:
            self._in_flight += 1
            try:
                (result,) = await self._evalsha_reloading([(script, keys, args, None)])
            finally:
                self._in_flight -= 1
            if isinstance(result, BaseException):
                raise result
            return result
        future = asyncio.get_running_loop().create_future()
        self._queue.append((script, keys, args, future))
        if len(self._queue) == 1:
            asyncio.get_running_loop().call_soon(self._send_queued)
        return await future

    def _send_queued(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.ensure_future(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[_Call]) -> None:
        self._in_flight += 1
        try:
            results = await self._evalsha_reloading(batch)
        except BaseException:  # cancelled (shutdown): no waiter is left hanging
            for *_, future in batch:
                if future is not None:
                    future.cancel()
            raise
        finally:
            self._in_flight -= 1
        for (*_, future), result in zip(batch, results, strict=True):
            if future is None or future.done():  # its request was cancelled meanwhile
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _evalsha_reloading(self, batch: list[_Call]) -> list[Any]:
        """Each call's result or its Redis error (a failed connection: the error for all)."""
        try:
            results = await self._evalsha(batch)
            again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if again:  # a restarted Redis without our scripts: load them once more
                await self._load()
                retried = await self._evalsha([batch[i] for i in again])
                for i, result in zip(again, retried, strict=True):
                    results[i] = result
        except (RedisError, OSError) as exc:
            results = [exc] * len(batch)
        return results

    async def _evalsha(self, batch: list[_Call]) -> list[Any]:
        assert self._client is not None
        if len(batch) == 1:
            script, keys, args, _ = batch[0]
            try:
                return [await self._client.evalsha(self._sha(script), len(keys), *keys, *args)]
            except NoScriptError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(self._sha(script), len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

    def _set_up(self, up: bool) -> None:
        self._up = up
        self.metrics.limits_backend_up = int(up)

    def _down(self, exc: BaseException) -> None:
        """A failed call: counted always, logged once per outage (when up turns to down)."""
        self.metrics.limits_backend_errors += 1
        if self._probe is not None and not self._probe.done():
            return
        was_up = self._up
        self._set_up(False)
        if self.fallback is LimitsFallback.LOCAL:
            then = (
                "counting rate limits in this process only until it is back: each replica "
                "admits up to the full limit, so up to the limit x the replica count in total"
            )
        else:
            then = (
                "refusing requests that have a rate limit (503) until it is back; requests "
                "without one are served"
            )
        what = "is unreachable" if was_up else "cannot be reached"
        log.warning(
            "the rate-limit store %s %s (%s): %s", self.where, what, type(exc).__name__, then
        )
        self._probe = asyncio.create_task(self._reconnect(), name="limits-probe")

    async def _reconnect(self) -> None:
        assert self._client is not None
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                # Connections from before the outage are dead: reconnect them all.
                await self._client.connection_pool.disconnect()
                await self._load()
            except (RedisError, OSError):
                continue
            self._set_up(True)
            log.warning("the rate-limit store %s is back: limits are counted there", self.where)
            return
