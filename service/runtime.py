"""Runtime: the background-session runtime wired in one process, for the demo, the benches and the tests.

``Runtime`` starts (or connects to) a Kafka broker, creates the topics, opens the store, and runs N
``SessionWorker`` threads and the ``SimulatedOperatorPool`` over one sandbox platform. Configuration comes from
``RuntimeSettings`` (environment variables with the prefix ``AUTOPILOT_``): ``AUTOPILOT_KAFKA_BOOTSTRAP`` selects
an existing Kafka cluster instead of the embedded Tansu broker, ``AUTOPILOT_DATABASE_URL`` a database instead of
the SQLite file under ``data_dir``.

Workers run as threads here: they share the policy (behind one lock: a tokenizer must not be used by two threads
at once) and the process's CPU. A worker in its own process (a deployment, or a test that kills one with SIGKILL)
is described by a ``WorkerSpec`` and built with ``build_worker``; it reaches the BPM over HTTP.

Consumer groups are scoped by the topic prefix (``<prefix>workers``, ``<prefix>operators``) like the topics, so two
deployments (or two test runs) on one cluster never share a group and never rebalance each other.

``worker_spec_from_settings`` turns ``RuntimeSettings`` (the environment of a deployment) into a ``WorkerSpec``:
the policy directory, the critic registry's champion and its thresholds, the BPM's task API; ``autopilot worker``
(``service.cli``) runs it. ``WorkerSetupError`` says which setting is wrong before anything heavy is loaded.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from critic.registry import CriticRegistry
from critic.thresholds import SliceThresholds
from sandbox.operators import SimOperator, operator_pool
from sandbox.platform import SandboxPlatform
from sandbox.risk import DEFAULT_RISK_POLICY
from schemas.actions import Action
from schemas.risk import AutonomyStage, RiskPolicy
from schemas.session import SessionCommand, SessionCommandKind
from service.adapters.base import BpmAdapter
from service.adapters.sandbox_inprocess import SandboxAdapter
from service.autonomy import AutonomyConfig, AutonomyStages
from service.bus.broker import EmbeddedBroker
from service.bus.producer import BusProducer, Published
from service.bus.topics import Topics, ensure_topics
from service.metrics import RuntimeMetrics
from service.operator_pool import OPERATOR_GROUP, SimulatedOperatorPool
from service.router import Router, ThresholdSource
from service.stage_sync import StageSync
from service.store import TERMINAL_STATUSES, RuntimeStore
from service.worker import WORKER_GROUP, AcceptanceCritic, ProposalPolicy, SessionWorker

log = logging.getLogger(__name__)


def no_operator_time(action: Action, new_customer_messages: int) -> float:
    """The runtime's adapter clock: an action executed in the background costs no operator time. Operator time
    is charged by the operator side (``SimulatedOperatorPool``) for what a human actually does."""
    return 0.0


def session_id_for(case_id: str) -> str:
    """The runtime's session id for a case (one background session per case; a repeated start is the same)."""
    return f"session-{case_id}"


def _worker_id(index: int) -> str:
    # Unique per incarnation: a restarted process must not inherit (and silently renew) a dead one's leases.
    return f"{socket.gethostname()}-{os.getpid()}-w{index}-{uuid.uuid4().hex[:6]}"


