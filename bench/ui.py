"""Render time of the Serving UI's pages with 1,000 endpoints and 100,000 usage records, next
to the REST routes that read the same state and to the same pages on a 10-endpoint state, all
in the same run.

Two states are written straight through the state store (begin_update, add_entity,
activate: what an apply records) and the usage recorder (what the gateway writes):

| state | endpoints | usage records (last 3 h)                                   |
|-------|-----------|------------------------------------------------------------|
| big   | 1,000     | 100,000: half on ep-0000 (the endpoint page timed), the    |
|       |           | other half spread over the rest                            |
| small | 10        | 1,000: half on ep-0000                                     |

Each endpoint serves one external model (its key a secret reference), has a `team` tag, usage
tracking on, and the history of one create. One `engine serve` per state, both running; a
browser session is signed in on each through /ml/signin, then each page is fetched N times from
each server, interleaved (one request at a time, after warm-up), over loopback; the time is
from request to the last byte, as a browser waits for it.

    python bench/ui.py                   # 200 fetches per page
    python bench/ui.py --requests 50
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from gateway import ROOT, free_port, wait_http

sys.path.insert(0, str(ROOT))

from engine.access.tokens import create_token  # noqa: E402
from engine.gateway._usage import UsageRecord, usage_recorder_for  # noqa: E402
from engine.secrets.store import secret_store_for_state  # noqa: E402
from engine.state import open_state  # noqa: E402
from schemas import DeploymentState, now_ms  # noqa: E402

GOAL_MS = 200.0  # p95 of each UI page with 1,000 endpoints


def _spec(name: str, i: int) -> dict:
    return {
        "name": name,
        "config": {
            "served_entities": [
                {
                    "name": "m",
                    "external_model": {
                        "name": "gpt-4o",
                        "provider": "openai",
                        "task": "llm/v1/chat",
                        "openai_config": {
                            "openai_api_key": "{{secrets/bench/openai}}",
                            "openai_api_base": "http://127.0.0.1:9/v1",
                        },
                    },
                }
            ],
            "traffic_config": {"routes": [{"served_entity_name": "m", "traffic_percentage": 100}]},
        },
        "tags": [{"key": "team", "value": f"t{i % 20}"}],
        "ai_gateway": {"usage_tracking_config": {"enabled": True}},
    }


def build_state(root: Path, endpoints: int, records: int) -> tuple[Path, str]:
    """A state with `endpoints` ready endpoints and `records` usage records; an admin token."""
    state = root / "state.db"
    store = open_state(state)
    for i in range(endpoints):
        name = f"ep-{i:04d}"
        spec = _spec(name, i)
        store.begin_update(name, stack="bench", desired=spec, version=1, actor="admin@bench")
        entity = spec["config"]["served_entities"][0]
        eid = store.add_entity(
            name, name="m", fingerprint=f"fp{i}", config=entity, config_version=1
        )
        store.update_entity(eid, deployment=DeploymentState.READY, message="")
        store.activate(name, keep=[eid], actor="admin@bench", summary={"message": "created"})
    token = create_token(store, "admin@bench", admin=True)[1]
    store.close()
    secrets = secret_store_for_state(state)
    secrets.create_scope("bench")
    secrets.put_secret("bench", "openai", "sk-bench")
    secrets.close()
    recorder = usage_recorder_for(state)
    recorder.start()
    rng = random.Random(7)
    now = now_ms()
    for n in range(records):
        target = "ep-0000" if n % 2 == 0 else f"ep-{rng.randrange(1, endpoints):04d}"
        recorder.record(
            UsageRecord(
                at_ms=now - rng.randrange(3 * 3_600_000),
                endpoint=target,
                entity="m",
                principal="admin@bench",
                status=429 if rng.random() < 0.02 else 200,
                latency_ms=rng.uniform(20, 900),
                prompt_tokens=rng.randrange(10, 400),
                completion_tokens=rng.randrange(10, 400),
            )
        )
    recorder.close()
    return state, token


def serve(state: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "ENGINE_STATE": str(state), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--port", str(port)]
        + ["--log-level", "warning"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", timeout=120)
    return proc, url


def sign_in(url: str, token: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    answer = client.post("/ml/signin", data={"token": token})
    assert answer.status_code == 303 and "engine_ui" in client.cookies, answer.text
    return client


def timings(
    clients: dict[str, httpx.Client], path: str, n: int, headers: dict | None = None
) -> dict[str, list[float]]:
    """`n` fetches of `path` from each server, interleaved (small, big, small, ...), so a
    machine busy with other work slows both sides alike."""
    for client in clients.values():
        for _ in range(5):
            assert client.get(path, headers=headers).status_code == 200
    out: dict[str, list[float]] = {label: [] for label in clients}
    for _ in range(n):
        for label, client in clients.items():
            started = time.perf_counter()
            answer = client.get(path, headers=headers)
            out[label].append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200, (path, answer.status_code, answer.text[:200])
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


PAGES = [
    ("UI list, page 1", "/ml/endpoints", False),
    ("UI list, filtered", "/ml/endpoints?q=ep-09&tag=team%3Dt3&state=ready", False),
    ("UI list, page 20", "/ml/endpoints?page=20", False),
    ("UI endpoint page", "/ml/endpoints/ep-0000", False),
    ("UI status fragment", "/ml/endpoints/ep-0000/status", False),
    ("REST list", "/api/2.0/serving-endpoints", True),
    ("REST get", "/api/2.0/serving-endpoints/ep-0000", True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    sizes = {"small": (10, 1000), "big": (args.endpoints, args.records)}
    results: dict[tuple[str, str], list[float]] = {}
    servers, clients, tokens = [], {}, {}
    try:
        for label, (endpoints, records) in sizes.items():
            started = time.perf_counter()
            (work / label).mkdir()
            state, tokens[label] = build_state(work / label, endpoints, records)
            built = time.perf_counter() - started
            print(f"{label}: {endpoints} endpoints, {records} usage records in {built:.1f} s")
            proc, url = serve(state)
            servers.append(proc)
            clients[label] = sign_in(url, tokens[label])
        for name, path, rest in PAGES:
            for label, client in clients.items():
                client.headers.pop("authorization", None)
                if rest:
                    client.headers["authorization"] = f"Bearer {tokens[label]}"
            for label, values in timings(clients, path, args.requests).items():
                results[label, name] = values
    finally:
        for client in clients.values():
            client.close()
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=30)
    print()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(
        f"machine: {platform.machine()}, nproc {os.cpu_count()}, Python {platform.python_version()}"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    head = (
        f"{'page':<20} {'small p50':>10} {'small p95':>10} {'big p50':>9} {'big p95':>9}"
        f" {'big/small p95':>14}"
    )
    print(head)
    print("-" * len(head))
    failed = []
    for name, _path, rest in PAGES:
        small, big = results["small", name], results["big", name]
        ratio = pct(big, 0.95) / pct(small, 0.95)
        print(
            f"{name:<20} {pct(small, 0.5):>8.1f}ms {pct(small, 0.95):>8.1f}ms"
            f" {pct(big, 0.5):>7.1f}ms {pct(big, 0.95):>7.1f}ms {ratio:>13.2f}x"
        )
        if not rest and pct(big, 0.95) > GOAL_MS:
            failed.append(name)
    ui_list = pct(results["big", "UI list, page 1"], 0.95)
    rest_list = pct(results["big", "REST list"], 0.95)
    print(f"\nUI list p95 / REST list p95 (1,000 endpoints): {ui_list / rest_list:.2f}x")
    print(
        f"goal: every UI page p95 < {GOAL_MS:.0f} ms with {args.endpoints} endpoints: "
        + ("MET" if not failed else "NOT MET (" + ", ".join(failed) + ")")
    )


if __name__ == "__main__":
    main()
