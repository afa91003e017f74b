"""External-model providers: their config blocks, the provider table, and `ExternalModel`.

The provider table (`PROVIDERS`) is the one list of providers: each row names a provider, its
`<provider>_config` block, the block's model and its main credential pair. `ExternalModel` gets
one field per row, rules X1-X3 read the table, and providers/ asks it which names exist. It lives
here, not in the adapter registry, because the dependency direction is engine -> providers ->
schemas: validation (`engine validate`, no adapter imported) must know every provider, and
schemas cannot import providers/. The registry (`providers.adapters._registry`) maps the same
names to adapter classes and refuses an adapter whose provider has no row.

| a new provider                 | what to write                                                |
|--------------------------------|--------------------------------------------------------------|
| one of the platform's          | its config model and a row in `_BUILTIN` here (the enum      |
|                                | `ExternalModelProvider` mirrors the platform's list), and     |
|                                | one adapter module in providers/adapters/ (`@register_adapter`) |
| a third-party (plugin) package | an adapter class and an entry point in group                 |
|                                | `serving_engine.adapters`: `acme = acme_pkg.adapter:Adapter` |
|                                | (its block is `acme_config`, a free mapping the adapter      |
|                                | checks when it is built)                                     |

Each credential is a pair: a secret reference (``{{secrets/scope/key}}``) or its ``*_plaintext``
twin. Plaintext values are ``SecretStr`` so that a ``repr`` or a log line never shows them.
Which pair is required per provider is a rule (X3-X7 in ``schemas._rules``), not a type, so that
the error names the rule and the field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    PlainValidator,
    SecretStr,
    create_model,
)
from pydantic_core import PydanticCustomError

from ._base import SpecModel
from ._enums import BedrockProvider, ExternalModelProvider, OpenAiApiType, Task

__all__ = [
    "Ai21LabsConfig",
    "AmazonBedrockConfig",
    "AnthropicConfig",
    "ApiKeyAuth",
    "BearerTokenAuth",
    "CohereConfig",
    "CustomProviderConfig",
    "DatabricksModelServingConfig",
    "ExternalModel",
    "GoogleCloudVertexAiConfig",
    "OpenAiConfig",
    "PaLmConfig",
    "ADAPTER_ENTRY_POINT_GROUP",
    "CREDENTIAL_PAIRS",
    "DEPRECATED_PROVIDERS",
    "ExtensionConfig",
    "PROVIDERS",
    "PROVIDER_CONFIG_FIELDS",
    "ProviderInfo",
    "extension_config_field",
    "provider_info",
]


def _lower(value: Any) -> Any:
    # The API documents these values as case insensitive ("Anthropic", "AI21Labs").
    return value.lower() if isinstance(value, str) else value


CaseInsensitiveBedrockProvider = Annotated[BedrockProvider, BeforeValidator(_lower)]
CaseInsensitiveOpenAiApiType = Annotated[OpenAiApiType, BeforeValidator(_lower)]


class OpenAiConfig(SpecModel):
    openai_api_key: str | None = None
    openai_api_key_plaintext: SecretStr | None = None
    openai_api_base: str | None = None
    openai_api_type: CaseInsensitiveOpenAiApiType | None = None
    openai_api_version: str | None = None
    openai_deployment_name: str | None = None
    openai_organization: str | None = None
    microsoft_entra_client_id: str | None = None
    microsoft_entra_tenant_id: str | None = None
    microsoft_entra_client_secret: str | None = None
    microsoft_entra_client_secret_plaintext: SecretStr | None = None


class AnthropicConfig(SpecModel):
    anthropic_api_key: str | None = None
    anthropic_api_key_plaintext: SecretStr | None = None
    # Not in the platform's API; lets tests and proxies point the adapter elsewhere.
    anthropic_api_base: str | None = None


class CohereConfig(SpecModel):
    cohere_api_base: str | None = None
    cohere_api_key: str | None = None
    cohere_api_key_plaintext: SecretStr | None = None


class AmazonBedrockConfig(SpecModel):
    aws_region: str | None = None
    bedrock_provider: CaseInsensitiveBedrockProvider | None = None
    aws_access_key_id: str | None = None
    aws_access_key_id_plaintext: SecretStr | None = None
    aws_secret_access_key: str | None = None
    aws_secret_access_key_plaintext: SecretStr | None = None
    instance_profile_arn: str | None = None
    uc_service_credential_name: str | None = None
    # Not in the platform's API: overrides the regional Bedrock runtime URL.
    bedrock_api_base: str | None = None


class GoogleCloudVertexAiConfig(SpecModel):
    project_id: str | None = None
    region: str | None = None
    private_key: str | None = None
    private_key_plaintext: SecretStr | None = None
    # Not in the platform's API: overrides https://{region}-aiplatform.googleapis.com.
    vertex_api_base: str | None = None


class DatabricksModelServingConfig(SpecModel):
    databricks_workspace_url: str | None = None
    databricks_api_token: str | None = None
    databricks_api_token_plaintext: SecretStr | None = None


class Ai21LabsConfig(SpecModel):
    ai21labs_api_key: str | None = None
    ai21labs_api_key_plaintext: SecretStr | None = None


class PaLmConfig(SpecModel):
    palm_api_key: str | None = None
    palm_api_key_plaintext: SecretStr | None = None


class ApiKeyAuth(SpecModel):
    key: str
    value: str | None = None
    value_plaintext: SecretStr | None = None


class BearerTokenAuth(SpecModel):
    token: str | None = None
    token_plaintext: SecretStr | None = None


class CustomProviderConfig(SpecModel):
    custom_provider_url: str | None = None
    api_key_auth: ApiKeyAuth | None = None
    bearer_token_auth: BearerTokenAuth | None = None


# -- the provider table -------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderInfo:
    """One row of the provider table: what validation knows about a provider."""

    name: str  # the `external_model.provider` value
    config_field: str  # its `<x>_config` block in `external_model`
    # The block's model: a typed SpecModel for the platform's providers, a free mapping
    # (`ExtensionConfig`) for third-party ones, whose adapters check it themselves.
    config_type: Any
    # (secret reference field, plaintext twin) of the block's main credential (rule X3).
    credentials: tuple[tuple[str, str], ...] = ()
    deprecated: bool = False  # accepted with a warning (rule X1)
    builtin: bool = True  # one of the platform's (ExternalModelProvider), not a plugin's

    def __post_init__(self) -> None:
        # A plain str (not the enum member), so that messages show `'openai'`.
        object.__setattr__(self, "name", str(self.name))


_P = ExternalModelProvider
# The platform's providers, in the order of its API. Adding one: its config model above and a
# row here (the enum mirrors the platform's list); the adapter registers itself in providers/.
_BUILTIN = (
    ProviderInfo(
        _P.OPENAI,
        "openai_config",
        OpenAiConfig,
        (
            ("openai_api_key", "openai_api_key_plaintext"),
            ("microsoft_entra_client_secret", "microsoft_entra_client_secret_plaintext"),
        ),
    ),
    ProviderInfo(
        _P.ANTHROPIC,
        "anthropic_config",
        AnthropicConfig,
        (("anthropic_api_key", "anthropic_api_key_plaintext"),),
    ),
    ProviderInfo(
        _P.COHERE, "cohere_config", CohereConfig, (("cohere_api_key", "cohere_api_key_plaintext"),)
    ),
    ProviderInfo(
        _P.AMAZON_BEDROCK,
        "amazon_bedrock_config",
        AmazonBedrockConfig,
        (
            ("aws_access_key_id", "aws_access_key_id_plaintext"),
            ("aws_secret_access_key", "aws_secret_access_key_plaintext"),
        ),
    ),
    ProviderInfo(
        _P.GOOGLE_CLOUD_VERTEX_AI,
        "google_cloud_vertex_ai_config",
        GoogleCloudVertexAiConfig,
        (("private_key", "private_key_plaintext"),),
    ),
    ProviderInfo(
        _P.DATABRICKS_MODEL_SERVING,
        "databricks_model_serving_config",
        DatabricksModelServingConfig,
        (("databricks_api_token", "databricks_api_token_plaintext"),),
    ),
    ProviderInfo(
        _P.AI21LABS,
        "ai21labs_config",
        Ai21LabsConfig,
        (("ai21labs_api_key", "ai21labs_api_key_plaintext"),),
        deprecated=True,
    ),
    ProviderInfo(
        _P.PALM,
        "palm_config",
        PaLmConfig,
        (("palm_api_key", "palm_api_key_plaintext"),),
        deprecated=True,
    ),
    # Its credentials sit one level down, in api_key_auth / bearer_token_auth (rule X7).
    ProviderInfo(_P.CUSTOM, "custom_provider_config", CustomProviderConfig),
)

# Entry-point group of third-party adapters: `<provider name> = <module>:<AdapterClass>`.
# Only the names are read here (package metadata, no import): the adapter registry in
# providers/ loads the classes.
ADAPTER_ENTRY_POINT_GROUP = "serving_engine.adapters"
_EXTENSION_NAME = re.compile(r"[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*")


def _hide_plaintexts(value: Any) -> Any:
    """A plugin's block is a free mapping: its `*_plaintext` values still become SecretStr, so
    plans hash them and the apply moves them into the secret store like the platform's."""
    if isinstance(value, dict):
        return {
            k: SecretStr(v)
            if k.endswith("_plaintext") and isinstance(v, str)
            else _hide_plaintexts(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_hide_plaintexts(v) for v in value]
    return value


ExtensionConfig = Annotated[dict[str, Any], AfterValidator(_hide_plaintexts)]


def extension_config_field(name: str) -> str:
    """The block of a third-party provider: `acme-llm` -> `acme_llm_config`."""
    return name.replace("-", "_") + "_config"


def _extensions() -> tuple[ProviderInfo, ...]:
    builtin = {p.name for p in _BUILTIN}
    names = sorted({ep.name for ep in entry_points(group=ADAPTER_ENTRY_POINT_GROUP)})
    # A name that is not a plain lowercase word, or that shadows a platform provider, stays
    # unknown here; the registry reports why when it loads the entry point.
    return tuple(
        ProviderInfo(name, extension_config_field(name), ExtensionConfig, builtin=False)
        for name in names
        if name not in builtin and _EXTENSION_NAME.fullmatch(name)
    )


# name -> row, for every provider a spec may name: the platform's, then installed plugins'.
PROVIDERS: Mapping[str, ProviderInfo] = MappingProxyType(
    {p.name: p for p in (*_BUILTIN, *_extensions())}
)
DEPRECATED_PROVIDERS = frozenset(p.name for p in PROVIDERS.values() if p.deprecated)


def provider_info(name: object) -> ProviderInfo | None:
    return PROVIDERS.get(name) if isinstance(name, str) else None


def _provider(value: Any) -> ExternalModelProvider | str:
    info = provider_info(value)
    if info is None:
        names = [repr(p) for p in PROVIDERS]
        expected = ", ".join(names[:-1]) + f" or {names[-1]}"
        raise PydanticCustomError("enum", "Input should be {expected}", {"expected": expected})
    return ExternalModelProvider(info.name) if info.builtin else info.name


# The platform's enum in the JSON Schema; a plugin's name validates too.
ProviderName = Annotated[
    ExternalModelProvider | str,
    PlainValidator(_provider, json_schema_input_type=ExternalModelProvider),
]


def _bare_provider_ref(schema: dict[str, Any]) -> None:
    # A plain validator adds a title beside the $ref; an enum-typed field has none.
    schema["properties"]["provider"].pop("title", None)


class _ExternalModelFields(SpecModel):
    model_config = ConfigDict(json_schema_extra=_bare_provider_ref)

    provider: ProviderName
    name: str
    task: Task

    def provider_config(self) -> Any:
        """The `<provider>_config` block that belongs to `provider` (None when absent)."""
        return getattr(self, PROVIDERS[self.provider].config_field)


# One optional field per row of the table, so that a provider's block is declared once.
ExternalModel = create_model(
    "ExternalModel",
    __base__=_ExternalModelFields,
    __module__=__name__,
    **{p.config_field: (p.config_type | None, None) for p in PROVIDERS.values()},
)

# provider -> the name of its config block (rule X2).
PROVIDER_CONFIG_FIELDS: Mapping[str, str] = MappingProxyType(
    {p.name: p.config_field for p in PROVIDERS.values()}
)

# Every (secret reference field, plaintext twin) pair, by config block (rule X3).
CREDENTIAL_PAIRS: Mapping[str, tuple[tuple[str, str], ...]] = MappingProxyType(
    {
        **{p.config_field: p.credentials for p in PROVIDERS.values() if p.credentials},
        "api_key_auth": (("value", "value_plaintext"),),
        "bearer_token_auth": (("token", "token_plaintext"),),
    }
)
