"""Models in an MLflow Model Registry, as a second source of the model catalog.

When `MLFLOW_TRACKING_URI` is set (and `MLFLOW_REGISTRY_URI`, when set, names the registry), a
`catalog.schema.model` + version that the local catalog does not know is looked up in the
registry with `mlflow.MlflowClient`. Its MLmodel gives the task: `metadata.task`, which
`mlflow.transformers.log_model(..., task="llm/v1/chat")` writes (the transformers flavor's
`inference_task` as a fallback). A version without an `llm/v1/*` task is an error naming it.

Two depths of lookup:

- `describe`: the version and its MLmodel only (a few kB). Enough for plans, which must not
  download weights.
- `fetch`: the whole version, downloaded once into `<cache root>/<name>/<version>/` (a temporary
  folder renamed into place, so a folder there is complete) and shaped into a folder vLLM loads.
  mlflow.transformers keeps the weights and config.json under `model/` and, for a pipeline, the
  tokenizer under `components/tokenizer/`; such a tokenizer is joined to the weights in `serve/`
  by relative symlinks. A later fetch of the same version reads the folder and asks the registry
  only whether the version still exists (and uses the folder when the registry is unreachable).

Results are kept per process: found versions for good (a registry version's files never change),
misses and errors for `NEGATIVE_TTL_S`, so that a long-running host sees a version registered
later. mlflow is imported only when a lookup happens: without `mlflow-skinny` installed a lookup
is an error saying to install it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "RegistryError",
    "RegistryVersion",
    "enabled",
    "describe",
    "fetch",
    "clear_cache",
    "NEGATIVE_TTL_S",
]

log = logging.getLogger("engine.mlflow_registry")

TRACKING_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_ENV = "MLFLOW_REGISTRY_URI"
LLM_TASKS = ("llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings")
NEGATIVE_TTL_S = 30.0
ENTRY_FILE = "engine-entry.json"

# Metadata calls fail fast: mlflow's defaults (7 retries, backoff factor 2, 120 s timeout) spend
# about 4 minutes on a registry that refuses connections, in the middle of a plan. Applied only
# where the user set nothing, and only around the registry calls, not the weight download.
_QUICK_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
_QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model")


class RegistryError(Exception):
    """The registry could not answer, or its answer is not a model this engine can serve."""


@dataclass(frozen=True)
class RegistryVersion:
    name: str
    version: str
    task: str
    registry_uri: str
    path: Path | None = None  # set by fetch: a folder with config.json, weights and tokenizer


def enabled() -> bool:
    return bool(os.environ.get(TRACKING_ENV, "").strip())


def _uris() -> tuple[str, str]:
    tracking = os.environ.get(TRACKING_ENV, "").strip()
    registry = os.environ.get(REGISTRY_ENV, "").strip() or tracking
    return tracking, registry


# -- the per-process cache --------------------------------------------------------------------

_lock = threading.RLock()
_found: dict[tuple[Any, ...], RegistryVersion] = {}
_missed: dict[tuple[Any, ...], tuple[float, RegistryError | None]] = {}
_key_locks: dict[tuple[Any, ...], threading.Lock] = {}


def clear_cache() -> None:
    with _lock:
        _found.clear()
        _missed.clear()
        _key_locks.clear()


def _hit(key: tuple[Any, ...]) -> tuple[bool, RegistryVersion | None]:
    with _lock:
        if key in _found:
            return True, _found[key]
        missed = _missed.get(key)
        if missed is not None and missed[0] > time.monotonic():
            if missed[1] is not None:
                raise missed[1]
            return True, None
        return False, None


def _cached(key: tuple[Any, ...], lookup: Any) -> RegistryVersion | None:
    """One lookup per key at a time (a download can take minutes); other keys go on."""
    hit, value = _hit(key)
    if hit:
        return value
    with _lock:
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        hit, value = _hit(key)  # another thread may have looked it up meanwhile
        if hit:
            return value
        try:
            result = lookup()
        except RegistryError as exc:
            log.warning("%s", exc)  # once per NEGATIVE_TTL_S: later calls re-raise it quietly
            with _lock:
                _missed[key] = (time.monotonic() + NEGATIVE_TTL_S, exc)
            raise
        with _lock:
            if result is None:
                _missed[key] = (time.monotonic() + NEGATIVE_TTL_S, None)
            else:
                _missed.pop(key, None)
                _found[key] = result
        return result


def describe(name: str, version: str) -> RegistryVersion | None:
    """The version's task from its MLmodel, without its weights; None when not registered.

    Raises RegistryError when the registry cannot be asked or the version has no llm/v1 task.
    """
    tracking, registry = _uris()
    key = ("describe", tracking, registry, name, str(version))
    return _cached(key, lambda: _describe(tracking, registry, name, str(version)))


def fetch(name: str, version: str, cache_root: Path) -> RegistryVersion | None:
    """The version downloaded (once) under `cache_root`, with `path` set; None when unknown."""
    tracking, registry = _uris()
    root = Path(cache_root).resolve()
    key = ("fetch", tracking, registry, str(root), name, str(version))
    return _cached(key, lambda: _fetch(tracking, registry, name, str(version), root))


# -- lookups ----------------------------------------------------------------------------------


def _mlflow() -> Any:
    try:
        import mlflow  # noqa: F401 - the package, for its submodules below
        import mlflow.artifacts
        import mlflow.exceptions
    except ImportError:
        raise RegistryError(
            f"{TRACKING_ENV} is set, so models not in the local catalog are looked up in the "
            "MLflow Model Registry, but mlflow is not installed: "
            "pip install 'serving-engine[mlflow]' (or mlflow-skinny)"
        ) from None
    return mlflow


_env_lock = threading.Lock()
_env_users: dict[str, int] = {}  # variables this module set, and how many calls rely on them


@contextlib.contextmanager
def _env(defaults: dict[str, str]) -> Iterator[None]:
    """Set the variables the user left unset, for the duration of a call only.

    Counted, so that concurrent lookups (the host's threads) do not unset them under each other.
    """
    with _env_lock:
        added = [k for k in defaults if k in _env_users or k not in os.environ]
        for k in added:
            if k not in _env_users:
                os.environ[k] = defaults[k]
            _env_users[k] = _env_users.get(k, 0) + 1
    try:
        yield
    finally:
        with _env_lock:
            for k in added:
                _env_users[k] -= 1
                if not _env_users[k]:
                    del _env_users[k]
                    os.environ.pop(k, None)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _label(name: str, version: str, registry: str) -> str:
    return f"model {name} version {version} in the MLflow registry at {registry}"


def _model_version(mlflow: Any, tracking: str, registry: str, name: str, version: str) -> Any:
    """The registry's ModelVersion, or None when the model or the version is unknown."""
    from mlflow.exceptions import MlflowException

    try:
        with _env({**_QUICK_HTTP, **_QUIET}):
            client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=registry)
            found = client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise RegistryError(
            f"cannot look up model {name} version {version} in the MLflow registry at "
            f"{registry}: {_short(exc)}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - connection errors come in many types
        raise RegistryError(
            f"cannot reach the MLflow registry at {registry} to look up model {name} version "
            f"{version}: {_short(exc)}"
        ) from None
    status = str(getattr(found, "status", "READY") or "READY")
    if status != "READY":
        raise RegistryError(
            f"{_label(name, version, registry)} is {status}, not READY"
            + (f": {found.status_message}" if getattr(found, "status_message", None) else "")
        )
    return found


def _download(mlflow: Any, uri: str, dst: Path, registry: str, tracking: str, *, quick: bool):
    dst.mkdir(parents=True, exist_ok=True)
    with _env({**(_QUICK_HTTP if quick else {}), **_QUIET}):
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(dst), tracking_uri=tracking, registry_uri=registry
            )
        )


