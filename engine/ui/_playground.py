"""The playground's prompts: one prompt to several endpoints through this host's own data plane
(auth, limits, usage records and all), as the caller (their bearer token).

Two ways an answer reaches the page:

| how                              | route                         | answer                    |
|----------------------------------|-------------------------------|---------------------------|
| the form, without script         | POST /ml/playground           | every answer, at the end  |
| app.js, one fetch per endpoint   | POST /ml/playground/stream    | SSE, text as it arrives   |

The stream route re-frames the data plane's chunks as small events the page can show without
knowing each task's shape:

    data: {"delta": "Hel"}                                     text, as it arrives
    data: {"done": true, "ms": 812, "first_ms": 95, "usage": {...}}   the end
    data: {"error": "429: rate limit exceeded"}                 it failed (then nothing more)
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["ask_one", "base_url", "payload", "playground_error", "stream_one"]

CHAT = "llm/v1/chat"
COMPLETIONS = "llm/v1/completions"
# Generous: a self-hosted model on CPU can take a minute to answer a long prompt.
TIMEOUT_S = 120


def base_url(scope: dict[str, Any]) -> str:
    """This host's own address, as the request reached it (0.0.0.0 -> loopback)."""
    host, port = scope.get("server") or ("127.0.0.1", 80)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"


def client_for(scope: dict[str, Any], token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url(scope),
        headers={"authorization": f"Bearer {token}"},
        timeout=TIMEOUT_S,
        trust_env=False,
    )


def payload(task: str, form: dict[str, str], *, stream: bool = False) -> dict[str, Any]:
    prompt = form.get("prompt", "")
    body: dict[str, Any] = (
        {"messages": [{"role": "user", "content": prompt}]} if task == CHAT else {"prompt": prompt}
    )
    for key, cast in (("temperature", float), ("max_tokens", int)):
        if form.get(key, "").strip():
            body[key] = cast(form[key])
    if stream:
        # Token counts come in a last chunk only when asked for (OpenAI's stream_options).
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def playground_error(picked: list[str], tasks: dict[str, str], form: dict[str, str]) -> str:
    """The first problem of a playground form, naming its field ("" when there is none)."""
    if not picked:
        return "Endpoints: pick one or more endpoints to compare"
    unknown = [n for n in picked if n not in tasks]
    if unknown:
        return f"Endpoints: no endpoint {unknown[0]!r} that you may query"
    if len({tasks[n] for n in picked}) > 1:
        return (
            "Endpoints: pick endpoints of the same task ("
            + ", ".join(sorted({tasks[n] for n in picked}))
            + ")"
        )
    if tasks[picked[0]] not in (CHAT, COMPLETIONS):
        return (
            f"Endpoints: the playground sends chat or completions prompts, not {tasks[picked[0]]}"
        )
    if not form.get("prompt", "").strip():
        return "Prompt: write a prompt"
    for key, cast, low, high in (("temperature", float, 0.0, 2.0), ("max_tokens", int, 1, 100_000)):
        raw = form.get(key, "").strip()
        if not raw:
            continue
        try:
            value = cast(raw)
        except ValueError:
            return f"{key}: not a number: {raw[:20]!r}"
        if not low <= value <= high:
            return f"{key}: must be between {low} and {high}"
    return ""


def _refusal(status: int, raw: bytes) -> str:
    """`status: message` of a data-plane refusal (its platform body, else its first bytes)."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    return f"{status}: {message or raw[:300].decode('utf-8', 'replace')}"


def _text_of(chunk: dict[str, Any], task: str, *, delta: bool) -> str:
    choice = (chunk.get("choices") or [{}])[0] or {}
    if task == CHAT:
        part = choice.get("delta" if delta else "message") or {}
        return str(part.get("content") or "")
    return str(choice.get("text") or "")


async def ask_one(
    client: httpx.AsyncClient, name: str, body: dict[str, Any], task: str
) -> dict[str, Any]:
    """One whole answer: name, ok, text, ms, usage."""
    started = time.perf_counter()
    try:
        response = await client.post(f"/serving-endpoints/{quote(name)}/invocations", json=body)
    except httpx.HTTPError as exc:
        return {
            "name": name,
            "ok": False,
            "text": f"no answer: {type(exc).__name__}",
            "ms": 0,
            "usage": {},
        }
    ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        text = _refusal(response.status_code, response.content)
        return {"name": name, "ok": False, "text": text, "ms": ms, "usage": {}}
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    return {
        "name": name,
        "ok": True,
        "text": _text_of(answer, task, delta=False),
        "ms": ms,
        "usage": answer.get("usage") or {},
    }


def event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


async def stream_one(
    client: httpx.AsyncClient, name: str, body: dict[str, Any], task: str
) -> AsyncIterator[bytes]:
    """The page's events of one streamed answer (see the module docstring)."""
    started = time.perf_counter()
    first_ms: float | None = None
    usage: dict[str, Any] = {}
    url = f"/serving-endpoints/{quote(name)}/invocations"
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                yield event({"error": _refusal(response.status_code, await response.aread())})
                return
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk or "error_code" in chunk:
                    message = chunk.get("message") or (chunk.get("error") or {}).get("message")
                    yield event({"error": f"failed mid-answer: {message or 'unknown error'}"})
                    return
                if isinstance(chunk.get("usage"), dict):
                    usage = chunk["usage"]
                text = _text_of(chunk, task, delta=True)
                if text:
                    if first_ms is None:
                        first_ms = (time.perf_counter() - started) * 1000
                    yield event({"delta": text})
    except httpx.HTTPError as exc:
        yield event({"error": f"no answer: {type(exc).__name__}"})
        return
    ms = (time.perf_counter() - started) * 1000
    yield event({"done": True, "ms": round(ms), "first_ms": round(first_ms or ms), "usage": usage})
