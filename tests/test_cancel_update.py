"""Cancel a config update in progress: the REST route and `engine cancel`, on a real host.

The controllable executor holds the new entity's readiness check (TEST_EXECUTOR_HOLD), so the
update stays IN_PROGRESS until it is canceled. After a cancel: UPDATE_CANCELED with a message,
the old config active and its entity still running, the pending entity stopped (its marker
file gone), and the next update goes through as usual. Who may cancel follows CAN_MANAGE.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine, run_cli
from serving_harness import ServerProcess

from engine.access.tokens import create_token
from engine.state import open_state


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


def _config(entity: str) -> dict[str, Any]:
    return {"served_entities": [_entity(entity)]}


def _wait_update(client: httpx.Client, name: str, want: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        body = client.get(f"/api/2.0/serving-endpoints/{name}").json()
        if body["state"]["config_update"] == want:
            return body
        assert time.monotonic() < deadline, body["state"]
        time.sleep(0.05)


def _running(run_dir: Path) -> list[str]:
    return sorted(p.read_text() for p in run_dir.glob("*.json"))


@pytest.fixture
def host(tmp_path: Path, state_url: str):  # noqa: ANN201
    engine = Engine(state_url)
    engine.secrets.create_scope("team")
    engine.secrets.put_secret("team", "openai", "sk-team")
    tokens = {
        "admin": create_token(engine.store, "admin@example.com", admin=True)[1],
        "viewer": create_token(engine.store, "viewer@example.com")[1],
    }
    engine.close()
    run_dir = tmp_path / "run"
    env = {
        "ENGINE_EXECUTOR_PLUGINS": "executor_fixture:register",
        "TEST_EXECUTOR_DIR": str(run_dir),
        "TEST_EXECUTOR_EXTERNAL": "1",
        "TEST_EXECUTOR_HOLD": "held",
    }
    with ServerProcess(state_url, env=env, log_dir=tmp_path) as server:
        headers = {"Authorization": f"Bearer {tokens['admin']}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            server.client = client  # type: ignore[attr-defined]
            server.run_dir = run_dir  # type: ignore[attr-defined]
            server.tokens = tokens  # type: ignore[attr-defined]
            yield server
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "release-held").touch()  # never leave a thread blocked at shutdown


def _start_held_update(client: httpx.Client, name: str) -> None:
    created = client.post(
        "/api/2.0/serving-endpoints", json={"name": name, "config": _config("first")}
    )
    assert created.status_code == 200, created.text
    _wait_update(client, name, "NOT_UPDATING")
    held = client.put(f"/api/2.0/serving-endpoints/{name}/config", json=_config("held"))
    assert held.status_code == 200, held.text
    assert held.json()["state"]["config_update"] == "IN_PROGRESS"


def test_rest_cancel_stops_the_pending_entity_and_keeps_the_old_config(host: ServerProcess) -> None:
    client: httpx.Client = host.client  # type: ignore[attr-defined]
    run_dir: Path = host.run_dir  # type: ignore[attr-defined]
    _start_held_update(client, "e")
    deadline = time.monotonic() + 60
    while '"entity": "held"' not in " ".join(_running(run_dir)):  # started, not ready
        assert time.monotonic() < deadline
        time.sleep(0.05)

    refused = client.post("/api/2.0/serving-endpoints/e/config/cancel", json={"now": True})
    assert refused.status_code == 400 and refused.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    viewer = {"Authorization": f"Bearer {host.tokens['viewer']}"}  # type: ignore[attr-defined]
    # `users` may query what the admin created, not manage it.
    denied = client.post("/api/2.0/serving-endpoints/e/config/cancel", headers=viewer)
    assert denied.status_code == 403 and denied.json()["error_code"] == "PERMISSION_DENIED"
    assert _wait_update(client, "e", "IN_PROGRESS")

    canceled = client.post("/api/2.0/serving-endpoints/e/config/cancel")
    assert canceled.status_code == 200, canceled.text
    body = canceled.json()
    assert body["state"] == {
        "ready": "READY",
        "config_update": "UPDATE_CANCELED",
        "config_update_message": "config version 2 canceled; the previous config keeps serving",
    }
    assert body["config"]["config_version"] == 1 and "pending_config" not in body
    assert [e["name"] for e in body["config"]["served_entities"]] == ["first"]
    running = _running(run_dir)
    assert len(running) == 1 and '"entity": "first"' in running[0]
    store = open_state(host.state)
    try:
        assert [(e.name, e.role) for e in store.entities("e")] == [("first", "active")]
        actions = [h.action for h in store.history("e")]
        assert actions[-2:] == ["cancel-requested", "update-canceled"]
    finally:
        store.close()

    again = client.post("/api/2.0/serving-endpoints/e/config/cancel")
    assert again.status_code == 409 and "no config update in progress" in again.json()["message"]
    # A canceled update does not block the next one.
    (run_dir / "release-held").touch()
    assert (
        client.put("/api/2.0/serving-endpoints/e/config", json=_config("held")).status_code == 200
    )
    after = _wait_update(client, "e", "NOT_UPDATING")
    assert after["config"]["config_version"] == 2
    assert [e["name"] for e in after["config"]["served_entities"]] == ["held"]


def test_engine_cancel_cancels_an_update_run_by_the_host(host: ServerProcess) -> None:
    client: httpx.Client = host.client  # type: ignore[attr-defined]
    _start_held_update(client, "c")
    as_viewer = run_cli(
        "cancel", "c", "--state", str(host.state), env={"ENGINE_TOKEN": host.tokens["viewer"]}
    )  # type: ignore[attr-defined]
    assert as_viewer.returncode == 1
    assert (
        as_viewer.stderr.strip()
        == "error: CAN_MANAGE is required to cancel the update of endpoint 'c'"
    )
    result = run_cli("cancel", "c", "--state", str(host.state))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "c: UPDATE_CANCELED: config version 2 canceled; the previous config keeps serving"
    )
    assert _wait_update(client, "c", "UPDATE_CANCELED")["config"]["config_version"] == 1
