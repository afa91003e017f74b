"""Desired specs + a state snapshot -> a Plan. Pure: no I/O, no clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from schemas import (
    ConfigUpdateState,
    RuleId,
    find_secret_references,
    format_secret_reference,
)

from ._canonical import Canonical, is_sensitive
from ._capacity import ClusterCapacity, capacity_errors
from ._diff import FieldDiff, diff_documents, render_path
from ._model import (
    Action,
    ChangeClass,
    EndpointChange,
    FieldChange,
    Plan,
    PlanError,
    strongest,
)
from ._state import EndpointRecord, StateSnapshot, record_fingerprint

__all__ = [
    "SecretAccess",
    "make_plan",
    "has_self_hosted",
    "has_external",
    "secret_references",
    "secret_use_errors",
]

# Fields with no update API: changing them means a new endpoint (rule L4).
CREATE_ONLY_FIELDS = ("route_optimized", "description", "budget_policy_id")
SENSITIVE_BEFORE = "(sensitive value)"
SENSITIVE_AFTER = "(sensitive value changed)"

SecretExists = Callable[[str, str], bool]
# Why the principal planning may not use a secret scope in an endpoint: (endpoint, scope) ->
# a reason, or None when it may (the caller knows who plans and the ACLs; the planner does not).
SecretAccess = Callable[[str, str], str | None]
# What the running environment says about one served entity: (rule, message) problems, e.g.
# an unknown model version or a GPU workload on a host without GPUs.
EntityCheck = Callable[[dict[str, Any]], list[tuple[RuleId, str]]]


def make_plan(
    desired: Sequence[Canonical],
    state: StateSnapshot,
    *,
    stack: str | None,
    allow_replace: bool = False,
    destroy: bool = False,
    secret_exists: SecretExists | None = None,
    entity_check: EntityCheck | None = None,
    secret_access: SecretAccess | None = None,
    capacity: ClusterCapacity | None = None,
) -> Plan:
    """Plan the changes that make `state` equal `desired` for the endpoints of `stack`.

    Only endpoints of `stack` that left the specs are deleted, never others. With `destroy`,
    every endpoint of the stack is deleted. `stack=None` plans single-endpoint changes made
    through the REST API: any endpoint may change (its stack will see drift), none is deleted.
    `capacity`: the runner cluster's nodes (Ray backend); self-hosted entities must fit (C1, C2).
    """
    plan = Plan(
        stack=stack or "", state_lineage=state.lineage, state_serial=state.serial, destroy=destroy
    )
    wanted = {} if destroy else {doc["name"]: doc for doc in desired}
    for name, doc in wanted.items():
        change = _plan_endpoint(doc, state.endpoints.get(name), stack, allow_replace)
        denied: set[str] = set()
        if secret_access is not None:
            access_errors = secret_use_errors(change, secret_access)
            change.errors += access_errors
            # A reference the planner may not use is not checked for existence either: the
            # answer would tell whether another team's secret exists.
            denied = {e.path for e in access_errors}
        if secret_exists is not None and change.action is not Action.NO_OP:
            change.errors += [
                e for e in _unresolved_references(doc, secret_exists) if e.path not in denied
            ]
        if entity_check is not None and change.action is not Action.NO_OP:
            for entity in doc.get("config", {}).get("served_entities") or []:
                path = render_path(("config", "served_entities", ("name", entity.get("name"))))
                change.errors += [PlanError(r, path, m) for r, m in entity_check(entity)]
        if capacity is not None and change.action is not Action.NO_OP:
            record = state.endpoints.get(name)
            change.errors += capacity_errors(doc, record.spec if record else None, capacity)
        plan.changes.append(change)
    for name in sorted(state.endpoints):
        record = state.endpoints[name]
        if stack is not None and name not in wanted and record.stack == stack:
            plan.changes.append(_delete(record))
    plan.basis = {
        c.endpoint: record_fingerprint(state.endpoints.get(c.endpoint)) for c in plan.actionable
    }
    return plan


def _plan_endpoint(
    doc: Canonical, record: EndpointRecord | None, stack: str | None, allow_replace: bool
) -> EndpointChange:
    name = doc["name"]
    unfinished = record is not None and record.spec is None
    if record is None or (unfinished and (stack is None or record.stack in (None, stack))):
        version = (record.config_version or 0) if record else 0
        create = EndpointChange(
            endpoint=name,
            action=Action.CREATE,
            change_class=_class_of_endpoint(doc),
            config_version_from=None,
            config_version_to=version + 1 if "config" in doc else None,
            fields=_field_changes(diff_documents(None, doc)),
            desired=doc,
            reason=None if record is None else "a previous create did not finish",
        )
        if record is not None and _live_update(record):
            create.reason = None
            create.errors.append(
                PlanError(
                    RuleId.L1,
                    "name",
                    f"endpoint {name!r} is being created by another update; wait until it "
                    "finishes or fails, then plan again",
                )
            )
        return create
    change = EndpointChange(endpoint=name, action=Action.NO_OP, desired=doc)
    if stack is not None and record.stack != stack:
        owner = f"stack {record.stack!r}" if record.stack else "no stack (made through the API)"
        change.errors.append(
            PlanError(
                RuleId.O1,
                "name",
                f"endpoint {name!r} already exists and is managed by {owner}; adopt it with "
                f"`engine import {name} --stack {stack}` or rename this one",
            )
        )
        return change
    assert record.spec is not None
    diffs = diff_documents(record.spec, doc)
    if not diffs:
        if _live_update(record):
            # What it is being brought to may still fail: "no changes" would not be true yet.
            change.errors.append(
                PlanError(
                    RuleId.L1,
                    "config",
                    f"endpoint {name!r} has an update in progress; wait until it finishes or "
                    "fails, then plan again",
                )
            )
        if record.update_interrupted:
            change.action = Action.UPDATE
            change.reason = "cleans up an interrupted update"
            change.config_version_from = change.config_version_to = record.config_version
        return change
    change.fields = _field_changes(diffs)
    config_changed = any(d.path[0] == "config" for d in diffs)
    create_only = [d for d in diffs if d.path[0] in CREATE_ONLY_FIELDS]
    if create_only and allow_replace:
        change.action = Action.REPLACE
        change.change_class = strongest([_class_of_endpoint(record.spec), _class_of_endpoint(doc)])
        change.config_version_from = record.config_version
        change.config_version_to = 1 if "config" in doc else None
        change.reason = (
            "`" + "`, `".join(str(d.path[0]) for d in create_only) + "` cannot be updated"
        )
        return change
    for d in create_only:
        change.errors.append(
            PlanError(
                RuleId.L4,
                render_path(d.path),
                f"`{d.path[0]}` cannot be changed on an existing endpoint; revert it, or "
                "re-run with --allow-replace to delete and re-create the endpoint",
            )
        )
    change.action = Action.UPDATE
    change.change_class = strongest([_class_of_diff(d, record.spec, doc) for d in diffs])
    change.config_version_from = record.config_version
    if config_changed:
        change.config_version_to = (record.config_version or 0) + 1
    else:
        change.config_version_to = record.config_version
    if record.update_interrupted:
        change.reason = "resumes an interrupted update"
    change.errors += list(_transition_errors(record, doc, config_changed))
    return change


def _live_update(record: EndpointRecord) -> bool:
    """An update of this endpoint runs now (not one that a dead apply left behind)."""
    return record.config_update == ConfigUpdateState.IN_PROGRESS and not record.update_interrupted


def _delete(record: EndpointRecord) -> EndpointChange:
    spec = record.spec or {"name": record.name}
    return EndpointChange(
        endpoint=record.name,
        action=Action.DELETE,
        change_class=_class_of_endpoint(spec),
        config_version_from=record.config_version,
        config_version_to=None,
        fields=[FieldChange("name", record.name, None)],
    )


def _transition_errors(
    record: EndpointRecord, doc: Canonical, config_changed: bool
) -> Iterator[PlanError]:
    before = record.spec or {}
    if config_changed and _live_update(record):
        yield PlanError(
            RuleId.L1,
            "config",
            f"endpoint {record.name!r} has a config update in progress; wait until it "
            "finishes or fails, then plan again",
        )
    old_entities = before.get("config", {}).get("served_entities") or []
    new_entities = doc.get("config", {}).get("served_entities") or []
    if old_entities and new_entities and has_external(before) != has_external(doc):
        was = "with" if has_external(before) else "without"
        yield PlanError(
            RuleId.E2,
            "config.served_entities",
            f"endpoint {record.name!r} was created {was} an external model; an endpoint "
            "cannot switch between external and self-hosted models: create a new endpoint",
        )
    yield from _table_errors(
        RuleId.R7,
        before.get("ai_gateway", {}).get("inference_table_config"),
        doc.get("ai_gateway", {}).get("inference_table_config"),
        "ai_gateway.inference_table_config",
        reenable_allowed=True,
    )
    yield from _table_errors(
        RuleId.R8,
        before.get("config", {}).get("auto_capture_config"),
        doc.get("config", {}).get("auto_capture_config"),
        "config.auto_capture_config",
        reenable_allowed=False,
    )


def _table_errors(
    rule: RuleId,
    old: dict[str, Any] | None,
    new: dict[str, Any] | None,
    path: str,
    *,
    reenable_allowed: bool,
) -> Iterator[PlanError]:
    if not old or not new:
        return
    if old.get("enabled") and new.get("enabled"):
        for field in ("catalog_name", "schema_name", "table_name_prefix"):
            if old.get(field) != new.get(field):
                yield PlanError(
                    rule,
                    f"{path}.{field}",
                    f"`{field}` cannot change while the inference table is enabled; apply "
                    "once with `enabled: false`, then change it",
                )
    if not reenable_allowed and old.get("enabled") is False and new.get("enabled"):
        yield PlanError(
            rule,
            f"{path}.enabled",
            "legacy inference tables (auto_capture_config) cannot be re-enabled once "
            "disabled; use ai_gateway.inference_table_config",
        )


def _changes_config(change: EndpointChange) -> bool:
    """Creates, replaces and config updates: the changes that decide where secrets go."""
    if change.action in (Action.CREATE, Action.REPLACE):
        return True
    updates = change.action is Action.UPDATE
    return updates and any(f.path.startswith("config") for f in change.fields)


def secret_use_errors(change: EndpointChange, access: SecretAccess) -> list[PlanError]:
    """SEC2 errors for the references a change would start using that `access` refuses.

    Only creates, replaces and config updates decide where secrets are sent; a tags or rate
    limits change of an endpoint leaves its references as they were."""
    doc = change.desired
    if doc is None or not _changes_config(change):
        return []
    errors = []
    for path, scope, key in secret_references(doc):
        reason = access(doc["name"], scope)
        if reason is not None:
            errors.append(
                PlanError(
                    RuleId.SEC2,
                    path,
                    f"{format_secret_reference(scope, key)} may not be used: {reason}",
                )
            )
    return errors


def _unresolved_references(doc: Canonical, exists: SecretExists) -> list[PlanError]:
    errors = []
    for path, scope, key in secret_references(doc):
        if not exists(scope, key):
            errors.append(
                PlanError(
                    RuleId.SEC1,
                    path,
                    f"secret reference {format_secret_reference(scope, key)} does not resolve; "
                    f"create it with `engine secrets put-secret {scope} {key}`",
                )
            )
    return errors


def secret_references(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[str, str, str]]:
    """(path, scope, key) of every `{{secrets/scope/key}}` in a document."""
    if isinstance(doc, str):
        return [(render_path(path), scope, key) for scope, key in find_secret_references(doc)]
    if isinstance(doc, dict) and not is_sensitive(doc):
        if "served_entities" in doc:
            # Name entities in paths, as the rest of the plan does.
            rest = {k: v for k, v in doc.items() if k != "served_entities"}
            out = secret_references(rest, path)
            for entity in doc["served_entities"]:
                key = ("name", entity.get("name"))
                out += secret_references(entity, path + ("served_entities", key))
            return out
        return [r for k, v in doc.items() for r in secret_references(v, path + (k,))]
    if isinstance(doc, list):
        return [r for i, v in enumerate(doc) for r in secret_references(v, path + (i,))]
    return []


def has_external(doc: Canonical) -> bool:
    entities = doc.get("config", {}).get("served_entities") or []
    return any("external_model" in e for e in entities)


def has_self_hosted(doc: Canonical) -> bool:
    entities = doc.get("config", {}).get("served_entities") or []
    return any("external_model" not in e for e in entities)


def _class_of_endpoint(doc: Canonical) -> ChangeClass:
    if has_self_hosted(doc):
        return ChangeClass.COLD
    if has_external(doc):
        return ChangeClass.WARM
    return ChangeClass.HOT


def _class_of_diff(diff: FieldDiff, before: Canonical, after: Canonical) -> ChangeClass:
    path = diff.path
    if path[:2] == ("config", "served_entities"):
        if len(path) < 3 or not isinstance(path[2], tuple):
            return strongest([_class_of_endpoint(before), _class_of_endpoint(after)])
        name = path[2][1]
        entity = _entity(after, name) or _entity(before, name) or {}
        return ChangeClass.WARM if "external_model" in entity else ChangeClass.COLD
    return ChangeClass.HOT


def _entity(doc: Canonical, name: str) -> dict[str, Any] | None:
    for entity in doc.get("config", {}).get("served_entities") or []:
        if entity.get("name") == name:
            return entity
    return None


def _field_changes(diffs: list[FieldDiff]) -> list[FieldChange]:
    out = []
    for d in diffs:
        if is_sensitive(d.before) or is_sensitive(d.after):
            before = None if d.before is None else SENSITIVE_BEFORE
            after = None if d.after is None else (SENSITIVE_AFTER if before else SENSITIVE_BEFORE)
            out.append(FieldChange(render_path(d.path), before, after, sensitive=True))
        else:
            out.append(
                FieldChange(
                    render_path(d.path), _redact(d.before), _redact(d.after), sensitive=d.sensitive
                )
            )
    return out


def _redact(value: Any) -> Any:
    """Replace every keyed hash inside a value by a marker: plans show that, never what."""
    if is_sensitive(value):
        return SENSITIVE_BEFORE
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value
