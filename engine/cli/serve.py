"""`engine serve`: the serving host (gateway and REST API) on one process."""

from __future__ import annotations

import logging
import math
import os
from typing import Annotated, Any

import typer

from engine.cli.output import EXIT_USAGE, fail
from engine.gateway._limiter import LimitsFallback, check_limits_url
from engine.state import DirectoryStore, StateError, open_state, resolve_state

__all__ = [
    "ColdStartWaitOpt",
    "HeaderTimeoutOpt",
    "LimitsFallbackOpt",
    "LimitsOpt",
    "MetricsPublicOpt",
    "ScaleToZeroAfterOpt",
    "TablesRootOpt",
    "checked_limits",
    "claim_or_fail",
    "header_timeout_seconds",
    "register",
    "uvicorn_settings",
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
HeaderTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--header-timeout",
        help="Seconds a connection has to send a complete request head (request line and "
        "headers) after it opens or after its first bytes following a response; later it is "
        "closed (default 10, or $ENGINE_HEADER_TIMEOUT). Bodies, handlers and streams are "
        "never cut by it.",
    ),
]
HEADER_TIMEOUT_ENV = "ENGINE_HEADER_TIMEOUT"
TablesRootOpt = Annotated[
    str | None,
    typer.Option(
        "--tables-root",
        envvar="ENGINE_TABLES_ROOT",
        show_envvar=True,
        help="Folder of the payload and usage Delta tables (catalog/schema/table below it). "
        "Default: tables/ beside the state (its local folder for PostgreSQL).",
    ),
]


def header_timeout_seconds(value: float | None) -> float:
    """`--header-timeout`, else `$ENGINE_HEADER_TIMEOUT`, else 10 s; bad values exit 2."""
    from engine.host.http_protocol import DEFAULT_HEADER_TIMEOUT

    source = "--header-timeout"
    if value is None:
        raw = os.environ.get(HEADER_TIMEOUT_ENV)
        if raw is None or raw.strip() == "":
            return DEFAULT_HEADER_TIMEOUT
        source = f"${HEADER_TIMEOUT_ENV}"
        try:
            value = float(raw)
        except ValueError:
            fail(f"{source}: not a number of seconds: {raw!r}", EXIT_USAGE)
    if not (math.isfinite(value) and value > 0):
        fail(f"{source}: must be a positive number of seconds, got {value:g}", EXIT_USAGE)
    return value


def uvicorn_settings(header_timeout: float) -> dict[str, Any]:
    """How every serving host runs uvicorn (`engine serve`, `engine up`, bench/_serve_plain)."""
    from engine.host.http_protocol import header_timeout_protocol

    return {
        "loop": "auto",
        "http": header_timeout_protocol(header_timeout),
        "lifespan": "on",
        "access_log": False,
        "log_level": "warning",
        "timeout_graceful_shutdown": 10,
        # Longer than clients' pool idle times: closing a kept-alive connection just as a
        # pooled client reuses it resets that request (seen with 1,000 concurrent requests).
        "timeout_keep_alive": 75,
    }


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
    header_timeout: HeaderTimeoutOpt = None,
    limits: LimitsOpt = None,
    limits_fallback: LimitsFallbackOpt = LimitsFallback.REFUSE,
    tables_root: TablesRootOpt = None,
) -> None:
    """Serve every applied endpoint: queries, metrics and the control-plane API."""
    import uvicorn

    from engine.host.app import ServingApp

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = uvicorn_settings(header_timeout_seconds(header_timeout))
    state_path = resolve_state(state)
    limits = checked_limits(limits)
    app = ServingApp(
        state_path,
        address=f"http://{host}:{port}",
        scale_to_zero_after=scale_to_zero_after,
        cold_start_wait=cold_start_wait,
        metrics_public=metrics_public,
        limits=limits,
        limits_fallback=limits_fallback,
        tables_root=tables_root,
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
            uvicorn.run(app, host=host, port=port, **settings)
        finally:
            store.remove_host(app.host_id)  # also when it never started (port in use)
    finally:
        store.close()
