"""``autopilot demo``: the main job end to end on embedded defaults.

Stages so far: (1) the logging stage: the sandbox BPM generates cases, simulated operators work them on the
real BPMN engine, traces are written, and the sandbox's own ceiling per action type is printed; (2) a copilot
acceptance check of the best possible policy; (3) the next-UI-action policy is trained on the earlier traces
and evaluated on the later ones (a time split) beside the two floors and the ceiling; (4) a copilot phase of new
cases with the trained policy, whose feedback trains, calibrates and thresholds the critic (the nightly job, into
a registry), printed beside the policy's own confidence. The autopilot stage extends this same command.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any


def _demo(args: argparse.Namespace) -> int:
    from sandbox.ceiling import render_ceiling, summarise
    from sandbox.copilot import run_copilot
    from sandbox.generate import generate
    from sandbox.scenario import scenario_by_name
    from schemas import Verdict

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scenario = scenario_by_name(args.scenario)
    started = time.perf_counter()

    print(f"[1/4] logging stage: {args.sessions} cases worked by simulated operators ({scenario.name} scenario)")
    traces_path = out / "traces.jsonl"
    summary = generate(args.sessions, args.seed, traces_path, scenario)
    print(summary.render())
    table = summarise(summary.ceiling_samples)  # collected while generating: no second read of the file
    print("\nSandbox ceiling (best possible policy that sees only the UI state), by action type:")
    print(render_ceiling(table))

    print(f"\n[2/4] copilot check: the best possible policy proposes, operators review ({args.copilot} cases)")
    steps = run_copilot(args.copilot, args.seed + 1, scenario=scenario, start_index=args.sessions)
    accepted: dict[str, list[bool]] = defaultdict(list)
    for step in steps:
        accepted[step.proposed.type.value].append(step.verdict == Verdict.ACCEPT)
    rates = {t: sum(v) / len(v) for t, v in sorted(accepted.items())}
    print("| action type | proposals | accepted |\n|---|---:|---:|")
    for t, v in sorted(accepted.items()):
        print(f"| {t} | {len(v)} | {rates[t]:.1%} |")

    report: dict[str, Any] = {
        "scenario": scenario.name,
        "seed": args.seed,
        "sessions": summary.sessions,
        "steps": summary.steps,
        "sessions_per_s": summary.sessions / summary.seconds,
        "correct_resolution_all_manual": summary.correct / summary.sessions,
        "avg_handling_time_s": summary.handling_time_s / summary.sessions,
        "ceiling_by_action_type": {r.group: {"action": r.action, "action_type": r.action_type} for r in table},
        "copilot_acceptance_bayes_policy": rates,
    }
    report["policy"] = _policy_stage(traces_path, out / "policy", args.policy_time_budget, args.seed)
    report["critic"] = _critic_stage(
        out, args.critic_sessions, args.seed + 2, scenario.name, start_index=args.sessions + args.copilot
    )

    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\ntraces: {traces_path}\npolicy: {out / 'policy'}\nfeedback: {out / 'feedback.jsonl'}\n"
        f"critic registry: {out / 'registry'} (report: {report['critic']['report']})\nsummary: {out / 'summary.json'}"
    )
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


def _policy_stage(traces_path: Path, model_dir: Path, time_budget: float, seed: int) -> dict[str, Any]:
    from policy.policy import LMPolicy
    from policy.report import compare_with_floors
    from policy.train import TrainConfig
    from sandbox.generate import read_traces

    traces = list(read_traces(traces_path))
    cut = int(len(traces) * 0.8)
    train, test = traces[:cut], traces[cut:]
    print(
        f"\n[3/4] policy: training the default model on the first {len(train)} cases "
        f"(at most {time_budget:.0f} s on one thread), testing on the last {len(test)}"
    )
    policy = LMPolicy(training=TrainConfig(epochs=3, threads=1, time_budget_s=time_budget, seed=seed)).fit(train)
    policy.save(model_dir)
    report = compare_with_floors(policy, test, train)
    print(report.markdown)
    results = report.results
    history = policy.history_
    return {
        "model_dir": str(model_dir),
        "version": policy.version_,
        "training_seconds": history.seconds if history else None,
        "action_accuracy": {name: r.overall.action_accuracy for name, r in results.items()},
        "ceiling": results["lm policy"].overall.ceiling_action,
    }


def _critic_stage(out: Path, sessions: int, seed: int, scenario_name: str, start_index: int) -> dict[str, Any]:
    """Copilot phase with the trained policy, then the nightly job on its feedback: train and calibrate the
    critic, choose per-slice thresholds, compare with the policy's own confidence, register and promote."""
    import torch

    from critic.feedback import collect_copilot_feedback, write_feedback
    from critic.retrain import RetrainConfig, retrain
    from policy.policy import LMPolicy
    from sandbox.scenario import scenario_by_name

    print(
        f"\n[4/4] critic: copilot phase of {sessions} new cases (the trained policy proposes every step, operators "
        "accept or correct), then train, calibrate and threshold the critic"
    )
    torch.set_num_threads(1)
    policy = LMPolicy.load(out / "policy")
    feedback = collect_copilot_feedback(
        policy, sessions, seed, scenario_by_name(scenario_name), start_index=start_index
    )
    feedback_path = write_feedback(feedback.records, out / "feedback.jsonl", truth=feedback.truth)
    stats = feedback.summary()
    print(f"{stats['rows']} proposals reviewed, {stats['acceptance_rate']:.1%} accepted")
    registry = out / "registry"
    outcome = retrain(
        str(feedback_path), registry, RetrainConfig(window_days=None, policy_version=policy.version_),
        report_dir=out / "critic_report",
    )  # fmt: skip
    report_md = outcome.report.read_text()
    start = report_md.index("## Against the policy")
    print(report_md[start:].split("![reliability]")[0].rstrip())
    print(f"critic {outcome.version}: {'promoted' if outcome.promoted else 'not promoted'} ({outcome.reason})")
    return {
        "feedback": stats,
        "version": outcome.version,
        "promoted": outcome.promoted,
        "metrics": outcome.metrics,
        "report": str(outcome.report),
        "registry": str(registry),
    }


def register(commands: Any) -> None:
    demo = commands.add_parser("demo", help="run the main job end to end on embedded defaults")
    demo.add_argument("--out", default="out/demo", help="where traces and the summary go")
    demo.add_argument("--sessions", type=int, default=2000)
    demo.add_argument("--copilot", type=int, default=300, help="cases for the copilot acceptance check")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--scenario", default="default")
    demo.add_argument("--policy-time-budget", type=float, default=300.0, help="seconds of policy training")
    demo.add_argument("--critic-sessions", type=int, default=800, help="copilot cases whose feedback trains the critic")
    demo.set_defaults(handler=_demo)
