"""Default served-entity names, computed the way the platform does (rule N3).

Computing them locally keeps plans stable: a spec without names and the state the server
echoes back (with names filled in) normalise to the same document.
"""

from __future__ import annotations

from ._endpoint import ServedEntityInput

__all__ = ["default_entity_name", "entity_name_of"]


def default_entity_name(entity: ServedEntityInput) -> str | None:
    """`external_model.name` with `.` and `:` -> `-`; else `<model>-<entity_version>`.

    For a three-level Unity Catalog name only the model part is used: the full
    `catalog.schema.model` would contain dots, which a served entity name may not (N3).
    """
    if entity.external_model is not None:
        return entity.external_model.name.replace(".", "-").replace(":", "-")
    if entity.entity_name and entity.entity_version:
        model = entity.entity_name.rsplit(".", 1)[-1]
        return f"{model}-{entity.entity_version}".replace(":", "-")
    return None


def entity_name_of(entity: ServedEntityInput) -> str | None:
    """The name the entity is served under: its own `name`, or the platform's default."""
    return entity.name if entity.name else default_entity_name(entity)
