"""Calibration of critic scores: turning a raw P(accept) into one that matches observed acceptance rates.

:class:`ScoreCalibrator` maps raw scores in [0, 1] to calibrated probabilities with isotonic regression or Platt
scaling; :class:`CalibratedCritic` wraps an already fitted critic with one (like scikit-learn's
``CalibratedClassifierCV`` on a frozen estimator), fitted on a calibration split the critic never trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from critic.artifact import read_critic_meta, write_critic_dir
from critic.base import Critic, CriticInput, accept_scores
from critic.errors import NotFittedError

Method = Literal["auto", "isotonic", "sigmoid"]
METHODS: tuple[str, ...] = get_args(Method)

# Isotonic regression fits a free step function and overfits small samples; below these sizes "auto" takes the
# two-parameter Platt fit without trying (the usual advice: isotonic needs roughly a thousand rows to win).
MIN_ROWS_ISOTONIC = 200
MIN_CLASS_ISOTONIC = 20
# Scores of exactly 0 or 1 have an infinite logit; clip them to a finite but extreme one.
_LOGIT_EPS = 1e-6
BASE_DIR = "base"


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, _LOGIT_EPS, 1.0 - _LOGIT_EPS)
    return np.log(q) - np.log1p(-q)


def _check_scores(scores: np.ndarray | Sequence[float]) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError("scores must lie in [0, 1]")
    return s


def _fit_sigmoid(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    # A very weak penalty: two parameters need no shrinkage, and C=inf trips lbfgs on separable data.
    model = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(s)[:, None], y)
    return float(model.coef_[0, 0]), float(model.intercept_[0])


def _fit_isotonic(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(s, y)
    return np.asarray(model.X_thresholds_, dtype=np.float64), np.asarray(model.y_thresholds_, dtype=np.float64)


def _apply_sigmoid(s: np.ndarray, a: float, b: float) -> np.ndarray:
    z = a * _logit(s) + b
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))  # the logistic function, without overflow warnings


def _apply_isotonic(s: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # IsotonicRegression.predict is linear interpolation between its thresholds, clipped at both ends;
    # np.interp is exactly that, so a calibrator loaded from JSON needs no sklearn object.
    return np.interp(s, x, y)


class ScoreCalibrator:
    """Maps raw critic scores in [0, 1] to calibrated P(accept).

    ``method="auto"`` picks isotonic or sigmoid (Platt: logistic regression on the logit of the score) by
    out-of-fold Brier score over ``cv`` stratified folds, and takes sigmoid outright below
    ``MIN_ROWS_ISOTONIC`` rows or ``MIN_CLASS_ISOTONIC`` rows of either class. Learned: ``method_``,
    ``cv_brier_`` (the out-of-fold Brier score per method when "auto" compared them, else empty) and the
    parameters of the chosen map."""

    def __init__(self, method: Method = "auto", cv: int = 5, random_state: int = 0) -> None:
        self.method = method
        self.cv = cv
        self.random_state = random_state

    def fit(self, scores: np.ndarray | Sequence[float], y: np.ndarray | Sequence[int]) -> ScoreCalibrator:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.cv < 2:
            raise ValueError(f"cv must be >= 2, got {self.cv}")
        s = _check_scores(scores)
        lab = np.asarray(y)
        if lab.ndim != 1 or lab.size != s.size:
            raise ValueError(f"y must be one-dimensional with one label per score ({s.size}), got shape {lab.shape}")
        if not np.isin(lab, (0, 1)).all():
            raise ValueError("y must hold only 0 and 1 labels")
        lab = lab.astype(np.int64)
        counts = np.bincount(lab, minlength=2)
        if counts.min() == 0:
            raise ValueError("y holds a single class: calibration needs both accepted and rejected rows")

        self.cv_brier_: dict[str, float] = {}
        method = self.method
        if method == "auto":
            if s.size < MIN_ROWS_ISOTONIC or counts.min() < MIN_CLASS_ISOTONIC:
                method = "sigmoid"
            else:
                self.cv_brier_ = self._cross_validated_brier(s, lab, int(counts.min()))
                # A tie goes to the two-parameter map: fewer ways to be wrong on new data.
                method = "isotonic" if self.cv_brier_["isotonic"] < self.cv_brier_["sigmoid"] else "sigmoid"
        self.method_: str = method
        if method == "isotonic":
            self.x_, self.y_ = _fit_isotonic(s, lab)
        else:
            self.a_, self.b_ = _fit_sigmoid(s, lab)
        return self

    def _cross_validated_brier(self, s: np.ndarray, y: np.ndarray, smallest_class: int) -> dict[str, float]:
        folds = StratifiedKFold(n_splits=min(self.cv, smallest_class), shuffle=True, random_state=self.random_state)
        out = {"isotonic": np.empty(s.size), "sigmoid": np.empty(s.size)}
        for train, test in folds.split(s[:, None], y):
            x, fy = _fit_isotonic(s[train], y[train])
            out["isotonic"][test] = _apply_isotonic(s[test], x, fy)
            a, b = _fit_sigmoid(s[train], y[train])
            out["sigmoid"][test] = _apply_sigmoid(s[test], a, b)
        return {name: float(np.mean((p - y) ** 2)) for name, p in out.items()}

    def transform(self, scores: np.ndarray | Sequence[float]) -> np.ndarray:
        """Calibrated P(accept) in [0, 1] for each raw score."""
        if not hasattr(self, "method_"):
            raise NotFittedError("ScoreCalibrator is not fitted; call fit() or from_dict() first")
        s = _check_scores(scores)
        isotonic = self.method_ == "isotonic"
        p = _apply_isotonic(s, self.x_, self.y_) if isotonic else _apply_sigmoid(s, self.a_, self.b_)
        return np.clip(p, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        if not hasattr(self, "method_"):
            raise NotFittedError("ScoreCalibrator is not fitted; nothing to serialise")
        out: dict[str, Any] = {
            "method": self.method,
            "cv": self.cv,
            "random_state": self.random_state,
            "method_": self.method_,
            "cv_brier": self.cv_brier_,
        }
        if self.method_ == "isotonic":
            out["X_thresholds"] = self.x_.tolist()
            out["y_thresholds"] = self.y_.tolist()
        else:
            out["a"], out["b"] = self.a_, self.b_
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreCalibrator:
        method_ = data.get("method_")
        if method_ not in ("isotonic", "sigmoid"):
            raise ValueError(f"method_ must be 'isotonic' or 'sigmoid', got {method_!r}")
        out = cls(method=data.get("method", "auto"), cv=data.get("cv", 5), random_state=data.get("random_state", 0))
        out.method_ = method_
        out.cv_brier_ = dict(data.get("cv_brier", {}))
        if method_ == "isotonic":
            out.x_ = np.asarray(data["X_thresholds"], dtype=np.float64)
            out.y_ = np.asarray(data["y_thresholds"], dtype=np.float64)
            if out.x_.size == 0 or out.x_.size != out.y_.size:
                raise ValueError("X_thresholds and y_thresholds must be non-empty and of equal length")
        else:
            out.a_, out.b_ = float(data["a"]), float(data["b"])
        return out


class CalibratedCritic:
    """A fitted critic whose P(accept) goes through a :class:`ScoreCalibrator`.

    The wrapped critic is never refitted: ``fit(X, y)`` only fits the calibrator on its scores, so ``X, y`` must
    be a calibration split the critic did not train on (on training rows its scores are overconfident)."""

    def __init__(self, critic: Critic, method: Method = "auto", cv: int = 5, random_state: int = 0) -> None:
        self.critic = critic
        self.method = method
        self.cv = cv
        self.random_state = random_state
        self.name = f"{critic.name}+{method}"

    def fit(self, X: Sequence[CriticInput], y: Sequence[int] | np.ndarray) -> CalibratedCritic:
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        calibrator = ScoreCalibrator(self.method, self.cv, self.random_state)
        self.calibrator_ = calibrator.fit(accept_scores(self.critic, X), np.asarray(y))
        self.name = f"{self.critic.name}+{calibrator.method_}"
        return self

    @property
    def method_(self) -> str:
        return self._require().method_

    def _require(self) -> ScoreCalibrator:
        if not hasattr(self, "calibrator_"):
            raise NotFittedError(f"{self.name} is not fitted; call fit() on a calibration split or load()")
        return self.calibrator_

    def predict_proba(self, X: Sequence[CriticInput]) -> np.ndarray:
        calibrator = self._require()
        p = calibrator.transform(accept_scores(self.critic, X))
        return np.column_stack([1.0 - p, p])

    def save(self, path: str | Path) -> Path:
        """Write ``path/base`` (the wrapped critic, by its own ``save``) and ``path/critic.json`` atomically."""
        calibrator = self._require()
        meta = {
            "kind": "calibrated",
            "name": self.name,
            "params": {"method": self.method, "cv": self.cv, "random_state": self.random_state},
            "calibrator": calibrator.to_dict(),
        }
        return write_critic_dir(path, meta, lambda tmp: self._save_base(tmp / BASE_DIR))

    def _save_base(self, path: Path) -> None:
        self.critic.save(path)

    @classmethod
    def load(cls, path: str | Path, load_base: Callable[[Path], Critic]) -> CalibratedCritic:
        """Read a directory written by :meth:`save`; ``load_base`` loads the wrapped critic from ``path/base``
        (the registry passes its dispatcher, so this module need not know every critic kind)."""
        root = Path(path)
        meta = read_critic_meta(root, kind="calibrated")
        params = meta.get("params", {})
        out = cls(load_base(root / BASE_DIR), **params)
        out.calibrator_ = ScoreCalibrator.from_dict(meta["calibrator"])
        out.name = str(meta.get("name", out.name))
        return out
