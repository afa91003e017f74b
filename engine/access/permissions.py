"""Endpoint permissions: CAN_VIEW (read) < CAN_QUERY (invoke) < CAN_MANAGE (change).

ACL entries name a `user_name`, `group_name` or `service_principal_name`. Every authenticated
caller is in the group `users`; admins (tokens created with `--admin`) may do everything.
"""

from __future__ import annotations

from typing import Any

from engine.access.tokens import Principal
from engine.asgi import ApiError
from engine.state import DirectoryStore

__all__ = [
    "LEVELS",
    "level_in",
    "level_of",
    "require",
    "acl_json",
    "parse_acl",
    "LEVEL_DESCRIPTIONS",
]

LEVELS = ("CAN_VIEW", "CAN_QUERY", "CAN_MANAGE")
LEVEL_DESCRIPTIONS = {
    "CAN_VIEW": "Can view the endpoint",
    "CAN_QUERY": "Can view and query the endpoint",
    "CAN_MANAGE": "Can view, query, change and delete the endpoint, and manage its permissions",
}
_PRINCIPAL_FIELDS = ("user_name", "group_name", "service_principal_name")


def level_of(store: DirectoryStore, principal: Principal, endpoint_id: str) -> str | None:
    if principal.admin:
        return "CAN_MANAGE"
    return level_in(store.permissions(endpoint_id), principal)


def level_in(entries: list[tuple[str, str, str]], principal: Principal) -> str | None:
    """The highest level any entry grants the principal (None: no access)."""
    if principal.admin:
        return "CAN_MANAGE"
    groups = principal.groups | {"users"}
    best = -1
    for kind, name, level in entries:
        matches = (
            kind == "group_name"
            and name in groups
            or kind == "user_name"
            and principal.kind == "user"
            and name == principal.name
            or kind == "service_principal_name"
            and principal.kind == "service_principal"
            and name == principal.name
        )
        if matches and level in LEVELS:
            best = max(best, LEVELS.index(level))
    return LEVELS[best] if best >= 0 else None


def require(level: str | None, needed: str, what: str) -> None:
    if level is None or LEVELS.index(level) < LEVELS.index(needed):
        raise ApiError(403, "PERMISSION_DENIED", f"{needed} is required to {what}")


def acl_json(store: DirectoryStore, endpoint_id: str) -> dict[str, Any]:
    return {
        "object_id": f"/serving-endpoints/{endpoint_id}",
        "object_type": "serving-endpoint",
        "access_control_list": [
            {kind: name, "all_permissions": [{"permission_level": level, "inherited": False}]}
            for kind, name, level in store.permissions(endpoint_id)
        ],
    }


def parse_acl(body: Any) -> list[tuple[str, str, str]]:
    if not isinstance(body, dict) or not isinstance(body.get("access_control_list", []), list):
        raise ApiError(
            400, "INVALID_PARAMETER_VALUE", "`access_control_list` must be a list of entries"
        )
    entries = []
    for i, item in enumerate(body.get("access_control_list", [])):
        if not isinstance(item, dict):
            raise ApiError(
                400, "INVALID_PARAMETER_VALUE", f"access_control_list[{i}]: not an object"
            )
        named = [f for f in _PRINCIPAL_FIELDS if isinstance(item.get(f), str) and item.get(f)]
        if len(named) != 1:
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"access_control_list[{i}]: give exactly one of {', '.join(_PRINCIPAL_FIELDS)}",
            )
        level = item.get("permission_level")
        if level not in LEVELS:
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"access_control_list[{i}].permission_level must be one of {', '.join(LEVELS)}",
            )
        entries.append((named[0], item[named[0]], level))
    return entries
