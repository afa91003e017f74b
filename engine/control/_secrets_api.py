"""`/api/2.0/secrets/...`: the platform's routes onto `engine.secrets.scopes`, which checks
every call against the scope ACLs. POST calls read a JSON body, GET calls the query string.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

from engine.asgi import ApiError, read_json, send_json
from engine.control._bodies import secret_body
from engine.control.host_services import HostServices
from engine.secrets.scopes import SCOPE_CALLS, scope_call
from engine.secrets.store import SecretStoreError

__all__ = ["SecretsApi"]

_METHODS = {
    "scopes/create": "POST",
    "scopes/delete": "POST",
    "scopes/list": "GET",
    "put": "POST",
    "delete": "POST",
    "list": "GET",
    "acls/put": "POST",
    "acls/delete": "POST",
    "acls/get": "GET",
    "acls/list": "GET",
}
assert set(_METHODS) == set(SCOPE_CALLS)


class SecretsApi:
    def __init__(self, host: HostServices) -> None:
        self.host = host

    async def __call__(
        self, scope: dict[str, Any], receive: Any, send: Any, action: str, method: str
    ) -> bool:
        """Answer `/api/2.0/secrets/<action>` (False: no such call)."""
        if _METHODS.get(action) != method:
            return False
        principal = self.host.authenticate(scope)
        if method == "POST":
            args = secret_body(action, await read_json(receive))
        else:
            query = parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=True)
            args = {k: v[0] for k, v in query.items()}
        store, secrets = self.host.store, self.host.secrets
        try:
            result = await asyncio.to_thread(scope_call, action, store, secrets, principal, args)
        except SecretStoreError as exc:
            raise ApiError(exc.http_status, exc.error_code, exc.message) from None
        await send_json(send, 200, result)
        return True
