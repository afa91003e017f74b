"""Scaling on one machine: req/s of `engine serve --workers 2` vs one worker, both counting
rate limits in Redis, and the cost of Redis limits vs in-process ones at one worker; all in
the same run.

Three `engine serve` processes (each on its own state) serve the same endpoint, with an
endpoint limit and a per-user limit that never fill, in front of the same static upstream
(nginx, or bench/gateway.py's uvloop mock):

| name           | serve options                            |
|----------------|------------------------------------------|
| 1w in-process  | (none)                                   |
| 1w redis       | --limits redis://...                     |
| 2w redis       | --workers 2 --limits redis://...         |

wrk (one thread) drives them interleaved, the first to go alternating by round, at each
concurrency; the table shows medians. CPU per request sums the serve process and its workers.
On a 2-core machine wrk, the upstream and redis-server share the cores with the workers, so
2 workers cannot reach 2x.

    python bench/scale.py                   # 3 rounds x 5 s at c=16,64
    python bench/scale.py --seconds 2 --rounds 1 --concurrency 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

from gateway import Run, cpu_seconds, print_run_header, start_upstream, wrk
from limits import start_gateway, start_redis

SCALE_GOAL = 1.7  # 2 workers >= 1.7x one
REDIS_GOAL = 0.85  # Redis limits cost <= 15% of req/s


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live children (uvicorn's workers)."""
    total = cpu_seconds(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            total += cpu_seconds(int(entry.name))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="16,64")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed (apt-get install wrk)")
    levels = [int(c) for c in args.concurrency.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    upstream, upstream_url, kind = start_upstream(work)
    redis_proc, redis_url = start_redis(work)
    gateways = {
        "1w in-process": start_gateway(work / "local", upstream_url, None),
        "1w redis": start_gateway(work / "redis1", upstream_url, redis_url),
        "2w redis": start_gateway(
            work / "redis2", upstream_url, redis_url, extra_args=("--workers", "2")
        ),
    }
    results: dict[tuple[str, int], list[Run]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    load_before = os.getloadavg()
    try:
        for _, url, token in gateways.values():  # warm-up: every worker, connections, scripts
            wrk(url + "/serving-endpoints/bench/invocations", token, 16, 2, work)
        for round_no in range(args.rounds):
            order = list(gateways.items())
            if round_no % 2:
                order.reverse()
            for c in levels:
                for name, (proc, url, token) in order:
                    before = tree_cpu_seconds(proc.pid)
                    run = wrk(
                        url + "/serving-endpoints/bench/invocations", token, c, args.seconds, work
                    )
                    cpu.setdefault((name, c), []).append(
                        (tree_cpu_seconds(proc.pid) - before) / run.requests
                    )
                    results.setdefault((name, c), []).append(run)
    finally:
        for proc, _, _ in gateways.values():
            proc.send_signal(signal.SIGTERM)
        upstream.send_signal(signal.SIGTERM)
        for proc, _, _ in gateways.values():
            proc.wait(30)
        upstream.wait(10)
        redis_proc.terminate()
        redis_proc.wait(10)
    load_after = os.getloadavg()

    def med(name: str, c: int, attr: str = "rps") -> float:
        return statistics.median(getattr(r, attr) for r in results[(name, c)])

    print_run_header("scale", kind, args.rounds, args.seconds, (load_before, load_after))
    names = list(gateways)
    header = (
        f"{'conc':>4} | "
        + " | ".join(f"{n + ' req/s':>19}" for n in names)
        + f" | {'2w/1w':>5} | {'redis/local':>11} | "
        + " | ".join(f"{n + ' p50':>17}" for n in names)
        + " | "
        + " | ".join(f"{n + ' CPU/req':>21}" for n in names)
    )
    print(header)
    print("-" * len(header))
    worst_scale = worst_redis = None
    for c in levels:
        scale = med("2w redis", c) / med("1w redis", c)
        redis_cost = med("1w redis", c) / med("1w in-process", c)
        worst_scale = scale if worst_scale is None else min(worst_scale, scale)
        worst_redis = redis_cost if worst_redis is None else min(worst_redis, redis_cost)
        print(
            f"{c:>4} | "
            + " | ".join(f"{med(n, c):>19.0f}" for n in names)
            + f" | {scale:>5.2f} | {redis_cost:>11.3f} | "
            + " | ".join(f"{med(n, c, 'p50_ms'):>15.3f}ms" for n in names)
            + " | "
            + " | ".join(f"{statistics.median(cpu[(n, c)]) * 1000:>19.3f}ms" for n in names)
        )
    assert worst_scale is not None and worst_redis is not None
    print(
        f"goal 2 workers >= {SCALE_GOAL}x one: {'MET' if worst_scale >= SCALE_GOAL else 'NOT MET'}"
        f" (lowest {worst_scale:.2f}); goal redis/in-process >= {REDIS_GOAL}: "
        f"{'MET' if worst_redis >= REDIS_GOAL else 'NOT MET'} (lowest {worst_redis:.3f})"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
