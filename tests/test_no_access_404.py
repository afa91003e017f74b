"""A caller with no access to an endpoint cannot tell it from one that does not exist.

On a real `engine serve`: team A's endpoint is managed by alice (team_a), carol may only view
it, bob (team_b) has no access. Every route bob tries on it answers what it answers for an
endpoint that does not exist (404 RESOURCE_DOES_NOT_EXIST, the same message but for the name),
and changes nothing; carol, who may see it, is told she lacks the level (403).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine
from mock_http import MockUpstream
from serving_harness import ServerProcess, openai_upstream

from engine.access.tokens import create_token

NAME = "team-a-chat"
GHOST = "team-a-ghost"  # never created
QUERY = {"messages": [{"role": "user", "content": "hi"}]}


def _config(base: str) -> dict[str, Any]:
    entity = {
        "name": "m",
        "external_model": {
            "name": "gpt-4",
            "provider": "openai",
            "task": "llm/v1/chat",
            "openai_config": {"openai_api_base": base, "openai_api_key_plaintext": "sk-x"},
        },
    }
    return {"served_entities": [entity]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("no-access")
    engine = Engine(root / "state.db")
    tokens = {
        "admin": create_token(engine.store, "admin@example.com", admin=True)[1],
        "alice": create_token(engine.store, "alice@example.com", groups=["team_a"])[1],
        "bob": create_token(engine.store, "bob@example.com", groups=["team_b"])[1],
        "carol": create_token(engine.store, "carol@example.com")[1],
    }
    engine.close()
    with MockUpstream(openai_upstream) as upstream, ServerProcess(root / "state.db") as process:
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        with httpx.Client(base_url=process.url, headers=admin, timeout=30) as client:
            body = {"name": NAME, "config": _config(upstream.url + "/v1")}
            created = client.post("/api/2.0/serving-endpoints", json=body)
            assert created.status_code == 200, created.text
            deadline = time.monotonic() + 120
            while client.get(f"/api/2.0/serving-endpoints/{NAME}").json()["state"]["ready"] != (
                "READY"
            ):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            acl = {
                "access_control_list": [
                    {"group_name": "team_a", "permission_level": "CAN_MANAGE"},
                    {"user_name": "carol@example.com", "permission_level": "CAN_VIEW"},
                ]
            }
            put = client.put(
                f"/api/2.0/permissions/serving-endpoints/{created.json()['id']}", json=acl
            )
            assert put.status_code == 200, put.text
        process.tokens = tokens  # type: ignore[attr-defined]
        process.endpoint_id = created.json()["id"]  # type: ignore[attr-defined]
        process.base = upstream.url + "/v1"  # type: ignore[attr-defined]
        yield process


def _attempts(server: ServerProcess, name: str, endpoint_id: str) -> list[tuple[str, str, Any]]:
    """(method, path, JSON body) of every route that names one endpoint."""
    api = f"/api/2.0/serving-endpoints/{name}"
    acl = {
        "access_control_list": [{"user_name": "bob@example.com", "permission_level": "CAN_MANAGE"}]
    }
    return [
        ("GET", api, None),
        ("DELETE", api, None),
        ("PUT", f"{api}/config", _config(server.base)),  # type: ignore[attr-defined]
        ("PUT", f"{api}/rate-limits", {"rate_limits": [{"calls": 1, "renewal_period": "minute"}]}),
        ("PUT", f"{api}/ai-gateway", {"usage_tracking_config": {"enabled": True}}),
        ("PATCH", f"{api}/tags", {"add_tags": [{"key": "owner", "value": "bob"}]}),
        ("GET", f"{api}/openapi", None),
        ("GET", f"{api}/metrics", None),
        ("GET", f"{api}/served-models/m/logs", None),
        ("GET", f"{api}/served-models/m/build-logs", None),
        ("GET", f"/api/2.0/permissions/serving-endpoints/{endpoint_id}", None),
        ("PUT", f"/api/2.0/permissions/serving-endpoints/{endpoint_id}", acl),
        ("PATCH", f"/api/2.0/permissions/serving-endpoints/{endpoint_id}", acl),
        ("GET", f"/api/2.0/permissions/serving-endpoints/{endpoint_id}/permissionLevels", None),
        ("POST", f"/serving-endpoints/{name}/invocations", QUERY),
        ("POST", f"/serving-endpoints/{name}/served-models/m/invocations", QUERY),
        ("POST", "/serving-endpoints/chat/completions", {**QUERY, "model": name}),
    ]


def _call(server: ServerProcess, who: str, method: str, path: str, body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.tokens[who]}"}  # type: ignore[attr-defined]
    return httpx.request(method, server.url + path, json=body, headers=headers, timeout=30)


def test_no_access_reads_as_no_endpoint_on_every_route(server: ServerProcess) -> None:
    endpoint_id: str = server.endpoint_id  # type: ignore[attr-defined]
    real = _attempts(server, NAME, endpoint_id)
    ghost = _attempts(server, GHOST, "0" * len(endpoint_id))
    for (method, path, body), (_, ghost_path, ghost_body) in zip(real, ghost, strict=True):
        answer = _call(server, "bob", method, path, body)
        missing = _call(server, "bob", method, ghost_path, ghost_body)
        assert answer.status_code == 404, (method, path, answer.text)
        assert missing.status_code == 404, (method, ghost_path, missing.text)
        assert answer.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", (method, path)
        unnamed = answer.json()["message"].replace(NAME, "X").replace(endpoint_id, "X")
        expected = (
            missing.json()["message"].replace(GHOST, "X").replace("0" * len(endpoint_id), "X")
        )
        assert unnamed == expected, (method, path)

    # Nothing bob tried changed the endpoint.
    got = _call(server, "alice", "GET", f"/api/2.0/serving-endpoints/{NAME}", None).json()
    assert got["config"]["config_version"] == 1
    assert not got.get("tags") and not got.get("rate_limits") and not got.get("ai_gateway")
    acl = _call(
        server, "alice", "GET", f"/api/2.0/permissions/serving-endpoints/{endpoint_id}", None
    )
    assert "bob@example.com" not in acl.text


def test_view_only_is_told_it_lacks_the_level(server: ServerProcess) -> None:
    endpoint_id: str = server.endpoint_id  # type: ignore[attr-defined]
    readable = {"GET"}
    for method, path, body in _attempts(server, NAME, endpoint_id):
        answer = _call(server, "carol", method, path, body)
        if method in readable:
            assert answer.status_code == 200, (method, path, answer.text)
        else:
            assert answer.status_code == 403, (method, path, answer.text)
            assert answer.json()["error_code"] == "PERMISSION_DENIED"
    got = _call(server, "alice", "GET", f"/api/2.0/serving-endpoints/{NAME}", None).json()
    assert got["config"]["config_version"] == 1 and not got.get("tags")


def test_the_manager_may_still_change_it(server: ServerProcess, tmp_path: Path) -> None:
    tags = {"add_tags": [{"key": "team", "value": "a"}]}
    answer = _call(server, "alice", "PATCH", f"/api/2.0/serving-endpoints/{NAME}/tags", tags)
    assert answer.status_code == 200, answer.text
    assert answer.json()["tags"] == [{"key": "team", "value": "a"}]
