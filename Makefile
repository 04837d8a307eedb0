# Two commands on a fresh machine: `make run` (the main job on the embedded twin) and `make test`.
# Each creates .venv and installs what it needs; torch==2.13.0 (CPU build) goes in first so nothing pulls CUDA.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	command -v bwrap >/dev/null || (apt-get update -qq && apt-get install -y -qq bubblewrap)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The live pool on a local Ray Serve: 1, 10 and 50 streaming clients per model, 60 s of wall time per level at a
# time scale slow enough for 2 cores to keep up; prints the live tables beside the simulated one (~5 minutes).
run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/sysaware load-sweep --pool configs/pool_twin.yaml --levels 1,10,50 --level-wall-s 60

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n 2 --dist loadgroup --durations=15

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do HF_HUB_OFFLINE=1 $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
