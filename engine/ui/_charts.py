"""Metrics of one endpoint over the last hours, from the gateway's usage records: requests
per second, p50/p99 latency, errors and tokens per minute, ready for the page's charts.

Usage records exist for endpoints with `ai_gateway.usage_tracking_config.enabled`; an endpoint
without them gets empty series and the page says how to turn them on.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from engine.gateway._usage import USAGE_DB_NAME, read_usage
from engine.state import StateLocation
from schemas import now_ms

__all__ = ["endpoint_series"]

BUCKET_MS = 60_000


def _rows(location: StateLocation, endpoint: str, since_ms: int) -> list[tuple[Any, ...]]:
    """(at_ms, status, latency_ms, prompt_tokens, completion_tokens) of one endpoint."""
    if location.is_postgres:
        return [
            (r.at_ms, r.status, r.latency_ms, r.prompt_tokens, r.completion_tokens)
            for r in read_usage(location)
            if r.endpoint == endpoint and r.at_ms >= since_ms
        ]
    path = location.path.parent / USAGE_DB_NAME
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as conn:
        return conn.execute(
            "SELECT at_ms, status, latency_ms, prompt_tokens, completion_tokens FROM usage "
            "WHERE endpoint = ? AND at_ms >= ? ORDER BY at_ms",
            (endpoint, since_ms),
        ).fetchall()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def endpoint_series(location: StateLocation, endpoint: str, *, hours: float = 3) -> dict[str, Any]:
    """Per-minute series: x (unix seconds), rps, p50, p99, errors, tokens."""
    now = now_ms()
    since = now - int(hours * 3_600_000)
    buckets: dict[int, list[tuple[Any, ...]]] = {}
    for row in _rows(location, endpoint, since):
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
