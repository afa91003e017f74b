from __future__ import annotations

import copy
import os
import shutil
import tempfile
from typing import Any

import parallel_runs
import pytest

from engine.host.runners import RUNNER_CACHE_ENV


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    parallel_runs.configure_workers(config)


def pytest_configure(config: pytest.Config) -> None:
    # One runner cache for the whole run (workers inherit the variable): vLLM's model-class
    # inspection, a Python process importing torch and vLLM, then runs once per run instead
    # of once per test's state folder (about a third of a server start's CPU on 2 cores).
    if not hasattr(config, "workerinput") and RUNNER_CACHE_ENV not in os.environ:
        folder = tempfile.mkdtemp(prefix="engine-runner-cache-")
        os.environ[RUNNER_CACHE_ENV] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # an xdist hook, run for each worker
    parallel_runs.configure_node(node.config, node.workerinput)


# tryfirst: the groups must be marked before xdist's worker reads them into the node ids.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    parallel_runs.assign_groups(config, items)


def openai_chat(name: str = "chat", entity: str = "gpt4") -> dict[str, Any]:
    return {
        "name": name,
        "config": {
            "served_entities": [
                {
                    "name": entity,
                    "external_model": {
                        "name": "gpt-4",
                        "provider": "openai",
                        "task": "llm/v1/chat",
                        "openai_config": {"openai_api_key": "{{secrets/scope/openai}}"},
                    },
                }
            ]
        },
    }


def custom_model(name: str = "custom") -> dict[str, Any]:
    return {
        "name": name,
        "config": {
            "served_entities": [
                {
                    "entity_name": "main.default.model_a",
                    "entity_version": "1",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": True,
                },
                {
                    "entity_name": "main.default.model_b",
                    "entity_version": "2",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": False,
                },
            ],
            "traffic_config": {
                "routes": [
                    {"served_entity_name": "model_a-1", "traffic_percentage": 90},
                    {"served_entity_name": "model_b-2", "traffic_percentage": 10},
                ]
            },
        },
    }


@pytest.fixture
def chat_spec() -> dict[str, Any]:
    return copy.deepcopy(openai_chat())


@pytest.fixture
def custom_spec() -> dict[str, Any]:
    return copy.deepcopy(custom_model())


# PostgreSQL: a throwaway cluster per test process and the `state_url` parameter (both stores).
from pg_fixtures import postgres_cluster, postgres_url, state_url  # noqa: E402, F401
