"""Rate limits, exact within one process (the in-process backend of engine/gateway/_limiter.py).

Sliding 60-second windows: a call is admitted when every applicable limit has room, and then
counted in all of them, with no `await` in between, so concurrent requests on the event loop
cannot overshoot. Token limits are checked before a request (has the window room?), which then
reserves an estimate in them (its `max_tokens`, else DEFAULT_TOKEN_ESTIMATE), so requests in
flight count; `settle` replaces the reservation with the real usage (a failed request: 0), as
the Redis backend does.

Which limits apply to a caller:

| key               | principal given         | principal omitted            |
|-------------------|-------------------------|------------------------------|
| endpoint          | (not allowed)           | one shared window            |
| user              | only that user          | a window per user            |
| user_group        | members share a window  | a window per caller's group  |
| service_principal | only that SP            | a window per SP              |

A user-specific limit overrides the default per-user limit and group limits for that user.
A limit of 0 blocks every call.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_TOKEN_ESTIMATE",
    "Decision",
    "LimitRule",
    "RateLimiter",
    "Reservation",
    "rejection",
    "rules_from_spec",
    "subjects",
]

WINDOW = 60.0
# Tokens reserved for a request that sets no max_tokens (the Redis backend's too).
DEFAULT_TOKEN_ESTIMATE = 256


@dataclass(frozen=True)
class LimitRule:
    key: str
    principal: str | None
    calls: int | None
    tokens: int | None


@dataclass(frozen=True)
class Decision:
    admitted: bool
    retry_after: int = 0
    message: str = ""
    # 429: a limit without room; 503: the limits cannot be checked (engine/gateway/_limiter.py).
    status: int = 429
    # What `Limiter.settle` needs after the request (set when a token limit applies).
    ticket: Any = None


def rules_from_spec(spec: dict) -> tuple[LimitRule, ...]:
    rules = [
        LimitRule(r.get("key") or "endpoint", None, r.get("calls"), None)
        for r in spec.get("rate_limits") or []
    ]
    for r in (spec.get("ai_gateway") or {}).get("rate_limits") or []:
        rules.append(
            LimitRule(
                r.get("key") or "endpoint", r.get("principal"), r.get("calls"), r.get("tokens")
            )
        )
    return tuple(rules)


def subjects(
    rules: tuple[LimitRule, ...], caller: str, groups: frozenset[str], kind: str
) -> list[tuple[int, LimitRule, str]]:
    """The (rule index, rule, subject) windows that apply to a caller (the table above); every
    limiter counts the same windows."""
    specific_user = any(r.key == "user" and r.principal == caller for r in rules)
    out: list[tuple[int, LimitRule, str]] = []
    for i, rule in enumerate(rules):
        if rule.key == "endpoint":
            out.append((i, rule, "*"))
        elif rule.key == "user" and kind == "user":
            if rule.principal is None and not specific_user or rule.principal == caller:
                out.append((i, rule, caller))
        elif rule.key == "user_group" and not specific_user:
            if rule.principal is None:
                out += [(i, rule, f"group:{g}") for g in sorted(groups)]
            elif rule.principal in groups:
                out.append((i, rule, f"group:{rule.principal}"))
        elif (
            rule.key == "service_principal"
            and kind == "service_principal"
            and rule.principal in (None, caller)
        ):
            out.append((i, rule, caller))
    return out


def rejection(rule: LimitRule, unit: str, retry_after: int) -> Decision:
    """The 429 for a window without room (`unit`: calls or tokens)."""
    limit = rule.calls if unit == "calls" else rule.tokens
    who = f"{rule.key} {rule.principal}" if rule.principal else rule.key
    if limit == 0:
        message = f"this endpoint is blocked for {who} (rate limit of 0 {unit} per minute)"
    else:
        message = f"rate limit exceeded: {limit} {unit} per minute per {who}"
    return Decision(False, retry_after, message)


class _Window:
    __slots__ = ("events", "total")

    def __init__(self) -> None:
        # [time, amount]: a list, so that a reservation can be settled in place.
        self.events: deque[list[Any]] = deque()
        self.total = 0

    def used(self, now: float) -> int:
        events = self.events
        while events and events[0][0] <= now - WINDOW:
            self.total -= events.popleft()[1]
        return self.total

    def add(self, now: float, amount: int) -> list[Any]:
        event = [now, amount]
        self.events.append(event)
        self.total += amount
        return event

    def settle(self, event: list[Any], amount: int, now: float) -> None:
        """A reservation becomes `amount`; one that left the window already is charged anew
        (a request longer than the window)."""
        if event[0] > now - WINDOW:  # still in the window (`used` pops only older ones)
            self.total += amount - event[1]
            event[1] = amount
        elif amount:
            self.add(now, amount)

    def retry_after(self, now: float, limit: int) -> int:
        if limit <= 0 or not self.events:
            return int(WINDOW)
        # When enough of the window has expired to make room for one more.
        needed, freed = self.total - limit + 1, 0
        for ts, amount in self.events:
            freed += amount
            if freed >= needed:
                return max(1, math.ceil(ts + WINDOW - now))
        return int(WINDOW)


# The token windows a request reserved in, and what it reserved there.
Reservation = tuple[tuple[_Window, list[Any]], ...]


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._calls: dict[tuple[str, int, str], _Window] = {}
        self._tokens: dict[tuple[str, int, str], _Window] = {}

    def admit(
        self,
        endpoint: str,
        rules: tuple[LimitRule, ...],
        caller: str,
        groups: frozenset[str] = frozenset(),
        kind: str = "user",
        reserve: int = 0,
    ) -> Decision:
        """Admit one call (counted in every calls window that applies) or refuse it; with
        `reserve`, the admitted call also reserves that many tokens in its token windows
        (the Decision's `ticket` is the Reservation, for `settle`)."""
        if not rules:
            return Decision(True)
        now = self._clock()
        windows = []
        token_windows = []
        for i, rule, subject in subjects(rules, caller, groups, kind):
            key = (endpoint, i, subject)
            if rule.calls is not None:
                window = self._calls.setdefault(key, _Window())
                if window.used(now) >= rule.calls:
                    return rejection(rule, "calls", window.retry_after(now, rule.calls))
                windows.append(window)
            if rule.tokens is not None:
                window = self._tokens.setdefault(key, _Window())
                if window.used(now) >= rule.tokens:
                    return rejection(rule, "tokens", window.retry_after(now, rule.tokens))
                token_windows.append(window)
        for window in windows:
            window.add(now, 1)
        if reserve and token_windows:
            held = tuple((w, w.add(now, reserve)) for w in token_windows)
            return Decision(True, ticket=held)
        return Decision(True)

    def settle(self, reservation: Reservation, tokens: int) -> None:
        """The request's real token usage replaces what it reserved."""
        now = self._clock()
        for window, event in reservation:
            window.settle(event, tokens, now)
