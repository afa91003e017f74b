"""Rows of the payload and usage tables, made from what the data plane handed over.

The data plane does as little as it can per request: it keeps references (the body as the
caller sent it, the answer, a stream's frames) in an `Exchange` and hands a `RequestRecord`
to the recorder. Everything that costs (JSON encoding, merging a stream's chunks into one
answer, size checks, ids) happens here, on the writer thread.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from engine.tables._names import TableName
from engine.tables._schemas import PAYLOAD_SCHEMA, USAGE_SCHEMA

__all__ = [
    "Exchange",
    "MAX_PAYLOAD_BYTES",
    "RequestRecord",
    "aggregate_stream",
    "batch_columns",
    "TOO_LARGE",
    "payload_row",
    "request_ids",
    "response_of",
    "served_entity_id",
]

# The platform stores neither a request nor a response over 1 MiB; the row is kept, the
# payload column is NULL and `logging_error_codes` says which.
MAX_PAYLOAD_BYTES = 1024 * 1024
# A stream's frames are kept up to this many bytes (its merged answer is far smaller than
# its frames; past this it is certainly over MAX_PAYLOAD_BYTES).
_MAX_FRAME_BYTES = 16 * MAX_PAYLOAD_BYTES
_TEXT_FIELDS = ("messages", "prompt", "input")
# Built once: json.dumps with arguments makes a new encoder per call.
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_NAMESPACE = uuid.UUID("6f1d3c1e-6b0e-4c55-9d0a-5f2c8e0b7a41")


@dataclass(slots=True)
class Exchange:
    """What the tables keep of one request while it is answered (made only for an endpoint
    that logs payloads or tracks usage). Request headers are never kept: only the body."""

    body: Any  # as the caller sent it; the data plane works on copies
    raw: bytes | None = None  # the body's bytes as they came (the request column, unencoded)
    streamed: bool = False
    response: Any = None  # the answer's JSON, or the error body answered
    frames: list[bytes] = field(default_factory=list)  # a stream's SSE frames as sent
    frame_bytes: int = 0
    truncated: bool = False  # frames past _MAX_FRAME_BYTES were not kept
    # A fallback attempt's row shares the request's id: `attempt_of` is the request's exchange.
    attempt_of: Exchange | None = None
    request_id: str | None = None  # given by the writer, once per request

    def take_texts(self, guarded: dict[str, Any]) -> None:
        """A guardrail masked the request's texts: the row keeps them as the model got them
        (the table never holds what the guardrail kept from the model)."""
        if not isinstance(self.body, dict):
            return
        body = dict(self.body)
        for key in _TEXT_FIELDS:
            if key in body and key in guarded:
                body[key] = guarded[key]
        self.body, self.raw = body, None  # the bytes sent are not what is logged any more

    def attempt(self, answered: Any) -> Exchange:
        """An exchange for one failed fallback attempt, answered `answered` (an error body)."""
        return Exchange(self.body, self.raw, response=answered, attempt_of=self)

    def shared_request_id(self, fresh: str) -> str:
        """The request's id: the one its first row got, else `fresh` (a new id)."""
        owner = self.attempt_of or self
        if owner.request_id is None:
            owner.request_id = fresh
        return owner.request_id

    def keep_frame(self, frame: bytes) -> None:
        if self.truncated:
            return
        self.frame_bytes += len(frame)
        if self.frame_bytes > _MAX_FRAME_BYTES:
            self.truncated = True
            self.frames = []
            return
        self.frames.append(frame)


class RequestRecord(NamedTuple):
    """One answered request, as the data plane accounted it (a tuple: made on the event loop
    per request, where a frozen dataclass's __init__ costs several times as much)."""

    end_s: float  # wall clock at the end (time.time())
    elapsed_s: float
    endpoint_id: str
    instance_id: int  # the served entity instance (-1: none was ready)
    requester: str
    status: int
    input_tokens: int
    output_tokens: int
    payload_table: TableName | None
    usage: bool
    exchange: Exchange


def request_ids(n: int) -> list[str]:
    """`n` random (version 4) UUIDs: one urandom call for all (uuid4() costs 3 us each)."""
    h = os.urandom(16 * n).hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}-"
        f"{_VARIANT[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
        for i in range(0, 32 * n, 32)
    ]


# The variant bits (10xx) of the 17th hex digit, whatever the random digit was.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


@functools.lru_cache(maxsize=4096)  # a few instances, one id each: SHA-1 once, not per row
def served_entity_id(endpoint_id: str, instance_id: int) -> str | None:
    """A served entity instance's stable id (32 hex digits, like the platform's)."""
    if instance_id < 0:
        return None
    return uuid.uuid5(_NAMESPACE, f"{endpoint_id}/{instance_id}").hex


