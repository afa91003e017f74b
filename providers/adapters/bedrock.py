"""Amazon Bedrock adapter: InvokeModel / InvokeModelWithResponseStream, signed with SigV4.

Upstream API: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_InvokeModel.html
(streaming: .../API_runtime_InvokeModelWithResponseStream.html; the body of each model family:
https://docs.aws.amazon.com/bedrock/latest/userguide/model-parameters.html).

Request (``POST {base}/model/{modelId}/invoke``, the model id URL-encoded, SigV4 for service
``bedrock``; the body is the model family's own, here Anthropic's Messages API)::

    POST /model/anthropic.claude-3-sonnet-20240229-v1%3A0/invoke
    {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 1024, "system": "Be brief.",
     "messages": [{"role": "user", "content": "Hi"}]}
    -> {"id": "msg_01", "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn", "usage": {"input_tokens": 10, "output_tokens": 3}}

Families (``bedrock_provider``)::

    cohere     {"message", "chat_history", "preamble", ...} -> {"text", "finish_reason"}
               embed: {"texts", "input_type"} -> {"embeddings": [[...]]}
    amazon     {"inputText", "textGenerationConfig": {...}} -> {"results": [{"outputText"}]}
               embed: {"inputText"} -> {"embedding", "inputTextTokenCount"} (one text a request)
    ai21       {"prompt", "maxTokens", ...} -> {"completions": [{"data": {"text"}}]}

A stream (``/invoke-with-response-stream``) is AWS event-stream binary frames
(``application/vnd.amazon.eventstream``); each ``chunk`` event's payload is
``{"bytes": "<base64 of one family JSON chunk>"}``, e.g. Titan's
``{"outputText": "Hel", "completionReason": null}``. An ``exception`` frame ends the stream.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials, RefreshableCredentials
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError
from botocore.exceptions import BotoCoreError

from . import anthropic as anthropic_api
from ._base import (
    BaseStreamState,
    Json,
    ProviderAdapter,
    ProviderError,
    StreamError,
    chat_response,
    completion_response,
    embeddings_response,
    response_json,
    send,
    stream_bytes,
    usage,
)
from ._client import UpstreamClient, UpstreamReply
from ._common import credential, event_json, input_texts, prompt_of, stop_list, text_of
from ._registry import register_adapter
from ._sse import SseEvent

__all__ = [
    "BedrockAdapter",
    "Generation",
    "StreamState",
    "FAMILIES",
    "decode_event",
    "sign",
]

PROVIDER = "amazon-bedrock"
NAME = "Amazon Bedrock"
DEFAULT_BASE = "https://bedrock-runtime.{region}.amazonaws.com"
SIGNING_NAME = "bedrock"
ANTHROPIC_VERSION = "bedrock-2023-05-31"
EVENT_STREAM = "application/vnd.amazon.eventstream"
# Titan and Jurassic need a length; OpenAI callers usually leave it out.
DEFAULT_MAX_TOKENS = 1024
# Cohere's embed API takes at most 96 texts a request.
COHERE_EMBED_BATCH = 96
# Titan embeds one text a request; fan out, but not so wide that we trip throttling.
TITAN_EMBED_CONCURRENCY = 8

# `:exception-type` of a stream exception frame -> (kind, status), from botocore's
# bedrock-runtime model (ResponseStream members). Unknown types are upstream_server.
STREAM_EXCEPTIONS: dict[str, tuple[str, int | None]] = {
    "validationexception": ("upstream_client", 400),
    "throttlingexception": ("upstream_client", 429),
    "modeltimeoutexception": ("timeout", 408),
    "modelstreamerrorexception": ("upstream_server", 424),
    "internalserverexception": ("upstream_server", 500),
    "serviceunavailableexception": ("upstream_server", 503),
}

# Family finish reasons -> OpenAI finish_reason. A reason newer than a table still ended the turn.
TITAN_FINISH = {
    "FINISH": "stop",
    "STOP_CRITERIA_MET": "stop",
    "LENGTH": "length",
    "CONTENT_FILTERED": "content_filter",
}
COHERE_FINISH = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "ERROR_LIMIT": "length",
    "ERROR_TOXIC": "content_filter",
    "USER_CANCEL": "stop",
}
AI21_FINISH = {"endoftext": "stop", "stop": "stop", "length": "length"}


def _finish(table: dict[str, str], reason: Any) -> str | None:
    if reason is None:
        return None
    return table.get(str(reason), "stop")


# -- request helpers (pure) -------------------------------------------------------------------


def _max_tokens(body: Json) -> int | None:
    value = body.get("max_tokens")
    return body.get("max_completion_tokens") if value is None else value


def _single_choice(body: Json, family: str) -> None:
    if (body.get("n") or 1) > 1:
        raise ProviderError("unsupported", f"{PROVIDER} ({family}) does not support n > 1")


def _flatten(messages: list[Json], user: str, assistant: str) -> str:
    """Chat turns as one prompt, for families that only take text in; ends on the reply cue."""
    lines = []
    for message in messages:
        role, text = message.get("role"), text_of(message.get("content"), PROVIDER)
        if role == "system":
            lines.append(text)
        elif role == "assistant":
            lines.append(f"{assistant}: {text}")
        else:
            lines.append(f"{user}: {text}")
    lines.append(f"{assistant}:")
    return "\n".join(lines)


def _drop_none(values: Json) -> Json:
    return {k: v for k, v in values.items() if v is not None}


# -- families: the pure translation for each model family -------------------------------------


@dataclass(slots=True)
class Generation:
    """A non-streamed answer, before it is put in OpenAI's chat or completion shape."""

    contents: list[tuple[str, str | None]]
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    response_id: str | None = None


