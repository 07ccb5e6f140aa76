"""PolicyConfidenceCritic: the baseline critic, which trusts the policy's own confidence as P(acceptable).

A learned critic has to beat this to be worth running: gating on the policy's probability (or margin, or
sequence likelihood) needs no feedback at all. It learns nothing; ``fit`` only checks its inputs, so that it can
stand in wherever a critic is fitted, evaluated, calibrated and saved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, Self, get_args

import numpy as np
from sklearn.base import BaseEstimator

from critic.artifact import read_critic_meta, write_critic_dir
from critic.base import Candidate, CriticInput
from critic.errors import NotFittedError
from critic.features import check_training_set
from schemas.actions import action_key
from schemas.proposal import Proposal
from schemas.state import UIState
from schemas.trace import TraceStep


class ProposingPolicy(Protocol):
    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]: ...


KIND = "confidence"
ConfidenceFeature = Literal["probability", "margin", "logprob"]
FEATURES: tuple[str, ...] = get_args(ConfidenceFeature)


class PolicyConfidenceCritic(BaseEstimator):
    """P(acceptable) = the policy's confidence in its proposal.

    ``feature``: ``"probability"`` (normalised over the candidates), ``"margin"`` (to the runner-up, within
    [0, 1]) or ``"logprob"`` (``exp`` of the sequence log-probability: the raw, unnormalised likelihood)."""

    name = "confidence"

    def __init__(self, feature: ConfidenceFeature = "probability") -> None:
        self.feature = feature

    def _check_feature(self) -> None:
        if self.feature not in FEATURES:
            raise ValueError(f"feature: {self.feature!r} is not one of {', '.join(FEATURES)}")

    def fit(self, X: Sequence[CriticInput], y: Sequence[int] | np.ndarray) -> Self:
        self._check_feature()
        check_training_set(X, y)
        self.classes_ = np.array([0, 1], dtype=np.int64)
        return self

    def _score(self, item: CriticInput) -> float:
        features = item.proposal.features
        if self.feature == "probability":
            return features.probability
        if self.feature == "margin":
            return features.margin
        return math.exp(features.logprob)

    def predict_proba(self, X: Sequence[CriticInput]) -> np.ndarray:
        if not hasattr(self, "classes_"):
            raise NotFittedError("PolicyConfidenceCritic: call fit (or load) before predicting")
        try:
            p = np.fromiter((self._score(item) for item in X), dtype=np.float64, count=len(X))
        except AttributeError as exc:
            raise ValueError(f"X: an item is not a CriticInput with proposal features ({exc})") from None
        # The schema bounds probability and logprob; a margin is a difference of probabilities, clipped anyway.
        p = np.clip(p, 0.0, 1.0)
        return np.column_stack([1.0 - p, p])

    def save(self, path: str | Path) -> Path:
        if not hasattr(self, "classes_"):
            raise NotFittedError("PolicyConfidenceCritic: fit before saving")
        return write_critic_dir(path, {"kind": KIND, "params": {"feature": self.feature}})

    @classmethod
    def load(cls, path: str | Path) -> PolicyConfidenceCritic:
        meta = read_critic_meta(path, KIND)
        params = meta.get("params")
        if not isinstance(params, dict) or params.get("feature") not in FEATURES:
            raise ValueError(f"{path}: critic.json params.feature must be one of {', '.join(FEATURES)}")
        critic = cls(feature=params["feature"])
        critic.classes_ = np.array([0, 1], dtype=np.int64)
        return critic


def fit_on_steps(policy: ProposingPolicy, steps: Sequence[TraceStep]) -> PolicyConfidenceCritic:
    """The policy-confidence critic fitted on ``policy``'s proposals for ``steps`` (label: the proposal is the
    step's action). It learns nothing; fitting checks the inputs. For benches and tests that need a critic
    without copilot feedback."""
    proposals = policy.propose_batch([step.state for step in steps])
    rows = [
        (Candidate(step.state, proposal), int(action_key(proposal.action) == action_key(step.action)))
        for step, proposal in zip(steps, proposals, strict=True)
        if proposal is not None
    ]
    return PolicyConfidenceCritic().fit([c for c, _ in rows], [y for _, y in rows])
