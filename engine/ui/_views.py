"""What the pages show, as plain values: the endpoint list (filtered, paginated) and one
endpoint's page. Reads the state only; templates never reach into rows.

State words, as the Serving UI shows them:

| state.config_update | active config       | shown            |
|---------------------|---------------------|------------------|
| IN_PROGRESS         | none (being created)| Not ready        |
| IN_PROGRESS         | yes                 | Updating         |
| UPDATE_FAILED       |                     | Update failed    |
| UPDATE_CANCELED     |                     | Update canceled  |
| NOT_UPDATING        | every entity ready  | Ready            |
| NOT_UPDATING        | otherwise           | Not ready        |
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from engine.access.permissions import LEVELS, acl_json, level_in
from engine.access.tokens import Principal
from engine.control.views import endpoint_detail, strip_sensitive, task_of
from engine.state import EndpointRow, EntityRow, StateStore
from plans import diff_documents, render_path
from schemas import ConfigUpdateState, DeploymentState, EntityRole

__all__ = [
    "STATE_WORDS",
    "EndpointPage",
    "ListCache",
    "ListPage",
    "config_versions",
    "endpoint_page",
    "list_page",
    "state_word",
    "version_diff",
]

STATE_WORDS = ("ready", "not ready", "updating", "update failed", "update canceled")
PAGE_SIZE = 50


def state_word(row: EndpointRow, active: list[EntityRow]) -> str:
    if row.config_update == ConfigUpdateState.IN_PROGRESS:
        return "not ready" if row.spec is None else "updating"
    if row.config_update == ConfigUpdateState.UPDATE_FAILED:
        return "update failed"
    if row.config_update == ConfigUpdateState.UPDATE_CANCELED:
        return "update canceled"
    entities = (row.spec or {}).get("config", {}).get("served_entities") or []
    if not entities or (active and all(e.deployment == DeploymentState.READY for e in active)):
        return "ready"
    return "not ready"


def entity_label(entity: dict[str, Any]) -> str:
    """`name (provider/model)` or `name (catalog model vN)`: what the entity serves."""
    model = entity.get("external_model")
    if model:
        return f"{entity.get('name')} ({model.get('provider')}/{model.get('name')})"
    if entity.get("entity_name"):
        return f"{entity.get('name')} ({entity['entity_name']} v{entity.get('entity_version')})"
    return str(entity.get("name"))


@dataclass(frozen=True)
class ListItem:
    name: str
    state: str
    task: str
    entities: list[str]
    creator: str
    updated_ms: int
    tags: list[dict[str, str]]


@dataclass
class ListPage:
    items: list[ListItem]
    total: int
    page: int
    pages: int
    query: str = ""
    tag: str = ""
    state: str = ""


@dataclass(frozen=True)
class _Listed:
    """One endpoint as the list shows it, before the caller's filters and permissions."""

    id: str
    name_lower: str
    tag_pairs: frozenset[tuple[str, str]]
    tag_keys: frozenset[str]
    item: ListItem


