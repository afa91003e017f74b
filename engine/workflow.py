"""The one path from specs to serving: load desired -> plan -> lock -> apply.

The CLI (`engine plan/apply/destroy`), `engine up` and the REST API all go through these
functions, so a rule checked in one place is checked in all of them. Nothing here prints: each
step returns values or raises a `WorkflowError` whose message is one line that is safe to show
(it never carries a secret value); callers decide how to report it (an `error:` line and an exit
code, an HTTP error body).
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from engine.access.secret_acls import CreatorAccess, operator_principal, secret_use_denial
from engine.access.tokens import Principal, TokenIndex
from engine.apply import Applier, ApplyEvent, ApplyReport, PlanNotApplicable
from engine.catalog.models import ModelCatalog
from engine.host.capacity import cluster_capacity
from engine.host.inventory import entity_checker
from engine.secrets.store import SecretStore, SecretStoreError, secret_store_for_state
from engine.specs.loader import LoadResult, SpecUsageError, load_specs
from engine.state import (
    RECONCILE_OP,
    SCALE_TO_ZERO_OP,
    WHOLE_STATE,
    EndpointRow,
    EntityRow,
    LockHeld,
    LockInfo,
    StateError,
    StateLocation,
    StateStore,
    open_state,
    resolve_state,
)
from engine.state._lock import holder_is_alive
from plans import (
    Canonical,
    Plan,
    PlanFile,
    PlanFileError,
    SecretAccess,
    StateSnapshot,
    canonical_endpoint,
    make_plan,
    read_plan_file,
    record_fingerprint,
    secret_use_errors,
)
from providers import ExecutorRegistry
from schemas import now_ms

T = TypeVar("T")

__all__ = [
    "ApplyFailed",
    "DesiredSpecs",
    "PlanErrored",
    "Session",
    "SpecsInvalid",
    "StateLocked",
    "planned_and_locked",
    "TOKEN_ENV_VAR",
    "UsageError",
    "WorkflowError",
    "actor_name",
    "apply_plan",
    "NothingToCancel",
    "cancel_update",
    "default_stack",
    "desired_from",
    "load_desired",
    "locked",
    "plan_endpoint",
    "plan_stack",
    "read_saved_plan",
    "reload_saved",
]

# A token of the state: the CLI then acts as its principal (else as the operator of the files).
TOKEN_ENV_VAR = "ENGINE_TOKEN"
# The private stack name under which the REST API plans the deletion of one endpoint.
_API_STACK = "\0api"


# -- errors -------------------------------------------------------------------------------------


class WorkflowError(Exception):
    """A problem to report in one line; `exit_code` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(WorkflowError):
    """The command line names something that cannot be read (no such file, a bad plan file)."""

    exit_code = 2


class SpecsInvalid(WorkflowError):
    """The specs have errors: `diagnostics` holds every problem (and warning) found."""

    def __init__(self, loaded: LoadResult) -> None:
        super().__init__(f"{len(loaded.errors)} problem(s) in the specs; nothing was planned")
        self.loaded = loaded


class StateLocked(WorkflowError):
    def __init__(self, info: LockInfo) -> None:
        what = "the state is locked" if WHOLE_STATE in info.keys else "an endpoint is locked"
        super().__init__(
            f"{what}: {info.describe()}. Wait, retry with --lock-timeout, "
            f"or if that process is gone: engine force-unlock {info.id}"
        )
        self.info = info


class PlanErrored(WorkflowError):
    """The plan has errors (forbidden transitions, unresolved secrets...): nothing was applied."""

    def __init__(self, plan: Plan) -> None:
        errors = [e for c in plan.changes for e in c.errors]
        super().__init__(
            "; ".join(f"{_where(e.path)}{e.message} [{e.rule}]" for e in errors) or "plan errored"
        )
        self.plan = plan
        self.rules = {e.rule for e in errors}


