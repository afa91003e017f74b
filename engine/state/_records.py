"""Rows of the state store as plain values (what the CLI, the API and apply read)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas import ConfigUpdateState

__all__ = ["EndpointRow", "EntityRow", "HistoryRow"]


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
