"""Convergence: random sequences of spec sets, applied in turn, always converge.

After every apply: the next plan is empty, the state equals the specs after normalisation, and
what was applied is exactly what was planned.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path
from typing import Any

from engine_harness import Engine, write_specs
from executor_fixture import ControllableExecutor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.specs.loader import load_specs
from engine.workflow import desired_from
from plans import Action

NAMES = ["alpha", "beta", "gamma", "delta", "epsilon"]
_counter = itertools.count()


def _split(n: int) -> st.SearchStrategy[list[int]]:
    if n == 1:
        return st.just([100])
    return st.lists(st.integers(0, 100), min_size=n - 1, max_size=n - 1).map(
        lambda cuts: [b - a for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), 100], strict=True)]
    )


@st.composite
def endpoint(draw: st.DrawFn, name: str) -> dict[str, Any]:
    external = NAMES.index(name) % 2 == 0  # an endpoint never switches kind (E2)
    entities = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    served = []
    for entity in entities:
        if external:
            credential = draw(
                st.one_of(
                    st.just({"openai_api_key": "{{secrets/scope/openai}}"}),
                    st.sampled_from(["sk-one", "sk-two", "sk-three"]).map(
                        lambda v: {"openai_api_key_plaintext": v}
                    ),
                )
            )
            served.append(
                {
                    "name": entity,
                    "external_model": {
                        "name": draw(st.sampled_from(["gpt-4", "gpt-4o"])),
                        "provider": "openai",
                        "task": "llm/v1/chat",
                        "openai_config": credential,
                    },
                }
            )
        else:
            served.append(
                {
                    "name": entity,
                    "entity_name": f"main.default.{entity}",
                    "entity_version": draw(st.sampled_from(["1", "2"])),
                    "workload_size": "Small",
                    "scale_to_zero_enabled": draw(st.booleans()),
                }
            )
    spec: dict[str, Any] = {"name": name, "config": {"served_entities": served}}
    if len(served) > 1 or draw(st.booleans()):
        percentages = draw(_split(len(served)))
        spec["config"]["traffic_config"] = {
            "routes": [
                {"served_entity_name": e, "traffic_percentage": p}
                for e, p in zip(entities, percentages, strict=True)
            ]
        }
    if draw(st.booleans()):
        spec["rate_limits"] = [
            {"calls": draw(st.integers(0, 50)), "key": "user", "renewal_period": "minute"}
        ]
    if draw(st.booleans()):
        spec["tags"] = [{"key": "team", "value": draw(st.sampled_from(["ml", "ai"]))}]
    return spec


@st.composite
def spec_set(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(st.sampled_from(NAMES), max_size=4, unique=True))
    return [draw(endpoint(name)) for name in names]


def _scratch() -> Path:
    # SQLite fsyncs every step; on tmpfs that costs nothing, which keeps 200 sequences fast.
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return Path(tempfile.mkdtemp(prefix="converge-", dir=base))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(spec_set(), min_size=3, max_size=8))
def test_sequences_converge(sequence: list[list[dict[str, Any]]]) -> None:
    root = _scratch()
    engine = Engine(root / "state.db", ControllableExecutor(root / "running"))
    try:
        engine.secrets.create_scope("scope")
        engine.secrets.put_secret("scope", "openai", "sk-ref")
        specs = root / "specs"
        for specs_now in sequence:
            write_specs(specs, specs_now)
            before = {r.name: r for r in engine.store.list_endpoints()}
            plan, report = engine.apply(specs)
            assert report.ok, report.failed
            assert sorted(report.applied) == sorted(c.endpoint for c in plan.actionable)

            # The next plan is empty.
            assert not engine.plan(specs)[0].has_changes

            # The state equals the specs after normalisation, version by version.
            desired = {
                d["name"]: d for d in desired_from(load_specs([specs]), engine.secrets).documents
            }
            rows = {r.name: r for r in engine.store.list_endpoints()}
            assert set(rows) == set(desired)
            for change in plan.changes:
                row = rows.get(change.endpoint)
                if change.action is Action.DELETE:
                    assert row is None
                    continue
                assert row.spec == desired[change.endpoint] == change.desired
                if change.action is not Action.NO_OP:
                    assert row.config_version == change.config_version_to
                else:
                    assert row.config_version == before[change.endpoint].config_version

            # What runs is what the state tracks: one active instance per entity.
            entities = engine.store.entities()
            assert {e.role for e in entities} <= {"active"}
            for name, row in rows.items():
                served = {e["name"] for e in row.spec["config"]["served_entities"]}
                assert sorted(e.name for e in entities if e.endpoint == name) == sorted(served)
            self_hosted_ids = {e.id for e in entities if "external_model" not in e.config}
            assert engine.executor.running() == self_hosted_ids
    finally:
        engine.close()
        for path in sorted(root.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        root.rmdir()
