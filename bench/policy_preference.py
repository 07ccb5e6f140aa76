"""Do copilot corrections improve the policy? The trace-only LM against the same LM after a preference update.

Protocol (sandbox, one stream of cases, case index = time; nothing of the future is seen):

1. the LM policy trains on sessions ``0 .. --train-sessions - 1`` (default configuration, one thread, a time
   budget);
2. copilot phase: the trace-only policy proposes on the next ``--correction-sessions`` cases, the simulated
   operators review (``sandbox.feedback_collection.collect_copilot_feedback``); the rejections with reason
   ``model_error`` and an operator action become preference pairs (``policy.preference.preference_pairs``);
3. ``policy.preference.preference_update`` (DPO with the trace-only LM as the reference model and its
   training traces as the anchor) gives the updated policy;
4. fresh cases (the next ``--fresh-sessions``, never seen by either): both policies run the copilot on the
   same cases with the same seed (acceptance overall and per proposed action type), and both are scored
   teacher-forced on the generated traces of those cases (step accuracy per gold action type).

Targets (issue 15): acceptance up by >= 3 points, no action type's acceptance down by more than 1 point.

    .venv/bin/python -m bench.policy_preference [--train-sessions 600] [--correction-sessions 300] [--fresh-sessions 200]
        [--matched-anchor 0.5] [--drop-value-pairs] [--gate] [--name policy_preference]

``--gate`` uses ``policy.preference.gated_preference_update``: a quarter of the pairs held out, the update kept
only if it wins more of them and no action type loses more than a point on the correction cases' own traces.
``--matched-anchor`` is the share of the trace anchor drawn from the screens of each step's pairs (0: from all the
traces, as before 2026-12-05). ``--drop-value-pairs`` is a diagnosis: it leaves out the pairs whose two actions
differ only in the value (which option, which wording, what was typed).

Writes ``bench/results/policy_preference.{json,md}``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from bench.common import ROOT, environment, peak_rss_kib, write_results
from critic.feedback import CopilotFeedback
from importers.jsonl import read_traces
from policy.evaluate import EvalResult, evaluate
from policy.policy import LMPolicy
from policy.preference import (
    PreferenceConfig,
    gated_preference_update,
    is_value_pair,
    preference_pairs,
    preference_update,
)
from policy.train import TrainConfig
from sandbox.feedback_collection import collect_copilot_feedback
from sandbox.generate import generate
from sandbox.scenario import scenario_by_name
from schemas.trace import Trace

NAME = "policy_preference"
WORK = ROOT / "out" / "bench"
SCENARIO = "default"


def _traces(sessions: int, seed: int, start: int) -> list[Trace]:
    path = WORK / f"sandbox_{SCENARIO}_{seed}_{start}_{sessions}.jsonl"
    if not path.exists():
        generate(sessions, seed, path, scenario_by_name(SCENARIO), start_index=start, progress=False)
    return list(read_traces(path))


def _acceptance(feedback: CopilotFeedback) -> dict[str, Any]:
    summary = feedback.summary()
    return {
        "rows": summary["rows"],
        "acceptance_rate": summary["acceptance_rate"],
        "per_action_type": {t: v["acceptance_rate"] for t, v in summary["per_action_type"].items()},
        "rows_per_action_type": {t: v["rows"] for t, v in summary["per_action_type"].items()},
    }


def _accuracy(result: EvalResult) -> dict[str, Any]:
    return {
        "steps": result.overall.steps,
        "action_accuracy": result.overall.action_accuracy,
        "per_action_type": {t: m.action_accuracy for t, m in result.per_action_type.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-sessions", type=int, default=600)
    parser.add_argument("--correction-sessions", type=int, default=300)
    parser.add_argument("--fresh-sessions", type=int, default=200)
    parser.add_argument("--train-budget", type=float, default=300.0, help="seconds of trace training")
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--sft-weight", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument(
        "--matched-anchor",
        type=float,
        default=PreferenceConfig().matched_anchor,
        help="share of the trace anchor drawn from the pairs' screens (0: all of it from all the traces)",
    )
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument(
        "--drop-value-pairs", action="store_true", help="diagnosis: leave out pairs that differ only in the value"
    )
    parser.add_argument("--gate", action="store_true", help="keep the update only if held-out checks pass")
    parser.add_argument("--name", default=NAME, help="results file name (bench/results/NAME.{json,md})")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    seed = args.seed
    train = _traces(args.train_sessions, seed, 0)
    fresh_start = args.train_sessions + args.correction_sessions
    fresh_traces = _traces(args.fresh_sessions, seed, fresh_start)

    tick = time.perf_counter()
    base = LMPolicy(training=TrainConfig(epochs=3, threads=1, time_budget_s=args.train_budget, seed=seed))
    base.progress = False
    base.fit(train)
    train_s = time.perf_counter() - tick
    assert base.history_ is not None

    tick = time.perf_counter()
    scenario = scenario_by_name(SCENARIO)
    corrections = collect_copilot_feedback(
        base, args.correction_sessions, seed, scenario, start_index=args.train_sessions, progress=False
    )
    pairs = preference_pairs(corrections.records)
    if args.drop_value_pairs:
        pairs = [pair for pair in pairs if not is_value_pair(pair)]
    collect_s = time.perf_counter() - tick

    with tempfile.TemporaryDirectory() as tmp:  # an independent copy of the trace-only policy to update
        base.save(Path(tmp) / "policy")
        updated = LMPolicy.load(Path(tmp) / "policy")
    config = PreferenceConfig(
        beta=args.beta,
        sft_weight=args.sft_weight,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        matched_anchor=args.matched_anchor,
        seed=seed,
    )
    gate: dict[str, Any] | None = None
    if args.gate:
        # the gate's held-out traces: the correction cases as the operators alone would have run them
        correction_traces = _traces(args.correction_sessions, seed, args.train_sessions)
        report = gated_preference_update(updated, pairs, train, correction_traces, config)
        update = report.history
        gate = {k: v for k, v in asdict(report).items() if k != "history"}
    else:
        update = preference_update(updated, pairs, train, config)

    results: dict[str, dict[str, Any]] = {}
    for label, policy in (("trace_only", base), ("preference_updated", updated)):
        tick = time.perf_counter()
        feedback = collect_copilot_feedback(
            policy, args.fresh_sessions, seed, scenario, start_index=fresh_start, progress=False
        )
        offline = evaluate(policy, fresh_traces)
        results[label] = {
            "version": policy.version_,
            "copilot": _acceptance(feedback),
            "offline": _accuracy(offline),
            "seconds": time.perf_counter() - tick,
        }
    before, after = results["trace_only"], results["preference_updated"]
    types = sorted(set(before["copilot"]["per_action_type"]) | set(after["copilot"]["per_action_type"]))
    deltas = {
        t: (after["copilot"]["per_action_type"].get(t) or 0.0) - (before["copilot"]["per_action_type"].get(t) or 0.0)
        for t in types
    }
    acceptance_gain = after["copilot"]["acceptance_rate"] - before["copilot"]["acceptance_rate"]
    accuracy_gain = after["offline"]["action_accuracy"] - before["offline"]["action_accuracy"]
    result = {
        "protocol": {
            "scenario": SCENARIO,
            "seed": seed,
            "train_sessions": args.train_sessions,
            "correction_sessions": [args.train_sessions, fresh_start - 1],
            "fresh_sessions": [fresh_start, fresh_start + args.fresh_sessions - 1],
        },
        "training": {
            "seconds": train_s,
            "steps": base.history_.steps,
            "epochs_done": base.history_.epochs_done,
            "stopped": base.history_.stopped,
        },
        "corrections": {
            "collect_seconds": collect_s,
            "copilot_rows": len(corrections.records),
            "acceptance_rate": corrections.summary()["acceptance_rate"],
            "model_error_pairs": len(pairs),
        },
        "update": {k: v for k, v in asdict(update).items() if k != "losses"} | {"config": asdict(config)},
        "gate": gate,
        "results": results,
        "acceptance_gain": acceptance_gain,
        "acceptance_gain_per_action_type": deltas,
        "step_accuracy_gain": accuracy_gain,
        "targets": {
            "acceptance_up_3_points": acceptance_gain >= 0.03,
            "no_action_type_down_more_than_1_point": all(d >= -0.01 for d in deltas.values()),
        },
        "seconds_total": time.perf_counter() - started,
        "peak_rss_mib": peak_rss_kib() / 1024,
        "environment": environment(),
    }
    lines = [
        "# Copilot corrections as preferences: trace-only LM vs after a DPO update",
        "",
        f"Sandbox `{SCENARIO}`, seed {seed}. Trained on {args.train_sessions} sessions ({base.history_.steps} steps, "
        f"{train_s:.0f} s); copilot on the next {args.correction_sessions}: {len(corrections.records)} reviews, "
        f"{len(pairs)} model-error corrections used as preference pairs (DPO beta {args.beta}, trace anchor weight "
        f"{args.sft_weight}, {args.matched_anchor:.0%} of it from the pairs' screens, {update.steps} steps, {update.seconds:.0f} s; mean preference margin "
        f"{update.margin_before:+.2f} -> {update.margin_after:+.2f} nats). Fresh cases: the next {args.fresh_sessions}.",
        "",
        "| | copilot acceptance | offline step (action) accuracy |",
        "|---|---:|---:|",
    ]
    for label in ("trace_only", "preference_updated"):
        r = results[label]
        lines.append(f"| {label} | {r['copilot']['acceptance_rate']:.4f} | {r['offline']['action_accuracy']:.4f} |")
    lines += [
        f"| difference | {100 * acceptance_gain:+.1f} pt | {100 * accuracy_gain:+.1f} pt |",
        "",
        "| proposed action type | rows (trace-only) | acceptance trace-only | after update | difference |",
        "|---|---:|---:|---:|---:|",
    ]
    for t in types:
        b = before["copilot"]["per_action_type"].get(t)
        a = after["copilot"]["per_action_type"].get(t)
        rows = before["copilot"]["rows_per_action_type"].get(t, 0)
        lines.append(
            f"| {t} | {rows} | {'–' if b is None else f'{b:.4f}'} | {'–' if a is None else f'{a:.4f}'} | "
            f"{100 * deltas[t]:+.1f} pt |"
        )
    if gate is not None:
        lines += ["", f"Gate: {gate['reason']} (held-out pairs won {gate['pairs_won_before']:.3f} -> "
                  f"{gate['pairs_won_after']:.3f}; per-type accuracy on the correction cases' traces "
                  f"{gate['accuracy_before']} -> {gate['accuracy_after']})."]  # fmt: skip
    lines += ["", f"Targets: {result['targets']}. Whole run {result['seconds_total'] / 60:.1f} min."]
    markdown = "\n".join(lines) + "\n"
    write_results(args.name, result, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
