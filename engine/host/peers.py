"""How the replicas of one state reach each other: a replica without the runner role hands
the runner host what only it may do, and the runner host waits for every replica in drains.

- **Forwarded requests.** Endpoint changes (`POST/PUT/PATCH/DELETE /api/2.0/serving-endpoints...`)
  may start or stop runners, and the runners' logs lie on the runner host's disk: a replica
  without the role passes such a request on unchanged (the caller's own token: the runner host
  checks who may do it) and answers what the runner host answered. It then catches up with the
  state before answering, so read-your-writes holds on the replica that took the write. The
  Serving UI's changes (create, edit, cancel) and its log tails go the same way, with the
  session cookie and CSRF token in place of the bearer token (sessions live in the state, so
  the runner host knows the session).
- **Wake.** A request for a scaled-to-zero runner asks the runner host to start it
  (`POST /api/2.0/engine/peers/wake`), authenticated as a peer: each host draws a random key
  at start and records only its hash in its `hosts` row, so a caller who cannot write the state
  cannot pose as a replica.
- **Reports.** Each replica records (untracked) its routing table's serial, the entity
  instances it still has requests in flight on after they left its table, and its token rates:
  the runner host's drains wait for every live replica, and its autoscaler sums their load.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from typing import Any

import httpx

from engine.asgi import ApiError, read_body
from engine.host.membership import alive_now
from engine.state import RUNNER_ROLE, StateStore

__all__ = ["PEER_HEADER", "WAKE_PATH", "Peers", "needs_runner_host"]

log = logging.getLogger("engine.peers")

PEER_HEADER = b"x-engine-peer"
# Set on a forwarded request: a host that is not the runner host either answers 503 rather
# than forwarding again (the role moved while the request was on its way).
FORWARDED_HEADER = b"x-engine-forwarded"
WAKE_PATH = "/api/2.0/engine/peers/wake"

_CHANGES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_ENDPOINTS = "/api/2.0/serving-endpoints"
_LOGS = re.compile(r"^/api/2\.0/serving-endpoints/[^/]+/served-models/[^/]+/(build-)?logs$")
# The Serving UI's pages that change endpoints (POST) or tail a runner's logs (GET).
_UI_CHANGES = re.compile(r"^/ml/endpoints/(new|[^/]+/(edit|cancel))$")
_UI_LOGS = re.compile(r"^/ml/endpoints/[^/]+/logs/[^/]+$")
# Headers passed on to the runner host and back (hop-by-hop ones and the length are not).
_REQUEST_HEADERS = frozenset({b"authorization", b"content-type", b"accept"})
_RESPONSE_HEADERS = frozenset({"content-type", "retry-after"})
# ...and those of the UI's pages: its session and CSRF token, HTMX's request and answer
# headers, a redirect, the pages' security headers.
_UI_REQUEST_HEADERS = _REQUEST_HEADERS | {
    b"cookie",
    b"x-csrf-token",
    b"hx-request",
    b"hx-target",
    b"hx-current-url",
}
_UI_RESPONSE_HEADERS = _RESPONSE_HEADERS | {
    "location",
    "hx-redirect",
    "hx-refresh",
    "cache-control",
    "content-security-policy",
    "x-content-type-options",
    "referrer-policy",
    "x-frame-options",
}


def needs_runner_host(method: str, path: str) -> bool:
    """Whether only the runner host may answer this control-plane (or Serving UI) request."""
    if path.startswith("/ml/"):
        return (method == "POST" and _UI_CHANGES.match(path) is not None) or (
            method == "GET" and _UI_LOGS.match(path) is not None
        )
    if not path.startswith(_ENDPOINTS):
        return False
    if method in _CHANGES:
        return True
    return method == "GET" and _LOGS.match(path) is not None


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "TEMPORARILY_UNAVAILABLE", message, [("retry-after", "2")])


class Peers:
    """This host's side of talking to the other replicas of its state."""

    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self._key = secrets.token_urlsafe(32)
        self.key_hash = hashlib.sha256(self._key.encode()).hexdigest()
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # Creates answer at once (the update runs on); a long read covers a cold start.
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(connect=5.0, read=600.0, write=60.0, pool=60.0)
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    # -- who is around --------------------------------------------------------------------------

    def live_peers(self, store: StateStore) -> list[dict[str, Any]]:
        alive = alive_now()
        return [h for h in store.hosts() if h["id"] != self.host_id and alive(h)]

    def runner_host(self, store: StateStore) -> dict[str, Any] | None:
        return next((h for h in self.live_peers(store) if h["role"] == RUNNER_ROLE), None)

    def caught_up(
        self, store: StateStore, serial: int, key: tuple[int, str] | None, instance_id: int
    ) -> bool:
        """Whether every live replica's table is at `serial` or later and none has a request
        in flight on the instance (`key`: that config of it; None: any retired replica)."""
        for peer in self.live_peers(store):
            report = peer.get("report") or {}
            if int(report.get("serial", -1)) < serial:
                return False
            for busy_id, fingerprint in report.get("busy", []):
                if busy_id == instance_id and (key is None or fingerprint == key[1]):
                    return False
        return True

    def rates(self, store: StateStore) -> dict[int, float]:
        """Output tokens/s per entity instance over the other live replicas."""
        total: dict[int, float] = {}
        for peer in self.live_peers(store):
            for instance, rate in ((peer.get("report") or {}).get("rates") or {}).items():
                total[int(instance)] = total.get(int(instance), 0.0) + float(rate)
        return total

    # -- being called ---------------------------------------------------------------------------

    def is_peer(self, store: StateStore, value: str | None) -> bool:
        """Whether `x-engine-peer: HOST_ID:KEY` names a live replica of this state by its key."""
        host_id, _, key = (value or "").partition(":")
        if not host_id or not key:
            return False
        digest = hashlib.sha256(key.encode()).hexdigest()
        return any(
            h["id"] == host_id and h["peer_hash"] and hmac.compare_digest(h["peer_hash"], digest)
            for h in self.live_peers(store)
        )

    # -- calling --------------------------------------------------------------------------------

    def _runner_address(self, store: StateStore) -> str:
        runner = self.runner_host(store)
        if runner is None or not runner["address"]:
            raise _unavailable(
                "no replica of this state runs the runners right now (it is being taken over); "
                "retry shortly"
            )
        return str(runner["address"]).rstrip("/")

    async def forward(
        self, store: StateStore, scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        """Pass a request on to the runner host and send its answer back."""
        if any(name == FORWARDED_HEADER for name, _ in scope["headers"]):
            raise _unavailable("the runner role moved while this request was forwarded; retry")
        address = self._runner_address(store)
        body = await read_body(receive)
        query = scope.get("query_string", b"").decode("latin-1")
        url = address + scope["path"] + (f"?{query}" if query else "")
        ui = scope["path"].startswith("/ml/")
        passed_in = _UI_REQUEST_HEADERS if ui else _REQUEST_HEADERS
        passed_out = _UI_RESPONSE_HEADERS if ui else _RESPONSE_HEADERS
        headers = [(k, v) for k, v in scope["headers"] if k in passed_in]
        headers.append((FORWARDED_HEADER, self.host_id.encode()))
        try:
            answer = await self._http().request(scope["method"], url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("cannot reach the runner host at %s: %s", address, exc)
            raise _unavailable(
                f"the replica that runs the runners ({address}) does not answer; retry shortly"
            ) from None
        out = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in answer.headers.items()
            if k.lower() in passed_out
        ]
        out.append((b"content-length", str(len(answer.content)).encode()))
        await send({"type": "http.response.start", "status": answer.status_code, "headers": out})
        await send({"type": "http.response.body", "body": answer.content})

    async def wake(self, store: StateStore, instance_id: int) -> None:
        """Ask the runner host to start a scaled-to-zero runner and wait for it."""
        address = self._runner_address(store)
        try:
            answer = await self._http().post(
                address + WAKE_PATH,
                json={"instance_id": instance_id},
                headers={PEER_HEADER.decode(): f"{self.host_id}:{self._key}"},
            )
        except httpx.HTTPError as exc:
            raise _unavailable(
                f"the replica that runs the runners ({address}) does not answer: {exc}"
            ) from None
        if answer.status_code != 200:
            try:
                body = answer.json()
                error = ApiError(answer.status_code, body["error_code"], body["message"])
            except (ValueError, KeyError, TypeError):
                error = _unavailable(f"the runner host answered {answer.status_code}")
            raise error
