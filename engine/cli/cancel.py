"""`engine cancel NAME`: stop an endpoint's config update in progress (the Serving UI's
"Cancel update"). Pending entities are stopped, the previous config keeps serving, and the
endpoint ends in UPDATE_CANCELED."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.access.permissions import level_of, require
from engine.asgi import ApiError
from engine.cli.output import fail, reported
from engine.workflow import Session, cancel_update

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("cancel")(cancel_command)


def cancel_command(
    name: Annotated[str, typer.Argument(help="The endpoint whose update to stop.")],
    state: Annotated[
        str | None, typer.Option("--state", help="State file or postgresql:// URL.")
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the update to stop.", min=0)
    ] = 60.0,
) -> None:
    """Cancel the config update of NAME in progress."""
    with reported(), Session(state) as session:
        assert session.store is not None
        row = session.store.get_endpoint(name)
        if row is None:
            fail(f"endpoint {name!r} does not exist")
        level = level_of(session.store, session.principal, row.id)
        if level is None:
            fail(f"endpoint {name!r} does not exist")
        try:
            require(level, "CAN_MANAGE", f"cancel the update of endpoint {name!r}")
        except ApiError as exc:
            fail(exc.message)
        after = cancel_update(session, name, wait=wait)
        if after.in_progress:
            fail(f"asked the update of {name!r} to stop; it is still stopping after {wait:g} s")
        typer.echo(
            f"{name}: {after.config_update}"
            + (f": {after.update_message}" if after.update_message else "")
        )
