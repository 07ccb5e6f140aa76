"""Next activity on the five real event logs: the trained (combined) policy beside the floors and the GBM.

Protocol of ``docs/data.md``: train on ``train_val_<log>``, test on ``test_<log>`` (the ordered splits
of the Rama-Maneiro et al. benchmark; the two older logs use the same split files); micro accuracy over every
test prefix (``min_prefix=1``), end of case counted as a target; accuracy on prefixes unseen in training
separately; selective accuracy at 50% coverage from each predictor's own confidence; accuracy on the test cases
the log saw through and on the possibly right-censored rest (``policy/censoring.py``).

* Reference predictors, fitted on all of ``train_val``: the last-activity bigram and the longest-suffix n-gram
  (the README's two floors) and the gradient-boosting baseline with every field (``policy/baselines/gbm.py``).
  ``best_floor_or_gbm.<log>`` is the best of the three on test.
* The trained policy: ``CombinedPolicy`` fitted on ``train_val`` alone (it holds out its latest cases for the
  choice; test is never seen), with a wall-clock budget for the whole fit (``--time-budget``, default 540 s).
  Its fit time, its choice and held-out figures, and the LM member's training (epochs done, threads) are
  recorded. ``--lm-test`` also scores the LM member alone on test (minutes on a large log).

Each run updates the entries of the logs it ran in ``bench/results/policy_eventlogs.json`` and keeps the
others (``--fresh`` starts over), so the five logs can be run one at a time on a shared machine. Another log
split the same way runs the same protocol: ``--logs <stem>`` with ``train_val_<stem>.xes.gz`` and
``test_<stem>.xes.gz`` in ``--data-dir`` (it has no reference figures, so no target).

    .venv/bin/python -m bench.policy_eventlogs [--logs env_permit ...] [--data-dir DIR] [--time-budget 540] [--lm-test]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS_DIR, environment, peak_rss_kib, write_results
from bench.policy_eventlog_baseline import DATA, load_log
from policy.baselines.floors import SuffixNGram
from policy.baselines.gbm import GradientBoostingBaseline
from policy.censoring import CENSORING_NOTE, CensoringHorizon, censoring_breakdown, censoring_table
from policy.combined import CombinedPolicy
from policy.evaluate import EvalResult, evaluate, evaluate_with_scores
from policy.predictor import NextActionPredictor

NAME = "policy_eventlogs"
LOGS = (
    "bpi_challenge_2013_incidents",
    "BPI_Challenge_2012_W_Complete",
    "BPI_Challenge_2012_O",
    "BPI_Challenge_2013_closed_problems",
    "env_permit",
)
REFERENCE = {
    "bpi_challenge_2013_incidents": {"bigram": 0.5390, "ngram": 0.5578, "ceiling": 0.8008, "target": 0.80},
    "BPI_Challenge_2012_W_Complete": {"bigram": 0.6576, "ngram": 0.6610, "ceiling": 0.7233, "target": 0.74},
    "BPI_Challenge_2012_O": {"bigram": 0.7351, "ngram": 0.7960, "ceiling": 0.8041, "target": None},
    "BPI_Challenge_2013_closed_problems": {"bigram": 0.7063, "ngram": 0.6595, "ceiling": 0.7867, "target": None},
    "env_permit": {"bigram": 0.8483, "ngram": 0.8918, "ceiling": 0.9081, "target": None},
}
"""Activity-only numbers of ``docs/data.md`` (test split) and the issue's absolute targets."""
COVERAGE = 0.5


def _selective(result: EvalResult) -> float | None:
    return next((p.action_accuracy for p in result.selective if abs(p.coverage - COVERAGE) < 1e-9), None)


def _summary(result: EvalResult, fit_s: float) -> dict[str, Any]:
    return {
        "accuracy": result.overall.action_accuracy,
        "unseen_prefix_accuracy": result.unseen_prefix.action_accuracy if result.unseen_prefix else None,
        "unseen_prefixes": result.unseen_prefix.steps if result.unseen_prefix else 0,
        "selective_accuracy_50": _selective(result),
        "fit_s": round(fit_s, 1),
        "predict_s": round(result.predict_seconds, 1),
    }


