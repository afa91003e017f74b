from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.specs.loader import SpecUsageError, load_specs, load_text
from schemas import format_path

CHAT = """\
name: chat
config:
  served_entities:
    - name: gpt4
      external_model:
        name: gpt-4
        provider: openai
        task: llm/v1/chat
        openai_config:
          openai_api_key: "{{secrets/scope/key}}"
"""


def _errors(result):  # noqa: ANN001, ANN202
    return [(d.rule, d.line, format_path(d.path)) for d in result.errors]


def test_error_names_file_line_and_path(tmp_path: Path) -> None:
    spec = tmp_path / "chat.yaml"
    spec.write_text(CHAT.replace("task: llm/v1/chat", "task: llm/v1/chatty"))
    result = load_specs([spec])
    (diag,) = result.errors
    assert (diag.rule, diag.file, diag.line) == ("X8", str(spec), 8)
    assert format_path(diag.path) == "config.served_entities[0].external_model.task"
    assert diag.render().startswith(
        f"error: {spec}:8 config.served_entities[0].external_model.task:"
    )


def test_multi_document_and_list_documents(tmp_path: Path) -> None:
    spec = tmp_path / "many.yml"
    spec.write_text(
        CHAT
        + "---\n"
        + "- "
        + CHAT.replace("name: chat", "name: chat2").replace("\n", "\n  ").rstrip()
        + "\n"
    )
    result = load_specs([spec])
    assert result.valid, [d.render() for d in result.diagnostics]
    assert result.names == ["chat", "chat2"]


def test_bundle_shape_uses_resource_key_as_default_name(tmp_path: Path) -> None:
    body = CHAT.replace("name: chat\n", "")
    indented = "\n".join("      " + line for line in body.splitlines())
    (tmp_path / "bundle.yaml").write_text(
        "bundle: {name: demo}\nresources:\n  jobs: {}\n  model_serving_endpoints:\n"
        f"    my_chat:\n{indented}\n"
    )
    result = load_specs([tmp_path])
    assert result.valid and result.names == ["my_chat"]


def test_bundle_error_line_points_into_the_bundle(tmp_path: Path) -> None:
    body = CHAT + "bogus: 1\n"
    indented = "\n".join("      " + line for line in body.splitlines())
    path = tmp_path / "bundle.yaml"
    path.write_text(f"resources:\n  model_serving_endpoints:\n    k:\n{indented}\n")
    (diag,) = load_specs([path]).errors
    assert diag.rule == "S2" and format_path(diag.path) == "bogus"
    assert path.read_text().splitlines()[diag.line - 1].strip() == "bogus: 1"


def test_json_files_load(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "chat.json").write_text(json.dumps(yaml.safe_load(CHAT), indent=2))
    result = load_specs([tmp_path / "chat.json"])
    assert result.valid and result.names == ["chat"]


def test_env_interpolation(tmp_path: Path) -> None:
    text = CHAT.replace("name: gpt-4", "name: ${env:MODEL}").replace(
        "name: chat", "name: chat-$${env:LITERAL}x".replace("$${env:LITERAL}", "a")
    )
    result = load_text(text, env={"MODEL": "gpt-4o"})
    assert result.valid
    assert result.endpoints[0].spec.config.entities()[0].external_model.name == "gpt-4o"
    missing = load_text(text, env={})
    assert _errors(missing) == [("V1", 6, "config.served_entities[0].external_model.name")]
    assert "MODEL" in missing.errors[0].message


def test_escaped_env_reference_is_kept_literally() -> None:
    result = load_text(CHAT + "description: cost $${env:HOME}\n", env={})
    assert result.valid
    assert result.endpoints[0].spec.description == "cost ${env:HOME}"


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(CHAT)
    (tmp_path / "b.yaml").write_text(CHAT)
    result = load_specs([tmp_path])
    (diag,) = result.errors
    assert diag.rule == "D1" and diag.file == str(tmp_path / "b.yaml")
    assert "a.yaml:1" in diag.message


def test_duplicate_keys_are_errors() -> None:
    result = load_text(CHAT + "name: again\n")
    assert ("F2", 11, "name") in _errors(result)


@pytest.mark.parametrize(
    "text",
    ["name: [unclosed\n", "a: b: c\n", "\t- x\n", "!!python/object:os.system {}\n", "x: &a [*a]\n"],
)
def test_broken_yaml_is_a_located_error(text: str) -> None:
    result = load_text(text)
    assert not result.valid
    assert all(d.rule in {"F1", "F3", "S1"} for d in result.errors)


def test_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecUsageError):
        load_specs([tmp_path / "missing.yaml"])
    with pytest.raises(SpecUsageError):
        load_specs([tmp_path])  # empty directory


def test_directories_are_not_recursed(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(CHAT)
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "b.yaml").write_text(CHAT)
    assert load_specs([tmp_path]).valid


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    (diag,) = load_specs([path]).errors
    assert diag.rule == "F1" and diag.file == str(path)


def test_merge_keys() -> None:
    text = """\
name: merged
config:
  served_entities:
    - name: a
      external_model: &base
        name: gpt-4
        provider: openai
        task: llm/v1/chat
        openai_config: {openai_api_key: "{{secrets/s/k}}"}
    - name: b
      external_model:
        <<: *base
        name: gpt-4o
  traffic_config:
    routes: [{served_entity_name: a, traffic_percentage: 50},
             {served_entity_name: b, traffic_percentage: 50}]
"""
    result = load_text(text)
    assert result.valid, [d.render() for d in result.diagnostics]
    entities = result.endpoints[0].spec.config.entities()
    assert [e.external_model.name for e in entities] == ["gpt-4", "gpt-4o"]
    assert entities[1].external_model.provider.value == "openai"
