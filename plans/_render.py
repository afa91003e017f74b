"""Plans as text (like Terraform's) and as JSON, both from the same structure."""

from __future__ import annotations

import json
from typing import Any

from ._model import Action, EndpointChange, Plan

__all__ = ["render_plan_text", "render_plan_json"]

_SYMBOL = {
    Action.CREATE: "  +",
    Action.UPDATE: "  ~",
    Action.REPLACE: "-/+",
    Action.DELETE: "  -",
}
_HEADLINE = {
    Action.CREATE: "will be created",
    Action.UPDATE: "will be updated in-place",
    Action.REPLACE: "must be replaced",
    Action.DELETE: "will be destroyed",
}
_LEGEND = {
    Action.CREATE: "create",
    Action.UPDATE: "update in-place",
    Action.REPLACE: "destroy and then create replacement",
    Action.DELETE: "destroy",
}
_COLOUR = {Action.CREATE: "32", Action.UPDATE: "33", Action.REPLACE: "35", Action.DELETE: "31"}


def render_plan_json(plan: Plan) -> str:
    return json.dumps(plan.to_json(), indent=2, sort_keys=False)


def render_plan_text(plan: Plan, *, colour: bool = False) -> str:
    def paint(text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if colour else text

    lines: list[str] = []
    errors = [(c, e) for c in plan.changes for e in c.errors]
    changes = plan.actionable
    if not changes and not errors:
        total = len(plan.changes)
        lines.append(
            f"No changes. The {total} endpoint{'' if total == 1 else 's'} of stack "
            f"{plan.stack!r} match the specs."
        )
        return "\n".join(lines) + "\n"
    if changes:
        present = [a for a in _LEGEND if any(c.action is a for c in changes)]
        lines.append("Actions are indicated with the following symbols:")
        for action in present:
            lines.append(f"{paint(_SYMBOL[action], _COLOUR[action])} {_LEGEND[action]}")
        lines.append("")
        lines.append("The engine will perform the following actions:")
        for change in changes:
            lines.append("")
            lines += _change_lines(change, paint)
        lines.append("")
        lines.append(str(plan.summary))
    for change, error in errors:
        where = f"{change.endpoint} {error.path}".rstrip()
        lines.append(paint(f"Error: [{error.rule}] {where}: {error.message}", "31"))
    return "\n".join(lines) + "\n"


def _change_lines(change: EndpointChange, paint: Any) -> list[str]:
    symbol = _SYMBOL[change.action]
    colour = _COLOUR[change.action]
    detail = [change.change_class.value]
    if change.config_version_to is not None and change.config_version_to != (
        change.config_version_from
    ):
        before = change.config_version_from if change.config_version_from is not None else "-"
        detail.insert(0, f"config_version {before} -> {change.config_version_to}")
    out = [f"  # {change.endpoint} {_HEADLINE[change.action]} ({', '.join(detail)})"]
    if change.reason:
        out.append(f"  # (because {change.reason})")
    out.append(f"{paint(symbol, colour)} endpoint {json.dumps(change.endpoint)} {{")
    if change.action is not Action.DELETE:
        for field in change.fields:
            out.append("      " + _field_line(field.path, field.before, field.after, paint))
    out.append("    }")
    return out


def _field_line(path: str, before: Any, after: Any, paint: Any) -> str:
    if before is None:
        return f"{paint('+', '32')} {path} = {_value(after)}"
    if after is None:
        return f"{paint('-', '31')} {path} = {_value(before)}"
    return f"{paint('~', '33')} {path}: {_value(before)} -> {_value(after)}"


def _value(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 200 else text[:197] + "..."
