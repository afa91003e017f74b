"""Browser sessions of the Serving UI: a bearer token signed in once, an opaque cookie after.

The cookie holds 32 random bytes and nothing else. Sessions live in the state
(engine/state/_ui_sessions.py), so every worker and replica of `engine serve` accepts a
session signed in on any of them, and signing out on one ends it on all. The state holds the
SHA-256 of the id, never the id, and the token sealed (Fernet) with a key derived from the id:
the database alone signs no one in and shows no token. The token is kept, not its principal,
so that a token deleted with `engine tokens delete` ends its sessions at the next request.
Each session's CSRF token (see `_csrf.py`) is derived from its id, the same on every replica.

| cookie         | value                | flags                                  |
|----------------|----------------------|----------------------------------------|
| `engine_ui`    | opaque session id    | HttpOnly; SameSite=Strict; Path=/ml/   |
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

from cryptography.fernet import Fernet, InvalidToken

from engine.state import StateStore
from schemas import now_ms

__all__ = ["COOKIE", "Session", "Sessions"]

COOKIE = "engine_ui"
# A signed-in browser stays signed in this long without a request.
IDLE_SECONDS = 8 * 3600
# More than any one operator needs; bounds what an attacker signing in in a loop can hold.
MAX_SESSIONS = 10_000
# A session's last-seen time is written at most this often (not on every page view).
TOUCH_MS = 60_000


@dataclass
class Session:
    id: str
    token: str
    csrf: str


def _id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def _sealer(session_id: str) -> Fernet:
    key = hashlib.sha256(b"serving-engine ui seal:" + session_id.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def _csrf_of(session_id: str) -> str:
    mac = hmac.new(session_id.encode(), b"serving-engine ui csrf", hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


class Sessions:
    """The sessions of one state (`store`: the serving host's own store)."""

    def __init__(self, store: StateStore, *, idle_seconds: float = IDLE_SECONDS) -> None:
        self.store = store
        self.idle_ms = int(idle_seconds * 1000)

    def create(self, token: str) -> Session:
        session_id = secrets.token_urlsafe(32)
        now = now_ms()
        self.store.put_ui_session(
            _id_hash(session_id),
            sealed_token=_sealer(session_id).encrypt(token.encode()).decode(),
            now_ms=now,
            idle_before_ms=now - self.idle_ms,
            keep=MAX_SESSIONS,
        )
        return Session(session_id, token, _csrf_of(session_id))

    def get(self, cookie_header: str | None) -> Session | None:
        session_id = cookie_value(cookie_header, COOKIE)
        if not session_id:
            return None
        id_hash = _id_hash(session_id)
        row = self.store.ui_session(id_hash)
        if row is None:
            return None
        now = now_ms()
        if now - row["last_seen_ms"] > self.idle_ms:
            self.store.delete_ui_session(id_hash)
            return None
        try:
            token = _sealer(session_id).decrypt(row["sealed_token"].encode()).decode()
        except InvalidToken:
            return None
        if now - row["last_seen_ms"] > TOUCH_MS:
            self.store.touch_ui_session(id_hash, now)
        return Session(session_id, token, _csrf_of(session_id))

    def end(self, session: Session) -> None:
        self.store.delete_ui_session(_id_hash(session.id))


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
