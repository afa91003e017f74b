"""`engine serve`: the serving host (gateway and REST API) on one process."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from engine.cli.output import fail
from engine.state import DirectoryStore, StateError, open_state, resolve_state

__all__ = [
    "ColdStartWaitOpt",
    "MetricsPublicOpt",
    "ScaleToZeroAfterOpt",
    "UVICORN_SETTINGS",
    "claim_or_fail",
    "register",
]

ScaleToZeroAfterOpt = Annotated[
    float | None,
    typer.Option(
        "--scale-to-zero-after",
        help="Idle seconds before a scale_to_zero_enabled runner stops "
        "(default 1800, or $ENGINE_SCALE_TO_ZERO_AFTER).",
    ),
]
ColdStartWaitOpt = Annotated[
    float | None,
    typer.Option(
        "--cold-start-wait",
        help="Seconds a request waits for a scaled-to-zero runner to start before a 503 "
        "with Retry-After (default 120, or $ENGINE_COLD_START_WAIT).",
    ),
]
MetricsPublicOpt = Annotated[
    bool,
    typer.Option(
        "--metrics-public",
        help="Answer /metrics without a token, with every endpoint's series (for a scraper "
        "on a private network). Default: a token is needed, and a caller sees only the "
        "series of endpoints it may view.",
    ),
]
# How every serving host runs uvicorn (`engine serve`, `engine up`).
UVICORN_SETTINGS: dict[str, Any] = {
    "loop": "auto",
    "http": "httptools",
    "lifespan": "on",
    "access_log": False,
    "log_level": "warning",
    "timeout_graceful_shutdown": 10,
    # Longer than clients' pool idle times: closing a kept-alive connection just as a
    # pooled client reuses it resets that request (seen with 1,000 concurrent requests).
    "timeout_keep_alive": 75,
}


def claim_or_fail(store: DirectoryStore, host_id: str, *, address: str) -> None:
    """Claim the state for this serving host; one `error:` line while another one lives."""
    from engine.host.one_host import HostConflict, claim_state

    try:
        claim_state(store, host_id, address=address)
    except HostConflict as exc:
        fail(exc.message)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)


def serve_command(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    state: Annotated[
        str | None, typer.Option("--state", help="State file or postgresql:// URL.")
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    scale_to_zero_after: ScaleToZeroAfterOpt = None,
    cold_start_wait: ColdStartWaitOpt = None,
    metrics_public: MetricsPublicOpt = False,
) -> None:
    """Serve every applied endpoint: queries, metrics and the control-plane API."""
    import uvicorn

    from engine.host.app import ServingApp

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    state_path = resolve_state(state)
    app = ServingApp(
        state_path,
        address=f"http://{host}:{port}",
        scale_to_zero_after=scale_to_zero_after,
        cold_start_wait=cold_start_wait,
        metrics_public=metrics_public,
    )
    try:
        store = open_state(state_path)
    except StateError as exc:
        fail(str(exc))
    try:
        # Before uvicorn starts: a second host is refused with one line, not a failed startup.
        claim_or_fail(store, app.host_id, address=app.address)
        typer.echo(f"serving on {app.address} (state {state_path})", err=True)
        try:
            uvicorn.run(app, host=host, port=port, **UVICORN_SETTINGS)
        finally:
            store.remove_host(app.host_id)  # also when it never started (port in use)
    finally:
        store.close()
