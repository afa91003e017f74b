"""Small helpers every CLI command uses to report problems the same way."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from engine.workflow import SpecsInvalid, WorkflowError

__all__ = ["fail", "reported", "EXIT_OK", "EXIT_ERROR", "EXIT_USAGE", "EXIT_CHANGES"]

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


@contextmanager
def reported() -> Iterator[None]:
    """Turn the workflow's typed errors into `error:` lines (every diagnostic of invalid specs,
    then the summary) and the error's exit code."""
    try:
        yield
    except SpecsInvalid as exc:
        for diag in exc.loaded.diagnostics:
            typer.echo(diag.render(), err=True)
        fail(exc.message, exc.exit_code)
    except WorkflowError as exc:
        fail(exc.message, exc.exit_code)
