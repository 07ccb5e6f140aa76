"""After-the-fact audits: what an executed step sampled for QA becomes, and what its review feeds.

With ``AUTOPILOT_AUDIT_MODE=after`` (the default) the router executes an audited step like any confident one and
marks it ``audit``; the worker that executed it queues a ``QAItem`` (``QAReviews.queue``) and publishes it on the
``qa`` topic for the operator side. A review (``QAAnswer``) is recorded once, through one path whoever sends it (an
operator in the sidebar through the API, an operator gateway over the ``qa-answers`` topic, which the workers
consume): ``QAReviews.record`` stores it with its audit entry in one transaction (``QAStore.answer``, exactly once:
the protocol of a deferral's answer, ``service.runtime.answers``) and then, for the accepted one only:

- feeds the guardrails (``AutonomyStages.record_audit``) with what operators mean by an error: acceptable
  (accept, acceptable alternative) or unacceptable (model error, other); an environment rejection is left out;
  a demotion it raises is replicated to every process through the stage log;
- publishes the critic's training row (a ``FeedbackRecord`` with source ``audit``) on ``feedback`` for the
  nightly retraining; the feedback sink stores it, idempotent by record id;
- leaves the label in the QA table, where the realised-error estimate reads it (``service.runtime.realised_error``).

Why not a deferral: a pre-execution audit interrupts the session it samples (at 5% audits a 9-step session is
interrupted with probability about 37% even when every step is confident), so no session with an audit can be
fully automated; an after-the-fact audit samples the same steps with the same probability and interrupts nothing.
The price: an unacceptable action has already run when its review comes in; the guardrails then demote the slice
for what follows, as they would after a pre-execution audit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.decision import Decision, Verdict
from schemas.feedback import FeedbackRecord, FeedbackSource
from schemas.proposal import Proposal
from schemas.qa import QAAnswer, QAItem, QALabel
from schemas.state import UIState
from service.runtime.answers import answer_note
from service.runtime.autonomy import AutonomyStages, StageEvent
from service.runtime.bus.producer import BusProducer
from service.runtime.bus.topics import Topics
from service.runtime.qa_store import QA_AUDIT, QAAnswerResult, QAStore, qa_id_for
from service.runtime.stage_sync import StageSync
from service.runtime.store import AnswerStatus

log = logging.getLogger(__name__)


def qa_feedback(item: QAItem, answer: QAAnswer) -> FeedbackRecord:
    """The critic's training row of a reviewed step (source ``audit``: an unbiased sample of what autopilot ran)."""
    return FeedbackRecord(
        record_id=f"qa-{item.qa_id}",
        source=FeedbackSource.AUDIT,
        state=item.state,
        proposal=item.proposal,
        accepted=answer.verdict == Verdict.ACCEPT,
        reason=answer.reason,
        operator_action=answer.corrected_action if answer.verdict == Verdict.CORRECT else None,
        operator_id=answer.operator_id,
        slice=item.decision.slice,
    )


class QAReviews:
    """Queues executed audited steps for review and records reviews with their effects (module docstring).

    ``producer`` None: nothing is published (a process without a bus); ``on_record`` is called with every accepted
    review and its label (metrics)."""

    def __init__(
        self,
        store: QAStore,
        stages: AutonomyStages,
        producer: BusProducer | None,
        topics: Topics,
        *,
        stage_sync: StageSync | None = None,
        on_record: Callable[[QAItem, QALabel], None] | None = None,
    ) -> None:
        self.store = store
        self.stages = stages
        self.producer = producer
        self.topics = topics
        self.stage_sync = stage_sync
        self.on_record = on_record

    # ---- the worker's side -------------------------------------------------------------------------------------

    def queue(self, state: UIState, proposal: Proposal, decision: Decision, queue: str) -> QAItem | None:
        """Queue an executed audited step and publish it on ``qa``; the item, or None if it was queued before
        (a retry). A failed publish leaves the item unpublished for ``republish``."""
        item = QAItem(
            qa_id=qa_id_for(proposal.proposal_id),
            session_id=proposal.session_id,
            queue=queue,
            state=state,
            proposal=proposal,
            decision=decision,
        )
        if not self.store.add(item):
            return None
        self._publish(item)
        return item

    def republish(self, older_than_s: float, limit: int = 100) -> int:
        """Publish pending items that never reached the topic and are older than ``older_than_s`` (their worker
        died, or the broker was away); returns how many went out. Readers dedupe on the QA id."""
        before = datetime.now(UTC) - timedelta(seconds=older_than_s)
        return sum(self._publish(item) for item in self.store.unpublished(before, limit))

    def _publish(self, item: QAItem) -> bool:
        if self.producer is None:
            return False
        try:
            self.producer.publish(self.topics.qa, item, item.session_id, timeout=5.0, message_id=f"qa:{item.qa_id}")
        except Exception:
            log.warning("publishing QA item %s failed; maintenance sends it again", item.qa_id, exc_info=True)
            return False
        self.store.mark_published(item.qa_id)
        return True

    # ---- the review ----------------------------------------------------------------------------------------------

    def record(self, answer: QAAnswer, *, audit_details: Mapping[str, Any] | None = None) -> QAAnswerResult:
        """Store a review (once) with its audit entry (``qa:<verdict>`` on the QA id by the operator, with the
        session, the label and ``audit_details``) in one transaction and, if it is the accepted one, feed the
        guardrails and the nightly retraining. Raises what the store raises; nothing of the review stands then."""
        label = answer.label
        details = {"label": label.value, **(audit_details or {})}
        note = answer_note(QA_AUDIT, answer.operator_id, answer.verdict, answer.qa_id, answer.session_id, details)
        result = self.store.answer(answer, audit=note)
        if result.result != AnswerStatus.ACCEPTED or result.item is None:
            return result
        item = result.item
        if label != QALabel.EXCLUDED:
            event = self.stages.record_audit(item.decision.slice, label == QALabel.ACCEPTABLE)
            self._replicate(event)
        if self.producer is not None:
            try:
                self.producer.publish_async(
                    self.topics.feedback,
                    qa_feedback(item, answer),
                    item.session_id,
                    message_id=f"feedback:qa:{item.qa_id}",
                )
            except Exception:
                # The label stays in the QA table; the training row is lost for this night's job only.
                log.warning("publishing the feedback of QA item %s failed", item.qa_id, exc_info=True)
        if self.on_record is not None:
            self.on_record(item, label)
        return result

    def _replicate(self, event: StageEvent | None) -> None:
        if event is not None and event.from_stage != event.to_stage and self.stage_sync is not None:
            self.stage_sync.record_demotion(event)  # every other process demotes the slice too
