"""Instructions per request of `engine serve`'s HTTP protocol class vs uvicorn's httptools one.

The whole-gateway count (bench/gateway_instructions.sh) includes the host's background tasks
(state polling, heartbeat), whose share grows with wall time and so with machine load: on a busy
machine it moves by several percent between runs of the same tree. This isolates the protocol:
uvicorn with a trivial ASGI app, under `valgrind --tool=callgrind`, one process per protocol;
200 warm-up requests, zero the counters, N requests, dump. Two client patterns: N requests on
one kept-alive connection, and N connections with one request each.

    python bench/http_protocol.py            # N = 2000
    N=5000 python bench/http_protocol.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N = int(os.environ.get("N", "2000"))
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

SERVER = """
import sys
import uvicorn

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})

if sys.argv[2] == "engine":
    from engine.cli.serve import header_timeout_seconds, uvicorn_settings
    http = uvicorn_settings(header_timeout_seconds(None))["http"]
else:
    http = "httptools"
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http=http,
            lifespan="off", log_level="warning", access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ask(sock: socket.socket) -> None:
    sock.sendall(REQUEST)
    answer = b""
    while not answer.endswith(b"\r\n\r\nok"):
        data = sock.recv(4096)
        if not data:
            raise RuntimeError(f"closed: {answer!r}")
        answer += data


def requests(port: int, n: int, *, keep_alive: bool) -> None:
    if keep_alive:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for _ in range(n):
                ask(sock)
        return
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            ask(sock)


def measure(protocol: str, *, keep_alive: bool, work: Path) -> int:
    port = free_port()
    out = work / f"cg-{protocol}-{keep_alive}.out"
    script = work / "server.py"
    script.write_text(SERVER)
    server = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(script),
            str(port),
            protocol,
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                requests(port, 1, keep_alive=True)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"{protocol} server did not start") from None
                time.sleep(1)
        requests(port, 200, keep_alive=keep_alive)
        subprocess.run(
            ["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True
        )
        requests(port, N, keep_alive=keep_alive)
        subprocess.run(
            ["callgrind_control", "-d", str(server.pid)], check=True, capture_output=True
        )
    finally:
        server.terminate()
        server.wait()
    dumps = sorted(work.glob(f"{out.name}.*"))
    total = next(
        int(line.split()[1])
        for line in dumps[0].read_text().splitlines()
        if line.startswith("summary:")
    )
    return total // N


def main() -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# HTTP protocol instructions per request (callgrind), {N} requests, {stamp}")
    print("pattern             | httptools | engine (header timeout) | engine/httptools")
    print("--------------------------------------------------------------------------")
    with tempfile.TemporaryDirectory(prefix="bench-proto.") as tmp:
        for keep_alive in (True, False):
            base = measure("httptools", keep_alive=keep_alive, work=Path(tmp))
            new = measure("engine", keep_alive=keep_alive, work=Path(tmp))
            pattern = "keep-alive" if keep_alive else "new connection each"
            print(f"{pattern:19} | {base:9} | {new:23} | {new / base:16.3f}")


if __name__ == "__main__":
    main()
