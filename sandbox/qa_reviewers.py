"""Simulated QA reviewers: operators who review executed background steps after the fact (after-the-fact audits).

The runtime publishes every executed step it sampled for review on the ``qa`` topic (``schemas.qa.QAItem``); a
reviewer takes the oldest one, judges the executed action as an operator judges a copilot proposal
(``sandbox.operators.review``: their own action on that screen, acceptable alternatives, slips, the graded reason)
and publishes a ``QAAnswer`` on ``qa-answers``, where the runtime's workers record it through the same path an
operator's answer in the sidebar takes (``service.runtime.qa.QAReviews.record``: once, then the guardrails and the
feedback). Each QA id is answered once, with a seed derived from it, so a redelivery never gets another verdict.

An after-the-fact reviewer must see the screen as it was when the step was decided, not as it is now (the case
has moved on): ``SnapshottingAdapter`` keeps, for every action applied through it, what the case looked like just
before (the simulator's privilege; a real reviewer reads the QA item's state). Reviews of steps without a snapshot
are skipped and counted (``no_snapshot``): they depend on how the step was applied, not on its label.

Time: a review costs ``accept_fraction`` of what doing the step costs (the operator's seconds for the action plus
reading the snapshot's customer messages), charged to the case through the adapter, so the QA work is part of the
handling time the report compares with all-manual.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sandbox.adapter import HandlingClock, SandboxAdapter
from sandbox.operator_pool import ACCEPT_FRACTION
from sandbox.operators import READ_SECONDS, Review, SimOperator, acceptable, operator_distribution, review, style_bases
from sandbox.platform import CaseNotFound, SandboxPlatform
from sandbox.poll_loop import run_until_stopped
from sandbox.simulate import sample
from sandbox.view import View
from schemas.actions import Action
from schemas.decision import RejectReason, Verdict
from schemas.qa import QAAnswer, QAItem
from schemas.state import ChatRole, UIState
from service.runtime.bus.consumer import BusConsumer, MessageMeta
from service.runtime.bus.producer import BusProducer
from service.runtime.bus.topics import Topics

log = logging.getLogger(__name__)

QA_REVIEWER_GROUP = "qa-reviewers"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A case just before an action was applied: its screen and what an operator saw."""

    screen_id: str
    view: View


class SnapshottingAdapter(SandboxAdapter):
    """``SandboxAdapter`` that remembers each case's screen and view before every action applied through it (at
    most ``keep`` snapshots, the oldest dropped first)."""

    def __init__(self, platform: SandboxPlatform, clock: HandlingClock | None = None, keep: int = 200_000) -> None:
        super().__init__(platform, clock)
        if keep < 1:
            raise ValueError(f"keep: must be >= 1, got {keep}")
        self.keep = keep
        self._snapshots: OrderedDict[tuple[str, int], Snapshot] = OrderedDict()
        self._snapshot_lock = threading.Lock()

    def apply(self, case_id: str, action: Action, idempotency_key: str, expected_etag: str | None = None) -> UIState:
        with self.platform.lock:
            try:
                case = self.platform.case(case_id)
            except CaseNotFound:
                case = None  # the adapter raises its own error below
            if case is not None and case.ended is None and idempotency_key not in case.idempotency:
                snapshot = Snapshot(case.screen_id, self.platform.view(case_id).copy())
                with self._snapshot_lock:
                    self._snapshots[(case_id, case.step)] = snapshot
                    while len(self._snapshots) > self.keep:
                        self._snapshots.popitem(last=False)
            return super().apply(case_id, action, idempotency_key, expected_etag)

    def snapshot(self, case_id: str, step: int) -> Snapshot | None:
        """The case as it was before the action applied at ``step`` (None if none was applied through here)."""
        with self._snapshot_lock:
            return self._snapshots.get((case_id, step))


def judge_snapshot(
    platform: SandboxPlatform,
    operator: SimOperator,
    case_id: str,
    snapshot: Snapshot,
    proposed: Action,
    rng: random.Random,
) -> Review:
    """How ``operator`` judges ``proposed`` on the case as it was (``snapshot``), exactly as a copilot reviewer
    judges a proposal on the live case (``sandbox.copilot``, ``SimulatedOperatorPool._review``): the same work
    items (the world's, with the answers to the customer's extra questions), the same world in the view, the
    case's own rate of taking over for reasons of their own, and a committed guess at what the customer has not
    said is a model error for operators who flag guesses. Raises ``CaseNotFound`` for a case the platform forgot."""
    with platform.lock:
        case = platform.case(case_id)
        screen = platform.playbook_screen(case_id, snapshot.screen_id)
        schema = case.spec.schemas[snapshot.screen_id]
        other_reject = platform.other_reject_rate(case_id)
    bases = style_bases(screen, snapshot.view, schema)
    own = operator_distribution(operator, bases, schema)
    if not own:  # nobody would act on this screen: the step should not have happened
        return Review(Verdict.REJECT, RejectReason.OTHER, None, acceptable(proposed, bases))
    guesses = screen.guessing(snapshot.view)
    return review(operator, proposed, sample(own, rng), bases, rng, guesses=guesses, other_reject=other_reject)


