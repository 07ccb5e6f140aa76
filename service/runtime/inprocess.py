"""Runtime: the background-session runtime wired in one process (the API's workers, the demo, benches, tests).

``Runtime`` starts (or connects to) a Kafka broker, creates the topics, opens the store, and runs N
``SessionWorker`` threads over one BPM adapter. Configuration comes from ``RuntimeSettings``. Workers run as
threads here: they share the policy (behind one lock: a tokenizer must not be used by two threads at once) and the
process's CPU, and reach it through one ``BatchedProposer`` (``proposer``): concurrent workers' steps (and the
API's suggestions) are gathered for a few milliseconds and proposed for in one batched call on one thread. A
worker in its own process is ``service.runtime.worker_process``.

Consumer groups are scoped by the topic prefix (``<prefix>workers``) like the topics, so two deployments (or two
test runs) on one cluster never share a group and never rebalance each other. The simulated operators of the
sandbox are not part of it: ``sandbox.harness.SandboxRuntime`` adds them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self

from critic.thresholds import SliceThresholds
from policy.batching import BatchedProposer
from schemas.risk import RiskPolicy
from schemas.session import SessionCommand, SessionCommandKind
from service.runtime.adapters.base import BpmAdapter
from service.runtime.autonomy import AutonomyConfig, AutonomyStages
from service.runtime.bus.broker import EmbeddedBroker
from service.runtime.bus.producer import BusProducer, Published
from service.runtime.bus.topics import Topics, ensure_topics
from service.runtime.champion import AcceptanceCritic, Champion, ChampionHolder
from service.runtime.metrics import RuntimeMetrics
from service.runtime.router import Router
from service.runtime.settings import RuntimeSettings, new_worker_id
from service.runtime.stage_sync import StageSync
from service.runtime.store import TERMINAL_STATUSES, RuntimeStore
from service.runtime.worker import WORKER_GROUP, ProposalPolicy, SessionWorker

log = logging.getLogger(__name__)


def session_id_for(case_id: str) -> str:
    """The runtime's session id for a case (one background session per case; a repeated start is the same)."""
    return f"session-{case_id}"


