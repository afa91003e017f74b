"""`engine state list|show`, `engine refresh`, `engine force-unlock`, `engine import`."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from engine.cli import remote as cli_remote
from engine.cli.output import fail
from engine.cli.remote import TargetOpt
from engine.control.views import endpoint_detail
from engine.executors import cli_executors
from engine.state import EndpointRow, StateError, StateStore, open_state, resolve_state
from engine.workflow import actor_name
from providers import Deployment, ExecutorError
from schemas import EntityRole

__all__ = ["register", "print_state_list", "endpoint_view"]

StateOpt = Annotated[str | None, typer.Option("--state", help="State file or postgresql:// URL.")]
state_app = typer.Typer(name="state", help="Read the state.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(state_app)
    app.command("refresh")(refresh_command)
    app.command("force-unlock")(force_unlock_command)
    app.command("import")(import_command)
    state_app.command("migrate")(migrate_command)


def _open(state: str | None) -> StateStore:
    try:
        return open_state(state)
    except StateError as exc:
        fail(str(exc))


def endpoint_view(store: StateStore, row: EndpointRow) -> dict[str, Any]:
    """The platform's detailed shape, plus the stack that manages the endpoint."""
    return {**endpoint_detail(store, row), "stack": row.stack}


def print_state_list(store: StateStore, as_json: bool) -> None:
    rows = store.list_endpoints()
    if as_json:
        typer.echo(json.dumps([endpoint_view(store, r) for r in rows], indent=2))
        return
    if not rows:
        typer.echo("The state has no endpoints.")
        return
    for row in rows:
        view = endpoint_view(store, row)
        version = row.config_version if row.config_version is not None else "-"
        typer.echo(
            f"{row.name}\tversion {version}\t{view['state']['ready']}\t"
            f"{row.config_update}\tstack {row.stack or '-'}"
        )


@state_app.command("list")
def state_list(
    state: StateOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """List the endpoints in the state."""
    store = _open(state)
    print_state_list(store, as_json)


@state_app.command("show")
def state_show(name: str, state: StateOpt = None) -> None:
    """Show one endpoint as applied, its entities and its config history."""
    store = _open(state)
    row = store.get_endpoint(name)
    if row is None:
        fail(f"endpoint {name!r} is not in the state")
    view = endpoint_view(store, row)
    view["entities"] = [
        {
            "name": e.name,
            "role": e.role,
            "deployment": e.deployment,
            "message": e.message,
            "config_version": e.config_version,
            "instance_id": e.id,
        }
        for e in store.entities(name)
    ]
    view["history"] = [
        {
            "config_version": h.config_version,
            "at": h.at_ms,
            "actor": h.actor,
            "action": h.action,
            **({"summary": _summary(h.summary)} if _summary(h.summary) else {}),
        }
        for h in store.history(name)
    ]
    typer.echo(json.dumps(view, indent=2))


def refresh_command(state: StateOpt = None, target: TargetOpt = None) -> None:
    """Ask the executors for each entity's live status and record drift (with --target: read
    the target's endpoints and record what changed there outside the engine)."""
    if target is not None:
        cli_remote.remote_refresh(target, state=state)
        return
    store = _open(state)
    # Runners are asked too (by their pid files), so a dead one shows as FAILED until the
    # host's reconciler restarts it (RECOVERING, then READY).
    executors = cli_executors(resolve_state(state))
    drift = 0
    for entity in store.entities(role=EntityRole.ACTIVE):
        if (entity.handle or {}).get("scaled_to_zero"):
            continue  # no process by design: the next request starts it
        deployment = Deployment(entity.endpoint, entity.name, entity.id, entity.config)
        try:
            status = executors.for_entity(entity.config).status(deployment, entity.handle)
        except ExecutorError as exc:
            typer.echo(f"{deployment.label}: cannot read status: {exc.message}", err=True)
            continue
        if (status.deployment, status.message) != (entity.deployment, entity.message):
            drift += 1
            store.update_entity(entity.id, deployment=status.deployment, message=status.message)
            typer.echo(
                f"{entity.endpoint}/{entity.name}: {entity.deployment} -> {status.deployment}"
                f"{': ' + status.message if status.message else ''}"
            )
    typer.echo(f"Refresh complete: {drift} entit{'y' if drift == 1 else 'ies'} changed.")


def force_unlock_command(lock_id: str, state: StateOpt = None) -> None:
    """Remove a lock left by a process that is gone. Only when you are sure."""
    store = _open(state)
    try:
        info = store.force_unlock(lock_id)
    except StateError as exc:
        fail(str(exc))
    typer.echo(f"Lock {lock_id} removed (was {info.describe()}).")


def import_command(
    name: str,
    stack: Annotated[str, typer.Option("--stack", help="The stack that will manage it.")],
    state: StateOpt = None,
    target: TargetOpt = None,
) -> None:
    """Adopt an existing endpoint into a stack, so plans for that stack manage it."""
    if target is not None:
        cli_remote.remote_import(target, name, stack, state=state)
        return
    store = _open(state)
    row = store.get_endpoint(name)
    if row is None:
        fail(f"endpoint {name!r} is not in the state")
    store.set_stack(name, stack)
    typer.echo(f"{name} is now managed by stack {stack!r} (by {actor_name()}).")


def migrate_command(
    to: Annotated[
        str, typer.Option("--to", help="The empty PostgreSQL database: postgresql://...")
    ],
    state: Annotated[
        str | None, typer.Option("--state", help="The SQLite state file to copy.")
    ] = None,
) -> None:
    """Copy a SQLite state (and its secrets, still encrypted) into an empty PostgreSQL database."""
    from engine.state.copy import copy_to_postgres

    source, target = resolve_state(state), resolve_state(to)
    if source.is_postgres:
        fail(f"--state must be a SQLite state file to copy from; got {source}")
    if not target.is_postgres:
        fail(f"--to must be a postgresql:// URL; got {to!r}")
    try:
        report = copy_to_postgres(source.path, target)
    except StateError as exc:
        fail(str(exc))
    counts = ", ".join(f"{n} {table}" for table, n in report.rows.items())
    typer.echo(f"copied {source} to {target}: serial {report.serial}, lineage {report.lineage}")
    typer.echo(f"rows: {counts}; row counts and the snapshot match")
    if report.key_file is not None:
        typer.echo(
            f"copied the secrets key file to {report.key_file}; hosts on other machines need "
            "the same key: set ENGINE_SECRETS_KEY to its content there"
        )
    typer.echo(f"use it with --state {target} (or ENGINE_STATE)")


def _summary(summary: dict[str, Any]) -> dict[str, Any]:
    # The config a version began with is kept for the UI's version diff; `state show`
    # already shows the active spec.
    return {k: v for k, v in (summary or {}).items() if k != "config"}
