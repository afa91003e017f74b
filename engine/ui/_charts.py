"""Metrics of one endpoint over the last hours, from the gateway's usage records: requests
per second, p50/p99 latency, errors and tokens per minute, ready for the page's charts.

Usage records exist for endpoints with `ai_gateway.usage_tracking_config.enabled`; an endpoint
without them gets empty series and the page says how to turn them on. The read is bounded by
the usage table's index (endpoint, time and the columns read): it touches this endpoint's
records of the last hours only, however many other endpoints have recorded.
"""

from __future__ import annotations

import itertools
from typing import Any

from engine.gateway._usage import query_usage
from engine.state import StateLocation
from schemas import now_ms

__all__ = ["endpoint_series"]

BUCKET_MS = 60_000
# Ordered by time (the index's order), so each minute's records come together; the database
# computes the minute, the error flag and the token sum (less Python per record).
_ROWS_SQL = (
    "SELECT at_ms / ?, latency_ms, CASE WHEN status >= 400 THEN 1 ELSE 0 END, "
    "prompt_tokens + completion_tokens FROM usage "
    "WHERE endpoint = ? AND at_ms >= ? ORDER BY at_ms"
)


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def endpoint_series(location: StateLocation, endpoint: str, *, hours: float = 3) -> dict[str, Any]:
    """Per-minute series: x (unix seconds), rps, p50, p99, errors, tokens."""
    now = now_ms()
    since = now - int(hours * 3_600_000)
    rows = query_usage(location, _ROWS_SQL, (BUCKET_MS, endpoint, since))
    minutes: dict[int, tuple[int, float, float, int, int]] = {}
    for bucket, group in itertools.groupby(rows, key=lambda r: int(r[0])):
        records = list(group)
        latencies = sorted(r[1] for r in records)
        minutes[bucket] = (
            len(records),
            _quantile(latencies, 0.5),
            _quantile(latencies, 0.99),
            sum(r[2] for r in records),
            sum(r[3] for r in records),
        )
    series: dict[str, list[float]] = {k: [] for k in ("x", "rps", "p50", "p99", "errors", "tokens")}
    for bucket in range(since // BUCKET_MS, now // BUCKET_MS + 1):
        count, p50, p99, errors, tokens = minutes.get(bucket, (0, 0, 0, 0, 0))
        series["x"].append(bucket * BUCKET_MS // 1000)
        series["rps"].append(round(count / 60, 3))
        series["p50"].append(round(p50, 1) if count else 0)
        series["p99"].append(round(p99, 1) if count else 0)
        series["errors"].append(errors)
        series["tokens"].append(tokens)
    return {"series": series, "records": len(rows)}