@dataclass(slots=True)
class StreamState(BaseStreamState):
    """What one stream has seen so far; the family translator reads and updates it."""

    role_sent: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    done: bool = False

    def text(self, text: str) -> Json:
        # OpenAI clients expect the role on the first chat chunk; completions have no role.
        role = None if self.role_sent or not self.chat else "assistant"
        self.role_sent = True
        return self.chunk(text=text, role=role)

    def finish(self, reason: str | None, data: Json) -> Json:
        # Bedrock appends its own billing counts to the last chunk of every family.
        metrics = data.get("amazon-bedrock-invocationMetrics") or {}
        self.prompt_tokens = metrics.get("inputTokenCount", self.prompt_tokens)
        self.completion_tokens = metrics.get("outputTokenCount", self.completion_tokens)
        self.done = True
        role = None if self.role_sent or not self.chat else "assistant"
        return self.chunk(
            role=role,
            finish_reason=reason or "stop",
            usage_=usage(self.prompt_tokens, self.completion_tokens),
        )


class Family:
    """One `bedrock_provider`'s bodies. Pure: no I/O."""

    name: ClassVar[str]
    streams: ClassVar[bool] = True
    embeds: ClassVar[bool] = False

    def chat_to_model(self, body: Json, model: str) -> Json:
        raise NotImplementedError

    def completions_to_model(self, body: Json, model: str) -> Json:
        raise NotImplementedError

    def model_to_generation(self, out: Json) -> Generation:
        raise NotImplementedError

    def new_stream(self, model: str, chat: bool) -> Any:
        """A state object with a `done` flag, fed to `model_to_chat_streaming`."""
        return StreamState(model=model, chat=chat)

    def model_to_chat_streaming(self, data: str, state: Any) -> list[Json]:
        """One decoded chunk (the family's JSON text) -> zero or more OpenAI chunks."""
        raise NotImplementedError

    def embeddings_to_model(self, texts: list[str], body: Json) -> list[Json]:
        """One request body per upstream call."""
        raise NotImplementedError

    def model_to_embeddings(self, out: Json) -> list[list[float]]:
        raise NotImplementedError


class AnthropicFamily(Family):
    """The Messages API, as Anthropic's own adapter speaks it, minus `model` and `stream`."""

    name = "anthropic"
    # Bedrock rejects keys it does not know; the model and streaming are in the URL.
    _NOT_ON_BEDROCK = ("model", "stream", "metadata")

    def _to_bedrock(self, payload: Json) -> Json:
        out = {k: v for k, v in payload.items() if k not in self._NOT_ON_BEDROCK}
        out["anthropic_version"] = ANTHROPIC_VERSION
        return out

    def chat_to_model(self, body: Json, model: str) -> Json:
        return self._to_bedrock(anthropic_api.chat_to_model(body, model))

    def completions_to_model(self, body: Json, model: str) -> Json:
        return self._to_bedrock(anthropic_api.completions_to_model(body, model))

    def model_to_generation(self, out: Json) -> Generation:
        text = anthropic_api.message_text(out, NAME)
        finish = _finish(anthropic_api.FINISH_REASONS, out.get("stop_reason"))
        tokens = out.get("usage") or {}
        return Generation(
            [(text, finish)], tokens.get("input_tokens"), tokens.get("output_tokens"), out.get("id")
        )

    def new_stream(self, model: str, chat: bool) -> Any:
        return anthropic_api.StreamState(model=model, chat=chat)

    def model_to_chat_streaming(self, data: str, state: Any) -> list[Json]:
        # The chunk is the same JSON Anthropic sends as an SSE event's data.
        return anthropic_api.model_to_chat_streaming(SseEvent(None, data), state)


