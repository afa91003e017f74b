"""Scale to zero without vLLM: parking an idle runner, and the bounded wait of a cold start.

The runner executor is replaced by a stub whose readiness the test controls, so each step
(a cold start in progress, a timeout, a failed start) happens exactly when the test says.
The real-vLLM round trip (idle runner stops, next request succeeds) is in
tests/test_runner_updates.py.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from engine_harness import Engine, register_test_models, self_hosted, write_specs
from executor_fixture import ControllableExecutor

from engine.gateway._table import EndpointRoute, RoutingTable, ServedEntity, Upstream
from engine.host.app import ServingApp
from engine.host.scale_to_zero import ColdStartError, ScaleToZero
from providers import ExecutorError


class StubRunners:
    """prepare/start/wait_ready/stop like RunnerExecutor; wait_ready blocks until released."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.fail: str | None = None
        self.started = 0
        self.stopped: list[Any] = []

    def prepare(self, deployment: Any, resolve: Any) -> None:
        pass

    def start(self, deployment: Any) -> dict[str, Any]:
        self.started += 1
        return {"pid": 0, "base_url": f"http://127.0.0.1:1/v{self.started}"}

    def wait_ready(self, deployment: Any, handle: Any, timeout: float) -> None:
        assert self.ready.wait(30)
        if self.fail:
            raise ExecutorError(self.fail)

    def stop(self, deployment: Any, handle: Any) -> None:
        self.stopped.append(handle)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    state = tmp_path / "state" / "state.db"
    state.parent.mkdir(parents=True)
    register_test_models(state)
    eng = Engine(state, ControllableExecutor(tmp_path / "running"))
    eng.apply(write_specs(tmp_path / "specs", [self_hosted("ep", {"a": 100})]))
    yield eng
    eng.close()


def _entity(engine: Engine) -> Any:
    (row,) = engine.store.entities(role="active")
    return row


def _scaler(engine: Engine, runners: StubRunners, wait: float = 5.0) -> ScaleToZero:
    return ScaleToZero(
        engine.state,
        runners,  # type: ignore[arg-type]
        lambda ref: "",
        idle_after=0.0,
        cold_start_wait=wait,
        holder="host:test",
    )


def _table(entity_id: int) -> tuple[RoutingTable, Upstream]:
    upstream = Upstream(adapter=None, client=None)  # type: ignore[arg-type]
    served = ServedEntity("a", entity_id, upstream, scale_to_zero=True)
    route = EndpointRoute(
        "ep", "id", "llm/v1/chat", 1, {"a": served}, ["a"], [100], [served], (), False, False
    )
    return RoutingTable(serial=1, endpoints={"ep": route}), upstream


def test_an_idle_runner_is_parked_and_marked_scaled_to_zero(engine: Engine) -> None:
    runners = StubRunners()
    row = _entity(engine)
    table, upstream = _table(row.id)
    asyncio.run(_scaler(engine, runners).park_idle(table))
    parked = _entity(engine)
    assert parked.handle["scaled_to_zero"] is True
    assert parked.deployment == "DEPLOYMENT_READY" and "scaled to zero" in parked.message
    assert len(runners.stopped) == 1 and upstream.parked


def test_a_busy_or_locked_runner_is_not_parked(engine: Engine) -> None:
    runners = StubRunners()
    row = _entity(engine)
    table, upstream = _table(row.id)
    upstream.acquire()  # a request in flight
    asyncio.run(_scaler(engine, runners).park_idle(table))
    assert not runners.stopped and not upstream.parked
    asyncio.run(upstream.release())
    lock = engine.store.acquire_lock("apply", holder="someone", timeout=0)
    try:
        asyncio.run(_scaler(engine, runners).park_idle(table))
    finally:
        engine.store.release_lock(lock.id)
    assert not runners.stopped and not upstream.parked
    assert not (_entity(engine).handle or {}).get("scaled_to_zero")


def _scale_down(engine: Engine) -> int:
    row = _entity(engine)
    engine.store.update_entity(row.id, handle={**(row.handle or {}), "scaled_to_zero": True})
    return row.id


