"""The platform's state words, and the roles an entity instance has in the state store.

One owner for each word, so a misspelling is an import error and not a state that no client
understands (the Databricks SDK's waiter polls for 20 minutes on a `config_update` it does not
know). They live in schemas/ because plans/, providers/ and engine/ all read them and schemas/
is the one layer every other may import. StrEnum members compare equal to, format as and
serialise as their strings, so state rows and JSON bodies carry the same bytes as before.

| enum                | field                                   | values                         |
|---------------------|-----------------------------------------|--------------------------------|
| `ReadyState`        | endpoint `state.ready`                  | READY, NOT_READY               |
| `ConfigUpdateState` | endpoint `state.config_update`          | NOT_UPDATING, IN_PROGRESS,     |
|                     |                                         | UPDATE_FAILED, UPDATE_CANCELED |
| `DeploymentState`   | served entity `state.deployment`        | DEPLOYMENT_CREATING, _READY,   |
|                     |                                         | _FAILED, _ABORTED, _RECOVERING |
| `EntityRole`        | the engine's own: which config a        | pending, active, retiring      |
|                     | tracked entity instance belongs to      |                                |

The platform's names for the first three: EndpointStateReady, EndpointStateConfigUpdate,
ServedModelStateDeployment (reference/serving_api.md).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ConfigUpdateState", "DeploymentState", "EntityRole", "ReadyState"]


class ReadyState(StrEnum):
    """READY when every served entity of the active config is ready (empty configs too)."""

    READY = "READY"
    NOT_READY = "NOT_READY"


class ConfigUpdateState(StrEnum):
    """Only one update per endpoint at a time: a new one is refused while IN_PROGRESS (L1)."""

    NOT_UPDATING = "NOT_UPDATING"
    IN_PROGRESS = "IN_PROGRESS"
    # The new config did not come up; the old one keeps serving.
    UPDATE_FAILED = "UPDATE_FAILED"
    UPDATE_CANCELED = "UPDATE_CANCELED"


class DeploymentState(StrEnum):
    CREATING = "DEPLOYMENT_CREATING"
    READY = "DEPLOYMENT_READY"
    FAILED = "DEPLOYMENT_FAILED"
    ABORTED = "DEPLOYMENT_ABORTED"
    # Was ready, failed a health check, is being restarted.
    RECOVERING = "DEPLOYMENT_RECOVERING"


class EntityRole(StrEnum):
    """Which config a tracked entity instance belongs to."""

    # Being brought up for a config that is not active yet.
    PENDING = "pending"
    # Serving the active config.
    ACTIVE = "active"
    # Left by an old config (or a deleted endpoint): to stop.
    RETIRING = "retiring"
