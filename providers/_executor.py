"""The executor interface: how apply brings served entities up and down.

Per entity: prepare (check config, resolve secrets) -> start -> wait_ready -> ... -> stop.
`Deployment.instance_id` is the state store's id for this entity instance: it exists before
`start` is called, so an executor can always find and stop what it started, even when the
apply that started it died before recording the handle.

Exceptions::

    ExecutorError            the entity cannot be brought up (message says why)
    └── ExecutorUnavailable  no executor can run this kind of entity here
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from schemas import DeploymentState

__all__ = [
    "Deployment",
    "EntityStatus",
    "Executor",
    "ExecutorError",
    "ExecutorUnavailable",
    "SecretResolver",
    "SecretUnavailable",
    "entity_fingerprint",
    "entity_kind",
]

# Resolves a `{{secrets/scope/key}}` reference to its value (raises KeyError if unknown).
SecretResolver = Callable[[str], str]


class SecretUnavailable(KeyError):
    """A reference that exists but may not be resolved here (e.g. the endpoint's creator has
    no READ on its scope): `reason` says why, naming no value."""

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(reference)
        self.reason = reason


def entity_kind(config: dict[str, Any]) -> str:
    """`external` for an external model, `self_hosted` for a registered model."""
    return "external" if "external_model" in config else "self_hosted"


def entity_fingerprint(config: dict[str, Any]) -> str:
    """Identity of an entity's configuration: equal fingerprints can share a running instance."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Deployment:
    endpoint: str
    entity: str
    instance_id: int
    # The entity's config: secrets appear only as `{{secrets/...}}` references.
    config: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.endpoint}/{self.entity}#{self.instance_id}"


@dataclass(frozen=True)
class EntityStatus:
    deployment: DeploymentState
    message: str = ""


class ExecutorError(Exception):
    def __init__(self, message: str, *, permanent: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class ExecutorUnavailable(ExecutorError):
    pass


class Executor(ABC):
    """Brings one kind of served entity up and down. Implementations must be idempotent:
    `stop` of something already stopped (or never started) succeeds."""

    kind: ClassVar[str]

    @abstractmethod
    def prepare(self, deployment: Deployment, resolve: SecretResolver) -> None:
        """Check the config and resolve every secret; nothing starts here."""

    @abstractmethod
    def start(self, deployment: Deployment) -> dict[str, Any]:
        """Start the entity; returns a JSON handle that `stop` and `status` receive."""

    @abstractmethod
    def wait_ready(self, deployment: Deployment, handle: dict[str, Any], timeout: float) -> None:
        """Return when the entity serves; raise ExecutorError when it cannot."""

    @abstractmethod
    def stop(self, deployment: Deployment, handle: dict[str, Any] | None) -> None:
        """Stop the entity (handle is None when the starter died before recording it)."""

    @abstractmethod
    def status(self, deployment: Deployment, handle: dict[str, Any] | None) -> EntityStatus:
        """The entity's live status, for refresh and the reconciler."""
