"""Provider adapters: translate the unified llm/v1 schema to each provider's API and back."""

from ._base import ProviderAdapter, ProviderError, StreamError, StreamTally
from ._client import Timeouts, UpstreamClient, UpstreamReply, UpstreamStream
from ._registry import (
    adapter_class,
    adapter_for,
    register_adapter,
    registered_adapters,
    registered_providers,
)

__all__ = [
    "ProviderAdapter",
    "ProviderError",
    "StreamError",
    "StreamTally",
    "Timeouts",
    "UpstreamClient",
    "UpstreamReply",
    "UpstreamStream",
    "adapter_class",
    "adapter_for",
    "register_adapter",
    "registered_adapters",
    "registered_providers",
]
