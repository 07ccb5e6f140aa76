"""The default policy on the sandbox (default scenario): accuracy beside the two floors and the sandbox ceiling.

Protocol: ``--train`` + ``--test`` sessions are generated in one stream (case index = time); the first
``--train`` cases train, the last ``--test`` cases test (split by time: nothing of the future is seen). Every
sandbox case has a customer of its own, so the test customers are also disjoint from the training customers
(checked and reported). The test set is 1,000 sessions: with 500, a type's gap to the best possible policy moved by
several points from one block of sessions to the next (selects: 3.1, 8.3 and 1.7 points; decision 0027). The
policy is trained with the default configuration on one thread and saved under
``out/bench/policy_default`` (the speed benchmark reads it from there).

Targets: step accuracy within 3 points of the ceiling per action type; at least 10 points above the best floor.
Per action type the ceiling is the best possible policy's accuracy on that type's test steps (the share of them
whose ``bayes_hit`` is true), where the traces record it; else the mean ``bayes_p``, which per gold type is not
that policy's accuracy (``policy.evaluate``).

    .venv/bin/python -m bench.policy_sandbox [--train 2000] [--test 1000] [--seed 7]

Writes ``bench/results/policy_sandbox.{json,md}`` and ``bench/results/policy_sandbox_training.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, ROOT, environment, peak_rss_kib, write_results
from importers.jsonl import read_traces
from policy.evaluate import EvalResult, render_table
from policy.policy import LMPolicy
from policy.report import compare_with_floors
from policy.train import TrainConfig
from sandbox.generate import generate
from sandbox.scenario import scenario_by_name
from schemas.trace import Trace

NAME = "policy_sandbox"
MODEL_DIR = ROOT / "out" / "bench" / "policy_default"
CEILING_GAP = 0.03
FLOOR_MARGIN = 0.10


def sandbox_traces(sessions: int, seed: int, scenario: str, work: Path) -> list[Trace]:
    path = work / f"sandbox_{scenario}_{seed}_{sessions}.jsonl"
    if not path.exists():
        generate(sessions, seed, path, scenario_by_name(scenario))
    return list(read_traces(path))


def plot_training(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [row["step"] for row in history]
    ax.plot(steps, [row["train_loss"] for row in history], label="train (smoothed)")
    ax.plot(steps, [row["val_loss"] for row in history], label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("action-token cross-entropy")
    ax.set_title("Policy training (sandbox, default scenario)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def target_check(lm: EvalResult, floors: list[EvalResult]) -> dict[str, Any]:
    per_type = {}
    for action_type, metrics in lm.per_action_type.items():
        ceiling = metrics.bayes_action_accuracy if metrics.bayes_steps else metrics.ceiling_action
        per_type[action_type] = {
            "accuracy": metrics.action_accuracy,
            "ceiling": ceiling,
            "ceiling_is": "best policy's accuracy (bayes_hit)" if metrics.bayes_steps else "mean bayes_p",
            "mean_bayes_p": metrics.ceiling_action,
            "gap": None if ceiling is None else ceiling - metrics.action_accuracy,
            "within_3_points": None if ceiling is None else ceiling - metrics.action_accuracy <= CEILING_GAP,
        }
    best_floor = max(f.overall.action_accuracy for f in floors)
    return {
        "per_action_type": per_type,
        "overall_gap_to_ceiling": (lm.overall.ceiling_action or 0.0) - lm.overall.action_accuracy,
        "best_floor": best_floor,
        "above_best_floor": lm.overall.action_accuracy - best_floor,
        "floor_target_met": lm.overall.action_accuracy - best_floor >= FLOOR_MARGIN,
        "ceiling_target_met": all(v["within_3_points"] in (True, None) for v in per_type.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--time-budget", type=float, default=570.0)
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    traces = sandbox_traces(args.train + args.test, args.seed, "default", args.work)
    train, test = traces[: args.train], traces[args.train :]
    train_customers = {t.attributes.get("customer_id") for t in train}
    shared_customers = sum(t.attributes.get("customer_id") in train_customers for t in test)

    config = TrainConfig(epochs=args.epochs, threads=1, time_budget_s=args.time_budget)
    started = time.perf_counter()
    policy = LMPolicy(training=config).fit(train)
    fit_seconds = time.perf_counter() - started
    policy.save(MODEL_DIR)
    assert policy.history_ is not None

    results = compare_with_floors(policy, test, train).results
    check = target_check(results["lm policy"], [r for name, r in results.items() if name != "lm policy"])
    plot_training(policy.history_.evaluations, RESULTS_DIR / f"{NAME}_training.png")

    result = {
        "protocol": {
            "scenario": "default",
            "seed": args.seed,
            "train_sessions": len(train),
            "test_sessions": len(test),
            "split": "time (first cases train, last cases test)",
            "test_sessions_with_a_training_customer": shared_customers,
        },
        "training": {
            "seconds": fit_seconds,
            "steps": policy.history_.steps,
            "tokens": policy.history_.tokens,
            "stopped": policy.history_.stopped,
            "best_val_loss": policy.history_.best_val_loss,
            "config": config.to_dict(),
            "model": policy.model.to_dict(),
        },
        "results": {name: r.model_dump() for name, r in results.items()},
        "targets": check,
        "peak_rss_mib": peak_rss_kib() / 1024,
        "environment": environment(),
    }
    lines = [
        "# Policy on the sandbox (default scenario)",
        "",
        f"Trained on {len(train)} sessions, tested on the next {len(test)} (time split; "
        f"{shared_customers} test sessions share a customer with training). Training: "
        f"{fit_seconds:.0f} s on one thread, {policy.history_.steps} steps, stopped by {policy.history_.stopped}; "
        f"peak RSS {result['peak_rss_mib']:.0f} MiB.",
        "",
        render_table(results),
        "",
        "## Targets",
        "",
        f"- Best floor {check['best_floor']:.4f}; the policy is {check['above_best_floor'] * 100:+.1f} points above "
        f"it (target +10): {'met' if check['floor_target_met'] else 'missed'}.",
        f"- Gap to the ceiling overall: {check['overall_gap_to_ceiling'] * 100:.1f} points.",
        "",
        "| action type | policy | ceiling | ceiling is | gap (points) | within 3 points |",
        "|---|---:|---:|---|---:|---|",
    ]
    for action_type, row in check["per_action_type"].items():
        gap = "–" if row["gap"] is None else f"{row['gap'] * 100:.1f}"
        ceiling = "–" if row["ceiling"] is None else f"{row['ceiling']:.4f}"
        lines.append(
            f"| {action_type} | {row['accuracy']:.4f} | {ceiling} | {row['ceiling_is']} | {gap} "
            f"| {row['within_3_points']} |"
        )
    lines += ["", f"![training curve]({NAME}_training.png)", ""]
    markdown = "\n".join(lines)
    write_results(NAME, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
