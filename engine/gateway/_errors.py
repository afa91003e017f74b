"""Provider failures as the gateway's answers: the one place an upstream's status becomes ours.

An upstream's 401 is not the caller's 401: it says the provider refused the *engine's*
credentials, which the caller cannot fix. So every provider failure is answered here, for the
call path and for the stream path (before its first event and as its error event)::

    ProviderError                          status  message
    upstream_client 401, 402, 403          502     the provider rejected the engine's credentials
    upstream_client 400, 404, 413, 422     400     the provider's message (secrets masked)
    upstream_client 408                    504
    upstream_client 429                    429     Retry-After: the upstream's, else 1 s
    upstream_client other 4xx              502     the provider refused the engine's request
    upstream_server (5xx, garbage, down)   502
    timeout                                504
    unsupported                            400
    config                                 502     the entity's config cannot work upstream
    unavailable                            503     the entity cannot serve now (says why)

Messages name the served entity and never carry a secret: adapters mask what they send, and
the gateway masks every secret value the entity's config resolved to, should one slip through.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import Any

from engine.asgi import ApiError
from providers.adapters import ProviderError

__all__ = [
    "DEFAULT_RETRY_AFTER_S",
    "answer_for",
    "error_code",
    "masked",
    "status_for",
    "token_counts",
    "unreadable",
]

log = logging.getLogger("engine.gateway")

# An upstream 429 without Retry-After: callers' SDKs back off further on their own.
DEFAULT_RETRY_AFTER_S = 1
MASK = "[REDACTED]"

_CODES = {
    400: "INVALID_PARAMETER_VALUE",
    429: "REQUEST_LIMIT_EXCEEDED",
    502: "TEMPORARILY_UNAVAILABLE",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_CREDENTIALS = frozenset({401, 402, 403})
_CALLERS = frozenset({400, 404, 413, 422})
_KINDS = {"upstream_server": 502, "timeout": 504, "unsupported": 400, "config": 502}


def status_for(exc: ProviderError) -> int:
    """The status the gateway answers a provider failure with (never 500, never 401/403)."""
    if exc.kind == "unavailable":
        return 503
    if exc.kind != "upstream_client":
        return _KINDS.get(exc.kind, 502)
    if exc.status in _CALLERS:
        return 400
    if exc.status == 429:
        return 429
    if exc.status == 408:
        return 504
    return 502


def error_code(status: int) -> str:
    return _CODES.get(status, "TEMPORARILY_UNAVAILABLE")


def answer_for(exc: ProviderError, entity: str, secrets: Iterable[str] = ()) -> ApiError:
    """The platform's error (status, code, message, headers) for a provider failure."""
    status = status_for(exc)
    detail = masked(exc.message, secrets)
    if exc.kind == "upstream_client" and exc.status in _CREDENTIALS:
        message = (
            f"served entity {entity!r}: the provider rejected the engine's credentials for "
            f"this served entity (upstream HTTP {exc.status}: {detail})"
        )
    elif exc.kind == "upstream_client" and status == 502:
        message = (
            f"served entity {entity!r}: the provider refused the engine's request "
            f"(upstream HTTP {exc.status}: {detail})"
        )
    else:
        message = f"served entity {entity!r}: {detail}"
    headers: list[tuple[str, str]] = []
    if status == 429:
        wait = exc.retry_after
        seconds = math.ceil(wait) if wait is not None else DEFAULT_RETRY_AFTER_S
        headers.append(("retry-after", str(max(1, seconds))))
    return ApiError(status, error_code(status), message, headers)


def unreadable(exc: Exception, entity: str, provider: str) -> ProviderError:
    """An adapter that raised something other than ProviderError, almost always on an upstream
    answer of a shape it did not expect: a 502 that says so, not a gateway crash (a 500)."""
    # The type only: an exception's text can quote the upstream's body or the request.
    log.error("served entity %r: the %s adapter raised %s", entity, provider, type(exc).__name__)
    return ProviderError(
        "upstream_server",
        f"the engine cannot translate {provider}'s answer ({type(exc).__name__})",
    )


def token_counts(usage: Any, provider: str) -> tuple[int, int]:
    """(prompt, completion) tokens of a response's `usage`; absent counts are 0.

    A `usage` of the wrong type (`"x"`, `{"prompt_tokens": "many"}`, a negative count) is the
    upstream's fault: a ProviderError (502), since clients and the limiter would choke on it.
    """
    if usage is None:
        return 0, 0
    # The hot path: every answer's usage is checked here; well-formed counts return at once.
    if type(usage) is dict:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        total = usage.get("total_tokens")
        if (
            type(prompt) is int
            and type(completion) is int
            and prompt >= 0
            and completion >= 0
            and (total is None or (type(total) is int and total >= 0))
        ):
            return prompt, completion
    if not isinstance(usage, dict):
        raise ProviderError("upstream_server", f"{provider} sent a `usage` that is not an object")
    counts = []
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if value is None:
            counts.append(0)
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProviderError(
                "upstream_server", f"{provider} sent a `usage.{key}` that is not a token count"
            )
        counts.append(value)
    return counts[0], counts[1]


def masked(message: str, secrets: Iterable[str]) -> str:
    """`message` with every secret value in it replaced by the mask."""
    # Longest first: a secret that contains another is masked whole.
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        message = message.replace(secret, MASK)
    return message
