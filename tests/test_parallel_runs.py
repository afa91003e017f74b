"""How plain `pytest` and `pytest FILE` run (tests/parallel_runs.py), on a tiny project with a
copy of this suite's conftest: a real pytest, real xdist workers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

TWO_TESTS = "def test_one():\n    pass\n\n\ndef test_two():\n    pass\n"


def _pytest(project: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-vv", *args],
        capture_output=True,
        text=True,
        cwd=project,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _project(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\ntestpaths = t\nmarkers = vllm: x\n")
    folder = tmp_path / "t"
    folder.mkdir()
    shutil.copy(TESTS / "conftest.py", folder / "conftest.py")
    for name in ("test_runner_updates.py", "test_demo.py", "test_light.py"):
        (folder / name).write_text(TWO_TESTS)
    return tmp_path


def test_the_whole_suite_runs_in_workers_with_lanes_and_a_file_in_process(tmp_path: Path) -> None:
    project = _project(tmp_path)
    whole = _pytest(project)
    assert "created: 4/4 workers" in whole and "LoadGroupScheduling" in whole, whole
    for nodeid in (
        "t/test_runner_updates.py::test_one@vllm-1",
        "t/test_demo.py::test_two@vllm-2",
        "t/test_light.py::test_one@test_light.py",
    ):
        assert f"PASSED {nodeid}" in whole, whole
    one_file = _pytest(project, "t/test_light.py")
    # In-process: no workers created, node ids without a group.
    assert "created:" not in one_file, one_file
    assert "t/test_light.py::test_one PASSED" in one_file, one_file
    one_test = _pytest(project, "t/test_demo.py::test_one")
    assert "created:" not in one_test and "t/test_demo.py::test_one PASSED" in one_test
