"""Third-party adapters by entry point: a plugin package is validated, applied and served.

The plugin is a real installed-looking package: a module plus a `*.dist-info` folder with an
`entry_points.txt` in group `serving_engine.adapters`, on the PYTHONPATH of the engine processes
(never of this test process, whose `schemas` was imported without it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from engine_harness import ROOT, TESTS, Engine, run_cli, write_specs
from serving_harness import ServerProcess, endpoint

from engine.access.tokens import create_token

PLUGIN = '''
from providers.adapters import ProviderAdapter
from providers.adapters._base import chat_response


class AcmeAdapter(ProviderAdapter):
    """Answers from its config: no upstream, so the test shows the engine's part only."""

    PROVIDER = "acme-llm"

    def __init__(self, model, client):
        super().__init__(model, client)
        config = model.get("acme_llm_config") or {}
        self.greeting = config["greeting"]
        # Never echo the key; say only whether the engine resolved it before building us.
        self.key_ok = config.get("api_key_plaintext") == "sk-acme-plugin-key"

    async def _chat(self, body):
        text = f"{self.greeting}, {body['messages'][-1]['content']} (key ok: {self.key_ok})"
        return chat_response(self.name, [(text, "stop")], 3, 5)
'''

ENTRY_POINTS = """
[serving_engine.adapters]
acme-llm = acme_plugin:AcmeAdapter
"""


def _acme(**config: object) -> dict[str, object]:
    return {
        "name": "acme",
        "external_model": {
            "name": "acme-1",
            "provider": "acme-llm",
            "task": "llm/v1/chat",
            "acme_llm_config": {"greeting": "hello", **config},
        },
    }


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    (site / "acme_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "acme_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: acme-plugin\nVersion: 1.0\n"
    )
    (site / "acme_plugin-1.0.dist-info" / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "acme_plugin.py").write_text(textwrap.dedent(PLUGIN))
    return {"PYTHONPATH": os.pathsep.join([str(site), str(TESTS), str(ROOT)])}


def test_validate_knows_a_plugin_provider_only_when_installed(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    specs = write_specs(tmp_path / "specs", [endpoint("acme", [_acme()])])
    with_plugin = run_cli("validate", str(specs), env=plugin_env)
    assert with_plugin.returncode == 0, with_plugin.stdout + with_plugin.stderr
    without = run_cli("validate", str(specs))
    assert without.returncode == 1
    assert "acme-llm" in without.stdout + without.stderr and "[X1]" in without.stdout

    # Its block is checked like any other: a misspelt key is an unknown field.
    typo = _acme()
    typo["external_model"]["acme_llm_confg"] = typo["external_model"].pop("acme_llm_config")
    write_specs(tmp_path / "specs", [endpoint("acme", [typo])])
    result = run_cli("validate", str(specs), env=plugin_env)
    assert result.returncode == 1
    assert "did you mean `acme_llm_config`" in result.stdout and "[S2]" in result.stdout


def test_plugin_adapter_is_applied_and_answers_through_the_gateway(
    tmp_path: Path, plugin_env: dict[str, str]
) -> None:
    state = tmp_path / "state" / "state.db"
    specs = write_specs(
        tmp_path / "specs",
        [endpoint("acme", [_acme(api_key_plaintext="sk-acme-plugin-key")])],
    )
    env = {**plugin_env, "ENGINE_STATE": str(state)}
    applied = run_cli("apply", str(specs), "--auto-approve", env=env)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    engine = Engine(state)
    try:
        # The plaintext moved into the (encrypted) secret store: the state holds a reference.
        for path in state.parent.iterdir():
            assert b"sk-acme-plugin-key" not in path.read_bytes(), path
        _, token = create_token(engine.store, "alice@example.com")
        with ServerProcess(state, env=plugin_env) as server:
            server.wait_serial(engine.store.serial)
            reply = httpx.post(
                f"{server.url}/serving-endpoints/acme/invocations",
                headers={"Authorization": f"Bearer {token}"},
                json={"messages": [{"role": "user", "content": "world"}]},
                timeout=30,
            )
        assert reply.status_code == 200, reply.text
        text = reply.json()["choices"][0]["message"]["content"]
        assert text == "hello, world (key ok: True)"
    finally:
        engine.close()


def test_every_provider_in_the_table_has_an_adapter() -> None:
    from providers.adapters import registered_providers
    from schemas import PROVIDERS, ExternalModelProvider

    assert registered_providers() == sorted(PROVIDERS)
    assert {p.name for p in PROVIDERS.values() if p.builtin} == set(ExternalModelProvider)


def test_an_adapter_for_a_provider_outside_the_table_is_refused() -> None:
    from providers.adapters import ProviderAdapter, register_adapter

    class Stray(ProviderAdapter):
        PROVIDER = "not-in-the-table"

    with pytest.raises(ValueError, match="not in the provider table"):
        register_adapter(Stray)


def test_a_broken_plugin_leaves_the_others_serving(tmp_path: Path) -> None:
    site = tmp_path / "site"
    info = site / "broken-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[serving_engine.adapters]\n"
        "acme-llm = broken_plugin:Missing\n"
        "openai = broken_plugin:Missing\n"
    )
    (site / "broken_plugin.py").write_text("VALUE = 1\n")
    script = textwrap.dedent(
        """
        import httpx
        from providers.adapters import ProviderError, adapter_for
        model = {"provider": "openai", "name": "m", "task": "llm/v1/chat",
                 "openai_config": {"openai_api_key": "k"}}
        print(type(adapter_for(model, httpx.AsyncClient())).__name__)
        try:
            adapter_for({**model, "provider": "acme-llm"}, httpx.AsyncClient())
        except ProviderError as exc:
            print(exc.message)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    built, refused = result.stdout.splitlines()
    # The plugin may not replace a platform provider; the built-in adapter still serves it.
    assert built == "OpenAIAdapter"
    assert refused.startswith("no adapter for provider 'acme-llm': its plugin failed to load")
    assert "Missing" in refused
    assert "adapter plugin openai" in result.stderr
