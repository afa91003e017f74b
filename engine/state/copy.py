"""`engine state migrate --to postgresql://...`: copy a SQLite state into an empty database.

What is copied, row for row with the same ids: the lineage and serial, endpoints, entities,
history, tokens, permissions, secret scope ACLs, the model catalog, and the secret store's
scopes and encrypted rows (still encrypted: the master key never enters a database), and
the usage records of `usage.db` (the metrics and usage of the past keep showing). What is
not: serving-host records, UI sessions and the lock, which describe live processes.

Steps: refuse a target that holds anything; take the source's lock (no apply may change it
meanwhile); create the schema; copy everything in one transaction that compares every
table's row count before it commits; then compare the two states' snapshots.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.gateway._usage import USAGE_DB_NAME, create_usage_table
from engine.state._sqlite import SqliteStateStore, StateError
from engine.state.location import StateLocation

__all__ = ["COPIED_TABLES", "CopyReport", "copy_to_postgres"]

# State tables, in an order that keeps every reference valid.
COPIED_TABLES = (
    "endpoints",
    "entities",
    "history",
    "tokens",
    "permissions",
    "secret_acls",
    "models",
)
_SECRET_TABLES = ("meta", "scopes", "secrets")
# Schemas this engine writes in a PostgreSQL state database.
_USAGE_SCHEMA = "engine_usage"
_OUR_SCHEMAS = ("public", "engine_secrets", _USAGE_SCHEMA)


@dataclass(frozen=True)
class CopyReport:
    lineage: str
    serial: int
    rows: dict[str, int]
    key_file: Path | None  # where the secrets key file was copied, if it was


def copy_to_postgres(source: Path, target: StateLocation) -> CopyReport:
    """Copy the SQLite state at `source` into the empty PostgreSQL database `target`."""
    import psycopg

    from engine.state._pgconn import PgConnection, mask_url
    from engine.state._postgres import PostgresStateStore

    if not source.is_file():
        raise StateError(f"no state file at {source}")
    where = mask_url(target.url)
    _refuse_non_empty(target.url, where)
    _refuse_another_key(source, target)
    origin = SqliteStateStore(source)
    try:
        lock = origin.acquire_lock("migrate", holder="engine state migrate")
        try:
            PostgresStateStore(target).close()  # the schema, at this engine's version
            secrets_db = source.parent / "secrets.db"
            if secrets_db.exists():
                _create_secret_tables(target, secrets_db)
            usage_db = source.parent / USAGE_DB_NAME
            if usage_db.exists():
                _create_usage_table(target)
            pg = PgConnection(target.url)
            try:
                with pg.mutex:
                    conn = pg.begin()
                    try:
                        rows = _copy_rows(origin, conn, secrets_db)
                        if usage_db.exists():
                            rows["usage"] = _copy_usage(usage_db, conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        conn.execute("ROLLBACK")
                        raise
            except psycopg.Error as exc:
                raise StateError(f"cannot copy into {where}: {exc}") from None
            finally:
                pg.close()
            copied = PostgresStateStore(target)
            try:
                before, after = origin.snapshot(lock_id=lock.id), copied.snapshot()
            finally:
                copied.close()
            if before != after:
                raise StateError(f"the copy in {where} does not read back as the source state")
        finally:
            origin.release_lock(lock.id)
    finally:
        origin.close()
    return CopyReport(before.lineage, before.serial, rows, _copy_key_file(source, target))


def _refuse_non_empty(url: str, where: str) -> None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            tables = conn.execute(
                "SELECT table_schema || '.' || table_name FROM information_schema.tables "
                "WHERE table_schema = ANY(%s) ORDER BY 1",
                (list(_OUR_SCHEMAS),),
            ).fetchall()
    except psycopg.Error as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "error"
        raise StateError(f"cannot connect to {where}: {detail}") from None
    if tables:
        shown = ", ".join(t for (t,) in tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise StateError(
            f"{where} is not empty (it has {shown}); migrate copies into an empty database only"
        )


def _refuse_another_key(source: Path, target: StateLocation) -> None:
    from engine.secrets.store import KEY_FILE_NAME

    key, there = source.parent / KEY_FILE_NAME, target.local_dir / KEY_FILE_NAME
    if key.exists() and there.exists() and key.read_bytes().strip() != there.read_bytes().strip():
        raise StateError(
            f"{there} holds another secrets key than {key}: the copied secrets could not be "
            "decrypted with it; move it away or set ENGINE_HOME to another folder"
        )


def _create_secret_tables(target: StateLocation, secrets_db: Path) -> None:
    from engine.secrets.store import KEY_FILE_NAME, SecretStore

    SecretStore.on_postgres(target.url, key_path=target.local_dir / KEY_FILE_NAME).close()


def _create_usage_table(target: StateLocation) -> None:
    from engine.state._pgconn import PgConnection

    pg = PgConnection(target.url, schema=_USAGE_SCHEMA)
    try:
        create_usage_table(pg.live())
    finally:
        pg.close()


def _copy_usage(usage_db: Path, conn: Any) -> int:
    source = sqlite3.connect(f"file:{usage_db}?mode=ro", uri=True)
    source.row_factory = sqlite3.Row
    try:
        return _copy_table(source, conn, "usage", f"{_USAGE_SCHEMA}.usage")
    finally:
        source.close()


def _copy_rows(origin: SqliteStateStore, conn: Any, secrets_db: Path) -> dict[str, int]:
    """Every row, in the open transaction `conn`; counts checked before the caller commits."""
    counts: dict[str, int] = {}
    source = sqlite3.connect(f"file:{origin.path}?mode=ro", uri=True)
    source.row_factory = sqlite3.Row
    try:
        meta = {r["key"]: r["value"] for r in source.execute("SELECT key, value FROM meta")}
        for key in ("lineage", "serial"):
            conn.execute("UPDATE meta SET value = %s WHERE key = %s", (meta[key], key))
        for table in COPIED_TABLES:
            counts[table] = _copy_table(source, conn, table, table)
        for table in ("entities", "history"):
            # Identity columns continue after the copied ids.
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )
    finally:
        source.close()
    if secrets_db.exists():
        secrets = sqlite3.connect(f"file:{secrets_db}?mode=ro", uri=True)
        secrets.row_factory = sqlite3.Row
        try:
            # The target's schema_version row is its own (same version); the rest is copied.
            conn.execute("DELETE FROM engine_secrets.meta")
            for table in _SECRET_TABLES:
                counts[f"secrets.{table}"] = _copy_table(
                    secrets, conn, table, f"engine_secrets.{table}"
                )
        finally:
            secrets.close()
    return counts


def _copy_table(source: sqlite3.Connection, conn: Any, table: str, target: str) -> int:
    rows = source.execute(f"SELECT * FROM {table}").fetchall()
    if rows:
        columns = list(rows[0].keys())
        marks = ", ".join(["%s"] * len(columns))
        with conn.cursor() as cursor:
            cursor.executemany(
                f"INSERT INTO {target} ({', '.join(columns)}) VALUES ({marks})",
                [tuple(row) for row in rows],
            )
    (copied,) = conn.execute(f"SELECT COUNT(*) AS n FROM {target}").fetchone().values()
    if copied != len(rows):
        raise StateError(f"table {table}: {len(rows)} rows in the source, {copied} copied")
    return len(rows)


def _copy_key_file(source: Path, target: StateLocation) -> Path | None:
    """The SQLite state's secrets key file, copied (0600) to the target's local folder, unless
    one is there already: the same key must decrypt the copied rows."""
    from engine.secrets.store import KEY_FILE_NAME

    key = source.parent / KEY_FILE_NAME
    destination = target.local_dir / KEY_FILE_NAME
    if not key.exists() or destination.exists() or key.resolve() == destination.resolve():
        return None
    destination.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    shutil.copyfile(key, destination)
    destination.chmod(0o600)
    return destination
