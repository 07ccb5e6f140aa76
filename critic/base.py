"""What every critic shares: its input (a proposal and the state it was made on), its label, and its interface.

A critic estimates P(the operator finds this proposal acceptable); its risk, 1 - that, is the probability that
the proposal is unacceptable. Critics follow scikit-learn's estimator
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

# The label rules (decision 0011). LABEL_RULES[rule] holds the rejection reasons that do NOT count against the
# proposal (label 1, like an accept); every other rejection is an error (label 0). UNLABELLED[rule] holds the
# reasons whose rows say nothing about the proposal at all: they are left out of training, calibration and
# thresholds (``labelled``).
#
# "unacceptable" (the default, risk as operators mean it): an error is a rejection graded `model_error`, or
#   `other` (unexplained, so counted as an error to stay on the safe side). An `acceptable_alternative`
#   rejection is a preference, not an error. An `environment` rejection (the screen changed under the proposal,
#   a tool failed) does not count against the proposal: the session re-observes and retries; its row carries no
#   label (the proposal was never judged on the state it was made for).
# "accepted": only an operator's accept is positive, every rejection is an error (the paper's label; reported
#   beside the default as the baseline).
# "acceptable": `acceptable_alternative` rejections are positive, environment and other are errors (the graded
#   variant measured before the calibrated sandbox; kept for comparison).
LabelRule = Literal["unacceptable", "accepted", "acceptable"]
LABEL_RULES: dict[str, frozenset[RejectReason]] = {
    "unacceptable": frozenset({RejectReason.ACCEPTABLE_ALTERNATIVE, RejectReason.ENVIRONMENT}),
    "accepted": frozenset(),
    "acceptable": frozenset({RejectReason.ACCEPTABLE_ALTERNATIVE}),
}
UNLABELLED: dict[str, frozenset[RejectReason]] = {
    "unacceptable": frozenset({RejectReason.ENVIRONMENT}),
    "accepted": frozenset(),
    "acceptable": frozenset(),
}
DEFAULT_LABEL: LabelRule = "unacceptable"
BASELINE_LABEL: LabelRule = "accepted"  # the paper's, reported beside the default


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


def _rule(rule: str) -> frozenset[RejectReason]:
    try:
        return LABEL_RULES[rule]
    except KeyError:
        raise ValueError(f"label: unknown rule {rule!r} (known: {', '.join(LABEL_RULES)})") from None


def review_label(accepted: bool, reason: RejectReason | None, rule: LabelRule = DEFAULT_LABEL) -> int | None:
    """The label of one review under ``rule``: 1 acceptable, 0 an error, None no label (UNLABELLED). For
    callers that hold a verdict and a reason rather than a FeedbackRecord (the runtime's audits)."""
    if accepted:
        return 1
    if reason in UNLABELLED.get(rule, frozenset()):
        return None
    return int(reason in _rule(rule))


def critic_label(record: FeedbackRecord, rule: LabelRule = DEFAULT_LABEL) -> int:
    """1 if the proposal counts as acceptable under ``rule`` (see LABEL_RULES), else 0. A row without a label
    under ``rule`` (an environment rejection under "unacceptable") counts as 1, not against the proposal; use
    ``labelled`` to leave such rows out, as training, calibration and thresholds do.

    This is the critic's label; what the operator did instead (``operator_action``) is policy-correction data
    and never enters it."""
    if record.accepted:
        return 1
    return int(record.reason in _rule(rule))


def has_label(record: FeedbackRecord, rule: LabelRule = DEFAULT_LABEL) -> bool:
    """False for a row that says nothing about its proposal under ``rule`` (see UNLABELLED)."""
    _rule(rule)
    return record.accepted or record.reason not in UNLABELLED.get(rule, frozenset())


def labelled(records: Iterable[FeedbackRecord], rule: LabelRule = DEFAULT_LABEL) -> list[FeedbackRecord]:
    """The rows that carry a label under ``rule``, in their order."""
    return [r for r in records if has_label(r, rule)]


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
