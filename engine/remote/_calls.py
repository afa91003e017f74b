"""Each change of a plan as the HTTP calls apply will make, in order. Pure.

| change                     | calls                                                         |
|----------------------------|---------------------------------------------------------------|
| create                     | POST /serving-endpoints (the whole body)                      |
| update of `config.*`       | PUT  .../{name}/config (the whole config)                     |
| update of `ai_gateway`     | PUT  .../{name}/ai-gateway (the whole object: fallback too)   |
| update of `tags`           | PATCH .../{name}/tags (add_tags, delete_tags)                 |
| update of `rate_limits`    | PUT  .../{name}/rate-limits (the whole list, `calls: 0` kept) |
| update of notifications    | PATCH .../{name}/notifications                                |
| update of telemetry        | PATCH .../{name}/telemetry-config                             |
| replace                    | DELETE .../{name}, then POST (as create)                      |
| delete                     | DELETE .../{name}                                             |

Specs have no permissions block, so no permissions call is ever planned: an endpoint's ACL on
the remote stays whatever its owners set there. Bodies hold secrets as keyed-hash markers; apply
puts the plaintexts back in memory just before sending (`resolve_body`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from plans import SENSITIVE, Action, EndpointChange, Plan

from ._client import API, endpoint_path

__all__ = ["Call", "calls_for", "plan_calls", "resolve_body", "MissingPlaintext"]

# The order updates are sent in: config first (the slow one), then the hot parts.
_PARTS = (
    ("config", "PUT", "config"),
    ("ai_gateway", "PUT", "ai-gateway"),
    ("tags", "PATCH", "tags"),
    ("rate_limits", "PUT", "rate-limits"),
    ("email_notifications", "PATCH", "notifications"),
    ("telemetry_config", "PATCH", "telemetry-config"),
)


@dataclass(frozen=True)
class Call:
    endpoint: str
    method: str
    path: str
    body: Any = None
    # A config change: apply waits for NOT_UPDATING after it and fails on UPDATE_FAILED.
    starts_update: bool = False
    # The top-level parts of the document it sends (what the target holds once it succeeded).
    parts: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.method} {self.path}"


def plan_calls(plan: Plan) -> list[Call]:
    return [call for change in plan.actionable for call in calls_for(change)]


def calls_for(change: EndpointChange) -> list[Call]:
    name, doc = change.endpoint, change.desired or {}
    if change.action is Action.DELETE:
        return [Call(name, "DELETE", endpoint_path(name))]
    create = Call(
        name, "POST", API, copy.deepcopy(doc), starts_update="config" in doc, parts=tuple(doc)
    )
    if change.action is Action.CREATE:
        return [create]
    if change.action is Action.REPLACE:
        return [Call(name, "DELETE", endpoint_path(name)), create]
    changed = {f.path.split(".")[0].split("[")[0] for f in change.fields}
    calls = []
    for part, method, route in _PARTS:
        if part not in changed:
            continue
        calls.append(
            Call(
                name,
                method,
                endpoint_path(name, route),
                _part_body(part, doc, change),
                starts_update=part == "config",
                parts=(part,),
            )
        )
    return calls


def _part_body(part: str, doc: dict[str, Any], change: EndpointChange) -> Any:
    value = copy.deepcopy(doc.get(part))
    if part == "config":
        return value or {}
    if part == "ai_gateway":
        return value or {}  # the whole object; {} turns every feature off
    if part == "tags":
        wanted = {t["key"] for t in value or []}
        # Diff paths of tags are `tags[KEY]...`: a key the spec no longer has is deleted.
        mentioned = {
            f.path[len("tags[") : f.path.index("]")]
            for f in change.fields
            if f.path.startswith("tags[")
        }
        removed = sorted(mentioned - wanted)
        body: dict[str, Any] = {"add_tags": value or []}
        if removed:
            body["delete_tags"] = removed
        return body
    if part == "rate_limits":
        return {"rate_limits": value or []}
    if part == "email_notifications":
        return {"email_notifications": value} if value else {}
    if part == "telemetry_config":
        return {"telemetry_config": value} if value else {}  # absent: removed
    raise AssertionError(f"no call updates {part!r}")


class MissingPlaintext(Exception):
    """A keyed hash in a body whose plaintext the specs no longer give."""


def resolve_body(body: Any, plaintexts: dict[str, str]) -> Any:
    """The body with every secret marker replaced by its plaintext (in memory only)."""
    if isinstance(body, dict):
        if SENSITIVE in body:
            value = plaintexts.get(body[SENSITIVE])
            if value is None:
                raise MissingPlaintext("a plaintext value of the plan is not in the specs")
            return value
        return {k: resolve_body(v, plaintexts) for k, v in body.items()}
    if isinstance(body, list):
        return [resolve_body(v, plaintexts) for v in body]
    return body
