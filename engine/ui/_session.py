"""Browser sessions of the Serving UI: a bearer token signed in once, an opaque cookie after.

The cookie holds 32 random bytes and nothing else; the map from it to the token lives in this
process only (a restart signs everyone out, which is what a lost map must do). The token is
kept, not its principal, so that a token deleted with `engine tokens delete` ends its sessions
at the next request. Each session has its own CSRF token (see `_csrf.py`).

| cookie         | value                | flags                                  |
|----------------|----------------------|----------------------------------------|
| `engine_ui`    | opaque session id    | HttpOnly; SameSite=Strict; Path=/ml/   |
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

__all__ = ["COOKIE", "Session", "Sessions"]

COOKIE = "engine_ui"
# A signed-in browser stays signed in this long without a request.
IDLE_SECONDS = 8 * 3600
# More than any one operator needs; bounds what an attacker signing in in a loop can hold.
MAX_SESSIONS = 10_000


@dataclass
class Session:
    id: str
    token: str
    csrf: str
    last_seen: float


class Sessions:
    def __init__(self, *, idle_seconds: float = IDLE_SECONDS) -> None:
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.idle_seconds = idle_seconds

    def create(self, token: str) -> Session:
        session = Session(
            secrets.token_urlsafe(32), token, secrets.token_urlsafe(32), time.monotonic()
        )
        with self._lock:
            self._expire()
            if len(self._by_id) >= MAX_SESSIONS:
                oldest = min(self._by_id.values(), key=lambda s: s.last_seen)
                del self._by_id[oldest.id]
            self._by_id[session.id] = session
        return session

    def get(self, cookie_header: str | None) -> Session | None:
        session_id = cookie_value(cookie_header, COOKIE)
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._by_id.get(session_id)
            if session is None or now - session.last_seen > self.idle_seconds:
                self._by_id.pop(session_id, None)
                return None
            session.last_seen = now
            return session

    def end(self, session: Session) -> None:
        with self._lock:
            self._by_id.pop(session.id, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._by_id.items() if now - s.last_seen > self.idle_seconds]:
            del self._by_id[key]


def cookie_value(header: str | None, name: str) -> str | None:
    if not header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return None
    morsel = jar.get(name)
    return morsel.value if morsel is not None else None


def set_cookie(session: Session | None, *, secure: bool = False) -> str:
    """The Set-Cookie value that stores `session` (None: clears it)."""
    value, age = (session.id, IDLE_SECONDS) if session is not None else ("", 0)
    flags = f"; Path=/ml/; HttpOnly; SameSite=Strict; Max-Age={age}"
    return f"{COOKIE}={value}{flags}" + ("; Secure" if secure else "")
