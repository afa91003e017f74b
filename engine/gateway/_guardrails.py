"""AI Gateway guardrails, enforced: `ai_gateway.guardrails.input` / `.output`.

| field              | input (the request)                 | output (the answer)               |
|--------------------|-------------------------------------|-----------------------------------|
| `pii.behavior`     | BLOCK: 400 naming the entity types, | BLOCK: 400 (a stream: its last    |
|                    | nothing sent; MASK: spans replaced  | event); MASK: spans replaced      |
|                    | before the upstream sees them       | before the caller sees them       |
| `safety: true`     | the guard model says unsafe: 400    | the same, on the answer           |
| `invalid_keywords` | any keyword in the text: 400        | the same                          |
| `valid_topics`     | none of the topics in the text: 400 | the same                          |

Order per side: keywords and topics, then PII, then safety (the guard model sees masked text,
and is asked only when the cheap checks passed). A route without guardrails has none compiled
(`compile_guardrails` returns None): the data plane then does nothing extra.

The guard model is an endpoint of this host that the operator names (`engine serve
--safety-endpoint NAME`, `$ENGINE_SAFETY_ENDPOINT`); it is asked as Llama Guard is: the
conversation as chat messages, answering `safe` or `unsafe` and a line of categories. A guard
that cannot be asked, or answers anything else, fails closed (503): an unchecked request is not
let through.

Streams: text is released `_TAIL` characters behind what arrived, and never in the middle of a
detected entity, so an entity split across chunks is masked (or blocked) whole. With output
`safety`, an answer is held until it is complete (a verdict needs all of it).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from engine.asgi import ApiError
from engine.gateway._metrics import Metrics
from engine.gateway._pii import PiiDetector, detector, mask
from providers.adapters._sse import DONE, event, event_data

__all__ = ["GuardrailBlock", "Guardrails", "Judge", "Side", "compile_guardrails", "guarded_stream"]

# Asks the guard model about a conversation; its answer's text.
Judge = Callable[[list[dict[str, Any]]], Awaitable[str]]

# Characters of a stream held back: longer than any entity the detector finds (an IBAN with
# spaces is 42, an email address rarely over 100) and than any keyword.
_TAIL = 128
_BLOCK = "BLOCK"
_MASK = "MASK"


class GuardrailBlock(ApiError):
    """A guardrail refused the text: answered 400; `logged` is the request as the payload
    table may keep it (its PII masked), when it differs from what the caller sent."""

    logged: dict[str, Any] | None = None


@dataclass(frozen=True)
class Side:
    """One direction's checks, compiled from an `AiGatewayGuardrailParameters`."""

    direction: str  # "input" or "output"
    pii: str | None = None  # BLOCK or MASK (NONE compiles to None)
    safety: bool = False
    keywords: re.Pattern[str] | None = None
    topics: re.Pattern[str] | None = None
    topic_names: tuple[str, ...] = ()
    tail: int = _TAIL
    _detector: list[PiiDetector] = field(default_factory=list, compare=False)

    @property
    def detector(self) -> PiiDetector:
        if not self._detector:
            self._detector.append(detector())
        return self._detector[0]

    def blocked(self, what: str) -> GuardrailBlock:
        noun = "request" if self.direction == "input" else "response"
        return GuardrailBlock(
            400,
            "BAD_REQUEST",
            f"{self.direction.capitalize()} guardrail triggered: the {noun} {what}",
        )

    def check_words(self, texts: list[str]) -> str | None:
        """Which word check fails (the guardrail's name), or None."""
        if self.keywords is not None and any(self.keywords.search(t) for t in texts):
            return "invalid_keywords"
        if self.topics is not None and not any(self.topics.search(t) for t in texts):
            return "valid_topics"
        return None

    def word_error(self, check: str) -> ApiError:
        if check == "invalid_keywords":
            return self.blocked("contains an invalid keyword")
        return self.blocked(f"is not about an allowed topic ({', '.join(self.topic_names)})")


