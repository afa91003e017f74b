"""`engine serve`: the serving host (gateway and REST API) on one process."""

from __future__ import annotations

import json
import logging
import math
import os
from enum import StrEnum
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
        help="Count rate limits in Redis (redis://HOST:PORT/DB), exact across every replica "
        "that shares it; or `per-replica`: several replicas, each counting alone (admits up to "
        "the limit x replicas). Default: in this process, which then must be the state's only "
        "serving host.",
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
    """`--limits` as given, or one `error:` line when it is neither a Redis URL nor
    `per-replica`."""
    from engine.host.membership import PER_REPLICA

    if not url:
        return None
    if url == PER_REPLICA:
        return url
    try:
        return check_limits_url(url)
    except ValueError as exc:
        fail(f"--limits: {exc}")


def claim_or_fail(
    store: DirectoryStore, host_id: str, *, address: str, limits: str | None = None
) -> None:
    """Join the state's serving hosts; one `error:` line when this one may not (another host
    counts rate limits alone, or differently: engine/host/membership.py)."""
    from engine.host.membership import HostConflict, join_state, limits_mode

    try:
        join_state(store, host_id, address=address, limits=limits_mode(limits))
    except HostConflict as exc:
        fail(exc.message)


class RunnerBackend(StrEnum):
    LOCAL = "local"
    RAY = "ray"


RunnersOpt = Annotated[
    RunnerBackend,
    typer.Option(
        "--runners",
        envvar="ENGINE_RUNNERS",
        show_envvar=True,
        help="Where self-hosted entities run: vLLM processes on this machine (local), or Ray "
        "actors placed on a Ray cluster (ray; needs the `ray` extra).",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        envvar="RAY_ADDRESS",
        show_envvar=True,
        help="The Ray cluster of --runners ray: HOST:PORT of its head, or `auto` (a cluster "
        "already running on this machine; the default).",
    ),
]


