"""What this host can run: its GPUs, and the checks plans make against them and the catalog."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

from engine.catalog.models import CatalogEntry, ModelCatalog
from schemas import RuleId

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
) -> Callable[[dict[str, Any]], list[tuple[RuleId, str]]]:
    """Plan-time checks of a self-hosted entity: known model version (M1), GPUs (G1),
    provisioned throughput in multiples of the model's calibrated chunk size (E13)."""
    gpus = gpu_count() if gpus is None else gpus
    fallback = cpu_fallback_allowed() if allow_cpu_fallback is None else allow_cpu_fallback

    def check(entity: dict[str, Any]) -> list[tuple[RuleId, str]]:
        if "external_model" in entity:
            return []
        problems = []
        name, version = entity.get("entity_name"), entity.get("entity_version")
        if name and version and not catalog.exists(name, version):
            problems.append(
                (
                    RuleId.M1,
                    f"model {name} version {version} is not in the model catalog; register it with "
                    f"`engine models register {name} --version {version} --path DIR --task TASK`",
                )
            )
        # Only provisioned throughput needs the entry itself (for a registry model, `get`
        # downloads the weights; a plan must not).
        provisioned = any(entity.get(f) is not None for f in _THROUGHPUT_FIELDS)
        entry = catalog.get(name, version) if provisioned and name and version else None
        if entry is not None:
            problems += _throughput_problems(entity, entry)
        workload = entity.get("workload_type") or "CPU"
        # With Ray runners the cluster's GPUs count, not this host's (plans._capacity, C1).
        on_ray = os.environ.get("ENGINE_RUNNERS") == "ray"
        if workload.startswith(_GPU_TYPES) and gpus == 0 and not fallback and not on_ray:
            problems.append(
                (
                    RuleId.G1,
                    f"workload_type {workload} needs GPUs and this host has none; use a CPU "
                    "workload type, or allow CPU fallback with ENGINE_ALLOW_CPU_FALLBACK=1",
                )
            )
        return problems

    return check


_THROUGHPUT_FIELDS = ("min_provisioned_throughput", "max_provisioned_throughput")


def _throughput_problems(entity: dict[str, Any], entry: CatalogEntry) -> list[tuple[RuleId, str]]:
    """E13: min/max_provisioned_throughput are multiples of the model's throughput_chunk_size
    (output tokens/s of one replica here, from `engine models calibrate`).

    Whether vLLM implements the architecture (`optimizable`) is not asked here: that imports
    vLLM (seconds) on every plan, and a calibrated model has already been served by vLLM.
    """
    values = {f: entity.get(f) for f in _THROUGHPUT_FIELDS if entity.get(f) is not None}
    if not values:
        return []
    chunk = entry.throughput_chunk_size
    if not chunk:
        return [
            (
                RuleId.E13,
                f"provisioned throughput needs the throughput_chunk_size of model {entry.name} "
                f"version {entry.version}, which is not calibrated on this host; run `engine "
                f"models calibrate {entry.name} --version {entry.version}` (or set a known "
                "value with --chunk-size N)",
            )
        ]
    problems = []
    for field, value in values.items():
        if value % chunk:
            lower, upper = value - value % chunk, value - value % chunk + chunk
            nearest = f"{lower} or {upper}" if lower else f"{upper}"
            problems.append(
                (
                    RuleId.E13,
                    f"{field} {value} is not a multiple of the throughput_chunk_size {chunk} "
                    f"of model {entry.name} version {entry.version}; use {nearest}",
                )
            )
    return problems