class CohereFamily(Family):
    """Command R chat (v1 shape) and Embed."""

    name = "cohere"
    embeds = True
    _PARAMS = {"temperature": "temperature", "top_p": "p", "top_k": "k", "seed": "seed"}

    def _params(self, body: Json) -> Json:
        out = {theirs: body[ours] for ours, theirs in self._PARAMS.items() if ours in body}
        return _drop_none(
            {**out, "max_tokens": _max_tokens(body), "stop_sequences": stop_list(body)}
        )

    def chat_to_model(self, body: Json, model: str) -> Json:
        _single_choice(body, self.name)
        preamble: list[str] = []
        turns: list[Json] = []
        for message in body.get("messages") or []:
            role, text = message.get("role"), text_of(message.get("content"), PROVIDER)
            if role == "system":
                preamble.append(text)
            else:
                turns.append(
                    {"role": "CHATBOT" if role == "assistant" else "USER", "message": text}
                )
        if not turns:
            raise ProviderError("unsupported", f"{PROVIDER} (cohere) needs a user message")
        payload: Json = {"message": turns[-1]["message"], **self._params(body)}
        if turns[:-1]:
            payload["chat_history"] = turns[:-1]
        if preamble:
            payload["preamble"] = "\n".join(preamble)
        return payload

    def completions_to_model(self, body: Json, model: str) -> Json:
        _single_choice(body, self.name)
        return {"message": prompt_of(body, PROVIDER), **self._params(body)}

    @staticmethod
    def _finish(reason: Any) -> str | None:
        if reason == "ERROR":
            # Cohere reports a failed generation as a finish reason; it is not an answer.
            raise ProviderError("upstream_server", f"{NAME} (cohere) generation failed")
        return _finish(COHERE_FINISH, reason)

    def model_to_generation(self, out: Json) -> Generation:
        text = out.get("text")
        if not isinstance(text, str):
            raise ProviderError("upstream_server", f"{NAME} (cohere) answered without text")
        billed = (out.get("meta") or {}).get("billed_units") or {}
        return Generation(
            [(text, self._finish(out.get("finish_reason")))],
            billed.get("input_tokens"),
            billed.get("output_tokens"),
            out.get("response_id"),
        )

    def model_to_chat_streaming(self, data: str, state: Any) -> list[Json]:
        event = event_json(data, NAME, "stream chunk")
        out = []
        # stream-end repeats the whole answer under `response`; only deltas carry `text`.
        text = event.get("text")
        if text and event.get("event_type", "text-generation") == "text-generation":
            out.append(state.text(text))
        if event.get("is_finished"):
            out.append(state.finish(self._finish(event.get("finish_reason")), event))
        return out

    def embeddings_to_model(self, texts: list[str], body: Json) -> list[Json]:
        # v3 embed models require input_type; a caller embedding queries can override it.
        extra = _drop_none(
            {
                "input_type": body.get("input_type") or "search_document",
                "truncate": body.get("truncate"),
            }
        )
        return [
            {"texts": texts[i : i + COHERE_EMBED_BATCH], **extra}
            for i in range(0, len(texts), COHERE_EMBED_BATCH)
        ]

    def model_to_embeddings(self, out: Json) -> list[list[float]]:
        vectors = out.get("embeddings")
        if isinstance(vectors, dict):  # embedding_types was given: {"float": [[...]]}
            vectors = vectors.get("float")
        if not isinstance(vectors, list):
            raise ProviderError("upstream_server", f"{NAME} (cohere) answered without embeddings")
        return vectors


