"""A clock for the Databricks SDK's retries: a long retry wait passes in at most half a second.

The SDK sleeps for a 429's Retry-After (up to a minute for a per-minute limit) before it looks at
its retry deadline again; with this clock the sleep is short and the deadline still passes, so
the retry loop ends exactly as it would, in a fraction of the time.
"""

from __future__ import annotations

import time

from databricks.sdk.clock import Clock

__all__ = ["FastRetryClock"]


class FastRetryClock(Clock):
    """Real time plus every second a sleep skipped; sleeps at most `most` real seconds."""

    def __init__(self, most: float = 0.5) -> None:
        self.most = most
        self.skipped = 0.0

    def time(self) -> float:
        return time.time() + self.skipped

    def sleep(self, seconds: float) -> None:
        real = min(seconds, self.most)
        time.sleep(real)
        self.skipped += seconds - real
