"""Provider adapters: translate the unified llm/v1 schema to each provider's API and back."""

from ._base import ProviderAdapter, ProviderError
from ._client import Timeouts, UpstreamClient, UpstreamReply, UpstreamStream
from ._registry import adapter_for, register_adapter, registered_adapters

__all__ = [
    "ProviderAdapter",
    "ProviderError",
    "Timeouts",
    "UpstreamClient",
    "UpstreamReply",
    "UpstreamStream",
    "adapter_for",
    "register_adapter",
    "registered_adapters",
]
