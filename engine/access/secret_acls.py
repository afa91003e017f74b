"""Secret scope ACLs: READ < WRITE < MANAGE per principal per scope, in the platform's shape.

An entry's `principal` is one name, as on the platform: a user name, a service principal's
application id, or a group name (`users` is every authenticated caller). The highest entry that
matches the caller counts. Admins hold MANAGE on every scope; nobody holds anything on the
engine's own scope (`engine-managed`, its copies of `*_plaintext` values).

| needs  | to                                                                       |
|--------|--------------------------------------------------------------------------|
| READ   | list a scope's secret keys; reference `{{secrets/scope/...}}` in a spec  |
| WRITE  | put and delete secrets                                                   |
| MANAGE | delete the scope; read and change its ACLs                               |

Endpoints resolve their secrets as their creator (as the platform does): `CreatorAccess`
rebuilds that principal from the state (an operator of the state files is an admin).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from engine.access.tokens import Principal
from engine.asgi import ApiError
from engine.state import DirectoryStore, EndpointRow
from providers import SecretUnavailable
from schemas import MANAGED_SCOPE, parse_secret_reference

__all__ = [
    "CreatorAccess",
    "OPERATOR",
    "SCOPE_PERMISSIONS",
    "operator_principal",
    "require_scope",
    "resolver_as_creator",
    "scope_permission",
    "secret_use_denial",
]

SCOPE_PERMISSIONS = ("READ", "WRITE", "MANAGE")
# The kind of principal that runs the CLI on the state files without a token.
OPERATOR = "operator"

Acl = Iterable[tuple[str, str]]


def operator_principal(name: str) -> Principal:
    """Whoever can open the state files directly: an admin of this state."""
    return Principal(name=name, kind=OPERATOR, admin=True)


def scope_permission(entries: Acl, principal: Principal, scope: str) -> str | None:
    """The highest permission the principal holds on `scope` (None: no access)."""
    if scope == MANAGED_SCOPE:
        return None
    if principal.admin:
        return "MANAGE"
    names = principal.groups | {"users", principal.name}
    best = -1
    for name, permission in entries:
        if name in names and permission in SCOPE_PERMISSIONS:
            best = max(best, SCOPE_PERMISSIONS.index(permission))
    return SCOPE_PERMISSIONS[best] if best >= 0 else None


def holds(entries: Acl, principal: Principal, scope: str, needed: str) -> bool:
    held = scope_permission(entries, principal, scope)
    return held is not None and SCOPE_PERMISSIONS.index(held) >= SCOPE_PERMISSIONS.index(needed)


def require_scope(
    store: DirectoryStore, principal: Principal, scope: str, needed: str, what: str
) -> None:
    """403 PERMISSION_DENIED unless the principal holds `needed` on `scope`."""
    if scope == MANAGED_SCOPE:
        raise ApiError(
            403,
            "PERMISSION_DENIED",
            f"secret scope {MANAGED_SCOPE!r} is the engine's own: nobody may {what}",
        )
    if not holds(store.secret_acls(scope), principal, scope, needed):
        raise ApiError(
            403,
            "PERMISSION_DENIED",
            f"{needed} on secret scope {scope!r} is required to {what}",
        )


def secret_use_denial(acls: Mapping[str, Acl], principal: Principal, scope: str) -> str | None:
    """Why `principal` may not put a reference to `scope` in a spec (None: it may)."""
    if scope == MANAGED_SCOPE:
        return (
            f"secret scope {MANAGED_SCOPE!r} holds the engine's own copies of *_plaintext "
            "values: no spec may reference it"
        )
    if holds(acls.get(scope, ()), principal, scope, "READ"):
        return None
    return f"{principal.name} has no READ on secret scope {scope!r}"


def principal_named(tokens: Iterable[Mapping[str, object]], name: str, kind: str) -> Principal:
    groups: set[str] = set()
    admin = False
    for token in tokens:
        if token["principal"] == name and token["kind"] == kind:
            groups.update(token["groups"])  # type: ignore[call-overload]
            admin = admin or bool(token["admin"])
    return Principal(name=name, groups=frozenset(groups), kind=kind, admin=admin)


class CreatorAccess:
    """Whether endpoints' creators may read the scopes their configs reference, from one read
    of the ACLs and tokens (the serving host rebuilds it whenever the state changes)."""

    def __init__(
        self, acls: Mapping[str, list[tuple[str, str]]], tokens: list[dict[str, object]]
    ) -> None:
        self._acls = acls
        self._tokens = tokens
        self._principals: dict[tuple[str, str], Principal] = {}

    @classmethod
    def load(cls, store: DirectoryStore) -> CreatorAccess:
        return cls(store.all_secret_acls(), store.list_tokens())

    def principal(self, row: EndpointRow) -> Principal:
        key = (row.creator, row.creator_kind)
        if key not in self._principals:
            self._principals[key] = (
                operator_principal(row.creator)
                if row.creator_kind == OPERATOR
                else principal_named(self._tokens, row.creator, row.creator_kind)
            )
        return self._principals[key]

    def denial(self, row: EndpointRow, scope: str) -> str | None:
        """Why the endpoint may not resolve secrets of `scope` (None: it may)."""
        if scope == MANAGED_SCOPE:
            # The engine's copies of this endpoint's own `*_plaintext` values (no spec may
            # reference the scope: only the engine writes such references).
            return None
        reason = secret_use_denial(self._acls, self.principal(row), scope)
        if reason is None:
            return None
        return f"the endpoint's secrets resolve as its creator, and {reason}"


def resolver_as_creator(
    store: DirectoryStore, row: EndpointRow | None, resolve: Callable[[str], str]
) -> Callable[[str], str]:
    """`resolve`, refusing (SecretUnavailable) references the endpoint's creator may not read:
    what starts a runner or an adapter uses it, so a revoked READ takes effect there."""
    access = CreatorAccess.load(store)

    def resolve_as_creator(reference: str) -> str:
        parsed = parse_secret_reference(reference)
        if parsed is not None and row is not None:
            reason = access.denial(row, parsed[0])
            if reason is not None:
                raise SecretUnavailable(reference, reason)
        return resolve(reference)

    return resolve_as_creator
