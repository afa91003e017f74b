"""The endpoint page's metrics from usage records: per-minute requests/s, p50/p99 latency,
errors and tokens, one endpoint's records of the window only (usage.db beside a SQLite state)."""

from __future__ import annotations

from pathlib import Path

import engine.ui._charts as charts
from engine.gateway._usage import UsageRecord, usage_recorder_for
from engine.state import open_state, resolve_state

NOW = 1_800_000_000_000  # on a minute boundary


def _record(at_ms: int, endpoint: str, latency: float, status: int = 200) -> UsageRecord:
    return UsageRecord(at_ms, endpoint, "m", "alice", status, latency, 3, 4)


def test_per_minute_series_of_one_endpoint(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    state = tmp_path / "state.db"
    open_state(state).close()
    recorder = usage_recorder_for(state)
    recorder.start()
    minute = NOW - 60_000  # the minute before the last
    for i in range(100):  # latencies 1..100 ms, 5 errors
        recorder.record(_record(minute + i, "chat", float(i + 1), 500 if i < 5 else 200))
    recorder.record(_record(minute, "other", 9999.0))  # another endpoint: not counted
    recorder.record(_record(NOW - 4 * 3_600_000, "chat", 9999.0))  # before the window
    recorder.close()
    monkeypatch.setattr(charts, "now_ms", lambda: NOW)
    out = charts.endpoint_series(resolve_state(state), "chat")
    series = out["series"]
    assert out["records"] == 100
    assert len(series["x"]) == 3 * 60 + 1 and series["x"][-1] == NOW // 1000
    i = series["x"].index(minute // 1000)
    assert series["rps"][i] == round(100 / 60, 3)
    assert (series["p50"][i], series["p99"][i]) == (51.0, 100.0)
    assert (series["errors"][i], series["tokens"][i]) == (5, 700)
    assert sum(series["rps"]) == series["rps"][i]  # nothing in any other minute
    assert charts.endpoint_series(resolve_state(state), "none")["records"] == 0
