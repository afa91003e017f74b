"""The StateStore contract, run on both stores (SQLite file, PostgreSQL database)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator

import psycopg
import pytest
from _postgres import PostgresCluster

from engine.state import (
    CoreStore,
    DirectoryStore,
    LockHeld,
    LockInfo,
    StateError,
    StateStore,
    open_state,
)
from engine.state._postgres import PostgresStateStore
from engine.state._sqlite import _MIGRATIONS, SCHEMA_VERSION
from engine.state.location import resolve_state
from schemas import ConfigUpdateState, EntityRole


@pytest.fixture
def store(state_url: str) -> Iterator[StateStore]:
    opened = open_state(state_url)
    yield opened
    opened.close()


def _create(store: StateStore, name: str = "chat", version: int = 1) -> int:
    store.begin_update(name, stack="s", desired={"name": name}, version=version, actor="alice")
    entity = store.add_entity(
        name, name="gpt", fingerprint="f1", config={"k": 1}, config_version=version
    )
    store.activate(name, keep=[entity], actor="alice", summary={"n": 1})
    return entity


def test_the_store_for_a_url_implements_the_protocols(state_url: str) -> None:
    store = open_state(state_url)
    try:
        assert isinstance(store, StateStore)
        expected = PostgresStateStore if state_url.startswith("postgresql") else None
        if expected is not None:
            assert isinstance(store, expected)
        for protocol in (CoreStore, DirectoryStore):
            for name in (n for n in vars(protocol) if not n.startswith("_")):
                assert hasattr(type(store), name) or name == "location", name
        assert store.location.url == state_url
    finally:
        store.close()


def test_every_write_bumps_the_serial_and_lineage_stays(store: StateStore) -> None:
    lineage, serial = store.lineage, store.serial
    entity = _create(store)
    assert store.serial == serial + 3
    store.update_entity(entity, deployment="DEPLOYMENT_READY", message="up")
    store.add_token(token_hash="h", principal="bob", groups=["ml"], admin=True)
    assert store.serial == serial + 5
    assert store.lineage == lineage
    # Not state changes: heartbeats and the lock.
    store.heartbeat("h1", pid=1, hostname="x", address="a")
    lock = store.acquire_lock("apply", holder="me")
    store.release_lock(lock.id)
    assert store.serial == serial + 5


def test_an_update_cycle_reads_back_the_same(store: StateStore) -> None:
    entity = _create(store)
    row = store.get_endpoint("chat")
    assert row is not None and row.config_version == 1 and row.spec == {"name": "chat"}
    assert row.config_update == ConfigUpdateState.NOT_UPDATING and row.creator == "alice"
    assert store.get_endpoint_by_id(row.id) == row
    assert [e.id for e in store.entities("chat", EntityRole.ACTIVE)] == [entity]
    # A second config: one new entity kept, the old one retires.
    store.begin_update("chat", stack=None, desired={"name": "chat", "v": 2}, version=2, actor="a")
    assert store.get_endpoint("chat").in_progress
    new = store.add_entity("chat", name="gpt", fingerprint="f2", config={}, config_version=2)
    retiring = store.activate("chat", keep=[new], actor="a", summary={})
    assert [r.id for r in retiring] == [entity] and retiring[0].role == EntityRole.RETIRING
    serial, view = store.serving_view()
    assert serial == store.serial
    [(endpoint, active)] = view
    assert endpoint.config_version == 2 and [e.id for e in active] == [new]
    store.update_entity(new, handle={"port": 5})
    assert store.entities(role=EntityRole.ACTIVE)[0].handle == {"port": 5}
    store.update_in_place("chat", desired={"name": "chat", "tags": []}, actor="a", summary={})
    store.fail_update("chat", "boom", actor="a")
    assert store.get_endpoint("chat").update_message == "boom"
    actions = [h.action for h in store.history("chat")]
    assert actions == [
        "begin-update",
        "activate",
        "begin-update",
        "activate",
        "update",
        "update-failed",
    ]
    assert store.history("chat")[1].summary == {"n": 1}
    # Delete: entities first, then the endpoint and its permissions.
    store.mark_deleting("chat", actor="a")
    with pytest.raises(StateError, match="still has entities"):
        store.delete_endpoint("chat", actor="a")
    for e in store.entities("chat"):
        store.delete_entity(e.id)
    store.delete_endpoint("chat", actor="a")
    assert store.get_endpoint("chat") is None and store.permissions(row.id) == []
    with pytest.raises(StateError, match="no pending config"):
        store.activate("chat", keep=[], actor="a", summary={})


def test_snapshot_marks_an_update_left_by_a_dead_apply(store: StateStore) -> None:
    _create(store)
    store.begin_update("chat", stack="s", desired={"name": "chat"}, version=2, actor="a")
    snapshot = store.snapshot()
    assert snapshot.endpoints["chat"].update_interrupted  # nobody holds the lock
    lock = store.acquire_lock("apply", holder="me", keys=("chat",))
    assert not store.snapshot().endpoints["chat"].update_interrupted  # a live apply
    assert store.snapshot(lock_id=lock.id).endpoints["chat"].update_interrupted
    store.release_lock(lock.id)
    other = store.acquire_lock("apply", holder="me", keys=("other",))
    assert store.snapshot().endpoints["chat"].update_interrupted  # not chat's lock
    store.release_lock(other.id)
    assert snapshot.serial == store.serial and snapshot.lineage == store.lineage


def test_the_lock_is_exclusive_and_a_dead_holders_is_taken_over(state_url: str) -> None:
    first, second = open_state(state_url), open_state(state_url)
    try:
        lock = first.acquire_lock("apply", holder="one")
        with pytest.raises(LockHeld) as held:
            second.acquire_lock("apply", holder="two", timeout=0.2)
        assert held.value.info.id == lock.id
        assert second.locks() == [lock]
        first.renew_lock(lock.id, lease_ms=1000)
        with pytest.raises(StateError, match="no lock with id nope"):
            second.force_unlock("nope")
        assert second.force_unlock(lock.id).id == lock.id
        assert first.locks() == []
        # A holder whose process died (same host, dead pid) is taken over.
        dead = second.acquire_lock("apply", holder="two")
        _set_lock_pid(state_url, 2**22 + 12345)
        taken = first.acquire_lock("apply", holder="one")
        assert taken.id != dead.id and first.locks() == [taken]
    finally:
        first.close()
        second.close()


def _set_lock_pid(state_url: str, pid: int) -> None:
    if state_url.startswith("postgresql"):
        with psycopg.connect(state_url, autocommit=True) as conn:
            conn.execute("UPDATE locks SET pid = %s", (pid,))
    else:
        with sqlite3.connect(state_url) as conn:
            conn.execute("UPDATE locks SET pid = ?", (pid,))


def test_directory_records(store: StateStore) -> None:
    _create(store)
    endpoint_id = store.get_endpoint("chat").id
    assert store.permissions(endpoint_id) == [
        ("group_name", "users", "CAN_QUERY"),
        ("user_name", "alice", "CAN_MANAGE"),
    ]
    store.set_permissions(endpoint_id, [("user_name", "bob", "CAN_VIEW")], replace=False)
    store.set_permissions(endpoint_id, [("user_name", "bob", "CAN_QUERY")], replace=False)
    assert ("user_name", "bob", "CAN_QUERY") in store.all_permissions()[endpoint_id]
    store.set_permissions(endpoint_id, [("user_name", "eve", "CAN_VIEW")], replace=True)
    assert store.permissions(endpoint_id) == [("user_name", "eve", "CAN_VIEW")]

    store.put_secret_acl("team", "bob", "READ")
    store.put_secret_acl("team", "bob", "WRITE")
    store.put_secret_acl("team", "amy", "MANAGE")
    assert store.secret_acls("team") == [("amy", "MANAGE"), ("bob", "WRITE")]
    assert store.delete_secret_acl("team", "bob") and not store.delete_secret_acl("team", "bob")
    store.reset_secret_acls("team", [("zed", "READ")])
    assert store.all_secret_acls() == {"team": [("zed", "READ")]}

    model = {"name": "m", "version": "1", "task": "llm/v1/chat", "default_system_prompt": None}
    store.put_model({**model, "path": "/p", "model_type": None, "context_length": 8})
    store.put_model({**model, "path": "/q", "model_type": "llama", "context_length": None})
    [stored] = store.models()
    assert (stored["path"], stored["model_type"], stored["context_length"]) == ("/q", "llama", None)

    token = store.add_token(token_hash="h1", principal="bob", groups=["ml"], kind="user")
    [listed] = store.list_tokens()
    assert (listed["id"], listed["groups"], listed["admin"]) == (token, ["ml"], False)
    assert store.delete_token(token) and not store.delete_token(token)

    def alive(record: dict) -> bool:
        return record["pid"] == os.getpid()

    def alone(others: list[dict]) -> bool:
        return not others

    assert store.join_host("h1", pid=os.getpid(), hostname="x", address="a", alive=alive) == []
    (other,) = store.join_host("h2", pid=2, hostname="x", address="b", alive=alive, admit=alone)
    assert other["id"] == "h1" and [h["id"] for h in store.hosts()] == ["h1"]  # h2 not admitted
    # Replicas: admitted beside a live host; the first to claim the runner role holds it,
    # and a dead holder's role is taken over.
    store.join_host("h2", pid=2, hostname="x", address="b", alive=alive, admit=lambda o: True)
    assert store.claim_runner_role("h1", alive=alive) is True
    assert store.claim_runner_role("h2", alive=alive) is False
    store.heartbeat("h2", pid=2, hostname="x", address="b", report={"serial": 7, "busy": []})
    roles = {h["id"]: (h["role"], h["report"]) for h in store.hosts()}
    assert roles == {"h1": ("runner", {}), "h2": ("", {"serial": 7, "busy": []})}
    assert store.claim_runner_role("h2", alive=lambda r: r["id"] != "h1") is True
    assert {h["id"]: h["role"] for h in store.hosts()} == {"h1": "", "h2": "runner"}
    store.remove_host("h1")
    assert store.claim_runner_role("h1", alive=alive) is False  # not a host any more
    assert store.join_host("h3", pid=3, hostname="x", address="c", alive=alive) == []
    assert [h["id"] for h in store.hosts()] == ["h3"]  # h2 (pid 2) is dead: removed


def test_concurrent_writers_lose_no_serial(state_url: str) -> None:
    """Writers from several connections queue: the serial counts every write exactly once."""
    stores = [open_state(state_url) for _ in range(4)]
    start = stores[0].serial
    try:

        def write(store: StateStore, n: int) -> None:
            for i in range(10):
                store.add_token(token_hash=f"{n}-{i}", principal="p", groups=[])

        threads = [threading.Thread(target=write, args=(s, n)) for n, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert stores[0].serial == start + 40 and len(stores[1].list_tokens()) == 40
    finally:
        for s in stores:
            s.close()


def test_updates_of_different_endpoints_lock_in_parallel(state_url: str) -> None:
    """Two stores (two connections, as two processes): different endpoints both lock at
    once; one endpoint, or the whole state against any endpoint, conflict; all or none."""
    first, second = open_state(state_url), open_state(state_url)
    try:
        a = first.acquire_lock("apply", holder="one", keys=("a", "b"))
        c = second.acquire_lock("apply", holder="two", keys=("c",))
        with pytest.raises(LockHeld) as held:
            second.acquire_lock("apply", holder="two", keys=("d", "b"), timeout=0.2)
        assert held.value.info.id == a.id
        assert {i.id: i.keys for i in first.locks()} == {a.id: ("a", "b"), c.id: ("c",)}
        with pytest.raises(LockHeld):
            second.acquire_lock("migrate", holder="two", timeout=0.2)
        first.release_lock(a.id)
        second.release_lock(c.id)
        whole = first.acquire_lock("migrate", holder="one")
        with pytest.raises(LockHeld) as blocked:
            second.acquire_lock("apply", holder="two", keys=("z",))
        assert blocked.value.info.id == whole.id
        first.release_lock(whole.id)
    finally:
        first.close()
        second.close()


def test_many_acquirers_of_overlapping_keys_never_share_one(state_url: str) -> None:
    """Threads on their own connections race for overlapping key sets: no key is ever held
    twice at once (and nobody deadlocks)."""
    keys = [("a", "b"), ("b", "c"), ("c", "a"), ("d",), ("a", "d")]
    held: dict[str, str] = {}
    clashes: list[str] = []
    guard = threading.Lock()

    def worker(n: int) -> None:
        store = open_state(state_url)
        try:
            for i in range(6):
                wanted = keys[(n + i) % len(keys)]
                lock = store.acquire_lock("apply", holder=f"w{n}", keys=wanted, timeout=30)
                with guard:
                    clashes.extend(k for k in wanted if k in held)
                    held.update({k: lock.id for k in wanted})
                with guard:
                    for k in wanted:
                        held.pop(k, None)
                store.release_lock(lock.id)
        finally:
            store.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and clashes == []


# -- PostgreSQL only -----------------------------------------------------------------------


def _columns_sqlite(path: str) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    out = {t: [r[1] for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    conn.close()
    return {t: c for t, c in out.items() if not t.startswith("sqlite_")}


def _columns_pg(url: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        ).fetchall()
    out: dict[str, list[str]] = {}
    for table, column in rows:
        out.setdefault(table, []).append(column)
    return out


def test_postgres_has_the_same_tables_columns_and_version(tmp_path, postgres_url: str) -> None:
    open_state(tmp_path / "state.db").close()
    open_state(postgres_url).close()
    assert _columns_pg(postgres_url) == _columns_sqlite(str(tmp_path / "state.db"))
    with psycopg.connect(postgres_url) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert version == str(SCHEMA_VERSION)


def test_a_schema_5_postgres_database_migrates_with_the_python_step(postgres_url: str) -> None:
    from engine.state._pgconn import pg_ddl

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for version in range(1, 6):
            for statement in pg_ddl(_MIGRATIONS[version]).split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(
            "INSERT INTO meta VALUES ('lineage', 'abc'), ('serial', '7'), ('schema_version', '5')"
        )
        conn.execute(
            "INSERT INTO tokens (id, token_hash, principal, kind, created_ms) "
            "VALUES ('t', 'h', 'bob', 'service_principal', 1)"
        )
        conn.execute(
            "INSERT INTO endpoints (name, id, creator, created_ms, updated_ms, spec) VALUES "
            "('chat', 'id1', 'bob', 1, 2, '{\"k\": \"{{secrets/team/key}}\"}')"
        )
    store = open_state(postgres_url)
    try:
        assert store.lineage == "abc" and store.serial == 7
        assert store.get_endpoint("chat").creator_kind == "service_principal"
        assert store.secret_acls("team") == [("bob", "READ")]
    finally:
        store.close()


def test_a_newer_postgres_schema_is_refused(postgres_url: str) -> None:
    open_state(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StateError, match="newer serving-engine"):
        open_state(postgres_url)


def test_errors_never_show_the_password(postgres_cluster: PostgresCluster) -> None:
    url = f"postgresql://nobody:s3cret-pw@127.0.0.1:{postgres_cluster.port}/nothere"
    with pytest.raises(StateError) as raised:
        open_state(url)
    assert "s3cret-pw" not in str(raised.value) and "***" in str(raised.value)
    assert "s3cret-pw" not in repr(resolve_state(url))


def test_the_store_reconnects_after_a_server_restart(
    postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    store = open_state(postgres_url)
    try:
        _create(store)
        postgres_cluster.stop()
        with pytest.raises(StateError):
            store.list_endpoints()
        postgres_cluster.start_again()
        # The broken connection is replaced at the next call.
        assert [e.name for e in store.list_endpoints()] == ["chat"]
        lock = store.acquire_lock("apply", holder="me")
        assert isinstance(lock, LockInfo)
    finally:
        store.close()


def test_ui_sessions_are_untracked_bounded_and_deleted(store: StateStore) -> None:
    serial = store.serial
    for i in range(4):
        store.put_ui_session(
            f"h{i}", sealed_token=f"sealed{i}", now_ms=1000 + i, idle_before_ms=0, keep=3
        )
    # At most `keep`: the oldest made room.
    assert store.ui_session("h0") is None
    assert store.ui_session("h3") == {
        "sealed_token": "sealed3",
        "created_ms": 1003,
        "last_seen_ms": 1003,
    }
    store.touch_ui_session("h1", 5000)
    assert store.ui_session("h1")["last_seen_ms"] == 5000  # type: ignore[index]
    # Idle ones go at the next sign-in.
    store.put_ui_session("h9", sealed_token="s", now_ms=6000, idle_before_ms=4000, keep=3)
    assert [store.ui_session(h) is not None for h in ("h1", "h2", "h3", "h9")] == [
        True,
        False,
        False,
        True,
    ]
    store.delete_ui_session("h1")
    assert store.ui_session("h1") is None
    assert store.serial == serial  # a page view never rebuilds the routing tables
