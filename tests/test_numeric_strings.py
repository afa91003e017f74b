"""Integer fields accept proto-JSON's decimal strings (seed 003 sends `"traffic_percentage":
"90"`), in JSON, YAML and REST bodies; other strings are still refused; the state holds ints."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import ROOT, Engine, run_cli
from mock_http import MockUpstream
from serving_harness import ServerProcess, openai_entity, openai_upstream

from engine.access.tokens import create_token
from engine.catalog.models import ModelCatalog
from engine.specs.loader import load_specs, load_text
from engine.state import SqliteStateStore
from schemas import format_path, validate_endpoint

# Seed 003 (/work/shared/seeds/003_*), its first REST body verbatim but for the comma the
# page leaves out after `"name":"multi-model"`.
SEED_CREATE = """\
{
   "name":"multi-model",
   "config":
   {
      "served_entities":
      [
         {
            "name":"current",
            "entity_name":"catalog.schema.model-A",
            "entity_version":"1",
            "workload_size":"Small",
            "scale_to_zero_enabled":true
         },
         {
            "name":"challenger",
            "entity_name":"catalog.schema.model-B",
            "entity_version":"1",
            "workload_size":"Small",
            "scale_to_zero_enabled":true
         }
      ],
      "traffic_config":
      {
         "routes":
         [
            {
               "served_model_name":"current",
               "traffic_percentage":"90"
            },
            {
               "served_model_name":"challenger",
               "traffic_percentage":"10"
            }
         ]
      }
   }
}
"""
# Seed 003's `PUT /api/2.0/serving-endpoints/{name}/config` body, verbatim.
SEED_UPDATE = """\
{
   "served_entities":
   [
      {
         "name":"current",
         "entity_name":"catalog.schema.model-A",
         "entity_version":"1",
         "workload_size":"Small",
         "scale_to_zero_enabled":true
      },
      {
         "name":"challenger",
         "entity_name":"catalog.schema.model-B",
         "entity_version":"1",
         "workload_size":"Small",
         "scale_to_zero_enabled":true
      }
   ],
   "traffic_config":
   {
      "routes":
      [
         {
            "served_model_name":"current",
            "traffic_percentage":"50"
         },
         {
            "served_model_name":"challenger",
            "traffic_percentage":"50"
         }
      ]
   }
}
"""


def _base() -> dict[str, Any]:
    entity = {
        "name": "pt",
        "entity_name": "system.ai.llama",
        "entity_version": "1",
        "min_provisioned_throughput": 0,
        "max_provisioned_throughput": 980,
    }
    custom = {
        "name": "small",
        "entity_name": "main.default.m",
        "entity_version": "1",
        "scale_to_zero_enabled": False,
        "min_provisioned_concurrency": 4,
        "max_provisioned_concurrency": 8,
    }
    units = {"name": "units", "entity_name": "system.ai.other", "entity_version": "2"}
    units["provisioned_model_units"] = 50
    routes = [("pt", 50), ("small", 25), ("units", 25)]
    return {
        "name": "ints",
        "config": {
            "served_entities": [entity, custom, units],
            "traffic_config": {
                "routes": [{"served_entity_name": n, "traffic_percentage": p} for n, p in routes]
            },
        },
        "rate_limits": [{"calls": 100, "renewal_period": "minute"}],
        "ai_gateway": {
            "rate_limits": [
                {"calls": 10, "tokens": 1000, "renewal_period": "minute", "key": "user"}
            ]
        },
    }


# Every integer field of the spec, and the rule its errors carry.
INT_FIELDS = {
    "config.served_entities.0.min_provisioned_throughput": "E13",
    "config.served_entities.0.max_provisioned_throughput": "E13",
    "config.served_entities.1.min_provisioned_concurrency": "S1",
    "config.served_entities.1.max_provisioned_concurrency": "S1",
    "config.served_entities.2.provisioned_model_units": "S1",
    "config.traffic_config.routes.0.traffic_percentage": "T1",
    "rate_limits.0.calls": "R4",
    "ai_gateway.rate_limits.0.calls": "R4",
    "ai_gateway.rate_limits.0.tokens": "R4",
}


def _at(doc: Any, dotted: str) -> tuple[Any, str | int]:
    *parents, last = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    for part in parents:
        doc = doc[part]
    return doc, last


def _value(spec: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        spec = spec[int(part)] if part.isdigit() else getattr(spec, part)
    return spec


def test_the_base_document_is_valid() -> None:
    spec, diagnostics = validate_endpoint(_base())
    assert spec is not None and not [d for d in diagnostics if d.is_error], diagnostics


@pytest.mark.parametrize("field", INT_FIELDS)
def test_a_decimal_string_is_the_integer(field: str) -> None:
    doc = _base()
    parent, key = _at(doc, field)
    number = parent[key]
    parent[key] = str(number)
    spec, diagnostics = validate_endpoint(doc)
    assert spec is not None and not [d for d in diagnostics if d.is_error], diagnostics
    value = _value(spec, field)
    assert value == number and type(value) is int


@pytest.mark.parametrize("text", ["ninety", "9.5", "", " 9", "9 ", "0x10", "1e2", "+5", "٣"])
@pytest.mark.parametrize("field", INT_FIELDS)
def test_other_strings_are_still_refused(field: str, text: str) -> None:
    doc = _base()
    parent, key = _at(doc, field)
    parent[key] = text
    spec, diagnostics = validate_endpoint(doc)
    assert spec is None
    (diag,) = diagnostics
    assert diag.rule == INT_FIELDS[field]
    assert format_path(diag.path) == format_path(tuple(_at_path(field)))
    assert "integer" in diag.message


def _at_path(dotted: str) -> list[str | int]:
    return [int(p) if p.isdigit() else p for p in dotted.split(".")]


def test_yaml_quoted_numbers() -> None:
    text = """\
