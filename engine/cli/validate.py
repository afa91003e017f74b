"""`engine validate` and `engine schema`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.output import EXIT_ERROR, EXIT_OK, EXIT_USAGE, fail
from engine.specs.loader import LoadResult, SpecUsageError, load_specs
from schemas import RuleOptions, render_json_schema

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("validate")(validate)
    app.command("schema")(schema)


def validate(
    paths: Annotated[list[Path], typer.Argument(help="Spec files or directories.")],
    strict: Annotated[bool, typer.Option("--strict", help="Treat warnings as errors.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    max_served_entities: Annotated[
        int, typer.Option(help="Most served entities one endpoint may have (rule E5).")
    ] = 15,
) -> None:
    """Check endpoint specs: schema, per-spec rules and unique names. Exit 0 valid, 1 not."""
    try:
        result = load_specs(paths, options=RuleOptions(max_served_entities=max_served_entities))
    except SpecUsageError as exc:
        fail(str(exc), EXIT_USAGE)
    valid = result.valid and not (strict and result.warnings)
    if as_json:
        typer.echo(json.dumps(_json_report(result, valid, strict), indent=2))
    else:
        for diag in result.diagnostics:
            typer.echo(diag.render())
        typer.echo(_summary(result, valid))
    raise typer.Exit(EXIT_OK if valid else EXIT_ERROR)


def _json_report(result: LoadResult, valid: bool, strict: bool) -> dict[str, object]:
    errors = [d.to_json() for d in result.errors]
    warnings = [d.to_json() for d in result.warnings]
    return {"valid": valid, "endpoints": result.names, "errors": errors, "warnings": warnings}


def _summary(result: LoadResult, valid: bool) -> str:
    def count(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    files = count(len(result.files), "file")
    endpoints = count(len(result.endpoints), "endpoint")
    problems = f"{count(len(result.errors), 'error')}, {count(len(result.warnings), 'warning')}"
    verdict = "valid" if valid else "invalid"
    return f"{verdict}: {endpoints} in {files}; {problems}"


def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the JSON Schema of one endpoint document (for editors and CI)."""
    text = render_json_schema()
    if output is None:
        typer.echo(text, nl=False)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror}")
