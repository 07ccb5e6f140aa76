"""How good a critic is: operating points, risk-coverage curves and calibration errors (numpy only).

Conventions shared by every function here: ``y`` holds critic labels (1 = the proposal was acceptable, 0 = it was
not, an *error* if it had been executed); ``scores`` are any finite numbers where higher means "more likely
acceptable"; ``probs`` are probabilities of acceptance in [0, 1]. A row is *executed* (covered) at threshold ``t``
when its score is ``>= t``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Scores = np.ndarray | Sequence[float]
Labels = np.ndarray | Sequence[int]

# log(0) guard for log_loss; the same order of magnitude as sklearn's float64 clip.
_LOG_EPS = 1e-15


@dataclass(frozen=True, slots=True)
class OperatingPoint:
    """The accept decision ``score >= threshold`` scored as a classifier of the POSITIVE (accept) class.

    ``precision`` = share of executed rows that were acceptable (1 - the risk of auto-execution);
    ``recall`` = share of acceptable rows that were executed; ``f1`` their harmonic mean; ``coverage`` = share of
    all rows executed; ``positive_rate`` = share of all rows that were acceptable (the base rate)."""

    threshold: float
    precision: float
    recall: float
    f1: float
    coverage: float
    positive_rate: float


@dataclass(frozen=True, slots=True)
class ReliabilityTable:
    """Non-empty equal-width probability bins: their edges, mean prediction, observed acceptance rate and size."""

    lower: np.ndarray
    upper: np.ndarray
    mean_prediction: np.ndarray
    observed_rate: np.ndarray
    count: np.ndarray


# ---- validation ------------------------------------------------------------------------------------------------


def _labels(y: Labels, n: int | None = None) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"y must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("y is empty")
    if n is not None and arr.size != n:
        raise ValueError(f"y has {arr.size} rows but scores/probs have {n}")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError("y must hold only 0 and 1 labels")
    return arr.astype(np.int64)


def _scores(scores: Scores, name: str = "scores") -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return arr


def _probs(probs: Scores) -> np.ndarray:
    arr = _scores(probs, "probs")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise ValueError("probs must lie in [0, 1]")
    return arr


def _pair(scores: Scores, y: Labels) -> tuple[np.ndarray, np.ndarray]:
    s = _scores(scores)
    return s, _labels(y, s.size)


# ---- operating points ------------------------------------------------------------------------------------------


def operating_point(scores: Scores, y: Labels, threshold: float) -> OperatingPoint:
    """Positive-class (accept = 1) precision, recall and F1 of the decision ``score >= threshold``.

    These are the numbers the paper reports for the accept decision. With nothing executed, precision (and so
    F1) is 0, as in scikit-learn's ``zero_division=0``; with no acceptable row, recall is 0."""
    s, lab = _pair(scores, y)
    executed = s >= threshold
    tp = int(np.count_nonzero(executed & (lab == 1)))
    n_exec = int(np.count_nonzero(executed))
    n_pos = int(lab.sum())
    precision = tp / n_exec if n_exec else 0.0
    recall = tp / n_pos if n_pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return OperatingPoint(
        threshold=float(threshold),
        precision=precision,
        recall=recall,
        f1=f1,
        coverage=n_exec / s.size,
        positive_rate=n_pos / s.size,
    )


def threshold_at_recall(scores: Scores, y: Labels, recall: float) -> float:
    """The highest threshold (a score value) whose positive-class recall is at least ``recall``."""
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    s, lab = _pair(scores, y)
    n_pos = int(lab.sum())
    if n_pos == 0:
        raise ValueError("y has no acceptable row (label 1): recall is undefined")
    values, rows, errors = _group_counts(s, lab)
    recalled = np.cumsum(rows - errors)  # acceptable rows executed at each distinct threshold, highest first
    # A small tolerance so that e.g. recall=0.3 with 10 positives is met by exactly 3 of them.
    idx = int(np.argmax(recalled >= recall * n_pos - 1e-9 * n_pos))
    return float(values[idx])


def precision_at_recall(scores: Scores, y: Labels, recall: float) -> OperatingPoint:
    """The operating point at :func:`threshold_at_recall`: compares two critics at equal recall."""
    return operating_point(scores, y, threshold_at_recall(scores, y, recall))


# ---- risk and coverage -----------------------------------------------------------------------------------------


