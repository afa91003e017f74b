"""The real, unmodified clients against a running `engine serve`: MLflow's deployments client,
the Databricks SDK and the OpenAI SDK, with external models on a local OpenAI-speaking mock."""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from engine_harness import Engine
from mock_http import MockUpstream
from pg_fixtures import database_text, module_state
from serving_harness import ServerProcess, openai_upstream

from engine.access.tokens import create_token

SECRET = "sk-from-the-secrets-api-5c1f0e9b7a"


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(openai_upstream) as server:
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: MockUpstream
):  # noqa: ANN201, E501
    root = tmp_path_factory.mktemp("control")
    with pytest.MonkeyPatch.context() as env:
        state = module_state(request, root, env)
        engine = Engine(state)
        _, admin = create_token(engine.store, "admin@example.com", admin=True)
        _, user = create_token(engine.store, "bob@example.com")
        engine.close()
        with ServerProcess(state, log_dir=root) as process:
            process.admin = admin  # type: ignore[attr-defined]
            process.user = user  # type: ignore[attr-defined]
            yield process


def _entity(name: str, model: str, base: str, key: dict[str, str] | None = None) -> dict[str, Any]:
    config = {"openai_api_base": base, **(key or {"openai_api_key_plaintext": "sk-plain"})}
    return {
        "name": name,
        "external_model": {
            "name": model,
            "provider": "openai",
            "task": "llm/v1/chat",
            "openai_config": config,
        },
    }


def _env(server: ServerProcess, token: str) -> dict[str, str]:
    return {"DATABRICKS_HOST": server.url, "DATABRICKS_TOKEN": token}


