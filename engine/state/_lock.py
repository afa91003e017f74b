"""The state lock: who holds it, for what, and whether the holder is still alive."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from schemas import pid_alive

__all__ = ["LockHeld", "LockInfo", "holder_is_alive", "this_host"]

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

    def describe(self) -> str:
        return (
            f"lock {self.id} held by {self.holder} (pid {self.pid} on {self.host}) "
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
