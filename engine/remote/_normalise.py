"""A remote's `GET /serving-endpoints/{name}` as the canonical document plans compare.

One table says everything the server does to a body between create and read, so that a plan
made right after an apply is empty (no perpetual diff). Each row: where, which field, what kind
of server behaviour, and why.

| kind           | what the normaliser does                                              |
|----------------|-----------------------------------------------------------------------|
| read-only      | dropped: status the server adds (ids, timestamps, states, echoes)     |
| server default | dropped when the spec does not set the field and the server's value   |
|                | is the default (any value, for `ANY`)                                 |
| not comparable | the spec's value is taken when the condition holds                    |
| write-only     | never returned: compared by keyed hash in the target's record         |

Fields the spec does not have at all (a newer server's additions) are read-only too. Then the
same order rules as the local canonical form: entities by name (kept when fallback is on,
since fallback follows it), routes by entity, tags by key, rate-limit `key` defaulting to
`endpoint`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from plans import SENSITIVE, Canonical, render_path
from schemas import AiGatewayConfig, EndpointCoreConfigInput, EndpointSpec, ServedEntityInput

__all__ = ["Kind", "Rule", "RULES", "normalise", "write_only_paths", "PathT"]

PathT = tuple[Any, ...]
ANY = object()


class Kind(StrEnum):
    READ_ONLY = "read-only"
    DEFAULT = "server default"
    NOT_COMPARABLE = "not comparable"
    WRITE_ONLY = "write-only"


class Scope(StrEnum):
    ENDPOINT = "endpoint"
    CONFIG = "config"
    ENTITY = "config.served_entities[*]"
    ROUTE = "config.traffic_config.routes[*]"
    GATEWAY = "ai_gateway"
    CAPTURE = "config.auto_capture_config"


def _pay_per_token(entity: dict[str, Any]) -> bool:
    # Foundation Model APIs' pay-per-token entities (system.ai.*) have no compute of their own.
    return "foundation_model" in entity or str(entity.get("entity_name", "")).startswith(
        "system.ai."
    )


@dataclass(frozen=True)
class Rule:
    scope: Scope
    field: str  # a field name; `*_plaintext` matches every field with that suffix
    kind: Kind
    why: str
    default: Any = ANY
    when: Callable[[dict[str, Any]], bool] | None = None


R, S, K = Rule, Scope, Kind
RULES: tuple[Rule, ...] = (
    R(S.ENDPOINT, "id", K.READ_ONLY, "assigned by the server"),
    R(S.ENDPOINT, "creator", K.READ_ONLY, "who created it"),
    R(S.ENDPOINT, "creation_timestamp", K.READ_ONLY, "status"),
    R(S.ENDPOINT, "last_updated_timestamp", K.READ_ONLY, "status (the stale-plan basis)"),
    R(S.ENDPOINT, "state", K.READ_ONLY, "READY / config_update: status"),
    R(S.ENDPOINT, "pending_config", K.READ_ONLY, "an update under way, not the applied config"),
    R(S.ENDPOINT, "permission_level", K.READ_ONLY, "the caller's level"),
    R(S.ENDPOINT, "task", K.READ_ONLY, "derived from the entities"),
    R(S.ENDPOINT, "endpoint_type", K.READ_ONLY, "derived from the entities"),
    R(S.ENDPOINT, "data_plane_info", K.READ_ONLY, "route-optimized endpoints' URL"),
    R(S.ENDPOINT, "endpoint_url", K.READ_ONLY, "derived"),
    R(S.ENDPOINT, "tags", K.DEFAULT, "GET answers `tags: []` for none", default=[]),
    R(S.ENDPOINT, "route_optimized", K.DEFAULT, "read back false when never set", default=False),
    R(S.ENDPOINT, "description", K.DEFAULT, "read back empty when never set", default=""),
    R(S.ENDPOINT, "ai_gateway", K.DEFAULT, "an empty gateway block when none", default={}),
    R(S.ENDPOINT, "email_notifications", K.DEFAULT, "empty when none", default={}),
    R(S.ENDPOINT, "budget_policy_id", K.WRITE_ONLY, "the platform's GET never returns it"),
    R(S.ENDPOINT, "rate_limits", K.WRITE_ONLY, "legacy limits: GET returns no `rate_limits`"),
    R(S.CONFIG, "config_version", K.READ_ONLY, "the server's counter (the stale-plan basis)"),
    R(S.CONFIG, "served_models", K.READ_ONLY, "the legacy echo of served_entities"),
    R(S.CONFIG, "name", K.READ_ONLY, "the endpoint's name, echoed"),
    R(
        S.CONFIG,
        "traffic_config",
        K.DEFAULT,
        "a default split is read back when the spec gives none",
    ),
    R(S.ENTITY, "state", K.READ_ONLY, "deployment status"),
    R(S.ENTITY, "creator", K.READ_ONLY, "status"),
    R(S.ENTITY, "creation_timestamp", K.READ_ONLY, "status"),
    R(S.ENTITY, "foundation_model", K.READ_ONLY, "the pay-per-token model's description"),
    R(S.ENTITY, "workload_type", K.DEFAULT, "read back though never set", default="CPU"),
    R(S.ENTITY, "workload_size", K.DEFAULT, "read back though never set"),
    R(S.ENTITY, "environment_vars", K.DEFAULT, "empty when none", default={}),
    R(
        S.ENTITY,
        "scale_to_zero_enabled",
        K.NOT_COMPARABLE,
        "reads false on pay-per-token entities whatever was sent",
        when=_pay_per_token,
    ),
    R(S.ENTITY, "*_plaintext", K.WRITE_ONLY, "credentials are never returned"),
    R(S.ROUTE, "served_model_name", K.READ_ONLY, "the legacy echo of served_entity_name"),
    R(S.GATEWAY, "*_plaintext", K.WRITE_ONLY, "credentials are never returned"),
    R(S.CAPTURE, "state", K.READ_ONLY, "the payload table's status"),
)

# Fields a spec can hold at each scope; anything else the server sends is status.
_KNOWN = {
    S.ENDPOINT: set(EndpointSpec.model_fields),
    S.CONFIG: set(EndpointCoreConfigInput.model_fields),
    S.ENTITY: set(ServedEntityInput.model_fields),
    S.GATEWAY: set(AiGatewayConfig.model_fields),
}
_TOP_WRITE_ONLY = [r.field for r in RULES if r.scope is S.ENDPOINT and r.kind is K.WRITE_ONLY]


def normalise(
    detail: dict[str, Any],
    reference: Canonical | None,
    write_only: dict[str, str],
    hash_value: Callable[[Any], str],
) -> Canonical:
    """The canonical document of what the server returned. `reference` (the spec, or the last
    applied document) decides "never set"; `write_only` holds the recorded hashes by path."""
    ref = reference or {}
    doc = copy.deepcopy(detail)
    _apply(S.ENDPOINT, doc, ref)
    config, ref_config = doc.get("config"), ref.get("config") or {}
    if isinstance(config, dict):
        _apply(S.CONFIG, config, ref_config)
        ref_entities = {e.get("name"): e for e in ref_config.get("served_entities") or []}
        for entity in config.get("served_entities") or []:
            _apply(S.ENTITY, entity, ref_entities.get(entity.get("name")) or {})
        for route in (config.get("traffic_config") or {}).get("routes") or []:
            _apply(S.ROUTE, route, {})
        if isinstance(config.get("auto_capture_config"), dict):
            _apply(S.CAPTURE, config["auto_capture_config"], {})
        if not config.get("served_entities") and not ref_config:
            doc.pop("config")
    if isinstance(doc.get("ai_gateway"), dict):
        _apply(S.GATEWAY, doc["ai_gateway"], ref.get("ai_gateway") or {})
        doc["ai_gateway"] = {k: v for k, v in doc["ai_gateway"].items() if v not in ({}, None)}
        if not doc["ai_gateway"] and "ai_gateway" not in ref:
            doc.pop("ai_gateway")
    _order(doc)
    _write_only(doc, ref, write_only, hash_value)
    return doc


def _apply(scope: Scope, item: dict[str, Any], ref: dict[str, Any]) -> None:
    for rule in RULES:
        if rule.scope is not scope:
            continue
        for name in _matching(rule.field, item):
            if rule.kind is K.READ_ONLY:
                item.pop(name, None)
            elif rule.kind is K.DEFAULT:
                if name not in ref and (rule.default is ANY or item[name] == rule.default):
                    item.pop(name)
            elif rule.kind is K.NOT_COMPARABLE and rule.when is not None and rule.when(item):
                if name in ref:
                    item[name] = copy.deepcopy(ref[name])
                else:
                    item.pop(name)
    known = _KNOWN.get(scope)
    if known is not None:
        for name in [k for k in item if k not in known]:
            item.pop(name)


def _matching(pattern: str, item: dict[str, Any]) -> list[str]:
    if pattern.startswith("*"):
        return [k for k in item if k.endswith(pattern[1:])]
    return [pattern] if pattern in item else []


def _order(doc: Canonical) -> None:
    """The local canonical form's order rules (plans/_canonical.py), on a read-back body."""
    config = doc.get("config") or {}
    fallback = ((doc.get("ai_gateway") or {}).get("fallback_config") or {}).get("enabled")
    if config.get("served_entities") and not fallback:
        config["served_entities"].sort(key=lambda e: e.get("name") or "")
    routes = (config.get("traffic_config") or {}).get("routes")
    if routes is not None:
        if not routes:
            config.pop("traffic_config")
        else:
            routes.sort(key=lambda r: r.get("served_entity_name") or "")
    if doc.get("tags"):
        doc["tags"] = sorted(doc["tags"], key=lambda t: t.get("key") or "")
    for limits in (doc.get("rate_limits"), (doc.get("ai_gateway") or {}).get("rate_limits")):
        for limit in limits or []:
            limit.setdefault("key", "endpoint")