@pytest.fixture
def mlflow_client(server: ServerProcess, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    for key, value in _env(server, server.admin).items():  # type: ignore[attr-defined]
        monkeypatch.setenv(key, value)
    # MLflow retries 429 for minutes by default; a test needs the answer sooner.
    monkeypatch.setenv("MLFLOW_DEPLOYMENT_PREDICT_TOTAL_TIMEOUT", "3")
    monkeypatch.setenv("MLFLOW_DATABRICKS_ENDPOINT_HTTP_RETRY_TIMEOUT", "3")
    from mlflow.deployments import get_deploy_client

    return get_deploy_client("databricks")


@pytest.fixture
def workspace(server: ServerProcess):  # noqa: ANN201
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config
    from sdk_clock import FastRetryClock

    # The SDK retries 429s for minutes by default; a test needs the answer sooner. The clock
    # skips its Retry-After sleeps (60 s for a per-minute limit): the 5 s still pass for it.
    config = Config(
        host=server.url,
        token=server.admin,  # type: ignore[attr-defined]
        retry_timeout_seconds=5,
        clock=FastRetryClock(),
    )
    return WorkspaceClient(config=config)


def _wait_ready(client: Any, name: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        endpoint = client.get_endpoint(name)
        if endpoint["state"]["config_update"] == "NOT_UPDATING":
            return endpoint
        time.sleep(0.2)
    raise TimeoutError(name)


def test_mlflow_deployments_client(mlflow_client: Any, upstream: MockUpstream) -> None:
    import requests

    base = upstream.url + "/v1"
    created = mlflow_client.create_endpoint(
        name="ml-chat", config={"served_entities": [_entity("gpt", "gpt-4", base)]}
    )
    assert created["name"] == "ml-chat" and created["state"]["config_update"] in (
        "IN_PROGRESS",
        "NOT_UPDATING",
    )
    endpoint = _wait_ready(mlflow_client, "ml-chat")
    assert endpoint["config"]["config_version"] == 1
    assert endpoint["config"]["served_entities"][0]["state"]["deployment"] == "DEPLOYMENT_READY"
    assert "openai_api_key_plaintext" not in json.dumps(endpoint)
    assert "ml-chat" in [e["name"] for e in mlflow_client.list_endpoints()]

    mlflow_client.update_endpoint_config(
        endpoint="ml-chat", config={"served_entities": [_entity("gpt4o", "gpt-4o", base)]}
    )
    endpoint = _wait_ready(mlflow_client, "ml-chat")
    assert endpoint["config"]["config_version"] == 2
    assert [e["name"] for e in endpoint["config"]["served_entities"]] == ["gpt4o"]

    limits = mlflow_client.update_endpoint(
        endpoint="ml-chat",
        config={"rate_limits": [{"key": "user", "renewal_period": "minute", "calls": 10}]},
    )
    assert limits == {"rate_limits": [{"calls": 10, "key": "user", "renewal_period": "minute"}]}

    answer = mlflow_client.predict(
        endpoint="ml-chat", inputs={"messages": [{"role": "user", "content": "hi"}]}
    )
    assert answer["choices"][0]["message"]["content"] == "reply from gpt-4o"
    chunks = list(
        mlflow_client.predict_stream(
            endpoint="ml-chat", inputs={"messages": [{"role": "user", "content": "hi"}]}
        )
    )
    assert (
        "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c.get("choices"))
        == "Hello!"
    )

    with pytest.raises(requests.exceptions.HTTPError) as not_found:
        mlflow_client.get_endpoint("no-such-endpoint")
    assert not_found.value.response.status_code == 404
    with pytest.raises(requests.exceptions.HTTPError) as invalid:
        mlflow_client.create_endpoint(name="bad name!", config={"served_entities": []})
    assert invalid.value.response.status_code == 400
    with pytest.raises(requests.exceptions.HTTPError) as exists:
        mlflow_client.create_endpoint(
            name="ml-chat", config={"served_entities": [_entity("gpt", "gpt-4", base)]}
        )
    assert "RESOURCE_ALREADY_EXISTS" in exists.value.response.text
    mlflow_client.update_endpoint_rate_limits(
        endpoint="ml-chat",
        config={"rate_limits": [{"key": "endpoint", "renewal_period": "minute", "calls": 0}]},
    )
    # MLflow retries a 429 (honouring Retry-After) until its budget runs out.
    with pytest.raises((requests.exceptions.HTTPError, TimeoutError)) as limited:
        mlflow_client.predict(
            endpoint="ml-chat", inputs={"messages": [{"role": "user", "content": "hi"}]}
        )
    if isinstance(limited.value, TimeoutError):
        from databricks.sdk.errors import TooManyRequests

        assert isinstance(limited.value.__cause__, TooManyRequests)
    else:
        assert limited.value.response.status_code == 429

    assert mlflow_client.delete_endpoint("ml-chat") == {}
    with pytest.raises(requests.exceptions.HTTPError):
        mlflow_client.get_endpoint("ml-chat")


def test_databricks_sdk(workspace: Any, server: ServerProcess, upstream: MockUpstream) -> None:
    from databricks.sdk.errors import (
        InvalidParameterValue,
        ResourceAlreadyExists,
        ResourceDoesNotExist,
        TooManyRequests,
    )
    from databricks.sdk.service.serving import (
        AiGatewayRateLimit,
        AiGatewayRateLimitRenewalPeriod,
        AiGatewayUsageTrackingConfig,
        ChatMessage,
        ChatMessageRole,
        EndpointCoreConfigInput,
        EndpointTag,
        RateLimit,
        RateLimitKey,
        RateLimitRenewalPeriod,
        ServedEntityInput,
    )

    base = upstream.url + "/v1"
    ws = workspace
    ws.secrets.create_scope(scope="sdk")
    ws.secrets.put_secret(scope="sdk", key="openai", string_value=SECRET)
    assert [s.key for s in ws.secrets.list_secrets(scope="sdk")] == ["openai"]

    def entities(name: str, model: str) -> list[ServedEntityInput]:
        return [
            ServedEntityInput.from_dict(
                _entity(name, model, base, {"openai_api_key": "{{secrets/sdk/openai}}"})
            )
        ]

    created = ws.serving_endpoints.create_and_wait(
        name="sdk-chat",
        config=EndpointCoreConfigInput(name="sdk-chat", served_entities=entities("a", "gpt-4")),
    )
    assert created.state.config_update.value == "NOT_UPDATING"
    got = ws.serving_endpoints.get("sdk-chat")
    assert got.config.config_version == 1 and got.id
    assert "sdk-chat" in [e.name for e in ws.serving_endpoints.list()]

    updated = ws.serving_endpoints.update_config_and_wait(
        name="sdk-chat", served_entities=entities("b", "gpt-4o")
    )
    assert updated.config.config_version == 2

    put = ws.serving_endpoints.put(
        name="sdk-chat",
        rate_limits=[
            RateLimit(calls=50, key=RateLimitKey.USER, renewal_period=RateLimitRenewalPeriod.MINUTE)
        ],
    )
    assert put.rate_limits[0].calls == 50
    tags = ws.serving_endpoints.patch(
        name="sdk-chat", add_tags=[EndpointTag(key="team", value="ml")]
    )
    assert [(t.key, t.value) for t in tags.tags] == [("team", "ml")]
    gateway = ws.serving_endpoints.put_ai_gateway(
        name="sdk-chat",
        usage_tracking_config=AiGatewayUsageTrackingConfig(enabled=True),
        rate_limits=[
            AiGatewayRateLimit(calls=100, renewal_period=AiGatewayRateLimitRenewalPeriod.MINUTE)
        ],
    )
    assert gateway.usage_tracking_config.enabled is True

    answer = ws.serving_endpoints.query(
        name="sdk-chat", messages=[ChatMessage(role=ChatMessageRole.USER, content="hi")]
    )
    assert answer.choices[0].message.content == "reply from gpt-4o"
    # The key put through the secrets API is what the upstream received, and nothing shows it.
    assert upstream.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
    assert SECRET not in json.dumps(ws.serving_endpoints.get("sdk-chat").as_dict())
    assert SECRET not in server.log.read_text()

    openai_client = ws.serving_endpoints.get_open_ai_client()
    chat = openai_client.chat.completions.create(
        model="sdk-chat", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content == "reply from gpt-4o"

    with pytest.raises(ResourceDoesNotExist):
        ws.serving_endpoints.get("nope")
    with pytest.raises(InvalidParameterValue):
        ws.serving_endpoints.create(
            name="bad name!",
            config=EndpointCoreConfigInput(
                name="bad name!", served_entities=entities("a", "gpt-4")
            ),
        )
    with pytest.raises(ResourceAlreadyExists):
        ws.serving_endpoints.create(
            name="sdk-chat",
            config=EndpointCoreConfigInput(name="sdk-chat", served_entities=entities("a", "gpt-4")),
        )
    ws.serving_endpoints.put_ai_gateway(
        name="sdk-chat",
        rate_limits=[
            AiGatewayRateLimit(calls=0, renewal_period=AiGatewayRateLimitRenewalPeriod.MINUTE)
        ],
    )
    with pytest.raises((TooManyRequests, TimeoutError)) as raised:
        ws.serving_endpoints.query(
            name="sdk-chat", messages=[ChatMessage(role=ChatMessageRole.USER, content="hi")]
        )
    # A retry deadline that passed was reached on 429s, not on anything else.
    refused = raised.value if isinstance(raised.value, TooManyRequests) else raised.value.__cause__
    assert isinstance(refused, TooManyRequests), repr(raised.value)

    ws.serving_endpoints.delete("sdk-chat")
    with pytest.raises(ResourceDoesNotExist):
        ws.serving_endpoints.get("sdk-chat")


def test_openai_client_errors(
    workspace: Any, server: ServerProcess, upstream: MockUpstream
) -> None:
    import openai

    admin = server.admin  # type: ignore[attr-defined]
    client = openai.OpenAI(base_url=server.url + "/serving-endpoints", api_key=admin, max_retries=0)
    httpx.post(
        server.url + "/api/2.0/serving-endpoints",
        headers={"Authorization": f"Bearer {admin}"},
        json={
            "name": "oa-blocked",
            "config": {"served_entities": [_entity("m", "gpt-4", upstream.url + "/v1")]},
            "ai_gateway": {"rate_limits": [{"calls": 0, "renewal_period": "minute"}]},
        },
    )
    _poll(
        httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin}"}),
        "oa-blocked",
    )
    message = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=message)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="oa-blocked", prompt="x")
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="oa-blocked", messages=message)
    raw = client.with_options(base_url=server.url)
    with pytest.raises(openai.ConflictError):
        raw.post(
            "/api/2.0/serving-endpoints",
            cast_to=httpx.Response,
            body={
                "name": "oa-blocked",
                "config": {"served_entities": [_entity("m", "gpt-4", upstream.url + "/v1")]},
            },
        )


