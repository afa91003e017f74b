"""The shape of each mutation's request body, checked before the service is called.

A body the route does not expect is a 400 that names the field, never "nothing" and never a
removal: a misspelled top-level key (`{"rate_limit": [...]}`) would otherwise read as an absent
field, and an absent field of a PUT as "remove it". What the fields hold (a rate limit's
`renewal_period`, a served entity) is the spec's business: the service validates it with the
same rules as `engine validate`.

| route                          | top-level keys                                     |
|--------------------------------|----------------------------------------------------|
| POST   serving-endpoints       | the create body (`EndpointSpec`)                   |
| PUT    .../{name}/config       | `EndpointCoreConfigInput`; served entities required |
| PUT    .../{name}/rate-limits  | `rate_limits` (a list; `[]` or `{}` removes them)  |
| PATCH  .../{name}/tags         | `add_tags`, `delete_tags`                          |
| PUT    .../{name}/ai-gateway   | `AiGatewayConfig`                                  |
| PUT/PATCH permissions/...      | `access_control_list`                              |
| POST   secrets/...             | per action, see `SECRET_FIELDS`                    |

`name` is accepted wherever a client may echo the endpoint's name, and must then match it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from engine.asgi import ApiError
from schemas import AiGatewayConfig, EndpointCoreConfigInput, EndpointSpec

__all__ = [
    "SECRET_FIELDS",
    "acl_body",
    "ai_gateway_body",
    "config_body",
    "create_body",
    "notifications_body",
    "rate_limits_body",
    "secret_body",
    "tags_body",
    "telemetry_body",
]

_ACL_ENTRY_FIELDS = ("user_name", "group_name", "service_principal_name", "permission_level")

# Secrets actions -> the body fields they accept (as databricks-sdk sends them).
SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "scopes/create": (
        "scope",
        "initial_manage_principal",
        "scope_backend_type",
        "backend_azure_keyvault",
    ),
    "scopes/delete": ("scope",),
    "put": ("scope", "key", "string_value", "bytes_value"),
    "delete": ("scope", "key"),
    "acls/put": ("scope", "principal", "permission"),
    "acls/delete": ("scope", "principal"),
}


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


def _object(
    body: Any, allowed: Iterable[str], what: str, *, where: str = "the request body"
) -> dict[str, Any]:
    """`body` as an object whose keys are all in `allowed` (400 naming the first stray key)."""
    if not isinstance(body, dict):
        raise _invalid(f"{where} must be a JSON object ({what}), got {_kind(body)}")
    known = list(allowed)
    for key in body:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            message = f"unknown field `{key}` in {where}"
            message += f"; did you mean `{hint[0]}`?" if hint else f" (allowed: {', '.join(known)})"
            raise _invalid(message)
    return body


def _list(body: dict[str, Any], field: str, *, item: str) -> list[Any]:
    """`body[field]` as a list (absent: empty); null or any other value is a 400."""
    value = body.get(field, [])
    if not isinstance(value, list):
        raise _invalid(f"`{field}` must be a list of {item}, got {_kind(value)}")
    return value


def _same_name(body: dict[str, Any], name: str) -> None:
    if "name" in body and body["name"] != name:
        raise _invalid(
            f"the request body names endpoint {body['name']!r} but the path names {name!r}; "
            "remove `name` or make them equal"
        )


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def create_body(body: Any) -> dict[str, Any]:
    """POST serving-endpoints: the create body; its content is checked by the spec rules."""
    body = _object(body, EndpointSpec.model_fields, "the endpoint to create")
    if not isinstance(body.get("name"), str) or not body["name"]:
        raise _invalid("`name` is required: the name of the endpoint to create")
    return body


def config_body(body: Any, name: str) -> dict[str, Any]:
    """PUT .../config: a whole new config, so it must say what to serve."""
    body = _object(body, EndpointCoreConfigInput.model_fields, "the endpoint's new config")
    _same_name(body, name)
    if not any(isinstance(body.get(k), list) and body[k] for k in _ENTITY_LISTS):
        raise _invalid(
            "`served_entities` is required: a config update replaces the served entities, "
            "so it must list at least one"
        )
    return {k: v for k, v in body.items() if k != "name"}


_ENTITY_LISTS = ("served_entities", "served_models")


def rate_limits_body(body: Any, name: str) -> list[Any]:
    """PUT .../rate-limits: the new list (`[]`, or `{}` as the SDK sends, removes them)."""
    body = _object(body, ("rate_limits", "name"), '`{"rate_limits": [...]}`')
    _same_name(body, name)
    limits = _list(body, "rate_limits", item="rate limits (send [] to remove them)")
    for i, limit in enumerate(limits):
        if not isinstance(limit, dict):
            raise _invalid(f"rate_limits[{i}] must be an object, got {_kind(limit)}")
    return limits


def tags_body(body: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """PATCH .../tags: (tags to add or overwrite, keys to delete)."""
    body = _object(body, ("add_tags", "delete_tags", "name"), "`add_tags` and `delete_tags`")
    add = _list(body, "add_tags", item="{key, value} objects")
    delete = _list(body, "delete_tags", item="tag keys")
    for i, tag in enumerate(add):
        if not isinstance(tag, dict) or not isinstance(tag.get("key"), str) or not tag["key"]:
            raise _invalid(f"add_tags[{i}] must be an object with a string `key`")
    for i, key in enumerate(delete):
        if not isinstance(key, str) or not key:
            raise _invalid(f"delete_tags[{i}] must be a tag key (a string), got {_kind(key)}")
    return add, delete


def ai_gateway_body(body: Any, name: str) -> dict[str, Any]:
    """PUT .../ai-gateway: the whole new gateway config (`{}` removes it)."""
    allowed = [*AiGatewayConfig.model_fields, "name"]
    body = _object(body, allowed, "the endpoint's AI gateway config")
    _same_name(body, name)
    # A null field is an absent one (proto-JSON); PUT replaces the whole block either way.
    return {k: v for k, v in body.items() if k != "name" and v is not None}


def notifications_body(body: Any, name: str) -> dict[str, Any] | None:
    """PATCH .../notifications: `{"email_notifications": {...}}` (absent or null: removed)."""
    body = _object(body, ("email_notifications", "name"), "`email_notifications`")
    _same_name(body, name)
    return body.get("email_notifications")


def telemetry_body(body: Any, name: str) -> dict[str, Any] | None:
    """PATCH .../telemetry-config: `{"telemetry_config": {...}}`; the platform: "If not
    provided, the telemetry configuration will be removed from the endpoint"."""
    body = _object(body, ("telemetry_config", "name"), "`telemetry_config`")
    _same_name(body, name)
    return body.get("telemetry_config")


def acl_body(body: Any) -> dict[str, Any]:
    """PUT/PATCH permissions: `{"access_control_list": [...]}` (`{}`: PUT removes them all)."""
    body = _object(body, ("access_control_list",), '`{"access_control_list": [...]}`')
    for i, entry in enumerate(_list(body, "access_control_list", item="entries")):
        _object(
            entry,
            _ACL_ENTRY_FIELDS,
            "one principal and a permission_level",
            where=f"access_control_list[{i}]",
        )
    return body


def secret_body(action: str, body: Any) -> dict[str, Any]:
    """POST secrets/<action>: only the fields that action reads."""
    fields = SECRET_FIELDS.get(action)
    if fields is None:
        return body if isinstance(body, dict) else {}
    body = _object(body, fields, f"secrets/{action}")
    if action == "put" and "string_value" in body and "bytes_value" in body:
        raise _invalid("set either `string_value` or `bytes_value`, not both")
    backend = body.get("scope_backend_type", "DATABRICKS")
    if action == "scopes/create" and (backend != "DATABRICKS" or "backend_azure_keyvault" in body):
        raise _invalid("only DATABRICKS-backed scopes are supported (`scope_backend_type`)")
    return body
