"""plan/apply contract: apply does what plan showed; the next plan is empty; rules hold."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import openai_chat
from engine_harness import (
    Engine,
    insert_lock,
    register_test_models,
    run_cli,
    self_hosted,
    spawn_cli,
    write_specs,
)
from executor_fixture import ControllableExecutor

from engine.state import open_state
from plans import Action, ChangeClass


@pytest.fixture
def engine(tmp_path: Path, state_url: str):  # noqa: ANN201
    eng = Engine(state_url, ControllableExecutor(tmp_path / "running"))
    eng.secrets.create_scope("scope")
    eng.secrets.put_secret("scope", "openai", "sk-test")
    yield eng
    eng.close()


def test_create_update_delete_cycle(engine: Engine, tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    write_specs(specs, [openai_chat("chat"), self_hosted("local", {"a": 90, "b": 10})])
    plan, report = engine.apply(specs)
    assert report.ok and plan.summary.create == 2
    assert engine.plan(specs)[0].has_changes is False
    assert engine.store.get_endpoint("local").config_version == 1
    running = engine.executor.running()
    assert running == {e.id for e in engine.store.entities("local")}

    # A hot change: traffic only -> new config version, no restart.
    write_specs(specs, [openai_chat("chat"), self_hosted("local", {"a": 50, "b": 50})])
    plan, report = engine.apply(specs)
    (change,) = plan.actionable
    assert (change.action, change.change_class) == (Action.UPDATE, ChangeClass.HOT)
    assert (change.config_version_from, change.config_version_to) == (1, 2)
    assert engine.executor.running() == running  # nothing restarted

    # A cold change: one entity's version changes -> only that entity restarts.
    spec = self_hosted("local", {"a": 50, "b": 50})
    spec["config"]["served_entities"][1]["entity_version"] = "2"
    spec["config"]["served_entities"][1]["name"] = "b"
    write_specs(specs, [openai_chat("chat"), spec])
    plan, report = engine.apply(specs)
    assert plan.actionable[0].change_class is ChangeClass.COLD and report.ok
    after = engine.executor.running()
    assert len(after & running) == 1 and len(after) == 2
    assert engine.store.get_endpoint("local").config_version == 3

    # Tags only: updated in place, the config version stays.
    tagged = openai_chat("chat")
    tagged["tags"] = [{"key": "team", "value": "ml"}]
    write_specs(specs, [tagged, spec])
    plan, report = engine.apply(specs)
    assert plan.actionable[0].config_version_to == 1 and report.ok
    assert engine.store.get_endpoint("chat").spec["tags"] == [{"key": "team", "value": "ml"}]

    write_specs(specs, [tagged])
    plan, report = engine.apply(specs)
    assert plan.summary.delete == 1 and report.ok
    assert engine.store.get_endpoint("local") is None
    assert engine.executor.running() == set()
    assert not engine.plan(specs)[0].has_changes


def test_failed_update_keeps_old_config(engine: Engine, tmp_path: Path) -> None:
    specs = write_specs(tmp_path / "specs", [self_hosted("local", {"a": 100})])
    engine.apply(specs)
    before = engine.executor.running()
    write_specs(specs, [self_hosted("local", {"a": 100}, version="2")])
    engine.executor.fail = frozenset({"a"})
    _, report = engine.apply(specs)
    assert not report.ok and "readiness" in report.failed["local"]
    row = engine.store.get_endpoint("local")
    assert row.config_update == "UPDATE_FAILED" and "readiness" in row.update_message
    assert (
        row.config_version == 1
        and row.spec["config"]["served_entities"][0]["entity_version"] == "1"
    )
    assert engine.executor.running() == before
    engine.executor.fail = frozenset()
    plan, report = engine.apply(specs)
    assert report.ok and engine.store.get_endpoint("local").config_version == 2


def test_stack_ownership(engine: Engine, tmp_path: Path) -> None:
    a = write_specs(tmp_path / "a", [openai_chat("chat-a")])
    b = write_specs(tmp_path / "b", [openai_chat("chat-b")])
    engine.apply(a, stack="a")
    plan, _ = engine.apply(b, stack="b")
    assert [c.endpoint for c in plan.actionable] == ["chat-b"]  # never deletes chat-a
    taken = write_specs(tmp_path / "c", [openai_chat("chat-a")])
    plan, _ = engine.plan(taken, stack="c")
    assert [e.rule for c in plan.changes for e in c.errors] == ["O1"]
    engine.store.set_stack("chat-a", "c")  # engine import
    assert not engine.plan(taken, stack="c")[0].has_changes


@pytest.mark.parametrize("kind", ["E2-to-self-hosted", "E2-to-external"])
def test_e2_external_switch_is_refused(engine: Engine, tmp_path: Path, kind: str) -> None:
    external, local = openai_chat("ep"), self_hosted("ep", {"a": 100})
    first, second = (external, local) if kind == "E2-to-self-hosted" else (local, external)
    specs = write_specs(tmp_path / "specs", [first])
    engine.apply(specs)
    serial = engine.store.serial
    write_specs(specs, [second])
    plan, _ = engine.plan(specs)
    assert [e.rule for e in plan.actionable[0].errors] == ["E2"]
    assert plan.errored and engine.store.serial == serial


def test_l4_create_only_fields(engine: Engine, tmp_path: Path) -> None:
    spec = openai_chat("ep")
    specs = write_specs(tmp_path / "specs", [spec])
    engine.apply(specs)
    changed = copy.deepcopy(spec) | {"description": "new words", "route_optimized": True}
    write_specs(specs, [changed])
    plan, _ = engine.plan(specs)
    assert sorted((e.rule, e.path) for e in plan.actionable[0].errors) == [
        ("L4", "description"),
        ("L4", "route_optimized"),
    ]
    plan, report = engine.apply(specs, allow_replace=True)
    assert plan.actionable[0].action is Action.REPLACE and report.ok
    old_id = plan.actionable[0]
    assert engine.store.get_endpoint("ep").spec["description"] == "new words"
    assert old_id is not None and not engine.plan(specs)[0].has_changes


def test_r7_r8_inference_tables(engine: Engine, tmp_path: Path) -> None:
    spec = openai_chat("ep")
    spec["ai_gateway"] = {
        "inference_table_config": {"enabled": True, "catalog_name": "c", "schema_name": "s"}
    }
    specs = write_specs(tmp_path / "specs", [spec])
    engine.apply(specs)
    spec["ai_gateway"]["inference_table_config"]["catalog_name"] = "other"
    write_specs(specs, [spec])
    plan, _ = engine.plan(specs)
    assert [(e.rule, e.path) for e in plan.actionable[0].errors] == [
        ("R7", "ai_gateway.inference_table_config.catalog_name")
    ]
    local = self_hosted("cap", {"a": 100})
    local["config"]["auto_capture_config"] = {
        "enabled": False,
        "catalog_name": "c",
        "schema_name": "s",
    }
    specs2 = write_specs(tmp_path / "specs2", [local])
    engine.apply(specs2, stack="s2")
    local["config"]["auto_capture_config"]["enabled"] = True
    write_specs(specs2, [local])
    plan, _ = engine.plan(specs2, stack="s2")
    assert [e.rule for e in plan.actionable[0].errors] == ["R8"]


def test_l1_update_in_progress_by_a_live_holder(engine: Engine, tmp_path: Path) -> None:
    specs = write_specs(tmp_path / "specs", [self_hosted("ep", {"a": 100})])
    engine.apply(specs)
    engine.store.begin_update("ep", stack="stack", desired={"name": "ep"}, version=2, actor="other")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        # Another live process holds the lock (as the REST API's background update would).
        insert_lock(
            engine.state,
            "x",
            key="ep",
            holder="other@host",
            lease_expires_ms=0,
            host=None,
            pid=holder.pid,
        )
        write_specs(specs, [self_hosted("ep", {"a": 100}, version="3")])
        loaded_plan = engine.store.snapshot()
        assert loaded_plan.endpoints["ep"].update_interrupted is False
        from engine.specs.loader import load_specs
        from engine.workflow import desired_from
        from plans import make_plan

        docs = desired_from(load_specs([specs]), engine.secrets).documents
        plan = make_plan(docs, engine.store.snapshot(), stack="stack")
        assert [e.rule for e in plan.actionable[0].errors] == ["L1"]
    finally:
        holder.kill()
        holder.wait()


def test_cli_plan_exit_codes_and_json(tmp_path: Path, state_url: str) -> None:
    state = state_url
    specs = write_specs(tmp_path / "specs", [openai_chat("chat")])
    env = {"ENGINE_STATE": str(state)}
    run_cli("secrets", "create-scope", "scope", env=env)
    run_cli("secrets", "put-secret", "scope", "openai", env=env, input="sk-x")
    result = run_cli("plan", str(specs), "--detailed-exitcode", env=env)
    assert result.returncode == 2, result.stderr
    assert "Plan: 1 to create, 0 to update, 0 to replace, 0 to destroy." in result.stdout
    as_json = json.loads(run_cli("plan", str(specs), "--json", env=env).stdout)
    (change,) = as_json["changes"]
    assert change["action"] == "create" and change["config_version"] == {"from": None, "to": 1}
    assert set(change) >= {"endpoint", "action", "config_version", "class", "fields", "errors"}
    refused = run_cli("apply", str(specs), env=env)
    assert refused.returncode == 1 and "--auto-approve" in refused.stderr
    assert run_cli("apply", str(specs), "--auto-approve", env=env).returncode == 0
    again = run_cli("plan", str(specs), "--detailed-exitcode", env=env)
    assert again.returncode == 0 and again.stdout.startswith("No changes.")
    broken = write_specs(tmp_path / "broken", [{"name": "x y"}])
    bad = run_cli("plan", str(broken), env=env)
    assert bad.returncode == 1 and "N1" in bad.stderr and "Traceback" not in bad.stderr


def test_stale_plan_is_refused(tmp_path: Path, state_url: str) -> None:
    """A saved plan is stale when an endpoint it changes moved on since; a change to another
    endpoint (updates of different endpoints run in parallel) leaves it applicable."""
    state = state_url
    register_test_models(state)
    env = {
        "ENGINE_STATE": str(state),
        "ENGINE_EXECUTOR_PLUGINS": "executor_fixture:register",
        "TEST_EXECUTOR_DIR": str(tmp_path / "run"),
    }
    specs = write_specs(tmp_path / "specs", [self_hosted("ep", {"a": 100})])
    planfile, twin = tmp_path / "ep.plan", tmp_path / "twin.plan"
    assert run_cli("plan", str(specs), "-out", str(planfile), env=env).returncode == 0
    assert run_cli("plan", str(specs), "-out", str(twin), env=env).returncode == 0
    other = write_specs(tmp_path / "other", [self_hosted("ep2", {"b": 100})])
    assert run_cli("apply", str(other), "--auto-approve", env=env).returncode == 0
    applied = run_cli("apply", str(planfile), env=env)
    assert applied.returncode == 0, applied.stderr
    stale = run_cli("apply", str(twin), env=env)
    assert stale.returncode == 1 and "stale" in stale.stderr and "ep changed" in stale.stderr
    assert "Traceback" not in stale.stderr
    shown = run_cli("show", str(planfile), env=env)
    assert "will be created" in shown.stdout
    rows = {r.split()[0]: r for r in run_cli("state", "list", env=env).stdout.splitlines()}
    assert set(rows) == {"ep", "ep2"} and "version 1" in rows["ep"]


def test_concurrent_applies_one_waits_out(tmp_path: Path, state_url: str) -> None:
    state = state_url
    register_test_models(state)
    env = {
        "ENGINE_STATE": str(state),
        "ENGINE_EXECUTOR_PLUGINS": "executor_fixture:register",
        "TEST_EXECUTOR_DIR": str(tmp_path / "run"),
        # The first apply holds its entity until the second has answered (a fixed delay was
        # outlasted by the second CLI's start on a loaded machine).
        "TEST_EXECUTOR_HOLD": "a",
    }
    specs = write_specs(tmp_path / "specs", [self_hosted("ep", {"a": 100})])

    first = spawn_cli("apply", str(specs), "--auto-approve", env=env)
    from engine.state import open_state

    store = open_state(state)
    deadline = time.monotonic() + 30
    while not store.locks() and time.monotonic() < deadline:
        time.sleep(0.05)
    (lock,) = store.locks()
    assert lock.pid == first.pid and lock.keys == ("ep",)
    second = run_cli("apply", str(specs), "--auto-approve", "--lock-timeout", "0.5", env=env)
    assert second.returncode == 1
    # Refused either by the plan (the update it sees in progress, L1) or, in the moment
    # before that update is recorded, by the lock, named with its holder.
    held = f"pid {first.pid}" in second.stderr and lock.id in second.stderr
    assert held or "[L1]" in second.stdout, second.stdout + second.stderr
    (tmp_path / "run" / "release-a").touch()
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert store.get_endpoint("ep").config_version == 1
    assert store.locks() == []
    store.close()


def test_force_unlock_and_state_commands(tmp_path: Path, state_url: str) -> None:
    state = state_url
    env = {"ENGINE_STATE": str(state)}
    run_cli("secrets", "create-scope", "scope", env=env)
    run_cli("secrets", "put-secret", "scope", "openai", env=env, input="sk-x")
    insert_lock(state, "abc123")
    blocked = run_cli(
        "apply", str(write_specs(tmp_path / "s", [openai_chat()])), "--auto-approve", env=env
    )
    assert blocked.returncode == 1 and "abc123" in blocked.stderr
    assert run_cli("force-unlock", "nope", env=env).returncode == 1
    assert run_cli("force-unlock", "abc123", env=env).returncode == 0
    assert "no endpoints" in run_cli("state", "list", env=env).stdout


def test_apply_waits_for_a_hosts_reconcile_pass_but_not_for_another_update(
    tmp_path: Path, state_url: str
) -> None:
    """A running host's reconcile pass holds the lock briefly: `engine apply` beside it waits
    instead of failing, while another user's update still fails at once without
    --lock-timeout."""
    import threading

    state = state_url
    env = {"ENGINE_STATE": str(state)}
    specs = write_specs(tmp_path / "s", [openai_chat()])
    run_cli("secrets", "create-scope", "scope", env=env)
    run_cli("secrets", "put-secret", "scope", "openai", env=env, input="sk-x")
    store = open_state(state)
    lock = store.acquire_lock("reconcile", holder="host:test")
    releaser = threading.Timer(2.0, store.release_lock, args=(lock.id,))
    releaser.start()
    applied = run_cli("apply", str(specs), "--auto-approve", env=env)
    releaser.join()
    assert applied.returncode == 0, applied.stderr
    assert store.get_endpoint("chat").config_version == 1

    other = store.acquire_lock("api", holder="api:alice")
    write_specs(tmp_path / "s", [{**openai_chat(), "tags": [{"key": "a", "value": "b"}]}])
    blocked = run_cli("apply", str(specs), "--auto-approve", env=env)
    assert blocked.returncode == 1 and other.id in blocked.stderr
    store.release_lock(other.id)
    store.close()


def test_unknown_model_and_gpu_workload_are_plan_errors(tmp_path: Path, state_url: str) -> None:
    state = state_url
    register_test_models(state, entities=("a",), versions=("1",))
    env = {"ENGINE_STATE": str(state), "ENGINE_GPUS": "0"}
    unknown = self_hosted("ep", {"a": 50, "b": 50})
    unknown["config"]["served_entities"][0]["workload_type"] = "GPU_SMALL"
    specs = write_specs(tmp_path / "specs", [unknown])
    result = run_cli("plan", str(specs), "--json", env=env)
    assert result.returncode == 1
    errors = json.loads(result.stdout)["changes"][0]["errors"]
    assert sorted((e["rule"], e["path"]) for e in errors) == [
        ("G1", "config.served_entities[a]"),
        ("M1", "config.served_entities[b]"),
    ]
    allowed = run_cli("plan", str(specs), "--json", env={**env, "ENGINE_ALLOW_CPU_FALLBACK": "1"})
    assert [e["rule"] for e in json.loads(allowed.stdout)["changes"][0]["errors"]] == ["M1"]


def test_api_changes_show_as_drift_in_the_stack_plan(engine: Engine, tmp_path: Path) -> None:
    from engine.access.tokens import Principal
    from engine.control import EndpointService

    specs = write_specs(tmp_path / "specs", [openai_chat("chat")])
    engine.apply(specs)
    service = EndpointService(engine.state, engine.registry)
    service.replace_part("chat", "tags", [{"key": "owner", "value": "api"}], Principal("someone"))
    plan, _ = engine.plan(specs)
    (change,) = plan.actionable
    assert change.action is Action.UPDATE and change.change_class is ChangeClass.HOT
    assert change.fields and all(f.path.startswith("tags") for f in change.fields)
    engine.apply(specs)
    assert "tags" not in engine.store.get_endpoint("chat").spec
