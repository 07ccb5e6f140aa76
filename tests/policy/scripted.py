"""A scripted proposer for the reply guard's tests: it ranks the given actions with the given probabilities,
whatever the state (a stand-in for the LM in pure unit tests of the guard's own logic)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from schemas import Action, UIState
from schemas.proposal import Proposal, ProposalFeatures, ScoredAction


def scored(action: Action, p: float, rank: int = 0, logprob: float | None = None) -> ScoredAction:
    """A scored action; its model log-probability is that of its probability unless given (a leaning or a cue
    weighed the probability, not the model's score)."""
    if logprob is None:
        logprob = math.log(p) if p > 0 else -50.0
    return ScoredAction(
        action=action, features=ProposalFeatures(logprob=logprob, margin=0.0, entropy=1.0, rank=rank, probability=p)
    )


class Scripted:
    """Ranks ``ranked`` (action, probability) for every state; ``asked_for`` records the ``k`` of each call."""

    def __init__(self, ranked: Sequence[tuple[Action, float]], logprobs: Sequence[float] | None = None) -> None:
        self.ranked = ranked
        self.logprobs = logprobs
        self.asked_for: list[int] = []

    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]:
        self.asked_for.append(k)
        out: list[Proposal | None] = []
        for s in states:
            logprobs = self.logprobs or [None] * len(self.ranked)
            items = [scored(a, p, i, lp) for i, ((a, p), lp) in enumerate(zip(self.ranked, logprobs, strict=True))]
            out.append(
                Proposal(
                    proposal_id="x",
                    session_id=s.session_id,
                    case_id=s.case_id,
                    process_id=s.process_id,
                    step=s.step,
                    state_etag=s.etag,
                    action=items[0].action,
                    features=items[0].features,
                    alternatives=items[1:k],
                )
            )
        return out
