"""HTML answers of the Serving UI: pages, redirects, static files, form bodies.

Every page goes out with a strict Content-Security-Policy (scripts only from /ml/static/, no
framing, no inline script), no-store caching (a signed-out browser's back button shows no
endpoint), and nosniff.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from engine.asgi import ApiError, header, read_body

__all__ = ["read_form", "send_html", "send_json", "send_redirect", "send_static"]

_SECURITY = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        b"form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]
_FORM = "application/x-www-form-urlencoded"
MAX_FORM = 256 * 1024


async def send_html(
    send: Any, status: int, html: str, headers: list[tuple[str, str]] | None = None
) -> None:
    body = html.encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *_SECURITY,
                *((k.encode(), v.encode()) for k, v in headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Any, status: int, body: dict[str, Any]) -> None:
    """A refusal of a route that page scripts fetch: the platform's JSON error body."""
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(raw)).encode()),
                (b"cache-control", b"no-store"),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})


async def send_redirect(
    send: Any, location: str, headers: list[tuple[str, str]] | None = None, *, htmx: bool = False
) -> None:
    """303 to `location` (an HTMX request gets HX-Redirect, which it follows as a page load)."""
    extra = [(k.encode(), v.encode()) for k, v in headers or []]
    if htmx:
        start = {"status": 200, "headers": [(b"hx-redirect", location.encode()), *extra]}
    else:
        start = {"status": 303, "headers": [(b"location", location.encode()), *extra]}
    start["headers"] += [(b"content-length", b"0"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", **start})
    await send({"type": "http.response.body", "body": b""})


async def send_static(send: Any, body: bytes, kind: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", kind.encode()),
                (b"content-length", str(len(body)).encode()),
                # Shipped with the package: a new version of the engine brings new files.
                (b"cache-control", b"public, max-age=3600"),
                (b"x-content-type-options", b"nosniff"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_form(scope: dict[str, Any], receive: Any) -> dict[str, list[str]]:
    """A urlencoded form body; anything else is a 400 (the UI's forms send nothing else)."""
    kind = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
    if kind != _FORM:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"a form post must be {_FORM}")
    raw = await read_body(receive)
    if len(raw) > MAX_FORM:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "the form is too large")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "the form is not UTF-8") from None
    return parse_qs(text, keep_blank_values=True, max_num_fields=1000)
