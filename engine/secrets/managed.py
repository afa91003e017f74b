"""`*_plaintext` values from specs, moved into the secret store at apply time.

Each value is stored under scope `engine-managed` with a key that includes a short keyed hash
of the value, so an update writes a new key and the old config keeps reading the old value
until it stops serving. The state and entity configs then hold only the reference.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from engine.secrets.store import SecretStore, SecretStoreError
from plans import SENSITIVE, is_sensitive
from schemas import format_secret_reference

__all__ = ["MANAGED_SCOPE", "with_managed_references", "delete_unused_managed_secrets"]

MANAGED_SCOPE = "engine-managed"


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
            key = f"{endpoint}.{entity['name']}.{field}.{digest.rsplit(':', 1)[-1][:12]}"
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
    prefix = f"{endpoint}."
    for info in store.list_secrets(MANAGED_SCOPE):
        reference = format_secret_reference(MANAGED_SCOPE, info.key)
        if info.key.startswith(prefix) and reference not in in_use:
            # Deleted concurrently: the goal is reached either way.
            with contextlib.suppress(SecretStoreError):
                store.delete_secret(MANAGED_SCOPE, info.key)
