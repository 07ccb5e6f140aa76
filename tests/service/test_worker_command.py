"""``autopilot worker``: one worker process configured from the environment, as the Helm Deployment runs it.

Covered: every wrong setting (nothing set, a directory that holds no policy, a registry without a champion, a
bad BPM URL, an unreachable broker, an invalid number) is refused with exit status 2 and a message naming the
setting; the command run as a real subprocess against the embedded broker, a SQLite file and the sandbox's task
API under uvicorn completes sessions (executed and deferred steps, answered by the simulated operators in this
process), keeps its sessions while the BPM is away, and on SIGTERM stops within seconds with exit status 0,
leaving its unfinished sessions released for other workers.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
import torch

from critic.confidence import PolicyConfidenceCritic, fit_on_steps
from critic.registry import CriticRegistry, Manifest, RowCounts, data_hash
from critic.thresholds import SliceThresholds, ThresholdConfig, ThresholdResult
from policy.model import ModelConfig
from policy.policy import LMPolicy
from policy.train import TrainConfig
from sandbox.api import API_PREFIX, create_app
from sandbox.generate import iter_traces
from sandbox.harness import SandboxRuntime
from sandbox.platform import SandboxPlatform
from schemas import AutonomyStage
from service.api.server_thread import ServerThread
from service.cli import main
from service.runtime.autonomy import AutonomyConfig, AutonomyStages
from service.runtime.bus.broker import EmbeddedBroker, free_port
from service.runtime.inprocess import session_id_for
from service.runtime.settings import RuntimeSettings
from service.runtime.store import ACTIVE_STATUSES, TERMINAL_STATUSES

torch.set_num_threads(1)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TINY = ModelConfig(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)
QUICK = TrainConfig(epochs=1, batch_size=16, eval_every=20, warmup_steps=5, threads=1)
THRESHOLD = 0.6  # on the policy's own probability: with the tiny policy, a mix of executed and deferred steps
FAST_GROUP: dict[str, Any] = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 10}


# ---- a policy and a registry with a champion, as a deployment has them ----------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[LMPolicy, PolicyConfidenceCritic, Path, Path]:
    """A tiny policy (saved) and the policy-confidence critic registered and promoted with one global threshold."""
    base = tmp_path_factory.mktemp("models")
    policy = LMPolicy(model=TINY, training=QUICK, vocab_size=600, progress=False).fit(iter_traces(30, 5))
    policy_dir = policy.save(base / "policy")
    steps = [step for trace in iter_traces(4, 77) for step in trace.steps]
    critic = fit_on_steps(policy, steps)
    now = datetime.now(UTC)
    manifest = Manifest(
        version="critic-test-1",
        kind=critic.name,
        window_start=now,
        window_end=now,
        rows=RowCounts(train=len(steps), calibration=0, test=0),
        data_hash=data_hash([str(i) for i in range(len(steps))], [1] * len(steps)),  # metadata only
        policy_version=policy.version_ or "tiny",
        alpha=0.05,
        delta=0.1,
    )
    registry = CriticRegistry(base / "registry")
    version = registry.register(critic.save(base / "critic"), manifest, thresholds().to_dict())
    registry.promote(version, "the only version")
    return policy, critic, policy_dir, registry.root


def thresholds() -> SliceThresholds:
    result = ThresholdResult(THRESHOLD, 200, 100, 3, 0.03, 0.07, 0.5, "set by hand for the tests")
    return SliceThresholds(ThresholdConfig(granularity="global"), {"*": result})


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


# ---- wrong settings -----------------------------------------------------------------------------------------------


def _clear_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AUTOPILOT_"):
            monkeypatch.delenv(name)


def test_wrong_settings_exit_2_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    models: tuple[LMPolicy, PolicyConfidenceCritic, Path, Path],
) -> None:
    _, _, policy_dir, registry_dir = models
    _clear_environment(monkeypatch)
    empty_registry = tmp_path / "registry"
    empty_registry.mkdir()
    good = {
        "AUTOPILOT_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # nothing listens there
        "AUTOPILOT_BUS_TIMEOUT_S": "0.5",
        "AUTOPILOT_DATABASE_URL": f"sqlite:///{tmp_path / 'runtime.db'}",
        "AUTOPILOT_BPM_URL": "http://127.0.0.1:9/api/v1",
        "AUTOPILOT_POLICY_DIR": str(policy_dir),
        "AUTOPILOT_REGISTRY_DIR": str(registry_dir),
    }
    cases: list[tuple[dict[str, str], list[str], str]] = [
        ({}, [], r"kafka_bootstrap: not set"),
        ({"AUTOPILOT_POLICY_DIR": ""}, [], r"policy_dir: not set"),
        ({"AUTOPILOT_POLICY_DIR": str(tmp_path)}, [], rf"policy_dir: {tmp_path} is not a saved policy"),
        ({}, ["--policy-dir", str(registry_dir)], r"policy_dir: .* is not a saved policy"),  # the flag wins
        ({"AUTOPILOT_REGISTRY_DIR": str(empty_registry)}, [], r"registry_dir: .* has no champion critic"),
        ({"AUTOPILOT_REGISTRY_DIR": str(tmp_path / "missing")}, [], r"registry_dir: .* is not a directory"),
        ({}, ["--bpm-url", "ftp://bpm/api"], r"bpm_url: must be an http\(s\) URL"),
        ({"AUTOPILOT_PARTITIONS": "0"}, [], r"partitions"),
        ({"AUTOPILOT_KAFKA_BOOTSTRAP": "kafka"}, [], r"kafka_bootstrap: 'kafka' is not host:port"),
        ({}, [], r"kafka_bootstrap: no broker accepts connections at 127\.0\.0\.1:\d+"),  # all else is right
    ]
    for index, (changes, flags, message) in enumerate(cases):
        environment = {} if index == 0 else good | changes
        with monkeypatch.context() as patched:
            for name, value in environment.items():
                patched.setenv(name, value)
            started = time.monotonic()
            assert main(["worker", *flags]) == 2, message
            elapsed = time.monotonic() - started
        err = capsys.readouterr().err
        assert err.startswith("error: "), err
        assert re.search(message, err), (message, err)
        assert elapsed < 5.0, (message, elapsed)  # refused before loading the policy or waiting long


# ---- the command as a process -------------------------------------------------------------------------------------


class TaskApi:
    """The sandbox's task API over ``platform`` under uvicorn in a thread; ``stop`` takes the BPM away."""

    def __init__(self, platform: SandboxPlatform) -> None:
        self.server = ServerThread(create_app(platform=platform)).start()
        self.url = self.server.url + API_PREFIX

    def stop(self) -> None:
        self.server.stop()


