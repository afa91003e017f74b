"""provider name -> adapter class. Registering a name twice is an error.

Which providers exist is schemas' provider table (`schemas.PROVIDERS`: names and config blocks,
read by validation without importing any adapter); this registry maps those names to the classes
that serve them, and refuses a class whose provider has no row there. Classes come from:

| source                                  | how                                                  |
|-----------------------------------------|------------------------------------------------------|
| every public module of this package     | imported at first use; `@register_adapter` on import |
| entry points in `serving_engine.adapters` | `<provider> = <module>:<AdapterClass>` in a plugin's |
|                                         | package metadata, loaded at first use                |

So a new adapter is one module (here, or in a plugin package with an entry point) and no list to
edit. A plugin that fails to load does not stop the others: its provider answers with why.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import threading
from importlib.metadata import EntryPoint, entry_points

from schemas import ADAPTER_ENTRY_POINT_GROUP, provider_info

from ._base import Json, ProviderAdapter, ProviderError
from ._client import UpstreamClient

__all__ = [
    "adapter_class",
    "adapter_for",
    "register_adapter",
    "registered_adapters",
    "registered_providers",
]

log = logging.getLogger(__name__)

_ADAPTERS: dict[str, type[ProviderAdapter]] = {}
# provider -> why its plugin could not be registered (shown instead of "no adapter").
_FAILED: dict[str, str] = {}
_loaded = False
_load_lock = threading.Lock()


def register_adapter(cls: type[ProviderAdapter]) -> type[ProviderAdapter]:
    """Class decorator: `@register_adapter` on a ProviderAdapter subclass."""
    if provider_info(cls.PROVIDER) is None:
        raise ValueError(
            f"provider {cls.PROVIDER!r} is not in the provider table (schemas.PROVIDERS): "
            f"declare a plugin's adapter by an entry point in group {ADAPTER_ENTRY_POINT_GROUP!r}"
        )
    if cls.PROVIDER in _ADAPTERS:
        raise ValueError(f"an adapter for {cls.PROVIDER!r} is already registered")
    _ADAPTERS[cls.PROVIDER] = cls
    return cls


def _load_builtin() -> None:
    package = importlib.import_module(__package__)
    for module in pkgutil.iter_modules(package.__path__):
        if module.name.startswith("_"):
            continue
        name = f"{__package__}.{module.name}"
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # A vendor module whose optional dependency is missing: that provider is absent.
            if exc.name != name:
                raise


def _load_plugin(ep: EntryPoint) -> None:
    info = provider_info(ep.name)
    if info is None or info.builtin:
        raise ValueError(
            "a plugin's provider name must be lowercase letters and digits joined by - or _, "
            "and not one of the platform's providers"
        )
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, ProviderAdapter)):
        raise TypeError(f"{ep.value} is not a ProviderAdapter subclass")
    if getattr(cls, "PROVIDER", None) != ep.name:
        raise ValueError(f"{ep.value}.PROVIDER is {getattr(cls, 'PROVIDER', None)!r}")
    if _ADAPTERS.get(ep.name) is not cls:  # its module may have used @register_adapter
        register_adapter(cls)


def _load_all() -> None:
    global _loaded
    with _load_lock:
        if _loaded:
            return
        _load_builtin()
        for ep in entry_points(group=ADAPTER_ENTRY_POINT_GROUP):
            try:
                _load_plugin(ep)
            except Exception as exc:  # a broken plugin must not take the others down
                _FAILED[ep.name] = f"{type(exc).__name__}: {exc}"
                log.warning("adapter plugin %s (%s) not loaded: %s", ep.name, ep.value, exc)
        _loaded = True


def adapter_class(provider: str) -> type[ProviderAdapter]:
    """The class that serves `provider`; ProviderError("config") when there is none."""
    # Import every vendor module once, even when one was imported directly before.
    _load_all()
    cls = _ADAPTERS.get(provider)
    if cls is None:
        why = _FAILED.get(provider)
        detail = f": its plugin failed to load ({why})" if why else ""
        raise ProviderError("config", f"no adapter for provider {provider!r}{detail}")
    return cls


def registered_providers() -> list[str]:
    _load_all()
    return sorted(_ADAPTERS)


def registered_adapters() -> dict[str, type[ProviderAdapter]]:
    """Every registered adapter by provider name (a copy: register with the decorator)."""
    _load_all()
    return dict(_ADAPTERS)


def adapter_for(model: Json, client: UpstreamClient) -> ProviderAdapter:
    """An adapter for an `external_model` block whose secrets are resolved (no I/O)."""
    return adapter_class(str(model.get("provider", "")))(model, client)
