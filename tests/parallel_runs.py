"""Whole-suite runs go parallel (pytest-xdist); a file or a single test runs in-process.

| command                          | runs                                      |
|----------------------------------|-------------------------------------------|
| `pytest` / `pytest tests/`       | WORKERS workers, `--dist loadgroup`       |
| `pytest -m vllm` (any dirs only) | the same, on the vLLM tests               |
| `pytest tests/test_x.py[::t]`    | in-process (no xdist): `--pdb`, prints    |
| `pytest -n 0` / `-n N`           | what the option says                      |

The suite is dominated by waiting on real processes (engine serve, vLLM servers), so more
workers than cores overlap the waiting. vLLM server starts are the exception: each costs
75-110 s of CPU on 2 cores, and more than two at once make each other time out. So the vLLM
tests run in LANES, each one xdist group (one worker, one test after another), and the lanes
are queued first so that they start at once on different workers while the light tests share
the rest. Every light file is one group too, so its module fixtures (a server, a mock
upstream) start once instead of once per worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["LANES", "SLOW_FIRST", "WORKERS", "assign_groups", "configure_node", "configure_workers"]

WORKERS = 4
_LOADGROUP = "parallel_runs_loadgroup"

# vLLM-heavy files -> lane, in the order the lane runs them; balanced on `--durations=0`: the
# longest file (several runner starts, updates and scale to zero) with test_engine_up alone.
# A whole file goes to its lane, and the long tests come first: xdist queues one more group
# on a worker with two tests or fewer left, and that group would wait for the whole lane.
LANES: dict[str, str] = {
    "test_runner_updates.py": "vllm-1",
    "test_engine_up.py": "vllm-1",
    "test_serving_ui_vllm.py": "vllm-1",  # two runner starts, one canceled mid-load (~150 s)
    # One Ray cluster (a session fixture) for the whole file, and one vLLM actor (~250 s).
    "test_ray_runners.py": "vllm-2",
    "test_runner_vllm.py": "vllm-2",
    "test_demo.py": "vllm-2",
    "test_runner_serving.py": "vllm-2",
    "test_provisioned_throughput.py": "vllm-2",
}
# Light files that take longest, queued right after the lanes so that none of them is the last
# to start (test_cpu_runtime runs the vLLM install check, the rest start many processes).
SLOW_FIRST = (
    "test_cpu_runtime.py",
    "test_crash_recovery.py",
    "test_control_plane.py",
    "test_adapter_plugins.py",
    "test_bad_bodies.py",
    "test_tables.py",
)


def _whole_suite(config: pytest.Config) -> bool:
    """Only directories were named (or nothing: testpaths): not one file or one test."""
    root = Path(str(config.invocation_params.dir))
    return all((root / arg.split("::")[0]).is_dir() for arg in config.args)


def configure_workers(config: pytest.Config) -> None:
    """Turn on xdist for whole-suite runs where the command line did not choose."""
    option = config.option
    if not hasattr(option, "numprocesses"):
        return  # xdist is disabled (-p no:xdist)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        # A worker parses the original command line again, not the options chosen here:
        # configure_node passed on whether the groups count.
        option.loadgroup = workerinput.get(_LOADGROUP, option.loadgroup)
        return
    if option.usepdb or option.collectonly:
        return
    if option.numprocesses is None:
        if not _whole_suite(config):
            return
        option.numprocesses = WORKERS
    if option.numprocesses and option.dist == "no":
        # `-n N` alone: still the lanes, or every vLLM test could start at once.
        option.dist = "loadgroup"
    # Keep the order assign_groups makes: the lanes first, not the biggest groups first.
    option.loadscopereorder = False


def configure_node(config: pytest.Config, workerinput: dict[str, object]) -> None:
    """Tell a worker whether tests are grouped (see configure_workers)."""
    workerinput[_LOADGROUP] = config.option.dist == "loadgroup"


def _group(item: pytest.Item) -> str:
    return LANES.get(item.path.name, item.path.name)


def assign_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On xdist workers: put each test in its lane or file group, lanes first."""
    if not hasattr(config, "workerinput"):
        return
    lanes = sorted(set(LANES.values()))
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))
    # A stable sort: inside a group, tests keep their (fixture-aware) collection order.
    rank = {group: i for i, group in enumerate([*lanes, *SLOW_FIRST])}
    files = list(LANES)

    def key(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        return rank.get(_group(item), len(rank)), files.index(name) if name in files else 0

    items.sort(key=key)
