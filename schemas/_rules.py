"""Rules that one endpoint spec can check alone.

Each rule has the stable id of reference/validation_rules.md and returns path-addressed
diagnostics; it never raises. A message says what is wrong and how to fix it.

| id  | checks                                                                     |
|-----|----------------------------------------------------------------------------|
| N1  | endpoint name (pattern; `config.name` agrees)                              |
| N2  | endpoint name at most `max_name_length` characters (default 63)            |
| N3  | served entity names: pattern, length, unique, derivable                    |
| N4  | tag keys unique                                                            |
| E1  | external_model XOR entity_name/entity_version/workload settings            |
| E3  | one task for all external models                                           |
| E4  | no mixing external and self-hosted entities                                |
| E5  | at most `max_served_entities` entities (default 15)                        |
| E6  | served_models XOR served_entities; served_models is deprecated (warning)   |
| E7  | workload_size XOR provisioned concurrency; min <= max                      |
| E8  | unknown workload_size (warning)                                            |
| E10 | scale_to_zero_enabled explicit for custom entities                         |
| E11 | no provisioned-compute fields on external models                           |
| E12 | entity_name is catalog.schema.model                                        |
| E13 | provisioned throughput shape (min <= max, max > 0)                         |
| E15 | environment_vars: <= 30, valid names, well-formed secret references        |
| T2  | routes name existing entities, every entity has exactly one route          |
| T3  | traffic percentages sum to 100                                             |
| T4  | more than one entity requires traffic_config                               |
| X1  | deprecated providers (warning)                                             |
| X2  | the provider's config block is present; other blocks absent                |
| X3  | exactly one of each secret reference / plaintext pair; references valid   |
| X4  | Azure OpenAI and Entra ID required settings                                |
| X5  | Bedrock region, provider and an authentication method                      |
| X6  | Vertex project/region; Databricks workspace URL                            |
| X7  | custom provider URL and exactly one authentication method                  |
| R2  | rate-limit principal only with a keyed limit                               |
| R4  | a gateway rate limit sets calls or tokens (0 is kept: it blocks)           |
| R7  | inference tables: catalog_name and schema_name when enabled; name parts    |
| R9  | deprecated guardrail keyword/topic filters (warning)                       |
| H1  | a field stored and returned that this host cannot act on (warning)         |
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import BaseModel, SecretStr

from ._diagnostics import Diagnostic, Path, Severity
from ._endpoint import NAME_PATTERN, EndpointSpec, ServedEntityInput
from ._enums import KNOWN_WORKLOAD_SIZES, GatewayRateLimitKey
from ._external import CREDENTIAL_PAIRS, DEPRECATED_PROVIDERS, PROVIDERS, ExternalModel
from ._names import entity_name_of
from ._rule_ids import RuleId
from ._secret_refs import SECRET_REFERENCE_FORM, is_secret_reference, looks_like_secret_reference

__all__ = ["RuleOptions", "check_endpoint"]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TABLE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,254}$")
_UC_NAME = re.compile(r"^[^.\s]+\.[^.\s]+\.[^.\s]+$")
_NAME = re.compile(NAME_PATTERN)
MAX_ENVIRONMENT_VARS = 30

# Settings that only self-hosted entities may carry.
_CUSTOM_FIELDS = ("entity_name", "entity_version", "workload_size", "workload_type")
_PROVISIONED_FIELDS = (
    "scale_to_zero_enabled",
    "min_provisioned_concurrency",
    "max_provisioned_concurrency",
    "min_provisioned_throughput",
    "max_provisioned_throughput",
    "provisioned_model_units",
    "burst_scaling_enabled",
)


@dataclass(frozen=True)
class RuleOptions:
    """Limits an operator may tune. E5: the SDK documents 10, the platform allows 15.

    N2/N3: no source states the platform's name limits (reference/validation_rules.md marks N2
    "not confirmed"); 63 is the DNS label length, which a name used in URLs and hostnames
    usually has to fit. Any limit works with apply: derived names (managed secret keys,
    runner folders) are shortened where they would not fit.
    """

    max_served_entities: int = 15
    max_name_length: int = 63
    max_entity_name_length: int = 63


def check_endpoint(spec: EndpointSpec, options: RuleOptions | None = None) -> list[Diagnostic]:
    options = options or RuleOptions()
    out: list[Diagnostic] = []
    out += _endpoint_rules(spec, options)
    if spec.config is not None:
        out += _config_rules(spec, options)
    out += _rate_limit_rules(spec)
    out += _gateway_rules(spec)
    out += _unhonoured(spec)
    return out


# Accepted, stored and returned as the platform does, but nothing here acts on them.
_UNHONOURED = {
    "budget_policy_id": "budget policies are the platform's billing",
    "email_notifications": "this host sends no email",
    "telemetry_config": "telemetry export is the platform's",
}
_UNHONOURED_ENTITY = {
    "instance_profile_arn": "instance profiles are AWS compute of the platform",
    "burst_scaling_enabled": "burst scaling is the platform's provisioned compute",
}


def _unhonoured(spec: EndpointSpec) -> Iterator[Diagnostic]:
    """Fields the engine keeps but cannot honour: a warning, never silently dropped."""
    for field, why in _UNHONOURED.items():
        if getattr(spec, field) is not None:
            yield _warn(RuleId.H1, (field,), f"`{field}` is stored but has no effect here: {why}")
    if spec.route_optimized:
        yield _warn(
            RuleId.H1,
            ("route_optimized",),
            "`route_optimized` is stored but has no effect here: every query takes the same path",
        )
    entities = spec.config.served_entities if spec.config is not None else None
    for i, entity in enumerate(entities or []):
        for field, why in _UNHONOURED_ENTITY.items():
            if getattr(entity, field) is not None:
                yield _warn(
                    RuleId.H1,
                    ("config", "served_entities", i, field),
                    f"`{field}` is stored but has no effect here: {why}",
                )


def _err(rule: RuleId, path: Path, message: str) -> Diagnostic:
    return Diagnostic(rule, message, path)


def _warn(rule: RuleId, path: Path, message: str) -> Diagnostic:
    return Diagnostic(rule, message, path, Severity.WARNING)


def _endpoint_rules(spec: EndpointSpec, options: RuleOptions) -> Iterator[Diagnostic]:
    if len(spec.name) > options.max_name_length:
        yield _err(
            "N2",
            ("name",),
            f"the endpoint name is {len(spec.name)} characters long; at most "
            f"{options.max_name_length} are allowed",
        )
    if spec.config is not None and spec.config.name not in (None, spec.name):
        yield _err(
            RuleId.N1,
            ("config", "name"),
            f"`config.name` is {spec.config.name!r} but the endpoint is {spec.name!r}; "
            "remove `config.name` or make them equal",
        )
    keys = Counter(tag.key for tag in spec.tags or [])
    for i, tag in enumerate(spec.tags or []):
        if keys[tag.key] > 1:
            yield _err(RuleId.N4, ("tags", i, "key"), f"tag key {tag.key!r} is set more than once")


def _config_rules(spec: EndpointSpec, options: RuleOptions) -> Iterator[Diagnostic]:
    config = spec.config
    assert config is not None
    base: Path = ("config", config.entities_key)
    if config.served_models is not None and config.served_entities is not None:
        yield _err(
            RuleId.E6,
            ("config", "served_models"),
            "`served_models` and `served_entities` cannot both be set; "
            "move every entry to `served_entities`",
        )
    elif config.served_models is not None:
        yield _warn(
            RuleId.E6,
            ("config", "served_models"),
            "`served_models` is deprecated; rename it to `served_entities` "
            "(model_name -> entity_name, model_version -> entity_version)",
        )
    entities = config.entities()
    if len(entities) > options.max_served_entities:
        yield _err(
            RuleId.E5,
            base,
            f"{len(entities)} served entities; an endpoint can serve at most "
            f"{options.max_served_entities}",
        )
    for i, entity in enumerate(entities):
        yield from _entity_rules(entity, base + (i,), options)
    yield from _composition_rules(entities, base)
    yield from _traffic_rules(spec, entities, base)
    capture = config.auto_capture_config
    if capture is not None and capture.enabled:
        yield from _inference_table_rule(capture, ("config", "auto_capture_config"))


def _entity_rules(
    entity: ServedEntityInput, path: Path, options: RuleOptions
) -> Iterator[Diagnostic]:
    name = entity_name_of(entity)
    if entity.name is not None and not _NAME.match(entity.name):
        yield _err(
            RuleId.N3,
            path + ("name",),
            f"served entity name {entity.name!r} may only contain letters, digits, `-` and `_`",
        )
    if entity.name is not None and len(entity.name) > options.max_entity_name_length:
        yield _err(
            "N3",
            path + ("name",),
            f"the served entity name is {len(entity.name)} characters long; at most "
            f"{options.max_entity_name_length} are allowed",
        )
    if entity.external_model is not None:
        yield from _external_entity_rules(entity, entity.external_model, path)
    else:
        yield from _custom_entity_rules(entity, path)
    if name is None and entity.external_model is None and entity.entity_name is not None:
        yield _err(
            RuleId.N3,
            path,
            "cannot derive a served entity name without `entity_version`; set `name` "
            "or `entity_version`",
        )
    yield from _environment_rules(entity, path)


def _external_entity_rules(
    entity: ServedEntityInput, model: ExternalModel, path: Path
) -> Iterator[Diagnostic]:
    for field in _CUSTOM_FIELDS:
        if getattr(entity, field) is not None:
            yield _err(
                RuleId.E1,
                path + (field,),
                f"`{field}` cannot be set on an entity that serves an `external_model`; "
                "serve either an external model or a registered model",
            )
    for field in _PROVISIONED_FIELDS:
        if getattr(entity, field) is not None:
            yield _err(
                RuleId.E11,
                path + (field,),
                f"`{field}` is not supported for external models; remove it",
            )
    yield from _provider_rules(model, path + ("external_model",))


def _custom_entity_rules(entity: ServedEntityInput, path: Path) -> Iterator[Diagnostic]:
    if entity.entity_name is None:
        yield _err(
            RuleId.E1,
            path,
            "a served entity needs either `external_model` or `entity_name` + `entity_version`",
        )
        return
    if entity.entity_version is None:
        yield _err(RuleId.E1, path + ("entity_version",), "`entity_version` is required")
    if not _UC_NAME.match(entity.entity_name):
        yield _err(
            RuleId.E12,
            path + ("entity_name",),
            f"entity_name {entity.entity_name!r} must be a three-level Unity Catalog "
            "name `catalog.schema.model`",
        )
    concurrency = (entity.min_provisioned_concurrency, entity.max_provisioned_concurrency)
    if entity.workload_size is not None and any(v is not None for v in concurrency):
        yield _err(
            RuleId.E7,
            path + ("workload_size",),
            "set either `workload_size` or `min/max_provisioned_concurrency`, not both",
        )
    lo, hi = concurrency
    if lo is not None and hi is not None and lo > hi:
        yield _err(
            RuleId.E7,
            path + ("min_provisioned_concurrency",),
            f"min_provisioned_concurrency ({lo}) exceeds max_provisioned_concurrency ({hi})",
        )
    if entity.workload_size is not None and entity.workload_size not in KNOWN_WORKLOAD_SIZES:
        yield _warn(
            RuleId.E8,
            path + ("workload_size",),
            f"unknown workload_size {entity.workload_size!r} (known: "
            f"{', '.join(KNOWN_WORKLOAD_SIZES)}); it must exist on the serving host",
        )
    throughput = (entity.min_provisioned_throughput, entity.max_provisioned_throughput)
    provisioned = any(v is not None for v in throughput) or entity.provisioned_model_units
    if entity.scale_to_zero_enabled is None and not provisioned:
        yield _err(
            RuleId.E10,
            path + ("scale_to_zero_enabled",),
            "`scale_to_zero_enabled` must be set explicitly (true or false) for a registered model",
        )
    yield from _throughput_rules(entity, path)


def _throughput_rules(entity: ServedEntityInput, path: Path) -> Iterator[Diagnostic]:
    lo, hi = entity.min_provisioned_throughput, entity.max_provisioned_throughput
    if lo is None and hi is None:
        return
    if hi is None:
        yield _err(
            RuleId.E13,
            path + ("max_provisioned_throughput",),
            "`max_provisioned_throughput` is required with `min_provisioned_throughput`",
        )
    elif hi == 0:
        yield _err(
            RuleId.E13,
            path + ("max_provisioned_throughput",),
            "`max_provisioned_throughput` must be greater than 0",
        )
    elif lo is not None and lo > hi:
        yield _err(
            RuleId.E13,
            path + ("min_provisioned_throughput",),
            f"min_provisioned_throughput ({lo}) exceeds max_provisioned_throughput ({hi})",
        )
    if entity.workload_size is not None or entity.min_provisioned_concurrency is not None:
        yield _err(
            RuleId.E13,
            path + ("max_provisioned_throughput",),
            "provisioned throughput cannot be combined with `workload_size` or "
            "provisioned concurrency",
        )


def _environment_rules(entity: ServedEntityInput, path: Path) -> Iterator[Diagnostic]:
    env = entity.environment_vars
    if not env:
        return
    epath = path + ("environment_vars",)
    if len(env) > MAX_ENVIRONMENT_VARS:
        yield _err(
            RuleId.E15,
            epath,
            f"{len(env)} environment variables; at most {MAX_ENVIRONMENT_VARS} are allowed",
        )
    for key, value in env.items():
        if not _ENV_NAME.match(key):
            yield _err(
                RuleId.E15, epath + (key,), f"{key!r} is not a valid environment variable name"
            )
        if looks_like_secret_reference(value) and not is_secret_reference(value):
            yield _err(
                RuleId.E15,
                epath + (key,),
                f"malformed secret reference; write the whole value as `{SECRET_REFERENCE_FORM}`",
            )


def _provider_rules(model: ExternalModel, path: Path) -> Iterator[Diagnostic]:
    name = str(model.provider)
    if name in DEPRECATED_PROVIDERS:
        yield _warn(
            RuleId.X1,
            path + ("provider",),
            f"provider {name!r} is deprecated by the platform",
        )
    info = PROVIDERS[name]
    expected = info.config_field
    for other in PROVIDERS.values():
        field = other.config_field
        present = getattr(model, field) is not None
        # A plugin's adapter says itself whether it needs a block (when it is built).
        if field == expected and not present and info.builtin:
            yield _err(
                RuleId.X2,
                path + (field,),
                f"provider {name!r} requires `{field}`",
            )
        elif field != expected and present:
            yield _err(
                RuleId.X2,
                path + (field,),
                f"`{field}` belongs to provider {other.name!r}, but this model's "
                f"provider is {name!r}; remove it or change `provider`",
            )
    config = model.provider_config()
    if config is None or not info.builtin:
        return
    cpath = path + (expected,)
    checker = _PROVIDER_CHECKS.get(expected)
    if checker is not None:
        yield from checker(config, cpath)
    else:
        yield from _credential(config, cpath, *info.credentials[0])


def _credential(
    config: BaseModel, path: Path, ref_field: str, plain_field: str, *, required: bool = True
) -> Iterator[Diagnostic]:
    """X3: exactly one of a secret reference and its plaintext twin."""
    ref = getattr(config, ref_field)
    plain = getattr(config, plain_field)
    if ref is not None and plain is not None:
        yield _err(
            RuleId.X3,
            path + (plain_field,),
            f"set either `{ref_field}` or `{plain_field}`, not both",
        )
    elif ref is None and plain is None and required:
        yield _err(
            RuleId.X3,
            path + (ref_field,),
            f"an API credential is required: set `{ref_field}` to a secret reference "
            f"`{SECRET_REFERENCE_FORM}` or `{plain_field}`",
        )
    if ref is not None and not is_secret_reference(ref):
        yield _err(
            RuleId.X3,
            path + (ref_field,),
            f"`{ref_field}` must be a secret reference `{SECRET_REFERENCE_FORM}`; "
            f"to paste the value itself use `{plain_field}`",
        )
    if isinstance(plain, SecretStr) and not plain.get_secret_value():
        yield _err(RuleId.X3, path + (plain_field,), f"`{plain_field}` is empty")


def _openai(config: BaseModel, path: Path) -> Iterator[Diagnostic]:
    api_type = getattr(config, "openai_api_type", None)
    kind = api_type.value if api_type is not None else "openai"
    if kind in ("azure", "azuread"):
        for field in ("openai_api_base", "openai_api_version", "openai_deployment_name"):
            if not getattr(config, field):
                yield _err(
                    RuleId.X4,
                    path + (field,),
                    f"`{field}` is required when openai_api_type is {kind!r} (Azure OpenAI)",
                )
    if kind == "azuread":
        for field in ("microsoft_entra_client_id", "microsoft_entra_tenant_id"):
            if not getattr(config, field):
                yield _err(
                    RuleId.X4,
                    path + (field,),
                    f"`{field}` is required for Microsoft Entra ID (openai_api_type azuread)",
                )
        yield from _credential(
            config, path, "microsoft_entra_client_secret", "microsoft_entra_client_secret_plaintext"
        )
        yield from _credential(
            config, path, "openai_api_key", "openai_api_key_plaintext", required=False
        )
    else:
        yield from _credential(config, path, "openai_api_key", "openai_api_key_plaintext")
        yield from _credential(
            config,
            path,
            "microsoft_entra_client_secret",
            "microsoft_entra_client_secret_plaintext",
            required=False,
        )


def _bedrock(config: BaseModel, path: Path) -> Iterator[Diagnostic]:
    for field in ("aws_region", "bedrock_provider"):
        if getattr(config, field) is None:
            yield _err(RuleId.X5, path + (field,), f"`{field}` is required for amazon-bedrock")
    alternative = getattr(config, "instance_profile_arn", None) or getattr(
        config, "uc_service_credential_name", None
    )
    has_keys = any(
        getattr(config, f) is not None
        for pair in CREDENTIAL_PAIRS["amazon_bedrock_config"]
        for f in pair
    )
    if not alternative and not has_keys:
        yield _err(
            RuleId.X5,
            path,
            "authenticate with access keys (`aws_access_key_id` + `aws_secret_access_key`), "
            "`instance_profile_arn` or `uc_service_credential_name`",
        )
        return
    for ref_field, plain_field in CREDENTIAL_PAIRS["amazon_bedrock_config"]:
        yield from _credential(config, path, ref_field, plain_field, required=has_keys)


def _vertex(config: BaseModel, path: Path) -> Iterator[Diagnostic]:
    for field in ("project_id", "region"):
        if not getattr(config, field):
            yield _err(
                RuleId.X6, path + (field,), f"`{field}` is required for google-cloud-vertex-ai"
            )
    yield from _credential(config, path, "private_key", "private_key_plaintext")


def _databricks(config: BaseModel, path: Path) -> Iterator[Diagnostic]:
    if not getattr(config, "databricks_workspace_url", None):
        yield _err(
            RuleId.X6,
            path + ("databricks_workspace_url",),
            "`databricks_workspace_url` is required for databricks-model-serving",
        )
    yield from _credential(config, path, "databricks_api_token", "databricks_api_token_plaintext")


def _custom(config: BaseModel, path: Path) -> Iterator[Diagnostic]:
    if not getattr(config, "custom_provider_url", None):
        yield _err(
            RuleId.X7,
            path + ("custom_provider_url",),
            "`custom_provider_url` is required for a custom provider",
        )
    api_key = getattr(config, "api_key_auth", None)
    bearer = getattr(config, "bearer_token_auth", None)
    if api_key is not None and bearer is not None:
        yield _err(
            RuleId.X7,
            path + ("bearer_token_auth",),
            "only one authentication method: set `api_key_auth` or `bearer_token_auth`",
        )
    elif api_key is None and bearer is None:
        yield _err(
            RuleId.X7,
            path,
            "an authentication method is required: `api_key_auth` or `bearer_token_auth`",
        )
    if api_key is not None:
        yield from _credential(api_key, path + ("api_key_auth",), "value", "value_plaintext")
    if bearer is not None:
        yield from _credential(bearer, path + ("bearer_token_auth",), "token", "token_plaintext")


_PROVIDER_CHECKS = {
    "openai_config": _openai,
    "amazon_bedrock_config": _bedrock,
    "google_cloud_vertex_ai_config": _vertex,
    "databricks_model_serving_config": _databricks,
    "custom_provider_config": _custom,
}


def _composition_rules(entities: list[ServedEntityInput], base: Path) -> Iterator[Diagnostic]:
    external = [i for i, e in enumerate(entities) if e.external_model is not None]
    if external and len(external) != len(entities):
        first_custom = next(i for i in range(len(entities)) if i not in external)
        yield _err(
            RuleId.E4,
            base + (first_custom,),
            "an endpoint cannot mix external models with registered models; "
            "split them into two endpoints",
        )
    tasks = {entities[i].external_model.task for i in external}  # type: ignore[union-attr]
    if len(tasks) > 1:
        first = entities[external[0]].external_model.task  # type: ignore[union-attr]
        for i in external:
            task = entities[i].external_model.task  # type: ignore[union-attr]
            if task != first:
                yield _err(
                    RuleId.E3,
                    base + (i, "external_model", "task"),
                    f"all external models of an endpoint must have the same task: "
                    f"{task.value!r} differs from {first.value!r}",
                )
    names = Counter(entity_name_of(e) for e in entities)
    for i, entity in enumerate(entities):
        name = entity_name_of(entity)
        if name is not None and names[name] > 1:
            yield _err(
                RuleId.N3,
                base + (i, "name"),
                f"served entity name {name!r} is used more than once in this endpoint; "
                "give each entity a unique `name`",
            )


def _traffic_rules(
    spec: EndpointSpec, entities: list[ServedEntityInput], base: Path
) -> Iterator[Diagnostic]:
    traffic = spec.config.traffic_config if spec.config else None
    if traffic is None:
        if len(entities) > 1:
            yield _err(
                RuleId.T4,
                ("config", "traffic_config"),
                f"{len(entities)} served entities need an explicit `traffic_config` with a "
                "route for each",
            )
        return
    names = {entity_name_of(e) for e in entities}
    rpath: Path = ("config", "traffic_config", "routes")
    seen: Counter[str] = Counter()
    for i, route in enumerate(traffic.routes):
        if (
            route.served_entity_name
            and route.served_model_name
            and route.served_entity_name != route.served_model_name
        ):
            yield _err(
                RuleId.T2,
                rpath + (i,),
                "`served_entity_name` and `served_model_name` name different entities; keep one",
            )
        target = route.target
        if target is None:
            yield _err(
                RuleId.T2, rpath + (i, "served_entity_name"), "a route needs `served_entity_name`"
            )
            continue
        seen[target] += 1
        if target not in names:
            known = ", ".join(sorted(n for n in names if n)) or "none"
            yield _err(
                RuleId.T2,
                rpath + (i, "served_entity_name"),
                f"route names {target!r}, which is not a served entity of this endpoint "
                f"(served entities: {known})",
            )
        elif seen[target] == 2:
            yield _err(RuleId.T2, rpath + (i, "served_entity_name"), f"{target!r} has two routes")
    for i, entity in enumerate(entities):
        name = entity_name_of(entity)
        if name is not None and name not in seen:
            yield _err(
                RuleId.T2,
                base + (i,),
                f"served entity {name!r} has no route in `traffic_config.routes`; add one "
                "(traffic_percentage 0 keeps it reachable only by name)",
            )
    total = sum(route.traffic_percentage for route in traffic.routes)
    if traffic.routes and total != 100:
        yield _err(
            RuleId.T3,
            rpath,
            f"traffic percentages sum to {total}; they must sum to 100",
        )
    elif not traffic.routes and entities:
        yield _err(RuleId.T3, rpath, "`traffic_config.routes` is empty; routes must sum to 100")


def _rate_limit_rules(spec: EndpointSpec) -> Iterator[Diagnostic]:
    gateway_limits = spec.ai_gateway.rate_limits if spec.ai_gateway else None
    for i, limit in enumerate(gateway_limits or []):
        path: Path = ("ai_gateway", "rate_limits", i)
        if limit.calls is None and limit.tokens is None:
            yield _err(
                RuleId.R4,
                path,
                "a rate limit needs `calls` or `tokens` per renewal period (0 blocks all traffic)",
            )
        key = limit.key or GatewayRateLimitKey.ENDPOINT
        if limit.principal is not None and key is GatewayRateLimitKey.ENDPOINT:
            yield _err(
                RuleId.R2,
                path + ("principal",),
                "`principal` applies only to keys user, user_group and service_principal",
            )


def _gateway_rules(spec: EndpointSpec) -> Iterator[Diagnostic]:
    gateway = spec.ai_gateway
    if gateway is None:
        return
    table = gateway.inference_table_config
    if table is not None and table.enabled:
        yield from _inference_table_rule(table, ("ai_gateway", "inference_table_config"))
    guardrails = gateway.guardrails
    for side in ("input", "output"):
        params = getattr(guardrails, side) if guardrails else None
        if params is None:
            continue
        for field in ("invalid_keywords", "valid_topics"):
            if getattr(params, field) is not None:
                yield _warn(
                    RuleId.R9,
                    ("ai_gateway", "guardrails", side, field),
                    f"`{field}` is deprecated by the platform (enforced here by word matching)",
                )


def _inference_table_rule(table: BaseModel, path: Path) -> Iterator[Diagnostic]:
    for field in ("catalog_name", "schema_name", "table_name_prefix"):
        value = getattr(table, field)
        if not value:
            if field != "table_name_prefix":  # the prefix defaults to the endpoint's name
                yield _err(
                    RuleId.R7,
                    path + (field,),
                    f"`{field}` is required when the inference table is enabled",
                )
        elif not _TABLE_PART.match(value):
            # Each part names a folder of the engine's tables (engine/tables/_names.py).
            yield _err(
                RuleId.R7,
                path + (field,),
                f"`{field}` must be letters, digits, `_` and `-` (got {value!r})",
            )
        elif field == "catalog_name" and value.lower() == "system":
            yield _err(RuleId.R7, path + (field,), "the `system` catalog holds the system tables")