def ray_settings(
    runners: RunnerBackend,
    address: str | None,
    cpus: float,
    memory_gib: float,
    resources: str | None,
) -> Any:
    """The Ray backend's settings (None for local runners); bad values exit 2 naming the flag.
    Also exported as $ENGINE_RUNNERS / $RAY_ADDRESS: plans made in this process (the REST API)
    then read the cluster's capacity."""
    if runners is RunnerBackend.LOCAL:
        if resources:
            fail("--ray-resources: only with --runners ray", EXIT_USAGE)
        return None
    try:
        import ray  # noqa: F401
    except ImportError:
        fail("--runners ray needs Ray: pip install 'serving-engine[ray]'", EXIT_USAGE)
    from engine.host.capacity import RAY_SETTINGS_ENV
    from providers.runner.ray_executor import SPEC_RESOURCES_ENV, RaySettings, spec_resources

    custom: dict[str, float] = {}
    if resources:
        try:
            custom = spec_resources({"environment_vars": {SPEC_RESOURCES_ENV: resources}})
        except ValueError as exc:
            fail(f"--ray-resources: {str(exc).split(': ', 1)[1]}", EXIT_USAGE)
    settings = RaySettings(
        address=address or "auto",
        cpus=cpus,
        memory_bytes=int(memory_gib * 2**30),
        resources=custom,
    )
    os.environ["ENGINE_RUNNERS"] = "ray"
    os.environ["RAY_ADDRESS"] = settings.address
    os.environ[RAY_SETTINGS_ENV] = json.dumps(
        {"cpus": cpus, "memory_bytes": settings.memory_bytes, "resources": custom}
    )
    return settings


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
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Worker processes on this port, each a replica of the state (needs --limits "
            "when more than 1).",
        ),
    ] = 1,
    replica: Annotated[
        str | None,
        typer.Option(
            "--replica",
            help="This replica's name in /metrics (default HOST:PORT when --limits is given; "
            "workers add /PID).",
        ),
    ] = None,
    safety_endpoint: Annotated[
        str | None,
        typer.Option(
            "--safety-endpoint",
            help="The endpoint (a guard model such as Llama Guard, answering `safe` or "
            "`unsafe`) that `ai_gateway.guardrails` `safety: true` asks "
            "(default $ENGINE_SAFETY_ENDPOINT). Without one, such endpoints answer 503.",
        ),
    ] = None,
    tables_root: TablesRootOpt = None,
    runners: RunnersOpt = RunnerBackend.LOCAL,
    ray_address: RayAddressOpt = None,
    ray_cpus: Annotated[
        float,
        typer.Option("--ray-cpus", min=0, help="CPUs each Ray runner replica asks for."),
    ] = 1.0,
    ray_memory: Annotated[
        float,
        typer.Option("--ray-memory", min=0, help="GiB of memory each Ray runner replica asks for."),
    ] = 2.0,
    ray_resources: Annotated[
        str | None,
        typer.Option(
            "--ray-resources",
            help="Custom Ray resources every runner replica asks for, as JSON "
            "('{\"gpu_node\": 1}'); an entity adds its own with environment_vars."
            "ENGINE_RAY_RESOURCES.",
        ),
    ] = None,
) -> None:
    """Serve every applied endpoint: queries, metrics and the control-plane API."""
    import uvicorn

    from engine.host.app import ServingApp

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    timeout = header_timeout_seconds(header_timeout)
    settings = uvicorn_settings(timeout)
    state_path = resolve_state(state)
    limits = checked_limits(limits)
    ray = ray_settings(runners, ray_address, ray_cpus, ray_memory, ray_resources)
    if workers > 1:
        if ray is not None:
            fail("--runners ray: serve with one worker (--workers 1)", EXIT_USAGE)
        if not limits:
            fail(
                f"--workers {workers}: each worker is a replica that would count rate limits "
                "alone (admitting up to the limit x workers): pass --limits redis://HOST:PORT/DB "
                "(exact across them) or --limits per-replica",
                EXIT_USAGE,
            )
        _serve_workers(
            workers,
            settings,
            host=host,
            port=port,
            state=str(state_path),
            log_level=log_level,
            header_timeout=timeout,
            scale_to_zero_after=scale_to_zero_after,
            cold_start_wait=cold_start_wait,
            metrics_public=metrics_public,
            limits=limits,
            limits_fallback=limits_fallback.value,
            replica=replica or f"{host}:{port}",
            safety_endpoint=safety_endpoint,
            tables_root=tables_root,
        )
        return
    app = ServingApp(
        state_path,
        address=f"http://{host}:{port}",
        scale_to_zero_after=scale_to_zero_after,
        cold_start_wait=cold_start_wait,
        metrics_public=metrics_public,
        limits=limits,
        limits_fallback=limits_fallback,
        replica=replica or "",
        safety_endpoint=safety_endpoint,
        tables_root=tables_root,
        ray=ray,
    )
    try:
        store = open_state(state_path)
    except StateError as exc:
        fail(str(exc))
    try:
        # Before uvicorn starts: a second host is refused with one line, not a failed startup.
        claim_or_fail(store, app.host_id, address=app.address, limits=limits)
        typer.echo(f"serving on {app.address} (state {state_path})", err=True)
        try:
            uvicorn.run(app, host=host, port=port, **settings)
        finally:
            store.remove_host(app.host_id)  # also when it never started (port in use)
    finally:
        store.close()


def _serve_workers(workers: int, settings: dict[str, Any], **config: Any) -> None:
    """uvicorn's worker processes, each building its own replica (engine/host/worker.py)."""
    import uvicorn

    from engine.host.membership import new_host_id
    from engine.host.worker import CONFIG_ENV

    # One line, before any worker starts, when the state's other hosts count limits otherwise
    # (a worker refused at startup would be restarted by uvicorn again and again).
    try:
        store = open_state(resolve_state(config["state"]))
    except StateError as exc:
        fail(str(exc))
    probe = new_host_id()
    try:
        claim_or_fail(store, probe, address="", limits=config["limits"])
        store.remove_host(probe)
    finally:
        store.close()
    os.environ[CONFIG_ENV] = json.dumps(config)
    url = f"http://{config['host']}:{config['port']}"
    typer.echo(f"serving on {url} with {workers} workers (state {config['state']})", err=True)
    uvicorn.run(
        "engine.host.worker:make_app",
        factory=True,
        host=config["host"],
        port=config["port"],
        workers=workers,
        **{**settings, "http": "engine.host.worker:Protocol"},
    )
