from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from schemas import render_json_schema

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

BAD = """\
name: bad
config:
  served_entities:
    - name: x
      external_model: {name: m, provider: openai, task: llm/v1/chat, openai_confg: {}}
"""
WARN = """\
name: warn
config:
  served_entities:
    - entity_name: main.default.m
      entity_version: 1
      workload_size: Enormous
      scale_to_zero_enabled: true
"""


def test_examples_validate() -> None:
    result = runner.invoke(app, ["validate", str(ROOT / "examples")])
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith("valid:")


def test_errors_exit_1_with_one_line_each(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD)
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"error: {tmp_path / 'bad.yaml'}:5 ")
    assert "did you mean `openai_config`" in lines[0]
    assert lines[-1].startswith("invalid:")


def test_json_output_shape(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(BAD)
    (tmp_path / "warn.yaml").write_text(WARN)
    result = runner.invoke(app, ["validate", "--json", str(tmp_path)])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert set(report) == {"valid", "endpoints", "errors", "warnings"}
    assert report["valid"] is False and report["endpoints"] == ["warn"]
    for item in report["errors"] + report["warnings"]:
        assert set(item) == {"rule", "file", "line", "path", "message"}
    assert report["warnings"][0]["rule"] == "E8"
    assert report["warnings"][0]["path"] == "config.served_entities[0].workload_size"


def test_strict_turns_warnings_into_failure(tmp_path: Path) -> None:
    (tmp_path / "warn.yaml").write_text(WARN)
    assert runner.invoke(app, ["validate", str(tmp_path)]).exit_code == 0
    strict = runner.invoke(app, ["validate", "--strict", "--json", str(tmp_path)])
    assert strict.exit_code == 1 and json.loads(strict.output)["valid"] is False


@pytest.mark.parametrize("args", [[], ["/no/such/file.yaml"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "validate", *args], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout


def test_binary_garbage_gives_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_bytes(bytes(range(256)))
    (tmp_path / "y.json").write_text("{")
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "validate", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert str(tmp_path / "y.json") in result.stdout


def test_checked_in_schema_is_current() -> None:
    checked_in = (ROOT / "schemas" / "endpoint.schema.json").read_text()
    assert checked_in == render_json_schema(), (
        "schemas/endpoint.schema.json is stale: run `engine schema -o schemas/endpoint.schema.json`"
    )


def test_schema_command_prints_the_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0 and json.loads(result.output)["title"] == "Serving endpoint"
