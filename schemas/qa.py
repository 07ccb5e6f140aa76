"""QAItem and QAAnswer: an executed background step sampled for review after the fact, and a human's verdict on it.

An after-the-fact audit does not interrupt the session: the step runs, and a copy of what was decided (the state
it was decided on, the proposal, the decision) waits in a QA queue until an operator says whether the executed
action was acceptable. The answer's label is what operators mean by an error (``qa_label``):

- ``accept``, or a rejection graded ``acceptable_alternative`` (the operator would have done something else, also
  valid): **acceptable**;
- a rejection graded ``model_error``, or ``other`` (counted as an error to stay on the safe side): **unacceptable**;
- a rejection graded ``environment`` (the screen or a tool misbehaved, not the proposal): **excluded** from the
  realised-error estimate and the guardrails (it says nothing about the proposal).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field, model_validator

from schemas.actions import Action
from schemas.base import Payload
from schemas.decision import Decision, RejectReason, Verdict
from schemas.proposal import Proposal
from schemas.state import UIState


def _now() -> datetime:
    return datetime.now(UTC)


class QALabel(StrEnum):
    ACCEPTABLE = "acceptable"
    UNACCEPTABLE = "unacceptable"
    EXCLUDED = "excluded"  # an environment problem: not a statement about the proposal


_LABEL_OF_REASON: dict[RejectReason, QALabel] = {
    RejectReason.ACCEPTABLE_ALTERNATIVE: QALabel.ACCEPTABLE,
    RejectReason.MODEL_ERROR: QALabel.UNACCEPTABLE,
    RejectReason.OTHER: QALabel.UNACCEPTABLE,
    RejectReason.ENVIRONMENT: QALabel.EXCLUDED,
}


def qa_label(verdict: Verdict, reason: RejectReason | None) -> QALabel:
    """What a review says about the executed proposal (see the module docstring)."""
    if verdict == Verdict.ACCEPT:
        return QALabel.ACCEPTABLE
    if reason is None:
        raise ValueError(f"reason: required when the verdict is {verdict.value}")
    return _LABEL_OF_REASON[reason]


class QAItem(Payload):
    """An executed step to review: the exact state it was decided on, the proposal that ran and the decision."""

    qa_id: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    queue: str = Field(min_length=1, description="The operator queue that reviews it.")
    state: UIState
    proposal: Proposal
    decision: Decision
    executed_at: datetime = Field(default_factory=_now)

    @model_validator(mode="after")
    def _bound_to_one_state(self) -> QAItem:
        if self.proposal.state_etag != self.state.etag:
            raise ValueError("proposal.state_etag: does not match state.etag")
        if self.decision.proposal_id != self.proposal.proposal_id:
            raise ValueError("decision.proposal_id: does not match proposal.proposal_id")
        if self.proposal.session_id != self.session_id or self.decision.session_id != self.session_id:
            raise ValueError("session_id: the proposal and decision belong to another session")
        return self

    @property
    def step(self) -> int:
        return self.proposal.step


class QAAnswer(Payload):
    """A human's verdict on an executed step: accept, or reject with a graded reason (``correct`` names what they
    would have done instead). It names the QA item and its proposal, so it can never label another step."""

    qa_id: str = Field(min_length=1)
    proposal_id: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    verdict: Verdict
    reason: RejectReason | None = None
    corrected_action: Action | None = None
    note: str | None = Field(default=None, max_length=2000, description="Free text for the QA log (no PII).")
    operator_id: str = Field(min_length=1)
    decided_at: datetime = Field(default_factory=_now)

    @model_validator(mode="after")
    def _consistent(self) -> QAAnswer:
        if self.verdict == Verdict.ACCEPT:
            if self.reason is not None:
                raise ValueError("reason: must be empty when the verdict is accept")
            if self.corrected_action is not None:
                raise ValueError("corrected_action: must be empty when the verdict is accept")
        else:
            if self.reason is None:
                raise ValueError(f"reason: required when the verdict is {self.verdict.value}")
            if self.verdict == Verdict.CORRECT and self.corrected_action is None:
                raise ValueError("corrected_action: required when the verdict is correct")
            if self.verdict == Verdict.REJECT and self.corrected_action is not None:
                raise ValueError("corrected_action: must be empty when the verdict is reject (use correct)")
        return self

    @property
    def label(self) -> QALabel:
        return qa_label(self.verdict, self.reason)
