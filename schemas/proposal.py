"""Proposal: the policy's ranked suggestion for the next action, bound to the state it was made on."""

from __future__ import annotations

from pydantic import Field

from schemas.actions import Action
from schemas.base import Payload, Strict


class ProposalFeatures(Strict):
    """The policy's own confidence signals, used by the baseline gate and the feature critic."""

    logprob: float = Field(
        le=0.0,
        description="Sequence log-probability of the action under the policy's model, before any re-weighing of its "
        "candidates (probability is after).",
    )
    margin: float = Field(ge=0.0, description="Probability margin to the runner-up candidate.")
    entropy: float = Field(ge=0.0, description="Entropy of the normalised candidate distribution (nats).")
    rank: int = Field(default=0, ge=0, description="0 for the top proposal.")
    probability: float = Field(ge=0.0, le=1.0, description="Normalised probability over the candidates.")


class ScoredAction(Strict):
    action: Action
    features: ProposalFeatures


class Proposal(Payload):
    proposal_id: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    case_id: str = Field(min_length=1)
    process_id: str = Field(min_length=1)
    step: int = Field(ge=0)
    state_etag: str = Field(min_length=1)
    action: Action
    features: ProposalFeatures
    alternatives: list[ScoredAction] = Field(default_factory=list, description="Runner-up candidates, best first.")
    model_version: str = ""
