"""Which executor runs which kind of entity."""

from __future__ import annotations

from typing import Any

from ._executor import Executor, ExecutorUnavailable, entity_kind

__all__ = ["ExecutorRegistry"]

_UNAVAILABLE_HINT = {
    "self_hosted": (
        "self-hosted entities (entity_name/entity_version) need a runner executor, and none "
        "is registered in this process; start the serving host (`engine serve`) and apply "
        "through it"
    ),
}


class ExecutorRegistry:
    def __init__(self) -> None:
        self._by_kind: dict[str, Executor] = {}

    def register(self, kind: str, executor: Executor, *, replace: bool = False) -> None:
        if kind in self._by_kind and not replace:
            raise ValueError(f"an executor for {kind!r} is already registered")
        self._by_kind[kind] = executor

    def has(self, kind: str) -> bool:
        return kind in self._by_kind

    def for_entity(self, config: dict[str, Any]) -> Executor:
        kind = entity_kind(config)
        executor = self._by_kind.get(kind)
        if executor is None:
            raise ExecutorUnavailable(_UNAVAILABLE_HINT.get(kind, f"no executor for {kind!r}"))
        return executor
