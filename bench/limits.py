"""The cost of Redis rate limits: req/s and added latency of `engine serve --limits redis://`
vs the default in-process limits, one worker each, in the same run.

Two `engine serve` processes (one uvicorn worker each, their own state) serve the same
endpoint, with an endpoint limit and a per-user limit (two windows per admission, neither ever
full), in front of the same static upstream (nginx, or bench/gateway.py's uvloop mock). One
counts limits in-process, the other in a throwaway `redis-server` on loopback (no persistence).
wrk drives them interleaved (in-process, redis, in-process, redis...; the side that goes first
alternates by round) at each concurrency; the table shows medians. CPU per request is each
gateway's utime+stime from /proc over its runs; the Redis column is redis-server's own.

    python bench/limits.py                  # 3 rounds x 5 s at c=1,16,64
    python bench/limits.py --seconds 2 --rounds 1 --concurrency 16
    python bench/limits.py --instructions 1000   # callgrind instead of wrk (needs valgrind)

`--instructions N` counts what wrk cannot resolve on a busy machine: the instructions the
gateway process (and redis-server) execute per request (valgrind callgrind, user space only:
the syscalls' kernel time is not in it), for N requests after 200 warm-up ones, sent one at a
time (c=1: nothing to batch) and 16 at a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gateway
import httpx
from gateway import REQUEST, Run, cpu_seconds, free_port, print_run_header, start_upstream, wrk

GOAL_RATIO = 0.85  # Redis limits cost <= 15% of req/s


def start_redis(work: Path, wrap: list[str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    port = free_port()
    proc = subprocess.Popen(
        [*(wrap or []), server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        + ["--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )
    import redis

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            redis.Redis(port=port).ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.RedisError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


# Two rate-limit windows per admission (the endpoint's and the user's), too large to bind.
LIMITS_SPEC = """
rate_limits:
  - {calls: 1000000000, key: endpoint, renewal_period: minute}
ai_gateway:
  rate_limits:
    - {calls: 1000000000, key: user, renewal_period: minute}
