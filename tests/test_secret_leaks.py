"""A plaintext secret never reaches plan output, plan files, state (WAL included) or logs."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from conftest import openai_chat
from engine_harness import run_cli, write_specs

OLD = "sk-old-4f9d2c8e1a7b3f60-plaintext"
NEW = "sk-new-8b1e6d3a9c2f7e45-plaintext"


def _spec(value: str) -> dict:
    spec = openai_chat("secretive")
    spec["config"]["served_entities"][0]["external_model"]["openai_config"] = {
        "openai_api_key_plaintext": value
    }
    return spec


def _forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), raw.hex().encode(), value[4:20].encode()]


def _assert_absent(blob: bytes, where: str) -> None:
    for secret in (OLD, NEW):
        for form in _forms(secret):
            assert form not in blob, f"{secret!r} leaked into {where}"


def test_secret_only_change_never_leaks(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    env = {"ENGINE_STATE": str(state_dir / "state.db")}
    specs = write_specs(tmp_path / "specs", [_spec(OLD)])
    outputs: list[str] = []

    first = run_cli("apply", str(specs), "--auto-approve", env=env)
    assert first.returncode == 0, first.stderr
    outputs += [first.stdout, first.stderr]

    write_specs(specs, [_spec(NEW)])
    text = run_cli("plan", str(specs), env=env)
    as_json = run_cli("plan", str(specs), "--json", env=env)
    planfile = tmp_path / "secret.plan"
    saved = run_cli("plan", str(specs), "-out", str(planfile), env=env)
    outputs += [text.stdout, text.stderr, as_json.stdout, as_json.stderr, saved.stdout]

    # The plan says a secret changed, and that is all it says.
    assert "(sensitive value changed)" in text.stdout
    (change,) = json.loads(as_json.stdout)["changes"]
    (field,) = change["fields"]
    assert field["sensitive"] is True and field["after"] == "(sensitive value changed)"
    assert change["class"] == "warm" and change["config_version"] == {"from": 1, "to": 2}

    applied = run_cli("apply", str(planfile), env=env)
    assert applied.returncode == 0, applied.stderr
    outputs += [applied.stdout, applied.stderr]
    shown = run_cli("state", "show", "secretive", env=env)
    listed = run_cli("state", "list", "--json", env=env)
    outputs += [shown.stdout, listed.stdout, run_cli("show", str(planfile), env=env).stdout]

    for i, output in enumerate(outputs):
        _assert_absent(output.encode(), f"command output #{i}")
    _assert_absent(planfile.read_bytes(), "the plan file")
    state_files = [p for p in state_dir.iterdir() if p.name.startswith("state.db")]
    assert any(p.name == "state.db-wal" for p in state_files) or len(state_files) >= 1
    for path in state_files:
        _assert_absent(path.read_bytes(), path.name)

    # The secret store holds the value, encrypted; the engine can still read it.
    for path in state_dir.glob("secrets.db*"):
        _assert_absent(path.read_bytes(), path.name)
    from engine.secrets.store import secret_store_for_state

    store = secret_store_for_state(state_dir / "state.db")
    values = [
        store.get_secret("engine-managed", s.key) for s in store.list_secrets("engine-managed")
    ]
    assert values == [NEW]  # the old value was removed once nothing used it
    store.close()
