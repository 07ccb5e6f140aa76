"""Train, calibrate, threshold and evaluate a critic on one window of feedback: the procedure shared by
``autopilot critic train``, the nightly retraining job, the demo and the benchmarks.

Rows are ordered by time and cut into four consecutive parts, each used for one thing only:

1. **fit** (oldest): the critic learns from these;
2. **calibrate**: the calibration map (isotonic or Platt, chosen here) is fitted on the critic's scores;
3. **threshold**: the thresholds are chosen on the calibrated scores (the Learn-then-Test guarantee needs rows
   the score function never saw), pooled over the hierarchy global -> action type -> slice and bounded by
   session (``critic/thresholds.py``); a slice joins a pooled cell only if its calibration rows show the critic
   does not underestimate its errors (the admission check);
4. **test** (newest, "fresh"): the figures reported, and the champion/challenger comparison.

The policy-confidence baseline is calibrated on the same calibration rows, so the comparison is like for like.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy.stats import beta

from critic.base import DEFAULT_LABEL, Critic, CriticInput, LabelRule, accept_scores, labelled, labels, slice_of
from critic.calibration import CalibratedCritic, Method
from critic.confidence import PolicyConfidenceCritic
from critic.evaluate import Comparison, CriticScores, compare_critics
from critic.feature_critic import FeatureCritic
from critic.feedback import time_split
from critic.thresholds import Admission, SliceThresholds, ThresholdConfig, fit_slice_thresholds
from schemas.feedback import FeedbackRecord
from schemas.risk import SliceKey

CriticKind = Literal["feature", "generative", "confidence"]
BASELINE_NAME = "policy confidence"
# Threshold candidates tested per group: a coarse grid steps over one unlucky error among the top scores that
# would otherwise end the fixed sequence early (see critic/thresholds.py).
MAX_CANDIDATES = 30


def default_thresholds() -> ThresholdConfig:
    """The pipeline's thresholds: the pooled hierarchy, a 30-candidate grid, session-level bounds."""
    return ThresholdConfig(max_candidates=MAX_CANDIDATES, granularity="pooled")


def admission_rows(critic: Critic, records: Sequence[FeedbackRecord], label: LabelRule) -> Admission:
    """The rows on which a slice must show the critic holds before it joins a pooled cell: the calibration split
    (apart from the threshold split, so the threshold test's guarantee is unchanged)."""
    return Admission(accept_scores(critic, records), labels(records, label), [slice_of(r) for r in records])


def sessions_of(records: Sequence[FeedbackRecord]) -> list[str]:
    """Each row's session: steps of one session are not independent, so thresholds are bounded by session."""
    return [r.state.session_id for r in records]


