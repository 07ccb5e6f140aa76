"""Fault injection on the background-session runtime: kill -9 of workers, every message delivered twice, stale
operator answers and a broker crash, with the real broker, store and sandbox engine; afterwards the store, the
sandbox and the topics are audited for lost deferrals, lost feedback and actions applied twice.

Setup (both phases). Sandbox cases (default scenario) run as background sessions, new ones started as others end:
the store is a SQLite file; the BPM is the sandbox task API (uvicorn, in this process) over one
``SandboxPlatform``; ``--workers`` SessionWorkers run in their own processes (``build_worker`` +
``run_worker_process``, reaching the BPM over HTTP) with the trained policy ``out/bench/policy_default`` (else a
tiny policy fitted here, as ``tests/critic/conftest.py`` does) and the policy-confidence critic; thresholds come
from ``fit_slice_thresholds`` on the cached copilot feedback ``out/bench/critic_feedback_default_7_2500_3000_guarded.jsonl``
(alpha 0.10, per action type, so that a fair share of steps executes) or, without it, one threshold set by hand.
Every slice starts in autopilot; the router defers what the critic does not trust, always-ask actions and a random
audit share. The simulated operator pool (``SimulatedOperatorPool``) answers the deferrals and publishes feedback.

Faults:

(a) kill -9: at evenly spread points of progress, the worker process holding the most sessions is killed with
    SIGKILL and a replacement process (started beforehand, so its imports do not count) takes its place;
(b) duplicates: every message on ``sessions``, ``deferrals`` and ``operator-decisions`` is published a second time
    (same key, value and message id) by an echo consumer, as a producer retry or a redelivery would;
(c) stale answers, all signed by the operator id ``stale-injector``: for a ``--stale-share`` of the deferrals an
    answer naming the right proposal with a wrong state etag (published at once, racing the real operator), for
    the same share an answer to the proposal after it was answered (another verdict: an old proposal), and now
    and then one naming a proposal that never existed; each goes to the store's compare-and-set first (the one
    answer protocol, which refuses it) and is then announced anyway (which the workers must ignore);
(d) broker crash: the broker is killed (no grace) and restarted on its S3 storage (``LocalS3``, moto) when half
    the sessions are done.

Two phases: ``main`` (``--sessions``, default 200) runs (a)-(c) on the memory broker; ``broker_restart``
(``--s3-sessions``, default 12) runs (a)-(d) on S3 storage. Why not all 200 on S3: Tansu on S3 writes an object
per record and per group heartbeat or commit and lists a partition's objects to fetch from it, and moto serves a
few tens of requests per second on this machine; a 40-session run with every fault on S3 storage finished 3
sessions in 5 minutes (deferral -> operator latency p50 60 s).

Counted per phase, from the store, the sandbox and the topics: sessions completed / handed over / unfinished;
deferrals lost (a stored deferral never answered, or never received by the operators); feedback records lost (an
answered deferral without its record on ``feedback``); actions applied twice (per case: every action in the
sandbox went through one idempotency key, every worker key was applied on the step it was decided on, one key
per decided step, the store's confirmed keys equal the sandbox's); stale answers accepted (any of the injector's).
Targets: zero lost deferrals and feedback, zero actions applied twice, zero stale answers accepted, every session
completed or handed over.

    .venv/bin/python -m bench.runtime_faults [--sessions 200] [--s3-sessions 12] [--workers 2] [--kills 4]

Writes ``bench/results/runtime_faults.{json,md}``. Torch runs on one thread in every process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import create_engine, select
from tqdm import tqdm

from bench.common import RESULTS_DIR, ROOT, environment, peak_rss_kib, write_results
from bench.critic_sandbox import trained_policy_feedback
from critic.base import Candidate, critic_label
from critic.confidence import PolicyConfidenceCritic
from critic.feedback import read_feedback
from critic.thresholds import Granularity, SliceThresholds, ThresholdConfig, ThresholdResult, fit_slice_thresholds
from sandbox.harness import SandboxRuntime
from sandbox.platform import SandboxPlatform
from schemas import AutonomyStage, Deferral, FeedbackRecord, OperatorDecision, Payload, SessionCommand, UIState
from schemas.decision import RejectReason, Verdict
from schemas.files import atomic_write_text
from schemas.progress import progress_bar
from schemas.proposal import Proposal
from service.api.server_thread import serve_in_thread
from service.runtime.autonomy import AutonomyConfig
from service.runtime.bus.broker import EmbeddedBroker, LocalS3
from service.runtime.bus.consumer import BusConsumer, MessageMeta, read_to_end
from service.runtime.bus.envelope import encode, header
from service.runtime.bus.producer import BusProducer
from service.runtime.inprocess import Runtime, session_id_for
from service.runtime.settings import RuntimeSettings
from service.runtime.store import (
    TERMINAL_STATUSES,
    DeferralRow,
    DeferralStatus,
    RuntimeStore,
    SessionStatus,
    applied_actions_table,
)
from service.runtime.worker_process import WorkerSpec, build_worker, run_worker_process

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)

log = logging.getLogger(__name__)

NAME = "runtime_faults"
POLICY_DIR = ROOT / "out" / "bench" / "policy_default"


INJECTOR = "stale-injector"
ECHO_HEADER = "echo"
# Consumer settings (host order: session timeout, heartbeat, fetch wait; ms). On the memory broker, the tests' fast
# settings (a group joins in ~1 s). On S3 storage Tansu writes the group's state to S3 on every heartbeat and commit,
# a record object per produce, and lists a partition's objects to fetch from it; the local S3 server (moto, Python)
# serves some tens of requests per second on this machine (a list of 200 keys: ~10/s) and is the bottleneck. Hence
# the service defaults for heartbeats there (half the tests' S3 writes) and a fetch wait of 100 ms, not 10: against
# s3:// storage, consumers fetching with a 10 ms wait all but stall (measured: 50 records on 4 partitions took 22 s
# to consume; on one partition none arrived in 60 s); from 50 ms on they keep up.
FAST = (2000, 500, 10)
S3_GROUP = (6000, 1000, 100)
HAND_THRESHOLD = 0.6  # without cached feedback: one global threshold on the policy's own probability
P = TypeVar("P", bound=Payload)


# ---- policy, critic and thresholds (shared with bench.runtime_drift) ----------------------------------------------


@dataclass(frozen=True)
class Models:
    """What a worker needs, saved: the policy directory, the critic directory and the thresholds."""

    policy_dir: Path
    critic_dir: Path
    critic: PolicyConfidenceCritic
    thresholds: SliceThresholds
    source: dict[str, str]


def fit_tiny_policy(directory: Path) -> Path:
    """A tiny LM policy fitted on 30 sandbox cases (as tests/critic/conftest.py does), for machines where
    ``bench.policy_sandbox`` has not saved the trained one."""
    import torch

    from policy.model import ModelConfig
    from policy.policy import LMPolicy
    from policy.train import TrainConfig
    from sandbox.generate import iter_traces

    torch.set_num_threads(1)
    tiny = ModelConfig(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)
    quick = TrainConfig(epochs=1, batch_size=16, eval_every=20, warmup_steps=5, threads=1)
    policy = LMPolicy(model=tiny, training=quick, vocab_size=600, progress=False).fit(iter_traces(30, 5))
    return policy.save(directory / "policy")


def feedback_thresholds(
    records: Sequence[FeedbackRecord],
    alpha: float,
    granularity: Granularity,
    delta: float = 0.1,
    simultaneous: bool = True,
) -> SliceThresholds:
    """Risk-controlled thresholds on the policy's own probability (the policy-confidence critic's score)."""
    scores = np.fromiter((r.proposal.features.probability for r in records), np.float64, len(records))
    y = np.fromiter((critic_label(r) for r in records), np.int64, len(records))
    config = ThresholdConfig(
        alpha=alpha, delta=delta, granularity=granularity, max_candidates=50, simultaneous=simultaneous
    )
    return fit_slice_thresholds(scores, y, [r.slice for r in records], config)


def hand_thresholds(value: float = HAND_THRESHOLD) -> SliceThresholds:
    result = ThresholdResult(value, 0, 0, 0, None, None, 0.0, "set by hand for the benchmark (no cached feedback)")
    return SliceThresholds(ThresholdConfig(granularity="global"), {"*": result})


def prepare_models(work: Path, alpha: float, granularity: Granularity) -> Models:
    """The trained policy if present (else a tiny one), the policy-confidence critic saved for worker processes,
    and thresholds from the cached copilot feedback (else set by hand)."""
    source: dict[str, str] = {}
    if (POLICY_DIR / "policy.json").exists():
        policy_dir = POLICY_DIR
        source["policy"] = str(POLICY_DIR.relative_to(ROOT))
    else:
        policy_dir = fit_tiny_policy(work)
        source["policy"] = "tiny policy fitted on 30 sandbox cases (out/bench/policy_default is missing)"
    critic = PolicyConfidenceCritic()
    feedback = trained_policy_feedback()
    if feedback is not None and feedback.exists():
        records = read_feedback(feedback)
        thresholds = feedback_thresholds(records, alpha, granularity)
        sample = records[:500]
        critic.fit([Candidate(r.state, r.proposal) for r in sample], [critic_label(r) for r in sample])
        source["thresholds"] = (
            f"fit_slice_thresholds on {len(records)} rows of {feedback.relative_to(ROOT)} "
            f"(alpha {alpha}, delta 0.1, granularity {granularity})"
        )
    else:
        thresholds = hand_thresholds()
        # The confidence critic learns nothing; fit only checks that both labels are present.
        critic.classes_ = np.array([0, 1], dtype=np.int64)
        source["thresholds"] = f"one global threshold {HAND_THRESHOLD} set by hand (no cached feedback)"
    critic_dir = critic.save(work / "critic")
    return Models(policy_dir, critic_dir, critic, thresholds, source)


class WorkersElsewhere:
    """The in-process Runtime's policy slot when every worker runs in its own process (it is never called)."""

    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]:
        raise RuntimeError("the workers of this benchmark run in their own processes")


