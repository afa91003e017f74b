"""Rows of the payload and usage tables, made from what the data plane handed over.

The data plane does as little as it can per request: it keeps references (the body as the
caller sent it, the answer, a stream's frames) in an `Exchange` and hands a `RequestRecord`
to the recorder. Everything that costs (JSON encoding, merging a stream's chunks into one
answer, size checks, ids) happens here, on the writer thread.
"""

from __future__ import annotations

import functools
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from engine.tables._names import TableName

__all__ = [
    "Exchange",
    "MAX_PAYLOAD_BYTES",
    "RequestRecord",
    "aggregate_stream",
    "TOO_LARGE",
    "payload_row",
    "request_id",
    "response_of",
    "served_entity_id",
    "usage_row",
]

# The platform stores neither a request nor a response over 1 MiB; the row is kept, the
# payload column is NULL and `logging_error_codes` says which.
MAX_PAYLOAD_BYTES = 1024 * 1024
# A stream's frames are kept up to this many bytes (its merged answer is far smaller than
# its frames; past this it is certainly over MAX_PAYLOAD_BYTES).
_MAX_FRAME_BYTES = 16 * MAX_PAYLOAD_BYTES
_TEXT_FIELDS = ("messages", "prompt", "input")
_NAMESPACE = uuid.UUID("6f1d3c1e-6b0e-4c55-9d0a-5f2c8e0b7a41")


@dataclass(slots=True)
class Exchange:
    """What the tables keep of one request while it is answered (made only for an endpoint
    that logs payloads or tracks usage). Request headers are never kept: only the body."""

    body: Any  # as the caller sent it; the data plane works on copies
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
        self.body = body

    def attempt(self, answered: Any) -> Exchange:
        """An exchange for one failed fallback attempt, answered `answered` (an error body)."""
        return Exchange(self.body, response=answered, attempt_of=self)

    def shared_request_id(self) -> str:
        owner = self.attempt_of or self
        if owner.request_id is None:
            owner.request_id = request_id()
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


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One answered request, as the data plane accounted it."""

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


def request_id() -> str:
    """A random (version 4) UUID, as the platform's request ids are; cheaper than uuid4()."""
    h = "%032x" % (random.getrandbits(128) & _V4_MASK | _V4_BITS)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_V4_MASK = ~(0xF000 << 64 | 0xC000 << 48) & (1 << 128) - 1
_V4_BITS = 0x4000 << 64 | 0x8000 << 48


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
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
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


def payload_row(record: RequestRecord, request_id: str, answer: Any) -> dict[str, Any]:
    exchange = record.exchange
    codes: list[str] = []
    request, code = _encoded(exchange.body, "MAX_REQUEST_SIZE_EXCEEDED")
    if code:
        codes.append(code)
    response, code = _response_text(exchange, answer)
    if code:
        codes.append(code)
    start_us = round((record.end_s - record.elapsed_s) * 1_000_000)
    return {
        "databricks_request_id": request_id,
        "client_request_id": _client_request_id(exchange.body),
        "request_date": start_us // 86_400_000_000,
        "request_time": start_us,
        "status_code": record.status,
        "sampling_fraction": 1.0,
        "execution_duration_ms": round(record.elapsed_s * 1000),
        "request": request,
        "response": response,
        "served_entity_id": served_entity_id(record.endpoint_id, record.instance_id),
        "logging_error_codes": codes,
        "requester": record.requester,
    }


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
    if not isinstance(answer, dict) or "choices" not in answer:
        return None
    return _characters(answer["choices"])


def usage_row(
    record: RequestRecord, request_id: str, workspace_id: str, answer: Any
) -> dict[str, Any]:
    exchange = record.exchange
    return {
        "account_id": None,
        "workspace_id": workspace_id,
        "client_request_id": _client_request_id(exchange.body),
        "databricks_request_id": request_id,
        "requester": record.requester,
        "status_code": record.status,
        "request_time": round((record.end_s - record.elapsed_s) * 1_000_000),
        "input_token_count": record.input_tokens,
        "output_token_count": record.output_tokens,
        "input_character_count": _input_characters(exchange.body),
        "output_character_count": None if answer is TOO_LARGE else _output_characters(answer),
        "usage_context": _usage_context(exchange.body),
        "request_streaming": exchange.streamed,
        "served_entity_id": served_entity_id(record.endpoint_id, record.instance_id),
    }
