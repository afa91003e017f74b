"""How planning time grows with the number of endpoints, beside loading the same specs.

For each size N (default 1,000 / 10,000 / 100,000) the bench builds N realistic endpoint bodies
(mostly external-model endpoints, some with two entities and a 90/10 traffic split, plus some
self-hosted ones), then changes 1% of them (a traffic split, a tag value or an external model
name, mixed). The changed specs are written as YAML lists, 1,000 endpoints a file, into a temp
dir (not timed). The actual state is built from canonical documents of the ORIGINAL bodies.

Measured, each with `time.perf_counter()` (best of 3 for N <= 10,000, 1 run above):

    load+validate  `load_specs([dir])`: read, parse, interpolate and validate every file
    canonical      `canonical_endpoint(spec, digest)` for every loaded spec
    make_plan      `make_plan(docs, snapshot)` against the state of the original specs
    plan total     canonical + make_plan (best of each)

Every plan is checked to hold exactly N/100 updates and nothing else, so that the bench cannot
silently measure an empty plan. The goal (issue): 10,000 endpoints planned in <= 1 s, with
near-linear growth (about 10x time for 10x endpoints).

Run:  python bench/plan_scale.py                 (1,000, 10,000 and 100,000 endpoints)
      python bench/plan_scale.py --quick         (1,000 and 10,000 only)
      python bench/plan_scale.py --sizes 500,5000
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

# Run from a checkout without installing: make the repo root importable.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.specs.loader import load_specs  # noqa: E402
from plans import (  # noqa: E402
    Canonical,
    EndpointRecord,
    Plan,
    StateSnapshot,
    canonical_endpoint,
    make_plan,
)
from schemas import validate_endpoint  # noqa: E402

DEFAULT_SIZES = (1_000, 10_000, 100_000)
QUICK_SIZES = (1_000, 10_000)
PER_FILE = 1_000  # endpoints per YAML file
CHANGED_EVERY = 100  # 1% of endpoints change
GOAL_N = 10_000
GOAL_S = 1.0
STACK = "bench"

T = TypeVar("T")
Body = dict[str, Any]
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def digest(value: str) -> str:
    """Stand-in for the keyed hash of `*_plaintext` secrets."""
    return "h:" + value


# --- endpoint bodies ------------------------------------------------------------------------


def _openai(name: str, model: str, scope: str) -> Body:
    return {
        "name": name,
        "external_model": {
            "name": model,
            "provider": "openai",
            "task": "llm/v1/chat",
            "openai_config": {"openai_api_key": f"{{{{secrets/{scope}/openai_key}}}}"},
        },
    }


def _self_hosted(name: str, model: str) -> Body:
    return {
        "name": name,
        "entity_name": f"main.default.{model}",
        "entity_version": "1",
        "workload_size": "Small",
        "scale_to_zero_enabled": True,
    }


def _split(first: str, second: str) -> Body:
    return {
        "routes": [
            {"served_entity_name": first, "traffic_percentage": 90},
            {"served_entity_name": second, "traffic_percentage": 10},
        ]
    }


def _tags(i: int) -> list[Body]:
    return [
        {"key": "team", "value": f"team-{i % 37}"},
        {"key": "env", "value": "prod" if i % 3 else "staging"},
    ]


def make_body(i: int) -> Body:
    """Endpoint i; its shape depends on i % 10 (the change picker relies on this)."""
    shape = i % 10
    name = f"ep-{i:06d}"
    scope = f"scope_{i % 50}"
    if shape <= 3:  # 40%: one external chat model
        config: Body = {"served_entities": [_openai("chat", "gpt-4o", scope)]}
    elif shape <= 6:  # 30%: two external chat models, 90/10
        config = {
            "served_entities": [
                _openai("primary", "gpt-4o", scope),
                _openai("canary", "gpt-4o-mini", scope),
            ],
            "traffic_config": _split("primary", "canary"),
        }
    elif shape <= 8:  # 20%: one self-hosted model
        config = {"served_entities": [_self_hosted("main", f"model_{i % 20}")]}
    else:  # 10%: two self-hosted versions, 90/10
        config = {
            "served_entities": [
                _self_hosted("current", f"model_{i % 20}"),
                _self_hosted("challenger", f"model_{i % 20}_v2"),
            ],
            "traffic_config": _split("current", "challenger"),
        }
    body: Body = {"name": name, "config": config, "tags": _tags(i)}
    if shape <= 6:
        body["rate_limits"] = [{"calls": 100, "key": "user", "renewal_period": "minute"}]
    return body


# --- the 1% change ---------------------------------------------------------------------------


def _change_split(body: Body) -> None:
    routes = body["config"]["traffic_config"]["routes"]
    routes[0]["traffic_percentage"], routes[1]["traffic_percentage"] = 50, 50


def _change_tag(body: Body) -> None:
    body["tags"][0]["value"] = "team-moved"


def _change_model(body: Body) -> None:
    body["config"]["served_entities"][0]["external_model"]["name"] = "gpt-4.1"


# (offset inside a block of 100 endpoints, change); offsets pick a shape that fits the change.
_CHANGES: list[tuple[int, Callable[[Body], None]]] = [
    (5, _change_split),  # two external models
    (9, _change_split),  # two self-hosted models
    (2, _change_tag),  # one external model
    (18, _change_tag),  # one self-hosted model
    (21, _change_model),  # one external model
    (44, _change_model),  # two external models (the primary)
]


def changed_indices(n: int) -> dict[int, Callable[[Body], None]]:
    """One changed endpoint per block of 100, rotating through the kinds of change."""
    changes: dict[int, Callable[[Body], None]] = {}
    for block in range(n // CHANGED_EVERY):
        offset, change = _CHANGES[block % len(_CHANGES)]
        changes[block * CHANGED_EVERY + offset] = change
    return changes


# --- fixture ---------------------------------------------------------------------------------


@dataclass
class Fixture:
    n: int
    spec_dir: Path
    snapshot: StateSnapshot
    expected_updates: int


def build_fixture(n: int, root: Path) -> Fixture:
    """Write the desired (changed) specs to `root` and build the state from the originals."""
    changes = changed_indices(n)
    records: dict[str, EndpointRecord] = {}
    batch: list[Body] = []
    for i in range(n):
        original = make_body(i)
        # The state holds its own canonical documents (no objects shared with the desired side,
        # so comparisons cannot short-cut on identity).
        spec, diagnostics = validate_endpoint(original)
        require(spec is not None and not any(d.is_error for d in diagnostics), diagnostics)
        assert spec is not None
        records[spec.name] = EndpointRecord(
            name=spec.name,
            spec=canonical_endpoint(spec, digest),
            config_version=1,
            stack=STACK,
        )
        desired = make_body(i)
        if i in changes:
            changes[i](desired)
        batch.append(desired)
        if len(batch) == PER_FILE or i == n - 1:
            path = root / f"endpoints-{i // PER_FILE:04d}.yaml"
            path.write_text(yaml.dump(batch, Dumper=_Dumper, sort_keys=False), encoding="utf-8")
            batch = []
    snapshot = StateSnapshot(lineage="x", serial=1, endpoints=records)
    return Fixture(n=n, spec_dir=root, snapshot=snapshot, expected_updates=n // CHANGED_EVERY)


# --- timing ----------------------------------------------------------------------------------


def best_of(repeats: int, fn: Callable[[], T]) -> tuple[float, T]:
    """Fastest of `repeats` runs, and the result of the last one."""
    best = float("inf")
    result: T
    for _ in range(repeats):
        gc.collect()  # don't bill one run for the garbage of the one before
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


@dataclass
class Row:
    n: int
    load_s: float
    canonical_s: float
    plan_s: float

    @property
    def total_s(self) -> float:
        return self.canonical_s + self.plan_s


def require(ok: bool, detail: object) -> None:
    """Like assert, but kept under `python -O`: a broken fixture must stop the bench."""
    if not ok:
        raise SystemExit(f"bench check failed: {detail}")


def check_plan(plan: Plan, fixture: Fixture) -> None:
    """Exactly the 1% updates, no creates/replaces/deletes, one change per endpoint."""
    s = plan.summary
    expected = fixture.expected_updates
    require((s.create, s.update, s.replace, s.delete) == (0, expected, 0, 0), s)
    require(len(plan.actionable) == expected, f"{len(plan.actionable)} actionable changes")
    require(len(plan.changes) == fixture.n, f"{len(plan.changes)} changes for {fixture.n}")
    require(not plan.errored, [c.errors for c in plan.changes if c.errors][:3])


def measure(n: int) -> Row:
    if n % CHANGED_EVERY:
        raise SystemExit(f"size {n}: must be a multiple of {CHANGED_EVERY} (1% changed)")
    repeats = 3 if n <= GOAL_N else 1
    with tempfile.TemporaryDirectory(prefix=f"plan-scale-{n}-") as tmp:
        fixture = build_fixture(n, Path(tmp))

        load_s, loaded = best_of(repeats, lambda: load_specs([fixture.spec_dir]))
        require(loaded.valid, loaded.errors[:3])
        require(len(loaded.endpoints) == n, f"{len(loaded.endpoints)} endpoints loaded")
        specs = [e.spec for e in loaded.endpoints]
        del loaded  # keep only the specs: parsed YAML is not needed to plan

        def canonicalise() -> list[Canonical]:
            return [canonical_endpoint(spec, digest) for spec in specs]

        canonical_s, docs = best_of(repeats, canonicalise)
        plan_s, plan = best_of(repeats, lambda: make_plan(docs, fixture.snapshot, stack=STACK))
        check_plan(plan, fixture)
    return Row(n=n, load_s=load_s, canonical_s=canonical_s, plan_s=plan_s)


# --- report ----------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'N':>8}  {'load+validate s':>15}  {'canonical s':>11}  {'make_plan s':>11}  "
        f"{'plan total s':>12}  {'plan/load':>9}  {'plan µs/endpoint':>16}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.n:>8}  {r.load_s:>15.3f}  {r.canonical_s:>11.3f}  {r.plan_s:>11.3f}  "
            f"{r.total_s:>12.3f}  {r.total_s / r.load_s:>9.2f}  {r.total_s / r.n * 1e6:>16.1f}"
        )
    print()
    by_n = {r.n: r for r in rows}
    for small, big in zip(rows, rows[1:], strict=False):
        factor = big.n / small.n
        print(
            f"growth plan({big.n})/plan({small.n}) = {big.total_s / small.total_s:.2f}x "
            f"for {factor:g}x endpoints (linear = {factor:g}x); "
            f"load+validate: {big.load_s / small.load_s:.2f}x"
        )
    goal = by_n.get(GOAL_N)
    if goal is not None:
        verdict = "MET" if goal.total_s <= GOAL_S else "NOT MET"
        print(
            f"goal: {GOAL_N} endpoints planned in <= {GOAL_S:.1f} s: {verdict} "
            f"(plan total {goal.total_s:.3f} s)"
        )


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] <= 0:
        raise argparse.ArgumentTypeError("sizes must be positive integers")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=list(DEFAULT_SIZES),
        help="comma-separated endpoint counts, multiples of 100 (default 1000,10000,100000)",
    )
    parser.add_argument("--quick", action="store_true", help="only 1000 and 10000 endpoints")
    args = parser.parse_args(argv)
    sizes = list(QUICK_SIZES) if args.quick else args.sizes

    rows: list[Row] = []
    for n in sizes:
        print(f"measuring {n} endpoints ...", file=sys.stderr, flush=True)
        rows.append(measure(n))
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
