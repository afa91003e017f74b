"""The state store's interface: what a second implementation (PostgreSQL) must offer.

Two parts with different lives. The **core** is the one truth that plans and applies read and
write under the lock: endpoints, their config versions and history, served entity instances,
the lock and the serial. The **directory** is who and what is around: tokens, serving hosts,
endpoint permissions, catalog models; it changes without plans (every write still bumps the
serial, so the serving host's table refresh sees it). `StateStore` is both, as the SQLite store
implements them on one file; callers that need only one part are typed against that part.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from engine.state._lock import DEFAULT_LEASE_MS, WHOLE_STATE, LockInfo
from engine.state._records import EndpointRow, EntityRow, HistoryRow
from engine.state.location import StateLocation
from plans import StateSnapshot

__all__ = ["CoreStore", "DirectoryStore", "Permission", "StateStore"]

# (principal kind, principal name, level), e.g. ("group", "users", "CAN_QUERY").
Permission = tuple[str, str, str]


@runtime_checkable
class CoreStore(Protocol):
    """Endpoints, config versions, entities, history, the lock and the serial."""

    # Where the state is; `location.local_dir` holds this machine's files (runner folders).
    location: StateLocation

    def close(self) -> None: ...

    @property
    def lineage(self) -> str: ...

    @property
    def serial(self) -> int:
        """Bumped by every write; readers compare it to know whether anything changed."""
        ...

    def snapshot(self, *, lock_id: str | None = None) -> StateSnapshot:
        """What plans read. `lock_id`: the caller's own lock, which does not make the updates
        of the endpoints it covers look live (they are the caller's to resume)."""
        ...

    def get_endpoint(self, name: str) -> EndpointRow | None: ...

    def get_endpoint_by_id(self, endpoint_id: str) -> EndpointRow | None: ...

    def list_endpoints(self) -> list[EndpointRow]: ...

    def entities(self, endpoint: str | None = None, role: str | None = None) -> list[EntityRow]: ...

    def history(self, endpoint: str) -> list[HistoryRow]: ...

    def serving_view(self) -> tuple[int, list[tuple[EndpointRow, list[EntityRow]]]]:
        """The serial and every endpoint with its entities, read in one transaction."""
        ...

    # -- locks: per endpoint name, or WHOLE_STATE ----------------------------------------------

    def locks(self) -> list[LockInfo]:
        """Every lock held (live or left by a dead holder), one LockInfo per lock id."""
        ...

    def acquire_lock(
        self,
        operation: str,
        *,
        holder: str,
        keys: Sequence[str] = (WHOLE_STATE,),
        timeout: float = 0.0,
        lease_ms: int = DEFAULT_LEASE_MS,
    ) -> LockInfo:
        """Take every key or none, atomically (a dead holder's lock is taken over); raise
        LockHeld with the blocking lock after `timeout` s. WHOLE_STATE conflicts with every
        key; the keys of different endpoints never conflict."""
        ...

    def renew_lock(self, lock_id: str, lease_ms: int = DEFAULT_LEASE_MS) -> None: ...

    def release_lock(self, lock_id: str) -> None: ...

    def force_unlock(self, lock_id: str) -> LockInfo: ...

    # -- config updates (each call one durable transaction) ----------------------------------

    def begin_update(
        self,
        name: str,
        *,
        stack: str | None,
        desired: dict[str, Any],
        version: int,
        actor: str,
        actor_kind: str = "operator",
    ) -> EndpointRow: ...

    def add_entity(
        self,
        endpoint: str,
        *,
        name: str,
        fingerprint: str,
        config: dict[str, Any],
        config_version: int,
        role: str = "pending",
    ) -> int: ...

    def update_entity(
        self,
        entity_id: int,
        *,
        deployment: str | None = None,
        message: str | None = None,
        handle: dict[str, Any] | None = None,
    ) -> None: ...

    def delete_entity(self, entity_id: int) -> None: ...

    def activate(
        self, name: str, *, keep: list[int], actor: str, summary: dict[str, Any]
    ) -> list[EntityRow]:
        """Make the pending config active; returns the entities only the old config used."""
        ...

    def fail_update(self, name: str, message: str, *, actor: str) -> None: ...

    def request_cancel(self, name: str, *, actor: str) -> int | None:
        """Ask the update in progress to stop; its pending version, or None if none runs."""
        ...

    def cancel_requested(self, name: str) -> bool:
        """Whether a cancel was asked for since the endpoint's latest update began."""
        ...

    def cancel_update(self, name: str, message: str, *, actor: str) -> None:
        """UPDATE_CANCELED: the pending config dropped, the old one keeps serving."""
        ...

    def clear_interrupted(self, name: str, *, actor: str) -> None: ...

    def update_in_place(
        self, name: str, *, desired: dict[str, Any], actor: str, summary: dict[str, Any]
    ) -> None: ...

    def mark_deleting(self, name: str, *, actor: str) -> list[EntityRow]: ...

    def delete_endpoint(self, name: str, *, actor: str) -> None: ...

    def set_stack(self, name: str, stack: str | None) -> None: ...


@runtime_checkable
class DirectoryStore(Protocol):
    """Tokens, serving hosts, endpoint permissions, secret scope ACLs and catalog models."""

    def all_permissions(self) -> dict[str, list[Permission]]: ...

    def permissions(self, endpoint_id: str) -> list[Permission]: ...

    def set_permissions(
        self, endpoint_id: str, entries: list[Permission], *, replace: bool
    ) -> None: ...

    # Secret scope ACLs: (principal, permission) per scope; permission READ, WRITE or MANAGE.
    def all_secret_acls(self) -> dict[str, list[tuple[str, str]]]: ...

    def secret_acls(self, scope: str) -> list[tuple[str, str]]: ...

    def put_secret_acl(self, scope: str, principal: str, permission: str) -> None: ...

    def delete_secret_acl(self, scope: str, principal: str) -> bool: ...

    def reset_secret_acls(self, scope: str, entries: list[tuple[str, str]]) -> None: ...

    def put_model(self, record: dict[str, Any]) -> None: ...

    def models(self) -> list[dict[str, Any]]: ...

    def add_token(
        self,
        *,
        token_hash: str,
        principal: str,
        groups: list[str],
        kind: str = "user",
        admin: bool = False,
        comment: str = "",
    ) -> str: ...

    def list_tokens(self) -> list[dict[str, Any]]: ...

    def delete_token(self, token_id: str) -> bool: ...

    def heartbeat(
        self,
        host_id: str,
        *,
        pid: int,
        hostname: str,
        address: str,
        report: dict[str, Any] | None = None,
    ) -> None: ...

    def join_host(
        self,
        host_id: str,
        *,
        pid: int,
        hostname: str,
        address: str,
        limits: str = "",
        peer_hash: str = "",
        alive: Callable[[dict[str, Any]], bool],
        admit: Callable[[list[dict[str, Any]]], bool] = ...,
    ) -> list[dict[str, Any]]:
        """Atomically: drop dead hosts' records, record this one if `admit` accepts the live
        others, and return those."""
        ...

    def claim_runner_role(
        self, host_id: str, *, alive: Callable[[dict[str, Any]], bool]
    ) -> bool: ...

    def hosts(self) -> list[dict[str, Any]]: ...

    def remove_host(self, host_id: str) -> None: ...

    # Serving UI sessions (engine/state/_ui_sessions.py): untracked, as the hosts are.
    def put_ui_session(
        self, id_hash: str, *, sealed_token: str, now_ms: int, idle_before_ms: int, keep: int
    ) -> None: ...

    def ui_session(self, id_hash: str) -> dict[str, Any] | None: ...

    def touch_ui_session(self, id_hash: str, now_ms: int) -> None: ...

    def delete_ui_session(self, id_hash: str) -> None: ...


@runtime_checkable
class StateStore(CoreStore, DirectoryStore, Protocol):
    """The whole state: what `open_state` returns."""
