"""Where a remote plan goes: `--target NAME|URL`, resolved by the Databricks SDK's own config.

| `--target`            | what the SDK reads                                              |
|-----------------------|-----------------------------------------------------------------|
| `https://host`        | that host; credentials from `DATABRICKS_TOKEN` (or other env)   |
| `NAME`                | the profile `[NAME]` of `~/.databrickscfg` (`DATABRICKS_CONFIG_FILE`) |
| `env`                 | `DATABRICKS_HOST` / `DATABRICKS_TOKEN` alone                    |

Authentication is the SDK's (`Config.authenticate()` gives the headers of every request): no
hand-written auth, so whatever a Databricks user already has configured works unchanged.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Target", "TargetError", "resolve_target", "ENV_TARGET"]

# `--target env`: only the environment variables, as the SDK reads them.
ENV_TARGET = "env"
# How long the SDK may retry while resolving the host (its default is minutes).
_RESOLVE_TIMEOUT_S = 10


class TargetError(Exception):
    """The target cannot be resolved (no such profile, no credentials): one line to show."""


@dataclass(frozen=True)
class Target:
    """A resolved remote: `host` without a trailing slash; `key` names its local record."""

    name: str
    host: str
    config: Any  # databricks.sdk.core.Config (imported lazily: the SDK is slow to import)

    @property
    def key(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9]+", "-", self.host.split("://", 1)[-1]).strip("-")
        return f"{slug[:60]}-{hashlib.sha256(self.host.encode()).hexdigest()[:8]}"

    def headers(self) -> dict[str, str]:
        """The SDK's auth headers, asked afresh per request (tokens may be refreshed)."""
        return dict(self.config.authenticate())

    def __repr__(self) -> str:
        return f"Target({self.name!r}, {self.host!r})"  # never a credential


def resolve_target(spec: str) -> Target:
    from databricks.sdk.core import Config

    kwargs: dict[str, Any] = {"retry_timeout_seconds": _RESOLVE_TIMEOUT_S}
    if "://" in spec:
        kwargs["host"] = spec
    elif spec != ENV_TARGET:
        kwargs["profile"] = spec
    try:
        config = Config(**kwargs)
        config.authenticate()
    except Exception as exc:  # noqa: BLE001 - the SDK raises ValueError and its own types
        raise TargetError(f"cannot use target {spec!r}: {_first_line(exc)}") from None
    if not config.host:
        raise TargetError(f"target {spec!r} names no host (set DATABRICKS_HOST or a profile)")
    return Target(spec, config.host.rstrip("/"), config)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