# -- write-only fields ---------------------------------------------------------------------------


def write_only_paths(doc: Canonical) -> dict[str, tuple[PathT, Any]]:
    """Every write-only field of a canonical document: rendered path -> (path, value)."""
    out: dict[str, tuple[PathT, Any]] = {}
    for name in _TOP_WRITE_ONLY:
        if name in doc:
            out[render_path((name,))] = ((name,), doc[name])
    for path, value in _plaintexts(doc, ()):
        out[render_path(path)] = (path, value)
    return out


def _plaintexts(value: Any, path: PathT) -> Iterator[tuple[PathT, Any]]:
    if isinstance(value, dict):
        if SENSITIVE in value:
            return
        for key, item in value.items():
            if key.endswith("_plaintext"):
                yield path + (key,), item
            elif key == "served_entities" and isinstance(item, list):
                for entity in item:
                    yield from _plaintexts(entity, path + (key, ("name", entity.get("name"))))
            else:
                yield from _plaintexts(item, path + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _plaintexts(item, path + (i,))


def _write_only(
    doc: Canonical,
    ref: Canonical,
    recorded: dict[str, str],
    hash_value: Callable[[Any], str],
) -> None:
    """Fill in what the server never returns from the record: the reference's own value when
    its hash matches the one recorded at apply, else a marker that differs from anything."""
    wanted = write_only_paths(ref)
    for rendered in set(wanted) | set(recorded):
        path = wanted[rendered][0] if rendered in wanted else _parse(rendered)
        if path is None:
            continue
        parent = _parent(doc, path)
        if parent is None or path[-1] in parent:
            continue  # the entity is gone, or the server did return the field
        recorded_hash = recorded.get(rendered)
        if recorded_hash is None:
            continue  # never applied by us: the plan shows it as added
        if rendered in wanted and hash_value(wanted[rendered][1]) == recorded_hash:
            parent[path[-1]] = copy.deepcopy(wanted[rendered][1])
        else:
            parent[path[-1]] = {SENSITIVE: "recorded:" + recorded_hash}


def _parent(doc: Any, path: PathT) -> dict[str, Any] | None:
    node = doc
    for part in path[:-1]:
        if isinstance(part, tuple):
            node = next((i for i in node or [] if i.get(part[0]) == part[1]), None)
        elif isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return None
        if node is None:
            return None
    return node if isinstance(node, dict) else None


def _parse(rendered: str) -> PathT | None:
    """'config.served_entities[a].external_model.x' -> a path (entities by name)."""
    out: list[Any] = []
    for piece in rendered.split("."):
        name, _, rest = piece.partition("[")
        if name:
            out.append(name)
        while rest:
            key, _, rest = rest.partition("]")
            rest = rest.lstrip("[")
            if key.isdigit():
                out.append(int(key))
            else:
                out.append(("name", key))
    return tuple(out) or None