def _client_request_id(body: Any) -> str | None:
    value = body.get("client_request_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None


def _usage_context(body: Any) -> list[tuple[str, str]] | None:
    value = body.get("usage_context") if isinstance(body, dict) else None
    if not isinstance(value, dict):
        return None
    return [(str(k), v if isinstance(v, str) else json.dumps(v)) for k, v in value.items()]


def _encoded(value: Any, code: str) -> tuple[str | None, str | None]:
    """(JSON text, None), or (None, `code`) when it is over the platform's size limit."""
    if value is None:
        return None, None
    text = _ENCODE(value)
    # Characters <= bytes <= 4 x characters in UTF-8: encode only when it could be too big.
    if len(text) > MAX_PAYLOAD_BYTES or (
        4 * len(text) > MAX_PAYLOAD_BYTES and len(text.encode()) > MAX_PAYLOAD_BYTES
    ):
        return None, code
    return text, None


def aggregate_stream(frames: list[bytes]) -> dict[str, Any]:
    """A stream's SSE frames merged into one answer: each choice's deltas (or texts) joined,
    the last finish reason and `usage`; an error event's `error_code` / `message` kept."""
    out: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    texts: dict[int, list[str]] = {}
    for line in b"".join(frames).split(b"\n"):
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if not data or data == b"[DONE]":
            continue
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        if "error_code" in event:
            out["error_code"], out["message"] = event.get("error_code"), event.get("message")
            continue
        for key in ("id", "created", "model"):
            if key in event:
                out.setdefault(key, event[key])
        kind = event.get("object")
        if isinstance(kind, str):
            out["object"] = kind.removesuffix(".chunk")
        if event.get("usage") is not None:
            out["usage"] = event["usage"]
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
            merged = choices.setdefault(index, {"index": index})
            delta = choice.get("delta")
            if isinstance(delta, dict):
                message = merged.setdefault("message", {"role": "assistant"})
                if isinstance(delta.get("role"), str):
                    message["role"] = delta["role"]
                if isinstance(delta.get("content"), str):
                    texts.setdefault(index, []).append(delta["content"])
            elif isinstance(choice.get("text"), str):
                texts.setdefault(index, []).append(choice["text"])
            if choice.get("finish_reason") is not None:
                merged["finish_reason"] = choice["finish_reason"]
    for index, merged in choices.items():
        text = "".join(texts.get(index, ()))
        if "message" in merged:
            merged["message"]["content"] = text
        else:
            merged["text"] = text
    out["choices"] = [choices[i] for i in sorted(choices)]
    return out


def response_of(exchange: Exchange) -> Any:
    """The answer to log: the JSON answered, a stream merged, or TOO_LARGE."""
    if exchange.streamed and (exchange.frames or exchange.truncated):
        if exchange.truncated:
            return TOO_LARGE
        return aggregate_stream(exchange.frames)
    return exchange.response


def _request_text(exchange: Exchange) -> tuple[str | None, str | None]:
    """The request column: the body's bytes as they came (a valid UTF-8 JSON object: the
    route parsed them), else the body encoded; or the size-limit code."""
    raw = exchange.raw
    if raw is None:
        return _encoded(exchange.body, "MAX_REQUEST_SIZE_EXCEEDED")
    if len(raw) > MAX_PAYLOAD_BYTES:
        return None, "MAX_REQUEST_SIZE_EXCEEDED"
    return raw.decode(), None


def _response_text(exchange: Exchange, answer: Any) -> tuple[str | None, str | None]:
    """The response column: the bytes a plain call answered as they were sent (no second
    encoding), else the answer encoded; or the size-limit code."""
    code = "MAX_RESPONSE_SIZE_EXCEEDED"
    if answer is TOO_LARGE:
        return None, code
    if not exchange.streamed and len(exchange.frames) == 1:
        raw = exchange.frames[0]
        if len(raw) > MAX_PAYLOAD_BYTES:
            return None, code
        return raw.decode("utf-8", "replace"), None
    return _encoded(answer, code)


# A stream whose frames were not all kept: its answer is over the size limit.
TOO_LARGE = object()


def payload_row(record: RequestRecord) -> dict[str, Any]:
    """One record's payload row (the batch builder's, for one record)."""
    (columns,) = batch_columns([record], "")[0].values()
    return {name: values[0] for name, values in columns.items()}


def _characters(value: Any) -> int:
    """Characters of text in a prompt or an answer (message contents, prompts, inputs)."""
    if type(value) is str:
        return len(value)
    if type(value) is list and all(
        type(v) is dict and type(v.get("content")) is str for v in value
    ):  # chat messages: the hot shape, without the recursion
        return sum(len(v["content"]) for v in value)
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_characters(v) for v in value)
    if isinstance(value, dict):
        for key in ("content", "text"):
            if key in value:
                return _characters(value[key])
        return sum(_characters(value[k]) for k in ("message", "delta") if k in value)
    return 0


