"""``autopilot demo``: the main job end to end on embedded defaults.

Stages: (1) the logging stage: the sandbox BPM generates cases, simulated operators work them on the real BPMN
engine, traces are written, and the sandbox's own ceiling per action type is printed; (2) a copilot acceptance
check of the best possible policy; (3) the next-UI-action policy (``policy.combined.CombinedPolicy``: the LM and
the simple predictors, each answering where held-out cases show it is better) is trained on the earlier traces and
evaluated on the later ones (a time split) beside the two floors and the ceiling, with which predictor it chose
where; (4) a copilot phase of new cases with the trained policy, whose feedback trains, calibrates and thresholds
the critic (the nightly job, into a registry), printed beside the policy's own confidence; (5) the autopilot:
slices with a holding threshold are promoted, and new cases run as background sessions through the runtime
(embedded Kafka broker, SQLite store, simulated operators answering deferrals), measured against an all-manual
run of the same cases (``lab.report``).

Stage 5's phase (``run_autopilot_phase``) is also what ``bench/runtime_default.py`` runs on the bench artefacts.
Every stage's wall time is printed at the end: the whole demo is meant to finish within 15 minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandbox.harness import SandboxRuntime

if TYPE_CHECKING:  # the heavy imports stay lazy: `autopilot --help` must start fast
    from lab.report import AutopilotReport, ManualResult
    from sandbox.adapter import SandboxAdapter
    from sandbox.operators import SimOperator
    from sandbox.scenario import Scenario
    from schemas import FeedbackRecord, SliceKey
    from service.runtime.worker import ProposalPolicy

SMALL_BATCH = 8  # states per policy call in the demo's LM stages (see _policy_stage for the measurement)
# Cases open at once in the copilot phase: each round's batch is split between the two policy processes (8 states
# each). The reviews do not depend on it (the same 1,936 reviews of 200 cases at 8, 16 and 32; 15.6 / 14.3 / 13.9 s).
COPILOT_CONCURRENCY = 16
DEMO_FRACTIONS = (0.35, 0.1, 0.45, 0.1)  # fit, calibrate, threshold, test (the nightly job's default: 50/15/20/15)

ALPHA_NOTE = (
    "Thresholds are pooled (decision 0011): a slice with enough rows has its own, the others share their action "
    "type's or the global one, which cells are decided from row counts before any label is read; each cell is "
    "tested from the highest score down with session-level bounds, so the guarantee covers every auto-executed "
    "step. Risk is the operators' graded label: an error is a model_error or other rejection; an acceptable "
    "alternative is a preference and an environment rejection carries no label (docs/critic.md)."
)


def _demo(args: argparse.Namespace) -> int:
    from sandbox.ceiling import render_ceiling, summarise
    from sandbox.copilot import run_copilot
    from sandbox.generate import generate
    from sandbox.scenario import scenario_by_name
    from schemas import Verdict

    for name in ("sessions", "copilot", "critic_sessions", "autopilot_sessions"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if not 0.0 < args.alpha < 1.0:
        raise ValueError(f"--alpha: must be in (0, 1), got {args.alpha}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scenario = scenario_by_name(args.scenario)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    print(f"[1/6] logging stage: {args.sessions} cases worked by simulated operators ({scenario.name} scenario)")
    mark = time.perf_counter()
    traces_path = out / "traces.jsonl"
    summary = generate(args.sessions, args.seed, traces_path, scenario)
    print(summary.render())
    table = summarise(summary.ceiling_samples)  # collected while generating: no second read of the file
    print("\nSandbox ceiling (best possible policy that sees only the UI state), by action type:")
    print(render_ceiling(table))
    timings["1 logging"] = time.perf_counter() - mark

    print(f"\n[2/6] copilot check: the best possible policy proposes, operators review ({args.copilot} cases)")
    mark = time.perf_counter()
    steps = run_copilot(args.copilot, args.seed + 1, scenario=scenario, start_index=args.sessions)
    accepted: dict[str, list[bool]] = defaultdict(list)
    for step in steps:
        accepted[step.proposed.type.value].append(step.verdict == Verdict.ACCEPT)
    rates = {t: sum(v) / len(v) for t, v in sorted(accepted.items())}
    print("| action type | proposals | accepted |\n|---|---:|---:|")
    for t, v in sorted(accepted.items()):
        print(f"| {t} | {len(v)} | {rates[t]:.1%} |")
    timings["2 copilot check"] = time.perf_counter() - mark

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
    mark = time.perf_counter()
    report["policy"] = _policy_stage(traces_path, out / "policy", args.policy_time_budget, args.seed)
    timings["3 policy"] = time.perf_counter() - mark
    mark = time.perf_counter()
    critic_start = args.sessions + args.copilot
    report["critic"] = _critic_stage(
        out, args.critic_sessions, args.seed + 2, scenario.name, start_index=critic_start, alpha=args.alpha
    )
    timings["4 critic"] = time.perf_counter() - mark
    mark = time.perf_counter()
    report["autopilot"] = _autopilot_stage(
        out, args.autopilot_sessions, args.seed + 3, scenario, critic_start + args.critic_sessions
    )
    timings["5 autopilot"] = time.perf_counter() - mark
    auto = report["autopilot"]
    print(
        f"\ntraces: {traces_path}\npolicy: {out / 'policy'}\nfeedback: {out / 'feedback.jsonl'}\n"
        f"critic registry: {out / 'registry'} (report: {report['critic']['report']})\n"
        f"autopilot report: {auto['report_md']} (JSON: {auto['report_json']})\n"
        f"autopilot plot: {auto['plot']}\nruntime store: {auto['store']}\nsummary: {out / 'summary.json'}"
    )
    mark = time.perf_counter()

    def finished(service: dict[str, Any]) -> None:
        # Called once the service answers (before it serves until Ctrl-C, if it does): the demo's time ends here.
        timings["6 service"] = time.perf_counter() - mark
        total = time.perf_counter() - started
        report["service"] = service
        report["timings_s"] = {**{k: round(v, 1) for k, v in timings.items()}, "total": round(total, 1)}
        (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
        print("\nStage timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + f"; total {total:.0f} s")
        print(f"demo finished in {total:.0f} s", flush=True)

    keep_serving = sys.stdin.isatty() if args.serve is None else args.serve
    _service_stage(out, args.seed + 4, args.port, keep_serving, finished)
    return 0


def _policy_stage(traces_path: Path, model_dir: Path, time_budget: float, seed: int) -> dict[str, Any]:
    from importers.jsonl import read_traces
    from policy.combined import CombinedPolicy
    from policy.report import compare_with_floors

    traces = read_traces(traces_path)
    # 97/3: training is bounded by its time budget, not by the data, and scoring the test steps with the LM is
    # the costly part of the evaluation (the demo's 15-minute budget: 200 test cases took 77 s, 60 take 25 s).
    cut = int(len(traces) * 0.97)
    train, test = traces[:cut], traces[cut:]
    print(
        f"\n[3/6] policy: training the default policy (the LM combined with the simple predictors) on the first "
        f"{len(train)} cases (at most {time_budget:.0f} s, the LM on one thread), testing on the last {len(test)}"
    )
    # The product's default trained policy (``autopilot policy train``) under the demo's one budget: the LM gets
    # what the counting and boosting members leave of it. The LM's floor is lowered for a short budget (its
    # default 60 s would overrun a 60 s demo budget by the members' fit and the held-out scoring).
    policy = CombinedPolicy(
        time_budget_s=time_budget,
        min_lm_budget_s=min(CombinedPolicy.min_lm_budget_s, 0.5 * time_budget),
        lm_threads=1,
        seed=seed,
        progress=True,
    ).fit(train)
    policy.save(model_dir)
    # Batches of SMALL_BATCH states: the LM packs a batch into one padded pass, and on this CPU batches of 8 cost
    # about 25 ms a state against 35-45 ms in batches of 64 (the padding and the attention mask grow with it).
    report = compare_with_floors(policy, test, train, name="combined policy", batch_size=SMALL_BATCH)
    print(report.markdown)  # the floor table, then which predictor the policy chose where
    results = report.results
    validation = policy.report_.get("validation", {})
    return {
        "model_dir": str(model_dir),
        "kind": "combined",
        "version": policy.version_,
        "training_seconds": policy.report_.get("fit_s"),
        "test_cases": len(test),
        "action_accuracy": {name: r.overall.action_accuracy for name, r in results.items()},
        "ceiling": results["combined policy"].overall.ceiling_action,
        "members": {name: info.get("validation_accuracy") for name, info in policy.report_.get("members", {}).items()},
        "left_out": policy.report_.get("left_out", {}),
        "route_share": validation.get("route_share", {}),
        "lm_epochs": policy.report_.get("members", {}).get("lm", {}).get("epochs_done"),
    }


def _service_stage(
    out: Path, seed: int, port: int, keep_serving: bool, on_ready: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    import torch

    from lab.demo_service import serve_demo

    torch.set_num_threads(1)
    return serve_demo(out, seed, port=port, keep_serving=keep_serving, on_ready=on_ready)


def _critic_stage(
    out: Path, sessions: int, seed: int, scenario_name: str, start_index: int, alpha: float
) -> dict[str, Any]:
    """Copilot phase with the trained policy, then the nightly job on its feedback: train and calibrate the
    critic, choose per-slice thresholds at ``alpha``, compare with the policy's own confidence, register and
    promote."""
    import torch

    from critic.feedback import write_feedback
    from critic.pipeline import PipelineConfig, default_thresholds
    from critic.retrain import RetrainConfig, retrain
    from critic.store import FeedbackStore
    from policy.process import PolicyProcesses
    from sandbox.feedback_collection import collect_copilot_feedback
    from sandbox.scenario import scenario_by_name

    print(
        f"\n[4/6] critic: copilot phase of {sessions} new cases (the trained policy proposes every step, operators "
        f"accept or correct), then train, calibrate and threshold the critic (alpha {alpha:g})"
    )
    torch.set_num_threads(1)
    # The policy as the service runs it (AUTOPILOT_REPLY_GUARD), in two processes of its own: each round's batch
    # is split between them, so both cores score while this one runs the simulated operators.
    with PolicyProcesses(out / "policy", processes=2, reply_guard=True) as policy:
        feedback = collect_copilot_feedback(
            policy,
            sessions,
            seed,
            scenario_by_name(scenario_name),
            start_index=start_index,
            concurrency=COPILOT_CONCURRENCY,
        )
    feedback_path = write_feedback(feedback.records, out / "feedback.jsonl", truth=feedback.truth)
    # The same rows in the feedback store the service's sink writes to (what its promotion rounds count).
    feedback_db = out / "feedback.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{feedback_db}{suffix}").unlink(missing_ok=True)
    with FeedbackStore(f"sqlite:///{feedback_db}") as store:
        store.add(feedback.records)
    stats = feedback.summary()
    print(f"{stats['rows']} proposals reviewed, {stats['acceptance_rate']:.1%} accepted")
    registry = out / "registry"
    if registry.exists():
        # The policy was retrained above: critics an earlier demo run registered belong to another policy version
        # and must not stay champion (the promotion rule compares AURC only), so the demo starts a new registry.
        shutil.rmtree(registry)
    # The pipeline's pooled thresholds on 45% of the rows: with a demo's few thousand copilot rows most slices hold
    # a few dozen threshold rows, too few to certify on their own; a pool certifies them together.
    pipeline = PipelineConfig(fractions=DEMO_FRACTIONS, thresholds=replace(default_thresholds(), alpha=alpha))
    outcome = retrain(
        str(feedback_path), registry,
        RetrainConfig(pipeline=pipeline, window_days=None, policy_version=policy.version_),
        report_dir=out / "critic_report",
    )  # fmt: skip
    report_md = outcome.report.read_text()
    start = report_md.index("## Against the policy")
    print(report_md[start:].split("![reliability]")[0].rstrip())
    print(f"critic {outcome.version}: {'promoted' if outcome.promoted else 'not promoted'} ({outcome.reason})")
    return {
        "feedback": stats,
        "alpha": alpha,
        "version": outcome.version,
        "promoted": outcome.promoted,
        "metrics": outcome.metrics,
        "report": str(outcome.report),
        "registry": str(registry),
    }


def _autopilot_stage(out: Path, sessions: int, seed: int, scenario: Scenario, start_index: int) -> dict[str, Any]:
    import torch

    from critic.feedback import read_feedback
    from lab.report import plot_reports
    from policy.process import PolicyProcesses

    print(
        f"\n[5/6] autopilot: promote the slices whose threshold holds, then {sessions} new cases (indices "
        f"{start_index}..{start_index + sessions - 1}) run as background sessions through the runtime (embedded "
        "Kafka broker, SQLite store, simulated operators), against an all-manual run of the same cases"
    )
    torch.set_num_threads(1)
    feedback = read_feedback(out / "feedback.jsonl")
    # The policy as the service runs it (AUTOPILOT_REPLY_GUARD), in a process of its own
    # (AUTOPILOT_POLICY_PROCESSES=1): the runtime, the bus client and the simulated people keep this process's core.
    with PolicyProcesses(out / "policy", processes=1, reply_guard=True) as policy:
        report = run_autopilot_phase(
            policy,
            out / "registry",
            feedback,
            sessions=sessions,
            seed=seed,
            scenario=scenario,
            start_index=start_index,
            data_dir=out,
        )
    report.notes.append(ALPHA_NOTE)
    markdown = report.markdown(f"Autopilot phase ({sessions} sessions, alpha {report.alpha:g})")
    print(markdown)
    # The headline: this run's figures under the operators' label, the accept label's beside them (the same run:
    # only the realised error differs), and the critic benches' coverage and time to autonomy (not this run's).
    from lab.report import critic_figures, headline_markdown

    results_dir = Path(__file__).resolve().parents[1] / "bench" / "results"
    figures, figure_notes = critic_figures(results_dir, report.alpha)
    accept_figures, _ = critic_figures(results_dir, report.alpha, label="accept")
    headline = {**report.headline(), **figures}
    accept = {**report.headline("accept"), **accept_figures}
    print("### Headline\n")
    print(headline_markdown(headline, accept))
    for note in figure_notes:
        print(f"- {note}")
    report_md = out / "autopilot_report.md"
    report_json = out / "autopilot_report.json"
    report_md.write_text(markdown)
    report_json.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    plot = plot_reports({f"alpha {report.alpha:g}": report}, out / "autopilot_report.png")
    summary = report.summary()
    return {
        "report_md": str(report_md),
        "report_json": str(report_json),
        "plot": str(plot),
        "store": report.run.get("store"),
        "alpha": report.alpha,
        "fully_automated": summary["fully_automated"],
        "handling_time_reduction": summary["handling_time_reduction"],
        "correct_resolution": summary["correct_resolution"],
        "audited_error": summary["audited_error"],
        "headline": headline,
        "headline_accept_label": accept,
        "blockers": report.blockers[:15],
        "targets": [{"name": t.name, "measured": t.measured, "met": t.met} for t in report.targets()],
        "run": report.run,
    }


# ---- the autopilot phase (stage 5; also bench/runtime_default.py) ------------------------------------------------


def label_counts(records: Iterable[FeedbackRecord]) -> list[tuple[SliceKey, int]]:
    """Labels per slice in the copilot feedback (what ``consider_promotion`` needs besides the threshold), sorted
    by slice name."""
    counts: Counter[str] = Counter()
    keys: dict[str, SliceKey] = {}  # SliceKey is a mutable pydantic model, so not a dict key itself
    for record in records:
        name = str(record.slice)
        counts[name] += 1
        keys.setdefault(name, record.slice)
    return [(keys[name], counts[name]) for name in sorted(counts)]


def case_operator(seed: int, case_index: int, operators: Sequence[SimOperator]) -> tuple[SimOperator, random.Random]:
    """The operator who works the case in the all-manual run (``sandbox.generate``'s draw), with the rng after it."""
    rng = random.Random(f"{seed}:{case_index}:operator")
    return operators[rng.randrange(len(operators))], rng


def finish_by_hand(
    adapter: SandboxAdapter,
    case_id: str,
    operator: SimOperator,
    operators: list[SimOperator],
    rng: random.Random,
    read_messages: int,
) -> int:
    """A human works the rest of a case the runtime handed over, charged with the all-manual time model
    (``sandbox.simulate.work_case``: the operator's seconds per action, plus reading every customer message no
    human has read yet; ``read_messages`` were read while answering deferrals). Returns the steps done."""
    from sandbox.operators import READ_SECONDS
    from sandbox.platform import MAX_STEPS
    from sandbox.simulate import sample, step_model
    from schemas import ChatRole
    from service.runtime.adapters.base import AdapterError

    platform = adapter.platform
    posterior = {op.operator_id: 1.0 / len(operators) for op in operators}  # per_operator does not depend on it
    done = 0
    for _ in range(MAX_STEPS):
        case = platform.case(case_id)
        if case.ended:
            break
        dist = step_model(platform, case_id, operators, posterior).per_operator[operator.operator_id]
        if not dist:
            break  # the playbook has nothing left for this screen: the case stays open (counted as not correct)
        customers = sum(1 for m in case.chat if m.role == ChatRole.CUSTOMER)
        reading = READ_SECONDS * max(0, customers - read_messages)
        read_messages = max(read_messages, customers)
        action = sample(dist, rng)
        try:
            adapter.apply(case_id, action, f"manual:{case_id}:{case.step}")
        except AdapterError:
            break
        adapter.charge(case_id, operator.action_seconds(action, rng) + reading)
        done += 1
    return done


def all_manual_run(
    sessions: int, seed: int, scenario: Scenario, start_index: int, progress: bool = True
) -> list[ManualResult]:
    """The same cases worked by hand (``sandbox.generate``: the same seed and case indices)."""
    from lab.report import ManualResult
    from sandbox.generate import iter_traces

    traces = iter_traces(sessions, seed, scenario, start_index=start_index, progress=progress)
    return [
        ManualResult(
            int(t.attributes["case_index"]),
            bool(t.ground_truth["outcome"]["correct"]),
            float(t.attributes["handling_time_s"]),
        )
        for t in traces
    ]


@dataclass
class _Finished:
    session_id: str
    case_id: str
    case_index: int
    process_id: str
    status: str
    executed: int
    answered: int
    read_messages: int  # customer messages in the last state a human answered on


def _wait(runtime: Any, total: int, timeout_s: float, progress: bool) -> bool:
    from schemas.progress import progress_bar
    from service.runtime.store import TERMINAL_STATUSES

    terminal = {status.value for status in TERMINAL_STATUSES}
    deadline = time.monotonic() + timeout_s
    done = 0
    with progress_bar(total=total, desc="autopilot", unit="session", disable=not progress, leave=False) as bar:
        while True:
            counts = runtime.store.counts_by_status()
            now_done = sum(n for status, n in counts.items() if status in terminal)
            bar.update(now_done - done)
            done = now_done
            if done >= total:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def run_autopilot_phase(
    policy: ProposalPolicy,
    registry_dir: Path,
    feedback: Sequence[FeedbackRecord],
    *,
    sessions: int,
    seed: int,
    scenario: Scenario,
    start_index: int,
    data_dir: Path,
    manual: list[ManualResult] | None = None,
    audit_rate: float = 0.05,
    audit_mode: str = "after",
    workers: int = 2,
    batch_size: int = SMALL_BATCH,
    timeout_s: float = 1800.0,
    progress: bool = True,
) -> AutopilotReport:
    """Promote slices with the registry champion's thresholds, run ``sessions`` new cases (``start_index`` on,
    platform ``seed``) through the runtime, finish handed-over cases by hand, and measure the run against the
    all-manual run of the same cases (``manual``, computed here when not given). The store is
    ``data_dir/runtime.db`` (replaced)."""
    from critic.persist import load_critic
    from critic.registry import CriticRegistry
    from critic.thresholds import SliceThresholds, ThresholdConfig
    from lab.report import AutopilotReport, ReviewLabel, SessionResult, SliceResult
    from sandbox.operators import operator_pool
    from sandbox.platform import SandboxPlatform
    from schemas import ChatRole, DecisionOutcome, Verdict, qa_label
    from service.runtime.autonomy import AutonomyConfig, AutonomyStages
    from service.runtime.blockers import first_blockers, rank
    from service.runtime.promotion import promotion_round
    from service.runtime.qa_store import QAStore
    from service.runtime.settings import RuntimeSettings
    from service.runtime.worker import Reservoir

    if sessions < 1:
        raise ValueError(f"sessions: must be >= 1, got {sessions}")
    phase_started = time.perf_counter()
    registry = CriticRegistry(registry_dir)
    version = registry.champion()
    if version is None:
        raise ValueError(f"registry_dir: {registry_dir} has no champion critic (run the critic stage first)")
    alpha = registry.manifest(version).alpha
    critic = load_critic(registry.artifact_path(version))
    raw = registry.thresholds(version)
    thresholds = SliceThresholds.from_dict(raw) if raw else SliceThresholds(ThresholdConfig(alpha=alpha), {})

    # The guardrail's target acceptance is the thresholds' own 1 - alpha, so audits and thresholds agree.
    stages = AutonomyStages(AutonomyConfig(alpha=alpha))
    labels = label_counts(feedback)
    promoted = promotion_round(stages, thresholds, labels)
    labels_by_name = {str(k): n for k, n in labels}
    with_threshold = sum(1 for r in thresholds.values() if r.threshold is not None)
    print(
        f"critic {version} (alpha {alpha:g}): {with_threshold} of {len(thresholds)} slice groups hold a threshold; "
        f"promoted to autopilot: {', '.join(promoted) if promoted else 'none'}"
    )

    data_dir.mkdir(parents=True, exist_ok=True)
    db = data_dir / "runtime.db"
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    platform = SandboxPlatform(scenario, seed)
    operators = operator_pool(scenario.operators, seed)
    settings = RuntimeSettings(
        kafka_bootstrap=None,
        database_url=f"sqlite:///{db}",
        data_dir=data_dir,
        workers=workers,
        batch_size=batch_size,
        audit_rate=audit_rate,
        audit_mode=audit_mode,
        operators=len(operators),
        seed=seed,
    )
    runtime = SandboxRuntime(platform, policy, critic, thresholds, settings, stages=stages, operators=operators)
    indices = list(range(start_index, start_index + sessions))
    finished: list[_Finished] = []
    with runtime:
        store = runtime.store
        assert store is not None and runtime.pool is not None
        # One reservoir for every worker's decision latency (it is thread-safe), so the percentiles are over all
        # decisions; swapped in before any session starts.
        latency = Reservoir()
        for worker in runtime.workers:
            worker.latency = latency
        case_ids = [platform.open_case(case_index=i) for i in indices]
        run_started = time.perf_counter()
        session_ids = runtime.start_sessions(case_ids)
        complete = _wait(runtime, sessions, timeout_s, progress)
        run_seconds = time.perf_counter() - run_started
        if not complete:
            print(
                f"warning: not every session ended within {timeout_s:.0f} s; the rest are stopped and finished by hand"
            )
            runtime.stop_sessions([s for s in session_ids if not runtime.finished([s])])
            runtime.wait_until(lambda: runtime.finished(session_ids), 30.0)
        # After-the-fact reviews of the last executed steps may still be on their way: wait for the QA queue to
        # drain (bounded), so the realised error covers the whole run and the review time is charged to its cases.
        qa = QAStore(store)
        qa_drained = runtime.wait_until(lambda: qa.counts()["pending"] == 0, 120.0, interval=0.2)
        if not qa_drained:
            print(f"warning: {qa.counts()['pending']} QA reviews were still pending when the run was measured")
        workers_stats = [w.stats() for w in runtime.workers]
        pool_stats = runtime.pool.stats()
        reviewer_stats = runtime.qa_reviewers.stats() if runtime.qa_reviewers is not None else {}
        for index, case_id, session_id in zip(indices, case_ids, session_ids, strict=True):
            row = store.get_session(session_id)
            decisions = store.decisions(session_id)
            answered = [r for r in store.session_deferrals(session_id) if r.answer is not None]
            read = 0
            if answered:
                read = sum(1 for m in answered[-1].deferral.state.chat if m.role == ChatRole.CUSTOMER)
            finished.append(
                _Finished(
                    session_id,
                    case_id,
                    index,
                    platform.case(case_id).spec.process_id,
                    "unfinished" if row is None else row.status.value,
                    sum(1 for d in decisions if d.outcome == DecisionOutcome.EXECUTE),
                    len(answered),
                    read,
                )
            )
        # Per slice: what the router decided, and the reviews of audited steps (the unbiased sample of
        # auto-execution): after the fact from the QA queue, or the answers of pre-execution audits.
        per_slice: dict[str, Counter[str]] = defaultdict(Counter)
        slice_keys: dict[str, SliceKey] = {}
        reviews: list[ReviewLabel] = []
        for session_id in session_ids:
            for d in store.decisions(session_id):
                name = str(d.slice)
                slice_keys.setdefault(name, d.slice)
                per_slice[name]["executed" if d.outcome == DecisionOutcome.EXECUTE else "deferred"] += 1
            for r in store.session_deferrals(session_id):
                if r.deferral.decision.audit and r.answer is not None:
                    label = qa_label(r.answer.verdict, r.answer.reason).value
                    reviews.append(ReviewLabel(session_id, label, r.answer.verdict == Verdict.ACCEPT))
                    per_slice[str(r.deferral.decision.slice)]["audits"] += 1
                    per_slice[str(r.deferral.decision.slice)]["audit_errors"] += label == "unacceptable"
        for reviewed in qa.labels(session_ids=session_ids):
            reviews.append(ReviewLabel(reviewed.session_id, reviewed.label.value, reviewed.accepted))
            per_slice[reviewed.slice]["audits"] += 1
            per_slice[reviewed.slice]["audit_errors"] += reviewed.label.value == "unacceptable"
        blockers = [b.to_dict() for b in rank(v for k, v in first_blockers(store).items() if k in set(session_ids))]

    # The runtime is down: cases it handed over (or that never ended) are worked to the end by hand.
    results: list[SessionResult] = []
    for item in finished:
        case = platform.case(item.case_id)
        manual_steps = sum(1 for key in case.idempotency if key.startswith("manual:"))  # the pool's, after a reject
        if case.ended is None:
            operator, rng = case_operator(seed, item.case_index, operators)
            from sandbox.adapter import SandboxAdapter

            assert isinstance(runtime.adapter, SandboxAdapter)  # the demo's runtime runs on the sandbox platform
            manual_steps += finish_by_hand(runtime.adapter, item.case_id, operator, operators, rng, item.read_messages)
        outcome = runtime.adapter.outcome(item.case_id)
        results.append(
            SessionResult(
                item.case_index,
                item.process_id,
                item.status,
                item.executed,
                item.answered,
                manual_steps,
                bool(outcome["correct"]),
                float(outcome["handling_time_s"] or 0.0),
                ambiguous=case.seed.ambiguous,
            )
        )
    if manual is None:
        manual = all_manual_run(sessions, seed, scenario, start_index, progress)

    slices = []
    for name in sorted(set(per_slice) | {str(s.slice) for s in stages.snapshot()}):
        key = slice_keys.get(name) or next(s.slice for s in stages.snapshot() if str(s.slice) == name)
        state = stages.state(key)
        counts = per_slice.get(name, Counter())
        slices.append(
            SliceResult(
                name,
                state.stage.value,
                state.reason,
                thresholds.threshold_for(key),
                labels_by_name.get(name, 0),
                counts["executed"],
                counts["deferred"],
                counts["audits"],
                counts["audit_errors"],
            )
        )
    return AutopilotReport(
        alpha=alpha,
        sessions=results,
        manual=manual,
        slices=slices,
        events=[e.to_dict() for e in stages.events()],
        deferral_latency_ms=pool_stats["deferral_latency_ms"],
        publish_latency_ms=pool_stats["publish_latency_ms"],
        decision_latency_ms=latency.summary(),
        audit_labels=[r.accepted for r in reviews],
        reviews=reviews,
        blockers=blockers,
        run={
            "critic_version": version,
            "seed": seed,
            "case_indices": [start_index, start_index + sessions - 1],
            "workers": workers,
            "batch_size": batch_size,
            "audit_rate": audit_rate,
            "audit_mode": audit_mode,
            "qa_reviews": {"drained": qa_drained, **reviewer_stats},
            "operators": len(operators),
            "promoted": promoted,
            "run_seconds": round(run_seconds, 1),
            "sessions_per_s": round(sessions / run_seconds, 2),
            "phase_seconds": round(time.perf_counter() - phase_started, 1),
            "store": str(db),
            "operator_pool": {k: pool_stats[k] for k in ("received", "answered", "manual_actions", "review_seconds")},
            "workers_stats": [
                {
                    k: w.get(k)
                    for k in ("decisions", "answers", "finished", "busy_ms", "propose_ms", "score_ms", "act_ms")
                }
                for w in workers_stats
            ],
        },
    )


def register(commands: Any) -> None:
    demo = commands.add_parser("demo", help="run the main job end to end on embedded defaults")
    demo.add_argument("--out", default="out/demo", help="where traces, models, the store and the reports go")
    demo.add_argument("--sessions", type=int, default=2000)
    demo.add_argument("--copilot", type=int, default=300, help="cases for the copilot acceptance check")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--scenario", default="default")
    demo.add_argument("--policy-time-budget", type=float, default=180.0, help="seconds of policy training")
    # 1,200: on the calibrated world 600 cases gave one pooled cell of 2,104 threshold rows, and one unlucky
    # error among its first 38 tested rows left it without a threshold (nothing ran in the background).
    demo.add_argument(
        "--critic-sessions", type=int, default=1200, help="copilot cases whose feedback trains the critic"
    )
    demo.add_argument(
        "--alpha", type=float, default=0.10, help="tolerated error rate among auto-executed steps (critic thresholds)"
    )
    demo.add_argument("--autopilot-sessions", type=int, default=1000, help="new cases run by the autopilot runtime")
    demo.add_argument("--port", type=int, default=8000, help="the service's port (a free one if it is taken)")
    serve = demo.add_mutually_exclusive_group()
    serve.add_argument(
        "--serve", dest="serve", action="store_true", default=None, help="keep the service running until Ctrl-C"
    )
    serve.add_argument("--no-serve", dest="serve", action="store_false", help="stop the service after its self-check")
    demo.set_defaults(handler=_demo)
