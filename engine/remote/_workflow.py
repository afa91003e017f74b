"""Plan and apply against a remote target: read (GET), normalise, plan with the same pure
planner as locally (`plans.make_plan`: E2, L1, L4, O1... refused before any call), then carry
the plan out as HTTP calls like a careful operator.

Apply, per endpoint, in plan order: wait until the endpoint is NOT_UPDATING, send one call
(a 409 RESOURCE_CONFLICT is retried with backoff by the client), and after a config call wait
again; UPDATE_FAILED fails that endpoint with the platform's message. Every call made is in the
report, also when a later one failed, and the target's record is saved whatever happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.remote._calls import Call, MissingPlaintext, plan_calls, resolve_body
from engine.remote._client import RemoteClient, RemoteError
from engine.remote._normalise import normalise, write_only_paths
from engine.remote._record import EndpointEntry, TargetRecord
from engine.remote._target import Target
from engine.specs.loader import LoadResult, SpecUsageError, load_specs
from engine.workflow import PlanErrored, WorkflowError
from plans import (
    Canonical,
    EndpointRecord,
    FieldChange,
    Plan,
    StateSnapshot,
    canonical_endpoint,
    diff_documents,
    is_sensitive,
    make_plan,
    render_path,
)
from schemas import ConfigUpdateState, now_ms

__all__ = [
    "RemoteSession",
    "RemotePlan",
    "RemoteReport",
    "plan_remote",
    "apply_remote",
    "refresh_remote",
    "import_remote",
    "reload_remote_saved",
    "remote_basis",
    "StalePlan",
]

# How long apply waits for one endpoint's update to finish.
WAIT_TIMEOUT_S = 1200.0
_POLL_S = 0.5
_PROGRESS_EVERY_S = 10.0


class StalePlan(WorkflowError):
    """The remote moved since the saved plan was made."""


@dataclass
class RemoteSession:
    """One target: its client and its local record (under `directory`)."""

    target: Target
    client: RemoteClient
    record: TargetRecord
    sleep: Callable[[float], None] = time.sleep
    wait_timeout: float = WAIT_TIMEOUT_S

    @classmethod
    def open(cls, target: Target, directory: Path, **client_options: Any) -> RemoteSession:
        record = TargetRecord.open(directory, target.key, target.host)
        return cls(target, RemoteClient(target, **client_options), record)

    def close(self) -> None:
        self.client.close()
        self.record.close()

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class RemotePlan:
    plan: Plan
    # Endpoint -> fields changed on the target outside the engine since it last applied.
    drift: dict[str, list[FieldChange]] = field(default_factory=dict)
    # Keyed hash -> plaintext (memory only).
    plaintexts: dict[str, str] = field(default_factory=dict)

    @property
    def calls(self) -> list[Call]:
        return plan_calls(self.plan)

    def to_json(self, target: Target) -> dict[str, Any]:
        return {
            **self.plan.to_json(),
            "target": target.host,
            "calls": [
                {"endpoint": c.endpoint, "method": c.method, "path": c.path} for c in self.calls
            ],
            "drift": {n: [f.to_json() for f in fs] for n, fs in self.drift.items()},
        }


@dataclass
class RemoteReport:
    calls_made: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def remote_basis(detail: dict[str, Any] | None) -> str | None:
    """What a saved plan assumed about one endpoint: its config version and last update."""
    if detail is None:
        return None
    version = (detail.get("config") or {}).get("config_version")
    return f"config_version={version} last_updated_timestamp={detail.get('last_updated_timestamp')}"


# -- plan ----------------------------------------------------------------------------------------


def desired_documents(
    loaded: LoadResult | None, record: TargetRecord
) -> tuple[list[Canonical], dict[str, str]]:
    plaintexts: dict[str, str] = {}

    def digest(value: str) -> str:
        hashed = record.digest(value)
        plaintexts[hashed] = value
        return hashed

    docs = [canonical_endpoint(e.spec, digest) for e in loaded.endpoints] if loaded else []
    return docs, plaintexts


def plan_remote(
    session: RemoteSession,
    loaded: LoadResult | None,
    *,
    stack: str,
    allow_replace: bool = False,
    destroy: bool = False,
) -> RemotePlan:
    record = session.record
    docs, plaintexts = desired_documents(loaded, record)
    wanted = {d["name"]: d for d in docs}
    names = sorted(set(wanted) | set(record.endpoints))
    details = {n: _get(session, n) for n in names}
    endpoints: dict[str, EndpointRecord] = {}
    drift: dict[str, list[FieldChange]] = {}
    for name in names:
        entry, detail = record.endpoints.get(name), details[name]
        if detail is None:
            if entry is not None and entry.stack == stack and entry.applied is not None:
                drift[name] = [FieldChange("name", name, None)]  # deleted out of band
            continue
        reference = wanted.get(name) or (entry.applied if entry else None)
        endpoints[name] = _endpoint_record(session, name, detail, reference, entry)
        if entry is not None and entry.stack == stack and entry.applied is not None:
            live = _actual(session, detail, entry.applied, entry)
            changes = _field_changes(entry.applied, live)
            if changes:
                drift[name] = changes
    snapshot = StateSnapshot(record.lineage, record.serial, endpoints)
    plan = make_plan(docs, snapshot, stack=stack, allow_replace=allow_replace, destroy=destroy)
    plan.basis = {c.endpoint: remote_basis(details.get(c.endpoint)) for c in plan.actionable}
    return RemotePlan(plan, drift, plaintexts)


def _get(session: RemoteSession, name: str) -> dict[str, Any] | None:
    try:
        return session.client.get_endpoint(name)
    except RemoteError as exc:
        where = session.target.host
        raise WorkflowError(f"{where}: cannot read endpoint {name!r}: {exc}") from None


def _actual(
    session: RemoteSession,
    detail: dict[str, Any],
    reference: Canonical | None,
    entry: EndpointEntry | None,
) -> Canonical:
    hashes = entry.write_only if entry else {}
    return normalise(detail, reference, hashes, session.record.hash_value)


def _endpoint_record(
    session: RemoteSession,
    name: str,
    detail: dict[str, Any],
    reference: Canonical | None,
    entry: EndpointEntry | None,
) -> EndpointRecord:
    state = detail.get("state") or {}
    unfinished = "config" not in detail and "pending_config" in detail
    return EndpointRecord(
        name=name,
        spec=None if unfinished else _actual(session, detail, reference, entry),
        config_version=(detail.get("config") or {}).get("config_version"),
        config_update=state.get("config_update") or ConfigUpdateState.NOT_UPDATING,
        stack=entry.stack if entry else None,
    )


def _field_changes(before: Canonical, after: Canonical) -> list[FieldChange]:
    out = []
    for d in diff_documents(before, after):
        secret = d.sensitive or is_sensitive(d.before) or is_sensitive(d.after)
        out.append(
            FieldChange(
                render_path(d.path),
                "(sensitive value)" if secret and d.before is not None else d.before,
                "(sensitive value)" if secret and d.after is not None else d.after,
                sensitive=secret,
            )
        )
    return out


# -- saved plans ---------------------------------------------------------------------------------


def reload_remote_saved(session: RemoteSession, plan: Plan, sources: list[str]) -> dict[str, str]:
    """The plaintexts of a saved plan's specs; refuse a plan of another record or whose specs
    changed since."""
    if plan.state_lineage != session.record.lineage:
        raise WorkflowError(
            f"the plan was made for another record of {session.target.host} (lineage "
            f"{plan.state_lineage}, this one is {session.record.lineage}); plan again"
        )
    if not sources:
        return {}
    try:
        loaded = load_specs([Path(s) for s in sources])
    except SpecUsageError as exc:
        raise WorkflowError(f"the plan's specs are gone: {exc}") from None
    if not loaded.valid:
        raise WorkflowError("the plan's specs no longer validate; plan again")
    docs, plaintexts = desired_documents(loaded, session.record)
    now = {d["name"]: d for d in docs}
    for change in plan.actionable:
        if change.desired is not None and now.get(change.endpoint) != change.desired:
            raise WorkflowError(
                f"the specs changed since the plan was made ({change.endpoint}); plan again"
            )
    return plaintexts


def check_basis(session: RemoteSession, plan: Plan) -> None:
    """Refuse a plan when an endpoint it changes moved on the target since."""
    for name, planned in sorted(plan.basis.items()):
        now = remote_basis(_get(session, name))
        if now != planned:
            raise StalePlan(
                f"the plan is stale: endpoint {name!r} on {session.target.host} changed since "
                f"it was planned (planned from {planned or 'no endpoint'}, now "
                f"{now or 'no endpoint'}); plan again"
            )


# -- apply ---------------------------------------------------------------------------------------


def apply_remote(
    session: RemoteSession,
    rplan: RemotePlan,
    *,
    on_event: Callable[[str], None] | None = None,
    check_stale: bool = True,
) -> RemoteReport:
    """Carry out the plan's calls. Raises `PlanErrored` (nothing sent) for a plan with errors,
    `StalePlan` when the target moved; else returns the report of the calls made."""
    plan = rplan.plan
    if plan.errored:
        raise PlanErrored(plan)
    if check_stale:
        check_basis(session, plan)
    say = on_event or (lambda _: None)
    report = RemoteReport()
    calls = rplan.calls
    try:
        for change in plan.actionable:
            own = [c for c in calls if c.endpoint == change.endpoint]
            sent: set[str] = set()
            try:
                _apply_endpoint(session, change.endpoint, own, rplan.plaintexts, report, say, sent)
            except (RemoteError, MissingPlaintext, _UpdateFailed, _WaitTimeout) as exc:
                report.failed[change.endpoint] = str(exc)
                say(f"{change.endpoint}: failed: {exc}")
                _record_partial(session, change.endpoint, change.desired, plan.stack, sent)
                continue
            _record_applied(session, change.endpoint, change.desired, plan.stack)
    finally:
        session.record.save()
    return report


class _UpdateFailed(Exception):
    pass


class _WaitTimeout(Exception):
    pass


def _apply_endpoint(
    session: RemoteSession,
    name: str,
    calls: list[Call],
    plaintexts: dict[str, str],
    report: RemoteReport,
    say: Callable[[str], None],
    sent: set[str],
) -> None:
    for call in calls:
        if call.method != "POST":
            _wait_idle(session, name, say, before=call.describe())
        body = resolve_body(call.body, plaintexts) if call.body is not None else None
        try:
            session.client.request(call.method, call.path, body)
        except RemoteError as exc:
            # Said with the call, so the summary shows which call the apply stopped at.
            raise RemoteError(
                exc.status, exc.error_code, f"{call.describe()}: {exc.message}"
            ) from None
        report.calls_made.append(f"{name}: {call.describe()}")
        sent.update(call.parts)
        say(f"{name}: {call.describe()}: done")
        if call.starts_update:
            detail = _wait_idle(session, name, say, before="the config update to finish")
            state = (detail or {}).get("state") or {}
            if state.get("config_update") == ConfigUpdateState.UPDATE_FAILED:
                message = state.get("config_update_message") or "no message"
                raise _UpdateFailed(f"the config update failed on the target: {message}")


def _wait_idle(
    session: RemoteSession, name: str, say: Callable[[str], None], *, before: str
) -> dict[str, Any] | None:
    """Poll GET until the endpoint is not IN_PROGRESS (or gone); returns the last detail."""
    start = time.monotonic()
    said: float | None = None
    while True:
        detail = session.client.get_endpoint(name)
        state = ((detail or {}).get("state") or {}).get("config_update")
        if detail is None or state != ConfigUpdateState.IN_PROGRESS:
            return detail
        now = time.monotonic()
        if said is None or now - said >= _PROGRESS_EVERY_S:
            say(f"{name}: waiting for NOT_UPDATING before {before} ({now - start:.0f}s, {state})")
            said = now
        if now - start > session.wait_timeout:
            raise _WaitTimeout(
                f"timed out after {session.wait_timeout:.0f}s waiting for endpoint {name!r} to "
                f"reach NOT_UPDATING (before {before}); it is still {state}"
            )
        session.sleep(_POLL_S)


def _record_applied(
    session: RemoteSession, name: str, desired: Canonical | None, stack: str
) -> None:
    record = session.record
    if desired is None:
        record.endpoints.pop(name, None)
        return
    hashes = {r: record.hash_value(v) for r, (_, v) in write_only_paths(desired).items()}
    record.endpoints[name] = EndpointEntry(stack=stack, applied=desired, write_only=hashes)


def _record_partial(
    session: RemoteSession, name: str, desired: Canonical | None, stack: str, sent: set[str]
) -> None:
    """After a failed apply: what the calls that did succeed put on the target. A create whose
    update failed still made an endpoint, and it is this stack's to fix (not an O1)."""
    record = session.record
    entry = record.endpoints.get(name)
    if entry is None:
        try:
            exists = session.client.get_endpoint(name) is not None
        except RemoteError:
            exists = False
        if not exists:
            return
        entry = record.endpoints[name] = EndpointEntry(stack=stack)
    for rendered, (path, value) in write_only_paths(desired or {}).items():
        if path[0] in sent:
            entry.write_only[rendered] = record.hash_value(value)