class ListCache:
    """The list's rows of every endpoint, rebuilt only when the state's serial moved.

    Reading and parsing 1,000 endpoints' specs is most of a list page's time (bench/ui.py);
    every write to the state bumps its serial, so a cached copy under the same serial is the
    state as it is. Permissions are read on each request (they decide what a caller sees).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._serial = -1
        self._rows: list[_Listed] = []

    def rows(self, store: StateStore) -> list[_Listed]:
        serial = store.serial
        with self._lock:
            if serial == self._serial:
                return self._rows
        serial, view = store.serving_view()
        rows = [_listed(row, entities) for row, entities in view if not row.deleting]
        rows.sort(key=lambda r: r.item.name)
        with self._lock:
            if serial >= self._serial:
                self._serial, self._rows = serial, rows
        return rows


def _listed(row: EndpointRow, entities: list[EntityRow]) -> _Listed:
    spec = row.spec or row.pending or {}
    tags = spec.get("tags") or []
    active = [e for e in entities if e.role == EntityRole.ACTIVE]
    served = spec.get("config", {}).get("served_entities") or []
    item = ListItem(
        name=row.name,
        state=state_word(row, active),
        task=task_of(spec) or ("self-hosted" if served else ""),
        entities=[entity_label(e) for e in served],
        creator=row.creator,
        updated_ms=row.updated_ms,
        tags=tags,
    )
    pairs = frozenset((str(t.get("key")), str(t.get("value") or "")) for t in tags)
    return _Listed(row.id, row.name.lower(), pairs, frozenset(k for k, _ in pairs), item)


def list_page(
    store: StateStore,
    principal: Principal,
    *,
    query: str = "",
    tag: str = "",
    state: str = "",
    page: int = 1,
    cache: ListCache | None = None,
) -> ListPage:
    """The endpoints `principal` may view, filtered and paginated."""
    rows = (cache or ListCache()).rows(store)
    acls = {} if principal.admin else store.all_permissions()
    tag_key, _, tag_value = tag.partition("=")
    needle = query.lower()
    items = []
    for listed in rows:
        if needle and needle not in listed.name_lower:
            continue
        if tag_key and (
            (tag_key, tag_value) not in listed.tag_pairs
            if tag_value
            else tag_key not in listed.tag_keys
        ):
            continue
        if state and listed.item.state != state:
            continue
        if level_in(acls.get(listed.id, []), principal) is None:
            continue
        items.append(listed.item)
    pages = max(1, -(-len(items) // PAGE_SIZE))
    page = min(max(1, page), pages)
    shown = items[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    return ListPage(shown, len(items), page, pages, query, tag, state)


@dataclass
class EndpointPage:
    name: str
    state: str
    detail: dict[str, Any]
    level: str
    routes: list[dict[str, Any]]
    rate_limits: list[dict[str, Any]]
    ai_gateway: dict[str, Any]
    acl: list[dict[str, str]]
    history: list[dict[str, Any]]
    versions: list[int] = field(default_factory=list)

    def can(self, needed: str) -> bool:
        return LEVELS.index(self.level) >= LEVELS.index(needed)

    @property
    def updating(self) -> bool:
        return self.detail["state"]["config_update"] == ConfigUpdateState.IN_PROGRESS


_COLOURS = ("#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2")


def endpoint_page(store: StateStore, row: EndpointRow, level: str) -> EndpointPage:
    detail = endpoint_detail(store, row, level)
    active = [e for e in store.entities(row.name) if e.role == EntityRole.ACTIVE]
    spec = row.spec or {}
    routes = (spec.get("config") or {}).get("traffic_config", {}).get("routes") or []
    if not routes:
        served = (spec.get("config") or {}).get("served_entities") or []
        if len(served) == 1:
            routes = [{"served_entity_name": served[0]["name"], "traffic_percentage": 100}]
    acl = [
        {
            "who": next(v for k, v in entry.items() if k != "all_permissions"),
            "kind": next(k for k in entry if k != "all_permissions"),
            "level": entry["all_permissions"][0]["permission_level"],
        }
        for entry in acl_json(store, row.id)["access_control_list"]
    ]
    history = [
        {
            "at_ms": h.at_ms,
            "actor": h.actor,
            "action": h.action,
            "config_version": h.config_version,
            "message": (h.summary or {}).get("message", ""),
            "fields": (h.summary or {}).get("fields", []),
        }
        for h in reversed(store.history(row.name)[-100:])
    ]
    return EndpointPage(
        name=row.name,
        state=state_word(row, active),
        detail=detail,
        level=level,
        routes=[{**r, "colour": _COLOURS[i % len(_COLOURS)]} for i, r in enumerate(routes)],
        rate_limits=list(spec.get("rate_limits") or []),
        ai_gateway=strip_sensitive(spec.get("ai_gateway") or {}),
        acl=acl,
        history=history,
        versions=sorted(config_versions(store, row)),
    )


def config_versions(store: StateStore, row: EndpointRow) -> dict[int, dict[str, Any]]:
    """Each config version's `config` as recorded when it began (versions begun before the
    engine recorded them are absent), and the active one as it is."""
    out: dict[int, dict[str, Any]] = {}
    for item in store.history(row.name):
        config = (item.summary or {}).get("config")
        if item.action == "begin-update" and item.config_version and config is not None:
            out[item.config_version] = config
    if row.config_version is not None and row.spec is not None:
        out[row.config_version] = row.spec.get("config") or {}
    if row.pending_version is not None and row.pending is not None:
        out[row.pending_version] = row.pending.get("config") or {}
    return out


def version_diff(
    store: StateStore, row: EndpointRow, old: int, new: int
) -> list[dict[str, str]] | None:
    """The planner's field diff between two config versions (None: one is not recorded).
    Secrets show as changed, never as values."""
    versions = config_versions(store, row)
    if old not in versions or new not in versions:
        return None
    out = []
    for diff in diff_documents(versions[old], versions[new]):
        if diff.sensitive:
            before = after = "(secret changed)"
        else:
            before, after = _text(diff.before), _text(diff.after)
        kind = "+" if diff.before is None else "-" if diff.after is None else "~"
        out.append(
            {
                "kind": kind,
                "path": "config." + render_path(diff.path),
                "before": before,
                "after": after,
            }
        )
    return out


def _text(value: Any) -> str:
    return "" if value is None else json.dumps(strip_sensitive(value), sort_keys=True)