def _side(direction: str, params: dict[str, Any] | None) -> Side | None:
    if not params:
        return None
    behavior = (params.get("pii") or {}).get("behavior")
    pii = behavior if behavior in (_BLOCK, _MASK) else None
    keywords = [k for k in params.get("invalid_keywords") or [] if k]
    topics = [t for t in params.get("valid_topics") or [] if t.strip()]
    safety = params.get("safety") is True
    if pii is None and not safety and not keywords and not topics:
        return None
    side = Side(
        direction,
        pii=pii,
        safety=safety,
        # The platform: "keyword or string matching": a case-insensitive substring.
        keywords=re.compile("|".join(map(re.escape, keywords)), re.I) if keywords else None,
        # A topic is on when its words appear as words (the platform asks a model; this is
        # the lexical reading of the same list, and the field is deprecated there).
        topics=re.compile(r"\b(?:" + "|".join(re.escape(t.strip()) for t in topics) + r")\b", re.I)
        if topics
        else None,
        topic_names=tuple(t.strip() for t in topics),
        tail=max([_TAIL, *(len(k) for k in keywords)]),
    )
    if pii is not None:
        side.detector  # noqa: B018 - loaded when the table is built, not by the first request
    return side


@dataclass(frozen=True)
class Guardrails:
    endpoint: str
    input: Side | None
    output: Side | None


def compile_guardrails(endpoint: str, spec: dict[str, Any] | None) -> Guardrails | None:
    """The checks of `ai_gateway.guardrails`; None when there is nothing to enforce."""
    if not spec:
        return None
    guard = Guardrails(
        endpoint, _side("input", spec.get("input")), _side("output", spec.get("output"))
    )
    return guard if guard.input or guard.output else None


# --- where the text is -----------------------------------------------------------------


