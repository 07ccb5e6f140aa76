"""A session worker in its own process (``autopilot worker``, what the Helm Deployment runs).

``worker_spec_from_settings`` turns ``RuntimeSettings`` (the environment of a deployment) into a ``WorkerSpec``:
the policy directory, the critic registry's champion and its thresholds, the BPM's task API, the risk file, the
feedback store; ``build_worker_process`` loads what the spec names (``build_worker``: the worker alone) and
``WorkerProcess.run`` runs it until SIGTERM, with a ``RegistryWatcher`` beside it that runs a promotion round at
start, swaps in every new registry champion and promotes again, like the API does for its own workers.
``WorkerSetupError`` says which setting is wrong before anything heavy is loaded; ``check_bus`` fails fast when no
broker answers.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from types import FrameType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from critic.registry import CriticRegistry
from critic.store import FeedbackStore
from critic.thresholds import SliceThresholds
from policy.saved import COMBINED_FILE, POLICY_FILE, is_policy_dir
from schemas.risk import RiskPolicy
from service.runtime.adapters.base import BpmAdapter
from service.runtime.autonomy import AutonomyConfig, AutonomyStages
from service.runtime.bus.producer import BusProducer
from service.runtime.bus.topics import Topics, ensure_topics
from service.runtime.champion import Champion, ChampionHolder
from service.runtime.metrics import RuntimeMetrics
from service.runtime.registry_watch import RegistryWatcher
from service.runtime.router import AuditMode, Router
from service.runtime.settings import RuntimeSettings, new_worker_id
from service.runtime.stage_sync import StageSync
from service.runtime.store import RuntimeStore
from service.runtime.worker import WORKER_GROUP, SessionWorker

log = logging.getLogger(__name__)


class WorkerSpec(BaseModel):
    """Everything a worker process needs, as JSON: where the bus, the store and the BPM (task API) are, and the
    saved policy, critic and thresholds, and the registry and feedback store it keeps them current from. Each
    process holds its own ``AutonomyStages``, kept in step with the others through the store's stage-event log
    (``service.runtime.stage_sync``)."""

    model_config = ConfigDict(extra="forbid")

    worker_id: str = Field(min_length=1)
    bootstrap: str = Field(min_length=1)
    database_url: str = Field(min_length=1)
    topic_prefix: str = "autopilot."
    bpm_url: str = Field(min_length=1, description="The task API root, e.g. http://host:port/api/v1")
    policy_path: str = Field(min_length=1)
    policy_server_url: str | None = Field(
        default=None,
        description="An inference server holding the policy's checkpoint (policy.remote); None: in process",
    )
    critic_path: str = Field(min_length=1, description="A saved critic directory (critic.persist.load_critic)")
    thresholds: dict[str, Any] = Field(description="SliceThresholds.to_dict()")
    risk: RiskPolicy = Field(default_factory=RiskPolicy)
    autonomy: dict[str, Any] = Field(default_factory=dict, description="AutonomyConfig.to_dict()")
    audit_rate: float = Field(default=0.05, ge=0.0, lt=1.0)
    audit_mode: AuditMode = AuditMode.AFTER
    reply_guard: bool = True
    policy_processes: int = Field(default=0, ge=0, description="Child processes holding the policy (policy.process)")
    seed: int = 0
    batch_size: int = Field(default=32, ge=1)
    lease_s: float = Field(default=30.0, gt=0)
    max_steps: int = Field(default=40, ge=1)
    session_timeout_ms: int = Field(default=6000, ge=1)
    heartbeat_interval_ms: int = Field(default=1000, ge=1)
    fetch_max_wait_ms: int = Field(default=10, ge=0)
    idle_fetch_max_wait_ms: int | None = Field(
        default=500, ge=0, description="The fetch wait after 2 s without records (None: always fetch_max_wait_ms)"
    )
    critic_version: str | None = Field(default=None, description="The registry version of critic_path")
    registry_dir: str | None = Field(
        default=None, description="The critic registry whose champion the process follows (None: critic_path for good)"
    )
    feedback_url: str | None = Field(
        default=None, description="The feedback store: labels per slice for the promotion rounds (None: none)"
    )
    registry_poll_s: float = Field(default=30.0, ge=0, description="How often the registry is checked (0: never)")
    auto_promote: bool = Field(default=True, description="Promotion rounds at start and on every new champion")


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
    from policy.process import serving_policy
    from service.runtime.adapters.http import HttpBpmAdapter

    stages = AutonomyStages(AutonomyConfig.from_dict(spec.autonomy))
    champion = ChampionHolder(
        Champion(load_critic(spec.critic_path), SliceThresholds.from_dict(spec.thresholds), spec.critic_version)
    )
    router = Router(spec.risk, stages, champion, audit_rate=spec.audit_rate, seed=spec.seed, audit_mode=spec.audit_mode)
    store = RuntimeStore(spec.database_url)
    stage_sync = StageSync(store, stages, origin=spec.worker_id)
    stage_sync.poll(force=True)  # replay the overrides, kill switch and demotions made so far
    return SessionWorker(
        spec.worker_id,
        adapter if adapter is not None else HttpBpmAdapter(spec.bpm_url),
        serving_policy(
            spec.policy_path,
            processes=spec.policy_processes,
            reply_guard=spec.reply_guard,
            server_url=spec.policy_server_url,
        ),
        champion,
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
        idle_fetch_max_wait_ms=spec.idle_fetch_max_wait_ms,
        stage_sync=stage_sync,
        metrics=metrics,
    )


class WorkerProcess:
    """A worker and what keeps its process current beside it: the registry watcher (on a thread of its own) and
    the feedback store the promotion rounds count labels in."""

    def __init__(
        self, worker: SessionWorker, watcher: RegistryWatcher | None = None, feedback: FeedbackStore | None = None
    ) -> None:
        self.worker = worker
        self.watcher = watcher
        self.feedback = feedback

    def run(self) -> None:
        """Run until SIGTERM or SIGINT: a promotion round, the watcher's thread, the worker's loop; then close
        everything (the worker releases its sessions)."""
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        watching: threading.Thread | None = None
        try:
            if self.watcher is not None:
                try:
                    promoted = self.watcher.initial_round()
                    log.info("slices in autopilot after the promotion round: %s", ", ".join(promoted) or "none")
                except Exception:  # the feedback store away: run without promoting; the next champion tries again
                    log.exception("worker %s: the promotion round at start failed", self.worker.worker_id)
                watching = threading.Thread(target=self.watcher.run, args=(stop,), name="registry-watch", daemon=True)
                watching.start()
            self.worker.run(stop)
        finally:
            stop.set()
            if watching is not None:
                watching.join(10.0)
            self.worker.close()
            self.worker.producer.close()
            self.worker.store.close()
            if self.feedback is not None:
                self.feedback.close()


def build_worker_process(spec: WorkerSpec, *, metrics: RuntimeMetrics | None = None) -> WorkerProcess:
    """The worker of ``spec`` with its registry watcher and feedback store (opened first: a wrong URL fails
    before the policy is loaded, as WorkerSetupError naming ``feedback_url``)."""
    feedback: FeedbackStore | None = None
    if spec.feedback_url:
        try:
            feedback = FeedbackStore(spec.feedback_url)
        except Exception as exc:
            raise WorkerSetupError(f"feedback_url: cannot open the feedback store: {exc}") from exc
    try:
        worker = build_worker(spec, metrics=metrics)
    except BaseException:
        if feedback is not None:
            feedback.close()
        raise
    watcher = RegistryWatcher(
        worker.champion,
        worker.stages,
        spec.registry_dir,
        sync=worker.stage_sync,
        label_counts=feedback.counts_by_slice if feedback is not None else None,
        poll_s=spec.registry_poll_s,
        auto_promote=spec.auto_promote,
    )
    return WorkerProcess(worker, watcher, feedback)


def run_worker_process(worker: SessionWorker) -> None:
    """Run ``worker`` alone in this process until SIGTERM or SIGINT, then close it (releasing its sessions)."""
    WorkerProcess(worker).run()


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
    if not is_policy_dir(settings.policy_dir):
        raise WorkerSetupError(
            f"policy_dir: {settings.policy_dir} is not a saved policy (no {POLICY_FILE} or {COMBINED_FILE})"
        )
    registry = CriticRegistry(settings.registry_dir)
    if not settings.registry_dir.is_dir():
        raise WorkerSetupError(f"registry_dir: {settings.registry_dir} is not a directory")
    champion = registry.champion()
    if champion is None:
        raise WorkerSetupError(
            f"registry_dir: {settings.registry_dir} has no champion critic; register and promote one first "
            "(autopilot critic retrain, or autopilot critic promote VERSION)"
        )
    try:
        risk = settings.risk_policy()
    except ValueError as exc:  # names the file and the field
        raise WorkerSetupError(str(exc)) from exc
    thresholds = registry.thresholds(champion)
    if thresholds is None:
        raise WorkerSetupError(f"registry_dir: the champion {champion!r} has no thresholds; it cannot gate actions")
    return WorkerSpec(
        worker_id=settings.worker_id or new_worker_id(0),
        risk=risk,
        bootstrap=settings.kafka_bootstrap,
        database_url=settings.store_url(),
        topic_prefix=settings.topic_prefix,
        bpm_url=settings.bpm_url,
        policy_path=str(settings.policy_dir),
        policy_server_url=settings.policy_server_url,
        critic_path=str(registry.artifact_path(champion)),
        thresholds=thresholds,
        critic_version=champion,
        registry_dir=str(settings.registry_dir),
        feedback_url=settings.resolved_feedback_url(),
        registry_poll_s=settings.registry_poll_s,
        auto_promote=settings.auto_promote,
        # The guardrails' target acceptance is the thresholds' own 1 - alpha, so audits and thresholds agree.
        autonomy=AutonomyConfig(
            initial_stage=settings.initial_stage, alpha=SliceThresholds.from_dict(thresholds).config.alpha
        ).to_dict(),
        audit_rate=settings.audit_rate,
        audit_mode=settings.audit_mode,
        reply_guard=settings.reply_guard,
        policy_processes=settings.policy_processes,
        seed=settings.seed,
        batch_size=settings.batch_size,
        lease_s=settings.lease_s,
        max_steps=settings.max_steps,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        idle_fetch_max_wait_ms=settings.idle_fetch_max_wait_ms,
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