# ---- the sandbox's task API in a thread -----------------------------------------------------------------------------


@contextmanager
def serve(platform: SandboxPlatform) -> Iterator[str]:
    """The sandbox task API over ``platform`` under uvicorn in a thread; yields the API root URL."""

    from sandbox.api import API_PREFIX, create_app

    with serve_in_thread(create_app(platform=platform)) as server:
        yield server.url + API_PREFIX


# ---- worker processes -----------------------------------------------------------------------------------------------


def child_main(order_path: str, stats_path: str) -> None:
    """A worker process: import the heavy parts, wait for its order (a WorkerSpec as JSON), run the worker until
    SIGTERM (or SIGKILL), and write the worker's stats to ``stats_path`` every half second."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    import torch

    import policy.policy  # noqa: F401 - imported while waiting, so the order starts a worker at once

    torch.set_num_threads(1)
    order, stats = Path(order_path), Path(stats_path)
    parent = os.getppid()
    while not order.exists():
        if os.getppid() != parent:  # the benchmark is gone
            return
        time.sleep(0.05)
    spec = WorkerSpec.model_validate_json(order.read_text())
    worker = build_worker(spec)
    stop = threading.Event()

    def dump() -> None:
        atomic_write_text(stats, json.dumps(worker.stats()))  # the benchmark never reads half a file

    def dump_loop() -> None:
        while not stop.wait(0.5):
            try:
                dump()
            except Exception:
                log.debug("writing stats failed", exc_info=True)

    threading.Thread(target=dump_loop, daemon=True).start()
    try:
        run_worker_process(worker)
    finally:
        stop.set()
        dump()


@dataclass
class Child:
    proc: subprocess.Popen[bytes]
    order: Path
    stats: Path
    log: Path
    worker_id: str | None = None
    killed: bool = False

    def last_stats(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.stats.read_text()))
        except (OSError, ValueError):
            return None


class WorkerProcesses:
    """Worker processes started ahead of need (standbys waiting for an order), so a replacement takes over as
    soon as it is asked to instead of after seconds of imports. Only processes started here are signalled."""

    def __init__(self, work: Path, standby: int) -> None:
        self.work = work
        self.children: list[Child] = []
        self._standby: list[Child] = []
        self._n = 0
        for _ in range(standby):
            self._standby.append(self._spawn())

    def _spawn(self) -> Child:
        self._n += 1
        base = self.work / f"child-{self._n}"
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        with open(base.with_suffix(".log"), "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.runtime_faults", "--child", str(base.with_suffix(".order")),
                 str(base.with_suffix(".stats"))],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip
        return Child(proc, base.with_suffix(".order"), base.with_suffix(".stats"), base.with_suffix(".log"))

    def activate(self, spec: WorkerSpec) -> Child:
        child = self._standby.pop(0) if self._standby else self._spawn()
        atomic_write_text(child.order, spec.model_dump_json())  # the child never reads half an order
        child.worker_id = spec.worker_id
        self.children.append(child)
        self._standby.append(self._spawn())
        return child

    def alive(self) -> list[Child]:
        return [c for c in self.children if c.proc.poll() is None]

    def kill(self, child: Child) -> None:
        os.kill(child.proc.pid, signal.SIGKILL)
        child.proc.wait(30)
        child.killed = True

    def stop(self) -> None:
        """SIGTERM to every worker (they release their sessions and write final stats), then the standbys."""
        for child in self.alive():
            child.proc.send_signal(signal.SIGTERM)
        for child in self.children + self._standby:
            if child.proc.poll() is None and child not in self.children:
                child.proc.terminate()
        for child in self.children + self._standby:
            try:
                child.proc.wait(20)
            except subprocess.TimeoutExpired:
                child.proc.kill()
                child.proc.wait(10)


# ---- injected faults on the bus -------------------------------------------------------------------------------------


class Echo:
    """Publishes every message of the given topics a second time (same key, value and message id), as a producer
    retry or a redelivery would; its own copies carry a header so they are not echoed again (the same as
    tests/service/test_worker.py's)."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: dict[str, type[Payload]],
        producer: BusProducer,
        consumer_settings: dict[str, Any],
    ) -> None:
        self.producer = producer
        self.echoed: Counter[str] = Counter()
        self.failed = 0
        self.consumer = BusConsumer(bootstrap, group, list(topics), topics, self._echo, None, **consumer_settings)

    def _echo(self, topic: str, payload: Payload, meta: MessageMeta) -> None:
        if header(meta.headers, ECHO_HEADER) is not None:
            return
        key, value, headers = encode(payload, meta.key, meta.message_id)
        try:
            self.producer.publish_raw(topic, key, value, [*headers, (ECHO_HEADER, b"1")])
        except Exception:
            # Raising would make the consumer retry the record (and echo it again later); during the broker
            # restart a publish can fail: counted, and the duplicate is simply not sent.
            self.failed += 1
            return
        self.echoed[topic.rsplit(".", 1)[-1]] += 1

    def run(self, stop: threading.Event) -> None:
        try:
            self.consumer.run(stop, poll_timeout_ms=20)
        finally:
            self.consumer.close()