def test_a_request_waits_a_bounded_time_and_requests_share_one_cold_start(
    engine: Engine,
) -> None:
    runners = StubRunners()
    entity_id = _scale_down(engine)
    scaler = _scaler(engine, runners, wait=0.3)

    async def scenario() -> None:
        results = await asyncio.gather(
            *(scaler.wake(entity_id) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, TimeoutError) for r in results), results
        for _ in range(100):  # the start runs in a thread: on a loaded machine it may lag
            if runners.started:
                break
            await asyncio.sleep(0.05)
        assert runners.started == 1  # five waiting requests, one start
        runners.ready.set()
        await scaler.wake(entity_id)  # joins the start in progress, which now finishes
        assert runners.started == 1

    asyncio.run(scenario())
    row = _entity(engine)
    assert row.deployment == "DEPLOYMENT_READY" and row.message == ""
    assert not row.handle.get("scaled_to_zero") and row.handle["base_url"].endswith("/v1")


def test_a_runner_that_cannot_start_stays_scaled_to_zero_and_says_why(engine: Engine) -> None:
    runners = StubRunners()
    runners.fail = "the model folder is gone"
    runners.ready.set()
    entity_id = _scale_down(engine)
    with pytest.raises(ColdStartError, match="the model folder is gone"):
        asyncio.run(_scaler(engine, runners).wake(entity_id))
    row = _entity(engine)
    assert row.deployment == "DEPLOYMENT_FAILED" and "the model folder is gone" in row.message
    assert row.handle["scaled_to_zero"] is True  # the next request tries again
    runners.fail = None
    asyncio.run(_scaler(engine, runners).wake(entity_id))
    assert _entity(engine).deployment == "DEPLOYMENT_READY"


def test_the_gateway_answers_503_with_retry_after_when_the_wait_runs_out(
    engine: Engine,
) -> None:
    from engine.asgi import ApiError

    runners = StubRunners()
    entity_id = _scale_down(engine)
    app = ServingApp(engine.state, cold_start_wait=0.2)
    app.scaler = _scaler(engine, runners, wait=0.2)
    route = EndpointRoute("ep", "id", "llm/v1/chat", 1, {}, [], [], [], (), False, False)
    entity = ServedEntity("a", entity_id, None, scaled_to_zero=True)
    # The start finishes after the request gave up (asyncio.run waits for its thread).
    threading.Timer(1.0, runners.ready.set).start()
    with pytest.raises(ApiError) as caught:
        asyncio.run(app.wake(route, entity))
    assert caught.value.status == 503
    assert ("retry-after", "1") in caught.value.headers
    assert "starting from zero" in caught.value.message


def test_the_default_system_prompt_comes_first_unless_the_request_has_one() -> None:
    from engine.gateway._dataplane import with_system_prompt

    asked = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    added = with_system_prompt(asked, "You are terse.")
    assert added["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
    ]
    assert asked["messages"] == [{"role": "user", "content": "hi"}]  # not mutated
    own = {"messages": [{"role": "system", "content": "mine"}, {"role": "user", "content": "x"}]}
    assert with_system_prompt(own, "You are terse.") is own
    assert with_system_prompt(asked, None) is asked


def test_refresh_reports_a_missing_runner_and_leaves_a_scaled_to_zero_one_alone(
    engine: Engine,
) -> None:
    from engine_harness import run_cli

    env = {"ENGINE_STATE": str(engine.state)}
    refreshed = run_cli("refresh", env=env)
    assert refreshed.returncode == 0, refreshed.stderr
    assert "DEPLOYMENT_READY -> DEPLOYMENT_FAILED" in refreshed.stdout
    assert "no vLLM server is recorded" in refreshed.stdout
    assert _entity(engine).deployment == "DEPLOYMENT_FAILED"

    entity_id = _scale_down(engine)
    engine.store.update_entity(entity_id, deployment="DEPLOYMENT_READY", message="scaled to zero")
    refreshed = run_cli("refresh", env=env)
    assert refreshed.returncode == 0 and "0 entities changed" in refreshed.stdout
    assert _entity(engine).deployment == "DEPLOYMENT_READY"
