# raylane: two commands on a fresh machine.
#   make demo       set up .venv, start a local S3 server, run the pipeline on the digits preset
#   make test       set up .venv and run every test this machine can run (lint, layers, tests)
#   make test-fast  the unit tier only: no Ray, no servers, under two minutes
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast lint bench clean proto

setup: $(STAMP)

# Constraints pin torch (the CPU wheel on disk here, no CUDA download) and ray.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# lint-imports checks the layer contracts in pyproject.toml (cluster <- workloads <- tune,
# serve <- raylane): an import against the flow fails here.
test: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

demo: setup
	$(BIN)/python -m raylane.demo

# The Open Inference Protocol v2 stubs (committed; tests/unit/test_v2.py checks they match).
PROTO_COMMAND := -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. serve/proto/grpc_predict_v2.proto
proto: setup
	$(BIN)/python $(PROTO_COMMAND)

bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) artifacts .raylane .pytest_cache
