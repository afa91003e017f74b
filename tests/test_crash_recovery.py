"""SIGKILL an apply at each of its steps: the next apply converges and nothing runs untracked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_harness import Engine, register_test_models, run_cli, self_hosted, write_specs
from executor_fixture import ControllableExecutor

BEFORE = [self_hosted("keep", {"a": 60, "b": 40}), self_hosted("gone", {"c": 100})]
AFTER = [
    self_hosted("keep", {"a": 60, "b": 40}, version="2"),
    self_hosted("new", {"d": 50, "e": 50}),
]


@pytest.fixture(autouse=True)
def _catalog(tmp_path: Path) -> None:
    register_test_models(tmp_path / "state.db")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "ENGINE_STATE": str(tmp_path / "state.db"),
        "ENGINE_EXECUTOR_PLUGINS": "executor_fixture:register",
        "TEST_EXECUTOR_DIR": str(tmp_path / "running"),
        **extra,
    }


def _crash_points(tmp_path: Path) -> list[str]:
    """Every executor step of the AFTER apply, found by tracing one clean run."""
    trace = tmp_path / "trace.txt"
    specs = write_specs(tmp_path / "specs", BEFORE)
    assert run_cli("apply", str(specs), "--auto-approve", env=_env(tmp_path)).returncode == 0
    write_specs(specs, AFTER)
    result = run_cli(
        "apply", str(specs), "--auto-approve", env=_env(tmp_path, TEST_EXECUTOR_TRACE=str(trace))
    )
    assert result.returncode == 0, result.stderr
    return trace.read_text().split()


def test_crash_points_are_every_step(tmp_path: Path) -> None:
    assert _crash_points(tmp_path) == CRASH_POINTS


# Every step of the AFTER apply, in order (test_crash_points_are_every_step keeps it true):
# keep's two entities come up, keep's old ones stop, `new` comes up, `gone` stops.
CRASH_POINTS = [
    "prepare:1",
    "start:1",
    "wait:1",
    "prepare:2",
    "start:2",
    "wait:2",
    "stop:1",
    "stopped:1",
    "stop:2",
    "stopped:2",
    "prepare:3",
    "start:3",
    "wait:3",
    "prepare:4",
    "start:4",
    "wait:4",
    "stop:3",
    "stopped:3",
]


@contextlib.contextmanager
def _engine(tmp_path: Path) -> Iterator[Engine]:
    """The state and the test executor in-process (what the CLI's plugin runs, no crash)."""
    engine = Engine(tmp_path / "state.db", ControllableExecutor(tmp_path / "running"))
    try:
        yield engine
    finally:
        engine.close()


def _has_changes(tmp_path: Path, specs: Path) -> bool:
    """What `engine plan --detailed-exitcode` answers, in-process (the CLI's stack name is the
    specs folder's): a CLI process costs seconds of CPU on a loaded machine, 18 times over."""
    with _engine(tmp_path) as engine:
        return engine.plan(specs, stack=specs.name)[0].has_changes


@pytest.mark.parametrize("crash_at", CRASH_POINTS)
def test_apply_killed_then_next_apply_converges(tmp_path: Path, crash_at: str) -> None:
    specs = write_specs(tmp_path / "specs", BEFORE)
    env = _env(tmp_path)
    # The starting point, in-process: what is under test is the killed apply and the next one.
    with _engine(tmp_path) as engine:
        engine.apply(specs, stack=specs.name)
    assert not _has_changes(tmp_path, specs)
    write_specs(specs, AFTER)
    killed = run_cli(
        "apply", str(specs), "--auto-approve", env=_env(tmp_path, TEST_EXECUTOR_CRASH_AT=crash_at)
    )
    assert killed.returncode == -9, (killed.returncode, killed.stderr)

    # The next plan shows what remains (it cannot be empty: the apply did not finish).
    assert _has_changes(tmp_path, specs)

    # The next apply takes over the dead apply's lock and converges.
    again = run_cli("apply", str(specs), "--auto-approve", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not _has_changes(tmp_path, specs)

    engine = Engine(tmp_path / "state.db", ControllableExecutor(tmp_path / "running"))
    try:
        tracked = {e.id for e in engine.store.entities()}
        assert engine.executor.running() == tracked  # nothing started and untracked
        assert {e.role for e in engine.store.entities()} == {"active"}
        names = {r.name for r in engine.store.list_endpoints()}
        assert names == {"keep", "new"}
        for row in engine.store.list_endpoints():
            assert row.config_update == "NOT_UPDATING" and row.pending is None
        keep = engine.store.get_endpoint("keep")
        assert keep.config_version == 2
        assert {e.config["entity_version"] for e in engine.store.entities("keep")} == {"2"}
        assert engine.store.locks() == []
    finally:
        engine.close()


def test_crash_during_first_create(tmp_path: Path) -> None:
    specs = write_specs(tmp_path / "specs", BEFORE)
    killed = run_cli(
        "apply", str(specs), "--auto-approve", env=_env(tmp_path, TEST_EXECUTOR_CRASH_AT="wait:2")
    )
    assert killed.returncode == -9
    assert run_cli("apply", str(specs), "--auto-approve", env=_env(tmp_path)).returncode == 0
    assert run_cli("plan", str(specs), "--detailed-exitcode", env=_env(tmp_path)).returncode == 0
    engine = Engine(tmp_path / "state.db", ControllableExecutor(tmp_path / "running"))
    try:
        assert engine.executor.running() == {e.id for e in engine.store.entities()}
        assert len(engine.store.entities()) == 3
    finally:
        engine.close()
