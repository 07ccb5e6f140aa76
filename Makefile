# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PYTHONDONTWRITEBYTECODE := 1
DEMO_OUT ?= out/demo

.PHONY: demo test check lint typecheck unit bench bench-policy bench-critic clean

# The venv is rebuilt only when the dependency declaration changes.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/autopilot demo --out $(DEMO_OUT)

test: check unit

check: lint typecheck

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.sandbox_generation

# The policy benchmarks (about 40 minutes on two cores): sandbox accuracy (trains the default model), its speed,
# the real event logs, the real UI log, the learning curve of a new process.
bench-policy: $(STAMP)
	$(BIN)/python -m bench.policy_sandbox
	$(BIN)/python -m bench.policy_speed --model out/bench/policy_default --traces out/bench/sandbox_default_7_2500.jsonl --skip 2000
	$(BIN)/python -m bench.policy_eventlogs
	$(BIN)/python -m bench.policy_eventlog_baseline --importance
	$(BIN)/python -m bench.policy_uilog
	$(BIN)/python -m bench.policy_learning_curve

# The critic benchmarks (about 25 minutes on two cores; they need out/bench/policy_default from bench-policy):
# copilot feedback collection (cached), the paper-style comparison, coverage and the guarantee, time to autonomy
# of a new process, and retraining speed.
bench-critic: $(STAMP)
	$(BIN)/python -m bench.critic_sandbox
	$(BIN)/python -m bench.critic_time_to_autonomy
	$(BIN)/python -m bench.critic_retrain_speed

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
