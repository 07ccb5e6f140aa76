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
import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, ROOT, environment, peak_rss_kib, write_results
from critic.base import BASELINE_LABEL, DEFAULT_LABEL, LabelRule, accept_scores, labelled, labels, slice_of
from critic.evaluate import Comparison, CriticScores, compare_critics
from critic.feedback import read_feedback, write_feedback
from critic.pipeline import (
    BASELINE_NAME,
    PipelineConfig,
    TrainedCritic,
    admission_rows,
    check_thresholds,
    clopper_pearson_lower,
    default_thresholds,
    sessions_of,
    train_critic,
)
from critic.thresholds import SliceThresholds, ThresholdConfig, fit_slice_thresholds
from policy.policy import RANKING_VERSION
from policy.replies import RULES_VERSION
from policy.saved import POLICY_FILE
from sandbox.feedback_collection import collect_copilot_feedback
from schemas.feedback import FeedbackRecord
from schemas.progress import progress_bar

NAME = "critic_sandbox"
POLICY_DIR = ROOT / "out" / "bench" / "policy_default"
WORK = ROOT / "out" / "bench"
COPILOT_SESSIONS = 3000  # new cases reviewed in copilot mode (about 31,000 proposals), shared by the critic and
# runtime benches (one cached collection)
PRECISION_GAIN = 0.05
COVERAGE_SHARE = 0.90


def policy_version(policy_dir: Path) -> str:
    """The saved policy's version (a digest of its weights), which keys the caches of its proposals: a policy
    trained again gets feedback of its own, never the previous policy's."""
    path = policy_dir / POLICY_FILE
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `python -m bench.policy_sandbox` first")
    return str(json.loads(path.read_text())["version"])


def trained_policy_feedback() -> Path | None:
    """Where this bench caches the copilot feedback of the trained default policy (``POLICY_DIR``), as the other
    benches read it; None without that policy."""
    if not (POLICY_DIR / POLICY_FILE).exists():
        return None
    return copilot_feedback_path(POLICY_DIR, COPILOT_SESSIONS, 7, 2500, "default")


def copilot_feedback_path(
    policy_dir: Path, sessions: int, seed: int, start: int, scenario: str, *, reply_guard: bool = True
) -> Path:
    """Where ``copilot_feedback`` caches its collection of ``policy_dir``'s proposals (and the sandbox's truth
    beside it)."""
    guarded = f"_guarded{RULES_VERSION}" if reply_guard else ""
    version = policy_version(policy_dir)
    ranking = f"_ranked{RANKING_VERSION}"
    return WORK / f"critic_feedback_{scenario}_{seed}_{start}_{sessions}{guarded}{ranking}_{version}.jsonl"


def copilot_feedback(
    policy_dir: Path, sessions: int, seed: int, start: int, scenario: str, *, reply_guard: bool = True
) -> list[FeedbackRecord]:
    """Collected once and cached: the LM proposing every step is the slow part (minutes). ``reply_guard``: the
    policy as the service and the runtime benches run it (behind the reply guard, the default), so the critic is
    calibrated on the proposals it will gate; without it, the bare policy (the sandbox's calibration against the
    paper, whose policy had no such guard). The policy runs in two processes of its own (``policy.process``)."""
    path = copilot_feedback_path(policy_dir, sessions, seed, start, scenario, reply_guard=reply_guard)
    if not path.exists():
        from policy.process import PolicyProcesses
        from sandbox.scenario import scenario_by_name

        with PolicyProcesses(policy_dir, processes=2, reply_guard=reply_guard) as policy:
            feedback = collect_copilot_feedback(policy, sessions, seed, scenario_by_name(scenario), start_index=start)
        write_feedback(feedback.records, path, truth=feedback.truth)
    return read_feedback(path)


