"""What every critic shares: its input (a proposal and the state it was made on), its label, and its interface.

A critic estimates P(the operator finds this proposal acceptable). Critics follow scikit-learn's estimator
contract: hyper-parameters in ``__init__``, ``fit(X, y)`` returns self, learned attributes end in ``_``,
``predict_proba(X)`` returns an ``(n, 2)`` array whose column 1 is P(accept). ``X`` is a sequence of
:class:`CriticInput` (a FeedbackRecord is one; so is a live ``(state, proposal)`` pair at run time).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, Self, runtime_checkable

import numpy as np

from schemas.decision import RejectReason
from schemas.feedback import FeedbackRecord
from schemas.proposal import Proposal
from schemas.risk import SliceKey
from schemas.state import UIState

# Which reviews count as acceptable (label 1). "accepted": only an operator's accept, the paper's label and the
# one the autopilot is judged by (a background step the operator would have rejected is an error, whatever the
# reason). "acceptable": also a rejection graded `acceptable_alternative` (the operator preferred another valid
# action); it measures correctness rather than agreement, but in the sandbox it leaves mostly random
# environment/other rejections as negatives (decision 0004).
LabelRule = Literal["accepted", "acceptable"]
LABEL_RULES: dict[str, frozenset[RejectReason]] = {
    "accepted": frozenset(),
    "acceptable": frozenset({RejectReason.ACCEPTABLE_ALTERNATIVE}),
}
DEFAULT_LABEL: LabelRule = "accepted"


class CriticInput(Protocol):
    """A proposal and the exact state it was made on (FeedbackRecord satisfies this)."""

    @property
    def state(self) -> UIState: ...

    @property
    def proposal(self) -> Proposal: ...


@dataclass(frozen=True, slots=True)
class Candidate:
    """A live critic input: what the router scores before any human has seen the proposal."""

    state: UIState
    proposal: Proposal


def slice_of(item: CriticInput) -> SliceKey:
    return SliceKey(process_id=item.proposal.process_id, action_type=item.proposal.action.type)


def critic_label(record: FeedbackRecord, rule: LabelRule = DEFAULT_LABEL) -> int:
    """1 if the proposal counts as acceptable under ``rule`` (see LABEL_RULES), else 0.

    This is the critic's label; what the operator did instead (``operator_action``) is policy-correction data
    and never enters it."""
    if record.accepted:
        return 1
    try:
        return int(record.reason in LABEL_RULES[rule])
    except KeyError:
        raise ValueError(f"label: unknown rule {rule!r} (known: {', '.join(LABEL_RULES)})") from None


def labels(records: Iterable[FeedbackRecord], rule: LabelRule = DEFAULT_LABEL) -> np.ndarray:
    return np.fromiter((critic_label(r, rule) for r in records), dtype=np.int64)


@runtime_checkable
class Critic(Protocol):
    """The interface of every critic (feature, generative, policy confidence) and of their calibrated wrapper."""

    name: str

    def fit(self, X: Sequence[CriticInput], y: Sequence[int] | np.ndarray) -> Self: ...

    def predict_proba(self, X: Sequence[CriticInput]) -> np.ndarray: ...

    def save(self, path: str | Path) -> Path: ...


def accept_scores(critic: Critic, X: Sequence[CriticInput]) -> np.ndarray:
    """P(accept) per input: column 1 of ``predict_proba``."""
    if len(X) == 0:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(critic.predict_proba(X), dtype=np.float64)[:, 1]
