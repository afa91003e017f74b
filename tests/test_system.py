"""The one pid-liveness check and the one clock (schemas/_system.py), and the lock using them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from engine.state._lock import LockInfo, holder_is_alive, this_host
from schemas import now_ms, pid_alive, process_stat

linux_only = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")


def _wait_for(condition, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _lock_of(pid: int) -> LockInfo:
    return LockInfo("l", "holder", "apply", 0, lease_expires_ms=0, host=this_host(), pid=pid)


def test_now_ms_is_the_wall_clock_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    stamp = now_ms()
    assert isinstance(stamp, int) and before <= stamp <= time.time_ns() // 1_000_000


def test_pid_alive_for_running_exited_and_invalid_pids() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)
    # 0 and negative numbers name process groups to kill(): never a live holder.
    assert not pid_alive(0) and not pid_alive(-1)


@linux_only
def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        _wait_for(lambda: (process_stat(child.pid) or (None,))[0] == "Z", "the child to exit")
        assert not pid_alive(child.pid)
        assert not holder_is_alive(_lock_of(child.pid), now_ms())
    finally:
        child.wait()


@linux_only
def test_a_process_whose_name_holds_a_parenthesis_is_alive() -> None:
    # The name (field 2 of /proc/<pid>/stat) is free text: "x) Z" once read as a zombie, so
    # the lock of a live apply with such a name could be taken over by the next one.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "open('/proc/self/comm', 'w').write('x) Z')\n"
            "print('named', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "named\n"
        stat = process_stat(child.pid)
        assert stat is not None and stat.state != "Z"
        assert pid_alive(child.pid)
        assert holder_is_alive(_lock_of(child.pid), now_ms())
    finally:
        child.kill()
        child.wait()