class RuntimeSettings(BaseSettings):
    """The runtime's configuration; every field can be set by ``AUTOPILOT_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="AUTOPILOT_", extra="ignore")

    kafka_bootstrap: str | None = Field(default=None, description="host:port of a Kafka cluster; None: embedded")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; None: SQLite under data_dir")
    data_dir: Path = Path("out/runtime")
    topic_prefix: str = "autopilot."
    partitions: int = Field(default=8, ge=1, description="Partitions per topic (sessions spread over workers)")
    workers: int = Field(default=2, ge=0, description="SessionWorker threads (0: workers run elsewhere)")
    batch_size: int = Field(default=32, ge=1)
    lease_s: float = Field(default=30.0, gt=0)
    max_steps: int = Field(default=40, ge=1)
    audit_rate: float = Field(default=0.05, ge=0.0, lt=1.0)
    operators: int = Field(default=12, ge=1, description="Simulated operators in the pool")
    think_time_s: float = Field(default=0.0, ge=0.0, description="Wall-clock seconds an operator spends per review")
    seed: int = 0
    session_timeout_ms: int = Field(default=6000, ge=1)
    heartbeat_interval_ms: int = Field(default=1000, ge=1)
    fetch_max_wait_ms: int = Field(default=10, ge=0)
    initial_stage: AutonomyStage = Field(
        default=AutonomyStage.COPILOT,
        description="The stage every slice starts in (then promotions, demotions and overrides apply)",
    )
    # A worker in its own process (``autopilot worker``):
    policy_dir: Path | None = Field(default=None, description="A saved policy directory (LMPolicy.save)")
    registry_dir: Path | None = Field(default=None, description="The critic registry; its champion is used")
    bpm_url: str | None = Field(default=None, description="The BPM task API root, e.g. http://bpm:8000/api/v1")
    worker_id: str | None = Field(default=None, description="None: host name, process id and a random suffix")
    torch_threads: int | None = Field(default=None, ge=1, description="Threads of the policy; None: torch's default")
    bus_timeout_s: float = Field(default=10.0, gt=0, description="How long a starting worker waits for the broker")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="A worker process serves /metrics on this port (None: no endpoint)"
    )

    @field_validator(
        "kafka_bootstrap", "database_url", "policy_dir", "registry_dir", "bpm_url", "worker_id", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        # An empty variable (a Helm value left blank) means "not set", not the current directory.
        return None if isinstance(value, str) and not value.strip() else value

    def store_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'runtime.db'}"


class Runtime:
    """Broker, topics, store, workers and the simulated operators for one sandbox platform. ``start`` brings it
    up, ``stop`` takes it down (also as a context manager)."""

    def __init__(
        self,
        platform: SandboxPlatform | None,
        policy: ProposalPolicy,
        critic: AcceptanceCritic,
        thresholds: ThresholdSource,
        settings: RuntimeSettings | None = None,
        *,
        risk: RiskPolicy = DEFAULT_RISK_POLICY,
        stages: AutonomyStages | None = None,
        operators: Sequence[SimOperator] | None = None,
        with_operators: bool = True,
        queue_for: Callable[[str], str] = str,
        adapter: BpmAdapter | None = None,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        if platform is None and (adapter is None or with_operators):
            raise ValueError("platform: required unless an adapter is given and the simulated operators are off")
        self.settings = settings or RuntimeSettings()
        self.platform = platform
        self.policy = policy
        self.critic = critic
        self.thresholds = thresholds
        self.stages = stages or AutonomyStages(AutonomyConfig(initial_stage=self.settings.initial_stage))
        self.router = Router(
            risk, self.stages, thresholds, audit_rate=self.settings.audit_rate, seed=self.settings.seed
        )
        self.operators = (
            list(operators) if operators is not None else operator_pool(self.settings.operators, self.settings.seed)
        )
        self.with_operators = with_operators
        self.queue_for = queue_for
        self.topics = Topics(self.settings.topic_prefix)
        # One time account: workers apply through it (background actions cost nothing), operators charge it.
        if adapter is None:
            assert platform is not None  # checked above
            adapter = SandboxAdapter(platform, clock=no_operator_time)
        self.adapter: BpmAdapter = adapter
        self.metrics = metrics
        self.broker: EmbeddedBroker | None = None
        self.bootstrap = ""
        self.store: RuntimeStore | None = None
        self.stage_sync: StageSync | None = None
        self.producer: BusProducer | None = None
        self.pool: SimulatedOperatorPool | None = None
        self.workers: list[SessionWorker] = []
        self._threads: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._policy_lock = threading.Lock()
        self._stop = threading.Event()
        self._started_at: float | None = None

    def worker_threads(self) -> list[threading.Thread]:
        """The threads of the running workers (for readiness checks)."""
        return [thread for worker_id, (thread, _) in self._threads.items() if worker_id != "operator-pool"]

    @property
    def policy_lock(self) -> threading.Lock:
        """Held around every use of the policy (its tokenizer must not be used by two threads at once)."""
        return self._policy_lock

    # ---- lifetime -------------------------------------------------------------------------------------------------

    def start(self) -> Self:
        settings = self.settings
        try:
            if settings.kafka_bootstrap:
                self.bootstrap = settings.kafka_bootstrap
            else:
                self.broker = EmbeddedBroker().start()
                self.bootstrap = self.broker.bootstrap
            ensure_topics(self.bootstrap, self.topics, settings.partitions)
            self.store = RuntimeStore(settings.store_url())
            self.stage_sync = StageSync(self.store, self.stages)
            self.stage_sync.poll(force=True)  # replay: start with the overrides, kill switch and demotions so far
            self.producer = BusProducer(self.bootstrap, client_id="autopilot-runtime")
            for _ in range(settings.workers):
                self.add_worker()
            if self.with_operators:
                assert self.platform is not None and isinstance(self.adapter, SandboxAdapter)
                self.pool = SimulatedOperatorPool(
                    self.platform,
                    self.operators,
                    self.producer,
                    self.topics,
                    self.bootstrap,
                    settings.seed,
                    settings.think_time_s,
                    adapter=self.adapter,
                    group=self.topics.prefix + OPERATOR_GROUP,
                    session_timeout_ms=settings.session_timeout_ms,
                    heartbeat_interval_ms=settings.heartbeat_interval_ms,
                    fetch_max_wait_ms=settings.fetch_max_wait_ms,
                )
                thread = threading.Thread(target=self.pool.run, args=(self._stop,), name="operator-pool", daemon=True)
                thread.start()
                self._threads["operator-pool"] = (thread, self._stop)
        except BaseException:
            self.stop()
            raise
        self._started_at = time.monotonic()
        return self

    def add_worker(self, worker_id: str | None = None) -> SessionWorker:
        """Start one more SessionWorker thread (it joins the ``workers`` group and takes over expired leases)."""
        if self.store is None or self.producer is None:
            raise RuntimeError("runtime: call start() first")
        settings = self.settings
        worker = SessionWorker(
            worker_id or _worker_id(len(self.workers)),
            self.adapter,
            self.policy,
            self.critic,
            self.thresholds,
            self.router,
            self.stages,
            self.store,
            self.producer,
            self.topics,
            self.queue_for,
            batch_size=settings.batch_size,
            lease_s=settings.lease_s,
            max_steps=settings.max_steps,
            group_id=self.topics.prefix + WORKER_GROUP,
            policy_lock=self._policy_lock,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            metrics=self.metrics,
            stage_sync=self.stage_sync,
        )
        stop = threading.Event()
        thread = threading.Thread(target=worker.run, args=(stop,), name=f"worker-{worker.worker_id}", daemon=True)
        self.workers.append(worker)
        self._threads[worker.worker_id] = (thread, stop)
        thread.start()
        return worker

    def stop_worker(self, worker: SessionWorker, release: bool = True, timeout: float = 10.0) -> None:
        """Stop one worker thread; ``release`` hands its sessions back at once (else they wait for lease expiry)."""
        entry = self._threads.pop(worker.worker_id, None)
        if entry is not None:
            thread, stop = entry
            stop.set()
            thread.join(timeout)
            if thread.is_alive():
                # Its consumer is still in use on that thread (kafka-python's is not thread-safe): leave it; the
                # thread exits at its next round and its leases expire if it never does.
                log.error("worker %s did not stop within %.0f s; not closing it", worker.worker_id, timeout)
                return
        worker.close(release=release)

    def stop(self) -> None:
        """Stop the workers (their sessions are released), the operators, the producer, the store and the
        embedded broker. Idempotent."""
        self._stop.set()
        for worker in list(self.workers):
            try:
                self.stop_worker(worker)
            except Exception:
                log.exception("stopping worker %s failed", worker.worker_id)
        for thread, stop in self._threads.values():
            stop.set()
            thread.join(10.0)
        self._threads.clear()
        if self.pool is not None:
            self.pool.close()
        if self.producer is not None:
            self.producer.close()
        if self.store is not None:
            self.store.close()
        if self.broker is not None:
            self.broker.close()
            self.broker = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- sessions -------------------------------------------------------------------------------------------------

    def start_sessions(self, case_ids: Iterable[str], issued_by: str = "runtime") -> list[str]:
        """Publish a start command per case (keyed by its session id); return the session ids."""
        producer = self._producer()
        futures: list[Future[Published]] = []
        session_ids: list[str] = []
        for case_id in case_ids:
            state = self.adapter.observe(case_id)  # the process id, and a CaseNotFoundError for a wrong id
            command = SessionCommand(
                command=SessionCommandKind.START,
                session_id=session_id_for(case_id),
                case_id=case_id,
                process_id=state.process_id,
                issued_by=issued_by,
            )
            futures.append(
                producer.publish_async(
                    self.topics.sessions, command, command.session_id, message_id=f"start:{command.session_id}"
                )
            )
            session_ids.append(command.session_id)
        producer.flush(timeout=30.0)
        for future in futures:
            future.result(timeout=30.0)
        return session_ids

    def stop_sessions(self, session_ids: Iterable[str], issued_by: str = "runtime") -> None:
        """Publish a stop command per session."""
        producer = self._producer()
        assert self.store is not None
        for session_id in session_ids:
            row = self.store.get_session(session_id)
            if row is None:
                raise ValueError(f"session_ids: no session {session_id!r}")
            command = SessionCommand(
                command=SessionCommandKind.STOP,
                session_id=session_id,
                case_id=row.case_id,
                process_id=row.process_id,
                issued_by=issued_by,
            )
            producer.publish(self.topics.sessions, command, session_id)

    def finished(self, session_ids: Iterable[str]) -> bool:
        """True when every session exists and has ended."""
        assert self.store is not None
        for session_id in session_ids:
            row = self.store.get_session(session_id)
            if row is None or row.status not in TERMINAL_STATUSES:
                return False
        return True

    @staticmethod
    def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
        """Poll ``predicate`` until it is true (True) or ``timeout`` seconds have passed (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    def stats(self) -> dict[str, Any]:
        """Every worker's stats, the operators', and the store's sessions by status and queues."""
        assert self.store is not None
        return {
            "uptime_s": 0.0 if self._started_at is None else round(time.monotonic() - self._started_at, 3),
            "sessions": self.store.counts_by_status(),
            "queues": {queue: stats._asdict() for queue, stats in self.store.deferral_stats().items()},
            "workers": [worker.stats() for worker in self.workers],
            "operators": self.pool.stats() if self.pool is not None else None,
        }

    def _producer(self) -> BusProducer:
        if self.producer is None:
            raise RuntimeError("runtime: call start() first")
        return self.producer


# ---- a worker in its own process ----------------------------------------------------------------------------------


class WorkerSpec(BaseModel):
    """Everything a worker process needs, as JSON: where the bus, the store and the BPM (task API) are, and the
    saved policy, critic and thresholds. Each process holds its own ``AutonomyStages``, kept in step with the others
    through the store's stage-event log (``service.stage_sync``)."""

    model_config = ConfigDict(extra="forbid")

    worker_id: str = Field(min_length=1)
    bootstrap: str = Field(min_length=1)
    database_url: str = Field(min_length=1)
    topic_prefix: str = "autopilot."
    bpm_url: str = Field(min_length=1, description="The task API root, e.g. http://host:port/api/v1")
    policy_path: str = Field(min_length=1)
    critic_path: str = Field(min_length=1, description="A saved critic directory (critic.persist.load_critic)")
    thresholds: dict[str, Any] = Field(description="SliceThresholds.to_dict()")
    risk: RiskPolicy = Field(default_factory=lambda: DEFAULT_RISK_POLICY.model_copy(deep=True))
    autonomy: dict[str, Any] = Field(default_factory=dict, description="AutonomyConfig.to_dict()")
    audit_rate: float = Field(default=0.05, ge=0.0, lt=1.0)
    seed: int = 0
    batch_size: int = Field(default=32, ge=1)
    lease_s: float = Field(default=30.0, gt=0)
    max_steps: int = Field(default=40, ge=1)
    session_timeout_ms: int = Field(default=6000, ge=1)
    heartbeat_interval_ms: int = Field(default=1000, ge=1)
    fetch_max_wait_ms: int = Field(default=10, ge=0)


def build_worker(
    spec: WorkerSpec,
    *,
    adapter: BpmAdapter | None = None,
    producer: BusProducer | None = None,
    metrics: RuntimeMetrics | None = None,
) -> SessionWorker:
    """Build a worker from ``spec`` (loads the policy and the critic). ``adapter`` / ``producer`` replace the
    HTTP adapter and the producer the spec describes."""
    # Imported here: loading the policy pulls in torch and transformers, which the in-process Runtime never needs.
    from critic.persist import load_critic
    from policy.policy import LMPolicy
    from service.adapters.http import HttpBpmAdapter

    stages = AutonomyStages(AutonomyConfig.from_dict(spec.autonomy))
    thresholds = SliceThresholds.from_dict(spec.thresholds)
    router = Router(spec.risk, stages, thresholds, audit_rate=spec.audit_rate, seed=spec.seed)
    store = RuntimeStore(spec.database_url)
    stage_sync = StageSync(store, stages, origin=spec.worker_id)
    stage_sync.poll(force=True)  # replay the overrides, kill switch and demotions made so far
    return SessionWorker(
        spec.worker_id,
        adapter if adapter is not None else HttpBpmAdapter(spec.bpm_url),
        LMPolicy.load(spec.policy_path),
        load_critic(spec.critic_path),
        thresholds,
        router,
        stages,
        store,
        producer if producer is not None else BusProducer(spec.bootstrap, client_id=f"worker-{spec.worker_id}"),
        Topics(spec.topic_prefix),
        batch_size=spec.batch_size,
        lease_s=spec.lease_s,
        max_steps=spec.max_steps,
        group_id=spec.topic_prefix + WORKER_GROUP,
        session_timeout_ms=spec.session_timeout_ms,
        heartbeat_interval_ms=spec.heartbeat_interval_ms,
        fetch_max_wait_ms=spec.fetch_max_wait_ms,
        stage_sync=stage_sync,
        metrics=metrics,
    )


def run_worker_process(worker: SessionWorker) -> None:
    """Run ``worker`` in this process until SIGTERM or SIGINT, then close it (releasing its sessions)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run(stop)
    finally:
        worker.close()
        worker.producer.close()
        worker.store.close()


class WorkerSetupError(ValueError):
    """A worker process cannot start with these settings; the message names the setting (``policy_dir: ...``)."""


def _setting(name: str, value: object) -> None:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise WorkerSetupError(f"{name}: not set (set AUTOPILOT_{name.upper()})")


def worker_spec_from_settings(settings: RuntimeSettings) -> WorkerSpec:
    """The ``WorkerSpec`` of a worker process from its settings, checked without loading anything heavy: the
    policy directory holds a saved policy, the registry has a champion with thresholds (its artifact's hash is
    verified), the bus and the BPM are named. Raises WorkerSetupError (or RegistryError for a damaged registry)."""
    _setting("kafka_bootstrap", settings.kafka_bootstrap)
    _setting("bpm_url", settings.bpm_url)
    _setting("policy_dir", settings.policy_dir)
    _setting("registry_dir", settings.registry_dir)
    assert settings.kafka_bootstrap and settings.bpm_url and settings.policy_dir and settings.registry_dir
    if not settings.bpm_url.startswith(("http://", "https://")):
        raise WorkerSetupError(f"bpm_url: must be an http(s) URL, got {settings.bpm_url!r}")
    policy_file = settings.policy_dir / "policy.json"
    if not policy_file.is_file():
        raise WorkerSetupError(f"policy_dir: {settings.policy_dir} is not a saved policy (no {policy_file.name})")
    registry = CriticRegistry(settings.registry_dir)
    if not settings.registry_dir.is_dir():
        raise WorkerSetupError(f"registry_dir: {settings.registry_dir} is not a directory")
    champion = registry.champion()
    if champion is None:
        raise WorkerSetupError(
            f"registry_dir: {settings.registry_dir} has no champion critic; register and promote one first "
            "(autopilot critic retrain, or autopilot critic promote VERSION)"
        )
    thresholds = registry.thresholds(champion)
    if thresholds is None:
        raise WorkerSetupError(f"registry_dir: the champion {champion!r} has no thresholds; it cannot gate actions")
    return WorkerSpec(
        worker_id=settings.worker_id or _worker_id(0),
        bootstrap=settings.kafka_bootstrap,
        database_url=settings.store_url(),
        topic_prefix=settings.topic_prefix,
        bpm_url=settings.bpm_url,
        policy_path=str(settings.policy_dir),
        critic_path=str(registry.artifact_path(champion)),
        thresholds=thresholds,
        # The guardrails' target acceptance is the thresholds' own 1 - alpha, so audits and thresholds agree.
        autonomy=AutonomyConfig(
            initial_stage=settings.initial_stage, alpha=SliceThresholds.from_dict(thresholds).config.alpha
        ).to_dict(),
        audit_rate=settings.audit_rate,
        seed=settings.seed,
        batch_size=settings.batch_size,
        lease_s=settings.lease_s,
        max_steps=settings.max_steps,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )


def _bootstrap_addresses(bootstrap: str) -> list[tuple[str, int]]:
    addresses: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        host, sep, port = item.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise WorkerSetupError(f"kafka_bootstrap: {item.strip()!r} is not host:port")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def check_bus(bootstrap: str, topics: Topics, partitions: int, timeout_s: float = 10.0) -> None:
    """Fail fast when no broker answers at ``bootstrap``, then create the topics that are missing (idempotent:
    the consumer refuses missing topics, and on Tansu a subscribe would create them with the wrong partition
    count). Raises WorkerSetupError naming ``kafka_bootstrap``."""
    addresses = _bootstrap_addresses(bootstrap)
    deadline = time.monotonic() + timeout_s
    reachable = False
    while not reachable:
        for host, port in addresses:
            try:
                with socket.create_connection((host, port), timeout=min(2.0, timeout_s)):
                    reachable = True
                    break
            except OSError:
                continue
        if not reachable:
            if time.monotonic() >= deadline:
                raise WorkerSetupError(f"kafka_bootstrap: no broker accepts connections at {bootstrap}")
            time.sleep(0.5)  # a broker starting beside us (a pod restart) gets a few seconds
    try:
        ensure_topics(bootstrap, topics, partitions, timeout_ms=int(timeout_s * 1000))
    except WorkerSetupError:
        raise
    except Exception as exc:  # the port answers but not as a Kafka broker, or it failed on its side
        raise WorkerSetupError(f"kafka_bootstrap: the broker at {bootstrap} did not answer as Kafka: {exc!r}") from exc
