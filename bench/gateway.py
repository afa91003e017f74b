"""Gateway overhead: requests/s and p50/p99 through `engine serve` vs straight to the upstream.

Both paths hit the same fast static upstream (nginx returning a canned OpenAI chat response;
a uvloop mock when nginx is missing), driven by wrk, interleaved (direct, gateway, direct,
gateway...) at concurrency 1, 16 and 64, one worker each. The gateway's CPU time per request
comes from /proc/<pid>/stat over its runs. Reference points on this kind of machine (issue 4):
MLflow AI gateway ~1,200 req/s at c=64 and 0.8 ms CPU/request; LiteLLM ~100 req/s, 10 ms.

    python bench/gateway.py                 # 3 rounds x 5 s per point
    python bench/gateway.py --seconds 2 --rounds 1
    python bench/gateway.py --baseline-tree ../old   # A/B: also a gateway from another checkout
                                                     # (e.g. `git worktree add ../old COMMIT`),
                                                     # interleaved in the same rounds
    python bench/gateway.py --tables   # also a gateway whose endpoint logs payloads and tracks
                                       # usage (Delta tables), interleaved: tables on vs off
    python bench/gateway.py --pii                    # also an endpoint of the same gateway with
                                                     # PII guardrails (MASK, input and output)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESPONSE = json.dumps(
    {
        "id": "r",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
)
REQUEST = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
MLFLOW_RPS_C64 = 1200.0
MLFLOW_CPU_MS = 0.8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start_upstream(work: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    nginx = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if nginx:
        conf = work / "nginx.conf"
        body = RESPONSE.replace("'", "\\'")
        conf.write_text(
            textwrap.dedent(
                f"""
                worker_processes 1; daemon off; pid {work}/nginx.pid;
                error_log {work}/nginx-error.log;
                events {{ worker_connections 4096; }}
                http {{
                  access_log off; keepalive_requests 10000000;
                  client_body_temp_path {work}/b; proxy_temp_path {work}/p;
                  fastcgi_temp_path {work}/f; uwsgi_temp_path {work}/u; scgi_temp_path {work}/s;
                  server {{ listen 127.0.0.1:{port};
                    location / {{ default_type application/json; return 200 '{body}'; }} }}
                }}
                """
            )
        )
        proc = subprocess.Popen([nginx, "-c", str(conf)], stderr=subprocess.DEVNULL)
        kind = "nginx"
    else:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_static_upstream.py")), str(port)]
        )
        kind = "uvloop mock"
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/")
    return proc, url, kind


PII_ENDPOINT = """
name: bench-pii
config:
  served_entities:
    - name: m
      external_model:
        name: m
        provider: openai
        task: llm/v1/chat
        openai_config:
          openai_api_key_plaintext: sk-bench
          openai_api_base: {upstream}/v1
ai_gateway:
  guardrails:
    input: {{pii: {{behavior: MASK}}}}
    output: {{pii: {{behavior: MASK}}}}
"""


# Appended to the bench endpoint by --tables: payload logging and usage tracking on.
TABLES = """
            ai_gateway:
              usage_tracking_config: {enabled: true}
              inference_table_config:
                {enabled: true, catalog_name: main, schema_name: default, table_name_prefix: bench}
