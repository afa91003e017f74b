"""Databricks Model Serving: another workspace's serving endpoint, which speaks OpenAI's format.

Upstream API: https://docs.databricks.com/api/workspace/servingendpoints/query

    POST https://my-ws.cloud.databricks.com/serving-endpoints/my-llm/invocations
    Authorization: Bearer dapi...
    {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16}
    -> {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",
        "content": "Hello"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 8, ...}}

One URL serves every task (the body says which); the external model's `name` is the remote
endpoint's name, so `model` is not sent. Streams are OpenAI chunks in SSE `data:` lines.
"""

from __future__ import annotations

from urllib.parse import quote

from ._base import Json
from ._client import UpstreamClient
from ._registry import register_adapter
from .openai import OpenAICompatibleAdapter, credential, require

__all__ = ["DatabricksModelServingAdapter"]


@register_adapter
class DatabricksModelServingAdapter(OpenAICompatibleAdapter):
    PROVIDER = "databricks-model-serving"

    def __init__(self, model: Json, client: UpstreamClient) -> None:
        super().__init__(model, client)
        config: Json = model.get("databricks_model_serving_config") or {}
        p = self.PROVIDER
        workspace = require(
            config.get("databricks_workspace_url"),
            p,
            "databricks_model_serving_config.databricks_workspace_url",
        )
        if "://" not in workspace:
            workspace = f"https://{workspace}"  # workspace URLs are often written as bare hosts
        self.endpoint_url = (
            f"{workspace.rstrip('/')}/serving-endpoints/{quote(self.name, safe='')}/invocations"
        )
        self.token = require(
            credential(config, "databricks_api_token"),
            p,
            "databricks_model_serving_config.databricks_api_token",
        )
        # The URL names the endpoint; the remote endpoint picks its own model.
        self.upstream_model = None

    def _url(self, route: str) -> tuple[str, dict[str, str] | None]:
        return self.endpoint_url, None

    async def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def _secrets(self) -> list[str | None]:
        return [self.token]