class SimulatedQAReviewers:
    """See the module docstring. ``run`` is one loop (poll, review, publish); ``stats`` is safe from any thread."""

    def __init__(
        self,
        adapter: SnapshottingAdapter,
        operators: Sequence[SimOperator],
        producer: BusProducer,
        topics: Topics,
        bootstrap: str,
        seed: int,
        *,
        accept_fraction: float = ACCEPT_FRACTION,
        group: str = QA_REVIEWER_GROUP,
        session_timeout_ms: int = 6000,
        heartbeat_interval_ms: int = 1000,
        fetch_max_wait_ms: int = 10,
    ) -> None:
        if not operators:
            raise ValueError("operators: at least one reviewer is needed")
        if not 0.0 <= accept_fraction <= 1.0:
            raise ValueError(f"accept_fraction: must be in [0, 1], got {accept_fraction}")
        self.adapter = adapter
        self.platform = adapter.platform
        self.operators = list(operators)
        self.producer = producer
        self.topics = topics
        self.seed = seed
        self.accept_fraction = accept_fraction
        self._inbox: deque[QAItem] = deque()
        self._seen: set[str] = set()
        self._next_operator = itertools.cycle(self.operators)
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._review_seconds = 0.0
        self._closed = False
        self._consumer = BusConsumer(
            bootstrap,
            group,
            [topics.qa],
            {topics.qa: QAItem},
            self._on_item,
            producer,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
            client_id="qa-reviewers",
        )

    def run(self, stop_event: threading.Event) -> None:
        run_until_stopped(
            self.run_once, stop_event, name="QA reviewers", on_error=lambda: self._count("loop_errors"), log=log
        )

    def run_once(self) -> None:
        self._consumer.poll_once(timeout_ms=10 if self._inbox else 50)
        while self._inbox:
            item = self._inbox.popleft()
            answer = self._review(next(self._next_operator), item)
            if answer is None:
                continue
            try:
                self.producer.publish(
                    self.topics.qa_answers, answer, item.session_id, timeout=5.0, message_id=f"qa-answer:{item.qa_id}"
                )
            except Exception:
                self._count("publish_errors")
                log.warning("QA reviewers: publishing the review of %s failed; retrying", item.qa_id, exc_info=True)
                self._inbox.appendleft(item)  # the same review again (it is seeded by the QA id)
                return
            self._count(f"answered:{answer.verdict.value}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self._counts)
            seconds = self._review_seconds
        return {
            "received": counts.get("received", 0),
            "duplicates": counts.get("duplicates", 0),
            "no_snapshot": counts.get("no_snapshot", 0),
            "answered": {k.split(":", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("answered:")},
            "publish_errors": counts.get("publish_errors", 0),
            "review_seconds": round(seconds, 2),
        }

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _on_item(self, topic: str, payload: Any, meta: MessageMeta) -> None:
        if not isinstance(payload, QAItem):
            raise ValueError(f"payload: expected a QAItem on {topic!r}, got {type(payload).__name__}")
        with self._lock:
            if payload.qa_id in self._seen:
                self._counts["duplicates"] += 1
                return
            self._seen.add(payload.qa_id)
            self._counts["received"] += 1
        self._inbox.append(payload)

    def _review(self, operator: SimOperator, item: QAItem) -> QAAnswer | None:
        case_id = item.state.case_id
        rng = random.Random(f"{self.seed}:qa:{item.qa_id}")
        snapshot = self.adapter.snapshot(case_id, item.step)
        if snapshot is None:
            self._count("no_snapshot")
            return None
        proposed = item.proposal.action
        try:
            verdict = judge_snapshot(self.platform, operator, case_id, snapshot, proposed, rng)
        except CaseNotFound:
            self._count("no_snapshot")
            return None
        customers = sum(1 for message in snapshot.view.chat if message.role == ChatRole.CUSTOMER)
        seconds = self.accept_fraction * (operator.action_seconds(proposed, rng) + READ_SECONDS * customers)
        try:
            self.adapter.charge(case_id, seconds)
        except Exception:
            log.debug("QA reviewers: case %s is gone; review time not charged", case_id)
        with self._lock:
            self._review_seconds += seconds
        return QAAnswer(
            qa_id=item.qa_id,
            proposal_id=item.proposal.proposal_id,
            session_id=item.session_id,
            verdict=verdict.verdict,
            reason=verdict.reason,
            corrected_action=verdict.own_action if verdict.verdict == Verdict.CORRECT else None,
            operator_id=operator.operator_id,
        )
