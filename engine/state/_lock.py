"""Locks on the state: who holds which keys, for what, and whether the holder is still alive.

A lock is a set of keys taken together (all or none): an endpoint's name for an update of that
endpoint, so updates of different endpoints run in parallel (the platform's rule is one update per
endpoint at a time), or WHOLE_STATE, which conflicts with every key. A stack apply takes the keys
of the endpoints it changes in one transaction, so two applies can never hold part of each other's
keys (no deadlock, no lock order to get wrong).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas import pid_alive

__all__ = [
    "RECONCILE_OP",
    "SCALE_TO_ZERO_OP",
    "WHOLE_STATE",
    "LockHeld",
    "LockInfo",
    "blocking_lock",
    "group_lock_rows",
    "holder_is_alive",
    "lock_keys",
    "no_such_lock",
    "this_host",
]

# The key that stands for every endpoint at once.
WHOLE_STATE = "*"
# The serving host's own short passes over one endpoint: an apply waits for them instead of
# failing with L1 (workflow.locked), as they end within seconds.
RECONCILE_OP = "reconcile"
SCALE_TO_ZERO_OP = "scale-to-zero"

# How long a lock holder may go without renewing before others may take the lock over.
DEFAULT_LEASE_MS = 15 * 60 * 1000


def this_host() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class LockInfo:
    id: str
    holder: str
    operation: str
    acquired_ms: int
    lease_expires_ms: int
    host: str
    pid: int
    # What it holds: endpoint names, or (WHOLE_STATE,).
    keys: tuple[str, ...] = (WHOLE_STATE,)

    def describe(self) -> str:
        what = "the whole state" if WHOLE_STATE in self.keys else ", ".join(self.keys)
        return (
            f"lock {self.id} on {what} held by {self.holder} (pid {self.pid} on {self.host}) "
            f"for {self.operation!r} since {self.acquired_ms // 1000}"
        )


class LockHeld(Exception):
    def __init__(self, info: LockInfo) -> None:
        super().__init__(info.describe())
        self.info = info


def holder_is_alive(info: LockInfo, now_ms: int) -> bool:
    """A holder on this host is alive while its process is; elsewhere, while its lease runs.

    A SIGKILLed apply leaves its lock behind; checking the pid lets the next apply take over
    (and recover) without a force-unlock, while a live holder is never overridden.
    """
    if info.host == this_host():
        return info.pid == os.getpid() or pid_alive(info.pid)
    return now_ms < info.lease_expires_ms


def lock_keys(keys: Iterable[str]) -> tuple[str, ...]:
    """The keys in the one order every store writes them; WHOLE_STATE alone absorbs the rest."""
    unique = sorted(set(keys))
    if not unique:
        raise ValueError("a lock needs at least one key")
    return (WHOLE_STATE,) if WHOLE_STATE in unique else tuple(unique)


def group_lock_rows(rows: Iterable[Sequence[object]]) -> list[LockInfo]:
    """Lock rows `(key, id, holder, operation, acquired_ms, lease_expires_ms, host, pid)` as
    one LockInfo per lock id, in acquisition order."""
    grouped: dict[str, tuple[list[str], tuple[object, ...]]] = {}
    for key, *rest in rows:
        keys, _ = grouped.setdefault(str(rest[0]), ([], tuple(rest)))
        keys.append(str(key))
    infos = [
        LockInfo(
            id=str(r[0]),
            holder=str(r[1]),
            operation=str(r[2]),
            acquired_ms=int(r[3]),  # type: ignore[call-overload]
            lease_expires_ms=int(r[4]),  # type: ignore[call-overload]
            host=str(r[5]),
            pid=int(r[6]),  # type: ignore[call-overload]
            keys=lock_keys(keys),
        )
        for keys, r in grouped.values()
    ]
    return sorted(infos, key=lambda i: (i.acquired_ms, i.id))


def blocking_lock(held: Iterable[LockInfo], keys: Sequence[str], now_ms: int) -> LockInfo | None:
    """The live lock (if any) that stops someone from taking `keys`; dead holders never block."""
    wanted = set(keys)
    for info in held:
        if not holder_is_alive(info, now_ms):
            continue
        if WHOLE_STATE in wanted or WHOLE_STATE in info.keys or wanted & set(info.keys):
            return info
    return None


def no_such_lock(lock_id: str, held: Sequence[LockInfo]) -> str:
    """force-unlock's message for an id that holds nothing: which locks there are instead."""
    if not held:
        return f"no lock with id {lock_id}; nothing is locked"
    return f"no lock with id {lock_id}; the locks are: " + "; ".join(i.describe() for i in held)
