"""Decision, Deferral and OperatorDecision: what the router did with a proposal and what a human answered."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field, StrictBool, model_validator

from schemas.actions import Action
from schemas.base import Payload
from schemas.proposal import Proposal
from schemas.risk import AutonomyStage, RiskTier, SliceKey
from schemas.state import UIState


def _now() -> datetime:
    return datetime.now(UTC)


class DecisionOutcome(StrEnum):
    EXECUTE = "execute"
    DEFER = "defer"
    ALWAYS_ASK = "always_ask"
    BLOCKED = "blocked"


class Decision(Payload):
    decision_id: str = Field(min_length=1)
    proposal_id: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    state_etag: str = Field(min_length=1)
    outcome: DecisionOutcome
    slice: SliceKey
    stage: AutonomyStage
    tier: RiskTier
    score: float | None = Field(default=None, ge=0.0, le=1.0, description="Critic P(accept), if scored.")
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    audit: StrictBool = Field(default=False, description="A would-execute step deferred as a random audit.")
    reason: str = Field(min_length=1)
    critic_version: str | None = Field(
        default=None, description="The registry version of the critic (and its thresholds) the decision was made with."
    )
    decided_at: datetime = Field(default_factory=_now)


class Deferral(Payload):
    """A step handed to an operator: the proposal, the decision and the exact state it was made on."""

    deferral_id: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    queue: str = Field(min_length=1, description="The operator queue that should answer.")
    proposal: Proposal
    decision: Decision
    state: UIState
    created_at: datetime = Field(default_factory=_now)

    @model_validator(mode="after")
    def _bound_to_one_state(self) -> Deferral:
        if self.proposal.state_etag != self.state.etag:
            raise ValueError("proposal.state_etag: does not match state.etag")
        if self.decision.proposal_id != self.proposal.proposal_id:
            raise ValueError("decision.proposal_id: does not match proposal.proposal_id")
        return self


class Verdict(StrEnum):
    ACCEPT = "accept"
    CORRECT = "correct"  # rejected, and the operator did something else instead
    REJECT = "reject"  # rejected without an alternative (e.g. the case needs a human)


class RejectReason(StrEnum):
    MODEL_ERROR = "model_error"
    ACCEPTABLE_ALTERNATIVE = "acceptable_alternative"
    ENVIRONMENT = "environment"
    OTHER = "other"


class OperatorDecision(Payload):
    """An operator's answer to a proposal. It names the proposal and the state etag it answers, so a reply can
    never approve a different action than the one shown."""

    proposal_id: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    state_etag: str = Field(min_length=1)
    verdict: Verdict
    corrected_action: Action | None = None
    reason: RejectReason | None = None
    operator_id: str = Field(min_length=1)
    decided_at: datetime = Field(default_factory=_now)

    @model_validator(mode="after")
    def _consistent(self) -> OperatorDecision:
        if self.verdict == Verdict.ACCEPT:
            if self.corrected_action is not None:
                raise ValueError("corrected_action: must be empty when the verdict is accept")
            if self.reason is not None:
                raise ValueError("reason: must be empty when the verdict is accept")
        else:
            if self.reason is None:
                raise ValueError(f"reason: required when the verdict is {self.verdict.value}")
            if self.verdict == Verdict.CORRECT and self.corrected_action is None:
                raise ValueError("corrected_action: required when the verdict is correct")
            if self.verdict == Verdict.REJECT and self.corrected_action is not None:
                raise ValueError("corrected_action: must be empty when the verdict is reject (use correct)")
        return self
