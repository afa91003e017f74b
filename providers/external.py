"""The external-model executor: no process to run, only a config to check and secrets to find.

prepare resolves every `{{secrets/...}}` the entity uses (a missing one fails the entity,
naming the reference, never a value); start registers nothing remote (no network at apply);
the gateway builds its provider client from the active config.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from schemas import (
    DeploymentState,
    find_secret_references,
    format_secret_reference,
    provider_info,
)

from ._executor import Deployment, EntityStatus, Executor, ExecutorError, SecretResolver

__all__ = ["ExternalModelExecutor", "references_in"]


def references_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield from (format_secret_reference(s, k) for s, k in find_secret_references(value))
    elif isinstance(value, dict):
        for item in value.values():
            yield from references_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from references_in(item)


class ExternalModelExecutor(Executor):
    kind = "external"

    def prepare(self, deployment: Deployment, resolve: SecretResolver) -> None:
        model = deployment.config.get("external_model") or {}
        provider = model.get("provider")
        # The provider table (schemas), not the adapter registry: no vendor SDK imported here.
        if provider_info(provider) is None:
            raise ExecutorError(f"{deployment.label}: unknown provider {provider!r}")
        for reference in references_in(deployment.config):
            try:
                resolve(reference)
            except KeyError:
                raise ExecutorError(
                    f"{deployment.label}: secret reference {reference} does not resolve"
                ) from None

    def start(self, deployment: Deployment) -> dict[str, Any]:
        return {"provider": deployment.config["external_model"]["provider"]}

    def wait_ready(self, deployment: Deployment, handle: dict[str, Any], timeout: float) -> None:
        return None

    def stop(self, deployment: Deployment, handle: dict[str, Any] | None) -> None:
        return None

    def status(self, deployment: Deployment, handle: dict[str, Any] | None) -> EntityStatus:
        return EntityStatus(DeploymentState.READY)
