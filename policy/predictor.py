"""The interface every next-action predictor shares: the LM policy, the floors and the baselines.

Offline evaluation only needs this much: fit on traces, then for each state the predicted action and a
confidence (higher = surer) for selective accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, Self

from schemas.actions import Action
from schemas.state import UIState
from schemas.trace import Trace


@dataclass(frozen=True, slots=True)
class Prediction:
    action: Action
    confidence: float


class NextActionPredictor(Protocol):
    name: str

    def fit(self, traces: Sequence[Trace]) -> Self: ...

    def predict(self, states: Sequence[UIState]) -> list[Prediction]: ...