class TitanFamily(Family):
    """Amazon Titan Text and Titan Embeddings."""

    name = "amazon"
    embeds = True

    def _body(self, prompt: str, body: Json) -> Json:
        config = _drop_none(
            {
                "maxTokenCount": _max_tokens(body),
                "temperature": body.get("temperature"),
                "topP": body.get("top_p"),
                "stopSequences": stop_list(body),
            }
        )
        return {"inputText": prompt, "textGenerationConfig": config}

    def chat_to_model(self, body: Json, model: str) -> Json:
        _single_choice(body, self.name)
        # Titan's documented conversational cue is "User: ... / Bot:".
        return self._body(_flatten(body.get("messages") or [], "User", "Bot"), body)

    def completions_to_model(self, body: Json, model: str) -> Json:
        _single_choice(body, self.name)
        return self._body(prompt_of(body, PROVIDER), body)

    def model_to_generation(self, out: Json) -> Generation:
        results = out.get("results")
        if not isinstance(results, list) or not results:
            raise ProviderError("upstream_server", f"{NAME} (amazon) answered without results")
        return Generation(
            [
                (str(r.get("outputText", "")), _finish(TITAN_FINISH, r.get("completionReason")))
                for r in results
            ],
            out.get("inputTextTokenCount"),
            sum(r.get("tokenCount") or 0 for r in results),
        )

    def model_to_chat_streaming(self, data: str, state: Any) -> list[Json]:
        event = event_json(data, NAME, "stream chunk")
        if event.get("inputTextTokenCount") is not None:
            state.prompt_tokens = event["inputTextTokenCount"]
        if event.get("totalOutputTextTokenCount") is not None:
            state.completion_tokens = event["totalOutputTextTokenCount"]
        out = []
        if event.get("outputText"):
            out.append(state.text(event["outputText"]))
        if event.get("completionReason"):
            out.append(state.finish(_finish(TITAN_FINISH, event["completionReason"]), event))
        return out

    def embeddings_to_model(self, texts: list[str], body: Json) -> list[Json]:
        # Titan Embeddings v2 options; v1 takes inputText only.
        extra = _drop_none(
            {"dimensions": body.get("dimensions"), "normalize": body.get("normalize")}
        )
        return [{"inputText": text, **extra} for text in texts]

    def model_to_embeddings(self, out: Json) -> list[list[float]]:
        vector = out.get("embedding")
        if not isinstance(vector, list):
            raise ProviderError("upstream_server", f"{NAME} (amazon) answered without embedding")
        return [vector]


class Ai21Family(Family):
    """AI21 Jurassic-2 (no streaming on Bedrock)."""

    name = "ai21labs"
    streams = False

    def _body(self, prompt: str, body: Json) -> Json:
        return _drop_none(
            {
                "prompt": prompt,
                "maxTokens": _max_tokens(body),
                "temperature": body.get("temperature"),
                "topP": body.get("top_p"),
                "stopSequences": stop_list(body),
                "numResults": body.get("n"),
            }
        )

    def chat_to_model(self, body: Json, model: str) -> Json:
        return self._body(_flatten(body.get("messages") or [], "User", "Assistant"), body)

    def completions_to_model(self, body: Json, model: str) -> Json:
        return self._body(prompt_of(body, PROVIDER), body)

    def model_to_generation(self, out: Json) -> Generation:
        completions = out.get("completions")
        if not isinstance(completions, list) or not completions:
            raise ProviderError("upstream_server", f"{NAME} (ai21) answered without completions")
        contents = [
            (
                str(c["data"]["text"]),
                _finish(AI21_FINISH, (c.get("finishReason") or {}).get("reason")),
            )
            for c in completions
        ]
        prompt_tokens = (out.get("prompt") or {}).get("tokens")
        return Generation(
            contents,
            len(prompt_tokens) if isinstance(prompt_tokens, list) else None,
            sum(len(c["data"].get("tokens") or []) for c in completions),
            str(out["id"]) if out.get("id") is not None else None,
        )


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (AnthropicFamily(), CohereFamily(), TitanFamily(), Ai21Family())
}


# -- event stream (pure) ----------------------------------------------------------------------


def decode_event(message: EventStreamMessage) -> str | None:
    """One event-stream frame -> the family's JSON chunk text (None for other events)."""
    headers = message.headers
    message_type = headers.get(":message-type")
    if message_type == "exception":
        name = str(headers.get(":exception-type") or "exception")
        try:
            detail = json.loads(message.payload).get("message")
        except (ValueError, AttributeError):
            detail = None
        kind, status = STREAM_EXCEPTIONS.get(name.lower(), ("upstream_server", None))
        raise ProviderError(kind, f"{NAME} stream {name}: {detail or 'no message'}", status=status)
    if message_type == "error":
        code = headers.get(":error-code") or "error"
        raise ProviderError(
            "upstream_server", f"{NAME} stream error {code}: {headers.get(':error-message') or ''}"
        )
    if headers.get(":event-type") != "chunk":
        return None  # initial-response and newer event types carry no model output
    try:
        return base64.b64decode(json.loads(message.payload)["bytes"]).decode()
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise ProviderError("upstream_server", f"{NAME} sent a malformed chunk event") from exc


