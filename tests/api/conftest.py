"""Shared fixtures of the API tests: a started AutopilotService (tiny policy, the policy-confidence critic, one
global threshold, the embedded broker, SQLite, the sandbox platform with open cases), tokens for every role, the
app in a TestClient, and the same app under uvicorn on a free port for browsers, Prometheus and fuzzing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from critic.confidence import PolicyConfidenceCritic, fit_on_steps
from critic.thresholds import SliceThresholds, ThresholdConfig, ThresholdResult
from policy.model import ModelConfig
from policy.policy import LMPolicy
from policy.train import TrainConfig
from sandbox.generate import iter_traces
from sandbox.harness import service_runtime
from schemas import AutonomyStage
from service.api.app import create_app
from service.api.auth import Role, TokenStore, issue_token
from service.api.context import AutopilotService
from service.api.server_thread import serve_in_thread
from service.api.settings import ServiceSettings
from service.runtime.bus.broker import EmbeddedBroker

TINY = ModelConfig(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)
QUICK = TrainConfig(epochs=1, batch_size=16, eval_every=20, warmup_steps=5, threads=1)
THRESHOLD = 0.6
FAST_GROUP: dict[str, Any] = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 10}
QUEUES = ("refund_damaged", "address_change")  # the demo operator's queues (queue = process id)


@dataclass(frozen=True)
class Tokens:
    operator: str  # queues QUEUES
    other_operator: str  # queue "warranty_claim" only
    supervisor: str
    service: str

    def header(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


@pytest.fixture(scope="session")
def models() -> tuple[LMPolicy, PolicyConfidenceCritic, SliceThresholds]:
    traces = iter_traces(40, 5)
    policy = LMPolicy(model=TINY, training=QUICK, vocab_size=600, progress=False).fit(traces[:30])
    critic = fit_on_steps(policy, [step for trace in iter_traces(6, 77) for step in trace.steps])
    result = ThresholdResult(THRESHOLD, 200, 100, 3, 0.03, 0.07, 0.5, "set by hand for the tests")
    thresholds = SliceThresholds(ThresholdConfig(granularity="global", alpha=0.1), {"*": result})
    return policy, critic, thresholds


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


def service_settings(data_dir: Path, bootstrap: str, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "kafka_bootstrap": bootstrap,
        "topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
        "partitions": 2,
        "workers": 1,
        "batch_size": 8,
        "lease_s": 5.0,
        "audit_rate": 0.0,
        "sandbox_cases": 30,
        "initial_stage": AutonomyStage.COPILOT,  # every step waits for a human unless a test promotes a slice
        "inbox_poll_s": 0.05,
        **FAST_GROUP,
    }
    values.update(overrides)
    return ServiceSettings(**values)


def issue_tokens(path: Path) -> Tokens:
    return Tokens(
        operator=issue_token(path, "olga", Role.OPERATOR, list(QUEUES)),
        other_operator=issue_token(path, "oscar", Role.OPERATOR, ["warranty_claim"]),
        supervisor=issue_token(path, "sam", Role.SUPERVISOR),
        service=issue_token(path, "svc", Role.SERVICE),
    )


@dataclass
class Running:
    service: AutopilotService
    app: FastAPI
    tokens: Tokens
    tokens_file: Path


def start_service(tmp: Path, bootstrap: str, models: Any, **overrides: Any) -> Running:
    policy, critic, thresholds = models
    settings = service_settings(tmp, bootstrap, **overrides)
    service = AutopilotService.build(
        settings, policy, critic, thresholds, "critic-test-1", runtime_factory=service_runtime
    ).start()
    tokens_file = tmp / "tokens.json"
    tokens = issue_tokens(tokens_file)
    app = create_app(service, TokenStore(tokens_file, check_interval_s=0.0))
    return Running(service, app, tokens, tokens_file)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, broker: EmbeddedBroker, models: Any) -> Iterator[Running]:
    """One started service per test module (tests that change stages restore them)."""
    started = start_service(tmp_path_factory.mktemp("service"), broker.bootstrap, models)
    try:
        yield started
    finally:
        started.service.stop()


@pytest.fixture(scope="module")
def client(running: Running) -> Iterator[TestClient]:
    with TestClient(running.app) as test_client:
        yield test_client


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """``app`` under uvicorn in a thread on a free port (its lifespan is the caller's); yields the base URL."""
    with serve_in_thread(app, lifespan="off") as server:
        yield server.url


@pytest.fixture(scope="module")
def live_url(running: Running) -> Iterator[str]:
    with serve(running.app) as url:
        yield url


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate()`` is truthy; return its value (fail the test on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {predicate}"
        time.sleep(interval)


def open_case_ids(running: Running, n: int) -> list[str]:
    """Ids of ``n`` open sandbox cases that have no session yet."""
    platform = running.service.runtime.platform
    assert platform is not None
    store = running.service.store
    free = [
        case_id
        for case_id, case in sorted(platform.cases.items())
        if case.ended is None and store.get_session(f"session-{case_id}") is None
    ]
    if len(free) < n:
        free += [platform.open_case() for _ in range(n - len(free))]
    return free[:n]


def http(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=10.0)


def drive_traffic(running: Running, url: str) -> dict[str, Any]:
    """A copilot suggestion and one background session through the live API at ``url``, waiting for the worker's
    first decision on it, so that every decision and session metric has a labelled series."""
    platform = running.service.runtime.platform
    assert platform is not None
    case_id = open_case_ids(running, 1)[0]
    state = platform.observe(case_id)
    with httpx.Client(base_url=url, timeout=30.0) as client:
        suggested = client.post(
            "/api/v1/copilot/suggest",
            json={"state": state.model_dump(mode="json")},
            headers=running.tokens.header("operator"),
        )
        assert suggested.status_code == 200, suggested.text
        started = client.post(
            "/api/v1/sessions", json={"case_ids": [case_id]}, headers=running.tokens.header("service")
        )
        assert started.status_code == 202, started.text
    session_id = started.json()["session_ids"][0]
    wait_for(lambda: running.service.store.decisions(session_id), timeout=60.0, interval=0.1)
    return {"suggestion": suggested.json(), "session_id": session_id}
