"""Every field the installed databricks-sdk can send is known to the spec schema.

The SDK's create / update-config / ai-gateway / notifications / telemetry-config / query calls
are read from the installed package (their parameters and the request dataclasses nested in
them, recursively) and matched against the pydantic models in schemas/. A new SDK release that
adds a field fails this test, naming the field's path, instead of the engine rejecting it (or
dropping it) at run time.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any

import pytest
from databricks.sdk.service import serving
from pydantic import BaseModel

from schemas import AiGatewayConfig, EndpointCoreConfigInput, EndpointSpec, QueryRequest

API = serving.ServingEndpointsAPI
# SDK call -> the schema model its body must fit.
CALLS: list[tuple[Any, type[BaseModel]]] = [
    (API.create, EndpointSpec),
    (API.update_config, EndpointCoreConfigInput),
    (API.put_ai_gateway, AiGatewayConfig),
    (API.update_notifications, EndpointSpec),
    (API.patch_telemetry_config, EndpointSpec),
    (API.query, QueryRequest),
]


def _inner(hint: Any) -> Any:
    """The type inside Optional[...], List[...], Dict[str, ...] and Annotated[...]."""
    while True:
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            hint = typing.get_args(hint)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            if len(args) != 1:
                return args
            hint = args[0]
        elif origin in (list, dict):
            hint = typing.get_args(hint)[-1]
        else:
            return hint


def _models(hint: Any) -> list[type[BaseModel]]:
    inner = _inner(hint)
    options = inner if isinstance(inner, list) else [inner]
    out = []
    for option in options:
        option = _inner(option)
        if isinstance(option, type) and issubclass(option, BaseModel):
            out.append(option)
    return out


def _unknown(sdk: Any, models: list[type[BaseModel]], path: str) -> list[str]:
    """Paths of the SDK dataclass's fields that none of `models` knows (recursively)."""
    hints = typing.get_type_hints(sdk)
    missing = []
    for field in dataclasses.fields(sdk):
        where = f"{path}.{field.name}"
        known = [m for m in models if field.name in m.model_fields]
        if not known:
            missing.append(where)
            continue
        inner = _inner(hints[field.name])
        if dataclasses.is_dataclass(inner):
            nested = [n for m in known for n in _models(m.model_fields[field.name].annotation)]
            missing += _unknown(inner, nested, where)
    return missing


def _call_unknown(call: Any, model: type[BaseModel]) -> list[str]:
    hints = typing.get_type_hints(call)
    missing = []
    for name in inspect.signature(call).parameters:
        if name == "self" or (name == "name" and model is not EndpointSpec):
            continue  # the endpoint's name is in the URL of every call but create
        where = f"{call.__name__}({name})"
        if name not in model.model_fields:
            missing.append(where)
            continue
        inner = _inner(hints[name])
        if dataclasses.is_dataclass(inner):
            missing += _unknown(inner, _models(model.model_fields[name].annotation), where)
    return missing


@pytest.mark.parametrize(("call", "model"), CALLS, ids=[c.__name__ for c, _ in CALLS])
def test_every_sdk_field_is_in_the_schema(call: Any, model: type[BaseModel]) -> None:
    assert _call_unknown(call, model) == []


def test_the_walk_finds_a_missing_field() -> None:
    """The check itself: a model that lacks one of the SDK's fields is reported, by path."""

    class Short(BaseModel):
        name: str | None = None

    assert _unknown(serving.EndpointCoreConfigInput, [Short], "config") == [
        "config.auto_capture_config",
        "config.served_entities",
        "config.served_models",
        "config.traffic_config",
    ]
    # Nested: the served entity's fields are walked too.
    assert "x.served_entities.burst_scaling_enabled" not in _unknown(
        serving.EndpointCoreConfigInput, [EndpointCoreConfigInput], "x"
    )


def test_fields_this_host_cannot_honour_are_warned_about() -> None:
    from schemas import Severity, check_endpoint

    spec = EndpointSpec.model_validate(
        {
            "name": "e",
            "email_notifications": {"on_update_failure": ["ops@example.com"]},
            "budget_policy_id": "b1",
            "route_optimized": True,
            "config": {
                "served_entities": [
                    {
                        "name": "m",
                        "entity_name": "main.default.m",
                        "entity_version": "1",
                        "workload_size": "Small",
                        "scale_to_zero_enabled": True,
                        "burst_scaling_enabled": True,
                    }
                ]
            },
        }
    )
    warned = {
        ".".join(map(str, d.path))
        for d in check_endpoint(spec)
        if d.rule == "H1" and d.severity == Severity.WARNING
    }
    assert warned == {
        "email_notifications",
        "budget_policy_id",
        "route_optimized",
        "config.served_entities.0.burst_scaling_enabled",
    }
