"""The router's rules, their order and reasons, the audit draw, and decide()'s latency."""

from __future__ import annotations

import math
import time

import pytest

from critic.thresholds import SliceThresholds, ThresholdConfig, ThresholdResult
from sandbox.risk import DEFAULT_RISK_POLICY
from schemas import (
    Action,
    ActionType,
    AutonomyStage,
    ClickControl,
    DecisionOutcome,
    FillField,
    Proposal,
    ProposalFeatures,
    RiskTier,
    SendTextToChat,
    SliceKey,
)
from service.runtime.autonomy import AutonomyConfig, AutonomyStages
from service.runtime.router import AuditMode, Router, Rule, SessionContext, audit_draw, rule_of

BILLING_FILL = SliceKey(process_id="billing_dispute", action_type=ActionType.FILL_FIELD)
CLOSURE_CLICK = SliceKey(process_id="account_closure", action_type=ActionType.CLICK_CONTROL)
THRESHOLD = 0.8


def result(threshold: float | None) -> ThresholdResult:
    if threshold is None:
        return ThresholdResult(None, 150, 0, 0, None, None, 0.0, "no threshold passes")
    return ThresholdResult(threshold, 400, 300, 6, 0.02, 0.04, 0.75, "lowest passing threshold")


def thresholds() -> SliceThresholds:
    # The real SliceThresholds class, as the critic registry serves it.
    return SliceThresholds(
        ThresholdConfig(),
        {str(BILLING_FILL): result(THRESHOLD), str(CLOSURE_CLICK): result(0.7), "plan_change/fill_field": result(None)},
    )


def proposal(action: Action, process_id: str = "billing_dispute", proposal_id: str = "p-1") -> Proposal:
    return Proposal(
        proposal_id=proposal_id,
        session_id="s-1",
        case_id="c-1",
        process_id=process_id,
        step=3,
        state_etag="etag-1",
        action=action,
        features=ProposalFeatures(logprob=-0.1, margin=0.6, entropy=0.3, rank=0, probability=0.9),
    )


FILL = FillField(control_id="dispute_amount", value="12.50")
CTX = SessionContext(session_id="s-1")


def autopilot(*slices: SliceKey, logging_only: frozenset[str] = frozenset()) -> AutonomyStages:
    """Stages with ``slices`` promoted to autopilot the ordinary way (holding threshold + labels)."""
    stages = AutonomyStages(AutonomyConfig(logging_only_processes=logging_only))
    for key in slices:
        assert stages.consider_promotion(key, 0.8, labels=500).stage == AutonomyStage.AUTOPILOT
    return stages


def router(
    stages: AutonomyStages, audit_rate: float = 0.0, seed: int = 0, audit_mode: AuditMode = AuditMode.AFTER
) -> Router:
    return Router(DEFAULT_RISK_POLICY, stages, thresholds(), audit_rate=audit_rate, seed=seed, audit_mode=audit_mode)


def test_confident_critic_gated_step_executes_with_its_evidence() -> None:
    decision = router(autopilot(BILLING_FILL)).decide(proposal(FILL), 0.93, CTX)
    assert decision.outcome == DecisionOutcome.EXECUTE
    assert rule_of(decision) == Rule.CONFIDENT
    assert decision.reason == "confident: critic score 0.9300 >= threshold 0.8000"
    assert (decision.slice, decision.stage, decision.tier) == (BILLING_FILL, AutonomyStage.AUTOPILOT, RiskTier.CRITICAL)
    assert (decision.score, decision.threshold, decision.audit) == (0.93, THRESHOLD, False)
    assert (decision.proposal_id, decision.session_id, decision.state_etag) == ("p-1", "s-1", "etag-1")
    assert decision.decision_id


def test_score_equal_to_threshold_executes_and_just_below_defers() -> None:
    r = router(autopilot(BILLING_FILL))
    assert r.decide(proposal(FILL), THRESHOLD, CTX).outcome == DecisionOutcome.EXECUTE
    below = r.decide(proposal(FILL), math.nextafter(THRESHOLD, 0.0), CTX)
    assert below.outcome == DecisionOutcome.DEFER
    assert rule_of(below) == Rule.BELOW_THRESHOLD
    assert "< threshold 0.8000" in below.reason


