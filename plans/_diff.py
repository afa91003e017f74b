"""Field-level differences between two canonical endpoint documents.

Lists of named things are matched by their name, not their position, so that adding an entity
shows one added entity rather than every later entity "changed":

| list                          | matched by            |
|-------------------------------|-----------------------|
| config.served_entities        | name                  |
| config.traffic_config.routes  | served_entity_name    |
| tags                          | key                   |
| anything else                 | position              |
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._canonical import is_sensitive

__all__ = ["FieldDiff", "diff_documents", "render_path"]

_MATCH_KEYS = {
    "served_entities": "name",
    "routes": "served_entity_name",
    "tags": "key",
}

PathPart = str | int | tuple[str, str]  # a tuple is a (match key, value) list selector


@dataclass(frozen=True, slots=True)
class FieldDiff:
    """One changed field: `before` None means added, `after` None means removed."""

    path: tuple[PathPart, ...]
    before: Any
    after: Any

    @property
    def sensitive(self) -> bool:
        return _contains_sensitive(self.before) or _contains_sensitive(self.after)


def diff_documents(before: Any, after: Any) -> list[FieldDiff]:
    return list(_diff(before, after, ()))


def _diff(before: Any, after: Any, path: tuple[PathPart, ...]) -> Iterator[FieldDiff]:
    if before == after:
        return
    if (
        isinstance(before, dict)
        and isinstance(after, dict)
        and not (is_sensitive(before) or is_sensitive(after))
    ):
        for key in list(before) + [k for k in after if k not in before]:
            yield from _diff(before.get(key), after.get(key), path + (key,))
        return
    # An added or removed block is listed field by field, like Terraform's create view.
    if before is None and _is_block(after):
        for key, value in after.items():
            yield from _diff(None, value, path + (key,))
        return
    if after is None and _is_block(before):
        for key, value in before.items():
            yield from _diff(value, None, path + (key,))
        return
    if before is None and isinstance(after, list) or after is None and isinstance(before, list):
        match = _MATCH_KEYS.get(path[-1]) if path and isinstance(path[-1], str) else None
        if match:
            before, after = before or [], after or []
    if isinstance(before, list) and isinstance(after, list):
        match = _MATCH_KEYS.get(path[-1]) if path and isinstance(path[-1], str) else None
        if match and _all_keyed(before, match) and _all_keyed(after, match):
            old = {item[match]: item for item in before}
            new = {item[match]: item for item in after}
            for key in list(old) + [k for k in new if k not in old]:
                yield from _diff(old.get(key), new.get(key), path + ((match, key),))
            return
        if len(before) == len(after):
            for i, (b, a) in enumerate(zip(before, after, strict=True)):
                yield from _diff(b, a, path + (i,))
            return
    yield FieldDiff(path, before, after)


def _is_block(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and not is_sensitive(value)


def _all_keyed(items: list[Any], key: str) -> bool:
    return all(isinstance(i, dict) and isinstance(i.get(key), str) for i in items)


def _contains_sensitive(value: Any) -> bool:
    if is_sensitive(value):
        return True
    if isinstance(value, dict):
        return any(_contains_sensitive(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_sensitive(v) for v in value)
    return False


def render_path(path: tuple[PathPart, ...]) -> str:
    """('config', 'served_entities', ('name', 'a'), 'x') -> 'config.served_entities[a].x'"""
    out = ""
    for part in path:
        if isinstance(part, tuple):
            out += f"[{part[1]}]"
        elif isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
