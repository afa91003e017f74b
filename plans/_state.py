"""What plans read of the actual state: a pure snapshot, filled in by the engine."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas import ConfigUpdateState

from ._canonical import Canonical

__all__ = ["EndpointRecord", "StateSnapshot", "record_fingerprint"]


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


def record_fingerprint(record: EndpointRecord | None) -> str | None:
    """What a plan assumed about one endpoint, as a short hash (None: it did not exist).

    A saved plan is applied only if every endpoint it changes still has the fingerprint it was
    planned from: other endpoints may change meanwhile (updates of different endpoints run in
    parallel) without making the plan stale. Whether an update looks interrupted is left out:
    that depends on who looks, not on what the endpoint is.
    """
    if record is None:
        return None
    body = [record.spec, record.config_version, record.config_update, record.stack]
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
