"""The normalisation corpus: for each perpetual-diff case, a remote (a real HTTP server on
127.0.0.1) answers GET in the platform's normalised shape after the engine's create, and the
next plan is empty. Controls show that real changes still show. Then the careful apply: the
409 "update in progress" retried with backoff, UPDATE_FAILED, and a wait that times out."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from mock_http import MockResponse, MockUpstream, RecordedRequest

from engine.remote import RemoteSession, apply_remote, plan_remote, resolve_target
from engine.specs.loader import load_specs
from plans import Action

KEY = "sk-never-shown-31c4"


def _external(name: str | None, model: str, **config: Any) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "external_model": {
            "name": model,
            "provider": "openai",
            "task": "llm/v1/chat",
            "openai_config": {"openai_api_key": "{{secrets/s/k}}", **config},
        }
    }
    if name is not None:
        entity["name"] = name
    return entity


def _status(entity: dict[str, Any]) -> dict[str, Any]:
    """A served entity as the platform's GET shows it: status added, secrets dropped."""
    out = copy.deepcopy(entity)
    for block in (out.get("external_model") or {}).values():
        if isinstance(block, dict):
            for key in [k for k in block if k.endswith("_plaintext")]:
                block.pop(key)
    out.update(
        state={"deployment": "DEPLOYMENT_READY", "deployment_state_message": ""},
        creator="someone@example.com",
        creation_timestamp=1700000000000,
    )
    return out


def _detail(name: str, entities: list[dict[str, Any]], routes: list[tuple[str, int]], **top: Any):  # noqa: ANN202
    body = {
        "name": name,
        "id": "0123456789abcdef",
        "creator": "someone@example.com",
        "creation_timestamp": 1700000000000,
        "last_updated_timestamp": 1700000000001,
        "state": {"ready": "READY", "config_update": "NOT_UPDATING"},
        "config": {
            "served_entities": [_status(e) for e in entities],
            "traffic_config": {
                "routes": [
                    {"served_model_name": n, "served_entity_name": n, "traffic_percentage": p}
                    for n, p in routes
                ]
            },
            "config_version": 1,
        },
        "tags": [],
        "permission_level": "CAN_MANAGE",
        "route_optimized": False,
        "endpoint_url": f"https://example.cloud.databricks.com/serving-endpoints/{name}",
    }
    body.update(top)
    return body


