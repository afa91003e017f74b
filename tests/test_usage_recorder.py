"""The usage recorder writes every record of a flush, on SQLite and PostgreSQL, whatever the
batch's size: more rows than one INSERT statement carries, and a remainder."""

from __future__ import annotations

from pathlib import Path

from engine.gateway._usage import UsageRecord, UsageRecorder, read_usage
from engine.state import resolve_state


def _records(n: int) -> list[UsageRecord]:
    # Distinct values in every column, so a row written twice or a column shifted shows.
    return [
        UsageRecord(
            1_700_000_000_000 + i,
            f"endpoint-{i % 7}",
            f"entity-{i % 3}",
            f"user{i % 5}@example.com",
            200 if i % 11 else 429,
            i / 8,
            i,
            2 * i + 1,
        )
        for i in range(n)
    ]


def test_a_large_flush_keeps_every_record_in_order_on_sqlite(tmp_path: Path) -> None:
    recorder = UsageRecorder(tmp_path / "usage.db", interval=3600)
    recorder.start()
    records = _records(2_537)  # several full statements and a remainder
    for record in records[:2_000]:
        recorder.record(record)
    recorder.flush()
    for record in records[2_000:]:
        recorder.record(record)
    recorder.close()  # a clean stop writes what is pending
    assert read_usage(tmp_path / "usage.db") == records


def test_a_large_flush_keeps_every_record_on_postgresql(postgres_url: str, tmp_path: Path) -> None:
    location = resolve_state(postgres_url)
    recorder = UsageRecorder(tmp_path / "usage.db", interval=3600, postgres_url=postgres_url)
    recorder.start()
    records = _records(2_537)
    for record in records:
        recorder.record(record)
    recorder.flush()
    recorder.flush()  # nothing pending: writes nothing
    assert read_usage(location) == records
    recorder.close()
