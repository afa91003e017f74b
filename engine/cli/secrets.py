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
from typing import Annotated, Any, NoReturn

import typer

from engine.access.tokens import Principal
from engine.asgi import ApiError
from engine.cli.output import reported
from engine.secrets.scopes import ScopeCall, scope_call
from engine.secrets.store import SecretStore, SecretStoreError
from engine.state import StateStore
from engine.state._sqlite import resolve_state_path
from engine.state.location import STATE_ENV_VAR
from engine.workflow import TOKEN_ENV_VAR, Session

__all__ = ["STATE_ENV_VAR", "resolve_state_path", "secrets_app"]

secrets_app = typer.Typer(
    name="secrets",
    no_args_is_help=True,
    add_completion=False,
    help=(
        "Manage secret scopes, their secrets (referenced in specs as {{secrets/SCOPE/KEY}}) "
        f"and their ACLs. Acts as the principal of ${TOKEN_ENV_VAR} when it is set, else as "
        "the operator of the state files (an admin)."
    ),
)

StateOption = Annotated[
    str | None,
    typer.Option(
        "--state",
        help=(
            "State database path (secrets live in secrets.db beside it) or postgresql:// URL "
            "(secrets live in that database). "
            f"Default: ${STATE_ENV_VAR}, else .engine/state.db in the current directory."
        ),
    ),
]
ScopeArg = Annotated[str, typer.Argument(help="Secret scope name.", show_default=False)]
KeyArg = Annotated[str, typer.Argument(help="Secret key within the scope.", show_default=False)]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the REST API JSON shape.")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


class _Caller:
    def __init__(self, store: StateStore, secrets: SecretStore, principal: Principal) -> None:
        self.store, self.secrets, self.principal = store, secrets, principal

    def __call__(self, action: str, **args: Any) -> dict[str, Any]:
        """One call, as the REST API's `/api/2.0/secrets/<action>` would make it."""
        return scope_call(action, self.store, self.secrets, self.principal, args)

    def require(self, scope: str, needed: str, what: str) -> None:
        ScopeCall(self.store, self.secrets, self.principal, {"scope": scope}).scope(needed, what)


@contextmanager
def _calls(state: str | None) -> Iterator[_Caller]:
    """Secrets calls as the CLI's principal ($ENGINE_TOKEN's, else the operator of the state
    files); failures become one `error:` line and exit 1."""
    with reported():
        try:
            with Session(state) as session:
                assert session.store is not None and session.secrets is not None
                yield _Caller(session.store, session.secrets, session.principal)
        except ApiError as exc:
            _fail(exc.message)
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


def _print_table(header: tuple[str, str], rows: list[tuple[str, str]]) -> None:
    """Two columns, the first padded to its widest cell; nothing at all for no rows."""
    if not rows:
        return
    width = max(len(header[0]), *(len(first) for first, _ in rows))
    for first, second in [header, *rows]:
        typer.echo(f"{first:<{width}}  {second}")


def _iso_utc(timestamp_ms: int) -> str:
    moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


PrincipalArg = Annotated[
    str,
    typer.Argument(
        help="A user name, a service principal's application id, or a group (`users`: all).",
        show_default=False,
    ),
]


@secrets_app.command("create-scope")
def create_scope(
    scope: ScopeArg,
    state: StateOption = None,
    initial_manage_principal: Annotated[
        str | None,
        typer.Option(
            "--initial-manage-principal",
            help="`users` gives every user MANAGE; by default the creator holds MANAGE.",
        ),
    ] = None,
) -> None:
    """Create a secret scope (its creator holds MANAGE on it)."""
    initial = initial_manage_principal
    args = {"initial_manage_principal": initial} if initial else {}
    with _calls(state) as call:
        call("scopes/create", scope=scope, **args)
    typer.echo(f"created scope {scope}")


@secrets_app.command("delete-scope")
def delete_scope(scope: ScopeArg, state: StateOption = None) -> None:
    """Delete a secret scope, every secret in it and its ACL (MANAGE needed)."""
    with _calls(state) as call:
        call("scopes/delete", scope=scope)
    typer.echo(f"deleted scope {scope}")


