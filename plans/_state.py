"""What plans read of the actual state: a pure snapshot, filled in by the engine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas import ConfigUpdateState

from ._canonical import Canonical

__all__ = ["EndpointRecord", "StateSnapshot"]


@dataclass(frozen=True)
class EndpointRecord:
    name: str
    # The active config as applied (canonical); None while a create has never completed.
    spec: Canonical | None
    config_version: int | None
    config_update: str = ConfigUpdateState.NOT_UPDATING
    # IN_PROGRESS left behind by an apply that died: resumable, not a live update (L1).
    update_interrupted: bool = False
    # The stack that manages this endpoint; None for endpoints made through the API.
    stack: str | None = None


@dataclass(frozen=True)
class StateSnapshot:
    lineage: str
    serial: int
    endpoints: Mapping[str, EndpointRecord] = field(default_factory=dict)
