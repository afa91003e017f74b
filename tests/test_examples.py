"""Every example is a valid spec; examples/updates holds later versions of some of them."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from engine.specs.loader import load_specs

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FILES = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in {".yaml", ".yml", ".json"})


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(EXAMPLES)) for p in FILES])
def test_example_validates_strictly(path: Path) -> None:
    result = load_specs([path])
    assert result.valid and not result.warnings, [d.render() for d in result.diagnostics]
    assert result.endpoints


def test_examples_directory_validates_together() -> None:
    result = load_specs([EXAMPLES])
    assert result.valid, [d.render() for d in result.diagnostics]
    assert len(result.endpoints) >= 11


def test_updates_change_existing_examples() -> None:
    originals = set(load_specs([EXAMPLES]).names)
    updates = load_specs([EXAMPLES / "updates"]).names
    assert updates and set(updates) <= originals


def test_seed_examples_are_present() -> None:
    specs = {e.spec.name: e.spec for e in load_specs([EXAMPLES]).endpoints}
    providers = {
        ent.external_model.provider.value
        for s in specs.values()
        for ent in s.config.entities()
        if ent.external_model
    }
    assert {"openai", "anthropic"} <= providers
    splits = sorted(
        tuple(sorted(r.traffic_percentage for r in s.config.traffic_config.routes))
        for s in specs.values()
        if s.config.traffic_config
    )
    assert (10, 90) in splits and (40, 60) in splits and (50, 50) in splits


def test_json_schema_accepts_every_example() -> None:
    schema = yaml.safe_load((EXAMPLES.parent / "schemas" / "endpoint.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for loaded in load_specs([EXAMPLES]).endpoints:
        body = loaded.document.value
        for part in loaded.prefix:
            body = body[part]
        errors = [e.message for e in validator.iter_errors(body)]
        assert errors == [], (loaded.file, errors)