def _where(path: str) -> str:
    return f"{path}: " if path and path != "name" else ""


class ApplyFailed(WorkflowError):
    """Some endpoints failed to apply; the old config keeps serving where it existed."""

    def __init__(self, report: ApplyReport) -> None:
        super().__init__("; ".join(report.failed.values()))
        self.report = report


# -- who and where ------------------------------------------------------------------------------


def actor_name() -> str:
    """Who is acting, as recorded in the history: $ENGINE_ACTOR, else user@host."""
    explicit = os.environ.get("ENGINE_ACTOR")
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def cli_principal(store: StateStore) -> Principal:
    """Who the CLI acts as: the principal of `$ENGINE_TOKEN`, else the operator (an admin:
    whoever can open the state files can do everything the engine can)."""
    token = os.environ.get(TOKEN_ENV_VAR, "").strip()
    if not token:
        return operator_principal(actor_name())
    principal = TokenIndex.load(store).principal_for(f"Bearer {token}")
    if principal is None:
        raise UsageError(
            f"${TOKEN_ENV_VAR} is not a token of this state (create one with `engine tokens "
            "create`, or unset it to act as the operator)"
        )
    return principal


def secret_access(store: StateStore, principal: Principal) -> SecretAccess:
    """The planner's SEC2 check: `principal` must hold READ on every scope a config it writes
    references, and so must the endpoint's creator (its secrets resolve as the creator)."""
    acls = store.all_secret_acls()
    creators = CreatorAccess(acls, store.list_tokens())
    rows: dict[str, EndpointRow | None] = {}

    def access(endpoint: str, scope: str) -> str | None:
        reason = secret_use_denial(acls, principal, scope)
        if reason is not None:
            return reason
        if endpoint not in rows:
            rows[endpoint] = store.get_endpoint(endpoint)
        row = rows[endpoint]
        if row is None or (row.creator, row.creator_kind) == (principal.name, principal.kind):
            return None  # a new endpoint's creator is the principal itself
        return creators.denial(row, scope)

    return access


def default_stack(paths: Sequence[str | os.PathLike[str]]) -> str:
    """The spec directory's name (a file's parent directory)."""
    first = Path(paths[0]).resolve()
    return (first if first.is_dir() else first.parent).name or "default"


class Session:
    """The state store and the secret store of one state, opened together; their failures
    (a newer schema, an unreadable key file) become one `WorkflowError`.

    `principal` is who acts: the REST API passes the caller; the CLI leaves it None and acts
    as the principal of `$ENGINE_TOKEN`, else as the operator of the state files (an admin)."""

    def __init__(
        self, state: str | Path | StateLocation | None, principal: Principal | None = None
    ) -> None:
        self.path = resolve_state(state)
        self.store: StateStore | None = None
        self.secrets: SecretStore | None = None
        self._principal = principal

    @property
    def principal(self) -> Principal:
        if self._principal is None:
            assert self.store is not None, "session not entered"
            self._principal = cli_principal(self.store)
        return self._principal

    def __enter__(self) -> Session:
        try:
            self.store = open_state(self.path)
            self.secrets = secret_store_for_state(self.path)
        except (StateError, SecretStoreError) as exc:
            self.close()
            raise _state_error(exc) from None
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.close()
        if isinstance(exc, StateError | SecretStoreError):
            raise _state_error(exc) from None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self.secrets is not None:
            self.secrets.close()


def _state_error(exc: StateError | SecretStoreError) -> WorkflowError:
    return WorkflowError(exc.message if isinstance(exc, SecretStoreError) else str(exc))


# -- load ---------------------------------------------------------------------------------------


@dataclass
class DesiredSpecs:
    loaded: LoadResult | None
    documents: list[Canonical] = field(default_factory=list)
    # keyed hash -> plaintext, for moving `*_plaintext` values into the secret store.
    plaintexts: dict[str, str] = field(default_factory=dict)


