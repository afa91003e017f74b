"""`*_plaintext` values from specs, moved into the secret store at apply time.

Each value is stored under scope `engine-managed` with a key that includes a short keyed hash
of the value, so an update writes a new key and the old config keeps reading the old value
until it stops serving. The state and entity configs then hold only the reference.

The key is `<endpoint>.<entity>.<field>.<hash>` when that is a valid secret key (at most 128
characters from `A-Za-z0-9_.-`). Otherwise (long names, a default entity name with `/` from a
model name) the entity and field are replaced by a digest of them, and an endpoint name too long
even for that by `.<digest>` (no endpoint name contains a dot, so no other endpoint's keys
start that way): any name the rules accept can be applied.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from typing import Any

from engine.secrets.store import NAME_PATTERN, SecretStore, SecretStoreError
from plans import SENSITIVE, is_sensitive
from schemas import MANAGED_SCOPE, format_secret_reference

__all__ = [
    "MANAGED_SCOPE",
    "delete_unused_managed_secrets",
    "managed_key",
    "with_managed_references",
]


def with_managed_references(
    endpoint: str,
    entity: dict[str, Any],
    plaintexts: Mapping[str, str],
    store: SecretStore,
) -> dict[str, Any]:
    """The entity config with every `$sensitive` replaced by a reference to a stored secret.

    `plaintexts` maps keyed hashes to values (collected when the specs were canonicalised);
    a hash that is already stored needs no plaintext, so re-applying works without it.
    """

    def walk(value: Any, field: str) -> Any:
        if is_sensitive(value):
            digest = value[SENSITIVE]
            key = managed_key(endpoint, entity["name"], field, digest.rsplit(":", 1)[-1][:12])
            if not store.has(MANAGED_SCOPE, key):
                if digest not in plaintexts:
                    raise KeyError(
                        f"the value of `{field}` of {endpoint}/{entity['name']} is not available; "
                        "apply from the spec files that hold it"
                    )
                if not store.has_scope(MANAGED_SCOPE):
                    store.create_scope(MANAGED_SCOPE)
                store.put_secret(MANAGED_SCOPE, key, plaintexts[digest])
            return format_secret_reference(MANAGED_SCOPE, key)
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, field) for v in value]
        return value

    return walk(entity, "")


def delete_unused_managed_secrets(store: SecretStore, endpoint: str, in_use: set[str]) -> None:
    """Remove this endpoint's managed secrets that no tracked entity references any more."""
    if not store.has_scope(MANAGED_SCOPE):
        return
    prefixes = (f"{endpoint}.", f"{_hashed_endpoint(endpoint)}.")
    for info in store.list_secrets(MANAGED_SCOPE):
        reference = format_secret_reference(MANAGED_SCOPE, info.key)
        if info.key.startswith(prefixes) and reference not in in_use:
            # Deleted concurrently: the goal is reached either way.
            with contextlib.suppress(SecretStoreError):
                store.delete_secret(MANAGED_SCOPE, info.key)


def managed_key(endpoint: str, entity: str, field: str, value_hash: str) -> str:
    """The secret key of one managed value; a valid key whatever the names' length."""
    key = f"{endpoint}.{entity}.{field}.{value_hash}"
    if NAME_PATTERN.fullmatch(key):
        return key
    tail = f"{_digest(f'{entity}.{field}', 24)}.{value_hash}"
    if NAME_PATTERN.fullmatch(f"{endpoint}.{tail}"):
        return f"{endpoint}.{tail}"
    return f"{_hashed_endpoint(endpoint)}.{tail}"


def _hashed_endpoint(endpoint: str) -> str:
    return f".{_digest(endpoint, 32)}"


def _digest(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]
