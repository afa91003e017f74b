"""State changes pushed to the replicas: PostgreSQL's LISTEN/NOTIFY.

Every write transaction of the PostgreSQL store notifies `STATE_CHANNEL` (delivered when it
commits, never for a rolled-back one). A serving host listens on a connection of its own, in a
thread, and rebuilds its routing table when told: a change made through any replica reaches the
others in milliseconds instead of a polling interval. Polling stays as the fallback (a lost
connection, a notification dropped while reconnecting), so the bound holds without it too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

from engine.state._pgconn import mask_url

__all__ = ["STATE_CHANNEL", "StateListener"]

STATE_CHANNEL = "serving_engine_state"

log = logging.getLogger("engine.state")


class StateListener:
    """Calls `on_change` (from its thread) after every committed state change."""

    def __init__(self, url: str, on_change: Callable[[], None]) -> None:
        self.url = url
        self.on_change = on_change
        # Whether notifications arrive (else the host polls at its fallback interval).
        self.listening = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="state-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {STATE_CHANNEL}")
                    self.listening = True
                    # A change made while (re)connecting was not heard: look once.
                    self.on_change()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self.on_change()
            except psycopg.Error as exc:
                if self.listening:
                    log.warning("state notifications lost (%s): polling", _first_line(exc))
                self.listening = False
                self._stop.wait(1.0)
            except Exception:  # noqa: BLE001 - the host polls; never let the thread die
                log.exception("state listener failed on %s", mask_url(self.url))
                self.listening = False
                self._stop.wait(1.0)
        self.listening = False


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