def _lines(stream: IO[str], into: queue.Queue[dict[str, Any]]) -> None:
    for line in stream:
        if line.startswith("{"):
            into.put(json.loads(line))


def _next_event(events: queue.Queue[dict[str, Any]], name: str, timeout: float, log: Path) -> dict[str, Any]:
    try:
        event = events.get(timeout=timeout)
    except queue.Empty:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise AssertionError(f"no {name!r} line from the worker within {timeout} s:\n{tail}") from None
    assert event["event"] == name, event
    return event


def _children_cmdlines(pid: int) -> list[str]:
    """The command lines of a process's children (Linux /proc: each process's stat names its parent)."""
    lines = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid:
                lines.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):  # it exited meanwhile
            continue
    return lines


def test_worker_command_runs_sessions_and_stops_gracefully_on_sigterm(
    tmp_path: Path, broker: EmbeddedBroker, models: tuple[LMPolicy, PolicyConfidenceCritic, Path, Path]
) -> None:
    policy, critic, policy_dir, registry_dir = models
    platform = SandboxPlatform(seed=31)
    cases = [platform.open_case(case_index=i) for i in range(3)]
    config = RuntimeSettings(
        kafka_bootstrap=broker.bootstrap,
        database_url=f"sqlite:///{tmp_path / 'runtime.db'}",
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        partitions=4,
        workers=0,  # the worker is the command below; this process publishes starts and answers deferrals
        lease_s=3.0,
        max_steps=25,
        audit_rate=0.1,
        operators=6,
        **FAST_GROUP,
    )
    autopilot = AutonomyStages(AutonomyConfig(initial_stage=AutonomyStage.AUTOPILOT))
    runtime = SandboxRuntime(platform, policy, critic, thresholds(), config, stages=autopilot)
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AUTOPILOT_")}
    metrics_port = free_port()
    environment |= {
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "AUTOPILOT_TORCH_THREADS": "1",
        "AUTOPILOT_METRICS_PORT": str(metrics_port),
        "AUTOPILOT_KAFKA_BOOTSTRAP": broker.bootstrap,
        "AUTOPILOT_DATABASE_URL": config.store_url(),
        "AUTOPILOT_DATA_DIR": str(tmp_path),  # the feedback store it counts labels in: data_dir/feedback.db
        "AUTOPILOT_TOPIC_PREFIX": config.topic_prefix,
        "AUTOPILOT_PARTITIONS": str(config.partitions),
        "AUTOPILOT_LEASE_S": str(config.lease_s),
        "AUTOPILOT_MAX_STEPS": str(config.max_steps),
        "AUTOPILOT_AUDIT_RATE": str(config.audit_rate),
        "AUTOPILOT_INITIAL_STAGE": "autopilot",
        "AUTOPILOT_POLICY_DIR": str(policy_dir),
        "AUTOPILOT_POLICY_PROCESSES": "1",  # the policy in a child of the worker (policy.process), as a pod with 2 CPUs
        "AUTOPILOT_REGISTRY_DIR": str(registry_dir),
        **{f"AUTOPILOT_{name.upper()}": str(value) for name, value in FAST_GROUP.items()},
    }
    log = tmp_path / "worker.log"
    with runtime:
        store = runtime.store
        assert store is not None
        api = TaskApi(platform)
        environment["AUTOPILOT_BPM_URL"] = api.url
        with open(log, "w") as errors:
            process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker", "--worker-id", "cmd-worker"],
                env=environment,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
        events: queue.Queue[dict[str, Any]] = queue.Queue()
        assert process.stdout is not None
        threading.Thread(target=_lines, args=(process.stdout, events), daemon=True).start()
        try:
            ready = _next_event(events, "ready", 60, log)
            assert ready["worker_id"] == "cmd-worker" and "critic-test-1" in ready["critic"]
            assert any("spawn_main" in line for line in _children_cmdlines(process.pid)), "no policy process"

            # Two sessions run to completion through the worker process.
            finished = runtime.start_sessions(cases[:2])
            assert runtime.wait_until(lambda: runtime.finished(finished), 60), runtime.stats()
            # Its decisions and consumer lag on its own /metrics endpoint (what Prometheus scrapes in a deployment).
            metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5.0).text
            assert "autopilot_decisions_total{action_type=" in metrics and 'source="worker"' in metrics
            assert "autopilot_decision_latency_seconds_count" in metrics
            assert "autopilot_kafka_consumer_lag{group=" in metrics

            # The BPM goes away; a third session is claimed by the worker and waits (backing off) for it.
            api.stop()
            waiting = runtime.start_sessions(cases[2:])[0]

            def claimed() -> bool:
                row = store.get_session(waiting)
                return row is not None and row.owner == "cmd-worker"

            assert runtime.wait_until(claimed, 20)
            # Its first failed observation (the worker logs each one; its stats come only with "stopped").
            unavailable = f"BPM unavailable for session {waiting}"
            assert runtime.wait_until(lambda: unavailable in log.read_text(errors="replace"), 20), log.read_text()

            stopped_at = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(20) == 0
            assert time.monotonic() - stopped_at < 10.0
            stopped = _next_event(events, "stopped", 5, log)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            api.stop()

        stats = stopped["stats"]
        assert stats["worker_id"] == "cmd-worker"
        assert stats["decisions"].get("execute", 0) > 0 and stats["decisions"].get("defer", 0) > 0, stats
        assert stats.get("bpm_unavailable", 0) > 0 and stats.get("loop_errors", 0) == 0, stats
        rows = {case: store.get_session(session_id_for(case)) for case in cases}
        assert all(rows[case].status in TERMINAL_STATUSES for case in cases[:2])  # type: ignore[union-attr]
        last = rows[cases[2]]
        # Released on SIGTERM: another worker may claim it at once instead of waiting for the lease to expire.
        assert last is not None and last.status in ACTIVE_STATUSES and last.owner is None and last.lease_until is None
        for case in cases:
            applied = platform.case(case)
            assert len(applied.actions) == len(applied.idempotency)  # every action under its own key, once
