"""The `engine` command line."""

from __future__ import annotations

import os
import sys

import typer

from engine.cli import cancel as cli_cancel
from engine.cli import demo as cli_demo
from engine.cli import plan as cli_plan
from engine.cli import serve as cli_serve
from engine.cli import sql as cli_sql
from engine.cli import state as cli_state
from engine.cli import up as cli_up
from engine.cli import validate as cli_validate
from engine.cli.models import models_app
from engine.cli.output import EXIT_ERROR
from engine.cli.secrets import secrets_app
from engine.cli.tokens import tokens_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="engine",
    help="Declarative LLM serving endpoints: validate, plan, apply and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
cli_validate.register(app)
cli_plan.register(app)
cli_state.register(app)
cli_serve.register(app)
cli_demo.register(app)
cli_up.register(app)
cli_sql.register(app)
cli_cancel.register(app)
app.add_typer(secrets_app)
app.add_typer(tokens_app)
app.add_typer(models_app)


def main() -> None:
    """Entry point: bad input never shows a traceback (set ENGINE_DEBUG=1 to see one)."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence for the user
        if os.environ.get("ENGINE_DEBUG"):
            raise
        typer.echo(f"error: internal error: {type(exc).__name__}: {exc}", err=True)
        typer.echo("(set ENGINE_DEBUG=1 to see the traceback)", err=True)
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":  # pragma: no cover
    main()