def _group_counts(s: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores (highest first), rows per score and errors (label 0) per score."""
    values, inverse = np.unique(-s, return_inverse=True)
    rows = np.bincount(inverse, minlength=values.size)
    errors = rows - np.bincount(inverse, weights=lab, minlength=values.size).astype(np.int64)
    return -values, rows, errors


def risk_coverage(scores: Scores, y: Labels) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve: for k = 1..n, coverage k/n and the error rate among the k highest-scored rows.

    Rows with equal scores cannot be told apart, so within a group of ties the group's errors are spread
    evenly over its rows (the expected risk if ties were broken at random). A constant score therefore gives
    the base error rate at every coverage, and ranking by the labels themselves gives the oracle curve."""
    s, lab = _pair(scores, y)
    _, rows, errors = _group_counts(s, lab)
    ends = np.cumsum(rows)
    starts = ends - rows
    errors_before = np.cumsum(errors) - errors
    group = np.repeat(np.arange(rows.size), rows)  # which tie group holds the k-th row
    k = np.arange(1, s.size + 1)
    expected_errors = errors_before[group] + errors[group] * (k - starts[group]) / rows[group]
    return k / s.size, expected_errors / k


def aurc(scores: Scores, y: Labels) -> float:
    """Area under the risk-coverage curve: the mean of the risk over k = 1..n (lower is better)."""
    return float(risk_coverage(scores, y)[1].mean())


def oracle_aurc(y: Labels) -> float:
    """The AURC of a perfect ranking (every acceptable row before every error): the best any critic can do."""
    lab = _labels(y)
    k = np.arange(1, lab.size + 1)
    return float((np.maximum(0, k - int(lab.sum())) / k).mean())


def excess_aurc(scores: Scores, y: Labels) -> float:
    """AURC above the oracle's: the part of the area that is the critic's fault, not the data's."""
    return aurc(scores, y) - oracle_aurc(y)


def coverage_at_risk(scores: Scores, y: Labels, alpha: float) -> float:
    """The largest coverage that a threshold reaches with empirical risk <= ``alpha`` (0.0 if none does).

    Only whole tie groups are considered, since a threshold cannot execute part of a group of equal scores.
    This is the in-sample coverage; a threshold with a guarantee on fresh rows is :mod:`critic.thresholds`."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    s, lab = _pair(scores, y)
    _, rows, errors = _group_counts(s, lab)
    executed = np.cumsum(rows)
    ok = np.cumsum(errors) <= alpha * executed + 1e-12 * executed
    return float(executed[ok].max() / s.size) if ok.any() else 0.0


def oracle_coverage(y: Labels, alpha: float = 0.0) -> float:
    """The coverage of a perfect ranking at risk ``alpha``: with the default 0, the share of acceptable rows.

    With ``alpha > 0`` a perfect ranking may also execute a few errors after all acceptable rows, up to
    ``floor(P / (1 - alpha))`` rows in all."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    lab = _labels(y)
    n_pos = int(lab.sum())
    most = int(np.floor(n_pos / (1.0 - alpha) + 1e-9)) if n_pos else 0
    return min(most, lab.size) / lab.size


# ---- calibration -----------------------------------------------------------------------------------------------


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    # Equal-width bins on [0, 1]; p = 1.0 belongs to the last bin.
    return np.minimum((p * bins).astype(np.int64), bins - 1)


def reliability_table(probs: Scores, y: Labels, bins: int = 10) -> ReliabilityTable:
    """Per non-empty equal-width bin: mean predicted P(accept), observed acceptance rate and row count."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p = _probs(probs)
    lab = _labels(y, p.size)
    idx = _bin_index(p, bins)
    count = np.bincount(idx, minlength=bins)
    pred_sum = np.bincount(idx, weights=p, minlength=bins)
    pos_sum = np.bincount(idx, weights=lab, minlength=bins)
    keep = count > 0
    edges = np.linspace(0.0, 1.0, bins + 1)
    return ReliabilityTable(
        lower=edges[:-1][keep],
        upper=edges[1:][keep],
        mean_prediction=pred_sum[keep] / count[keep],
        observed_rate=pos_sum[keep] / count[keep],
        count=count[keep],
    )


def expected_calibration_error(probs: Scores, y: Labels, bins: int = 15) -> float:
    """ECE: |mean prediction - observed rate| per equal-width bin, averaged with weights = bin row counts."""
    table = reliability_table(probs, y, bins)
    gaps = np.abs(table.mean_prediction - table.observed_rate)
    return float((gaps * table.count).sum() / table.count.sum())


def brier(probs: Scores, y: Labels) -> float:
    """Mean squared difference between P(accept) and the label."""
    p = _probs(probs)
    return float(np.mean((p - _labels(y, p.size)) ** 2))


def log_loss(probs: Scores, y: Labels) -> float:
    """Mean negative log-likelihood of the labels; probabilities are clipped so a confident miss is finite."""
    p = np.clip(_probs(probs), _LOG_EPS, 1.0 - _LOG_EPS)
    lab = _labels(y, p.size)
    return float(-np.mean(lab * np.log(p) + (1 - lab) * np.log1p(-p)))
