"""A scripted proposer for the reply guard's tests: it ranks the given actions with the given probabilities,
whatever the state (a stand-in for the LM in pure unit tests of the guard's own logic)."""

from __future__ import annotations

from collections.abc import Sequence

from schemas import Action, UIState
from schemas.proposal import Proposal, ProposalFeatures, ScoredAction


def scored(action: Action, p: float, rank: int = 0) -> ScoredAction:
    return ScoredAction(
        action=action, features=ProposalFeatures(logprob=-1.0, margin=0.0, entropy=1.0, rank=rank, probability=p)
    )


class Scripted:
    """Ranks ``ranked`` (action, probability) for every state; ``asked_for`` records the ``k`` of each call."""

    def __init__(self, ranked: Sequence[tuple[Action, float]]) -> None:
        self.ranked = ranked
        self.asked_for: list[int] = []

    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]:
        self.asked_for.append(k)
        out: list[Proposal | None] = []
        for s in states:
            items = [scored(a, p, i) for i, (a, p) in enumerate(self.ranked)]
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
