"""The state store's interface and its SQLite implementation's schema migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.state import CoreStore, DirectoryStore, SqliteStateStore, StateStore, open_state
from engine.state._sqlite import _MIGRATIONS, SCHEMA_VERSION


def test_sqlite_store_implements_the_protocols(tmp_path: Path) -> None:
    store = open_state(tmp_path / "state.db")
    try:
        assert isinstance(store, StateStore)
        assert isinstance(store, CoreStore) and isinstance(store, DirectoryStore)
    finally:
        store.close()
    # Every method the protocols name exists with the protocol's name on the implementation.
    for protocol in (CoreStore, DirectoryStore):
        names = [n for n in vars(protocol) if not n.startswith("_")]
        assert len(names) > 10
        for name in names:
            assert hasattr(SqliteStateStore, name), name


def _schema_4_state(path: Path) -> None:
    """A state file as serving-engine wrote it at schema 4, with one endpoint and an entity."""
    conn = sqlite3.connect(path)
    for version in range(1, 5):
        conn.executescript(_MIGRATIONS[version])
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("lineage", "abc"), ("serial", "7"), ("schema_version", "4")],
    )
    conn.execute(
        "INSERT INTO endpoints (name, id, stack, creator, created_ms, updated_ms, spec, "
        "config_version, secret_refs, pending_secret_refs) "
        "VALUES ('chat', 'id1', 'stack', 'me', 1, 2, '{\"name\": \"chat\"}', 3, "
        "'{\"x\": \"y\"}', '{}')"
    )
    conn.execute(
        "INSERT INTO entities (endpoint, name, fingerprint, config, role, deployment, "
        "config_version, created_ms) VALUES ('chat', 'gpt', 'f', '{}', 'active', "
        "'DEPLOYMENT_READY', 3, 5)"
    )
    conn.commit()
    conn.close()


def test_schema_4_migrates_dropping_the_dead_secret_refs(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _schema_4_state(path)
    store = SqliteStateStore(path)
    try:
        row = store.get_endpoint("chat")
        assert row is not None
        assert (row.id, row.stack, row.creator, row.config_version) == ("id1", "stack", "me", 3)
        assert row.spec == {"name": "chat"}
        [entity] = store.entities("chat")
        assert (entity.name, entity.role, entity.deployment) == (
            "gpt",
            "active",
            "DEPLOYMENT_READY",
        )
        assert store.lineage == "abc" and store.serial == 7
    finally:
        store.close()
    conn = sqlite3.connect(path)
    columns = {r[1] for r in conn.execute("PRAGMA table_info(endpoints)")}
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    conn.close()
    assert "secret_refs" not in columns and "pending_secret_refs" not in columns
    assert version == str(SCHEMA_VERSION)


def test_rows_are_read_by_column_name(tmp_path: Path) -> None:
    """A column added in a migration (here: in front of the others' positions) changes
    nothing that is read: rows are mapped by name, not by position."""
    path = tmp_path / "state.db"
    store = SqliteStateStore(path)
    store.begin_update("chat", stack="s", desired={"name": "chat"}, version=1, actor="me")
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE endpoints ADD COLUMN zz_extra TEXT DEFAULT 'x'")
    conn.commit()
    conn.close()
    store = SqliteStateStore(path)
    try:
        row = store.get_endpoint("chat")
        assert row is not None and row.pending == {"name": "chat"} and row.pending_version == 1
    finally:
        store.close()
