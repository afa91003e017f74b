"""What this host can run: its GPUs, and the checks plans make against them and the catalog."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from .catalog import ModelCatalog

__all__ = ["gpu_count", "entity_checker", "cpu_fallback_allowed"]

_GPU_TYPES = ("GPU_", "MULTIGPU_")


def gpu_count() -> int:
    """GPUs on this host (`ENGINE_GPUS` overrides; else nvidia-smi; else 0)."""
    override = os.environ.get("ENGINE_GPUS")
    if override is not None and override.strip().isdigit():
        return int(override)
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return 0
        return sum(1 for line in out.splitlines() if line.startswith("GPU "))
    return 0


def cpu_fallback_allowed() -> bool:
    return os.environ.get("ENGINE_ALLOW_CPU_FALLBACK", "").lower() in ("1", "true", "yes")


def entity_checker(
    catalog: ModelCatalog, *, gpus: int | None = None, allow_cpu_fallback: bool | None = None
) -> Callable[[dict[str, Any]], list[tuple[str, str]]]:
    """Plan-time checks of a self-hosted entity: known model version (M1), GPUs (G1)."""
    gpus = gpu_count() if gpus is None else gpus
    fallback = cpu_fallback_allowed() if allow_cpu_fallback is None else allow_cpu_fallback

    def check(entity: dict[str, Any]) -> list[tuple[str, str]]:
        if "external_model" in entity:
            return []
        problems = []
        name, version = entity.get("entity_name"), entity.get("entity_version")
        if name and version and not catalog.exists(name, version):
            problems.append(
                (
                    "M1",
                    f"model {name} version {version} is not in the model catalog; register it with "
                    f"`engine models register {name} --version {version} --path DIR --task TASK`",
                )
            )
        workload = entity.get("workload_type") or "CPU"
        if workload.startswith(_GPU_TYPES) and gpus == 0 and not fallback:
            problems.append(
                (
                    "G1",
                    f"workload_type {workload} needs GPUs and this host has none; use a CPU "
                    "workload type, or allow CPU fallback with ENGINE_ALLOW_CPU_FALLBACK=1",
                )
            )
        return problems

    return check
