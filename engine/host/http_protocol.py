"""uvicorn's httptools protocol with a header-read timeout (`engine serve --header-timeout`).

uvicorn arms no timer on a new connection and cancels its keep-alive timer on every byte that
arrives, so a client that connects and sends nothing, or trickles a request head a byte at a time
(slowloris), holds a connection (and its file descriptor) forever. Here the request head (request
line and headers) must be complete within `header_timeout` seconds:

| clock starts                                   | stops                  | if late          |
|------------------------------------------------|------------------------|------------------|
| the connection opens                           | the head is complete   | closed           |
| the first bytes after a response (keep-alive)  | the head is complete   | closed           |

An idle kept-alive connection is closed by uvicorn's `timeout_keep_alive` as before: starting this
clock when a response ends would close pooled connections after `header_timeout` instead, which is
the reset-on-reuse race that the long keep-alive avoids. Once a head is complete nothing here runs
until the response has finished: a body may arrive slowly and a handler may run (and stream) for
as long as it needs. No work per byte, and at most one timer per connection per
`header_timeout`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["DEFAULT_HEADER_TIMEOUT", "HeaderTimeoutProtocol", "header_timeout_protocol"]

DEFAULT_HEADER_TIMEOUT = 10.0


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request head is late (see the module)."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # When the head being read must be complete; None while no head is being read.
        self._head_deadline: float | None = None
        # True from a head's completion until its response is finished (and no later head is
        # parsed): no clock runs then, whatever arrives.
        self._in_request = False
        # The timer is lazy: a head that completes only clears the deadline, and the timer,
        # when it fires, re-arms for a later deadline. A busy kept-alive connection then costs
        # one clock read per request and one timer per `header_timeout`, not one per request.
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        HttpToolsProtocol.connection_made(self, transport)
        self._start_clock()

    def data_received(self, data: bytes) -> None:
        # The first bytes of a kept-alive connection's next request start its clock (blank
        # lines between requests count: the parser skips them without starting a message).
        if self._head_deadline is None and not self._in_request:
            self._start_clock()
        HttpToolsProtocol.data_received(self, data)

    def on_headers_complete(self) -> None:
        self._head_deadline = None
        self._in_request = True
        HttpToolsProtocol.on_headers_complete(self)

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)
        # A pipelined head that is already parsed (self.cycle is newer) keeps the request
        # going; otherwise the connection waits for the next head.
        if self.cycle.response_complete:
            self._in_request = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_deadline = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        HttpToolsProtocol.connection_lost(self, exc)

    def _start_clock(self) -> None:
        self._head_deadline = deadline = self.loop.time() + self.header_timeout
        if self._head_timer is None:
            self._head_timer = self.loop.call_at(deadline, self._check_head)

    def _check_head(self) -> None:
        self._head_timer = None
        deadline = self._head_deadline
        if deadline is None:  # the head arrived; the next head's clock arms a new timer
            return
        if self.loop.time() < deadline:  # a later head than the one this timer was set for
            self._head_timer = self.loop.call_at(deadline, self._check_head)
            return
        if not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class to pass as uvicorn's `http=` (uvicorn builds it with its own args)."""
    return type(
        "HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": float(seconds)}
    )
