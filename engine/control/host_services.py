"""What the control plane needs from the serving host it runs in, and nothing more.

The REST API reads and writes the state through the workflow; from the host it needs who is
calling, the stores it already has open, the data plane's metrics, a served entity's logs, and
one promise: `catch_up()` brings the routing table up to the state's current serial, so that a
client that saw a change through the API (an endpoint READY, a new rate limit) finds the data
plane of the same host already serving it (read-your-writes).
"""

from __future__ import annotations

from typing import Any, Protocol

from engine.access.tokens import Principal
from engine.gateway._metrics import Visible
from engine.secrets.store import SecretStore
from engine.state import EndpointRow, StateStore

__all__ = ["HostServices"]


class HostServices(Protocol):
    @property
    def store(self) -> StateStore: ...

    @property
    def secrets(self) -> SecretStore: ...

    def authenticate(self, scope: dict[str, Any]) -> Principal:
        """The caller of this request, or an ApiError 401."""
        ...

    async def catch_up(self) -> None:
        """Return once the routing table is at least at the state's serial as of this call."""
        ...

    def metrics_text(self, visible: Visible = None) -> str:
        """The data plane's metrics in Prometheus' text format (only the series of endpoints
        `visible` accepts, when given)."""
        ...

    def entity_logs(self, row: EndpointRow, entity: str, build: bool) -> str | None:
        """A served entity's log lines (None: the endpoint has no such entity)."""
        ...
