"""Reading and writing the Delta tables (deltalake: delta-rs, no JVM, no Spark)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

__all__ = ["append", "is_table", "overwrite", "read_rows", "read_table"]


def _private_parent(path: Path) -> None:
    # The tables hold what callers sent and got: their folders are the owner's alone.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def append(
    path: Path,
    rows: list[dict[str, Any]],
    schema: pa.Schema,
    partition_by: list[str] | None = None,
) -> None:
    from deltalake import write_deltalake

    _private_parent(path)
    table = pa.Table.from_pylist(rows, schema=schema)
    write_deltalake(str(path), table, mode="append", partition_by=partition_by)


def overwrite(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    from deltalake import write_deltalake

    _private_parent(path)
    write_deltalake(str(path), pa.Table.from_pylist(rows, schema=schema), mode="overwrite")


def is_table(path: Path) -> bool:
    return (path / "_delta_log").is_dir()


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    """The table's rows in `schema`'s column order (an empty table if there is none yet)."""
    if not is_table(path):
        return schema.empty_table()
    from deltalake import DeltaTable

    table = DeltaTable(str(path)).to_pyarrow_table()
    return table.select(schema.names).cast(schema)


def read_rows(path: Path, schema: pa.Schema) -> list[dict[str, Any]]:
    """Rows as dicts, timestamps as microseconds since the epoch (as the writers make them)."""
    table = read_table(path, schema)
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_timestamp(column.type):
            column = column.cast(pa.int64())
        columns[name] = column
    return pa.table(columns).to_pylist()
