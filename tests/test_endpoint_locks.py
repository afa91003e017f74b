"""One update per endpoint at a time, and updates of different endpoints in parallel.

The store's locks are per endpoint name (or the whole state): taken all or none, a dead
holder's taken over, released by id. On a real `engine serve` whose entities come up only when
the test says so (the controllable executor's hold gate), an update that is still bringing up
one endpoint does not stop a create, a hot change or a CLI apply of another, while a second
update of the same endpoint is refused at once: 409 RESOURCE_CONFLICT on the REST API, plan
error L1 for the CLI.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine, insert_lock, run_cli, spawn_cli, write_specs
from serving_harness import ServerProcess

from engine.access.tokens import create_token
from engine.state import WHOLE_STATE, LockHeld, SqliteStateStore, open_state

# -- the store ------------------------------------------------------------------------------


def test_keys_of_different_endpoints_do_not_conflict(state_url: str) -> None:
    store = open_state(state_url)
    a = store.acquire_lock("apply", holder="alice", keys=("a",))
    b = store.acquire_lock("apply", holder="bob", keys=("b",))
    with pytest.raises(LockHeld) as held:
        store.acquire_lock("apply", holder="carol", keys=("c", "a"))
    assert held.value.info.id == a.id
    # All or none: the failed attempt took no part of its keys.
    assert {i.id: i.keys for i in store.locks()} == {a.id: ("a",), b.id: ("b",)}
    c = store.acquire_lock("apply", holder="carol", keys=("c", "d", "c"))
    assert c.keys == ("c", "d")
    with pytest.raises(LockHeld):
        store.acquire_lock("migrate", holder="dave", keys=(WHOLE_STATE,))
    for lock in (a, b, c):
        store.release_lock(lock.id)
    whole = store.acquire_lock("migrate", holder="dave")
    assert whole.keys == (WHOLE_STATE,)
    with pytest.raises(LockHeld) as blocked:
        store.acquire_lock("apply", holder="erin", keys=("z",))
    assert "the whole state" in blocked.value.info.describe()
    store.release_lock(whole.id)
    assert store.locks() == []
    store.close()


def test_a_dead_holders_lock_is_taken_over_whole(state_url: str) -> None:
    store = open_state(state_url)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    for key in ("a", "b"):  # a lock left by a SIGKILLed apply
        insert_lock(
            state_url,
            "dead01",
            key=key,
            holder="gone",
            lease_expires_ms=0,
            host=None,
            pid=child.pid,
        )
    taken = store.acquire_lock("apply", holder="next", keys=("a",))
    # Its other key went with it: no half of a dead lock lingers.
    assert [(i.id, i.keys) for i in store.locks()] == [(taken.id, ("a",))]
    store.close()


def test_force_unlock_releases_every_key_of_the_lock(state_url: str) -> None:
    state = state_url
    open_state(state).close()
    for key in ("a", "b"):  # a live lock on another host
        insert_lock(state, "far001", key=key, holder="ci", host="far")
    env = {"ENGINE_STATE": str(state)}
    wrong = run_cli("force-unlock", "nope", env=env)
    assert wrong.returncode == 1 and "far001" in wrong.stderr and "a, b" in wrong.stderr
    removed = run_cli("force-unlock", "far001", env=env)
    assert removed.returncode == 0, removed.stderr
    store = open_state(state)
    assert store.locks() == []
    store.close()


def test_a_lock_held_across_the_upgrade_keeps_the_whole_state(tmp_path: Path) -> None:
    """Schema 6 had one lock for everything: after the upgrade it still covers everything."""
    state = tmp_path / "state.db"
    SqliteStateStore(state).close()
    conn = sqlite3.connect(state)
    conn.executescript(
        """
        DROP TABLE locks;
        CREATE TABLE lock (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1), id TEXT NOT NULL,
            holder TEXT NOT NULL, operation TEXT NOT NULL, acquired_ms INTEGER NOT NULL,
            lease_expires_ms INTEGER NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL);
        INSERT INTO lock VALUES (1, 'old001', 'ci', 'apply', 0, 99999999999999, 'far', 1);
        ALTER TABLE hosts DROP COLUMN role;
        ALTER TABLE hosts DROP COLUMN limits;
        ALTER TABLE hosts DROP COLUMN report;
        ALTER TABLE hosts DROP COLUMN peer_hash;
        DROP TABLE ui_sessions;
        UPDATE meta SET value = '6' WHERE key = 'schema_version';
        """
    )
    conn.close()
    store = SqliteStateStore(state)
    (lock,) = store.locks()
    assert (lock.id, lock.keys) == ("old001", (WHOLE_STATE,))
    with pytest.raises(LockHeld):
        store.acquire_lock("apply", holder="me", keys=("x",))
    store.close()


# -- a real host ----------------------------------------------------------------------------


def _entity(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "external_model": {
            "name": "gpt-4",
            "provider": "openai",
            "task": "llm/v1/chat",
            "openai_config": {"openai_api_key": "{{secrets/team/openai}}"},
        },
    }


def _body(name: str, entity: str) -> dict[str, Any]:
    return {"name": name, "config": {"served_entities": [_entity(entity)]}}


def _state_of(client: httpx.Client, name: str) -> dict[str, str]:
    return client.get(f"/api/2.0/serving-endpoints/{name}").json().get("state", {})


def _wait_for(client: httpx.Client, name: str, want: dict[str, str]) -> None:
    deadline = time.monotonic() + 120
    while (state := _state_of(client, name)) != want:
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


@pytest.fixture
def host(tmp_path: Path, state_url: str):  # noqa: ANN201
    engine = Engine(state_url)
    engine.secrets.create_scope("team")
    engine.secrets.put_secret("team", "openai", "sk-team")
    admin = create_token(engine.store, "admin@example.com", admin=True)[1]
    engine.close()
    run_dir = tmp_path / "run"
    env = {
        "ENGINE_EXECUTOR_PLUGINS": "executor_fixture:register",
        "TEST_EXECUTOR_DIR": str(run_dir),
        "TEST_EXECUTOR_EXTERNAL": "1",
        "TEST_EXECUTOR_HOLD": "held,held-cli",
    }
    with ServerProcess(state_url, env=env, log_dir=tmp_path) as server:
        headers = {"Authorization": f"Bearer {admin}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            server.client = client  # type: ignore[attr-defined]
            server.run_dir = run_dir  # type: ignore[attr-defined]
            server.env = {**env, "ENGINE_STATE": state_url}  # type: ignore[attr-defined]
            yield server
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in ("held", "held-cli"):  # never leave a thread blocked at shutdown
            (run_dir / f"release-{name}").touch()


def test_an_update_in_progress_blocks_only_its_own_endpoint(host: ServerProcess) -> None:
    client: httpx.Client = host.client  # type: ignore[attr-defined]
    run_dir: Path = host.run_dir  # type: ignore[attr-defined]
    updating = {"ready": "READY", "config_update": "IN_PROGRESS"}  # the old config serves
    ready = {"ready": "READY", "config_update": "NOT_UPDATING"}

    created = client.post("/api/2.0/serving-endpoints", json=_body("slow", "first"))
    assert created.status_code == 200, created.text
    _wait_for(client, "slow", ready)
    # Its next config waits for the test to let entity `held` come up.
    slow = client.put("/api/2.0/serving-endpoints/slow/config", json=_body("x", "held")["config"])
    assert slow.status_code == 200, slow.text
    assert _state_of(client, "slow") == updating

    # Another endpoint: created, and ready, while `slow` is still coming up.
    quick = client.post("/api/2.0/serving-endpoints", json=_body("quick", "fast"))
    assert quick.status_code == 200, quick.text
    _wait_for(client, "quick", ready)
    limits = client.put(
        "/api/2.0/serving-endpoints/quick/rate-limits",
        json={"rate_limits": [{"calls": 5, "key": "user", "renewal_period": "minute"}]},
    )
    assert limits.status_code == 200, limits.text
    assert _state_of(client, "slow") == updating

    # The same endpoint again: refused at once, and nothing about it changes.
    again = client.put(
        "/api/2.0/serving-endpoints/slow/config", json=_body("slow", "other")["config"]
    )
    assert again.status_code == 409, again.text
    assert again.json()["error_code"] == "RESOURCE_CONFLICT"
    deleted = client.delete("/api/2.0/serving-endpoints/slow")
    assert deleted.status_code == 409, deleted.text
    assert _state_of(client, "slow") == updating

    (run_dir / "release-held").touch()
    _wait_for(client, "slow", ready)
    detail = client.get("/api/2.0/serving-endpoints/slow").json()
    assert [e["name"] for e in detail["config"]["served_entities"]] == ["held"]


def test_cli_applies_of_different_endpoints_run_side_by_side(
    host: ServerProcess, tmp_path: Path
) -> None:
    env: dict[str, str] = host.env  # type: ignore[attr-defined]
    run_dir: Path = host.run_dir  # type: ignore[attr-defined]
    client: httpx.Client = host.client  # type: ignore[attr-defined]
    slow_specs = write_specs(tmp_path / "slow", [_body("cli-slow", "held-cli")])
    run_dir.mkdir(parents=True, exist_ok=True)
    first = spawn_cli("apply", str(slow_specs), "--auto-approve", env=env)
    try:
        _wait_for(client, "cli-slow", {"ready": "NOT_READY", "config_update": "IN_PROGRESS"})
        other = write_specs(tmp_path / "other", [_body("cli-quick", "fast")])
        side = run_cli("apply", str(other), "--auto-approve", env=env)
        assert side.returncode == 0, side.stdout + side.stderr
        assert first.poll() is None  # still bringing up its own endpoint
        # While it is being created, the API refuses to change it rather than deny it exists.
        put = client.put(
            "/api/2.0/serving-endpoints/cli-slow/config", json=_body("x", "y")["config"]
        )
        assert put.status_code == 409 and put.json()["error_code"] == "RESOURCE_CONFLICT", put.text

        # The same endpoint again (its stack re-applied): a plan error naming the rule.
        same = run_cli("apply", str(slow_specs), "--auto-approve", env=env)
        assert same.returncode == 1 and "[L1]" in same.stdout + same.stderr, same.stdout
    finally:
        (run_dir / "release-held-cli").touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err
    assert _state_of(client, "cli-quick")["ready"] == "READY"
