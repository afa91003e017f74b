"""`engine plan`, `engine apply`, `engine destroy`, `engine show`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from engine.apply import Applier, ApplyEvent, PlanNotApplicable
from engine.catalog.models import ModelCatalog
from engine.cli.output import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, EXIT_USAGE, fail
from engine.executors import cli_executors
from engine.host.inventory import entity_checker
from engine.secrets.store import SecretStore, SecretStoreError
from engine.specs.loader import SpecUsageError, load_specs
from engine.state import EntityRow, LockHeld, SqliteStateStore, StateError
from engine.workspace import (
    actor_name,
    default_stack,
    desired_from,
    open_secrets,
    open_store,
)
from plans import (
    Plan,
    PlanFile,
    PlanFileError,
    make_plan,
    read_plan_file,
    render_plan_json,
    render_plan_text,
    write_plan_file,
)
from providers import ExecutorRegistry

__all__ = ["register"]

StateOpt = Annotated[
    Path | None,
    typer.Option("--state", help="State file (default: $ENGINE_STATE or .engine/state.db)."),
]
StackOpt = Annotated[
    str | None, typer.Option("--stack", help="Stack that owns these endpoints (default: spec dir).")
]
AllowReplaceOpt = Annotated[
    bool,
    typer.Option("--allow-replace", help="Replace endpoints whose create-only fields changed."),
]
LockTimeoutOpt = Annotated[
    float, typer.Option("--lock-timeout", help="Seconds to wait for the state lock.")
]


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_command)
    app.command("apply")(apply_command)
    app.command("destroy")(destroy_command)
    app.command("show")(show_command)


def _load(paths: list[Path]):  # noqa: ANN202 - LoadResult
    try:
        loaded = load_specs(paths)
    except SpecUsageError as exc:
        fail(str(exc), EXIT_USAGE)
    if not loaded.valid:
        for diag in loaded.diagnostics:
            typer.echo(diag.render(), err=True)
        fail(f"{len(loaded.errors)} problem(s) in the specs; nothing was planned")
    for diag in loaded.warnings:
        typer.echo(diag.render(), err=True)
    return loaded


def _make_plan(
    paths: list[Path],
    store: SqliteStateStore,
    secrets: SecretStore,
    *,
    stack: str | None,
    allow_replace: bool,
    destroy: bool = False,
    holding_lock: bool = False,
    loaded=None,  # noqa: ANN001 - a LoadResult already loaded from `paths`
):  # noqa: ANN202 - (Plan, DesiredSpecs)
    if loaded is None:
        loaded = _load(paths) if paths else None
    desired = desired_from(loaded, secrets) if loaded is not None else None
    plan = make_plan(
        desired.documents if desired else [],
        store.snapshot(holding_lock=holding_lock),
        stack=stack or default_stack(paths),
        allow_replace=allow_replace,
        destroy=destroy,
        secret_exists=secrets.has,
        entity_check=entity_checker(ModelCatalog(store)),
    )
    return plan, desired


def _print_plan(plan: Plan, as_json: bool = False) -> None:
    if as_json:
        typer.echo(render_plan_json(plan))
    else:
        typer.echo(render_plan_text(plan, colour=sys.stdout.isatty()), nl=False)


def plan_command(
    paths: Annotated[list[Path], typer.Argument(help="Spec files or directories.")],
    state: StateOpt = None,
    stack: StackOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    out: Annotated[
        Path | None, typer.Option("-out", "--out", help="Save the plan to this file.")
    ] = None,
    detailed_exitcode: Annotated[
        bool,
        typer.Option("--detailed-exitcode", help="Exit 0 no changes, 2 changes, 1 error."),
    ] = False,
    allow_replace: AllowReplaceOpt = False,
    destroy: Annotated[bool, typer.Option("--destroy", help="Plan to destroy the stack.")] = False,
) -> None:
    """Show what apply would change to make the endpoints match the specs."""
    with _session(state) as (store, secrets):
        plan, _ = _make_plan(
            paths, store, secrets, stack=stack, allow_replace=allow_replace, destroy=destroy
        )
        _print_plan(plan, as_json)
        if out is not None and not plan.errored:
            try:
                write_plan_file(
                    out, PlanFile(plan, [str(p.resolve()) for p in paths], allow_replace)
                )
            except OSError as exc:
                fail(f"cannot write plan file {out}: {exc.strerror}")
            if not as_json:
                typer.echo(f"Saved the plan to {out}. Apply it with: engine apply {out}")
    if plan.errored:
        raise typer.Exit(EXIT_ERROR)
    if detailed_exitcode and plan.has_changes:
        raise typer.Exit(EXIT_CHANGES)
    raise typer.Exit(EXIT_OK)


def apply_command(
    paths: Annotated[list[Path], typer.Argument(help="A saved plan file, or spec paths.")],
    state: StateOpt = None,
    stack: StackOpt = None,
    auto_approve: Annotated[
        bool, typer.Option("--auto-approve", help="Apply without asking for confirmation.")
    ] = False,
    lock_timeout: LockTimeoutOpt = 0.0,
    allow_replace: AllowReplaceOpt = False,
) -> None:
    """Apply a saved plan, or plan the specs, show the plan, confirm, and apply it."""
    saved = _saved_plan(paths)
    with _session(state) as (store, secrets), _locked(store, "apply", lock_timeout) as lock_id:
        if saved is not None:
            plan, desired = _reload_saved(saved, store, secrets)
        else:
            plan, desired = _make_plan(
                paths, store, secrets, stack=stack, allow_replace=allow_replace, holding_lock=True
            )
            _print_plan(plan)
            if plan.errored:
                raise typer.Exit(EXIT_ERROR)
            if not plan.has_changes:
                raise typer.Exit(EXIT_OK)
            _confirm(auto_approve, "apply")
        _run_apply(plan, store, secrets, desired.plaintexts if desired else {}, lock_id)


def destroy_command(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Spec paths (to name the stack).")
    ] = None,
    state: StateOpt = None,
    stack: StackOpt = None,
    auto_approve: Annotated[bool, typer.Option("--auto-approve")] = False,
    lock_timeout: LockTimeoutOpt = 0.0,
) -> None:
    """Delete every endpoint of a stack (and stop what serves them)."""
    if not paths and not stack:
        fail(
            "name the stack: `engine destroy PATH...` or `engine destroy --stack NAME`", EXIT_USAGE
        )
    stack_name = stack or default_stack(paths or [])
    with _session(state) as (store, secrets), _locked(store, "destroy", lock_timeout) as lock_id:
        plan = make_plan([], store.snapshot(holding_lock=True), stack=stack_name, destroy=True)
        _print_plan(plan)
        if not plan.has_changes:
            raise typer.Exit(EXIT_OK)
        _confirm(auto_approve, "destroy")
        _run_apply(plan, store, secrets, {}, lock_id)


def show_command(
    planfile: Annotated[Path | None, typer.Argument(help="A saved plan file.")] = None,
    state: StateOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show a saved plan, or the endpoints in the state."""
    if planfile is not None:
        try:
            saved = read_plan_file(planfile)
        except PlanFileError as exc:
            fail(str(exc))
        _print_plan(saved.plan, as_json)
        return
    from engine.cli.state import print_state_list

    with _session(state) as (store, _):
        print_state_list(store, as_json)


