"""Where a query is answered: the data plane's routes on the serving host.

| POST | /serving-endpoints/{name}/invocations                          |
| POST | /serving-endpoints/{name}/served-models/{entity}/invocations   |
| POST | /serving-endpoints/chat/completions, /completions, /embeddings |
| POST | /serving-endpoints/responses (OpenAI Responses API, chat endpoints) |

Each request: authenticate -> CAN_QUERY on the endpoint (from the ACL compiled into the
routing table) -> the data plane (limits, traffic split, adapter, upstream, usage).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.access.permissions import level_in
from engine.access.tokens import Principal
from engine.asgi import ApiError, read_json, read_json_raw
from engine.gateway._dataplane import TASK_OF_ROUTE, DataPlane
from engine.gateway._responses import ResponsesSend, responses_to_chat
from engine.gateway._table import RoutingTable

__all__ = ["PREFIX", "QueryRoutes"]

PREFIX = "/serving-endpoints/"


class QueryRoutes:
    def __init__(
        self,
        dataplane: DataPlane,
        table: Callable[[], RoutingTable],
        authenticate: Callable[[dict[str, Any]], Principal],
    ) -> None:
        self.dataplane = dataplane
        self.table = table  # the current table: a request keeps the one it started with
        self.authenticate = authenticate

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """Answer a query (False: not a query route)."""
        path: str = scope["path"]
        if scope["method"] != "POST" or not path.startswith(PREFIX):
            return False
        rest = path[len(PREFIX) :]
        principal = self.authenticate(scope)
        table = self.table()
        parts = rest.split("/")
        invoke = self.dataplane.invoke
        if rest in TASK_OF_ROUTE:
            body, raw = await read_json_raw(receive)
            model = body.get("model") if isinstance(body, dict) else None
            if not isinstance(model, str) or not model:
                raise ApiError(
                    400, "INVALID_PARAMETER_VALUE", "`model` must name the serving endpoint"
                )
            authorize_query(principal, table, model)
            await invoke(
                send, table, principal, model, body, openai_route=rest, receive=receive, raw=raw
            )
        elif rest == "responses":
            model, chat = responses_to_chat(await read_json(receive))
            authorize_query(principal, table, model)
            await invoke(
                ResponsesSend(send, model),
                table,
                principal,
                model,
                chat,
                openai_route="chat/completions",
                receive=receive,
            )
        elif len(parts) == 2 and parts[1] == "invocations":
            body, raw = await read_json_raw(receive)
            authorize_query(principal, table, parts[0])
            await invoke(send, table, principal, parts[0], body, receive=receive, raw=raw)
        elif len(parts) == 4 and parts[1] == "served-models" and parts[3] == "invocations":
            body, raw = await read_json_raw(receive)
            authorize_query(principal, table, parts[0])
            await invoke(
                send,
                table,
                principal,
                parts[0],
                body,
                entity_name=parts[2],
                receive=receive,
                raw=raw,
            )
        else:
            raise ApiError(404, "ENDPOINT_NOT_FOUND", f"no API at POST {path}")
        return True


def authorize_query(principal: Principal, table: RoutingTable, endpoint: str) -> None:
    """CAN_QUERY is needed to query; a caller who may not even view it is told it does not
    exist (as GET says), so a query cannot probe for other teams' endpoints."""
    route = table.endpoints.get(endpoint)
    if route is None or principal.admin:
        return  # the data plane answers 404 for an unknown endpoint
    level = level_in(route.acl, principal)
    if level is None:
        raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"endpoint {endpoint!r} does not exist")
    if level == "CAN_VIEW":
        raise ApiError(403, "PERMISSION_DENIED", f"CAN_QUERY is required to query {endpoint!r}")
