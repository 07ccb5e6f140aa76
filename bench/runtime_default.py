"""Selective autopilot on the bench artefacts: how much of the work runs in the background, what it saves, and
whether quality and the error guarantee hold, against an all-manual run of the same cases.

Protocol: the default policy (``bench.policy_sandbox``, trained on sandbox cases 0..1999 of seed 7) and its
copilot feedback on cases 2500.. (``--feedback-sessions``, 3,000 by default; ``bench.critic_sandbox``, cached in
``out/bench``). For each alpha and each critic label (``--label``, the operators' graded label, and
``--compare-label``, the paper's accept label) the nightly job retrains the feature critic on that feedback into
a temporary registry (``critic.retrain``: thresholds at alpha, delta 0.1, 30 candidates); slices whose threshold
holds are promoted to autopilot (``AutonomyStages.consider_promotion`` with the label counts of the feedback);
then ``--sessions`` new cases (indices 5500.., seed 7) run as background sessions through the runtime (embedded
Tansu broker, SQLite store, simulated operators answering deferrals, 5% after-the-fact audits reviewed by the
simulated QA reviewers), exactly as the demo's stage 5 (``lab.demo.run_autopilot_phase``). The same cases are
worked all-manually once (``sandbox.generate``'s time model) and every run is measured against them
(``lab.report``).

Targets: >= 50% of sessions fully automated; handling time >= 40% lower than all-manual; correct resolution
non-inferior to all-manual (point estimate of the paired difference >= 0 and its lower 95% bound >= -3 points);
realised unacceptable-action rate among auto-executed steps (the after-the-fact reviews) <= alpha. The paper: 45%
fully automated, -39% handling time.

The JSON's top-level ``headline`` holds the figures of the ``--headline-alpha`` run under ``--label`` (exactly
``fully_automated``, ``handling_time_reduction``, ``quality_difference``, ``quality_difference_low``,
``realised_error``, ``realised_error_high``, ``alpha``, ``coverage_share_of_oracle``,
``sessions_to_autonomy_new_process``; the last two from ``critic_sandbox.json`` and
``critic_time_to_autonomy.json`` when present, else null with a note in ``headline_notes``), and
``headline_accept_label`` the same figures of the accept-label run (its realised error under the accept label).

    .venv/bin/python -m bench.runtime_default [--sessions 1000] [--alphas 0.05] [--feedback-sessions 3000]

Writes ``bench/results/runtime_default.{json,md,png}``; the runtime stores go to ``out/bench/runtime_default``.
``--refresh-critic-figures`` only re-reads the critic benches' figures (coverage, time to autonomy; their own runs)
into the existing results.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, ROOT, environment, peak_rss_kib, write_results
from bench.critic_sandbox import copilot_feedback, copilot_feedback_path
from critic.base import DEFAULT_LABEL, LABEL_RULES
from critic.pipeline import MAX_CANDIDATES, PipelineConfig
from critic.registry import CriticRegistry
from critic.retrain import RetrainConfig, retrain
from critic.thresholds import SliceThresholds, ThresholdConfig
from lab.report import PAPER, AutopilotReport, critic_figures, headline_markdown, non_inferiority, plot_reports

NAME = "runtime_default"
POLICY_DIR = ROOT / "out" / "bench" / "policy_default"
WORK = ROOT / "out" / "bench" / NAME
SEED = 7
FEEDBACK_START, FEEDBACK_SESSIONS = 2500, 3000
ACCEPT_LABEL = "accepted"  # the paper's label: anything but an accept is an error
# The operators' graded label: the critic's default once it is not the accept label, else "acceptable".
GRADED_LABEL = DEFAULT_LABEL if DEFAULT_LABEL != ACCEPT_LABEL else "acceptable"


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
    alpha: float,
    policy: Any,
    feedback_path: Path,
    feedback: list[Any],
    manual: list[Any],
    args: argparse.Namespace,
    label: str = GRADED_LABEL,
) -> tuple[AutopilotReport, dict[str, Any]]:
    from lab.demo import run_autopilot_phase
    from sandbox.scenario import scenario_by_name

    with tempfile.TemporaryDirectory(prefix="runtime-bench-registry-") as tmp:
        registry = Path(tmp) / "registry"
        started = time.perf_counter()
        pipeline = PipelineConfig(
            thresholds=ThresholdConfig(alpha=alpha, max_candidates=MAX_CANDIDATES, granularity=args.granularity),
            label=label,  # type: ignore[arg-type]  # checked against LABEL_RULES by the argument parser
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
            f"alpha {alpha:g}, label {label}: critic {outcome.version} retrained in {retrain_s:.0f} s; "
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
            data_dir=WORK / f"alpha_{alpha:g}_{label}",
            manual=manual,
            audit_rate=args.audit_rate,
            audit_mode=args.audit_mode,
        )
    return report, {"retrain_seconds": round(retrain_s, 1), "thresholds": thresholds, "label": label}


CRITIC_FIGURES_NOTE = (
    "coverage_share_of_oracle and sessions_to_autonomy_new_process come from bench/results/critic_sandbox.json "
    "and critic_time_to_autonomy.json (their own runs), each label's beside its headline"
)


def both_labels_critic_figures(alpha: float) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The critic benches' figures at ``alpha`` for the operators' label and for the accept label, and their notes
    (the accept label's marked so)."""
    figures, notes = critic_figures(RESULTS_DIR, alpha)
    accept_figures, accept_notes = critic_figures(RESULTS_DIR, alpha, label="accept")
    return figures, accept_figures, [*notes, *(f"accept label: {note}" for note in accept_notes)]