def load_desired(paths: Sequence[str | os.PathLike[str]]) -> LoadResult:
    """Load and validate the specs; raise `SpecsInvalid` (with every diagnostic) if any error."""
    try:
        loaded = load_specs(paths)
    except SpecUsageError as exc:
        raise UsageError(str(exc)) from None
    if not loaded.valid:
        raise SpecsInvalid(loaded)
    return loaded


def desired_from(loaded: LoadResult, secrets: SecretStore) -> DesiredSpecs:
    """Canonical documents of valid specs; plaintexts kept in memory only."""
    desired = DesiredSpecs(loaded)
    digest = _digest_into(desired.plaintexts, secrets)
    desired.documents = [canonical_endpoint(e.spec, digest) for e in loaded.endpoints]
    return desired


def canonical_body(spec: object, secrets: SecretStore) -> tuple[Canonical, dict[str, str]]:
    """One validated endpoint (an `EndpointSpec`) as a canonical document plus its plaintexts."""
    plaintexts: dict[str, str] = {}
    return canonical_endpoint(spec, _digest_into(plaintexts, secrets)), plaintexts


def _digest_into(plaintexts: dict[str, str], secrets: SecretStore) -> Callable[[str], str]:
    def digest(value: str) -> str:
        hashed = secrets.digest(value)
        plaintexts[hashed] = value
        return hashed

    return digest


# -- plan ---------------------------------------------------------------------------------------


def plan_stack(
    session: Session,
    loaded: LoadResult | None,
    *,
    stack: str,
    allow_replace: bool = False,
    destroy: bool = False,
    lock_id: str | None = None,
) -> tuple[Plan, DesiredSpecs]:
    """The plan that makes a stack match its specs (`loaded` None: no specs, e.g. destroy).
    `lock_id`: the lock the caller holds on the endpoints the plan may change."""
    store, secrets = _opened(session)
    desired = desired_from(loaded, secrets) if loaded is not None else DesiredSpecs(None)
    plan = make_plan(
        desired.documents,
        store.snapshot(lock_id=lock_id),
        stack=stack,
        allow_replace=allow_replace,
        destroy=destroy,
        secret_exists=secrets.has,
        entity_check=entity_checker(ModelCatalog(store)),
        secret_access=secret_access(store, session.principal),
        capacity=cluster_capacity(ModelCatalog(store)),
    )
    return plan, desired


def plan_endpoint(
    session: Session, doc: Canonical, *, delete: bool = False, lock_id: str | None = None
) -> Plan:
    """The plan of one endpoint, whatever stack (if any) manages it: what the REST API applies.
    `lock_id`: the caller's lock on that endpoint, if it holds one."""
    store, secrets = _opened(session)
    snapshot = store.snapshot(lock_id=lock_id)
    name = doc["name"]
    if delete:
        # Exactly this endpoint, under a private stack name, destroyed: the planner's own
        # delete path.
        actual = snapshot.endpoints[name]
        record = dataclasses.replace(actual, stack=_API_STACK)
        only = StateSnapshot(snapshot.lineage, snapshot.serial, {name: record})
        plan = make_plan([], only, stack=_API_STACK, destroy=True)
        # Planned from the endpoint as it is, not the private stack's view of it.
        plan.basis = {name: record_fingerprint(actual)}
        return plan
    current = {name: snapshot.endpoints[name]} if name in snapshot.endpoints else {}
    return make_plan(
        [doc],
        StateSnapshot(snapshot.lineage, snapshot.serial, current),
        stack=None,
        secret_exists=secrets.has,
        entity_check=entity_checker(ModelCatalog(store)),
        secret_access=secret_access(store, session.principal),
        capacity=cluster_capacity(ModelCatalog(store)),
    )


# -- saved plans --------------------------------------------------------------------------------


