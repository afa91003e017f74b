"""YAML scalars whose construction raises are F1 diagnostics of their file, never a crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.specs.loader import load_specs, load_text
from schemas import format_path

ROOT = Path(__file__).resolve().parent.parent
HUGE = "1" * 5000  # over Python's int-string limit (4300 digits)

BAD_SCALARS = {
    "impossible date": "2024-02-30",
    "explicit int": "!!int abc",
    "explicit bool": "!!bool maybe",
    "explicit float": "!!float abc",
    "explicit timestamp": "!!timestamp soon",
    "huge int": HUGE,
}

TAGGED = """\
name: tagged
tags:
  - key: team
    value: {value}
  - key: other
    value: fine
"""


def _errors(result):  # noqa: ANN001, ANN202
    return [(d.rule, d.line, format_path(d.path)) for d in result.errors]


@pytest.mark.parametrize("scalar", BAD_SCALARS.values(), ids=BAD_SCALARS.keys())
def test_bad_value_is_one_located_f1(scalar: str) -> None:
    result = load_text(TAGGED.format(value=scalar), "tagged.yaml")
    assert _errors(result) == [("F1", 4, "tags[0].value")]
    (diag,) = result.errors
    assert diag.file == "tagged.yaml" and diag.message


@pytest.mark.parametrize("scalar", BAD_SCALARS.values(), ids=BAD_SCALARS.keys())
def test_bad_mapping_key_is_one_located_f1(scalar: str) -> None:
    text = f"name: keyed\n? {scalar}\n: x\ndescription: still read\n"
    result = load_text(text, "keyed.yaml")
    assert _errors(result) == [("F1", 2, "")]
    assert "mapping key" in result.errors[0].message


def test_every_bad_value_and_other_problems_are_reported_together() -> None:
    text = """\
name: many
tags:
  - {key: a, value: 2024-02-30}
  - {key: b, value: !!int x}
  - {key: c, value: ok, colour: red}
"""
    assert _errors(load_text(text)) == [
        ("F1", 3, "tags[0].value"),
        ("F1", 4, "tags[1].value"),
        ("S2", 5, "tags[2].colour"),
    ]


def test_message_does_not_repeat_the_value() -> None:
    text = """\
name: leak
config:
  served_entities:
    - name: gpt
      external_model:
        name: gpt-4
        provider: openai
        task: llm/v1/chat
        openai_config:
          openai_api_key_plaintext: !!int sk-live-do-not-print
"""
    errors = load_text(text).errors
    assert errors[0].rule == "F1"
    assert not any("sk-live" in d.render() for d in errors)


def test_json_file_with_a_huge_integer(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    path.write_text('{"name": "big",\n "tags": [{"key": "k", "value": ' + HUGE + "}]}\n")
    (diag,) = load_specs([path]).errors
    assert (diag.rule, diag.file, diag.line) == ("F1", str(path), 2)
    assert "5000 digits" in diag.message


def _cli(*args: str, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "ENGINE_STATE": str(state)},
    )


@pytest.fixture
def specs(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "a_date.yaml").write_text(TAGGED.format(value="2024-02-30"))
    (folder / "b_key.yaml").write_text(f"name: keyed\n? {HUGE}\n: x\n")
    huge = {"name": "c", "tags": [{"key": "k", "value": int(HUGE[:10])}]}
    (folder / "c_huge.json").write_text(json.dumps(huge).replace(HUGE[:10], HUGE))
    (folder / "d_typo.yaml").write_text("name: d\ndescriptoin: x\n")
    (folder / "e_good.yaml").write_text("name: e\n")
    return folder


def test_cli_validate_reports_every_file(specs: Path, tmp_path: Path) -> None:
    result = _cli("validate", "--json", str(specs), state=tmp_path / "state.db")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    report = json.loads(result.stdout)
    found = [(Path(e["file"]).name, e["line"], e["rule"]) for e in report["errors"]]
    assert found == [
        ("a_date.yaml", 4, "F1"),
        ("b_key.yaml", 2, "F1"),
        ("c_huge.json", 1, "F1"),
        ("d_typo.yaml", 2, "S2"),
    ]
    assert "e" in report["endpoints"]


def test_cli_plan_reports_every_file(specs: Path, tmp_path: Path) -> None:
    result = _cli("plan", str(specs), state=tmp_path / "state.db")
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "internal error" not in output
    for name in ("a_date.yaml:4", "b_key.yaml:2", "c_huge.json:1", "d_typo.yaml:2"):
        assert name in output
