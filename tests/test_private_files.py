"""The state and usage databases (and SQLite's -wal/-shm files beside them) are created 0600
in a folder created 0700, whatever the umask lets others read; existing files keep their mode."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from engine_harness import run_cli

from engine.gateway._usage import UsageRecord, UsageRecorder, read_usage
from engine.state import open_state


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that lets everyone read new files, as many machines have."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_state_is_private(tmp_path: Path, open_umask: None) -> None:
    state = tmp_path / "new" / "state.db"
    store = open_state(state)
    try:
        store.heartbeat("h", pid=1, hostname="x", address="")  # a write: -wal and -shm exist
        files = sorted(p.name for p in state.parent.iterdir())
        assert files == ["state.db", "state.db-shm", "state.db-wal"]
        for name in files:
            assert mode(state.parent / name) == 0o600, name
    finally:
        store.close()
    assert mode(state.parent) == 0o700


def test_a_new_usage_db_is_private(tmp_path: Path, open_umask: None) -> None:
    usage = tmp_path / "state" / "usage.db"
    recorder = UsageRecorder(usage)
    recorder.start()
    recorder.record(UsageRecord(1, "chat", "m", "alice@example.com", 200, 1.0, 3, 4))
    recorder.flush()
    try:
        wal = usage.with_name("usage.db-wal")
        assert wal.exists()
        assert mode(usage) == 0o600 and mode(wal) == 0o600
        assert mode(usage.parent) == 0o700
    finally:
        recorder.close()
    assert [r.principal for r in read_usage(usage)] == ["alice@example.com"]


def test_the_cli_creates_the_state_private(tmp_path: Path) -> None:
    state = tmp_path / "engine" / "state.db"
    result = run_cli("tokens", "create", "--admin", "--state", str(state))
    assert result.returncode == 0, result.stderr
    assert mode(state) == 0o600 and mode(state.parent) == 0o700


def test_existing_files_and_folders_keep_their_mode(tmp_path: Path, open_umask: None) -> None:
    # A team that shares its state on purpose: its choice, not changed behind its back.
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o750)
    os.chmod(folder, 0o750)
    state = folder / "state.db"
    open_state(state).close()
    os.chmod(state, 0o640)
    store = open_state(state)
    try:
        store.heartbeat("h", pid=1, hostname="x", address="")
        assert mode(state) == 0o640
        assert mode(state.with_name("state.db-wal")) == 0o640  # SQLite copies the db's mode
    finally:
        store.close()
    assert mode(folder) == 0o750
