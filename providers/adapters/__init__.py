"""Provider adapters: translate the unified llm/v1 schema to each provider's API and back."""

from ._base import ProviderAdapter, ProviderError
from ._registry import adapter_class, adapter_for, register_adapter, registered_providers

__all__ = [
    "ProviderAdapter",
    "ProviderError",
    "adapter_class",
    "adapter_for",
    "register_adapter",
    "registered_providers",
]