def _input_characters(body: Any) -> int | None:
    if not isinstance(body, dict):
        return None
    for key in ("messages", "prompt", "input"):
        if key in body:
            return _characters(body[key])
    return None


def _output_characters(answer: Any) -> int | None:
    if type(answer) is not dict or "choices" not in answer:
        return None
    choices = answer["choices"]
    if type(choices) is list:  # the hot shapes, without the recursion
        total = 0
        for choice in choices:
            message = choice.get("message") if type(choice) is dict else None
            if type(message) is dict and type(message.get("content")) is str:
                total += len(message["content"])
            elif type(choice) is dict and type(choice.get("text")) is str:
                total += len(choice["text"])
            else:
                return _characters(choices)
        return total
    return _characters(choices)


# The columns of each table, in the schemas' order (their one owner: _schemas.py).
PAYLOAD_COLUMNS = tuple(PAYLOAD_SCHEMA.names)
USAGE_COLUMNS = tuple(USAGE_SCHEMA.names)


def batch_columns(
    batch: list[RequestRecord], workspace_id: str
) -> tuple[dict[TableName, dict[str, list[Any]]], dict[str, list[Any]]]:
    """A batch of records as columns (payload tables by name, and the usage table): no row
    dicts (Arrow takes columns), each table's columns filled in one tight loop (this runs on
    the writer thread, holding the GIL the event loop needs: every microsecond counts)."""
    ids = request_ids(len(batch))
    common = []  # per record: (request id, client request id, start in us, entity id, answer)
    by_table: dict[TableName, list[int]] = {}
    for i, record in enumerate(batch):
        exchange = record.exchange
        common.append(
            (
                exchange.shared_request_id(ids[i]),
                _client_request_id(exchange.body),
                round((record.end_s - record.elapsed_s) * 1_000_000),
                served_entity_id(record.endpoint_id, record.instance_id),
                response_of(exchange),
            )
        )
        if record.payload_table is not None:
            by_table.setdefault(record.payload_table, []).append(i)
    payloads = {
        table: _payload_columns(batch, common, indexes) for table, indexes in by_table.items()
    }
    return payloads, _usage_columns(batch, common, workspace_id)


def _payload_columns(
    batch: list[RequestRecord], common: list[tuple[Any, ...]], indexes: list[int]
) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in PAYLOAD_COLUMNS}
    (ids, clients, dates, times, statuses, fractions, durations, requests, responses,
     entities, codes, requesters) = (columns[name].append for name in PAYLOAD_COLUMNS)  # fmt: skip
    for i in indexes:
        record = batch[i]
        request_id, client_id, start_us, entity_id, answer = common[i]
        exchange = record.exchange
        request, request_code = _request_text(exchange)
        response, response_code = _response_text(exchange, answer)
        ids(request_id)
        clients(client_id)
        dates(start_us // 86_400_000_000)
        times(start_us)
        statuses(record.status)
        fractions(1.0)
        durations(round(record.elapsed_s * 1000))
        requests(request)
        responses(response)
        entities(entity_id)
        codes([] if request_code is response_code is None else _codes(request_code, response_code))
        requesters(record.requester)
    return columns


def _codes(*codes: str | None) -> list[str]:
    return [c for c in codes if c]


def _usage_columns(
    batch: list[RequestRecord], common: list[tuple[Any, ...]], workspace_id: str
) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [] for name in USAGE_COLUMNS}
    (accounts, workspaces, clients, ids, requesters, statuses, times, input_tokens,
     output_tokens, input_chars, output_chars, contexts, streaming,
     entities) = (columns[name].append for name in USAGE_COLUMNS)  # fmt: skip
    for record, (request_id, client_id, start_us, entity_id, answer) in zip(
        batch, common, strict=True
    ):
        if not record.usage:
            continue
        body = record.exchange.body
        accounts(None)
        workspaces(workspace_id)
        clients(client_id)
        ids(request_id)
        requesters(record.requester)
        statuses(record.status)
        times(start_us)
        input_tokens(record.input_tokens)
        output_tokens(record.output_tokens)
        input_chars(_input_characters(body))
        output_chars(None if answer is TOO_LARGE else _output_characters(answer))
        contexts(_usage_context(body))
        streaming(record.exchange.streamed)
        entities(entity_id)
    return columns
