"""What every stateful command opens: specs, state, secrets, executors, and who is acting."""

from __future__ import annotations

import getpass
import importlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.secrets.store import SecretStore, secret_store_for_state
from engine.specs.loader import LoadResult, load_specs
from engine.state import SqliteStateStore, open_state, resolve_state_path
from plans import Canonical, canonical_endpoint
from providers import ExecutorRegistry, ExternalModelExecutor

__all__ = [
    "DesiredSpecs",
    "actor_name",
    "build_executors",
    "default_stack",
    "desired_from",
    "open_secrets",
    "open_store",
]

PLUGINS_ENV = "ENGINE_EXECUTOR_PLUGINS"


def actor_name() -> str:
    explicit = os.environ.get("ENGINE_ACTOR")
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def default_stack(paths: Sequence[str | os.PathLike[str]]) -> str:
    """The spec directory's name (a file's parent directory)."""
    first = Path(paths[0]).resolve()
    return (first if first.is_dir() else first.parent).name or "default"


def open_store(state: Path | None) -> SqliteStateStore:
    return open_state(state)


def open_secrets(state: Path | None) -> SecretStore:
    return secret_store_for_state(resolve_state_path(state))


def build_executors() -> ExecutorRegistry:
    """The built-in executors, then plugins named in $ENGINE_EXECUTOR_PLUGINS (`module:func`)."""
    registry = ExecutorRegistry()
    registry.register("external", ExternalModelExecutor())
    for spec in filter(None, os.environ.get(PLUGINS_ENV, "").split(",")):
        module_name, _, func_name = spec.strip().partition(":")
        plugin = getattr(importlib.import_module(module_name), func_name or "register")
        plugin(registry)
    return registry


@dataclass
class DesiredSpecs:
    loaded: LoadResult
    documents: list[Canonical] = field(default_factory=list)
    # keyed hash -> plaintext, for moving `*_plaintext` values into the secret store.
    plaintexts: dict[str, str] = field(default_factory=dict)


def desired_from(loaded: LoadResult, secrets: SecretStore) -> DesiredSpecs:
    """Canonical documents of valid specs; plaintexts kept in memory only."""
    desired = DesiredSpecs(loaded)

    def digest(value: str) -> str:
        hashed = secrets.digest(value)
        desired.plaintexts[hashed] = value
        return hashed

    desired.documents = [canonical_endpoint(e.spec, digest) for e in loaded.endpoints]
    return desired


def load(paths: Sequence[str | os.PathLike[str]]) -> LoadResult:
    return load_specs(paths)
