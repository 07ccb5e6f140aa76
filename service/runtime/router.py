"""The router: what happens to one proposal (execute in the background, defer to a human, always ask).

Rules, first match wins; each has its own :class:`Rule`, which prefixes the decision's ``reason``
(``"<rule>: <details>"``, split back with :func:`rule_of`):

 1. ``kill_switch``     the global kill switch is on                         -> DEFER
 2. ``always_ask``      the action's risk tier is ALWAYS_ASK                 -> ALWAYS_ASK
 3. ``stage_logging``   the slice is in LOGGING: the system only records     -> DEFER
 4. ``stage_copilot``   the slice is in COPILOT: the proposal is shown       -> DEFER
    (the slice is in AUTOPILOT from here on)
 5. ``action_budget``   the session has executed ``max_actions_per_session`` -> DEFER
 6. ``step_failures``   ``max_failures_per_step`` failures or UI mismatches on this step -> DEFER
 7. ``non_critical``    the tier is NON_CRITICAL: no critic needed          -> EXECUTE
 8. ``not_scored``      no critic score                                     -> DEFER
 9. ``no_threshold``    no holding threshold for the slice                  -> DEFER
10. ``below_threshold`` score < threshold                                   -> DEFER
11. ``audit``           a random ``audit_rate`` share of would-execute steps -> EXECUTE with ``audit=True``
                        (``audit_mode`` after, the default: reviewed after the fact in the QA queue) or DEFER with
                        ``audit=True`` (``audit_mode`` before: a human approves it first)
12. ``confident``       score >= threshold                                  -> EXECUTE

Why this order: the stop-everything guards come before anything that could execute; an always-ask action is
marked as such whatever the stage, so the inbox can show it as one; the session guards protect a runaway
session even for non-critical actions; audits are drawn only among critic-gated executions because they exist
to label what the critic lets through.

The audit draw is a hash of (seed, proposal id), not a stateful generator, so a redelivered proposal gets the
same draw on any worker, and the share over many proposals is ``audit_rate``. It does not look at the score: the
audited steps are a uniform sample of the would-execute steps with a known inclusion probability, which is what
keeps the realised-error estimate unbiased (``service.runtime.realised_error``). After-the-fact audits (the
default) sample exactly the same steps as pre-execution ones, but interrupt no session (``service.runtime.qa``).

Latency: decide() does a few comparisons, a tier lookup over the risk overrides, a dict lookup for the stage,
one hash and builds the Decision: tens of microseconds (measured in the tests).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from schemas.decision import Decision, DecisionOutcome
from schemas.proposal import Proposal
from schemas.risk import AutonomyStage, RiskPolicy, RiskTier, SliceKey
from service.runtime.autonomy import AutonomyStages
from service.runtime.champion import Champion

_TWO_64 = float(2**64)


class ThresholdSource(Protocol):
    """Where the router gets a slice's auto-execution threshold; ``critic.thresholds.SliceThresholds`` is one."""

    def threshold_for(self, slice_key: SliceKey, /) -> float | None: ...


class AuditMode(StrEnum):
    AFTER = "after"  # the audited step runs; an operator reviews it afterwards in the QA queue
    BEFORE = "before"  # the audited step is deferred: an operator approves it before it runs


class Rule(StrEnum):
    KILL_SWITCH = "kill_switch"
    ALWAYS_ASK = "always_ask"
    STAGE_LOGGING = "stage_logging"
    STAGE_COPILOT = "stage_copilot"
    ACTION_BUDGET = "action_budget"
    STEP_FAILURES = "step_failures"
    NON_CRITICAL = "non_critical"
    NOT_SCORED = "not_scored"
    NO_THRESHOLD = "no_threshold"
    BELOW_THRESHOLD = "below_threshold"
    AUDIT = "audit"
    CONFIDENT = "confident"


def rule_of(decision: Decision) -> Rule:
    """The rule that made ``decision`` (its reason's prefix)."""
    return Rule(decision.reason.split(":", 1)[0])


@dataclass(frozen=True, slots=True)
class SessionContext:
    """What the router needs to know about the session besides the proposal.

    ``failures_on_step``: how often executing this step failed or found the UI not as expected."""

    session_id: str
    actions_executed: int = 0
    failures_on_step: int = 0

    def __post_init__(self) -> None:
        if not self.session_id:
            raise ValueError("session_id: must be non-empty")
        if self.actions_executed < 0:
            raise ValueError(f"actions_executed: must be >= 0, got {self.actions_executed}")
        if self.failures_on_step < 0:
            raise ValueError(f"failures_on_step: must be >= 0, got {self.failures_on_step}")


