"""The tables' columns, in the platform's names and types (Arrow types of the Delta types).

| Delta (Databricks SQL) | Arrow                      |
|------------------------|----------------------------|
| STRING                 | string                     |
| DATE                   | date32                     |
| TIMESTAMP              | timestamp[us, tz=UTC]      |
| INT / BIGINT           | int32 / int64              |
| DOUBLE / BOOLEAN       | float64 / bool             |
| ARRAY<STRING>          | list<string>               |
| MAP<STRING, STRING>    | map<string, string>        |
"""

from __future__ import annotations

import pyarrow as pa

__all__ = [
    "PAYLOAD_PARTITION",
    "PAYLOAD_SCHEMA",
    "SERVED_ENTITIES_SCHEMA",
    "USAGE_SCHEMA",
]

_TIME = pa.timestamp("us", tz="UTC")

PAYLOAD_SCHEMA = pa.schema(
    [
        ("databricks_request_id", pa.string()),
        ("client_request_id", pa.string()),
        ("request_date", pa.date32()),
        ("request_time", _TIME),
        ("status_code", pa.int32()),
        ("sampling_fraction", pa.float64()),
        ("execution_duration_ms", pa.int64()),
        ("request", pa.string()),
        ("response", pa.string()),
        ("served_entity_id", pa.string()),
        ("logging_error_codes", pa.list_(pa.string())),
        ("requester", pa.string()),
    ]
)
PAYLOAD_PARTITION = ["request_date"]

USAGE_SCHEMA = pa.schema(
    [
        ("account_id", pa.string()),
        ("workspace_id", pa.string()),
        ("client_request_id", pa.string()),
        ("databricks_request_id", pa.string()),
        ("requester", pa.string()),
        ("status_code", pa.int32()),
        ("request_time", _TIME),
        ("input_token_count", pa.int64()),
        ("output_token_count", pa.int64()),
        ("input_character_count", pa.int64()),
        ("output_character_count", pa.int64()),
        ("usage_context", pa.map_(pa.string(), pa.string())),
        ("request_streaming", pa.bool_()),
        ("served_entity_id", pa.string()),
    ]
)

_EXTERNAL = pa.struct([("provider", pa.string()), ("name", pa.string()), ("task", pa.string())])
_CUSTOM = pa.struct(
    [
        ("workload_size", pa.string()),
        ("workload_type", pa.string()),
        ("scale_to_zero_enabled", pa.bool_()),
        ("min_provisioned_throughput", pa.int64()),
        ("max_provisioned_throughput", pa.int64()),
    ]
)

SERVED_ENTITIES_SCHEMA = pa.schema(
    [
        ("served_entity_id", pa.string()),
        ("account_id", pa.string()),
        ("workspace_id", pa.string()),
        ("created_by", pa.string()),
        ("endpoint_name", pa.string()),
        ("endpoint_id", pa.string()),
        ("served_entity_name", pa.string()),
        ("entity_type", pa.string()),
        ("entity_name", pa.string()),
        ("entity_version", pa.string()),
        ("endpoint_config_version", pa.int32()),
        ("task", pa.string()),
        ("external_model_config", _EXTERNAL),
        ("custom_model_config", _CUSTOM),
        ("change_time", _TIME),
        ("endpoint_delete_time", _TIME),
    ]
)
