"""Provisioned throughput without vLLM: replica bounds, the scaling rule, the meter, the
replica set's dispatch, and the autoscaler's grow/shrink steps on a real state file.

The real-vLLM round trip (load -> a second replica -> load gone -> one replica) is in
tests/test_runner_updates.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from engine_harness import Engine, register_test_models, self_hosted, write_specs
from executor_fixture import ControllableExecutor

from engine.gateway._replicas import ReplicaSet
from engine.gateway._table import EndpointRoute, RoutingTable, ServedEntity, Upstream
from engine.host.autoscale import Autoscaler, ThroughputMeter, desired_replicas
from providers.runner.executor import replica_bounds, replicas_of


@pytest.mark.parametrize(
    ("config", "chunk", "bounds"),
    [
        ({}, 100, (1, 1)),
        ({"max_provisioned_throughput": 300}, None, (1, 1)),  # not calibrated: one replica
        ({"min_provisioned_throughput": 0, "max_provisioned_throughput": 300}, 100, (1, 3)),
        ({"min_provisioned_throughput": 200, "max_provisioned_throughput": 400}, 100, (2, 4)),
        ({"min_provisioned_throughput": 500, "max_provisioned_throughput": 300}, 100, (3, 3)),
    ],
)
def test_replica_bounds_are_provisioned_throughput_over_the_chunk(
    config: dict[str, Any], chunk: int | None, bounds: tuple[int, int]
) -> None:
    assert replica_bounds(config, chunk) == bounds


def test_desired_replicas_keep_load_under_80_percent_within_bounds() -> None:
    assert desired_replicas(0, 100, 1, 4) == 1
    assert desired_replicas(79, 100, 1, 4) == 1
    assert desired_replicas(81, 100, 1, 4) == 2  # one saturated replica asks for a second
    assert desired_replicas(250, 100, 1, 4) == 4
    assert desired_replicas(10_000, 100, 1, 4) == 4
    assert desired_replicas(0, 100, 2, 4) == 2


def test_a_handle_without_replicas_is_one_replica() -> None:
    single = {"pid": 1, "base_url": "http://127.0.0.1:1/v1"}
    assert replicas_of(single) == [single]
    assert replicas_of(None) == [] and replicas_of({"scaled_to_zero": True}) == []
    two = {**single, "replicas": [single, {"pid": 2, "base_url": "http://127.0.0.1:2/v1"}]}
    assert [r["pid"] for r in replicas_of(two)] == [1, 2]


def test_the_meter_counts_output_tokens_in_its_window() -> None:
    meter = ThroughputMeter(window=2.0)
    meter.record(7, 100)
    meter.record(7, 50)
    meter.record(8, 0)
    assert meter.rate(7) == pytest.approx(75.0)
    assert meter.rate(8) == 0.0
    time.sleep(2.1)
    assert meter.rate(7) == 0.0


class _Replica:
    def __init__(self, name: str) -> None:
        self.name = name
        self.release = asyncio.Event()

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        await self.release.wait()
        return {"replica": self.name}


def test_the_replica_set_sends_each_request_to_the_least_busy_replica() -> None:
    async def scenario() -> list[str]:
        a, b = _Replica("a"), _Replica("b")
        replicas = ReplicaSet([a, b])  # type: ignore[list-item]
        slow = [asyncio.ensure_future(replicas.chat({})) for _ in range(2)]
        await asyncio.sleep(0)
        assert replicas.busy == [1, 1]  # spread, not stacked
        a.release.set()
        first = await slow[0]
        assert replicas.busy == [0, 1]
        quick = await replicas.chat({})  # b is busy: a answers
        b.release.set()
        return [first["replica"], quick["replica"], (await slow[1])["replica"]]

    assert asyncio.run(scenario()) == ["a", "a", "b"]


class StubRunners:
    def __init__(self) -> None:
        self.stopped: list[dict[str, Any]] = []

    def bounds(self, deployment: Any) -> tuple[int, int]:
        return 1, 2

    def prepare(self, deployment: Any, resolve: Any) -> None:
        pass

    def add_replica(self, deployment: Any, handle: dict[str, Any], timeout: float) -> Any:
        replicas = replicas_of(handle)
        new = {"pid": 100 + len(replicas), "base_url": f"http://127.0.0.1:{9000 + len(replicas)}"}
        return {**replicas[0], "replicas": [*replicas, new]}

    def without_last_replica(self, handle: dict[str, Any]) -> dict[str, Any]:
        replicas = replicas_of(handle)[:-1]
        return {**replicas[0], "replicas": replicas}

    def stop_replica(self, deployment: Any, replica: dict[str, Any]) -> None:
        self.stopped.append(replica)


def test_the_autoscaler_adds_a_replica_under_load_and_removes_it_when_load_falls(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state" / "state.db"
    state.parent.mkdir(parents=True)
    register_test_models(state)
    engine = Engine(state, ControllableExecutor(tmp_path / "running"))
    engine.apply(write_specs(tmp_path / "specs", [self_hosted("ep", {"a": 100})]))
    (row,) = engine.store.entities(role="active")
    engine.store.update_entity(row.id, handle={"pid": 1, "base_url": "http://127.0.0.1:1/v1"})
    runners, meter, drained = StubRunners(), ThroughputMeter(window=60), []
    scaler = Autoscaler(
        state,
        runners,  # type: ignore[arg-type]
        lambda ref: "",
        meter,
        drain=lambda instance, serial: drained.append((instance, serial)),
        scale_down_after=0.2,
    )

    def table(replicas: int) -> RoutingTable:
        served = ServedEntity(
            "a",
            row.id,
            Upstream(adapter=None, client=None),  # type: ignore[arg-type]
            replicas=replicas,
            provisioned=(100, 1, 2),
        )
        route = EndpointRoute(
            "ep", "id", "llm/v1/chat", 1, {"a": served}, ["a"], [100], [served], (), False, False
        )
        return RoutingTable(serial=1, endpoints={"ep": route})

    async def scenario() -> None:
        meter.record(row.id, 60 * 90)  # 90 tokens/s: above 80% of one replica's 100
        scaler.step(table(1))
        await scaler.wait()
        (grown,) = engine.store.entities(role="active")
        assert [r["pid"] for r in replicas_of(grown.handle)] == [1, 101]
        scaler.step(table(2))  # still loaded: two is right
        await scaler.wait()
        assert len(replicas_of(engine.store.entities(role="active")[0].handle)) == 2

        meter._events.clear()  # the load is gone
        scaler.step(table(2))  # low, but not for long enough yet
        await scaler.wait()
        assert not runners.stopped
        await asyncio.sleep(0.3)
        scaler.step(table(2))
        await scaler.wait()

    asyncio.run(scenario())
    (shrunk,) = engine.store.entities(role="active")
    assert [r["pid"] for r in replicas_of(shrunk.handle)] == [1]
    assert [r["pid"] for r in runners.stopped] == [101]
    assert drained and drained[0][0] == row.id
    engine.close()
