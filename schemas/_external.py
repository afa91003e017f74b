"""External-model provider configurations (`ExternalModel` and its `<provider>_config` blocks).

Each credential is a pair: a secret reference (``{{secrets/scope/key}}``) or its ``*_plaintext``
twin. Plaintext values are ``SecretStr`` so that a ``repr`` or a log line never shows them.
Which pair is required per provider is a rule (X3-X7 in ``schemas._rules``), not a type, so that
the error names the rule and the field.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr

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
    "PROVIDER_CONFIG_FIELDS",
    "CREDENTIAL_PAIRS",
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


class ExternalModel(SpecModel):
    provider: ExternalModelProvider
    name: str
    task: Task
    openai_config: OpenAiConfig | None = None
    anthropic_config: AnthropicConfig | None = None
    cohere_config: CohereConfig | None = None
    amazon_bedrock_config: AmazonBedrockConfig | None = None
    google_cloud_vertex_ai_config: GoogleCloudVertexAiConfig | None = None
    databricks_model_serving_config: DatabricksModelServingConfig | None = None
    ai21labs_config: Ai21LabsConfig | None = None
    palm_config: PaLmConfig | None = None
    custom_provider_config: CustomProviderConfig | None = None

    def provider_config(self) -> SpecModel | None:
        """The `<provider>_config` block that belongs to `provider`."""
        return getattr(self, PROVIDER_CONFIG_FIELDS[self.provider])


# provider -> the name of its config block (rule X2).
PROVIDER_CONFIG_FIELDS: dict[ExternalModelProvider, str] = {
    ExternalModelProvider.OPENAI: "openai_config",
    ExternalModelProvider.ANTHROPIC: "anthropic_config",
    ExternalModelProvider.COHERE: "cohere_config",
    ExternalModelProvider.AMAZON_BEDROCK: "amazon_bedrock_config",
    ExternalModelProvider.GOOGLE_CLOUD_VERTEX_AI: "google_cloud_vertex_ai_config",
    ExternalModelProvider.DATABRICKS_MODEL_SERVING: "databricks_model_serving_config",
    ExternalModelProvider.AI21LABS: "ai21labs_config",
    ExternalModelProvider.PALM: "palm_config",
    ExternalModelProvider.CUSTOM: "custom_provider_config",
}

# Every (secret reference field, plaintext twin) pair, by config block (rule X3).
CREDENTIAL_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "openai_config": (
        ("openai_api_key", "openai_api_key_plaintext"),
        ("microsoft_entra_client_secret", "microsoft_entra_client_secret_plaintext"),
    ),
    "anthropic_config": (("anthropic_api_key", "anthropic_api_key_plaintext"),),
    "cohere_config": (("cohere_api_key", "cohere_api_key_plaintext"),),
    "amazon_bedrock_config": (
        ("aws_access_key_id", "aws_access_key_id_plaintext"),
        ("aws_secret_access_key", "aws_secret_access_key_plaintext"),
    ),
    "google_cloud_vertex_ai_config": (("private_key", "private_key_plaintext"),),
    "databricks_model_serving_config": (
        ("databricks_api_token", "databricks_api_token_plaintext"),
    ),
    "ai21labs_config": (("ai21labs_api_key", "ai21labs_api_key_plaintext"),),
    "palm_config": (("palm_api_key", "palm_api_key_plaintext"),),
    "api_key_auth": (("value", "value_plaintext"),),
    "bearer_token_auth": (("token", "token_plaintext"),),
}
