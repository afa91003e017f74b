"""The Serving UI in a real headless Chromium (Playwright) against a real `engine serve`.

External models answer from a local OpenAI-speaking mock. In the cancel test the new entity is
started by the test executor plugin (tests/executor_fixture.py), which holds its readiness
check so that the update stays in progress until "Cancel update" stops it. Every page visited
is saved as a screenshot under test-artifacts/ui/ (and checked for the secret's value, which
must never be on a page). One server and one browser for the file: it is one xdist group
(tests/parallel_runs.py makes every light file one).
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import run_cli
from mock_http import MockResponse, MockUpstream, RecordedRequest, sse
from serving_harness import ServerProcess, endpoint, openai_upstream

from engine.access.tokens import create_token
from engine.catalog.models import ModelCatalog
from engine.secrets.store import secret_store_for_state
from engine.state import open_state

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
expect.set_options(timeout=90_000)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("needs the chromium package (apt-get install chromium)", allow_module_level=True)

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "ui"
SECRET = "sk-ui-secret-value-7d41c0"
# A catalog model calibrated on this host (`engine models calibrate`): seed 001's
# provisioned-throughput controls show for it, in steps of its chunk.
PT_MODEL, PT_CHUNK = "main.default.tiny", 980
TIMEOUT_MS = 90_000


# The "gpt-slow" model streams its first words, then waits for the test to release the rest:
# the page must show what arrived before the answer ends.
RELEASE = threading.Event()


def _chunk(model: str, **choice: Any) -> dict[str, Any]:
    return {"id": "s", "object": "chat.completion.chunk", "model": model, "choices": [choice]}


def _slow_stream(model: str) -> Any:
    yield from sse(
        [(None, _chunk(model, index=0, delta={"role": "assistant", "content": "The first half"}))]
    )
    RELEASE.wait(TIMEOUT_MS / 1000)
    usage = {"prompt_tokens": 4, "completion_tokens": 9, "total_tokens": 13}
    yield from sse(
        [
            (
                None,
                _chunk(model, index=0, delta={"content": " and the rest."}, finish_reason="stop"),
            ),
            (
                None,
                {
                    "id": "s",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [],
                    "usage": usage,
                },
            ),
            (None, "[DONE]"),
        ]
    )


def _endless_stream(model: str) -> Any:
    """A word every 0.2 s until the reader goes away (the mock then counts the stream as
    abandoned) or a minute passes: an answer that only a cancel can stop in time."""
    deadline = time.monotonic() + 60
    yield from sse([(None, _chunk(model, index=0, delta={"role": "assistant", "content": "On"}))])
    while time.monotonic() < deadline:
        time.sleep(0.2)
        yield from sse([(None, _chunk(model, index=0, delta={"content": " and on"}))])
    yield from sse([(None, "[DONE]")])


def upstream_handler(request: RecordedRequest) -> MockResponse:
    body = request.json() if request.body else {}
    if body.get("model") == "gpt-slow" and body.get("stream"):
        return MockResponse(chunks=_slow_stream("gpt-slow"))
    if body.get("model") == "gpt-endless" and body.get("stream"):
        return MockResponse(chunks=_endless_stream("gpt-endless"))
    return openai_upstream(request)


def _external(
    name: str, model: str, base: str, key: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "name": name,
        "external_model": {
            "name": model,
            "provider": "openai",
            "task": "llm/v1/chat",
            "openai_config": {
                "openai_api_base": base,
                **(key or {"openai_api_key": "{{secrets/team/openai}}"}),
            },
        },
    }


class Ui:
    """The server, its users' tokens, and an API client per user."""

    def __init__(
        self, server: ServerProcess, upstream: MockUpstream, tokens: dict[str, str]
    ) -> None:
        self.server, self.upstream, self.tokens = server, upstream, tokens
        self.url = server.url
        self.executor_dir = Path()

    def api(self, who: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {self.tokens[who]}"}, timeout=60
        )

    def create_external(self, name: str, entity: str, model: str) -> None:
        """An endpoint of one external model on the mock upstream, created by admin, ready."""
        with self.api("admin") as admin:
            spec = endpoint(name, [_external(entity, model, self.upstream.url + "/v1")])
            assert admin.post("/api/2.0/serving-endpoints", json=spec).status_code == 200
        self.wait_state(name)

    def wait_state(
        self, name: str, done: tuple[str, ...] = ("NOT_UPDATING",), timeout: float = 120
    ) -> dict[str, Any]:
        with self.api("admin") as client:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                body = client.get(f"/api/2.0/serving-endpoints/{name}").json()
                if body["state"]["config_update"] in done:
                    return body
                time.sleep(0.2)
        raise TimeoutError(name)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("ui")
    state = root / "state.db"
    store = open_state(state)
    tokens = {
        "admin": create_token(store, "admin@example.com", admin=True)[1],
        "alice": create_token(store, "alice@example.com", groups=["team-a"])[1],
        "carol": create_token(store, "carol@example.com", groups=["viewers"])[1],
        "bob": create_token(store, "bob@example.com", groups=["team-b"])[1],
    }
    folder = root / "tiny-model"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}'
    )
    catalog = ModelCatalog(store)
    catalog.register(PT_MODEL, "1", folder, "llm/v1/chat")
    catalog.set_throughput_chunk_size(PT_MODEL, "1", PT_CHUNK)
    store.close()
    secrets = secret_store_for_state(state)
    secrets.create_scope("team")
    secrets.put_secret("team", "openai", SECRET)
    secrets.close()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    executor_dir = root / "executor"
    env = {
        "ENGINE_EXECUTOR_PLUGINS": "executor_fixture:register",
        "TEST_EXECUTOR_DIR": str(executor_dir),
        "TEST_EXECUTOR_EXTERNAL": "1",
        "TEST_EXECUTOR_HOLD": "slow",
    }
    with (
        MockUpstream(upstream_handler) as upstream,
        ServerProcess(state, log_dir=root, env=env) as server,
    ):
        u = Ui(server, upstream, tokens)
        u.executor_dir = executor_dir  # type: ignore[attr-defined]
        base = upstream.url + "/v1"
        with u.api("admin") as admin:
            split = endpoint(
                "split", [_external("a", "gpt-4", base), _external("b", "gpt-4o", base)], [90, 10]
            )
            assert admin.post("/api/2.0/serving-endpoints", json=split).status_code == 200
            team = endpoint("team-a-ep", [_external("m", "gpt-4", base)])
            assert admin.post("/api/2.0/serving-endpoints", json=team).status_code == 200
            ep_id = admin.get("/api/2.0/serving-endpoints/team-a-ep").json()["id"]
            acl = {
                "access_control_list": [
                    {"group_name": "team-a", "permission_level": "CAN_MANAGE"},
                    {"user_name": "carol@example.com", "permission_level": "CAN_VIEW"},
                ]
            }
            assert (
                admin.put(f"/api/2.0/permissions/serving-endpoints/{ep_id}", json=acl).status_code
                == 200
            )
        u.wait_state("split")
        u.wait_state("team-a-ep")
        yield u


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def _page(browser: Any, *, width: int = 1280, height: int = 900) -> Any:
    context = browser.new_context(viewport={"width": width, "height": height})
    context.set_default_timeout(TIMEOUT_MS)
    return context.new_page()


