#!/usr/bin/env bash
# Instructions the gateway process executes per request (valgrind callgrind): a measure that,
# unlike req/s, does not move with what else the machine is doing, for old-vs-new A/B.
#
#   bash bench/gateway_instructions.sh [BASELINE_TREE]   # e.g. a `git worktree add` of main
#
# Each tree: apply one OpenAI endpoint on a loopback upstream (bench/_static_upstream.py), run
# `engine serve`'s app under callgrind, 200 warm-up requests, zero the counters, N requests
# (default 1000, $N), dump. Needs valgrind. About 2 minutes per tree.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PY=${PY:-$ROOT/.venv/bin/python}
N=${N:-1000}
WORK=$(mktemp -d /tmp/bench-instr.XXXX)
UPSTREAM_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$PY" "$HERE/_static_upstream.py" "$UPSTREAM_PORT" >/dev/null 2>&1 &
UPSTREAM=$!
trap 'kill $UPSTREAM 2>/dev/null; rm -rf "$WORK"' EXIT

measure() { # TREE NAME -> prints instructions per request
    local tree=$1 name=$2 w="$WORK/$2"
    mkdir -p "$w/specs"
    cat >"$w/specs/bench.yaml" <<YAML
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
          openai_api_base: http://127.0.0.1:$UPSTREAM_PORT/v1
YAML
    local port
    port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    (
        cd "$tree"
        export ENGINE_STATE="$w/state.db" PYTHONPATH="$tree"
        "$PY" -m engine.cli apply "$w/specs" --auto-approve >/dev/null
        token=$("$PY" -m engine.cli tokens create --user bench 2>/dev/null)
        valgrind --tool=callgrind --callgrind-out-file="$w/cg.out" \
            "$PY" "$HERE/_serve_plain.py" "$w/state.db" "$port" >"$w/serve.log" 2>&1 &
        server=$!
        "$PY" - "$port" "$token" "$N" "$server" <<'PY'
import subprocess, sys, time

import httpx

port, token, n, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
url = f"http://127.0.0.1:{port}"
while True:
    try:
        if httpx.get(url + "/health", timeout=5).status_code == 200:
            break
    except httpx.HTTPError:
        time.sleep(1)
client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
body = {"messages": [{"role": "user", "content": "hi"}]}
for _ in range(200):
    assert client.post("/serving-endpoints/bench/invocations", json=body).status_code == 200
time.sleep(3)
subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
for _ in range(n):
    assert client.post("/serving-endpoints/bench/invocations", json=body).status_code == 200
subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
PY
        kill "$server"
        wait "$server" 2>/dev/null || true
    )
    local total
    total=$(grep -h "^summary:" "$w"/cg.out.1 | awk '{print $2}')
    echo $((total / N))
}

echo "# gateway instructions per request (callgrind), $N requests, $(date -u '+%Y-%m-%d %H:%M UTC')"
new=$(measure "$ROOT" new)
echo "this tree:     $new instructions/request"
if [ $# -ge 1 ]; then
    base=$(measure "$(cd "$1" && pwd)" baseline)
    echo "baseline $1: $base instructions/request"
    "$PY" -c "print(f'new/baseline: {$new / $base:.3f}')"
fi