"""


def start_gateway(
    work: Path,
    upstream: str,
    root: Path = ROOT,
    *,
    pii: bool = False,
    tables: bool = False,
    spec_extra: str = "",
    serve_args: tuple[str, ...] = (),
    wrap: list[str] | None = None,
    health_timeout: float = 120,
) -> tuple[subprocess.Popen[bytes], str, str]:
    """`engine serve` of the checkout at `root` (its own state under `work`): the `bench`
    endpoint (an OpenAI model at `upstream`, plus `spec_extra`'s top-level YAML), `serve_args`
    on its command line, under `wrap` (e.g. valgrind) if given."""
    env = {
        **os.environ,
        "ENGINE_STATE": str(work / "state" / "state.db"),
        "PYTHONPATH": str(root),
    }
    specs = work / "specs"
    specs.mkdir(parents=True)
    (specs / "bench.yaml").write_text(
        textwrap.dedent(
            f"""
            name: bench
            config:
              served_entities:
                - name: m
                  external_model:
                    name: m
                    provider: openai
                    task: llm/v1/chat
                    openai_config:
                      openai_api_key_plaintext: sk-bench
                      openai_api_base: {upstream}/v1
            """
        )
        + textwrap.dedent(spec_extra)
        + (textwrap.dedent(TABLES) if tables else "")
    )
    if pii:
        (specs / "bench-pii.yaml").write_text(PII_ENDPOINT.format(upstream=upstream))
    engine = [sys.executable, "-m", "engine.cli"]
    subprocess.run(
        [*engine, "apply", str(specs), "--auto-approve"],
        env=env,
        check=True,
        capture_output=True,
        cwd=root,
    )
    token = subprocess.run(
        [*engine, "tokens", "create", "--user", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
    ).stdout.strip()
    port = free_port()
    proc = subprocess.Popen(
        [*(wrap or []), *engine, "serve", "--port", str(port), "--log-level", "warning"]
        + list(serve_args),
        env=env,
        cwd=root,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", timeout=health_timeout)  # a PII guardrail loads Presidio first
    return proc, url, token


def print_run_header(name: str, kind: str, rounds: int, seconds: float, loads: tuple) -> None:
    """The lines every bench table starts with: machine, date, method, load averages."""
    before, after = loads
    print(
        f"# {name} bench: {platform.node()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        f"# upstream: {kind}; wrk -t1; {rounds} interleaved rounds x {seconds}s; "
        "medians; 2 windows per admission (endpoint + user)"
    )
    print(
        "# load average before "
        + " ".join(f"{x:.2f}" for x in before)
        + ", after "
        + " ".join(f"{x:.2f}" for x in after)
    )


@dataclass
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, token: str | None, concurrency: int, seconds: float, work: Path) -> Run:
    script = work / f"post-{token is not None}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"\n' if token else ""
    script.write_text(
        f"wrk.method = 'POST'\nwrk.body = '{REQUEST}'\n"
        f'wrk.headers["Content-Type"] = "application/json"\n{auth}'
    )
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{int(seconds)}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors during the run:\n{out}")
    return Run(
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        p99_ms=_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        requests=int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def payload_rows(work: Path, answered: int) -> str:
    """The tables gateway's rows after its stop, against the requests wrk saw answered (wrk
    may cut requests in flight at the end of a run: the rows can be a few more)."""
    from deltalake import DeltaTable

    root = work / "state" / "tables"
    payload = DeltaTable(str(root / "main" / "default" / "bench_payload")).count()
    usage = DeltaTable(str(root / "system" / "serving" / "endpoint_usage")).count()
    return f"rows after the stop: payload {payload}, usage {usage}; answered (wrk) {answered}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument(
        "--baseline-tree", type=Path, help="Another checkout whose gateway is measured too."
    )
    parser.add_argument(
        "--tables",
        action="store_true",
        help="Also a gateway with payload logging and usage tracking on (same checkout).",
    )
    parser.add_argument(
        "--pii",
        action="store_true",
        help="Also measure an endpoint with PII guardrails (MASK in and out) on the same gateway.",
    )
    parser.add_argument(
        "--prompt-bytes",
        type=int,
        default=0,
        help="Send a user message of about this many bytes of prose instead of 'hi'.",
    )
    args = parser.parse_args()
    if args.prompt_bytes:
        global REQUEST
        filler = "The committee reviewed the proposal, asked for a clearer plan and voted. "
        text = (filler * (args.prompt_bytes // len(filler) + 1))[: args.prompt_bytes]
        REQUEST = json.dumps({"messages": [{"role": "user", "content": text}]})
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    upstream, upstream_url, kind = start_upstream(work)
    gateways = {"gateway": start_gateway(work / "gateway", upstream_url, pii=args.pii)}
    # name -> (gateway, endpoint): series measured; "pii" is the same process's other endpoint.
    series = {"gateway": ("gateway", "bench")}
    if args.pii:
        series["pii"] = ("gateway", "bench-pii")
    if args.baseline_tree is not None:
        gateways["baseline"] = start_gateway(
            work / "baseline", upstream_url, args.baseline_tree.resolve()
        )
        series["baseline"] = ("baseline", "bench")
    if args.tables:
        gateways["tables"] = start_gateway(work / "tables", upstream_url, tables=True)
        series["tables"] = ("tables", "bench")
    direct_path = upstream_url + "/v1/chat/completions"
    results: dict[tuple[str, int], list[Run]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    answered = dict.fromkeys(series, 0)  # requests wrk saw answered, per series
    try:
        for s_name, (gw, name) in series.items():  # warm-up: connections, caches
            _, url, token = gateways[gw]
            path = url + f"/serving-endpoints/{name}/invocations"
            answered[s_name] += wrk(path, token, 16, 1, work).requests
        for round_no in range(args.rounds):
            # Which gateway runs first alternates between rounds: no side gets a fixed place.
            order = [(s, gateways[gw], ep) for s, (gw, ep) in series.items()]
            if round_no % 2:
                order.reverse()
            for c in levels:
                results.setdefault(("direct", c), []).append(
                    wrk(direct_path, None, c, args.seconds, work)
                )
                for name, (proc, url, token), ep in order:
                    before = cpu_seconds(proc.pid)
                    path = url + f"/serving-endpoints/{ep}/invocations"
                    run = wrk(path, token, c, args.seconds, work)
                    per_request = (cpu_seconds(proc.pid) - before) / run.requests
                    cpu.setdefault((name, c), []).append(per_request)
                    answered[name] += run.requests
                    results.setdefault((name, c), []).append(run)
    finally:
        for proc, _, _ in gateways.values():
            proc.send_signal(signal.SIGTERM)
        upstream.send_signal(signal.SIGTERM)
        for proc, _, _ in gateways.values():
            proc.wait(60)  # a tables gateway writes what is pending before it exits
        upstream.wait(10)

    def med(runs: list[Run], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    print(
        f"# gateway bench: {platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    )
    print(
        f"# upstream: {kind}; wrk -t1; {args.rounds} interleaved rounds x {args.seconds}s; medians"
    )
    header = (
        f"{'conc':>4} | {'direct req/s':>12} | {'gateway req/s':>13} | {'ratio':>5} | "
        f"{'direct p50':>10} | {'gw p50':>8} | {'added p50':>9} | {'direct p99':>10} | "
        f"{'gw p99':>8} | {'gw CPU/req':>10}"
    )
    print(header)
    print("-" * len(header))
    for c in levels:
        d, g = results[("direct", c)], results[("gateway", c)]
        print(
            f"{c:>4} | {med(d, 'rps'):>12.0f} | {med(g, 'rps'):>13.0f} | "
            f"{med(g, 'rps') / med(d, 'rps'):>5.3f} | {med(d, 'p50_ms'):>8.3f}ms | "
            f"{med(g, 'p50_ms'):>6.3f}ms | {med(g, 'p50_ms') - med(d, 'p50_ms'):>7.3f}ms | "
            f"{med(d, 'p99_ms'):>8.3f}ms | {med(g, 'p99_ms'):>6.3f}ms | "
            f"{statistics.median(cpu[('gateway', c)]) * 1000:>8.3f}ms"
        )
    if 64 in levels:
        rps64 = med(results[("gateway", 64)], "rps")
        cpu64 = statistics.median(cpu[("gateway", 64)]) * 1000
        print(
            f"gateway req/s at c=64 vs MLflow's 1,200: {rps64 / MLFLOW_RPS_C64:.2f}x "
            f"(goal >= 3x); CPU/request {cpu64:.3f} ms vs MLflow's {MLFLOW_CPU_MS} ms"
        )
    if 1 in levels:
        added = med(results[("gateway", 1)], "p50_ms") - med(results[("direct", 1)], "p50_ms")
        print(f"added p50 at c=1: {added:.3f} ms (goal < 0.3 ms)")

    def compare(new: str, base: str, title: str) -> None:
        """`new` against `base`, measured in the same rounds."""
        print(title)
        print(
            f"{'conc':>4} | {'new req/s':>9} | {'base req/s':>10} | {'new/base':>8} | "
            f"{'new added p50':>13} | {'base added p50':>14} | {'new CPU/req':>11} | "
            f"{'base CPU/req':>12}"
        )
        for c in levels:
            d, n, b = (results[(k, c)] for k in ("direct", new, base))
            print(
                f"{c:>4} | {med(n, 'rps'):>9.0f} | {med(b, 'rps'):>10.0f} | "
                f"{med(n, 'rps') / med(b, 'rps'):>8.3f} | "
                f"{med(n, 'p50_ms') - med(d, 'p50_ms'):>11.3f}ms | "
                f"{med(b, 'p50_ms') - med(d, 'p50_ms'):>12.3f}ms | "
                f"{statistics.median(cpu[(new, c)]) * 1000:>9.3f}ms | "
                f"{statistics.median(cpu[(base, c)]) * 1000:>10.3f}ms"
            )

    if "baseline" in gateways:
        compare("gateway", "baseline", f"# A/B against the baseline tree {args.baseline_tree}")
    if args.pii:
        compare("pii", "gateway", "# PII guardrails (MASK in and out: new) vs none (base)")
    if args.tables:
        compare("tables", "gateway", "# payload logging + usage tracking on (new) vs off (base)")
        if 64 in levels:
            cost = 1 - med(results[("tables", 64)], "rps") / med(results[("gateway", 64)], "rps")
            print(f"tables cost at c=64: {cost * 100:.1f}% of req/s (goal <= 10%)")
        if 1 in levels:
            extra = med(results[("tables", 1)], "p50_ms") - med(results[("gateway", 1)], "p50_ms")
            print(f"tables added p50 at c=1: {extra:.3f} ms")
        print(payload_rows(work / "tables", answered["tables"]))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
