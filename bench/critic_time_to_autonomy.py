"""Time to autonomy for a new process: how many copilot sessions of it are needed before its slices get a
threshold that holds (target <= 300 sessions).

Protocol: the critic is the feature critic trained and calibrated on default-scenario feedback
(``bench.critic_sandbox``'s fit and calibration splits; the new process, warranty_claim, is 2% of that mix).
The default policy then works warranty_claim cases only (the ``only_new`` scenario) in copilot mode:
``--max-sessions`` calibration sessions and ``--fresh`` further sessions to check on. For each n, the slices of
the new process get thresholds from the critic's scores on the first n sessions (alpha 0.05, delta 0.1, at
least ``--min-rows`` rows per slice), and the fresh sessions show whether each threshold holds and how much of
the new process then runs in the background. Repeated over ``--orders`` random orders of the calibration
sessions; the median is reported.

    .venv/bin/python -m bench.critic_time_to_autonomy [--max-sessions 400] [--fresh 300]

Writes ``bench/results/critic_time_to_autonomy.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, ROOT, environment, write_results
from bench.critic_sandbox import copilot_feedback
from critic.base import accept_scores, labels, slice_of
from critic.pipeline import MAX_CANDIDATES, PipelineConfig, check_thresholds, train_critic
from critic.thresholds import ThresholdConfig, fit_slice_thresholds

NAME = "critic_time_to_autonomy"
POLICY_DIR = ROOT / "out" / "bench" / "policy_default"
SESSIONS = (25, 50, 100, 150, 200, 250, 300, 400)
TARGET_SESSIONS = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=POLICY_DIR)
    parser.add_argument("--max-sessions", type=int, default=400)
    parser.add_argument("--fresh", type=int, default=300)
    parser.add_argument("--orders", type=int, default=5)
    parser.add_argument("--min-rows", type=int, default=100)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.10])
    args = parser.parse_args()

    default = copilot_feedback(args.policy, 3000, args.seed, 2500, "default")
    critic = train_critic(default, PipelineConfig(kind="feature", progress=False)).critic
    new = copilot_feedback(args.policy, args.max_sessions + args.fresh, args.seed, 5000, "only_new")
    by_case: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(new):
        by_case[r.state.case_id].append(i)
    cases = list(by_case)  # in case order
    calibration_cases, fresh_cases = cases[: args.max_sessions], cases[args.max_sessions :]
    fresh = [new[i] for c in fresh_cases for i in by_case[c]]
    fresh_scores, fresh_y = accept_scores(critic, fresh), labels(fresh)
    fresh_slices = [slice_of(r) for r in fresh]
    all_scores, all_y = accept_scores(critic, new), labels(new)
    all_slices = [slice_of(r) for r in new]
    curves = {}
    for alpha in args.alphas:
        config = ThresholdConfig(alpha=alpha, delta=0.1, min_rows=args.min_rows, max_candidates=MAX_CANDIDATES)
        rng = np.random.default_rng(args.seed)
        points: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for order in range(args.orders):
            shuffled = (
                list(calibration_cases)
                if order == 0
                else [calibration_cases[i] for i in rng.permutation(len(calibration_cases))]
            )
            for n in SESSIONS:
                if n > len(shuffled):
                    continue
                rows = np.array([i for c in shuffled[:n] for i in by_case[c]])
                thresholds = fit_slice_thresholds(all_scores[rows], all_y[rows], [all_slices[i] for i in rows], config)
                hold = check_thresholds(thresholds, fresh_scores, fresh_y, fresh_slices)
                points[n].append(
                    {
                        "rows": len(rows),
                        "slices_with_threshold": sum(r.threshold is not None for r in thresholds.values()),
                        "all_hold": hold.holds,
                        "fresh_coverage": hold.coverage,
                        "realised_error": hold.realised_error,
                    }
                )
        curves[f"{alpha:g}"] = summarise(points)
    plot = plot_curves(curves, RESULTS_DIR / f"{NAME}.png")
    first = {a: first_holding(c) for a, c in curves.items()}
    result = {
        "environment": environment(),
        "new_process_rows": len(new),
        "fresh_rows": len(fresh),
        "fresh_acceptable_share": float(fresh_y.mean()),
        "min_rows": args.min_rows,
        "orders": args.orders,
        "curves": curves,
        "first_holding_threshold_sessions": first,
        "target_sessions": TARGET_SESSIONS,
        "met": {a: f is not None and f <= TARGET_SESSIONS for a, f in first.items()},
        "plot": str(plot),
    }
    md = render(result)
    write_results(NAME, result, md)
    print(md)


def summarise(points: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    curve = []
    for n in SESSIONS:
        p = points.get(n)
        if not p:
            continue
        errors = [x["realised_error"] for x in p if x["realised_error"] is not None]
        curve.append(
            {
                "sessions": n,
                "rows": int(statistics.median(x["rows"] for x in p)),
                "slices_with_threshold": statistics.median(x["slices_with_threshold"] for x in p),
                "share_all_hold": sum(x["all_hold"] for x in p) / len(p),
                "fresh_coverage": statistics.median(x["fresh_coverage"] for x in p),
                "realised_error": statistics.median(errors) if errors else None,
            }
        )
    return curve


def first_holding(curve: list[dict[str, Any]]) -> int | None:
    """Sessions after which (median over orders) a slice has a threshold and all thresholds hold in >= 80% of
    the orders."""
    return next((c["sessions"] for c in curve if c["slices_with_threshold"] >= 1 and c["share_all_hold"] >= 0.8), None)


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for alpha, curve in curves.items():
        ax.plot([c["sessions"] for c in curve], [100 * c["fresh_coverage"] for c in curve], marker="o",
                label=f"alpha = {alpha}")  # fmt: skip
    ax.axvline(TARGET_SESSIONS, color="grey", linestyle=":", label="target: 300 sessions")
    ax.set_xlabel("copilot sessions of the new process")
    ax.set_ylabel("fresh steps auto-executed (%)")
    ax.set_title("New process (warranty_claim): time to autonomy")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def render(r: dict[str, Any]) -> str:
    lines = [
        "# Time to autonomy of a new process (warranty_claim)",
        "",
        f"{r['new_process_rows']} copilot rows of the new process; thresholds checked on {r['fresh_rows']} fresh rows "
        f"({r['fresh_acceptable_share']:.1%} acceptable); at least {r['min_rows']} rows per slice; medians over "
        f"{r['orders']} orders of the calibration sessions.",
        "",
    ]
    for alpha, curve in r["curves"].items():
        verdict = "met" if r["met"][alpha] else "**missed**"
        lines += [
            f"## alpha = {alpha}",
            "",
            "| copilot sessions | rows | slices with a threshold | orders where all hold | fresh steps auto-executed | "
            "realised error |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for c in curve:
            err = "-" if c["realised_error"] is None else f"{c['realised_error']:.3f}"
            lines.append(
                f"| {c['sessions']} | {c['rows']} | {c['slices_with_threshold']:g} | {c['share_all_hold']:.0%} | "
                f"{c['fresh_coverage']:.1%} | {err} |"
            )
        lines += [
            "",
            f"First holding threshold after **{r['first_holding_threshold_sessions'][alpha]}** sessions (target <= "
            f"{r['target_sessions']}: {verdict}).",
            "",
        ]
    lines += [
        f"![time to autonomy]({NAME}.png)",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
