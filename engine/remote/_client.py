"""The serving-endpoints REST API of a remote, as the calls a plan makes.

Errors are `RemoteError` (status, the platform's `error_code`, its message). The platform's
"an update is in progress" conflict (409 RESOURCE_CONFLICT) is retried with backoff: it clears
by itself once the other update finishes. Nothing else is retried: a 400 will not change.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from engine.remote._target import Target

__all__ = ["RemoteClient", "RemoteError", "API"]

API = "/api/2.0/serving-endpoints"
# Backoff of the 409 retry: 1, 2, 4, 8, 8... seconds, for at most `conflict_timeout`.
_BACKOFF_START_S = 1.0
_BACKOFF_MAX_S = 8.0


@dataclass
class RemoteError(Exception):
    status: int
    error_code: str
    message: str

    def __str__(self) -> str:
        return f"{self.status} {self.error_code}: {self.message}"


class RemoteClient:
    """One pooled HTTP client for one target; `sleep` is injectable so tests skip backoff."""

    def __init__(
        self,
        target: Target,
        *,
        timeout: float = 60.0,
        conflict_timeout: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.target = target
        self.conflict_timeout = conflict_timeout
        self.sleep = sleep
        self._http = httpx.Client(base_url=target.host, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads --------------------------------------------------------------------------------

    def list_endpoints(self) -> list[dict[str, Any]]:
        return list(self.request("GET", API).get("endpoints") or [])

    def get_endpoint(self, name: str) -> dict[str, Any] | None:
        try:
            return self.request("GET", endpoint_path(name))
        except RemoteError as exc:
            if exc.status == 404:
                return None
            raise

    # -- any call -----------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One call; a 409 RESOURCE_CONFLICT is retried with backoff until `conflict_timeout`."""
        delay, deadline = _BACKOFF_START_S, time.monotonic() + self.conflict_timeout
        while True:
            try:
                response = self._http.request(
                    method, path, json=body, headers=self.target.headers()
                )
            except httpx.HTTPError as exc:
                raise RemoteError(0, "UNREACHABLE", f"{method} {path}: {exc}") from None
            if response.status_code < 400:
                return _json(response)
            error = _error(response)
            retry = error.status == 409 and error.error_code == "RESOURCE_CONFLICT"
            if not retry or time.monotonic() + delay > deadline:
                raise error
            self.sleep(delay)
            delay = min(delay * 2, _BACKOFF_MAX_S)


def endpoint_path(name: str, *rest: str) -> str:
    return "/".join([API, quote(name, safe=""), *rest])


def _json(response: httpx.Response) -> dict[str, Any]:
    if not response.content:
        return {}
    try:
        value = response.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _error(response: httpx.Response) -> RemoteError:
    body = _json(response)
    code = str(body.get("error_code") or f"HTTP_{response.status_code}")
    message = str(body.get("message") or response.reason_phrase or "")
    return RemoteError(response.status_code, code, message[:500])