def test_kill_switch_wins_over_everything() -> None:
    stages = autopilot(BILLING_FILL, CLOSURE_CLICK)
    r = router(stages)
    cases = [
        (proposal(FILL), 0.99),  # would execute: confident
        (proposal(ClickControl(control_id="lookup_account"), "account_closure"), None),  # would execute: non-critical
        (proposal(ClickControl(control_id="close_account"), "account_closure"), 0.99),  # would be always-ask
    ]
    assert [r.decide(p, s, CTX).outcome for p, s in cases] == [
        DecisionOutcome.EXECUTE,
        DecisionOutcome.EXECUTE,
        DecisionOutcome.ALWAYS_ASK,
    ]
    stages.set_kill_switch(True, actor="sup-1", reason="incident 42")
    for p, s in cases:
        decision = r.decide(p, s, CTX)
        assert decision.outcome == DecisionOutcome.DEFER
        assert rule_of(decision) == Rule.KILL_SWITCH
    stages.set_kill_switch(False, actor="sup-1", reason="resolved")
    assert r.decide(*cases[0], CTX).outcome == DecisionOutcome.EXECUTE


def test_tier_lookup_uses_the_control_id() -> None:
    r = router(autopilot(CLOSURE_CLICK))
    close = r.decide(proposal(ClickControl(control_id="close_account"), "account_closure"), 0.99, CTX)
    assert (close.outcome, close.tier, rule_of(close)) == (
        DecisionOutcome.ALWAYS_ASK,
        RiskTier.ALWAYS_ASK,
        Rule.ALWAYS_ASK,
    )
    # Same process and action type, another control: critic-gated, and executes on a confident score.
    other = r.decide(proposal(ClickControl(control_id="confirm_identity"), "account_closure"), 0.99, CTX)
    assert (other.outcome, other.tier) == (DecisionOutcome.EXECUTE, RiskTier.CRITICAL)
    # A lookup is non-critical: executes without any critic score.
    lookup = r.decide(proposal(ClickControl(control_id="lookup_account"), "account_closure"), None, CTX)
    assert (lookup.outcome, lookup.tier, rule_of(lookup)) == (
        DecisionOutcome.EXECUTE,
        RiskTier.NON_CRITICAL,
        Rule.NON_CRITICAL,
    )
    assert lookup.threshold is None
    # An action without a control id (chat text) in account_closure is always-ask by the action-type rule.
    text = r.decide(proposal(SendTextToChat(text="We are sorry to see you go."), "account_closure"), 0.99, CTX)
    assert text.tier == RiskTier.ALWAYS_ASK


def test_always_ask_holds_in_every_stage() -> None:
    stages = AutonomyStages(AutonomyConfig(logging_only_processes=frozenset({"account_closure"})))
    r = router(stages)
    close = proposal(ClickControl(control_id="close_account"), "account_closure")
    for stage in AutonomyStage:
        stages.override(CLOSURE_CLICK, stage, actor="sup-1", reason="test")
        assert r.decide(close, 0.99, CTX).outcome == DecisionOutcome.ALWAYS_ASK


def test_logging_and_copilot_stages_defer_with_their_own_reasons() -> None:
    stages = AutonomyStages(AutonomyConfig(logging_only_processes=frozenset({"plan_change"})))
    r = router(stages)
    logging = r.decide(proposal(FillField(control_id="new_plan", value="basic"), "plan_change"), 0.99, CTX)
    assert (logging.outcome, logging.stage, rule_of(logging)) == (
        DecisionOutcome.DEFER,
        AutonomyStage.LOGGING,
        Rule.STAGE_LOGGING,
    )
    assert "only records" in logging.reason
    copilot = r.decide(proposal(FILL), 0.99, CTX)
    assert (copilot.outcome, copilot.stage, rule_of(copilot)) == (
        DecisionOutcome.DEFER,
        AutonomyStage.COPILOT,
        Rule.STAGE_COPILOT,
    )
    assert copilot.threshold == THRESHOLD  # recorded, so "would it have executed" can be read later
    # Non-critical actions are deferred too outside autopilot.
    lookup = r.decide(proposal(ClickControl(control_id="lookup_invoice")), None, CTX)
    assert rule_of(lookup) == Rule.STAGE_COPILOT


