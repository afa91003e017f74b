"""Serving UI sessions on two replicas of one PostgreSQL state: signed in on one, a page read on
the other; signed out on one, refused on both; the state holds neither the cookie nor the
token. A UI apply on the replica without the runner role is carried out by the runner host
(each replica's test executor writes its own trace: only the runner host's starts the new
entity). Real processes on loopback: a throwaway PostgreSQL cluster, a loopback OpenAI.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from _postgres import PostgresCluster, PostgresMissing
from cryptography.fernet import Fernet
from mock_http import MockUpstream
from serving_harness import ServerProcess, openai_upstream

from engine.access.tokens import create_token
from engine.secrets.store import secret_store_for_state
from engine.state import open_state, resolve_state

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
DIGEST = re.compile(r'name="plan_digest" value="([^"]+)"')


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("ui-replicas")
    try:
        cluster = PostgresCluster.start()
    except PostgresMissing as exc:
        pytest.skip(str(exc))
    with contextlib.ExitStack() as stack:
        stack.callback(cluster.destroy)
        upstream = stack.enter_context(MockUpstream(openai_upstream))
        url = cluster.create_database()
        store = open_state(url)
        token = create_token(store, "admin@example.com", admin=True)[1]
        viewer = create_token(store, "viewer@example.com", groups=["viewers"])[1]
        store.close()
        # Replicas on several machines share the secrets' master key through the environment.
        key = Fernet.generate_key().decode()
        stack.enter_context(_environment(ENGINE_SECRETS_KEY=key))
        secrets = secret_store_for_state(resolve_state(url))
        secrets.create_scope("scope")
        secrets.put_secret("scope", "openai", "sk-ui-replicas")
        secrets.close()
        replicas, traces = [], []
        for i in range(2):
            home = root / f"replica-{i}"
            home.mkdir()
            trace = home / "trace.txt"
            env = {
                "ENGINE_HOME": str(home),
                "ENGINE_SECRETS_KEY": key,
                "ENGINE_EXECUTOR_PLUGINS": "executor_fixture:register",
                "TEST_EXECUTOR_DIR": str(home / "run"),
                "TEST_EXECUTOR_EXTERNAL": "1",
                "TEST_EXECUTOR_TRACE": str(trace),
            }
            replicas.append(
                stack.enter_context(
                    ServerProcess(
                        url,
                        env=env,
                        args=("--limits", "per-replica"),
                        log_dir=home,
                        new_session=True,
                    )
                )
            )
            traces.append(trace)
        yield {
            "url": url,
            "replicas": replicas,
            "traces": traces,
            "token": token,
            "viewer": viewer,
            "upstream": upstream.url + "/v1",
        }


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _sign_in(base: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=60)
    answer = client.post("/ml/signin", data={"token": token})
    assert answer.status_code == 303, answer.text
    return client


def _with_cookie(base: str, cookie: str) -> httpx.Client:
    return httpx.Client(base_url=base, cookies={"engine_ui": cookie}, timeout=60)


def _roles(pair: dict) -> tuple[int, int]:
    """(index of the runner replica, index of the other)."""
    deadline = time.monotonic() + 60
    while True:
        store = open_state(pair["url"])
        try:
            hosts = store.hosts()
        finally:
            store.close()
        runner = [h["address"] for h in hosts if h["role"] == "runner"]
        urls = [r.url for r in pair["replicas"]]
        if runner and runner[0].rstrip("/") in urls:
            i = urls.index(runner[0].rstrip("/"))
            return i, 1 - i
        assert time.monotonic() < deadline, hosts
        time.sleep(0.2)


def test_a_session_signed_in_on_one_replica_is_accepted_by_the_other(pair: dict) -> None:
    a, b = (r.url for r in pair["replicas"])
    client = _sign_in(a, pair["token"])
    cookie = client.cookies["engine_ui"]
    other = _with_cookie(b, cookie)
    page = other.get("/ml/endpoints")
    assert page.status_code == 200 and "Serving endpoints" in page.text
    assert "admin@example.com" in page.text
    # The same CSRF token on both: a form of one replica posts to the other.
    assert CSRF.findall(page.text)[0] == CSRF.findall(client.get("/ml/endpoints").text)[0]
    store = open_state(pair["url"])
    try:
        row = store.ui_session(hashlib.sha256(cookie.encode()).hexdigest())
        assert row is not None and store.ui_session(cookie) is None  # its hash, never the id
        assert pair["token"] not in str(row) and cookie not in str(row)
    finally:
        store.close()
    # Signed out on B: refused on A too.
    csrf = CSRF.findall(page.text)[0]
    out = other.post("/ml/signout", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ml/signin"
    for base in (a, b):
        again = _with_cookie(base, cookie).get("/ml/endpoints")
        assert again.status_code == 303 and again.headers["location"].startswith("/ml/signin")


def test_a_forged_or_unknown_cookie_is_refused_on_every_replica(pair: dict) -> None:
    for replica in pair["replicas"]:
        for cookie in ("not-a-session", "x" * 43):
            answer = _with_cookie(replica.url, cookie).get("/ml/endpoints")
            assert answer.status_code == 303


def test_a_ui_apply_on_the_other_replica_is_carried_out_by_the_runner_host(pair: dict) -> None:
    runner, other = _roles(pair)
    base = pair["replicas"][other].url
    client = _sign_in(pair["replicas"][runner].url, pair["token"])
    ui = _with_cookie(base, client.cookies["engine_ui"])
    csrf = CSRF.findall(ui.get("/ml/endpoints/new").text)[0]
    form = {
        "csrf_token": csrf,
        "slots": "1",
        "name": "via-replica",
        "e0_name": "gpt",
        "e0_kind": "external",
        "e0_provider": "openai",
        "e0_model": "gpt-4",
        "e0_task": "llm/v1/chat",
        "e0_key": "{{secrets/scope/openai}}",
        "e0_base": pair["upstream"],
        "e0_traffic": "100",
    }
    preview = ui.post("/ml/endpoints/new", data={**form, "action": "plan"})
    assert preview.status_code == 200, preview.text
    assert "via-replica will be created" in preview.text
    digest = DIGEST.findall(preview.text)[0]
    applied = ui.post("/ml/endpoints/new", data={**form, "action": "apply", "plan_digest": digest})
    assert applied.status_code == 303, applied.text
    assert applied.headers["location"] == "/ml/endpoints/via-replica?notice=applied"
    page = ui.get("/ml/endpoints/via-replica")  # read-your-writes on the replica asked
    assert page.status_code == 200 and "via-replica" in page.text
    traces = [t.read_text() if t.exists() else "" for t in pair["traces"]]
    assert "start:" in traces[runner] and "start:" not in traces[other], traces
    # A CAN_VIEW user's forged apply is refused by the runner host as it would be here.
    viewer = _sign_in(base, pair["viewer"])
    refused = viewer.post("/ml/endpoints/new", data={**form, "name": "nope", "action": "apply"})
    assert refused.status_code == 403 and "CSRF token" in refused.text
