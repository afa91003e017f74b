"""Carry out a plan: exactly the changes it lists, each step recorded durably.

Per endpoint whose config changes:

1. write the new config as pending (IN_PROGRESS);
2. for each served entity not already running with the same fingerprint: record it
   (DEPLOYMENT_CREATING) *before* starting it, start it, wait until it is ready;
3. when all are ready, switch the active config atomically (one transaction);
4. stop the entities that only the old config used.

A failure in 2 stops what this update started, leaves the old config active and records
UPDATE_FAILED with the reason. A cancel (`engine cancel`, the REST route, the UI's "Cancel
update"; recorded in the state by `request_cancel`) does the same in 2 and records
UPDATE_CANCELED: the apply polls for it while it waits for an entity to become ready.
A crash anywhere leaves the state saying exactly what was done: the next apply (which takes
over the dead holder's lock) stops orphans and resumes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.access.secret_acls import resolver_as_creator
from engine.secrets.managed import delete_unused_managed_secrets, with_managed_references
from engine.secrets.store import SecretStore, SecretStoreError
from engine.state import WHOLE_STATE, EntityRow, StateStore
from plans import Action, EndpointChange, Plan, record_fingerprint
from providers import (
    Deployment,
    ExecutorError,
    ExecutorRegistry,
    ExecutorUnavailable,
    entity_fingerprint,
    entity_kind,
)
from providers.external import references_in
from schemas import DeploymentState, EntityRole

__all__ = ["ApplyEvent", "ApplyReport", "Applier", "PlanNotApplicable"]


class PlanNotApplicable(Exception):
    """The plan has errors, is stale, or needs something this process cannot provide."""


@dataclass(frozen=True)
class ApplyEvent:
    step: str
    endpoint: str
    entity: str | None = None
    message: str = ""


@dataclass
class ApplyReport:
    applied: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


class _EndpointFailed(Exception):
    pass


class _Canceled(Exception):
    """A cancel of this update was requested."""


# How often an apply waiting for an entity to become ready looks for a cancel request.
CANCEL_POLL_S = 0.25


class Applier:
    def __init__(
        self,
        store: StateStore,
        secrets: SecretStore,
        executors: ExecutorRegistry,
        *,
        actor: str,
        actor_kind: str = "operator",
        plaintexts: Mapping[str, str] | None = None,
        on_event: Callable[[ApplyEvent], None] | None = None,
        ready_timeout: float = 600.0,
        lock_id: str | None = None,
        drain: Callable[[EntityRow], None] | None = None,
    ) -> None:
        self.store = store
        self.secrets = secrets
        self.executors = executors
        self.actor = actor
        self.actor_kind = actor_kind
        self.plaintexts = plaintexts or {}
        self.on_event = on_event or (lambda event: None)
        self.ready_timeout = ready_timeout
        self.lock_id = lock_id
        # Called before an entity the old config used is stopped: the serving host waits until
        # no request is routed to it any more and the ones in flight have finished.
        self.drain = drain or (lambda row: None)
        self._stack: str | None = None

    # -- entry points -----------------------------------------------------------------------

    def check(self, plan: Plan) -> None:
        """Refuse before changing anything: errored or stale plans, missing executors."""
        if plan.errored:
            raise PlanNotApplicable("the plan has errors; fix them and plan again")
        self._check_locked(plan)
        snapshot = self.store.snapshot(lock_id=self.lock_id)
        if plan.state_lineage != snapshot.lineage:
            raise PlanNotApplicable(
                "the plan was made from another state (lineage "
                f"{plan.state_lineage}, this one is {snapshot.lineage}); plan again"
            )
        for change in plan.actionable:
            now = record_fingerprint(snapshot.endpoints.get(change.endpoint))
            if plan.basis.get(change.endpoint, "") != now:
                raise PlanNotApplicable(
                    f"the plan is stale: {change.endpoint} changed since it was planned "
                    f"(from state serial {plan.state_serial}); plan again"
                )
        for change in plan.actionable:
            for entity in _entities(change.desired):
                try:
                    executor = self.executors.for_entity(entity)
                except ExecutorUnavailable as exc:
                    raise PlanNotApplicable(f"{change.endpoint}: {exc.message}") from None
                # An executor that can stop but not start (the CLI's runner executor) applies
                # changes that start nothing of its kind: hot changes, deletes, reused entities.
                refusal = getattr(executor, "start_refusal", None)
                if refusal and self._starts(change, entity):
                    raise PlanNotApplicable(f"{change.endpoint}: {refusal}")

    def _check_locked(self, plan: Plan) -> None:
        """Every endpoint a plan changes must be under the applier's lock: updates of other
        endpoints run in parallel, so an unlocked one could be changed under our feet."""
        if self.lock_id is None or not plan.actionable:
            return
        held = next((i for i in self.store.locks() if i.id == self.lock_id), None)
        if held is None:
            raise PlanNotApplicable(
                f"the lock {self.lock_id or '(none)'} is not held (was it force-unlocked?); "
                "plan again"
            )
        if WHOLE_STATE in held.keys:
            return
        missing = sorted({c.endpoint for c in plan.actionable} - set(held.keys))
        if missing:
            raise PlanNotApplicable(f"not locked for this apply: {', '.join(missing)}")

    def apply(self, plan: Plan) -> ApplyReport:
        self.check(plan)
        self._stack = plan.stack or None
        self._stop_retiring()
        report = ApplyReport()
        for change in plan.actionable:
            try:
                self._apply_change(change)
                report.applied.append(change.endpoint)
            except _EndpointFailed as exc:
                report.failed[change.endpoint] = str(exc)
                self._emit("failed", change.endpoint, message=str(exc))
        return report

    def _starts(self, change: EndpointChange, entity: dict[str, Any]) -> bool:
        """Whether applying `change` starts a new instance of `entity` (as _apply_change and
        _update_config decide: only a config change starts anything, and an instance already
        READY with the same fingerprint is reused)."""
        if change.action is Action.REPLACE:
            return True
        row = self.store.get_endpoint(change.endpoint)
        if row is not None and row.spec is not None and not _changes_config(change):
            return False
        key = (entity["name"], entity_fingerprint(entity))
        running = {
            (r.name, r.fingerprint)
            for r in self.store.entities(change.endpoint)
            if r.role in (EntityRole.ACTIVE, EntityRole.PENDING)
            and r.deployment == DeploymentState.READY
        }
        return key not in running

    # -- one endpoint -------------------------------------------------------------------------

    def _apply_change(self, change: EndpointChange) -> None:
        if change.action is Action.DELETE:
            self._delete(change.endpoint)
            return
        if change.action is Action.REPLACE:
            self._delete(change.endpoint)
        desired = change.desired
        assert desired is not None
        row = self.store.get_endpoint(change.endpoint)
        if row is not None and row.spec is not None and not _changes_config(change):
            if row.in_progress:
                self._discard_pending(change.endpoint)
                self.store.clear_interrupted(change.endpoint, actor=self.actor)
            if change.fields:
                self.store.update_in_place(
                    change.endpoint, desired=desired, actor=self.actor, summary=_summary(change)
                )
                self._emit("updated", change.endpoint, message="updated in place")
            return
        self._update_config(change, desired)

    def _update_config(self, change: EndpointChange, desired: dict[str, Any]) -> None:
        name = change.endpoint
        version = change.config_version_to or 1
        try:
            configs = [
                with_managed_references(name, e, self.plaintexts, self.secrets)
                for e in _entities(desired)
            ]
        except (KeyError, SecretStoreError) as exc:
            raise _EndpointFailed(str(exc.args[0] if isinstance(exc, KeyError) else exc)) from None
        self.store.begin_update(
            name,
            stack=self._stack,
            desired=desired,
            version=version,
            actor=self.actor,
            actor_kind=self.actor_kind,
        )
        self._emit("pending", name, message=f"config version {version} pending")
        active = {
            (r.name, r.fingerprint): r
            for r in self.store.entities(name, EntityRole.ACTIVE)
            if r.deployment == DeploymentState.READY
        }
        leftovers = {
            (r.name, r.fingerprint): r for r in self.store.entities(name, EntityRole.PENDING)
        }
        keep: list[int] = []
        started: list[int] = []
        try:
            for entity, config in zip(_entities(desired), configs, strict=True):
                key = (entity["name"], entity_fingerprint(entity))
                reused = active.get(key)
                if (
                    reused is None
                    and key in leftovers
                    and leftovers[key].deployment == DeploymentState.READY
                ):
                    reused = leftovers.pop(key)
                if reused is not None:
                    keep.append(reused.id)
                    continue
                entity_id = self.store.add_entity(
                    name, name=key[0], fingerprint=key[1], config=config, config_version=version
                )
                keep.append(entity_id)
                started.append(entity_id)
                self._bring_up(Deployment(name, key[0], entity_id, config))
        except _Canceled:
            for entity_id in started:
                self._stop_entity_id(name, entity_id)
            self._discard_pending(name)
            message = f"config version {version} canceled; the previous config keeps serving"
            self.store.cancel_update(name, message, actor=self.actor)
            self._emit("canceled", name, message=message)
            raise _EndpointFailed(message) from None
        except ExecutorError as exc:
            for entity_id in started:
                self._stop_entity_id(name, entity_id)
            self._discard_pending(name)
            self.store.fail_update(name, exc.message, actor=self.actor)
            raise _EndpointFailed(exc.message) from None
        retiring = self.store.activate(name, keep=keep, actor=self.actor, summary=_summary(change))
        self._emit("activated", name, message=f"config version {version} active")
        for row in retiring:
            self.drain(row)
            self._stop(row)
        self._forget_unused_secrets(name)

    def _bring_up(self, deployment: Deployment) -> None:
        executor = self.executors.for_entity(deployment.config)
        self._emit("prepare", deployment.endpoint, deployment.entity)
        try:
            resolve = resolver_as_creator(
                self.store, self.store.get_endpoint(deployment.endpoint), self._resolve
            )
            executor.prepare(deployment, resolve)
            self._emit("start", deployment.endpoint, deployment.entity)
            handle = executor.start(deployment)
            self.store.update_entity(deployment.instance_id, handle=handle)
            self._emit("started", deployment.endpoint, deployment.entity)
            self._wait_ready(executor, deployment, handle)
        except ExecutorError as exc:
            self.store.update_entity(
                deployment.instance_id, deployment=DeploymentState.FAILED, message=exc.message
            )
            raise
        self.store.update_entity(
            deployment.instance_id, deployment=DeploymentState.READY, message=""
        )
        self._emit("ready", deployment.endpoint, deployment.entity)

    def _wait_ready(self, executor: Any, deployment: Deployment, handle: dict[str, Any]) -> None:
        """The executor's wait_ready, in a helper thread while this one watches for a cancel
        request: no executor needs to know about cancels (stopping the entity, which the
        cancel path does next, ends its wait)."""
        if self.store.cancel_requested(deployment.endpoint):
            raise _Canceled
        outcome: list[BaseException] = []
        done = threading.Event()

        def wait() -> None:
            try:
                executor.wait_ready(deployment, handle, self.ready_timeout)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the applier's thread
                outcome.append(exc)
            finally:
                done.set()

        threading.Thread(target=wait, name=f"ready-{deployment.label}", daemon=True).start()
        while not done.wait(CANCEL_POLL_S):
            if self.store.cancel_requested(deployment.endpoint):
                raise _Canceled
        if outcome:
            raise outcome[0]

    def _delete(self, name: str) -> None:
        if self.store.get_endpoint(name) is None:
            return
        for row in self.store.mark_deleting(name, actor=self.actor):
            self._stop(row)
        self.store.delete_endpoint(name, actor=self.actor)
        self._forget_unused_secrets(name)
        self._emit("deleted", name)

    # -- stopping -----------------------------------------------------------------------------

    def _stop_retiring(self) -> None:
        """Finish what a crashed apply left: entities of old configs still running."""
        for row in self.store.entities(role=EntityRole.RETIRING):
            self._stop(row)

    def _discard_pending(self, name: str) -> None:
        for row in self.store.entities(name, EntityRole.PENDING):
            self._stop(row)

    def _stop_entity_id(self, name: str, entity_id: int) -> None:
        for row in self.store.entities(name):
            if row.id == entity_id:
                self._stop(row)

    def _stop(self, row: EntityRow) -> None:
        deployment = Deployment(row.endpoint, row.name, row.id, row.config)
        self._emit("stop", row.endpoint, row.name)
        try:
            self.executors.for_entity(row.config).stop(deployment, row.handle)
        except ExecutorError as exc:
            raise _EndpointFailed(f"cannot stop {deployment.label}: {exc.message}") from None
        self.store.delete_entity(row.id)
        self._emit("stopped", row.endpoint, row.name)

    # -- helpers ------------------------------------------------------------------------------

    def _resolve(self, reference: str) -> str:
        try:
            return self.secrets.resolve(reference)
        except SecretStoreError:
            raise KeyError(reference) from None

    def _forget_unused_secrets(self, name: str) -> None:
        in_use = {ref for row in self.store.entities(name) for ref in _references(row.config)}
        delete_unused_managed_secrets(self.secrets, name, in_use)

    def _emit(self, step: str, endpoint: str, entity: str | None = None, message: str = "") -> None:
        if self.lock_id:
            self.store.renew_lock(self.lock_id)
        self.on_event(ApplyEvent(step, endpoint, entity, message))


def _entities(desired: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not desired:
        return []
    return list(desired.get("config", {}).get("served_entities") or [])


def _changes_config(change: EndpointChange) -> bool:
    return (
        change.action in (Action.CREATE, Action.REPLACE)
        or change.config_version_to != change.config_version_from
    )


def _references(value: Any) -> set[str]:
    return set(references_in(value))


def _summary(change: EndpointChange) -> dict[str, Any]:
    return {
        "action": change.action.value,
        "class": change.change_class.value,
        "fields": [f.path for f in change.fields],
    }


def needs_kind(plan: Plan, kind: str) -> bool:
    return any(entity_kind(e) == kind for c in plan.actionable for e in _entities(c.desired))
