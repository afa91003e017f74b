"""`engine serve`: the serving host (gateway and REST API) on one process."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.cli.output import fail
from engine.gateway._limiter import LimitsFallback, check_limits_url
from engine.state import DirectoryStore, StateError, open_state, resolve_state_path

__all__ = [
    "ColdStartWaitOpt",
    "LimitsFallbackOpt",
    "LimitsOpt",
    "MetricsPublicOpt",
    "ScaleToZeroAfterOpt",
    "UVICORN_SETTINGS",
    "checked_limits",
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
LimitsOpt = Annotated[
    str | None,
    typer.Option(
        "--limits",
        envvar="ENGINE_LIMITS",
        show_envvar=True,
        help="Count rate limits in Redis (redis://HOST:PORT/DB), exact across every host "
        "that shares it. Default: in this process.",
    ),
]
LimitsFallbackOpt = Annotated[
    LimitsFallback,
    typer.Option(
        "--limits-fallback",
        envvar="ENGINE_LIMITS_FALLBACK",
        show_envvar=True,
        help="While the --limits Redis is unreachable: refuse requests that have a rate limit "
        "(503), or count them in this process only (local: admits up to the limit x the "
        "number of hosts).",
    ),
]


def checked_limits(url: str | None) -> str | None:
    """`--limits` as given, or one `error:` line when it is no Redis URL."""
    if not url:
        return None
    try:
        return check_limits_url(url)
    except ValueError as exc:
        fail(f"--limits: {exc}")


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
    state: Annotated[Path | None, typer.Option("--state", help="State file.")] = None,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    scale_to_zero_after: ScaleToZeroAfterOpt = None,
    cold_start_wait: ColdStartWaitOpt = None,
    metrics_public: MetricsPublicOpt = False,
    limits: LimitsOpt = None,
    limits_fallback: LimitsFallbackOpt = LimitsFallback.REFUSE,
) -> None:
    """Serve every applied endpoint: queries, metrics and the control-plane API."""
    import uvicorn

    from engine.host.app import ServingApp

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    state_path = resolve_state_path(state)
    limits = checked_limits(limits)
    app = ServingApp(
        state_path,
        address=f"http://{host}:{port}",
        scale_to_zero_after=scale_to_zero_after,
        cold_start_wait=cold_start_wait,
        metrics_public=metrics_public,
        limits=limits,
        limits_fallback=limits_fallback,
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
