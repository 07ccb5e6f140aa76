"""The production topology end to end, as the Helm chart and the compose stack deploy it: the API with no workers
of its own (``AUTOPILOT_WORKERS=0``) under uvicorn, two ``autopilot worker`` processes, the embedded broker, one
SQLite file store and one SQLite feedback store, the BPM (the sandbox's task API) over HTTP, a critic registry
whose champion has holding thresholds, and every slice starting in copilot.

Covered, each with a deadline (never a fixed sleep for an event):

- the workers promote the slices whose threshold holds when they start: the promotions are stage events written
  by the workers (the API runs no promotion round) and reach the API through the stage-event log;
- sessions started through the API execute steps in the background (in the worker processes, on the BPM);
- the nightly job (``critic.retrain.retrain``, what ``autopilot critic retrain`` runs) promotes a new champion
  mid-run; both workers and the API use it within seconds, and the decisions made after it name its version;
- a supervisor's demotion and the kill switch, through the API, reach both workers within 2 s (their heartbeat
  rows report the stage-event log applied past the change) and the sessions started after the kill switch are
  deferred by it;
- the supervisor overview shows the workers (alive, with their decisions) and their decisions from the store.

The retraining input is synthetic copilot feedback written to the feedback store just before the job runs: the
label depends on the action type only and the policy's confidence is noise, so the feature critic the job trains
beats the policy-confidence champion by far and is promoted every time.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import pytest
import torch

from critic.confidence import fit_on_steps
from critic.pipeline import PipelineConfig
from critic.registry import CriticRegistry, Manifest, RowCounts, data_hash
from critic.retrain import RetrainConfig, retrain
from critic.store import FeedbackStore
from critic.thresholds import SliceThresholds, ThresholdConfig, ThresholdResult
from policy.model import ModelConfig
from policy.policy import LMPolicy
from policy.train import TrainConfig
from sandbox.api import API_PREFIX
from sandbox.api import create_app as create_task_api
from sandbox.generate import iter_traces
from sandbox.platform import SandboxPlatform
from schemas import ActionType, AutonomyStage, FeedbackRecord, Proposal, ProposalFeatures, SliceKey
from schemas.decision import Decision, DecisionOutcome, RejectReason
from schemas.feedback import FeedbackSource
from schemas.trace import Trace
from service.api.app import create_app
from service.api.auth import Role, TokenStore, issue_token
from service.api.context import AutopilotService
from service.api.server_thread import ServerThread
from service.api.settings import ServiceSettings
from service.runtime.bus.broker import EmbeddedBroker
from service.runtime.stage_sync import KILL_SWITCH, OVERRIDE, PROMOTION
from service.runtime.store import RuntimeStore, WorkerHeartbeat

torch.set_num_threads(1)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TINY = ModelConfig(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)
QUICK = TrainConfig(epochs=1, batch_size=16, eval_every=20, warmup_steps=5, threads=1)
THRESHOLD = 0.6  # on the policy's own probability: with the tiny policy, a mix of executed and deferred steps
FAST_GROUP: dict[str, Any] = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 10}
WORKERS = ("topology-w1", "topology-w2")
GOOD = {ActionType.CLICK_CONTROL, ActionType.FILL_FIELD}  # what the synthetic operators accept
T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll until ``predicate()`` is truthy; return its value (fail naming ``what`` after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)


# ---- a policy, a registry whose champion holds on every slice the traces show, synthetic feedback -----------------


class Models:
    def __init__(self, base: Path) -> None:
        traces = iter_traces(40, 5)
        policy = LMPolicy(model=TINY, training=QUICK, vocab_size=600, progress=False).fit(traces[:30])
        self.policy_dir = policy.save(base / "policy")
        critic = fit_on_steps(policy, [step for trace in iter_traces(4, 77) for step in trace.steps])
        slices = sorted({(trace.process_id, step.action.type) for trace in traces for step in trace.steps})
        self.slices = [SliceKey(process_id=p, action_type=a) for p, a in slices]
        result = ThresholdResult(THRESHOLD, 400, 200, 4, 0.02, 0.06, 0.5, "set by hand for the test")
        thresholds = SliceThresholds(
            ThresholdConfig(granularity="slice", alpha=0.1), {str(key): result for key in self.slices}
        )
        now = datetime.now(UTC)
        manifest = Manifest(
            version="critic-topology-1",
            kind=critic.name,
            window_start=now,
            window_end=now,
            rows=RowCounts(train=400, calibration=0, test=0),
            data_hash=data_hash(["a"], [1]),  # metadata only
            policy_version=policy.version_ or "tiny",
            alpha=0.1,
            delta=0.1,
        )
        self.registry = CriticRegistry(base / "registry")
        self.registry.promote(
            self.registry.register(critic.save(base / "critic"), manifest, thresholds.to_dict()), "the first"
        )
        self.feedback = synthetic_feedback(traces, copies=3)


def synthetic_feedback(traces: list[Trace], copies: int, seed: int = 3) -> list[FeedbackRecord]:
    """Copilot feedback on every step of ``traces`` (``copies`` times, each with its own noise): accepted iff the
    action type is in GOOD; the policy's confidence is uniform noise."""
    rng = random.Random(seed)
    records = []
    for _ in range(copies):
        for trace in traces:
            for step in trace.steps:
                p = rng.uniform(0.05, 0.95)
                proposal = Proposal(
                    proposal_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                    session_id=step.state.session_id,
                    case_id=step.state.case_id,
                    process_id=step.state.process_id,
                    step=step.state.step,
                    state_etag=step.state.etag,
                    action=step.action,
                    features=ProposalFeatures(logprob=-1.0 + p, margin=p / 2, entropy=1.0, rank=0, probability=p),
                )
                accepted = step.action.type in GOOD
                records.append(
                    FeedbackRecord(
                        record_id=uuid.UUID(int=rng.getrandbits(128)).hex,
                        source=FeedbackSource.COPILOT,
                        state=step.state,
                        proposal=proposal,
                        accepted=accepted,
                        reason=None if accepted else RejectReason.MODEL_ERROR,
                        operator_id="op-synthetic",
                        slice=SliceKey(process_id=step.state.process_id, action_type=step.action.type),
                    )
                )
    return records


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