def _by_session(records: list[FeedbackRecord]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Each row's session index, and the rows of each session."""
    ids = sessions_of(records)
    index: dict[str, int] = {}
    codes = np.fromiter((index.setdefault(s, len(index)) for s in ids), np.int64, len(ids))
    order = np.argsort(codes, kind="stable")
    return codes, np.split(order, np.cumsum(np.bincount(codes, minlength=len(index)))[:-1])


def guarantee_draws(trained: TrainedCritic, config: ThresholdConfig, draws: int, seed: int) -> dict[str, Any]:
    """Whether the guarantee holds, checked by drawing SESSIONS (steps of one session are not independent).

    The threshold and test rows of ``trained`` are pooled and taken as the population. Exact check (judged): a
    calibration set is drawn from the population's sessions with replacement (half as many sessions as it has;
    a session drawn twice counts as two sessions), thresholds are fitted on it with the session-level bound, and
    their TRUE error is the error among the population's rows they execute; a draw violates the guarantee when
    that exceeds alpha. Half-split check (the literal reading): the population's sessions are split at random into
    calibration and fresh halves and the fresh error is read (mostly sampling noise with few executed rows);
    significant = its 95% lower bound above alpha."""
    pool = trained.splits.threshold + trained.splits.test
    scores = accept_scores(trained.critic, pool)
    y = labels(pool, trained.label)
    slices = [slice_of(r) for r in pool]
    codes, rows_of = _by_session(pool)
    admission = admission_rows(trained.critic, trained.splits.calibrate, trained.label)  # fixed over the draws
    names = [str(k) for k in slices]
    distinct = {name: k for name, k in zip(names, slices, strict=True)}
    keys = list(distinct.values())
    slice_code = np.array([list(distinct).index(n) for n in names]) if names else np.zeros(0, dtype=np.int64)

    def executed_by(thresholds: SliceThresholds, at: np.ndarray) -> np.ndarray:
        """Rows (of ``at``) that ``thresholds`` execute: score at or above their slice's threshold."""
        per_slice = np.array([np.inf if (v := thresholds.threshold_for(k)) is None else v for k in keys])
        return scores[at] >= per_slice[slice_code[at]]

    everything = np.arange(len(pool))
    rng = np.random.default_rng(seed)
    violations = executing = 0
    risks, coverages, executed_rows = [], [], []
    group_trials = group_violations = 0
    for _ in progress_bar(range(draws), desc=f"draws {trained.label} alpha={config.alpha}", leave=False):
        picked = rng.integers(0, len(rows_of), size=len(rows_of) // 2)
        rows = np.concatenate([rows_of[i] for i in picked])
        copies = np.repeat(np.arange(picked.size), [rows_of[i].size for i in picked])
        thresholds = fit_slice_thresholds(
            scores[rows], y[rows], [slices[i] for i in rows], config, sessions=copies, admission=admission
        )
        executed = executed_by(thresholds, everything)
        coverages.append(float(executed.mean()))
        if executed.any():
            executing += 1
            risk = float(np.mean(y[executed] == 0))
            risks.append(risk)
            violations += risk > config.alpha
            executed_rows.append(int(executed.sum()))
        cell_of = np.array([thresholds.group_of(k) or "" for k in keys])[slice_code]
        for cell in {c for c in cell_of[executed]}:
            in_cell = executed & (cell_of == cell)
            group_trials += 1
            group_violations += float(np.mean(y[in_cell] == 0)) > config.alpha
    half_violations = half_significant = 0
    half_executed: list[int] = []
    for _ in range(draws):
        order = rng.permutation(len(rows_of))
        cal = np.concatenate([rows_of[i] for i in order[: len(order) // 2]])
        fresh = np.concatenate([rows_of[i] for i in order[len(order) // 2 :]])
        thresholds = fit_slice_thresholds(scores[cal], y[cal], [slices[i] for i in cal], config, sessions=codes[cal])
        hold = check_thresholds(thresholds, scores[fresh], y[fresh], [slices[i] for i in fresh])
        half_executed.append(hold.executed)
        if hold.realised_error is not None:
            half_violations += hold.realised_error > config.alpha
            k = round(hold.realised_error * hold.executed)
            half_significant += clopper_pearson_lower(k, hold.executed, 0.05) > config.alpha
    return {
        "label": trained.label,
        "alpha": config.alpha,
        "delta": config.delta,
        "granularity": config.granularity,
        "draws": draws,
        "pool_rows": len(pool),
        "pool_sessions": len(rows_of),
        "draws_executing": executing,
        "violation_share": violations / draws,
        "mean_true_error": float(np.mean(risks)) if risks else None,
        "max_true_error": float(np.max(risks)) if risks else None,
        "mean_coverage": float(np.mean(coverages)),
        "mean_executed_rows": float(np.mean(executed_rows)) if executed_rows else 0.0,
        "cell_violation_share": group_violations / group_trials if group_trials else None,
        "half_split_violation_share": half_violations / draws,
        "half_split_significant_share": half_significant / draws,
        "half_split_mean_executed": float(np.mean(half_executed)),
        "met": violations / draws <= config.delta,
    }


def sensitivity_table(
    records: list[FeedbackRecord], config: ThresholdConfig, labels_: tuple[LabelRule, ...]
) -> list[dict[str, Any]]:
    """Risk-controlled coverage of the feature critic under each label rule, threshold granularity and alpha
    (thresholds on the threshold split with the session-level bound, read on the test split)."""
    out = []
    for label in labels_:
        trained = train_critic(records, PipelineConfig(kind="feature", label=label, progress=False))
        thr = trained.splits.threshold
        scores, y, slices = accept_scores(trained.critic, thr), labels(thr, label), [slice_of(r) for r in thr]
        for granularity in ("pooled", "slice", "action_type", "global"):
            for alpha in (0.02, 0.05, 0.10):
                cfg = dataclasses.replace(config, alpha=alpha, granularity=granularity)
                admission = admission_rows(trained.critic, trained.splits.calibrate, label)
                thresholds = fit_slice_thresholds(
                    scores, y, slices, cfg, sessions=sessions_of(thr), admission=admission
                )
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


def label_figures(
    records: list[FeedbackRecord], label: LabelRule, thresholds: ThresholdConfig, args: argparse.Namespace
) -> tuple[dict[str, Any], Comparison, dict[str, TrainedCritic]]:
    """Everything the benchmark reports for one label rule: the paper-style comparison on the test rows, the
    risk-controlled coverage at alpha 0.05 against the oracle, and the guarantee over session redraws."""
    started = time.perf_counter()
    trained = {"feature": train_critic(records, PipelineConfig(kind="feature", label=label, thresholds=thresholds))}
    seconds = {"feature_pipeline": time.perf_counter() - started}
    if args.generative_budget > 0 and label == DEFAULT_LABEL:
        started = time.perf_counter()
        config = PipelineConfig(
            kind="generative", label=label, thresholds=thresholds, policy_dir=str(args.policy),
            time_budget_s=args.generative_budget, progress=True,
        )  # fmt: skip
        trained["generative"] = train_critic(records, config)
        seconds["generative_pipeline"] = time.perf_counter() - started
    feature = trained["feature"]
    test = feature.splits.test
    y_test, s_test = labels(test, label), [slice_of(r) for r in test]
    scored = [CriticScores(BASELINE_NAME, accept_scores(feature.baseline, test))]
    scored += [CriticScores(t.critic.name, accept_scores(t.critic, test)) for t in trained.values()]
    plots = RESULTS_DIR / NAME / label
    comparison = compare_critics(
        scored, y_test, s_test, baseline=BASELINE_NAME, alphas=(0.05, 0.02), plots_dir=plots,
        title=f"sandbox copilot feedback, label {label} (test split)",
    )  # fmt: skip
    coverage = {}
    for kind, t in trained.items():
        oracle = float(t.test_labels.mean())
        coverage[kind] = {
            "risk_controlled_coverage": t.hold.coverage,
            "realised_error": t.hold.realised_error,
            "holds": t.hold.holds,
            "oracle_coverage": oracle,
            "share_of_oracle": t.hold.coverage / oracle,
            "empirical_coverage_at_alpha": comparison.by_name(t.critic.name).coverage_at_risk["0.05"],
            "met": t.hold.coverage / oracle >= COVERAGE_SHARE,
            "thresholds": t.thresholds.to_dict(),
        }
    guarantee = [
        guarantee_draws(feature, dataclasses.replace(thresholds, alpha=alpha), args.draws, args.seed)
        for alpha in (0.02, 0.05, 0.10)
    ]
    figures = {
        "label": label,
        "rows": len(feature.splits.fit) + len(feature.splits.calibrate) + len(feature.splits.threshold) + len(test),
        "positive_share": float(labels(labelled(records, label), label).mean()),
        "splits": feature.splits.sizes(),
        "comparison": {kind: comparison_rows(comparison, t.critic.name) for kind, t in trained.items()},
        "coverage": coverage,
        "guarantee": guarantee,
        "seconds": seconds,
        "fit_seconds": {k: t.fit_seconds for k, t in trained.items()},
        "plots": comparison.plots,
    }
    return figures, comparison, trained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=POLICY_DIR)
    parser.add_argument("--sessions", type=int, default=COPILOT_SESSIONS)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--start", type=int, default=2500, help="first copilot case index (after the policy's)")
    parser.add_argument("--generative-budget", type=float, default=0.0, help="seconds; 0 (default) skips it")
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--min-rows", type=int, default=100)
    parser.add_argument(
        "--no-reply-guard", action="store_true", help="feedback of the bare policy (default: behind the reply guard)"
    )
    args = parser.parse_args()

    records = copilot_feedback(
        args.policy, args.sessions, args.seed, args.start, "default", reply_guard=not args.no_reply_guard
    )
    accepted_share = sum(r.accepted for r in records) / len(records)
    print(f"{len(records)} feedback rows, accepted share {accepted_share:.3f}")
    thresholds = dataclasses.replace(default_thresholds(), alpha=0.05, delta=0.1, min_rows=args.min_rows)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    per_label: dict[str, dict[str, Any]] = {}
    tables: dict[str, str] = {}
    for label in (DEFAULT_LABEL, BASELINE_LABEL):
        figures, comparison, _ = label_figures(records, label, thresholds, args)
        per_label[label] = figures
        tables[label] = comparison.render_markdown() + "\n" + comparison.render_per_action_type()
    sensitivity = sensitivity_table(records, thresholds, (DEFAULT_LABEL, BASELINE_LABEL, "acceptable"))

    def headline(figures: dict[str, Any]) -> dict[str, Any]:
        coverage = figures["coverage"]["feature"]
        guarantee = next(g for g in figures["guarantee"] if g["alpha"] == thresholds.alpha)
        return {
            "coverage_share_of_oracle": coverage["share_of_oracle"],
            "coverage": coverage["risk_controlled_coverage"],
            "realised_error": coverage["realised_error"],
            "guarantee_violation_share": guarantee["violation_share"],
        }

    result = {
        "environment": environment(),
        # What the runtime's headline reads (lab.report.critic_figures): the default label, the paper's beside it.
        "headline": {
            "alpha": thresholds.alpha,
            "label": DEFAULT_LABEL,
            **headline(per_label[DEFAULT_LABEL]),
            "accept_label": headline(per_label[BASELINE_LABEL]),
        },
        "rows": len(records),
        "accepted_share": accepted_share,  # the operators' verdicts: the share of proposals they accepted
        "reasons": dict(Counter(r.reason.value for r in records if r.reason is not None)),
        "thresholds_config": thresholds.to_dict(),
        "labels": per_label,
        "sensitivity": sensitivity,
        "peak_rss_mib": peak_rss_kib() / 1024,
    }
    markdown = render(result, tables)
    write_results(NAME, result, markdown)
    print(markdown)


def render(result: dict[str, Any], tables: dict[str, str]) -> str:
    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = [
        "# Critic on sandbox copilot feedback (calibrated default scenario)",
        "",
        f"{result['rows']} reviewed proposals, {pct(result['accepted_share'])} accepted by the operators; "
        f"rejection reasons {result['reasons']}. Thresholds: {result['thresholds_config']['granularity']} "
        "hierarchy (global -> action type -> slice), session-level bound, alpha 0.05, delta 0.1. Load average at "
        f"the end: {result['environment']['load_average']}.",
        "",
        "Labels: `unacceptable` (the default: an error is a model_error or other rejection; acceptable "
        "alternatives are acceptable; environment rejections carry no label) and `accepted` (the paper's: any "
        "rejection is an error).",
        "",
        "## Headline: the default label beside the paper's",
        "",
        "| label | positives | AUC (feature) | coverage at alpha 0.05 | realised error | oracle coverage | share of "
        "oracle (target >= 90%) | guarantee: draws with true error > alpha (alpha 0.05, target <= 0.1) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, f in result["labels"].items():
        c = f["coverage"]["feature"]
        g = next(x for x in f["guarantee"] if x["alpha"] == 0.05)
        lines.append(
            f"| {label} | {pct(f['positive_share'])} | {f['comparison']['feature']['auc']:.3f} | "
            f"{pct(c['risk_controlled_coverage'])} | {pct(c['realised_error'])} | {pct(c['oracle_coverage'])} | "
            f"{pct(c['share_of_oracle'])} ({verdict(c['met'])}) | {g['violation_share']:.2f} ({verdict(g['met'])}) |"
        )
    for label, f in result["labels"].items():
        lines += [
            "",
            f"## Label `{label}` ({f['rows']} labelled rows, {pct(f['positive_share'])} positive, splits "
            f"{f['splits']})",
            "",
            tables[label],
            "",
            "Precision at equal recall (target: +5 points over the policy's confidence):",
            "",
            "| critic | accept P | baseline accept P (same recall) | gain | macro P gain | AUC | baseline AUC |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in f["comparison"].values():
            lines.append(
                f"| {row['critic']} | {row['accept_precision']:.4f} | {row['baseline_accept_precision']:.4f} | "
                f"{100 * row['accept_precision_gain']:+.2f} | {100 * row['macro_precision_gain']:+.2f} | "
                f"{row['auc']:.3f} | {row['baseline_auc']:.3f} |"
            )
        lines += [
            "",
            "The guarantee over session redraws (exact check: thresholds fitted on sessions drawn with replacement, "
            "their true error read on the whole pool; half-split: the literal calibrate-on-one-half reading):",
            "",
            "| alpha | draws executing | true error > alpha | mean / max true error | mean coverage | per cell > "
            "alpha | half-split: fresh > alpha | significant | |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for g in f["guarantee"]:
            true = "-" if g["mean_true_error"] is None else f"{g['mean_true_error']:.4f} / {g['max_true_error']:.4f}"
            cell = "-" if g["cell_violation_share"] is None else f"{g['cell_violation_share']:.3f}"
            lines.append(
                f"| {g['alpha']} | {g['draws_executing']}/{g['draws']} | {g['violation_share']:.2f} | {true} | "
                f"{pct(g['mean_coverage'])} | {cell} | {g['half_split_violation_share']:.2f} | "
                f"{g['half_split_significant_share']:.2f} | {verdict(g['met'])} |"
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
        lines.append(
            f"| {x['label']} | {pct(x['positive_share'])} | {x['auc']:.3f} | {x['granularity']} | {x['alpha']} | "
            f"{x['groups_with_threshold']}/{x['groups']} | {pct(x['coverage'])} | {pct(x['share_of_oracle'])} | "
            f"{pct(x['realised_error'])} | {x['holds']} |"
        )
    lines += ["", f"Peak RSS {result['peak_rss_mib']:.0f} MiB.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
