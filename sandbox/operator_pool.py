"""SimulatedOperatorPool: simulated operators answering the runtime's deferrals over the bus (demo and benches).

It consumes ``deferrals`` (group ``operators``), keeps an inbox per queue, and gives the oldest deferral to a free
operator (every operator serves every queue; one operator supervises many sessions). The operator reviews the
proposal exactly as in ``sandbox.copilot``: the sandbox's step model of the case, their own sampled action, and
``sandbox.operators.review`` for the verdict, the graded reason and what they would do instead. The answer goes
the way a person's does (``service.runtime.answers``): recorded in the store (compare-and-set, with its audit
entry), then announced on ``operator-decisions`` with the critic training row (a FeedbackRecord, source
``deferral``, or ``audit`` for an audit) on ``feedback``. The pool answers each deferral id once, so a redelivered
or re-published deferral never gets a second, different answer.

Time model (consistent with the all-manual model of ``sandbox.simulate.work_case``, where a step costs the
operator's ``action_seconds`` plus ``READ_SECONDS`` per customer message that appeared since the last step):

- actions executed in the background cost no operator time (the runtime's adapter clock charges nothing);
- a review costs ``READ_SECONDS`` per customer message of the case no human has read yet (the operator catches
  up on the chat), plus ``accept_fraction`` of the proposed action's time to check and accept it, or the full time
  of their own action when they correct it;
- after a rejection (the case needs a human) the operator, with ``work_rejected``, works the rest of the case by
  hand, each step charged exactly as in ``work_case``.

All of it is charged to the case through ``adapter.charge``, so ``adapter.outcome(case).handling_time_s`` is the
operator time the case cost. ``think_time_s`` is wall-clock: an operator is busy that long per review, so with a
small pool deferrals wait in the inbox as they would for people.

Latency: ``deferral_latency_ms`` is deferral ``created_at`` (when the worker made it) -> visible in the inbox;
``publish_latency_ms`` is the broker timestamp -> inbox; ``answer_latency_ms`` is ``created_at`` -> the answer
published. Wall-clock milliseconds, in bounded reservoirs.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.adapter import SandboxAdapter
from sandbox.operators import READ_SECONDS, Review, SimOperator, acceptable, review
from sandbox.platform import MAX_STEPS, CaseNotFound, SandboxPlatform
from sandbox.poll_loop import run_until_stopped
from sandbox.simulate import sample, step_model
from schemas.decision import Deferral, OperatorDecision, RejectReason, Verdict
from schemas.state import ChatRole, UIState
from service.runtime.adapters.base import AdapterError
from service.runtime.answers import answer_deferral
from service.runtime.bus.consumer import BusConsumer, MessageMeta
from service.runtime.bus.producer import BusProducer
from service.runtime.bus.topics import Topics
from service.runtime.store import AnswerStatus, RuntimeStore
from service.runtime.worker import Reservoir

log = logging.getLogger(__name__)

OPERATOR_GROUP = "operators"
ACCEPT_FRACTION = 0.35  # checking and accepting a proposed action takes about a third of doing it


@dataclass(order=True)
class _Answer:
    """An answer decided at review time, published when the operator's think time is over."""

    due: float
    seq: int
    deferral: Deferral = field(compare=False)
    decision: OperatorDecision = field(compare=False)


def _customer_messages(state: UIState) -> int:
    return sum(1 for message in state.chat if message.role == ChatRole.CUSTOMER)


