"""Secret scope ACLs on a real `engine serve`, tried as an attacker would: three users of two
teams (alice and carol of team-a, bob of team-b), real tokens, a real provider key in team-a's
scope and an attacker's server that must never receive it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine
from mock_http import MockUpstream
from serving_harness import ROOT, TESTS, ServerProcess, openai_upstream

from engine.access.tokens import create_token

TEAM_A_KEY = "sk-team-a-provider-key-81c2f0d6e4"


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(openai_upstream) as server:
        yield server


@pytest.fixture(scope="module")
def attacker():  # noqa: ANN201
    """bob's own server: it records whatever the engine would send it."""
    with MockUpstream(openai_upstream) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("acls")
    engine = Engine(root / "state.db")
    tokens = {
        "admin": create_token(engine.store, "admin@example.com", admin=True)[1],
        "alice": create_token(engine.store, "alice@example.com", groups=["team-a"])[1],
        "carol": create_token(engine.store, "carol@example.com", groups=["team-a"])[1],
        "bob": create_token(engine.store, "bob@example.com", groups=["team-b"])[1],
    }
    engine.close()
    with ServerProcess(root / "state.db") as process:
        process.tokens = tokens  # type: ignore[attr-defined]
        api = _Api(process)
        # alice creates team-a's scope (so she holds MANAGE) and its key; team-a may read it.
        assert api.post("alice", "secrets/scopes/create", scope="team_a").status_code == 200
        api.ok("alice", "secrets/put", scope="team_a", key="openai", string_value=TEAM_A_KEY)
        api.ok("alice", "secrets/acls/put", scope="team_a", principal="team-a", permission="READ")
        api.ok("bob", "secrets/scopes/create", scope="team_b")
        api.ok("bob", "secrets/put", scope="team_b", key="openai", string_value="sk-team-b")
        process.api = api  # type: ignore[attr-defined]
        yield process


class _Api:
    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.server.tokens[who]}"}  # type: ignore[attr-defined]

    def post(self, who: str, path: str, **body: Any) -> httpx.Response:
        return httpx.post(
            f"{self.server.url}/api/2.0/{path}", json=body, headers=self.headers(who), timeout=30
        )

    def get(self, who: str, path: str, **query: str) -> httpx.Response:
        return httpx.get(
            f"{self.server.url}/api/2.0/{path}", params=query, headers=self.headers(who), timeout=30
        )

    def ok(self, who: str, path: str, **body: Any) -> dict[str, Any]:
        answer = self.post(who, path, **body)
        assert answer.status_code == 200, answer.text
        return answer.json()


def _spec(name: str, base: str, key: str = "{{secrets/team_a/openai}}") -> dict[str, Any]:
    config = {"openai_api_key": key, "openai_api_base": base}
    return {
        "name": name,
        "config": {
            "served_entities": [
                {
                    "name": "gpt",
                    "external_model": {
                        "name": "gpt-4o",
                        "provider": "openai",
                        "task": "llm/v1/chat",
                        "openai_config": config,
                    },
                }
            ]
        },
    }


