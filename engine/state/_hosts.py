"""The serving hosts (replicas) of a state: who is alive, who runs the runners, what each
replica's routing table has caught up with. Shared by both stores.

None of it is a state change (the serial stays): a heartbeat must not rebuild every replica's
routing table. Each method is one transaction of `_hosts_tx()`, which the stores serialise
(SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory lock on the hosts key), so check-then-write
(join, claim the runner role) is atomic across processes and machines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from schemas import now_ms

__all__ = ["RUNNER_ROLE", "HostRecords"]

# The role of the one host per state that starts, restarts and stops self-hosted runners.
RUNNER_ROLE = "runner"

_COLUMNS = "id, pid, hostname, address, started_ms, last_seen_ms, role, limits, report, peer_hash"


def _record(row: Any) -> dict[str, Any]:
    record = dict(row)
    record["report"] = json.loads(record.get("report") or "{}")
    return record


class HostRecords:
    """Mixin: the `hosts` table. A store provides `_hosts_tx()` (yields a `?` connection)."""

    def _hosts_tx(self) -> AbstractContextManager[Any]:  # pragma: no cover - per store
        raise NotImplementedError

    def hosts(self) -> list[dict[str, Any]]:
        with self._hosts_tx() as conn:
            return [_record(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM hosts ORDER BY id")]

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
        admit: Callable[[list[dict[str, Any]]], bool] = lambda others: not others,
    ) -> list[dict[str, Any]]:
        """Record host `host_id` if `admit` accepts the other live hosts; returns them.

        The records of hosts that `alive` rejects are removed first (a killed host never blocks
        the next). A host already recorded under `host_id` keeps its role."""
        now = now_ms()
        with self._hosts_tx() as conn:
            rows = [
                _record(r)
                for r in conn.execute(f"SELECT {_COLUMNS} FROM hosts WHERE id != ?", (host_id,))
            ]
            live = [r for r in rows if alive(r)]
            for dead in (r for r in rows if r not in live):
                conn.execute("DELETE FROM hosts WHERE id = ?", (dead["id"],))
            if admit(live):
                conn.execute(
                    "INSERT INTO hosts (id, pid, hostname, address, started_ms, last_seen_ms, "
                    "role, limits, report, peer_hash) VALUES (?, ?, ?, ?, ?, ?, '', ?, '{}', ?) "
                    "ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, "
                    "address = excluded.address, limits = excluded.limits, "
                    "peer_hash = excluded.peer_hash",
                    (host_id, pid, hostname, address, now, now, limits, peer_hash),
                )
        return live

    def heartbeat(
        self,
        host_id: str,
        *,
        pid: int,
        hostname: str,
        address: str,
        report: dict[str, Any] | None = None,
    ) -> None:
        """Record that a serving host is alive, and (optionally) what its table has reached."""
        now = now_ms()
        with self._hosts_tx() as conn:
            conn.execute(
                "INSERT INTO hosts (id, pid, hostname, address, started_ms, last_seen_ms, role, "
                "limits, report, peer_hash) VALUES (?, ?, ?, ?, ?, ?, '', '', ?, '') "
                "ON CONFLICT (id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms, "
                "address = excluded.address"
                + (", report = excluded.report" if report is not None else ""),
                (host_id, pid, hostname, address, now, now, json.dumps(report or {})),
            )

    def claim_runner_role(self, host_id: str, *, alive: Callable[[dict[str, Any]], bool]) -> bool:
        """Whether `host_id` holds the runner role after this call: it takes the role when no
        other live host holds it (a dead holder's role is taken over), and keeps it if held."""
        with self._hosts_tx() as conn:
            rows = [_record(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM hosts")]
            mine = next((r for r in rows if r["id"] == host_id), None)
            if mine is None:
                return False  # not joined (or removed as dead by another host)
            if mine["role"] == RUNNER_ROLE:
                return True
            if any(r["role"] == RUNNER_ROLE and r["id"] != host_id and alive(r) for r in rows):
                return False
            conn.execute("UPDATE hosts SET role = '' WHERE role = ?", (RUNNER_ROLE,))
            conn.execute("UPDATE hosts SET role = ? WHERE id = ?", (RUNNER_ROLE, host_id))
            return True

    def remove_host(self, host_id: str) -> None:
        with self._hosts_tx() as conn:
            conn.execute("DELETE FROM hosts WHERE id = ?", (host_id,))