# -- transport --------------------------------------------------------------------------------


def _default_chain() -> Credentials:
    """botocore's chain (env, shared files, container, instance metadata). Blocking: thread it."""
    try:
        found = botocore.session.Session().get_credentials()
    except BotoCoreError as exc:
        raise ProviderError("config", f"{NAME}: AWS credential lookup failed: {exc}") from exc
    if found is None:
        raise ProviderError(
            "config",
            f"{NAME}: amazon_bedrock_config has no aws_access_key_id / aws_secret_access_key "
            "and botocore's default credential chain (environment, shared credentials file, "
            "container or instance metadata) found no AWS credentials",
        )
    return found


def sign(
    credentials: ReadOnlyCredentials | Credentials, region: str, url: str, body: bytes, accept: str
) -> dict[str, str]:
    """Headers for one SigV4-signed POST of exactly `body` (host is signed from `url`)."""
    request = AWSRequest(
        method="POST",
        url=url,
        data=body,
        headers={"Content-Type": "application/json", "Accept": accept},
    )
    SigV4Auth(credentials, SIGNING_NAME, region).add_auth(request)
    return dict(request.headers.items())


def _header_tokens(response: UpstreamReply) -> tuple[int | None, int | None]:
    """Bedrock's own counts, sent as headers for every model (Cohere's body has none)."""

    def read(name: str) -> int | None:
        value = response.headers.get(name)
        return int(value) if value is not None and value.isdigit() else None

    return (
        read("x-amzn-bedrock-input-token-count"),
        read("x-amzn-bedrock-output-token-count"),
    )


def _translating(what: str, translate: Callable[[], Any]) -> Any:
    """Run a response translator; a body of the wrong shape is the upstream's fault."""
    try:
        return translate()
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as exc:
        raise ProviderError("upstream_server", f"{NAME} sent an unexpected {what}") from exc


