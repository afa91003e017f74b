"""Rows of the state store as plain values (what the CLI, the API and apply read)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.state._lock import LockInfo, blocking_lock
from plans import EndpointRecord
from schemas import ConfigUpdateState

__all__ = ["EndpointRow", "EntityRow", "HistoryRow", "endpoint_record"]


@dataclass(frozen=True)
class EntityRow:
    """One served entity instance. `role`: pending (being brought up for a new config),
    active (serving the active config) or retiring (left by the old config, to stop)."""

    id: int
    endpoint: str
    name: str
    fingerprint: str
    config: dict[str, Any]
    role: str
    deployment: str
    message: str
    handle: dict[str, Any] | None
    config_version: int
    created_ms: int


@dataclass(frozen=True)
class EndpointRow:
    name: str
    id: str
    stack: str | None
    creator: str
    created_ms: int
    updated_ms: int
    spec: dict[str, Any] | None
    config_version: int | None
    config_update: str
    update_message: str
    pending: dict[str, Any] | None
    pending_version: int | None
    pending_started_ms: int | None
    deleting: bool = False
    # user, service_principal, or operator (the CLI on the state files, without a token).
    creator_kind: str = "operator"

    @property
    def in_progress(self) -> bool:
        return self.config_update == ConfigUpdateState.IN_PROGRESS


@dataclass(frozen=True)
class HistoryRow:
    endpoint: str
    config_version: int | None
    at_ms: int
    actor: str
    action: str
    summary: dict[str, Any]


def endpoint_record(row: EndpointRow, others: Sequence[LockInfo], now_ms: int) -> EndpointRecord:
    """What the planner reads of one endpoint. `others`: the locks held by anyone but the
    planner; an IN_PROGRESS update none of them covers was left by an apply that died."""
    live_update = row.in_progress and blocking_lock(others, (row.name,), now_ms) is not None
    return EndpointRecord(
        name=row.name,
        spec=None if row.deleting else row.spec,
        config_version=row.config_version,
        config_update=row.config_update,
        update_interrupted=row.in_progress and not live_update,
        stack=row.stack,
    )
