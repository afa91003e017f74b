"""``engine secrets ...``: manage the secret scopes and secrets that specs reference.

Secret values are read from stdin or a hidden prompt only, never from argv, so they
cannot end up in shell history or ``ps`` output.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from engine.secrets.store import SecretStore, SecretStoreError, secret_store_for_state
from engine.state._sqlite import STATE_ENV_VAR, resolve_state_path

__all__ = ["STATE_ENV_VAR", "resolve_state_path", "secrets_app"]

secrets_app = typer.Typer(
    name="secrets",
    no_args_is_help=True,
    add_completion=False,
    help="Manage secret scopes and the secrets that specs reference as {{secrets/SCOPE/KEY}}.",
)

StateOption = Annotated[
    Path | None,
    typer.Option(
        "--state",
        help=(
            "State database path; secrets live in secrets.db beside it. "
            f"Default: ${STATE_ENV_VAR}, else .engine/state.db in the current directory."
        ),
        dir_okay=False,
    ),
]
ScopeArg = Annotated[str, typer.Argument(help="Secret scope name.", show_default=False)]
KeyArg = Annotated[str, typer.Argument(help="Secret key within the scope.", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the REST API JSON shape.")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


@contextmanager
def _open_store(state: Path | None) -> Iterator[SecretStore]:
    # Expected failures become one `error:` line and exit 1 instead of a traceback.
    try:
        store = secret_store_for_state(resolve_state_path(state))
        try:
            yield store
        finally:
            store.close()
    except SecretStoreError as exc:
        _fail(exc.message)


def _stdin_is_tty() -> bool:
    # Separate function so tests can exercise the interactive path.
    return sys.stdin is not None and sys.stdin.isatty()


def _read_secret_value() -> str:
    if _stdin_is_tty():
        return typer.prompt("Secret value", hide_input=True, confirmation_prompt=True)
    if sys.stdin is None:
        _fail("no secret value: stdin is closed")
    try:
        value = sys.stdin.read()
    except UnicodeDecodeError:
        _fail("secret value on stdin is not valid text in the locale's encoding")
    # `echo VALUE | ...` adds one newline that is never part of the secret.
    if value.endswith("\r\n"):
        value = value[:-2]
    elif value.endswith("\n"):
        value = value[:-1]
    if not value:
        _fail("no secret value on stdin")
    return value


def _iso_utc(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


@secrets_app.command("create-scope")
def create_scope(scope: ScopeArg, state: StateOption = None) -> None:
    """Create a secret scope."""
    with _open_store(state) as store:
        store.create_scope(scope)
    typer.echo(f"created scope {scope}")


@secrets_app.command("delete-scope")
def delete_scope(scope: ScopeArg, state: StateOption = None) -> None:
    """Delete a secret scope and every secret in it."""
    with _open_store(state) as store:
        store.delete_scope(scope)
    typer.echo(f"deleted scope {scope}")


@secrets_app.command("list-scopes")
def list_scopes(state: StateOption = None, as_json: JsonFlag = False) -> None:
    """List secret scopes."""
    with _open_store(state) as store:
        scopes = store.list_scopes()
    if as_json:
        typer.echo(json.dumps({"scopes": [s.to_json() for s in scopes]}, indent=2))
        return
    for scope in scopes:
        typer.echo(scope.name)


@secrets_app.command("put-secret")
def put_secret(scope: ScopeArg, key: KeyArg, state: StateOption = None) -> None:
    """Create or overwrite a secret.

    The value comes from stdin when piped (one trailing newline is dropped).

    Otherwise it is asked for with a hidden prompt; it is never taken from the command line.
    """
    with _open_store(state) as store:
        # Check names and scope before asking, so nobody types a secret in vain.
        if not store.has_scope(scope):
            _fail(f"secret scope '{scope}' does not exist")
        store.has(scope, key)  # validates the key name; raises if it is malformed
        value = _read_secret_value()
        store.put_secret(scope, key, value)
    typer.echo(f"stored secret {key} in scope {scope}")


@secrets_app.command("list-secrets")
def list_secrets(scope: ScopeArg, state: StateOption = None, as_json: JsonFlag = False) -> None:
    """List the keys in a scope with their last update time (never the values)."""
    with _open_store(state) as store:
        secrets = store.list_secrets(scope)
    if as_json:
        typer.echo(json.dumps({"secrets": [s.to_json() for s in secrets]}, indent=2))
        return
    if not secrets:
        return
    width = max(len("KEY"), *(len(s.key) for s in secrets))
    typer.echo(f"{'KEY':<{width}}  LAST UPDATED")
    for secret in secrets:
        typer.echo(f"{secret.key:<{width}}  {_iso_utc(secret.last_updated_timestamp)}")


@secrets_app.command("delete-secret")
def delete_secret(scope: ScopeArg, key: KeyArg, state: StateOption = None) -> None:
    """Delete a secret."""
    with _open_store(state) as store:
        store.delete_secret(scope, key)
    typer.echo(f"deleted secret {key} from scope {scope}")
