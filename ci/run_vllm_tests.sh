#!/usr/bin/env bash
# `make test-vllm`'s test run (after `make vllm-env`): the engine contract on twin, vllm and remote, plus tests_vllm/,
# in .venv-vllm, one vLLM run at a time on the machine (flock /tmp/sysaware-vllm.lock).
#
#   VLLM_TEST_TIMEOUT_S    per test, through pytest-timeout (default 900 s; a vLLM engine start on a loaded 2-core
#                          machine counts toward its first test)
#   VLLM_TESTS_TIMEOUT_S   the whole run, lock wait included (default 2400 s)
#   SYSAWARE_VLLM_LOCK     the lock file (default /tmp/sysaware-vllm.lock)
#
# Any failure ends with one line `test-vllm: FAILED: <why>` and a non-zero exit, so CI logs say what broke.
set -uo pipefail

VENV="${1:-.venv-vllm}"
PER_TEST_S="${VLLM_TEST_TIMEOUT_S:-900}"
TOTAL_S="${VLLM_TESTS_TIMEOUT_S:-2400}"
cd "$(dirname "$0")/.."
mkdir -p runs
LOG="runs/test-vllm.log"

fail() { echo "test-vllm: FAILED: $1" >&2; exit "${2:-1}"; }
[[ -x "$VENV/bin/python" ]] || fail "$VENV/bin/python missing: run 'make vllm-env' first"

t0=$SECONDS
rc=0
flock "${SYSAWARE_VLLM_LOCK:-/tmp/sysaware-vllm.lock}" timeout --kill-after=30 "$TOTAL_S" env HF_HUB_OFFLINE=1 \
    SYSAWARE_VLLM_TESTS=1 SYSAWARE_CACHE="$PWD/runs/cache" VLLM_ENABLE_V1_MULTIPROCESSING=1 \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider -rfE --durations=10 --timeout="$PER_TEST_S" \
    tests/test_engine_contract.py tests_vllm 2>&1 | tee "$LOG" || rc=${PIPESTATUS[0]}
took=$((SECONDS - t0))

summary="$(grep -E "(passed|failed|errors?|no tests ran).* in [0-9.]+s" "$LOG" | tail -n1 | tr -d '=' | sed 's/^ *//; s/ *$//' || true)"
case "$rc" in
    0) echo "test-vllm: passed in ${took} s (${summary})"; exit 0 ;;
    1) fail "tests failed ($summary; the failures are listed above and in $LOG)" 1 ;;
    2) fail "the run was interrupted or a test module did not import (${summary:-see $LOG})" 2 ;;
    4) fail "pytest usage error (see $LOG)" 4 ;;
    5) fail "no tests collected: is SYSAWARE_VLLM_TESTS honoured and tests_vllm/ present?" 5 ;;
    124|137) fail "the whole run passed VLLM_TESTS_TIMEOUT_S=${TOTAL_S} s after ${took} s (lock wait included; ${summary:-no summary})" "$rc" ;;
    *) fail "pytest exited $rc after ${took} s (${summary:-killed? see $LOG})" "$rc" ;;
esac
