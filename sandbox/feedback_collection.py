"""Copilot feedback from the sandbox: the trained policy proposes every step of new cases, simulated operators
review the proposals, and every review becomes a ``FeedbackRecord`` (``autopilot sandbox collect``)."""

from __future__ import annotations

import uuid
from datetime import timedelta

from critic.feedback import SYNTHETIC_EPOCH, CopilotFeedback
from policy.combined import CombinedPolicy
from policy.policy import LMPolicy
from policy.process import PolicyProcesses
from policy.replies import ReplyGuard
from sandbox.copilot import run_copilot_batched
from sandbox.scenario import Scenario
from schemas.decision import Verdict
from schemas.feedback import FeedbackRecord, FeedbackSource
from schemas.proposal import Proposal
from schemas.risk import SliceKey

_ID_NAMESPACE = uuid.UUID("6f1d2c0e-5b7a-4c3e-9a8d-2f4b6e8c0a1d")  # fixed: record ids are reproducible


def _record_id(kind: str, scenario: str, model_version: str, seed: int, case_index: int, turn: int) -> str:
    # The scenario and the model version are part of the key: a new policy (or scenario) reviewed on the same
    # cases is new feedback, which the store's de-duplication on record_id must not drop.
    key = f"{kind}:{scenario}:{model_version}:{seed}:{case_index}:{turn}"
    return uuid.uuid5(_ID_NAMESPACE, key).hex


def collect_copilot_feedback(
    policy: LMPolicy | CombinedPolicy | ReplyGuard | PolicyProcesses,
    sessions: int,
    seed: int,
    scenario: Scenario | None = None,
    start_index: int = 0,
    concurrency: int = 64,
    progress: bool = True,
) -> CopilotFeedback:
    """Run the sandbox copilot with ``policy`` (batched over open cases) and turn every reviewed proposal into a
    FeedbackRecord. Deterministic for a fitted policy and seed: ids, proposal ids and timestamps are derived from
    (scenario, model version, seed, case index, turn): a turn is a step, or a proposal rejected because the screen
    changed under it (environment), after which the step is proposed again."""
    scenario = scenario or Scenario()
    version = policy.version_
    out = CopilotFeedback()
    steps = run_copilot_batched(
        sessions,
        seed,
        policy.propose_batch,
        action_of=lambda p: p.action,
        scenario=scenario,
        start_index=start_index,
        concurrency=concurrency,
        progress=progress,
    )
    for step in steps:
        state = step.state
        ids = (scenario.name, version, seed, step.case_index, step.turn)
        # The LM draws random proposal ids; a derived one makes a collection reproducible byte for byte.
        proposal: Proposal = step.proposal.model_copy(update={"proposal_id": _record_id("proposal", *ids)})
        accepted = step.verdict == Verdict.ACCEPT
        out.records.append(
            FeedbackRecord(
                record_id=_record_id("copilot", *ids),
                source=FeedbackSource.COPILOT,
                state=state,
                proposal=proposal,
                accepted=accepted,
                reason=step.reason,
                operator_action=step.own_action,
                operator_id=step.operator_id,
                slice=SliceKey(process_id=state.process_id, action_type=proposal.action.type),
                created_at=SYNTHETIC_EPOCH + timedelta(minutes=step.case_index, seconds=step.turn),
            )
        )
        out.truth.append(step.acceptable)
    # Lockstep rounds interleave cases; time order (case, then turn) does not depend on ``concurrency``.
    order = sorted(range(len(out.records)), key=lambda i: out.records[i].created_at)
    return CopilotFeedback([out.records[i] for i in order], [out.truth[i] for i in order])
