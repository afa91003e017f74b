"""Answering queries: check the body against the task, rate-limit, pick an entity, call it.

Per request: auth (done by the app) -> endpoint -> body fits the task -> rate limit -> entity
by traffic weight (or by name) -> adapter -> upstream -> response (or SSE stream) -> usage
and the tables (one `TableRecorder.record` per answered request, when the endpoint has them).
"""

from __future__ import annotations

import base64
import json
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from engine.access.tokens import Principal
from engine.asgi import ApiError, json_bytes, send_json_bytes, unless_disconnected
from engine.gateway._errors import answer_for, token_counts, unreadable
from engine.gateway._guardrails import (
    GuardrailBlock,
    Guardrails,
    Judge,
    check_input,
    check_output,
    guarded_stream,
)
from engine.gateway._limiter import Limiter, Ticket
from engine.gateway._metrics import Metrics
from engine.gateway._table import EndpointRoute, RoutingTable, ServedEntity
from engine.gateway._usage import UsageRecord, UsageRecorder
from engine.host.autoscale import ThroughputMeter
from engine.tables._rows import Exchange
from providers.adapters import ProviderError, StreamError, StreamTally
from schemas import GATEWAY_ONLY_FIELDS, now_ms

if TYPE_CHECKING:
    from engine.tables.recorder import TableRecorder

__all__ = ["DataPlane", "TASK_OF_ROUTE"]

log = logging.getLogger("engine.gateway")

# OpenAI-compatible route -> the task it serves.
TASK_OF_ROUTE = {
    "chat/completions": "llm/v1/chat",
    "completions": "llm/v1/completions",
    "embeddings": "llm/v1/embeddings",
}
_REQUIRED = {
    "llm/v1/chat": "messages",
    "llm/v1/completions": "prompt",
    "llm/v1/embeddings": "input",
}


# The status accounted for a stream whose client went away first (nginx's "client closed").
CLIENT_GONE = 499


