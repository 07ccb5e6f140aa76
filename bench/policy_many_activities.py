"""A real event log with many activities: what the trained policy scores and how long it takes to fit.

The five shared logs have 6 to 27 activities. A user's log may have hundreds (BPI 2015's municipalities), or an
activity joined with an attribute (``autopilot import xes --activity-with``: who acts next, or a lifecycle
transition). Here BPI 2013 incidents, whose activity (status + sub-status) is joined with the role of the
event's resource (``org:role``): 202 activities where the shared log has 13. Fitted on ``train_val``, scored on
``test`` (every prefix, end of case counted), as ``bench.policy_eventlogs``.

Rows: the floors (last-activity bigram, longest-suffix n-gram); the gradient-boosting model with the combined
policy's class cap (``gbm_max_classes``, the most frequent 100 actions), with a count column for every action
(``before``, measured in the same run) and for the 32 most frequent (``now``, ``max_counted_actions``); and the
combined policy as ``autopilot policy train`` fits it (LM included, default time budget), whose fit the issue
wants within 10 minutes.

    .venv/bin/python -m bench.policy_many_activities [--log bpi_challenge_2013_incidents] [--activity-with org:role]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from bench.common import environment, write_results
from bench.policy_eventlog_baseline import load_log
from policy.baselines.floors import SuffixNGram
from policy.baselines.gbm import BLOCK, GradientBoostingBaseline
from policy.combined import CombinedPolicy
from policy.evaluate import evaluate
from policy.predictor import NextActionPredictor
from schemas.actions import action_key

NAME = "policy_many_activities"


def _scored(predictor: NextActionPredictor, train: list[Any], test: list[Any]) -> dict[str, float]:
    tick = time.perf_counter()
    predictor.fit(train)
    fit_s = time.perf_counter() - tick
    accuracy = evaluate(predictor, test, train, min_prefix=1).overall.action_accuracy
    return {"accuracy": round(accuracy, 4), "fit_s": round(fit_s, 1)}


def run(log: str, activity_with: list[str]) -> dict[str, Any]:
    tick = time.perf_counter()
    train, test = load_log(log, activity_with=activity_with)
    load_s = time.perf_counter() - tick
    counts = Counter(action_key(step.action) for trace in train for step in trace.steps)
    cap = CombinedPolicy.gbm_max_classes
    rows: dict[str, dict[str, float]] = {}
    makers: dict[str, Any] = {
        "bigram": lambda: SuffixNGram(max_n=1),
        "ngram": lambda: SuffixNGram(),
        "gbm_before": lambda: GradientBoostingBaseline(max_classes=cap, max_counted_actions=BLOCK),
        "gbm_now": lambda: GradientBoostingBaseline(max_classes=cap),
    }
    for label, make in makers.items():
        rows[label] = _scored(make(), train, test)
        print(f"{log} +{'+'.join(activity_with)}: {label} {rows[label]}", flush=True)
    policy = CombinedPolicy(progress=True)
    rows["trained_policy"] = _scored(policy, train, test)
    print(f"trained policy {rows['trained_policy']}", flush=True)
    lm = policy.report_.get("members", {}).get("lm", {})
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "log": log,
        "activity_with": activity_with,
        "load_s": round(load_s, 1),
        "train_cases": len(train),
        "test_cases": len(test),
        "test_prefixes": sum(len(t.steps) - 1 for t in test),  # every prefix of length >= 1 (min_prefix=1)
        "distinct_targets": len(counts),
        "gbm_classes": cap,
        "gbm_counted": GradientBoostingBaseline().max_counted_actions,
        "gbm_classes_coverage": round(sum(n for _, n in counts.most_common(cap)) / sum(counts.values()), 4),
        "predictors": rows,
        "gbm_fit_s": {"before": rows["gbm_before"]["fit_s"], "now": rows["gbm_now"]["fit_s"]},
        "gbm_accuracy": {"before": rows["gbm_before"]["accuracy"], "now": rows["gbm_now"]["accuracy"]},
        "gbm_fit_ratio": round(rows["gbm_now"]["fit_s"] / rows["gbm_before"]["fit_s"], 3),
        "trained_policy_accuracy": rows["trained_policy"]["accuracy"],
        "policy_fit_s": rows["trained_policy"]["fit_s"],
        "best_floor_or_gbm": max(rows[label]["accuracy"] for label in ("bigram", "ngram", "gbm_now")),
        "lm_epochs": lm.get("epochs_done"),
        "choice_markdown": policy.choice_markdown(),
        "environment": environment(),
    }


def render(result: dict[str, Any]) -> str:
    attrs = " + ".join(result["activity_with"]) or "nothing"
    rows = result["predictors"]
    labels = {
        "bigram": "last-activity bigram",
        "ngram": "longest-suffix n-gram",
        "gbm_before": f"GBM, {result['gbm_classes']} classes, a count column per action (before)",
        "gbm_now": f"GBM, {result['gbm_classes']} classes, count columns for the {result['gbm_counted']} most "
        "frequent (now)",
        "trained_policy": "**trained policy** (`CombinedPolicy`, LM included)",
    }
    lines = [
        "# A real event log with many activities",
        "",
        f"{result['log']}, the activity joined with {attrs}: {result['distinct_targets']} distinct training "
        f"targets ({result['train_cases']} training cases, {result['test_cases']} test cases, "
        f"{result['test_prefixes']} test prefixes). The {result['gbm_classes']} most frequent cover "
        f"{result['gbm_classes_coverage']:.1%} of the training targets. train_val → test, every prefix. "
        f"Measured {result['date']}; fit seconds on this machine.",
        "",
        "| predictor | accuracy | fit s |",
        "|---|---:|---:|",
    ]
    lines += [f"| {labels[k]} | {row['accuracy']:.4f} | {row['fit_s']:.0f} |" for k, row in rows.items()]
    lines += [
        "",
        f"GBM fit time now / before: {result['gbm_fit_ratio']:.2f}. The trained policy's fit: "
        f"{result['policy_fit_s']:.0f} s (target 600 s); LM epochs {result['lm_epochs']}.",
        "",
        result["choice_markdown"],
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", default="bpi_challenge_2013_incidents", help="a shared event log's file stem")
    parser.add_argument(
        "--activity-with", action="append", default=None, metavar="NAME", help="default: org:role (repeatable)"
    )
    args = parser.parse_args()
    result = run(args.log, args.activity_with or ["org:role"])
    json_path, md_path = write_results(NAME, result, render(result))
    print(render(result))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
