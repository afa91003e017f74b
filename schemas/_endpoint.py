"""The endpoint document: the create body of `POST /api/2.0/serving-endpoints`.

Field names and nesting follow databricks-sdk 0.162 (`serving.py`) exactly, so a spec file is a
request body a user could send with curl. Constraints that one field can check alone (ranges,
patterns, enums) live here so that editors see them in the JSON Schema; rules that relate fields
live in ``schemas._rules``.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    WithJsonSchema,
)

from ._base import SpecModel
from ._enums import (
    GatewayRateLimitKey,
    PiiBehavior,
    RateLimitKey,
    RenewalPeriod,
    TelemetryFeature,
    WorkloadType,
)
from ._external import ExternalModel

__all__ = [
    "AiGatewayConfig",
    "AiGatewayGuardrailParameters",
    "AiGatewayGuardrails",
    "AiGatewayInferenceTableConfig",
    "AiGatewayRateLimit",
    "AiGatewayUsageTrackingConfig",
    "AutoCaptureConfigInput",
    "EmailNotifications",
    "EndpointCoreConfigInput",
    "EndpointSpec",
    "EndpointTag",
    "FallbackConfig",
    "GuardrailPii",
    "RateLimit",
    "Route",
    "ServedEntityInput",
    "ServedModelInput",
    "TelemetryConfig",
    "TelemetryInferenceTableConfig",
    "TrafficConfig",
    "UnityCatalogTableNames",
    "NAME_PATTERN",
]

# Endpoint and served-entity names (rules N1, N3).
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"


# A decimal integer written as a string; at most 19 digits (int64), ASCII digits only.
_DECIMAL = re.compile(r"-?[0-9]{1,19}")


def _integral(value: object) -> object:
    # JSON has one number type: 5.0 is an integer to JSON Schema, so accept it as one.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    # The platform speaks proto-JSON, which accepts an integer field as a number or as a
    # decimal string (seed 003 sends `"traffic_percentage": "90"`). Anything else ("ninety",
    # "9.5", "") stays a string and fails StrictInt as before.
    if isinstance(value, str) and _DECIMAL.fullmatch(value):
        return int(value)
    return value


def _int_schema(**bounds: int) -> WithJsonSchema:
    """An integer field's JSON Schema: a number, or the decimal string proto-JSON allows."""
    number: dict[str, object] = {"type": "integer", "minimum": bounds.get("ge", 0)}
    if "le" in bounds:
        number["maximum"] = bounds["le"]
    return WithJsonSchema({"anyOf": [number, {"type": "string", "pattern": "^[0-9]{1,19}$"}]})


NonNegativeInt = Annotated[StrictInt, BeforeValidator(_integral), Field(ge=0), _int_schema()]
Percentage = Annotated[
    StrictInt, BeforeValidator(_integral), Field(ge=0, le=100), _int_schema(ge=0, le=100)
]


def _number_to_str(value: object) -> object:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


# YAML writes `entity_version: 2`; the API types versions as strings.
Version = Annotated[
    str,
    BeforeValidator(_number_to_str),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]}),
]


class ServedEntityInput(SpecModel):
    """One served entity: an external model, or a model version on provisioned compute."""

    name: str | None = None
    external_model: ExternalModel | None = None
    entity_name: str | None = None
    entity_version: Version | None = None
    workload_size: str | None = None
    workload_type: WorkloadType | None = None
    scale_to_zero_enabled: StrictBool | None = None
    min_provisioned_concurrency: NonNegativeInt | None = None
    max_provisioned_concurrency: NonNegativeInt | None = None
    min_provisioned_throughput: NonNegativeInt | None = None
    max_provisioned_throughput: NonNegativeInt | None = None
    provisioned_model_units: NonNegativeInt | None = None
    burst_scaling_enabled: StrictBool | None = None
    environment_vars: dict[str, str] | None = None
    instance_profile_arn: str | None = None


class ServedModelInput(SpecModel):
    """Deprecated shape of a served entity (`served_models`); normalised to `served_entities`."""

    model_name: str
    model_version: Version
    scale_to_zero_enabled: StrictBool
    name: str | None = None
    workload_size: str | None = None
    workload_type: WorkloadType | None = None
    min_provisioned_concurrency: NonNegativeInt | None = None
    max_provisioned_concurrency: NonNegativeInt | None = None
    min_provisioned_throughput: NonNegativeInt | None = None
    max_provisioned_throughput: NonNegativeInt | None = None
    provisioned_model_units: NonNegativeInt | None = None
    burst_scaling_enabled: StrictBool | None = None
    environment_vars: dict[str, str] | None = None
    instance_profile_arn: str | None = None

    def to_served_entity(self) -> ServedEntityInput:
        fields = self.model_dump(exclude={"model_name", "model_version"}, exclude_unset=True)
        return ServedEntityInput(
            entity_name=self.model_name, entity_version=self.model_version, **fields
        )