def check_body(task: str | None, body: Any) -> None:
    """400 unless `body` is a request the task can answer (type checks on the common keys)."""
    if not isinstance(body, dict):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "the request body must be a JSON object")
    if task is None:
        return
    required = _REQUIRED[task]
    foreign = [k for k in _REQUIRED.values() if k != required and k in body]
    if required not in body or foreign:
        given = f"; got `{foreign[0]}`" if foreign else ""
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            f"this endpoint serves task {task}, which needs `{required}`{given}",
        )
    value = body[required]
    if task == "llm/v1/chat":
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value)
        ):
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"task {task}: `messages` must be a non-empty list of {{role, content}} objects",
            )
    elif not (
        isinstance(value, str)
        or isinstance(value, list)
        and value
        and all(isinstance(v, (str, int, list)) for v in value)
    ):
        raise ApiError(
            400, "INVALID_PARAMETER_VALUE", f"task {task}: `{required}` must be a string or a list"
        )
    for key, kinds, text in (
        ("temperature", (int, float), "a number"),
        ("max_tokens", (int,), "an integer"),
        ("n", (int,), "an integer"),
        ("stream", (bool,), "a boolean"),
    ):
        if (
            key in body
            and body[key] is not None
            and (
                not isinstance(body[key], kinds)
                or isinstance(body[key], bool)
                and bool not in kinds
            )
        ):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"`{key}` must be {text}")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or isinstance(stop, list) and all(isinstance(s, str) for s in stop)
    ):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "`stop` must be a string or a list")
    if body.get("client_request_id") is not None and not isinstance(body["client_request_id"], str):
        raise ApiError(400, "INVALID_PARAMETER_VALUE", "`client_request_id` must be a string")
    for key in ("usage_context", "extra_params"):
        value = body.get(key)
        if value is not None and not (
            isinstance(value, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
        ):
            raise ApiError(
                400, "INVALID_PARAMETER_VALUE", f"`{key}` must be a map of strings to strings"
            )


# Not sent upstream: the OpenAI routes' endpoint name, and the platform's own query fields.
_NOT_UPSTREAM = frozenset({"model", *GATEWAY_ONLY_FIELDS})


def upstream_body(body: dict[str, Any]) -> dict[str, Any]:
    """What the provider sees: the gateway's fields removed, `extra_params` merged in (the
    request's own fields win)."""
    out = {k: v for k, v in body.items() if k not in _NOT_UPSTREAM}
    extra = body.get("extra_params")
    if extra:
        out = {**extra, **out}
    return out


def _to_base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _encode_base64(result: dict[str, Any]) -> None:
    """`encoding_format: base64`, done here (adapters return floats); a malformed vector is
    the upstream's fault."""
    try:
        for item in result.get("data", []):
            item["embedding"] = _to_base64(item["embedding"])
    except (KeyError, TypeError, AttributeError, struct.error):
        raise ProviderError("upstream_server", "the embeddings are not float vectors") from None


# Starts a scaled-to-zero entity and returns it routable (or raises ApiError 503).
Waker = Callable[[EndpointRoute, ServedEntity], Awaitable[ServedEntity]]


def with_system_prompt(body: dict[str, Any], prompt: str | None) -> dict[str, Any]:
    """The catalog's default system prompt first, unless the request brings its own."""
    messages = body.get("messages")
    if not prompt or not isinstance(messages, list):
        return body
    if any(isinstance(m, dict) and m.get("role") == "system" for m in messages):
        return body
    return {**body, "messages": [{"role": "system", "content": prompt}, *messages]}


class DataPlane:
    def __init__(
        self,
        limiter: Limiter,
        metrics: Metrics,
        usage: UsageRecorder | None,
        *,
        waker: Waker | None = None,
        meter: ThroughputMeter | None = None,
        safety_endpoint: str | None = None,
        tables: TableRecorder | None = None,
    ) -> None:
        self.limiter = limiter
        self.metrics = metrics
        self.usage = usage
        self.waker = waker
        self.meter = meter  # output tokens per entity instance: provisioned throughput's load
        # The endpoint that answers `safety` guardrails (a Llama Guard), named by the operator.
        self.safety_endpoint = safety_endpoint
        self.tables = tables  # payload and usage tables (engine/tables/recorder.py)

    async def _routable(self, route: EndpointRoute, entity: ServedEntity) -> ServedEntity:
        if entity.needs_start() and self.waker is not None:
            return await self.waker(route, entity)
        return entity

    async def invoke(
        self,
        send: Any,
        table: RoutingTable,
        principal: Principal,
        endpoint: str,
        body: Any,
        *,
        entity_name: str | None = None,
        openai_route: str | None = None,
        receive: Any = None,
        raw: bytes | None = None,
    ) -> None:
        """Answer one query; `receive` (the request's ASGI receive) lets a stream see its
        client go away; `raw` is the body's bytes, for a payload table."""
        route = table.endpoints.get(endpoint)
        if route is None:
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"endpoint {endpoint!r} does not exist")
        if openai_route is not None and route.task and route.task != TASK_OF_ROUTE[openai_route]:
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"endpoint {endpoint!r} serves task {route.task}; "
                f"/{openai_route} needs an endpoint of task {TASK_OF_ROUTE[openai_route]}",
            )
        check_body(route.task, body)
        if entity_name is not None:
            entity = route.entities.get(entity_name)
            if entity is None:
                raise ApiError(
                    404,
                    "RESOURCE_DOES_NOT_EXIST",
                    f"endpoint {endpoint!r} has no served entity {entity_name!r}",
                )
        else:
            entity = route.pick()
            if entity is None:
                raise ApiError(
                    503, "TEMPORARILY_UNAVAILABLE", f"endpoint {endpoint!r} has no routable entity"
                )
        ticket = None
        if route.rate_rules:  # no limits, no call: the default hot path stays as it was
            max_tokens = body.get("max_tokens")
            decision = await self.limiter.admit(
                route, principal, max_tokens if type(max_tokens) is int else None
            )
            if not decision.admitted:
                if decision.status == 429:
                    self.metrics.rate_limited[endpoint] += 1
                raise ApiError(
                    decision.status,
                    "REQUEST_LIMIT_EXCEEDED"
                    if decision.status == 429
                    else "TEMPORARILY_UNAVAILABLE",
                    decision.message,
                    [("retry-after", str(decision.retry_after))],
                )
            ticket = decision.ticket
        # The tables keep the body as the caller sent it (what follows works on a copy).
        exchange = None
        if self.tables is not None and (route.usage_tracking or route.payload_table is not None):
            exchange = Exchange(body, raw)
        body = upstream_body(body)
        started = time.perf_counter()
        guard = route.guardrails
        try:
            if guard is not None:  # None: no guardrails, nothing to do (the hot path)
                body = await self._guard_input(
                    guard, table, route, entity, principal, body, started, ticket, exchange
                )
            if body.pop("stream", False) is True:
                await self._stream(
                    send,
                    route,
                    entity,
                    principal,
                    body,
                    started,
                    receive,
                    ticket,
                    fallback=entity_name is None,
                    judge=self._judge(table) if guard is not None else None,
                    exchange=exchange,
                )
            else:
                await self._call(
                    send,
                    route,
                    entity,
                    principal,
                    body,
                    started,
                    fallback=entity_name is None,
                    ticket=ticket,
                    judge=self._judge(table) if guard is not None else None,
                    exchange=exchange,
                )
        finally:
            # Settled with the usage by _account; otherwise (refused before the upstream
            # answered, cancelled) the reservation is released.
            if ticket is not None:
                self.limiter.settle(ticket, 0)

    async def _call(
        self,
        send: Any,
        route: EndpointRoute,
        entity: ServedEntity,
        principal: Principal,
        body: dict[str, Any],
        started: float,
        *,
        fallback: bool,
        ticket: Ticket | None = None,
        judge: Judge | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        encoding = body.pop("encoding_format", None) if route.task == "llm/v1/embeddings" else None
        candidates = _candidates(route, entity, fallback)
        failure: ApiError | None = None
        last = entity
        for candidate in candidates:
            try:
                result = await self._once(route, candidate, body)
                if encoding == "base64":
                    _encode_base64(result)
            except ProviderError as exc:
                failure, last = _answer(exc, candidate), candidate
                self.metrics.upstream_errors[(route.name, candidate.name, exc.kind)] += 1
                # Another entity may answer what this one could not (fallback_config).
                if failure.status >= 500 or failure.status == 429:
                    if candidate is not candidates[-1]:
                        self._attempted(route, candidate, principal, failure, started, exchange)
                    continue
                break
            guard = route.guardrails
            if guard is not None and guard.output is not None and judge is not None:
                try:
                    result = await check_output(
                        guard, route.task, body, result, judge, self.metrics
                    )
                except ApiError as exc:
                    if exchange is not None:
                        exchange.response = exc.body()
                    self._account(
                        route, candidate, principal, exc.status, started, None, ticket, exchange
                    )
                    raise
            usage = result.get("usage")
            encoded = json_bytes(result)
            if exchange is not None:
                # The bytes sent are the response column, the dict gives the character count.
                exchange.response = result
                exchange.keep_frame(encoded)
            self._account(route, candidate, principal, 200, started, usage, ticket, exchange)
            await send_json_bytes(send, 200, encoded, [("served-model-name", candidate.name)])
            return
        assert failure is not None
        if exchange is not None:
            exchange.response = failure.body()
        self._account(route, last, principal, failure.status, started, None, ticket, exchange)
        raise failure

    async def _once(self, route: EndpointRoute, entity: ServedEntity, body: dict[str, Any]) -> Any:
        entity = await self._routable(route, entity)
        upstream = entity.upstream
        if upstream is None:
            raise ProviderError("unavailable", entity.unavailable or "not ready")
        upstream.acquire()
        try:
            adapter = upstream.adapter
            provider = _provider(adapter)
            try:
                if route.task == "llm/v1/embeddings":
                    result = await adapter.embeddings(body)
                elif route.task == "llm/v1/completions":
                    result = await adapter.completions(body)
                else:
                    result = await adapter.chat(with_system_prompt(body, entity.system_prompt))
            except ProviderError:
                raise
            except Exception as exc:
                raise unreadable(exc, entity.name, provider) from exc
            if not isinstance(result, dict):
                raise ProviderError("upstream_server", f"{provider} sent a response of no shape")
            # Checked before the answer is sent: a bad `usage` is a 502, not a crash after it.
            token_counts(result.get("usage"), provider)
            return result
        finally:
            await upstream.release()

    async def _stream(
        self,
        send: Any,
        route: EndpointRoute,
        entity: ServedEntity,
        principal: Principal,
        body: dict[str, Any],
        started: float,
        receive: Any = None,
        ticket: Ticket | None = None,
        *,
        fallback: bool = False,
        judge: Judge | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        """Stream from the first entity that accepts: with fallback_config, one that refuses
        (429, 5xx, a timeout, not ready) before any byte went out is followed by the next in
        served-entity order; once the stream has started it is never retried."""
        if route.task == "llm/v1/embeddings":
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "embeddings cannot be streamed")
        candidates = _candidates(route, entity, fallback)
        for i, candidate in enumerate(candidates):
            try:
                await self._stream_once(
                    send, route, candidate, principal, body, started, receive, ticket, judge,
                    exchange,
                )  # fmt: skip
                return
            except _Refused as exc:
                answer = exc.answer
                if i + 1 < len(candidates) and (answer.status >= 500 or answer.status == 429):
                    self._attempted(route, candidate, principal, answer, started, exchange)
                    continue
                if exchange is not None:
                    exchange.streamed, exchange.response = False, answer.body()
                self._account(
                    route, candidate, principal, answer.status, started, None, ticket, exchange
                )
                raise answer from None

    async def _stream_once(
        self,
        send: Any,
        route: EndpointRoute,
        entity: ServedEntity,
        principal: Principal,
        body: dict[str, Any],
        started: float,
        receive: Any,
        ticket: Ticket | None,
        judge: Judge | None,
        exchange: Exchange | None = None,
    ) -> None:
        """One entity's stream; _Refused when it failed before the response started."""
        entity = await self._routable(route, entity)
        upstream = entity.upstream
        if upstream is None:
            self.metrics.upstream_errors[(route.name, entity.name, "unavailable")] += 1
            raise _Refused(
                ApiError(
                    503,
                    "TEMPORARILY_UNAVAILABLE",
                    f"served entity {entity.name!r}: {entity.unavailable}",
                )
            )
        upstream.acquire()
        tally = StreamTally()
        if exchange is not None:
            exchange.streamed = True
            send = _keeping_frames(send, exchange)
        try:
            adapter = upstream.adapter

            guard = route.guardrails

            def open_frames() -> AsyncIterator[bytes]:
                if route.task == "llm/v1/completions":
                    frames = adapter.completions_sse(body, tally)
                else:
                    frames = adapter.chat_sse(with_system_prompt(body, entity.system_prompt), tally)
                if guard is not None and guard.output is not None and judge is not None:
                    frames = guarded_stream(guard, route.task, body, frames, judge, self.metrics)
                return frames

            relay = self._relay(send, route, entity, open_frames, _provider(adapter))
            status = await unless_disconnected(relay, receive)
            if status is not None:
                await send({"type": "http.response.body", "body": b""})
        except _Refused:
            raise  # the caller tries the next entity, or accounts for it
        except ApiError as exc:  # refused before the stream started: the error has a status
            if exchange is not None:
                exchange.streamed, exchange.response = False, exc.body()
            self._account(route, entity, principal, exc.status, started, None, ticket, exchange)
            raise
        finally:
            await upstream.release()
        status = CLIENT_GONE if status is None else status
        self._account(route, entity, principal, status, started, tally.usage, ticket, exchange)

    async def _relay(
        self,
        send: Any,
        route: EndpointRoute,
        entity: ServedEntity,
        open_frames: Callable[[], AsyncIterator[bytes]],
        provider: str,
    ) -> int:
        """Send the stream's SSE frames as they come; the status to account for it.

        Until the first frame, an upstream that refuses keeps its status (an ApiError); once
        it has accepted the stream (a StreamError) or a frame is out, a failure is the
        stream's last event, with no `[DONE]`. The caller ends the response.
        """
        failure: ProviderError | None = None
        frames: AsyncIterator[bytes] | None = None
        try:
            frames = open_frames()
            first = await anext(frames, b"")
        except StreamError as exc:  # the upstream answered 2xx: the answer is a stream
            frames, first, failure = None, b"", exc
        except ProviderError as exc:
            raise _Refused(self._refused(route, entity, exc)) from None
        except ApiError:
            raise  # a guardrail blocked the answer's first text: a status, not a stream
        except Exception as exc:  # noqa: BLE001 - an adapter's own bug: a 502, not a 500
            raise _Refused(
                self._refused(route, entity, unreadable(exc, entity.name, provider))
            ) from exc
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"served-model-name", entity.name.encode()),
                ],
            }
        )
        blocked: ApiError | None = None
        if frames is not None:
            async with aclosing(frames):  # closed early too: the upstream call stops now
                try:
                    if first:
                        await send({"type": "http.response.body", "body": first, "more_body": True})
                    async for frame in frames:
                        await send({"type": "http.response.body", "body": frame, "more_body": True})
                except ProviderError as exc:
                    failure = exc
                except ApiError as exc:  # an output guardrail: the stream's last event
                    blocked = exc
                except Exception as exc:  # noqa: BLE001 - an adapter's own bug, mid-stream
                    failure = unreadable(exc, entity.name, provider)
        if blocked is not None:
            await send(
                {"type": "http.response.body", "body": _error_event(blocked), "more_body": True}
            )
            return blocked.status
        if failure is None:
            return 200
        self.metrics.upstream_errors[(route.name, entity.name, failure.kind)] += 1
        answer = _answer(failure, entity)
        await send({"type": "http.response.body", "body": _error_event(answer), "more_body": True})
        return answer.status

    async def _guard_input(
        self,
        guard: Guardrails,
        table: RoutingTable,
        route: EndpointRoute,
        entity: ServedEntity,
        principal: Principal,
        body: dict[str, Any],
        started: float,
        ticket: Ticket | None = None,
        exchange: Exchange | None = None,
    ) -> dict[str, Any]:
        """The body as the upstream may see it; a block is answered (and accounted) here."""
        try:
            guarded = await check_input(guard, route.task, body, self._judge(table), self.metrics)
        except ApiError as exc:
            if exchange is not None:
                exchange.response = exc.body()
                if isinstance(exc, GuardrailBlock) and exc.logged is not None:
                    exchange.take_texts(exc.logged)
            self._account(route, entity, principal, exc.status, started, None, ticket, exchange)
            raise
        if exchange is not None and guarded is not body:
            exchange.take_texts(guarded)
        return guarded

    def _judge(self, table: RoutingTable) -> Judge:
        """Asks this host's guard model (the safety endpoint) about a conversation."""

        async def judge(messages: list[dict[str, Any]]) -> str:
            name = self.safety_endpoint
            if not name:
                raise ApiError(
                    503,
                    "TEMPORARILY_UNAVAILABLE",
                    "the endpoint's safety guardrail is on, but this host names no guard model "
                    "(engine serve --safety-endpoint NAME, or $ENGINE_SAFETY_ENDPOINT)",
                )
            route = table.endpoints.get(name)
            entity = route.pick() if route is not None else None
            if route is None or entity is None:
                raise ApiError(
                    503,
                    "TEMPORARILY_UNAVAILABLE",
                    f"the safety guard endpoint {name!r} does not exist or cannot serve",
                )
            body = {"messages": messages, "max_tokens": 32, "temperature": 0}
            try:
                result = await self._once(route, entity, body)
                return str(result["choices"][0]["message"]["content"] or "")
            except (ProviderError, KeyError, IndexError, TypeError) as exc:
                reason = exc.message if isinstance(exc, ProviderError) else "no answer"
                raise ApiError(
                    503,
                    "TEMPORARILY_UNAVAILABLE",
                    f"the safety guard endpoint {name!r} failed ({reason}); "
                    "the request was not let through",
                ) from None

        return judge

    def _refused(self, route: EndpointRoute, entity: ServedEntity, exc: ProviderError) -> ApiError:
        """A stream that failed before it started: answered with a status, as a call is."""
        self.metrics.upstream_errors[(route.name, entity.name, exc.kind)] += 1
        return _answer(exc, entity)

    def _attempted(
        self,
        route: EndpointRoute,
        entity: ServedEntity,
        principal: Principal,
        failure: ApiError,
        started: float,
        exchange: Exchange | None,
    ) -> None:
        """A fallback attempt that failed: its own payload row (the answer comes later)."""
        if exchange is not None and self.tables is not None:
            elapsed = time.perf_counter() - started
            self.tables.record_attempt(
                route, entity, principal, failure.status, elapsed, exchange, failure.body()
            )

    def _account(
        self,
        route: EndpointRoute,
        entity: ServedEntity,
        principal: Principal,
        status: int,
        started: float,
        usage: dict[str, Any] | None,
        ticket: Ticket | None = None,
        exchange: Exchange | None = None,
    ) -> None:
        elapsed = time.perf_counter() - started
        try:
            prompt, completion = token_counts(usage, "the provider")
        except ProviderError:
            # A stream's answer is already sent: its malformed usage counts as none.
            prompt = completion = 0
        self.metrics.observe(route.name, entity.name, status, elapsed, prompt, completion)
        if self.meter is not None and entity.provisioned is not None:
            self.meter.record(entity.instance_id, completion)
        if ticket is not None:  # the real usage replaces what admission reserved
            self.limiter.settle(ticket, prompt + completion)
        if route.usage_tracking and self.usage is not None:
            self.usage.record(
                UsageRecord(
                    at_ms=now_ms(),
                    endpoint=route.name,
                    entity=entity.name,
                    principal=principal.name,
                    status=status,
                    latency_ms=round(elapsed * 1000, 3),
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                )
            )
        if exchange is not None and self.tables is not None:
            self.tables.record(
                route, entity, principal, status, elapsed, prompt, completion, exchange
            )


