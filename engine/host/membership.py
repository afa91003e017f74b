"""The serving hosts (replicas) of one state: who may join, and which one runs the runners.

Every replica serves every endpoint from the shared state. Two things must not be doubled:

- **Rate limits.** Every replica counts them the same way (`--limits`). A host that counts in
  its own process (`single`, the default) joins no other host and no host joins it: N of them
  would admit N x the limit. Replicas share a Redis (`--limits redis://...`, exact across them)
  or say explicitly that each counts alone (`--limits per-replica`).
- **Runners.** One host holds the runner role: it starts, restarts and stops the self-hosted
  runners (reconciler, scale to zero, autoscaling, applies that start a runner). The others
  route to the runner addresses recorded in the state and hand it the changes that start one.
  When it dies another takes the role over (`claim_runner_role` on every heartbeat).

| another host's record   | counts as alive while                                       |
|-------------------------|-------------------------------------------------------------|
| on this machine         | its process runs (a SIGKILLed host never blocks the next)   |
| on another machine      | its heartbeat is younger than HEARTBEAT_FRESH_MS            |

The check and the record are one state transaction (`join_host`), so two hosts starting at the
same moment cannot both win; dead hosts' records are removed by it.
"""

from __future__ import annotations

import hashlib
import os
import socket
import uuid
from typing import Any

from engine.state import DirectoryStore
from schemas import now_ms, pid_alive

__all__ = [
    "HEARTBEAT_FRESH_MS",
    "PER_REPLICA",
    "SINGLE",
    "HostConflict",
    "host_alive",
    "join_state",
    "limits_mode",
    "new_host_id",
]

# A host on another machine counts as alive while its heartbeat (every 2 s) is this recent.
HEARTBEAT_FRESH_MS = 10_000

# `--limits per-replica`: several replicas, each counting rate limits in its own process.
PER_REPLICA = "per-replica"
# No `--limits`: this host counts alone, so it must be the only one.
SINGLE = "single"


def limits_mode(limits: str | None) -> str:
    """How a host counts rate limits, as recorded for the others to compare (a Redis URL may
    carry a password: only its hash is recorded)."""
    if not limits:
        return SINGLE
    if limits == PER_REPLICA:
        return PER_REPLICA
    return "redis:" + hashlib.sha256(limits.encode()).hexdigest()[:16]


def _describe(mode: str) -> str:
    if mode == SINGLE or not mode:
        return "counts rate limits in its own process"
    if mode == PER_REPLICA:
        return "counts rate limits per replica (--limits per-replica)"
    return "counts rate limits in a Redis given by another --limits URL"


class HostConflict(Exception):
    """This host may not join the serving hosts of the state."""

    def __init__(self, other: dict[str, Any], mode: str) -> None:
        where = other["address"] or f"pid {other['pid']} on {other['hostname']}"
        if SINGLE in (mode, other.get("limits") or SINGLE):
            self.message = (
                f"a serving host is already running on this state ({where}): apply through it "
                "(`engine apply`, or its REST API), or stop it first; to run several replicas, "
                "start every one with the same --limits (redis://... counts rate limits exactly "
                "across them; per-replica lets each count alone)"
            )
        else:
            self.message = (
                f"a serving host on this state ({where}) {_describe(other['limits'])}, and this "
                f"one {_describe(mode)}: start every replica with the same --limits"
            )
        super().__init__(self.message)


def new_host_id() -> str:
    return uuid.uuid4().hex[:12]


def host_alive(record: dict[str, Any], now: int) -> bool:
    """Whether the host of a `hosts` record still runs (see the table above)."""
    if record["hostname"] == socket.gethostname():
        # A record of this very process under another id is a host it no longer runs.
        return int(record["pid"]) != os.getpid() and pid_alive(int(record["pid"]))
    return now - int(record["last_seen_ms"]) < HEARTBEAT_FRESH_MS


def alive_now() -> Any:
    """`host_alive` as of now, for the store's callbacks."""
    now = now_ms()
    return lambda record: host_alive(record, now)


def join_state(
    store: DirectoryStore,
    host_id: str,
    *,
    address: str,
    limits: str = SINGLE,
    peer_hash: str = "",
) -> list[dict[str, Any]]:
    """Record this process as a serving host of the state; returns the other live hosts.
    Raises HostConflict when the rate-limit modes disagree (see the module docstring)."""
    clash: list[dict[str, Any]] = []

    def admit(live: list[dict[str, Any]]) -> bool:
        clash[:] = [r for r in live if limits == SINGLE or (r.get("limits") or SINGLE) != limits]
        return not clash

    live = store.join_host(
        host_id,
        pid=os.getpid(),
        hostname=socket.gethostname(),
        address=address,
        limits=limits,
        peer_hash=peer_hash,
        alive=alive_now(),
        admit=admit,
    )
    if clash:
        raise HostConflict(clash[0], limits)
    return live
