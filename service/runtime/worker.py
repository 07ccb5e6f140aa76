"""SessionWorker: runs background sessions step by step (observe, propose, score, decide, execute or defer) and
resumes them from the store and the BPM after a crash.

One loop, one thread. ``run`` alternates three phases until its stop event is set:

1. maintenance (time-gated): apply other processes' stage changes (``StageSync.poll``, once a second); write this
   worker's heartbeat row (``store.heartbeat``: every ``heartbeat_s``, and at once when the stage log it applied,
   its champion or the kill switch changed); renew this worker's leases every ``lease_s / 3``; every
   ``lease_s / 2`` take over sessions whose lease expired (``store.expired_sessions(include_parked=True)``),
   notice parked sessions that were answered through another worker, and re-send deferrals whose publish failed;
2. the bus: one ``BusConsumer.poll_once`` over ``sessions`` and ``operator-decisions`` (group ``workers``, or ``group_id``; both
   topics have the same partition count and key = session id, so the range assignor gives one member every
   message of a session). Handlers only touch the store and mark sessions ready; no BPM call happens here, so a
   slow BPM never delays the commit of a batch;
3. one step batch of up to ``batch_size`` READY sessions: first what an answer or an adoption left to do (apply
   the approved action, hand over after a reject, observe again after an "environment" reject (up to
   ``MAX_ENVIRONMENT_RETRIES`` per session), re-send unconfirmed keys), then every session is observed,
   proposed for in one ``propose_batch`` call (in a Runtime, through its ``BatchedProposer``: the steps of
   concurrent workers are gathered into one batched policy call on the batcher's thread; a full queue backs the
   sessions off, counted as ``policy_busy``), scored in one critic call and routed, and only then executed
   (EXECUTE) or parked (DEFER, ALWAYS_ASK), so a session's decision latency excludes the others' side effects.
   The batch reads the process's champion (``service.runtime.champion``) once: every proposal of the batch is
   scored by its critic and decided on its thresholds, and the decision records its version.

A session comes back to the step queue by one path, ``_resume``: an answer on the bus, an answer noticed in the
store, a takeover of an expired lease, a restart under the same worker id, or a repeated start all go through it
(in memory: ready with the answer to complete; not in memory: claimed and rebuilt from the store).

Why one loop and not a consumer thread beside a step thread: a session is never touched by two threads (no
per-session locks), and the consumer is used by the thread that made it (kafka-python's consumer is not
thread-safe). Kafka heartbeats run on kafka-python's own thread, so a long
batch does not cost the group membership; leases are renewed between phases and ``batch_size`` bounds a phase.
The cost: an operator's answer waits for the batch in progress (a few hundred ms with the small policy).

Safety, given the store's guarantees (see ``service.runtime.store``):

- Side effects go through ``store.apply_once`` with the key ``"{session}:{step}:{sha256(action_key)[:16]}"``
  (``step`` = the UI state's step the action was decided on) and the adapter's ``expected_etag``; parking goes
  through ``store.park``. Both are fenced by this worker's lease in the store (``LeaseLostError``: the session is
  dropped from memory, its new owner runs it). The answered action of a deferral is applied only if the case is
  still at the deferral's etag (observed just before reserving the key), so a stale plan is never replayed.
- Invariant: for an active session every unconfirmed key was either applied by the BPM or reserved at the case's
  current step. Recovery (``_resend``) relies on it: it re-sends an unconfirmed key with the current etag when the
  step matches, else with an etag no state has, so only a replay of a key the BPM already knows can pass. The BPM
  checks a key before anything else, so a refusal (stale etag, invalid action, ended case) proves the key was
  never applied: its reservation is dropped (``store.drop_reservation``) and the step is decided again. Any other
  error hands the session over (a human looks at it) instead of guessing.
- A deferral is parked in the store before it is published and marked published (``store.mark_published``) once
  the broker acknowledged it. A crashed worker's parked session is adopted and its deferral re-published only if
  it never reached the topic (message id = deferral id; the operator side is idempotent on the deferral id, and
  an answer is accepted by the store at most once).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import math
import random
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

import numpy as np

from critic.base import DEFAULT_LABEL, LABEL_RULES, Candidate
from policy.batching import BatcherFull
from schemas.actions import Action, action_key
from schemas.decision import Decision, DecisionOutcome, Deferral, OperatorDecision, RejectReason, Verdict
from schemas.proposal import Proposal
from schemas.qa import QAAnswer, QALabel
from schemas.risk import RiskTier
from schemas.session import SessionCommand, SessionCommandKind
from schemas.state import UIState
from service.runtime.adapters.base import (
    AdapterError,
    BpmAdapter,
    BpmUnavailableError,
    CaseEndedError,
    CaseNotFoundError,
    InvalidActionError,
    StaleStateError,
)
from service.runtime.autonomy import AutonomyStages, StageEvent
from service.runtime.blockers import (
    MAX_STEPS,
    NO_PROPOSAL,
    OPERATOR_TOOK_OVER,
    RESEND_FAILED,
    STEP_FAILURES,
    Blocker,
    blocker_of_decision,
    blocker_of_end,
)
from service.runtime.bus.consumer import BusConsumer, MessageMeta
from service.runtime.bus.producer import BusProducer, Published
from service.runtime.bus.topics import Topics
from service.runtime.champion import AcceptanceCritic, Champion, ChampionHolder
from service.runtime.metrics import RuntimeMetrics
from service.runtime.qa import QAReviews
from service.runtime.qa_store import QAStore
from service.runtime.router import Router, SessionContext, ThresholdSource
from service.runtime.stage_sync import StageSync
from service.runtime.store import (
    ACTIVE_STATUSES,
    AnswerStatus,
    ApplyRefusedError,
    DeferralStatus,
    LeaseLostError,
    RuntimeStore,
    SessionStatus,
    WorkerHeartbeat,
)

log = logging.getLogger(__name__)

WORKER_GROUP = "workers"
QUIET_POLL_MS = 250  # the bus poll of a worker with nothing to step (see ``_poll_timeout_ms``)
MAX_ENVIRONMENT_RETRIES = 3  # "environment" answers per session that send it back to observe; then a human takes it


class ProposalPolicy(Protocol):
    """What the worker needs of a policy (``policy.policy.LMPolicy`` is one)."""

    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]: ...


__all__ = ["WORKER_GROUP", "AcceptanceCritic", "ProposalPolicy", "Reservoir", "SessionWorker", "idempotency_key"]


def idempotency_key(session_id: str, step: int, action: Action) -> str:
    """The key of a side effect: the session, the UI step it was decided on, and a hash of the action."""
    digest = hashlib.sha256(action_key(action).encode("utf-8")).hexdigest()[:16]
    return f"{session_id}:{step}:{digest}"


class Reservoir:
    """A bounded uniform sample of an unbounded stream (Vitter's algorithm R), for percentiles. Thread-safe."""

    def __init__(self, size: int = 4096, seed: int = 0) -> None:
        if size < 1:
            raise ValueError(f"size: must be >= 1, got {size}")
        self.size = size
        self.count = 0
        self.maximum = 0.0
        self._values: list[float] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        with self._lock:
            self.count += 1
            self.maximum = max(self.maximum, value)
            if len(self._values) < self.size:
                self._values.append(value)
            else:
                slot = self._rng.randrange(self.count)
                if slot < self.size:
                    self._values[slot] = value

    def summary(self) -> dict[str, float | int | None]:
        """count, p50, p99 and max (None while empty)."""
        with self._lock:
            values = list(self._values)
            count, maximum = self.count, self.maximum
        if not values:
            return {"count": 0, "p50": None, "p99": None, "max": None}
        p50, p99 = np.percentile(np.asarray(values), [50, 99])
        return {"count": count, "p50": round(float(p50), 3), "p99": round(float(p99), 3), "max": round(maximum, 3)}


class _Applied(StrEnum):
    APPLIED = "applied"
    FAILED = "failed"  # not applied; counted as a failure on the step
    RETRY = "retry"  # the BPM was away: try again after the backoff
    LOST = "lost"  # the session is no longer this worker's


class _Resume(StrEnum):
    """Why a session comes back to the step queue (``SessionWorker._resume``); the values name the counters."""

    START = "start"  # a start command for a session that exists already (a redelivery, or its worker died)
    ANSWER = "answer"  # an accepted operator answer arrived on the bus
    ANSWERED_ELSEWHERE = "answered_elsewhere"  # parked here, but answered through a worker that does not own it
    TAKEOVER = "takeover"  # its owner's lease expired
    OWNED = "owned"  # leased to this worker id but not in memory (a restart under the same id)


class _Local(StrEnum):
    READY = "ready"  # waiting for (or in) a step batch
    PARKED = "parked"  # waiting for an operator's answer


@dataclass(frozen=True, slots=True)
class _Answer:
    """An accepted operator answer whose effect (apply the approved action, or hand over) is still to happen.
    ``recovered``: rebuilt from the store after a takeover, where it may well have happened already."""

    deferral: Deferral
    decision: OperatorDecision
    recovered: bool = False


@dataclass(slots=True)
class _Session:
    session_id: str
    case_id: str
    process_id: str
    state: _Local = _Local.READY
    queued: bool = False
    step: int = 0
    actions_executed: int = 0
    failure_step: int = -1
    failures: int = 0  # failures or UI mismatches on ``failure_step``
    unavailable: int = 0  # BpmUnavailableErrors in a row
    not_before: float = 0.0  # monotonic time before which the session is not stepped (backoff)
    needs_resend: bool = False  # adopted: unconfirmed keys must be re-sent before anything else
    pending_answer: _Answer | None = None
    deferral: Deferral | None = None  # while parked
    deferral_published: bool = True
    interrupted: bool = False  # a human had to act on it already (its first blocker is counted)
    environment_retries: int = 0  # answers "the environment got in the way": the step was observed again


@dataclass(slots=True)
class _Observed:
    session: _Session
    state: UIState
    started: float  # perf_counter at the observe, for the decision latency
    proposal: Proposal | None = None
    score: float | None = None
    decision: Decision | None = None


@dataclass
class _Counts:
    values: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.values)


