"""`--target`: plan and apply against a real second `engine serve` (its own state, token auth
over HTTP on loopback), through the real CLI in subprocesses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine, run_cli, write_specs
from serving_harness import ServerProcess

from engine.access.tokens import create_token
from engine.state import open_state

KEY = "sk-remote-plaintext-9d1e77"


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("remote")
    state = root / "remote.db"
    engine = Engine(state)
    _, admin = create_token(engine.store, "admin@example.com", admin=True)
    _, bob = create_token(engine.store, "bob@example.com")
    engine.close()
    with ServerProcess(state, log_dir=root) as process:
        process.admin = admin  # type: ignore[attr-defined]
        process.bob = bob  # type: ignore[attr-defined]
        yield process


@pytest.fixture
def local(tmp_path: Path, remote: ServerProcess) -> dict[str, str]:
    """The environment of a user of the remote: its own local state folder, env credentials,
    a HOME with no ~/.databrickscfg."""
    return {
        "ENGINE_STATE": str(tmp_path / "local" / "state.db"),
        "HOME": str(tmp_path),
        "DATABRICKS_CONFIG_FILE": str(tmp_path / "no-such-cfg"),
        "DATABRICKS_HOST": remote.url,
        "DATABRICKS_TOKEN": remote.admin,  # type: ignore[attr-defined]
    }


def _entity(name: str, model: str, key: str = KEY) -> dict[str, Any]:
    return {
        "name": name,
        "external_model": {
            "name": model,
            "provider": "openai",
            "task": "llm/v1/chat",
            "openai_config": {
                "openai_api_key_plaintext": key,
                "openai_api_base": "http://127.0.0.1:9/v1",
            },
        },
    }


def _spec(name: str, split: tuple[int, int] = (50, 50), **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "config": {
            "served_entities": [_entity("a", "gpt-a"), _entity("b", "gpt-b")],
            "traffic_config": {
                "routes": [
                    {"served_entity_name": "a", "traffic_percentage": split[0]},
                    {"served_entity_name": "b", "traffic_percentage": split[1]},
                ]
            },
        },
        "tags": [{"key": "team", "value": "a"}, {"key": "tier", "value": "gold"}],
        "ai_gateway": {"usage_tracking_config": {"enabled": True}},
        "rate_limits": [{"calls": 100, "renewal_period": "minute"}],
    }
    spec.update(extra)
    return spec


def _cli(env: dict[str, str], *args: str) -> Any:
    result = run_cli(*args, env=env, timeout=300)
    assert KEY not in result.stdout + result.stderr
    return result


def _apply(env: dict[str, str], specs: Path, target: str) -> str:
    result = _cli(env, "apply", str(specs), "--target", target, "--auto-approve")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Apply complete!" in result.stdout
    return result.stdout


def _assert_converged(env: dict[str, str], specs: Path, target: str) -> None:
    result = _cli(env, "plan", str(specs), "--target", target, "--detailed-exitcode")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No changes." in result.stdout and "Drift" not in result.stdout


def _get(remote: ServerProcess, name: str, token: str | None = None) -> httpx.Response:
    token = token or remote.admin  # type: ignore[attr-defined]
    return httpx.get(
        f"{remote.url}/api/2.0/serving-endpoints/{name}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _call(remote: ServerProcess, method: str, path: str, body: Any) -> httpx.Response:
    return httpx.request(
        method,
        f"{remote.url}/api/2.0/serving-endpoints/{path}",
        json=body,
        headers={"Authorization": f"Bearer {remote.admin}"},  # type: ignore[attr-defined]
        timeout=30,
    )


def _history(remote: ServerProcess, name: str) -> list[Any]:
    store = open_state(remote.state)
    try:
        return [(h.config_version, h.action) for h in store.history(name)]
    finally:
        store.close()


def test_create_update_delete_converge(
    tmp_path: Path, remote: ServerProcess, local: dict[str, str]
) -> None:
    specs = tmp_path / "stack"
    url = remote.url
    write_specs(specs, [_spec("rt-life")])
    out = _apply(local, specs, url)
    assert "rt-life: POST /api/2.0/serving-endpoints" in out
    body = _get(remote, "rt-life").json()
    assert body["state"]["config_update"] == "NOT_UPDATING"
    assert {t["key"] for t in body["tags"]} == {"team", "tier"}
    _assert_converged(local, specs, url)

    steps = [
        # traffic
        (_spec("rt-life", (80, 20)), ["PUT /api/2.0/serving-endpoints/rt-life/config"]),
        # model
        (
            _spec(
                "rt-life",
                (80, 20),
                config={
                    "served_entities": [_entity("a", "gpt-a"), _entity("b", "gpt-b2")],
                    "traffic_config": {
                        "routes": [
                            {"served_entity_name": "a", "traffic_percentage": 80},
                            {"served_entity_name": "b", "traffic_percentage": 20},
                        ]
                    },
                },
            ),
            ["PUT /api/2.0/serving-endpoints/rt-life/config"],
        ),
    ]
    config2 = steps[1][0]["config"]
    steps += [
        # limits (`calls: 0` is sent, not dropped)
        (
            _spec(
                "rt-life", config=config2, rate_limits=[{"calls": 0, "renewal_period": "minute"}]
            ),
            ["PUT /api/2.0/serving-endpoints/rt-life/rate-limits"],
        ),
        # tags: one changed, one removed, one added
        (
            _spec(
                "rt-life",
                config=config2,
                rate_limits=[{"calls": 0, "renewal_period": "minute"}],
                tags=[{"key": "team", "value": "b"}, {"key": "cost", "value": "42"}],
            ),
            ["PATCH /api/2.0/serving-endpoints/rt-life/tags"],
        ),
        # gateway: the whole object, a new rate limit in it
        (
            _spec(
                "rt-life",
                config=config2,
                rate_limits=[{"calls": 0, "renewal_period": "minute"}],
                tags=[{"key": "team", "value": "b"}, {"key": "cost", "value": "42"}],
                ai_gateway={
                    "usage_tracking_config": {"enabled": True},
                    "rate_limits": [{"calls": 7, "key": "user", "renewal_period": "minute"}],
                },
            ),
            ["PUT /api/2.0/serving-endpoints/rt-life/ai-gateway"],
        ),
    ]
    gateway_step = steps[-1][0]
    steps.append(
        # notifications and telemetry, each with its own PATCH
        (
            {
                **gateway_step,
                "email_notifications": {"on_update_failure": ["oncall@example.com"]},
                "telemetry_config": {"telemetry_profile_id": "p1"},
            },
            [
                "PATCH /api/2.0/serving-endpoints/rt-life/notifications",
                "PATCH /api/2.0/serving-endpoints/rt-life/telemetry-config",
            ],
        )
    )
    for spec, expected in steps:
        write_specs(specs, [spec])
        out = _apply(local, specs, url)
        for call in expected:
            assert f"rt-life: {call}" in out, out
        assert out.count("rt-life: ") >= 1
        _assert_converged(local, specs, url)

    body = _get(remote, "rt-life").json()
    routes = {
        r["served_entity_name"]: r["traffic_percentage"]
        for r in body["config"]["traffic_config"]["routes"]
    }
    assert routes == {"a": 80, "b": 20}
    models = {e["name"]: e["external_model"]["name"] for e in body["config"]["served_entities"]}
    assert models == {"a": "gpt-a", "b": "gpt-b2"}
    assert {t["key"]: t.get("value") for t in body["tags"]} == {"team": "b", "cost": "42"}
    assert body["ai_gateway"]["rate_limits"][0]["calls"] == 7
    assert body["config"]["config_version"] == 3
    assert body["email_notifications"] == {"on_update_failure": ["oncall@example.com"]}
    assert body["telemetry_config"] == {"telemetry_profile_id": "p1"}
    # The remote's own state: the legacy limits (never returned by GET) were sent, `calls: 0`
    # included.
    store = open_state(remote.state)
    try:
        row = store.get_endpoint("rt-life")
        assert row is not None and row.spec["rate_limits"] == [
            {"calls": 0, "renewal_period": "minute", "key": "endpoint"}
        ]
    finally:
        store.close()

    # Leaving the specs: deleted on the remote.
    write_specs(specs, [])
    out = _apply(local, specs, url)
    assert "rt-life: DELETE /api/2.0/serving-endpoints/rt-life" in out
    assert _get(remote, "rt-life").status_code == 404
    _assert_converged(local, specs, url)


def test_a_changed_plaintext_is_sent_and_never_shown(
    tmp_path: Path, remote: ServerProcess, local: dict[str, str]
) -> None:
    specs = tmp_path / "stack"
    write_specs(specs, [_spec("rt-secret")])
    _apply(local, specs, remote.url)
    spec = _spec("rt-secret")
    spec["config"]["served_entities"][0] = _entity("a", "gpt-a", key="sk-rotated-0000")
    write_specs(specs, [spec])
    result = _cli(local, "plan", str(specs), "--target", remote.url, "--detailed-exitcode")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "openai_api_key_plaintext" in result.stdout and "sensitive" in result.stdout
    assert "sk-rotated" not in result.stdout
    _apply(local, specs, remote.url)
    _assert_converged(local, specs, remote.url)
    record = "".join(p.read_text() for p in (tmp_path / "local" / "targets").glob("*.json"))
    assert "sk-rotated" not in record and KEY not in record
    write_specs(specs, [])
    _apply(local, specs, remote.url)


def test_drift_refresh_and_stale_plan(
    tmp_path: Path, remote: ServerProcess, local: dict[str, str]
) -> None:
    specs = tmp_path / "stack"
    url = remote.url
    write_specs(specs, [_spec("rt-drift")])
    _apply(local, specs, url)

    # A saved plan, then someone changes the endpoint out of band through the remote's API.
    write_specs(specs, [_spec("rt-drift", (70, 30))])
    planfile = tmp_path / "p.json"
    made = _cli(local, "plan", str(specs), "--target", url, "-out", str(planfile))
    assert made.returncode == 0, made.stderr
    assert KEY not in planfile.read_text()
    shown = _cli(local, "show", str(planfile))
    assert (
        shown.returncode == 0
        and "1. rt-drift: PUT /api/2.0/serving-endpoints/rt-drift/config" in (shown.stdout)
    )
    before = _get(remote, "rt-drift").json()
    patched = _call(remote, "PATCH", "rt-drift/tags", {"add_tags": [{"key": "oob", "value": "1"}]})
    assert patched.status_code == 200, patched.text
    after = _get(remote, "rt-drift").json()
    assert after["last_updated_timestamp"] != before["last_updated_timestamp"]

    stale = _cli(local, "apply", str(planfile), "--target", url)
    assert stale.returncode == 1
    assert "stale" in stale.stderr and "rt-drift" in stale.stderr
    assert _get(remote, "rt-drift").json()["config"]["config_version"] == 1

    refreshed = _cli(local, "refresh", "--target", url)
    assert refreshed.returncode == 0, refreshed.stderr
    assert "Drift: rt-drift changed on" in refreshed.stdout
    assert 'tags[oob].key = "oob"' in refreshed.stdout
    assert "1 endpoint drifted" in refreshed.stdout
    shown = _cli(local, "show", "--target", url)
    assert "rt-drift" in shown.stdout and "drift recorded" in shown.stdout

    plan = _cli(local, "plan", str(specs), "--target", url, "--detailed-exitcode")
    assert plan.returncode == 2
    assert "Drift: rt-drift" in plan.stdout and "tags[oob]" in plan.stdout
    assert "PATCH /api/2.0/serving-endpoints/rt-drift/tags" in plan.stdout

    # A fresh saved plan applies, and takes the drift back out.
    made = _cli(local, "plan", str(specs), "--target", url, "-out", str(planfile))
    assert made.returncode == 0
    applied = _cli(local, "apply", str(planfile), "--target", url)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "oob" not in {t["key"] for t in _get(remote, "rt-drift").json()["tags"]}
    _assert_converged(local, specs, url)
    # A remote plan is not for the local state, and a local one not for a target.
    local_apply = _cli(local, "apply", str(planfile))
    assert local_apply.returncode != 0 and "--target" in local_apply.stderr
    write_specs(specs, [])
    _apply(local, specs, url)


def test_e2_is_refused_before_any_call(
    tmp_path: Path, remote: ServerProcess, local: dict[str, str]
) -> None:
    specs = tmp_path / "stack"
    write_specs(specs, [_spec("rt-e2")])
    _apply(local, specs, remote.url)
    before = _get(remote, "rt-e2").json()
    history = _history(remote, "rt-e2")
    self_hosted = {
        "name": "rt-e2",
        "config": {
            "served_entities": [
                {
                    "name": "m",
                    "entity_name": "main.default.m",
                    "entity_version": "1",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": True,
                }
            ]
        },
    }
    write_specs(specs, [self_hosted])
    plan = _cli(local, "plan", str(specs), "--target", remote.url)
    assert plan.returncode == 1 and "[E2]" in plan.stdout
    assert "Calls to" not in plan.stdout
    applied = _cli(local, "apply", str(specs), "--target", remote.url, "--auto-approve")
    assert applied.returncode == 1 and "[E2]" in applied.stdout
    assert "Calls made" not in applied.stdout
    after = _get(remote, "rt-e2").json()
    assert after["last_updated_timestamp"] == before["last_updated_timestamp"]
    assert after["config"]["config_version"] == before["config"]["config_version"]
    assert _history(remote, "rt-e2") == history  # the remote recorded no change at all
    write_specs(specs, [])
    _apply(local, specs, remote.url)


def test_endpoints_not_made_by_the_engine_are_left_alone_until_imported(
    tmp_path: Path, remote: ServerProcess, local: dict[str, str]
) -> None:
    created = httpx.post(
        f"{remote.url}/api/2.0/serving-endpoints",
        json={"name": "rt-foreign", "config": {"served_entities": [_entity("a", "gpt-a")]}},
        headers={"Authorization": f"Bearer {remote.admin}"},  # type: ignore[attr-defined]
        timeout=30,
    )
    assert created.status_code == 200, created.text
    specs = tmp_path / "stack"
    write_specs(specs, [_spec("rt-foreign")])
    plan = _cli(local, "plan", str(specs), "--target", remote.url)
    assert plan.returncode == 1 and "[O1]" in plan.stdout and "engine import" in plan.stdout
    # Destroying the stack never deletes it either.
    destroyed = _cli(local, "destroy", str(specs), "--target", remote.url, "--auto-approve")
    assert destroyed.returncode == 0 and _get(remote, "rt-foreign").status_code == 200
    imported = _cli(local, "import", "rt-foreign", "--stack", "stack", "--target", remote.url)
    assert imported.returncode == 0, imported.stderr
    out = _apply(local, specs, remote.url)
    assert "rt-foreign: PUT /api/2.0/serving-endpoints/rt-foreign/config" in out
    _assert_converged(local, specs, remote.url)
    destroyed = _cli(local, "destroy", str(specs), "--target", remote.url, "--auto-approve")
    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert _get(remote, "rt-foreign").status_code == 404


def test_another_users_token_cannot_take_over_an_endpoint(
    tmp_path: Path, remote: ServerProcess, local: dict[str, str]
) -> None:
    specs = tmp_path / "stack"
    write_specs(specs, [_spec("rt-owned")])
    _apply(local, specs, remote.url)
    before = _get(remote, "rt-owned").json()
    bob = {**local, "DATABRICKS_TOKEN": remote.bob, "ENGINE_STATE": str(tmp_path / "bob" / "s.db")}  # type: ignore[attr-defined]
    write_specs(specs, [_spec("rt-owned", (10, 90))])
    attempt = _cli(bob, "apply", str(specs), "--target", remote.url, "--auto-approve")
    # Bob may read it, but it is not his stack's: refused before any call.
    assert attempt.returncode == 1 and "[O1]" in attempt.stdout
    assert "Calls made" not in attempt.stdout
    # Adopting it in his own record gives him nothing the remote does not allow.
    imported = _cli(bob, "import", "rt-owned", "--stack", "stack", "--target", remote.url)
    assert imported.returncode == 0, imported.stderr
    attempt = _cli(bob, "apply", str(specs), "--target", remote.url, "--auto-approve")
    assert attempt.returncode == 1
    assert "Calls made: 0" in attempt.stdout
    assert "PUT /api/2.0/serving-endpoints/rt-owned/config" in attempt.stderr
    assert "PERMISSION_DENIED" in attempt.stderr
    after = _get(remote, "rt-owned").json()
    assert after["last_updated_timestamp"] == before["last_updated_timestamp"]
    # A wrong token is refused by the remote before anything is planned.
    wrong_env = {**local, "DATABRICKS_TOKEN": "not-a-token"}
    wrong = _cli(wrong_env, "plan", str(specs), "--target", remote.url)
    assert wrong.returncode == 1 and "401" in wrong.stderr
    write_specs(specs, [])
    _apply(local, specs, remote.url)


def test_a_databrickscfg_profile_works_like_the_environment(
    tmp_path: Path, remote: ServerProcess, local: dict[str, str]
) -> None:
    specs = tmp_path / "stack"
    write_specs(specs, [_spec("rt-profile")])
    env_plan = _cli(local, "plan", str(specs), "--target", "env", "--json")
    assert env_plan.returncode == 0, env_plan.stderr
    profile_env = {k: v for k, v in local.items() if not k.startswith("DATABRICKS_")}
    (tmp_path / ".databrickscfg").write_text(
        f"[remote]\nhost = {remote.url}\ntoken = {remote.admin}\n"  # type: ignore[attr-defined]
    )
    cfg = str(tmp_path / ".databrickscfg")
    for env in (profile_env, {**profile_env, "DATABRICKS_CONFIG_FILE": cfg}):
        profile_plan = _cli(env, "plan", str(specs), "--target", "remote", "--json")
        assert profile_plan.returncode == 0, profile_plan.stderr
        a, b = json.loads(env_plan.stdout), json.loads(profile_plan.stdout)
        assert (
            a["calls"]
            == b["calls"]
            == [{"endpoint": "rt-profile", "method": "POST", "path": "/api/2.0/serving-endpoints"}]
        )
        assert a["changes"] == b["changes"]
    _apply(profile_env, specs, "remote")
    _assert_converged(local, specs, "env")
    _assert_converged(profile_env, specs, "remote")
    unknown = _cli(profile_env, "plan", str(specs), "--target", "nope")
    assert unknown.returncode == 1 and "nope" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    write_specs(specs, [])
    _apply(profile_env, specs, "remote")


def test_other_stacks_are_refused_and_out_of_band_deletes_are_drift(
    tmp_path: Path, remote: ServerProcess, local: dict[str, str]
) -> None:
    team_a, team_b = tmp_path / "team-a", tmp_path / "team-b"
    write_specs(team_a, [_spec("rt-stacks")])
    write_specs(team_b, [_spec("rt-stacks", (90, 10))])
    _apply(local, team_a, remote.url)
    before = _get(remote, "rt-stacks").json()
    plan = _cli(local, "plan", str(team_b), "--target", remote.url)
    assert plan.returncode == 1 and "[O1]" in plan.stdout and "stack 'team-a'" in plan.stdout
    destroyed = _cli(local, "destroy", str(team_b), "--target", remote.url, "--auto-approve")
    assert destroyed.returncode == 0
    assert (
        _get(remote, "rt-stacks").json()["last_updated_timestamp"]
        == (before["last_updated_timestamp"])
    )

    gone = _call(remote, "DELETE", "rt-stacks", None)
    assert gone.status_code == 200, gone.text
    plan = _cli(local, "plan", str(team_a), "--target", remote.url, "--detailed-exitcode")
    assert plan.returncode == 2
    assert "Drift: rt-stacks" in plan.stdout and "the endpoint was deleted" in plan.stdout
    assert "rt-stacks will be created" in plan.stdout
    refreshed = _cli(local, "refresh", "--target", remote.url)
    assert "the endpoint was deleted" in refreshed.stdout
    _apply(local, team_a, remote.url)
    _assert_converged(local, team_a, remote.url)
    write_specs(team_a, [])
    _apply(local, team_a, remote.url)
