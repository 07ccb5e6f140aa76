"""Few-case learning on a real UI log: the trained (combined) policy against the n-gram floor, k = 5 .. 35 cases.

Protocol: ``StudentRecord_segmented.csv`` (50 task instances, imported as in ``bench/policy_uilog.py``), cases
ordered by start time; the last 15 are the test set at every k; the policy trains on the first k (k = 5, 10,
20, 35). The trained policy is ``CombinedPolicy`` with a time budget per fit (it holds out its own latest
20% of the k cases to choose between the n-grams and the LM; the gradient-boosting members are left out by
its own rule, the log's fill values making hundreds of classes). The floor is the longest-suffix n-gram
(``SuffixNGram``) fitted on the same k cases. Metric: action accuracy with the value (``action_key`` equal),
every test step teacher-forced, the case end included. Beside it: the LM member alone, and which predictor the
policy chose.

    .venv/bin/python -m bench.policy_uilog_curve [--ks 5 10 20 35] [--time-budget 180]

Writes ``bench/results/policy_uilog_curve.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS_DIR, environment, peak_rss_kib, shared_data_dir, write_results
from importers.uilog import import_uilog
from policy.baselines.floors import MostFrequentPerScreen, SuffixNGram
from policy.combined import CombinedPolicy
from policy.evaluate import evaluate
from schemas.trace import Trace

NAME = "policy_uilog_curve"
DEFAULT_LOG = shared_data_dir() / "ui_logs" / "StudentRecord_segmented.csv"
TEST_CASES = 15


def _start(trace: Trace) -> str:
    return str(trace.attributes.get("case_start", ""))


def plot(points: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ks = [p["k"] for p in points]
    ax.plot(ks, [p["policy_accuracy"] for p in points], "o-", label="trained policy (combined)")
    ax.plot(ks, [p["ngram_accuracy"] for p in points], "s--", label="longest-suffix n-gram")
    lm = [(p["k"], p["lm_accuracy"]) for p in points if p.get("lm_accuracy") is not None]
    if lm:
        ax.plot([k for k, _ in lm], [a for _, a in lm], "^:", label="LM member alone")
    ax.set_xlabel("training task instances (k)")
    ax.set_ylabel("action accuracy (with value)")
    ax.set_title("StudentRecord UI log: test on the last 15 task instances")
    ax.set_xticks(ks)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG)
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 35])
    parser.add_argument("--time-budget", type=float, default=180.0, help="seconds per combined fit")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    traces = sorted(import_uilog(args.log).traces, key=_start)
    test = traces[-TEST_CASES:]
    points: list[dict[str, Any]] = []
    for k in args.ks:
        if not 0 < k <= len(traces) - TEST_CASES:
            parser.error(f"k={k} must lie in 1..{len(traces) - TEST_CASES}")
        train = traces[:k]
        ngram = SuffixNGram().fit(train)
        most_frequent = MostFrequentPerScreen().fit(train)
        tick = time.perf_counter()
        policy = CombinedPolicy(time_budget_s=args.time_budget, min_lm_budget_s=30.0, seed=args.seed).fit(train)
        fit_s = time.perf_counter() - tick
        policy_result = evaluate(policy, test, train)
        lm_accuracy = None
        if policy.lm_ is not None:
            lm_accuracy = evaluate(policy.lm_, test, train).overall.action_accuracy
        lm_info = policy.report_["members"].get("lm", {})
        point = {
            "k": k,
            "train_steps": sum(len(t.steps) for t in train),
            "policy_accuracy": policy_result.overall.action_accuracy,
            "ngram_accuracy": evaluate(ngram, test, train).overall.action_accuracy,
            "most_frequent_accuracy": evaluate(most_frequent, test, train).overall.action_accuracy,
            "lm_accuracy": lm_accuracy,
            "policy_selective_accuracy_50": next(
                (p.action_accuracy for p in policy_result.selective if abs(p.coverage - 0.5) < 1e-9), None
            ),
            "routes": policy.routing_.to_dict()["choices"] if policy.routing_ else {},
            "route_share": policy.report_.get("validation", {}).get("route_share"),
            "validation_steps": policy.report_.get("validation", {}).get("steps"),
            "members_validation_accuracy": {
                n: m.get("validation_accuracy") for n, m in policy.report_.get("members", {}).items()
            },
            "left_out": policy.report_.get("left_out"),
            "lm_training": {key: lm_info.get(key) for key in ("epochs_done", "steps", "stopped", "threads", "fit_s")},
            "fit_s": fit_s,
        }
        points.append(point)
        print(
            f"k={k}: policy {point['policy_accuracy']:.4f}, n-gram {point['ngram_accuracy']:.4f}, LM "
            f"{lm_accuracy if lm_accuracy is None else round(lm_accuracy, 4)}, routes {point['route_share']}",
            flush=True,
        )
    result = {
        "protocol": {
            "log": args.log.name,
            "test": f"the last {TEST_CASES} task instances by start time",
            "metric": "action accuracy with value (action_key equal), every test step, case end included",
            "time_budget_s": args.time_budget,
        },
        "policy_accuracy": {f"k{p['k']}": p["policy_accuracy"] for p in points},
        "ngram_accuracy": {f"k{p['k']}": p["ngram_accuracy"] for p in points},
        "lm_accuracy": {f"k{p['k']}": p["lm_accuracy"] for p in points},
        "at_least_ngram": {f"k{p['k']}": p["policy_accuracy"] >= p["ngram_accuracy"] for p in points},
        "points": points,
        "seconds_total": time.perf_counter() - started,
        "peak_rss_mib": peak_rss_kib() / 1024,
        "environment": environment(),
    }
    plot(points, RESULTS_DIR / f"{NAME}.png")
    lines = [
        "# Few-case learning on the StudentRecord UI log",
        "",
        f"Train on the first k task instances, test on the last {TEST_CASES} (action accuracy with value). Trained "
        f"policy = `CombinedPolicy` ({args.time_budget:.0f} s budget per fit); floor = longest-suffix n-gram on the "
        "same k cases.",
        "",
        "| k | train steps | trained policy | n-gram | LM member alone | held-out steps | answered by (held out) | "
        "LM epochs | fit s |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for p in points:
        lm = "–" if p["lm_accuracy"] is None else f"{p['lm_accuracy']:.4f}"
        shares = ", ".join(f"{r} {s:.0%}" for r, s in (p["route_share"] or {}).items())
        lines.append(
            f"| {p['k']} | {p['train_steps']} | **{p['policy_accuracy']:.4f}** | {p['ngram_accuracy']:.4f} | {lm} | "
            f"{p['validation_steps']} | {shares} | {p['lm_training'].get('epochs_done')} | {p['fit_s']:.0f} |"
        )
    lines += ["", f"![learning curve]({NAME}.png)", ""]
    markdown = "\n".join(lines)
    write_results(NAME, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
