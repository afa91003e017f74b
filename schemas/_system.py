"""What every layer reads of the machine it runs on: the state's clock and process liveness.

One helper each, so the lock, the host check of `engine up` and the runner's pid files agree on
what "alive" means, and every stored timestamp comes from one clock. They hold no spec; they
live in schemas/ only because it is the one package every layer may import (providers/ must
not import engine/, and the engine and the runners both need them).

| helper              | answers                                                           |
|---------------------|-------------------------------------------------------------------|
| `now_ms()`          | wall-clock milliseconds since the epoch: the stamp of state rows, |
|                     | secrets, usage records and locks (durations and deadlines use     |
|                     | `time.monotonic()`, which no clock change moves)                  |
| `pid_alive(pid)`    | the process exists on this machine and has not exited (a zombie   |
|                     | has: only its parent's wait is missing)                           |
| `process_stat(pid)` | state, process group, session and start time from /proc, or None  |
"""

from __future__ import annotations

import os
import time
from typing import NamedTuple

__all__ = ["ProcessStat", "now_ms", "pid_alive", "process_stat"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ProcessStat(NamedTuple):
    state: str  # R, S, D, Z (zombie), T...
    pgid: int
    session: int
    # Clock ticks after boot: tells a process from a later one that reuses its pid.
    start_ticks: int


def process_stat(pid: int) -> ProcessStat | None:
    """The process's /proc/<pid>/stat fields, or None when it is gone (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return ProcessStat(fields[0], int(fields[2]), int(fields[3]), int(fields[19]))


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (not gone, not a zombie)."""
    if pid <= 0:  # 0 and negatives name process groups for kill(), never one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's process
    stat = process_stat(pid)
    # No /proc (macOS): kill() found it, and that is all there is to know.
    return stat is None or stat.state != "Z"
