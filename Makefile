# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PYTHONDONTWRITEBYTECODE := 1
DEMO_OUT ?= out/demo

.PHONY: demo test check lint typecheck unit system-deps bench bench-policy bench-critic bench-runtime bench-api clean

# System packages the tests drive for real: Debian's Chromium (browser tests) and Prometheus + promtool (scrape
# and rule checks). Installed with apt only when missing (as root, or through sudo).
SYSTEM_PACKAGES := chromium prometheus
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
			|| { echo "error: could not install$$missing with apt-get (needed by the browser and Prometheus tests)" >&2; exit 1; }; \
	fi

# The venv is rebuilt only when the dependency declaration changes.
$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,sandbox]'
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

unit: $(STAMP) system-deps
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.sandbox_generation

# The policy benchmarks (about 50 minutes on two cores): sandbox accuracy (trains the default model), its speed,
# the real event logs, the real UI log and its few-case curve, the learning curve of a new process, and the
# preference update from copilot corrections.
bench-policy: $(STAMP)
	$(BIN)/python -m bench.policy_sandbox
	$(BIN)/python -m bench.policy_speed --model out/bench/policy_default --traces out/bench/sandbox_default_7_3000.jsonl --skip 2000
	$(BIN)/python -m bench.policy_eventlogs
	$(BIN)/python -m bench.policy_eventlog_baseline --importance
	$(BIN)/python -m bench.policy_uilog
	$(BIN)/python -m bench.policy_uilog_curve
	$(BIN)/python -m bench.policy_learning_curve
	$(BIN)/python -m bench.policy_preference

# The critic benchmarks (about 40 minutes on two cores; they need out/bench/policy_default from bench-policy):
# copilot feedback collection (cached) and the sandbox against the paper's statistics, the paper-style
# comparison, coverage and the guarantee, time to autonomy of a new process, retraining speed, the reply guard.
bench-critic: $(STAMP)
	$(BIN)/python -m bench.sandbox_calibration
	$(BIN)/python -m bench.critic_sandbox
	$(BIN)/python -m bench.critic_time_to_autonomy
	$(BIN)/python -m bench.critic_retrain_speed
	$(BIN)/python -m bench.policy_replies

# The runtime benchmarks (about 40 minutes on two cores; they need bench-policy's model and bench-critic's cached
# copilot feedback): the default scenario, drift, fault injection, throughput and latency, the guardrails.
bench-runtime: $(STAMP)
	$(BIN)/python -m bench.runtime_default
	$(BIN)/python -m bench.runtime_drift
	$(BIN)/python -m bench.runtime_faults
	$(BIN)/python -m bench.runtime_throughput
	$(BIN)/python -m bench.runtime_guardrails

# The API load benchmark (suggest with 50 concurrent clients; uses the demo's models when out/demo has them).
bench-api: $(STAMP)
	$(BIN)/python -m bench.api_load

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
