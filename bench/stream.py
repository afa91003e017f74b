"""Streaming cost: SSE events/s through `engine serve` vs straight to the upstream.

The upstream is a loopback uvloop server that answers every POST with an OpenAI chat stream:
N small `chat.completion.chunk` events, one HTTP chunk each with a turn of its event loop in
between (as a model server writes one event per token), then a usage chunk and `[DONE]`. wrk
drives both paths, interleaved (direct, gateway, direct, gateway...) at concurrency 1 and 16,
one thread. Events/s = completed streams/s x events per stream. The gateway's CPU time per
event comes from /proc/<pid>/stat over its runs. Before measuring, one stream through the
gateway is checked: every event arrived, `[DONE]` last.

    python bench/stream.py                  # 3 rounds x 5 s per point, 100 events a stream
    python bench/stream.py --seconds 2 --rounds 1 --events 50
    python bench/stream.py --gap-ms 1       # a paced upstream: 1 ms between events
    python bench/stream.py --baseline-tree ../old   # A/B: also a gateway from another checkout
                                                    # (`git worktree add ../old COMMIT`), in the
                                                    # same interleaved rounds

By default the upstream writes as fast as it can, so on a small machine the ratio mostly shows
how much CPU the gateway takes from the upstream and wrk; CPU/event is the gateway's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway as gateway_bench  # noqa: E402
from gateway import cpu_seconds, free_port, start_gateway, wait_http, wrk  # noqa: E402

REQUEST = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True})
gateway_bench.REQUEST = REQUEST  # the body wrk sends (bench/gateway.py's wrk script)


def chunk_events(n: int) -> list[bytes]:
    """The SSE events of one stream, each as one HTTP chunk (vLLM-sized chunks)."""
    events = []
    for i in range(n):
        payload = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": f" tok{i}"}, "finish_reason": None}],
        }
        events.append(payload)
    events.append(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5},
        }
    )
    out = [f"data: {json.dumps(e, separators=(',', ':'))}\n\n".encode() for e in events]
    out.append(b"data: [DONE]\n\n")
    return [f"{len(e):x}\r\n".encode() + e + b"\r\n" for e in out]


class SseUpstream(asyncio.Protocol):
    """HTTP/1.1 keep-alive; every request gets the same chunked event stream."""

    events: list[bytes] = []
    gap = 0.0  # seconds between events
    HEAD = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""
        self.queue: asyncio.Queue[None] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buffer[:end].lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.queue.put_nowait(None)

    async def serve(self) -> None:
        while True:
            await self.queue.get()
            self.transport.write(self.HEAD)
            for event in self.events:
                await asyncio.sleep(self.gap)  # one event per turn, as a server writes per token
                self.transport.write(event)
            self.transport.write(b"0\r\n\r\n")


def serve_upstream(port: int, n: int, gap: float) -> None:
    import uvloop

    SseUpstream.events = chunk_events(n)
    SseUpstream.gap = gap

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(SseUpstream, "127.0.0.1", port)
        await server.serve_forever()

    uvloop.run(main())


def check_stream(url: str, token: str, n: int) -> None:
    with httpx.stream(
        "POST",
        url,
        content=REQUEST,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
    ) as response:
        body = response.read()
    events = [e for e in body.split(b"\n\n") if e.strip()]
    if response.status_code != 200 or len(events) != n + 2 or events[-1] != b"data: [DONE]":
        raise RuntimeError(f"the gateway's stream is not the upstream's: {body[-300:]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=100, help="content chunks per stream")
    parser.add_argument("--gap-ms", type=float, default=0.0, help="upstream pause per event")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument(
        "--baseline-tree", type=Path, help="Another checkout whose gateway is measured too."
    )
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.events, args.gap_ms / 1000)
        return
    levels = [int(c) for c in args.concurrency.split(",")]
    per_stream = args.events + 2  # content chunks, the usage chunk, [DONE]
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    port = free_port()
    upstream = subprocess.Popen(
        [
            sys.executable,
            __file__,
            *("--serve-upstream", str(port), "--events", str(args.events)),
            *("--gap-ms", str(args.gap_ms)),
        ]
    )
    upstream_url = f"http://127.0.0.1:{port}"
    wait_http(upstream_url + "/")
    gateways = {"gateway": start_gateway(work / "gateway", upstream_url)}
    if args.baseline_tree is not None:
        gateways["baseline"] = start_gateway(
            work / "baseline", upstream_url, args.baseline_tree.resolve()
        )
    direct_path = upstream_url + "/v1/chat/completions"
    events: dict[tuple[str, int], list[float]] = {}  # events/s per run
    p50: dict[tuple[str, int], list[float]] = {}
    cpu: dict[tuple[str, int], list[float]] = {}
    try:
        for name, (_, url, token) in gateways.items():
            path = url + "/serving-endpoints/bench/invocations"
            if name == "gateway":
                check_stream(path, token, args.events)
            wrk(path, token, 16, 1, work)  # warm-up: connections, caches
        for _ in range(args.rounds):
            for c in levels:
                run = wrk(direct_path, None, c, args.seconds, work)
                events.setdefault(("direct", c), []).append(run.rps * per_stream)
                p50.setdefault(("direct", c), []).append(run.p50_ms)
                for name, (proc, url, token) in gateways.items():
                    before = cpu_seconds(proc.pid)
                    path = url + "/serving-endpoints/bench/invocations"
                    run = wrk(path, token, c, args.seconds, work)
                    used = cpu_seconds(proc.pid) - before
                    cpu.setdefault((name, c), []).append(used / (run.requests * per_stream))
                    events.setdefault((name, c), []).append(run.rps * per_stream)
                    p50.setdefault((name, c), []).append(run.p50_ms)
    finally:
        for proc, _, _ in gateways.values():
            proc.send_signal(signal.SIGTERM)
        upstream.send_signal(signal.SIGTERM)
        for proc, _, _ in gateways.values():
            proc.wait(10)
        upstream.wait(10)

    med = statistics.median
    print(f"# stream bench: {platform.node()}, {os.cpu_count()} cores, {time.strftime('%F %R')}")
    print(
        f"# upstream: uvloop SSE, {args.events} chunks + usage + [DONE] a stream, "
        f"{args.gap_ms:g} ms apart; wrk -t1; {args.rounds} interleaved rounds x "
        f"{args.seconds}s; medians; load {os.getloadavg()[0]:.1f}"
    )
    header = (
        f"{'conc':>4} | {'direct events/s':>15} | {'gateway events/s':>16} | {'ratio':>5} | "
        f"{'direct p50':>10} | {'gw p50':>8} | {'gw CPU/event':>12}"
    )
    print(header)
    print("-" * len(header))
    for c in levels:
        d, g = med(events[("direct", c)]), med(events[("gateway", c)])
        print(
            f"{c:>4} | {d:>15.0f} | {g:>16.0f} | {g / d:>5.3f} | "
            f"{med(p50[('direct', c)]):>8.2f}ms | {med(p50[('gateway', c)]):>6.2f}ms | "
            f"{med(cpu[('gateway', c)]) * 1e6:>10.1f}us"
        )
    print("p50: whole stream. gw CPU/event: engine serve's CPU time / events it relayed.")
    worst = min(med(events[("gateway", c)]) / med(events[("direct", c)]) for c in levels)
    print(f"goal gateway/direct events/s >= 0.95: {'MET' if worst >= 0.95 else 'NOT MET'}")
    if "baseline" in gateways:
        print(f"# A/B against the baseline tree {args.baseline_tree} (same rounds)")
        header = (
            f"{'conc':>4} | {'new events/s':>12} | {'base events/s':>13} | {'new/base':>8} | "
            f"{'base/direct':>11} | {'new CPU/event':>13} | {'base CPU/event':>14}"
        )
        print(header)
        print("-" * len(header))
        for c in levels:
            d, n, b = (med(events[(k, c)]) for k in ("direct", "gateway", "baseline"))
            print(
                f"{c:>4} | {n:>12.0f} | {b:>13.0f} | {n / b:>8.3f} | {b / d:>11.3f} | "
                f"{med(cpu[('gateway', c)]) * 1e6:>11.1f}us | "
                f"{med(cpu[('baseline', c)]) * 1e6:>12.1f}us"
            )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
