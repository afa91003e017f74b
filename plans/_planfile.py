"""Plan files: the only module that knows their format.

A plan file holds the plan (changes, the desired documents with secrets as keyed hashes, the
state serial it was made from) and where its specs came from. It never holds a secret value:
apply re-reads the specs for plaintexts and refuses if they no longer match the plan.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas import RuleId

from ._model import Action, ChangeClass, EndpointChange, FieldChange, Plan, PlanError

__all__ = ["PlanFile", "PlanFileError", "read_plan_file", "write_plan_file", "FORMAT_VERSION"]

# 2: the per-endpoint basis replaced the whole state's serial as what makes a plan stale.
FORMAT_VERSION = 2
_KIND = "serving-engine-plan"


class PlanFileError(Exception):
    pass


@dataclass
class PlanFile:
    plan: Plan
    sources: list[str]
    allow_replace: bool = False
    # The remote host the plan was made against (`--target`); None: the local state.
    target: str | None = None


def write_plan_file(path: Path, planfile: PlanFile) -> None:
    plan = planfile.plan
    body = {
        "kind": _KIND,
        "format_version": FORMAT_VERSION,
        "sources": planfile.sources,
        "allow_replace": planfile.allow_replace,
        "target": planfile.target,
        "stack": plan.stack,
        "destroy": plan.destroy,
        "state": {"lineage": plan.state_lineage, "serial": plan.state_serial},
        "basis": plan.basis,
        "changes": [{**change.to_json(), "desired": change.desired} for change in plan.changes],
    }
    tmp = path.with_name(path.name + ".tmp")
    # Written whole and renamed: a crash never leaves half a plan file.
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(body, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_plan_file(path: Path) -> PlanFile:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanFileError(f"{path}: not a readable plan file ({exc})") from None
    if not isinstance(body, dict) or body.get("kind") != _KIND:
        raise PlanFileError(f"{path}: not a serving-engine plan file")
    if body.get("format_version") != FORMAT_VERSION:
        raise PlanFileError(
            f"{path}: plan file format {body.get('format_version')} is not supported "
            f"(this engine reads format {FORMAT_VERSION}); plan again"
        )
    try:
        plan = Plan(
            stack=body["stack"],
            state_lineage=body["state"]["lineage"],
            state_serial=int(body["state"]["serial"]),
            destroy=bool(body.get("destroy")),
            changes=[_change(c) for c in body["changes"]],
            basis={str(k): None if v is None else str(v) for k, v in body["basis"].items()},
        )
        target = body.get("target")
        return PlanFile(
            plan,
            list(body["sources"]),
            bool(body.get("allow_replace")),
            None if target is None else str(target),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise PlanFileError(f"{path}: damaged plan file ({exc})") from None


def _change(c: dict[str, Any]) -> EndpointChange:
    return EndpointChange(
        endpoint=c["endpoint"],
        action=Action(c["action"]),
        change_class=ChangeClass(c["class"]),
        config_version_from=c["config_version"]["from"],
        config_version_to=c["config_version"]["to"],
        fields=[
            FieldChange(f["path"], f["before"], f["after"], f["sensitive"]) for f in c["fields"]
        ],
        errors=[PlanError(RuleId(e["rule"]), e["path"], e["message"]) for e in c["errors"]],
        desired=c.get("desired"),
        reason=c.get("reason"),
    )
