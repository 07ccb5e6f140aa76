"""FeedbackRecord: one critic training row (was this proposal acceptable?) with what the human did instead."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field, StrictBool, model_validator

from schemas.actions import Action
from schemas.base import Payload
from schemas.decision import RejectReason
from schemas.proposal import Proposal
from schemas.risk import SliceKey
from schemas.state import UIState


class FeedbackSource(StrEnum):
    """Where a training row came from. The service writes the first three itself, each bound to something it
    issued (a suggestion to that caller, a deferral of its own session); everything else is ``import``."""

    COPILOT = "copilot"  # the operator saw the suggestion in the sidebar (a proposal the service issued to them)
    DEFERRAL = "deferral"  # a background session deferred the step
    AUDIT = "audit"  # a would-execute step deferred at random, an unbiased label
    IMPORT = "import"  # loaded from a file or another system (autopilot critic import-feedback), not observed here


class FeedbackRecord(Payload):
    """The critic label (``accepted``) is kept apart from the policy-correction data (``operator_action``)."""

    record_id: str = Field(min_length=1)
    source: FeedbackSource
    state: UIState
    proposal: Proposal
    accepted: StrictBool
    reason: RejectReason | None = None
    operator_action: Action | None = Field(default=None, description="What the operator did instead, if anything.")
    operator_id: str = Field(min_length=1)
    slice: SliceKey
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="after")
    def _consistent(self) -> FeedbackRecord:
        if self.proposal.state_etag != self.state.etag:
            raise ValueError("proposal.state_etag: does not match state.etag")
        if self.accepted and self.reason is not None:
            raise ValueError("reason: must be empty for an accepted proposal")
        if not self.accepted and self.reason is None:
            raise ValueError("reason: required for a rejected proposal")
        return self
