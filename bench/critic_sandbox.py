"""The critic on sandbox copilot feedback (default scenario): the paper-style comparison with the policy's own
confidence, coverage at a target risk against the oracle, and whether the threshold guarantee holds in practice.

Protocol: the default policy (``out/bench/policy_default``, trained by ``bench.policy_sandbox`` on sandbox cases
0..1999 of seed 7) proposes every step of ``--sessions`` later cases (indices from 2500 on) in copilot mode; the
simulated operators accept or correct each proposal with a graded reason. The rows are split by time into fit /
calibrate / threshold / test (50 / 15 / 20 / 15 %, see ``critic/pipeline.py``); every critic is calibrated on
the same calibration rows and judged on the same test rows.

Targets:
- precision at least 5 points above the policy-confidence baseline at equal recall (paper: +3.84);
- over 100 random redraws of calibration vs fresh rows (the threshold and test parts pooled and re-split), the
  realised error among auto-executed rows exceeds alpha in at most a delta share of draws (alpha 0.05 and 0.02,
  delta 0.1);
- coverage at alpha = 0.05 of at least 90% of the oracle coverage (the share of acceptable proposals).

    .venv/bin/python -m bench.critic_sandbox [--sessions 3000] [--generative-budget 600] [--draws 100]

Writes ``bench/results/critic_sandbox.{json,md}`` and its plots beside them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.common import RESULTS_DIR, ROOT, environment, peak_rss_kib, write_results
from critic.base import accept_scores, labels, slice_of
from critic.evaluate import Comparison, CriticScores, compare_critics
from critic.feedback import read_feedback, write_feedback
from critic.pipeline import (
    BASELINE_NAME,
    MAX_CANDIDATES,
    PipelineConfig,
    TrainedCritic,
    check_thresholds,
    clopper_pearson_lower,
    train_critic,
)
from critic.thresholds import ThresholdConfig, fit_slice_thresholds, group_key
from sandbox.feedback_collection import collect_copilot_feedback
from schemas.feedback import FeedbackRecord
from schemas.risk import SliceKey

NAME = "critic_sandbox"
POLICY_DIR = ROOT / "out" / "bench" / "policy_default"
WORK = ROOT / "out" / "bench"
PRECISION_GAIN = 0.05
COVERAGE_SHARE = 0.90


def copilot_feedback(policy_dir: Path, sessions: int, seed: int, start: int, scenario: str) -> list[FeedbackRecord]:
    """Collected once and cached: the LM proposing every step is the slow part (minutes)."""
    path = WORK / f"critic_feedback_{scenario}_{seed}_{start}_{sessions}.jsonl"
    if not path.exists():
        import torch

        from policy.policy import LMPolicy
        from sandbox.scenario import scenario_by_name

        torch.set_num_threads(1)
        policy = LMPolicy.load(policy_dir)
        feedback = collect_copilot_feedback(policy, sessions, seed, scenario_by_name(scenario), start_index=start)
        write_feedback(feedback.records, path, truth=feedback.truth)
    return read_feedback(path)


def guarantee_draws(
    trained: TrainedCritic, alpha: float, delta: float, draws: int, seed: int, min_rows: int
) -> dict[str, Any]:
    """Pool the threshold and test rows, re-split them at random ``draws`` times into calibration and fresh
    halves, choose thresholds on one half and measure the realised error on the other.

    Two readings per draw: the realised error among executed fresh rows above alpha (the target's wording; with
    few executed rows this is mostly sampling noise, since even a threshold whose true error is just under alpha
    shows a fresh error above alpha about half the time), and a significant violation: the fresh error's
    one-sided 95% lower confidence bound above alpha."""
    pool = trained.splits.threshold + trained.splits.test
    scores = accept_scores(trained.critic, pool)
    y = labels(pool, trained.label)
    slices = [slice_of(r) for r in pool]
    config = ThresholdConfig(alpha=alpha, delta=delta, min_rows=min_rows, max_candidates=MAX_CANDIDATES)
    rng = np.random.default_rng(seed)
    violations = significant = 0
    group_trials = group_violations = 0
    coverages, errors, executed = [], [], []
    population = population_check(scores, y, slices, config, draws, seed)
    for _ in tqdm(range(draws), desc=f"draws {trained.label} alpha={alpha}", leave=False):
        order = rng.permutation(len(pool))
        cal, fresh = order[: len(pool) // 2], order[len(pool) // 2 :]
        thresholds = fit_slice_thresholds(scores[cal], y[cal], [slices[i] for i in cal], config)
        hold = check_thresholds(thresholds, scores[fresh], y[fresh], [slices[i] for i in fresh])
        coverages.append(hold.coverage)
        executed.append(hold.executed)
        if hold.realised_error is not None:
            errors.append(hold.realised_error)
            violations += hold.realised_error > alpha
            k = round(hold.realised_error * hold.executed)
            significant += clopper_pearson_lower(k, hold.executed, 0.05) > alpha
        for group in hold.groups.values():
            group_trials += 1
            group_violations += (group.realised_error or 0.0) > alpha
    return {
        "label": trained.label,
        "alpha": alpha,
        "delta": delta,
        "draws": draws,
        "pool_rows": len(pool),
        "draws_with_executions": len(errors),
        "mean_fresh_executed": float(np.mean(executed)),
        "pooled_violation_share": violations / draws,
        "significant_violation_share": significant / draws,
        "mean_realised_error": float(np.mean(errors)) if errors else None,
        "max_realised_error": float(np.max(errors)) if errors else None,
        "mean_coverage": float(np.mean(coverages)),
        "group_trials": group_trials,
        "group_violation_share": group_violations / group_trials if group_trials else None,
        "population": population,
        "met": population["violation_share"] <= delta,
    }


def population_check(
    scores: np.ndarray, y: np.ndarray, slices: list[SliceKey], config: ThresholdConfig, draws: int, seed: int
) -> dict[str, Any]:
    """The guarantee checked exactly: treat the pool as the population, draw calibration sets from it with
    replacement (exchangeable draws), and compute each chosen threshold's TRUE error rate on the whole
    population. A draw violates the guarantee when the error among executed population rows exceeds alpha;
    per slice likewise. No second sample is involved, so no sampling noise and no complementary-half bias."""
    rng = np.random.default_rng(seed + 1)
    keys = np.array([group_key(s, config.granularity) for s in slices])
    violations = group_trials = group_violations = 0
    risks, coverages = [], []
    for _ in range(draws):
        sample = rng.integers(0, len(y), size=len(y) // 2)
        thresholds = fit_slice_thresholds(scores[sample], y[sample], [slices[i] for i in sample], config)
        executed = np.zeros(len(y), dtype=bool)
        for key, result in thresholds.items():
            if result.threshold is None:
                continue
            rows = (keys == key) & (scores >= result.threshold)
            executed |= rows
            if rows.any():
                group_trials += 1
                group_violations += float(np.mean(y[rows] == 0)) > config.alpha
        coverages.append(float(executed.mean()))
        if executed.any():
            risk = float(np.mean(y[executed] == 0))
            risks.append(risk)
            violations += risk > config.alpha
    return {
        "draws": draws,
        "draws_executing": len(risks),
        "violation_share": violations / draws,
        "mean_true_error": float(np.mean(risks)) if risks else None,
        "max_true_error": float(np.max(risks)) if risks else None,
        "mean_coverage": float(np.mean(coverages)),
        "group_violation_share": group_violations / group_trials if group_trials else None,
    }


def sensitivity_table(records: list[FeedbackRecord], min_rows: int) -> list[dict[str, Any]]:
    """Risk-controlled coverage of the feature critic under each label rule, threshold granularity and alpha."""
    out = []
    for label in ("accepted", "acceptable"):
        trained = train_critic(records, PipelineConfig(kind="feature", label=label, progress=False))
        thr = trained.splits.threshold
        scores, y, slices = accept_scores(trained.critic, thr), labels(thr, label), [slice_of(r) for r in thr]
        for granularity in ("slice", "action_type", "global"):
            for alpha in (0.02, 0.05, 0.10):
                config = ThresholdConfig(
                    alpha=alpha, delta=0.1, min_rows=min_rows, granularity=granularity, max_candidates=MAX_CANDIDATES
                )
                thresholds = fit_slice_thresholds(scores, y, slices, config)
                hold = check_thresholds(thresholds, trained.test_scores, trained.test_labels, trained.test_slices)
                oracle = float(trained.test_labels.mean())
                out.append(
                    {
                        "label": label,
                        "granularity": granularity,
                        "alpha": alpha,
                        "positive_share": oracle,
                        "auc": trained.comparison.by_name(trained.critic.name).auc,
                        "coverage": hold.coverage,
                        "share_of_oracle": hold.coverage / oracle,
                        "realised_error": hold.realised_error,
                        "holds": hold.holds,
                        "groups_with_threshold": sum(r.threshold is not None for r in thresholds.values()),
                        "groups": len(thresholds),
                    }
                )
    return out


def comparison_rows(comparison: Comparison, name: str) -> dict[str, Any]:
    mine = comparison.by_name(name)
    base = comparison.baseline_at_equal_recall[name]
    return {
        "critic": name,
        "accept_precision": mine.positive.precision,
        "accept_recall": mine.positive.recall,
        "baseline_accept_precision": base.positive.precision,
        "baseline_accept_recall": base.positive.recall,
        "accept_precision_gain": comparison.precision_gain(name),
        "macro": [mine.macro.precision, mine.macro.recall, mine.macro.f1],
        "baseline_macro": [base.macro.precision, base.macro.recall, base.macro.f1],
        "macro_precision_gain": comparison.macro_precision_gain(name),
        "auc": mine.auc,
        "baseline_auc": comparison.by_name(BASELINE_NAME).auc,
        "aurc": mine.aurc,
        "oracle_aurc": mine.oracle_aurc,
        "ece": mine.ece,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=POLICY_DIR)
    parser.add_argument("--sessions", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--start", type=int, default=2500, help="first copilot case index (after the policy's)")
    parser.add_argument("--generative-budget", type=float, default=600.0, help="seconds; 0 skips it")
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--min-rows", type=int, default=100)
    args = parser.parse_args()

    records = copilot_feedback(args.policy, args.sessions, args.seed, args.start, "default")
    y = labels(records)
    print(f"{len(records)} feedback rows, acceptable share {y.mean():.3f}")
    thresholds = ThresholdConfig(alpha=0.05, delta=0.1, min_rows=args.min_rows, max_candidates=MAX_CANDIDATES)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    feature = train_critic(records, PipelineConfig(kind="feature", thresholds=thresholds, progress=True))
    feature_seconds = time.perf_counter() - started
    trained = {"feature": feature}
    generative_seconds = None
    if args.generative_budget > 0:
        started = time.perf_counter()
        config = PipelineConfig(
            kind="generative",
            thresholds=thresholds,
            policy_dir=str(args.policy),
            time_budget_s=args.generative_budget,
            progress=True,
        )
        trained["generative"] = train_critic(records, config)
        generative_seconds = time.perf_counter() - started

    # All critics side by side on the same test rows (baseline calibrated on the same calibration rows).
    test = feature.splits.test
    y_test, s_test = labels(test), [slice_of(r) for r in test]
    scored = [CriticScores(BASELINE_NAME, accept_scores(feature.baseline, test))]
    scored += [CriticScores(t.critic.name, accept_scores(t.critic, test)) for t in trained.values()]
    comparison = compare_critics(
        scored, y_test, s_test, baseline=BASELINE_NAME, alphas=(0.05, 0.02), plots_dir=RESULTS_DIR / NAME,
        title="sandbox copilot feedback (test split)",
    )  # fmt: skip

    rows = {kind: comparison_rows(comparison, t.critic.name) for kind, t in trained.items()}
    coverage = {}
    for kind, t in trained.items():
        oracle = float(t.test_labels.mean())
        coverage[kind] = {
            "risk_controlled_coverage": t.hold.coverage,
            "realised_error": t.hold.realised_error,
            "oracle_coverage": oracle,
            "share_of_oracle": t.hold.coverage / oracle,
            "empirical_coverage_at_alpha": comparison.by_name(t.critic.name).coverage_at_risk["0.05"],
            "met": t.hold.coverage / oracle >= COVERAGE_SHARE,
            "thresholds": t.thresholds.to_dict(),
        }
    sensitivity = sensitivity_table(records, args.min_rows)
    best = max(trained, key=lambda k: rows[k]["accept_precision_gain"])
    acceptable = train_critic(records, PipelineConfig(kind="feature", label="acceptable", thresholds=thresholds))
    guarantee = [
        guarantee_draws(t, alpha, 0.1, args.draws, args.seed, args.min_rows)
        for t in (trained[best], acceptable)
        for alpha in (0.02, 0.05, 0.10)
    ]

    result = {
        "environment": environment(),
        "rows": len(records),
        "acceptable_share": float(y.mean()),
        "splits": feature.splits.sizes(),
        "comparison": rows,
        "coverage": coverage,
        "guarantee": guarantee,
        "guarantee_critic": best,
        "sensitivity": sensitivity,
        "seconds": {"feature_pipeline": feature_seconds, "generative_pipeline": generative_seconds},
        "fit_seconds": {k: t.fit_seconds for k, t in trained.items()},
        "peak_rss_mib": peak_rss_kib() / 1024,
        "plots": comparison.plots,
    }
    write_results(NAME, result, render(result, comparison, trained))
    print(render(result, comparison, trained))


def render(result: dict[str, Any], comparison: Comparison, trained: dict[str, TrainedCritic]) -> str:
    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [
        "# Critic on sandbox copilot feedback (default scenario)",
        "",
        f"{result['rows']} feedback rows ({result['acceptable_share']:.1%} acceptable), splits {result['splits']}. "
        f"Load average at the end: {result['environment']['load_average']}.",
        "",
        comparison.render_markdown(),
        "",
        "## Precision at equal recall (target: +5 points over the policy's confidence)",
        "",
        "| critic | accept P | baseline accept P (same recall) | gain | macro P gain | AUC | baseline AUC | |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["comparison"].values():
        lines.append(
            f"| {row['critic']} | {row['accept_precision']:.4f} | {row['baseline_accept_precision']:.4f} | "
            f"{100 * row['accept_precision_gain']:+.2f} | {100 * row['macro_precision_gain']:+.2f} | "
            f"{row['auc']:.3f} | {row['baseline_auc']:.3f} | {verdict(row['accept_precision_gain'] >= PRECISION_GAIN)} |"
        )
    lines += [
        "",
        "## Coverage at alpha = 0.05 (risk-controlled per-slice thresholds, test split)",
        "",
        "| critic | coverage | realised error | oracle coverage | share of oracle | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for kind, c in result["coverage"].items():
        err = "-" if c["realised_error"] is None else f"{c['realised_error']:.4f}"
        lines.append(
            f"| {trained[kind].critic.name} | {c['risk_controlled_coverage']:.1%} | {err} | {c['oracle_coverage']:.1%} | "
            f"{c['share_of_oracle']:.1%} | {verdict(c['met'])} |"
        )
    lines += [
        "",
        f"## The guarantee over repeated draws ({result['guarantee_critic']} critic)",
        "",
        "Target: the error among auto-executed steps exceeds alpha in at most delta = 0.1 of the draws (judged at "
        "alpha 0.05 and 0.02). Exact check (judged): the pool of threshold + test rows is the population; "
        "calibration sets are drawn from it with replacement and each chosen threshold's true error is computed on "
        "the whole population. Half-split check (the literal wording): the pool is split at random into "
        "calibration and fresh halves and the fresh error is read; with few executed rows this is mostly sampling "
        "noise, and complementary halves are negatively correlated (errors the calibration half did not get, the "
        "fresh half has), so it overstates violations; significant = the fresh error's 95% lower bound exceeds alpha.",
        "",
        "| label | alpha | exact: draws executing | true error > alpha | mean / max true error | coverage | "
        "per-slice > alpha | half-split: fresh error > alpha | significant | mean executed fresh rows | |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for g in result["guarantee"]:
        p = g["population"]
        true = "-" if p["mean_true_error"] is None else f"{p['mean_true_error']:.4f} / {p['max_true_error']:.4f}"
        per = "-" if p["group_violation_share"] is None else f"{p['group_violation_share']:.3f}"
        judged = g["alpha"] in (0.05, 0.02)
        lines.append(
            f"| {g['label']} | {g['alpha']} | {p['draws_executing']}/{p['draws']} | {p['violation_share']:.2f} | "
            f"{true} | {p['mean_coverage']:.1%} | {per} | {g['pooled_violation_share']:.2f} | "
            f"{g['significant_violation_share']:.2f} | {g['mean_fresh_executed']:.0f} | "
            f"{verdict(g['met']) if judged else '(not a target)'} |"
        )
    lines += [
        "",
        "Half-split details:",
        "",
        "| label | alpha | draws | draws executing anything | mean executed fresh rows | mean coverage | "
        "realised error > alpha | significant | mean / max realised error | per-slice > alpha | |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for g in result["guarantee"]:
        mean = (
            "-"
            if g["mean_realised_error"] is None
            else f"{g['mean_realised_error']:.4f} / {g['max_realised_error']:.4f}"
        )
        per_slice = "-" if g["group_violation_share"] is None else f"{g['group_violation_share']:.3f}"
        judged = g["alpha"] in (0.05, 0.02)
        lines.append(
            f"| {g['label']} | {g['alpha']} | {g['draws']} | {g['draws_with_executions']} | "
            f"{g['mean_fresh_executed']:.0f} | {g['mean_coverage']:.1%} | {g['pooled_violation_share']:.2f} | "
            f"{g['significant_violation_share']:.2f} | {mean} | {per_slice} | "
            f"{verdict(g['met']) if judged else '(not a target)'} |"
        )
    lines += [
        "",
        "## Sensitivity: label rule, threshold granularity and alpha (feature critic, test split)",
        "",
        "| label | positives | AUC | granularity | alpha | groups with a threshold | coverage | share of oracle | "
        "realised error | holds |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for x in result["sensitivity"]:
        err = "-" if x["realised_error"] is None else f"{x['realised_error']:.4f}"
        lines.append(
            f"| {x['label']} | {x['positive_share']:.1%} | {x['auc']:.3f} | {x['granularity']} | {x['alpha']} | "
            f"{x['groups_with_threshold']}/{x['groups']} | {x['coverage']:.1%} | {x['share_of_oracle']:.1%} | {err} | "
            f"{x['holds']} |"
        )
    lines += [
        "",
        "## Per action type (AUC on the test split)",
        "",
        comparison.render_per_action_type(),
        "",
        f"Timing: feature pipeline {result['seconds']['feature_pipeline']:.0f} s, generative pipeline "
        + (
            f"{result['seconds']['generative_pipeline']:.0f} s"
            if result["seconds"]["generative_pipeline"]
            else "not run"
        )
        + f"; peak RSS {result['peak_rss_mib']:.0f} MiB.",
        "",
        f"![reliability]({NAME}/reliability.png) ![risk-coverage]({NAME}/risk_coverage.png)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
