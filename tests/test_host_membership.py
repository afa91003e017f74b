"""One serving host per state: a second `engine serve` or `engine up` on the same state is
refused with one line while the first lives; a host that is gone (killed, or on another machine
whose heartbeat stopped) blocks nothing. Real processes on loopback."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from engine_harness import ROOT, TESTS, run_cli, write_specs
from serving_harness import ServerProcess, free_port

from engine.state import open_state


def _second_serve(state: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("serve", "--state", str(state), "--port", str(free_port()), timeout=240)


def _assert_refused(result: subprocess.CompletedProcess[str], where: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: a serving host is already running on this state ({where}): apply through it "
        "(`engine apply`, or its REST API), or stop it first; to run several replicas, start "
        "every one with the same --limits (redis://... counts rate limits exactly across them; "
        "per-replica lets each count alone)"
    ], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def _popen(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}"}
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _hosts(state: Path) -> list[dict[str, Any]]:
    store = open_state(state)
    try:
        return store.hosts()
    finally:
        store.close()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_second_serve_or_up_is_refused_while_a_serve_lives(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    with ServerProcess(state) as first:
        _assert_refused(_second_serve(state), first.url)
        specs = write_specs(tmp_path / "specs", [])
        up = run_cli("up", str(specs), "--state", str(state), "--port", str(free_port()))
        _assert_refused(up, first.url)
        assert _healthy(first.url)  # the refused ones did not disturb it
        (record,) = _hosts(state)
        assert record["address"] == first.url


def test_serve_is_refused_while_up_serves_and_starts_after_it(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    port = free_port()
    up = _popen(
        "up", str(write_specs(tmp_path / "specs", [])), "--state", str(state), "--port", str(port)
    )
    try:
        deadline = time.monotonic() + 60
        while not _healthy(f"http://127.0.0.1:{port}"):
            assert up.poll() is None, up.communicate()[0]
            assert time.monotonic() < deadline, "engine up did not start"
            time.sleep(0.1)
        _assert_refused(_second_serve(state), f"http://127.0.0.1:{port}")
    finally:
        up.send_signal(signal.SIGTERM)
        output = up.communicate(timeout=60)[0]
    assert up.returncode == 0, output
    with ServerProcess(state) as server:  # the state is free again
        assert _healthy(server.url)


def test_a_killed_host_does_not_block_the_next(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    killed = ServerProcess(state).__enter__()
    assert killed.process is not None
    killed.process.kill()  # SIGKILL: no shutdown, its record stays behind
    killed.process.wait()
    killed._log_file.close()
    assert [h["pid"] for h in _hosts(state)] == [killed.process.pid]
    with ServerProcess(state) as server:
        assert _healthy(server.url)
        (record,) = _hosts(state)  # the dead host's record was taken over
        assert record["address"] == server.url and record["pid"] == server.process.pid  # type: ignore[union-attr]


def test_a_host_on_another_machine_blocks_while_its_heartbeat_is_fresh(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    # The remote host beats while the second serve starts, as a live one does: on a loaded
    # machine that start can outlast HEARTBEAT_FRESH_MS, and one beat would go stale.
    beating = threading.Event()

    def beat() -> None:
        store = open_state(state)
        try:
            while True:
                store.heartbeat("remote", pid=os.getpid(), hostname="elsewhere.invalid", address="")
                beating.set()
                if stop.wait(1.0):
                    return
        finally:
            store.close()

    stop = threading.Event()
    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        assert beating.wait(30)
        _assert_refused(_second_serve(state), f"pid {os.getpid()} on elsewhere.invalid")
    finally:
        stop.set()
        beater.join(30)
    # Its heartbeat stops (the machine is gone): a minute later it no longer counts.
    with sqlite3.connect(state) as conn:
        conn.execute("UPDATE hosts SET last_seen_ms = last_seen_ms - 60000 WHERE id = 'remote'")
    with ServerProcess(state) as server:
        assert _healthy(server.url)


def test_two_serves_started_at_once_one_wins(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    open_state(state).close()
    ports = [free_port(), free_port()]
    both = [_popen("serve", "--state", str(state), "--port", str(p)) for p in ports]
    try:
        deadline = time.monotonic() + 240
        while all(p.poll() is None for p in both):
            assert time.monotonic() < deadline, "neither was refused"
            time.sleep(0.1)
        (loser,) = [p for p in both if p.poll() is not None]
        (winner,) = [p for p in both if p.poll() is None]
        output = loser.communicate(timeout=60)[0]
        assert loser.returncode == 1 and "already running on this state" in output, output
        url = f"http://127.0.0.1:{ports[both.index(winner)]}"
        while not _healthy(url):
            assert winner.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for process in both:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.communicate(timeout=30)


def test_the_peer_wake_route_refuses_anyone_but_a_replica(tmp_path: Path) -> None:
    """Only a replica holding its recorded peer key may ask the runner host to start a runner:
    no header, a forged key for the real host id, and an admin's bearer token are all 403."""
    from engine.access.tokens import create_token

    state = tmp_path / "state.db"
    store = open_state(state)
    _, admin = create_token(store, "admin@example.com", admin=True)
    store.close()
    with ServerProcess(state) as server:
        (record,) = _hosts(state)
        url = server.url + "/api/2.0/engine/peers/wake"
        body = {"instance_id": 1}
        attempts = [
            {},
            {"x-engine-peer": f"{record['id']}:forged-key"},
            {"x-engine-peer": f"{record['id']}:"},
            {"Authorization": f"Bearer {admin}"},
        ]
        for headers in attempts:
            answer = httpx.post(url, json=body, headers=headers, timeout=10)
            assert answer.status_code == 403, (headers, answer.text)
            assert answer.json()["error_code"] == "PERMISSION_DENIED"
        assert record["peer_hash"] and "forged-key" not in server.log.read_text()
