"""Endpoint mutations through the REST API: each one is a plan of that one endpoint, checked
by the same rules and carried out by the same apply as `engine apply`.

Create and config updates answer as soon as the new config is pending (IN_PROGRESS) and finish
in a background thread that holds the state lock; clients poll GET until NOT_UPDATING.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.apply import Applier, ApplyEvent, PlanNotApplicable
from engine.asgi import ApiError
from engine.catalog.models import ModelCatalog
from engine.host.inventory import entity_checker
from engine.secrets.store import SecretStore, secret_store_for_state
from engine.state import LockHeld, SqliteStateStore
from plans import Canonical, Plan, StateSnapshot, canonical_endpoint, make_plan
from providers import ExecutorRegistry
from schemas import RuleId, format_path, validate_endpoint

__all__ = ["EndpointService"]

LOCK_WAIT = 10.0
_API_STACK = "\0api"


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


class EndpointService:
    def __init__(
        self,
        state_path: Path,
        executors: Callable[[], ExecutorRegistry],
        *,
        on_change: Callable[[], None] | None = None,
        drain: Callable[[Any], None] | None = None,
    ) -> None:
        self.state_path = state_path
        self.executors = executors
        self.on_change = on_change or (lambda: None)
        self.drain = drain

    # -- validation -------------------------------------------------------------------------

    def _validated(self, body: Any, secrets: SecretStore) -> tuple[Canonical, dict[str, str]]:
        spec, diagnostics = validate_endpoint(body)
        errors = [d for d in diagnostics if d.is_error]
        if spec is None or errors:
            detail = "; ".join(f"{_where(d)}{d.message} [{d.rule}]" for d in errors)
            raise _invalid(detail or "invalid endpoint")
        plaintexts: dict[str, str] = {}

        def digest(value: str) -> str:
            hashed = secrets.digest(value)
            plaintexts[hashed] = value
            return hashed

        return canonical_endpoint(spec, digest), plaintexts

    # -- operations ---------------------------------------------------------------------------

    def create(self, body: Any, actor: str) -> str:
        if not isinstance(body, dict):
            raise _invalid("the request body must be a JSON object")
        name = body.get("name")
        with self._open() as (store, secrets):
            if isinstance(name, str) and store.get_endpoint(name) is not None:
                raise ApiError(409, "RESOURCE_ALREADY_EXISTS", f"endpoint {name!r} already exists")
            doc, plaintexts = self._validated(body, secrets)
        return self._run(doc, plaintexts, actor, background=True)

    def update_config(self, name: str, config: Any, actor: str) -> str:
        if not isinstance(config, dict):
            raise _invalid("the request body must be a JSON object")
        config = {k: v for k, v in config.items() if k != "name"}
        with self._open() as (store, secrets):
            current = self._current(store, name)
            body = {k: copy.deepcopy(v) for k, v in current.items() if k != "config"}
            body["config"] = config
            doc, plaintexts = self._validated(body, secrets)
        return self._run(doc, plaintexts, actor, background=True)

    def replace_part(self, name: str, part: str, value: Any, actor: str) -> Canonical:
        """Replace a top-level block (rate_limits, tags, ai_gateway): a hot change."""
        with self._open() as (store, secrets):
            current = self._current(store, name)
            probe, _ = self._validated({"name": name, part: value}, secrets)
            doc = copy.deepcopy(current)
            if part in probe:
                doc[part] = probe[part]
            else:
                doc.pop(part, None)
        self._run(doc, {}, actor, background=False)
        return doc

    def delete(self, name: str, actor: str) -> None:
        with self._open() as (store, _):
            self._current(store, name, allow_unfinished=True)
        self._run({"name": name}, {}, actor, background=False, delete=True)

    # -- the shared path ----------------------------------------------------------------------

    def _run(
        self,
        doc: Canonical,
        plaintexts: dict[str, str],
        actor: str,
        *,
        background: bool,
        delete: bool = False,
    ) -> str:
        store = SqliteStateStore(self.state_path)
        secrets = secret_store_for_state(self.state_path)
        try:
            lock = store.acquire_lock("api", holder=f"api:{actor}", timeout=LOCK_WAIT)
        except LockHeld as exc:
            store.close()
            secrets.close()
            raise ApiError(
                409,
                "RESOURCE_CONFLICT",
                f"another change is in progress ({exc.info.holder}, {exc.info.operation}); "
                "retry when it finishes",
            ) from None
        started = threading.Event()
        outcome: dict[str, Any] = {}

        def finish() -> None:
            try:
                plan = self._plan(store, secrets, doc, delete=delete)
                outcome["plan"] = plan
                if plan.errored:
                    return
                applier = Applier(
                    store,
                    secrets,
                    self.executors(),
                    actor=actor,
                    plaintexts=plaintexts,
                    lock_id=lock.id,
                    on_event=lambda e: _mark(e, started),
                    drain=self.drain,
                )
                outcome["report"] = applier.apply(plan)
            except PlanNotApplicable as exc:
                outcome["error"] = _invalid(str(exc))
            except Exception as exc:  # noqa: BLE001 - answered as a 500, logged by the caller
                outcome["error"] = exc
            finally:
                store.release_lock(lock.id)
                store.close()
                secrets.close()
                started.set()
                self.on_change()

        if background:
            threading.Thread(target=finish, name=f"apply-{doc['name']}", daemon=True).start()
            started.wait()
        else:
            finish()
        error = outcome.get("error")
        if isinstance(error, ApiError):
            raise error
        if error is not None:
            raise error
        plan = outcome.get("plan")
        if plan is not None and plan.errored:
            raise _plan_error(plan)
        report = outcome.get("report")
        if report is not None and not background and not report.ok:
            raise ApiError(500, "INTERNAL_ERROR", "; ".join(report.failed.values()))
        return doc["name"]

    def _plan(
        self, store: SqliteStateStore, secrets: SecretStore, doc: Canonical, *, delete: bool
    ) -> Plan:
        snapshot = store.snapshot(holding_lock=True)
        name = doc["name"]
        if delete:
            # Exactly this endpoint, under a private stack name, destroyed: the planner's own
            # delete path, whatever stack (if any) manages the endpoint.
            record = dataclasses.replace(snapshot.endpoints[name], stack=_API_STACK)
            only = StateSnapshot(snapshot.lineage, snapshot.serial, {name: record})
            return make_plan([], only, stack=_API_STACK, destroy=True)
        only = {name: snapshot.endpoints[name]} if name in snapshot.endpoints else {}
        narrowed = StateSnapshot(snapshot.lineage, snapshot.serial, only)
        return make_plan(
            [doc],
            narrowed,
            stack=None,
            secret_exists=secrets.has,
            entity_check=entity_checker(ModelCatalog(store)),
        )

    # -- helpers -----------------------------------------------------------------------------

    def _current(
        self, store: SqliteStateStore, name: str, *, allow_unfinished: bool = False
    ) -> Canonical:
        row = store.get_endpoint(name)
        if row is None or (row.spec is None and not allow_unfinished):
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"endpoint {name!r} does not exist")
        return row.spec or {"name": name}

    @contextlib.contextmanager
    def _open(self) -> Iterator[tuple[SqliteStateStore, SecretStore]]:
        store = SqliteStateStore(self.state_path)
        secrets = secret_store_for_state(self.state_path)
        try:
            yield store, secrets
        finally:
            store.close()
            secrets.close()


def _mark(event: ApplyEvent, started: threading.Event) -> None:
    if event.step in ("pending", "deleted", "updated", "activated", "failed"):
        started.set()


def _where(diag: Any) -> str:
    path = format_path(diag.path)
    return f"{path}: " if path else ""


def _plan_error(plan: Plan) -> ApiError:
    errors = [e for c in plan.changes for e in c.errors]
    message = "; ".join(f"{e.message} [{e.rule}]" for e in errors)
    if any(e.rule == RuleId.L1 for e in errors):
        return ApiError(409, "RESOURCE_CONFLICT", message)
    return _invalid(message)
