"""The upstream-client seam: exactly what an adapter may ask of the HTTP client it is given.

    UpstreamClient      request / post / get / stream, and `timeout.read`
    ├── UpstreamReply   a buffered answer: status_code, headers, content, text, json()
    └── UpstreamStream  an answer read as it arrives: + aread(), aiter_lines(), aiter_bytes()

Two clients implement it: the gateway's pooled `AiohttpClient` (providers/adapters/_transport.py)
on the hot path, and `httpx.AsyncClient`, which tests and tools may hand an adapter. Transport
failures are raised as httpx's exceptions by both (`httpx.TimeoutException`, `httpx.HTTPError`),
so adapters map them in one place (`_base.send`, `_base.stream_lines`).

Keep this the surface adapters use, no more: a member added here is one every client must have.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol, runtime_checkable

__all__ = ["Timeouts", "UpstreamClient", "UpstreamReply", "UpstreamStream"]


@runtime_checkable
class Timeouts(Protocol):
    """The client's timeouts; adapters read only `read` (e.g. to bound a token refresh)."""

    @property
    def read(self) -> float | None: ...


@runtime_checkable
class UpstreamReply(Protocol):
    """A whole upstream answer."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content(self) -> bytes: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


@runtime_checkable
class UpstreamStream(UpstreamReply, Protocol):
    """An upstream answer whose body is read as it arrives (`content` is empty until `aread`)."""

    async def aread(self) -> bytes: ...

    def aiter_lines(self) -> AsyncIterator[str]: ...

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...


@runtime_checkable
class UpstreamClient(Protocol):
    """One pooled client per upstream, owned (opened and closed) by whoever built the adapter."""

    @property
    def timeout(self) -> Timeouts: ...

    async def request(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        data: Mapping[str, str] | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamReply: ...

    async def post(
        self,
        url: str,
        *,
        content: bytes | None = None,
        data: Mapping[str, str] | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamReply: ...

    async def get(
        self,
        url: str,
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamReply: ...

    def stream(
        self,
        method: str,
        url: str,
        *,
        content: bytes | None = None,
        data: Mapping[str, str] | None = None,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AbstractAsyncContextManager[UpstreamStream]: ...
