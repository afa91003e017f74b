"""`engine serve` on a PostgreSQL state: a migrated SQLite state serves the same endpoints and
tokens; a PostgreSQL restart leaves the host serving its last good table, then reconnecting.
Real processes on loopback: a throwaway cluster (tests/_postgres.py), the CLI, `engine serve`."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from _postgres import PostgresCluster
from engine_harness import Engine, run_cli, write_specs
from mock_http import MockUpstream
from serving_harness import ServerProcess, endpoint, openai_entity, openai_upstream

from engine.access.tokens import create_token
from engine.gateway._usage import UsageRecord, UsageRecorder, read_usage
from engine.state import open_state, resolve_state

SECRET = "sk-migrated-secret-8f7e6d5c"
PASSWORD = "pw-never-shown-41c9"


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(openai_upstream) as server:
        yield server


def _ask(server: ServerProcess, name: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/serving-endpoints/{name}/invocations",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _sqlite_state(root: Path, base: str) -> tuple[Path, dict[str, str]]:
    """Endpoints, history, tokens, permissions, a secret ACL and a secret, on SQLite."""
    state = root / "state" / "state.db"
    engine = Engine(state)
    engine.secrets.create_scope("scope")
    engine.secrets.put_secret("scope", "openai", SECRET)
    split = [openai_entity("big", "model-big", base), openai_entity("small", "m-s", base)]
    for model in ("gpt-4", "gpt-4o"):  # two config versions of chat: more history
        specs = write_specs(
            root / "specs",
            [
                endpoint("chat", [openai_entity("gpt4", model, base)]),
                endpoint("split", split, [50, 50]),
            ],
        )
        assert engine.apply(specs)[1].ok
    _, admin = create_token(engine.store, "admin@example.com", admin=True)
    _, alice = create_token(engine.store, "alice@example.com", groups=["ml"])
    _, bob = create_token(engine.store, "bob@example.com")
    split = engine.store.get_endpoint("split")
    # bob may not query `split` any more; alice may (and reads the secret scope).
    engine.store.set_permissions(
        split.id, [("user_name", "alice@example.com", "CAN_QUERY")], replace=True
    )
    engine.store.put_secret_acl("scope", "alice@example.com", "READ")
    engine.close()
    return state, {"admin": admin, "alice": alice, "bob": bob}


def _answers(server: ServerProcess, tokens: dict[str, str]) -> dict[tuple[str, str], object]:
    out: dict[tuple[str, str], object] = {}
    for who, token in tokens.items():
        for name in ("chat", "split", "missing"):
            answer = _ask(server, name, token)
            out[(who, name)] = answer.status_code
    out[("anonymous", "chat")] = _ask(server, "chat", "dse_not_a_token").status_code
    return out


def test_a_migrated_state_serves_the_same(
    tmp_path: Path, upstream: MockUpstream, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path / "home"))
    # The test cluster trusts loopback, so a password in the URL is accepted: none may show.
    postgres_url = postgres_url.replace("postgres@", f"postgres:{PASSWORD}@")
    state, tokens = _sqlite_state(tmp_path, upstream.url + "/v1")
    with ServerProcess(state) as before:
        expected = _answers(before, tokens)
        listed = httpx.get(
            before.url + "/api/2.0/serving-endpoints",
            headers={"Authorization": f"Bearer {tokens['admin']}"},
        ).json()
    assert expected[("alice", "split")] == 200 and expected[("bob", "split")] != 200
    source = open_state(state)
    snapshot, history = source.snapshot(), source.history("chat")
    source.close()
    # Usage of the past comes along (the UI's metrics, `engine usage`).
    past = UsageRecorder(state.parent / "usage.db")
    past.start()
    for i in range(3):
        past.record(UsageRecord(1_700_000_000_000 + i, "chat", "gpt4", "alice", 200, 1.5, 3, i))
    past.close()
    usage = read_usage(state.parent / "usage.db")

    migrated = run_cli("state", "migrate", "--state", str(state), "--to", postgres_url)
    assert migrated.returncode == 0, migrated.stderr
    assert "row counts and the snapshot match" in migrated.stdout
    assert SECRET not in migrated.stdout + migrated.stderr
    assert PASSWORD not in migrated.stdout + migrated.stderr and "***" in migrated.stdout

    target = open_state(postgres_url)
    try:
        assert target.snapshot() == snapshot and target.history("chat") == history
        assert target.hosts() == [] and target.locks() == []
        assert read_usage(resolve_state(postgres_url)) == usage and len(usage) >= 3
    finally:
        target.close()
    upstream.requests.clear()
    with ServerProcess(postgres_url, log_dir=tmp_path) as after:
        assert _answers(after, tokens) == expected
        assert (
            httpx.get(
                after.url + "/api/2.0/serving-endpoints",
                headers={"Authorization": f"Bearer {tokens['admin']}"},
            ).json()
            == listed
        )
    # The secret came along, still encrypted, and resolves with the copied key.
    assert upstream.requests and all(
        r.headers["authorization"] == f"Bearer {SECRET}" for r in upstream.requests
    )

    again = run_cli("state", "migrate", "--state", str(state), "--to", postgres_url)
    assert again.returncode == 1
    [line] = again.stderr.splitlines()
    assert line.startswith("error: ") and "is not empty" in line and "Traceback" not in line
    assert PASSWORD not in line and PASSWORD not in after.log.read_text()


def test_migrate_refuses_what_it_cannot_copy(tmp_path: Path, postgres_url: str) -> None:
    missing = run_cli(
        "state", "migrate", "--state", str(tmp_path / "nope.db"), "--to", postgres_url
    )
    assert missing.returncode == 1 and "no state file" in missing.stderr
    not_pg = run_cli("state", "migrate", "--state", str(tmp_path / "a.db"), "--to", "b.db")
    assert not_pg.returncode == 1 and "postgresql://" in not_pg.stderr


def test_a_postgres_restart_keeps_serving_then_reconnects(
    tmp_path: Path,
    upstream: MockUpstream,
    postgres_cluster: PostgresCluster,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENGINE_HOME", str(tmp_path / "home"))
    base = upstream.url + "/v1"
    engine = Engine(postgres_url)
    engine.secrets.create_scope("scope")
    engine.secrets.put_secret("scope", "openai", "sk-x")
    specs = write_specs(tmp_path / "specs", [endpoint("chat", [openai_entity("gpt4", "g", base)])])
    assert engine.apply(specs)[1].ok
    _, token = create_token(engine.store, "alice@example.com")
    engine.close()
    with ServerProcess(postgres_url, log_dir=tmp_path) as server:
        assert _ask(server, "chat", token).status_code == 200
        serial = httpx.get(server.url + "/health").json()["serial"]
        postgres_cluster.stop()
        try:
            # Down: the last good table keeps answering, requests and health alike.
            for _ in range(5):
                assert _ask(server, "chat", token).status_code == 200
                time.sleep(0.2)
            assert httpx.get(server.url + "/health").json()["serial"] == serial
        finally:
            postgres_cluster.start_again()
        # Back: a change made elsewhere reaches the host through a new connection.
        engine = Engine(postgres_url)
        write_specs(
            tmp_path / "specs",
            [
                endpoint("chat", [openai_entity("gpt4", "g", base)]),
                endpoint("later", [openai_entity("m", "g2", base)]),
            ],
        )
        assert engine.apply(specs)[1].ok
        server.wait_serial(engine.store.serial, timeout=30)
        engine.close()
        assert _ask(server, "later", token).status_code == 200
    assert "cannot refresh the routing table" in server.log.read_text()


def test_an_apply_killed_midway_is_taken_over_on_postgres(
    tmp_path: Path, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL an apply while it starts a runner: its locks stay in the database, and the
    next apply takes them over (dead pid on this host) and converges."""
    from engine_harness import register_test_models
    from executor_fixture import ControllableExecutor
    from test_crash_recovery import AFTER, BEFORE

    monkeypatch.setenv("ENGINE_HOME", str(tmp_path / "home"))
    register_test_models(postgres_url)
    env = {
        "ENGINE_STATE": postgres_url,
        "ENGINE_EXECUTOR_PLUGINS": "executor_fixture:register",
        "TEST_EXECUTOR_DIR": str(tmp_path / "running"),
    }
    specs = write_specs(tmp_path / "specs", BEFORE)
    assert run_cli("apply", str(specs), "--auto-approve", env=env).returncode == 0
    write_specs(specs, AFTER)
    crash = {**env, "TEST_EXECUTOR_CRASH_AT": "start:3"}
    assert run_cli("apply", str(specs), "--auto-approve", env=crash).returncode == -9
    store = open_state(postgres_url)
    try:
        assert store.locks(), "the killed apply's locks are still there"
    finally:
        store.close()
    again = run_cli("apply", str(specs), "--auto-approve", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert run_cli("plan", str(specs), "--detailed-exitcode", env=env).returncode == 0
    engine = Engine(postgres_url, ControllableExecutor(tmp_path / "running"))
    try:
        assert engine.executor.running() == {e.id for e in engine.store.entities()}
        assert {r.name for r in engine.store.list_endpoints()} == {"keep", "new"}
        assert engine.store.locks() == []
    finally:
        engine.close()
