"""uvicorn's httptools protocol with a header-read timeout (`engine serve --header-timeout`).

uvicorn arms no timer on a new connection and cancels its keep-alive timer on every byte that
arrives, so a client that connects and sends nothing, or trickles a request head a byte at a time
(slowloris), holds a connection (and its file descriptor) forever. Here the request head (request
line and headers) must be complete within `header_timeout` seconds:

| clock starts                                   | stops                  | then             |
|------------------------------------------------|------------------------|------------------|
| the connection opens                           | the head is complete   | closed           |
| the first bytes after a response (keep-alive)  | the head is complete   | closed           |

An idle kept-alive connection is closed by uvicorn's `timeout_keep_alive` as before: starting this
clock when a response ends would close pooled connections after `header_timeout` instead, which is
the reset-on-reuse race that the long keep-alive avoids. Once a head is complete nothing here runs
until the response has finished: a body may arrive slowly and a handler may run (and stream) for
as long as it needs. One timer per request head, no work per byte.
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
        self._head_timer: asyncio.TimerHandle | None = None
        # True from a head's completion until its response is finished (and no later head is
        # parsed): no clock runs then, whatever arrives.
        self._in_request = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        # The first bytes of a kept-alive connection's next request start its clock (blank
        # lines between requests count: the parser skips them without starting a message).
        if self._head_timer is None and not self._in_request:
            self._arm()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_request = True
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined head that is already parsed (self.cycle is newer) keeps the request
        # going; otherwise the connection waits for the next head.
        if self.cycle.response_complete:
            self._in_request = False

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutProtocol]:
    """The protocol class to pass as uvicorn's `http=` (uvicorn builds it with its own args)."""
    return type(
        "HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": float(seconds)}
    )