def test_split_updated_through_the_api(server: ServerProcess, upstream: MockUpstream) -> None:
    admin = {"Authorization": f"Bearer {server.admin}"}  # type: ignore[attr-defined]
    base = upstream.url + "/v1"
    config = {
        "served_entities": [
            _entity("big", "model-big", base),
            _entity("small", "model-small", base),
        ],
        "traffic_config": {
            "routes": [
                {"served_model_name": "big", "traffic_percentage": 90},
                {"served_model_name": "small", "traffic_percentage": 10},
            ]
        },
    }
    with httpx.Client(base_url=server.url, headers=admin, timeout=30) as client:
        assert (
            client.post(
                "/api/2.0/serving-endpoints/", json={"name": "split-api", "config": config}
            ).status_code
            == 200
        )
        _poll(client, "split-api")

        def sample(n: int) -> Counter[str]:
            counts: Counter[str] = Counter()
            for _ in range(n):
                r = client.post(
                    "/serving-endpoints/split-api/invocations",
                    json={"messages": [{"role": "user", "content": "x"}]},
                )
                counts[r.headers["served-model-name"]] += 1
            return counts

        before = sample(400)
        assert 0.84 <= before["big"] / 400 <= 0.96, before
        fifty = copy.deepcopy(config)
        for route in fifty["traffic_config"]["routes"]:
            route["traffic_percentage"] = 50
        assert (
            client.put("/api/2.0/serving-endpoints/split-api/config", json=fifty).status_code == 200
        )
        endpoint = _poll(client, "split-api")
        assert endpoint["config"]["config_version"] == 2
        after = sample(400)
        assert 0.40 <= after["big"] / 400 <= 0.60, after
        direct = client.post(
            "/serving-endpoints/split-api/served-models/small/invocations",
            json={"messages": [{"role": "user", "content": "x"}]},
        )
        assert direct.headers["served-model-name"] == "small"
        routes = endpoint["config"]["traffic_config"]["routes"]
        assert {(r["served_entity_name"], r["served_model_name"]) for r in routes} == {
            ("big", "big"),
            ("small", "small"),
        }


