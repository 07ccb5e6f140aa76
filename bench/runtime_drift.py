"""Drift: how many audited steps after a drift until the affected autopilot slices are demoted, and the quality
curve before, during and after.

Protocol. One run of the in-process ``Runtime`` (two SessionWorker threads, the embedded Tansu broker, a SQLite
store, the simulated operator pool; the full runtime, not a direct drive of the router) on the sandbox's ``drift``
scenario (``SCENARIOS["drift"]``: the refund limit drops from 150 to 60 at case 1000). Only ``refund_damaged``
cases are opened (case indices ``--start`` to ``--end`` in order, at most 32 at a time): it is the process the
drift is about, and the trained policy proposes a few tens of steps a second on one thread, so a mix of processes
would spend most of the time on cases the drift does not touch. The policy is ``out/bench/policy_default`` (else a
tiny policy fitted here), the critic the policy's own probability, thresholds ``fit_slice_thresholds`` on the
cached copilot feedback (alpha 0.10, per slice, each slice's delta on its own: with the Bonferroni split only two
refund_damaged slices get one and about 5% of the steps execute). Before the first case every refund_damaged slice
with a holding threshold and enough labels is promoted copilot -> autopilot through
``AutonomyStages.consider_promotion``; the guardrails use the same alpha (target audited acceptance 90%). The
router audits ``--audit-rate`` of the would-execute steps (0.3, six times the default, so that the audits a
guardrail needs arrive within a few hundred cases; the count of audited steps, not of cases, is what the bound is
about; at the default rate the same K takes six times the cases).

Two drift events in one run, each preceded by a drain (every started session ends before the next segment):

1. at case 1000 the scenario's own drift. The BPM's gateway reads the limit, so refunds between 60 and 150 go to
   the senior screen, where the policy already transfers; measured offline (150 cases each side, copilot), the
   policy's acceptance per slice does not change, and the run shows whether anything moves;
2. at ``--inject-at`` an injected drift the critic cannot see: on the refund_damaged slices in autopilot,
   ``--swap-share`` of the proposals are replaced by the policy's runner-up of the same action type and risk
   tier, keeping the top proposal's confidence features (as after a change in the world that neither the policy
   nor its critic has learned). The simulated operators judge those proposals as they would any other. Slices
   with no such runner-up on their screens are not affected (refund_damaged/click_control).

Measured: per window of ``--window`` cases, the correct-resolution rate of the cases, the automation rate, and for
the affected slices the realised error (the audited steps a human did not accept: an unbiased sample of what
autopilot executes) and the ground-truth error of the executed steps (``sandbox.operators.acceptable`` on the
step model, hidden from the runtime); per slice, the audited steps after the injected drift until its demotion
(K). One run gives one K per slice, so a Monte Carlo over ``AutonomyStages`` with the slice's measured audits
before and acceptance after the injection gives the bound "demoted within K audited steps" at the median, 95th
and 99th percentile (audits only: the correction-spike guardrail can only make it faster).

    .venv/bin/python -m bench.runtime_drift [--start 950] [--inject-at 1075] [--end 1325]

Writes ``bench/results/runtime_drift.{json,md,png}``. Torch runs on one thread.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.common import RESULTS_DIR, ROOT, environment, peak_rss_kib, write_results
from bench.critic_sandbox import trained_policy_feedback
from bench.runtime_faults import POLICY_DIR, fit_tiny_policy, hand_thresholds
from critic.base import DEFAULT_LABEL, LABEL_RULES, Candidate, critic_label
from critic.confidence import PolicyConfidenceCritic
from critic.feedback import read_feedback
from critic.thresholds import SliceThresholds
from sandbox.harness import SandboxRuntime
from sandbox.operators import SimOperator, acceptable, operator_pool
from sandbox.platform import SandboxPlatform
from sandbox.risk import DEFAULT_RISK_POLICY
from sandbox.scenario import SCENARIOS
from sandbox.simulate import step_model
from schemas import AutonomyStage, UIState
from schemas.actions import Action, ActionType
from schemas.decision import DecisionOutcome, Verdict
from schemas.progress import progress_bar
from schemas.proposal import Proposal
from schemas.risk import RiskTier, SliceKey
from service.runtime.autonomy import AutonomyConfig, AutonomyStages, StageEvent
from service.runtime.inprocess import Runtime, session_id_for
from service.runtime.settings import RuntimeSettings
from service.runtime.store import DeferralStatus
from service.runtime.worker import ProposalPolicy

log = logging.getLogger(__name__)

NAME = "runtime_drift"
PROCESS = "refund_damaged"
FAST_GROUP: dict[str, Any] = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 10}
SliceId = tuple[str, ActionType]


def slice_id(key: SliceKey) -> SliceId:
    return (key.process_id, key.action_type)


def slice_name(key: SliceId) -> str:
    return f"{key[0]}/{key[1].value}"


# ---- the policy with an injected drift, and the ground truth of its proposals ---------------------------------------


@dataclass(frozen=True, slots=True)
class Judged:
    """A proposal of a tracked slice: its case index, whether the injection swapped it, and the sandbox's truth."""

    case_index: int
    slice: SliceId
    swapped: bool
    acceptable: bool


