"""The control-plane REST API (`/api/2.0/serving-endpoints` and friends)."""

from ._routes import ControlPlane
from ._service import EndpointService

__all__ = ["ControlPlane", "EndpointService"]
