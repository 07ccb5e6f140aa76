"""A new process with a handful of cases: what its own cases support, and what the other processes add.

Protocol (sandbox): the other processes' history is ``--other-sessions`` sessions of the ``new_process`` scenario
(every process but ``warranty_claim``); the new process's cases are the first k sessions of the ``only_new``
stream (``warranty_claim`` only), k in ``--ks``; the test set is ``--test`` later ``only_new`` sessions (case
indexes from the largest k on), the same at every k. Action accuracy (type, target and value), every test step
teacher-forced.

Predictors at each k:

* ``ngram (own cases)``: the longest-suffix n-gram on the k cases alone;
* ``ngram (all cases)``: the same n-gram on the other processes' cases plus the k (its contexts are per
  process and screen, so the other processes only fill its global fallback);
* ``pooled ngram``: ``SuffixNGram(pooled=True)`` on all of them (backs off to every process's contexts);
* ``combined (no LM)``: ``CombinedPolicy(lm=False)`` on all of them (the routing over the n-grams; the GBM
  is left out by its own rule on chat data). ``--lm`` adds the full combined policy (minutes per k).

    .venv/bin/python -m bench.policy_new_process [--ks 5 10 20 50] [--other-sessions 500] [--test 150] [--lm]

Writes ``bench/results/policy_new_process.{json,md}``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from bench.common import ROOT, environment, peak_rss_kib, write_results
from importers.jsonl import read_traces
from policy.baselines.floors import SuffixNGram
from policy.combined import CombinedPolicy
from policy.evaluate import evaluate
from policy.predictor import NextActionPredictor
from sandbox.generate import generate
from sandbox.scenario import scenario_by_name
from schemas.trace import Trace

NAME = "policy_new_process"
WORK = ROOT / "out" / "bench"


def _stream(scenario: str, sessions: int, seed: int, start: int) -> list[Trace]:
    path = WORK / f"sandbox_{scenario}_{seed}_{start}_{sessions}.jsonl"
    if not path.exists():
        generate(sessions, seed, path, scenario_by_name(scenario), start_index=start, progress=False)
    return list(read_traces(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--other-sessions", type=int, default=500)
    parser.add_argument("--test", type=int, default=150)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--lm", action="store_true", help="also the combined policy with its LM")
    parser.add_argument("--time-budget", type=float, default=240.0, help="seconds per combined fit with --lm")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    other = _stream("new_process", args.other_sessions, args.seed, 0)
    new = _stream("only_new", max(args.ks), args.seed, 0)
    test = _stream("only_new", args.test, args.seed, max(args.ks))
    ceiling = evaluate(SuffixNGram().fit(new[:1]), test).overall.ceiling_action
    points: list[dict[str, Any]] = []
    for k in sorted(args.ks):
        own, pooled_data = new[:k], other + new[:k]
        predictors: dict[str, NextActionPredictor] = {
            "ngram (own cases)": SuffixNGram().fit(own),
            "ngram (all cases)": SuffixNGram().fit(pooled_data),
            "pooled ngram": SuffixNGram(pooled=True).fit(pooled_data),
            "combined (no LM)": CombinedPolicy(lm=False).fit(pooled_data),
        }
        if args.lm:
            predictors["combined"] = CombinedPolicy(time_budget_s=args.time_budget).fit(pooled_data)
        point: dict[str, Any] = {"k": k, "accuracy": {}}
        for label, predictor in predictors.items():
            point["accuracy"][label] = evaluate(predictor, test).overall.action_accuracy
            if isinstance(predictor, CombinedPolicy):
                point[f"{label} routes"] = predictor.report_.get("validation", {}).get("route_share")
        points.append(point)
        print(f"k={k}: " + ", ".join(f"{n} {a:.4f}" for n, a in point["accuracy"].items()), flush=True)
    labels = list(points[0]["accuracy"])
    result = {
        "protocol": {
            "other_processes": f"{args.other_sessions} sessions of the new_process scenario (seed {args.seed})",
            "new_process": "warranty_claim: the first k sessions of the only_new stream",
            "test": f"{args.test} later only_new sessions",
            "metric": "action accuracy (type, target, value), every test step",
        },
        "ceiling": ceiling,
        "points": points,
        "seconds_total": time.perf_counter() - started,
        "peak_rss_mib": peak_rss_kib() / 1024,
        "environment": environment(),
    }
    lines = [
        "# A new process with a handful of cases (sandbox, warranty_claim)",
        "",
        f"The other processes' history: {args.other_sessions} sessions; the new process: its first k; test: "
        f"{args.test} later sessions of it (action accuracy; sandbox ceiling {ceiling:.4f}).",
        "",
        "| k | " + " | ".join(labels) + " |",
        "|---:|" + "---:|" * len(labels),
    ]
    for p in points:
        lines.append(f"| {p['k']} | " + " | ".join(f"{p['accuracy'][n]:.4f}" for n in labels) + " |")
    markdown = "\n".join(lines) + "\n"
    write_results(NAME, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
