"""`engine sql QUERY`: SQL over the payload and usage tables (an operator command)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from typing import Annotated, Any

import typer

from engine.cli.output import fail
from engine.cli.serve import TablesRootOpt
from engine.state import StateError, open_state, resolve_state
from engine.workflow import TOKEN_ENV_VAR, WorkflowError, cli_principal

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("sql")(sql_command)


def _plain(value: Any) -> Any:
    """A value as JSON has it (dates and times in ISO 8601, maps as objects)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID | dt.timedelta):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return value.replace("\n", "\\n")
    if isinstance(value, dict | list | tuple):
        return json.dumps(_plain(value), ensure_ascii=False)
    return str(_plain(value))


def _render(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()
    rule = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    count = f"({len(rows)} row{'s' if len(rows) != 1 else ''})"
    return "\n".join([line, rule, *body, count])


def sql_command(
    query: Annotated[
        str, typer.Argument(help='A query, e.g. "SELECT * FROM system.serving.endpoint_usage".')
    ],
    state: Annotated[
        str | None, typer.Option("--state", help="State file or postgresql:// URL.")
    ] = None,
    tables_root: TablesRootOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Rows as a JSON array of objects.")
    ] = False,
) -> None:
    """Query the payload and usage tables with SQL (DuckDB's dialect; the tables by their
    three-part names)."""
    from engine.tables._names import tables_root as root_of
    from engine.tables.sql import SqlError, run_sql

    location = resolve_state(state)
    try:
        store = open_state(location)
    except StateError as exc:
        fail(str(exc))
    try:
        # The tables hold every team's prompts and answers: the operator's or an admin's.
        try:
            principal = cli_principal(store)
        except WorkflowError as exc:
            fail(exc.message, exc.exit_code)
        if not principal.admin:
            fail(
                f"only an admin or the operator may query the tables; ${TOKEN_ENV_VAR} is "
                f"{principal.name}'s"
            )
        try:
            result = run_sql(query, root_of(location, tables_root), store)
        except SqlError as exc:
            fail(str(exc))
    finally:
        store.close()
    if as_json:
        rows = [
            {c: _plain(v) for c, v in zip(result.columns, row, strict=True)} for row in result.rows
        ]
        typer.echo(json.dumps(rows, ensure_ascii=False))
    elif result.columns:
        typer.echo(_render(result.columns, result.rows))