def read_saved_plan(paths: Sequence[Path]) -> PlanFile | None:
    """The plan file `engine apply PLANFILE` names, or None when the paths are specs."""
    if len(paths) != 1 or not paths[0].is_file():
        return None
    try:
        return read_plan_file(paths[0])
    except PlanFileError as exc:
        if paths[0].suffix in (".yaml", ".yml") or "not a serving-engine plan" in str(exc):
            return None
        if "not a readable plan file" in str(exc) and paths[0].suffix != ".json":
            return None
        raise WorkflowError(str(exc)) from None


def reload_saved(saved: PlanFile, secrets: SecretStore) -> tuple[Plan, DesiredSpecs]:
    """Re-read a saved plan's specs for their plaintexts; refuse if they no longer match."""
    plan = saved.plan
    if not saved.sources:
        return plan, DesiredSpecs(None)
    try:
        loaded = load_specs([Path(s) for s in saved.sources])
    except SpecUsageError as exc:
        raise WorkflowError(f"the plan's specs are gone: {exc}") from None
    if not loaded.valid:
        raise WorkflowError("the plan's specs no longer validate; plan again")
    desired = desired_from(loaded, secrets)
    now = {doc["name"]: doc for doc in desired.documents}
    for change in plan.actionable:
        if change.desired is not None and now.get(change.endpoint) != change.desired:
            raise WorkflowError(
                f"the specs changed since the plan was made ({change.endpoint}); plan again"
            )
    return plan, desired


# -- lock and apply -----------------------------------------------------------------------------


# A reconcile pass restarts at most the runners that died; on a loaded machine that can take a
# while, and a command waiting for it is better than one failing.
RECONCILE_PASS_WAIT_S = 120.0
_BRIEF = (RECONCILE_OP, SCALE_TO_ZERO_OP)
# How often planning, locking what the plan changes and planning again may find that the
# changes grew (another endpoint drifted in between) before giving up.
_REPLAN_TRIES = 3


@contextlib.contextmanager
def locked(
    store: StateStore,
    operation: str,
    *,
    holder: str,
    keys: Sequence[str] = (WHOLE_STATE,),
    timeout: float = 0.0,
    on_wait: Callable[[LockInfo], None] | None = None,
) -> Iterator[str]:
    """Hold the locks of `keys` (endpoint names) for the block; yields the lock id. `on_wait`
    is told who holds one when they are not free at once (before waiting up to `timeout`
    seconds). A serving host's own passes (reconcile, scale to zero) are waited for (up to
    RECONCILE_PASS_WAIT_S) whatever `timeout` says: they are the engine's brief housekeeping,
    not another user's update, so `engine apply` beside a running `engine serve` must not fail
    on them."""
    try:
        info = store.acquire_lock(operation, holder=holder, keys=keys, timeout=0)
    except LockHeld as exc:
        wait = max(timeout, RECONCILE_PASS_WAIT_S if exc.info.operation in _BRIEF else 0)
        if wait <= 0:
            raise StateLocked(exc.info) from None
        if on_wait is not None:
            on_wait(exc.info)
        try:
            info = store.acquire_lock(operation, holder=holder, keys=keys, timeout=wait)
        except LockHeld as again:
            raise StateLocked(again.info) from None
    try:
        yield info.id
    finally:
        store.release_lock(info.id)


