"""Several runner replicas of one served entity behind one adapter interface.

Each request goes to the replica with the fewest requests in flight (ties go round robin), so
a replica that is slow to answer gets less of the load.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from providers.adapters import ProviderAdapter

__all__ = ["ReplicaSet"]

Json = dict[str, Any]


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
        self, method: Callable[[ProviderAdapter], AsyncIterator[Json]]
    ) -> AsyncIterator[Json]:
        index = self._pick()
        self.busy[index] += 1
        try:
            async for chunk in method(self.adapters[index]):
                yield chunk
        finally:
            self.busy[index] -= 1

    async def chat(self, body: Json) -> Json:
        return await self._call(lambda a: a.chat(body))

    def chat_stream(self, body: Json) -> AsyncIterator[Json]:
        return self._stream(lambda a: a.chat_stream(body))

    async def completions(self, body: Json) -> Json:
        return await self._call(lambda a: a.completions(body))

    def completions_stream(self, body: Json) -> AsyncIterator[Json]:
        return self._stream(lambda a: a.completions_stream(body))

    async def embeddings(self, body: Json) -> Json:
        return await self._call(lambda a: a.embeddings(body))