def _keeping_frames(send: Any, exchange: Exchange) -> Any:
    """`send`, keeping a copy of each body frame for the payload table (merged later)."""

    async def keeping(message: dict[str, Any]) -> None:
        frame = message.get("body")
        if frame:
            exchange.keep_frame(frame)
        await send(message)

    return keeping


class _Refused(Exception):  # noqa: N818 - a signal, not an error kind
    """A stream's entity failed before the response started: another one may answer."""

    def __init__(self, answer: ApiError) -> None:
        super().__init__(answer.message)
        self.answer = answer


def _candidates(route: EndpointRoute, entity: ServedEntity, fallback: bool) -> list[ServedEntity]:
    """`entity`, then (fallback_config) the others in served-entity order from the one after
    it, round the list: the platform's "round-robin ... following the order of served entity
    list"."""
    if not (fallback and route.fallback) or entity.name not in route.order:
        return [entity]
    at = route.order.index(entity.name)
    names = route.order[at + 1 :] + route.order[:at]
    return [entity, *(route.entities[n] for n in names)]


def _provider(adapter: Any) -> str:
    return getattr(adapter, "PROVIDER", "the provider")


def _answer(exc: ProviderError, entity: ServedEntity) -> ApiError:
    """`answer_for` with the secrets this entity's upstream was built from."""
    secrets = entity.upstream.secrets if entity.upstream is not None else ()
    return answer_for(exc, entity.name, secrets)


def _error_event(answer: ApiError) -> bytes:
    """A mid-stream failure: the platform's body, plus the `error` object OpenAI-compatible
    clients look for in an event (the OpenAI SDK raises on it instead of ending quietly)."""
    body = answer.body()
    error = {
        "message": body["message"],
        "type": _error_type(answer.status),
        "code": body["error_code"],
    }
    return _event({**body, "error": error})


def _error_type(status: int) -> str:
    """OpenAI's error `type` for a status (what its SDKs and clients branch on)."""
    if status == 429:
        return "rate_limit_error"
    if status in (401, 403):
        return "authentication_error" if status == 401 else "permission_error"
    if status < 500:
        return "invalid_request_error"
    return "server_error"


def _event(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
