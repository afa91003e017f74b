"""Closed value sets of the serving API (databricks-sdk 0.162, `serving.py`)."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "BedrockProvider",
    "ExternalModelProvider",
    "GatewayRateLimitKey",
    "OpenAiApiType",
    "PiiBehavior",
    "RateLimitKey",
    "RenewalPeriod",
    "Task",
    "TelemetryFeature",
    "WorkloadType",
    "KNOWN_WORKLOAD_SIZES",
]


class Task(StrEnum):
    CHAT = "llm/v1/chat"
    COMPLETIONS = "llm/v1/completions"
    EMBEDDINGS = "llm/v1/embeddings"


# The platform's providers (what the JSON Schema offers); each has a row, with its config block,
# in the provider table `schemas._external.PROVIDERS`.
class ExternalModelProvider(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    COHERE = "cohere"
    AMAZON_BEDROCK = "amazon-bedrock"
    GOOGLE_CLOUD_VERTEX_AI = "google-cloud-vertex-ai"
    DATABRICKS_MODEL_SERVING = "databricks-model-serving"
    AI21LABS = "ai21labs"
    PALM = "palm"
    CUSTOM = "custom"


class WorkloadType(StrEnum):
    CPU = "CPU"
    CPU_MEDIUM = "CPU_MEDIUM"
    CPU_LARGE = "CPU_LARGE"
    GPU_SMALL = "GPU_SMALL"
    GPU_MEDIUM = "GPU_MEDIUM"
    GPU_LARGE = "GPU_LARGE"
    GPU_XLARGE = "GPU_XLARGE"
    GPU_XLARGE_8 = "GPU_XLARGE_8"
    MULTIGPU_MEDIUM = "MULTIGPU_MEDIUM"


# workload_size is a free string in the API ("additional custom sizes may exist"):
# unknown sizes are a warning, not an error (rule E8).
KNOWN_WORKLOAD_SIZES = ("Small", "Medium", "Large")


class RenewalPeriod(StrEnum):
    MINUTE = "minute"


class RateLimitKey(StrEnum):
    """Keys of the legacy endpoint-level ``rate_limits``."""

    USER = "user"
    ENDPOINT = "endpoint"


class GatewayRateLimitKey(StrEnum):
    """Keys of ``ai_gateway.rate_limits``."""

    USER = "user"
    ENDPOINT = "endpoint"
    USER_GROUP = "user_group"
    SERVICE_PRINCIPAL = "service_principal"


class PiiBehavior(StrEnum):
    NONE = "NONE"
    BLOCK = "BLOCK"
    MASK = "MASK"


class BedrockProvider(StrEnum):
    ANTHROPIC = "anthropic"
    COHERE = "cohere"
    AI21LABS = "ai21labs"
    AMAZON = "amazon"


class OpenAiApiType(StrEnum):
    OPENAI = "openai"
    AZURE = "azure"
    AZUREAD = "azuread"


class TelemetryFeature(StrEnum):
    INFERENCE_TABLE = "TELEMETRY_FEATURE_INFERENCE_TABLE"
    LOGS = "TELEMETRY_FEATURE_LOGS"
    METRICS = "TELEMETRY_FEATURE_METRICS"
    TRACES = "TELEMETRY_FEATURE_TRACES"
