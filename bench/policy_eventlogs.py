"""Next activity on the real event logs: the LM policy beside the two floors and a gradient-boosting baseline.

Protocol of ``docs/data.md``: train on ``train_val_<log>``, test on ``test_<log>`` (ordered splits of
the Rama-Maneiro et al. benchmark); micro accuracy over every test prefix (``min_prefix=1``), end of case counted
as a target; accuracy on prefixes unseen in training separately; selective accuracy at 50% coverage using each
predictor's own confidence. The LM gets a wall-clock training budget per log (one thread). The gradient-boosting
baseline runs here with every field; ``bench/policy_eventlog_baseline.py`` chooses its fields on the validation
split and reports the tuned numbers.

    .venv/bin/python -m bench.policy_eventlogs [--logs bpi_challenge_2013_incidents ...] [--time-budget 600]

Writes ``bench/results/policy_eventlogs.{json,md}``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.common import environment, peak_rss_kib, write_results
from bench.policy_eventlog_baseline import DATA, load_log
from policy.baselines.floors import SuffixNGram
from policy.baselines.gbm import GradientBoostingBaseline
from policy.evaluate import EvalResult, evaluate
from policy.policy import LMPolicy
from policy.predictor import NextActionPredictor
from policy.train import TrainConfig

NAME = "policy_eventlogs"
LOGS = ("bpi_challenge_2013_incidents", "BPI_Challenge_2012_W_Complete")
REFERENCE = {
    "bpi_challenge_2013_incidents": {"bigram": 0.5390, "ngram": 0.5578, "ceiling": 0.8008, "target": 0.76},
    "BPI_Challenge_2012_W_Complete": {"bigram": 0.6576, "ngram": 0.6610, "ceiling": 0.7233, "target": 0.74},
}


def run_log(name: str, time_budget: float) -> dict[str, Any]:
    train, test = load_log(name)
    predictors: list[tuple[NextActionPredictor, float]] = []
    makers: tuple[Callable[[], NextActionPredictor], ...] = (
        lambda: SuffixNGram(max_n=1),
        lambda: SuffixNGram(),
        GradientBoostingBaseline,
    )
    for make in makers:
        started = time.perf_counter()
        predictor = make().fit(train)
        predictors.append((predictor, time.perf_counter() - started))
    started = time.perf_counter()
    lm = LMPolicy(training=TrainConfig(epochs=3, threads=1, time_budget_s=time_budget)).fit(train)
    predictors.append((lm, time.perf_counter() - started))
    results: dict[str, EvalResult] = {}
    fit_seconds: dict[str, float] = {}
    for predictor, seconds in predictors:
        results[predictor.name] = evaluate(predictor, test, train, min_prefix=1)
        fit_seconds[predictor.name] = seconds
    return {
        "train_cases": len(train),
        "test_cases": len(test),
        "test_prefixes": results["lm"].overall.steps,
        "reference": REFERENCE.get(name),
        "fit_seconds": fit_seconds,
        "lm_training": {
            "steps": lm.history_.steps if lm.history_ else None,
            "stopped": lm.history_.stopped if lm.history_ else None,
        },
        "results": {k: v.model_dump(mode="json") for k, v in results.items()},
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Next activity on the real event logs",
        "",
        "Train on `train_val_*`, test on `test_*`; micro accuracy over every test prefix, end of case counted. "
        "Floors and ceiling from `docs/data.md` in brackets.",
        "",
        "| log | predictor | accuracy | unseen-prefix acc | selective acc @50% | fit s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for log, data in result["logs"].items():
        for name, r in data["results"].items():
            overall = r["overall"]["action_accuracy"]
            unseen = r["unseen_prefix"]["action_accuracy"] if r.get("unseen_prefix") else None
            sel = next((p["action_accuracy"] for p in r["selective"] if abs(p["coverage"] - 0.5) < 1e-9), None)
            lines.append(
                f"| {log} | {name} | {overall:.4f} | {'–' if unseen is None else f'{unseen:.4f}'} | "
                f"{'–' if sel is None else f'{sel:.4f}'} | {data['fit_seconds'][name]:.0f} |"
            )
        ref = data["reference"] or {}
        lines.append(
            f"| {log} | reference | bigram {ref.get('bigram')}, n-gram {ref.get('ngram')}, activity-only ceiling "
            f"{ref.get('ceiling')}, target {ref.get('target')} | | | |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", nargs="+", default=list(LOGS))
    parser.add_argument("--time-budget", type=float, default=600.0, help="LM training seconds per log")
    args = parser.parse_args(argv)
    if not DATA.is_dir():
        parser.error(f"{DATA} not found: the event logs live in ../shared/data/eventlogs")
    torch.set_num_threads(1)
    result: dict[str, Any] = {"logs": {}, "environment": environment()}
    for log in args.logs:
        result["logs"][log] = run_log(log, args.time_budget)
    result["peak_rss_mib"] = peak_rss_kib() / 1024
    markdown = render(result)
    write_results(NAME, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
