"""Config and request helpers the native (non-OpenAI-wire) adapters share. Pure: no I/O.

`provider` in an error message is the name each adapter already uses for itself there.
"""

from __future__ import annotations

import json
from typing import Any

from ._base import Json, ProviderError

__all__ = ["credential", "event_json", "input_texts", "prompt_of", "stop_list", "text_of"]


def credential(config: Json, field: str, *, required_in: str | None = None) -> Any:
    """The secret in `field` or its `*_plaintext` twin, the first one set; None when neither is.

    The engine resolves `field`'s secret reference before building adapters; the twin holds the
    value itself. A pydantic SecretStr that reached us unwrapped is revealed, not sent as a mask.
    With `required_in` (where the config is, for the message) a missing one is a config error.
    """
    for name in (field, f"{field}_plaintext"):
        value = config.get(name)
        reveal = getattr(value, "get_secret_value", None)
        if callable(reveal):
            value = reveal()
        if value:
            return value
    if required_in is not None:
        raise ProviderError("config", f"{required_in} needs {field} or {field}_plaintext")
    return None


def text_of(content: Any, provider: str) -> str:
    """OpenAI message content (str, None or a list of parts) as plain text; text parts only."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ProviderError("unsupported", f"{provider}: content part {kind!r} unsupported")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise ProviderError("unsupported", f"{provider}: message content must be text")


def prompt_of(body: Json, provider: str) -> str:
    """A completions `prompt`: one string, or a list holding exactly one."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ProviderError("unsupported", f"{provider}: prompt must be one string")
    return prompt


def input_texts(body: Json, provider: str, *, allow_empty: bool = False) -> list[str]:
    """An embeddings `input` as a list of strings (one string is a list of one)."""
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if (
        not isinstance(texts, list)
        or not (texts or allow_empty)
        or not all(isinstance(t, str) for t in texts)
    ):
        raise ProviderError("unsupported", f"{provider}: embeddings input must be text")
    return texts


def stop_list(body: Json) -> list[str] | None:
    """`stop` as a list (the unified schema also takes one string); None when not set."""
    stop = body.get("stop")
    if not stop:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def event_json(data: str, provider: str, what: str = "stream event") -> Json:
    """One streamed event's data as a JSON object; anything else is the upstream's fault."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise ProviderError("upstream_server", f"{provider} sent a {what} that is not JSON")
    return value