class StaleAnswers:
    """Operator answers that must change nothing, signed ``stale-injector`` (see the module docstring, (c))."""

    def __init__(
        self,
        bootstrap: str,
        group: str,
        topics: Any,
        producer: BusProducer,
        store: RuntimeStore,
        share: float,
        seed: int,
        consumer_settings: dict[str, Any],
    ) -> None:
        self.topics = topics
        self.producer = producer
        self.store = store
        self.share = share
        self.rng = random.Random(f"stale:{seed}")
        self.injected: Counter[str] = Counter()
        self.refused_by_store = 0
        self.failed = 0
        self._seen: set[str] = set()
        self._later: list[tuple[float, Deferral]] = []  # (not before, deferral): answer once it was answered
        self.consumer = BusConsumer(
            bootstrap,
            group,
            [topics.deferrals],
            {topics.deferrals: Deferral},
            self._on_deferral,
            None,
            **consumer_settings,
        )

    def _publish(self, kind: str, decision: OperatorDecision) -> None:
        # The one answer protocol first (the store's compare-and-set, which must refuse it), then the announcement
        # anyway, as a misbehaving operator side would: the workers must ignore an answer nobody recorded.
        if self.store.answer(decision).result.value != "accepted":
            self.refused_by_store += 1
        try:
            self.producer.publish(
                self.topics.operator_decisions, decision, decision.session_id, message_id=f"stale:{uuid.uuid4().hex}"
            )
        except Exception:
            self.failed += 1
            return
        self.injected[kind] += 1

    def _on_deferral(self, topic: str, payload: Payload, meta: MessageMeta) -> None:
        if not isinstance(payload, Deferral) or payload.deferral_id in self._seen:
            return
        self._seen.add(payload.deferral_id)
        deferral = payload
        if self.rng.random() < self.share:
            # The right proposal, a state etag the session was never parked on: accepting it would approve an
            # action on a screen nobody looked at.
            self._publish(
                "wrong_etag",
                OperatorDecision(
                    proposal_id=deferral.proposal.proposal_id,
                    session_id=deferral.session_id,
                    state_etag=f"stale-{deferral.state.etag}",
                    verdict=Verdict.ACCEPT,
                    operator_id=INJECTOR,
                ),
            )
        if self.rng.random() < self.share:
            self._later.append((time.monotonic() + 0.5, deferral))
        if self.rng.random() < self.share / 5:
            self._publish(
                "unknown_proposal",
                OperatorDecision(
                    proposal_id=uuid.uuid4().hex,
                    session_id=deferral.session_id,
                    state_etag=deferral.state.etag,
                    verdict=Verdict.ACCEPT,
                    operator_id=INJECTOR,
                ),
            )

    def _answer_old(self) -> None:
        """Answer proposals that were answered already, with another verdict (an operator's stale screen)."""
        now, keep = time.monotonic(), []
        for due, deferral in self._later:
            if due > now:
                keep.append((due, deferral))
                continue
            row = self.store.get_deferral(deferral.deferral_id)
            if row is None or row.status == DeferralStatus.PENDING or row.answer is None:
                if row is not None and row.status == DeferralStatus.PENDING:
                    keep.append((now + 0.5, deferral))
                continue
            accepted = row.answer.verdict == Verdict.ACCEPT
            self._publish(
                "old_proposal",
                OperatorDecision(
                    proposal_id=deferral.proposal.proposal_id,
                    session_id=deferral.session_id,
                    state_etag=deferral.state.etag,
                    verdict=Verdict.REJECT if accepted else Verdict.ACCEPT,
                    reason=RejectReason.OTHER if accepted else None,
                    operator_id=INJECTOR,
                ),
            )
        self._later = keep

    def pending(self) -> int:
        return len(self._later)

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.consumer.poll_once(timeout_ms=20)
                    self._answer_old()
                except Exception:
                    log.exception("stale-answer injector: round failed")
                    stop.wait(0.2)
        finally:
            self.consumer.close()