def _rewrite_content(content: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(content, str):
        return fn(content)
    if isinstance(content, list):  # OpenAI content parts: only text parts hold text
        return [
            {**p, "text": fn(p["text"])}
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            else p
            for p in content
        ]
    return content


def rewrite_input(
    task: str | None, body: dict[str, Any], fn: Callable[[str], str]
) -> dict[str, Any]:
    """`body` with every text the caller sent passed through `fn` (a new dict)."""
    if task == "llm/v1/chat" or "messages" in body:
        messages = [
            {**m, "content": _rewrite_content(m.get("content"), fn)} if isinstance(m, dict) else m
            for m in body.get("messages") or []
        ]
        return {**body, "messages": messages}
    key = "prompt" if "prompt" in body else "input"
    value = body.get(key)
    if isinstance(value, str):
        return {**body, key: fn(value)}
    if isinstance(value, list):
        return {**body, key: [fn(v) if isinstance(v, str) else v for v in value]}
    return body


def _texts(rewrite: Callable[[Callable[[str], str]], Any]) -> list[str]:
    seen: list[str] = []

    def keep(text: str) -> str:
        seen.append(text)
        return text

    rewrite(keep)
    return seen


def _output_text(choice: dict[str, Any]) -> Any:
    message = choice.get("message")
    if isinstance(message, dict):
        return message.get("content")
    return choice.get("text")


def _rewrite_output(result: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    choices = []
    for choice in result.get("choices") or []:
        if not isinstance(choice, dict):
            choices.append(choice)
        elif isinstance(choice.get("message"), dict):
            message = choice["message"]
            choices.append(
                {
                    **choice,
                    "message": {**message, "content": _rewrite_content(message.get("content"), fn)},
                }
            )
        elif isinstance(choice.get("text"), str):
            choices.append({**choice, "text": fn(choice["text"])})
        else:
            choices.append(choice)
    return {**result, "choices": choices}


def conversation(task: str | None, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The request as the guard model reads it: user and assistant turns, text only."""
    if isinstance(body.get("messages"), list):
        turns = []
        for m in body["messages"]:
            if isinstance(m, dict) and m.get("role") in ("user", "assistant"):
                text = "\n".join(_texts(lambda fn, m=m: _rewrite_content(m.get("content"), fn)))
                if text:
                    turns.append({"role": m["role"], "content": text})
        return turns
    text = "\n".join(_texts(lambda fn: rewrite_input(task, body, fn)))
    return [{"role": "user", "content": text}] if text else []


# --- checks ------------------------------------------------------------------------------


async def _safety(side: Side, judge: Judge, turns: list[dict[str, Any]]) -> None:
    if not turns:
        return
    answer = (await judge(turns)).strip()
    verdict, _, rest = answer.partition("\n")
    verdict = verdict.strip().lower()
    if verdict == "safe":
        return
    if verdict == "unsafe":
        categories = rest.strip()
        detail = f" ({categories})" if categories else ""
        raise side.blocked(f"was flagged as unsafe by the safety filter{detail}")
    raise ApiError(
        503,
        "TEMPORARILY_UNAVAILABLE",
        "the safety guard model answered neither `safe` nor `unsafe`; "
        "the request was not let through",
    )


def _pii_types(spans: list[Any]) -> str:
    return ", ".join(sorted({s.entity_type for s in spans}))


class _Counter:
    def __init__(self, metrics: Metrics, endpoint: str, direction: str) -> None:
        self.metrics, self.endpoint, self.direction = metrics, endpoint, direction

    def __call__(self, guardrail: str, action: str, n: int = 1) -> None:
        self.metrics.guardrails[(self.endpoint, self.direction, guardrail, action)] += n


async def check_input(
    guard: Guardrails, task: str | None, body: dict[str, Any], judge: Judge, metrics: Metrics
) -> dict[str, Any]:
    """The body to send upstream (masked as configured), or an ApiError to answer instead."""
    side = guard.input
    if side is None:
        return body
    count = _Counter(metrics, guard.endpoint, "input")
    check = side.check_words(_texts(lambda fn: rewrite_input(task, body, fn)))
    if check is not None:
        count(check, "block")
        raise side.word_error(check)
    if side.pii is not None:
        found: list[Any] = []

        def scan(text: str) -> str:
            spans = side.detector.find(text)
            found.extend(spans)
            return mask(text, spans) if spans else text

        masked = rewrite_input(task, body, scan)
        if found and side.pii == _BLOCK:
            count("pii", "block")
            blocked = side.blocked(f"contains PII ({_pii_types(found)})")
            blocked.logged = masked  # the payload table keeps the request without the PII
            raise blocked
        if found:
            count("pii", "mask", len(found))
            body = masked
    if side.safety:
        try:
            await _safety(side, judge, conversation(task, body))
        except ApiError as exc:
            if exc.status == 400:
                count("safety", "block")
            raise
    return body


async def check_output(
    guard: Guardrails,
    task: str | None,
    body: dict[str, Any],
    result: dict[str, Any],
    judge: Judge,
    metrics: Metrics,
) -> dict[str, Any]:
    """The answer to send the caller (masked as configured), or an ApiError instead."""
    side = guard.output
    if side is None:
        return result
    count = _Counter(metrics, guard.endpoint, "output")
    texts = _texts(lambda fn: _rewrite_output(result, fn))
    check = side.check_words(texts)
    if check is not None:
        count(check, "block")
        raise side.word_error(check)
    if side.pii is not None:
        found: list[Any] = []

        def scan(text: str) -> str:
            spans = side.detector.find(text)
            found.extend(spans)
            return mask(text, spans) if side.pii == _MASK else text

        masked = _rewrite_output(result, scan)
        if found and side.pii == _BLOCK:
            count("pii", "block")
            raise side.blocked(f"contains PII ({_pii_types(found)})")
        if found:
            count("pii", "mask", len(found))
            result = masked
    if side.safety:
        answer = "\n".join(_texts(lambda fn: _rewrite_output(result, fn)))
        turns = conversation(task, body) + (
            [{"role": "assistant", "content": answer}] if answer else []
        )
        try:
            await _safety(side, judge, turns)
        except ApiError as exc:
            if exc.status == 400:
                count("safety", "block")
            raise
    return result


# --- streams -----------------------------------------------------------------------------


def _events(raw: bytes) -> Iterator[bytes]:
    """The whole events of one frame (an adapter may pass several through at once)."""
    for part in raw.split(b"\n\n"):
        if part.strip():
            yield part + b"\n\n"


class _StreamText:
    """What one choice of a stream said, and how much of it was released."""

    def __init__(self) -> None:
        self.pending = ""
        self.said = ""  # everything released (for the output safety check)
        self.closed = False  # its finish_reason came


async def guarded_stream(
    guard: Guardrails,
    task: str | None,
    body: dict[str, Any],
    frames: AsyncIterator[bytes],
    judge: Judge,
    metrics: Metrics,
) -> AsyncIterator[bytes]:
    """`frames` with the output checks applied: text released behind a tail window (all of
    it at the end with `safety`); a block raises ApiError, which the relay sends as the
    stream's last event."""
    side = guard.output
    assert side is not None
    count = _Counter(metrics, guard.endpoint, "output")
    texts: dict[int, _StreamText] = {}
    last: dict[str, Any] | None = None

    async def release(state: _StreamText, final: bool) -> str:
        buf = state.pending
        if state.closed and not buf:
            return ""  # a finished choice: [DONE] after its finish_reason
        state.closed = final
        # A keyword that ends in `buf` starts at most `tail` characters before it.
        if side.keywords is not None and side.keywords.search(state.said[-side.tail :] + buf):
            count("invalid_keywords", "block")
            raise side.word_error("invalid_keywords")
        if final and side.topics is not None and not side.topics.search(state.said + buf):
            count("valid_topics", "block")
            raise side.word_error("valid_topics")
        if side.safety and not final:
            return ""
        spans = side.detector.find(buf) if side.pii is not None and buf else []
        if spans and side.pii == _BLOCK:
            count("pii", "block")
            raise side.blocked(f"contains PII ({_pii_types(spans)})")
        cut = len(buf) if final else max(0, len(buf) - side.tail)
        for span in spans:
            if span.start < cut < span.end:
                cut = span.start
        done = [s for s in spans if s.end <= cut]
        if done:
            count("pii", "mask", len(done))
        out = mask(buf[:cut], done)
        state.pending = buf[cut:]
        if final and side.safety:
            answer = state.said + out
            turns = conversation(task, body) + [{"role": "assistant", "content": answer}]
            try:
                await _safety(side, judge, turns)
            except ApiError as exc:
                if exc.status == 400:
                    count("safety", "block")
                raise
        state.said += out
        return out

    async def flush() -> AsyncIterator[bytes]:
        """Text still held when the stream ends without a finish: one more chunk per choice."""
        for index, state in texts.items():
            out = await release(state, final=True)
            if out and last is not None:
                yield event(_chunk_like(last, index, out, task))

    async with aclosing(frames):
        async for raw in frames:
            for ev in _events(raw):
                data = event_data(ev)
                if data == b"[DONE]":
                    async for extra in flush():
                        yield extra
                    texts.clear()
                    yield DONE
                    continue
                try:
                    chunk = json.loads(data)
                except ValueError:
                    yield ev
                    continue
                if not isinstance(chunk, dict) or not isinstance(chunk.get("choices"), list):
                    yield ev
                    continue
                last = chunk
                for choice in chunk["choices"]:
                    if not isinstance(choice, dict):
                        continue
                    index = choice.get("index", 0) if isinstance(choice.get("index"), int) else 0
                    state = texts.setdefault(index, _StreamText())
                    piece = _chunk_text(choice)
                    if isinstance(piece, str):
                        state.pending += piece
                    out = await release(state, final=choice.get("finish_reason") is not None)
                    _set_chunk_text(choice, out, had=isinstance(piece, str))
                yield event(chunk)
        async for extra in flush():
            yield extra


def _chunk_text(choice: dict[str, Any]) -> Any:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return delta.get("content")
    return choice.get("text")


def _set_chunk_text(choice: dict[str, Any], text: str, *, had: bool) -> None:
    if not had and not text:
        return
    delta = choice.get("delta")
    if isinstance(delta, dict) or "text" not in choice:
        choice["delta"] = {**(delta if isinstance(delta, dict) else {}), "content": text}
    else:
        choice["text"] = text


def _chunk_like(last: dict[str, Any], index: int, text: str, task: str | None) -> dict[str, Any]:
    if task == "llm/v1/completions":
        choice: dict[str, Any] = {"index": index, "text": text, "finish_reason": None}
    else:
        choice = {"index": index, "delta": {"content": text}, "finish_reason": None}
    keep = {k: last[k] for k in ("id", "object", "created", "model") if k in last}
    return {**keep, "choices": [choice]}