# -- helpers ----------------------------------------------------------------------------------


class _session:
    """Open state and secrets; turn their failures into one error line."""

    def __init__(self, state: Path | None) -> None:
        self.state = state

    def __enter__(self) -> tuple[SqliteStateStore, SecretStore]:
        try:
            self.store = open_store(self.state)
            self.secrets = open_secrets(self.state)
        except (StateError, SecretStoreError) as exc:
            fail(str(exc.message if isinstance(exc, SecretStoreError) else exc))
        return self.store, self.secrets

    def __exit__(self, exc_type, exc, tb) -> bool:  # noqa: ANN001
        self.store.close()
        self.secrets.close()
        if isinstance(exc, SecretStoreError):
            fail(exc.message)
        if isinstance(exc, StateError):
            fail(str(exc))
        return False


class _locked:
    def __init__(self, store: SqliteStateStore, operation: str, timeout: float) -> None:
        self.store, self.operation, self.timeout = store, operation, timeout

    def __enter__(self) -> str:
        try:
            info = self.store.acquire_lock(
                self.operation, holder=actor_name(), timeout=self.timeout
            )
        except LockHeld as exc:
            fail(
                f"the state is locked: {exc.info.describe()}. Wait, retry with --lock-timeout, "
                f"or if that process is gone: engine force-unlock {exc.info.id}"
            )
        self.lock_id = info.id
        return info.id

    def __exit__(self, *exc: object) -> None:
        self.store.release_lock(self.lock_id)