def drain(bootstrap: str, topic: str, payload_type: type[P], timeout: float = 30.0) -> list[P]:
    """Every message on ``topic`` (``read_to_end``)."""
    return read_to_end(bootstrap, topic, payload_type, timeout)


# ---- the run --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """One run of sessions against one broker. ``storage``: ``memory`` or ``s3`` (LocalS3); ``restart_at``: the
    share of sessions done at which the broker is killed and restarted (None: never); ``stale_share``: see (c)
    in the module docstring (0: no stale answers); consumer settings as in ``RuntimeSettings``."""

    name: str
    storage: str
    sessions: int
    kills: int
    echo: bool
    stale_share: float
    restart_at: float | None
    in_flight: int
    partitions: int
    session_timeout_ms: int
    heartbeat_interval_ms: int
    fetch_max_wait_ms: int
    timeout_s: float

    def __post_init__(self) -> None:
        if self.storage not in ("memory", "s3"):
            raise ValueError(f"storage: must be memory or s3, got {self.storage!r}")
        if self.sessions < 1:
            raise ValueError(f"sessions: must be >= 1, got {self.sessions}")
        if self.kills < 0:
            raise ValueError(f"kills: must be >= 0, got {self.kills}")
        if self.in_flight < 1:
            raise ValueError(f"in_flight: must be >= 1, got {self.in_flight}")
        if not 0.0 <= self.stale_share <= 1.0:
            raise ValueError(f"stale_share: must be in [0, 1], got {self.stale_share}")
        if self.restart_at is not None and not 0.0 < self.restart_at < 1.0:
            raise ValueError(f"restart_at: must be in (0, 1) or None, got {self.restart_at}")
        if self.restart_at is not None and self.storage != "s3":
            raise ValueError("restart_at: a memory broker loses everything on a restart; use storage s3")

    def group(self) -> dict[str, Any]:
        return {
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
        }


@dataclass(frozen=True)
class Config:
    """What both phases share: workers, leases, the router's audit rate and the thresholds' alpha."""

    workers: int = 2
    lease_s: float = 10.0  # 3 s thrashed on this loaded machine: leases expired during long step batches
    audit_rate: float = 0.05
    alpha: float = 0.10
    granularity: Granularity = "action_type"
    batch_size: int = 16
    max_steps: int = 40
    seed: int = 11

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers: must be >= 1, got {self.workers}")


def default_phases(sessions: int, s3_sessions: int, kills: int, stale_share: float) -> list[Phase]:
    """The main run on the memory broker (kills, duplicates, stale answers) and the broker crash on S3 storage
    (with every other fault too, on fewer sessions: see the module docstring for why)."""
    return [
        Phase("main", "memory", sessions, kills, True, stale_share, None, 40, 4, *FAST, 360.0),
        Phase("broker_restart", "s3", s3_sessions, 1, True, stale_share, 0.5, s3_sessions, 2, *S3_GROUP, 300.0),
    ]


@dataclass
class Events:
    started: float = field(default_factory=time.monotonic)
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, kind: str, **details: Any) -> None:
        item = {"t_s": round(time.monotonic() - self.started, 2), "kind": kind, **details}
        self.items.append(item)
        tqdm.write(f"[{item['t_s']:7.1f} s] {kind}: {json.dumps(details, default=str)}")


def kill_points(sessions: int, kills: int, restart_at: float | None) -> list[int]:
    """Finished-session counts at which to kill, evenly spread and kept off the broker restart's point."""
    points = [max(1, round(sessions * (i + 1) / (kills + 1))) for i in range(kills)]
    if restart_at is None:
        return points
    restart = round(sessions * restart_at)
    return [p + 1 if p == restart else p for p in points]


@contextmanager
def broker_for(phase: Phase, work: Path) -> Iterator[EmbeddedBroker]:
    """The phase's Tansu broker: memory storage, or S3 storage on a local moto server."""
    if phase.storage == "memory":
        with EmbeddedBroker(log_path=work / "tansu.log") as broker:
            yield broker
        return
    s3 = LocalS3(log_path=work / "moto.log").start()
    try:
        with EmbeddedBroker(storage=s3.storage, env=s3.env, log_path=work / "tansu.log") as broker:
            yield broker
    finally:
        s3.close()


