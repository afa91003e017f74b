"""The control-plane REST API (`/api/2.0/serving-endpoints` and friends)."""

from engine.control._routes import ControlPlane
from engine.control._service import EndpointService

__all__ = ["ControlPlane", "EndpointService"]