@secrets_app.command("list-scopes")
def list_scopes(state: StateOption = None, as_json: JsonFlag = False) -> None:
    """List the secret scopes you hold a permission on."""
    with _calls(state) as call:
        answer = call("scopes/list")
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    for scope in answer["scopes"]:
        typer.echo(scope["name"])


@secrets_app.command("put-secret")
def put_secret(scope: ScopeArg, key: KeyArg, state: StateOption = None) -> None:
    """Create or overwrite a secret (WRITE needed).

    The value comes from stdin when piped (one trailing newline is dropped).

    Otherwise it is asked for with a hidden prompt; it is never taken from the command line.
    """
    with _calls(state) as call:
        # Check the permission, scope and key name before asking, so nobody types a secret
        # in vain.
        call.require(scope, "WRITE", "put secrets")
        if not call.secrets.has_scope(scope):
            _fail(f"secret scope '{scope}' does not exist")
        call.secrets.has(scope, key)  # validates the key name; raises if it is malformed
        value = _read_secret_value()
        call("put", scope=scope, key=key, string_value=value)
    typer.echo(f"stored secret {key} in scope {scope}")


@secrets_app.command("list-secrets")
def list_secrets(scope: ScopeArg, state: StateOption = None, as_json: JsonFlag = False) -> None:
    """List the keys in a scope with their last update time, never the values (READ needed)."""
    with _calls(state) as call:
        answer = call("list", scope=scope)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    rows = [(s["key"], _iso_utc(s["last_updated_timestamp"])) for s in answer["secrets"]]
    _print_table(("KEY", "LAST UPDATED"), rows)


@secrets_app.command("delete-secret")
def delete_secret(scope: ScopeArg, key: KeyArg, state: StateOption = None) -> None:
    """Delete a secret (WRITE needed)."""
    with _calls(state) as call:
        call("delete", scope=scope, key=key)
    typer.echo(f"deleted secret {key} from scope {scope}")


@secrets_app.command("put-acl")
def put_acl(
    scope: ScopeArg,
    principal: PrincipalArg,
    permission: Annotated[str, typer.Argument(help="READ, WRITE or MANAGE.", show_default=False)],
    state: StateOption = None,
) -> None:
    """Grant a principal READ, WRITE or MANAGE on a scope, replacing its entry (MANAGE needed)."""
    with _calls(state) as call:
        call("acls/put", scope=scope, principal=principal, permission=permission.upper())
    typer.echo(f"{principal} holds {permission.upper()} on scope {scope}")


@secrets_app.command("list-acls")
def list_acls(scope: ScopeArg, state: StateOption = None, as_json: JsonFlag = False) -> None:
    """List a scope's ACL entries (MANAGE needed)."""
    with _calls(state) as call:
        answer = call("acls/list", scope=scope)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
        return
    items = answer["items"]
    if not items:
        typer.echo(f"scope {scope} has no entries: only admins may use it")
        return
    _print_table(("PRINCIPAL", "PERMISSION"), [(i["principal"], i["permission"]) for i in items])


@secrets_app.command("get-acl")
def get_acl(
    scope: ScopeArg, principal: PrincipalArg, state: StateOption = None, as_json: JsonFlag = False
) -> None:
    """Show one principal's entry on a scope (MANAGE needed)."""
    with _calls(state) as call:
        answer = call("acls/get", scope=scope, principal=principal)
    typer.echo(json.dumps(answer, indent=2) if as_json else answer["permission"])


@secrets_app.command("delete-acl")
def delete_acl(scope: ScopeArg, principal: PrincipalArg, state: StateOption = None) -> None:
    """Remove a principal's entry from a scope (MANAGE needed)."""
    with _calls(state) as call:
        call("acls/delete", scope=scope, principal=principal)
    typer.echo(f"removed {principal}'s entry from scope {scope}")
