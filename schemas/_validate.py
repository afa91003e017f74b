"""Validate one endpoint document (a parsed YAML/JSON body): schema, then per-spec rules."""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ._diagnostics import Diagnostic
from ._endpoint import EndpointSpec
from ._pydantic_errors import diagnostics_from_validation_error
from ._rule_ids import RuleId
from ._rules import RuleOptions, check_endpoint

__all__ = ["validate_endpoint", "endpoint_json_schema"]


def validate_endpoint(
    document: Any, options: RuleOptions | None = None
) -> tuple[EndpointSpec | None, list[Diagnostic]]:
    """Return the parsed spec (None when the schema rejects it) and every diagnostic found.

    Rules that relate fields run only on a document that fits the schema, so a typo is
    reported once, as a typo, and not again as every rule it happens to break.
    """
    if not isinstance(document, dict):
        kind = type(document).__name__ if document is not None else "empty document"
        return None, [Diagnostic(RuleId.S1, f"an endpoint must be a mapping, got {kind}")]
    try:
        spec = EndpointSpec.model_validate(document)
    except ValidationError as exc:
        return None, diagnostics_from_validation_error(exc, EndpointSpec)
    except RecursionError:
        return None, [Diagnostic(RuleId.S1, "document is nested too deeply")]
    if (
        spec.config is not None
        and spec.config.served_entities is None
        and (spec.config.served_models is not None)
    ):
        spec.config._entities_key = "served_models"
    return spec, check_endpoint(spec, options)


def endpoint_json_schema() -> dict[str, Any]:
    """The JSON Schema of one endpoint document, for editors and CI."""
    schema = EndpointSpec.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://serving-engine.dev/schemas/endpoint.schema.json",
        "title": "Serving endpoint",
        "description": "A serving endpoint: the create body of POST /api/2.0/serving-endpoints.",
        **{k: v for k, v in schema.items() if k not in ("title", "description")},
    }


def render_json_schema() -> str:
    return json.dumps(endpoint_json_schema(), indent=2, sort_keys=True) + "\n"