class DriftingPolicy:
    """The policy, plus (from case ``inject_from`` on) a drift the critic cannot see: on the ``tracked`` slices a
    ``share`` of the proposals become the runner-up of the same action type, with the top proposal's features.
    Every tracked proposal is judged with the sandbox's step model (``acceptable``), for the ground-truth error."""

    def __init__(
        self,
        inner: ProposalPolicy,
        platform: SandboxPlatform,
        operators: Sequence[SimOperator],
        tracked: set[SliceId],
        inject_from: int,
        share: float,
        seed: int,
    ) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share: must be in [0, 1], got {share}")
        self.inner = inner
        self.platform = platform
        self.operators = list(operators)
        self.tracked = tracked
        self.inject_from = inject_from
        self.share = share
        self.seed = seed
        self.judged: dict[str, Judged] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _tier(process_id: str, action: Action) -> RiskTier:
        return DEFAULT_RISK_POLICY.tier_for(process_id, action.type, getattr(action, "control_id", None))

    def _draw(self, state: UIState) -> float:
        digest = hashlib.blake2b(f"{self.seed}:{state.case_id}:{state.step}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    def propose_batch(self, states: Sequence[UIState], k: int = 5) -> list[Proposal | None]:
        proposals = self.inner.propose_batch(states, k)
        out: list[Proposal | None] = []
        for state, proposal in zip(states, proposals, strict=True):
            if proposal is None or (proposal.process_id, proposal.action.type) not in self.tracked:
                out.append(proposal)
                continue
            key: SliceId = (proposal.process_id, proposal.action.type)
            with self.platform.lock:
                case = self.platform.case(state.case_id)
                index = case.index
                swapped = False
                if index >= self.inject_from and self._draw(state) < self.share:
                    # Same action type and risk tier, so the swapped proposal stays in its slice and is still
                    # gated (and audited) by the critic.
                    tier = self._tier(proposal.process_id, proposal.action)
                    runner_up = next(
                        (
                            a
                            for a in proposal.alternatives
                            if a.action.type == proposal.action.type
                            and self._tier(proposal.process_id, a.action) == tier
                        ),
                        None,
                    )
                    if runner_up is not None:
                        proposal = proposal.model_copy(update={"action": runner_up.action})
                        swapped = True
                uniform = {op.operator_id: 1.0 / len(self.operators) for op in self.operators}
                model = step_model(self.platform, state.case_id, self.operators, uniform)
                ok = acceptable(proposal.action, model.bases)
            with self._lock:
                self.judged[proposal.proposal_id] = Judged(index, key, swapped, ok)
            out.append(proposal)
        return out


class RecordingStages(AutonomyStages):
    """AutonomyStages that log every audit and answer the guardrails see, in order, with the event it raised."""

    def __init__(self, config: AutonomyConfig) -> None:
        super().__init__(config)
        self.audit_log: list[tuple[float, SliceId, bool, StageEvent | None]] = []
        self.answer_log: list[tuple[float, SliceId, bool, StageEvent | None]] = []

    def record_audit(self, slice_key: SliceKey, acceptable: bool) -> StageEvent | None:
        event = super().record_audit(slice_key, acceptable)
        self.audit_log.append((time.monotonic(), slice_id(slice_key), bool(acceptable), event))
        return event

    def record_answer(self, slice_key: SliceKey, corrected: bool) -> StageEvent | None:
        event = super().record_answer(slice_key, corrected)
        self.answer_log.append((time.monotonic(), slice_id(slice_key), bool(corrected), event))
        return event


# ---- the run --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    start: int = 950
    inject_at: int = 1075
    end: int = 1325
    window: int = 25
    audit_rate: float = 0.3
    swap_share: float = 0.3
    alpha: float = 0.10
    in_flight: int = 32
    workers: int = 2
    seed: int = 3
    mc_runs: int = 2000

    def __post_init__(self) -> None:
        drift_at = SCENARIOS["drift"].drift
        assert drift_at is not None
        if not self.start < drift_at.at_case <= self.inject_at < self.end:
            raise ValueError(f"start, inject_at, end: need start < {drift_at.at_case} <= inject_at < end")
        if self.window < 1:
            raise ValueError(f"window: must be >= 1, got {self.window}")
        if not 0.0 < self.audit_rate < 1.0:
            raise ValueError(f"audit_rate: must be in (0, 1), got {self.audit_rate}")


@dataclass
class Timeline:
    """Wall-clock marks, to place stage events among cases: (monotonic time, highest case index started)."""

    marks: list[tuple[float, int]] = field(default_factory=list)
    boundaries: dict[str, float] = field(default_factory=dict)

    def case_at(self, moment: float) -> int | None:
        started = [index for at, index in self.marks if at <= moment]
        return max(started) if started else None


def load_policy(work: Path) -> tuple[ProposalPolicy, str]:
    import torch

    from policy.policy import LMPolicy

    torch.set_num_threads(1)
    if (POLICY_DIR / "policy.json").exists():
        return LMPolicy.load(POLICY_DIR), str(POLICY_DIR.relative_to(ROOT))
    return LMPolicy.load(fit_tiny_policy(work)), "tiny policy fitted on 30 sandbox cases (policy_default is missing)"


def thresholds_and_labels(alpha: float) -> tuple[SliceThresholds, dict[SliceId, int], PolicyConfidenceCritic, str]:
    """Per-slice thresholds on the policy's probability, each slice's label count, and the confidence critic."""
    from bench.runtime_faults import feedback_thresholds

    critic = PolicyConfidenceCritic()
    feedback = trained_policy_feedback()
    if feedback is None or not feedback.exists():
        critic.classes_ = np.array([0, 1], dtype=np.int64)
        thresholds = hand_thresholds()
        # Without feedback there are no labels to promote on; every refund slice is treated as labelled enough.
        return thresholds, defaultdict(lambda: 10**6), critic, "one global threshold set by hand (no cached feedback)"
    records = read_feedback(feedback)
    sample = records[:500]
    critic.fit([Candidate(r.state, r.proposal) for r in sample], [critic_label(r) for r in sample])
    labels = Counter(slice_id(r.slice) for r in records)
    source = (
        f"fit_slice_thresholds on {len(records)} rows of {feedback.relative_to(ROOT)} (alpha {alpha}, delta 0.1, "
        "per slice, each slice's delta on its own)"
    )
    # Without the Bonferroni split over slices: with it only two refund_damaged slices get a threshold and about 5%
    # of the process's steps execute, too few for the guardrails to see a drift within a bench-sized run.
    return feedback_thresholds(records, alpha, "slice", simultaneous=False), dict(labels), critic, source


def promote(stages: AutonomyStages, thresholds: SliceThresholds, labels: dict[SliceId, int]) -> list[str]:
    """Promote every refund_damaged slice that has a holding threshold and enough labels (copilot -> autopilot)."""
    promoted = []
    for action_type in ActionType:
        key = SliceKey(process_id=PROCESS, action_type=action_type)
        threshold = thresholds.threshold_for(key)
        state = stages.consider_promotion(key, threshold, labels.get(slice_id(key), 0))
        if state.stage == AutonomyStage.AUTOPILOT:
            promoted.append(slice_name(slice_id(key)))
    return promoted


def feed(
    runtime: Runtime, indices: range, in_flight: int, timeline: Timeline, bar: tqdm[Any], timeout_s: float
) -> list[str]:
    """Start ``indices`` in order (refund_damaged cases), at most ``in_flight`` at a time; wait until all ended."""
    pending = list(indices)
    running: list[str] = []
    cases: list[str] = []
    done_before = bar.n
    deadline = time.monotonic() + timeout_s
    while pending or running:
        running = [s for s in running if not runtime.finished([s])]
        batch: list[str] = []
        while pending and len(running) + len(batch) < in_flight:
            index = pending.pop(0)
            batch.append(runtime.platform.open_case(PROCESS, case_index=index))
            timeline.marks.append((time.monotonic(), index))
        if batch:
            running += runtime.start_sessions(batch)
            cases += batch
        bar.update(done_before + len(cases) - len(running) - bar.n)
        if time.monotonic() > deadline:
            raise TimeoutError(f"sessions did not end within {timeout_s} s: {len(running)} still running")
        time.sleep(0.1)
    return cases


def run(config: Config, work: Path) -> dict[str, Any]:
    thresholds, labels, critic, threshold_source = thresholds_and_labels(config.alpha)
    inner, policy_source = load_policy(work)
    scenario = SCENARIOS["drift"]
    assert scenario.drift is not None
    platform = SandboxPlatform(scenario=scenario, seed=config.seed)
    operators = operator_pool(scenario.operators, config.seed)
    stages = RecordingStages(AutonomyConfig(initial_stage=AutonomyStage.COPILOT, alpha=config.alpha))
    promoted = promote(stages, thresholds, labels)
    tracked = {
        (PROCESS, ActionType(name.split("/", 1)[1])) for name in promoted
    }  # the refund_damaged slices in autopilot
    policy = DriftingPolicy(inner, platform, operators, tracked, config.inject_at, config.swap_share, config.seed)
    settings = RuntimeSettings(
        kafka_bootstrap=None,
        database_url=f"sqlite:///{work / 'runtime.db'}",
        topic_prefix=f"drift{uuid.uuid4().hex[:6]}.",
        partitions=4,
        workers=config.workers,
        batch_size=32,
        lease_s=30.0,
        max_steps=40,
        audit_rate=config.audit_rate,
        # Pre-execution audits: this bench reads the audits' answers from the deferrals and judges them against
        # its drifting policy's own truth (after-the-fact reviews feed the guardrails the same way).
        audit_mode="before",
        operators=scenario.operators,
        seed=config.seed,
        **FAST_GROUP,
    )
    timeline = Timeline()
    runtime = SandboxRuntime(platform, policy, critic, thresholds, settings, stages=stages, operators=operators)
    segments = [
        ("before the drift", range(config.start, scenario.drift.at_case)),
        ("scenario drift (refund limit 150 -> 60)", range(scenario.drift.at_case, config.inject_at)),
        ("injected drift", range(config.inject_at, config.end)),
    ]
    started = time.monotonic()
    case_ids: list[str] = []
    with runtime, progress_bar(total=config.end - config.start, desc="cases", unit="case", mininterval=2.0) as bar:
        for name, indices in segments:
            timeline.boundaries[name] = time.monotonic()
            case_ids += feed(runtime, indices, config.in_flight, timeline, bar, timeout_s=900.0)
        elapsed = time.monotonic() - started
        assert runtime.producer is not None
        runtime.producer.flush(10.0)
        result = measure(config, runtime, platform, policy, stages, timeline, case_ids, segments, tracked)
        result["seconds"] = round(elapsed, 1)
        result["workers"] = [w.stats() for w in runtime.workers]
        result["operators"] = runtime.pool.stats() if runtime.pool is not None else None
    result["promoted"] = promoted
    result["thresholds"] = {k: v.to_dict() for k, v in thresholds.items() if k.startswith(PROCESS)}
    result["source"] = {"policy": policy_source, "thresholds": threshold_source}
    return result


# ---- measuring ------------------------------------------------------------------------------------------------------


def acceptable_answer(verdict: Verdict, reason: Any) -> bool:
    """The label the guardrails and the critic use (``critic.base`` DEFAULT_LABEL)."""
    return verdict == Verdict.ACCEPT or reason in LABEL_RULES[DEFAULT_LABEL]


def measure(
    config: Config,
    runtime: Runtime,
    platform: SandboxPlatform,
    policy: DriftingPolicy,
    stages: RecordingStages,
    timeline: Timeline,
    case_ids: list[str],
    segments: list[tuple[str, range]],
    tracked: set[SliceId],
) -> dict[str, Any]:
    store = runtime.store
    assert store is not None
    index_of = {c: platform.case(c).index for c in case_ids}
    # The affected slices: the autopilot slices the injection could change (a runner-up of the same type and tier
    # exists on their screens); the others are in the per-slice table but not in the error curves.
    affected = {j.slice for j in policy.judged.values() if j.swapped}
    windows: dict[int, Counter[str]] = defaultdict(Counter)
    would_execute_after: dict[SliceId, list[bool]] = defaultdict(list)  # answered would-execute steps, injected part
    for case_id in case_ids:
        index = index_of[case_id]
        w = windows[(index - config.start) // config.window]
        case = platform.case(case_id)
        w["cases"] += 1
        w["correct"] += int(bool(case.ended) and platform.outcome(case_id)["correct"])
        session_id = session_id_for(case_id)
        decisions = store.decisions(session_id)
        answers = {
            row.deferral.proposal.proposal_id: row
            for row in store.session_deferrals(session_id)
            if row.status == DeferralStatus.ANSWERED
        }
        for decision in decisions:
            key = slice_id(decision.slice)
            w["decisions"] += 1
            executed = decision.outcome == DecisionOutcome.EXECUTE
            w["executed"] += int(executed)
            if key not in affected:
                continue
            judged = policy.judged.get(decision.proposal_id)
            w["tracked_decisions"] += 1
            w["tracked_swapped"] += int(judged is not None and judged.swapped)
            if executed:
                w["tracked_executed"] += 1
                w["tracked_executed_wrong"] += int(judged is not None and not judged.acceptable)
            row = answers.get(decision.proposal_id)
            if row is None or row.answer is None:
                continue
            ok = acceptable_answer(row.answer.verdict, row.answer.reason)
            if decision.audit:
                w["tracked_audits"] += 1
                w["tracked_audits_ok"] += int(ok)
            would = (
                decision.score is not None and decision.threshold is not None and decision.score >= decision.threshold
            )
            if would and index >= config.inject_at:
                would_execute_after[key].append(ok)
    rows = []
    for n in sorted(windows):
        w = windows[n]
        first = config.start + n * config.window
        rows.append(
            {
                "cases": f"{first}-{first + config.window - 1}",
                "first_case": first,
                "n_cases": w["cases"],
                "correct_rate": ratio(w["correct"], w["cases"]),
                "automation_rate": ratio(w["executed"], w["decisions"]),
                "affected_audits": w["tracked_audits"],
                "audited_error": None
                if not w["tracked_audits"]
                else round(1 - w["tracked_audits_ok"] / w["tracked_audits"], 4),
                "affected_executed": w["tracked_executed"],
                "executed_error": ratio(w["tracked_executed_wrong"], w["tracked_executed"]),
                "swapped": w["tracked_swapped"],
            }
        )

    # Stage events, placed among the cases; audits per slice after each boundary until the slice's demotion.
    events = []
    for event in stages.events():
        events.append({**event.to_dict()})
    boundaries = {name: timeline.boundaries[name] for name, _ in segments}
    drift_name, inject_name = segments[1][0], segments[2][0]
    per_slice: dict[str, Any] = {}
    for key in sorted(tracked):
        audits = [(at, ok, ev) for at, k, ok, ev in stages.audit_log if k == key]
        answered = [(at, corrected, ev) for at, k, corrected, ev in stages.answer_log if k == key]
        demotions = sorted(
            [(at, ev) for at, ok, ev in audits if ev is not None and ev.to_stage != ev.from_stage]
            + [(at, ev) for at, _, ev in answered if ev is not None and ev.to_stage != ev.from_stage]
        )
        info: dict[str, Any] = {
            "audits_before_drift": [ok for at, ok, _ in audits if at < boundaries[drift_name]],
            "demotions": [
                {
                    "reason": ev.reason,
                    "case_index_at": timeline.case_at(at),
                    "audits_after_scenario_drift": sum(1 for a, _, _ in audits if boundaries[drift_name] <= a <= at),
                    "audits_after_injection": sum(1 for a, _, _ in audits if boundaries[inject_name] <= a <= at)
                    if at >= boundaries[inject_name]
                    else None,
                    "answers_after_injection": sum(1 for a, _, _ in answered if boundaries[inject_name] <= a <= at)
                    if at >= boundaries[inject_name]
                    else None,
                }
                for at, ev in demotions
            ],
            "stage_at_end": stages.stage(SliceKey(process_id=key[0], action_type=key[1])).value,
            "affected": key in affected,
        }
        before_injection = [ok for at, ok, _ in audits if at < boundaries[inject_name]]
        info["audited_acceptance_before_injection"] = ratio(sum(before_injection), len(before_injection))
        info["audits_before_injection"] = len(before_injection)
        scenario_part = [ok for at, ok, _ in audits if boundaries[drift_name] <= at < boundaries[inject_name]]
        info["audited_acceptance_scenario_drift"] = ratio(sum(scenario_part), len(scenario_part))
        after = would_execute_after.get(key, [])
        info["would_execute_acceptance_after_injection"] = ratio(sum(after), len(after))
        info["would_execute_answers_after_injection"] = len(after)
        info["bound"] = monte_carlo(stages.config, before_injection, after, config.mc_runs, config.seed)
        per_slice[slice_name(key)] = info
    phases = quality_by_phase(rows, config, per_slice, timeline)
    return {
        "windows": rows,
        "events": events,
        "slices": per_slice,
        "affected": sorted(slice_name(k) for k in affected),
        "phases": phases,
        "cases": len(case_ids),
    }


def ratio(num: int | float, den: int | float) -> float | None:
    return None if not den else round(num / den, 4)


def monte_carlo(
    config: AutonomyConfig, before: list[bool], after: list[bool], runs: int, seed: int
) -> dict[str, Any] | None:
    """Audits to demotion, simulated: the slice's window holds the audits it held before the injected drift (the
    last ``audit_window`` of them), then audits arrive accepted with the measured post-drift probability."""
    if not after:
        return None
    p_after = sum(after) / len(after)
    rng = random.Random(seed)
    needed: list[int] = []
    censored = 0
    limit = 2000
    # One AutonomyStages, a fresh slice per run: building one precomputes a table of beta quantiles (~10 ms).
    stages = AutonomyStages(AutonomyConfig(initial_stage=AutonomyStage.AUTOPILOT, alpha=config.alpha))
    for run in range(runs):
        key = SliceKey(process_id=f"simulated-{run}", action_type=ActionType.CLOSE_CHAT)
        for ok in before[-config.audit_window :]:
            stages.record_audit(key, ok)
        if stages.stage(key) != AutonomyStage.AUTOPILOT:  # the history alone raised an alarm: not this question
            continue
        for k in range(1, limit + 1):
            event = stages.record_audit(key, rng.random() < p_after)
            if event is not None and event.to_stage != event.from_stage:
                needed.append(k)
                break
        else:
            censored += 1
    if not needed:
        return {"p_after": round(p_after, 4), "runs": runs, "censored": censored}
    q = np.percentile(np.asarray(needed), [50, 90, 95, 99])
    return {
        "p_after": round(p_after, 4),
        "n_after": len(after),
        "runs": len(needed) + censored,
        "censored_at": limit,
        "censored": censored,
        "median": float(q[0]),
        "p90": float(q[1]),
        "p95": float(q[2]),
        "p99": float(q[3]),
        "mean": round(statistics.fmean(needed), 1),
    }


def quality_by_phase(
    rows: list[dict[str, Any]], config: Config, per_slice: dict[str, Any], timeline: Timeline
) -> dict[str, Any]:
    """Correct-resolution rate and executed error before the drift, after the scenario drift, after the injection
    until the (last) demotion, and after it."""
    demoted_at = [
        d["case_index_at"]
        for name, info in per_slice.items()
        if info["affected"]
        for d in info["demotions"]
        if d["case_index_at"] is not None and d["case_index_at"] >= config.inject_at
    ]
    cut = max(demoted_at) if demoted_at else None
    drift = SCENARIOS["drift"].drift
    assert drift is not None

    def part(lo: int, hi: int) -> dict[str, Any]:
        chosen = [r for r in rows if lo <= r["first_case"] < hi]
        cases = sum(r["n_cases"] for r in chosen)
        correct = sum((r["correct_rate"] or 0) * r["n_cases"] for r in chosen)
        executed = sum(r["affected_executed"] for r in chosen)
        wrong = sum((r["executed_error"] or 0) * r["affected_executed"] for r in chosen)
        audits = sum(r["affected_audits"] for r in chosen)
        audit_wrong = sum((r["audited_error"] or 0) * r["affected_audits"] for r in chosen)
        return {
            "cases": cases,
            "correct_rate": ratio(correct, cases),
            "affected_executed": executed,
            "executed_error": ratio(round(wrong), executed),
            "audits": audits,
            "audited_error": ratio(round(audit_wrong), audits),
        }

    out = {
        "before the drift": part(config.start, drift.at_case),
        "scenario drift": part(drift.at_case, config.inject_at),
    }
    if cut is None:
        out["injected drift (no demotion)"] = part(config.inject_at, config.end)
    else:
        # The window holding the demotion counts as "during"; "after" starts at the next window.
        after_from = config.start + ((cut - config.start) // config.window + 1) * config.window
        out["injected drift, until the demotion"] = part(config.inject_at, after_from)
        out["after the demotion"] = part(after_from, config.end)
    return out


# ---- report ---------------------------------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = result["config"]
    rows = result["windows"]
    x = [r["first_case"] + config["window"] / 2 for r in rows]
    fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    ax = axes[0]
    ax.plot(x, [r["correct_rate"] for r in rows], marker="o", label="correct resolution rate (refund cases)")
    ax.plot(x, [r["automation_rate"] for r in rows], marker=".", linestyle="--", label="automation rate (steps)")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate per window")
    ax.legend(loc="lower left", fontsize=8)
    ax = axes[1]
    ax.plot(x, [r["audited_error"] for r in rows], marker="o", label="realised error: audits a human did not accept")
    ax.plot(x, [r["executed_error"] for r in rows], marker="s", label="ground-truth error of executed steps")
    ax.axhline(config["alpha"], color="grey", linestyle=":", label=f"alpha {config['alpha']}")
    ax.set_ylabel("error, affected autopilot slices")
    ax.set_xlabel(f"case index (windows of {config['window']} cases)")
    ax.legend(loc="upper left", fontsize=8)
    drift = SCENARIOS["drift"].drift
    assert drift is not None
    for a in axes:
        a.axvline(drift.at_case, color="tab:orange", linestyle="--")
        a.axvline(config["inject_at"], color="tab:red", linestyle="--")
        for info in result["slices"].values():
            for d in info["demotions"]:
                if d["case_index_at"] is not None:
                    a.axvline(d["case_index_at"], color="tab:green", linestyle="-", alpha=0.7)
    axes[0].text(drift.at_case, 1.0, " scenario drift", color="tab:orange", fontsize=8, va="top")
    axes[0].text(config["inject_at"], 0.9, " injected drift", color="tab:red", fontsize=8, va="top")
    axes[0].text(axes[0].get_xlim()[1], 0.05, "green: demotions ", color="tab:green", fontsize=8, ha="right")
    fig.suptitle("Autopilot quality around a drift (runtime, sandbox drift scenario)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt(value: Any, spec: str = ".1%") -> str:
    return "—" if value is None else format(value, spec)


def render(result: dict[str, Any]) -> str:
    config = result["config"]
    lines = [
        "# Drift: demotion of the affected autopilot slices",
        "",
        f"In-process Runtime ({config['workers']} worker threads, embedded Tansu broker, SQLite store, simulated "
        f"operators) on the sandbox's `drift` scenario, {PROCESS} cases {config['start']}-{config['end'] - 1} "
        f"({result['cases']} sessions, {result['seconds']} s). Policy: {result['source']['policy']}; critic: the "
        f"policy's own probability; thresholds: {result['source']['thresholds']}. Promoted to autopilot before the "
        f"first case: {', '.join(result['promoted']) or 'none'}. Audit rate {config['audit_rate']}; guardrail target "
        f"audited acceptance {1 - config['alpha']:.0%}. Injected drift from case {config['inject_at']}: "
        f"{config['swap_share']:.0%} of the autopilot slices' proposals replaced by the runner-up of the same type "
        "with the top proposal's confidence (see the module docstring). Affected slices (those the injection "
        f"could change, where a runner-up of the same type and risk tier exists): {', '.join(result['affected'])}; "
        "the error curves and the quality table are about them.",
        "",
        "## Demotion per affected slice",
        "",
        "| slice | audited acceptance before | audits before | after the scenario drift | demotions | "
        "audits after the injection until demoted | would-execute acceptance after the injection | stage at the end |",
        "|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for name, info in result["slices"].items():
        demotions = "; ".join(f"at case {d['case_index_at']}: {d['reason']}" for d in info["demotions"]) or "none"
        k = next(
            (d["audits_after_injection"] for d in info["demotions"] if d["audits_after_injection"] is not None), None
        )
        lines.append(
            f"| {name} | {fmt(info['audited_acceptance_before_injection'])} | {info['audits_before_injection']} | "
            f"{fmt(info['audited_acceptance_scenario_drift'])} | {demotions} | {'—' if k is None else k} | "
            f"{fmt(info['would_execute_acceptance_after_injection'])} "
            f"({info['would_execute_answers_after_injection']}) | {info['stage_at_end']} |"
        )
    lines += [
        "",
        "Bound (Monte Carlo over AutonomyStages, audits only, the slice's pre-drift window as measured, post-drift "
        "acceptance as measured on the answered would-execute steps):",
        "",
        "| slice | post-drift acceptance | median audits to demotion | p90 | p95 | p99 | runs not demoted within 2000 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, info in result["slices"].items():
        b = info["bound"]
        if b is None or "median" not in b:
            lines.append(f"| {name} | {fmt(b and b.get('p_after'))} | — | — | — | — | {b and b.get('censored')} |")
            continue
        lines.append(
            f"| {name} | {fmt(b['p_after'])} | {b['median']:.0f} | {b['p90']:.0f} | {b['p95']:.0f} | {b['p99']:.0f} | "
            f"{b['censored']} of {b['runs']} |"
        )
    lines += [
        "",
        "## Quality before, during and after",
        "",
        "| part | cases | correct resolution | executed steps (affected slices) | their ground-truth error | audits | "
        "realised (audited) error |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, part in result["phases"].items():
        lines.append(
            f"| {name} | {part['cases']} | {fmt(part['correct_rate'])} | {part['affected_executed']} | "
            f"{fmt(part['executed_error'])} | {part['audits']} | {fmt(part['audited_error'])} |"
        )
    lines += [
        "",
        f"![quality curve]({NAME}.png)",
        "",
        "Per window:",
        "",
        "| cases | correct | automation | executed (affected slices) | ground-truth error | swapped proposals | "
        "audits | audited error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["windows"]:
        lines.append(
            f"| {r['cases']} | {fmt(r['correct_rate'])} | {fmt(r['automation_rate'])} | {r['affected_executed']} | "
            f"{fmt(r['executed_error'])} | {r['swapped']} | {r['affected_audits']} | {fmt(r['audited_error'])} |"
        )
    lines += ["", "## Findings", "", *result["findings"], ""]
    lines += [
        f"Machine: {result['environment']['cpu_count']} CPUs, load average at the start "
        f"{result['environment']['load_average']}; peak RSS {result['peak_rss_mib']} MiB; whole run {result['wall_s']} s.",
        "",
    ]
    return "\n".join(lines)


def pooled(*parts: dict[str, Any]) -> dict[str, Any]:
    """Two parts of the run as one (rates weighted by their counts)."""
    cases = sum(p["cases"] for p in parts)
    executed = sum(p["affected_executed"] for p in parts)
    audits = sum(p["audits"] for p in parts)
    return {
        "cases": cases,
        "correct_rate": ratio(sum((p["correct_rate"] or 0) * p["cases"] for p in parts), cases),
        "affected_executed": executed,
        "executed_error": ratio(sum((p["executed_error"] or 0) * p["affected_executed"] for p in parts), executed),
        "audits": audits,
        "audited_error": ratio(sum((p["audited_error"] or 0) * p["audits"] for p in parts), audits),
    }


def findings(result: dict[str, Any]) -> list[str]:
    """The headline sentences, from the numbers."""
    out = []
    phases = result["phases"]
    before, scenario = phases["before the drift"], phases["scenario drift"]
    scenario_demotions = [
        (name, d)
        for name, info in result["slices"].items()
        for d in info["demotions"]
        if d["case_index_at"] is not None and d["case_index_at"] < result["config"]["inject_at"]
    ]
    out.append(
        f"- Scenario drift (refund limit 150 -> 60 at case 1000), before -> after: correct resolution "
        f"{fmt(before['correct_rate'])} ({before['cases']} cases) -> {fmt(scenario['correct_rate'])} "
        f"({scenario['cases']}); ground-truth error of the executed steps of the affected slices "
        f"{fmt(before['executed_error'])} ({before['affected_executed']} steps) -> {fmt(scenario['executed_error'])} "
        f"({scenario['affected_executed']}); audited error {fmt(before['audited_error'])} ({before['audits']} audits) "
        f"-> {fmt(scenario['audited_error'])} ({scenario['audits']}); "
        + (
            "no slice was demoted. The differences are within the noise of so few cases and audits, and no executed "
            "step became wrong: the BPM's gateway reads the limit and routes the newly affected refunds to the "
            "senior screen, where the policy already transfers, so this drift does not reach the policy's "
            "proposals and there is nothing for the guardrails to catch (no K can be read from it)."
            if not scenario_demotions
            else "demoted: " + "; ".join(f"{n} ({d['reason']})" for n, d in scenario_demotions) + "."
        )
    )
    for name, info in result["slices"].items():
        for d in info["demotions"]:
            if d["audits_after_injection"] is not None:
                out.append(
                    f"- {name}: demoted after K = {d['audits_after_injection']} audited steps of it after the "
                    f"injected drift (around case {d['case_index_at']}, the highest case started when it fired; "
                    f"{d['reason']})."
                )
                break
        else:
            if info["would_execute_answers_after_injection"]:
                out.append(f"- {name}: not demoted after the injected drift.")
            elif not info["affected"]:
                out.append(f"- {name}: not affected by the injected drift (no runner-up of its type and tier); kept.")
        b = info["bound"]
        if b is not None and "p95" in b:
            out.append(
                f"  Simulated from its audit window at the injection and the would-execute acceptance measured over "
                f"the whole injected part ({fmt(b['p_after'])}, {b['n_after']} answers): demoted within "
                f"{b['median']:.0f} audited steps (median), {b['p95']:.0f} (95%), {b['p99']:.0f} (99%)."
            )
    pre = pooled(before, scenario)
    during = next((v for k, v in phases.items() if k.startswith("injected drift")), None)
    after = phases.get("after the demotion")
    if during is not None:
        out.append(
            f"- Injected drift, before the injection -> until the demotion: ground-truth error of the executed "
            f"steps of the affected slices {fmt(pre['executed_error'])} ({pre['affected_executed']} steps) -> "
            f"{fmt(during['executed_error'])} ({during['affected_executed']}); audited error "
            f"{fmt(pre['audited_error'])} -> {fmt(during['audited_error'])}; correct resolution "
            f"{fmt(pre['correct_rate'])} ({pre['cases']} cases) -> {fmt(during['correct_rate'])} "
            f"({during['cases']})."
        )
    if after is not None and not after["cases"]:
        out.append("- No case ran after the last demotion: the run ended too early to show recovery.")
    elif after is not None:
        recovered = (
            after["correct_rate"] is not None
            and pre["correct_rate"] is not None
            and after["correct_rate"] >= pre["correct_rate"] - 0.05
        )
        out.append(
            f"- After the demotion: correct resolution {fmt(after['correct_rate'])} ({after['cases']} cases; before "
            f"the injection {fmt(pre['correct_rate'])}), {after['affected_executed']} steps of the demoted slices "
            f"executed (copilot: a human approves each, so the swapped proposals no longer reach the BPM). Quality "
            f"{'recovers' if recovered else 'does not recover'} (criterion: within 5 points of the rate before the "
            "injection). The slices stay in copilot: nothing re-promotes them in this run (a promotion needs a new "
            "holding threshold and the cooldown's labels)."
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start", type=int, default=Config.start)
    parser.add_argument("--inject-at", type=int, default=Config.inject_at)
    parser.add_argument("--end", type=int, default=Config.end)
    parser.add_argument("--window", type=int, default=Config.window)
    parser.add_argument("--audit-rate", type=float, default=Config.audit_rate)
    parser.add_argument("--swap-share", type=float, default=Config.swap_share)
    parser.add_argument("--seed", type=int, default=Config.seed)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    logging.getLogger("service").setLevel(logging.ERROR)
    config = Config(
        start=args.start,
        inject_at=args.inject_at,
        end=args.end,
        window=args.window,
        audit_rate=args.audit_rate,
        swap_share=args.swap_share,
        seed=args.seed,
    )
    env = environment()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="runtime-drift-") as tmp:
        result = run(config, Path(tmp))
    result.update(
        {
            "benchmark": NAME,
            "date": datetime.now(UTC).isoformat(),
            "config": asdict(config),
            "wall_s": round(time.monotonic() - started, 1),
            "peak_rss_mib": round(peak_rss_kib() / 1024, 1),
            "environment": env,
        }
    )
    result["findings"] = findings(result)
    args.results.mkdir(parents=True, exist_ok=True)
    plot(result, args.results / f"{NAME}.png")
    json_path, md_path = write_results(NAME, result, render(result), args.results)
    print(f"wrote {json_path}, {md_path} and {args.results / f'{NAME}.png'}")
    print("\n".join(result["findings"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
