"""One serving host per state: `engine serve` and `engine up` refuse to start beside a live one.

Two hosts on one state would both own its runners (each restarting the other's) and double
every in-process limit (rate limits are counted per process), so until several replicas are
made correct a host claims the state before it serves:

| another host's record   | counts as alive while                                       |
|-------------------------|-------------------------------------------------------------|
| on this machine         | its process runs (as the state lock's holder: a SIGKILLed   |
|                         | host never blocks the next one)                              |
| on another machine      | its heartbeat is younger than HEARTBEAT_FRESH_MS            |

The check and the record are one state transaction (`claim_host`), so two hosts starting at
the same moment cannot both win. Dead hosts' records are removed by the claim.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

from engine.state import DirectoryStore
from schemas import now_ms, pid_alive

__all__ = ["HEARTBEAT_FRESH_MS", "HostConflict", "claim_state", "host_alive", "new_host_id"]

# A host on another machine counts as alive while its heartbeat (every 2 s) is this recent.
HEARTBEAT_FRESH_MS = 10_000


class HostConflict(Exception):
    """Another serving host lives on this state."""

    def __init__(self, other: dict[str, Any]) -> None:
        where = other["address"] or f"pid {other['pid']} on {other['hostname']}"
        self.message = (
            f"a serving host is already running on this state ({where}): apply through it "
            "(`engine apply`, or its REST API), or stop it first"
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


def claim_state(store: DirectoryStore, host_id: str, *, address: str) -> None:
    """Record this process as the state's serving host, or raise HostConflict."""
    now = now_ms()
    other = store.claim_host(
        host_id,
        pid=os.getpid(),
        hostname=socket.gethostname(),
        address=address,
        alive=lambda record: host_alive(record, now),
    )
    if other is not None:
        raise HostConflict(other)
