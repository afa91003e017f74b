"""The state store's one error type (both stores raise it)."""

from __future__ import annotations

__all__ = ["StateError"]


class StateError(Exception):
    """The state cannot be used (unreadable, newer schema, inconsistent request)."""