class Route(SpecModel):
    served_entity_name: str | None = None
    served_model_name: str | None = None
    traffic_percentage: Percentage

    @property
    def target(self) -> str | None:
        """The served entity this route sends traffic to (either name field may carry it)."""
        return self.served_entity_name or self.served_model_name


class TrafficConfig(SpecModel):
    routes: list[Route] = Field(default_factory=list)


class AutoCaptureConfigInput(SpecModel):
    """Deprecated legacy inference tables; prefer `ai_gateway.inference_table_config`."""

    catalog_name: str | None = None
    schema_name: str | None = None
    table_name_prefix: str | None = None
    enabled: StrictBool | None = None


class EndpointCoreConfigInput(SpecModel):
    # The SDK always sends the endpoint name here; it must match the endpoint's.
    name: str | None = None
    served_entities: list[ServedEntityInput] | None = None
    served_models: list[ServedModelInput] | None = None
    traffic_config: TrafficConfig | None = None
    auto_capture_config: AutoCaptureConfigInput | None = None

    # Which list the user wrote, so diagnostics point at their lines.
    _entities_key: str = PrivateAttr(default="served_entities")

    @property
    def entities_key(self) -> str:
        return self._entities_key

    def entities(self) -> list[ServedEntityInput]:
        """The served entities, whichever list (current or deprecated) declared them."""
        if self.served_entities is not None:
            return self.served_entities
        return [m.to_served_entity() for m in self.served_models or []]


class RateLimit(SpecModel):
    """Legacy endpoint rate limit (deprecated in favour of `ai_gateway.rate_limits`)."""

    calls: NonNegativeInt
    renewal_period: RenewalPeriod
    key: RateLimitKey | None = None


class AiGatewayRateLimit(SpecModel):
    renewal_period: RenewalPeriod
    calls: NonNegativeInt | None = None
    tokens: NonNegativeInt | None = None
    key: GatewayRateLimitKey | None = None
    principal: str | None = None


class GuardrailPii(SpecModel):
    behavior: PiiBehavior | None = None


class AiGatewayGuardrailParameters(SpecModel):
    safety: StrictBool | None = None
    pii: GuardrailPii | None = None
    invalid_keywords: list[str] | None = None
    valid_topics: list[str] | None = None


class AiGatewayGuardrails(SpecModel):
    input: AiGatewayGuardrailParameters | None = None
    output: AiGatewayGuardrailParameters | None = None


class AiGatewayUsageTrackingConfig(SpecModel):
    enabled: StrictBool | None = None


class AiGatewayInferenceTableConfig(SpecModel):
    catalog_name: str | None = None
    schema_name: str | None = None
    table_name_prefix: str | None = None
    enabled: StrictBool | None = None


class FallbackConfig(SpecModel):
    enabled: StrictBool


class AiGatewayConfig(SpecModel):
    guardrails: AiGatewayGuardrails | None = None
    usage_tracking_config: AiGatewayUsageTrackingConfig | None = None
    inference_table_config: AiGatewayInferenceTableConfig | None = None
    rate_limits: list[AiGatewayRateLimit] | None = None
    fallback_config: FallbackConfig | None = None


class EndpointTag(SpecModel):
    key: str
    value: str | None = None


class EmailNotifications(SpecModel):
    on_update_failure: list[str] | None = None
    on_update_success: list[str] | None = None


class TelemetryInferenceTableConfig(SpecModel):
    name: str | None = None
    sampling_fraction: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] | None = None


class UnityCatalogTableNames(SpecModel):
    annotations_table: str | None = None
    logs_table: str | None = None
    metrics_table: str | None = None
    traces_table: str | None = None


class TelemetryConfig(SpecModel):
    enabled_telemetry_features: list[TelemetryFeature] | None = None
    inference_table_config: TelemetryInferenceTableConfig | None = None
    table_names: UnityCatalogTableNames | None = None
    telemetry_profile_id: str | None = None


class EndpointSpec(SpecModel):
    """One serving endpoint as the user declares it."""

    name: Annotated[str, Field(pattern=NAME_PATTERN, min_length=1)]
    config: EndpointCoreConfigInput | None = None
    rate_limits: list[RateLimit] | None = None
    ai_gateway: AiGatewayConfig | None = None
    tags: list[EndpointTag] | None = None
    route_optimized: StrictBool | None = None
    description: str | None = None
    budget_policy_id: str | None = None
    email_notifications: EmailNotifications | None = None
    telemetry_config: TelemetryConfig | None = None