def run_log(name: str, time_budget: float, lm_test: bool, data_dir: Path = DATA) -> dict[str, Any]:
    started = time.perf_counter()
    train, test = load_log(name, data_dir)
    load_s = time.perf_counter() - started
    horizon = CensoringHorizon.fit(train, test)
    censoring: dict[str, Any] = {}
    summaries: dict[str, dict[str, Any]] = {}
    makers: dict[str, Callable[[], NextActionPredictor]] = {
        "bigram": lambda: SuffixNGram(max_n=1),
        "ngram": lambda: SuffixNGram(),
        "gbm": GradientBoostingBaseline,
    }
    for label, make in makers.items():
        tick = time.perf_counter()
        predictor = make().fit(train)
        fit_s = time.perf_counter() - tick
        result, scores = evaluate_with_scores(predictor, test, train, min_prefix=1)
        summaries[label] = _summary(result, fit_s)
        if horizon is not None:
            censoring[label] = censoring_breakdown(scores, test, horizon).to_dict()
        print(f"{name}: {label} {summaries[label]['accuracy']:.4f} (fit {fit_s:.0f} s)", flush=True)

    tick = time.perf_counter()
    policy = CombinedPolicy(time_budget_s=time_budget).fit(train)
    fit_s = time.perf_counter() - tick
    combined, scores = evaluate_with_scores(policy, test, train, min_prefix=1)
    summaries["trained_policy"] = _summary(combined, fit_s)
    if horizon is not None:
        censoring["trained_policy"] = censoring_breakdown(scores, test, horizon).to_dict()
    print(f"{name}: trained policy {summaries['trained_policy']['accuracy']:.4f} (fit {fit_s:.0f} s)", flush=True)
    print(policy.choice_markdown(), flush=True)
    if lm_test and policy.lm_ is not None:
        lm_fit = policy.report_["members"]["lm"]["fit_s"]
        summaries["lm_member"] = _summary(evaluate(policy.lm_, test, train, min_prefix=1), lm_fit)
        print(f"{name}: LM member alone {summaries['lm_member']['accuracy']:.4f}", flush=True)

    best_label = max(makers, key=lambda label: summaries[label]["accuracy"])
    return {
        "train_cases": len(train),
        "train_steps": sum(len(t.steps) for t in train),
        "test_cases": len(test),
        "test_prefixes": combined.overall.steps,
        "reference": REFERENCE.get(name),
        "load_s": round(load_s, 1),
        "predictors": summaries,
        "best_floor_or_gbm": {"accuracy": summaries[best_label]["accuracy"], "predictor": best_label},
        "censoring": censoring,
        "combined": {
            "version": policy.version_,
            "choice_markdown": policy.choice_markdown(),
            "report": policy.report_,
            "routing": policy.routing_.to_dict() if policy.routing_ else None,
            "blend": policy.blend_,
        },
    }


