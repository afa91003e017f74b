"""The create / edit form: form fields <-> an endpoint body in the serving API's shape.

Parsing never raises: every problem is a `FormError` that names the form field (its label as
the page shows it) and the spec path it feeds, so the page can put the message beside the
field. What the body then breaks is the spec rules' business (`EndpointService.preview`).

Secrets are taken as references only (`{{secrets/scope/key}}`): the form has no plaintext
field, so a key typed into a page never reaches the state, a log or a rendered plan.

| field                         | spec path                                              |
|-------------------------------|--------------------------------------------------------|
| name                          | name                                                   |
| e{i}_name                     | config.served_entities[i].name                         |
| e{i}_kind                     | external / catalog                                     |
| e{i}_provider, _model, _task  | ...external_model.provider / name / task               |
| e{i}_key                      | ...external_model.<provider>_config.<key field>        |
| e{i}_base                     | ...external_model.<provider>_config.<base url field>   |
| e{i}_entity, _version         | ...entity_name / entity_version                        |
| e{i}_workload, _workload_type | ...workload_size / workload_type                       |
| e{i}_scale_to_zero            | ...scale_to_zero_enabled                               |
| e{i}_pt_min, e{i}_pt_max      | ...min/max_provisioned_throughput                      |
| e{i}_traffic                  | config.traffic_config.routes[i].traffic_percentage     |
| limit_calls, limit_key        | rate_limits[0]                                         |
| tags                          | tags (one `key=value` a line)                          |
| usage_tracking                | ai_gateway.usage_tracking_config.enabled               |
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FormError",
    "PROVIDERS",
    "TASKS",
    "body_from_form",
    "field_of",
    "is_reference",
    "form_from_spec",
    "label_of",
]

# provider -> (config block, credential reference field, base URL field)
PROVIDERS: dict[str, tuple[str, str, str]] = {
    "openai": ("openai_config", "openai_api_key", "openai_api_base"),
    "anthropic": ("anthropic_config", "anthropic_api_key", "anthropic_api_base"),
    "cohere": ("cohere_config", "cohere_api_key", "cohere_api_base"),
    "databricks-model-serving": (
        "databricks_model_serving_config",
        "databricks_api_token",
        "databricks_workspace_url",
    ),
}
TASKS = ("llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings")
WORKLOADS = ("Small", "Medium", "Large")
_SECRET_REF = re.compile(r"^\{\{\s*secrets/[^/\s]+/[^/\s]+\s*\}\}$")
MAX_ENTITIES = 10


@dataclass(frozen=True)
class FormError:
    field: str  # the form field's name (e.g. e0_traffic)
    label: str  # what the page calls it ("Served entity 1 › Traffic %")
    message: str

    def __str__(self) -> str:
        return f"{self.label}: {self.message}"


Form = dict[str, str]


def is_reference(value: str) -> bool:
    """Whether a key field holds a secret reference (all it may hold)."""
    return not value.strip() or _SECRET_REF.match(value.strip()) is not None


def slots(form: Form) -> int:
    """How many served-entity fieldsets the form has."""
    try:
        count = int(form.get("slots", "1"))
    except ValueError:
        count = 1
    return max(1, min(count, MAX_ENTITIES))


def _label(i: int, what: str) -> str:
    return f"Served entity {i + 1} › {what}"


_LABELS = {
    "name": "Name",
    "kind": "Kind",
    "traffic": "Traffic %",
    "provider": "Provider",
    "model": "Model",
    "task": "Task",
    "key": "API key",
    "base": "API base URL",
    "entity": "Catalog model",
    "version": "Version",
    "workload": "Workload size",
    "workload_type": "Workload type",
    "scale_to_zero": "Scale to zero",
    "pt_max": "Up to (tokens/s)",
    "pt_min": "Minimum (tokens/s)",
}
_TOP = {"name": "Name", "limit_calls": "Rate limit", "tags": "Tags"}


def label_of(field: str) -> str:
    """What the page calls a form field: e1_task -> "Served entity 2 › Task"."""
    m = re.match(r"e(\d+)_(\w+)$", field)
    if m:
        return _label(int(m.group(1)), _LABELS.get(m.group(2), m.group(2)))
    return _TOP.get(field, "Endpoint")


def field_of(path: str, slot_of: dict[str, int]) -> str:
    """The form field a spec path comes from ("" when the form has none; shown at the top).
    `slot_of`: entity name -> fieldset, as the planner's paths name entities
    (config.served_entities[gpt].external_model.task -> e0_task)."""
    m = re.match(
        r"config\.(served_entities|traffic_config\.routes)\[([^\]]+)\](?:\.(\w+))?(?:\.(\w+))?",
        path,
    )
    if m:
        key = m.group(2)
        slot = int(key) if key.isdigit() and key not in slot_of else slot_of.get(key, 0)
        first, second = m.group(3) or "", m.group(4) or ""
        if m.group(1) != "served_entities":
            return f"e{slot}_traffic"
        leaf = {
            "entity_name": "entity",
            "entity_version": "version",
            "workload_size": "workload",
            "workload_type": "workload_type",
            "scale_to_zero_enabled": "scale_to_zero",
            "max_provisioned_throughput": "pt_max",
            "min_provisioned_throughput": "pt_min",
        }.get(first, "name")
        if first == "external_model":
            leaf = {"name": "model", "provider": "provider", "task": "task"}.get(second, "key")
            if second.endswith("_config") or second == "":
                leaf = "key" if second else "model"
        return f"e{slot}_{leaf}"
    if path.startswith("config.traffic_config"):
        return "e0_traffic"
    if path.startswith("rate_limits"):
        return "limit_calls"
    if path.startswith("tags"):
        return "tags"
    return "name" if path == "name" else ""


def _int(form: Form, key: str, label: str, errors: list[FormError]) -> int | None:
    raw = form.get(key, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        errors.append(FormError(key, label, f"must be a whole number, not {raw[:40]!r}"))
        return None
    if value < 0:
        errors.append(FormError(key, label, "must not be negative"))
        return None
    return value


def body_from_form(
    form: Form, *, name: str | None = None, base: dict[str, Any] | None = None
) -> tuple[dict[str, Any], list[FormError]]:
    """The endpoint body the form describes, and what is wrong with the form itself.
    `name`: the endpoint being edited (the form has no name field then); `base`: its current
    spec, whose blocks the form does not edit (auto_capture_config, ...) are kept."""
    errors: list[FormError] = []
    body: dict[str, Any] = copy.deepcopy(base) if base else {}
    body["name"] = name if name is not None else form.get("name", "").strip()
    if name is None and not body["name"]:
        errors.append(FormError("name", "Name", "is required"))
    entities: list[dict[str, Any]] = []
    routes: list[dict[str, Any]] = []
    for i in range(slots(form)):
        entity, traffic = _entity(form, i, errors)
        if entity is None:
            continue
        entities.append(entity)
        if traffic is not None:
            routes.append(
                {"served_entity_name": entity.get("name", ""), "traffic_percentage": traffic}
            )
    if not entities:
        errors.append(FormError("e0_name", _label(0, "Name"), "an endpoint needs a served entity"))
    config = dict(body.get("config") or {})
    config["served_entities"] = entities
    if routes:
        config["traffic_config"] = {"routes": routes}
    else:
        config.pop("traffic_config", None)
    body["config"] = config
    calls = _int(form, "limit_calls", "Rate limit › Calls per minute", errors)
    if calls is not None:
        key = form.get("limit_key", "endpoint")
        if key not in ("endpoint", "user"):
            errors.append(FormError("limit_key", "Rate limit › Per", "must be endpoint or user"))
        body["rate_limits"] = [{"calls": calls, "key": key, "renewal_period": "minute"}]
    else:
        body.pop("rate_limits", None)
    tags = _tags(form.get("tags", ""), errors)
    if tags:
        body["tags"] = tags
    else:
        body.pop("tags", None)
    gateway = dict(body.get("ai_gateway") or {})
    if form.get("usage_tracking"):
        gateway["usage_tracking_config"] = {"enabled": True}
    else:
        gateway.pop("usage_tracking_config", None)
    if gateway:
        body["ai_gateway"] = gateway
    else:
        body.pop("ai_gateway", None)
    return body, errors


def _entity(
    form: Form, i: int, errors: list[FormError]
) -> tuple[dict[str, Any] | None, int | None]:
    p = f"e{i}_"
    kind = form.get(p + "kind", "external")
    filled = [form.get(p + k, "").strip() for k in ("name", "model", "entity")]
    if not any(filled):
        return None, None  # an empty fieldset: no entity
    entity: dict[str, Any] = {"name": form.get(p + "name", "").strip()}
    if not entity["name"]:
        errors.append(FormError(p + "name", _label(i, "Name"), "is required"))
    if kind == "external":
        provider = form.get(p + "provider", "")
        if provider not in PROVIDERS:
            errors.append(
                FormError(
                    p + "provider", _label(i, "Provider"), f"must be one of {', '.join(PROVIDERS)}"
                )
            )
            return entity, None
        block, key_field, base_field = PROVIDERS[provider]
        settings: dict[str, Any] = {}
        key = form.get(p + "key", "").strip()
        if key and not _SECRET_REF.match(key):
            errors.append(
                FormError(
                    p + "key",
                    _label(i, "API key"),
                    "must be a secret reference like {{secrets/scope/key}} (store the key "
                    "with `engine secrets put` first); the form takes no plaintext keys",
                )
            )
        elif key:
            settings[key_field] = key
        base = form.get(p + "base", "").strip()
        if base:
            settings[base_field] = base
        entity["external_model"] = {
            "name": form.get(p + "model", "").strip(),
            "provider": provider,
            "task": form.get(p + "task", "").strip(),
            block: settings,
        }
    elif kind == "catalog":
        entity["entity_name"] = form.get(p + "entity", "").strip()
        entity["entity_version"] = form.get(p + "version", "").strip()
        pt_max = _int(form, p + "pt_max", _label(i, "Up to (tokens/s)"), errors)
        pt_min = _int(form, p + "pt_min", _label(i, "Minimum (tokens/s)"), errors)
        if pt_max is not None:
            entity["max_provisioned_throughput"] = pt_max
            entity["min_provisioned_throughput"] = pt_min or 0
        else:
            workload = form.get(p + "workload", "Small")
            if workload not in WORKLOADS:
                errors.append(
                    FormError(
                        p + "workload",
                        _label(i, "Workload size"),
                        f"must be one of {', '.join(WORKLOADS)}",
                    )
                )
            entity["workload_size"] = workload
            workload_type = form.get(p + "workload_type", "").strip()
            if workload_type:
                entity["workload_type"] = workload_type
        entity["scale_to_zero_enabled"] = bool(form.get(p + "scale_to_zero"))
    else:
        errors.append(FormError(p + "kind", _label(i, "Kind"), "must be external or catalog"))
    return entity, _int(form, p + "traffic", _label(i, "Traffic %"), errors)


def _tags(text: str, errors: list[FormError]) -> list[dict[str, str]]:
    tags = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not key.strip():
            errors.append(FormError("tags", "Tags", f"line {n}: write key=value"))
            continue
        tag = {"key": key.strip()}
        if sep:
            tag["value"] = value.strip()
        tags.append(tag)
    return tags


def form_from_spec(spec: dict[str, Any]) -> Form:
    """The form's values for an existing endpoint (Edit configuration)."""
    form: Form = {"name": spec.get("name", "")}
    config = spec.get("config") or {}
    entities = config.get("served_entities") or []
    routes = {
        r["served_entity_name"]: r["traffic_percentage"]
        for r in (config.get("traffic_config") or {}).get("routes") or []
    }
    for i, entity in enumerate(entities):
        p = f"e{i}_"
        form[p + "name"] = entity.get("name", "")
        if entity["name"] in routes:
            form[p + "traffic"] = str(routes[entity["name"]])
        model = entity.get("external_model")
        if model:
            form[p + "kind"] = "external"
            form[p + "provider"] = model.get("provider", "")
            form[p + "model"] = model.get("name", "")
            form[p + "task"] = model.get("task", "")
            block, key_field, base_field = PROVIDERS.get(model.get("provider", ""), ("", "", ""))
            settings = model.get(block) or {}
            key = settings.get(key_field)
            if isinstance(key, str):  # a reference; a hashed plaintext stays out of the page
                form[p + "key"] = key
            if isinstance(settings.get(base_field), str):
                form[p + "base"] = settings[base_field]
        else:
            form[p + "kind"] = "catalog"
            form[p + "entity"] = entity.get("entity_name", "")
            form[p + "version"] = str(entity.get("entity_version", ""))
            form[p + "workload"] = entity.get("workload_size") or "Small"
            form[p + "workload_type"] = entity.get("workload_type") or ""
            for key, field in (
                ("pt_max", "max_provisioned_throughput"),
                ("pt_min", "min_provisioned_throughput"),
            ):
                if entity.get(field) is not None:
                    form[p + key] = str(entity[field])
        if entity.get("scale_to_zero_enabled"):
            form[p + "scale_to_zero"] = "on"
    form["slots"] = str(len(entities) + 1)
    limits = spec.get("rate_limits") or []
    if limits:
        form["limit_calls"] = str(limits[0].get("calls", ""))
        form["limit_key"] = limits[0].get("key", "endpoint")
    form["tags"] = "\n".join(
        f"{t['key']}={t['value']}" if "value" in t else t["key"] for t in spec.get("tags") or []
    )
    if (spec.get("ai_gateway") or {}).get("usage_tracking_config", {}).get("enabled"):
        form["usage_tracking"] = "on"
    return form
