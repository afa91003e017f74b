"""Drive plan/apply in-process or through the real CLI in a subprocess, for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.apply import Applier, ApplyReport
from engine.secrets.store import SecretStore, secret_store_for_state
from engine.specs.loader import load_specs
from engine.state import StateStore, open_state, resolve_state
from engine.workflow import desired_from
from plans import Plan, make_plan
from providers import ExecutorRegistry, ExternalModelExecutor

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def write_specs(directory: Path, specs: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.yaml"):
        old.unlink()
    for spec in specs:
        (directory / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    if not specs:
        (directory / "empty.yaml").write_text("")
    return directory


def self_hosted(name: str, entities: dict[str, int], *, version: str = "1") -> dict[str, Any]:
    """An endpoint of registered models: {entity name: traffic percentage}."""
    return {
        "name": name,
        "config": {
            "served_entities": [
                {
                    "name": entity,
                    "entity_name": f"main.default.{entity}",
                    "entity_version": version,
                    "workload_size": "Small",
                    "scale_to_zero_enabled": True,
                }
                for entity in entities
            ],
            "traffic_config": {
                "routes": [
                    {"served_entity_name": e, "traffic_percentage": p} for e, p in entities.items()
                ]
            },
        },
    }


@dataclass
class Engine:
    """One state (a SQLite file or a PostgreSQL URL) and its secret store, used in-process."""

    state: Any  # Path or str: what --state takes
    executor: Any = None

    def __post_init__(self) -> None:
        self.store: StateStore = open_state(self.state)
        self.secrets: SecretStore = secret_store_for_state(self.state)

    def close(self) -> None:
        self.store.close()
        self.secrets.close()

    def registry(self) -> ExecutorRegistry:
        registry = ExecutorRegistry()
        registry.register("external", ExternalModelExecutor())
        if self.executor is not None:
            registry.register("self_hosted", self.executor)
        return registry

    def plan(self, specs: Path, *, stack: str = "stack", **kwargs: Any) -> tuple[Plan, Any]:
        loaded = load_specs([specs])
        assert loaded.valid, [d.render() for d in loaded.diagnostics]
        desired = desired_from(loaded, self.secrets)
        plan = make_plan(
            desired.documents,
            self.store.snapshot(),
            stack=stack,
            secret_exists=self.secrets.has,
            **kwargs,
        )
        return plan, desired

    def apply(
        self, specs: Path, *, stack: str = "stack", **kwargs: Any
    ) -> tuple[Plan, ApplyReport]:
        plan, desired = self.plan(specs, stack=stack, **kwargs)
        assert not plan.errored, [e for c in plan.changes for e in c.errors]
        applier = Applier(
            self.store, self.secrets, self.registry(), actor="test", plaintexts=desired.plaintexts
        )
        return plan, applier.apply(plan)


def engine_with_openai_key(state: Path | str) -> Engine:
    """An engine whose secret `{{secrets/scope/openai}}` holds an upstream key (what
    serving_harness.openai_entity refers to)."""
    engine = Engine(state)
    engine.secrets.create_scope("scope")
    engine.secrets.put_secret("scope", "openai", "sk-upstream-key")
    return engine


def _cli_env(env: dict[str, str] | None) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}", **(env or {})}


def spawn_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`engine ARGS...` started in the background (stdout and stderr piped, as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_cli_env(env),
        cwd=ROOT,
    )


def run_cli(
    *args: str, env: dict[str, str] | None = None, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = _cli_env(env)
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        timeout=timeout,
        cwd=ROOT,
    )


def register_test_models(
    state: Path | str,
    entities: tuple[str, ...] = ("a", "b", "c", "d", "e"),
    versions: tuple[str, ...] = ("1", "2", "3"),
) -> None:
    """Catalog entries for the `main.default.<entity>` models the test executor "serves"."""
    from engine.catalog.models import ModelCatalog

    folder = resolve_state(state).local_dir / "test-model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "test"}')
    store = open_state(state)
    try:
        catalog = ModelCatalog(store)
        for entity in entities:
            for version in versions:
                catalog.register(f"main.default.{entity}", version, folder, "llm/v1/chat")
    finally:
        store.close()


def insert_lock(
    state: Path | str,
    lock_id: str,
    *,
    key: str = "*",
    holder: str = "ci@elsewhere",
    lease_expires_ms: int = 99999999999999,
    host: str | None = "elsewhere",
    pid: int = 1,
) -> None:
    """A lock row as another process wrote it: by default a host elsewhere whose lease still
    runs; `host=None` is this host (then `pid` decides whether the holder lives)."""
    import socket

    where = socket.gethostname() if host is None else host
    row = (key, lock_id, holder, "apply", 0, lease_expires_ms, where, pid)
    if str(state).startswith("postgresql"):
        import psycopg

        with psycopg.connect(str(state), autocommit=True) as conn:
            conn.execute("INSERT INTO locks VALUES (%s, %s, %s, %s, %s, %s, %s, %s)", row)
        return
    import sqlite3

    with sqlite3.connect(state) as conn:
        conn.execute("INSERT INTO locks VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
