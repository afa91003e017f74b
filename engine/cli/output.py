"""Small helpers every CLI command uses to report problems the same way."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

__all__ = ["fail", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_CHANGES"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
# `plan --detailed-exitcode`: the plan has changes.
EXIT_CHANGES = 2


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print one `error:` line on stderr and exit; never a traceback."""
    typer.echo(f"error: {message}", err=True)
    sys.stdout.flush()
    raise typer.Exit(code)
