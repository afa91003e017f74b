"""`engine up PATH...`: start a serving host and apply the specs through it, in the foreground.

The embedded default a new user runs first: one command that does `engine serve` and
`engine apply`, with the runners started by (and belonging to) the host.

1. The specs are loaded, validated and planned as `engine apply` does (same lines, same exit
   codes: 2 for a usage error, 1 for invalid specs or plan errors); nothing starts and nothing
   changes when they are bad. A second live serving host on the same state is refused too.
2. The host starts (gateway, REST API, heartbeat, reconciler; the runners of endpoints applied
   before restart with it), exactly as `engine serve` starts it.
3. Once it listens and its startup restart pass is done, a thread takes the state lock, plans
   again (the same stack semantics as `engine apply`: `--stack`, else the spec directory's name;
   endpoints of that stack that left the specs are deleted; another stack's endpoint is an `O1`
   error), prints the plan and applies it with the host's executors and drain hook: runners are
   the host's, and an update switches traffic only when the new version is ready (zero downtime).
4. Then it prints the URL and how to create a token and query, and serves until Ctrl-C or
   SIGTERM, which stop the host and its runners (runners never outlive the host); exit 0.

When the apply fails: if anything is serving (an active entity READY anywhere in the state: the
old config of a failed update, the endpoints that did apply, another stack's), the host keeps
serving it and says so, and exits 1 when stopped; if nothing is serving it stops at once and
exits 1. A stop during the apply cuts it short: the runners it started are stopped, and the
endpoint being updated records UPDATE_FAILED (the old config stays active); exit 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from engine.asgi import serve_lifespan
from engine.catalog.models import ModelCatalog
from engine.cli.output import EXIT_ERROR, EXIT_OK, fail, reported
from engine.cli.plan import load_specs_reporting, print_plan, run_apply
from engine.cli.serve import (
    ColdStartWaitOpt,
    HeaderTimeoutOpt,
    LimitsFallbackOpt,
    LimitsOpt,
    MetricsPublicOpt,
    ScaleToZeroAfterOpt,
    TablesRootOpt,
    checked_limits,
    claim_or_fail,
    header_timeout_seconds,
    uvicorn_settings,
)
from engine.gateway._limiter import LimitsFallback
from engine.host.membership import new_host_id
from engine.specs.loader import LoadResult
from engine.state import LockInfo, StateLocation, open_state, resolve_state
from engine.workflow import (
    DesiredSpecs,
    Session,
    actor_name,
    default_stack,
    plan_stack,
    planned_and_locked,
)
from plans import Plan
from providers import (
    Deployment,
    EntityStatus,
    Executor,
    ExecutorError,
    ExecutorRegistry,
    SecretResolver,
)
from providers.runner import RunnerExecutor
from schemas import DeploymentState, EntityRole

if TYPE_CHECKING:
    from engine.host.app import ServingApp

__all__ = ["register"]

# How long a stop waits for an apply in progress to record its outcome.
ABORT_WAIT = 30.0


def register(app: typer.Typer) -> None:
    app.command("up")(up_command)


def up_command(
    paths: Annotated[list[Path], typer.Argument(help="Spec files or directories.")],
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8080,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            help="State file or postgresql:// URL (default: $ENGINE_STATE or .engine/state.db).",
        ),
    ] = None,
    stack: Annotated[
        str | None,
        typer.Option("--stack", help="Stack that owns these endpoints (default: spec dir)."),
    ] = None,
    allow_replace: Annotated[
        bool,
        typer.Option("--allow-replace", help="Replace endpoints whose create-only fields changed."),
    ] = False,
    lock_timeout: Annotated[
        float, typer.Option("--lock-timeout", help="Seconds to wait for the state lock.")
    ] = 600.0,
    log_level: Annotated[str, typer.Option("--log-level")] = "info",
    scale_to_zero_after: ScaleToZeroAfterOpt = None,
    cold_start_wait: ColdStartWaitOpt = None,
    metrics_public: MetricsPublicOpt = False,
    header_timeout: HeaderTimeoutOpt = None,
    limits: LimitsOpt = None,
    limits_fallback: LimitsFallbackOpt = LimitsFallback.REFUSE,
    tables_root: TablesRootOpt = None,
) -> None:
    """Start a serving host and apply the specs through it; serve until Ctrl-C."""
    # A bad value is a usage error before anything is loaded or claimed.
    settings = uvicorn_settings(header_timeout_seconds(header_timeout))
    state_path = resolve_state(state).absolute()
    url = f"http://{host}:{port}"
    limits = checked_limits(limits)
    host_id = new_host_id()
    with reported():
        loaded = load_specs_reporting(paths)
        with Session(state_path) as session:
            assert session.store is not None
            # The claim is this host's until it stops (a second `serve` or `up` is refused).
            claim_or_fail(session.store, host_id, address=url, limits=limits)
            planned = False
            try:
                plan, _ = plan_stack(
                    session,
                    loaded,
                    stack=stack or default_stack(paths),
                    allow_replace=allow_replace,
                )
                planned = not plan.errored
            finally:
                if not planned:  # nothing will serve: the state is free for another host
                    session.store.remove_host(host_id)
    if plan.errored:
        print_plan(plan)
        raise typer.Exit(EXIT_ERROR)

    import uvicorn

    from engine.host.app import ServingApp

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = UpHost(
        ServingApp(
            state_path,
            address=url,
            scale_to_zero_after=scale_to_zero_after,
            cold_start_wait=cold_start_wait,
            metrics_public=metrics_public,
            host_id=host_id,
            limits=limits,
            limits_fallback=limits_fallback,
            tables_root=tables_root,
        ),
        paths=paths,
        loaded=loaded,
        stack=stack,
        allow_replace=allow_replace,
        lock_timeout=lock_timeout,
        state_option=state,
    )
    server = _Server(uvicorn.Config(app, host=host, port=port, **settings))
    app.server = server
    typer.echo(f"starting the serving host on {url} (state {state_path})", err=True)
    try:
        server.run()
    finally:
        _release(state_path, host_id)  # also when it never started (port in use)
    if app.exit_code is None:
        fail("the serving host did not start (see the lines above)")
    typer.echo("stopped the serving host and its runners", err=True)
    raise typer.Exit(app.exit_code)


def _Server(config: Any) -> Any:  # noqa: N802 - a class, built when uvicorn is imported
    """uvicorn's Server, but a signal ends the command with its own exit code.

    uvicorn re-raises SIGINT/SIGTERM after a graceful shutdown (so the process dies of it), and a
    second Ctrl-C skips the application's shutdown: here a stop request is the normal end of
    `engine up` (exit 0), and the host's shutdown, which stops its runners, always runs.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit:
                typer.echo("already stopping: the host stops its runners first", err=True)
                return
            typer.echo(f"{signal.Signals(sig).name}: stopping the serving host", err=True)
            self.should_exit = True

    return Server(config)


