"""The pooled upstream client the gateway gives adapters: aiohttp behind the `UpstreamClient` seam.

Adapters are typed against `UpstreamClient` (providers/adapters/_client.py), the small part of
`httpx.AsyncClient` they need, and tests may hand them a plain `httpx.AsyncClient`. On the hot
path the gateway hands them this class instead: measured on this 2-core machine against nginx,
aiohttp's client does about 8,400 requests/s where httpx's does about 740 (bench/RESULTS.md).
Transport failures are raised as httpx's exceptions, so error mapping stays in one place.
"""

from __future__ import annotations

import asyncio
import json as jsonlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx

__all__ = ["AiohttpClient", "DEFAULT_TIMEOUT", "StreamedResponse", "UpstreamResponse"]

# No total limit (streams run as long as they produce); connect and between-reads limits.
DEFAULT_TIMEOUT = httpx.Timeout(None, connect=10.0, read=300.0)


class UpstreamResponse:
    """A buffered response with the attributes adapters read from httpx responses."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: Any, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    async def aread(self) -> bytes:
        return self.content


class StreamedResponse:
    """A response whose body is read as it arrives."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers = response.headers
        self.content = b""

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    async def aread(self) -> bytes:
        with _mapped_errors():
            self.content = await self._response.read()
        return self.content

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        with _mapped_errors():
            async for piece in self._response.content.iter_any():
                yield piece

    async def aiter_lines(self) -> AsyncIterator[str]:
        with _mapped_errors():
            async for raw in self._response.content:
                yield raw.decode("utf-8", errors="replace").rstrip("\r\n")


class _mapped_errors:
    """aiohttp / asyncio failures -> httpx exceptions (the most specific first)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is None:
            return False
        if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
            raise httpx.ReadTimeout("upstream timed out") from None
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise httpx.ConnectError("cannot connect to upstream") from None
        if isinstance(exc, aiohttp.ClientError):
            raise httpx.RemoteProtocolError(f"upstream failed: {type(exc).__name__}") from None
        return False


class AiohttpClient:
    """One keep-alive connection pool per upstream (an `UpstreamClient`)."""

    def __init__(
        self,
        *,
        timeout: httpx.Timeout | float | None = None,
        max_connections: int = 256,
        keepalive: float = 15.0,
    ) -> None:
        # Kept as httpx.Timeout, as httpx.AsyncClient exposes it: adapters read `timeout.read`.
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        self._timeouts = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self._timeout = _client_timeout(self._timeouts)
        self._max_connections = max_connections
        # Idle seconds a pooled connection is kept: below the server's own idle timeout, or a
        # request may be sent on a connection the server is closing (a reset, then a 502).
        self._keepalive = keepalive
        self._session: aiohttp.ClientSession | None = None

    @property
    def timeout(self) -> httpx.Timeout:
        return self._timeouts

    def _open(self) -> aiohttp.ClientSession:
        # Created on first use, inside the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                ttl_dns_cache=300,
                enable_cleanup_closed=True,
                keepalive_timeout=self._keepalive,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                auto_decompress=True,
                json_serialize=lambda v: jsonlib.dumps(v, separators=(",", ":")),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def _kwargs(
        self,
        headers: Any = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: Any = None,
        params: Any = None,
        timeout: Any = None,
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if headers:
            out["headers"] = dict(headers)
        if json is not None:
            out["data"] = jsonlib.dumps(json, separators=(",", ":")).encode()
            out.setdefault("headers", {}).setdefault("Content-Type", "application/json")
        elif content is not None:
            out["data"] = content
        elif data is not None:
            out["data"] = data
        if params:
            out["params"] = {k: str(v) for k, v in dict(params).items()}
        if timeout is not None:
            out["timeout"] = _client_timeout(timeout)
        return out

    async def request(self, method: str, url: str, **kwargs: Any) -> UpstreamResponse:
        session = self._open()
        with _mapped_errors():
            async with session.request(method, url, **self._kwargs(**kwargs)) as response:
                body = await response.read()
                return UpstreamResponse(response.status, response.headers, body)

    async def post(self, url: str, **kwargs: Any) -> UpstreamResponse:
        return await self.request("POST", url, **kwargs)

    async def get(self, url: str, **kwargs: Any) -> UpstreamResponse:
        return await self.request("GET", url, **kwargs)

    @asynccontextmanager
    async def stream(self, method: str, url: str, **kwargs: Any) -> AsyncIterator[StreamedResponse]:
        session = self._open()
        with _mapped_errors():
            response = await session.request(method, url, **self._kwargs(**kwargs))
        try:
            yield StreamedResponse(response)
        finally:
            response.release()

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _client_timeout(timeout: httpx.Timeout | float | None) -> aiohttp.ClientTimeout:
    if timeout is None:
        timeout = DEFAULT_TIMEOUT
    if isinstance(timeout, (int, float)):
        return aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout)
    return aiohttp.ClientTimeout(total=None, sock_connect=timeout.connect, sock_read=timeout.read)
