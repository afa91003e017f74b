"""The model catalog: `entity_name` (catalog.schema.model) + `entity_version` -> a model folder.

The embedded default is a local catalog in the state file, filled with
`engine models register`. An entry carries the task the model serves, its model type (read from
the folder's config.json), and optionally a context length (the runner's maximum model length)
and a default system prompt that the gateway adds to chat requests that have none.

With `MLFLOW_TRACKING_URI` set, a model version that is not in the local catalog is looked up in
the MLflow Model Registry (engine/mlflow_registry.py); the local catalog wins. `exists` reads
only the version's MLmodel; `get` downloads the version once into `<state dir>/models/mlflow/`.
A registry that cannot answer, or a version without an llm/v1 task, is logged and reads as absent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.catalog import mlflow_registry
from engine.state import DirectoryStore

__all__ = ["CatalogEntry", "ModelCatalog", "CatalogError", "TASKS"]

TASKS = ("llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings")


class CatalogError(Exception):
    pass


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    version: str
    path: Path
    task: str
    model_type: str | None = None
    context_length: int | None = None
    default_system_prompt: str | None = None
    throughput_chunk_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "path": str(self.path),
            "task": self.task,
            "model_type": self.model_type,
            "context_length": self.context_length,
            "default_system_prompt": self.default_system_prompt,
            "throughput_chunk_size": self.throughput_chunk_size,
        }


def _model_type(path: Path) -> str | None:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("model_type")
    return value if isinstance(value, str) else None


class ModelCatalog:
    def __init__(self, store: DirectoryStore) -> None:
        self.store = store
        self._entries = {(m["name"], m["version"]): m for m in store.models()}

    def register(
        self,
        name: str,
        version: str,
        path: Path,
        task: str,
        *,
        context_length: int | None = None,
        default_system_prompt: str | None = None,
    ) -> CatalogEntry:
        if name.count(".") != 2 or any(not part for part in name.split(".")):
            raise CatalogError(f"model name {name!r} must be catalog.schema.model")
        if task not in TASKS:
            raise CatalogError(f"task {task!r} must be one of {', '.join(TASKS)}")
        folder = path.resolve()
        if not (folder / "config.json").is_file():
            raise CatalogError(f"{path}: not a model folder (no config.json)")
        entry = CatalogEntry(
            name,
            str(version),
            folder,
            task,
            _model_type(folder),
            context_length,
            default_system_prompt,
        )
        record = entry.to_json()
        self.store.put_model(record)
        self._entries[(name, str(version))] = record
        return entry

    def get(self, name: str, version: str) -> CatalogEntry | None:
        record = self._entries.get((name, str(version)))
        if record is None:
            found = self._registry(name, str(version), fetch=True)
            if found is None or found.path is None:
                return None
            return CatalogEntry(name, str(version), found.path, found.task, _model_type(found.path))
        return CatalogEntry(
            name=record["name"],
            version=record["version"],
            path=Path(record["path"]),
            task=record["task"],
            model_type=record.get("model_type"),
            context_length=record.get("context_length"),
            default_system_prompt=record.get("default_system_prompt"),
            throughput_chunk_size=record.get("throughput_chunk_size"),
        )

    def set_throughput_chunk_size(self, name: str, version: str, value: int) -> CatalogEntry:
        """Store the output tokens/s one replica sustains on this host (`models calibrate`)."""
        record = self._entries.get((name, str(version)))
        if record is None:
            raise CatalogError(f"model {name} version {version} is not in the model catalog")
        if value < 1:
            raise CatalogError(f"throughput_chunk_size must be at least 1, not {value}")
        record = {**record, "throughput_chunk_size": int(value)}
        self.store.put_model(record)
        self._entries[(name, str(version))] = record
        entry = self.get(name, version)
        assert entry is not None
        return entry

    def exists(self, name: str, version: str) -> bool:
        if (name, str(version)) in self._entries:
            return True
        return self._registry(name, str(version), fetch=False) is not None

    def _registry(
        self, name: str, version: str, *, fetch: bool
    ) -> mlflow_registry.RegistryVersion | None:
        if not mlflow_registry.enabled():
            return None
        try:
            if fetch:
                cache = self.store.location.local_dir / "models" / "mlflow"
                return mlflow_registry.fetch(name, version, cache)
            return mlflow_registry.describe(name, version)
        except mlflow_registry.RegistryError:
            return None  # logged by mlflow_registry, naming the model and the reason

    def entries(self) -> list[CatalogEntry]:
        return [e for e in (self.get(n, v) for n, v in self._entries) if e is not None]
