"""The recorder: the data plane's one call into the tables, and the thread that writes them.

| hot path (event loop)          | writer thread                                        |
|--------------------------------|------------------------------------------------------|
| `record(...)`: one append      | every `flush_seconds` (2) or `flush_rows` records:    |
| to a bounded deque; when full, | rows made (JSON, merged streams, size checks, ids),   |
| the record is dropped and      | one Delta append per table                            |
| counted (`/metrics`), never    |                                                       |
| waited for                     |                                                       |

`close()` (the host's shutdown, after the server stopped taking requests) writes whatever is
pending before it returns: nothing answered before a clean stop is lost. A write that fails
(disk full) is logged and counted, and its batch dropped: the thread keeps going.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.tables import _delta
from engine.tables._names import ENDPOINT_USAGE, SERVED_ENTITIES, TableName
from engine.tables._rows import Exchange, RequestRecord, batch_columns
from engine.tables._schemas import (
    PAYLOAD_PARTITION,
    PAYLOAD_SCHEMA,
    SERVED_ENTITIES_SCHEMA,
    USAGE_SCHEMA,
)
from engine.tables._served import History, project

if TYPE_CHECKING:
    from engine.access.tokens import Principal
    from engine.gateway._metrics import Metrics
    from engine.gateway._table import EndpointRoute, ServedEntity
    from engine.state import EndpointRow, EntityRow

__all__ = ["TableRecorder"]

log = logging.getLogger("engine.tables")


class TableRecorder:
    def __init__(
        self,
        root: Path,
        metrics: Metrics,
        *,
        workspace_id: str,
        flush_rows: int = 20_000,
        flush_seconds: float = 2.0,
        capacity: int = 100_000,
    ) -> None:
        self.root = root
        self.metrics = metrics
        self.workspace_id = workspace_id
        # One Delta commit costs about 10 ms of CPU whatever its size (deltalake 1.6), and
        # 3 us a row: a commit every 2 s, not every second, is a third of the cost at 3,000
        # requests/s, and rows are still there seconds after the answer.
        self._flush_rows = flush_rows
        self._flush_seconds = flush_seconds
        self._capacity = capacity
        # Appended by the event loop, popped by the writer: deque's ends are thread-safe.
        self._pending: collections.deque[RequestRecord] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._served_rows: list[dict[str, Any]] | None = None  # None: not readable, not written
        self._served_due: list[dict[str, Any]] | None = None
        self._appender = _delta.Appender()  # the writer thread's alone
        self._thread = threading.Thread(target=self._run, name="tables-writer", daemon=True)
        metrics.tables_enabled = True

    # -- the data plane's side ----------------------------------------------------------------

    def record(
        self,
        route: EndpointRoute,
        entity: ServedEntity,
        principal: Principal,
        status: int,
        elapsed: float,
        input_tokens: int,
        output_tokens: int,
        exchange: Exchange,
    ) -> None:
        """Hand one answered request over (never blocks; a full queue drops and counts)."""
        self._enqueue(
            route,
            entity,
            principal,
            status,
            elapsed,
            (input_tokens, output_tokens),
            route.usage_tracking,
            exchange,
        )

    def record_attempt(
        self,
        route: EndpointRoute,
        entity: ServedEntity,
        principal: Principal,
        status: int,
        elapsed: float,
        exchange: Exchange,
        answered: Any,
    ) -> None:
        """A fallback attempt that failed before another entity was tried: a payload row of
        its own (same request id), not a usage row (it used nothing)."""
        if route.payload_table is not None:
            attempt = exchange.attempt(answered)
            self._enqueue(route, entity, principal, status, elapsed, (0, 0), False, attempt)

    def _enqueue(
        self,
        route: EndpointRoute,
        entity: ServedEntity,
        principal: Principal,
        status: int,
        elapsed: float,
        tokens: tuple[int, int],
        usage: bool,
        exchange: Exchange,
    ) -> None:
        pending = self._pending
        if len(pending) >= self._capacity:
            self.metrics.tables_dropped[route.name] += 1
            return
        pending.append(
            RequestRecord(
                time.time(),
                elapsed,
                route.id,
                entity.instance_id,
                principal.name,
                status,
                tokens[0],
                tokens[1],
                route.payload_table,
                usage,
                exchange,
            )
        )
        if len(pending) >= self._flush_rows:
            self._wake.set()

    # -- the host's side ----------------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._served_rows = _delta.read_rows(
                SERVED_ENTITIES.path(self.root), SERVED_ENTITIES_SCHEMA
            )
        except Exception:  # noqa: BLE001 - an unreadable table is left as it is, not replaced
            log.exception("cannot read %s; it is not updated by this host", SERVED_ENTITIES)
        self._thread.start()

    def observe(
        self, view: list[tuple[EndpointRow, list[EntityRow]]], history: History, now_ms: int
    ) -> None:
        """The state moved on: served_entities is rewritten if its projection changed."""
        if self._served_rows is None:
            return
        try:
            rows = project(
                self._served_rows,
                view,
                workspace_id=self.workspace_id,
                history=history,
                now_ms=now_ms,
            )
        except Exception:  # noqa: BLE001 - a refresh of the routing table never fails for it
            log.exception("cannot project %s", SERVED_ENTITIES)
            return
        if rows != self._served_rows:
            self._served_rows = self._served_due = rows
            self._wake.set()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=300)
        if not self._thread.is_alive():  # it never started, or died: write what is left here
            self._flush()

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            self._guarded_flush()
            if self._closing:
                self._guarded_flush()
                return

    def _guarded_flush(self) -> None:
        try:
            self._flush()
        except Exception:  # noqa: BLE001 - a bug in making rows loses a batch, not the thread
            self.metrics.tables_write_errors += 1
            log.exception("cannot make table rows")

    def _flush(self) -> None:
        served, self._served_due = self._served_due, None
        if served is not None:
            self._write(
                SERVED_ENTITIES,
                lambda: _delta.overwrite(
                    SERVED_ENTITIES.path(self.root), served, SERVED_ENTITIES_SCHEMA
                ),
            )
        # What is pending now, in batches; later records wait for the next flush (draining
        # "while there are any" would write a tiny batch per record under load).
        left = len(self._pending)
        while left:
            batch = [self._pending.popleft() for _ in range(min(left, 20_000))]
            left -= len(batch)
            self._write_batch(batch)

    def _write_batch(self, batch: list[RequestRecord]) -> None:
        payloads, usage = batch_columns(batch, self.workspace_id)
        for name, columns in payloads.items():
            self._write(
                name,
                lambda n=name, c=columns: self._appender.append(
                    n.path(self.root), c, PAYLOAD_SCHEMA, PAYLOAD_PARTITION
                ),
            )
        if usage["requester"]:
            self._write(
                ENDPOINT_USAGE,
                lambda: self._appender.append(ENDPOINT_USAGE.path(self.root), usage, USAGE_SCHEMA),
            )

    def _write(self, name: TableName, write: Any) -> None:
        try:
            write()
        except Exception:  # noqa: BLE001 - one table that cannot be written stops no other
            self.metrics.tables_write_errors += 1
            log.exception("cannot write table %s", name)
