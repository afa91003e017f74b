"""The Serving UI: server-rendered pages under /ml/ on `engine serve` (see `_routes.py`)."""

from engine.ui._routes import ServingUi

__all__ = ["ServingUi"]
