"""What capping the gradient-boosting model's classes costs on a real event log, alone and in the combined policy.

Protocol: one shared event log (``env_permit`` by default: 27 activities), fitted on ``train_val`` and scored on
``test`` (every prefix, end of case counted, as ``bench.policy_eventlogs``). For each cap, the share of the
training targets the kept classes cover, the GBM alone (``GradientBoostingBaseline(max_classes=cap)``) and the
combined policy without the LM (``CombinedPolicy(lm=False, gbm_max_classes=cap)``, whose blend and routing may give
the rarer actions back to the n-grams). ``all`` is no cap.

    .venv/bin/python -m bench.policy_gbm_classes [--log env_permit] [--caps 20 15 10]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from bench.common import environment, write_results
from bench.policy_eventlog_baseline import load_log
from policy.baselines.gbm import GradientBoostingBaseline
from policy.combined import CombinedPolicy
from policy.evaluate import evaluate
from schemas.actions import action_key

NO_CAP = 10_000  # more classes than any log has: the combined policy's gbm_max_classes for "all"


def run(log: str, caps: list[int]) -> dict[str, Any]:
    train, test = load_log(log)
    counts = Counter(action_key(step.action) for trace in train for step in trace.steps)
    total = sum(counts.values())
    rows: dict[str, Any] = {}
    for cap in [None, *caps]:
        label = "all" if cap is None else str(cap)
        tick = time.perf_counter()
        gbm = GradientBoostingBaseline(max_classes=cap).fit(train)
        gbm_s = time.perf_counter() - tick
        tick = time.perf_counter()
        policy = CombinedPolicy(lm=False, gbm_max_classes=NO_CAP if cap is None else cap).fit(train)
        combined_s = time.perf_counter() - tick
        rows[label] = {
            "classes": len(gbm.actions_),
            "coverage": round(sum(n for _, n in counts.most_common(cap)) / total, 4),
            "gbm_accuracy": round(evaluate(gbm, test, train, min_prefix=1).overall.action_accuracy, 4),
            "gbm_fit_s": round(gbm_s, 1),
            "combined_accuracy": round(evaluate(policy, test, train, min_prefix=1).overall.action_accuracy, 4),
            "combined_fit_s": round(combined_s, 1),
        }
        print(f"{log} cap {label}: {rows[label]}", flush=True)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "log": log,
        "distinct_targets": len(counts),
        "caps": rows,
        "gbm_accuracy": {label: row["gbm_accuracy"] for label, row in rows.items()},
        "combined_accuracy": {label: row["combined_accuracy"] for label, row in rows.items()},
        "environment": environment(),
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Capping the gradient-boosting model's classes",
        "",
        f"{result['log']} ({result['distinct_targets']} distinct training targets): train_val → test, every prefix. "
        f"Measured {result['date']}.",
        "",
        "| classes kept | share of training targets | GBM alone | fit s | combined policy, no LM | fit s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, row in result["caps"].items():
        lines.append(
            f"| {label} ({row['classes']}) | {row['coverage']:.1%} | {row['gbm_accuracy']:.4f} | {row['gbm_fit_s']:.0f} "
            f"| {row['combined_accuracy']:.4f} | {row['combined_fit_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", default="env_permit", help="a shared event log's file stem")
    parser.add_argument("--caps", type=int, nargs="+", default=[20, 15, 10])
    args = parser.parse_args()
    result = run(args.log, args.caps)
    json_path, md_path = write_results("policy_gbm_classes", result, render(result))
    print(render(result))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