def test_a_bad_vertex_key_fails_the_update_and_the_old_config_keeps_serving(
    server: ServerProcess, upstream: MockUpstream
) -> None:
    from provider_fakes import service_account_key

    admin = {"Authorization": f"Bearer {server.admin}"}  # type: ignore[attr-defined]
    # A service-account JSON key whose private_key is not a PEM key.
    key = json.loads(service_account_key("http://127.0.0.1:9/token"))
    key["private_key"] = "MIIEvQIBADANBg-not-a-pem-key-5b2d"
    vertex = {
        "name": "gemini",
        "external_model": {
            "name": "gemini-1.5-pro",
            "provider": "google-cloud-vertex-ai",
            "task": "llm/v1/chat",
            "google_cloud_vertex_ai_config": {
                "project_id": "proj",
                "region": "us-central1",
                "private_key_plaintext": json.dumps(key),
            },
        },
    }
    query = {"messages": [{"role": "user", "content": "x"}]}
    with httpx.Client(base_url=server.url, headers=admin, timeout=30) as client:
        working = {"served_entities": [_entity("gpt", "gpt-4", upstream.url + "/v1")]}
        created = client.post("/api/2.0/serving-endpoints", json={"name": "vx", "config": working})
        assert created.status_code == 200, created.text
        assert _poll(client, "vx")["state"]["config_update"] == "NOT_UPDATING"
        before = client.post("/serving-endpoints/vx/invocations", json=query)
        assert before.json()["choices"][0]["message"]["content"] == "reply from gpt-4"

        put = client.put("/api/2.0/serving-endpoints/vx/config", json={"served_entities": [vertex]})
        assert put.status_code == 200, put.text
        failed = _poll(client, "vx")
        assert failed["state"]["config_update"] == "UPDATE_FAILED"
        assert "its private_key is not a PEM key" in failed["state"]["config_update_message"]
        assert failed["config"]["config_version"] == 1
        assert [e["name"] for e in failed["config"]["served_entities"]] == ["gpt"]
        after = client.post("/serving-endpoints/vx/invocations", json=query)
        assert after.status_code == 200, after.text
        assert after.json()["choices"][0]["message"]["content"] == "reply from gpt-4"
        for text in (put.text, json.dumps(failed)):
            assert key["private_key"] not in text
    assert key["private_key"] not in server.log.read_text()


