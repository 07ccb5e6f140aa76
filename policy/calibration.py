"""Confidence calibration of a predictor: a monotone map from its raw confidence to P(the prediction is right).

Fitted on held-out steps (raw confidence, was the prediction right) with isotonic regression, kept as the
breakpoints of a piecewise-linear function so it saves as plain JSON and applies with ``numpy.interp``. With
too few steps to learn a curve, the map is the constant accuracy of those steps (or the identity when there are
none), which is still a probability of being right, never a raw frequency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
from sklearn.isotonic import IsotonicRegression

MIN_STEPS = 30
"""Below this many held-out steps, no curve: the map is their accuracy, flat."""
TIE_BREAK = 1e-3


@dataclass
class IsotonicCalibrator:
    """``calibrate(raw)`` = interpolated P(right | raw confidence); increasing with the raw confidence (see
    ``TIE_BREAK``), within [0, 1].

    Learned: ``x_`` and ``y_`` (the breakpoints), ``steps_`` (how many held-out steps it was fitted on)."""

    min_steps: int = MIN_STEPS
    x_: list[float] = field(default_factory=list, init=False)
    y_: list[float] = field(default_factory=list, init=False)
    steps_: int = field(default=0, init=False)

    def fit(self, confidence: Sequence[float], correct: Sequence[bool]) -> Self:
        raw = np.asarray(confidence, dtype=float)
        right = np.asarray(correct, dtype=float)
        if raw.shape != right.shape:
            raise ValueError(f"{len(raw)} confidences for {len(right)} outcomes")
        self.steps_ = len(raw)
        if self.steps_ == 0:
            self.x_, self.y_ = [], []
        elif self.steps_ < self.min_steps:
            self.x_, self.y_ = [0.0], [float(right.mean())]
        else:
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, right)
            self.x_ = [float(v) for v in iso.X_thresholds_]
            self.y_ = [float(v) for v in iso.y_thresholds_]
        return self

    def __call__(self, confidence: float | Sequence[float] | np.ndarray) -> np.ndarray:
        raw = np.clip(np.asarray(confidence, dtype=float), 0.0, 1.0)
        if not self.x_:
            return raw
        mapped = np.full_like(raw, self.y_[0]) if len(self.x_) == 1 else np.interp(raw, self.x_, self.y_)
        # An isotonic fit is flat between its breakpoints: a sliver of the raw confidence keeps the order of
        # the steps it flattens (selective automation ranks by confidence), at most TIE_BREAK off calibration.
        return (1.0 - TIE_BREAK) * mapped + TIE_BREAK * raw

    def to_dict(self) -> dict[str, Any]:
        return {"min_steps": self.min_steps, "x": self.x_, "y": self.y_, "steps": self.steps_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IsotonicCalibrator:
        calibrator = cls(min_steps=int(data.get("min_steps", MIN_STEPS)))
        calibrator.x_ = [float(v) for v in data["x"]]
        calibrator.y_ = [float(v) for v in data["y"]]
        calibrator.steps_ = int(data.get("steps", 0))
        return calibrator


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the bins' sizes."""
    conf = np.asarray(confidence, dtype=float)
    right = np.asarray(correct, dtype=float)
    if not len(conf):
        return 0.0
    index = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += mask.sum() * abs(right[mask].mean() - conf[mask].mean())
    return float(total / len(conf))
