"""The control plane's OpenAPI 3.1 document (served at /openapi.json), and per-endpoint docs.

Written by hand from what the routes do; the endpoint create body is the generated JSON Schema
of `schemas.EndpointSpec`, so the document and the validator cannot disagree.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from engine.access.secret_acls import SCOPE_PERMISSIONS
from schemas import ConfigUpdateState, ReadyState, endpoint_json_schema

__all__ = ["openapi_document", "endpoint_openapi"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
        for s in (*statuses, 401, 404)
    }


def _ok(schema: dict[str, Any], *errors: int) -> dict[str, Any]:
    return {
        "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
        **_errors(*errors),
    }


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _query(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": True, "schema": {"type": "string"}}


def _op(summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": responses, **extra}


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" else _rewrite_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(v) for v in node]
    return node


@functools.cache
def _document_text() -> str:
    spec = endpoint_json_schema()
    defs = _rewrite_refs(spec.pop("$defs", {}))
    create = _rewrite_refs({k: v for k, v in spec.items() if k not in ("$schema", "$id")})
    obj = {"type": "object"}
    endpoint = {
        "type": "object",
        "required": ["name", "id", "state"],
        "properties": {
            "name": {"type": "string"},
            "id": {"type": "string"},
            "creator": {"type": "string"},
            "creation_timestamp": {"type": "integer"},
            "last_updated_timestamp": {"type": "integer"},
            "state": {
                "type": "object",
                "required": ["ready", "config_update"],
                "properties": {
                    "ready": {"enum": [s.value for s in ReadyState]},
                    "config_update": {"enum": [s.value for s in ConfigUpdateState]},
                },
            },
            "config": obj,
            "pending_config": obj,
            "tags": {"type": "array", "items": obj},
            "permission_level": {"enum": ["CAN_VIEW", "CAN_QUERY", "CAN_MANAGE"]},
            "route_optimized": {"type": "boolean"},
            "ai_gateway": obj,
            "task": {"type": "string"},
        },
    }
    acl = {
        "type": "object",
        "properties": {
            "access_control_list": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "user_name": {"type": "string"},
                        "group_name": {"type": "string"},
                        "service_principal_name": {"type": "string"},
                        "permission_level": {"enum": ["CAN_VIEW", "CAN_QUERY", "CAN_MANAGE"]},
                    },
                },
            }
        },
    }
    ep = "/api/2.0/serving-endpoints"
    paths: dict[str, Any] = {
        ep: {
            "get": _op(
                "List endpoints",
                _ok(
                    {
                        "type": "object",
                        "required": ["endpoints"],
                        "properties": {"endpoints": {"type": "array", "items": endpoint}},
                    }
                ),
            ),
            "post": _op("Create an endpoint", _ok(endpoint, 400, 409), requestBody=_body(create)),
        },
        ep + "/{name}": {
            "parameters": [_NAME],
            "get": _op("Get an endpoint", _ok(endpoint, 403)),
            "delete": _op("Delete an endpoint", _ok({"type": "object"}, 403, 409)),
        },
        ep + "/{name}/config": {
            "parameters": [_NAME],
            "put": _op(
                "Update the served entities and traffic",
                _ok(endpoint, 400, 403, 409),
                requestBody=_body({"$ref": "#/components/schemas/EndpointCoreConfigInput"}),
            ),
        },
        ep + "/{name}/config/cancel": {
            "parameters": [_NAME],
            "post": _op(
                "Cancel the config update in progress (the engine's: the platform's Serving UI "
                "only); the previous config keeps serving, the state becomes UPDATE_CANCELED",
                _ok(endpoint, 400, 403, 409),
                requestBody=_body({"type": "object", "maxProperties": 0}, required=False),
            ),
        },
        ep + "/{name}/rate-limits": {
            "parameters": [_NAME],
            "put": _op(
                "Replace the endpoint's (legacy) rate limits",
                _ok(
                    {"type": "object", "properties": {"rate_limits": {"type": "array"}}},
                    400,
                    403,
                    409,
                ),
                requestBody=_body(
                    {
                        "type": "object",
                        "properties": {
                            "rate_limits": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/RateLimit"},
                            }
                        },
                    },
                    required=False,
                ),
            ),
        },
        ep + "/{name}/tags": {
            "parameters": [_NAME],
            "patch": _op(
                "Add and delete tags",
                _ok(
                    {
                        "type": "object",
                        "required": ["tags"],
                        "properties": {"tags": {"type": "array"}},
                    },
                    400,
                    403,
                    409,
                ),
                requestBody=_body(
                    {
                        "type": "object",
                        "properties": {
                            "add_tags": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/EndpointTag"},
                            },
                            "delete_tags": {"type": "array", "items": {"type": "string"}},
                        },
                    },
                    required=False,
                ),
            ),
        },
        ep + "/{name}/ai-gateway": {
            "parameters": [_NAME],
            "put": _op(
                "Replace the AI gateway block",
                _ok({"type": "object"}, 400, 403, 409),
                requestBody=_body({"$ref": "#/components/schemas/AiGatewayConfig"}, required=False),
            ),
        },
        ep + "/{name}/notifications": {
            "parameters": [_NAME],
            "patch": _op(
                "Replace the email notifications",
                _ok({"type": "object"}, 400, 403, 409),
                requestBody=_body(
                    {
                        "type": "object",
                        "properties": {
                            "email_notifications": {
                                "$ref": "#/components/schemas/EmailNotifications"
                            }
                        },
                    },
                    required=False,
                ),
            ),
        },
        ep + "/{name}/telemetry-config": {
            "parameters": [_NAME],
            "patch": _op(
                "Replace (or, absent, remove) the telemetry config",
                _ok({"type": "object"}, 400, 403, 409),
                requestBody=_body(
                    {
                        "type": "object",
                        "properties": {
                            "telemetry_config": {"$ref": "#/components/schemas/TelemetryConfig"}
                        },
                    },
                    required=False,
                ),
            ),
        },
        ep + "/{name}/openapi": {
            "parameters": [_NAME],
            "get": _op("The endpoint's query API", _ok({"type": "object"}, 403)),
        },
        ep + "/{name}/metrics": {
            "parameters": [_NAME],
            "get": _op(
                "The endpoint's metrics (Prometheus text)",
                {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(403),
                },
            ),
        },
        ep + "/{name}/served-models/{entity}/logs": {
            "parameters": [_NAME, {**_NAME, "name": "entity"}],
            "get": _op(
                "Recent server logs of a served entity",
                _ok(
                    {
                        "type": "object",
                        "required": ["logs"],
                        "properties": {"logs": {"type": "string"}},
                    },
                    403,
                ),
            ),
        },
        ep + "/{name}/served-models/{entity}/build-logs": {
            "parameters": [_NAME, {**_NAME, "name": "entity"}],
            "get": _op(
                "Build logs of a served entity",
                _ok(
                    {
                        "type": "object",
                        "required": ["logs"],
                        "properties": {"logs": {"type": "string"}},
                    },
                    403,
                ),
            ),
        },
        ep + "/get-model-optimization-info/{model}/{version}": {
            "parameters": [{**_NAME, "name": "model"}, {**_NAME, "name": "version"}],
            "get": _op(
                "Provisioned-throughput information of a model version",
                _ok(
                    {
                        "type": "object",
                        "required": ["optimizable", "model_type"],
                        "properties": {
                            "optimizable": {"type": "boolean"},
                            "model_type": {"type": "string"},
                            # Output tokens/s of one replica on this host; absent until the
                            # model is calibrated (`engine models calibrate`), then `message`
                            # says so.
                            "throughput_chunk_size": {"type": "integer", "minimum": 1},
                            "message": {"type": "string"},
                        },
                    }
                ),
            ),
        },
        "/api/2.0/permissions/serving-endpoints/{id}": {
            "parameters": [{**_NAME, "name": "id"}],
            "get": _op("An endpoint's permissions", _ok(acl)),
            "put": _op(
                "Replace an endpoint's permissions",
                _ok(acl, 400, 403),
                requestBody=_body(acl, required=False),
            ),
            "patch": _op(
                "Add to an endpoint's permissions",
                _ok(acl, 400, 403),
                requestBody=_body(acl, required=False),
            ),
        },
        "/api/2.0/permissions/serving-endpoints/{id}/permissionLevels": {
            "parameters": [{**_NAME, "name": "id"}],
            "get": _op(
                "Permission levels",
                _ok(
                    {
                        "type": "object",
                        "required": ["permission_levels"],
                        "properties": {"permission_levels": {"type": "array"}},
                    }
                ),
            ),
        },
    }
    scope_body = {
        "type": "object",
        "required": ["scope"],
        "properties": {"scope": {"type": "string"}},
    }
    secret_body = {
        "type": "object",
        "required": ["scope", "key"],
        "properties": {
            "scope": {"type": "string"},
            "key": {"type": "string"},
            "string_value": {"type": "string"},
            "bytes_value": {"type": "string"},
        },
    }
    empty = {"type": "object"}
    permission = {"type": "string", "enum": list(SCOPE_PERMISSIONS)}
    acl_put_body = {
        "type": "object",
        "required": ["scope", "principal", "permission"],
        "properties": {
            "scope": {"type": "string"},
            "principal": {"type": "string"},
            "permission": permission,
        },
    }
    acl_delete_body = {
        "type": "object",
        "required": ["scope", "principal"],
        "properties": {"scope": {"type": "string"}, "principal": {"type": "string"}},
    }
    acl_item = {
        "type": "object",
        "properties": {"principal": {"type": "string"}, "permission": permission},
    }

    def checked_post(summary: str, body: dict[str, Any]) -> dict[str, Any]:
        # Every checked secrets call: 403 without the level, 404 for a missing scope or entry.
        return {"post": _op(summary, _ok(empty, 400, 403, 404), requestBody=_body(body))}

    def checked_get(summary: str, answer: dict[str, Any], *query: str) -> dict[str, Any]:
        return {
            "get": _op(summary, _ok(answer, 400, 403, 404), parameters=[_query(q) for q in query])
        }

    paths.update(
        {
            "/api/2.0/secrets/scopes/create": {
                "post": _op(
                    "Create a secret scope", _ok(empty, 400, 409), requestBody=_body(scope_body)
                )
            },
            "/api/2.0/secrets/scopes/delete": checked_post(
                "Delete a secret scope (MANAGE needed)", scope_body
            ),
            "/api/2.0/secrets/scopes/list": {
                "get": _op(
                    "List the secret scopes the caller holds a permission on",
                    _ok({"type": "object", "properties": {"scopes": {"type": "array"}}}),
                )
            },
            "/api/2.0/secrets/put": checked_post("Put a secret (WRITE needed)", secret_body),
            "/api/2.0/secrets/delete": checked_post("Delete a secret (WRITE needed)", secret_body),
            "/api/2.0/secrets/acls/put": checked_post(
                "Grant a principal READ, WRITE or MANAGE on a scope (MANAGE needed)", acl_put_body
            ),
            "/api/2.0/secrets/acls/delete": checked_post(
                "Remove a principal's entry from a scope (MANAGE needed)", acl_delete_body
            ),
            "/api/2.0/secrets/acls/get": checked_get(
                "A principal's entry on a scope (MANAGE needed)", acl_item, "scope", "principal"
            ),
            "/api/2.0/secrets/acls/list": checked_get(
                "The entries of a scope (MANAGE needed)",
                {"type": "object", "properties": {"items": {"type": "array", "items": acl_item}}},
                "scope",
            ),
            "/api/2.0/secrets/list": checked_get(
                "List the keys of a scope, never values (READ needed)",
                {"type": "object", "properties": {"secrets": {"type": "array"}}},
                "scope",
            ),
        }
    )
    document = {
        "openapi": "3.1.0",
        "info": {"title": "serving-engine control plane", "version": "2.0"},
        "paths": paths,
        "components": {
            "schemas": {
                **defs,
                "Error": {
                    "type": "object",
                    "required": ["error_code", "message"],
                    "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
                },
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
    return json.dumps(document)


def openapi_document() -> dict[str, Any]:
    return json.loads(_document_text())


def endpoint_openapi(name: str, task: str | None) -> dict[str, Any]:
    """The query API of one endpoint (`GET .../{name}/openapi`)."""
    field = {
        "llm/v1/chat": "messages",
        "llm/v1/completions": "prompt",
        "llm/v1/embeddings": "input",
    }.get(task or "")
    body: dict[str, Any] = {"type": "object"}
    if field:
        body = {"type": "object", "required": [field], "properties": {field: {}}}
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {"title": f"{name} ({task or 'custom'})", "version": "1"},
            "paths": {
                f"/serving-endpoints/{name}/invocations": {
                    "post": {
                        "requestBody": {
                            "required": True,
                            "content": {"application/json": {"schema": body}},
                        },
                        "responses": {"200": {"description": "OK"}},
                    }
                }
            },
        }
    )