def run_phase(config: Config, phase: Phase, models: Models, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    events = Events()
    procs = WorkerProcesses(work, standby=config.workers + 1)  # their imports overlap the setup below
    platform = SandboxPlatform(seed=config.seed)
    stop_threads = threading.Event()
    threads: list[threading.Thread] = []
    result: dict[str, Any] = {}
    try:
        with broker_for(phase, work) as broker:
            events.add("broker", storage=broker.storage, bootstrap=broker.bootstrap)
            settings = RuntimeSettings(
                kafka_bootstrap=broker.bootstrap,
                database_url=f"sqlite:///{work / 'runtime.db'}",
                topic_prefix=f"faults{uuid.uuid4().hex[:6]}.",
                partitions=phase.partitions,
                workers=0,
                batch_size=config.batch_size,
                lease_s=config.lease_s,
                max_steps=config.max_steps,
                audit_rate=config.audit_rate,
                seed=config.seed,
                session_timeout_ms=phase.session_timeout_ms,
                heartbeat_interval_ms=phase.heartbeat_interval_ms,
                fetch_max_wait_ms=phase.fetch_max_wait_ms,
            )
            autonomy = AutonomyConfig(initial_stage=AutonomyStage.AUTOPILOT, alpha=config.alpha)
            runtime = SandboxRuntime(platform, WorkersElsewhere(), models.critic, models.thresholds, settings)
            with runtime, serve(platform) as bpm_url:
                store, producer, pool = runtime.store, runtime.producer, runtime.pool
                assert store is not None and producer is not None and pool is not None
                topics = runtime.topics
                echo = stale = None
                if phase.echo:
                    echoed: dict[str, type[Payload]] = {
                        topics.sessions: SessionCommand,
                        topics.deferrals: Deferral,
                        topics.operator_decisions: OperatorDecision,
                    }
                    echo = Echo(broker.bootstrap, topics.prefix + "echo", echoed, producer, phase.group())
                    threads.append(threading.Thread(target=echo.run, args=(stop_threads,), name="echo", daemon=True))
                if phase.stale_share > 0:
                    stale = StaleAnswers(
                        broker.bootstrap,
                        topics.prefix + "stale",
                        topics,
                        producer,
                        store,
                        phase.stale_share,
                        config.seed,
                        phase.group(),
                    )
                    threads.append(threading.Thread(target=stale.run, args=(stop_threads,), name="stale", daemon=True))
                for thread in threads:
                    thread.start()

                def spec(worker_id: str) -> WorkerSpec:
                    return WorkerSpec(
                        worker_id=worker_id,
                        bootstrap=broker.bootstrap,
                        database_url=settings.store_url(),
                        topic_prefix=settings.topic_prefix,
                        bpm_url=bpm_url,
                        policy_path=str(models.policy_dir),
                        critic_path=str(models.critic_dir),
                        thresholds=models.thresholds.to_dict(),
                        autonomy=autonomy.to_dict(),
                        audit_rate=config.audit_rate,
                        seed=config.seed,
                        batch_size=config.batch_size,
                        lease_s=config.lease_s,
                        max_steps=config.max_steps,
                        **phase.group(),
                    )

                for i in range(config.workers):
                    procs.activate(spec(f"worker-{i + 1}"))
                events.add("workers", started=[c.worker_id for c in procs.children])
                result = drive(phase, runtime, procs, spec, broker, stale, events)
                stop_threads.set()
                for thread in threads:
                    thread.join(15)
                procs.stop()  # final stats; the sessions have all ended (or are reported unfinished)
                result["counts"] = audit_counts(
                    runtime, platform, settings.store_url(), result.pop("case_ids"), broker.bootstrap, stale
                )
                result["workers"] = worker_summary(procs)
                result["operators"] = pool.stats()
                result["runtime_producer_recreated"] = producer.recreated
                result["echoed"] = dict(echo.echoed) if echo is not None else {}
                result["echo_publish_failures"] = echo.failed if echo is not None else 0
    finally:
        stop_threads.set()
        procs.stop()
    result["events"] = events.items
    result["phase"] = asdict(phase)
    return result


def drive(
    phase: Phase,
    runtime: Runtime,
    procs: WorkerProcesses,
    spec: Callable[[str], WorkerSpec],
    broker: EmbeddedBroker,
    stale: StaleAnswers | None,
    events: Events,
) -> dict[str, Any]:
    """Feed sessions, inject the kills and the broker restart at their points, wait for every session to end."""
    store, pool = runtime.store, runtime.pool
    assert store is not None and pool is not None
    platform = runtime.platform
    kills = kill_points(phase.sessions, phase.kills, phase.restart_at)
    restart_point = None if phase.restart_at is None else round(phase.sessions * phase.restart_at)
    replacements = 0
    opened: list[str] = []  # case ids whose start command is still to be published
    case_ids: list[str] = []
    session_ids: list[str] = []
    started = time.monotonic()
    deadline = started + phase.timeout_s
    done = 0
    bar = progress_bar(total=phase.sessions, desc=f"{phase.name} sessions", unit="session", mininterval=2.0)
    try:
        while True:
            statuses = {row.session_id: row.status for row in store.sessions()}
            done = sum(1 for s in session_ids if statuses.get(s) in TERMINAL_STATUSES)
            if done > bar.n:
                bar.update(done - bar.n)
            if done >= phase.sessions:
                break
            if time.monotonic() > deadline:
                events.add("timeout", done=done, sessions=phase.sessions)
                break
            # Keep ``in_flight`` sessions running; a start that fails (broker away) is tried again next round.
            while (
                len(case_ids) + len(opened) < phase.sessions and len(session_ids) + len(opened) - done < phase.in_flight
            ):
                opened.append(platform.open_case(case_index=len(case_ids) + len(opened)))
            if opened:
                try:
                    session_ids.extend(runtime.start_sessions(opened))
                    case_ids.extend(opened)
                    opened = []
                except Exception as exc:
                    events.add("start_failed", error=repr(exc)[:200], cases=len(opened))
            if kills and done >= kills[0]:
                kills.pop(0)
                kill_one(procs, spec, store, statuses, done, replacements + 1, events)
                replacements += 1
            if restart_point is not None and done >= restart_point:
                restart_point = None
                before = time.monotonic()
                broker.restart(grace_s=0.0)  # killed at once: a crash, not a clean shutdown
                events.add(
                    "broker restart", done=done, storage=broker.storage, down_s=round(time.monotonic() - before, 2)
                )
            time.sleep(0.2)
    finally:
        bar.close()
    elapsed = time.monotonic() - started
    # Let the last answers, feedback records and echoes land before counting.
    quiet_until = time.monotonic() + 10.0
    while time.monotonic() < quiet_until and (
        (stale is not None and stale.pending()) or any(pool.stats()["inbox"].values()) or pool.stats()["scheduled"]
    ):
        time.sleep(0.1)
    time.sleep(2.0)
    if runtime.producer is not None:
        runtime.producer.flush(10.0)
    events.add("sessions ended", done=done, seconds=round(elapsed, 1))
    return {"case_ids": case_ids, "seconds": round(elapsed, 2), "sessions_done": done}


def kill_one(
    procs: WorkerProcesses,
    spec: Callable[[str], WorkerSpec],
    store: RuntimeStore,
    statuses: dict[str, SessionStatus],
    done: int,
    n: int,
    events: Events,
) -> None:
    """SIGKILL the worker process holding the most sessions and start its replacement."""
    alive = [c for c in procs.alive() if c.worker_id is not None]
    if not alive:
        events.add("kill skipped", reason="no live worker process", done=done)
        return
    owned = {c.worker_id or "": store.owned_sessions(c.worker_id or "") for c in alive}
    victim = max(alive, key=lambda c: (len(owned[c.worker_id or ""]), c.worker_id or ""))
    held = owned[victim.worker_id or ""]
    parked = sum(1 for s in held if statuses.get(s) == SessionStatus.PARKED)
    procs.kill(victim)
    replacement = procs.activate(spec(f"replacement-{n}"))
    events.add(
        "kill -9",
        worker=victim.worker_id,
        pid=victim.proc.pid,
        done=done,
        sessions_held=len(held),
        parked=parked,
        running=len(held) - parked,
        replacement=replacement.worker_id,
    )


# ---- counting -------------------------------------------------------------------------------------------------------


def audit_counts(
    runtime: Runtime,
    platform: SandboxPlatform,
    store_url: str,
    case_ids: list[str],
    bootstrap: str,
    stale: StaleAnswers | None,
) -> dict[str, Any]:
    store, pool = runtime.store, runtime.pool
    assert store is not None and pool is not None
    session_ids = [session_id_for(c) for c in case_ids]
    statuses: Counter[str] = Counter()
    for session_id in session_ids:
        session = store.get_session(session_id)
        statuses["missing" if session is None else session.status.value] += 1

    # Deferrals: every stored one must have been received by the operators and answered.
    received = pool.received_ids()
    deferral_status: Counter[str] = Counter()
    never_seen: list[str] = []
    unanswered: list[str] = []
    answered_by_injector: list[str] = []
    answered_rows: list[DeferralRow] = []
    for session_id in session_ids:
        for row in store.session_deferrals(session_id):
            deferral_id = row.deferral.deferral_id
            deferral_status[row.status.value] += 1
            if deferral_id not in received:
                never_seen.append(deferral_id)
            if row.status == DeferralStatus.PENDING:
                unanswered.append(deferral_id)
            if row.status == DeferralStatus.ANSWERED and row.answer is not None:
                if row.answer.operator_id == INJECTOR:
                    answered_by_injector.append(deferral_id)
                else:
                    answered_rows.append(row)

    # Feedback: one record per answered deferral (record id ``deferral-<id>``); copies are counted, not lost.
    feedback = drain(bootstrap, runtime.topics.feedback, FeedbackRecord)
    on_topic = Counter(f.record_id for f in feedback)
    expected = {f"deferral-{row.deferral.deferral_id}" for row in answered_rows}
    feedback_lost = sorted(expected - set(on_topic))
    feedback_unmatched = sorted(set(on_topic) - expected)

    # Actions: the sandbox's record of every applied action against the store's applied_actions.
    engine = create_engine(store_url)
    a = applied_actions_table.c
    with engine.connect() as conn:
        rows = conn.execute(select(a.idempotency_key, a.session_id, a.step, a.applied_at)).all()
    engine.dispose()
    confirmed = {key for key, _, _, applied_at in rows if applied_at is not None}
    unconfirmed = {key for key, _, _, applied_at in rows if applied_at is None}
    actions = Counter[str]()
    problems: dict[str, list[str]] = defaultdict(list)
    for case_id, session_id in zip(case_ids, session_ids, strict=True):
        case = platform.case(case_id)
        if len(case.actions) != len(case.idempotency):
            problems["actions_without_a_key"].append(case_id)
        worker = {k: v for k, v in case.idempotency.items() if k.startswith(session_id + ":")}
        actions["worker_actions"] += len(worker)
        actions["manual_actions"] += sum(1 for k in case.idempotency if k.startswith("manual:"))
        per_step = Counter(int(k.split(":")[-2]) for k in worker)
        for key, applied_as in worker.items():
            decided_on = int(key.split(":")[-2])
            if applied_as != decided_on + 1:
                problems["applied_on_a_later_step"].append(key)
            if key not in confirmed:
                problems["applied_but_not_confirmed"].append(key)
        for step, n in per_step.items():
            if n > 1:
                problems["two_actions_on_one_step"].append(f"{session_id}:{step} x{n}")
        stored = {k for k in confirmed if k.startswith(session_id + ":")}
        for key in stored - set(worker):
            problems["confirmed_but_not_in_bpm"].append(key)
        session = store.get_session(session_id)
        if session is not None and session.actions_applied != len(worker):
            problems["store_count_differs"].append(f"{session_id}: store {session.actions_applied}, bpm {len(worker)}")
    applied_twice = (
        len(problems["applied_on_a_later_step"])
        + sum(int(item.rsplit("x", 1)[1]) - 1 for item in problems["two_actions_on_one_step"])
        + len(problems["actions_without_a_key"])
    )
    outcomes = Counter(
        "correct" if platform.outcome(c)["correct"] else "incorrect" for c in case_ids if platform.case(c).ended
    )
    return {
        "sessions": dict(statuses),
        "sessions_completed": statuses.get("completed", 0),
        "sessions_handed_over": statuses.get("handed_over", 0),
        "sessions_unfinished": len(session_ids) - statuses.get("completed", 0) - statuses.get("handed_over", 0),
        "case_outcomes": dict(outcomes),
        "deferrals": dict(deferral_status),
        "deferrals_total": sum(deferral_status.values()),
        "deferrals_never_seen_by_operators": len(never_seen),
        "deferrals_never_answered": len(unanswered),
        "deferrals_lost": len(set(never_seen) | set(unanswered)),
        "lost_deferral_ids": sorted(set(never_seen) | set(unanswered))[:20],
        "feedback_expected": len(expected),
        "feedback_records_on_topic": sum(on_topic.values()),
        "feedback_distinct_on_topic": len(on_topic),
        "feedback_copies": sum(n - 1 for n in on_topic.values()),
        "feedback_lost": len(feedback_lost),
        "lost_feedback_ids": feedback_lost[:20],
        "feedback_without_accepted_answer": len(feedback_unmatched),
        "actions": dict(actions),
        "store_keys_confirmed": len(confirmed),
        "store_keys_unconfirmed": len(unconfirmed),
        "actions_applied_twice": applied_twice,
        "action_problems": {k: {"count": len(v), "examples": v[:10]} for k, v in problems.items() if v},
        "stale_injected": dict(stale.injected) if stale is not None else {},
        "stale_injected_total": sum(stale.injected.values()) if stale is not None else 0,
        "stale_injection_publish_failures": stale.failed if stale is not None else 0,
        "stale_answers_accepted": len(answered_by_injector),
        "stale_refused_by_store": stale.refused_by_store if stale is not None else 0,
    }


def worker_summary(procs: WorkerProcesses) -> dict[str, Any]:
    """Per worker process: how it ended and its last stats; totals of the recovery counters."""
    keys = (
        "takeovers",
        "resent_keys",
        "republished_deferrals",
        "lost_sessions",
        "already_reserved",
        "stale_plans",
        "publish_errors",
        "loop_errors",
        "session_errors",
        "step_failures",
        "executed",
        "deferred",
        "answers_applied",
        "answers_seen_in_store",
        "stale_answers",
        "unknown_answers",
        "duplicate_answers",
        "duplicates",
    )
    per: list[dict[str, Any]] = []
    totals: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    for child in procs.children:
        stats = child.last_stats() or {}
        for key in keys:
            totals[key] += int(stats.get(key, 0) or 0)
        decisions.update(stats.get("decisions", {}))
        per.append(
            {
                "worker_id": child.worker_id,
                "killed": child.killed,
                "exit_code": child.proc.returncode,
                "uptime_s": stats.get("uptime_s"),
                "decisions": stats.get("decisions"),
                "finished": stats.get("finished"),
                "adopted": {k: v for k, v in stats.items() if k.startswith("adopted")},
                **{k: stats.get(k, 0) for k in ("takeovers", "resent_keys", "republished_deferrals", "stale_answers")},
            }
        )
    return {
        "per_process": per,
        "totals": dict(totals),
        "decisions": dict(decisions),
        "note": "stats of a killed worker are its last dump (every 0.5 s) before the kill",
    }


# ---- report ---------------------------------------------------------------------------------------------------------


def checks(counts: dict[str, Any]) -> list[tuple[str, Any, str, bool]]:
    """(what, value, target, met)."""
    return [
        ("sessions unfinished", counts["sessions_unfinished"], "0", counts["sessions_unfinished"] == 0),
        ("deferrals lost", counts["deferrals_lost"], "0", counts["deferrals_lost"] == 0),
        ("feedback records lost", counts["feedback_lost"], "0", counts["feedback_lost"] == 0),
        ("actions applied twice", counts["actions_applied_twice"], "0", counts["actions_applied_twice"] == 0),
        ("stale answers accepted", counts["stale_answers_accepted"], "0", counts["stale_answers_accepted"] == 0),
        (
            "applied in the BPM, not confirmed in the store",
            counts["action_problems"].get("applied_but_not_confirmed", {}).get("count", 0),
            "0",
            "applied_but_not_confirmed" not in counts["action_problems"],
        ),
        (
            "confirmed in the store, not applied in the BPM",
            counts["action_problems"].get("confirmed_but_not_in_bpm", {}).get("count", 0),
            "0",
            "confirmed_but_not_in_bpm" not in counts["action_problems"],
        ),
    ]


def render_phase(phase_result: dict[str, Any]) -> list[str]:
    counts, phase = phase_result["counts"], phase_result["phase"]
    workers = phase_result["workers"]
    faults = [f"{phase['kills']} worker kill(s) (SIGKILL)"]
    if phase["echo"]:
        faults.append("every message on sessions, deferrals and operator-decisions published twice")
    if phase["stale_share"]:
        faults.append(f"stale operator answers ({counts['stale_injected_total']} injected: {counts['stale_injected']})")
    if phase["restart_at"] is not None:
        faults.append(f"one broker crash and restart at {phase['restart_at']:.0%} of the sessions done")
    lines = [
        f"## Phase `{phase['name']}`: {phase['sessions']} sessions, {phase['storage']} broker storage",
        "",
        f"Faults: {'; '.join(faults)}. At most {phase['in_flight']} sessions in flight, {phase['partitions']} "
        f"partitions per topic, consumer settings {phase['session_timeout_ms']}/{phase['heartbeat_interval_ms']}/"
        f"{phase['fetch_max_wait_ms']} ms (session timeout / heartbeat / fetch wait). The sessions took "
        f"{phase_result['seconds']} s.",
        "",
        "| check | value | target | |",
        "|---|---:|---:|---|",
    ]
    for what, value, target, met in checks(counts):
        lines.append(f"| {what} | {value} | {target} | {'met' if met else '**missed**'} |")
    decisions = workers["decisions"]
    totals = workers["totals"]
    operators = phase_result["operators"]
    lines += [
        "",
        "| what | count |",
        "|---|---:|",
        f"| sessions completed / handed over to an operator / unfinished | {counts['sessions_completed']} / "
        f"{counts['sessions_handed_over']} / {counts['sessions_unfinished']} |",
        f"| case outcomes (ended cases) | {counts['case_outcomes']} |",
        f"| decisions by outcome (worker stats) | {decisions} |",
        f"| actions applied by workers (sandbox keys) / by operators by hand | "
        f"{counts['actions'].get('worker_actions', 0)} / {counts['actions'].get('manual_actions', 0)} |",
        f"| store keys confirmed / unconfirmed | {counts['store_keys_confirmed']} / {counts['store_keys_unconfirmed']} |",
        f"| deferrals stored, by status | {counts['deferrals_total']}: {counts['deferrals']} |",
        f"| deferrals never received by the operators / never answered | "
        f"{counts['deferrals_never_seen_by_operators']} / {counts['deferrals_never_answered']} |",
        f"| feedback records expected / distinct on the topic / extra copies | {counts['feedback_expected']} / "
        f"{counts['feedback_distinct_on_topic']} / {counts['feedback_copies']} |",
        f"| feedback records for answers the store did not accept | {counts['feedback_without_accepted_answer']} |",
        f"| stale answers injected / accepted | {counts['stale_injected_total']} / {counts['stale_answers_accepted']} |",
        f"| answers refused by workers as stale / unknown (echo copies included) | {totals.get('stale_answers', 0)} / "
        f"{totals.get('unknown_answers', 0)} |",
        f"| duplicate answers / duplicate starts refused | {totals.get('duplicate_answers', 0)} / "
        f"{totals.get('duplicates', 0) - totals.get('duplicate_answers', 0)} |",
        f"| echoed copies published | {phase_result['echoed']} (failed: {phase_result['echo_publish_failures']}) |",
        f"| takeovers / unconfirmed keys re-sent / deferrals re-published | {totals.get('takeovers', 0)} / "
        f"{totals.get('resent_keys', 0)} / {totals.get('republished_deferrals', 0)} |",
        f"| answers completed from the store (answered through another worker) | "
        f"{totals.get('answers_seen_in_store', 0)} |",
        f"| stale plans (answer arrived after the case moved) / keys found reserved | {totals.get('stale_plans', 0)} / "
        f"{totals.get('already_reserved', 0)} |",
        f"| publish errors (workers) / runtime producer rebuilt | {totals.get('publish_errors', 0)} / "
        f"{phase_result['runtime_producer_recreated']} |",
        f"| operator pool: received / duplicates / stale deferrals / answered | {operators['received']} / "
        f"{operators['duplicates']} / {operators['stale_deferrals']} / {operators['answered']} |",
        f"| operator pool: deferral -> inbox latency p50 / p99 (ms) | {operators['deferral_latency_ms']['p50']} / "
        f"{operators['deferral_latency_ms']['p99']} |",
        "",
    ]
    if counts["action_problems"]:
        lines += ["Action problems found:", "", "```", json.dumps(counts["action_problems"], indent=2), "```", ""]
    if counts["lost_deferral_ids"] or counts["lost_feedback_ids"]:
        lines += [
            f"Lost deferral ids (first 20): {counts['lost_deferral_ids']}",
            "",
            f"Lost feedback ids (first 20): {counts['lost_feedback_ids']}",
            "",
        ]
    lines += ["Injected events:", "", "| t (s) | event | details |", "|---:|---|---|"]
    for item in phase_result["events"]:
        details = {k: v for k, v in item.items() if k not in ("t_s", "kind")}
        lines.append(f"| {item['t_s']} | {item['kind']} | {json.dumps(details, default=str).replace('|', '/')} |")
    lines += ["", "| worker process | killed | exit | decisions | finished | takeovers | re-sent keys |"]
    lines += ["|---|---|---:|---|---|---:|---:|"]
    for w in workers["per_process"]:
        lines.append(
            f"| {w['worker_id']} | {w['killed']} | {w['exit_code']} | {w['decisions']} | {w['finished']} | "
            f"{w['takeovers']} | {w['resent_keys']} |"
        )
    return [*lines, ""]


def render(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        "# Runtime under faults",
        "",
        f"Sandbox sessions (default scenario, seed {config['seed']}) run by {config['workers']} worker processes "
        "(SIGKILLed ones replaced) with the real Tansu broker, a SQLite store, the sandbox task API over HTTP and the "
        f"simulated operator pool. Policy: {result['models']['policy']}; critic: the policy's own probability; "
        f"thresholds: {result['models']['thresholds']}. Every slice starts in autopilot; audit rate "
        f"{config['audit_rate']}; leases {config['lease_s']} s. Whole run {result['wall_s']} s.",
        "",
        "Two phases. `main`: the worker kills, every message twice and the stale answers on the memory broker. "
        "`broker_restart`: the same faults plus a broker crash and restart on S3 storage (LocalS3, moto), on fewer "
        "sessions: Tansu on S3 lists a partition's record objects on each fetch, and moto serves a few tens of "
        "requests per second here, so a 40-session run with every fault on S3 storage finished 3 sessions in "
        "5 minutes (deferral -> operator latency p50 60 s); the memory broker carries the large run.",
        "",
    ]
    for phase_result in result["phases"]:
        lines += render_phase(phase_result)
    failed = [
        f"{p['phase']['name']}: {what}" for p in result["phases"] for what, _, _, met in checks(p["counts"]) if not met
    ]
    lines += [
        "## What failed",
        "",
        ("Nothing: every target was met in both phases." if not failed else "Missed: " + "; ".join(failed) + "."),
        "",
        "How to read it: worker counters come from each worker process's last stats dump (every 0.5 s), so a "
        "killed worker's last half second is missing from them; the lost / twice / accepted counts come from the "
        "store, the sandbox and the topics, which a kill cannot skew. An unfinished session is one not completed or "
        "handed over when its phase ended (the phase's timeout is in the JSON).",
        "",
        f"Machine: {result['environment']['cpu_count']} CPUs, load average at the start "
        f"{result['environment']['load_average']}; peak RSS of this process {result['peak_rss_mib']} MiB.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("ORDER", "STATS"), help=argparse.SUPPRESS)
    parser.add_argument("--sessions", type=int, default=200, help="sessions of the main phase")
    parser.add_argument("--s3-sessions", type=int, default=12, help="sessions of the broker-restart phase")
    parser.add_argument("--workers", type=int, default=Config.workers)
    parser.add_argument("--kills", type=int, default=4, help="worker kills in the main phase (one in the other)")
    parser.add_argument("--stale-share", type=float, default=0.25)
    parser.add_argument("--audit-rate", type=float, default=Config.audit_rate)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--phases", nargs="+", default=["main", "broker_restart"])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    parser.add_argument("--keep", type=Path, default=None, help="keep the work files (logs, databases) here")
    args = parser.parse_args(argv)
    if args.child:
        child_main(*args.child)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # reconnect noise during the broker restart
    logging.getLogger("service").setLevel(logging.ERROR)
    config = Config(workers=args.workers, audit_rate=args.audit_rate, seed=args.seed)
    phases = [
        p
        for p in default_phases(args.sessions, args.s3_sessions, args.kills, args.stale_share)
        if p.name in args.phases
    ]
    env = environment()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="runtime-faults-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        models = prepare_models(work, config.alpha, config.granularity)
        tqdm.write(f"models: {json.dumps(models.source)}")
        results = [run_phase(config, phase, models, work / phase.name) for phase in phases]
    result: dict[str, Any] = {
        "benchmark": NAME,
        "date": datetime.now(UTC).isoformat(),
        "config": asdict(config),
        "models": models.source,
        "phases": results,
        "wall_s": round(time.monotonic() - started, 1),
        "peak_rss_mib": round(peak_rss_kib() / 1024, 1),
        "environment": env,
    }
    for phase_result in results:
        phase_result["checks"] = [
            {"check": what, "value": value, "target": target, "met": met}
            for what, value, target, met in checks(phase_result["counts"])
        ]
    json_path, md_path = write_results(NAME, result, render(result), args.results)
    print(f"wrote {json_path} and {md_path}")
    return 0 if all(c["met"] for p in results for c in p["checks"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
