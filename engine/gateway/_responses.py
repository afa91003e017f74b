"""The OpenAI Responses API (`POST /serving-endpoints/responses`) on chat endpoints.

A Responses request is translated to a chat request and answered by the data plane's own
path (limits, guardrails, fallbacks, accounting are the chat route's); the answer is
translated back on its way out by wrapping the ASGI `send`:

| Responses request        | chat request                                 |
|--------------------------|----------------------------------------------|
| `model`                  | the endpoint                                 |
| `instructions`           | a first `system` message                     |
| `input`: a string        | one `user` message                           |
| `input`: message items   | messages (`developer` -> `system`; content   |
|                          | parts `input_text` / `output_text` -> text)  |
| `max_output_tokens`      | `max_tokens`; `temperature`, `top_p` as they are |

Streams: chat chunks become `response.created`, `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta`..., then the `.done` events and
`response.completed` (at the upstream's `[DONE]`); a failure is an `error` event carrying the
platform's `error_code` / `message` and OpenAI's `error` object, so the SDK raises on it.
Errors before the answer starts keep their status and body. Tools are not supported (400).
https://platform.openai.com/docs/api-reference/responses
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from engine.asgi import ApiError
from providers.adapters._sse import EventFramer, event_data

__all__ = ["ResponsesSend", "responses_to_chat"]

# Accepted and without effect on a chat answer (`store`: nothing is kept server-side).
_IGNORED = ("metadata", "store", "user", "parallel_tool_calls", "truncation", "service_tier")
_FIELDS = (
    "model",
    "input",
    "instructions",
    "stream",
    "temperature",
    "top_p",
    "max_output_tokens",
    "tools",
    "tool_choice",
    "text",
    *_IGNORED,
)
_ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}


def _bad(message: str) -> ApiError:
    return ApiError(400, "INVALID_PARAMETER_VALUE", message)


def _content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not (
                isinstance(part, dict)
                and part.get("type") in ("input_text", "output_text", "text")
                and isinstance(part.get("text"), str)
            ):
                raise _bad(f"{where}.content[{i}]: only text parts are supported")
            texts.append(part["text"])
        return "".join(texts)
    raise _bad(f"{where}.content must be a string or a list of text parts")


def _messages(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _bad("`input` must be a string or a non-empty list of messages")
    out = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict) or item.get("type", "message") != "message":
            raise _bad(f"{where}: only message items are supported")
        role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise _bad(f"{where}.role must be one of {', '.join(_ROLES)}")
        out.append({"role": role, "content": _content(item.get("content"), where)})
    return out


def responses_to_chat(body: Any) -> tuple[str, dict[str, Any]]:
    """(endpoint, chat body) of a Responses request; 400 naming what cannot be served."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    for key in body:
        if key not in _FIELDS:
            raise _bad(f"unknown or unsupported field `{key}` for /responses")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("`model` must name the serving endpoint")
    if "input" not in body:
        raise _bad("`input` is required")
    if body.get("tools") or body.get("tool_choice") not in (None, "none", "auto"):
        raise _bad("tools are not supported by /responses on this host")
    text_format = ((body.get("text") or {}).get("format") or {}).get("type", "text")
    if text_format != "text":
        raise _bad("only `text.format.type: text` is supported")
    messages = _messages(body["input"])
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise _bad("`instructions` must be a string")
        messages = [{"role": "system", "content": instructions}, *messages]
    chat: dict[str, Any] = {"messages": messages}
    for ours, theirs in (("max_output_tokens", "max_tokens"), ("temperature",) * 2, ("top_p",) * 2):
        if body.get(ours) is not None:
            chat[theirs] = body[ours]
    if body.get("stream") is not None:
        chat["stream"] = body["stream"]
    return model, chat


def _usage(usage: Any) -> dict[str, Any]:
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


def _message(item_id: str, text: str, status: str) -> dict[str, Any]:
    parts = [{"type": "output_text", "text": text, "annotations": []}] if status else []
    return {
        "type": "message",
        "id": item_id,
        "status": status or "in_progress",
        "role": "assistant",
        "content": parts,
    }


