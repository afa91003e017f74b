"""The control-plane REST API on `engine serve`, compatible with `/api/2.0/serving-endpoints`.

| method        | path                                                          |
|---------------|---------------------------------------------------------------|
| GET POST      | /api/2.0/serving-endpoints (trailing slash too)               |
| GET DELETE    | /api/2.0/serving-endpoints/{name}                             |
| PUT           | /api/2.0/serving-endpoints/{name}/config                      |
| POST          | /api/2.0/serving-endpoints/{name}/config/cancel (the engine's) |
| PUT           | /api/2.0/serving-endpoints/{name}/rate-limits                 |
| PATCH         | /api/2.0/serving-endpoints/{name}/tags                        |
| PUT           | /api/2.0/serving-endpoints/{name}/ai-gateway                  |
| PATCH         | /api/2.0/serving-endpoints/{name}/notifications               |
| PATCH         | /api/2.0/serving-endpoints/{name}/telemetry-config            |
| GET           | /api/2.0/serving-endpoints/{name}/openapi                     |
| GET           | /api/2.0/serving-endpoints/{name}/metrics                     |
| GET           | /api/2.0/serving-endpoints/{name}/served-models/{e}/logs      |
| GET           | /api/2.0/serving-endpoints/{name}/served-models/{e}/build-logs|
| GET           | /api/2.0/serving-endpoints/get-model-optimization-info/{m}/{v}|
| GET PUT PATCH | /api/2.0/permissions/serving-endpoints/{id}                   |
| GET           | /api/2.0/permissions/serving-endpoints/{id}/permissionLevels  |
| POST GET      | /api/2.0/secrets/...                                          |
| GET           | /.well-known/databricks-config, /openapi.json                 |

Blocking work (SQLite, starting an apply) runs in threads so queries keep flowing.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from engine.access.permissions import (
    LEVEL_DESCRIPTIONS,
    LEVELS,
    acl_json,
    level_of,
    parse_acl,
    require,
)
from engine.access.tokens import Principal
from engine.asgi import ApiError, read_json, send_json, send_text
from engine.catalog.models import ModelCatalog
from engine.control._bodies import (
    acl_body,
    ai_gateway_body,
    config_body,
    create_body,
    notifications_body,
    rate_limits_body,
    tags_body,
    telemetry_body,
)
from engine.control._openapi import endpoint_openapi, openapi_document
from engine.control._secrets_api import SecretsApi
from engine.control._service import EndpointService
from engine.control.host_services import HostServices
from engine.control.views import endpoint_detail, endpoint_summary, task_of
from engine.state import EndpointRow, StateStore
from providers.runner.calibrate import optimization_info

__all__ = ["ControlPlane"]

log = logging.getLogger("engine.control")
API = "/api/2.0/serving-endpoints"
PERMISSIONS = "/api/2.0/permissions/serving-endpoints/"
SECRETS = "/api/2.0/secrets/"


class ControlPlane:
    def __init__(self, host: HostServices, service: EndpointService) -> None:
        self.host = host
        self.service = service
        self.secrets_api = SecretsApi(host)

    @property
    def store(self) -> StateStore:
        return self.host.store

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """Answer a control-plane request (False: not one of ours).

        Read-your-writes: every answer waits, just before it is sent, for the host's routing
        table to reach the state's serial as of then; so whatever the answer shows (an endpoint
        READY, new rate limits, tags, permissions) is already what the data plane serves.
        """

        async def send_caught_up(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                await self.host.catch_up()
            await send(message)

        return await self._route(scope, receive, send_caught_up)

    async def _route(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        path: str = scope["path"]
        method: str = scope["method"]
        allowed = _allowed_methods(path)
        if allowed and method not in allowed:
            raise ApiError(
                405,
                "METHOD_NOT_ALLOWED",
                f"{method} is not allowed on {path}",
                [("allow", ", ".join(sorted(allowed)))],
            )
        if path == "/.well-known/databricks-config" and method == "GET":
            await send_json(send, 200, {"oidc_endpoint": "", "workspace_id": self.store.lineage})
            return True
        if path == "/openapi.json" and method == "GET":
            await send_json(send, 200, openapi_document())
            return True
        if path.startswith(API):
            await self._endpoints(scope, receive, send, path[len(API) :].strip("/"), method)
            return True
        if path.startswith(PERMISSIONS):
            await self._permissions(scope, receive, send, path[len(PERMISSIONS) :], method)
            return True
        if path.startswith(SECRETS):
            await self._secrets(scope, receive, send, path[len(SECRETS) :], method)
            return True
        return False

    # -- serving endpoints --------------------------------------------------------------------

    async def _endpoints(
        self, scope: dict[str, Any], receive: Any, send: Any, rest: str, method: str
    ) -> None:
        principal = self.host.authenticate(scope)
        parts = [unquote(p) for p in rest.split("/")] if rest else []
        if not parts:
            if method == "GET":
                await send_json(send, 200, await _thread(self._list, principal))
            elif method == "POST":
                body = create_body(await read_json(receive))
                name = await _thread(self.service.create, body, principal)
                await send_json(send, 200, await _thread(self._detail, name, principal))
            else:
                raise _no_route(method, scope["path"])
            return
        if parts[0] == "get-model-optimization-info" and len(parts) == 3 and method == "GET":
            await send_json(send, 200, await _thread(self._optimization_info, parts[1], parts[2]))
            return
        name = parts[0]
        handler = self._handlers().get((method, tuple(parts[1:2]), len(parts)))
        if handler is None:
            raise _no_route(method, scope["path"])
        await handler(scope, receive, send, principal, name, parts)

    def _handlers(self) -> dict[tuple[str, tuple[str, ...], int], Callable[..., Awaitable[None]]]:
        return {
            ("GET", (), 1): self._get,
            ("DELETE", (), 1): self._delete,
            ("PUT", ("config",), 2): self._put_config,
            ("POST", ("config",), 3): self._cancel_update,
            ("PUT", ("rate-limits",), 2): self._put_rate_limits,
            ("PATCH", ("tags",), 2): self._patch_tags,
            ("PUT", ("ai-gateway",), 2): self._put_ai_gateway,
            ("PATCH", ("notifications",), 2): self._patch_notifications,
            ("PATCH", ("telemetry-config",), 2): self._patch_telemetry,
            ("GET", ("openapi",), 2): self._get_openapi,
            ("GET", ("metrics",), 2): self._get_metrics,
            ("GET", ("served-models",), 4): self._get_logs,
        }

    def _optimization_info(self, model: str, version: str) -> dict[str, Any]:
        entry = ModelCatalog(self.store).get(model, version)
        if entry is None:
            raise ApiError(
                404,
                "RESOURCE_DOES_NOT_EXIST",
                f"model {model} version {version} is not in the model catalog",
            )
        return optimization_info(entry)

    def _row(self, name: str, principal: Principal, needed: str, what: str) -> EndpointRow:
        row = self.store.get_endpoint(name)
        if row is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"endpoint {name!r} does not exist")
        level = level_of(self.store, principal, row.id)
        if level is None:
            # Whatever the route: a 403 would confirm that an endpoint the caller cannot see
            # exists, so no access at all reads as no endpoint (as GET says).
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"endpoint {name!r} does not exist")
        require(level, needed, f"{what} endpoint {name!r}")
        return row

    def _list(self, principal: Principal) -> dict[str, Any]:
        rows = [r for r in self.store.list_endpoints() if level_of(self.store, principal, r.id)]
        return {"endpoints": [endpoint_summary(self.store, r) for r in rows]}

    def _detail(self, name: str, principal: Principal) -> dict[str, Any]:
        row = self._row(name, principal, "CAN_VIEW", "read")
        return endpoint_detail(self.store, row, level_of(self.store, principal, row.id))

    async def _get(self, scope, receive, send, principal, name, parts) -> None:  # noqa: ANN001
        await send_json(send, 200, await _thread(self._detail, name, principal))

    async def _delete(self, scope, receive, send, principal, name, parts) -> None:  # noqa: ANN001
        await _thread(self._row, name, principal, "CAN_MANAGE", "delete")
        await _thread(self.service.delete, name, principal)
        await send_json(send, 200, {})

    async def _put_config(self, scope, receive, send, principal, name, parts) -> None:  # noqa: ANN001
        body = config_body(await read_json(receive), name)
        await _thread(self._row, name, principal, "CAN_MANAGE", "update")
        await _thread(self.service.update_config, name, body, principal)
        await send_json(send, 200, await _thread(self._detail, name, principal))

    async def _cancel_update(self, scope, receive, send, principal, name, parts) -> None:  # noqa: ANN001
        # The Serving UI's "Cancel update", scriptable: the platform has no REST route for it.
        if parts[2] != "cancel":
            raise _no_route(scope["method"], scope["path"])
        if await read_json(receive, allow_empty=True) != {}:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "cancel takes no body (or `{}`)")
        await _thread(self._row, name, principal, "CAN_MANAGE", "cancel the update of")
        await _thread(self.service.cancel, name, principal)
        await send_json(send, 200, await _thread(self._detail, name, principal))

    async def _put_rate_limits(self, scope, receive, send, principal, name, parts) -> None:  # noqa: ANN001
        limits = rate_limits_body(await read_json(receive, allow_empty=True), name)
        await _thread(self._row, name, principal, "CAN_MANAGE", "update")
        doc = await _thread(
            self.service.replace_part, name, "rate_limits", limits or None, principal
        )
        await send_json(send, 200, {"rate_limits": doc.get("rate_limits", [])})

    async def _patch_tags(self, scope, receive, send, principal, name, parts) -> None:  # noqa: ANN001
        add, delete = tags_body(await read_json(receive, allow_empty=True))
        row = await _thread(self._row, name, principal, "CAN_MANAGE", "update")
        tags = {t["key"]: t for t in (row.spec or {}).get("tags", [])}
        for key in delete:
            tags.pop(key, None)
        for tag in add:
            tags[tag["key"]] = tag
        doc = await _thread(
            self.service.replace_part, name, "tags", list(tags.values()) or None, principal
        )
        await send_json(send, 200, {"tags": doc.get("tags", [])})

    async def _put_ai_gateway(self, scope, receive, send, principal, name, parts) -> None:  # noqa: ANN001
        gateway = ai_gateway_body(await read_json(receive, allow_empty=True), name)
        await _thread(self._row, name, principal, "CAN_MANAGE", "update")
        doc = await _thread(
            self.service.replace_part, name, "ai_gateway", gateway or None, principal
        )
        await send_json(send, 200, doc.get("ai_gateway", {}))

    async def _patch_notifications(self, scope, receive, send, principal, name, parts) -> None:  # noqa: ANN001
        value = notifications_body(await read_json(receive, allow_empty=True), name)
        await _thread(self._row, name, principal, "CAN_MANAGE", "update")
        doc = await _thread(
            self.service.replace_part, name, "email_notifications", value or None, principal
        )
        answer: dict[str, Any] = {"name": name}
        if doc.get("email_notifications"):
            answer["email_notifications"] = doc["email_notifications"]
        await send_json(send, 200, answer)  # UpdateInferenceEndpointNotificationsResponse

    async def _patch_telemetry(self, scope, receive, send, principal, name, parts) -> None:  # noqa: ANN001
        value = telemetry_body(await read_json(receive, allow_empty=True), name)
        await _thread(self._row, name, principal, "CAN_MANAGE", "update")
        await _thread(self.service.replace_part, name, "telemetry_config", value or None, principal)
        await send_json(send, 200, await _thread(self._detail, name, principal))

    async def _get_openapi(self, scope, receive, send, principal, name, parts) -> None:  # noqa: ANN001
        row = await _thread(self._row, name, principal, "CAN_VIEW", "read")
        await send_json(send, 200, endpoint_openapi(name, task_of(row.spec)))

    async def _get_metrics(self, scope, receive, send, principal, name, parts) -> None:  # noqa: ANN001
        await _thread(self._row, name, principal, "CAN_VIEW", "read")
        # Filtered by each series' endpoint, not by matching label text in rendered lines.
        text = self.host.metrics_text(lambda endpoint: endpoint == name)
        await send_text(send, 200, text, "text/plain; version=0.0.4")

    async def _get_logs(self, scope, receive, send, principal, name, parts) -> None:  # noqa: ANN001
        if parts[1] != "served-models" or parts[3] not in ("logs", "build-logs"):
            raise _no_route(scope["method"], scope["path"])
        row = await _thread(self._row, name, principal, "CAN_VIEW", "read")
        logs = await _thread(self.host.entity_logs, row, parts[2], parts[3] == "build-logs")
        if logs is None:
            raise ApiError(
                404,
                "RESOURCE_DOES_NOT_EXIST",
                f"endpoint {name!r} has no served entity {parts[2]!r}",
            )
        await send_json(send, 200, {"logs": logs})

    # -- permissions ---------------------------------------------------------------------------

    async def _permissions(
        self, scope: dict[str, Any], receive: Any, send: Any, rest: str, method: str
    ) -> None:
        principal = self.host.authenticate(scope)
        parts = rest.strip("/").split("/")
        row = await _thread(self.store.get_endpoint_by_id, parts[0])
        if row is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"no endpoint with id {parts[0]!r}")
        level = await _thread(level_of, self.store, principal, row.id)
        if level is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"no endpoint with id {parts[0]!r}")
        if len(parts) == 2 and parts[1] == "permissionLevels" and method == "GET":
            levels = [
                {"permission_level": lv, "description": LEVEL_DESCRIPTIONS[lv]} for lv in LEVELS
            ]
            await send_json(send, 200, {"permission_levels": levels})
        elif len(parts) == 1 and method == "GET":
            await send_json(send, 200, await _thread(acl_json, self.store, row.id))
        elif len(parts) == 1 and method in ("PUT", "PATCH"):
            require(level, "CAN_MANAGE", f"change permissions of endpoint {row.name!r}")
            entries = parse_acl(acl_body(await read_json(receive, allow_empty=True)))
            await _thread(self.store.set_permissions, row.id, entries, replace=method == "PUT")
            await send_json(send, 200, await _thread(acl_json, self.store, row.id))
        else:
            raise _no_route(method, scope["path"])

    # -- secrets -------------------------------------------------------------------------------

    async def _secrets(
        self, scope: dict[str, Any], receive: Any, send: Any, rest: str, method: str
    ) -> None:
        if not await self.secrets_api(scope, receive, send, rest.strip("/"), method):
            raise _no_route(method, scope["path"])


@functools.cache
def _route_patterns() -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(path pattern, methods) of every documented route, for 405s on undocumented methods."""
    out = []
    for template, item in openapi_document()["paths"].items():
        methods = frozenset(m.upper() for m in item if m != "parameters")
        pattern = re.sub(r"\\{[^/]+\\}", "[^/]+", re.escape(template))
        # fullmatch: `$` would also match before a trailing newline ("/serving-endpoints/\n").
        out.append((re.compile(f"{pattern}/?"), methods))
    return out


def _allowed_methods(path: str) -> frozenset[str]:
    for pattern, methods in _route_patterns():
        if pattern.fullmatch(path):
            return methods
    return frozenset()


async def _thread(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(func, *args, **kwargs)


def _no_route(method: str, path: str) -> ApiError:
    return ApiError(404, "ENDPOINT_NOT_FOUND", f"no API at {method} {path}")
