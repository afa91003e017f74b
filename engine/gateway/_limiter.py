"""The limiter seam: what the data plane asks before a request, and tells after it.

| backend                        | selected by                     | exact across             |
|--------------------------------|---------------------------------|--------------------------|
| InProcessLimits (_ratelimit)   | the default                     | one process              |
| RedisLimits (_redis_limits)    | `--limits redis://host:port/db` | every process on that db |

`admit(route, principal, max_tokens)` is awaited before the upstream is called; a Decision that
admits carries a ticket when a token limit applies, and `settle(ticket, tokens)` closes it once
with the request's real usage (0 for a request that failed). `settle` never delays an answer,
and settling a ticket twice does nothing, so the data plane can settle in a `finally` too.

`--limits-fallback` says what RedisLimits does while Redis cannot be reached:

| mode    | a request with a rate limit                              |
|---------|----------------------------------------------------------|
| refuse  | 503 TEMPORARILY_UNAVAILABLE with Retry-After (default)   |
| local   | counted in this process only: up to the limit x replicas |
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from engine.gateway._ratelimit import DEFAULT_TOKEN_ESTIMATE, Decision, RateLimiter, Reservation

if TYPE_CHECKING:
    from engine.access.tokens import Principal
    from engine.gateway._metrics import Metrics
    from engine.gateway._table import EndpointRoute

__all__ = [
    "ADMITTED",
    "InProcessLimits",
    "Limiter",
    "LimitsFallback",
    "Ticket",
    "check_limits_url",
    "open_limits",
    "redacted",
]

ADMITTED = Decision(True)


class LimitsFallback(enum.StrEnum):
    """What a shared limits backend does while it is unreachable (table above)."""

    REFUSE = "refuse"
    LOCAL = "local"


class Ticket:
    """One admitted request's open account with its limiter; `settled` once closed."""

    __slots__ = ("settled",)

    def __init__(self) -> None:
        self.settled = False


class Limiter(Protocol):
    async def start(self) -> None: ...

    async def admit(
        self, route: EndpointRoute, principal: Principal, max_tokens: int | None
    ) -> Decision: ...

    def settle(self, ticket: Ticket, tokens: int) -> None: ...

    async def close(self) -> None: ...


class _LocalTicket(Ticket):
    __slots__ = ("reservation",)

    def __init__(self, reservation: Reservation) -> None:
        super().__init__()
        self.reservation = reservation


class InProcessLimits:
    """The default: RateLimiter's windows in this process (token limits: room is checked
    before a request and an estimate reserved, replaced by the real usage after it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = RateLimiter(clock)

    async def start(self) -> None:
        return None

    async def admit(
        self, route: EndpointRoute, principal: Principal, max_tokens: int | None
    ) -> Decision:
        rules = route.rate_rules
        if not rules:
            return ADMITTED
        reserve = max_tokens if max_tokens and max_tokens > 0 else DEFAULT_TOKEN_ESTIMATE
        decision = self.limiter.admit(
            route.name, rules, principal.name, principal.groups, principal.kind, reserve
        )
        if decision.admitted and decision.ticket is not None:
            return Decision(True, ticket=_LocalTicket(decision.ticket))
        return decision

    def settle(self, ticket: Ticket, tokens: int) -> None:
        if ticket.settled:
            return
        ticket.settled = True
        assert isinstance(ticket, _LocalTicket)
        self.limiter.settle(ticket.reservation, tokens)

    async def close(self) -> None:
        return None


_SCHEMES = ("redis", "rediss", "unix")


def check_limits_url(url: str) -> str:
    """`url` if it names a Redis database (redis://host:port/db, rediss://, unix://path);
    otherwise ValueError with what is wrong (never the URL's password)."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"{redacted(url)!r} is not a Redis URL: use redis://HOST:PORT/DB "
            "(or rediss:// for TLS, unix:///path/to/redis.sock)"
        )
    if parts.scheme != "unix":
        if not parts.hostname:
            raise ValueError(f"{redacted(url)!r} names no host (redis://HOST:PORT/DB)")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError(f"{redacted(url)!r} has a port that is not a number") from None
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise ValueError(f"{redacted(url)!r}: the database must be a number, not {db!r}")
    elif not parts.path:
        raise ValueError(f"{redacted(url)!r} names no socket path (unix:///path/to/redis.sock)")
    return url


def redacted(url: str) -> str:
    """The URL without its credentials (for logs and errors)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def open_limits(
    url: str | None,
    *,
    lineage: str,
    metrics: Metrics,
    fallback: LimitsFallback = LimitsFallback.REFUSE,
) -> Limiter:
    """The limiter a serving host uses: in-process, or Redis at `url` (not connected until
    `start`)."""
    if not url or url == "per-replica":  # counted here (per-replica: declared so)
        return InProcessLimits()
    from engine.gateway._redis_limits import RedisLimits  # redis-py only when asked for

    return RedisLimits(check_limits_url(url), lineage=lineage, metrics=metrics, fallback=fallback)
