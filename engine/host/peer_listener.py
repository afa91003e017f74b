"""A second, private listener for one worker of `engine serve --workers N`.

The workers share one port, and the kernel picks which of them accepts a connection, so a
request meant for the worker that runs the runners (a forwarded change, a wake) cannot be sent
to it through that port. Each worker therefore also listens on a port of its own, on the same
interface, and records that one as its address in the state. It serves the same app, through
uvicorn's own protocol class (same parser, same header timeout), without a second lifespan.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["PeerListener"]


class PeerListener:
    def __init__(self, app: Any, host: str, protocol: type | str) -> None:
        self.app, self.host, self.protocol = app, host, protocol
        self._server: asyncio.Server | None = None
        self._state: Any = None

    async def start(self) -> str:
        """Listen on a free port; returns the address to record (http://host:port)."""
        import uvicorn
        from uvicorn.server import ServerState

        config = uvicorn.Config(
            self.app, lifespan="off", http=self.protocol, access_log=False, log_level="warning"
        )
        config.load()
        self._state = ServerState()
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[no-any-return]
                config=config, server_state=self._state, app_state={}, _loop=loop
            )

        self._server = await loop.create_server(protocol, host=self.host, port=0)
        port = self._server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for connection in list(self._state.connections):
            connection.shutdown()
        await asyncio.sleep(0)