def _wait_ready(api: _Api, who: str, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        endpoint = api.get(who, f"serving-endpoints/{name}").json()
        if endpoint["state"]["config_update"] != "IN_PROGRESS":
            return endpoint
        time.sleep(0.1)
    raise TimeoutError(name)


def _query(server: ServerProcess, who: str, name: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/serving-endpoints/{name}/invocations",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers=server.api.headers(who),  # type: ignore[attr-defined]
        timeout=30,
    )


def _denied(answer: httpx.Response, *words: str) -> None:
    assert answer.status_code == 403, answer.text
    body = answer.json()
    assert body["error_code"] == "PERMISSION_DENIED"
    for word in words:
        assert word in body["message"], body["message"]


def test_bob_cannot_send_team_a_key_to_his_server(
    server: ServerProcess, attacker: MockUpstream
) -> None:
    api: _Api = server.api  # type: ignore[attr-defined]
    answer = api.post("bob", "serving-endpoints", **_spec("steal", attacker.url + "/v1"))
    _denied(answer, "SEC2", "team_a", "openai_api_key", "bob@example.com")
    # A key that does not exist in a scope bob cannot read: the same answer (no oracle).
    missing = _spec("steal", attacker.url + "/v1", "{{secrets/team_a/nope}}")
    _denied(api.post("bob", "serving-endpoints", **missing), "SEC2", "team_a")
    # In an environment variable of a self-hosted entity too.
    env_spec = {
        "name": "steal-env",
        "config": {
            "served_entities": [
                {
                    "entity_name": "main.default.tiny",
                    "entity_version": "1",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": True,
                    "environment_vars": {"KEY": "{{secrets/team_a/openai}}"},
                }
            ]
        },
    }
    _denied(api.post("bob", "serving-endpoints", **env_spec), "SEC2", "team_a")
    assert api.get("admin", "serving-endpoints/steal").status_code == 404
    assert attacker.requests == []


def test_nobody_may_reference_the_engines_own_scope(server: ServerProcess) -> None:
    api: _Api = server.api  # type: ignore[attr-defined]
    spec = _spec("reuse", "http://127.0.0.1:9/v1", "{{secrets/engine-managed/x.gpt.k.0}}")
    for who in ("bob", "admin"):
        _denied(api.post(who, "serving-endpoints", **spec), "SEC2", "engine-managed")
    for who in ("bob", "admin"):
        _denied(api.get(who, "secrets/list", scope="engine-managed"))
        _denied(api.post(who, "secrets/put", scope="engine-managed", key="k", string_value="v"))
        _denied(api.post(who, "secrets/scopes/delete", scope="engine-managed"))


def test_a_reader_serves_the_key_and_a_manager_without_read_cannot_redirect_it(
    server: ServerProcess, upstream: MockUpstream, attacker: MockUpstream
) -> None:
    api: _Api = server.api  # type: ignore[attr-defined]
    created = api.post("alice", "serving-endpoints", **_spec("team-a-chat", upstream.url + "/v1"))
    assert created.status_code == 200, created.text
    endpoint = _wait_ready(api, "alice", "team-a-chat")
    assert endpoint["state"]["config_update"] == "NOT_UPDATING", endpoint
    before = len(upstream.requests)
    assert _query(server, "alice", "team-a-chat").status_code == 200
    assert upstream.requests[before].headers["authorization"] == f"Bearer {TEAM_A_KEY}"

    # alice lets bob manage the endpoint; bob still may not point the key at his server.
    acl = {
        "access_control_list": [{"user_name": "bob@example.com", "permission_level": "CAN_MANAGE"}]
    }
    answer = httpx.patch(
        f"{server.url}/api/2.0/permissions/serving-endpoints/{endpoint['id']}",
        json=acl,
        headers=api.headers("alice"),
    )
    assert answer.status_code == 200, answer.text
    config = _spec("team-a-chat", attacker.url + "/v1")["config"]
    answer = httpx.put(
        f"{server.url}/api/2.0/serving-endpoints/team-a-chat/config",
        json=config,
        headers=api.headers("bob"),
    )
    _denied(answer, "SEC2", "team_a")
    # A change that does not touch where secrets go needs no READ.
    answer = httpx.patch(
        f"{server.url}/api/2.0/serving-endpoints/team-a-chat/tags",
        json={"add_tags": [{"key": "owner", "value": "bob"}]},
        headers=api.headers("bob"),
    )
    assert answer.status_code == 200, answer.text
    assert attacker.requests == []


@pytest.mark.parametrize(
    ("path", "needed", "args"),
    [
        ("secrets/list", "READ", {}),
        ("secrets/put", "WRITE", {"key": "k", "string_value": "v"}),
        ("secrets/delete", "WRITE", {"key": "k"}),
        ("secrets/acls/list", "MANAGE", {}),
        ("secrets/acls/get", "MANAGE", {"principal": "team-a"}),
        ("secrets/acls/put", "MANAGE", {"principal": "dave@example.com", "permission": "READ"}),
        ("secrets/acls/delete", "MANAGE", {"principal": "dave@example.com"}),
    ],
)
def test_every_secrets_route_needs_its_level(
    server: ServerProcess, path: str, needed: str, args: dict[str, str]
) -> None:
    api: _Api = server.api  # type: ignore[attr-defined]
    scope = f"probe-{path.replace('/', '-')}"
    api.ok("alice", "secrets/scopes/create", scope=scope)
    api.ok("alice", "secrets/put", scope=scope, key="k", string_value="value-5e0b77")
    api.ok("alice", "secrets/acls/put", scope=scope, principal="team-a", permission="READ")
    api.ok(
        "alice", "secrets/acls/put", scope=scope, principal="dave@example.com", permission="READ"
    )
    levels = ["READ", "WRITE", "MANAGE"]

    def call(who: str) -> httpx.Response:
        if path.endswith(("list", "get")):
            return api.get(who, path, scope=scope, **args)
        return api.post(who, path, scope=scope, **args)

    # bob (another team) holds nothing; carol holds READ through team-a, then more.
    _denied(call("bob"), needed, scope)
    for level in levels[: levels.index(needed)]:
        api.ok(
            "alice",
            "secrets/acls/put",
            scope=scope,
            principal="carol@example.com",
            permission=level,
        )
        _denied(call("carol"), needed, scope)
    api.ok(
        "alice", "secrets/acls/put", scope=scope, principal="carol@example.com", permission=needed
    )
    answer = call("carol")
    assert answer.status_code == 200, answer.text
    assert "value-5e0b77" not in answer.text  # never a value


def test_scopes_are_managed_by_their_creator_and_hidden_from_others(server: ServerProcess) -> None:
    api: _Api = server.api  # type: ignore[attr-defined]
    listed = api.get("bob", "secrets/scopes/list").json()["scopes"]
    assert "team_a" not in [s["name"] for s in listed] and "team_b" in [s["name"] for s in listed]
    # bob cannot overwrite team-a's key, delete it, or delete the scope...
    _denied(api.post("bob", "secrets/put", scope="team_a", key="openai", string_value="sk-evil"))
    _denied(api.post("bob", "secrets/delete", scope="team_a", key="openai"))
    _denied(api.post("bob", "secrets/scopes/delete", scope="team_a"))
    _denied(
        api.post(
            "bob",
            "secrets/acls/put",
            scope="team_a",
            principal="bob@example.com",
            permission="MANAGE",
        )
    )
    # ...nor learn whether a scope exists: one that does not answers the same.
    _denied(api.post("bob", "secrets/put", scope="no_such_scope", key="k", string_value="v"))
    # carol of team-a reads, but may not write.
    assert api.get("carol", "secrets/list", scope="team_a").status_code == 200
    _denied(api.post("carol", "secrets/put", scope="team_a", key="openai", string_value="x"))
    # The creator holds MANAGE; admins may do everything.
    items = api.get("alice", "secrets/acls/list", scope="team_a").json()["items"]
    assert {"principal": "alice@example.com", "permission": "MANAGE"} in items
    assert api.get("admin", "secrets/acls/list", scope="team_b").status_code == 200
    # A scope re-created under a deleted one's name starts from its new creator alone.
    api.ok("bob", "secrets/scopes/create", scope="reborn")
    api.ok("bob", "secrets/acls/put", scope="reborn", principal="team-a", permission="READ")
    api.ok("bob", "secrets/scopes/delete", scope="reborn")
    api.ok("alice", "secrets/scopes/create", scope="reborn")
    assert api.get("alice", "secrets/acls/list", scope="reborn").json()["items"] == [
        {"principal": "alice@example.com", "permission": "MANAGE"}
    ]
    _denied(api.get("bob", "secrets/list", scope="reborn"))


def test_databricks_sdk_acl_calls(server: ServerProcess) -> None:
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config
    from databricks.sdk.errors import PermissionDenied
    from databricks.sdk.service.workspace import AclPermission

    def client(who: str) -> WorkspaceClient:
        token = server.tokens[who]  # type: ignore[attr-defined]
        return WorkspaceClient(config=Config(host=server.url, token=token, retry_timeout_seconds=5))

    alice, bob = client("alice"), client("bob")
    alice.secrets.create_scope("sdk_scope")
    alice.secrets.put_secret("sdk_scope", "k", string_value="value-9c1d")
    alice.secrets.put_acl("sdk_scope", "bob@example.com", AclPermission.READ)
    assert alice.secrets.get_acl("sdk_scope", "bob@example.com").permission == AclPermission.READ
    listed = {a.principal: a.permission for a in alice.secrets.list_acls("sdk_scope")}
    assert listed == {
        "alice@example.com": AclPermission.MANAGE,
        "bob@example.com": AclPermission.READ,
    }
    assert [s.key for s in bob.secrets.list_secrets("sdk_scope")] == ["k"]
    with pytest.raises(PermissionDenied):
        bob.secrets.put_secret("sdk_scope", "k", string_value="overwritten")
    with pytest.raises(PermissionDenied):
        bob.secrets.put_acl("sdk_scope", "bob@example.com", AclPermission.MANAGE)
    alice.secrets.delete_acl("sdk_scope", "bob@example.com")
    with pytest.raises(PermissionDenied):
        list(bob.secrets.list_secrets("sdk_scope"))


def test_a_revoked_read_stops_the_creators_endpoint(
    server: ServerProcess, upstream: MockUpstream
) -> None:
    """carol reads team_a through team-a; when alice removes that entry, carol's endpoint stops
    sending the key at once (it resolves as carol), and serves again once READ is back."""
    api: _Api = server.api  # type: ignore[attr-defined]
    created = api.post("carol", "serving-endpoints", **_spec("carol-chat", upstream.url + "/v1"))
    assert created.status_code == 200, created.text
    assert _wait_ready(api, "carol", "carol-chat")["state"]["config_update"] == "NOT_UPDATING"
    assert _query(server, "carol", "carol-chat").status_code == 200

    api.ok("alice", "secrets/acls/delete", scope="team_a", principal="team-a")
    before = len(upstream.requests)
    deadline = time.monotonic() + 60
    answer = _query(server, "carol", "carol-chat")
    while answer.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        before = len(upstream.requests)
        answer = _query(server, "carol", "carol-chat")
    assert answer.status_code == 503, answer.text
    assert "team_a" in answer.json()["message"]
    assert len(upstream.requests) == before

    api.ok("alice", "secrets/acls/put", scope="team_a", principal="team-a", permission="READ")
    deadline = time.monotonic() + 60
    while _query(server, "carol", "carol-chat").status_code != 200:
        assert time.monotonic() < deadline, "the endpoint did not serve again"
        time.sleep(0.1)


def test_the_cli_plans_as_the_token_it_is_given(server: ServerProcess, tmp_path: Path) -> None:
    spec = tmp_path / "specs" / "steal.yaml"
    spec.parent.mkdir()
    spec.write_text(json.dumps(_spec("cli-steal", "http://127.0.0.1:9/v1")))
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}

    def plan(token: str | None) -> subprocess.CompletedProcess[str]:
        run_env = {**env, **({"ENGINE_TOKEN": token} if token else {})}
        run_env.pop("ENGINE_TOKEN", None) if token is None else None
        command = [
            sys.executable,
            "-m",
            "engine.cli",
            "plan",
            str(spec),
            "--state",
            str(server.state),
        ]
        return subprocess.run(command, capture_output=True, text=True, env=run_env, timeout=120)

    bob = plan(server.tokens["bob"])  # type: ignore[attr-defined]
    assert bob.returncode == 1, bob.stdout + bob.stderr
    out = bob.stdout + bob.stderr
    assert "[SEC2]" in out and "team_a" in out and "openai_api_key" in out
    assert "Traceback" not in out
    alice = plan(server.tokens["alice"])  # type: ignore[attr-defined]
    assert alice.returncode == 0, alice.stdout + alice.stderr
    bogus = plan("dse_not-a-token")
    assert (
        bogus.returncode == 2 and "ENGINE_TOKEN" in bogus.stderr and "dse_not" not in bogus.stderr
    )