class SimulatedOperatorPool:
    """See the module docstring. ``adapter`` is the time account the review time is charged to: give the one the
    workers use (its clock should charge background actions nothing), or a new ``SandboxAdapter(platform)`` is
    made. ``run`` is a single loop (poll, dispatch, publish due answers); ``stats`` may be called from any
    thread."""

    def __init__(
        self,
        platform: SandboxPlatform,
        operators: Sequence[SimOperator],
        producer: BusProducer,
        topics: Topics,
        bootstrap: str,
        seed: int,
        store: RuntimeStore,
        think_time_s: float = 0.0,
        *,
        adapter: SandboxAdapter | None = None,
        accept_fraction: float = ACCEPT_FRACTION,
        work_rejected: bool = True,
        group: str = OPERATOR_GROUP,
        session_timeout_ms: int = 6000,
        heartbeat_interval_ms: int = 1000,
        fetch_max_wait_ms: int = 10,
        idle_fetch_max_wait_ms: int | None = None,
    ) -> None:
        if not operators:
            raise ValueError("operators: the pool needs at least one operator")
        if len({op.operator_id for op in operators}) != len(operators):
            raise ValueError("operators: operator ids must be unique")
        if not think_time_s >= 0.0:
            raise ValueError(f"think_time_s: must be >= 0, got {think_time_s}")
        if not 0.0 <= accept_fraction <= 1.0:
            raise ValueError(f"accept_fraction: must be in [0, 1], got {accept_fraction}")
        if adapter is not None and adapter.platform is not platform:
            raise ValueError("adapter: must drive the same platform")
        self.platform = platform
        self.operators = list(operators)
        self.producer = producer
        self.topics = topics
        self.store = store
        self.seed = seed
        self.think_time_s = float(think_time_s)
        self.adapter = adapter if adapter is not None else SandboxAdapter(platform)
        self.accept_fraction = accept_fraction
        self.work_rejected = work_rejected
        self.latency = Reservoir()
        self.publish_latency = Reservoir()
        self.answer_latency = Reservoir()
        self._lock = threading.Lock()  # inboxes and counters: stats() reads them from other threads
        self._inbox: dict[str, deque[Deferral]] = {}
        self._seen: set[str] = set()  # deferral ids received; grows with the run (fine for a simulator)
        self._free_at = {op.operator_id: 0.0 for op in self.operators}
        self._assigned: Counter[str] = Counter()
        self._scheduled: list[_Answer] = []
        self._seq = itertools.count()
        self._read: dict[str, int] = {}  # case id -> customer messages a human has read
        self._counts: Counter[str] = Counter()
        self._review_seconds = 0.0
        self._closed = False
        self._consumer = BusConsumer(
            bootstrap,
            group,
            [topics.deferrals],
            {topics.deferrals: Deferral},
            self._on_deferral,
            producer,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
            idle_fetch_max_wait_ms=idle_fetch_max_wait_ms,
            client_id="operator-pool",
        )

    # ---- the loop -----------------------------------------------------------------------------------------------

    def run(self, stop_event: threading.Event) -> None:
        run_until_stopped(
            self.run_once, stop_event, name="operator pool", on_error=lambda: self._count("loop_errors"), log=log
        )

    def run_once(self) -> None:
        busy = bool(self._scheduled) or any(self._inbox.values())
        self._consumer.poll_once(timeout_ms=10 if busy else 50)
        self._dispatch()
        self._publish_due()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()

    # ---- observation --------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._counts)
            inbox = {queue: len(items) for queue, items in sorted(self._inbox.items())}
            review_seconds = self._review_seconds
            scheduled = len(self._scheduled)
        return {
            "received": counts.get("received", 0),
            "duplicates": counts.get("duplicates", 0),
            "stale_deferrals": counts.get("stale_deferrals", 0),
            "stale_answers": counts.get("stale_answers", 0),
            "answered": {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("answered:")},
            "manual_actions": counts.get("manual_actions", 0),
            "publish_errors": counts.get("publish_errors", 0),
            "inbox": inbox,
            "scheduled": scheduled,
            "review_seconds": round(review_seconds, 2),
            "deferral_latency_ms": self.latency.summary(),
            "publish_latency_ms": self.publish_latency.summary(),
            "answer_latency_ms": self.answer_latency.summary(),
        }

    def received_ids(self) -> set[str]:
        """Every deferral id the pool has received (for checks that no deferral was lost)."""
        with self._lock:
            return set(self._seen)

    # ---- internals ----------------------------------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _on_deferral(self, topic: str, payload: Any, meta: MessageMeta) -> None:
        if not isinstance(payload, Deferral):
            raise ValueError(f"payload: expected a Deferral on {topic!r}, got {type(payload).__name__}")
        now_ms = time.time() * 1000.0
        with self._lock:
            if payload.deferral_id in self._seen:
                self._counts["duplicates"] += 1
                return
            self._seen.add(payload.deferral_id)
            self._counts["received"] += 1
            self._inbox.setdefault(payload.queue, deque()).append(payload)
        self.latency.add(max(0.0, now_ms - payload.created_at.timestamp() * 1000.0))
        self.publish_latency.add(max(0.0, now_ms - meta.timestamp))

    def _next_deferral(self) -> Deferral | None:
        """The oldest deferral over all inboxes (every operator serves every queue)."""
        with self._lock:
            heads = [(items[0].created_at, queue) for queue, items in self._inbox.items() if items]
            if not heads:
                return None
            _, queue = min(heads)
            return self._inbox[queue].popleft()

    def _dispatch(self) -> None:
        now = time.monotonic()
        while True:
            free = [op for op in self.operators if self._free_at[op.operator_id] <= now]
            if not free:
                return
            deferral = self._next_deferral()
            if deferral is None:
                return
            # The least loaded free operator, so the work spreads over the pool.
            operator = min(free, key=lambda op: (self._assigned[op.operator_id], op.operator_id))
            self._assigned[operator.operator_id] += 1
            self._free_at[operator.operator_id] = now + self.think_time_s
            decision = self._review(operator, deferral)
            if decision is not None:
                due = now + self.think_time_s
                heapq.heappush(self._scheduled, _Answer(due, next(self._seq), deferral, decision))

    def _review(self, operator: SimOperator, deferral: Deferral) -> OperatorDecision | None:
        case_id = deferral.state.case_id
        rng = random.Random(f"{self.seed}:{deferral.deferral_id}")
        with self.platform.lock:  # the case must not change between the check and the review
            try:
                case = self.platform.case(case_id)
                current = self.platform.observe(case_id)
            except CaseNotFound:
                self._count("stale_deferrals")
                return None
            if case.ended or current.etag != deferral.state.etag:
                # Answered long ago (a re-published deferral this pool did not see before) or moved on: nothing
                # a human could answer any more.
                self._count("stale_deferrals")
                return None
            posterior = {op.operator_id: 1.0 / len(self.operators) for op in self.operators}
            model = step_model(self.platform, case_id, self.operators, posterior)
            own_dist = model.per_operator[operator.operator_id]
            proposed = deferral.proposal.action
            if own_dist:
                answer = review(operator, proposed, sample(own_dist, rng), model.bases, rng, guesses=model.guesses,
                                other_reject=self.platform.other_reject_rate(case_id))  # fmt: skip
            else:  # the operator has no idea what to do on this screen either: the case needs a human
                answer = Review(Verdict.REJECT, RejectReason.OTHER, None, acceptable(proposed, model.bases))
            seconds = self._reading_seconds(case_id, current)
            if answer.verdict == Verdict.ACCEPT:
                seconds += self.accept_fraction * operator.action_seconds(proposed, rng)
            elif answer.verdict == Verdict.CORRECT and answer.own_action is not None:
                seconds += operator.action_seconds(answer.own_action, rng)
            self._charge(case_id, seconds)
            if answer.verdict == Verdict.REJECT and self.work_rejected:
                self._work_rest(operator, case_id, rng)
        return OperatorDecision(
            proposal_id=deferral.proposal.proposal_id,
            session_id=deferral.session_id,
            state_etag=deferral.state.etag,
            verdict=answer.verdict,
            corrected_action=answer.own_action if answer.verdict == Verdict.CORRECT else None,
            reason=answer.reason,
            operator_id=operator.operator_id,
        )

    def _reading_seconds(self, case_id: str, state: UIState) -> float:
        customers = _customer_messages(state)
        unread = max(0, customers - self._read.get(case_id, 0))
        self._read[case_id] = customers
        return READ_SECONDS * unread

    def _charge(self, case_id: str, seconds: float) -> None:
        self.adapter.charge(case_id, seconds)
        with self._lock:
            self._review_seconds += seconds

    def _work_rest(self, operator: SimOperator, case_id: str, rng: random.Random) -> None:
        """The operator took the case over: they work it to the end by hand (the all-manual time model)."""
        posterior = {op.operator_id: 1.0 / len(self.operators) for op in self.operators}
        for _ in range(MAX_STEPS):
            case = self.platform.case(case_id)
            if case.ended:
                return
            dist = step_model(self.platform, case_id, self.operators, posterior).per_operator[operator.operator_id]
            if not dist:
                return
            action = sample(dist, rng)
            reading = self._reading_seconds(case_id, self.platform.observe(case_id))
            try:
                self.adapter.apply(case_id, action, f"manual:{case_id}:{case.step}")
            except AdapterError as exc:
                log.info("operator %s could not continue case %s by hand: %s", operator.operator_id, case_id, exc)
                return
            self._count("manual_actions")
            self._charge(case_id, operator.action_seconds(action, rng) + reading)

    def _publish_due(self) -> None:
        now = time.monotonic()
        while self._scheduled and self._scheduled[0].due <= now:
            item = heapq.heappop(self._scheduled)
            deferral = item.deferral
            try:
                result = answer_deferral(
                    self.store,
                    self.producer,
                    self.topics,
                    deferral,
                    item.decision,
                    audit_details={"via": "simulated operators"},
                )
            except Exception:
                # Recorded or not, try again in a second: a recorded answer comes back as a duplicate and is
                # announced then; the store accepts it once whatever the number of tries.
                self._count("publish_errors")
                log.warning("operator pool: answering %s failed", deferral.deferral_id, exc_info=True)
                item.due = now + 1.0
                heapq.heappush(self._scheduled, item)
                return
            if result.result not in (AnswerStatus.ACCEPTED, AnswerStatus.DUPLICATE):
                # The session moved on while the operator thought (stopped, superseded): nothing to announce.
                self._count("stale_answers")
                continue
            self._count(f"answered:{item.decision.verdict.value}")
            created_ms = deferral.created_at.timestamp() * 1000.0
            self.answer_latency.add(max(0.0, datetime.now(UTC).timestamp() * 1000.0 - created_ms))
