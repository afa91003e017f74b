"""`engine plan`, `engine apply`, `engine destroy`, `engine show`: parse, call the workflow,
print."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from engine.apply import ApplyEvent, ApplyReport
from engine.cli import remote as cli_remote
from engine.cli.output import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, EXIT_USAGE, fail, reported
from engine.cli.remote import TargetOpt
from engine.executors import cli_executors
from engine.specs.loader import LoadResult
from engine.state import EntityRow
from engine.workflow import (
    DesiredSpecs,
    Session,
    actor_name,
    apply_plan,
    default_stack,
    load_desired,
    locked,
    plan_stack,
    planned_and_locked,
    read_saved_plan,
    reload_saved,
)
from plans import (
    Plan,
    PlanFile,
    PlanFileError,
    read_plan_file,
    render_plan_json,
    render_plan_text,
    write_plan_file,
)
from providers import ExecutorRegistry

__all__ = ["register"]

StateOpt = Annotated[
    str | None,
    typer.Option(
        "--state",
        help="State file or postgresql:// URL (default: $ENGINE_STATE or .engine/state.db).",
    ),
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


def load_specs_reporting(paths: list[Path]) -> LoadResult:
    """Load valid specs (else `SpecsInvalid`), printing their warnings."""
    loaded = load_desired(paths)
    for diag in loaded.warnings:
        typer.echo(diag.render(), err=True)
    return loaded


def print_plan(plan: Plan, as_json: bool = False) -> None:
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
    target: TargetOpt = None,
) -> None:
    """Show what apply would change to make the endpoints match the specs."""
    if target is not None:
        cli_remote.remote_plan(
            target,
            paths,
            state=state,
            stack=stack,
            as_json=as_json,
            out=out,
            detailed_exitcode=detailed_exitcode,
            allow_replace=allow_replace,
            destroy=destroy,
        )
    with reported(), Session(state) as session:
        loaded = load_specs_reporting(paths) if paths else None
        plan, _ = plan_stack(
            session,
            loaded,
            stack=stack or default_stack(paths),
            allow_replace=allow_replace,
            destroy=destroy,
        )
        print_plan(plan, as_json)
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
    target: TargetOpt = None,
) -> None:
    """Apply a saved plan, or plan the specs, show the plan, confirm, and apply it."""
    if target is not None:
        cli_remote.remote_apply(
            target,
            paths,
            state=state,
            stack=stack,
            auto_approve=auto_approve,
            allow_replace=allow_replace,
            confirm=_confirm,
        )
        return
    with reported():
        saved = read_saved_plan(paths)
        if saved is not None and saved.target is not None:
            fail(f"the plan was made for {saved.target}; apply it with --target")
        loaded = load_specs_reporting(paths) if saved is None else None
    with reported(), Session(state) as session:
        assert session.store is not None and session.secrets is not None
        if saved is not None:
            if not saved.plan.has_changes:
                typer.echo("The plan has no changes; nothing to apply.")
                raise typer.Exit(EXIT_OK)
            keys = sorted(c.endpoint for c in saved.plan.actionable)
            with locked(
                session.store, "apply", holder=actor_name(), keys=keys, timeout=lock_timeout
            ) as lock:
                plan, desired = reload_saved(saved, session.secrets)
                run_apply(session, plan, lock, desired.plaintexts)
            return

        def make(lock_id: str | None) -> tuple[Plan, DesiredSpecs]:
            return plan_stack(
                session,
                loaded,
                stack=stack or default_stack(paths),
                allow_replace=allow_replace,
                lock_id=lock_id,
            )

        with planned_and_locked(
            session, make, "apply", holder=actor_name(), timeout=lock_timeout
        ) as (plan, desired, lock):
            print_plan(plan)
            if plan.errored:
                raise typer.Exit(EXIT_ERROR)
            if lock is None:
                raise typer.Exit(EXIT_OK)
            _confirm(auto_approve, "apply")
            run_apply(session, plan, lock, desired.plaintexts)


def destroy_command(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Spec paths (to name the stack).")
    ] = None,
    state: StateOpt = None,
    stack: StackOpt = None,
    auto_approve: Annotated[bool, typer.Option("--auto-approve")] = False,
    lock_timeout: LockTimeoutOpt = 0.0,
    target: TargetOpt = None,
) -> None:
    """Delete every endpoint of a stack (and stop what serves them)."""
    if not paths and not stack:
        fail(
            "name the stack: `engine destroy PATH...` or `engine destroy --stack NAME`", EXIT_USAGE
        )
    stack_name = stack or default_stack(paths or [])
    if target is not None:
        cli_remote.remote_destroy(
            target, stack_name, state=state, auto_approve=auto_approve, confirm=_confirm
        )
        return
    with reported(), Session(state) as session:
        assert session.store is not None

        def make(lock_id: str | None) -> tuple[Plan, DesiredSpecs]:
            return plan_stack(session, None, stack=stack_name, destroy=True, lock_id=lock_id)

        with planned_and_locked(
            session, make, "destroy", holder=actor_name(), timeout=lock_timeout
        ) as (plan, _, lock):
            print_plan(plan)
            if lock is None:
                raise typer.Exit(EXIT_ERROR if plan.errored else EXIT_OK)
            _confirm(auto_approve, "destroy")
            run_apply(session, plan, lock, {})


def show_command(
    planfile: Annotated[Path | None, typer.Argument(help="A saved plan file.")] = None,
    state: StateOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    target: TargetOpt = None,
) -> None:
    """Show a saved plan, or the endpoints in the state (or on --target)."""
    if planfile is not None:
        try:
            saved = read_plan_file(planfile)
        except PlanFileError as exc:
            fail(str(exc))
        print_plan(saved.plan, as_json)
        if saved.target is not None and not as_json:
            cli_remote.print_calls(saved.plan, saved.target)
        return
    if target is not None:
        cli_remote.remote_show(target, state=state, as_json=as_json)
        return
    from engine.cli.state import print_state_list

    with reported(), Session(state) as session:
        assert session.store is not None
        print_state_list(session.store, as_json)


# -- helpers ----------------------------------------------------------------------------------


def _confirm(auto_approve: bool, verb: str) -> None:
    if auto_approve:
        return
    if not sys.stdin.isatty():
        fail(f"refusing to {verb} without confirmation: no terminal; pass --auto-approve")
    answer = typer.prompt(f"Do you want to {verb} these changes? Only 'yes' will be accepted")
    if answer.strip() != "yes":
        fail(f"{verb} cancelled")


def show_event(event: ApplyEvent) -> None:
    who = f"{event.endpoint}/{event.entity}" if event.entity else event.endpoint
    typer.echo(f"{who}: {event.step}{': ' + event.message if event.message else ''}")


def run_apply(
    session: Session,
    plan: Plan,
    lock_id: str,
    plaintexts: dict[str, str],
    *,
    executors: ExecutorRegistry | None = None,
    drain: Callable[[EntityRow], None] | None = None,
) -> None:
    """Apply with this process's executors (a serving host passes its own, and its drain),
    printing each step and the outcome; exit 1 if an endpoint failed."""
    if executors is None:
        try:
            executors = cli_executors(session.path)
        except (ImportError, AttributeError) as exc:
            fail(f"cannot load executor plugins: {exc}")
    report = apply_plan(
        session,
        plan,
        lock_id=lock_id,
        executors=executors,
        plaintexts=plaintexts,
        on_event=show_event,
        drain=drain,
    )
    _print_outcome(plan, report)


def _print_outcome(plan: Plan, report: ApplyReport) -> None:
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