def audit_draw(seed: int, proposal_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, proposal id): the same on every worker and every redelivery
    (Python's ``hash`` is salted per process, so it would not be)."""
    digest = hashlib.blake2b(f"{seed}:{proposal_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _TWO_64


class Router:
    """Decides each proposal by the rules in the module docstring."""

    def __init__(
        self,
        risk: RiskPolicy,
        stages: AutonomyStages,
        thresholds: ThresholdSource,
        audit_rate: float = 0.05,
        max_actions_per_session: int = 40,
        max_failures_per_step: int = 2,
        seed: int = 0,
        audit_mode: AuditMode | str = AuditMode.AFTER,
    ) -> None:
        if not 0.0 <= audit_rate < 1.0:
            raise ValueError(f"audit_rate: must be in [0, 1), got {audit_rate}")
        if max_actions_per_session < 0:
            raise ValueError(f"max_actions_per_session: must be >= 0, got {max_actions_per_session}")
        if max_failures_per_step < 1:
            raise ValueError(f"max_failures_per_step: must be >= 1, got {max_failures_per_step}")
        self.risk = risk
        self.stages = stages
        self.thresholds = thresholds
        self.audit_rate = audit_rate
        self.max_actions_per_session = max_actions_per_session
        self.max_failures_per_step = max_failures_per_step
        self.seed = seed
        try:
            self.audit_mode = AuditMode(audit_mode)
        except ValueError:
            raise ValueError(f"audit_mode: must be one of after, before; got {audit_mode!r}") from None

    def decide(
        self, proposal: Proposal, score: float | None, context: SessionContext, champion: Champion | None = None
    ) -> Decision:
        """``score``: the critic's P(accept) for a critic-gated proposal. ``champion``: the champion ``score``
        came from; its thresholds decide and its version is recorded (without it, the router's own thresholds
        decide and no version is recorded)."""
        thresholds = self.thresholds if champion is None else champion.thresholds
        if score is not None and not (0.0 <= score <= 1.0):  # also rejects NaN
            raise ValueError(f"score: must be in [0, 1] or None, got {score}")
        if context.session_id != proposal.session_id:
            raise ValueError(
                f"context.session_id: {context.session_id!r} does not match proposal.session_id {proposal.session_id!r}"
            )
        action = proposal.action
        slice_key = SliceKey(process_id=proposal.process_id, action_type=action.type)
        tier = self.risk.tier_for(proposal.process_id, action.type, getattr(action, "control_id", None))
        stage = self.stages.stage(slice_key)
        # Recorded on every critic-gated decision, copilot ones included, so "would it have executed" can be
        # read off the decision log.
        threshold = thresholds.threshold_for(slice_key) if tier == RiskTier.CRITICAL else None
        if threshold is not None and not (0.0 <= threshold <= 1.0):
            raise ValueError(f"threshold: the threshold source gave {threshold} for {slice_key}, not in [0, 1]")
        audit = False
        outcome = DecisionOutcome.DEFER

        if self.stages.kill_switch:
            reason = f"{Rule.KILL_SWITCH}: the kill switch is on; a human decides every step"
        elif tier == RiskTier.ALWAYS_ASK:
            outcome = DecisionOutcome.ALWAYS_ASK
            reason = f"{Rule.ALWAYS_ASK}: {slice_key} on this target is always-ask; a human must decide"
        elif stage == AutonomyStage.LOGGING:
            reason = f"{Rule.STAGE_LOGGING}: {slice_key} is in logging; the system only records, a human acts"
        elif stage == AutonomyStage.COPILOT:
            reason = f"{Rule.STAGE_COPILOT}: {slice_key} is in copilot; the proposal is shown to a human"
        elif context.actions_executed >= self.max_actions_per_session:
            reason = (
                f"{Rule.ACTION_BUDGET}: the session has executed {context.actions_executed} actions "
                f"(budget {self.max_actions_per_session})"
            )
        elif context.failures_on_step >= self.max_failures_per_step:
            reason = (
                f"{Rule.STEP_FAILURES}: {context.failures_on_step} failures or UI mismatches on this step "
                f"(limit {self.max_failures_per_step})"
            )
        elif tier == RiskTier.NON_CRITICAL:
            outcome = DecisionOutcome.EXECUTE
            reason = f"{Rule.NON_CRITICAL}: non-critical action, executed without the critic"
        elif score is None:
            reason = f"{Rule.NOT_SCORED}: no critic score for a critic-gated action"
        elif threshold is None:
            reason = f"{Rule.NO_THRESHOLD}: no holding threshold for {slice_key}"
        elif score < threshold:
            reason = f"{Rule.BELOW_THRESHOLD}: critic score {score:.4f} < threshold {threshold:.4f}"
        elif self.audit_rate > 0.0 and audit_draw(self.seed, proposal.proposal_id) < self.audit_rate:
            audit = True
            if self.audit_mode == AuditMode.AFTER:
                outcome = DecisionOutcome.EXECUTE
                reason = (
                    f"{Rule.AUDIT}: critic score {score:.4f} >= threshold {threshold:.4f}, executed and sampled "
                    f"for review after the fact ({self.audit_rate:.1%} of would-execute steps)"
                )
            else:
                reason = (
                    f"{Rule.AUDIT}: critic score {score:.4f} >= threshold {threshold:.4f}, deferred as a random "
                    f"audit ({self.audit_rate:.1%} of would-execute steps)"
                )
        else:
            outcome = DecisionOutcome.EXECUTE
            reason = f"{Rule.CONFIDENT}: critic score {score:.4f} >= threshold {threshold:.4f}"

        return Decision(
            decision_id=uuid.uuid4().hex,
            proposal_id=proposal.proposal_id,
            session_id=proposal.session_id,
            state_etag=proposal.state_etag,
            outcome=outcome,
            slice=slice_key,
            stage=stage,
            tier=tier,
            score=score,
            threshold=threshold,
            audit=audit,
            reason=reason,
            critic_version=None if champion is None else champion.version,
        )
