"""The one answer protocol: how any operator (a person through the API, or the sandbox's simulated operators)
answers a deferral.

1. **Record** (``RuntimeStore.answer``): the compare-and-set that accepts exactly one answer per deferral, bound to
   its proposal id and the state etag it was parked on, with the answer's audit entry in the same transaction.
2. **Announce** (only an ``accepted`` or ``duplicate`` answer): the decision on ``operator-decisions`` (message
   id ``answer:<deferral>``) so the worker that owns the session resumes it now, and the critic training row on
   ``feedback`` (message id ``feedback:<deferral>``). A retry after a crash between 1 and 2 gets ``duplicate``
   and announces again; the message ids make the copies harmless.

Workers never record answers: they read an announcement, check with the store that it is the recorded answer
(``RuntimeStore.recorded_answer``) and resume the session; an announcement nobody recorded changes nothing. A
lost announcement costs only time: a worker notices the answered deferral in its next scan of parked sessions.

A QA review (an after-the-fact audit, ``service.runtime.qa``) is recorded the same way: its compare-and-set and its
audit entry (``answer_note``) in one transaction (``QAStore.answer``), its effects after.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.decision import Deferral, OperatorDecision, Verdict
from schemas.feedback import FeedbackRecord, FeedbackSource
from service.runtime.bus.producer import BusProducer
from service.runtime.bus.topics import Topics
from service.runtime.store import ANSWER_AUDIT, AnswerResult, AnswerStatus, AuditNote, RuntimeStore


def answer_note(
    kind: str,
    operator_id: str,
    verdict: Verdict,
    target: str,
    session_id: str,
    details: Mapping[str, Any] | None = None,
) -> AuditNote:
    """The audit entry of an operator's answer, to be written with it: the operator did ``<kind>:<verdict>``
    (``answer`` a deferral, ``qa`` a review) to ``target`` (the deferral or QA id) in ``session_id``."""
    return AuditNote(operator_id, f"{kind}:{verdict.value}", target, {"session_id": session_id, **(details or {})})


def feedback_row(deferral: Deferral, decision: OperatorDecision) -> FeedbackRecord:
    """The critic training row of an answered deferral (source ``audit`` for an audit, else ``deferral``)."""
    return FeedbackRecord(
        record_id=f"deferral-{deferral.deferral_id}",
        source=FeedbackSource.AUDIT if deferral.decision.audit else FeedbackSource.DEFERRAL,
        state=deferral.state,
        proposal=deferral.proposal,
        accepted=decision.verdict == Verdict.ACCEPT,
        reason=decision.reason,
        operator_action=decision.corrected_action if decision.verdict == Verdict.CORRECT else None,
        operator_id=decision.operator_id,
        slice=deferral.decision.slice,
    )


def announce(producer: BusProducer, topics: Topics, deferral: Deferral, decision: OperatorDecision) -> None:
    """Step 2: the decision on ``operator-decisions`` and its training row on ``feedback`` (acknowledged)."""
    key = deferral.session_id
    producer.publish(topics.operator_decisions, decision, key, message_id=f"answer:{deferral.deferral_id}")
    producer.publish(
        topics.feedback, feedback_row(deferral, decision), key, message_id=f"feedback:{deferral.deferral_id}"
    )


def answer_deferral(
    store: RuntimeStore,
    producer: BusProducer,
    topics: Topics,
    deferral: Deferral,
    decision: OperatorDecision,
    *,
    audit_details: Mapping[str, Any] | None = None,
) -> AnswerResult:
    """Record ``decision`` (the answer to ``deferral``) with its audit entry, then announce it if it stands
    (accepted now, or a duplicate of the accepted one). Returns the store's result; a stale or unknown answer is
    not announced. Raises what the producer raises when the broker is away (the answer is recorded then: retry,
    and the duplicate announces it)."""
    if decision.proposal_id != deferral.proposal.proposal_id or decision.session_id != deferral.session_id:
        raise ValueError("decision: does not answer this deferral")
    note = answer_note(
        ANSWER_AUDIT, decision.operator_id, decision.verdict, deferral.deferral_id, deferral.session_id, audit_details
    )
    result = store.answer(decision, audit=note)
    if result.result in (AnswerStatus.ACCEPTED, AnswerStatus.DUPLICATE):
        announce(producer, topics, deferral, decision)
    return result
