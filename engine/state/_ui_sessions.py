"""Browser sessions of the Serving UI, in the state so that every replica (and every worker of
`engine serve --workers N`) accepts a session signed in on any of them. Shared by both stores.

A row holds the SHA-256 of the session id (the cookie's value; never the id itself) and the
caller's bearer token sealed with a key derived from that id: whoever reads the database holds
neither a cookie that signs in nor a token. None of it is a state change (the serial stays):
a page view must not rebuild the routing tables. Each write is one transaction of
`_hosts_tx()`, the stores' untracked transaction; the lookup of a page view is a plain read
(on SQLite it takes no write lock, so page views never queue behind an apply).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

__all__ = ["UiSessionRecords"]


class UiSessionRecords:
    """Mixin: the `ui_sessions` table. A store provides `_hosts_tx()` and `_read()`."""

    def _hosts_tx(self) -> AbstractContextManager[Any]:  # pragma: no cover - per store
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:  # pragma: no cover - per store
        raise NotImplementedError

    def put_ui_session(
        self, id_hash: str, *, sealed_token: str, now_ms: int, idle_before_ms: int, keep: int
    ) -> None:
        """Record a session; drop those idle since before `idle_before_ms`, and the oldest
        beyond `keep` (a sign-in loop cannot fill the table)."""
        with self._hosts_tx() as conn:
            conn.execute("DELETE FROM ui_sessions WHERE last_seen_ms < ?", (idle_before_ms,))
            count = conn.execute("SELECT COUNT(*) AS n FROM ui_sessions").fetchone()["n"]
            if count >= keep:
                conn.execute(
                    "DELETE FROM ui_sessions WHERE id_hash IN (SELECT id_hash FROM ui_sessions "
                    "ORDER BY last_seen_ms LIMIT ?)",
                    (count - keep + 1,),
                )
            conn.execute(
                "INSERT INTO ui_sessions (id_hash, sealed_token, created_ms, last_seen_ms) "
                "VALUES (?, ?, ?, ?)",
                (id_hash, sealed_token, now_ms, now_ms),
            )

    def ui_session(self, id_hash: str) -> dict[str, Any] | None:
        """{sealed_token, created_ms, last_seen_ms} of a session, or None."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT sealed_token, created_ms, last_seen_ms FROM ui_sessions WHERE id_hash = ?",
                (id_hash,),
            ).fetchone()
        return dict(row) if row is not None else None

    def touch_ui_session(self, id_hash: str, now_ms: int) -> None:
        with self._hosts_tx() as conn:
            conn.execute(
                "UPDATE ui_sessions SET last_seen_ms = ? WHERE id_hash = ?", (now_ms, id_hash)
            )

    def delete_ui_session(self, id_hash: str) -> None:
        with self._hosts_tx() as conn:
            conn.execute("DELETE FROM ui_sessions WHERE id_hash = ?", (id_hash,))