def _poll(client: httpx.Client, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = client.get(f"/api/2.0/serving-endpoints/{name}").json()
        if body["state"]["config_update"] != "IN_PROGRESS":
            return body
        time.sleep(0.1)
    raise TimeoutError(name)


def test_permissions_and_tokens(server: ServerProcess, upstream: MockUpstream) -> None:
    admin = {"Authorization": f"Bearer {server.admin}"}  # type: ignore[attr-defined]
    bob = {"Authorization": f"Bearer {server.user}"}  # type: ignore[attr-defined]
    body = {
        "name": "owned",
        "config": {"served_entities": [_entity("m", "gpt-4", upstream.url + "/v1")]},
    }
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/api/2.0/serving-endpoints").status_code == 401
        created = client.post("/api/2.0/serving-endpoints", json=body, headers=admin).json()
        _poll(client.__class__(base_url=server.url, headers=admin), "owned")
        # Bob may query and read (the default grant to `users`), not change or delete.
        got = client.get("/api/2.0/serving-endpoints/owned", headers=bob).json()
        assert got["permission_level"] == "CAN_QUERY"
        assert client.delete("/api/2.0/serving-endpoints/owned", headers=bob).status_code == 403
        query = {"messages": [{"role": "user", "content": "x"}]}
        assert (
            client.post("/serving-endpoints/owned/invocations", json=query, headers=bob).status_code
            == 200
        )
        # Replace the ACL: Bob may only view now.
        acl = client.put(
            f"/api/2.0/permissions/serving-endpoints/{created['id']}",
            headers=admin,
            json={
                "access_control_list": [
                    {"user_name": "bob@example.com", "permission_level": "CAN_VIEW"}
                ]
            },
        )
        assert acl.status_code == 200
        assert (
            client.post("/serving-endpoints/owned/invocations", json=query, headers=bob).status_code
            == 403
        )
        levels = client.get(
            f"/api/2.0/permissions/serving-endpoints/{created['id']}/permissionLevels", headers=bob
        ).json()
        assert [lv["permission_level"] for lv in levels["permission_levels"]] == [
            "CAN_VIEW",
            "CAN_QUERY",
            "CAN_MANAGE",
        ]
        logs = client.get("/api/2.0/serving-endpoints/owned/served-models/m/logs", headers=bob)
        assert logs.status_code == 200 and "external model openai/gpt-4" in logs.json()["logs"]
        assert client.get("/.well-known/databricks-config").status_code == 200


def test_openapi_document_is_served(server: ServerProcess) -> None:
    document = httpx.get(server.url + "/openapi.json").json()
    assert document["openapi"].startswith("3.1")
    assert "/api/2.0/serving-endpoints/{name}/config" in document["paths"]
    cancel = document["paths"]["/api/2.0/serving-endpoints/{name}/config/cancel"]["post"]
    assert {"200", "403", "404", "409"} <= set(cancel["responses"])


def test_secret_from_the_api_never_leaks(
    server: ServerProcess, upstream: MockUpstream, tmp_path: Path
) -> None:
    from engine_harness import run_cli, write_specs

    value = "sk-api-secret-0d9c8b7a6f5e4d3c"
    admin = {"Authorization": f"Bearer {server.admin}"}  # type: ignore[attr-defined]
    seen: list[str] = []
    with httpx.Client(base_url=server.url, headers=admin, timeout=30) as client:
        assert (
            client.post("/api/2.0/secrets/scopes/create", json={"scope": "leak"}).status_code == 200
        )
        client.post(
            "/api/2.0/secrets/put", json={"scope": "leak", "key": "k", "string_value": value}
        )
        listed = client.get("/api/2.0/secrets/list", params={"scope": "leak"})
        seen.append(listed.text)
        entity = _entity(
            "m", "gpt-4", upstream.url + "/v1", {"openai_api_key": "{{secrets/leak/k}}"}
        )
        seen.append(
            client.post(
                "/api/2.0/serving-endpoints",
                json={"name": "leak", "config": {"served_entities": [entity]}},
            ).text
        )
        seen.append(json.dumps(_poll(client, "leak")))
        answer = client.post(
            "/serving-endpoints/leak/invocations",
            json={"messages": [{"role": "user", "content": "x"}]},
        )
        assert answer.status_code == 200
        assert upstream.requests[-1].headers["authorization"] == f"Bearer {value}"
        seen += [
            client.get("/api/2.0/serving-endpoints").text,
            client.get("/api/2.0/serving-endpoints/leak/served-models/m/logs").text,
            client.get("/metrics").text,
        ]
    env = {"ENGINE_STATE": str(server.state)}
    spec = {"name": "leak-too", "config": {"served_entities": [entity]}}
    plan = run_cli("plan", str(write_specs(tmp_path / "specs", [spec])), "--json", env=env)
    seen += [plan.stdout, plan.stderr, run_cli("state", "show", "leak", env=env).stdout]
    for text in seen:
        assert value not in text
    assert value not in server.log.read_text()
    if str(server.state).startswith("postgresql"):
        assert value not in database_text(str(server.state))
        return
    for path in Path(server.state).parent.iterdir():
        if path.name.startswith(("state.db", "usage.db", "secrets.db")):
            assert value.encode() not in path.read_bytes(), path.name
