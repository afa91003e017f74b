"""Metrics of one endpoint over the last hours, from the gateway's usage records: requests
per second, p50/p99 latency, errors and tokens per minute, ready for the page's charts.

Usage records exist for endpoints with `ai_gateway.usage_tracking_config.enabled`; an endpoint
without them gets empty series and the page says how to turn them on. The read is bounded by
the usage table's index (endpoint, time and the columns read): it touches this endpoint's
records of the last hours only, however many other endpoints have recorded.
"""

from __future__ import annotations

from typing import Any

from engine.gateway._usage import query_usage
from engine.state import StateLocation
from schemas import now_ms

__all__ = ["endpoint_series"]

BUCKET_MS = 60_000
_ROWS_SQL = (
    "SELECT at_ms, status, latency_ms, prompt_tokens, completion_tokens FROM usage "
    "WHERE endpoint = ? AND at_ms >= ? ORDER BY at_ms"
)


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def endpoint_series(location: StateLocation, endpoint: str, *, hours: float = 3) -> dict[str, Any]:
    """Per-minute series: x (unix seconds), rps, p50, p99, errors, tokens."""
    now = now_ms()
    since = now - int(hours * 3_600_000)
    buckets: dict[int, list[tuple[Any, ...]]] = {}
    for row in query_usage(location, _ROWS_SQL, (endpoint, since)):
        buckets.setdefault(row[0] // BUCKET_MS, []).append(row)
    series: dict[str, list[float]] = {k: [] for k in ("x", "rps", "p50", "p99", "errors", "tokens")}
    for bucket in range(since // BUCKET_MS, now // BUCKET_MS + 1):
        rows = buckets.get(bucket, [])
        latencies = [r[2] for r in rows]
        series["x"].append(bucket * BUCKET_MS // 1000)
        series["rps"].append(round(len(rows) / 60, 3))
        series["p50"].append(round(_quantile(latencies, 0.5), 1) if rows else 0)
        series["p99"].append(round(_quantile(latencies, 0.99), 1) if rows else 0)
        series["errors"].append(sum(1 for r in rows if r[1] >= 400))
        series["tokens"].append(sum(r[3] + r[4] for r in rows))
    return {"series": series, "records": sum(len(b) for b in buckets.values())}
