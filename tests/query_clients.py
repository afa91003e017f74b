"""Clients that query an endpoint continuously while a test changes it (an update, a replica
added or removed): every answer is recorded, so that a test can assert that none failed and see
which served entity answered when."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx

__all__ = ["CHAT", "THINK_TIME", "Clients"]

CHAT = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 2}
# A short think time: on two cores, 16 clients without one leave a new runner starting next to
# the old one almost no CPU (minutes instead of ~40 s).
THINK_TIME = 0.2


class Clients:
    """N threads querying an endpoint until stopped; records every answer."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        endpoint: str,
        n: int,
        body: dict[str, Any] | None = None,
    ) -> None:
        self.url, self.headers, self.endpoint = url, headers, endpoint
        self.body = body or CHAT
        # (time the request was sent, status, served entity): a request sent before a switch
        # may finish well after it on a loaded machine, and still rightly on the old entity.
        self.answers: list[tuple[float, int, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        path = f"/serving-endpoints/{self.endpoint}/invocations"
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=120) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    answer = client.post(path, json=self.body)
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                name = answer.headers.get("served-model-name", "")
                with self._lock:
                    self.answers.append((sent, answer.status_code, name))
                    if answer.status_code != 200:
                        self.failures.append(f"{answer.status_code}: {answer.text[:300]}")
                time.sleep(THINK_TIME)

    def served_since(self, since: float) -> Counter[str]:
        with self._lock:
            return Counter(name for at, status, name in self.answers if at >= since)
