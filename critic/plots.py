"""Figures for critic reports: reliability diagrams, risk-coverage curves and time to autonomy (PNG files).

Figures are drawn on ``matplotlib.figure.Figure`` objects, which render with the Agg backend without pyplot: no
global backend switch, no window, and nothing kept alive between calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from critic.metrics import (
    Labels,
    Scores,
    aurc,
    expected_calibration_error,
    oracle_aurc,
    reliability_table,
    risk_coverage,
)

Curve = tuple[Scores, Labels]


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=120)
    return out


def plot_reliability(curves: Mapping[str, Curve], path: str | Path, title: str = "Reliability", bins: int = 10) -> Path:
    """One reliability line per critic (mean prediction vs observed rate per bin; ECE in the legend) over the
    diagonal of perfect calibration, and a histogram of each critic's predictions below."""
    fig = Figure(figsize=(6.0, 7.0), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    edges = np.linspace(0.0, 1.0, bins + 1)
    for name, (probs, y) in curves.items():
        table = reliability_table(probs, y, bins)
        ece = expected_calibration_error(probs, y, bins)
        top.plot(table.mean_prediction, table.observed_rate, marker="o", label=f"{name} (ECE {ece:.3f})")
        bottom.hist(np.asarray(probs, dtype=np.float64), bins=edges, histtype="step", label=name)
    top.set(ylabel="observed acceptance rate", xlim=(0, 1), ylim=(0, 1), title=title)
    top.legend(loc="upper left", fontsize="small")
    bottom.set(xlabel="predicted P(accept)", ylabel="rows")
    return _save(fig, path)


def plot_risk_coverage(
    curves: Mapping[str, Curve], path: str | Path, title: str = "Risk-coverage", alpha: float | None = None
) -> Path:
    """One risk-coverage line per critic (AURC in the legend), the oracle curve of the first critic's labels,
    and a horizontal line at the tolerated risk ``alpha`` when given."""
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    oracle_y: np.ndarray | None = None
    for name, (scores, y) in curves.items():
        coverage, risk = risk_coverage(scores, y)
        ax.plot(coverage, risk, label=f"{name} (AURC {aurc(scores, y):.4f})")
        if oracle_y is None:
            oracle_y = np.asarray(y)
    if oracle_y is not None:
        # Ranking by the labels themselves is the perfect ranking.
        coverage, risk = risk_coverage(oracle_y.astype(np.float64), oracle_y)
        ax.plot(coverage, risk, color="black", linestyle=":", label=f"oracle (AURC {oracle_aurc(oracle_y):.4f})")
    if alpha is not None:
        ax.axhline(alpha, color="red", linestyle="--", linewidth=1, label=f"alpha = {alpha:g}")
    ax.set(xlabel="coverage (share executed)", ylabel="risk (error rate among executed)", xlim=(0, 1), title=title)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    return _save(fig, path)


def plot_time_to_autonomy(
    sessions: Scores,
    covered_share: Scores,
    path: str | Path,
    title: str = "Time to autonomy",
) -> Path:
    """Share of steps that could run autonomously against the number of copilot sessions seen."""
    x = np.asarray(sessions, dtype=np.float64)
    y = np.asarray(covered_share, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"sessions {x.shape} and covered_share {y.shape} must be one-dimensional and equally long")
    fig = Figure(figsize=(6.5, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(x, y, marker="o")
    ax.set(xlabel="copilot sessions", ylabel="share of steps auto-executed", ylim=(0, 1), title=title)
    ax.grid(alpha=0.3)
    return _save(fig, path)
