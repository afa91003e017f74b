"""Payload and usage tables through a real `engine serve`, read back by `engine sql`, plain
DuckDB and deltalake; the recorder's queue, stream merging and size limits in-process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import httpx
import pytest
import yaml
from deltalake import DeltaTable
from engine_harness import Engine, write_specs
from mock_http import MockUpstream
from serving_harness import ROOT, TESTS, ServerProcess, endpoint, openai_entity, openai_upstream

from engine.access.tokens import create_token

GATEWAY = {
    "usage_tracking_config": {"enabled": True},
    "inference_table_config": {
        "enabled": True,
        "catalog_name": "main",
        "schema_name": "default",
        "table_name_prefix": "chat",
    },
}
PAYLOAD_TYPES = {
    "databricks_request_id": "string",
    "client_request_id": "string",
    "request_date": "date",
    "request_time": "timestamp",
    "status_code": "integer",
    "sampling_fraction": "double",
    "execution_duration_ms": "long",
    "request": "string",
    "response": "string",
    "served_entity_id": "string",
    "logging_error_codes": "array<string>",
    "requester": "string",
}
DUCKDB_PAYLOAD_TYPES = {
    "databricks_request_id": "VARCHAR",
    "client_request_id": "VARCHAR",
    "request_date": "DATE",
    "request_time": "TIMESTAMP WITH TIME ZONE",
    "status_code": "INTEGER",
    "sampling_fraction": "DOUBLE",
    "execution_duration_ms": "BIGINT",
    "request": "VARCHAR",
    "response": "VARCHAR",
    "served_entity_id": "VARCHAR",
    "logging_error_codes": "VARCHAR[]",
    "requester": "VARCHAR",
}


def _delta_type(field: Any) -> str:
    kind = field.type
    if getattr(kind, "type", None) == "array":
        return f"array<{kind.element_type.type}>"
    return kind.type


def engine_sql(state: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", "sql", *args, "--state", str(state)],
        capture_output=True,
        text=True,
        env={
            **{k: v for k, v in os.environ.items() if k != "ENGINE_TOKEN"},
            "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}",
            **(env or {}),
        },
        cwd=ROOT,
        timeout=120,
    )


def sql_json(state: Path, query: str, *args: str) -> list[dict[str, Any]]:
    done = engine_sql(state, query, "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_rows(state: Path, query: str, n: int, timeout: float = 90) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = sql_json(state, query)
        if len(rows) >= n:
            return rows
        time.sleep(0.5)
    raise AssertionError(f"{len(rows)} rows of {n} after {timeout} s: {rows}")


@pytest.fixture(scope="module")
def upstream():  # noqa: ANN201
    with MockUpstream(openai_upstream) as server:
        yield server


@pytest.fixture
def stack(tmp_path: Path, upstream: MockUpstream):  # noqa: ANN201
    state = tmp_path / "state" / "state.db"
    engine = Engine(str(state))
    engine.secrets.create_scope("scope")
    engine.secrets.put_secret("scope", "openai", "sk-upstream-key")
    base = upstream.url + "/v1"
    embed_gateway = {
        **GATEWAY,
        "inference_table_config": {**GATEWAY["inference_table_config"], "table_name_prefix": "emb"},
    }
    specs = write_specs(
        tmp_path / "specs",
        [
            endpoint("chat", [openai_entity("gpt4", "gpt-4", base)], ai_gateway=GATEWAY),
            endpoint(
                "embed",
                [openai_entity("ada", "ada-002", base, task="llm/v1/embeddings")],
                ai_gateway=embed_gateway,
            ),
            endpoint("plain", [openai_entity("m", "model-plain", base)]),
        ],
    )
    _, report = engine.apply(specs)
    assert report.ok, report.failed
    _, token = create_token(engine.store, "alice@example.com", groups=["ml"])
    _, admin = create_token(engine.store, "root", admin=True)
    yield engine, state, token, admin, specs, base
    engine.close()


def test_payload_and_usage_rows_through_engine_serve(stack, tmp_path: Path) -> None:  # noqa: ANN001
    engine, state, token, admin, _, _ = stack
    auth = {"Authorization": f"Bearer {token}"}
    with ServerProcess(state) as server, httpx.Client(base_url=server.url, headers=auth) as client:
        server.wait_serial(engine.store.serial)
        chat_body = {
            "messages": [{"role": "user", "content": "hi"}],
            "client_request_id": "c-1",
            "usage_context": {"project": "apollo"},
        }
        assert client.post("/serving-endpoints/chat/invocations", json=chat_body).status_code == 200
        with client.stream(
            "POST",
            "/serving-endpoints/chat/invocations",
            json={"messages": [{"role": "user", "content": "stream"}], "stream": True},
        ) as streamed:
            assert streamed.status_code == 200
            list(streamed.iter_lines())
        embed = client.post("/serving-endpoints/embed/invocations", json={"input": ["a", "b"]})
        assert embed.status_code == 200
        big = {"messages": [{"role": "user", "content": "x" * (1024 * 1024 + 10)}]}
        assert client.post("/serving-endpoints/chat/invocations", json=big).status_code == 200
        assert (
            client.post(
                "/serving-endpoints/plain/invocations",
                json={"messages": [{"role": "user", "content": "p"}]},
            ).status_code
            == 200
        )
        payload = wait_rows(
            state, "SELECT * FROM main.default.chat_payload ORDER BY request_time", 3
        )
        usage = wait_rows(
            state,
            "SELECT u.*, s.endpoint_name, s.served_entity_name "
            "FROM system.serving.endpoint_usage u JOIN system.serving.served_entities s "
            "USING (served_entity_id) ORDER BY request_time",
            4,
        )
    # Chat: the body as sent, the answer, the caller and the ids.
    first, stream_row, big_row = payload
    assert json.loads(first["request"]) == chat_body
    assert json.loads(first["response"])["choices"][0]["message"]["content"] == "reply from gpt-4"
    assert first["client_request_id"] == "c-1" and first["requester"] == "alice@example.com"
    assert first["status_code"] == 200 and first["sampling_fraction"] == 1.0
    assert first["logging_error_codes"] == [] and first["execution_duration_ms"] >= 0
    assert first["request_date"] == first["request_time"][:10]
    # A stream: one payload, its chunks merged.
    merged = json.loads(stream_row["response"])
    assert merged["choices"][0]["message"] == {"role": "assistant", "content": "Hello!"}
    assert merged["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    # Over the platform's 1 MiB: the row is kept, the payload is not.
    assert big_row["request"] is None and big_row["logging_error_codes"] == [
        "MAX_REQUEST_SIZE_EXCEEDED"
    ]
    assert json.loads(big_row["response"])["choices"]
    # Usage: exact token counts (the stream's from its usage event), joined to the entities.
    by_kind = [(r["endpoint_name"], r["request_streaming"]) for r in usage]
    assert by_kind == [("chat", False), ("chat", True), ("embed", False), ("chat", False)]
    assert [(r["input_token_count"], r["output_token_count"]) for r in usage] == [
        (5, 4),
        (5, 3),
        (6, 0),
        (5, 4),
    ]
    assert usage[0]["usage_context"] == {"project": "apollo"}
    assert usage[0]["client_request_id"] == "c-1"
    assert usage[0]["databricks_request_id"] == first["databricks_request_id"]
    assert {r["served_entity_name"] for r in usage} == {"gpt4", "ada"}
    emb = sql_json(state, "SELECT request, response FROM main.default.emb_payload")
    assert json.loads(emb[0]["request"]) == {"input": ["a", "b"]}
    # The platform's column types, as Delta stores them and as plain DuckDB reads them.
    root = state.parent / "tables"
    table = DeltaTable(str(root / "main" / "default" / "chat_payload"))
    assert {f.name: _delta_type(f) for f in table.schema().fields} == PAYLOAD_TYPES
    assert table.metadata().partition_columns == ["request_date"]
    con = duckdb.connect()
    con.register("p", table.to_pyarrow_dataset())
    described = con.execute("DESCRIBE p").fetchall()
    assert {r[0]: r[1] for r in described} == DUCKDB_PAYLOAD_TYPES
    assert con.execute("SELECT count(*) FROM p").fetchone() == (3,)
    usage_table = DeltaTable(str(root / "system" / "serving" / "endpoint_usage"))
    types = {f.name: _delta_type(f) for f in usage_table.schema().fields}
    assert types["input_token_count"] == "long" and types["request_streaming"] == "boolean"
    assert types["request_time"] == "timestamp" and types["status_code"] == "integer"
    # Nothing secret on disk: no token, no upstream key, no request header.
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert token.encode() not in data and b"sk-upstream-key" not in data, path
            assert b"Bearer" not in data, path


def test_served_entities_follow_updates_and_deletes(stack) -> None:  # noqa: ANN001
    engine, state, _, _, specs, base = stack
    query = (
        "SELECT endpoint_name, served_entity_name, entity_name, entity_type, "
        "endpoint_config_version, endpoint_delete_time FROM system.serving.served_entities "
        "ORDER BY change_time, served_entity_name"
    )
    with ServerProcess(state) as server:
        server.wait_serial(engine.store.serial)
        spec = yaml.safe_load((specs / "chat.yaml").read_text())
        spec["config"]["served_entities"] = [openai_entity("gpt4o", "gpt-4o", base)]
        (specs / "chat.yaml").write_text(yaml.safe_dump(spec))
        (specs / "embed.yaml").unlink()
        _, report = engine.apply(specs)
        assert report.ok, report.failed
        server.wait_serial(engine.store.serial)
        path = state.parent / "tables" / "system" / "serving" / "served_entities"
        deadline = time.monotonic() + 60
        on_disk: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(on_disk) < 4:
            if (path / "_delta_log").is_dir():
                on_disk = DeltaTable(str(path)).to_pyarrow_table().to_pylist()
            time.sleep(0.2)
    rows = sql_json(state, query)
    got = [
        (r["endpoint_name"], r["served_entity_name"], r["endpoint_config_version"]) for r in rows
    ]
    assert got[:3] == [("chat", "gpt4", 1), ("embed", "ada", 1), ("plain", "m", 1)]
    assert got[3] == ("chat", "gpt4o", 2)
    deleted = {r["endpoint_name"] for r in rows if r["endpoint_delete_time"] is not None}
    assert deleted == {"embed"}
    assert rows[0]["entity_name"] == "gpt-4" and rows[0]["entity_type"] == "EXTERNAL_MODEL"
    # The host wrote the same projection as a Delta table plain readers can open.
    assert sorted((r["endpoint_name"], r["served_entity_name"]) for r in on_disk) == sorted(
        (r["endpoint_name"], r["served_entity_name"]) for r in rows
    )
    assert {r["endpoint_name"] for r in on_disk if r["endpoint_delete_time"]} == {"embed"}


def test_engine_sql_is_for_admins_and_reports_bad_sql_in_one_line(stack) -> None:  # noqa: ANN001
    _, state, token, admin, _, _ = stack
    denied = engine_sql(state, "SELECT 1", env={"ENGINE_TOKEN": token})
    assert denied.returncode == 1 and denied.stdout == ""
    assert denied.stderr.strip().splitlines() == [
        "error: only an admin or the operator may query the tables; $ENGINE_TOKEN is "
        "alice@example.com's"
    ]
    stranger = engine_sql(state, "SELECT 1", env={"ENGINE_TOKEN": "not-a-token"})
    assert stranger.returncode != 0 and "not a token of this state" in stranger.stderr
    as_admin = engine_sql(
        state,
        "SELECT count(*) AS n FROM system.serving.endpoint_usage",
        env={"ENGINE_TOKEN": admin},
    )
    assert as_admin.returncode == 0, as_admin.stderr
    assert as_admin.stdout.split() == ["n", "-", "0", "(1", "row)"]
    for bad in (
        "SELEC 1",
        "SELECT * FROM main.default.nope_payload",
        "SELECT nope FROM system.serving.endpoint_usage",
    ):
        done = engine_sql(state, bad)
        assert done.returncode == 1, (bad, done.stdout)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert "Traceback" not in done.stderr
    # The query reads the tables and nothing else.
    outside = engine_sql(state, "SELECT * FROM read_text('/etc/hostname')")
    assert outside.returncode == 1 and "disabled" in outside.stderr


def test_ten_thousand_requests_ten_thousand_rows_after_sigterm(stack, tmp_path: Path) -> None:  # noqa: ANN001
    engine, state, token, _, _, _ = stack
    total, concurrency = 10_000, 64
    # The tables go where $ENGINE_TABLES_ROOT says; `engine sql --tables-root` reads them there.
    root = tmp_path / "elsewhere"
    with ServerProcess(state, env={"ENGINE_TABLES_ROOT": str(root)}) as server:
        server.wait_serial(engine.store.serial)

        async def load() -> list[int]:
            statuses: list[int] = []
            connector = aiohttp.TCPConnector(limit=concurrency)
            timeout = aiohttp.ClientTimeout(total=300)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                queue = list(range(total))

                async def worker() -> None:
                    while queue:
                        i = queue.pop()
                        async with session.post(
                            server.url + "/serving-endpoints/chat/invocations",
                            json={"messages": [{"role": "user", "content": f"m{i}"}]},
                            headers={"Authorization": f"Bearer {token}"},
                        ) as response:
                            await response.read()
                            statuses.append(response.status)

                await asyncio.gather(*(worker() for _ in range(concurrency)))
            return statuses

        statuses = asyncio.run(load())
        assert statuses.count(200) == total
    # The server got SIGTERM right after the last answer (uvicorn stops gracefully, then
    # re-raises the signal): every row was written on the way out.
    assert server.process is not None and server.process.returncode in (0, -signal.SIGTERM)
    counts = sql_json(
        state,
        "SELECT (SELECT count(*) FROM main.default.chat_payload) AS payload, "
        "(SELECT count(*) FROM system.serving.endpoint_usage) AS usage, "
        "(SELECT count(DISTINCT databricks_request_id) FROM main.default.chat_payload) AS ids",
        "--tables-root",
        str(root),
    )
    assert counts == [{"payload": total, "usage": total, "ids": total}]
    messages = sql_json(
        state,
        "SELECT count(DISTINCT json_extract_string(request, '$.messages[0].content')) AS n "
        "FROM main.default.chat_payload",
        "--tables-root",
        str(root),
    )
    assert messages == [{"n": total}]
    assert not (state.parent / "tables" / "main").exists()


# -- in-process: the recorder, stream merging, size limits, names ---------------------------


def _route(name: str = "chat") -> Any:
    from engine.gateway._table import EndpointRoute
    from engine.tables._names import TableName

    return EndpointRoute(
        name=name,
        id="e1",
        task="llm/v1/chat",
        config_version=1,
        entities={},
        order=[],
        cumulative=[],
        targets=[],
        rate_rules=(),
        usage_tracking=True,
        fallback=False,
        payload_table=TableName("main", "default", f"{name}_payload"),
    )


def test_a_full_queue_drops_and_counts_and_close_writes_the_rest(tmp_path: Path) -> None:
    from engine.access.tokens import Principal
    from engine.gateway._metrics import Metrics
    from engine.gateway._table import ServedEntity
    from engine.tables._rows import Exchange
    from engine.tables.recorder import TableRecorder

    metrics = Metrics()
    recorder = TableRecorder(tmp_path, metrics, workspace_id="w", capacity=5, flush_seconds=3600)
    route, entity = _route(), ServedEntity("gpt4", 7, None)
    alice = Principal("alice@example.com", "user", ("ml",), False)
    # Not started: nothing drains the queue, so the sixth record on finds it full.
    for i in range(8):
        body = {"messages": [{"role": "user", "content": f"m{i}"}]}
        recorder.record(route, entity, alice, 200, 0.01, 1, 2, Exchange(body))
    assert metrics.tables_dropped == {"chat": 3}
    text = metrics.render()
    assert 'engine_tables_dropped_total{endpoint="chat"} 3' in text
    # Another team's caller does not see the chat endpoint's series.
    assert 'endpoint="chat"' not in metrics.render(visible=lambda e: e != "chat")
    recorder.close()
    payload = DeltaTable(str(tmp_path / "main" / "default" / "chat_payload")).to_pyarrow_table()
    usage = DeltaTable(str(tmp_path / "system" / "serving" / "endpoint_usage")).to_pyarrow_table()
    assert payload.num_rows == 5 and usage.num_rows == 5
    assert sorted(
        json.loads(r)["messages"][0]["content"] for r in payload["request"].to_pylist()
    ) == [f"m{i}" for i in range(5)]
    assert usage["requester"].to_pylist() == ["alice@example.com"] * 5


def test_streams_merge_into_one_answer() -> None:
    from engine.tables._rows import aggregate_stream

    def frame(data: Any) -> bytes:
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    chat = aggregate_stream(
        [
            frame(
                {
                    "id": "a",
                    "object": "chat.completion.chunk",
                    "model": "m",
                    "choices": [
                        {"index": 0, "delta": {"role": "assistant", "content": "Hel"}},
                        {"index": 1, "delta": {"role": "assistant", "content": "Bon"}},
                    ],
                }
            ),
            frame(
                {
                    "id": "a",
                    "object": "chat.completion.chunk",
                    "choices": [
                        {"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"},
                        {"index": 1, "delta": {"content": "jour"}, "finish_reason": "length"},
                    ],
                }
            ),
            frame({"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 4}}),
            b"data: [DONE]\n\n",
        ]
    )
    assert chat == {
        "id": "a",
        "model": "m",
        "object": "chat.completion",
        "usage": {"prompt_tokens": 2, "completion_tokens": 4},
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": {"role": "assistant", "content": "Bonjour"},
                "finish_reason": "length",
            },
        ],
    }
    broken = aggregate_stream(
        [
            frame({"object": "text_completion", "choices": [{"index": 0, "text": "par"}]}),
            frame({"error_code": "BAD_GATEWAY", "message": "upstream went away", "error": {}}),
        ]
    )
    assert broken["choices"] == [{"index": 0, "text": "par"}]
    assert (broken["error_code"], broken["message"]) == ("BAD_GATEWAY", "upstream went away")


def test_payloads_over_one_mib_are_not_stored() -> None:
    from engine.tables._names import TableName
    from engine.tables._rows import (
        MAX_PAYLOAD_BYTES,
        Exchange,
        RequestRecord,
        payload_row,
    )

    def row(exchange: Exchange) -> dict[str, Any]:
        table = TableName("main", "default", "p_payload")
        record = RequestRecord(1e9, 0.5, "e", 1, "bob", 200, 1, 1, table, False, exchange)
        return payload_row(record)

    # Multi-byte characters count as bytes: 300,000 x 4 bytes is over 1 MiB in UTF-8.
    big_answer = Exchange({"prompt": "p"}, response={"choices": [{"text": "\U0001f600" * 300_000}]})
    assert row(big_answer)["response"] is None
    assert row(big_answer)["logging_error_codes"] == ["MAX_RESPONSE_SIZE_EXCEEDED"]
    assert json.loads(row(big_answer)["request"]) == {"prompt": "p"}
    stream = Exchange({"prompt": "p"}, streamed=True)
    chunk = (
        b"data: " + json.dumps({"choices": [{"index": 0, "text": "y" * 4096}]}).encode() + b"\n\n"
    )
    for _ in range(17 * MAX_PAYLOAD_BYTES // len(chunk)):
        stream.keep_frame(chunk)
    assert stream.truncated and stream.frames == []  # memory stays bounded
    assert row(stream)["logging_error_codes"] == ["MAX_RESPONSE_SIZE_EXCEEDED"]
    small = row(Exchange({"prompt": "p"}, response={"ok": 1}))
    assert small["request_date"] == 11574 and small["execution_duration_ms"] == 500


def test_three_part_names_are_rewritten_outside_strings_and_comments() -> None:
    from engine.tables.sql import rewrite_names

    names = {"system.serving.endpoint_usage", "main.default.my-chat_payload"}
    sql = (
        "SELECT 'system.serving.endpoint_usage', u.status_code -- system.serving.endpoint_usage\n"
        "FROM System.Serving.Endpoint_Usage u JOIN `main`.`default`.`my-chat_payload` p "
        "ON p.x = u.x /* main.default.my-chat_payload */ WHERE s.config.provider = 'a''b'"
    )
    assert rewrite_names(sql, names) == (
        "SELECT 'system.serving.endpoint_usage', u.status_code -- system.serving.endpoint_usage\n"
        'FROM "system.serving.endpoint_usage" u JOIN "main.default.my-chat_payload" p '
        "ON p.x = u.x /* main.default.my-chat_payload */ WHERE s.config.provider = 'a''b'"
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"catalog_name": "main", "schema_name": "de/fault"}, "schema_name` must be letters"),
        ({"catalog_name": "..", "schema_name": "x"}, "catalog_name` must be letters"),
        ({"catalog_name": "system", "schema_name": "serving"}, "holds the system tables"),
        (
            {"catalog_name": "main", "schema_name": "d", "table_name_prefix": "a b"},
            "table_name_prefix` must be letters",
        ),
    ],
)
def test_table_names_that_cannot_be_folders_are_refused(
    table: dict[str, str], message: str
) -> None:
    from schemas import check_endpoint

    spec = endpoint("chat", [openai_entity("gpt4", "gpt-4", "http://127.0.0.1:1/v1")])
    spec["ai_gateway"] = {"inference_table_config": {"enabled": True, **table}}
    from schemas import EndpointSpec

    diagnostics = list(check_endpoint(EndpointSpec.model_validate(spec)))
    assert [d.rule for d in diagnostics] == ["R7"], diagnostics
    assert message in diagnostics[0].message
