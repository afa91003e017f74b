"""Names the rules accept can be applied (N2, N3): the longest valid endpoint and entity names
with the longest `*_plaintext` field apply through the CLI and REST; one character more is
refused by `engine validate` with the rule id."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine, run_cli, write_specs
from serving_harness import ServerProcess

from engine.access.tokens import create_token
from engine.secrets.managed import MANAGED_SCOPE, delete_unused_managed_secrets, managed_key
from engine.secrets.store import NAME_PATTERN, secret_store_for_state
from schemas import RuleOptions

MAX = RuleOptions().max_name_length
MAX_ENTITY = RuleOptions().max_entity_name_length
LONGEST = "e" * (MAX - 4) + "-_09"
LONGEST_ENTITY = "n" * MAX_ENTITY


def _azure(name: str, entity: str, secret: str = "entra-secret-value") -> dict[str, Any]:
    """Azure OpenAI with Entra ID: `microsoft_entra_client_secret_plaintext` is the longest
    plaintext field name of the spec."""
    config = {
        "openai_api_type": "azuread",
        "openai_api_base": "https://example.openai.azure.com",
        "openai_api_version": "2024-02-01",
        "openai_deployment_name": "gpt4",
        "microsoft_entra_client_id": "client",
        "microsoft_entra_tenant_id": "tenant",
        "microsoft_entra_client_secret_plaintext": secret,
    }
    model = {"name": "gpt-4", "provider": "openai", "task": "llm/v1/chat", "openai_config": config}
    return {
        "name": name,
        "config": {"served_entities": [{"name": entity, "external_model": model}]},
    }


def _validate(tmp_path: Path, spec: dict[str, Any]) -> dict[str, Any]:
    specs = write_specs(tmp_path / "specs", [spec])
    result = run_cli("validate", "--json", str(specs))
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def test_one_char_over_is_refused_by_validate(tmp_path: Path) -> None:
    report = _validate(tmp_path, _azure(LONGEST + "x", "gpt"))
    assert report["valid"] is False
    assert [(e["rule"], e["path"]) for e in report["errors"]] == [("N2", "name")]
    assert f"at most {MAX}" in report["errors"][0]["message"]
    report = _validate(tmp_path, _azure("ep", LONGEST_ENTITY + "x"))
    assert [(e["rule"], e["path"]) for e in report["errors"]] == [
        ("N3", "config.served_entities[0].name")
    ]


def test_longest_names_apply_through_the_cli(tmp_path: Path) -> None:
    env = {"ENGINE_STATE": str(tmp_path / "state.db")}
    spec = _azure(LONGEST, LONGEST_ENTITY)
    assert _validate(tmp_path, spec)["valid"] is True
    specs = write_specs(tmp_path / "specs", [spec])
    applied = run_cli("apply", str(specs), "--auto-approve", env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    again = run_cli("plan", str(specs), "--detailed-exitcode", env=env)
    assert again.returncode == 0, again.stdout + again.stderr

    # A new value: a new managed key; the old one goes once nothing uses it.
    write_specs(specs, [_azure(LONGEST, LONGEST_ENTITY, secret="rotated-value")])
    assert run_cli("apply", str(specs), "--auto-approve", env=env).returncode == 0
    secrets = secret_store_for_state(tmp_path / "state.db")
    try:
        keys = [s.key for s in secrets.list_secrets(MANAGED_SCOPE)]
        assert len(keys) == 1 and keys[0].startswith(LONGEST + ".")
        assert secrets.get_secret(MANAGED_SCOPE, keys[0]) == "rotated-value"
    finally:
        secrets.close()


def test_longest_names_apply_through_rest(tmp_path: Path) -> None:
    engine = Engine(tmp_path / "state.db")
    _, admin = create_token(engine.store, "admin@example.com", admin=True)
    engine.close()
    with ServerProcess(tmp_path / "state.db") as server:
        client = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {admin}"}, timeout=30
        )
        over = client.post("/api/2.0/serving-endpoints", json=_azure(LONGEST + "x", "gpt"))
        assert over.status_code == 400 and "[N2]" in over.json()["message"]
        created = client.post("/api/2.0/serving-endpoints", json=_azure(LONGEST, LONGEST_ENTITY))
        assert created.status_code == 200, created.text
        deadline = time.monotonic() + 120
        while True:
            endpoint = client.get(f"/api/2.0/serving-endpoints/{LONGEST}")
            assert endpoint.status_code == 200, endpoint.text
            state = endpoint.json()["state"]
            if state["config_update"] != "IN_PROGRESS":
                break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert state == {"ready": "READY", "config_update": "NOT_UPDATING"}
        (entity,) = endpoint.json()["config"]["served_entities"]
        assert entity["name"] == LONGEST_ENTITY
        assert entity["state"]["deployment"] == "DEPLOYMENT_READY"
        client.close()


@pytest.mark.parametrize(
    ("endpoint", "entity"),
    [
        ("ep", "gpt"),
        (LONGEST, LONGEST_ENTITY),
        ("e" * 500, "n" * 500),  # a limit raised in RuleOptions
        ("ep", "accounts/fireworks/models/llama"),  # a default name from a model name
    ],
)
def test_managed_keys_are_valid_for_any_names(endpoint: str, entity: str) -> None:
    key = managed_key(endpoint, entity, "microsoft_entra_client_secret_plaintext", "0123456789ab")
    assert NAME_PATTERN.fullmatch(key)
    assert key != managed_key(endpoint, entity + "2", "x", "0123456789ab")


def test_unused_hashed_keys_are_deleted_for_their_endpoint_only(tmp_path: Path) -> None:
    store = secret_store_for_state(tmp_path / "state.db")
    store.create_scope(MANAGED_SCOPE)
    long_name, other = "e" * 200, "e" * 201
    mine = managed_key(long_name, "a", "token_plaintext", "0123456789ab")
    theirs = managed_key(other, "a", "token_plaintext", "0123456789ab")
    short = managed_key("e", "a", "token_plaintext", "0123456789ab")
    for key in (mine, theirs, short):
        store.put_secret(MANAGED_SCOPE, key, "v")
    delete_unused_managed_secrets(store, long_name, in_use=set())
    assert sorted(s.key for s in store.list_secrets(MANAGED_SCOPE)) == sorted([theirs, short])
    store.close()
