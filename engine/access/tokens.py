"""Bearer tokens of the serving host: random, shown once, stored only as a SHA-256 hash.

A token maps to a principal (a user name/email or a service principal's application id), the
groups it belongs to (for `user_group` rate limits and permissions), and whether it is an
admin (may do everything; bootstraps a server).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from engine.state import DirectoryStore

__all__ = ["Principal", "TokenIndex", "create_token", "hash_token", "TOKEN_PREFIX"]

TOKEN_PREFIX = "dse_"


def hash_token(token: str) -> str:
    # Tokens are 256 random bits: a plain hash is enough, and it keeps lookups O(1).
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    groups: frozenset[str] = frozenset()
    kind: str = "user"  # or "service_principal"
    admin: bool = False


def create_token(
    store: DirectoryStore,
    principal: str,
    *,
    groups: list[str] | None = None,
    kind: str = "user",
    admin: bool = False,
    comment: str = "",
) -> tuple[str, str]:
    """(token id, token). The token is returned once and never stored."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_id = store.add_token(
        token_hash=hash_token(token),
        principal=principal,
        groups=sorted(set(groups or [])),
        kind=kind,
        admin=admin,
        comment=comment,
    )
    return token_id, token


class TokenIndex:
    """hash -> principal, rebuilt from the state when it changes."""

    def __init__(self, rows: list[dict[str, object]]) -> None:
        self._by_hash = {
            str(r["token_hash"]): Principal(
                name=str(r["principal"]),
                groups=frozenset(r["groups"]),  # type: ignore[arg-type]
                kind=str(r["kind"]),
                admin=bool(r["admin"]),
            )
            for r in rows
        }

    @classmethod
    def load(cls, store: DirectoryStore) -> TokenIndex:
        return cls(store.list_tokens())

    def principal_for(self, authorization: str | None) -> Principal | None:
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self._by_hash.get(hash_token(token.strip()))
