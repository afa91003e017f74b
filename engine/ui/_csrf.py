"""CSRF: every form post carries its session's token, compared in constant time.

SameSite=Strict already keeps other sites' posts from carrying the cookie; the token is the
second lock (a browser without SameSite, a sibling subdomain). A post without the field, or
with another session's token, is refused before the form is read any further.
"""

from __future__ import annotations

import hmac

from engine.ui._session import Session

__all__ = ["CSRF_FIELD", "csrf_ok"]

CSRF_FIELD = "csrf_token"


def csrf_ok(session: Session, form: dict[str, list[str]], header: str | None = None) -> bool:
    """Whether the post carries this session's token (form field, or HTMX's header)."""
    sent = (form.get(CSRF_FIELD) or [header or ""])[0]
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf.encode())
