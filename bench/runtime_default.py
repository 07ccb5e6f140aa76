"""Selective autopilot on the bench artefacts: how much of the work runs in the background, what it saves, and
whether quality and the error guarantee hold, against an all-manual run of the same cases.

Protocol: the default policy (``bench.policy_sandbox``, trained on sandbox cases 0..1999 of seed 7) and its
copilot feedback on cases 2500..5499 (``bench.critic_sandbox``, cached in ``out/bench``). For each alpha
(0.05 and 0.10) the nightly job retrains the feature critic on that feedback into a temporary registry
(``critic.retrain``: per-slice thresholds at alpha, delta 0.1, 30 candidates); slices whose threshold holds are
promoted to autopilot (``AutonomyStages.consider_promotion`` with the label counts of the feedback); then
``--sessions`` new cases (indices 5500.., seed 7) run as background sessions through the runtime (embedded Tansu
broker, SQLite store, simulated operators answering deferrals, 5% audits), exactly as the demo's stage 5
(``lab.demo.run_autopilot_phase``). The same cases are worked all-manually once (``sandbox.generate``'s time
model) and every run is measured against them (``lab.report``).

Targets: >= 50% of sessions fully automated; handling time >= 40% lower than all-manual; correct resolution not
lower than all-manual (the 95% Newcombe interval of the paired difference not entirely below 0); realised error
among auto-executed steps (audits) <= alpha. The paper: 45% fully automated, -39% handling time.

    .venv/bin/python -m bench.runtime_default [--sessions 1000] [--alphas 0.05 0.10]

Writes ``bench/results/runtime_default.{json,md,png}``; the runtime stores go to ``out/bench/runtime_default``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, ROOT, environment, peak_rss_kib, write_results
from bench.critic_sandbox import copilot_feedback
from critic.pipeline import MAX_CANDIDATES, PipelineConfig
from critic.registry import CriticRegistry
from critic.retrain import RetrainConfig, retrain
from critic.thresholds import SliceThresholds, ThresholdConfig
from lab.report import PAPER, AutopilotReport, plot_reports

NAME = "runtime_default"
POLICY_DIR = ROOT / "out" / "bench" / "policy_default"
WORK = ROOT / "out" / "bench" / NAME
SEED = 7
FEEDBACK_START, FEEDBACK_SESSIONS = 2500, 3000


def threshold_summary(registry_dir: Path) -> dict[str, Any]:
    """How many slice groups of the champion hold a threshold, and their coverage on the calibration rows."""
    registry = CriticRegistry(registry_dir)
    version = registry.champion()
    assert version is not None
    raw = registry.thresholds(version)
    thresholds = SliceThresholds.from_dict(raw) if raw else None
    groups = {} if thresholds is None else dict(thresholds.items())
    held = {k: r for k, r in groups.items() if r.threshold is not None}
    rows = sum(r.n_rows for r in groups.values())
    return {
        "version": version,
        "groups": len(groups),
        "with_threshold": sorted(held),
        "calibration_coverage": sum(r.n_executed for r in held.values()) / rows if rows else 0.0,
    }


def run_alpha(
    alpha: float, policy: Any, feedback_path: Path, feedback: list[Any], manual: list[Any], args: argparse.Namespace
) -> tuple[AutopilotReport, dict[str, Any]]:
    from lab.demo import run_autopilot_phase
    from sandbox.scenario import scenario_by_name

    with tempfile.TemporaryDirectory(prefix="runtime-bench-registry-") as tmp:
        registry = Path(tmp) / "registry"
        started = time.perf_counter()
        pipeline = PipelineConfig(
            thresholds=ThresholdConfig(alpha=alpha, max_candidates=MAX_CANDIDATES, granularity=args.granularity),
            progress=False,
        )
        outcome = retrain(
            str(feedback_path),
            registry,
            RetrainConfig(pipeline=pipeline, window_days=None, policy_version=policy.version_),
            report_dir=Path(tmp) / "report",
        )
        retrain_s = time.perf_counter() - started
        thresholds = threshold_summary(registry)
        print(
            f"alpha {alpha:g}: critic {outcome.version} retrained in {retrain_s:.0f} s; "
            f"{len(thresholds['with_threshold'])} of {thresholds['groups']} slices hold a threshold"
        )
        report = run_autopilot_phase(
            policy,
            registry,
            feedback,
            sessions=args.sessions,
            seed=SEED,
            scenario=scenario_by_name("default"),
            start_index=args.start,
            data_dir=WORK / f"alpha_{alpha:g}",
            manual=manual,
            audit_rate=args.audit_rate,
        )
    return report, {"retrain_seconds": round(retrain_s, 1), "thresholds": thresholds}


def markdown(reports: dict[str, AutopilotReport], extra: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    first = next(iter(reports.values()))
    n = len(first.sessions)
    lines = [
        "# Selective autopilot on the sandbox (runtime, default scenario)",
        "",
        f"`python -m bench.runtime_default --sessions {args.sessions}`: the default policy and its 3,000-session "
        f"copilot feedback (cases {FEEDBACK_START}..{FEEDBACK_START + FEEDBACK_SESSIONS - 1}, seed {SEED}); per "
        "alpha the feature critic is retrained on that feedback, slices whose threshold holds are promoted, and "
        f"{n} new cases (indices {args.start}..{args.start + n - 1}) run as background sessions through the "
        "runtime (embedded Tansu broker, SQLite store, 12 simulated operators, "
        f"{args.audit_rate:.0%} audits), against an all-manual run of the same cases. {PAPER[0].upper()}{PAPER[1:]}.",
        "",
        f"Thresholds per {args.granularity.replace('_', ' ')} (a slice is promoted on its own, with 200 labels), the "
        "fixed-sequence test starting where an error rate of alpha/2 could pass (docs/critic.md). Label: the "
        "operator accepted. The sandbox rejects 3-4% of even the best proposals at random, which leaves little "
        "room at alpha 0.05.",
        "",
        "| alpha | groups with a threshold | fully automated | steps in background | handling time (s) | "
        "vs all-manual | correct | vs all-manual (95% CI) | audited error (95% CI) | run (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, report in reports.items():
        s = report.summary()
        q = s["correct_resolution"]
        d = q["difference"]
        e = s["audited_error"]
        error = (
            "no audits"
            if e["audits"] == 0
            else f"{e['errors']}/{e['audits']} = {e['estimate']:.1%} ({e['low']:.1%} .. {e['high']:.1%})"
        )
        held = extra[name]["thresholds"]
        lines.append(
            f"| {report.alpha:g} | {len(held['with_threshold'])} of {held['groups']} | {s['fully_automated']:.1%} | "
            f"{s['step_automation']:.1%} | {s['handling_time_s']['autopilot']:.1f} | "
            f"{-s['handling_time_reduction']['estimate']:+.1%} | {q['autopilot']['estimate']:.1%} | "
            f"{d['estimate'] * 100:+.1f} pt ({d['low'] * 100:+.1f} .. {d['high'] * 100:+.1f}) | {error} | "
            f"{report.run['run_seconds']:.0f} |"
        )
    manual_time = sum(m.handling_time_s for m in first.manual) / n
    manual_ok = sum(m.correct for m in first.manual) / n
    lines += [
        f"| all-manual | — | 0% | 0% | {manual_time:.1f} | — | {manual_ok:.1%} | — | — | — |",
        "",
        f"![per-slice automation, handling time and quality]({NAME}.png)",
        "",
    ]
    for name, report in reports.items():
        lines.append(report.markdown(f"{name}: {n} sessions"))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, default=POLICY_DIR)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--start", type=int, default=FEEDBACK_START + FEEDBACK_SESSIONS, help="first case index")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.05, 0.10])
    parser.add_argument("--audit-rate", type=float, default=0.05)
    parser.add_argument(
        "--granularity",
        choices=["slice", "action_type", "process", "global"],
        default="action_type",
        help="which rows share a threshold (the demo's choice: action_type)",
    )
    args = parser.parse_args()
    if args.sessions < 1:
        raise SystemExit("--sessions: must be >= 1")

    import torch

    from lab.demo import all_manual_run
    from policy.policy import LMPolicy
    from sandbox.scenario import scenario_by_name

    torch.set_num_threads(1)
    started = time.perf_counter()
    feedback = copilot_feedback(args.policy, FEEDBACK_SESSIONS, SEED, FEEDBACK_START, "default")
    feedback_path = (
        ROOT / "out" / "bench" / f"critic_feedback_default_{SEED}_{FEEDBACK_START}_{FEEDBACK_SESSIONS}.jsonl"
    )
    policy = LMPolicy.load(args.policy)
    mark = time.perf_counter()
    manual = all_manual_run(args.sessions, SEED, scenario_by_name("default"), args.start)
    manual_s = time.perf_counter() - mark
    print(f"all-manual run of cases {args.start}..{args.start + args.sessions - 1}: {manual_s:.0f} s")

    reports: dict[str, AutopilotReport] = {}
    extra: dict[str, dict[str, Any]] = {}
    for alpha in args.alphas:
        name = f"alpha {alpha:g}"
        reports[name], extra[name] = run_alpha(alpha, policy, feedback_path, feedback, manual, args)
        print(reports[name].markdown(name))
    plot = plot_reports(reports, RESULTS_DIR / f"{NAME}.png", title="Selective autopilot")
    result = {
        "environment": environment(),
        "protocol": {
            "policy": str(args.policy),
            "feedback": str(feedback_path),
            "feedback_rows": len(feedback),
            "seed": SEED,
            "case_indices": [args.start, args.start + args.sessions - 1],
            "audit_rate": args.audit_rate,
            "granularity": args.granularity,
        },
        "all_manual_seconds": round(manual_s, 1),
        "runs": {name: {**report.to_dict(), **extra[name]} for name, report in reports.items()},
        "plot": str(plot.relative_to(ROOT)),
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_kib": peak_rss_kib(),
    }
    json_path, md_path = write_results(NAME, result, markdown(reports, extra, args))
    print(f"\nresults: {json_path}, {md_path}, {plot} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
