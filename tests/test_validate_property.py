"""Property test: no input escapes as an exception; every problem is located and named."""

from __future__ import annotations

import copy
import json
from typing import Any

import yaml
from conftest import custom_model, openai_chat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.specs.loader import load_text

KEYS = [
    "name",
    "config",
    "served_entities",
    "external_model",
    "provider",
    "task",
    "openai_config",
    "traffic_config",
    "routes",
    "traffic_percentage",
    "rate_limits",
    "calls",
    "key",
    "tags",
    "ai_gateway",
    "entity_name",
    "entity_version",
    "resources",
    "model_serving_endpoints",
    "workload_size",
    "scale_to_zero_enabled",
    "served_models",
    "renewal_period",
    "x",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 200),
    st.floats(allow_nan=True),
    st.sampled_from(["openai", "llm/v1/chat", "minute", "{{secrets/a/b}}", "${env:HOME}", ""]),
    st.text(max_size=12),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), children, max_size=5
        ),
    ),
    max_leaves=30,
)


def _mutate(spec: Any, data: st.DataObject) -> Any:
    """Replace, delete or retype one node of a valid spec."""
    node = spec
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if not isinstance(child, (dict, list)) or not child or data.draw(st.booleans()):
            action = data.draw(st.sampled_from(["delete", "replace"]))
            if action == "delete":
                del node[key]
            else:
                node[key] = data.draw(documents)
            return spec
        node = child
    return spec


def _check(text: str) -> None:
    result = load_text(text, "prop.yaml", env={"HOME": "/root"})
    for diag in result.diagnostics:
        assert diag.rule and diag.message and diag.file == "prop.yaml"
        assert diag.line is None or diag.line >= 1
    if result.valid:
        assert all(e.spec.name for e in result.endpoints)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents, st.sampled_from(["yaml", "json"]))
def test_random_structures(document: Any, fmt: str) -> None:
    text = json.dumps(document) if fmt == "json" else yaml.safe_dump(document)
    _check(text)


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from([openai_chat, custom_model]), st.data())
def test_mutated_valid_specs(factory: Any, data: st.DataObject) -> None:
    spec = _mutate(copy.deepcopy(factory()), data)
    _check(yaml.safe_dump(spec))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    _check(text)
