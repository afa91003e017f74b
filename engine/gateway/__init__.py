"""The serving host's data plane: routing, rate limits, adapters, metrics, usage."""

from .app import ServingApp

__all__ = ["ServingApp"]
