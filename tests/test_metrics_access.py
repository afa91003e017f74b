"""Who may read `/metrics` on a real `engine serve`, tried as another team would.

Two teams, each with an endpoint only its own group may use (team B's endpoint's name starts
with team A's, so a filter that matched label text would mix them up), and traffic on both.
Without a token `/metrics` is refused; a caller sees exactly the series of the endpoints it
may view (each series' endpoint label parsed, not searched for); `--metrics-public` shows all.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine
from mock_http import MockUpstream
from serving_harness import ServerProcess, openai_upstream

from engine.access.tokens import create_token

TEAM_A = "alpha"
TEAM_B = "alpha-b"  # team A's name is its prefix
QUERY = {"messages": [{"role": "user", "content": "hi"}]}
_SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def series_endpoints(text: str) -> set[str]:
    """The `endpoint` label of every series line of a Prometheus text exposition."""
    found = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SERIES.match(line)
        assert match is not None, f"not a series line: {line!r}"
        labels = dict(_LABEL.findall(match.group(2) or ""))
        if "endpoint" in labels:
            found.add(labels["endpoint"])
    return found


def _create(client: httpx.Client, name: str, base: str, group: str) -> None:
    entity = {
        "name": "m",
        "external_model": {
            "name": "gpt-4",
            "provider": "openai",
            "task": "llm/v1/chat",
            "openai_config": {"openai_api_base": base, "openai_api_key_plaintext": "sk-x"},
        },
    }
    created = client.post(
        "/api/2.0/serving-endpoints", json={"name": name, "config": {"served_entities": [entity]}}
    )
    assert created.status_code == 200, created.text
    deadline = time.monotonic() + 120
    while client.get(f"/api/2.0/serving-endpoints/{name}").json()["state"]["ready"] != "READY":
        assert time.monotonic() < deadline, f"{name} did not become ready"
        time.sleep(0.1)
    acl = {"access_control_list": [{"group_name": group, "permission_level": "CAN_QUERY"}]}
    put = client.put(f"/api/2.0/permissions/serving-endpoints/{created.json()['id']}", json=acl)
    assert put.status_code == 200, put.text


def _serve_two_teams(root: Path, upstream: MockUpstream, *args: str) -> Any:
    engine = Engine(root / "state.db")
    tokens = {
        "admin": create_token(engine.store, "admin@example.com", admin=True)[1],
        "alice": create_token(engine.store, "alice@example.com", groups=["team_a"])[1],
        "bob": create_token(engine.store, "bob@example.com", groups=["team_b"])[1],
        "carol": create_token(engine.store, "carol@example.com")[1],
    }
    engine.close()
    server = ServerProcess(root / "state.db", args=args).__enter__()
    try:
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        with httpx.Client(base_url=server.url, headers=admin, timeout=30) as client:
            _create(client, TEAM_A, upstream.url + "/v1", "team_a")
            _create(client, TEAM_B, upstream.url + "/v1", "team_b")
            for who, name in (("alice", TEAM_A), ("bob", TEAM_B)):
                answer = client.post(
                    f"/serving-endpoints/{name}/invocations",
                    json=QUERY,
                    headers={"Authorization": f"Bearer {tokens[who]}"},
                )
                assert answer.status_code == 200, answer.text
    except BaseException:
        server.__exit__(None, None, None)
        raise
    server.tokens = tokens  # type: ignore[attr-defined]
    return server


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(openai_upstream) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream):  # noqa: ANN201
    process = _serve_two_teams(tmp_path_factory.mktemp("metrics"), upstream)
    try:
        yield process
    finally:
        process.__exit__(None, None, None)


def _get(server: ServerProcess, path: str, who: str | None) -> httpx.Response:
    headers = {} if who is None else {"Authorization": f"Bearer {server.tokens[who]}"}  # type: ignore[attr-defined]
    return httpx.get(server.url + path, headers=headers, timeout=30)


def test_metrics_need_a_token(server: ServerProcess) -> None:
    for headers in ({}, {"Authorization": "Bearer dapi-not-a-token"}, {"Authorization": "x"}):
        answer = httpx.get(server.url + "/metrics", headers=headers, timeout=30)
        assert answer.status_code == 401, answer.text
        assert answer.json()["error_code"] == "UNAUTHENTICATED"
        assert TEAM_A not in answer.text and TEAM_B not in answer.text


def test_a_caller_sees_only_the_series_of_endpoints_it_may_view(server: ServerProcess) -> None:
    admin = _get(server, "/metrics", "admin")
    assert admin.status_code == 200
    assert series_endpoints(admin.text) == {TEAM_A, TEAM_B}

    bob = _get(server, "/metrics", "bob")
    assert bob.status_code == 200
    assert series_endpoints(bob.text) == {TEAM_B}
    assert 'serving_requests_total{endpoint="alpha-b",entity="m",status="200"} 1' in bob.text
    assert f'endpoint="{TEAM_A}"' not in bob.text

    assert series_endpoints(_get(server, "/metrics", "alice").text) == {TEAM_A}
    # No access to any endpoint: the metric families, and no series.
    carol = _get(server, "/metrics", "carol")
    assert carol.status_code == 200 and series_endpoints(carol.text) == set()
    assert "# TYPE serving_requests_total counter" in carol.text


def test_the_endpoint_metrics_route_shows_that_endpoint_only(server: ServerProcess) -> None:
    api = "/api/2.0/serving-endpoints/{}/metrics"
    assert series_endpoints(_get(server, api.format(TEAM_A), "alice").text) == {TEAM_A}
    assert series_endpoints(_get(server, api.format(TEAM_B), "bob").text) == {TEAM_B}
    assert series_endpoints(_get(server, api.format(TEAM_A), "admin").text) == {TEAM_A}
    # Another team's endpoint, and one that does not exist, answer the same.
    for who, name in (("bob", TEAM_A), ("alice", TEAM_B), ("bob", "alpha-c")):
        answer = _get(server, api.format(name), who)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert _get(server, api.format(TEAM_A), None).status_code == 401


def test_metrics_public_shows_every_series_without_a_token(
    tmp_path: Path, upstream: MockUpstream
) -> None:
    server = _serve_two_teams(tmp_path, upstream, "--metrics-public")
    try:
        answer = httpx.get(server.url + "/metrics", timeout=30)
        assert answer.status_code == 200, answer.text
        assert series_endpoints(answer.text) == {TEAM_A, TEAM_B}
        # Only /metrics is public: the rest still needs a token.
        assert httpx.get(server.url + "/api/2.0/serving-endpoints", timeout=30).status_code == 401
        route = f"/api/2.0/serving-endpoints/{TEAM_A}/metrics"
        assert httpx.get(server.url + route, timeout=30).status_code == 401
    finally:
        server.__exit__(None, None, None)


def test_series_are_filtered_by_their_parsed_endpoint() -> None:
    from engine.gateway._metrics import Metrics

    metrics = Metrics()
    for name in ("a", "a-b", "b-a", 'x",endpoint="a'):
        metrics.observe(name, "m", 200, 0.01, 3, 4)
        metrics.rate_limited[name] += 1
        metrics.upstream_errors[(name, "m", "upstream_server")] += 1
    text = metrics.render(lambda endpoint: endpoint == "a")
    assert series_endpoints(text) == {"a"}
    assert series_endpoints(metrics.render()) == {"a", "a-b", "b-a", 'x\\",endpoint=\\"a'}
