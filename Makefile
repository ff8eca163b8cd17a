# fanout-worker: the two commands the README promises, plus the pieces they are made of.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv services demo test lint typecheck pytest bench bench-smoke clean

help:
	@echo "make demo   - install, then run the whole pipeline on the in-memory MongoDB stand-in"
	@echo "make test   - install, start Redis/RabbitMQ if needed, then ruff, mypy and pytest (what CI runs)"
	@echo "make bench  - benchmarks against the broker ceiling and a naive baseline (real Redis and RabbitMQ)"

# Quiet: pip's output goes to $(VENV)/install.log, shown only when the install fails.
$(STAMP): pyproject.toml
	@echo "installing fanout-worker and its dependencies into $(VENV) (once; under a minute)"
	@$(PYTHON) -m venv $(VENV)
	@{ $(BIN)/pip install --upgrade pip && $(BIN)/pip install -e '.[dev,bench]'; } > $(VENV)/install.log 2>&1 \
		|| { cat $(VENV)/install.log; echo "install failed: the log above is in $(VENV)/install.log"; exit 1; }
	@touch $(STAMP)

venv: $(STAMP)

services:
	scripts/ensure-services.sh

demo: venv
	@scripts/ensure-services.sh || echo "demo: continuing with the in-memory stand-ins for what is missing"
	@FANOUT_LOG__FORMAT=text $(BIN)/fanout-worker demo --log-level WARNING

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

pytest: venv services
	$(BIN)/python -m pytest -q

test: lint typecheck pytest bench-smoke

bench: venv services
	$(BIN)/python -m bench

bench-smoke: venv services
	$(BIN)/python -m bench --smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