def test_action_budget_and_step_failures_guard_even_non_critical_actions() -> None:
    stages = autopilot(BILLING_FILL, SliceKey(process_id="billing_dispute", action_type=ActionType.CLICK_CONTROL))
    r = router(stages)
    lookup = proposal(ClickControl(control_id="lookup_invoice"))
    for p, score in ((proposal(FILL), 0.99), (lookup, None)):
        assert r.decide(p, score, SessionContext("s-1", actions_executed=39)).outcome == DecisionOutcome.EXECUTE
        budget = r.decide(p, score, SessionContext("s-1", actions_executed=40))
        assert (budget.outcome, rule_of(budget)) == (DecisionOutcome.DEFER, Rule.ACTION_BUDGET)
        assert "40 actions (budget 40)" in budget.reason
        assert r.decide(p, score, SessionContext("s-1", failures_on_step=1)).outcome == DecisionOutcome.EXECUTE
        failing = r.decide(p, score, SessionContext("s-1", failures_on_step=2))
        assert (failing.outcome, rule_of(failing)) == (DecisionOutcome.DEFER, Rule.STEP_FAILURES)
    # The budget rule comes before the failure rule.
    both = r.decide(proposal(FILL), 0.99, SessionContext("s-1", actions_executed=40, failures_on_step=5))
    assert rule_of(both) == Rule.ACTION_BUDGET


def test_missing_score_and_missing_threshold_defer() -> None:
    plan_fill = SliceKey(process_id="plan_change", action_type=ActionType.FILL_FIELD)
    unseen = SliceKey(process_id="warranty_claim", action_type=ActionType.FILL_FIELD)
    r = router(autopilot(BILLING_FILL, plan_fill, unseen))
    unscored = r.decide(proposal(FILL), None, CTX)
    assert (unscored.outcome, rule_of(unscored)) == (DecisionOutcome.DEFER, Rule.NOT_SCORED)
    for process in ("plan_change", "warranty_claim"):  # a group without a threshold, and a group never fitted
        decision = r.decide(proposal(FillField(control_id="x", value="1"), process), 0.999, CTX)
        assert (decision.outcome, rule_of(decision)) == (DecisionOutcome.DEFER, Rule.NO_THRESHOLD)
        assert "no holding threshold" in decision.reason
        assert decision.threshold is None


def test_every_rule_is_reachable_and_has_a_distinct_reason() -> None:
    stages = AutonomyStages(AutonomyConfig(logging_only_processes=frozenset({"plan_change"})))
    billing_click = SliceKey(process_id="billing_dispute", action_type=ActionType.CLICK_CONTROL)
    for key in (BILLING_FILL, billing_click, CLOSURE_CLICK):
        stages.consider_promotion(key, 0.8, labels=500)
    r = Router(DEFAULT_RISK_POLICY, stages, thresholds(), audit_rate=0.5, seed=3)
    reasons: dict[Rule, set[str]] = {}

    def run(p: Proposal, score: float | None, ctx: SessionContext = CTX) -> None:
        decision = r.decide(p, score, ctx)
        reasons.setdefault(rule_of(decision), set()).add(decision.reason.split(":", 1)[1])

    run(proposal(ClickControl(control_id="close_account"), "account_closure"), 0.9)
    run(proposal(FillField(control_id="new_plan", value="basic"), "plan_change"), 0.9)
    run(proposal(FILL, "address_change"), 0.9)
    run(proposal(FILL), 0.9, SessionContext("s-1", actions_executed=40))
    run(proposal(FILL), 0.9, SessionContext("s-1", failures_on_step=2))
    run(proposal(ClickControl(control_id="lookup_invoice")), None)
    run(proposal(FILL), None)
    run(proposal(ClickControl(control_id="submit_dispute")), 0.9)  # billing click has no threshold group
    run(proposal(FILL), 0.1)
    for i in range(20):  # audit_rate 0.5: both audit and confident outcomes appear
        run(proposal(FILL, proposal_id=f"p-{i}"), 0.9)
    stages.set_kill_switch(True, "sup-1", "test")
    run(proposal(FILL), 0.9)
    assert set(reasons) == set(Rule)
    # The details differ per rule too, not only the prefix.
    first = {rule: sorted(texts)[0] for rule, texts in reasons.items()}
    assert len(set(first.values())) == len(Rule)


