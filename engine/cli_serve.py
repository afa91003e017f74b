"""`engine serve`: the serving host (gateway and REST API) on one process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from .state import resolve_state_path

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


def serve_command(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    state: Annotated[Path | None, typer.Option("--state", help="State file.")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
) -> None:
    """Serve every applied endpoint: queries, metrics and the control-plane API."""
    import uvicorn

    from .gateway import ServingApp

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = ServingApp(resolve_state_path(state), address=f"http://{host}:{port}")
    typer.echo(f"serving on http://{host}:{port} (state {resolve_state_path(state)})", err=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="auto",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
        # Longer than clients' pool idle times: closing a kept-alive connection just as a
        # pooled client reuses it resets that request (seen with 1,000 concurrent requests).
        timeout_keep_alive=75,
    )
