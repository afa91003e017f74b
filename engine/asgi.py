"""Minimal ASGI plumbing: read a body, answer JSON, answer SSE, answer errors.

Errors always have the platform's body `{"error_code": ..., "message": ...}`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["ApiError", "Headers", "read_body", "read_json", "send_json", "send_error", "header"]

Headers = list[tuple[bytes, bytes]]
MAX_BODY = 32 * 1024 * 1024
_JSON = (b"content-type", b"application/json")


class ApiError(Exception):
    """An error answered as `{"error_code", "message"}` with an HTTP status."""

    def __init__(
        self, status: int, error_code: str, message: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = list(headers)

    def body(self) -> dict[str, str]:
        return {"error_code": self.error_code, "message": self.message}


def header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(receive: Any) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(400, "BAD_REQUEST", "the client disconnected")
        body = message.get("body", b"")
        size += len(body)
        if size > MAX_BODY:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "request body is too large")
        chunks.append(body)
        if not message.get("more_body"):
            return b"".join(chunks)


async def read_json(receive: Any, *, allow_empty: bool = False) -> Any:
    raw = await read_body(receive)
    if not raw.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "the request body must be a JSON object")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(
            400, "MALFORMED_REQUEST", f"the request body is not valid JSON: {exc}"
        ) from None


async def send_json(
    send: Any, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    raw_headers: Headers = [_JSON, (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Any, error: ApiError) -> None:
    await send_json(send, error.status, error.body(), error.headers)


async def send_text(send: Any, status: int, text: str, content_type: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
