"""Deprecated providers the platform still accepts: AI21 Labs (Jurassic-2) and Google PaLM.

AI21 J2 complete: https://docs.ai21.com/reference/j2-complete-ref

    POST https://api.ai21.com/studio/v1/j2-ultra/complete          (Authorization: Bearer ...)
    {"prompt": "Hi", "maxTokens": 16, "temperature": 0.7, "numResults": 1, "stopSequences": ["."]}
    -> {"prompt": {"text": "Hi", "tokens": [{...}]},
        "completions": [{"data": {"text": " there", "tokens": [{...}]},
                         "finishReason": {"reason": "endoftext"}}]}

PaLM v1beta2: https://developers.generativeai.google/api/rest/generativelanguage/models

    POST https://generativelanguage.googleapis.com/v1beta2/models/text-bison-001:generateText?key=...
    {"prompt": {"text": "Hi"}, "temperature": 0.7, "candidateCount": 1, "maxOutputTokens": 16}
    -> {"candidates": [{"output": " there"}]}
    :generateMessage {"prompt": {"context": "Be brief", "messages": [{"author": "user",
                      "content": "Hi"}]}} -> {"candidates": [{"author": "1", "content": "Hello"}]}
    :embedText {"text": "Hi"} -> {"embedding": {"value": [0.1, 0.2]}}

Neither streams here (the base's unsupported error). Usage is what the provider reports: AI21's
token lists are counted; PaLM reports none, so it is zero.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

from ._base import (
    Json,
    ProviderAdapter,
    ProviderError,
    chat_response,
    completion_response,
    embeddings_response,
    redacting,
    response_json,
    send,
)
from ._client import UpstreamClient
from ._common import input_texts, prompt_of
from ._registry import register_adapter
from .openai import MASK, credential, require

__all__ = ["Ai21LabsAdapter", "PalmAdapter"]

# Keys placed by the translation itself, or OpenAI-only; `stream` follows the method called.
_DROP = frozenset({"model", "stream", "stream_options", "messages", "prompt", "input"})
# unified -> AI21 / PaLM parameter names; anything else passes through as a provider parameter.
_AI21_PARAMS = {
    "max_tokens": "maxTokens",
    "n": "numResults",
    "stop": "stopSequences",
    "top_p": "topP",
}
_PALM_PARAMS = {
    "max_tokens": "maxOutputTokens",
    "n": "candidateCount",
    "stop": "stopSequences",
    "top_p": "topP",
    "top_k": "topK",
}
# AI21 finishReason.reason -> OpenAI finish_reason.
_AI21_FINISH = {"endoftext": "stop", "stop": "stop", "length": "length"}


def _params(body: Json, names: dict[str, str]) -> Json:
    out: Json = {}
    for key, value in body.items():
        if key in _DROP:
            continue
        if key == "stop" and isinstance(value, str):
            value = [value]  # both providers take a list only
        out[names.get(key, key)] = value
    return out


def _text(content: Any) -> str:
    """Message content as text (the list-of-parts form keeps its text parts)."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def flatten_messages(messages: list[Json]) -> str:
    """Chat -> one prompt for a completion-only model, ending where the assistant speaks."""
    lines = [f"{m.get('role', 'user')}: {_text(m.get('content'))}" for m in messages]
    return "\n".join([*lines, "assistant:"])


# -- translation (pure: no I/O) ---------------------------------------------------------------


def ai21_completions_to_model(prompt: str, body: Json) -> Json:
    return {"prompt": prompt, **_params(body, _AI21_PARAMS)}


def ai21_model_to_contents(payload: Json) -> tuple[list[tuple[str, str | None]], int, int]:
    """(text, finish_reason) per completion, prompt tokens, completion tokens."""
    completions = payload["completions"]
    contents = []
    for c in completions:
        reason = (c.get("finishReason") or {}).get("reason")
        contents.append((c["data"]["text"], _AI21_FINISH.get(reason, reason)))
    prompt_tokens = len((payload.get("prompt") or {}).get("tokens") or [])
    completion_tokens = sum(len(c["data"].get("tokens") or []) for c in completions)
    return contents, prompt_tokens, completion_tokens


def palm_completions_to_model(prompt: str, body: Json) -> Json:
    return {"prompt": {"text": prompt}, **_params(body, _PALM_PARAMS)}


