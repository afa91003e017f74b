"""Read-your-writes: once a control-plane call has answered, the next query to the same host
sees what it changed, however long the host's own state polling would take.

The host runs with a state poll interval of an hour, so nothing but the control plane's own
catch-up can bring a change into the routing table in time: without it, each of these fails
every time (an endpoint the SDK saw READY answers 404; a rate limit set through the SDK is not
enforced).
"""

from __future__ import annotations

import httpx
import pytest
from engine_harness import Engine
from mock_http import MockUpstream
from pg_fixtures import module_state
from serving_harness import ServerProcess, openai_upstream

from engine.access.tokens import create_token


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(openai_upstream) as server:
        yield server


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def host(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("ryw")
    with pytest.MonkeyPatch.context() as env:
        state = module_state(request, root, env)
        engine = Engine(state)
        _, admin = create_token(engine.store, "admin@example.com", admin=True)
        engine.close()
        poll = {"ENGINE_STATE_POLL_INTERVAL": "3600"}
        with ServerProcess(state, env=poll, log_dir=root) as process:
            process.admin = admin  # type: ignore[attr-defined]
            yield process


def _workspace(host: ServerProcess):  # noqa: ANN202
    from databricks.sdk import WorkspaceClient
    from databricks.sdk.core import Config

    return WorkspaceClient(
        config=Config(host=host.url, token=host.admin, retry_timeout_seconds=5)  # type: ignore[attr-defined]
    )


def _chat(host: ServerProcess, name: str) -> httpx.Response:
    return httpx.post(
        host.url + "/serving-endpoints/chat/completions",
        headers={"Authorization": f"Bearer {host.admin}"},  # type: ignore[attr-defined]
        json={"model": name, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )


def _served_entity(upstream: MockUpstream, model: str):  # noqa: ANN202
    from databricks.sdk.service.serving import (
        ExternalModel,
        ExternalModelProvider,
        OpenAiConfig,
        ServedEntityInput,
    )

    return ServedEntityInput(
        name="gpt",
        external_model=ExternalModel(
            name=model,
            provider=ExternalModelProvider.OPENAI,
            task="llm/v1/chat",
            openai_config=OpenAiConfig(
                openai_api_base=upstream.url + "/v1", openai_api_key_plaintext="sk-ryw"
            ),
        ),
    )


def test_endpoint_seen_ready_answers_at_once(host: ServerProcess, upstream: MockUpstream) -> None:
    from databricks.sdk.service.serving import EndpointCoreConfigInput

    ws = _workspace(host)
    ready = ws.serving_endpoints.create_and_wait(
        name="ryw-chat",
        config=EndpointCoreConfigInput(
            name="ryw-chat", served_entities=[_served_entity(upstream, "gpt-4")]
        ),
    )
    assert ready.state.ready.value == "READY"
    answer = _chat(host, "ryw-chat")
    assert answer.status_code == 200, answer.text
    assert "reply from gpt-4" in answer.text

    # A config update seen NOT_UPDATING serves the new model on the very next query.
    ws.serving_endpoints.update_config_and_wait(
        name="ryw-chat", served_entities=[_served_entity(upstream, "gpt-4o")]
    )
    assert "reply from gpt-4o" in _chat(host, "ryw-chat").text


def test_rate_limit_set_through_the_sdk_applies_to_the_next_call(
    host: ServerProcess, upstream: MockUpstream
) -> None:
    from databricks.sdk.service.serving import (
        EndpointCoreConfigInput,
        RateLimit,
        RateLimitKey,
        RateLimitRenewalPeriod,
    )

    ws = _workspace(host)
    ws.serving_endpoints.create_and_wait(
        name="ryw-limited",
        config=EndpointCoreConfigInput(
            name="ryw-limited", served_entities=[_served_entity(upstream, "gpt-4")]
        ),
    )
    assert _chat(host, "ryw-limited").status_code == 200
    ws.serving_endpoints.put(
        name="ryw-limited",
        rate_limits=[
            RateLimit(
                calls=2, key=RateLimitKey.ENDPOINT, renewal_period=RateLimitRenewalPeriod.MINUTE
            )
        ],
    )
    codes = [_chat(host, "ryw-limited").status_code for _ in range(3)]
    assert codes == [200, 200, 429]

    # Lifting the limit is seen as soon as the call returns, too.
    ws.serving_endpoints.put(name="ryw-limited", rate_limits=[])
    assert _chat(host, "ryw-limited").status_code == 200