name: quoted
config:
  served_entities:
    - {name: a, entity_name: c.s.a, entity_version: "1", workload_size: Small,
       scale_to_zero_enabled: true}
    - {name: b, entity_name: c.s.b, entity_version: "1", workload_size: Small,
       scale_to_zero_enabled: true}
  traffic_config:
    routes:
      - {served_entity_name: a, traffic_percentage: "70"}
      - {served_entity_name: b, traffic_percentage: '30'}
rate_limits: [{calls: "5", renewal_period: minute}]
"""
    result = load_text(text)
    assert result.valid, [d.render() for d in result.diagnostics]
    spec = result.endpoints[0].spec
    assert [r.traffic_percentage for r in spec.config.traffic_config.routes] == [70, 30]
    assert spec.rate_limits[0].calls == 5


def _register_seed_models(state: Path) -> None:
    folder = state.parent / "model"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "test"}')
    store = SqliteStateStore(state)
    try:
        for model in ("catalog.schema.model-A", "catalog.schema.model-B"):
            ModelCatalog(store).register(model, "1", folder, "llm/v1/chat")
    finally:
        store.close()


def _seed_env(tmp_path: Path) -> dict[str, str]:
    state = tmp_path / "state.db"
    _register_seed_models(state)
    return {
        "ENGINE_STATE": str(state),
        "ENGINE_EXECUTOR_PLUGINS": "executor_fixture:register",
        "TEST_EXECUTOR_DIR": str(tmp_path / "run"),
    }


def test_seed_body_applies_and_numbers_plan_no_change(tmp_path: Path) -> None:
    env = _seed_env(tmp_path)
    seed = tmp_path / "seed" / "multi-model.json"
    seed.parent.mkdir()
    seed.write_text(SEED_CREATE)
    assert load_specs([seed]).valid
    applied = run_cli("apply", str(seed.parent), "--auto-approve", env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    store = SqliteStateStore(tmp_path / "state.db")
    stored = store.get_endpoint("multi-model").spec
    store.close()
    assert _split(stored) == {"current": 90, "challenger": 10}

    # The same document with numbers: the canonical forms agree, so nothing to do.
    as_numbers = json.loads(SEED_CREATE)
    for route in as_numbers["config"]["traffic_config"]["routes"]:
        route["traffic_percentage"] = int(route["traffic_percentage"])
    seed.write_text(json.dumps(as_numbers))
    again = run_cli("plan", str(seed.parent), "--detailed-exitcode", env=env)
    assert again.returncode == 0 and again.stdout.startswith("No changes."), again.stdout


def test_numeric_strings_through_rest(tmp_path: Path) -> None:
    """Seed 003's REST bodies with their `"traffic_percentage": "90"`, on external models (a
    host serves registered models with real runners, which a unit test does not start)."""
    engine = Engine(tmp_path / "state.db")
    _, admin = create_token(engine.store, "admin@example.com", admin=True)
    engine.secrets.create_scope("scope")
    engine.secrets.put_secret("scope", "openai", "sk-test")
    engine.close()
    with MockUpstream(openai_upstream) as upstream, ServerProcess(tmp_path / "state.db") as server:
        base = upstream.url + "/v1"
        entities = [openai_entity("current", "gpt-4", base), openai_entity("challenger", "m", base)]
        create = json.loads(SEED_CREATE)
        create["config"]["served_entities"] = entities
        update = json.loads(SEED_UPDATE)
        update["served_entities"] = entities
        client = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {admin}"}, timeout=30
        )
        created = client.post("/api/2.0/serving-endpoints", json=create)
        assert created.status_code == 200, created.text
        endpoint = _settled(client, "multi-model")
        assert _split(endpoint) == {"current": 90, "challenger": 10}
        updated = client.put("/api/2.0/serving-endpoints/multi-model/config", json=update)
        assert updated.status_code == 200, updated.text
        endpoint = _settled(client, "multi-model")
        assert endpoint["config"]["config_version"] == 2
        assert _split(endpoint) == {"current": 50, "challenger": 50}
        limits = client.put(
            "/api/2.0/serving-endpoints/multi-model/rate-limits",
            json={"rate_limits": [{"calls": "20", "renewal_period": "minute"}]},
        )
        assert limits.json()["rate_limits"][0]["calls"] == 20
        # The same config with numbers is no change: no new config version.
        for route in update["traffic_config"]["routes"]:
            route["traffic_percentage"] = 50
        assert client.put("/api/2.0/serving-endpoints/multi-model/config", json=update).is_success
        assert _settled(client, "multi-model")["config"]["config_version"] == 2
        refused = client.put(
            "/api/2.0/serving-endpoints/multi-model/rate-limits",
            json={"rate_limits": [{"calls": "twenty", "renewal_period": "minute"}]},
        )
        assert refused.status_code == 400 and "[R4]" in refused.json()["message"]
        client.close()


def _settled(client: httpx.Client, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        endpoint = client.get(f"/api/2.0/serving-endpoints/{name}").json()
        if endpoint["state"]["config_update"] != "IN_PROGRESS":
            assert endpoint["state"]["config_update"] == "NOT_UPDATING", json.dumps(endpoint)
            return endpoint
        assert time.monotonic() < deadline, endpoint
        time.sleep(0.1)


def _split(endpoint: dict[str, Any]) -> dict[str, int]:
    routes = endpoint["config"]["traffic_config"]["routes"]
    split = {
        r.get("served_model_name") or r["served_entity_name"]: r["traffic_percentage"]
        for r in routes
    }
    assert all(type(v) is int for v in split.values())
    return split


def test_json_schema_accepts_the_seed_body() -> None:
    import jsonschema

    schema = json.loads((ROOT / "schemas" / "endpoint.schema.json").read_text())
    jsonschema.validate(json.loads(SEED_CREATE), schema)
    bad = json.loads(SEED_CREATE)
    bad["config"]["traffic_config"]["routes"][0]["traffic_percentage"] = "ninety"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
