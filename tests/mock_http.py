"""A real HTTP server on 127.0.0.1 for tests: speaks whatever wire format a test scripts.

    def handler(request: RecordedRequest) -> MockResponse: ...
    with MockUpstream(handler) as upstream:
        upstream.url                # http://127.0.0.1:PORT
        upstream.requests           # every request received, in order
        upstream.streams_abandoned  # streams whose client closed the connection mid-way

A response with `chunks` is streamed with chunked transfer encoding, one chunk at a time, so
streaming translation is exercised over a real socket. `cut=True` then closes the connection
without ending the body, as a crashed upstream or a dropped connection does.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class MockResponse:
    status: int = 200
    json: Any = None
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunks: Iterable[bytes] | None = None
    delay: float = 0.0
    cut: bool = False


def sse(events: Iterable[tuple[str | None, Any]]) -> list[bytes]:
    """SSE frames from (event name or None, data: dict or str)."""
    out = []
    for event, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        frame = (f"event: {event}\n" if event else "") + f"data: {text}\n\n"
        out.append(frame.encode())
    return out


class _Server(ThreadingHTTPServer):
    # The default backlog (5) resets connections when a test sends a burst.
    request_queue_size = 512


class MockUpstream:
    def __init__(self, handler: Callable[[RecordedRequest], MockResponse]) -> None:
        self.handler = handler
        self.requests: list[RecordedRequest] = []
        self.streams_abandoned = 0
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and each chunk are separate writes: with Nagle's algorithm the next one
            # waits for the reader's delayed ACK (40 ms a stream).
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                request = RecordedRequest(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    body,
                )
                upstream.requests.append(request)
                response = upstream.handler(request)
                if response.delay:
                    time.sleep(response.delay)
                self.send_response(response.status)
                headers = dict(response.headers)
                if response.chunks is not None:
                    headers.setdefault("Content-Type", "text/event-stream")
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        for piece in response.chunks:
                            self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                            self.wfile.flush()
                        if response.cut:
                            self.close_connection = True
                            return
                        self.wfile.write(b"0\r\n\r\n")
                        self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        self.close_connection = True
                        with upstream._lock:
                            upstream.streams_abandoned += 1
                    return
                payload = response.body
                if response.json is not None:
                    payload = json.dumps(response.json).encode()
                    headers.setdefault("Content-Type", "application/json")
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> MockUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
