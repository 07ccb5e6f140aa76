"""Offline evaluation of critics on labelled feedback, reported the way the paper reports it, and more.

The paper ("Learning Selective LLM Autonomy from Copilot Feedback", ACL 2026 Industry) reports precision, recall
and F1 of the accept/reject gate: 74.68 / 73.53 / 73.99 for the critic against 70.84 / 73.43 / 70.96 for the
policy's own confidence. Its F1 is not the harmonic mean of its precision and recall (that would be 74.10 and
72.11), so the figures are **macro averages over the two classes** (accept and reject). We print the macro
figures beside the positive-class (accept) ones, at the same operating point: the critic's calibrated P(accept)
>= 0.5 (the argmax of its two logits for the generative critic), and the baseline at the threshold that gives
it the critic's positive-class recall ("at equal recall").

Beyond the paper: risk-coverage curves with AURC against the oracle's, expected calibration error, coverage at
a target risk against the oracle coverage (the share of proposals that were in fact acceptable), per slice
(process x action type) and per action type, and PNG plots (reliability diagram, risk-coverage).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from critic.metrics import (
    OperatingPoint,
    aurc,
    brier,
    coverage_at_risk,
    expected_calibration_error,
    operating_point,
    oracle_aurc,
    oracle_coverage,
    threshold_at_recall,
)
from critic.plots import plot_reliability, plot_risk_coverage
from schemas.risk import SliceKey

OPERATING_THRESHOLD = 0.5  # the critic's argmax: accept when P(accept) >= P(reject)


@dataclass(frozen=True)
class MacroPoint:
    """Precision, recall and F1 averaged over the accept and the reject class (the paper's convention)."""

    precision: float
    recall: float
    f1: float


def macro_point(scores: np.ndarray, y: np.ndarray, threshold: float) -> MacroPoint:
    predicted = scores >= threshold
    precisions, recalls, f1s = [], [], []
    for cls in (1, 0):
        pred_c = predicted if cls == 1 else ~predicted
        true_c = y == cls
        tp = float(np.sum(pred_c & true_c))
        p = tp / float(pred_c.sum()) if pred_c.any() else 0.0
        r = tp / float(true_c.sum()) if true_c.any() else 0.0
        precisions.append(p)
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r > 0 else 0.0)
    return MacroPoint(float(np.mean(precisions)), float(np.mean(recalls)), float(np.mean(f1s)))


@dataclass(frozen=True)
class CriticScores:
    """One critic's scores on the test rows, and what to call it in tables."""

    name: str
    scores: np.ndarray  # calibrated P(accept), one per test row


@dataclass
class CriticEvaluation:
    name: str
    rows: int
    accept_rate: float
    threshold: float  # the operating threshold used for the paper-style figures
    positive: OperatingPoint
    macro: MacroPoint
    auc: float | None
    aurc: float
    oracle_aurc: float
    ece: float
    brier: float
    coverage_at_risk: dict[str, float]  # alpha -> coverage
    per_action_type: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    per_slice: dict[str, dict[str, float | int | None]] = field(default_factory=dict)

    def data(self) -> dict[str, Any]:
        return asdict(self)


def _auc(scores: np.ndarray, y: np.ndarray) -> float | None:
    return float(roc_auc_score(y, scores)) if 0 < int(y.sum()) < len(y) else None


def _group_metrics(scores: np.ndarray, y: np.ndarray, alpha: float) -> dict[str, float | int | None]:
    return {
        "rows": len(y),
        "accept_rate": float(y.mean()),
        "auc": _auc(scores, y),
        "aurc": aurc(scores, y),
        "oracle_aurc": oracle_aurc(y),
        "coverage_at_alpha": coverage_at_risk(scores, y, alpha),
        "oracle_coverage": oracle_coverage(y),
    }


