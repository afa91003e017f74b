"""The external-model executor: no process to run, only a config to check and secrets to find.

prepare resolves every `{{secrets/...}}` the entity uses (a missing one fails the entity,
naming the reference, never a value) and builds the entity's adapter from the resolved config,
as the gateway will (a bad key or a config the provider cannot work with fails the apply, not
the first query); building one does no I/O, and its client here refuses any. start registers
nothing remote (no network at apply); the gateway builds its own adapter from the active config.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx

from schemas import (
    DeploymentState,
    find_secret_references,
    format_secret_reference,
    parse_secret_reference,
    provider_info,
)

from ._executor import (
    Deployment,
    EntityStatus,
    Executor,
    ExecutorError,
    SecretResolver,
    SecretUnavailable,
)
from .adapters import ProviderError, UpstreamReply, UpstreamStream, adapter_for
from .adapters._base import redact

__all__ = ["ExternalModelExecutor", "check_adapter", "references_in", "resolved"]


def references_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield from (format_secret_reference(s, k) for s, k in find_secret_references(value))
    elif isinstance(value, dict):
        for item in value.values():
            yield from references_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from references_in(item)


def resolved(value: Any, resolve: SecretResolver) -> Any:
    """`value` with each string that is a whole secret reference replaced by its value (as
    the gateway resolves a config). Raises KeyError for a reference that does not resolve."""
    if isinstance(value, str):
        return resolve(value) if parse_secret_reference(value) else value
    if isinstance(value, dict):
        return {k: resolved(v, resolve) for k, v in value.items()}
    if isinstance(value, list):
        return [resolved(v, resolve) for v in value]
    return value


class _NoNetwork:
    """The `UpstreamClient` an adapter is checked with at apply: building one does no I/O, and
    an adapter that tried anyway would fail the apply instead of calling out."""

    timeout = httpx.Timeout(10.0)

    async def request(self, method: str, url: str, **kwargs: Any) -> UpstreamReply:
        raise ProviderError("config", "an adapter must not call its upstream while being built")

    async def post(self, url: str, **kwargs: Any) -> UpstreamReply:
        return await self.request("POST", url)

    async def get(self, url: str, **kwargs: Any) -> UpstreamReply:
        return await self.request("GET", url)

    def stream(
        self, method: str, url: str, **kwargs: Any
    ) -> AbstractAsyncContextManager[UpstreamStream]:
        raise ProviderError("config", "an adapter must not call its upstream while being built")


def check_adapter(label: str, model: Mapping[str, Any], secrets: Iterable[str] = ()) -> None:
    """Build the adapter for a resolved `external_model` block; ExecutorError if it cannot be.

    The message is the adapter's own (adapters never put a secret in one, and `secrets` are
    masked should one slip in), or only the exception's type for anything else, whose text
    may quote a config value.
    """
    try:
        adapter_for(dict(model), _NoNetwork())
    except ProviderError as exc:
        raise ExecutorError(f"{label}: {redact(exc, secrets).message}") from None
    except Exception as exc:
        raise ExecutorError(
            f"{label}: the {model.get('provider')} adapter cannot be built from this config "
            f"({type(exc).__name__})"
        ) from None


class ExternalModelExecutor(Executor):
    kind = "external"

    def prepare(self, deployment: Deployment, resolve: SecretResolver) -> None:
        model = deployment.config.get("external_model") or {}
        provider = model.get("provider")
        # The provider table (schemas), not the adapter registry: no vendor SDK imported here.
        if provider_info(provider) is None:
            raise ExecutorError(f"{deployment.label}: unknown provider {provider!r}")
        secrets = []
        for reference in references_in(deployment.config):
            try:
                secrets.append(resolve(reference))
            except KeyError as exc:
                why = exc.reason if isinstance(exc, SecretUnavailable) else "does not resolve"
                message = f"{deployment.label}: secret reference {reference}: {why}"
                raise ExecutorError(message) from None
        check_adapter(deployment.label, resolved(model, resolve), secrets)

    def start(self, deployment: Deployment) -> dict[str, Any]:
        return {"provider": deployment.config["external_model"]["provider"]}

    def wait_ready(self, deployment: Deployment, handle: dict[str, Any], timeout: float) -> None:
        return None

    def stop(self, deployment: Deployment, handle: dict[str, Any] | None) -> None:
        return None

    def status(self, deployment: Deployment, handle: dict[str, Any] | None) -> EntityStatus:
        return EntityStatus(DeploymentState.READY)