@pytest.mark.parametrize("mode", list(AuditMode))
def test_audit_share_is_close_to_the_rate_and_deterministic_per_proposal(mode: AuditMode) -> None:
    """Both audit modes sample the same steps; after the fact they execute, before they wait for a human."""
    stages = autopilot(BILLING_FILL)
    r = router(stages, audit_rate=0.05, seed=7, audit_mode=mode)
    ids = [f"proposal-{i}" for i in range(10_000)]
    decisions = [r.decide(proposal(FILL, proposal_id=pid), 0.95, CTX) for pid in ids]
    audited = [d.audit for d in decisions]
    share = sum(audited) / len(audited)
    # Binomial standard deviation is 0.0022: four of them either side.
    assert 0.041 <= share <= 0.059, share
    audited_outcome = DecisionOutcome.EXECUTE if mode == AuditMode.AFTER else DecisionOutcome.DEFER
    for d in decisions:
        assert d.outcome == (audited_outcome if d.audit else DecisionOutcome.EXECUTE)
        assert rule_of(d) == (Rule.AUDIT if d.audit else Rule.CONFIDENT)
        assert ("after the fact" in d.reason) == (d.audit and mode == AuditMode.AFTER)
    # A redelivered proposal gets the same draw, on a fresh router (another worker) with the same seed, whatever
    # the mode: the draw does not depend on it (nor on the score).
    again = router(stages, audit_rate=0.05, seed=7, audit_mode=AuditMode.BEFORE)
    assert [again.decide(proposal(FILL, proposal_id=pid), 0.95, CTX).audit for pid in ids[:2000]] == audited[:2000]
    # Another seed draws another sample.
    other = router(stages, audit_rate=0.05, seed=8)
    assert [other.decide(proposal(FILL, proposal_id=pid), 0.95, CTX).audit for pid in ids[:2000]] != audited[:2000]
    assert audit_draw(7, "proposal-1") == audit_draw(7, "proposal-1")
    assert 0.0 <= audit_draw(7, "proposal-1") < 1.0


def test_audits_are_drawn_only_among_would_execute_steps() -> None:
    r = router(autopilot(BILLING_FILL), audit_rate=0.99)
    assert not r.decide(proposal(FILL), 0.1, CTX).audit  # below threshold: deferred anyway, not an audit
    lookup = router(autopilot(SliceKey(process_id="billing_dispute", action_type=ActionType.CLICK_CONTROL)), 0.99)
    assert lookup.decide(proposal(ClickControl(control_id="lookup_invoice")), None, CTX).outcome == (
        DecisionOutcome.EXECUTE
    )


def test_bad_input_names_the_field() -> None:
    r = router(autopilot(BILLING_FILL))
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="score"):
            r.decide(proposal(FILL), bad, CTX)
    with pytest.raises(ValueError, match=r"context\.session_id"):
        r.decide(proposal(FILL), 0.9, SessionContext("s-2"))
    with pytest.raises(ValueError, match="actions_executed"):
        SessionContext("s-1", actions_executed=-1)
    with pytest.raises(ValueError, match="failures_on_step"):
        SessionContext("s-1", failures_on_step=-1)
    with pytest.raises(ValueError, match="session_id"):
        SessionContext("")
    with pytest.raises(ValueError, match="audit_rate"):
        Router(DEFAULT_RISK_POLICY, AutonomyStages(), thresholds(), audit_rate=1.0)
    with pytest.raises(ValueError, match="max_failures_per_step"):
        Router(DEFAULT_RISK_POLICY, AutonomyStages(), thresholds(), max_failures_per_step=0)
    with pytest.raises(ValueError, match="audit_mode"):
        Router(DEFAULT_RISK_POLICY, AutonomyStages(), thresholds(), audit_mode="during")


def test_decide_takes_microseconds() -> None:
    r = router(autopilot(BILLING_FILL), audit_rate=0.05)
    p = proposal(FILL)
    for _ in range(200):  # warm-up
        r.decide(p, 0.9, CTX)
    times = []
    for _ in range(5000):
        start = time.perf_counter()
        r.decide(p, 0.9, CTX)
        times.append(time.perf_counter() - start)
    times.sort()
    p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
    print(f"decide(): p50 {p50 * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us")
    # The budget for the whole observe->decide path is 50 ms; the router should be a rounding error in it even
    # on a loaded shared machine.
    assert p50 < 200e-6
    assert p99 < 2e-3
