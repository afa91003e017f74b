"""Minimal ASGI plumbing: read a body, answer JSON, answer SSE, answer errors.

Errors always have the platform's body `{"error_code": ..., "message": ...}`.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

__all__ = [
    "ApiError",
    "serve_lifespan",
    "Headers",
    "MAX_JSON_DEPTH",
    "header",
    "parse_json_body",
    "read_body",
    "read_json",
    "send_error",
    "send_json",
    "unless_disconnected",
]

T = TypeVar("T")

Headers = list[tuple[bytes, bytes]]
MAX_BODY = 32 * 1024 * 1024
_JSON = (b"content-type", b"application/json")
# Far deeper than any request of the serving API; shallow enough that copying, validating
# and re-serialising a body stays far from the interpreter's recursion limit.
MAX_JSON_DEPTH = 100
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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
    return (await read_json_raw(receive, allow_empty=allow_empty))[0]


async def read_json_raw(receive: Any, *, allow_empty: bool = False) -> tuple[Any, bytes]:
    """The parsed body and its bytes (kept by a payload table as they came)."""
    raw = await read_body(receive)
    if not raw.strip():
        if allow_empty:
            return {}, raw
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "the request body must be a JSON object")
    return parse_json_body(raw), raw


def parse_json_body(raw: bytes) -> Any:
    """Parse a request body, answering 400 for anything the rest of the server cannot hold.

    Beyond syntax errors that means: text that is not UTF-8 (RFC 8259; `json.loads` on bytes
    would let encoded surrogates through), nesting deeper than `MAX_JSON_DEPTH` (deeper input
    is a RecursionError in `json.loads` or in whatever walks the value next), integers over
    Python's int-string limit, `NaN`/`Infinity` (not JSON; they would be re-sent as invalid
    JSON) and lone UTF-16 surrogates (`"\\ud800"` parses, then fails to encode as UTF-8 on the
    way into the state or upstream).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed(
            f"the request body is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    try:
        value = _DECODER.decode(text.removeprefix("\ufeff"))
    except json.JSONDecodeError as exc:
        raise _malformed(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise _too_deep() from None
    except _NotJson as exc:
        raise _invalid(str(exc)) from None
    except ValueError:  # int() refused a literal over the int-string limit
        raise _invalid(
            f"an integer in the request body has more than {sys.get_int_max_str_digits()} "
            "digits; send it as a string"
        ) from None
    # Cheap guards first: nesting needs brackets, a surrogate needs a `\u` escape.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise _too_deep()
    if _SURROGATE_ESCAPE.search(text) is not None:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid(
                "the request body contains a lone UTF-16 surrogate (a `\\ud800`-`\\udfff` "
                "escape that is not half of a pair); send valid Unicode text"
            ) from None
    return value


class _NotJson(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotJson(f"`{name}` in the request body is not a JSON value")


# One decoder for every body (json.loads with an argument builds a new one each call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in `value` (iterative: deep input is the point)."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        elif not isinstance(item, list):
            continue
        deepest = max(deepest, depth)
        if depth > MAX_JSON_DEPTH:
            return depth
        stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return deepest


def _malformed(message: str) -> ApiError:
    return ApiError(400, "MALFORMED_REQUEST", message)


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


def _too_deep() -> ApiError:
    return _invalid(f"the request body is nested more than {MAX_JSON_DEPTH} levels deep")


def json_bytes(payload: Any) -> bytes:
    """A response body as `send_json` encodes it."""
    return json.dumps(payload, separators=(",", ":")).encode()


async def send_json(
    send: Any, status: int, payload: Any, headers: Iterable[tuple[str, str]] = ()
) -> None:
    await send_json_bytes(send, status, json_bytes(payload), headers)


async def send_json_bytes(
    send: Any, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()
) -> None:
    """An encoded JSON body (`json_bytes`) sent as the response."""
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


async def serve_lifespan(
    receive: Any,
    send: Any,
    startup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]],
) -> None:
    """Answer the ASGI lifespan protocol: a startup that raises fails the server's start."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:  # noqa: BLE001 - reported to the server, which stops
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def unless_disconnected(relay: Coroutine[Any, Any, T], receive: Any) -> T | None:
    """`relay`'s result, or None when the client goes away first (the body already read).

    uvicorn drops writes to a closed connection silently, so only `receive` tells; the relay
    is then cancelled, which stops the upstream call and closes its connection (read to the
    end, abandoned streams would hold the pool's connections and the upstream's work).
    """
    if receive is None:
        return await relay
    relaying = asyncio.ensure_future(relay)
    gone = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait((relaying, gone), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request is cancelled itself (server shutdown): stop both
        relaying.cancel()
        gone.cancel()
        raise
    gone.cancel()
    if relaying.done():
        return relaying.result()
    relaying.cancel()
    await asyncio.wait((relaying,))
    if not relaying.cancelled():
        relaying.exception()  # retrieved: a failure while stopping is no one's to answer now
    return None


async def _disconnected(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
