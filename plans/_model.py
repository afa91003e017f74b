"""The plan: a plain value that says what apply will do, endpoint by endpoint.

| action  | before (state)      | after (desired)   |
|---------|---------------------|-------------------|
| create  | none                | the new endpoint  |
| update  | the active config   | the new config    |
| replace | the active config   | the new endpoint (delete, then create: L4 fields) |
| delete  | the active config   | none              |
| no-op   | equal after normalisation                |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from schemas import RuleId

from ._canonical import Canonical

__all__ = [
    "Action",
    "ChangeClass",
    "EndpointChange",
    "FieldChange",
    "Plan",
    "PlanError",
    "PlanSummary",
]


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"
    NO_OP = "no-op"


class ChangeClass(StrEnum):
    """What carrying a change out costs. For explaining to users; apply never branches on it.

    hot: routing, rate limits, tags, gateway settings: no restart.
    warm: external-model settings or secrets: adapters re-registered.
    cold: a self-hosted entity starts, stops or changes: runner processes.
    """

    NONE = "none"
    HOT = "hot"
    WARM = "warm"
    COLD = "cold"


_CLASS_ORDER = [ChangeClass.NONE, ChangeClass.HOT, ChangeClass.WARM, ChangeClass.COLD]


def strongest(classes: list[ChangeClass]) -> ChangeClass:
    return max(classes, key=_CLASS_ORDER.index, default=ChangeClass.NONE)


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field: `before` / `after` are JSON values; sensitive values are never included."""

    path: str
    before: Any
    after: Any
    sensitive: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "before": self.before,
            "after": self.after,
            "sensitive": self.sensitive,
        }


@dataclass(frozen=True, slots=True)
class PlanError:
    """A forbidden transition or unresolved reference; it makes the whole plan unappliable."""

    rule: RuleId
    path: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "path": self.path, "message": self.message}


@dataclass
class EndpointChange:
    endpoint: str
    action: Action
    change_class: ChangeClass = ChangeClass.NONE
    # Config versions: `config_version_to` is set only when `config` itself changes.
    config_version_from: int | None = None
    config_version_to: int | None = None
    fields: list[FieldChange] = field(default_factory=list)
    errors: list[PlanError] = field(default_factory=list)
    # The desired canonical document (secrets as keyed hashes); None for delete.
    desired: Canonical | None = None
    # Why, in words (e.g. "resumes an interrupted update"); never used by apply.
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "action": self.action.value,
            "class": self.change_class.value,
            "config_version": {"from": self.config_version_from, "to": self.config_version_to},
            "fields": [f.to_json() for f in self.fields],
            "errors": [e.to_json() for e in self.errors],
            "reason": self.reason,
        }


@dataclass(frozen=True)
class PlanSummary:
    create: int
    update: int
    replace: int
    delete: int

    def __str__(self) -> str:
        # Public API: CI greps for this line.
        return (
            f"Plan: {self.create} to create, {self.update} to update, "
            f"{self.replace} to replace, {self.delete} to destroy."
        )


@dataclass
class Plan:
    """Everything apply needs, and nothing secret.

    `errored`: some change breaks a rule; the plan is shown but cannot be applied.
    `state_lineage` / `state_serial`: the state this plan was made from. `basis`: the
    fingerprint of each endpoint it changes as planned (`record_fingerprint`); apply refuses a
    plan for another state or one whose endpoints moved on since (a stale plan).
    """

    stack: str
    state_lineage: str
    state_serial: int
    changes: list[EndpointChange] = field(default_factory=list)
    destroy: bool = False
    basis: dict[str, str | None] = field(default_factory=dict)

    @property
    def errored(self) -> bool:
        return any(c.errors for c in self.changes)

    @property
    def actionable(self) -> list[EndpointChange]:
        return [c for c in self.changes if c.action is not Action.NO_OP]

    @property
    def has_changes(self) -> bool:
        return bool(self.actionable)

    @property
    def summary(self) -> PlanSummary:
        count = {a: 0 for a in Action}
        for change in self.changes:
            count[change.action] += 1
        return PlanSummary(
            count[Action.CREATE], count[Action.UPDATE], count[Action.REPLACE], count[Action.DELETE]
        )

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        return {
            "stack": self.stack,
            "state": {"lineage": self.state_lineage, "serial": self.state_serial},
            "errored": self.errored,
            "has_changes": self.has_changes,
            "summary": {
                "create": s.create,
                "update": s.update,
                "replace": s.replace,
                "delete": s.delete,
            },
            "changes": [c.to_json() for c in self.actionable],
        }
