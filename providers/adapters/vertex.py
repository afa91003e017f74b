"""Google Cloud Vertex AI adapter: Gemini generateContent and text embeddings (predict).

Upstream API: https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/inference
(embeddings: .../model-reference/text-embeddings-api; error bodies:
https://cloud.google.com/apis/design/errors; the token grant:
https://developers.google.com/identity/protocols/oauth2/service-account).

Request (``POST {base}/v1/projects/{project}/locations/{region}/publishers/google/models/
{model}:generateContent``, header ``Authorization: Bearer <access token>``)::

    {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
     "systemInstruction": {"parts": [{"text": "Be brief."}]},
     "generationConfig": {"temperature": 0.2, "maxOutputTokens": 64, "candidateCount": 1}}
    -> {"candidates": [{"index": 0, "finishReason": "STOP",
                        "content": {"role": "model", "parts": [{"text": "Hello!"}]}}],
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2}}

Stream: ``:streamGenerateContent?alt=sse``; each SSE ``data:`` is one such response holding the
next piece of text; the last has ``finishReason`` and the final ``usageMetadata``.

Embeddings: ``:predict`` with ``{"instances": [{"content": "hello"}]}`` ->
``{"predictions": [{"embeddings": {"values": [0.1], "statistics": {"token_count": 1}}}]}``.

Errors: ``{"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT"}}``.

Auth: `private_key` holds a service-account JSON key (the key file's content). google-auth signs
a JWT-bearer grant and posts it to the key's ``token_uri``; that blocking call runs in a worker
thread and the access token is cached until shortly before it expires.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import google.auth.exceptions
import google.auth.transport
import httpx
from cryptography.exceptions import UnsupportedAlgorithm
from google.oauth2 import service_account

from ._base import (
    BaseStreamState,
    Json,
    ProviderAdapter,
    ProviderError,
    StreamError,
    chat_response,
    completion_response,
    embeddings_response,
    redacting,
    response_json,
    send,
    stream_lines,
    usage,
)
from ._client import UpstreamClient
from ._common import credential, event_json, input_texts, prompt_of, stop_list, text_of
from ._registry import register_adapter
from ._sse import SseEvent, parse_sse

__all__ = [
    "VertexAdapter",
    "StreamState",
    "chat_to_model",
    "completions_to_model",
    "embeddings_to_model",
    "finish_streaming",
    "model_to_chat",
    "model_to_completions",
    "model_to_chat_streaming",
    "model_to_embeddings",
    "service_account_credentials",
    "service_account_info",
    "token_transport",
]

PROVIDER = "google-cloud-vertex-ai"
NAME = "Vertex AI"
DEFAULT_BASE = "https://{region}-aiplatform.googleapis.com"
# The "global" location has no regional host.
GLOBAL_BASE = "https://aiplatform.googleapis.com"
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
# Refresh this long before expiry (or at half-life for short tokens) so no call races it.
REFRESH_MARGIN_S = 300.0
DEFAULT_TOKEN_TIMEOUT_S = 30.0

# Unified key -> generationConfig key.
_GENERATION_CONFIG: dict[str, str] = {
    "temperature": "temperature",
    "max_tokens": "maxOutputTokens",
    "top_p": "topP",
    "top_k": "topK",
    "n": "candidateCount",
    "seed": "seed",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}

# Gemini finishReason -> OpenAI finish_reason. A reason newer than this table still ended it.
FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


def _finish_reason(reason: Any) -> str | None:
    if reason is None:
        return None
    return FINISH_REASONS.get(str(reason), "stop")


# -- request translation (pure) ---------------------------------------------------------------


def _generation_config(body: Json) -> Json:
    config = {
        theirs: body[ours]
        for ours, theirs in _GENERATION_CONFIG.items()
        if body.get(ours) is not None
    }
    if "maxOutputTokens" not in config and body.get("max_completion_tokens") is not None:
        config["maxOutputTokens"] = body["max_completion_tokens"]
    stop = stop_list(body)
    if stop:
        config["stopSequences"] = stop
    return config


def _with_config(payload: Json, body: Json) -> Json:
    config = _generation_config(body)
    if config:
        payload["generationConfig"] = config
    return payload


def chat_to_model(body: Json) -> Json:
    """Unified chat body -> generateContent body (a new dict; `body` is not touched)."""
    system: list[Json] = []
    contents: list[Json] = []
    for message in body.get("messages") or []:
        role, text = message.get("role"), text_of(message.get("content"), PROVIDER)
        if role == "system":
            system.append({"text": text})
            continue
        if role not in ("user", "assistant"):
            raise ProviderError("unsupported", f"{PROVIDER}: message role {role!r} unsupported")
        theirs = "model" if role == "assistant" else "user"
        # Gemini wants alternating turns, so a run of one role becomes one content.
        if contents and contents[-1]["role"] == theirs:
            contents[-1]["parts"].append({"text": text})
        else:
            contents.append({"role": theirs, "parts": [{"text": text}]})
    if not contents:
        raise ProviderError("unsupported", f"{PROVIDER}: chat needs a user message")
    payload: Json = {"contents": contents}
    if system:
        payload["systemInstruction"] = {"parts": system}
    return _with_config(payload, body)


def completions_to_model(body: Json) -> Json:
    """Unified completions body -> generateContent body: the prompt is one user content."""
    prompt = prompt_of(body, PROVIDER)
    return _with_config({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}, body)


def embeddings_to_model(body: Json) -> Json:
    texts = input_texts(body, PROVIDER)
    instance_extra = {"task_type": body["task_type"]} if body.get("task_type") else {}
    payload: Json = {"instances": [{"content": text, **instance_extra} for text in texts]}
    if body.get("dimensions") is not None:
        payload["parameters"] = {"outputDimensionality": body["dimensions"]}
    return payload


# -- response translation (pure) --------------------------------------------------------------


def _candidate_text(candidate: Json) -> str:
    parts = (candidate.get("content") or {}).get("parts") or []
    # Thought summaries (Gemini 2.5 thinking) are not part of the answer.
    return "".join(
        str(part.get("text", ""))
        for part in parts
        if isinstance(part, dict) and not part.get("thought")
    )


def _token_counts(resp: Json) -> tuple[int | None, int | None]:
    meta = resp.get("usageMetadata") or {}
    completion = meta.get("candidatesTokenCount")
    # Thinking tokens are billed as output, as OpenAI counts reasoning tokens.
    if meta.get("thoughtsTokenCount"):
        completion = (completion or 0) + meta["thoughtsTokenCount"]
    return meta.get("promptTokenCount"), completion


def _contents(resp: Json) -> list[tuple[str, str | None]]:
    candidates = resp.get("candidates")
    if not candidates:
        # A blocked prompt has no candidates, only promptFeedback.blockReason.
        if (resp.get("promptFeedback") or {}).get("blockReason"):
            return [("", "content_filter")]
        raise ProviderError("upstream_server", f"{NAME} answered without candidates")
    if not isinstance(candidates, list) or not all(isinstance(c, dict) for c in candidates):
        raise ProviderError("upstream_server", f"{NAME} answered with malformed candidates")
    ordered = sorted(candidates, key=lambda c: c.get("index") or 0)
    return [(_candidate_text(c), _finish_reason(c.get("finishReason"))) for c in ordered]


def model_to_chat(resp: Json, model: str) -> Json:
    return chat_response(
        model, _contents(resp), *_token_counts(resp), response_id=resp.get("responseId")
    )


def model_to_completions(resp: Json, model: str) -> Json:
    return completion_response(
        model, _contents(resp), *_token_counts(resp), response_id=resp.get("responseId")
    )


def model_to_embeddings(resp: Json, model: str) -> Json:
    predictions = resp.get("predictions")
    if not isinstance(predictions, list):
        raise ProviderError("upstream_server", f"{NAME} answered without predictions")
    vectors: list[list[float]] = []
    tokens = 0
    for prediction in predictions:
        embeddings = (prediction or {}).get("embeddings") or {}
        if not isinstance(embeddings.get("values"), list):
            raise ProviderError("upstream_server", f"{NAME} answered without embedding values")
        vectors.append(embeddings["values"])
        # token_count arrives as a JSON float (e.g. 4.0).
        tokens += int((embeddings.get("statistics") or {}).get("token_count") or 0)
    return embeddings_response(model, vectors, tokens)


@dataclass(slots=True)
class StreamState(BaseStreamState):
    """What one stream has seen so far; the translator reads and updates it."""

    roles_sent: set[int] = field(default_factory=set)
    finish: dict[int, str] = field(default_factory=dict)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def _role(self, index: int) -> str | None:
        # OpenAI clients expect the role on the first chat chunk of each choice.
        if not self.chat or index in self.roles_sent:
            return None
        self.roles_sent.add(index)
        return "assistant"


def model_to_chat_streaming(event: SseEvent, state: StreamState) -> list[Json]:
    """One SSE event (a partial GenerateContentResponse) -> text chunks; finishes are kept."""
    data = event_json(event.data, NAME)
    if isinstance(data.get("error"), dict):
        message = data["error"].get("message") or data["error"].get("status") or "unknown error"
        raise ProviderError("upstream_server", f"{NAME} stream error: {message}")
    if data.get("usageMetadata"):
        # Counts are cumulative; the last event's are the totals.
        state.prompt_tokens, state.completion_tokens = _token_counts(data)
    out = []
    for candidate in data.get("candidates") or []:
        index = candidate.get("index") or 0
        text = _candidate_text(candidate)
        if text:
            out.append(state.chunk(text=text, role=state._role(index), index=index))
        if candidate.get("finishReason"):
            state.finish[index] = _finish_reason(candidate["finishReason"]) or "stop"
    if not data.get("candidates") and (data.get("promptFeedback") or {}).get("blockReason"):
        state.finish[0] = "content_filter"
    return out


def finish_streaming(state: StreamState) -> list[Json]:
    """The closing chunk of each choice, `usage` on the very last one (usage comes last)."""
    if not state.finish:
        raise StreamError("upstream_server", f"{NAME} stream ended early")
    indexes = sorted(state.finish)
    return [
        state.chunk(
            role=state._role(index),
            finish_reason=state.finish[index],
            index=index,
            usage_=usage(state.prompt_tokens, state.completion_tokens)
            if index == indexes[-1]
            else None,
        )
        for index in indexes
    ]


# -- credentials ------------------------------------------------------------------------------


def service_account_info(key: Any) -> Json:
    """The parsed service-account JSON key (`private_key` holds the key file's content)."""
    info = key
    if isinstance(key, str):
        try:
            info = json.loads(key)
        except json.JSONDecodeError:
            info = None
    if not isinstance(info, dict):
        # Never echo the value: it may be a bare PEM key.
        raise ProviderError(
            "config",
            f"{NAME}: private_key must be a service-account JSON key (the content of the JSON "
            "key file from Google Cloud IAM), not a bare PEM key or other text",
        )
    return info


def service_account_credentials(info: Json) -> service_account.Credentials:
    """google-auth credentials for the cloud-platform scope; the key's token_uri is used."""
    try:
        return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        missing = [k for k in ("client_email", "token_uri", "private_key") if not info.get(k)]
        detail = f"missing {', '.join(missing)}" if missing else "its private_key is not a PEM key"
        raise ProviderError(
            "config", f"{NAME}: private_key is not a usable service-account JSON key ({detail})"
        ) from None


class _HttpxTokenResponse(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Any:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


def _httpx_send(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Any = None,
    timeout: float | None = None,
    **kwargs: Any,
) -> google.auth.transport.Response:
    """google-auth's transport over httpx, for when `requests` is not installed."""
    try:
        # A refresh is about hourly, so a short-lived client costs nothing worth pooling.
        with httpx.Client(timeout=timeout) as client:
            response = client.request(method, url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise google.auth.exceptions.TransportError(type(exc).__name__) from exc
    return _HttpxTokenResponse(response)


class _BoundedRequest(google.auth.transport.Request):
    """Adds a timeout: google-auth calls its transport without one (requests' default is 120s)."""

    def __init__(self, send_: Callable[..., google.auth.transport.Response], timeout: float):
        self._send = send_
        self._timeout = timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Any = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        return self._send(
            url,
            method=method,
            body=body,
            headers=headers,
            timeout=timeout or self._timeout,
            **kwargs,
        )


def token_transport(timeout: float) -> google.auth.transport.Request:
    """google-auth's requests transport when installed (google-auth does not require it)."""
    try:
        from google.auth.transport.requests import Request as RequestsTransport
    except ImportError:
        return _BoundedRequest(_httpx_send, timeout)
    return _BoundedRequest(RequestsTransport(), timeout)


def _is_timeout(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if (
            isinstance(seen, TimeoutError | httpx.TimeoutException)
            or "Timeout" in type(seen).__name__
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _refresh(
    credentials: service_account.Credentials, transport: google.auth.transport.Request
) -> tuple[str, float]:
    """Fetch a token (blocking: runs in a worker thread). -> (token, monotonic refresh time)."""
    try:
        credentials.refresh(transport)
    except google.auth.exceptions.RefreshError as exc:
        # args[0] is the endpoint's "error: description"; args[1] the raw body, not shown.
        detail = exc.args[0] if exc.args and isinstance(exc.args[0], str) else "refused"
        kind = "upstream_server" if getattr(exc, "retryable", False) else "config"
        raise ProviderError(
            kind, f"{NAME}: the token endpoint refused the service-account key: {detail[:200]}"
        ) from None
    except google.auth.exceptions.TransportError as exc:
        if _is_timeout(exc):
            raise ProviderError(
                "timeout", f"{NAME}: the token endpoint did not answer in time"
            ) from None
        raise ProviderError("upstream_server", f"{NAME}: cannot reach the token endpoint") from None
    token = credentials.token
    if not token:
        raise ProviderError("upstream_server", f"{NAME}: the token endpoint sent no access token")
    lifetime = 3600.0
    if credentials.expiry is not None:
        # google-auth keeps expiry as a naive UTC datetime.
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        lifetime = (credentials.expiry - now).total_seconds()
    return token, time.monotonic() + lifetime - min(REFRESH_MARGIN_S, max(lifetime, 0) / 2)


# -- transport --------------------------------------------------------------------------------


@register_adapter
class VertexAdapter(ProviderAdapter):
    PROVIDER = PROVIDER
    DEFAULT_BASE = DEFAULT_BASE

    def __init__(self, model: Json, client: UpstreamClient) -> None:
        super().__init__(model, client)
        config = model.get("google_cloud_vertex_ai_config") or {}
        project, region = config.get("project_id"), config.get("region")
        if not project or not region:
            raise ProviderError(
                "config", f"{NAME}: google_cloud_vertex_ai_config needs project_id and region"
            )
        key = credential(
            config, "private_key", required_in=f"{NAME}: google_cloud_vertex_ai_config"
        )
        info = service_account_info(key)
        self._credentials = service_account_credentials(info)
        # Strings that must never reach an error message, should an upstream echo one.
        self._secrets = [
            s
            for s in (key, info.get("private_key"), info.get("private_key_id"))
            if isinstance(s, str) and s
        ]
        base = config.get("vertex_api_base") or (
            GLOBAL_BASE if region == "global" else DEFAULT_BASE.format(region=region)
        )
        self.model_url = (
            f"{base.rstrip('/')}/v1/projects/{quote(project, safe='')}"
            f"/locations/{quote(region, safe='')}/publishers/google/models/"
            f"{quote(self.name, safe='@')}"
        )
        read = client.timeout.read
        self._transport = token_transport(read if read is not None else DEFAULT_TOKEN_TIMEOUT_S)
        self._token: str | None = None
        self._token_refresh_at = 0.0
        self._token_lock = asyncio.Lock()

    async def _access_token(self) -> str:
        token = self._token
        if token is not None and time.monotonic() < self._token_refresh_at:
            return token
        # One refresh at a time; callers that waited reuse the token it got.
        async with self._token_lock:
            if self._token is None or time.monotonic() >= self._token_refresh_at:
                self._token, self._token_refresh_at = await asyncio.to_thread(
                    _refresh, self._credentials, self._transport
                )
            return self._token

    @contextmanager
    def _calling(self, token: str) -> Iterator[None]:
        """Scrub secrets from errors; a 401 means the cached token is dead, so drop it."""
        try:
            with redacting(*self._secrets, token):
                yield
        except ProviderError as exc:
            if exc.status == 401 and self._token == token:
                self._token = None
            raise

    async def _post(self, method: str, payload: Json) -> Json:
        token = await self._access_token()
        with self._calling(token):
            response = await send(
                self.client,
                NAME,
                "POST",
                f"{self.model_url}:{method}",
                headers={"Authorization": f"Bearer {token}"},
                json=payload,
            )
            return response_json(response, NAME, object_only=True)

    async def _stream(self, payload: Json, *, chat: bool) -> AsyncIterator[Json]:
        state = StreamState(model=self.name, chat=chat)
        token = await self._access_token()
        with self._calling(token):
            lines = stream_lines(
                self.client,
                NAME,
                "POST",
                f"{self.model_url}:streamGenerateContent",
                params={"alt": "sse"},
                headers={"Authorization": f"Bearer {token}"},
                json=payload,
            )
            events = parse_sse(lines)
            async with aclosing(lines), aclosing(events):
                async for event in events:
                    for out in model_to_chat_streaming(event, state):
                        yield out
            for out in finish_streaming(state):
                yield out

    async def _chat(self, body: Json) -> Json:
        return model_to_chat(await self._post("generateContent", chat_to_model(body)), self.name)

    def _chat_stream(self, body: Json) -> AsyncIterator[Json]:
        # Translate now so a bad request fails at the call, not at the first chunk.
        return self._stream(chat_to_model(body), chat=True)

    async def _completions(self, body: Json) -> Json:
        payload = completions_to_model(body)
        return model_to_completions(await self._post("generateContent", payload), self.name)

    def _completions_stream(self, body: Json) -> AsyncIterator[Json]:
        return self._stream(completions_to_model(body), chat=False)

    async def _embeddings(self, body: Json) -> Json:
        payload = embeddings_to_model(body)
        return model_to_embeddings(await self._post("predict", payload), self.name)
