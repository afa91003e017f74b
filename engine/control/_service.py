"""Endpoint mutations through the REST API: each one is a plan of that one endpoint, checked
by the same rules and carried out by the same apply as `engine apply`.

Create and config updates answer as soon as the new config is pending (IN_PROGRESS) and finish
in a background thread that holds the state lock; clients poll GET until NOT_UPDATING.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine.access.tokens import Principal
from engine.apply import ApplyEvent
from engine.asgi import ApiError
from engine.state import EntityRow, StateStore
from engine.workflow import (
    NothingToCancel,
    PlanErrored,
    Session,
    StateLocked,
    WorkflowError,
    apply_plan,
    cancel_update,
    canonical_body,
    plan_endpoint,
    planned_and_locked,
)
from plans import Canonical, Plan
from providers import ExecutorRegistry
from schemas import RuleId, format_path, validate_endpoint

__all__ = ["EndpointService"]

# Seconds a REST mutation waits for its endpoint's lock (held by a hot change of the same
# endpoint, say) before answering 409. A live config update of it is a 409 at once (L1).
LOCK_WAIT = 10.0


def _invalid(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


class EndpointService:
    def __init__(
        self,
        state_path: Path,
        executors: Callable[[], ExecutorRegistry],
        *,
        on_change: Callable[[], None] | None = None,
        drain: Callable[[EntityRow], None] | None = None,
    ) -> None:
        self.state_path = state_path
        self.executors = executors
        self.on_change = on_change or (lambda: None)
        self.drain = drain

    # -- validation -------------------------------------------------------------------------

    def _validated(self, body: Any, session: Session) -> tuple[Canonical, dict[str, str]]:
        spec, diagnostics = validate_endpoint(body)
        errors = [d for d in diagnostics if d.is_error]
        if spec is None or errors:
            detail = "; ".join(f"{_where(d)}{d.message} [{d.rule}]" for d in errors)
            raise _invalid(detail or "invalid endpoint")
        assert session.secrets is not None
        return canonical_body(spec, session.secrets)

    # -- operations ---------------------------------------------------------------------------

    def create(self, body: Any, actor: Principal) -> str:
        if not isinstance(body, dict):
            raise _invalid("the request body must be a JSON object")
        name = body.get("name")
        with self._open() as session:
            assert session.store is not None
            if isinstance(name, str) and session.store.get_endpoint(name) is not None:
                raise ApiError(409, "RESOURCE_ALREADY_EXISTS", f"endpoint {name!r} already exists")
            doc, plaintexts = self._validated(body, session)
        return self._run(doc, plaintexts, actor, background=True)

    def update_config(self, name: str, config: Any, actor: Principal) -> str:
        if not isinstance(config, dict):
            raise _invalid("the request body must be a JSON object")
        config = {k: v for k, v in config.items() if k != "name"}
        with self._open() as session:
            current = self._current(session.store, name)
            body = {k: copy.deepcopy(v) for k, v in current.items() if k != "config"}
            body["config"] = config
            doc, plaintexts = self._validated(body, session)
        return self._run(doc, plaintexts, actor, background=True)

    def replace_part(self, name: str, part: str, value: Any, actor: Principal) -> Canonical:
        """Replace a top-level block (rate_limits, tags, ai_gateway): a hot change."""
        with self._open() as session:
            current = self._current(session.store, name)
            probe, _ = self._validated({"name": name, part: value}, session)
            doc = copy.deepcopy(current)
            if part in probe:
                doc[part] = probe[part]
            else:
                doc.pop(part, None)
        self._run(doc, {}, actor, background=False)
        return doc

    def preview(self, body: Any, actor: Principal) -> tuple[Plan | None, list[tuple[str, str]]]:
        """The plan `body` (a whole endpoint) would carry out, made as `actor` and applied by
        nothing; or, when the body breaks a spec rule, (None, [(field path, message)])."""
        spec, diagnostics = validate_endpoint(body)
        errors = [
            (format_path(d.path), f"{d.message} [{d.rule}]") for d in diagnostics if d.is_error
        ]
        if spec is None or errors:
            return None, errors or [("", "invalid endpoint")]
        with self._open(actor) as session:
            assert session.secrets is not None
            doc, _ = canonical_body(spec, session.secrets)
            return plan_endpoint(session, doc), []

    def put(self, body: Any, actor: Principal) -> str:
        """Create or change an endpoint as a whole (the UI's Apply): the same plan and apply
        as create and update_config; answers once the change is pending or done."""
        with self._open() as session:
            doc, plaintexts = self._validated(body, session)
        return self._run(doc, plaintexts, actor, background=True)

    def cancel(self, name: str, actor: Principal) -> None:
        """Stop the config update in progress (`cancel_update`); 409 when none runs."""
        try:
            with Session(self.state_path, actor) as session:
                cancel_update(session, name)
        except NothingToCancel as exc:
            raise ApiError(409, "RESOURCE_CONFLICT", exc.message) from None
        except WorkflowError as exc:
            raise _api_error(exc) from None

    def delete(self, name: str, actor: Principal) -> None:
        with self._open() as session:
            self._current(session.store, name, allow_unfinished=True)
        self._run({"name": name}, {}, actor, background=False, delete=True)

    # -- the shared path ----------------------------------------------------------------------

    def _run(
        self,
        doc: Canonical,
        plaintexts: dict[str, str],
        actor: Principal,
        *,
        background: bool,
        delete: bool = False,
    ) -> str:
        """Lock, plan this one endpoint and apply it (the workflow's path). In the background,
        answer once the new config is pending; the apply goes on holding the lock."""
        started = threading.Event()
        outcome: dict[str, Any] = {}

        def finish() -> None:
            try:
                with Session(self.state_path, actor) as session:
                    assert session.store is not None
                    holder = f"api:{actor.name}"

                    def make(lock_id: str | None) -> tuple[Plan, None]:
                        return plan_endpoint(session, doc, delete=delete, lock_id=lock_id), None

                    with planned_and_locked(
                        session, make, "api", holder=holder, timeout=LOCK_WAIT
                    ) as (plan, _, lock):
                        outcome["report"] = apply_plan(
                            session,
                            plan,
                            lock_id=lock or "",
                            executors=self.executors(),
                            plaintexts=plaintexts,
                            on_event=lambda e: _mark(e, started),
                            drain=self.drain,
                        )
            except BaseException as exc:  # noqa: BLE001 - reported to the caller below
                outcome["error"] = exc
            finally:
                started.set()
                self.on_change()

        if background:
            threading.Thread(target=finish, name=f"apply-{doc['name']}", daemon=True).start()
            started.wait()
        else:
            finish()
        error = outcome.get("error")
        if error is not None:
            raise _api_error(error)
        report = outcome.get("report")
        if report is not None and not report.ok:
            if not background:
                raise ApiError(500, "INTERNAL_ERROR", "; ".join(report.failed.values()))
            if not self._exists(doc["name"]):
                # Failed before anything was recorded: say why, not a 404 for what was accepted.
                raise _invalid("; ".join(report.failed.values()))
        return doc["name"]

    def _exists(self, name: str) -> bool:
        with self._open() as session:
            assert session.store is not None
            return session.store.get_endpoint(name) is not None

    # -- helpers -----------------------------------------------------------------------------

    def _current(
        self, store: StateStore | None, name: str, *, allow_unfinished: bool = False
    ) -> Canonical:
        assert store is not None
        row = store.get_endpoint(name)
        if row is not None and row.spec is None and row.in_progress and not allow_unfinished:
            # GET shows it being created: say so rather than deny that it exists.
            raise ApiError(
                409,
                "RESOURCE_CONFLICT",
                f"endpoint {name!r} is being created; retry when its update finishes",
            )
        if row is None or (row.spec is None and not allow_unfinished):
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"endpoint {name!r} does not exist")
        return row.spec or {"name": name}

    @contextlib.contextmanager
    def _open(self, principal: Principal | None = None) -> Iterator[Session]:
        try:
            with Session(self.state_path, principal) as session:
                yield session
        except WorkflowError as exc:
            raise _api_error(exc) from None


def _mark(event: ApplyEvent, started: threading.Event) -> None:
    if event.step in ("pending", "deleted", "updated", "activated", "failed"):
        started.set()


def _where(diag: Any) -> str:
    path = format_path(diag.path)
    return f"{path}: " if path else ""


def _api_error(error: BaseException) -> BaseException:
    """The workflow's typed errors as the platform's HTTP errors; anything else as it is."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, StateLocked):
        return ApiError(
            409,
            "RESOURCE_CONFLICT",
            f"another change is in progress ({error.info.holder}, {error.info.operation}); "
            "retry when it finishes",
        )
    if isinstance(error, PlanErrored):
        status, code = (
            (409, "RESOURCE_CONFLICT")
            if RuleId.L1 in error.rules
            else (403, "PERMISSION_DENIED")
            if RuleId.SEC2 in error.rules
            else (400, "INVALID_PARAMETER_VALUE")
        )
        return ApiError(status, code, error.message)
    if isinstance(error, WorkflowError):
        return _invalid(error.message)
    return error