# ---- the worker processes -----------------------------------------------------------------------------------------


class WorkerProcess:
    """``python -m service.cli worker`` with the deployment's environment; its JSON lines on a queue."""

    def __init__(self, worker_id: str, environment: dict[str, str], log: Path) -> None:
        self.worker_id, self.log = worker_id, log
        with open(log, "w") as errors:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker", "--worker-id", worker_id],
                env=environment,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if line.startswith("{"):
                self.events.put(json.loads(line))

    def next_event(self, name: str, timeout: float) -> dict[str, Any]:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
            raise AssertionError(f"{self.worker_id}: no {name!r} line within {timeout} s:\n{tail}") from None
        assert event["event"] == name, event
        return event

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


def worker_environment(settings: ServiceSettings) -> dict[str, str]:
    environment = {name: value for name, value in os.environ.items() if not name.startswith("AUTOPILOT_")}
    values = {
        "KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "DATABASE_URL": settings.store_url(),
        "FEEDBACK_URL": settings.resolved_feedback_url(),
        "DATA_DIR": settings.data_dir,
        "TOPIC_PREFIX": settings.topic_prefix,
        "PARTITIONS": settings.partitions,
        "BPM_URL": settings.bpm_url,
        "POLICY_DIR": settings.policy_dir,
        "REGISTRY_DIR": settings.registry_dir,
        "REGISTRY_POLL_S": settings.registry_poll_s,
        "INITIAL_STAGE": settings.initial_stage.value,
        "AUDIT_RATE": settings.audit_rate,
        "LEASE_S": settings.lease_s,
        "MAX_STEPS": settings.max_steps,
        "BATCH_SIZE": settings.batch_size,
        "TORCH_THREADS": 1,
        **{name.upper(): value for name, value in FAST_GROUP.items()},
    }
    environment |= {f"AUTOPILOT_{name}": str(value) for name, value in values.items()}
    return environment | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


# ---- the test -----------------------------------------------------------------------------------------------------


