"""Provider adapters: translate the unified llm/v1 schema to each provider's API and back."""

from ._base import ProviderAdapter, ProviderError, StreamError, StreamTally
from ._registry import adapter_for, register_adapter

__all__ = [
    "ProviderAdapter",
    "ProviderError",
    "StreamError",
    "StreamTally",
    "adapter_for",
    "register_adapter",
]
