"""Executors and provider adapters. Never imports engine/."""

from ._executor import (
    Deployment,
    EntityStatus,
    Executor,
    ExecutorError,
    ExecutorUnavailable,
    SecretResolver,
    SecretUnavailable,
    entity_fingerprint,
    entity_kind,
)
from ._registry import ExecutorRegistry
from .external import ExternalModelExecutor

__all__ = [
    "Deployment",
    "EntityStatus",
    "Executor",
    "ExecutorError",
    "ExecutorRegistry",
    "ExecutorUnavailable",
    "ExternalModelExecutor",
    "SecretResolver",
    "SecretUnavailable",
    "entity_fingerprint",
    "entity_kind",
]