def _task(mlmodel: dict[str, Any], label: str) -> str:
    metadata = mlmodel.get("metadata") or {}
    flavor = (mlmodel.get("flavors") or {}).get("transformers") or {}
    task = metadata.get("task") or flavor.get("inference_task")
    if task not in LLM_TASKS:
        found = f"its task is {task!r}" if task else "its MLmodel has no metadata.task"
        raise RegistryError(
            f"{label} cannot be served: {found}, not one of {', '.join(LLM_TASKS)}; log it with "
            "mlflow.transformers.log_model(..., task='llm/v1/chat') (or llm/v1/completions, "
            "llm/v1/embeddings)"
        )
    if flavor and not flavor.get("model_binary"):
        raise RegistryError(
            f"{label} was logged without its weights (save_pretrained=False or a PEFT adapter); "
            "log it with mlflow.transformers.log_model(..., save_pretrained=True)"
        )
    return str(task)


def _read_mlmodel(path: Path, label: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"{label}: cannot read its MLmodel: {_short(exc)}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{label}: its MLmodel is not a mapping")
    return data


def _describe(tracking: str, registry: str, name: str, version: str) -> RegistryVersion | None:
    mlflow = _mlflow()
    if _model_version(mlflow, tracking, registry, name, version) is None:
        return None
    label = _label(name, version, registry)
    with tempfile.TemporaryDirectory(prefix="engine-mlmodel-") as tmp:
        try:
            local = _download(
                mlflow,
                f"models:/{name}/{version}/MLmodel",
                Path(tmp),
                registry,
                tracking,
                quick=True,
            )
        except Exception as exc:  # noqa: BLE001 - artifact stores raise many types
            raise RegistryError(f"{label}: cannot download its MLmodel: {_short(exc)}") from None
        mlmodel = _read_mlmodel(local if local.is_file() else local / "MLmodel", label)
    return RegistryVersion(name, version, _task(mlmodel, label), registry)


