"""The query body: `POST /serving-endpoints/{name}/invocations` (the SDK's `query` call).

Not a spec: a request to the data plane. Its extra policy is ``extra="allow"``: a chat or
completions body carries provider parameters (`top_p`, `tools`, `response_format`...) that the
adapters pass on, so only the fields the platform defines are named and typed here. The data
plane checks the same types on its hot path without building this model (`check_body`); the
model is the documented shape, the JSON Schema's source, and what the SDK-drift test reads.

Databricks-only fields never reach a provider: `client_request_id` and `usage_context` are kept
for the usage and payload records, `extra_params` is merged into the body (the platform: "extra
parameters ... used ONLY for completions, chat, and embeddings external & foundation model
serving endpoints").
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, StrictFloat, StrictInt, StrictStr

__all__ = ["ChatMessage", "DataframeSplit", "GATEWAY_ONLY_FIELDS", "QueryRequest"]

# Query fields that are the gateway's, not the provider's.
GATEWAY_ONLY_FIELDS = ("client_request_id", "usage_context", "extra_params")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: StrictStr
    content: Any = None


class DataframeSplit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    columns: list[Any] | None = None
    data: list[Any] | None = None
    index: list[int] | None = None


class QueryRequest(BaseModel):
    """A query, as the SDK's `ServingEndpointsAPI.query` sends it."""

    model_config = ConfigDict(extra="allow")

    # The OpenAI-compatible routes name the endpoint here.
    model: StrictStr | None = None
    client_request_id: StrictStr | None = None
    usage_context: dict[str, StrictStr] | None = None
    extra_params: dict[str, StrictStr] | None = None
    messages: list[ChatMessage] | None = None
    prompt: Any = None
    input: Any = None
    inputs: Any = None
    instances: list[Any] | None = None
    dataframe_records: list[Any] | None = None
    dataframe_split: DataframeSplit | None = None
    max_tokens: StrictInt | None = None
    n: StrictInt | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stream: StrictBool | None = None
    temperature: StrictFloat | StrictInt | None = None
