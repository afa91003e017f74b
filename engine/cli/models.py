"""`engine models register|list|calibrate`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from engine.catalog.models import CatalogError, ModelCatalog
from engine.cli.output import fail
from engine.state import StateError, open_state, resolve_state

__all__ = ["models_app"]

models_app = typer.Typer(name="models", help="The local model catalog.", no_args_is_help=True)
StateOpt = Annotated[str | None, typer.Option("--state", help="State file or postgresql:// URL.")]


def _catalog(state: str | None) -> ModelCatalog:
    try:
        return ModelCatalog(open_state(state))
    except StateError as exc:
        fail(str(exc))


@models_app.command("register")
def register(
    name: Annotated[str, typer.Argument(help="catalog.schema.model")],
    version: Annotated[str, typer.Option("--version", help="The model version.")],
    path: Annotated[Path, typer.Option("--path", help="The model folder (config.json...).")],
    task: Annotated[str, typer.Option("--task", help="llm/v1/chat|completions|embeddings")],
    context_length: Annotated[
        int | None, typer.Option("--context-length", help="The runner's maximum model length.")
    ] = None,
    system_prompt: Annotated[
        str | None, typer.Option("--system-prompt", help="Added to chat requests without one.")
    ] = None,
    state: StateOpt = None,
) -> None:
    """Register a model folder as NAME version N."""
    try:
        entry = _catalog(state).register(
            name,
            version,
            path,
            task,
            context_length=context_length,
            default_system_prompt=system_prompt,
        )
    except CatalogError as exc:
        fail(str(exc))
    typer.echo(f"registered {entry.name} version {entry.version} ({entry.task}) at {entry.path}")


@models_app.command("list")
def list_models(
    state: StateOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """List the registered models."""
    entries = _catalog(state).entries()
    if as_json:
        typer.echo(json.dumps([e.to_json() for e in entries], indent=2))
        return
    for e in entries:
        typer.echo(f"{e.name}\tversion {e.version}\t{e.task}\t{e.model_type or '-'}\t{e.path}")


@models_app.command("calibrate")
def calibrate_model(
    name: Annotated[str, typer.Argument(help="catalog.schema.model")],
    version: Annotated[str, typer.Option("--version", help="The model version.")],
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Requests in flight at once.")
    ] = 16,
    seconds: Annotated[
        float, typer.Option("--seconds", min=0.1, help="How long to measure (after warm-up).")
    ] = 20.0,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, help="Output tokens per request (ignore_eos).")
    ] = 64,
    chunk_size: Annotated[
        int | None,
        typer.Option("--chunk-size", min=1, help="Store this tokens/s value; measure nothing."),
    ] = None,
    ready_timeout: Annotated[
        float, typer.Option("--ready-timeout", help="Seconds to wait for vLLM to start.")
    ] = 600.0,
    state: StateOpt = None,
) -> None:
    """Measure the output tokens/s one replica of NAME serves on this host, and store it as the
    model's throughput_chunk_size (provisioned throughput is set in multiples of it).

    Starts one vLLM server for the model (stopped afterwards, also on Ctrl-C): run it when
    the host is otherwise idle, or the number will be low.
    """
    from engine.host.inventory import gpu_count
    from providers.runner import calibrate as cal

    catalog = _catalog(state)
    entry = catalog.get(name, version)
    if entry is None:
        fail(
            f"model {name} version {version} is not in the model catalog; register it with "
            f"`engine models register {name} --version {version} --path DIR --task TASK`"
        )
    if chunk_size is None:
        root = resolve_state(state).local_dir.resolve() / "calibrate"
        root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{name}-{version}-", dir=root))
        try:
            result = cal.calibrate(
                entry,
                workdir,
                concurrency=concurrency,
                seconds=seconds,
                max_tokens=max_tokens,
                cpu=gpu_count() == 0,
                ready_timeout=ready_timeout,
                progress=lambda line: typer.echo(line, err=True),
            )
        except cal.CalibrationError as exc:
            fail(str(exc))
        except (KeyboardInterrupt, cal.Terminated) as exc:
            why = f" ({exc})" if str(exc) else ""
            fail(f"calibration interrupted{why}; the vLLM server was stopped, nothing stored", 130)
        typer.echo(
            f"measured {result.tokens_per_second:.1f} output tokens/s ({result.requests} "
            f"requests, {result.concurrency} concurrent x {result.max_tokens} tokens, "
            f"{result.seconds:.1f} s)",
            err=True,
        )
        chunk_size = result.chunk_size
    try:
        entry = catalog.set_throughput_chunk_size(name, version, chunk_size)
    except CatalogError as exc:
        fail(str(exc))
    typer.echo(
        f"{entry.name} version {entry.version}: throughput_chunk_size "
        f"{entry.throughput_chunk_size} tokens/s"
    )
