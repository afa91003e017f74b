"""`engine models register|list`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .catalog import CatalogError, ModelCatalog
from .cli_output import fail
from .state import StateError
from .workspace import open_store

__all__ = ["models_app"]

models_app = typer.Typer(name="models", help="The local model catalog.", no_args_is_help=True)
StateOpt = Annotated[Path | None, typer.Option("--state", help="State file.")]


def _catalog(state: Path | None) -> ModelCatalog:
    try:
        return ModelCatalog(open_store(state))
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
