"""One spec per rule: each breaks exactly that rule; the test checks the rule id and path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from conftest import custom_model, openai_chat

from schemas import Severity, format_path, validate_endpoint

Spec = dict[str, Any]


def _ext(spec: Spec, i: int = 0) -> Spec:
    return spec["config"]["served_entities"][i]["external_model"]


def _set(path: str, value: Any) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        node: Any = spec
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        last = parts[-1]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _provider(provider: str, config_field: str, config: dict[str, Any]) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        ext = _ext(spec)
        ext["provider"] = provider
        del ext["openai_config"]
        ext[config_field] = config

    return mutate


def _second_openai(task: str) -> Callable[[Spec], None]:
    def mutate(spec: Spec) -> None:
        entity = copy.deepcopy(spec["config"]["served_entities"][0])
        entity["name"] = "second"
        entity["external_model"]["task"] = task
        spec["config"]["served_entities"].append(entity)
        spec["config"]["traffic_config"] = {
            "routes": [
                {"served_entity_name": "gpt4", "traffic_percentage": 50},
                {"served_entity_name": "second", "traffic_percentage": 50},
            ]
        }

    return mutate


E0 = "config.served_entities[0]"
OAI = f"{E0}.external_model.openai_config"

# (rule, base spec factory, mutation, expected path, severity)
CASES: list[tuple[str, Callable[[], Spec], Callable[[Spec], None], str, Severity]] = [
    ("N1", openai_chat, _set("name", "bad name!"), "name", Severity.ERROR),
    ("N1", openai_chat, _set("config.name", "other"), "config.name", Severity.ERROR),
    ("N3", openai_chat, _set("config.served_entities.0.name", "a.b"), f"{E0}.name", Severity.ERROR),
    (
        "N3",
        custom_model,
        lambda s: s["config"]["served_entities"][1].update(
            entity_name="main.default.model_a", entity_version="1"
        ),
        "config.served_entities[0].name",
        Severity.ERROR,
    ),
    (
        "N4",
        openai_chat,
        _set("tags", [{"key": "t"}, {"key": "t", "value": "x"}]),
        "tags[1].key",
        Severity.ERROR,
    ),
    (
        "E1",
        openai_chat,
        _set("config.served_entities.0.entity_name", "main.default.m"),
        f"{E0}.entity_name",
        Severity.ERROR,
    ),
    ("E1", openai_chat, _set("config.served_entities.0", {"name": "x"}), E0, Severity.ERROR),
    (
        "E3",
        openai_chat,
        _second_openai("llm/v1/completions"),
        "config.served_entities[1].external_model.task",
        Severity.ERROR,
    ),
    (
        "E4",
        custom_model,
        lambda s: s["config"]["served_entities"].__setitem__(
            1, openai_chat()["config"]["served_entities"][0] | {"name": "model_b-2"}
        ),
        "config.served_entities[0]",
        Severity.ERROR,
    ),
    ("E5", openai_chat, lambda s: _many_entities(s, 16), "config.served_entities", Severity.ERROR),
    (
        "E6",
        custom_model,
        lambda s: s["config"].__setitem__(
            "served_models",
            [{"model_name": "m", "model_version": "1", "scale_to_zero_enabled": True}],
        ),
        "config.served_models",
        Severity.ERROR,
    ),
    (
        "E6",
        custom_model,
        lambda s: (
            s["config"].__setitem__(
                "served_models",
                [
                    {
                        "model_name": "main.default.model_a",
                        "model_version": "1",
                        "workload_size": "Small",
                        "scale_to_zero_enabled": True,
                    },
                    {
                        "model_name": "main.default.model_b",
                        "model_version": "2",
                        "workload_size": "Small",
                        "scale_to_zero_enabled": True,
                    },
                ],
            )
            or s["config"].pop("served_entities")
        ),
        "config.served_models",
        Severity.WARNING,
    ),
    (
        "E7",
        custom_model,
        _set("config.served_entities.0.min_provisioned_concurrency", 4),
        f"{E0}.workload_size",
        Severity.ERROR,
    ),
    (
        "E8",
        custom_model,
        _set("config.served_entities.0.workload_size", "Gigantic"),
        f"{E0}.workload_size",
        Severity.WARNING,
    ),
    (
        "E9",
        custom_model,
        _set("config.served_entities.0.workload_type", "GPU_HUGE"),
        f"{E0}.workload_type",
        Severity.ERROR,
    ),
    (
        "E10",
        custom_model,
        lambda s: s["config"]["served_entities"][0].pop("scale_to_zero_enabled"),
        f"{E0}.scale_to_zero_enabled",
        Severity.ERROR,
    ),
    (
        "E11",
        openai_chat,
        _set("config.served_entities.0.max_provisioned_throughput", 100),
        f"{E0}.max_provisioned_throughput",
        Severity.ERROR,
    ),
    (
        "E12",
        custom_model,
        _set("config.served_entities.0.entity_name", "model_a"),
        f"{E0}.entity_name",
        Severity.ERROR,
    ),
    (
        "E13",
        custom_model,
        lambda s: s["config"]["served_entities"][0].update(
            workload_size=None, min_provisioned_throughput=200, max_provisioned_throughput=100
        ),
        f"{E0}.min_provisioned_throughput",
        Severity.ERROR,
    ),
    (
        "E13",
        custom_model,
        _set("config.served_entities.0.max_provisioned_throughput", -5),
        f"{E0}.max_provisioned_throughput",
        Severity.ERROR,
    ),
    (
        "E15",
        custom_model,
        _set("config.served_entities.0.environment_vars", {f"V{i}": "x" for i in range(31)}),
        f"{E0}.environment_vars",
        Severity.ERROR,
    ),
    (
        "E15",
        custom_model,
        _set("config.served_entities.0.environment_vars", {"TOKEN": "{{secrets/scope}}"}),
        f"{E0}.environment_vars.TOKEN",
        Severity.ERROR,
    ),
    # A trailing newline (a YAML `|` block) is not a whole reference: the runner and the gateway
    # resolve only whole references, so validate must not accept it either.
    (
        "E15",
        custom_model,
        _set("config.served_entities.0.environment_vars", {"TOKEN": "{{secrets/s/k}}\n"}),
        f"{E0}.environment_vars.TOKEN",
        Severity.ERROR,
    ),
    (
        "T1",
        custom_model,
        _set("config.traffic_config.routes.0.traffic_percentage", 101),
        "config.traffic_config.routes[0].traffic_percentage",
        Severity.ERROR,
    ),
    (
        "T2",
        custom_model,
        _set("config.traffic_config.routes.1.served_entity_name", "nope"),
        "config.traffic_config.routes[1].served_entity_name",
        Severity.ERROR,
    ),
    (
        "T3",
        custom_model,
        _set("config.traffic_config.routes.1.traffic_percentage", 20),
        "config.traffic_config.routes",
        Severity.ERROR,
    ),
    (
        "T4",
        custom_model,
        lambda s: s["config"].pop("traffic_config"),
        "config.traffic_config",
        Severity.ERROR,
    ),
    ("X1", openai_chat, lambda s: _ext(s).pop("name"), f"{E0}.external_model.name", Severity.ERROR),
    (
        "X1",
        openai_chat,
        _set("config.served_entities.0.external_model.provider", "openia"),
        f"{E0}.external_model.provider",
        Severity.ERROR,
    ),
    (
        "X1",
        openai_chat,
        _provider("palm", "palm_config", {"palm_api_key": "{{secrets/s/k}}"}),
        f"{E0}.external_model.provider",
        Severity.WARNING,
    ),
    (
        "X8",
        openai_chat,
        _set("config.served_entities.0.external_model.task", "llm/v2/chat"),
        f"{E0}.external_model.task",
        Severity.ERROR,
    ),
    (
        "X2",
        openai_chat,
        _provider("anthropic", "cohere_config", {"cohere_api_key": "{{secrets/s/k}}"}),
        f"{E0}.external_model.anthropic_config",
        Severity.ERROR,
    ),
    (
        "X3",
        openai_chat,
        _set(
            "config.served_entities.0.external_model.openai_config.openai_api_key_plaintext",
            "sk-1",
        ),
        f"{OAI}.openai_api_key_plaintext",
        Severity.ERROR,
    ),
    (
        "X3",
        openai_chat,
        _set("config.served_entities.0.external_model.openai_config", {}),
        f"{OAI}.openai_api_key",
        Severity.ERROR,
    ),
    (
        "X3",
        openai_chat,
        _set("config.served_entities.0.external_model.openai_config.openai_api_key", "sk-raw-key"),
        f"{OAI}.openai_api_key",
        Severity.ERROR,
    ),
    (
        "X3",
        openai_chat,
        _set(
            "config.served_entities.0.external_model.openai_config.openai_api_key",
            "{{secrets/s/k}}\n",
        ),
        f"{OAI}.openai_api_key",
        Severity.ERROR,
    ),
    (
        "X4",
        openai_chat,
        _set("config.served_entities.0.external_model.openai_config.openai_api_type", "azure"),
        f"{OAI}.openai_api_base",
        Severity.ERROR,
    ),
    (
        "X4",
        openai_chat,
        lambda s: _ext(s)["openai_config"].update(
            openai_api_type="azuread",
            openai_api_base="https://x",
            openai_api_version="2024",
            openai_deployment_name="d",
            microsoft_entra_client_secret="{{secrets/s/e}}",
            microsoft_entra_tenant_id="t",
        ),
        f"{OAI}.microsoft_entra_client_id",
        Severity.ERROR,
    ),
    (
        "X5",
        openai_chat,
        _provider(
            "amazon-bedrock",
            "amazon_bedrock_config",
            {"aws_region": "us-east-1", "instance_profile_arn": "arn:x"},
        ),
        f"{E0}.external_model.amazon_bedrock_config.bedrock_provider",
        Severity.ERROR,
    ),
    (
        "X5",
        openai_chat,
        _provider(
            "amazon-bedrock",
            "amazon_bedrock_config",
            {"aws_region": "us-east-1", "bedrock_provider": "Anthropic"},
        ),
        f"{E0}.external_model.amazon_bedrock_config",
        Severity.ERROR,
    ),
    (
        "X5",
        openai_chat,
        _provider(
            "amazon-bedrock",
            "amazon_bedrock_config",
            {
                "aws_region": "us-east-1",
                "bedrock_provider": "mistral",
                "instance_profile_arn": "arn:x",
            },
        ),
        f"{E0}.external_model.amazon_bedrock_config.bedrock_provider",
        Severity.ERROR,
    ),
    (
        "X6",
        openai_chat,
        _provider(
            "google-cloud-vertex-ai",
            "google_cloud_vertex_ai_config",
            {"region": "us-central1", "private_key": "{{secrets/s/k}}"},
        ),
        f"{E0}.external_model.google_cloud_vertex_ai_config.project_id",
        Severity.ERROR,
    ),
    (
        "X6",
        openai_chat,
        _provider(
            "databricks-model-serving",
            "databricks_model_serving_config",
            {"databricks_api_token": "{{secrets/s/k}}"},
        ),
        f"{E0}.external_model.databricks_model_serving_config.databricks_workspace_url",
        Severity.ERROR,
    ),
    (
        "X7",
        openai_chat,
        _provider(
            "custom",
            "custom_provider_config",
            {
                "custom_provider_url": "https://x",
                "api_key_auth": {"key": "k", "value": "{{secrets/s/k}}"},
                "bearer_token_auth": {"token": "{{secrets/s/t}}"},
            },
        ),
        f"{E0}.external_model.custom_provider_config.bearer_token_auth",
        Severity.ERROR,
    ),
    (
        "X7",
        openai_chat,
        _provider(
            "custom", "custom_provider_config", {"bearer_token_auth": {"token": "{{secrets/s/t}}"}}
        ),
        f"{E0}.external_model.custom_provider_config.custom_provider_url",
        Severity.ERROR,
    ),
    (
        "X7",
        openai_chat,
        _provider(
            "custom",
            "custom_provider_config",
            {"custom_provider_url": "https://x", "api_key_auth": {"value": "{{secrets/s/k}}"}},
        ),
        f"{E0}.external_model.custom_provider_config.api_key_auth.key",
        Severity.ERROR,
    ),
    (
        "R1",
        openai_chat,
        _set("rate_limits", [{"calls": 1, "renewal_period": "hour"}]),
        "rate_limits[0].renewal_period",
        Severity.ERROR,
    ),
    (
        "R1",
        openai_chat,
        _set("ai_gateway", {"rate_limits": [{"calls": 1, "renewal_period": "day"}]}),
        "ai_gateway.rate_limits[0].renewal_period",
        Severity.ERROR,
    ),
    (
        "R2",
        openai_chat,
        _set(
            "ai_gateway", {"rate_limits": [{"calls": 1, "renewal_period": "minute", "key": "team"}]}
        ),
        "ai_gateway.rate_limits[0].key",
        Severity.ERROR,
    ),
    (
        "R2",
        openai_chat,
        _set("rate_limits", [{"calls": 1, "renewal_period": "minute", "key": "user_group"}]),
        "rate_limits[0].key",
        Severity.ERROR,
    ),
    (
        "R2",
        openai_chat,
        _set(
            "ai_gateway",
            {"rate_limits": [{"calls": 1, "renewal_period": "minute", "principal": "alice@x.com"}]},
        ),
        "ai_gateway.rate_limits[0].principal",
        Severity.ERROR,
    ),
    (
        "R4",
        openai_chat,
        _set("ai_gateway", {"rate_limits": [{"renewal_period": "minute"}]}),
        "ai_gateway.rate_limits[0]",
        Severity.ERROR,
    ),
    (
        "R4",
        openai_chat,
        _set("rate_limits", [{"calls": -1, "renewal_period": "minute"}]),
        "rate_limits[0].calls",
        Severity.ERROR,
    ),
    (
        "R7",
        openai_chat,
        _set("ai_gateway", {"inference_table_config": {"enabled": True, "catalog_name": "main"}}),
        "ai_gateway.inference_table_config.schema_name",
        Severity.ERROR,
    ),
    (
        "R7",
        custom_model,
        _set("config.auto_capture_config", {"enabled": True, "schema_name": "s"}),
        "config.auto_capture_config.catalog_name",
        Severity.ERROR,
    ),
    (
        "R9",
        openai_chat,
        _set("ai_gateway", {"guardrails": {"input": {"pii": {"behavior": "HIDE"}}}}),
        "ai_gateway.guardrails.input.pii.behavior",
        Severity.ERROR,
    ),
    (
        "R9",
        openai_chat,
        _set("ai_gateway", {"guardrails": {"output": {"valid_topics": ["a"]}}}),
        "ai_gateway.guardrails.output.valid_topics",
        Severity.WARNING,
    ),
    ("S2", openai_chat, _set("config.traffic_confg", {}), "config.traffic_confg", Severity.ERROR),
    ("S1", openai_chat, _set("route_optimized", "sometimes"), "route_optimized", Severity.ERROR),
]


def _many_entities(spec: Spec, n: int) -> None:
    base = spec["config"]["served_entities"][0]
    spec["config"]["served_entities"] = [copy.deepcopy(base) | {"name": f"e{i}"} for i in range(n)]
    spec["config"]["traffic_config"] = {
        "routes": [
            {"served_entity_name": f"e{i}", "traffic_percentage": 100 if i == 0 else 0}
            for i in range(n)
        ]
    }


@pytest.mark.parametrize(
    ("rule", "factory", "mutate", "path", "severity"),
    CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)],
)
def test_rule_is_reported_with_its_id_and_path(
    rule: str,
    factory: Callable[[], Spec],
    mutate: Callable[[Spec], None],
    path: str,
    severity: Severity,
) -> None:
    spec = factory()
    assert validate_endpoint(spec)[1] == [], "the base spec must be valid"
    mutate(spec)
    _, diagnostics = validate_endpoint(spec)
    found = [(d.rule, format_path(d.path), d.severity) for d in diagnostics]
    assert (rule, path, severity) in found, found
    assert all(d.message for d in diagnostics)


def test_every_listed_rule_has_a_case() -> None:
    listed = {
        "N1",
        "N3",
        "E1",
        "E3",
        "E4",
        "E5",
        "E6",
        "E7",
        "E8",
        "E9",
        "E10",
        "E11",
        "E12",
        "E13",
        "E15",
        "T1",
        "T2",
        "T3",
        "T4",
        "X1",
        "X2",
        "X3",
        "X4",
        "X5",
        "X6",
        "X7",
        "R1",
        "R2",
        "R4",
        "R7",
        "R9",
    }
    assert listed <= {c[0] for c in CASES}


def test_zero_rate_limit_is_kept_as_blocking() -> None:
    spec = openai_chat()
    spec["ai_gateway"] = {"rate_limits": [{"calls": 0, "renewal_period": "minute"}]}
    spec["rate_limits"] = [{"calls": 0, "renewal_period": "minute", "key": "user"}]
    parsed, diagnostics = validate_endpoint(spec)
    assert diagnostics == []
    assert parsed is not None and parsed.ai_gateway is not None
    assert parsed.ai_gateway.rate_limits[0].calls == 0
    assert parsed.rate_limits is not None and parsed.rate_limits[0].calls == 0


def test_max_served_entities_is_configurable() -> None:
    from schemas import RuleOptions

    spec = openai_chat()
    _many_entities(spec, 12)
    assert validate_endpoint(spec)[1] == []
    rules = [d.rule for d in validate_endpoint(spec, RuleOptions(max_served_entities=10))[1]]
    assert rules == ["E5"]


def test_default_entity_names_are_computed() -> None:
    from schemas import entity_name_of

    spec = openai_chat()
    del spec["config"]["served_entities"][0]["name"]
    _ext(spec)["name"] = "gpt-4.1:mini"
    parsed, diagnostics = validate_endpoint(spec)
    assert diagnostics == []
    assert entity_name_of(parsed.config.entities()[0]) == "gpt-4-1-mini"
    custom = custom_model()
    parsed, _ = validate_endpoint(custom)
    assert [entity_name_of(e) for e in parsed.config.entities()] == ["model_a-1", "model_b-2"]


def test_served_models_are_normalised_to_served_entities() -> None:
    spec = custom_model()
    spec["config"]["served_models"] = [
        {
            "model_name": "main.default.model_a",
            "model_version": 1,
            "workload_size": "Small",
            "scale_to_zero_enabled": True,
        },
    ]
    del spec["config"]["served_entities"]
    del spec["config"]["traffic_config"]
    parsed, diagnostics = validate_endpoint(spec)
    assert [d.rule for d in diagnostics] == ["E6"] and not diagnostics[0].is_error
    entity = parsed.config.entities()[0]
    assert (entity.entity_name, entity.entity_version) == ("main.default.model_a", "1")


def test_unknown_key_without_close_match_lists_allowed_keys() -> None:
    spec = openai_chat()
    spec["zzzz"] = 1
    _, diagnostics = validate_endpoint(spec)
    assert diagnostics[0].rule == "S2" and "allowed here" in diagnostics[0].message
