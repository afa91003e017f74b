"""`--target NAME|URL` on plan, apply, destroy, refresh, import and show: parse, call
engine.remote, print. The local state stays the default target; these run only with --target."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.output import EXIT_CHANGES, EXIT_ERROR, EXIT_OK, fail, reported
from engine.remote import (
    RecordError,
    RemoteError,
    RemotePlan,
    RemoteReport,
    RemoteSession,
    TargetError,
    apply_remote,
    import_remote,
    plan_calls,
    plan_remote,
    refresh_remote,
    reload_remote_saved,
    resolve_target,
)
from engine.state import resolve_state
from engine.workflow import default_stack, load_desired, read_saved_plan
from plans import FieldChange, Plan, PlanFile, render_plan_text, write_plan_file

__all__ = [
    "TargetOpt",
    "remote_plan",
    "remote_apply",
    "remote_destroy",
    "remote_refresh",
    "remote_import",
    "remote_show",
    "print_calls",
]

TargetOpt = Annotated[
    str | None,
    typer.Option(
        "--target",
        help="A remote serving-endpoints API: a ~/.databrickscfg profile name, a URL "
        "(credentials from DATABRICKS_TOKEN), or `env` (default: the local state).",
    ),
]


@contextlib.contextmanager
def _session(target: str, state: str | None) -> Iterator[RemoteSession]:
    with reported():
        try:
            resolved = resolve_target(target)
            directory = resolve_state(state).local_dir / "targets"
            with RemoteSession.open(resolved, directory) as session:
                yield session
        except (TargetError, RecordError) as exc:
            fail(str(exc))
        except RemoteError as exc:
            fail(f"{target}: {exc}")


def _print(session: RemoteSession, rplan: RemotePlan, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(rplan.to_json(session.target), indent=2))
        return
    print_drift(rplan.drift, session.target.host)
    typer.echo(render_plan_text(rplan.plan, colour=sys.stdout.isatty()), nl=False)
    print_calls(rplan.plan, session.target.host)


def print_drift(drift: dict[str, list[FieldChange]], host: str) -> None:
    for name, changes in sorted(drift.items()):
        typer.echo(f"Drift: {name} changed on {host} outside the engine:")
        for change in changes:
            if change.after is None and change.path == "name":
                typer.echo("      - the endpoint was deleted")
            elif change.before is None:
                typer.echo(f"      + {change.path} = {json.dumps(change.after)}")
            elif change.after is None:
                typer.echo(f"      - {change.path} = {json.dumps(change.before)}")
            else:
                typer.echo(
                    f"      ~ {change.path}: {json.dumps(change.before)} -> "
                    f"{json.dumps(change.after)}"
                )
        typer.echo("")


def print_calls(plan: Plan, host: str) -> None:
    calls = plan_calls(plan)
    if not calls or plan.errored:
        return
    typer.echo(f"\nCalls to {host}, in order:")
    for number, call in enumerate(calls, 1):
        typer.echo(f"  {number}. {call.endpoint}: {call.describe()}")


def _print_report(report: RemoteReport, plan: Plan) -> None:
    typer.echo(f"Calls made: {len(report.calls_made)}")
    for line in report.calls_made:
        typer.echo(f"  {line}")
    if report.ok:
        s = plan.summary
        typer.echo(
            f"Apply complete! Endpoints: {s.create} created, {s.update} updated, "
            f"{s.replace} replaced, {s.delete} destroyed."
        )
        return
    for endpoint, message in report.failed.items():
        typer.echo(f"error: {endpoint}: {message}", err=True)
    fail(f"{len(report.failed)} endpoint(s) failed on the target")


def _on_event(line: str) -> None:
    typer.echo(line)


# -- commands ------------------------------------------------------------------------------------


def remote_plan(
    target: str,
    paths: list[Path],
    *,
    state: str | None,
    stack: str | None,
    as_json: bool,
    out: Path | None,
    detailed_exitcode: bool,
    allow_replace: bool,
    destroy: bool,
) -> None:
    with _session(target, state) as session:
        loaded = load_desired(paths) if paths else None
        rplan = plan_remote(
            session,
            loaded,
            stack=stack or default_stack(paths),
            allow_replace=allow_replace,
            destroy=destroy,
        )
        _print(session, rplan, as_json)
        if out is not None and not rplan.plan.errored:
            sources = [str(p.resolve()) for p in paths]
            try:
                write_plan_file(
                    out, PlanFile(rplan.plan, sources, allow_replace, session.target.host)
                )
            except OSError as exc:
                fail(f"cannot write plan file {out}: {exc.strerror}")
            if not as_json:
                typer.echo(
                    f"Saved the plan to {out}. Apply it with: engine apply {out} --target {target}"
                )
    if rplan.plan.errored:
        raise typer.Exit(EXIT_ERROR)
    # Drift alone is no change to apply (an endpoint deleted out of band and gone from the
    # specs too): 2 means apply would make calls.
    if detailed_exitcode and rplan.plan.has_changes:
        raise typer.Exit(EXIT_CHANGES)
    raise typer.Exit(EXIT_OK)


def remote_apply(
    target: str,
    paths: list[Path],
    *,
    state: str | None,
    stack: str | None,
    auto_approve: bool,
    allow_replace: bool,
    confirm: Callable[[bool, str], None],
) -> None:
    with reported():
        saved = read_saved_plan(paths)
    with _session(target, state) as session:
        if saved is not None:
            if saved.target != session.target.host:
                where = saved.target or "the local state"
                fail(f"the plan was made for {where}, not {session.target.host}; plan again")
            rplan = RemotePlan(saved.plan)
            if not rplan.plan.has_changes:
                typer.echo("The plan has no changes; nothing to apply.")
                raise typer.Exit(EXIT_OK)
            rplan.plaintexts = reload_remote_saved(session, saved.plan, saved.sources)
            print_calls(rplan.plan, session.target.host)
        else:
            loaded = load_desired(paths)
            rplan = plan_remote(
                session, loaded, stack=stack or default_stack(paths), allow_replace=allow_replace
            )
            _print(session, rplan, False)
            if rplan.plan.errored:
                raise typer.Exit(EXIT_ERROR)
            if not rplan.plan.has_changes:
                raise typer.Exit(EXIT_OK)
            confirm(auto_approve, "apply")
        report = apply_remote(session, rplan, on_event=_on_event)
        _print_report(report, rplan.plan)


def remote_destroy(
    target: str,
    stack: str,
    *,
    state: str | None,
    auto_approve: bool,
    confirm: Callable[[bool, str], None],
) -> None:
    with _session(target, state) as session:
        rplan = plan_remote(session, None, stack=stack, destroy=True)
        _print(session, rplan, False)
        if rplan.plan.errored:
            raise typer.Exit(EXIT_ERROR)
        if not rplan.plan.has_changes:
            raise typer.Exit(EXIT_OK)
        confirm(auto_approve, "destroy")
        report = apply_remote(session, rplan, on_event=_on_event)
        _print_report(report, rplan.plan)


def remote_refresh(target: str, *, state: str | None) -> None:
    with _session(target, state) as session:
        drift = refresh_remote(session)
        print_drift(drift, session.target.host)
        n = len(drift)
        typer.echo(f"Refresh complete: {n} endpoint{'' if n == 1 else 's'} drifted.")


def remote_import(target: str, name: str, stack: str, *, state: str | None) -> None:
    with _session(target, state) as session:
        import_remote(session, name, stack)
        typer.echo(f"{name} on {session.target.host} is now managed by stack {stack!r}.")


def remote_show(target: str, *, state: str | None, as_json: bool) -> None:
    """The target's endpoints, with the stack that manages each (from the record)."""
    with _session(target, state) as session:
        rows = []
        for item in session.client.list_endpoints():
            name = item.get("name")
            entry = session.record.endpoints.get(name)
            # The list's config summary has no version; the endpoint's own GET does.
            item = session.client.get_endpoint(name) or item
            rows.append(
                {
                    "name": name,
                    "config_version": (item.get("config") or {}).get("config_version"),
                    "state": item.get("state") or {},
                    "stack": entry.stack if entry else None,
                    "drift_recorded": bool(entry and entry.observed is not None),
                }
            )
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            typer.echo(f"{session.target.host} has no endpoints.")
        for row in rows:
            state_words = row["state"]
            typer.echo(
                f"{row['name']}\tversion {row['config_version'] or '-'}\t"
                f"{state_words.get('ready', '-')}\t{state_words.get('config_update', '-')}\t"
                f"stack {row['stack'] or '- (not managed: engine import)'}"
                + ("\tdrift recorded" if row["drift_recorded"] else "")
            )
