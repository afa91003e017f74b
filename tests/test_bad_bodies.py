"""Bodies a buggy client or an attacker would send, against a real `engine serve`: every one
is a 400 with the platform's error body, and nothing changes (checked in the state itself)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine
from mock_http import MockUpstream
from serving_harness import ServerProcess, openai_entity, openai_upstream

from engine.access.tokens import create_token
from engine.secrets.store import secret_store_for_state
from engine.state import SqliteStateStore

EP = "guarded"
LIMITS = [{"calls": 7, "renewal_period": "minute", "key": "user"}]
TAGS = [{"key": "team", "value": "ml"}]
GATEWAY = {"usage_tracking_config": {"enabled": True}}


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(openai_upstream) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream):  # noqa: ANN201
    root = tmp_path_factory.mktemp("bodies")
    engine = Engine(root / "state.db")
    _, admin = create_token(engine.store, "admin@example.com", admin=True)
    engine.secrets.create_scope("scope")
    engine.secrets.put_secret("scope", "openai", "sk-test")
    engine.close()
    with ServerProcess(root / "state.db") as process:
        client = httpx.Client(
            base_url=process.url, headers={"Authorization": f"Bearer {admin}"}, timeout=30
        )
        body = {
            "name": EP,
            "config": {"served_entities": [openai_entity("gpt", "gpt-4", upstream.url + "/v1")]},
            "rate_limits": LIMITS,
            "tags": TAGS,
            "ai_gateway": GATEWAY,
        }
        assert client.post("/api/2.0/serving-endpoints", json=body).status_code == 200
        deadline = time.monotonic() + 120
        while _update_state(client) != "NOT_UPDATING":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        endpoint_id = client.get(f"/api/2.0/serving-endpoints/{EP}").json()["id"]
        acl = {"access_control_list": [{"user_name": "bob", "permission_level": "CAN_QUERY"}]}
        assert client.put(f"{PERMISSIONS}/{endpoint_id}", json=acl).status_code == 200
        put = {"scope": "scope", "key": "kept", "string_value": "original"}
        assert client.post("/api/2.0/secrets/put", json=put).status_code == 200
        process.client = client  # type: ignore[attr-defined]
        process.endpoint_id = endpoint_id  # type: ignore[attr-defined]
        yield process
        client.close()


PERMISSIONS = "/api/2.0/permissions/serving-endpoints"


def _update_state(client: httpx.Client) -> str:
    return client.get(f"/api/2.0/serving-endpoints/{EP}").json()["state"]["config_update"]


def _everything(server: ServerProcess) -> dict[str, Any]:
    """What a mutation could change: the endpoints as stored, the ACL, the secrets."""
    store = SqliteStateStore(server.state)
    secrets = secret_store_for_state(server.state)
    try:
        rows = {r.name: (r.spec, r.config_version, r.pending) for r in store.list_endpoints()}
        endpoint_id = server.endpoint_id  # type: ignore[attr-defined]
        return {
            "endpoints": rows,
            "acl": sorted(store.permissions(endpoint_id)),
            "scopes": sorted(s.name for s in secrets.list_scopes()),
            "kept": secrets.get_secret("scope", "kept"),
        }
    finally:
        store.close()
        secrets.close()


def _send(server: ServerProcess, method: str, path: str, content: bytes) -> httpx.Response:
    client: httpx.Client = server.client  # type: ignore[attr-defined]
    path = path.replace("{id}", server.endpoint_id)  # type: ignore[attr-defined]
    headers = {"content-type": "application/json"}
    return client.request(method, path, content=content, headers=headers)


def _assert_400(response: httpx.Response, *words: str) -> None:
    assert response.status_code == 400, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] in ("INVALID_PARAMETER_VALUE", "MALFORMED_REQUEST")
    for word in words:
        assert word in body["message"], body["message"]


# -- JSON the server cannot hold ------------------------------------------------------------

BODY_ROUTES = [
    ("POST", "/api/2.0/serving-endpoints"),
    ("PUT", f"/api/2.0/serving-endpoints/{EP}/config"),
    ("PUT", f"/api/2.0/serving-endpoints/{EP}/rate-limits"),
    ("PATCH", f"/api/2.0/serving-endpoints/{EP}/tags"),
    ("PUT", f"/api/2.0/serving-endpoints/{EP}/ai-gateway"),
    ("PUT", PERMISSIONS + "/{id}"),
    ("PATCH", PERMISSIONS + "/{id}"),
    ("POST", "/api/2.0/secrets/scopes/create"),
    ("POST", "/api/2.0/secrets/scopes/delete"),
    ("POST", "/api/2.0/secrets/put"),
    ("POST", "/api/2.0/secrets/delete"),
    ("POST", f"/serving-endpoints/{EP}/invocations"),
    ("POST", f"/serving-endpoints/{EP}/served-models/gpt/invocations"),
    ("POST", "/serving-endpoints/chat/completions"),
    ("POST", "/serving-endpoints/completions"),
    ("POST", "/serving-endpoints/embeddings"),
]

# Each would be accepted by its route but for the one bad thing in it.
UNREADABLE = {
    "nested 1000 deep": (
        b'{"model": "guarded", "name": "x", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        "nested",
    ),
    "nested 100000 deep": (b"[" * 100_000 + b"]" * 100_000, "nested"),
    "5000-digit integer": (
        b'{"model": "guarded", "name": "x", "max_tokens": ' + b"9" * 5000 + b"}",
        "digits",
    ),
    "lone surrogate": (
        b'{"model": "guarded", "name": "x", "scope": "scope", "key": "kept", '
        b'"string_value": "\\ud800", "add_tags": [{"key": "\\udfff"}], "rate_limits": [], '
        b'"messages": [{"role": "user", "content": "\\ud800"}]}',
        "surrogate",
    ),
}


@pytest.mark.parametrize("kind", UNREADABLE)
@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_unreadable_json_is_a_400_on_every_route(
    server: ServerProcess, upstream: MockUpstream, method: str, path: str, kind: str
) -> None:
    before, sent = _everything(server), len(upstream.requests)
    content, word = UNREADABLE[kind]
    _assert_400(_send(server, method, path, content), word)
    assert _everything(server) == before
    assert len(upstream.requests) == sent  # nothing went upstream


def test_surrogate_pairs_are_fine(server: ServerProcess) -> None:
    """Only lone surrogates are refused: an escaped pair is one character (an emoji here)."""
    add = b'{"add_tags": [{"key": "mood", "value": "\\ud83d\\ude00"}]}'
    response = _send(server, "PATCH", f"/api/2.0/serving-endpoints/{EP}/tags", add)
    assert response.status_code == 200, response.text
    assert {"key": "mood", "value": "\N{GRINNING FACE}"} in response.json()["tags"]
    undo = _send(
        server, "PATCH", f"/api/2.0/serving-endpoints/{EP}/tags", b'{"delete_tags": ["mood"]}'
    )
    assert undo.json()["tags"] == TAGS


# -- bodies of the wrong shape --------------------------------------------------------------


def _shape_cases() -> list[Any]:
    entity = {"name": "x", "external_model": {"name": "m"}}
    config = f"/api/2.0/serving-endpoints/{EP}/config"
    limits = f"/api/2.0/serving-endpoints/{EP}/rate-limits"
    tags = f"/api/2.0/serving-endpoints/{EP}/tags"
    gateway = f"/api/2.0/serving-endpoints/{EP}/ai-gateway"
    create = "/api/2.0/serving-endpoints"
    acl = PERMISSIONS + "/{id}"
    entry = {"user_name": "eve", "permission_level": "CAN_MANAGE"}
    cases: list[tuple[str, str, Any, str]] = [
        ("PUT", limits, [], "JSON object"),
        ("PUT", limits, "x", "JSON object"),
        ("PUT", limits, None, "JSON object"),
        ("PUT", limits, 0, "JSON object"),
        ("PUT", limits, {"rate_limit": LIMITS}, "`rate_limit`"),
        ("PUT", limits, {"ratelimits": LIMITS}, "`ratelimits`"),
        ("PUT", limits, {"rate_limits": None}, "`rate_limits`"),
        ("PUT", limits, {"rate_limits": "x"}, "`rate_limits`"),
        ("PUT", limits, {"rate_limits": LIMITS[0]}, "`rate_limits`"),
        ("PUT", limits, {"rate_limits": ["x"]}, "rate_limits[0]"),
        ("PUT", limits, {"rate_limits": [], "extra": 1}, "`extra`"),
        ("PUT", limits, {"name": "other", "rate_limits": []}, "other"),
        ("PUT", config, {}, "served_entities"),
        ("PUT", config, [], "JSON object"),
        ("PUT", config, None, "JSON object"),
        ("PUT", config, {"served_entitie": [entity]}, "`served_entitie`"),
        ("PUT", config, {"served_entities": []}, "served_entities"),
        ("PUT", config, {"served_entities": None}, "served_entities"),
        ("PUT", config, {"traffic_config": {"routes": []}}, "served_entities"),
        ("PUT", config, {"name": "other", "served_entities": [entity]}, "other"),
        ("PATCH", tags, [], "JSON object"),
        ("PATCH", tags, None, "JSON object"),
        ("PATCH", tags, {"add_tag": [{"key": "a"}]}, "`add_tag`"),
        ("PATCH", tags, {"tags": [{"key": "a"}]}, "`tags`"),
        ("PATCH", tags, {"delete_tag": ["team"]}, "`delete_tag`"),
        ("PATCH", tags, {"add_tags": None, "delete_tags": ["team"]}, "`add_tags`"),
        ("PATCH", tags, {"delete_tags": "team"}, "`delete_tags`"),
        ("PATCH", tags, {"delete_tags": None}, "`delete_tags`"),
        ("PATCH", tags, {"add_tags": {"key": "a"}}, "`add_tags`"),
        ("PATCH", tags, {"add_tags": [{"value": "v"}], "delete_tags": ["team"]}, "add_tags[0]"),
        ("PATCH", tags, {"add_tags": ["a"]}, "add_tags[0]"),
        ("PATCH", tags, {"delete_tags": ["team", 5]}, "delete_tags[1]"),
        ("PUT", gateway, [], "JSON object"),
        ("PUT", gateway, None, "JSON object"),
        ("PUT", gateway, "x", "JSON object"),
        ("PUT", gateway, {"rate_limit": LIMITS}, "`rate_limit`"),
        ("PUT", gateway, {"usage_tracking": {"enabled": False}}, "`usage_tracking`"),
        ("PUT", gateway, {"name": "other"}, "other"),
        ("POST", create, [], "JSON object"),
        ("POST", create, None, "JSON object"),
        ("POST", create, {}, "`name`"),
        ("POST", create, {"nme": "fresh"}, "`nme`"),
        ("POST", create, {"name": 5}, "`name`"),
        ("POST", create, {"name": "fresh", "confg": {"served_entities": [entity]}}, "`confg`"),
        ("PUT", acl, [], "JSON object"),
        ("PUT", acl, None, "JSON object"),
        ("PUT", acl, {"access_control_lists": [entry]}, "`access_control_lists`"),
        ("PUT", acl, {"acl": [entry]}, "`acl`"),
        ("PUT", acl, {"access_control_list": None}, "`access_control_list`"),
        ("PATCH", acl, {"access_control_list": entry}, "`access_control_list`"),
        ("PATCH", acl, {"access_control_list": [{**entry, "group_nam": "x"}]}, "`group_nam`"),
        ("PATCH", acl, {"access_control_list": ["eve"]}, "access_control_list[0]"),
    ]
    put = "/api/2.0/secrets/put"
    kept = {"scope": "scope", "key": "kept"}
    latin1 = base64.b64encode(b"caf\xe9").decode()
    cases += [
        ("POST", put, [], "JSON object"),
        ("POST", put, {**kept, "string_valu": "new"}, "`string_valu`"),
        ("POST", put, {**kept, "string_value": "new", "bytes_value": "bmV3"}, "bytes_value"),
        ("POST", put, {**kept, "string_value": "new", "overwrite": True}, "`overwrite`"),
        ("POST", put, {**kept, "bytes_value": latin1}, "bytes_value"),
        ("POST", "/api/2.0/secrets/delete", {**kept, "keys": ["kept"]}, "`keys`"),
        ("POST", "/api/2.0/secrets/delete", None, "JSON object"),
        ("POST", "/api/2.0/secrets/scopes/delete", {"scope": "scope", "all": True}, "`all`"),
        ("POST", "/api/2.0/secrets/scopes/create", {"scope": "new", "scop": "x"}, "`scop`"),
        (
            "POST",
            "/api/2.0/secrets/scopes/create",
            {"scope": "new", "scope_backend_type": "AZURE_KEYVAULT"},
            "scope_backend_type",
        ),
    ]
    return [
        pytest.param(m, p, b, w, id=f"{m} {p.rsplit('/', 1)[-1]} {json.dumps(b)[:40]}")
        for m, p, b, w in cases
    ]


@pytest.mark.parametrize(("method", "path", "body", "word"), _shape_cases())
def test_wrong_shape_is_a_400_and_changes_nothing(
    server: ServerProcess, method: str, path: str, body: Any, word: str
) -> None:
    before = _everything(server)
    _assert_400(_send(server, method, path, json.dumps(body).encode()), word)
    assert _everything(server) == before


def test_the_documented_removals_still_work(server: ServerProcess) -> None:
    """`[]` / `{}` (what the SDK sends for "none") remove rate limits; then they come back."""
    path = f"/api/2.0/serving-endpoints/{EP}/rate-limits"
    for empty in (b'{"rate_limits": []}', b"{}"):
        response = _send(server, "PUT", path, empty)
        assert response.status_code == 200 and response.json() == {"rate_limits": []}
        restored = _send(server, "PUT", path, json.dumps({"rate_limits": LIMITS}).encode())
        assert restored.json() == {"rate_limits": LIMITS}
    spec = _everything(server)["endpoints"][EP][0]
    assert spec["rate_limits"] == LIMITS


def test_server_log_has_no_traceback(server: ServerProcess) -> None:
    assert "Traceback" not in Path(server.log).read_text()
