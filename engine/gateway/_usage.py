"""Usage records (`ai_gateway.usage_tracking_config.enabled`), written off the hot path.

Requests append to an in-memory list; a background thread flushes it to `usage.db` beside the
state every second (and on shutdown), so a request never waits for a disk write. The file says
who called what: it is created 0600, as the state is.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import astuple, dataclass
from pathlib import Path

from engine.state import create_private_file

__all__ = ["UsageRecord", "UsageRecorder", "read_usage"]


@dataclass(frozen=True, slots=True)
class UsageRecord:
    at_ms: int
    endpoint: str
    entity: str
    principal: str
    status: int
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int


_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    at_ms INTEGER NOT NULL, endpoint TEXT NOT NULL, entity TEXT NOT NULL,
    principal TEXT NOT NULL, status INTEGER NOT NULL, latency_ms REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL
)
"""


class UsageRecorder:
    def __init__(self, path: Path, interval: float = 1.0) -> None:
        self.path = path
        self._pending: list[UsageRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, name="usage-flush", daemon=True)

    def start(self) -> None:
        create_private_file(self.path)
        with sqlite3.connect(self.path) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(_SCHEMA)
        self._thread.start()

    def record(self, record: UsageRecord) -> None:
        with self._lock:
            self._pending.append(record)

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return
        with sqlite3.connect(self.path, timeout=30) as conn:
            conn.executemany(
                "INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [astuple(r) for r in batch]
            )

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.flush()


def read_usage(path: Path) -> list[UsageRecord]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT * FROM usage ORDER BY at_ms").fetchall()
    return [UsageRecord(*row) for row in rows]
