"""Server-sent events: parse upstream streams into (event, data) pairs, and frame them as bytes.

The SSE standard: https://html.spec.whatwg.org/multipage/server-sent-events.html

    parse_sse(lines)        text lines -> SseEvent(event, data), for streams that are translated
    EventFramer().feed(b)   raw bytes -> whole events as bytes, for streams passed through as-is
    event(payload)          one `data:` event holding a JSON payload
    DONE                    OpenAI's end-of-stream event
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

__all__ = ["DONE", "EventFramer", "SseEvent", "event", "event_data", "parse_sse"]

DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str | None
    data: str


async def parse_sse(lines: AsyncIterator[str]) -> AsyncIterator[SseEvent]:
    """Group `event:` / `data:` lines into events; comments and unknown fields are skipped."""
    event: str | None = None
    data: list[str] = []
    async for raw in lines:
        line = raw.rstrip("\r")
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data))
            event, data = None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
    if data:
        yield SseEvent(event, "\n".join(data))


def event(payload: Any) -> bytes:
    """One `data:` event holding `payload` as compact JSON."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def event_data(raw: bytes) -> bytes:
    """The data of one whole event (its `data:` lines joined), e.g. b'[DONE]' or a JSON text."""
    parts = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts)


class EventFramer:
    """Cuts a byte stream into whole events, each ending in a blank line, bytes as they came.

    A piece read from a socket may hold half an event or several; only whole events are given
    back, so what is forwarded is always well-framed SSE, and an error event can follow it.
    CRLF and CR line ends (allowed by the SSE standard, rare in practice) become LF.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> bytes:
        """The events completed by `data` (b"" while the next one is still on the wire)."""
        if self._tail:
            data = self._tail + data
        held = b""
        if b"\r" in data:
            if data.endswith(b"\r"):
                data, held = data[:-1], b"\r"  # maybe half of a CRLF: wait for the next piece
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._tail = data + held
            return b""
        self._tail = data[end + 2 :] + held
        return data[: end + 2]

    @property
    def pending(self) -> bool:
        """Part of an event is buffered (a stream that ends now was cut mid-event)."""
        return bool(self._tail.strip())