"""


def start_gateway(
    work: Path,
    upstream: str,
    limits: str | None,
    wrap: list[str] | None = None,
    extra_args: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[bytes], str, str]:
    """The bench endpoint with two rate-limit windows, counted by `limits` (None: in-process)."""
    return gateway.start_gateway(
        work,
        upstream,
        spec_extra=LIMITS_SPEC,
        serve_args=(*(["--limits", limits] if limits else []), *extra_args),
        wrap=wrap,
        health_timeout=900 if wrap else 30,
    )


def _callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]


def _drive(url: str, token: str, n: int, concurrency: int) -> None:
    import asyncio

    async def run() -> None:
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
            left = iter(range(n))

            async def worker() -> None:
                for _ in left:
                    r = await client.post("/serving-endpoints/bench/invocations", content=REQUEST)
                    assert r.status_code == 200, r.text

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    asyncio.run(run())


def _zero(proc: subprocess.Popen[bytes]) -> None:
    subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)


def _dumped(proc: subprocess.Popen[bytes], out: Path) -> int:
    """Instructions `proc` (under callgrind) executed since it was last zeroed."""
    subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: p.stat().st_mtime)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary in {dumps[-1]}")


def instructions(n: int) -> None:
    if not shutil.which("valgrind"):
        sys.exit("valgrind is needed (apt-get install valgrind)")
    work = Path(tempfile.mkdtemp(prefix="bench-limits-instr-"))
    upstream, upstream_url, kind = start_upstream(work)
    redis_proc, redis_url = start_redis(work, _callgrind(work / "redis.cg"))
    gateways: dict[str, tuple[subprocess.Popen[bytes], str, str]] = {}
    rows = []
    try:
        for name, limits in (("in-process", None), ("redis", redis_url)):
            cg = _callgrind(work / f"{name}.cg")
            gateways[name] = start_gateway(work / name, upstream_url, limits, cg)
        for concurrency in (1, 16):
            counts = {}
            for name, (proc, url, token) in gateways.items():
                _drive(url, token, 200, concurrency)  # warm-up
                _zero(proc)
                _zero(redis_proc)
                _drive(url, token, n, concurrency)
                counts[name] = _dumped(proc, work / f"{name}.cg") / n
                server = _dumped(redis_proc, work / "redis.cg") / n
                if name == "redis":
                    counts["redis-server"] = server
            rows.append((concurrency, counts))
    finally:
        for proc, _, _ in gateways.values():
            proc.send_signal(signal.SIGTERM)
        for proc, _, _ in gateways.values():
            proc.wait(60)
        redis_proc.terminate()
        redis_proc.wait(60)
        upstream.send_signal(signal.SIGTERM)
        upstream.wait(10)
    print(
        f"# limits instructions per request (callgrind): {platform.node()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; upstream {kind}; {n} requests "
        "after 200 warm-up; 2 windows per admission (endpoint + user)"
    )
    header = (
        f"{'conc':>4} | {'in-process gw':>13} | {'redis gw':>13} | {'gw ratio':>8} | "
        f"{'redis-server':>12} | {'(gw + server) / in-process':>26}"
    )
    print(header)
    print("-" * len(header))
    for concurrency, c in rows:
        local, remote, server = c["in-process"], c["redis"], c["redis-server"]
        print(
            f"{concurrency:>4} | {local:>13,.0f} | {remote:>13,.0f} | {remote / local:>8.3f} | "
            f"{server:>12,.0f} | {(remote + server) / local:>26.3f}"
        )
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--instructions", type=int, metavar="N", help="callgrind, N requests")
    args = parser.parse_args()
    if args.instructions:
        instructions(args.instructions)
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-limits-"))
    upstream, upstream_url, kind = start_upstream(work)
    redis_proc, redis_url = start_redis(work)
    gateways = {
        "in-process": start_gateway(work / "local", upstream_url, None),
        "redis": start_gateway(work / "redis", upstream_url, redis_url),
    }
    results: dict[tuple[str, int], list[Run]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    redis_cpu: dict[int, list[float]] = {}
    load_before = os.getloadavg()
    try:
        for _, url, token in gateways.values():  # warm-up: connections, caches, scripts
            wrk(url + "/serving-endpoints/bench/invocations", token, 16, 1, work)
        for round_no in range(args.rounds):
            order = list(gateways.items())
            if round_no % 2:
                order.reverse()
            for c in levels:
                for name, (proc, url, token) in order:
                    before = cpu_seconds(proc.pid)
                    redis_before = cpu_seconds(redis_proc.pid)
                    run = wrk(
                        url + "/serving-endpoints/bench/invocations", token, c, args.seconds, work
                    )
                    cpu.setdefault((name, c), []).append(
                        (cpu_seconds(proc.pid) - before) / run.requests
                    )
                    if name == "redis":
                        redis_cpu.setdefault(c, []).append(
                            (cpu_seconds(redis_proc.pid) - redis_before) / run.requests
                        )
                    results.setdefault((name, c), []).append(run)
        # The limits were counted: the Redis gateway's metrics say its store answered throughout.
        proc, url, token = gateways["redis"]
        metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}).text
        healthy = "engine_limits_backend_up 1" in metrics and (
            "engine_limits_backend_errors_total 0" in metrics
        )
    finally:
        for proc, _, _ in gateways.values():
            proc.send_signal(signal.SIGTERM)
        upstream.send_signal(signal.SIGTERM)
        for proc, _, _ in gateways.values():
            proc.wait(10)
        upstream.wait(10)
        redis_proc.terminate()
        redis_proc.wait(10)
    load_after = os.getloadavg()

    def med(runs: list[Run], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    print_run_header("limits", kind, args.rounds, args.seconds, (load_before, load_after))
    header = (
        f"{'conc':>4} | {'local req/s':>11} | {'redis req/s':>11} | {'ratio':>5} | "
        f"{'local p50':>9} | {'redis p50':>9} | {'added p50':>9} | {'local p99':>9} | "
        f"{'redis p99':>9} | {'local CPU/req':>13} | {'redis CPU/req':>13} | {'redis-server':>12}"
    )
    print(header)
    print("-" * len(header))
    worst = None
    for c in levels:
        lo, rd = results[("in-process", c)], results[("redis", c)]
        ratio = med(rd, "rps") / med(lo, "rps")
        worst = ratio if worst is None else min(worst, ratio)
        print(
            f"{c:>4} | {med(lo, 'rps'):>11.0f} | {med(rd, 'rps'):>11.0f} | {ratio:>5.3f} | "
            f"{med(lo, 'p50_ms'):>7.3f}ms | {med(rd, 'p50_ms'):>7.3f}ms | "
            f"{med(rd, 'p50_ms') - med(lo, 'p50_ms'):>7.3f}ms | "
            f"{med(lo, 'p99_ms'):>7.3f}ms | {med(rd, 'p99_ms'):>7.3f}ms | "
            f"{statistics.median(cpu[('in-process', c)]) * 1000:>11.3f}ms | "
            f"{statistics.median(cpu[('redis', c)]) * 1000:>11.3f}ms | "
            f"{statistics.median(redis_cpu[c]) * 1000:>10.3f}ms"
        )
    assert worst is not None
    verdict = "MET" if worst >= GOAL_RATIO else "NOT MET"
    print(
        f"goal redis/in-process req/s >= {GOAL_RATIO}: {verdict} (lowest {worst:.3f}); "
        f"Redis answered throughout: {healthy}"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
