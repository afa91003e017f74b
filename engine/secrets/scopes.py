"""Secret scopes, secrets and scope ACLs as one principal may use them: the checks that the
REST API (`/api/2.0/secrets/...`) and `engine secrets` share.

| call                | needs                 | arguments                                     |
|---------------------|-----------------------|-----------------------------------------------|
| scopes/create       | any caller            | scope, initial_manage_principal (`users`)     |
| scopes/delete       | MANAGE                | scope                                         |
| scopes/list         | (lists what it holds) |                                               |
| put / delete        | WRITE                 | scope, key, string_value / bytes_value        |
| list                | READ                  | scope                                         |
| acls/put            | MANAGE                | scope, principal, permission                  |
| acls/delete         | MANAGE                | scope, principal                              |
| acls/get, acls/list | MANAGE                | scope (, principal)                           |

The permission is checked before the scope is looked up, so a caller without access gets the
same 403 for a scope that exists and one that does not. Values are never readable here.
Failures raise `ApiError` (the platform's error code and status) or `SecretStoreError`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from engine.access.secret_acls import (
    OPERATOR,
    SCOPE_PERMISSIONS,
    require_scope,
    scope_permission,
)
from engine.access.tokens import Principal
from engine.asgi import ApiError
from engine.secrets.store import SecretStore
from engine.state import DirectoryStore
from schemas import MANAGED_SCOPE, SECRET_NAME

__all__ = ["SCOPE_CALLS", "ScopeCall", "scope_call"]

_MAX_PRINCIPAL = 256


class ScopeCall:
    """One request: who asks, with what arguments, against which stores."""

    def __init__(
        self,
        store: DirectoryStore,
        secrets: SecretStore,
        principal: Principal,
        args: dict[str, Any],
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.principal = principal
        self.args = args

    def field(self, name: str) -> str:
        value = self.args.get(name)
        if not isinstance(value, str) or not value:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"`{name}` is required")
        return value

    def scope(self, needed: str, what: str) -> str:
        """The request's scope, once the caller is known to hold `needed` on it."""
        name = self.field("scope")
        if SECRET_NAME.fullmatch(name) is None:
            # Before the permission check: a malformed name is a 400 for everyone.
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                "`scope` must be 1-128 characters from A-Z a-z 0-9 _ . -",
            )
        require_scope(self.store, self.principal, name, needed, what)
        return name

    def principal_field(self) -> str:
        name = self.field("principal")
        if len(name) > _MAX_PRINCIPAL or not name.isprintable() or name != name.strip():
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"`principal` must be a user, service principal or group name of at most "
                f"{_MAX_PRINCIPAL} printable characters, without surrounding spaces",
            )
        return name


def _create_scope(call: ScopeCall) -> dict[str, Any]:
    name = call.field("scope")
    initial = call.args.get("initial_manage_principal")
    if initial is not None and initial != "users":
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            "`initial_manage_principal` may only be `users` (every user then holds MANAGE); "
            "leave it out to hold MANAGE yourself",
        )
    if name == MANAGED_SCOPE:
        require_scope(call.store, call.principal, name, "MANAGE", "create a scope named so")
    call.secrets.create_scope(name)
    # The operator of the state files is an admin already: its scopes start with no entry.
    creator = None if call.principal.kind == OPERATOR else call.principal.name
    manager = initial or creator
    # Only after the create succeeded: a name that exists keeps its own ACL. A new scope
    # starts from this entry alone, never from a deleted namesake's entries.
    call.store.reset_secret_acls(name, [(manager, "MANAGE")] if manager else [])
    return {}


def _delete_scope(call: ScopeCall) -> dict[str, Any]:
    name = call.scope("MANAGE", "delete the scope")
    call.secrets.delete_scope(name)
    call.store.reset_secret_acls(name, [])
    return {}


def _list_scopes(call: ScopeCall) -> dict[str, Any]:
    acls = call.store.all_secret_acls()
    scopes = [
        s
        for s in call.secrets.list_scopes()
        if scope_permission(acls.get(s.name, ()), call.principal, s.name) is not None
    ]
    return {"scopes": [s.to_json() for s in scopes]}


def _put_secret(call: ScopeCall) -> dict[str, Any]:
    name = call.scope("WRITE", "put secrets")
    call.secrets.put_secret(name, call.field("key"), _value(call.args))
    return {}


def _delete_secret(call: ScopeCall) -> dict[str, Any]:
    name = call.scope("WRITE", "delete secrets")
    call.secrets.delete_secret(name, call.field("key"))
    return {}


def _list_secrets(call: ScopeCall) -> dict[str, Any]:
    name = call.scope("READ", "list secrets")
    return {"secrets": [s.to_json() for s in call.secrets.list_secrets(name)]}


def _put_acl(call: ScopeCall) -> dict[str, Any]:
    name = call.scope("MANAGE", "change the ACL")
    principal = call.principal_field()
    permission = call.args.get("permission")
    if permission not in SCOPE_PERMISSIONS:
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            f"`permission` must be one of {', '.join(SCOPE_PERMISSIONS)}",
        )
    _existing(call, name)
    call.store.put_secret_acl(name, principal, permission)
    return {}


def _delete_acl(call: ScopeCall) -> dict[str, Any]:
    name = call.scope("MANAGE", "change the ACL")
    principal = call.principal_field()
    _existing(call, name)
    if not call.store.delete_secret_acl(name, principal):
        raise _no_entry(name, principal)
    return {}


def _get_acl(call: ScopeCall) -> dict[str, Any]:
    name = call.scope("MANAGE", "read the ACL")
    principal = call.principal_field()
    _existing(call, name)
    for who, permission in call.store.secret_acls(name):
        if who == principal:
            return {"principal": who, "permission": permission}
    raise _no_entry(name, principal)


def _list_acls(call: ScopeCall) -> dict[str, Any]:
    name = call.scope("MANAGE", "read the ACL")
    _existing(call, name)
    items = [{"principal": p, "permission": perm} for p, perm in call.store.secret_acls(name)]
    return {"items": items}


def _existing(call: ScopeCall, scope: str) -> None:
    if not call.secrets.has_scope(scope):
        raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"secret scope {scope!r} does not exist")


def _no_entry(scope: str, principal: str) -> ApiError:
    return ApiError(
        404, "RESOURCE_DOES_NOT_EXIST", f"secret scope {scope!r} has no entry for {principal!r}"
    )


def _value(body: dict[str, Any]) -> str:
    value = body.get("string_value")
    if isinstance(value, str):
        return value
    if not isinstance(body.get("bytes_value"), str):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "`string_value` is required")
    try:
        raw = base64.b64decode(body["bytes_value"], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "`bytes_value` is not base64") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # The store holds text: replacing bytes would store another secret.
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "`bytes_value` must be UTF-8 text") from None


SCOPE_CALLS: dict[str, Callable[[ScopeCall], dict[str, Any]]] = {
    "scopes/create": _create_scope,
    "scopes/delete": _delete_scope,
    "scopes/list": _list_scopes,
    "put": _put_secret,
    "delete": _delete_secret,
    "list": _list_secrets,
    "acls/put": _put_acl,
    "acls/delete": _delete_acl,
    "acls/get": _get_acl,
    "acls/list": _list_acls,
}


def scope_call(
    action: str,
    store: DirectoryStore,
    secrets: SecretStore,
    principal: Principal,
    args: dict[str, Any],
) -> dict[str, Any]:
    """Carry out one call (`action` as in the REST path) as `principal`; its JSON answer."""
    return SCOPE_CALLS[action](ScopeCall(store, secrets, principal, args))