# -- refresh and import --------------------------------------------------------------------------


def refresh_remote(session: RemoteSession) -> dict[str, list[FieldChange]]:
    """Read every endpoint the record knows and record what changed outside the engine."""
    drift: dict[str, list[FieldChange]] = {}
    for name, entry in sorted(session.record.endpoints.items()):
        detail = _get(session, name)
        if detail is None:
            # Deleted out of band: reported once, then forgotten (nothing left to manage; a
            # spec that still has it plans a create).
            drift[name] = [FieldChange("name", name, None)]
            del session.record.endpoints[name]
            continue
        if entry.applied is None:
            continue  # imported, never applied: nothing to compare with yet
        live = _actual(session, detail, entry.applied, entry)
        changes = _field_changes(entry.applied, live)
        entry.observed = live if changes else None
        entry.observed_at_ms = now_ms() if changes else None
        if changes:
            drift[name] = changes
    session.record.save()
    return drift


def import_remote(session: RemoteSession, name: str, stack: str) -> None:
    """Adopt an endpoint of the target into a stack (it must exist there)."""
    if _get(session, name) is None:
        raise WorkflowError(f"endpoint {name!r} does not exist on {session.target.host}")
    entry = session.record.endpoints.get(name)
    session.record.endpoints[name] = EndpointEntry(
        stack=stack,
        applied=entry.applied if entry else None,
        write_only=entry.write_only if entry else {},
    )
    session.record.save()