def palm_chat_to_model(body: Json) -> Json:
    messages = body.get("messages") or []
    # PaLM has no system role: system messages become the conversation's context.
    context = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
    prompt: Json = {
        "messages": [
            {"author": m.get("role", "user"), "content": _text(m.get("content"))}
            for m in messages
            if m.get("role") != "system"
        ]
    }
    if context:
        prompt["context"] = context
    return {"prompt": prompt, **_params(body, _PALM_PARAMS)}


# -- adapters ---------------------------------------------------------------------------------


class _LegacyAdapter(ProviderAdapter):
    """One JSON POST per call with the key masked out of every error."""

    CONFIG: ClassVar[str]
    KEY: ClassVar[str]

    def __init__(self, model: Json, client: UpstreamClient) -> None:
        super().__init__(model, client)
        config: Json = model.get(self.CONFIG) or {}
        self.api_key = require(
            credential(config, self.KEY), self.PROVIDER, f"{self.CONFIG}.{self.KEY}"
        )
        # `<provider>_api_base` is not in the platform's schema; tests construct adapters with it.
        self.base = (config.get(f"{self.PROVIDER}_api_base") or self.DEFAULT_BASE).rstrip("/")

    async def _post(self, url: str, body: Json, **kwargs: Any) -> Any:
        with redacting(self.api_key, mask=MASK):
            response = await send(self.client, self.PROVIDER, "POST", url, json=body, **kwargs)
            return response_json(response, self.PROVIDER)

    def _unexpected(self) -> ProviderError:
        return ProviderError("upstream_server", f"{self.PROVIDER} sent an unexpected response")


@register_adapter
class Ai21LabsAdapter(_LegacyAdapter):
    PROVIDER = "ai21labs"
    DEFAULT_BASE = "https://api.ai21.com"
    CONFIG = "ai21labs_config"
    KEY = "ai21labs_api_key"

    async def _complete(
        self, prompt: str, body: Json
    ) -> tuple[list[tuple[str, str | None]], int, int]:
        url = f"{self.base}/studio/v1/{quote(self.name, safe='')}/complete"
        payload = await self._post(
            url,
            ai21_completions_to_model(prompt, body),
            headers={"Authorization": f"Bearer {self.api_key}"},
        )
        try:
            return ai21_model_to_contents(payload)
        except (KeyError, TypeError, AttributeError):
            raise self._unexpected() from None

    async def _completions(self, body: Json) -> Json:
        contents, prompt_tokens, completion_tokens = await self._complete(
            prompt_of(body, self.PROVIDER), body
        )
        return completion_response(self.name, contents, prompt_tokens, completion_tokens)

    async def _chat(self, body: Json) -> Json:
        prompt = flatten_messages(body.get("messages") or [])
        contents, prompt_tokens, completion_tokens = await self._complete(prompt, body)
        return chat_response(self.name, contents, prompt_tokens, completion_tokens)


@register_adapter
class PalmAdapter(_LegacyAdapter):
    PROVIDER = "palm"
    DEFAULT_BASE = "https://generativelanguage.googleapis.com"
    CONFIG = "palm_config"
    KEY = "palm_api_key"

    async def _call(self, method: str, body: Json) -> Any:
        model = quote(self.name.removeprefix("models/"), safe="")
        url = f"{self.base}/v1beta2/models/{model}:{method}"
        # The key rides in the query string (PaLM's documented way); errors never repeat the URL.
        return await self._post(url, body, params={"key": self.api_key})

    async def _completions(self, body: Json) -> Json:
        payload = await self._call(
            "generateText", palm_completions_to_model(prompt_of(body, self.PROVIDER), body)
        )
        try:
            # No candidates at all means the safety filters blocked every one.
            contents = [(c["output"], None) for c in payload.get("candidates") or []]
        except (KeyError, TypeError, AttributeError):
            raise self._unexpected() from None
        return completion_response(self.name, contents, None, None)

    async def _chat(self, body: Json) -> Json:
        payload = await self._call("generateMessage", palm_chat_to_model(body))
        try:
            contents = [(c["content"], None) for c in payload.get("candidates") or []]
        except (KeyError, TypeError, AttributeError):
            raise self._unexpected() from None
        return chat_response(self.name, contents, None, None)

    async def _embeddings(self, body: Json) -> Json:
        texts = input_texts(body, self.PROVIDER, allow_empty=True)
        vectors = []
        for text in texts:  # embedText takes one text; inputs are few for this legacy model
            payload = await self._call("embedText", {"text": text})
            try:
                vectors.append(payload["embedding"]["value"])
            except (KeyError, TypeError):
                raise self._unexpected() from None
        return embeddings_response(self.name, vectors, None)