def shot(page: Any, name: str) -> None:
    """Screenshot of the page as it is; no page ever shows the secret's value."""
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    assert SECRET not in page.content()


def sign_in(page: Any, ui: Ui, who: str, *, start: str = "/ml/endpoints") -> None:
    page.goto(ui.url + start)
    page.fill("#token", ui.tokens[who])
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(start) + r"($|\?)"))


def test_sign_in_then_create_an_external_model_endpoint_through_a_previewed_plan(
    ui: Ui, browser: Any
) -> None:
    page = _page(browser)
    page.goto(ui.url + "/ml/endpoints")
    assert "/ml/signin" in page.url
    page.fill("#token", "dse_not-a-token")
    page.click("button[type=submit]")
    assert "Token: not a token of this server" in page.inner_text("main")
    shot(page, "01-signin-refused")
    sign_in(page, ui, "admin")
    cookie = next(c for c in page.context.cookies() if c["name"] == "engine_ui")
    assert (
        cookie["httpOnly"]
        and cookie["sameSite"] == "Strict"
        and ui.tokens["admin"] not in cookie["value"]
    )
    shot(page, "02-endpoint-list")

    page.click("text=Create serving endpoint")
    page.fill("input[name=name]", "ui-chat")
    page.fill("input[name=e0_name]", "gpt")
    page.fill("input[name=e0_model]", "gpt-4")
    page.fill("input[name=e0_base]", ui.upstream.url + "/v1")
    page.fill("input[name=e0_key]", SECRET)  # pasted the key itself: refused, never echoed
    page.fill("input[name=e0_traffic]", "all")
    page.click("#preview")
    errors = page.inner_text("#form-errors")
    assert "Served entity 1 › Traffic %" in errors and "must be a whole number" in errors
    assert "Served entity 1 › API key" in errors and "secret reference" in errors
    assert page.input_value("input[name=e0_key]") == ""  # not echoed back into the page
    shot(page, "03-create-form-errors")

    page.fill("input[name=e0_key]", "{{secrets/team/openai}}")
    page.fill("input[name=e0_traffic]", "100")
    page.click("#preview")
    plan = page.inner_text("pre.plan")
    assert "ui-chat will be created" in plan and "{{secrets/team/openai}}" in plan
    assert "Plan: 1 to create" in plan
    shot(page, "04-create-plan")
    page.click("#apply")
    page.wait_for_url(re.compile(r"/ml/endpoints/ui-chat\?notice=applied"))
    expect(page.locator("#state-word")).to_have_text("Ready")
    assert (
        "DEPLOYMENT_READY"
        in ui.wait_state("ui-chat")["config"]["served_entities"][0]["state"]["deployment"]
    )
    assert "openai / gpt-4" in page.inner_text("main")
    shot(page, "05-endpoint-ready")
    with ui.api("admin") as client:
        answer = client.post(
            "/serving-endpoints/ui-chat/invocations",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
    assert answer.json()["choices"][0]["message"]["content"] == "reply from gpt-4"


def test_provisioned_throughput_controls_of_a_calibrated_catalog_model(
    ui: Ui, browser: Any
) -> None:
    page = _page(browser)
    sign_in(page, ui, "admin", start="/ml/endpoints/new")
    assert page.locator("select[name=e0_pt_max]").count() == 0  # no model picked yet
    page.fill("input[name=name]", "pt-ui")
    page.fill("input[name=e0_name]", "tiny")
    page.select_option("select[name=e0_kind]", "catalog")
    page.fill("input[name=e0_entity]", PT_MODEL)
    page.fill("input[name=e0_version]", "1")
    page.locator("input[name=e0_version]").blur()  # its change re-renders the form (HTMX)
    up_to = page.locator("select[name=e0_pt_max]")
    expect(up_to).to_have_count(1)
    steps = up_to.locator("option").evaluate_all("os => os.map(o => Number(o.value))")
    assert steps == [PT_CHUNK * n for n in range(1, 11)]  # "Up to", in chunk steps
    assert page.locator("select[name=e0_workload]").count() == 0  # throughput replaces it
    minimum = page.locator("select[name=e0_pt_min]")
    assert not minimum.is_visible()  # behind "Change"
    assert "Minimum: 0 tokens/s" in page.inner_text("fieldset.entity >> nth=0")
    up_to.select_option(str(3 * PT_CHUNK))
    page.click("text=Change")
    minimum.select_option(str(PT_CHUNK))
    assert f"Minimum: {PT_CHUNK} tokens/s" in page.inner_text("fieldset.entity >> nth=0")
    page.fill("input[name=e0_traffic]", "100")
    shot(page, "03b-provisioned-throughput-form")
    page.click("#preview")
    plan = page.inner_text("pre.plan")
    assert "pt-ui will be created" in plan
    assert f"served_entities[tiny].max_provisioned_throughput = {3 * PT_CHUNK}" in plan, plan
    assert f"served_entities[tiny].min_provisioned_throughput = {PT_CHUNK}" in plan
    # The plan's form keeps the picks (and the controls).
    assert page.locator("select[name=e0_pt_max]").input_value() == str(3 * PT_CHUNK)
    assert page.locator("select[name=e0_pt_min]").input_value() == str(PT_CHUNK)
    shot(page, "03c-provisioned-throughput-plan")


def _split_counts(ui: Ui, n: int = 300) -> Counter[str]:
    counts: Counter[str] = Counter()
    with ui.api("admin") as client:
        for _ in range(n):
            body = client.post(
                "/serving-endpoints/split/invocations",
                json={"messages": [{"role": "user", "content": "x"}]},
            ).json()
            counts[body["choices"][0]["message"]["content"]] += 1
    return counts


def test_edit_a_90_10_split_to_50_50_and_queries_follow(ui: Ui, browser: Any) -> None:
    before = _split_counts(ui)
    # 300 draws at 10%: far below 30% unless the split is not applied at all.
    assert before["reply from gpt-4o"] < 0.3 * 300 < before["reply from gpt-4"]
    page = _page(browser)
    sign_in(page, ui, "admin", start="/ml/endpoints/split")
    assert [t.strip() for t in page.locator(".route-pct").all_inner_texts()] == ["90%", "10%"]
    shot(page, "06-split-90-10")
    page.click("#edit-config")
    page.fill("input[name=e0_traffic]", "50")
    page.fill("input[name=e1_traffic]", "50")
    page.click("#preview")
    plan = page.inner_text("pre.plan")
    assert "traffic_percentage: 90 -> 50" in plan and "traffic_percentage: 10 -> 50" in plan
    assert "(config_version 1 -> 2, hot)" in plan
    shot(page, "07-edit-plan")
    page.click("#apply")
    page.wait_for_url(re.compile(r"/ml/endpoints/split\?notice=applied"))
    ui.wait_state("split")
    page.reload()
    assert [t.strip() for t in page.locator(".route-pct").all_inner_texts()] == ["50%", "50%"]
    page.select_option("select[name=from]", "1")
    page.select_option("select[name=to]", "2")
    page.click("text=Compare")
    page.wait_for_selector("table.diff")
    diff = page.inner_text("table.diff")
    assert "config.traffic_config.routes[a].traffic_percentage" in diff and "90" in diff
    shot(page, "08-split-50-50-with-diff")
    after = _split_counts(ui)
    # 300 draws at 50%: outside 30-70% with probability below 1e-10.
    assert 0.3 * 300 < after["reply from gpt-4o"] < 0.7 * 300


def test_cancel_an_update_in_progress(ui: Ui, browser: Any) -> None:
    # The new entity "slow" is started by the test executor plugin, which holds its readiness
    # check (TEST_EXECUTOR_HOLD): the update stays IN_PROGRESS until it is canceled.
    ui.create_external("cancel-me", "gpt", "gpt-4")
    page = _page(browser)
    sign_in(page, ui, "admin", start="/ml/endpoints/cancel-me/edit")
    page.fill("input[name=e1_name]", "slow")
    page.fill("input[name=e1_model]", "gpt-4o")
    page.fill("input[name=e1_key]", "{{secrets/team/openai}}")
    page.fill("input[name=e1_base]", ui.upstream.url + "/v1")
    page.fill("input[name=e0_traffic]", "100")
    page.fill("input[name=e1_traffic]", "0")
    page.click("#preview")
    plan = page.inner_text("pre.plan")
    assert "config_version 1 -> 2" in plan
    page.click("#apply")
    page.wait_for_url(re.compile(r"/ml/endpoints/cancel-me\?notice=applied"))
    page.wait_for_selector("#cancel-update")
    assert "Pending config (version 2)" in page.inner_text("#status")
    shot(page, "09-update-in-progress")
    page.click("#cancel-update")
    page.wait_for_url(re.compile(r"notice=canceled"))
    expect(page.locator("#config-update")).to_have_text("UPDATE_CANCELED")
    assert "canceled; the previous config keeps serving" in page.inner_text("#update-message")
    expect(page.locator("#state-word")).to_have_text("Update canceled")
    shot(page, "10-update-canceled")
    body = ui.wait_state("cancel-me", ("UPDATE_CANCELED",))
    assert body["config"]["config_version"] == 1 and "pending_config" not in body
    assert [e["name"] for e in body["config"]["served_entities"]] == ["gpt"]
    with ui.api("admin") as client:
        answer = client.post(
            "/serving-endpoints/cancel-me/invocations",
            json={"messages": [{"role": "user", "content": "hi"}]},
        )
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "reply from gpt-4"
    store = open_state(ui.server.state)
    try:
        assert [e.name for e in store.entities("cancel-me")] == ["gpt"]  # "slow" was stopped
    finally:
        store.close()
    assert not list(ui.executor_dir.glob("*.json")) or all(
        "slow" not in p.read_text() for p in ui.executor_dir.glob("*.json")
    )


def test_playground_compares_two_endpoints_of_the_same_task(ui: Ui, browser: Any) -> None:
    page = _page(browser)
    sign_in(page, ui, "alice", start="/ml/playground")
    names = page.locator("input[name=endpoint]").evaluate_all("els => els.map(e => e.value)")
    assert "team-a-ep" in names and "split" in names  # `users` may query what admin created
    page.check("input[value=team-a-ep]")
    page.check("input[value=split]")
    page.fill("textarea[name=prompt]", "Say hello")
    page.fill("input[name=max_tokens]", "8")
    page.click("#send")
    answers = page.locator(".answer")
    expect(page.locator(".answer.done")).to_have_count(2)
    texts = answers.all_inner_texts()
    by_name = {t.split("\n")[0]: t for t in texts}  # side by side, in the list's order
    assert list(by_name) == ["split", "team-a-ep"]
    assert all("Hello!" in t for t in texts)  # the mock's streamed answer, chunk by chunk
    meta = r"\d+ ms · first token \d+ ms · 5 prompt \+ 3 completion tokens"
    assert all(re.search(meta, t) for t in texts), texts
    shot(page, "11-playground")
    sent = [r.json() for r in ui.upstream.requests if r.body and b"Say hello" in r.body]
    assert len(sent) == 2 and all(b["stream"] and b["max_tokens"] == 8 for b in sent)


def test_playground_without_script_answers_the_whole_form(ui: Ui, browser: Any) -> None:
    context = browser.new_context(java_script_enabled=False)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    sign_in(page, ui, "alice", start="/ml/playground")
    page.check("input[value=team-a-ep]")
    page.fill("textarea[name=prompt]", "Say hello")
    page.click("#send")
    page.wait_for_selector(".answer")
    text = page.inner_text(".answer")
    assert "reply from gpt-4" in text
    assert re.search(r"\d+ ms · \d+ prompt \+ \d+ completion tokens", text)


def test_playground_streams_each_answer_as_it_arrives(ui: Ui, browser: Any) -> None:
    ui.create_external("slow-chat", "s", "gpt-slow")
    RELEASE.clear()
    page = _page(browser)
    sign_in(page, ui, "alice", start="/ml/playground")
    try:
        page.check("input[value=slow-chat]")
        page.check("input[value=team-a-ep]")
        page.fill("textarea[name=prompt]", "Tell me a story")
        page.click("#send")
        slow = page.locator(".answer[data-endpoint=slow-chat]")
        # The first words are on the page while the upstream still holds the rest back.
        expect(slow.locator(".answer-text")).to_have_text("The first half")
        assert "streaming" in (slow.get_attribute("class") or "")
        assert "done" not in (slow.get_attribute("class") or "")
        expect(page.locator(".answer[data-endpoint=team-a-ep].done")).to_have_count(1)
        shot(page, "11b-playground-streaming")
    finally:
        RELEASE.set()
    expect(slow.locator(".answer-text")).to_have_text("The first half and the rest.")
    expect(slow.locator(".answer-meta")).to_contain_text("4 prompt + 9 completion tokens")
    assert "done" in (slow.get_attribute("class") or "")
    shot(page, "11c-playground-streamed")


def _wait_abandoned(ui: Ui, count: int, what: str) -> None:
    deadline = time.monotonic() + 30
    while ui.upstream.streams_abandoned < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ui.upstream.streams_abandoned >= count, what


def test_playground_stops_answers_nobody_reads(ui: Ui, browser: Any) -> None:
    ui.create_external("endless-chat", "e", "gpt-endless")
    page = _page(browser)
    sign_in(page, ui, "alice", start="/ml/playground")
    answer = page.locator(".answer[data-endpoint=endless-chat] .answer-text")
    page.check("input[value=endless-chat]")
    page.fill("textarea[name=prompt]", "Go on")
    before = ui.upstream.streams_abandoned
    page.click("#send")
    expect(answer).to_contain_text("On and on")
    # A second prompt replaces the answers: the first one's stream stops, upstream too.
    page.click("#send")
    _wait_abandoned(ui, before + 1, "the replaced answer still streams upstream")
    expect(answer).to_contain_text("On and on")
    # Leaving the page stops the one it was showing.
    page.goto(ui.url + "/ml/endpoints")
    _wait_abandoned(ui, before + 2, "the answer of a page left behind still streams upstream")
    page.close()


def test_playground_stream_refuses_view_only_forged_and_hidden(ui: Ui, browser: Any) -> None:
    form = {"endpoint": "team-a-ep", "prompt": "hi"}
    carol = _page(browser)
    sign_in(carol, ui, "carol", start="/ml/playground")
    csrf = carol.locator("input[name=csrf_token]").first.get_attribute("value")
    asked = len(ui.upstream.requests)
    request = carol.context.request
    answer = request.post(ui.url + "/ml/playground/stream", form={**form, "csrf_token": csrf})
    assert answer.status == 403 and answer.json()["error_code"] == "PERMISSION_DENIED"
    assert "CAN_QUERY is required" in answer.json()["message"]
    alice = _page(browser)
    sign_in(alice, ui, "alice", start="/ml/playground")
    request = alice.context.request
    for fields in ({}, {"csrf_token": "forged"}, {"csrf_token": csrf}):  # carol's is not hers
        answer = request.post(ui.url + "/ml/playground/stream", form={**form, **fields})
        assert answer.status == 403 and "CSRF token" in answer.json()["message"]
    bob = _page(browser)
    sign_in(bob, ui, "bob", start="/ml/playground")
    bob_csrf = bob.locator("input[name=csrf_token]").first.get_attribute("value")
    answer = bob.context.request.post(
        ui.url + "/ml/playground/stream", form={**form, "csrf_token": bob_csrf}
    )
    assert answer.status == 404 and answer.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    alice_csrf = alice.locator("input[name=csrf_token]").first.get_attribute("value")
    answer = request.post(
        ui.url + "/ml/playground/stream",
        form={**form, "csrf_token": alice_csrf, "temperature": "hot"},
    )
    assert answer.status == 400 and answer.json()["message"] == "temperature: not a number: 'hot'"
    assert len(ui.upstream.requests) == asked  # nothing refused reached the upstream
    # Not signed in: no stream, a redirect to sign-in.
    anonymous = httpx.post(ui.url + "/ml/playground/stream", data=form)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/ml/signin"


def test_view_only_user_sees_no_edit_controls_and_forged_posts_are_refused(
    ui: Ui, browser: Any
) -> None:
    page = _page(browser)
    sign_in(page, ui, "carol", start="/ml/endpoints/team-a-ep")
    main = page.inner_text("main")
    assert "YOUR PERMISSION\nCAN_VIEW" in main
    assert page.locator("#edit-config").count() == 0 and page.locator("#cancel-update").count() == 0
    assert "Query in playground" not in main
    shot(page, "12-view-only")
    page.goto(ui.url + "/ml/endpoints/team-a-ep/edit")
    assert "CAN_MANAGE is required" in page.inner_text("main")
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    form = {
        "e0_name": "m",
        "e0_kind": "external",
        "e0_provider": "openai",
        "e0_model": "x",
        "e0_task": "llm/v1/chat",
        "action": "apply",
    }
    request = page.context.request
    for fields, status in (
        ({}, 403),  # no CSRF token
        ({"csrf_token": "forged"}, 403),  # a wrong one
        ({"csrf_token": csrf}, 403),  # the right one: still only CAN_VIEW
    ):
        answer = request.post(ui.url + "/ml/endpoints/team-a-ep/edit", form={**form, **fields})
        assert answer.status == status, answer.text()
        answer = request.post(ui.url + "/ml/endpoints/team-a-ep/cancel", form=fields)
        assert answer.status == status
    # A post with the session cookie from a page on another origin: no CSRF token to send.
    assert "CSRF token is missing or wrong" in request.post(ui.url + "/ml/signout", form={}).text()
    playground = _page(browser)
    sign_in(playground, ui, "carol", start="/ml/playground")
    assert playground.locator("input[value=team-a-ep]").count() == 0


def test_other_team_gets_the_same_404_as_for_no_endpoint(ui: Ui, browser: Any) -> None:
    page = _page(browser)
    sign_in(page, ui, "bob")
    assert page.locator("a[href='/ml/endpoints/team-a-ep']").count() == 0
    hidden = page.goto(ui.url + "/ml/endpoints/team-a-ep")
    hidden_text = page.inner_text("main").replace("team-a-ep", "NAME")
    shot(page, "13-hidden-404")
    missing = page.goto(ui.url + "/ml/endpoints/no-such-ep")
    assert hidden.status == missing.status == 404
    assert page.inner_text("main").replace("no-such-ep", "NAME") == hidden_text
    for path in ("/edit", "/status", "/logs/m", "/diff?from=1&to=1"):
        assert page.goto(ui.url + "/ml/endpoints/team-a-ep" + path).status == 404
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    answer = page.context.request.post(
        ui.url + "/ml/endpoints/team-a-ep/cancel", form={"csrf_token": csrf}
    )
    assert answer.status == 404
    with ui.api("bob") as client:
        assert client.post("/api/2.0/serving-endpoints/team-a-ep/config/cancel").status_code == 404
    with ui.api("carol") as client:
        assert client.post("/api/2.0/serving-endpoints/team-a-ep/config/cancel").status_code == 403
    with ui.api("alice") as client:
        refused = client.post("/api/2.0/serving-endpoints/team-a-ep/config/cancel")
        assert refused.status_code == 409 and refused.json()["error_code"] == "RESOURCE_CONFLICT"


def test_sign_out_ends_the_session(ui: Ui, browser: Any) -> None:
    page = _page(browser)
    sign_in(page, ui, "alice")
    cookie = next(c for c in page.context.cookies() if c["name"] == "engine_ui")
    page.click("text=Sign out")
    page.wait_for_url(re.compile(r"/ml/signin"))
    replay = httpx.get(ui.url + "/ml/endpoints", cookies={"engine_ui": cookie["value"]})
    assert replay.status_code == 303 and replay.headers["location"].startswith("/ml/signin")


def test_list_filters_and_narrow_screen(ui: Ui, browser: Any) -> None:
    page = _page(browser, width=390, height=844)
    sign_in(page, ui, "admin")
    page.fill("input[name=q]", "spl")
    expect(page.locator("#results tbody tr")).to_have_count(1)
    assert "split" in page.inner_text("#results")
    page.fill("input[name=q]", "")
    page.select_option("select[name=state]", "ready")
    page.wait_for_url(re.compile(r"state=ready"))
    expect(page.locator("#results .state").filter(has_not_text="Ready")).to_have_count(0)
    assert page.locator("#results .state").count() >= 2
    overflow = "document.documentElement.scrollWidth <= window.innerWidth + 1"
    assert page.evaluate(overflow)
    shot(page, "14-narrow-list")
    page.goto(ui.url + "/ml/endpoints/split")
    wide = page.evaluate(
        "[...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right"
        " > window.innerWidth + 1).map(e => e.tagName + ':' + e.textContent.slice(0, 60))"
    )
    shot(page, "15-narrow-endpoint")
    assert page.evaluate(overflow), wide[:6]


def test_engine_cancel_without_an_update_in_progress(ui: Ui) -> None:
    result = run_cli("cancel", "split", "--state", str(ui.server.state))
    assert result.returncode == 1
    assert result.stderr.strip() == "error: endpoint 'split' has no config update in progress"
    result = run_cli("cancel", "nope", "--state", str(ui.server.state))
    assert (
        result.returncode == 1
        and "does not exist" in result.stderr
        and "Traceback" not in result.stderr
    )