class Runtime:
    """Broker, topics, store and session workers over one BPM adapter. ``start`` brings it up, ``stop`` takes it
    down (also as a context manager). Subclasses add components through ``_start_extras`` / ``_stop_extras`` and
    ``_extra_stats`` (the sandbox's simulated operators).

    ``critic`` and ``thresholds`` (with their registry ``critic_version``) become the ``champion`` every worker,
    the router and the API's copilot route read; a new champion is swapped in there
    (``service.runtime.registry_watch``)."""

    def __init__(
        self,
        adapter: BpmAdapter,
        policy: ProposalPolicy,
        critic: AcceptanceCritic,
        thresholds: SliceThresholds,
        settings: RuntimeSettings | None = None,
        *,
        critic_version: str | None = None,
        risk: RiskPolicy | None = None,
        stages: AutonomyStages | None = None,
        queue_for: Callable[[str], str] = str,
        metrics: RuntimeMetrics | None = None,
    ) -> None:
        self.settings = settings or RuntimeSettings()
        self.policy = policy
        self.champion = ChampionHolder(Champion(critic, thresholds, critic_version))
        self.stages = stages or AutonomyStages(AutonomyConfig(initial_stage=self.settings.initial_stage))
        self.router = Router(
            risk if risk is not None else self.settings.risk_policy(),
            self.stages,
            self.champion,
            audit_rate=self.settings.audit_rate,
            seed=self.settings.seed,
            audit_mode=self.settings.audit_mode,
        )
        self.queue_for = queue_for
        self.topics = Topics(self.settings.topic_prefix)
        self.adapter: BpmAdapter = adapter
        self.metrics = metrics
        self.broker: EmbeddedBroker | None = None
        self.bootstrap = ""
        self.store: RuntimeStore | None = None
        self.stage_sync: StageSync | None = None
        self.producer: BusProducer | None = None
        self.workers: list[SessionWorker] = []
        self._threads: dict[str, tuple[threading.Thread, threading.Event]] = {}
        self._policy_lock = threading.Lock()
        self.proposer = self._new_proposer()
        self._stop = threading.Event()
        self._started_at: float | None = None

    def worker_threads(self) -> list[threading.Thread]:
        """The threads of the running workers (for readiness checks)."""
        return [thread for worker_id, (thread, _) in self._threads.items() if worker_id in self._worker_ids()]

    def _worker_ids(self) -> set[str]:
        return {worker.worker_id for worker in self.workers}

    def _start_extras(self) -> None:
        """Start what a subclass adds (called once the bus, the store and the workers are up)."""

    def _stop_extras(self) -> None:
        """Stop what ``_start_extras`` started (called before the producer, store and broker close)."""

    def _extra_stats(self) -> dict[str, Any]:
        return {}

    def run_thread(self, name: str, target: Callable[[threading.Event], None]) -> None:
        """Run ``target(stop_event)`` on a daemon thread that ``stop`` ends and joins."""
        thread = threading.Thread(target=target, args=(self._stop,), name=name, daemon=True)
        thread.start()
        self._threads[name] = (thread, self._stop)

    def _follow_stages(self, stop: threading.Event) -> None:
        sync = self.stage_sync
        assert sync is not None
        while not stop.wait(sync.interval_s):
            try:
                sync.poll()
            except Exception:  # the store away for a moment: the next poll catches up (the log is replayed by id)
                log.warning("following the stage-event log failed", exc_info=True)

    def _new_proposer(self) -> BatchedProposer:
        settings = self.settings
        return BatchedProposer(
            self.policy,
            lock=self._policy_lock,
            max_batch=settings.policy_max_batch,
            max_wait_ms=settings.policy_max_wait_ms,
            max_queue=settings.policy_max_queue,
            timeout_s=settings.policy_timeout_s,
        )

    @property
    def policy_lock(self) -> threading.Lock:
        """Held around every use of the policy (its tokenizer must not be used by two threads at once)."""
        return self._policy_lock

    # ---- lifetime -------------------------------------------------------------------------------------------------

    def start(self) -> Self:
        settings = self.settings
        if self.proposer.batcher.closed:  # started again after a stop
            self.proposer = self._new_proposer()
        try:
            if settings.kafka_bootstrap:
                self.bootstrap = settings.kafka_bootstrap
            else:
                # The pid file lets a restart find (and kill) a broker a crashed predecessor left behind.
                self.broker = EmbeddedBroker(pid_file=settings.data_dir / "broker.pid").start()
                self.bootstrap = self.broker.bootstrap
            ensure_topics(self.bootstrap, self.topics, settings.partitions)
            self.store = RuntimeStore(settings.store_url())
            self.stage_sync = StageSync(self.store, self.stages)
            self.stage_sync.poll(force=True)  # replay: start with the overrides, kill switch and demotions so far
            self.producer = BusProducer(self.bootstrap, client_id="autopilot-runtime")
            # Followed also without worker threads (an API whose workers run elsewhere): its dashboard and its
            # copilot route see the other processes' stage changes.
            self.run_thread("stage-sync", self._follow_stages)
            for _ in range(settings.workers):
                self.add_worker()
            self._start_extras()
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
            worker_id or new_worker_id(len(self.workers)),
            self.adapter,
            self.proposer,
            self.champion,
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
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            idle_fetch_max_wait_ms=settings.idle_fetch_max_wait_ms,
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
        """Stop the workers (their sessions are released), the extras, the producer, the store and the
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
        self.proposer.close()  # runs what is queued; nothing else submits once the workers are stopped
        self._stop_extras()
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
        """Every worker's stats, the extras', and the store's sessions by status and queues."""
        assert self.store is not None
        return {
            "uptime_s": 0.0 if self._started_at is None else round(time.monotonic() - self._started_at, 3),
            "sessions": self.store.counts_by_status(),
            "queues": {queue: stats._asdict() for queue, stats in self.store.deferral_stats().items()},
            "workers": [worker.stats() for worker in self.workers],
            **self._extra_stats(),
        }

    def _producer(self) -> BusProducer:
        if self.producer is None:
            raise RuntimeError("runtime: call start() first")
        return self.producer
