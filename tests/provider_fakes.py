"""Four providers' wire formats on one loopback server, scripted by the model name.

    with MockUpstream(ScriptedProviders()) as server:
        entity("anthropic", "s401", server.url)    # an Anthropic that answers 401

The model name says what the "provider" does, so one server serves every case of a test:

    ok              a normal answer (usage included)
    s<NNN>          HTTP NNN with the provider's own error body, which quotes the caller's key
    s429-retry<S>   429 with Retry-After: S
    slow            a normal answer, SLOW_S seconds late
    usage-str       a normal answer whose usage is the string "x"
    usage-field     a normal answer whose prompt token count is the string "many"

Wire formats: OpenAI (`/v1/chat/completions`), Anthropic (`/v1/messages`), Google Vertex AI
(`/token` then `.../models/<model>:generateContent`) and Amazon Bedrock (Titan,
`/model/<model>/invoke`). Other tests' fakes check each request's shape; these check answers.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any
from urllib.parse import unquote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mock_http import MockResponse, RecordedRequest

SLOW_S = 6.0
VERTEX_TOKEN = "ya29.vertex-access-token-5e1d"
PROVIDERS = ("openai", "anthropic", "google-cloud-vertex-ai", "amazon-bedrock")
_VERTEX_PATH = re.compile(r"/v1/projects/[^/]+/locations/[^/]+/publishers/google/models/([^:]+):")
_BEDROCK_PATH = re.compile(r"/model/([^/]+)/invoke")


@functools.cache
def private_pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def service_account_key(token_uri: str) -> str:
    """A Google service-account JSON key whose token endpoint is `token_uri`."""
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "proj",
            "private_key_id": "0123456789abcdef",
            "private_key": private_pem(),
            "client_email": "gateway@proj.iam.gserviceaccount.com",
            "client_id": "1234567890",
            "token_uri": token_uri,
        }
    )


def external_model(
    provider: str,
    model: str,
    base: str,
    key: str,
    *,
    key_id: str = "AKIDEXAMPLE",
    task: str = "llm/v1/chat",
) -> dict[str, Any]:
    """An `external_model` block for `provider` pointed at `base`; `key` is its credential
    (for Vertex the service-account JSON key; for Bedrock the secret key, `key_id` its id)."""
    block: dict[str, Any] = {"name": model, "provider": provider, "task": task}
    if provider == "openai":
        block["openai_config"] = {"openai_api_key": key, "openai_api_base": f"{base}/v1"}
    elif provider == "anthropic":
        block["anthropic_config"] = {"anthropic_api_key": key, "anthropic_api_base": base}
    elif provider == "google-cloud-vertex-ai":
        block["google_cloud_vertex_ai_config"] = {
            "project_id": "proj",
            "region": "us-central1",
            "private_key": key,
            "vertex_api_base": base,
        }
    elif provider == "amazon-bedrock":
        block["amazon_bedrock_config"] = {
            "aws_region": "us-east-1",
            "bedrock_provider": "amazon",
            "aws_access_key_id": key_id,
            "aws_secret_access_key": key,
            "bedrock_api_base": base,
        }
    else:
        raise ValueError(provider)
    return block


class ScriptedProviders:
    """The handler for a MockUpstream: answers in the wire format the path asks for."""

    def __call__(self, request: RecordedRequest) -> MockResponse:
        if request.path == "/token":
            token = {"access_token": VERTEX_TOKEN, "expires_in": 3600, "token_type": "Bearer"}
            return MockResponse(json=token)
        body = request.json() if request.body else {}
        if request.path == "/v1/chat/completions":
            wire, model = "openai", body.get("model", "")
        elif request.path == "/v1/messages":
            wire, model = "anthropic", body.get("model", "")
        elif match := _VERTEX_PATH.match(request.path):
            wire, model = "vertex", unquote(match.group(1))
        elif match := _BEDROCK_PATH.match(request.path):
            wire, model = "bedrock", unquote(match.group(1))
        else:
            return MockResponse(404, json={"error": f"no route {request.path}"})
        return _answer(wire, model, _caller_key(request))


def _caller_key(request: RecordedRequest) -> str:
    """The credential the engine sent, as a careless provider quotes it back."""
    headers = request.headers
    if "x-api-key" in headers:
        return headers["x-api-key"]
    return headers.get("authorization", "").removeprefix("Bearer ").strip()


def _answer(wire: str, model: str, key: str) -> MockResponse:
    if model.startswith("s") and model[1:4].isdigit():
        status = int(model[1:4])
        headers = {}
        if model.startswith("s429-retry"):
            headers["Retry-After"] = model.removeprefix("s429-retry")
        return _error(wire, status, f"{wire} says no ({status}); key {key} was refused", headers)
    usage: Any = None
    if model == "usage-str":
        usage = "x"
    elif model == "usage-field":
        usage = "many"
    answer = _success(wire, model, usage)
    if model == "slow":
        answer.delay = SLOW_S
    return answer


def _error(wire: str, status: int, message: str, headers: dict[str, str]) -> MockResponse:
    if wire == "openai":
        body: Any = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    elif wire == "anthropic":
        body = {"type": "error", "error": {"type": "api_error", "message": message}}
    elif wire == "vertex":
        body = {"error": {"code": status, "message": message, "status": "FAILED_PRECONDITION"}}
    else:
        body = {"message": message}
        headers = {**headers, "x-amzn-ErrorType": "ValidationException"}
    return MockResponse(status, json=body, headers=headers)


def _success(wire: str, model: str, bad_usage: Any) -> MockResponse:
    """A normal answer; `bad_usage` "x" replaces the usage block, "many" one count in it."""
    if wire == "openai":
        usage: Any = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        body: dict[str, Any] = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"openai {model}"},
                    "finish_reason": "stop",
                }
            ],
        }
        key, count = "usage", "prompt_tokens"
    elif wire == "anthropic":
        usage = {"input_tokens": 5, "output_tokens": 2}
        body = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": f"anthropic {model}"}],
            "stop_reason": "end_turn",
        }
        key, count = "usage", "input_tokens"
    elif wire == "vertex":
        usage = {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7}
        body = {
            "candidates": [
                {
                    "index": 0,
                    "content": {"role": "model", "parts": [{"text": f"vertex {model}"}]},
                    "finishReason": "STOP",
                }
            ]
        }
        key, count = "usageMetadata", "promptTokenCount"
    else:
        usage = 5
        body = {
            "results": [
                {"tokenCount": 2, "outputText": f"bedrock {model}", "completionReason": "FINISH"}
            ]
        }
        key, count = "inputTextTokenCount", "inputTextTokenCount"
    if bad_usage == "x":
        usage = "x"
    elif bad_usage == "many":
        usage = "many" if key == count else {**usage, count: "many"}
    body[key] = usage
    return MockResponse(json=body)