def headline_figures(
    reports: dict[str, AutopilotReport], extra: dict[str, dict[str, Any]], args: argparse.Namespace
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]]:
    """The ``headline`` (the ``--headline-alpha`` run under ``--label``, realised error under the operators'
    label), the ``headline_accept_label`` (the accept-label run, realised error under the accept label) and notes."""
    figures, accept_figures, notes = both_labels_critic_figures(args.headline_alpha)

    def pick(label: str) -> AutopilotReport | None:
        for name, report in reports.items():
            if extra[name]["label"] == label and abs(report.alpha - args.headline_alpha) < 1e-9:
                return report
        return None

    graded, accept = pick(args.label), pick(args.compare_label) if args.compare_label else None
    headline = None if graded is None else {**graded.headline("operators"), **figures}
    accept_headline = None if accept is None else {**accept.headline("accept"), **accept_figures}
    if graded is None:
        notes.append(f"no run at alpha {args.headline_alpha:g} with label {args.label}: no headline")
    if accept is None:
        notes.append("no accept-label run: no headline_accept_label")
    if figures["coverage_share_of_oracle"] is not None or figures["sessions_to_autonomy_new_process"] is not None:
        notes.append(CRITIC_FIGURES_NOTE)
    return headline, accept_headline, notes


def markdown(
    reports: dict[str, AutopilotReport],
    extra: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    headline: tuple[dict[str, Any] | None, dict[str, Any] | None, list[str]],
) -> str:
    first = next(iter(reports.values()))
    n = len(first.sessions)
    lines = [
        "# Selective autopilot on the sandbox (runtime, default scenario)",
        "",
        f"`python -m bench.runtime_default --sessions {args.sessions} --feedback-sessions {args.feedback_sessions}`: "
        f"the default policy ({'bare' if args.no_reply_guard else 'behind the reply guard, as the service runs it'}) "
        f"and its own {args.feedback_sessions:,}-session copilot feedback (cases {FEEDBACK_START}.."
        f"{FEEDBACK_START + args.feedback_sessions - 1}, seed {SEED}); per alpha and critic label the feature critic "
        "is retrained on that feedback, slices whose threshold holds are promoted, and "
        f"{n} new cases (indices {args.start}..{args.start + n - 1}) run as background sessions through the "
        "runtime (embedded Tansu broker, SQLite store, 12 simulated operators and QA reviewers, "
        f"{args.audit_rate:.0%} audits {args.audit_mode} execution), against an all-manual run of the same cases. "
        f"{PAPER[0].upper()}{PAPER[1:]}.",
        "",
        f"Thresholds: {args.granularity.replace('_', ' ')} "
        f"({'global -> action type -> slice cells fixed by row counts, session-level bounds; a member slice is promoted with its cell' if args.granularity == 'pooled' else 'a slice is promoted on its own, with 200 labels'}), "
        "the fixed-sequence test starting where an error rate of alpha/2 could pass (docs/critic.md). Labels: "
        f"`{args.label}` (the operators' graded label) and `{args.compare_label}` (the paper's accept label). The "
        "realised error comes from the after-the-fact reviews of a uniform 5% sample of the executed steps "
        "(docs/runtime.md): unacceptable = model error or other, environment left out; under the accept label "
        "anything but accept.",
        "",
        "## Headline",
        "",
    ]
    graded, accept, notes = headline
    if graded is None:
        lines.append("No headline run (see the notes).")
    else:
        lines.append(headline_markdown(graded, accept))
    lines += [f"- {note}" for note in notes]
    lines += [
        "",
        "| alpha | label | groups with a threshold | fully automated | steps in background | handling time (s) | "
        "vs all-manual | correct | vs all-manual (95% CI) | non-inferior | realised error (95% CI) | run (s) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for name, report in reports.items():
        s = report.summary()
        q = s["correct_resolution"]
        d = q["difference"]
        label = extra[name]["label"]
        e = report.realised["accept" if label == ACCEPT_LABEL else "operators"]
        error = (
            "no reviews"
            if e.estimate is None or e.low is None or e.high is None
            else f"{e.errors}/{e.reviewed} = {e.estimate:.1%} ({e.low:.1%} .. {e.high:.1%})"
        )
        held = extra[name]["thresholds"]
        lines.append(
            f"| {report.alpha:g} | {label} | {len(held['with_threshold'])} of {held['groups']} | "
            f"{s['fully_automated']:.1%} | {s['step_automation']:.1%} | {s['handling_time_s']['autopilot']:.1f} | "
            f"{-s['handling_time_reduction']['estimate']:+.1%} | {q['autopilot']['estimate']:.1%} | "
            f"{d['estimate'] * 100:+.1f} pt ({d['low'] * 100:+.1f} .. {d['high'] * 100:+.1f}) | "
            f"{'pass' if report.non_inferior else 'fail'} | {error} | {report.run['run_seconds']:.0f} |"
        )
    manual_time = sum(m.handling_time_s for m in first.manual) / n
    manual_ok = sum(m.correct for m in first.manual) / n
    lines += [
        f"| all-manual | — | — | 0% | 0% | {manual_time:.1f} | — | {manual_ok:.1%} | — | — | — | — |",
        "",
        f"![per-slice automation, handling time and quality]({NAME}.png)",
        "",
    ]
    for name, report in reports.items():
        lines.append(report.markdown(f"{name}: {n} sessions"))
    return "\n".join(lines)


def refresh_critic_figures() -> None:
    """Re-read the critic benches' figures (coverage, time to autonomy) into the existing results, both labels,
    without re-running the sessions: those figures come from their own benches, which may finish later."""
    import json

    json_path, md_path = RESULTS_DIR / f"{NAME}.json", RESULTS_DIR / f"{NAME}.md"
    result = json.loads(json_path.read_text())
    alpha = result["protocol"]["headline_alpha"]
    figures, accept_figures, figure_notes = both_labels_critic_figures(alpha)
    for key, values in (("headline", figures), ("headline_accept_label", accept_figures)):
        if result.get(key) is not None:
            result[key].update(values)
    notes = [n for n in result.get("headline_notes", []) if "critic_" not in n]
    notes += [*figure_notes, CRITIC_FIGURES_NOTE]
    result["headline_notes"] = notes
    text = md_path.read_text()
    start, end = text.index("| figure | operators' label"), text.index("| alpha | label |")
    block = headline_markdown(result["headline"], result.get("headline_accept_label"))
    block += "\n" + "".join(f"- {note}\n" for note in notes) + "\n"
    md_path.write_text(text[:start] + block + text[end:])
    json_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"critic figures refreshed in {json_path} and {md_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--refresh-critic-figures",
        action="store_true",
        help="only re-read the critic benches' figures into the existing results (no sessions are run)",
    )
    parser.add_argument("--policy", type=Path, default=POLICY_DIR)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument(
        "--feedback-sessions", type=int, default=FEEDBACK_SESSIONS, help="copilot sessions for the critic"
    )
    parser.add_argument("--start", type=int, default=FEEDBACK_START + FEEDBACK_SESSIONS, help="first case index")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.05])
    parser.add_argument("--headline-alpha", type=float, default=0.05)
    parser.add_argument("--label", choices=sorted(LABEL_RULES), default=GRADED_LABEL, help="the headline's label")
    parser.add_argument(
        "--compare-label", choices=[*sorted(LABEL_RULES), ""], default=ACCEPT_LABEL, help="'' for no comparison"
    )
    parser.add_argument("--no-reply-guard", action="store_true", help="run the bare policy (policy.replies off)")
    parser.add_argument("--audit-rate", type=float, default=0.05)
    parser.add_argument("--audit-mode", choices=["after", "before"], default="after")
    parser.add_argument(
        "--granularity",
        choices=["pooled", "slice", "action_type", "process", "global"],
        default="pooled",
        help="which rows share a threshold (the pipeline's and the demo's choice: pooled)",
    )
    args = parser.parse_args()
    if args.refresh_critic_figures:
        refresh_critic_figures()
        return
    if args.sessions < 1 or args.feedback_sessions < 1:
        raise SystemExit("--sessions, --feedback-sessions: must be >= 1")
    if args.start < FEEDBACK_START + args.feedback_sessions:
        raise SystemExit("--start: the new cases must come after the feedback cases")

    import torch

    from lab.demo import all_manual_run
    from policy.combined import load_policy
    from policy.replies import with_reply_guard
    from sandbox.scenario import scenario_by_name

    torch.set_num_threads(1)
    started = time.perf_counter()
    # The critic is calibrated on feedback of the policy exactly as it runs here (with or without the reply guard):
    # the guarantee assumes the calibration proposals and the gated ones come from the same policy.
    feedback = copilot_feedback(
        args.policy, args.feedback_sessions, SEED, FEEDBACK_START, "default", reply_guard=not args.no_reply_guard
    )
    feedback_path = copilot_feedback_path(
        args.policy, args.feedback_sessions, SEED, FEEDBACK_START, "default", reply_guard=not args.no_reply_guard
    )
    # As the service runs it (AUTOPILOT_REPLY_GUARD).
    policy = with_reply_guard(load_policy(args.policy), not args.no_reply_guard)
    mark = time.perf_counter()
    manual = all_manual_run(args.sessions, SEED, scenario_by_name("default"), args.start)
    manual_s = time.perf_counter() - mark
    print(f"all-manual run of cases {args.start}..{args.start + args.sessions - 1}: {manual_s:.0f} s")

    reports: dict[str, AutopilotReport] = {}
    extra: dict[str, dict[str, Any]] = {}
    labels = [args.label] + ([args.compare_label] if args.compare_label and args.compare_label != args.label else [])
    for alpha in args.alphas:
        for label in labels:
            name = f"alpha {alpha:g}, {label}"
            reports[name], extra[name] = run_alpha(alpha, policy, feedback_path, feedback, manual, args, label)
            print(reports[name].markdown(name))
    headline = headline_figures(reports, extra, args)
    graded, accept, notes = headline
    if graded is not None:
        print("\n" + headline_markdown(graded, accept))
    plot = plot_reports(reports, RESULTS_DIR / f"{NAME}.png", title="Selective autopilot")
    result = {
        "headline": graded,
        "headline_accept_label": accept,
        "headline_notes": notes,
        "headline_checks": {
            "non_inferior": None if graded is None else non_inferiority(graded),
            "non_inferior_accept_label": None if accept is None else non_inferiority(accept),
        },
        "environment": environment(),
        "protocol": {
            "policy": str(args.policy),
            "feedback": str(feedback_path),
            "feedback_rows": len(feedback),
            "seed": SEED,
            "case_indices": [args.start, args.start + args.sessions - 1],
            "audit_rate": args.audit_rate,
            "audit_mode": args.audit_mode,
            "granularity": args.granularity,
            "reply_guard": not args.no_reply_guard,
            "labels": labels,
            "headline_alpha": args.headline_alpha,
        },
        "all_manual_seconds": round(manual_s, 1),
        "runs": {name: {**report.to_dict(), **extra[name]} for name, report in reports.items()},
        "plot": str(plot.relative_to(ROOT)),
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_kib": peak_rss_kib(),
    }
    json_path, md_path = write_results(NAME, result, markdown(reports, extra, args, headline))
    print(f"\nresults: {json_path}, {md_path}, {plot} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
