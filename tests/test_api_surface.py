"""The current API surface through a real `engine serve`: the Databricks SDK's newer fields and
routes, `endpoint_type`, the platform's query-only fields, and the OpenAI Responses API driven
by the real `openai` SDK. The upstream's request log shows what reached the provider."""

from __future__ import annotations

import httpx
import pytest
from engine_harness import Engine, write_specs
from mock_http import MockUpstream
from serving_harness import ServerProcess, endpoint, openai_entity, openai_upstream

from engine.access.tokens import create_token


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(openai_upstream) as server:
        yield server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("surface")
    engine = Engine(tmp / "state.db")
    engine.secrets.create_scope("scope")
    engine.secrets.put_secret("scope", "openai", "sk-upstream-key")
    specs = write_specs(
        tmp / "specs", [endpoint("chat", [openai_entity("gpt4", "gpt-4", upstream.url + "/v1")])]
    )
    _, report = engine.apply(specs)
    assert report.ok, report.failed
    _, admin = create_token(engine.store, "root", admin=True)
    with ServerProcess(engine.state, log_dir=tmp) as server:
        server.wait_serial(engine.store.serial)
        yield server, admin
    engine.close()


def test_sdk_fields_and_routes_round_trip(served) -> None:  # noqa: ANN001
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config
    from databricks.sdk.service.serving import EmailNotifications, TelemetryConfig

    server, admin = served
    client = WorkspaceClient(config=Config(host=server.url, token=admin))
    raw = httpx.get(
        f"{server.url}/api/2.0/serving-endpoints/chat",
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    ).json()
    assert raw["endpoint_type"] == "EXTERNAL_MODEL"
    listed = httpx.get(
        f"{server.url}/api/2.0/serving-endpoints",
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    ).json()["endpoints"]
    assert [e["endpoint_type"] for e in listed] == ["EXTERNAL_MODEL"]
    answer = client.serving_endpoints.update_notifications(
        "chat", email_notifications=EmailNotifications(on_update_failure=["ops@example.com"])
    )
    assert answer.email_notifications.on_update_failure == ["ops@example.com"]
    detail = client.serving_endpoints.patch_telemetry_config(
        "chat", telemetry_config=TelemetryConfig(telemetry_profile_id="p1")
    )
    assert detail.telemetry_config.telemetry_profile_id == "p1"
    again = client.serving_endpoints.get("chat")
    assert again.email_notifications.on_update_failure == ["ops@example.com"]
    # Absent: removed, as the platform says.
    client.serving_endpoints.patch_telemetry_config("chat")
    assert client.serving_endpoints.get("chat").telemetry_config is None
    bad = httpx.patch(
        f"{server.url}/api/2.0/serving-endpoints/chat/notifications",
        headers={"Authorization": f"Bearer {admin}"},
        json={"email_notification": {}},
        timeout=30,
    )
    assert bad.status_code == 400 and "email_notifications" in bad.json()["message"]


def test_query_only_fields_never_reach_the_provider(served, upstream: MockUpstream) -> None:  # noqa: ANN001
    server, admin = served
    before = len(upstream.requests)
    answer = httpx.post(
        f"{server.url}/serving-endpoints/chat/invocations",
        headers={"Authorization": f"Bearer {admin}"},
        json={
            "messages": [{"role": "user", "content": "hi"}],
            "client_request_id": "req-1",
            "usage_context": {"team": "a"},
            "extra_params": {"top_k": "5"},
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    sent = upstream.requests[before].json()
    assert "client_request_id" not in sent and "usage_context" not in sent
    assert "extra_params" not in sent and sent["top_k"] == "5"
    bad = httpx.post(
        f"{server.url}/serving-endpoints/chat/invocations",
        headers={"Authorization": f"Bearer {admin}"},
        json={"messages": [{"role": "user", "content": "hi"}], "usage_context": {"n": 1}},
        timeout=30,
    )
    assert bad.status_code == 400 and "usage_context" in bad.json()["message"]


def test_openai_responses_api(served) -> None:  # noqa: ANN001
    from openai import OpenAI

    server, admin = served
    client = OpenAI(base_url=server.url + "/serving-endpoints", api_key=admin)
    response = client.responses.create(model="chat", input="hi", instructions="be brief")
    assert response.output_text == "reply from gpt-4"
    assert response.usage.input_tokens == 5 and response.usage.output_tokens == 4
    events = list(client.responses.create(model="chat", input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Hello!"
    assert events[-1].response.output_text == "Hello!"
    with pytest.raises(Exception) as refused:
        client.responses.create(model="chat", input="hi", tools=[{"type": "web_search"}])
    assert "tools" in str(refused.value)