class SessionWorker:
    """Runs the background sessions this worker owns; see the module docstring.

    ``champion`` holds the critic and its thresholds (``service.runtime.champion``): each step batch reads it
    once and scores and decides with that pair, so a swap (a new registry champion) takes effect at the next
    batch and never mixes a critic with another's thresholds. ``stages`` must be the
    router's, since the answers the worker feeds to the guardrails change the stages the router reads.
    ``queue_for`` maps a process id to the operator queue its deferrals go to. Consumer settings are keyword-only
    (tests use 2000/500/10, see docs/runtime.md); ``group_id`` defaults to ``workers`` (the Runtime scopes
    it with the topic prefix, so deployments sharing a cluster never rebalance each other)."""

    def __init__(
        self,
        worker_id: str,
        adapter: BpmAdapter,
        policy: ProposalPolicy,
        champion: ChampionHolder,
        router: Router,
        stages: AutonomyStages,
        store: RuntimeStore,
        producer: BusProducer,
        topics: Topics,
        queue_for: Callable[[str], str] = str,
        batch_size: int = 32,
        lease_s: float = 30.0,
        max_steps: int = 40,
        *,
        group_id: str = WORKER_GROUP,
        policy_lock: threading.Lock | None = None,
        session_timeout_ms: int = 6000,
        heartbeat_interval_ms: int = 1000,
        fetch_max_wait_ms: int = 10,
        idle_fetch_max_wait_ms: int | None = None,
        idle_poll_ms: int = 50,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        metrics: RuntimeMetrics | None = None,
        stage_sync: StageSync | None = None,
        heartbeat_s: float = 5.0,
        qa: QAReviews | None = None,
    ) -> None:
        if not isinstance(worker_id, str) or not worker_id.strip():
            raise ValueError("worker_id: must be a non-empty string")
        if stages is not router.stages:
            raise ValueError("stages: must be the router's AutonomyStages (the guardrails feed what the router reads)")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if not (isinstance(lease_s, int | float) and math.isfinite(lease_s) and lease_s > 0):
            raise ValueError(f"lease_s: must be a finite number of seconds > 0, got {lease_s!r}")
        if max_steps < 1:
            raise ValueError(f"max_steps: must be >= 1, got {max_steps}")
        if not 0 < backoff_initial_s <= backoff_max_s:
            raise ValueError("backoff_initial_s: must be > 0 and <= backoff_max_s")
        self.worker_id = worker_id
        self.adapter = adapter
        self.policy = policy
        self.champion = champion
        self.router = router
        self.stages = stages
        self.store = store
        self.producer = producer
        self.topics = topics
        self.queue_for = queue_for
        self.batch_size = batch_size
        self.lease_s = float(lease_s)
        self.max_steps = max_steps
        self.idle_poll_ms = idle_poll_ms
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.metrics = metrics
        if stage_sync is not None and stage_sync.stages is not stages:
            raise ValueError("stage_sync: must sync the worker's own AutonomyStages")
        self.stage_sync = stage_sync
        self.heartbeat_s = heartbeat_s
        self._champion_in_use: Champion | None = None  # the champion of the last step batch
        self._reported: tuple[int, str | None, bool] | None = None  # what the last heartbeat said
        self._heartbeat_due = 0.0
        # After-the-fact audits: executed audited steps are queued for review; reviews sent over the bus (an
        # operator gateway's) are recorded here, as the API records people's.
        self.qa = qa or QAReviews(
            QAStore(store), stages, producer, topics, stage_sync=stage_sync, on_record=self._on_qa_recorded
        )
        self._unpublished: list[_Session] = []  # parked in this batch, published at its end
        self._lag = 0  # the consumer's lag, read on this thread (the consumer is not thread-safe)
        self.group_id = group_id
        # Beyond this many failures on one step the router has deferred already and the operator's answers did
        # not help either: a human takes the case.
        self.handover_after_failures = router.max_failures_per_step + 2
        self._policy_lock = policy_lock
        self._sessions: dict[str, _Session] = {}
        self._ready: deque[str] = deque()
        self._counts = _Counts()
        self.latency = Reservoir()
        self._lease_valid_until = 0.0
        self._renew_due = 0.0
        self._scan_due = 0.0
        self._started = time.monotonic()
        self._started_at = datetime.now(UTC)
        self._closed = False
        self._consumer = BusConsumer(
            producer.bootstrap,
            group_id,
            [topics.sessions, topics.operator_decisions, topics.qa_answers],
            {topics.sessions: SessionCommand, topics.operator_decisions: OperatorDecision, topics.qa_answers: QAAnswer},
            self._on_message,
            producer,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
            idle_fetch_max_wait_ms=idle_fetch_max_wait_ms,
            max_poll_records=max(100, batch_size),
            client_id=f"worker-{worker_id}",
        )

    # ---- the loop -----------------------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event) -> None:
        """Run until ``stop_event`` is set. Unexpected errors are logged, counted and backed off, never fatal."""
        errors = 0
        self._started = time.monotonic()
        while not stop_event.is_set():
            try:
                self.run_once()
                errors = 0
            except Exception:
                errors += 1
                self._counts.add("loop_errors")
                log.exception("worker %s: loop failed (%d in a row)", self.worker_id, errors)
                stop_event.wait(self._backoff(errors))

    def run_once(self) -> None:
        """One round: maintenance (when due), one poll of the bus, one step batch."""
        self._maintain()
        self._consumer.poll_once(timeout_ms=self._poll_timeout_ms())
        self._step()

    def close(self, release: bool = True) -> None:
        """Leave the consumer group and, with ``release``, give up this worker's sessions so another worker can
        claim them at once (a crash leaves them to expire instead). Idempotent; the producer is the caller's."""
        if self._closed:
            return
        self._closed = True
        self._consumer.close()
        if release:
            for session_id in list(self._sessions):
                try:
                    self.store.release(session_id, self.worker_id)
                except Exception:
                    log.exception("worker %s: releasing session %s failed", self.worker_id, session_id)
        self._sessions.clear()
        self._ready.clear()
        try:
            self.producer.flush(timeout=5.0)
        except Exception:
            log.debug("flushing the producer failed", exc_info=True)
        self._heartbeat(stopped=True)

    @property
    def critic(self) -> AcceptanceCritic:
        """The critic of the champion in use (read-only: a new champion is swapped in the holder)."""
        return self.champion.current.critic

    @property
    def thresholds(self) -> ThresholdSource:
        """The thresholds of the champion in use."""
        return self.champion.current.thresholds

    # ---- observation ---------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Sessions by local state, decisions by outcome, answers by result, recovery counts and the decision
        latency (observe -> decision, ms). Safe to call from any thread."""
        sessions = list(self._sessions.values())
        counts = self._counts.snapshot()

        def prefixed(prefix: str) -> dict[str, int]:
            return {k[len(prefix) :]: v for k, v in sorted(counts.items()) if k.startswith(prefix)}

        plain = {k: v for k, v in sorted(counts.items()) if ":" not in k}
        return {
            "worker_id": self.worker_id,
            "critic_version": self.champion.current.version,
            "uptime_s": round(time.monotonic() - self._started, 3),
            "sessions": {
                "ready": sum(1 for s in sessions if s.state == _Local.READY),
                "parked": sum(1 for s in sessions if s.state == _Local.PARKED),
            },
            "finished": prefixed("finished:"),
            "decisions": prefixed("decision:"),
            "answers": prefixed("answer:"),
            "stale_answers": counts.get("answer_result:stale", 0),
            "unknown_answers": counts.get("answer_result:unknown", 0),
            "duplicates": counts.get("answer_result:duplicate", 0) + counts.get("duplicate_starts", 0),
            "duplicate_answers": counts.get("answer_result:duplicate", 0),
            "answers_elsewhere": counts.get("answers_elsewhere", 0),  # announced here, owned by a live worker
            "decision_latency_ms": self.latency.summary(),
            "consumer": {
                "group": self.group_id,
                "lag": self._lag,
                "processed": self._consumer.stats.processed,
                "parked": self._consumer.stats.parked,
                "retries": self._consumer.stats.retries,
            },
            **plain,
        }

    def session_ids(self) -> list[str]:
        """The sessions this worker holds in memory (owned and active)."""
        return sorted(self._sessions)

    # ---- bus handlers (called from poll_once) -----------------------------------------------------------------

    def _on_message(self, topic: str, payload: Any, meta: MessageMeta) -> None:
        if isinstance(payload, SessionCommand):
            self._on_command(payload)
        elif isinstance(payload, OperatorDecision):
            self._on_answer(payload)
        elif isinstance(payload, QAAnswer):
            self._on_qa_answer(payload)
        else:  # the consumer decodes by topic, so this is a wiring error: park the message
            raise ValueError(f"payload: unexpected {type(payload).__name__} on {topic!r}")

    def _on_command(self, command: SessionCommand) -> None:
        session_id = command.session_id
        if command.command == SessionCommandKind.STOP:
            self.store.finish(
                session_id, SessionStatus.STOPPED, {"reason": "stopped by command", "issued_by": command.issued_by}
            )
            self._forget(session_id)
            self._counts.add("stopped")
            return
        created = self.store.create_session(session_id, command.case_id, command.process_id)
        if session_id in self._sessions:
            self._counts.add("duplicate_starts")
            return
        if not created:
            # A redelivery, or a start for a session whose worker died: adopting recovers it if it is claimable.
            self._counts.add("duplicate_starts")
            self._resume(session_id, _Resume.START)
            return
        if not self.store.claim(session_id, self.worker_id, self.lease_s):
            return  # another worker's takeover scan got it first: it runs the session
        session = _Session(session_id, command.case_id, command.process_id)
        self._sessions[session_id] = session
        self._enqueue(session)
        self._counts.add("started")

    def _on_answer(self, decision: OperatorDecision) -> None:
        """An answer announced on ``operator-decisions`` (``service.runtime.answers``): whoever answered recorded
        it in the store first, so the worker only checks that it is the recorded answer and resumes the session.
        An announcement nobody recorded (unknown), one that lost to another answer (stale) or one this worker
        has acted on already (duplicate: a redelivery, or the scan saw the answer first) changes nothing."""
        result = self.store.recorded_answer(decision)
        session = self._sessions.get(decision.session_id)
        if result.result == AnswerStatus.ACCEPTED and session is not None and not self._parked_on(decision):
            result = replace(result, result=AnswerStatus.DUPLICATE, reason="the session has resumed already")
        if result.result != AnswerStatus.ACCEPTED:
            self._counts.add(f"answer_result:{result.result.value}")
            log.info(
                "worker %s: %s answer for proposal %s of session %s: %s",
                self.worker_id,
                result.result.value,
                decision.proposal_id,
                decision.session_id,
                result.reason,
            )
            return
        deferral = result.deferral
        assert deferral is not None  # an accepted answer always names its deferral
        # Not ours in memory: adopt it if its owner is gone (adoption rebuilds this answer from the store); a live
        # owner acts on it (and tells the guardrails) in its next scan of parked sessions.
        if session is None and self._adopt(decision.session_id, _Resume.ANSWER) is None:
            self._counts.add("answers_elsewhere")
            return
        self._counts.add("answer_result:accepted")
        self._counts.add(f"answer:{decision.verdict.value}")
        self._feed_stages(deferral, decision)
        if session is not None:
            self._resume(decision.session_id, _Resume.ANSWER, _Answer(deferral, decision))

    def _on_qa_answer(self, answer: QAAnswer) -> None:
        """A review of an executed step from an operator gateway: recorded once (the store decides), then it feeds
        the guardrails and the nightly retraining (``QAReviews.record``, with its audit entry)."""
        result = self.qa.record(answer, audit_details={"via": "qa-answers"})
        self._counts.add(f"qa_result:{result.result.value}")

    def _on_qa_recorded(self, item: Any, label: QALabel) -> None:
        self._counts.add(f"qa_reviewed:{label.value}")
        if self.metrics is not None:
            self.metrics.observe_qa_review(label.value)

    def _parked_on(self, decision: OperatorDecision) -> bool:
        session = self._sessions.get(decision.session_id)
        return (
            session is not None
            and session.state == _Local.PARKED
            and session.deferral is not None
            and session.deferral.proposal.proposal_id == decision.proposal_id
            and session.deferral.state.etag == decision.state_etag
        )

    def _feed_stages(self, deferral: Deferral, decision: OperatorDecision) -> None:
        if self.stage_sync is None:
            self._record_answer(deferral, decision)
            return
        with self.stage_sync.local_change():  # a demotion is in the log before any poll can run
            for event in self._record_answer(deferral, decision):
                if event is not None and event.from_stage != event.to_stage:
                    self.stage_sync.record_demotion(event)  # every other process demotes the slice too

    def _record_answer(self, deferral: Deferral, decision: OperatorDecision) -> list[StageEvent | None]:
        slice_key = deferral.decision.slice
        events = [self.stages.record_answer(slice_key, corrected=decision.verdict != Verdict.ACCEPT)]
        if deferral.decision.audit:
            # The same label the critic is trained on, so audited acceptance and the thresholds measure one thing.
            acceptable = decision.verdict == Verdict.ACCEPT or decision.reason in LABEL_RULES[DEFAULT_LABEL]
            events.append(self.stages.record_audit(slice_key, acceptable))
        return events

    # ---- maintenance ---------------------------------------------------------------------------------------------

    def _maintain(self, force: bool = False) -> None:
        if self.stage_sync is not None:
            self.stage_sync.poll()  # at most once per its interval: other processes' stage changes
        self._heartbeat()
        now = time.monotonic()
        if force or now >= self._renew_due:
            self._renew()
        if force or now >= self._scan_due:
            self._scan_due = now + self.lease_s / 2
            self._lag = sum(self._consumer.lag().values())
            self._scan()
            for session in list(self._sessions.values()):
                if session.state == _Local.PARKED and not session.deferral_published:
                    self._publish_deferral(session)
            try:
                # QA items whose worker died (or lost the broker) between queueing and publishing them.
                self._counts.add("qa_republished", self.qa.republish(older_than_s=self.lease_s))
            except Exception:
                log.warning("worker %s: re-sending QA items failed", self.worker_id, exc_info=True)

    def _renew(self) -> None:
        started = time.monotonic()
        self.store.renew(self.worker_id, self.lease_s)
        self._lease_valid_until = started + self.lease_s
        self._renew_due = started + self.lease_s / 3
        owned = set(self.store.owned_sessions(self.worker_id))
        for session_id in list(self._sessions):
            if session_id not in owned:
                # Ended by someone else (a stop), or taken over after this worker was presumed dead.
                self._forget(session_id)
                self._counts.add("lost_sessions")
        for session_id in sorted(owned.difference(self._sessions)):
            # Leased to this worker id but not in memory (a restart under the same id): renewing it without
            # running it would keep it from everyone, so it is adopted.
            self._resume(session_id, _Resume.OWNED)

    def _heartbeat(self, stopped: bool = False) -> None:
        """Write this worker's heartbeat row (``RuntimeStore.heartbeat``) every ``heartbeat_s``, and at once when
        the stage-event log it applied, its champion or the kill switch changed (so the supervisor sees a
        change reach every worker). Never fatal: a failed write is counted and logged."""
        now = time.monotonic()
        reported = (
            self.stage_sync.last_id if self.stage_sync is not None else 0,
            self.champion.current.version,
            self.stages.kill_switch,
        )
        if not stopped and now < self._heartbeat_due and reported == self._reported:
            return
        self._heartbeat_due = now + self.heartbeat_s
        counts = self._counts.snapshot()
        at = datetime.now(UTC)
        beat = WorkerHeartbeat(
            worker_id=self.worker_id,
            started_at=self._started_at,
            last_seen=at,
            interval_s=self.heartbeat_s,
            critic_version=reported[1],
            stage_event_id=reported[0],
            kill_switch=reported[2],
            sessions=len(self._sessions),
            decisions={k.partition(":")[2]: v for k, v in counts.items() if k.startswith("decision:")},
            decision_latency_ms=self.latency.summary(),
            stopped_at=at if stopped else None,
        )
        try:
            self.store.heartbeat(beat)
        except Exception:
            self._counts.add("heartbeat_errors")
            log.warning("worker %s: writing its heartbeat failed", self.worker_id, exc_info=True)
            return
        self._reported = reported

    def _holds_lease(self, session: _Session) -> bool:
        """True if this worker still holds the session, renewing the leases first when their safety margin is
        used up (a long batch). The store fences ``apply_once`` and ``park`` itself; this saves recording a
        decision that could not be acted on."""
        if time.monotonic() < self._lease_valid_until - 0.2 * self.lease_s:
            return session.session_id in self._sessions
        self._renew()
        return session.session_id in self._sessions

    def _scan(self) -> None:
        """Take over sessions whose owner is gone, and resume parked sessions that were answered elsewhere."""
        now = datetime.now(UTC)
        for session_id in self.store.expired_sessions(now=now, limit=self.batch_size * 4, include_parked=True):
            if session_id not in self._sessions:
                self._resume(session_id, _Resume.TAKEOVER)
        parked = set(self.store.owned_sessions(self.worker_id, status=SessionStatus.PARKED))
        for session in list(self._sessions.values()):
            if session.state != _Local.PARKED or session.session_id in parked:
                continue
            row = self.store.get_session(session.session_id)
            if row is None or row.status not in ACTIVE_STATUSES or row.owner != self.worker_id:
                self._forget(session.session_id)
                continue
            if row.status == SessionStatus.PARKED:
                continue  # still parked; only its lease lapsed for a moment (the next renewal restores it)
            # Answered, and the scan saw it before the announcement did (or that was lost): complete the answer from
            # the store. The guardrails hear of it here; the announcement, arriving later, is then a duplicate.
            answer = self._last_answer(session.session_id)
            if answer is not None:
                self._counts.add(f"answer:{answer.decision.verdict.value}")
                self._feed_stages(answer.deferral, answer.decision)
            self._resume(session.session_id, _Resume.ANSWERED_ELSEWHERE, answer)
            self._counts.add("answers_seen_in_store")

    def _resume(self, session_id: str, why: _Resume, answer: _Answer | None = None) -> _Session | None:
        """The one way a session comes back to the step queue after it waited for an answer or lost its worker.

        - In memory and answered (``ANSWER``, with ``answer`` as the bus delivered it; ``ANSWERED_ELSEWHERE``,
          rebuilt from the store): READY, with the answer to complete before its next observation.
        - Not in memory (any ``why``): claimed and rebuilt from the store (``_adopt``). A parked session waits
          for its answer (its deferral re-published if it never reached the topic); a running one first re-sends
          its unconfirmed keys and completes the answer of its last deferral, rebuilt from the store.
        - In memory otherwise (a start or a takeover of a session this worker runs already): nothing to do.

        Returns the session held afterwards, None if it could not be claimed (another worker runs it, or it
        ended)."""
        session = self._sessions.get(session_id)
        if session is None:
            return self._adopt(session_id, why)
        if why in (_Resume.ANSWER, _Resume.ANSWERED_ELSEWHERE):
            session.pending_answer = answer if answer is not None else self._last_answer(session_id)
            session.state = _Local.READY
            session.deferral = None
            self._enqueue(session)
        return session

    def _adopt(self, session_id: str, why: _Resume) -> _Session | None:
        """Claim a session not in memory and rebuild it from the store (see ``_resume``)."""
        if not self.store.claim(session_id, self.worker_id, self.lease_s):
            return None
        row = self.store.get_session(session_id)
        if row is None or row.status not in ACTIVE_STATUSES:
            return None
        session = _Session(
            session_id,
            row.case_id,
            row.process_id,
            step=row.step,
            actions_executed=row.actions_applied,
            needs_resend=True,
            interrupted=not row.automated,
        )
        self._sessions[session_id] = session
        self._counts.add(f"adopted:{why.value}")
        if why == _Resume.TAKEOVER:
            self._counts.add("takeovers")
        if row.status == SessionStatus.PARKED:
            session.state = _Local.PARKED
            pending = self.store.get_deferral(row.pending_deferral_id) if row.pending_deferral_id else None
            if pending is not None and pending.status == DeferralStatus.PENDING:
                session.deferral = pending.deferral
                session.deferral_published = pending.published
                if not pending.published:
                    # The previous owner died (or lost the broker) between park and publish: the operators never
                    # saw it. Sent under its own message id; operators dedupe on the deferral id anyway.
                    self._counts.add("republished_deferrals")
                    self._publish_deferral(session)
            return session
        session.pending_answer = self._last_answer(session_id)
        self._enqueue(session)
        return session

    def _last_answer(self, session_id: str) -> _Answer | None:
        rows = self.store.session_deferrals(session_id)
        if not rows:
            return None
        last = rows[-1]
        if last.status != DeferralStatus.ANSWERED or last.answer is None:
            return None
        return _Answer(last.deferral, last.answer, recovered=True)

    # ---- the step batch ------------------------------------------------------------------------------------------

    def _enqueue(self, session: _Session) -> None:
        if not session.queued:
            session.queued = True
            self._ready.append(session.session_id)

    def _poll_timeout_ms(self) -> int:
        """0 with a session ready now; ``idle_poll_ms`` with one waiting for its backoff; a quarter second with
        only parked sessions or none (a record on the bus ends a poll at once, so this costs no latency; a short
        timeout would only spin the loop of an idle worker)."""
        if self._has_ready():
            return 0
        if self._ready:
            return self.idle_poll_ms
        return max(self.idle_poll_ms, QUIET_POLL_MS)

    def _has_ready(self) -> bool:
        now = time.monotonic()
        for session_id in self._ready:
            session = self._sessions.get(session_id)
            if session is not None and session.queued and session.not_before <= now:
                return True
        return False

    def _take_ready(self) -> list[_Session]:
        now = time.monotonic()
        batch: list[_Session] = []
        later: list[str] = []
        for _ in range(len(self._ready)):
            if len(batch) >= self.batch_size:
                break
            session_id = self._ready.popleft()
            session = self._sessions.get(session_id)
            if session is None or not session.queued or session.state != _Local.READY:
                continue
            if session.not_before > now:
                later.append(session_id)
                continue
            session.queued = False
            batch.append(session)
        self._ready.extend(later)
        return batch

    def _step(self) -> None:
        batch = self._take_ready()
        if not batch:
            return
        started = time.perf_counter()
        champion = self.champion.current  # one champion for the whole batch: critic and thresholds together
        if champion is not self._champion_in_use:
            if self._champion_in_use is not None:
                self._counts.add("critic_reloads")
            self._champion_in_use = champion
        try:
            # What adoptions and answers left to do first, so the observations below are all fresh and the
            # decision latency (observe -> decision) does not include other sessions' side effects.
            ready = [session for session in batch if self._prelude(session)]
            self._counts.add("prelude_ms", int((time.perf_counter() - started) * 1000))
            observed = [item for item in (self._observe(s) for s in ready) if item is not None]
            if observed:
                mark = time.perf_counter()
                self._propose(observed)
                self._counts.add("propose_ms", int((time.perf_counter() - mark) * 1000))
                mark = time.perf_counter()
                self._score(observed, champion)
                self._counts.add("score_ms", int((time.perf_counter() - mark) * 1000))
                # Every decision first, then the side effects: a session's decision latency does not include the
                # store writes and BPM calls of the sessions before it in the batch.
                for item in observed:
                    try:
                        self._decide(item, champion)
                    except Exception:
                        self._session_error(item.session)
                mark = time.perf_counter()
                for item in observed:
                    if item.decision is not None:
                        try:
                            self._act(item)
                        except Exception:
                            self._session_error(item.session)
                self._publish_parked()
                self._counts.add("act_ms", int((time.perf_counter() - mark) * 1000))
        finally:
            # Whatever went wrong above, a session still READY goes back to the queue; nothing is lost.
            for session in batch:
                if session.session_id in self._sessions and session.state == _Local.READY:
                    self._enqueue(session)
            self._counts.add("batches")
            self._counts.add("batched_sessions", len(batch))
            self._counts.add("busy_ms", int((time.perf_counter() - started) * 1000))

    def _session_error(self, session: _Session) -> None:
        """An unexpected error on one session (a database away) backs that session off, not the batch."""
        self._counts.add("session_errors")
        log.exception("worker %s: session %s failed; backing off", self.worker_id, session.session_id)
        self._back_off(session)

    def _prelude(self, session: _Session) -> bool:
        """Finish what an adoption or an answer left to do; True if the session may be observed now."""
        try:
            if session.needs_resend and not self._resend(session):
                return False
            return session.pending_answer is None or self._complete_answer(session)
        except Exception:
            self._session_error(session)
            return False

    def _observe(self, session: _Session) -> _Observed | None:
        try:
            return self._observe_now(session)
        except Exception:
            self._session_error(session)
            return None

    def _observe_now(self, session: _Session) -> _Observed | None:
        started = time.perf_counter()
        try:
            if self.adapter.ended(session.case_id):
                outcome = dict(self.adapter.outcome(session.case_id))
                self._finish(session, SessionStatus.COMPLETED, {"reason": "the case ended", **outcome})
                return None
            state = self.adapter.observe(session.case_id)
        except BpmUnavailableError as exc:
            self._unavailable(session, exc)
            return None
        except CaseNotFoundError as exc:
            self._finish(session, SessionStatus.FAILED, {"reason": str(exc)})
            return None
        except AdapterError as exc:
            self._failure(session, session.step, exc)
            self._back_off(session)
            return None
        session.unavailable = 0
        session.step = state.step
        if state.step != session.failure_step:
            session.failure_step, session.failures = state.step, 0
        if state.step >= self.max_steps:
            outcome = {"reason": f"max_steps: {self.max_steps} steps reached", "rule": MAX_STEPS}
            self._finish(session, SessionStatus.HANDED_OVER, outcome)
            return None
        if session.failures > self.handover_after_failures:
            reason = f"step {state.step} failed {session.failures} times"
            self._finish(session, SessionStatus.HANDED_OVER, {"reason": reason, "rule": STEP_FAILURES})
            return None
        return _Observed(session, state, started)

    def _propose(self, observed: list[_Observed]) -> None:
        states = [item.state for item in observed]
        try:
            started = time.perf_counter()
            if self._policy_lock is not None:
                with self._policy_lock:
                    proposals = self.policy.propose_batch(states)
            else:
                proposals = self.policy.propose_batch(states)
            if self.metrics is not None:
                self.metrics.observe_proposals(time.perf_counter() - started)
            if len(proposals) != len(states):
                raise ValueError(f"propose_batch: {len(proposals)} proposals for {len(states)} states")
        except BatcherFull:
            # The shared policy's queue is full (the copilot's suggestions and other workers' steps): not an
            # error of this batch; its sessions retry after a back-off.
            self._counts.add("policy_busy")
            for item in observed:
                self._back_off(item.session)
            observed.clear()
            return
        except Exception:
            self._counts.add("policy_errors")
            log.exception("worker %s: the policy failed on a batch of %d states", self.worker_id, len(states))
            for item in observed:
                self._back_off(item.session)
            observed.clear()
            return
        for item, proposal in zip(observed, proposals, strict=True):
            if proposal is not None and proposal.session_id != item.session.session_id:
                # The BPM's notion of a session may differ from the runtime's; the runtime's id is the one the
                # store, the bus and operator answers use.
                proposal = proposal.model_copy(update={"session_id": item.session.session_id})
            item.proposal = proposal

    def _score(self, observed: list[_Observed], champion: Champion) -> None:
        """Critic scores for critic-gated proposals (non-critical and always-ask ones are decided without it)."""
        gated = [
            item
            for item in observed
            if item.proposal is not None
            and self.router.risk.tier_for(
                item.proposal.process_id, item.proposal.action.type, getattr(item.proposal.action, "control_id", None)
            )
            == RiskTier.CRITICAL
        ]
        if not gated:
            return
        try:
            candidates = [Candidate(item.state, item.proposal) for item in gated if item.proposal is not None]
            probabilities = np.asarray(champion.critic.predict_proba(candidates), dtype=np.float64)[:, 1]
        except Exception:
            self._counts.add("critic_errors")  # unscored proposals are deferred by the router (not_scored)
            log.exception("worker %s: the critic failed on %d candidates", self.worker_id, len(gated))
            return
        for item, p in zip(gated, probabilities, strict=True):
            item.score = float(min(1.0, max(0.0, p))) if math.isfinite(p) else None

    def _decide(self, item: _Observed, champion: Champion) -> None:
        session, proposal = item.session, item.proposal
        if proposal is None:
            reason = "the policy has no valid action for this screen"
            self._finish(session, SessionStatus.HANDED_OVER, {"reason": reason, "rule": NO_PROPOSAL})
            return
        context = SessionContext(session.session_id, session.actions_executed, session.failures)
        item.decision = self.router.decide(proposal, item.score, context, champion)
        elapsed = time.perf_counter() - item.started
        self.latency.add(elapsed * 1000.0)
        if self.metrics is not None:
            self.metrics.observe_decision(item.decision, elapsed)
        self._counts.add(f"decision:{item.decision.outcome.value}")
        if item.decision.audit:
            self._counts.add("audits")

    def _act(self, item: _Observed) -> None:
        session, state, proposal, decision = item.session, item.state, item.proposal, item.decision
        assert proposal is not None and decision is not None
        if decision.outcome == DecisionOutcome.EXECUTE:
            self._execute(session, state, proposal, decision)
        elif decision.outcome in (DecisionOutcome.DEFER, DecisionOutcome.ALWAYS_ASK):
            self._defer(session, state, proposal, decision)
        else:  # BLOCKED: nothing may happen in the background; a human takes the case
            self._record_decision(proposal, decision)
            self._interrupted(session, blocker_of_decision(decision))
            self._finish(session, SessionStatus.HANDED_OVER, {"reason": decision.reason})

    def _record_decision(self, proposal: Proposal, decision: Decision) -> None:
        """Store and publish a decision that is not stored with its effect (a reservation or a park): one that
        blocks, or one this worker could not act on because the session was lost or ended meanwhile. Every
        decision made is in the store and on the audit topic, acted on or not."""
        self.store.record_proposal(proposal)
        self.store.record_decision(decision)
        self._publish_decision(decision)

    def _execute(self, session: _Session, state: UIState, proposal: Proposal, decision: Decision) -> None:
        if not self._holds_lease(session):
            self._record_decision(proposal, decision)
            return
        # The proposal and decision are stored in the key's reservation (one commit), then published for audit.
        result = self._apply(session, state.step, proposal.action, state.etag, (proposal, decision))
        if result == _Applied.LOST:
            self._record_decision(proposal, decision)  # refused: the reservation stored nothing
            return
        self._publish_decision(decision)
        if result == _Applied.APPLIED:
            self._counts.add("executed")
            if decision.audit:
                self._queue_qa(session, state, proposal, decision)

    def _queue_qa(self, session: _Session, state: UIState, proposal: Proposal, decision: Decision) -> None:
        """An audited step ran (after-the-fact audit): queue it for an operator's review. A failure here loses
        one review, never the step; it does not depend on the step's label, so the sample stays unbiased."""
        try:
            if self.qa.queue(state, proposal, decision, self.queue_for(session.process_id)) is not None:
                self._counts.add("qa_queued")
        except Exception:
            self._counts.add("qa_errors")
            log.warning("worker %s: queueing QA for %s failed", self.worker_id, proposal.proposal_id, exc_info=True)

    def _apply(
        self,
        session: _Session,
        step: int,
        action: Action,
        expected_etag: str,
        record: tuple[Proposal, Decision] | None = None,
    ) -> _Applied:
        """Apply ``action`` (decided on UI step ``step`` at ``expected_etag``) exactly once, storing ``record``
        with the reservation. Failures are counted on the step; the session stays READY unless it was lost."""
        key = idempotency_key(session.session_id, step, action)
        case_id = session.case_id
        try:
            applied, _ = self.store.apply_once(
                key,
                session.session_id,
                step,
                action,
                lambda: self.adapter.apply(case_id, action, key, expected_etag=expected_etag),
                worker_id=self.worker_id,
                proposal=record[0] if record else None,
                decision=record[1] if record else None,
            )
        except (StaleStateError, InvalidActionError) as exc:
            self._failure(session, step, exc)
            return _Applied.FAILED
        except CaseEndedError:
            return _Applied.FAILED  # the next observation finishes the session
        except BpmUnavailableError as exc:
            self._unavailable(session, exc)
            return _Applied.RETRY
        except ApplyRefusedError as exc:  # LeaseLostError, or the session is no longer running
            self._lost(session, exc)
            return _Applied.LOST
        except AdapterError as exc:
            self._failure(session, step, exc)
            return _Applied.FAILED
        if not applied:
            # Reserved or applied by someone else already: unexpected for an owned session. Counted as a failure
            # on the step, so a session that keeps meeting it is deferred and then handed over, never spun.
            self._counts.add("already_reserved")
            self._failure(session, step, RuntimeError(f"key {key} was reserved already"))
            return _Applied.FAILED
        session.actions_executed += 1
        session.unavailable = 0
        return _Applied.APPLIED

    def _defer(self, session: _Session, state: UIState, proposal: Proposal, decision: Decision) -> None:
        deferral = Deferral(
            deferral_id=uuid.uuid4().hex,
            session_id=session.session_id,
            queue=self.queue_for(session.process_id),
            proposal=proposal,
            decision=decision,
            state=state,
        )
        try:
            parked = self.store.park(session.session_id, deferral, worker_id=self.worker_id)
        except LeaseLostError as exc:
            self._lost(session, exc)
            self._record_decision(proposal, decision)
            return
        if not parked:
            self._refresh(session)  # ended meanwhile (stopped): nothing to wait for
            self._record_decision(proposal, decision)
            return
        session.state = _Local.PARKED
        session.deferral = deferral
        session.deferral_published = False
        self._counts.add("deferred")  # park counted it and set the step in the store
        self._interrupted(session, blocker_of_decision(decision))
        self._publish_decision(decision)
        self._unpublished.append(session)  # sent together after the batch's side effects (_publish_parked)

    # ---- answers and recovery ------------------------------------------------------------------------------------

    def _complete_answer(self, session: _Session) -> bool:
        """Do what an accepted answer asks; True if the session may go on to its next observation."""
        answer = session.pending_answer
        assert answer is not None
        deferral, decision = answer.deferral, answer.decision
        if (
            decision.verdict == Verdict.REJECT
            and decision.reason == RejectReason.ENVIRONMENT
            and session.environment_retries < MAX_ENVIRONMENT_RETRIES
        ):
            # The screen changed under the proposal or its action failed: nothing is wrong with the proposal
            # (it carries no label), so the session observes the case again and proposes anew instead of being
            # handed over. Bounded: an environment that keeps failing needs a human.
            session.pending_answer = None
            session.environment_retries += 1
            self._counts.add("environment_retries")
            return True
        if decision.verdict == Verdict.REJECT:
            session.pending_answer = None
            outcome = {
                "reason": "the operator took the case over",
                "rule": OPERATOR_TOOK_OVER,
                "operator_id": decision.operator_id,
                "reject_reason": decision.reason.value if decision.reason else None,
            }
            self._finish(session, SessionStatus.HANDED_OVER, outcome)
            return False
        action = deferral.proposal.action if decision.verdict == Verdict.ACCEPT else decision.corrected_action
        assert action is not None  # OperatorDecision validates: correct carries its action
        try:
            current = self.adapter.observe(session.case_id)
        except BpmUnavailableError as exc:
            self._unavailable(session, exc)
            return False
        except CaseNotFoundError as exc:
            self._finish(session, SessionStatus.FAILED, {"reason": str(exc)})
            return False
        session.pending_answer = None
        if current.etag != deferral.state.etag:
            # The case is no longer where the answer was given (a recovered answer that was applied before, or a
            # case that changed under us): never replay a stale plan.
            if not answer.recovered:
                self._counts.add("stale_plans")
                log.warning("worker %s: session %s moved on before its answer", self.worker_id, session.session_id)
            return True
        result = self._apply(session, deferral.proposal.step, action, deferral.state.etag)
        if result == _Applied.APPLIED:
            self._counts.add("answers_applied")
        elif result == _Applied.RETRY:
            session.pending_answer = answer  # the BPM was away: the same answer again after the backoff
            return False
        return result != _Applied.LOST

    def _resend(self, session: _Session) -> bool:
        """Re-send the session's unconfirmed keys (a crash between apply and confirm) and confirm them; True if
        the session may go on. See the module docstring for why this cannot replay a stale action."""
        for unconfirmed in self.store.unconfirmed_keys(session.session_id):
            key = unconfirmed.idempotency_key
            try:
                state = self.adapter.observe(session.case_id)
                # At the step the key was reserved on, the current etag lets the intended action through; at
                # any other step only a key the BPM already applied may pass (it answers before checking etags).
                fence = state.etag if state.step == unconfirmed.step else f"not-at-step-{unconfirmed.step}"
                self.adapter.apply(session.case_id, unconfirmed.action, key, expected_etag=fence)
            except BpmUnavailableError as exc:
                self._unavailable(session, exc)
                return False
            except (StaleStateError, InvalidActionError, CaseEndedError) as exc:
                # Refused after the BPM checked the key: it never applied this action. The reservation is dead;
                # dropping it lets the step be decided again on a fresh observation (or the session end next).
                try:
                    dropped = self.store.drop_reservation(key, worker_id=self.worker_id)
                except LeaseLostError as lost:
                    self._lost(session, lost)
                    return False
                if dropped:
                    self._counts.add("dropped_reservations")
                log.info("worker %s: unconfirmed key %s was never applied (%s); dropped", self.worker_id, key, exc)
                continue
            except CaseNotFoundError as exc:
                self._finish(session, SessionStatus.FAILED, {"reason": str(exc)})
                return False
            except AdapterError as exc:
                self._counts.add("resend_failures")
                log.error("worker %s: unconfirmed key %s cannot be re-sent: %s", self.worker_id, key, exc)
                reason = f"an unconfirmed action ({key}) could not be re-sent: {exc}"
                self._finish(session, SessionStatus.HANDED_OVER, {"reason": reason, "rule": RESEND_FAILED})
                return False
            if self.store.confirm(key):
                self._counts.add("resent_keys")
        session.needs_resend = False
        return True

    # ---- small helpers -------------------------------------------------------------------------------------------

    def _publish_decision(self, decision: Decision) -> None:
        """The audit trail on ``decisions``; asynchronous (the store holds the decision already)."""
        try:
            future = self.producer.publish_async(
                self.topics.decisions, decision, decision.session_id, message_id=f"decision:{decision.decision_id}"
            )
        except Exception:
            self._counts.add("publish_errors")
            log.warning("worker %s: publishing decision %s failed", self.worker_id, decision.decision_id, exc_info=True)
            return
        future.add_done_callback(self._on_decision_published)

    def _on_decision_published(self, future: concurrent.futures.Future[Published]) -> None:
        if future.exception() is not None:
            self._counts.add("publish_errors")
            log.warning("worker %s: a decision was not published: %r", self.worker_id, future.exception())

    def _publish_parked(self, timeout_s: float = 5.0) -> None:
        """Publish the deferrals this batch parked, all at once (one broker round trip for the batch instead of
        one per deferral), then mark the acknowledged ones published. They are parked in the store already: one
        that fails stays unpublished and maintenance sends it again."""
        sessions, self._unpublished = self._unpublished, []
        sent: list[tuple[_Session, Deferral, concurrent.futures.Future[Published]]] = []
        for session in sessions:
            deferral = session.deferral
            if deferral is None or session.deferral_published:
                continue
            try:
                future = self.producer.publish_async(
                    self.topics.deferrals, deferral, session.session_id, message_id=f"deferral:{deferral.deferral_id}"
                )
            except Exception:
                self._counts.add("publish_errors")
                log.warning("worker %s: publishing deferral %s failed", self.worker_id, deferral.deferral_id)
                continue
            sent.append((session, deferral, future))
        if not sent:
            return
        try:
            self.producer.flush(timeout=timeout_s)
        except Exception:
            log.warning("worker %s: flushing %d deferrals failed", self.worker_id, len(sent), exc_info=True)
        for session, deferral, future in sent:
            try:
                future.result(timeout=0.0 if future.done() else timeout_s)
            except Exception:
                self._counts.add("publish_errors")
                log.warning("worker %s: deferral %s not acknowledged", self.worker_id, deferral.deferral_id)
                continue
            if session.deferral is deferral:
                session.deferral_published = True
            try:
                self.store.mark_published(deferral.deferral_id)
            except Exception:
                log.warning("worker %s: marking deferral %s published failed", self.worker_id, deferral.deferral_id)

    def _publish_deferral(self, session: _Session) -> None:
        deferral = session.deferral
        if deferral is None:
            return
        try:
            self.producer.publish(
                self.topics.deferrals,
                deferral,
                session.session_id,
                timeout=5.0,
                message_id=f"deferral:{deferral.deferral_id}",
            )
        except Exception:
            # The session stays parked in the store; maintenance publishes again until it goes through.
            self._counts.add("publish_errors")
            log.warning("worker %s: publishing deferral %s failed", self.worker_id, deferral.deferral_id, exc_info=True)
            return
        session.deferral_published = True
        try:
            self.store.mark_published(deferral.deferral_id)
        except Exception:
            # Only costs a duplicate: a worker adopting the session would publish it again (readers dedupe).
            log.warning("worker %s: marking deferral %s published failed", self.worker_id, deferral.deferral_id)

    def _finish(self, session: _Session, status: SessionStatus, outcome: dict[str, Any]) -> None:
        self.store.bump(session.session_id, step=session.step)
        if status != SessionStatus.COMPLETED:
            self._interrupted(session, blocker_of_end(session.process_id, status, outcome))
        self.store.finish(session.session_id, status, outcome)
        self._forget(session.session_id)
        self._counts.add(f"finished:{status.value}")

    def _interrupted(self, session: _Session, blocker: Blocker | None) -> None:
        """Count the first thing that made the session need a human (the metric; the store keeps the truth)."""
        if blocker is None or session.interrupted:
            return
        session.interrupted = True
        self._counts.add(f"blocker:{blocker.kind.value}:{blocker.rule}")
        if self.metrics is not None:
            self.metrics.observe_blocker(blocker.kind.value, blocker.rule, blocker.process_id, blocker.action_type)

    def _lost(self, session: _Session, error: BaseException) -> None:
        """The store refused to act for this worker on the session (another worker owns it, or it ended)."""
        log.info("worker %s: %s", self.worker_id, error)
        self._forget(session.session_id)
        self._counts.add("lost_sessions")

    def _forget(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is not None:
            session.queued = False

    def _refresh(self, session: _Session) -> None:
        row = self.store.get_session(session.session_id)
        if row is None or row.status not in ACTIVE_STATUSES or row.owner != self.worker_id:
            self._forget(session.session_id)

    def _failure(self, session: _Session, step: int, error: BaseException) -> None:
        if session.failure_step != step:
            session.failure_step, session.failures = step, 0
        session.failures += 1
        self._counts.add("step_failures")
        log.info("worker %s: session %s step %d failed: %s", self.worker_id, session.session_id, step, error)

    def _unavailable(self, session: _Session, error: BpmUnavailableError) -> None:
        session.unavailable += 1
        self._counts.add("bpm_unavailable")
        log.warning("worker %s: BPM unavailable for session %s: %s", self.worker_id, session.session_id, error)
        self._back_off(session, session.unavailable)

    def _back_off(self, session: _Session, attempt: int = 1) -> None:
        session.not_before = time.monotonic() + self._backoff(attempt)

    def _backoff(self, attempt: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(max(attempt, 1) - 1, 20)))
