"""`engine tokens create|list|revoke`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from engine.access.tokens import create_token
from engine.cli.output import fail
from engine.state import StateError, open_state
from engine.workflow import TOKEN_ENV_VAR, WorkflowError, cli_principal

__all__ = ["tokens_app"]

tokens_app = typer.Typer(name="tokens", help="Bearer tokens for callers.", no_args_is_help=True)
StateOpt = Annotated[str | None, typer.Option("--state", help="State file or postgresql:// URL.")]


def _store(state: str | None):  # noqa: ANN202
    """The state, for the operator or an admin's $ENGINE_TOKEN: a user's token acting through
    the CLI may not mint or revoke tokens (it could make itself an admin)."""
    try:
        store = open_state(state)
    except StateError as exc:
        fail(str(exc))
    try:
        principal = cli_principal(store)
    except WorkflowError as exc:
        store.close()
        fail(exc.message, exc.exit_code)
    if not principal.admin:
        store.close()
        fail(
            f"only an admin or the operator may manage tokens; ${TOKEN_ENV_VAR} is "
            f"{principal.name}'s"
        )
    return store


@tokens_app.command("create")
def create(
    user: Annotated[str | None, typer.Option("--user", help="User name or email.")] = None,
    service_principal: Annotated[
        str | None, typer.Option("--service-principal", help="Service principal application id.")
    ] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", help="A group (repeatable).")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="May do everything.")] = False,
    comment: Annotated[str, typer.Option("--comment")] = "",
    state: StateOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Create a token and print it (once: only its hash is stored)."""
    if bool(user) == bool(service_principal):
        if not admin or user or service_principal:
            fail("give exactly one of --user or --service-principal", 2)
        user = "admin"
    principal = user or service_principal
    assert principal is not None
    kind = "service_principal" if service_principal else "user"
    token_id, token = create_token(
        _store(state), principal, groups=group or [], kind=kind, admin=admin, comment=comment
    )
    if as_json:
        typer.echo(json.dumps({"id": token_id, "token": token, "principal": principal}))
    else:
        typer.echo(token)
        typer.echo(f"(token {token_id} for {principal}; it is not shown again)", err=True)


@tokens_app.command("list")
def list_tokens(state: StateOpt = None) -> None:
    """List tokens (ids and principals, never the tokens)."""
    for row in _store(state).list_tokens():
        groups = ",".join(row["groups"]) or "-"
        flags = " admin" if row["admin"] else ""
        typer.echo(f"{row['id']}\t{row['kind']} {row['principal']}\tgroups {groups}{flags}")


@tokens_app.command("revoke")
def revoke(token_id: str, state: StateOpt = None) -> None:
    """Delete a token by id."""
    if not _store(state).delete_token(token_id):
        fail(f"no token with id {token_id}")
    typer.echo(f"revoked {token_id}")
