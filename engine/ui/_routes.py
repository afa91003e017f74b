"""The Serving UI on `engine serve`, at the platform's paths under /ml/.

| method   | path                                   | needs                      |
|----------|----------------------------------------|----------------------------|
| GET      | /ml/static/{file}                      | nothing (shipped files)    |
| GET POST | /ml/signin                             | a bearer token (POST)      |
| POST     | /ml/signout                            | session + CSRF             |
| GET      | /ml/endpoints                          | session (lists CAN_VIEW)   |
| GET POST | /ml/endpoints/new                      | session (+ CSRF on POST)   |
| GET      | /ml/endpoints/{name}                   | CAN_VIEW                   |
| GET      | /ml/endpoints/{name}/status            | CAN_VIEW (HTMX fragment)   |
| GET      | /ml/endpoints/{name}/logs/{entity}     | CAN_VIEW (HTMX fragment)   |
| GET      | /ml/endpoints/{name}/diff              | CAN_VIEW                   |
| GET POST | /ml/endpoints/{name}/edit              | CAN_MANAGE (+ CSRF)        |
| POST     | /ml/endpoints/{name}/cancel            | CAN_MANAGE + CSRF          |
| GET POST | /ml/playground                         | CAN_QUERY on each endpoint |
| POST     | /ml/playground/stream                  | CAN_QUERY + CSRF (SSE)     |

An endpoint the caller may not see answers the same 404 page as one that does not exist.
Changes go through `EndpointService` (the REST API's): a form becomes an endpoint body, the
body a plan that the page shows, and Apply carries out that same plan (re-planned under the
lock; if it came out different, the new plan is shown again instead of applied).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from typing import Any
from urllib.parse import parse_qs, quote, unquote

from engine.access.permissions import LEVELS, level_in, level_of
from engine.access.tokens import Principal
from engine.asgi import ApiError, header, unless_disconnected
from engine.catalog.models import ModelCatalog
from engine.control._service import EndpointService
from engine.control.host_services import HostServices
from engine.control.views import task_of
from engine.state import EndpointRow
from engine.ui import _forms, _playground
from engine.ui._charts import endpoint_series
from engine.ui._csrf import CSRF_FIELD, csrf_ok
from engine.ui._http import read_form, send_html, send_json, send_redirect, send_static
from engine.ui._render import render, static_file
from engine.ui._session import Session, Sessions, set_cookie
from engine.ui._views import STATE_WORDS, ListCache, endpoint_page, list_page, version_diff
from plans import render_plan_text

__all__ = ["ServingUi"]

log = logging.getLogger("engine.ui")
PREFIX = "/ml"


class _Request:
    """One UI request: who (once signed in), the query string, whether HTMX sent it."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query = {
            k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()
        }
        self.htmx = header(scope, b"hx-request") == "true"
        self.session: Session | None = None
        self.principal: Principal | None = None

    @property
    def who(self) -> Principal:
        assert self.principal is not None
        return self.principal