def beats(store: RuntimeStore) -> dict[str, WorkerHeartbeat]:
    return {beat.worker_id: beat for beat in store.heartbeats() if beat.worker_id in WORKERS}


def decisions_of(store: RuntimeStore, session_ids: list[str]) -> list[Decision]:
    return [decision for session_id in session_ids for decision in store.decisions(session_id)]


def test_the_deployed_topology_promotes_reloads_and_obeys_the_supervisor(
    tmp_path: Path, broker: EmbeddedBroker, models: Models
) -> None:
    platform = SandboxPlatform(seed=41)
    bpm = ServerThread(create_task_api(platform=platform), name="bpm").start()
    settings = ServiceSettings(
        data_dir=tmp_path,
        kafka_bootstrap=broker.bootstrap,
        database_url=f"sqlite:///{tmp_path / 'runtime.db'}",
        feedback_url=f"sqlite:///{tmp_path / 'feedback.db'}",
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        partitions=4,
        workers=0,  # the deployed API: the session workers run in their own processes
        bpm_url=bpm.url + API_PREFIX,
        policy_dir=models.policy_dir,
        registry_dir=models.registry.root,
        registry_poll_s=0.5,
        initial_stage=AutonomyStage.COPILOT,
        audit_rate=0.0,
        lease_s=5.0,
        max_steps=25,
        batch_size=8,
        **FAST_GROUP,
    )
    started = time.monotonic()
    service = AutopilotService.from_settings(settings).start()
    tokens_file = tmp_path / "tokens.json"
    supervisor = {"Authorization": f"Bearer {issue_token(tokens_file, 'sam', Role.SUPERVISOR)}"}
    system = {"Authorization": f"Bearer {issue_token(tokens_file, 'svc', Role.SERVICE)}"}
    api = ServerThread(create_app(service, TokenStore(tokens_file)), lifespan="off", name="api").start()
    store = service.store
    environment = worker_environment(settings)
    workers: list[WorkerProcess] = []
    client = httpx.Client(base_url=api.url, timeout=30.0)
    try:
        assert service.stages.snapshot() == []  # the API promotes nothing itself: no slice changed yet
        workers = [WorkerProcess(w, environment, tmp_path / f"{w}.log") for w in WORKERS]
        for worker in workers:
            assert worker.next_event("ready", 90)["worker_id"] == worker.worker_id
        ready_s = time.monotonic() - started

        # 1. The workers promote every slice whose champion threshold holds (400 rows each >= 200 labels), once
        #    each, and the API follows their promotions through the stage-event log.
        def promotions() -> dict[str, str] | None:
            events = [e for e in store.stage_events_after(0) if e.kind == PROMOTION]
            found = {f"{e.process_id}/{e.action_type}": e.origin for e in events}
            return found if len(found) == len(models.slices) else None

        promoted = wait_for(promotions, 30, "the workers' promotions")
        assert set(promoted) == {str(key) for key in models.slices}
        assert set(promoted.values()) <= set(WORKERS)
        assert len([e for e in store.stage_events_after(0) if e.kind == PROMOTION]) == len(models.slices)
        wait_for(
            lambda: all(service.stages.stage(key) == AutonomyStage.AUTOPILOT for key in models.slices),
            5,
            "the API to follow the promotions",
        )

        # 2. Sessions started through the API run in the worker processes; steps execute in the background.
        def start(n: int) -> list[str]:
            cases = [platform.open_case() for _ in range(n)]
            response = client.post("/api/v1/sessions", json={"case_ids": cases}, headers=system)
            assert response.status_code == 202, response.text
            return list(response.json()["session_ids"])

        first = start(8)
        wait_for(
            lambda: any(d.outcome == DecisionOutcome.EXECUTE for d in decisions_of(store, first)),
            60,
            "a step executed in the background",
        )
        # The decision is stored with its side effect's reservation, just before the BPM call: poll for the call.
        wait_for(lambda: sum(len(platform.case(c).actions) for c in list(platform.cases)) > 0, 10, "an applied action")
        assert all(d.critic_version == "critic-topology-1" for d in decisions_of(store, first))

        # 3. The nightly job promotes a new champion mid-run; everyone uses it within seconds.
        with FeedbackStore(settings.resolved_feedback_url()) as feedback:
            feedback.add(models.feedback)
        config = RetrainConfig(
            pipeline=PipelineConfig(
                progress=False,
                thresholds=ThresholdConfig(alpha=0.1, delta=0.1, min_rows=20, granularity="action_type"),
            ),
            window_days=None,
        )
        retrain_started = time.monotonic()
        outcome = retrain(settings.resolved_feedback_url(), models.registry.root, config, report_dir=tmp_path / "r")
        retrain_s = time.monotonic() - retrain_started
        assert outcome.promoted, outcome.reason
        promoted_at = time.monotonic()
        wait_for(
            lambda: all(b.critic_version == outcome.version for b in beats(store).values()) and len(beats(store)) == 2,
            10,
            "both workers on the new champion",
        )
        wait_for(lambda: service.critic_version == outcome.version, 5, "the API on the new champion")
        reload_s = time.monotonic() - promoted_at
        second = start(6)
        wait_for(
            lambda: any(d.critic_version == outcome.version for d in decisions_of(store, second)),
            30,
            "a decision naming the new champion",
        )
        assert {d.critic_version for d in decisions_of(store, second)} == {outcome.version}

        # 4. A supervisor's demotion, then the kill switch, reach both workers within 2 s.
        def reaches_both_workers(kind: str) -> float:
            event_id = max(e.id for e in store.stage_events_after(0) if e.kind == kind)
            started = time.monotonic()
            wait_for(
                lambda: len(beats(store)) == 2 and all(b.stage_event_id >= event_id for b in beats(store).values()),
                5,
                f"both workers to apply stage event {event_id} ({kind})",
                interval=0.02,
            )
            return time.monotonic() - started

        demoted = models.slices[0]
        response = client.post(
            f"/api/v1/supervisor/slices/{demoted.process_id}/{demoted.action_type.value}/stage",
            json={"stage": "copilot", "reason": "the topology test demotes it", "pin": True},
            headers=supervisor,
        )
        assert response.status_code == 200, response.text
        demotion_s = reaches_both_workers(OVERRIDE)
        response = client.put(
            "/api/v1/supervisor/kill-switch", json={"on": True, "reason": "the topology test"}, headers=supervisor
        )
        assert response.status_code == 200, response.text
        kill_s = reaches_both_workers(KILL_SWITCH)
        assert all(b.kill_switch for b in beats(store).values())
        third = start(4)
        wait_for(lambda: len(decisions_of(store, third)) >= 4, 30, "decisions on the sessions after the kill switch")
        assert all(d.reason.startswith("kill_switch") for d in decisions_of(store, third))

        # 5. The overview shows the workers and their decisions, read from the store.
        overview = client.get("/api/v1/supervisor/overview", headers=supervisor).json()
        assert overview["critic_version"] == outcome.version
        assert overview["decisions"].get("execute", 0) > 0 and overview["decisions"].get("defer", 0) > 0
        shown = {w["worker_id"]: w for w in overview["workers"]}
        assert set(shown) == set(WORKERS) and all(w["alive"] for w in shown.values())
        assert sum(sum(w["decisions"].values()) for w in shown.values()) > 0
        assert overview["decision_latency_ms"]["p50_of_workers"] is not None
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["workers"].startswith("2 alive"), ready.text

        measured = {
            "ready_s": ready_s,
            "retrain_s": retrain_s,
            "reload_s": reload_s,
            "demotion_s": demotion_s,
            "kill_s": kill_s,
        }
        print(json.dumps({name: round(value, 2) for name, value in measured.items()}))
        assert demotion_s < 2.0 and kill_s < 2.0, (demotion_s, kill_s)
        for worker in workers:
            assert worker.stop() == 0
            assert worker.next_event("stopped", 5)["stats"]["worker_id"] == worker.worker_id
        assert not any(b.alive() for b in beats(store).values())  # stopped cleanly: marked so
    finally:
        for worker in workers:
            worker.stop()
        client.close()
        api.stop()
        service.stop()
        bpm.stop()
