"""The essence of an endpoint: the document that plans compare.

Normalising both sides the same way means no diff is ever perpetual: default entity names are
filled in, a single entity's implied 100% route is written out, `served_model_name` becomes
`served_entity_name`, entities and routes are sorted where order means nothing (entity order is
kept when fallback is enabled: fallback follows it), `workload_type` defaults to CPU, rate-limit
keys default to `endpoint`, empty description and `route_optimized: false` are dropped, and every
`*_plaintext` value becomes `{"$sensitive": <keyed hash>}` so that it can be compared but never
read back. Everything else (ids, timestamps, states) is not part of the essence.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

from pydantic import BaseModel, SecretStr

from schemas import EndpointSpec, ServedEntityInput, entity_name_of

__all__ = [
    "Canonical",
    "Digest",
    "SENSITIVE",
    "canonical_endpoint",
    "is_sensitive",
    "sensitive_paths",
]

Canonical = dict[str, Any]
# Keyed hash of a plaintext secret (see engine.secrets_store.SecretStore.digest).
Digest = Callable[[str], str]
SENSITIVE = "$sensitive"


def is_sensitive(value: Any) -> bool:
    return isinstance(value, dict) and SENSITIVE in value


def canonical_endpoint(spec: EndpointSpec, digest: Digest) -> Canonical:
    out: Canonical = {"name": spec.name}
    if spec.config is not None:
        out["config"] = _config(spec, digest)
    if spec.rate_limits:
        out["rate_limits"] = [_with_default_key(_plain(r, digest)) for r in spec.rate_limits]
    if spec.ai_gateway is not None:
        gateway = _plain(spec.ai_gateway, digest)
        if gateway.get("rate_limits"):
            gateway["rate_limits"] = [_with_default_key(r) for r in gateway["rate_limits"]]
        if gateway:
            out["ai_gateway"] = gateway
    if spec.tags:
        out["tags"] = sorted((_plain(t, digest) for t in spec.tags), key=lambda t: t["key"])
    if spec.route_optimized:
        out["route_optimized"] = True
    if spec.description:
        out["description"] = spec.description
    for field in ("budget_policy_id", "email_notifications", "telemetry_config"):
        value = getattr(spec, field)
        if value is not None:
            plain = _plain(value, digest)
            if plain not in ({}, None):
                out[field] = plain
    return out


def _config(spec: EndpointSpec, digest: Digest) -> Canonical:
    config = spec.config
    assert config is not None
    entities = [_entity(e, digest) for e in config.entities()]
    gateway = spec.ai_gateway
    keep_order = bool(gateway and gateway.fallback_config and gateway.fallback_config.enabled)
    if not keep_order:
        entities.sort(key=lambda e: e.get("name") or "")
    out: Canonical = {"served_entities": entities}
    routes: list[dict[str, Any]]
    if config.traffic_config is not None:
        routes = [
            {"served_entity_name": r.target, "traffic_percentage": r.traffic_percentage}
            for r in config.traffic_config.routes
        ]
    elif len(entities) == 1:
        routes = [{"served_entity_name": entities[0]["name"], "traffic_percentage": 100}]
    else:
        routes = []
    routes.sort(key=lambda r: r["served_entity_name"] or "")
    if routes:
        out["traffic_config"] = {"routes": routes}
    if config.auto_capture_config is not None:
        capture = _plain(config.auto_capture_config, digest)
        if capture:
            out["auto_capture_config"] = capture
    return out


def _entity(entity: ServedEntityInput, digest: Digest) -> Canonical:
    out = _plain(entity, digest)
    out["name"] = entity_name_of(entity)
    if entity.external_model is None:
        out.setdefault("workload_type", "CPU")
    return out


def _with_default_key(limit: dict[str, Any]) -> dict[str, Any]:
    limit.setdefault("key", "endpoint")
    return limit


def _plain(model: Any, digest: Digest) -> Any:
    """A model as JSON-ready data without unset/None fields; secrets as keyed hashes."""
    if isinstance(model, SecretStr):
        return {SENSITIVE: digest(model.get_secret_value())}
    if isinstance(model, Enum):
        return model.value
    if isinstance(model, BaseModel):
        out = {}
        for name in type(model).model_fields:
            value = getattr(model, name)
            if value is None:
                continue
            out[name] = _plain(value, digest)
        return out
    if isinstance(model, dict):
        return {k: _plain(v, digest) for k, v in model.items() if v is not None}
    if isinstance(model, list):
        return [_plain(v, digest) for v in model]
    return model


def sensitive_paths(document: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every `$sensitive` value in a canonical document."""
    if is_sensitive(document):
        return [path]
    if isinstance(document, dict):
        return [p for k, v in document.items() for p in sensitive_paths(v, path + (k,))]
    if isinstance(document, list):
        return [p for i, v in enumerate(document) for p in sensitive_paths(v, path + (i,))]
    return []
