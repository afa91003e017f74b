"""Self-hosted served entities as real vLLM OpenAI-compatible server processes.

Heavy dependencies (vllm, torch, transformers) are never imported here: the server runs in its
own process, and the model builders import them inside their functions.
"""

from __future__ import annotations

from .executor import ModelInfo, RunnerExecutor, gpus_needed
from .tiny_model import build_tiny_llama, minilm_path
from .vllm_process import (
    TASKS,
    RunningServer,
    ServerStartError,
    VllmServerSpec,
    group_members,
    launch,
    log_tail,
    stop_by_pidfile,
)

__all__ = [
    "TASKS",
    "ModelInfo",
    "RunnerExecutor",
    "RunningServer",
    "ServerStartError",
    "VllmServerSpec",
    "build_tiny_llama",
    "group_members",
    "gpus_needed",
    "launch",
    "log_tail",
    "minilm_path",
    "stop_by_pidfile",
]