@register_adapter
class BedrockAdapter(ProviderAdapter):
    PROVIDER = PROVIDER
    DEFAULT_BASE = DEFAULT_BASE

    def __init__(self, model: Json, client: UpstreamClient) -> None:
        super().__init__(model, client)
        config = model.get("amazon_bedrock_config") or {}
        region = config.get("aws_region")
        if not isinstance(region, str) or not region:
            raise ProviderError("config", f"{NAME}: amazon_bedrock_config needs aws_region")
        self.region = region
        family = str(config.get("bedrock_provider") or "").lower()
        if family not in FAMILIES:
            raise ProviderError(
                "config", f"{NAME}: unknown bedrock_provider {config.get('bedrock_provider')!r}"
            )
        self.family = FAMILIES[family]
        base = (config.get("bedrock_api_base") or DEFAULT_BASE.format(region=region)).rstrip("/")
        # The id has ':' (and ARNs have '/'), so it is one encoded path segment.
        model_url = f"{base}/model/{quote(self.name, safe='')}"
        self.invoke_url = f"{model_url}/invoke"
        self.stream_url = f"{model_url}/invoke-with-response-stream"

        key_id = credential(config, "aws_access_key_id")
        secret = credential(config, "aws_secret_access_key")
        self._static: ReadOnlyCredentials | None = None
        if key_id and secret:
            self._static = Credentials(key_id, secret).get_frozen_credentials()
        elif key_id or secret:
            raise ProviderError(
                "config",
                f"{NAME}: amazon_bedrock_config needs both aws_access_key_id and "
                "aws_secret_access_key",
            )
        elif not (config.get("instance_profile_arn") or config.get("uc_service_credential_name")):
            raise ProviderError(
                "config",
                f"{NAME}: amazon_bedrock_config needs aws_access_key_id and "
                "aws_secret_access_key, or instance_profile_arn / uc_service_credential_name",
            )
        # Resolved on first use: the chain may call instance metadata, which blocks.
        self._chain: Credentials | None = None
        self._chain_lock = asyncio.Lock()

    async def _credentials(self) -> ReadOnlyCredentials:
        if self._static is not None:
            return self._static
        async with self._chain_lock:
            if self._chain is None:
                self._chain = await asyncio.to_thread(_default_chain)
            chain = self._chain
            if isinstance(chain, RefreshableCredentials) and chain.refresh_needed():
                return await asyncio.to_thread(chain.get_frozen_credentials)
            return chain.get_frozen_credentials()

    async def _signed(self, url: str, payload: Json, accept: str) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(payload).encode()
        return body, sign(await self._credentials(), self.region, url, body, accept)

    async def _invoke(self, payload: Json) -> tuple[Json, UpstreamReply]:
        body, headers = await self._signed(self.invoke_url, payload, "application/json")
        response = await send(
            self.client, NAME, "POST", self.invoke_url, content=body, headers=headers
        )
        return response_json(response, NAME, object_only=True), response

    async def _generate(self, payload: Json) -> Generation:
        out, response = await self._invoke(payload)
        result: Generation = _translating("response", lambda: self.family.model_to_generation(out))
        prompt_tokens, completion_tokens = _header_tokens(response)
        if result.prompt_tokens is None:
            result.prompt_tokens = prompt_tokens
        if result.completion_tokens is None:
            result.completion_tokens = completion_tokens
        return result

    async def _events(self, payload: Json) -> AsyncIterator[str]:
        body, headers = await self._signed(self.stream_url, payload, EVENT_STREAM)
        buffer = EventStreamBuffer()
        pieces = stream_bytes(
            self.client,
            NAME,
            "POST",
            self.stream_url,
            content_type=EVENT_STREAM,
            content=body,
            headers=headers,
        )
        async with aclosing(pieces):
            async for data in pieces:
                buffer.add_data(data)
                while True:
                    try:
                        message = next(buffer)
                    except StopIteration:
                        break  # the rest of the frame is still on the wire
                    except ParserError as exc:
                        raise StreamError(
                            "upstream_server",
                            f"{NAME} sent a malformed event stream: {type(exc).__name__}",
                        ) from exc
                    text = decode_event(message)
                    if text is not None:
                        yield text

    async def _stream(self, payload: Json, *, chat: bool) -> AsyncIterator[Json]:
        state = self.family.new_stream(self.name, chat)
        events = self._events(payload)
        async with aclosing(events):
            async for text in events:
                for out in self.family.model_to_chat_streaming(text, state):
                    yield out
        if not state.done:
            raise StreamError("upstream_server", f"{NAME} stream ended early")

    def _check_stream(self) -> None:
        if not self.family.streams:
            raise self._unsupported(f"streaming with bedrock_provider {self.family.name!r}")

    async def _chat(self, body: Json) -> Json:
        result = await self._generate(self.family.chat_to_model(body, self.name))
        return chat_response(
            self.name,
            result.contents,
            result.prompt_tokens,
            result.completion_tokens,
            response_id=result.response_id,
        )

    def _chat_stream(self, body: Json) -> AsyncIterator[Json]:
        # Check and translate now so a bad request fails at the call, not at the first chunk.
        self._check_stream()
        return self._stream(self.family.chat_to_model(body, self.name), chat=True)

    async def _completions(self, body: Json) -> Json:
        result = await self._generate(self.family.completions_to_model(body, self.name))
        return completion_response(
            self.name,
            result.contents,
            result.prompt_tokens,
            result.completion_tokens,
            response_id=result.response_id,
        )

    def _completions_stream(self, body: Json) -> AsyncIterator[Json]:
        self._check_stream()
        return self._stream(self.family.completions_to_model(body, self.name), chat=False)

    async def _embeddings(self, body: Json) -> Json:
        if not self.family.embeds:
            raise self._unsupported(f"embeddings with bedrock_provider {self.family.name!r}")
        payloads = self.family.embeddings_to_model(input_texts(body, PROVIDER), body)
        limit = asyncio.Semaphore(TITAN_EMBED_CONCURRENCY)

        async def one(payload: Json) -> tuple[Json, UpstreamReply]:
            async with limit:
                return await self._invoke(payload)

        try:
            # A TaskGroup cancels the other calls as soon as one fails.
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(p)) for p in payloads]
        except* ProviderError as errors:
            raise errors.exceptions[0] from None
        vectors: list[list[float]] = []
        tokens = 0
        for task in tasks:
            out, response = task.result()
            vectors += _translating(
                "embeddings", lambda out=out: self.family.model_to_embeddings(out)
            )
            counted = out.get("inputTextTokenCount")
            if counted is None:
                counted = _header_tokens(response)[0]
            tokens += counted or 0
        return embeddings_response(self.name, vectors, tokens)