def test_a_users_token_cannot_mint_tokens_through_the_cli(server: ServerProcess) -> None:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    command = [sys.executable, "-m", "engine.cli", "tokens", "create", "--user", "bob@example.com"]
    command += ["--admin", "--state", str(server.state)]
    as_bob = {**env, "ENGINE_TOKEN": server.tokens["bob"]}  # type: ignore[attr-defined]
    refused = subprocess.run(command, capture_output=True, text=True, env=as_bob, timeout=120)
    assert refused.returncode == 1 and "only an admin" in refused.stderr
    assert "dse_" not in refused.stdout
    as_admin = {**env, "ENGINE_TOKEN": server.tokens["admin"]}  # type: ignore[attr-defined]
    made = subprocess.run(command, capture_output=True, text=True, env=as_admin, timeout=120)
    assert made.returncode == 0 and "dse_" in made.stdout


def test_an_outsider_sees_no_secret_token_or_hidden_endpoint(
    server: ServerProcess, upstream: MockUpstream, tmp_path: Path
) -> None:
    """Everything bob can ask, and every file and log the engine writes, holds no secret value,
    no token and (for bob) no name of an endpoint he has no access to."""
    api: _Api = server.api  # type: ignore[attr-defined]
    hidden = "hidden-probe-7d3a"
    created = api.post("alice", "serving-endpoints", **_spec(hidden, upstream.url + "/v1"))
    assert created.status_code == 200, created.text
    endpoint = _wait_ready(api, "alice", hidden)
    # Only team-a may see it: replace the default ACL (users: CAN_QUERY).
    acl = {"access_control_list": [{"group_name": "team-a", "permission_level": "CAN_QUERY"}]}
    answer = httpx.put(
        f"{server.url}/api/2.0/permissions/serving-endpoints/{endpoint['id']}",
        json=acl,
        headers=api.headers("alice"),
    )
    assert answer.status_code == 200, answer.text
    assert _query(server, "alice", hidden).status_code == 200  # traffic: metrics now name it

    asked: list[httpx.Response] = []
    headers = api.headers("bob")
    base = f"{server.url}/api/2.0/serving-endpoints"
    for method, url in [
        ("GET", f"{server.url}/metrics"),
        ("GET", base),
        ("GET", f"{base}/{hidden}"),
        ("DELETE", f"{base}/{hidden}"),
        ("GET", f"{base}/{hidden}/metrics"),
        ("GET", f"{base}/{hidden}/openapi"),
        ("GET", f"{base}/{hidden}/served-models/gpt/logs"),
        ("GET", f"{server.url}/api/2.0/permissions/serving-endpoints/{endpoint['id']}"),
        ("GET", f"{server.url}/api/2.0/secrets/scopes/list"),
        ("GET", f"{server.url}/api/2.0/secrets/list?scope=team_a"),
        ("GET", f"{server.url}/api/2.0/secrets/acls/list?scope=team_a"),
        ("POST", f"{server.url}/serving-endpoints/{hidden}/invocations"),
    ]:
        body = {"messages": [{"role": "user", "content": "hi"}]} if method == "POST" else None
        asked.append(httpx.request(method, url, headers=headers, json=body, timeout=30))
    bob_config = _spec(hidden, upstream.url + "/v1", "{{secrets/team_b/openai}}")["config"]
    for verb, path, body in [
        ("PUT", "config", bob_config),
        ("PUT", "rate-limits", {"rate_limits": []}),
        ("PATCH", "tags", {"add_tags": [{"key": "k", "value": "v"}]}),
        ("PUT", "ai-gateway", {}),
    ]:
        answer = httpx.request(verb, f"{base}/{hidden}/{path}", headers=headers, json=body)
        assert answer.status_code == 404, (path, answer.text)  # as if it did not exist
        asked.append(answer)
    assert asked[0].status_code == 200  # bob may scrape /metrics, seeing only his series
    for answer in asked[1:]:
        assert answer.status_code in (200, 403, 404), (answer.request.url, answer.text)
    tokens = list(server.tokens.values())  # type: ignore[attr-defined]
    for answer in asked:
        named = hidden in str(answer.request.url) or endpoint["id"] in str(answer.request.url)
        # An answer about a path that names the endpoint may echo the name bob sent, but must
        # read exactly as for an endpoint that does not exist.
        for needle in [TEAM_A_KEY, *tokens, *([] if named else [hidden])]:
            assert needle not in answer.text, (answer.request.url, needle)
        if named and answer.status_code == 404:
            url = str(answer.request.url).replace(hidden, "no-such-7d3a")
            url = url.replace(endpoint["id"], "0" * len(endpoint["id"]))
            body = json.loads(answer.request.content or b"null")
            twin = httpx.request(answer.request.method, url, headers=headers, json=body)
            assert twin.status_code == 404
            expected = twin.text.replace("no-such-7d3a", hidden)
            assert answer.text == expected.replace("0" * len(endpoint["id"]), endpoint["id"])

    # Files and logs: no value and no token, whoever asks (names are fine there).
    blobs = {p: p.read_bytes() for p in server.state.parent.iterdir() if p.is_file()}
    plan_file = tmp_path / "plan.json"
    spec = tmp_path / "specs" / "probe.yaml"
    spec.parent.mkdir()
    spec.write_text(json.dumps(_spec("planned-probe", upstream.url + "/v1")))
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    env["ENGINE_TOKEN"] = server.tokens["alice"]  # type: ignore[attr-defined]
    command = [sys.executable, "-m", "engine.cli", "plan", str(spec), "-out", str(plan_file)]
    planned = subprocess.run(
        [*command, "--state", str(server.state)], capture_output=True, env=env, timeout=120
    )
    assert planned.returncode == 0, planned.stderr
    blobs[plan_file] = plan_file.read_bytes()
    blobs[Path("plan output")] = planned.stdout + planned.stderr
    for path, blob in blobs.items():
        for needle in [TEAM_A_KEY, *tokens]:
            assert needle.encode() not in blob, (path, needle)
