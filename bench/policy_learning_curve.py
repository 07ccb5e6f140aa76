"""A learning curve for a new process: accuracy of the policy on ``warranty_claim`` vs the sessions it trained on.

Protocol: the ``only_new`` scenario generates sessions of the process the ``new_process`` scenario holds out
(``warranty_claim``), with one seed. Training sessions are the first ``n`` of one stream (case indexes
``0 .. n-1``, so every smaller training set is a prefix of the larger ones), for ``n`` in ``--sizes``
(25 ... 2000); the test set is ``--test`` later sessions of the same stream (case indexes from the largest ``n``
on), the same for every point. Every sandbox case has a customer of its own, so test customers are never seen
in training.

At each ``n`` the LM policy (default model and tokenizer) trains on one thread; it keeps the last
``--val-fraction`` of its ``n`` sessions for early stopping, the floors (``MostFrequentPerScreen``,
``SuffixNGram``) count over all ``n``. Small ``n`` needs many epochs to get enough optimizer steps, large ``n``
needs few: the planned number of steps is ``--steps-per-doubling`` x log2(n) (186 at n=25, 439 at n=2000 with
the default 40), the epochs are whatever gives that many steps (at most ``--max-epochs``), so the learning-rate
schedule runs to its end; a per-point ``--time-budget`` caps the rest. Steps, epochs and seconds per point are
recorded. The ceiling is the sandbox's: the mean ``bayes_p`` of the test steps (the best possible policy's
expected action accuracy), the same at every ``n``.

One training seed per point, and single seeds are noisy: at n = 200 and 400, three different initialisations
gave 0.755-0.792 and 0.735-0.774 action accuracy, and at n = 25 0.536 vs 0.633 (measured separately), so a lone
dip such as the one at n = 400 is noise, not a property of the process.

With the defaults the run takes about 11-15 minutes on one thread (most of it training and the LM's test
predictions; the test set is 150 sessions, ~1,200 steps, to keep seven evaluations affordable).

    .venv/bin/python -m bench.policy_learning_curve [--sizes 25 50 100 200 400 800 2000] [--test 150] [--seed 11]

Writes ``bench/results/policy_learning_curve.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS_DIR, ROOT, environment, peak_rss_kib, write_results
from importers.jsonl import read_traces
from policy.baselines.floors import MostFrequentPerScreen, SuffixNGram
from policy.evaluate import EvalResult, evaluate
from policy.policy import LMPolicy
from policy.train import TrainConfig
from sandbox.generate import generate
from sandbox.scenario import scenario_by_name
from schemas.progress import progress_bar
from schemas.trace import Trace

NAME = "policy_learning_curve"
PROCESS = "warranty_claim"
SCENARIO = "only_new"
DEFAULT_SIZES = (25, 50, 100, 200, 400, 800, 2000)


def sandbox_range(sessions: int, seed: int, start_index: int, work: Path, progress: bool = True) -> list[Trace]:
    """Sessions ``start_index .. start_index + sessions - 1`` of the ``only_new`` stream (cached in ``work``)."""
    path = work / f"sandbox_{SCENARIO}_{seed}_{start_index}_{sessions}.jsonl"
    if not path.exists():
        generate(sessions, seed, path, scenario_by_name(SCENARIO), start_index=start_index, progress=progress)
    return read_traces(path)


def plan(n_sessions: int, train_steps: int, args: argparse.Namespace) -> dict[str, int]:
    """Planned optimizer steps and the epochs that give them, for ``train_steps`` LM training examples."""
    target = round(args.steps_per_doubling * math.log2(n_sessions))
    per_epoch = max(1, math.ceil(train_steps / args.batch_size))
    epochs = min(args.max_epochs, max(1, math.ceil(target / per_epoch)))
    return {
        "target_steps": target,
        "steps_per_epoch": per_epoch,
        "epochs": epochs,
        "planned_steps": per_epoch * epochs,
        "warmup_steps": max(10, target // 10),
        "eval_every": max(10, target // 6),
    }


def plot(points: list[dict[str, Any]], ceiling: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [p["n"] for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(ns, [p["lm"]["action_accuracy"] for p in points], "o-", label="LM policy")
    ax.plot(ns, [p["best_floor"]["action_accuracy"] for p in points], "s-", label="best floor")
    for p in points:
        ax.annotate(
            "n-gram" if p["best_floor"]["name"].startswith("suffix") else "per-screen", (p["n"], p["best_floor"]["action_accuracy"]), fontsize=6,
            textcoords="offset points", xytext=(0, -10), ha="center", color="tab:orange",
        )  # fmt: skip
    if ceiling is not None:
        ax.axhline(ceiling, linestyle="--", color="gray", label=f"ceiling (sandbox Bayes) {ceiling:.3f}")
    ax.set_xscale("log")
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel(f"{PROCESS} training sessions")
    ax.set_ylabel("action accuracy (held-out sessions)")
    ax.set_title(f"Learning curve: a new process ({PROCESS})")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _summary(result: EvalResult) -> dict[str, Any]:
    return {
        "name": result.predictor,
        "action_accuracy": result.overall.action_accuracy,
        "tool_accuracy": result.overall.tool_accuracy,
        "step_success": result.overall.step_success,
        "session_success": result.session_success,
        "unseen_prefix_accuracy": result.unseen_prefix.action_accuracy if result.unseen_prefix else None,
        "unseen_prefix_steps": result.unseen_prefix.steps if result.unseen_prefix else 0,
        "predict_seconds": result.predict_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--test", type=int, default=150, help="test sessions (after the largest training set)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--steps-per-doubling", type=float, default=40.0)
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--time-budget", type=float, default=150.0, help="training seconds per point, at most")
    parser.add_argument("--work", type=Path, default=ROOT / "out" / "bench")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    sizes = sorted(set(args.sizes))
    if sizes[0] < 2:
        parser.error("--sizes: at least 2 sessions per point")
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    started = time.perf_counter()

    pool = sandbox_range(sizes[-1], args.seed, 0, args.work, progress)
    test = sandbox_range(args.test, args.seed, sizes[-1], args.work, progress)
    generation_seconds = time.perf_counter() - started
    processes = {t.process_id for t in [*pool, *test]}
    if processes != {PROCESS}:
        raise RuntimeError(f"scenario {SCENARIO} generated {sorted(processes)}, expected only {PROCESS}")
    shared = {t.attributes.get("customer_id") for t in pool} & {t.attributes.get("customer_id") for t in test}

    points: list[dict[str, Any]] = []
    ceiling: float | None = None
    for n in progress_bar(sizes, desc="learning curve", unit="point", disable=not progress):
        point_started = time.perf_counter()
        train = pool[:n]
        n_val = max(1, int(n * args.val_fraction))
        lm_train = train[: n - n_val]
        schedule = plan(n, sum(len(t.steps) for t in lm_train), args)
        config = TrainConfig(
            epochs=schedule["epochs"],
            batch_size=args.batch_size,
            warmup_steps=schedule["warmup_steps"],
            eval_every=schedule["eval_every"],
            val_fraction=args.val_fraction,
            time_budget_s=args.time_budget,
            threads=1,
            seed=args.seed,
        )
        # LMPolicy.fit builds the model before train() seeds torch: seed here, so that a point's initial weights
        # do not depend on the points before it.
        torch.manual_seed(config.seed)
        fit_started = time.perf_counter()
        policy = LMPolicy(training=config, progress=progress).fit(lm_train, val_traces=train[n - n_val :])
        fit_seconds = time.perf_counter() - fit_started
        assert policy.history_ is not None
        floors = {
            f.name: evaluate(f, test, train) for f in (MostFrequentPerScreen().fit(train), SuffixNGram().fit(train))
        }
        lm = evaluate(policy, test, train)
        ceiling = lm.overall.ceiling_action
        best_name = max(floors, key=lambda name: floors[name].overall.action_accuracy)
        points.append(
            {
                "n": n,
                "lm_train_sessions": len(lm_train),
                "lm_val_sessions": n_val,
                "train_steps": sum(len(t.steps) for t in train),
                "schedule": schedule,
                "training": {
                    "seconds": fit_seconds,
                    "steps": policy.history_.steps,
                    "best_step": policy.history_.best_step,
                    "best_val_loss": policy.history_.best_val_loss,
                    "stopped": policy.history_.stopped,
                },
                "lm": _summary(lm),
                "floors": {name: _summary(r) for name, r in floors.items()},
                "best_floor": _summary(floors[best_name]),
                "ceiling_action": lm.overall.ceiling_action,
                "ceiling_type": lm.overall.ceiling_type,
                "seconds": time.perf_counter() - point_started,
            }
        )
    total_seconds = time.perf_counter() - started
    plot(points, ceiling, RESULTS_DIR / f"{NAME}.png")

    result: dict[str, Any] = {
        "protocol": {
            "process": PROCESS,
            "scenario": SCENARIO,
            "seed": args.seed,
            "sizes": sizes,
            "train_case_indexes": f"0 .. n-1 (n in {sizes})",
            "test_case_indexes": f"{sizes[-1]} .. {sizes[-1] + args.test - 1}",
            "test_sessions": len(test),
            "test_steps": sum(len(t.steps) for t in test),
            "test_customers_seen_in_training": len(shared),
            "lm_validation": f"last {args.val_fraction:.0%} of the n training sessions (at least one)",
            "model": f"default ModelConfig and tokenizer (vocab {LMPolicy.vocab_size})",
            "steps_rule": f"{args.steps_per_doubling:g} x log2(n) planned optimizer steps; "
            f"epochs = ceil(steps / steps per epoch), at most {args.max_epochs}; "
            f"time budget {args.time_budget:g} s per point",
        },
        "points": points,
        "ceiling_action": ceiling,
        "seconds": {"generation": generation_seconds, "total": total_seconds},
        "peak_rss_mib": peak_rss_kib() / 1024,
        "environment": environment(),
    }

    def fmt(value: float | None) -> str:
        return "–" if value is None else f"{value:.4f}"

    floor_names = list(points[0]["floors"])
    lines = [
        f"# Learning curve for a new process ({PROCESS})",
        "",
        f"Training: the first n `{SCENARIO}` sessions (seed {args.seed}); test: {len(test)} later sessions "
        f"({result['protocol']['test_steps']} steps, case indexes {result['protocol']['test_case_indexes']}; "
        f"{len(shared)} test customers seen in training). The LM (default configuration, one thread) keeps the "
        f"last {args.val_fraction:.0%} of its n sessions for early stopping; the floors count over all n. "
        f"Action accuracy = whole action right (type, target, value). Whole run {total_seconds / 60:.1f} min "
        f"(generation {generation_seconds:.0f} s), peak RSS {result['peak_rss_mib']:.0f} MiB.",
        "",
        "| n | LM action acc | LM tool acc | "
        + " | ".join(floor_names)
        + " | best floor | LM - best floor | ceiling | LM gap to ceiling | epochs | steps (stopped) | "
        "train s | point s |",
        "|---:|---:|---:|" + "---:|" * len(floor_names) + "---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for p in points:
        lm_acc = p["lm"]["action_accuracy"]
        best = p["best_floor"]["action_accuracy"]
        cells = [
            str(p["n"]),
            fmt(lm_acc),
            fmt(p["lm"]["tool_accuracy"]),
            *(fmt(p["floors"][name]["action_accuracy"]) for name in floor_names),
            fmt(best),
            f"{(lm_acc - best) * 100:+.1f}",
            fmt(p["ceiling_action"]),
            "–" if p["ceiling_action"] is None else f"{(p['ceiling_action'] - lm_acc) * 100:.1f}",
            str(p["schedule"]["epochs"]),
            f"{p['training']['steps']} ({p['training']['stopped']})",
            f"{p['training']['seconds']:.0f}",
            f"{p['seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Differences in points (x100). Ceiling = mean `bayes_p` of the test steps (the same test set at every n). "
        "Steps = optimizer steps done (planned: "
        f"{args.steps_per_doubling:g} x log2 n); train s = LM training seconds; point s = training plus the "
        "evaluation of the LM and both floors.",
        "",
        f"![learning curve]({NAME}.png)",
        "",
    ]
    markdown = "\n".join(lines)
    write_results(NAME, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