def _censoring_lines(logs: dict[str, Any]) -> list[str]:
    """The trained policy's and the GBM's accuracy on the test cases the log saw through and on the rest."""
    rows = [
        (f"{log}: {label}", row)
        for log, data in logs.items()
        for label, row in data.get("censoring", {}).items()
        if label in ("trained_policy", "gbm")
    ]
    if not rows:
        return []
    note = CENSORING_NOTE.format(percentile=100 * float(rows[0][1]["quantile"]))
    return ["", "## Right-censored test cases (`policy/censoring.py`)", "", note, "", censoring_table(rows)]


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Next activity on the real event logs: the trained policy beside the floors and the GBM",
        "",
        "Train on `train_val_*`, test on `test_*`; micro accuracy over every test prefix, end of case counted. "
        "The trained policy is `CombinedPolicy` (it holds out its own latest training cases to choose; test is "
        "never seen). Fit = seconds to fit on this machine (shared; load average in the JSON).",
        "",
        "| log | test prefixes | bigram | n-gram | GBM | trained policy | vs best of the three | target | "
        "sel. acc @50% (policy) | unseen-prefix acc (policy) | policy fit s | LM epochs (threads) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for log, data in result["logs"].items():
        p = data["predictors"]
        policy = p["trained_policy"]
        best = data["best_floor_or_gbm"]["accuracy"]
        target = (data.get("reference") or {}).get("target")
        lm = data["combined"]["report"]["members"].get("lm", {})
        lm_note = f"{lm.get('epochs_done')} ({lm.get('threads')})" if lm else "–"
        if "lm" in data["combined"]["report"].get("left_out", {}):
            lm_note += " left out"
        unseen = policy["unseen_prefix_accuracy"]
        lines.append(
            f"| {log} | {data['test_prefixes']} | {p['bigram']['accuracy']:.4f} | {p['ngram']['accuracy']:.4f} | "
            f"{p['gbm']['accuracy']:.4f} | **{policy['accuracy']:.4f}** | {100 * (policy['accuracy'] - best):+.1f} pt "
            f"| {'–' if target is None else f'{target:.2f}'} | {policy['selective_accuracy_50']:.4f} | "
            f"{'–' if unseen is None else f'{unseen:.4f}'} | {policy['fit_s']:.0f} | {lm_note} |"
        )
    lm_alone = [
        f"* {log}: {data['predictors']['lm_member']['accuracy']:.4f}"
        for log, data in result["logs"].items()
        if "lm_member" in data["predictors"]
    ]
    if lm_alone:
        lines += ["", "LM member alone on test, where measured (`--lm-test`):", "", *lm_alone]
    lines += _censoring_lines(result["logs"])
    for log, data in result["logs"].items():
        lines += ["", f"## {log}: which predictor answers where", "", data["combined"]["choice_markdown"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--logs",
        nargs="+",
        default=list(LOGS),
        help="file stems of the logs (train_val_<stem>.xes.gz and test_<stem>.xes.gz in --data-dir); default: the "
        "five shared ones",
    )
    parser.add_argument("--data-dir", type=Path, default=DATA, help="the folder of the split files")
    parser.add_argument("--time-budget", type=float, default=540.0, help="seconds for the whole combined fit")
    parser.add_argument("--lm-test", action="store_true", help="also score the LM member alone on test")
    parser.add_argument("--fresh", action="store_true", help="drop the logs of earlier runs from the results")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir} not found: the event logs live in ../shared/data/eventlogs (docs/data.md)")
    for log in args.logs:
        splits = (f"train_val_{log}.xes.gz", f"test_{log}.xes.gz")
        missing = [name for name in splits if not (args.data_dir / name).is_file()]
        if missing:
            parser.error(f"--logs {log}: {', '.join(missing)} not in {args.data_dir}")
    torch.set_num_threads(1)
    previous = RESULTS_DIR / f"{NAME}.json"
    result: dict[str, Any] = {"logs": {}}
    if previous.is_file() and not args.fresh:
        earlier = json.loads(previous.read_text())
        if "trained_policy_accuracy" in earlier:  # written by this version of the bench
            result["logs"] = earlier.get("logs", {})
    for log in args.logs:
        result["logs"][log] = run_log(log, args.time_budget, args.lm_test, args.data_dir) | {
            "environment": environment()
        }
    # the five shared logs in their order, then any other log a run was given
    order = [log for log in LOGS if log in result["logs"]] + [log for log in result["logs"] if log not in LOGS]
    result["logs"] = {log: result["logs"][log] for log in order}
    logs = result["logs"]
    result["trained_policy_accuracy"] = {log: d["predictors"]["trained_policy"]["accuracy"] for log, d in logs.items()}
    result["best_floor_or_gbm"] = {log: d["best_floor_or_gbm"]["accuracy"] for log, d in logs.items()}
    result["selective_accuracy_50"] = {
        log: d["predictors"]["trained_policy"]["selective_accuracy_50"] for log, d in logs.items()
    }
    result["fully_observed_accuracy"] = {
        log: ((d.get("censoring", {}).get("trained_policy") or {}).get("fully_observed") or {}).get("accuracy")
        for log, d in logs.items()
    }
    result["fit_seconds"] = {log: d["predictors"]["trained_policy"]["fit_s"] for log, d in logs.items()}
    result["targets"] = {
        "at_least_best_floor_or_gbm": {
            log: result["trained_policy_accuracy"][log] >= result["best_floor_or_gbm"][log] for log in logs
        },
        "absolute": {
            log: result["trained_policy_accuracy"][log] >= d["reference"]["target"]
            for log, d in logs.items()
            if d["reference"] and d["reference"].get("target")
        },
        "fit_within_600_s": {log: result["fit_seconds"][log] <= 600 for log in logs},
    }
    result["protocol"] = (
        "fit on train_val (the combined policy holds out its latest 20% of cases for its choice), micro accuracy "
        "over every test prefix of length >= 1, end of case included; selective accuracy = accuracy on the most "
        "confident 50% of test prefixes"
    )
    result["peak_rss_mib"] = peak_rss_kib() / 1024
    markdown = render(result)
    write_results(NAME, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