def evaluate_scores(
    name: str,
    scores: np.ndarray,
    y: np.ndarray,
    slices: Sequence[SliceKey],
    *,
    threshold: float = OPERATING_THRESHOLD,
    alphas: Sequence[float] = (0.05, 0.02),
) -> CriticEvaluation:
    """Every figure for one critic's calibrated scores on labelled test rows."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(scores) != len(y) or len(y) != len(slices):
        raise ValueError(f"scores ({len(scores)}), y ({len(y)}) and slices ({len(slices)}) differ in length")
    if len(y) == 0:
        raise ValueError("y: no test rows to evaluate on")
    by_type: dict[str, list[int]] = defaultdict(list)
    by_slice: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(slices):
        by_type[key.action_type.value].append(i)
        by_slice[str(key)].append(i)
    primary_alpha = alphas[0] if alphas else 0.05
    return CriticEvaluation(
        name=name,
        rows=len(y),
        accept_rate=float(y.mean()),
        threshold=threshold,
        positive=operating_point(scores, y, threshold),
        macro=macro_point(scores, y, threshold),
        auc=_auc(scores, y),
        aurc=aurc(scores, y),
        oracle_aurc=oracle_aurc(y),
        ece=expected_calibration_error(scores, y),
        brier=brier(scores, y),
        coverage_at_risk={f"{a:g}": coverage_at_risk(scores, y, a) for a in alphas},
        per_action_type={k: _group_metrics(scores[v], y[v], primary_alpha) for k, v in sorted(by_type.items())},
        per_slice={k: _group_metrics(scores[v], y[v], primary_alpha) for k, v in sorted(by_slice.items())},
    )


@dataclass
class Comparison:
    """Critics evaluated on the same test rows; the first is the one the others are compared against."""

    evaluations: list[CriticEvaluation]
    baseline: str
    # the baseline re-read at each other critic's positive-class recall: critic name -> evaluation
    baseline_at_equal_recall: dict[str, CriticEvaluation] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)

    def by_name(self, name: str) -> CriticEvaluation:
        for e in self.evaluations:
            if e.name == name:
                return e
        raise KeyError(name)

    def data(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "evaluations": [e.data() for e in self.evaluations],
            "baseline_at_equal_recall": {k: v.data() for k, v in self.baseline_at_equal_recall.items()},
            "plots": self.plots,
        }

    def precision_gain(self, name: str) -> float:
        """Positive-class precision of ``name`` minus the baseline's at the same recall (in points of 1.0)."""
        return self.by_name(name).positive.precision - self.baseline_at_equal_recall[name].positive.precision

    def macro_precision_gain(self, name: str) -> float:
        return self.by_name(name).macro.precision - self.baseline_at_equal_recall[name].macro.precision

    def render_markdown(self) -> str:
        pct = 100.0
        lines = [
            "Paper-style table: macro precision / recall / F1 over accept and reject (the paper's convention), "
            "then the accept class alone, at P(accept) >= 0.5 for each critic and, for the baseline, at the "
            "threshold that gives it the same accept recall.",
            "",
            "| gate | threshold | macro P | macro R | macro F1 | accept P | accept R | accept F1 | coverage |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]

        def row(label: str, e: CriticEvaluation) -> str:
            return (
                f"| {label} | {e.threshold:.3f} | {pct * e.macro.precision:.2f} | {pct * e.macro.recall:.2f} | "
                f"{pct * e.macro.f1:.2f} | {pct * e.positive.precision:.2f} | {pct * e.positive.recall:.2f} | "
                f"{pct * e.positive.f1:.2f} | {pct * e.positive.coverage:.1f}% |"
            )

        for e in self.evaluations:
            if e.name == self.baseline:
                continue
            lines.append(row(e.name, e))
            matched = self.baseline_at_equal_recall.get(e.name)
            if matched is not None:
                lines.append(row(f"{self.baseline} (equal recall)", matched))
        lines.append(row(f"{self.baseline} (P >= 0.5)", self.by_name(self.baseline)))
        alphas = list(self.evaluations[0].coverage_at_risk)
        lines += [
            "",
            "| critic | AUC | AURC | oracle AURC | ECE | Brier | "
            + " | ".join(f"coverage @ risk {a}" for a in alphas)
            + " | oracle coverage |",
            "|---|---:|---:|---:|---:|---:|" + "---:|" * len(alphas) + "---:|",
        ]
        for e in self.evaluations:
            auc = f"{e.auc:.3f}" if e.auc is not None else "-"
            cov = " | ".join(f"{pct * e.coverage_at_risk[a]:.1f}%" for a in alphas)
            lines.append(
                f"| {e.name} | {auc} | {e.aurc:.4f} | {e.oracle_aurc:.4f} | {e.ece:.4f} | {e.brier:.4f} | {cov} | "
                f"{pct * e.accept_rate:.1f}% |"
            )
        return "\n".join(lines)

    def render_per_action_type(self) -> str:
        names = [e.name for e in self.evaluations]
        types = sorted({t for e in self.evaluations for t in e.per_action_type})
        lines = [
            "| action type | rows | accept rate | " + " | ".join(f"AUC {n}" for n in names) + " |",
            "|---|---:|---:|" + "---:|" * len(names),
        ]
        for t in types:
            first = self.evaluations[0].per_action_type[t]
            aucs = []
            for e in self.evaluations:
                value = e.per_action_type[t]["auc"]
                aucs.append(f"{value:.3f}" if isinstance(value, float) else "-")
            lines.append(
                f"| {t} | {first['rows']} | {100 * float(first['accept_rate'] or 0):.1f}% | {' | '.join(aucs)} |"
            )
        return "\n".join(lines)


def compare_critics(
    scored: Sequence[CriticScores],
    y: np.ndarray,
    slices: Sequence[SliceKey],
    *,
    baseline: str,
    alphas: Sequence[float] = (0.05, 0.02),
    plots_dir: Path | None = None,
    title: str = "critics",
) -> Comparison:
    """Evaluate every critic on the same rows; re-read the baseline at each critic's accept recall."""
    if not any(s.name == baseline for s in scored):
        raise ValueError(f"baseline: {baseline!r} is not among the scored critics")
    y = np.asarray(y, dtype=np.int64)
    evaluations = [evaluate_scores(s.name, s.scores, y, slices, alphas=alphas) for s in scored]
    base_scores = next(s.scores for s in scored if s.name == baseline)
    comparison = Comparison(evaluations=evaluations, baseline=baseline)
    for e in evaluations:
        if e.name == baseline or e.positive.recall <= 0.0:
            continue
        t = threshold_at_recall(base_scores, y, e.positive.recall)
        comparison.baseline_at_equal_recall[e.name] = evaluate_scores(
            baseline, base_scores, y, slices, threshold=t, alphas=alphas
        )
    if plots_dir is not None:
        curves = {s.name: (np.asarray(s.scores), y) for s in scored}
        comparison.plots["reliability"] = str(
            plot_reliability(curves, plots_dir / "reliability.png", f"Reliability: {title}")
        )
        comparison.plots["risk_coverage"] = str(
            plot_risk_coverage(
                curves, plots_dir / "risk_coverage.png", f"Risk-coverage: {title}", alpha=alphas[0] if alphas else None
            )
        )
    return comparison