def _safe(part: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", part)
    return safe if safe.strip(".") else f"_{safe}"


def _fetch(
    tracking: str, registry: str, name: str, version: str, root: Path
) -> RegistryVersion | None:
    mlflow = _mlflow()
    label = _label(name, version, registry)
    final = root / _safe(name) / _safe(version)
    try:
        registered = _model_version(mlflow, tracking, registry, name, version)
    except RegistryError as exc:
        if (final / ENTRY_FILE).is_file():  # downloaded before: serve it while the registry is away
            log.warning("%s; using the copy downloaded before, in %s", exc, final)
            return _load(final, name, version, registry)
        raise
    if registered is None:
        return None
    if (final / ENTRY_FILE).is_file():
        return _load(final, name, version, registry)

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{_safe(version)}-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the model folder is not a secret
    try:
        try:
            artifacts = _download(
                mlflow,
                f"models:/{name}/{version}",
                tmp / "artifacts",
                registry,
                tracking,
                quick=False,
            )
        except Exception as exc:  # noqa: BLE001 - artifact stores raise many types
            raise RegistryError(f"{label}: cannot download it: {_short(exc)}") from None
        mlmodel = _read_mlmodel(artifacts / "MLmodel", label)
        task = _task(mlmodel, label)
        folder = _servable(tmp, artifacts, mlmodel, label)
        (tmp / ENTRY_FILE).write_text(
            json.dumps(
                {"name": name, "version": version, "task": task, "path": str(folder)}, indent=2
            )
        )
        try:
            tmp.rename(final)
        except OSError:
            if not (final / ENTRY_FILE).is_file():  # not a concurrent fetch of the same version
                raise RegistryError(
                    f"{label}: cannot move the download into {final} (remove that folder)"
                ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(final, name, version, registry)


def _load(final: Path, name: str, version: str, registry: str) -> RegistryVersion:
    record = json.loads((final / ENTRY_FILE).read_text())
    return RegistryVersion(name, version, record["task"], registry, final / record["path"])


def _servable(tmp: Path, artifacts: Path, mlmodel: dict[str, Any], label: str) -> Path:
    """The folder vLLM loads, relative to `tmp`: config.json, weights and tokenizer together."""
    flavor = (mlmodel.get("flavors") or {}).get("transformers") or {}
    weights = artifacts / str(flavor.get("model_binary") or "")
    if not (weights / "config.json").is_file():
        raise RegistryError(
            f"{label}: no config.json in {weights.relative_to(artifacts)}/ of its artifacts: "
            "not a Hugging Face model folder"
        )
    has_tokenizer = any((weights / f).is_file() for f in _TOKENIZER_FILES)
    components = artifacts / "components"
    extras = [components / "tokenizer", components / "processor"]
    extras = [d for d in extras if d.is_dir()]
    if has_tokenizer or not extras:
        return weights.relative_to(tmp)
    # A pipeline's tokenizer sits apart from the weights: join them by relative links.
    serve = tmp / "serve"
    serve.mkdir()
    for source in (weights, *extras):
        for item in sorted(source.iterdir()):
            link = serve / item.name
            if not link.exists() and not link.is_symlink():
                link.symlink_to(os.path.relpath(item, serve))
    return serve.relative_to(tmp)