def _saved_plan(paths: list[Path]) -> PlanFile | None:
    if len(paths) != 1 or not paths[0].is_file():
        return None
    try:
        return read_plan_file(paths[0])
    except PlanFileError as exc:
        if paths[0].suffix in (".yaml", ".yml") or "not a serving-engine plan" in str(exc):
            return None
        if "not a readable plan file" in str(exc) and paths[0].suffix != ".json":
            return None
        fail(str(exc))


def _reload_saved(saved: PlanFile, store: SqliteStateStore, secrets: SecretStore):  # noqa: ANN202
    """Re-read the plan's specs for plaintexts; refuse if they no longer match the plan."""
    plan = saved.plan
    if not saved.sources:
        return plan, None
    try:
        loaded = load_specs([Path(s) for s in saved.sources])
    except SpecUsageError as exc:
        fail(f"the plan's specs are gone: {exc}")
    if not loaded.valid:
        fail("the plan's specs no longer validate; plan again")
    desired = desired_from(loaded, secrets)
    now = {doc["name"]: doc for doc in desired.documents}
    for change in plan.actionable:
        if change.desired is not None and now.get(change.endpoint) != change.desired:
            fail(f"the specs changed since the plan was made ({change.endpoint}); plan again")
    return plan, desired


def _confirm(auto_approve: bool, verb: str) -> None:
    if auto_approve:
        return
    if not sys.stdin.isatty():
        fail(f"refusing to {verb} without confirmation: no terminal; pass --auto-approve")
    answer = typer.prompt(f"Do you want to {verb} these changes? Only 'yes' will be accepted")
    if answer.strip() != "yes":
        fail(f"{verb} cancelled")


def _run_apply(
    plan: Plan,
    store: SqliteStateStore,
    secrets: SecretStore,
    plaintexts: dict[str, str],
    lock_id: str,
    *,
    executors: ExecutorRegistry | None = None,
    drain: Callable[[EntityRow], None] | None = None,
) -> None:
    """Apply with this process's executors (a serving host passes its own, and its drain)."""

    def show(event: ApplyEvent) -> None:
        who = f"{event.endpoint}/{event.entity}" if event.entity else event.endpoint
        typer.echo(f"{who}: {event.step}{': ' + event.message if event.message else ''}")

    if executors is None:
        try:
            executors = cli_executors(store.path)
        except (ImportError, AttributeError) as exc:
            fail(f"cannot load executor plugins: {exc}")
    applier = Applier(
        store,
        secrets,
        executors,
        actor=actor_name(),
        plaintexts=plaintexts,
        on_event=show,
        lock_id=lock_id,
        drain=drain,
    )
    try:
        report = applier.apply(plan)
    except PlanNotApplicable as exc:
        fail(str(exc))
    s = plan.summary
    if report.ok:
        typer.echo(
            f"Apply complete! Endpoints: {s.create} created, {s.update} updated, "
            f"{s.replace} replaced, {s.delete} destroyed."
        )
        return
    for endpoint, message in report.failed.items():
        typer.echo(f"error: {endpoint}: {message}", err=True)
    fail(f"{len(report.failed)} endpoint(s) failed; the old config keeps serving where it existed")
