"""The endpoint spec: pydantic models, enumerations, per-spec rules and the JSON Schema."""

from ._diagnostics import Diagnostic, Path, Severity, format_path
from ._endpoint import (
    AiGatewayConfig,
    AiGatewayInferenceTableConfig,
    AiGatewayRateLimit,
    AutoCaptureConfigInput,
    EndpointCoreConfigInput,
    EndpointSpec,
    EndpointTag,
    RateLimit,
    Route,
    ServedEntityInput,
    ServedModelInput,
    TrafficConfig,
)
from ._enums import (
    ExternalModelProvider,
    GatewayRateLimitKey,
    PiiBehavior,
    RateLimitKey,
    RenewalPeriod,
    Task,
    WorkloadType,
)
from ._external import CREDENTIAL_PAIRS, PROVIDER_CONFIG_FIELDS, ExternalModel
from ._names import default_entity_name, entity_name_of
from ._rule_ids import RuleId
from ._rules import SECRET_REFERENCE, RuleOptions, check_endpoint
from ._states import ConfigUpdateState, DeploymentState, EntityRole, ReadyState
from ._validate import endpoint_json_schema, render_json_schema, validate_endpoint

__all__ = [
    "AiGatewayConfig",
    "AiGatewayInferenceTableConfig",
    "AiGatewayRateLimit",
    "AutoCaptureConfigInput",
    "CREDENTIAL_PAIRS",
    "ConfigUpdateState",
    "DeploymentState",
    "Diagnostic",
    "EndpointCoreConfigInput",
    "EndpointSpec",
    "EndpointTag",
    "EntityRole",
    "ExternalModel",
    "ExternalModelProvider",
    "GatewayRateLimitKey",
    "PROVIDER_CONFIG_FIELDS",
    "Path",
    "PiiBehavior",
    "RateLimit",
    "RateLimitKey",
    "ReadyState",
    "RenewalPeriod",
    "Route",
    "RuleId",
    "RuleOptions",
    "SECRET_REFERENCE",
    "ServedEntityInput",
    "ServedModelInput",
    "Severity",
    "Task",
    "TrafficConfig",
    "WorkloadType",
    "check_endpoint",
    "default_entity_name",
    "endpoint_json_schema",
    "entity_name_of",
    "format_path",
    "render_json_schema",
    "validate_endpoint",
]
