"""After-the-fact audits and the blocker accounting.

Unit level (a real SQLite file): the QA label rule, the QA store (once-only answers under concurrency, counts,
labels), the realised-error estimate (the plain Clopper-Pearson limits without clusters, a wider interval when
errors concentrate in sessions, and its coverage in simulation), what a recorded review feeds (the guardrails,
not for environment rejections; a demotion it raises), a review and its audit entry written together (a failed
audit write leaves nothing of the review), and the first blocker of every kind of interrupted session.

End to end (a real Tansu broker, the sandbox engine, a tiny LM policy, the simulated operators and QA reviewers):
audited steps execute instead of waiting, each becomes a QA item, the reviewers answer it over the bus, the answer
reaches the guardrails (``record_audit``) and the feedback topic (a training row with source ``audit``), no session
is interrupted by an audit, and the blocker metric counts exactly the store's first blockers.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import event

from critic.confidence import PolicyConfidenceCritic, fit_on_steps
from policy.policy import LMPolicy
from sandbox.generate import iter_traces
from sandbox.harness import SandboxRuntime
from sandbox.platform import SandboxPlatform
from schemas import (
    ActionType,
    AutonomyStage,
    ClickControl,
    Decision,
    DecisionOutcome,
    Deferral,
    FeedbackRecord,
    FeedbackSource,
    Proposal,
    ProposalFeatures,
    QAAnswer,
    QAItem,
    QALabel,
    RejectReason,
    RiskTier,
    SliceKey,
    UIState,
    Verdict,
    qa_label,
)
from schemas.screen import ButtonControl, ChatControl, ScreenSchema
from service.runtime.autonomy import AutonomyConfig, AutonomyStages
from service.runtime.blockers import BlockerKind, first_blockers, rank
from service.runtime.bus.consumer import read_to_end
from service.runtime.bus.topics import Topics
from service.runtime.metrics import RuntimeMetrics
from service.runtime.qa import QAReviews, qa_feedback
from service.runtime.qa_store import QAStatus, QAStore, qa_id_for
from service.runtime.realised_error import realised_error
from service.runtime.stage_sync import StageSync
from service.runtime.store import AnswerStatus, RuntimeStore, SessionStatus
from tests.service.test_worker import QUICK, TINY, settings, thresholds

torch.set_num_threads(1)

SCREEN = ScreenSchema(
    screen_id="triage",
    process_id="billing",
    controls=[ChatControl(id="chat"), ButtonControl(id="ok")],
    transfer_queues=["tier2"],
    resolution_codes=["done"],
)
CLICK = SliceKey(process_id="billing", action_type=ActionType.CLICK_CONTROL)


def step(
    session_id: str,
    n: int,
    outcome: DecisionOutcome = DecisionOutcome.EXECUTE,
    reason: str = "confident: score 0.9 >= threshold 0.8",
    audit: bool = False,
) -> tuple[UIState, Proposal, Decision]:
    """The n-th step of a session on a one-button screen, decided with ``outcome``."""
    state = UIState(session_id=session_id, case_id=f"case-{session_id}", process_id="billing", screen=SCREEN, step=n)
    proposal = Proposal(
        proposal_id=f"{session_id}-p{n}",
        session_id=session_id,
        case_id=state.case_id,
        process_id="billing",
        step=n,
        state_etag=state.etag,
        action=ClickControl(control_id="ok"),
        features=ProposalFeatures(logprob=-0.1, margin=0.5, entropy=0.2, probability=0.9),
    )
    decision = Decision(
        decision_id=f"{session_id}-d{n}",
        proposal_id=proposal.proposal_id,
        session_id=session_id,
        state_etag=state.etag,
        outcome=outcome,
        slice=CLICK,
        stage=AutonomyStage.AUTOPILOT,
        tier=RiskTier.CRITICAL,
        score=0.9,
        threshold=0.8,
        audit=audit,
        reason=reason,
    )
    return state, proposal, decision


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RuntimeStore]:
    with RuntimeStore(f"sqlite:///{tmp_path / 'runtime.db'}") as runtime_store:
        yield runtime_store


def queued(store: RuntimeStore, session_id: str, n: int = 0) -> QAItem:
    state, proposal, decision = step(session_id, n, audit=True)
    item = QAItem(
        qa_id=qa_id_for(proposal.proposal_id),
        session_id=session_id,
        queue="billing",
        state=state,
        proposal=proposal,
        decision=decision,
    )
    assert QAStore(store).add(item)
    return item


def review(item: QAItem, verdict: Verdict = Verdict.ACCEPT, reason: RejectReason | None = None, **kw: Any) -> QAAnswer:
    return QAAnswer(
        qa_id=item.qa_id,
        proposal_id=item.proposal.proposal_id,
        session_id=item.session_id,
        verdict=verdict,
        reason=reason,
        operator_id=kw.pop("operator_id", "op-1"),
        **kw,
    )


# ---- the label ----------------------------------------------------------------------------------------------------


def test_the_label_is_what_operators_call_an_error() -> None:
    assert qa_label(Verdict.ACCEPT, None) == QALabel.ACCEPTABLE
    assert qa_label(Verdict.CORRECT, RejectReason.ACCEPTABLE_ALTERNATIVE) == QALabel.ACCEPTABLE
    assert qa_label(Verdict.CORRECT, RejectReason.MODEL_ERROR) == QALabel.UNACCEPTABLE
    assert qa_label(Verdict.REJECT, RejectReason.OTHER) == QALabel.UNACCEPTABLE
    assert qa_label(Verdict.REJECT, RejectReason.ENVIRONMENT) == QALabel.EXCLUDED
    with pytest.raises(ValueError, match="reason"):
        qa_label(Verdict.REJECT, None)
    item = QAItem(qa_id="q", session_id="s", queue="billing", state=step("s", 0)[0], proposal=step("s", 0)[1],
                  decision=step("s", 0)[2])  # fmt: skip
    with pytest.raises(ValueError, match="reason"):
        review(item, Verdict.REJECT)
    with pytest.raises(ValueError, match="corrected_action"):
        review(item, Verdict.CORRECT, RejectReason.MODEL_ERROR)
    with pytest.raises(ValueError, match="session_id"):
        QAItem(qa_id="q", session_id="other", queue="b", state=item.state, proposal=item.proposal,
               decision=item.decision)  # fmt: skip


# ---- the QA store -------------------------------------------------------------------------------------------------


def test_a_qa_item_is_answered_once_whoever_races_for_it(store: RuntimeStore) -> None:
    qa = QAStore(store)
    item = queued(store, "s1")
    assert not qa.add(item)  # a retry queues nothing new
    assert qa.counts() == {"pending": 1, "answered": 0}
    assert [row.item.qa_id for row in qa.items(["billing"])] == [item.qa_id] and qa.items(["other"]) == []

    verdicts = [Verdict.ACCEPT] * 4 + [Verdict.REJECT] * 4
    results: list[AnswerStatus] = []
    barrier = threading.Barrier(len(verdicts))

    def answer(verdict: Verdict) -> None:
        reason = None if verdict == Verdict.ACCEPT else RejectReason.MODEL_ERROR
        barrier.wait()
        results.append(QAStore(store).answer(review(item, verdict, reason)).result)

    threads = [threading.Thread(target=answer, args=(v,)) for v in verdicts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    counts = Counter(results)
    assert counts[AnswerStatus.ACCEPTED] == 1, counts
    row = qa.get(item.qa_id)
    assert row is not None and row.status == QAStatus.ANSWERED and row.answer is not None
    # Losers that said the same as the winner are duplicates, the others stale.
    same = sum(1 for v in verdicts if v == row.answer.verdict) - 1
    assert counts[AnswerStatus.DUPLICATE] == same and counts[AnswerStatus.STALE] == len(verdicts) - 1 - same
    assert qa.counts() == {"pending": 0, "answered": 1}
    assert qa.answer(review(item.model_copy(update={"qa_id": "nope"}))).result == AnswerStatus.UNKNOWN
    wrong = review(item).model_copy(update={"proposal_id": "another"})
    assert qa.answer(wrong).result == AnswerStatus.STALE
    labels = qa.labels()
    assert [(r.session_id, r.label) for r in labels] == [("s1", row.label)]
    assert qa.outcomes()[str(CLICK)]["pending"] == 0


def test_unpublished_items_are_listed_for_republishing(store: RuntimeStore) -> None:
    qa = QAStore(store)
    item = queued(store, "s1")
    later = datetime.now(UTC) + timedelta(seconds=5)
    assert [i.qa_id for i in qa.unpublished(later)] == [item.qa_id]
    assert qa.unpublished(datetime.now(UTC) - timedelta(hours=1)) == []  # too young: its worker may still send it
    assert qa.mark_published(item.qa_id) and not qa.mark_published(item.qa_id)
    assert qa.unpublished(later) == []


# ---- what a review feeds ------------------------------------------------------------------------------------------


def test_a_recorded_review_feeds_the_guardrails_except_environment(store: RuntimeStore) -> None:
    config = AutonomyConfig(initial_stage=AutonomyStage.AUTOPILOT, min_audits=20, audit_window=20, alpha=0.1)
    stages = AutonomyStages(config)
    sync = StageSync(store, stages, origin="api")
    recorded: list[QALabel] = []
    reviews = QAReviews(QAStore(store), stages, None, Topics("t."), stage_sync=sync,
                        on_record=lambda item, label: recorded.append(label))  # fmt: skip
    reasons = [None, RejectReason.ACCEPTABLE_ALTERNATIVE, RejectReason.ENVIRONMENT, RejectReason.MODEL_ERROR]
    for i, reason in enumerate(reasons):
        item = queued(store, f"s{i}")
        verdict = Verdict.ACCEPT if reason is None else Verdict.REJECT
        assert reviews.record(review(item, verdict, reason)).result == AnswerStatus.ACCEPTED
        assert reviews.record(review(item, verdict, reason)).result == AnswerStatus.DUPLICATE  # fed once only
    # accept and acceptable alternative are acceptable, the model error is not, the environment one left out.
    assert stages.audited_acceptance(CLICK) == (2, 3)
    assert recorded == [QALabel.ACCEPTABLE, QALabel.ACCEPTABLE, QALabel.EXCLUDED, QALabel.UNACCEPTABLE]
    # The training row for the nightly job: source audit, the operator's verdict and reason as given.
    item = QAStore(store).get(qa_id_for("s3-p0"))
    assert item is not None and item.answer is not None
    record = qa_feedback(item.item, item.answer)
    assert (record.source, record.accepted, record.reason) == (FeedbackSource.AUDIT, False, RejectReason.MODEL_ERROR)
    # Unacceptable reviews demote the slice; the demotion goes to the stage log for every other process.
    for i in range(20):
        reviews.record(review(queued(store, f"bad{i}"), Verdict.REJECT, RejectReason.MODEL_ERROR))
    assert stages.stage(CLICK) == AutonomyStage.COPILOT
    assert [e.kind for e in store.stage_events_after(0)] == ["demotion"]


def test_a_review_and_its_audit_entry_are_written_together(store: RuntimeStore) -> None:
    """One transaction: when the audit entry cannot be written, nothing of the review stands (the item is still
    pending, no entry, nothing fed); the retry is accepted with its entry, a repeat finds that entry again."""
    stages = AutonomyStages(AutonomyConfig(initial_stage=AutonomyStage.AUTOPILOT))
    recorded: list[QALabel] = []
    qa = QAStore(store)
    reviews = QAReviews(qa, stages, None, Topics("t."), on_record=lambda item, label: recorded.append(label))
    item = queued(store, "s1")
    rejection = review(item, Verdict.REJECT, RejectReason.MODEL_ERROR)

    def fail_the_audit_write(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO AUDIT_LOG"):
            raise RuntimeError("the audit log is unavailable")

    event.listen(store.engine, "before_cursor_execute", fail_the_audit_write)
    try:
        with pytest.raises(RuntimeError, match="audit log"):
            reviews.record(rejection)
    finally:
        event.remove(store.engine, "before_cursor_execute", fail_the_audit_write)
    row = qa.get(item.qa_id)
    assert row is not None and (row.status, row.answer, row.label) == (QAStatus.PENDING, None, None)
    assert qa.review_audit(item.qa_id) is None and store.audit_log() == []
    assert stages.audited_acceptance(CLICK) == (0, 0) and recorded == []

    accepted = reviews.record(rejection, audit_details={"slice": str(CLICK)})
    assert accepted.result == AnswerStatus.ACCEPTED and accepted.audit_id is not None
    entry = qa.review_audit(item.qa_id)
    assert entry is not None and (entry.id, entry.actor, entry.action) == (accepted.audit_id, "op-1", "qa:reject")
    assert entry.details == {"session_id": "s1", "label": "unacceptable", "slice": str(CLICK)}
    # A retry is a duplicate that finds the same entry; a different review is refused; neither writes an entry.
    duplicate = reviews.record(rejection.model_copy(update={"decided_at": datetime.now(UTC)}))
    assert duplicate.result == AnswerStatus.DUPLICATE and duplicate.audit_id == accepted.audit_id
    stale = reviews.record(review(item))
    assert stale.result == AnswerStatus.STALE and stale.audit_id is None
    assert [e.target for e in store.audit_log()] == [item.qa_id]
    assert stages.audited_acceptance(CLICK) == (0, 1) and recorded == [QALabel.UNACCEPTABLE]  # fed once


# ---- the realised-error estimate ----------------------------------------------------------------------------------


def test_without_clusters_the_interval_is_clopper_pearson() -> None:
    labels = [(f"s{i}", i < 3) for i in range(60)]
    result = realised_error(labels)
    assert (result.errors, result.reviewed, result.sessions, result.design_effect) == (3, 60, 60, 1.0)
    assert result.estimate == pytest.approx(0.05)
    assert (result.low, result.high) == pytest.approx((0.0104323, 0.1392432), abs=1e-6)  # scipy binomtest exact
    assert realised_error([]).estimate is None
    zero = realised_error([(f"s{i}", False) for i in range(59)])
    assert zero.low == 0.0 and zero.high == pytest.approx(1 - 0.025 ** (1 / 59), abs=1e-9)


def test_errors_concentrated_in_sessions_widen_the_interval() -> None:
    spread = [(f"s{i}", i % 10 == 0) for i in range(100)]  # 10 errors in 10 sessions
    clustered = [(f"s{i // 10}", i < 10) for i in range(100)]  # the same 10 errors in one session of ten
    a, b = realised_error(spread), realised_error(clustered)
    assert a.estimate == b.estimate == pytest.approx(0.1)
    assert a.design_effect == 1.0 and b.design_effect > 5.0
    assert b.high is not None and a.high is not None and b.high > a.high + 0.1


def test_the_interval_covers_the_true_rate_over_redraws_of_sessions() -> None:
    """Sessions of 1-3 audited steps whose error rates vary by session (mean 5%): the 95% interval holds the true
    mean rate in at least 93% of 400 redraws (the clustered interval is conservative, not anti-conservative)."""
    rng = random.Random(5)
    covered = 0
    draws = 400
    for _ in range(draws):
        labels = []
        for s in range(300):
            hard = rng.random() < 0.2
            rate = 0.17 if hard else 0.0125  # mean 0.2 * 0.17 + 0.8 * 0.0125 = 0.044
            labels += [(f"s{s}", rng.random() < rate) for _ in range(rng.randint(1, 3))]
        result = realised_error(labels)
        assert result.low is not None and result.high is not None
        covered += result.low <= 0.044 <= result.high
    assert covered / draws >= 0.93, covered / draws


# ---- the blocker accounting ---------------------------------------------------------------------------------------


def test_the_first_blocker_of_every_kind_of_interrupted_session(store: RuntimeStore) -> None:
    def session(session_id: str, steps: list[tuple[DecisionOutcome, str]], end: SessionStatus | None,
                outcome: dict[str, Any] | None = None) -> None:  # fmt: skip
        assert store.create_session(session_id, f"case-{session_id}", "billing")
        for n, (kind, reason) in enumerate(steps):
            state, proposal, decision = step(session_id, n, kind, reason)
            if kind == DecisionOutcome.EXECUTE:
                store.record_proposal(proposal)
                store.record_decision(decision)
            elif kind in (DecisionOutcome.DEFER, DecisionOutcome.ALWAYS_ASK):
                deferral = Deferral(deferral_id=f"{session_id}-f{n}", session_id=session_id, queue="billing",
                                    proposal=proposal, decision=decision, state=state)  # fmt: skip
                assert store.park(session_id, deferral)
            else:
                store.record_proposal(proposal)
                store.record_decision(decision)
            time.sleep(0.002)  # decisions are ordered by their time
        if end is not None:
            assert store.finish(session_id, end, outcome or {})

    confident = (DecisionOutcome.EXECUTE, "confident: 0.9 >= 0.8")
    session("automated", [confident, confident], SessionStatus.COMPLETED)
    session("copilot", [confident, (DecisionOutcome.DEFER, "stage_copilot: in copilot"),
                        (DecisionOutcome.DEFER, "below_threshold: 0.2 < 0.8")], SessionStatus.COMPLETED)  # fmt: skip
    session("ask", [(DecisionOutcome.ALWAYS_ASK, "always_ask: refunds"),
                    (DecisionOutcome.DEFER, "stage_copilot: x")], None)  # fmt: skip
    session("blocked", [confident, (DecisionOutcome.BLOCKED, "blocked: nothing may run")], SessionStatus.HANDED_OVER)
    session("maxed", [confident] * 3, SessionStatus.HANDED_OVER, {"reason": "max_steps: 40", "rule": "max_steps"})
    session("stopped", [confident], SessionStatus.STOPPED)
    session("audit", [(DecisionOutcome.DEFER, "audit: deferred as a random audit")], SessionStatus.COMPLETED)
    session("running", [confident], None)  # not interrupted (yet)

    blockers = first_blockers(store)
    found = {sid: (b.kind, b.rule, b.slice) for sid, b in blockers.items()}
    assert found == {
        "copilot": (BlockerKind.DEFERRAL, "stage_copilot", "billing/click_control"),
        "ask": (BlockerKind.ALWAYS_ASK, "always_ask", "billing/click_control"),
        "blocked": (BlockerKind.BLOCKED, "blocked", "billing/click_control"),
        "maxed": (BlockerKind.HAND_OVER, "max_steps", "billing/*"),
        "stopped": (BlockerKind.STOPPED, "stopped", "billing/*"),
        "audit": (BlockerKind.DEFERRAL, "audit", "billing/click_control"),
    }
    table = rank(blockers.values())
    assert sum(row.sessions for row in table) == 6 and table[0].share == pytest.approx(1 / 6)
    assert first_blockers(store, since=datetime.now(UTC) + timedelta(hours=1)) == {}


# ---- end to end through the runtime -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models() -> tuple[LMPolicy, PolicyConfidenceCritic]:
    traces = iter_traces(40, 5)
    policy = LMPolicy(model=TINY, training=QUICK, vocab_size=600, progress=False).fit(traces[:30])
    critic = fit_on_steps(policy, [s for trace in iter_traces(6, 77) for s in trace.steps])
    return policy, critic


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


@pytest.mark.integration
def test_after_the_fact_audits_run_through_the_runtime(tmp_path: Path, models: Any) -> None:
    policy, critic = models
    platform = SandboxPlatform(seed=31)
    cases = [platform.open_case(case_index=i) for i in range(8)]
    # Every slice in autopilot; guardrails that never demote here, so the stages' audit counts stay whole.
    stages = AutonomyStages(AutonomyConfig(initial_stage=AutonomyStage.AUTOPILOT, alpha=0.9, spike_min_count=10**6))
    metrics = RuntimeMetrics(process_metrics=False)
    config = settings(tmp_path, None, audit_rate=0.5, workers=1)
    runtime = SandboxRuntime(platform, policy, critic, thresholds(), config, stages=stages, metrics=metrics)
    with runtime:
        store, producer = runtime.store, runtime.producer
        assert store is not None and producer is not None and runtime.qa_reviewers is not None
        qa = QAStore(store)
        session_ids = runtime.start_sessions(cases)
        wait_until(lambda: runtime.finished(session_ids), 90, "every session to end")
        decisions = [d for s in session_ids for d in store.decisions(s)]
        audited = [d for d in decisions if d.audit]
        assert audited, "audit_rate 0.5 over critic-gated executions should audit some steps"
        # After the fact: an audited step is executed, never deferred.
        assert all(d.outcome == DecisionOutcome.EXECUTE for d in audited)
        deferrals = [row for s in session_ids for row in store.session_deferrals(s)]
        assert not any(row.deferral.decision.audit for row in deferrals)
        # Every audited step that ran is a QA item, and the reviewers answer all of them over the bus.
        wait_until(lambda: qa.counts()["pending"] == 0 and qa.counts()["answered"] > 0, 30, "the reviews")
        rows = qa.items(status=QAStatus.ANSWERED, limit=500)
        assert {r.item.proposal.proposal_id for r in rows} <= {d.proposal_id for d in audited}
        for row in rows:
            case = platform.case(row.item.state.case_id)
            assert row.item.step < len(case.actions), "a QA item is for a step that was applied"
            assert row.answer is not None and row.label == qa_label(row.answer.verdict, row.answer.reason)
            # Recorded by the workers from qa-answers with its audit entry, as a review through the API is.
            entry = qa.review_audit(row.item.qa_id)
            assert entry is not None and (entry.actor, entry.action) == (
                row.answer.operator_id,
                f"qa:{row.answer.verdict.value}",
            )
            assert entry.details == {"session_id": row.item.session_id, "label": row.label, "via": "qa-answers"}
        assert len(rows) == runtime.qa_reviewers.stats()["received"] - runtime.qa_reviewers.stats()["no_snapshot"]

        # The guardrails saw every review but the environment ones.
        counted = Counter(r.label for r in rows)
        slices = {str(r.item.decision.slice): r.item.decision.slice for r in rows}
        total = sum(stages.audited_acceptance(key)[1] for key in slices.values())
        assert total == counted[QALabel.ACCEPTABLE] + counted[QALabel.UNACCEPTABLE]
        ok = sum(stages.audited_acceptance(key)[0] for key in slices.values())
        assert ok == counted[QALabel.ACCEPTABLE]

        # The nightly retraining gets one training row per review, source audit.
        producer.flush(10.0)
        expected = {f"qa-{r.item.qa_id}" for r in rows}

        def training_rows() -> dict[str, FeedbackRecord]:
            records = read_to_end(runtime.bootstrap, runtime.topics.feedback, FeedbackRecord, 5.0)
            return {f.record_id: f for f in records}

        wait_until(lambda: expected <= set(training_rows()), 30, "the QA training rows")
        feedback = training_rows()
        for row in rows:
            record = feedback[f"qa-{row.item.qa_id}"]
            assert record.source == FeedbackSource.AUDIT and record.accepted == (row.answer.verdict == Verdict.ACCEPT)

        # The realised error is read off the same labels.
        labels = qa.labels()
        estimate = realised_error((x.session_id, x.label == QALabel.UNACCEPTABLE) for x in labels
                                  if x.label != QALabel.EXCLUDED)  # fmt: skip
        assert estimate.reviewed == counted[QALabel.ACCEPTABLE] + counted[QALabel.UNACCEPTABLE]
        assert estimate.errors == counted[QALabel.UNACCEPTABLE]

        # No session was interrupted by an audit, and the blocker metric counts what the store says.
        blockers = first_blockers(store)
        assert not any(b.rule == "audit" for b in blockers.values())
        from_store = Counter((b.kind.value, b.rule, b.process_id, b.action_type) for b in blockers.values())
        from_metric: Counter[tuple[str, str, str, str]] = Counter()
        for family in metrics.registry.collect():
            if family.name == "autopilot_session_blockers":
                for sample in family.samples:
                    if sample.name.endswith("_total"):
                        labels_ = sample.labels
                        key = (labels_["kind"], labels_["rule"], labels_["process"], labels_["action_type"])
                        from_metric[key] += int(sample.value)
        assert from_metric == from_store
        automated = [s for s in session_ids if store.get_session(s).automated]  # type: ignore[union-attr]
        print(f"sessions {len(session_ids)}, automated {len(automated)}, audited {len(audited)}, reviews {len(rows)}")
