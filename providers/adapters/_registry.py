"""provider name -> adapter class. Registering a name twice is an error."""

from __future__ import annotations

import importlib

from ._base import Json, ProviderAdapter, ProviderError
from ._client import UpstreamClient

__all__ = ["adapter_for", "register_adapter", "registered_adapters", "ADAPTER_MODULES"]

_ADAPTERS: dict[str, type[ProviderAdapter]] = {}
_loaded = False

# Modules that register adapters on import (one per vendor).
ADAPTER_MODULES = (
    "providers.adapters.openai",
    "providers.adapters.anthropic",
    "providers.adapters.cohere",
    "providers.adapters.bedrock",
    "providers.adapters.vertex",
    "providers.adapters.databricks",
    "providers.adapters.custom",
    "providers.adapters.legacy",
)


def register_adapter(cls: type[ProviderAdapter]) -> type[ProviderAdapter]:
    """Class decorator: `@register_adapter` on a ProviderAdapter subclass."""
    if cls.PROVIDER in _ADAPTERS:
        raise ValueError(f"an adapter for {cls.PROVIDER!r} is already registered")
    _ADAPTERS[cls.PROVIDER] = cls
    return cls


def _load_all() -> None:
    global _loaded
    _loaded = True
    for module in ADAPTER_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def registered_adapters() -> dict[str, type[ProviderAdapter]]:
    """Every registered adapter by provider name (a copy: register with the decorator)."""
    if not _loaded:
        # Import every vendor module once, even when one was imported directly before.
        _load_all()
    return dict(_ADAPTERS)


def adapter_for(model: Json, client: UpstreamClient) -> ProviderAdapter:
    """An adapter for an `external_model` block whose secrets are resolved (no I/O)."""
    if not _loaded:
        _load_all()
    cls = _ADAPTERS.get(model.get("provider", ""))
    if cls is None:
        raise ProviderError("config", f"no adapter for provider {model.get('provider')!r}")
    return cls(model, client)
