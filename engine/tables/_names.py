"""Where the tables live: three-part names (`catalog.schema.table`) and their folders.

| table                              | written when                                        |
|------------------------------------|-----------------------------------------------------|
| `{catalog}.{schema}.{prefix}_payload` | `ai_gateway.inference_table_config.enabled`      |
| `system.serving.endpoint_usage`    | `ai_gateway.usage_tracking_config.enabled`          |
| `system.serving.served_entities`   | always (the host projects it from the state)        |

A table `c.s.t` is the Delta table in `<root>/c/s/t`; the root is `--tables-root`, else
`$ENGINE_TABLES_ROOT`, else `<state's local dir>/tables`. Names are lowercased, as Unity
Catalog stores them, and each part is checked (it becomes a folder name: no `/`, no `..`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.state import StateLocation

__all__ = [
    "ENDPOINT_USAGE",
    "SERVED_ENTITIES",
    "SYSTEM_TABLES",
    "TABLES_ROOT_ENV",
    "TableName",
    "payload_table_of",
    "tables_root",
]

TABLES_ROOT_ENV = "ENGINE_TABLES_ROOT"
# One part of a name: what schemas/_rules.py (R7) lets through, lowercased.
_PART = re.compile(r"^[a-z0-9_][a-z0-9_-]*$")


@dataclass(frozen=True, slots=True)
class TableName:
    catalog: str
    schema: str
    table: str

    def __str__(self) -> str:
        return f"{self.catalog}.{self.schema}.{self.table}"

    def path(self, root: Path) -> Path:
        return root / self.catalog / self.schema / self.table

    @classmethod
    def of(cls, catalog: str, schema: str, table: str) -> TableName:
        """A checked name (ValueError names the bad part)."""
        parts = tuple(p.lower() for p in (catalog, schema, table))
        for part in parts:
            if not _PART.match(part) or len(part) > 255:
                raise ValueError(f"{part!r} is not a table name part (letters, digits, _ and -)")
        return cls(*parts)


ENDPOINT_USAGE = TableName("system", "serving", "endpoint_usage")
SERVED_ENTITIES = TableName("system", "serving", "served_entities")
SYSTEM_TABLES = (ENDPOINT_USAGE, SERVED_ENTITIES)


def tables_root(state: StateLocation, given: str | os.PathLike[str] | None = None) -> Path:
    """`--tables-root`, else `$ENGINE_TABLES_ROOT`, else `<local dir>/tables`."""
    raw = os.fspath(given) if given else os.environ.get(TABLES_ROOT_ENV, "").strip()
    return Path(raw).absolute() if raw else state.local_dir.absolute() / "tables"


def payload_table_of(endpoint: str, spec: dict[str, Any]) -> TableName | None:
    """The payload table an endpoint's spec asks for (None: payload logging is off).

    The prefix defaults to the endpoint's name, as on the platform. ValueError for a name
    that cannot be a table (validate refuses it first: R7)."""
    config = (spec.get("ai_gateway") or {}).get("inference_table_config") or {}
    if not config.get("enabled"):
        return None
    prefix = config.get("table_name_prefix") or endpoint
    name = TableName.of(config.get("catalog_name") or "", config.get("schema_name") or "", "x")
    if name.catalog == "system":
        raise ValueError("the `system` catalog holds the system tables")
    return TableName.of(name.catalog, name.schema, f"{prefix}_payload")