@dataclass
class PipelineConfig:
    kind: CriticKind = "feature"
    label: LabelRule = DEFAULT_LABEL  # which reviews count as acceptable (critic.base.LABEL_RULES)
    calibration: Method = "auto"
    fractions: tuple[float, float, float, float] = (0.5, 0.15, 0.2, 0.15)  # fit, calibrate, threshold, test
    thresholds: ThresholdConfig = field(default_factory=default_thresholds)
    policy_dir: str | None = None  # the generative critic's backbone (a saved LMPolicy)
    generative_epochs: int = 2
    time_budget_s: float | None = None
    seed: int = 0
    progress: bool = True
    min_rows: int = 200  # below this a window is not worth training on

    def __post_init__(self) -> None:
        if len(self.fractions) != 4 or any(f <= 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise ValueError(f"fractions: four positive shares summing to 1 expected, got {self.fractions}")
        if self.kind == "generative" and not self.policy_dir:
            raise ValueError("policy_dir: the generative critic needs the policy checkpoint it fine-tunes")


@dataclass
class Splits:
    fit: list[FeedbackRecord]
    calibrate: list[FeedbackRecord]
    threshold: list[FeedbackRecord]
    test: list[FeedbackRecord]

    def sizes(self) -> dict[str, int]:
        return {k: len(v) for k, v in vars(self).items()}


def split_by_time(records: Sequence[FeedbackRecord], fractions: Sequence[float]) -> Splits:
    fit, cal, thr, test = time_split(records, fractions)
    return Splits(fit, cal, thr, test)


def check_feedback(records: Sequence[FeedbackRecord], min_rows: int, label: LabelRule = DEFAULT_LABEL) -> None:
    """Refuse a window that cannot give a trustworthy critic, with the reason (nothing is written). Only rows
    that carry a label under ``label`` count."""
    records = labelled(records, label)
    if len(records) < min_rows:
        raise ValueError(f"feedback: {len(records)} rows in the window, at least {min_rows} needed")
    y = labels(records, label)
    if y.min() == y.max():
        only = "acceptable" if y[0] == 1 else "unacceptable"
        raise ValueError(f"feedback: every row in the window is {only}; a critic needs both labels")


def build_critic(config: PipelineConfig) -> Critic:
    if config.kind == "feature":
        return FeatureCritic(random_state=config.seed)
    if config.kind == "confidence":
        return PolicyConfidenceCritic()
    from critic.generative import GenerativeCritic

    return GenerativeCritic(
        policy_dir=config.policy_dir,
        epochs=config.generative_epochs,
        time_budget_s=config.time_budget_s,
        seed=config.seed,
        progress=config.progress,
    )


@dataclass(frozen=True)
class GroupHold:
    executed: int
    errors: int
    realised_error: float | None
    lower_bound: float | None  # one-sided (1 - delta) lower confidence bound on the error rate
    holds: bool


@dataclass
class HoldCheck:
    """Do the thresholds still hold on fresh rows? A group fails only when its fresh error is significantly
    above alpha (its (1 - delta) lower confidence bound exceeds alpha): a few unlucky rows do not fail it."""

    groups: dict[str, GroupHold]
    realised_error: float | None  # over every executed fresh row
    executed: int
    coverage: float

    @property
    def holds(self) -> bool:
        return all(g.holds for g in self.groups.values())


def clopper_pearson_lower(errors: int, n: int, delta: float) -> float:
    return 0.0 if errors == 0 else float(beta.ppf(delta, errors, n - errors + 1))


def check_thresholds(
    thresholds: SliceThresholds, scores: np.ndarray, y: np.ndarray, slices: Sequence[SliceKey]
) -> HoldCheck:
    config = thresholds.config
    executed = np.zeros(len(y), dtype=bool)
    keys = [thresholds.group_of(s) or "" for s in slices]
    for i, s in enumerate(slices):
        t = thresholds.threshold_for(s)
        executed[i] = t is not None and scores[i] >= t
    groups: dict[str, GroupHold] = {}
    for key in sorted(set(keys) - {""}):
        rows = np.array([k == key for k in keys]) & executed
        n = int(rows.sum())
        if n == 0:
            continue
        errors = int(np.sum(y[rows] == 0))
        lower = clopper_pearson_lower(errors, n, config.delta)
        groups[key] = GroupHold(n, errors, errors / n, lower, lower <= config.alpha)
    total = int(executed.sum())
    realised = float(np.sum(y[executed] == 0) / total) if total else None
    return HoldCheck(groups, realised, total, float(executed.mean()) if len(y) else 0.0)


@dataclass
class TrainedCritic:
    critic: CalibratedCritic
    baseline: CalibratedCritic
    thresholds: SliceThresholds
    comparison: Comparison
    hold: HoldCheck
    splits: Splits
    window: tuple[datetime, datetime]
    fit_seconds: float
    test_scores: np.ndarray
    test_labels: np.ndarray
    test_slices: list[SliceKey]
    label: LabelRule

    def metrics(self) -> dict[str, float]:
        mine = self.comparison.by_name(self.critic.name)
        out = {
            "aurc": mine.aurc,
            "oracle_aurc": mine.oracle_aurc,
            "ece": mine.ece,
            "brier": mine.brier,
            "macro_precision": mine.macro.precision,
            "macro_recall": mine.macro.recall,
            "macro_f1": mine.macro.f1,
            "accept_precision": mine.positive.precision,
            "accept_recall": mine.positive.recall,
            "fit_seconds": self.fit_seconds,
            "threshold_coverage": self.hold.coverage,
        }
        if mine.auc is not None:
            out["auc"] = mine.auc
        if self.hold.realised_error is not None:
            out["realised_error"] = self.hold.realised_error
        return out


def _xy(records: Sequence[FeedbackRecord], label: LabelRule) -> tuple[list[CriticInput], np.ndarray, list[SliceKey]]:
    return list(records), labels(records, label), [slice_of(r) for r in records]


def train_critic(
    records: Sequence[FeedbackRecord], config: PipelineConfig, plots_dir: Path | None = None
) -> TrainedCritic:
    """The whole procedure on one window of feedback (see the module docstring). Rows without a label under
    ``config.label`` (environment rejections under the default rule) are left out first."""
    records = labelled(records, config.label)
    check_feedback(records, config.min_rows, config.label)
    splits = split_by_time(records, config.fractions)
    for name, part in vars(splits).items():
        if len(part) == 0 or labels(part, config.label).min() == labels(part, config.label).max():
            raise ValueError(f"feedback: the {name} split needs both labels; more feedback is needed")
    x_fit, y_fit, _ = _xy(splits.fit, config.label)
    x_cal, y_cal, _ = _xy(splits.calibrate, config.label)
    x_thr, y_thr, s_thr = _xy(splits.threshold, config.label)
    x_test, y_test, s_test = _xy(splits.test, config.label)

    started = time.perf_counter()
    raw = build_critic(config).fit(x_fit, y_fit)
    critic = CalibratedCritic(raw, method=config.calibration, random_state=config.seed).fit(x_cal, y_cal)
    fit_seconds = time.perf_counter() - started
    baseline = CalibratedCritic(PolicyConfidenceCritic().fit(x_fit, y_fit), method=config.calibration)
    baseline.fit(x_cal, y_cal)

    thresholds = fit_slice_thresholds(
        accept_scores(critic, x_thr),
        y_thr,
        s_thr,
        config.thresholds,
        sessions=sessions_of(splits.threshold),
        admission=admission_rows(critic, splits.calibrate, config.label),
    )
    test_scores = accept_scores(critic, x_test)
    scored = [CriticScores(BASELINE_NAME, accept_scores(baseline, x_test))]
    if critic.name != BASELINE_NAME:
        scored.append(CriticScores(critic.name, test_scores))
    comparison = compare_critics(
        scored,
        y_test,
        s_test,
        baseline=BASELINE_NAME,
        alphas=(config.thresholds.alpha,),
        plots_dir=plots_dir,
        title=f"{critic.name} vs {BASELINE_NAME}",
    )
    return TrainedCritic(
        critic=critic,
        baseline=baseline,
        thresholds=thresholds,
        comparison=comparison,
        hold=check_thresholds(thresholds, test_scores, y_test, s_test),
        splits=splits,
        window=(splits.fit[0].created_at, splits.test[-1].created_at),
        fit_seconds=fit_seconds,
        test_scores=test_scores,
        test_labels=y_test,
        test_slices=s_test,
        label=config.label,
    )


def summary(trained: TrainedCritic) -> dict[str, Any]:
    return {
        "critic": trained.critic.name,
        "label": trained.label,
        "splits": trained.splits.sizes(),
        "window": [trained.window[0].isoformat(), trained.window[1].isoformat()],
        "metrics": trained.metrics(),
        "thresholds": trained.thresholds.to_dict(),
        "holds": trained.hold.holds,
    }