# -- the host -----------------------------------------------------------------------------------


class UpHost:
    """The serving host of `engine up`: the ServingApp of `engine serve`, which applies the
    specs once it serves (its ASGI lifespan wraps the app's startup and shutdown)."""

    def __init__(
        self,
        app: ServingApp,
        *,
        paths: list[Path],
        loaded: LoadResult,
        stack: str | None,
        allow_replace: bool,
        lock_timeout: float,
        state_option: str | None,
    ) -> None:
        self.app = app
        self.state_path = app.state_path
        self.address = app.address
        self.paths = paths
        self.loaded = loaded
        self.stack = stack
        self.allow_replace = allow_replace
        self.lock_timeout = lock_timeout
        self.state_option = state_option
        self.server: Any = None  # the uvicorn server: started, should_exit
        # None until the host has started; then the command's exit code.
        self.exit_code: int | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._guard: _HostRunners | None = None
        self._stopping = threading.Event()
        self._applied = threading.Event()
        self._documents: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        await serve_lifespan(receive, send, self.startup, self.shutdown)

    async def startup(self) -> None:
        await self.app.startup()
        self.exit_code = EXIT_OK
        assert self.app.runners is not None
        self._guard = _HostRunners(self.app.runners)
        self._waiter = asyncio.create_task(self._apply_when_serving(), name="engine-up")

    async def _apply_when_serving(self) -> None:
        while self.server is None or not self.server.started:
            await asyncio.sleep(0.05)
        restart = self.app._restart
        if restart is not None:
            # The runners of endpoints applied before start first (the apply may reuse them).
            await asyncio.wait({restart})
        self._thread = threading.Thread(target=self._apply, name="engine-up-apply", daemon=True)
        self._thread.start()

    async def shutdown(self) -> None:
        self._stopping.set()
        if self._waiter is not None:
            self._waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._waiter
        thread = self._thread
        if thread is not None and thread.is_alive():
            typer.echo("stopping the apply in progress", err=True)
            assert self._guard is not None
            await asyncio.to_thread(self._guard.close)
            await asyncio.to_thread(thread.join, ABORT_WAIT)
        if not self._applied.is_set():
            typer.echo("error: stopped before the apply finished", err=True)
            self.exit_code = EXIT_ERROR
        await self.app.shutdown()

    # -- the apply (in its own thread) ----------------------------------------------------------

    def _apply(self) -> None:
        try:
            code = self._plan_and_apply()
        except typer.Exit as exc:  # `fail` printed the reason
            code = exc.exit_code
        except Exception as exc:  # noqa: BLE001 - one clear line; the host decides below
            if os.environ.get("ENGINE_DEBUG"):
                logging.getLogger("engine.up").exception("apply failed")
            typer.echo(f"error: internal error: {type(exc).__name__}: {exc}", err=True)
            code = EXIT_ERROR
        self.exit_code = code
        self._applied.set()
        if self._stopping.is_set():
            return
        if code == EXIT_OK:
            self._wait_for_routes()
            self._print_ready()
        elif self._serving_something():
            typer.echo(
                "error: the apply failed; the host keeps serving what is ready (the old config "
                "of a failed update, and what did apply). Fix the specs and run `engine up` "
                "again, or stop with Ctrl-C.",
                err=True,
            )
        else:
            typer.echo("error: the apply failed and nothing is serving; stopping", err=True)
            self.server.should_exit = True

    def _plan_and_apply(self) -> int:
        def waiting(info: LockInfo) -> None:
            typer.echo(f"waiting for {info.describe()}", err=True)

        with reported(), Session(self.state_path) as session:
            assert session.store is not None

            def make(lock_id: str | None) -> tuple[Plan, DesiredSpecs]:
                return plan_stack(
                    session,
                    self.loaded,
                    stack=self.stack or default_stack(self.paths),
                    allow_replace=self.allow_replace,
                    lock_id=lock_id,
                )

            with planned_and_locked(
                session,
                make,
                "up",
                holder=actor_name(),
                timeout=self.lock_timeout,
                on_wait=waiting,
            ) as (plan, desired, lock_id):
                print_plan(plan)
                self._documents = list(desired.documents)
                if plan.errored:
                    return EXIT_ERROR
                if lock_id is not None:
                    run_apply(
                        session,
                        plan,
                        lock_id,
                        desired.plaintexts,
                        executors=self._executors_for_up(),
                        drain=self.app.drain,
                    )
        return EXIT_OK

    def _executors_for_up(self) -> ExecutorRegistry:
        registry = self.app.executors()
        assert self._guard is not None
        registry.register("self_hosted", self._guard, replace=True)
        return registry

    def _serving_something(self) -> bool:
        store = open_state(self.state_path)
        try:
            return any(
                e.deployment == DeploymentState.READY
                for e in store.entities(role=EntityRole.ACTIVE)
            )
        finally:
            store.close()

    def _wait_for_routes(self, timeout: float = 5.0) -> None:
        """Until the gateway's routing table shows what was applied (it polls the state)."""
        store = open_state(self.state_path)
        try:
            serial = store.serial
        finally:
            store.close()
        deadline = time.monotonic() + timeout
        while self.app.table.serial < serial and time.monotonic() < deadline:
            time.sleep(0.05)

    def _print_ready(self) -> None:
        # str(location): a PostgreSQL URL's password is shown as *** (never printed).
        shown = str(resolve_state(self.state_option)) if self.state_option else ""
        state = f" --state {shlex.quote(shown)}" if shown else ""
        lines = [
            f"Serving on {self.address}. Ctrl-C stops the host and its runners.",
            f"  create a token:  export TOKEN=$(engine tokens create --admin{state})",
        ]
        example = self._example()
        if example is not None:
            name, body = example
            lines.append(
                f"  query:           curl {self.address}/serving-endpoints/{name}/invocations "
                '-H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json" '
                f"-d {shlex.quote(json.dumps(body))}"
            )
        lines.append(
            f"  REST API:        DATABRICKS_HOST={self.address} DATABRICKS_TOKEN=$TOKEN "
            "(MLflow deployments client, Databricks SDK; OpenAI SDK base_url "
            f"{self.address}/serving-endpoints)"
        )
        typer.echo("\n".join(lines))

    def _example(self) -> tuple[str, dict[str, Any]] | None:
        """A query for the first endpoint of the specs, in its task's shape."""
        if not self._documents:
            return None
        body = self._documents[0]
        entities = body.get("config", {}).get("served_entities") or [{}]
        task = (entities[0].get("external_model") or {}).get("task")
        if task is None and entities[0].get("entity_name"):
            store = open_state(self.state_path)
            try:
                entry = ModelCatalog(store).get(
                    entities[0]["entity_name"], str(entities[0].get("entity_version", ""))
                )
            finally:
                store.close()
            task = entry.task if entry else None
        if task == "llm/v1/embeddings":
            query: dict[str, Any] = {"input": ["hello"]}
        elif task == "llm/v1/completions":
            query = {"prompt": "Hello", "max_tokens": 16}
        else:
            query = {"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16}
        return body["name"], query


class _HostRunners(Executor):
    """The host's runner executor as `engine up`'s apply uses it: once the host stops, nothing
    more starts, and what this apply started is stopped (so nothing outlives the host, even a
    runner of an update that was not active yet)."""

    kind = "self_hosted"

    def __init__(self, runners: RunnerExecutor) -> None:
        self.runners = runners
        self._lock = threading.Lock()
        self._closed = False
        self._started: dict[int, Deployment] = {}

    def _refuse_if_closed(self, deployment: Deployment) -> None:
        if self._closed:
            raise ExecutorError(f"{deployment.label}: the serving host is stopping")

    def prepare(self, deployment: Deployment, resolve: SecretResolver) -> None:
        self._refuse_if_closed(deployment)
        self.runners.prepare(deployment, resolve)

    def start(self, deployment: Deployment) -> dict[str, Any]:
        with self._lock:
            self._refuse_if_closed(deployment)
            handle = self.runners.start(deployment)
            self._started[deployment.instance_id] = deployment
            return handle

    def wait_ready(self, deployment: Deployment, handle: dict[str, Any], timeout: float) -> None:
        try:
            self.runners.wait_ready(deployment, handle, timeout)
        except ExecutorError:
            if self._closed:
                raise ExecutorError(
                    f"{deployment.label}: the serving host stopped before it was ready"
                ) from None
            raise

    def stop(self, deployment: Deployment, handle: dict[str, Any] | None) -> None:
        self.runners.stop(deployment, handle)
        with self._lock:
            self._started.pop(deployment.instance_id, None)

    def status(self, deployment: Deployment, handle: dict[str, Any] | None) -> EntityStatus:
        return self.runners.status(deployment, handle)

    def __getattr__(self, name: str) -> Any:
        # Anything else the runner executor offers (the apply may ask for more than the
        # Executor interface) is the host's executor's.
        if name == "runners":
            raise AttributeError(name)
        return getattr(self.runners, name)

    def close(self) -> None:
        """No more starts; stop every runner this apply started and has not stopped."""
        with self._lock:
            self._closed = True
            started = list(self._started.values())
            self._started.clear()
        for deployment in started:
            try:
                self.runners.stop(deployment, None)
            except ExecutorError as exc:
                typer.echo(f"error: {exc.message}", err=True)


# -- helpers ------------------------------------------------------------------------------------


def _release(state_path: StateLocation, host_id: str) -> None:
    store = open_state(state_path)
    try:
        store.remove_host(host_id)
    finally:
        store.close()