class ServingUi:
    def __init__(self, host: HostServices, service: EndpointService) -> None:
        self.host = host
        self.service = service
        self.sessions = Sessions(host.store)
        self.listed = ListCache()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        path: str = scope["path"]
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return False
        request = _Request(scope)
        try:
            await self._route(request, receive, send)
        except ApiError as exc:
            if path == f"{PREFIX}/playground/stream":
                await send_json(send, exc.status, exc.body())  # a script reads it, not a person
            else:
                await self._error(request, send, exc)
        return True

    async def _error(self, request: _Request, send: Any, exc: ApiError) -> None:
        """An error as a page: the status, the platform's code and the message (never a
        traceback; a 404 reads the same whether the endpoint is missing or hidden)."""
        signed = request.session is not None
        html = render(
            "error.html",
            status=exc.status,
            code=exc.error_code,
            message=exc.message,
            session=request.session if signed else None,
            who=request.principal,
            csrf_field=CSRF_FIELD,
        )
        await send_html(send, exc.status, html)

    # -- routing ------------------------------------------------------------------------------

    async def _route(self, request: _Request, receive: Any, send: Any) -> None:
        parts = [unquote(p) for p in request.path[len(PREFIX) :].strip("/").split("/") if p]
        method = request.method
        if parts[:1] == ["static"] and method == "GET":
            found = static_file("/".join(parts[1:]))
            if found is None:
                raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", "no such file")
            await send_static(send, *found)
            return
        if parts == ["signin"]:
            await (
                self._signin_post(request, receive, send)
                if method == "POST"
                else self._signin_page(request, send)
            )
            return
        if not await self._signed_in(request, send):
            return
        if method == "POST":
            form = await read_form(request.scope, receive)
            if not csrf_ok(request.session, form, header(request.scope, b"x-csrf-token")):  # type: ignore[arg-type]
                raise ApiError(
                    403,
                    "PERMISSION_DENIED",
                    "the form's CSRF token is missing or wrong; reload the page and try again",
                )
        else:
            form = {}
        flat = {k: v[-1] for k, v in form.items()}
        if not parts:
            await send_redirect(send, f"{PREFIX}/endpoints")
        elif parts == ["signout"] and method == "POST":
            assert request.session is not None
            await asyncio.to_thread(self.sessions.end, request.session)
            await send_redirect(send, f"{PREFIX}/signin", [("set-cookie", set_cookie(None))])
        elif parts == ["endpoints"] and method == "GET":
            await self._list(request, send)
        elif parts == ["endpoints", "new"]:
            await self._edit(request, send, None, flat, form)
        elif parts[0] == "endpoints" and len(parts) >= 2:
            await self._endpoint(request, send, parts[1], parts[2:], flat, form)
        elif parts == ["playground"]:
            await self._playground(request, send, form)
        elif parts == ["playground", "stream"] and method == "POST":
            await self._stream(request, receive, send, flat)
        else:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", "no such page")

    async def _endpoint(
        self,
        request: _Request,
        send: Any,
        name: str,
        rest: list[str],
        flat: dict[str, str],
        form: dict[str, list[str]],
    ) -> None:
        method = request.method
        if not rest and method == "GET":
            await self._page(request, send, name)
        elif rest == ["status"] and method == "GET":
            await self._status(request, send, name)
        elif rest[:1] == ["logs"] and len(rest) == 2 and method == "GET":
            await self._logs(request, send, name, rest[1])
        elif rest == ["diff"] and method == "GET":
            await self._diff(request, send, name)
        elif rest == ["edit"]:
            await self._edit(request, send, name, flat, form)
        elif rest == ["cancel"] and method == "POST":
            await self._cancel(request, send, name)
        else:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", "no such page")

    # -- sign-in ------------------------------------------------------------------------------

    def _principal_of(self, token: str) -> Principal | None:
        fake = {"headers": [(b"authorization", f"Bearer {token}".encode("latin-1", "replace"))]}
        try:
            return self.host.authenticate(fake)
        except ApiError:
            return None

    async def _signed_in(self, request: _Request, send: Any) -> bool:
        session = await asyncio.to_thread(self.sessions.get, header(request.scope, b"cookie"))
        principal = self._principal_of(session.token) if session is not None else None
        if session is None or principal is None:
            if session is not None:
                await asyncio.to_thread(self.sessions.end, session)  # its token was deleted
            target = f"{PREFIX}/signin"
            if request.method == "GET" and not request.htmx:
                target += "?next=" + quote(request.path)
            await send_redirect(send, target, htmx=request.htmx)
            return False
        request.session, request.principal = session, principal
        return True

    async def _signin_page(
        self, request: _Request, send: Any, error: str = "", status: int = 200
    ) -> None:
        nxt = request.query.get("next", "")
        await send_html(
            send,
            status,
            render("signin.html", error=error, next=_local(nxt), session=None, who=None),
        )

    async def _signin_post(self, request: _Request, receive: Any, send: Any) -> None:
        form = await read_form(request.scope, receive)
        token = (form.get("token") or [""])[-1].strip()
        if token.lower().startswith("bearer "):
            token = token[7:].strip()
        principal = self._principal_of(token) if token else None
        if principal is None:
            request.query["next"] = (form.get("next") or [""])[-1]
            await self._signin_page(
                request,
                send,
                "Token: not a token of this server (create one with `engine tokens create`)",
                401,
            )
            return
        session = await asyncio.to_thread(self.sessions.create, token)
        secure = request.scope.get("scheme") == "https"
        target = _local((form.get("next") or [""])[-1]) or f"{PREFIX}/endpoints"
        await send_redirect(send, target, [("set-cookie", set_cookie(session, secure=secure))])

    # -- pages ----------------------------------------------------------------------------------

    def _common(self, request: _Request) -> dict[str, Any]:
        assert request.session is not None
        return {"session": request.session, "who": request.who, "csrf_field": CSRF_FIELD}

    async def _list(self, request: _Request, send: Any) -> None:
        q = request.query
        try:
            page = int(q.get("page", "1"))
        except ValueError:
            page = 1
        state = q.get("state", "")
        if state and state not in STATE_WORDS:
            state = ""
        data = await asyncio.to_thread(
            list_page,
            self.host.store,
            request.who,
            query=q.get("q", ""),
            tag=q.get("tag", ""),
            state=state,
            page=page,
            cache=self.listed,
        )
        template = (
            "_list_table.html"
            if request.htmx and header(request.scope, b"hx-target") == "results"
            else "list.html"
        )
        await send_html(
            send, 200, render(template, data=data, states=STATE_WORDS, **self._common(request))
        )

    def _row(
        self, name: str, principal: Principal, needed: str = "CAN_VIEW"
    ) -> tuple[EndpointRow, str]:
        """The endpoint and the caller's level; no access at all reads as no endpoint."""
        store = self.host.store
        row = store.get_endpoint(name)
        level = level_of(store, principal, row.id) if row is not None else None
        if row is None or level is None or row.deleting:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"endpoint {name!r} does not exist")
        if LEVELS.index(level) < LEVELS.index(needed):
            raise ApiError(
                403, "PERMISSION_DENIED", f"{needed} is required for this on endpoint {name!r}"
            )
        return row, level

    def _page_data(self, name: str, principal: Principal) -> dict[str, Any]:
        row, level = self._row(name, principal)
        page = endpoint_page(self.host.store, row, level)
        charts = endpoint_series(self.service.state_path, name)
        return {"ep": page, "charts": charts}

    async def _page(self, request: _Request, send: Any, name: str) -> None:
        await self.host.catch_up()
        data = await asyncio.to_thread(self._page_data, name, request.who)
        await send_html(
            send,
            200,
            render(
                "endpoint.html",
                **data,
                notice=request.query.get("notice", ""),
                **self._common(request),
            ),
        )

    async def _status(self, request: _Request, send: Any, name: str) -> None:
        row, level = await asyncio.to_thread(self._row, name, request.who)
        page = await asyncio.to_thread(endpoint_page, self.host.store, row, level)
        headers = []
        if request.query.get("was") == "updating" and not page.updating:
            # The update finished: the whole page changes (versions, entities, history).
            headers.append(("hx-refresh", "true"))
        await send_html(
            send, 200, render("_status.html", ep=page, **self._common(request)), headers
        )

    async def _logs(self, request: _Request, send: Any, name: str, entity: str) -> None:
        row, _ = await asyncio.to_thread(self._row, name, request.who)
        build = request.query.get("build") == "1"
        text = await asyncio.to_thread(self.host.entity_logs, row, entity, build)
        if text is None:
            raise ApiError(
                404, "RESOURCE_DOES_NOT_EXIST", f"endpoint {name!r} has no served entity {entity!r}"
            )
        lines = text.splitlines()[-300:]
        url = request.path + ("?build=1" if build else "")
        title = f"{'Build logs' if build else 'Logs'} of {entity}"
        await send_html(send, 200, render("_logs.html", lines=lines, url=url, title=title))

    async def _diff(self, request: _Request, send: Any, name: str) -> None:
        row, _ = await asyncio.to_thread(self._row, name, request.who)
        try:
            old, new = int(request.query.get("from", "")), int(request.query.get("to", ""))
        except ValueError:
            raise ApiError(
                400, "INVALID_PARAMETER_VALUE", "from and to: give two config version numbers"
            ) from None
        diff = await asyncio.to_thread(version_diff, self.host.store, row, old, new)
        await send_html(send, 200, render("_diff.html", diff=diff, old=old, new=new))

    # -- create and edit through a previewed plan ----------------------------------------------

    async def _edit(
        self,
        request: _Request,
        send: Any,
        name: str | None,
        flat: dict[str, str],
        form: dict[str, list[str]],
    ) -> None:
        row = None
        if name is not None:
            row, _ = await asyncio.to_thread(self._row, name, request.who, "CAN_MANAGE")
        ctx: dict[str, Any] = {
            "name": name,
            "errors": [],
            "plan": None,
            "plan_digest": "",
            "message": "",
        }
        if request.method == "GET":
            values = (
                _forms.form_from_spec(row.spec or {})
                if row is not None
                else {"slots": "2", "e0_traffic": ""}
            )
            await self._form_page(request, send, values, ctx)
            return
        action = flat.get("action", "plan")
        if action in ("add", "refresh"):
            # More fieldsets, or the same form again for a newly picked catalog model
            # (whose throughput controls depend on it): nothing is planned yet.
            if action == "add":
                flat["slots"] = str(min(_forms.slots(flat) + 1, _forms.MAX_ENTITIES))
            await self._form_page(request, send, flat, ctx)
            return
        base = dict(row.spec or {}) if row is not None else None
        body, form_errors = _forms.body_from_form(flat, name=name, base=base)
        if form_errors:
            ctx["errors"] = [(e.field, e.label, e.message) for e in form_errors]
            await self._form_page(request, send, flat, ctx, 400)
            return
        plan, rule_errors = await asyncio.to_thread(self.service.preview, body, request.who)
        if plan is None:
            ctx["errors"] = [_placed(p, m, flat) for p, m in rule_errors]
            await self._form_page(request, send, flat, ctx, 400)
            return
        text = render_plan_text(plan)
        digest = hashlib.sha256(text.encode()).hexdigest()
        ctx.update(
            plan=text, plan_digest=digest, errored=plan.errored, changes=bool(plan.actionable)
        )
        ctx["errors"] = [
            _placed(e.path, f"{e.message} [{e.rule}]", flat) for c in plan.changes for e in c.errors
        ]
        if action == "apply" and not plan.errored and plan.actionable:
            if flat.get("plan_digest") != digest:
                ctx["message"] = (
                    "The plan changed since you previewed it (the endpoint changed meanwhile). "
                    "Review the new plan and apply again."
                )
            else:
                target = await asyncio.to_thread(self.service.put, body, request.who)
                await send_redirect(
                    send, f"{PREFIX}/endpoints/{quote(target)}?notice=applied", htmx=request.htmx
                )
                return
        if not plan.actionable and not plan.errored:
            ctx["message"] = "No changes: the endpoint already has this configuration."
        await self._form_page(request, send, flat, ctx, 400 if plan.errored else 200)

    async def _form_page(
        self,
        request: _Request,
        send: Any,
        values: dict[str, str],
        ctx: dict[str, Any],
        status: int = 200,
    ) -> None:
        catalog = await asyncio.to_thread(lambda: ModelCatalog(self.host.store).entries())
        chunks = await asyncio.to_thread(self._chunk_sizes, values)
        # A key typed in place of a reference is never sent back into the page.
        values = {
            k: ("" if re.fullmatch(r"e\d+_key", k) and not _forms.is_reference(v) else v)
            for k, v in values.items()
        }
        field_errors: dict[str, list[str]] = {}
        for field, _label, message in ctx["errors"]:
            field_errors.setdefault(field, []).append(message)
        await send_html(
            send,
            status,
            render(
                "form.html",
                v=values,
                slots=_forms.slots(values),
                providers=list(_forms.PROVIDERS),
                tasks=_forms.TASKS,
                workloads=_forms.WORKLOADS,
                field_errors=field_errors,
                catalog=catalog,
                chunks=chunks,
                **ctx,
                **self._common(request),
            ),
        )

    def _chunk_sizes(self, values: dict[str, str]) -> dict[int, int]:
        """Slot -> the catalog's throughput chunk size of the model it names (seed 001's
        provisioned-throughput controls show for those)."""
        catalog = ModelCatalog(self.host.store)
        out = {}
        for i in range(_forms.slots(values)):
            entry = catalog.get(values.get(f"e{i}_entity", ""), values.get(f"e{i}_version", ""))
            if entry is not None and entry.throughput_chunk_size:
                out[i] = entry.throughput_chunk_size
        return out

    async def _cancel(self, request: _Request, send: Any, name: str) -> None:
        await asyncio.to_thread(self._row, name, request.who, "CAN_MANAGE")
        await asyncio.to_thread(self.service.cancel, name, request.who)
        await send_redirect(
            send, f"{PREFIX}/endpoints/{quote(name)}?notice=canceled", htmx=request.htmx
        )

    # -- playground ---------------------------------------------------------------------------

    def _queryable(self, principal: Principal) -> list[dict[str, str]]:
        store = self.host.store
        acls = store.all_permissions()
        out = []
        for row in store.list_endpoints():
            level = level_in(acls.get(row.id, []), principal)
            if row.spec is None or level is None or LEVELS.index(level) < LEVELS.index("CAN_QUERY"):
                continue
            out.append({"name": row.name, "task": task_of(row.spec) or _runner_task(store, row)})
        return sorted(out, key=lambda e: (e["task"], e["name"]))

    async def _playground(self, request: _Request, send: Any, form: dict[str, list[str]]) -> None:
        endpoints = await asyncio.to_thread(self._queryable, request.who)
        ctx: dict[str, Any] = {
            "endpoints": endpoints,
            "answers": [],
            "error": "",
            "picked": [request.query["endpoint"]] if "endpoint" in request.query else [],
            "v": {},
        }
        if request.method == "POST":
            flat = {k: v[-1] for k, v in form.items()}
            picked = form.get("endpoint", [])
            ctx.update(picked=picked, v=flat)
            tasks = {e["name"]: e["task"] for e in endpoints}
            error = _playground.playground_error(picked, tasks, flat)
            if error:
                ctx["error"] = error
            else:
                ctx["answers"] = await self._ask(request, picked, tasks[picked[0]], flat)
        await send_html(
            send,
            400 if ctx["error"] else 200,
            render("playground.html", **ctx, **self._common(request)),
        )

    async def _ask(
        self, request: _Request, names: list[str], task: str, form: dict[str, str]
    ) -> list[dict[str, Any]]:
        """Every picked endpoint's whole answer, asked at once; in the order picked."""
        assert request.session is not None
        body = _playground.payload(task, form)
        async with _playground.client_for(request.scope, request.session.token) as client:
            return list(
                await asyncio.gather(*(_playground.ask_one(client, n, body, task) for n in names))
            )

    async def _stream(
        self, request: _Request, receive: Any, send: Any, form: dict[str, str]
    ) -> None:
        """One endpoint's answer as it arrives (app.js fetches one of these per column).
        Refusals are the platform's JSON body with its status, before any event is sent."""
        assert request.session is not None
        try:
            name = form.get("endpoint", "")
            row, _ = await asyncio.to_thread(self._row, name, request.who, "CAN_QUERY")
            task = task_of(row.spec or {}) or await asyncio.to_thread(
                _runner_task, self.host.store, row
            )
            error = _playground.playground_error([name], {name: task}, form)
            if error:
                raise ApiError(400, "INVALID_PARAMETER_VALUE", error)
        except ApiError as exc:
            await send_json(send, exc.status, exc.body())
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-store"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-accel-buffering", b"no"),
                ],
            }
        )
        body = _playground.payload(task, form, stream=True)
        token = request.session.token

        async def relay() -> None:
            async with _playground.client_for(request.scope, token) as client:
                async for chunk in _playground.stream_one(client, name, body, task):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

        # A page that is left (or sends a new prompt) closes its fetch: the answer it no
        # longer reads is stopped, upstream included, instead of read to its end.
        await unless_disconnected(relay(), receive)


def _runner_task(store: Any, row: EndpointRow) -> str:
    catalog = ModelCatalog(store)
    for entity in (row.spec or {}).get("config", {}).get("served_entities") or []:
        entry = catalog.get(entity.get("entity_name", ""), str(entity.get("entity_version", "")))
        if entry is not None and entry.task:
            return entry.task
    return ""


def _placed(path: str, message: str, form: dict[str, str]) -> tuple[str, str, str]:
    """(form field, its label with the spec path, message) of one rule error."""
    slot_of = {form.get(f"e{i}_name", ""): i for i in range(_forms.slots(form))}
    field = _forms.field_of(path or "", slot_of)
    label = _forms.label_of(field) if field else "Endpoint"
    return field, f"{label} ({path})" if path and path != "name" else label, message


def _local(target: str) -> str:
    """A sign-in's `next` only ever leads to a page of this UI (no open redirect)."""
    return (
        target
        if target.startswith(PREFIX + "/") and not target.startswith("//") and "\\" not in target
        else ""
    )
