# Every target sets itself up from nothing: a .venv with the CPU build of torch that lies on
# this machine's disk (a GPU node installs its own CUDA torch; pyproject's range admits both).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench proto clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tailored data fetch movielens-100k
	$(BIN)/tailored train --config configs/movielens-100k.toml --out runs/demo
	$(BIN)/tailored bundle build runs/demo --out runs/bundles --through valid
	$(BIN)/tailored evaluate runs/bundles --split test
	$(BIN)/python -m tailored.serve.demo runs/bundles

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/typecheck.py
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m benchmarks.quality.movielens --seeds 0 1 2
	$(BIN)/python -m benchmarks.scale.synth_scale
	$(BIN)/python -m benchmarks.scale.train_throughput
	$(BIN)/python -m benchmarks.quality.two_stage --seeds 0 1 2
	$(BIN)/python -m benchmarks.serving.index_bench
	$(BIN)/python -m benchmarks.serving.ranker_latency
	$(BIN)/python -m benchmarks.scale.refresh_throughput
	$(BIN)/python -m benchmarks.serving.serve_load

# regenerate serve/v1's code from its .proto (tests/test_proto.py checks it is current)
proto: $(STAMP)
	$(BIN)/python tools/gen_proto.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .typecheck