# (case, the spec, the platform's read-back after the create)
CORPUS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "default traffic_config for one entity (and its default name)",
        {"name": "c1", "config": {"served_entities": [_external(None, "gpt-4o.mini")]}},
        _detail(
            "c1",
            [{**_external(None, "gpt-4o.mini"), "name": "gpt-4o-mini"}],
            [("gpt-4o-mini", 100)],
            task="llm/v1/chat",
            endpoint_type="EXTERNAL_MODEL",
        ),
    ),
    (
        "workload_type and workload_size read back though never set",
        {
            "name": "c2",
            "config": {
                "served_entities": [
                    {
                        "name": "m",
                        "entity_name": "main.default.m",
                        "entity_version": "3",
                        "min_provisioned_concurrency": 0,
                        "max_provisioned_concurrency": 4,
                        "scale_to_zero_enabled": True,
                    }
                ]
            },
        },
        _detail(
            "c2",
            [
                {
                    "name": "m",
                    "entity_name": "main.default.m",
                    "entity_version": "3",
                    "min_provisioned_concurrency": 0,
                    "max_provisioned_concurrency": 4,
                    "scale_to_zero_enabled": True,
                    "workload_size": "Small",
                    "workload_type": "CPU",
                    "environment_vars": {},
                }
            ],
            [("m", 100)],
        ),
    ),
    (
        "served entities and routes in another order",
        {
            "name": "c3",
            "config": {
                "served_entities": [_external("a", "gpt-a"), _external("b", "gpt-b")],
                "traffic_config": {
                    "routes": [
                        {"served_entity_name": "a", "traffic_percentage": 30},
                        {"served_entity_name": "b", "traffic_percentage": 70},
                    ]
                },
            },
        },
        _detail(
            "c3",
            [_external("b", "gpt-b"), _external("a", "gpt-a")],
            [("b", 70), ("a", 30)],
            task="llm/v1/chat",
        ),
    ),
    (
        "budget_policy_id, *_plaintext and legacy rate_limits never returned",
        {
            "name": "c4",
            "budget_policy_id": "policy-123",
            "rate_limits": [{"calls": 0, "renewal_period": "minute"}],
            "config": {
                "served_entities": [
                    {
                        "name": "a",
                        "external_model": {
                            "name": "gpt-a",
                            "provider": "openai",
                            "task": "llm/v1/chat",
                            "openai_config": {"openai_api_key_plaintext": KEY},
                        },
                    }
                ]
            },
        },
        _detail(
            "c4",
            [
                {
                    "name": "a",
                    "external_model": {
                        "name": "gpt-a",
                        "provider": "openai",
                        "task": "llm/v1/chat",
                        "openai_config": {},
                    },
                }
            ],
            [("a", 100)],
        ),
    ),
    (
        "scale_to_zero_enabled reads false on pay-per-token",
        {
            "name": "c5",
            "config": {
                "served_entities": [
                    {
                        "name": "llama",
                        "entity_name": "system.ai.meta_llama_v3_3_70b_instruct",
                        "entity_version": "1",
                        "scale_to_zero_enabled": True,
                        "workload_size": "Small",
                    }
                ]
            },
        },
        _detail(
            "c5",
            [
                {
                    "name": "llama",
                    "entity_name": "system.ai.meta_llama_v3_3_70b_instruct",
                    "entity_version": "1",
                    "scale_to_zero_enabled": False,
                    "workload_size": "Small",
                    "workload_type": "CPU",
                    "foundation_model": {
                        "name": "meta_llama_v3_3_70b_instruct",
                        "display_name": "Meta Llama 3.3 70B Instruct",
                    },
                }
            ],
            [("llama", 100)],
        ),
    ),
    (
        "empty defaults and status: tags [], description '', ai_gateway {}, state, ids",
        {
            "name": "c6",
            "config": {"served_entities": [_external("a", "gpt-a")]},
        },
        _detail(
            "c6",
            [_external("a", "gpt-a")],
            [("a", 100)],
            description="",
            ai_gateway={},
            email_notifications={},
            data_plane_info={"query_info": {"endpoint_url": "https://x"}},
        ),
    ),
    (
        "entity order kept under fallback, gateway read back whole",
        {
            "name": "c7",
            "config": {
                "served_entities": [_external("b", "gpt-b"), _external("a", "gpt-a")],
                "traffic_config": {
                    "routes": [
                        {"served_entity_name": "b", "traffic_percentage": 100},
                        {"served_entity_name": "a", "traffic_percentage": 0},
                    ]
                },
            },
            "ai_gateway": {
                "fallback_config": {"enabled": True},
                "usage_tracking_config": {"enabled": True},
                "rate_limits": [{"calls": 5, "renewal_period": "minute"}],
            },
        },
        _detail(
            "c7",
            [_external("b", "gpt-b"), _external("a", "gpt-a")],
            [("a", 0), ("b", 100)],
            ai_gateway={
                "fallback_config": {"enabled": True},
                "usage_tracking_config": {"enabled": True},
                "rate_limits": [{"calls": 5, "renewal_period": "minute", "key": "endpoint"}],
                "guardrails": {},
            },
        ),
    ),
]


class FakePlatform:
    """A scripted platform: GET 404 until the create, then the case's normalised read-back."""

    def __init__(self) -> None:
        self.bodies: dict[str, dict[str, Any]] = {}
        self.created: set[str] = set()
        self.conflicts = 0  # answer this many 409 RESOURCE_CONFLICTs first
        self.fail_update: str | None = None
        self.stuck = False
        self.lock = threading.Lock()

    def __call__(self, request: RecordedRequest) -> MockResponse:
        if request.path == "/.well-known/databricks-config":
            return MockResponse(json={"oidc_endpoint": "", "workspace_id": "1"})
        assert request.headers.get("authorization") == "Bearer platform-token"
        rest = request.path.removeprefix("/api/2.0/serving-endpoints").strip("/").split("/")
        with self.lock:
            if request.method != "GET" and self.conflicts:
                self.conflicts -= 1
                return MockResponse(
                    409,
                    json={"error_code": "RESOURCE_CONFLICT", "message": "update in progress"},
                )
            if request.method == "POST" and rest == [""]:
                name = request.json()["name"]
                self.created.add(name)
                return MockResponse(json=self.bodies[name])
            name = rest[0]
            if request.method == "GET":
                if name not in self.created:
                    return MockResponse(
                        404, json={"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no"}
                    )
                body = copy.deepcopy(self.bodies[name])
                if self.stuck:
                    body["state"]["config_update"] = "IN_PROGRESS"
                elif self.fail_update:
                    body["state"]["config_update"] = "UPDATE_FAILED"
                    body["state"]["config_update_message"] = self.fail_update
                return MockResponse(json=body)
            if request.method == "PUT" and rest[1:] == ["config"]:
                self.bodies[name]["config"]["traffic_config"] = request.json()["traffic_config"]
                self.bodies[name]["config"]["config_version"] += 1
                return MockResponse(json=self.bodies[name])
            return MockResponse(json={})


