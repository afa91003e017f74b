"""Several runner replicas of one served entity behind one adapter interface.

Each request goes to the replica with the fewest requests in flight (ties go round robin), so
a replica that is slow to answer gets less of the load.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from providers.adapters import ProviderAdapter, StreamTally

__all__ = ["ReplicaSet"]

Json = dict[str, Any]
_T = TypeVar("_T")


class ReplicaSet:
    def __init__(self, adapters: list[ProviderAdapter]) -> None:
        self.adapters = adapters
        self.busy = [0] * len(adapters)
        self._next = 0

    def _pick(self) -> int:
        n = len(self.adapters)
        start = self._next
        self._next = (start + 1) % n
        return min(((start + k) % n for k in range(n)), key=self.busy.__getitem__)

    async def _call(self, method: Callable[[ProviderAdapter], Any]) -> Json:
        index = self._pick()
        self.busy[index] += 1
        try:
            return await method(self.adapters[index])
        finally:
            self.busy[index] -= 1

    async def _stream(
        self, method: Callable[[ProviderAdapter], AsyncIterator[_T]]
    ) -> AsyncIterator[_T]:
        index = self._pick()
        self.busy[index] += 1
        try:
            # Closed with this one (a client gone mid-stream), so its connection goes back now.
            async with aclosing(method(self.adapters[index])) as pieces:
                async for piece in pieces:
                    yield piece
        finally:
            self.busy[index] -= 1

    async def chat(self, body: Json) -> Json:
        return await self._call(lambda a: a.chat(body))

    def chat_stream(self, body: Json) -> AsyncIterator[Json]:
        return self._stream(lambda a: a.chat_stream(body))

    def chat_sse(self, body: Json, tally: StreamTally) -> AsyncIterator[bytes]:
        return self._stream(lambda a: a.chat_sse(body, tally))

    async def completions(self, body: Json) -> Json:
        return await self._call(lambda a: a.completions(body))

    def completions_stream(self, body: Json) -> AsyncIterator[Json]:
        return self._stream(lambda a: a.completions_stream(body))

    def completions_sse(self, body: Json, tally: StreamTally) -> AsyncIterator[bytes]:
        return self._stream(lambda a: a.completions_sse(body, tally))

    async def embeddings(self, body: Json) -> Json:
        return await self._call(lambda a: a.embeddings(body))
