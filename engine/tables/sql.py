"""`engine sql`: DuckDB over the Delta tables, by their three-part names.

DuckDB's own Delta extension is downloaded at first use, which a host without a network
cannot do; so each table is opened with deltalake and handed to DuckDB as an Arrow dataset
(read lazily, partitions pruned). DuckDB reserves the catalog names `system` and `main`, so
`system.serving.endpoint_usage` cannot be a real catalog there: each table is registered
under its full name as one identifier, and the query's three-part references to known tables
(bare, "quoted" or `backticked`, as Databricks SQL writes them) are rewritten to it, outside
string literals and comments. Other dotted names (a struct field `s.config.provider`) are
left alone. File access is switched off before the query runs: it reads the tables, nothing
else, and writes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from engine.state import StateStore
from engine.tables import _delta
from engine.tables._names import ENDPOINT_USAGE, SERVED_ENTITIES, TableName, payload_table_of
from engine.tables._schemas import PAYLOAD_SCHEMA, SERVED_ENTITIES_SCHEMA, USAGE_SCHEMA
from engine.tables._served import project
from schemas import now_ms

__all__ = ["QueryResult", "SqlError", "known_tables", "rewrite_names", "run_sql"]


class SqlError(Exception):
    """A query that cannot run: the message is one line, for the user."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple[Any, ...]]


def _payload_tables(root: Path, store: StateStore) -> set[TableName]:
    """Payload tables on disk, and those endpoints are configured with (maybe empty yet)."""
    found: set[TableName] = set()
    for log_dir in root.glob("*/*/*/_delta_log"):
        table = log_dir.parent
        catalog, schema = table.parent.parent.name, table.parent.name
        if catalog != "system":
            try:
                found.add(TableName.of(catalog, schema, table.name))
            except ValueError:
                continue
    for row in store.list_endpoints():
        try:
            name = payload_table_of(row.name, row.spec or {})
        except ValueError:
            continue
        if name is not None:
            found.add(name)
    return found


def _dataset(path: Path, schema: pa.Schema) -> Any:
    if not _delta.is_table(path):
        return schema.empty_table()
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pyarrow_dataset()


def known_tables(root: Path, store: StateStore) -> dict[TableName, Any]:
    """Every table `engine sql` can read, as Arrow data DuckDB scans."""
    tables: dict[TableName, Any] = {
        ENDPOINT_USAGE: _dataset(ENDPOINT_USAGE.path(root), USAGE_SCHEMA)
    }
    known = _delta.read_rows(SERVED_ENTITIES.path(root), SERVED_ENTITIES_SCHEMA)
    _, view = store.serving_view()
    rows = project(known, view, workspace_id=store.lineage, history=store.history, now_ms=now_ms())
    tables[SERVED_ENTITIES] = pa.Table.from_pylist(rows, schema=SERVED_ENTITIES_SCHEMA)
    for name in sorted(_payload_tables(root, store), key=str):
        tables[name] = _dataset(name.path(root), PAYLOAD_SCHEMA)
    return tables


_PART = r'(?:[A-Za-z_][A-Za-z0-9_]*|"(?:[^"]|"")+"|`(?:[^`]|``)+`)'
_THREE = re.compile(rf"({_PART})\s*\.\s*({_PART})\s*\.\s*({_PART})")
_ONE = re.compile(_PART)


def _unquoted(part: str) -> str:
    if part[0] == '"':
        return part[1:-1].replace('""', '"').lower()
    if part[0] == "`":
        return part[1:-1].replace("``", "`").lower()
    return part.lower()


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _pieces(sql: str) -> Iterator[tuple[str, bool]]:
    """(text, is_code) pieces: string literals and comments are not code."""
    i, start, n = 0, 0, len(sql)
    while i < n:
        if sql[i] == "'" or sql.startswith(("--", "/*"), i):
            if start < i:
                yield sql[start:i], True
            if sql[i] == "'":
                j = i + 1
                while j < n and not (sql[j] == "'" and not sql.startswith("''", j)):
                    j += 2 if sql.startswith("''", j) else 1
                end = j + 1
            elif sql.startswith("--", i):
                end = sql.find("\n", i)
                end = n if end < 0 else end
            else:
                end = sql.find("*/", i + 2)
                end = n if end < 0 else end + 2
            yield sql[i:end], False
            i = start = end
        else:
            i += 1
    if start < n:
        yield sql[start:], True


def rewrite_names(sql: str, names: set[str]) -> str:
    """`sql` with each three-part reference to one of `names` made one quoted identifier."""
    out: list[str] = []
    for text, code in _pieces(sql):
        if not code:
            out.append(text)
            continue
        i = 0
        while i < len(text):
            match = _THREE.match(text, i) if not (i and _word(text[i - 1])) else None
            if match:
                name = ".".join(_unquoted(p) for p in match.groups())
                if name in names:
                    out.append(_quoted(name))
                    i = match.end()
                    continue
            one = _ONE.match(text, i) if not (i and _word(text[i - 1])) else None
            end = one.end() if one else i + 1
            out.append(text[i:end])
            i = end
    return "".join(out)


def _word(char: str) -> bool:
    return char.isalnum() or char in "_$"


def run_sql(sql: str, root: Path, store: StateStore) -> QueryResult:
    """Run one query (or several: the last one's result) over the tables."""
    import duckdb

    tables = known_tables(root, store)
    names = {str(name): data for name, data in tables.items()}
    con = duckdb.connect()
    try:
        for name, data in names.items():
            con.register(name, data)
        # The query reads the registered tables and nothing else: no files, no ATTACH.
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        try:
            cursor = con.execute(rewrite_names(sql, set(names)))
            if cursor.description is None:
                return QueryResult([], [], [])
            columns = [d[0] for d in cursor.description]
            types = [str(d[1]) for d in cursor.description]
            return QueryResult(columns, types, cursor.fetchall())
        except duckdb.Error as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, duckdb.CatalogException):
                message += f" (tables: {', '.join(sorted(names))})"
            raise SqlError(message) from None
    finally:
        con.close()