@contextlib.contextmanager
def planned_and_locked(
    session: Session,
    make: Callable[[str | None], tuple[Plan, T]],
    operation: str,
    *,
    holder: str,
    timeout: float = 0.0,
    on_wait: Callable[[LockInfo], None] | None = None,
) -> Iterator[tuple[Plan, T, str | None]]:
    """Plan with `make(None)`, lock the endpoints that plan changes, and plan again holding
    them (`make(lock_id)`): what is shown and applied is what was planned under the locks, and
    updates of other endpoints go on meanwhile. Yields the plan, what `make` returned beside it,
    and the lock id; None (nothing locked) for a plan with no changes or with errors, which
    cannot be applied anyway."""
    store, _ = _opened(session)
    plan, extra = make(None)
    keys = {c.endpoint for c in plan.actionable}
    for _ in range(_REPLAN_TRIES):
        if not keys or plan.errored:
            yield plan, extra, None
            return
        with locked(
            store, operation, holder=holder, keys=sorted(keys), timeout=timeout, on_wait=on_wait
        ) as lock_id:
            plan, extra = make(lock_id)
            grown = {c.endpoint for c in plan.actionable} - keys
            if not grown:
                yield plan, extra, lock_id
                return
        keys |= grown
    raise WorkflowError("the endpoints to change kept changing while planning; plan again")


def apply_plan(
    session: Session,
    plan: Plan,
    *,
    lock_id: str,
    executors: ExecutorRegistry,
    plaintexts: Mapping[str, str] | None = None,
    on_event: Callable[[ApplyEvent], None] | None = None,
    drain: Callable[[EntityRow], None] | None = None,
) -> ApplyReport:
    """Carry the plan out under the held lock, as the session's principal. Raises
    `PlanErrored` for a plan with errors and `WorkflowError` for one that cannot be applied
    (stale, needs a runner here); returns the report, whose `failed` lists endpoints that
    failed (their old config keeps serving)."""
    store, secrets = _opened(session)
    principal = session.principal
    # Checked again as whoever applies: a saved plan may have been made by someone else.
    access = secret_access(store, principal)
    for change in plan.actionable:
        known = {(e.rule, e.path) for e in change.errors}
        change.errors += [
            e for e in secret_use_errors(change, access) if (e.rule, e.path) not in known
        ]
    if plan.errored:
        raise PlanErrored(plan)
    applier = Applier(
        store,
        secrets,
        executors,
        actor=principal.name,
        actor_kind=principal.kind,
        plaintexts=plaintexts or {},
        on_event=on_event,
        lock_id=lock_id,
        drain=drain,
    )
    try:
        return applier.apply(plan)
    except PlanNotApplicable as exc:
        raise WorkflowError(str(exc)) from None


# How long `cancel_update` waits for the update's apply to stop what it started.
CANCEL_WAIT_S = 60.0


def cancel_update(session: Session, name: str, *, wait: float = CANCEL_WAIT_S) -> EndpointRow:
    """Stop the config update of `name` in progress (the CLI's `engine cancel`, the REST
    route, the UI's button): recorded in the state, carried out by the apply that runs the
    update, wherever it runs (a serving host, another CLI). Returns the endpoint once that
    apply has stopped (UPDATE_CANCELED), or as it is after `wait` seconds."""
    store, _ = _opened(session)
    row = store.get_endpoint(name)
    if row is None or row.deleting:
        raise WorkflowError(f"endpoint {name!r} does not exist")
    if not row.in_progress or row.pending_version is None:
        raise NothingToCancel(f"endpoint {name!r} has no config update in progress")
    live = [i for i in store.locks() if name in i.keys or WHOLE_STATE in i.keys]
    if not any(holder_is_alive(i, now_ms()) for i in live):
        raise NothingToCancel(
            f"the update of {name!r} is not running (the process that ran it is gone); "
            "the next apply of the endpoint recovers it"
        )
    if store.request_cancel(name, actor=session.principal.name) is None:
        raise NothingToCancel(f"endpoint {name!r} has no config update in progress")
    deadline = time.monotonic() + wait
    while True:
        now = store.get_endpoint(name)
        if now is None:
            raise WorkflowError(f"endpoint {name!r} was deleted meanwhile")
        if not now.in_progress or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


class NothingToCancel(WorkflowError):
    """No config update of the endpoint is running."""


def _opened(session: Session) -> tuple[StateStore, SecretStore]:
    assert session.store is not None and session.secrets is not None, "session not entered"
    return session.store, session.secrets
