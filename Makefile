# Every target does its own set-up: a venv in .venv with torch (CPU wheel) installed first, then the project,
# every version pinned by the lock deploy/constraints.txt (the one the Docker images use).
# After changing dependencies in pyproject.toml: `make lock` (regenerates the lock; commit it).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
LOCK := deploy/constraints.txt
STAMP := $(VENV)/.installed

.PHONY: demo test bench install lock clean models

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c $(LOCK) $(TORCH)
	$(BIN)/pip install -q -c $(LOCK) -e '.[test]'
	touch $(STAMP)

# The newest versions pyproject.toml allows (torch stays at $(TORCH)), tested here, written as the lock.
lock:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q --upgrade --upgrade-strategy eager -e '.[test]' $(TORCH)
	$(BIN)/python deploy/pin_constraints.py > $(LOCK).new && mv $(LOCK).new $(LOCK)
	touch $(STAMP)
	@echo "wrote $(LOCK): run the tests, then commit it"

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medgan demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra tests

# Retrain the shipped Zero-DCE and x4 SR models (CPU, about 15 min each) and rewrite their manifest.
models: $(STAMP)
	nice -n 15 $(BIN)/python -m medgan.enhance.models retrain all

bench: $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .medgan