class ResponsesSend:
    """An ASGI `send` that turns the chat route's answer into a Responses answer."""

    def __init__(self, send: Any, model: str) -> None:
        self._send = send
        self._model = model
        self._id = "resp_" + uuid.uuid4().hex
        self._item = "msg_" + uuid.uuid4().hex
        self._created = int(time.time())
        self._start: dict[str, Any] | None = None
        self._mode = ""  # "json", "stream" or "pass" (an error: sent as it is)
        self._body = b""
        self._framer = EventFramer()
        self._text = ""
        self._seq = 0
        self._usage: Any = None
        self._opened = False

    def _response(self, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "status": status,
            "model": self._model,
            "output": output,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "metadata": {},
            "parallel_tool_calls": False,
            "tool_choice": "none",
            "tools": [],
        }
        if status == "completed":
            out["usage"] = _usage(self._usage)
        return out

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers") or [])
            if message["status"] != 200:
                self._mode = "pass"
            elif headers.get(b"content-type", b"").startswith(b"text/event-stream"):
                self._mode = "stream"
            else:
                self._mode = "json"
                self._start = message
                return
            await self._send(message)
            return
        if self._mode == "pass":
            await self._send(message)
        elif self._mode == "json":
            self._body += message.get("body", b"")
            if not message.get("more_body"):
                await self._send_json()
        else:
            await self._relay(message)

    async def _send_json(self) -> None:
        assert self._start is not None
        chat = json.loads(self._body)
        choices = chat.get("choices") or [{}]
        text = ((choices[0] or {}).get("message") or {}).get("content") or ""
        self._usage = chat.get("usage")
        body = json.dumps(
            self._response("completed", [_message(self._item, text, "completed")]),
            separators=(",", ":"),
        ).encode()
        headers = [
            (k, str(len(body)).encode() if k == b"content-length" else v)
            for k, v in self._start.get("headers") or []
        ]
        await self._send({**self._start, "headers": headers})
        await self._send({"type": "http.response.body", "body": body})

    def _event(self, payload: dict[str, Any]) -> bytes:
        payload = {**payload, "sequence_number": self._seq}
        self._seq += 1
        data = json.dumps(payload, separators=(",", ":"))
        return f"event: {payload['type']}\ndata: {data}\n\n".encode()

    def _opening(self) -> bytes:
        self._opened = True
        return (
            self._event({"type": "response.created", "response": self._response("in_progress", [])})
            + self._event(
                {
                    "type": "response.output_item.added",
                    "output_index": 0,
                    "item": _message(self._item, "", ""),
                }
            )
            + self._event(
                {
                    "type": "response.content_part.added",
                    "item_id": self._item,
                    "output_index": 0,
                    "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                }
            )
        )

    def _closing(self) -> bytes:
        part = {"type": "output_text", "text": self._text, "annotations": []}
        where = {"item_id": self._item, "output_index": 0, "content_index": 0}
        done = _message(self._item, self._text, "completed")
        return (
            self._event(
                {"type": "response.output_text.done", **where, "text": self._text, "logprobs": []}
            )
            + self._event({"type": "response.content_part.done", **where, "part": part})
            + self._event({"type": "response.output_item.done", "output_index": 0, "item": done})
            + self._event(
                {"type": "response.completed", "response": self._response("completed", [done])}
            )
        )

    def _translate(self, raw: bytes) -> bytes:
        data = event_data(raw)
        if data == b"[DONE]":
            return (b"" if self._opened else self._opening()) + self._closing()
        try:
            chunk = json.loads(data)
        except ValueError:
            return b""
        out = b"" if self._opened else self._opening()
        if not isinstance(chunk, dict):
            return out
        if "error_code" in chunk:  # the data plane's failure event
            error = chunk.get("error") or {}
            return out + self._event(
                {
                    "type": "error",
                    "code": chunk["error_code"],
                    "message": chunk.get("message", ""),
                    "param": None,
                    "error_code": chunk["error_code"],
                    "error": error,
                }
            )
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = (choice or {}).get("delta") or {}
            piece = delta.get("content")
            if isinstance(piece, str) and piece:
                self._text += piece
                out += self._event(
                    {
                        "type": "response.output_text.delta",
                        "item_id": self._item,
                        "output_index": 0,
                        "content_index": 0,
                        "delta": piece,
                        "logprobs": [],
                    }
                )
        return out

    async def _relay(self, message: dict[str, Any]) -> None:
        events = self._framer.feed(message.get("body", b""))
        out = b"".join(
            self._translate(part + b"\n\n") for part in events.split(b"\n\n") if part.strip()
        )
        more = bool(message.get("more_body"))
        if out or not more:
            await self._send({"type": "http.response.body", "body": out, "more_body": more})