@pytest.fixture
def platform(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    fake = FakePlatform()
    with MockUpstream(fake) as server:
        monkeypatch.setenv("DATABRICKS_TOKEN", "platform-token")
        monkeypatch.setenv("DATABRICKS_CONFIG_FILE", "/nonexistent/databrickscfg")
        fake.url = server.url  # type: ignore[attr-defined]
        fake.server = server  # type: ignore[attr-defined]
        yield fake


def _session(platform: FakePlatform, tmp_path: Path) -> RemoteSession:
    session = RemoteSession.open(resolve_target(platform.url), tmp_path / "targets")  # type: ignore[attr-defined]
    session.sleep = session.client.sleep = lambda _s: None  # backoff and polling: no real waits
    return session


def _loaded(tmp_path: Path, spec: dict[str, Any]):  # noqa: ANN202
    path = tmp_path / "specs" / f"{spec['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec))
    loaded = load_specs([path])
    assert loaded.valid, [d.render() for d in loaded.diagnostics]
    return loaded


@pytest.mark.parametrize(("case", "spec", "readback"), CORPUS, ids=[c[0] for c in CORPUS])
def test_no_perpetual_diff(
    case: str,
    spec: dict[str, Any],
    readback: dict[str, Any],
    platform: FakePlatform,
    tmp_path: Path,
) -> None:
    platform.bodies[spec["name"]] = copy.deepcopy(readback)
    with _session(platform, tmp_path) as session:
        loaded = _loaded(tmp_path, spec)
        first = plan_remote(session, loaded, stack="s")
        assert [c.action for c in first.plan.actionable] == [Action.CREATE]
        report = apply_remote(session, first)
        assert report.ok, report.failed
        assert report.calls_made == [f"{spec['name']}: POST /api/2.0/serving-endpoints"]
        again = plan_remote(session, loaded, stack="s")
        assert not again.plan.has_changes, [
            f.to_json() for c in again.plan.changes for f in c.fields
        ]
        assert not again.plan.errored and not again.drift
    record = "".join(p.read_text() for p in (tmp_path / "targets").glob("*.json"))
    assert KEY not in record


def test_real_changes_still_show(platform: FakePlatform, tmp_path: Path) -> None:
    """Controls: the normaliser hides what the server does, not what someone changed."""
    _, spec, readback = CORPUS[3]  # write-only fields
    platform.bodies["c4"] = copy.deepcopy(readback)
    with _session(platform, tmp_path) as session:
        apply_remote(session, plan_remote(session, _loaded(tmp_path, spec), stack="s"))
        rotated = copy.deepcopy(spec)
        rotated["config"]["served_entities"][0]["external_model"]["openai_config"] = {
            "openai_api_key_plaintext": "sk-rotated"
        }
        rotated["rate_limits"] = [{"calls": 10, "renewal_period": "minute"}]
        plan = plan_remote(session, _loaded(tmp_path, rotated), stack="s").plan
        paths = {f.path: f for c in plan.actionable for f in c.fields}
        secret = paths[
            "config.served_entities[a].external_model.openai_config.openai_api_key_plaintext"
        ]
        assert secret.sensitive and "sk-" not in str(secret.to_json())
        assert "rate_limits" in {p.split("[")[0] for p in paths}
        # An out-of-band change on the platform (the split) is drift, with the field diff.
        _, spec3, readback3 = CORPUS[2]
        platform.bodies["c3"] = copy.deepcopy(readback3)
        apply_remote(session, plan_remote(session, _loaded(tmp_path, spec3), stack="s"))
        platform.bodies["c3"]["config"]["traffic_config"]["routes"][0]["traffic_percentage"] = 50
        platform.bodies["c3"]["config"]["traffic_config"]["routes"][1]["traffic_percentage"] = 50
        platform.bodies["c3"]["last_updated_timestamp"] += 1
        again = plan_remote(session, _loaded(tmp_path, spec3), stack="s")
        drift = {f.path: (f.before, f.after) for f in again.drift["c3"]}
        assert drift["config.traffic_config.routes[a].traffic_percentage"] == (30, 50)
        assert [c.action for c in again.plan.actionable] == [Action.UPDATE]
        # Pay-per-token's false is ignored; on an entity with compute of its own it is real.
        _, spec2, readback2 = CORPUS[1]
        platform.bodies["c2"] = copy.deepcopy(readback2)
        apply_remote(session, plan_remote(session, _loaded(tmp_path, spec2), stack="s"))
        platform.bodies["c2"]["config"]["served_entities"][0]["scale_to_zero_enabled"] = False
        changed = plan_remote(session, _loaded(tmp_path, spec2), stack="s").plan
        assert [f.path for c in changed.actionable for f in c.fields] == [
            "config.served_entities[m].scale_to_zero_enabled"
        ]


def _created(platform: FakePlatform, session: RemoteSession, tmp_path: Path) -> dict[str, Any]:
    _, spec, readback = CORPUS[2]
    platform.bodies["c3"] = copy.deepcopy(readback)
    assert apply_remote(session, plan_remote(session, _loaded(tmp_path, spec), stack="s")).ok
    changed = copy.deepcopy(spec)
    changed["config"]["traffic_config"]["routes"][0]["traffic_percentage"] = 60
    changed["config"]["traffic_config"]["routes"][1]["traffic_percentage"] = 40
    return changed


def test_update_in_progress_conflicts_are_retried_with_backoff(
    platform: FakePlatform, tmp_path: Path
) -> None:
    with _session(platform, tmp_path) as session:
        changed = _created(platform, session, tmp_path)
        slept: list[float] = []
        session.client.sleep = slept.append
        platform.conflicts = 3
        report = apply_remote(session, plan_remote(session, _loaded(tmp_path, changed), stack="s"))
        assert report.ok, report.failed
        assert slept == [1.0, 2.0, 4.0]
        assert report.calls_made == ["c3: PUT /api/2.0/serving-endpoints/c3/config"]
        assert not plan_remote(session, _loaded(tmp_path, changed), stack="s").plan.has_changes


def test_update_failed_is_a_failed_apply_with_the_platforms_message(
    platform: FakePlatform, tmp_path: Path
) -> None:
    with _session(platform, tmp_path) as session:
        changed = _created(platform, session, tmp_path)
        platform.fail_update = "Served entity b failed to deploy: quota exceeded"
        report = apply_remote(session, plan_remote(session, _loaded(tmp_path, changed), stack="s"))
        assert not report.ok
        assert "quota exceeded" in report.failed["c3"]
        # The call was made, and the summary says so.
        assert report.calls_made == ["c3: PUT /api/2.0/serving-endpoints/c3/config"]


def test_a_wait_that_times_out_says_what_it_waited_for(
    platform: FakePlatform, tmp_path: Path
) -> None:
    with _session(platform, tmp_path) as session:
        changed = _created(platform, session, tmp_path)
        plan = plan_remote(session, _loaded(tmp_path, changed), stack="s")
        platform.stuck = True  # someone else's update starts between plan and apply
        session.wait_timeout = 0.0
        events: list[str] = []
        report = apply_remote(session, plan, on_event=events.append)
        assert any("waiting for NOT_UPDATING" in e for e in events)
        message = report.failed["c3"]
        assert "NOT_UPDATING" in message and "c3" in message and "IN_PROGRESS" in message
        assert report.calls_made == []  # it never sent the PUT into a running update


def test_the_record_is_private_and_held_by_one_command_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from engine.remote import RecordError, TargetRecord, _record

    first = TargetRecord.open(tmp_path / "targets", "host-1", "https://host")
    first.save()
    assert (tmp_path / "targets" / "host-1.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "targets" / "host-1.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setattr(_record, "LOCK_WAIT_S", 0.2)
    with pytest.raises(RecordError, match="another engine command"):
        TargetRecord.open(tmp_path / "targets", "host-1", "https://host")
    first.close()
    again = TargetRecord.open(tmp_path / "targets", "host-1", "https://host")
    assert again.lineage == first.lineage and again.serial == 1
    # The same key: a hash made before reads the same after.
    assert again.digest("x") == first.digest("x") != again.digest("y")
    again.close()


def test_the_cli_reports_update_failed_and_the_calls_it_made(
    platform: FakePlatform, tmp_path: Path
) -> None:
    from engine_harness import run_cli

    _, spec, readback = CORPUS[3]  # with a plaintext key: it must never be printed
    platform.bodies["c4"] = copy.deepcopy(readback)
    platform.fail_update = "Served entity a failed to deploy: quota exceeded"
    specs = tmp_path / "stack"
    specs.mkdir()
    (specs / "c4.yaml").write_text(yaml.safe_dump(spec))
    env = {
        "ENGINE_STATE": str(tmp_path / "local" / "state.db"),
        "DATABRICKS_TOKEN": "platform-token",
        "DATABRICKS_CONFIG_FILE": str(tmp_path / "none"),
        "HOME": str(tmp_path),
    }
    url = platform.url  # type: ignore[attr-defined]
    result = run_cli("apply", str(specs), "--target", url, "--auto-approve", env=env)
    assert result.returncode == 1
    assert "quota exceeded" in result.stderr and "c4" in result.stderr
    assert "Calls made: 1\n  c4: POST /api/2.0/serving-endpoints" in result.stdout
    assert KEY not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # The create did make the endpoint: it is this stack's to fix, not someone else's (O1).
    platform.fail_update = None
    again = run_cli("plan", str(specs), "--target", url, env=env)
    assert again.returncode == 0 and "[O1]" not in again.stdout
