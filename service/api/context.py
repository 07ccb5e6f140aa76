"""AutopilotService: what the API routes act on, wired from ``ServiceSettings``.

It wraps a ``Runtime`` (broker or Kafka cluster, topics, store, session workers as threads, optionally the
simulated operators) plus the loaded policy, the registry's champion (critic and thresholds, held by the runtime's
``ChampionHolder``), the registry watcher, the feedback sink and the metrics. The BPM is a task API over HTTP
(``AUTOPILOT_BPM_URL``), or the sandbox when a runtime factory asks for it.

Guardrail state (``AutonomyStages``) lives in this process and is shared with the in-process workers, so a
supervisor's demotion or the kill switch takes effect on the next decision. See docs/decisions/0006. Promotion
rounds run here only when this process runs workers (``AUTOPILOT_WORKERS`` > 0); otherwise the worker processes
run them and this process follows their promotions through the stage-event log (docs/runtime.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from critic.base import Candidate
from critic.store import FeedbackStore
from critic.thresholds import SliceThresholds
from policy.batching import MicroBatcher, ProposalJob, top_k
from policy.process import PolicyProcesses, serving_policy
from policy.saved import is_policy_dir
from schemas.actions import Action, ActionValidationError, validate_action
from schemas.decision import Decision, OperatorDecision, RejectReason, Verdict
from schemas.feedback import FeedbackRecord, FeedbackSource
from schemas.proposal import Proposal
from schemas.risk import AutonomyStage, RiskTier, SliceKey
from schemas.screen import ScreenSchema
from schemas.state import UIState
from service.api.auth import Principal, Role
from service.api.errors import ConflictError, ForbiddenError, InputError, NotFoundError, ServiceBusyError
from service.api.settings import ServiceSettings
from service.runtime.answers import answer_deferral
from service.runtime.autonomy import AutonomyConfig, AutonomyStages
from service.runtime.bus.watch import TopicWatcher
from service.runtime.champion import AcceptanceCritic, Champion, ChampionError, ChampionHolder, load_champion
from service.runtime.feedback_sink import FeedbackSink
from service.runtime.inprocess import Runtime
from service.runtime.metrics import RuntimeMetrics, SliceGauge, StateCollector, StateSources
from service.runtime.promotion import slice_of
from service.runtime.qa import QAReviews
from service.runtime.qa_store import QAStore
from service.runtime.registry_watch import RegistryWatcher
from service.runtime.router import SessionContext
from service.runtime.stage_sync import StageSync
from service.runtime.store import AnswerResult, AnswerStatus, IssuedStatus, RuntimeStore, WorkerHeartbeat
from service.runtime.worker import ProposalPolicy
from service.runtime.worker_process import WorkerSetupError

log = logging.getLogger(__name__)

# Builds the runtime the service drives from its settings and loaded models: the HTTP BPM by default; the sandbox
# passes its own (``sandbox.harness.service_runtime``) when it is served explicitly.
RuntimeFactory = Callable[[ServiceSettings, ProposalPolicy, Champion, AutonomyStages, RuntimeMetrics], Runtime]


def _no_bpm() -> WorkerSetupError:
    return WorkerSetupError(
        "bpm_url: not set; point AUTOPILOT_BPM_URL (or --bpm-url) at your BPM's task API, "
        "or serve the embedded sandbox explicitly with `autopilot serve --sandbox`"
    )


def check_action(action: Action, screen: ScreenSchema, field: str) -> None:
    """InputError (422 naming ``field`` and the action's offending part) unless ``action`` fits ``screen``."""
    try:
        validate_action(action, screen)
    except ActionValidationError as error:
        raise InputError((field, error.field), error.reason) from None


@dataclass(frozen=True, slots=True)
class Suggestion:
    proposal: Proposal
    score: float | None
    decision: Decision
    latency_ms: float


class AutopilotService:
    """The service's components; ``start`` brings the runtime and the feedback sink up, ``stop`` takes them down."""

    def __init__(
        self, settings: ServiceSettings, runtime: Runtime, policy: ProposalPolicy, metrics: RuntimeMetrics
    ) -> None:
        self.settings = settings
        self.runtime = runtime
        self.policy = policy
        self.metrics = metrics
        self.sink: FeedbackSink | None = None
        self.feedback_store: FeedbackStore | None = None
        self.watcher: RegistryWatcher | None = None
        self._sink_stop = threading.Event()
        self._sink_thread: threading.Thread | None = None
        self._watch_thread: threading.Thread | None = None
        self._qa: QAReviews | None = None
        self._inbox_watcher: TopicWatcher | None = None
        self._inbox_thread: threading.Thread | None = None
        self._inbox_listeners: list[Callable[[], None]] = []
        self.started_at = time.time()
        self._prune_due = 0.0
        # Concurrent suggestions are gathered for a few milliseconds and answered in one batch (policy, critic,
        # router); a full queue answers 429 (BatcherFull) at once.
        self.suggester = self._new_suggester()
        metrics.registry.register(StateCollector(self._state_sources()))

    @property
    def champion(self) -> ChampionHolder:
        """The champion the copilot route and the in-process workers use (the runtime's)."""
        return self.runtime.champion

    @property
    def critic(self) -> AcceptanceCritic:
        return self.champion.current.critic

    @property
    def thresholds(self) -> SliceThresholds:
        return self.champion.current.thresholds

    @property
    def critic_version(self) -> str | None:
        return self.champion.current.version

    # ---- wiring ---------------------------------------------------------------------------------------------------

    def _new_suggester(self) -> MicroBatcher[ProposalJob, Suggestion | None]:
        settings = self.settings
        return MicroBatcher(
            self._suggest_batch,
            max_batch=settings.policy_max_batch,
            max_wait_ms=settings.policy_max_wait_ms,
            max_queue=settings.policy_max_queue,
            timeout_s=settings.policy_timeout_s,
            name="copilot-batcher",
        )

    @classmethod
    def from_settings(
        cls, settings: ServiceSettings, runtime_factory: RuntimeFactory | None = None
    ) -> AutopilotService:
        """Load the policy and the registry's champion and build the runtime (not started). Raises
        WorkerSetupError naming the setting when something is missing."""
        if runtime_factory is None and not settings.bpm_url:
            raise _no_bpm()  # before anything is loaded
        policy_dir = settings.resolved_policy_dir()
        if not is_policy_dir(policy_dir):
            raise WorkerSetupError(
                f"policy_dir: {policy_dir} holds no saved policy; run `make demo` first or set AUTOPILOT_POLICY_DIR"
            )
        registry_dir = settings.resolved_registry_dir()
        if not registry_dir.is_dir():
            raise WorkerSetupError(f"registry_dir: {registry_dir} is not a critic registry; set AUTOPILOT_REGISTRY_DIR")
        try:
            champion = load_champion(registry_dir)
        except ChampionError as error:
            raise WorkerSetupError(f"registry_dir: {error}") from None
        if settings.torch_threads is not None:
            import torch

            torch.set_num_threads(settings.torch_threads)
        policy = serving_policy(
            policy_dir,
            processes=settings.policy_processes,
            reply_guard=settings.reply_guard,
            threads=settings.torch_threads or 1,
            server_url=settings.policy_server_url,
        )
        return cls.build(
            settings, policy, champion.critic, champion.thresholds, champion.version, runtime_factory=runtime_factory
        )

    @classmethod
    def build(
        cls,
        settings: ServiceSettings,
        policy: ProposalPolicy,
        critic: AcceptanceCritic,
        thresholds: SliceThresholds,
        critic_version: str | None,
        stages: AutonomyStages | None = None,
        runtime_factory: RuntimeFactory | None = None,
    ) -> AutopilotService:
        """Wire a service around loaded models (tests pass small ones)."""
        metrics = RuntimeMetrics()
        # The guardrails' target acceptance is the thresholds' own 1 - alpha, so audits and thresholds agree.
        config = AutonomyConfig(initial_stage=settings.initial_stage, alpha=thresholds.config.alpha)
        stages = stages or AutonomyStages(config)
        if runtime_factory is not None:
            runtime = runtime_factory(settings, policy, Champion(critic, thresholds, critic_version), stages, metrics)
        elif settings.bpm_url:
            from service.runtime.adapters.http import HttpBpmAdapter

            runtime = Runtime(
                HttpBpmAdapter(settings.bpm_url),
                policy,
                critic,
                thresholds,
                settings,
                critic_version=critic_version,
                stages=stages,
                metrics=metrics,
            )
        else:
            raise _no_bpm()
        return cls(settings, runtime, policy, metrics)

    def start(self) -> AutopilotService:
        if self.suggester.closed:  # started again after a stop
            self.suggester = self._new_suggester()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.runtime.start()
        try:
            self.feedback_store = FeedbackStore(self.settings.resolved_feedback_url())
            assert self.runtime.producer is not None
            self.sink = FeedbackSink(
                self.runtime.bootstrap,
                self.runtime.topics,
                self.feedback_store,
                self.runtime.producer,
                session_timeout_ms=self.settings.session_timeout_ms,
                heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
                fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
                idle_fetch_max_wait_ms=self.settings.idle_fetch_max_wait_ms,
            )
            self._sink_thread = threading.Thread(
                target=self.sink.run, args=(self._sink_stop,), name="feedback-sink", daemon=True
            )
            self._sink_thread.start()
            feedback = self.feedback_store
            self.watcher = RegistryWatcher(
                self.champion,
                self.stages,
                self.settings.resolved_registry_dir() if self.critic_version is not None else None,
                sync=self.runtime.stage_sync,
                label_counts=feedback.counts_by_slice,
                poll_s=self.settings.registry_poll_s,
                # Where workers run elsewhere, they run the rounds; this process follows the stage-event log.
                auto_promote=self.settings.auto_promote and self.settings.workers > 0,
            )
            # One watcher for the live inboxes of this process: a record on any of these topics may change one.
            topics = self.runtime.topics
            self._inbox_watcher = TopicWatcher(
                self.runtime.bootstrap,
                [topics.deferrals, topics.operator_decisions, topics.sessions],
                self.inbox_changed,
                fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
                idle_fetch_max_wait_ms=self.settings.idle_fetch_max_wait_ms,
                client_id="inbox-watcher",
            )
            self._inbox_thread = threading.Thread(
                target=self._inbox_watcher.run, args=(self._sink_stop,), name="inbox-watcher", daemon=True
            )
            self._inbox_thread.start()
            if self.settings.registry_poll_s > 0 and self.critic_version is not None:
                self._watch_thread = threading.Thread(
                    target=self.watcher.run, args=(self._sink_stop,), name="registry-watch", daemon=True
                )
                self._watch_thread.start()
            promoted = self.watcher.initial_round()
            log.info("slices in autopilot after the promotion round: %s", ", ".join(promoted) or "none")
        except BaseException:
            self.stop()
            raise
        return self

    def _watcher(self) -> RegistryWatcher:
        if self.watcher is None:
            raise RuntimeError("service: not started")
        return self.watcher

    def promote_from_registry(self) -> list[str]:
        """One promotion round (``service.runtime.promotion``) on the champion in use; returns the slices in
        autopilot afterwards."""
        return self._watcher().promote()

    def reload_champion(self) -> bool:
        """Swap in the registry's champion if it changed (a nightly promotion or a rollback): the copilot route
        and every in-process worker use it and its thresholds from their next request or batch, then holding
        slices are promoted (when this process runs workers). Returns True if it changed."""
        return self._watcher().check()

    def stop(self) -> None:
        self.suggester.close()
        self._sink_stop.set()
        for thread in (self._sink_thread, self._watch_thread, self._inbox_thread):
            if thread is not None:
                thread.join(10.0)
        self._sink_thread = self._watch_thread = self._inbox_thread = None
        if self._inbox_watcher is not None:
            self._inbox_watcher.close()
            self._inbox_watcher = None
        if self.sink is not None:
            self.sink.close()
            self.sink = None
        self.runtime.stop()
        if isinstance(self.policy, PolicyProcesses):
            self.policy.close()  # its children; a start after this stop starts them again
        self._qa = None  # bound to the runtime's store, which is closed now
        if self.feedback_store is not None:
            self.feedback_store.close()
            self.feedback_store = None

    @property
    def store(self) -> RuntimeStore:
        if self.runtime.store is None:
            raise RuntimeError("service: not started")
        return self.runtime.store

    def _sync(self) -> StageSync:
        if self.runtime.stage_sync is None:
            raise RuntimeError("service: not started")
        return self.runtime.stage_sync

    @property
    def stages(self) -> AutonomyStages:
        return self.runtime.stages

    @property
    def qa(self) -> QAReviews:
        """The QA queue of after-the-fact audits: people's reviews are recorded here (``service.runtime.qa``)."""
        if self._qa is None:
            self._qa = QAReviews(
                QAStore(self.store),
                self.stages,
                self.runtime.producer,
                self.runtime.topics,
                stage_sync=self._sync(),
                on_record=lambda item, label: self.metrics.observe_qa_review(label.value),
            )
        return self._qa

    # ---- copilot --------------------------------------------------------------------------------------------------

    def _suggest_batch(self, jobs: list[ProposalJob]) -> list[Suggestion | None]:
        """One micro-batch of suggestions: one policy call for every state, one critic call for the critical
        proposals, the router's decision for each (on the batcher's thread)."""
        started = time.perf_counter()
        with self.runtime.policy_lock:
            proposals = self.policy.propose_batch([job.state for job in jobs], k=max(job.k for job in jobs))
        self.metrics.observe_proposals(time.perf_counter() - started, source="copilot")
        proposals = [top_k(p, job.k) for p, job in zip(proposals, jobs, strict=True)]
        router = self.runtime.router
        champion = self.champion.current  # one read: the scores and the thresholds come from the same champion
        critical = [
            i
            for i, p in enumerate(proposals)
            if p is not None
            and router.risk.tier_for(p.process_id, p.action.type, getattr(p.action, "control_id", None))
            == RiskTier.CRITICAL
        ]
        scores: dict[int, float | None] = {}
        if critical:
            inputs = [Candidate(jobs[i].state, p) for i in critical if (p := proposals[i]) is not None]
            probabilities = np.asarray(champion.critic.predict_proba(inputs), dtype=np.float64)[:, 1]
            for i, value in zip(critical, probabilities, strict=True):
                scores[i] = min(1.0, max(0.0, float(value))) if np.isfinite(value) else None
        out: list[Suggestion | None] = []
        for i, proposal in enumerate(proposals):
            if proposal is None:
                out.append(None)
                continue
            decision = router.decide(proposal, scores.get(i), SessionContext(proposal.session_id), champion)
            out.append(Suggestion(proposal, scores.get(i), decision, 0.0))
        return out

    def _finish_suggestion(self, suggestion: Suggestion | None, started: float) -> Suggestion | None:
        if suggestion is None:
            return None
        elapsed = time.perf_counter() - started
        self.metrics.observe_decision(suggestion.decision, elapsed, source="copilot")
        return replace(suggestion, latency_ms=elapsed * 1000.0)

    def suggest(self, state: UIState, k: int = 5) -> Suggestion | None:
        """The policy's proposal for ``state``, its critic score and what the router would decide; None when the
        policy has no valid action for the screen. Concurrent calls are gathered into micro-batches
        (``suggester``). Raises ``BatcherFull`` when the queue is full, ``ServiceBusyError`` past the timeout."""
        started = time.perf_counter()
        try:
            suggestion = self.suggester.run(ProposalJob(state, k))
        except TimeoutError:
            raise ServiceBusyError(self.settings.policy_timeout_s) from None
        return self._finish_suggestion(suggestion, started)

    async def suggest_async(self, state: UIState, k: int = 5) -> Suggestion | None:
        """``suggest`` for an event loop: the request waits on its future, no thread is held while it queues."""
        started = time.perf_counter()
        future = self.suggester.submit(ProposalJob(state, k))
        limit = self.settings.policy_timeout_s
        try:
            # past the queue deadline the batcher fails the request itself; the margin covers a started batch
            suggestion = await asyncio.wait_for(asyncio.wrap_future(future), timeout=limit + 1.0)
        except TimeoutError:
            raise ServiceBusyError(limit) from None
        return self._finish_suggestion(suggestion, started)

    def record_issued(self, principal: Principal, proposal: Proposal) -> None:
        """Remember a suggestion issued to ``principal``: copilot feedback is accepted for it alone (decision
        0009). Proposals older than ``AUTOPILOT_ISSUED_PROPOSALS_H`` are pruned, at most once a minute."""
        self.store.record_issued(proposal, principal.name)
        now = time.monotonic()
        if now >= self._prune_due:
            self._prune_due = now + 60.0
            self.store.prune_issued(datetime.now(UTC) - timedelta(hours=self.settings.issued_proposals_h))

    def record_feedback(
        self,
        principal: Principal,
        state: UIState,
        proposal: Proposal,
        verdict: Verdict,
        corrected_action: Action | None,
        reason: RejectReason | None,
    ) -> FeedbackRecord:
        """A copilot accept/correct as a critic training row, published on ``feedback`` (the sink stores it).

        Accepted only for a proposal this service issued to this caller (``record_issued``) within the retention,
        unchanged, for the state it was issued for, in one of the caller's queues, once (the same feedback again
        is harmless), and with a correction that fits the screen. Raises InputError (422), ForbiddenError (403),
        NotFoundError (404: never issued, or expired) or ConflictError (409: other feedback given already, or a
        proposal that differs from the one issued)."""
        if verdict == Verdict.ACCEPT and (corrected_action is not None or reason is not None):
            raise InputError(("reason",), "must be empty when the verdict is accept")
        if verdict != Verdict.ACCEPT and reason is None:
            raise InputError(("reason",), f"required when the verdict is {verdict.value}")
        if verdict == Verdict.CORRECT and corrected_action is None:
            raise InputError(("corrected_action",), "required when the verdict is correct")
        if not principal.may_answer(proposal.process_id):
            raise ForbiddenError(f"proposal.process_id: {proposal.process_id!r} is not one of your queues")
        if state.etag != proposal.state_etag:
            raise InputError(("state",), "not the state the proposal was issued for (its etag differs)")
        check_action(proposal.action, state.screen, "proposal")
        if corrected_action is not None:
            check_action(corrected_action, state.screen, "corrected_action")
        said = {
            "verdict": verdict.value,
            "corrected_action": None if corrected_action is None else corrected_action.model_dump(mode="json"),
            "reason": None if reason is None else reason.value,
        }
        digest = hashlib.sha256(json.dumps(said, sort_keys=True).encode()).hexdigest()
        issued_after = datetime.now(UTC) - timedelta(hours=self.settings.issued_proposals_h)
        claim = self.store.claim_issued(proposal, principal.name, digest, issued_after=issued_after)
        if claim.status == IssuedStatus.UNKNOWN:
            raise NotFoundError(
                f"proposal.proposal_id: {proposal.proposal_id!r} was not suggested by this service "
                f"in the last {self.settings.issued_proposals_h:g} h"
            )
        if claim.status == IssuedStatus.OTHER_CALLER:
            raise ForbiddenError(f"proposal.proposal_id: {proposal.proposal_id!r} was suggested to another caller")
        if claim.status == IssuedStatus.DIFFERENT:
            raise ConflictError("proposal: differs from the proposal suggested under this id")
        if claim.status == IssuedStatus.USED:
            raise ConflictError(f"proposal.proposal_id: other feedback was given for {proposal.proposal_id!r}")
        record = FeedbackRecord(
            record_id=f"copilot-{proposal.proposal_id}",  # one row per proposal: a retry writes the same row
            source=FeedbackSource.COPILOT,
            state=state,
            proposal=proposal,
            accepted=verdict == Verdict.ACCEPT,
            reason=reason,
            operator_action=corrected_action if verdict == Verdict.CORRECT else None,
            operator_id=principal.name,
            slice=SliceKey(process_id=proposal.process_id, action_type=proposal.action.type),
        )
        producer = self.runtime.producer
        assert producer is not None
        producer.publish(self.runtime.topics.feedback, record, proposal.session_id, message_id=record.record_id)
        if claim.status == IssuedStatus.CLAIMED:
            self.metrics.feedback.labels(proposal.process_id, proposal.action.type.value, verdict.value).inc()
        return record

    # ---- inbox ----------------------------------------------------------------------------------------------------

    def on_inbox_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from any thread) whenever an inbox may have changed: this process's own answers and
        stops at once, and every record on the deferrals, operator-decisions and sessions topics."""
        self._inbox_listeners.append(listener)

    def inbox_changed(self) -> None:
        for listener in list(self._inbox_listeners):
            listener()

    def visible_queues(self, principal: Principal) -> list[str] | None:
        """The queues whose deferrals the principal sees (None: all)."""
        return None if principal.role == Role.SUPERVISOR else list(principal.queues)

    def answer(
        self,
        principal: Principal,
        deferral_id: str,
        proposal_id: str,
        state_etag: str,
        verdict: Verdict,
        corrected_action: Action | None,
        reason: RejectReason | None,
    ) -> AnswerResult:
        """Answer a deferral by the one answer protocol (``service.runtime.answers``): the store's
        compare-and-set with its audit entry in one transaction (exactly one answer per deferral is accepted),
        then the announcement on ``operator-decisions`` (the owning worker resumes the session) and the feedback
        row. Raises NotFoundError, ForbiddenError, ConflictError (stale) or InputError (a corrected action that
        does not fit the deferral's screen)."""
        row = self.store.get_deferral(deferral_id)
        if row is None:
            raise NotFoundError(f"deferral_id: no deferral {deferral_id!r}")
        deferral = row.deferral
        if not principal.may_answer(deferral.queue):
            raise ForbiddenError(f"deferral_id: {deferral_id!r} is in queue {deferral.queue!r}, not one of yours")
        if proposal_id != deferral.proposal.proposal_id:
            raise ConflictError(f"proposal_id: the deferral is for proposal {deferral.proposal.proposal_id!r}")
        if corrected_action is not None:  # the action the session will apply: it must fit the screen it was shown
            check_action(corrected_action, deferral.state.screen, "corrected_action")
        decision = OperatorDecision(
            proposal_id=proposal_id,
            session_id=deferral.session_id,
            state_etag=state_etag,
            verdict=verdict,
            corrected_action=corrected_action,
            reason=reason,
            operator_id=principal.name,
        )
        producer = self.runtime.producer
        assert producer is not None
        result = answer_deferral(self.store, producer, self.runtime.topics, deferral, decision)
        self.metrics.answers.labels(result.result.value).inc()
        self.inbox_changed()
        if result.result == AnswerStatus.UNKNOWN:
            raise NotFoundError(f"deferral_id: {result.reason}")
        if result.result == AnswerStatus.STALE:
            raise ConflictError(f"state_etag: {result.reason}")
        return result

    # ---- sessions -------------------------------------------------------------------------------------------------

    def start_sessions(self, principal: Principal, case_ids: Sequence[str]) -> list[str]:
        session_ids = self.runtime.start_sessions(case_ids, issued_by=principal.name)
        self.store.audit(principal.name, "sessions:start", ",".join(session_ids), {"cases": list(case_ids)})
        return session_ids

    def stop_session(self, principal: Principal, session_id: str) -> None:
        row = self.store.get_session(session_id)
        if row is None:
            raise NotFoundError(f"session_id: no session {session_id!r}")
        if row.status.value not in ("running", "parked"):
            raise ConflictError(f"session_id: the session has ended ({row.status.value})")
        self.runtime.stop_sessions([session_id], issued_by=principal.name)
        self.store.audit(principal.name, "sessions:stop", session_id)
        self.inbox_changed()

    # ---- supervisor -----------------------------------------------------------------------------------------------

    def set_stage(self, principal: Principal, slice_key: SliceKey, stage: AutonomyStage, reason: str, pin: bool) -> Any:
        sync = self._sync()
        with sync.local_change():  # in the log before any poll here can apply an older promotion over it
            before = self.stages.stage(slice_key)
            event = self.stages.override(slice_key, stage, principal.name, reason, pin=pin)
            sync.record_override(slice_key, stage, principal.name, reason, pin)
        order = list(AutonomyStage)
        direction = "promote" if order.index(stage) > order.index(before) else "demote" if stage != before else "pin"
        self.metrics.stage_changes.labels(direction).inc()
        self.store.audit(
            principal.name,
            f"stage:{direction}",
            str(slice_key),
            {"from": before.value, "to": stage.value, "reason": reason, "pin": pin},
        )
        return event

    def unpin(self, principal: Principal, slice_key: SliceKey) -> Any:
        sync = self._sync()
        with sync.local_change():
            event = self.stages.unpin(slice_key, principal.name)
            if event is not None:
                sync.record_unpin(slice_key, principal.name)
        if event is not None:
            self.metrics.stage_changes.labels("unpin").inc()
            self.store.audit(principal.name, "stage:unpin", str(slice_key))
        return event

    def set_kill_switch(self, principal: Principal, on: bool, reason: str) -> None:
        self.stages.set_kill_switch(on, principal.name, reason)
        self._sync().record_kill_switch(on, principal.name, reason)
        self.store.audit(principal.name, "kill_switch:on" if on else "kill_switch:off", "", {"reason": reason})

    def known_slices(self) -> list[SliceKey]:
        """Slices with a threshold, in the stages, or seen in decisions: what the dashboard lists."""
        keys: dict[str, SliceKey] = {}
        for state in self.stages.snapshot():
            keys[str(state.slice)] = state.slice
        for name in self.thresholds:
            key = slice_of(name)
            if key is not None:
                keys.setdefault(str(key), key)
        return [keys[name] for name in sorted(keys)]

    def audit_outcomes(self) -> dict[str, tuple[int, int]]:
        """Per slice, (accepted, answered) audited steps of the last ``AUTOPILOT_AUDIT_WINDOW_H`` hours, from the
        store: what every worker audited, also in an API process that runs no worker itself; pre-execution audits
        and after-the-fact reviews (acceptable among those not left out) together."""
        since = datetime.now(UTC) - timedelta(hours=self.settings.audit_window_h)
        outcomes = dict(self.store.audit_outcomes(since))  # pre-execution audits (AUTOPILOT_AUDIT_MODE=before)
        # After-the-fact reviews: acceptable of the reviews that say something about the proposal (environment
        # rejections left out), the operators' label.
        for name, counts in self.qa.store.outcomes(since).items():
            ok, total = outcomes.get(name, (0, 0))
            reviewed = counts["acceptable"] + counts["unacceptable"]
            outcomes[name] = (ok + counts["acceptable"], total + reviewed)
        return outcomes

    def decision_counts(self) -> dict[str, int]:
        """Decisions per outcome over the last ``AUTOPILOT_AUDIT_WINDOW_H`` hours, from the store: what every worker
        decided, wherever it runs."""
        return self.store.decision_counts(datetime.now(UTC) - timedelta(hours=self.settings.audit_window_h))

    def worker_heartbeats(self, within_h: float = 1.0) -> list[WorkerHeartbeat]:
        """The workers seen in the last ``within_h`` hours, from their heartbeat rows in the store (threads of this
        process and worker processes alike)."""
        return self.store.heartbeats(since=datetime.now(UTC) - timedelta(hours=within_h))

    def consumer_lag(self) -> dict[str, int]:
        lag: dict[str, int] = {}
        for worker in self.runtime.workers:
            stats = worker.stats()["consumer"]
            lag[stats["group"]] = lag.get(stats["group"], 0) + int(stats["lag"])
        return lag

    def plots(self) -> list[Path]:
        directory = self.settings.resolved_plots_dir()
        return sorted(directory.glob("*.png")) if directory.is_dir() else []

    def _state_sources(self) -> StateSources:
        def queues() -> dict[str, tuple[int, float]]:
            return {q: (s.depth, s.oldest_age_s) for q, s in self.store.deferral_stats().items()}

        def ratio() -> float | None:
            automated, ended = self.store.automation_counts()
            return None if ended == 0 else automated / ended

        def slices() -> list[SliceGauge]:
            audits = self.audit_outcomes()
            result = []
            for state in self.stages.snapshot():
                accepted, total = audits.get(str(state.slice), (0, 0))
                result.append(
                    SliceGauge(state.slice.process_id, state.slice.action_type.value, state.stage, accepted, total)
                )
            return result

        return StateSources(
            sessions_by_status=lambda: self.store.counts_by_status(),
            automated_ratio=ratio,
            queues=queues,
            slices=slices,
            critic_version=lambda: self.critic_version,
            consumer_lag=self.consumer_lag,
            kill_switch=lambda: self.stages.kill_switch,
            qa_pending=lambda: {q: s.depth for q, s in self.qa.store.pending_stats().items()},
        )
